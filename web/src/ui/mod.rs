//! The web UI: server-rendered HTML (maud) with htmx for live search, no JavaScript build step
//! and nothing fetched at run time.
//!
//! - `/` home, `/search`, `/u/{handle or DID}`, `/r/{owner}/{repository…}` (repository names may
//!   contain `/`; `/-/` separates the name from `tag/{tag}` or `manifest/{digest}`, and cannot be
//!   part of a name), `/status`, `/static/{hashed file}`;
//! - every page gets a Content-Security-Policy (no inline script but the theme script's hash, no
//!   inline style), `X-Content-Type-Options: nosniff` and a `Referrer-Policy`;
//! - unknown pages get the styled 404 page with status 404.
//!
//! Handlers translate HTTP to `atcr-query` calls (on the blocking pool: redb may touch the disk)
//! and view models to markup through the pure renderers in [`views`] and [`search`].

pub mod assets;
pub mod badges;
pub mod charts;
mod components;
pub mod feeds;
pub mod format;
pub mod history;
pub mod holds;
mod install;
pub mod layers;
mod layout;
pub mod markdown;
pub mod scans;
mod search;
mod status;
mod views;
pub mod webhooks;

use std::sync::LazyLock;

use atcr_query::search::{SearchParams, help};
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::Markup;
use serde::Deserialize;

use crate::AppState;

pub use components::{LiveRegion, RenderContext};

/// The Content-Security-Policy of every UI page.
static CONTENT_SECURITY_POLICY: LazyLock<HeaderValue> = LazyLock::new(|| {
    let policy = format!(
        "default-src 'self'; script-src 'self' {}; style-src 'self'; img-src 'self' data: https:; \
         object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
        *assets::THEME_SCRIPT_HASH
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'self'"))
});

/// The UI routes (the caller adds compression and merges them with the API and `/v2`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home_page))
        .route("/search", get(search_page))
        .route("/u/{owner}", get(user_page))
        .route("/u/{owner}/feed.atom", get(feeds::user_feed))
        .route("/r/{owner}", get(owner_redirect))
        .route("/r/{owner}/", get(owner_redirect))
        .route("/r/{owner}/{*rest}", get(repository_or_manifest_page))
        .route("/status", get(status_page))
        .route("/install", get(install::install_page))
        .route("/static/{file}", get(assets::serve))
        .layer(axum::middleware::from_fn(security_headers))
}

/// CSP, nosniff, referrer policy and frame denial on every UI response.
pub async fn security_headers(request: Request, next: Next) -> Response {
    security_headers_on(next.run(request).await)
}

/// The same headers, on a response built outside the UI router (the fallback 404).
pub fn security_headers_on(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY.clone());
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("strict-origin-when-cross-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The host pull commands name: the request's `Host` header, sanitized.
pub fn request_host(headers: &HeaderMap) -> String {
    format::sanitize_host(headers.get(header::HOST).and_then(|value| value.to_str().ok()))
}

/// An HTML page with a status and `Cache-Control: no-cache` (pages change with every push).
pub fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        markup.into_string(),
    )
        .into_response()
}

/// The styled 404 page.
pub fn not_found_page(what: &str) -> Response {
    html_response(StatusCode::NOT_FOUND, views::not_found(what))
}

/// A failure on our side, as a page (the details go to the log, not to the visitor).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    html_response(status, views::server_error(message))
}

async fn status_page(State(state): State<AppState>) -> Response {
    let query = state.query.clone();
    match tokio::task::spawn_blocking(move || query.status(25)).await {
        Ok(Ok(report)) => {
            let mut response = html_response(StatusCode::OK, status::status(&report));
            response.headers_mut().insert("refresh", HeaderValue::from_static("10"));
            response
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "status page query failed");
            error_page(StatusCode::INTERNAL_SERVER_ERROR, "The event log could not be read.")
        }
        Err(error) => {
            tracing::error!(%error, "status page task failed");
            error_page(StatusCode::INTERNAL_SERVER_ERROR, "The event log could not be read.")
        }
    }
}

