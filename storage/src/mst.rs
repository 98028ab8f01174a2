//! The Merkle Search Tree of atproto repositories: the one implementation atcr has, used to
//! prove a commit's ops (Sync 1.1 MST inversion, `atcr-ingest`'s `verify`) and to build the
//! trees of generated worlds (`atcr-gen`).
//!
//! Why hand-written: atrium-repo's `mst::Tree` works only on a complete block store through an
//! async API, and a randomized test once lost a key it had added; inversion needs a tree that
//! loads nodes lazily from the few blocks a frame ships and says which block was missing.
//!
//! The structure (atproto repository spec): a key's layer is the number of leading zero bits of
//! sha256(key), counted in pairs (fanout 4). A node at layer `l` holds, in key order, the keys of
//! its range whose layer is `l`, and between them the subtrees (layer `l - 1`) of the gaps that
//! hold any key; the root is at the layer of the highest key. The tree is a function of its key
//! set, so the same keys give the same root CID whatever the order of operations. A node is
//! encoded as DAG-CBOR `{l: left subtree or null, e: [{p: shared prefix length with the previous
//! key, k: key suffix bytes, v: value CID, t: right subtree or null}]}`.
//!
//! [`Tree`] holds nodes either loaded (decoded, possibly modified) or as stubs (a CID not read
//! yet). Reading a stub asks a [`BlockSource`]; a node that is needed and absent is a
//! [`MstError::MissingBlock`]. Changed nodes forget their CID and are re-encoded once when the
//! root is asked for.

use std::collections::HashMap;

use ipld_core::cid::Cid;
use ipld_core::cid::multihash::Multihash;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Multicodec of DAG-CBOR, the codec of MST nodes.
const DAG_CBOR: u64 = 0x71;
/// Multihash code of sha2-256.
const SHA2_256: u64 = 0x12;
/// Layers are at most 128 (256 zero bits / 2); a deeper walk is a malformed tree.
const MAX_DEPTH: u32 = 130;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MstError {
    #[error("block {0} is missing from the frame")]
    MissingBlock(Cid),
    #[error("mst node {cid} does not decode: {reason}")]
    Malformed { cid: Cid, reason: String },
    #[error("{key} is {found} in the signed tree but the op says {expected}")]
    OpMismatch { key: String, expected: String, found: String },
    #[error("two ops on {0}")]
    DuplicateKey(String),
    #[error("undoing the ops gives the tree {computed}, not prevData {expected}")]
    RootMismatch { computed: String, expected: String },
    #[error("mst is deeper than {MAX_DEPTH} layers")]
    TooDeep,
}

/// Where a tree reads the nodes it has not loaded yet.
pub trait BlockSource {
    fn block(&self, cid: &Cid) -> Option<&[u8]>;
}

/// A tree built entirely in memory reads nothing.
pub struct NoBlocks;

impl BlockSource for NoBlocks {
    fn block(&self, _cid: &Cid) -> Option<&[u8]> {
        None
    }
}

impl BlockSource for HashMap<Cid, Vec<u8>> {
    fn block(&self, cid: &Cid) -> Option<&[u8]> {
        self.get(cid).map(Vec::as_slice)
    }
}

/// The MST layer of a key: leading zero bits of sha256(key), counted in pairs.
pub fn key_layer(key: &[u8]) -> u32 {
    let digest = Sha256::digest(key);
    let mut zero_bits = 0;
    for byte in digest {
        if byte == 0 {
            zero_bits += 8;
            continue;
        }
        zero_bits += byte.leading_zeros();
        break;
    }
    zero_bits / 2
}

/// The number of leading bytes two keys share (the `p` of an entry).
pub fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A CIDv1 (DAG-CBOR, sha2-256) of a node's bytes.
fn node_cid(bytes: &[u8]) -> Cid {
    let digest = Sha256::digest(bytes);
    // A 32-byte digest always fits a 64-byte multihash.
    let hash = Multihash::<64>::wrap(SHA2_256, &digest).unwrap_or_default();
    Cid::new_v1(DAG_CBOR, hash)
}

#[derive(Serialize, Deserialize)]
struct NodeData<'a> {
    l: Option<Cid>,
    #[serde(borrow)]
    e: Vec<EntryData<'a>>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
struct EntryData<'a> {
    p: usize,
    #[serde(with = "serde_bytes", borrow)]
    k: &'a [u8],
    v: Cid,
    t: Option<Cid>,
}

#[derive(Debug, Clone)]
enum Entry {
    Leaf { key: Vec<u8>, value: Cid },
    Tree(Child),
}

#[derive(Debug, Clone)]
enum Child {
    Stub(Cid),
    Loaded(Box<Node>),
}

#[derive(Debug, Clone, Default)]
struct Node {
    entries: Vec<Entry>,
    /// The CID of the node as it is, when known (loaded and unchanged, or encoded since).
    cid: Option<Cid>,
    /// The encoded bytes, kept when this tree encoded the node (for shipping proofs).
    bytes: Option<Vec<u8>>,
}

impl Node {
    fn dirty(&mut self) {
        self.cid = None;
        self.bytes = None;
    }

    fn has_leaf(&self) -> bool {
        self.entries.iter().any(|entry| matches!(entry, Entry::Leaf { .. }))
    }

    /// The index of the first leaf whose key is `>= key`, or the number of entries.
    fn first_leaf_at_or_after(&self, key: &[u8]) -> usize {
        self.entries
            .iter()
            .position(|entry| matches!(entry, Entry::Leaf { key: leaf, .. } if leaf.as_slice() >= key))
            .unwrap_or(self.entries.len())
    }

