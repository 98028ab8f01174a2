//! Typed `io.atcr.*` records, decoded from the DAG-CBOR bytes kept in the log.
//!
//! Records are untrusted input written by anyone, in every schema generation ATCR has
//! published (see `shared/lexicons/SOURCE.md`): fields are optional unless nothing can be done
//! without them, unknown fields are ignored, and older shapes are accepted:
//! - `io.atcr.tag` with only the deprecated `manifestDigest` (and `createdAt`) instead of the
//!   `manifest` AT-URI;
//! - `io.atcr.sailor.star` whose `subject` is an object `{did, repository}` instead of an AT-URI;
//! - `io.atcr.manifest` with `holdEndpoint` (a URL) instead of `holdDid`;
//! - blob references in the legacy `{cid, mimeType}` form as well as `{$type: blob, ref, …}`;
//! - `io.atcr.hold.crew` without `tier` (and without length limits), hold records with odd
//!   optional fields (each such field is dropped, the record kept).

use std::collections::BTreeMap;

use ipld_core::cid::Cid;
use ipld_core::ipld::Ipld;
use serde::Deserialize;

pub const MANIFEST: &str = "io.atcr.manifest";
pub const TAG: &str = "io.atcr.tag";
pub const STAR: &str = "io.atcr.sailor.star";
pub const PROFILE: &str = "io.atcr.sailor.profile";
pub const REPO_PAGE: &str = "io.atcr.repo.page";
pub const HOLD_CAPTAIN: &str = "io.atcr.hold.captain";
pub const HOLD_CREW: &str = "io.atcr.hold.crew";
pub const HOLD_LAYER: &str = "io.atcr.hold.layer";
pub const HOLD_STATS: &str = "io.atcr.hold.stats";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {collection} record: {reason}")]
pub struct RecordError {
    pub collection: &'static str,
    pub reason: String,
}

fn invalid(collection: &'static str, reason: impl Into<String>) -> RecordError {
    RecordError { collection, reason: reason.into() }
}

/// A blob reference inside a record (`manifestBlob`, `avatar`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub cid: String,
    pub mime_type: Option<String>,
    pub size: Option<u64>,
}

/// An OCI descriptor as a record carries it (`config`, `layers[]`, `subject`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub os_version: Option<String>,
}

/// A child of an index (`manifests[]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRef {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestRecord {
    pub repository: String,
    pub digest: String,
    pub media_type: String,
    pub created_at: Option<String>,
    pub manifest_blob: Option<BlobRef>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<ManifestRef>,
    pub subject: Option<Descriptor>,
    pub annotations: BTreeMap<String, String>,
    pub hold_did: Option<String>,
    pub hold_endpoint: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestWire {
    repository: String,
    digest: String,
    media_type: String,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    manifest_blob: Option<Ipld>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<ManifestRef>>,
    #[serde(default)]
    subject: Option<Descriptor>,
    #[serde(default, deserialize_with = "string_map")]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    hold_did: Option<String>,
    #[serde(default)]
    hold_endpoint: Option<String>,
}

fn decode<'a, T: Deserialize<'a>>(collection: &'static str, bytes: &'a [u8]) -> Result<T, RecordError> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|error| invalid(collection, error.to_string()))
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    })
}

/// A map's text values by key, read straight from the record: other values are dropped, and
/// anything but a map (null included) is an empty map. Decoding the map as `Ipld` first, then
/// keeping its strings, was a tenth of the time a rebuild spends decoding records.
fn string_map<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
    match Loose::deserialize(deserializer)? {
        Loose::Map(strings) => Ok(strings),
        Loose::Text(_) | Loose::Other => Ok(BTreeMap::new()),
    }
}

/// Any value, read as [`string_map`] needs it: text, a map of its text values, or something
/// else (read and dropped).
enum Loose {
    Text(String),
    Map(BTreeMap<String, String>),
    Other,
}

