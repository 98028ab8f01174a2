//! Image configs, layer file lists and layer sharing: what the layers part of the manifest page
//! and the network-wide dedup summary read.
//!
//! | table | key | value |
//! |---|---|---|
//! | `image_content` | kind `\0` subject | [`ContentRow`]: the stored or rejected `image.config` of a manifest, `layer.files` of a layer |
//! | `layer_users` | layer digest `\0` did `\0` repo `\0` manifest digest | the layer's size as the manifest gives it |
//!
//! `image_content` follows `ContentStored` / `ContentRejected` events of the two kinds (a later
//! event replaces an earlier one: a stored config after a failed fetch wins, and the other way
//! round). `layer_users` follows manifest records: [`crate::fanout::FanOut`] calls
//! [`note_manifest`] and [`forget_manifest`].

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use atcr_storage::EventBody;
use atcr_storage::image::{IMAGE_CONFIG_KIND, LAYER_FILES_KIND};

use crate::tables::ViewTables;
use crate::views::{ManifestRow, decode, key};
use crate::{ProjectionError, Views};

pub(crate) const IMAGE_CONTENT: TableDefinition<&str, &[u8]> = TableDefinition::new("image_content");
pub(crate) const LAYER_USERS: TableDefinition<&str, u64> = TableDefinition::new("layer_users");

/// What enrichment recorded about one config or layer file list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRow {
    /// The content store digest (empty when rejected before anything was fetched).
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    /// Why it was refused or skipped; `None` when stored.
    pub rejected: Option<String>,
}

/// One image that uses a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerUser {
    pub did: String,
    pub repository: String,
    pub manifest: String,
    pub size: u64,
}

/// Layer sharing over the whole network (every manifest atcr knows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DedupTotals {
    /// Distinct layer digests.
    pub layers: u64,
    /// (layer, manifest) references.
    pub references: u64,
    /// Layers used by more than one manifest.
    pub shared_layers: u64,
    /// Layers used in more than one repository.
    pub cross_repository_layers: u64,
    /// Bytes of every reference, as if nothing were shared.
    pub referenced_bytes: u64,
    /// Bytes of each distinct layer once.
    pub stored_bytes: u64,
    /// The most used layers: (digest, size, manifests, repositories), most manifests first.
    pub top: Vec<(String, u64, u64, u64)>,
}

pub(crate) fn open_tables(txn: &redb::WriteTransaction) -> Result<(), ProjectionError> {
    txn.open_table(IMAGE_CONTENT)?;
    txn.open_table(LAYER_USERS)?;
    Ok(())
}

/// Applies a `ContentStored` / `ContentRejected` of the kinds this module reads.
pub(crate) fn apply_content(txn: &impl ViewTables, body: &EventBody) -> Result<(), ProjectionError> {
    let (kind, subject, row) = match body {
        EventBody::ContentStored { kind, digest, media_type, size, subject } => (
            kind,
            subject,
            ContentRow { digest: digest.clone(), media_type: media_type.clone(), size: *size, rejected: None },
        ),
        EventBody::ContentRejected { kind, digest, subject, reason } => (
            kind,
            subject,
            ContentRow { digest: digest.clone(), media_type: String::new(), size: 0, rejected: Some(reason.clone()) },
        ),
        _ => return Ok(()),
    };
    if kind != IMAGE_CONFIG_KIND && kind != LAYER_FILES_KIND {
        return Ok(());
    }
    txn.insert_row(IMAGE_CONTENT, key(&[kind, subject]).as_str(), &row)
}

/// A manifest row was written: its layers are used by it.
pub(crate) fn note_manifest(
    txn: &impl ViewTables,
    did: &str,
    digest: &str,
    row: &ManifestRow,
) -> Result<(), ProjectionError> {
    for (layer, _, size) in &row.layers {
        let size = size.and_then(|size| u64::try_from(size).ok()).unwrap_or(0);
        txn.insert(LAYER_USERS, key(&[layer, did, &row.repository, digest]).as_str(), size)?;
    }
    Ok(())
}

