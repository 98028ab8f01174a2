//! `atcr webhooks add|list|remove|test`, and the wiring of webhook delivery into `atcr serve`.
//!
//! Subscriptions come from two places: `[[webhooks]]` in the config file (the operator's file,
//! read-only here) and `<data_dir>/webhooks.json`, which `add` and `remove` edit and a running
//! serve re-reads every two seconds. Delivery itself (outbox, checkpoints, history in
//! `<data_dir>/webhooks.redb`) is `atcr_ingest::webhooks`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use atcr_ingest::policy::UrlPolicy;
use atcr_ingest::webhooks::{self, Sender, Subscription, SubscriptionFile, WebhookStore};
use atcr_storage::EventLog;
use atcr_web::webhooks::{SubscriptionSummary, WebhookHistory};

use crate::config::Config;

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// Development only: allow webhook URLs on loopback over http (as `serve --dev-allow-loopback`).
    #[arg(long, global = true)]
    dev_allow_loopback: bool,
    #[command(subcommand)]
    command: WebhooksCommand,
}

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// Add a subscription (kept in <data_dir>/webhooks.json; a running serve picks it up).
    Add {
        #[arg(long)]
        id: String,
        #[arg(long)]
        url: String,
        /// The HMAC-SHA256 key of the `X-Atcr-Signature` header [env: ATCR_WEBHOOK_SECRET].
        #[arg(long, env = "ATCR_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// Event type (repeatable): manifest.pushed, tag.created, tag.moved, tag.deleted,
        /// repo.starred, scan.completed. Default: all.
        #[arg(long = "event")]
        events: Vec<String>,
        /// Only events about this DID or handle.
        #[arg(long)]
        did: Option<String>,
        /// Only events about repositories of this name.
        #[arg(long)]
        repository: Option<String>,
        /// Deliver the history the outbox keeps first (a week by default: `outbox_retention_hours`),
        /// not only events from now on.
        #[arg(long)]
        from_beginning: bool,
        /// Send up to this many waiting events per request (1-1000; the body is then
        /// `{"subscription", "deliveries": [{"id", "event"}, …]}`). Default: one event per request.
        #[arg(long)]
        batch_max: Option<u32>,
    },
    /// List subscriptions (config file and CLI), without secrets.
    List,
    /// Remove a subscription added with `add` (config-file ones are edited in the file). Adding
    /// the id again starts a new subscription: it does not resume the removed one's deliveries.
    Remove { id: String },
    /// Send one signed `ping` to a subscription now and print the answer.
    Test { id: String },
}

fn policy(config: &Config, flag: bool) -> UrlPolicy {
    UrlPolicy { allow_loopback: config.dev_allow_loopback || flag }
}

