//! The event: one upstream fact as it was received, plus where it came from.
//!
//! Events are stored with an explicit encoding version byte in front of a postcard body, so a
//! log written today stays readable after the event shape changes: a new shape gets a new
//! version number and old versions are upcast on read (see [`decode_event`]).

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// `com.atproto.sync.subscribeRepos` of a relay or a PDS.
    Firehose,
    /// A Jetstream instance (not cryptographically verifiable).
    Jetstream,
    /// `com.atproto.sync.getRepo` walks (backfill and resync).
    Backfill,
    /// Facts atcr derived itself, such as fetched manifest content.
    Enrichment,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Firehose => "firehose",
            Source::Jetstream => "jetstream",
            Source::Backfill => "backfill",
            Source::Enrichment => "enrichment",
        }
    }
}

/// Whether a put created a record or replaced an existing one, as upstream said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutAction {
    Create,
    Update,
}

/// What happened. Record bytes are kept exactly as received (DAG-CBOR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    RecordPut {
        collection: String,
        rkey: String,
        cid: String,
        action: PutAction,
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    RecordDeleted {
        collection: String,
        rkey: String,
        /// The CID of the record that was deleted, when upstream said (Sync 1.1 `prev`).
        prev_cid: Option<String>,
    },
    Identity {
        handle: Option<String>,
    },
    Account {
        active: bool,
        status: Option<String>,
    },
    ManifestStored {
        digest: String,
        media_type: String,
        size: u64,
    },
    /// Upstream told us this account must be re-synchronized (`#sync`, a broken chain).
    Resync {
        reason: String,
    },
    /// A DID document as ingest resolved it (PLC directory or did:web), kept verbatim so views
    /// can derive handle, PDS and hold endpoints and signing keys without the network.
    /// (Appended after the v1 variants: postcard keeps older variant indexes valid.)
    IdentityResolved {
        document_json: String,
    },
    /// A DID atcr needed (an owner, a manifest's hold) could not be resolved and will not be
    /// retried in this run: the outbound policy refuses its URL (a did:web on a private
    /// address), its document is malformed, or every attempt failed. Pages show the reason
    /// (a hold "unreachable") until an `IdentityResolved` for the DID replaces it.
    IdentityUnresolvable {
        reason: String,
    },
    /// The handle a DID document claims, checked both ways (the document's `alsoKnownAs`, and
    /// the handle's own DNS TXT / `/.well-known/atproto-did` naming the DID back). Enrichment
    /// appends it before the `IdentityResolved` it belongs to; the views only let a handle name
    /// a DID (`/v2`, pages) when its latest check verified.
    HandleChecked {
        handle: String,
        verified: bool,
        /// Why it did not verify (empty when it did).
        reason: String,
    },
    /// Bytes a record or manifest refers to (a scan's vulnerability report or SBOM, an image
    /// config, the file list enrichment derived from a layer), fetched by enrichment, checked
    /// against their digest or CID and kept in the content store under `digest`, so projections
    /// read them without the network. `kind` says what they are (e.g. `scan.vulnerabilities`,
    /// `scan.sbom`, `image.config`, `layer.files`); `subject` what they belong to (the AT-URI of
    /// the record that named them, or the manifest/layer digest).
    ContentStored {
        kind: String,
        digest: String,
        media_type: String,
        size: u64,
        subject: String,
    },
    /// Bytes of `kind` for `subject` that atcr will not use: too large, not matching their
    /// digest, or not parseable as what they claim to be. Quarantined with `reason`; pages say the
    /// data is unreadable instead of showing nothing. `digest` is empty when nothing was fetched.
    ContentRejected {
        kind: String,
        digest: String,
        subject: String,
        reason: String,
    },
}

impl EventBody {
    /// A short, stable name for the kind of event (used in JSON output and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::RecordPut { .. } => "record_put",
            EventBody::RecordDeleted { .. } => "record_deleted",
            EventBody::Identity { .. } => "identity",
            EventBody::Account { .. } => "account",
            EventBody::ManifestStored { .. } => "manifest_stored",
            EventBody::Resync { .. } => "resync",
            EventBody::IdentityResolved { .. } => "identity_resolved",
            EventBody::IdentityUnresolvable { .. } => "identity_unresolvable",
            EventBody::HandleChecked { .. } => "handle_checked",
            EventBody::ContentStored { .. } => "content_stored",
            EventBody::ContentRejected { .. } => "content_rejected",
        }
    }

    /// The collection of a record event.
    pub fn collection(&self) -> Option<&str> {
        match self {
            EventBody::RecordPut { collection, .. } | EventBody::RecordDeleted { collection, .. } => Some(collection),
            _ => None,
        }
    }
}

/// One event as stored. The log offset is the key it is stored under, not part of the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub source: Source,
    /// Upstream position: the firehose `seq`, or Jetstream's `time_us`.
    pub upstream_seq: Option<i64>,
    pub did: String,
    /// The repo revision (TID) of the commit that carried this event, if any.
    pub rev: Option<String>,
    /// The upstream's own timestamp, as it sent it (RFC 3339).
    pub upstream_time: Option<String>,
    /// When atcr received it, microseconds since the Unix epoch.
    pub received_at_us: i64,
    /// The CID of the signed commit this event came from; the commit block is kept in the log.
    pub commit_cid: Option<String>,
    pub body: EventBody,
}

