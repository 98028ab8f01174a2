//! Benchmarks that need the whole binary.
//!
//! - `atcr bench ingest`: the whole ingest path, WebSocket → decode → filter → durable append,
//!   fed by a local replaying server. Decode alone and append alone have criterion benches
//!   (`cargo bench -p atcr-ingest`, `cargo bench -p atcr-storage`).
//! - `atcr bench replay`: a fresh build of every projection from a log of synthetic events
//!   (events/s), then a snapshot of the result and its restore (seconds).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use atcr_firehose_replay::{Faults, ReplayServer};
use atcr_ingest::{FirehoseConfig, run_firehose};
use atcr_storage::{EventLog, LogWriter};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Replay a recorded firehose over a loopback WebSocket into a fresh log; report frames/s.
    Ingest {
        /// Recorded frames ([u32 LE length][frame]…).
        #[arg(long, default_value = "../shared/firehose-corpus/corpus.bin")]
        corpus: PathBuf,
        /// Replay the corpus this many times, each pass from its own replaying upstream.
        #[arg(long, default_value_t = 10)]
        repeat: usize,
        /// Runs to report (median is printed last).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Rebuild the views from a log of synthetic events; report events/s, then snapshot and
    /// restore the result and report seconds.
    Replay {
        /// Events in the generated log.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Seed of the synthetic world.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Rebuilds to report (median is printed last).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Use the log in this data directory instead of generating one.
        #[arg(long, value_name = "DIR")]
        log_from: Option<PathBuf>,
        /// Only generate: write the synthetic log into this data directory and stop.
        #[arg(long, value_name = "DIR", conflicts_with = "log_from")]
        generate_into: Option<PathBuf>,
    },
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest { corpus, repeat, runs } => bench_ingest(corpus, repeat, runs).await,
        BenchCommand::Replay { events, seed, generate_into: Some(data_dir), .. } => {
            tokio::task::spawn_blocking(move || {
                let log = EventLog::open(&data_dir.join("log.redb"))?;
                anyhow::ensure!(log.next_offset()? == 0, "{} already holds a log", data_dir.display());
                synthetic::fill(&log, events, seed)?;
                println!("generated {events} synthetic events into {}", data_dir.display());
                Ok(())
            })
            .await?
        }
        BenchCommand::Replay { events, seed, runs, log_from, generate_into: None } => {
            tokio::task::spawn_blocking(move || bench_replay(events, seed, runs, log_from)).await?
        }
    }
}

