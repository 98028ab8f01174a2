//! `atcr bench freshness`: how long a repository takes from its events' append to the log until
//! `/api/v1/search` finds it (issue 4: p99 under a second).
//!
//! The log has a single writer, so a separate process cannot append while a server runs. The
//! benchmark therefore starts the whole server in-process ([`crate::serve::start`]: HTTP, the
//! projection runner with its search index, enrichment) on a copy of a data directory, appends
//! each sample's events through the same log, and asks the HTTP API on loopback, like a user
//! would, until the new repository shows up. The copy keeps the source directory (usually the
//! cached 100,000-repository world of `fixtures/bench/ui-bench.sh`) untouched.
//!
//! Enrichment runs with a fetcher that refuses everything: the benchmark account has no DID
//! document anywhere, and nothing may leave the machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;

use atcr_gen::encoding::{dag_cbor, sha256_hex};
use atcr_ingest::enrich::{FetchError, Fetcher};
use atcr_storage::{AppendBatch, Event, EventBody, PutAction, Source};

use crate::config::Config;

/// The account every sample is pushed by; it exists in no generated world.
const BENCH_DID: &str = "did:plc:benchfreshness00000000000";
const BENCH_HANDLE: &str = "freshness.bench.test";
const MANIFEST: &str = "io.atcr.manifest";
const TAG: &str = "io.atcr.tag";
const IMAGE_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// How often the search API is asked while waiting for a sample.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Args)]
pub struct FreshnessArgs {
    /// Data directory to copy (its `log.redb` and `views/`; the original is only read).
    #[arg(long, value_name = "DIR", conflicts_with = "in_place", required_unless_present = "in_place")]
    copy_of: Option<PathBuf>,
    /// Data directory to run on as it is, when there is no room for a copy: the benchmark's
    /// repositories (`freshness-*` of `freshness.bench.test`) stay in its log.
    #[arg(long, value_name = "DIR")]
    in_place: Option<PathBuf>,
    /// Repositories pushed, one at a time.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Time from one push to the next (a sample that takes longer is followed at once).
    #[arg(long, default_value_t = 75)]
    interval_ms: u64,
    /// A sample not found after this many milliseconds counts as failed.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// Enrichment's fetcher for the benchmark: nothing is fetched, from anywhere.
struct OfflineFetcher;

impl Fetcher for OfflineFetcher {
    async fn did_document(&self, did: &str) -> Result<String, FetchError> {
        Err(FetchError::Policy(format!("offline benchmark: no DID document for {did}")))
    }

    async fn blob(&self, _pds: &str, _did: &str, cid: &str) -> Result<Vec<u8>, FetchError> {
        Err(FetchError::Policy(format!("offline benchmark: no blob {cid}")))
    }
}

pub async fn bench_freshness(args: FreshnessArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.samples > 0, "--samples must be at least 1");
    // Removed when the benchmark ends (also on errors).
    let mut _copy = None;
    let data_dir = match (&args.copy_of, &args.in_place) {
        (Some(source), _) => {
            let directory = tempfile::tempdir()?;
            let started = Instant::now();
            let (from, to) = (source.clone(), directory.path().to_path_buf());
            let copied = tokio::task::spawn_blocking(move || copy_data_dir(&from, &to)).await??;
            println!(
                "copied {} ({:.1} MB) in {:.1} s",
                source.display(),
                copied as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
            let path = directory.path().to_path_buf();
            _copy = Some(directory);
            path
        }
        (None, Some(directory)) => {
            println!("running in place on {}: the benchmark's repositories stay in its log", directory.display());
            directory.clone()
        }
        (None, None) => anyhow::bail!("--copy-of or --in-place is required"),
    };

    let config = Config {
        data_dir,
        listen: "127.0.0.1:0".parse()?,
        // Never used (the fetcher is offline), but nothing else either.
        plc_directory: "http://127.0.0.1:9".into(),
        ..Config::default()
    };
    let running = crate::serve::start(&config, None, OfflineFetcher).await?;
    let base = format!("http://{}", running.address);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;

    let result = measure(&running, &client, &base, &args).await;
    running.stop().await?;
    result
}

async fn measure(
    running: &crate::serve::Running,
    client: &reqwest::Client,
    base: &str,
    args: &FreshnessArgs,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let head = running.log.next_offset()?;
    let service = atcr_query::search::SearchService::live(running.views.clone());
    // After a large backlog the index is rebuilt once the views are caught up; until then the
    // previous (maybe empty) one answers: wait for the same non-zero total twice in a row.
    let mut previous = 0;
    let repositories = loop {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "the views did not reach the log head");
        if running.views.load().checkpoint()? >= head && service.is_ready() {
            let total = search_total(client, base, "").await?;
            if total > 0 && total == previous {
                break total;
            }
            previous = total;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "views at the log head ({head} events) and search ready after {:.1} s; {repositories} repositories indexed",
        started.elapsed().as_secs_f64()
    );

    let identity =
        r#"{"id":"DID","alsoKnownAs":["at://HANDLE"]}"#.replace("DID", BENCH_DID).replace("HANDLE", BENCH_HANDLE);
    append(running, vec![event(Source::Enrichment, EventBody::IdentityResolved { document_json: identity })]).await?;

    // Unique per run: a rerun on the same copy would otherwise find the last run's names.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let interval = Duration::from_millis(args.interval_ms);
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut latencies = Vec::with_capacity(args.samples);
    let mut appends = Vec::with_capacity(args.samples);
    let mut failed = 0usize;
    for sample in 0..args.samples {
        let next = Instant::now() + interval;
        let repository = format!("freshness-{run}-{sample:04}");
        let pushed = Instant::now();
        append(running, push_events(&repository, sample)).await?;
        appends.push(pushed.elapsed());
        loop {
            if is_found(client, base, &repository).await? {
                latencies.push(pushed.elapsed());
                break;
            }
            if pushed.elapsed() > timeout {
                failed += 1;
                tracing::warn!(%repository, "not found in search within the timeout");
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    report(&mut latencies, &mut appends, failed, args.samples);
    Ok(())
}

fn report(latencies: &mut [Duration], appends: &mut [Duration], failed: usize, samples: usize) {
    latencies.sort();
    appends.sort();
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    let percentile = |values: &[Duration], p: f64| -> Duration {
        if values.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
        values[rank.clamp(1, values.len()) - 1]
    };
    let (p50, p90, p99) = (percentile(latencies, 50.0), percentile(latencies, 90.0), percentile(latencies, 99.0));
    let max = latencies.last().copied().unwrap_or_default();
    println!(
        "append → found by /api/v1/search over HTTP: {} of {samples} found; p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (durable append alone: p50 {:.1} ms, p99 {:.1} ms)",
        latencies.len(),
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max),
        ms(percentile(appends, 50.0)),
        ms(percentile(appends, 99.0)),
    );
    println!(
        "BENCH_RESULT samples={samples} found={} failed={failed} p50_us={} p90_us={} p99_us={} max_us={}",
        latencies.len(),
        p50.as_micros(),
        p90.as_micros(),
        p99.as_micros(),
        max.as_micros()
    );
}

/// A push as a client makes it: the manifest record and its `latest` tag, in one commit. No
/// hold: enrichment would try to resolve its DID (over the network, when `atcr serve` later
/// runs on the same directory).
fn push_events(repository: &str, sample: usize) -> Vec<Event> {
    let config = format!("sha256:{}", sha256_hex(format!("config {repository}").as_bytes()));
    let layer = format!("sha256:{}", sha256_hex(format!("layer {repository} {sample}").as_bytes()));
    let hex = sha256_hex(format!("manifest {repository}").as_bytes());
    let digest = format!("sha256:{hex}");
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let manifest = json!({
        "$type": MANIFEST,
        "repository": repository,
        "digest": digest,
        "mediaType": IMAGE_MEDIA_TYPE,
        "schemaVersion": 2,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1469 },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 3_623_807 }],
        "annotations": { "org.opencontainers.image.description": "freshness benchmark image" },
        "createdAt": now,
    });
    let tag = json!({
        "$type": TAG,
        "repository": repository,
        "tag": "latest",
        "manifest": format!("at://{BENCH_DID}/{MANIFEST}/{hex}"),
        "createdAt": now,
    });
    vec![
        record_put(MANIFEST, &hex, dag_cbor(&manifest)),
        record_put(TAG, &format!("{}_latest", repository.replace('/', "~")), dag_cbor(&tag)),
    ]
}

