//! History in the UI and the JSON API: a repository's tag timeline, the record viewer and a
//! user's activity feed. The answers come from `atcr_query::audit::AuditQuery` (the views'
//! history tables, raw records from the log); this module only translates HTTP and renders.
//!
//! - `/r/{owner}/{repository…}/-/history[?tag=]`: every move of every tag, old → new digest
//!   (served by [`repository_history_layer`]: the repository route's `{*rest}` owns every path
//!   under `/r/`, so the history page is picked out before it);
//! - `/at/{did}/{collection}/{rkey}[?version=OFFSET][&diff=A..B]`: the record's JSON (at:// values
//!   link back here), every version, a diff between two versions (the last two by default);
//! - `/u/{owner}/activity[?before=OFFSET]`: a user's record changes, newest first;
//! - JSON: `/api/v1/tag-history/{owner}/{repository…}[?tag=]`,
//!   `/api/v1/records/{did}/{collection}/{rkey}[?diff=A..B]`,
//!   `/api/v1/users/{owner}/activity[?before=&limit=]`; errors are `{"error", "message"}` like
//!   every other `/api/v1` answer.

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use atcr_query::audit::{
    ActivityEntry, ActivityPage, AuditError, AuditQuery, RecordDiff, RecordView, TagMove, TagTimeline, diff_versions,
    parse_at_uri,
};

use super::components::{RenderContext, copy_button};
use super::format::{
    manifest_url, owner_name, path_segment, query_string, repository_path, repository_url, short_digest, time_element,
    user_url,
};
use super::layout::{self, Page, Section};
use super::{html_response, not_found_page, read, request_host, security_headers, unavailable};
use crate::{ApiError, AppState};

/// Activity entries per page.
const ACTIVITY_PAGE: usize = 50;

/// The history pages and their JSON API (the tag-history page is [`repository_history_layer`]).
pub fn routes() -> Router<AppState> {
    let pages = Router::new()
        .route("/at/{did}/{collection}/{rkey}", get(record_page))
        .route("/u/{owner}/activity", get(activity_page))
        .layer(axum::middleware::from_fn(security_headers));
    Router::new()
        .merge(pages)
        .route("/api/v1/tag-history/{owner}/{*repository}", get(api_tag_history))
        .route("/api/v1/records/{did}/{collection}/{rkey}", get(api_record))
        .route("/api/v1/users/{owner}/activity", get(api_activity))
}

pub(crate) fn audit_query(state: &AppState) -> Option<AuditQuery> {
    let registry = state.registry.as_ref()?;
    Some(AuditQuery::new(&state.query, registry.clone()))
}

/// `/at/{did}/{collection}/{rkey}` for an `at://` URI naming a record; `None` for anything else.
pub fn record_url(uri: &str) -> Option<String> {
    let (authority, collection, rkey) = parse_at_uri(uri).ok()?;
    Some(record_path(&authority, &collection, &rkey))
}

fn record_path(did: &str, collection: &str, rkey: &str) -> String {
    format!("/at/{}/{}/{}", path_segment(did), path_segment(collection), path_segment(rkey))
}

pub fn history_url(owner: &str, repository: &str) -> String {
    format!("{}/-/history", repository_url(owner, repository))
}

