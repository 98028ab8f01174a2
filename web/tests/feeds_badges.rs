//! Atom feeds and README badges through the real router over real views: the repository feed
//! lists its tag changes newest first with stable ids and the log's times, the user feed only tag
//! changes; both parse back as Atom; badges name the newest tag and the tag count with cache
//! headers and an ETag, and an unknown repository gets a "not found" badge with status 404.

use std::sync::Arc;

use atom_syndication::Feed;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use atcr_projections::{ProjectionRunner, Views};
use atcr_query::browse::Browse;
use atcr_query::{LogQuery, RegistryQuery};
use atcr_storage::content::ContentStore;
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
use atcr_web::{AppState, router};

const ALICE: &str = "did:plc:alice";

fn put(rev: &str, time: &str, collection: &str, rkey: &str, record: Value, action: PutAction) -> Event {
    Event {
        source: Source::Firehose,
        upstream_seq: Some(100),
        did: ALICE.into(),
        rev: Some(rev.into()),
        upstream_time: Some(time.into()),
        received_at_us: 1,
        commit_cid: Some(format!("bafycommit{rev}")),
        body: EventBody::RecordPut {
            collection: collection.into(),
            rkey: rkey.into(),
            cid: format!("bafyrecord{rev}"),
            action,
            record: serde_ipld_dagcbor::to_vec(&record).expect("dag-cbor"),
        },
    }
}

fn manifest(rev: &str, time: &str, fill: char) -> Event {
    let record = json!({
        "repository": "app",
        "digest": format!("sha256:{}", fill.to_string().repeat(64)),
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
    });
    put(rev, time, "io.atcr.manifest", &fill.to_string().repeat(64), record, PutAction::Create)
}

fn tag(rev: &str, time: &str, name: &str, fill: char, action: PutAction) -> Event {
    let record = json!({
        "repository": "app",
        "tag": name,
        "manifest": format!("at://{ALICE}/io.atcr.manifest/{}", fill.to_string().repeat(64)),
        "createdAt": time,
    });
    put(rev, time, "io.atcr.tag", &format!("app_{name}"), record, action)
}

/// Offsets: identity 0, manifests 1 and 2, `latest` → a at 3, `latest` → b at 4, `v1` → a at 5.
fn app() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().expect("temp dir");
    let document = json!({ "id": ALICE, "alsoKnownAs": ["at://alice.test"] }).to_string();
    let events = vec![
        Event {
            source: Source::Enrichment,
            upstream_seq: None,
            did: ALICE.into(),
            rev: None,
            upstream_time: None,
            received_at_us: 1,
            commit_cid: None,
            body: EventBody::IdentityResolved { document_json: document },
        },
        manifest("3a0", "2026-05-01T09:00:00Z", 'a'),
        manifest("3a1", "2026-05-02T09:00:00Z", 'b'),
        tag("3a2", "2026-05-01T10:00:00Z", "latest", 'a', PutAction::Create),
        tag("3a3", "2026-05-02T10:00:00Z", "latest", 'b', PutAction::Update),
        tag("3a4", "2026-05-03T10:00:00Z", "v1", 'a', PutAction::Create),
    ];
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
    body: String,
}

impl Answer {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or("")
    }
}

async fn get(app: &Router, path: &str, if_none_match: Option<&str>) -> Answer {
    let mut request = Request::get(path).header(header::HOST, "registry.test");
    if let Some(etag) = if_none_match {
        request = request.header(header::IF_NONE_MATCH, etag);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).expect("request")).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.expect("body");
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).to_string() }
}

fn atom(answer: &Answer) -> Feed {
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.header(header::CONTENT_TYPE), "application/atom+xml; charset=utf-8");
    answer.body.parse().unwrap_or_else(|error| panic!("not Atom ({error}): {}", answer.body))
}

