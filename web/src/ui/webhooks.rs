//! The webhook admin page: each subscription's filters and its latest deliveries (status,
//! attempts, response code, latency), so an operator sees a failing receiver at a glance.

use maud::{Markup, html};
use serde_json::Value;

use super::layout::{Page, Section, render};
use crate::webhooks::SubscriptionSummary;

fn text(value: &Value) -> String {
    match value {
        Value::Null => "—".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

pub fn page(sections: &[(SubscriptionSummary, Vec<Value>)]) -> Markup {
    let body = html! {
        h1 { "Webhooks" }
        @if sections.is_empty() {
            p { "No webhook subscriptions. Add one with " code { "atcr webhooks add" } " or " code { "[[webhooks]]" } " in atcr.toml." }
        }
        @for (subscription, deliveries) in sections {
            section aria-labelledby=(format!("webhook-{}", subscription.id)) {
                h2 id=(format!("webhook-{}", subscription.id)) { (subscription.id) }
                dl {
                    dt { "Source" } dd { (subscription.source) }
                    dt { "Events" } dd { @if subscription.events.is_empty() { "all" } @else { (subscription.events.join(", ")) } }
                    dt { "Owner" } dd { (subscription.did.as_deref().unwrap_or("any")) }
                    dt { "Repository" } dd { (subscription.repository.as_deref().unwrap_or("any")) }
                    dt { "Checkpoint" } dd { (subscription.checkpoint.map_or("not started".to_string(), |offset| offset.to_string())) }
                }
                @if deliveries.is_empty() {
                    p { "No deliveries yet." }
                } @else {
                    table {
                        thead { tr { th { "Delivery" } th { "Event" } th { "Status" } th { "Attempts" } th { "Response" } th { "Latency (ms)" } th { "Error" } } }
                        tbody {
                            @for delivery in deliveries {
                                tr {
                                    td { code { (text(&delivery["delivery_id"])) } }
                                    td { (text(&delivery["event_type"])) }
                                    td { (text(&delivery["status"])) }
                                    td { (text(&delivery["attempts"])) }
                                    td { (text(&delivery["response_code"])) }
                                    td { (text(&delivery["latency_ms"])) }
                                    td { (text(&delivery["error"])) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    render(Page {
        title: "Webhooks",
        description: "Webhook subscriptions and their delivery history",
        section: Section::Other,
        query: "",
        body,
    })
}
