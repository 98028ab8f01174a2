//! Webhooks: registry events (`manifest.pushed`, `tag.created`, `tag.moved`, `tag.deleted`,
//! `repo.starred`) delivered to operator-configured HTTP endpoints, signed with HMAC-SHA256.
//!
//! Why it exists: CI/CD pipelines want to hear about pushes and tag moves. It is one more
//! network-facing log consumer (like enrichment), and nothing it does feeds back into the log or
//! the projections.
//!
//! Two stages, both resumable from `<data_dir>/webhooks.redb` ([`WebhookStore`], kept by
//! `atcr_storage::webhooks`; this module decides what goes into it):
//! 1. The **classifier** reads the log in order and turns record events into webhook events with
//!    the pure function [`classify`]. Telling `tag.moved` from `tag.created` (and naming what a
//!    tag delete removed) needs each tag's previous target; the classifier keeps that small state
//!    itself (`tags`: did + rkey → repository, tag, digest). The events, the state and the
//!    classifier's log offset are committed in **one** transaction, so the outbox is always the
//!    deterministic image of a log prefix. Outbox keys are log offsets.
//! 2. One **delivery worker** per subscription reads the outbox from its own checkpoint, strictly
//!    in order: an event is retried (exponential backoff) until it is delivered or its attempts
//!    run out (dead letter); only then does the worker go on. The delivery record and the
//!    checkpoint past it are committed in one transaction *after* the attempt ends, so a crash
//!    (kill -9) at any point re-sends at most the event in flight, with the same delivery id
//!    `<subscription>-<offset>`: at-least-once, in order.
//!
//! Checkpoints live beside the delivery history in `webhooks.redb` rather than in the log's
//! `consumer_checkpoints`: they must commit atomically with the delivery record, and a log write
//! per delivery and subscription would make the log's fsyncs scale with fan-out.
//!
//! Subscriptions come from the config file (`[[webhooks]]`) and from `<data_dir>/webhooks.json`
//! (managed by `atcr webhooks add|remove`); the supervisor re-reads them every few seconds.
//! Every URL must pass [`UrlPolicy::check`], and requests resolve through the policy's DNS gate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use atcr_storage::records::{self, ManifestRecord, ScanRecord, StarRecord, TagRecord};
pub use atcr_storage::webhooks::{
    DeliveryRecord, OutboxEntry, Progress, ScanOutcome, TagTarget, WebhookEvent, WebhookStore,
};
use atcr_storage::{EventBody, EventLog, PutAction, StoredEvent};

use crate::policy::{PolicyRefused, UrlPolicy};

/// Every event type a subscription can ask for.
pub const EVENT_TYPES: [&str; 6] =
    ["manifest.pushed", "tag.created", "tag.moved", "tag.deleted", "repo.starred", "scan.completed"];
/// The signature header: `sha256=<hex HMAC-SHA256 of the body with the subscription's secret>`.
pub const SIGNATURE_HEADER: &str = "X-Atcr-Signature";
/// The delivery id header (also the body's `id`): `<subscription>-<log offset>`.
pub const DELIVERY_HEADER: &str = "X-Atcr-Delivery";
pub const EVENT_HEADER: &str = "X-Atcr-Event";
/// Batched subscriptions: how many events the request carries.
pub const BATCH_HEADER: &str = "X-Atcr-Batch-Size";
/// The largest `batch_max`.
pub const MAX_BATCH: u32 = 1000;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook store: {0}")]
    Store(String),
    #[error("storage: {0}")]
    Log(#[from] atcr_storage::StorageError),
    #[error("invalid subscription: {0}")]
    Invalid(String),
    #[error("subscriptions file {path}: {message}")]
    File { path: String, message: String },
}

fn store_error(error: impl std::fmt::Display) -> WebhookError {
    WebhookError::Store(error.to_string())
}

/// One operator-configured subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub url: String,
    pub secret: String,
    /// Event types wanted ([`EVENT_TYPES`]); empty: all of them.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only events about this DID or handle (for `repo.starred`: the starred repository's owner).
    #[serde(default)]
    pub did: Option<String>,
    /// Only events about a repository of this name.
    #[serde(default)]
    pub repository: Option<String>,
    /// A new subscription starts with the history the outbox keeps ([`OUTBOX_RETENTION`] by
    /// default) instead of events from now on.
    #[serde(default)]
    pub from_beginning: bool,
    /// Up to this many events per request, taken from what is already waiting (a subscription
    /// that keeps up still gets one event per request): the body is then
    /// `{"subscription", "deliveries": [{"id", "event"}, …]}`, always, even for one event.
    /// `None` (the default): one event per request, `{"id", "subscription", "event"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_max: Option<u32>,
    /// Which subscription of this id it is: set when `atcr webhooks add` adds it (the time, in
    /// microseconds since the Unix epoch). Its delivery state (checkpoint, history) is kept
    /// under [`Subscription::state_key`], so a subscription removed and added again under the
    /// same id starts afresh instead of resuming where the removed one stopped. `None` for the
    /// config file's subscriptions (their state follows the id) and for ones added before
    /// this existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

impl Subscription {
    /// Where the delivery store keeps this subscription's checkpoint and history: the id, and
    /// its [`generation`](Subscription::generation) when it has one (`#` cannot be in an id).
    pub fn state_key(&self) -> String {
        match self.generation {
            Some(generation) => format!("{}#{generation}", self.id),
            None => self.id.clone(),
        }
    }

    /// Checks the id, the event types and the URL (by the outbound policy).
    pub fn validate(&self, policy: &UrlPolicy) -> Result<(), WebhookError> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self.id.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
        if !id_ok {
            return Err(WebhookError::Invalid(format!("id {:?}: use 1-64 of A-Z a-z 0-9 - _", self.id)));
        }
        if self.secret.is_empty() {
            return Err(WebhookError::Invalid(format!("{}: empty secret", self.id)));
        }
        if let Some(batch_max) = self.batch_max
            && !(1..=MAX_BATCH).contains(&batch_max)
        {
            return Err(WebhookError::Invalid(format!("{}: batch_max {batch_max}: use 1-{MAX_BATCH}", self.id)));
        }
        if let Some(unknown) = self.events.iter().find(|event| !EVENT_TYPES.contains(&event.as_str())) {
            return Err(WebhookError::Invalid(format!(
                "{}: unknown event type {unknown:?}: use {}",
                self.id,
                EVENT_TYPES.join(", ")
            )));
        }
        policy.check(&self.url).map_err(|reason| WebhookError::Invalid(format!("{}: url refused: {reason}", self.id)))
    }

    /// Whether this subscription wants `event` (type, DID-or-handle and repository filters).
    pub fn wants(&self, event: &WebhookEvent) -> bool {
        if !self.events.is_empty() && !self.events.contains(&event.event_type) {
            return false;
        }
        if let Some(owner) = &self.did
            && *owner != event.did
            && event.handle.as_deref() != Some(owner.as_str())
        {
            return false;
        }
        self.repository.as_ref().is_none_or(|repository| *repository == event.repository)
    }
}

