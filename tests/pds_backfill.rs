//! End to end against the reference PDS: `atcr backfill` reaches exactly the state live ingest
//! builds, appends nothing when run again, and completes after being killed midway.
//!
//! Three users each write 20 `io.atcr.*` records (manifests with uploaded blobs, tags, repo
//! pages, a profile, stars of each other's repositories), then move tags, edit a README and delete
//! a tag, a star and a manifest, all BEFORE any atcr runs. Then:
//! - data dir "live": `atcr serve` from firehose cursor 0 (every intermediate version);
//! - data dir "backfill": `atcr backfill --pds` (only the repositories as they are now), run twice
//!   (the second run must append no event), then `atcr serve` from the live head so enrichment
//!   fetches DID documents and manifests like it did for "live";
//! - data dir "killed": `atcr backfill --pds` aborted (no cleanup, like SIGKILL) after its first
//!   finished account, then rerun: it resumes the job and completes;
//! - data dir "serve": `atcr serve --backfill-pds` from the live head while the users keep
//!   writing (tags moved, deleted, created): backfill and live ingest together reach the PDS's
//!   records.
//!
//! Comparison: the records each log holds per (collection, rkey) equal the PDS's own listRecords,
//! in all three logs; and the registry views rebuilt from the "live" and "backfill" logs agree on
//! every state view of our users (identities, repositories and their manifest counts, manifests,
//! tags, repository pages, profiles, stars and their counts, manifest content). History views
//! legitimately differ and are not compared: backfill never sees intermediate versions, so tag
//! history, record history, activity, first-seen times and the push-time rankings (and the log
//! offsets and upstream times inside state rows, which are normalized away) are not the same.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use atcr_ingest::backfill::LogState;
use atcr_projections::Views;
use atcr_storage::{EventBody, EventLog};
use support::{
    Account, Atcr, Pds, bsky_post, image_manifest, kind, manifest_record, profile_record, repo_page_record,
    star_record, tag_record,
};

/// The hold the manifests name: nothing listens on port 9 of loopback, so its resolution fails
/// (and is retried) the same way in both data dirs.
const HOLD: &str = "did:web:localhost%3A9";
const COLLECTIONS: [&str; 5] =
    ["io.atcr.manifest", "io.atcr.tag", "io.atcr.repo.page", "io.atcr.sailor.profile", "io.atcr.sailor.star"];

struct User {
    account: Account,
    /// Digests (hex) of the manifests still in the repo.
    live_manifests: Vec<String>,
    /// Record events the firehose carries for this user (creates, updates, deletes).
    firehose_ops: usize,
}

async fn upload_manifest(pds: &Pds, user: &mut User, repository: &str, version: &str) -> Result<String> {
    let manifest = image_manifest(repository, version, &user.account.did);
    let blob = pds.upload_blob(&user.account, manifest.bytes.clone(), support::OCI_MANIFEST).await?;
    let record = manifest_record(repository, &manifest, &blob, HOLD);
    pds.create_record(&user.account, "io.atcr.manifest", Some(&manifest.hex), &record).await?;
    user.firehose_ops += 1;
    Ok(manifest.hex)
}

