//! `/api/v1/events` through the real router over real views: an appended event reaches a
//! subscriber within a second of the views reflecting it (and not before), filtered by owner,
//! repository and kind (a star by someone else counts for the starred repository); each event's
//! data equals `/api/v1/log/{offset}`; `Last-Event-ID` / `after` / `from` resume; closing ends
//! every stream. The home and repository pages connect to the stream from the views checkpoint
//! they were rendered from, through the vendored htmx SSE extension.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, BodyDataStream};
use axum::http::{Request, StatusCode, header};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use atcr_projections::{ProjectionRunner, Views};
use atcr_query::browse::Browse;
use atcr_query::{LogQuery, RegistryQuery};
use atcr_storage::content::ContentStore;
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
use atcr_web::events::LiveEvents;
use atcr_web::{AppState, router};

const ALICE: &str = "did:plc:alice";
const BOB: &str = "did:plc:bob";

fn put(did: &str, rev: &str, collection: &str, rkey: &str, record: Value) -> Event {
    Event {
        source: Source::Firehose,
        upstream_seq: Some(100),
        did: did.into(),
        rev: Some(rev.into()),
        upstream_time: Some("2026-05-01T10:00:00Z".into()),
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

fn manifest(repository: &str, fill: char, rev: &str) -> Event {
    let record = json!({
        "repository": repository,
        "digest": format!("sha256:{}", fill.to_string().repeat(64)),
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
    });
    put(ALICE, rev, "io.atcr.manifest", &fill.to_string().repeat(64), record)
}

fn tag(repository: &str, name: &str, fill: char, rev: &str) -> Event {
    let record = json!({
        "repository": repository,
        "tag": name,
        "manifest": format!("at://{ALICE}/io.atcr.manifest/{}", fill.to_string().repeat(64)),
        "createdAt": "2026-05-01T00:00:00Z",
    });
    put(ALICE, rev, "io.atcr.tag", &format!("{repository}_{name}"), record)
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

struct Fixture {
    _dir: tempfile::TempDir,
    log: Arc<EventLog>,
    views: Arc<Views>,
    live: LiveEvents,
    app: Router,
}

impl Fixture {
    fn append(&self, events: Vec<Event>) -> u64 {
        let first = self.log.next_offset().expect("head");
        self.log.append(AppendBatch { events, ..AppendBatch::default() }).expect("append");
        first
    }

    fn project(&self) {
        ProjectionRunner::new(self.log.clone(), self.views.clone()).catch_up().expect("catch up");
    }
}

/// Offsets: alice 0, bob 1, app manifest 2, app tag 3, other manifest 4.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(EventLog::open(&dir.path().join("log.redb")).expect("log"));
    let events = vec![
        identity(ALICE, "alice.test"),
        identity(BOB, "bob.test"),
        manifest("app", 'a', "3a0"),
        tag("app", "latest", 'a', "3a1"),
        manifest("other", 'c', "3a2"),
    ];
    log.append(AppendBatch { events, ..AppendBatch::default() }).expect("append");
    let views = Arc::new(Views::open(&dir.path().join("views.redb")).expect("views"));
    ProjectionRunner::new(log.clone(), views.clone()).catch_up().expect("catch up");
    let content = Arc::new(ContentStore::open(&dir.path().join("content")).expect("content"));
    let registry = RegistryQuery::new(views.clone(), content);
    let query = LogQuery::new(log.clone());
    let live = LiveEvents::start(&query, Some(registry.clone()));
    let state = AppState {
        query,
        browse: Some(Browse::new(registry.clone())),
        registry: Some(registry),
        metrics: None,
        search: None,
        live: Some(live.clone()),
    };
    Fixture { _dir: dir, log, views, live, app: router(state) }
}

/// One parsed SSE event.
#[derive(Debug)]
struct Received {
    id: u64,
    data: Value,
}

/// An open event stream, parsed as it arrives.
struct Subscription {
    body: BodyDataStream,
    pending: String,
}

impl Subscription {
    /// The next event, or `None` when the stream ended or `wait` passed.
    async fn next(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let (mut id, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id:") {
                        id = value.trim().parse().ok();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if let Some(id) = id {
                    let data =
                        serde_json::from_str(&data).unwrap_or_else(|error| panic!("data not JSON ({error}): {data}"));
                    return Some(Received { id, data });
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await.ok()??;
            self.pending.push_str(&String::from_utf8_lossy(&chunk.expect("body chunk")));
        }
    }

    /// True when the stream ends within `wait`.
    async fn ends_within(&mut self, wait: Duration) -> bool {
        matches!(tokio::time::timeout(wait, async { while self.body.next().await.is_some() {} }).await, Ok(()))
    }
}

async fn subscribe(app: &Router, path: &str, last_event_id: Option<&str>) -> Subscription {
    let mut request = Request::get(path);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = app.clone().oneshot(request.body(Body::empty()).expect("request")).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream", "{path}");
    assert!(response.headers().get(header::CONTENT_ENCODING).is_none(), "never compressed");
    Subscription { body: response.into_body().into_data_stream(), pending: String::new() }
}

async fn get_json(app: &Router, path: &str) -> (StatusCode, Value) {
    let response =
        app.clone().oneshot(Request::get(path).body(Body::empty()).expect("request")).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

const SHORT: Duration = Duration::from_millis(300);
const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_pushed_tag_arrives_within_a_second_of_the_views_reflecting_it_and_not_before() {
    let fixture = fixture().await;
    let mut stream = subscribe(&fixture.app, "/api/v1/events?did=alice.test&repository=app&kind=record", None).await;
    // Another repository's push first: the filter passes over it.
    let other = fixture.append(vec![manifest("other", 'd', "3b0")]);
    let pushed = fixture.append(vec![tag("app", "latest", 'e', "3b1")]);
    assert_eq!(pushed, other + 1);
    assert!(stream.next(SHORT).await.is_none(), "nothing is sent before the views reflect it");

    let projected = Instant::now();
    fixture.project();
    let received = stream.next(SECOND).await.expect("the push within a second");
    let latency = projected.elapsed();
    assert!(latency < SECOND, "{latency:?}");
    assert_eq!(received.id, pushed);
    let (status, logged) = get_json(&fixture.app, &format!("/api/v1/log/{pushed}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(received.data, logged, "the same JSON as /api/v1/log/{{offset}}");
    assert!(stream.next(SHORT).await.is_none(), "the other repository's push was filtered out");
}

#[tokio::test]
async fn an_unfiltered_stream_starts_at_the_head_and_sees_every_kind() {
    let fixture = fixture().await;
    let mut stream = subscribe(&fixture.app, "/api/v1/events", None).await;
    let offset = fixture.append(vec![identity(BOB, "bob2.test")]);
    fixture.project();
    let received = stream.next(SECOND).await.expect("event");
    assert_eq!(received.id, offset, "no history without after/from");
    assert_eq!(received.data["kind"], "identity_resolved");
}

#[tokio::test]
async fn resuming_by_last_event_id_after_and_from() {
    let fixture = fixture().await;
    let mut all = subscribe(&fixture.app, "/api/v1/events?from=0", None).await;
    for expected in 0..5 {
        assert_eq!(all.next(SECOND).await.expect("history").id, expected);
    }
    let mut resumed = subscribe(&fixture.app, "/api/v1/events?after=0", Some("2")).await;
    assert_eq!(resumed.next(SECOND).await.expect("resumed").id, 3, "Last-Event-ID wins over after");
    let mut after = subscribe(&fixture.app, "/api/v1/events?after=3&kind=record_put", None).await;
    assert_eq!(after.next(SECOND).await.expect("after").id, 4);
    let mut records = subscribe(&fixture.app, "/api/v1/events?from=0&kind=record", None).await;
    assert_eq!(records.next(SECOND).await.expect("records").id, 2, "identity events are not records");
}

#[tokio::test]
async fn a_star_by_someone_else_counts_for_the_starred_repository() {
    let fixture = fixture().await;
    let mut owner = subscribe(&fixture.app, &format!("/api/v1/events?did={ALICE}&repository=app"), None).await;
    let mut starrer = subscribe(&fixture.app, "/api/v1/events?did=bob.test&kind=record", None).await;
    let star = json!({ "subject": { "did": ALICE, "repository": "app" }, "createdAt": "2026-05-02T00:00:00Z" });
    let offset = fixture.append(vec![put(BOB, "3c0", "io.atcr.sailor.star", "3star", star)]);
    fixture.project();
    assert_eq!(owner.next(SECOND).await.expect("owner sees the star").id, offset);
    assert_eq!(starrer.next(SECOND).await.expect("starrer sees it").id, offset);
}

#[tokio::test]
async fn bad_parameters_are_clear_errors() {
    let fixture = fixture().await;
    let (status, body) = get_json(&fixture.app, "/api/v1/events?kind=bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap_or_default().contains("bogus"), "{body}");
    let (status, _) = get_json(&fixture.app, "/api/v1/events?after=-3").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = get_json(&fixture.app, "/api/v1/events?did=nobody.test").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
}

#[tokio::test]
async fn streams_beyond_the_limit_get_503_until_one_closes() {
    let fixture = fixture().await;
    let limited = AppState {
        query: LogQuery::new(fixture.log.clone()),
        browse: None,
        registry: None,
        metrics: None,
        search: None,
        live: Some(fixture.live.clone().with_max_streams(1)),
    };
    let app = router(limited);
    let first = subscribe(&app, "/api/v1/events", None).await;
    let (status, body) = get_json(&app, "/api/v1/events").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("at most 1"), "{body}");
    drop(first);
    let _second = subscribe(&app, "/api/v1/events", None).await;
}

#[tokio::test]
async fn closing_ends_every_stream_and_refuses_new_ones() {
    let fixture = fixture().await;
    let mut stream = subscribe(&fixture.app, "/api/v1/events", None).await;
    fixture.live.close();
    assert!(stream.ends_within(SECOND).await, "the stream ends on close");
    let (status, body) = get_json(&fixture.app, "/api/v1/events").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "unavailable");
}

async fn get_text(app: &Router, path: &str) -> (StatusCode, String) {
    let response =
        app.clone().oneshot(Request::get(path).body(Body::empty()).expect("request")).await.expect("response");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.expect("body");
    (status, String::from_utf8_lossy(&bytes).to_string())
}

#[tokio::test]
async fn pages_update_live_from_the_checkpoint_they_were_rendered_from() {
    let fixture = fixture().await;
    let (status, home) = get_text(&fixture.app, "/").await;
    assert_eq!(status, StatusCode::OK, "{home}");
    for expected in [
        r#"hx-ext="sse""#,
        r#"sse-connect="/api/v1/events?kind=record%2Cmanifest_stored&amp;from=5""#,
        r#"hx-trigger="sse:message""#,
        r##"id="live-region" hx-get="/" hx-select="#live-region""##,
        "/static/htmx-ext-sse.",
    ] {
        assert!(home.contains(expected), "home page lacks {expected}");
    }
    let (status, repository) = get_text(&fixture.app, "/r/alice.test/app").await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        r#"sse-connect="/api/v1/events?did=did%3Aplc%3Aalice&amp;repository=app&amp;from=5""#,
        r#"hx-get="/r/alice.test/app""#,
        r#"<link rel="alternate" type="application/atom+xml" title="Tag changes of alice.test/app" href="/r/alice.test/app/-/feed.atom">"#,
    ] {
        assert!(repository.contains(expected), "repository page lacks {expected}");
    }
    // The URL the page names is a working stream that starts where the page left off.
    let mut stream = subscribe(&fixture.app, &format!("/api/v1/events?did={ALICE}&repository=app&from=5"), None).await;
    let offset = fixture.append(vec![tag("app", "edge", 'e', "3d0")]);
    fixture.project();
    assert_eq!(stream.next(SECOND).await.expect("the page's stream").id, offset);
    let (_, refreshed) = get_text(&fixture.app, "/r/alice.test/app").await;
    assert!(refreshed.contains("edge"), "the re-fetched page shows the event that triggered it");
    let (_, static_js) = get_text(&fixture.app, &home_asset(&home, "/static/htmx-ext-sse.")).await;
    assert!(static_js.contains("defineExtension(\"sse\""));
}

/// The first `src`/`href` in `html` starting with `prefix`.
fn home_asset(html: &str, prefix: &str) -> String {
    let start = html.find(prefix).expect("asset");
    let end = html[start..].find('"').expect("end of url") + start;
    html[start..end].to_string()
}
