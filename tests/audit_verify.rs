//! `atcr audit verify` end to end, on real signatures: a log built from the firehose recorded
//! from Bluesky's reference PDS (`fixtures/demo/firehose.bin`, processed by ingest's own frame
//! processor) plus the DID documents its PLC served (`fixtures/demo/dids.json`, legacy
//! uncompressed secp256k1 keys). Every commit must verify; after one stored commit's signature
//! is tampered with, the binary must fail and name that commit's DID, rev and offset.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output};

use ipld_core::ipld::Ipld;

use atcr_storage::{AppendBatch, EventLog};

mod recorded;
use recorded::{demo_documents, demo_firehose_batch};

/// One `IdentityResolved` event as its own append (so it gets its own offset).
fn identity_resolved(did: &str, document_json: &str) -> AppendBatch {
    AppendBatch { events: vec![recorded::identity_resolved(did, document_json)], ..Default::default() }
}

const ATCR_BIN: &str = env!("CARGO_BIN_EXE_atcr");

/// A distinct commit as the log names it: first offset, DID, rev.
struct LoggedCommit {
    offset: u64,
    did: String,
    rev: String,
}

fn commits_in(log: &EventLog) -> BTreeMap<String, LoggedCommit> {
    let mut commits = BTreeMap::new();
    for stored in log.read_from(0, usize::MAX).unwrap() {
        let Some(cid) = stored.event.commit_cid else { continue };
        commits.entry(cid).or_insert(LoggedCommit {
            offset: stored.offset,
            did: stored.event.did,
            rev: stored.event.rev.unwrap(),
        });
    }
    commits
}

fn audit_verify(data_dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut command = Command::new(ATCR_BIN);
    command.current_dir(data_dir).arg("--data-dir").arg(data_dir).args(["audit", "verify"]).args(extra);
    for name in ["ATCR_DATA_DIR", "ATCR_LOG_FORMAT", "ATCR_LISTEN", "ATCR_UPSTREAM"] {
        command.env_remove(name);
    }
    let Output { status, stdout, stderr } =
        command.env("NO_COLOR", "1").env("RUST_LIB_BACKTRACE", "0").output().unwrap();
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    println!("$ atcr audit verify {}\n{stdout}{stderr}", extra.join(" "));
    (status.success(), stdout)
}

fn summary(checked: usize, passed: usize, failed: usize, skipped: usize) -> String {
    format!("{checked} commits checked: {passed} passed, {failed} failed, {skipped} skipped")
}

/// Flips one bit inside the `sig` bytes and re-encodes the block (still a valid commit).
fn with_flipped_signature_bit(block: &[u8]) -> Vec<u8> {
    let mut map: BTreeMap<String, Ipld> = serde_ipld_dagcbor::from_slice(block).unwrap();
    let Some(Ipld::Bytes(signature)) = map.get_mut("sig") else { panic!("commit without sig bytes") };
    signature[20] ^= 0x04;
    serde_ipld_dagcbor::to_vec(&map).unwrap()
}

#[test]
fn real_pds_commits_verify_and_a_tampered_signature_is_named() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path();
    let documents = demo_documents();
    let by_handle: HashMap<&str, &str> =
        documents.iter().map(|(did, (handle, _))| (handle.as_str(), did.as_str())).collect();
    let (alice, bob, carol) = (by_handle["alice.test"], by_handle["bob.test"], by_handle["carol.test"]);

    // alice is resolved before her first commit (newest document at or before it); bob and
    // carol only after all commits, as enrichment does (the earliest document after).
    let mut document_offsets = HashMap::new();
    let commits = {
        let log = EventLog::open(&data_dir.join("log.redb")).unwrap();
        document_offsets.insert(alice, log.append(identity_resolved(alice, &documents[alice].1)).unwrap().first_offset);
        log.append(demo_firehose_batch()).unwrap();
        for did in [bob, carol] {
            document_offsets.insert(did, log.append(identity_resolved(did, &documents[did].1)).unwrap().first_offset);
        }
        commits_in(&log)
    };
    let count = |did: &str| commits.values().filter(|commit| commit.did == did).count();
    assert_eq!(commits.len(), 52, "fixtures/demo/README.md: 52 frames carry io.atcr ops");
    assert!(count(alice) > 0 && count(bob) > 0 && count(carol) > 0);

    let (ok, out) = audit_verify(data_dir, &[]);
    assert!(ok, "every real commit verifies");
    assert!(out.contains(&summary(52, 52, 0, 0)), "{out}");
    assert!(out.contains("DID documents: 3)"), "{out}");

    let (ok, out) = audit_verify(data_dir, &["--did", bob]);
    assert!(ok);
    assert!(out.contains(&summary(count(bob), count(bob), 0, 0)), "{out}");

    // Tamper with one of carol's commits (not her first: any commit is fair game).
    let (cid, target) = commits.iter().filter(|(_, commit)| commit.did == carol).nth(1).unwrap();
    {
        let log = EventLog::open(&data_dir.join("log.redb")).unwrap();
        let block = log.commit_block(cid).unwrap().unwrap();
        log.overwrite_commit_block_for_audit_tests(cid, &with_flipped_signature_bit(&block)).unwrap();
    }
    let (ok, out) = audit_verify(data_dir, &[]);
    assert!(!ok, "a tampered signature must fail the audit");
    let expected = format!(
        "offset {}: {carol} rev {}: signature does not verify with the #atproto key of the DID document logged at offset {} (the earliest one after the commit) (commit {cid})",
        target.offset, target.rev, document_offsets[carol]
    );
    assert!(out.lines().any(|line| line == expected), "expected the line\n{expected}\nin\n{out}");
    assert!(out.contains(&summary(52, 51, 1, 0)), "{out}");

    let (ok, out) = audit_verify(data_dir, &["--did", carol]);
    assert!(!ok);
    assert!(out.contains(&summary(count(carol), count(carol) - 1, 1, 0)), "{out}");
    let (ok, out) = audit_verify(data_dir, &["--did", alice]);
    assert!(ok, "the filter leaves carol's commit out");
    assert!(out.contains(&summary(count(alice), count(alice), 0, 0)), "{out}");
}

#[test]
fn commits_of_an_unresolved_did_are_skipped_not_failed() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path();
    let documents = demo_documents();
    let carol = documents.iter().find(|(_, (handle, _))| handle == "carol.test").map(|(did, _)| did.clone()).unwrap();
    let carol_commits = {
        let log = EventLog::open(&data_dir.join("log.redb")).unwrap();
        log.append(demo_firehose_batch()).unwrap();
        for (did, (_, document)) in &documents {
            if *did != carol {
                log.append(identity_resolved(did, document)).unwrap();
            }
        }
        commits_in(&log).values().filter(|commit| commit.did == carol).count()
    };
    let (ok, out) = audit_verify(data_dir, &[]);
    assert!(ok, "nothing failed");
    assert!(out.contains(&summary(52, 52 - carol_commits, 0, carol_commits)), "{out}");
    assert!(out.contains(&format!("skipped {carol_commits}: no DID document in the log")), "{out}");
}
