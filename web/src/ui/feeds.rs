//! Atom feeds of tag changes, for feed readers and automation that polls:
//!
//! - `/u/{owner}/feed.atom`: every tag a user created, moved or deleted, across their
//!   repositories (from the views' activity table);
//! - `/r/{owner}/{repository…}/-/feed.atom`: the tag timeline of one repository (the same moves
//!   as the UI's history, from `AuditQuery::tag_timeline`).
//!
//! Newest first, at most [`FEED_ENTRIES`] entries. An entry's id is the tag record's `at://` URI
//! with the log offset of the change (`at://did/io.atcr.tag/rkey#offset=42`): stable across
//! hosts, restarts and rebuilds, and the same in both feeds. Times come from the log (upstream
//! commit times), never from the clock. Written by `atom_syndication`, which escapes everything.

use atom_syndication::{Entry, Feed, FixedDateTime, Generator, Link, Person, Text};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use atcr_query::audit::{ActivityEntry, TagMove};

use super::format::{
    owner_name, path_segment, repository_feed_url, repository_url, site_base_for_host, tag_url, user_feed_url, user_url,
};
use super::{not_found_page, read, request_host, unavailable};
use crate::AppState;

/// The tag record collection (`io.atcr.tag`).
const TAG: &str = "io.atcr.tag";
/// Entries per feed.
pub const FEED_ENTRIES: usize = 50;
/// Activity rows one user feed looks through for tag changes (manifest pushes are between them).
const ACTIVITY_SCAN: usize = 1000;
pub const CONTENT_TYPE: &str = "application/atom+xml; charset=utf-8";
const CACHE_CONTROL: &str = "public, max-age=300";

/// One change, before it becomes an Atom entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    pub id: String,
    pub title: String,
    pub summary: String,
    /// Absolute URL of the page about it.
    pub link: String,
    /// RFC 3339 from the log; entries without one take the feed's time.
    pub time: Option<String>,
}

/// What the feed itself says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedHead {
    pub id: String,
    pub title: String,
    /// Absolute URL of the page the feed belongs to.
    pub alternate: String,
    /// Absolute URL of the feed.
    pub self_url: String,
    pub author: String,
    pub author_uri: String,
}

fn parse_time(text: Option<&str>) -> Option<FixedDateTime> {
    FixedDateTime::parse_from_rfc3339(text?).ok()
}

/// The Unix epoch: `updated` of a feed with no dated entry (Atom requires one).
fn epoch() -> FixedDateTime {
    FixedDateTime::parse_from_rfc3339("1970-01-01T00:00:00Z").unwrap_or_default()
}

fn link(href: &str, rel: &str, mime_type: Option<&str>) -> Link {
    Link { href: href.to_string(), rel: rel.to_string(), mime_type: mime_type.map(str::to_string), ..Link::default() }
}

/// The feed document (pure). `items` newest first.
pub fn build_feed(head: &FeedHead, items: &[FeedItem]) -> Feed {
    let updated = items.iter().filter_map(|item| parse_time(item.time.as_deref())).max().unwrap_or_else(epoch);
    let author = Person { name: head.author.clone(), uri: Some(head.author_uri.clone()), ..Person::default() };
    let entries = items
        .iter()
        .map(|item| Entry {
            id: item.id.clone(),
            title: Text::plain(item.title.clone()),
            updated: parse_time(item.time.as_deref()).unwrap_or(updated),
            links: vec![link(&item.link, "alternate", Some("text/html"))],
            summary: Some(Text::plain(item.summary.clone())),
            authors: vec![author.clone()],
            ..Entry::default()
        })
        .collect();
    Feed {
        id: head.id.clone(),
        title: Text::plain(head.title.clone()),
        updated,
        authors: vec![author],
        links: vec![
            link(&head.alternate, "alternate", Some("text/html")),
            link(&head.self_url, "self", Some("application/atom+xml")),
        ],
        generator: Some(Generator {
            value: "atcr".to_string(),
            uri: None,
            version: Some(env!("CARGO_PKG_VERSION").to_string()),
        }),
        entries,
        ..Feed::default()
    }
}

/// The feed as XML.
pub fn render_feed(feed: &Feed) -> Result<String, String> {
    let bytes = feed.write_to(Vec::new()).map_err(|error| error.to_string())?;
    String::from_utf8(bytes).map_err(|error| error.to_string())
}

/// `scheme://host` for absolute links: the proxy's `X-Forwarded-Proto` when it says http or
/// https; plain http for loopback names; https otherwise.
pub fn site_base(headers: &HeaderMap) -> String {
    let host = request_host(headers);
    let forwarded = headers.get("x-forwarded-proto").and_then(|value| value.to_str().ok()).map(str::trim);
    match forwarded {
        Some(scheme @ ("http" | "https")) => format!("{scheme}://{host}"),
        _ => site_base_for_host(&host),
    }
}

/// The id of the change at `offset` of the tag record `rkey`.
pub fn entry_id(did: &str, rkey: Option<&str>, offset: u64) -> String {
    match rkey {
        Some(rkey) => format!("at://{did}/{TAG}/{rkey}#offset={offset}"),
        None => format!("at://{did}#offset={offset}"),
    }
}