#[tokio::test]
async fn the_repository_feed_lists_tag_changes_newest_first_with_stable_ids() {
    let (_dir, app) = app();
    let first = atom(&get(&app, "/r/alice.test/app/-/feed.atom", None).await);
    let ids: Vec<&str> = first.entries.iter().map(|entry| entry.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "at://did:plc:alice/io.atcr.tag/app_v1#offset=5",
            "at://did:plc:alice/io.atcr.tag/app_latest#offset=4",
            "at://did:plc:alice/io.atcr.tag/app_latest#offset=3",
        ]
    );
    let titles: Vec<&str> = first.entries.iter().map(|entry| entry.title.value.as_str()).collect();
    assert_eq!(titles, ["alice.test/app:v1 created", "alice.test/app:latest moved", "alice.test/app:latest created"]);
    assert_eq!(first.entries[0].updated.to_rfc3339(), "2026-05-03T10:00:00+00:00", "times from the log");
    assert_eq!(first.updated, first.entries[0].updated);
    assert_eq!(first.entries[0].links[0].href, "https://registry.test/r/alice.test/app/-/tag/v1");
    let summary = first.entries[1].summary.as_ref().map(|text| text.value.clone()).unwrap_or_default();
    assert!(summary.contains(&"a".repeat(64)) && summary.contains(&"b".repeat(64)), "{summary}");
    let again = atom(&get(&app, "/r/alice.test/app/-/feed.atom", None).await);
    assert_eq!(first, again, "the same log gives the same feed");

    let missing = get(&app, "/r/alice.test/nope/-/feed.atom", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_user_feed_has_only_tag_changes() {
    let (_dir, app) = app();
    let feed = atom(&get(&app, "/u/alice.test/feed.atom", None).await);
    let ids: Vec<&str> = feed.entries.iter().map(|entry| entry.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "at://did:plc:alice/io.atcr.tag/app_v1#offset=5",
            "at://did:plc:alice/io.atcr.tag/app_latest#offset=4",
            "at://did:plc:alice/io.atcr.tag/app_latest#offset=3",
        ],
        "manifest pushes are not in the feed; ids equal the repository feed's"
    );
    assert_eq!(feed.id, "at://did:plc:alice");
    assert_eq!(get(&app, "/u/nobody.test/feed.atom", None).await.status, StatusCode::NOT_FOUND);
    let page = get(&app, "/u/alice.test", None).await;
    assert!(
        page.body.contains(r#"<link rel="alternate" type="application/atom+xml" title="Tag changes of alice.test" href="/u/alice.test/feed.atom">"#),
        "the user page names its feed"
    );
}

#[tokio::test]
async fn badges_name_the_newest_tag_and_the_tag_count_with_cache_headers() {
    let (_dir, app) = app();
    let latest = get(&app, "/r/alice.test/app/-/badge/latest.svg", None).await;
    assert_eq!(latest.status, StatusCode::OK, "{}", latest.body);
    assert_eq!(latest.header(header::CONTENT_TYPE), "image/svg+xml; charset=utf-8");
    assert_eq!(latest.header(header::CACHE_CONTROL), "public, max-age=300");
    assert!(latest.body.contains(r#"aria-label="latest: v1""#), "{}", latest.body);
    let etag = latest.header(header::ETAG).to_string();
    assert!(etag.starts_with('"') && etag.len() > 2, "{etag}");
    let revalidated = get(&app, "/r/alice.test/app/-/badge/latest.svg", Some(&etag)).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.body.is_empty());

    let tags = get(&app, "/r/alice.test/app/-/badge/tags.svg", None).await;
    assert!(tags.body.contains(r#"aria-label="tags: 2""#), "{}", tags.body);
    assert_ne!(tags.header(header::ETAG), etag, "another badge, another ETag");
    let size = get(&app, "/r/alice.test/app/-/badge/size.svg", None).await;
    assert_eq!(size.status, StatusCode::OK);
    assert!(size.body.contains(r#"aria-label="image size: "#), "{}", size.body);

    let unknown = get(&app, "/r/alice.test/nope/-/badge/latest.svg", None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.header(header::CONTENT_TYPE), "image/svg+xml; charset=utf-8");
    assert!(unknown.body.contains(r#"aria-label="latest: not found""#), "{}", unknown.body);
    let unknown_owner = get(&app, "/r/nobody.test/app/-/badge/tags.svg", None).await;
    assert_eq!(unknown_owner.status, StatusCode::NOT_FOUND);

    let page = get(&app, "/r/alice.test/app", None).await;
    for expected in [
        r#"<img src="/r/alice.test/app/-/badge/latest.svg" alt="Badge: latest tag v1" height="20">"#,
        "[![latest](https://registry.test/r/alice.test/app/-/badge/latest.svg)](https://registry.test/r/alice.test/app)",
        r#"href="/r/alice.test/app/-/feed.atom""#,
    ] {
        assert!(page.body.contains(expected), "the repository page lacks {expected}");
    }

    let pulls = get(&app, "/r/alice.test/app/-/badge/pulls.svg", None).await;
    assert_eq!(pulls.status, StatusCode::NOT_FOUND, "no pulls badge without pull counts");
    assert!(pulls.header(header::CONTENT_TYPE).starts_with("text/html"));
}
