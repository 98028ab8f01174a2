//! The registry views and how each event changes them.
//!
//! Keys are `\0`-joined strings (DIDs, repository names, tags and digests never contain NUL;
//! records that try are refused before they get here). Values are postcard-encoded rows.
//!
//! | table | key | value |
//! |---|---|---|
//! | `identities` | did | [`IdentityRow`] |
//! | `handles` | handle | did (only handles no `HandleChecked` refuted) |
//! | `handle_checks` | did | (handle, verified) of its latest `HandleChecked` |
//! | `repositories` | did `\0` repo | [`RepositoryRow`] |
//! | `manifests` | did `\0` digest | [`ManifestRow`] |
//! | `manifest_rkeys` | did `\0` rkey | digest |
//! | `repo_blobs` | did `\0` repo `\0` blob digest | manifest digests referencing it |
//! | `tags` | did `\0` repo `\0` tag | [`TagRow`] |
//! | `tag_rkeys` | did `\0` rkey | repo `\0` tag |
//! | `referrers` | did `\0` subject digest `\0` digest | [`ReferrerRow`] |
//! | `manifest_content` | digest | (media type, size) once its bytes are in the content store |
//! | `repo_manifests` | did `\0` repo `\0` digest | () |
//! | `stars` | subject did `\0` repo `\0` starrer did `\0` rkey | created at |
//! | `star_rkeys` | starrer did `\0` rkey | subject did `\0` repo |
//! | `star_counts` | did `\0` repo | stars |
//! | `repo_pages` | did `\0` repo | [`PageRow`] |
//! | `page_rkeys` | did `\0` rkey | repo |
//! | `profiles` | did | [`ProfileRow`] |
//! | `first_seen` | did | upstream time of the DID's first event |
//! | `tag_history` | did `\0` repo `\0` tag `\0` offset (16 hex) | [`TagMoveRow`] |
//! | `record_history` | did `\0` collection `\0` rkey `\0` offset (16 hex) | () |
//! | `activity` | did `\0` offset (16 hex) | empty for a put; for a delete, what it was about |
//! | `repos_by_push` | last push `\0` did `\0` repo | () |
//! | `repos_by_stars` | (u64::MAX - stars) (16 hex) `\0` did `\0` repo | () |
//! | `repos_by_first` | first offset (16 hex) `\0` did `\0` repo | () |
//!
//! History tables are keyed by log offset, so applying an event twice writes the same row and a
//! replay rebuilds them byte for byte. `record_history` and `activity` are indexes into the log:
//! a version's action, CID, rev and times, and what a put was about, are in the event at the
//! offset its key ends with (read back by [`activity_entry`] and the audit queries), so the
//! views do not keep a second copy of them (they were a quarter of the views' bytes). Only what
//! the event cannot say is stored: what a delete was about ([`DeletedSubject`]: the event names
//! only the record key) and the digest a tag moved from (`tag_history`).

use std::collections::BTreeMap;

