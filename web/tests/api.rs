//! The JSON API through the real router over real views: the new registry endpoints answer as
//! the OpenAPI document says, 200 JSON answers carry weak ETags and honour `If-None-Match` with
//! 304, `/api` answers carry CORS headers (and preflights are answered) while the UI does not,
//! every error has the `{code, message}` body, cursors page through tags and repositories
//! without gaps or repeats, and the export holds the identity, its record history, its stars
//! and says it has no pull counts.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use atcr_projections::{ProjectionRunner, Views};
use atcr_query::browse::Browse;
use atcr_query::{LogQuery, RegistryQuery};
use atcr_storage::content::ContentStore;
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
use atcr_web::{AppState, router};

const ALICE: &str = "did:plc:alice";
const BOB: &str = "did:plc:bob";
const TAGS: usize = 7;

fn put(did: &str, rev: &str, time: &str, collection: &str, rkey: &str, record: Value) -> Event {
    Event {
        source: Source::Firehose,
        upstream_seq: Some(100),
        did: did.into(),
        rev: Some(rev.into()),
        upstream_time: Some(time.into()),
        received_at_us: 1,
        commit_cid: Some(format!("bafycommit{rev}")),
        body: EventBody::RecordPut {
            collection: collection.into(),
            rkey: rkey.into(),
            cid: format!("bafyrecord{rev}"),
            action: PutAction::Create,
            record: serde_ipld_dagcbor::to_vec(&record).expect("dag-cbor"),
        },
    }
}

fn identity(did: &str, handle: &str) -> Event {
    let document = json!({ "id": did, "alsoKnownAs": [format!("at://{handle}")] }).to_string();
    Event {
        source: Source::Enrichment,
        upstream_seq: None,
        did: did.into(),
        rev: None,
        upstream_time: None,
        received_at_us: 1,
        commit_cid: None,
        body: EventBody::IdentityResolved { document_json: document },
    }
}

fn digest(index: usize) -> String {
    format!("{index:064x}")
}

/// Alice: repositories `app` (one manifest, `TAGS` tags) and `tools/cli`; Bob stars `app`.
fn app() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut events = vec![identity(ALICE, "alice.test"), identity(BOB, "bob.test")];
    for (index, repository) in ["app", "tools/cli"].iter().enumerate() {
        let record = json!({
            "repository": repository,
            "digest": format!("sha256:{}", digest(index)),
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
        });
        events.push(put(
            ALICE,
            &format!("3m{index}"),
            "2026-05-01T09:00:00Z",
            "io.atcr.manifest",
            &digest(index),
            record,
        ));
    }
    for number in 0..TAGS {
        let time = format!("2026-05-0{}T10:00:00Z", number + 2);
        let record = json!({
            "repository": "app",
            "tag": format!("v{number}"),
            "manifest": format!("at://{ALICE}/io.atcr.manifest/{}", digest(0)),
            "createdAt": time,
        });
        events.push(put(ALICE, &format!("3t{number}"), &time, "io.atcr.tag", &format!("app_v{number}"), record));
    }
    let star = json!({ "subject": format!("at://{ALICE}/io.atcr.repo.page/app"), "createdAt": "2026-05-09T00:00:00Z" });
    events.push(put(BOB, "3s0", "2026-05-09T00:00:00Z", "io.atcr.sailor.star", "3star", star));
    let log = Arc::new(EventLog::open(&dir.path().join("log.redb")).expect("log"));
    log.append(AppendBatch { events, ..AppendBatch::default() }).expect("append");
    let views = Arc::new(Views::open(&dir.path().join("views.redb")).expect("views"));
    ProjectionRunner::new(log.clone(), views.clone()).catch_up().expect("catch up");
    let content = Arc::new(ContentStore::open(&dir.path().join("content")).expect("content"));
    let registry = RegistryQuery::new(views, content);
    let state = AppState {
        query: LogQuery::new(log),
        browse: Some(Browse::new(registry.clone())),
        registry: Some(registry),
        metrics: None,
        search: None,
        live: None,
    };
    (dir, router(state))
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

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| panic!("not json ({error}): {:?}", self.body))
    }
}

