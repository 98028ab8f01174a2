//! `atcr audit verify [--did D]`: re-checks offline, from the log alone, that every stored
//! commit is what its events claim and was signed by the identity that owned the repo.
//!
//! For each distinct commit CID named by an event (the first event names where it is reported):
//! - the signed block is in the log and decodes as a repo commit (version 2 or 3);
//! - the block's `did` and `rev` are the event's (checked for every event of the commit);
//! - its signature verifies with the `#atproto` key of **the DID document valid at that point**:
//!   the newest `IdentityResolved` event for the DID at or before the commit's offset; when there
//!   is none yet (enrichment resolves a DID shortly *after* its first commit) the earliest one
//!   after it. A DID with no document in the log at all is reported as skipped, not failed.
//!
//! The log is read through a read-only handle, so this works while `atcr serve` writes; it
//! stops at the head it saw when it started. Each logged document's key is decoded once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use atcr_storage::did::parse_did_document;
use atcr_storage::{EventBody, EventLog, PublicKey, SignatureError, SignedCommit, StoredEvent};

use crate::config::Config;

/// Events read per page.
const PAGE: usize = 1024;
/// Signature checks collected before they run, spread over the cores (ECDSA verification is
/// ~80 µs of CPU per commit and dominates the audit).
const SIGNATURE_BATCH: usize = 4096;

const NO_DOCUMENT: &str = "no DID document in the log";

pub fn run(config: &Config, did: Option<String>) -> anyhow::Result<()> {
    let path = config.log_path();
    let log =
        EventLog::open_read_only(&path).with_context(|| format!("cannot read the event log at {}", path.display()))?;
    let started = Instant::now();
    let report = audit(&log, did.as_deref())?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for failure in &report.failures {
        writeln!(out, "{failure}")?;
    }
    writeln!(out, "{}", report.summary(started.elapsed()))?;
    out.flush()?;
    if !report.failures.is_empty() {
        anyhow::bail!("{} commit check(s) failed (see the lines above)", report.failures.len());
    }
    Ok(())
}

/// One failed check, reported with where it is in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub offset: u64,
    pub did: String,
    pub rev: String,
    pub commit_cid: String,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "offset {}: {} rev {}: {} (commit {})",
            self.offset, self.did, self.rev, self.reason, self.commit_cid
        )
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub events_read: u64,
    /// Distinct commits looked at.
    pub commits: u64,
    pub passed: u64,
    /// Sorted by offset.
    pub failures: Vec<Failure>,
    /// Commits not checked, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    pub documents: u64,
}

impl Report {
    fn summary(&self, elapsed: std::time::Duration) -> String {
        let skipped: u64 = self.skipped.values().sum();
        let mut line = format!(
            "audit verify: {} commits checked: {} passed, {} failed, {} skipped ({} events read in {:.2} s; DID documents: {})",
            self.commits,
            self.passed,
            self.failures.len(),
            skipped,
            self.events_read,
            elapsed.as_secs_f64(),
            self.documents,
        );
        for (reason, count) in &self.skipped {
            line.push_str(&format!("\nskipped {count}: {reason}"));
        }
        line
    }
}

/// A logged DID document, reduced to what verification needs: its offset and its key (or why
/// it has no usable one).
struct LoggedDocument {
    offset: u64,
    key: Result<PublicKey, String>,
}

impl LoggedDocument {
    fn parse(offset: u64, did: &str, document_json: &str) -> Self {
        let key = parse_did_document(document_json).and_then(|facts| {
            if facts.did != did {
                return Err(format!("is the document of {}", facts.did));
            }
            let Some((kind, multibase)) = facts.signing_key else {
                return Err("has no #atproto key".to_string());
            };
            PublicKey::from_verification_method(&kind, &multibase)
                .map_err(|error| format!("has an unusable #atproto key: {error}"))
        });
        LoggedDocument { offset, key }
    }
}

/// A commit whose block and event agree, waiting for a document (its DID has none yet).
struct PendingCommit {
    offset: u64,
    did: String,
    rev: String,
    commit_cid: String,
    commit: SignedCommit,
}

