//! Public keys of ATProto identities and the signature check every repo commit must pass.
//!
//! Why it exists: atcr keeps each signed commit block in the log so that signatures can be
//! re-checked offline (`atcr audit verify`) and, later, live in ingest. Both need the same two
//! things, here in one place: turning what a DID document (or a `did:key:`) says into a key, and
//! checking an atproto signature with it.
//!
//! Key forms accepted (all `publicKeyMultibase`, base58btc with the `z` prefix):
//! - `Multikey`: a multicodec-prefixed compressed point, as in `did:key` (`zQ3s…` secp256k1,
//!   `zDn…` P-256);
//! - the legacy `EcdsaSecp256k1VerificationKey2019` / `EcdsaSecp256r1VerificationKey2019`: the
//!   raw SEC1 point with no multicodec prefix, compressed or uncompressed (the reference PLC still
//!   serves uncompressed secp256k1 points in this form).
//!
//! Signatures (atproto cryptography spec): ECDSA over sha256 of the message, the 64-byte compact
//! `r || s` encoding (DER is refused) and low-S only: a high-S signature is refused even though
//! it is mathematically valid, because accepting both forms would make signatures malleable.

use k256::ecdsa::signature::Verifier as _;

/// Multicodec varint prefix of a compressed secp256k1 public key (`secp256k1-pub`, 0xe7).
const SECP256K1_MULTICODEC: [u8; 2] = [0xe7, 0x01];
/// Multicodec varint prefix of a compressed P-256 public key (`p256-pub`, 0x1200).
const P256_MULTICODEC: [u8; 2] = [0x80, 0x24];

pub const DID_KEY_PREFIX: &str = "did:key:";
pub const MULTIKEY_TYPE: &str = "Multikey";
pub const LEGACY_K256_TYPE: &str = "EcdsaSecp256k1VerificationKey2019";
pub const LEGACY_P256_TYPE: &str = "EcdsaSecp256r1VerificationKey2019";

/// The two curves atproto allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// secp256k1, JWT `ES256K`.
    K256,
    /// NIST P-256, JWT `ES256`.
    P256,
}

impl Curve {
    pub fn as_str(self) -> &'static str {
        match self {
            Curve::K256 => "k256",
            Curve::P256 => "p256",
        }
    }
}

/// An identity's signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    K256(k256::ecdsa::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("unsupported verification method type {0:?}")]
    UnsupportedType(String),
    #[error("public key is not multibase: {0}")]
    NotMultibase(String),
    #[error("public key is multibase {0:?}, expected base58btc ('z')")]
    NotBase58Btc(String),
    #[error("public key has an unknown multicodec prefix {0:02x?}")]
    UnknownMulticodec(Vec<u8>),
    #[error("not a did:key: {0:?}")]
    NotDidKey(String),
    #[error("public key bytes are not a valid {curve} point ({length} bytes)")]
    InvalidPoint { curve: &'static str, length: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature is {0} bytes, expected 64 (compact r || s)")]
    Length(usize),
    #[error("signature is not a valid ecdsa signature (r or s out of range)")]
    Malformed,
    #[error("signature has a high s value, which atproto refuses")]
    HighS,
    #[error("signature does not verify")]
    Mismatch,
}

impl PublicKey {
    /// A key from a DID document's verification method: its `type` and `publicKeyMultibase`
    /// (what [`crate::did::DidDocumentFacts::signing_key`] holds).
    pub fn from_verification_method(kind: &str, public_key_multibase: &str) -> Result<Self, KeyError> {
        match kind {
            MULTIKEY_TYPE => Self::from_multikey(public_key_multibase),
            LEGACY_K256_TYPE => Self::from_sec1(Curve::K256, &decode_base58btc(public_key_multibase)?),
            LEGACY_P256_TYPE => Self::from_sec1(Curve::P256, &decode_base58btc(public_key_multibase)?),
            other => Err(KeyError::UnsupportedType(other.to_string())),
        }
    }

    /// A key from a `did:key:z…` string.
    pub fn from_did_key(did_key: &str) -> Result<Self, KeyError> {
        let Some(multikey) = did_key.strip_prefix(DID_KEY_PREFIX) else {
            return Err(KeyError::NotDidKey(did_key.to_string()));
        };
        Self::from_multikey(multikey)
    }

    /// A key from a multibase, multicodec-prefixed value (`Multikey`'s `publicKeyMultibase`,
    /// the part of a `did:key` after `did:key:`).
    pub fn from_multikey(multikey: &str) -> Result<Self, KeyError> {
        let bytes = decode_base58btc(multikey)?;
        if let Some(point) = bytes.strip_prefix(&SECP256K1_MULTICODEC) {
            return Self::from_sec1(Curve::K256, point);
        }
        if let Some(point) = bytes.strip_prefix(&P256_MULTICODEC) {
            return Self::from_sec1(Curve::P256, point);
        }
        Err(KeyError::UnknownMulticodec(bytes.iter().take(2).copied().collect()))
    }

