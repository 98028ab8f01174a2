//! The CAR v1 file of a `#commit` frame (`blocks`), read in one pass into an index of blocks.
//!
//! Why it exists: commit verification needs every block of the frame by CID (the commit, the
//! records, the MST nodes of the covering proofs), and the live path needs the records. One pass
//! over the bytes finds every block and checks it against its CID (sha2-256 only: a block whose
//! hash atproto does not allow, or that does not match, makes the whole CAR invalid), so nothing
//! later can be fed bytes that are not what their CID says. The bytes are kept as one buffer and
//! blocks are ranges into it: a frame's CAR is ~3 KB and copying it once is cheaper than a map of
//! small vectors.

use std::ops::Range;

use ipld_core::cid::Cid;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Multihash code of sha2-256, the only hash atproto repositories use.
pub const SHA2_256: u64 = 0x12;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarError {
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("bad varint at byte {0}")]
    Varint(usize),
    #[error("cannot decode the CAR header: {0}")]
    Header(String),
    #[error("CAR version {0} is not 1")]
    Version(u64),
    #[error("bad CID at byte {offset}: {reason}")]
    Cid { offset: usize, reason: String },
    #[error("block {0} is not hashed with sha2-256")]
    UnsupportedHash(Cid),
    #[error("block {0} does not match its CID")]
    HashMismatch(Cid),
}

#[derive(Deserialize)]
struct Header {
    version: u64,
    roots: Vec<Cid>,
}

/// The blocks of a CAR, each checked against its CID.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CarBlocks {
    bytes: Vec<u8>,
    roots: Vec<Cid>,
    /// Sorted by CID: a frame has ~10 blocks, and a binary search over them beats hashing a
    /// CID (~100 bytes) for every lookup.
    index: Vec<(Cid, Range<usize>)>,
}

impl CarBlocks {
    /// Reads a whole CAR v1 from `bytes` (copied once), checking every block's hash.
    pub fn parse(bytes: &[u8]) -> Result<Self, CarError> {
        let mut position = 0;
        let header_len = read_varint(bytes, &mut position)?;
        let header_bytes = take(bytes, &mut position, header_len)?;
        let header: Header =
            serde_ipld_dagcbor::from_slice(header_bytes).map_err(|error| CarError::Header(error.to_string()))?;
        if header.version != 1 {
            return Err(CarError::Version(header.version));
        }
        let mut index = Vec::new();
        while position < bytes.len() {
            let section_len = read_varint(bytes, &mut position)?;
            let section_start = position;
            let section = take(bytes, &mut position, section_len)?;
            let mut reader = std::io::Cursor::new(section);
            let cid = Cid::read_bytes(&mut reader)
                .map_err(|error| CarError::Cid { offset: section_start, reason: error.to_string() })?;
            let cid_len = usize::try_from(reader.position()).map_err(|_| CarError::Truncated(section_start))?;
            let data = &section[cid_len..];
            check_hash(&cid, data)?;
            index.push((cid, section_start + cid_len..position));
        }
        index.sort_by_key(|(cid, _)| *cid);
        index.dedup_by(|(a, _), (b, _)| a == b);
        Ok(CarBlocks { bytes: bytes.to_vec(), roots: header.roots, index })
    }

    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// The block with this CID, if the CAR holds it.
    pub fn get(&self, cid: &Cid) -> Option<&[u8]> {
        let position = self.index.binary_search_by(|(held, _)| held.cmp(cid)).ok()?;
        self.bytes.get(self.index[position].1.clone())
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Every block, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Cid, &[u8])> {
        self.index.iter().filter_map(|(cid, range)| Some((cid, self.bytes.get(range.clone())?)))
    }
}

impl atcr_storage::mst::BlockSource for CarBlocks {
    fn block(&self, cid: &Cid) -> Option<&[u8]> {
        self.get(cid)
    }
}

fn check_hash(cid: &Cid, data: &[u8]) -> Result<(), CarError> {
    let hash = cid.hash();
    if hash.code() != SHA2_256 || hash.size() != 32 {
        return Err(CarError::UnsupportedHash(*cid));
    }
    if Sha256::digest(data).as_slice() != hash.digest() {
        return Err(CarError::HashMismatch(*cid));
    }
    Ok(())
}

fn take<'a>(bytes: &'a [u8], position: &mut usize, count: u64) -> Result<&'a [u8], CarError> {
    let count = usize::try_from(count).map_err(|_| CarError::Truncated(*position))?;
    let end = position.checked_add(count).ok_or(CarError::Truncated(*position))?;
    let slice = bytes.get(*position..end).ok_or(CarError::Truncated(*position))?;
    *position = end;
    Ok(slice)
}

/// An unsigned LEB128 varint (multiformats), at most 9 bytes.
fn read_varint(bytes: &[u8], position: &mut usize) -> Result<u64, CarError> {
    let start = *position;
    let mut value = 0u64;
    for shift in (0..63).step_by(7) {
        let Some(&byte) = bytes.get(*position) else {
            return Err(CarError::Truncated(*position));
        };
        *position += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(CarError::Varint(start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use atcr_gen::encoding::{DAG_CBOR, car_v1};

    fn cid_of(data: &[u8]) -> Cid {
        atcr_gen::encoding::cid_of(DAG_CBOR, data)
    }

    fn car(root: Cid, blocks: &[(Cid, &[u8])]) -> Vec<u8> {
        car_v1(root, blocks.iter().map(|(cid, data)| (cid, *data)))
    }

    #[test]
    fn reads_blocks_and_refuses_a_block_that_does_not_match_its_cid() {
        let first: &[u8] = b"\xa1\x61a\x01";
        let second: &[u8] = b"\xa1\x61b\x02";
        let bytes = car(cid_of(first), &[(cid_of(first), first), (cid_of(second), second)]);
        let blocks = CarBlocks::parse(&bytes).unwrap();
        assert_eq!(blocks.roots(), &[cid_of(first)]);
        assert_eq!(blocks.get(&cid_of(second)), Some(second));
        assert_eq!(blocks.len(), 2);

        let forged = car(cid_of(first), &[(cid_of(first), second)]);
        assert_eq!(CarBlocks::parse(&forged), Err(CarError::HashMismatch(cid_of(first))));
        assert!(matches!(CarBlocks::parse(&bytes[..bytes.len() - 1]), Err(CarError::Truncated(_))));
        assert!(matches!(CarBlocks::parse(b""), Err(CarError::Truncated(0))));
    }
}
