//! Browsing: the read models behind the web pages and the JSON API (home, user, repository and
//! manifest pages). Everything here is computed from the projections; nothing calls the network.

use std::collections::BTreeMap;

use serde::Serialize;

/// A repository as listed on the home, user and search pages.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Default, Serialize)]
pub struct NetworkStats {
    pub users: u64,
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub stars: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HomePage {
    pub stats: NetworkStats,
    /// Newest pushes first.
    pub recent: Vec<RepoCard>,
    /// Most stars first.
    pub most_starred: Vec<RepoCard>,
    /// Repositories that appeared most recently (first event), newest first.
    pub new_repositories: Vec<RepoCard>,
}

#[derive(Debug, Clone, Serialize)]
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
    /// Upstream time of the first event atcr holds for this DID (RFC 3339).
    pub joined: Option<String>,
    pub repository_count: u64,
    /// Live manifests across all repositories.
    pub image_count: u64,
    pub stars_received: u64,
    pub repositories: Vec<RepoCard>,
}

/// One tag on the repository page.
#[derive(Debug, Clone, Serialize)]
pub struct TagSummary {
    pub name: String,
    pub digest: String,
    pub media_type: Option<String>,
    pub platforms: Vec<String>,
    pub multi_arch: bool,
    /// Bytes of the image (config + layers), or of all platforms for an index.
    pub size: Option<u64>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
pub struct LayerEntry {
    pub digest: String,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlatformEntry {
    pub platform: Option<String>,
    pub digest: String,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReferrerEntry {
    pub digest: String,
    pub media_type: String,
    pub artifact_type: Option<String>,
    pub size: Option<u64>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ManifestKind {
    /// A multi-platform index: every platform with its own manifest.
    Index { platforms: Vec<PlatformEntry> },
    /// A single image: its config and layers.
    Image { config: Option<LayerEntry>, layers: Vec<LayerEntry> },
}

#[derive(Debug, Clone, Serialize)]
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
    /// Tags currently pointing at this digest.
    pub tags: Vec<String>,
    pub subject: Option<String>,
    pub kind: ManifestKind,
    /// Signatures, SBOMs, attestations whose `subject` is this manifest.
    pub referrers: Vec<ReferrerEntry>,
    pub pull_name: String,
    pub oci_client: String,
}
