//! The search projection: one tantivy document per repository, built from the registry views.
//!
//! Why a separate index: the views answer "what is at this key"; search needs ranked full text
//! with typo tolerance, filters and sorts over every repository, which redb cannot do fast.
//! The index is disposable like the views: it is a function of them, and can always be
//! rebuilt from scratch ([`SearchProjection::rebuild`]).
//!
//! - [`SearchIndex`]: the index directory, one writer, one reader reloaded after every commit
//!   (so what a commit published is visible to the next search, deterministically). The log
//!   offset the index reflects is stored in the tantivy commit payload, in the same commit as
//!   the documents (invariant: the checkpoint never runs ahead of, or behind, the documents).
//! - [`SearchProjection`]: what the projection runner calls after each committed views batch;
//!   it recomputes the touched repositories' documents and batches commits (at most one per
//!   [`COMMIT_WINDOW`]) so that a burst of batches costs one commit and an appended event is
//!   searchable well within a second.
//! - [`SearchRequest`] → [`SearchResults`]: structured search. The query language that produces
//!   requests lives in the query crate; this module knows no syntax.

mod projection;
mod query;
mod schema;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tantivy::collector::sort_key::{SortByStaticFastValue, SortByString};
use tantivy::collector::{Count, DocSetCollector, TopDocs};
use tantivy::directory::MmapDirectory;
use tantivy::merge_policy::{LogMergePolicy, NoMergePolicy};
use tantivy::query::Query;
use tantivy::schema::Value;
use tantivy::{
    DateTime, DocAddress, Index, IndexReader, IndexWriter, Order, ReloadPolicy, Searcher, TantivyDocument, Term,
};

use crate::ProjectionError;
use crate::browse::SearchDoc;

pub use projection::{COMMIT_WINDOW, RebuildReport, SearchProjection, SearchSource};
pub use schema::{SEARCH_SCHEMA_VERSION, SHOWN_TAGS, normalize_arch};

use query::QueryBuilder;
use schema::{Fields, LAST_PUSH, SIZE, SORT_NAME, STARS, document_id, format_time};

/// Memory the index writer's one thread may use before it flushes a segment: a bound, not an
/// allocation (tantivy grows its arena as documents come). A rebuild of 100,000 repositories
/// (180 MB of README text) fits in one segment, so there is nothing to merge after it; the old
/// 64 MiB over two threads cut five segments whose merge took 1.4–1.6 s of the rebuild.
const WRITER_MEMORY_BYTES: usize = 1024 * 1024 * 1024;
/// Most results one page may hold.
pub const MAX_PER_PAGE: usize = 100;
/// Deepest result a request may reach (offset + limit): beyond it, ask a narrower question.
pub const MAX_RESULT_WINDOW: usize = 10_000;
/// Marks the commit payload as ours: `atcr-search v<schema version> checkpoint=<offset|none>`.
const PAYLOAD_PREFIX: &str = "atcr-search v";

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index error: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("search index directory {path}: {source}")]
    Directory { path: PathBuf, source: std::io::Error },
    #[error("refusing to wipe {path}: it holds {file}, which is not part of a search index")]
    ForeignFile { path: PathBuf, file: String },
    #[error("search index lock poisoned")]
    Poisoned,
    #[error("the search index has no writer: opening a new one failed")]
    NoWriter,
    #[error("an earlier search index commit failed: {0}")]
    CommitFailed(String),
    #[error(transparent)]
    Views(#[from] ProjectionError),
}

/// Result order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchSort {
    /// Best match first: exact names, then name words, then the other fields.
    /// Without free text there is nothing to rank, and results come newest first.
    #[default]
    Relevance,
    /// Last push, newest first; repositories never pushed come last.
    Recent,
    /// Most stars first.
    Stars,
    /// Largest first.
    Size,
    /// Repository name A→Z, then owner.
    Name,
}

impl SearchSort {
    pub const ALL: [SearchSort; 5] =
        [SearchSort::Relevance, SearchSort::Recent, SearchSort::Stars, SearchSort::Size, SearchSort::Name];

    pub fn as_str(self) -> &'static str {
        match self {
            SearchSort::Relevance => "relevance",
            SearchSort::Recent => "recent",
            SearchSort::Stars => "stars",
            SearchSort::Size => "size",
            SearchSort::Name => "name",
        }
    }
}

