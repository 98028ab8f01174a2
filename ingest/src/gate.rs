//! The commit gate: live Sync 1.1 checks on every `io.atcr.*` commit before it may become
//! events, so that an unverifiable commit never reaches a projection.
//!
//! Why a stage of its own: [`crate::verify`] is pure (a frame and a key in, yes or why not out),
//! but live ingest also needs the author's key (the network, through the cached
//! [`IdentityResolver`]), per-DID memory (the newest verified rev, the newest rev seen) and
//! decisions about what a failure means. The firehose's processing loop runs the gate between
//! decoding and appending; the socket read loop never waits for it (invariant 8): frames queue
//! while keys are fetched, and keys missing for a batch are fetched concurrently, once per DID.
//!
//! Per commit, in this order (cheap first):
//! 1. rev strictly increasing per DID: a commit at or below the newest verified rev is a replay
//!    or stale, refused and counted;
//! 2. the author's signing key (cached; fetched on a miss);
//! 3. [`verify_commit`]: CAR root, repo/rev, signature, MST inversion where `prevData` is
//!    present. A signature failure re-fetches the DID document once and checks again (a key
//!    rotation reaches the firehose before our cache expires); only then is it refused;
//! 4. the `since` chain: a verified commit whose `since` is not the newest rev we saw for the
//!    DID means we missed commits; the commit is kept (it is signed and newer), and the account
//!    is marked desynchronized (a `Resync` event) for backfill/resync to repair.
//!
//! Refused commits go to quarantine with the reason (the caller keeps the raw frame). The
//! per-DID revs are handed to the batch ([`CommitGate::take_updates`]) and so become durable in
//! the same transaction as the events they admitted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde::de::IgnoredAny;

use atcr_storage::RepoRevs;

use crate::frame::CommitFacts;
use crate::identity::IdentityResolver;
use crate::metrics as names;
use crate::verify::verify_commit;

/// A DID's document is fetched again after a signature failure at most this often, so a stream
/// of forged frames cannot make us hammer the PLC directory.
const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// What the gate decided about one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Verified: its events may be appended. `desync` says why the account must be resynced.
    Accept { desync: Option<String> },
    /// Not trusted: quarantine the frame with `reason`; `kind` labels the metric.
    Reject { kind: &'static str, reason: String },
}

/// Counters of what the gate decided, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GateCounts {
    pub verified: u64,
    /// Verified by signature only: the frame carried no `prevData` to prove its ops against.
    pub unproven_ops: u64,
    pub stale: u64,
    pub rejected: u64,
    pub desynchronized: u64,
    pub key_refreshes: u64,
}

pub struct CommitGate {
    identities: Arc<IdentityResolver>,
    repos: HashMap<String, RepoRevs>,
    /// DIDs whose state changed since the last [`CommitGate::take_updates`].
    changed: BTreeMap<String, ()>,
    last_refresh: HashMap<String, Instant>,
    counts: GateCounts,
}

impl CommitGate {
    /// A gate that knows the revs stored in the log ([`atcr_storage::EventLog::repo_revs`]).
    pub fn new(identities: Arc<IdentityResolver>, known: impl IntoIterator<Item = (String, RepoRevs)>) -> Self {
        CommitGate {
            identities,
            repos: known.into_iter().collect(),
            changed: BTreeMap::new(),
            last_refresh: HashMap::new(),
            counts: GateCounts::default(),
        }
    }

    pub fn counts(&self) -> GateCounts {
        self.counts
    }

    /// The state the gate holds for `did`.
    pub fn repo(&self, did: &str) -> Option<&RepoRevs> {
        self.repos.get(did)
    }

