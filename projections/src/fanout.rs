//! The indexes a manifest row fans out to: the blobs of its repository (`repo_blobs`), the users
//! of its layers (`layer_users`) and the manifests of the hold it names (`hold_manifests`,
//! `hold_manifest_counts`).
//!
//! Why a module of their own: they are a function of the manifest rows alone, and nothing reads
//! them while events are applied (only queries do). So their changes are values ([`FanOut`]),
//! handed to [`ViewTables::fan_out`]: following the log applies them at once, in the same
//! transaction; a rebuild applies them in log order on a second thread with an overlay of its
//! own, while the first applies the next events (they were a third of a rebuild's applying, see
//! `rebuild`). The rows either way are the same (`projections/tests/views.rs` and
//! `tests/replay.rs` compare them table by table).

use crate::ProjectionError;
use crate::holds::{HOLD_MANIFEST_COUNTS, HOLD_MANIFESTS};
use crate::tables::ViewTables;
use crate::views::{BlobReferrers, ManifestRow, REPO_BLOBS, decode, key};

/// The tables only [`FanOut::apply`] writes or reads while events are applied.
pub(crate) const TABLES: [&str; 4] = ["repo_blobs", "layer_users", "hold_manifests", "hold_manifest_counts"];

/// One change of the fan-out indexes, applied in log order.
// Changes travel in batches, moved once: boxing the row would cost an allocation per manifest.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum FanOut {
    /// A manifest row of `did` was written (`added`), or is going away: its blobs are referenced
    /// by it in its repository, and its layers used by it.
    Manifest { did: String, digest: String, row: ManifestRow, added: bool },
    /// A manifest of `did` names `hold` (`added`), or no longer does.
    Hold { hold: String, did: String, repository: String, digest: String, added: bool },
}

impl FanOut {
    pub(crate) fn apply(self, txn: &impl ViewTables) -> Result<(), ProjectionError> {
        match self {
            FanOut::Manifest { did, digest, row, added: true } => {
                crate::layers::note_manifest(txn, &did, &digest, &row)?;
                for (blob, _) in row.blobs() {
                    let blob_key = key(&[&did, &row.repository, blob]);
                    let mut referencing = match txn.get(REPO_BLOBS, blob_key.as_str())? {
                        Some(bytes) => decode::<BlobReferrers>("repo_blobs", &bytes)?,
                        None => BlobReferrers::default(),
                    };
                    if !referencing.0.contains(&digest) {
                        referencing.0.push(digest.clone());
                    }
                    txn.insert_row(REPO_BLOBS, blob_key.as_str(), &referencing)?;
                }
                Ok(())
            }
            FanOut::Manifest { did, digest, row, added: false } => {
                crate::layers::forget_manifest(txn, &did, &digest, &row)?;
                for (blob, _) in row.blobs() {
                    let blob_key = key(&[&did, &row.repository, blob]);
                    let Some(bytes) = txn.get(REPO_BLOBS, blob_key.as_str())? else { continue };
                    let mut referencing = decode::<BlobReferrers>("repo_blobs", &bytes)?;
                    referencing.0.retain(|other| *other != digest);
                    if referencing.0.is_empty() {
                        txn.remove(REPO_BLOBS, blob_key.as_str())?;
                    } else {
                        txn.insert_row(REPO_BLOBS, blob_key.as_str(), &referencing)?;
                    }
                }
                Ok(())
            }
            FanOut::Hold { hold, did, repository, digest, added } => {
                let index_key = key(&[&hold, &did, &repository, &digest]);
                let changed = if added {
                    let fresh = !txn.contains(HOLD_MANIFESTS, index_key.as_str())?;
                    if fresh {
                        txn.insert(HOLD_MANIFESTS, index_key.as_str(), ())?;
                    }
                    fresh
                } else {
                    txn.remove(HOLD_MANIFESTS, index_key.as_str())?.is_some()
                };
                if !changed {
                    return Ok(());
                }
                let count = txn.get(HOLD_MANIFEST_COUNTS, &hold)?.unwrap_or(0);
                let count = if added { count + 1 } else { count.saturating_sub(1) };
                if count == 0 {
                    txn.remove(HOLD_MANIFEST_COUNTS, &hold)?;
                } else {
                    txn.insert(HOLD_MANIFEST_COUNTS, &hold, count)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::TableHandle;

    use super::*;
    use crate::layers::LAYER_USERS;

    #[test]
    fn the_table_names_are_the_definitions_names() {
        let names = [REPO_BLOBS.name(), LAYER_USERS.name(), HOLD_MANIFESTS.name(), HOLD_MANIFEST_COUNTS.name()];
        assert_eq!(TABLES, names);
    }
}
