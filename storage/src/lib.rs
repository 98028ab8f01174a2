//! atcr-storage: the event log and everything else atcr keeps on disk.
//!
//! - [`event`]: the event envelope and its versioned encoding;
//! - [`log`]: the append-only log on redb (events, commit blocks, cursors, quarantine, notes);
//! - [`writer`]: the single writer with group commit;
//! - [`json`]: DAG-CBOR records rendered as ATProto JSON for people and tools;
//! - [`keys`] and [`commit`]: identity keys and signed repo commits, re-checked offline;
//! - [`mst`]: the repository Merkle Search Tree (Sync 1.1 inversion, generated worlds);
//! - [`pulls`]: atcr's own pull counts per repository per day (`pulls.redb`, not the log);
//! - [`webhooks`]: the webhook delivery store (outbox, classifier state, checkpoints, history);
//! - [`syntax`]: atproto string formats (DID, handle, NSID, record key, TID, AT-URI, …);
//!   [`data_model`]: ATProto JSON → the data model (the inverse of [`json`]).
//!
//! This crate knows nothing of HTTP, WebSockets or ATProto sync.

pub mod blobs;
pub mod commit;
pub mod content;
pub mod data_model;
pub mod did;
pub mod error;
pub mod event;
pub mod image;
pub mod json;
pub mod keys;
pub mod log;
pub mod mst;
pub mod pulls;
pub mod records;
pub mod revs;
pub mod scan_formats;
pub mod syntax;
pub mod webhooks;
pub mod writer;

pub use commit::{CommitError, SignedCommit};
pub use error::{Result, StorageError};
pub use event::{Event, EventBody, PutAction, QuarantineEntry, Source, StoredEvent, StreamNote, StreamNoteKind};
pub use keys::{KeyError, PublicKey, SignatureError};
pub use log::{AppendBatch, AppendReceipt, EventLog, LogStats, RepoRevs};
pub use writer::{LogWriter, LogWriterTask};

/// Microseconds since the Unix epoch, for `received_at` stamps (ingest's clock, never a
/// projection's).
pub fn now_micros() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(elapsed) => i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}