/// Runs a read on the blocking pool; a failure becomes the error page (and a log line).
async fn read<T, E>(what: &'static str, work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, Response>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            tracing::error!(%error, what, "page query failed");
            Err(error_page(StatusCode::INTERNAL_SERVER_ERROR, "This page could not be built. Try again in a moment."))
        }
        Err(error) => {
            tracing::error!(%error, what, "page task failed");
            Err(error_page(StatusCode::INTERNAL_SERVER_ERROR, "This page could not be built. Try again in a moment."))
        }
    }
}

fn unavailable(what: &str) -> Response {
    error_page(StatusCode::SERVICE_UNAVAILABLE, &format!("{what} is not available on this server."))
}

/// The live region of a page: the event stream from the views checkpoint the page is rendered
/// from (read before the page, so no event between the two is missed), when live events run.
fn live_region(
    state: &AppState,
    checkpoint: Option<u64>,
    filter: &[(&str, String)],
    page_url: String,
) -> Option<LiveRegion> {
    state.live.as_ref()?;
    let mut pairs: Vec<(&str, String)> = filter.to_vec();
    pairs.push(("from", checkpoint?.to_string()));
    Some(LiveRegion { events_url: format!("/api/v1/events?{}", format::query_string(&pairs)), page_url })
}

/// The views checkpoint now (`None` without views).
fn views_checkpoint(state: &AppState) -> impl FnOnce() -> Result<Option<u64>, String> + Send + 'static {
    let registry = state.registry.clone();
    move || match registry {
        Some(registry) => registry.views().checkpoint().map(Some).map_err(|error| error.to_string()),
        None => Ok(None),
    }
}

async fn home_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(browse) = state.browse.clone() else { return unavailable("Browsing") };
    let checkpoint = views_checkpoint(&state);
    let lookup = move || {
        let checkpoint = checkpoint()?;
        Ok::<_, String>((checkpoint, browse.home().map_err(|error| error.to_string())?))
    };
    match read("home", lookup).await {
        Ok((checkpoint, page)) => {
            let filter = [("kind", "record,manifest_stored".to_string())];
            let live = live_region(&state, checkpoint, &filter, "/".to_string());
            let context = RenderContext::new(request_host(&headers)).with_live(live);
            html_response(StatusCode::OK, views::home(&page, &context))
        }
        Err(response) => response,
    }
}

async fn user_page(State(state): State<AppState>, Path(owner): Path<String>, headers: HeaderMap) -> Response {
    let Some(browse) = state.browse.clone() else { return unavailable("Browsing") };
    let lookup = owner.clone();
    match read("user", move || browse.user(&lookup)).await {
        Ok(Some(page)) => {
            html_response(StatusCode::OK, views::user(&page, &RenderContext::new(request_host(&headers))))
        }
        Ok(None) => not_found_page(&format!("atcr knows no user {owner}.")),
        Err(response) => response,
    }
}

/// `/r/{owner}` names no repository: the owner's page lists them all.
async fn owner_redirect(Path(owner): Path<String>) -> Response {
    axum::response::Redirect::to(&format::user_url(&owner)).into_response()
}

/// What `/r/{owner}/{rest}` names: a repository, a tag or manifest of one, its feed or a badge.
#[derive(Debug, PartialEq, Eq)]
enum RepositoryRoute {
    Repository { repository: String },
    Tag { repository: String, tag: String },
    Manifest { repository: String, digest: String },
    Feed { repository: String },
    Badge { repository: String, kind: badges::BadgeKind },
}

