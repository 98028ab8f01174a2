//! The `atcr` binary: command line, configuration, wiring and shutdown. Domain logic lives in
//! the crates (storage, ingest, projections, query, web).

mod audit;
mod audit_verify;
mod backfill;
mod bench;
mod bench_freshness;
mod bench_webhooks;
mod config;
mod demo;
mod devgen;
mod devgen_scans;
mod logcmd;
mod replay;
mod serve;
mod snapshot_remote;
mod webhooks;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use config::{ConfigFlags, IngestFlags, LogFormat};

/// mimalloc rather than glibc malloc: rebuilding the views allocates and frees millions of small
/// rows, and glibc spent about a third of a replay in free-list upkeep (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in the mimalloc (v3) that libmimalloc-sys builds: how long freed
/// memory stays committed before it goes back to the OS (1,000 ms by default; -1: never). The
/// bindings name no constant for it; a test checks that this option reads its default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Batch commands (all but `serve`, `demo` and `webhooks`, which run servers or may be called
/// often) keep the memory they free for their own reuse until they exit. Returned to the OS a
/// second after it was freed, it came back as fresh pages that the kernel zeroes on first touch:
/// replaying 1.3M events took ~70,000 faults of (mostly huge) pages, ~17 % of its CPU time.
///
/// They also run without transparent huge pages. mimalloc asks for them on its arenas, and a
/// huge page costs its 2 MiB of zeroing at the first touch, where the replay's small rows and
/// redb's 4 KiB pages grow its memory a little at a time; on a VM that hands freed memory back to
/// its host (virtio-balloon free page reporting, as here) each one also costs a host fault. A
/// replay spent 7–10 s of kernel time with them and 2.8 s without, and 1.9–4 s less in all
/// (docs/PERFORMANCE.md). Servers keep the kernel's default.
fn batch_memory_settings() {
    // SAFETY: sets a process-wide allocator option (an integer); mimalloc reads options at any
    // time and is thread-safe for this.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
    disable_transparent_huge_pages();
}

fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and changes only this process's memory
    // policy, and that of the processes it starts (`bench replay` starts its rebuilds, batch
    // commands themselves). It disables huge pages for mappings made before the call too
    // (mimalloc's first arena).
    let disabled = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if disabled != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not disable transparent huge pages");
    }
}

#[derive(Debug, Parser)]
#[command(name = "atcr", version, about = "AppView for ATCR, the ATProto Container Registry")]
struct Cli {
    #[command(flatten)]
    flags: ConfigFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Follow an upstream firehose into the event log and serve HTTP.
    Serve(IngestFlags),
    /// Everything embedded: replay a recorded real firehose into a fresh log and serve it.
    Demo,
    /// Inspect the event log (works while `atcr serve` runs).
    Log {
        #[command(subcommand)]
        command: logcmd::LogCommand,
    },
    /// Print what the log holds as JSON: counts, cursors, quarantine, recent events.
    Status,
    /// Rebuild projections from the log beside the live ones and flip (works while serve runs);
    /// `--verify` compares a rebuild with the live views; `snapshot` / `restore` a views file.
    Replay(replay::ReplayArgs),
    /// Fetch the repositories of accounts with `io.atcr.*` records (`getRepo`), verify them and
    /// append what the log is missing; resumable. Needs the log to itself (stop serve first, or
    /// let serve do it beside live ingest: `atcr serve --backfill-pds/--backfill-relay/--backfill-did`).
    Backfill(backfill::BackfillArgs),
    /// Benchmarks that need the whole binary (see docs/PERFORMANCE.md).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
    /// Development tools: `gen`, a synthetic world (seeded) as frames or straight into the log.
    Dev {
        #[command(subcommand)]
        command: devgen::DevCommand,
    },
    /// Offline checks of what the log holds (work while `atcr serve` runs).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Webhook subscriptions: `add`, `list`, `remove`, `test` (delivery runs inside `serve`).
    Webhooks(webhooks::WebhooksArgs),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Re-check every stored commit: its block matches its events and its signature verifies
    /// with the DID's key at that time (from the logged DID documents). Exits non-zero on any
    /// failure.
    Verify {
        /// Only this DID's commits.
        #[arg(long)]
        did: Option<String>,
    },
    /// Every version of a record: `atcr audit record at://<did>/<collection>/<rkey>`.
    Record(audit::RecordArgs),
    /// Every move of a tag, or what it resolved to then: `atcr audit tag <owner>/<repo>:<tag>
    /// [--at <RFC 3339> | --offset <N>]`.
    Tag(audit::TagArgs),
    /// Every event that touched a repository: `atcr audit repo <owner>/<repo>`.
    Repo(audit::RepoArgs),
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("ATCR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colors only for a person at a terminal, never in files, pipes or CI logs.
    let colors = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colors);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ingest_flags = match &cli.command {
        Command::Serve(flags) => Some(flags),
        _ => None,
    };
    let config = config::load(&cli.flags, ingest_flags)?;
    init_tracing(config.log_format);
    // One TLS provider for every wss:// and https:// client in the process. ring, because
    // aws-lc-rs needs cmake and a long C build on every fresh machine; rustls marks ring's
    // provider deprecated only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();

    if !matches!(cli.command, Command::Serve(_) | Command::Demo | Command::Webhooks(_)) {
        batch_memory_settings();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(_) => runtime.block_on(serve::serve(config)),
        Command::Demo => runtime.block_on(demo::demo(config)),
        Command::Log { command } => runtime.block_on(logcmd::run(config, command)),
        Command::Status => logcmd::status(&config),
        Command::Replay(args) => replay::run(&config, args),
        Command::Backfill(args) => runtime.block_on(backfill::run(config, args)),
        Command::Bench { command } => runtime.block_on(bench::run(command)),
        Command::Dev { command } => devgen::run(&config, command),
        Command::Webhooks(args) => runtime.block_on(webhooks::run(&config, args)),
        Command::Audit { command } => match command {
            AuditCommand::Verify { did } => audit_verify::run(&config, did),
            AuditCommand::Record(args) => audit::record(&config, args),
            AuditCommand::Tag(args) => audit::tag(&config, args),
            AuditCommand::Repo(args) => audit::repo(&config, args),
        },
    }
}

#[cfg(test)]
mod tests {
    /// `MI_OPTION_PURGE_DELAY` still names mimalloc's purge delay (default 1,000 ms) after an
    /// upgrade of libmimalloc-sys; no other option defaults to 1,000.
    #[test]
    fn the_option_batch_commands_set_is_the_purge_delay() {
        // SAFETY: reads an allocator option.
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 1000);
    }

    #[test]
    fn batch_settings_turn_transparent_huge_pages_off_for_the_process() {
        // SAFETY: reads this process's THP flag.
        let before = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(before, 0, "huge pages are allowed by default");
        super::disable_transparent_huge_pages();
        // SAFETY: as above.
        let after = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(after, 1);
    }
}
