//! End to end against the reference PDS: what two users write to their repos through XRPC
//! arrives in atcr's event log, exactly, in upstream order, and nothing else of theirs does.
//!
//! Part of the data is written before atcr starts (replayed from `--start-cursor 0`), part while
//! it runs (live). Then a clean SIGTERM, and the offline CLI (`atcr log tail`, `atcr status`)
//! must read the same log.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use support::{
    Account, Atcr, BatchWrite, Op, Pds, Written, assert_same_ops, bsky_post, caught_up, describe_events, ensure_prefix,
    image_manifest, is_record_event, kind, manifest_record, profile_record, repo_page_record, star_record, str_field,
    tag_record, u64_field, unique_handle,
};

/// The hold the manifests name. atcr resolves hold DIDs, so it must stay on loopback: nothing
/// listens on port 9 (discard), the resolution just fails and is retried in the background.
const HOLD: &str = "did:web:localhost%3A9";

/// One record event the log must hold: the op, who wrote it, the commit that carried it, and
/// for puts the record JSON as written.
struct Expected {
    did: String,
    op: Op,
    rev: Option<String>,
    commit_cid: Option<String>,
    record: Option<Value>,
}

impl Expected {
    fn put(account: &Account, written: &Written, action: &str, record: &Value) -> Self {
        Expected {
            did: account.did.clone(),
            op: Op::put(written, action),
            rev: Some(written.rev.clone()),
            commit_cid: Some(written.commit_cid.clone()),
            record: Some(record.clone()),
        }
    }
}

