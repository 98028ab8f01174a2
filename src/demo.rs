//! `atcr demo`: atcr with everything embedded. A replaying upstream on loopback serves a
//! firehose recorded from Bluesky's reference PDS (`fixtures/demo/firehose.bin`, compiled into
//! the binary), and atcr ingests it through the same WebSocket path as production into a fresh
//! log under `<data-dir>/demo`. No network needed.

use std::time::{Duration, Instant};

use anyhow::Context;

use std::collections::HashMap;
use std::path::PathBuf;

use atcr_firehose_replay::{Faults, RecordedFrame, ReplayServer};
use atcr_ingest::corpus::split_frames;
use atcr_ingest::enrich::{FetchError, Fetcher};
use atcr_ingest::frame::decode_frame;
use atcr_ingest::identity::{IdentityConfig, IdentityResolver, StaticHandles};
use atcr_storage::content::sha256_hex_of_cid;

use crate::config::Config;
use crate::serve;

/// The recorded demo firehose (see fixtures/demo/README.md for what it contains).
const DEMO_FIREHOSE: &[u8] = include_bytes!("../fixtures/demo/firehose.bin");
/// The DID documents the local PLC served while recording.
const DEMO_DIDS: &str = include_str!("../fixtures/demo/dids.json");
/// The holds the demo's manifests name; atcr serves their blobs from `fixtures/demo/blobs`.
const DEMO_HOLDS: [&str; 2] = ["did:web:hold.demo.test", "did:web:hold2.demo.test"];

fn demo_blobs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/blobs")
}

/// Enrichment for the demo: the recorded DID documents and blob files instead of a PLC and a
/// PDS. Everything downstream (events, views, the pull path) is the production code.
struct RecordedFetcher {
    documents: HashMap<String, String>,
    blobs: PathBuf,
}

impl RecordedFetcher {
    fn load() -> anyhow::Result<Self> {
        let documents: HashMap<String, serde_json::Value> = serde_json::from_str(DEMO_DIDS)?;
        let mut documents: HashMap<String, String> =
            documents.into_iter().map(|(did, document)| (did, document.to_string())).collect();
        for hold in DEMO_HOLDS {
            // The demo holds exist only here; their documents name no endpoint.
            documents.insert(hold.to_string(), serde_json::json!({ "id": hold }).to_string());
        }
        let blobs = demo_blobs_dir();
        anyhow::ensure!(blobs.is_dir(), "demo blobs not found at {} (run from a checkout)", blobs.display());
        Ok(RecordedFetcher { documents, blobs })
    }
}

impl Fetcher for RecordedFetcher {
    async fn did_document(&self, did: &str) -> Result<String, FetchError> {
        self.documents.get(did).cloned().ok_or(FetchError::NotFound)
    }

    async fn blob(&self, _pds: &str, _did: &str, cid: &str) -> Result<Vec<u8>, FetchError> {
        let hex = sha256_hex_of_cid(cid).ok_or(FetchError::NotFound)?;
        std::fs::read(self.blobs.join("sha256").join(hex)).map_err(|_| FetchError::NotFound)
    }
}

/// The demo's handle resolutions: at recording time the reference PDS resolved each recorded
/// document's handle to its DID (`.test` handles exist in no DNS), so the recording answers
/// the handle → DID direction with what the documents claim; the checks still require both.
fn recorded_handles() -> anyhow::Result<HashMap<String, String>> {
    let documents: HashMap<String, serde_json::Value> = serde_json::from_str(DEMO_DIDS)?;
    let mut handles = HashMap::new();
    for (did, document) in documents {
        let facts = atcr_storage::did::parse_did_document(&document.to_string())
            .map_err(|error| anyhow::anyhow!("recorded DID document of {did}: {error}"))?;
        if let Some(handle) = facts.handle {
            handles.insert(handle, did);
        }
    }
    Ok(handles)
}

/// A recording (`[u32 LE length][frame]…`) as frames the replay server can serve, each with the
/// seq it carries. Shared by the demo and `atcr bench ingest`.
pub fn recorded_frames(recording: &[u8]) -> anyhow::Result<Vec<RecordedFrame>> {
    let frames = split_frames(recording).map_err(|error| anyhow::anyhow!("recorded firehose: {error}"))?;
    let mut recorded = Vec::with_capacity(frames.len());
    for (index, bytes) in frames.into_iter().enumerate() {
        let seq = decode_frame(bytes)
            .ok()
            .and_then(|frame| frame.seq())
            .with_context(|| format!("recorded frame {index} has no seq"))?;
        recorded.push(RecordedFrame { seq, bytes: bytes.to_vec() });
    }
    Ok(recorded)
}

pub async fn demo(mut config: Config) -> anyhow::Result<()> {
    let frames = recorded_frames(DEMO_FIREHOSE)?;
    let head = frames.last().map(|frame| frame.seq).unwrap_or(0);
    let upstream = ReplayServer::start(frames, Faults::default()).await?;

    // A fresh log every time: the replaying upstream gets a new port, so a kept cursor would
    // not match it. Only the demo's own file is removed.
    config.data_dir = config.data_dir.join("demo");
    let log_path = config.log_path();
    if log_path.exists() {
        std::fs::remove_file(&log_path).with_context(|| format!("cannot reset {}", log_path.display()))?;
    }
    let views_dir = config.views_dir();
    if views_dir.exists() {
        std::fs::remove_dir_all(&views_dir).with_context(|| format!("cannot reset {}", views_dir.display()))?;
    }
    let legacy_views = config.legacy_views_path();
    if legacy_views.exists() {
        std::fs::remove_file(&legacy_views).with_context(|| format!("cannot reset {}", legacy_views.display()))?;
    }
    config.upstream = Some(upstream.url());
    config.start_cursor = Some(0);
    for hold in DEMO_HOLDS {
        config.local_holds.insert(hold.to_string(), demo_blobs_dir());
    }
    // Live verification with the recorded DID documents: the demo's commits pass the same
    // Sync 1.1 checks as a real upstream's.
    let mut firehose = serve::firehose_config(&config);
    if let Some(firehose) = &mut firehose {
        let identities = IdentityResolver::new(RecordedFetcher::load()?, IdentityConfig::default())
            .with_handles(StaticHandles(recorded_handles()?));
        firehose.identities = Some(std::sync::Arc::new(identities));
    }
    let running = serve::start(&config, firehose, RecordedFetcher::load()?).await?;

    let started = Instant::now();
    let key = upstream.url();
    while running.log.cursor(&key)? != Some(head) && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Enrichment and the views follow the log; wait until the views have caught up.
    while running.views.load().checkpoint()? < running.log.next_offset()? && started.elapsed() < Duration::from_secs(30)
    {
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
    println!("status page: http://{}/   (Ctrl-C to stop)", running.address);
    println!(
        "pull:        skopeo copy --src-tls-verify=false docker://{}/alice.test/hello:latest oci:/tmp/hello:latest",
        running.address
    );
    running.run_until_stopped().await
}
