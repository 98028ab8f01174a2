//! Where projection builds live on disk and which one is live (blue/green rebuilds).
//!
//! ```text
//! <data-dir>/views/CURRENT              {"registry": 3}: the live build of each projection
//! <data-dir>/views/LOCK                 held (flock) by whoever creates builds or flips CURRENT
//! <data-dir>/views/registry-3/views.redb
//! ```
//!
//! A rebuild writes a new build beside the live one while the live one keeps serving, then
//! *flips*: CURRENT is replaced atomically (write a temporary file, fsync, rename, fsync the
//! directory). A running `atcr serve` polls CURRENT, opens the new build, catches it up and swaps
//! it in; the old build's files are deleted once its last reader lets go. Builds are numbered
//! upwards and never reused, so a number names one content history.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ProjectionError;

const CURRENT_FILE: &str = "CURRENT";
const LOCK_FILE: &str = "LOCK";
/// The registry views' database file inside its build directory.
pub const REGISTRY_FILE: &str = "views.redb";

/// The live build of each projection, as stored in `CURRENT`.
pub type Current = BTreeMap<String, u64>;

/// The views directory of a data directory.
#[derive(Debug, Clone)]
pub struct ProjectionStore {
    root: PathBuf,
}

/// Proof that this process holds the store's lock: needed to create builds and flip.
pub struct StoreLock {
    _file: File,
}

