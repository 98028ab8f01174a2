//! The index schema: which fields a repository document has, how each is indexed, and how a
//! [`SearchDoc`] becomes a tantivy document.
//!
//! Text fields go through tantivy's default analyzer (split on anything that is not a letter or
//! digit, so `my-nginx_build/v2.1` gives `my nginx build v2 1`; lowercase; drop tokens over 40
//! bytes). Raw fields hold one exact, lowercased value each and serve filters, exact-name
//! boosts and deletes. What a results page shows is stored, so a search never reads the views.

use tantivy::DateTime;
use tantivy::TantivyDocument;
use tantivy::schema::{
    DateOptions, DateTimePrecision, FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing,
    TextOptions,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::browse::SearchDoc;

/// Bump when the schema or what goes into a field changes: an index of another version is
/// wiped on open and rebuilt from the views.
pub const SEARCH_SCHEMA_VERSION: u32 = 1;

/// At most this many tags are stored for display (all of them are indexed).
pub const SHOWN_TAGS: usize = 10;

/// Long READMEs are indexed up to this many bytes: enough for every word that matters.
const README_INDEXED_BYTES: usize = 64 * 1024;
/// Repositories with thousands of tags index the first ones only.
const TAGS_INDEXED: usize = 1000;

/// Field handles, resolved once from the schema.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    /// `did \0 repository`: the document's identity, for deletes.
    pub id: Field,
    pub did: Field,
    /// Handle words (`alice`, `bsky`, `social`), stored.
    pub handle: Field,
    /// The whole lowercased handle: exact and prefix matches.
    pub handle_raw: Field,
    /// Repository name words, stored.
    pub repository: Field,
    /// The whole lowercased repository name.
    pub repository_raw: Field,
    /// The last `/` segment of the lowercased repository name.
    pub repository_leaf: Field,
    /// `handle/repository` and `did/repository`, lowercased.
    pub full_name: Field,
    pub description: Field,
    pub readme: Field,
    pub annotations: Field,
    /// Tag words, for free text.
    pub tags: Field,
    /// Exact tags, for `tag:`.
    pub tags_raw: Field,
    /// The first [`SHOWN_TAGS`] tags, stored only.
    pub tags_shown: Field,
    pub tag_count: Field,
    /// `os/arch` and `os/arch/variant`, lowercased, indexed only.
    pub platform: Field,
    pub os: Field,
    /// `arch` and `arch/variant`.
    pub arch: Field,
    /// The platforms as published, stored only.
    pub platforms_shown: Field,
    /// Distinct real platforms (not `unknown/unknown` attestations).
    pub platform_count: Field,
    /// Hold DIDs or endpoints, lowercased, plus their host name.
    pub hold: Field,
    pub holds_shown: Field,
    pub last_push: Field,
    pub stars: Field,
    pub size: Field,
    pub manifests: Field,
    /// `repository \0 handle-or-did \0 did`, lowercased: the name order, unique per document.
    pub sort_name: Field,
    /// Scan facts: `scanned`, `critical`, `fixable`, indexed only.
    pub vuln: Field,
}

pub(crate) const STARS: &str = "stars";
pub(crate) const SIZE: &str = "size";
pub(crate) const LAST_PUSH: &str = "last_push";
pub(crate) const SORT_NAME: &str = "sort_name";

impl Fields {
    pub fn resolve(schema: &Schema) -> Result<Fields, tantivy::TantivyError> {
        let field = |name: &str| schema.get_field(name);
        Ok(Fields {
            id: field("id")?,
            did: field("did")?,
            handle: field("handle")?,
            handle_raw: field("handle_raw")?,
            repository: field("repository")?,
            repository_raw: field("repository_raw")?,
            repository_leaf: field("repository_leaf")?,
            full_name: field("full_name")?,
            description: field("description")?,
            readme: field("readme")?,
            annotations: field("annotations")?,
            tags: field("tags")?,
            tags_raw: field("tags_raw")?,
            tags_shown: field("tags_shown")?,
            tag_count: field("tag_count")?,
            platform: field("platform")?,
            os: field("os")?,
            arch: field("arch")?,
            platforms_shown: field("platforms_shown")?,
            platform_count: field("platform_count")?,
            hold: field("hold")?,
            holds_shown: field("holds_shown")?,
            last_push: field(LAST_PUSH)?,
            stars: field(STARS)?,
            size: field(SIZE)?,
            manifests: field("manifests")?,
            sort_name: field(SORT_NAME)?,
            vuln: field("vuln")?,
        })
    }
}

