//! The projection runner: tails the log and applies batches of events to the live views.
//!
//! Each batch is one views transaction holding the view writes and the new checkpoint
//! (invariant 3). Per DID, a record event whose commit rev is older than the newest rev
//! already applied for that DID is skipped (invariant 4): a late or replayed commit never
//! rolls a tag back.
//!
//! With a [`ProjectionStore`] the runner also follows blue/green flips: about once a second it
//! reads `CURRENT`, and when another build went live (`atcr replay`, `atcr replay restore`) it
//! opens that build, catches it up to the log head, swaps it into the [`ViewsHandle`] readers
//! use, and lets the old build's files go once its last reader is done. Views built by another
//! version of the code keep serving, frozen, while a fresh build is made beside them and flipped.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redb::Durability;
use tokio_util::sync::CancellationToken;

use atcr_storage::revs::next_newest_rev;
use atcr_storage::{EventLog, Source, StoredEvent};

use crate::store::{ProjectionStore, REGISTRY_FILE};
use crate::tables::ViewTables;
use crate::views::PreparedEvent;
use crate::{CHECKPOINTS, DID_REVS, ProjectionError, REGISTRY, Views, ViewsHandle, views};

/// Events applied per transaction at most while following the log.
const BATCH: usize = 2048;
/// How often `CURRENT` is read for flips made by other processes.
const FLIP_POLL: Duration = Duration::from_secs(1);

/// Gauge: the next log offset the live registry views will apply.
pub const CHECKPOINT_METRIC: &str = "atcr_views_checkpoint";
/// Gauge: the live registry build (`views/registry-<build>`).
pub const BUILD_METRIC: &str = "atcr_views_build";

/// The build the runner serves, when it follows a store.
struct LiveBuild {
    store: ProjectionStore,
    build: u64,
}

pub struct ProjectionRunner {
    log: Arc<EventLog>,
    views: ViewsHandle,
    live: Option<LiveBuild>,
}

impl ProjectionRunner {
    /// A runner for views that are not part of a store (tests, tools): no flips are followed.
    pub fn new(log: Arc<EventLog>, views: impl Into<ViewsHandle>) -> Self {
        ProjectionRunner { log, views: views.into(), live: None }
    }

    /// A runner for the live `build` of `store`, served through `views`.
    pub fn following(log: Arc<EventLog>, views: ViewsHandle, store: ProjectionStore, build: u64) -> Self {
        ProjectionRunner { log, views, live: Some(LiveBuild { store, build }) }
    }

    /// Applies everything the log holds now to the live views; returns how many events were
    /// applied. Views of another code version are left alone (they are being replaced).
    pub fn catch_up(&self) -> Result<u64, ProjectionError> {
        let views = self.views.load();
        if !views.is_current_version()? {
            return Ok(0);
        }
        catch_up(&self.log, &views)
    }

    /// Runs until the signal turns true, waking on every append and once a second for flips.
    pub async fn run(mut self, stop: CancellationToken) -> Result<(), ProjectionError> {
        if let Some(live) = &self.live {
            metrics::gauge!(BUILD_METRIC).set(live.build as f64);
        }
        metrics::gauge!(CHECKPOINT_METRIC).set(self.views.load().checkpoint()? as f64);
        // The search index comes up in the background: searches answer "not ready" until then.
        // (No reference to the build outlives this: a replaced build is deleted when its last
        // reader lets go.)
        if self.live.is_some() && self.views.load().is_current_version()? {
            let views = self.views.load();
            blocking(move || views.open_search().map(drop)).await?;
        }
        let mut head = self.log.subscribe();
        let mut poll = tokio::time::interval(FLIP_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.live.is_some() {
                self.rebuild_if_outdated().await?;
                self.follow_flip().await?;
            }
            let (log, views) = (self.log.clone(), self.views.clone());
            blocking(move || ProjectionRunner::new(log, views).catch_up()).await?;
            tokio::select! {
                _ = stop.cancelled() => return self.flush_search().await,
                changed = head.changed() => if changed.is_err() { return Ok(()) },
                _ = poll.tick() => {}
            }
        }
    }

    /// Publishes what the search index holds but has not committed, so the next start needs no
    /// rebuild.
    async fn flush_search(&self) -> Result<(), ProjectionError> {
        let views = self.views.load();
        blocking(move || match views.search() {
            Some(search) => search.flush().map_err(ProjectionError::search),
            None => Ok(()),
        })
        .await
    }