    /// The subtree just before `index`, if that entry is one.
    fn tree_before(&self, index: usize) -> Option<usize> {
        let left = index.checked_sub(1)?;
        matches!(self.entries.get(left), Some(Entry::Tree(_))).then_some(left)
    }

    fn decode(cid: Cid, bytes: &[u8]) -> Result<Node, MstError> {
        let malformed = |reason: String| MstError::Malformed { cid, reason };
        let data: NodeData = serde_ipld_dagcbor::from_slice(bytes).map_err(|error| malformed(error.to_string()))?;
        let mut entries = Vec::with_capacity(data.e.len() * 2 + 1);
        if let Some(left) = data.l {
            entries.push(Entry::Tree(Child::Stub(left)));
        }
        // The previous leaf's index in `entries`: its key is the prefix source of the next.
        let mut previous: Option<usize> = None;
        for entry in &data.e {
            let previous_key: &[u8] = match previous.map(|index| &entries[index]) {
                Some(Entry::Leaf { key, .. }) => key,
                _ => &[],
            };
            let Some(prefix) = previous_key.get(..entry.p) else {
                return Err(malformed(format!("prefix length {} exceeds the previous key", entry.p)));
            };
            let mut key = Vec::with_capacity(entry.p + entry.k.len());
            key.extend_from_slice(prefix);
            key.extend_from_slice(entry.k);
            if previous.is_some() && key.as_slice() <= previous_key {
                return Err(malformed("keys are not in increasing order".into()));
            }
            entries.push(Entry::Leaf { key, value: entry.v });
            previous = Some(entries.len() - 1);
            if let Some(right) = entry.t {
                entries.push(Entry::Tree(Child::Stub(right)));
            }
        }
        Ok(Node { entries, cid: Some(cid), bytes: None })
    }

    /// Encodes the node (and first every changed node below it); returns its CID. Each node
    /// encoded here is reported to `fresh`.
    fn encode(&mut self, fresh: &mut dyn FnMut(Cid, &[u8])) -> Cid {
        if let Some(cid) = self.cid {
            return cid;
        }
        let mut child_cids = Vec::with_capacity(self.entries.len());
        for entry in &mut self.entries {
            child_cids.push(match entry {
                Entry::Tree(Child::Stub(cid)) => Some(*cid),
                Entry::Tree(Child::Loaded(node)) => Some(node.encode(fresh)),
                Entry::Leaf { .. } => None,
            });
        }
        let mut left = None;
        let mut entries: Vec<EntryData> = Vec::with_capacity(self.entries.len());
        let mut previous: &[u8] = &[];
        for (entry, child) in self.entries.iter().zip(&child_cids) {
            match entry {
                Entry::Leaf { key, value } => {
                    let shared = common_prefix_len(previous, key);
                    entries.push(EntryData { p: shared, k: &key[shared..], v: *value, t: None });
                    previous = key;
                }
                Entry::Tree(_) => match entries.last_mut() {
                    Some(last) => last.t = *child,
                    None => left = *child,
                },
            }
        }
        let bytes = encode_node(left.as_ref(), &entries);
        let cid = node_cid(&bytes);
        fresh(cid, &bytes);
        self.cid = Some(cid);
        self.bytes = Some(bytes);
        cid
    }
}

/// The canonical DAG-CBOR of a node, written directly: the same bytes as serde_ipld_dagcbor
/// gives for [`NodeData`] (a unit test compares them), without its per-map key sorting and
/// per-CID allocations, which were a third of inversion's time. Keys in canonical order: `e`
/// before `l`; `k`, `p`, `t`, `v` in an entry.
fn encode_node(left: Option<&Cid>, entries: &[EntryData]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 120);
    out.push(0xa2);
    out.extend_from_slice(b"\x61e");
    cbor_header(&mut out, 4, entries.len() as u64);
    for entry in entries {
        out.push(0xa4);
        out.extend_from_slice(b"\x61k");
        cbor_header(&mut out, 2, entry.k.len() as u64);
        out.extend_from_slice(entry.k);
        out.extend_from_slice(b"\x61p");
        cbor_header(&mut out, 0, entry.p as u64);
        out.extend_from_slice(b"\x61t");
        cbor_link(&mut out, entry.t.as_ref());
        out.extend_from_slice(b"\x61v");
        cbor_link(&mut out, Some(&entry.v));
    }
    out.extend_from_slice(b"\x61l");
    cbor_link(&mut out, left);
    out
}

fn cbor_header(out: &mut Vec<u8>, major: u8, value: u64) {
    let major = major << 5;
    match value {
        0..=23 => out.push(major | value as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, value as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// A CID as DAG-CBOR: tag 42 over the bytes `0x00 || cid`; `None` as null.
fn cbor_link(out: &mut Vec<u8>, cid: Option<&Cid>) {
    let Some(cid) = cid else {
        out.push(0xf6);
        return;
    };
    out.extend_from_slice(&[0xd8, 0x2a]);
    cbor_header(out, 2, cid.encoded_len() as u64 + 1);
    out.push(0x00);
    // Writing into a Vec cannot fail.
    let _ = cid.write_bytes(&mut *out);
}

/// Loads a child in place if it is a stub and returns the node.
fn load<'n>(child: &'n mut Child, blocks: &dyn BlockSource) -> Result<&'n mut Node, MstError> {
    if let Child::Stub(cid) = *child {
        let bytes = blocks.block(&cid).ok_or(MstError::MissingBlock(cid))?;
        *child = Child::Loaded(Box::new(Node::decode(cid, bytes)?));
    }
    match child {
        Child::Loaded(node) => Ok(node),
        Child::Stub(_) => unreachable!("loaded just above"),
    }
}

fn tree_at<'n>(node: &'n mut Node, index: usize, blocks: &dyn BlockSource) -> Result<&'n mut Node, MstError> {
    match node.entries.get_mut(index) {
        Some(Entry::Tree(child)) => load(child, blocks),
        _ => unreachable!("callers pass the index of a subtree"),
    }
}