pub(crate) fn schema() -> Schema {
    let words = |stored: bool| {
        let indexing = TextFieldIndexing::default()
            .set_tokenizer("default")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions);
        let options = TextOptions::default().set_indexing_options(indexing);
        if stored { options.set_stored() } else { options }
    };
    let mut builder = Schema::builder();
    builder.add_text_field("id", STRING);
    builder.add_text_field("did", STRING | STORED);
    builder.add_text_field("handle", words(true));
    builder.add_text_field("handle_raw", STRING);
    builder.add_text_field("repository", words(true));
    builder.add_text_field("repository_raw", STRING);
    builder.add_text_field("repository_leaf", STRING);
    builder.add_text_field("full_name", STRING);
    builder.add_text_field("description", words(true));
    builder.add_text_field("readme", words(false));
    builder.add_text_field("annotations", words(false));
    builder.add_text_field("tags", words(false));
    builder.add_text_field("tags_raw", STRING);
    builder.add_text_field("tags_shown", STORED);
    builder.add_u64_field("tag_count", STORED);
    builder.add_text_field("platform", STRING);
    builder.add_text_field("os", STRING);
    builder.add_text_field("arch", STRING);
    builder.add_text_field("platforms_shown", STORED);
    builder.add_u64_field("platform_count", INDEXED | FAST);
    builder.add_text_field("hold", STRING);
    builder.add_text_field("holds_shown", STORED);
    builder.add_date_field(
        LAST_PUSH,
        DateOptions::default().set_indexed().set_fast().set_stored().set_precision(DateTimePrecision::Seconds),
    );
    builder.add_u64_field(STARS, INDEXED | FAST | STORED);
    builder.add_u64_field(SIZE, INDEXED | FAST | STORED);
    builder.add_u64_field("manifests", STORED);
    builder.add_text_field(SORT_NAME, FAST);
    builder.add_text_field("vuln", STRING);
    builder.build()
}

/// `did \0 repository`: the term that identifies a document.
pub(crate) fn document_id(did: &str, repository: &str) -> String {
    format!("{did}\0{repository}")
}

/// Architecture spellings people use, mapped to the OCI name.
pub fn normalize_arch(arch: &str) -> String {
    let arch = arch.trim().to_lowercase();
    match arch.as_str() {
        "x86_64" | "x86-64" | "x64" => "amd64".to_string(),
        "aarch64" => "arm64".to_string(),
        "i386" | "i686" | "x86" => "386".to_string(),
        "armhf" | "armv7" | "armv7l" => "arm/v7".to_string(),
        "armel" | "armv6" => "arm/v6".to_string(),
        _ => arch,
    }
}

/// Lowercased forms a hold can be named by: the value itself and, for `did:web:` DIDs and URLs,
/// its host name.
pub(crate) fn hold_names(hold: &str) -> Vec<String> {
    let hold = hold.trim().to_lowercase();
    let mut names = vec![hold.clone()];
    let host = if let Some(host) = hold.strip_prefix("did:web:") {
        Some(host.split(':').next().unwrap_or(host).replace("%3a", ":"))
    } else if let Some((_, rest)) = hold.split_once("://") {
        rest.split(['/', '?', '#']).next().map(str::to_string)
    } else {
        None
    };
    if let Some(host) = host.filter(|host| !host.is_empty() && *host != hold) {
        names.push(host);
    }
    names
}

/// Seconds since the epoch of an RFC 3339 time, `None` when it does not parse.
pub(crate) fn parse_time(value: &str) -> Option<i64> {
    OffsetDateTime::parse(value.trim(), &Rfc3339).ok().map(OffsetDateTime::unix_timestamp)
}

pub(crate) fn format_time(seconds: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(seconds).ok()?.format(&Rfc3339).ok()
}

/// The name-order key: repository, then owner, then DID, so it is unique per document.
pub(crate) fn sort_name(doc: &SearchDoc) -> String {
    let owner = doc.handle.as_deref().unwrap_or(&doc.did);
    format!("{}\0{}\0{}", doc.repository.to_lowercase(), owner.to_lowercase(), doc.did)
}