impl FromStr for SearchSort {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "relevance" | "best" | "match" | "" => Ok(SearchSort::Relevance),
            "recent" | "updated" | "pushed" | "newest" => Ok(SearchSort::Recent),
            "stars" | "popular" => Ok(SearchSort::Stars),
            "size" | "largest" => Ok(SearchSort::Size),
            "name" | "alphabetical" => Ok(SearchSort::Name),
            other => Err(format!("unknown sort {other:?}: use relevance, recent, stars, size or name")),
        }
    }
}

/// A filter every result must pass (or, negated, must not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "filter", rename_all = "snake_case")]
pub enum SearchFilter {
    /// A DID, a whole handle, a handle's first label (`alice` → `alice.*`) or a handle prefix
    /// ending in `*`.
    User {
        value: String,
    },
    /// The whole repository name or its last segment; a prefix when it ends in `*`.
    Repository {
        value: String,
    },
    /// A hold DID or endpoint, or its host name.
    Hold {
        value: String,
    },
    Os {
        value: String,
    },
    /// `arm64`, `arm/v7`; common aliases (`x86_64`, `aarch64`) are understood.
    Arch {
        value: String,
    },
    /// `os/arch` or `os/arch/variant`.
    Platform {
        value: String,
    },
    Tag {
        value: String,
    },
    /// Last push in `[from, until)`, seconds since the epoch.
    Pushed {
        from: Option<i64>,
        until: Option<i64>,
    },
    /// Inclusive bounds.
    Stars {
        min: Option<u64>,
        max: Option<u64>,
    },
    /// Bytes, inclusive bounds.
    Size {
        min: Option<u64>,
        max: Option<u64>,
    },
    /// More than one platform.
    MultiArch,
    /// A tagged image has a vulnerability scan.
    Scanned,
    /// Scanned, and no tagged image has a critical finding.
    NoCritical,
    /// A tagged image has a finding with a fix.
    Fixable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FilterClause {
    #[serde(flatten)]
    pub filter: SearchFilter,
    pub negated: bool,
}

impl FilterClause {
    pub fn new(filter: SearchFilter) -> Self {
        FilterClause { filter, negated: false }
    }
}

/// A structured search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    /// Free-text words; each must match somewhere.
    pub words: Vec<String>,
    /// Words no result may contain (in its name, description, README or annotations).
    pub excluded_words: Vec<String>,
    /// Exact phrases, each in the name, description, README or annotations.
    pub phrases: Vec<String>,
    pub filters: Vec<FilterClause>,
    pub sort: SearchSort,
    pub offset: usize,
    /// Clamped to 1..=[`MAX_PER_PAGE`].
    pub limit: usize,
    /// The last word may still be being typed: also match it as a prefix of names.
    pub prefix_last_word: bool,
}

impl Default for SearchRequest {
    fn default() -> Self {
        SearchRequest {
            words: Vec::new(),
            excluded_words: Vec::new(),
            phrases: Vec::new(),
            filters: Vec::new(),
            sort: SearchSort::Relevance,
            offset: 0,
            limit: 20,
            prefix_last_word: true,
        }
    }
}

impl SearchRequest {
    pub fn words(text: &str) -> Self {
        SearchRequest { words: text.split_whitespace().map(str::to_string).collect(), ..SearchRequest::default() }
    }

    fn has_text(&self) -> bool {
        !self.words.is_empty() || !self.phrases.is_empty()
    }
}

/// One repository in the results: everything a results row shows.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub did: String,
    pub handle: Option<String>,
    pub repository: String,
    pub description: Option<String>,
    /// The first [`SHOWN_TAGS`] tags.
    pub tags: Vec<String>,
    pub tag_count: u64,
    pub platforms: Vec<String>,
    pub holds: Vec<String>,
    /// RFC 3339, UTC.
    pub last_push: Option<String>,
    pub stars: u64,
    pub size: u64,
    pub manifests: u64,
    /// The relevance score, for relevance-sorted results.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchResults {
    /// Every matching repository, not only this page.
    pub total: u64,
    /// The order actually used (relevance without free text falls back to recent).
    pub sort: SearchSort,
    pub hits: Vec<SearchHit>,
}

/// A page of (relevance score when ranked by it, document address).
type Ranked = Vec<(Option<f32>, DocAddress)>;

fn unscored<K>(hits: Vec<(K, DocAddress)>) -> Ranked {
    hits.into_iter().map(|(_, address)| (None, address)).collect()
}