    /// A key from a SEC1-encoded point (compressed or uncompressed).
    pub fn from_sec1(curve: Curve, point: &[u8]) -> Result<Self, KeyError> {
        let invalid = || KeyError::InvalidPoint { curve: curve.as_str(), length: point.len() };
        match curve {
            Curve::K256 => {
                k256::ecdsa::VerifyingKey::from_sec1_bytes(point).map(PublicKey::K256).map_err(|_| invalid())
            }
            Curve::P256 => {
                p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map(PublicKey::P256).map_err(|_| invalid())
            }
        }
    }

    pub fn curve(&self) -> Curve {
        match self {
            PublicKey::K256(_) => Curve::K256,
            PublicKey::P256(_) => Curve::P256,
        }
    }

    /// The compressed SEC1 point (33 bytes).
    pub fn to_compressed_sec1(&self) -> Vec<u8> {
        match self {
            PublicKey::K256(key) => key.to_sec1_point(true).as_bytes().to_vec(),
            PublicKey::P256(key) => key.to_sec1_point(true).as_bytes().to_vec(),
        }
    }

    /// The `Multikey` form: `z` + base58btc(multicodec prefix + compressed point).
    pub fn to_multikey(&self) -> String {
        let prefix = match self.curve() {
            Curve::K256 => SECP256K1_MULTICODEC,
            Curve::P256 => P256_MULTICODEC,
        };
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(&self.to_compressed_sec1());
        multibase::encode(multibase::Base::Base58Btc, bytes)
    }

    /// The `did:key:z…` form.
    pub fn to_did_key(&self) -> String {
        format!("{DID_KEY_PREFIX}{}", self.to_multikey())
    }

    /// Checks an atproto signature: ECDSA over sha256(`message`), 64-byte compact `r || s`,
    /// low-S only. secp256k1 signatures are checked by libsecp256k1 ([`VerifyBackend::Native`]).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        self.verify_with(VerifyBackend::Native, message, signature)
    }

    /// [`PublicKey::verify`] with a chosen implementation for secp256k1 (P-256 always uses the
    /// `p256` crate). Both refuse the same signatures; the interop vectors run through both.
    pub fn verify_with(&self, backend: VerifyBackend, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        if signature.len() != 64 {
            return Err(SignatureError::Length(signature.len()));
        }
        match self {
            PublicKey::K256(key) => {
                let parsed = k256::ecdsa::Signature::from_slice(signature).map_err(|_| SignatureError::Malformed)?;
                if parsed.normalize_s() != parsed {
                    return Err(SignatureError::HighS);
                }
                match backend {
                    VerifyBackend::PureRust => key.verify(message, &parsed).map_err(|_| SignatureError::Mismatch),
                    VerifyBackend::Native => verify_libsecp256k1(key, message, signature),
                }
            }
            PublicKey::P256(key) => {
                let signature = p256::ecdsa::Signature::from_slice(signature).map_err(|_| SignatureError::Malformed)?;
                // p256 itself accepts high-S signatures (it is not Bitcoin's curve): refuse here.
                if signature.normalize_s() != signature {
                    return Err(SignatureError::HighS);
                }
                key.verify(message, &signature).map_err(|_| SignatureError::Mismatch)
            }
        }
    }
}

/// Which implementation checks secp256k1 signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyBackend {
    /// libsecp256k1 (C, bundled by the `secp256k1` crate): about twice as fast; the default.
    Native,
    /// The pure-Rust `k256` crate.
    PureRust,
}

