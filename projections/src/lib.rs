//! atcr-projections: read models built from the event log.
//!
//! Projections are pure functions of the log: they never call the network or read the clock
//! (event times come from the log). They live in their own redb file (`views.redb`), and each
//! batch of applied events is committed in one transaction together with the projection's
//! checkpoint (the next log offset to apply), so a crash never applies an event twice or skips
//! one. Delete `views.redb` and the runner rebuilds everything from offset 0.
//!
//! - [`views`]: the registry views (identities, repositories, manifests, blobs, tags,
//!   referrers) and how each event changes them;
//! - [`runner`]: tails the log and applies batches;
//! - [`Views`]: the read side the query crate uses.

pub mod browse;
pub mod runner;
pub mod search;
pub mod views;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

pub use runner::ProjectionRunner;
pub use views::{ChildRow, IdentityRow, ManifestRow, ReferrerRow, RepositoryRow, TagRow};

use views::{HANDLES, IDENTITIES, MANIFEST_CONTENT, MANIFESTS, REFERRERS, REPO_BLOBS, REPOSITORIES, TAGS, decode, key};

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
}

pub(crate) const CHECKPOINTS: TableDefinition<&str, u64> = TableDefinition::new("checkpoints");
pub(crate) const VERSIONS: TableDefinition<&str, u32> = TableDefinition::new("versions");
pub(crate) const DID_REVS: TableDefinition<&str, &str> = TableDefinition::new("did_revs");

/// The name and version of the registry projection. Bump the version when `views::apply`
/// changes meaning: the views are then rebuilt from offset 0 on start.
pub const REGISTRY: &str = "registry";
pub const REGISTRY_VERSION: u32 = 1;

/// The views database.
pub struct Views {
    database: Database,
    /// Bumped after every committed batch: readers that cache answers drop them when it moves.
    generation: AtomicU64,
}

impl Views {
    pub fn open(path: &Path) -> Result<Self, ProjectionError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| ProjectionError::Corrupt(error.to_string()))?;
        }
        // One process owns the views (they are disposable and rebuilt from the log), so the
        // default exclusive mode: no per-transaction file locking on the pull path.
        let database = Database::builder().create(path)?;
        let views = Views { database, generation: AtomicU64::new(0) };
        views.prepare()?;
        Ok(views)
    }

    /// Creates every table, and clears the views when the stored version is not the current one.
    fn prepare(&self) -> Result<(), ProjectionError> {
        let txn = self.database.begin_write()?;
        let stored = txn.open_table(VERSIONS)?.get(REGISTRY)?.map(|value| value.value());
        if stored.is_some_and(|version| version != REGISTRY_VERSION) {
            tracing::warn!(
                ?stored,
                current = REGISTRY_VERSION,
                "registry views changed version, rebuilding from offset 0"
            );
            for table in [
                views::IDENTITIES,
                views::REPOSITORIES,
                views::MANIFESTS,
                views::REPO_BLOBS,
                views::TAGS,
                views::REFERRERS,
                views::MANIFEST_CONTENT,
            ] {
                txn.delete_table(table)?;
            }
            for table in [views::HANDLES, views::MANIFEST_RKEYS, views::TAG_RKEYS, DID_REVS] {
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

    pub(crate) fn database(&self) -> &Database {
        &self.database
    }

    /// Changes whenever the views change (in this process). An answer derived from the views
    /// at one generation stays true until the generation moves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn bump_generation(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
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
            Some(bytes) => decode("repo_blobs", bytes.value()),
            None => Ok(Vec::new()),
        }
    }
}
