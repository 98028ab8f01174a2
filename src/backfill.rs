//! `atcr backfill`: discover accounts with `io.atcr.*` records, fetch their repositories with
//! `com.atproto.sync.getRepo`, verify them and append what the log is missing (source
//! `backfill`). The logic lives in `atcr_ingest::backfill`; this is the command line around it:
//! flags, the progress bar and the summary.
//!
//! It writes the event log, which a running `atcr serve` owns (one writer per log): run it with
//! serve stopped, or let serve do it (`atcr serve --backfill-pds/--backfill-relay/--backfill-did`),
//! which backfills while live ingest keeps running. Either way the job is resumable: rerunning it
//! after a crash or Ctrl-C skips the accounts already finished.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{ArgGroup, Args};
use indicatif::{ProgressBar, ProgressStyle};

use atcr_ingest::backfill::{Backfiller, DidOutcome, Discovery, HttpRepoFetcher, RunSummary, discover};
use atcr_ingest::policy::UrlPolicy;
use atcr_storage::{EventLog, LogWriter, StorageError};

use crate::config::Config;

/// Test hook: abort the process (no cleanup, like `kill -9`) after this many accounts are
/// durably finished, so the end-to-end test can prove a rerun completes the job.
pub const ABORT_AFTER_ENV: &str = "ATCR_TEST_BACKFILL_ABORT_AFTER_DIDS";

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("source").required(true).args(["pds", "relay", "did"])))]
pub struct BackfillArgs {
    /// Every active account of this PDS (`com.atproto.sync.listRepos`).
    #[arg(long, value_name = "URL")]
    pub pds: Option<String>,
    /// Every account this relay lists with an `io.atcr.*` record
    /// (`com.atproto.sync.listReposByCollection`).
    #[arg(long, value_name = "URL")]
    pub relay: Option<String>,
    /// Exactly these accounts (repeatable).
    #[arg(long, value_name = "DID")]
    pub did: Vec<String>,
    /// Accounts fetched at the same time (each account's work stays in order).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Start a new job even if the last one of this source is unfinished.
    #[arg(long)]
    pub restart: bool,
    /// PLC directory URL for did:plc documents [env: ATCR_PLC_DIRECTORY] [default: https://plc.directory].
    #[arg(long, value_name = "URL")]
    pub plc_directory: Option<String>,
    /// Development only: allow fetches from loopback over http [env: ATCR_DEV_ALLOW_LOOPBACK].
    #[arg(long)]
    pub dev_allow_loopback: bool,
    /// Repositories larger than this many MiB are not fetched.
    #[arg(long, default_value_t = 256)]
    pub max_repo_mib: usize,
    /// Time limit of one request, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_seconds: u64,
}

impl BackfillArgs {
    pub fn discovery(&self) -> Discovery {
        match (&self.pds, &self.relay) {
            (Some(pds), _) => Discovery::Pds(pds.clone()),
            (None, Some(relay)) => Discovery::Relay(relay.clone()),
            (None, None) => Discovery::Dids(self.did.clone()),
        }
    }
}

/// The HTTP fetcher backfill uses, with the configured PLC directory and URL policy.
pub fn fetcher(config: &Config, max_repo_mib: usize, timeout_seconds: u64) -> anyhow::Result<HttpRepoFetcher> {
    let policy = UrlPolicy { allow_loopback: config.dev_allow_loopback };
    Ok(HttpRepoFetcher::new(
        &config.plc_directory,
        policy,
        max_repo_mib.saturating_mul(1024 * 1024),
        Duration::from_secs(timeout_seconds.max(1)),
    )?)
}

pub async fn run(mut config: Config, args: BackfillArgs) -> anyhow::Result<()> {
    if let Some(plc) = &args.plc_directory {
        config.plc_directory = plc.clone();
    }
    config.dev_allow_loopback |= args.dev_allow_loopback;
    if config.dev_allow_loopback {
        tracing::warn!("--dev-allow-loopback: fetches may reach loopback over http (development only)");
    }
    let path = config.log_path();
    let log = match EventLog::open(&path) {
        Ok(log) => Arc::new(log),
        Err(StorageError::AlreadyOpen) => anyhow::bail!(
            "the event log at {} is open for writing by another process (a running `atcr serve`); stop it first, \
             or let serve backfill while it ingests: `atcr serve --backfill-pds URL` (or --backfill-relay, --backfill-did)",
            path.display()
        ),
        Err(error) => return Err(error).with_context(|| format!("cannot open the event log at {}", path.display())),
    };
    let (writer, writer_task) = LogWriter::start(log.clone());
    let backfiller = Backfiller::new(log, writer, fetcher(&config, args.max_repo_mib, args.timeout_seconds)?);
    let discovery = args.discovery();
    let result = run_job(&backfiller, &discovery, args.concurrency, args.restart).await;
    drop(backfiller);
    tokio::task::spawn_blocking(move || writer_task.join()).await?;
    let summary = result?;
    anyhow::ensure!(
        summary.failed == 0,
        "{} of {} accounts failed (see above); run the same command again to retry them (the job resumes)",
        summary.failed,
        summary.dids
    );
    Ok(())
}

async fn run_job(
    backfiller: &Backfiller<HttpRepoFetcher>,
    discovery: &Discovery,
    concurrency: usize,
    restart: bool,
) -> anyhow::Result<RunSummary> {
    let started = Instant::now();
    let dids = discover(backfiller.fetcher(), discovery).await?;
    println!("backfill: {} accounts to check ({})", dids.len(), discovery.label());
    let abort_after: Option<usize> = std::env::var(ABORT_AFTER_ENV).ok().and_then(|value| value.parse().ok());
    let bar = progress_bar(dids.len() as u64);
    let finished = AtomicUsize::new(0);
    let events = AtomicUsize::new(0);
    let summary = backfiller
        .run(&discovery.label(), dids, concurrency, restart, |report| {
            bar.inc(1);
            match &report.outcome {
                DidOutcome::Synced { puts, deletes, .. } => {
                    let total = events.fetch_add(puts + deletes, Ordering::Relaxed) + puts + deletes;
                    bar.set_message(format!("{total} events appended"));
                    let done = finished.fetch_add(1, Ordering::SeqCst) + 1;
                    if abort_after.is_some_and(|limit| done >= limit) {
                        eprintln!("{ABORT_AFTER_ENV}: aborting after {done} accounts");
                        std::process::abort();
                    }
                }
                DidOutcome::AlreadyDone => {}
                DidOutcome::Unavailable { reason } => bar.println(format!("unavailable: {}: {reason}", report.did)),
                DidOutcome::Failed { reason } => bar.println(format!("failed: {}: {reason}", report.did)),
            }
        })
        .await?;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    println!(
        "backfill: {} accounts in {:.2} s ({:.1}/s): {} checked, {} already done by this job, {} without a \
         repository, {} failed; {} events appended ({} puts, {} deletes){}",
        summary.dids,
        elapsed.as_secs_f64(),
        summary.synced as f64 / elapsed.as_secs_f64().max(1e-9),
        summary.synced,
        summary.already_done,
        summary.unavailable,
        summary.failed,
        summary.puts + summary.deletes,
        summary.puts,
        summary.deletes,
        if summary.finished { "; job finished" } else { "; job left open for a rerun" }
    );
    Ok(summary)
}

/// A progress bar over accounts with rate and ETA (drawn only on a terminal).
fn progress_bar(accounts: u64) -> ProgressBar {
    let bar = ProgressBar::new(accounts);
    let style = ProgressStyle::with_template("backfill {wide_bar} {pos}/{len} accounts  {per_sec}  ETA {eta}  {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