/// Visitor methods that read a scalar and drop it (`Loose::Other`).
macro_rules! drop_scalars {
    ($($visit:ident: $scalar:ty),*) => {$(
        fn $visit<E: serde::de::Error>(self, _: $scalar) -> Result<Loose, E> {
            Ok(Loose::Other)
        }
    )*};
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, IgnoredAny, MapAccess, SeqAccess, Visitor};
        struct Value;
        impl<'de> Visitor<'de> for Value {
            type Value = Loose;

            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("any value")
            }

            fn visit_str<E: Error>(self, text: &str) -> Result<Loose, E> {
                Ok(Loose::Text(text.to_string()))
            }

            fn visit_string<E: Error>(self, text: String) -> Result<Loose, E> {
                Ok(Loose::Text(text))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
                let mut strings = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, Loose>()? {
                    if let Loose::Text(text) = value {
                        strings.insert(key, text);
                    }
                }
                Ok(Loose::Map(strings))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }

            fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Loose, D::Error> {
                deserializer.deserialize_any(self)
            }

            // A CID link.
            fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Loose, D::Error> {
                IgnoredAny::deserialize(deserializer)?;
                Ok(Loose::Other)
            }

            fn visit_unit<E: Error>(self) -> Result<Loose, E> {
                Ok(Loose::Other)
            }

            fn visit_none<E: Error>(self) -> Result<Loose, E> {
                Ok(Loose::Other)
            }

            // Every other scalar is read and dropped.
            drop_scalars!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_i128: i128, visit_u128: u128,
                visit_f64: f64, visit_bytes: &[u8]);
        }
        deserializer.deserialize_any(Value)
    }
}

fn blob_ref(value: Ipld) -> Option<BlobRef> {
    let Ipld::Map(entries) = value else { return None };
    let mime_type = match entries.get("mimeType") {
        Some(Ipld::String(mime)) => Some(mime.clone()),
        _ => None,
    };
    let size = match entries.get("size") {
        Some(Ipld::Integer(size)) => u64::try_from(*size).ok(),
        _ => None,
    };
    let cid = match (entries.get("ref"), entries.get("cid")) {
        (Some(Ipld::Link(cid)), _) => cid.to_string(),
        (_, Some(Ipld::String(cid))) => cid.parse::<Cid>().ok()?.to_string(),
        _ => return None,
    };
    Some(BlobRef { cid, mime_type, size })
}

impl ManifestRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let wire: ManifestWire = decode(MANIFEST, bytes)?;
        if !is_sha256_digest(&wire.digest) {
            return Err(invalid(MANIFEST, format!("digest {:?} is not sha256:<64 hex>", wire.digest)));
        }
        if wire.repository.is_empty() {
            return Err(invalid(MANIFEST, "empty repository"));
        }
        Ok(ManifestRecord {
            repository: wire.repository,
            digest: wire.digest,
            media_type: wire.media_type,
            created_at: wire.created_at,
            manifest_blob: wire.manifest_blob.and_then(blob_ref),
            config: wire.config,
            layers: wire.layers.unwrap_or_default(),
            manifests: wire.manifests.unwrap_or_default(),
            subject: wire.subject,
            annotations: wire.annotations,
            hold_did: wire.hold_did,
            hold_endpoint: wire.hold_endpoint,
        })
    }

    pub fn is_index(&self) -> bool {
        self.media_type.contains("index") || self.media_type.contains("manifest.list")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRecord {
    pub repository: String,
    pub tag: String,
    /// The digest the tag points to, from `manifest` (AT-URI whose rkey is the digest's hex)
    /// or the deprecated `manifestDigest`.
    pub digest: String,
    pub media_type: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TagWire {
    repository: String,
    tag: String,
    #[serde(default)]
    manifest: Option<String>,
    #[serde(default)]
    manifest_digest: Option<String>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
}

impl TagRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let wire: TagWire = decode(TAG, bytes)?;
        let from_uri = wire.manifest.as_deref().and_then(|uri| {
            let rkey = uri.strip_prefix("at://")?.split('/').nth(2)?;
            let digest = if rkey.starts_with("sha256:") { rkey.to_string() } else { format!("sha256:{rkey}") };
            is_sha256_digest(&digest).then_some(digest)
        });
        let digest = from_uri
            .or_else(|| wire.manifest_digest.filter(|digest| is_sha256_digest(digest)))
            .ok_or_else(|| invalid(TAG, "neither `manifest` nor `manifestDigest` names a sha256 manifest"))?;
        if wire.tag.is_empty() || wire.repository.is_empty() {
            return Err(invalid(TAG, "empty tag or repository"));
        }
        Ok(TagRecord {
            repository: wire.repository,
            tag: wire.tag,
            digest,
            media_type: wire.media_type,
            updated_at: wire.updated_at.or(wire.created_at),
        })
    }
}

/// What a star points at: a repository, named by its owner and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StarRecord {
    pub subject_did: String,
    pub subject_repository: String,
    pub created_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StarWire {
    subject: Ipld,
    #[serde(default)]
    created_at: Option<String>,
}

