//! Compact encodings for the strings view rows repeat most: a sha256 digest as its 32 bytes, a
//! record key that is a digest's hex as its 32 bytes, and the OCI media types and annotation
//! keys nearly every manifest carries as one byte each.
//!
//! A manifest row spelled all of them out: ~1,060 bytes, of which the annotation keys, media
//! types and digests took more than half, and `manifests` was the largest table of the views.
//! Fields opt in with `#[serde(with = "…")]`, so the row types keep their plain `String`s.
//! Decoding gives back exactly the string encoded: a digest is packed only in its canonical
//! form (`sha256:` and 64 lowercase hex digits), anything else is kept as text.
//!
//! [`KNOWN`] may only grow at its end: an index written is read back as the same string (a
//! change of meaning needs a new `REGISTRY_VERSION`).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Strings encoded as their index. Append only.
const KNOWN: [&str; 40] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.empty.v1+json",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.in-toto+json",
    "application/spdx+json",
    "application/vnd.cyclonedx+json",
    "application/vnd.dev.cosign.simplesigning.v1+json",
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
    "application/vnd.cncf.helm.config.v1+json",
    "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
    "application/vnd.atcr.scan.v1+json",
    "org.opencontainers.image.created",
    "org.opencontainers.image.authors",
    "org.opencontainers.image.url",
    "org.opencontainers.image.documentation",
    "org.opencontainers.image.source",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.vendor",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.ref.name",
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.base.digest",
    "org.opencontainers.image.base.name",
    "com.docker.official-images.bashbrew.arch",
    "vnd.docker.reference.digest",
    "vnd.docker.reference.type",
    "io.atcr.hold",
];

const SHA256: &str = "sha256:";

/// The index of a known string: one hash lookup (rows are packed millions of times in a replay;
/// a scan of [`KNOWN`] made applying events 15 % slower).
fn known_index(text: &str) -> Option<u8> {
    static INDEX: std::sync::LazyLock<HashMap<&'static str, u8, foldhash::fast::FixedState>> =
        std::sync::LazyLock::new(|| KNOWN.iter().enumerate().map(|(index, known)| (*known, index as u8)).collect());
    // Every known string is at least 12 bytes long: short free text is ruled out before hashing.
    if text.len() < 12 {
        return None;
    }
    INDEX.get(text).copied()
}

/// One string as written.
#[derive(Serialize)]
enum Packed<'a> {
    /// `sha256:` and these 32 bytes in lowercase hex.
    Digest([u8; 32]),
    /// These 32 bytes in lowercase hex (a manifest's record key).
    Hex([u8; 32]),
    /// `KNOWN[index]`.
    Known(u8),
    Text(&'a str),
}

/// One string as read.
#[derive(Deserialize)]
enum Unpacked {
    Digest([u8; 32]),
    Hex([u8; 32]),
    Known(u8),
    Text(String),
}

/// The value of each lowercase hex digit, 0xff for every other byte.
const NIBBLES: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut digit = 0;
    while digit < 16 {
        table[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    table
};

/// 32 bytes from exactly 64 lowercase hex digits (uppercase would not come back the same). By
/// hand, one table lookup per digit: rows are packed millions of times in a replay, and the
/// `hex` crate's checked decoding made packing 11 % of applying events.
fn hex32(text: &str) -> Option<[u8; 32]> {
    let digits: &[u8; 64] = text.as_bytes().try_into().ok()?;
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (NIBBLES[usize::from(pair[0])], NIBBLES[usize::from(pair[1])]);
        if (high | low) == 0xff {
            return None;
        }
        *byte = (high << 4) | low;
    }
    Some(bytes)
}

/// `prefix` then the 64 lowercase hex digits of `bytes`.
fn hex_string(prefix: &str, bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(prefix.len() + 64);
    text.push_str(prefix);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

fn pack(text: &str) -> Packed<'_> {
    if let Some(bytes) = text.strip_prefix(SHA256).and_then(hex32) {
        return Packed::Digest(bytes);
    }
    if let Some(bytes) = hex32(text) {
        return Packed::Hex(bytes);
    }
    match known_index(text) {
        Some(index) => Packed::Known(index),
        None => Packed::Text(text),
    }
}

fn unpack<E: serde::de::Error>(unpacked: Unpacked) -> Result<String, E> {
    match unpacked {
        Unpacked::Digest(bytes) => PackedRef::Digest(bytes).to_text(),
        Unpacked::Hex(bytes) => PackedRef::Hex(bytes).to_text(),
        Unpacked::Known(index) => PackedRef::Known(index).to_text(),
        Unpacked::Text(text) => Ok(text),
    }
}

/// One packed string as read, its text borrowed from the row's bytes: for reads that look at a
/// few fields of many rows and keep none (a search document reads every manifest row of its
/// repository). The same string always packs the same way, so two of them are equal exactly
/// when their strings are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub(crate) enum PackedRef<'a> {
    Digest([u8; 32]),
    Hex([u8; 32]),
    Known(u8),
    Text(&'a str),
}