/// A node at `layer` holding only `key`, with empty intermediate nodes down to the key's layer.
fn single(key: &[u8], value: Cid, key_layer: u32, layer: u32) -> Node {
    let mut node = Node { entries: vec![Entry::Leaf { key: key.to_vec(), value }], cid: None, bytes: None };
    for _ in key_layer..layer {
        node = Node { entries: vec![Entry::Tree(Child::Loaded(Box::new(node)))], cid: None, bytes: None };
    }
    node
}

/// Wraps `node` (at `from`) in empty intermediate nodes up to layer `to`.
fn lift(mut node: Node, from: u32, to: u32) -> Node {
    for _ in from..to {
        node = Node { entries: vec![Entry::Tree(Child::Loaded(Box::new(node)))], cid: None, bytes: None };
    }
    node
}

fn get(node: &mut Node, key: &[u8], blocks: &dyn BlockSource, depth: u32) -> Result<Option<Cid>, MstError> {
    if depth > MAX_DEPTH {
        return Err(MstError::TooDeep);
    }
    let index = node.first_leaf_at_or_after(key);
    if let Some(Entry::Leaf { key: leaf, value }) = node.entries.get(index)
        && leaf.as_slice() == key
    {
        return Ok(Some(*value));
    }
    match node.tree_before(index) {
        Some(left) => get(tree_at(node, left, blocks)?, key, blocks, depth + 1),
        None => Ok(None),
    }
}

/// Splits a node at `layer` around `key` (not in it) into the parts below and above the key.
fn split(
    mut node: Node,
    layer: u32,
    key: &[u8],
    blocks: &dyn BlockSource,
) -> Result<(Option<Node>, Option<Node>), MstError> {
    if layer == 0 && node.entries.iter().any(|entry| matches!(entry, Entry::Tree(_))) {
        return Err(MstError::TooDeep);
    }
    let index = node.first_leaf_at_or_after(key);
    let mut right_entries = node.entries.split_off(index);
    let mut left_entries = std::mem::take(&mut node.entries);
    if let Some(Entry::Tree(mut child)) = left_entries.pop_if(|entry| matches!(entry, Entry::Tree(_))) {
        load(&mut child, blocks)?;
        let Child::Loaded(child) = child else { unreachable!("loaded just above") };
        let (lower, upper) = split(*child, layer - 1, key, blocks)?;
        left_entries.extend(lower.map(|node| Entry::Tree(Child::Loaded(Box::new(node)))));
        if let Some(upper) = upper {
            right_entries.insert(0, Entry::Tree(Child::Loaded(Box::new(upper))));
        }
    }
    let part = |entries: Vec<Entry>| (!entries.is_empty()).then_some(Node { entries, cid: None, bytes: None });
    Ok((part(left_entries), part(right_entries)))
}

/// Merges two adjacent nodes at `layer` (every key of `left` below every key of `right`).
fn merge(mut left: Node, mut right: Node, layer: u32, blocks: &dyn BlockSource) -> Result<Node, MstError> {
    let joins_subtrees =
        matches!(left.entries.last(), Some(Entry::Tree(_))) && matches!(right.entries.first(), Some(Entry::Tree(_)));
    if joins_subtrees {
        if layer == 0 {
            return Err(MstError::TooDeep);
        }
        let (Some(Entry::Tree(mut lower)), Entry::Tree(mut upper)) = (left.entries.pop(), right.entries.remove(0))
        else {
            unreachable!("checked just above");
        };
        load(&mut lower, blocks)?;
        load(&mut upper, blocks)?;
        let (Child::Loaded(lower), Child::Loaded(upper)) = (lower, upper) else { unreachable!("loaded just above") };
        let joined = merge(*lower, *upper, layer - 1, blocks)?;
        left.entries.push(Entry::Tree(Child::Loaded(Box::new(joined))));
    }
    left.entries.append(&mut right.entries);
    left.dirty();
    Ok(left)
}

fn take_child(node: &mut Node, index: usize) -> Child {
    match std::mem::replace(&mut node.entries[index], Entry::Tree(Child::Stub(Cid::default()))) {
        Entry::Tree(child) => child,
        Entry::Leaf { .. } => unreachable!("callers pass the index of a subtree"),
    }
}

fn insert(
    node: &mut Node,
    layer: u32,
    key: &[u8],
    value: Cid,
    key_layer: u32,
    blocks: &dyn BlockSource,
) -> Result<Option<Cid>, MstError> {
    let index = node.first_leaf_at_or_after(key);
    if key_layer == layer {
        if let Some(Entry::Leaf { key: leaf, value: held }) = node.entries.get_mut(index)
            && leaf.as_slice() == key
        {
            let previous = std::mem::replace(held, value);
            if previous != value {
                node.dirty();
            }
            return Ok(Some(previous));
        }
        node.dirty();
        let leaf = Entry::Leaf { key: key.to_vec(), value };
        match node.tree_before(index) {
            Some(left) => {
                let mut child = take_child(node, left);
                load(&mut child, blocks)?;
                let Child::Loaded(child) = child else { unreachable!("loaded just above") };
                if layer == 0 {
                    return Err(MstError::TooDeep);
                }
                let (lower, upper) = split(*child, layer - 1, key, blocks)?;
                let mut replacement = Vec::with_capacity(3);
                replacement.extend(lower.map(|node| Entry::Tree(Child::Loaded(Box::new(node)))));
                replacement.push(leaf);
                replacement.extend(upper.map(|node| Entry::Tree(Child::Loaded(Box::new(node)))));
                node.entries.splice(left..=left, replacement);
            }
            None => node.entries.insert(index, leaf),
        }
        return Ok(None);
    }
    // key_layer < layer: the key belongs to the subtree of its gap.
    match node.tree_before(index) {
        Some(left) => {
            let previous = insert(tree_at(node, left, blocks)?, layer - 1, key, value, key_layer, blocks)?;
            if previous != Some(value) {
                node.dirty();
            }
            Ok(previous)
        }
        None => {
            node.dirty();
            let subtree = single(key, value, key_layer, layer - 1);
            node.entries.insert(index, Entry::Tree(Child::Loaded(Box::new(subtree))));
            Ok(None)
        }
    }
}