    /// When the live views were built by another version of the code: build afresh beside them
    /// (they keep serving meanwhile) and flip.
    async fn rebuild_if_outdated(&mut self) -> Result<(), ProjectionError> {
        let Some(live) = &self.live else { return Ok(()) };
        let views = self.views.load();
        if views.is_current_version()? {
            return Ok(());
        }
        tracing::warn!(
            stored = ?views.stored_version()?,
            current = crate::REGISTRY_VERSION,
            "registry views were built by another version: rebuilding beside them"
        );
        let (log, store, serving) = (self.log.clone(), live.store.clone(), live.build);
        blocking(move || {
            let lock = store.lock()?;
            // A replay may have flipped to a current build while we waited for the lock.
            if store.live_build(REGISTRY)? != Some(serving) {
                return Ok(());
            }
            let (build, directory) = store.new_build(&lock, REGISTRY)?;
            let until = log.next_offset()?;
            // The search index too: serve then swaps in a build that is ready to answer.
            let rebuilt =
                crate::rebuild::rebuild_with_search(&log, &directory.join(REGISTRY_FILE), until, &mut |_| {})?;
            drop(rebuilt);
            store.flip(&lock, REGISTRY, build)
        })
        .await
    }

    /// Swaps in the build `CURRENT` names when it is not the one served.
    async fn follow_flip(&mut self) -> Result<(), ProjectionError> {
        let Some(live) = &mut self.live else { return Ok(()) };
        let store = live.store.clone();
        let Some(build) = blocking(move || store.live_build(REGISTRY)).await? else { return Ok(()) };
        if build == live.build {
            return Ok(());
        }
        let directory = live.store.build_directory(REGISTRY, build);
        let log = self.log.clone();
        let path = directory.join(REGISTRY_FILE);
        let views = blocking(move || {
            let views = Views::open(&path)?;
            views.open_search()?;
            catch_up(&log, &views)?;
            Ok(Arc::new(views))
        })
        .await?;
        let old = self.views.swap(views);
        let old_directory: PathBuf = live.store.build_directory(REGISTRY, live.build);
        old.retire(old_directory);
        tracing::info!(from = live.build, to = build, "serving a new views build");
        live.build = build;
        metrics::gauge!(BUILD_METRIC).set(build as f64);
        metrics::gauge!(CHECKPOINT_METRIC).set(self.views.load().checkpoint()? as f64);
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ProjectionError> + Send + 'static,
) -> Result<T, ProjectionError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ProjectionError::Corrupt(format!("projection task failed: {error}")))?
}

/// A backlog larger than this (a first start, deleted views) is applied like a rebuild: in
/// transactions only the overlay's memory bound cuts (`rebuild::OVERLAY_MEMORY_BYTES`), synced
/// at the end, with huge pages off meanwhile. Readers see the views as they were until a
/// transaction commits. Commits of 20,000 events let them watch the views grow, but each
/// write-out over a non-empty build rewrites pages all over it: a first start on 1.3M events
/// took 83 s that way, 19–20 s in one transaction (docs/PERFORMANCE.md, eleventh session).
const LARGE_BACKLOG: u64 = 20_000;

/// Applies everything the log holds now to `views`; returns how many events were applied.
pub(crate) fn catch_up(log: &EventLog, views: &Views) -> Result<u64, ProjectionError> {
    let start = views.checkpoint()?;
    let head = log.next_offset()?;
    if head.saturating_sub(start) > LARGE_BACKLOG {
        crate::rebuild::catch_up_to(log, views, head, crate::rebuild::REBUILD_TRANSACTION_EVENTS, &mut |_| {})?;
        let checkpoint = views.checkpoint()?;
        metrics::gauge!(CHECKPOINT_METRIC).set(checkpoint as f64);
        // A backlog this large touches most repositories: indexing them all at once is cheaper.
        if let Some(search) = views.search() {
            search.rebuild(views, checkpoint).map_err(ProjectionError::search)?;
        }
    }
    loop {
        let from = views.checkpoint()?;
        let batch = log.read_from(from, BATCH)?;
        let Some(last) = batch.last() else { return Ok(from.saturating_sub(start)) };
        let mut txn = views.database().begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut touched = views::Touched::new();
        apply_events_tracking(&txn, &batch, &mut touched)?;
        txn.open_table(CHECKPOINTS)?.insert(REGISTRY, last.offset + 1)?;
        txn.commit()?;
        views.bump_generation();
        metrics::gauge!(CHECKPOINT_METRIC).set((last.offset + 1) as f64);
        update_search(views, touched, last.offset + 1)?;
    }
}

/// Hands the repositories a committed batch touched to the build's search index, if it has one.
/// A search failure does not stop the views: the index is rebuilt at the next start (its
/// checkpoint no longer matches).
fn update_search(views: &Views, touched: views::Touched, checkpoint: u64) -> Result<(), ProjectionError> {
    let Some(search) = views.search() else { return Ok(()) };
    let touched = touched.into_repositories();
    if let Err(error) = search.on_batch(views, &touched, checkpoint) {
        tracing::error!(%error, checkpoint, "search index update failed; it will be rebuilt on the next start");
    }
    Ok(())
}

