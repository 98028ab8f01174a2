//! `atcr bench ingest`: the whole ingest path, WebSocket → decode → filter → durable append,
//! fed by a local replaying server. Decode alone and append alone have criterion benches
//! (`cargo bench -p atcr-ingest`, `cargo bench -p atcr-storage`).

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
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Ingest { corpus, repeat, runs } => bench_ingest(corpus, repeat, runs).await,
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
