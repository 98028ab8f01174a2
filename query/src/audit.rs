//! History and "as of" answers: every version of a record, every move of a tag, every event that
//! touched a repository, what a tag resolved to at a point in the past, and a user's activity.
//!
//! Two sources, one meaning:
//! - **the event log** (the free functions [`record_history`], [`tag_history`],
//!   [`repository_history`], [`tag_as_of`], [`resolve_did`]): the source of truth. They work
//!   offline and while `atcr serve` writes, so `atcr audit` uses them. A scan replays the log with
//!   the rules of the registry views: record events from a commit older than the DID's newest
//!   applied rev are skipped, a tag record updated to name another tag deletes the tag it named,
//!   and a put that leaves a tag's digest unchanged is not a move. The unit tests check that the
//!   scan and the views agree.
//! - **the registry views** ([`AuditQuery`]): their history tables are indexed, so the web UI and
//!   the JSON API answer without a scan; the raw record of each version is read from the log at
//!   the version's offset.

use std::collections::HashMap;
use std::sync::Arc;

use atcr_projections::views::{ActivityRow, TagMoveRow};
use atcr_projections::{ProjectionError, Views};
use atcr_storage::did::parse_did_document;
use atcr_storage::json::dag_cbor_to_json;
use atcr_storage::records::{self, ManifestRecord, RepoPageRecord, StarRecord, TagRecord};
use atcr_storage::revs::next_newest_rev;
use atcr_storage::{Event, EventBody, EventLog, PutAction, Source, StorageError};
use serde::Serialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{LogQuery, RegistryQuery};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("event log: {0}")]
    Storage(#[from] StorageError),
    #[error("views: {0}")]
    Views(#[from] ProjectionError),
    #[error("no DID document in the log claims the handle {0}")]
    UnknownHandle(String),
    /// The caller asked something malformed (a bad time, an offset that is not a version).
    #[error("{0}")]
    Invalid(String),
}

/// A point in the log's past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Everything whose upstream time (or, without one, receive time) is at or before this.
    Time(OffsetDateTime),
    /// Everything at or before this log offset.
    Offset(u64),
}

impl AsOf {
    /// `2026-05-01T00:00:00Z` (RFC 3339).
    pub fn parse_time(text: &str) -> Result<AsOf, AuditError> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(AsOf::Time)
            .map_err(|error| AuditError::Invalid(format!("{text:?} is not an RFC 3339 time: {error}")))
    }
}

/// One version of a record: the event at `offset` created, updated or deleted it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RecordVersion {
    pub offset: u64,
    /// `create`, `update` or `delete`.
    pub action: String,
    /// The record's CID (puts only).
    pub cid: Option<String>,
    pub rev: Option<String>,
    pub upstream_seq: Option<i64>,
    pub time: Option<String>,
    pub commit_cid: Option<String>,
    /// The record as ATProto JSON (puts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub record: Option<Value>,
}

impl RecordVersion {
    /// The version the event at `offset` makes of the record `collection`/`rkey`, with its JSON;
    /// `None` when the event is not a put or a delete of that record.
    fn of(offset: u64, event: &Event, collection: &str, rkey: &str) -> Option<RecordVersion> {
        let (action, cid, record) = match &event.body {
            EventBody::RecordPut { collection: c, rkey: k, cid, action, record } if c == collection && k == rkey => {
                (action_name(*action), Some(cid.clone()), Some(record_json(record)))
            }
            EventBody::RecordDeleted { collection: c, rkey: k, .. } if c == collection && k == rkey => {
                ("delete", None, None)
            }
            _ => return None,
        };
        Some(RecordVersion {
            offset,
            action: action.to_string(),
            cid,
            rev: event.rev.clone(),
            upstream_seq: event.upstream_seq,
            time: event.upstream_time.clone(),
            commit_cid: event.commit_cid.clone(),
            record,
        })
    }
}

/// One change of a tag: created (`from` empty), moved, or deleted (`to` empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TagMove {
    pub tag: String,
    pub offset: u64,
    /// `create`, `move` or `delete`.
    #[schema(value_type = String)]
    pub change: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
    pub time: Option<String>,
    pub rev: Option<String>,
    pub upstream_seq: Option<i64>,
    /// The tag record's key, CID (puts) and commit, from the event at `offset`.
    pub rkey: Option<String>,
    pub cid: Option<String>,
    pub commit_cid: Option<String>,
}

fn change_name(from: Option<&str>, to: Option<&str>) -> &'static str {
    match (from, to) {
        (None, _) => "create",
        (Some(_), None) => "delete",
        (Some(_), Some(_)) => "move",
    }
}

impl TagMove {
    fn from_event(tag: &str, offset: u64, event: &Event, from: Option<String>, to: Option<String>) -> Self {
        let (rkey, cid) = match &event.body {
            EventBody::RecordPut { rkey, cid, .. } => (Some(rkey.clone()), Some(cid.clone())),
            EventBody::RecordDeleted { rkey, .. } => (Some(rkey.clone()), None),
            _ => (None, None),
        };
        TagMove {
            tag: tag.to_string(),
            offset,
            change: change_name(from.as_deref(), to.as_deref()),
            from,
            to,
            time: event.upstream_time.clone(),
            rev: event.rev.clone(),
            upstream_seq: event.upstream_seq,
            rkey,
            cid,
            commit_cid: event.commit_cid.clone(),
        }
    }

