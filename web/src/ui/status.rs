//! Server-rendered HTML (maud escapes every interpolated value: everything a user controls is
//! text, never markup).

use atcr_query::StatusReport;
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

const STYLE: &str = r#"
:root { color-scheme: light dark; --fg:#1b1f24; --bg:#ffffff; --muted:#59636e; --line:#d1d9e0; --accent:#0969da; --warn:#9a6700; }
@media (prefers-color-scheme: dark) { :root { --fg:#e6edf3; --bg:#0d1117; --muted:#9198a1; --line:#3d444d; --accent:#4493f8; --warn:#d29922; } }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif; color:var(--fg); background:var(--bg); }
header, main { max-width: 72rem; margin: 0 auto; padding: 1rem 1.25rem; }
header { display:flex; align-items:baseline; gap:1rem; border-bottom:1px solid var(--line); }
header h1 { font-size:1.25rem; margin:0; }
header p { margin:0; color:var(--muted); }
h2 { font-size:1.05rem; margin:1.75rem 0 .5rem; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(10rem,1fr)); gap:.75rem; }
.card { border:1px solid var(--line); border-radius:.5rem; padding:.75rem 1rem; }
.card b { display:block; font-size:1.5rem; }
.card span { color:var(--muted); font-size:.85rem; }
.card.warn b { color:var(--warn); }
table { width:100%; border-collapse:collapse; font-size:.9rem; }
th, td { text-align:left; padding:.35rem .5rem; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
code { font:.85rem ui-monospace,SFMono-Regular,Menlo,monospace; word-break:break-all; }
.scroll { overflow-x:auto; }
.muted { color:var(--muted); }
"#;

fn field<'a>(event: &'a Value, name: &str) -> &'a str {
    event.get(name).and_then(Value::as_str).unwrap_or("")
}

fn what(event: &Value) -> String {
    match field(event, "kind") {
        "record_put" | "record_deleted" => {
            format!("{} {}/{}", field(event, "action"), field(event, "collection"), field(event, "rkey"))
        }
        "identity" => format!("identity {}", field(event, "handle")),
        "account" => format!(
            "account {}{}",
            if event.get("active").and_then(Value::as_bool).unwrap_or(false) { "active" } else { "inactive" },
            event.get("status").and_then(Value::as_str).map(|status| format!(" ({status})")).unwrap_or_default()
        ),
        other => other.to_string(),
    }
}

pub fn status(report: &StatusReport) -> Markup {
    let log = &report.log;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content="10";
                title { "atcr: ingest status" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "atcr" }
                    p { "ATProto container registry AppView: what the event log holds" }
                }
                main {
                    section aria-labelledby="totals" {
                        h2 #totals { "Event log" }
                        div.cards {
                            div.card { b { (log.events) } span { "events" } }
                            div.card { b { (log.tracked_dids) } span { "accounts with io.atcr records" } }
                            div.card { b { (log.by_collection.len()) } span { "collections" } }
                            div.card.warn[log.quarantined > 0] { b { (log.quarantined) } span { "quarantined inputs" } }
                            div.card.warn[log.stream_notes > 0] { b { (log.stream_notes) } span { "stream notes (possible gaps)" } }
                        }
                    }
                    section aria-labelledby="collections" {
                        h2 #collections { "By collection" }
                        @if log.by_collection.is_empty() {
                            p.muted { "No records yet." }
                        } @else {
                            table {
                                thead { tr { th scope="col" { "Collection" } th scope="col" { "Record events" } } }
                                tbody {
                                    @for (collection, count) in &log.by_collection {
                                        tr { td { code { (collection) } } td.num { (count) } }
                                    }
                                }
                            }
                        }
                        @if !log.by_kind.is_empty() {
                            p.muted {
                                @for (index, (kind, count)) in log.by_kind.iter().enumerate() {
                                    @if index > 0 { " · " }
                                    (kind) ": " (count)
                                }
                            }
                        }
                    }
                    section aria-labelledby="upstreams" {
                        h2 #upstreams { "Upstreams" }
                        @if log.cursors.is_empty() {
                            p.muted { "No upstream cursor stored yet." }
                        } @else {
                            table {
                                thead { tr { th scope="col" { "Upstream" } th scope="col" { "Cursor (last seq)" } } }
                                tbody {
                                    @for (upstream, cursor) in &log.cursors {
                                        tr { td { code { (upstream) } } td.num { (cursor) } }
                                    }
                                }
                            }
                        }
                    }
                    section aria-labelledby="recent" {
                        h2 #recent { "Recent events" }
                        div.scroll {
                            table {
                                thead { tr {
                                    th scope="col" { "Offset" } th scope="col" { "Seq" } th scope="col" { "Account" }
                                    th scope="col" { "What" } th scope="col" { "Upstream time" }
                                } }
                                tbody {
                                    @for event in &report.recent_events {
                                        tr {
                                            td.num { (event.get("offset").and_then(Value::as_u64).unwrap_or(0)) }
                                            td.num { (event.get("seq").and_then(Value::as_i64).map(|seq| seq.to_string()).unwrap_or_default()) }
                                            td { code { (field(event, "did")) } }
                                            td { (what(event)) }
                                            td { (field(event, "time")) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if !report.recent_quarantine.is_empty() {
                        section aria-labelledby="quarantine" {
                            h2 #quarantine { "Quarantine" }
                            table {
                                thead { tr { th scope="col" { "Seq" } th scope="col" { "Reason" } th scope="col" { "Bytes" } } }
                                tbody {
                                    @for entry in &report.recent_quarantine {
                                        tr {
                                            td.num { (entry.seq.map(|seq| seq.to_string()).unwrap_or_else(|| "?".into())) }
                                            td { (entry.reason) }
                                            td.num { (entry.bytes) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if !report.stream_notes.is_empty() {
                        section aria-labelledby="notes" {
                            h2 #notes { "Stream notes" }
                            ul {
                                @for note in &report.stream_notes {
                                    li { code { (format!("{:?}", note.kind)) } " " (note.message) }
                                }
                            }
                        }
                    }
                    p.muted { "JSON: " a href="/api/v1/status" { "/api/v1/status" } " · " a href="/api/v1/log" { "/api/v1/log" } " · " a href="/metrics" { "/metrics" } }
                }
            }
        }
    }
}