/// Each repeat is a separate upstream (its own replay server and cursor key) serving the same
/// frames, since atcr's dedup by seq would drop a second pass over one upstream.
async fn bench_ingest(corpus: PathBuf, repeat: usize, runs: usize) -> anyhow::Result<()> {
    let bytes = std::fs::read(&corpus).with_context(|| format!("cannot read corpus {}", corpus.display()))?;
    let recorded = crate::demo::recorded_frames(&bytes)?;
    let head = recorded.last().map(|frame| frame.seq).unwrap_or(0);
    let mut rates = Vec::new();
    for run in 0..runs {
        let directory = tempfile::tempdir()?;
        let log = Arc::new(EventLog::open(&directory.path().join("log.redb"))?);
        let (writer, writer_task) = LogWriter::start(log.clone());
        let mut servers = Vec::new();
        let started = Instant::now();
        let mut total_frames = 0usize;
        for _ in 0..repeat {
            let server = ReplayServer::start(recorded.clone(), Faults::default()).await?;
            let mut config = FirehoseConfig::new(server.url());
            config.start_cursor = Some(0);
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(run_firehose(config, log.clone(), writer.clone(), shutdown.clone()));
            let key = server.url();
            let deadline = Instant::now() + Duration::from_secs(120);
            while log.cursor(&key)? != Some(head) {
                anyhow::ensure!(Instant::now() < deadline, "ingest did not finish");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            shutdown.cancel();
            task.await??;
            total_frames += recorded.len();
            servers.push(server);
        }
        let elapsed = started.elapsed();
        let events = log.stats()?.events;
        drop(writer);
        writer_task.join();
        let rate = total_frames as f64 / elapsed.as_secs_f64();
        println!(
            "run {}: {total_frames} frames ({events} events appended) in {:.3} s = {:.0} frames/s end to end",
            run + 1,
            elapsed.as_secs_f64(),
            rate
        );
        rates.push(rate);
        for server in servers {
            server.stop();
        }
    }
    rates.sort_by(f64::total_cmp);
    if let Some(median) = rates.get(rates.len() / 2) {
        println!("median: {median:.0} frames/s (WebSocket → decode → filter → durable append)");
    }
    Ok(())
}

/// Generates (or opens) a log, rebuilds the registry views from it `runs` times, then snapshots
/// the last build and restores it, checking the restored tables against the build.
fn bench_replay(events: u64, seed: u64, runs: usize, log_from: Option<PathBuf>) -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let log_path = match &log_from {
        Some(data_dir) => data_dir.join("log.redb"),
        None => {
            let path = directory.path().join("log.redb");
            let started = Instant::now();
            let log = EventLog::open(&path)?;
            synthetic::fill(&log, events, seed)?;
            println!("generated {events} synthetic events in {:.1} s", started.elapsed().as_secs_f64());
            path
        }
    };
    let log = EventLog::open_read_only(&log_path).with_context(|| format!("cannot read {}", log_path.display()))?;
    let until = log.next_offset()?;
    let mut rates = Vec::new();
    let mut last_build = None;
    for run in 0..runs.max(1) {
        let path = directory.path().join(format!("registry-{run}")).join("views.redb");
        let started = Instant::now();
        let views = atcr_projections::rebuild::rebuild(&log, &path, until, &mut |_| {})?;
        let elapsed = started.elapsed();
        let rate = until as f64 / elapsed.as_secs_f64();
        println!("run {}: rebuilt {until} events in {:.2} s = {rate:.0} events/s", run + 1, elapsed.as_secs_f64());
        rates.push(rate);
        drop(views);
        if let Some(previous) = last_build.replace(path) {
            let _ = std::fs::remove_dir_all(previous.parent().unwrap_or(&previous));
        }
    }
    rates.sort_by(f64::total_cmp);
    if let Some(median) = rates.get(rates.len() / 2) {
        println!("median: {median:.0} events/s (log read + decode + apply, registry views)");
    }
    let Some(build) = last_build else { return Ok(()) };
    let views = atcr_projections::Views::open(&build)?;
    let snapshot_path = directory.path().join("registry.snapshot");
    let started = Instant::now();
    let summary = atcr_projections::snapshot::write_snapshot_file(&views, &snapshot_path)?;
    let size = std::fs::metadata(&snapshot_path)?.len();
    println!(
        "snapshot: {} rows in {} tables, {size} bytes, written in {:.2} s",
        summary.rows,
        summary.tables,
        started.elapsed().as_secs_f64()
    );
    drop(views);
    let restored = directory.path().join("restored").join("views.redb");
    let started = Instant::now();
    atcr_projections::snapshot::restore_snapshot(std::fs::File::open(&snapshot_path)?, &restored)?;
    let restore_seconds = started.elapsed().as_secs_f64();
    println!("restore: {restore_seconds:.2} s for {} rows", summary.rows);
    let same = atcr_projections::digest::compare_files(&build, &restored)?;
    anyhow::ensure!(same.values().all(|table| table.is_same()), "the restored views differ from the build: {same:?}");
    println!("restored views equal the build table by table ({} tables)", same.len());
    Ok(())
}