    fn from_row(tag: String, row: TagMoveRow, event: Option<&Event>) -> Self {
        let mut change = match event {
            Some(event) => TagMove::from_event(&tag, row.offset, event, row.from.clone(), row.to.clone()),
            None => TagMove {
                tag: tag.clone(),
                offset: row.offset,
                change: "",
                from: None,
                to: None,
                time: None,
                rev: None,
                upstream_seq: None,
                rkey: None,
                cid: None,
                commit_cid: None,
            },
        };
        change.change = change_name(row.from.as_deref(), row.to.as_deref());
        change.from = row.from;
        change.to = row.to;
        change.time = row.time;
        change.rev = row.rev;
        change.upstream_seq = row.upstream_seq;
        change
    }
}

/// One event that touched a repository.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepositoryEvent {
    pub offset: u64,
    /// Who wrote the record (a star is written by the starrer, not the owner).
    pub did: String,
    pub collection: String,
    pub rkey: String,
    /// `create`, `update` or `delete`.
    pub action: String,
    pub cid: Option<String>,
    pub rev: Option<String>,
    pub upstream_seq: Option<i64>,
    pub time: Option<String>,
    pub commit_cid: Option<String>,
    /// `manifest`, `tag`, `page` or `star`.
    pub what: &'static str,
    /// The manifest's digest (manifests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The tag, and the digest it pointed to before and after (tags).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// How many events a log scan reads per page.
const SCAN_PAGE: usize = 2048;

/// Reads the whole log (up to the head seen when it starts) in order, skipping the record events
/// the views skip: those from a commit older than the newest one already applied for the DID
/// (the projection runner's rule; TIDs sort lexically in time order).
fn scan_log(log: &EventLog, mut visit: impl FnMut(u64, &Event) -> Result<(), AuditError>) -> Result<(), AuditError> {
    let end = log.next_offset()?;
    let mut newest_revs: HashMap<String, String> = HashMap::new();
    let mut from = 0;
    while from < end {
        let page = log.read_from(from, SCAN_PAGE)?;
        let Some(last) = page.last() else { break };
        from = last.offset + 1;
        for stored in &page {
            if stored.offset >= end {
                return Ok(());
            }
            if is_stale(&mut newest_revs, &stored.event) {
                continue;
            }
            visit(stored.offset, &stored.event)?;
        }
    }
    Ok(())
}

fn is_stale(newest_revs: &mut HashMap<String, String>, event: &Event) -> bool {
    let (Some(rev), Source::Firehose | Source::Backfill) = (&event.rev, event.source) else { return false };
    if event.body.collection().is_none() {
        return false;
    }
    // The projection runner's rule (atcr_storage::revs), so the scans and the views agree.
    let remembered = newest_revs.get(&event.did).map(String::as_str);
    let Some(next) = next_newest_rev(remembered, event.source, rev) else { return true };
    match newest_revs.get_mut(&event.did) {
        Some(newest) if *newest != next => *newest = next,
        Some(_) => {}
        None => {
            newest_revs.insert(event.did.clone(), next);
        }
    }
    false
}

fn action_name(action: PutAction) -> &'static str {
    match action {
        PutAction::Create => "create",
        PutAction::Update => "update",
    }
}

fn valid_name(text: &str) -> bool {
    !text.is_empty() && !text.contains('\0')
}

/// The record events of one record, with its JSON, oldest first.
pub fn record_history(
    log: &EventLog,
    did: &str,
    collection: &str,
    rkey: &str,
) -> Result<Vec<RecordVersion>, AuditError> {
    let mut versions = Vec::new();
    scan_log(log, |offset, event| {
        if event.did == did {
            versions.extend(RecordVersion::of(offset, event, collection, rkey));
        }
        Ok(())
    })?;
    Ok(versions)
}

/// A record's DAG-CBOR as ATProto JSON; bytes that do not decode say so instead.
fn record_json(bytes: &[u8]) -> Value {
    dag_cbor_to_json(bytes).unwrap_or_else(|error| json!({ "$undecodable": error }))
}

/// A tag change as the views see it: (repository, tag, from, to).
type TagChange = (String, String, Option<String>, Option<String>);

/// The tags of one DID as the views keep them, to derive moves from record events.
#[derive(Default)]
struct TagReplay {
    /// Record key → (repository, tag) it names.
    rkeys: HashMap<String, (String, String)>,
    /// (repository, tag) → (digest, record key that set it).
    tags: HashMap<(String, String), (String, String)>,
}

