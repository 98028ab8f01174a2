//! The atproto interop vectors (`shared/atproto-interop-tests/`) that concern storage: every
//! `syntax/*.txt` list (valid and invalid: DID, handle, NSID, record key, TID, AT-URI, CID,
//! datetime syntax and parse, at-identifier, language syntax and parse, generic URI) against
//! `atcr_storage::syntax`; the data-model fixtures (JSON → DAG-CBOR bytes and CID, DAG-CBOR →
//! JSON) and valid/invalid lists against `data_model` and `json`; the MST vectors (key heights,
//! common prefixes, the example keys) against `mst`. The crypto vectors run in
//! `interop_crypto.rs`, the Sync 1.1 commit proofs in `atcr-ingest`'s `interop_sync.rs`.
//!
//! Not run: `lexicon/` (lexicon schemas and records validated against them: atcr has no lexicon
//! validator; its `io.atcr.*` records are read by tolerant typed decoders).
//!
//! Each prints `interop <file>: <passed>/<ran>`; skipped, with one SKIP line, when `../shared`
//! is not next to the workspace.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ipld_core::cid::Cid;
use ipld_core::cid::multihash::Multihash;
use serde_json::Value;
use sha2::{Digest, Sha256};

use atcr_storage::data_model::json_object_to_ipld;
use atcr_storage::json::dag_cbor_to_json;
use atcr_storage::mst::{NoBlocks, Tree, common_prefix_len, key_layer};
use atcr_storage::syntax;

const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn vectors(relative: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/atproto-interop-tests").join(relative);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(_) => {
            println!("SKIP: {relative}: interop vectors not found at {} (needs ../shared)", path.display());
            None
        }
    }
}

