//! `atcr dev gen`: a synthetic ATCR world from `atcr-gen` (seeded, reproducible), written as
//! files (`firehose.bin`, `dids.json`, `blobs/sha256/<hex>`, the demo's layout) or straight
//! into the data directory's event log for benchmarks and tests that need a big log fast.
//!
//! `--into` goes through the same code as live data: every frame through ingest's
//! `FrameProcessor` (so dedup by seq, filtering and quarantine apply), appended in large
//! batches; then what enrichment would have appended after fetching: an `IdentityResolved` per
//! DID and, for every manifest, its bytes in the content store followed by `ManifestStored`.
//! The enrichment checkpoint moves past it all, so a later `atcr serve` does not try to resolve
//! the generated DIDs over the network. Running it again with the same seed appends nothing.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};

use atcr_gen::{GenConfig, Generator, ManifestBlob};
use atcr_ingest::process::{FrameCounts, FrameProcessor};
use atcr_storage::content::ContentStore;
use atcr_storage::records::{self, ManifestRecord};
use atcr_storage::{AppendBatch, Event, EventBody, EventLog};

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Generate a synthetic world: N users, repositories, pushes, tag moves, stars, deletes,
    /// as signed `subscribeRepos` frames, reproducible from --seed.
    Gen(GenArgs),
}

#[derive(Debug, Args)]
pub struct GenArgs {
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Accounts that may appear.
    #[arg(long, default_value_t = 100)]
    users: usize,
    /// Repositories to create (each costs at least 3 events).
    #[arg(long, default_value_t = 1_000)]
    repositories: usize,
    /// Record ops to generate, exactly (one event each).
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Write `firehose.bin`, `dids.json` and `blobs/sha256/<hex>` into this directory.
    #[arg(long, value_name = "DIR", required_unless_present = "into", conflicts_with = "into")]
    out: Option<PathBuf>,
    /// Append to the event log (and content store) of --data-dir instead.
    #[arg(long)]
    into: bool,
    /// Start of the synthetic clock (RFC 3339).
    #[arg(long, default_value = "2026-01-01T00:00:00Z")]
    start: String,
    /// Threads signing commits (the output does not depend on it) [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// With --into: scan this many image manifests (an `io.atcr.hold.scan` record and an SPDX
    /// SBOM each; see `devgen_scans.rs`), for the package search benchmark.
    #[arg(long, default_value_t = 0, requires = "into")]
    scans: usize,
    /// Packages per generated SBOM.
    #[arg(long, default_value_t = 200)]
    sbom_packages: usize,
}

/// Events per durable append with `--into`.
const EVENTS_PER_APPEND: usize = 20_000;
/// Threads writing manifest files (each put is fsynced, so this is I/O parallelism).
const CONTENT_WRITERS: usize = 8;

pub fn run(config: &Config, command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Gen(args) => generate(config, args),
    }
}

