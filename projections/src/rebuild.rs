//! A fresh build of the registry views from the log, as fast as memory allows.
//!
//! Following the live log commits every 2048 events durably, because a reader may look at any
//! of those states. A rebuild has no readers until it is flipped live, so it applies events to
//! an in-memory [`Overlay`] (rows in hashed or appended maps over the last commit; see
//! `overlay`) and writes the rows into redb in key order only when the overlay grows past
//! [`OVERLAY_MEMORY_BYTES`] or `events_per_transaction` events, and at the end. Intermediate
//! commits are not synced (`Durability::None`); the last one is synced by [`catch_up_to`], or
//! by [`build`], which also builds the search index while the last rows are written and synced
//! (see there). A crash mid-rebuild leaves a build nobody points at, deleted later (and a live
//! build caught up this way after a crash simply restarts from its last synced checkpoint: redb
//! recovers to the last durable commit, which holds the checkpoint of its own writes). Events
//! are read and prepared (records decoded, the rows that follow from an event alone encoded:
//! [`PreparedEvent`]) on a second thread while the first applies the previous chunk, and a
//! third applies the changes of the manifest fan-out indexes (`fanout`) to an overlay of its
//! own, in log order, while the first goes on ([`FanOutThread`]); its overlay joins the first's
//! before the rows are written.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redb::{Durability, ReadableDatabase};

use atcr_storage::{EventLog, StoredEvent};

use crate::fanout::FanOut;
use crate::overlay::Overlay;
use crate::runner::apply_prepared_events;
use crate::views::{PreparedEvent, Touched};
use crate::{CHECKPOINTS, ProjectionError, REGISTRY, Views};

/// Events per views transaction during a rebuild at most: the overlay's memory bound decides
/// first for any real log.
pub const REBUILD_TRANSACTION_EVENTS: usize = 100_000_000;
/// The overlay is written out once its rows take about this much memory (~5.5 million rows of a
/// 1.3-million-event log take ~1.3 GiB).
pub const OVERLAY_MEMORY_BYTES: usize = 3 << 30;
/// Events read from the log, each with its [`PreparedEvent`].
type Chunk = (Vec<StoredEvent>, Vec<PreparedEvent>);

/// Events read and decoded per chunk by the reading thread.
const READ_CHUNK: usize = 4096;
/// Chunks the reader may run ahead of the applier.
const READ_AHEAD: usize = 8;
/// Batches of fan-out changes (one per chunk) the applier may run ahead of the fan-out thread.
const FAN_OUT_AHEAD: usize = 8;
/// How much nicer than the writer the threads that run beside the last write-out are
/// ([`yield_to_the_writer`]): with 5 the search index became the longer path by ~1 s; with 2 the
/// two end together.
const BESIDE_THE_WRITER_NICE: libc::c_int = 2;