struct Auditor<'a> {
    log: &'a EventLog,
    did_filter: Option<&'a str>,
    /// The newest document seen so far per DID.
    documents: HashMap<String, Arc<LoggedDocument>>,
    pending: HashMap<String, Vec<PendingCommit>>,
    seen_commits: HashSet<String>,
    /// The commit of the previous event (cid, did, rev): the events of one commit are adjacent.
    previous_commit: Option<(String, String, String)>,
    /// Signature checks waiting to run, in the order they were decided.
    signature_checks: Vec<SignatureCheck>,
    threads: usize,
    report: Report,
}

/// A commit and the document whose key must have signed it.
struct SignatureCheck {
    commit: PendingCommit,
    document: Arc<LoggedDocument>,
}

impl SignatureCheck {
    /// `None` when the signature verifies, else why not.
    fn failure(&self) -> Option<String> {
        let document = &self.document;
        let when = if document.offset > self.commit.offset { " (the earliest one after the commit)" } else { "" };
        let key = match &document.key {
            Ok(key) => key,
            Err(problem) => {
                return Some(format!(
                    "cannot check the signature: the DID document logged at offset {}{when} {problem}",
                    document.offset
                ));
            }
        };
        match self.commit.commit.verify(key) {
            Ok(()) => None,
            Err(SignatureError::Mismatch) => Some(format!(
                "signature does not verify with the #atproto key of the DID document logged at offset {}{when}",
                document.offset
            )),
            Err(error) => Some(format!("{error} (DID document logged at offset {}{when})", document.offset)),
        }
    }
}

