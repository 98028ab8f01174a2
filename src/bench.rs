//! Benchmarks that need the whole binary.
//!
//! - `atcr bench ingest`: the whole ingest path, WebSocket → decode → filter → durable append,
//!   fed by a local replaying server. Decode alone and append alone have criterion benches
//!   (`cargo bench -p atcr-ingest`, `cargo bench -p atcr-storage`).
//! - `atcr bench replay`: a fresh build of every projection from a generated log (`atcr dev gen
//!   --into`), in events/s, then a snapshot of the result and its restore (seconds).
//! - `atcr bench freshness`: append → visible in search, with the server in-process
//!   (`bench_freshness.rs`).

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
    /// Webhook fan-out on loopback: N subscriptions, events appended at a fixed rate; report
    /// delivery latency from append to receipt (p50/p99/max).
    Webhooks(crate::bench_webhooks::WebhooksBenchArgs),
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
    /// Rebuild the views from the log of a data directory (fill one with `atcr --data-dir DIR
    /// dev gen --events 1000000 --into`); report events/s, then snapshot and restore the result
    /// and report seconds. The data directory is only read.
    Replay {
        /// Data directory whose `log.redb` is replayed.
        #[arg(long, value_name = "DIR")]
        log_from: PathBuf,
        /// Rebuilds to report (median is printed last).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Time the rebuilds only: no snapshot written and restored afterwards.
        #[arg(long)]
        no_snapshot: bool,
    },
    /// One rebuild of `replay`, in a process of its own (as an `atcr replay` runs): prints its
    /// timings as one JSON line.
    #[command(hide = true)]
    ReplayOnce {
        #[arg(long, value_name = "DIR")]
        log_from: PathBuf,
        /// Where the build goes (`views.redb`, `search/`).
        #[arg(long, value_name = "DIR")]
        into: PathBuf,
    },
    /// Push repositories one at a time into a copy of a data directory while the server runs
    /// in-process; report how long each takes to show up in `/api/v1/search` (p50/p99/max).
    Freshness(crate::bench_freshness::FreshnessArgs),
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest { corpus, repeat, runs } => bench_ingest(corpus, repeat, runs).await,
        BenchCommand::Replay { log_from, runs, no_snapshot } => {
            tokio::task::spawn_blocking(move || bench_replay(&log_from, runs, !no_snapshot)).await?
        }
        BenchCommand::ReplayOnce { log_from, into } => {
            tokio::task::spawn_blocking(move || replay_once(&log_from, &into)).await?
        }
        BenchCommand::Freshness(args) => crate::bench_freshness::bench_freshness(args).await,
        BenchCommand::Webhooks(args) => crate::bench_webhooks::bench_webhooks(args).await,
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

/// Snapshot restores timed by `bench replay`.
const RESTORES: usize = 3;

/// How one rebuild of `bench replay` went (the line `bench replay-once` prints).
#[derive(serde::Serialize, serde::Deserialize)]
struct ReplayRun {
    events: u64,
    seconds: f64,
    /// Applying the events and writing the views (unsynced).
    views_seconds: f64,
    documents: u64,
}

/// One rebuild of every projection, as `atcr replay` builds them: the views, then their search
/// index while the views are synced.
fn replay_once(data_dir: &std::path::Path, into: &std::path::Path) -> anyhow::Result<()> {
    let log_path = data_dir.join("log.redb");
    let log = EventLog::open_read_only(&log_path).with_context(|| format!("cannot read {}", log_path.display()))?;
    let until = log.next_offset()?;
    let started = Instant::now();
    let views = atcr_projections::Views::open_for_rebuild(&into.join("views.redb"))?;
    let times = atcr_projections::rebuild::build(
        &log,
        &views,
        until,
        atcr_projections::rebuild::REBUILD_TRANSACTION_EVENTS,
        true,
        &mut |_| {},
    )?;
    let views_seconds = times.views.as_secs_f64();
    let documents = views.search().map(|search| search.index().num_docs()).unwrap_or(0);
    let run = ReplayRun { events: until, seconds: started.elapsed().as_secs_f64(), views_seconds, documents };
    println!("{}", serde_json::to_string(&run)?);
    Ok(())
}

/// Rebuilds the registry views from a data directory's log `runs` times into a temporary
/// directory, each in a new process (`bench replay-once`: memory a run freed and kept would make
/// the next one faster than any real `atcr replay`), then snapshots the last build and restores
/// it [`RESTORES`] times, checking the last restored tables against the build (unless
/// `snapshot` is false).
fn bench_replay(data_dir: &std::path::Path, runs: usize, snapshot: bool) -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let executable = std::env::current_exe()?;
    let mut rates = Vec::new();
    let mut last_build = None;
    for run in 0..runs.max(1) {
        let build = directory.path().join(format!("registry-{run}"));
        let output = std::process::Command::new(&executable)
            .args(["bench", "replay-once", "--log-from"])
            .arg(data_dir)
            .arg("--into")
            .arg(&build)
            .stderr(std::process::Stdio::inherit())
            .output()?;
        anyhow::ensure!(output.status.success(), "rebuild {} failed: {}", run + 1, output.status);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.lines().last().context("the rebuild printed no timings")?;
        let report: ReplayRun = serde_json::from_str(line).context("unreadable rebuild timings")?;
        let rate = report.events as f64 / report.seconds;
        println!(
            "run {}: rebuilt {} events in {:.2} s = {rate:.0} events/s (views applied and written {:.2} s, the search index of {} repositories built meanwhile; then synced and committed {:.2} s)",
            run + 1,
            report.events,
            report.seconds,
            report.views_seconds,
            report.documents,
            report.seconds - report.views_seconds
        );
        rates.push(rate);
        if let Some(previous) = last_build.replace(build.join("views.redb")) {
            let _ = std::fs::remove_dir_all(previous.parent().unwrap_or(&previous));
        }
    }
    rates.sort_by(f64::total_cmp);
    if let Some(median) = rates.get(rates.len() / 2) {
        println!("median: {median:.0} events/s (log read + decode + apply, registry views and search index)");
    }
    let Some(build) = last_build.filter(|_| snapshot) else { return Ok(()) };
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
    // Restores, each into a new file, the earlier ones deleted first (as a node restoring once).
    let mut restore_seconds = Vec::new();
    let mut restored = directory.path().join("restored-0").join("views.redb");
    for attempt in 0..RESTORES {
        if attempt > 0 {
            std::fs::remove_dir_all(restored.parent().unwrap_or(&restored))?;
            restored = directory.path().join(format!("restored-{attempt}")).join("views.redb");
        }
        // The gigabytes this bench has just written (builds, snapshot) are flushed first, so
        // the restore's fsync waits for its own pages, as on a node that restores on start.
        let _ = std::process::Command::new("sync").status();
        let started = Instant::now();
        atcr_projections::snapshot::restore_snapshot(std::fs::File::open(&snapshot_path)?, &restored)?;
        let seconds = started.elapsed().as_secs_f64();
        println!("restore {}: {seconds:.2} s for {} rows", attempt + 1, summary.rows);
        restore_seconds.push(seconds);
    }
    restore_seconds.sort_by(f64::total_cmp);
    if let Some(median) = restore_seconds.get(restore_seconds.len() / 2) {
        println!("restore median: {median:.2} s (decompress, write, fsync)");
    }
    let same = atcr_projections::digest::compare_files(&build, &restored)?;
    anyhow::ensure!(same.values().all(|table| table.is_same()), "the restored views differ from the build: {same:?}");
    println!("restored views equal the build table by table ({} tables)", same.len());
    Ok(())
}
