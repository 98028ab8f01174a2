//! Decoding `com.atproto.sync.subscribeRepos` frames, filtering them to `io.atcr.*`, and
//! extracting the records of the frames that match.
//!
//! Why it is shaped this way: 97 % of a real firehose is not ours. A frame is a DAG-CBOR
//! header followed by a DAG-CBOR body; for a commit we first read only the op paths (borrowed,
//! no allocation, CIDs and `blocks` skipped without copying) and stop there unless a path is
//! in an `io.atcr.*` collection. Only matching commits pay for the full decode and the CAR
//! parse ([`crate::car`], which also checks every block's hash against its CID). A matching
//! commit keeps what Sync 1.1 verification needs ([`crate::verify`]): every op as sent, `since`,
//! `prevData` and the CAR's blocks.

use std::fmt;

use ipld_core::cid::Cid;
use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};

use atcr_storage::PutAction;

use crate::car::CarBlocks;

/// The collection prefix atcr indexes.
pub const ATCR_NSID_PREFIX: &str = "io.atcr.";

/// What a frame turned out to be.
// A commit carries its verification evidence inline (~400 bytes): a frame is decoded and
// consumed right away, never stored in bulk, so boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A commit with at least one `io.atcr.*` op; only those ops are kept.
    Commit(CommitFacts),
    /// A commit with no `io.atcr.*` op, or an event kind atcr does not keep.
    Skipped {
        seq: Option<i64>,
    },
    Identity {
        seq: i64,
        did: String,
        handle: Option<String>,
        time: Option<String>,
    },
    Account {
        seq: i64,
        did: String,
        active: bool,
        status: Option<String>,
        time: Option<String>,
    },
    Sync {
        seq: i64,
        did: String,
        rev: Option<String>,
        time: Option<String>,
    },
    Info {
        name: String,
        message: Option<String>,
    },
    /// An error frame (`op: -1`), e.g. `FutureCursor`; upstream closes the stream after it.
    Error {
        error: String,
        message: Option<String>,
    },
}

impl Frame {
    pub fn seq(&self) -> Option<i64> {
        match self {
            Frame::Commit(commit) => Some(commit.seq),
            Frame::Skipped { seq } => *seq,
            Frame::Identity { seq, .. } | Frame::Account { seq, .. } | Frame::Sync { seq, .. } => Some(*seq),
            Frame::Info { .. } | Frame::Error { .. } => None,
        }
    }

    /// The upstream timestamp, for frames that carry one and were decoded far enough.
    pub fn time(&self) -> Option<&str> {
        match self {
            Frame::Commit(commit) => Some(&commit.time),
            Frame::Identity { time, .. } | Frame::Account { time, .. } | Frame::Sync { time, .. } => time.as_deref(),
            Frame::Skipped { .. } | Frame::Info { .. } | Frame::Error { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFacts {
    pub seq: i64,
    pub did: String,
    pub rev: String,
    pub time: String,
    pub commit_cid: String,
    /// The signed commit block, kept so its signature can be re-checked offline.
    pub commit_block: Vec<u8>,
    /// The `io.atcr.*` ops, with their records.
    pub ops: Vec<RecordOp>,
    /// The rev of the previous commit, as the frame says (Sync 1.1 chain check).
    pub since: Option<String>,
    /// The MST root before this commit (Sync 1.1), when the frame carries it.
    pub prev_data: Option<Cid>,
    /// Every op of the commit as sent (not only `io.atcr.*`): MST inversion needs them all.
    pub sync_ops: Vec<SyncOp>,
    /// The CAR's blocks (commit, records, MST nodes), each checked against its CID.
    pub blocks: CarBlocks,
}

/// One op of a commit exactly as the frame lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOp {
    pub action: OpAction,
    /// `collection/rkey`.
    pub path: String,
    /// The new record's CID (creates and updates).
    pub cid: Option<Cid>,
    /// The previous record's CID (Sync 1.1: updates and deletes).
    pub prev: Option<Cid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpAction {
    Create,
    Update,
    Delete,
}

impl OpAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OpAction::Create => "create",
            OpAction::Update => "update",
            OpAction::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOp {
    Put { collection: String, rkey: String, cid: String, action: PutAction, record: Vec<u8> },
    Delete { collection: String, rkey: String, prev_cid: Option<String> },
}

/// Why a frame could not be used. The frame goes to quarantine with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The sequence number, when the frame got far enough to tell it.
    pub seq: Option<i64>,
    pub did: Option<String>,
    pub reason: String,
}

impl fmt::Display for FrameError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.reason)
    }
}