/// 20 records per user, then updates and deletes. `others` are the other users' DIDs (stars).
async fn seed(pds: &Pds, user: &mut User, others: &[String]) -> Result<()> {
    let did = user.account.did.clone();
    let account = user.account.clone();
    // 5 manifests
    let web_1 = upload_manifest(pds, user, "web", "1.0.0").await?;
    let web_2 = upload_manifest(pds, user, "web", "2.0.0").await?;
    let web_3 = upload_manifest(pds, user, "web", "3.0.0-rc1").await?;
    let cli_1 = upload_manifest(pds, user, "cli", "0.9.0").await?;
    let cli_2 = upload_manifest(pds, user, "cli", "1.0.0").await?;
    // 8 tags
    for (repository, tag, hex) in [
        ("web", "latest", &web_1),
        ("web", "1.0.0", &web_1),
        ("web", "2.0.0", &web_2),
        ("web", "stable", &web_1),
        ("cli", "latest", &cli_1),
        ("cli", "0.9.0", &cli_1),
        ("cli", "1.0.0", &cli_2),
        ("cli", "edge", &cli_2),
    ] {
        let record = tag_record(&did, repository, tag, hex);
        pds.put_record(&account, "io.atcr.tag", &format!("{repository}_{tag}"), &record).await?;
        user.firehose_ops += 1;
    }
    // 2 repo pages, 1 profile
    for repository in ["web", "cli"] {
        let record = repo_page_record(repository, &format!("# {repository}\n\nBuilt for the backfill test."));
        pds.put_record(&account, "io.atcr.repo.page", repository, &record).await?;
        user.firehose_ops += 1;
    }
    pds.put_record(&account, "io.atcr.sailor.profile", "self", &profile_record(HOLD, "docker")).await?;
    user.firehose_ops += 1;
    // 4 stars: both repositories of both other users
    let mut stars = Vec::new();
    for other in others {
        for repository in ["web", "cli"] {
            let written =
                pds.create_record(&account, "io.atcr.sailor.star", None, &star_record(other, repository)).await?;
            stars.push(written.rkey);
            user.firehose_ops += 1;
        }
    }
    // a post of the same user: never in the log
    pds.create_record(&account, "app.bsky.feed.post", None, &bsky_post("shipping web 2.0.0")).await?;

    // updates: tags move, a README changes
    for (tag, hex) in [("latest", &web_2), ("stable", &web_2)] {
        pds.put_record(&account, "io.atcr.tag", &format!("web_{tag}"), &tag_record(&did, "web", tag, hex)).await?;
        user.firehose_ops += 1;
    }
    let record = repo_page_record("web", "# web\n\nNow with a changelog: 2.0.0 is stable.");
    pds.put_record(&account, "io.atcr.repo.page", "web", &record).await?;
    user.firehose_ops += 1;
    // deletes: a tag, a star, a manifest nobody tags
    pds.delete_record(&account, "io.atcr.tag", "cli_edge").await?;
    pds.delete_record(&account, "io.atcr.sailor.star", &stars[0]).await?;
    pds.delete_record(&account, "io.atcr.manifest", &web_3).await?;
    user.firehose_ops += 3;
    user.live_manifests = vec![web_1, web_2, cli_1, cli_2];
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_reaches_the_state_live_ingest_builds_once_and_resumably() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    if let Err(error) = scenario(&pds_url).await {
        panic!("{error:#}");
    }
}

