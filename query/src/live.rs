//! The log tail for live consumers (the server-sent events stream, pages that update live):
//! which events a subscriber asked for, and which of them the views already reflect.
//!
//! Pages render from the projections, which lag the log a little. A live consumer that re-reads
//! a page as soon as an event is appended could read views that do not contain it yet, so the
//! tail only hands out events below the *visible* offset: the smaller of the log's head and the
//! registry views' checkpoint. A subscriber that re-fetches a page after an event is then sure to
//! see it.
//!
//! Filters work on what an event is *about*: its author, and for record events the repository
//! the views recorded in their activity table (a delete names only a record key, the views know
//! what it was about), a star's subject (so the owner of a starred repository sees the star), a
//! `ManifestStored`'s manifest repository.

use std::sync::Arc;

use atcr_projections::Views;
use atcr_storage::json::event_to_json;
use atcr_storage::records::STAR;
use atcr_storage::{EventBody, EventLog, StoredEvent};
use serde_json::Value;
use tokio::sync::watch;

use crate::registry::RegistryQuery;
use crate::{LogQuery, QueryError};

/// Every kind of event the log holds (`EventBody::kind`), for validating `kind` filters.
pub const EVENT_KINDS: [&str; 9] = [
    "record_put",
    "record_deleted",
    "identity",
    "account",
    "manifest_stored",
    "resync",
    "identity_resolved",
    "identity_unresolvable",
    "handle_checked",
];

/// Which events a live subscriber wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TailFilter {
    /// Events by or about this DID (a star of one of its repositories counts).
    pub did: Option<String>,
    /// Events about a repository of this name (of `did` when given).
    pub repository: Option<String>,
    /// Event kinds (`record_put`, …); empty: every kind.
    pub kinds: Vec<&'static str>,
}

impl TailFilter {
    /// Parses a `kind` parameter: `all`, `record` (puts and deletes), or a comma-separated list of
    /// event kinds.
    pub fn parse_kinds(text: &str) -> Result<Vec<&'static str>, String> {
        let mut kinds = Vec::new();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            match part {
                "all" => return Ok(Vec::new()),
                "record" => kinds.extend(["record_put", "record_deleted"]),
                other => match EVENT_KINDS.iter().find(|kind| **kind == other) {
                    Some(kind) => kinds.push(*kind),
                    None => {
                        return Err(format!(
                            "unknown event kind {other:?}: use all, record or one of {}",
                            EVENT_KINDS.join(", ")
                        ));
                    }
                },
            }
        }
        let mut distinct = Vec::with_capacity(kinds.len());
        for kind in kinds {
            if !distinct.contains(&kind) {
                distinct.push(kind);
            }
        }
        Ok(distinct)
    }

    fn wants_kind(&self, kind: &str) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    fn is_about_anything(&self) -> bool {
        self.did.is_none() && self.repository.is_none()
    }
}

/// What one event is about: `(did, repository)` pairs, repository `None` when it names none.
fn subjects(views: Option<&Views>, stored: &StoredEvent) -> Result<Vec<(String, Option<String>)>, QueryError> {
    let event = &stored.event;
    let mut out = vec![(event.did.clone(), None)];
    let Some(views) = views else { return Ok(out) };
    match &event.body {
        EventBody::RecordPut { .. } | EventBody::RecordDeleted { .. } => {
            if let Some(row) = views.activity_of(stored).map_err(QueryError::Projection)? {
                if let Some(repository) = row.repository {
                    out.push((event.did.clone(), Some(repository)));
                }
                if row.collection == STAR
                    && let Some((did, repository)) = row.subject.as_deref().and_then(|subject| subject.split_once('/'))
                {
                    out.push((did.to_string(), Some(repository.to_string())));
                }
            }
        }
        EventBody::ManifestStored { digest, .. } => {
            if let Some(manifest) = views.manifest(&event.did, digest).map_err(QueryError::Projection)? {
                out.push((event.did.clone(), Some(manifest.repository)));
            }
        }
        _ => {}
    }
    Ok(out)
}