/// The lines of a vector list: comments (`#`) and empty lines skipped, nothing trimmed (leading
/// and trailing spaces are part of the invalid vectors).
fn lines(text: &str) -> Vec<&str> {
    text.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

struct Tally {
    file: String,
    ran: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(file: &str) -> Self {
        Tally { file: file.to_string(), ran: 0, failures: Vec::new() }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.ran += 1;
        if !ok {
            self.failures.push(what());
        }
    }

    fn finish(self) {
        println!("interop {}: {}/{}", self.file, self.ran - self.failures.len(), self.ran);
        assert!(self.ran > 0, "{}: no vector ran", self.file);
        assert!(self.failures.is_empty(), "{}: failed vectors:\n{}", self.file, self.failures.join("\n"));
    }
}

fn syntax_file(name: &str, expect_valid: bool, check: fn(&str) -> bool) {
    let file = format!("syntax/{name}");
    let Some(text) = vectors(&file) else { return };
    let mut tally = Tally::new(&file);
    for line in lines(&text) {
        tally.check(check(line) == expect_valid, || format!("{line:?}: expected valid={expect_valid}"));
    }
    tally.finish();
}

#[test]
fn syntax_did() {
    syntax_file("did_syntax_valid.txt", true, syntax::is_valid_did);
    syntax_file("did_syntax_invalid.txt", false, syntax::is_valid_did);
}

#[test]
fn syntax_handle() {
    syntax_file("handle_syntax_valid.txt", true, syntax::is_valid_handle);
    syntax_file("handle_syntax_invalid.txt", false, syntax::is_valid_handle);
}

#[test]
fn syntax_nsid() {
    syntax_file("nsid_syntax_valid.txt", true, syntax::is_valid_nsid);
    syntax_file("nsid_syntax_invalid.txt", false, syntax::is_valid_nsid);
}

#[test]
fn syntax_record_key() {
    syntax_file("recordkey_syntax_valid.txt", true, syntax::is_valid_record_key);
    syntax_file("recordkey_syntax_invalid.txt", false, syntax::is_valid_record_key);
}

#[test]
fn syntax_tid() {
    syntax_file("tid_syntax_valid.txt", true, syntax::is_valid_tid);
    syntax_file("tid_syntax_invalid.txt", false, syntax::is_valid_tid);
}

#[test]
fn syntax_at_uri() {
    syntax_file("aturi_syntax_valid.txt", true, syntax::is_valid_at_uri);
    syntax_file("aturi_syntax_invalid.txt", false, syntax::is_valid_at_uri);
}

#[test]
fn syntax_at_identifier() {
    syntax_file("atidentifier_syntax_valid.txt", true, syntax::is_valid_at_identifier);
    syntax_file("atidentifier_syntax_invalid.txt", false, syntax::is_valid_at_identifier);
}

#[test]
fn syntax_cid() {
    syntax_file("cid_syntax_valid.txt", true, syntax::is_valid_cid_syntax);
    syntax_file("cid_syntax_invalid.txt", false, syntax::is_valid_cid_syntax);
}

#[test]
fn syntax_datetime() {
    syntax_file("datetime_syntax_valid.txt", true, syntax::is_valid_datetime);
    syntax_file("datetime_syntax_invalid.txt", false, syntax::is_valid_datetime);
    // Well-formed but not a real instant: refused too (atcr has one datetime check).
    syntax_file("datetime_parse_invalid.txt", false, syntax::is_valid_datetime);
}

#[test]
fn syntax_language() {
    syntax_file("language_syntax_valid.txt", true, syntax::is_valid_language);
    syntax_file("language_syntax_invalid.txt", false, syntax::is_valid_language);
    syntax_file("language_parse_invalid.txt", false, syntax::is_valid_language);
}

#[test]
fn syntax_uri() {
    syntax_file("uri_syntax_valid.txt", true, syntax::is_valid_uri);
    syntax_file("uri_syntax_invalid.txt", false, syntax::is_valid_uri);
}

fn dag_cbor_cid(bytes: &[u8]) -> Cid {
    Cid::new_v1(0x71, Multihash::<64>::wrap(0x12, &Sha256::digest(bytes)).unwrap())
}

#[test]
fn data_model_fixtures() {
    let file = "data-model/data-model-fixtures.json";
    let Some(text) = vectors(file) else { return };
    let fixtures: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut tally = Tally::new(file);
    for fixture in &fixtures {
        let json = &fixture["json"];
        let expected_cbor = BASE64.decode(fixture["cbor_base64"].as_str().unwrap()).unwrap();
        let expected_cid = fixture["cid"].as_str().unwrap();
        // JSON → data model → DAG-CBOR: the exact bytes and CID.
        let encoded = json_object_to_ipld(json).map(|ipld| serde_ipld_dagcbor::to_vec(&ipld).unwrap());
        tally.check(encoded.as_ref() == Ok(&expected_cbor), || format!("{expected_cid}: json -> cbor differs"));
        tally
            .check(dag_cbor_cid(&expected_cbor).to_string() == expected_cid, || format!("{expected_cid}: cid differs"));
        // DAG-CBOR → JSON: the same JSON.
        let decoded = dag_cbor_to_json(&expected_cbor);
        tally.check(decoded.as_ref() == Ok(json), || format!("{expected_cid}: cbor -> json gives {decoded:?}"));
    }
    tally.finish();
}

#[test]
fn data_model_valid_and_invalid() {
    for (file, expect_valid) in
        [("data-model/data-model-valid.json", true), ("data-model/data-model-invalid.json", false)]
    {
        let Some(text) = vectors(file) else { return };
        let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
        let mut tally = Tally::new(file);
        for case in &cases {
            let outcome = json_object_to_ipld(&case["json"]);
            tally.check(outcome.is_ok() == expect_valid, || format!("{}: got {outcome:?}", case["note"]));
        }
        tally.finish();
    }
}

#[test]
fn mst_key_heights_and_common_prefixes() {
    if let Some(text) = vectors("mst/key_heights.json") {
        let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
        let mut tally = Tally::new("mst/key_heights.json");
        for case in &cases {
            let key = case["key"].as_str().unwrap();
            let height = case["height"].as_u64().unwrap();
            tally.check(u64::from(key_layer(key.as_bytes())) == height, || format!("{key:?}: expected {height}"));
        }
        tally.finish();
    }
    if let Some(text) = vectors("mst/common_prefix.json") {
        let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
        let mut tally = Tally::new("mst/common_prefix.json");
        for case in &cases {
            let (left, right) = (case["left"].as_str().unwrap(), case["right"].as_str().unwrap());
            let expected = case["len"].as_u64().unwrap();
            let found = common_prefix_len(left.as_bytes(), right.as_bytes()) as u64;
            tally.check(found == expected, || format!("{left:?} {right:?}: expected {expected}, got {found}"));
        }
        tally.finish();
    }
}

/// The example keys: each inserted key reads back, and the root does not depend on the order
/// of insertion (forward, backward, interleaved).
#[test]
fn mst_example_keys() {
    let file = "mst/example_keys.txt";
    let Some(text) = vectors(file) else { return };
    let keys = lines(&text);
    let value = dag_cbor_cid(b"leaf");
    let build = |order: &[&str]| {
        let mut tree = Tree::new();
        for key in order {
            tree.insert(key, value, &NoBlocks).unwrap();
        }
        (tree.root_cid(), tree)
    };
    let (forward, mut tree) = build(&keys);
    let backward: Vec<&str> = keys.iter().rev().copied().collect();
    let interleaved: Vec<&str> = keys.iter().step_by(2).chain(keys.iter().skip(1).step_by(2)).copied().collect();
    let mut tally = Tally::new(file);
    for key in &keys {
        tally.check(tree.get(key, &NoBlocks) == Ok(Some(value)), || format!("{key}: not read back"));
    }
    tally.check(build(&backward).0 == forward, || "backward insertion gives another root".into());
    tally.check(build(&interleaved).0 == forward, || "interleaved insertion gives another root".into());
    tally.finish();
}
