//! End to end against the reference PDS: a hold account publishes its captain, crew (2), a layer
//! and stats records (plus malformed ones); an owner publishes a manifest naming that hold. atcr
//! ingests them: the hold page and its JSON show the exact owner, access, region, crew count,
//! repositories and counters. Pulling the manifest through atcr's `/v2` N times raises atcr's
//! own pull count by exactly N, and the count survives a restart. In headless chromium (when
//! installed) the hold page and the repository's chart load cleanly and are screenshotted.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use support::{Atcr, Pds, image_manifest, manifest_record, now_datetime, tag_record};

const REPOSITORY: &str = "app";
const REGION: &str = "eu-test-1";
const HOLD_PULLS: u64 = 42;
const HOLD_PUSHES: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_records_pages_and_pull_counts() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    let mut atcr = Atcr::new("holds", &pds_url, &support::plc_url(&pds_url), Some(0)).expect("a temp dir");
    if let Err(error) = scenario(&pds_url, &mut atcr).await {
        panic!("{error:#}\natcr output:\n{}", atcr.output_tail(60));
    }
}

/// Polls `check` until it returns `Some`, or fails with the last reason after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<std::result::Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await? {
            Ok(value) => return Ok(value),
            Err(reason) if Instant::now() >= deadline => bail!("{what}: not after {timeout:?}: {reason}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn atcr_pulls(atcr: &Atcr, did: &str) -> Result<u64> {
    let stats = atcr.get_json(&format!("/api/v1/repository-stats/{did}/{REPOSITORY}")).await?;
    stats["atcr_pulls"].as_u64().with_context(|| format!("no atcr_pulls in {stats}"))
}

/// Pulls the manifest `count` times (GET, by the names given in turn) and checks each is a 200.
async fn pull(atcr: &Atcr, names: &[String], count: usize) -> Result<()> {
    for index in 0..count {
        let name = &names[index % names.len()];
        let (status, body) = atcr.get(&format!("/v2/{name}/manifests/latest")).await?;
        ensure!(status == 200, "GET /v2/{name}/manifests/latest: HTTP {status}: {body}");
    }
    Ok(())
}