fn remove(
    node: &mut Node,
    layer: u32,
    key: &[u8],
    key_layer: u32,
    blocks: &dyn BlockSource,
) -> Result<Option<Cid>, MstError> {
    if key_layer > layer {
        return Ok(None);
    }
    let index = node.first_leaf_at_or_after(key);
    if key_layer == layer {
        let found = matches!(node.entries.get(index), Some(Entry::Leaf { key: leaf, .. }) if leaf.as_slice() == key);
        if !found {
            return Ok(None);
        }
        let Entry::Leaf { value, .. } = node.entries.remove(index) else { unreachable!("matched just above") };
        node.dirty();
        let neighbours_are_trees = index > 0
            && matches!(node.entries.get(index - 1), Some(Entry::Tree(_)))
            && matches!(node.entries.get(index), Some(Entry::Tree(_)));
        if neighbours_are_trees {
            if layer == 0 {
                return Err(MstError::TooDeep);
            }
            let mut upper = take_child(node, index);
            node.entries.remove(index);
            let mut lower = take_child(node, index - 1);
            load(&mut lower, blocks)?;
            load(&mut upper, blocks)?;
            let (Child::Loaded(lower), Child::Loaded(upper)) = (lower, upper) else {
                unreachable!("loaded just above")
            };
            let joined = merge(*lower, *upper, layer - 1, blocks)?;
            node.entries[index - 1] = Entry::Tree(Child::Loaded(Box::new(joined)));
        }
        return Ok(Some(value));
    }
    let Some(left) = node.tree_before(index) else {
        return Ok(None);
    };
    let child = tree_at(node, left, blocks)?;
    let removed = remove(child, layer - 1, key, key_layer, blocks)?;
    let child_is_empty = child.entries.is_empty();
    if removed.is_some() {
        if child_is_empty {
            node.entries.remove(left);
        }
        node.dirty();
    }
    Ok(removed)
}

