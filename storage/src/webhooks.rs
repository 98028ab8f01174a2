//! The webhook delivery store, `<data_dir>/webhooks.redb`: the outbox (webhook events keyed by
//! the log offset they came from), the classifier's state (tag targets, verified handles) and its
//! log offset, per-subscription checkpoints and the delivery history.
//!
//! Why it is here: redb stays behind `atcr-storage`. What goes into the store (classification,
//! signing, sending, retries) is `atcr_ingest::webhooks`; this module only keeps it, with the
//! transactions that make delivery resumable: a classified chunk commits with the classifier's
//! offset, and a delivery record commits with the checkpoint past it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Result, StorageError};

const OUTBOX: TableDefinition<u64, &str> = TableDefinition::new("outbox");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TAGS: TableDefinition<&str, &str> = TableDefinition::new("tags");
const HANDLES: TableDefinition<&str, &str> = TableDefinition::new("handles");
const CHECKPOINTS: TableDefinition<&str, u64> = TableDefinition::new("checkpoints");
/// `<subscription>\0<offset, 20 digits>` → [`DeliveryRecord`] JSON.
const DELIVERIES: TableDefinition<&str, &str> = TableDefinition::new("deliveries");
/// Subscription → how many records `deliveries` holds for it (counted once when missing).
const DELIVERY_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("delivery_counts");

/// Delivery records kept per subscription: the newest. The history is for people looking at
/// what happened lately; kept whole it grew by a record per request for good (at 100
/// subscriptions × 1,000 events/s, ~25 MB/s).
pub const DELIVERY_HISTORY_KEPT: u64 = 10_000;
/// Records a subscription may hold past [`DELIVERY_HISTORY_KEPT`] before its oldest go, so the
/// pruning runs once per this many deliveries rather than on each.
const DELIVERY_HISTORY_SLACK: u64 = 1_000;
/// Outbox entries removed per transaction by [`WebhookStore::prune_outbox`]: a large backlog goes
/// in steps that keep each commit short for the classifier and the workers beside it.
const OUTBOX_PRUNE_BATCH: usize = 10_000;
const CLASSIFIED: &str = "classified";

fn corrupt(table: &str, error: serde_json::Error) -> StorageError {
    StorageError::Corrupt { location: format!("webhooks.redb {table}"), reason: error.to_string() }
}

/// What a webhook tells: one registry event, derived from one log event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    /// The log offset of the event it came from.
    pub offset: u64,
    /// The repository owner.
    pub did: String,
    /// The owner's handle, when a verified one was known at that point of the log.
    pub handle: Option<String>,
    pub repository: String,
    pub tag: Option<String>,
    /// The manifest pushed, or the tag's target (for `tag.deleted`: the target it had).
    pub digest: Option<String>,
    /// `tag.moved`: the target before the move.
    pub previous_digest: Option<String>,
    /// Who did it (the starrer for `repo.starred`, else the owner).
    pub actor: String,
    /// When atcr received the event (RFC 3339 is left to the receiver: microseconds since epoch).
    pub received_at_us: i64,
    /// `scan.completed`: the hold's verdict as its scan record states it. Absent from every
    /// other type (and from outbox entries written before scans existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanOutcome>,
}

/// What a `scan.completed` webhook says about the scan: the record's own summary. The CVE and
/// package lists are at `/api/v1/vulnerabilities/…` and `/api/v1/packages/…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanOutcome {
    /// The hold that scanned (the DID whose repository holds the scan record).
    pub hold: String,
    /// `ok`, `failed`, `skipped` (or a newer value, as written).
    pub status: String,
    /// Why the scan did not succeed, when the hold said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    pub total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanner: Option<String>,
}

/// A tag's target as the classifier last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagTarget {
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

