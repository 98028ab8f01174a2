//! SVG badges for READMEs, in the flat look of shields.io (a grey label, a coloured value):
//!
//! - `/r/{owner}/{repository…}/-/badge/latest.svg`: the newest tag;
//! - `…/badge/size.svg`: the size of that tag's image (all platforms of an index);
//! - `…/badge/tags.svg`: how many tags the repository has.
//!
//! `Cache-Control: public, max-age=300` and an ETag (README renderers proxy and cache images); an
//! unknown repository gets a grey "not found" badge with status 404, so a broken README link is
//! visible as such. Text is escaped by maud and its width estimated from Verdana 11px metrics
//! (no font files are read).
//!
//! - `…/badge/pulls.svg`: pulls served by this atcr plus the pulls the repository's holds count
//!   (`io.atcr.hold.stats`); a server without a pull log has no such badge (404 page).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::html;
use sha2::{Digest, Sha256};

use super::format::human_size;
use super::read;
use crate::AppState;

const CACHE_CONTROL: &str = "public, max-age=300";
const CONTENT_TYPE: &str = "image/svg+xml; charset=utf-8";
/// Values longer than this are cut (tags may have 128 characters).
const MAX_VALUE_CHARS: usize = 40;
const BLUE: &str = "#007ec6";
const GREY: &str = "#9f9f9f";

/// Which badge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadgeKind {
    Latest,
    Size,
    Tags,
    Pulls,
}

impl BadgeKind {
    /// `latest.svg` → `Latest`; anything else is no badge.
    pub fn from_file_name(name: &str) -> Option<BadgeKind> {
        match name {
            "latest.svg" => Some(BadgeKind::Latest),
            "size.svg" => Some(BadgeKind::Size),
            "tags.svg" => Some(BadgeKind::Tags),
            "pulls.svg" => Some(BadgeKind::Pulls),
            _ => None,
        }
    }

    fn label(self) -> &'static str {
        match self {
            BadgeKind::Latest => "latest",
            BadgeKind::Size => "image size",
            BadgeKind::Tags => "tags",
            BadgeKind::Pulls => "pulls",
        }
    }
}

/// A label and a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Badge {
    pub label: String,
    pub value: String,
    pub color: &'static str,
}

/// Approximate advance of one character in Verdana at 11px (what shields.io renders with).
fn char_width(character: char) -> f64 {
    match character {
        'i' | 'l' | 'j' | 'I' | '!' | '|' | '.' | ',' | ':' | ';' | '\'' => 3.6,
        'f' | 't' | 'r' | '(' | ')' | '[' | ']' | '/' | '\\' | '-' => 4.8,
        ' ' => 3.9,
        'm' | 'w' => 10.4,
        'M' | 'W' => 11.4,
        '@' | '%' => 11.0,
        '0'..='9' => 7.0,
        'A'..='Z' => 7.6,
        'a'..='z' | '_' | '+' | '=' | '~' | '#' | '$' | '&' | '*' | '?' => 6.8,
        _ if character.is_ascii() => 6.8,
        // CJK and other wide scripts
        _ => 11.0,
    }
}

/// Estimated width in pixels of `text`, rounded up.
pub fn text_width(text: &str) -> u32 {
    text.chars().map(char_width).sum::<f64>().ceil() as u32
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_VALUE_CHARS {
        return text.to_string();
    }
    let mut short: String = text.chars().take(MAX_VALUE_CHARS - 1).collect();
    short.push('…');
    short
}

/// The badge as SVG (pure). Every piece of text goes through maud, which escapes it.
pub fn render_svg(badge: &Badge) -> String {
    let value = shorten(&badge.value);
    let label_width = text_width(&badge.label) + 10;
    let value_width = text_width(&value) + 10;
    let width = label_width + value_width;
    let accessible = format!("{}: {value}", badge.label);
    // Text is drawn at 10x and scaled down, like shields.io, for crisper hinting.
    let label_x = label_width * 5;
    let value_x = label_width * 10 + value_width * 5;
    html! {
        svg xmlns="http://www.w3.org/2000/svg" width=(width) height="20" role="img" aria-label=(accessible) {
            title { (accessible) }
            linearGradient id="s" x2="0" y2="100%" {
                stop offset="0" stop-color="#bbb" stop-opacity=".1" {}
                stop offset="1" stop-opacity=".1" {}
            }
            clipPath id="r" { rect width=(width) height="20" rx="3" fill="#fff" {} }
            g clip-path="url(#r)" {
                rect width=(label_width) height="20" fill="#555" {}
                rect x=(label_width) width=(value_width) height="20" fill=(badge.color) {}
                rect width=(width) height="20" fill="url(#s)" {}
            }
            g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" text-rendering="geometricPrecision" font-size="110" {
                text aria-hidden="true" x=(label_x) y="150" fill="#010101" fill-opacity=".3" transform="scale(.1)" textLength=((label_width - 10) * 10) { (badge.label) }
                text x=(label_x) y="140" transform="scale(.1)" fill="#fff" textLength=((label_width - 10) * 10) { (badge.label) }
                text aria-hidden="true" x=(value_x) y="150" fill="#010101" fill-opacity=".3" transform="scale(.1)" textLength=((value_width - 10) * 10) { (value) }
                text x=(value_x) y="140" transform="scale(.1)" fill="#fff" textLength=((value_width - 10) * 10) { (value) }
            }
        }
    }
    .into_string()
}

