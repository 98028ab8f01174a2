//! Sync 1.1 verification of one `#commit` frame against its author's key: pure, network-free.
//!
//! Why it exists: an AppView that believes any frame it receives can be fed forged records. A
//! commit is trusted only when everything the protocol lets a consumer check holds:
//! 1. the CAR's root is the commit block and the block decodes as a signed commit;
//! 2. the signed `did` and `rev` are the frame's `repo` and `rev` (a relay cannot relabel them);
//! 3. the signature verifies with the identity's key (k256 or p256, low-S; [`PublicKey::verify`]);
//! 4. when the frame carries `prevData`, the ops are proven by MST inversion: every op's CID is
//!    what the signed tree holds under its path, and undoing every op on the partial tree the
//!    frame ships gives back exactly `prevData` ([`atcr_storage::mst`]).
//!
//! Fetching the key (DID resolution, caching, refresh on failure), rev ordering per DID and
//! quarantining belong to the caller: this module only says yes, or why not, in words fit for a
//! quarantine entry.
//!
//! It trusts what [`crate::frame`] established while decoding: every block of `blocks` matches
//! its CID ([`crate::car::CarBlocks`]) and `commit_block` is the block of `commit_cid`. A caller
//! that builds a [`CommitFacts`] by hand must keep those two true.

use ipld_core::cid::Cid;

use atcr_storage::commit::{CommitError, SignedCommit};
use atcr_storage::keys::{PublicKey, SignatureError};
use atcr_storage::mst::{self, InvertOp, MstError};

use crate::frame::{CommitFacts, OpAction};

/// What a verified commit establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCommit {
    pub did: String,
    pub rev: String,
    /// The MST root the commit signs.
    pub data: Cid,
    /// The frame's `prevData`: the MST root before the commit.
    pub prev_data: Option<Cid>,
    /// True when `prevData` was present and inversion proved every op; false when the frame
    /// carried no `prevData` (a pre-Sync-1.1 producer), so only the signature was checked.
    pub ops_proven: bool,
}

/// Why a commit is not trusted. Each renders as a lowercase reason for the quarantine entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("car root {root} is not the commit {commit} of {did} (rev {rev})")]
    CarRoot { did: String, rev: String, root: String, commit: String },
    #[error("commit block {commit} of {did} (rev {rev}) is missing from the frame")]
    CommitBlockMissing { did: String, rev: String, commit: String },
    #[error("commit block of {did} (rev {rev}) is not a signed commit: {error}")]
    CommitUndecodable { did: String, rev: String, error: CommitError },
    #[error("commit is signed for {signed} but the frame says repo {frame}")]
    RepoMismatch { frame: String, signed: String },
    #[error("commit of {did} is signed for rev {signed} but the frame says rev {frame}")]
    RevMismatch { did: String, frame: String, signed: String },
    #[error("signature does not match the key of {did} (rev {rev})")]
    SignatureMismatch { did: String, rev: String },
    #[error("signature of {did} (rev {rev}) is invalid: {error}")]
    SignatureInvalid { did: String, rev: String, error: SignatureError },
    #[error("ops disagree with the signed MST of {did} (rev {rev}): {detail}")]
    OpsDisagree { did: String, rev: String, detail: String },
    #[error("cannot invert the commit of {did} (rev {rev}): {detail}")]
    CannotInvert { did: String, rev: String, detail: String },
}

impl VerifyError {
    /// A short stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::CarRoot { .. } | VerifyError::CommitBlockMissing { .. } => "car_root",
            VerifyError::CommitUndecodable { .. } => "commit_undecodable",
            VerifyError::RepoMismatch { .. } => "repo_mismatch",
            VerifyError::RevMismatch { .. } => "rev_mismatch",
            VerifyError::SignatureMismatch { .. } | VerifyError::SignatureInvalid { .. } => "signature",
            VerifyError::OpsDisagree { .. } => "ops_disagree",
            VerifyError::CannotInvert { .. } => "cannot_invert",
        }
    }

    /// True for signature failures: the caller may refresh the identity's key and retry once.
    pub fn is_signature_failure(&self) -> bool {
        matches!(self, VerifyError::SignatureMismatch { .. } | VerifyError::SignatureInvalid { .. })
    }
}

