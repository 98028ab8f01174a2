//! atcr-projections: read models built from the event log.
//!
//! Projections are pure functions of the log: they never call the network or read the clock
//! (event times come from the log). Each batch of applied events is committed in one transaction
//! together with the projection's checkpoint (the next log offset to apply), so a crash never
//! applies an event twice or skips one. Views are disposable: delete them and they are rebuilt
//! from offset 0.
//!
//! - [`views`]: the registry views (identities, repositories, manifests, blobs, tags,
//!   referrers) and how each event changes them;
//! - [`holds`]: hold records (captain, crew, layers, stats) and which manifests name each hold;
//! - [`runner`]: tails the log and applies batches; swaps in a new build when one is flipped;
//! - [`store`]: where builds live on disk (`views/<projection>-<build>/`, `views/CURRENT`);
//! - [`rebuild`]: a fresh build from offset 0, fast (blue/green: the old one keeps serving);
//! - [`overlay`]: the rebuild's in-memory rows, written into redb in key order;
//! - [`tables`]: [`tables::ViewTables`], how views code reads and writes tables (redb when
//!   following the log, in-memory sorted maps during a rebuild);
//! - [`digest`]: per-table content digests, to check that a rebuild equals the live views;
//! - [`snapshot`]: a projection's rows at a checkpoint in one file, and back;
//! - [`Views`] and [`ViewsHandle`]: the read side the query crate uses.

pub mod browse;
mod compact;
pub mod digest;
pub mod fanout;
pub mod holds;
pub mod layers;
pub mod overlay;
pub mod rebuild;
pub mod runner;
pub mod scans;
pub mod search;
pub mod snapshot;
pub mod store;
pub mod tables;
pub mod views;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

pub use runner::ProjectionRunner;
pub use store::ProjectionStore;
pub use views::{ChildRow, IdentityRow, ManifestRow, ReferrerRow, RepositoryRow, TagRow};

use views::{
    HANDLES, IDENTITIES, IDENTITY_FAILURES, MANIFEST_CONTENT, MANIFESTS, REFERRERS, REPO_BLOBS, REPOSITORIES, TAGS,
    decode, key,
};

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("views database error: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("views transaction error: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("views table error: {0}")]
    Table(#[from] redb::TableError),
    #[error("views storage error: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("views commit error: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("views durability error: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    #[error("corrupt view row in {0}")]
    Corrupt(String),
    #[error("event log: {0}")]
    Log(#[from] atcr_storage::StorageError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("search index: {0}")]
    Search(String),
    #[error(
        "the views at {0} are open in another process (a running `atcr serve` holds its views exclusively); stop it first"
    )]
    InUse(String),
}

impl ProjectionError {
    pub(crate) fn search(error: search::SearchError) -> ProjectionError {
        ProjectionError::Search(error.to_string())
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProjectionError {
        let context = context.into();
        move |source| ProjectionError::Io { context, source }
    }
}

pub(crate) const CHECKPOINTS: TableDefinition<&str, u64> = TableDefinition::new("checkpoints");
pub(crate) const VERSIONS: TableDefinition<&str, u32> = TableDefinition::new("versions");
pub(crate) const DID_REVS: TableDefinition<&str, &str> = TableDefinition::new("did_revs");

/// The name and version of the registry projection. Bump the version when `views::apply`
/// changes meaning or a row changes shape: the views are then rebuilt from offset 0 on start
/// (8: a manifest row keeps its config's size instead of a `blobs` list that repeated the config
/// and the layers, a fifth of its bytes; 9: `record_history` and `activity` keep log offsets, not
/// copies of what the events at them say; 10: digests, media types and annotation keys in
/// manifest, tag and `repo_blobs` rows are packed: `compact`).
pub const REGISTRY: &str = "registry";
pub const REGISTRY_VERSION: u32 = 10;

/// redb's page cache for a build being rebuilt (its default, kept for serving, is 1 GiB). The
/// write-out of a rebuild creates every page of a 2 GiB build in one transaction; with the
/// default cache redb writes pages out and reads them back while it goes (10 s instead of 6 s
/// for 7M rows), while with this one they are written once by the commit.
const REBUILD_CACHE_BYTES: usize = 4 << 30;
/// redb's own default page cache, for views that serve.
const DEFAULT_CACHE_BYTES: usize = 1 << 30;

/// Generations are unique in the process, across every [`Views`] ever opened: an answer cached
/// for one build's generation can never be mistaken for another build's.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::AcqRel)
}

