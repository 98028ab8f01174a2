//! The atproto interop test vectors for cryptography (`shared/atproto-interop-tests/crypto/`)
//! against `atcr_storage::keys`: signature validity (including the high-S and DER cases atproto
//! refuses; secp256k1 through both libsecp256k1 and the pure-Rust k256), legacy and `did:key` key
//! forms, and `did:key` derivation from private keys.
//! Skipped, with one SKIP line, when `../shared` is not next to the workspace.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;

use atcr_storage::keys::{Curve, PublicKey, VerifyBackend};

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/atproto-interop-tests/crypto")
}

/// The vectors' base64 comes without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn load(file: &str) -> Option<Vec<Value>> {
    let path = vectors_dir().join(file);
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("SKIP: {file}: interop vectors not found at {} (needs ../shared)", path.display());
        return None;
    };
    Some(serde_json::from_str(&text).unwrap_or_else(|error| panic!("{file}: not JSON: {error}")))
}

fn field<'a>(vector: &'a Value, name: &str) -> &'a str {
    vector[name].as_str().unwrap_or_else(|| panic!("vector has no string {name:?}: {vector}"))
}

struct Tally {
    file: &'static str,
    ran: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(file: &'static str) -> Self {
        Tally { file, ran: 0, failures: Vec::new() }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.ran += 1;
        if !ok {
            self.failures.push(what());
        }
    }

    fn finish(self) {
        println!("interop crypto/{}: {}/{}", self.file, self.ran - self.failures.len(), self.ran);
        assert!(self.ran > 0, "{}: no vector ran", self.file);
        assert!(self.failures.is_empty(), "{}: failed vectors:\n{}", self.file, self.failures.join("\n"));
    }
}

#[test]
fn signature_fixtures() {
    let file = "signature-fixtures.json";
    let Some(vectors) = load(file) else { return };
    let mut tally = Tally::new(file);
    for vector in &vectors {
        let comment = field(vector, "comment");
        let message = BASE64.decode(field(vector, "messageBase64")).unwrap();
        let signature = BASE64.decode(field(vector, "signatureBase64")).unwrap();
        let expected_curve = match field(vector, "algorithm") {
            "ES256K" => Curve::K256,
            "ES256" => Curve::P256,
            other => panic!("{comment}: unknown algorithm {other}"),
        };
        let valid = vector["validSignature"].as_bool().unwrap();
        // The key in both forms: did:key (multicodec) and the legacy document suite (raw point).
        let from_did_key = PublicKey::from_did_key(field(vector, "publicKeyDid"));
        let from_document =
            PublicKey::from_verification_method(field(vector, "didDocSuite"), field(vector, "publicKeyMultibase"));
        let outcome = match (&from_did_key, &from_document) {
            (Ok(key), Ok(same)) if key == same && key.curve() == expected_curve => {
                // libsecp256k1 (the default) and the pure-Rust k256 must agree on every vector.
                let native = key.verify_with(VerifyBackend::Native, &message, &signature).is_ok();
                let pure_rust = key.verify_with(VerifyBackend::PureRust, &message, &signature).is_ok();
                if native == pure_rust {
                    Ok(native)
                } else {
                    Err(format!("backends disagree: libsecp256k1 {native}, k256 {pure_rust}"))
                }
            }
            _ => Err(format!("keys: did:key {from_did_key:?}, document {from_document:?}")),
        };
        tally.check(outcome == Ok(valid), || format!("{comment}: expected valid={valid}, got {outcome:?}"));
    }
    tally.finish();
}

#[test]
fn w3c_did_key_k256() {
    let file = "w3c_didkey_K256.json";
    let Some(vectors) = load(file) else { return };
    let mut tally = Tally::new(file);
    for vector in &vectors {
        let secret = hex(field(vector, "privateKeyBytesHex"));
        let expected = field(vector, "publicDidKey");
        let public = PublicKey::K256(*k256::ecdsa::SigningKey::from_slice(&secret).unwrap().verifying_key());
        let parsed = PublicKey::from_did_key(expected);
        tally.check(public.to_did_key() == expected && parsed.as_ref() == Ok(&public), || {
            format!("{expected}: derived {}, parsed {parsed:?}", public.to_did_key())
        });
    }
    tally.finish();
}

#[test]
fn w3c_did_key_p256() {
    let file = "w3c_didkey_P256.json";
    let Some(vectors) = load(file) else { return };
    let mut tally = Tally::new(file);
    for vector in &vectors {
        let secret = multibase::Base::Base58Btc.decode(field(vector, "privateKeyBytesBase58")).unwrap();
        let expected = field(vector, "publicDidKey");
        let public = PublicKey::P256(*p256::ecdsa::SigningKey::from_slice(&secret).unwrap().verifying_key());
        let parsed = PublicKey::from_did_key(expected);
        tally.check(public.to_did_key() == expected && parsed.as_ref() == Ok(&public), || {
            format!("{expected}: derived {}, parsed {parsed:?}", public.to_did_key())
        });
    }
    tally.finish();
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap()).collect()
}