impl std::error::Error for FrameError {}

fn fail(seq: Option<i64>, did: Option<&str>, reason: impl Into<String>) -> FrameError {
    FrameError { seq, did: did.map(str::to_string), reason: reason.into() }
}

#[derive(Deserialize)]
struct Header<'a> {
    op: i64,
    #[serde(borrow, default)]
    t: Option<&'a str>,
}

/// The cheap first look at a commit: its seq and whether any op path is ours.
#[derive(Deserialize)]
struct CommitPeek {
    seq: i64,
    ops: AnyAtcrPath,
}

/// Deserializes a list of ops into one bool, borrowing each path and skipping everything else.
struct AnyAtcrPath(bool);

#[derive(Deserialize)]
struct OpPathPeek<'a> {
    #[serde(borrow)]
    path: &'a str,
}

impl<'de> Deserialize<'de> for AnyAtcrPath {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PathsVisitor;
        impl<'de> Visitor<'de> for PathsVisitor {
            type Value = AnyAtcrPath;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a list of repo ops")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut ops: A) -> Result<AnyAtcrPath, A::Error> {
                let mut any = false;
                while let Some(op) = ops.next_element::<OpPathPeek<'de>>()? {
                    any |= op.path.starts_with(ATCR_NSID_PREFIX);
                }
                Ok(AnyAtcrPath(any))
            }
        }
        deserializer.deserialize_seq(PathsVisitor)
    }
}

#[derive(Deserialize)]
struct CommitBody<'a> {
    #[serde(borrow)]
    repo: &'a str,
    commit: Cid,
    #[serde(borrow)]
    rev: &'a str,
    #[serde(borrow)]
    blocks: &'a [u8],
    #[serde(borrow)]
    ops: Vec<OpBody<'a>>,
    #[serde(borrow)]
    time: &'a str,
    #[serde(borrow, default)]
    since: Option<&'a str>,
    #[serde(default, rename = "prevData")]
    prev_data: Option<Cid>,
}

#[derive(Deserialize)]
struct OpBody<'a> {
    #[serde(borrow)]
    action: &'a str,
    #[serde(borrow)]
    path: &'a str,
    cid: Option<Cid>,
    #[serde(default)]
    prev: Option<Cid>,
}