/// Builds (or continues, from its checkpoint) the registry views at `path` up to `until`
/// (exclusive), reporting the offset reached after each chunk. Returns the views, durable.
pub fn rebuild(
    log: &EventLog,
    path: &Path,
    until: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Views, ProjectionError> {
    rebuild_then(log, path, until, progress, false)
}

/// [`rebuild`], then the search index of the build (in `search/` beside `path`, so one build
/// per directory) while the last rows are written and the views synced (see [`build`]).
/// Returns the views, durable, with the search index attached.
pub fn rebuild_with_search(
    log: &EventLog,
    path: &Path,
    until: u64,
    progress: &mut dyn FnMut(u64),
) -> Result<Views, ProjectionError> {
    rebuild_then(log, path, until, progress, true)
}

fn rebuild_then(
    log: &EventLog,
    path: &Path,
    until: u64,
    progress: &mut dyn FnMut(u64),
    search: bool,
) -> Result<Views, ProjectionError> {
    let views = Views::open_for_rebuild(path)?;
    build(log, &views, until, REBUILD_TRANSACTION_EVENTS, search, progress)?;
    Ok(views)
}

/// Applies `[views.checkpoint(), until)` in transactions of `events_per_transaction` events,
/// only the last one durable.
pub fn catch_up_to(
    log: &EventLog,
    views: &Views,
    until: u64,
    events_per_transaction: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<(), ProjectionError> {
    let _huge_pages_off = HugePagesOff::acquire();
    if let Some((overlay, reached)) = apply_range(log, views, until, events_per_transaction, progress)? {
        write_out(views, overlay, reached, Durability::Immediate)?;
    }
    Ok(())
}

/// How long the parts of a [`build`] took.
#[derive(Debug, Clone, Copy)]
pub struct BuildTimes {
    /// Applying the events and writing every view row (not yet synced).
    pub views: Duration,
    /// Until the views were synced and the search index (when asked) committed.
    pub total: Duration,
}

/// Builds views opened by [`Views::open_for_rebuild`] from their checkpoint up to `until`
/// (exclusive), durable when it returns, and with `search` their search index (in `search/`
/// beside them, so one build per directory).
///
/// Commits before the last are not synced. The last write-out puts the tables the index reads
/// first (`browse::is_search_input`: a third of the bytes) and commits them; the index is built
/// from them on another thread while this one writes the other tables, then syncs the build
/// (writes and fsyncs gigabytes). A crash halfway leaves a build nobody points at; an index
/// ahead of the views it describes is rebuilt when opened, since it no longer matches their
/// checkpoint.
pub fn build(
    log: &EventLog,
    views: &Views,
    until: u64,
    events_per_transaction: usize,
    search: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<BuildTimes, ProjectionError> {
    let started = Instant::now();
    let _huge_pages_off = HugePagesOff::acquire();
    let Some((overlay, reached)) = apply_range(log, views, until, events_per_transaction, progress)? else {
        // Nothing left to apply: make what is there durable, and index it.
        let applied = started.elapsed();
        std::thread::scope(|scope| {
            let sync = scope.spawn(|| views.sync());
            let indexed = if search { views.open_search().map(drop) } else { Ok(()) };
            let synced =
                sync.join().map_err(|_| ProjectionError::Corrupt("the thread syncing a rebuild panicked".into()))?;
            synced.and(indexed)
        })?;
        return Ok(BuildTimes { views: applied, total: started.elapsed() });
    };
    if !search {
        write_out(views, overlay, reached, Durability::Immediate)?;
        let elapsed = started.elapsed();
        return Ok(BuildTimes { views: elapsed, total: elapsed });
    }
    derive_rankings(&overlay)?;
    // Opened here, not on the thread that builds it: the threads an index keeps for as long as
    // it serves start at this thread's priority, not at the lower one of that thread.
    let search = views.unattached_search()?;
    std::thread::scope(|scope| {
        let writing = Instant::now();
        let mut indexing = None;
        let written = overlay
            .flush_split(begin_write(views, Durability::None)?, &crate::browse::is_search_input, |inputs| {
                inputs.commit()?;
                tracing::debug!(elapsed_ms = writing.elapsed().as_millis() as u64, "rebuild search inputs committed");
                indexing = Some(scope.spawn(move || {
                    yield_to_the_writer();
                    let Some(search) = search else { return Ok(None) };
                    // Tantivy's indexing thread yields too while the index is built (renewed
                    // again at the end, below).
                    search.index().renew_writer().map_err(ProjectionError::search)?;
                    views.attach_search_at(search, reached)
                }));
                begin_write(views, Durability::None)
            })
            .and_then(|rest| {
                rest.open_table(CHECKPOINTS)?.insert(REGISTRY, reached)?;
                rest.commit()?;
                Ok(())
            });
        views.bump_generation();
        let applied = started.elapsed();
        tracing::debug!(
            reached,
            elapsed_ms = writing.elapsed().as_millis() as u64,
            "rebuild rows written and committed"
        );
        let synced = written.and_then(|()| views.sync());
        let indexed = match indexing {
            Some(thread) => thread
                .join()
                .map_err(|_| ProjectionError::Corrupt("the thread building the search index panicked".into()))?
                .map(drop),
            None => Ok(()),
        };
        synced.and(indexed)?;
        // The index serves from here on, its threads at this thread's priority (tantivy also
        // starts a new indexing thread at each commit, on the committing thread: the index's
        // last commit was on the thread that yields).
        if let Some(search) = views.search() {
            search.index().renew_writer().map_err(ProjectionError::search)?;
        }
        Ok(BuildTimes { views: applied, total: started.elapsed() })
    })
}

/// Lowers the calling thread's priority by [`BESIDE_THE_WRITER_NICE`] (from where it is: a
/// process run at nice 10 stays below its writer, which an absolute nice 2 would put above), and
/// that of the threads it starts (tantivy starts its indexing thread anew on the thread that
/// commits, and its pools' threads on the thread that first uses them; [`build`] renews the index
/// writer from its own thread afterwards, so an index that goes on serving does not keep them: an
/// unprivileged thread cannot raise its priority again). During the last write-out both cores are busy, and
/// the rows written, committed and synced were the longest path by ~1.5 s while the search index
/// built beside them had time to spare: at equal priority the writer got half a core. Best
/// effort: a thread that cannot be reniced runs as before.
pub(crate) fn yield_to_the_writer() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on this thread's own id, and this thread's `errno`, which libc
    // keeps for it; no memory of ours is read or written.
    unsafe {
        let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
        // -1 is also a nice value: only errno tells a failure.
        *libc::__errno_location() = 0;
        let current = libc::getpriority(libc::PRIO_PROCESS, thread);
        if *libc::__errno_location() == 0 {
            libc::setpriority(libc::PRIO_PROCESS, thread, current.saturating_add(BESIDE_THE_WRITER_NICE).min(19));
        }
    }
}

/// Transparent huge pages off for the process while a rebuild or a large catch-up runs, and back
/// as they were once the last one ends. mimalloc asks for huge pages on its arenas, and a
/// rebuild grows its memory a little at a time: each huge page costs 2 MiB of zeroing at its
/// first touch, and on a VM that reports freed memory to its host a host fault too (a replay
/// spent 7–10 s of kernel time with them, 2.8 s without; docs/PERFORMANCE.md, sixth session).
/// Batch commands run without them for good (`atcr`'s `main`); `serve` keeps them for serving
/// and drops them only while it rebuilds (a version bump, a large backlog). The setting is the
/// process's: threads serving meanwhile allocate without them too. Best effort.
pub struct HugePagesOff {
    /// Whether this guard is in the count (not when the count's lock was poisoned).
    counted: bool,
}

/// Live [`HugePagesOff`] guards, and whether the first one turned huge pages off.
static HUGE_PAGES_OFF: std::sync::Mutex<(usize, bool)> = std::sync::Mutex::new((0, false));

impl HugePagesOff {
    /// Turns huge pages off unless they are already, until this guard and every other one is
    /// dropped.
    pub fn acquire() -> Self {
        let Ok(mut state) = HUGE_PAGES_OFF.lock() else { return HugePagesOff { counted: false } };
        if state.0 == 0 {
            state.1 = set_huge_pages_disabled(true);
        }
        state.0 += 1;
        HugePagesOff { counted: true }
    }
}

impl Drop for HugePagesOff {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let Ok(mut state) = HUGE_PAGES_OFF.lock() else { return };
        state.0 = state.0.saturating_sub(1);
        if state.0 == 0 && std::mem::take(&mut state.1) {
            set_huge_pages_disabled(false);
        }
    }
}

/// Sets the process's "no transparent huge pages" flag; true when this call turned it on (it
/// was off, and the kernel took the change).
fn set_huge_pages_disabled(disabled: bool) -> bool {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_GET/SET_THP_DISABLE take integer arguments and read or change only this
    // process's memory policy; no memory of ours is passed.
    unsafe {
        if !disabled {
            return libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) == 0;
        }
        // 1: already off (a batch command, or a parent that set it).
        if libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) != 0 {
            return false;
        }
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = disabled;
        false
    }
}