impl StarRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let wire: StarWire = decode(STAR, bytes)?;
        let (did, repository) = match wire.subject {
            // at://did/io.atcr.repo.page/<repository>
            Ipld::String(uri) => {
                let mut parts = uri.strip_prefix("at://").unwrap_or(&uri).splitn(3, '/');
                let did = parts.next().unwrap_or_default().to_string();
                let _collection = parts.next();
                let repository = parts.next().unwrap_or_default().to_string();
                (did, repository)
            }
            Ipld::Map(entries) => {
                let text = |key: &str| match entries.get(key) {
                    Some(Ipld::String(value)) => value.clone(),
                    _ => String::new(),
                };
                (text("did"), text("repository"))
            }
            _ => (String::new(), String::new()),
        };
        if !did.starts_with("did:") || repository.is_empty() {
            return Err(invalid(STAR, "subject does not name a repository"));
        }
        Ok(StarRecord { subject_did: did, subject_repository: repository, created_at: wire.created_at })
    }
}

/// A repository's page: its README (markdown) and avatar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPageRecord {
    pub repository: String,
    pub description: Option<String>,
    pub avatar: Option<BlobRef>,
    pub updated_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RepoPageWire {
    repository: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    avatar: Option<Ipld>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
}

impl RepoPageRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let wire: RepoPageWire = decode(REPO_PAGE, bytes)?;
        if wire.repository.is_empty() {
            return Err(invalid(REPO_PAGE, "empty repository"));
        }
        Ok(RepoPageRecord {
            repository: wire.repository,
            description: wire.description.filter(|text| !text.trim().is_empty()),
            avatar: wire.avatar.and_then(blob_ref),
            updated_at: wire.updated_at.or(wire.created_at),
        })
    }
}

/// A user's registry preferences (`io.atcr.sailor.profile`, record key `self`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileRecord {
    /// `docker`, `podman`, `buildah`, `nerdctl`, `crane` or `none`; other values are ignored.
    pub oci_client: Option<String>,
    pub default_hold: Option<String>,
    pub registry_domain: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileWire {
    #[serde(default)]
    oci_client: Option<String>,
    #[serde(default)]
    default_hold: Option<String>,
    #[serde(default)]
    registry_domain: Option<String>,
}

/// The pull clients a profile may name (lexicon `knownValues`).
pub const OCI_CLIENTS: [&str; 6] = ["docker", "podman", "buildah", "nerdctl", "crane", "none"];

impl ProfileRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let wire: ProfileWire = decode(PROFILE, bytes)?;
        Ok(ProfileRecord {
            oci_client: wire.oci_client.filter(|client| OCI_CLIENTS.contains(&client.as_str())),
            default_hold: wire.default_hold.filter(|hold| hold.starts_with("did:")),
            registry_domain: wire.registry_domain.filter(|domain| !domain.is_empty()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Hold records (`io.atcr.hold.*`), written by a hold into its own (embedded) PDS. Decoded from a
// loose map so one odd optional field (a number where a string belongs) costs that field, not
// the record; only what the record is about is required.

/// A record as a map of its fields.
fn fields(collection: &'static str, bytes: &[u8]) -> Result<BTreeMap<String, Ipld>, RecordError> {
    match decode::<Ipld>(collection, bytes)? {
        Ipld::Map(entries) => Ok(entries),
        _ => Err(invalid(collection, "record is not a map")),
    }
}

fn text_field(entries: &BTreeMap<String, Ipld>, name: &str) -> Option<String> {
    match entries.get(name) {
        Some(Ipld::String(text)) if !text.is_empty() && !text.contains('\0') => Some(text.clone()),
        _ => None,
    }
}

fn bool_field(entries: &BTreeMap<String, Ipld>, name: &str) -> Option<bool> {
    match entries.get(name) {
        Some(Ipld::Bool(value)) => Some(*value),
        _ => None,
    }
}

/// A non-negative integer field; `Err` names the field when it is present but negative or huge.
fn count_field(
    collection: &'static str,
    entries: &BTreeMap<String, Ipld>,
    name: &str,
) -> Result<Option<u64>, RecordError> {
    match entries.get(name) {
        Some(Ipld::Integer(value)) => {
            u64::try_from(*value).map(Some).map_err(|_| invalid(collection, format!("`{name}` is negative")))
        }
        _ => Ok(None),
    }
}

fn did_field(entries: &BTreeMap<String, Ipld>, name: &str) -> Option<String> {
    text_field(entries, name).filter(|did| crate::syntax::is_valid_did(did))
}

/// The fields of an `io.atcr.manifest` the hold index needs (the rest is skipped unread).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestHoldWire {
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    hold_did: Option<String>,
    /// Required by [`ManifestRecord::decode`]: without it the views skip the record, so must this.
    #[serde(default)]
    media_type: Option<String>,
}

/// The digest of a manifest record and, when it names a hold by DID, (repository, hold DID);
/// read without decoding the rest of the record. `None`: not a manifest with a sha256 digest.
pub fn manifest_hold(bytes: &[u8]) -> Option<(String, Option<(String, String)>)> {
    let wire: ManifestHoldWire = serde_ipld_dagcbor::from_slice(bytes).ok()?;
    wire.media_type.as_ref()?;
    let digest = wire.digest.filter(|digest| is_sha256_digest(digest))?;
    Some((digest, named_hold(wire.repository, wire.hold_did)))
}

/// The (repository, hold DID) a manifest names, when both can key an index: the repository
/// non-empty and without NUL, the hold a valid DID. Shared by [`manifest_hold`] and the views,
/// which read it from a [`ManifestRecord`] they already decoded.
pub fn named_hold(repository: Option<String>, hold_did: Option<String>) -> Option<(String, String)> {
    let repository = repository.filter(|repository| !repository.is_empty() && !repository.contains('\0'));
    let hold = hold_did.filter(|did| crate::syntax::is_valid_did(did));
    repository.zip(hold)
}

/// `io.atcr.hold.captain` (record key `self`): who owns the hold and how it is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldCaptainRecord {
    pub owner: String,
    /// Blob reads without authentication; a record without the field is taken as private.
    pub public: bool,
    pub region: Option<String>,
    /// The hold to go to instead (a migration).
    pub successor: Option<String>,
    pub deployed_at: Option<String>,
    pub allow_all_crew: bool,
}

impl HoldCaptainRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let entries = fields(HOLD_CAPTAIN, bytes)?;
        let owner = did_field(&entries, "owner").ok_or_else(|| invalid(HOLD_CAPTAIN, "`owner` is not a DID"))?;
        Ok(HoldCaptainRecord {
            owner,
            public: bool_field(&entries, "public").unwrap_or(false),
            region: text_field(&entries, "region").filter(|region| region.len() <= 64),
            successor: did_field(&entries, "successor"),
            deployed_at: text_field(&entries, "deployedAt"),
            allow_all_crew: bool_field(&entries, "allowAllCrew").unwrap_or(false),
        })
    }
}

