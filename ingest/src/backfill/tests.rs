//! Unit tests of backfill: reading and checking repository CARs built like a PDS builds them
//! (atcr-gen's MST and keys), the log-state rule, the diff, and whole runs against an in-memory
//! fetcher and a temporary log.

use std::collections::BTreeMap;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use atcr_gen::Account;
use atcr_gen::encoding::{DAG_CBOR, car_v1, cid_of, tid};
use atcr_gen::mst::RepoTree;
use ipld_core::cid::Cid;
use ipld_core::ipld::Ipld;

use super::*;

const PDS: &str = "https://pds.example.com";

fn record(kind: &str, text: &str) -> Vec<u8> {
    let map = BTreeMap::from([
        ("$type".to_string(), Ipld::String(kind.into())),
        ("text".to_string(), Ipld::String(text.into())),
    ]);
    serde_ipld_dagcbor::to_vec(&map).unwrap()
}

/// A whole repository: `records` by MST key, signed by `signer` (claiming `did`) at `rev`.
/// Returns the CAR and the record CIDs.
fn repo_car(
    did: &str,
    signer: &Account,
    rev: &str,
    records: &[(&str, Vec<u8>)],
) -> (Vec<u8>, BTreeMap<String, String>) {
    let mut tree = RepoTree::new();
    let mut blocks: Vec<(Cid, Vec<u8>)> = Vec::new();
    let mut cids = BTreeMap::new();
    for (key, bytes) in records {
        let cid = cid_of(DAG_CBOR, bytes);
        tree.put(key, cid);
        blocks.push((cid, bytes.clone()));
        cids.insert(key.to_string(), cid.to_string());
    }
    let commit = tree.commit().unwrap();
    blocks.extend(commit.blocks);
    let mut map = BTreeMap::from([
        ("did".to_string(), Ipld::String(did.into())),
        ("version".to_string(), Ipld::Integer(3)),
        ("data".to_string(), Ipld::Link(commit.root)),
        ("rev".to_string(), Ipld::String(rev.into())),
        ("prev".to_string(), Ipld::Null),
    ]);
    let signature = signer.sign(&serde_ipld_dagcbor::to_vec(&map).unwrap());
    map.insert("sig".into(), Ipld::Bytes(signature.to_vec()));
    let commit_block = serde_ipld_dagcbor::to_vec(&map).unwrap();
    let commit_cid = cid_of(DAG_CBOR, &commit_block);
    let car = car_v1(
        commit_cid,
        std::iter::once((&commit_cid, commit_block.as_slice()))
            .chain(blocks.iter().map(|(cid, bytes)| (cid, bytes.as_slice()))),
    );
    (car, cids)
}

fn key_of(account: &Account) -> PublicKey {
    PublicKey::K256(*account.verifying_key())
}

fn sample_records() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("io.atcr.manifest/aaaa", record("io.atcr.manifest", "m1")),
        ("io.atcr.tag/hello_latest", record("io.atcr.tag", "t1")),
        ("io.atcr.sailor.profile/self", record("io.atcr.sailor.profile", "p")),
        ("app.bsky.feed.post/3kxyz", record("app.bsky.feed.post", "not ours")),
        ("io.atcr.repo.page/hello", record("io.atcr.repo.page", "readme")),
    ]
}

#[test]
fn a_signed_repository_yields_its_atcr_records_only() {
    let alice = Account::new(7, 0);
    let rev = tid(1_700_000_000_000_000, 1);
    let (car, cids) = repo_car(&alice.did, &alice, &rev, &sample_records());
    let snapshot = read_repo_car(&car, &alice.did, &key_of(&alice)).unwrap();
    assert_eq!(snapshot.rev, rev);
    assert_eq!(snapshot.did, alice.did);
    let keys: Vec<String> = snapshot.records.keys().map(|(collection, rkey)| format!("{collection}/{rkey}")).collect();
    assert_eq!(
        keys,
        ["io.atcr.manifest/aaaa", "io.atcr.repo.page/hello", "io.atcr.sailor.profile/self", "io.atcr.tag/hello_latest"]
    );
    for ((collection, rkey), record) in &snapshot.records {
        assert_eq!(record.cid, cids[&format!("{collection}/{rkey}")]);
        assert_eq!(cid_of(DAG_CBOR, &record.bytes).to_string(), record.cid);
    }
    assert!(SignedCommit::decode(&snapshot.commit_block).is_ok());
    assert_eq!(cid_of(DAG_CBOR, &snapshot.commit_block).to_string(), snapshot.commit_cid);
}