/// An MST, loaded lazily from a [`BlockSource`] as operations need its nodes.
#[derive(Debug, Clone)]
pub struct Tree {
    root: Child,
    /// The root's layer once known (`None`: not yet computed, or an empty tree).
    layer: Option<u32>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Tree { root: Child::Loaded(Box::default()), layer: None }
    }

    /// The tree whose root node has this CID; nodes are read from the source when needed.
    pub fn load(root: Cid) -> Self {
        Tree { root: Child::Stub(root), layer: None }
    }

    /// The root's layer, or `None` for an empty tree.
    fn root_layer(&mut self, blocks: &dyn BlockSource) -> Result<Option<u32>, MstError> {
        if self.layer.is_some() {
            return Ok(self.layer);
        }
        // The layer of the first leaf found, plus the number of intermediate nodes above it.
        let mut node = load(&mut self.root, blocks)?;
        let mut above = 0;
        loop {
            if let Some(Entry::Leaf { key, .. }) = node.entries.iter().find(|entry| matches!(entry, Entry::Leaf { .. }))
            {
                let layer = key_layer(key) + above;
                self.layer = Some(layer);
                return Ok(self.layer);
            }
            let Some(Entry::Tree(child)) = node.entries.first_mut() else {
                return Ok(None);
            };
            above += 1;
            if above > MAX_DEPTH {
                return Err(MstError::TooDeep);
            }
            node = load(child, blocks)?;
        }
    }

    /// The value under `key`.
    pub fn get(&mut self, key: &str, blocks: &dyn BlockSource) -> Result<Option<Cid>, MstError> {
        let root = load(&mut self.root, blocks)?;
        get(root, key.as_bytes(), blocks, 0)
    }

    /// Creates or replaces `key`; returns the previous value.
    pub fn insert(&mut self, key: &str, value: Cid, blocks: &dyn BlockSource) -> Result<Option<Cid>, MstError> {
        let key = key.as_bytes();
        let wanted = key_layer(key);
        let Some(layer) = self.root_layer(blocks)? else {
            self.root = Child::Loaded(Box::new(single(key, value, wanted, wanted)));
            self.layer = Some(wanted);
            return Ok(None);
        };
        if wanted > layer {
            // The key becomes the new root's only leaf: the old tree splits around it.
            let Child::Loaded(root) = std::mem::replace(&mut self.root, Child::Stub(Cid::default())) else {
                unreachable!("root_layer loaded the root");
            };
            let (lower, upper) = split(*root, layer, key, blocks)?;
            let mut entries = Vec::with_capacity(3);
            entries.extend(lower.map(|node| Entry::Tree(Child::Loaded(Box::new(lift(node, layer, wanted - 1))))));
            entries.push(Entry::Leaf { key: key.to_vec(), value });
            entries.extend(upper.map(|node| Entry::Tree(Child::Loaded(Box::new(lift(node, layer, wanted - 1))))));
            self.root = Child::Loaded(Box::new(Node { entries, cid: None, bytes: None }));
            self.layer = Some(wanted);
            return Ok(None);
        }
        let root = load(&mut self.root, blocks)?;
        insert(root, layer, key, value, wanted, blocks)
    }

    /// Removes `key`; returns its value, or `None` when it was absent (nothing changes then).
    pub fn remove(&mut self, key: &str, blocks: &dyn BlockSource) -> Result<Option<Cid>, MstError> {
        let key = key.as_bytes();
        let Some(layer) = self.root_layer(blocks)? else {
            return Ok(None);
        };
        let root = load(&mut self.root, blocks)?;
        let removed = remove(root, layer, key, key_layer(key), blocks)?;
        if removed.is_some() {
            self.trim(blocks)?;
        }
        Ok(removed)
    }

    /// Drops root nodes left with no key of their own and a single subtree.
    fn trim(&mut self, blocks: &dyn BlockSource) -> Result<(), MstError> {
        loop {
            let root = load(&mut self.root, blocks)?;
            if root.entries.is_empty() {
                self.layer = None;
                return Ok(());
            }
            if root.entries.len() > 1 || root.has_leaf() {
                return Ok(());
            }
            let Some(Entry::Tree(child)) = root.entries.pop() else { unreachable!("one entry, not a leaf") };
            self.root = child;
            self.layer = self.layer.and_then(|layer| layer.checked_sub(1));
        }
    }

    /// The root CID, encoding every changed node (each reported to `fresh`: CID and bytes).
    pub fn root_cid_with(&mut self, fresh: &mut dyn FnMut(Cid, &[u8])) -> Cid {
        match &mut self.root {
            Child::Stub(cid) => *cid,
            Child::Loaded(node) => node.encode(fresh),
        }
    }

    pub fn root_cid(&mut self) -> Cid {
        self.root_cid_with(&mut |_, _| {})
    }

    /// The nodes proving `key`'s presence or absence and its neighbours (atproto
    /// `getCoveringProof`): the walk to the key and the walks down its left and right sibling
    /// subtrees, each node with its bytes. Call after [`Tree::root_cid`], so every node is
    /// encoded; nodes this tree did not encode are read from `blocks`.
    pub fn covering_proof(&mut self, key: &str, blocks: &dyn BlockSource) -> Result<Vec<(Cid, Vec<u8>)>, MstError> {
        self.root_cid();
        let key = key.as_bytes();
        let mut proof = Vec::new();
        let root = load(&mut self.root, blocks)?;
        proof_for_key(root, key, blocks, &mut proof)?;
        proof_for_left_sibling(root, key, blocks, &mut proof)?;
        proof_for_right_sibling(root, key, blocks, &mut proof)?;
        Ok(proof)
    }
    /// Every key starting with `prefix` and its value, in key order, reading only the nodes
    /// whose range can hold such keys (e.g. `io.atcr.` in a whole repository's CAR).
    pub fn list_prefix(&mut self, prefix: &str, blocks: &dyn BlockSource) -> Result<Vec<(String, Cid)>, MstError> {
        let prefix = prefix.as_bytes();
        let mut out = Vec::new();
        let root = load(&mut self.root, blocks)?;
        list_prefix(root, prefix, None, None, blocks, &mut out, 0)?;
        Ok(out)
    }

    /// Every node whose key range, bounds included, holds one of `keys`: the nodes changes to
    /// those keys may have rewritten (a producer ships them, changed or not, as the generator
    /// always has). A node's range is bounded by the keys next to it in its parents. Call after
    /// [`Tree::root_cid`].
    pub fn nodes_touching(&mut self, keys: &[&str], blocks: &dyn BlockSource) -> Result<Vec<(Cid, Vec<u8>)>, MstError> {
        self.root_cid();
        let mut keys: Vec<&[u8]> = keys.iter().map(|key| key.as_bytes()).collect();
        keys.sort_unstable();
        let mut out = Vec::new();
        let root = load(&mut self.root, blocks)?;
        nodes_touching(root, None, None, &keys, blocks, &mut out)?;
        Ok(out)
    }
}

/// Whether keys strictly between `lo` and `hi` (open ends: `None`) can start with `prefix`.
fn range_may_hold_prefix(prefix: &[u8], lo: Option<&[u8]>, hi: Option<&[u8]>) -> bool {
    // Keys with the prefix lie in [prefix, prefix + 0xff…): the range must end after the prefix
    // starts and start before the prefixed keys end.
    let ends_after_start = hi.is_none_or(|hi| hi > prefix);
    let starts_before_end = lo.is_none_or(|lo| lo < prefix || lo.starts_with(prefix));
    ends_after_start && starts_before_end
}

fn list_prefix(
    node: &mut Node,
    prefix: &[u8],
    lo: Option<&[u8]>,
    hi: Option<&[u8]>,
    blocks: &dyn BlockSource,
    out: &mut Vec<(String, Cid)>,
    depth: u32,
) -> Result<(), MstError> {
    if depth > MAX_DEPTH {
        return Err(MstError::TooDeep);
    }
    for index in 0..node.entries.len() {
        let leaf_key = |entry: &Entry| match entry {
            Entry::Leaf { key, .. } => Some(key.clone()),
            Entry::Tree(_) => None,
        };
        match &node.entries[index] {
            Entry::Leaf { key, value } => {
                if key.starts_with(prefix) {
                    out.push((String::from_utf8_lossy(key).into_owned(), *value));
                }
            }
            Entry::Tree(_) => {
                let below = index.checked_sub(1).and_then(|left| leaf_key(&node.entries[left]));
                let above = node.entries.get(index + 1).and_then(leaf_key);
                let below = below.as_deref().or(lo);
                let above = above.as_deref().or(hi);
                if range_may_hold_prefix(prefix, below, above) {
                    let (below, above) = (below.map(<[u8]>::to_vec), above.map(<[u8]>::to_vec));
                    let child = tree_at(node, index, blocks)?;
                    list_prefix(child, prefix, below.as_deref(), above.as_deref(), blocks, out, depth + 1)?;
                }
            }
        }
    }
    Ok(())
}

