//! The search query language and the search service the web pages and the JSON API call.
//!
//! People type one line: free words, `"exact phrases"`, `-excluded` words and `key:value`
//! filters, e.g. `user:alice arch:arm64 pushed:>2026-01-01 "reverse proxy" -test`. [`parse`]
//! turns it into a [`ParsedQuery`] and never fails: whatever it cannot use is reported as a
//! [`QueryProblem`] (an error for a value that makes no sense, a warning for something it
//! reinterpreted, such as an unknown key searched as text), and the rest still runs, so live
//! results while typing keep working on half-typed input. [`help`] describes the syntax for the
//! help popover. [`SearchService`] runs a parsed query against the search index.

use std::sync::Arc;
use std::time::Instant;

use atcr_projections::ViewsHandle;
use atcr_projections::search::{
    FilterClause, MAX_PER_PAGE, MAX_RESULT_WINDOW, SearchError, SearchFilter, SearchIndex, SearchRequest,
};
pub use atcr_projections::search::{SearchHit, SearchSort};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// Longer input is cut (with a warning): nobody types more, and it bounds the work per query.
pub const MAX_QUERY_CHARS: usize = 512;
/// Most words, phrases and filters one query uses.
pub const MAX_TERMS: usize = 32;
pub const DEFAULT_PER_PAGE: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct QueryProblem {
    /// The part of the input the problem is about.
    pub fragment: String,
    pub message: String,
}

/// What a query line asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ParsedQuery {
    pub words: Vec<String>,
    pub excluded_words: Vec<String>,
    pub phrases: Vec<String>,
    pub filters: Vec<FilterClause>,
    /// `sort:` in the query, which wins over a sort chosen elsewhere.
    pub sort: Option<SearchSort>,
    /// Values that make no sense (the filter is ignored).
    pub errors: Vec<QueryProblem>,
    /// Things reinterpreted or ignored (the query still runs).
    pub warnings: Vec<QueryProblem>,
    /// The input ends in a word (no trailing space): it may be half typed, so it is also
    /// matched as a prefix.
    pub typing: bool,
}

impl ParsedQuery {
    pub fn is_empty(&self) -> bool {
        self.words.is_empty() && self.excluded_words.is_empty() && self.phrases.is_empty() && self.filters.is_empty()
    }

    fn error(&mut self, fragment: &str, message: impl Into<String>) {
        self.errors.push(QueryProblem { fragment: fragment.to_string(), message: message.into() });
    }

    fn warning(&mut self, fragment: &str, message: impl Into<String>) {
        self.warnings.push(QueryProblem { fragment: fragment.to_string(), message: message.into() });
    }

    fn terms(&self) -> usize {
        self.words.len() + self.excluded_words.len() + self.phrases.len() + self.filters.len()
    }
}

/// One line of the syntax help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SyntaxHelp {
    pub syntax: &'static str,
    pub meaning: &'static str,
    pub example: &'static str,
}

const HELP: &[SyntaxHelp] = &[
    SyntaxHelp {
        syntax: "word",
        meaning: "repositories whose name, owner, tags, description or README contain the word; small typos in names are forgiven",
        example: "nginx",
    },
    SyntaxHelp { syntax: "\"exact phrase\"", meaning: "these words in this order", example: "\"reverse proxy\"" },
    SyntaxHelp { syntax: "-word", meaning: "leave out repositories that mention the word", example: "nginx -test" },
    SyntaxHelp {
        syntax: "user:",
        meaning: "owned by a handle (alice matches alice.*), a whole handle, a DID, or a handle prefix ending in *",
        example: "user:alice.example.com",
    },
    SyntaxHelp {
        syntax: "repo:",
        meaning: "repository name (the whole name or its last segment; end with * for a prefix)",
        example: "repo:nginx*",
    },
    SyntaxHelp { syntax: "hold:", meaning: "stored on this hold (DID or host name)", example: "hold:hold01.atcr.io" },
    SyntaxHelp { syntax: "os:", meaning: "has an image for this operating system", example: "os:windows" },
    SyntaxHelp {
        syntax: "arch:",
        meaning: "has an image for this CPU architecture (x86_64 and aarch64 are understood)",
        example: "arch:arm64",
    },
    SyntaxHelp {
        syntax: "platform:",
        meaning: "has an image for this os/arch[/variant]",
        example: "platform:linux/arm/v7",
    },
    SyntaxHelp { syntax: "tag:", meaning: "has this tag", example: "tag:latest" },
    SyntaxHelp {
        syntax: "pushed:",
        meaning: "last push on a day, after (>, >=), before (<, <=) or between (..) dates; YYYY, YYYY-MM, YYYY-MM-DD or RFC 3339",
        example: "pushed:>2026-01-01",
    },
    SyntaxHelp {
        syntax: "stars:",
        meaning: "number of stars: exact, >, >=, <, <= or a range a..b",
        example: "stars:>10",
    },
    SyntaxHelp {
        syntax: "size:",
        meaning: "total size, with units (KB, MB, GB or KiB, MiB, GiB): >, >=, <, <= or a..b",
        example: "size:<100MB",
    },
    SyntaxHelp { syntax: "is:multiarch", meaning: "images for more than one platform", example: "is:multiarch" },
    SyntaxHelp { syntax: "is:scanned", meaning: "a tagged image has a vulnerability scan", example: "is:scanned" },
    SyntaxHelp {
        syntax: "is:no-critical",
        meaning: "scanned, and no tagged image has a critical vulnerability",
        example: "is:no-critical",
    },
    SyntaxHelp {
        syntax: "is:fixable",
        meaning: "a tagged image has a vulnerability with a fix",
        example: "is:fixable",
    },
    SyntaxHelp { syntax: "sort:", meaning: "relevance, recent, stars, size or name", example: "sort:stars" },
    SyntaxHelp { syntax: "-key:value", meaning: "leave out what a filter matches", example: "-arch:amd64" },
];

