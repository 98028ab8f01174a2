//! Backfill and resync: bring the log up to what the accounts' repositories hold now, without
//! the firehose history.
//!
//! Why it exists: the firehose only tells what happens while we listen (and a relay keeps a few
//! days at most). An AppView that starts late, missed a window, or was told by `#sync` that an
//! account's history was replaced must read the repositories themselves. For each DID this module
//! resolves the DID document (PDS endpoint and signing key), fetches the whole repository with
//! `com.atproto.sync.getRepo`, checks it (every block's hash, the commit is the CAR root, the
//! commit's `did` and its signature), walks the MST for `io.atcr.*` keys, compares them with what
//! the log holds for that DID, and appends only the differences as events with source
//! `backfill`, carrying the commit's rev and CID (the signed block goes to `commit_blocks`).
//!
//! No event is applied twice, with live ingest running at the same time:
//! - "what the log holds" ([`LogState`]) is derived from the log with the projection runner's own
//!   rule ([`atcr_storage::revs`]): a record event whose commit rev is older than the newest rev
//!   already applied for its DID is skipped. A backfill diff is computed and appended under one
//!   lock, against the log up to its head, so a second run finds nothing to append;
//! - backfill events carry the repository's rev R. Live commits at or older than R that arrive
//!   later are skipped by the runner (R already contains them); live commits newer than R apply
//!   on top;
//! - if a live commit newer than R landed between the diff and the append, the runner skips the
//!   backfill events as stale: this is detected right after the append and the DID is fetched
//!   again (its repository now includes that commit), so the repair is never lost.
//!
//! Resumable: a run is a job whose per-DID completion is recorded in `consumer_checkpoints`
//! (`backfill/did/<did>` = the job id, written after the DID's events are durable); a rerun of
//! an unfinished job skips the DIDs it already finished. [`Backfiller::sync_did`] is the same
//! path for a single account: [`Backfiller::follow_resyncs`] runs it for every `Resync` event
//! (`#sync`, a broken chain) inside `atcr serve`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use atcr_storage::did::parse_did_document;
use atcr_storage::mst::Tree;
use atcr_storage::revs::{next_newest_rev, remembered_rev};
use atcr_storage::{
    AppendBatch, AppendReceipt, Event, EventBody, EventLog, LogWriter, PublicKey, PutAction, QuarantineEntry,
    SignedCommit, Source, StorageError, StoredEvent, now_micros,
};

use crate::car::CarBlocks;
use crate::enrich::{FetchError, Fetcher, HttpFetcher};
use crate::frame::ATCR_NSID_PREFIX;
use crate::policy::{PolicyRefused, UrlPolicy};

/// The `io.atcr.*` collections a relay is asked about (`listReposByCollection` takes one NSID).
pub const DISCOVERY_COLLECTIONS: [&str; 5] = [
    atcr_storage::records::MANIFEST,
    atcr_storage::records::TAG,
    atcr_storage::records::STAR,
    atcr_storage::records::PROFILE,
    atcr_storage::records::REPO_PAGE,
];
/// Repositories larger than this are not fetched (the default of `--max-repo-bytes`).
pub const DEFAULT_MAX_REPO_BYTES: usize = 256 * 1024 * 1024;
/// Quarantined repositories keep their bytes up to this size (the reason is always kept).
const MAX_QUARANTINED_CAR_BYTES: usize = 16 * 1024 * 1024;
/// How often a DID is fetched again when live ingest overtook the fetched revision.
const MAX_ATTEMPTS: u32 = 4;
/// Events read per log page while deriving [`LogState`].
const LOG_PAGE: usize = 4096;

/// The `consumer_checkpoints` key of a job: its id (start time, µs) while unfinished, 0 once done.
pub fn job_key(label: &str) -> String {
    format!("backfill/job/{label}")
}

/// The `consumer_checkpoints` key recording the last job that finished `did`.
pub fn did_key(did: &str) -> String {
    format!("backfill/did/{did}")
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    #[error("identity of {did}: {reason}")]
    Identity { did: String, reason: String },
    /// The repository failed a check; it was quarantined with this reason.
    #[error("repository of {did} rejected: {reason}")]
    Rejected { did: String, reason: String },
    #[error("listing {url}: {reason}")]
    Listing { url: String, reason: String },
    #[error("event log: {0}")]
    Storage(#[from] StorageError),
    #[error("live ingest kept overtaking the fetched revision of {0}; try again")]
    Overtaken(String),
}

// ------------------------------------------------------------------------------------------------
// A repository, read and checked
// ------------------------------------------------------------------------------------------------

/// One `io.atcr.*` record of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRecord {
    pub cid: String,
    /// DAG-CBOR, hash-checked against `cid`.
    pub bytes: Vec<u8>,
}

