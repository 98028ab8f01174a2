//! Read models for browsing: what the web pages, the JSON API and the search index need to know
//! about users and repositories, computed from the registry views.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use crate::compact::PackedRef;
use crate::views::{
    ACTIVITY, ActivityRow, FIRST_SEEN, HANDLES, IDENTITIES, MANIFESTS, ManifestRow, PROFILES, PageRow, ProfileRow,
    RECORD_HISTORY, REPO_MANIFESTS, REPO_PAGES, REPOS_BY_FIRST, REPOS_BY_PUSH, REPOS_BY_STARS, REPOSITORIES,
    RepositoryRow, STAR_COUNTS, STARS, TAG_HISTORY, TAGS, TagMoveRow, TagRow, activity_entry, decode, key, offset_key,
};
use crate::{ProjectionError, Views};
use atcr_storage::{EventLog, StoredEvent};

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
    /// Scan facts of the tagged images: `scanned`, `critical`, `fixable` (`scans.rs`).
    pub vulnerabilities: Vec<String>,
}

/// The OCI annotation keys whose values the search index matches besides the description.
const SEARCHABLE_ANNOTATIONS: [&str; 5] = [
    "org.opencontainers.image.title",
    "org.opencontainers.image.vendor",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.source",
    "org.opencontainers.image.authors",
];
const DESCRIPTION_ANNOTATION: &str = "org.opencontainers.image.description";

/// Counts over the whole registry views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewCounts {
    pub identities: u64,
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub stars: u64,
}

/// Scans the keys of `table` that start with `prefix`, yielding (key without prefix, value).
fn scan_prefix<V: redb::Value + 'static>(
    read: &ReadTransaction,
    table: redb::TableDefinition<&'static str, V>,
    prefix: &str,
    each: impl FnMut(&str, V::SelfType<'_>) -> Result<bool, ProjectionError>,
) -> Result<(), ProjectionError> {
    scan_prefix_in(&read.open_table(table)?, prefix, each)
}

/// [`scan_prefix`] in a table already open.
fn scan_prefix_in<V: redb::Value + 'static>(
    table: &ReadTable<V>,
    prefix: &str,
    mut each: impl FnMut(&str, V::SelfType<'_>) -> Result<bool, ProjectionError>,
) -> Result<(), ProjectionError> {
    for entry in table.range(prefix..)? {
        let (key, value) = entry?;
        let Some(rest) = key.value().strip_prefix(prefix) else { break };
        if !each(rest, value.value())? {
            break;
        }
    }
    Ok(())
}

/// A log offset from the end of a history key (16 hex digits).
fn parse_offset(table: &str, text: &str) -> Result<u64, ProjectionError> {
    u64::from_str_radix(text, 16)
        .map_err(|_| ProjectionError::Corrupt(format!("{table}: key ends with {text:?}, not an offset")))
}

/// The first paragraph of a markdown text, without heading marks, as one line of plain text.
pub fn summary_line(markdown: &str) -> Option<String> {
    let paragraph = markdown
        .split("\n\n")
        .map(str::trim)
        .find(|block| !block.is_empty() && !block.starts_with("```") && !block.starts_with('!'))?;
    let text: String = paragraph
        .lines()
        .map(|line| line.trim_start_matches('#').trim())
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(match text.char_indices().nth(280) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    })
}

impl Views {
    fn reader(&self) -> Result<ReadTransaction, ProjectionError> {
        Ok(self.database().begin_read()?)
    }

    /// The repository names of a DID, in order.
    pub fn repository_keys_of(&self, did: &str) -> Result<Vec<String>, ProjectionError> {
        Ok(self.repositories_of(did)?.into_iter().map(|(name, _)| name).collect())
    }