/// Every subscription: the config file's first, then the CLI's (an id the config file already
/// has is skipped with a warning).
pub fn all_subscriptions(config: &Config) -> Result<Vec<(Subscription, &'static str)>, webhooks::WebhookError> {
    let mut out: Vec<(Subscription, &'static str)> =
        config.webhooks.iter().cloned().map(|subscription| (subscription, "config")).collect();
    for subscription in SubscriptionFile::new(&config.data_dir).load()? {
        if out.iter().any(|(existing, _)| existing.id == subscription.id) {
            tracing::warn!(id = %subscription.id, "webhook id in both atcr.toml and webhooks.json: the config file's is used");
            continue;
        }
        out.push((subscription, "cli"));
    }
    Ok(out)
}

pub async fn run(config: &Config, args: WebhooksArgs) -> anyhow::Result<()> {
    let policy = policy(config, args.dev_allow_loopback);
    let file = SubscriptionFile::new(&config.data_dir);
    match args.command {
        WebhooksCommand::Add { id, url, secret, events, did, repository, from_beginning, batch_max } => {
            if config.webhooks.iter().any(|subscription| subscription.id == id) {
                anyhow::bail!("the config file already has a webhook {id:?}");
            }
            let subscription = Subscription {
                id: id.clone(),
                url,
                secret,
                events,
                did,
                repository,
                from_beginning,
                batch_max,
                generation: None,
            };
            file.add(subscription, &policy)?;
            println!("added webhook {id}");
        }
        WebhooksCommand::List => {
            let listed: Vec<Value> = all_subscriptions(config)?
                .into_iter()
                .map(|(subscription, source)| {
                    serde_json::json!({
                        "id": subscription.id,
                        "source": source,
                        "url": subscription.url,
                        "events": subscription.events,
                        "did": subscription.did,
                        "repository": subscription.repository,
                        "from_beginning": subscription.from_beginning,
                        "batch_max": subscription.batch_max,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&listed)?);
        }
        WebhooksCommand::Remove { id } => {
            if !file.remove(&id)? {
                anyhow::bail!(
                    "no webhook {id:?} in {} (config-file webhooks are removed there)",
                    config.data_dir.display()
                );
            }
            println!("removed webhook {id}");
        }
        WebhooksCommand::Test { id } => {
            let subscription = all_subscriptions(config)?
                .into_iter()
                .map(|(subscription, _)| subscription)
                .find(|subscription| subscription.id == id)
                .with_context(|| format!("no webhook {id:?}"))?;
            subscription.validate(&policy)?;
            let sender = Sender::new(policy, config.webhook_delivery.to_delivery())?;
            let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
            let delivery_id = format!("{id}-test-{now_ms}");
            let body = serde_json::json!({ "id": delivery_id, "subscription": id, "event": { "type": "ping" } });
            let body = body.to_string().into_bytes();
            let attempt = sender.attempt(&subscription, &delivery_id, "ping", &body).await;
            let latency_ms = attempt.latency.as_millis();
            match (attempt.error, attempt.response_code) {
                (None, code) => println!("delivered {delivery_id}: {} in {latency_ms} ms", code.unwrap_or(0)),
                (Some(error), _) => anyhow::bail!("test delivery {delivery_id} failed after {latency_ms} ms: {error}"),
            }
        }
    }
    Ok(())
}

/// The delivery store as the web layer reads it.
struct History {
    store: Arc<WebhookStore>,
    config: Config,
}

impl WebhookHistory for History {
    fn subscriptions(&self) -> Result<Vec<SubscriptionSummary>, String> {
        let subscriptions = all_subscriptions(&self.config).map_err(|error| error.to_string())?;
        subscriptions
            .into_iter()
            .map(|(subscription, source)| {
                Ok(SubscriptionSummary {
                    checkpoint: self.store.checkpoint(&subscription.state_key()).map_err(|error| error.to_string())?,
                    id: subscription.id,
                    source: source.to_string(),
                    events: subscription.events,
                    did: subscription.did,
                    repository: subscription.repository,
                })
            })
            .collect()
    }

    fn deliveries(&self, id: &str, limit: usize) -> Result<Option<Vec<Value>>, String> {
        let subscriptions = all_subscriptions(&self.config).map_err(|error| error.to_string())?;
        let Some((subscription, _)) = subscriptions.iter().find(|(subscription, _)| subscription.id == id) else {
            return Ok(None);
        };
        let records = self.store.deliveries(&subscription.state_key(), limit).map_err(|error| error.to_string())?;
        records
            .iter()
            .map(|record| serde_json::to_value(record).map_err(|error| error.to_string()))
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

/// Opens the delivery store, starts the classifier and the workers, and returns the routes of
/// the history for the HTTP server.
pub fn start(
    config: &Config,
    log: Arc<EventLog>,
    shutdown: CancellationToken,
) -> anyhow::Result<(JoinHandle<anyhow::Result<()>>, axum::Router)> {
    let store = Arc::new(
        WebhookStore::open(&config.data_dir)
            .with_context(|| format!("cannot open {}", WebhookStore::path(&config.data_dir).display()))?,
    );
    let policy = UrlPolicy { allow_loopback: config.dev_allow_loopback };
    let sender = Sender::new(policy, config.webhook_delivery.to_delivery())?;
    let for_workers = config.clone();
    let subscriptions = move || {
        all_subscriptions(&for_workers).map(|all| all.into_iter().map(|(subscription, _)| subscription).collect())
    };
    let task_store = store.clone();
    let task = tokio::spawn(async move { Ok(webhooks::run(log, task_store, sender, subscriptions, shutdown).await?) });
    let routes = atcr_web::webhooks::routes(Arc::new(History { store, config: config.clone() }));
    Ok((task, routes))
}