impl ProjectionStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProjectionStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ensure_root(&self) -> Result<(), ProjectionError> {
        std::fs::create_dir_all(&self.root)
            .map_err(ProjectionError::io(format!("cannot create {}", self.root.display())))
    }

    /// What CURRENT says now (empty when there is none yet).
    pub fn current(&self) -> Result<Current, ProjectionError> {
        let path = self.root.join(CURRENT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Current::new()),
            Err(error) => {
                return Err(ProjectionError::Io { context: format!("cannot read {}", path.display()), source: error });
            }
        };
        serde_json::from_slice(&bytes).map_err(|error| ProjectionError::Corrupt(format!("{}: {error}", path.display())))
    }

    /// The live build of a projection, if it has one.
    pub fn live_build(&self, projection: &str) -> Result<Option<u64>, ProjectionError> {
        Ok(self.current()?.get(projection).copied())
    }

    pub fn build_directory(&self, projection: &str, build: u64) -> PathBuf {
        self.root.join(format!("{projection}-{build}"))
    }

    /// The registry database of the live build, if there is one.
    pub fn live_registry_path(&self) -> Result<Option<PathBuf>, ProjectionError> {
        Ok(self
            .live_build(crate::REGISTRY)?
            .map(|build| self.build_directory(crate::REGISTRY, build).join(REGISTRY_FILE)))
    }

    /// Waits for the store's lock (another `atcr replay`, or serve flipping, may hold it).
    pub fn lock(&self) -> Result<StoreLock, ProjectionError> {
        let file = self.lock_file()?;
        file.lock().map_err(ProjectionError::io("cannot lock the views directory"))?;
        Ok(StoreLock { _file: file })
    }

    /// The store's lock if nobody else holds it.
    pub fn try_lock(&self) -> Result<Option<StoreLock>, ProjectionError> {
        let file = self.lock_file()?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StoreLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(ProjectionError::Io { context: "cannot lock the views directory".into(), source: error })
            }
        }
    }

    fn lock_file(&self) -> Result<File, ProjectionError> {
        self.ensure_root()?;
        let path = self.root.join(LOCK_FILE);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ProjectionError::io(format!("cannot open {}", path.display())))
    }

    /// Build numbers found on disk for a projection, live or not.
    fn builds_on_disk(&self, projection: &str) -> Result<Vec<u64>, ProjectionError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(ProjectionError::Io {
                    context: format!("cannot list {}", self.root.display()),
                    source: error,
                });
            }
        };
        let prefix = format!("{projection}-");
        let mut builds = Vec::new();
        for entry in entries {
            let entry = entry.map_err(ProjectionError::io(format!("cannot list {}", self.root.display())))?;
            let name = entry.file_name();
            let Some(number) = name.to_str().and_then(|name| name.strip_prefix(&prefix)) else { continue };
            if let Ok(number) = number.parse::<u64>() {
                builds.push(number);
            }
        }
        Ok(builds)
    }

    /// A new, empty build directory with a number never used before.
    pub fn new_build(&self, _lock: &StoreLock, projection: &str) -> Result<(u64, PathBuf), ProjectionError> {
        let on_disk = self.builds_on_disk(projection)?.into_iter().max().unwrap_or(0);
        let live = self.live_build(projection)?.unwrap_or(0);
        let build = on_disk.max(live) + 1;
        let directory = self.build_directory(projection, build);
        std::fs::create_dir_all(&directory)
            .map_err(ProjectionError::io(format!("cannot create {}", directory.display())))?;
        Ok((build, directory))
    }

    /// Makes `build` the live build of `projection`, atomically.
    pub fn flip(&self, _lock: &StoreLock, projection: &str, build: u64) -> Result<(), ProjectionError> {
        let mut current = self.current()?;
        current.insert(projection.to_string(), build);
        let bytes = serde_json::to_vec_pretty(&current)
            .map_err(|error| ProjectionError::Corrupt(format!("CURRENT encoding: {error}")))?;
        let path = self.root.join(CURRENT_FILE);
        let temporary = self.root.join(format!("{CURRENT_FILE}.tmp"));
        let context = format!("cannot write {}", temporary.display());
        let mut file = File::create(&temporary).map_err(ProjectionError::io(context.clone()))?;
        file.write_all(&bytes).map_err(ProjectionError::io(context.clone()))?;
        file.write_all(b"\n").map_err(ProjectionError::io(context.clone()))?;
        file.sync_all().map_err(ProjectionError::io(context))?;
        drop(file);
        std::fs::rename(&temporary, &path)
            .map_err(ProjectionError::io(format!("cannot replace {}", path.display())))?;
        // The rename itself must be durable before anyone acts on it.
        File::open(&self.root)
            .and_then(|directory| directory.sync_all())
            .map_err(ProjectionError::io(format!("cannot sync {}", self.root.display())))?;
        tracing::info!(projection, build, "live build flipped");
        Ok(())
    }

    /// Deletes every build of `projection` that is not live: leftovers of replaced builds and of
    /// rebuilds that never finished. Holding the lock proves no rebuild is writing one now.
    pub fn remove_unused(&self, _lock: &StoreLock, projection: &str) -> Result<(), ProjectionError> {
        let live = self.live_build(projection)?;
        for build in self.builds_on_disk(projection)? {
            if Some(build) == live {
                continue;
            }
            let directory = self.build_directory(projection, build);
            match std::fs::remove_dir_all(&directory) {
                Ok(()) => tracing::info!(directory = %directory.display(), "unused views build deleted"),
                Err(error) => {
                    tracing::warn!(directory = %directory.display(), %error, "cannot delete an unused views build")
                }
            }
        }
        Ok(())
    }

    /// Deletes a registry build that is no longer live when no process has it open (a running
    /// serve that still uses it deletes it itself once it has swapped to the new build).
    pub fn remove_registry_build_if_unused(&self, _lock: &StoreLock, build: u64) -> Result<bool, ProjectionError> {
        if self.live_build(crate::REGISTRY)? == Some(build) {
            return Ok(false);
        }
        let directory = self.build_directory(crate::REGISTRY, build);
        let path = directory.join(REGISTRY_FILE);
        if path.exists() {
            match redb::Database::builder().open(&path) {
                Ok(database) => drop(database),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Ok(false),
                // A build that cannot even be opened is no use to anyone either.
                Err(error) => tracing::warn!(path = %path.display(), %error, "unreadable views build"),
            }
        }
        std::fs::remove_dir_all(&directory)
            .map_err(ProjectionError::io(format!("cannot delete {}", directory.display())))?;
        Ok(true)
    }

    /// The live registry build, created when there is none: a `views.redb` from before builds
    /// existed (`legacy`) is moved in, otherwise the build starts empty. Returns the build number
    /// and its database path.
    pub fn ensure_live_registry(&self, legacy: Option<&Path>) -> Result<(u64, PathBuf), ProjectionError> {
        if let Some(build) = self.live_build(crate::REGISTRY)? {
            return Ok((build, self.build_directory(crate::REGISTRY, build).join(REGISTRY_FILE)));
        }
        let lock = self.lock()?;
        // Someone may have flipped while we waited for the lock.
        if let Some(build) = self.live_build(crate::REGISTRY)? {
            return Ok((build, self.build_directory(crate::REGISTRY, build).join(REGISTRY_FILE)));
        }
        let (build, directory) = self.new_build(&lock, crate::REGISTRY)?;
        let path = directory.join(REGISTRY_FILE);
        if let Some(legacy) = legacy.filter(|legacy| legacy.exists()) {
            std::fs::rename(legacy, &path).map_err(ProjectionError::io(format!(
                "cannot move {} into {}",
                legacy.display(),
                directory.display()
            )))?;
            tracing::info!(from = %legacy.display(), to = %path.display(), "views moved into the build layout");
        }
        self.flip(&lock, crate::REGISTRY, build)?;
        Ok((build, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_are_numbered_upwards_and_flips_replace_current() {
        let directory = tempfile::tempdir().unwrap();
        let store = ProjectionStore::new(directory.path().join("views"));
        assert_eq!(store.live_build("registry").unwrap(), None);
        let (first, path) = store.ensure_live_registry(None).unwrap();
        assert_eq!(first, 1);
        assert!(path.ends_with("registry-1/views.redb"));
        let lock = store.lock().unwrap();
        assert!(store.try_lock().unwrap().is_none(), "the lock excludes a second holder");
        let (second, _) = store.new_build(&lock, "registry").unwrap();
        let (third, _) = store.new_build(&lock, "registry").unwrap();
        assert_eq!((second, third), (2, 3), "an unfinished build's number is not reused");
        store.flip(&lock, "registry", 3).unwrap();
        store.flip(&lock, "search", 7).unwrap();
        assert_eq!(store.current().unwrap(), Current::from([("registry".into(), 3), ("search".into(), 7)]));
        store.remove_unused(&lock, "registry").unwrap();
        assert!(!store.build_directory("registry", 1).exists() && !store.build_directory("registry", 2).exists());
        assert!(store.build_directory("registry", 3).exists());
    }

    #[test]
    fn a_legacy_views_file_is_moved_into_the_first_build() {
        let directory = tempfile::tempdir().unwrap();
        let legacy = directory.path().join("views.redb");
        std::fs::write(&legacy, b"not really redb").unwrap();
        let store = ProjectionStore::new(directory.path().join("views"));
        let (_, path) = store.ensure_live_registry(Some(&legacy)).unwrap();
        assert!(!legacy.exists());
        assert_eq!(std::fs::read(path).unwrap(), b"not really redb");
    }
}