#[test]
fn wrong_key_other_did_tampered_blocks_and_bad_framing_are_refused() {
    let alice = Account::new(7, 0);
    let mallory = Account::new(7, 1);
    let rev = tid(1_700_000_000_000_000, 1);
    let (car, _) = repo_car(&alice.did, &alice, &rev, &sample_records());

    let error = read_repo_car(&car, &alice.did, &key_of(&mallory)).unwrap_err();
    assert!(error.contains("signature"), "{error}");

    // Signed by mallory, claiming alice: the key in alice's document does not match.
    let (forged, _) = repo_car(&alice.did, &mallory, &rev, &sample_records());
    assert!(read_repo_car(&forged, &alice.did, &key_of(&alice)).unwrap_err().contains("signature"));

    let error = read_repo_car(&car, &mallory.did, &key_of(&alice)).unwrap_err();
    assert!(error.contains("not"), "{error}");

    // A byte of a record block changed: its hash no longer matches its CID.
    let needle = b"readme";
    let position = car.windows(needle.len()).position(|window| window == needle).unwrap();
    let mut tampered = car.clone();
    tampered[position] ^= 0x20;
    let error = read_repo_car(&tampered, &alice.did, &key_of(&alice)).unwrap_err();
    assert!(error.contains("invalid CAR"), "{error}");

    // Truncated, or a section length past the end.
    assert!(read_repo_car(&car[..car.len() - 3], &alice.did, &key_of(&alice)).is_err());
    assert!(read_repo_car(&[0x05, 0xa1], &alice.did, &key_of(&alice)).is_err());
    assert!(read_repo_car(&[], &alice.did, &key_of(&alice)).is_err());
}

#[test]
fn tid_times_are_the_micros_they_encode() {
    let micros = 1_733_360_000_123_456;
    assert_eq!(tid_time(&tid(micros, 5)).as_deref(), Some("2024-12-05T00:53:20.123Z"));
    assert_eq!(tid_time("short"), None);
    assert_eq!(tid_time("!!!!!!!!!!!!!"), None);
}

fn stored(offset: u64, source: Source, did: &str, rev: Option<&str>, body: EventBody) -> StoredEvent {
    StoredEvent {
        offset,
        event: Event {
            source,
            upstream_seq: None,
            did: did.into(),
            rev: rev.map(str::to_string),
            upstream_time: None,
            received_at_us: 0,
            commit_cid: None,
            body,
        },
    }
}

fn put(rkey: &str, cid: &str) -> EventBody {
    EventBody::RecordPut {
        collection: "io.atcr.tag".into(),
        rkey: rkey.into(),
        cid: cid.into(),
        action: PutAction::Create,
        record: vec![],
    }
}

fn delete(rkey: &str) -> EventBody {
    EventBody::RecordDeleted { collection: "io.atcr.tag".into(), rkey: rkey.into(), prev_cid: None }
}

#[test]
fn log_state_follows_the_runners_stale_rev_rule() {
    let mut state = LogState::new();
    state.apply(&stored(0, Source::Firehose, "did:a", Some("3b"), put("x", "c1")));
    state.apply(&stored(1, Source::Firehose, "did:a", Some("3b"), put("y", "c2")));
    // older rev: skipped, and remembered as skipped
    state.apply(&stored(2, Source::Backfill, "did:a", Some("3a"), delete("x")));
    state.apply(&stored(3, Source::Firehose, "did:a", Some("3c"), put("y", "c3")));
    state.apply(&stored(4, Source::Firehose, "did:a", Some("3d"), delete("x")));
    // other DIDs and non-record events do not interfere
    state.apply(&stored(5, Source::Firehose, "did:b", Some("3a"), put("x", "b1")));
    state.apply(&stored(6, Source::Enrichment, "did:a", None, EventBody::Identity { handle: None }));
    let a = state.did("did:a").unwrap();
    assert_eq!(a.newest_rev.as_deref(), Some("3d"));
    assert_eq!(a.last_stale_offset, Some(2));
    assert_eq!(a.records, BTreeMap::from([(("io.atcr.tag".to_string(), "y".to_string()), "c3".to_string())]));
    assert_eq!(state.did("did:b").unwrap().records.len(), 1);
}

