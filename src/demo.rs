//! `atcr demo`: atcr with everything embedded. A replaying upstream on loopback serves a
//! firehose recorded from Bluesky's reference PDS (`fixtures/demo/firehose.bin`, compiled into
//! the binary), and atcr ingests it through the same WebSocket path as production into a fresh
//! log under `<data-dir>/demo`. No network needed.

use std::time::{Duration, Instant};

use anyhow::Context;

use atcr_firehose_replay::{Faults, RecordedFrame, ReplayServer};
use atcr_ingest::corpus::split_frames;
use atcr_ingest::frame::decode_frame;

use crate::config::Config;
use crate::serve;

/// The recorded demo firehose (see fixtures/demo/README.md for what it contains).
const DEMO_FIREHOSE: &[u8] = include_bytes!("../fixtures/demo/firehose.bin");

pub fn demo_frames() -> anyhow::Result<Vec<RecordedFrame>> {
    let frames =
        split_frames(DEMO_FIREHOSE).map_err(|error| anyhow::anyhow!("demo firehose: {error}"))?;
    let mut recorded = Vec::with_capacity(frames.len());
    for (index, bytes) in frames.into_iter().enumerate() {
        let seq = decode_frame(bytes)
            .ok()
            .and_then(|frame| frame.seq())
            .with_context(|| format!("demo frame {index} has no seq"))?;
        recorded.push(RecordedFrame {
            seq,
            bytes: bytes.to_vec(),
        });
    }
    Ok(recorded)
}

pub async fn demo(mut config: Config) -> anyhow::Result<()> {
    let frames = demo_frames()?;
    let head = frames.last().map(|frame| frame.seq).unwrap_or(0);
    let upstream = ReplayServer::start(frames, Faults::default()).await?;

    // A fresh log every time: the replaying upstream gets a new port, so a kept cursor would
    // not match it. Only the demo's own file is removed.
    config.data_dir = config.data_dir.join("demo");
    let log_path = config.log_path();
    if log_path.exists() {
        std::fs::remove_file(&log_path)
            .with_context(|| format!("cannot reset {}", log_path.display()))?;
    }
    config.upstream = Some(upstream.url());
    config.start_cursor = Some(0);
    let firehose = serve::firehose_config(&config);
    let running = serve::start(&config, firehose).await?;

    let started = Instant::now();
    let key = upstream.url();
    while running.log.cursor(&key)? != Some(head) && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let stats = running.log.stats()?;
    println!(
        "atcr demo: ingested {} events from {} accounts ({} firehose frames replayed) in {} ms",
        stats.events,
        stats.tracked_dids,
        head,
        started.elapsed().as_millis()
    );
    for (collection, count) in &stats.by_collection {
        println!("  {collection:<28} {count}");
    }
    println!(
        "status page: http://{}/   (Ctrl-C to stop)",
        running.address
    );
    running.run_until_stopped().await
}
