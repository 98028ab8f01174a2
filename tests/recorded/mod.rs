//! The recorded demo world (`fixtures/demo/`) as log input: the firehose recorded from Bluesky's
//! reference PDS, processed by ingest's own frame processor, and the DID documents its PLC
//! served, as the events enrichment would append. Tests that need real frames and real
//! signatures without a running PDS start here.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use atcr_ingest::corpus::split_frames;
use atcr_ingest::process::{FrameCounts, FrameProcessor};
use atcr_storage::{AppendBatch, Event, EventBody};

pub fn demo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo").join(name)
}

/// DID → (handle, document JSON).
pub fn demo_documents() -> BTreeMap<String, (String, String)> {
    let text = std::fs::read_to_string(demo_file("dids.json")).expect("fixtures/demo/dids.json");
    let documents: BTreeMap<String, serde_json::Value> = serde_json::from_str(&text).expect("dids.json is JSON");
    documents
        .into_iter()
        .map(|(did, document)| {
            let handle =
                document["alsoKnownAs"][0].as_str().unwrap_or_default().trim_start_matches("at://").to_string();
            (did, (handle, document.to_string()))
        })
        .collect()
}

/// The `IdentityResolved` event enrichment appends for a DID document.
pub fn identity_resolved(did: &str, document_json: &str) -> Event {
    Event::enrichment(did, 0, EventBody::IdentityResolved { document_json: document_json.to_string() })
}

/// The recorded frames, processed by ingest's `FrameProcessor` into one batch (nothing
/// quarantined).
pub fn demo_firehose_batch() -> AppendBatch {
    let recording = std::fs::read(demo_file("firehose.bin")).expect("fixtures/demo/firehose.bin");
    let mut processor = FrameProcessor::new("demo-recording".to_string(), None, Vec::new());
    let mut batch = AppendBatch::default();
    let mut counts = FrameCounts::default();
    for frame in split_frames(&recording).expect("recorded frames") {
        processor.process(frame, 0, &mut batch, &mut counts);
    }
    assert_eq!(counts.quarantined, 0, "the recording decodes");
    batch
}