/// The syntax, one entry per key, for the help popover.
pub fn help() -> &'static [SyntaxHelp] {
    HELP
}

const KEYS_HINT: &str = "known keys: user, repo, hold, os, arch, platform, tag, pushed, stars, size, is, sort";

/// A filter key, with its aliases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    User,
    Repository,
    Hold,
    Os,
    Arch,
    Platform,
    Tag,
    Pushed,
    Stars,
    Size,
    Is,
    Sort,
}

fn key(name: &str) -> Option<Key> {
    Some(match name.to_ascii_lowercase().as_str() {
        "user" | "owner" | "handle" | "by" => Key::User,
        "repo" | "repository" | "name" => Key::Repository,
        "hold" => Key::Hold,
        "os" => Key::Os,
        "arch" | "architecture" => Key::Arch,
        "platform" => Key::Platform,
        "tag" => Key::Tag,
        "pushed" | "updated" => Key::Pushed,
        "stars" | "star" => Key::Stars,
        "size" => Key::Size,
        "is" => Key::Is,
        "sort" | "order" => Key::Sort,
        _ => return None,
    })
}

/// A lexed piece of the query line.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Word {
        text: String,
        negated: bool,
    },
    Phrase {
        text: String,
        negated: bool,
    },
    /// `key:value` with a key that looks like a key; `value` has its quotes removed.
    Pair {
        key: String,
        value: String,
        negated: bool,
        raw: String,
    },
}

/// Splits the line into words, quoted phrases and `key:value` pairs (`key:"a b"` included).
/// Returns the pieces and whether a quote was left open.
fn lex(input: &str) -> (Vec<Piece>, bool) {
    let chars: Vec<char> = input.chars().collect();
    let mut pieces = Vec::new();
    let mut unclosed = false;
    let mut at = 0;
    while at < chars.len() {
        if chars[at].is_whitespace() {
            at += 1;
            continue;
        }
        let mut negated = false;
        if chars[at] == '-' && chars.get(at + 1).is_some_and(|next| !next.is_whitespace() && *next != '-') {
            negated = true;
            at += 1;
        }
        if chars[at] == '"' {
            let start = at + 1;
            let end = chars[start..].iter().position(|c| *c == '"').map(|offset| start + offset);
            let text: String = chars[start..end.unwrap_or(chars.len())].iter().collect();
            unclosed |= end.is_none();
            at = end.map_or(chars.len(), |end| end + 1);
            pieces.push(Piece::Phrase { text, negated });
            continue;
        }
        // A bare token, in which a quote opens a value that may hold spaces (`user:"a b"`).
        let start = at;
        let mut token = String::new();
        let mut value_quoted = false;
        while at < chars.len() && !chars[at].is_whitespace() {
            if chars[at] == '"' {
                let open = at + 1;
                let end = chars[open..].iter().position(|c| *c == '"').map(|offset| open + offset);
                token.extend(&chars[open..end.unwrap_or(chars.len())]);
                unclosed |= end.is_none();
                value_quoted = true;
                at = end.map_or(chars.len(), |end| end + 1);
                continue;
            }
            token.push(chars[at]);
            at += 1;
        }
        let raw: String = chars[start..at].iter().collect();
        let pair = token
            .split_once(':')
            .filter(|(key, _)| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphabetic() || c == '_' || c == '-'));
        match pair {
            Some((key, value)) if !value.starts_with("//") => {
                pieces.push(Piece::Pair { key: key.to_string(), value: value.to_string(), negated, raw })
            }
            _ if value_quoted => pieces.push(Piece::Phrase { text: token, negated }),
            _ => pieces.push(Piece::Word { text: token, negated }),
        }
    }
    (pieces, unclosed)
}