/// What one log event means for webhooks, and how the classifier state changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Classified {
    pub event: Option<WebhookEvent>,
    /// `(did\0rkey, new target)`; `None` removes the tag.
    pub tag_change: Option<(String, Option<TagTarget>)>,
    /// `(did, verified handle)`; `None` forgets the DID's handle.
    pub handle_change: Option<(String, Option<String>)>,
}

pub fn tag_key(did: &str, rkey: &str) -> String {
    format!("{did}\0{rkey}")
}

/// Classifies one log event. Pure: `previous_tag` is the target the tag record at the event's
/// `did` + `rkey` had (from the classifier's state), `handle` the owner's verified handle.
pub fn classify(stored: &StoredEvent, previous_tag: Option<&TagTarget>, handle: Option<&str>) -> Classified {
    let event = &stored.event;
    let make = |event_type: &str, repository: String| WebhookEvent {
        event_type: event_type.to_string(),
        offset: stored.offset,
        did: event.did.clone(),
        handle: handle.map(str::to_string),
        repository,
        tag: None,
        digest: None,
        previous_digest: None,
        actor: event.did.clone(),
        received_at_us: event.received_at_us,
        scan: None,
    };
    match &event.body {
        EventBody::RecordPut { collection, rkey, record, .. } if collection == records::TAG => {
            let Ok(tag) = TagRecord::decode(record) else { return Classified::default() };
            let target = TagTarget { repository: tag.repository.clone(), tag: tag.tag.clone(), digest: tag.digest };
            let event_type = match previous_tag {
                Some(previous) if previous.repository == target.repository && previous.tag == target.tag => {
                    (previous.digest != target.digest).then_some("tag.moved")
                }
                _ => Some("tag.created"),
            };
            let webhook = event_type.map(|event_type| WebhookEvent {
                tag: Some(target.tag.clone()),
                digest: Some(target.digest.clone()),
                previous_digest: (event_type == "tag.moved").then(|| previous_tag.map(|p| p.digest.clone())).flatten(),
                ..make(event_type, target.repository.clone())
            });
            Classified {
                event: webhook,
                tag_change: Some((tag_key(&event.did, rkey), Some(target))),
                handle_change: None,
            }
        }
        EventBody::RecordDeleted { collection, rkey, .. } if collection == records::TAG => {
            let Some(previous) = previous_tag else { return Classified::default() };
            Classified {
                event: Some(WebhookEvent {
                    tag: Some(previous.tag.clone()),
                    digest: Some(previous.digest.clone()),
                    ..make("tag.deleted", previous.repository.clone())
                }),
                tag_change: Some((tag_key(&event.did, rkey), None)),
                handle_change: None,
            }
        }
        EventBody::RecordPut { collection, action: PutAction::Create, record, .. }
            if collection == records::MANIFEST =>
        {
            let Ok(manifest) = ManifestRecord::decode(record) else { return Classified::default() };
            Classified {
                event: Some(WebhookEvent {
                    digest: Some(manifest.digest),
                    ..make("manifest.pushed", manifest.repository)
                }),
                ..Classified::default()
            }
        }
        EventBody::RecordPut { collection, action: PutAction::Create, record, .. } if collection == records::STAR => {
            let Ok(star) = StarRecord::decode(record) else { return Classified::default() };
            // About the starred repository: its owner is the event's `did`, the starrer the actor.
            // (The subject's handle is not looked up here; a handle filter matches the DID's.)
            Classified {
                event: Some(WebhookEvent {
                    did: star.subject_did,
                    handle: None,
                    actor: event.did.clone(),
                    ..make("repo.starred", star.subject_repository)
                }),
                ..Classified::default()
            }
        }
        // A hold wrote (or rewrote: a rescan) its verdict on a manifest. About the image's owner
        // and repository (what subscriptions filter on); the hold is the actor.
        EventBody::RecordPut { collection, rkey, record, .. } if collection == records::HOLD_SCAN => {
            let Ok(scan) = ScanRecord::decode(record, rkey) else { return Classified::default() };
            Classified {
                event: Some(WebhookEvent {
                    did: scan.owner_did,
                    handle: None,
                    digest: Some(scan.manifest_digest),
                    actor: event.did.clone(),
                    scan: Some(ScanOutcome {
                        hold: event.did.clone(),
                        status: scan.status.as_str().to_string(),
                        reason: scan.reason,
                        critical: scan.critical,
                        high: scan.high,
                        medium: scan.medium,
                        low: scan.low,
                        total: scan.total,
                        scanner: scan.scanner_version,
                    }),
                    ..make("scan.completed", scan.repository)
                }),
                ..Classified::default()
            }
        }
        EventBody::HandleChecked { handle, verified, .. } => Classified {
            handle_change: Some((event.did.clone(), verified.then(|| handle.clone()))),
            ..Classified::default()
        },
        _ => Classified::default(),
    }
}

/// `sha256=<hex>` of HMAC-SHA256(`body`, key `secret`).
pub fn signature(secret: &str, body: &[u8]) -> String {
    SigningKey::new(secret).sign(body)
}

/// A subscription's HMAC key, prepared once (the key schedule is not redone per delivery).
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

impl SigningKey {
    pub fn new(secret: &str) -> Self {
        match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
            Ok(mac) => SigningKey(mac),
            Err(_) => unreachable!("hmac accepts keys of any length"),
        }
    }

    /// `sha256=<hex>`, as [`signature`].
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// Checks a signature header as a receiver would (constant-time comparison).
pub fn verify_signature(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_part) = header.strip_prefix("sha256=") else { return false };
    let Ok(expected) = hex::decode(hex_part) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Timeouts, backoff and the retry limit of deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryConfig {
    /// Per request.
    pub timeout: Duration,
    /// Wait after the first failure; doubled after each further one…
    pub backoff_base: Duration,
    /// …up to this.
    pub backoff_max: Duration,
    /// Attempts before the delivery is dead-lettered.
    pub max_attempts: u32,
    /// How long the outbox keeps an event once every running subscription is past it
    /// ([`prune_outbox`]); `None` keeps everything.
    pub outbox_retention: Option<Duration>,
}

impl Default for DeliveryConfig {
    /// 10 s timeout; waits 1, 2, 4, 8, 16, 32, 60, 60, 60 s: ten attempts over about four
    /// minutes, so a receiver down for 30 s loses nothing.
    fn default() -> Self {
        DeliveryConfig {
            timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_attempts: 10,
            outbox_retention: Some(OUTBOX_RETENTION),
        }
    }
}

impl DeliveryConfig {
    /// The wait after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_base.saturating_mul(factor).min(self.backoff_max)
    }
}

