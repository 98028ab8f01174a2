//! `atcr replay`: rebuild projections from the log beside the live ones and flip (blue/green),
//! check that a rebuild equals the live views (`--verify`), and snapshot / restore them.
//!
//! Works while `atcr serve` runs for the rebuild and the restore: the log is read through its
//! read-only handle, the new build is a separate directory, and serve notices the flip of
//! `views/CURRENT` within a second, catches the new build up and swaps it in. `--verify` and
//! `snapshot` read the live views themselves, which serve holds exclusively (no file locks on
//! the pull path): they ask the operator to stop serve first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use atcr_projections::rebuild::{self, LiveViewsReader, REBUILD_TRANSACTION_EVENTS};
use atcr_projections::store::REGISTRY_FILE;
use atcr_projections::{ProjectionStore, REGISTRY, Views, snapshot};
use atcr_storage::EventLog;

use crate::config::Config;
use crate::snapshot_remote;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProjectionChoice {
    /// The registry views (identities, repositories, manifests, tags, …).
    Registry,
    /// Every projection: the registry views and the search index built from them.
    All,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReplayArgs {
    /// Which projection to rebuild.
    #[arg(long, value_enum, default_value = "all")]
    pub projection: ProjectionChoice,
    /// Rebuild into a scratch directory up to the live checkpoint and compare every view with the
    /// live one; exits non-zero on any difference. Flips nothing.
    #[arg(long)]
    pub verify: bool,
    /// Events per views transaction during the rebuild (only the last commit is synced).
    #[arg(long, default_value_t = REBUILD_TRANSACTION_EVENTS)]
    pub batch: usize,
    #[command(subcommand)]
    pub command: Option<ReplayCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Write the live registry views (every table, at their checkpoint) to a snapshot file,
    /// and/or upload it to the `[snapshot_s3]` bucket.
    #[command(group(clap::ArgGroup::new("target").required(true).multiple(true).args(["out", "to_s3"])))]
    Snapshot {
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Upload to `[snapshot_s3]` as `snapshots/registry-v<version>-<offset>.atcrsnap` and
        /// point `snapshots/registry-latest` at it.
        #[arg(long)]
        to_s3: bool,
    },
    /// Restore a snapshot into a new build and make it live; the runner goes on from its offset.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["file", "from_s3"])))]
    Restore {
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Download from `[snapshot_s3]`: the newest snapshot, or `--name`.
        #[arg(long)]
        from_s3: bool,
        /// The object to restore with `--from-s3` (`snapshots/registry-v3-000000001234.atcrsnap`).
        #[arg(long, requires = "from_s3")]
        name: Option<String>,
    },
}

pub fn run(config: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    match args.command {
        Some(ReplayCommand::Snapshot { out, to_s3 }) => snapshot_live(config, out.as_deref(), to_s3),
        Some(ReplayCommand::Restore { file: Some(file), .. }) => restore(config, &file),
        Some(ReplayCommand::Restore { file: None, name, .. }) => restore_from_s3(config, name),
        None if args.verify => verify(config, args.projection, args.batch),
        None => replay(config, args.projection, args.batch),
    }
}

fn open_log(config: &Config) -> anyhow::Result<EventLog> {
    // Rebuilt views parse scan documents from the content store, as the live ones did.
    let content = atcr_storage::content::ContentStore::open(&config.content_path())?;
    atcr_projections::scans::use_content_store(std::sync::Arc::new(content));
    let path = config.log_path();
    EventLog::open_read_only(&path).with_context(|| format!("cannot read the event log at {}", path.display()))
}

/// A progress bar over log offsets (drawn only on a terminal).
fn progress_bar(label: &str, from: u64, until: u64) -> ProgressBar {
    let bar = ProgressBar::new(until.saturating_sub(from));
    let style = ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} events  {per_sec}  ETA {eta}  ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Builds a fresh registry build from offset 0 to the log head and flips it live.
fn replay(config: &Config, projection: ProjectionChoice, batch: usize) -> anyhow::Result<()> {
    let log = open_log(config)?;
    let store = ProjectionStore::new(config.views_dir());
    let lock = match store.try_lock()? {
        Some(lock) => lock,
        None => {
            eprintln!("waiting for another replay or restore to finish…");
            store.lock()?
        }
    };
    let previous = store.live_build(REGISTRY)?;
    let (build, directory) = store.new_build(&lock, REGISTRY)?;
    let until = log.next_offset()?;
    let bar = progress_bar("registry", 0, until);
    let started = Instant::now();
    let views = Views::open_for_rebuild(&directory.join(REGISTRY_FILE))?;
    // The search index lives in the build, so it flips with the views. With `--projection
    // registry` serve builds it when it swaps the build in. Nothing is flipped before the views
    // are synced and the index committed.
    let search = projection == ProjectionChoice::All;
    let times = rebuild::build(&log, &views, until, batch, search, &mut |reached| bar.set_position(reached))
        .with_context(|| format!("rebuild into {} failed", directory.display()))?;
    let checkpoint = views.checkpoint()?;
    bar.finish_and_clear();
    println!(
        "registry: applied {checkpoint} events and wrote the views of build {build} in {:.2} s, durable {:.2} s later",
        times.views.as_secs_f64(),
        (times.total - times.views).as_secs_f64()
    );
    if search {
        let documents = views.search().map(|search| search.index().num_docs()).unwrap_or(0);
        println!("search: indexed {documents} repositories while the views were written and synced");
    }
    drop(views);
    let elapsed = started.elapsed();
    store.flip(&lock, REGISTRY, build)?;
    println!(
        "all requested projections rebuilt in {:.2} s ({:.0} events/s); build {build} is live",
        elapsed.as_secs_f64(),
        rate(checkpoint, elapsed)
    );
    if let Some(previous) = previous {
        match store.remove_registry_build_if_unused(&lock, previous)? {
            true => println!("registry: build {previous} deleted"),
            false => println!("registry: build {previous} is still served; the server deletes it after swapping"),
        }
    }
    Ok(())
}

/// The live registry database: the build CURRENT names, or a views file from before builds.
fn live_registry_path(config: &Config) -> anyhow::Result<PathBuf> {
    let store = ProjectionStore::new(config.views_dir());
    if let Some(path) = store.live_registry_path()? {
        return Ok(path);
    }
    let legacy = config.legacy_views_path();
    anyhow::ensure!(legacy.exists(), "no live views under {} (nothing was built yet)", config.data_dir.display());
    Ok(legacy)
}

fn verify(config: &Config, projection: ProjectionChoice, batch: usize) -> anyhow::Result<()> {
    let _ = projection;
    let log = open_log(config)?;
    let live_path = live_registry_path(config)?;
    let live = LiveViewsReader::open(&live_path)?;
    let checkpoint = live.checkpoint()?;
    let scratch = tempfile::Builder::new().prefix("verify-").tempdir_in(ensure_dir(&config.views_dir())?)?;
    let bar = progress_bar("registry (verify)", 0, checkpoint);
    let started = Instant::now();
    let report = rebuild::verify(&log, &live, &scratch.path().join(REGISTRY_FILE), batch, &mut |reached| {
        bar.set_position(reached)
    })?;
    bar.finish_and_clear();
    println!(
        "registry: rebuilt {} events in {:.2} s and compared with the live views at the same offset",
        report.checkpoint,
        started.elapsed().as_secs_f64()
    );
    for (table, comparison) in &report.tables {
        println!("  {table}: {comparison}");
    }
    let differences = report.differences();
    if differences > 0 {
        anyhow::bail!("{differences} view(s) differ from a rebuild: a projection is not a pure function of the log");
    }
    println!("registry: zero differences");
    Ok(())
}

fn ensure_dir(path: &Path) -> anyhow::Result<&Path> {
    std::fs::create_dir_all(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(path)
}

fn snapshot_live(config: &Config, out: Option<&Path>, to_s3: bool) -> anyhow::Result<()> {
    // Fail on a missing or invalid bucket before the (long) snapshot, not after it.
    let remote = if to_s3 { Some(snapshot_remote::backend(config)?) } else { None };
    let scratch;
    let out = match out {
        Some(out) => out,
        None => {
            scratch = tempfile::Builder::new()
                .prefix(".snapshot-upload-")
                .tempfile_in(ensure_dir(&config.data_dir)?)
                .context("cannot create a scratch file for the snapshot")?;
            scratch.path()
        }
    };
    let live_path = live_registry_path(config)?;
    let live = LiveViewsReader::open(&live_path)?;
    let started = Instant::now();
    let summary = snapshot::write_snapshot_file_from(&live.read()?, out)?;
    let size = std::fs::metadata(out).map(|metadata| metadata.len()).unwrap_or(0);
    println!(
        "snapshot of {} (version {}) at offset {}: {} tables, {} rows, {} bytes in {:.2} s → {}",
        summary.header.projection,
        summary.header.version,
        summary.header.checkpoint,
        summary.tables,
        summary.rows,
        size,
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if let Some(remote) = remote {
        let name = snapshot_remote::snapshot_name(summary.header.version, summary.header.checkpoint);
        let started = Instant::now();
        let size = snapshot_remote::upload(&remote, out, &name)?;
        println!(
            "uploaded {size} bytes to {} in {:.2} s; {} names it",
            remote.config().named_object_key(&name).unwrap_or(name),
            started.elapsed().as_secs_f64(),
            snapshot_remote::LATEST
        );
    }
    Ok(())
}

fn restore_from_s3(config: &Config, name: Option<String>) -> anyhow::Result<()> {
    let remote = snapshot_remote::backend(config)?;
    let name = match name {
        Some(name) => name,
        None => snapshot_remote::latest(&remote)?,
    };
    let scratch = tempfile::Builder::new()
        .prefix(".snapshot-download-")
        .tempfile_in(ensure_dir(&config.data_dir)?)
        .context("cannot create a scratch file for the snapshot")?;
    let started = Instant::now();
    let size = snapshot_remote::download(&remote, &name, scratch.path())?;
    println!("downloaded {name} ({size} bytes) in {:.2} s", started.elapsed().as_secs_f64());
    restore(config, scratch.path())
}

fn restore(config: &Config, file: &Path) -> anyhow::Result<()> {
    let input = std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let store = ProjectionStore::new(config.views_dir());
    let lock = store.lock()?;
    let previous = store.live_build(REGISTRY)?;
    let (build, directory) = store.new_build(&lock, REGISTRY)?;
    let path = directory.join(REGISTRY_FILE);
    let started = Instant::now();
    let summary = match snapshot::restore_snapshot(input, &path) {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&directory);
            return Err(error).with_context(|| format!("cannot restore {}", file.display()));
        }
    };
    // Creates any table this version has that the snapshot did not carry.
    drop(Views::open(&path)?);
    let elapsed = started.elapsed();
    store.flip(&lock, REGISTRY, build)?;
    println!(
        "restored {} rows in {} tables at offset {} in {:.2} s into build {build}, now live; the runner goes on from offset {}",
        summary.rows,
        summary.tables,
        summary.header.checkpoint,
        elapsed.as_secs_f64(),
        summary.header.checkpoint
    );
    if let Some(previous) = previous {
        let _ = store.remove_registry_build_if_unused(&lock, previous)?;
    }
    Ok(())
}