/// The `io.atcr.*` part of a verified repository at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSnapshot {
    pub did: String,
    pub rev: String,
    pub commit_cid: String,
    /// The signed commit block, kept in `commit_blocks` for offline re-checks.
    pub commit_block: Vec<u8>,
    /// By (collection, rkey).
    pub records: BTreeMap<(String, String), RepoRecord>,
}

/// Reads a `getRepo` CAR: framing and every block's sha256 checked (`car.rs`), the root is a
/// signed commit of `did` whose signature verifies with `key`, then the MST is walked for
/// `io.atcr.*` keys (`atcr_storage::mst`, the same tree code the live verification uses) and
/// their record blocks read. Any failure is the reason the repository is refused.
pub fn read_repo_car(car: &[u8], did: &str, key: &PublicKey) -> Result<RepoSnapshot, String> {
    let blocks = CarBlocks::parse(car).map_err(|error| format!("invalid CAR: {error}"))?;
    let [root] = blocks.roots()[..] else {
        return Err("a repository CAR must have exactly one root (the commit)".into());
    };
    let commit_block = blocks.get(&root).ok_or_else(|| format!("commit block {root} missing from CAR"))?.to_vec();
    let commit = SignedCommit::decode(&commit_block).map_err(|error| format!("CAR root is not a commit: {error}"))?;
    if commit.did != did {
        return Err(format!("commit is for {}, not {did}", commit.did));
    }
    commit.verify(key).map_err(|error| format!("commit signature: {error}"))?;

    let entries = Tree::load(commit.data)
        .list_prefix(ATCR_NSID_PREFIX, &blocks)
        .map_err(|error| format!("walking the MST: {error}"))?;
    let mut records = BTreeMap::new();
    for (path, cid) in entries {
        let Some((collection, rkey)) = path.split_once('/') else {
            return Err(format!("MST key {path:?} is not collection/rkey"));
        };
        if !collection.starts_with(ATCR_NSID_PREFIX) {
            continue;
        }
        if rkey.is_empty() || rkey.contains('/') {
            return Err(format!("MST key {path:?} has an invalid record key"));
        }
        let bytes = blocks.get(&cid).ok_or_else(|| format!("record {cid} of {path} missing from CAR"))?.to_vec();
        records.insert((collection.to_string(), rkey.to_string()), RepoRecord { cid: cid.to_string(), bytes });
    }
    Ok(RepoSnapshot { did: did.to_string(), rev: commit.rev, commit_cid: root.to_string(), commit_block, records })
}

/// The time a TID names (53 bits of microseconds since the epoch), as RFC 3339 with
/// milliseconds like the firehose's `time`: the upstream time of backfill events.
pub fn tid_time(tid: &str) -> Option<String> {
    const ALPHABET: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";
    if tid.len() != 13 {
        return None;
    }
    let mut value: u64 = 0;
    for byte in tid.bytes() {
        let digit = ALPHABET.iter().position(|&candidate| candidate == byte)? as u64;
        value = (value << 5) | digit;
    }
    let micros = (value >> 10) & ((1 << 53) - 1);
    Some(humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(micros)).to_string())
}

// ------------------------------------------------------------------------------------------------
// What the log holds
// ------------------------------------------------------------------------------------------------

/// One DID's records as the log holds them now (after the stale-rev rule).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DidState {
    /// The newest commit rev of a record event applied for this DID.
    pub newest_rev: Option<String>,
    /// The same as [`next_newest_rev`] remembers it (marked when it came from a backfill).
    pub remembered_rev: Option<String>,
    /// Current record CID by (collection, rkey).
    pub records: BTreeMap<(String, String), String>,
    /// The offset of the last record event skipped as older than `newest_rev`.
    pub last_stale_offset: Option<u64>,
}

/// Every DID's current `io.atcr.*` records, derived from the log with the projection runner's
/// rule (a record event from a commit older than the newest one seen for its DID is skipped), and
/// kept up to date by reading from where it stopped.
#[derive(Debug, Default)]
pub struct LogState {
    next_offset: u64,
    dids: HashMap<String, DidState>,
}

impl LogState {
    pub fn new() -> Self {
        LogState::default()
    }