#[derive(Deserialize)]
struct IdentityBody {
    seq: i64,
    did: String,
    #[serde(default)]
    handle: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

#[derive(Deserialize)]
struct AccountBody {
    seq: i64,
    did: String,
    active: bool,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

#[derive(Deserialize)]
struct SyncBody {
    seq: i64,
    did: String,
    #[serde(default)]
    rev: Option<String>,
    #[serde(default)]
    time: Option<String>,
}

#[derive(Deserialize)]
struct InfoBody {
    name: String,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct SeqPeek {
    #[serde(default)]
    seq: Option<i64>,
    #[serde(default, rename = "did")]
    _did: Option<IgnoredAny>,
}

/// Decodes one whole body; trailing bytes are an error.
fn read<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, FrameError> {
    serde_ipld_dagcbor::from_slice(body).map_err(|error| fail(None, None, format!("cannot decode {what}: {error}")))
}

/// Decodes one binary WebSocket message of `subscribeRepos`.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, FrameError> {
    decode_frame_filtered(bytes, true)
}

/// Like [`decode_frame`], but a commit is decoded in full (CAR parsed, every op kept in
/// `sync_ops`) whether or not it has an `io.atcr.*` op: for verifying every commit of a stream
/// (benchmarks, tools). `ops` still holds only the `io.atcr.*` records.
pub fn decode_frame_unfiltered(bytes: &[u8]) -> Result<Frame, FrameError> {
    decode_frame_filtered(bytes, false)
}

fn decode_frame_filtered(bytes: &[u8], only_atcr: bool) -> Result<Frame, FrameError> {
    let Some(header_len) = cbor_item_len(bytes) else {
        return Err(fail(None, None, "cannot decode frame header: not a complete CBOR item"));
    };
    let (header_bytes, body) = bytes.split_at(header_len);
    let header: Header = serde_ipld_dagcbor::from_slice(header_bytes)
        .map_err(|error| fail(None, None, format!("cannot decode frame header: {error}")))?;
    if header.op == -1 {
        let error: ErrorBody = read(body, "error frame body")?;
        return Ok(Frame::Error { error: error.error, message: error.message });
    }
    if header.op != 1 {
        return Err(fail(None, None, format!("unknown frame op {}", header.op)));
    }
    match header.t {
        Some("#commit") => {
            let peek: CommitPeek = read(body, "commit body")?;
            if only_atcr && !peek.ops.0 {
                return Ok(Frame::Skipped { seq: Some(peek.seq) });
            }
            decode_matching_commit(body, peek.seq).map(Frame::Commit)
        }
        Some("#identity") => {
            let identity: IdentityBody = read(body, "identity body")?;
            Ok(Frame::Identity { seq: identity.seq, did: identity.did, handle: identity.handle, time: identity.time })
        }
        Some("#account") => {
            let account: AccountBody = read(body, "account body")?;
            Ok(Frame::Account {
                seq: account.seq,
                did: account.did,
                active: account.active,
                status: account.status,
                time: account.time,
            })
        }
        Some("#sync") => {
            let sync: SyncBody = read(body, "sync body")?;
            Ok(Frame::Sync { seq: sync.seq, did: sync.did, rev: sync.rev, time: sync.time })
        }
        Some("#info") => {
            let info: InfoBody = read(body, "info body")?;
            Ok(Frame::Info { name: info.name, message: info.message })
        }
        _ => {
            // Deprecated (#handle, #migrate, #tombstone) or future kinds: not ours, but keep
            // the cursor moving when they carry a seq.
            let peek: SeqPeek = read(body, "event body")?;
            Ok(Frame::Skipped { seq: peek.seq })
        }
    }
}

/// The byte length of the CBOR item at the start of `bytes` (the frame header):
/// serde_ipld_dagcbor does not expose its read position, so the header is measured with this
/// small walker and header and body are then decoded from their own slices.
fn cbor_item_len(bytes: &[u8]) -> Option<usize> {
    let mut walker = CountingSlice { bytes, consumed: 0 };
    walker.skip_item(0)
}

/// A minimal CBOR item walker, only to find where the header ends.
struct CountingSlice<'a> {
    bytes: &'a [u8],
    consumed: usize,
}

impl CountingSlice<'_> {
    fn take(&mut self, count: usize) -> Option<&[u8]> {
        let end = self.consumed.checked_add(count)?;
        let slice = self.bytes.get(self.consumed..end)?;
        self.consumed = end;
        Some(slice)
    }

    fn argument(&mut self, info: u8) -> Option<u64> {
        Some(match info {
            0..=23 => u64::from(info),
            24 => u64::from(self.take(1)?[0]),
            25 => u64::from(u16::from_be_bytes(self.take(2)?.try_into().ok()?)),
            26 => u64::from(u32::from_be_bytes(self.take(4)?.try_into().ok()?)),
            27 => u64::from_be_bytes(self.take(8)?.try_into().ok()?),
            _ => return None,
        })
    }

