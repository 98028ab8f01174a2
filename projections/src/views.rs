//! The registry views and how each event changes them.
//!
//! Keys are `\0`-joined strings (DIDs, repository names, tags and digests never contain NUL;
//! records that try are refused before they get here). Values are postcard-encoded rows.
//!
//! | table | key | value |
//! |---|---|---|
//! | `identities` | did | [`IdentityRow`] |
//! | `handles` | handle | did |
//! | `repositories` | did `\0` repo | [`RepositoryRow`] |
//! | `manifests` | did `\0` digest | [`ManifestRow`] |
//! | `manifest_rkeys` | did `\0` rkey | digest |
//! | `repo_blobs` | did `\0` repo `\0` blob digest | manifest digests referencing it |
//! | `tags` | did `\0` repo `\0` tag | [`TagRow`] |
//! | `tag_rkeys` | did `\0` rkey | repo `\0` tag |
//! | `referrers` | did `\0` subject digest `\0` digest | [`ReferrerRow`] |
//! | `manifest_content` | digest | (media type, size) once its bytes are in the content store |

use std::collections::BTreeMap;

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use atcr_storage::records::{self, ManifestRecord, TagRecord};
use atcr_storage::{Event, EventBody};

use crate::ProjectionError;
use atcr_storage::did::parse_did_document;

pub(crate) const IDENTITIES: TableDefinition<&str, &[u8]> = TableDefinition::new("identities");
pub(crate) const HANDLES: TableDefinition<&str, &str> = TableDefinition::new("handles");
pub(crate) const REPOSITORIES: TableDefinition<&str, &[u8]> = TableDefinition::new("repositories");
pub(crate) const MANIFESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("manifests");
pub(crate) const MANIFEST_RKEYS: TableDefinition<&str, &str> = TableDefinition::new("manifest_rkeys");
pub(crate) const REPO_BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("repo_blobs");
pub(crate) const TAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("tags");
pub(crate) const TAG_RKEYS: TableDefinition<&str, &str> = TableDefinition::new("tag_rkeys");
pub(crate) const REFERRERS: TableDefinition<&str, &[u8]> = TableDefinition::new("referrers");
pub(crate) const MANIFEST_CONTENT: TableDefinition<&str, &[u8]> = TableDefinition::new("manifest_content");