fn begin_write(views: &Views, durability: Durability) -> Result<redb::WriteTransaction, ProjectionError> {
    let mut txn = views.database().begin_write()?;
    txn.set_durability(durability)?;
    Ok(txn)
}

/// Applies `[views.checkpoint(), until)`, writing the overlay out (unsynced) whenever it holds
/// `events_per_transaction` events or [`OVERLAY_MEMORY_BYTES`]; returns the last overlay, not
/// written, and the offset it reaches (`None`: nothing to apply).
fn apply_range(
    log: &EventLog,
    views: &Views,
    until: u64,
    events_per_transaction: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Option<(Overlay, u64)>, ProjectionError> {
    let start = views.checkpoint()?;
    if start >= until {
        return Ok(None);
    }
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::sync_channel::<Result<Chunk, ProjectionError>>(READ_AHEAD);
        scope.spawn(move || {
            let mut from = start;
            while from < until {
                let limit = READ_CHUNK.min(usize::try_from(until - from).unwrap_or(READ_CHUNK));
                let chunk = match log.read_from(from, limit) {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        let _ = sender.send(Err(error.into()));
                        return;
                    }
                };
                let Some(last) = chunk.last() else { return };
                from = last.offset + 1;
                let prepared = chunk.iter().map(|stored| PreparedEvent::of(stored.offset, &stored.event)).collect();
                if sender.send(Ok((chunk, prepared))).is_err() {
                    return;
                }
            }
        });
        let mut reached = start;
        let mut overlay = applying_overlay(views)?;
        let mut fan_out = FanOutThread::spawn(scope, views)?;
        let mut in_overlay = 0usize;
        // Where this thread's time goes: applying, or waiting for the reader.
        let (mut applying, mut waiting) = (Duration::ZERO, Duration::ZERO);
        let mut asked = Instant::now();
        for chunk in receiver {
            waiting += asked.elapsed();
            let started = Instant::now();
            let (events, prepared) = chunk?;
            let mut events = events.as_slice();
            let mut prepared = prepared.into_iter();
            while !events.is_empty() {
                let room = events_per_transaction.saturating_sub(in_overlay).clamp(1, events.len());
                let (piece, after) = events.split_at(room);
                events = after;
                let Some(last) = piece.last() else { break };
                reached = last.offset + 1;
                apply_prepared_events(&overlay, piece.iter().zip(prepared.by_ref()), &mut Touched::untracked())?;
                fan_out.send(overlay.take_fan_out())?;
                in_overlay += piece.len();
                if in_overlay >= events_per_transaction
                    || overlay.memory_bytes() + fan_out.memory_bytes() >= OVERLAY_MEMORY_BYTES
                {
                    overlay.absorb(fan_out.finish()?)?;
                    write_out(views, overlay, reached, Durability::None)?;
                    overlay = applying_overlay(views)?;
                    fan_out = FanOutThread::spawn(scope, views)?;
                    in_overlay = 0;
                }
            }
            progress(reached);
            applying += started.elapsed();
            asked = Instant::now();
        }
        let joined = Instant::now();
        overlay.absorb(fan_out.finish()?)?;
        tracing::debug!(
            reached,
            apply_ms = applying.as_millis() as u64,
            wait_for_reader_ms = waiting.as_millis() as u64,
            wait_for_fan_out_ms = joined.elapsed().as_millis() as u64,
            "rebuild events applied"
        );
        Ok(Some((overlay, reached)))
    })
}

