//! Enrichment: the facts atcr must fetch itself, appended to the log as events with source
//! `enrichment`, so that projections (and the pull path) never touch the network.
//!
//! A log consumer with its own checkpoint (committed with what it appends). For every DID that
//! appears with an `io.atcr.*` record, and every hold DID a manifest names, it resolves the DID
//! document once per run (again after `#identity`) and appends `IdentityResolved`. For every
//! manifest record it fetches the `manifestBlob` from the owner's PDS
//! (`com.atproto.sync.getBlob`), checks its sha256 against the record's `digest`, stores it in
//! the content store and appends `ManifestStored`. A failure is logged and retried with
//! exponential backoff; bytes that do not match are never stored, so never served.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use atcr_storage::content::{ContentError, ContentStore, sha256_digest};
use atcr_storage::did::parse_did_document;
use atcr_storage::records::{self, ManifestRecord};
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, LogWriter, StorageError, now_micros};

use crate::identity::{HandleCheck, IdentityResolver};
use crate::policy::{PolicyRefused, UrlPolicy};

/// The consumer name its checkpoint is stored under.
pub const CONSUMER: &str = "enrichment";
/// Manifests larger than this are not fetched (OCI registries commonly cap at 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
const MAX_ATTEMPTS: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("refused by the outbound URL policy: {0}")]
    Policy(String),
    #[error("{0}")]
    Http(String),
    #[error("response over {0} bytes")]
    TooLarge(usize),
    #[error("not found")]
    NotFound,
}

/// Where enrichment gets DID documents and blobs. Production uses [`HttpFetcher`]; the demo
/// serves recorded files.
pub trait Fetcher: Send + Sync + 'static {
    fn did_document(&self, did: &str) -> impl Future<Output = Result<String, FetchError>> + Send;
    fn blob(&self, pds: &str, did: &str, cid: &str) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send;
}

/// DID documents from a PLC directory (`did:plc`) or `https://<host>/.well-known/did.json`
/// (`did:web`), blobs from `<pds>/xrpc/com.atproto.sync.getBlob`. Every URL passes the
/// [`UrlPolicy`] first; responses are size-capped and time-limited.
///
/// The PLC directory is the operator's choice (configuration, not data), so it is the one URL
/// fetched without the policy; every other URL comes from a DID or a record and goes through
/// [`UrlPolicy::check`] and the policy's DNS resolver.
pub struct HttpFetcher {
    /// For URLs taken from data: resolves through the policy.
    client: reqwest::Client,
    /// For the configured PLC directory only.
    plc_client: reqwest::Client,
    plc_directory: String,
    policy: UrlPolicy,
}

fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("atcr/", env!("CARGO_PKG_VERSION")))
}

impl HttpFetcher {
    pub fn new(plc_directory: &str, policy: UrlPolicy) -> Result<Self, FetchError> {
        let client = client_builder()
            .dns_resolver(policy.resolver())
            .build()
            .map_err(|error| FetchError::Http(error.to_string()))?;
        let plc_client = client_builder().build().map_err(|error| FetchError::Http(error.to_string()))?;
        Ok(HttpFetcher { client, plc_client, plc_directory: plc_directory.trim_end_matches('/').to_string(), policy })
    }