/// Decompressed doc-store blocks kept per segment (tantivy's default is 100). Every hit shown
/// reads its stored fields from a 16 KB lz4 block of ~50 documents; with the default, a page of
/// hits spread over 100,000 repositories decompressed a block per hit (14 % of the CPU under the
/// issue-4 search benchmark). 2,048 blocks hold the whole store of 100,000 repositories (~30 MB
/// decompressed) and bound the memory for larger indexes.
const DOC_STORE_CACHE_BLOCKS: usize = 2048;

/// The index directory with its one writer and its reader.
pub struct SearchIndex {
    index: Index,
    fields: Fields,
    /// `None` only after [`SearchIndex::renew_writer`] dropped the writer and could not open
    /// another (tantivy allows one writer per directory, so the old one goes first).
    writer: Mutex<Option<IndexWriter>>,
    reader: IndexReader,
    /// The checkpoint in the last commit's payload (`None`: never committed with one).
    checkpoint: Mutex<Option<u64>>,
}

/// The index writer, locked; it is there (checked when the guard is made).
struct WriterGuard<'a>(std::sync::MutexGuard<'a, Option<IndexWriter>>);

impl std::ops::Deref for WriterGuard<'_> {
    type Target = IndexWriter;
    fn deref(&self) -> &IndexWriter {
        match self.0.as_ref() {
            Some(writer) => writer,
            None => unreachable!("a writer guard is only made over a writer"),
        }
    }
}

impl std::ops::DerefMut for WriterGuard<'_> {
    fn deref_mut(&mut self) -> &mut IndexWriter {
        match self.0.as_mut() {
            Some(writer) => writer,
            None => unreachable!("a writer guard is only made over a writer"),
        }
    }
}

/// The index's one writer: one indexing thread, bounded by [`WRITER_MEMORY_BYTES`].
fn new_writer(index: &Index) -> Result<IndexWriter, SearchError> {
    Ok(index.writer_with_num_threads(1, WRITER_MEMORY_BYTES)?)
}

fn directory_error(path: &Path) -> impl FnOnce(std::io::Error) -> SearchError + '_ {
    move |source| SearchError::Directory { path: path.to_path_buf(), source }
}

fn encode_payload(checkpoint: Option<u64>) -> String {
    match checkpoint {
        Some(offset) => format!("{PAYLOAD_PREFIX}{SEARCH_SCHEMA_VERSION} checkpoint={offset}"),
        None => format!("{PAYLOAD_PREFIX}{SEARCH_SCHEMA_VERSION} checkpoint=none"),
    }
}

/// (schema version, checkpoint) from a commit payload we wrote; `None` for anything else.
fn decode_payload(payload: &str) -> Option<(u32, Option<u64>)> {
    let rest = payload.strip_prefix(PAYLOAD_PREFIX)?;
    let (version, checkpoint) = rest.split_once(" checkpoint=")?;
    let version = version.parse().ok()?;
    let checkpoint = match checkpoint {
        "none" => None,
        offset => Some(offset.parse().ok()?),
    };
    Some((version, checkpoint))
}