/// A new overlay for the applying thread: its fan-out changes deferred to the fan-out thread,
/// and, over views with no repository and no star count yet (a fresh rebuild, until its first
/// write-out), the ranking tables derived once before the write-out instead of kept up to date
/// by each change (`views::derive_rankings`).
fn applying_overlay(views: &Views) -> Result<Overlay, ProjectionError> {
    let overlay = Overlay::deferring_fan_out(views.database())?;
    let fresh =
        overlay.base_is_empty(crate::views::REPOSITORIES)? && overlay.base_is_empty(crate::views::STAR_COUNTS)?;
    Ok(if fresh { overlay.deriving_rankings() } else { overlay })
}

/// Writes the ranking tables into `overlay` when it derives them (see [`applying_overlay`]),
/// just before its rows are written out.
fn derive_rankings(overlay: &Overlay) -> Result<(), ProjectionError> {
    use crate::tables::ViewTables;
    if overlay.derives_rankings() {
        crate::views::derive_rankings(overlay)?;
    }
    Ok(())
}

/// The thread that applies a rebuild's fan-out changes (`fanout`) to an overlay of its own,
/// in the order the applying thread deferred them, while that thread goes on with the next
/// events: a third of the applying moves to the second core.
struct FanOutThread<'scope> {
    /// `None` once told to finish.
    changes: Option<mpsc::SyncSender<Vec<FanOut>>>,
    /// `None` once joined.
    thread: Option<std::thread::ScopedJoinHandle<'scope, Result<Overlay, ProjectionError>>>,
    /// The rough bytes its overlay holds, after the last batch.
    memory: std::sync::Arc<AtomicUsize>,
}