/// [`apply_prepared_events`] for events prepared here.
pub(crate) fn apply_events_tracking(
    txn: &impl ViewTables,
    events: &[StoredEvent],
    touched: &mut views::Touched,
) -> Result<(), ProjectionError> {
    let prepared = events.iter().map(|stored| (stored, PreparedEvent::of(stored.offset, &stored.event)));
    apply_prepared_events(txn, prepared, touched)
}

/// Applies events in order inside one write transaction (the caller writes the checkpoint),
/// each with what follows from it alone ([`PreparedEvent::of`]), noting which repositories
/// changed (for the search index).
pub(crate) fn apply_prepared_events<'a>(
    txn: &impl ViewTables,
    events: impl IntoIterator<Item = (&'a StoredEvent, PreparedEvent)>,
    touched: &mut views::Touched,
) -> Result<(), ProjectionError> {
    for (stored, prepared) in events {
        if is_stale(txn, stored)? {
            tracing::debug!(offset = stored.offset, did = %stored.event.did, "older commit rev skipped");
            continue;
        }
        views::apply_tracking(txn, stored.offset, &stored.event, prepared, touched)?;
    }
    Ok(())
}

/// True when a firehose or backfill record event comes from a commit older than the newest one
/// applied for its DID, or one a backfill already covered ([`next_newest_rev`]). Records the rev
/// otherwise.
fn is_stale(txn: &impl ViewTables, stored: &StoredEvent) -> Result<bool, ProjectionError> {
    let event = &stored.event;
    let (Some(rev), Source::Firehose | Source::Backfill) = (&event.rev, event.source) else { return Ok(false) };
    if event.body.collection().is_none() {
        return Ok(false);
    }
    let remembered = txn.get(DID_REVS, event.did.as_str())?;
    // The rule shared with the audit scans and backfill (atcr_storage::revs).
    let Some(next) = next_newest_rev(remembered.as_deref(), event.source, rev) else { return Ok(true) };
    if remembered.as_deref() != Some(next.as_str()) {
        txn.insert(DID_REVS, event.did.as_str(), next.as_str())?;
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use atcr_storage::{AppendBatch, Event, EventBody};

    fn stored(index: u64) -> Event {
        Event {
            source: Source::Enrichment,
            upstream_seq: None,
            did: "did:plc:a".into(),
            rev: None,
            upstream_time: None,
            received_at_us: 0,
            commit_cid: None,
            body: EventBody::ManifestStored { digest: format!("sha256:{index:064}"), media_type: "m".into(), size: 1 },
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outdated_views_keep_serving_until_a_fresh_build_is_flipped_and_swapped_in() {
        let directory = tempfile::tempdir().unwrap();
        let log = Arc::new(EventLog::open(&directory.path().join("log.redb")).unwrap());
        log.append(AppendBatch { events: (0..100).map(stored).collect(), ..AppendBatch::default() }).unwrap();
        let store = ProjectionStore::new(directory.path().join("views"));
        let (build, path) = store.ensure_live_registry(None).unwrap();
        {
            // Views built by "another version": 10 events applied, version 999.
            let views = Views::open(&path).unwrap();
            let txn = views.database().begin_write().unwrap();
            txn.open_table(crate::VERSIONS).unwrap().insert(REGISTRY, 999).unwrap();
            txn.open_table(CHECKPOINTS).unwrap().insert(REGISTRY, 10).unwrap();
            txn.commit().unwrap();
        }
        let views = Views::open_live(&path).unwrap();
        assert!(!views.is_current_version().unwrap());
        let handle = ViewsHandle::new(Arc::new(views));
        let reader = handle.load();
        let stop = CancellationToken::new();
        let runner = ProjectionRunner::following(log.clone(), handle.clone(), store.clone(), build);
        let task = tokio::spawn(runner.run(stop.clone()));

        wait_for("the rebuilt views", || handle.load().checkpoint().unwrap() == 100).await;
        let live = handle.load();
        assert!(live.is_current_version().unwrap());
        assert_eq!(store.live_build(REGISTRY).unwrap(), Some(build + 1));
        // A reader that loaded the old build before the swap still reads it, untouched.
        assert_eq!(reader.checkpoint().unwrap(), 10);
        assert!(store.build_directory(REGISTRY, build).exists(), "deleted while a reader holds it");
        drop(reader);
        assert!(
            !store.build_directory(REGISTRY, build).exists(),
            "the replaced build is deleted after its last reader"
        );

        // New events keep flowing into the new build.
        log.append(AppendBatch { events: vec![stored(100)], ..AppendBatch::default() }).unwrap();
        wait_for("the appended event", || handle.load().checkpoint().unwrap() == 101).await;
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