async fn send(app: &Router, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = Request::builder().method(method).uri(path).header(header::HOST, "registry.test");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).expect("request")).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24).await.expect("body").to_vec();
    Answer { status, headers, body }
}

async fn get(app: &Router, path: &str) -> Answer {
    send(app, Method::GET, path, &[]).await
}

#[tokio::test]
async fn the_registry_endpoints_answer_from_the_views() {
    let (_dir, app) = app();
    let user = get(&app, "/api/v1/users/alice.test").await;
    assert_eq!(user.status, StatusCode::OK);
    let user = user.json();
    assert_eq!(user["did"], ALICE);
    assert_eq!(user["repository_count"], 2);
    assert_eq!(user["next_cursor"], Value::Null);

    let repository = get(&app, &format!("/api/v1/repositories/{ALICE}/app")).await.json();
    assert_eq!(repository["repository"], "app");
    assert_eq!(repository["tags"].as_array().map(Vec::len), Some(TAGS));
    assert_eq!(repository["tags"][0]["name"], format!("v{}", TAGS - 1), "newest first");
    assert_eq!(repository["stars"], 1);

    let nested = get(&app, "/api/v1/repositories/alice.test/tools/cli").await;
    assert_eq!(nested.status, StatusCode::OK);
    assert_eq!(nested.json()["repository"], "tools/cli");

    let manifest = get(&app, &format!("/api/v1/manifests/alice.test/tools/cli/sha256:{}", digest(1))).await;
    assert_eq!(manifest.status, StatusCode::OK);
    assert_eq!(manifest.json()["digest"], format!("sha256:{}", digest(1)));
    let by_tag = get(&app, "/api/v1/manifests/alice.test/app/v3").await.json();
    assert_eq!(
        (by_tag["digest"].as_str(), by_tag["reference_tag"].as_str()),
        (Some(&*format!("sha256:{}", digest(0))), Some("v3"))
    );

    let stars = get(&app, "/api/v1/stars/alice.test/app").await.json();
    assert_eq!(stars["count"], 1);
    assert_eq!(stars["stargazers"][0]["did"], BOB);
}

#[tokio::test]
async fn errors_have_one_shape() {
    let (_dir, app) = app();
    for (path, status, code) in [
        ("/api/v1/users/nobody.test", StatusCode::NOT_FOUND, "not_found"),
        ("/api/v1/repositories/alice.test/nope", StatusCode::NOT_FOUND, "not_found"),
        ("/api/v1/manifests/alice.test/app", StatusCode::NOT_FOUND, "not_found"),
        ("/api/v1/stars/alice.test/nope", StatusCode::NOT_FOUND, "not_found"),
        ("/api/v1/export/did:plc:nobody", StatusCode::NOT_FOUND, "not_found"),
        ("/api/v1/repositories/alice.test/app?limit=0", StatusCode::BAD_REQUEST, "bad_request"),
        ("/api/v1/repositories/alice.test/app?cursor=%21%21", StatusCode::BAD_REQUEST, "bad_request"),
        ("/api/v1/log/minus-one", StatusCode::BAD_REQUEST, "bad_request"),
        ("/api/v1/no-such-endpoint", StatusCode::NOT_FOUND, "not_found"),
    ] {
        let answer = get(&app, path).await;
        assert_eq!(answer.status, status, "{path}");
        assert!(answer.header("content-type").starts_with("application/json"), "{path}");
        let body = answer.json();
        assert_eq!(body["code"], code, "{path}: {body}");
        assert_eq!(body["error"], code, "{path}: the first version's name stays");
        assert!(body["message"].as_str().is_some_and(|message| !message.is_empty()), "{path}: {body}");
    }
}