    /// The next log offset this state will read.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn did(&self, did: &str) -> Option<&DidState> {
        self.dids.get(did)
    }

    /// Reads every event appended since the last call.
    pub fn catch_up(&mut self, log: &EventLog) -> Result<(), StorageError> {
        loop {
            let page = log.read_from(self.next_offset, LOG_PAGE)?;
            let Some(last) = page.last() else { return Ok(()) };
            let next = last.offset + 1;
            for stored in &page {
                self.apply(stored);
            }
            self.next_offset = next;
        }
    }

    /// Applies one event (in log order).
    pub fn apply(&mut self, stored: &StoredEvent) {
        let event = &stored.event;
        let Some(collection) = event.body.collection() else { return };
        let state = self.dids.entry(event.did.clone()).or_default();
        // The runner's rule (atcr_storage::revs), so both agree on what counts.
        if let (Some(rev), Source::Firehose | Source::Backfill) = (&event.rev, event.source) {
            match next_newest_rev(state.remembered_rev.as_deref(), event.source, rev) {
                Some(next) => {
                    state.newest_rev = Some(remembered_rev(&next).to_string());
                    state.remembered_rev = Some(next);
                }
                None => {
                    state.last_stale_offset = Some(stored.offset);
                    return;
                }
            }
        }
        match &event.body {
            EventBody::RecordPut { rkey, cid, .. } => {
                state.records.insert((collection.to_string(), rkey.clone()), cid.clone());
            }
            EventBody::RecordDeleted { rkey, .. } => {
                state.records.remove(&(collection.to_string(), rkey.clone()));
            }
            _ => {}
        }
    }
}

/// The events that turn `held` into the repository's `io.atcr.*` records: deletes of records the
/// repository no longer has, then creates and updates, each carrying the commit's rev and CID.
pub fn diff_events(held: Option<&DidState>, snapshot: &RepoSnapshot, received_at_us: i64) -> Vec<Event> {
    let empty = BTreeMap::new();
    let held_records = held.map_or(&empty, |state| &state.records);
    let upstream_time = tid_time(&snapshot.rev);
    let event = |body: EventBody| Event {
        source: Source::Backfill,
        upstream_seq: None,
        did: snapshot.did.clone(),
        rev: Some(snapshot.rev.clone()),
        upstream_time: upstream_time.clone(),
        received_at_us,
        commit_cid: Some(snapshot.commit_cid.clone()),
        body,
    };
    let mut events = Vec::new();
    for ((collection, rkey), cid) in held_records {
        if !snapshot.records.contains_key(&(collection.clone(), rkey.clone())) {
            events.push(event(EventBody::RecordDeleted {
                collection: collection.clone(),
                rkey: rkey.clone(),
                prev_cid: Some(cid.clone()),
            }));
        }
    }
    for ((collection, rkey), record) in &snapshot.records {
        let action = match held_records.get(&(collection.clone(), rkey.clone())) {
            Some(cid) if *cid == record.cid => continue,
            Some(_) => PutAction::Update,
            None => PutAction::Create,
        };
        events.push(event(EventBody::RecordPut {
            collection: collection.clone(),
            rkey: rkey.clone(),
            cid: record.cid.clone(),
            action,
            record: record.bytes.clone(),
        }));
    }
    events
}

// ------------------------------------------------------------------------------------------------
// Fetching
// ------------------------------------------------------------------------------------------------

/// Why a repository could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum RepoFetchError {
    #[error("{0}")]
    Fetch(#[from] FetchError),
    /// The PDS says the account has no repository to read now (`RepoNotFound`,
    /// `RepoDeactivated`, `RepoTakendown`, `RepoSuspended`): nothing to backfill, not a failure.
    #[error("account has no repository to read: {0}")]
    Unavailable(String),
}

/// `getRepo` error names that mean the account has no repository to read now.
const UNAVAILABLE_ERRORS: [&str; 4] = ["RepoNotFound", "RepoDeactivated", "RepoTakendown", "RepoSuspended"];

/// Where repositories are listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// A relay's `com.atproto.sync.listReposByCollection` for one collection.
    RelayCollection { relay: String, collection: String },
    /// A PDS's `com.atproto.sync.listRepos` (active accounts only).
    Pds { pds: String },
}

/// One page of a listing: DIDs and the cursor of the next page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListingPage {
    pub dids: Vec<String>,
    pub cursor: Option<String>,
}