/// `io.atcr.hold.crew`: one member of a hold's crew. Older records have no `tier`, and the
/// earliest no length limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldCrewRecord {
    pub member: String,
    pub role: Option<String>,
    pub permissions: Vec<String>,
    pub tier: Option<String>,
    pub added_at: Option<String>,
}

impl HoldCrewRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let entries = fields(HOLD_CREW, bytes)?;
        let member = did_field(&entries, "member").ok_or_else(|| invalid(HOLD_CREW, "`member` is not a DID"))?;
        let permissions = match entries.get("permissions") {
            Some(Ipld::List(items)) => items
                .iter()
                .filter_map(|item| match item {
                    Ipld::String(text) if !text.is_empty() && !text.contains('\0') => Some(text.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(HoldCrewRecord {
            member,
            role: text_field(&entries, "role"),
            permissions,
            tier: text_field(&entries, "tier"),
            added_at: text_field(&entries, "addedAt"),
        })
    }
}

/// `io.atcr.hold.layer`: a layer a hold stores, and the manifest that brought it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldLayerRecord {
    pub digest: String,
    pub size: u64,
    pub media_type: Option<String>,
    /// AT-URI of the manifest record.
    pub manifest: Option<String>,
    pub user_did: Option<String>,
    pub created_at: Option<String>,
}

impl HoldLayerRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let entries = fields(HOLD_LAYER, bytes)?;
        let digest = text_field(&entries, "digest")
            .filter(|digest| is_sha256_digest(digest))
            .ok_or_else(|| invalid(HOLD_LAYER, "`digest` is not sha256:<64 hex>"))?;
        let size = count_field(HOLD_LAYER, &entries, "size")?.ok_or_else(|| invalid(HOLD_LAYER, "no `size`"))?;
        Ok(HoldLayerRecord {
            digest,
            size,
            media_type: text_field(&entries, "mediaType"),
            manifest: text_field(&entries, "manifest").filter(|uri| crate::syntax::is_valid_at_uri(uri)),
            user_did: did_field(&entries, "userDid"),
            created_at: text_field(&entries, "createdAt"),
        })
    }
}

/// `io.atcr.hold.stats`: a hold's pull and push counters for one repository (cumulative).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldStatsRecord {
    pub owner_did: String,
    pub repository: String,
    pub pull_count: u64,
    pub push_count: u64,
    pub last_pull: Option<String>,
    pub last_push: Option<String>,
    pub updated_at: Option<String>,
}