/// Files tantivy keeps in an index directory: `meta.json`, `.managed.json`, lock files and
/// segment files named `<32 hex>.<ext>` (optionally `<32 hex>.<opstamp>.del`).
fn is_index_file(name: &str) -> bool {
    if matches!(name, "meta.json" | ".managed.json" | ".tantivy-meta.lock" | ".tantivy-writer.lock") {
        return true;
    }
    let Some((stem, _)) = name.split_once('.') else { return false };
    stem.len() == 32 && stem.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Removes an index of another schema version. Only index files are removed, and a directory
/// holding anything else is refused: a misconfigured path must not cost someone their data.
fn wipe(path: &Path) -> Result<(), SearchError> {
    let entries = std::fs::read_dir(path).map_err(directory_error(path))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(directory_error(path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map_err(directory_error(path))?.is_file();
        if !is_file || !is_index_file(&name) {
            return Err(SearchError::ForeignFile { path: path.to_path_buf(), file: name });
        }
        files.push(entry.path());
    }
    for file in files {
        std::fs::remove_file(&file).map_err(directory_error(path))?;
    }
    Ok(())
}

impl SearchIndex {
    /// Opens the index in `path`, creating it when missing. An index of another schema version
    /// is wiped: its [`checkpoint`](Self::checkpoint) is then `None`, which says "rebuild".
    pub fn open(path: &Path) -> Result<SearchIndex, SearchError> {
        std::fs::create_dir_all(path).map_err(directory_error(path))?;
        let schema = schema::schema();
        let directory = MmapDirectory::open(path).map_err(tantivy::TantivyError::from)?;
        let index = if Index::exists(&directory).map_err(tantivy::TantivyError::from)? {
            let index = Index::open(directory)?;
            let payload = index.load_metas()?.payload;
            let version = payload.as_deref().and_then(decode_payload).map(|(version, _)| version);
            if version == Some(SEARCH_SCHEMA_VERSION) && index.schema() == schema {
                index
            } else {
                tracing::warn!(
                    path = %path.display(),
                    ?version,
                    current = SEARCH_SCHEMA_VERSION,
                    "search index has another schema version, wiping it for a rebuild"
                );
                drop(index);
                wipe(path)?;
                let directory = MmapDirectory::open(path).map_err(tantivy::TantivyError::from)?;
                Index::create(directory, schema, Default::default())?
            }
        } else {
            Index::create(directory, schema, Default::default())?
        };
        Self::from_index(index)
    }

    fn from_index(index: Index) -> Result<SearchIndex, SearchError> {
        let fields = Fields::resolve(&index.schema())?;
        let mut writer = new_writer(&index)?;
        let payload = index.load_metas()?.payload;
        let checkpoint = match payload.as_deref().and_then(decode_payload) {
            Some((_, checkpoint)) => checkpoint,
            None => {
                // A new index: commit once so the directory carries our version from now on.
                let mut prepared = writer.prepare_commit()?;
                prepared.set_payload(&encode_payload(None));
                prepared.commit()?;
                None
            }
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .doc_store_cache_num_blocks(DOC_STORE_CACHE_BLOCKS)
            .try_into()?;
        Ok(SearchIndex { index, fields, writer: Mutex::new(Some(writer)), reader, checkpoint: Mutex::new(checkpoint) })
    }

    /// The log offset the last commit reflects; `None` when the index was never built.
    pub fn checkpoint(&self) -> Option<u64> {
        self.checkpoint.lock().ok().and_then(|checkpoint| *checkpoint)
    }

    /// Documents in the last commit.
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    fn writer(&self) -> Result<WriterGuard<'_>, SearchError> {
        let writer = self.writer.lock().map_err(|_| SearchError::Poisoned)?;
        if writer.is_none() {
            return Err(SearchError::NoWriter);
        }
        Ok(WriterGuard(writer))
    }

    /// Replaces the index writer (and its indexing thread) with a new one started from the
    /// calling thread, which it inherits its scheduling priority from. A rebuild builds the index
    /// on a thread at a lower priority (`rebuild::yield_to_the_writer`), and tantivy's indexing
    /// thread, started with the writer, kept that priority for as long as the index served. Call
    /// it with everything committed (what the old writer holds uncommitted is dropped) and not
    /// between [`clear`](Self::clear) and [`merge_all`](Self::merge_all): the new writer merges
    /// in the background, as after `merge_all`.
    pub fn renew_writer(&self) -> Result<(), SearchError> {
        let mut writer = self.writer.lock().map_err(|_| SearchError::Poisoned)?;
        // The directory's writer lock goes with the old writer.
        drop(writer.take());
        *writer = Some(new_writer(&self.index)?);
        Ok(())
    }

    /// Replaces the repository's document (visible after the next commit).
    pub fn upsert(&self, doc: &SearchDoc) -> Result<(), SearchError> {
        let writer = self.writer()?;
        writer.delete_term(Term::from_field_text(self.fields.id, &document_id(&doc.did, &doc.repository)));
        writer.add_document(schema::to_document(&self.fields, doc))?;
        Ok(())
    }

    /// Adds a document without removing an older one: only for filling an empty index.
    pub(crate) fn add(&self, doc: &SearchDoc) -> Result<(), SearchError> {
        self.writer()?.add_document(schema::to_document(&self.fields, doc))?;
        Ok(())
    }

    pub fn delete(&self, did: &str, repository: &str) -> Result<(), SearchError> {
        self.writer()?.delete_term(Term::from_field_text(self.fields.id, &document_id(did, repository)));
        Ok(())
    }

    /// Removes every repository of a DID, including ones added since the last commit.
    pub fn delete_did(&self, did: &str) -> Result<(), SearchError> {
        self.writer()?.delete_term(Term::from_field_text(self.fields.did, did));
        Ok(())
    }

    /// Segments the searches read.
    pub fn segment_count(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// Drops everything, committed or not (visible after the next commit), and stops background
    /// merges until [`merge_all`](Self::merge_all): a rebuild follows.
    pub(crate) fn clear(&self) -> Result<(), SearchError> {
        let mut writer = self.writer()?;
        writer.rollback()?;
        writer.delete_all_documents()?;
        writer.set_merge_policy(Box::new(NoMergePolicy));
        Ok(())
    }

    /// Drops every change since the last commit; background merges run again.
    pub(crate) fn rollback(&self) -> Result<(), SearchError> {
        self.writer()?.rollback()?;
        Ok(())
    }

    /// Merges every committed segment into one (searches touch one term dictionary per
    /// segment), then lets the writer merge in the background again.
    pub(crate) fn merge_all(&self) -> Result<(), SearchError> {
        let ids = self.index.searchable_segment_ids()?;
        {
            let mut writer = self.writer()?;
            if ids.len() > 1 {
                writer.merge(&ids).wait()?;
            }
            writer.set_merge_policy(Box::new(LogMergePolicy::default()));
        }
        self.reader.reload()?;
        Ok(())
    }

    /// Publishes every change so far together with the log offset they reflect, and makes them
    /// visible to searches before returning.
    pub fn commit(&self, checkpoint: u64) -> Result<(), SearchError> {
        let started = std::time::Instant::now();
        {
            let mut writer = self.writer()?;
            let mut prepared = writer.prepare_commit()?;
            prepared.set_payload(&encode_payload(Some(checkpoint)));
            prepared.commit()?;
        }
        self.reader.reload()?;
        *self.checkpoint.lock().map_err(|_| SearchError::Poisoned)? = Some(checkpoint);
        tracing::debug!(checkpoint, elapsed_ms = started.elapsed().as_millis() as u64, "search index committed");
        Ok(())
    }

    /// Repository names of a DID in the last commit.
    pub fn repositories_of(&self, did: &str) -> Result<Vec<String>, SearchError> {
        let searcher = self.reader.searcher();
        let query = tantivy::query::TermQuery::new(
            Term::from_field_text(self.fields.did, did),
            tantivy::schema::IndexRecordOption::Basic,
        );
        let addresses = searcher.search(&query, &DocSetCollector)?;
        let mut names = Vec::with_capacity(addresses.len());
        for address in addresses {
            let doc: TantivyDocument = searcher.doc(address)?;
            if let Some(name) = doc.get_first(self.fields.repository).and_then(|value| value.as_str()) {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }

    pub fn search(&self, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        let searcher = self.reader.searcher();
        let analyzer = self.index.tokenizer_for_field(self.fields.description)?;
        let query = QueryBuilder { fields: &self.fields, analyzer }.build(request);
        let limit = request.limit.clamp(1, MAX_PER_PAGE);
        let offset = request.offset.min(MAX_RESULT_WINDOW.saturating_sub(limit));
        let sort = match request.sort {
            SearchSort::Relevance if !request.has_text() => SearchSort::Recent,
            sort => sort,
        };
        let (total, ranked) = self.ranked(&searcher, query.as_ref(), sort, limit, offset)?;
        let mut hits = Vec::with_capacity(ranked.len());
        for (score, address) in ranked {
            hits.push(self.hit(&searcher, address, score)?);
        }
        Ok(SearchResults { total, sort, hits })
    }

    /// The page of (relevance score, address) in `sort` order, and the total hit count.
    fn ranked(
        &self,
        searcher: &Searcher,
        query: &dyn Query,
        sort: SearchSort,
        limit: usize,
        offset: usize,
    ) -> Result<(u64, Ranked), SearchError> {
        let top = TopDocs::with_limit(limit).and_offset(offset);
        let by_name = || (SortByString::for_field(SORT_NAME), Order::Asc);
        let (total, hits) = match sort {
            SearchSort::Relevance => {
                // One pass ranks and counts: with required clauses tantivy cannot skip
                // documents (no block-WAND), so a separate count would visit every match twice.
                let (hits, total) = searcher.search(query, &(top.order_by_score(), Count))?;
                (total, hits.into_iter().map(|(score, address)| (Some(score), address)).collect())
            }
            SearchSort::Recent => {
                let key = ((SortByStaticFastValue::<DateTime>::for_field(LAST_PUSH), Order::Desc), by_name());
                let (hits, total) = searcher.search(query, &(top.order_by(key), Count))?;
                (total, unscored(hits))
            }
            SearchSort::Stars => {
                let key = (
                    (SortByStaticFastValue::<u64>::for_field(STARS), Order::Desc),
                    (SortByStaticFastValue::<DateTime>::for_field(LAST_PUSH), Order::Desc),
                    by_name(),
                );
                let (hits, total) = searcher.search(query, &(top.order_by(key), Count))?;
                (total, unscored(hits))
            }
            SearchSort::Size => {
                let key = (
                    (SortByStaticFastValue::<u64>::for_field(SIZE), Order::Desc),
                    (SortByStaticFastValue::<DateTime>::for_field(LAST_PUSH), Order::Desc),
                    by_name(),
                );
                let (hits, total) = searcher.search(query, &(top.order_by(key), Count))?;
                (total, unscored(hits))
            }
            SearchSort::Name => {
                let (hits, total) = searcher.search(query, &(top.order_by(by_name()), Count))?;
                (total, unscored(hits))
            }
        };
        Ok((total as u64, hits))
    }

    fn hit(&self, searcher: &Searcher, address: DocAddress, score: Option<f32>) -> Result<SearchHit, SearchError> {
        let doc: TantivyDocument = searcher.doc(address)?;
        let fields = &self.fields;
        let text = |field| doc.get_first(field).and_then(|value| value.as_str()).map(str::to_string);
        let texts = |field| doc.get_all(field).filter_map(|value| value.as_str()).map(str::to_string).collect();
        let number = |field| doc.get_first(field).and_then(|value| value.as_u64()).unwrap_or(0);
        Ok(SearchHit {
            did: text(fields.did).unwrap_or_default(),
            handle: text(fields.handle),
            repository: text(fields.repository).unwrap_or_default(),
            description: text(fields.description),
            tags: texts(fields.tags_shown),
            tag_count: number(fields.tag_count),
            platforms: texts(fields.platforms_shown),
            holds: texts(fields.holds_shown),
            last_push: doc
                .get_first(fields.last_push)
                .and_then(|value| value.as_datetime())
                .and_then(|time| format_time(time.into_timestamp_secs())),
            stars: number(fields.stars),
            size: number(fields.size),
            manifests: number(fields.manifests),
            score,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        assert_eq!(decode_payload(&encode_payload(Some(42))), Some((SEARCH_SCHEMA_VERSION, Some(42))));
        assert_eq!(decode_payload(&encode_payload(None)), Some((SEARCH_SCHEMA_VERSION, None)));
        assert_eq!(decode_payload("something else"), None);
        assert_eq!(decode_payload("atcr-search vX checkpoint=1"), None);
    }

    #[test]
    fn index_files_are_recognized() {
        assert!(is_index_file("meta.json"));
        assert!(is_index_file("0123456789abcdef0123456789abcdef.idx"));
        assert!(is_index_file("0123456789abcdef0123456789abcdef.12.del"));
        assert!(!is_index_file("views.redb"));
        assert!(!is_index_file("log.redb"));
    }

    #[test]
    fn sorts_parse_with_aliases() {
        assert_eq!("Recent".parse::<SearchSort>(), Ok(SearchSort::Recent));
        assert_eq!("popular".parse::<SearchSort>(), Ok(SearchSort::Stars));
        assert!("sideways".parse::<SearchSort>().is_err());
        for sort in SearchSort::ALL {
            assert_eq!(sort.as_str().parse::<SearchSort>(), Ok(sort));
        }
    }

    #[test]
    fn a_foreign_directory_is_not_wiped() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("views.redb"), b"precious").expect("write");
        assert!(matches!(wipe(dir.path()), Err(SearchError::ForeignFile { .. })));
        assert!(dir.path().join("views.redb").exists());
    }

    #[test]
    fn an_index_of_another_version_is_wiped_and_reports_no_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let index = SearchIndex::open(dir.path()).expect("open");
            index
                .upsert(&SearchDoc { did: "did:plc:a".into(), repository: "app".into(), ..Default::default() })
                .unwrap();
            index.commit(7).expect("commit");
            assert_eq!(index.checkpoint(), Some(7));
        }
        {
            let index = SearchIndex::open(dir.path()).expect("reopen");
            assert_eq!(index.checkpoint(), Some(7));
            assert_eq!(index.num_docs(), 1);
            // Pretend an older build wrote this index.
            let mut writer = index.writer().expect("writer");
            let mut prepared = writer.prepare_commit().expect("prepare");
            prepared.set_payload("atcr-search v0 checkpoint=7");
            prepared.commit().expect("commit");
        }
        let index = SearchIndex::open(dir.path()).expect("open after version change");
        assert_eq!(index.checkpoint(), None);
        assert_eq!(index.num_docs(), 0);
    }
}