/// What backfill fetches. Production uses [`HttpRepoFetcher`]; tests serve from memory.
pub trait RepoFetcher: Send + Sync + 'static {
    fn did_document(&self, did: &str) -> impl Future<Output = Result<String, FetchError>> + Send;
    fn get_repo(&self, pds: &str, did: &str) -> impl Future<Output = Result<Vec<u8>, RepoFetchError>> + Send;
    fn list_page(
        &self,
        listing: &Listing,
        cursor: Option<&str>,
    ) -> impl Future<Output = Result<ListingPage, FetchError>> + Send;
}

/// DID documents through enrichment's [`HttpFetcher`] (the configured PLC directory, did:web under
/// the policy), repositories from the PDS a DID document names, listings from the relay or PDS
/// the operator named. The PDS URL comes from user data: it passes [`UrlPolicy::check`] and the
/// client resolves hostnames through the policy's resolver (no private, loopback or metadata
/// address, whatever DNS says). Responses are size-capped and time-limited.
pub struct HttpRepoFetcher {
    documents: HttpFetcher,
    /// For PDS endpoints taken from DID documents: policy-checked, resolved through the policy.
    client: reqwest::Client,
    /// For the relay or PDS the operator named (configuration, not data).
    operator_client: reqwest::Client,
    policy: UrlPolicy,
    max_repo_bytes: usize,
}

/// The body of an XRPC error answer.
#[derive(Deserialize)]
struct XrpcError {
    error: String,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ListReposAnswer {
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    repos: Vec<ListedRepo>,
}

#[derive(Deserialize)]
struct ListedRepo {
    did: String,
    /// `listRepos` only; absent means active.
    #[serde(default)]
    active: Option<bool>,
}

impl HttpRepoFetcher {
    pub fn new(
        plc_directory: &str,
        policy: UrlPolicy,
        max_repo_bytes: usize,
        timeout: Duration,
    ) -> Result<Self, FetchError> {
        let builder = || {
            reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("atcr/", env!("CARGO_PKG_VERSION")))
        };
        let build_error = |error: reqwest::Error| FetchError::Http(error.to_string());
        Ok(HttpRepoFetcher {
            documents: HttpFetcher::new(plc_directory, policy)?,
            client: builder().dns_resolver(policy.resolver()).build().map_err(build_error)?,
            operator_client: builder().build().map_err(build_error)?,
            policy,
            max_repo_bytes,
        })
    }