fn digest_text(digest: Option<&str>) -> String {
    digest.map_or_else(|| "(none)".to_string(), |digest| digest.to_string())
}

/// A repository timeline's move as a feed item.
pub fn tag_move_item(base: &str, owner: &str, did: &str, repository: &str, change: &TagMove) -> FeedItem {
    let name = format!("{owner}/{repository}:{}", change.tag);
    let (title, summary, link) = match change.change {
        "create" => (
            format!("{name} created"),
            format!("{} now names {}.", change.tag, digest_text(change.to.as_deref())),
            tag_url(owner, repository, &change.tag),
        ),
        "delete" => (
            format!("{name} deleted"),
            format!("{} named {} before it was deleted.", change.tag, digest_text(change.from.as_deref())),
            repository_url(owner, repository),
        ),
        _ => (
            format!("{name} moved"),
            format!(
                "{} moved from {} to {}.",
                change.tag,
                digest_text(change.from.as_deref()),
                digest_text(change.to.as_deref())
            ),
            tag_url(owner, repository, &change.tag),
        ),
    };
    FeedItem {
        id: entry_id(did, change.rkey.as_deref(), change.offset),
        title,
        summary,
        link: format!("{base}{link}"),
        time: change.time.clone(),
    }
}

/// A user's tag activity row as a feed item (`None` for other collections or rows that do not
/// say which tag).
pub fn activity_item(base: &str, owner: &str, did: &str, entry: &ActivityEntry) -> Option<FeedItem> {
    let row = &entry.row;
    if row.collection != TAG {
        return None;
    }
    let (repository, tag) = (row.repository.as_deref()?, row.tag.as_deref()?);
    let name = format!("{owner}/{repository}:{tag}");
    let (title, summary, link) = match row.action.as_str() {
        "delete" => (format!("{name} deleted"), format!("{tag} was deleted."), repository_url(owner, repository)),
        "create" => (
            format!("{name} created"),
            format!("{tag} now names {}.", digest_text(row.digest.as_deref())),
            tag_url(owner, repository, tag),
        ),
        _ => (
            format!("{name} updated"),
            format!("{tag} now names {}.", digest_text(row.digest.as_deref())),
            tag_url(owner, repository, tag),
        ),
    };
    Some(FeedItem {
        id: entry_id(did, Some(&row.rkey), row.offset),
        title,
        summary,
        link: format!("{base}{link}"),
        time: row.time.clone(),
    })
}

fn feed_response(head: &FeedHead, items: &[FeedItem]) -> Response {
    match render_feed(&build_feed(head, items)) {
        Ok(xml) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)),
                (header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL)),
            ],
            xml,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, feed = %head.self_url, "feed could not be written");
            super::error_page(StatusCode::INTERNAL_SERVER_ERROR, "The feed could not be written.")
        }
    }
}

/// `GET /u/{owner}/feed.atom`.
pub async fn user_feed(State(state): State<AppState>, Path(owner): Path<String>, headers: HeaderMap) -> Response {
    let Some(audit) = super::history::audit_query(&state) else { return unavailable("Feeds") };
    let lookup = owner.clone();
    let collected = read("user feed", move || {
        let mut entries = Vec::new();
        let mut before = None;
        let mut scanned = 0;
        let mut who = None;
        loop {
            let Some(page) = audit.activity(&lookup, before, atcr_query::audit::MAX_ACTIVITY_PAGE)? else {
                return Ok(None);
            };
            scanned += page.entries.len();
            who.get_or_insert_with(|| page.owner.clone());
            entries.extend(page.entries.into_iter().filter(|entry| entry.row.collection == TAG));
            match page.next_before {
                Some(next) if entries.len() < FEED_ENTRIES && scanned < ACTIVITY_SCAN => before = Some(next),
                _ => break,
            }
        }
        entries.truncate(FEED_ENTRIES);
        Ok::<_, atcr_query::audit::AuditError>(who.map(|who| (who, entries)))
    })
    .await;
    let (who, entries) = match collected {
        Ok(Some(found)) => found,
        Ok(None) => return not_found_page(&format!("atcr knows no user {owner}.")),
        Err(response) => return response,
    };
    let base = site_base(&headers);
    let name = owner_name(&who.did, who.handle.as_deref()).to_string();
    let items: Vec<FeedItem> =
        entries.iter().filter_map(|entry| activity_item(&base, &name, &who.did, entry)).collect();
    let head = FeedHead {
        id: format!("at://{}", who.did),
        title: format!("Tag changes of {name} · atcr"),
        alternate: format!("{base}{}", user_url(&name)),
        self_url: format!("{base}{}", user_feed_url(&name)),
        author: name.clone(),
        author_uri: format!("{base}{}", user_url(&name)),
    };
    feed_response(&head, &items)
}

