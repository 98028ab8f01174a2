//! End to end against the reference PDS: a tag created and moved three times, then
//! - `atcr audit tag <handle>/<repo>:latest --json` lists the creation and the three moves in
//!   order, with the offsets, revs, CIDs and commits the PDS answered;
//! - `--offset N` and `--at T` return the digest that was current at each point (expected values
//!   computed from the recorded offsets and times);
//! - `atcr audit record` and `atcr audit repo` list the tag record's four versions and the
//!   repository's manifests and tag changes;
//! - the UI timeline (`/r/<handle>/<repo>/-/history`) shows the three moves in order, the JSON API
//!   agrees with the CLI, and the record viewer shows the four versions and a diff.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use support::{Account, Atcr, Pds, Written, image_manifest, manifest_record, tag_record};

/// The hold the manifests name; nothing listens there (resolution fails and is retried).
const HOLD: &str = "did:web:localhost%3A9";
const REPOSITORY: &str = "app";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_three_times_has_its_whole_history_in_the_cli_ui_and_api() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    let mut atcr = Atcr::new("audit-history", &pds_url, &support::plc_url(&pds_url), Some(0)).expect("a temp dir");
    if let Err(error) = scenario(&pds_url, &mut atcr).await {
        panic!("{error:#}");
    }
}

/// Publishes four manifests and points `latest` at each in turn; returns (digests, tag writes).
async fn publish(pds: &Pds, user: &Account) -> Result<(Vec<String>, Vec<Written>)> {
    let mut digests = Vec::new();
    for version in ["1", "2", "3", "4"] {
        let manifest = image_manifest(REPOSITORY, version, &user.did);
        let blob = pds.upload_blob(user, manifest.bytes.clone(), support::OCI_MANIFEST).await?;
        let record = manifest_record(REPOSITORY, &manifest, &blob, HOLD);
        pds.create_record(user, "io.atcr.manifest", Some(&manifest.hex), &record).await?;
        digests.push(manifest.hex);
    }
    let mut writes = Vec::new();
    for hex in &digests {
        let record = tag_record(&user.did, REPOSITORY, "latest", hex);
        writes.push(pds.put_record(user, "io.atcr.tag", &format!("{REPOSITORY}_latest"), &record).await?);
        // distinct commit times, so each move has its own "as of" instant
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    Ok((digests.iter().map(|hex| format!("sha256:{hex}")).collect(), writes))
}

/// `atcr audit tag <reference> --at|--offset <value> --json`: the digest it answers.
async fn as_of(atcr: &Atcr, reference: &str, data_dir: &str, flag: &str, value: String) -> Result<Value> {
    let answer = atcr.cli(&["audit", "tag", reference, flag, &value, "--json", "--data-dir", data_dir]).await?;
    let lines = json_lines(&answer)?;
    ensure!(lines.len() == 1, "one answer expected: {answer}");
    Ok(lines[0]["digest"].clone())
}

fn json_lines(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).with_context(|| format!("not a JSON line: {line}")))
        .collect()
}

fn u64_of(value: &Value, field: &str) -> Result<u64> {
    value[field].as_u64().with_context(|| format!("no {field} in {value}"))
}

fn str_of<'a>(value: &'a Value, field: &str) -> Result<&'a str> {
    value[field].as_str().with_context(|| format!("no {field} in {value}"))
}