/// A synthetic registry: users push manifests (images, indexes, attached artifacts), move and
/// delete tags, delete manifests, and have their DID documents resolved, with per-DID revs that
/// only go up. Deterministic for a seed. Not signed: projections do not check signatures.
mod synthetic {
    use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
    use serde_json::{Value, json};

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound.max(1)
        }
    }

    fn digest(rng: &mut Rng) -> String {
        format!("sha256:{:016x}{:016x}{:016x}{:016x}", rng.next(), rng.next(), rng.next(), rng.next())
    }

    fn cbor(value: &Value) -> anyhow::Result<Vec<u8>> {
        Ok(serde_ipld_dagcbor::to_vec(value)?)
    }

    struct User {
        did: String,
        repositories: Vec<String>,
        /// (repository, digest) of pushed manifests still present.
        manifests: Vec<(String, String)>,
        /// (repository, tag) of tags present.
        tags: Vec<(String, String)>,
    }

    pub fn fill(log: &EventLog, events: u64, seed: u64) -> anyhow::Result<()> {
        let mut rng = Rng(seed);
        let user_count = (events / 50).clamp(10, 20_000);
        let mut users: Vec<User> = (0..user_count)
            .map(|index| User {
                did: format!("did:plc:synthetic{index:08}"),
                repositories: (0..1 + index % 5).map(|repo| format!("app{repo}/service")).collect(),
                manifests: Vec::new(),
                tags: Vec::new(),
            })
            .collect();
        let mut clock: u64 = 1_700_000_000_000_000;
        let mut batch = Vec::with_capacity(10_000);
        for _ in 0..events {
            clock += 1 + rng.below(1000);
            let user_index = rng.below(user_count) as usize;
            let user = &mut users[user_index];
            let rev = format!("{clock:020}");
            let time = format!("2026-01-01T00:00:{:02}.{:06}Z", (clock / 1_000_000) % 60, clock % 1_000_000);
            let roll = rng.below(100);
            let body = if roll < 45 || user.manifests.is_empty() {
                let repository = user.repositories[rng.below(user.repositories.len() as u64) as usize].clone();
                let digest_value = digest(&mut rng);
                let layers: Vec<Value> = (0..2 + rng.below(5))
                    .map(|_| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&mut rng), "size": rng.below(50_000_000)}))
                    .collect();
                let mut record = json!({
                    "$type": "io.atcr.manifest", "repository": repository, "digest": digest_value,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json", "schemaVersion": 2,
                    "holdDid": "did:web:hold.synthetic.example", "createdAt": time,
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&mut rng), "size": 1500},
                    "layers": layers,
                    "annotations": {"org.opencontainers.image.title": format!("{repository} build {clock}")},
                });
                if roll < 5 && !user.manifests.is_empty() {
                    let (_, subject) = &user.manifests[rng.below(user.manifests.len() as u64) as usize];
                    record["subject"] = json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": 1000});
                }
                let rkey = digest_value["sha256:".len()..].to_string();
                user.manifests.push((repository, digest_value));
                EventBody::RecordPut {
                    collection: "io.atcr.manifest".into(),
                    rkey,
                    cid: format!("bafy{clock}"),
                    action: PutAction::Create,
                    record: cbor(&record)?,
                }
            } else if roll < 80 {
                let (repository, target) = user.manifests[rng.below(user.manifests.len() as u64) as usize].clone();
                let tag = ["latest", "stable", "v1", "v2", "dev", "nightly"][rng.below(6) as usize].to_string();
                let rkey = format!("{}_{tag}", repository.replace('/', "~"));
                let record = json!({
                    "$type": "io.atcr.tag", "repository": repository, "tag": tag, "createdAt": time,
                    "manifest": format!("at://{}/io.atcr.manifest/{}", user.did, &target["sha256:".len()..]),
                });
                if !user.tags.contains(&(repository.clone(), tag.clone())) {
                    user.tags.push((repository, tag));
                }
                EventBody::RecordPut {
                    collection: "io.atcr.tag".into(),
                    rkey,
                    cid: format!("bafy{clock}"),
                    action: PutAction::Update,
                    record: cbor(&record)?,
                }
            } else if roll < 85 && !user.tags.is_empty() {
                let (repository, tag) = user.tags.swap_remove(rng.below(user.tags.len() as u64) as usize);
                EventBody::RecordDeleted {
                    collection: "io.atcr.tag".into(),
                    rkey: format!("{}_{tag}", repository.replace('/', "~")),
                    prev_cid: None,
                }
            } else if roll < 90 {
                let (_, digest_value) = user.manifests.swap_remove(rng.below(user.manifests.len() as u64) as usize);
                EventBody::RecordDeleted {
                    collection: "io.atcr.manifest".into(),
                    rkey: digest_value["sha256:".len()..].to_string(),
                    prev_cid: None,
                }
            } else if roll < 95 {
                let document = json!({
                    "id": user.did, "alsoKnownAs": [format!("at://user{user_index}.synthetic.example")],
                    "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.synthetic.example"}],
                });
                EventBody::IdentityResolved { document_json: document.to_string() }
            } else {
                let (_, digest_value) = user.manifests[rng.below(user.manifests.len() as u64) as usize].clone();
                EventBody::ManifestStored {
                    digest: digest_value,
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    size: 1000 + rng.below(4000),
                }
            };
            let source = match body {
                EventBody::IdentityResolved { .. } | EventBody::ManifestStored { .. } => Source::Enrichment,
                _ => Source::Firehose,
            };
            let record_event = source == Source::Firehose;
            batch.push(Event {
                source,
                upstream_seq: record_event.then_some(clock as i64),
                did: user.did.clone(),
                rev: record_event.then_some(rev),
                upstream_time: Some(time),
                received_at_us: clock as i64,
                commit_cid: None,
                body,
            });
            if batch.len() == 10_000 {
                log.append(AppendBatch { events: std::mem::take(&mut batch), ..AppendBatch::default() })?;
            }
        }
        if !batch.is_empty() {
            log.append(AppendBatch { events: batch, ..AppendBatch::default() })?;
        }
        Ok(())
    }
}