fn matches(filter: &TailFilter, views: Option<&Views>, stored: &StoredEvent) -> Result<bool, QueryError> {
    if !filter.wants_kind(stored.event.body.kind()) {
        return Ok(false);
    }
    if filter.is_about_anything() {
        return Ok(true);
    }
    if filter.repository.is_none() && filter.did.as_deref() == Some(stored.event.did.as_str()) {
        return Ok(true);
    }
    Ok(subjects(views, stored)?.into_iter().any(|(did, repository)| {
        filter.did.as_deref().is_none_or(|wanted| wanted == did)
            && filter.repository.as_deref().is_none_or(|wanted| repository.as_deref() == Some(wanted))
    }))
}

/// One step of a subscriber's reading: the events it wants, and where to continue.
#[derive(Debug)]
pub struct TailChunk {
    /// `(offset, the event as /api/v1/log/{offset} renders it)`, oldest first.
    pub events: Vec<(u64, Value)>,
    /// The next offset to read from.
    pub next: u64,
}

/// Reads the log tail for live subscribers.
#[derive(Clone)]
pub struct LogTail {
    log: Arc<EventLog>,
    registry: Option<RegistryQuery>,
}

impl LogTail {
    /// A tail of `log`; with `registry`, events are handed out only once its views reflect them
    /// and repository filters can be answered.
    pub fn new(log: &LogQuery, registry: Option<RegistryQuery>) -> Self {
        LogTail { log: log.log.clone(), registry }
    }

    /// Changes whenever events land in this process; its value is the log's next offset.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.log.subscribe()
    }

    /// The log's next offset.
    pub fn head(&self) -> Result<u64, QueryError> {
        Ok(self.log.next_offset()?)
    }

    /// The offset below which every event is in the views (the log's head without views).
    pub fn visible(&self) -> Result<u64, QueryError> {
        let head = self.head()?;
        match &self.registry {
            Some(registry) => Ok(head.min(registry.views().checkpoint().map_err(QueryError::Projection)?)),
            None => Ok(head),
        }
    }

    /// True when repository filters can be answered (the registry views are there).
    pub fn knows_repositories(&self) -> bool {
        self.registry.is_some()
    }

    /// A handle or DID → the DID (`None`: a handle the views do not know).
    pub fn resolve_owner(&self, handle_or_did: &str) -> Result<Option<String>, QueryError> {
        if handle_or_did.starts_with("did:") {
            return Ok(Some(handle_or_did.to_string()));
        }
        match &self.registry {
            Some(registry) => registry.views().did_for_handle(handle_or_did).map_err(QueryError::Projection),
            None => Ok(None),
        }
    }

    /// Reads from `from` up to (not including) `until`, scanning at most `max_scan` events, and
    /// returns those `filter` wants. A subscriber's memory is bounded by `max_scan` events.
    pub fn read(&self, from: u64, until: u64, filter: &TailFilter, max_scan: usize) -> Result<TailChunk, QueryError> {
        if from >= until {
            return Ok(TailChunk { events: Vec::new(), next: from });
        }
        let limit = max_scan.min(usize::try_from(until - from).unwrap_or(usize::MAX)).max(1);
        let chunk = self.log.read_from(from, limit)?;
        let views = self.registry.as_ref().map(RegistryQuery::views);
        let mut events = Vec::new();
        let mut next = from;
        for stored in chunk.iter().take_while(|stored| stored.offset < until) {
            next = stored.offset + 1;
            if matches(filter, views.as_deref(), stored)? {
                events.push((stored.offset, event_to_json(stored.offset, &stored.event)));
            }
        }
        // Offsets are dense; an empty read below `until` means the log has nothing more yet.
        Ok(TailChunk { events, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_filters_parse_and_refuse_unknown_kinds() {
        assert_eq!(TailFilter::parse_kinds("all"), Ok(Vec::new()));
        assert_eq!(TailFilter::parse_kinds(""), Ok(Vec::new()));
        assert_eq!(TailFilter::parse_kinds("record"), Ok(vec!["record_put", "record_deleted"]));
        assert_eq!(TailFilter::parse_kinds("record_put, manifest_stored"), Ok(vec!["record_put", "manifest_stored"]));
        assert!(TailFilter::parse_kinds("record,bogus").unwrap_err().contains("bogus"));
        assert_eq!(TailFilter::parse_kinds("record,record_put"), Ok(vec!["record_put", "record_deleted"]));
    }
}