    async fn get(&self, url: reqwest::Url, limit: usize, from_data: bool) -> Result<Vec<u8>, RepoFetchError> {
        if from_data {
            self.policy.check(url.as_str()).map_err(FetchError::Policy)?;
        }
        let client = if from_data { &self.client } else { &self.operator_client };
        let shown = url.to_string();
        let mut response = client.get(url).send().await.map_err(|error| request_error(&shown, error))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Err(FetchError::NotFound.into());
        }
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            if let Ok(XrpcError { error, message }) = serde_json::from_str::<XrpcError>(&body)
                && UNAVAILABLE_ERRORS.contains(&error.as_str())
            {
                return Err(RepoFetchError::Unavailable(format!("{error}: {}", message.unwrap_or_default())));
            }
            return Err(FetchError::Http(format!("{shown} answered {status}: {body}")).into());
        }
        if response.content_length().is_some_and(|length| length > limit as u64) {
            return Err(FetchError::TooLarge(limit).into());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| request_error(&shown, error))? {
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge(limit).into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// A request error, with a refusal of the policy's resolver told apart from network trouble.
fn request_error(url: &str, error: reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(current) = source {
        if let Some(refused) = current.downcast_ref::<PolicyRefused>() {
            return FetchError::Policy(refused.0.clone());
        }
        source = current.source();
    }
    FetchError::Http(format!("{url}: {error}"))
}

fn xrpc_url(base: &str, method: &str, params: &[(&str, &str)]) -> Result<reqwest::Url, FetchError> {
    let mut url = reqwest::Url::parse(&format!("{}/xrpc/{method}", base.trim_end_matches('/')))
        .map_err(|error| FetchError::Policy(format!("invalid URL {base:?}: {error}")))?;
    url.query_pairs_mut().extend_pairs(params);
    Ok(url)
}

impl RepoFetcher for HttpRepoFetcher {
    async fn did_document(&self, did: &str) -> Result<String, FetchError> {
        Fetcher::did_document(&self.documents, did).await
    }

    async fn get_repo(&self, pds: &str, did: &str) -> Result<Vec<u8>, RepoFetchError> {
        let url = xrpc_url(pds, "com.atproto.sync.getRepo", &[("did", did)])?;
        match self.get(url, self.max_repo_bytes, true).await {
            Err(RepoFetchError::Fetch(FetchError::NotFound)) => {
                Err(RepoFetchError::Unavailable(format!("{pds} has no repository for {did}")))
            }
            other => other,
        }
    }

    async fn list_page(&self, listing: &Listing, cursor: Option<&str>) -> Result<ListingPage, FetchError> {
        let mut params: Vec<(&str, &str)> = Vec::new();
        let (base, method) = match listing {
            Listing::RelayCollection { relay, collection } => {
                params.push(("collection", collection));
                params.push(("limit", "2000"));
                (relay, "com.atproto.sync.listReposByCollection")
            }
            Listing::Pds { pds } => {
                params.push(("limit", "1000"));
                (pds, "com.atproto.sync.listRepos")
            }
        };
        if let Some(cursor) = cursor {
            params.push(("cursor", cursor));
        }
        // The operator named this host (not user data): no policy check, like the upstream URL.
        let bytes = match self.get(xrpc_url(base, method, &params)?, 16 * 1024 * 1024, false).await {
            Ok(bytes) => bytes,
            Err(RepoFetchError::Fetch(error)) => return Err(error),
            Err(RepoFetchError::Unavailable(reason)) => return Err(FetchError::Http(reason)),
        };
        let answer: ListReposAnswer = serde_json::from_slice(&bytes)
            .map_err(|error| FetchError::Http(format!("{method} answered something else than a listing: {error}")))?;
        Ok(ListingPage {
            dids: answer.repos.into_iter().filter(|repo| repo.active != Some(false)).map(|repo| repo.did).collect(),
            cursor: answer.cursor.filter(|cursor| !cursor.is_empty()),
        })
    }
}

/// Where the DIDs to backfill come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// Every DID with a record in one of the `io.atcr.*` collections, per the relay.
    Relay(String),
    /// Every active account of one PDS.
    Pds(String),
    /// Exactly these.
    Dids(Vec<String>),
}

impl Discovery {
    /// A stable name for the job's checkpoint key.
    pub fn label(&self) -> String {
        match self {
            Discovery::Relay(url) => format!("relay:{}", url.trim_end_matches('/')),
            Discovery::Pds(url) => format!("pds:{}", url.trim_end_matches('/')),
            Discovery::Dids(dids) => {
                let mut sorted: Vec<&String> = dids.iter().collect();
                sorted.sort();
                sorted.dedup();
                // Short and stable: the list itself can be long.
                let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
                for byte in sorted.iter().flat_map(|did| did.bytes().chain(std::iter::once(0))) {
                    hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
                }
                format!("dids:{}:{hash:016x}", sorted.len())
            }
        }
    }
}

/// The DIDs to backfill, deduplicated, in listing order. Listings are followed page by page.
pub async fn discover<F: RepoFetcher>(fetcher: &F, discovery: &Discovery) -> Result<Vec<String>, BackfillError> {
    let listings: Vec<Listing> = match discovery {
        Discovery::Dids(dids) => return Ok(dedup(dids.iter().cloned())),
        Discovery::Pds(pds) => vec![Listing::Pds { pds: pds.clone() }],
        Discovery::Relay(relay) => DISCOVERY_COLLECTIONS
            .iter()
            .map(|collection| Listing::RelayCollection { relay: relay.clone(), collection: collection.to_string() })
            .collect(),
    };
    let mut dids = Vec::new();
    for listing in &listings {
        let mut cursor: Option<String> = None;
        let mut seen_cursors = HashSet::new();
        loop {
            let page = fetcher
                .list_page(listing, cursor.as_deref())
                .await
                .map_err(|error| BackfillError::Listing { url: format!("{listing:?}"), reason: error.to_string() })?;
            dids.extend(page.dids);
            match page.cursor {
                // A cursor seen before would loop forever.
                Some(next) if seen_cursors.insert(next.clone()) => cursor = Some(next),
                _ => break,
            }
        }
    }
    Ok(dedup(dids.into_iter()))
}

fn dedup(dids: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = HashSet::new();
    dids.filter(|did| did.starts_with("did:") && seen.insert(did.clone())).collect()
}

// ------------------------------------------------------------------------------------------------
// The backfiller
// ------------------------------------------------------------------------------------------------