    /// The repositories of a DID with their rows, in name order.
    pub fn repositories_of(&self, did: &str) -> Result<Vec<(String, RepositoryRow)>, ProjectionError> {
        let read = self.reader()?;
        let mut out = Vec::new();
        scan_prefix(&read, REPOSITORIES, &format!("{did}\0"), |name, bytes| {
            out.push((name.to_string(), decode("repositories", bytes)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// The live manifests of a repository, by digest.
    pub fn repository_manifests(
        &self,
        did: &str,
        repository: &str,
    ) -> Result<Vec<(String, ManifestRow)>, ProjectionError> {
        let read = self.reader()?;
        repository_manifests(&read, did, repository)
    }

    /// Every tag of a repository with its row, in name order.
    pub fn tag_rows(&self, did: &str, repository: &str) -> Result<Vec<(String, TagRow)>, ProjectionError> {
        let read = self.reader()?;
        tag_rows(&read, did, repository)
    }

    pub fn star_count(&self, did: &str, repository: &str) -> Result<u64, ProjectionError> {
        let read = self.reader()?;
        let counts = read.open_table(STAR_COUNTS)?;
        Ok(counts.get(key(&[did, repository]).as_str())?.map(|count| count.value()).unwrap_or(0))
    }

    /// Stars on all of a DID's repositories.
    pub fn stars_received(&self, did: &str) -> Result<u64, ProjectionError> {
        let read = self.reader()?;
        let mut total = 0u64;
        scan_prefix(&read, STAR_COUNTS, &format!("{did}\0"), |_, count| {
            total = total.saturating_add(count);
            Ok(true)
        })?;
        Ok(total)
    }

    /// Who starred a repository: (starrer DID, created at), in starrer order.
    pub fn stargazers(&self, did: &str, repository: &str) -> Result<Vec<(String, String)>, ProjectionError> {
        let read = self.reader()?;
        let mut out = Vec::new();
        scan_prefix(&read, STARS, &format!("{}\0", key(&[did, repository])), |rest, created| {
            if let Some((starrer, _rkey)) = rest.split_once('\0') {
                out.push((starrer.to_string(), created.to_string()));
            }
            Ok(true)
        })?;
        Ok(out)
    }

    pub fn page(&self, did: &str, repository: &str) -> Result<Option<PageRow>, ProjectionError> {
        let read = self.reader()?;
        let pages = read.open_table(REPO_PAGES)?;
        pages.get(key(&[did, repository]).as_str())?.map(|bytes| decode("repo_pages", bytes.value())).transpose()
    }

    pub fn profile(&self, did: &str) -> Result<Option<ProfileRow>, ProjectionError> {
        let read = self.reader()?;
        let profiles = read.open_table(PROFILES)?;
        profiles.get(did)?.map(|bytes| decode("profiles", bytes.value())).transpose()
    }

    /// Upstream time of the first event atcr holds for a DID.
    pub fn first_seen(&self, did: &str) -> Result<Option<String>, ProjectionError> {
        let read = self.reader()?;
        let table = read.open_table(FIRST_SEEN)?;
        Ok(table.get(did)?.map(|time| time.value().to_string()))
    }

    /// Row counts of the main views (O(1) each).
    pub fn counts(&self) -> Result<ViewCounts, ProjectionError> {
        let read = self.reader()?;
        Ok(ViewCounts {
            identities: read.open_table(IDENTITIES)?.len()?,
            repositories: read.open_table(REPOSITORIES)?.len()?,
            manifests: read.open_table(MANIFESTS)?.len()?,
            tags: read.open_table(TAGS)?.len()?,
            stars: read.open_table(STARS)?.len()?,
        })
    }

    /// Repositories by newest push first.
    pub fn recently_pushed(&self, limit: usize) -> Result<Vec<(String, String)>, ProjectionError> {
        let read = self.reader()?;
        let table = read.open_table(REPOS_BY_PUSH)?;
        ranked(table.iter()?.rev(), 1, limit)
    }

    /// Repositories by most stars first.
    pub fn most_starred(&self, limit: usize) -> Result<Vec<(String, String)>, ProjectionError> {
        let read = self.reader()?;
        let table = read.open_table(REPOS_BY_STARS)?;
        ranked(table.iter()?, 1, limit)
    }

    /// Repositories by first appearance in the log, newest first.
    pub fn newest_repositories(&self, limit: usize) -> Result<Vec<(String, String)>, ProjectionError> {
        let read = self.reader()?;
        let table = read.open_table(REPOS_BY_FIRST)?;
        ranked(table.iter()?.rev(), 1, limit)
    }

    /// Every change of a repository's tags (of one tag when `tag` is given), oldest first, as
    /// (tag, change).
    pub fn tag_history(
        &self,
        did: &str,
        repository: &str,
        tag: Option<&str>,
    ) -> Result<Vec<(String, TagMoveRow)>, ProjectionError> {
        let read = self.reader()?;
        let prefix = match tag {
            Some(tag) => format!("{}\0", key(&[did, repository, tag])),
            None => format!("{}\0", key(&[did, repository])),
        };
        let mut out = Vec::new();
        scan_prefix(&read, TAG_HISTORY, &prefix, |rest, bytes| {
            let name = match tag {
                Some(tag) => tag.to_string(),
                None => rest.rsplit_once('\0').map(|(name, _)| name.to_string()).unwrap_or_default(),
            };
            out.push((name, decode::<TagMoveRow>("tag_history", bytes)?));
            Ok(true)
        })?;
        out.sort_by_key(|(_, change)| change.offset);
        Ok(out)
    }

    /// The log offsets of every version of one record, oldest first: each is the event that put
    /// or deleted it.
    pub fn record_history(&self, did: &str, collection: &str, rkey: &str) -> Result<Vec<u64>, ProjectionError> {
        let read = self.reader()?;
        let mut out = Vec::new();
        scan_prefix(&read, RECORD_HISTORY, &format!("{}\0", key(&[did, collection, rkey])), |offset, ()| {
            out.push(parse_offset("record_history", offset)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// A DID's activity, newest first, starting below offset `before`: each entry is the record
    /// event at its offset in `log` (the log these views were built from), completed by what
    /// the views knew of a delete.
    pub fn activity(
        &self,
        log: &EventLog,
        did: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<ActivityRow>, ProjectionError> {
        let read = self.reader()?;
        let table = read.open_table(ACTIVITY)?;
        let low = format!("{did}\0");
        let high = match before {
            Some(before) => format!("{did}\0{before:016x}"),
            None => format!("{did}\u{1}"),
        };
        let mut out = Vec::new();
        for entry in table.range(low.as_str()..high.as_str())?.rev() {
            let (key, stored) = entry?;
            let offset = parse_offset("activity", key.value().strip_prefix(low.as_str()).unwrap_or_default())?;
            let Some(event) = log.event(offset)? else {
                return Err(ProjectionError::Corrupt(format!("activity: the log has no event at offset {offset}")));
            };
            if let Some(row) = activity_entry(offset, &event, stored.value())? {
                out.push(row);
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(out)
    }

    /// The activity entry of one stored event, when the views keep one for it.
    pub fn activity_of(&self, stored: &StoredEvent) -> Result<Option<ActivityRow>, ProjectionError> {
        let read = self.reader()?;
        let table = read.open_table(ACTIVITY)?;
        let Some(row) = table.get(key(&[&stored.event.did, &offset_key(stored.offset)]).as_str())? else {
            return Ok(None);
        };
        activity_entry(stored.offset, &stored.event, row.value())
    }

    /// The search document of a repository, or None when it has no manifests and no tags left.
    pub fn search_document(&self, did: &str, repository: &str) -> Result<Option<SearchDoc>, ProjectionError> {
        search_document_in(&self.reader()?, did, repository)
    }

    /// The search documents of many repositories, read in one transaction (a rebuild of the
    /// search index asks for every repository, a page at a time).
    pub fn search_documents(
        &self,
        repositories: &[(String, String)],
    ) -> Result<Vec<Option<SearchDoc>>, ProjectionError> {
        let read = self.reader()?;
        let tables = SearchTables::open(&read)?;
        repositories.iter().map(|(did, repository)| tables.document(&read, did, repository)).collect()
    }
}

/// Whether a search document reads `table`: [`search_document_in`] and everything it calls, and
/// the repository listing a rebuild of the index pages through. A rebuild writes these tables
/// first and commits them, then builds the search index while it writes the others
/// (`rebuild::build`), so a table read here and missing from this list would be read empty.
/// `tests/replay.rs` compares search answers of a rebuild with those of live views.
pub(crate) fn is_search_input(table: &str) -> bool {
    use redb::TableHandle;
    [
        REPOSITORIES.name(),
        REPO_MANIFESTS.name(),
        MANIFESTS.name(),
        TAGS.name(),
        IDENTITIES.name(),
        HANDLES.name(),
        REPO_PAGES.name(),
        STAR_COUNTS.name(),
        crate::scans::SCANS.name(),
        crate::scans::SCAN_REPORT_SUMMARIES.name(),
    ]
    .contains(&table)
}

fn search_document_in(
    read: &ReadTransaction,
    did: &str,
    repository: &str,
) -> Result<Option<SearchDoc>, ProjectionError> {
    SearchTables::open(read)?.document(read, did, repository)
}

type ReadTable<V> = redb::ReadOnlyTable<&'static str, V>;

/// The tables a search document reads, opened once for many documents: a rebuild of the index
/// reads 100,000 of them, and opening ten tables for each was 14 % of its reading thread.
struct SearchTables {
    repositories: ReadTable<&'static [u8]>,
    repo_manifests: ReadTable<()>,
    manifests: ReadTable<&'static [u8]>,
    tags: ReadTable<&'static [u8]>,
    identities: ReadTable<&'static [u8]>,
    handles: ReadTable<&'static str>,
    repo_pages: ReadTable<&'static [u8]>,
    star_counts: ReadTable<u64>,
    /// Whether any scan is recorded (most registries have none: then no tag's status is read).
    any_scans: bool,
}

impl SearchTables {
    fn open(read: &ReadTransaction) -> Result<Self, ProjectionError> {
        Ok(SearchTables {
            repositories: read.open_table(REPOSITORIES)?,
            repo_manifests: read.open_table(REPO_MANIFESTS)?,
            manifests: read.open_table(MANIFESTS)?,
            tags: read.open_table(TAGS)?,
            identities: read.open_table(IDENTITIES)?,
            handles: read.open_table(HANDLES)?,
            repo_pages: read.open_table(REPO_PAGES)?,
            star_counts: read.open_table(STAR_COUNTS)?,
            any_scans: crate::scans::any_scans(read)?,
        })
    }

    /// The search document of one repository (`None`: no such repository, or nothing in it).
    fn document(
        &self,
        read: &ReadTransaction,
        did: &str,
        repository: &str,
    ) -> Result<Option<SearchDoc>, ProjectionError> {
        let repository_key = key(&[did, repository]);
        let Some(row) = self
            .repositories
            .get(repository_key.as_str())?
            .map(|bytes| decode::<RepositoryRow>("repositories", bytes.value()))
            .transpose()?
        else {
            return Ok(None);
        };
        let manifests = manifest_bytes_of(&self.repo_manifests, &self.manifests, did, repository)?;
        // Tag rows are read only for a scan status: the document needs their names.
        let mut tags = Vec::new();
        scan_prefix_in(&self.tags, &format!("{}\0", repository_key), |tag, _| {
            tags.push(tag.to_string());
            Ok(true)
        })?;
        if manifests.is_empty() && tags.is_empty() {
            return Ok(None);
        }
        let handle = self
            .identities
            .get(did)?
            .map(|bytes| decode::<crate::IdentityRow>("identities", bytes.value()))
            .transpose()?
            .and_then(|identity| identity.handle);
        // Cards show, link and search by a handle only while it verifies (names this DID).
        let handle = match handle {
            Some(handle) if self.handles.get(handle.as_str())?.is_some_and(|owner| owner.value() == did) => {
                Some(handle)
            }
            _ => None,
        };
        let page = self
            .repo_pages
            .get(repository_key.as_str())?
            .map(|bytes| decode::<PageRow>("repo_pages", bytes.value()))
            .transpose()?;
        let stars = self.star_counts.get(repository_key.as_str())?.map(|count| count.value()).unwrap_or(0);
        let gists =
            manifests.iter().map(|bytes| decode::<ManifestGist>("manifests", bytes)).collect::<Result<Vec<_>, _>>()?;
        let facts = RepositoryFacts::of_manifests(&gists)?;
        let readme = page.and_then(|page| page.description);
        let description = readme
            .as_deref()
            .and_then(summary_line)
            .or_else(|| facts.annotations.get(DESCRIPTION_ANNOTATION).and_then(|text| summary_line(text)));
        let annotations =
            SEARCHABLE_ANNOTATIONS.iter().filter_map(|name| facts.annotations.get(*name).cloned()).collect();
        let vulnerabilities = if self.any_scans {
            crate::scans::scan_status_of_tags(read, did, &tags_of(&self.tags, did, repository)?)?.tokens()
        } else {
            Vec::new()
        };
        Ok(Some(SearchDoc {
            did: did.to_string(),
            handle,
            repository: repository.to_string(),
            description,
            readme,
            annotations,
            tags,
            platforms: facts.platforms.into_iter().collect(),
            holds: facts.holds.into_iter().collect(),
            last_push: row.last_push,
            stars,
            size: facts.size,
            vulnerabilities,
            manifests: manifests.len() as u64,
        }))
    }
}

/// What a repository's manifests say about it as a whole.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RepositoryFacts {
    pub platforms: BTreeSet<String>,
    pub holds: BTreeSet<String>,
    /// Sum of the distinct blobs' sizes.
    pub size: u64,
    /// Annotations of the newest image (by log offset) that has any.
    pub annotations: BTreeMap<String, String>,
}

impl RepositoryFacts {
    pub fn of(manifests: &[(String, ManifestRow)], _tags: &[(String, TagRow)]) -> Result<Self, ProjectionError> {
        RepositoryFacts::of_manifests(manifests.iter().map(|(_, manifest)| manifest))
    }

    fn of_manifests<M: ManifestFacts>(manifests: impl IntoIterator<Item = M>) -> Result<Self, ProjectionError> {
        let mut facts = RepositoryFacts::default();
        // Kept while the blobs borrowed from them are counted.
        let manifests: Vec<M> = manifests.into_iter().collect();
        let mut blobs: BTreeMap<PackedRef<'_>, u64> = BTreeMap::new();
        let mut newest_annotated: Option<(u64, &M)> = None;
        for manifest in &manifests {
            facts.platforms.extend(manifest.platforms().map(str::to_string));
            if let Some(hold) = manifest.hold() {
                facts.holds.insert(hold.to_string());
            }
            for (digest, size) in manifest.blobs() {
                blobs.insert(digest, size.and_then(|size| u64::try_from(size).ok()).unwrap_or(0));
            }
            if let Some(offset) = manifest.annotated_image_offset()
                && newest_annotated.is_none_or(|(newest, _)| newest < offset)
            {
                newest_annotated = Some((offset, manifest));
            }
        }
        facts.size = blobs.values().sum();
        facts.annotations =
            newest_annotated.map(|(_, manifest)| manifest.annotations()).transpose()?.unwrap_or_default();
        Ok(facts)
    }
}

/// What [`RepositoryFacts`] reads of a manifest: a decoded [`ManifestRow`] (repository pages),
/// or a [`ManifestGist`] borrowed from the row's bytes (search documents).
trait ManifestFacts {
    /// `os/arch[/variant]` of its children.
    fn platforms(&self) -> impl Iterator<Item = &str>;
    /// Its hold's DID, else its endpoint.
    fn hold(&self) -> Option<&str>;
    /// Every blob it references (the config, then the layers) with its size; a blob is the same
    /// blob exactly when its key is the same.
    fn blobs(&self) -> impl Iterator<Item = (PackedRef<'_>, Option<i64>)>;
    /// Its log offset when it is an image (no subject: not a signature or an attestation) with
    /// annotations.
    fn annotated_image_offset(&self) -> Option<u64>;
    fn annotations(&self) -> Result<BTreeMap<String, String>, ProjectionError>;
}

impl ManifestFacts for &ManifestRow {
    fn platforms(&self) -> impl Iterator<Item = &str> {
        self.children.iter().filter_map(|child| child.platform.as_deref())
    }

    fn hold(&self) -> Option<&str> {
        self.hold_did.as_deref().or(self.hold_endpoint.as_deref())
    }

    fn blobs(&self) -> impl Iterator<Item = (PackedRef<'_>, Option<i64>)> {
        ManifestRow::blobs(self).map(|(digest, size)| (PackedRef::Text(digest), size))
    }

    fn annotated_image_offset(&self) -> Option<u64> {
        (self.subject.is_none() && !self.annotations.is_empty()).then_some(self.offset)
    }

    fn annotations(&self) -> Result<BTreeMap<String, String>, ProjectionError> {
        Ok(self.annotations.clone())
    }
}

/// What a search document reads of a manifest row, borrowed from the row's bytes: [`ManifestRow`]
/// field by field in its order, with each string left as written. Decoding whole rows (every
/// digest spelled out in hex, every media type and annotation copied) was a third of building
/// the search documents of a rebuild. A test checks that the two read the same row alike.
#[derive(Debug, Deserialize)]
struct ManifestGist<'a> {
    _repository: &'a str,
    #[serde(borrow)]
    _rkey: PackedRef<'a>,
    #[serde(borrow)]
    _media_type: PackedRef<'a>,
    hold_did: Option<&'a str>,
    hold_endpoint: Option<&'a str>,
    #[serde(borrow)]
    subject: Option<PackedRef<'a>>,
    #[serde(borrow)]
    config: Option<PackedRef<'a>>,
    config_size: Option<i64>,
    #[serde(borrow)]
    layers: Vec<(PackedRef<'a>, Option<PackedRef<'a>>, Option<i64>)>,
    #[serde(borrow)]
    children: Vec<ChildGist<'a>>,
    #[serde(borrow)]
    annotations: Vec<(PackedRef<'a>, &'a str)>,
    _created_at: Option<&'a str>,
    offset: u64,
}

/// [`crate::views::ChildRow`] as [`ManifestGist`] reads it.
#[derive(Debug, Deserialize)]
struct ChildGist<'a> {
    #[serde(borrow)]
    _digest: PackedRef<'a>,
    #[serde(borrow)]
    _media_type: Option<PackedRef<'a>>,
    _size: Option<i64>,
    platform: Option<&'a str>,
}

impl ManifestFacts for &ManifestGist<'_> {
    fn platforms(&self) -> impl Iterator<Item = &str> {
        self.children.iter().filter_map(|child| child.platform)
    }

    fn hold(&self) -> Option<&str> {
        self.hold_did.or(self.hold_endpoint)
    }

    fn blobs(&self) -> impl Iterator<Item = (PackedRef<'_>, Option<i64>)> {
        let config = self.config.map(|digest| (digest, self.config_size));
        config.into_iter().chain(self.layers.iter().map(|(digest, _, size)| (*digest, *size)))
    }

    fn annotated_image_offset(&self) -> Option<u64> {
        (self.subject.is_none() && !self.annotations.is_empty()).then_some(self.offset)
    }

    fn annotations(&self) -> Result<BTreeMap<String, String>, ProjectionError> {
        self.annotations
            .iter()
            .map(|(key, value)| Ok((key.to_text::<postcard::Error>()?, value.to_string())))
            .collect::<Result<_, postcard::Error>>()
            .map_err(|error| ProjectionError::Corrupt(format!("manifests: an annotation key: {error}")))
    }
}

fn repository_manifests(
    read: &ReadTransaction,
    did: &str,
    repository: &str,
) -> Result<Vec<(String, ManifestRow)>, ProjectionError> {
    manifests_of(&read.open_table(REPO_MANIFESTS)?, &read.open_table(MANIFESTS)?, did, repository)
}

/// The rows of a repository's manifests as stored (encoded), in digest order.
fn manifest_bytes_of(
    repo_manifests: &ReadTable<()>,
    manifests: &ReadTable<&'static [u8]>,
    did: &str,
    repository: &str,
) -> Result<Vec<Vec<u8>>, ProjectionError> {
    let mut out = Vec::new();
    each_manifest_row(repo_manifests, manifests, did, repository, |_, bytes| {
        out.push(bytes.to_vec());
        Ok(())
    })?;
    Ok(out)
}

/// A repository's manifests with their rows, in digest order.
fn manifests_of(
    repo_manifests: &ReadTable<()>,
    manifests: &ReadTable<&'static [u8]>,
    did: &str,
    repository: &str,
) -> Result<Vec<(String, ManifestRow)>, ProjectionError> {
    let mut out = Vec::new();
    each_manifest_row(repo_manifests, manifests, did, repository, |digest, bytes| {
        out.push((digest.to_string(), decode("manifests", bytes)?));
        Ok(())
    })?;
    Ok(out)
}

/// Calls `each` with the digest and the stored row of each of a repository's manifests, in
/// digest order.
fn each_manifest_row(
    repo_manifests: &ReadTable<()>,
    manifests: &ReadTable<&'static [u8]>,
    did: &str,
    repository: &str,
    mut each: impl FnMut(&str, &[u8]) -> Result<(), ProjectionError>,
) -> Result<(), ProjectionError> {
    scan_prefix_in(repo_manifests, &format!("{}\0", key(&[did, repository])), |digest, ()| {
        if let Some(bytes) = manifests.get(key(&[did, digest]).as_str())? {
            each(digest, bytes.value())?;
        }
        Ok(true)
    })
}

pub(crate) fn tag_rows(
    read: &ReadTransaction,
    did: &str,
    repository: &str,
) -> Result<Vec<(String, TagRow)>, ProjectionError> {
    tags_of(&read.open_table(TAGS)?, did, repository)
}

/// A repository's tags with their rows, in name order.
fn tags_of(
    tags: &ReadTable<&'static [u8]>,
    did: &str,
    repository: &str,
) -> Result<Vec<(String, TagRow)>, ProjectionError> {
    let mut out = Vec::new();
    scan_prefix_in(tags, &format!("{}\0", key(&[did, repository])), |tag, bytes| {
        out.push((tag.to_string(), decode("tags", bytes)?));
        Ok(true)
    })?;
    Ok(out)
}

/// Reads `(did, repo)` pairs from a ranking table whose keys end in `did \0 repo` after `skip`
/// leading `\0`-separated parts.
fn ranked<'a>(
    entries: impl Iterator<
        Item = Result<(redb::AccessGuard<'a, &'static str>, redb::AccessGuard<'a, ()>), redb::StorageError>,
    >,
    skip: usize,
    limit: usize,
) -> Result<Vec<(String, String)>, ProjectionError> {
    let mut out = Vec::new();
    for entry in entries {
        let (key, _) = entry?;
        let mut parts = key.value().splitn(skip + 2, '\0').skip(skip);
        if let (Some(did), Some(repository)) = (parts.next(), parts.next()) {
            out.push((did.to_string(), repository.to_string()));
        }
        if out.len() == limit {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::{ChildRow, encode};

    const DIGEST_A: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const DIGEST_B: &str = "sha256:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn manifest(offset: u64, annotations: &[(&str, &str)]) -> ManifestRow {
        ManifestRow {
            repository: "app".into(),
            rkey: DIGEST_A.trim_start_matches("sha256:").into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            hold_did: None,
            hold_endpoint: Some("https://hold.example".into()),
            subject: None,
            config: Some(DIGEST_B.into()),
            config_size: Some(7),
            layers: vec![
                (DIGEST_A.into(), Some("application/vnd.oci.image.layer.v1.tar+gzip".into()), Some(100)),
                ("sha256:NOT-CANONICAL".into(), Some("text/x-own-type".into()), Some(5)),
            ],
            children: vec![ChildRow {
                digest: DIGEST_B.into(),
                media_type: None,
                size: Some(3),
                platform: Some("linux/arm64".into()),
            }],
            annotations: annotations.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect(),
            created_at: Some("2026-05-01T00:00:00Z".into()),
            offset,
        }
    }

    /// A search document reads manifest rows as gists borrowed from their bytes; the facts must
    /// be those the decoded rows give (platforms, holds, distinct blob sizes, the newest
    /// annotations of an image that is not a referrer).
    #[test]
    fn facts_from_gists_are_the_facts_from_decoded_rows() {
        let mut referrer = manifest(9, &[("org.opencontainers.image.title", "signature")]);
        referrer.subject = Some(DIGEST_A.into());
        referrer.hold_endpoint = None;
        referrer.hold_did = Some("did:web:hold.example".into());
        let mut other = manifest(3, &[("org.opencontainers.image.title", "newest"), ("my.own.key", "kept")]);
        other.layers.push((DIGEST_B.into(), None, Some(1_000)));
        other.children.push(ChildRow { digest: DIGEST_A.into(), media_type: None, size: None, platform: None });
        let rows = [manifest(1, &[("org.opencontainers.image.title", "older")]), other, referrer, manifest(2, &[])];
        let encoded: Vec<Vec<u8>> = rows.iter().map(encode).collect();
        let gists: Vec<ManifestGist<'_>> =
            encoded.iter().map(|bytes| decode::<ManifestGist>("manifests", bytes).unwrap()).collect();
        let from_gists = RepositoryFacts::of_manifests(&gists).unwrap();
        let from_rows = RepositoryFacts::of_manifests(rows.iter()).unwrap();
        assert_eq!(from_gists, from_rows);
        assert_eq!(from_rows.size, 7 + 100 + 5, "config and layers, each distinct blob once");
        assert_eq!(from_rows.annotations.get("my.own.key").map(String::as_str), Some("kept"));
        assert_eq!(from_rows.platforms, BTreeSet::from(["linux/arm64".to_string()]));
        assert_eq!(from_rows.holds.len(), 2);
        assert_eq!(gists.iter().map(|gist| gist.offset).collect::<Vec<_>>(), vec![1, 3, 9, 2]);
    }
}