/// Classifies the log into the outbox until `shutdown`. Polls every second besides waking on
/// appends, so it also follows a log written by another process.
pub async fn run_classifier(
    log: Arc<EventLog>,
    store: Arc<WebhookStore>,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    let (mut tags, mut handles) = store.load_state()?;
    let mut head = log.subscribe();
    let mut next = store.classified()?;
    loop {
        let chunk = log.read_from(next, 1024)?;
        if chunk.is_empty() {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = head.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let mut events = Vec::new();
        let mut tag_changes = BTreeMap::new();
        let mut handle_changes = BTreeMap::new();
        for stored in &chunk {
            let previous = match &stored.event.body {
                EventBody::RecordPut { collection, rkey, .. } | EventBody::RecordDeleted { collection, rkey, .. }
                    if collection == records::TAG =>
                {
                    tags.get(&tag_key(&stored.event.did, rkey)).cloned()
                }
                _ => None,
            };
            let handle = handles.get(&stored.event.did).cloned();
            let classified = classify(stored, previous.as_ref(), handle.as_deref());
            if let Some((key, target)) = classified.tag_change {
                match &target {
                    Some(target) => tags.insert(key.clone(), target.clone()),
                    None => tags.remove(&key),
                };
                tag_changes.insert(key, target);
            }
            if let Some((did, handle)) = classified.handle_change {
                match &handle {
                    Some(handle) => handles.insert(did.clone(), handle.clone()),
                    None => handles.remove(&did),
                };
                handle_changes.insert(did, handle);
            }
            events.extend(classified.event);
            next = stored.offset + 1;
        }
        store.commit_classified(&events, &tag_changes, &handle_changes, next)?;
        tracing::debug!(next, events = events.len(), "webhook events classified");
    }
}

/// Sends deliveries: signed JSON POSTs through the outbound policy.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: UrlPolicy,
    config: DeliveryConfig,
}

/// One attempt's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub response_code: Option<u16>,
    pub latency: Duration,
    /// `None`: delivered (2xx).
    pub error: Option<String>,
    /// Trying again cannot help (the policy refuses the URL).
    pub final_failure: bool,
}

impl Sender {
    pub fn new(policy: UrlPolicy, config: DeliveryConfig) -> Result<Self, WebhookError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(policy.resolver())
            .user_agent(concat!("atcr-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(store_error)?;
        Ok(Sender { client, policy, config })
    }

    pub fn config(&self) -> DeliveryConfig {
        self.config
    }

    /// The subscription ready to send to: its URL checked by the policy and parsed once, its
    /// HMAC key scheduled once.
    pub fn target(&self, subscription: &Subscription) -> Target {
        let url = match self.policy.check(&subscription.url) {
            Ok(()) => reqwest::Url::parse(&subscription.url).map_err(|error| format!("invalid url: {error}")),
            Err(reason) => Err(format!("refused by the outbound URL policy: {reason}")),
        };
        Target { subscription: subscription.clone(), url, key: SigningKey::new(&subscription.secret) }
    }

    /// The body of an unbatched delivery: `{"id", "subscription", "event"}`.
    pub fn body(subscription: &Subscription, event: &WebhookEvent) -> Vec<u8> {
        let json = serde_json::to_string(event).unwrap_or_default();
        let entry = Arc::new(OutboxEntry { event: event.clone(), json });
        Self::body_of(&subscription.id, std::slice::from_ref(&entry), false)
    }

    /// The body of a delivery of `entries`: the events' stored JSON embedded as it is (one
    /// serialization per event, whatever the fan-out). Unbatched (one entry):
    /// `{"id", "subscription", "event"}`; batched: `{"subscription", "deliveries": [{"id",
    /// "event"}, …]}`, each event with its own delivery id `<subscription>-<offset>`.
    pub fn body_of(subscription_id: &str, entries: &[Arc<OutboxEntry>], batched: bool) -> Vec<u8> {
        let size: usize = entries.iter().map(|entry| entry.json.len() + subscription_id.len() + 48).sum();
        let mut out = Vec::with_capacity(size + 64);
        let id = |out: &mut Vec<u8>, entry: &OutboxEntry| {
            // Subscription ids are validated ([A-Za-z0-9_-]); serde_json escapes anyway.
            let _ = serde_json::to_writer(&mut *out, &format!("{subscription_id}-{}", entry.event.offset));
        };
        if !batched && let Some(entry) = entries.first() {
            out.extend_from_slice(b"{\"id\":");
            id(&mut out, entry);
            out.extend_from_slice(b",\"subscription\":");
            let _ = serde_json::to_writer(&mut out, subscription_id);
            out.extend_from_slice(b",\"event\":");
            out.extend_from_slice(entry.json.as_bytes());
            out.push(b'}');
            return out;
        }
        out.extend_from_slice(b"{\"subscription\":");
        let _ = serde_json::to_writer(&mut out, subscription_id);
        out.extend_from_slice(b",\"deliveries\":[");
        for (index, entry) in entries.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"id\":");
            id(&mut out, entry);
            out.extend_from_slice(b",\"event\":");
            out.extend_from_slice(entry.json.as_bytes());
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// One POST of `body` (as `atcr webhooks test` sends it).
    pub async fn attempt(
        &self,
        subscription: &Subscription,
        delivery_id: &str,
        event_type: &str,
        body: &[u8],
    ) -> Attempt {
        self.send(&self.target(subscription), delivery_id, event_type, None, body).await
    }

    /// One POST of `body` to a prepared target; `batch`: the number of events it carries.
    async fn send(
        &self,
        target: &Target,
        delivery_id: &str,
        event_type: &str,
        batch: Option<usize>,
        body: &[u8],
    ) -> Attempt {
        let started = Instant::now();
        let url = match &target.url {
            Ok(url) => url.clone(),
            Err(reason) => {
                return Attempt {
                    response_code: None,
                    latency: started.elapsed(),
                    error: Some(reason.clone()),
                    final_failure: true,
                };
            }
        };
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, target.key.sign(body))
            .header(DELIVERY_HEADER, delivery_id)
            .header(EVENT_HEADER, event_type);
        if let Some(count) = batch {
            request = request.header(BATCH_HEADER, count);
        }
        let result = request.body(body.to_vec()).send().await;
        let latency = started.elapsed();
        match result {
            Ok(response) if response.status().is_success() => {
                Attempt { response_code: Some(response.status().as_u16()), latency, error: None, final_failure: false }
            }
            Ok(response) => Attempt {
                response_code: Some(response.status().as_u16()),
                latency,
                error: Some(format!("answered {}", response.status())),
                final_failure: false,
            },
            Err(error) => {
                let refused = refused_by_policy(&error);
                Attempt {
                    response_code: None,
                    latency,
                    final_failure: refused.is_some(),
                    error: Some(refused.unwrap_or_else(|| error_chain(&error))),
                }
            }
        }
    }