fn snapshot(did: &str, rev: &str, records: &[(&str, &str)]) -> RepoSnapshot {
    RepoSnapshot {
        did: did.into(),
        rev: rev.into(),
        commit_cid: "bafycommit".into(),
        commit_block: vec![1, 2, 3],
        records: records
            .iter()
            .map(|(rkey, cid)| {
                (("io.atcr.tag".to_string(), rkey.to_string()), RepoRecord { cid: cid.to_string(), bytes: vec![0xa0] })
            })
            .collect(),
    }
}

#[test]
fn the_diff_deletes_creates_and_updates_and_then_is_empty() {
    let mut state = LogState::new();
    state.apply(&stored(0, Source::Firehose, "did:a", Some("3b"), put("keep", "k")));
    state.apply(&stored(1, Source::Firehose, "did:a", Some("3b"), put("change", "old")));
    state.apply(&stored(2, Source::Firehose, "did:a", Some("3b"), put("gone", "g")));
    let repo = snapshot("did:a", "3e", &[("keep", "k"), ("change", "new"), ("fresh", "f")]);
    let events = diff_events(state.did("did:a"), &repo, 9);
    let described: Vec<String> = events
        .iter()
        .map(|event| match &event.body {
            EventBody::RecordPut { rkey, cid, action, .. } => format!("{action:?} {rkey} {cid}"),
            EventBody::RecordDeleted { rkey, prev_cid, .. } => format!("delete {rkey} {prev_cid:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(described, ["delete gone Some(\"g\")", "Update change new", "Create fresh f"]);
    for event in &events {
        assert_eq!(event.source, Source::Backfill);
        assert_eq!(event.rev.as_deref(), Some("3e"));
        assert_eq!(event.commit_cid.as_deref(), Some("bafycommit"));
        assert_eq!(event.received_at_us, 9);
    }
    for (index, event) in events.into_iter().enumerate() {
        state.apply(&StoredEvent { offset: 10 + index as u64, event });
    }
    assert!(diff_events(state.did("did:a"), &repo, 9).is_empty());
    // A DID the log never saw: everything is a create.
    assert_eq!(diff_events(None, &repo, 0).len(), 3);
}

/// Serves DID documents and repositories from memory; a repository may change between fetches.
struct MemoryFetcher {
    documents: BTreeMap<String, String>,
    repos: StdMutex<BTreeMap<String, Vec<Vec<u8>>>>,
    fetches: AtomicUsize,
}

impl MemoryFetcher {
    fn new(accounts: &[&Account]) -> Self {
        let documents = accounts.iter().map(|account| (account.did.clone(), account.did_document())).collect();
        MemoryFetcher { documents, repos: StdMutex::new(BTreeMap::new()), fetches: AtomicUsize::new(0) }
    }

    /// The CARs `did`'s PDS serves, one per fetch (the last one repeats).
    fn serve(&self, did: &str, cars: Vec<Vec<u8>>) {
        self.repos.lock().unwrap().insert(did.to_string(), cars);
    }
}

impl RepoFetcher for MemoryFetcher {
    async fn did_document(&self, did: &str) -> Result<String, FetchError> {
        self.documents.get(did).cloned().ok_or(FetchError::NotFound)
    }

    async fn get_repo(&self, _pds: &str, did: &str) -> Result<Vec<u8>, RepoFetchError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let mut repos = self.repos.lock().unwrap();
        let cars = repos.get_mut(did).ok_or(RepoFetchError::Unavailable("RepoNotFound".into()))?;
        Ok(if cars.len() > 1 { cars.remove(0) } else { cars[0].clone() })
    }

    async fn list_page(&self, _listing: &Listing, cursor: Option<&str>) -> Result<ListingPage, FetchError> {
        // Two pages: the documents' DIDs split in half, then the rest.
        let dids: Vec<String> = self.documents.keys().cloned().collect();
        let half = dids.len() / 2;
        Ok(match cursor {
            None => ListingPage { dids: dids[..half].to_vec(), cursor: Some("page2".into()) },
            Some(_) => ListingPage { dids: dids[half..].to_vec(), cursor: None },
        })
    }
}

fn open_log(directory: &tempfile::TempDir) -> (Arc<EventLog>, LogWriter, atcr_storage::LogWriterTask) {
    let log = Arc::new(EventLog::open(&directory.path().join("log.redb")).unwrap());
    let (writer, task) = LogWriter::start(log.clone());
    (log, writer, task)
}

fn record_events(log: &EventLog) -> Vec<Event> {
    log.read_from(0, 100_000)
        .unwrap()
        .into_iter()
        .map(|stored| stored.event)
        .filter(|e| e.body.collection().is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_appends_the_repositories_then_a_second_run_appends_nothing() {
    let (alice, bob) = (Account::new(9, 0), Account::new(9, 1));
    let fetcher = MemoryFetcher::new(&[&alice, &bob]);
    let rev = tid(1_700_000_000_000_000, 0);
    fetcher.serve(&alice.did, vec![repo_car(&alice.did, &alice, &rev, &sample_records()).0]);
    let bob_records = vec![("io.atcr.sailor.star/3kaaa", record("io.atcr.sailor.star", "s"))];
    fetcher.serve(&bob.did, vec![repo_car(&bob.did, &bob, &rev, &bob_records).0]);

    let directory = tempfile::tempdir().unwrap();
    let (log, writer, task) = open_log(&directory);
    let backfiller = Backfiller::new(log.clone(), writer, fetcher);
    let dids = discover(backfiller.fetcher(), &Discovery::Pds(PDS.into())).await.unwrap();
    assert_eq!(dids.len(), 2, "both listing pages are read");
    let reports = StdMutex::new(Vec::new());
    let summary = backfiller
        .run("pds:test", dids.clone(), 2, false, |report| reports.lock().unwrap().push(report.clone()))
        .await
        .unwrap();
    assert_eq!((summary.synced, summary.failed, summary.puts, summary.deletes), (2, 0, 5, 0));
    assert!(summary.finished);
    assert_eq!(reports.lock().unwrap().len(), 2);
    let events = record_events(&log);
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|event| event.source == Source::Backfill && event.rev.as_deref() == Some(&rev)));
    let commit = events[0].commit_cid.clone().unwrap();
    assert!(log.commit_block(&commit).unwrap().is_some(), "the signed commit block is kept");
    assert_eq!(log.consumer_checkpoint(&job_key("pds:test")).unwrap(), Some(0), "the job is finished");

    let before = log.next_offset().unwrap();
    let summary = backfiller.run("pds:test", dids, 2, false, |_| {}).await.unwrap();
    assert_eq!((summary.synced, summary.puts, summary.deletes), (2, 0, 0));
    assert_eq!(log.next_offset().unwrap(), before, "a second run appends no event");
    drop(backfiller);
    task.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_updates_a_resumed_job_and_a_forged_repository() {
    let (alice, bob, mallory) = (Account::new(11, 0), Account::new(11, 1), Account::new(11, 2));
    let fetcher = MemoryFetcher::new(&[&alice, &bob]);
    let old_rev = tid(1_700_000_000_000_000, 0);
    let new_rev = tid(1_700_000_100_000_000, 0);
    // alice: the log holds a firehose view of an older repo; her repo now has one record less and
    // one changed.
    let mut records = sample_records();
    records.retain(|(key, _)| *key != "io.atcr.repo.page/hello");
    records[1].1 = record("io.atcr.tag", "moved");
    fetcher.serve(&alice.did, vec![repo_car(&alice.did, &alice, &new_rev, &records).0]);
    // bob's PDS serves a repository signed by someone else.
    fetcher.serve(&bob.did, vec![repo_car(&bob.did, &mallory, &new_rev, &records).0]);

    let directory = tempfile::tempdir().unwrap();
    let (log, writer, task) = open_log(&directory);
    let (old_car, old_cids) = repo_car(&alice.did, &alice, &old_rev, &sample_records());
    let old = read_repo_car(&old_car, &alice.did, &key_of(&alice)).unwrap();
    let mut live = diff_events(None, &old, 1);
    for event in &mut live {
        event.source = Source::Firehose;
    }
    assert_eq!(live.len(), 4);
    writer.append(AppendBatch { events: live, ..AppendBatch::default() }).await.unwrap();

    let backfiller = Backfiller::new(log.clone(), writer, fetcher);
    let dids = vec![alice.did.clone(), bob.did.clone()];
    let summary = backfiller.run("dids", dids.clone(), 1, false, |_| {}).await.unwrap();
    assert_eq!((summary.synced, summary.failed, summary.puts, summary.deletes), (1, 1, 1, 1));
    assert!(!summary.finished, "a failed DID keeps the job open");
    let events = record_events(&log);
    let backfilled: Vec<&Event> = events.iter().filter(|event| event.source == Source::Backfill).collect();
    assert_eq!(backfilled.len(), 2);
    assert!(matches!(
        &backfilled[0].body,
        EventBody::RecordDeleted { rkey, prev_cid: Some(cid), .. } if rkey == "hello" && *cid == old_cids["io.atcr.repo.page/hello"]
    ));
    assert!(
        matches!(&backfilled[1].body, EventBody::RecordPut { action: PutAction::Update, rkey, .. } if rkey == "hello_latest")
    );
    let quarantined = log.quarantine(0, 10).unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(quarantined[0].1.did.as_deref(), Some(bob.did.as_str()));
    assert!(quarantined[0].1.reason.contains("signature"), "{}", quarantined[0].1.reason);

    // The rerun resumes the open job: alice is done, bob is tried again (and fails again).
    let fetches = backfiller.fetcher().fetches.load(Ordering::SeqCst);
    let summary = backfiller.run("dids", dids, 1, false, |_| {}).await.unwrap();
    assert_eq!((summary.already_done, summary.failed), (1, 1));
    assert_eq!(backfiller.fetcher().fetches.load(Ordering::SeqCst), fetches + 1, "only bob is fetched");
    drop(backfiller);
    task.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_older_than_what_live_ingest_applied_is_fetched_again() {
    let alice = Account::new(12, 0);
    let fetcher = MemoryFetcher::new(&[&alice]);
    let (old_rev, live_rev, new_rev) =
        (tid(1_700_000_000_000_000, 0), tid(1_700_000_050_000_000, 0), tid(1_700_000_100_000_000, 0));
    let mut newer = sample_records();
    newer.push(("io.atcr.tag/hello_edge", record("io.atcr.tag", "edge")));
    fetcher.serve(
        &alice.did,
        vec![
            repo_car(&alice.did, &alice, &old_rev, &sample_records()).0,
            repo_car(&alice.did, &alice, &new_rev, &newer).0,
        ],
    );
    let directory = tempfile::tempdir().unwrap();
    let (log, writer, task) = open_log(&directory);
    // live ingest already applied a commit newer than the first repository served
    let live = stored(0, Source::Firehose, &alice.did, Some(&live_rev), put("hello_edge", "whatever")).event;
    writer.append(AppendBatch { events: vec![live], ..AppendBatch::default() }).await.unwrap();
    let backfiller = Backfiller::new(log.clone(), writer, fetcher);
    let outcome = backfiller.sync_did(&alice.did).await.unwrap();
    assert!(matches!(&outcome, DidOutcome::Synced { rev, puts: 5, deletes: 0 } if *rev == new_rev), "{outcome:?}");
    assert_eq!(backfiller.fetcher().fetches.load(Ordering::SeqCst), 2);
    drop(backfiller);
    task.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_event_brings_the_account_up_to_its_repository() {
    let alice = Account::new(13, 0);
    let fetcher = MemoryFetcher::new(&[&alice]);
    let rev = tid(1_700_000_000_000_000, 0);
    fetcher.serve(&alice.did, vec![repo_car(&alice.did, &alice, &rev, &sample_records()).0]);
    let directory = tempfile::tempdir().unwrap();
    let (log, writer, task) = open_log(&directory);
    let backfiller = Arc::new(Backfiller::new(log.clone(), writer.clone(), fetcher));
    let stop = CancellationToken::new();
    let follower = {
        let (backfiller, stop) = (backfiller.clone(), stop.clone());
        tokio::spawn(async move { backfiller.follow_resyncs(stop).await })
    };
    let resync = stored(0, Source::Firehose, &alice.did, Some(&rev), EventBody::Resync { reason: "#sync".into() });
    writer.append(AppendBatch { events: vec![resync.event], ..AppendBatch::default() }).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while record_events(&log).len() < 4 {
        assert!(std::time::Instant::now() < deadline, "the resync did not append alice's records");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its position is saved after the resync, so a restart does not redo it.
    while log.consumer_checkpoint(RESYNC_CONSUMER).unwrap() != Some(1) {
        assert!(std::time::Instant::now() < deadline, "the resync follower did not save its position");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    follower.await.unwrap().unwrap();
    assert!(record_events(&log).iter().all(|event| event.source == Source::Backfill));
    assert_eq!(record_events(&log).len(), 4);
    drop((backfiller, writer));
    task.join();
}

/// A loopback HTTP/1.1 server answering with `answer(path_and_query)` (status, body); it records
/// every request target. One request per connection.
async fn loopback_server(
    answer: impl Fn(&str) -> (u16, Vec<u8>) + Send + Sync + 'static,
) -> (String, Arc<StdMutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(StdMutex::new(Vec::new()));
    let (answer, log) = (Arc::new(answer), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (answer, log) = (answer.clone(), log.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let target = text.split(' ').nth(1).unwrap_or_default().to_string();
                log.lock().unwrap().push(target.clone());
                let (status, body) = answer(&target);
                let head =
                    format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    (base, seen)
}

fn install_crypto_provider() {
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_listings_are_followed_page_by_page_for_every_atcr_collection() {
    install_crypto_provider();
    let (relay, seen) = loopback_server(|target| {
        let body = if target.contains("cursor=next") {
            r#"{"repos":[{"did":"did:plc:bbb"},{"did":"did:plc:aaa"}]}"#.to_string()
        } else if target.contains("collection=io.atcr.manifest") {
            r#"{"cursor":"next","repos":[{"did":"did:plc:aaa"}]}"#.to_string()
        } else {
            r#"{"repos":[{"did":"did:plc:ccc"},{"did":"not-a-did"}]}"#.to_string()
        };
        (200, body.into_bytes())
    })
    .await;
    let fetcher =
        HttpRepoFetcher::new("http://127.0.0.1:9", UrlPolicy::default(), 1024, Duration::from_secs(5)).unwrap();
    let dids = discover(&fetcher, &Discovery::Relay(relay.clone())).await.unwrap();
    assert_eq!(dids, ["did:plc:aaa", "did:plc:bbb", "did:plc:ccc"]);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().all(|target| target.starts_with("/xrpc/com.atproto.sync.listReposByCollection?")));
    for collection in DISCOVERY_COLLECTIONS {
        assert!(seen.iter().any(|target| target.contains(&format!("collection={collection}"))), "{collection}");
    }
    assert_eq!(seen.len(), DISCOVERY_COLLECTIONS.len() + 1, "one extra page for the manifest listing: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pds_listings_skip_inactive_accounts_and_repositories_are_capped_and_policed() {
    install_crypto_provider();
    let (pds, seen) = loopback_server(|target| {
        if target.starts_with("/xrpc/com.atproto.sync.listRepos") {
            let body = r#"{"repos":[{"did":"did:plc:on","active":true},{"did":"did:plc:off","active":false,"status":"deactivated"}]}"#;
            return (200, body.as_bytes().to_vec());
        }
        if target.contains("did=did%3Aplc%3Abig") {
            return (200, vec![0u8; 4096]);
        }
        (400, br#"{"error":"RepoNotFound"}"#.to_vec())
    })
    .await;
    let dev = UrlPolicy { allow_loopback: true };
    let fetcher = HttpRepoFetcher::new("http://127.0.0.1:9", dev, 1024, Duration::from_secs(5)).unwrap();
    assert_eq!(discover(&fetcher, &Discovery::Pds(pds.clone())).await.unwrap(), ["did:plc:on"]);
    assert!(matches!(
        fetcher.get_repo(&pds, "did:plc:big").await,
        Err(RepoFetchError::Fetch(FetchError::TooLarge(1024)))
    ));
    let error = fetcher.get_repo(&pds, "did:plc:gone").await.unwrap_err();
    assert!(matches!(&error, RepoFetchError::Unavailable(reason) if reason.contains("RepoNotFound")), "{error}");
    let requests = seen.lock().unwrap().len();

    // Without the development flag a PDS endpoint on loopback (from a DID document) is refused
    // before any connection.
    let strict =
        HttpRepoFetcher::new("http://127.0.0.1:9", UrlPolicy::default(), 1024, Duration::from_secs(5)).unwrap();
    assert!(matches!(strict.get_repo(&pds, "did:plc:big").await, Err(RepoFetchError::Fetch(FetchError::Policy(_)))));
    assert_eq!(seen.lock().unwrap().len(), requests, "the refused fetch sent nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_without_a_repository_is_unavailable_not_failed() {
    let (alice, gone) = (Account::new(14, 0), Account::new(14, 1));
    let fetcher = MemoryFetcher::new(&[&alice, &gone]);
    let rev = tid(1_700_000_000_000_000, 0);
    fetcher.serve(&alice.did, vec![repo_car(&alice.did, &alice, &rev, &sample_records()).0]);
    let directory = tempfile::tempdir().unwrap();
    let (log, writer, task) = open_log(&directory);
    let backfiller = Backfiller::new(log.clone(), writer, fetcher);
    let summary = backfiller.run("dids", vec![alice.did.clone(), gone.did.clone()], 2, false, |_| {}).await.unwrap();
    assert_eq!((summary.synced, summary.unavailable, summary.failed), (1, 1, 0));
    assert!(summary.finished, "an unavailable account does not keep the job open");
    assert_eq!(record_events(&log).len(), 4);
    drop(backfiller);
    task.join();
}