/// `A..B` → (A, B).
fn parse_range(text: &str) -> Option<(u64, u64)> {
    let (from, to) = text.split_once("..")?;
    Some((from.trim().parse().ok()?, to.trim().parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Renderers (pure).

fn digest_link(owner: &str, repository: &str, digest: Option<&str>) -> Markup {
    match digest {
        Some(digest) => html! {
            a.mono href=(manifest_url(owner, repository, digest)) title=(digest) { (short_digest(digest)) }
        },
        None => html! { span.muted { "(none)" } },
    }
}

/// The tag timeline: each change of each tag, oldest first, old → new digest. The repository
/// page can embed it; `owner` is how links name the owner (handle or DID).
pub fn tag_timeline(moves: &[TagMove], owner: &str, did: &str, repository: &str, context: &RenderContext) -> Markup {
    if moves.is_empty() {
        return html! { p.empty { "No tag has moved yet." } };
    }
    html! {
        div.table-wrap {
            table.data.tag-timeline {
                caption.visually-hidden { "Tag history of " (repository) ", oldest first" }
                thead { tr {
                    th scope="col" { "Tag" }
                    th scope="col" { "Change" }
                    th scope="col" { "From" }
                    th scope="col" { "To" }
                    th scope="col" { "When" }
                    th scope="col" { "Rev" }
                    th scope="col" class="num" { "Offset" }
                } }
                tbody {
                    @for change in moves {
                        tr data-offset=(change.offset) {
                            th scope="row" { span.mono { (change.tag) } }
                            td { (change.change) }
                            td { (digest_link(owner, repository, change.from.as_deref())) }
                            td { "→ " (digest_link(owner, repository, change.to.as_deref())) }
                            td.nowrap { @if let Some(time) = &change.time { (time_element(time, context.now)) } }
                            td { code { (change.rev.as_deref().unwrap_or("—")) } }
                            td.num {
                                @match &change.rkey {
                                    Some(rkey) => a href=(record_path(did, "io.atcr.tag", rkey)) title="The tag record's versions" { (change.offset) },
                                    None => (change.offset),
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub fn tag_history_page(timeline: &TagTimeline, context: &RenderContext) -> Markup {
    let owner = owner_name(&timeline.owner.did, timeline.owner.handle.as_deref()).to_string();
    let name = format!("{owner}/{}", timeline.repository);
    let body = html! {
        div.container.page {
            nav.crumbs aria-label="Breadcrumb" {
                a href=(user_url(&owner)) { (owner) } " / "
                a href=(repository_url(&owner, &timeline.repository)) { (timeline.repository) } " / "
                span aria-current="page" { "history" }
            }
            h1 { "Tag history of " (name) @if let Some(tag) = &timeline.tag { ":" (tag) } }
            p.muted {
                "Every change of " @if timeline.tag.is_some() { "this tag" } @else { "every tag" }
                ", oldest first, from the event log. "
                a href=(format!("/api/v1/tag-history/{}/{}{}", path_segment(&owner), repository_path(&timeline.repository),
                    timeline.tag.as_ref().map(|tag| format!("?{}", query_string(&[("tag", tag.clone())]))).unwrap_or_default())) { "JSON" }
            }
            (tag_timeline(&timeline.moves, &owner, &timeline.owner.did, &timeline.repository, context))
        }
    };
    let title = format!("Tag history · {name}");
    let description = format!("Every move of the tags of {name}.");
    layout::render(Page { title: &title, description: &description, section: Section::Other, query: "", body })
}

fn indent(depth: usize) -> String {
    "  ".repeat(depth)
}

fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// JSON pretty-printed like `serde_json::to_string_pretty`, escaped by maud, with `at://` string
/// values linked to the record viewer.
pub fn json_markup(value: &Value) -> Markup {
    json_value(value, 0)
}

fn json_value(value: &Value, depth: usize) -> Markup {
    match value {
        Value::Object(map) if !map.is_empty() => html! {
            "{\n"
            @for (index, (key, item)) in map.iter().enumerate() {
                (indent(depth + 1)) (quoted(key)) ": " (json_value(item, depth + 1))
                @if index + 1 < map.len() { "," }
                "\n"
            }
            (indent(depth)) "}"
        },
        Value::Array(items) if !items.is_empty() => html! {
            "[\n"
            @for (index, item) in items.iter().enumerate() {
                (indent(depth + 1)) (json_value(item, depth + 1))
                @if index + 1 < items.len() { "," }
                "\n"
            }
            (indent(depth)) "]"
        },
        Value::String(text) => match record_url(text) {
            Some(url) => html! { a href=(url) { (quoted(text)) } },
            None => html! { (quoted(text)) },
        },
        other => html! { (other.to_string()) },
    }
}

fn diff_markup(diff: &RecordDiff) -> Markup {
    html! {
        pre.diff aria-label=(format!("Changes from offset {} to offset {}", diff.from_offset, diff.to_offset)) {
            @for line in &diff.lines {
                @match line.op {
                    "insert" => { ins { "+ " (line.text) } "\n" },
                    "delete" => { del { "- " (line.text) } "\n" },
                    _ => { "  " (line.text) "\n" },
                }
            }
        }
    }
}

/// What the record viewer shows besides the record: which version, which diff.
pub struct RecordPageOptions {
    /// The version whose JSON is shown (`None`: the newest).
    pub version: Option<u64>,
    pub diff: Option<RecordDiff>,
}

pub fn record_page_markup(view: &RecordView, options: &RecordPageOptions, context: &RenderContext) -> Markup {
    let owner = owner_name(&view.owner.did, view.owner.handle.as_deref()).to_string();
    let here = record_path(&view.owner.did, &view.collection, &view.rkey);
    let shown = options.version.and_then(|offset| view.versions.iter().find(|version| version.offset == offset));
    let (shown_offset, shown_json) = match shown {
        Some(version) => (Some(version.offset), version.record.as_ref()),
        None => (view.versions.last().map(|version| version.offset), view.current.as_ref()),
    };
    let body = html! {
        div.container.page {
            nav.crumbs aria-label="Breadcrumb" {
                a href=(user_url(&owner)) { (owner) } " / "
                span { (view.collection) } " / "
                span aria-current="page" { (view.rkey) }
            }
            h1 { "Record " code.break { (view.uri) } (copy_button(&view.uri, "AT URI", true)) }
            p.muted {
                (view.versions.len()) " version" @if view.versions.len() != 1 { "s" } " in the event log. "
                a href=(format!("/api/v1/records/{}/{}/{}", path_segment(&view.owner.did), path_segment(&view.collection), path_segment(&view.rkey))) { "JSON" }
            }
            section.section aria-labelledby="record-title" {
                div.section-head { h2 #record-title {
                    @if options.version.is_some() && shown.is_some() { "Version at offset " (shown_offset.unwrap_or_default()) } @else { "Current record" }
                } }
                @match shown_json {
                    Some(json) => pre.json { code { (json_markup(json)) } },
                    None => p.empty { "The record is deleted at this version." },
                }
            }
            section.section aria-labelledby="versions-title" {
                div.section-head { h2 #versions-title { "Versions" } }
                div.table-wrap {
                    table.data.record-versions {
                        caption.visually-hidden { "Versions of " (view.uri) ", oldest first" }
                        thead { tr {
                            th scope="col" class="num" { "Offset" }
                            th scope="col" { "Action" }
                            th scope="col" { "When" }
                            th scope="col" { "Rev" }
                            th scope="col" { "CID" }
                            th scope="col" { "Commit" }
                            th scope="col" { "" }
                        } }
                        tbody {
                            @for (index, version) in view.versions.iter().enumerate() {
                                tr data-offset=(version.offset) aria-current=[(Some(version.offset) == shown_offset).then_some("true")] {
                                    td.num { a href=(format!("{here}?{}", query_string(&[("version", version.offset.to_string())]))) { (version.offset) } }
                                    td { (version.action) }
                                    td.nowrap { @if let Some(time) = &version.time { (time_element(time, context.now)) } }
                                    td { code { (version.rev.as_deref().unwrap_or("—")) } }
                                    td { code.break { (version.cid.as_deref().unwrap_or("—")) } }
                                    td { code.break { (version.commit_cid.as_deref().unwrap_or("—")) } }
                                    td.nowrap {
                                        @if index > 0 {
                                            a href=(format!("{here}?{}#diff-title", query_string(&[("diff", format!("{}..{}", view.versions[index - 1].offset, version.offset))]))) { "diff with previous" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(diff) = &options.diff {
                section.section aria-labelledby="diff-title" {
                    div.section-head { h2 #diff-title { "Changes from offset " (diff.from_offset) " to offset " (diff.to_offset) } }
                    (diff_markup(diff))
                }
            }
        }
    };
    let title = format!("{} · {}", view.collection, view.rkey);
    let description = format!("Every version of {}.", view.uri);
    layout::render(Page { title: &title, description: &description, section: Section::Other, query: "", body })
}

fn activity_subject(entry: &ActivityEntry, owner: &str) -> Markup {
    let row = &entry.row;
    html! {
        @if let Some(repository) = &row.repository {
            a href=(repository_url(owner, repository)) { (repository) }
            @if let Some(tag) = &row.tag { ":" span.mono { (tag) } }
            @if let Some(digest) = &row.digest { " " (digest_link(owner, repository, Some(digest))) }
        } @else if let Some(subject) = &row.subject {
            "★ "
            @match subject.split_once('/') {
                Some((did, repository)) => a href=(repository_url(did, repository)) { (subject) },
                None => span { (subject) },
            }
        }
    }
}

pub fn activity_markup(page: &ActivityPage, context: &RenderContext) -> Markup {
    let owner = owner_name(&page.owner.did, page.owner.handle.as_deref()).to_string();
    let body = html! {
        div.container.page {
            nav.crumbs aria-label="Breadcrumb" {
                a href=(user_url(&owner)) { (owner) } " / "
                span aria-current="page" { "activity" }
            }
            h1 { "Activity of " (owner) }
            p.muted { "Record changes, newest first. " a href=(format!("/api/v1/users/{}/activity", path_segment(&owner))) { "JSON" } }
            @if page.entries.is_empty() {
                p.empty { "No activity." }
            } @else {
                div.table-wrap {
                    table.data.activity {
                        caption.visually-hidden { "Activity of " (owner) ", newest first" }
                        thead { tr {
                            th scope="col" { "When" }
                            th scope="col" { "Action" }
                            th scope="col" { "Collection" }
                            th scope="col" { "About" }
                            th scope="col" { "Record" }
                        } }
                        tbody {
                            @for entry in &page.entries {
                                tr data-offset=(entry.row.offset) {
                                    td.nowrap { @if let Some(time) = &entry.row.time { (time_element(time, context.now)) } }
                                    td { (entry.row.action) }
                                    td { code { (entry.row.collection) } }
                                    td { (activity_subject(entry, &owner)) }
                                    td { a.mono href=(record_path(&page.owner.did, &entry.row.collection, &entry.row.rkey)) { (entry.row.rkey) } }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(before) = page.next_before {
                nav.pagination aria-label="Pages" {
                    a.button.secondary rel="next" href=(format!("/u/{}/activity?{}", path_segment(&owner), query_string(&[("before", before.to_string())]))) { "Older" }
                }
            }
        }
    };
    let title = format!("Activity · {owner}");
    let description = format!("What {owner} changed in the registry, newest first.");
    layout::render(Page { title: &title, description: &description, section: Section::Other, query: "", body })
}

// ---------------------------------------------------------------------------------------------
// Pages.

/// Serves `/r/{owner}/{repository…}/-/history` before the repository route sees it (that route's
/// `{*rest}` owns every path under `/r/{owner}/`); every other request passes through.
pub async fn repository_history_layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some((owner, repository)) = history_path(request.uri().path()) else { return next.run(request).await };
    let tag = request.uri().query().and_then(tag_parameter).filter(|tag| !tag.is_empty());
    let headers = request.headers().clone();
    let response = repository_history_page(state, owner, repository, tag, &headers).await;
    super::security_headers_on(response)
}

/// `/r/{owner}/{repository…}/-/history` → (owner, repository), percent-decoded.
fn history_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/r/")?.strip_suffix("/-/history")?;
    let (owner, repository) = rest.split_once('/')?;
    let (owner, repository) = (percent_decode(owner)?, percent_decode(repository)?);
    if owner.is_empty() || repository.is_empty() || repository.split('/').any(|part| part.is_empty() || part == "-") {
        return None;
    }
    Some((owner, repository))
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `tag` parameter of a query string.
fn tag_parameter(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "tag").then(|| percent_decode(&value.replace('+', " "))).flatten()
    })
}

pub async fn repository_history_page(
    state: AppState,
    owner: String,
    repository: String,
    tag: Option<String>,
    headers: &HeaderMap,
) -> Response {
    let Some(audit) = audit_query(&state) else { return unavailable("History") };
    let context = RenderContext::new(request_host(headers));
    let (lookup_owner, lookup_repository) = (owner.clone(), repository.clone());
    match read("tag history", move || audit.tag_timeline(&lookup_owner, &lookup_repository, tag.as_deref())).await {
        Ok(Some(timeline)) => html_response(StatusCode::OK, tag_history_page(&timeline, &context)),
        Ok(None) => not_found_page(&format!("atcr knows no repository {owner}/{repository}.")),
        Err(response) => response,
    }
}

#[derive(Debug, Default, Deserialize)]
struct RecordParams {
    version: Option<String>,
    diff: Option<String>,
}

async fn record_page(
    State(state): State<AppState>,
    Path((did, collection, rkey)): Path<(String, String, String)>,
    Query(params): Query<RecordParams>,
    headers: HeaderMap,
) -> Response {
    let Some(audit) = audit_query(&state) else { return unavailable("The record viewer") };
    let context = RenderContext::new(request_host(&headers));
    let uri = format!("at://{did}/{collection}/{rkey}");
    let view = match read("record", move || audit.record(&did, &collection, &rkey)).await {
        Ok(Some(view)) => view,
        Ok(None) => return not_found_page(&format!("The event log holds no version of {uri}.")),
        Err(response) => return response,
    };
    let requested = params.diff.as_deref().and_then(parse_range);
    let default_diff = match view.versions.as_slice() {
        [.., previous, last] => Some((previous.offset, last.offset)),
        _ => None,
    };
    let diff = requested.or(default_diff).and_then(|(from, to)| diff_versions(&view, from, to).ok());
    let version = params.version.as_deref().and_then(|text| text.parse().ok());
    html_response(StatusCode::OK, record_page_markup(&view, &RecordPageOptions { version, diff }, &context))
}

#[derive(Debug, Default, Deserialize)]
struct ActivityParams {
    before: Option<String>,
    limit: Option<String>,
}

async fn activity_page(
    State(state): State<AppState>,
    Path(owner): Path<String>,
    Query(params): Query<ActivityParams>,
    headers: HeaderMap,
) -> Response {
    let Some(audit) = audit_query(&state) else { return unavailable("Activity") };
    let context = RenderContext::new(request_host(&headers));
    let before = params.before.as_deref().and_then(|text| text.parse().ok());
    let lookup = owner.clone();
    match read("activity", move || audit.activity(&lookup, before, ACTIVITY_PAGE)).await {
        Ok(Some(page)) => html_response(StatusCode::OK, activity_markup(&page, &context)),
        Ok(None) => not_found_page(&format!("atcr knows no user {owner}.")),
        Err(response) => response,
    }
}

// ---------------------------------------------------------------------------------------------
// JSON API.

fn api_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError { status, code, message: message.into() }
}

impl From<AuditError> for ApiError {
    fn from(error: AuditError) -> Self {
        match error {
            AuditError::Invalid(message) => api_error(StatusCode::BAD_REQUEST, "bad_request", message),
            AuditError::UnknownHandle(handle) => {
                api_error(StatusCode::NOT_FOUND, "not_found", format!("unknown handle {handle}"))
            }
            error => {
                tracing::error!(%error, "history query failed");
                api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", error.to_string())
            }
        }
    }
}

async fn api_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AuditError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(error) => {
            Err(api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("query task failed: {error}")))
        }
    }
}

fn api_audit(state: &AppState) -> Result<AuditQuery, ApiError> {
    audit_query(state).ok_or_else(|| {
        api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "history is not available on this server")
    })
}

#[derive(Debug, Default, Deserialize)]
struct TagHistoryParams {
    tag: Option<String>,
}

/// `GET /api/v1/tag-history/{owner}/{repository…}[?tag=]`: a [`TagTimeline`].
#[utoipa::path(get, path = "/api/v1/tag-history/{owner}/{repository}", tag = "history", summary = "A repository's tag moves",
    params(
        ("owner" = String, Path, example = "alice.test", description = "A handle or a DID"),
        ("repository" = String, Path, example = "hello", description = "The repository name; may contain `/` (sent unescaped)"),
        ("tag" = Option<String>, Query, description = "Only this tag's moves"),
    ),
    responses(
        (status = 200, description = "The repository's tag moves, newest first", body = atcr_query::audit::TagTimeline),
        (status = 404, description = "No such repository", body = crate::api::ErrorBody),
        (status = 503, description = "History is not configured", body = crate::api::ErrorBody),
    ))]
async fn api_tag_history(
    State(state): State<AppState>,
    Path((owner, repository)): Path<(String, String)>,
    crate::api::ApiQuery(params): crate::api::ApiQuery<TagHistoryParams>,
) -> Result<Response, ApiError> {
    let audit = api_audit(&state)?;
    let repository = repository.trim_end_matches('/').to_string();
    let (lookup_owner, lookup_repository) = (owner.clone(), repository.clone());
    let tag = params.tag.filter(|tag| !tag.is_empty());
    match api_blocking(move || audit.tag_timeline(&lookup_owner, &lookup_repository, tag.as_deref())).await? {
        Some(timeline) => Ok(axum::Json(timeline).into_response()),
        None => Err(ApiError::not_found(format!("no repository {owner}/{repository}"))),
    }
}

/// `GET /api/v1/records/{did}/{collection}/{rkey}[?diff=A..B]`: a [`RecordView`], plus `diff`
/// when asked.
#[utoipa::path(get, path = "/api/v1/records/{did}/{collection}/{rkey}", tag = "history", summary = "Every version of a record",
    params(
        ("did" = String, Path, description = "The record's repository DID"),
        ("collection" = String, Path, description = "The record's collection NSID"),
        ("rkey" = String, Path, description = "The record key"),
        ("diff" = Option<String>, Query, pattern = r"^[0-9]+\.\.[0-9]+$", description = "`FROM_OFFSET..TO_OFFSET`: add a line diff between two versions"),
    ),
    responses(
        (status = 200, description = "Every version of the record atcr holds, from the log (with `diff` when asked)", body = atcr_query::audit::RecordView),
        (status = 400, description = "A bad `diff`", body = crate::api::ErrorBody),
        (status = 404, description = "No version of that record", body = crate::api::ErrorBody),
        (status = 503, description = "History is not configured", body = crate::api::ErrorBody),
    ))]
async fn api_record(
    State(state): State<AppState>,
    Path((did, collection, rkey)): Path<(String, String, String)>,
    crate::api::ApiQuery(params): crate::api::ApiQuery<RecordParams>,
) -> Result<Response, ApiError> {
    let audit = api_audit(&state)?;
    let range = match params.diff.as_deref() {
        Some(text) => {
            Some(parse_range(text).ok_or_else(|| ApiError::bad_request("diff must be FROM_OFFSET..TO_OFFSET"))?)
        }
        None => None,
    };
    let uri = format!("at://{did}/{collection}/{rkey}");
    let view = api_blocking(move || audit.record(&did, &collection, &rkey))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no version of {uri}")))?;
    let mut body = serde_json::to_value(&view).unwrap_or(Value::Null);
    if let Some((from, to)) = range {
        let diff = diff_versions(&view, from, to)?;
        if let Value::Object(object) = &mut body {
            object.insert("diff".into(), serde_json::to_value(diff).unwrap_or(Value::Null));
        }
    }
    Ok(axum::Json(body).into_response())
}

/// `GET /api/v1/users/{owner}/activity[?before=&limit=]`: an [`ActivityPage`].
#[utoipa::path(get, path = "/api/v1/users/{owner}/activity", tag = "history", summary = "A user's record changes",
    params(
        ("owner" = String, Path, example = "alice.test", description = "A handle or a DID"),
        ("before" = Option<u64>, Query, description = "The previous page's `next_before` (a log offset)"),
        ("limit" = Option<u64>, Query, description = "Entries per page (clamped to 1..200)"),
    ),
    responses(
        (status = 200, description = "The user's record changes, newest first", body = atcr_query::audit::ActivityPage),
        (status = 400, description = "A bad parameter", body = crate::api::ErrorBody),
        (status = 404, description = "No such user", body = crate::api::ErrorBody),
        (status = 503, description = "History is not configured", body = crate::api::ErrorBody),
    ))]
async fn api_activity(
    State(state): State<AppState>,
    Path(owner): Path<String>,
    crate::api::ApiQuery(params): crate::api::ApiQuery<ActivityParams>,
) -> Result<Response, ApiError> {
    let audit = api_audit(&state)?;
    let number = |name: &str, text: Option<&str>| -> Result<Option<u64>, ApiError> {
        text.map(|text| {
            text.parse().map_err(|_| ApiError::bad_request(format!("{name} must be a non-negative integer")))
        })
        .transpose()
    };
    let before = number("before", params.before.as_deref())?;
    let limit = number("limit", params.limit.as_deref())?.unwrap_or(ACTIVITY_PAGE as u64) as usize;
    let lookup = owner.clone();
    match api_blocking(move || audit.activity(&lookup, before, limit)).await? {
        Some(page) => Ok(axum::Json(page).into_response()),
        None => Err(ApiError::not_found(format!("no user {owner}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_markup_prints_like_serde_json_and_links_at_uris() {
        let value = json!({
            "manifest": "at://did:plc:alice/io.atcr.manifest/abc",
            "list": [1, true, null, {}], "empty": [], "text": "<script>\"x\"</script>",
        });
        let markup = json_markup(&value).into_string();
        assert!(markup.contains(r#"<a href="/at/did:plc:alice/io.atcr.manifest/abc">"#), "{markup}");
        assert!(!markup.contains("<script>"), "escaped: {markup}");
        let text_only = markup
            .replace(r#"<a href="/at/did:plc:alice/io.atcr.manifest/abc">"#, "")
            .replace("</a>", "")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&amp;", "&");
        assert_eq!(text_only, serde_json::to_string_pretty(&value).unwrap());
    }

    #[test]
    fn history_paths_are_picked_out_and_decoded() {
        assert_eq!(history_path("/r/alice.test/app/-/history"), Some(("alice.test".into(), "app".into())));
        assert_eq!(history_path("/r/did:plc:x/web/app/-/history"), Some(("did:plc:x".into(), "web/app".into())));
        assert_eq!(history_path("/r/alice.test/my%20app/-/history"), Some(("alice.test".into(), "my app".into())));
        assert_eq!(history_path("/r/alice.test/app"), None);
        assert_eq!(history_path("/r/alice.test/app/-/tag/x"), None);
        assert_eq!(history_path("/r/alice.test/-/history"), None);
        assert_eq!(history_path("/r/alice.test/a//b/-/history"), None);
        assert_eq!(tag_parameter("x=1&tag=v1.0"), Some("v1.0".into()));
        assert_eq!(parse_range("3..9"), Some((3, 9)));
        assert_eq!(parse_range("3-9"), None);
    }

    #[test]
    fn record_links_encode_their_segments() {
        assert_eq!(record_url("at://did:plc:x/io.atcr.tag/a b"), Some("/at/did:plc:x/io.atcr.tag/a%20b".into()));
        assert_eq!(record_url("at://did:plc:x/io.atcr.tag"), None);
        assert_eq!(record_url("https://example.com/a/b/c"), None);
    }
}
