//! Sync 1.1 verification against references outside this repository:
//! - `atproto-interop-tests/firehose/commit-proof-fixtures.json`: for each vector, the tree after
//!   the commit is rebuilt, only the blocks the reference says a proof needs are kept, and MST
//!   inversion (`atcr_storage::mst::invert`, what `verify` runs) must get back to the root
//!   before the commit; without one of those blocks it must name the missing block;
//! - `firehose-corpus/`: every one of the 5,540 commits a real `@atproto/pds` sent verifies with
//!   its DID document's key (signature, repo/rev, and inversion against `prevData`), and the
//!   same commit with its first op's CID swapped does not.
//!
//! Each prints how many vectors ran and passed; skipped, with one SKIP line, when `../shared`
//! is not next to the workspace.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use ipld_core::cid::Cid;
use serde::Deserialize;

use atcr_ingest::corpus::split_frames;
use atcr_ingest::frame::{Frame, decode_frame_unfiltered};
use atcr_ingest::verify::{VerifyError, verify_commit};
use atcr_storage::PublicKey;
use atcr_storage::did::parse_did_document;
use atcr_storage::mst::{InvertOp, MstError, NoBlocks, Tree, invert};

fn shared(relative: &str) -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared").join(relative);
    if path.exists() {
        Some(path)
    } else {
        println!("SKIP: {relative}: not found at {} (needs ../shared)", path.display());
        None
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CommitProof {
    comment: String,
    leaf_value: String,
    keys: Vec<String>,
    adds: Vec<String>,
    dels: Vec<String>,
    root_before_commit: String,
    root_after_commit: String,
    blocks_in_proof: Vec<String>,
}

/// Every node of the tree holding `keys`, by CID.
fn full_tree(keys: &[&String], leaf: Cid) -> (Cid, HashMap<Cid, Vec<u8>>) {
    let mut tree = Tree::new();
    for key in keys {
        tree.insert(key, leaf, &NoBlocks).unwrap();
    }
    let mut blocks = HashMap::new();
    let root = tree.root_cid_with(&mut |cid, bytes| {
        blocks.insert(cid, bytes.to_vec());
    });
    (root, blocks)
}

#[test]
fn commit_proof_fixtures_invert() {
    let file = "atproto-interop-tests/firehose/commit-proof-fixtures.json";
    let Some(path) = shared(file) else { return };
    let vectors: Vec<CommitProof> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut passed = 0;
    for vector in &vectors {
        let leaf: Cid = vector.leaf_value.parse().unwrap();
        let before_keys: Vec<&String> = vector.keys.iter().collect();
        let (root_before, _) = full_tree(&before_keys, leaf);
        assert_eq!(root_before.to_string(), vector.root_before_commit, "{}: root before", vector.comment);
        let after_keys: Vec<&String> =
            vector.keys.iter().chain(&vector.adds).filter(|key| !vector.dels.contains(key)).collect();
        let (root_after, all_blocks) = full_tree(&after_keys, leaf);
        assert_eq!(root_after.to_string(), vector.root_after_commit, "{}: root after", vector.comment);

        // Only what the reference says a proof carries.
        let proof: HashMap<Cid, Vec<u8>> = vector
            .blocks_in_proof
            .iter()
            .map(|cid| {
                let cid: Cid = cid.parse().unwrap();
                let bytes =
                    all_blocks.get(&cid).unwrap_or_else(|| panic!("{}: {cid} is not in the tree", vector.comment));
                (cid, bytes.clone())
            })
            .collect();
        let ops: Vec<InvertOp> = vector
            .adds
            .iter()
            .map(|key| InvertOp { key, now: Some(leaf), before: None })
            .chain(vector.dels.iter().map(|key| InvertOp { key, now: None, before: Some(leaf) }))
            .collect();
        assert_eq!(invert(&proof, root_after, &ops, root_before), Ok(()), "{}", vector.comment);

        // A block inversion needs and does not get is named. (The reference's proofs may carry
        // a neighbour inversion does not read: then it still succeeds.)
        for cid in proof.keys() {
            let mut partial = proof.clone();
            partial.remove(cid);
            match invert(&partial, root_after, &ops, root_before) {
                Ok(()) => assert_ne!(*cid, root_after, "{}: the root is always needed", vector.comment),
                Err(MstError::MissingBlock(missing)) => assert_eq!(missing, *cid, "{}", vector.comment),
                Err(other) => panic!("{}: without {cid}: {other}", vector.comment),
            }
        }
        passed += 1;
    }
    println!("interop {file}: {passed}/{}", vectors.len());
    assert!(passed > 0);
}

/// Every DID's key from the corpus's `dids.json`.
pub fn corpus_keys(dids_json: &str) -> HashMap<String, PublicKey> {
    let documents: BTreeMap<String, serde_json::Value> = serde_json::from_str(dids_json).unwrap();
    documents
        .into_iter()
        .map(|(did, document)| {
            let facts = parse_did_document(&document.to_string()).unwrap();
            let (kind, multibase) = facts.signing_key.unwrap();
            (did, PublicKey::from_verification_method(&kind, &multibase).unwrap())
        })
        .collect()
}

#[test]
fn every_commit_of_the_reference_pds_corpus_verifies() {
    let Some(directory) = shared("firehose-corpus") else { return };
    let keys = corpus_keys(&std::fs::read_to_string(directory.join("dids.json")).unwrap());
    let bytes = std::fs::read(directory.join("corpus.bin")).unwrap();
    let frames = split_frames(&bytes).unwrap();
    let (mut commits, mut verified, mut with_prev_data, mut proven, mut forged_refused) = (0, 0, 0, 0, 0);
    for frame in frames {
        let Frame::Commit(commit) = decode_frame_unfiltered(frame).unwrap() else { continue };
        commits += 1;
        with_prev_data += usize::from(commit.prev_data.is_some());
        let key = &keys[&commit.did];
        match verify_commit(&commit, key) {
            Ok(outcome) => {
                verified += 1;
                proven += usize::from(outcome.ops_proven);
            }
            Err(error) => panic!("seq {}: {error}", commit.seq),
        }
        // The same frame claiming another record under its first op: refused.
        let mut forged = commit.clone();
        if let Some(op) = forged.sync_ops.first_mut()
            && op.cid.is_some()
        {
            op.cid = Some(commit.blocks.roots()[0]);
            assert!(matches!(verify_commit(&forged, key), Err(VerifyError::OpsDisagree { .. })), "seq {}", commit.seq);
            forged_refused += 1;
        }
    }
    println!("interop firehose-corpus/corpus.bin: {verified}/{commits} commits verified");
    println!("interop firehose-corpus/corpus.bin: {proven}/{with_prev_data} commits with prevData proven by inversion");
    println!("interop firehose-corpus/corpus.bin: {forged_refused}/{forged_refused} forged op CIDs refused");
    assert_eq!(commits, 5_540);
    assert_eq!(verified, commits);
    assert_eq!(proven, with_prev_data);
    // Only each account's first commit (an empty tree before it) comes without prevData.
    assert_eq!(commits - with_prev_data, keys.len());
}
