//! Browsing: the read models behind the web pages and the JSON API (home, user, repository and
//! manifest pages). Everything here is computed from the projections; nothing calls the network.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use atcr_projections::browse::{RepositoryFacts, SearchDoc, summary_line};
use atcr_projections::{ManifestRow, ProjectionError, Views};
use atcr_storage::records::is_sha256_digest;
use serde::Serialize;
use utoipa::ToSchema;

use crate::registry::RegistryQuery;

/// A repository as listed on the home, user and search pages.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RepoCard {
    pub did: String,
    /// The owner's handle, when its DID document names one.
    pub handle: Option<String>,
    pub repository: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// `os/arch[/variant]`, sorted, distinct.
    pub platforms: Vec<String>,
    pub stars: u64,
    pub size: u64,
    pub manifests: u64,
    /// RFC 3339.
    pub last_push: Option<String>,
}

/// Counts over the whole registry.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct NetworkStats {
    pub users: u64,
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub stars: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HomePage {
    pub stats: NetworkStats,
    /// Newest pushes first.
    pub recent: Vec<RepoCard>,
    /// Most stars first.
    pub most_starred: Vec<RepoCard>,
    /// Repositories that appeared most recently (first event), newest first.
    pub new_repositories: Vec<RepoCard>,
    /// Most pulled through this atcr, ever (empty without a pull log).
    pub most_pulled: Vec<crate::holds::PulledRepo>,
    /// Pulls grew most in the last 7 days against the 7 before.
    pub trending: Vec<crate::holds::PulledRepo>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserPage {
    pub did: String,
    pub handle: Option<String>,
    /// False when the handle in the DID document is missing or does not verify.
    pub handle_valid: bool,
    pub pds_endpoint: Option<String>,
    /// `#account` status: false when deactivated, taken down or deleted.
    pub active: bool,
    /// Preferred pull client from `io.atcr.sailor.profile` (`docker` when unset).
    pub oci_client: String,
    pub default_hold: Option<String>,
    pub default_hold_status: Option<HoldStatus>,
    /// Upstream time of the first event atcr holds for this DID (RFC 3339).
    pub joined: Option<String>,
    pub repository_count: u64,
    /// Live manifests across all repositories.
    pub image_count: u64,
    pub stars_received: u64,
    pub repositories: Vec<RepoCard>,
}

/// One tag on the repository page.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TagSummary {
    pub name: String,
    pub digest: String,
    pub media_type: Option<String>,
    pub platforms: Vec<String>,
    pub multi_arch: bool,
    /// Bytes of the image (config + layers), or of all platforms for an index.
    pub size: Option<u64>,
    pub updated_at: Option<String>,
    /// The image's vulnerability scan, when a hold published one.
    pub scan: Option<crate::scans::ScanSummary>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RepositoryPage {
    pub did: String,
    pub handle: Option<String>,
    pub repository: String,
    pub description: Option<String>,
    /// Markdown from `io.atcr.repo.page`; the web layer renders and sanitizes it.
    pub readme: Option<String>,
    /// OCI annotations of the newest image (title, source, documentation, licenses...).
    pub annotations: BTreeMap<String, String>,
    pub source_url: Option<String>,
    pub documentation_url: Option<String>,
    /// `docker`, `podman`, `buildah`, `nerdctl`, `crane` or `none`, from the owner's profile.
    pub oci_client: String,
    /// The name to pull: `<handle or did>/<repository>`; the web layer prefixes the host.
    pub pull_name: String,
    pub tags: Vec<TagSummary>,
    pub stars: u64,
    pub size: u64,
    pub manifests: u64,
    pub last_push: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LayerEntry {
    pub digest: String,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PlatformEntry {
    pub platform: Option<String>,
    pub digest: String,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReferrerEntry {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: Option<u64>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ManifestKind {
    /// A multi-platform index: every platform with its own manifest.
    Index { platforms: Vec<PlatformEntry> },
    /// A single image: its config and layers.
    Image { config: Option<LayerEntry>, layers: Vec<LayerEntry> },
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ManifestPage {
    pub did: String,
    pub handle: Option<String>,
    pub repository: String,
    /// The tag the page was opened by, if any.
    pub reference_tag: Option<String>,
    pub digest: String,
    pub media_type: String,
    pub created_at: Option<String>,
    /// Total bytes (config + layers, or every platform's for an index).
    pub size: Option<u64>,
    pub annotations: BTreeMap<String, String>,
    pub hold: Option<String>,
    pub hold_status: Option<HoldStatus>,
    /// Tags currently pointing at this digest.
    pub tags: Vec<String>,
    pub subject: Option<String>,
    pub kind: ManifestKind,
    /// Signatures, SBOMs, attestations whose `subject` is this manifest.
    pub referrers: Vec<ReferrerEntry>,
    pub pull_name: String,
    pub oci_client: String,
}

/// Why a browse answer failed. Unknown users and repositories are `Ok(None)`, not errors.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    #[error("views: {0}")]
    Views(#[from] ProjectionError),
    #[error("pull log: {0}")]
    Pulls(#[from] atcr_storage::StorageError),
}

/// How many repositories each home page list shows.
const HOME_LIST: usize = 12;

/// Answers the browse pages from the registry views.
#[derive(Clone)]
pub struct Browse {
    registry: RegistryQuery,
    /// atcr's own pull counts (`crate::holds`); `None`: no pull analytics.
    pulls: Option<crate::holds::PullLog>,
    counter: Option<crate::holds::PullCounter>,
}

impl Browse {
    pub fn new(registry: RegistryQuery) -> Self {
        Browse { registry, pulls: None, counter: None }
    }

    /// Counts pulls in `pulls` and answers pull analytics from it.
    pub fn with_pulls(mut self, pulls: crate::holds::PullLog) -> Self {
        self.counter = Some(crate::holds::PullCounter::new(pulls.recorder(), self.registry.clone()));
        self.pulls = Some(pulls);
        self
    }

    pub fn pull_log(&self) -> Option<&crate::holds::PullLog> {
        self.pulls.as_ref()
    }

    /// What `/v2` records its manifest pulls with, when pulls are counted.
    pub fn pull_counter(&self) -> Option<&crate::holds::PullCounter> {
        self.counter.as_ref()
    }

    pub(crate) fn registry_views(&self) -> Arc<Views> {
        self.views()
    }

    fn views(&self) -> Arc<Views> {
        self.registry.views().clone()
    }

    pub fn home(&self) -> Result<HomePage, BrowseError> {
        let views = self.views();
        let counts = views.counts()?;
        let cards = |pairs: Vec<(String, String)>| -> Result<Vec<RepoCard>, BrowseError> {
            let mut out = Vec::with_capacity(pairs.len());
            for (did, repository) in pairs {
                if let Some(card) = repo_card(&views, &did, &repository)? {
                    out.push(card);
                }
            }
            Ok(out)
        };
        Ok(HomePage {
            stats: NetworkStats {
                users: counts.identities,
                repositories: counts.repositories,
                manifests: counts.manifests,
                tags: counts.tags,
                stars: counts.stars,
            },
            recent: cards(views.recently_pushed(HOME_LIST)?)?,
            most_starred: cards(views.most_starred(HOME_LIST)?)?,
            new_repositories: cards(views.newest_repositories(HOME_LIST)?)?,
            most_pulled: self.most_pulled(HOME_LIST)?,
            trending: self.trending(crate::holds::today(), HOME_LIST)?,
        })
    }

    /// A user by handle or DID.
    pub fn user(&self, handle_or_did: &str) -> Result<Option<UserPage>, BrowseError> {
        let views = self.views();
        let Some(did) = owner_did(&views, handle_or_did)? else { return Ok(None) };
        let identity = views.identity(&did)?;
        let repositories = views.repositories_of(&did)?;
        if identity.is_none() && repositories.is_empty() {
            return Ok(None);
        }
        let identity = identity.unwrap_or_default();
        let profile = views.profile(&did)?.unwrap_or_default();
        let mut cards = Vec::with_capacity(repositories.len());
        let mut image_count = 0;
        for (repository, _) in &repositories {
            if let Some(card) = repo_card(&views, &did, repository)? {
                image_count += card.manifests;
                cards.push(card);
            }
        }
        cards.sort_by(|left, right| right.last_push.cmp(&left.last_push).then(left.repository.cmp(&right.repository)));
        Ok(Some(UserPage {
            handle_valid: handle_is_consistent(&views, &did, identity.handle.as_deref())?,
            handle: identity.handle,
            pds_endpoint: identity.pds_endpoint,
            active: identity.active,
            oci_client: profile.oci_client.unwrap_or_else(|| "docker".to_string()),
            default_hold_status: profile.default_hold.as_deref().map(|hold| hold_status(&views, hold)).transpose()?,
            default_hold: profile.default_hold,
            joined: views.first_seen(&did)?,
            repository_count: cards.len() as u64,
            image_count,
            stars_received: views.stars_received(&did)?,
            repositories: cards,
            did,
        }))
    }

    pub fn repository(&self, owner: &str, repository: &str) -> Result<Option<RepositoryPage>, BrowseError> {
        let views = self.views();
        let Some(did) = owner_did(&views, owner)? else { return Ok(None) };
        let Some(row) = views.repository(&did, repository)? else { return Ok(None) };
        let manifests = views.repository_manifests(&did, repository)?;
        let tags = views.tag_rows(&did, repository)?;
        let facts = RepositoryFacts::of(&manifests, &tags)?;
        let by_digest: BTreeMap<&str, &ManifestRow> =
            manifests.iter().map(|(digest, manifest)| (digest.as_str(), manifest)).collect();
        let mut summaries: Vec<TagSummary> = tags
            .iter()
            .map(|(name, tag)| {
                let manifest = by_digest.get(tag.digest.as_str()).copied();
                let platforms = manifest.map(platforms_of).unwrap_or_default();
                TagSummary {
                    name: name.clone(),
                    digest: tag.digest.clone(),
                    media_type: manifest.map(|manifest| manifest.media_type.clone()),
                    multi_arch: platforms.len() > 1,
                    platforms,
                    size: manifest.map(|manifest| total_size(manifest, &by_digest)),
                    updated_at: tag.pushed_at.clone().or_else(|| tag.updated_at.clone()),
                    scan: crate::scans::scan_summary(&views, &did, &tag.digest).ok().flatten(),
                }
            })
            .collect();
        // Newest first, like every registry's tag list; `latest` leads among equals.
        summaries.sort_by(|left, right| {
            right.updated_at.cmp(&left.updated_at).then((right.name == "latest").cmp(&(left.name == "latest")))
        });
        let identity = views.identity(&did)?.unwrap_or_default();
        let profile = views.profile(&did)?.unwrap_or_default();
        let readme = views.page(&did, repository)?.and_then(|page| page.description);
        let description = readme.as_deref().and_then(summary_line).or_else(|| {
            facts.annotations.get("org.opencontainers.image.description").and_then(|text| summary_line(text))
        });
        let link = |name: &str| facts.annotations.get(name).filter(|url| is_http_url(url)).cloned();
        Ok(Some(RepositoryPage {
            pull_name: format!("{}/{repository}", pull_owner(&views, &did, identity.handle.as_deref())?),
            handle: verified_handle(&views, &did, identity.handle)?,
            repository: repository.to_string(),
            description,
            readme,
            source_url: link("org.opencontainers.image.source"),
            documentation_url: link("org.opencontainers.image.documentation")
                .or_else(|| link("org.opencontainers.image.url")),
            annotations: facts.annotations.clone(),
            oci_client: profile.oci_client.unwrap_or_else(|| "docker".to_string()),
            tags: summaries,
            stars: views.star_count(&did, repository)?,
            size: facts.size,
            manifests: manifests.len() as u64,
            last_push: row.last_push,
            did,
        }))
    }

    /// A manifest by tag or digest.
    pub fn manifest(
        &self,
        owner: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<ManifestPage>, BrowseError> {
        let views = self.views();
        let Some(did) = owner_did(&views, owner)? else { return Ok(None) };
        let (digest, reference_tag) = if is_sha256_digest(reference) {
            (reference.to_string(), None)
        } else {
            match views.tag(&did, repository, reference)? {
                Some(tag) => (tag.digest, Some(reference.to_string())),
                None => return Ok(None),
            }
        };
        let Some(manifest) = views.manifest(&did, &digest)? else { return Ok(None) };
        if manifest.repository != repository {
            return Ok(None);
        }
        let tags = views
            .tag_rows(&did, repository)?
            .into_iter()
            .filter(|(_, tag)| tag.digest == digest)
            .map(|(name, _)| name)
            .collect();
        let kind = if manifest.children.is_empty() {
            let size_of = |digest: &str| {
                manifest.blobs().find(|(blob, _)| *blob == digest).and_then(|(_, size)| size.and_then(to_u64))
            };
            let config = manifest.config.as_ref().map(|digest| LayerEntry {
                digest: digest.clone(),
                media_type: None,
                size: size_of(digest),
            });
            let layers = manifest
                .layers
                .iter()
                .map(|(digest, media_type, size)| LayerEntry {
                    digest: digest.clone(),
                    media_type: media_type.clone(),
                    size: size.and_then(to_u64),
                })
                .collect();
            ManifestKind::Image { config, layers }
        } else {
            ManifestKind::Index {
                platforms: manifest
                    .children
                    .iter()
                    .map(|child| PlatformEntry {
                        platform: child.platform.clone(),
                        digest: child.digest.clone(),
                        media_type: child.media_type.clone(),
                        size: child.size.and_then(|size| u64::try_from(size).ok()),
                    })
                    .collect(),
            }
        };
        let referrers = views
            .referrers(&did, &digest)?
            .into_iter()
            .map(|(digest, row)| ReferrerEntry {
                digest,
                media_type: row.media_type,
                artifact_type: row.artifact_type,
                size: row.size.and_then(|size| u64::try_from(size).ok()),
                annotations: row.annotations,
            })
            .collect();
        let identity = views.identity(&did)?.unwrap_or_default();
        let profile = views.profile(&did)?.unwrap_or_default();
        Ok(Some(ManifestPage {
            pull_name: format!("{}/{repository}", pull_owner(&views, &did, identity.handle.as_deref())?),
            handle: verified_handle(&views, &did, identity.handle)?,
            repository: repository.to_string(),
            reference_tag,
            size: Some(if manifest.children.is_empty() {
                manifest_size(&manifest)
            } else {
                let siblings = views.repository_manifests(&did, repository)?;
                let by_digest = siblings.iter().map(|(digest, row)| (digest.as_str(), row)).collect();
                total_size(&manifest, &by_digest)
            }),
            media_type: manifest.media_type.clone(),
            created_at: manifest.created_at.clone(),
            annotations: manifest.annotations.clone(),
            hold_status: manifest.hold_did.as_deref().map(|hold| hold_status(&views, hold)).transpose()?,
            hold: manifest.hold_did.clone().or_else(|| manifest.hold_endpoint.clone()),
            tags,
            subject: manifest.subject.clone(),
            kind,
            referrers,
            oci_client: profile.oci_client.unwrap_or_else(|| "docker".to_string()),
            digest,
            did,
        }))
    }
}

impl Browse {
    /// Who starred a repository (starrer DID, the star's `createdAt`), with the owner's DID;
    /// `None` when the repository is unknown.
    #[allow(clippy::type_complexity)]
    pub fn stargazers(
        &self,
        owner: &str,
        repository: &str,
    ) -> Result<Option<(String, Vec<(String, String)>)>, BrowseError> {
        let views = self.views();
        let Some(did) = owner_did(&views, owner)? else { return Ok(None) };
        if views.repository(&did, repository)?.is_none() {
            return Ok(None);
        }
        let stars = views.stargazers(&did, repository)?;
        Ok(Some((did, stars)))
    }
}

/// What atcr knows about reaching a hold, from the log's resolution events (never the network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HoldStatus {
    /// The hold's DID document names this service endpoint.
    Reachable { endpoint: String },
    /// Resolving the hold failed for good: the outbound policy refused it (a did:web on a
    /// loopback or private address), its document is malformed, or it never answered.
    Unreachable { reason: String },
    /// Not resolved (yet), or not a DID.
    Unknown,
}

pub(crate) fn hold_status(views: &Views, hold: &str) -> Result<HoldStatus, BrowseError> {
    if !hold.starts_with("did:") {
        return Ok(HoldStatus::Unknown);
    }
    if let Some(reason) = views.identity_failure(hold)? {
        return Ok(HoldStatus::Unreachable { reason });
    }
    Ok(match views.identity(hold)?.and_then(|identity| identity.hold_endpoint) {
        Some(endpoint) => HoldStatus::Reachable { endpoint },
        None => HoldStatus::Unknown,
    })
}

/// A handle or DID → the DID, when the views know it.
pub(crate) fn owner_did(views: &Views, handle_or_did: &str) -> Result<Option<String>, BrowseError> {
    if handle_or_did.starts_with("did:") {
        return Ok(Some(handle_or_did.to_string()));
    }
    Ok(views.did_for_handle(handle_or_did)?)
}

/// True when the handle the DID document claims maps back to this DID in our handle index.
/// (Verifying the handle's own DNS/HTTPS resolution is issue 6's identity work.)
/// The handle to show and link an owner by on repository and manifest pages: only one that
/// verifies (the user page shows a claimed one, flagged).
pub(crate) fn verified_handle(views: &Views, did: &str, handle: Option<String>) -> Result<Option<String>, BrowseError> {
    Ok(if handle_is_consistent(views, did, handle.as_deref())? { handle } else { None })
}

/// What a pull command names the owner by: the handle while it verifies (it then resolves to
/// the DID in `/v2`), the DID otherwise.
fn pull_owner<'a>(views: &Views, did: &'a str, handle: Option<&'a str>) -> Result<&'a str, BrowseError> {
    Ok(if handle_is_consistent(views, did, handle)? { handle.unwrap_or(did) } else { did })
}

fn handle_is_consistent(views: &Views, did: &str, handle: Option<&str>) -> Result<bool, BrowseError> {
    let Some(handle) = handle else { return Ok(false) };
    Ok(views.did_for_handle(handle)?.as_deref() == Some(did))
}

pub(crate) fn repo_card(views: &Views, did: &str, repository: &str) -> Result<Option<RepoCard>, BrowseError> {
    let Some(document) = views.search_document(did, repository)? else { return Ok(None) };
    Ok(Some(card_from_document(document)))
}

/// A search document is exactly what a card shows.
pub fn card_from_document(document: SearchDoc) -> RepoCard {
    RepoCard {
        did: document.did,
        handle: document.handle,
        repository: document.repository,
        description: document.description,
        tags: document.tags,
        platforms: document.platforms,
        stars: document.stars,
        size: document.size,
        manifests: document.manifests,
        last_push: document.last_push,
    }
}

fn platforms_of(manifest: &ManifestRow) -> Vec<String> {
    let set: BTreeSet<String> = manifest.children.iter().filter_map(|child| child.platform.clone()).collect();
    set.into_iter().collect()
}

/// Bytes of an image (its blobs), or of an index: every platform image's blobs when the views
/// hold that image, else the size its descriptor gives.
fn total_size(manifest: &ManifestRow, by_digest: &BTreeMap<&str, &ManifestRow>) -> u64 {
    let blobs: u64 = manifest.blobs().filter_map(|(_, size)| size.and_then(to_u64)).sum();
    let children: u64 = manifest
        .children
        .iter()
        .filter_map(|child| match by_digest.get(child.digest.as_str()) {
            Some(image) => Some(total_size(image, &BTreeMap::new())),
            None => child.size.and_then(to_u64),
        })
        .sum();
    blobs + children
}

/// Bytes of an image (its blobs) or of an index (its children's manifests and what they say).
fn manifest_size(manifest: &ManifestRow) -> u64 {
    let blobs: u64 = manifest.blobs().filter_map(|(_, size)| size.and_then(|size| u64::try_from(size).ok())).sum();
    let children: u64 =
        manifest.children.iter().filter_map(|child| child.size.and_then(|size| u64::try_from(size).ok())).sum();
    blobs + children
}

fn to_u64(size: i64) -> Option<u64> {
    u64::try_from(size).ok()
}

fn is_http_url(text: &str) -> bool {
    (text.starts_with("https://") || text.starts_with("http://")) && !text.chars().any(char::is_whitespace)
}
