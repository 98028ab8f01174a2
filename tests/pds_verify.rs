//! End to end against the reference PDS: atcr trusts only what is signed.
//!
//! A user writes five commits to the real PDS; the test takes the frames exactly as the PDS's
//! firehose sent them and plays them to `atcr serve` through the loopback replay server (the
//! fault injector). DID documents come from the dev-env's real PLC. First the three genuine
//! commits; then, derived from the real frames of commits 4 and 5 and 2:
//! (a) commit 4 re-signed with another key (a valid signature, the wrong signer);
//! (b) commit 5 with an op path renamed, so its ops disagree with the signed MST (the PDS sends
//!     `prevData`, so MST inversion catches it);
//! (c) commit 2 again under a new seq (a replayed old rev).
//! Each must be refused and quarantined with its reason, and every answer of the API and `/v2`
//! must be what it was before. Then the genuine commit 4 is accepted: the gate refuses frames,
//! not the account. Last, commit 5 is withheld and a sixth commit sent: its `since` does not
//! follow, so the account is marked for resync, and the resync (backfill from the PDS) brings
//! the missed tag.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::StreamExt;
use ipld_core::cid::Cid;
use ipld_core::cid::multihash::Multihash;
use ipld_core::ipld::Ipld;
use k256::ecdsa::signature::Signer as _;
use serde::Deserialize;
use serde_json::Value;
use sha2::Digest;

use atcr_firehose_replay::{Faults, RecordedFrame, ReplayServer};
use atcr_gen::encoding::car_v1;
use atcr_ingest::car::CarBlocks;
use atcr_ingest::frame::{Frame, decode_frame};
use atcr_storage::{PublicKey, SignedCommit};
use support::{Account, Atcr, Pds, Written, image_manifest, manifest_record, tag_record};

const REPOSITORY: &str = "hello";
/// Nothing listens on port 9: the hold is never reachable, and this test does not need it.
const HOLD: &str = "did:web:localhost%3A9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_disagreeing_and_replayed_commits_are_quarantined_and_change_nothing() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    if let Err(error) = scenario(&pds_url).await {
        panic!("{error:#}");
    }
}

