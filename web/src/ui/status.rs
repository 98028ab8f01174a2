//! `/status`: what the event log holds: totals, collections, upstream cursors, recent events,
//! quarantine and stream notes. For operators; refreshed by the browser every 10 seconds
//! (`Refresh` header set by the handler).

use atcr_query::StatusReport;
use maud::{Markup, html};
use serde_json::Value;

use super::layout::{self, Page, Section};

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
    let body = html! {
        div.container.page {
            h1 { "Ingest status" }
            p.muted { "What atcr's event log holds: every io.atcr.* change received from the network. Refreshes every 10 seconds." }
            section.section aria-labelledby="totals" {
                h2 #totals { "Event log" }
                dl.stats.status-cards {
                    div { dt { "Events" } dd { (log.events) } }
                    div { dt { "Accounts with io.atcr records" } dd { (log.tracked_dids) } }
                    div { dt { "Collections" } dd { (log.by_collection.len()) } }
                    div.warn[log.quarantined > 0] { dt { "Quarantined inputs" } dd { (log.quarantined) } }
                    div.warn[log.stream_notes > 0] { dt { "Stream notes (possible gaps)" } dd { (log.stream_notes) } }
                }
            }
            section.section aria-labelledby="collections" {
                h2 #collections { "By collection" }
                @if log.by_collection.is_empty() {
                    p.empty { "No records yet." }
                } @else {
                    div.table-wrap { table.data {
                        thead { tr { th scope="col" { "Collection" } th scope="col" class="num" { "Record events" } } }
                        tbody {
                            @for (collection, count) in &log.by_collection {
                                tr { th scope="row" { code { (collection) } } td.num { (count) } }
                            }
                        }
                    } }
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
            section.section aria-labelledby="upstreams" {
                h2 #upstreams { "Upstreams" }
                @if log.cursors.is_empty() {
                    p.empty { "No upstream cursor stored yet." }
                } @else {
                    div.table-wrap { table.data {
                        thead { tr { th scope="col" { "Upstream" } th scope="col" class="num" { "Cursor (last seq)" } } }
                        tbody {
                            @for (upstream, cursor) in &log.cursors {
                                tr { th scope="row" { code.break { (upstream) } } td.num { (cursor) } }
                            }
                        }
                    } }
                }
            }
            section.section aria-labelledby="recent" {
                h2 #recent { "Recent events" }
                div.table-wrap { table.data {
                    thead { tr {
                        th scope="col" class="num" { "Offset" } th scope="col" class="num" { "Seq" } th scope="col" { "Account" }
                        th scope="col" { "What" } th scope="col" { "Upstream time" }
                    } }
                    tbody {
                        @for event in &report.recent_events {
                            tr {
                                td.num { (event.get("offset").and_then(Value::as_u64).unwrap_or(0)) }
                                td.num { (event.get("seq").and_then(Value::as_i64).map(|seq| seq.to_string()).unwrap_or_default()) }
                                td.nowrap { code { (field(event, "did")) } }
                                td.break { (what(event)) }
                                td.nowrap { (field(event, "time")) }
                            }
                        }
                    }
                } }
            }
            @if !report.recent_quarantine.is_empty() {
                section.section aria-labelledby="quarantine" {
                    h2 #quarantine { "Quarantine" }
                    div.table-wrap { table.data {
                        thead { tr { th scope="col" class="num" { "Seq" } th scope="col" { "Reason" } th scope="col" class="num" { "Bytes" } } }
                        tbody {
                            @for entry in &report.recent_quarantine {
                                tr {
                                    td.num { (entry.seq.map(|seq| seq.to_string()).unwrap_or_else(|| "?".into())) }
                                    td { (entry.reason) }
                                    td.num { (entry.bytes) }
                                }
                            }
                        }
                    } }
                }
            }
            @if !report.stream_notes.is_empty() {
                section.section aria-labelledby="notes" {
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
    };
    layout::render(Page {
        title: "Ingest status",
        description: "What atcr's event log holds: events, collections, upstream cursors and quarantine.",
        section: Section::Status,
        query: "",
        body,
    })
}