/// The bounds of a node's key range (`None`: open).
type KeyRange = (Option<Vec<u8>>, Option<Vec<u8>>);

fn nodes_touching(
    node: &mut Node,
    lo: Option<&[u8]>,
    hi: Option<&[u8]>,
    keys: &[&[u8]],
    blocks: &dyn BlockSource,
    out: &mut Vec<(Cid, Vec<u8>)>,
) -> Result<(), MstError> {
    let inside = |key: &&[u8]| lo.is_none_or(|lo| *key >= lo) && hi.is_none_or(|hi| *key <= hi);
    if !keys.iter().any(inside) {
        return Ok(());
    }
    out.push(node_block(node, blocks)?);
    let bounds: Vec<KeyRange> = (0..node.entries.len())
        .map(|index| {
            let leaf_key = |entry: &Entry| match entry {
                Entry::Leaf { key, .. } => Some(key.clone()),
                Entry::Tree(_) => None,
            };
            let below = index.checked_sub(1).and_then(|left| leaf_key(&node.entries[left])).or(lo.map(<[u8]>::to_vec));
            let above = node.entries.get(index + 1).and_then(leaf_key).or(hi.map(<[u8]>::to_vec));
            (below, above)
        })
        .collect();
    for (index, (below, above)) in bounds.into_iter().enumerate() {
        if matches!(node.entries[index], Entry::Tree(_)) {
            let child = tree_at(node, index, blocks)?;
            nodes_touching(child, below.as_deref(), above.as_deref(), keys, blocks, out)?;
        }
    }
    Ok(())
}

fn node_block(node: &Node, blocks: &dyn BlockSource) -> Result<(Cid, Vec<u8>), MstError> {
    // Every node has a CID once the root was encoded.
    let cid = node.cid.unwrap_or_default();
    let bytes = match &node.bytes {
        Some(bytes) => bytes.clone(),
        None => blocks.block(&cid).ok_or(MstError::MissingBlock(cid))?.to_vec(),
    };
    Ok((cid, bytes))
}

fn proof_for_key(
    node: &mut Node,
    key: &[u8],
    blocks: &dyn BlockSource,
    proof: &mut Vec<(Cid, Vec<u8>)>,
) -> Result<(), MstError> {
    let index = node.first_leaf_at_or_after(key);
    let found_here = matches!(node.entries.get(index), Some(Entry::Leaf { key: leaf, .. }) if leaf.as_slice() == key);
    if !found_here && let Some(left) = node.tree_before(index) {
        proof_for_key(tree_at(node, left, blocks)?, key, blocks, proof)?;
    }
    proof.push(node_block(node, blocks)?);
    Ok(())
}

fn proof_for_left_sibling(
    node: &mut Node,
    key: &[u8],
    blocks: &dyn BlockSource,
    proof: &mut Vec<(Cid, Vec<u8>)>,
) -> Result<(), MstError> {
    let index = node.first_leaf_at_or_after(key);
    if let Some(left) = node.tree_before(index) {
        proof_for_left_sibling(tree_at(node, left, blocks)?, key, blocks, proof)?;
    }
    proof.push(node_block(node, blocks)?);
    Ok(())
}

fn proof_for_right_sibling(
    node: &mut Node,
    key: &[u8],
    blocks: &dyn BlockSource,
    proof: &mut Vec<(Cid, Vec<u8>)>,
) -> Result<(), MstError> {
    let index = node.first_leaf_at_or_after(key);
    let next = match node.entries.get(index) {
        None => None,
        Some(Entry::Tree(_)) => Some(index),
        Some(Entry::Leaf { .. }) => matches!(node.entries.get(index + 1), Some(Entry::Tree(_))).then_some(index + 1),
    };
    if let Some(next) = next {
        proof_for_right_sibling(tree_at(node, next, blocks)?, key, blocks, proof)?;
    }
    proof.push(node_block(node, blocks)?);
    Ok(())
}

/// One op of a commit, for inversion: the value the signed tree must hold under `key` now
/// (`None`: deleted) and the value before the commit (`None`: created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvertOp<'a> {
    pub key: &'a str,
    pub now: Option<Cid>,
    pub before: Option<Cid>,
}

fn describe(value: Option<Cid>) -> String {
    match value {
        Some(cid) => cid.to_string(),
        None => "absent".into(),
    }
}