/// How a delivery ended, as kept in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub delivery_id: String,
    pub offset: u64,
    pub event_type: String,
    /// `delivered` or `dead`.
    pub status: String,
    pub attempts: u32,
    /// The last attempt's HTTP status, when there was a response.
    pub response_code: Option<u16>,
    /// The last attempt's latency.
    pub latency_ms: u64,
    /// From the event's arrival in the log to the end of the delivery.
    pub end_to_end_ms: u64,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Unix milliseconds.
    pub finished_at_ms: u64,
    /// A batched delivery (one request for several events): the last event's offset (`offset`
    /// is the first's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offset: Option<u64>,
    /// A batched delivery: how many events it carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
}

/// One outbox event with its JSON (the stored bytes; a delivery body embeds them as they are, so
/// the event is serialized once, not once per subscription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub event: WebhookEvent,
    pub json: String,
}

/// The newest outbox entries in memory, complete from `start` (a log offset) on: a worker that
/// keeps up reads them here instead of decoding the same JSON once per subscription.
#[derive(Debug, Default)]
struct RecentOutbox {
    start: u64,
    entries: VecDeque<Arc<OutboxEntry>>,
}

/// How many entries [`RecentOutbox`] keeps (older ones are read from redb): about 16 s of 1,000
/// events/s, ~15 MB.
const RECENT_OUTBOX: usize = 16_384;

/// The classifier's state in memory: tag targets by `did\0rkey`, verified handles by DID.
pub type ClassifierState = (HashMap<String, TagTarget>, HashMap<String, String>);

/// The module's own state: outbox, classifier state, checkpoints, delivery history.
pub struct WebhookStore {
    db: Database,
    /// The outbox's next key (the classifier's log offset), published after each commit.
    outbox_head: watch::Sender<u64>,
    /// When the classifier last committed durably.
    classified_durably: Mutex<Instant>,
    recent: Mutex<RecentOutbox>,
}