/// Waits until atcr's pull count is `expected`, then checks it stays there (no late extras).
async fn expect_pulls(atcr: &Atcr, did: &str, expected: u64) -> Result<()> {
    eventually("atcr's pull count", Duration::from_secs(10), || async {
        let pulls = atcr_pulls(atcr, did).await?;
        Ok(if pulls == expected { Ok(()) } else { Err(format!("{pulls} pulls")) })
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pulls = atcr_pulls(atcr, did).await?;
    ensure!(pulls == expected, "pull count moved on to {pulls} after reaching {expected}");
    Ok(())
}

async fn scenario(pds_url: &str, atcr: &mut Atcr) -> Result<()> {
    let pds = Pds::new(pds_url);
    let hold = pds.create_account("hh").await?;
    let alice = pds.create_account("ha").await?;
    let bob = pds.create_account("hb").await?;
    println!("hold {} {}\nalice {} {}\nbob {} {}", hold.handle, hold.did, alice.handle, alice.did, bob.handle, bob.did);

    // --- the hold's own records --------------------------------------------------------------
    let captain = json!({
        "$type": "io.atcr.hold.captain", "owner": alice.did, "public": true, "region": REGION,
        "successor": "did:web:next-hold.test", "deployedAt": now_datetime(), "allowAllCrew": false,
        "enableBlueskyPosts": false,
    });
    pds.put_record(&hold, "io.atcr.hold.captain", "self", &captain).await?;
    let crew = [
        json!({ "$type": "io.atcr.hold.crew", "member": alice.did, "role": "owner", "permissions": ["blob:read", "blob:write", "crew:admin"], "tier": "quartermaster", "addedAt": now_datetime() }),
        // the earliest crew shape: no tier
        json!({ "$type": "io.atcr.hold.crew", "member": bob.did, "role": "write", "permissions": ["blob:write"], "addedAt": now_datetime() }),
    ];
    for (index, record) in crew.iter().enumerate() {
        pds.put_record(&hold, "io.atcr.hold.crew", &format!("crew{index}"), record).await?;
    }
    let manifest = image_manifest(REPOSITORY, "1.0.0", &alice.did);
    let layer = &manifest.layers[0];
    pds.create_record(
        &hold,
        "io.atcr.hold.layer",
        None,
        &json!({ "$type": "io.atcr.hold.layer", "digest": layer["digest"], "size": layer["size"],
                 "mediaType": layer["mediaType"], "manifest": format!("at://{}/io.atcr.manifest/{}", alice.did, manifest.hex),
                 "userDid": alice.did, "createdAt": now_datetime() }),
    )
    .await?;
    let stats = json!({
        "$type": "io.atcr.hold.stats", "ownerDid": alice.did, "repository": REPOSITORY,
        "pullCount": HOLD_PULLS, "pushCount": HOLD_PUSHES, "lastPull": now_datetime(), "lastPush": now_datetime(),
        "updatedAt": now_datetime(),
    });
    pds.put_record(&hold, "io.atcr.hold.stats", "statsapp", &stats).await?;
    // malformed hold records: skipped with a reason, never counted, never a broken page
    pds.put_record(&hold, "io.atcr.hold.crew", "broken", &json!({ "member": "not a did", "role": 7 })).await?;
    pds.put_record(
        &hold,
        "io.atcr.hold.stats",
        "broken",
        &json!({ "ownerDid": alice.did, "repository": REPOSITORY, "pullCount": -5 }),
    )
    .await?;
    pds.create_record(
        &hold,
        "io.atcr.hold.layer",
        None,
        &json!({ "digest": "sha256:../../etc/passwd", "size": "big" }),
    )
    .await?;

    // --- the owner's image, naming the hold --------------------------------------------------
    let blob = pds.upload_blob(&alice, manifest.bytes.clone(), support::OCI_MANIFEST).await?;
    let record = manifest_record(REPOSITORY, &manifest, &blob, &hold.did);
    pds.create_record(&alice, "io.atcr.manifest", Some(&manifest.hex), &record).await?;
    let tag = tag_record(&alice.did, REPOSITORY, "latest", &manifest.hex);
    pds.put_record(&alice, "io.atcr.tag", &format!("{REPOSITORY}_latest"), &tag).await?;

    atcr.start(Duration::from_secs(30)).await?;
    println!("atcr serve ready on {}", atcr.base_url());

    // --- the hold as atcr shows it -----------------------------------------------------------
    let hold_path = format!("/api/v1/holds/{}", hold.did);
    let page = eventually("the hold's records and the manifest naming it", Duration::from_secs(30), || async {
        let (status, body) = atcr.get(&hold_path).await?;
        if status != 200 {
            return Ok(Err(format!("HTTP {status}: {body}")));
        }
        let page: Value = serde_json::from_str(&body)?;
        let ready = page["crew_count"] == 2
            && page["repositories"].as_array().is_some_and(|repositories| repositories.len() == 1)
            && page["pulls"] == HOLD_PULLS
            && page["layer_count"] == 1
            && page["owner_handle"] == alice.handle.as_str();
        Ok(if ready { Ok(page) } else { Err(page.to_string()) })
    })
    .await?;
    ensure!(page["owner"] == alice.did.as_str(), "owner: {}", page["owner"]);
    ensure!(page["public"] == true, "public: {}", page["public"]);
    ensure!(page["region"] == REGION, "region: {}", page["region"]);
    ensure!(page["successor"] == "did:web:next-hold.test", "successor: {}", page["successor"]);
    ensure!(page["pushes"] == HOLD_PUSHES, "pushes: {}", page["pushes"]);
    ensure!(page["layer_bytes"] == layer["size"], "layer bytes: {} vs {}", page["layer_bytes"], layer["size"]);
    let repository = &page["repositories"][0];
    ensure!(
        repository["did"] == alice.did.as_str()
            && repository["repository"] == REPOSITORY
            && repository["manifests"] == 1
            && repository["pulls"] == HOLD_PULLS
            && repository["pushes"] == HOLD_PUSHES,
        "repository using the hold: {repository}"
    );
    let members: Vec<&str> =
        page["crew"].as_array().unwrap().iter().filter_map(|member| member["did"].as_str()).collect();
    ensure!(members == [alice.did.as_str(), bob.did.as_str()], "crew: {members:?}");
    let directory = atcr.get_json("/api/v1/holds").await?;
    let listed = directory
        .as_array()
        .and_then(|holds| holds.iter().find(|card| card["did"] == hold.did.as_str()))
        .with_context(|| format!("hold missing from /api/v1/holds: {directory}"))?;
    ensure!(listed["crew_count"] == 2 && listed["repository_count"] == 1 && listed["public"] == true, "{listed}");

    let (status, html) = atcr.get(&format!("/holds/{}", hold.did)).await?;
    ensure!(status == 200, "hold page: HTTP {status}");
    for expected in [REGION, alice.handle.as_str(), "public", "/holds/did:web:next-hold.test", "quartermaster"] {
        ensure!(html.contains(expected), "hold page lacks {expected:?}");
    }
    ensure!(html.contains(r#"id="hold-crew-count">2<"#), "hold page crew count is not 2");
    let (status, html) = atcr.get("/holds").await?;
    ensure!(status == 200 && html.contains(&hold.did), "the directory lists the hold (HTTP {status})");

    // --- pulls through atcr's /v2 ------------------------------------------------------------
    let names = vec![format!("{}/{REPOSITORY}", alice.handle), format!("{}/{REPOSITORY}", alice.did)];
    eventually("the manifest is pullable", Duration::from_secs(30), || async {
        let (status, body) = atcr.get(&format!("/v2/{}/manifests/latest", names[0])).await?;
        Ok(if status == 200 { Ok(()) } else { Err(format!("HTTP {status}: {body}")) })
    })
    .await?;
    // the probe above was a pull too
    expect_pulls(atcr, &alice.did, 1).await?;
    pull(atcr, &names, 5).await?;
    // a HEAD is not a pull, nor is a manifest that does not exist
    let head = reqwest::Client::new()
        .head(format!("{}/v2/{}/manifests/latest", atcr.base_url(), names[1]))
        .send()
        .await?
        .status();
    ensure!(head.is_success(), "HEAD: {head}");
    let (status, _) = atcr.get(&format!("/v2/{}/manifests/nope", names[1])).await?;
    ensure!(status == 404, "unknown tag: HTTP {status}");
    expect_pulls(atcr, &alice.did, 6).await?;

    let stats = atcr.get_json(&format!("/api/v1/repository-stats/{}/{REPOSITORY}", alice.did)).await?;
    ensure!(stats["hold_pulls"] == HOLD_PULLS && stats["hold_pushes"] == HOLD_PUSHES, "hold counters: {stats}");
    let today: u64 =
        stats["atcr_daily"].as_array().and_then(|days| days.last()).and_then(|day| day["pulls"].as_u64()).unwrap_or(0);
    ensure!(today == 6, "today's pulls in the daily series: {today} ({stats})");
    let (status, badge) = atcr.get(&format!("/r/{}/{REPOSITORY}/-/badge/pulls.svg", alice.handle)).await?;
    ensure!(status == 200 && badge.contains(&format!("{}", 6 + HOLD_PULLS)), "pulls badge (HTTP {status}): {badge}");
    let (status, html) = atcr.get(&format!("/r/{}/{REPOSITORY}", alice.handle)).await?;
    ensure!(status == 200 && html.contains("atcr-pull-chart") && html.contains("<svg"), "repository chart");
    ensure!(html.contains(r#"id="atcr-pulls">6<"#), "repository page shows 6 pulls via atcr");
    ensure!(html.contains(&format!(r#"href="/holds/{}""#, hold.did)), "the repository page links its hold");
    let (status, html) = atcr.get(&format!("/r/{}/{REPOSITORY}/-/tag/latest", alice.handle)).await?;
    ensure!(status == 200 && html.contains(&format!("/holds/{}", hold.did)), "the manifest page links the hold");
    let (status, html) = atcr.get("/").await?;
    ensure!(status == 200 && html.contains("Most pulled") && html.contains("Trending this week"), "home lists");

    // --- the count survives a restart, and goes on exactly ---------------------------------
    atcr.terminate(Duration::from_secs(20)).await?;
    atcr.start(Duration::from_secs(30)).await?;
    expect_pulls(atcr, &alice.did, 6).await?;
    eventually("the manifest is pullable after the restart", Duration::from_secs(30), || async {
        let (status, body) = atcr.get(&format!("/v2/{}/manifests/latest", names[1])).await?;
        Ok(if status == 200 { Ok(()) } else { Err(format!("HTTP {status}: {body}")) })
    })
    .await?;
    pull(atcr, &names, 3).await?;
    expect_pulls(atcr, &alice.did, 10).await?;

    browser_check(atcr, &hold.did, &alice.handle)?;
    atcr.terminate(Duration::from_secs(20)).await?;
    Ok(())
}

/// The hold page and the repository chart in headless chromium: they load with no console
/// error and no axe violation, show the facts, and are saved as screenshots.
fn browser_check(atcr: &Atcr, hold: &str, owner: &str) -> Result<()> {
    let pages = [
        format!("hold-page|/holds/{hold}|#hold-facts|{REGION}"),
        format!("hold-directory|/holds|#holds|{hold}"),
        format!("repository-chart|/r/{owner}/{REPOSITORY}|#analytics|Pulls via atcr"),
    ];
    support::check_pages_in_browser(&atcr.base_url(), "holds", &pages)
}