/// The badge's value for a repository page (pure): the newest tag, its image's size, the tag
/// count.
pub fn badge_for(kind: BadgeKind, page: &atcr_query::browse::RepositoryPage) -> Badge {
    let newest = page.tags.first();
    let (value, color) = match kind {
        BadgeKind::Latest => match newest {
            Some(tag) => (tag.name.clone(), BLUE),
            None => ("no tags".to_string(), GREY),
        },
        BadgeKind::Size => match newest.and_then(|tag| tag.size) {
            Some(size) => (human_size(size), BLUE),
            None => ("unknown".to_string(), GREY),
        },
        BadgeKind::Tags => (page.tags.len().to_string(), BLUE),
        // Answered from the pull counts by [`pulls_badge`], never from the page.
        BadgeKind::Pulls => ("unknown".to_string(), GREY),
    };
    Badge { label: kind.label().to_string(), value, color }
}

/// The pulls badge (pure): pulls served by this atcr plus those the holds count.
pub fn pulls_badge(stats: &atcr_query::holds::RepositoryStats) -> Badge {
    let pulls = stats.atcr_pulls.saturating_add(stats.hold_pulls);
    Badge { label: BadgeKind::Pulls.label().to_string(), value: super::format::thousands(pulls), color: BLUE }
}

/// An SVG response with cache headers and an ETag; `If-None-Match` gets 304.
pub fn badge_response(status: StatusCode, svg: String, request_headers: &HeaderMap) -> Response {
    let digest = Sha256::digest(svg.as_bytes());
    let etag = format!("\"{}\"", digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect::<String>());
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    let cache = [(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL)), (header::ETAG, etag_value)];
    let matches = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    if matches && status == StatusCode::OK {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (status, cache, [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], svg).into_response()
}

/// `GET /r/{owner}/{repository…}/-/badge/{kind}.svg`.
pub async fn repository_badge(
    state: &AppState,
    owner: String,
    repository: String,
    kind: BadgeKind,
    headers: &HeaderMap,
) -> Response {
    let not_found = || {
        let badge = Badge { label: kind.label().to_string(), value: "not found".to_string(), color: GREY };
        badge_response(StatusCode::NOT_FOUND, render_svg(&badge), headers)
    };
    let Some(browse) = state.browse.clone() else { return not_found() };
    if kind == BadgeKind::Pulls {
        if browse.pull_log().is_none() {
            return super::not_found_page("This server keeps no pull counts.");
        }
        return match read("badge", move || browse.repository_stats(&owner, &repository)).await {
            Ok(Some(stats)) => badge_response(StatusCode::OK, render_svg(&pulls_badge(&stats)), headers),
            Ok(None) => not_found(),
            Err(response) => response,
        };
    }
    match read("badge", move || browse.repository(&owner, &repository)).await {
        Ok(Some(page)) => badge_response(StatusCode::OK, render_svg(&badge_for(kind, &page)), headers),
        Ok(None) => not_found(),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badge_text_is_escaped_and_the_svg_is_well_formed() {
        let badge = Badge { label: "latest".into(), value: "<script>alert(\"x\")</script>&".into(), color: BLUE };
        let svg = render_svg(&badge);
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;"), "{svg}");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert_well_formed(&svg);
    }

    /// Every element closed in order, attributes quoted, entities known (quick-xml's reader).
    fn assert_well_formed(xml: &str) {
        let mut reader = quick_xml::Reader::from_str(xml);
        reader.config_mut().check_end_names = true;
        let mut depth = 0usize;
        loop {
            match reader.read_event().unwrap_or_else(|error| panic!("not well-formed ({error}): {xml}")) {
                quick_xml::events::Event::Start(start) => {
                    depth += 1;
                    for attribute in start.attributes() {
                        attribute.unwrap_or_else(|error| panic!("bad attribute ({error}): {xml}"));
                    }
                }
                quick_xml::events::Event::End(_) => depth -= 1,
                quick_xml::events::Event::Text(text) => {
                    text.decode().unwrap_or_else(|error| panic!("bad text ({error}): {xml}"));
                }
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(depth, 0, "{xml}");
    }

    #[test]
    fn widths_grow_with_the_text_and_long_values_are_cut() {
        assert!(text_width("latest") < text_width("latest-and-greatest"));
        assert!(text_width("iiii") < text_width("MMMM"));
        let long = "x".repeat(128);
        let svg = render_svg(&Badge { label: "latest".into(), value: long, color: BLUE });
        assert!(svg.contains(&format!("{}…", "x".repeat(MAX_VALUE_CHARS - 1))));
        assert!(!svg.contains(&"x".repeat(MAX_VALUE_CHARS)));
    }

    #[test]
    fn badge_files_are_the_four_known_kinds() {
        assert_eq!(BadgeKind::from_file_name("latest.svg"), Some(BadgeKind::Latest));
        assert_eq!(BadgeKind::from_file_name("size.svg"), Some(BadgeKind::Size));
        assert_eq!(BadgeKind::from_file_name("tags.svg"), Some(BadgeKind::Tags));
        assert_eq!(BadgeKind::from_file_name("pulls.svg"), Some(BadgeKind::Pulls));
        assert_eq!(BadgeKind::from_file_name("vulnerabilities.svg"), None);
        assert_eq!(BadgeKind::from_file_name("latest"), None);
    }

    #[test]
    fn a_matching_etag_gets_304() {
        let svg = render_svg(&Badge { label: "tags".into(), value: "3".into(), color: BLUE });
        let first = badge_response(StatusCode::OK, svg.clone(), &HeaderMap::new());
        assert_eq!(first.headers()[header::CACHE_CONTROL], "public, max-age=300");
        let etag = first.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(badge_response(StatusCode::OK, svg, &headers).status(), StatusCode::NOT_MODIFIED);
    }
}