impl WebhookStore {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("webhooks.redb")
    }

    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let db = Database::create(Self::path(data_dir))?;
        let write = db.begin_write()?;
        {
            write.open_table(OUTBOX)?;
            write.open_table(META)?;
            write.open_table(TAGS)?;
            write.open_table(HANDLES)?;
            write.open_table(CHECKPOINTS)?;
            write.open_table(DELIVERIES)?;
            write.open_table(DELIVERY_COUNTS)?;
        }
        write.commit()?;
        let store = WebhookStore {
            db,
            outbox_head: watch::Sender::new(0),
            classified_durably: Mutex::new(Instant::now()),
            recent: Mutex::new(RecentOutbox::default()),
        };
        let classified = store.classified()?;
        if let Ok(mut recent) = store.recent.lock() {
            recent.start = classified;
        }
        store.outbox_head.send_replace(classified);
        Ok(store)
    }

    /// The next log offset the classifier reads (= the outbox's logical head).
    pub fn classified(&self) -> Result<u64> {
        let read = self.db.begin_read()?;
        let meta = read.open_table(META)?;
        Ok(meta.get(CLASSIFIED)?.map(|value| value.value()).unwrap_or(0))
    }

    /// The classifier's state as last committed.
    pub fn load_state(&self) -> Result<ClassifierState> {
        let read = self.db.begin_read()?;
        let mut tags = HashMap::new();
        for entry in read.open_table(TAGS)?.iter()? {
            let (key, value) = entry?;
            let target: TagTarget = serde_json::from_str(value.value()).map_err(|error| corrupt("tags", error))?;
            tags.insert(key.value().to_string(), target);
        }
        let mut handles = HashMap::new();
        for entry in read.open_table(HANDLES)?.iter()? {
            let (key, value) = entry?;
            handles.insert(key.value().to_string(), value.value().to_string());
        }
        Ok((tags, handles))
    }

    /// Commits one classified chunk: its events, the state changes and the new log offset.
    pub fn commit_classified(
        &self,
        events: &[WebhookEvent],
        tags: &BTreeMap<String, Option<TagTarget>>,
        handles: &BTreeMap<String, Option<String>>,
        next: u64,
    ) -> Result<()> {
        let mut write = self.db.begin_write()?;
        let mut entries = Vec::with_capacity(events.len());
        // At most one fsync a second of its own: the outbox is a deterministic image of a log
        // prefix, so losing the newest classification in a crash only means classifying those
        // events again (same keys, same bytes). The transaction stays atomic, and the next
        // durable commit (its own or the delivery progress's) persists it.
        let durable = self.classified_durably.lock().map_or(true, |last| last.elapsed() >= Duration::from_secs(1));
        let durability = if durable { Durability::Immediate } else { Durability::None };
        write.set_durability(durability)?;
        {
            let mut outbox = write.open_table(OUTBOX)?;
            for event in events {
                let json = serde_json::to_string(event).map_err(|error| corrupt("outbox", error))?;
                outbox.insert(event.offset, json.as_str())?;
                entries.push(Arc::new(OutboxEntry { event: event.clone(), json }));
            }
            let mut tag_table = write.open_table(TAGS)?;
            for (key, target) in tags {
                match target {
                    Some(target) => {
                        let json = serde_json::to_string(target).map_err(|error| corrupt("tags", error))?;
                        tag_table.insert(key.as_str(), json.as_str())?;
                    }
                    None => {
                        tag_table.remove(key.as_str())?;
                    }
                }
            }
            let mut handle_table = write.open_table(HANDLES)?;
            for (did, handle) in handles {
                match handle {
                    Some(handle) => {
                        handle_table.insert(did.as_str(), handle.as_str())?;
                    }
                    None => {
                        handle_table.remove(did.as_str())?;
                    }
                }
            }
            write.open_table(META)?.insert(CLASSIFIED, next)?;
        }
        write.commit()?;
        if durable && let Ok(mut last) = self.classified_durably.lock() {
            *last = Instant::now();
        }
        // The memory copy before the head: a worker that saw the new head finds the events.
        if let Ok(mut recent) = self.recent.lock() {
            recent.entries.extend(entries);
            while recent.entries.len() > RECENT_OUTBOX {
                if let Some(evicted) = recent.entries.pop_front() {
                    recent.start = evicted.event.offset + 1;
                }
            }
        }
        self.outbox_head.send_replace(next);
        Ok(())
    }

    /// Up to `limit` outbox events at or after `from`.
    pub fn outbox_from(&self, from: u64, limit: usize) -> Result<Vec<WebhookEvent>> {
        Ok(self.outbox_entries_from(from, limit)?.into_iter().map(|entry| entry.event.clone()).collect())
    }

    /// Up to `limit` outbox entries at or after `from`: from memory when it holds them, else
    /// from redb.
    pub fn outbox_entries_from(&self, from: u64, limit: usize) -> Result<Vec<Arc<OutboxEntry>>> {
        if let Ok(recent) = self.recent.lock()
            && from >= recent.start
        {
            let first = recent.entries.partition_point(|entry| entry.event.offset < from);
            return Ok(recent.entries.range(first..).take(limit).cloned().collect());
        }
        let read = self.db.begin_read()?;
        let outbox = read.open_table(OUTBOX)?;
        let mut out = Vec::new();
        for entry in outbox.range(from..)?.take(limit) {
            let (_, value) = entry?;
            let json = value.value().to_string();
            let event = serde_json::from_str(&json).map_err(|error| corrupt("outbox", error))?;
            out.push(Arc::new(OutboxEntry { event, json }));
        }
        Ok(out)
    }

    /// Removes outbox entries received before `received_before_us` (µs since the epoch) and
    /// below `below` (the lowest checkpoint a subscription still reads from), oldest first, in
    /// transactions of [`OUTBOX_PRUNE_BATCH`]; stops at the first entry that must stay (entries
    /// are in log order, and atcr's receive time follows it). Returns how many went.
    pub fn prune_outbox(&self, received_before_us: i64, below: u64) -> Result<u64> {
        /// The one field pruning reads from an entry's JSON.
        #[derive(Deserialize)]
        struct Received {
            received_at_us: i64,
        }
        let mut pruned = 0u64;
        loop {
            let expired: Vec<u64> = {
                let read = self.db.begin_read()?;
                let outbox = read.open_table(OUTBOX)?;
                let mut expired = Vec::new();
                for entry in outbox.range(..below)?.take(OUTBOX_PRUNE_BATCH) {
                    let (offset, json) = entry?;
                    let received: Received =
                        serde_json::from_str(json.value()).map_err(|error| corrupt("outbox", error))?;
                    if received.received_at_us >= received_before_us {
                        break;
                    }
                    expired.push(offset.value());
                }
                expired
            };
            if expired.is_empty() {
                return Ok(pruned);
            }
            let write = self.db.begin_write()?;
            {
                let mut outbox = write.open_table(OUTBOX)?;
                for offset in &expired {
                    outbox.remove(*offset)?;
                }
            }
            write.commit()?;
            // The memory copy holds the newest entries: drop any of these, so a read from
            // before them goes to redb.
            if let (Some(&last), Ok(mut recent)) = (expired.last(), self.recent.lock())
                && recent.start <= last
            {
                while recent.entries.front().is_some_and(|entry| entry.event.offset <= last) {
                    recent.entries.pop_front();
                }
                recent.start = last + 1;
            }
            pruned += expired.len() as u64;
            if expired.len() < OUTBOX_PRUNE_BATCH {
                return Ok(pruned);
            }
        }
    }

    pub fn checkpoint(&self, subscription: &str) -> Result<Option<u64>> {
        let read = self.db.begin_read()?;
        let table = read.open_table(CHECKPOINTS)?;
        Ok(table.get(subscription)?.map(|value| value.value()))
    }

    /// Records how a delivery ended (if any) and moves the subscription's checkpoint, together.
    pub fn commit_progress(&self, subscription: &str, record: Option<&DeliveryRecord>, checkpoint: u64) -> Result<()> {
        let progress = Progress { subscription: subscription.to_string(), record: record.cloned(), checkpoint };
        self.commit_group(std::slice::from_ref(&progress))
    }

    /// Commits the progress of many deliveries (any subscriptions) in one durable transaction,
    /// pruning each subscription's history to its newest [`DELIVERY_HISTORY_KEPT`] records.
    pub fn commit_group(&self, group: &[Progress]) -> Result<()> {
        let mut write = self.db.begin_write()?;
        write.set_durability(Durability::Immediate)?;
        {
            // Records in key order (each subscription's run of the tree once), and one checkpoint
            // per subscription: its last in the group (a worker reports in order).
            let mut records = Vec::with_capacity(group.len());
            let mut newest: HashMap<&str, u64> = HashMap::new();
            for progress in group {
                if let Some(record) = &progress.record {
                    let key = format!("{}\0{:020}", progress.subscription, record.offset);
                    let json = serde_json::to_string(record).map_err(|error| corrupt("deliveries", error))?;
                    records.push((key, json, progress.subscription.as_str()));
                }
                newest.insert(progress.subscription.as_str(), progress.checkpoint);
            }
            records.sort_unstable();
            let mut deliveries = write.open_table(DELIVERIES)?;
            // Records each subscription gained (a record sent again after a crash replaces one).
            let mut added: BTreeMap<&str, u64> = BTreeMap::new();
            for (key, json, subscription) in &records {
                let replaced = deliveries.insert(key.as_str(), json.as_str())?.is_some();
                *added.entry(subscription).or_default() += u64::from(!replaced);
            }
            let mut counts = write.open_table(DELIVERY_COUNTS)?;
            for (subscription, added) in added {
                let held = match counts.get(subscription)?.map(|count| count.value()) {
                    Some(count) => count + added,
                    // Kept before counts were: count once.
                    None => history_len(&deliveries, subscription)?,
                };
                let held = if held > DELIVERY_HISTORY_KEPT + DELIVERY_HISTORY_SLACK {
                    prune_history(&mut deliveries, subscription, held - DELIVERY_HISTORY_KEPT)?;
                    DELIVERY_HISTORY_KEPT
                } else {
                    held
                };
                counts.insert(subscription, held)?;
            }
            let mut checkpoints = write.open_table(CHECKPOINTS)?;
            for (subscription, checkpoint) in newest {
                checkpoints.insert(subscription, checkpoint)?;
            }
        }
        Ok(write.commit()?)
    }

    /// A subscription's delivery history, newest first.
    pub fn deliveries(&self, subscription: &str, limit: usize) -> Result<Vec<DeliveryRecord>> {
        let read = self.db.begin_read()?;
        let table = read.open_table(DELIVERIES)?;
        let (start, end) = history_bounds(subscription);
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..end.as_str())?.rev().take(limit) {
            let (_, value) = entry?;
            out.push(serde_json::from_str(value.value()).map_err(|error| corrupt("deliveries", error))?);
        }
        Ok(out)
    }

    /// Removes the checkpoint, delivery history and record count of every subscription state
    /// `stale` picks (it sees the state keys the store holds); returns how many went. Writes
    /// nothing when none is stale.
    pub fn forget_states(&self, stale: impl Fn(&str) -> bool) -> Result<usize> {
        let gone: Vec<String> = {
            let read = self.db.begin_read()?;
            let checkpoints = read.open_table(CHECKPOINTS)?;
            let mut gone = Vec::new();
            for entry in checkpoints.iter()? {
                let key = entry?.0.value().to_string();
                if stale(&key) {
                    gone.push(key);
                }
            }
            gone
        };
        if gone.is_empty() {
            return Ok(0);
        }
        let mut write = self.db.begin_write()?;
        write.set_durability(Durability::Immediate)?;
        {
            let mut checkpoints = write.open_table(CHECKPOINTS)?;
            let mut counts = write.open_table(DELIVERY_COUNTS)?;
            let mut deliveries = write.open_table(DELIVERIES)?;
            for key in &gone {
                checkpoints.remove(key.as_str())?;
                counts.remove(key.as_str())?;
                prune_history(&mut deliveries, key, u64::MAX)?;
            }
        }
        write.commit()?;
        Ok(gone.len())
    }

    pub fn subscribe_outbox(&self) -> watch::Receiver<u64> {
        self.outbox_head.subscribe()
    }
}