use redb::{TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use atcr_storage::records::{self, ManifestRecord, ProfileRecord, RepoPageRecord, StarRecord, TagRecord};
use atcr_storage::{Event, EventBody, PutAction};

use crate::ProjectionError;
use crate::fanout::FanOut;
use crate::tables::ViewTables;
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
pub(crate) const REPO_MANIFESTS: TableDefinition<&str, ()> = TableDefinition::new("repo_manifests");
pub(crate) const STARS: TableDefinition<&str, &str> = TableDefinition::new("stars");
pub(crate) const STAR_RKEYS: TableDefinition<&str, &str> = TableDefinition::new("star_rkeys");
pub(crate) const STAR_COUNTS: TableDefinition<&str, u64> = TableDefinition::new("star_counts");
pub(crate) const REPO_PAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("repo_pages");
pub(crate) const PAGE_RKEYS: TableDefinition<&str, &str> = TableDefinition::new("page_rkeys");
pub(crate) const PROFILES: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
pub(crate) const FIRST_SEEN: TableDefinition<&str, &str> = TableDefinition::new("first_seen");
pub(crate) const TAG_HISTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("tag_history");
pub(crate) const RECORD_HISTORY: TableDefinition<&str, ()> = TableDefinition::new("record_history");
pub(crate) const ACTIVITY: TableDefinition<&str, &[u8]> = TableDefinition::new("activity");
pub(crate) const REPOS_BY_PUSH: TableDefinition<&str, ()> = TableDefinition::new("repos_by_push");
pub(crate) const REPOS_BY_STARS: TableDefinition<&str, ()> = TableDefinition::new("repos_by_stars");
pub(crate) const REPOS_BY_FIRST: TableDefinition<&str, ()> = TableDefinition::new("repos_by_first");
/// DID → why it could not be resolved (`IdentityUnresolvable`), until it resolves.
pub(crate) const IDENTITY_FAILURES: TableDefinition<&str, &str> = TableDefinition::new("identity_failures");
/// DID → its latest `HandleChecked`: (handle, verified). A handle refuted here never enters
/// `handles`; a DID with no check keeps the document's word (logs written before checks).
pub(crate) const HANDLE_CHECKS: TableDefinition<&str, &[u8]> = TableDefinition::new("handle_checks");

/// Repositories events changed: `(did, Some(repo))`, or `(did, None)` for every repository of
/// the DID (identity changes, deletes whose repository is no longer known). The search index
/// recomputes exactly these. A rebuild does not note them ([`Touched::untracked`]): it indexes
/// every repository at the end, and noting them cost two string copies per event.
#[derive(Debug)]
pub struct Touched {
    repositories: Option<std::collections::BTreeSet<(String, Option<String>)>>,
}

impl Touched {
    /// Notes every repository inserted (the live runner: the search index recomputes them).
    pub fn new() -> Touched {
        Touched { repositories: Some(std::collections::BTreeSet::new()) }
    }

    /// Notes nothing.
    pub fn untracked() -> Touched {
        Touched { repositories: None }
    }

    pub fn insert(&mut self, did: &str, repository: Option<&str>) {
        if let Some(repositories) = &mut self.repositories {
            repositories.insert((did.to_string(), repository.map(str::to_string)));
        }
    }

    /// What was noted, in order.
    pub fn into_repositories(self) -> Vec<(String, Option<String>)> {
        self.repositories.map(|repositories| repositories.into_iter().collect()).unwrap_or_default()
    }
}

impl Default for Touched {
    fn default() -> Touched {
        Touched::new()
    }
}

/// A log offset as a fixed-width key part, so keys sort in log order.
pub(crate) fn offset_key(offset: u64) -> String {
    format!("{offset:016x}")
}

pub(crate) fn key(parts: &[&str]) -> String {
    parts.join("\0")
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    match postcard::to_stdvec(value) {
        Ok(bytes) => bytes,
        Err(error) => panic!("postcard encoding of a view row failed: {error}"),
    }
}

thread_local! {
    /// The buffer [`with_encoded`] encodes into, kept between rows.
    static ENCODE_BUFFER: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Hands `value` encoded as [`encode`] does to `use_bytes`, from a buffer this thread keeps: a
/// row written into the views is copied where it is kept, so the encoding is only a step, and
/// growing a fresh vector for each (seven reallocations for a manifest row) was 6-10 % of
/// applying the log.
pub(crate) fn with_encoded<T: Serialize, R>(value: &T, use_bytes: impl FnOnce(&[u8]) -> R) -> R {
    let mut buffer = ENCODE_BUFFER.take();
    buffer.clear();
    let buffer = match postcard::to_extend(value, buffer) {
        Ok(bytes) => bytes,
        Err(error) => panic!("postcard encoding of a view row failed: {error}"),
    };
    let result = use_bytes(&buffer);
    // A scan report can encode to megabytes: a thread does not hold on to that for good.
    if buffer.capacity() <= KEPT_ENCODE_BUFFER_BYTES {
        ENCODE_BUFFER.set(buffer);
    }
    result
}

/// The largest buffer [`with_encoded`] keeps for the next row (rows are a few hundred bytes).
const KEPT_ENCODE_BUFFER_BYTES: usize = 64 * 1024;

pub(crate) fn decode<'a, T: Deserialize<'a>>(table: &str, bytes: &'a [u8]) -> Result<T, ProjectionError> {
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
    #[serde(with = "crate::compact::text")]
    pub rkey: String,
    #[serde(with = "crate::compact::text")]
    pub media_type: String,
    pub hold_did: Option<String>,
    pub hold_endpoint: Option<String>,
    #[serde(with = "crate::compact::optional")]
    pub subject: Option<String>,
    /// The config blob's digest, when the manifest has one.
    #[serde(with = "crate::compact::optional")]
    pub config: Option<String>,
    /// The config blob's size, as the manifest gives it.
    pub config_size: Option<i64>,
    /// Layers in order: (digest, media type, size).
    #[serde(with = "crate::compact::layers")]
    pub layers: Vec<(String, Option<String>, Option<i64>)>,
    /// Children of an index.
    pub children: Vec<ChildRow>,
    #[serde(with = "crate::compact::annotations")]
    pub annotations: BTreeMap<String, String>,
    pub created_at: Option<String>,
    pub offset: u64,
}

impl ManifestRow {
    /// Every blob the manifest references with its size: the config, then the layers in order.
    pub fn blobs(&self) -> impl Iterator<Item = (&str, Option<i64>)> {
        let config = self.config.as_deref().map(|digest| (digest, self.config_size));
        config.into_iter().chain(self.layers.iter().map(|(digest, _, size)| (digest.as_str(), *size)))
    }
}

/// One child of an index, with its platform as `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildRow {
    #[serde(with = "crate::compact::text")]
    pub digest: String,
    #[serde(with = "crate::compact::optional")]
    pub media_type: Option<String>,
    pub size: Option<i64>,
    pub platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRow {
    #[serde(with = "crate::compact::text")]
    pub digest: String,
    pub rkey: String,
    /// The record's own `updatedAt` (or legacy `createdAt`): what the publisher claims.
    pub updated_at: Option<String>,
    pub offset: u64,
    /// Upstream time of the commit that last set the tag.
    pub pushed_at: Option<String>,
}

/// A repository page (`io.atcr.repo.page`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRow {
    pub rkey: String,
    /// Markdown README.
    pub description: Option<String>,
    pub avatar_cid: Option<String>,
    pub updated_at: Option<String>,
}

/// A user's registry preferences (`io.atcr.sailor.profile`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRow {
    pub oci_client: Option<String>,
    pub default_hold: Option<String>,
    pub registry_domain: Option<String>,
}

/// One change of a tag: created (`from` empty), moved, or deleted (`to` empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagMoveRow {
    pub offset: u64,
    #[serde(with = "crate::compact::optional")]
    pub from: Option<String>,
    #[serde(with = "crate::compact::optional")]
    pub to: Option<String>,
    pub time: Option<String>,
    pub rev: Option<String>,
    pub upstream_seq: Option<i64>,
}