async fn scenario(pds_url: &str) -> Result<()> {
    let pds = Pds::new(pds_url);
    let alice = pds.create_account("va").await?;
    println!("alice {} {}", alice.handle, alice.did);

    // --- five real commits ------------------------------------------------------------------
    let (first, first_hex) = push_manifest(&pds, &alice, "1.0.0").await?;
    let (second, second_hex) = push_manifest(&pds, &alice, "2.0.0").await?;
    let tag = |name: &str, hex: &str| tag_record(&alice.did, REPOSITORY, name, hex);
    let latest_rkey = format!("{REPOSITORY}_latest");
    let edge_rkey = format!("{REPOSITORY}_edge");
    let third = pds.put_record(&alice, "io.atcr.tag", &latest_rkey, &tag("latest", &first_hex)).await?;
    let fourth = pds.put_record(&alice, "io.atcr.tag", &latest_rkey, &tag("latest", &second_hex)).await?;
    let fifth = pds.put_record(&alice, "io.atcr.tag", &edge_rkey, &tag("edge", &second_hex)).await?;
    let writes = [&first, &second, &third, &fourth, &fifth];
    let frames = pds_frames(pds_url, &writes).await?;
    ensure!(
        frames.windows(2).all(|pair| pair[0].seq < pair[1].seq),
        "the PDS sent the commits out of order: {:?}",
        frames.iter().map(|frame| frame.seq).collect::<Vec<_>>()
    );

    // --- atcr follows the genuine first three ------------------------------------------------
    let server = ReplayServer::start(frames[..3].to_vec(), Faults::default()).await?;
    let mut atcr = Atcr::new("verify", &server.url(), &support::plc_url(pds_url), Some(0))?;
    atcr.start(Duration::from_secs(30)).await?;
    let did = alice.did.clone();
    atcr.wait_for_events(&did, Duration::from_secs(30), "the three genuine commits", |events| {
        firehose_records(events).len() == 3
    })
    .await?;
    for hex in [&first_hex, &second_hex] {
        wait_for_status(&atcr, &format!("/v2/{did}/{REPOSITORY}/manifests/sha256:{hex}"), 200).await?;
    }
    wait_for_status(&atcr, &format!("/v2/{did}/{REPOSITORY}/manifests/latest"), 200).await?;
    let before = snapshot(&atcr, &did).await?;
    ensure!(before.tags == vec!["latest".to_string()], "tags before: {:?}", before.tags);

    // --- the three bad frames ----------------------------------------------------------------
    let mut seq = frames[4].seq;
    let mut next_seq = || {
        seq += 1;
        seq
    };
    let wrong_key = k256::ecdsa::SigningKey::from_slice(&[7u8; 32])?;
    let forged = resign(&frames[3].bytes, &wrong_key, next_seq())?;
    let disagreeing = rename_op_path(
        &frames[4].bytes,
        &format!("io.atcr.tag/{edge_rkey}"),
        &format!("io.atcr.tag/{REPOSITORY}_edgy"),
        next_seq(),
    )?;
    let replayed = with_seq(&frames[1].bytes, next_seq())?;
    for frame in [&forged, &disagreeing, &replayed] {
        ensure!(
            matches!(decode_frame(&frame.bytes), Ok(Frame::Commit(_))),
            "a crafted frame must still decode as an io.atcr commit, so only verification can refuse it"
        );
        server.push(frame.clone());
    }
    let quarantine = wait_for_quarantine(&atcr, &did, 3).await?;
    let reasons: Vec<&str> = quarantine.iter().map(|entry| entry["reason"].as_str().unwrap_or_default()).collect();
    println!("quarantined:\n  {}", reasons.join("\n  "));
    let seqs: Vec<i64> = quarantine.iter().filter_map(|entry| entry["seq"].as_i64()).collect();
    ensure!(seqs == vec![forged.seq, disagreeing.seq, replayed.seq], "quarantined seqs {seqs:?}");
    ensure!(reasons[0].contains("signature does not match the key"), "forged: {}", reasons[0]);
    ensure!(reasons[1].contains("ops disagree with the signed MST"), "disagreeing: {}", reasons[1]);
    ensure!(reasons[2].contains("is not newer than its last verified rev"), "replayed: {}", reasons[2]);
    ensure!(
        quarantine.iter().all(|entry| entry["bytes"].as_u64().unwrap_or(0) > 0),
        "the raw frames are kept: {quarantine:?}"
    );
    // the cursor moved past them, so a reconnect does not bring them back
    wait_for_cursor(&atcr, &server.url(), replayed.seq).await?;

    let after = snapshot(&atcr, &did).await?;
    ensure!(before == after, "the projections changed:\nbefore {before:#?}\nafter {after:#?}");
    let metrics = atcr.metrics().await?;
    for line in [
        r#"atcr_ingest_commits_rejected_total{reason="signature"} 1"#,
        r#"atcr_ingest_commits_rejected_total{reason="ops_disagree"} 1"#,
        r#"atcr_ingest_commits_rejected_total{reason="stale_rev"} 1"#,
        "atcr_ingest_commits_verified_total 3",
    ] {
        ensure!(metrics.lines().any(|metric| metric == line), "/metrics lacks {line:?}");
    }

    // --- the genuine commit 4 still goes through ---------------------------------------------
    let genuine = with_seq(&frames[3].bytes, next_seq())?;
    server.push(genuine);
    atcr.wait_for_events(&did, Duration::from_secs(30), "the genuine fourth commit", |events| {
        firehose_records(events).len() == 4
    })
    .await?;
    // The events are in the log; the views apply them a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, moved) = loop {
        let (status, body) = atcr.get(&format!("/v2/{did}/{REPOSITORY}/manifests/latest")).await?;
        let moved = sha256_hex(body.as_bytes());
        if (status == 200 && moved == second_hex) || Instant::now() > deadline {
            break (status, moved);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(status == 200, "latest after the genuine commit 4: HTTP {status}");
    ensure!(moved == second_hex, "latest must now be the second manifest ({second_hex}), is {moved}");
    ensure!(
        atcr.get_json("/api/v1/quarantine").await?.as_array().map(Vec::len) == Some(3),
        "the genuine commit was not quarantined"
    );

    // --- a gap: the genuine commit 5 never arrives; commit 6 is kept, the account resynced ----
    let stable_rkey = format!("{REPOSITORY}_stable");
    let sixth = pds.put_record(&alice, "io.atcr.tag", &stable_rkey, &tag("stable", &first_hex)).await?;
    let sixth_frame = pds_frames(pds_url, &[&sixth]).await?.remove(0);
    server.push(with_seq(&sixth_frame.bytes, next_seq())?);
    let events = atcr
        .wait_for_events(&did, Duration::from_secs(30), "a resync marker for the missed commit", |events| {
            events.iter().any(|event| support::kind(event) == "resync")
        })
        .await?;
    let resync = events.iter().find(|event| support::kind(event) == "resync").context("a resync event")?;
    ensure!(
        support::str_field(resync, "reason").is_some_and(|reason| reason.contains("commits were missed")),
        "resync reason: {resync}"
    );
    // the resync (backfill from the PDS) brings the missed tag; the live commit 6 is there too
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let tags = atcr.get_json(&format!("/v2/{did}/{REPOSITORY}/tags/list")).await?;
        let has = |name: &str| tags["tags"].as_array().is_some_and(|tags| tags.iter().any(|tag| tag == name));
        if has("edge") && has("stable") && has("latest") {
            break;
        }
        ensure!(Instant::now() < deadline, "the resync did not repair the views: {tags}\n{}", atcr.output_tail(30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    atcr.terminate(Duration::from_secs(20)).await?;
    server.stop();
    Ok(())
}

/// Handles verify both ways: with the PDS answering the handle → DID direction (as DNS or
/// `/.well-known/atproto-did` would), the handle names its DID in `/v2`; with a resolver that
/// names another DID, the same handle is refused in `/v2` and flagged on the user page, while
/// the DID itself still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_names_its_did_only_when_it_verifies_both_ways() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    if let Err(error) = handle_scenario(&pds_url).await {
        panic!("{error:#}");
    }
}

async fn handle_scenario(pds_url: &str) -> Result<()> {
    let pds = Pds::new(pds_url);
    let bob = pds.create_account("vh").await?;
    let (_, hex) = push_manifest(&pds, &bob, "1.0.0").await?;
    let last = pds
        .put_record(
            &bob,
            "io.atcr.tag",
            &format!("{REPOSITORY}_latest"),
            &tag_record(&bob.did, REPOSITORY, "latest", &hex),
        )
        .await?;
    let did = bob.did.clone();
    let by_handle = format!("/v2/{}/{REPOSITORY}/tags/list", bob.handle);
    let by_did = format!("/v2/{did}/{REPOSITORY}/tags/list");

    // a resolver on loopback that says the handle belongs to someone else
    let impostor = "did:plc:someoneelse00000000000000";
    let (liar_url, liar) = lying_resolver(impostor).await?;

    let plc = support::plc_url(pds_url);
    let mut honest = Atcr::new("handle-ok", pds_url, &plc, Some(0))?;
    let mut lied_to = Atcr::new("handle-refuted", pds_url, &plc, Some(0))?;
    lied_to.dev_handle_resolver = Some(liar_url);
    for atcr in [&mut honest, &mut lied_to] {
        atcr.start(Duration::from_secs(30)).await?;
        atcr.wait_for_events(&did, Duration::from_secs(45), "bob's records and his handle check", |events| {
            events.iter().any(|event| support::str_field(event, "rev") == Some(last.rev.as_str()))
                && events.iter().any(|event| support::kind(event) == "handle_checked")
        })
        .await?;
        wait_for_status(atcr, &by_did, 200).await?;
    }

    let checks = |events: Vec<Value>| -> Vec<(bool, String)> {
        events
            .iter()
            .filter(|event| support::kind(event) == "handle_checked")
            .map(|event| {
                (event["verified"] == true, support::str_field(event, "reason").unwrap_or_default().to_string())
            })
            .collect()
    };
    let verified = checks(honest.events(Some(&did), None).await?);
    ensure!(verified.iter().all(|(ok, _)| *ok), "the PDS-backed check must verify: {verified:?}");
    let (status, body) = honest.get(&by_handle).await?;
    ensure!(status == 200, "GET {by_handle} with a verified handle: HTTP {status}: {body}");

    let refuted = checks(lied_to.events(Some(&did), None).await?);
    ensure!(
        refuted.iter().all(|(ok, reason)| !ok && reason.contains(impostor)),
        "the lying resolver must refute the handle: {refuted:?}"
    );
    let (status, body) = lied_to.get(&by_handle).await?;
    ensure!(
        status == 404 && body.contains("NAME_UNKNOWN"),
        "GET {by_handle} with a refuted handle: HTTP {status}: {body}"
    );
    let (status, page) = lied_to.get(&format!("/u/{did}")).await?;
    ensure!(status == 200 && page.contains("handle not verified"), "the user page must flag the handle: HTTP {status}");
    let (_, page) = honest.get(&format!("/u/{did}")).await?;
    ensure!(!page.contains("handle not verified"), "a verified handle is not flagged");
    // repository pages name and link the owner by a verified handle only
    let repository_page = format!("/r/{did}/{REPOSITORY}");
    let (status, page) = lied_to.get(&repository_page).await?;
    ensure!(status == 200 && !page.contains(&bob.handle), "{repository_page} shows the refuted handle: HTTP {status}");
    let (status, page) = honest.get(&repository_page).await?;
    ensure!(status == 200 && page.contains(&bob.handle), "{repository_page} lacks the verified handle: HTTP {status}");
    ensure!(liar.load(std::sync::atomic::Ordering::SeqCst) > 0, "the refuting atcr asked the lying resolver");

    honest.terminate(Duration::from_secs(20)).await?;
    lied_to.terminate(Duration::from_secs(20)).await?;
    Ok(())
}

/// A loopback `com.atproto.identity.resolveHandle` that names `did` for every handle; counts
/// the requests it answered.
async fn lying_resolver(did: &str) -> Result<(String, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = answered.clone();
    let body = serde_json::json!({ "did": did }).to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = vec![0u8; 8192];
            let Ok(read) = socket.read(&mut request).await else { continue };
            if !request[..read].starts_with(b"GET /xrpc/com.atproto.identity.resolveHandle?") {
                continue;
            }
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    Ok((url, answered))
}

async fn push_manifest(pds: &Pds, account: &Account, version: &str) -> Result<(Written, String)> {
    let manifest = image_manifest(REPOSITORY, version, &account.did);
    let blob = pds.upload_blob(account, manifest.bytes.clone(), support::OCI_MANIFEST).await?;
    let record = manifest_record(REPOSITORY, &manifest, &blob, HOLD);
    let written = pds.create_record(account, "io.atcr.manifest", Some(&manifest.hex), &record).await?;
    Ok((written, manifest.hex))
}

/// The frames of `writes`' commits exactly as the PDS's firehose sends them, in write order.
async fn pds_frames(pds_url: &str, writes: &[&Written]) -> Result<Vec<RecordedFrame>> {
    let wanted: Vec<&str> = writes.iter().map(|written| written.commit_cid.as_str()).collect();
    let url = format!("{}/xrpc/com.atproto.sync.subscribeRepos?cursor=0", pds_url.replacen("http://", "ws://", 1));
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str()).await.context("subscribing to the PDS")?;
    let mut found: BTreeMap<String, RecordedFrame> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while found.len() < wanted.len() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, socket.next())
            .await
            .map_err(|_| anyhow!("the PDS firehose did not send all {} commits in time", wanted.len()))?;
        let Some(message) = message else { bail!("the PDS closed its firehose") };
        let tokio_tungstenite::tungstenite::Message::Binary(bytes) = message? else { continue };
        if let Ok(Frame::Commit(commit)) = decode_frame(&bytes)
            && wanted.contains(&commit.commit_cid.as_str())
        {
            found.insert(commit.commit_cid.clone(), RecordedFrame { seq: commit.seq, bytes: bytes.to_vec() });
        }
    }
    let _ = socket.close(None).await;
    wanted.iter().map(|cid| found.remove(*cid).ok_or_else(|| anyhow!("commit {cid} not seen"))).collect()
}