impl HoldStatsRecord {
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let entries = fields(HOLD_STATS, bytes)?;
        let owner_did =
            did_field(&entries, "ownerDid").ok_or_else(|| invalid(HOLD_STATS, "`ownerDid` is not a DID"))?;
        let repository = text_field(&entries, "repository")
            .filter(|repository| repository.len() <= 256)
            .ok_or_else(|| invalid(HOLD_STATS, "no `repository`"))?;
        Ok(HoldStatsRecord {
            owner_did,
            repository,
            pull_count: count_field(HOLD_STATS, &entries, "pullCount")?.unwrap_or(0),
            push_count: count_field(HOLD_STATS, &entries, "pushCount")?.unwrap_or(0),
            last_pull: text_field(&entries, "lastPull"),
            last_push: text_field(&entries, "lastPush"),
            updated_at: text_field(&entries, "updatedAt"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipld_core::ipld;

    fn cbor(value: Ipld) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(&value).unwrap()
    }

    const DIGEST: &str = "sha256:b7cf38f057d9ace9033c883199bbc66e7ea90c44123463617b61f3fbd6603922";

    #[test]
    fn tags_resolve_from_the_uri_or_the_deprecated_digest() {
        let modern = cbor(ipld!({
            "$type": "io.atcr.tag", "repository": "hello", "tag": "latest",
            "manifest": "at://did:plc:abc/io.atcr.manifest/b7cf38f057d9ace9033c883199bbc66e7ea90c44123463617b61f3fbd6603922",
        }));
        assert_eq!(TagRecord::decode(&modern).unwrap().digest, DIGEST);
        let legacy = cbor(
            ipld!({ "repository": "hello", "tag": "v1", "manifestDigest": DIGEST, "createdAt": "2025-01-01T00:00:00Z" }),
        );
        let legacy = TagRecord::decode(&legacy).unwrap();
        assert_eq!((legacy.digest.as_str(), legacy.updated_at.as_deref()), (DIGEST, Some("2025-01-01T00:00:00Z")));
        let hostile = cbor(ipld!({ "repository": "hello", "tag": "x", "manifestDigest": "sha256:../../etc/passwd" }));
        assert!(TagRecord::decode(&hostile).is_err());
    }

    #[test]
    fn pages_and_profiles_decode_leniently() {
        let page = cbor(ipld!({ "repository": "web/app", "description": "# Hi", "createdAt": "2026-01-01T00:00:00Z" }));
        let page = RepoPageRecord::decode(&page).unwrap();
        assert_eq!(
            (page.description.as_deref(), page.updated_at.as_deref()),
            (Some("# Hi"), Some("2026-01-01T00:00:00Z"))
        );
        assert!(RepoPageRecord::decode(&cbor(ipld!({ "repository": "" }))).is_err());
        let profile = cbor(ipld!({ "ociClient": "podman", "defaultHold": "did:web:hold.test", "createdAt": "x" }));
        let profile = ProfileRecord::decode(&profile).unwrap();
        assert_eq!(profile.oci_client.as_deref(), Some("podman"));
        let odd = ProfileRecord::decode(&cbor(ipld!({ "ociClient": "<script>", "defaultHold": "x" }))).unwrap();
        assert_eq!(odd, ProfileRecord::default());
    }

    #[test]
    fn stars_accept_both_subject_shapes() {
        let modern = cbor(ipld!({ "subject": "at://did:plc:abc/io.atcr.repo.page/web/nginx-mini" }));
        let star = StarRecord::decode(&modern).unwrap();
        assert_eq!((star.subject_did.as_str(), star.subject_repository.as_str()), ("did:plc:abc", "web/nginx-mini"));
        let legacy = cbor(ipld!({ "subject": { "did": "did:plc:abc", "repository": "hello" } }));
        assert_eq!(StarRecord::decode(&legacy).unwrap().subject_repository, "hello");
        assert!(StarRecord::decode(&cbor(ipld!({ "subject": 5 }))).is_err());
    }

    #[test]
    fn manifest_annotations_keep_their_text_values_whatever_else_the_record_holds() {
        // What annotations were before they were read straight from the record: the map decoded
        // as Ipld, then its text values.
        fn as_ipld_then_strings(value: &Ipld) -> BTreeMap<String, String> {
            let Ipld::Map(entries) = value else { return BTreeMap::new() };
            entries
                .iter()
                .filter_map(|(key, value)| match value {
                    Ipld::String(text) => Some((key.clone(), text.clone())),
                    _ => None,
                })
                .collect()
        }
        let cid: Cid = "bafkreifxz44pav6zvtuqgpeiggm3xrtop2uqyrasgrrwc63b6p55mybzei".parse().unwrap();
        let shapes = [
            ipld!({ "org.opencontainers.image.title": "hello", "org.opencontainers.image.version": "1.2" }),
            ipld!({}),
            ipld!(null),
            ipld!("not a map"),
            ipld!(7),
            ipld!([{ "a": "b" }, "c"]),
            ipld!({
                "text": "kept", "number": -3, "big": 18446744073709551615u64, "float": 1.5, "yes": true,
                "none": null, "bytes": Ipld::Bytes(vec![1, 2]), "link": Ipld::Link(cid),
                "list": ["x", { "y": "z" }], "nested": { "inner": "dropped", "deeper": { "a": [1] } }, "last": "kept too",
            }),
        ];
        for annotations in shapes {
            let record = cbor(ipld!({
                "repository": "hello", "digest": DIGEST, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "annotations": annotations.clone(), "holdEndpoint": "https://hold.test",
            }));
            let decoded = ManifestRecord::decode(&record).unwrap();
            assert_eq!(decoded.annotations, as_ipld_then_strings(&annotations), "{annotations:?}");
            // The field after the annotations (DAG-CBOR orders keys by length) is still read.
            assert_eq!(decoded.hold_endpoint.as_deref(), Some("https://hold.test"), "{annotations:?}");
        }
        let without = cbor(ipld!({ "repository": "hello", "digest": DIGEST, "mediaType": "m" }));
        assert!(ManifestRecord::decode(&without).unwrap().annotations.is_empty());
    }

    #[test]
    fn manifests_keep_blob_refs_and_refuse_bad_digests() {
        let cid: Cid = "bafkreifxz44pav6zvtuqgpeiggm3xrtop2uqyrasgrrwc63b6p55mybzei".parse().unwrap();
        let record = cbor(ipld!({
            "repository": "hello", "digest": DIGEST, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "schemaVersion": 2,
            "manifestBlob": { "$type": "blob", "ref": cid, "mimeType": "application/vnd.oci.image.manifest.v1+json", "size": 904 },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": DIGEST, "size": 10 }],
            "annotations": { "org.opencontainers.image.title": "hello", "weird": 5 },
            "holdEndpoint": "https://hold.example",
        }));
        let manifest = ManifestRecord::decode(&record).unwrap();
        assert_eq!(manifest.manifest_blob.as_ref().unwrap().cid, cid.to_string());
        assert_eq!(manifest.layers.len(), 1);
        assert_eq!(manifest.annotations.len(), 1, "non-string annotations are dropped");
        assert_eq!(manifest.hold_endpoint.as_deref(), Some("https://hold.example"));
        let bad = cbor(ipld!({ "repository": "hello", "digest": "md5:abc", "mediaType": "x" }));
        assert!(ManifestRecord::decode(&bad).is_err());
    }

    #[test]
    fn hold_records_decode_every_shape_and_refuse_what_names_nothing() {
        let captain = cbor(ipld!({
            "$type": "io.atcr.hold.captain", "owner": "did:plc:owner", "public": true, "region": "eu-west-1",
            "successor": "did:web:next.example", "deployedAt": "2026-01-01T00:00:00Z", "allowAllCrew": false,
            "enableBlueskyPosts": true,
        }));
        let captain = HoldCaptainRecord::decode(&captain).unwrap();
        assert_eq!((captain.owner.as_str(), captain.public), ("did:plc:owner", true));
        assert_eq!(captain.successor.as_deref(), Some("did:web:next.example"));
        let odd = HoldCaptainRecord::decode(&cbor(ipld!({ "owner": "did:plc:owner", "public": "yes", "region": 5 })));
        assert!(!odd.unwrap().public, "a non-boolean `public` is not public");
        assert!(HoldCaptainRecord::decode(&cbor(ipld!({ "owner": "alice" }))).is_err());
        assert!(HoldCaptainRecord::decode(&cbor(ipld!([1, 2]))).is_err());

        // The earliest crew shape: no tier.
        let crew =
            cbor(ipld!({ "member": "did:plc:m", "role": "write", "permissions": ["blob:write", 7], "addedAt": "x" }));
        let crew = HoldCrewRecord::decode(&crew).unwrap();
        assert_eq!((crew.tier, crew.permissions), (None, vec!["blob:write".to_string()]));
        assert!(HoldCrewRecord::decode(&cbor(ipld!({ "role": "write" }))).is_err());

        let layer = cbor(ipld!({
            "digest": DIGEST, "size": 1234, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "manifest": "at://did:plc:abc/io.atcr.manifest/abc", "userDid": "did:plc:abc", "createdAt": "x",
        }));
        assert_eq!(HoldLayerRecord::decode(&layer).unwrap().size, 1234);
        assert!(HoldLayerRecord::decode(&cbor(ipld!({ "digest": DIGEST, "size": -1 }))).is_err());
        assert!(HoldLayerRecord::decode(&cbor(ipld!({ "digest": "sha256:../x", "size": 1 }))).is_err());

        let stats = cbor(ipld!({
            "ownerDid": "did:plc:abc", "repository": "web/app", "pullCount": 42, "pushCount": 3,
            "lastPull": "2026-02-01T00:00:00Z", "updatedAt": "2026-02-01T00:00:00Z",
        }));
        let stats = HoldStatsRecord::decode(&stats).unwrap();
        assert_eq!((stats.pull_count, stats.push_count, stats.repository.as_str()), (42, 3, "web/app"));
        assert!(
            HoldStatsRecord::decode(&cbor(ipld!({ "ownerDid": "did:plc:abc", "repository": "x", "pullCount": -5 })))
                .is_err()
        );
        assert!(HoldStatsRecord::decode(&cbor(ipld!({ "ownerDid": "did:plc:abc" }))).is_err());
    }
}

// ---- io.atcr.hold.scan (scan results a hold publishes in its own repository) ----

pub const HOLD_SCAN: &str = "io.atcr.hold.scan";

/// How a scan attempt ended (`status`; omitted in the first generation, which only wrote
/// successful scans).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ScanStatus {
    Ok,
    Failed,
    Skipped,
    /// A value this code does not know, kept as written.
    Other(String),
}

impl ScanStatus {
    pub fn parse(status: Option<&str>) -> ScanStatus {
        match status.map(str::trim) {
            None | Some("") | Some("ok") => ScanStatus::Ok,
            Some("failed") => ScanStatus::Failed,
            Some("skipped") => ScanStatus::Skipped,
            Some(other) => ScanStatus::Other(other.chars().take(32).collect()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ScanStatus::Ok => "ok",
            ScanStatus::Failed => "failed",
            ScanStatus::Skipped => "skipped",
            ScanStatus::Other(other) => other,
        }
    }
}

/// A hold's scan of one manifest (`io.atcr.hold.scan`, record key = the manifest digest's hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRecord {
    /// The scanned manifest's digest, from the `manifest` AT-URI's record key, else from the
    /// record's own key (older records).
    pub manifest_digest: String,
    /// The `manifest` AT-URI as written (may be absent in older records).
    pub manifest_uri: Option<String>,
    /// The image owner: `userDid`, else the `manifest` URI's authority.
    pub owner_did: String,
    pub repository: String,
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    pub total: u64,
    pub scanner_version: Option<String>,
    pub scanned_at: Option<String>,
    pub status: ScanStatus,
    pub reason: Option<String>,
    pub vuln_report: Option<BlobRef>,
    pub sbom: Option<BlobRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScanWire {
    #[serde(default)]
    manifest: Option<String>,
    #[serde(default)]
    manifest_digest: Option<String>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    repository: Option<String>,
    #[serde(default)]
    user_did: Option<String>,
    #[serde(default)]
    critical: Option<Ipld>,
    #[serde(default)]
    high: Option<Ipld>,
    #[serde(default)]
    medium: Option<Ipld>,
    #[serde(default)]
    low: Option<Ipld>,
    #[serde(default)]
    total: Option<Ipld>,
    #[serde(default)]
    scanner_version: Option<String>,
    #[serde(default)]
    scanned_at: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    vuln_report_blob: Option<Ipld>,
    #[serde(default)]
    sbom_blob: Option<Ipld>,
}

fn count(value: Option<Ipld>) -> u64 {
    match value {
        Some(Ipld::Integer(count)) => u64::try_from(count).unwrap_or(0),
        _ => 0,
    }
}

fn digest_from_hex_or_digest(text: &str) -> Option<String> {
    let digest = if text.starts_with("sha256:") { text.to_string() } else { format!("sha256:{text}") };
    is_sha256_digest(&digest).then_some(digest)
}

impl ScanRecord {
    /// Decodes a scan record stored under `rkey`.
    pub fn decode(bytes: &[u8], rkey: &str) -> Result<Self, RecordError> {
        let wire: ScanWire = decode(HOLD_SCAN, bytes)?;
        let (uri_did, uri_digest) = match wire.manifest.as_deref().and_then(|uri| uri.strip_prefix("at://")) {
            Some(rest) => {
                let mut parts = rest.split('/');
                let did = parts.next().filter(|did| did.starts_with("did:")).map(str::to_string);
                let digest = parts.nth(1).and_then(digest_from_hex_or_digest);
                (did, digest)
            }
            None => (None, None),
        };
        let manifest_digest = uri_digest
            .or_else(|| wire.manifest_digest.as_deref().and_then(digest_from_hex_or_digest))
            .or_else(|| wire.digest.as_deref().and_then(digest_from_hex_or_digest))
            .or_else(|| digest_from_hex_or_digest(rkey))
            .ok_or_else(|| invalid(HOLD_SCAN, "names no sha256 manifest (manifest URI, digest or record key)"))?;
        let owner_did = wire
            .user_did
            .filter(|did| did.starts_with("did:"))
            .or(uri_did)
            .ok_or_else(|| invalid(HOLD_SCAN, "names no image owner (userDid or manifest URI)"))?;
        if owner_did.contains('\0') {
            return Err(invalid(HOLD_SCAN, "owner DID contains NUL"));
        }
        let repository = wire.repository.unwrap_or_default();
        if repository.contains('\0') {
            return Err(invalid(HOLD_SCAN, "repository contains NUL"));
        }
        let (critical, high, medium, low) =
            (count(wire.critical), count(wire.high), count(wire.medium), count(wire.low));
        let total = match wire.total {
            Some(Ipld::Integer(total)) => u64::try_from(total).unwrap_or(0),
            _ => critical + high + medium + low,
        };
        Ok(ScanRecord {
            manifest_digest,
            manifest_uri: wire.manifest,
            owner_did,
            repository,
            critical,
            high,
            medium,
            low,
            total,
            scanner_version: wire.scanner_version,
            scanned_at: wire.scanned_at,
            status: ScanStatus::parse(wire.status.as_deref()),
            reason: wire
                .reason
                .filter(|reason| !reason.trim().is_empty())
                .map(|reason| reason.chars().take(256).collect()),
            vuln_report: wire.vuln_report_blob.and_then(blob_ref),
            sbom: wire.sbom_blob.and_then(blob_ref),
        })
    }
}

#[cfg(test)]
mod scan_record_tests {
    use super::*;
    use ipld_core::ipld;