/// `web/nginx-mini` → repository; `web/nginx-mini/-/tag/1.27` → tag; `…/-/manifest/sha256:…`
/// → manifest; `…/-/feed.atom` → its Atom feed; `…/-/badge/latest.svg` → a badge. `-` alone is never a name component, so `/-/` cannot be part of a name.
fn parse_repository_route(rest: &str) -> Option<RepositoryRoute> {
    let rest = rest.trim_end_matches('/');
    let (repository, sub) = match rest.split_once("/-/") {
        Some((repository, sub)) => (repository, Some(sub)),
        None => (rest, None),
    };
    if repository.is_empty() || repository.split('/').any(str::is_empty) {
        return None;
    }
    let repository = repository.to_string();
    match sub.map(|sub| sub.split_once('/')) {
        None => Some(RepositoryRoute::Repository { repository }),
        Some(Some(("tag", tag))) if !tag.is_empty() && !tag.contains('/') => {
            Some(RepositoryRoute::Tag { repository, tag: tag.to_string() })
        }
        Some(Some(("manifest", digest))) if !digest.is_empty() && !digest.contains('/') => {
            Some(RepositoryRoute::Manifest { repository, digest: digest.to_string() })
        }
        Some(Some(("badge", file))) => {
            badges::BadgeKind::from_file_name(file).map(|kind| RepositoryRoute::Badge { repository, kind })
        }
        Some(None) if sub == Some("feed.atom") => Some(RepositoryRoute::Feed { repository }),
        Some(_) => None,
    }
}

/// Tag moves shown on the repository page.
const RECENT_TAG_MOVES: usize = 10;