// ------------------------------------------------------------------------------------------------
// What the API and /v2 answer about the user: must not move when a bad frame is refused.
// ------------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    tags: Vec<String>,
    /// (reference, HTTP status, sha256 of the body) for every tag and manifest digest.
    manifests: Vec<(String, u16, String)>,
    /// Record events from the firehose: (kind, collection, rkey, rev, commit).
    records: Vec<(String, String, String, String, String)>,
    events: usize,
    user_page: Value,
}

async fn snapshot(atcr: &Atcr, did: &str) -> Result<Snapshot> {
    let tags_list = atcr.get_json(&format!("/v2/{did}/{REPOSITORY}/tags/list")).await?;
    let tags: Vec<String> = tags_list["tags"]
        .as_array()
        .map(|tags| tags.iter().filter_map(|tag| tag.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let mut references: Vec<String> = tags.clone();
    references.extend(["edge".to_string(), "edgy".to_string()]);
    let mut manifests = Vec::new();
    for reference in references {
        let (status, body) = atcr.get(&format!("/v2/{did}/{REPOSITORY}/manifests/{reference}")).await?;
        manifests.push((reference, status, sha256_hex(body.as_bytes())));
    }
    let events = atcr.events(Some(did), None).await?;
    let records = firehose_records(&events)
        .into_iter()
        .map(|event| {
            let field = |key: &str| event[key].as_str().unwrap_or_default().to_string();
            (field("kind"), field("collection"), field("rkey"), field("rev"), field("commit"))
        })
        .collect();
    let (status, user_page) = atcr.get(&format!("/u/{did}")).await?;
    ensure!(status == 200, "/u/{did}: HTTP {status}");
    let user_page = Value::String(sha256_hex(user_page.as_bytes()));
    Ok(Snapshot { tags, manifests, records, events: events.len(), user_page })
}

fn firehose_records(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|event| event["source"] == "firehose" && support::is_record_event(event)).collect()
}

async fn wait_for_status(atcr: &Atcr, path: &str, want: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = atcr.get(path).await?;
        if status == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("GET {path}: HTTP {status} (want {want}): {body}\n{}", atcr.output_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_quarantine(atcr: &Atcr, did: &str, count: usize) -> Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entries = atcr.get_json("/api/v1/quarantine?limit=1000").await?;
        let ours: Vec<Value> = entries
            .as_array()
            .map(|entries| entries.iter().filter(|entry| entry["did"] == did).cloned().collect())
            .unwrap_or_default();
        if ours.len() >= count {
            return Ok(ours);
        }
        if Instant::now() > deadline {
            bail!("{} of {count} quarantine entries for {did}: {entries}\n{}", ours.len(), atcr.output_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_cursor(atcr: &Atcr, upstream: &str, seq: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = atcr.status().await?;
        let cursor = status["log"]["cursors"][upstream.trim_end_matches('/')].as_i64();
        if cursor.is_some_and(|cursor| cursor >= seq) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("cursor {cursor:?} never reached {seq}: {}", status["log"]["cursors"]);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

// ------------------------------------------------------------------------------------------------
// Crafting frames from real ones: header and body as IPLD, the CAR taken apart and rebuilt.
// ------------------------------------------------------------------------------------------------

type Body = BTreeMap<String, Ipld>;

fn split_frame(bytes: &[u8]) -> Result<(Ipld, Body)> {
    let mut deserializer = serde_ipld_dagcbor::de::Deserializer::from_slice(bytes);
    let header = Ipld::deserialize(&mut deserializer).context("frame header")?;
    let body = Body::deserialize(&mut deserializer).context("frame body")?;
    Ok((header, body))
}

fn join_frame(header: &Ipld, mut body: Body, seq: i64) -> Result<RecordedFrame> {
    body.insert("seq".into(), Ipld::Integer(seq.into()));
    let mut bytes = serde_ipld_dagcbor::to_vec(header)?;
    bytes.extend(serde_ipld_dagcbor::to_vec(&body)?);
    Ok(RecordedFrame { seq, bytes })
}

/// The same frame under another seq (a replay).
fn with_seq(bytes: &[u8], seq: i64) -> Result<RecordedFrame> {
    let (header, body) = split_frame(bytes)?;
    join_frame(&header, body, seq)
}

/// The frame with one op's path changed: the signature still holds, the ops no longer match.
fn rename_op_path(bytes: &[u8], from: &str, to: &str, seq: i64) -> Result<RecordedFrame> {
    let (header, mut body) = split_frame(bytes)?;
    let Some(Ipld::List(ops)) = body.get_mut("ops") else { bail!("commit without ops") };
    let mut renamed = false;
    for op in ops {
        if let Ipld::Map(op) = op
            && op.get("path") == Some(&Ipld::String(from.into()))
        {
            op.insert("path".into(), Ipld::String(to.into()));
            renamed = true;
        }
    }
    ensure!(renamed, "no op at {from}");
    ensure!(body.contains_key("prevData"), "the PDS sent no prevData: nothing to prove the ops against");
    join_frame(&header, body, seq)
}

/// The frame with its commit re-signed by `key`: a new commit block (so a new commit CID, CAR
/// root and `commit` field), a valid signature by the wrong signer.
fn resign(bytes: &[u8], key: &k256::ecdsa::SigningKey, seq: i64) -> Result<RecordedFrame> {
    let (header, mut body) = split_frame(bytes)?;
    let Some(Ipld::Link(commit_cid)) = body.get("commit").cloned() else { bail!("commit without a commit link") };
    let Some(Ipld::Bytes(car)) = body.get("blocks") else { bail!("commit without blocks") };
    let mut blocks: Vec<(Cid, Vec<u8>)> =
        CarBlocks::parse(car)?.iter().map(|(cid, data)| (*cid, data.to_vec())).collect();
    let commit = blocks.iter_mut().find(|(cid, _)| *cid == commit_cid).context("commit block not in the CAR")?;
    let mut map: Body = serde_ipld_dagcbor::from_slice(&commit.1)?;
    map.remove("sig");
    let unsigned = serde_ipld_dagcbor::to_vec(&map)?;
    let signature: k256::ecdsa::Signature = key.sign(&unsigned);
    map.insert("sig".into(), Ipld::Bytes(signature.to_bytes().to_vec()));
    let block = serde_ipld_dagcbor::to_vec(&map)?;
    // the crafted block is a well-formed commit signed by `key`: only the signer is wrong
    SignedCommit::decode(&block)?.verify(&PublicKey::K256(*key.verifying_key()))?;
    let digest = sha2::Sha256::digest(&block);
    let new_cid = Cid::new_v1(0x71, Multihash::<64>::wrap(0x12, &digest)?);
    *commit = (new_cid, block);
    body.insert("blocks".into(), Ipld::Bytes(car_v1(new_cid, blocks.iter().map(|(cid, data)| (cid, data.as_slice())))));
    body.insert("commit".into(), Ipld::Link(new_cid));
    join_frame(&header, body, seq)
}