    /// Delivers `entries` (one, or a batch for a batched subscription) in one request, retrying
    /// the same body with backoff, until delivered or dead; `None` when `shutdown` came first
    /// (nothing is recorded: the events are sent again after a restart, with the same ids).
    pub async fn deliver(
        &self,
        target: &Target,
        entries: &[Arc<OutboxEntry>],
        shutdown: &CancellationToken,
    ) -> Option<DeliveryRecord> {
        let (first, last) = (entries.first()?, entries.last()?);
        let subscription = &target.subscription;
        let batched = subscription.batch_max.is_some();
        let delivery_id = format!("{}-{}", subscription.id, first.event.offset);
        let event_type = if batched { "batch" } else { first.event.event_type.as_str() };
        let body = Self::body_of(&subscription.id, entries, batched);
        let batch = batched.then_some(entries.len());
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return None,
                attempt = self.send(target, &delivery_id, event_type, batch, &body) => attempt,
            };
            let delivered = attempt.error.is_none();
            if delivered || attempt.final_failure || attempts >= self.config.max_attempts {
                let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
                let received_ms = u64::try_from(first.event.received_at_us / 1000).unwrap_or(0);
                if !delivered {
                    tracing::warn!(subscription = %subscription.id, delivery = %delivery_id, events = entries.len(), attempts, error = ?attempt.error, "webhook delivery dead-lettered");
                }
                return Some(DeliveryRecord {
                    delivery_id,
                    offset: first.event.offset,
                    event_type: event_type.to_string(),
                    status: if delivered { "delivered" } else { "dead" }.to_string(),
                    attempts,
                    response_code: attempt.response_code,
                    latency_ms: attempt.latency.as_millis() as u64,
                    end_to_end_ms: now_ms.saturating_sub(received_ms),
                    error: attempt.error,
                    finished_at_ms: now_ms,
                    last_offset: batched.then_some(last.event.offset),
                    batch_size: batch.map(|count| count as u32),
                });
            }
            let wait = self.config.backoff(attempts);
            tracing::info!(subscription = %subscription.id, delivery = %delivery_id, attempts, error = ?attempt.error, wait_ms = wait.as_millis() as u64, "webhook delivery failed, retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A subscription prepared by [`Sender::target`].
pub struct Target {
    subscription: Subscription,
    /// `Err`: why it cannot be sent to (a final failure).
    url: Result<reqwest::Url, String>,
    key: SigningKey,
}

/// An error with its causes (reqwest's own message hides them: "error sending request").
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn refused_by_policy(error: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<PolicyRefused>() {
            return Some(format!("refused by the outbound URL policy: {}", refused.0));
        }
        source = current.source();
    }
    None
}

/// Commits the progress the workers send in groups: whatever queued while the last
/// transaction committed goes into the next one, so fan-out to many subscriptions costs a few
/// fsyncs per second, not one per delivery. A worker never waits for it: a crash before the
/// commit only means the event is sent again, with the same delivery id (at-least-once).
pub async fn run_progress_committer(
    store: Arc<WebhookStore>,
    mut progress: mpsc::UnboundedReceiver<Progress>,
) -> Result<(), WebhookError> {
    while let Some(first) = progress.recv().await {
        let mut group = vec![first];
        while group.len() < 8192 {
            match progress.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.commit_group(&group))
            .await
            .map_err(|error| WebhookError::Store(format!("progress commit task: {error}")))??;
    }
    Ok(())
}

/// Whether the delivery state kept under `key` belongs to no subscription in `current` and can
/// go: only the state of a subscription with a generation, which is never added again (the same
/// id added again is a new generation). A worker stopped a moment ago may still commit its last
/// progress under its old key; that is forgotten at the next look.
fn is_stale_state(key: &str, current: &HashSet<String>) -> bool {
    key.contains('#') && !current.contains(key)
}

/// How long the outbox keeps events by default: a week of history for a subscription added
/// `from_beginning`. Kept whole, the outbox grew with every registry event for good, with or
/// without subscriptions.
pub const OUTBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often [`run`] prunes the outbox.
const OUTBOX_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Removes the outbox events received more than `retention` before `now_us` that every running
/// subscription (`running`: their state keys) is past. Removes nothing while one of them has
/// no checkpoint yet: it is starting, maybe from the beginning. A subscription that is not
/// running (removed from the config file, to come back later) does not hold events back: it
/// resumes at the oldest event still kept.
pub fn prune_outbox(
    store: &WebhookStore,
    retention: Duration,
    running: &[String],
    now_us: i64,
) -> Result<u64, WebhookError> {
    let mut below = u64::MAX;
    for state_key in running {
        match store.checkpoint(state_key)? {
            Some(checkpoint) => below = below.min(checkpoint),
            None => return Ok(0),
        }
    }
    let retention_us = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    Ok(store.prune_outbox(now_us.saturating_sub(retention_us), below)?)
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
}

/// Where a subscription's deliveries start: its checkpoint, or for a subscription the store
/// has not seen (a new id, or an id added again: a new [`Subscription::state_key`]) the
/// beginning of the outbox (`from_beginning`) or its head, committed as its checkpoint.
fn start_checkpoint(store: &WebhookStore, subscription: &Subscription) -> Result<u64, WebhookError> {
    let state_key = subscription.state_key();
    if let Some(checkpoint) = store.checkpoint(&state_key)? {
        return Ok(checkpoint);
    }
    let start = if subscription.from_beginning { 0 } else { store.classified()? };
    store.commit_progress(&state_key, None, start)?;
    Ok(start)
}

/// Delivers one subscription's events in order until `shutdown`; progress goes to the
/// committer ([`run_progress_committer`]).
pub async fn run_subscription(
    subscription: Subscription,
    store: Arc<WebhookStore>,
    sender: Sender,
    progress: mpsc::UnboundedSender<Progress>,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    let state_key = subscription.state_key();
    let report = |record: Option<DeliveryRecord>, checkpoint: u64| {
        let sent = progress.send(Progress { subscription: state_key.clone(), record, checkpoint });
        sent.map_err(|_| WebhookError::Store("the progress committer stopped".into()))
    };
    let mut head = store.subscribe_outbox();
    let mut next = start_checkpoint(&store, &subscription)?;
    tracing::info!(subscription = %subscription.id, from = next, "webhook deliveries started");
    let target = sender.target(&subscription);
    let batch_max = subscription.batch_max.map_or(1, |count| count.clamp(1, MAX_BATCH) as usize);
    let read_ahead = batch_max.max(256);
    loop {
        // The head is read before the outbox: every event below it was committed before this
        // read, so an empty read proves there is nothing for us below it. (Read after, a batch
        // classified in between would be skipped unread.)
        let head_before = *head.borrow_and_update();
        let entries = store.outbox_entries_from(next, read_ahead)?;
        if entries.is_empty() {
            // Skipped events (filters, offsets that classified to nothing) are passed for good.
            if head_before > next {
                next = head_before;
                report(None, next)?;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = head.changed() => if changed.is_err() { return Ok(()) },
            }
            continue;
        }
        // In outbox order; a batch is what is waiting now, up to `batch_max`, so the checkpoint
        // after it passes only events whose delivery it records.
        let mut batch: Vec<Arc<OutboxEntry>> = Vec::new();
        let mut scanned = next;
        for entry in entries {
            scanned = entry.event.offset + 1;
            if subscription.wants(&entry.event) {
                batch.push(entry);
            }
            if batch.len() >= batch_max {
                let Some(record) = sender.deliver(&target, &batch, &shutdown).await else { return Ok(()) };
                batch.clear();
                next = scanned;
                report(Some(record), next)?;
            }
        }
        if !batch.is_empty() {
            let Some(record) = sender.deliver(&target, &batch, &shutdown).await else { return Ok(()) };
            report(Some(record), scanned)?;
        }
        next = scanned;
    }
}

/// Where the subscriptions `atcr webhooks add|remove` manage live: `<data_dir>/webhooks.json`.
pub struct SubscriptionFile {
    path: PathBuf,
}

impl SubscriptionFile {
    pub fn new(data_dir: &Path) -> Self {
        SubscriptionFile { path: data_dir.join("webhooks.json") }
    }