/// `GET /r/{owner}/{repository…}/-/feed.atom`.
pub async fn repository_feed(state: &AppState, owner: String, repository: String, headers: &HeaderMap) -> Response {
    let Some(audit) = super::history::audit_query(state) else { return unavailable("Feeds") };
    let (lookup_owner, lookup_repository) = (owner.clone(), repository.clone());
    let timeline =
        match read("repository feed", move || audit.tag_timeline(&lookup_owner, &lookup_repository, None)).await {
            Ok(Some(timeline)) => timeline,
            Ok(None) => return not_found_page(&format!("atcr knows no repository {owner}/{repository}.")),
            Err(response) => return response,
        };
    let base = site_base(headers);
    let name = owner_name(&timeline.owner.did, timeline.owner.handle.as_deref()).to_string();
    let items: Vec<FeedItem> = timeline
        .moves
        .iter()
        .rev()
        .take(FEED_ENTRIES)
        .map(|change| tag_move_item(&base, &name, &timeline.owner.did, &repository, change))
        .collect();
    let head = FeedHead {
        id: format!("at://{}#repository={}", timeline.owner.did, path_segment(&repository)),
        title: format!("Tag changes of {name}/{repository} · atcr"),
        alternate: format!("{base}{}", repository_url(&name, &repository)),
        self_url: format!("{base}{}", repository_feed_url(&name, &repository)),
        author: name.clone(),
        author_uri: format!("{base}{}", user_url(&name)),
    };
    feed_response(&head, &items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(tag: &str, offset: u64, kind: &'static str, from: Option<&str>, to: Option<&str>) -> TagMove {
        TagMove {
            tag: tag.into(),
            offset,
            change: kind,
            from: from.map(String::from),
            to: to.map(String::from),
            time: Some(format!("2026-05-0{}T10:00:00Z", offset % 9 + 1)),
            rev: None,
            upstream_seq: None,
            rkey: Some(format!("app_{tag}")),
            cid: None,
            commit_cid: None,
        }
    }

    fn head() -> FeedHead {
        FeedHead {
            id: "at://did:plc:alice#repository=app".into(),
            title: "Tag changes of alice.test/app · atcr".into(),
            alternate: "https://registry.test/r/alice.test/app".into(),
            self_url: "https://registry.test/r/alice.test/app/-/feed.atom".into(),
            author: "alice.test".into(),
            author_uri: "https://registry.test/u/alice.test".into(),
        }
    }

    #[test]
    fn a_feed_parses_back_with_its_entries_ids_times_and_escaped_text() {
        let base = "https://registry.test";
        let moves = [
            change("<b>&evil</b>", 7, "move", Some("sha256:aa"), Some("sha256:bb")),
            change("latest", 3, "create", None, Some("sha256:aa")),
        ];
        let items: Vec<FeedItem> =
            moves.iter().map(|change| tag_move_item(base, "alice.test", "did:plc:alice", "app", change)).collect();
        let xml = render_feed(&build_feed(&head(), &items)).expect("xml");
        assert!(xml.contains("&lt;b&gt;&amp;evil&lt;/b&gt;"), "text is escaped: {xml}");
        assert!(!xml.contains("<b>"), "{xml}");
        let parsed: Feed = xml.parse().expect("valid Atom");
        assert_eq!(parsed.id, "at://did:plc:alice#repository=app");
        assert_eq!(parsed.entries.len(), 2);
        assert_eq!(parsed.entries[0].id, "at://did:plc:alice/io.atcr.tag/app_<b>&evil</b>#offset=7");
        assert_eq!(parsed.entries[0].title.value, "alice.test/app:<b>&evil</b> moved");
        assert_eq!(parsed.entries[0].updated.to_rfc3339(), "2026-05-08T10:00:00+00:00");
        assert_eq!(parsed.updated, parsed.entries[0].updated, "the feed is as new as its newest entry");
        assert_eq!(parsed.entries[1].links[0].href, "https://registry.test/r/alice.test/app/-/tag/latest");
        assert!(parsed.links.iter().any(|link| link.rel == "self" && link.href.ends_with("/-/feed.atom")));
        assert_eq!(
            parsed.entries[1].summary.as_ref().map(|text| text.value.as_str()),
            Some("latest now names sha256:aa.")
        );
    }

    #[test]
    fn an_empty_feed_is_valid_and_dated_from_the_epoch() {
        let xml = render_feed(&build_feed(&head(), &[])).expect("xml");
        let parsed: Feed = xml.parse().expect("valid Atom");
        assert!(parsed.entries.is_empty());
        assert_eq!(parsed.updated.timestamp(), 0);
    }

    #[test]
    fn links_are_absolute_with_the_right_scheme() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("registry.test"));
        assert_eq!(site_base(&headers), "https://registry.test");
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:5000"));
        assert_eq!(site_base(&headers), "http://127.0.0.1:5000");
        headers.insert(header::HOST, HeaderValue::from_static("[::1]:5000"));
        assert_eq!(site_base(&headers), "http://[::1]:5000");
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
        assert_eq!(site_base(&headers), "http://localhost");
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(site_base(&headers), "https://localhost");
    }
}