/// Parses a query line. Never fails and never panics; see [`ParsedQuery`] for what it reports.
pub fn parse(raw: &str) -> ParsedQuery {
    let mut parsed = ParsedQuery::default();
    let mut input: String = raw.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if input.chars().count() > MAX_QUERY_CHARS {
        input = input.chars().take(MAX_QUERY_CHARS).collect();
        parsed.warning("", format!("the query was cut to its first {MAX_QUERY_CHARS} characters"));
    }
    let (pieces, unclosed) = lex(&input);
    if unclosed {
        parsed.warning("\"", "a quote was not closed; it runs to the end of the query");
    }
    let ends_in_word = !input.ends_with(char::is_whitespace);
    let last = pieces.len().saturating_sub(1);
    let mut dropped = 0usize;
    for (position, piece) in pieces.into_iter().enumerate() {
        if parsed.terms() >= MAX_TERMS {
            dropped += 1;
            continue;
        }
        let is_last = position == last;
        match piece {
            Piece::Word { text, negated } => add_word(&mut parsed, text, negated, is_last && ends_in_word),
            Piece::Phrase { text, negated } => {
                let text = text.trim().to_string();
                match (text.is_empty(), negated) {
                    (true, _) => {}
                    (false, true) => parsed.excluded_words.push(text),
                    (false, false) => parsed.phrases.push(text),
                }
            }
            Piece::Pair { key: name, value, negated, raw } => match key(&name) {
                Some(key) => add_filter(&mut parsed, key, &name, value.trim(), negated, &raw),
                None if name.eq_ignore_ascii_case("did") => {
                    let filter = SearchFilter::User { value: format!("did:{value}") };
                    parsed.filters.push(FilterClause { filter, negated });
                }
                None => {
                    parsed.warning(&raw, format!("unknown key {name:?}, searched as text ({KEYS_HINT})"));
                    add_word(&mut parsed, raw.trim_start_matches('-').to_string(), negated, is_last && ends_in_word);
                }
            },
        }
    }
    if dropped > 0 {
        parsed.warning("", format!("only the first {MAX_TERMS} terms are used; {dropped} more were ignored"));
    }
    parsed
}

fn add_word(parsed: &mut ParsedQuery, text: String, negated: bool, typing: bool) {
    // A word of punctuation only (`-`, `::`) matches nothing: drop it quietly.
    if !text.chars().any(char::is_alphanumeric) {
        return;
    }
    if negated {
        parsed.excluded_words.push(text);
        return;
    }
    parsed.typing = typing;
    parsed.words.push(text);
}

fn add_filter(parsed: &mut ParsedQuery, key: Key, name: &str, value: &str, negated: bool, raw: &str) {
    if value.is_empty() {
        parsed.warning(raw, format!("{name}: needs a value; ignored"));
        return;
    }
    let text = || value.to_string();
    let filter = match key {
        Key::User => SearchFilter::User { value: text() },
        Key::Repository => SearchFilter::Repository { value: text() },
        Key::Hold => SearchFilter::Hold { value: text() },
        Key::Os => SearchFilter::Os { value: text() },
        Key::Arch => SearchFilter::Arch { value: text() },
        Key::Platform => SearchFilter::Platform { value: text() },
        Key::Tag => SearchFilter::Tag { value: text() },
        Key::Pushed => match time_range(value) {
            Ok((from, until)) => SearchFilter::Pushed { from, until },
            Err(message) => return parsed.error(raw, message),
        },
        Key::Stars => match number_range(value, parse_count) {
            Ok((min, max)) => SearchFilter::Stars { min, max },
            Err(message) => return parsed.error(raw, format!("stars: {message}")),
        },
        Key::Size => match number_range(value, parse_size) {
            Ok((min, max)) => SearchFilter::Size { min, max },
            Err(message) => return parsed.error(raw, format!("size: {message}")),
        },
        Key::Is => match value.to_ascii_lowercase().as_str() {
            "multiarch" | "multi-arch" | "multiplatform" | "multi-platform" => SearchFilter::MultiArch,
            "scanned" => SearchFilter::Scanned,
            "no-critical" | "nocritical" | "no_critical" => SearchFilter::NoCritical,
            "fixable" | "has-fixable" => SearchFilter::Fixable,
            other => {
                return parsed.error(
                    raw,
                    format!("is:{other} is not known; try is:multiarch, is:scanned, is:no-critical or is:fixable"),
                );
            }
        },
        Key::Sort => {
            match value.parse::<SearchSort>() {
                Ok(sort) if negated => {
                    parsed.warning(raw, format!("a sort cannot be negated; sorting by {}", sort.as_str()))
                }
                Ok(_) => {}
                Err(message) => return parsed.error(raw, message),
            }
            parsed.sort = value.parse().ok();
            return;
        }
    };
    parsed.filters.push(FilterClause { filter, negated });
}

