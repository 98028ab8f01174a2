//! Keeps the search index in step with the registry views.
//!
//! The projection runner calls [`SearchProjection::on_batch`] after each committed views batch
//! with the repositories the batch touched. Their documents are recomputed from the views (the
//! index never interprets events itself, so it cannot disagree with the views) and handed to
//! the index writer right away; the commit that publishes them is batched: at most one per
//! [`COMMIT_WINDOW`], made by a small committer thread so the last change of a burst is
//! published within the window even if no further batch comes. Each commit carries the views
//! checkpoint it reflects; at start-up, [`SearchProjection::needs_rebuild`] compares it with the
//! views' checkpoint and a mismatch means a full [`SearchProjection::rebuild`] (a few seconds
//! for 100,000 repositories), which is simpler and safer than guessing what was missed.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::ProjectionError;
use crate::browse::SearchDoc;

use super::{SearchError, SearchIndex};

/// Commits are at least this far apart: a burst of batches is one commit, and an event is
/// searchable at most about this long (plus the commit itself) after its batch.
pub const COMMIT_WINDOW: Duration = Duration::from_millis(200);

/// Repositories read per step while rebuilding.
const REBUILD_PAGE: usize = 1024;

/// Where documents come from: the registry views in production (the views implement it), an
/// in-memory map in tests and benchmarks.
pub trait SearchSource {
    /// The repository's document, `None` when the repository no longer exists.
    fn search_document(&self, did: &str, repository: &str) -> Result<Option<SearchDoc>, ProjectionError>;
    /// The documents of many repositories (in the same order); sources that can read them
    /// together (one transaction) do.
    fn search_documents(&self, repositories: &[(String, String)]) -> Result<Vec<Option<SearchDoc>>, ProjectionError> {
        repositories.iter().map(|(did, repository)| self.search_document(did, repository)).collect()
    }
    /// Every repository name of a DID.
    fn repositories_of(&self, did: &str) -> Result<Vec<String>, ProjectionError>;
    /// Repositories as (did, name) in key order, after `after`, at most `limit`.
    fn repositories_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError>;
}

impl SearchSource for crate::Views {
    fn search_document(&self, did: &str, repository: &str) -> Result<Option<SearchDoc>, ProjectionError> {
        crate::Views::search_document(self, did, repository)
    }

    fn search_documents(&self, repositories: &[(String, String)]) -> Result<Vec<Option<SearchDoc>>, ProjectionError> {
        crate::Views::search_documents(self, repositories)
    }

    fn repositories_of(&self, did: &str) -> Result<Vec<String>, ProjectionError> {
        self.repository_keys_of(did)
    }

    fn repositories_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        self.repositories(after, limit)
    }
}

struct Pending {
    /// The checkpoint of changes handed to the writer but not yet committed.
    checkpoint: Option<u64>,
    last_commit: Instant,
    /// Why the last background commit failed; reported by the next call.
    failure: Option<String>,
    stop: bool,
}

struct Shared {
    index: Arc<SearchIndex>,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Held from taking a pending checkpoint until its commit is done, so commits publish
    /// checkpoints in order.
    committing: Mutex<()>,
    window: Duration,
}

impl Shared {
    fn pending(&self) -> Result<MutexGuard<'_, Pending>, SearchError> {
        self.pending.lock().map_err(|_| SearchError::Poisoned)
    }

    /// Commits what is pending now, if anything.
    fn commit_pending(&self) -> Result<(), SearchError> {
        let _committing = self.committing.lock().map_err(|_| SearchError::Poisoned)?;
        let Some(checkpoint) = self.pending()?.checkpoint.take() else { return Ok(()) };
        let result = self.index.commit(checkpoint);
        let mut pending = self.pending()?;
        pending.last_commit = Instant::now();
        if let Err(error) = &result {
            tracing::error!(%error, checkpoint, "search index commit failed");
            pending.failure = Some(error.to_string());
        }
        result
    }

    /// The committer thread: commits pending changes once the window since the last commit
    /// has passed; on stop, commits what is left.
    fn run_committer(&self) {
        loop {
            let Ok(mut pending) = self.pending() else { return };
            loop {
                if pending.stop {
                    break;
                }
                if pending.checkpoint.is_some() {
                    let due = pending.last_commit + self.window;
                    let now = Instant::now();
                    if now >= due {
                        break;
                    }
                    pending = match self.wake.wait_timeout(pending, due - now) {
                        Ok((pending, _)) => pending,
                        Err(_) => return,
                    };
                } else {
                    pending = match self.wake.wait(pending) {
                        Ok(pending) => pending,
                        Err(_) => return,
                    };
                }
            }
            let stop = pending.stop;
            drop(pending);
            // A failure is recorded for the next caller; keep serving later batches.
            let _ = self.commit_pending();
            if stop {
                return;
            }
        }
    }
}

/// What a rebuild did and where its time went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    pub documents: u64,
    /// Reading documents from the source and handing them to the indexing threads.
    pub read_and_index: Duration,
    /// Flushing the last segments and publishing them.
    pub commit: Duration,
    /// Merging everything into one segment.
    pub merge: Duration,
}

/// The search index as a projection of the registry views.
pub struct SearchProjection {
    shared: Arc<Shared>,
    committer: Option<JoinHandle<()>>,
}