    /// Resolves, concurrently, the identities of `dids` that are not cached, so the checks of a
    /// batch wait for the slowest lookup once rather than for each in turn.
    pub async fn prefetch_keys<'a>(&self, dids: impl IntoIterator<Item = &'a str>) {
        let mut missing: Vec<&str> = dids.into_iter().filter(|did| self.identities.cached(did).is_none()).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        let lookups = missing.iter().map(|did| self.identities.resolve(did));
        let outcomes = futures_util::future::join_all(lookups).await;
        for (did, outcome) in missing.iter().zip(outcomes) {
            if let Err(error) = outcome {
                tracing::warn!(%did, %error, "cannot resolve a commit author's identity");
            }
        }
    }

    /// Decides about one decoded `io.atcr.*` commit (see the module doc).
    pub async fn check(&mut self, commit: &CommitFacts) -> Verdict {
        let verdict = self.decide(commit).await;
        match &verdict {
            Verdict::Accept { desync } => {
                self.counts.verified += 1;
                metrics::counter!(names::COMMITS_VERIFIED).increment(1);
                if desync.is_some() {
                    self.counts.desynchronized += 1;
                    metrics::counter!(names::REPOS_DESYNCHRONIZED, "cause" => "since").increment(1);
                }
                let state = self.repos.entry(commit.did.clone()).or_default();
                state.verified = commit.rev.clone();
                if commit.rev > state.seen {
                    state.seen = commit.rev.clone();
                }
                self.changed.insert(commit.did.clone(), ());
            }
            Verdict::Reject { kind, reason } => {
                if *kind == "stale_rev" {
                    self.counts.stale += 1;
                } else {
                    self.counts.rejected += 1;
                }
                metrics::counter!(names::COMMITS_REJECTED, "reason" => *kind).increment(1);
                tracing::warn!(did = %commit.did, rev = %commit.rev, seq = commit.seq, kind, %reason, "commit refused");
            }
        }
        verdict
    }

    async fn decide(&mut self, commit: &CommitFacts) -> Verdict {
        let state = self.repos.get(&commit.did);
        if let Some(state) = state
            && !state.verified.is_empty()
            && commit.rev.as_str() <= state.verified.as_str()
        {
            return Verdict::Reject {
                kind: "stale_rev",
                reason: format!(
                    "rev {} of {} is not newer than its last verified rev {} (a replayed or stale commit)",
                    commit.rev, commit.did, state.verified
                ),
            };
        }
        let desync = match (state.map(|state| state.seen.as_str()).filter(|seen| !seen.is_empty()), &commit.since) {
            (Some(seen), Some(since)) if since == seen => None,
            (Some(seen), since) => Some(format!(
                "commit {} of {} follows rev {}, but the last rev seen was {seen}: commits were missed",
                commit.rev,
                commit.did,
                since.as_deref().unwrap_or("(none)")
            )),
            (None, _) => None,
        };

        let key = match self.identities.resolve(&commit.did).await.and_then(|identity| identity.signing_key().cloned())
        {
            Ok(key) => key,
            Err(error) => {
                return Verdict::Reject { kind: "identity", reason: format!("cannot verify the commit: {error}") };
            }
        };
        let first = match verify_commit(commit, &key) {
            Ok(verified) => {
                self.note_proof(verified.ops_proven);
                return Verdict::Accept { desync };
            }
            Err(error) => error,
        };
        if !first.is_signature_failure() || !self.may_refresh(&commit.did) {
            return Verdict::Reject { kind: first.kind(), reason: first.to_string() };
        }
        // The key may have rotated since we cached it: fetch the document once and try again.
        self.counts.key_refreshes += 1;
        metrics::counter!(names::KEY_REFRESHES).increment(1);
        let refreshed = match self.identities.refresh(&commit.did).await {
            Ok(identity) => identity,
            Err(error) => {
                return Verdict::Reject {
                    kind: first.kind(),
                    reason: format!("{first}; re-fetching the DID document failed: {error}"),
                };
            }
        };
        let key = match refreshed.signing_key() {
            Ok(key) => key.clone(),
            Err(error) => return Verdict::Reject { kind: "identity", reason: format!("{first}; then {error}") },
        };
        match verify_commit(commit, &key) {
            Ok(verified) => {
                self.note_proof(verified.ops_proven);
                Verdict::Accept { desync }
            }
            Err(error) => Verdict::Reject {
                kind: error.kind(),
                reason: format!("{error} (also after re-fetching the DID document)"),
            },
        }
    }

    fn note_proof(&mut self, ops_proven: bool) {
        if !ops_proven {
            self.counts.unproven_ops += 1;
            metrics::counter!(names::COMMITS_UNPROVEN).increment(1);
        }
    }

    fn may_refresh(&mut self, did: &str) -> bool {
        let now = Instant::now();
        match self.last_refresh.get(did) {
            Some(last) if now.duration_since(*last) < REFRESH_INTERVAL => false,
            _ => {
                self.last_refresh.insert(did.to_string(), now);
                true
            }
        }
    }

    /// A commit of a DID we follow that is not ours to verify (no `io.atcr.*` op): its rev
    /// continues the `since` chain. Unverified, so it never moves the verified rev.
    pub fn observe_rev(&mut self, did: &str, rev: &str) {
        let Some(state) = self.repos.get_mut(did) else { return };
        if rev > state.seen.as_str() {
            state.seen = rev.to_string();
            self.changed.insert(did.to_string(), ());
        }
    }

    /// A raw frame that decoded as skipped: when it is a commit of a DID we follow, its rev.
    pub fn observe_skipped_frame(&mut self, raw: &[u8]) {
        if self.repos.is_empty() {
            return;
        }
        if let Some((did, rev)) = peek_commit_rev(raw) {
            self.observe_rev(&did, &rev);
        }
    }

    /// `#identity`: the next check of `did` fetches its document again.
    pub fn identity_changed(&self, did: &str) {
        self.identities.invalidate(did);
    }

    /// `#sync`: the repo was replaced at `rev`; the next commit follows it.
    pub fn synced(&mut self, did: &str, rev: Option<&str>) {
        self.counts.desynchronized += 1;
        metrics::counter!(names::REPOS_DESYNCHRONIZED, "cause" => "sync").increment(1);
        if let (Some(state), Some(rev)) = (self.repos.get_mut(did), rev) {
            state.seen = rev.to_string();
            self.changed.insert(did.to_string(), ());
        }
    }

    /// The per-DID states changed since the last call, for the batch being appended.
    pub fn take_updates(&mut self) -> Vec<(String, RepoRevs)> {
        std::mem::take(&mut self.changed)
            .into_keys()
            .filter_map(|did| {
                let state = self.repos.get(&did)?.clone();
                Some((did, state))
            })
            .collect()
    }
}