/// One entry of a user's activity feed: built from the log event at `offset` (and, for a delete,
/// the [`DeletedSubject`] the `activity` row keeps) by [`activity_entry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActivityRow {
    pub offset: u64,
    /// `create`, `update` or `delete`.
    pub action: String,
    pub collection: String,
    pub rkey: String,
    /// What the record was about, when it names it (repository, tag, digest, star subject).
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub digest: Option<String>,
    pub subject: Option<String>,
    pub time: Option<String>,
}

/// A `repo_blobs` row: the digests of the repository's manifests that reference the blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BlobReferrers(#[serde(with = "crate::compact::list")] pub(crate) Vec<String>);

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
    txn.open_table(REPO_MANIFESTS)?;
    txn.open_table(STARS)?;
    txn.open_table(STAR_RKEYS)?;
    txn.open_table(STAR_COUNTS)?;
    txn.open_table(REPO_PAGES)?;
    txn.open_table(PAGE_RKEYS)?;
    txn.open_table(PROFILES)?;
    txn.open_table(FIRST_SEEN)?;
    txn.open_table(TAG_HISTORY)?;
    txn.open_table(RECORD_HISTORY)?;
    txn.open_table(ACTIVITY)?;
    txn.open_table(REPOS_BY_PUSH)?;
    txn.open_table(REPOS_BY_STARS)?;
    txn.open_table(REPOS_BY_FIRST)?;
    txn.open_table(IDENTITY_FAILURES)?;
    txn.open_table(HANDLE_CHECKS)?;
    crate::layers::open_tables(txn)?;
    crate::holds::open_all(txn)?;
    crate::scans::open_all(txn)?;
    Ok(())
}

/// What follows from one event alone, prepared ahead of [`apply_tracking`]: its record decoded,
/// and the keys of the rows that need no other state (its `record_history` version, the
/// `activity` entry of a put). A rebuild prepares them on the thread that reads the log while the
/// previous events are applied (they were ~25 % of applying); following the log prepares them
/// inline.
#[derive(Debug)]
pub(crate) struct PreparedEvent {
    record: DecodedRecord,
    /// The `record_history` key of a put or a delete.
    history: Option<String>,
    /// The `activity` key of a put whose record decoded (its row is empty: the event says what
    /// it was about).
    activity: Option<String>,
}

#[derive(Debug)]
enum DecodedRecord {
    /// Boxed: a manifest is four times the size of the other records.
    Manifest(Box<ManifestRecord>),
    Tag(TagRecord),
    Star(StarRecord),
    RepoPage(RepoPageRecord),
    Profile(ProfileRecord),
    /// A record of one of the collections above that does not decode: skipped.
    Invalid(records::RecordError),
    /// Not a put, or a collection these views do not decode.
    Other,
}

impl DecodedRecord {
    fn of(collection: &str, record: &[u8]) -> DecodedRecord {
        let decoded = match collection {
            records::MANIFEST => {
                ManifestRecord::decode(record).map(|manifest| DecodedRecord::Manifest(manifest.into()))
            }
            records::TAG => TagRecord::decode(record).map(DecodedRecord::Tag),
            records::STAR => StarRecord::decode(record).map(DecodedRecord::Star),
            records::REPO_PAGE => RepoPageRecord::decode(record).map(DecodedRecord::RepoPage),
            records::PROFILE => ProfileRecord::decode(record).map(DecodedRecord::Profile),
            _ => Ok(DecodedRecord::Other),
        };
        decoded.unwrap_or_else(DecodedRecord::Invalid)
    }

    /// Fills in what a put of this record was about.
    fn describe(&self, row: &mut ActivityRow) {
        match self {
            DecodedRecord::Manifest(manifest) => {
                row.repository = Some(manifest.repository.clone());
                row.digest = Some(manifest.digest.clone());
            }
            DecodedRecord::Tag(tag) => {
                row.repository = Some(tag.repository.clone());
                row.tag = Some(tag.tag.clone());
                row.digest = Some(tag.digest.clone());
            }
            DecodedRecord::Star(star) => {
                row.subject = Some(format!("{}/{}", star.subject_did, star.subject_repository));
            }
            DecodedRecord::RepoPage(page) => row.repository = Some(page.repository.clone()),
            DecodedRecord::Profile(_) | DecodedRecord::Invalid(_) | DecodedRecord::Other => {}
        }
    }
}

impl PreparedEvent {
    pub(crate) fn of(offset: u64, event: &Event) -> PreparedEvent {
        let (record, history, activity) = match &event.body {
            EventBody::RecordPut { collection, rkey, record, .. } => {
                let decoded = DecodedRecord::of(collection, record);
                // A record that does not decode is skipped: no activity entry.
                let activity = (!matches!(decoded, DecodedRecord::Invalid(_))).then(|| activity_key(event, offset));
                (decoded, Some(history_key(offset, event, collection, rkey)), activity)
            }
            EventBody::RecordDeleted { collection, rkey, .. } => {
                (DecodedRecord::Other, Some(history_key(offset, event, collection, rkey)), None)
            }
            _ => (DecodedRecord::Other, None, None),
        };
        PreparedEvent { record, history, activity }
    }
}

/// What a delete was about, as the views knew it just before (a delete names only the record
/// key): the `activity` row of a delete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct DeletedSubject {
    repository: Option<String>,
    tag: Option<String>,
    digest: Option<String>,
    subject: Option<String>,
}