/// The views database.
pub struct Views {
    database: Database,
    /// Moves after every committed batch: readers that cache answers drop them when it moves.
    generation: AtomicU64,
    /// Set once a newer build replaced this one: the last holder to drop it deletes this directory.
    retired_directory: Mutex<Option<PathBuf>>,
    /// The search index of this build (next to the views file), once opened by
    /// [`Views::open_search`]. It lives and is swapped with the views, so a search and the
    /// pages it links to always come from the same build.
    search: OnceLock<Arc<search::SearchProjection>>,
    /// Where the views file is; the search index lives in `search/` beside it.
    path: PathBuf,
}

impl Views {
    /// Opens (creating if needed) views at `path`, ready to apply: tables created, and cleared
    /// when they were built by another version of the code.
    pub fn open(path: &Path) -> Result<Self, ProjectionError> {
        let views = Views::open_as_is(path)?;
        views.prepare()?;
        Ok(views)
    }

    /// [`Views::open`] for a build about to be rebuilt (see [`rebuild`]): a page cache that
    /// holds the whole build. Open the build again to serve it.
    pub fn open_for_rebuild(path: &Path) -> Result<Self, ProjectionError> {
        let views = Views::open_with_cache(path, REBUILD_CACHE_BYTES)?;
        views.prepare()?;
        Ok(views)
    }