/// Checks the commit block, the frame's `repo`/`rev` and the signature (see the module doc).
/// Cheap checks come first, so a relabelled frame is refused before any curve arithmetic.
pub fn verify_signed_commit(commit: &CommitFacts, key: &PublicKey) -> Result<SignedCommit, VerifyError> {
    let did = || commit.did.clone();
    let rev = || commit.rev.clone();
    let root = commit.blocks.roots().first().map(Cid::to_string).unwrap_or_else(|| "(none)".into());
    if root != commit.commit_cid {
        return Err(VerifyError::CarRoot { did: did(), rev: rev(), root, commit: commit.commit_cid.clone() });
    }
    let signed = SignedCommit::decode(&commit.commit_block).map_err(|error| VerifyError::CommitUndecodable {
        did: did(),
        rev: rev(),
        error,
    })?;
    if signed.did != commit.did {
        return Err(VerifyError::RepoMismatch { frame: did(), signed: signed.did });
    }
    if signed.rev != commit.rev {
        return Err(VerifyError::RevMismatch { did: did(), frame: rev(), signed: signed.rev });
    }
    match signed.verify(key) {
        Ok(()) => Ok(signed),
        Err(SignatureError::Mismatch) => Err(VerifyError::SignatureMismatch { did: did(), rev: rev() }),
        Err(error) => Err(VerifyError::SignatureInvalid { did: did(), rev: rev(), error }),
    }
}

/// Verifies a commit frame completely: [`verify_signed_commit`], then, when `prevData` is
/// present, [`prove_ops`].
pub fn verify_commit(commit: &CommitFacts, key: &PublicKey) -> Result<VerifiedCommit, VerifyError> {
    let signed = verify_signed_commit(commit, key)?;
    let ops_proven = match commit.prev_data {
        Some(prev_data) => {
            prove_ops(commit, signed.data, prev_data)?;
            true
        }
        None => false,
    };
    Ok(VerifiedCommit { did: signed.did, rev: signed.rev, data: signed.data, prev_data: commit.prev_data, ops_proven })
}

