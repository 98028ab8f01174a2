//! Read models for browsing: what the web pages, the JSON API and the search index need to know
//! about users and repositories, computed from the registry views.

use serde::{Deserialize, Serialize};

/// Everything the search index knows about one repository. Built from the registry views by
/// [`crate::Views::search_document`], so the index can always be rebuilt from them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchDoc {
    pub did: String,
    /// The owner's handle when known.
    pub handle: Option<String>,
    /// Repository name, may contain `/`.
    pub repository: String,
    /// One-line summary: the repository page's first paragraph, else the OCI
    /// `org.opencontainers.image.description` annotation.
    pub description: Option<String>,
    /// The repository page (`io.atcr.repo.page` description), markdown.
    pub readme: Option<String>,
    /// Other annotation values worth matching (title, vendor, licenses, source URL).
    pub annotations: Vec<String>,
    pub tags: Vec<String>,
    /// `os/arch[/variant]` of every image in the repository.
    pub platforms: Vec<String>,
    /// Hold DIDs (or endpoints when no DID is known) the repository's manifests use.
    pub holds: Vec<String>,
    /// RFC 3339 time of the newest manifest or tag change.
    pub last_push: Option<String>,
    pub stars: u64,
    /// Bytes: the sum of the distinct blobs the repository's manifests reference.
    pub size: u64,
    /// Live manifests (images, indexes and artifacts).
    pub manifests: u64,
}
