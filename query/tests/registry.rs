//! The registry read API over real views: name resolution, tag and digest lookups, blob
//! scoping and where blobs are sent (resolved hold, legacy endpoint, local backend).

use std::collections::HashMap;
use std::sync::Arc;

use atcr_projections::{ProjectionRunner, Views};
use atcr_query::{BlobMethod, BlobServe, RegistryError, RegistryQuery};
use atcr_storage::blobs::BlobBackend;
use atcr_storage::content::{ContentStore, sha256_digest};
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
use ipld_core::ipld;
use ipld_core::ipld::Ipld;

const ALICE: &str = "did:plc:alice";
const REMOTE_HOLD: &str = "did:web:hold.example%3A8443";
const LOCAL_HOLD: &str = "did:web:local.example";
const LAYER: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

fn event(source: Source, did: &str, body: EventBody) -> Event {
    Event {
        source,
        upstream_seq: None,
        did: did.into(),
        rev: None,
        upstream_time: None,
        received_at_us: 0,
        commit_cid: None,
        body,
    }
}

fn put(rkey: &str, collection: &str, record: Ipld) -> Event {
    let record = serde_ipld_dagcbor::to_vec(&record).unwrap();
    event(
        Source::Firehose,
        ALICE,
        EventBody::RecordPut {
            collection: collection.into(),
            rkey: rkey.into(),
            cid: "x".into(),
            action: PutAction::Create,
            record,
        },
    )
}

struct Fixture {
    _directory: tempfile::TempDir,
    registry: RegistryQuery,
    remote: String,
    local: String,
}

fn fixture() -> Fixture {
    let directory = tempfile::tempdir().unwrap();
    let content = Arc::new(ContentStore::open(&directory.path().join("content")).unwrap());
    let manifest = |hold: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[{{"digest":"{LAYER}","size":5}}],"hold":"{hold}"}}"#
        )
    };
    let (remote_bytes, local_bytes) = (manifest(REMOTE_HOLD), manifest(LOCAL_HOLD));
    let (remote, local) = (sha256_digest(remote_bytes.as_bytes()), sha256_digest(local_bytes.as_bytes()));
    content.put(&remote, remote_bytes.as_bytes()).unwrap();
    content.put(&local, local_bytes.as_bytes()).unwrap();
    let record = |repository: &str, digest: &str, hold: &str| {
        ipld!({
            "repository": repository, "digest": digest, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "holdDid": hold, "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": LAYER, "size": 5 }],
        })
    };
    let hold_document = format!(
        r##"{{"id":"{REMOTE_HOLD}","service":[{{"id":"#atcr_hold","type":"AtcrHoldService","serviceEndpoint":"https://hold.example:8443"}}]}}"##
    );
    let alice_document = r##"{"id":"did:plc:alice","alsoKnownAs":["at://alice.test"]}"##;
    let events = vec![
        put(&remote[7..], "io.atcr.manifest", record("remote", &remote, REMOTE_HOLD)),
        put(&local[7..], "io.atcr.manifest", record("local", &local, LOCAL_HOLD)),
        put(
            "remote_latest",
            "io.atcr.tag",
            ipld!({ "repository": "remote", "tag": "latest", "manifestDigest": remote.clone() }),
        ),
        event(Source::Enrichment, ALICE, EventBody::IdentityResolved { document_json: alice_document.into() }),
        event(Source::Enrichment, REMOTE_HOLD, EventBody::IdentityResolved { document_json: hold_document }),
    ];
    let log = Arc::new(EventLog::open(&directory.path().join("log.redb")).unwrap());
    log.append(AppendBatch { events, ..AppendBatch::default() }).unwrap();
    let views = Arc::new(Views::open(&directory.path().join("views.redb")).unwrap());
    ProjectionRunner::new(log, views.clone()).catch_up().unwrap();
    let blobs = directory.path().join("hold");
    std::fs::create_dir_all(blobs.join("sha256")).unwrap();
    std::fs::write(blobs.join("sha256").join(&LAYER[7..]), b"layer").unwrap();
    let holds = HashMap::from([(LOCAL_HOLD.to_string(), BlobBackend::Filesystem { root: blobs })]);
    let registry = RegistryQuery::new(views, content).with_local_holds(holds);
    Fixture { _directory: directory, registry, remote, local }
}

#[test]
fn names_tags_and_digests_resolve_within_their_repository() {
    let fixture = fixture();
    let registry = &fixture.registry;
    let by_handle = registry.resolve("alice.test/remote").unwrap();
    assert_eq!(by_handle.did, ALICE);
    assert_eq!(registry.resolve("did:plc:alice/remote").unwrap().did, ALICE);
    assert!(matches!(registry.resolve("bob.test/remote"), Err(RegistryError::NameUnknown(_))));
    assert!(matches!(registry.resolve("alice.test/nothing"), Err(RegistryError::NameUnknown(_))));
    assert!(matches!(registry.resolve("alice.test/../x"), Err(RegistryError::NameInvalid(_))));
    assert_eq!(registry.manifest(&by_handle, "latest").unwrap().digest, fixture.remote);
    // A digest published in another repository of the same owner is not served here.
    assert!(matches!(registry.manifest(&by_handle, &fixture.local), Err(RegistryError::ManifestUnknown(_))));
    assert!(matches!(registry.manifest(&by_handle, "sha256:abc"), Err(RegistryError::DigestInvalid(_))));
}

#[test]
fn blobs_redirect_to_the_resolved_hold_or_stream_from_a_local_one() {
    let fixture = fixture();
    let registry = &fixture.registry;
    let remote = registry.resolve("alice.test/remote").unwrap();
    match registry.serve_blob(&remote, LAYER, BlobMethod::Get).unwrap() {
        BlobServe::Redirect { url, .. } => assert_eq!(
            url,
            format!(
                "https://hold.example:8443/xrpc/com.atproto.sync.getBlob?did=did:web:hold.example%253A8443&cid={LAYER}"
            )
        ),
        other => panic!("expected a redirect, got {other:?}"),
    }
    let local = registry.resolve("alice.test/local").unwrap();
    assert!(matches!(registry.serve_blob(&local, LAYER, BlobMethod::Head).unwrap(), BlobServe::File { .. }));
    let unknown = "sha256:5555555555555555555555555555555555555555555555555555555555555555";
    assert!(matches!(registry.serve_blob(&local, unknown, BlobMethod::Get), Err(RegistryError::BlobUnknown(_))));
}
