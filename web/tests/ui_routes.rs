//! The UI's HTTP behaviour through the real router over empty views: security headers, the 404
//! page, hashed static assets with cache headers and ETags, compression for the UI but never for
//! `/v2`, and the answers when browse or search are not configured.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;

use atcr_projections::Views;
use atcr_query::browse::Browse;
use atcr_query::{LogQuery, RegistryQuery};
use atcr_storage::EventLog;
use atcr_storage::content::ContentStore;
use atcr_web::{AppState, router, ui};

struct Fixture {
    _dir: tempfile::TempDir,
    app: Router,
}

fn fixture(with_browse: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EventLog::open(&dir.path().join("log.redb")).expect("log"));
    let views = Arc::new(Views::open(&dir.path().join("views.redb")).expect("views"));
    let content = Arc::new(ContentStore::open(&dir.path().join("content")).expect("content"));
    let registry = RegistryQuery::new(views, content);
    let browse = with_browse.then(|| Browse::new(registry.clone()));
    let state = AppState {
        query: LogQuery::new(log),
        registry: Some(registry),
        metrics: None,
        browse,
        search: None,
        live: None,
    };
    Fixture { _dir: dir, app: router(state) }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
}

async fn get(app: &Router, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::get(path).header(header::HOST, "registry.test:5000");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).expect("request")).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024).await.expect("body").to_vec();
    Answer { status, headers, body }
}

#[tokio::test]
async fn pages_carry_the_content_security_policy_and_friends() {
    let fixture = fixture(true);
    for path in ["/", "/status", "/no/such/page"] {
        let answer = get(&fixture.app, path, &[]).await;
        let policy = answer.header("content-security-policy");
        assert!(policy.contains("default-src 'self'"), "{path}: {policy}");
        assert!(policy.contains("script-src 'self' 'sha256-"), "{path}: {policy}");
        assert!(policy.contains("style-src 'self';"), "{path}: no inline styles allowed: {policy}");
        assert!(policy.contains("object-src 'none'") && policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(answer.header("x-content-type-options"), "nosniff", "{path}");
        assert!(!answer.header("referrer-policy").is_empty(), "{path}");
        assert!(answer.header("content-type").starts_with("text/html"), "{path}");
    }
}

#[tokio::test]
async fn the_inline_theme_script_is_the_one_the_policy_allows() {
    let fixture = fixture(true);
    let answer = get(&fixture.app, "/", &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let html = answer.text();
    assert!(html.contains(ui::assets::THEME_SCRIPT));
    assert!(answer.header("content-security-policy").contains(ui::assets::THEME_SCRIPT_HASH.as_str()));
    assert_eq!(html.matches("<script>").count(), 1, "exactly one inline script");
}

#[tokio::test]
async fn unknown_pages_are_styled_404s_and_unknown_api_paths_are_json() {
    let fixture = fixture(true);
    for path in
        ["/no/such/page", "/u/nobody.test", "/r/nobody.test/hello", "/r/nobody.test/hello/-/tag/latest", "/r/x/-/nope"]
    {
        let answer = get(&fixture.app, path, &[]).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert!(answer.text().contains("<h1>Not found</h1>"), "{path}: {}", answer.text());
    }
    let api = get(&fixture.app, "/api/v1/nothing", &[]).await;
    assert_eq!(api.status, StatusCode::NOT_FOUND);
    assert!(api.header("content-type").starts_with("application/json"), "{}", api.header("content-type"));
}

#[tokio::test]
async fn static_assets_are_immutable_with_etags_and_revalidate() {
    let fixture = fixture(true);
    let css = ui::assets::url("app.css");
    let answer = get(&fixture.app, &css, &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("cache-control"), "public, max-age=31536000, immutable");
    assert!(answer.header("content-type").starts_with("text/css"));
    let etag = answer.header("etag").to_string();
    assert!(etag.starts_with('"'), "{etag}");
    let revalidated = get(&fixture.app, &css, &[("if-none-match", &etag)]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.body.is_empty());
    let stale = get(&fixture.app, "/static/app.000000000000.css", &[]).await;
    assert_eq!(stale.status, StatusCode::NOT_FOUND);
    let htmx = get(&fixture.app, &ui::assets::url("htmx.min.js"), &[]).await;
    assert!(htmx.text().starts_with("/* htmx 2."), "vendored htmx is served");
}

#[tokio::test]
async fn the_ui_is_compressed_and_v2_is_not() {
    let fixture = fixture(true);
    let css = get(&fixture.app, &ui::assets::url("app.css"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(css.header("content-encoding"), "gzip");
    let page = get(&fixture.app, "/", &[("accept-encoding", "br")]).await;
    assert_eq!(page.header("content-encoding"), "br");
    let v2 = get(&fixture.app, "/v2/_catalog", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(v2.status, StatusCode::OK, "{}", v2.text());
    assert_eq!(v2.header("content-encoding"), "", "/v2 must never be compressed");
}

#[tokio::test]
async fn an_owner_without_a_repository_redirects_to_the_user_page() {
    let fixture = fixture(true);
    for path in ["/r/alice.test", "/r/alice.test/"] {
        let answer = get(&fixture.app, path, &[]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.header("location"), "/u/alice.test", "{path}");
    }
}

#[tokio::test]
async fn the_home_page_renders_over_empty_views() {
    let fixture = fixture(true);
    let answer = get(&fixture.app, "/", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    let html = answer.text();
    assert!(html.contains("Recently pushed") && html.contains("Nothing here yet."), "{html}");
    assert_eq!(answer.header("cache-control"), "no-cache");
}

#[tokio::test]
async fn without_browse_or_search_the_pages_say_so() {
    let fixture = fixture(false);
    assert_eq!(get(&fixture.app, "/", &[]).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let search = get(&fixture.app, "/search?q=x", &[]).await;
    assert_eq!(search.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(search.text().contains("Search is not available"), "{}", search.text());
    let api = get(&fixture.app, "/api/v1/search?q=x", &[]).await;
    assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
    // the status page does not need the views
    assert_eq!(get(&fixture.app, "/status", &[]).await.status, StatusCode::OK);
}
