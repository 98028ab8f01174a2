//! Images published the ATCR way — manifest bytes as blobs and `io.atcr.*` records in a real
//! PDS (Bluesky's reference implementation), layers in a hold — are pulled from atcr by real
//! OCI clients (skopeo, podman, the Rust `oci-client` crate), by tag and by digest, with the
//! pulled digests equal to the pushed ones. Done for a filesystem hold and an S3 hold
//! (s3s-fs, presigned redirects).
//!
//! The PDS and its PLC are **stopped** before the first pull: whatever the pull path needs must
//! already be in atcr's views and content store (no outbound HTTP on the pull path).
//!
//! The test starts its own PDS (it stops it), on ports of its own, with the harness that
//! `fixtures/test-all.sh` installs.

mod clients;
mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use clients::{has_tool, oci_client_pull, podman_pull, skopeo_pull};
use support::{Atcr, Pds, TestBucket, free_port, pds_url_or_skip};

const FS_HOLD: &str = "did:web:fs-hold.atcr.test";
const S3_HOLD: &str = "did:web:s3-hold.atcr.test";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The recorded demo blobs: real OCI manifests, configs and gzip'd tar layers.
fn demo_blobs() -> PathBuf {
    repo_root().join("fixtures/demo/blobs")
}

fn blob(digest: &str) -> Vec<u8> {
    std::fs::read(demo_blobs().join("sha256").join(&digest["sha256:".len()..])).unwrap()
}

/// A PDS + PLC of this test's own, stopped on drop (and by the test, before pulling).
struct OwnPds {
    pds_port: u16,
    plc_port: u16,
    running: bool,
}

impl OwnPds {
    fn script(&self, name: &str) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(repo_root().join("fixtures/pds").join(name))
            .env("ATCR_PDS_PORT", self.pds_port.to_string())
            .env("ATCR_PLC_PORT", self.plc_port.to_string());
        command
    }

    fn start() -> Result<OwnPds> {
        let mut own = OwnPds { pds_port: free_port()?, plc_port: free_port()?, running: false };
        while own.plc_port == own.pds_port {
            own.plc_port = free_port()?;
        }
        let output = own.script("start.sh").output()?;
        ensure!(output.status.success(), "fixtures/pds/start.sh failed: {}", String::from_utf8_lossy(&output.stdout));
        own.running = true;
        Ok(own)
    }

    fn stop(&mut self) {
        if self.running {
            let _ = self.script("stop.sh").output();
            self.running = false;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.pds_port)
    }

    fn plc(&self) -> String {
        format!("http://127.0.0.1:{}", self.plc_port)
    }
}

impl Drop for OwnPds {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An `io.atcr.manifest` record describing these manifest bytes.
fn manifest_record(repository: &str, digest: &str, bytes: &[u8], manifest_blob: &Value, hold: &str) -> Value {
    let manifest: Value = serde_json::from_slice(bytes).unwrap();
    let mut record = json!({
        "$type": "io.atcr.manifest",
        "repository": repository,
        "digest": digest,
        "mediaType": manifest["mediaType"],
        "schemaVersion": 2,
        "manifestBlob": manifest_blob,
        "holdDid": hold,
        "createdAt": "2026-01-01T00:00:00.000Z",
    });
    for field in ["config", "layers", "manifests", "subject", "annotations"] {
        if !manifest[field].is_null() {
            record[field] = manifest[field].clone();
        }
    }
    record
}

/// The images: a single-arch image with an SBOM whose `subject` is that image, an older version
/// of it, and a two-platform index.
const IMAGE: &str = "sha256:a4e9f58d93c92cf5a8413b22d51f734842c06ed84efd7fdedc46f1ab9a2e2028";
const IMAGE_V1: &str = "sha256:b7cf38f057d9ace9033c883199bbc66e7ea90c44123463617b61f3fbd6603922";
const SBOM: &str = "sha256:09ad5351e8d1e64cd08e76e4948f259fab9acdb6074a260de042e46f458690aa";
const INDEX: &str = "sha256:83f064ecfa9c318bd775ae101825cff3f1b91b260aef8a1723ae2dfbbde967bd";

/// Every manifest to publish (children of the index first) and the tags pointing at them.
fn manifests_to_publish() -> Vec<String> {
    let index: Value = serde_json::from_slice(&blob(INDEX)).unwrap();
    let mut digests: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|child| child["digest"].as_str().unwrap().to_string())
        .collect();
    digests.extend([INDEX, IMAGE, IMAGE_V1, SBOM].map(str::to_string));
    digests
}

/// Config and layer digests of every image manifest published.
fn layer_blobs(manifests: &[String]) -> Vec<String> {
    let mut blobs = Vec::new();
    for digest in manifests {
        let manifest: Value = serde_json::from_slice(&blob(digest)).unwrap();
        for descriptor in
            manifest["layers"].as_array().into_iter().flatten().chain(std::iter::once(&manifest["config"]))
        {
            if let Some(digest) = descriptor["digest"].as_str()
                && !blobs.iter().any(|known| known == digest)
            {
                blobs.push(digest.to_string());
            }
        }
    }
    blobs
}