/// A user's registry: an uploaded manifest, two tags, a profile and a repo page.
async fn seed_user(
    pds: &Pds,
    user: &Account,
    repository: &str,
    expected: &mut Vec<Expected>,
) -> Result<(String, usize)> {
    let manifest = image_manifest(repository, "1.0.0", &user.did);
    let blob = pds.upload_blob(user, manifest.bytes.clone(), support::OCI_MANIFEST).await?;
    ensure!(blob["mimeType"] == support::OCI_MANIFEST, "uploadBlob kept another mimeType: {blob}");
    let record = manifest_record(repository, &manifest, &blob, HOLD);
    let written = pds.create_record(user, "io.atcr.manifest", Some(&manifest.hex), &record).await?;
    ensure!(written.rkey == manifest.hex, "manifest rkey {} is not the digest hex {}", written.rkey, manifest.hex);
    expected.push(Expected::put(user, &written, "create", &record));

    for tag in ["latest", "1.0.0"] {
        let record = tag_record(&user.did, repository, tag, &manifest.hex);
        let written = pds.put_record(user, "io.atcr.tag", &format!("{repository}_{tag}"), &record).await?;
        expected.push(Expected::put(user, &written, "create", &record));
    }
    let record = profile_record(HOLD, "docker");
    let written = pds.put_record(user, "io.atcr.sailor.profile", "self", &record).await?;
    expected.push(Expected::put(user, &written, "create", &record));

    let record = repo_page_record(repository, &format!("# {repository}\n\nA tiny image for the e2e test."));
    let written = pds.put_record(user, "io.atcr.repo.page", repository, &record).await?;
    expected.push(Expected::put(user, &written, "create", &record));
    Ok((manifest.hex, manifest.bytes.len()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pds_writes_arrive_in_the_log_exactly_once_and_in_order() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    let mut atcr = Atcr::new("ingest", &pds_url, &support::plc_url(&pds_url), Some(0)).expect("a temp dir");
    if let Err(error) = scenario(&pds_url, &mut atcr).await {
        panic!("{error:#}");
    }
}

async fn scenario(pds_url: &str, atcr: &mut Atcr) -> Result<()> {
    let started = Instant::now();
    let pds = Pds::new(pds_url);
    let mut alice = pds.create_account("ia").await?;
    let bob = pds.create_account("ib").await?;
    println!("alice {} {}\nbob   {} {}", alice.handle, alice.did, bob.handle, bob.did);
    let mut expected = Vec::new();
    let mut tag_cids = HashMap::new();

    // --- before atcr runs: replayed from cursor 0 --------------------------------------------
    let (alice_manifest, alice_manifest_size) = seed_user(&pds, &alice, "hello", &mut expected).await?;
    let (bob_manifest, bob_manifest_size) = seed_user(&pds, &bob, "tools", &mut expected).await?;
    for entry in &expected {
        if entry.op.collection == "io.atcr.tag" {
            tag_cids.insert((entry.did.clone(), entry.op.rkey.clone()), entry.op.cid.clone().unwrap());
        }
    }
    let page_rkey = "hello";
    let record = star_record(&alice.did, page_rkey);
    let written = pds.create_record(&bob, "io.atcr.sailor.star", None, &record).await?;
    expected.push(Expected::put(&bob, &written, "create", &record));
    // non-atcr traffic of the same users: must be filtered out
    let mut non_atcr =
        vec![pds.create_record(&alice, "app.bsky.feed.post", None, &bsky_post("hello from alice")).await?];

    atcr.start(Duration::from_secs(30)).await?;
    println!("atcr serve ready on {} after {:?}", atcr.base_url(), started.elapsed());
    // a second process reading the log while serve writes it
    let mut follower = atcr.follow(&["--did", &alice.did])?;

    // --- while atcr runs: live ---------------------------------------------------------------
    let record = repo_page_record("hello", "# hello\n\nUpdated README: now with a changelog.");
    let written = pds.put_record(&alice, "io.atcr.repo.page", page_rkey, &record).await?;
    expected.push(Expected::put(&alice, &written, "update", &record));

    let deleted_rkey = "hello_1.0.0";
    let deleted = pds.delete_record(&alice, "io.atcr.tag", deleted_rkey).await?;
    let prev_cid = tag_cids[&(alice.did.clone(), deleted_rkey.to_string())].clone();
    expected.push(Expected {
        did: alice.did.clone(),
        op: Op::delete("io.atcr.tag", deleted_rkey, &prev_cid),
        rev: deleted.rev.clone(),
        commit_cid: deleted.commit_cid.clone(),
        record: None,
    });

    // one commit with an io.atcr op and an app.bsky op: only the first may be kept
    let tag = tag_record(&alice.did, "hello", "edge", &alice_manifest);
    let post = bsky_post("a post in the same commit as a tag");
    let results = pds
        .apply_writes(
            &alice,
            &[
                BatchWrite::Create { collection: "io.atcr.tag", rkey: Some("hello_edge"), value: &tag },
                BatchWrite::Create { collection: "app.bsky.feed.post", rkey: None, value: &post },
            ],
        )
        .await?;
    expected.push(Expected::put(&alice, &results[0], "create", &tag));
    non_atcr.push(results[1].clone());
    non_atcr.push(pds.create_record(&bob, "app.bsky.feed.post", None, &bsky_post("bob posts too")).await?);

    // alice already has io.atcr records, so her #identity is kept
    let new_handle = unique_handle("ic");
    pds.update_handle(&mut alice, &new_handle).await?;
    let writes_done = started.elapsed();

    // --- wait for all of it ------------------------------------------------------------------
    let ops_of = |did: &str| -> Vec<Op> {
        expected.iter().filter(|entry| entry.did == did).map(|entry| entry.op.clone()).collect()
    };
    let (alice_ops, bob_ops) = (ops_of(&alice.did), ops_of(&bob.did));
    let handle = new_handle.clone();
    let alice_events = atcr
        .wait_for_events(&alice.did, Duration::from_secs(45), "alice's record events and #identity", |events| {
            caught_up(events, &alice_ops)
                && events.iter().any(|event| str_field(event, "handle") == Some(handle.as_str()))
        })
        .await?;
    let bob_events = atcr
        .wait_for_events(&bob.did, Duration::from_secs(30), "bob's record events", |events| caught_up(events, &bob_ops))
        .await?;
    println!(
        "caught up {:?} after start ({:?} after the last write)",
        started.elapsed(),
        started.elapsed() - writes_done
    );

    // --- exactly the expected record events, in upstream order ------------------------------
    let mut ours: Vec<&Value> = alice_events.iter().chain(&bob_events).collect();
    ours.sort_by_key(|event| u64_field(event, "offset"));
    let records: Vec<&Value> = ours.iter().copied().filter(|event| is_record_event(event)).collect();
    let expected_ops: Vec<Op> = expected.iter().map(|entry| entry.op.clone()).collect();
    let actual_ops: Vec<Op> = records.iter().map(|event| Op::of_event(event)).collect();
    assert_same_ops(&expected_ops, &actual_ops, "alice + bob");

    let mut last_seq = i64::MIN;
    let mut last_offset = None;
    for (event, entry) in records.iter().zip(&expected) {
        let at = format!("event {} ({})", event["offset"], entry.op);
        ensure!(str_field(event, "did") == Some(entry.did.as_str()), "{at}: did {} != {}", event["did"], entry.did);
        ensure!(str_field(event, "source") == Some("firehose"), "{at}: source {}", event["source"]);
        let seq = event["seq"].as_i64().with_context(|| format!("{at}: no seq"))?;
        ensure!(seq > last_seq, "{at}: seq {seq} does not increase (previous {last_seq})");
        last_seq = seq;
        let offset = u64_field(event, "offset").with_context(|| format!("{at}: no offset"))?;
        ensure!(last_offset.is_none_or(|last| offset > last), "{at}: offset does not increase");
        last_offset = Some(offset);
        if let Some(rev) = &entry.rev {
            ensure!(str_field(event, "rev") == Some(rev.as_str()), "{at}: rev {} != {rev}", event["rev"]);
        }
        if let Some(commit) = &entry.commit_cid {
            ensure!(
                str_field(event, "commit") == Some(commit.as_str()),
                "{at}: commit {} != {commit}",
                event["commit"]
            );
        }
        ensure!(str_field(event, "time").is_some_and(|time| time.len() >= 20), "{at}: no upstream time");
        ensure!(event["received_at_us"].as_i64().is_some_and(|us| us > 0), "{at}: no received_at_us");
        match &entry.record {
            Some(record) => {
                ensure!(kind(event) == "record_put", "{at}: kind {}", event["kind"]);
                ensure!(
                    &event["record"] == record,
                    "{at}: record JSON differs\n  written: {record}\n  in log:  {}",
                    event["record"]
                );
            }
            None => {
                ensure!(kind(event) == "record_deleted", "{at}: kind {}", event["kind"]);
                ensure!(event.get("record").is_none_or(Value::is_null), "{at}: a delete with a record");
            }
        }
    }
    // the manifest's blob ref survived as a CID link
    let manifest_event =
        records.iter().find(|event| str_field(event, "collection") == Some("io.atcr.manifest")).unwrap();
    ensure!(
        manifest_event["record"]["manifestBlob"]["ref"]["$link"].as_str().is_some_and(|cid| cid.starts_with("bafkrei")),
        "manifestBlob.ref is not a raw-codec CID link: {}",
        manifest_event["record"]["manifestBlob"]
    );

    // --- the only other firehose events of our DIDs: alice's new handle ---------------------
    let others: Vec<Value> = ours
        .iter()
        .filter(|event| !is_record_event(event) && support::source(event) == "firehose")
        .map(|event| (*event).clone())
        .collect();
    ensure!(
        others.len() == 1
            && kind(&others[0]) == "identity"
            && str_field(&others[0], "did") == Some(alice.did.as_str())
            && str_field(&others[0], "handle") == Some(new_handle.as_str()),
        "expected exactly one firehose event besides the records (alice's #identity -> {new_handle}), got:\n{}",
        describe_events(&others)
    );

    // --- enrichment: DID documents from the PLC, manifest bytes from the PDS ------------------
    let mut enriched = HashMap::new();
    for (name, user, hex, size) in
        [("alice", &alice, &alice_manifest, alice_manifest_size), ("bob", &bob, &bob_manifest, bob_manifest_size)]
    {
        let digest = format!("sha256:{hex}");
        let (did, wanted) = (user.did.clone(), digest.clone());
        let events = atcr
            .wait_for_events(
                &user.did,
                Duration::from_secs(30),
                &format!("{name}'s manifest fetched by enrichment"),
                |events| {
                    let stored = events
                        .iter()
                        .any(|event| kind(event) == "manifest_stored" && event["digest"] == wanted.as_str());
                    let resolved = events
                        .iter()
                        .any(|event| kind(event) == "identity_resolved" && event["document"]["id"] == did.as_str());
                    stored && resolved
                },
            )
            .await?;
        let stored: Vec<&Value> = events.iter().filter(|event| kind(event) == "manifest_stored").collect();
        ensure!(
            stored.len() == 1
                && stored[0]["size"].as_u64() == Some(size as u64)
                && stored[0]["media_type"] == support::OCI_MANIFEST
                && support::source(stored[0]) == "enrichment",
            "{name}: expected one manifest_stored {digest} of {size} bytes from enrichment:\n{}",
            describe_events(&events)
        );
        for event in events.iter().filter(|event| support::source(event) == "enrichment") {
            ensure!(
                matches!(kind(event), "manifest_stored" | "identity_resolved" | "handle_checked"),
                "{name}: unexpected enrichment event {event}"
            );
            // the PDS's .test handles verify both ways (its resolveHandle, --dev-handle-resolver)
            ensure!(
                kind(event) != "handle_checked" || event["verified"] == true,
                "{name}: handle did not verify: {event}"
            );
        }
        enriched.insert(user.did.clone(), events);
    }
    let (alice_events, bob_events) = (enriched.remove(&alice.did).unwrap(), enriched.remove(&bob.did).unwrap());

    // --- non-atcr writes are nowhere in the log ----------------------------------------------
    let everything = atcr.events(None, None).await?;
    for event in &everything {
        if let Some(collection) = str_field(event, "collection") {
            ensure!(collection.starts_with("io.atcr."), "a non-io.atcr event in the log: {event}");
        }
        for post in &non_atcr {
            ensure!(str_field(event, "cid") != Some(post.cid.as_str()), "the log holds {}: {event}", post.uri);
        }
    }
    ensure!(atcr.events(None, Some("app.bsky.feed.post")).await?.is_empty(), "app.bsky.feed.post events in the log");

    // --- status ------------------------------------------------------------------------------
    let status = atcr.status().await?;
    let log = &status["log"];
    ensure!(log["quarantined"].as_u64() == Some(0), "quarantine is not empty: {}", status["recent_quarantine"]);
    ensure!(log["tracked_dids"].as_u64().is_some_and(|n| n >= 2), "tracked_dids: {}", log["tracked_dids"]);
    ensure!(log["events"].as_u64().is_some_and(|n| n >= everything.len() as u64), "status events: {}", log["events"]);
    for collection in
        ["io.atcr.manifest", "io.atcr.tag", "io.atcr.sailor.profile", "io.atcr.repo.page", "io.atcr.sailor.star"]
    {
        ensure!(
            log["by_collection"][collection].as_u64().is_some_and(|n| n >= 1),
            "by_collection lacks {collection}: {}",
            log["by_collection"]
        );
    }
    ensure!(log["by_kind"]["record_put"].as_u64().is_some_and(|n| n >= 12), "by_kind: {}", log["by_kind"]);
    let cursor = log["cursors"][pds_url].as_i64();
    ensure!(
        cursor.is_some_and(|cursor| cursor >= last_seq),
        "cursor for {pds_url} is {cursor:?}, behind the last seq {last_seq}: {}",
        log["cursors"]
    );
    ensure!(status["recent_events"].is_array(), "status without recent_events");

    // --- the CLI reads the log while serve runs (the API's answer is a prefix: append-only) ---
    let followed = follower.wait_for(alice_events.len(), Duration::from_secs(20)).await?;
    ensure_prefix(
        &alice_events,
        &followed,
        "`atcr log tail --follow --did` (started before the live writes) vs /api/v1/log",
    )?;
    drop(follower);
    let tailed = atcr.log_tail(&["--did", &alice.did]).await?;
    ensure_prefix(&alice_events, &tailed, "`atcr log tail --did` during serve vs /api/v1/log")?;

    // --- clean shutdown, then the CLI reads the same log ------------------------------------
    let exit = atcr.terminate(Duration::from_secs(20)).await?;
    ensure!(exit.success(), "atcr serve exited with {exit} on SIGTERM; output:\n{}", atcr.output_tail(30));
    for (name, did, api_events) in [("alice", &alice.did, &alice_events), ("bob", &bob.did, &bob_events)] {
        let tailed = atcr.log_tail(&["--did", did]).await?;
        ensure_prefix(api_events, &tailed, &format!("`atcr log tail --did` for {name} after stop vs /api/v1/log"))?;
    }
    let tags = atcr.log_tail(&["--did", &alice.did, "--collection", "io.atcr.tag"]).await?;
    let api_tags: Vec<Value> =
        alice_events.iter().filter(|event| str_field(event, "collection") == Some("io.atcr.tag")).cloned().collect();
    ensure!(tags == api_tags, "`atcr log tail --collection io.atcr.tag` differs:\n{}", describe_events(&tags));
    let from = u64_field(records[records.len() - 3], "offset").unwrap();
    let tail_from = atcr.log_tail(&["--from", &from.to_string(), "--did", &alice.did]).await?;
    ensure!(
        tail_from.first().and_then(|event| u64_field(event, "offset")) >= Some(from)
            && tail_from.iter().all(|event| u64_field(event, "offset") >= Some(from)),
        "`atcr log tail --from {from}` printed earlier events:\n{}",
        describe_events(&tail_from)
    );
    let all = atcr.log_tail(&[]).await?;
    let offline_status = atcr.status_cli().await?;
    ensure!(
        offline_status["log"]["events"].as_u64() == Some(all.len() as u64),
        "`atcr status` says {} events, `atcr log tail` printed {}",
        offline_status["log"]["events"],
        all.len()
    );
    ensure!(
        offline_status["log"]["cursors"][pds_url].as_i64() >= cursor,
        "`atcr status` cursor {} is behind the API's {cursor:?}",
        offline_status["log"]["cursors"]
    );
    println!(
        "ok: {} record events + 1 identity event; {} events in the whole log; {:?} total",
        records.len(),
        all.len(),
        started.elapsed()
    );
    Ok(())
}