pub(crate) fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_stdvec(value) {
        Ok(bytes) => bytes,
        Err(error) => panic!("postcard encoding of a view row failed: {error}"),
    }
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(table: &str, bytes: &[u8]) -> Result<T, ProjectionError> {
    postcard::from_bytes(bytes).map_err(|error| ProjectionError::Corrupt(format!("{table}: {error}")))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRow {
    pub handle: Option<String>,
    pub pds_endpoint: Option<String>,
    pub hold_endpoint: Option<String>,
    pub signing_key: Option<(String, String)>,
    /// From `#account`: false when deactivated, taken down, deleted.
    pub active: bool,
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepositoryRow {
    pub manifests: u64,
    /// Upstream time of the newest manifest or tag change.
    pub last_push: Option<String>,
    pub first_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRow {
    pub repository: String,
    pub rkey: String,
    pub media_type: String,
    pub hold_did: Option<String>,
    pub hold_endpoint: Option<String>,
    pub subject: Option<String>,
    /// Every blob the manifest references (config and layers), with sizes.
    pub blobs: Vec<(String, Option<i64>)>,
    /// Children of an index.
    pub children: Vec<ChildRow>,
    pub annotations: BTreeMap<String, String>,
    pub created_at: Option<String>,
    pub offset: u64,
}

/// One child of an index, with its platform as `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRow {
    pub digest: String,
    pub media_type: Option<String>,
    pub size: Option<i64>,
    pub platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRow {
    pub digest: String,
    pub rkey: String,
    pub updated_at: Option<String>,
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferrerRow {
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: Option<i64>,
    pub annotations: BTreeMap<String, String>,
}

pub(crate) fn open_all(txn: &WriteTransaction) -> Result<(), ProjectionError> {
    txn.open_table(IDENTITIES)?;
    txn.open_table(HANDLES)?;
    txn.open_table(REPOSITORIES)?;
    txn.open_table(MANIFESTS)?;
    txn.open_table(MANIFEST_RKEYS)?;
    txn.open_table(REPO_BLOBS)?;
    txn.open_table(TAGS)?;
    txn.open_table(TAG_RKEYS)?;
    txn.open_table(REFERRERS)?;
    txn.open_table(MANIFEST_CONTENT)?;
    Ok(())
}

/// Applies one event to every registry view. Idempotent: applying it twice leaves the same
/// state. Invalid records are skipped with a warning (they stay in the log).
pub(crate) fn apply(txn: &WriteTransaction, offset: u64, event: &Event) -> Result<(), ProjectionError> {
    match &event.body {
        EventBody::RecordPut { collection, rkey, record, .. } => match collection.as_str() {
            records::MANIFEST => match ManifestRecord::decode(record) {
                Ok(manifest) => put_manifest(txn, offset, event, rkey, manifest),
                Err(error) => skip(offset, &error.to_string()),
            },
            records::TAG => match TagRecord::decode(record) {
                Ok(tag) => put_tag(txn, offset, event, rkey, tag),
                Err(error) => skip(offset, &error.to_string()),
            },
            _ => Ok(()),
        },
        EventBody::RecordDeleted { collection, rkey, .. } => match collection.as_str() {
            records::MANIFEST => delete_manifest(txn, &event.did, rkey),
            records::TAG => delete_tag(txn, &event.did, rkey),
            _ => Ok(()),
        },
        EventBody::IdentityResolved { document_json } => match parse_did_document(document_json) {
            Ok(facts) if facts.did == event.did => {
                let mut identities = txn.open_table(IDENTITIES)?;
                let mut row = match identities.get(event.did.as_str())? {
                    Some(bytes) => decode::<IdentityRow>("identities", bytes.value())?,
                    None => IdentityRow { active: true, ..IdentityRow::default() },
                };
                let mut handles = txn.open_table(HANDLES)?;
                if let Some(old) = &row.handle
                    && facts.handle.as_ref() != Some(old)
                    && handles.get(old.as_str())?.is_some_and(|did| did.value() == event.did)
                {
                    handles.remove(old.as_str())?;
                }
                if let Some(handle) = &facts.handle {
                    handles.insert(handle.as_str(), event.did.as_str())?;
                }
                row.handle = facts.handle;
                row.pds_endpoint = facts.pds_endpoint;
                row.hold_endpoint = facts.hold_endpoint;
                row.signing_key = facts.signing_key;
                identities.insert(event.did.as_str(), encode(&row).as_slice())?;
                Ok(())
            }
            Ok(facts) => skip(offset, &format!("DID document of {} filed under {}", facts.did, event.did)),
            Err(error) => skip(offset, &error),
        },
        EventBody::Account { active, status } => {
            let mut identities = txn.open_table(IDENTITIES)?;
            let mut row = match identities.get(event.did.as_str())? {
                Some(bytes) => decode::<IdentityRow>("identities", bytes.value())?,
                None => IdentityRow::default(),
            };
            row.active = *active;
            row.status = status.clone();
            identities.insert(event.did.as_str(), encode(&row).as_slice())?;
            Ok(())
        }
        EventBody::ManifestStored { digest, media_type, size } => {
            let mut content = txn.open_table(MANIFEST_CONTENT)?;
            content.insert(digest.as_str(), encode(&(media_type, size)).as_slice())?;
            Ok(())
        }
        EventBody::Identity { .. } | EventBody::Resync { .. } => Ok(()),
    }
}

fn skip(offset: u64, reason: &str) -> Result<(), ProjectionError> {
    tracing::warn!(offset, %reason, "event skipped by the registry views");
    Ok(())
}

fn valid_name(text: &str) -> bool {
    !text.is_empty() && !text.contains('\0')
}

fn touch_repository(
    txn: &WriteTransaction,
    did: &str,
    repository: &str,
    offset: u64,
    time: Option<&str>,
    manifest_delta: i64,
) -> Result<(), ProjectionError> {
    let mut repositories = txn.open_table(REPOSITORIES)?;
    let repo_key = key(&[did, repository]);
    let mut row = match repositories.get(repo_key.as_str())? {
        Some(bytes) => decode::<RepositoryRow>("repositories", bytes.value())?,
        None => RepositoryRow { first_offset: offset, ..RepositoryRow::default() },
    };
    row.manifests = row.manifests.saturating_add_signed(manifest_delta);
    if let Some(time) = time
        && row.last_push.as_deref().is_none_or(|last| last < time)
    {
        row.last_push = Some(time.to_string());
    }
    repositories.insert(repo_key.as_str(), encode(&row).as_slice())?;
    Ok(())
}

fn put_manifest(
    txn: &WriteTransaction,
    offset: u64,
    event: &Event,
    rkey: &str,
    manifest: ManifestRecord,
) -> Result<(), ProjectionError> {
    let did = event.did.as_str();
    if !valid_name(&manifest.repository) {
        return skip(offset, "manifest repository name is invalid");
    }
    let manifest_key = key(&[did, &manifest.digest]);
    let mut manifests = txn.open_table(MANIFESTS)?;
    let existed = manifests.get(manifest_key.as_str())?.is_some();
    if existed {
        // An update of the same digest: drop the old indexes first so apply stays idempotent.
        drop(manifests);
        remove_manifest_indexes(txn, did, &manifest.digest)?;
        manifests = txn.open_table(MANIFESTS)?;
    }
    let mut blobs: Vec<(String, Option<i64>)> = Vec::new();
    if let Some(config) = &manifest.config {
        blobs.push((config.digest.clone(), config.size));
    }
    blobs.extend(manifest.layers.iter().map(|layer| (layer.digest.clone(), layer.size)));
    blobs.retain(|(digest, _)| records::is_sha256_digest(digest));
    let children = manifest
        .manifests
        .iter()
        .filter(|child| records::is_sha256_digest(&child.digest))
        .map(|child| {
            let platform = child.platform.as_ref().map(|platform| match &platform.variant {
                Some(variant) => format!("{}/{}/{variant}", platform.os, platform.architecture),
                None => format!("{}/{}", platform.os, platform.architecture),
            });
            ChildRow { digest: child.digest.clone(), media_type: child.media_type.clone(), size: child.size, platform }
        })
        .collect();
    let subject = manifest
        .subject
        .as_ref()
        .map(|subject| subject.digest.clone())
        .filter(|digest| records::is_sha256_digest(digest));
    let row = ManifestRow {
        repository: manifest.repository.clone(),
        rkey: rkey.to_string(),
        media_type: manifest.media_type.clone(),
        hold_did: manifest.hold_did.clone(),
        hold_endpoint: manifest.hold_endpoint.clone(),
        subject: subject.clone(),
        blobs,
        children,
        annotations: manifest.annotations.clone(),
        created_at: manifest.created_at.clone(),
        offset,
    };
    manifests.insert(manifest_key.as_str(), encode(&row).as_slice())?;
    drop(manifests);
    txn.open_table(MANIFEST_RKEYS)?.insert(key(&[did, rkey]).as_str(), manifest.digest.as_str())?;
    let mut repo_blobs = txn.open_table(REPO_BLOBS)?;
    for (blob, _) in &row.blobs {
        let blob_key = key(&[did, &row.repository, blob]);
        let mut referencing: Vec<String> = match repo_blobs.get(blob_key.as_str())? {
            Some(bytes) => decode("repo_blobs", bytes.value())?,
            None => Vec::new(),
        };
        if !referencing.contains(&manifest.digest) {
            referencing.push(manifest.digest.clone());
        }
        repo_blobs.insert(blob_key.as_str(), encode(&referencing).as_slice())?;
    }
    drop(repo_blobs);
    if let Some(subject) = &subject {
        let referrer = ReferrerRow {
            media_type: manifest.media_type.clone(),
            artifact_type: manifest.annotations.get("org.opencontainers.artifact.type").cloned(),
            size: manifest.manifest_blob.as_ref().and_then(|blob| blob.size).and_then(|size| i64::try_from(size).ok()),
            annotations: manifest.annotations.clone(),
        };
        txn.open_table(REFERRERS)?
            .insert(key(&[did, subject, &manifest.digest]).as_str(), encode(&referrer).as_slice())?;
    }
    touch_repository(
        txn,
        did,
        &manifest.repository,
        offset,
        event.upstream_time.as_deref(),
        if existed { 0 } else { 1 },
    )
}

/// Removes what a manifest row put into the blob and referrer indexes (not the row itself).
fn remove_manifest_indexes(
    txn: &WriteTransaction,
    did: &str,
    digest: &str,
) -> Result<Option<ManifestRow>, ProjectionError> {
    let manifest_key = key(&[did, digest]);
    let row = match txn.open_table(MANIFESTS)?.get(manifest_key.as_str())? {
        Some(bytes) => decode::<ManifestRow>("manifests", bytes.value())?,
        None => return Ok(None),
    };
    let mut repo_blobs = txn.open_table(REPO_BLOBS)?;
    for (blob, _) in &row.blobs {
        let blob_key = key(&[did, &row.repository, blob]);
        let referencing: Option<Vec<String>> = match repo_blobs.get(blob_key.as_str())? {
            Some(bytes) => Some(decode("repo_blobs", bytes.value())?),
            None => None,
        };
        if let Some(mut referencing) = referencing {
            referencing.retain(|other| other != digest);
            if referencing.is_empty() {
                repo_blobs.remove(blob_key.as_str())?;
            } else {
                repo_blobs.insert(blob_key.as_str(), encode(&referencing).as_slice())?;
            }
        }
    }
    if let Some(subject) = &row.subject {
        txn.open_table(REFERRERS)?.remove(key(&[did, subject, digest]).as_str())?;
    }
    Ok(Some(row))
}

fn delete_manifest(txn: &WriteTransaction, did: &str, rkey: &str) -> Result<(), ProjectionError> {
    let rkey_key = key(&[did, rkey]);
    let digest = match txn.open_table(MANIFEST_RKEYS)?.remove(rkey_key.as_str())? {
        Some(digest) => digest.value().to_string(),
        None => return Ok(()),
    };
    if let Some(row) = remove_manifest_indexes(txn, did, &digest)? {
        txn.open_table(MANIFESTS)?.remove(key(&[did, &digest]).as_str())?;
        touch_repository(txn, did, &row.repository, row.offset, None, -1)?;
    }
    Ok(())
}

fn put_tag(
    txn: &WriteTransaction,
    offset: u64,
    event: &Event,
    rkey: &str,
    tag: TagRecord,
) -> Result<(), ProjectionError> {
    let did = event.did.as_str();
    if !valid_name(&tag.repository) || !valid_name(&tag.tag) {
        return skip(offset, "tag or repository name is invalid");
    }
    // The same record key may have named another tag before (an update that renames).
    delete_tag(txn, did, rkey)?;
    let row = TagRow { digest: tag.digest, rkey: rkey.to_string(), updated_at: tag.updated_at, offset };
    txn.open_table(TAGS)?.insert(key(&[did, &tag.repository, &tag.tag]).as_str(), encode(&row).as_slice())?;
    txn.open_table(TAG_RKEYS)?.insert(key(&[did, rkey]).as_str(), key(&[&tag.repository, &tag.tag]).as_str())?;
    touch_repository(txn, did, &tag.repository, offset, event.upstream_time.as_deref(), 0)
}

fn delete_tag(txn: &WriteTransaction, did: &str, rkey: &str) -> Result<(), ProjectionError> {
    let named = match txn.open_table(TAG_RKEYS)?.remove(key(&[did, rkey]).as_str())? {
        Some(named) => named.value().to_string(),
        None => return Ok(()),
    };
    let Some((repository, tag)) = named.split_once('\0') else { return Ok(()) };
    let tag_key = key(&[did, repository, tag]);
    let mut tags = txn.open_table(TAGS)?;
    // Only remove the tag if this record still owns it (two records may name the same tag).
    let owned = match tags.get(tag_key.as_str())? {
        Some(bytes) => decode::<TagRow>("tags", bytes.value())?.rkey == rkey,
        None => false,
    };
    if owned {
        tags.remove(tag_key.as_str())?;
    }
    Ok(())
}