#[tokio::test]
async fn etags_answer_304_when_the_client_has_the_body() {
    let (_dir, app) = app();
    for path in
        ["/api/v1/users/alice.test", "/api/v1/repositories/alice.test/app", "/api/v1/log?limit=5", "/api/openapi.json"]
    {
        let first = get(&app, path).await;
        assert_eq!(first.status, StatusCode::OK, "{path}");
        let etag = first.header("etag").to_string();
        assert!(etag.starts_with("W/\""), "{path}: {etag:?}");
        assert_eq!(get(&app, path).await.header("etag"), etag, "{path}: same body, same etag");
        let again = send(&app, Method::GET, path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.body.is_empty(), "{path}");
        assert_eq!(again.header("etag"), etag);
        let stale = send(&app, Method::GET, path, &[("if-none-match", "W/\"something-else\"")]).await;
        assert_eq!(stale.status, StatusCode::OK, "{path}");
    }
    let page_one = get(&app, "/api/v1/repositories/alice.test/app?limit=2").await;
    let page_all = get(&app, "/api/v1/repositories/alice.test/app").await;
    assert_ne!(page_one.header("etag"), page_all.header("etag"), "different bodies, different etags");
    // Errors carry no ETag.
    assert_eq!(get(&app, "/api/v1/users/nobody.test").await.header("etag"), "");
}

#[tokio::test]
async fn cors_allows_get_on_the_api_only() {
    let (_dir, app) = app();
    let answer = send(&app, Method::GET, "/api/v1/status", &[("origin", "https://dashboard.example")]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("access-control-allow-origin"), "*");
    assert!(answer.header("access-control-expose-headers").to_lowercase().contains("etag"));
    let preflight = send(
        &app,
        Method::OPTIONS,
        "/api/v1/users/alice.test",
        &[("origin", "https://dashboard.example"), ("access-control-request-method", "GET")],
    )
    .await;
    assert!(preflight.status.is_success(), "{}", preflight.status);
    assert_eq!(preflight.header("access-control-allow-origin"), "*");
    let methods = preflight.header("access-control-allow-methods").to_string();
    assert!(methods.contains("GET") && !methods.contains("POST"), "{methods}");
    let page = send(&app, Method::GET, "/", &[("origin", "https://dashboard.example")]).await;
    assert_eq!(page.header("access-control-allow-origin"), "", "the UI is not shared cross-origin");
}

