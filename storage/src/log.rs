//! The append-only event log on redb.
//!
//! Why it exists: the log is the only source of truth (invariant 1). Everything it needs to
//! promise is promised here, in one place:
//! - an append batch (events, the signed commit blocks they came from, quarantined input,
//!   stream notes and the upstream cursor) is committed in **one** durable transaction, so a
//!   crash never loses an event and never lets the cursor run ahead of, or behind, the events
//!   it produced (invariant 2);
//! - offsets are dense, start at 0 and are assigned here, never by callers;
//! - existing entries are never rewritten or removed: there is no API that could.
//!
//! Only one process may write; any number may read (redb `SingleWriter` mode), so `atcr log
//! tail` works while `atcr serve` runs.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use redb::{
    ConcurrencyMode, Database, Durability, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use tokio::sync::watch;

use crate::error::{Result, StorageError};
use crate::event::{
    Event, QuarantineEntry, StoredEvent, StreamNote, StreamNoteKind, decode_event, decode_versioned, encode_event_into,
    encode_versioned,
};

/// redb's page cache for a log opened read-only (its default is 1 GiB). The commands that do so
/// (`replay`, `audit`, `log`, benchmarks) mostly go through the log once, and a page read once
/// gains nothing from staying cached: a 1 GiB cache only cost fresh memory, which the kernel
/// clears on first touch. With 64 MiB a 1.3M-event rebuild peaked at 3.8 GB instead of 5.1 GB
/// and spent 2.8 s in the kernel instead of 4.3-5.9 s; with 4 MiB the page buffers it recycles
/// (zeroed, then filled, once per page read) are still in the CPU caches when reused. It still
/// holds the trees' upper levels.
const READ_ONLY_CACHE_BYTES: usize = 4 << 20;

const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const COMMIT_BLOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("commit_blocks");
const CURSORS: TableDefinition<&str, i64> = TableDefinition::new("upstream_cursors");
const QUARANTINE: TableDefinition<u64, &[u8]> = TableDefinition::new("quarantine");
const NOTES: TableDefinition<u64, &[u8]> = TableDefinition::new("stream_notes");
const TRACKED_DIDS: TableDefinition<&str, u64> = TableDefinition::new("tracked_dids");
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("counts");
/// Log consumers that append (enrichment): the next offset each will read, committed with
/// what it appended.
const CONSUMER_CHECKPOINTS: TableDefinition<&str, u64> = TableDefinition::new("consumer_checkpoints");
/// Per DID: (the newest rev whose commit verified, the newest rev seen in any commit). Live
/// ingest refuses commits at or below the first and checks each commit's `since` against the
/// second; both are committed with the batch that reached them.
const REPO_REVS: TableDefinition<&str, (&str, &str)> = TableDefinition::new("repo_revs");

/// Everything that must become durable together.
#[derive(Debug, Default, Clone)]
pub struct AppendBatch {
    pub events: Vec<Event>,
    /// Signed commit blocks, by commit CID, so signatures can be re-checked offline later.
    pub commit_blocks: Vec<(String, Vec<u8>)>,
    pub quarantine: Vec<QuarantineEntry>,
    pub notes: Vec<StreamNote>,
    /// Upstream cursors reached by this batch, by upstream URL.
    pub cursors: Vec<(String, i64)>,
    /// Log-consumer checkpoints reached by this batch, by consumer name.
    pub checkpoints: Vec<(String, u64)>,
    /// Per-DID revision state reached by this batch (later entries win).
    pub repo_revs: Vec<(String, RepoRevs)>,
}

/// Where a repository stands for live verification.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoRevs {
    /// The rev of the newest commit whose signature (and ops, where provable) verified.
    pub verified: String,
    /// The rev of the newest commit seen for the DID, verified or not (its `since` chain).
    pub seen: String,
}

impl AppendBatch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.commit_blocks.is_empty()
            && self.quarantine.is_empty()
            && self.notes.is_empty()
            && self.cursors.is_empty()
            && self.checkpoints.is_empty()
            && self.repo_revs.is_empty()
    }

    /// Moves everything of `other` to the end of this batch (later cursors win).
    pub fn absorb(&mut self, other: AppendBatch) {
        self.events.extend(other.events);
        self.commit_blocks.extend(other.commit_blocks);
        self.quarantine.extend(other.quarantine);
        self.notes.extend(other.notes);
        self.cursors.extend(other.cursors);
        self.checkpoints.extend(other.checkpoints);
        self.repo_revs.extend(other.repo_revs);
    }
}

