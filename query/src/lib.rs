//! atcr-query: the read-only API every front end (web pages, JSON API, CLI) goes through.
//!
//! Today it answers questions about the log itself: what was ingested, where each upstream
//! cursor stands, what was quarantined, and the events matching a filter.

use std::sync::Arc;

use atcr_storage::json::event_to_json;
use atcr_storage::{EventLog, LogStats, StorageError, StoredEvent, StreamNote};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Projection(#[from] atcr_projections::ProjectionError),
}

/// Which events to return.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// First offset to consider.
    pub from: u64,
    /// Most events to return.
    pub limit: usize,
    pub did: Option<String>,
    /// Exact collection NSID, or a prefix ending in `.` or `*` (`io.atcr.sailor.*`).
    pub collection: Option<String>,
}

impl EventFilter {
    pub fn matches(&self, stored: &StoredEvent) -> bool {
        if self.did.as_deref().is_some_and(|did| did != stored.event.did) {
            return false;
        }
        match self.collection.as_deref() {
            None => true,
            Some(wanted) => match stored.event.body.collection() {
                None => false,
                Some(collection) => match wanted.strip_suffix('*') {
                    Some(prefix) => collection.starts_with(prefix),
                    None if wanted.ends_with('.') => collection.starts_with(wanted),
                    None => collection == wanted,
                },
            },
        }
    }
}

/// A page of matching events and where to continue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventPage {
    /// Log events as JSON (`offset`, `did`, `kind`, the record…).
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    /// The offset to pass as `from` for the next page.
    pub next: u64,
}

/// One quarantined input, without its raw bytes (which can be large).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QuarantineSummary {
    pub id: u64,
    pub received_at_us: i64,
    pub upstream: String,
    pub seq: Option<i64>,
    pub did: Option<String>,
    pub reason: String,
    pub bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub log: LogStats,
    pub recent_events: Vec<Value>,
    pub recent_quarantine: Vec<QuarantineSummary>,
    pub stream_notes: Vec<StreamNote>,
}

#[derive(Clone)]
pub struct LogQuery {
    log: Arc<EventLog>,
}

/// How many events one scan step reads when filtering.
const SCAN_CHUNK: usize = 1024;

impl LogQuery {
    pub fn new(log: Arc<EventLog>) -> Self {
        LogQuery { log }
    }

    pub fn events(&self, filter: &EventFilter) -> Result<EventPage, QueryError> {
        let mut events = Vec::new();
        let mut next = filter.from;
        let end = self.log.next_offset()?;
        while events.len() < filter.limit && next < end {
            let chunk = self.log.read_from(next, SCAN_CHUNK)?;
            let Some(last) = chunk.last() else { break };
            let chunk_end = last.offset + 1;
            for stored in &chunk {
                next = stored.offset + 1;
                if filter.matches(stored) {
                    events.push(event_to_json(stored.offset, &stored.event));
                    if events.len() == filter.limit {
                        break;
                    }
                }
            }
            if events.len() < filter.limit {
                next = chunk_end;
            }
        }
        Ok(EventPage { events, next })
    }

    pub fn event(&self, offset: u64) -> Result<Option<Value>, QueryError> {
        Ok(self.log.event(offset)?.map(|event| event_to_json(offset, &event)))
    }

    pub fn quarantine(&self, from: u64, limit: usize) -> Result<Vec<QuarantineSummary>, QueryError> {
        Ok(self
            .log
            .quarantine(from, limit)?
            .into_iter()
            .map(|(id, entry)| QuarantineSummary {
                id,
                received_at_us: entry.received_at_us,
                upstream: entry.upstream,
                seq: entry.upstream_seq,
                did: entry.did,
                reason: entry.reason,
                bytes: entry.raw.len(),
            })
            .collect())
    }

    pub fn status(&self, recent: usize) -> Result<StatusReport, QueryError> {
        let log = self.log.stats()?;
        let from = log.next_offset.saturating_sub(recent as u64);
        let mut recent_events: Vec<Value> = self
            .log
            .read_from(from, recent)?
            .iter()
            .map(|stored| event_to_json(stored.offset, &stored.event))
            .collect();
        recent_events.reverse();
        let recent_quarantine = self.quarantine(log.quarantined.saturating_sub(recent as u64), recent)?;
        let stream_notes = self
            .log
            .notes(log.stream_notes.saturating_sub(recent as u64), recent)?
            .into_iter()
            .map(|(_, note)| note)
            .collect();
        Ok(StatusReport { log, recent_events, recent_quarantine, stream_notes })
    }
}

pub mod audit;
pub mod browse;
pub mod holds;
pub mod layers;
pub mod live;
pub mod registry;
pub mod scans;
pub mod search;
pub use atcr_storage::blobs::BlobMethod;
pub use registry::{BlobLocation, BlobServe, Manifest, RegistryError, RegistryQuery, RepositoryRef};