/// A span of time `[start, end)` in seconds since the epoch, from the precision written:
/// a year, a month, a day or an instant.
fn period(value: &str) -> Result<(i64, i64), String> {
    let value = value.trim();
    let bad = || format!("pushed: expects a date like 2026-01-31 (or 2026, 2026-01, an RFC 3339 time), not {value:?}");
    if value.contains('T') || value.contains('t') {
        let instant = OffsetDateTime::parse(value, &Rfc3339).map_err(|_| bad())?.unix_timestamp();
        return Ok((instant, instant + 1));
    }
    let parts: Vec<&str> = value.split('-').collect();
    let number = |part: &str, digits: usize| -> Result<i32, String> {
        if part.len() != digits || !part.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let start_of = |date: Date| PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc().unix_timestamp();
    let day = |year: i32, month: u8, day: u8| -> Result<Date, String> {
        let month = Month::try_from(month).map_err(|_| bad())?;
        Date::from_calendar_date(year, month, day).map_err(|_| bad())
    };
    match parts.as_slice() {
        [year] => {
            let year = number(year, 4)?;
            Ok((start_of(day(year, 1, 1)?), start_of(day(year + 1, 1, 1)?)))
        }
        [year, month] => {
            let (year, month) = (number(year, 4)?, number(month, 2)?);
            let month = u8::try_from(month).map_err(|_| bad())?;
            let next = if month == 12 { day(year + 1, 1, 1)? } else { day(year, month + 1, 1)? };
            Ok((start_of(day(year, month, 1)?), start_of(next)))
        }
        [year, month, date] => {
            let (year, month, date) = (number(year, 4)?, number(month, 2)?, number(date, 2)?);
            let first = day(year, u8::try_from(month).map_err(|_| bad())?, u8::try_from(date).map_err(|_| bad())?)?;
            let next = first.next_day().ok_or_else(bad)?;
            Ok((start_of(first), start_of(next)))
        }
        _ => Err(bad()),
    }
}

/// `pushed:` values → `[from, until)`: `>P` after the period P, `>=P` from its start, `<P`
/// before it, `<=P` up to its end, `A..B` from A's start to B's end (`*` leaves a side open),
/// `P` within it.
fn time_range(value: &str) -> Result<(Option<i64>, Option<i64>), String> {
    if let Some((low, high)) = value.split_once("..") {
        let from = match low.trim() {
            "" | "*" => None,
            low => Some(period(low)?.0),
        };
        let until = match high.trim() {
            "" | "*" => None,
            high => Some(period(high)?.1),
        };
        if from.is_none() && until.is_none() {
            return Err("pushed: a range needs at least one date, like 2026-01-01..2026-03-01".to_string());
        }
        return Ok((from, until));
    }
    if let Some(rest) = value.strip_prefix(">=") {
        return Ok((Some(period(rest)?.0), None));
    }
    if let Some(rest) = value.strip_prefix("<=") {
        return Ok((None, Some(period(rest)?.1)));
    }
    if let Some(rest) = value.strip_prefix('>') {
        return Ok((Some(period(rest)?.1), None));
    }
    if let Some(rest) = value.strip_prefix('<') {
        return Ok((None, Some(period(rest)?.0)));
    }
    let (start, end) = period(value)?;
    Ok((Some(start), Some(end)))
}

/// A count, optionally with `k` or `m` (`1.5k` = 1500).
fn parse_count(value: &str) -> Result<u64, String> {
    let lowered = value.trim().to_ascii_lowercase();
    let (number, scale) = match lowered.strip_suffix('k') {
        Some(number) => (number, 1_000.0),
        None => match lowered.strip_suffix('m') {
            Some(number) => (number, 1_000_000.0),
            None => (lowered.as_str(), 1.0),
        },
    };
    scaled(number, scale).ok_or_else(|| format!("expects a number like 10 or 1.5k, not {value:?}"))
}

/// A size in bytes with an optional unit: `B`, `KB`/`MB`/`GB`/`TB` (powers of 1000) or
/// `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024); `k`, `m`, `g`, `t` alone mean the decimal units.
fn parse_size(value: &str) -> Result<u64, String> {
    let lowered = value.trim().to_ascii_lowercase();
    let split = lowered.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(lowered.len());
    let (number, unit) = lowered.split_at(split);
    let scale = match unit.trim() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("unknown unit in {value:?}; use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB")),
    };
    scaled(number, scale).ok_or_else(|| format!("expects a size like 100MB or 1.5GiB, not {value:?}"))
}