async fn scenario(pds_url: &str) -> Result<()> {
    let started = Instant::now();
    let plc = support::plc_url(pds_url);
    let pds = Pds::new(pds_url);
    let mut users = Vec::new();
    for prefix in ["bfa", "bfb", "bfc"] {
        let account = pds.create_account(prefix).await?;
        users.push(User { account, live_manifests: Vec::new(), firehose_ops: 0 });
    }
    let dids: Vec<String> = users.iter().map(|user| user.account.did.clone()).collect();
    for index in 0..users.len() {
        let others: Vec<String> = dids.iter().filter(|did| **did != dids[index]).cloned().collect();
        seed(&pds, &mut users[index], &others).await?;
    }
    println!("seeded 3 users x 20 records (+ updates, deletes) in {:?}: {dids:?}", started.elapsed());

    // The truth: what the PDS holds now.
    let truth = pds_records(&pds, &dids).await?;
    for (did, records) in &truth {
        ensure!(records.len() == 17, "{did}: the PDS holds {} io.atcr records, expected 20 - 3 deleted", records.len());
    }

    // --- live: serve from cursor 0 --------------------------------------------------------
    let mut live = Atcr::new("bf-live", pds_url, &plc, Some(0))?;
    live.start(Duration::from_secs(30)).await?;
    for user in &users {
        wait_until_enriched(&mut live, user, Some(user.firehose_ops)).await?;
    }
    let exit = live.terminate(Duration::from_secs(20)).await?;
    ensure!(exit.success(), "live serve exited with {exit}");
    println!("live ingest caught up and enriched after {:?}", started.elapsed());

    // --- backfill: twice, then serve for enrichment ----------------------------------------
    let mut backfilled = Atcr::new("bf-backfill", pds_url, &plc, None)?;
    let first = backfill(&backfilled, pds_url, &plc, &[]).await?;
    println!("{}", first.trim());
    let after_first = events_in(&backfilled.data_dir)?;
    ensure!(first.contains("job finished"), "the first backfill did not finish its job:\n{first}");
    let second = backfill(&backfilled, pds_url, &plc, &[]).await?;
    println!("{}", second.trim());
    let after_second = events_in(&backfilled.data_dir)?;
    ensure!(
        after_second == after_first,
        "the second backfill appended {} events (log: {after_first} -> {after_second}):\n{second}",
        after_second - after_first
    );
    ensure!(second.contains(" 0 events appended"), "the second run reports appending:\n{second}");
    backfilled.start(Duration::from_secs(30)).await?;
    for user in &users {
        wait_until_enriched(&mut backfilled, user, None).await?;
    }
    let exit = backfilled.terminate(Duration::from_secs(20)).await?;
    ensure!(exit.success(), "serve on the backfilled dir exited with {exit}");

    // --- killed midway, then rerun ----------------------------------------------------------
    let killed = Atcr::new("bf-killed", pds_url, &plc, None)?;
    let aborted = run_backfill(&killed, pds_url, &plc, &[("--concurrency", "1")], Some(1))?;
    ensure!(!aborted.0, "the backfill with the abort hook exited successfully:\n{}", aborted.1);
    // The aborted process left the log unclosed: a read-only open may refuse it until the next
    // writer repairs it, which the rerun does.
    let partial = events_in(&killed.data_dir).map_or_else(|error| format!("unreadable: {error}"), |n| n.to_string());
    let resumed = backfill(&killed, pds_url, &plc, &[("--concurrency", "1")]).await?;
    println!("after an abort ({partial} events then): {}", resumed.trim());
    let already_done = number_before(&resumed, " already done by this job")
        .with_context(|| format!("the rerun does not say how many accounts were already done:\n{resumed}"))?;
    ensure!(already_done >= 1, "the rerun did not resume the aborted job:\n{resumed}");

    // --- every log holds exactly the PDS's records for our users ---------------------------
    for (name, atcr) in [("live", &live), ("backfill", &backfilled), ("killed+rerun", &killed)] {
        let state = log_state(&atcr.data_dir)?;
        for (did, records) in &truth {
            let held = state.did(did).map(|held| held.records.clone()).unwrap_or_default();
            ensure!(
                &held == records,
                "{name}: the log's records of {did} differ from the PDS's:\n  log: {held:?}\n  pds: {records:?}"
            );
        }
    }
    let backfill_log = EventLog::open_read_only(&backfilled.data_dir.join("log.redb"))?;
    for stored in backfill_log.read_from(0, usize::MAX)? {
        let event = &stored.event;
        if dids.contains(&event.did) && event.body.collection().is_some() {
            ensure!(event.source == atcr_storage::Source::Backfill, "a non-backfill record event: {event:?}");
            let commit = event.commit_cid.as_deref().context("a backfill event without its commit")?;
            ensure!(backfill_log.commit_block(commit)?.is_some(), "commit block {commit} not kept");
        }
    }

    // --- the state views agree ----------------------------------------------------------------
    let scratch = tempfile::tempdir()?;
    let live_views = rebuild_views(&live.data_dir, &scratch.path().join("live.redb"))?;
    let backfill_views = rebuild_views(&backfilled.data_dir, &scratch.path().join("backfill.redb"))?;
    let mut compared = 0;
    for user in &users {
        let did = &user.account.did;
        let (a, b) = (state_of(&live_views, did, user)?, state_of(&backfill_views, did, user)?);
        for (view, live_rows) in &a {
            let backfill_rows = b.get(view).map(String::as_str).unwrap_or("(missing)");
            ensure!(
                live_rows == backfill_rows,
                "{did}: view {view} differs\n  live ingest: {live_rows}\n  backfill:    {backfill_rows}"
            );
            compared += 1;
        }
    }
    // --- backfill inside serve, while live ingest runs and the users keep writing --------------
    // Live ingest resumes where the "live" dir stopped (nothing of our users happened since), so
    // the writes below reach it however long its connection takes; the backfill runs meanwhile.
    let resume_at = EventLog::open_read_only(&live.data_dir.join("log.redb"))?
        .cursor(pds_url)?
        .with_context(|| format!("the live dir has no cursor for {pds_url}"))?;
    let mut serving = Atcr::new("bf-serve", pds_url, &plc, Some(resume_at))?;
    serving.extra_args = vec!["--backfill-pds".into(), pds_url.to_string()];
    serving.start(Duration::from_secs(30)).await?;
    for user in &users {
        let (account, did) = (&user.account, &user.account.did);
        let hex = &user.live_manifests[0];
        pds.put_record(account, "io.atcr.tag", "web_latest", &tag_record(did, "web", "latest", hex)).await?;
        pds.delete_record(account, "io.atcr.tag", "web_1.0.0").await?;
        pds.put_record(account, "io.atcr.tag", "cli_next", &tag_record(did, "cli", "next", hex)).await?;
    }
    let truth = pds_records(&pds, &dids).await?;
    // The CLI does not write a log serve owns: it says so and points at the serve flags.
    let (succeeded, output) = run_backfill(&serving, pds_url, &plc, &[], None)?;
    ensure!(
        !succeeded && output.contains("open for writing by another process") && output.contains("--backfill-pds"),
        "`atcr backfill` on a data dir serve owns did not refuse clearly:\n{output}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state = log_state(&serving.data_dir)?;
        let differing: Vec<&String> = truth
            .iter()
            .filter(|(did, records)| state.did(did).map(|held| &held.records) != Some(*records))
            .map(|(did, _)| did)
            .collect();
        if differing.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "serve with --backfill-pds did not reach the PDS's records of {differing:?}; output:\n{}",
            serving.output_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let exit = serving.terminate(Duration::from_secs(20)).await?;
    ensure!(exit.success(), "serve with --backfill-pds exited with {exit}");
    let serve_log = EventLog::open_read_only(&serving.data_dir.join("log.redb"))?;
    let sources: Vec<&str> = serve_log
        .read_from(0, usize::MAX)?
        .iter()
        .filter(|stored| dids.contains(&stored.event.did) && stored.event.body.collection().is_some())
        .map(|stored| stored.event.source.as_str())
        .collect();
    let mut by_rev: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    // The record CID each put put (the views' record history keeps the offsets).
    let mut cids: BTreeMap<u64, String> = BTreeMap::new();
    for stored in serve_log.read_from(0, usize::MAX)? {
        if let EventBody::RecordPut { cid, .. } = &stored.event.body {
            cids.insert(stored.offset, cid.clone());
        }
        let event = &stored.event;
        if dids.contains(&event.did) && event.body.collection().is_some() {
            let key = (event.did.clone(), event.source.as_str().to_string(), event.rev.clone().unwrap_or_default());
            *by_rev.entry(key).or_default() += 1;
        }
    }
    for ((did, source, rev), count) in &by_rev {
        println!("  {did} {source} rev {rev}: {count} record events");
    }
    // A firehose commit the backfill already covered (same rev, or older) never applies: no
    // record's history shows the same version twice in a row.
    drop(serve_log);
    let serve_views = rebuild_views(&serving.data_dir, &scratch.path().join("serve.redb"))?;
    for (did, records) in &truth {
        for (collection, rkey) in records.keys() {
            let history: Vec<Option<&String>> =
                serve_views.record_history(did, collection, rkey)?.iter().map(|offset| cids.get(offset)).collect();
            let repeated = history.windows(2).find(|pair| pair[0] == pair[1]);
            ensure!(
                repeated.is_none(),
                "{did} {collection}/{rkey}: a version applied twice (serve --backfill-pds): {history:?}"
            );
        }
    }
    println!(
        "serve --backfill-pds: {} backfill and {} firehose record events for our users",
        sources.iter().filter(|source| **source == "backfill").count(),
        sources.iter().filter(|source| **source == "firehose").count()
    );

    println!(
        "ok: {compared} state views of 3 users equal between live ingest and backfill; logs: backfill {after_first} events, \
         rerun +0; {:?} total",
        started.elapsed()
    );
    Ok(())
}

/// Waits until the user's records (all `expected_records` firehose ops, or, after a backfill, any)
/// are in the log, their DID document was resolved and every live manifest was fetched.
async fn wait_until_enriched(atcr: &mut Atcr, user: &User, expected_records: Option<usize>) -> Result<()> {
    let did = user.account.did.clone();
    let digests: Vec<String> = user.live_manifests.iter().map(|hex| format!("sha256:{hex}")).collect();
    atcr.wait_for_events(&did, Duration::from_secs(60), "records, identity and manifests", |events| {
        let records = events.iter().filter(|event| support::is_record_event(event)).count();
        let resolved = events.iter().any(|event| kind(event) == "identity_resolved");
        let stored = digests.iter().all(|digest| {
            events.iter().any(|event| kind(event) == "manifest_stored" && event["digest"] == digest.as_str())
        });
        expected_records.map_or(records > 0, |expected| records >= expected) && resolved && stored
    })
    .await?;
    Ok(())
}

/// `atcr backfill --pds URL` on the data dir; its stdout. Fails unless it exits 0.
async fn backfill(atcr: &Atcr, pds_url: &str, plc: &str, extra: &[(&str, &str)]) -> Result<String> {
    let data_dir = atcr.data_dir.to_string_lossy().into_owned();
    let mut args = vec![
        "backfill",
        "--data-dir",
        data_dir.as_str(),
        "--pds",
        pds_url,
        "--plc-directory",
        plc,
        "--dev-allow-loopback",
    ];
    for (flag, value) in extra {
        args.push(flag);
        args.push(value);
    }
    atcr.cli(&args).await
}

/// Runs `atcr backfill --pds` with the abort hook; (exited successfully, stdout + stderr).
fn run_backfill(
    atcr: &Atcr,
    pds_url: &str,
    plc: &str,
    extra: &[(&str, &str)],
    abort_after: Option<usize>,
) -> Result<(bool, String)> {
    let mut command = Command::new(support::ATCR_BIN);
    command
        .args(["backfill", "--pds", pds_url, "--plc-directory", plc, "--dev-allow-loopback", "--data-dir"])
        .arg(&atcr.data_dir)
        .env_remove("ATCR_DATA_DIR")
        .env_remove("ATCR_PLC_DIRECTORY")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (flag, value) in extra {
        command.args([flag, value]);
    }
    if let Some(count) = abort_after {
        command.env("ATCR_TEST_BACKFILL_ABORT_AFTER_DIDS", count.to_string());
    }
    let output = command.output().context("running atcr backfill")?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

/// Every `io.atcr.*` record of the users as the PDS lists them: (collection, rkey) → CID.
async fn pds_records(pds: &Pds, dids: &[String]) -> Result<BTreeMap<String, BTreeMap<(String, String), String>>> {
    let mut truth: BTreeMap<String, BTreeMap<(String, String), String>> = BTreeMap::new();
    for did in dids {
        let records = truth.entry(did.clone()).or_default();
        for collection in COLLECTIONS {
            for listed in pds.list_records(did, collection).await? {
                records.insert((collection.to_string(), listed.rkey), listed.cid);
            }
        }
    }
    Ok(truth)
}

fn events_in(data_dir: &Path) -> Result<u64> {
    Ok(EventLog::open_read_only(&data_dir.join("log.redb"))?.next_offset()?)
}

fn log_state(data_dir: &Path) -> Result<LogState> {
    let log = EventLog::open_read_only(&data_dir.join("log.redb"))?;
    let mut state = LogState::new();
    state.catch_up(&log)?;
    Ok(state)
}

/// The registry views of a data dir's whole log, built by the projection code into `path`.
fn rebuild_views(data_dir: &Path, path: &Path) -> Result<Views> {
    let log = EventLog::open_read_only(&data_dir.join("log.redb"))?;
    let until = log.next_offset()?;
    Ok(atcr_projections::rebuild::rebuild(&log, path, until, &mut |_| {})?)
}

/// The number written right before `marker` in `text` ("…, 1 already done by this job, …").
fn number_before(text: &str, marker: &str) -> Option<u64> {
    let head = &text[..text.find(marker)?];
    head.rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// Every state view of one user, rendered for comparison, by view name. Log offsets and upstream
/// times inside rows are left out: they say when atcr learned a fact, not what the state is.
fn state_of(views: &Views, did: &str, user: &User) -> Result<BTreeMap<String, String>> {
    let mut state = BTreeMap::new();
    state.insert("identities".to_string(), format!("{:?}", views.identity(did)?));
    state.insert("profiles".to_string(), format!("{:?}", views.profile(did)?));
    let repositories = views.repositories_of(did)?;
    let names: Vec<(String, u64)> = repositories.iter().map(|(name, row)| (name.clone(), row.manifests)).collect();
    state.insert("repositories (name, manifest count)".to_string(), format!("{names:?}"));
    for (repository, _) in &repositories {
        let manifests: Vec<_> = views
            .repository_manifests(did, repository)?
            .into_iter()
            .map(|(digest, mut row)| {
                row.offset = 0;
                (digest, row)
            })
            .collect();
        state.insert(format!("manifests {repository}"), format!("{manifests:?}"));
        let tags: Vec<_> = views
            .tag_rows(did, repository)?
            .into_iter()
            .map(|(tag, mut row)| {
                row.offset = 0;
                row.pushed_at = None;
                (tag, row)
            })
            .collect();
        state.insert(format!("tags {repository}"), format!("{tags:?}"));
        state.insert(format!("repo_pages {repository}"), format!("{:?}", views.page(did, repository)?));
        state.insert(format!("star_counts {repository}"), format!("{}", views.star_count(did, repository)?));
        state.insert(format!("stars {repository}"), format!("{:?}", views.stargazers(did, repository)?));
    }
    for hex in &user.live_manifests {
        let digest = format!("sha256:{hex}");
        state.insert(format!("manifest_content {digest}"), format!("{:?}", views.manifest_content(&digest)?));
    }
    ensure!(repositories.len() == 2, "{did}: {} repositories in the views, expected web and cli", repositories.len());
    Ok(state)
}