impl TagReplay {
    /// Applies a tag record event of the DID; returns the changes (a renaming update gives the
    /// old tag's deletion, then the new tag's change).
    fn apply(&mut self, event: &Event) -> Vec<TagChange> {
        match &event.body {
            EventBody::RecordPut { collection, rkey, record, .. } if collection == records::TAG => {
                let Ok(tag) = TagRecord::decode(record) else { return Vec::new() };
                if !valid_name(&tag.repository) || !valid_name(&tag.tag) {
                    return Vec::new();
                }
                let named = (tag.repository, tag.tag);
                let mut changes = Vec::new();
                if self.rkeys.get(rkey).is_some_and(|previous| *previous != named) {
                    changes.extend(self.delete(rkey));
                }
                let previous = self.tags.get(&named).map(|(digest, _)| digest.clone());
                if previous.as_deref() != Some(tag.digest.as_str()) {
                    changes.push((named.0.clone(), named.1.clone(), previous, Some(tag.digest.clone())));
                }
                self.tags.insert(named.clone(), (tag.digest, rkey.clone()));
                self.rkeys.insert(rkey.clone(), named);
                changes
            }
            EventBody::RecordDeleted { collection, rkey, .. } if collection == records::TAG => {
                self.delete(rkey).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    /// Removes the tag a record key names, if that record still owns it.
    fn delete(&mut self, rkey: &str) -> Option<TagChange> {
        let named = self.rkeys.remove(rkey)?;
        let owned = self.tags.get(&named).is_some_and(|(_, owner)| owner == rkey);
        if !owned {
            return None;
        }
        let (digest, _) = self.tags.remove(&named)?;
        Some((named.0, named.1, Some(digest), None))
    }
}

/// The moves of a repository's tags (of one tag when `tag` is given), oldest first, each with the
/// event's time as microseconds (upstream time, else receive time) for "as of" answers.
fn tag_moves_with_times(
    log: &EventLog,
    did: &str,
    repository: &str,
    tag: Option<&str>,
) -> Result<Vec<(TagMove, Option<i128>)>, AuditError> {
    let mut replay = TagReplay::default();
    let mut moves = Vec::new();
    scan_log(log, |offset, event| {
        if event.did != did || event.body.collection() != Some(records::TAG) {
            return Ok(());
        }
        for (changed_repository, changed_tag, from, to) in replay.apply(event) {
            if changed_repository != repository || tag.is_some_and(|tag| tag != changed_tag) {
                continue;
            }
            moves.push((TagMove::from_event(&changed_tag, offset, event, from, to), event_time_us(event)));
        }
        Ok(())
    })?;
    Ok(moves)
}

/// Every change of a repository's tags (one tag when `tag` is given), oldest first.
pub fn tag_history(log: &EventLog, did: &str, repository: &str, tag: Option<&str>) -> Result<Vec<TagMove>, AuditError> {
    Ok(tag_moves_with_times(log, did, repository, tag)?.into_iter().map(|(change, _)| change).collect())
}

/// When an event happened, in microseconds: its upstream time, else when atcr received it.
fn event_time_us(event: &Event) -> Option<i128> {
    let upstream = event
        .upstream_time
        .as_deref()
        .and_then(|time| OffsetDateTime::parse(time, &Rfc3339).ok())
        .map(|time| time.unix_timestamp_nanos() / 1000);
    upstream.or((event.received_at_us > 0).then_some(i128::from(event.received_at_us)))
}

/// The change that set the tag's state at `at`: the last move at or before it (its `to` is the
/// digest then; `None` inside means the tag was deleted). `None` when the tag did not exist yet.
pub fn tag_state_as_of(
    log: &EventLog,
    did: &str,
    repository: &str,
    tag: &str,
    at: AsOf,
) -> Result<Option<TagMove>, AuditError> {
    let moves = tag_moves_with_times(log, did, repository, Some(tag))?;
    Ok(moves
        .into_iter()
        .filter(|(change, time)| match at {
            AsOf::Offset(offset) => change.offset <= offset,
            AsOf::Time(at) => time.is_some_and(|time| time <= at.unix_timestamp_nanos() / 1000),
        })
        .map(|(change, _)| change)
        .next_back())
}

/// The digest a tag resolved to at `at`, or `None` when it did not exist (yet, or any more).
pub fn tag_as_of(
    log: &EventLog,
    did: &str,
    repository: &str,
    tag: &str,
    at: AsOf,
) -> Result<Option<String>, AuditError> {
    Ok(tag_state_as_of(log, did, repository, tag, at)?.and_then(|change| change.to))
}

/// Every event that touched a repository, oldest first: its manifests, its tags (with the digest
/// before and after), its page, and stars on it from any account.
pub fn repository_history(log: &EventLog, did: &str, repository: &str) -> Result<Vec<RepositoryEvent>, AuditError> {
    let mut tags = TagReplay::default();
    // Record key → repository, for deletes (which name only the key).
    let mut manifest_rkeys: HashMap<String, (String, String)> = HashMap::new();
    let mut page_rkeys: HashMap<String, String> = HashMap::new();
    let mut star_rkeys: HashMap<(String, String), String> = HashMap::new();
    let mut out = Vec::new();
    scan_log(log, |offset, event| {
        let (collection, rkey, action, cid) = match &event.body {
            EventBody::RecordPut { collection, rkey, cid, action, .. } => {
                (collection.as_str(), rkey.as_str(), action_name(*action), Some(cid.clone()))
            }
            EventBody::RecordDeleted { collection, rkey, .. } => (collection.as_str(), rkey.as_str(), "delete", None),
            _ => return Ok(()),
        };
        let entry = |what: &'static str| RepositoryEvent {
            offset,
            did: event.did.clone(),
            collection: collection.to_string(),
            rkey: rkey.to_string(),
            action: action.to_string(),
            cid: cid.clone(),
            rev: event.rev.clone(),
            upstream_seq: event.upstream_seq,
            time: event.upstream_time.clone(),
            commit_cid: event.commit_cid.clone(),
            what,
            digest: None,
            tag: None,
            from: None,
            to: None,
        };
        let record = match &event.body {
            EventBody::RecordPut { record, .. } => Some(record.as_slice()),
            _ => None,
        };
        if collection == records::STAR {
            let key = (event.did.clone(), rkey.to_string());
            let subject = match record {
                Some(bytes) => {
                    let star = StarRecord::decode(bytes).ok();
                    let subject = star.filter(|star| star.subject_did == did).map(|star| {
                        page_rkeys.get(&star.subject_repository).cloned().unwrap_or(star.subject_repository)
                    });
                    match &subject {
                        Some(subject) => star_rkeys.insert(key, subject.clone()),
                        None => star_rkeys.remove(&key),
                    };
                    subject
                }
                None => star_rkeys.remove(&key),
            };
            if subject.as_deref() == Some(repository) {
                out.push(entry("star"));
            }
            return Ok(());
        }
        if event.did != did {
            return Ok(());
        }
        match collection {
            records::MANIFEST => {
                let named = match record {
                    Some(bytes) => ManifestRecord::decode(bytes).ok().filter(|m| valid_name(&m.repository)).map(|m| {
                        manifest_rkeys.insert(rkey.to_string(), (m.repository.clone(), m.digest.clone()));
                        (m.repository, m.digest)
                    }),
                    None => manifest_rkeys.remove(rkey),
                };
                if let Some((named_repository, digest)) = named
                    && named_repository == repository
                {
                    out.push(RepositoryEvent { digest: Some(digest), ..entry("manifest") });
                }
            }
            records::TAG => {
                for (changed_repository, tag, from, to) in tags.apply(event) {
                    if changed_repository == repository {
                        out.push(RepositoryEvent { tag: Some(tag), from, to, ..entry("tag") });
                    }
                }
                // A put that leaves the digest as it was still touched the repository.
                if let Some(bytes) = record
                    && let Ok(tag) = TagRecord::decode(bytes)
                    && tag.repository == repository
                    && !out.last().is_some_and(|last: &RepositoryEvent| last.offset == offset && last.what == "tag")
                {
                    out.push(RepositoryEvent {
                        from: Some(tag.digest.clone()),
                        to: Some(tag.digest),
                        tag: Some(tag.tag),
                        ..entry("tag")
                    });
                }
            }
            records::REPO_PAGE => {
                let named = match record {
                    Some(bytes) => RepoPageRecord::decode(bytes).ok().map(|page| {
                        page_rkeys.insert(rkey.to_string(), page.repository.clone());
                        page.repository
                    }),
                    None => page_rkeys.remove(rkey),
                };
                if named.as_deref() == Some(repository) {
                    out.push(entry("page"));
                }
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(out)
}

/// A DID as given, or the DID whose newest logged DID document claims `handle_or_did`.
pub fn resolve_did(log: &EventLog, handle_or_did: &str) -> Result<String, AuditError> {
    if handle_or_did.starts_with("did:") {
        return Ok(handle_or_did.to_string());
    }
    let wanted = handle_or_did.to_ascii_lowercase();
    let mut handle_of: HashMap<String, String> = HashMap::new();
    let mut did_of: HashMap<String, String> = HashMap::new();
    // The views' rule: a handle whose latest check refuted it names no DID.
    let mut checks: HashMap<String, (String, bool)> = HashMap::new();
    scan_log(log, |_, event| {
        if let EventBody::HandleChecked { handle, verified, .. } = &event.body {
            let handle = handle.to_ascii_lowercase();
            if handle_of.get(&event.did) == Some(&handle) {
                if *verified {
                    did_of.insert(handle.clone(), event.did.clone());
                } else if did_of.get(&handle) == Some(&event.did) {
                    did_of.remove(&handle);
                }
            }
            checks.insert(event.did.clone(), (handle, *verified));
            return Ok(());
        }
        let EventBody::IdentityResolved { document_json } = &event.body else { return Ok(()) };
        let Ok(facts) = parse_did_document(document_json) else { return Ok(()) };
        if facts.did != event.did {
            return Ok(());
        }
        if let Some(old) = handle_of.remove(&facts.did)
            && did_of.get(&old) == Some(&facts.did)
        {
            did_of.remove(&old);
        }
        if let Some(handle) = facts.handle {
            let refuted = checks.get(&facts.did).is_some_and(|(checked, verified)| *checked == handle && !verified);
            if !refuted {
                did_of.insert(handle.clone(), facts.did.clone());
            }
            handle_of.insert(facts.did, handle);
        }
        Ok(())
    })?;
    did_of.remove(&wanted).ok_or(AuditError::UnknownHandle(wanted))
}

/// `at://<did or handle>/<collection>/<rkey>` → its three parts.
pub fn parse_at_uri(uri: &str) -> Result<(String, String, String), AuditError> {
    let invalid = || AuditError::Invalid(format!("{uri:?} is not at://<did>/<collection>/<rkey>"));
    let rest = uri.strip_prefix("at://").ok_or_else(invalid)?;
    let mut parts = rest.splitn(3, '/');
    let (Some(authority), Some(collection), Some(rkey)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid());
    };
    if authority.is_empty() || collection.is_empty() || rkey.is_empty() || rkey.contains('/') {
        return Err(invalid());
    }
    Ok((authority.to_string(), collection.to_string(), rkey.to_string()))
}

/// `<handle or did>/<repository>[:<tag>]` → (owner, repository, tag). Repository names never hold
/// a `:`, so the last one starts the tag.
pub fn parse_repository_reference(reference: &str) -> Result<(String, String, Option<String>), AuditError> {
    let invalid = || AuditError::Invalid(format!("{reference:?} is not <handle or did>/<repository>[:<tag>]"));
    let (owner, rest) = reference.split_once('/').ok_or_else(invalid)?;
    let (repository, tag) = match rest.rsplit_once(':') {
        Some((repository, tag)) => (repository, Some(tag.to_string())),
        None => (rest, None),
    };
    if owner.is_empty() || repository.is_empty() || tag.as_deref().is_some_and(str::is_empty) {
        return Err(invalid());
    }
    Ok((owner.to_string(), repository.to_string(), tag))
}

/// One line of a diff between two versions' pretty-printed JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffLine {
    /// `equal`, `insert` or `delete`.
    pub op: &'static str,
    /// The line, without its newline.
    pub text: String,
}

/// A record rendered as the viewer and the diff show it: pretty JSON, keys in order, a final
/// newline. A deleted version is empty.
pub fn pretty_record(record: Option<&Value>) -> String {
    match record {
        Some(value) => {
            let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
            text.push('\n');
            text
        }
        None => String::new(),
    }
}

/// A line diff between two versions of a record (either may be a deletion, shown as empty).
pub fn json_line_diff(old: Option<&Value>, new: Option<&Value>) -> Vec<DiffLine> {
    let (old, new) = (pretty_record(old), pretty_record(new));
    let diff = similar::TextDiff::from_lines(&old, &new);
    diff.iter_all_changes()
        .map(|change| DiffLine {
            op: match change.tag() {
                similar::ChangeTag::Equal => "equal",
                similar::ChangeTag::Insert => "insert",
                similar::ChangeTag::Delete => "delete",
            },
            text: change.value().trim_end_matches('\n').to_string(),
        })
        .collect()
}

/// A DID and the handle the views know for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Owner {
    pub did: String,
    pub handle: Option<String>,
}

/// A repository's tag moves, for the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TagTimeline {
    pub owner: Owner,
    pub repository: String,
    /// The one tag asked for, if any.
    pub tag: Option<String>,
    pub moves: Vec<TagMove>,
}

/// A record and all its versions, for the record viewer.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    pub owner: Owner,
    pub collection: String,
    pub rkey: String,
    pub uri: String,
    /// The newest version's JSON; `None` when the record is deleted now.
    #[schema(value_type = Option<Object>)]
    pub current: Option<Value>,
    /// Oldest first, each with its JSON (puts).
    pub versions: Vec<RecordVersion>,
}

/// A diff between two versions of one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordDiff {
    pub uri: String,
    pub from_offset: u64,
    pub to_offset: u64,
    pub lines: Vec<DiffLine>,
}