fn scaled(number: &str, scale: f64) -> Option<u64> {
    if number.is_empty() || !number.bytes().all(|byte| byte.is_ascii_digit() || byte == b'.') {
        return None;
    }
    let value = number.parse::<f64>().ok()? * scale;
    (value.is_finite() && value >= 0.0 && value < u64::MAX as f64).then(|| value.round() as u64)
}

/// `>N`, `>=N`, `<N`, `<=N`, `A..B` (`*` open), `N` → inclusive (min, max).
fn number_range(value: &str, number: fn(&str) -> Result<u64, String>) -> Result<(Option<u64>, Option<u64>), String> {
    if let Some((low, high)) = value.split_once("..") {
        let bound = |side: &str| match side.trim() {
            "" | "*" => Ok(None),
            side => number(side).map(Some),
        };
        let (min, max) = (bound(low)?, bound(high)?);
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            return Err(format!("the range {value:?} is empty"));
        }
        return Ok((min, max));
    }
    if let Some(rest) = value.strip_prefix(">=") {
        return Ok((Some(number(rest)?), None));
    }
    if let Some(rest) = value.strip_prefix("<=") {
        return Ok((None, Some(number(rest)?)));
    }
    if let Some(rest) = value.strip_prefix('>') {
        let low = number(rest)?;
        return Ok((Some(low.saturating_add(1)), None));
    }
    if let Some(rest) = value.strip_prefix('<') {
        let high = number(rest)?;
        let Some(max) = high.checked_sub(1) else { return Err(format!("nothing is below {rest}")) };
        return Ok((None, Some(max)));
    }
    let exact = number(value)?;
    Ok((Some(exact), Some(exact)))
}

/// What a search page or the JSON API passes in (`?q=…&sort=…&page=…&per_page=…`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SearchParams {
    #[serde(default)]
    pub q: String,
    /// relevance, recent, stars, size or name; `sort:` in `q` wins.
    pub sort: Option<String>,
    /// 1-based.
    pub page: Option<usize>,
    pub per_page: Option<usize>,
}