#[tokio::test]
async fn cursors_page_through_tags_without_gaps_or_repeats() {
    let (_dir, app) = app();
    let mut seen = Vec::new();
    let mut path = "/api/v1/repositories/alice.test/app?limit=3".to_string();
    for _ in 0..10 {
        let page = get(&app, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        let page = page.json();
        let tags = page["tags"].as_array().expect("tags");
        assert!(tags.len() <= 3);
        seen.extend(tags.iter().map(|tag| tag["name"].as_str().unwrap_or_default().to_string()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/repositories/alice.test/app?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..TAGS).rev().map(|number| format!("v{number}")).collect();
    assert_eq!(seen, expected);
    let repositories = get(&app, "/api/v1/users/alice.test?limit=1").await.json();
    assert_eq!(repositories["repositories"].as_array().map(Vec::len), Some(1));
    let cursor = repositories["next_cursor"].as_str().expect("a second page");
    let second = get(&app, &format!("/api/v1/users/alice.test?limit=1&cursor={cursor}")).await.json();
    assert_eq!(second["next_cursor"], Value::Null);
    let names: BTreeSet<&str> =
        [&repositories, &second].iter().filter_map(|page| page["repositories"][0]["repository"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["app", "tools/cli"]));
}

#[tokio::test]
async fn the_export_holds_the_identity_its_history_and_stars() {
    let (_dir, app) = app();
    let answer = get(&app, "/api/v1/export/did:plc:alice").await;
    assert_eq!(answer.status, StatusCode::OK);
    let disposition = answer.header("content-disposition");
    assert!(disposition.starts_with("attachment;") && disposition.contains(".json"), "{disposition}");
    let export = answer.json();
    assert_eq!(export["did"], ALICE);
    assert_eq!(export["identity"]["handle"], "alice.test");
    let history = export["record_history"].as_array().expect("history");
    assert_eq!(history.len(), 2 + TAGS, "two manifests and every tag: {history:?}");
    let offsets: Vec<u64> = history.iter().filter_map(|event| event["offset"].as_u64()).collect();
    assert_eq!(offsets.len(), history.len(), "every change is a log event with its offset");
    assert!(offsets.windows(2).all(|pair| pair[0] < pair[1]), "oldest first: {offsets:?}");
    assert_eq!(export["repositories"].as_array().map(Vec::len), Some(2));
    assert_eq!(export["stars_received"][0]["stargazers"][0]["did"], BOB);
    assert_eq!(export["truncated"], false);
    assert!(export["notes"].to_string().contains("no pull counts"), "{}", export["notes"]);
    // Bob's export holds the star he gave.
    let bob = get(&app, "/api/v1/export/bob.test").await.json();
    assert_eq!(bob["did"], BOB);
    assert!(bob["record_history"].to_string().contains("io.atcr.sailor.star"), "{}", bob["record_history"]);
}

#[tokio::test]
async fn the_document_is_served_and_names_its_schemas() {
    let (_dir, app) = app();
    let answer = get(&app, "/api/openapi.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    let document = answer.json();
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.1")));
    assert_eq!(
        document["paths"]["/api/v1/events"]["get"]["responses"]["200"]["content"]
            .as_object()
            .map(|content| content.contains_key("text/event-stream")),
        Some(true)
    );
}

#[tokio::test]
async fn the_install_page_names_this_host_for_every_client() {
    let (_dir, app) = app();
    let page = get(&app, "/install").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.header("content-security-policy").contains("default-src 'self'"));
    let html = String::from_utf8_lossy(&page.body);
    for command in [
        "docker pull registry.test/OWNER/REPOSITORY:TAG",
        "podman pull registry.test/",
        "nerdctl pull registry.test/",
        "skopeo copy docker://registry.test/",
        "crane pull registry.test/",
    ] {
        assert!(html.contains(command), "{command} missing");
    }
}

#[tokio::test]
async fn the_explorer_is_served_from_this_server_only() {
    let (_dir, app) = app();
    let page = get(&app, "/api/docs").await;
    assert_eq!(page.status, StatusCode::OK);
    let policy = page.header("content-security-policy").to_string();
    assert!(policy.contains("script-src 'self';") && policy.contains("connect-src 'self'"), "{policy}");
    let html = String::from_utf8_lossy(&page.body).to_string();
    assert!(html.contains("spec-url=\"/api/openapi.json\""), "{html}");
    let script = html
        .split("src=\"")
        .filter_map(|rest| rest.split('"').next())
        .find(|src| src.starts_with("/static/rapidoc-min."))
        .expect("the vendored RapiDoc, hashed")
        .to_string();
    assert!(!html.contains("https://") && !html.contains("http://"), "nothing from elsewhere: {html}");
    let asset = get(&app, &script).await;
    assert_eq!(asset.status, StatusCode::OK, "{script}");
    assert!(asset.header("content-type").starts_with("text/javascript"));
    assert!(asset.body.starts_with(b"/*! RapiDoc 9.3.8"));
}

#[tokio::test]
async fn head_answers_carry_the_etag_of_the_get_body() {
    let (_dir, app) = app();
    let get_answer = get(&app, "/api/v1/users/alice.test").await;
    let head_answer = send(&app, Method::HEAD, "/api/v1/users/alice.test", &[]).await;
    assert_eq!(head_answer.status, StatusCode::OK);
    assert!(head_answer.body.is_empty());
    assert!(!get_answer.header("etag").is_empty());
    assert_eq!(head_answer.header("etag"), get_answer.header("etag"), "not the hash of an empty body");
}