/// One entry of a user's activity feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActivityEntry {
    #[serde(flatten)]
    pub row: ActivityRow,
    /// The record it changed.
    pub uri: String,
}

/// A page of a user's activity, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActivityPage {
    pub owner: Owner,
    pub entries: Vec<ActivityEntry>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    pub next_before: Option<u64>,
}

/// The history answers of the web UI and the JSON API, from the views' history tables; raw
/// records come from the log.
#[derive(Clone)]
pub struct AuditQuery {
    log: Arc<EventLog>,
    registry: RegistryQuery,
}

/// The most activity entries one page holds.
pub const MAX_ACTIVITY_PAGE: usize = 200;

impl AuditQuery {
    pub fn new(log: &LogQuery, registry: RegistryQuery) -> Self {
        AuditQuery { log: log.log.clone(), registry }
    }

    /// The live views now (loaded once per answer: a newer build may be swapped in any time).
    fn views(&self) -> Arc<Views> {
        self.registry.views().clone()
    }

    fn owner_in(views: &Views, handle_or_did: &str) -> Result<Option<Owner>, AuditError> {
        let did = if handle_or_did.starts_with("did:") {
            handle_or_did.to_string()
        } else {
            match views.did_for_handle(handle_or_did)? {
                Some(did) => did,
                None => return Ok(None),
            }
        };
        let handle = views.identity(&did)?.and_then(|identity| identity.handle);
        Ok(Some(Owner { did, handle }))
    }

