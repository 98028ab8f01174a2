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
//!
//! For an image manifest it then fetches the image config "through the hold", located the way
//! `/v2/…/blobs/<digest>` locates it (a hold atcr serves itself: its file or a presigned S3 URL;
//! any other hold: its service endpoint's `getBlob`, through the URL policy), size-capped and
//! sha256-checked, and appends `ContentStored { kind: "image.config" }` (or `ContentRejected`
//! with a quarantine entry). With deep inspection on, every tar layer up to the configured size
//! is fetched the same way and read as a stream (`layers.rs`); only the derived file list is
//! kept (`ContentStored { kind: "layer.files" }`), never the layer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use atcr_storage::blobs::{BlobAccess, BlobBackend, BlobMethod};
use atcr_storage::content::{ContentError, ContentStore, sha256_digest};
use atcr_storage::did::parse_did_document;
use atcr_storage::image::{IMAGE_CONFIG_KIND, ImageConfig, LAYER_FILES_KIND, LAYER_FILES_MEDIA_TYPE};
use atcr_storage::records::{self, Descriptor, ManifestRecord, is_sha256_digest};
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, LogWriter, QuarantineEntry, StorageError, now_micros};

use crate::identity::{HandleCheck, IdentityResolver};
use crate::policy::{PolicyRefused, UrlPolicy};

mod scans;
pub use scans::{MAX_SCAN_BLOB_BYTES, SBOM_KIND, VULNERABILITIES_KIND};

/// The consumer name its checkpoint is stored under.
pub const CONSUMER: &str = "enrichment";
/// Manifests larger than this are not fetched (OCI registries commonly cap at 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Image configs larger than this are refused (real ones are a few KiB).
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// A layer may decompress to at most this many times the deep inspection limit.
pub const MAX_EXPANSION: u64 = 16;
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
    /// A hold's blob (an image config, a layer) at `url`, at most `limit` bytes. `trusted` URLs
    /// are presigned for a bucket the operator configured (like the PLC directory: not data, so
    /// not subject to the URL policy); every other URL, and every redirect, passes the policy.
    fn hold_blob(
        &self,
        url: &str,
        trusted: bool,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<u8>, FetchError>> + Send {
        let _ = (url, trusted, limit);
        async { Err(FetchError::Http("this fetcher does not fetch hold blobs".into())) }
    }
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
        let response = client.get(url).send().await.map_err(request_error)?;
        read_body(url, response, limit).await
    }
}

/// A response's body, at most `limit` bytes.
async fn read_body(url: &str, mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, FetchError> {
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(FetchError::NotFound);
    }
    if !response.status().is_success() {
        return Err(FetchError::Http(format!("{} answered {}", redact_query(url), response.status())));
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

/// A URL without its query (a presigned URL's signature is not for the logs).
fn redact_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
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

    async fn hold_blob(&self, url: &str, trusted: bool, limit: usize) -> Result<Vec<u8>, FetchError> {
        // Holds answer getBlob with a redirect to their storage: follow a few, each one checked.
        let mut current = url.to_string();
        let mut trusted = trusted;
        for _ in 0..4 {
            if !trusted {
                self.policy.check(&current).map_err(FetchError::Policy)?;
            }
            let client = if trusted { &self.plc_client } else { &self.client };
            let response = client.get(&current).send().await.map_err(request_error)?;
            if response.status().is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|value| value.to_str().ok())
                    .ok_or_else(|| FetchError::Http(format!("{} redirected nowhere", redact_query(&current))))?;
                let next = url::Url::parse(&current)
                    .and_then(|base| base.join(location))
                    .map_err(|error| FetchError::Policy(format!("bad redirect target: {error}")))?;
                current = next.to_string();
                trusted = false;
                continue;
            }
            return read_body(&current, response, limit).await;
        }
        Err(FetchError::Http(format!("too many redirects from {}", redact_query(url))))
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
    /// The image config of a stored manifest, through its hold.
    FetchConfig {
        did: String,
        hold: HoldRef,
        manifest: String,
    },
    /// Deep inspection of one layer, through its hold.
    InspectLayer {
        did: String,
        hold: HoldRef,
        layer: Descriptor,
    },
    /// A vulnerability report or SBOM named by an `io.atcr.hold.scan` record.
    FetchScanBlob(scans::ScanBlobJob),
}