async fn scenario(pds_url: &str, atcr: &mut Atcr) -> Result<()> {
    let pds = Pds::new(pds_url);
    let user = pds.create_account("ah").await?;
    println!("user {} {}", user.handle, user.did);
    let (digests, writes) = publish(&pds, &user).await?;

    atcr.start(Duration::from_secs(30)).await?;
    let data_dir = atcr.data_dir.to_string_lossy().into_owned();
    let handle = user.handle.as_str();
    let timeline_api = format!("/api/v1/tag-history/{handle}/{REPOSITORY}?tag=latest");

    // The views have the final state once the handle resolves and all four changes are there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let api_timeline = loop {
        let (status, body) = atcr.get(&timeline_api).await?;
        if status == 200 {
            let timeline: Value = serde_json::from_str(&body)?;
            if timeline["moves"].as_array().is_some_and(|moves| moves.len() == 4) {
                break timeline;
            }
        }
        if Instant::now() >= deadline {
            bail!("the views never held four changes of latest: HTTP {status}: {body}\n{}", atcr.output_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // --- the CLI, from the log ---------------------------------------------------------------
    let reference = format!("{handle}/{REPOSITORY}:latest");
    let moves = json_lines(&atcr.cli(&["audit", "tag", &reference, "--json", "--data-dir", &data_dir]).await?)?;
    ensure!(moves.len() == 4, "creation + three moves expected, got {moves:#?}");
    for (index, (change, written)) in moves.iter().zip(&writes).enumerate() {
        let expected_change = if index == 0 { "create" } else { "move" };
        ensure!(str_of(change, "change")? == expected_change, "#{index}: {change}");
        ensure!(str_of(change, "to")? == digests[index], "#{index} points at manifest {index}: {change}");
        let from = if index == 0 { Value::Null } else { Value::from(digests[index - 1].clone()) };
        ensure!(change["from"] == from, "#{index} comes from the previous digest: {change}");
        ensure!(str_of(change, "rev")? == written.rev, "#{index} rev: {change} vs {written:?}");
        ensure!(str_of(change, "cid")? == written.cid, "#{index} record CID: {change} vs {written:?}");
        ensure!(str_of(change, "commit_cid")? == written.commit_cid, "#{index} commit: {change} vs {written:?}");
        ensure!(change["upstream_seq"].is_i64() && change["time"].is_string(), "#{index}: {change}");
    }
    let offsets: Vec<u64> = moves.iter().map(|change| u64_of(change, "offset")).collect::<Result<_>>()?;
    ensure!(offsets.windows(2).all(|pair| pair[0] < pair[1]), "in log order: {offsets:?}");

    // As of each offset (and just before it), and as of each move's time.
    let as_of = |flag: &'static str, value: String| as_of(atcr, &reference, &data_dir, flag, value);
    for (index, offset) in offsets.iter().enumerate() {
        let expected = Value::from(digests[index].clone());
        ensure!(as_of("--offset", offset.to_string()).await? == expected, "as of offset {offset}");
        let before = if index == 0 { Value::Null } else { Value::from(digests[index - 1].clone()) };
        ensure!(as_of("--offset", (offset - 1).to_string()).await? == before, "just before offset {offset}");
        let time = str_of(&moves[index], "time")?.to_string();
        ensure!(as_of("--at", time.clone()).await? == expected, "as of {time}");
    }
    ensure!(as_of("--at", "2000-01-01T00:00:00Z".into()).await?.is_null(), "the tag did not exist in 2000");
    let human = atcr.cli(&["audit", "tag", &reference, "--data-dir", &data_dir]).await?;
    println!("atcr audit tag {reference}:\n{human}");
    let positions: Vec<usize> = digests
        .iter()
        .map(|digest| human.rfind(digest.as_str()).with_context(|| format!("{digest} not in the table:\n{human}")))
        .collect::<Result<_>>()?;
    ensure!(positions.windows(2).all(|pair| pair[0] < pair[1]), "table rows in order:\n{human}");

    let uri = format!("at://{}/io.atcr.tag/{REPOSITORY}_latest", user.did);
    let versions = json_lines(&atcr.cli(&["audit", "record", &uri, "--json", "--data-dir", &data_dir]).await?)?;
    let actions: Vec<&str> = versions.iter().map(|version| str_of(version, "action")).collect::<Result<_>>()?;
    ensure!(actions == ["create", "update", "update", "update"], "record versions: {versions:#?}");
    ensure!(versions[3]["record"]["tag"] == "latest", "versions carry the record: {}", versions[3]);
    let repository = format!("{handle}/{REPOSITORY}");
    let events = json_lines(&atcr.cli(&["audit", "repo", &repository, "--json", "--data-dir", &data_dir]).await?)?;
    let count = |what: &str| events.iter().filter(|event| event["what"] == what).count();
    ensure!(count("manifest") == 4 && count("tag") == 4, "repository history: {events:#?}");

    // --- the JSON API and the UI, from the views ----------------------------------------------
    let api_moves = api_timeline["moves"].as_array().context("moves")?;
    for (from_api, from_cli) in api_moves.iter().zip(&moves) {
        for field in ["offset", "change", "from", "to", "rev", "cid", "commit_cid", "time", "upstream_seq"] {
            ensure!(from_api[field] == from_cli[field], "API and CLI differ on {field}: {from_api} vs {from_cli}");
        }
    }
    let (status, page) = atcr.get(&format!("/r/{handle}/{REPOSITORY}/-/history")).await?;
    ensure!(status == 200, "history page: HTTP {status}: {page}");
    let positions: Vec<usize> = offsets
        .iter()
        .map(|offset| page.find(&format!("data-offset=\"{offset}\"")).with_context(|| format!("move {offset} missing")))
        .collect::<Result<_>>()?;
    ensure!(positions.windows(2).all(|pair| pair[0] < pair[1]), "the timeline is in order");
    for digest in &digests {
        ensure!(page.contains(&format!("/-/manifest/{digest}")), "the timeline links {digest}");
    }

    let viewer = format!("/at/{}/io.atcr.tag/{REPOSITORY}_latest", user.did);
    let (status, page) = atcr.get(&viewer).await?;
    ensure!(status == 200, "record viewer: HTTP {status}: {page}");
    for offset in &offsets {
        ensure!(page.contains(&format!("data-offset=\"{offset}\"")), "version {offset} listed");
    }
    ensure!(page.contains("<del>") && page.contains("<ins>"), "a diff between the last two versions");
    let record = atcr
        .get_json(&format!(
            "/api/v1/records/{}/io.atcr.tag/{REPOSITORY}_latest?diff={}..{}",
            user.did, offsets[0], offsets[3]
        ))
        .await?;
    ensure!(record["versions"].as_array().is_some_and(|versions| versions.len() == 4), "API versions: {record}");
    let changed = record["diff"]["lines"].as_array().context("diff lines")?.iter().filter(|line| line["op"] != "equal");
    ensure!(changed.count() >= 2, "the diff shows the moved manifest: {}", record["diff"]);
    let activity = atcr.get_json(&format!("/api/v1/users/{handle}/activity")).await?;
    ensure!(activity["entries"].as_array().is_some_and(|entries| entries.len() == 8), "activity: {activity}");
    Ok(())
}