    /// A handle or DID → the DID and its handle; `None` for a handle the views do not know.
    pub fn owner(&self, handle_or_did: &str) -> Result<Option<Owner>, AuditError> {
        Self::owner_in(&self.views(), handle_or_did)
    }

    /// The moves of a repository's tags (one tag when `tag` is given), oldest first; `None` when
    /// neither the repository nor any history of it is known.
    pub fn tag_timeline(
        &self,
        owner: &str,
        repository: &str,
        tag: Option<&str>,
    ) -> Result<Option<TagTimeline>, AuditError> {
        let views = self.views();
        let Some(owner) = Self::owner_in(&views, owner)? else { return Ok(None) };
        let rows = views.tag_history(&owner.did, repository, tag)?;
        if rows.is_empty() && views.repository(&owner.did, repository)?.is_none() {
            return Ok(None);
        }
        let mut moves = Vec::with_capacity(rows.len());
        for (name, row) in rows {
            let event = self.log.event(row.offset)?;
            moves.push(TagMove::from_row(name, row, event.as_ref()));
        }
        Ok(Some(TagTimeline { owner, repository: repository.to_string(), tag: tag.map(str::to_string), moves }))
    }

    /// Every version of a record with its JSON; `None` when the views know no version of it.
    pub fn record(&self, owner: &str, collection: &str, rkey: &str) -> Result<Option<RecordView>, AuditError> {
        let views = self.views();
        let Some(owner) = Self::owner_in(&views, owner)? else { return Ok(None) };
        let offsets = views.record_history(&owner.did, collection, rkey)?;
        if offsets.is_empty() {
            return Ok(None);
        }
        let mut versions = Vec::with_capacity(offsets.len());
        for offset in offsets {
            let event = self.log.event(offset)?;
            let Some(version) = event.and_then(|event| RecordVersion::of(offset, &event, collection, rkey)) else {
                return Err(AuditError::Views(ProjectionError::Corrupt(format!(
                    "record_history: the event at offset {offset} is not a version of at://{}/{collection}/{rkey}",
                    owner.did
                ))));
            };
            versions.push(version);
        }
        let current = versions.last().filter(|version| version.action != "delete").and_then(|v| v.record.clone());
        Ok(Some(RecordView {
            uri: format!("at://{}/{collection}/{rkey}", owner.did),
            owner,
            collection: collection.to_string(),
            rkey: rkey.to_string(),
            current,
            versions,
        }))
    }