/// What happened to one DID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DidOutcome {
    /// Finished by this job earlier (a resumed job).
    AlreadyDone,
    /// Compared; `puts` creates/updates and `deletes` appended (both 0 when the log was right).
    Synced { rev: String, puts: usize, deletes: usize },
    /// The account has no repository to read now (deleted, deactivated, taken down): nothing
    /// to compare, and not a failure (the log keeps what it holds; `#account` events say why).
    Unavailable { reason: String },
    /// Refused or unreachable; quarantined when the repository itself was bad.
    Failed { reason: String },
}

/// One DID's report, for progress output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DidReport {
    pub did: String,
    pub outcome: DidOutcome,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub dids: usize,
    pub already_done: usize,
    pub synced: usize,
    pub unavailable: usize,
    pub failed: usize,
    pub puts: usize,
    pub deletes: usize,
    /// Whether the job is finished (no failures), so the next run starts a new one.
    pub finished: bool,
}

/// Fetches, verifies, diffs and appends, for many DIDs at once or one at a time.
pub struct Backfiller<F: RepoFetcher> {
    log: Arc<EventLog>,
    writer: LogWriter,
    fetcher: Arc<F>,
    /// What the log holds; diff and append happen under this lock, so they see each other.
    state: Mutex<LogState>,
}

impl<F: RepoFetcher> Backfiller<F> {
    pub fn new(log: Arc<EventLog>, writer: LogWriter, fetcher: F) -> Self {
        Backfiller { log, writer, fetcher: Arc::new(fetcher), state: Mutex::new(LogState::new()) }
    }

    pub fn fetcher(&self) -> &F {
        &self.fetcher
    }

    /// Backfills `dids` as the job `label`, `concurrency` DIDs at a time (each DID in order),
    /// calling `progress` after each DID. Resumes an unfinished job of the same label unless
    /// `restart`.
    pub async fn run(
        &self,
        label: &str,
        dids: Vec<String>,
        concurrency: usize,
        restart: bool,
        progress: impl Fn(&DidReport) + Send + Sync,
    ) -> Result<RunSummary, BackfillError> {
        let job_key = job_key(label);
        let job = match self.log.consumer_checkpoint(&job_key)? {
            Some(id) if id != 0 && !restart => {
                tracing::info!(job = id, label, "resuming an unfinished backfill job");
                id
            }
            _ => {
                let id = u64::try_from(now_micros()).unwrap_or(1).max(1);
                self.writer
                    .append(AppendBatch { checkpoints: vec![(job_key.clone(), id)], ..AppendBatch::default() })
                    .await?;
                id
            }
        };
        let mut summary = RunSummary { dids: dids.len(), ..RunSummary::default() };
        let progress = &progress;
        let mut reports = futures_util::stream::iter(dids)
            .map(|did| async move {
                let outcome = self.job_did(&did, job).await;
                (did, outcome)
            })
            .buffer_unordered(concurrency.max(1));
        while let Some((did, outcome)) = reports.next().await {
            let outcome = match outcome {
                Ok(outcome) => outcome,
                // Our own storage failing stops everything (invariant 5).
                Err(BackfillError::Storage(error)) => return Err(BackfillError::Storage(error)),
                Err(error) => {
                    tracing::warn!(%did, %error, "backfill of a DID failed");
                    DidOutcome::Failed { reason: error.to_string() }
                }
            };
            match &outcome {
                DidOutcome::AlreadyDone => summary.already_done += 1,
                DidOutcome::Synced { puts, deletes, .. } => {
                    summary.synced += 1;
                    summary.puts += puts;
                    summary.deletes += deletes;
                }
                DidOutcome::Unavailable { .. } => summary.unavailable += 1,
                DidOutcome::Failed { .. } => summary.failed += 1,
            }
            progress(&DidReport { did, outcome });
        }
        drop(reports);
        if summary.failed == 0 {
            self.writer.append(AppendBatch { checkpoints: vec![(job_key, 0)], ..AppendBatch::default() }).await?;
            summary.finished = true;
        }
        Ok(summary)
    }

    async fn job_did(&self, did: &str, job: u64) -> Result<DidOutcome, BackfillError> {
        if self.log.consumer_checkpoint(&did_key(did))?.is_some_and(|done| done >= job) {
            return Ok(DidOutcome::AlreadyDone);
        }
        let outcome = self.sync_did(did).await?;
        if matches!(outcome, DidOutcome::Synced { .. } | DidOutcome::Unavailable { .. }) {
            // Only after the DID's events are durable and known not to be stale.
            self.writer
                .append(AppendBatch { checkpoints: vec![(did_key(did), job)], ..AppendBatch::default() })
                .await?;
        }
        Ok(outcome)
    }

