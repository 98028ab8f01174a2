//! Blob backends for holds atcr serves itself. Layer and config bytes normally live in a
//! hold and the pull path redirects there; for a hold configured here, atcr answers from a
//! backend instead.
//!
//! - `Filesystem`: `<root>/sha256/<hex>` files, streamed (with `Range`) by the web layer.

use std::path::PathBuf;

use crate::records::is_sha256_digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobBackend {
    Filesystem { root: PathBuf },
}

/// How to hand out a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobAccess {
    /// Stream this local file.
    File(PathBuf),
}

impl BlobBackend {
    /// Where the blob is, `None` when the backend does not have it. Only exact
    /// `sha256:<64 hex>` digests ever reach a path.
    pub fn locate(&self, digest: &str) -> Option<BlobAccess> {
        if !is_sha256_digest(digest) {
            return None;
        }
        match self {
            BlobBackend::Filesystem { root } => {
                let path = root.join("sha256").join(&digest["sha256:".len()..]);
                path.is_file().then_some(BlobAccess::File(path))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_backend_finds_only_exact_digests() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(directory.path().join("sha256")).unwrap();
        let hex = "a".repeat(64);
        std::fs::write(directory.path().join("sha256").join(&hex), b"layer").unwrap();
        let backend = BlobBackend::Filesystem { root: directory.path().to_path_buf() };
        assert!(matches!(backend.locate(&format!("sha256:{hex}")), Some(BlobAccess::File(_))));
        assert_eq!(backend.locate(&format!("sha256:{}", "b".repeat(64))), None);
        assert_eq!(backend.locate("sha256:../../../etc/passwd"), None);
    }
}