fn generate(config: &Config, args: GenArgs) -> anyhow::Result<()> {
    let start = humantime::parse_rfc3339(&args.start).with_context(|| format!("--start {:?}", args.start))?;
    let start_time_us = start.duration_since(std::time::UNIX_EPOCH).context("--start is before 1970")?.as_micros();
    let mut gen_config = GenConfig::new(args.seed, args.users, args.repositories, args.events);
    gen_config.start_time_us = u64::try_from(start_time_us).context("--start is too far in the future")?;
    if let Some(threads) = args.threads {
        gen_config.threads = threads.max(1);
    }
    let started = Instant::now();
    let generator = Generator::new(gen_config);
    let summary = match &args.out {
        Some(directory) => write_files(generator, directory)?,
        None => {
            let scans = crate::devgen_scans::ScanPlan::new(args.scans, args.sbom_packages, args.seed);
            write_into_log_with_scans(config, generator, args.seed, scans)?
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let stats = &summary.stats;
    println!(
        "generated seed {}: {} frames ({} commits), {} events, {} accounts, {} repositories, {} manifests ({} indexes, {} artifacts)",
        args.seed,
        stats.frames,
        stats.commits,
        stats.events,
        stats.accounts,
        stats.repositories,
        stats.images + stats.indexes + stats.artifacts,
        stats.indexes,
        stats.artifacts
    );
    println!(
        "changes: {} tag moves, {} tag deletes, {} manifest deletes, {} stars, {} unstars, {} profile updates, {} page updates",
        stats.tag_moves,
        stats.tag_deletes,
        stats.manifest_deletes,
        stats.stars,
        stats.unstars,
        stats.profile_updates,
        stats.page_updates
    );
    println!("{}", summary.destination);
    println!(
        "{seconds:.2} s: {:.0} events/s, {:.0} frames/s",
        stats.events as f64 / seconds,
        stats.frames as f64 / seconds
    );
    Ok(())
}

struct Summary {
    stats: atcr_gen::GenStats,
    destination: String,
}

fn write_files(mut generator: Generator, directory: &Path) -> anyhow::Result<Summary> {
    let blobs = directory.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("cannot create {}", blobs.display()))?;
    let documents: serde_json::Map<String, serde_json::Value> = generator
        .dids()
        .into_iter()
        .map(|(did, document)| Ok((did, serde_json::from_str(&document)?)))
        .collect::<Result<_, serde_json::Error>>()?;
    std::fs::write(directory.join("dids.json"), serde_json::to_vec_pretty(&documents)?)?;
    let firehose_path = directory.join("firehose.bin");
    let file =
        std::fs::File::create(&firehose_path).with_context(|| format!("cannot create {}", firehose_path.display()))?;
    let mut firehose = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut bytes_written = 0u64;
    for frame in generator.by_ref() {
        let length = u32::try_from(frame.bytes.len()).context("a frame over 4 GiB")?;
        firehose.write_all(&length.to_le_bytes())?;
        firehose.write_all(&frame.bytes)?;
        bytes_written += 4 + u64::from(length);
        for manifest in &frame.manifests {
            let hex = &manifest.digest["sha256:".len()..];
            std::fs::write(blobs.join(hex), &manifest.bytes)?;
        }
    }
    firehose.flush()?;
    Ok(Summary {
        stats: generator.stats().clone(),
        destination: format!(
            "wrote {} ({:.1} MB), {} and {} DID documents",
            firehose_path.display(),
            bytes_written as f64 / 1e6,
            blobs.display(),
            documents.len()
        ),
    })
}

/// The world alone, no scans (the unit test's shorthand).
#[cfg(test)]
fn write_into_log(config: &Config, generator: Generator, seed: u64) -> anyhow::Result<Summary> {
    write_into_log_with_scans(config, generator, seed, crate::devgen_scans::ScanPlan::new(0, 0, seed))
}

fn write_into_log_with_scans(
    config: &Config,
    mut generator: Generator,
    seed: u64,
    mut scans: crate::devgen_scans::ScanPlan,
) -> anyhow::Result<Summary> {
    let log_path = config.log_path();
    let log = EventLog::open(&log_path).with_context(|| format!("cannot open {} for writing", log_path.display()))?;
    let content = ContentStore::open(&config.content_path())?;
    let upstream = format!("gen:seed={seed}");
    let mut processor = FrameProcessor::new(upstream.clone(), log.cursor(&upstream)?, log.tracked_dids()?);
    let documents: HashMap<String, String> = generator.dids().into_iter().collect();
    let mut enrichment = EnrichmentState { documents, resolved: HashSet::new(), first_offset: log.next_offset()? };

    let mut batch = AppendBatch::default();
    let mut counts = FrameCounts::default();
    // (owner DID, bytes) of the manifests pushed by the frames of the current batch
    let mut manifests: Vec<(String, ManifestBlob)> = Vec::new();
    let mut newest_time_us = 0i64;
    for frame in generator.by_ref() {
        let received_at_us = i64::try_from(frame.time_us).unwrap_or(i64::MAX);
        newest_time_us = received_at_us;
        let events_before = batch.events.len();
        processor.process(&frame.bytes, received_at_us, &mut batch, &mut counts);
        // A frame seen before (an earlier run with the same seed) adds nothing, its manifests
        // neither.
        if batch.events.len() > events_before {
            manifests.extend(frame.manifests.into_iter().map(|manifest| (frame.did.clone(), manifest)));
            scans.note(&batch.events[events_before..]);
        }
        if batch.events.len() >= EVENTS_PER_APPEND {
            let full = std::mem::take(&mut batch);
            append_with_enrichment(
                &log,
                &content,
                &mut enrichment,
                full,
                std::mem::take(&mut manifests),
                newest_time_us,
            )?;
        }
    }
    append_with_enrichment(&log, &content, &mut enrichment, batch, manifests, newest_time_us)?;
    let scanned = scans.append(&log, &content, newest_time_us)?;
    if scanned > 0 {
        println!("scanned {scanned} images (SBOMs by {})", crate::devgen_scans::GENERATED_SCANNER);
    }
    anyhow::ensure!(
        counts.quarantined == 0,
        "{} generated frames were quarantined: a generator bug",
        counts.quarantined
    );
    let appended = log.next_offset()? - enrichment.first_offset;
    Ok(Summary {
        stats: generator.stats().clone(),
        destination: format!(
            "appended {appended} events to {} ({} from frames, {} duplicates skipped, {} DID documents), upstream {upstream:?}",
            log_path.display(),
            counts.events,
            counts.duplicates,
            enrichment.resolved.len()
        ),
    })
}

struct EnrichmentState {
    /// DID → document, for the accounts and holds of the generated world.
    documents: HashMap<String, String>,
    /// DIDs whose `IdentityResolved` is in the log (this run).
    resolved: HashSet<String>,
    first_offset: u64,
}

/// Appends one batch of frame events, then what enrichment would append for it, and moves the
/// enrichment checkpoint past both.
fn append_with_enrichment(
    log: &EventLog,
    content: &ContentStore,
    enrichment: &mut EnrichmentState,
    batch: AppendBatch,
    manifests: Vec<(String, ManifestBlob)>,
    received_at_us: i64,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut enriched = Vec::new();
    let mut resolve = |did: &str, enriched: &mut Vec<Event>| {
        if enrichment.resolved.contains(did) {
            return;
        }
        if let Some(document) = enrichment.documents.get(did) {
            enrichment.resolved.insert(did.to_string());
            enriched.push(Event::enrichment(
                did,
                received_at_us,
                EventBody::IdentityResolved { document_json: document.clone() },
            ));
        }
    };
    for event in &batch.events {
        let EventBody::RecordPut { collection, record, .. } = &event.body else { continue };
        resolve(&event.did, &mut enriched);
        if collection == records::MANIFEST
            && let Ok(manifest) = ManifestRecord::decode(record)
            && let Some(hold) = &manifest.hold_did
        {
            resolve(hold, &mut enriched);
        }
    }
    let receipt = log.append(batch)?;
    store_manifests(content, &manifests)?;
    for (owner, manifest) in &manifests {
        enriched.push(Event::enrichment(
            owner,
            received_at_us,
            EventBody::ManifestStored {
                digest: manifest.digest.clone(),
                media_type: manifest.media_type.to_string(),
                size: manifest.bytes.len() as u64,
            },
        ));
    }
    let next = receipt.first_offset + receipt.appended as u64 + enriched.len() as u64;
    let enrichment_batch = AppendBatch {
        events: enriched,
        checkpoints: vec![(atcr_ingest::enrich::CONSUMER.to_string(), next)],
        ..AppendBatch::default()
    };
    log.append(enrichment_batch)?;
    Ok(())
}

/// Puts manifest bytes into the content store from several threads: every put is synced.
fn store_manifests(content: &ContentStore, manifests: &[(String, ManifestBlob)]) -> anyhow::Result<()> {
    if manifests.is_empty() {
        return Ok(());
    }
    let chunk = manifests.len().div_ceil(CONTENT_WRITERS);
    std::thread::scope(|scope| {
        let writers: Vec<_> = manifests
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    for (_, manifest) in part {
                        content.put(&manifest.digest, &manifest.bytes)?;
                    }
                    Ok::<(), atcr_storage::content::ContentError>(())
                })
            })
            .collect();
        for writer in writers {
            writer.join().map_err(|_| anyhow::anyhow!("a content writer panicked"))??;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn into_appends_frames_and_enrichment_once() {
        let directory = tempfile::tempdir().unwrap();
        let config = Config { data_dir: directory.path().to_path_buf(), ..Config::default() };
        let world = || {
            let mut gen_config = GenConfig::new(3, 10, 15, 400);
            gen_config.threads = 1;
            Generator::new(gen_config)
        };
        let summary = write_into_log(&config, world(), 3).unwrap();
        let log = EventLog::open_read_only(&config.log_path()).unwrap();
        let stats = log.stats().unwrap();
        assert_eq!(stats.quarantined, 0);
        let manifests = summary.stats.images + summary.stats.indexes + summary.stats.artifacts;
        assert_eq!(stats.by_kind.get("manifest_stored").copied(), Some(manifests));
        let record_events = stats.by_kind.get("record_put").copied().unwrap_or(0)
            + stats.by_kind.get("record_deleted").copied().unwrap_or(0);
        assert_eq!(record_events, 400);
        // every account that wrote, and the holds its manifests name
        let documents = stats.by_kind.get("identity_resolved").copied().unwrap_or(0);
        assert!(documents > summary.stats.accounts, "{documents} documents for {} accounts", summary.stats.accounts);
        assert_eq!(log.consumer_checkpoint(atcr_ingest::enrich::CONSUMER).unwrap(), Some(stats.next_offset));
        let content = ContentStore::open(&config.content_path()).unwrap();
        for stored in log.read_from(0, usize::MAX).unwrap() {
            if let EventBody::ManifestStored { digest, size, .. } = &stored.event.body {
                assert_eq!(content.get(digest).unwrap().map(|bytes| bytes.len() as u64), Some(*size));
            }
        }
        drop(log);

        let again = write_into_log(&config, world(), 3).unwrap();
        assert!(again.destination.starts_with("appended 0 events"), "{}", again.destination);
    }
}