/// MST inversion (Sync 1.1): starting from the signed tree `data` (partial: the frame's
/// blocks), checks each op against it, undoes every op and requires the result to be
/// `prev_data`.
pub fn prove_ops(commit: &CommitFacts, data: Cid, prev_data: Cid) -> Result<(), VerifyError> {
    let mut inverse = Vec::with_capacity(commit.sync_ops.len());
    for op in &commit.sync_ops {
        let disagree =
            |detail: String| VerifyError::OpsDisagree { did: commit.did.clone(), rev: commit.rev.clone(), detail };
        let (now, before) = match op.action {
            OpAction::Create => {
                if op.prev.is_some() {
                    return Err(disagree(format!("create of {} names a previous record", op.path)));
                }
                (op.cid, None)
            }
            OpAction::Update | OpAction::Delete => {
                let Some(prev) = op.prev else {
                    return Err(disagree(format!(
                        "{} of {} has no prev cid, which a frame with prevData must carry",
                        op.action.as_str(),
                        op.path
                    )));
                };
                let now = if op.action == OpAction::Delete { None } else { op.cid };
                (now, Some(prev))
            }
        };
        if op.action != OpAction::Delete && now.is_none() {
            return Err(disagree(format!("{} of {} has no cid", op.action.as_str(), op.path)));
        }
        inverse.push(InvertOp { key: op.path.as_str(), now, before });
    }
    mst::invert(&commit.blocks, data, &inverse, prev_data).map_err(|error| match error {
        MstError::MissingBlock(_) => {
            VerifyError::CannotInvert { did: commit.did.clone(), rev: commit.rev.clone(), detail: error.to_string() }
        }
        other => {
            VerifyError::OpsDisagree { did: commit.did.clone(), rev: commit.rev.clone(), detail: other.to_string() }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, decode_frame};
    use atcr_gen::{FrameKind, GenConfig, Generator};

    /// The first few io.atcr.* commits of a small generated world, with their account's key.
    fn generated_commits(count: usize) -> Vec<(CommitFacts, PublicKey)> {
        let mut generator = Generator::new(GenConfig::new(7, 3, 4, 60));
        let keys: Vec<(String, PublicKey)> = generator
            .accounts()
            .iter()
            .map(|account| (account.did.clone(), PublicKey::K256(*account.verifying_key())))
            .collect();
        let mut commits = Vec::new();
        for frame in generator.by_ref() {
            if frame.kind != FrameKind::Commit {
                continue;
            }
            let Ok(Frame::Commit(facts)) = decode_frame(&frame.bytes) else {
                panic!("a generated commit decodes");
            };
            let key = keys.iter().find(|(did, _)| *did == facts.did).map(|(_, key)| key.clone()).unwrap();
            commits.push((facts, key));
            if commits.len() == count {
                break;
            }
        }
        commits
    }

    #[test]
    fn generated_commits_verify_and_prove_their_ops() {
        let commits = generated_commits(30);
        assert_eq!(commits.len(), 30);
        for (facts, key) in &commits {
            let verified = verify_commit(facts, key).unwrap_or_else(|error| panic!("{error}"));
            assert_eq!((verified.did.as_str(), verified.rev.as_str()), (facts.did.as_str(), facts.rev.as_str()));
            assert_eq!(verified.ops_proven, facts.prev_data.is_some());
        }
        assert!(commits.iter().any(|(facts, _)| facts.prev_data.is_some()), "generated frames carry prevData");
    }

    #[test]
    fn a_flipped_signature_byte_fails() {
        let (mut facts, key) = generated_commits(1).remove(0);
        // The signature is the last 64 bytes of the commit block (`sig` sorts last).
        let last = facts.commit_block.len() - 1;
        facts.commit_block[last] ^= 0x01;
        let error = verify_commit(&facts, &key).unwrap_err();
        assert!(error.is_signature_failure(), "{error}");
        assert!(error.to_string().starts_with("signature "), "{error}");
    }

    #[test]
    fn a_wrong_key_fails_with_a_reason_naming_the_did_and_rev() {
        let (facts, _) = generated_commits(1).remove(0);
        let other = PublicKey::K256(*k256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap().verifying_key());
        let error = verify_commit(&facts, &other).unwrap_err();
        assert_eq!(error, VerifyError::SignatureMismatch { did: facts.did.clone(), rev: facts.rev.clone() });
        assert_eq!(error.to_string(), format!("signature does not match the key of {} (rev {})", facts.did, facts.rev));
    }

    #[test]
    fn a_relabelled_repo_or_rev_fails() {
        let (facts, key) = generated_commits(1).remove(0);
        let mut relabelled = facts.clone();
        relabelled.did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".into();
        assert!(matches!(verify_commit(&relabelled, &key), Err(VerifyError::RepoMismatch { .. })));
        let mut older = facts.clone();
        older.rev = "2222222222222".into();
        let error = verify_commit(&older, &key).unwrap_err();
        assert!(matches!(error, VerifyError::RevMismatch { .. }), "{error}");
        let mut other_root = facts;
        other_root.commit_cid = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm".into();
        assert!(matches!(verify_commit(&other_root, &key), Err(VerifyError::CarRoot { .. })));
    }

    #[test]
    fn ops_that_disagree_with_the_signed_tree_fail() {
        let commits = generated_commits(30);
        let (facts, key) = commits.iter().find(|(facts, _)| facts.prev_data.is_some()).unwrap();
        let mut forged = facts.clone();
        let first = &mut forged.sync_ops[0];
        first.cid = first.cid.map(|_| facts.blocks.roots()[0]);
        let error = verify_commit(&forged, key).unwrap_err();
        assert!(matches!(error, VerifyError::OpsDisagree { .. }), "{error}");
        assert!(error.to_string().starts_with("ops disagree with the signed MST of "), "{error}");

        // An op left out: the tree undone is not the previous one.
        let mut hidden = facts.clone();
        hidden.sync_ops.pop();
        if !hidden.sync_ops.is_empty() {
            let error = verify_commit(&hidden, key).unwrap_err();
            assert!(error.to_string().contains("not prevData"), "{error}");
        }

        // A prevData from elsewhere.
        let mut other_prev = facts.clone();
        other_prev.prev_data = Some(facts.blocks.roots()[0]);
        assert!(matches!(verify_commit(&other_prev, key), Err(VerifyError::OpsDisagree { .. })));
    }

    #[test]
    fn a_missing_proof_block_is_named() {
        let (facts, key) = generated_commits(30).into_iter().find(|(facts, _)| facts.prev_data.is_some()).unwrap();
        let signed = SignedCommit::decode(&facts.commit_block).unwrap();
        // The same CAR without the MST root node.
        let car = atcr_gen::encoding::car_v1(
            facts.blocks.roots()[0],
            facts.blocks.iter().filter(|(cid, _)| **cid != signed.data),
        );
        let mut partial = facts.clone();
        partial.blocks = crate::car::CarBlocks::parse(&car).unwrap();
        let error = verify_commit(&partial, &key).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot invert the commit of {} (rev {}): block {} is missing from the frame",
                facts.did, facts.rev, signed.data
            )
        );
    }
}
