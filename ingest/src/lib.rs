//! atcr-ingest: where upstream facts come from.
//!
//! - [`frame`]: decode a `subscribeRepos` frame, filter to `io.atcr.*`, extract records;
//! - [`process`]: frames → an append batch (events, quarantine, notes, cursor);
//! - [`firehose`]: the WebSocket client with reconnects, backoff and a bounded queue;
//! - [`enrich`]: DID documents and manifest bytes fetched once, appended as events;
//! - [`backfill`]: `getRepo` walks that diff what the log holds against the repos (backfill, resync);
//! - [`policy`]: which outbound URLs taken from user data may be fetched;
//! - [`car`]: a frame's CAR blocks, hash-checked; [`verify`]: Sync 1.1 commit verification
//!   (CAR root, repo/rev, signature, MST inversion against `prevData`), pure and network-free.
//!
//! Ingest writes only to the event log (through its single writer) and knows nothing of
//! projections or HTTP serving.

pub mod backfill;
pub mod car;
pub mod corpus;
pub mod enrich;
pub mod firehose;
pub mod frame;
pub mod gate;
pub mod identity;
pub mod layers;
pub mod metrics;
pub mod policy;
pub mod process;
pub mod verify;
pub mod webhooks;

pub use firehose::{FirehoseConfig, IngestError, run_firehose};
