//! Enrichment's image configs and deep layer inspection through a remote hold: the config is
//! fetched from the hold's `getBlob` (the endpoint its DID document names, never a trusted URL),
//! checked and stored; bytes that do not match their digest are refused and quarantined; an
//! artifact's config is left alone; a layer over the limit is skipped without a fetch; an
//! inspected layer's file list is stored in the content store.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use atcr_ingest::enrich::{Enricher, FetchError, Fetcher};
use atcr_storage::content::{ContentStore, sha256_digest};
use atcr_storage::image::{FileKind, LayerFiles};
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, LogWriter, PutAction, Source};

const OWNER: &str = "did:plc:owner";
const HOLD: &str = "did:web:hold.test";
const LIMIT: u64 = 4096;

struct World {
    documents: HashMap<String, String>,
    /// Manifest bytes by blob CID.
    manifests: HashMap<String, Vec<u8>>,
    /// What the hold answers, by digest.
    hold: HashMap<String, Vec<u8>>,
    /// Every hold URL asked for, with its `trusted` flag.
    asked: Arc<Mutex<Vec<(String, bool)>>>,
}

impl Fetcher for World {
    async fn did_document(&self, did: &str) -> Result<String, FetchError> {
        self.documents.get(did).cloned().ok_or(FetchError::NotFound)
    }
    async fn blob(&self, _pds: &str, _did: &str, cid: &str) -> Result<Vec<u8>, FetchError> {
        self.manifests.get(cid).cloned().ok_or(FetchError::NotFound)
    }
    async fn hold_blob(&self, url: &str, trusted: bool, limit: usize) -> Result<Vec<u8>, FetchError> {
        self.asked.lock().unwrap().push((url.to_string(), trusted));
        let digest = url.rsplit_once("cid=").map(|(_, digest)| digest).unwrap_or_default();
        let bytes = self.hold.get(digest).cloned().ok_or(FetchError::NotFound)?;
        if bytes.len() > limit {
            return Err(FetchError::TooLarge(limit));
        }
        Ok(bytes)
    }
}

fn raw_cid(bytes: &[u8]) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(bytes);
    let multihash = ipld_core::cid::multihash::Multihash::<64>::wrap(0x12, &hash).unwrap();
    ipld_core::cid::Cid::new_v1(0x55, multihash).to_string()
}

fn gzip_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *data).unwrap();
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(&builder.into_inner().unwrap()).unwrap();
    encoder.finish().unwrap()
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// A manifest (bytes) and the `io.atcr.manifest` record event publishing it on `HOLD`.
fn manifest_event(
    world: &mut World,
    seq: i64,
    config: serde_json::Value,
    layers: Vec<serde_json::Value>,
) -> (String, Event) {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256_digest(&bytes);
    let cid = raw_cid(&bytes);
    world.manifests.insert(cid.clone(), bytes);
    let record = serde_json::json!({
        "$type": "io.atcr.manifest",
        "repository": "app",
        "digest": digest,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "schemaVersion": 2,
        "manifestBlob": { "cid": cid },
        "config": manifest["config"],
        "layers": manifest["layers"],
        "holdDid": HOLD,
    });
    let event = Event {
        source: Source::Firehose,
        upstream_seq: Some(seq),
        did: OWNER.into(),
        rev: Some(format!("3aaaaaaaaaaa{seq}")),
        upstream_time: None,
        received_at_us: 0,
        commit_cid: None,
        body: EventBody::RecordPut {
            collection: "io.atcr.manifest".into(),
            rkey: digest["sha256:".len()..].to_string(),
            cid: "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm".into(),
            action: PutAction::Create,
            record: serde_ipld_dagcbor::to_vec(&record).unwrap(),
        },
    };
    (digest, event)
}

