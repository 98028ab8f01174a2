//! The content-addressed store: exact bytes (manifests, configs) by sha256 digest.
//!
//! Bytes are verified on the way in (a digest that does not match is refused) and on the way
//! out (a file changed on disk is reported as corruption, never served). Files are written to a
//! temporary name, synced, then renamed, so a crash leaves either nothing or the whole file.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Result, StorageError};
use crate::records::is_sha256_digest;

pub struct ContentStore {
    root: PathBuf,
}

/// `sha256:<hex>` of the bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for byte in hash {
        out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
    }
    out
}

/// The sha256 hex inside a CID whose multihash is sha2-256 (ATProto blob CIDs of OCI content
/// carry the OCI digest this way).
pub fn sha256_hex_of_cid(cid: &str) -> Option<String> {
    let cid: ipld_core::cid::Cid = cid.parse().ok()?;
    if cid.hash().code() != 0x12 || cid.hash().size() != 32 {
        return None;
    }
    Some(cid.hash().digest().iter().map(|byte| format!("{byte:02x}")).collect())
}

#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("{0:?} is not a sha256 digest")]
    InvalidDigest(String),
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl ContentStore {
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("sha256"))?;
        Ok(ContentStore { root: root.to_path_buf() })
    }

    /// The path of a digest; `None` for anything that is not exactly `sha256:<64 hex>`, so no
    /// caller-supplied string ever reaches the filesystem unchecked.
    fn path_of(&self, digest: &str) -> Option<PathBuf> {
        if !is_sha256_digest(digest) {
            return None;
        }
        Some(self.root.join("sha256").join(&digest["sha256:".len()..]))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path_of(digest).is_some_and(|path| path.exists())
    }

    /// Stores bytes under their digest after checking they match it. Idempotent.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), ContentError> {
        let path = self.path_of(digest).ok_or_else(|| ContentError::InvalidDigest(digest.to_string()))?;
        let actual = sha256_digest(bytes);
        if actual != digest {
            return Err(ContentError::DigestMismatch { expected: digest.to_string(), actual });
        }
        if path.exists() {
            return Ok(());
        }
        let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            if let Some(parent) = path.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|error| ContentError::Storage(StorageError::Io(error)))
    }

    /// The verified bytes of a digest, `Ok(None)` when absent, an error when the stored bytes
    /// no longer match (they are then never returned).
    pub fn get(&self, digest: &str) -> Result<Option<Vec<u8>>, ContentError> {
        let path = self.path_of(digest).ok_or_else(|| ContentError::InvalidDigest(digest.to_string()))?;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(ContentError::Storage(StorageError::Io(error))),
        };
        let actual = sha256_digest(&bytes);
        if actual != digest {
            tracing::error!(%digest, %actual, path = %path.display(), "stored content is corrupt, refusing to serve it");
            return Err(ContentError::DigestMismatch { expected: digest.to_string(), actual });
        }
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_verified_in_and_out() {
        let directory = tempfile::tempdir().unwrap();
        let store = ContentStore::open(directory.path()).unwrap();
        let bytes = b"{\"schemaVersion\":2}";
        let digest = sha256_digest(bytes);
        assert!(matches!(store.put(&sha256_digest(b"other"), bytes), Err(ContentError::DigestMismatch { .. })));
        store.put(&digest, bytes).unwrap();
        store.put(&digest, bytes).unwrap();
        assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&bytes[..]));
        std::fs::write(directory.path().join("sha256").join(&digest[7..]), b"tampered").unwrap();
        assert!(matches!(store.get(&digest), Err(ContentError::DigestMismatch { .. })));
        assert!(matches!(store.get("sha256:../../etc/passwd"), Err(ContentError::InvalidDigest(_))));
        assert_eq!(store.get(&sha256_digest(b"absent")).unwrap(), None);
    }
}
