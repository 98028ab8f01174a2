//! A signed repo commit block, as the log keeps it in `commit_blocks`, and its signature check.
//!
//! Why it exists: every event that came from a commit names the commit's CID, and the signed
//! block is stored next to the events so the commit can be re-checked offline against the
//! identity's key (`atcr audit verify`, later live in ingest). An atproto commit (repo format
//! version 2 and 3) is the DAG-CBOR map `{did, version, data, rev, prev, sig}`; the signature
//! covers the canonical DAG-CBOR encoding of the same map without `sig`.
//!
//! The unsigned bytes are produced by removing `sig` from the decoded map and re-encoding it, so
//! fields this code does not know about stay covered by the check (as the spec requires), and
//! key order follows DAG-CBOR's canonical rule (length first, then bytes) as the encoder applies.

use std::collections::BTreeMap;

use ipld_core::cid::Cid;
use ipld_core::ipld::Ipld;

use crate::keys::{PublicKey, SignatureError};

/// Repo format versions whose commits have this shape.
pub const SUPPORTED_VERSIONS: [u64; 2] = [2, 3];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    #[error("commit block is not a DAG-CBOR map: {0}")]
    NotAMap(String),
    #[error("commit has no {0:?} field")]
    MissingField(&'static str),
    #[error("commit field {field:?} is not {expected}")]
    WrongType { field: &'static str, expected: &'static str },
    #[error("commit version {0} is not supported (expected 2 or 3)")]
    UnsupportedVersion(i128),
    #[error("cannot encode the unsigned commit: {0}")]
    Encode(String),
}

/// A decoded signed commit and the bytes its signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCommit {
    pub did: String,
    pub version: u64,
    /// Root of the repo's MST.
    pub data: Cid,
    /// The repo revision (a TID).
    pub rev: String,
    /// The previous commit, when the producer said (optional in version 3).
    pub prev: Option<Cid>,
    pub signature: Vec<u8>,
    unsigned_bytes: Vec<u8>,
}

impl SignedCommit {
    /// Decodes a commit block and prepares the unsigned bytes (no signature check yet).
    pub fn decode(block: &[u8]) -> Result<Self, CommitError> {
        let mut map: BTreeMap<String, Ipld> =
            serde_ipld_dagcbor::from_slice(block).map_err(|error| CommitError::NotAMap(error.to_string()))?;
        let signature = match map.remove("sig") {
            Some(Ipld::Bytes(signature)) => signature,
            Some(_) => return Err(CommitError::WrongType { field: "sig", expected: "bytes" }),
            None => return Err(CommitError::MissingField("sig")),
        };
        let version = match map.get("version") {
            Some(Ipld::Integer(version)) => *version,
            Some(_) => return Err(CommitError::WrongType { field: "version", expected: "an integer" }),
            None => return Err(CommitError::MissingField("version")),
        };
        let version = match u64::try_from(version) {
            Ok(version) if SUPPORTED_VERSIONS.contains(&version) => version,
            _ => return Err(CommitError::UnsupportedVersion(version)),
        };
        let did = string_field(&map, "did")?;
        let rev = string_field(&map, "rev")?;
        let data = match map.get("data") {
            Some(Ipld::Link(cid)) => *cid,
            Some(_) => return Err(CommitError::WrongType { field: "data", expected: "a link" }),
            None => return Err(CommitError::MissingField("data")),
        };
        let prev = match map.get("prev") {
            Some(Ipld::Link(cid)) => Some(*cid),
            Some(Ipld::Null) | None => None,
            Some(_) => return Err(CommitError::WrongType { field: "prev", expected: "a link or null" }),
        };
        let unsigned_bytes =
            serde_ipld_dagcbor::to_vec(&map).map_err(|error| CommitError::Encode(error.to_string()))?;
        Ok(SignedCommit { did, version, data, rev, prev, signature, unsigned_bytes })
    }

    /// The canonical DAG-CBOR bytes of the commit without `sig`: what was signed.
    pub fn unsigned_bytes(&self) -> &[u8] {
        &self.unsigned_bytes
    }

    /// Checks the signature with the identity's key (see [`PublicKey::verify`] for the rules).
    pub fn verify(&self, key: &PublicKey) -> Result<(), SignatureError> {
        key.verify(&self.unsigned_bytes, &self.signature)
    }
}