    async fn get(&self, url: &str, limit: usize) -> Result<Vec<u8>, FetchError> {
        let trusted = url.strip_prefix(self.plc_directory.as_str()).is_some_and(|rest| rest.starts_with('/'));
        if !trusted {
            self.policy.check(url).map_err(FetchError::Policy)?;
        }
        let client = if trusted { &self.plc_client } else { &self.client };
        let mut response = client.get(url).send().await.map_err(request_error)?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(FetchError::NotFound);
        }
        if !response.status().is_success() {
            return Err(FetchError::Http(format!("{url} answered {}", response.status())));
        }
        if response.content_length().is_some_and(|length| length > limit as u64) {
            return Err(FetchError::TooLarge(limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| FetchError::Http(error.to_string()))? {
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A request error, with a refusal of the policy's resolver told apart from network trouble
/// (a refusal is final, network trouble is retried).
fn request_error(error: reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<PolicyRefused>() {
            return FetchError::Policy(refused.0.clone());
        }
        source = current.source();
    }
    FetchError::Http(error.to_string())
}

/// The URL of a DID's document, or why there is none.
pub fn did_document_url(plc_directory: &str, did: &str) -> Result<String, FetchError> {
    if let Some(rest) = did.strip_prefix("did:plc:") {
        if rest.is_empty() || !rest.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
            return Err(FetchError::Policy(format!("malformed did:plc {did:?}")));
        }
        return Ok(format!("{plc_directory}/{did}"));
    }
    if let Some(rest) = did.strip_prefix("did:web:") {
        // did:web:host%3Aport — a port is percent-encoded; paths (`:`) are not allowed in atproto.
        let host = rest.replace("%3A", ":").replace("%3a", ":");
        if host.is_empty() || host.contains(['/', '?', '#', '@', '%']) || rest.contains(':') {
            return Err(FetchError::Policy(format!("malformed did:web {did:?}")));
        }
        let scheme = if host.starts_with("localhost") || host.starts_with("127.") { "http" } else { "https" };
        return Ok(format!("{scheme}://{host}/.well-known/did.json"));
    }
    Err(FetchError::Policy(format!("unsupported DID method in {did:?}")))
}

impl Fetcher for HttpFetcher {
    async fn did_document(&self, did: &str) -> Result<String, FetchError> {
        let url = did_document_url(&self.plc_directory, did)?;
        let bytes = self.get(&url, 64 * 1024).await?;
        String::from_utf8(bytes).map_err(|_| FetchError::Http("DID document is not UTF-8".into()))
    }

    async fn blob(&self, pds: &str, did: &str, cid: &str) -> Result<Vec<u8>, FetchError> {
        if !cid.bytes().all(|byte| byte.is_ascii_alphanumeric())
            || !did.bytes().all(|byte| byte.is_ascii_graphic() && byte != b'&' && byte != b'#')
        {
            return Err(FetchError::Policy("malformed did or cid".into()));
        }
        let url = format!("{}/xrpc/com.atproto.sync.getBlob?did={did}&cid={cid}", pds.trim_end_matches('/'));
        self.get(&url, MAX_MANIFEST_BYTES).await
    }
}

#[derive(Debug, Clone)]
enum Job {
    Resolve {
        did: String,
    },
    /// The handle check of a resolved DID failed on a lookup (not a refutation): try again.
    CheckHandle {
        did: String,
    },
    FetchManifest {
        did: String,
        digest: String,
        media_type: String,
        cid: String,
    },
}

struct Pending {
    job: Job,
    attempts: u32,
    due: Instant,
}

pub struct Enricher<F: Fetcher> {
    log: Arc<EventLog>,
    writer: LogWriter,
    content: Arc<ContentStore>,
    fetcher: F,
    /// DID → (document JSON, PDS endpoint) resolved during this run.
    resolved: HashMap<String, (String, Option<String>)>,
    /// Jobs not done yet, by the log offset that asked for them.
    pending: BTreeMap<(u64, u32), Pending>,
    next_job: u32,
    /// Hold DIDs atcr serves itself: nothing to resolve for them.
    local_holds: HashSet<String>,
    /// DIDs whose resolution failed for good in this run (an `IdentityUnresolvable` was
    /// appended): not tried again until an `#identity` for them.
    unresolvable: HashSet<String>,
    /// Checks the handle of every resolved document both ways ([`EventBody::HandleChecked`]).
    identities: Option<Arc<IdentityResolver>>,
    /// DID → the (handle, verified) last appended in this run.
    handle_checks: HashMap<String, (String, bool)>,
    /// DIDs whose handle check just failed on a lookup, to be checked again.
    recheck: Vec<String>,
}

/// How a job failed.
enum Failure {
    /// Network trouble, a server error: try again later.
    Retry(String),
    /// Trying again cannot help (the policy refuses the URL, the document is malformed).
    Final(String),
}

impl<F: Fetcher> Enricher<F> {
    pub fn new(log: Arc<EventLog>, writer: LogWriter, content: Arc<ContentStore>, fetcher: F) -> Self {
        Enricher {
            log,
            writer,
            content,
            fetcher,
            resolved: HashMap::new(),
            pending: BTreeMap::new(),
            next_job: 0,
            local_holds: HashSet::new(),
            unresolvable: HashSet::new(),
            identities: None,
            handle_checks: HashMap::new(),
            recheck: Vec::new(),
        }
    }

    /// Checks the handle each resolved DID document claims, in both directions, and appends
    /// the verdict ([`EventBody::HandleChecked`]) before the document: the views only let a
    /// verified handle name a DID.
    pub fn with_handle_checks(mut self, identities: Arc<IdentityResolver>) -> Self {
        self.identities = Some(identities);
        self
    }

    /// Holds served from local backends need no DID resolution (and must not cause a fetch).
    pub fn with_local_holds(mut self, holds: impl IntoIterator<Item = String>) -> Self {
        self.local_holds = holds.into_iter().collect();
        self
    }

    /// Runs until `shutdown`; an error of our own storage stops it.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), StorageError> {
        let mut head = self.log.subscribe();
        let mut next = self.log.consumer_checkpoint(CONSUMER)?.unwrap_or(0);
        loop {
            let events = self.log.read_from(next, 512)?;
            let mut batch = AppendBatch::default();
            for stored in &events {
                self.plan(stored.offset, &stored.event);
                next = stored.offset + 1;
            }
            self.work(&mut batch, &shutdown).await;
            // Resume from the oldest unfinished job after a restart; everything before is done.
            let checkpoint = self.pending.keys().next().map_or(next, |(offset, _)| *offset);
            let changed = !batch.events.is_empty() || self.log.consumer_checkpoint(CONSUMER)? != Some(checkpoint);
            if changed {
                batch.checkpoints.push((CONSUMER.to_string(), checkpoint));
                self.writer.append(batch).await?;
            }
            if !events.is_empty() {
                continue;
            }
            let wait = self
                .pending
                .values()
                .map(|pending| pending.due.saturating_duration_since(Instant::now()))
                .min()
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = head.changed() => if changed.is_err() { return Ok(()) },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn add(&mut self, offset: u64, job: Job) {
        self.next_job = self.next_job.wrapping_add(1);
        self.pending.insert((offset, self.next_job), Pending { job, attempts: 0, due: Instant::now() });
    }

    /// Decides what an event asks for.
    fn plan(&mut self, offset: u64, event: &Event) {
        match &event.body {
            EventBody::RecordPut { collection, record, .. } if collection.starts_with("io.atcr.") => {
                if self.needs_resolving(&event.did) {
                    self.add(offset, Job::Resolve { did: event.did.clone() });
                }
                if collection != records::MANIFEST {
                    return;
                }
                let Ok(manifest) = ManifestRecord::decode(record) else { return };
                if let Some(hold) = &manifest.hold_did
                    && !self.local_holds.contains(hold)
                    && self.needs_resolving(hold)
                {
                    self.add(offset, Job::Resolve { did: hold.clone() });
                }
                match manifest.manifest_blob {
                    Some(blob) if !self.content.contains(&manifest.digest) => self.add(
                        offset,
                        Job::FetchManifest {
                            did: event.did.clone(),
                            digest: manifest.digest,
                            media_type: manifest.media_type,
                            cid: blob.cid,
                        },
                    ),
                    Some(_) => {}
                    None => {
                        tracing::warn!(offset, did = %event.did, digest = %manifest.digest, "manifest record has no manifestBlob")
                    }
                }
            }
            EventBody::Identity { .. } => {
                self.resolved.remove(&event.did);
                self.unresolvable.remove(&event.did);
                self.add(offset, Job::Resolve { did: event.did.clone() });
            }
            _ => {}
        }
    }

    fn needs_resolving(&self, did: &str) -> bool {
        !self.resolved.contains_key(did) && !self.unresolvable.contains(did) && !self.is_pending_resolve(did)
    }

    fn is_pending_resolve(&self, did: &str) -> bool {
        self.pending.values().any(|pending| matches!(&pending.job, Job::Resolve { did: other } if other == did))
    }

    /// Runs every job that is due, in log order: a manifest fetch waits for its owner's DID.
    async fn work(&mut self, batch: &mut AppendBatch, shutdown: &CancellationToken) {
        let due: Vec<(u64, u32)> =
            self.pending.iter().filter(|(_, pending)| pending.due <= Instant::now()).map(|(key, _)| *key).collect();
        for key in due {
            if shutdown.is_cancelled() {
                return;
            }
            let Some(pending) = self.pending.get(&key) else { continue };
            let job = pending.job.clone();
            // A slow upstream must not hold up shutdown: abandon the job, it is still pending
            // (and before the checkpoint), so the next run does it again.
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = self.perform(&job, batch) => outcome,
            };
            for did in std::mem::take(&mut self.recheck) {
                if !self
                    .pending
                    .values()
                    .any(|pending| matches!(&pending.job, Job::CheckHandle { did: other } if *other == did))
                {
                    self.add(key.0, Job::CheckHandle { did });
                    let delay = self
                        .identities
                        .as_ref()
                        .map_or(Duration::ZERO, |identities| identities.config().handle_recheck);
                    if let Some(pending) = self.pending.get_mut(&(key.0, self.next_job)) {
                        pending.due = Instant::now() + delay;
                    }
                }
            }
            match outcome {
                Ok(()) => {
                    self.pending.remove(&key);
                }
                Err(Failure::Final(reason)) => {
                    tracing::warn!(?job, %reason, "enrichment failed for good");
                    metrics::counter!("atcr_enrichment_given_up_total").increment(1);
                    self.pending.remove(&key);
                    self.give_up(&job, reason, batch);
                }
                Err(Failure::Retry(reason)) => {
                    let Some(pending) = self.pending.get_mut(&key) else { continue };
                    pending.attempts += 1;
                    if pending.attempts >= MAX_ATTEMPTS {
                        tracing::error!(?job, %reason, attempts = pending.attempts, "enrichment gave up");
                        metrics::counter!("atcr_enrichment_given_up_total").increment(1);
                        self.pending.remove(&key);
                        self.give_up(&job, reason, batch);
                    } else {
                        let delay =
                            Duration::from_millis(500u64 << pending.attempts.min(10)).min(Duration::from_secs(300));
                        tracing::warn!(?job, %reason, attempt = pending.attempts, retry_in_ms = delay.as_millis() as u64, "enrichment failed, will retry");
                        metrics::counter!("atcr_enrichment_failures_total").increment(1);
                        pending.due = Instant::now() + delay;
                    }
                }
            }
        }
    }

    /// Records that a DID cannot be resolved, so pages can say so (a hold "unreachable").
    fn give_up(&mut self, job: &Job, reason: String, batch: &mut AppendBatch) {
        let Job::Resolve { did } = job else { return };
        if self.unresolvable.insert(did.clone()) {
            batch.events.push(enrichment_event(did, EventBody::IdentityUnresolvable { reason }));
        }
    }

    async fn check_handle(&self, facts: &atcr_storage::did::DidDocumentFacts) -> Option<HandleCheck> {
        self.identities.as_ref()?.verify_claimed_handle(facts).await
    }

    /// Appends a handle check when it is news (a new document, or another verdict), and asks
    /// for another check when a lookup failed.
    fn record_handle_check(&mut self, did: &str, check: HandleCheck, new_document: bool, batch: &mut AppendBatch) {
        if check.transient {
            self.recheck.push(did.to_string());
        }
        let verdict = (check.handle.clone(), check.verified);
        if new_document || self.handle_checks.get(did) != Some(&verdict) {
            if !check.verified {
                tracing::warn!(%did, handle = %check.handle, reason = %check.reason, transient = check.transient, "handle does not verify");
            }
            let body =
                EventBody::HandleChecked { handle: check.handle, verified: check.verified, reason: check.reason };
            batch.events.push(enrichment_event(did, body));
        }
        self.handle_checks.insert(did.to_string(), verdict);
    }

    async fn perform(&mut self, job: &Job, batch: &mut AppendBatch) -> Result<(), Failure> {
        match job {
            Job::CheckHandle { did } => {
                let Some((document, _)) = self.resolved.get(did) else { return Ok(()) };
                let Ok(facts) = parse_did_document(document) else { return Ok(()) };
                let Some(check) = self.check_handle(&facts).await else { return Ok(()) };
                let transient = check.transient.then(|| check.reason.clone());
                // the verdict is recorded either way (a failed lookup never verifies)
                let HandleCheck { handle, verified, reason, .. } = check;
                self.record_handle_check(did, HandleCheck { handle, verified, reason, transient: false }, false, batch);
                match transient {
                    Some(reason) => Err(Failure::Retry(format!("checking the handle of {did}: {reason}"))),
                    None => Ok(()),
                }
            }
            Job::Resolve { did } => {
                let document = self.fetcher.did_document(did).await.map_err(|error| {
                    let reason = format!("resolving {did}: {error}");
                    if matches!(error, FetchError::Policy(_)) { Failure::Final(reason) } else { Failure::Retry(reason) }
                })?;
                let facts = parse_did_document(&document)
                    .map_err(|error| Failure::Final(format!("DID document of {did}: {error}")))?;
                if facts.did != *did {
                    return Err(Failure::Final(format!("DID document served for {did} names another id")));
                }
                let check = self.check_handle(&facts).await;
                let pds = facts.pds_endpoint;
                let unchanged = self.resolved.get(did).is_some_and(|(known, _)| *known == document);
                self.resolved.insert(did.clone(), (document.clone(), pds));
                if let Some(check) = check {
                    self.record_handle_check(did, check, !unchanged, batch);
                }
                if !unchanged {
                    batch.events.push(enrichment_event(did, EventBody::IdentityResolved { document_json: document }));
                }
                Ok(())
            }
            Job::FetchManifest { did, digest, media_type, cid } => {
                if self.content.contains(digest) {
                    return Ok(());
                }
                if self.unresolvable.contains(did) {
                    return Err(Failure::Final(format!("owner {did} cannot be resolved")));
                }
                let Some((_, pds)) = self.resolved.get(did) else {
                    return Err(Failure::Retry(format!("owner {did} is not resolved yet")));
                };
                let Some(pds) = pds.clone() else { return Err(Failure::Retry(format!("{did} has no PDS endpoint"))) };
                let bytes = self.fetcher.blob(&pds, did, cid).await.map_err(|error| {
                    let reason = format!("fetching {digest}: {error}");
                    if matches!(error, FetchError::Policy(_)) { Failure::Final(reason) } else { Failure::Retry(reason) }
                })?;
                match self.content.put(digest, &bytes) {
                    Ok(()) => {
                        batch.events.push(enrichment_event(
                            did,
                            EventBody::ManifestStored {
                                digest: digest.clone(),
                                media_type: media_type.clone(),
                                size: bytes.len() as u64,
                            },
                        ));
                        Ok(())
                    }
                    Err(ContentError::DigestMismatch { .. }) => Err(Failure::Retry(format!(
                        "manifest blob {cid} of {did} hashes to {}, not {digest}",
                        sha256_digest(&bytes)
                    ))),
                    Err(error) => Err(Failure::Retry(format!("storing {digest}: {error}"))),
                }
            }
        }
    }
}

fn enrichment_event(did: &str, body: EventBody) -> Event {
    Event::enrichment(did, now_micros(), body)
}