/// Sync 1.1 MST inversion: checks that the tree `data` (read from `blocks`) holds what each
/// op says, undoes every op, and requires the resulting root to be `prev_data`.
pub fn invert(blocks: &dyn BlockSource, data: Cid, ops: &[InvertOp], prev_data: Cid) -> Result<(), MstError> {
    let mut tree = Tree::load(data);
    for (index, op) in ops.iter().enumerate() {
        if ops[..index].iter().any(|earlier| earlier.key == op.key) {
            return Err(MstError::DuplicateKey(op.key.to_string()));
        }
        let held = tree.get(op.key, blocks)?;
        if held != op.now {
            return Err(MstError::OpMismatch {
                key: op.key.to_string(),
                expected: describe(op.now),
                found: describe(held),
            });
        }
    }
    for op in ops.iter().rev() {
        match op.before {
            Some(before) => {
                tree.insert(op.key, before, blocks)?;
            }
            None => {
                tree.remove(op.key, blocks)?;
            }
        }
    }
    let computed = tree.root_cid();
    if computed != prev_data {
        return Err(MstError::RootMismatch { computed: computed.to_string(), expected: prev_data.to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn value(index: u32) -> Cid {
        node_cid(&index.to_le_bytes())
    }

    /// A tree built from scratch in sorted order: the reference root for a key set.
    fn fresh_root(live: &BTreeMap<String, Cid>) -> Cid {
        let mut tree = Tree::new();
        for (key, cid) in live {
            tree.insert(key, *cid, &NoBlocks).unwrap();
        }
        tree.root_cid()
    }

    #[test]
    fn roots_do_not_depend_on_history() {
        let mut state = 0x2545f4914f6cdd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut tree = Tree::new();
        let empty = tree.root_cid();
        let mut live = BTreeMap::new();
        for step in 0..3000u32 {
            let key = format!("io.atcr.tag/k{}", next() % 300);
            if next() % 10 < 3 {
                assert_eq!(tree.remove(&key, &NoBlocks).unwrap(), live.remove(&key));
            } else {
                assert_eq!(tree.insert(&key, value(step), &NoBlocks).unwrap(), live.insert(key, value(step)));
            }
            if step % 101 == 0 {
                assert_eq!(tree.root_cid(), fresh_root(&live), "step {step}");
            }
        }
        for key in live.keys() {
            tree.remove(key, &NoBlocks).unwrap();
        }
        assert_eq!(tree.root_cid(), empty);
    }

    #[test]
    fn inversion_on_a_partial_tree_and_a_missing_block() {
        let mut tree = Tree::new();
        let mut blocks: HashMap<Cid, Vec<u8>> = HashMap::new();
        for index in 0..500u32 {
            tree.insert(&format!("app.bsky.feed.post/{index:06}"), value(index), &NoBlocks).unwrap();
        }
        let before = tree.root_cid_with(&mut |cid, bytes| {
            blocks.insert(cid, bytes.to_vec());
        });
        let key = "app.bsky.feed.post/000250x";
        tree.insert(key, value(9999), &NoBlocks).unwrap();
        tree.remove("app.bsky.feed.post/000100", &NoBlocks).unwrap();
        let mut all = blocks.clone();
        let after = tree.root_cid_with(&mut |cid, bytes| {
            all.insert(cid, bytes.to_vec());
        });
        // Only what a PDS ships: the covering proofs of the op keys in the new tree.
        let mut shipped = HashMap::new();
        for op_key in [key, "app.bsky.feed.post/000100"] {
            shipped.extend(tree.covering_proof(op_key, &all).unwrap());
        }
        assert!(shipped.len() < all.len() / 4, "a proof is a small part of the tree");
        let ops = [
            InvertOp { key, now: Some(value(9999)), before: None },
            InvertOp { key: "app.bsky.feed.post/000100", now: None, before: Some(value(100)) },
        ];
        assert_eq!(invert(&shipped, after, &ops, before), Ok(()));

        let wrong_value = [InvertOp { key, now: Some(value(1)), before: None }, ops[1]];
        assert!(matches!(invert(&shipped, after, &wrong_value, before), Err(MstError::OpMismatch { .. })));
        let one_missing = [ops[0]];
        assert!(matches!(invert(&shipped, after, &one_missing, before), Err(MstError::RootMismatch { .. })));
        let mut partial = shipped.clone();
        partial.remove(&after);
        assert_eq!(invert(&partial, after, &ops, before), Err(MstError::MissingBlock(after)));
    }

    /// Random trees and random commits (creates, updates, deletes; keys of every layer, so
    /// roots grow and shrink): inverting from only the new nodes and the covering proofs of the
    /// op keys, as a PDS ships them, always gives the previous root.
    #[test]
    fn random_commits_invert_from_their_proofs() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..200u32 {
            let mut tree = Tree::new();
            let mut live: BTreeMap<String, Cid> = BTreeMap::new();
            let size = next() % 300;
            for index in 0..size {
                let key = format!("io.atcr.tag/k{}", next() % 1000);
                tree.insert(&key, value(index as u32), &NoBlocks).unwrap();
                live.insert(key, value(index as u32));
            }
            let before = tree.root_cid();
            let mut ops: Vec<(String, Option<Cid>, Option<Cid>)> = Vec::new();
            for op_index in 0..(1 + next() % 6) {
                let key = format!("io.atcr.tag/k{}", next() % 1000);
                if ops.iter().any(|(done, _, _)| *done == key) {
                    continue;
                }
                let previous = live.get(&key).copied();
                let now = if previous.is_some() && next() % 2 == 0 {
                    None
                } else {
                    Some(value(10_000 + op_index as u32 + round))
                };
                match now {
                    Some(cid) => {
                        tree.insert(&key, cid, &NoBlocks).unwrap();
                        live.insert(key.clone(), cid);
                    }
                    None => {
                        tree.remove(&key, &NoBlocks).unwrap();
                        live.remove(&key);
                    }
                }
                ops.push((key, now, previous));
            }
            let mut shipped: HashMap<Cid, Vec<u8>> = HashMap::new();
            let after = tree.root_cid_with(&mut |cid, bytes| {
                shipped.insert(cid, bytes.to_vec());
            });
            for (key, _, _) in &ops {
                shipped.extend(tree.covering_proof(key, &NoBlocks).unwrap());
            }
            let invert_ops: Vec<InvertOp> =
                ops.iter().map(|(key, now, before)| InvertOp { key, now: *now, before: *before }).collect();
            assert_eq!(invert(&shipped, after, &invert_ops, before), Ok(()), "round {round}: {ops:?}");
        }
    }

    #[test]
    fn lists_a_prefix_reading_only_the_nodes_that_can_hold_it() {
        let mut tree = Tree::new();
        let mut live = BTreeMap::new();
        for index in 0..2000u32 {
            let collection = ["app.bsky.feed.like", "io.atcr.manifest", "io.atcr.tag", "io.atcrx.other", "zz.last"]
                [index as usize % 5];
            let key = format!("{collection}/{:08x}", index.wrapping_mul(2_654_435_761));
            tree.insert(&key, value(index), &NoBlocks).unwrap();
            live.insert(key, value(index));
        }
        let mut blocks: HashMap<Cid, Vec<u8>> = HashMap::new();
        let root = tree.root_cid_with(&mut |cid, bytes| {
            blocks.insert(cid, bytes.to_vec());
        });
        for prefix in ["io.atcr.", "io.atcr.tag/", "app.", "zz.", "nothing/", ""] {
            let expected: Vec<(String, Cid)> =
                live.iter().filter(|(key, _)| key.starts_with(prefix)).map(|(key, cid)| (key.clone(), *cid)).collect();
            let mut reader = Tree::load(root);
            assert_eq!(reader.list_prefix(prefix, &blocks).unwrap(), expected, "{prefix:?}");
        }
        // Only the nodes on the way to io.atcr.* keys are read.
        struct Counting<'a>(&'a HashMap<Cid, Vec<u8>>, std::cell::Cell<usize>);
        impl BlockSource for Counting<'_> {
            fn block(&self, cid: &Cid) -> Option<&[u8]> {
                self.1.set(self.1.get() + 1);
                self.0.block(cid)
            }
        }
        let counting = Counting(&blocks, std::cell::Cell::new(0));
        Tree::load(root).list_prefix("io.atcr.tag/", &counting).unwrap();
        assert!(counting.1.get() < blocks.len() / 2, "read {} of {} nodes", counting.1.get(), blocks.len());
    }

    /// Hostile trees (their blocks match their CIDs, their content is wrong) give errors, never
    /// a panic or a wrong success.
    #[test]
    fn malformed_trees_are_errors() {
        let mut blocks: HashMap<Cid, Vec<u8>> = HashMap::new();
        let mut put = |left: Option<Cid>, entries: &[EntryData]| {
            let bytes = encode_node(left.as_ref(), entries);
            let cid = node_cid(&bytes);
            blocks.insert(cid, bytes);
            cid
        };
        let entry = |p: usize, k: &'static [u8], t: Option<Cid>| EntryData { p, k, v: value(1), t };
        // A prefix longer than the previous key; keys out of order.
        let long_prefix = put(None, &[entry(0, b"a/1", None), entry(9, b"x", None)]);
        let unordered = put(None, &[entry(0, b"b/1", None), entry(0, b"a/1", None)]);
        // A chain of empty intermediate nodes deeper than any real tree.
        let mut deep = put(None, &[entry(0, b"a/1", None)]);
        for _ in 0..200 {
            deep = put(Some(deep), &[]);
        }
        // Subtrees below layer 0 (a leaf at layer 0 with a child).
        let leaf_layer_zero = put(None, &[entry(0, b"a/1", None)]);
        let below_zero = put(None, &[entry(0, b"a/4", Some(leaf_layer_zero))]);
        // Not a node at all.
        let garbage = {
            let bytes = serde_ipld_dagcbor::to_vec(&"not a node").unwrap();
            let cid = node_cid(&bytes);
            blocks.insert(cid, bytes);
            cid
        };
        assert_eq!(key_layer(b"a/4"), 0);
        assert_eq!(key_layer(b"a/5"), 0);
        let lookup = [InvertOp { key: "a/0", now: Some(value(1)), before: None }];
        let malformed = |outcome: Result<(), MstError>| matches!(outcome, Err(MstError::Malformed { .. }));
        assert!(malformed(invert(&blocks, long_prefix, &lookup, long_prefix)));
        assert!(malformed(invert(&blocks, unordered, &lookup, unordered)));
        assert!(malformed(invert(&blocks, garbage, &lookup, garbage)));
        assert_eq!(invert(&blocks, deep, &lookup, deep), Err(MstError::TooDeep));
        // Undoing a delete of a/5 inserts it at layer 0, beside the impossible subtree.
        let undelete = [InvertOp { key: "a/5", now: None, before: Some(value(1)) }];
        assert_eq!(invert(&blocks, below_zero, &undelete, below_zero), Err(MstError::TooDeep));
    }

    #[test]
    fn the_written_node_encoding_is_what_serde_ipld_dagcbor_gives() {
        let long_key = vec![b'k'; 300];
        let entries = [
            EntryData { p: 0, k: b"app.bsky.feed.post/3k", v: value(1), t: Some(value(2)) },
            EntryData { p: 19, k: &long_key, v: value(3), t: None },
            EntryData { p: 70_000, k: b"", v: value(4), t: Some(value(5)) },
        ];
        for (left, count) in [(None, 0), (Some(value(9)), 1), (None, 3), (Some(value(8)), 3)] {
            let data = NodeData { l: left, e: entries[..count].to_vec() };
            assert_eq!(encode_node(left.as_ref(), &data.e), serde_ipld_dagcbor::to_vec(&data).unwrap());
        }
    }

    #[test]
    fn key_layers_match_the_reference() {
        assert_eq!(key_layer(b""), 0);
        assert_eq!(key_layer(b"asdf"), 0);
        assert_eq!(key_layer(b"blue"), 1);
        assert_eq!(key_layer(b"2653ae71"), 0);
        assert_eq!(key_layer(b"88bfafc7"), 2);
        assert_eq!(key_layer(b"2a92d355"), 4);
        assert_eq!(key_layer(b"884976f5"), 6);
        assert_eq!(key_layer(b"app.bsky.feed.post/454397e440ec"), 4);
        assert_eq!(key_layer(b"app.bsky.feed.post/9adeb165882c"), 8);
    }
}