impl SearchProjection {
    pub fn new(index: Arc<SearchIndex>) -> Self {
        Self::with_window(index, COMMIT_WINDOW)
    }

    pub fn with_window(index: Arc<SearchIndex>, window: Duration) -> Self {
        let shared = Arc::new(Shared {
            index,
            pending: Mutex::new(Pending {
                checkpoint: None,
                last_commit: Instant::now() - window,
                failure: None,
                stop: false,
            }),
            wake: Condvar::new(),
            committing: Mutex::new(()),
            window,
        });
        let committer = {
            let shared = shared.clone();
            std::thread::Builder::new().name("search-commit".to_string()).spawn(move || shared.run_committer()).ok()
        };
        if committer.is_none() {
            tracing::warn!("could not start the search committer thread, committing on every batch");
        }
        SearchProjection { shared, committer }
    }

    pub fn index(&self) -> &Arc<SearchIndex> {
        &self.shared.index
    }

    /// True when the index does not reflect exactly the views at `views_checkpoint` (never
    /// built, another schema version, or a crash between a views commit and a search commit):
    /// call [`rebuild`](Self::rebuild) before serving.
    pub fn needs_rebuild(&self, views_checkpoint: u64) -> bool {
        let pending = self.shared.pending().ok().and_then(|pending| pending.checkpoint);
        pending.or_else(|| self.shared.index.checkpoint()) != Some(views_checkpoint)
    }

    /// Recomputes the touched repositories from the views; `(did, None)` means every repository
    /// of that DID (a handle change, an account going away). `checkpoint` is the views'
    /// checkpoint after the batch. The changes become searchable within [`COMMIT_WINDOW`].
    pub fn on_batch<S: SearchSource + ?Sized>(
        &self,
        source: &S,
        touched: &[(String, Option<String>)],
        checkpoint: u64,
    ) -> Result<(), SearchError> {
        if let Some(failure) = self.shared.pending()?.failure.take() {
            return Err(SearchError::CommitFailed(failure));
        }
        let index = &self.shared.index;
        for (did, repository) in touched {
            match repository {
                Some(repository) => match source.search_document(did, repository)? {
                    Some(doc) => index.upsert(&doc)?,
                    None => index.delete(did, repository)?,
                },
                None => {
                    index.delete_did(did)?;
                    for repository in source.repositories_of(did)? {
                        if let Some(doc) = source.search_document(did, &repository)? {
                            index.add(&doc)?;
                        }
                    }
                }
            }
        }
        self.shared.pending()?.checkpoint = Some(checkpoint);
        self.shared.wake.notify_all();
        if self.committer.is_none() {
            self.shared.commit_pending()?;
        }
        Ok(())
    }

    /// Commits pending changes now (at shutdown, so the next start needs no rebuild).
    pub fn flush(&self) -> Result<(), SearchError> {
        self.shared.commit_pending()
    }

    /// Indexes every repository from scratch and commits with `checkpoint`. The views must not
    /// change meanwhile (call it from the projection runner, between batches).
    pub fn rebuild<S: SearchSource + ?Sized>(&self, source: &S, checkpoint: u64) -> Result<RebuildReport, SearchError> {
        let started = Instant::now();
        let _committing = self.shared.committing.lock().map_err(|_| SearchError::Poisoned)?;
        self.shared.pending()?.checkpoint = None;
        let index = &self.shared.index;
        index.clear()?;
        let result = self.fill(source, checkpoint, started);
        if result.is_err() {
            // Back to the last commit: a half-built index must never be published by a later
            // commit. The old checkpoint stays, so `needs_rebuild` still says so.
            let _ = index.rollback();
        }
        result
    }

    fn fill<S: SearchSource + ?Sized>(
        &self,
        source: &S,
        checkpoint: u64,
        started: Instant,
    ) -> Result<RebuildReport, SearchError> {
        let index = &self.shared.index;
        let mut indexed = 0u64;
        let mut after: Option<(String, String)> = None;
        loop {
            let page =
                source.repositories_after(after.as_ref().map(|(d, r)| (d.as_str(), r.as_str())), REBUILD_PAGE)?;
            let Some(last) = page.last().cloned() else { break };
            for doc in source.search_documents(&page)?.into_iter().flatten() {
                index.add(&doc)?;
                indexed += 1;
            }
            after = Some(last);
        }
        let read_and_index = started.elapsed();
        index.commit(checkpoint)?;
        let commit = started.elapsed() - read_and_index;
        index.merge_all()?;
        let merge = started.elapsed() - read_and_index - commit;
        self.shared.pending()?.last_commit = Instant::now();
        let report = RebuildReport { documents: indexed, read_and_index, commit, merge };
        tracing::info!(
            documents = indexed,
            checkpoint,
            read_and_index_ms = read_and_index.as_millis() as u64,
            commit_ms = commit.as_millis() as u64,
            merge_ms = merge.as_millis() as u64,
            "search index rebuilt"
        );
        Ok(report)
    }
}

impl Drop for SearchProjection {
    fn drop(&mut self) {
        if let Ok(mut pending) = self.shared.pending() {
            pending.stop = true;
        }
        self.shared.wake.notify_all();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}