fn string_field(map: &BTreeMap<String, Ipld>, field: &'static str) -> Result<String, CommitError> {
    match map.get(field) {
        Some(Ipld::String(value)) => Ok(value.clone()),
        Some(_) => Err(CommitError::WrongType { field, expected: "a string" }),
        None => Err(CommitError::MissingField(field)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::signature::Signer as _;

    const DID: &str = "did:plc:k3u5b4emvwh7qvdoh52fztxk";

    fn data_cid() -> Cid {
        "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm".parse().unwrap()
    }

    fn signing_key() -> k256::ecdsa::SigningKey {
        k256::ecdsa::SigningKey::from_slice(&[42u8; 32]).unwrap()
    }

    /// A commit map (without `sig`) as a PDS builds it.
    fn unsigned(version: i128, prev: Ipld) -> BTreeMap<String, Ipld> {
        BTreeMap::from([
            ("did".to_string(), Ipld::String(DID.into())),
            ("version".to_string(), Ipld::Integer(version)),
            ("data".to_string(), Ipld::Link(data_cid())),
            ("rev".to_string(), Ipld::String("3lbxyz2abcd22".into())),
            ("prev".to_string(), prev),
        ])
    }

    fn sign(mut map: BTreeMap<String, Ipld>, key: &k256::ecdsa::SigningKey) -> Vec<u8> {
        let unsigned_bytes = serde_ipld_dagcbor::to_vec(&map).unwrap();
        let signature: k256::ecdsa::Signature = key.sign(&unsigned_bytes);
        map.insert("sig".into(), Ipld::Bytes(signature.to_bytes().to_vec()));
        serde_ipld_dagcbor::to_vec(&map).unwrap()
    }

    #[test]
    fn a_signed_v3_commit_verifies_and_a_flipped_signature_byte_does_not() {
        let key = signing_key();
        let public = PublicKey::K256(*key.verifying_key());
        let block = sign(unsigned(3, Ipld::Null), &key);
        let commit = SignedCommit::decode(&block).unwrap();
        assert_eq!((commit.did.as_str(), commit.rev.as_str(), commit.version), (DID, "3lbxyz2abcd22", 3));
        assert_eq!((commit.data, commit.prev), (data_cid(), None));
        assert_eq!(commit.verify(&public), Ok(()));

        let mut tampered = commit.clone();
        tampered.signature[5] ^= 0x80;
        assert!(tampered.verify(&public).is_err());
        let other = PublicKey::K256(*k256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap().verifying_key());
        assert_eq!(commit.verify(&other), Err(SignatureError::Mismatch));
    }

    #[test]
    fn unsigned_bytes_are_canonical_and_keep_unknown_fields() {
        let key = signing_key();
        let mut map = unsigned(2, Ipld::Link(data_cid()));
        map.insert("extension".into(), Ipld::String("signed too".into()));
        let block = sign(map.clone(), &key);
        let commit = SignedCommit::decode(&block).unwrap();
        assert_eq!(commit.prev, Some(data_cid()));
        assert_eq!(commit.unsigned_bytes(), serde_ipld_dagcbor::to_vec(&map).unwrap().as_slice());
        // Canonical order: shorter keys first ("did", "rev", "data", "prev", "version", "extension").
        let text = String::from_utf8_lossy(commit.unsigned_bytes());
        let position = |key: &str| text.find(key).unwrap();
        assert!(position("did") < position("rev") && position("rev") < position("data"));
        assert!(position("prev") < position("version") && position("version") < position("extension"));
        assert_eq!(commit.verify(&PublicKey::K256(*key.verifying_key())), Ok(()));
    }

    #[test]
    fn refuses_blocks_that_are_not_commits() {
        let key = signing_key();
        assert!(matches!(SignedCommit::decode(b"\xff"), Err(CommitError::NotAMap(_))));
        let encoded = serde_ipld_dagcbor::to_vec(&unsigned(3, Ipld::Null)).unwrap();
        assert_eq!(SignedCommit::decode(&encoded), Err(CommitError::MissingField("sig")));
        assert_eq!(SignedCommit::decode(&sign(unsigned(1, Ipld::Null), &key)), Err(CommitError::UnsupportedVersion(1)));
        let mut no_rev = unsigned(3, Ipld::Null);
        no_rev.remove("rev");
        assert_eq!(SignedCommit::decode(&sign(no_rev, &key)), Err(CommitError::MissingField("rev")));
        let mut bad_data = unsigned(3, Ipld::Null);
        bad_data.insert("data".into(), Ipld::String("not a link".into()));
        assert_eq!(
            SignedCommit::decode(&sign(bad_data, &key)),
            Err(CommitError::WrongType { field: "data", expected: "a link" })
        );
    }
}