impl Event {
    /// A fact atcr derived itself (a resolved DID document, stored manifest bytes): no upstream
    /// position, rev, time or commit.
    pub fn enrichment(did: &str, received_at_us: i64, body: EventBody) -> Event {
        Event {
            source: Source::Enrichment,
            upstream_seq: None,
            did: did.to_string(),
            rev: None,
            upstream_time: None,
            received_at_us,
            commit_cid: None,
            body,
        }
    }
}

/// An event with the offset it was stored at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub offset: u64,
    pub event: Event,
}

/// Current encoding version. Bump it when `Event` changes shape, keep decoding the old ones.
pub const EVENT_ENCODING_VERSION: u8 = 1;

pub fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    encode_event_into(event, &mut out);
    out
}

/// Encodes into a reused buffer (cleared first): the append path encodes one event at a time.
pub fn encode_event_into(event: &Event, out: &mut Vec<u8>) {
    out.clear();
    out.push(EVENT_ENCODING_VERSION);
    // postcard into a Vec cannot fail for these types (no maps with non-string keys, no
    // unsupported serde features), so a failure here is a programming error.
    let buffer = std::mem::take(out);
    match postcard::to_extend(event, buffer) {
        Ok(buffer) => *out = buffer,
        Err(error) => panic!("event encoding failed, which postcard never does for Event: {error}"),
    }
}

pub fn decode_event(offset: u64, bytes: &[u8]) -> Result<Event> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(StorageError::Corrupt { location: format!("event {offset}"), reason: "empty value".into() });
    };
    match version {
        1 => postcard::from_bytes(body)
            .map_err(|error| StorageError::Corrupt { location: format!("event {offset}"), reason: error.to_string() }),
        other => Err(StorageError::UnsupportedVersion(other)),
    }
}

/// A piece of upstream data that could not be turned into events. Kept with its raw bytes
/// so that nothing received is lost and a later fix can re-process it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub received_at_us: i64,
    /// Which upstream it came from (its URL).
    pub upstream: String,
    pub upstream_seq: Option<i64>,
    pub did: Option<String>,
    pub reason: String,
    #[serde(with = "serde_bytes")]
    pub raw: Vec<u8>,
}

/// Something about the stream itself an operator must know: a possible gap, a refused frame,
/// a cursor reset. Not an upstream fact, so not an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamNote {
    pub received_at_us: i64,
    pub upstream: String,
    pub cursor: Option<i64>,
    pub kind: StreamNoteKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamNoteKind {
    /// `#info OutdatedCursor`: upstream no longer has everything after our cursor.
    OutdatedCursor,
    /// A frame over the size limit was refused and its sequence number skipped.
    OversizedFrameSkipped,
    /// The operator asked to reset the cursor.
    CursorReset,
    /// Any other `#info` message.
    Info,
}

pub(crate) fn encode_versioned<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![EVENT_ENCODING_VERSION];
    match postcard::to_extend(value, out) {
        Ok(out) => out,
        Err(error) => panic!("postcard encoding of a storage value failed: {error}"),
    }
}

pub(crate) fn decode_versioned<T: for<'de> Deserialize<'de>>(location: &str, bytes: &[u8]) -> Result<T> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(StorageError::Corrupt { location: location.into(), reason: "empty value".into() });
    };
    if version != 1 {
        return Err(StorageError::UnsupportedVersion(version));
    }
    postcard::from_bytes(body)
        .map_err(|error| StorageError::Corrupt { location: location.into(), reason: error.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            source: Source::Firehose,
            upstream_seq: Some(42),
            did: "did:plc:abc".into(),
            rev: Some("3kabc".into()),
            upstream_time: Some("2026-01-01T00:00:00Z".into()),
            received_at_us: 1,
            commit_cid: Some("bafyrei".into()),
            body: EventBody::RecordPut {
                collection: "io.atcr.tag".into(),
                rkey: "latest".into(),
                cid: "bafyrec".into(),
                action: PutAction::Create,
                record: vec![0xa1, 0x61, 0x61, 0x01],
            },
        }
    }

    #[test]
    fn event_round_trips_with_version_byte() {
        let event = sample();
        let bytes = encode_event(&event);
        assert_eq!(bytes[0], EVENT_ENCODING_VERSION);
        assert_eq!(decode_event(0, &bytes).unwrap(), event);
    }

    #[test]
    fn unknown_version_is_refused_not_misread() {
        let mut bytes = encode_event(&sample());
        bytes[0] = 99;
        assert!(matches!(decode_event(0, &bytes), Err(StorageError::UnsupportedVersion(99))));
        assert!(matches!(decode_event(0, &[]), Err(StorageError::Corrupt { .. })));
    }

    const PINNED_V1_HEX: &str = "010001540b6469643a706c633a6162630105336b6162630114323032362d30312d30315430303a30303a30305a02010762616679726569000b696f2e617463722e746167066c617465737407626166797265630004a1616101";

    fn hex_decode(hex: &str) -> Vec<u8> {
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn version_1_encoding_is_stable() {
        // A log written by this version must stay readable: pin the bytes of one event.
        let bytes = encode_event(&sample());
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(hex, PINNED_V1_HEX, "the v1 encoding changed: bump EVENT_ENCODING_VERSION and upcast");
        assert_eq!(decode_event(0, &hex_decode(PINNED_V1_HEX)).unwrap(), sample());
    }
}