impl PackedRef<'_> {
    /// The string written.
    pub(crate) fn to_text<E: serde::de::Error>(self) -> Result<String, E> {
        Ok(match self {
            PackedRef::Digest(bytes) => hex_string(SHA256, &bytes),
            PackedRef::Hex(bytes) => hex_string("", &bytes),
            PackedRef::Known(index) => match KNOWN.get(usize::from(index)) {
                Some(known) => (*known).to_string(),
                None => return Err(E::custom(format!("unknown packed string {index}"))),
            },
            PackedRef::Text(text) => text.to_string(),
        })
    }
}

/// A packed string, for `#[serde(with = "compact::text")]`.
pub(crate) mod text {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &str, serializer: S) -> Result<S::Ok, S::Error> {
        pack(value).serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        unpack(Unpacked::deserialize(deserializer)?)
    }
}

/// An optional packed string.
pub(crate) mod optional {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
        value.as_deref().map(pack).serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
        Option::<Unpacked>::deserialize(deserializer)?.map(unpack).transpose()
    }
}

/// A list of packed strings.
pub(crate) mod list {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(values: &[String], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(|value| pack(value)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        Vec::<Unpacked>::deserialize(deserializer)?.into_iter().map(unpack).collect()
    }
}

/// Layers as (digest, media type, size), both strings packed.
pub(crate) mod layers {
    use super::*;

    type Layer = (String, Option<String>, Option<i64>);

    pub(crate) fn serialize<S: Serializer>(layers: &[Layer], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            layers.iter().map(|(digest, media_type, size)| (pack(digest), media_type.as_deref().map(pack), size)),
        )
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Layer>, D::Error> {
        Vec::<(Unpacked, Option<Unpacked>, Option<i64>)>::deserialize(deserializer)?
            .into_iter()
            .map(|(digest, media_type, size)| Ok((unpack(digest)?, media_type.map(unpack).transpose()?, size)))
            .collect()
    }
}

/// Annotations with their keys packed (values are free text).
pub(crate) mod annotations {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        annotations: &BTreeMap<String, String>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(annotations.iter().map(|(key, value)| (pack(key), value)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        Vec::<(Unpacked, String)>::deserialize(deserializer)?
            .into_iter()
            .map(|(key, value)| Ok((unpack(key)?, value)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Row {
        #[serde(with = "text")]
        text: String,
        #[serde(with = "optional")]
        optional: Option<String>,
        #[serde(with = "list")]
        list: Vec<String>,
        #[serde(with = "layers")]
        layers: Vec<(String, Option<String>, Option<i64>)>,
        #[serde(with = "annotations")]
        annotations: BTreeMap<String, String>,
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn every_string_comes_back_as_it_was_written() {
        let odd = [
            DIGEST,
            &DIGEST[7..],
            "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "sha256:0123",
            "sha512:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.manifest.v1+json ",
            "",
            "ünïcode",
        ];
        for text in odd {
            let row = Row {
                text: text.to_string(),
                optional: Some(text.to_string()),
                list: vec![text.to_string(), DIGEST.to_string()],
                layers: vec![(text.to_string(), Some(text.to_string()), Some(7)), (DIGEST.to_string(), None, None)],
                annotations: BTreeMap::from([(text.to_string(), text.to_string())]),
            };
            let bytes = postcard::to_stdvec(&row).unwrap();
            assert_eq!(postcard::from_bytes::<Row>(&bytes).unwrap(), row, "{text:?}");
        }
    }

    #[test]
    fn digests_and_known_strings_take_a_few_bytes() {
        let bytes = |text: &str| postcard::to_stdvec(&pack(text)).unwrap().len();
        assert_eq!(bytes(DIGEST), 33);
        assert_eq!(bytes(&DIGEST[7..]), 33);
        assert_eq!(bytes("org.opencontainers.image.description"), 2);
        assert_eq!(bytes("abc"), 5);
    }

    #[test]
    fn an_index_past_the_known_strings_is_an_error() {
        let bytes = postcard::to_stdvec(&Packed::Known(KNOWN.len() as u8)).unwrap();
        assert!(postcard::from_bytes::<Wrapped>(&bytes).is_err());

        #[derive(Deserialize)]
        struct Wrapped(
            #[serde(with = "text")]
            #[allow(dead_code)]
            String,
        );
    }

    #[test]
    fn known_strings_are_distinct_and_fit_a_byte() {
        let distinct: std::collections::BTreeSet<_> = KNOWN.iter().collect();
        assert_eq!(distinct.len(), KNOWN.len());
        assert!(KNOWN.len() <= usize::from(u8::MAX));
        assert!(KNOWN.iter().all(|known| known.len() >= 12), "known_index skips shorter strings");
        assert!(KNOWN.iter().enumerate().all(|(index, known)| known_index(known) == Some(index as u8)));
    }
}