/// Runs the checks on up to `threads` threads; the answers come back in the checks' order.
fn run_signature_checks(checks: &[SignatureCheck], threads: usize) -> Vec<Option<String>> {
    if threads <= 1 || checks.len() < 64 {
        return checks.iter().map(SignatureCheck::failure).collect();
    }
    let chunk = checks.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = checks
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(SignatureCheck::failure).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| match worker.join() {
                Ok(answers) => answers,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

/// Walks the log from offset 0 to the head it has now and checks every commit.
pub fn audit(log: &EventLog, did_filter: Option<&str>) -> anyhow::Result<Report> {
    let head = log.next_offset()?;
    let mut auditor = Auditor {
        log,
        did_filter,
        documents: HashMap::new(),
        pending: HashMap::new(),
        seen_commits: HashSet::new(),
        previous_commit: None,
        signature_checks: Vec::with_capacity(SIGNATURE_BATCH),
        threads: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        report: Report::default(),
    };
    let mut from = 0;
    while from < head {
        let page = log.read_from(from, PAGE)?;
        let Some(last) = page.last() else { break };
        from = last.offset + 1;
        for stored in page.into_iter().take_while(|stored| stored.offset < head) {
            auditor.report.events_read += 1;
            auditor.handle(stored)?;
        }
    }
    let mut report = auditor.finish();
    report.failures.sort_by_key(|failure| failure.offset);
    Ok(report)
}

impl Auditor<'_> {
    fn handle(&mut self, stored: StoredEvent) -> anyhow::Result<()> {
        let StoredEvent { offset, event } = stored;
        if self.did_filter.is_some_and(|did| did != event.did) {
            return Ok(());
        }
        if let EventBody::IdentityResolved { document_json } = &event.body {
            self.report.documents += 1;
            let document = Arc::new(LoggedDocument::parse(offset, &event.did, document_json));
            // Commits logged before the DID's first document use the earliest one after them.
            for pending in self.pending.remove(&event.did).unwrap_or_default() {
                self.check_signature(pending, document.clone());
            }
            self.documents.insert(event.did, document);
            return Ok(());
        }
        let Some(commit_cid) = event.commit_cid else { return Ok(()) };
        let rev = event.rev.unwrap_or_default();
        let failure = |reason: String| Failure {
            offset,
            did: event.did.clone(),
            rev: display_rev(&rev),
            commit_cid: commit_cid.clone(),
            reason,
        };
        if let Some((previous_cid, did, previous_rev)) = &self.previous_commit
            && *previous_cid == commit_cid
        {
            if let Some(reason) = binding_mismatch(did, previous_rev, &event.did, &rev) {
                self.report.failures.push(failure(reason));
            }
            return Ok(());
        }
        let first_time = self.seen_commits.insert(commit_cid.clone());
        let Some(block) = self.log.commit_block(&commit_cid)? else {
            if first_time {
                self.report.commits += 1;
                self.report.failures.push(failure("the signed commit block is missing from the log".to_string()));
            }
            self.previous_commit = None;
            return Ok(());
        };
        let commit = match SignedCommit::decode(&block) {
            Ok(commit) => commit,
            Err(error) => {
                if first_time {
                    self.report.commits += 1;
                    self.report.failures.push(failure(format!("the stored commit block does not decode: {error}")));
                }
                self.previous_commit = None;
                return Ok(());
            }
        };
        self.previous_commit = Some((commit_cid.clone(), commit.did.clone(), commit.rev.clone()));
        if let Some(reason) = binding_mismatch(&commit.did, &commit.rev, &event.did, &rev) {
            if first_time {
                self.report.commits += 1;
            }
            self.report.failures.push(failure(reason));
            return Ok(());
        }
        if !first_time {
            // The same commit named again later (another upstream): bound to it, already checked.
            return Ok(());
        }
        self.report.commits += 1;
        let pending = PendingCommit { offset, did: event.did, rev, commit_cid, commit };
        match self.documents.get(&pending.did) {
            Some(document) => {
                let document = document.clone();
                self.check_signature(pending, document);
            }
            None => self.pending.entry(pending.did.clone()).or_default().push(pending),
        }
        Ok(())
    }

    fn check_signature(&mut self, commit: PendingCommit, document: Arc<LoggedDocument>) {
        self.signature_checks.push(SignatureCheck { commit, document });
        if self.signature_checks.len() >= SIGNATURE_BATCH {
            self.run_signature_checks();
        }
    }

    fn run_signature_checks(&mut self) {
        let checks = std::mem::take(&mut self.signature_checks);
        let answers = run_signature_checks(&checks, self.threads);
        for (check, failure) in checks.into_iter().zip(answers) {
            let Some(reason) = failure else {
                self.report.passed += 1;
                continue;
            };
            let commit = check.commit;
            self.report.failures.push(Failure {
                offset: commit.offset,
                did: commit.did,
                rev: display_rev(&commit.rev),
                commit_cid: commit.commit_cid,
                reason,
            });
        }
    }

    fn finish(mut self) -> Report {
        self.run_signature_checks();
        let never_resolved: u64 = self.pending.values().map(|commits| commits.len() as u64).sum();
        if never_resolved > 0 {
            *self.report.skipped.entry(NO_DOCUMENT).or_default() += never_resolved;
        }
        self.report
    }
}

fn binding_mismatch(block_did: &str, block_rev: &str, event_did: &str, event_rev: &str) -> Option<String> {
    if block_did != event_did {
        return Some(format!("the commit block is for {block_did}, not for the event's DID"));
    }
    if block_rev != event_rev {
        return Some(format!("the commit block has rev {block_rev}, the event says {}", display_rev(event_rev)));
    }
    None
}

fn display_rev(rev: &str) -> String {
    if rev.is_empty() { "(none)".to_string() } else { rev.to_string() }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ipld_core::ipld::Ipld;
    use k256::ecdsa::signature::Signer as _;

    use atcr_storage::{AppendBatch, Event, PutAction, Source};

    use super::*;

    const ALICE: &str = "did:plc:alice";

    fn key(seed: u8) -> k256::ecdsa::SigningKey {
        k256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn document(did: &str, signing_key: &k256::ecdsa::SigningKey) -> String {
        let multikey = PublicKey::K256(*signing_key.verifying_key()).to_multikey();
        serde_json::json!({
            "id": did,
            "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": did, "publicKeyMultibase": multikey}],
        })
        .to_string()
    }

    fn commit_block(did: &str, rev: &str, signing_key: &k256::ecdsa::SigningKey) -> Vec<u8> {
        let data = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm".parse().unwrap();
        let mut map = BTreeMap::from([
            ("did".to_string(), Ipld::String(did.into())),
            ("version".to_string(), Ipld::Integer(3)),
            ("data".to_string(), Ipld::Link(data)),
            ("rev".to_string(), Ipld::String(rev.into())),
            ("prev".to_string(), Ipld::Null),
        ]);
        let signature: k256::ecdsa::Signature = signing_key.sign(&serde_ipld_dagcbor::to_vec(&map).unwrap());
        map.insert("sig".into(), Ipld::Bytes(signature.to_bytes().to_vec()));
        serde_ipld_dagcbor::to_vec(&map).unwrap()
    }

    fn event(did: &str, rev: Option<&str>, commit_cid: Option<&str>, body: EventBody) -> Event {
        Event {
            source: Source::Firehose,
            upstream_seq: None,
            did: did.into(),
            rev: rev.map(str::to_string),
            upstream_time: None,
            received_at_us: 0,
            commit_cid: commit_cid.map(str::to_string),
            body,
        }
    }

    /// A log built one entry at a time, so each entry's offset is its position.
    struct TestLog {
        _directory: tempfile::TempDir,
        log: EventLog,
        commits: u32,
    }

    impl TestLog {
        fn new() -> Self {
            let directory = tempfile::tempdir().unwrap();
            let log = EventLog::open(&directory.path().join("log.redb")).unwrap();
            TestLog { _directory: directory, log, commits: 0 }
        }

        fn document(&self, did: &str, json: String) -> u64 {
            let body = EventBody::IdentityResolved { document_json: json };
            let batch = AppendBatch { events: vec![event(did, None, None, body)], ..Default::default() };
            self.log.append(batch).unwrap().first_offset
        }

        /// A commit with `ops` record events; the block is signed for `block_did`/`block_rev`.
        fn commit(&mut self, did: &str, rev: &str, block: Vec<u8>, ops: usize) -> u64 {
            self.commits += 1;
            let cid = format!("bafycommit{}", self.commits);
            let put = || EventBody::RecordPut {
                collection: "io.atcr.tag".into(),
                rkey: "latest".into(),
                cid: "bafyrecord".into(),
                action: PutAction::Create,
                record: vec![0xa0],
            };
            let events = (0..ops).map(|_| event(did, Some(rev), Some(&cid), put())).collect();
            let batch = AppendBatch { events, commit_blocks: vec![(cid, block)], ..Default::default() };
            self.log.append(batch).unwrap().first_offset
        }
    }

    #[test]
    fn uses_the_newest_document_at_or_before_each_commit() {
        let (old_key, new_key) = (key(1), key(2));
        let mut log = TestLog::new();
        log.document(ALICE, document(ALICE, &old_key));
        log.commit(ALICE, "3aaa", commit_block(ALICE, "3aaa", &old_key), 2);
        let rotated_at = log.document(ALICE, document(ALICE, &new_key));
        log.commit(ALICE, "3aab", commit_block(ALICE, "3aab", &new_key), 1);
        // Signed with the key that was rotated away before this commit.
        let stale = log.commit(ALICE, "3aac", commit_block(ALICE, "3aac", &old_key), 1);

        let report = audit(&log.log, None).unwrap();
        assert_eq!((report.commits, report.passed, report.documents), (3, 2, 2));
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        let failure = &report.failures[0];
        assert_eq!((failure.offset, failure.did.as_str(), failure.rev.as_str()), (stale, ALICE, "3aac"));
        assert_eq!(
            failure.reason,
            format!(
                "signature does not verify with the #atproto key of the DID document logged at offset {rotated_at}"
            )
        );
    }

    #[test]
    fn commits_before_the_first_document_use_the_earliest_one_after() {
        let (first_key, later_key) = (key(1), key(2));
        let mut log = TestLog::new();
        log.commit(ALICE, "3aaa", commit_block(ALICE, "3aaa", &first_key), 1);
        log.commit(ALICE, "3aab", commit_block(ALICE, "3aab", &first_key), 1);
        log.document(ALICE, document(ALICE, &first_key));
        log.document(ALICE, document(ALICE, &later_key));
        let report = audit(&log.log, None).unwrap();
        assert_eq!((report.commits, report.passed), (2, 2), "{:?}", report.failures);

        // The other way round: the earliest document after does not hold the signing key.
        let mut log = TestLog::new();
        let commit_offset = log.commit(ALICE, "3aaa", commit_block(ALICE, "3aaa", &later_key), 1);
        let earliest = log.document(ALICE, document(ALICE, &first_key));
        log.document(ALICE, document(ALICE, &later_key));
        let report = audit(&log.log, None).unwrap();
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].offset, commit_offset);
        assert!(
            report.failures[0].reason.ends_with(&format!("offset {earliest} (the earliest one after the commit)")),
            "{}",
            report.failures[0]
        );
    }

    #[test]
    fn many_commits_are_checked_on_all_threads_and_failures_keep_their_offsets() {
        let (signing_key, intruder) = (key(4), key(5));
        let log = TestLog::new();
        log.document(ALICE, document(ALICE, &signing_key));
        let mut batch = AppendBatch::default();
        // More than the threaded path's threshold (64) of signature checks in one run.
        for index in 0..300 {
            let (rev, cid) = (format!("3a{index:04}"), format!("bafycommit{index}"));
            let signer = if index == 177 { &intruder } else { &signing_key };
            let body = EventBody::Account { active: true, status: None };
            batch.events.push(event(ALICE, Some(&rev), Some(&cid), body));
            batch.commit_blocks.push((cid, commit_block(ALICE, &rev, signer)));
        }
        log.log.append(batch).unwrap();
        let report = audit(&log.log, None).unwrap();
        assert_eq!((report.commits, report.passed), (300, 299));
        assert_eq!(report.failures.len(), 1);
        // Offset 0 is the document; commit `index` is at offset `index + 1`.
        assert_eq!((report.failures[0].offset, report.failures[0].rev.as_str()), (178, "3a0177"));
    }

    #[test]
    fn reports_missing_documents_blocks_and_mismatched_events() {
        let signing_key = key(3);
        let mut log = TestLog::new();
        log.document(ALICE, document(ALICE, &signing_key));
        log.commit("did:plc:unresolved", "3aaa", commit_block("did:plc:unresolved", "3aaa", &signing_key), 1);
        let wrong_did = log.commit(ALICE, "3aab", commit_block("did:plc:mallory", "3aab", &signing_key), 1);
        let wrong_rev = log.commit(ALICE, "3aac", commit_block(ALICE, "3zzz", &signing_key), 1);
        let garbage = log.commit(ALICE, "3aad", b"not cbor".to_vec(), 1);
        let bob_document = log.document("did:plc:bob", document(ALICE, &signing_key));
        let bob = log.commit("did:plc:bob", "3aae", commit_block("did:plc:bob", "3aae", &signing_key), 1);

        let report = audit(&log.log, None).unwrap();
        assert_eq!(report.skipped.get(NO_DOCUMENT), Some(&1));
        let reasons: Vec<(u64, &str)> =
            report.failures.iter().map(|failure| (failure.offset, failure.reason.as_str())).collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert_eq!(reasons[0], (wrong_did, "the commit block is for did:plc:mallory, not for the event's DID"));
        assert_eq!(reasons[1], (wrong_rev, "the commit block has rev 3zzz, the event says 3aac"));
        assert_eq!(reasons[2].0, garbage);
        assert!(reasons[2].1.starts_with("the stored commit block does not decode"));
        assert_eq!(
            reasons[3],
            (
                bob,
                format!(
                    "cannot check the signature: the DID document logged at offset {bob_document} is the document of {ALICE}"
                )
                .as_str()
            )
        );

        // --did: only that DID's commits and documents.
        let report = audit(&log.log, Some("did:plc:unresolved")).unwrap();
        assert_eq!((report.commits, report.passed, report.failures.len(), report.documents), (1, 0, 0, 0));
        assert_eq!(report.skipped.get(NO_DOCUMENT), Some(&1));
    }
}