impl<'scope> FanOutThread<'scope> {
    /// Starts the thread with an empty overlay over what `views` hold now (what the applying
    /// thread's new overlay is over).
    fn spawn(scope: &'scope std::thread::Scope<'scope, '_>, views: &Views) -> Result<Self, ProjectionError> {
        let (changes, received) = mpsc::sync_channel::<Vec<FanOut>>(FAN_OUT_AHEAD);
        let memory = std::sync::Arc::new(AtomicUsize::new(0));
        let reported = memory.clone();
        let overlay = Overlay::new(views.database())?;
        let thread = scope.spawn(move || {
            for batch in received {
                for change in batch {
                    change.apply(&overlay)?;
                }
                reported.store(overlay.memory_bytes(), Ordering::Relaxed);
            }
            Ok(overlay)
        });
        Ok(FanOutThread { changes: Some(changes), thread: Some(thread), memory })
    }

    fn memory_bytes(&self) -> usize {
        self.memory.load(Ordering::Relaxed)
    }

    fn send(&mut self, batch: Vec<FanOut>) -> Result<(), ProjectionError> {
        if batch.is_empty() {
            return Ok(());
        }
        let sent = self.changes.as_ref().is_some_and(|changes| changes.send(batch).is_ok());
        if sent {
            return Ok(());
        }
        // Only an error stops the thread before it is told to finish: report that error.
        match self.join() {
            Err(error) => Err(error),
            Ok(_) => Err(ProjectionError::Corrupt("the fan-out thread stopped early".into())),
        }
    }

    /// Waits for every change sent to be applied and returns the overlay holding them.
    fn finish(mut self) -> Result<Overlay, ProjectionError> {
        self.changes = None;
        self.join()
    }

    fn join(&mut self) -> Result<Overlay, ProjectionError> {
        let thread = self.thread.take().ok_or_else(|| ProjectionError::Corrupt("the fan-out thread is gone".into()))?;
        thread.join().map_err(|_| ProjectionError::Corrupt("the fan-out thread panicked".into()))?
    }
}

/// Writes the overlay's rows and the checkpoint `reached` in one transaction.
fn write_out(views: &Views, overlay: Overlay, reached: u64, durability: Durability) -> Result<(), ProjectionError> {
    let started = Instant::now();
    derive_rankings(&overlay)?;
    let memory = overlay.memory_bytes();
    let txn = begin_write(views, durability)?;
    overlay.flush_into(&txn)?;
    let flushed = started.elapsed();
    txn.open_table(CHECKPOINTS)?.insert(REGISTRY, reached)?;
    txn.commit()?;
    // Readers in this process see the commit: answers cached before it are stale.
    views.bump_generation();
    tracing::debug!(
        reached,
        memory,
        flush_ms = flushed.as_millis() as u64,
        commit_ms = (started.elapsed() - flushed).as_millis() as u64,
        "rebuild rows written and committed"
    );
    Ok(())
}

/// The live views opened read-only by another process than the one serving them: `atcr replay
/// --verify` and `atcr replay snapshot`. Fails with [`ProjectionError::InUse`] while `atcr serve`
/// has them open (the views are opened exclusively, which keeps file locks off the pull path).
pub struct LiveViewsReader {
    database: redb::ReadOnlyDatabase,
}

