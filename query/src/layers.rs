//! Layers of an image: its build history, platform and runtime settings (from the image config
//! enrichment stored), each layer's size, sharing, and — when deep inspection read it — the
//! files it adds, modifies and deletes relative to the lower layers of this image; plus layer
//! dedup totals over the whole network. Reads the views and the content store only.

use std::collections::{BTreeMap, BTreeSet};

use atcr_projections::ProjectionError;
use atcr_projections::layers::ContentRow;
use atcr_storage::image::{FileKind, IMAGE_CONFIG_KIND, ImageConfig, LAYER_FILES_KIND, LayerFiles};
use atcr_storage::records::is_sha256_digest;
use serde::Serialize;
use utoipa::ToSchema;

use crate::registry::RegistryQuery;

#[derive(Debug, thiserror::Error)]
pub enum LayersError {
    #[error("views: {0}")]
    Views(#[from] ProjectionError),
}

/// Whether atcr has something: `stored`, `rejected` (with the reason), `pending` (not fetched
/// yet), `off` (deep inspection not enabled or not done for this layer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ContentStatus {
    pub status: String,
    pub reason: Option<String>,
}

impl ContentStatus {
    fn of(row: Option<&ContentRow>, missing: &str) -> ContentStatus {
        match row {
            Some(ContentRow { rejected: Some(reason), .. }) => {
                ContentStatus { status: "rejected".into(), reason: Some(reason.clone()) }
            }
            Some(_) => ContentStatus { status: "stored".into(), reason: None },
            None => ContentStatus { status: missing.into(), reason: None },
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Platform {
    pub os: Option<String>,
    pub architecture: Option<String>,
    pub variant: Option<String>,
    pub os_version: Option<String>,
    pub os_features: Vec<String>,
}

/// How a container of the image runs (the config's `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Runtime {
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

/// One build step; `layer` is the index of the layer it produced (none for an empty layer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct HistoryStep {
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
    pub empty_layer: bool,
    pub layer: Option<usize>,
}

/// What one layer does to one path, relative to the lower layers of this image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FileChange {
    pub path: String,
    /// `added`, `modified`, `deleted` (a whiteout) or `opaque` (a directory whose lower
    /// contents are hidden).
    pub change: String,
    /// `file`, `directory`, `symlink`, `hardlink`, `other`.
    pub kind: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LayerDetail {
    pub index: usize,
    pub digest: String,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    /// The build step that produced it.
    pub created_by: Option<String>,
    /// Manifests and repositories (network-wide) that use this layer, this one included.
    pub used_by_manifests: u64,
    pub used_by_repositories: u64,
    pub inspection: ContentStatus,
    pub compression: Option<String>,
    pub uncompressed_size: Option<u64>,
    /// Uncompressed over compressed bytes.
    pub compression_ratio: Option<f64>,
    pub changes: Vec<FileChange>,
    /// Entries the stored list did not hold (over its cap).
    pub truncated: u64,
}

/// How much of this image is shared with other images.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ManifestDedup {
    pub layers: u64,
    /// Layers another manifest uses too.
    pub shared_layers: u64,
    /// Layers another repository uses too.
    pub cross_repository_layers: u64,
    /// Bytes of the shared layers (stored once for every image using them).
    pub shared_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ImageLayers {
    pub did: String,
    pub repository: String,
    pub digest: String,
    pub config_digest: Option<String>,
    pub config: ContentStatus,
    pub created: Option<String>,
    pub author: Option<String>,
    pub platform: Option<Platform>,
    pub runtime: Option<Runtime>,
    pub history: Vec<HistoryStep>,
    pub layers: Vec<LayerDetail>,
    /// True when every layer below an inspected one was inspected too (else `added` may be a
    /// `modified` of an uninspected lower layer).
    pub changes_complete: bool,
    pub dedup: ManifestDedup,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SharedLayer {
    pub digest: String,
    pub size: u64,
    pub manifests: u64,
    pub repositories: u64,
}

/// Layer sharing over every manifest atcr knows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct DedupSummary {
    pub layers: u64,
    pub references: u64,
    pub shared_layers: u64,
    pub cross_repository_layers: u64,
    /// Bytes of every reference, as if each image stored its own layers.
    pub referenced_bytes: u64,
    /// Bytes of each distinct layer once.
    pub stored_bytes: u64,
    /// `referenced_bytes - stored_bytes`.
    pub bytes_saved: u64,
    /// The most used layers.
    pub top: Vec<SharedLayer>,
}

/// Answers the layers part of a manifest page and the dedup summary.
#[derive(Clone)]
pub struct LayersQuery {
    registry: RegistryQuery,
}

impl LayersQuery {
    pub fn new(registry: RegistryQuery) -> Self {
        LayersQuery { registry }
    }

    /// The layers of the image `digest` (or the manifest a tag names) of `owner`/`repository`;
    /// `None` when there is no such image manifest.
    pub fn image_layers(
        &self,
        owner: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<ImageLayers>, LayersError> {
        let views = self.registry.views();
        let did = if owner.starts_with("did:") {
            owner.to_string()
        } else {
            match views.did_for_handle(owner)? {
                Some(did) => did,
                None => return Ok(None),
            }
        };
        let digest = if is_sha256_digest(reference) {
            reference.to_string()
        } else {
            match views.tag(&did, repository, reference)? {
                Some(tag) => tag.digest,
                None => return Ok(None),
            }
        };
        let Some(manifest) = views.manifest(&did, &digest)? else { return Ok(None) };
        if manifest.repository != repository || !manifest.children.is_empty() {
            return Ok(None);
        }
        let config_row = views.image_content(IMAGE_CONFIG_KIND, &digest)?;
        let config = config_row
            .as_ref()
            .filter(|row| row.rejected.is_none())
            .and_then(|row| self.registry.content().get(&row.digest).ok().flatten())
            .and_then(|bytes| ImageConfig::parse(&bytes).ok());
        let config_status = match (&config_row, &config, &manifest.config) {
            (_, _, None) => ContentStatus { status: "none".into(), reason: None },
            (Some(row), None, _) if row.rejected.is_none() => {
                ContentStatus { status: "rejected".into(), reason: Some("the stored config is unreadable".into()) }
            }
            (row, _, _) => ContentStatus::of(row.as_ref(), "pending"),
        };

        // Non-empty history steps map, in order, to the layers.
        let mut history = Vec::new();
        let mut layer_step: BTreeMap<usize, String> = BTreeMap::new();
        if let Some(config) = &config {
            let mut next_layer = 0;
            for entry in &config.history {
                let layer = (!entry.empty_layer && next_layer < manifest.layers.len()).then_some(next_layer);
                if !entry.empty_layer {
                    if let (Some(index), Some(created_by)) = (layer, &entry.created_by) {
                        layer_step.insert(index, created_by.clone());
                    }
                    next_layer += 1;
                }
                history.push(HistoryStep {
                    created: entry.created.clone(),
                    created_by: entry.created_by.clone(),
                    author: entry.author.clone(),
                    comment: entry.comment.clone(),
                    empty_layer: entry.empty_layer,
                    layer,
                });
            }
        }

        let mut layers = Vec::new();
        let mut dedup = ManifestDedup::default();
        // The lower layers' filesystem: path → kind, as far as inspected.
        let mut lower: BTreeMap<String, FileKind> = BTreeMap::new();
        let mut uninspected_below = false;
        let mut changes_complete = true;
        for (index, (layer_digest, media_type, size)) in manifest.layers.iter().enumerate() {
            let size = size.and_then(|size| u64::try_from(size).ok());
            let users = views.layer_users(layer_digest)?;
            let manifests = users.len() as u64;
            let repositories: BTreeSet<(&str, &str)> =
                users.iter().map(|user| (user.did.as_str(), user.repository.as_str())).collect();
            dedup.layers += 1;
            if manifests > 1 {
                dedup.shared_layers += 1;
                dedup.shared_bytes += size.unwrap_or(0);
            }
            if repositories.len() > 1 {
                dedup.cross_repository_layers += 1;
            }
            let files_row = views.image_content(LAYER_FILES_KIND, layer_digest)?;
            let files: Option<LayerFiles> = files_row
                .as_ref()
                .filter(|row| row.rejected.is_none())
                .and_then(|row| self.registry.content().get(&row.digest).ok().flatten())
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let mut detail = LayerDetail {
                index,
                digest: layer_digest.clone(),
                media_type: media_type.clone(),
                size,
                created_by: layer_step.get(&index).cloned(),
                used_by_manifests: manifests,
                used_by_repositories: repositories.len() as u64,
                inspection: ContentStatus::of(files_row.as_ref(), "off"),
                compression: None,
                uncompressed_size: None,
                compression_ratio: None,
                changes: Vec::new(),
                truncated: 0,
            };
            match files {
                Some(files) => {
                    if uninspected_below {
                        changes_complete = false;
                    }
                    detail.compression = Some(files.compression.clone());
                    detail.uncompressed_size = Some(files.uncompressed_size);
                    detail.compression_ratio = files.compression_ratio();
                    detail.truncated = files.truncated;
                    detail.changes = layer_changes(&files, &mut lower);
                }
                None => uninspected_below = true,
            }
            layers.push(detail);
        }
        Ok(Some(ImageLayers {
            did,
            repository: repository.to_string(),
            digest,
            config_digest: manifest.config.clone(),
            config: config_status,
            created: config.as_ref().and_then(|config| config.created.clone()),
            author: config.as_ref().and_then(|config| config.author.clone()),
            platform: config.as_ref().map(|config| Platform {
                os: config.os.clone(),
                architecture: config.architecture.clone(),
                variant: config.variant.clone(),
                os_version: config.os_version.clone(),
                os_features: config.os_features.clone(),
            }),
            runtime: config.as_ref().map(|config| Runtime {
                user: config.config.user.clone().filter(|user| !user.is_empty()),
                working_dir: config.config.working_dir.clone().filter(|dir| !dir.is_empty()),
                env: config.config.env.clone(),
                entrypoint: config.config.entrypoint.clone(),
                cmd: config.config.cmd.clone(),
                exposed_ports: config.config.exposed_ports.keys().cloned().collect(),
                volumes: config.config.volumes.keys().cloned().collect(),
                labels: config.config.labels.clone(),
                stop_signal: config.config.stop_signal.clone(),
            }),
            history,
            layers,
            changes_complete,
            dedup,
        }))
    }

    /// Layer sharing over every manifest atcr knows (one pass over the `layer_users` index).
    pub fn dedup_summary(&self) -> Result<DedupSummary, LayersError> {
        let totals = self.registry.views().layer_dedup_totals()?;
        Ok(summary_of(totals))
    }
}

fn summary_of(totals: atcr_projections::layers::DedupTotals) -> DedupSummary {
    DedupSummary {
        layers: totals.layers,
        references: totals.references,
        shared_layers: totals.shared_layers,
        cross_repository_layers: totals.cross_repository_layers,
        referenced_bytes: totals.referenced_bytes,
        stored_bytes: totals.stored_bytes,
        bytes_saved: totals.referenced_bytes.saturating_sub(totals.stored_bytes),
        top: totals
            .top
            .into_iter()
            .map(|(digest, size, manifests, repositories)| SharedLayer { digest, size, manifests, repositories })
            .collect(),
    }
}

fn kind_name(kind: FileKind) -> &'static str {
    match kind {
        FileKind::File => "file",
        FileKind::Directory => "directory",
        FileKind::Symlink => "symlink",
        FileKind::Hardlink => "hardlink",
        FileKind::Other | FileKind::Whiteout | FileKind::OpaqueDirectory => "other",
    }
}

/// What one layer changes relative to `lower` (the filesystem of the layers below it), and
/// `lower` updated to include it. Whiteouts and opaque markers apply before the layer's own
/// entries, as the OCI layer spec has it.
pub fn layer_changes(files: &LayerFiles, lower: &mut BTreeMap<String, FileKind>) -> Vec<FileChange> {
    let mut changes = Vec::new();
    let under = |directory: &str, path: &str| {
        path.len() > directory.len() + 1 && path.starts_with(directory) && path.as_bytes()[directory.len()] == b'/'
    };
    for entry in &files.entries {
        match entry.kind {
            FileKind::Whiteout => {
                let kind = lower.get(&entry.path).copied().map_or("other", kind_name);
                changes.push(FileChange {
                    path: entry.path.clone(),
                    change: "deleted".into(),
                    kind: kind.into(),
                    size: 0,
                });
                lower.remove(&entry.path);
                lower.retain(|path, _| !under(&entry.path, path));
            }
            FileKind::OpaqueDirectory => {
                changes.push(FileChange {
                    path: entry.path.clone(),
                    change: "opaque".into(),
                    kind: "directory".into(),
                    size: 0,
                });
                lower.retain(|path, _| !under(&entry.path, path));
            }
            _ => {}
        }
    }
    for entry in &files.entries {
        if matches!(entry.kind, FileKind::Whiteout | FileKind::OpaqueDirectory) {
            continue;
        }
        let change = if lower.contains_key(&entry.path) { "modified" } else { "added" };
        changes.push(FileChange {
            path: entry.path.clone(),
            change: change.into(),
            kind: kind_name(entry.kind).into(),
            size: entry.size,
        });
        lower.insert(entry.path.clone(), entry.kind);
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use atcr_storage::image::LayerEntry;

    fn layer(entries: &[(&str, FileKind, u64)]) -> LayerFiles {
        LayerFiles {
            entries: entries
                .iter()
                .map(|(path, kind, size)| LayerEntry { path: path.to_string(), kind: *kind, size: *size })
                .collect(),
            ..LayerFiles::default()
        }
    }

    fn summary(changes: &[FileChange]) -> Vec<(String, String)> {
        changes.iter().map(|change| (change.path.clone(), change.change.clone())).collect()
    }

    #[test]
    fn changes_are_relative_to_the_lower_layers() {
        let mut lower = BTreeMap::new();
        let base = layer(&[
            ("etc", FileKind::Directory, 0),
            ("etc/motd", FileKind::File, 5),
            ("etc/old.conf", FileKind::File, 3),
            ("var/cache/a", FileKind::File, 1),
        ]);
        let first = layer_changes(&base, &mut lower);
        assert!(first.iter().all(|change| change.change == "added"));
        let top = layer(&[
            ("etc/motd", FileKind::File, 9),
            ("etc/old.conf", FileKind::Whiteout, 0),
            ("var/cache", FileKind::OpaqueDirectory, 0),
            ("var/cache/b", FileKind::File, 2),
            ("etc/new", FileKind::File, 1),
        ]);
        let second = layer_changes(&top, &mut lower);
        assert_eq!(
            summary(&second),
            [
                ("etc/old.conf", "deleted"),
                ("var/cache", "opaque"),
                ("etc/motd", "modified"),
                ("var/cache/b", "added"),
                ("etc/new", "added"),
            ]
            .map(|(path, change)| (path.to_string(), change.to_string()))
        );
        assert_eq!(second[0].kind, "file");
        assert!(!lower.contains_key("etc/old.conf") && !lower.contains_key("var/cache/a"));
        // a file deleted below and written again is added, not modified
        let again = layer_changes(&layer(&[("etc/old.conf", FileKind::File, 1)]), &mut lower);
        assert_eq!(summary(&again), [("etc/old.conf".to_string(), "added".to_string())]);
    }
}
