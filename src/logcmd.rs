//! `atcr log …` and `atcr status`: read the log from disk, also while `atcr serve` writes it.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use atcr_query::{EventFilter, LogQuery};
use atcr_storage::EventLog;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Print events as JSON lines, oldest first.
    Tail {
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Only events of this DID.
        #[arg(long)]
        did: Option<String>,
        /// Only records of this collection (exact NSID, or a prefix ending in `*`).
        #[arg(long)]
        collection: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<usize>,
        /// Keep waiting for new events.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print one event as pretty JSON.
    Show { offset: u64 },
    /// List quarantined upstream input (reasons and sizes) as JSON lines.
    Quarantine {
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

fn open(config: &Config) -> anyhow::Result<LogQuery> {
    let path = config.log_path();
    let log =
        EventLog::open_read_only(&path).with_context(|| format!("cannot read the event log at {}", path.display()))?;
    Ok(LogQuery::new(Arc::new(log)))
}

/// Writes one line; a closed stdout (`| head`) ends the command quietly.
fn emit(out: &mut impl Write, value: &serde_json::Value) -> bool {
    writeln!(out, "{value}").is_ok()
}

pub async fn run(config: Config, command: LogCommand) -> anyhow::Result<()> {
    let query = open(&config)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match command {
        LogCommand::Tail { from, did, collection, limit, follow } => {
            let mut remaining = limit.unwrap_or(usize::MAX);
            let mut filter = EventFilter { from, limit: 0, did, collection };
            loop {
                filter.limit = remaining.min(1000);
                if filter.limit == 0 {
                    break;
                }
                let page = query.events(&filter)?;
                let exhausted = page.events.is_empty();
                for event in &page.events {
                    if !emit(&mut out, event) {
                        return Ok(());
                    }
                }
                remaining -= page.events.len();
                filter.from = page.next;
                if exhausted {
                    if !follow {
                        break;
                    }
                    // Another process writes: poll (in-process appends would notify instead).
                    if out.flush().is_err() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        LogCommand::Show { offset } => {
            let event = query.event(offset)?.with_context(|| format!("no event at offset {offset}"))?;
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&event)?);
        }
        LogCommand::Quarantine { from, limit } => {
            for entry in query.quarantine(from, limit)? {
                if !emit(&mut out, &serde_json::to_value(entry)?) {
                    return Ok(());
                }
            }
        }
    }
    let _ = out.flush();
    Ok(())
}

pub fn status(config: &Config) -> anyhow::Result<()> {
    let report = open(config)?.status(10)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
