//! The registry read API behind the OCI pull path: names to DIDs, tags to digests, digests to
//! verified bytes, blobs to the hold that has them. Answers come from the views and the
//! content store only: nothing here touches the network.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use atcr_projections::{ProjectionError, Views, ViewsHandle};
use atcr_storage::blobs::{BlobAccess, BlobBackend, BlobMethod};
use atcr_storage::content::{ContentError, ContentStore};
use atcr_storage::records::is_sha256_digest;
use serde_json::{Value, json};

/// What can go wrong, in registry terms (the web layer maps each to an OCI error code).
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ProjectionError> for RegistryError {
    fn from(error: ProjectionError) -> Self {
        RegistryError::Internal(error.to_string())
    }
}

/// A repository resolved to its owner's DID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepositoryRef {
    pub did: String,
    pub repository: String,
    /// The name as the client wrote it (`handle/repo` or `did/repo`).
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Arc<[u8]>,
}

/// Where a blob's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobLocation {
    pub digest: String,
    pub hold_did: Option<String>,
    /// The hold's service endpoint, resolved by ingest; or a legacy `holdEndpoint`.
    pub hold_endpoint: Option<String>,
    pub size: Option<i64>,
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` for each `/`-separated component (OCI distribution).
pub fn is_valid_repository(repository: &str) -> bool {
    if repository.is_empty() || repository.len() > 255 {
        return false;
    }
    repository.split('/').all(|component| {
        let bytes = component.as_bytes();
        let alphanumeric = |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
        if bytes.is_empty() || !alphanumeric(bytes[0]) || !alphanumeric(bytes[bytes.len() - 1]) {
            return false;
        }
        let mut index = 0;
        while index < bytes.len() {
            if alphanumeric(bytes[index]) {
                index += 1;
                continue;
            }
            let start = index;
            while index < bytes.len() && !alphanumeric(bytes[index]) {
                index += 1;
            }
            let separator = &component[start..index];
            let allowed =
                separator == "." || separator == "_" || separator == "__" || separator.bytes().all(|byte| byte == b'-');
            if !allowed {
                return false;
            }
        }
        true
    })
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes.iter().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'))
}

fn is_valid_identity(identity: &str) -> bool {
    if let Some(rest) = identity.strip_prefix("did:plc:") {
        return !rest.is_empty() && rest.bytes().all(|byte| byte.is_ascii_alphanumeric());
    }
    if let Some(rest) = identity.strip_prefix("did:web:") {
        return !rest.is_empty()
            && rest.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'%'));
    }
    // A handle: a domain name of at least two labels.
    let labels: Vec<&str> = identity.split('.').collect();
    identity.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Verified manifest bytes kept in memory: content-addressed, so never stale.
struct ManifestCache {
    entries: RwLock<HashMap<String, Arc<[u8]>>>,
    capacity_bytes: usize,
}

impl ManifestCache {
    fn get(&self, digest: &str) -> Option<Arc<[u8]>> {
        self.entries.read().ok()?.get(digest).cloned()
    }

    fn insert(&self, digest: &str, bytes: Arc<[u8]>) {
        let Ok(mut entries) = self.entries.write() else { return };
        let held: usize = entries.values().map(|bytes| bytes.len()).sum();
        if held + bytes.len() > self.capacity_bytes {
            entries.clear();
        }
        entries.insert(digest.to_string(), bytes);
    }
}

/// How the pull path hands out a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobServe {
    /// Stream a local file (a hold atcr serves itself).
    File { path: std::path::PathBuf, digest: String },
    /// Redirect the client to this URL (the hold's `getBlob`).
    Redirect { url: String, digest: String },
}

/// Answers to `GET /v2/<name>/manifests/<reference>` already worked out, valid while the views'
/// generation does not move: the hot pull path then reads no table at all.
#[derive(Default)]
struct ResolvedCache {
    generation: u64,
    entries: HashMap<(String, String), Manifest>,
}

/// Most resolved answers kept before the cache starts over.
const RESOLVED_CACHE_ENTRIES: usize = 100_000;

#[derive(Clone)]
pub struct RegistryQuery {
    /// The live views; a newer build may be swapped in at any time (`atcr replay`), so each
    /// answer loads it once and uses that one build throughout.
    views: ViewsHandle,
    content: Arc<ContentStore>,
    cache: Arc<ManifestCache>,
    resolved: Arc<RwLock<ResolvedCache>>,
    /// Holds atcr serves itself, by hold DID.
    local_holds: Arc<HashMap<String, BlobBackend>>,
}

impl RegistryQuery {
    pub fn new(views: impl Into<ViewsHandle>, content: Arc<ContentStore>) -> Self {
        let cache = ManifestCache { entries: RwLock::new(HashMap::new()), capacity_bytes: 64 * 1024 * 1024 };
        RegistryQuery {
            views: views.into(),
            content,
            cache: Arc::new(cache),
            resolved: Arc::new(RwLock::new(ResolvedCache::default())),
            local_holds: Arc::new(HashMap::new()),
        }
    }

    /// A manifest answered before for this name and reference, if the views have not changed
    /// since. Never blocks on storage: safe to call on an async worker.
    pub fn cached_manifest(&self, name: &str, reference: &str) -> Option<Manifest> {
        // Generations are unique across builds, so a swapped-in build never matches old answers.
        let generation = self.views.generation();
        let cache = self.resolved.read().ok()?;
        if cache.generation != generation {
            return None;
        }
        cache.entries.get(&(name.to_string(), reference.to_string())).cloned()
    }

    /// [`RegistryQuery::resolve`] + [`RegistryQuery::manifest`], remembering the answer.
    pub fn manifest_by_name(&self, name: &str, reference: &str) -> Result<Manifest, RegistryError> {
        let views = self.views.load();
        let generation = views.generation();
        let repository = resolve_in(&views, name)?;
        let manifest = self.manifest_in(&views, &repository, reference)?;
        if let Ok(mut cache) = self.resolved.write() {
            if cache.generation != generation || cache.entries.len() >= RESOLVED_CACHE_ENTRIES {
                cache.entries.clear();
                cache.generation = generation;
            }
            cache.entries.insert((name.to_string(), reference.to_string()), manifest.clone());
        }
        Ok(manifest)
    }

    /// Serves the blobs of these holds from local backends instead of redirecting.
    pub fn with_local_holds(mut self, holds: HashMap<String, BlobBackend>) -> Self {
        self.local_holds = Arc::new(holds);
        self
    }

    /// Decides how to hand out a blob: a local backend for holds atcr serves, else a redirect
    /// to the hold's `com.atproto.sync.getBlob`.
    /// `method` matters for presigned URLs: a GET-signed URL fails a HEAD on real S3.
    pub fn serve_blob(
        &self,
        repository: &RepositoryRef,
        digest: &str,
        method: BlobMethod,
    ) -> Result<BlobServe, RegistryError> {
        let location = self.blob(repository, digest)?;
        if let Some(backend) = location.hold_did.as_ref().and_then(|hold| self.local_holds.get(hold)) {
            return match backend.locate(digest, method) {
                Some(BlobAccess::File(path)) => Ok(BlobServe::File { path, digest: location.digest }),
                Some(BlobAccess::Redirect(url)) => Ok(BlobServe::Redirect { url, digest: location.digest }),
                None => Err(RegistryError::BlobUnknown(format!("{digest} is not in the local hold"))),
            };
        }
        let (Some(hold_did), Some(endpoint)) = (&location.hold_did, &location.hold_endpoint) else {
            return match &location.hold_endpoint {
                // Legacy records name an endpoint without a DID.
                Some(endpoint) => Ok(BlobServe::Redirect {
                    url: format!("{}/xrpc/com.atproto.sync.getBlob?cid={digest}", endpoint.trim_end_matches('/')),
                    digest: location.digest,
                }),
                None => Err(RegistryError::BlobUnknown(format!("{digest}: its hold is not resolved yet"))),
            };
        };
        Ok(BlobServe::Redirect {
            // A did:web port is percent-encoded inside the DID; keep it literal in the query.
            url: format!(
                "{}/xrpc/com.atproto.sync.getBlob?did={}&cid={digest}",
                endpoint.trim_end_matches('/'),
                hold_did.replace('%', "%25")
            ),
            digest: location.digest,
        })
    }

    /// The content store (verified bytes: manifests, image configs, layer file lists).
    pub fn content(&self) -> &Arc<ContentStore> {
        &self.content
    }

    /// The live views now (load once per answer: a newer build may be swapped in any time).
    pub fn views(&self) -> Arc<Views> {
        self.views.load()
    }

    /// The swappable handle itself, for other readers of the same views.
    pub fn views_handle(&self) -> &ViewsHandle {
        &self.views
    }

    /// `alice.test/web/app` or `did:plc:…/web/app` → the owner's DID and the repository.
    pub fn resolve(&self, name: &str) -> Result<RepositoryRef, RegistryError> {
        resolve_in(&self.views.load(), name)
    }

    /// A manifest by tag or digest, with its exact, verified bytes.
    pub fn manifest(&self, repository: &RepositoryRef, reference: &str) -> Result<Manifest, RegistryError> {
        self.manifest_in(&self.views.load(), repository, reference)
    }

    fn manifest_in(
        &self,
        views: &Views,
        repository: &RepositoryRef,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let digest = if reference.contains(':') {
            if !is_sha256_digest(reference) {
                return Err(RegistryError::DigestInvalid(reference.to_string()));
            }
            reference.to_string()
        } else {
            if !is_valid_tag(reference) {
                return Err(RegistryError::TagInvalid(reference.to_string()));
            }
            views
                .tag(&repository.did, &repository.repository, reference)?
                .ok_or_else(|| RegistryError::ManifestUnknown(format!("tag {reference} in {}", repository.name)))?
                .digest
        };
        let row = views
            .manifest(&repository.did, &digest)?
            .filter(|row| row.repository == repository.repository)
            .ok_or_else(|| RegistryError::ManifestUnknown(format!("{digest} in {}", repository.name)))?;
        let bytes = match self.cache.get(&digest) {
            Some(bytes) => bytes,
            None => {
                let bytes: Arc<[u8]> = match self.content.get(&digest) {
                    Ok(Some(bytes)) => bytes.into(),
                    Ok(None) => {
                        return Err(RegistryError::ManifestUnknown(format!("{digest}: content not fetched yet")));
                    }
                    Err(ContentError::DigestMismatch { .. }) => {
                        return Err(RegistryError::Internal(format!("stored content of {digest} is corrupt")));
                    }
                    Err(error) => return Err(RegistryError::Internal(error.to_string())),
                };
                self.cache.insert(&digest, bytes.clone());
                bytes
            }
        };
        Ok(Manifest { digest, media_type: row.media_type, bytes })
    }

    /// Tag names after `last`, at most `limit`; the bool says whether more follow.
    pub fn tags(
        &self,
        repository: &RepositoryRef,
        last: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        let mut tags =
            self.views.load().tags(&repository.did, &repository.repository, last, limit.saturating_add(1))?;
        let more = tags.len() > limit;
        tags.truncate(limit);
        Ok((tags, more))
    }

    /// Repository names (`handle/repo`, or `did/repo` when the handle is unknown).
    pub fn catalog(&self, last: Option<&str>, limit: usize) -> Result<(Vec<String>, bool), RegistryError> {
        let views = self.views.load();
        let after = match last {
            Some(last) => {
                let resolved = resolve_in(&views, last).ok();
                resolved.map(|reference| (reference.did, reference.repository))
            }
            None => None,
        };
        let rows = views
            .repositories(after.as_ref().map(|(did, repo)| (did.as_str(), repo.as_str())), limit.saturating_add(1))?;
        let more = rows.len() > limit;
        let mut names = Vec::with_capacity(rows.len().min(limit));
        for (did, repository) in rows.into_iter().take(limit) {
            // the handle only while it names this DID (verified), so every listed name pulls
            let verified = match views.identity(&did)?.and_then(|row| row.handle) {
                Some(handle) if views.did_for_handle(&handle)?.as_deref() == Some(did.as_str()) => Some(handle),
                _ => None,
            };
            names.push(format!("{}/{repository}", verified.unwrap_or(did)));
        }
        Ok((names, more))
    }

    /// The OCI image index of manifests in the owner's repositories whose subject is `digest`.
    pub fn referrers(
        &self,
        repository: &RepositoryRef,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> Result<Value, RegistryError> {
        if !is_sha256_digest(digest) {
            return Err(RegistryError::DigestInvalid(digest.to_string()));
        }
        let mut manifests = Vec::new();
        for (referrer, row) in self.views.load().referrers(&repository.did, digest)? {
            let artifact = row.artifact_type.clone().or_else(|| self.artifact_type_of(&referrer));
            if artifact_type.is_some_and(|wanted| artifact.as_deref() != Some(wanted)) {
                continue;
            }
            let size = match row.size {
                Some(size) => size,
                None => self.content.get(&referrer).ok().flatten().map(|bytes| bytes.len() as i64).unwrap_or(0),
            };
            let mut descriptor = json!({ "mediaType": row.media_type, "digest": referrer, "size": size });
            if let Some(artifact) = artifact {
                descriptor["artifactType"] = json!(artifact);
            }
            if !row.annotations.is_empty() {
                descriptor["annotations"] = json!(row.annotations);
            }
            manifests.push(descriptor);
        }
        Ok(
            json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests }),
        )
    }

    /// `artifactType` from the stored manifest bytes, or its config media type (OCI rules).
    fn artifact_type_of(&self, digest: &str) -> Option<String> {
        let bytes = self.content.get(digest).ok().flatten()?;
        let manifest: Value = serde_json::from_slice(&bytes).ok()?;
        manifest
            .get("artifactType")
            .and_then(Value::as_str)
            .or_else(|| manifest.get("config")?.get("mediaType")?.as_str())
            .map(str::to_string)
    }

    /// Where a blob referenced by a manifest of this repository lives.
    pub fn blob(&self, repository: &RepositoryRef, digest: &str) -> Result<BlobLocation, RegistryError> {
        if !is_sha256_digest(digest) {
            return Err(RegistryError::DigestInvalid(digest.to_string()));
        }
        let views = self.views.load();
        let referencing = views.blob_referrers(&repository.did, &repository.repository, digest)?;
        for manifest_digest in referencing {
            let Some(row) = views.manifest(&repository.did, &manifest_digest)? else { continue };
            let size = row.blobs().find(|(blob, _)| *blob == digest).and_then(|(_, size)| size);
            let hold_endpoint = match &row.hold_did {
                Some(hold) => {
                    views.identity(hold)?.and_then(|identity| identity.hold_endpoint.or(identity.pds_endpoint))
                }
                None => None,
            }
            .or(row.hold_endpoint.clone());
            return Ok(BlobLocation { digest: digest.to_string(), hold_did: row.hold_did, hold_endpoint, size });
        }
        Err(RegistryError::BlobUnknown(format!("{digest} in {}", repository.name)))
    }
}

/// `alice.test/web/app` or `did:plc:…/web/app` → the owner's DID and the repository.
fn resolve_in(views: &Views, name: &str) -> Result<RepositoryRef, RegistryError> {
    let Some((identity, repository)) = name.split_once('/') else {
        return Err(RegistryError::NameInvalid(format!("{name:?} is not <handle or did>/<repository>")));
    };
    if !is_valid_identity(identity) || !is_valid_repository(repository) {
        return Err(RegistryError::NameInvalid(name.to_string()));
    }
    let did = if identity.starts_with("did:") {
        identity.to_string()
    } else {
        views.did_for_handle(identity)?.ok_or_else(|| RegistryError::NameUnknown(name.to_string()))?
    };
    if views.repository(&did, repository)?.is_none() {
        return Err(RegistryError::NameUnknown(name.to_string()));
    }
    Ok(RepositoryRef { did, repository: repository.to_string(), name: name.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_distribution_grammar() {
        for good in ["hello", "web/nginx-mini", "a/b/c", "my_app", "my__app", "a--b", "v1.2"] {
            assert!(is_valid_repository(good), "{good}");
        }
        for bad in ["", "Hello", "../etc", "a//b", "a/", "-a", "a-", "a..b", "a/../b", "a b", "a%2f"] {
            assert!(!is_valid_repository(bad), "{bad}");
        }
        assert!(is_valid_tag("v1.0.0-rc_1") && is_valid_tag("_x") && !is_valid_tag(".x") && !is_valid_tag("a/b"));
        assert!(
            is_valid_identity("alice.test")
                && is_valid_identity("did:plc:abc123")
                && is_valid_identity("did:web:hold.example")
        );
        assert!(
            !is_valid_identity("alice")
                && !is_valid_identity("did:plc:")
                && !is_valid_identity("..")
                && !is_valid_identity("did:web:a/b")
        );
    }
}
