//! Crash safety against the reference PDS: while one writer makes a few hundred io.atcr.* writes,
//! atcr is `kill -9`ed at random-ish moments (also during startup) and restarted on the same
//! data dir. In the end the log must hold every write exactly once, in order, and agree with
//! what the PDS holds: the cursor is committed with the events it produced, so a crash neither
//! loses nor repeats anything.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use support::{
    Account, Atcr, Op, Pds, Rng, assert_same_ops, caught_up, is_record_event, now_datetime, profile_record,
    star_record, str_field,
};

const WRITES: usize = 220;
/// The writer paces itself to at least this long per write, so the stream lasts ≥ ~12 s.
const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(55);
const MIN_KILLS: usize = 5;
const COLLECTIONS: [&str; 3] = ["io.atcr.tag", "io.atcr.sailor.star", "io.atcr.sailor.profile"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_ingest_loses_and_repeats_nothing() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    let mut atcr = Atcr::new("crash", &pds_url, &support::plc_url(&pds_url), Some(0)).expect("a temp dir");
    if let Err(error) = scenario(&pds_url, &mut atcr).await {
        panic!("{error:#}");
    }
}

/// The writer: tags created, moved and deleted, stars given and taken back, the profile
/// rewritten. Returns the ops in the order the PDS committed them.
async fn write_stream(pds: Pds, user: Account, owner: Account, seed: u64, done: Arc<AtomicUsize>) -> Result<Vec<Op>> {
    let mut rng = Rng::new(seed);
    let mut ops = Vec::with_capacity(WRITES);
    let mut tags: Vec<(String, String)> = Vec::new(); // (rkey, cid) of live tags
    let mut stars: Vec<(String, String)> = Vec::new();
    let mut profile: Option<String> = None;
    for index in 0..WRITES {
        let began = Instant::now();
        let roll = rng.below(100);
        let op = if tags.is_empty() || roll < 35 {
            let rkey = format!("app_v{index}");
            let record = tag_record(&user.did, &rkey, index);
            Op::put(&pds.put_record(&user, "io.atcr.tag", &rkey, &record).await?, "create")
        } else if roll < 55 {
            let slot = rng.below(tags.len() as u64) as usize;
            let rkey = tags[slot].0.clone();
            let record = tag_record(&user.did, &rkey, index);
            Op::put(&pds.put_record(&user, "io.atcr.tag", &rkey, &record).await?, "update")
        } else if roll < 65 {
            let (rkey, cid) = tags.swap_remove(rng.below(tags.len() as u64) as usize);
            pds.delete_record(&user, "io.atcr.tag", &rkey).await?;
            Op::delete("io.atcr.tag", &rkey, &cid)
        } else if roll < 80 || (stars.is_empty() && roll < 90) {
            let record = star_record(&owner.did, &format!("repo{}", index % 7));
            Op::put(&pds.create_record(&user, "io.atcr.sailor.star", None, &record).await?, "create")
        } else if roll < 90 {
            let (rkey, cid) = stars.swap_remove(rng.below(stars.len() as u64) as usize);
            pds.delete_record(&user, "io.atcr.sailor.star", &rkey).await?;
            Op::delete("io.atcr.sailor.star", &rkey, &cid)
        } else {
            let mut record = profile_record("did:web:hold.e2e.invalid", "docker");
            record["updatedAt"] = json!(format!("{} #{index}", now_datetime())); // every version differs
            let action = if profile.is_some() { "update" } else { "create" };
            Op::put(&pds.put_record(&user, "io.atcr.sailor.profile", "self", &record).await?, action)
        };
        // keep the live sets in step
        if op.action != "delete" {
            let live = match op.collection.as_str() {
                "io.atcr.tag" => Some(&mut tags),
                "io.atcr.sailor.star" => Some(&mut stars),
                _ => None,
            };
            match live {
                Some(live) => match live.iter_mut().find(|(rkey, _)| *rkey == op.rkey) {
                    Some(entry) => entry.1 = op.cid.clone().unwrap(),
                    None => live.push((op.rkey.clone(), op.cid.clone().unwrap())),
                },
                None => profile = op.cid.clone(),
            }
        }
        ops.push(op);
        done.store(index + 1, Ordering::Relaxed);
        if let Some(rest) = MIN_WRITE_INTERVAL.checked_sub(began.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    Ok(ops)
}

fn tag_record(did: &str, rkey: &str, version: usize) -> Value {
    let hex = support::sha256_hex(format!("{did} {rkey} {version}").as_bytes());
    let mut record = support::tag_record(did, "app", rkey.trim_start_matches("app_"), &hex);
    record["updatedAt"] = json!(now_datetime());
    record
}

async fn scenario(pds_url: &str, atcr: &mut Atcr) -> Result<()> {
    let started = Instant::now();
    let pds = Pds::new(pds_url);
    let user = pds.create_account("cr").await?;
    let owner = pds.create_account("co").await?;
    let (mut rng, seed) = Rng::seeded_randomly();
    println!("writer {} {}; star target {}; seed {seed:#x}", user.handle, user.did, owner.did);

    atcr.start(Duration::from_secs(30)).await?;
    let done = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(write_stream(pds.clone(), user.clone(), owner.clone(), seed ^ 0x5eed, done.clone()));

    // --- the killer --------------------------------------------------------------------------
    let mut kills = 0;
    while !writer.is_finished() || kills < MIN_KILLS {
        // the second kill hits during startup (opening the log, resuming the stream)
        if kills == 1 {
            tokio::time::sleep(rng.millis_between(30, 250)).await;
        } else {
            atcr.wait_ready(Duration::from_secs(30)).await?;
            tokio::time::sleep(rng.millis_between(400, 2200)).await;
        }
        let pid = atcr.pid();
        let status = atcr.kill9().await?;
        kills += 1;
        println!(
            "{:>6.2}s kill -9 #{kills} (pid {pid:?}, {status}) after {} writes",
            started.elapsed().as_secs_f64(),
            done.load(Ordering::Relaxed)
        );
        atcr.spawn()?;
        if kills > 30 {
            bail!("the writer did not finish after 30 kills");
        }
    }
    let ops = writer.await.context("writer task")??;
    println!(
        "{:>6.2}s writer done: {} writes; last restart is run {}",
        started.elapsed().as_secs_f64(),
        ops.len(),
        atcr.runs
    );
    atcr.wait_ready(Duration::from_secs(30)).await?;

    // --- catch up ----------------------------------------------------------------------------
    let events = atcr
        .wait_for_events(&user.did, Duration::from_secs(45), "every write of the writer", |events| {
            caught_up(events, &ops)
        })
        .await?;
    println!("{:>6.2}s caught up", started.elapsed().as_secs_f64());
    let records: Vec<&Value> = events.iter().filter(|event| is_record_event(event)).collect();

    // --- no duplicates, no gaps, upstream order ---------------------------------------------
    let mut seen_puts = HashSet::new();
    let mut seen_deletes = HashSet::new();
    let mut last_seq = i64::MIN;
    for event in &records {
        let op = Op::of_event(event);
        let fresh = if op.action == "delete" { seen_deletes.insert(op.clone()) } else { seen_puts.insert(op.clone()) };
        ensure!(fresh, "{op} appears twice in the log (second at offset {})", event["offset"]);
        let seq = event["seq"].as_i64().with_context(|| format!("no seq: {event}"))?;
        ensure!(seq > last_seq, "seq {seq} after {last_seq} at offset {}: out of order or repeated", event["offset"]);
        last_seq = seq;
    }
    ensure!(
        records.len() == ops.len(),
        "{} record events for {} but {} successful writes",
        records.len(),
        user.did,
        ops.len()
    );
    let logged: Vec<Op> = records.iter().map(|event| Op::of_event(event)).collect();
    assert_same_ops(&ops, &logged, "after kill -9s");

    // --- the log's view agrees with the PDS ----------------------------------------------------
    let mut state: BTreeMap<(String, String), String> = BTreeMap::new();
    for op in &logged {
        let key = (op.collection.clone(), op.rkey.clone());
        if op.action == "delete" {
            ensure!(state.remove(&key) == op.cid, "{op}: the log deletes a record it does not hold at that CID");
        } else {
            state.insert(key, op.cid.clone().unwrap());
        }
    }
    let mut held = BTreeMap::new();
    for collection in COLLECTIONS {
        for record in pds.list_records(&user.did, collection).await? {
            held.insert((collection.to_string(), record.rkey), record.cid);
        }
    }
    for ((collection, rkey), cid) in &held {
        let put = records.iter().any(|event| {
            str_field(event, "collection") == Some(collection.as_str())
                && str_field(event, "rkey") == Some(rkey.as_str())
                && str_field(event, "cid") == Some(cid.as_str())
                && event["kind"] == "record_put"
        });
        ensure!(put, "the PDS holds {collection}/{rkey} at {cid}, the log has no put of that CID");
    }
    ensure!(state == held, "the log's latest state differs from the PDS's records:\n log: {state:?}\n pds: {held:?}");

    // --- nothing quarantined ------------------------------------------------------------------
    let status = atcr.status().await?;
    let quarantine = atcr.get_json("/api/v1/quarantine?limit=1000").await?;
    let ours: Vec<&Value> = quarantine
        .as_array()
        .map(|entries| entries.iter().filter(|entry| str_field(entry, "did") == Some(user.did.as_str())).collect())
        .unwrap_or_default();
    ensure!(ours.is_empty(), "quarantined frames of {}: {ours:?}", user.did);
    ensure!(
        status["log"]["quarantined"].as_u64() == Some(0),
        "the quarantine is not empty ({}): {quarantine}",
        status["log"]["quarantined"]
    );

    let exit = atcr.terminate(Duration::from_secs(20)).await?;
    ensure!(exit.success(), "atcr serve exited with {exit} on SIGTERM");
    println!(
        "ok: {} writes, {kills} kills, {} runs, {} live records, {:.2}s",
        ops.len(),
        atcr.runs,
        held.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
