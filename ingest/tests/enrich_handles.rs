//! Enrichment's handle checks: each resolved document's handle is checked both ways and the
//! verdict is appended before the document; a check that failed on a lookup is tried again,
//! a refutation is not.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use atcr_ingest::enrich::{Enricher, FetchError, Fetcher};
use atcr_ingest::identity::{HandleError, HandleSource, IdentityConfig, IdentityResolver};
use atcr_storage::content::ContentStore;
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, LogWriter, PutAction, Source};

const ALICE: &str = "did:plc:alice";

struct Documents(HashMap<String, String>);

impl Fetcher for Documents {
    async fn did_document(&self, did: &str) -> Result<String, FetchError> {
        self.0.get(did).cloned().ok_or(FetchError::NotFound)
    }
    async fn blob(&self, _pds: &str, _did: &str, _cid: &str) -> Result<Vec<u8>, FetchError> {
        Err(FetchError::NotFound)
    }
}

/// Answers `did` for every handle, after failing the first `failures` lookups.
struct Flaky {
    did: String,
    failures: usize,
    calls: Arc<AtomicUsize>,
}

impl HandleSource for Flaky {
    fn resolve_handle<'a>(
        &'a self,
        handle: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, HandleError>> + Send + 'a>> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let outcome = if call < self.failures {
            Err(HandleError::Lookup { handle: handle.to_string(), reason: "connection refused".into() })
        } else {
            Ok(self.did.clone())
        };
        Box::pin(std::future::ready(outcome))
    }
}

fn document() -> String {
    serde_json::json!({ "id": ALICE, "alsoKnownAs": ["at://alice.example.com"] }).to_string()
}

fn tag_put() -> Event {
    Event {
        source: Source::Firehose,
        upstream_seq: Some(1),
        did: ALICE.into(),
        rev: Some("3aaaaaaaaaaaa".into()),
        upstream_time: None,
        received_at_us: 0,
        commit_cid: None,
        body: EventBody::RecordPut {
            collection: "io.atcr.tag".into(),
            rkey: "app_latest".into(),
            cid: "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm".into(),
            action: PutAction::Create,
            record: vec![0xa0],
        },
    }
}

/// Runs enrichment over one tag event of alice until `done` holds for the log's events of
/// kind `handle_checked` / `identity_resolved`; returns them as (kind, verified).
async fn enrich_until(handles: Flaky, done: impl Fn(&[(String, bool)]) -> bool) -> Vec<(String, bool)> {
    let directory = tempfile::tempdir().unwrap();
    let log = Arc::new(EventLog::open(&directory.path().join("log.redb")).unwrap());
    log.append(AppendBatch { events: vec![tag_put()], ..AppendBatch::default() }).unwrap();
    let content = Arc::new(ContentStore::open(&directory.path().join("content")).unwrap());
    let (writer, writer_task) = LogWriter::start(log.clone());
    let config = IdentityConfig { handle_recheck: Duration::from_millis(50), ..IdentityConfig::default() };
    let documents = || Documents(HashMap::from([(ALICE.to_string(), document())]));
    let identities = Arc::new(IdentityResolver::new(documents(), config).with_handles(handles));
    let enricher = Enricher::new(log.clone(), writer, content, documents()).with_handle_checks(identities);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(enricher.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let seen: Vec<(String, bool)> = log
            .read_from(0, 100)
            .unwrap()
            .into_iter()
            .filter_map(|stored| match stored.event.body {
                EventBody::HandleChecked { verified, .. } => Some(("handle_checked".to_string(), verified)),
                EventBody::IdentityResolved { .. } => Some(("identity_resolved".to_string(), true)),
                _ => None,
            })
            .collect();
        if done(&seen) {
            break seen;
        }
        assert!(Instant::now() < deadline, "enrichment never got there: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shutdown.cancel();
    task.await.unwrap().unwrap();
    writer_task.join();
    seen
}

#[tokio::test]
async fn a_verified_handle_is_recorded_before_its_document() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handles = Flaky { did: ALICE.into(), failures: 0, calls: calls.clone() };
    let seen = enrich_until(handles, |seen| seen.len() >= 2).await;
    assert_eq!(seen, vec![("handle_checked".to_string(), true), ("identity_resolved".to_string(), true)]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failed_lookup_is_checked_again_and_a_refutation_is_final() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handles = Flaky { did: ALICE.into(), failures: 2, calls: calls.clone() };
    let seen =
        enrich_until(handles, |seen| seen.iter().any(|(kind, verified)| kind == "handle_checked" && *verified)).await;
    assert_eq!(
        seen,
        vec![
            ("handle_checked".to_string(), false),
            ("identity_resolved".to_string(), true),
            ("handle_checked".to_string(), true),
        ],
        "not trusted while unchecked, then verified; the second failure changed nothing and appended nothing"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let calls = Arc::new(AtomicUsize::new(0));
    let liar = Flaky { did: "did:plc:mallory".into(), failures: 0, calls: calls.clone() };
    let seen = enrich_until(liar, |seen| seen.len() >= 2).await;
    assert_eq!(seen, vec![("handle_checked".to_string(), false), ("identity_resolved".to_string(), true)]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a refutation is not retried");
}