    fn error(&self, message: impl std::fmt::Display) -> WebhookError {
        WebhookError::File { path: self.path.display().to_string(), message: message.to_string() }
    }

    pub fn load(&self) -> Result<Vec<Subscription>, WebhookError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| self.error(error)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(self.error(error)),
        }
    }

    fn save(&self, subscriptions: &[Subscription]) -> Result<(), WebhookError> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| self.error(error))?;
        }
        let json = serde_json::to_vec_pretty(subscriptions).map_err(|error| self.error(error))?;
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, json).map_err(|error| self.error(error))?;
        std::fs::rename(&temporary, &self.path).map_err(|error| self.error(error))
    }

    /// Adds a validated subscription, as a new [`generation`](Subscription::generation) of its
    /// id; the id must not be in the file.
    pub fn add(&self, subscription: Subscription, policy: &UrlPolicy) -> Result<(), WebhookError> {
        subscription.validate(policy)?;
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
        let subscription = Subscription { generation: Some(now_us), ..subscription };
        let mut subscriptions = self.load()?;
        if subscriptions.iter().any(|existing| existing.id == subscription.id) {
            return Err(WebhookError::Invalid(format!("a subscription {:?} exists", subscription.id)));
        }
        subscriptions.push(subscription);
        self.save(&subscriptions)
    }

    /// Removes a subscription; false when there was none with that id.
    pub fn remove(&self, id: &str) -> Result<bool, WebhookError> {
        let mut subscriptions = self.load()?;
        let before = subscriptions.len();
        subscriptions.retain(|subscription| subscription.id != id);
        if subscriptions.len() == before {
            return Ok(false);
        }
        self.save(&subscriptions)?;
        Ok(true)
    }
}