/// (kind, digest, subject, reason) of every content event.
fn content_events(log: &EventLog) -> Vec<(String, String, String, Option<String>)> {
    log.read_from(0, 1000)
        .unwrap()
        .into_iter()
        .filter_map(|stored| match stored.event.body {
            EventBody::ContentStored { kind, digest, subject, .. } => Some((kind, digest, subject, None)),
            EventBody::ContentRejected { kind, digest, subject, reason } => Some((kind, digest, subject, Some(reason))),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn configs_and_layers_come_through_the_holds_endpoint_checked_and_bounded() {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut world = World {
        documents: HashMap::from([
            (
                OWNER.to_string(),
                serde_json::json!({ "id": OWNER, "service": [{ "id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.test" }] }).to_string(),
            ),
            (
                HOLD.to_string(),
                serde_json::json!({ "id": HOLD, "service": [{ "id": "#atcr_hold", "type": "AtcrHoldService", "serviceEndpoint": "https://hold.test/" }] }).to_string(),
            ),
        ]),
        manifests: HashMap::new(),
        hold: HashMap::new(),
        asked: asked.clone(),
    };
    let config = br#"{"architecture":"amd64","os":"linux","history":[{"created_by":"ADD / "}]}"#.to_vec();
    let small = gzip_tar(&[("etc/motd", b"hi\n"), ("etc/.wh.gone", b"")]);
    let big_digest = sha256_digest(b"a layer too big to fetch");
    let forged_config_digest = sha256_digest(b"the config the manifest names");
    for bytes in [&config, &small] {
        world.hold.insert(sha256_digest(bytes), bytes.clone());
    }
    world.hold.insert(forged_config_digest.clone(), b"{\"os\":\"something else\"}".to_vec());
    let layer = "application/vnd.oci.image.layer.v1.tar+gzip";
    let oci_config = "application/vnd.oci.image.config.v1+json";
    let (image, image_event) = manifest_event(
        &mut world,
        1,
        descriptor(oci_config, &sha256_digest(&config), config.len()),
        vec![descriptor(layer, &sha256_digest(&small), small.len()), descriptor(layer, &big_digest, 1 << 20)],
    );
    let (forged, forged_event) =
        manifest_event(&mut world, 2, descriptor(oci_config, &forged_config_digest, 24), vec![]);
    let (_, artifact_event) = manifest_event(
        &mut world,
        3,
        descriptor("application/vnd.example.sbom.config+json", &sha256_digest(b"sbom config"), 11),
        vec![descriptor("application/spdx+json", &sha256_digest(b"sbom"), 4)],
    );

    let directory = tempfile::tempdir().unwrap();
    let log = Arc::new(EventLog::open(&directory.path().join("log.redb")).unwrap());
    let events = vec![image_event, forged_event, artifact_event];
    log.append(AppendBatch { events, ..AppendBatch::default() }).unwrap();
    let content = Arc::new(ContentStore::open(&directory.path().join("content")).unwrap());
    let (writer, writer_task) = LogWriter::start(log.clone());
    let enricher = Enricher::new(log.clone(), writer, content.clone(), world).with_deep_inspection(Some(LIMIT));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(enricher.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let seen = content_events(&log);
        if seen.len() >= 4 {
            break seen;
        }
        assert!(Instant::now() < deadline, "enrichment never got there: {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Nothing more comes (the artifact's config is not an image config).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(content_events(&log).len(), 4, "{:?}", content_events(&log));
    shutdown.cancel();
    task.await.unwrap().unwrap();
    writer_task.join();

    let find = |kind: &str, subject: &str| {
        seen.iter()
            .find(|(k, _, s, _)| k == kind && s == subject)
            .cloned()
            .unwrap_or_else(|| panic!("{kind} of {subject}: {seen:?}"))
    };
    let (_, config_digest, _, rejected) = find("image.config", &image);
    assert_eq!((config_digest.as_str(), rejected), (sha256_digest(&config).as_str(), None));
    assert_eq!(content.get(&config_digest).unwrap().as_deref(), Some(&config[..]));

    let (_, _, _, reason) = find("image.config", &forged);
    assert!(reason.as_deref().is_some_and(|reason| reason.contains("hash to")), "{reason:?}");
    assert!(!content.contains(&forged_config_digest), "bytes that do not match are never stored");
    let quarantine = log.quarantine(0, 10).unwrap();
    assert_eq!(quarantine.len(), 1, "{quarantine:?}");
    assert!(quarantine[0].1.reason.contains("image.config"));
    assert_eq!(quarantine[0].1.raw, b"{\"os\":\"something else\"}");

    let (_, files_digest, _, rejected) = find("layer.files", &sha256_digest(&small));
    assert_eq!(rejected, None);
    let files: LayerFiles = serde_json::from_slice(&content.get(&files_digest).unwrap().unwrap()).unwrap();
    let entries: Vec<(&str, FileKind)> = files.entries.iter().map(|entry| (entry.path.as_str(), entry.kind)).collect();
    assert_eq!(entries, [("etc/motd", FileKind::File), ("etc/gone", FileKind::Whiteout)]);
    assert_eq!(files.compressed_size, small.len() as u64);

    let (_, _, _, reason) = find("layer.files", &big_digest);
    assert!(reason.as_deref().is_some_and(|reason| reason.contains("over the deep inspection limit of 4096 bytes")));

    // Every fetch went to the hold's own endpoint, policy-checked (not trusted); the big layer and
    // the artifact's blobs were never asked for.
    let asked = asked.lock().unwrap().clone();
    assert!(!asked.is_empty());
    for (url, trusted) in &asked {
        assert!(
            url.starts_with("https://hold.test/xrpc/com.atproto.sync.getBlob?did=did:web:hold.test&cid=sha256:"),
            "{url}"
        );
        assert!(!trusted);
        assert!(!url.ends_with(&big_digest["sha256:".len()..]));
    }
    assert_eq!(asked.len(), 3, "config, forged config, small layer: {asked:?}");
}