impl LiveViewsReader {
    pub fn open(path: &Path) -> Result<Self, ProjectionError> {
        if !path.exists() {
            return Err(ProjectionError::Io {
                context: format!("no views at {}", path.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        match redb::Builder::new().open_read_only(path) {
            Ok(database) => Ok(LiveViewsReader { database }),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(ProjectionError::InUse(path.display().to_string())),
            Err(error) => Err(error.into()),
        }
    }

    pub fn read(&self) -> Result<redb::ReadTransaction, ProjectionError> {
        Ok(self.database.begin_read()?)
    }

    /// The next log offset these views would apply.
    pub fn checkpoint(&self) -> Result<u64, ProjectionError> {
        use redb::ReadableTable;
        Ok(self.read()?.open_table(CHECKPOINTS)?.get(REGISTRY)?.map(|value| value.value()).unwrap_or(0))
    }
}

/// The outcome of `atcr replay --verify`: every table of the live views against a rebuild up to
/// the same offset.
#[derive(Debug)]
pub struct VerifyReport {
    pub checkpoint: u64,
    pub tables: std::collections::BTreeMap<String, crate::digest::TableComparison>,
}

impl VerifyReport {
    pub fn differences(&self) -> usize {
        self.tables.values().filter(|comparison| !comparison.is_same()).count()
    }
}

/// Rebuilds into `scratch` (a new database path) up to exactly the live checkpoint and
/// compares every table.
pub fn verify(
    log: &EventLog,
    live: &LiveViewsReader,
    scratch: &Path,
    events_per_transaction: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifyReport, ProjectionError> {
    // One read transaction: the checkpoint and the rows compared are the same state.
    let live_read = live.read()?;
    let checkpoint = {
        use redb::ReadableTable;
        live_read.open_table(CHECKPOINTS)?.get(REGISTRY)?.map(|value| value.value()).unwrap_or(0)
    };
    let rebuilt = Views::open_for_rebuild(scratch)?;
    catch_up_to(log, &rebuilt, checkpoint, events_per_transaction, progress)?;
    let rebuilt_read = rebuilt.database().begin_read()?;
    let tables = crate::digest::compare(&live_read, &rebuilt_read)?;
    Ok(VerifyReport { checkpoint, tables })
}

#[cfg(test)]
mod tests {
    use super::*;
    use atcr_storage::{AppendBatch, Event, EventBody, Source};

    /// A thread's nice value (Linux: each thread has its own).
    #[cfg(target_os = "linux")]
    fn own_nice() -> libc::c_int {
        // SAFETY: plain system calls on this thread's own id.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn yielding_lowers_the_priority_from_where_it_is() {
        std::thread::spawn(|| {
            // Raising one's own nice value needs no privilege (the tests may run niced already).
            let start = (own_nice() + 3).min(17);
            // SAFETY: as above.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t, start) };
            assert_eq!(own_nice(), start);
            yield_to_the_writer();
            assert_eq!(own_nice(), start + BESIDE_THE_WRITER_NICE);
        })
        .join()
        .unwrap();
    }

    fn stored(did: &str, digest: &str) -> Event {
        Event {
            source: Source::Enrichment,
            upstream_seq: None,
            did: did.into(),
            rev: None,
            upstream_time: None,
            received_at_us: 0,
            commit_cid: None,
            body: EventBody::ManifestStored { digest: digest.into(), media_type: "m".into(), size: 1 },
        }
    }

    #[test]
    fn a_rebuild_in_small_transactions_equals_the_live_views_and_verify_says_so() {
        let directory = tempfile::tempdir().unwrap();
        let log = EventLog::open(&directory.path().join("log.redb")).unwrap();
        let events = (0..500).map(|index| stored("did:plc:a", &format!("sha256:{index:064}"))).collect();
        log.append(AppendBatch { events, ..AppendBatch::default() }).unwrap();
        let live_path = directory.path().join("live/views.redb");
        let live = Views::open(&live_path).unwrap();
        crate::runner::catch_up(&log, &live).unwrap();
        assert_eq!(live.checkpoint().unwrap(), 500);
        drop(live);

        // More events after the live checkpoint: verify stops at the checkpoint anyway.
        let later = (1000..1010).map(|index| stored("did:plc:b", &format!("sha256:{index:064}"))).collect();
        log.append(AppendBatch { events: later, ..AppendBatch::default() }).unwrap();
        let reader = LiveViewsReader::open(&live_path).unwrap();
        let mut reached = Vec::new();
        let report =
            verify(&log, &reader, &directory.path().join("scratch/views.redb"), 64, &mut |offset| reached.push(offset))
                .unwrap();
        assert_eq!(report.checkpoint, 500);
        assert_eq!(report.differences(), 0, "{:?}", report.tables);
        assert_eq!(report.tables["manifest_content"], crate::digest::TableComparison::Same { rows: 500 });
        assert_eq!(reached.last(), Some(&500));

        // A rebuild to the head has the later rows too, and differs from the live views.
        let rebuilt = rebuild(&log, &directory.path().join("full/views.redb"), 510, &mut |_| {}).unwrap();
        assert_eq!(rebuilt.checkpoint().unwrap(), 510);
        let comparison =
            crate::digest::compare(&reader.read().unwrap(), &rebuilt.database().begin_read().unwrap()).unwrap();
        assert!(!comparison["manifest_content"].is_same());
        assert!(!comparison["checkpoints"].is_same());
    }
}