    /// Brings one DID's records in the log up to its repository now: the path of backfill and of
    /// a resync after `#sync`. A repository that fails a check is quarantined with the reason and
    /// reported as failed; our own storage failing is an error.
    pub async fn sync_did(&self, did: &str) -> Result<DidOutcome, BackfillError> {
        let mut puts = 0;
        let mut deletes = 0;
        for attempt in 1..=MAX_ATTEMPTS {
            let (pds, key) = match self.resolve(did).await {
                Ok(resolved) => resolved,
                Err(error @ BackfillError::Storage(_)) => return Err(error),
                Err(error) => return Ok(DidOutcome::Failed { reason: error.to_string() }),
            };
            let car = match self.fetcher.get_repo(&pds, did).await {
                Ok(car) => car,
                Err(RepoFetchError::Unavailable(reason)) => return Ok(DidOutcome::Unavailable { reason }),
                Err(error) => return Ok(DidOutcome::Failed { reason: format!("getRepo of {did} at {pds}: {error}") }),
            };
            let (owned_did, owned_key) = (did.to_string(), key.clone());
            let read = tokio::task::spawn_blocking(move || {
                let snapshot = read_repo_car(&car, &owned_did, &owned_key);
                (car, snapshot)
            })
            .await
            .map_err(|error| BackfillError::Rejected {
                did: did.to_string(),
                reason: format!("reader failed: {error}"),
            })?;
            let snapshot = match read {
                (_, Ok(snapshot)) => snapshot,
                (car, Err(reason)) => {
                    self.quarantine(did, &pds, &reason, car).await?;
                    return Ok(DidOutcome::Failed { reason: format!("repository of {did} rejected: {reason}") });
                }
            };
            let mut state = self.state.lock().await;
            blocking(|| state.catch_up(&self.log))?;
            let held = state.did(did);
            if held.and_then(|held| held.newest_rev.as_deref()).is_some_and(|newest| newest > snapshot.rev.as_str()) {
                // Live ingest already applied a newer commit than the repository we fetched.
                drop(state);
                tracing::debug!(%did, rev = %snapshot.rev, attempt, "live ingest is ahead of the fetched repository, fetching again");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                continue;
            }
            let events = diff_events(held, &snapshot, now_micros());
            if events.is_empty() {
                return Ok(DidOutcome::Synced { rev: snapshot.rev, puts, deletes });
            }
            let (new_puts, new_deletes) = count(&events);
            let batch = AppendBatch {
                events,
                commit_blocks: vec![(snapshot.commit_cid.clone(), snapshot.commit_block.clone())],
                ..AppendBatch::default()
            };
            let receipt: AppendReceipt = self.writer.append(batch).await?;
            blocking(|| state.catch_up(&self.log))?;
            let skipped_ours = state
                .did(did)
                .and_then(|held| held.last_stale_offset)
                .is_some_and(|offset| offset >= receipt.first_offset);
            if !skipped_ours {
                puts += new_puts;
                deletes += new_deletes;
                tracing::debug!(%did, rev = %snapshot.rev, puts, deletes, "backfilled");
                return Ok(DidOutcome::Synced { rev: snapshot.rev, puts, deletes });
            }
            // A newer live commit landed between our diff and our append: our events are stale
            // for the runner too. Fetch the repository again (it now contains that commit).
            tracing::info!(%did, rev = %snapshot.rev, attempt, "a live commit overtook the backfill, fetching again");
        }
        Err(BackfillError::Overtaken(did.to_string()))
    }

    /// The DID's PDS endpoint and signing key, from its current DID document.
    async fn resolve(&self, did: &str) -> Result<(String, PublicKey), BackfillError> {
        let identity = |reason: String| BackfillError::Identity { did: did.to_string(), reason };
        let document = self.fetcher.did_document(did).await.map_err(|error| identity(error.to_string()))?;
        let facts = parse_did_document(&document).map_err(identity)?;
        if facts.did != did {
            return Err(identity(format!("the document served names {}", facts.did)));
        }
        let pds = facts.pds_endpoint.ok_or_else(|| identity("no #atproto_pds service".into()))?;
        let (kind, multibase) = facts.signing_key.ok_or_else(|| identity("no #atproto verification method".into()))?;
        let key =
            PublicKey::from_verification_method(&kind, &multibase).map_err(|error| identity(error.to_string()))?;
        Ok((pds, key))
    }