async fn upload_to_s3(blobs: &[String]) -> Result<Option<(String, String)>> {
    let bucket = format!("atcr-pull-{}", std::process::id());
    let Some(s3) = TestBucket::create("S3 hold part", &bucket).await? else { return Ok(None) };
    for digest in blobs {
        s3.client
            .put_object()
            .bucket(&bucket)
            .key(format!("blobs/sha256/{}", &digest["sha256:".len()..]))
            .body(blob(digest).into())
            .send()
            .await
            .with_context(|| format!("put {digest}"))?;
    }
    Ok(Some((s3.toml_section(&format!("[s3_holds.\"{S3_HOLD}\"]"), "blobs/"), bucket)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_images_pull_with_real_clients_while_the_pds_is_down() -> Result<()> {
    if pds_url_or_skip().is_none() {
        return Ok(());
    }
    let mut own = OwnPds::start()?;
    let pds = Pds::new(&own.url());
    let manifests = manifests_to_publish();
    let blobs = layer_blobs(&manifests);
    let s3 = upload_to_s3(&blobs).await?;
    // One publisher per hold: a manifest's record key is its digest, so one account cannot
    // publish the same image twice.
    let mut repositories = vec![("fs/app", FS_HOLD, pds.create_account("pullfs").await?)];
    if s3.is_some() {
        repositories.push(("s3/app", S3_HOLD, pds.create_account("pulls3").await?));
    }

    for (repository, hold, account) in &repositories {
        for digest in &manifests {
            let bytes = blob(digest);
            let manifest: Value = serde_json::from_slice(&bytes)?;
            let media_type = manifest["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json");
            let uploaded = pds.upload_blob(account, bytes.clone(), media_type).await?;
            let record = manifest_record(repository, digest, &bytes, &uploaded, hold);
            pds.create_record(account, "io.atcr.manifest", Some(&digest["sha256:".len()..]), &record).await?;
        }
        for (tag, digest) in [("latest", IMAGE), ("v1", IMAGE_V1), ("multi", INDEX)] {
            let record = json!({
                "$type": "io.atcr.tag", "repository": repository, "tag": tag,
                "manifest": format!("at://{}/io.atcr.manifest/{}", account.did, &digest["sha256:".len()..]),
                "updatedAt": "2026-01-01T00:00:00.000Z",
            });
            let rkey = format!("{}_{tag}", repository.replace('/', "~"));
            pds.create_record(account, "io.atcr.tag", Some(&rkey), &record).await?;
        }
    }

    let mut atcr = Atcr::new("pull", &own.url(), &own.plc(), Some(0))?;
    atcr.extra_args = vec!["--local-hold".into(), format!("{FS_HOLD}={}", demo_blobs().display())];
    if let Some((toml, _)) = &s3 {
        let path = atcr.data_dir.parent().unwrap().join("atcr.toml");
        std::fs::write(&path, toml)?;
        atcr.extra_args.extend(["--config".into(), path.display().to_string()]);
    }
    atcr.start(Duration::from_secs(60)).await?;

    // Everything is ingested, enriched and projected before the PDS goes away.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (repository, _, account) in &repositories {
        let handle = &account.handle;
        for digest in &manifests {
            let path = format!("/v2/{handle}/{repository}/manifests/{digest}");
            loop {
                let (status, body) = atcr.get(&path).await?;
                if status == 200 {
                    break;
                }
                ensure!(Instant::now() < deadline, "{path} still answers {status}: {body}\n{}", atcr.output_tail(40));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    own.stop();
    let (status, _) =
        pds.list_records(&repositories[0].2.did, "io.atcr.tag").await.map(|_| (200, ())).unwrap_or((0, ()));
    assert_eq!(status, 0, "the PDS is down for the pulls");

    let registry = format!("127.0.0.1:{}", atcr.port);
    let layouts = tempfile::tempdir()?;
    for (repository, _, account) in &repositories {
        let handle = &account.handle;
        let name = format!("{registry}/{handle}/{repository}");
        // The Rust OCI client: manifests by tag and digest, every blob's bytes checked.
        assert_eq!(oci_client_pull(&format!("{name}:latest")).await, IMAGE);
        assert_eq!(oci_client_pull(&format!("{name}@{IMAGE}")).await, IMAGE);
        assert_eq!(oci_client_pull(&format!("{name}:multi")).await, INDEX);
        if has_tool("skopeo") {
            let dir = layouts.path().join(repository.replace('/', "-"));
            assert_eq!(skopeo_pull(&format!("{name}:latest"), &dir.join("tag"), false), IMAGE);
            assert_eq!(skopeo_pull(&format!("{name}@{IMAGE}"), &dir.join("digest"), false), IMAGE);
            assert_eq!(skopeo_pull(&format!("{name}:multi"), &dir.join("multi"), true), INDEX);
            assert_eq!(skopeo_pull(&format!("{name}@{INDEX}"), &dir.join("multi-digest"), true), INDEX);
        }
        if has_tool("podman") {
            let store = layouts.path().join(format!("podman-{}", repository.replace('/', "-")));
            for reference in [format!("{name}:latest"), format!("{name}@{IMAGE}")] {
                assert_eq!(podman_pull(&store, &reference), IMAGE);
            }
        }
        // The SBOM is found as a referrer of the image it describes.
        let referrers = atcr.get_json(&format!("/v2/{handle}/{repository}/referrers/{IMAGE}")).await?;
        let found: Vec<&str> =
            referrers["manifests"].as_array().unwrap().iter().filter_map(|entry| entry["digest"].as_str()).collect();
        assert_eq!(found, vec![SBOM], "{referrers}");
    }
    atcr.terminate(Duration::from_secs(20)).await?;
    Ok(())
}