/// The keys of a subscription's delivery records: `subscription \0 offset`.
fn history_bounds(subscription: &str) -> (String, String) {
    (format!("{subscription}\0"), format!("{subscription}\u{1}"))
}

fn history_len(deliveries: &impl ReadableTable<&'static str, &'static str>, subscription: &str) -> Result<u64> {
    let (start, end) = history_bounds(subscription);
    let mut count = 0;
    for entry in deliveries.range(start.as_str()..end.as_str())? {
        entry?;
        count += 1;
    }
    Ok(count)
}

/// Removes a subscription's `oldest` oldest delivery records.
fn prune_history(deliveries: &mut redb::Table<&str, &str>, subscription: &str, oldest: u64) -> Result<()> {
    let (start, end) = history_bounds(subscription);
    let mut keys = Vec::new();
    for entry in deliveries.range(start.as_str()..end.as_str())?.take(usize::try_from(oldest).unwrap_or(usize::MAX)) {
        keys.push(entry?.0.value().to_string());
    }
    for key in keys {
        deliveries.remove(key.as_str())?;
    }
    Ok(())
}

/// One delivery's progress: its record (none for events a filter skipped) and the checkpoint
/// past it, on its way to the group committer.
#[derive(Debug, Clone)]
pub struct Progress {
    pub subscription: String,
    pub record: Option<DeliveryRecord>,
    pub checkpoint: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, did: &str, handle: Option<&str>, repository: &str) -> WebhookEvent {
        WebhookEvent {
            event_type: event_type.into(),
            offset: 0,
            did: did.into(),
            handle: handle.map(str::to_string),
            repository: repository.into(),
            tag: None,
            digest: None,
            previous_digest: None,
            actor: did.into(),
            received_at_us: 0,
            scan: None,
        }
    }

    #[test]
    fn the_store_keeps_outbox_checkpoints_and_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = WebhookStore::open(dir.path()).expect("open");
        let events = vec![event("tag.created", "did:plc:a", None, "app")];
        store.commit_classified(&events, &BTreeMap::new(), &BTreeMap::new(), 5).expect("commit");
        assert_eq!(store.classified().expect("classified"), 5);
        assert_eq!(store.outbox_from(0, 10).expect("outbox"), events);
        // Read again after a reopen: the memory copy starts empty at the head, so this read is
        // redb's, and gives the same event and the same JSON.
        let memory = store.outbox_entries_from(0, 10).expect("memory");
        drop(store);
        let store = WebhookStore::open(dir.path()).expect("reopen");
        assert_eq!(store.outbox_entries_from(0, 10).expect("redb"), memory);
        assert!(store.outbox_entries_from(5, 10).expect("past the head").is_empty());
        let record = delivered("ci", 0).record.expect("a delivery record");
        store.commit_progress("ci", Some(&record), 1).expect("progress");
        store
            .commit_progress("cid", Some(&DeliveryRecord { delivery_id: "cid-0".into(), ..record.clone() }), 1)
            .expect("other");
        assert_eq!(store.checkpoint("ci").expect("checkpoint"), Some(1));
        assert_eq!(store.deliveries("ci", 10).expect("history"), vec![record.clone()]);
        // A group: the records of both, the subscription's last checkpoint.
        let later = |offset: u64| DeliveryRecord { delivery_id: format!("ci-{offset}"), offset, ..record.clone() };
        let progress =
            |offset: u64| Progress { subscription: "ci".into(), record: Some(later(offset)), checkpoint: offset + 1 };
        store.commit_group(&[progress(1), progress(2)]).expect("group");
        assert_eq!(store.checkpoint("ci").expect("checkpoint"), Some(3));
        assert_eq!(store.deliveries("ci", 10).expect("history"), vec![later(2), later(1), record]);
    }

    #[test]
    fn pruning_removes_old_entries_below_the_bound_and_stops_at_the_first_to_keep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = WebhookStore::open(dir.path()).expect("open");
        // Offsets 0..6 received at 100, 200, …, 600 µs.
        let events: Vec<WebhookEvent> = (0..6u64)
            .map(|offset| WebhookEvent {
                offset,
                received_at_us: 100 * (offset as i64 + 1),
                ..event("tag.created", "did:plc:a", None, "app")
            })
            .collect();
        store.commit_classified(&events, &BTreeMap::new(), &BTreeMap::new(), 6).expect("commit");
        let offsets = |store: &WebhookStore| -> Vec<u64> {
            let read = store.db.begin_read().expect("read");
            let outbox = read.open_table(OUTBOX).expect("outbox");
            outbox.iter().expect("iter").map(|entry| entry.expect("entry").0.value()).collect()
        };
        // Nothing received before 100 µs.
        assert_eq!(store.prune_outbox(100, u64::MAX).expect("prune"), 0);
        // Received before 350 µs, but a subscription still reads from offset 1.
        assert_eq!(store.prune_outbox(350, 1).expect("prune"), 1);
        assert_eq!(offsets(&store), vec![1, 2, 3, 4, 5]);
        // No bound: everything received before 350 µs.
        assert_eq!(store.prune_outbox(350, u64::MAX).expect("prune"), 2);
        assert_eq!(offsets(&store), vec![3, 4, 5]);
        // An entry received out of order after one to keep stays: the scan stops at the first.
        let late = WebhookEvent { offset: 6, received_at_us: 50, ..events[0].clone() };
        store.commit_classified(&[late], &BTreeMap::new(), &BTreeMap::new(), 7).expect("commit");
        assert_eq!(store.prune_outbox(450, u64::MAX).expect("prune"), 1);
        assert_eq!(offsets(&store), vec![4, 5, 6]);
        // What is left reads as before, from redb after a reopen.
        drop(store);
        let store = WebhookStore::open(dir.path()).expect("reopen");
        let left: Vec<u64> = store.outbox_from(0, 10).expect("outbox").iter().map(|event| event.offset).collect();
        assert_eq!(left, vec![4, 5, 6]);
    }

    fn delivered(subscription: &str, offset: u64) -> Progress {
        let record = DeliveryRecord {
            delivery_id: format!("{subscription}-{offset}"),
            offset,
            event_type: "tag.created".into(),
            status: "delivered".into(),
            attempts: 1,
            response_code: Some(200),
            latency_ms: 1,
            end_to_end_ms: 2,
            error: None,
            finished_at_ms: 3,
            last_offset: None,
            batch_size: None,
        };
        Progress { subscription: subscription.into(), record: Some(record), checkpoint: offset + 1 }
    }

    /// A subscription keeps its newest records only, a redelivery does not count twice, other
    /// subscriptions (one whose name starts the same) keep theirs, and a history kept before
    /// the counts is counted on its next delivery.
    #[test]
    fn the_history_keeps_the_newest_records_of_each_subscription() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = WebhookStore::open(dir.path()).expect("open");
        let total = DELIVERY_HISTORY_KEPT + DELIVERY_HISTORY_SLACK + 500;
        let group: Vec<Progress> = (0..total).map(|offset| delivered("ci", offset)).collect();
        for chunk in group.chunks(2_000) {
            store.commit_group(chunk).expect("group");
            store.commit_group(&[delivered("cid", chunk[0].checkpoint)]).expect("other");
        }
        let kept = store.deliveries("ci", usize::MAX).expect("history");
        assert!(
            (DELIVERY_HISTORY_KEPT..=DELIVERY_HISTORY_KEPT + DELIVERY_HISTORY_SLACK).contains(&(kept.len() as u64)),
            "{} records kept",
            kept.len()
        );
        assert_eq!(kept.first().map(|record| record.offset), Some(total - 1), "the newest stays");
        assert!(kept.windows(2).all(|pair| pair[0].offset == pair[1].offset + 1), "no gap: the oldest went");
        assert_eq!(store.deliveries("cid", usize::MAX).expect("other").len(), 6);

        // Sending the newest again replaces it; forgetting the counts makes the store count.
        store.commit_group(&[delivered("ci", total - 1)]).expect("again");
        assert_eq!(store.deliveries("ci", usize::MAX).expect("history").len(), kept.len());
        let write = store.db.begin_write().expect("write");
        write.open_table(DELIVERY_COUNTS).expect("counts").remove("ci").expect("forget");
        write.commit().expect("commit");
        let end = total + DELIVERY_HISTORY_SLACK + 1;
        let more: Vec<Progress> = (total..end).map(|offset| delivered("ci", offset)).collect();
        store.commit_group(&more).expect("more");
        let kept = store.deliveries("ci", usize::MAX).expect("history");
        assert_eq!(kept.len() as u64, DELIVERY_HISTORY_KEPT, "recounted, past the slack, pruned");
        assert_eq!(kept.first().map(|record| record.offset), Some(end - 1));
    }

    /// Forgetting a subscription's state removes its checkpoint, history and count, and only
    /// those of the states picked.
    #[test]
    fn forgotten_states_leave_the_others_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = WebhookStore::open(dir.path()).expect("store");
        for subscription in ["hook#1", "hook#2", "hook", "other"] {
            store.commit_group(&[delivered(subscription, 3), delivered(subscription, 4)]).expect("progress");
        }
        assert_eq!(store.forget_states(|key| key == "nothing").expect("forget"), 0);
        assert_eq!(store.forget_states(|key| key == "hook#1").expect("forget"), 1);
        assert_eq!(store.checkpoint("hook#1").expect("checkpoint"), None);
        assert!(store.deliveries("hook#1", 10).expect("history").is_empty());
        for kept in ["hook#2", "hook", "other"] {
            assert_eq!(store.checkpoint(kept).expect("checkpoint"), Some(5), "{kept}");
            assert_eq!(store.deliveries(kept, 10).expect("history").len(), 2, "{kept}");
        }
        // The key can hold state again.
        store.commit_group(&[delivered("hook#1", 9)]).expect("progress");
        assert_eq!(store.deliveries("hook#1", 10).expect("history").len(), 1);
    }
}