/// Runs the classifier and one worker per subscription until `shutdown`. `subscriptions` is
/// asked again every two seconds; a changed or removed subscription's worker is restarted or
/// stopped. The state of a subscription added with a generation (the CLI's) is forgotten once
/// it is no longer wanted ([`is_stale_state`]); that of one without (the config file's) stays
/// under its id, for when it comes back.
pub async fn run<F>(
    log: Arc<EventLog>,
    store: Arc<WebhookStore>,
    sender: Sender,
    subscriptions: F,
    shutdown: CancellationToken,
) -> Result<(), WebhookError>
where
    F: Fn() -> Result<Vec<Subscription>, WebhookError> + Send + 'static,
{
    let classifier = tokio::spawn(run_classifier(log, store.clone(), shutdown.clone()));
    let (progress, progress_receiver) = mpsc::unbounded_channel();
    let mut committer = tokio::spawn(run_progress_committer(store.clone(), progress_receiver));
    let mut workers: HashMap<String, (Subscription, CancellationToken)> = HashMap::new();
    let retention = sender.config.outbox_retention;
    let mut pruning: Option<tokio::task::JoinHandle<()>> = None;
    let mut pruned_at: Option<Instant> = None;
    loop {
        match subscriptions() {
            Ok(wanted) => {
                let current: HashSet<String> = wanted.iter().map(Subscription::state_key).collect();
                if let Err(error) = store.forget_states(|key| is_stale_state(key, &current)) {
                    tracing::warn!(%error, "state of removed webhook subscriptions not forgotten");
                }
                workers.retain(|id, (subscription, token)| {
                    let keep = wanted.iter().any(|w| w == subscription);
                    if !keep {
                        tracing::info!(subscription = %id, "webhook subscription stopped");
                        token.cancel();
                    }
                    keep
                });
                for subscription in wanted {
                    if workers.contains_key(&subscription.id) {
                        continue;
                    }
                    if let Err(error) = subscription.validate(&sender.policy) {
                        tracing::warn!(%error, "webhook subscription skipped");
                        continue;
                    }
                    let token = shutdown.child_token();
                    let task = run_subscription(
                        subscription.clone(),
                        store.clone(),
                        sender.clone(),
                        progress.clone(),
                        token.clone(),
                    );
                    let id = subscription.id.clone();
                    tokio::spawn(async move {
                        if let Err(error) = task.await {
                            tracing::error!(subscription = %id, %error, "webhook deliveries stopped");
                        }
                    });
                    workers.insert(subscription.id.clone(), (subscription, token));
                }
            }
            Err(error) => tracing::warn!(%error, "webhook subscriptions not reloaded"),
        }
        if let Some(retention) = retention
            && pruning.as_ref().is_none_or(|task| task.is_finished())
            && pruned_at.is_none_or(|at| at.elapsed() >= OUTBOX_PRUNE_EVERY)
        {
            pruned_at = Some(Instant::now());
            let running: Vec<String> = workers.values().map(|(subscription, _)| subscription.state_key()).collect();
            let store = store.clone();
            // Off the runtime: a large backlog takes a while (in short transactions).
            pruning =
                Some(tokio::task::spawn_blocking(move || match prune_outbox(&store, retention, &running, now_us()) {
                    Ok(0) => {}
                    Ok(pruned) => tracing::info!(pruned, "old webhook outbox events removed"),
                    Err(error) => tracing::warn!(%error, "webhook outbox not pruned"),
                }));
        }
        if classifier.is_finished() {
            return match classifier.await {
                Ok(result) => result,
                Err(error) => Err(WebhookError::Store(format!("classifier task: {error}"))),
            };
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            result = &mut committer => return match result {
                Ok(Ok(())) => Err(WebhookError::Store("the progress committer stopped".into())),
                Ok(Err(error)) => Err(error),
                Err(error) => Err(WebhookError::Store(format!("progress commit task: {error}"))),
            },
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    // The workers stop with `shutdown` and drop their senders; the committer then commits what
    // they reported and ends (bounded: a worker mid-request stops at once on cancellation).
    drop(progress);
    match tokio::time::timeout(Duration::from_secs(10), committer).await {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => Err(WebhookError::Store(format!("progress commit task: {error}"))),
        Err(_) => {
            tracing::warn!("webhook progress not committed within 10 s of shutdown: those events are sent again");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atcr_storage::{Event, Source};

    fn put(
        offset: u64,
        did: &str,
        collection: &str,
        rkey: &str,
        action: PutAction,
        record: serde_json::Value,
    ) -> StoredEvent {
        let record = serde_ipld_dagcbor::to_vec(&record).expect("cbor");
        StoredEvent {
            offset,
            event: Event {
                source: Source::Firehose,
                upstream_seq: None,
                did: did.into(),
                rev: None,
                upstream_time: None,
                received_at_us: 0,
                commit_cid: None,
                body: EventBody::RecordPut {
                    collection: collection.into(),
                    rkey: rkey.into(),
                    cid: "bafy".into(),
                    action,
                    record,
                },
            },
        }
    }

    fn digest(byte: char) -> String {
        format!("sha256:{}", byte.to_string().repeat(64))
    }

    fn tag_record(tag: &str, target: &str) -> serde_json::Value {
        serde_json::json!({"$type": "io.atcr.tag", "repository": "app", "tag": tag, "manifestDigest": target, "createdAt": "2026-01-01T00:00:00Z"})
    }

    #[test]
    fn tags_are_created_moved_and_deleted_by_their_previous_target() {
        let created =
            put(1, "did:plc:a", records::TAG, "app_latest", PutAction::Create, tag_record("latest", &digest('a')));
        let first = classify(&created, None, Some("alice.test"));
        let event = first.event.expect("created");
        assert_eq!(event.event_type, "tag.created");
        assert_eq!(event.handle.as_deref(), Some("alice.test"));
        let (_, target) = first.tag_change.expect("state");
        let target = target.expect("target");

        let moved =
            put(2, "did:plc:a", records::TAG, "app_latest", PutAction::Update, tag_record("latest", &digest('b')));
        let second = classify(&moved, Some(&target), None).event.expect("moved");
        assert_eq!(second.event_type, "tag.moved");
        assert_eq!(second.previous_digest, Some(digest('a')));
        assert_eq!(second.digest, Some(digest('b')));

        // Rewritten with the same target: nothing moved, nothing sent.
        let same =
            put(3, "did:plc:a", records::TAG, "app_latest", PutAction::Update, tag_record("latest", &digest('a')));
        assert_eq!(classify(&same, Some(&target), None).event, None);

        let deleted = StoredEvent {
            offset: 4,
            event: Event {
                body: EventBody::RecordDeleted {
                    collection: records::TAG.into(),
                    rkey: "app_latest".into(),
                    prev_cid: None,
                },
                ..created.event.clone()
            },
        };
        let gone = classify(&deleted, Some(&target), None);
        assert_eq!(gone.event.as_ref().map(|event| event.event_type.as_str()), Some("tag.deleted"));
        assert_eq!(gone.event.and_then(|event| event.tag), Some("latest".into()));
        assert_eq!(gone.tag_change, Some((tag_key("did:plc:a", "app_latest"), None)));
        // A delete of a tag the classifier never saw names nothing: no event.
        assert_eq!(classify(&deleted, None, None).event, None);
    }

    #[test]
    fn manifests_and_stars_are_classified_on_create_only() {
        let manifest = serde_json::json!({"$type": "io.atcr.manifest", "repository": "app", "digest": digest('c'), "mediaType": "application/vnd.oci.image.manifest.v1+json"});
        let pushed = put(5, "did:plc:a", records::MANIFEST, "c", PutAction::Create, manifest.clone());
        let event = classify(&pushed, None, None).event.expect("pushed");
        assert_eq!((event.event_type.as_str(), event.repository.as_str()), ("manifest.pushed", "app"));
        assert_eq!(
            classify(&put(6, "did:plc:a", records::MANIFEST, "c", PutAction::Update, manifest), None, None).event,
            None
        );

        let star = serde_json::json!({"$type": "io.atcr.sailor.star", "subject": {"did": "did:plc:a", "repository": "app"}, "createdAt": "2026-01-01T00:00:00Z"});
        let starred = classify(&put(7, "did:plc:b", records::STAR, "s1", PutAction::Create, star), None, None)
            .event
            .expect("starred");
        assert_eq!(starred.event_type, "repo.starred");
        assert_eq!((starred.did.as_str(), starred.actor.as_str()), ("did:plc:a", "did:plc:b"));
        // Garbage records classify to nothing instead of failing.
        let garbage = put(8, "did:plc:a", records::TAG, "x", PutAction::Create, serde_json::json!({"nope": 1}));
        assert_eq!(classify(&garbage, None, None), Classified::default());
    }

    #[test]
    fn a_hold_scan_is_a_scan_completed_about_the_image_owner() {
        let hex = "d".repeat(64);
        let scan = serde_json::json!({
            "$type": "io.atcr.hold.scan",
            "manifest": format!("at://did:plc:owner/io.atcr.manifest/{hex}"),
            "repository": "app", "userDid": "did:plc:owner",
            "critical": 1, "high": 2, "medium": 3, "low": 4, "total": 10,
            "scannerVersion": "atcr-scanner-v1.0.0", "scannedAt": "2026-01-01T00:00:00Z",
        });
        let first = classify(
            &put(9, "did:web:hold.test", records::HOLD_SCAN, &hex, PutAction::Create, scan.clone()),
            None,
            None,
        )
        .event
        .expect("scan.completed");
        assert_eq!(first.event_type, "scan.completed");
        assert_eq!((first.did.as_str(), first.repository.as_str()), ("did:plc:owner", "app"));
        assert_eq!(first.actor, "did:web:hold.test");
        assert_eq!(first.digest, Some(digest('d')));
        let outcome = first.scan.expect("outcome");
        assert_eq!((outcome.status.as_str(), outcome.critical, outcome.total), ("ok", 1, 10));
        assert_eq!(outcome.hold, "did:web:hold.test");
        // A rescan (the record rewritten) completes again.
        let rescan = serde_json::json!({
            "$type": "io.atcr.hold.scan",
            "manifest": format!("at://did:plc:owner/io.atcr.manifest/{hex}"),
            "repository": "app", "userDid": "did:plc:owner", "status": "failed", "reason": "timeout",
            "critical": 0, "high": 0, "medium": 0, "low": 0, "total": 0,
            "scannerVersion": "atcr-scanner-v1.0.0", "scannedAt": "2026-01-02T00:00:00Z",
        });
        let again =
            classify(&put(10, "did:web:hold.test", records::HOLD_SCAN, &hex, PutAction::Update, rescan), None, None)
                .event
                .and_then(|event| event.scan)
                .expect("rescan");
        assert_eq!((again.status.as_str(), again.reason.as_deref()), ("failed", Some("timeout")));
        // Other events carry no scan (and their JSON no `scan` key).
        let manifest = serde_json::json!({"$type": "io.atcr.manifest", "repository": "app", "digest": digest('c'), "mediaType": "application/vnd.oci.image.manifest.v1+json"});
        let pushed = classify(&put(11, "did:plc:a", records::MANIFEST, "c", PutAction::Create, manifest), None, None)
            .event
            .expect("pushed");
        assert!(!serde_json::to_string(&pushed).expect("json").contains("\"scan\""));
    }

    fn subscription() -> Subscription {
        Subscription {
            id: "ci".into(),
            url: "https://hooks.example.com/atcr".into(),
            secret: "s3cret".into(),
            events: Vec::new(),
            did: None,
            repository: None,
            from_beginning: false,
            batch_max: None,
            generation: None,
        }
    }

    fn event(event_type: &str, did: &str, handle: Option<&str>, repository: &str) -> WebhookEvent {
        WebhookEvent {
            event_type: event_type.into(),
            offset: 0,
            did: did.into(),
            handle: handle.map(str::to_string),
            repository: repository.into(),
            tag: None,
            digest: None,
            previous_digest: None,
            actor: did.into(),
            received_at_us: 0,
            scan: None,
        }
    }

    #[test]
    fn filters_match_type_did_or_handle_and_repository() {
        let all = subscription();
        assert!(all.wants(&event("tag.moved", "did:plc:a", None, "app")));
        let typed = Subscription { events: vec!["tag.created".into()], ..subscription() };
        assert!(typed.wants(&event("tag.created", "did:plc:a", None, "app")));
        assert!(!typed.wants(&event("tag.moved", "did:plc:a", None, "app")));
        let by_handle = Subscription { did: Some("alice.test".into()), ..subscription() };
        assert!(by_handle.wants(&event("tag.created", "did:plc:a", Some("alice.test"), "app")));
        assert!(!by_handle.wants(&event("tag.created", "did:plc:a", None, "app")));
        let by_did = Subscription { did: Some("did:plc:a".into()), repository: Some("app".into()), ..subscription() };
        assert!(by_did.wants(&event("manifest.pushed", "did:plc:a", None, "app")));
        assert!(!by_did.wants(&event("manifest.pushed", "did:plc:a", None, "other")));
        assert!(!by_did.wants(&event("manifest.pushed", "did:plc:b", None, "app")));
    }

    #[test]
    fn subscriptions_are_validated_with_the_url_policy() {
        let strict = UrlPolicy::default();
        assert!(subscription().validate(&strict).is_ok());
        let loopback = Subscription { url: "http://127.0.0.1:9/hook".into(), ..subscription() };
        assert!(loopback.validate(&strict).is_err());
        assert!(loopback.validate(&UrlPolicy { allow_loopback: true }).is_ok());
        let private = Subscription { url: "https://10.0.0.1/hook".into(), ..subscription() };
        assert!(private.validate(&UrlPolicy { allow_loopback: true }).is_err());
        assert!(Subscription { id: "a b".into(), ..subscription() }.validate(&strict).is_err());
        assert!(Subscription { secret: String::new(), ..subscription() }.validate(&strict).is_err());
        let scans = Subscription { events: vec!["scan.completed".into()], ..subscription() };
        assert!(scans.validate(&strict).is_ok());
        let unknown = Subscription { events: vec!["scan.started".into()], ..subscription() };
        assert!(unknown.validate(&strict).unwrap_err().to_string().contains("scan.started"));
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let signed = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(signed, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(verify_signature("Jefe", b"what do ya want for nothing?", &signed));
        assert!(!verify_signature("Jefe", b"what do ya want for nothing!", &signed));
        assert!(!verify_signature("other", b"what do ya want for nothing?", &signed));
        assert!(!verify_signature("Jefe", b"x", "md5=00"));
    }

    #[test]
    fn bodies_embed_the_stored_event_json_unbatched_or_batched() {
        let entries: Vec<Arc<OutboxEntry>> = [3u64, 7]
            .into_iter()
            .map(|offset| {
                let event = WebhookEvent { offset, ..event("manifest.pushed", "did:plc:a", None, "app") };
                Arc::new(OutboxEntry { json: serde_json::to_string(&event).expect("json"), event })
            })
            .collect();
        let single: serde_json::Value =
            serde_json::from_slice(&Sender::body_of("ci", &entries[..1], false)).expect("single body");
        assert_eq!(single["id"], "ci-3");
        assert_eq!(single["subscription"], "ci");
        assert_eq!(serde_json::from_value::<WebhookEvent>(single["event"].clone()).expect("event"), entries[0].event);
        // The unbatched body is the one `Sender::body` builds for the same event.
        assert_eq!(Sender::body(&subscription(), &entries[0].event), Sender::body_of("ci", &entries[..1], false));
        let batch: serde_json::Value =
            serde_json::from_slice(&Sender::body_of("ci", &entries, true)).expect("batch body");
        let ids: Vec<&str> = batch["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .map(|delivery| delivery["id"].as_str().expect("id"))
            .collect();
        assert_eq!(ids, ["ci-3", "ci-7"]);
        assert_eq!(batch["deliveries"][1]["event"]["offset"], 7);
        // The prepared key signs as `signature` does.
        let body = Sender::body_of("ci", &entries, true);
        assert_eq!(SigningKey::new("s3cret").sign(&body), signature("s3cret", &body));
        assert!(Subscription { batch_max: Some(0), ..subscription() }.validate(&UrlPolicy::default()).is_err());
        assert!(Subscription { batch_max: Some(1001), ..subscription() }.validate(&UrlPolicy::default()).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let config = DeliveryConfig::default();
        let waits: Vec<u64> = (1..=9).map(|attempt| config.backoff(attempt).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(config.backoff(200), Duration::from_secs(60));
        // Ten attempts span more than the 30 s outage the acceptance test names.
        assert!(
            (1..config.max_attempts).map(|attempt| config.backoff(attempt)).sum::<Duration>() > Duration::from_secs(30)
        );
    }

    /// A loopback HTTP/1.1 responder: 500 for bodies that contain `fail`, else 200.
    async fn respond(listener: tokio::net::TcpListener, fail: &'static str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(read) = stream.read(&mut chunk).await else { return };
                    if read == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..read]);
                    let text = String::from_utf8_lossy(&buffer).to_string();
                    let Some(end) = text.find("\r\n\r\n") else { continue };
                    let length = text[..end]
                        .lines()
                        .find_map(|line| {
                            line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|value| value.parse::<usize>().ok())
                        .unwrap_or(0);
                    if buffer.len() < end + 4 + length {
                        continue;
                    }
                    let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]).to_string();
                    buffer.drain(..end + 4 + length);
                    let status = if body.contains(fail) { "500 Internal Server Error" } else { "200 OK" };
                    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// Three pushes (digests a…, b…, c…; b… always answered 500) delivered to one subscription
    /// with `batch_max`; returns the history (newest first) once it has `records` entries.
    async fn deliver_three(batch_max: Option<u32>, records: usize) -> Vec<DeliveryRecord> {
        // reqwest is built with `rustls-no-provider`: a client needs a process-wide provider.
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Arc::new(EventLog::open(&dir.path().join("log.redb")).expect("log"));
        let events = ['a', 'b', 'c']
            .into_iter()
            .enumerate()
            .map(|(index, byte)| {
                let manifest = serde_json::json!({"$type": "io.atcr.manifest", "repository": "app", "digest": digest(byte), "mediaType": "application/vnd.oci.image.manifest.v1+json"});
                put(index as u64, "did:plc:a", records::MANIFEST, &byte.to_string(), PutAction::Create, manifest).event
            })
            .collect();
        log.append(atcr_storage::AppendBatch { events, ..Default::default() }).expect("append");
        let store = Arc::new(WebhookStore::open(dir.path()).expect("store"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("address"));
        // The second push (digest b…) always fails.
        tokio::spawn(respond(listener, "bbbbbbbb"));
        let config = DeliveryConfig {
            timeout: Duration::from_secs(2),
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            max_attempts: 3,
            ..DeliveryConfig::default()
        };
        let sender = Sender::new(UrlPolicy { allow_loopback: true }, config).expect("sender");
        let subscription = Subscription { url, from_beginning: true, batch_max, ..subscription() };
        let shutdown = CancellationToken::new();
        let pipeline =
            tokio::spawn(run(log, store.clone(), sender, move || Ok(vec![subscription.clone()]), shutdown.clone()));
        let deadline = Instant::now() + Duration::from_secs(20);
        let history = loop {
            let history = store.deliveries("ci", 10).expect("history");
            if history.len() == records || Instant::now() > deadline {
                break history;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        shutdown.cancel();
        pipeline.await.expect("join").expect("pipeline");
        assert_eq!(store.checkpoint("ci").expect("checkpoint"), Some(3));
        history
    }

    #[tokio::test]
    async fn a_delivery_that_keeps_failing_is_dead_lettered_and_the_next_goes_on() {
        let history = deliver_three(None, 3).await;
        let summary: Vec<(u64, &str, u32, Option<u16>)> = history
            .iter()
            .map(|record| (record.offset, record.status.as_str(), record.attempts, record.response_code))
            .collect();
        assert_eq!(
            summary,
            [(2, "delivered", 1, Some(200)), (1, "dead", 3, Some(500)), (0, "delivered", 1, Some(200))]
        );
    }

    #[tokio::test]
    async fn a_batched_subscription_gets_waiting_events_together_in_order() {
        // The three pushes are classified in one chunk: batches [0, 1] (dead: it holds b…) and [2].
        let history = deliver_three(Some(2), 2).await;
        type Row<'a> = (u64, Option<u64>, Option<u32>, &'a str, u32);
        let summary: Vec<Row> = history
            .iter()
            .map(|record| {
                (record.offset, record.last_offset, record.batch_size, record.status.as_str(), record.attempts)
            })
            .collect();
        assert_eq!(summary, [(2, Some(2), Some(1), "delivered", 1), (0, Some(1), Some(2), "dead", 3)]);
        assert_eq!(history[1].delivery_id, "ci-0");
    }

    /// A subscription removed and added again under its id is a new generation: it starts where
    /// a new subscription starts, not at the checkpoint the removed one reached; the same
    /// generation resumes, and a subscription without one keeps its state under the bare id.
    #[test]
    fn an_id_added_again_starts_afresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = SubscriptionFile::new(dir.path());
        let policy = UrlPolicy::default();
        file.add(subscription(), &policy).expect("add");
        let first = file.load().expect("load").remove(0);
        assert!(file.remove(&first.id).expect("remove"));
        file.add(Subscription { from_beginning: true, ..subscription() }, &policy).expect("add again");
        let again = file.load().expect("load").remove(0);
        assert_eq!(again.id, first.id);
        assert_ne!(again.state_key(), first.state_key(), "a new generation");
        assert!(first.state_key().starts_with(&format!("{}#", first.id)));

        let store = WebhookStore::open(dir.path()).expect("store");
        store.commit_classified(&[], &BTreeMap::new(), &BTreeMap::new(), 40).expect("classified");
        assert_eq!(start_checkpoint(&store, &first).expect("start"), 40, "a new subscription starts at the head");
        store.commit_progress(&first.state_key(), None, 45).expect("progress");
        assert_eq!(start_checkpoint(&store, &first).expect("start"), 45, "the same generation resumes");
        assert_eq!(start_checkpoint(&store, &again).expect("start"), 0, "added again: from the beginning, as asked");
        let configured = subscription();
        store.commit_progress(&configured.id, None, 7).expect("progress");
        assert_eq!(configured.state_key(), configured.id);
        assert_eq!(start_checkpoint(&store, &configured).expect("start"), 7, "no generation: the id's state");

        // Once the first generation is no longer wanted, its state goes; the current one's and
        // the config file's (no generation) stay.
        let current: HashSet<String> = [again.state_key(), configured.state_key()].into();
        assert!(is_stale_state(&first.state_key(), &current));
        assert!(!is_stale_state(&again.state_key(), &current));
        assert!(!is_stale_state("gone-from-the-config-file", &current), "no generation: kept for its return");
        assert_eq!(store.forget_states(|key| is_stale_state(key, &current)).expect("forget"), 1);
        assert_eq!(store.checkpoint(&first.state_key()).expect("checkpoint"), None);
        assert_eq!(store.checkpoint(&again.state_key()).expect("checkpoint"), Some(0));
        assert_eq!(store.checkpoint(&configured.id).expect("checkpoint"), Some(7));
    }

    #[test]
    fn the_outbox_keeps_what_a_running_subscription_has_not_passed_and_what_is_recent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = WebhookStore::open(dir.path()).expect("store");
        let hour_us = 3_600_000_000i64;
        let now = 1_000 * hour_us;
        // Offsets 0..10, received 10, 9, …, 1 hours ago.
        let events: Vec<WebhookEvent> = (0..10u64)
            .map(|offset| WebhookEvent {
                offset,
                received_at_us: now - (10 - offset as i64) * hour_us,
                ..event("tag.created", "did:plc:a", None, "app")
            })
            .collect();
        store.commit_classified(&events, &BTreeMap::new(), &BTreeMap::new(), 10).expect("classified");
        let kept = |store: &WebhookStore| -> Vec<u64> {
            store.outbox_from(0, 100).expect("outbox").iter().map(|event| event.offset).collect()
        };
        let retention = Duration::from_secs(5 * 3600);
        let running = vec!["ci".to_string(), "audit#7".to_string()];
        // A running subscription with no checkpoint yet (starting, maybe from the beginning).
        store.commit_progress("ci", None, 8).expect("progress");
        assert_eq!(prune_outbox(&store, retention, &running, now).expect("prune"), 0);
        // Both have checkpoints: the slower one, at 3, holds the older events back.
        store.commit_progress("audit#7", None, 3).expect("progress");
        assert_eq!(prune_outbox(&store, retention, &running, now).expect("prune"), 3);
        assert_eq!(kept(&store), (3..10).collect::<Vec<_>>());
        // Once it is past them, the retention decides: more than five hours old go.
        store.commit_progress("audit#7", None, 9).expect("progress");
        assert_eq!(prune_outbox(&store, retention, &running, now).expect("prune"), 2);
        assert_eq!(kept(&store), (5..10).collect::<Vec<_>>());
        // With no subscription running, only the retention.
        assert_eq!(prune_outbox(&store, Duration::from_secs(2 * 3600), &[], now).expect("prune"), 3);
        assert_eq!(kept(&store), vec![8, 9]);
        // A subscription added from the beginning now starts at the oldest event kept.
        let late = Subscription { from_beginning: true, generation: Some(1), ..subscription() };
        let start = start_checkpoint(&store, &late).expect("start");
        assert_eq!(store.outbox_from(start, 1).expect("outbox")[0].offset, 8);
    }
}