async fn repository_or_manifest_page(
    State(state): State<AppState>,
    Path((owner, rest)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(route) = parse_repository_route(&rest) else {
        return not_found_page("There is no page at this address.");
    };
    let context = RenderContext::new(request_host(&headers));
    match route {
        RepositoryRoute::Feed { repository } => feeds::repository_feed(&state, owner, repository, &headers).await,
        RepositoryRoute::Badge { repository, kind } => {
            badges::repository_badge(&state, owner, repository, kind, &headers).await
        }
        RepositoryRoute::Repository { repository } => {
            let Some(browse) = state.browse.clone() else { return unavailable("Browsing") };
            let (lookup_owner, lookup_repository) = (owner.clone(), repository.clone());
            let audit = history::audit_query(&state);
            let checkpoint = views_checkpoint(&state);
            let lookup = move || {
                let checkpoint = checkpoint()?;
                let Some(page) =
                    browse.repository(&lookup_owner, &lookup_repository).map_err(|error| error.to_string())?
                else {
                    return Ok(None);
                };
                let moves = match audit {
                    Some(audit) => audit
                        .tag_timeline(&lookup_owner, &lookup_repository, None)
                        .map_err(|error| error.to_string())?
                        .map(|timeline| timeline.moves)
                        .unwrap_or_default(),
                    None => Vec::new(),
                };
                Ok::<_, String>(Some((page, moves, checkpoint)))
            };
            match read("repository", lookup).await {
                Ok(Some((page, moves, checkpoint))) => {
                    let filter = [("did", page.did.clone()), ("repository", page.repository.clone())];
                    let page_url = format::repository_url(&owner, &page.repository);
                    let context = context.with_live(live_region(&state, checkpoint, &filter, page_url));
                    // The newest moves, newest first; the full timeline is one click away.
                    let recent: Vec<_> = moves.into_iter().rev().take(RECENT_TAG_MOVES).collect();
                    let timeline = history::tag_timeline(&recent, &owner, &page.did, &page.repository, &context);
                    let analytics = holds::repository_section_for(&state, &page.did, &page.repository).await;
                    html_response(
                        StatusCode::OK,
                        views::repository_with_sections(&page, &context, Some(timeline), analytics),
                    )
                }
                Ok(None) => not_found_page(&format!("atcr knows no repository {owner}/{repository}.")),
                Err(response) => response,
            }
        }
        RepositoryRoute::Tag { repository, tag: reference }
        | RepositoryRoute::Manifest { repository, digest: reference } => {
            let Some(browse) = state.browse.clone() else { return unavailable("Browsing") };
            let (lookup_owner, lookup_repository, lookup_reference) =
                (owner.clone(), repository.clone(), reference.clone());
            match read("manifest", move || browse.manifest(&lookup_owner, &lookup_repository, &lookup_reference)).await
            {
                Ok(Some(page)) => {
                    let layers = layers::manifest_section(&state, &owner, &repository, &page.digest, &context).await;
                    let layers = scans::with_security_section(&state, &page, &owner, &reference, layers).await;
                    html_response(StatusCode::OK, views::manifest_with(&page, &context, layers))
                }
                Ok(None) => not_found_page(&format!("{owner}/{repository} has no tag or manifest {reference}.")),
                Err(response) => response,
            }
        }
    }
}

/// `?q=&sort=&page=` as typed by people: a page that is not a number is page 1, not an error.
#[derive(Debug, Default, Deserialize)]
struct SearchQueryParams {
    #[serde(default)]
    q: String,
    sort: Option<String>,
    page: Option<String>,
}

async fn search_page(
    State(state): State<AppState>,
    Query(params): Query<SearchQueryParams>,
    headers: HeaderMap,
) -> Response {
    let Some(service) = state.search.clone() else { return unavailable("Search") };
    if !service.is_ready() {
        return error_page(StatusCode::SERVICE_UNAVAILABLE, "The search index is being built. Try again in a moment.");
    }
    let params = SearchParams {
        q: params.q,
        sort: params.sort,
        page: params.page.and_then(|page| page.trim().parse().ok()),
        per_page: None,
    };
    // htmx asks for the results only; a history restore needs the whole page.
    let fragment_only = headers.contains_key("hx-request") && !headers.contains_key("hx-history-restore-request");
    let context = RenderContext::new(request_host(&headers));
    let mut response = match read("search", move || service.search(&params)).await {
        Ok(results) if fragment_only => html_response(StatusCode::OK, search::results_fragment(&results, &context)),
        Ok(results) => html_response(StatusCode::OK, search::page(&results, help(), &context)),
        Err(response) => response,
    };
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("HX-Request"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_routes_allow_slashes_in_names() {
        let repository = |name: &str| Some(RepositoryRoute::Repository { repository: name.to_string() });
        assert_eq!(parse_repository_route("hello"), repository("hello"));
        assert_eq!(parse_repository_route("web/nginx-mini"), repository("web/nginx-mini"));
        assert_eq!(parse_repository_route("web/nginx-mini/"), repository("web/nginx-mini"));
        assert_eq!(
            parse_repository_route("web/nginx-mini/-/tag/1.27"),
            Some(RepositoryRoute::Tag { repository: "web/nginx-mini".into(), tag: "1.27".into() })
        );
        assert_eq!(
            parse_repository_route("a/b/c/-/manifest/sha256:ab"),
            Some(RepositoryRoute::Manifest { repository: "a/b/c".into(), digest: "sha256:ab".into() })
        );
        assert_eq!(parse_repository_route("hello/-/blob/x"), None);
        assert_eq!(parse_repository_route("hello/-/tag/"), None);
        assert_eq!(parse_repository_route("hello/-/tag/a/b"), None);
        assert_eq!(parse_repository_route("a//b"), None);
        assert_eq!(
            parse_repository_route("web/nginx-mini/-/feed.atom"),
            Some(RepositoryRoute::Feed { repository: "web/nginx-mini".into() })
        );
        assert_eq!(
            parse_repository_route("a/b/-/badge/size.svg"),
            Some(RepositoryRoute::Badge { repository: "a/b".into(), kind: badges::BadgeKind::Size })
        );
        assert_eq!(
            parse_repository_route("a/-/badge/pulls.svg"),
            Some(RepositoryRoute::Badge { repository: "a".into(), kind: badges::BadgeKind::Pulls })
        );
        assert_eq!(parse_repository_route("a/-/badge/latest.svg/x"), None);
        assert_eq!(parse_repository_route("a/-/feed.rss"), None);
        assert_eq!(parse_repository_route(""), None);
    }
}