/// The `repo` and `rev` of a raw `#commit` frame, read without touching its blocks.
pub fn peek_commit_rev(raw: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Header<'a> {
        op: i64,
        #[serde(borrow, default)]
        t: Option<&'a str>,
    }
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        repo: &'a str,
        #[serde(borrow)]
        rev: &'a str,
        #[serde(default, rename = "blocks")]
        _blocks: Option<IgnoredAny>,
    }
    let mut deserializer = serde_ipld_dagcbor::de::Deserializer::from_slice(raw);
    let header = Header::deserialize(&mut deserializer).ok()?;
    if header.op != 1 || header.t != Some("#commit") {
        return None;
    }
    let body = Body::deserialize(&mut deserializer).ok()?;
    Some((body.repo.to_string(), body.rev.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use atcr_gen::{FrameKind, GenConfig, Generator};

    use super::*;
    use crate::enrich::{FetchError, Fetcher};
    use crate::frame::{Frame, decode_frame};
    use crate::identity::IdentityConfig;

    /// DID documents from a table that a test may change, counting fetches.
    #[derive(Clone, Default)]
    struct Documents {
        served: Arc<Mutex<HashMap<String, String>>>,
        fetches: Arc<AtomicUsize>,
    }

    impl Fetcher for Documents {
        async fn did_document(&self, did: &str) -> Result<String, FetchError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            self.served.lock().unwrap().get(did).cloned().ok_or(FetchError::NotFound)
        }
        async fn blob(&self, _pds: &str, _did: &str, _cid: &str) -> Result<Vec<u8>, FetchError> {
            Err(FetchError::NotFound)
        }
    }

    /// One generated account's first commits (in order, with their raw frames), its document,
    /// and a document of the same DID naming another account's key.
    struct World {
        did: String,
        commits: Vec<(CommitFacts, Vec<u8>)>,
        document: String,
        rotated_away: String,
    }

    fn world() -> World {
        let mut generator = Generator::new(GenConfig::new(11, 2, 4, 80));
        let accounts = generator.accounts().to_vec();
        let (owner, other) = (&accounts[0], &accounts[1]);
        let rotated_away = owner.did_document().replace(&owner.public_key_multibase(), &other.public_key_multibase());
        let mut commits = Vec::new();
        for frame in generator.by_ref() {
            if frame.kind != FrameKind::Commit {
                continue;
            }
            if let Ok(Frame::Commit(facts)) = decode_frame(&frame.bytes)
                && facts.did == owner.did
            {
                commits.push((facts, frame.bytes.clone()));
                if commits.len() == 4 {
                    break;
                }
            }
        }
        assert_eq!(commits.len(), 4, "the generated world has 4 commits of its first account");
        World { did: owner.did.clone(), commits, document: owner.did_document(), rotated_away }
    }

    fn gate(documents: &Documents) -> CommitGate {
        CommitGate::new(Arc::new(IdentityResolver::new(documents.clone(), IdentityConfig::default())), Vec::new())
    }

    fn serve(documents: &Documents, did: &str, document: &str) {
        documents.served.lock().unwrap().insert(did.to_string(), document.to_string());
    }

    #[tokio::test]
    async fn genuine_commits_pass_in_order_and_a_replay_is_refused_as_stale() {
        let world = world();
        let documents = Documents::default();
        serve(&documents, &world.did, &world.document);
        let mut gate = gate(&documents);
        for (commit, _) in &world.commits[..3] {
            assert_eq!(gate.check(commit).await, Verdict::Accept { desync: None }, "rev {}", commit.rev);
        }
        assert_eq!(documents.fetches.load(Ordering::SeqCst), 1, "the key is cached");
        let Verdict::Reject { kind, reason } = gate.check(&world.commits[1].0).await else { panic!("a replay passed") };
        assert_eq!(kind, "stale_rev");
        assert!(reason.contains("is not newer than its last verified rev"), "{reason}");
        let updates = gate.take_updates();
        let newest = &world.commits[2].0.rev;
        assert_eq!(updates, vec![(world.did.clone(), RepoRevs { verified: newest.clone(), seen: newest.clone() })]);
        assert!(gate.take_updates().is_empty(), "updates are handed out once");
        assert_eq!((gate.counts().verified, gate.counts().stale), (3, 1));
    }

    #[tokio::test]
    async fn a_gap_in_the_since_chain_marks_the_account_desynchronized() {
        let world = world();
        let documents = Documents::default();
        serve(&documents, &world.did, &world.document);
        let mut gate = gate(&documents);
        assert_eq!(gate.check(&world.commits[0].0).await, Verdict::Accept { desync: None });
        // commit 1 never arrives: commit 2 is signed and newer, so kept, but the chain broke
        let Verdict::Accept { desync: Some(reason) } = gate.check(&world.commits[2].0).await else {
            panic!("a gap must be noticed")
        };
        assert!(reason.contains("commits were missed"), "{reason}");
        // a commit seen without verification (no io.atcr op) continues the chain
        let (next, raw) = &world.commits[3];
        assert_eq!(peek_commit_rev(raw), Some((next.did.clone(), next.rev.clone())));
        let mut restarted = CommitGate::new(gate.identities.clone(), gate.take_updates());
        restarted.observe_rev(&world.did, &world.commits[2].0.rev);
        assert_eq!(restarted.check(next).await, Verdict::Accept { desync: None }, "state survives a restart");
        restarted.synced(&world.did, Some("zzzzzzzzzzzzz"));
        assert_eq!(restarted.repo(&world.did).unwrap().seen, "zzzzzzzzzzzzz");
    }

    #[tokio::test]
    async fn a_rotated_key_is_fetched_again_once_and_a_forgery_is_refused() {
        let world = world();
        let documents = Documents::default();
        // the cache holds a document whose key has since been rotated away
        serve(&documents, &world.did, &world.rotated_away);
        let mut gate = gate(&documents);
        gate.prefetch_keys([world.did.as_str()]).await;
        serve(&documents, &world.did, &world.document);
        assert_eq!(gate.check(&world.commits[0].0).await, Verdict::Accept { desync: None });
        assert_eq!((gate.counts().key_refreshes, documents.fetches.load(Ordering::SeqCst)), (1, 2));

        // now the served document is wrong: a signature failure re-fetches at most every 30 s
        serve(&documents, &world.did, &world.rotated_away);
        gate.identities.invalidate(&world.did);
        for (commit, _) in &world.commits[1..3] {
            let Verdict::Reject { kind, reason } = gate.check(commit).await else { panic!("a forgery passed") };
            assert_eq!(kind, "signature", "{reason}");
        }
        assert_eq!(gate.counts().key_refreshes, 1, "no second refresh within the interval");
        assert_eq!(gate.counts().rejected, 2);
        assert_eq!(gate.repo(&world.did).unwrap().verified, world.commits[0].0.rev, "refused commits move nothing");

        let mut unresolvable = gate_with_no_documents();
        let Verdict::Reject { kind, .. } = unresolvable.check(&world.commits[0].0).await else { panic!() };
        assert_eq!(kind, "identity");
    }

    fn gate_with_no_documents() -> CommitGate {
        gate(&Documents::default())
    }
}