    /// The line diff between the versions at two offsets of a record.
    pub fn record_diff(
        &self,
        owner: &str,
        collection: &str,
        rkey: &str,
        from_offset: u64,
        to_offset: u64,
    ) -> Result<Option<RecordDiff>, AuditError> {
        let Some(view) = self.record(owner, collection, rkey)? else { return Ok(None) };
        Ok(Some(diff_versions(&view, from_offset, to_offset)?))
    }

    /// A user's activity, newest first, below offset `before`.
    pub fn activity(
        &self,
        handle_or_did: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Option<ActivityPage>, AuditError> {
        let views = self.views();
        let Some(owner) = Self::owner_in(&views, handle_or_did)? else { return Ok(None) };
        let limit = limit.clamp(1, MAX_ACTIVITY_PAGE);
        let mut rows = views.activity(&self.log, &owner.did, before, limit + 1)?;
        if rows.is_empty() && before.is_none() && views.identity(&owner.did)?.is_none() {
            return Ok(None);
        }
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_before = if more { rows.last().map(|row| row.offset) } else { None };
        let entries = rows
            .into_iter()
            .map(|row| ActivityEntry { uri: format!("at://{}/{}/{}", owner.did, row.collection, row.rkey), row })
            .collect();
        Ok(Some(ActivityPage { owner, entries, next_before }))
    }
}

/// The diff between two versions of a viewed record; both offsets must be versions of it.
pub fn diff_versions(view: &RecordView, from_offset: u64, to_offset: u64) -> Result<RecordDiff, AuditError> {
    let version = |offset: u64| {
        view.versions
            .iter()
            .find(|version| version.offset == offset)
            .ok_or_else(|| AuditError::Invalid(format!("offset {offset} is not a version of {}", view.uri)))
    };
    let (old, new) = (version(from_offset)?, version(to_offset)?);
    Ok(RecordDiff {
        uri: view.uri.clone(),
        from_offset,
        to_offset,
        lines: json_line_diff(old.record.as_ref(), new.record.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use atcr_projections::ProjectionRunner;
    use atcr_storage::AppendBatch;
    use atcr_storage::content::ContentStore;
    use ipld_core::ipld;
    use ipld_core::ipld::Ipld;

    const ALICE: &str = "did:plc:alice";
    const BOB: &str = "did:plc:bob";

    fn digest(fill: char) -> String {
        format!("sha256:{}", fill.to_string().repeat(64))
    }

    fn event(did: &str, rev: &str, time: &str, body: EventBody) -> Event {
        Event {
            source: Source::Firehose,
            upstream_seq: Some(rev.len() as i64),
            did: did.into(),
            rev: Some(rev.into()),
            upstream_time: Some(time.into()),
            received_at_us: 1,
            commit_cid: Some(format!("commit-{rev}")),
            body,
        }
    }

    fn put(did: &str, rev: &str, time: &str, collection: &str, rkey: &str, record: Ipld) -> Event {
        let record = serde_ipld_dagcbor::to_vec(&record).unwrap();
        event(
            did,
            rev,
            time,
            EventBody::RecordPut {
                collection: collection.into(),
                rkey: rkey.into(),
                cid: format!("cid-{rev}"),
                action: PutAction::Create,
                record,
            },
        )
    }

    fn tag(rev: &str, time: &str, rkey: &str, repository: &str, name: &str, fill: char) -> Event {
        put(
            ALICE,
            rev,
            time,
            records::TAG,
            rkey,
            ipld!({ "repository": repository, "tag": name, "manifestDigest": digest(fill) }),
        )
    }

    fn delete(did: &str, rev: &str, time: &str, collection: &str, rkey: &str) -> Event {
        event(
            did,
            rev,
            time,
            EventBody::RecordDeleted { collection: collection.into(), rkey: rkey.into(), prev_cid: None },
        )
    }

    struct Fixture {
        _directory: tempfile::TempDir,
        log: Arc<EventLog>,
        audit: AuditQuery,
    }

    fn fixture(events: Vec<Event>) -> Fixture {
        let directory = tempfile::tempdir().unwrap();
        let log = Arc::new(EventLog::open(&directory.path().join("log.redb")).unwrap());
        log.append(AppendBatch { events, ..AppendBatch::default() }).unwrap();
        let views = Arc::new(Views::open(&directory.path().join("views.redb")).unwrap());
        ProjectionRunner::new(log.clone(), views.clone()).catch_up().unwrap();
        let content = Arc::new(ContentStore::open(&directory.path().join("content")).unwrap());
        let audit = AuditQuery::new(&LogQuery::new(log.clone()), RegistryQuery::new(views, content));
        Fixture { _directory: directory, log, audit }
    }

    /// A tag created and moved three times, a stale replay, a no-op put, a rename and a delete.
    fn story() -> Vec<Event> {
        let document = r##"{"id":"did:plc:alice","alsoKnownAs":["at://alice.test"]}"##;
        vec![
            event(ALICE, "", "2026-05-01T00:00:00Z", EventBody::IdentityResolved { document_json: document.into() }),
            tag("3a1", "2026-05-01T10:00:00Z", "app_latest", "app", "latest", 'a'),
            tag("3a2", "2026-05-02T10:00:00Z", "app_latest", "app", "latest", 'b'),
            // An older commit replayed: the views skip it, so must the scan.
            tag("3a0", "2026-05-02T11:00:00Z", "app_latest", "app", "latest", 'f'),
            tag("3a3", "2026-05-03T10:00:00Z", "app_latest", "app", "latest", 'c'),
            // Same digest again: not a move.
            tag("3a4", "2026-05-03T12:00:00Z", "app_latest", "app", "latest", 'c'),
            tag("3a5", "2026-05-04T10:00:00Z", "app_latest", "app", "latest", 'd'),
            tag("3a6", "2026-05-05T10:00:00Z", "app_v1", "app", "v1", 'a'),
            // The v1 record now names v2: v1 is deleted, v2 created.
            tag("3a7", "2026-05-06T10:00:00Z", "app_v1", "app", "v2", 'b'),
            delete(ALICE, "3a8", "2026-05-07T10:00:00Z", records::TAG, "app_v1"),
            tag("3a9", "2026-05-08T10:00:00Z", "other_latest", "other", "latest", 'e'),
        ]
    }

    fn summary(moves: &[TagMove]) -> Vec<(String, Option<String>, Option<String>)> {
        moves.iter().map(|change| (change.tag.clone(), change.from.clone(), change.to.clone())).collect()
    }

    #[test]
    fn tag_moves_from_the_log_follow_the_views_rules() {
        let fixture = fixture(story());
        let latest = tag_history(&fixture.log, ALICE, "app", Some("latest")).unwrap();
        assert_eq!(
            summary(&latest),
            vec![
                ("latest".into(), None, Some(digest('a'))),
                ("latest".into(), Some(digest('a')), Some(digest('b'))),
                ("latest".into(), Some(digest('b')), Some(digest('c'))),
                ("latest".into(), Some(digest('c')), Some(digest('d'))),
            ]
        );
        assert_eq!(latest.iter().map(|change| change.change).collect::<Vec<_>>(), ["create", "move", "move", "move"]);
        assert_eq!(latest[1].rev.as_deref(), Some("3a2"));
        assert_eq!(latest[1].cid.as_deref(), Some("cid-3a2"));
        assert_eq!(latest[1].commit_cid.as_deref(), Some("commit-3a2"));
        assert_eq!(latest[1].time.as_deref(), Some("2026-05-02T10:00:00Z"));
        let all = tag_history(&fixture.log, ALICE, "app", None).unwrap();
        let renamed: Vec<_> = all.iter().filter(|change| change.tag != "latest").collect();
        assert_eq!(renamed.len(), 4, "{renamed:?}");
        assert_eq!((renamed[1].tag.as_str(), renamed[1].change), ("v1", "delete"));
        assert_eq!((renamed[2].tag.as_str(), renamed[2].change), ("v2", "create"));
        assert_eq!((renamed[3].tag.as_str(), renamed[3].change), ("v2", "delete"));
    }

    #[test]
    fn the_log_scan_and_the_views_agree() {
        let fixture = fixture(story());
        for tag in [Some("latest"), Some("v1"), Some("v2"), None] {
            let mut from_log = tag_history(&fixture.log, ALICE, "app", tag).unwrap();
            let mut from_views = fixture.audit.tag_timeline("alice.test", "app", tag).unwrap().unwrap().moves;
            from_log.sort_by(|left, right| (left.offset, &left.tag).cmp(&(right.offset, &right.tag)));
            from_views.sort_by(|left, right| (left.offset, &left.tag).cmp(&(right.offset, &right.tag)));
            assert_eq!(from_log, from_views, "{tag:?}");
        }
        let from_log = record_history(&fixture.log, ALICE, records::TAG, "app_latest").unwrap();
        let from_views = fixture.audit.record(ALICE, records::TAG, "app_latest").unwrap().unwrap();
        assert_eq!(from_log, from_views.versions);
        assert_eq!(from_log.len(), 5, "the stale replay is not a version");
    }

    #[test]
    fn as_of_answers_the_digest_current_at_each_point() {
        let fixture = fixture(story());
        let at_offset = |offset| tag_as_of(&fixture.log, ALICE, "app", "latest", AsOf::Offset(offset)).unwrap();
        assert_eq!(at_offset(0), None);
        assert_eq!(at_offset(1), Some(digest('a')));
        assert_eq!(at_offset(2), Some(digest('b')));
        assert_eq!(at_offset(3), Some(digest('b')), "the stale replay changes nothing");
        assert_eq!(at_offset(4), Some(digest('c')));
        assert_eq!(at_offset(99), Some(digest('d')));
        let at_time =
            |time: &str| tag_as_of(&fixture.log, ALICE, "app", "latest", AsOf::parse_time(time).unwrap()).unwrap();
        assert_eq!(at_time("2026-04-30T00:00:00Z"), None);
        assert_eq!(at_time("2026-05-01T10:00:00Z"), Some(digest('a')));
        assert_eq!(at_time("2026-05-02T12:00:00+02:00"), Some(digest('b')));
        assert_eq!(at_time("2026-05-03T23:00:00Z"), Some(digest('c')));
        assert_eq!(at_time("2030-01-01T00:00:00Z"), Some(digest('d')));
        let deleted = tag_state_as_of(&fixture.log, ALICE, "app", "v2", AsOf::Offset(99)).unwrap().unwrap();
        assert_eq!((deleted.change, deleted.to), ("delete", None));
        assert!(AsOf::parse_time("yesterday").is_err());
    }

    #[test]
    fn handles_resolve_from_the_logged_documents() {
        let moved = r##"{"id":"did:plc:alice","alsoKnownAs":["at://alice2.test"]}"##;
        let mut events = story();
        let fixture = fixture(events.clone());
        assert_eq!(resolve_did(&fixture.log, "Alice.Test").unwrap(), ALICE);
        assert_eq!(resolve_did(&fixture.log, "did:web:x").unwrap(), "did:web:x");
        assert!(matches!(resolve_did(&fixture.log, "nobody.test"), Err(AuditError::UnknownHandle(_))));
        events.push(event(
            ALICE,
            "",
            "2026-06-01T00:00:00Z",
            EventBody::IdentityResolved { document_json: moved.into() },
        ));
        let fixture = self::fixture(events.clone());
        assert!(resolve_did(&fixture.log, "alice.test").is_err(), "the old handle is released");
        assert_eq!(resolve_did(&fixture.log, "alice2.test").unwrap(), ALICE);
        // the views' rule: a refuted handle names no DID, a later verification restores it
        let check = |verified: bool| {
            let body = EventBody::HandleChecked { handle: "alice2.test".into(), verified, reason: String::new() };
            event(ALICE, "", "2026-06-02T00:00:00Z", body)
        };
        events.push(check(false));
        assert!(resolve_did(&self::fixture(events.clone()).log, "alice2.test").is_err(), "refuted");
        events.push(check(true));
        assert_eq!(resolve_did(&self::fixture(events).log, "alice2.test").unwrap(), ALICE);
    }

    #[test]
    fn repository_history_lists_manifests_tags_pages_and_stars() {
        let manifest = ipld!({
            "repository": "app", "digest": digest('a'), "mediaType": "application/vnd.oci.image.manifest.v1+json",
        });
        let mut events = vec![
            put(ALICE, "391", "2026-05-01T09:00:00Z", records::MANIFEST, &"a".repeat(64), manifest),
            put(ALICE, "392", "2026-05-01T09:30:00Z", records::REPO_PAGE, "app", ipld!({ "repository": "app" })),
        ];
        events.extend(story());
        events.push(put(
            BOB,
            "3c1",
            "2026-05-09T00:00:00Z",
            records::STAR,
            "s1",
            ipld!({ "subject": { "did": ALICE, "repository": "app" } }),
        ));
        events.push(delete(BOB, "3c2", "2026-05-09T01:00:00Z", records::STAR, "s1"));
        events.push(delete(ALICE, "3c3", "2026-05-09T02:00:00Z", records::MANIFEST, &"a".repeat(64)));
        let fixture = fixture(events);
        let history = repository_history(&fixture.log, ALICE, "app").unwrap();
        let whats: Vec<_> = history.iter().map(|entry| (entry.what, entry.action.as_str())).collect();
        assert_eq!(
            whats,
            [
                ("manifest", "create"),
                ("page", "create"),
                ("tag", "create"),
                ("tag", "create"),
                ("tag", "create"),
                ("tag", "create"),
                ("tag", "create"),
                ("tag", "create"),
                ("tag", "create"),
                ("tag", "create"),
                ("tag", "delete"),
                ("star", "create"),
                ("star", "delete"),
                ("manifest", "delete"),
            ]
        );
        assert_eq!(history[0].digest.as_deref(), Some(digest('a').as_str()));
        assert!(history.iter().all(|entry| entry.offset != 5), "the stale replay is skipped");
        assert_eq!(history[11].did, BOB);
    }

    #[test]
    fn record_views_diff_versions_and_page_activity() {
        let fixture = fixture(story());
        let view = fixture.audit.record("alice.test", records::TAG, "app_v1").unwrap().unwrap();
        assert_eq!(view.uri, "at://did:plc:alice/io.atcr.tag/app_v1");
        assert_eq!(view.versions.iter().map(|v| v.action.as_str()).collect::<Vec<_>>(), ["create", "create", "delete"]);
        assert_eq!(view.current, None, "deleted now");
        let diff = diff_versions(&view, view.versions[0].offset, view.versions[1].offset).unwrap();
        let changed: Vec<_> =
            diff.lines.iter().filter(|line| line.op != "equal").map(|line| (line.op, line.text.trim())).collect();
        assert!(changed.contains(&("delete", "\"tag\": \"v1\"")), "{changed:?}");
        assert!(changed.contains(&("insert", "\"tag\": \"v2\"")), "{changed:?}");
        assert!(diff_versions(&view, 0, view.versions[1].offset).is_err());
        let to_deleted = diff_versions(&view, view.versions[1].offset, view.versions[2].offset).unwrap();
        assert!(to_deleted.lines.iter().all(|line| line.op == "delete"));
        assert!(fixture.audit.record(ALICE, records::TAG, "missing").unwrap().is_none());

        let first = fixture.audit.activity("alice.test", None, 4).unwrap().unwrap();
        assert_eq!(first.entries.len(), 4);
        assert_eq!(first.entries[0].row.offset, 10, "newest first");
        let second = fixture.audit.activity("alice.test", first.next_before, 100).unwrap().unwrap();
        assert!(second.entries.iter().all(|entry| entry.row.offset < first.entries[3].row.offset));
        assert_eq!(second.next_before, None);
        assert_eq!(first.entries.len() + second.entries.len(), 9, "every applied record event");
        assert!(fixture.audit.activity("nobody.test", None, 10).unwrap().is_none());
    }

    #[test]
    fn references_parse() {
        assert_eq!(
            parse_repository_reference("alice.test/web/app:latest").unwrap(),
            ("alice.test".into(), "web/app".into(), Some("latest".into()))
        );
        assert_eq!(parse_repository_reference("did:plc:x/app").unwrap(), ("did:plc:x".into(), "app".into(), None));
        assert!(parse_repository_reference("app:latest").is_err());
        assert!(parse_repository_reference("a/app:").is_err());
        assert_eq!(
            parse_at_uri("at://did:plc:x/io.atcr.tag/app_latest").unwrap(),
            ("did:plc:x".into(), "io.atcr.tag".into(), "app_latest".into())
        );
        assert!(parse_at_uri("at://did:plc:x/io.atcr.tag").is_err());
        assert!(parse_at_uri("https://x/y/z").is_err());
    }
}