    const HEX: &str = "b7cf38f057d9ace9033c883199bbc66e7ea90c44123463617b61f3fbd6603922";

    fn cbor(value: Ipld) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(&value).unwrap()
    }

    #[test]
    fn scans_decode_current_and_older_shapes() {
        let cid: Cid = "bafkreifxz44pav6zvtuqgpeiggm3xrtop2uqyrasgrrwc63b6p55mybzei".parse().unwrap();
        let current = cbor(ipld!({
            "$type": "io.atcr.hold.scan", "manifest": format!("at://did:plc:owner/io.atcr.manifest/{HEX}"),
            "repository": "web", "userDid": "did:plc:owner", "critical": 1, "high": 2, "medium": 3, "low": 4, "total": 10,
            "scannerVersion": "atcr-scanner-v1.0.0", "scannedAt": "2026-01-01T00:00:00Z", "status": "ok",
            "vulnReportBlob": { "$type": "blob", "ref": cid, "mimeType": "application/vnd.atcr.vulnerabilities+json", "size": 5 },
        }));
        let scan = ScanRecord::decode(&current, HEX).unwrap();
        assert_eq!(scan.manifest_digest, format!("sha256:{HEX}"));
        assert_eq!((scan.critical, scan.total, scan.status.clone()), (1, 10, ScanStatus::Ok));
        assert_eq!(scan.vuln_report.unwrap().cid, cid.to_string());
        // first generation: no status, no userDid (owner from the URI), no total
        let older =
            cbor(ipld!({ "manifest": format!("at://did:plc:owner/io.atcr.manifest/{HEX}"), "high": 2, "low": 1 }));
        let older = ScanRecord::decode(&older, "x").unwrap();
        assert_eq!((older.owner_did.as_str(), older.total, older.status), ("did:plc:owner", 3, ScanStatus::Ok));
        let skipped = cbor(ipld!({ "userDid": "did:plc:o", "status": "skipped", "reason": "helm chart" }));
        let skipped = ScanRecord::decode(&skipped, HEX).unwrap();
        assert_eq!((skipped.status, skipped.reason.as_deref()), (ScanStatus::Skipped, Some("helm chart")));
        assert!(ScanRecord::decode(&cbor(ipld!({ "userDid": "did:plc:o" })), "not-a-digest").is_err());
        assert!(ScanRecord::decode(&cbor(ipld!({ "critical": 1 })), HEX).is_err(), "no owner");
    }
}