/// The activity entry of the record event at `offset`, completed by the `activity` row `stored`
/// under it: a put says itself what it was about (its record, decoded again), a delete's subject
/// is the [`DeletedSubject`] stored. `None` for an event that is not a record change, or a put
/// whose record does not decode (no entry is kept for it).
pub(crate) fn activity_entry(
    offset: u64,
    event: &Event,
    stored: &[u8],
) -> Result<Option<ActivityRow>, ProjectionError> {
    match &event.body {
        EventBody::RecordPut { collection, rkey, record, action, .. } => {
            let decoded = DecodedRecord::of(collection, record);
            if matches!(decoded, DecodedRecord::Invalid(_)) {
                return Ok(None);
            }
            let mut row = activity_base(event, offset, collection, rkey, action_name(*action));
            decoded.describe(&mut row);
            Ok(Some(row))
        }
        EventBody::RecordDeleted { collection, rkey, .. } => {
            let subject = decode::<DeletedSubject>("activity", stored)?;
            let mut row = activity_base(event, offset, collection, rkey, "delete");
            row.repository = subject.repository;
            row.tag = subject.tag;
            row.digest = subject.digest;
            row.subject = subject.subject;
            Ok(Some(row))
        }
        _ => Ok(None),
    }
}

/// Applies one event to every registry view, noting which repositories it changed. Idempotent:
/// applying it twice leaves the same state. Invalid records are skipped with a warning (they
/// stay in the log).
pub(crate) fn apply_tracking(
    txn: &impl ViewTables,
    offset: u64,
    event: &Event,
    prepared: PreparedEvent,
    touched: &mut Touched,
) -> Result<(), ProjectionError> {
    // Before the views change: a manifest delete needs the row they are about to remove.
    let manifest = match &prepared.record {
        DecodedRecord::Manifest(manifest) => Some(&**manifest),
        _ => None,
    };
    crate::holds::apply(txn, offset, event, manifest)?;
    crate::scans::apply(txn, offset, event, touched)?;
    note_first_seen(txn, event)?;
    let PreparedEvent { record, history, activity } = prepared;
    if let Some(history_key) = history {
        txn.insert(RECORD_HISTORY, history_key.as_str(), ())?;
    }
    if let Some(activity_key) = activity {
        txn.insert(ACTIVITY, activity_key.as_str(), [].as_slice())?;
    }
    match &event.body {
        EventBody::RecordPut { rkey, .. } => match record {
            DecodedRecord::Manifest(manifest) => {
                touched.insert(&event.did, Some(&manifest.repository));
                put_manifest(txn, offset, event, rkey, *manifest)
            }
            DecodedRecord::Tag(tag) => {
                touched.insert(&event.did, Some(&tag.repository));
                put_tag(txn, offset, event, rkey, tag, touched)
            }
            DecodedRecord::Star(star) => put_star(txn, event, rkey, star, touched),
            DecodedRecord::RepoPage(page) => {
                touched.insert(&event.did, Some(&page.repository));
                put_page(txn, event, rkey, page, touched)
            }
            DecodedRecord::Profile(profile) => {
                let row = ProfileRow {
                    oci_client: profile.oci_client,
                    default_hold: profile.default_hold,
                    registry_domain: profile.registry_domain,
                };
                txn.insert_row(PROFILES, event.did.as_str(), &row)?;
                touched.insert(&event.did, None);
                Ok(())
            }
            DecodedRecord::Invalid(error) => skip(offset, &error.to_string()),
            DecodedRecord::Other => Ok(()),
        },
        EventBody::RecordDeleted { collection, rkey, .. } => {
            note_deletion(txn, offset, event, collection, rkey)?;
            touched.insert(&event.did, None);
            match collection.as_str() {
                records::MANIFEST => delete_manifest(txn, &event.did, rkey),
                records::TAG => delete_tag(txn, offset, event, rkey, true),
                records::STAR => delete_star(txn, &event.did, rkey, touched),
                records::REPO_PAGE => delete_page(txn, &event.did, rkey),
                records::PROFILE => {
                    txn.remove(PROFILES, event.did.as_str())?;
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        EventBody::IdentityResolved { document_json } => match parse_did_document(document_json) {
            Ok(facts) if facts.did == event.did => {
                let mut row = match txn.get(IDENTITIES, event.did.as_str())? {
                    Some(bytes) => decode::<IdentityRow>("identities", &bytes)?,
                    None => IdentityRow { active: true, ..IdentityRow::default() },
                };
                if let Some(old) = &row.handle
                    && facts.handle.as_ref() != Some(old)
                    && txn.get(HANDLES, old.as_str())?.is_some_and(|did| did == event.did)
                {
                    txn.remove(HANDLES, old.as_str())?;
                }
                if let Some(handle) = &facts.handle {
                    if handle_refuted(txn, &event.did, handle)? {
                        if txn.get(HANDLES, handle.as_str())?.is_some_and(|did| did == event.did) {
                            txn.remove(HANDLES, handle.as_str())?;
                        }
                    } else {
                        txn.insert(HANDLES, handle.as_str(), event.did.as_str())?;
                    }
                }
                touched.insert(&event.did, None);
                row.handle = facts.handle;
                row.pds_endpoint = facts.pds_endpoint;
                row.hold_endpoint = facts.hold_endpoint;
                row.signing_key = facts.signing_key;
                txn.insert_row(IDENTITIES, event.did.as_str(), &row)?;
                txn.remove(IDENTITY_FAILURES, event.did.as_str())?;
                Ok(())
            }
            Ok(facts) => skip(offset, &format!("DID document of {} filed under {}", facts.did, event.did)),
            Err(error) => skip(offset, &error),
        },
        EventBody::Account { active, status } => {
            let mut row = match txn.get(IDENTITIES, event.did.as_str())? {
                Some(bytes) => decode::<IdentityRow>("identities", &bytes)?,
                None => IdentityRow::default(),
            };
            row.active = *active;
            row.status = status.clone();
            touched.insert(&event.did, None);
            txn.insert_row(IDENTITIES, event.did.as_str(), &row)?;
            Ok(())
        }
        EventBody::ManifestStored { digest, media_type, size } => {
            txn.insert_row(MANIFEST_CONTENT, digest.as_str(), &(media_type, size))?;
            Ok(())
        }
        EventBody::IdentityUnresolvable { reason } => {
            txn.insert(IDENTITY_FAILURES, event.did.as_str(), reason.as_str())?;
            touched.insert(&event.did, None);
            Ok(())
        }
        EventBody::HandleChecked { handle, verified, .. } => {
            let handle = handle.to_ascii_lowercase();
            txn.insert_row(HANDLE_CHECKS, event.did.as_str(), &(&handle, *verified))?;
            // The document this check belongs to may already be applied (a re-check without a
            // new document): bring `handles` in line with the verdict.
            let claimed = match txn.get(IDENTITIES, event.did.as_str())? {
                Some(bytes) => decode::<IdentityRow>("identities", &bytes)?.handle,
                None => None,
            };
            if claimed.as_deref() == Some(handle.as_str()) {
                if *verified {
                    txn.insert(HANDLES, handle.as_str(), event.did.as_str())?;
                } else if txn.get(HANDLES, handle.as_str())?.is_some_and(|did| did == event.did) {
                    txn.remove(HANDLES, handle.as_str())?;
                }
                touched.insert(&event.did, None);
            }
            Ok(())
        }
        EventBody::Identity { .. } | EventBody::Resync { .. } => Ok(()),
        // Scan reports, SBOMs, image configs: read by the modules that index them.
        EventBody::ContentStored { .. } | EventBody::ContentRejected { .. } => {
            // Image configs and layer file lists (kinds `image.config`, `layer.files`).
            crate::layers::apply_content(txn, &event.body)?;
            Ok(())
        }
    }
}

/// Whether the latest handle check of `did` refuted `handle`.
fn handle_refuted(txn: &impl ViewTables, did: &str, handle: &str) -> Result<bool, ProjectionError> {
    let Some(bytes) = txn.get(HANDLE_CHECKS, did)? else { return Ok(false) };
    let (checked, verified) = decode::<(String, bool)>("handle_checks", &bytes)?;
    Ok(checked == handle && !verified)
}

fn action_name(action: PutAction) -> &'static str {
    match action {
        PutAction::Create => "create",
        PutAction::Update => "update",
    }
}

/// Remembers when a DID was first seen (its "joined" date): the upstream time of its first event.
fn note_first_seen(txn: &impl ViewTables, event: &Event) -> Result<(), ProjectionError> {
    let Some(time) = event.upstream_time.as_deref() else { return Ok(()) };
    if !txn.contains(FIRST_SEEN, event.did.as_str())? {
        txn.insert(FIRST_SEEN, event.did.as_str(), time)?;
    }
    Ok(())
}

/// The `record_history` key of a put or a delete: the version itself is the event at `offset`.
fn history_key(offset: u64, event: &Event, collection: &str, rkey: &str) -> String {
    key(&[&event.did, collection, rkey, &offset_key(offset)])
}

/// The `activity` key of the event at `offset`.
fn activity_key(event: &Event, offset: u64) -> String {
    key(&[&event.did, &offset_key(offset)])
}

/// An activity entry with what every record event says: what it did to which record, when.
fn activity_base(event: &Event, offset: u64, collection: &str, rkey: &str, action: &str) -> ActivityRow {
    ActivityRow {
        offset,
        action: action.to_string(),
        collection: collection.to_string(),
        rkey: rkey.to_string(),
        repository: None,
        tag: None,
        digest: None,
        subject: None,
        time: event.upstream_time.clone(),
    }
}

/// A delete names only the record key: say what it was about from the views before they change.
fn note_deletion(
    txn: &impl ViewTables,
    offset: u64,
    event: &Event,
    collection: &str,
    rkey: &str,
) -> Result<(), ProjectionError> {
    let did = event.did.as_str();
    let mut row = DeletedSubject::default();
    match collection {
        records::MANIFEST => {
            if let Some(digest) = txn.get(MANIFEST_RKEYS, key(&[did, rkey]).as_str())? {
                if let Some(bytes) = txn.get(MANIFESTS, key(&[did, &digest]).as_str())? {
                    row.repository = Some(decode::<ManifestRow>("manifests", &bytes)?.repository);
                }
                row.digest = Some(digest);
            }
        }
        records::TAG => {
            if let Some(named) = txn.get(TAG_RKEYS, key(&[did, rkey]).as_str())?
                && let Some((repository, tag)) = named.split_once('\0')
            {
                row.repository = Some(repository.to_string());
                row.tag = Some(tag.to_string());
            }
        }
        records::STAR => {
            if let Some(subject) = txn.get(STAR_RKEYS, key(&[did, rkey]).as_str())? {
                row.subject = Some(subject.replacen('\0', "/", 1));
            }
        }
        records::REPO_PAGE => {
            if let Some(repository) = txn.get(PAGE_RKEYS, key(&[did, rkey]).as_str())? {
                row.repository = Some(repository);
            }
        }
        _ => {}
    }
    txn.insert_row(ACTIVITY, activity_key(event, offset).as_str(), &row)?;
    Ok(())
}

fn put_star(
    txn: &impl ViewTables,
    event: &Event,
    rkey: &str,
    star: StarRecord,
    touched: &mut Touched,
) -> Result<(), ProjectionError> {
    if !valid_name(&star.subject_repository) || star.subject_did.contains('\0') {
        return Ok(());
    }
    // The same record key may have starred something else before.
    delete_star(txn, &event.did, rkey, touched)?;
    // A subject URI names the repository page by its record key, which differs from the
    // repository name when the name holds a `/`: the page record says which repository it is.
    let mut star = star;
    if let Some(repository) = txn.get(PAGE_RKEYS, key(&[&star.subject_did, &star.subject_repository]).as_str())? {
        star.subject_repository = repository;
    }
    let subject = key(&[&star.subject_did, &star.subject_repository]);
    let star_key = key(&[&subject, &event.did, rkey]);
    txn.insert(STARS, star_key.as_str(), star.created_at.as_deref().unwrap_or(""))?;
    txn.insert(STAR_RKEYS, key(&[&event.did, rkey]).as_str(), subject.as_str())?;
    change_star_count(txn, &star.subject_did, &star.subject_repository, 1)?;
    touched.insert(&star.subject_did, Some(&star.subject_repository));
    Ok(())
}

fn delete_star(txn: &impl ViewTables, did: &str, rkey: &str, touched: &mut Touched) -> Result<(), ProjectionError> {
    let subject = match txn.remove(STAR_RKEYS, key(&[did, rkey]).as_str())? {
        Some(subject) => subject,
        None => return Ok(()),
    };
    txn.remove(STARS, key(&[&subject, did, rkey]).as_str())?;
    if let Some((subject_did, repository)) = subject.split_once('\0') {
        change_star_count(txn, subject_did, repository, -1)?;
        touched.insert(subject_did, Some(repository));
    }
    Ok(())
}

fn stars_rank_key(stars: u64, repo_key: &str) -> String {
    format!("{:016x}\0{repo_key}", u64::MAX - stars)
}

fn change_star_count(txn: &impl ViewTables, did: &str, repository: &str, delta: i64) -> Result<(), ProjectionError> {
    let repo_key = key(&[did, repository]);
    let before = txn.get(STAR_COUNTS, repo_key.as_str())?.unwrap_or(0);
    let after = before.saturating_add_signed(delta);
    let ranks = !txn.derives_rankings();
    if ranks {
        txn.remove(REPOS_BY_STARS, stars_rank_key(before, &repo_key).as_str())?;
    }
    if after == 0 {
        txn.remove(STAR_COUNTS, repo_key.as_str())?;
    } else {
        txn.insert(STAR_COUNTS, repo_key.as_str(), after)?;
        if ranks {
            txn.insert(REPOS_BY_STARS, stars_rank_key(after, &repo_key).as_str(), ())?;
        }
    }
    Ok(())
}

/// Writes the ranking tables as the repository rows and star counts in `txn` imply them: one
/// `repos_by_first` entry per repository (its first offset), one `repos_by_push` entry per
/// repository pushed to (its last push), one `repos_by_stars` entry per starred repository.
/// What [`touch_repository`] and [`change_star_count`] keep up to date change by change, for an
/// overlay that [derives them](ViewTables::derives_rankings) instead: a rebuild touched every
/// repository ~7 times on average (a remove and an insert of `repos_by_push` each), for one
/// final entry. `txn` must hold every repository and star count (an overlay over views that had
/// none).
pub(crate) fn derive_rankings(txn: &impl ViewTables) -> Result<(), ProjectionError> {
    for (repo_key, bytes) in txn.prefix(REPOSITORIES, "")? {
        let row = decode::<RepositoryRow>("repositories", &bytes)?;
        txn.insert(REPOS_BY_FIRST, format!("{}\0{repo_key}", offset_key(row.first_offset)).as_str(), ())?;
        if let Some(last) = &row.last_push {
            txn.insert(REPOS_BY_PUSH, format!("{last}\0{repo_key}").as_str(), ())?;
        }
    }
    for (repo_key, stars) in txn.prefix(STAR_COUNTS, "")? {
        txn.insert(REPOS_BY_STARS, stars_rank_key(stars, &repo_key).as_str(), ())?;
    }
    Ok(())
}

fn put_page(
    txn: &impl ViewTables,
    event: &Event,
    rkey: &str,
    page: RepoPageRecord,
    touched: &mut Touched,
) -> Result<(), ProjectionError> {
    if !valid_name(&page.repository) {
        return Ok(());
    }
    let did = event.did.as_str();
    // A record key that named another repository's page before stops doing so.
    if let Some(previous) = txn.get(PAGE_RKEYS, key(&[did, rkey]).as_str())?
        && previous != page.repository
    {
        delete_page(txn, did, rkey)?;
        touched.insert(did, Some(&previous));
    }
    let row = PageRow {
        rkey: rkey.to_string(),
        description: page.description,
        avatar_cid: page.avatar.map(|avatar| avatar.cid),
        updated_at: page.updated_at,
    };
    txn.insert_row(REPO_PAGES, key(&[did, &page.repository]).as_str(), &row)?;
    txn.insert(PAGE_RKEYS, key(&[did, rkey]).as_str(), page.repository.as_str())?;
    Ok(())
}

fn delete_page(txn: &impl ViewTables, did: &str, rkey: &str) -> Result<(), ProjectionError> {
    let repository = match txn.remove(PAGE_RKEYS, key(&[did, rkey]).as_str())? {
        Some(repository) => repository,
        None => return Ok(()),
    };
    let page_key = key(&[did, &repository]);
    let owned = match txn.get(REPO_PAGES, page_key.as_str())? {
        Some(bytes) => decode::<PageRow>("repo_pages", &bytes)?.rkey == rkey,
        None => false,
    };
    if owned {
        txn.remove(REPO_PAGES, page_key.as_str())?;
    }
    Ok(())
}

fn skip(offset: u64, reason: &str) -> Result<(), ProjectionError> {
    tracing::warn!(offset, %reason, "event skipped by the registry views");
    Ok(())
}

fn valid_name(text: &str) -> bool {
    !text.is_empty() && !text.contains('\0')
}

fn touch_repository(
    txn: &impl ViewTables,
    did: &str,
    repository: &str,
    offset: u64,
    time: Option<&str>,
    manifest_delta: i64,
) -> Result<(), ProjectionError> {
    let repo_key = key(&[did, repository]);
    let ranks = !txn.derives_rankings();
    let mut row = match txn.get(REPOSITORIES, repo_key.as_str())? {
        Some(bytes) => decode::<RepositoryRow>("repositories", &bytes)?,
        None => {
            if ranks {
                let first = format!("{}\0{repo_key}", offset_key(offset));
                txn.insert(REPOS_BY_FIRST, first.as_str(), ())?;
            }
            RepositoryRow { first_offset: offset, ..RepositoryRow::default() }
        }
    };
    row.manifests = row.manifests.saturating_add_signed(manifest_delta);
    if let Some(time) = time
        && row.last_push.as_deref().is_none_or(|last| last < time)
    {
        if ranks {
            if let Some(last) = &row.last_push {
                txn.remove(REPOS_BY_PUSH, format!("{last}\0{repo_key}").as_str())?;
            }
            txn.insert(REPOS_BY_PUSH, format!("{time}\0{repo_key}").as_str(), ())?;
        }
        row.last_push = Some(time.to_string());
    }
    txn.insert_row(REPOSITORIES, repo_key.as_str(), &row)?;
    Ok(())
}

fn put_manifest(
    txn: &impl ViewTables,
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
    let existed = txn.contains(MANIFESTS, manifest_key.as_str())?;
    if existed {
        // An update of the same digest: drop the old indexes first so apply stays idempotent.
        remove_manifest_indexes(txn, did, &manifest.digest)?;
    }
    // The record's fields move into the row: a rebuild builds 300,000 of these.
    let ManifestRecord {
        repository,
        digest,
        media_type,
        created_at,
        manifest_blob,
        config,
        layers,
        manifests,
        subject,
        annotations,
        hold_did,
        hold_endpoint,
    } = manifest;
    let subject = subject.map(|subject| subject.digest).filter(|digest| records::is_sha256_digest(digest));
    let referrer = subject.as_ref().map(|_| ReferrerRow {
        media_type: media_type.clone(),
        artifact_type: annotations.get("org.opencontainers.artifact.type").cloned(),
        size: manifest_blob.as_ref().and_then(|blob| blob.size).and_then(|size| i64::try_from(size).ok()),
        annotations: annotations.clone(),
    });
    let config = config.filter(|config| records::is_sha256_digest(&config.digest));
    let children = manifests
        .into_iter()
        .filter(|child| records::is_sha256_digest(&child.digest))
        .map(|child| {
            let platform = child.platform.as_ref().map(|platform| match &platform.variant {
                Some(variant) => format!("{}/{}/{variant}", platform.os, platform.architecture),
                None => format!("{}/{}", platform.os, platform.architecture),
            });
            ChildRow { digest: child.digest, media_type: child.media_type, size: child.size, platform }
        })
        .collect();
    let row = ManifestRow {
        repository,
        rkey: rkey.to_string(),
        media_type,
        hold_did,
        hold_endpoint,
        subject,
        config_size: config.as_ref().and_then(|config| config.size),
        config: config.map(|config| config.digest),
        layers: layers
            .into_iter()
            .filter(|layer| records::is_sha256_digest(&layer.digest))
            .map(|layer| (layer.digest, layer.media_type, layer.size))
            .collect(),
        children,
        annotations,
        created_at,
        offset,
    };
    txn.insert_row(MANIFESTS, manifest_key.as_str(), &row)?;
    txn.insert(MANIFEST_RKEYS, key(&[did, rkey]).as_str(), digest.as_str())?;
    txn.insert(REPO_MANIFESTS, key(&[did, &row.repository, &digest]).as_str(), ())?;
    if let (Some(subject), Some(referrer)) = (&row.subject, &referrer) {
        txn.insert_row(REFERRERS, key(&[did, subject, &digest]).as_str(), referrer)?;
    }
    touch_repository(txn, did, &row.repository, offset, event.upstream_time.as_deref(), if existed { 0 } else { 1 })?;
    txn.fan_out(FanOut::Manifest { did: did.to_string(), digest, row, added: true })
}

/// What a deleted manifest row leaves for its repository's row.
struct RemovedManifest {
    repository: String,
    offset: u64,
}

/// Removes what a manifest row put into the referrer and fan-out indexes (not the row itself).
fn remove_manifest_indexes(
    txn: &impl ViewTables,
    did: &str,
    digest: &str,
) -> Result<Option<RemovedManifest>, ProjectionError> {
    let manifest_key = key(&[did, digest]);
    let row = match txn.get(MANIFESTS, manifest_key.as_str())? {
        Some(bytes) => decode::<ManifestRow>("manifests", &bytes)?,
        None => return Ok(None),
    };
    if let Some(subject) = &row.subject {
        txn.remove(REFERRERS, key(&[did, subject, digest]).as_str())?;
    }
    let (repository, offset) = (row.repository.clone(), row.offset);
    txn.fan_out(FanOut::Manifest { did: did.to_string(), digest: digest.to_string(), row, added: false })?;
    Ok(Some(RemovedManifest { repository, offset }))
}

fn delete_manifest(txn: &impl ViewTables, did: &str, rkey: &str) -> Result<(), ProjectionError> {
    let rkey_key = key(&[did, rkey]);
    let digest = match txn.remove(MANIFEST_RKEYS, rkey_key.as_str())? {
        Some(digest) => digest,
        None => return Ok(()),
    };
    if let Some(row) = remove_manifest_indexes(txn, did, &digest)? {
        txn.remove(MANIFESTS, key(&[did, &digest]).as_str())?;
        txn.remove(REPO_MANIFESTS, key(&[did, &row.repository, &digest]).as_str())?;
        touch_repository(txn, did, &row.repository, row.offset, None, -1)?;
    }
    Ok(())
}

fn put_tag(
    txn: &impl ViewTables,
    offset: u64,
    event: &Event,
    rkey: &str,
    tag: TagRecord,
    touched: &mut Touched,
) -> Result<(), ProjectionError> {
    let did = event.did.as_str();
    if !valid_name(&tag.repository) || !valid_name(&tag.tag) {
        return skip(offset, "tag or repository name is invalid");
    }
    let tag_key = key(&[did, &tag.repository, &tag.tag]);
    // The same record key may have named another tag before (an update that renames): that
    // tag is deleted, and its history says so.
    let renamed = match txn.get(TAG_RKEYS, key(&[did, rkey]).as_str())? {
        Some(named) => named != key(&[&tag.repository, &tag.tag]),
        None => false,
    };
    if renamed {
        delete_tag(txn, offset, event, rkey, true)?;
        touched.insert(did, None);
    }
    let previous = match txn.get(TAGS, tag_key.as_str())? {
        Some(bytes) => Some(decode::<TagRow>("tags", &bytes)?.digest),
        None => None,
    };
    if previous.as_deref() != Some(tag.digest.as_str()) {
        let change = TagMoveRow {
            offset,
            from: previous,
            to: Some(tag.digest.clone()),
            time: event.upstream_time.clone(),
            rev: event.rev.clone(),
            upstream_seq: event.upstream_seq,
        };
        let history_key = format!("{tag_key}\0{}", offset_key(offset));
        txn.insert_row(TAG_HISTORY, history_key.as_str(), &change)?;
    }
    let row = TagRow {
        digest: tag.digest,
        rkey: rkey.to_string(),
        updated_at: tag.updated_at,
        offset,
        pushed_at: event.upstream_time.clone(),
    };
    txn.insert_row(TAGS, tag_key.as_str(), &row)?;
    txn.insert(TAG_RKEYS, key(&[did, rkey]).as_str(), key(&[&tag.repository, &tag.tag]).as_str())?;
    touch_repository(txn, did, &tag.repository, offset, event.upstream_time.as_deref(), 0)
}

/// Removes the tag a record key names. `record` says whether to write the removal into the
/// tag's history.
fn delete_tag(
    txn: &impl ViewTables,
    offset: u64,
    event: &Event,
    rkey: &str,
    record: bool,
) -> Result<(), ProjectionError> {
    let did = event.did.as_str();
    let named = match txn.remove(TAG_RKEYS, key(&[did, rkey]).as_str())? {
        Some(named) => named,
        None => return Ok(()),
    };
    let Some((repository, tag)) = named.split_once('\0') else { return Ok(()) };
    let tag_key = key(&[did, repository, tag]);
    // Only remove the tag if this record still owns it (two records may name the same tag).
    let owned = match txn.get(TAGS, tag_key.as_str())? {
        Some(bytes) => Some(decode::<TagRow>("tags", &bytes)?).filter(|row| row.rkey == rkey),
        None => None,
    };
    if let Some(row) = owned {
        txn.remove(TAGS, tag_key.as_str())?;
        if record {
            let change = TagMoveRow {
                offset,
                from: Some(row.digest),
                to: None,
                time: event.upstream_time.clone(),
                rev: event.rev.clone(),
                upstream_seq: event.upstream_seq,
            };
            let history_key = format!("{tag_key}\0{}", offset_key(offset));
            txn.insert_row(TAG_HISTORY, history_key.as_str(), &change)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_encoded_through_the_kept_buffer_are_the_rows_encode_gives() {
        let long =
            RepositoryRow { first_offset: 7, last_push: Some("2026-12-05T00:00:00Z".into()), ..Default::default() };
        let short = (String::from("m"), 1u64);
        let (outer, inner) = with_encoded(&long, |outer| {
            // Encoding again while the first encoding is in use, as a nested write would.
            (outer.to_vec(), with_encoded(&short, <[u8]>::to_vec))
        });
        assert_eq!(outer, encode(&long));
        assert_eq!(inner, encode(&short));
        // The buffer kept from the longer row holds no trace of it in the next encoding.
        assert_eq!(with_encoded(&short, <[u8]>::to_vec), encode(&short));
        assert_eq!(with_encoded(&long, <[u8]>::to_vec), encode(&long));
    }
}