/// A page of results, with how the query was understood.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub query: String,
    pub sort: SearchSort,
    pub page: usize,
    pub per_page: usize,
    /// Every match, not only this page.
    pub total: u64,
    /// Pages that can be reached (results past [`MAX_RESULT_WINDOW`] cannot).
    pub pages: usize,
    pub hits: Vec<SearchHit>,
    pub filters: Vec<FilterClause>,
    pub errors: Vec<QueryProblem>,
    pub warnings: Vec<QueryProblem>,
    pub took_us: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchServiceError {
    #[error(transparent)]
    Index(#[from] SearchError),
    #[error("the search index is being built; try again in a moment")]
    NotReady,
}

/// Where the index comes from: one fixed index (tests, benchmarks), or the search index of
/// whichever views build is live (a replay swaps both at once).
#[derive(Clone)]
enum IndexSource {
    Fixed(Arc<SearchIndex>),
    Live(ViewsHandle),
}

/// Runs searches against the index. Cheap to clone. A search is CPU work of a few
/// milliseconds at most and reads only the index (memory-mapped), never the views.
#[derive(Clone)]
pub struct SearchService {
    index: IndexSource,
}

impl SearchService {
    pub fn new(index: Arc<SearchIndex>) -> Self {
        SearchService { index: IndexSource::Fixed(index) }
    }

    /// Searches the index of the live views build.
    pub fn live(views: ViewsHandle) -> Self {
        SearchService { index: IndexSource::Live(views) }
    }

    /// False while the live build's index is still being built.
    pub fn is_ready(&self) -> bool {
        self.index().is_ok()
    }

    fn index(&self) -> Result<Arc<SearchIndex>, SearchServiceError> {
        match &self.index {
            IndexSource::Fixed(index) => Ok(index.clone()),
            IndexSource::Live(views) => {
                views.load().search().map(|search| search.index().clone()).ok_or(SearchServiceError::NotReady)
            }
        }
    }

    pub fn search(&self, params: &SearchParams) -> Result<SearchResponse, SearchServiceError> {
        let started = Instant::now();
        let mut parsed = parse(&params.q);
        let mut sort = SearchSort::Relevance;
        if let Some(requested) = params.sort.as_deref().filter(|sort| !sort.trim().is_empty()) {
            match requested.parse::<SearchSort>() {
                Ok(requested) => sort = requested,
                Err(message) => parsed.errors.push(QueryProblem { fragment: requested.to_string(), message }),
            }
        }
        if let Some(in_query) = parsed.sort {
            sort = in_query;
        }
        let per_page = params.per_page.unwrap_or(DEFAULT_PER_PAGE).clamp(1, MAX_PER_PAGE);
        let last_page = MAX_RESULT_WINDOW / per_page;
        let mut page = params.page.unwrap_or(1).max(1);
        if page > last_page {
            parsed.warnings.push(QueryProblem {
                fragment: page.to_string(),
                message: format!("results stop at {MAX_RESULT_WINDOW}; showing page {last_page}"),
            });
            page = last_page;
        }
        let request = SearchRequest {
            words: parsed.words.clone(),
            excluded_words: parsed.excluded_words.clone(),
            phrases: parsed.phrases.clone(),
            filters: parsed.filters.clone(),
            sort,
            offset: (page - 1) * per_page,
            limit: per_page,
            prefix_last_word: parsed.typing,
        };
        let results = self.index()?.search(&request)?;
        let reachable = (results.total as usize).min(MAX_RESULT_WINDOW);
        Ok(SearchResponse {
            query: params.q.clone(),
            sort: results.sort,
            page,
            per_page,
            total: results.total,
            pages: reachable.div_ceil(per_page),
            hits: results.hits,
            filters: parsed.filters,
            errors: parsed.errors,
            warnings: parsed.warnings,
            took_us: started.elapsed().as_micros() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(date: &str) -> i64 {
        OffsetDateTime::parse(&format!("{date}T00:00:00Z"), &Rfc3339).expect("test date").unix_timestamp()
    }

    fn only_filter(query: &str) -> SearchFilter {
        let parsed = parse(query);
        assert!(parsed.errors.is_empty(), "{query}: {:?}", parsed.errors);
        assert_eq!(parsed.filters.len(), 1, "{query}: {parsed:?}");
        parsed.filters[0].filter.clone()
    }

    #[test]
    fn the_example_from_the_issue() {
        let parsed = parse(r#"user:alice arch:arm64 pushed:>2026-01-01 "exact phrase""#);
        assert!(parsed.errors.is_empty() && parsed.warnings.is_empty(), "{parsed:?}");
        assert_eq!(parsed.phrases, vec!["exact phrase"]);
        assert!(parsed.words.is_empty());
        assert_eq!(
            parsed.filters.iter().map(|clause| clause.filter.clone()).collect::<Vec<_>>(),
            vec![
                SearchFilter::User { value: "alice".into() },
                SearchFilter::Arch { value: "arm64".into() },
                SearchFilter::Pushed { from: Some(seconds("2026-01-02")), until: None },
            ]
        );
    }

    #[test]
    fn every_key_and_alias() {
        assert_eq!(only_filter("user:alice.test"), SearchFilter::User { value: "alice.test".into() });
        assert_eq!(only_filter("owner:bob"), SearchFilter::User { value: "bob".into() });
        assert_eq!(only_filter("did:plc:abc123"), SearchFilter::User { value: "did:plc:abc123".into() });
        assert_eq!(only_filter("user:did:plc:abc123"), SearchFilter::User { value: "did:plc:abc123".into() });
        assert_eq!(only_filter("repo:nginx*"), SearchFilter::Repository { value: "nginx*".into() });
        assert_eq!(only_filter("name:tools/jq"), SearchFilter::Repository { value: "tools/jq".into() });
        assert_eq!(
            only_filter("hold:did:web:hold01.atcr.io"),
            SearchFilter::Hold { value: "did:web:hold01.atcr.io".into() }
        );
        assert_eq!(only_filter("os:Windows"), SearchFilter::Os { value: "Windows".into() });
        assert_eq!(only_filter("arch:x86_64"), SearchFilter::Arch { value: "x86_64".into() });
        assert_eq!(only_filter("architecture:arm64"), SearchFilter::Arch { value: "arm64".into() });
        assert_eq!(only_filter("platform:linux/arm/v7"), SearchFilter::Platform { value: "linux/arm/v7".into() });
        assert_eq!(only_filter("tag:latest"), SearchFilter::Tag { value: "latest".into() });
        assert_eq!(only_filter("is:multiarch"), SearchFilter::MultiArch);
        assert_eq!(only_filter("IS:Multi-Arch"), SearchFilter::MultiArch);
        assert_eq!(only_filter("stars:>10"), SearchFilter::Stars { min: Some(11), max: None });
        assert_eq!(only_filter("size:<100MB"), SearchFilter::Size { min: None, max: Some(99_999_999) });
        assert_eq!(parse("sort:stars").sort, Some(SearchSort::Stars));
        assert_eq!(parse("order:recent").sort, Some(SearchSort::Recent));
    }

    #[test]
    fn pushed_ranges_follow_the_precision_written() {
        let day = |d| Some(seconds(d));
        assert_eq!(only_filter("pushed:>2026-01-01"), SearchFilter::Pushed { from: day("2026-01-02"), until: None });
        assert_eq!(only_filter("pushed:>=2026-01-01"), SearchFilter::Pushed { from: day("2026-01-01"), until: None });
        assert_eq!(only_filter("pushed:<2026-06-01"), SearchFilter::Pushed { from: None, until: day("2026-06-01") });
        assert_eq!(only_filter("pushed:<=2026-06-01"), SearchFilter::Pushed { from: None, until: day("2026-06-02") });
        assert_eq!(
            only_filter("pushed:2026-01-01..2026-03-01"),
            SearchFilter::Pushed { from: day("2026-01-01"), until: day("2026-03-02") }
        );
        assert_eq!(
            only_filter("pushed:2026-02"),
            SearchFilter::Pushed { from: day("2026-02-01"), until: day("2026-03-01") }
        );
        assert_eq!(
            only_filter("pushed:2025"),
            SearchFilter::Pushed { from: day("2025-01-01"), until: day("2026-01-01") }
        );
        assert_eq!(
            only_filter("pushed:2025-12"),
            SearchFilter::Pushed { from: day("2025-12-01"), until: day("2026-01-01") }
        );
        assert_eq!(only_filter("pushed:2026-01-01..*"), SearchFilter::Pushed { from: day("2026-01-01"), until: None });
        assert_eq!(only_filter("updated:*..2026-01-01"), SearchFilter::Pushed { from: None, until: day("2026-01-02") });
        let instant = seconds("2026-01-01") + 12 * 3600;
        assert_eq!(
            only_filter("pushed:>2026-01-01T12:00:00Z"),
            SearchFilter::Pushed { from: Some(instant + 1), until: None }
        );
    }

    #[test]
    fn numbers_and_sizes() {
        assert_eq!(only_filter("stars:>=10"), SearchFilter::Stars { min: Some(10), max: None });
        assert_eq!(only_filter("stars:<=10"), SearchFilter::Stars { min: None, max: Some(10) });
        assert_eq!(only_filter("stars:<10"), SearchFilter::Stars { min: None, max: Some(9) });
        assert_eq!(only_filter("stars:5..20"), SearchFilter::Stars { min: Some(5), max: Some(20) });
        assert_eq!(only_filter("stars:7"), SearchFilter::Stars { min: Some(7), max: Some(7) });
        assert_eq!(only_filter("stars:>1.5k"), SearchFilter::Stars { min: Some(1501), max: None });
        assert_eq!(only_filter("size:>1GiB"), SearchFilter::Size { min: Some(1_073_741_825), max: None });
        assert_eq!(
            only_filter("size:10mb..1gb"),
            SearchFilter::Size { min: Some(10_000_000), max: Some(1_000_000_000) }
        );
        assert_eq!(only_filter("size:512"), SearchFilter::Size { min: Some(512), max: Some(512) });
    }

    #[test]
    fn bad_values_are_errors_and_the_rest_still_runs() {
        for query in [
            "nginx pushed:>2026-13-01",
            "nginx pushed:yesterday",
            "nginx pushed:2026-02-30",
            "nginx pushed:..",
            "nginx stars:>lots",
            "nginx stars:<0",
            "nginx stars:20..5",
            "nginx size:>10parsecs",
            "nginx is:cool",
            "nginx sort:sideways",
        ] {
            let parsed = parse(query);
            assert_eq!(parsed.errors.len(), 1, "{query}: {parsed:?}");
            assert!(parsed.filters.is_empty(), "{query}: {parsed:?}");
            assert_eq!(parsed.words, vec!["nginx"], "{query}");
            assert!(!parsed.errors[0].message.is_empty());
        }
    }

    #[test]
    fn unknown_keys_are_searched_as_text_with_a_warning() {
        let parsed = parse("color:blue nginx");
        assert_eq!(parsed.words, vec!["color:blue", "nginx"]);
        assert_eq!(parsed.warnings.len(), 1);
        assert!(parsed.warnings[0].message.contains("unknown key \"color\""), "{:?}", parsed.warnings);
        // Image references are text, not keys; URLs too.
        let parsed = parse("https://example.com/x");
        assert_eq!(parsed.words, vec!["https://example.com/x"]);
        assert!(parsed.warnings.is_empty());
    }

    #[test]
    fn empty_values_warn_while_typing() {
        let parsed = parse("nginx user:");
        assert!(parsed.filters.is_empty());
        assert_eq!(parsed.warnings.len(), 1);
        assert!(parsed.errors.is_empty());
    }

    #[test]
    fn quotes_negation_and_quoted_values() {
        let parsed = parse(r#"-test "reverse proxy" -"old stuff" user:"alice.test" -arch:amd64 -"#);
        assert_eq!(parsed.excluded_words, vec!["test", "old stuff"]);
        assert_eq!(parsed.phrases, vec!["reverse proxy"]);
        assert_eq!(parsed.filters[0], FilterClause::new(SearchFilter::User { value: "alice.test".into() }));
        assert_eq!(
            parsed.filters[1],
            FilterClause { filter: SearchFilter::Arch { value: "amd64".into() }, negated: true }
        );
        assert!(parsed.words.is_empty());
    }

    #[test]
    fn unbalanced_quotes_run_to_the_end() {
        let parsed = parse(r#"nginx "reverse pro"#);
        assert_eq!(parsed.phrases, vec!["reverse pro"]);
        assert_eq!(parsed.warnings.len(), 1);
        let parsed = parse(r#"user:"alice"#);
        assert_eq!(parsed.filters[0].filter, SearchFilter::User { value: "alice".into() });
        let parsed = parse("\"");
        assert!(parsed.is_empty());
    }

    #[test]
    fn typing_is_only_set_for_a_trailing_word() {
        assert!(parse("ngi").typing);
        assert!(!parse("nginx ").typing);
        assert!(!parse("nginx user:alice").typing);
        assert!(!parse("\"nginx\"").typing);
    }

    #[test]
    fn hostile_input_never_panics() {
        let long = "a".repeat(100_000);
        let parsed = parse(&long);
        assert_eq!(parsed.words, vec!["a".repeat(MAX_QUERY_CHARS)]);
        assert!(!parsed.warnings.is_empty());

        let many = "word ".repeat(1000);
        let parsed = parse(&many);
        assert_eq!(parsed.terms(), MAX_TERMS);

        for input in [
            "\u{0}\u{1}\u{7f}nginx\u{1b}[31m",
            "::::",
            "-",
            "--",
            "- - -",
            "\"\"\"\"\"",
            ":",
            "user:\"",
            "stars:>18446744073709551615",
            "stars:>99999999999999999999999999",
            "size:>1e400",
            "pushed:>99999-01-01",
            "pushed:>-2026-01-01",
            "pushed:\u{1F600}",
            "ユーザー:アリス nginx",
            "\u{202e}evil",
            "key:value:more:colons",
            "-user:",
        ] {
            let _ = parse(input);
        }
        let parsed = parse("\u{0}nginx\u{7}proxy");
        assert_eq!(parsed.words, vec!["nginx", "proxy"]);
    }

    #[test]
    fn help_covers_every_key() {
        for key in
            ["user:", "repo:", "hold:", "os:", "arch:", "platform:", "tag:", "pushed:", "stars:", "size:", "sort:"]
        {
            assert!(help().iter().any(|line| line.syntax == key), "{key} missing from help");
        }
        for line in help() {
            let parsed = parse(line.example);
            assert!(parsed.errors.is_empty() && parsed.warnings.is_empty(), "{}: {parsed:?}", line.example);
        }
    }
}