    fn skip_item(&mut self, depth: usize) -> Option<usize> {
        // A header nests two levels; anything deeper is not a header.
        if depth > 8 {
            return None;
        }
        let initial = *self.take(1)?.first()?;
        let major = initial >> 5;
        let info = initial & 0x1f;
        match major {
            0 | 1 => {
                self.argument(info)?;
            }
            2 | 3 => {
                let length = usize::try_from(self.argument(info)?).ok()?;
                self.take(length)?;
            }
            4 => {
                for _ in 0..self.argument(info)? {
                    self.skip_item(depth + 1)?;
                }
            }
            5 => {
                for _ in 0..self.argument(info)? {
                    self.skip_item(depth + 1)?;
                    self.skip_item(depth + 1)?;
                }
            }
            6 => {
                self.argument(info)?;
                self.skip_item(depth + 1)?;
            }
            7 => match info {
                20..=23 => {}
                25 => {
                    self.take(2)?;
                }
                26 => {
                    self.take(4)?;
                }
                27 => {
                    self.take(8)?;
                }
                _ => return None,
            },
            _ => return None,
        }
        Some(self.consumed)
    }
}

fn decode_matching_commit(body: &[u8], seq: i64) -> Result<CommitFacts, FrameError> {
    let commit: CommitBody = serde_ipld_dagcbor::from_slice(body)
        .map_err(|error| fail(Some(seq), None, format!("cannot decode commit body: {error}")))?;
    let did = commit.repo;
    let failed = |reason: String| fail(Some(seq), Some(did), reason);

    let car = CarBlocks::parse(commit.blocks).map_err(|error| failed(format!("invalid CAR in blocks: {error}")))?;
    let root = car.roots().first().copied();
    if root != Some(commit.commit) {
        return Err(failed(format!(
            "CAR root {} is not the commit {}",
            root.map(|cid| cid.to_string()).unwrap_or_else(|| "(none)".into()),
            commit.commit
        )));
    }
    let Some(commit_block) = car.get(&commit.commit).map(<[u8]>::to_vec) else {
        return Err(failed(format!("commit block {} missing from CAR", commit.commit)));
    };

    let mut sync_ops = Vec::with_capacity(commit.ops.len());
    let mut ops = Vec::new();
    for op in &commit.ops {
        let action = match op.action {
            "create" => OpAction::Create,
            "update" => OpAction::Update,
            "delete" => OpAction::Delete,
            other => return Err(failed(format!("unknown op action {other:?} for {}", op.path))),
        };
        sync_ops.push(SyncOp { action, path: op.path.to_string(), cid: op.cid, prev: op.prev });
        let Some((collection, rkey)) = op.path.split_once('/') else {
            return Err(failed(format!("op path {:?} is not collection/rkey", op.path)));
        };
        if !collection.starts_with(ATCR_NSID_PREFIX) {
            continue;
        }
        if rkey.is_empty() || rkey.contains('/') {
            return Err(failed(format!("op path {:?} has an invalid record key", op.path)));
        }
        let action = match op.action {
            "create" => PutAction::Create,
            "update" => PutAction::Update,
            "delete" => {
                ops.push(RecordOp::Delete {
                    collection: collection.to_string(),
                    rkey: rkey.to_string(),
                    prev_cid: op.prev.map(|cid| cid.to_string()),
                });
                continue;
            }
            other => {
                return Err(failed(format!("unknown op action {other:?} for {}", op.path)));
            }
        };
        let Some(cid) = op.cid else {
            return Err(failed(format!("{} op for {} has no cid", op.action, op.path)));
        };
        let Some(record) = car.get(&cid).map(<[u8]>::to_vec) else {
            return Err(failed(format!("record block {cid} for {} missing from CAR", op.path)));
        };
        ops.push(RecordOp::Put {
            collection: collection.to_string(),
            rkey: rkey.to_string(),
            cid: cid.to_string(),
            action,
            record,
        });
    }

    Ok(CommitFacts {
        seq,
        did: did.to_string(),
        rev: commit.rev.to_string(),
        time: commit.time.to_string(),
        commit_cid: commit.commit.to_string(),
        commit_block,
        ops,
        since: commit.since.map(str::to_string),
        prev_data: commit.prev_data,
        sync_ops,
        blocks: car,
    })
}