    /// Opens the views without looking at their version or creating tables: the caller decides
    /// (the runner keeps serving an outdated build while a fresh one is built beside it).
    pub fn open_as_is(path: &Path) -> Result<Self, ProjectionError> {
        Views::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, ProjectionError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(ProjectionError::io(format!("cannot create {}", parent.display())))?;
        }
        // One process owns the views (they are disposable and rebuilt from the log), so the
        // default exclusive mode: no per-transaction file locking on the pull path.
        let database = Database::builder().set_cache_size(cache_bytes).create(path)?;
        Ok(Views {
            database,
            generation: AtomicU64::new(next_generation()),
            retired_directory: Mutex::new(None),
            search: OnceLock::new(),
            path: path.to_path_buf(),
        })
    }

    /// Opens the live views for serving: prepared when built by this version of the code, left
    /// as they are otherwise (they keep serving, frozen, until a fresh build replaces them).
    pub fn open_live(path: &Path) -> Result<Self, ProjectionError> {
        let views = Views::open_as_is(path)?;
        if views.is_current_version()? {
            views.prepare()?;
        } else {
            tracing::warn!(path = %path.display(), "views of another version: serving them while a fresh build is made");
        }
        Ok(views)
    }

    /// Opens this build's search index (`search/` beside the views file), rebuilds it from the
    /// views when it does not reflect exactly their checkpoint, and attaches it: from then on the
    /// runner keeps it in step. Returns the rebuild report when one was needed.
    pub fn open_search(&self) -> Result<Option<search::RebuildReport>, ProjectionError> {
        self.open_search_at(self.checkpoint()?)
    }

    /// [`Views::open_search`] for views that will be at `checkpoint` once a transaction being
    /// written commits (see `rebuild::build`): the index is built from what they hold now, which
    /// must already be final in every table it reads.
    pub(crate) fn open_search_at(&self, checkpoint: u64) -> Result<Option<search::RebuildReport>, ProjectionError> {
        match self.unattached_search()? {
            Some(projection) => self.attach_search_at(projection, checkpoint),
            None => Ok(None),
        }
    }

    /// This build's search index and its projection, opened but not attached (`None`: one is
    /// attached already). The threads they keep for good (tantivy's, the projection's committer)
    /// start at the calling thread's scheduling priority.
    pub(crate) fn unattached_search(&self) -> Result<Option<search::SearchProjection>, ProjectionError> {
        if self.search.get().is_some() {
            return Ok(None);
        }
        let directory = self.path.with_file_name("search");
        let index = search::SearchIndex::open(&directory).map_err(ProjectionError::search)?;
        Ok(Some(search::SearchProjection::new(Arc::new(index))))
    }

    /// Rebuilds `projection`'s index from the views when it does not reflect exactly
    /// `checkpoint` (see [`Views::open_search_at`]), then attaches it.
    pub(crate) fn attach_search_at(
        &self,
        projection: search::SearchProjection,
        checkpoint: u64,
    ) -> Result<Option<search::RebuildReport>, ProjectionError> {
        let report = if projection.needs_rebuild(checkpoint) {
            let report = projection.rebuild(self, checkpoint).map_err(ProjectionError::search)?;
            tracing::info!(checkpoint, ?report, "search index rebuilt from the views");
            Some(report)
        } else {
            None
        };
        let _ = self.search.set(Arc::new(projection));
        Ok(report)
    }

    /// This build's search projection, when [`Views::open_search`] attached one.
    pub fn search(&self) -> Option<&Arc<search::SearchProjection>> {
        self.search.get()
    }

    /// The registry version these views were built by (`None`: never prepared).
    pub fn stored_version(&self) -> Result<Option<u32>, ProjectionError> {
        let read = self.read()?;
        let versions = match read.open_table(VERSIONS) {
            Ok(versions) => versions,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        Ok(versions.get(REGISTRY)?.map(|value| value.value()))
    }

    /// True when these views were built by this version of the code (or are new and empty).
    pub fn is_current_version(&self) -> Result<bool, ProjectionError> {
        Ok(self.stored_version()?.is_none_or(|version| version == REGISTRY_VERSION))
    }

    /// Creates every table, and clears the views when the stored version is not the current one.
    /// Clearing deletes every table but `versions`, so tables added later are covered too.
    pub(crate) fn prepare(&self) -> Result<(), ProjectionError> {
        let txn = self.database.begin_write()?;
        let stored = txn.open_table(VERSIONS)?.get(REGISTRY)?.map(|value| value.value());
        if stored.is_some_and(|version| version != REGISTRY_VERSION) {
            tracing::warn!(
                ?stored,
                current = REGISTRY_VERSION,
                "registry views changed version, rebuilding from offset 0"
            );
            let tables: Vec<_> = txn.list_tables()?.filter(|table| table.name() != VERSIONS.name()).collect();
            for table in tables {
                txn.delete_table(table)?;
            }
            txn.open_table(CHECKPOINTS)?.insert(REGISTRY, 0)?;
        }
        txn.open_table(VERSIONS)?.insert(REGISTRY, REGISTRY_VERSION)?;
        txn.open_table(CHECKPOINTS)?;
        txn.open_table(DID_REVS)?;
        views::open_all(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// Marks these views as replaced: their directory is deleted when the last reader lets go.
    pub(crate) fn retire(&self, directory: PathBuf) {
        if let Ok(mut retired) = self.retired_directory.lock() {
            *retired = Some(directory);
        }
    }

    pub(crate) fn database(&self) -> &Database {
        &self.database
    }

    /// Changes whenever the views change (in this process). An answer derived from the views
    /// at one generation stays true until the generation moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn bump_generation(&self) {
        self.generation.store(next_generation(), Ordering::Release);
    }

    /// Makes every commit so far durable (after commits that were not synced: a rebuild).
    pub fn sync(&self) -> Result<(), ProjectionError> {
        let started = std::time::Instant::now();
        let mut txn = self.database.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.commit()?;
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "views synced");
        Ok(())
    }

    fn read(&self) -> Result<ReadTransaction, ProjectionError> {
        Ok(self.database.begin_read()?)
    }

    /// The next log offset the registry views will apply.
    pub fn checkpoint(&self) -> Result<u64, ProjectionError> {
        Ok(self.read()?.open_table(CHECKPOINTS)?.get(REGISTRY)?.map(|value| value.value()).unwrap_or(0))
    }

    pub fn did_for_handle(&self, handle: &str) -> Result<Option<String>, ProjectionError> {
        let read = self.read()?;
        let handles = read.open_table(HANDLES)?;
        Ok(handles.get(handle.to_ascii_lowercase().as_str())?.map(|did| did.value().to_string()))
    }

    pub fn identity(&self, did: &str) -> Result<Option<IdentityRow>, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(IDENTITIES)?;
        table.get(did)?.map(|bytes| decode("identities", bytes.value())).transpose()
    }

    /// Why a DID could not be resolved, while it stays unresolved (a hold the outbound policy
    /// refuses, a malformed DID document, an endpoint that never answered).
    pub fn identity_failure(&self, did: &str) -> Result<Option<String>, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(IDENTITY_FAILURES)?;
        Ok(table.get(did)?.map(|reason| reason.value().to_string()))
    }

    pub fn manifest(&self, did: &str, digest: &str) -> Result<Option<ManifestRow>, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(MANIFESTS)?;
        table.get(key(&[did, digest]).as_str())?.map(|bytes| decode("manifests", bytes.value())).transpose()
    }

    /// (media type, size) of a manifest whose bytes are in the content store.
    pub fn manifest_content(&self, digest: &str) -> Result<Option<(String, u64)>, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(MANIFEST_CONTENT)?;
        table.get(digest)?.map(|bytes| decode("manifest_content", bytes.value())).transpose()
    }

    pub fn tag(&self, did: &str, repository: &str, tag: &str) -> Result<Option<TagRow>, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(TAGS)?;
        table.get(key(&[did, repository, tag]).as_str())?.map(|bytes| decode("tags", bytes.value())).transpose()
    }

    /// Tag names of a repository in lexical order, after `after`, at most `limit`.
    pub fn tags(
        &self,
        did: &str,
        repository: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(TAGS)?;
        let prefix = format!("{}\0", key(&[did, repository]));
        let start = match after {
            Some(after) => format!("{prefix}{after}\0"),
            None => prefix.clone(),
        };
        let mut out = Vec::new();
        for entry in table.range(start.as_str()..)? {
            let (key, _) = entry?;
            let Some(tag) = key.value().strip_prefix(prefix.as_str()).map(str::to_string) else { break };
            if after.is_some_and(|after| tag.as_str() <= after) {
                continue;
            }
            out.push(tag);
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn repository(&self, did: &str, repository: &str) -> Result<Option<RepositoryRow>, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(REPOSITORIES)?;
        table.get(key(&[did, repository]).as_str())?.map(|bytes| decode("repositories", bytes.value())).transpose()
    }

    /// Repositories as (did, name) in key order, after `after`, at most `limit`.
    pub fn repositories(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(REPOSITORIES)?;
        let start = after.map(|(did, repository)| key(&[did, repository]));
        let mut out = Vec::new();
        let first = start.clone().unwrap_or_default();
        for entry in table.range(first.as_str()..)? {
            let (key, _) = entry?;
            let key = key.value();
            if start.as_deref() == Some(key) {
                continue;
            }
            if let Some((did, repository)) = key.split_once('\0') {
                out.push((did.to_string(), repository.to_string()));
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// Manifests in a DID's repositories whose `subject` is `subject`.
    pub fn referrers(&self, did: &str, subject: &str) -> Result<Vec<(String, ReferrerRow)>, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(REFERRERS)?;
        let prefix = format!("{}\0", key(&[did, subject]));
        let mut out = Vec::new();
        for entry in table.range(prefix.as_str()..)? {
            let (key, value) = entry?;
            let Some(digest) = key.value().strip_prefix(prefix.as_str()).map(str::to_string) else { break };
            out.push((digest, decode("referrers", value.value())?));
        }
        Ok(out)
    }

    /// The manifests of a repository that reference a blob (empty: the blob is not served there).
    pub fn blob_referrers(&self, did: &str, repository: &str, blob: &str) -> Result<Vec<String>, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(REPO_BLOBS)?;
        match table.get(key(&[did, repository, blob]).as_str())? {
            Some(bytes) => Ok(decode::<crate::views::BlobReferrers>("repo_blobs", bytes.value())?.0),
            None => Ok(Vec::new()),
        }
    }
}

impl Drop for Views {
    fn drop(&mut self) {
        let retired = self.retired_directory.get_mut().ok().and_then(|directory| directory.take());
        if let Some(directory) = retired {
            // The database file is still open here; unlinking an open file is fine on Unix and
            // its space is freed when the handle closes right after.
            match std::fs::remove_dir_all(&directory) {
                Ok(()) => tracing::info!(directory = %directory.display(), "replaced views build deleted"),
                Err(error) => {
                    tracing::warn!(directory = %directory.display(), %error, "cannot delete a replaced views build")
                }
            }
        }
    }
}

/// The live views, swappable while requests run: a reader loads the current [`Views`] once per
/// request and keeps using that build until it is done, even if a newer one is swapped in.
#[derive(Clone)]
pub struct ViewsHandle {
    current: Arc<ArcSwap<Views>>,
}

impl ViewsHandle {
    pub fn new(views: Arc<Views>) -> Self {
        ViewsHandle { current: Arc::new(ArcSwap::new(views)) }
    }

    /// The live views now.
    pub fn load(&self) -> Arc<Views> {
        self.current.load_full()
    }

    /// The live views' generation, without taking a reference (the pull path's cache check).
    pub fn generation(&self) -> u64 {
        self.current.load().generation()
    }

    /// Puts `views` live; returns the build it replaced.
    pub fn swap(&self, views: Arc<Views>) -> Arc<Views> {
        self.current.swap(views)
    }
}

impl From<Arc<Views>> for ViewsHandle {
    fn from(views: Arc<Views>) -> Self {
        ViewsHandle::new(views)
    }
}