/// Where a batch's events landed: offsets `first_offset .. first_offset + appended`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReceipt {
    pub first_offset: u64,
    pub appended: usize,
}

/// Aggregate numbers about the log, kept up to date inside every append transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LogStats {
    pub events: u64,
    pub next_offset: u64,
    pub quarantined: u64,
    pub stream_notes: u64,
    pub tracked_dids: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub by_collection: BTreeMap<String, u64>,
    pub cursors: BTreeMap<String, i64>,
}

enum Handle {
    Writable(Database),
    ReadOnly(ReadOnlyDatabase),
}

pub struct EventLog {
    handle: Handle,
    /// The next offset to be assigned, published after every append so tailing readers wake.
    head: watch::Sender<u64>,
}

impl EventLog {
    /// Opens (creating if needed) the log for writing. Fails with [`StorageError::AlreadyOpen`]
    /// when another process writes to it.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let database = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .create(path)
            .map_err(map_open_error)?;
        let write = database.begin_write()?;
        {
            // Create every table up front so read-only openers never meet a missing table.
            write.open_table(EVENTS)?;
            write.open_table(COMMIT_BLOCKS)?;
            write.open_table(CURSORS)?;
            write.open_table(QUARANTINE)?;
            write.open_table(NOTES)?;
            write.open_table(TRACKED_DIDS)?;
            write.open_table(COUNTS)?;
            write.open_table(CONSUMER_CHECKPOINTS)?;
            write.open_table(REPO_REVS)?;
        }
        write.commit()?;
        let log = EventLog { handle: Handle::Writable(database), head: watch::Sender::new(0) };
        let next = log.next_offset()?;
        log.head.send_replace(next);
        Ok(log)
    }

    /// Opens an existing log for reading, alongside a writer in another process if there is one,
    /// with a small page cache (`READ_ONLY_CACHE_BYTES`).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no event log at {}", path.display()),
            )));
        }
        let database = redb::Builder::new()
            .set_cache_size(READ_ONLY_CACHE_BYTES)
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .open_read_only(path)
            .map_err(map_open_error)?;
        let log = EventLog { handle: Handle::ReadOnly(database), head: watch::Sender::new(0) };
        let next = log.next_offset()?;
        log.head.send_replace(next);
        Ok(log)
    }

    fn read_txn(&self) -> Result<ReadTransaction> {
        Ok(match &self.handle {
            Handle::Writable(database) => database.begin_read()?,
            Handle::ReadOnly(database) => database.begin_read()?,
        })
    }

    fn write_txn(&self) -> Result<WriteTransaction> {
        let Handle::Writable(database) = &self.handle else {
            return Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "event log was opened read-only",
            )));
        };
        let mut write = database.begin_write()?;
        write.set_durability(Durability::Immediate)?;
        Ok(write)
    }

    /// A receiver that changes whenever events land; its value is the next offset to be assigned.
    /// Only appends made through this handle notify it (other processes poll).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Appends one batch in one durable transaction.
    pub fn append(&self, batch: AppendBatch) -> Result<AppendReceipt> {
        let mut receipts = self.append_group(vec![batch])?;
        Ok(receipts.remove(0))
    }

    /// Appends several batches in one durable transaction (group commit): one fsync for all.
    /// Returns one receipt per batch, in order.
    pub fn append_group(&self, batches: Vec<AppendBatch>) -> Result<Vec<AppendReceipt>> {
        let write = self.write_txn()?;
        let mut receipts = Vec::with_capacity(batches.len());
        let next_offset;
        {
            let mut events = write.open_table(EVENTS)?;
            let mut commit_blocks = write.open_table(COMMIT_BLOCKS)?;
            let mut cursors = write.open_table(CURSORS)?;
            let mut quarantine = write.open_table(QUARANTINE)?;
            let mut notes = write.open_table(NOTES)?;
            let mut tracked_dids = write.open_table(TRACKED_DIDS)?;
            let mut counts = write.open_table(COUNTS)?;
            let mut checkpoints = write.open_table(CONSUMER_CHECKPOINTS)?;
            let mut repo_revs = write.open_table(REPO_REVS)?;

            let mut offset = match events.last()? {
                Some((key, _)) => key.value() + 1,
                None => 0,
            };
            let mut quarantine_id = next_key(&quarantine)?;
            let mut note_id = next_key(&notes)?;
            // Counted per group, written once per key: no per-event key formatting.
            let mut kind_deltas: BTreeMap<&'static str, u64> = BTreeMap::new();
            let mut collection_deltas: BTreeMap<String, u64> = BTreeMap::new();
            let mut dids_seen: HashSet<String> = HashSet::new();
            let mut encoded = Vec::with_capacity(512);

            for batch in batches {
                let first_offset = offset;
                let appended = batch.events.len();
                for event in &batch.events {
                    encode_event_into(event, &mut encoded);
                    events.insert(offset, encoded.as_slice())?;
                    *kind_deltas.entry(event.body.kind()).or_default() += 1;
                    if let Some(collection) = event.body.collection() {
                        match collection_deltas.get_mut(collection) {
                            Some(count) => *count += 1,
                            None => {
                                collection_deltas.insert(collection.to_string(), 1);
                            }
                        }
                        if !dids_seen.contains(&event.did) {
                            if tracked_dids.get(event.did.as_str())?.is_none() {
                                tracked_dids.insert(event.did.as_str(), offset)?;
                            }
                            dids_seen.insert(event.did.clone());
                        }
                    }
                    offset += 1;
                }
                for (cid, block) in &batch.commit_blocks {
                    commit_blocks.insert(cid.as_str(), block.as_slice())?;
                }
                for entry in &batch.quarantine {
                    quarantine.insert(quarantine_id, encode_versioned(entry).as_slice())?;
                    quarantine_id += 1;
                }
                for note in &batch.notes {
                    notes.insert(note_id, encode_versioned(note).as_slice())?;
                    note_id += 1;
                }
                for (upstream, cursor) in &batch.cursors {
                    cursors.insert(upstream.as_str(), *cursor)?;
                }
                for (consumer, offset) in &batch.checkpoints {
                    checkpoints.insert(consumer.as_str(), *offset)?;
                }
                for (did, revs) in &batch.repo_revs {
                    repo_revs.insert(did.as_str(), (revs.verified.as_str(), revs.seen.as_str()))?;
                }
                receipts.push(AppendReceipt { first_offset, appended });
            }
            let deltas = kind_deltas.into_iter().map(|(kind, delta)| (format!("kind/{kind}"), delta)).chain(
                collection_deltas.into_iter().map(|(collection, delta)| (format!("collection/{collection}"), delta)),
            );
            for (key, delta) in deltas {
                let current = counts.get(key.as_str())?.map(|value| value.value()).unwrap_or(0);
                counts.insert(key.as_str(), current + delta)?;
            }
            next_offset = offset;
        }
        write.commit()?;
        self.head.send_replace(next_offset);
        Ok(receipts)
    }

    /// Records an operator's cursor reset (or removal) together with a note saying so.
    pub fn reset_cursor(&self, upstream: &str, to: Option<i64>, note: StreamNote) -> Result<()> {
        debug_assert_eq!(note.kind, StreamNoteKind::CursorReset);
        let write = self.write_txn()?;
        {
            let mut cursors = write.open_table(CURSORS)?;
            match to {
                Some(cursor) => {
                    cursors.insert(upstream, cursor)?;
                }
                None => {
                    cursors.remove(upstream)?;
                }
            }
            let mut notes = write.open_table(NOTES)?;
            let id = next_key(&notes)?;
            notes.insert(id, encode_versioned(&note).as_slice())?;
        }
        write.commit()?;
        Ok(())
    }

    /// The next offset to be assigned (= number of events, offsets are dense).
    pub fn next_offset(&self) -> Result<u64> {
        let read = self.read_txn()?;
        let events = read.open_table(EVENTS)?;
        Ok(match events.last()? {
            Some((key, _)) => key.value() + 1,
            None => 0,
        })
    }

    /// Up to `limit` events starting at offset `from`.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let read = self.read_txn()?;
        let events = read.open_table(EVENTS)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for entry in events.range(from..)?.take(limit) {
            let (key, value) = entry?;
            let offset = key.value();
            out.push(StoredEvent { offset, event: decode_event(offset, value.value())? });
        }
        Ok(out)
    }

    pub fn event(&self, offset: u64) -> Result<Option<Event>> {
        let read = self.read_txn()?;
        let events = read.open_table(EVENTS)?;
        match events.get(offset)? {
            Some(value) => Ok(Some(decode_event(offset, value.value())?)),
            None => Ok(None),
        }
    }

    pub fn cursor(&self, upstream: &str) -> Result<Option<i64>> {
        let read = self.read_txn()?;
        let cursors = read.open_table(CURSORS)?;
        Ok(cursors.get(upstream)?.map(|value| value.value()))
    }

    /// Where a log consumer that appends (enrichment) left off.
    pub fn consumer_checkpoint(&self, consumer: &str) -> Result<Option<u64>> {
        let read = self.read_txn()?;
        let checkpoints = read.open_table(CONSUMER_CHECKPOINTS)?;
        Ok(checkpoints.get(consumer)?.map(|value| value.value()))
    }

    /// Every DID's revision state for live verification (one row per tracked repository).
    pub fn repo_revs(&self) -> Result<Vec<(String, RepoRevs)>> {
        let read = self.read_txn()?;
        // A log written before this table existed, opened read-only, has none yet.
        let table = match read.open_table(REPO_REVS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (did, value) = entry?;
            let (verified, seen) = value.value();
            out.push((did.value().to_string(), RepoRevs { verified: verified.to_string(), seen: seen.to_string() }));
        }
        Ok(out)
    }

    pub fn commit_block(&self, commit_cid: &str) -> Result<Option<Vec<u8>>> {
        let read = self.read_txn()?;
        let blocks = read.open_table(COMMIT_BLOCKS)?;
        Ok(blocks.get(commit_cid)?.map(|value| value.value().to_vec()))
    }

    /// **Test support only: compiled only with the `tamper-for-tests` feature, which only the
    /// workspace's dev-dependencies enable.** Replaces the stored signed block of a commit,
    /// simulating tampering with the file on disk, so tests can prove that `atcr audit verify`
    /// notices. A release build has no API that rewrites the log (invariant 1).
    #[cfg(feature = "tamper-for-tests")]
    pub fn overwrite_commit_block_for_audit_tests(&self, commit_cid: &str, block: &[u8]) -> Result<()> {
        let write = self.write_txn()?;
        {
            let mut blocks = write.open_table(COMMIT_BLOCKS)?;
            blocks.insert(commit_cid, block)?;
        }
        write.commit()?;
        Ok(())
    }

    /// Every DID that has at least one `io.atcr.*` record event in the log.
    pub fn tracked_dids(&self) -> Result<Vec<String>> {
        let read = self.read_txn()?;
        let dids = read.open_table(TRACKED_DIDS)?;
        let mut out = Vec::new();
        for entry in dids.iter()? {
            let (did, _) = entry?;
            out.push(did.value().to_string());
        }
        Ok(out)
    }

    pub fn quarantine(&self, from: u64, limit: usize) -> Result<Vec<(u64, QuarantineEntry)>> {
        let read = self.read_txn()?;
        let table = read.open_table(QUARANTINE)?;
        let mut out = Vec::new();
        for entry in table.range(from..)?.take(limit) {
            let (key, value) = entry?;
            let id = key.value();
            out.push((id, decode_versioned(&format!("quarantine {id}"), value.value())?));
        }
        Ok(out)
    }

    pub fn notes(&self, from: u64, limit: usize) -> Result<Vec<(u64, StreamNote)>> {
        let read = self.read_txn()?;
        let table = read.open_table(NOTES)?;
        let mut out = Vec::new();
        for entry in table.range(from..)?.take(limit) {
            let (key, value) = entry?;
            let id = key.value();
            out.push((id, decode_versioned(&format!("stream note {id}"), value.value())?));
        }
        Ok(out)
    }

    pub fn stats(&self) -> Result<LogStats> {
        let read = self.read_txn()?;
        let mut stats = LogStats::default();
        let events = read.open_table(EVENTS)?;
        stats.events = events.len()?;
        stats.next_offset = match events.last()? {
            Some((key, _)) => key.value() + 1,
            None => 0,
        };
        stats.quarantined = read.open_table(QUARANTINE)?.len()?;
        stats.stream_notes = read.open_table(NOTES)?.len()?;
        stats.tracked_dids = read.open_table(TRACKED_DIDS)?.len()?;
        for entry in read.open_table(COUNTS)?.iter()? {
            let (key, value) = entry?;
            let key = key.value();
            if let Some(kind) = key.strip_prefix("kind/") {
                stats.by_kind.insert(kind.to_string(), value.value());
            } else if let Some(collection) = key.strip_prefix("collection/") {
                stats.by_collection.insert(collection.to_string(), value.value());
            }
        }
        for entry in read.open_table(CURSORS)?.iter()? {
            let (key, value) = entry?;
            stats.cursors.insert(key.value().to_string(), value.value());
        }
        Ok(stats)
    }
}

fn next_key<T: ReadableTable<u64, &'static [u8]>>(table: &T) -> Result<u64> {
    Ok(match table.last()? {
        Some((key, _)) => key.value() + 1,
        None => 0,
    })
}

fn map_open_error(error: redb::DatabaseError) -> StorageError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen => StorageError::AlreadyOpen,
        other => StorageError::Database(other),
    }
}