    async fn quarantine(&self, did: &str, pds: &str, reason: &str, car: Vec<u8>) -> Result<(), BackfillError> {
        tracing::warn!(%did, %pds, %reason, bytes = car.len(), "repository quarantined");
        let raw = if car.len() <= MAX_QUARANTINED_CAR_BYTES { car } else { Vec::new() };
        let entry = QuarantineEntry {
            received_at_us: now_micros(),
            upstream: format!("{}/xrpc/com.atproto.sync.getRepo", pds.trim_end_matches('/')),
            upstream_seq: None,
            did: Some(did.to_string()),
            reason: format!("backfill: {reason}"),
            raw,
        };
        self.writer.append(AppendBatch { quarantine: vec![entry], ..AppendBatch::default() }).await?;
        Ok(())
    }
}

/// The `consumer_checkpoints` key of the resync follower: the next log offset it reads.
pub const RESYNC_CONSUMER: &str = "resync";
/// Events read between two saves of the resync follower's position (when no resync happened).
const RESYNC_CHECKPOINT_EVERY: u64 = 100_000;

impl<F: RepoFetcher> Backfiller<F> {
    /// Follows the log and resyncs every account a `Resync` event names (`#sync`, a broken
    /// chain), through [`Backfiller::sync_did`], until `stop`. Its checkpoint moves past an event
    /// once the resync is done (or failed: a failure is logged and counted, not retried forever).
    pub async fn follow_resyncs(&self, stop: CancellationToken) -> Result<(), StorageError> {
        let mut head = self.log.subscribe();
        let mut next = self.log.consumer_checkpoint(RESYNC_CONSUMER)?.unwrap_or(0);
        loop {
            let page = blocking(|| self.log.read_from(next, LOG_PAGE))?;
            let Some(last) = page.last() else {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    changed = head.changed() => if changed.is_err() { return Ok(()) },
                    // Appends by other processes do not notify: poll too.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            let reached = last.offset + 1;
            for stored in &page {
                let EventBody::Resync { reason } = &stored.event.body else { continue };
                if stop.is_cancelled() {
                    return Ok(());
                }
                let did = stored.event.did.as_str();
                tracing::info!(%did, %reason, offset = stored.offset, "resyncing an account");
                match self.sync_did(did).await {
                    Ok(DidOutcome::Synced { rev, puts, deletes }) => {
                        metrics::counter!("atcr_resyncs_total", "outcome" => "synced").increment(1);
                        tracing::info!(%did, %rev, puts, deletes, "account resynced");
                    }
                    Ok(outcome) => {
                        metrics::counter!("atcr_resyncs_total", "outcome" => "failed").increment(1);
                        tracing::warn!(%did, ?outcome, "resync failed");
                    }
                    Err(BackfillError::Storage(error)) => return Err(error),
                    Err(error) => {
                        metrics::counter!("atcr_resyncs_total", "outcome" => "failed").increment(1);
                        tracing::warn!(%did, %error, "resync failed");
                    }
                }
                self.writer
                    .append(AppendBatch {
                        checkpoints: vec![(RESYNC_CONSUMER.to_string(), stored.offset + 1)],
                        ..AppendBatch::default()
                    })
                    .await?;
            }
            // Without a resync the position is saved only now and then: a restart re-reads a
            // little, and a busy log does not pay one more fsync per batch.
            let saved = self.log.consumer_checkpoint(RESYNC_CONSUMER)?.unwrap_or(0);
            if reached.saturating_sub(saved) >= RESYNC_CHECKPOINT_EVERY {
                self.writer
                    .append(AppendBatch {
                        checkpoints: vec![(RESYNC_CONSUMER.to_string(), reached)],
                        ..AppendBatch::default()
                    })
                    .await?;
            }
            next = reached;
        }
    }
}

/// Runs log reads (the first [`LogState::catch_up`] reads the whole log) without starving the
/// runtime's other tasks: on a multi-threaded runtime the worker hands its tasks to others first.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

fn count(events: &[Event]) -> (usize, usize) {
    let deletes = events.iter().filter(|event| matches!(event.body, EventBody::RecordDeleted { .. })).count();
    (events.len() - deletes, deletes)
}

#[cfg(test)]
mod tests;