/// A manifest row is going away (deleted, or replaced by an update).
pub(crate) fn forget_manifest(
    txn: &impl ViewTables,
    did: &str,
    digest: &str,
    row: &ManifestRow,
) -> Result<(), ProjectionError> {
    for (layer, _, _) in &row.layers {
        txn.remove(LAYER_USERS, key(&[layer, did, &row.repository, digest]).as_str())?;
    }
    Ok(())
}

/// How many top layers [`Views::layer_dedup_totals`] lists.
const TOP_LAYERS: usize = 10;

impl Views {
    /// The `image.config` of a manifest or the `layer.files` of a layer, as last recorded.
    pub fn image_content(&self, kind: &str, subject: &str) -> Result<Option<ContentRow>, ProjectionError> {
        let read = self.read()?;
        let table = match read.open_table(IMAGE_CONTENT) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        table.get(key(&[kind, subject]).as_str())?.map(|bytes| decode("image_content", bytes.value())).transpose()
    }

    /// Every manifest that uses a layer, by owner and repository.
    pub fn layer_users(&self, layer: &str) -> Result<Vec<LayerUser>, ProjectionError> {
        let read = self.read()?;
        let table = match read.open_table(LAYER_USERS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(error.into()),
        };
        let prefix = format!("{layer}\0");
        let mut users = Vec::new();
        for entry in table.range(prefix.as_str()..)? {
            let (entry_key, size) = entry?;
            let Some(rest) = entry_key.value().strip_prefix(prefix.as_str()) else { break };
            let mut parts = rest.split('\0');
            let (Some(did), Some(repository), Some(manifest)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            users.push(LayerUser {
                did: did.to_string(),
                repository: repository.to_string(),
                manifest: manifest.to_string(),
                size: size.value(),
            });
        }
        Ok(users)
    }

    /// Layer sharing over every manifest: one pass over `layer_users` (grouped by layer, as
    /// its keys are sorted).
    pub fn layer_dedup_totals(&self) -> Result<DedupTotals, ProjectionError> {
        let read = self.read()?;
        let table = match read.open_table(LAYER_USERS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(DedupTotals::default()),
            Err(error) => return Err(error.into()),
        };
        let mut totals = DedupTotals::default();
        let mut top: Vec<(String, u64, u64, u64)> = Vec::new();
        // The layer being summed: digest, size, manifests, repositories seen.
        let mut current: Option<(String, u64, u64, std::collections::BTreeSet<String>)> = None;
        let mut finish = |done: (String, u64, u64, std::collections::BTreeSet<String>), totals: &mut DedupTotals| {
            let (digest, size, manifests, repositories) = done;
            totals.layers += 1;
            totals.stored_bytes += size;
            if manifests > 1 {
                totals.shared_layers += 1;
            }
            if repositories.len() > 1 {
                totals.cross_repository_layers += 1;
            }
            top.push((digest, size, manifests, repositories.len() as u64));
            if top.len() > TOP_LAYERS * 4 {
                top.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)));
                top.truncate(TOP_LAYERS);
            }
        };
        for entry in table.iter()? {
            let (entry_key, size) = entry?;
            let entry_key = entry_key.value();
            let mut parts = entry_key.split('\0');
            let (Some(layer), Some(did), Some(repository)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let size = size.value();
            totals.references += 1;
            totals.referenced_bytes += size;
            let same = current.as_ref().is_some_and(|(digest, ..)| digest == layer);
            if !same && let Some(done) = current.take() {
                finish(done, &mut totals);
            }
            let entry = current.get_or_insert_with(|| (layer.to_string(), 0, 0, Default::default()));
            entry.1 = entry.1.max(size);
            entry.2 += 1;
            entry.3.insert(format!("{did}/{repository}"));
        }
        if let Some(done) = current.take() {
            finish(done, &mut totals);
        }
        top.sort_by(|a, b| b.2.cmp(&a.2).then(b.1.cmp(&a.1)).then(a.0.cmp(&b.0)));
        top.truncate(TOP_LAYERS);
        totals.top = top.into_iter().filter(|(_, _, manifests, _)| *manifests > 1).collect();
        Ok(totals)
    }
}