/// Where a manifest's blobs live: its hold's DID, or a legacy endpoint.
#[derive(Debug, Clone)]
struct HoldRef {
    did: Option<String>,
    endpoint: Option<String>,
}

/// How a hold hands out a blob to enrichment.
enum BlobSource {
    File(std::path::PathBuf),
    Url { url: String, trusted: bool },
}

/// The parts of a manifest enrichment reads (from its verified bytes, not the record).
#[derive(serde::Deserialize)]
struct ManifestBody {
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// Config media types of container images (artifacts' configs are not image configs).
fn is_image_config(media_type: Option<&str>) -> bool {
    matches!(
        media_type,
        None | Some("application/vnd.oci.image.config.v1+json" | "application/vnd.docker.container.image.v1+json")
    )
}

/// Layer media types that are tar archives (plain, gzip, zstd; OCI and Docker).
fn is_tar_layer(media_type: Option<&str>) -> bool {
    media_type.is_none_or(|media_type| {
        media_type.starts_with("application/vnd.oci.image.layer.")
            || media_type.starts_with("application/vnd.docker.image.rootfs.")
    }) && !media_type.is_some_and(|media_type| media_type.contains("foreign"))
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
    /// Scan documents larger than this are refused (quarantined with the reason).
    scan_blob_max_bytes: usize,
    /// How blobs of the holds atcr serves itself are located (as the pull path does).
    hold_backends: HashMap<String, BlobBackend>,
    /// Deep inspection: layers up to this many bytes are read; `None`: off.
    deep_inspection_max_bytes: Option<u64>,
    /// Manifests whose config was handled in this run, layers inspected or skipped.
    configs_done: HashSet<String>,
    layers_done: HashSet<String>,
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
            scan_blob_max_bytes: scans::MAX_SCAN_BLOB_BYTES,
            hold_backends: HashMap::new(),
            deep_inspection_max_bytes: None,
            configs_done: HashSet::new(),
            layers_done: HashSet::new(),
        }
    }

    /// Locates image configs and layers of these holds with their backends (a file, or a
    /// presigned S3 URL), exactly as the pull path does.
    pub fn with_hold_backends(mut self, backends: HashMap<String, BlobBackend>) -> Self {
        self.hold_backends = backends;
        self
    }

    /// Turns on deep inspection of layers up to `max_bytes` (compressed); larger layers are
    /// skipped with a `ContentRejected` saying so.
    pub fn with_deep_inspection(mut self, max_bytes: Option<u64>) -> Self {
        self.deep_inspection_max_bytes = max_bytes.filter(|max| *max > 0);
        self
    }

    /// Caps the size of a scan's vulnerability report or SBOM (default [`MAX_SCAN_BLOB_BYTES`]).
    pub fn with_scan_blob_limit(mut self, max_bytes: usize) -> Self {
        self.scan_blob_max_bytes = max_bytes;
        self
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
            EventBody::RecordPut { collection, record, rkey, .. } if collection.starts_with("io.atcr.") => {
                if self.needs_resolving(&event.did) {
                    self.add(offset, Job::Resolve { did: event.did.clone() });
                }
                if collection == records::HOLD_SCAN {
                    for job in scans::jobs_for(&event.did, rkey, record) {
                        self.add(offset, Job::FetchScanBlob(job));
                    }
                    return;
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
                // Added after the manifest's own fetch (same offset, so it runs later): it reads
                // the verified manifest bytes.
                let describe =
                    (manifest.config.is_some() && !self.configs_done.contains(&manifest.digest)).then(|| {
                        let hold = HoldRef { did: manifest.hold_did.clone(), endpoint: manifest.hold_endpoint.clone() };
                        Job::FetchConfig { did: event.did.clone(), hold, manifest: manifest.digest.clone() }
                    });
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
                if let Some(job) = describe {
                    self.add(offset, job);
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
    /// Also records a config or layer that could not be fetched, so pages say why.
    fn give_up(&mut self, job: &Job, reason: String, batch: &mut AppendBatch) {
        if let Job::FetchScanBlob(scan) = job {
            Self::reject_scan_blob(&scan.hold_did, scan.kind, "", &scan.subject, reason, Vec::new(), batch);
            return;
        }
        match job {
            Job::Resolve { did } => {
                if self.unresolvable.insert(did.clone()) {
                    batch.events.push(enrichment_event(did, EventBody::IdentityUnresolvable { reason }));
                }
            }
            Job::FetchConfig { did, manifest, .. } => {
                self.configs_done.insert(manifest.clone());
                let body = EventBody::ContentRejected {
                    kind: IMAGE_CONFIG_KIND.into(),
                    digest: String::new(),
                    subject: manifest.clone(),
                    reason,
                };
                batch.events.push(enrichment_event(did, body));
            }
            Job::InspectLayer { did, layer, .. } => {
                self.layers_done.insert(layer.digest.clone());
                let body = EventBody::ContentRejected {
                    kind: LAYER_FILES_KIND.into(),
                    digest: String::new(),
                    subject: layer.digest.clone(),
                    reason,
                };
                batch.events.push(enrichment_event(did, body));
            }
            Job::CheckHandle { .. } | Job::FetchManifest { .. } | Job::FetchScanBlob(_) => {}
        }
    }

    /// Refuses fetched bytes of `kind` for `subject`: a `ContentRejected` event, and a
    /// quarantine entry with the reason and the bytes that were refused (`raw`, empty for a
    /// layer: layer bytes are never kept).
    fn reject(
        did: &str,
        kind: &str,
        digest: &str,
        subject: &str,
        reason: String,
        raw: Vec<u8>,
        batch: &mut AppendBatch,
    ) {
        tracing::warn!(%did, kind, digest, subject, %reason, "content rejected");
        metrics::counter!("atcr_enrichment_content_rejected_total").increment(1);
        batch.quarantine.push(QuarantineEntry {
            received_at_us: now_micros(),
            upstream: format!("enrichment:{kind}"),
            upstream_seq: None,
            did: Some(did.to_string()),
            reason: format!("{kind} {digest} of {subject}: {reason}"),
            raw,
        });
        let body =
            EventBody::ContentRejected { kind: kind.into(), digest: digest.into(), subject: subject.into(), reason };
        batch.events.push(enrichment_event(did, body));
    }

    /// Where a hold's blob is, the way the pull path decides it (`RegistryQuery::serve_blob`).
    fn locate(&self, hold: &HoldRef, digest: &str) -> Result<BlobSource, Failure> {
        if let Some(hold_did) = &hold.did {
            if let Some(backend) = self.hold_backends.get(hold_did) {
                return match backend.locate(digest, BlobMethod::Get) {
                    Some(BlobAccess::File(path)) => Ok(BlobSource::File(path)),
                    Some(BlobAccess::Redirect(url)) => Ok(BlobSource::Url { url, trusted: true }),
                    None => Err(Failure::Final(format!("{digest} is not in the local hold {hold_did}"))),
                };
            }
            if self.unresolvable.contains(hold_did) {
                return Err(Failure::Final(format!("hold {hold_did} cannot be resolved")));
            }
            let Some((document, pds)) = self.resolved.get(hold_did) else {
                return Err(Failure::Retry(format!("hold {hold_did} is not resolved yet")));
            };
            let endpoint = parse_did_document(document).ok().and_then(|facts| facts.hold_endpoint).or(pds.clone());
            let Some(endpoint) = endpoint else {
                return Err(Failure::Final(format!("hold {hold_did} has no service endpoint")));
            };
            // A did:web port is percent-encoded inside the DID; keep it literal in the query.
            let url = format!(
                "{}/xrpc/com.atproto.sync.getBlob?did={}&cid={digest}",
                endpoint.trim_end_matches('/'),
                hold_did.replace('%', "%25")
            );
            return Ok(BlobSource::Url { url, trusted: false });
        }
        match &hold.endpoint {
            Some(endpoint) => Ok(BlobSource::Url {
                url: format!("{}/xrpc/com.atproto.sync.getBlob?cid={digest}", endpoint.trim_end_matches('/')),
                trusted: false,
            }),
            None => Err(Failure::Final("the manifest names no hold".into())),
        }
    }

    /// A hold's blob, at most `limit` bytes.
    async fn fetch_from_hold(&self, hold: &HoldRef, digest: &str, limit: usize) -> Result<Vec<u8>, Failure> {
        let classify = |error: FetchError| {
            let reason = format!("fetching {digest} from its hold: {error}");
            match error {
                FetchError::Policy(_) | FetchError::TooLarge(_) => Failure::Final(reason),
                FetchError::Http(_) | FetchError::NotFound => Failure::Retry(reason),
            }
        };
        match self.locate(hold, digest)? {
            BlobSource::File(path) => {
                let length = tokio::fs::metadata(&path)
                    .await
                    .map_err(|error| Failure::Retry(format!("reading {}: {error}", path.display())))?
                    .len();
                if length > limit as u64 {
                    return Err(classify(FetchError::TooLarge(limit)));
                }
                tokio::fs::read(&path)
                    .await
                    .map_err(|error| Failure::Retry(format!("reading {}: {error}", path.display())))
            }
            BlobSource::Url { url, trusted } => self.fetcher.hold_blob(&url, trusted, limit).await.map_err(classify),
        }
    }

    /// The image config of a stored manifest: fetched once per config digest, recorded for
    /// every manifest that names it. Queues the manifest's layers for deep inspection.
    async fn describe_manifest(
        &mut self,
        did: &str,
        hold: &HoldRef,
        manifest: &str,
        batch: &mut AppendBatch,
    ) -> Result<(), Failure> {
        let bytes = match self.content.get(manifest) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Err(Failure::Retry(format!("manifest {manifest} is not stored yet"))),
            Err(error) => return Err(Failure::Retry(format!("reading manifest {manifest}: {error}"))),
        };
        // Not an image manifest (an index, or bytes that are no manifest): nothing to describe.
        let Ok(body) = serde_json::from_slice::<ManifestBody>(&bytes) else { return Ok(()) };
        let Some(config) = body.config else { return Ok(()) };
        if !is_image_config(config.media_type.as_deref()) {
            return Ok(());
        }
        if !self.configs_done.contains(manifest) {
            self.store_config(did, hold, manifest, &config, batch).await?;
            self.configs_done.insert(manifest.to_string());
        }
        if self.deep_inspection_max_bytes.is_some() {
            let key = self.pending.keys().next().map_or(0, |(offset, _)| *offset);
            for layer in body.layers {
                if !is_tar_layer(layer.media_type.as_deref()) || self.layers_done.contains(&layer.digest) {
                    continue;
                }
                let queued = self.pending.values().any(
                    |pending| matches!(&pending.job, Job::InspectLayer { layer: other, .. } if other.digest == layer.digest),
                );
                if !queued {
                    self.add(key, Job::InspectLayer { did: did.to_string(), hold: hold.clone(), layer });
                }
            }
        }
        Ok(())
    }

    async fn store_config(
        &mut self,
        did: &str,
        hold: &HoldRef,
        manifest: &str,
        config: &Descriptor,
        batch: &mut AppendBatch,
    ) -> Result<(), Failure> {
        let digest = config.digest.as_str();
        let stored = |size: usize| EventBody::ContentStored {
            kind: IMAGE_CONFIG_KIND.into(),
            digest: digest.to_string(),
            media_type: config.media_type.clone().unwrap_or_else(|| "application/vnd.oci.image.config.v1+json".into()),
            size: size as u64,
            subject: manifest.to_string(),
        };
        if !is_sha256_digest(digest) {
            Self::reject(did, IMAGE_CONFIG_KIND, digest, manifest, "not a sha256 digest".into(), Vec::new(), batch);
            return Ok(());
        }
        if let Ok(Some(bytes)) = self.content.get(digest) {
            batch.events.push(enrichment_event(did, stored(bytes.len())));
            return Ok(());
        }
        if config.size.is_some_and(|size| size > MAX_CONFIG_BYTES as i64) {
            let reason = format!(
                "the manifest says it is {} bytes, over the {MAX_CONFIG_BYTES} byte cap",
                config.size.unwrap_or(0)
            );
            Self::reject(did, IMAGE_CONFIG_KIND, digest, manifest, reason, Vec::new(), batch);
            return Ok(());
        }
        let bytes = self.fetch_from_hold(hold, digest, MAX_CONFIG_BYTES).await?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            let reason = format!("the hold's bytes hash to {actual}");
            Self::reject(did, IMAGE_CONFIG_KIND, digest, manifest, reason, bytes, batch);
            return Ok(());
        }
        if let Err(reason) = ImageConfig::parse(&bytes) {
            Self::reject(did, IMAGE_CONFIG_KIND, digest, manifest, reason, bytes, batch);
            return Ok(());
        }
        self.content.put(digest, &bytes).map_err(|error| Failure::Retry(format!("storing {digest}: {error}")))?;
        batch.events.push(enrichment_event(did, stored(bytes.len())));
        Ok(())
    }

    /// Reads one layer (at most the deep inspection limit) and stores its file list.
    async fn inspect_layer(
        &mut self,
        did: &str,
        hold: &HoldRef,
        layer: &Descriptor,
        batch: &mut AppendBatch,
    ) -> Result<(), Failure> {
        let Some(max) = self.deep_inspection_max_bytes else { return Ok(()) };
        let digest = layer.digest.as_str();
        if self.layers_done.contains(digest) {
            return Ok(());
        }
        self.layers_done.insert(digest.to_string());
        let skip = |reason: String, batch: &mut AppendBatch| {
            tracing::info!(%did, digest, %reason, "layer not inspected");
            let body = EventBody::ContentRejected {
                kind: LAYER_FILES_KIND.into(),
                digest: String::new(),
                subject: digest.to_string(),
                reason,
            };
            batch.events.push(enrichment_event(did, body));
        };
        if !is_sha256_digest(digest) {
            skip("not a sha256 digest".into(), batch);
            return Ok(());
        }
        if let Some(size) = layer.size.filter(|size| u64::try_from(*size).map_or(true, |size| size > max)) {
            skip(format!("layer is {size} bytes, over the deep inspection limit of {max} bytes"), batch);
            return Ok(());
        }
        let limit = usize::try_from(max).unwrap_or(usize::MAX);
        let bytes = match self.fetch_from_hold(hold, digest, limit).await {
            Ok(bytes) => bytes,
            Err(Failure::Final(reason)) if reason.contains("response over") => {
                skip(format!("layer is over the deep inspection limit of {max} bytes"), batch);
                return Ok(());
            }
            Err(failure) => {
                self.layers_done.remove(digest);
                return Err(failure);
            }
        };
        let actual = sha256_digest(&bytes);
        if actual != digest {
            let reason = format!("the hold's bytes hash to {actual}");
            Self::reject(did, LAYER_FILES_KIND, "", digest, reason, Vec::new(), batch);
            return Ok(());
        }
        let owned_digest = digest.to_string();
        let expanded = max.saturating_mul(MAX_EXPANSION);
        let inspected =
            tokio::task::spawn_blocking(move || crate::layers::inspect_layer(&owned_digest, &bytes, expanded))
                .await
                .map_err(|error| Failure::Retry(format!("layer inspection task: {error}")))?;
        let files = match inspected {
            Ok(files) => files,
            Err(reason) => {
                Self::reject(did, LAYER_FILES_KIND, "", digest, reason, Vec::new(), batch);
                return Ok(());
            }
        };
        let json =
            serde_json::to_vec(&files).map_err(|error| Failure::Final(format!("encoding the file list: {error}")))?;
        let files_digest = sha256_digest(&json);
        self.content
            .put(&files_digest, &json)
            .map_err(|error| Failure::Retry(format!("storing {files_digest}: {error}")))?;
        batch.events.push(enrichment_event(
            did,
            EventBody::ContentStored {
                kind: LAYER_FILES_KIND.into(),
                digest: files_digest,
                media_type: LAYER_FILES_MEDIA_TYPE.into(),
                size: json.len() as u64,
                subject: digest.to_string(),
            },
        ));
        Ok(())
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
            Job::FetchConfig { did, hold, manifest } => self.describe_manifest(did, hold, manifest, batch).await,
            Job::InspectLayer { did, hold, layer } => self.inspect_layer(did, hold, layer, batch).await,
            Job::FetchScanBlob(job) => self.fetch_scan_blob(job, batch).await,
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
