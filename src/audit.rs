//! `atcr audit record | tag | repo`: the history of a record, a tag or a repository, and what a
//! tag resolved to at a point in the past, answered from the event log alone (read-only, so it
//! works while `atcr serve` writes). A table for people by default; `--json` prints JSON lines,
//! one object per version, for tools. The answers follow the registry views' rules (see
//! `atcr_query::audit`).

use std::io::Write;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use atcr_query::audit::{self, AsOf, RecordVersion, RepositoryEvent, TagMove};
use atcr_storage::EventLog;

use crate::config::Config;

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// `at://<did or handle>/<collection>/<rkey>`
    pub uri: String,
    /// JSON lines, one version per line (with the record), instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// `<handle or did>/<repository>:<tag>` (without `:<tag>`: every tag of the repository).
    pub reference: String,
    /// What the tag resolved to at this time (RFC 3339, e.g. 2026-05-01T00:00:00Z).
    #[arg(long, conflicts_with = "offset")]
    pub at: Option<String>,
    /// What the tag resolved to once the log held everything up to this offset.
    #[arg(long)]
    pub offset: Option<u64>,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RepoArgs {
    /// `<handle or did>/<repository>`
    pub reference: String,
    /// JSON lines, one event per line, instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn open_log(config: &Config) -> anyhow::Result<EventLog> {
    let path = config.log_path();
    EventLog::open_read_only(&path).with_context(|| format!("cannot read the event log at {}", path.display()))
}

fn json_lines<T: Serialize>(items: &[T]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

/// Prints rows as aligned columns under a header.
fn table(header: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        padded.join("  ").trim_end().to_string()
    };
    writeln!(out, "{}", line(header.iter().map(|title| title.to_string()).collect()))?;
    for row in rows {
        writeln!(out, "{}", line(row.clone()))?;
    }
    out.flush()?;
    Ok(())
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

fn number_or_dash(value: Option<i64>) -> String {
    value.map(|value| value.to_string()).unwrap_or_else(|| "-".into())
}

pub fn record(config: &Config, args: RecordArgs) -> anyhow::Result<()> {
    let log = open_log(config)?;
    let (authority, collection, rkey) = audit::parse_at_uri(&args.uri)?;
    let did = audit::resolve_did(&log, &authority)?;
    let versions = audit::record_history(&log, &did, &collection, &rkey)?;
    if versions.is_empty() {
        anyhow::bail!("the log holds no version of at://{did}/{collection}/{rkey}");
    }
    if args.json {
        return json_lines(&versions);
    }
    let rows: Vec<Vec<String>> = versions.iter().map(version_row).collect();
    table(&["OFFSET", "SEQ", "REV", "TIME", "ACTION", "CID", "COMMIT"], &rows)
}

fn version_row(version: &RecordVersion) -> Vec<String> {
    vec![
        version.offset.to_string(),
        number_or_dash(version.upstream_seq),
        or_dash(version.rev.as_deref()),
        or_dash(version.time.as_deref()),
        version.action.clone(),
        or_dash(version.cid.as_deref()),
        or_dash(version.commit_cid.as_deref()),
    ]
}

/// What `--at` / `--offset` answer: the digest then, and the change that set it.
#[derive(Debug, Serialize)]
struct TagAsOfAnswer<'a> {
    tag: &'a str,
    repository: &'a str,
    did: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    /// `None` when the tag did not exist then.
    digest: Option<&'a str>,
    set_by: Option<&'a TagMove>,
}

pub fn tag(config: &Config, args: TagArgs) -> anyhow::Result<()> {
    let log = open_log(config)?;
    let (owner, repository, tag) = audit::parse_repository_reference(&args.reference)?;
    let did = audit::resolve_did(&log, &owner)?;
    let as_of = match (&args.at, args.offset) {
        (Some(time), _) => Some(AsOf::parse_time(time)?),
        (None, Some(offset)) => Some(AsOf::Offset(offset)),
        (None, None) => None,
    };
    if let Some(as_of) = as_of {
        let Some(tag) = tag.as_deref() else {
            anyhow::bail!("--at and --offset need a tag: <handle or did>/<repository>:<tag>");
        };
        let change = audit::tag_state_as_of(&log, &did, &repository, tag, as_of)?;
        let answer = TagAsOfAnswer {
            tag,
            repository: &repository,
            did: &did,
            at: args.at.as_deref(),
            offset: args.offset,
            digest: change.as_ref().and_then(|change| change.to.as_deref()),
            set_by: change.as_ref(),
        };
        if args.json {
            return json_lines(&[answer]);
        }
        let when = args.at.clone().unwrap_or_else(|| format!("offset {}", args.offset.unwrap_or_default()));
        match &change {
            Some(change) => println!(
                "{owner}/{repository}:{tag} at {when}: {} (set at offset {}, rev {}, {})",
                change.to.as_deref().unwrap_or("(deleted)"),
                change.offset,
                or_dash(change.rev.as_deref()),
                or_dash(change.time.as_deref()),
            ),
            None => println!("{owner}/{repository}:{tag} at {when}: (did not exist)"),
        }
        return Ok(());
    }
    let moves = audit::tag_history(&log, &did, &repository, tag.as_deref())?;
    if args.json {
        return json_lines(&moves);
    }
    if moves.is_empty() {
        println!("no tag history for {}", args.reference);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = moves.iter().map(move_row).collect();
    table(&["OFFSET", "SEQ", "REV", "TIME", "TAG", "CHANGE", "FROM", "TO", "CID", "COMMIT"], &rows)
}

fn move_row(change: &TagMove) -> Vec<String> {
    vec![
        change.offset.to_string(),
        number_or_dash(change.upstream_seq),
        or_dash(change.rev.as_deref()),
        or_dash(change.time.as_deref()),
        change.tag.clone(),
        change.change.to_string(),
        or_dash(change.from.as_deref()),
        or_dash(change.to.as_deref()),
        or_dash(change.cid.as_deref()),
        or_dash(change.commit_cid.as_deref()),
    ]
}

pub fn repo(config: &Config, args: RepoArgs) -> anyhow::Result<()> {
    let log = open_log(config)?;
    let (owner, repository, tag) = audit::parse_repository_reference(&args.reference)?;
    if tag.is_some() {
        anyhow::bail!("name a repository without a tag (use `atcr audit tag` for one tag)");
    }
    let did = audit::resolve_did(&log, &owner)?;
    let events = audit::repository_history(&log, &did, &repository)?;
    if args.json {
        return json_lines(&events);
    }
    if events.is_empty() {
        println!("no history for {}", args.reference);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = events.iter().map(event_row).collect();
    table(&["OFFSET", "SEQ", "REV", "TIME", "WHAT", "ACTION", "DETAIL", "CID", "BY"], &rows)
}

fn event_row(event: &RepositoryEvent) -> Vec<String> {
    let detail = match event.what {
        "manifest" => or_dash(event.digest.as_deref()),
        "tag" => format!(
            "{}: {} -> {}",
            event.tag.as_deref().unwrap_or("?"),
            event.from.as_deref().unwrap_or("(none)"),
            event.to.as_deref().unwrap_or("(none)")
        ),
        _ => event.rkey.clone(),
    };
    vec![
        event.offset.to_string(),
        number_or_dash(event.upstream_seq),
        or_dash(event.rev.as_deref()),
        or_dash(event.time.as_deref()),
        event.what.to_string(),
        event.action.clone(),
        detail,
        or_dash(event.cid.as_deref()),
        event.did.clone(),
    ]
}