/// Cuts at a char boundary at or below `limit` bytes.
fn truncated(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub(crate) fn to_document(fields: &Fields, doc: &SearchDoc) -> TantivyDocument {
    let mut out = TantivyDocument::new();
    let repository = doc.repository.to_lowercase();
    out.add_text(fields.id, document_id(&doc.did, &doc.repository));
    out.add_text(fields.did, &doc.did);
    if let Some(handle) = doc.handle.as_deref().filter(|handle| !handle.is_empty()) {
        out.add_text(fields.handle, handle);
        out.add_text(fields.handle_raw, handle.to_lowercase());
        out.add_text(fields.full_name, format!("{}/{repository}", handle.to_lowercase()));
    }
    out.add_text(fields.full_name, format!("{}/{repository}", doc.did.to_lowercase()));
    out.add_text(fields.repository, &doc.repository);
    out.add_text(fields.repository_raw, &repository);
    out.add_text(fields.repository_leaf, repository.rsplit('/').next().unwrap_or(&repository));
    if let Some(description) = doc.description.as_deref() {
        out.add_text(fields.description, description);
    }
    if let Some(readme) = doc.readme.as_deref() {
        out.add_text(fields.readme, truncated(readme, README_INDEXED_BYTES));
    }
    for annotation in &doc.annotations {
        out.add_text(fields.annotations, annotation);
    }
    for tag in doc.tags.iter().take(TAGS_INDEXED) {
        out.add_text(fields.tags, tag);
        out.add_text(fields.tags_raw, tag.to_lowercase());
    }
    for tag in doc.tags.iter().take(SHOWN_TAGS) {
        out.add_text(fields.tags_shown, tag);
    }
    out.add_u64(fields.tag_count, doc.tags.len() as u64);

    let mut platforms: Vec<String> = Vec::new();
    for platform in &doc.platforms {
        out.add_text(fields.platforms_shown, platform);
        let lowered = platform.trim().to_lowercase();
        let mut parts = lowered.splitn(3, '/');
        let (Some(os), Some(arch)) = (parts.next(), parts.next()) else { continue };
        if os.is_empty() || arch.is_empty() || os == "unknown" || arch == "unknown" {
            continue;
        }
        let arch = match parts.next() {
            Some(variant) if !variant.is_empty() => normalize_arch(&format!("{arch}/{variant}")),
            _ => normalize_arch(arch),
        };
        let base_arch = arch.split('/').next().unwrap_or(&arch).to_string();
        out.add_text(fields.os, os);
        out.add_text(fields.arch, &arch);
        out.add_text(fields.platform, format!("{os}/{arch}"));
        if base_arch != arch {
            out.add_text(fields.arch, &base_arch);
            out.add_text(fields.platform, format!("{os}/{base_arch}"));
        }
        let full = format!("{os}/{arch}");
        if !platforms.contains(&full) {
            platforms.push(full);
        }
    }
    out.add_u64(fields.platform_count, platforms.len() as u64);

    for hold in &doc.holds {
        out.add_text(fields.holds_shown, hold);
        for name in hold_names(hold) {
            out.add_text(fields.hold, name);
        }
    }
    if let Some(seconds) = doc.last_push.as_deref().and_then(parse_time) {
        out.add_date(fields.last_push, DateTime::from_timestamp_secs(seconds));
    }
    out.add_u64(fields.stars, doc.stars);
    out.add_u64(fields.size, doc.size);
    out.add_u64(fields.manifests, doc.manifests);
    out.add_text(fields.sort_name, sort_name(doc));
    for token in &doc.vulnerabilities {
        out.add_text(fields.vuln, token);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_names_include_the_host() {
        assert_eq!(hold_names("did:web:Hold01.atcr.io"), vec!["did:web:hold01.atcr.io", "hold01.atcr.io"]);
        assert_eq!(hold_names("https://hold.example.com/x"), vec!["https://hold.example.com/x", "hold.example.com"]);
        assert_eq!(hold_names("did:plc:abc"), vec!["did:plc:abc"]);
    }

    #[test]
    fn arch_aliases() {
        assert_eq!(normalize_arch("x86_64"), "amd64");
        assert_eq!(normalize_arch("AArch64"), "arm64");
        assert_eq!(normalize_arch("arm/v7"), "arm/v7");
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        assert_eq!(truncated("héllo", 2), "h");
        assert_eq!(truncated("abc", 10), "abc");
    }

    #[test]
    fn times_round_trip() {
        let seconds = parse_time("2026-01-02T03:04:05Z").expect("valid time");
        assert_eq!(format_time(seconds).as_deref(), Some("2026-01-02T03:04:05Z"));
        assert_eq!(parse_time("yesterday"), None);
    }
}