fn record_put(collection: &str, rkey: &str, record: Vec<u8>) -> Event {
    let cid = sha256_hex(&record);
    event(
        Source::Firehose,
        EventBody::RecordPut {
            collection: collection.into(),
            rkey: rkey.into(),
            cid,
            action: PutAction::Create,
            record,
        },
    )
}

fn event(source: Source, body: EventBody) -> Event {
    let received_at_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or(0);
    Event {
        source,
        upstream_seq: None,
        did: BENCH_DID.into(),
        // No rev: the per-DID stale-rev check has nothing to compare, every sample applies.
        rev: None,
        upstream_time: None,
        received_at_us,
        commit_cid: None,
        body,
    }
}

/// One durable append, on a blocking thread (redb serializes it with the server's writer).
async fn append(running: &crate::serve::Running, events: Vec<Event>) -> anyhow::Result<()> {
    let log = running.log.clone();
    tokio::task::spawn_blocking(move || log.append(AppendBatch { events, ..AppendBatch::default() })).await??;
    Ok(())
}

async fn search(client: &reqwest::Client, base: &str, query: &str) -> anyhow::Result<serde_json::Value> {
    let response = client.get(format!("{base}/api/v1/search")).query(&[("q", query)]).send().await?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "/api/v1/search?q={query} answered {status}");
    Ok(response.json().await?)
}

async fn search_total(client: &reqwest::Client, base: &str, query: &str) -> anyhow::Result<u64> {
    Ok(search(client, base, query).await?["total"].as_u64().unwrap_or(0))
}

async fn is_found(client: &reqwest::Client, base: &str, repository: &str) -> anyhow::Result<bool> {
    let results = search(client, base, &format!("repo:{repository}")).await?;
    let hits = results["hits"].as_array().map(Vec::as_slice).unwrap_or_default();
    Ok(hits.iter().any(|hit| hit["repository"] == repository && hit["did"] == BENCH_DID))
}

/// Copies `log.redb` and `views/` (not the content store: nothing here reads manifest bytes);
/// returns the bytes copied.
fn copy_data_dir(from: &Path, to: &Path) -> anyhow::Result<u64> {
    let log = from.join("log.redb");
    anyhow::ensure!(log.is_file(), "no event log at {}", log.display());
    let mut copied = std::fs::copy(&log, to.join("log.redb")).with_context(|| format!("copy {}", log.display()))?;
    let views = from.join("views");
    if views.is_dir() {
        copied += copy_tree(&views, &to.join("views"))?;
    }
    Ok(copied)
}

fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut copied = 0;
    for entry in std::fs::read_dir(from).with_context(|| format!("read {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copied += copy_tree(&entry.path(), &target)?;
        } else {
            copied +=
                std::fs::copy(entry.path(), &target).with_context(|| format!("copy {}", entry.path().display()))?;
        }
    }
    Ok(copied)
}