/// libsecp256k1's ECDSA check over sha256(`message`). The key is handed over as its
/// uncompressed point (serializing an affine point and parsing it back costs ~1 µs, far less
/// than the verification). libsecp256k1 refuses high-S signatures too; the caller has already
/// reported those as such.
fn verify_libsecp256k1(
    key: &k256::ecdsa::VerifyingKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignatureError> {
    use sha2::{Digest, Sha256};
    let point = key.to_sec1_point(false);
    let point: [u8; 65] = point.as_bytes().try_into().map_err(|_| SignatureError::Mismatch)?;
    let key = secp256k1::PublicKey::from_byte_array_uncompressed(point).map_err(|_| SignatureError::Mismatch)?;
    let signature = secp256k1::ecdsa::Signature::from_compact(signature).map_err(|_| SignatureError::Malformed)?;
    let digest: [u8; 32] = Sha256::digest(message).into();
    secp256k1::ecdsa::verify(&signature, secp256k1::Message::from_digest(digest), &key)
        .map_err(|_| SignatureError::Mismatch)
}

fn decode_base58btc(value: &str) -> Result<Vec<u8>, KeyError> {
    let (base, bytes) = multibase::decode(value).map_err(|error| KeyError::NotMultibase(error.to_string()))?;
    if base != multibase::Base::Base58Btc {
        return Err(KeyError::NotBase58Btc(format!("{base:?}")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::signature::Signer as _;

    fn k256_signing_key() -> k256::ecdsa::SigningKey {
        // The first private key of the interop tests' w3c_didkey_K256.json.
        let secret = hex("9085d2bef69286a6cbb51623c8fa258629945cd55ca705cc4e66700396894e0c");
        k256::ecdsa::SigningKey::from_slice(&secret).unwrap()
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap()).collect()
    }

    #[test]
    fn did_key_of_a_k256_private_key_matches_the_interop_vector() {
        let key = PublicKey::K256(*k256_signing_key().verifying_key());
        assert_eq!(key.to_did_key(), "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme");
        assert_eq!(PublicKey::from_did_key(&key.to_did_key()).unwrap(), key);
        assert_eq!(PublicKey::from_verification_method(MULTIKEY_TYPE, &key.to_multikey()).unwrap(), key);
    }

    #[test]
    fn reads_the_legacy_uncompressed_form_the_reference_plc_serves() {
        // alice.test's #atproto key in fixtures/demo/dids.json.
        let legacy = "zPFkqnvKPVXPLK2q3NrJB9ZjLJ8pE6p2Qm38Hzy6hLr8JrshKebkBgvjNmcn1QsLk9Ed1fP6DqJiiuZeX5eyMrwPp";
        let key = PublicKey::from_verification_method(LEGACY_K256_TYPE, legacy).unwrap();
        assert_eq!(key.curve(), Curve::K256);
        // The same point, compressed, read back through the Multikey form.
        assert_eq!(PublicKey::from_multikey(&key.to_multikey()).unwrap(), key);
        // The type decides the form: the raw point is not a multicodec value.
        assert!(matches!(
            PublicKey::from_verification_method(MULTIKEY_TYPE, legacy),
            Err(KeyError::UnknownMulticodec(_))
        ));
    }

    #[test]
    fn refuses_what_is_not_a_key() {
        assert!(matches!(
            PublicKey::from_verification_method("Ed25519VerificationKey2020", "z6Mk"),
            Err(KeyError::UnsupportedType(_))
        ));
        assert!(matches!(PublicKey::from_did_key("did:plc:abc"), Err(KeyError::NotDidKey(_))));
        assert!(matches!(PublicKey::from_multikey("not multibase!"), Err(KeyError::NotMultibase(_))));
        // base32 ('b') is multibase, but not what atproto uses.
        assert!(matches!(PublicKey::from_multikey("bafkqaaa"), Err(KeyError::NotBase58Btc(_))));
        let truncated = multibase::encode(multibase::Base::Base58Btc, [0xe7, 0x01, 0x02, 0x03]);
        assert!(matches!(PublicKey::from_multikey(&truncated), Err(KeyError::InvalidPoint { curve: "k256", .. })));
    }

    #[test]
    fn both_backends_verify_low_s_and_refuse_high_s_tampered_and_der_signatures() {
        let signing_key = k256_signing_key();
        let key = PublicKey::K256(*signing_key.verifying_key());
        let message = b"atcr commit bytes";
        let signature: k256::ecdsa::Signature = signing_key.sign(message);
        for backend in [VerifyBackend::Native, VerifyBackend::PureRust] {
            let compact = signature.to_bytes().to_vec();
            assert_eq!(key.verify_with(backend, message, &compact), Ok(()));
            assert_eq!(key.verify_with(backend, b"another message", &compact), Err(SignatureError::Mismatch));

            let mut flipped = compact.clone();
            flipped[10] ^= 0x01;
            assert!(key.verify_with(backend, message, &flipped).is_err());

            // The same signature with s replaced by n - s: valid ECDSA, refused by atproto.
            let (r, s) = signature.split_scalars();
            let high = k256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
            assert_eq!(key.verify_with(backend, message, &high.to_bytes()), Err(SignatureError::HighS));

            assert_eq!(key.verify_with(backend, message, &compact[..63]), Err(SignatureError::Length(63)));
            assert_eq!(key.verify_with(backend, message, &[0u8; 64]), Err(SignatureError::Malformed));
        }
    }

    #[test]
    fn p256_high_s_is_refused_even_though_the_curve_crate_accepts_it() {
        let signing_key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let key = PublicKey::P256(*signing_key.verifying_key());
        let message = b"atcr commit bytes";
        let signature: p256::ecdsa::Signature = signing_key.sign(message);
        let low = signature.normalize_s();
        assert_eq!(key.verify(message, &low.to_bytes()), Ok(()));
        let (r, s) = low.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        assert_eq!(key.verify(message, &high.to_bytes()), Err(SignatureError::HighS));
        assert!(key.to_did_key().starts_with("did:key:zDn"));
    }
}
