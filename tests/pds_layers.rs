//! Layers of a real image, end to end: the test builds a multi-layer image itself (real tar
//! layers, gzip'd: a file modified in a later layer, a whiteout deleting a lower file, an opaque
//! directory, an empty-layer history step, and one layer too large for deep inspection), puts
//! its blobs into an S3 hold (s3s-fs) that atcr presigns for, and publishes manifest and tag
//! records through the reference PDS. atcr, with deep inspection on and a low size limit,
//! fetches the config and the layers through the hold and shows the history, the platform, the
//! files each layer adds, modifies and deletes, the compression ratio (computed here
//! independently), layer sharing with a second repository, the oversized layer skipped with its
//! reason, and a config that is not JSON refused with "config unreadable".

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use support::{Atcr, Pds, TestBucket, pds_url_or_skip, plc_url, sha256_hex};

const HOLD: &str = "did:web:layers-hold.atcr.test";
const LIMIT: u64 = 128 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A tar archive of these entries (a path ending in `/` is a directory).
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        if path.ends_with('/') {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            header.set_cksum();
            builder.append_data(&mut header, path, std::io::empty()).unwrap();
        } else {
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append_data(&mut header, path, *data).unwrap();
        }
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest_of(bytes), "size": bytes.len() })
}

/// Bytes that do not compress (a xorshift stream), so a gzip'd layer of them stays large.
fn noise(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

struct Layer {
    tar: Vec<u8>,
    blob: Vec<u8>,
}

impl Layer {
    fn new(entries: &[(&str, &[u8])]) -> Layer {
        let tar = tar_of(entries);
        let blob = gzip(&tar);
        Layer { tar, blob }
    }
}

struct Image {
    manifest: Vec<u8>,
    config: Vec<u8>,
}

impl Image {
    fn digest(&self) -> String {
        digest_of(&self.manifest)
    }

    fn new(config: Vec<u8>, layers: Vec<Vec<u8>>, salt: &str) -> Image {
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(OCI_CONFIG, &config),
            "layers": layers.iter().map(|layer| descriptor(OCI_LAYER, layer)).collect::<Vec<_>>(),
            "annotations": { "org.opencontainers.image.description": salt },
        });
        Image { manifest: serde_json::to_vec_pretty(&manifest).unwrap(), config }
    }
}

fn config_json(layers: &[&Layer], history: Value, salt: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "created": "2026-01-02T03:04:05Z",
        "architecture": "arm64",
        "variant": "v8",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", format!("SALT={salt}")],
            "Cmd": ["/app/main.sh", "--serve"],
            "WorkingDir": "/app",
            "ExposedPorts": { "8080/tcp": {} },
            "Labels": { "org.opencontainers.image.source": "https://example.test/app" },
        },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|layer| digest_of(&layer.tar)).collect::<Vec<_>>() },
        "history": history,
    }))
    .unwrap()
}

async fn publish(pds: &Pds, account: &support::Account, repository: &str, image: &Image, tag: &str) -> Result<()> {
    let uploaded = pds.upload_blob(account, image.manifest.clone(), OCI_MANIFEST).await?;
    let manifest: Value = serde_json::from_slice(&image.manifest)?;
    let digest = image.digest();
    let record = json!({
        "$type": "io.atcr.manifest",
        "repository": repository,
        "digest": digest,
        "mediaType": OCI_MANIFEST,
        "schemaVersion": 2,
        "manifestBlob": uploaded,
        "config": manifest["config"],
        "layers": manifest["layers"],
        "holdDid": HOLD,
        "createdAt": support::now_datetime(),
    });
    let hex = &digest["sha256:".len()..];
    pds.create_record(account, "io.atcr.manifest", Some(hex), &record).await?;
    let tag_record = support::tag_record(&account.did, repository, tag, hex);
    let rkey = format!("{}_{tag}", repository.replace('/', "~"));
    pds.create_record(account, "io.atcr.tag", Some(&rkey), &tag_record).await?;
    Ok(())
}

/// (path, change) pairs of one layer in the API answer.
fn changes(layer: &Value) -> Vec<(String, String)> {
    layer["changes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|change| {
            (change["path"].as_str().unwrap_or("").to_string(), change["change"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(path, change)| (path.to_string(), change.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_inspection_lists_each_layers_files_history_and_sharing() -> Result<()> {
    let Some(pds_url) = pds_url_or_skip() else { return Ok(()) };
    let bucket_name = format!("atcr-layers-{}", std::process::id());
    let Some(bucket) = TestBucket::create("layers", &bucket_name).await? else { return Ok(()) };
    let salt = format!("{}", support::random_u64());

    // The image: base files, then a layer that modifies motd, deletes old.conf (whiteout),
    // hides /var/cache (opaque) and adds the app, then a layer too big to inspect.
    let tool = "#!/bin/sh\necho tool\n".repeat(800);
    let base = Layer::new(&[
        ("etc/", b""),
        ("etc/motd", b"hello\n"),
        ("etc/old.conf", b"old=1\n"),
        ("usr/", b""),
        ("usr/bin/", b""),
        ("usr/bin/tool", tool.as_bytes()),
        ("var/cache/", b""),
        ("var/cache/stale", b"stale"),
        ("salt", salt.as_bytes()),
    ]);
    let app = Layer::new(&[
        ("etc/motd", b"hello, layers\n"),
        ("etc/.wh.old.conf", b""),
        ("var/cache/.wh..wh..opq", b""),
        ("var/cache/fresh", b"fresh"),
        ("app/", b""),
        ("app/main.sh", b"#!/bin/sh\nexec sleep infinity\n"),
        ("app/salt", salt.as_bytes()),
    ]);
    let big = Layer::new(&[("data/blob.bin", &noise(LIMIT as usize * 2, support::random_u64()))]);
    ensure!(big.blob.len() as u64 > LIMIT, "the big layer must be over the limit");
    let history = json!([
        { "created": "2026-01-02T03:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:rootfs.tar in / " },
        { "created": "2026-01-02T03:01:00Z", "created_by": "/bin/sh -c #(nop)  ENV PATH=/usr/local/bin:/usr/bin:/bin", "empty_layer": true },
        { "created": "2026-01-02T03:02:00Z", "created_by": "/bin/sh -c rm /etc/old.conf && echo 'hello, layers' > /etc/motd", "comment": "app step" },
        { "created": "2026-01-02T03:03:00Z", "created_by": "COPY data /data # buildkit" },
        { "created": "2026-01-02T03:04:00Z", "created_by": "/bin/sh -c #(nop)  CMD [\"/app/main.sh\" \"--serve\"]", "empty_layer": true },
    ]);
    let image = Image::new(
        config_json(&[&base, &app, &big], history, &salt),
        vec![base.blob.clone(), app.blob.clone(), big.blob.clone()],
        &salt,
    );
    // A second repository whose image shares the base layer.
    let other = Image::new(
        config_json(&[&base], json!([{ "created_by": "ADD rootfs" }]), &format!("{salt}-other")),
        vec![base.blob.clone()],
        &format!("{salt}-other"),
    );
    // An image whose config is not JSON at all.
    let broken_config = format!("this is not an image config {salt}").into_bytes();
    let broken = Image::new(broken_config.clone(), vec![base.blob.clone()], &format!("{salt}-broken"));

    for blob in [&image.config, &other.config, &broken_config, &base.blob, &app.blob, &big.blob] {
        bucket
            .client
            .put_object()
            .bucket(&bucket_name)
            .key(format!("blobs/sha256/{}", sha256_hex(blob)))
            .body(blob.clone().into())
            .send()
            .await
            .context("put blob")?;
    }

    let pds = Pds::new(&pds_url);
    let account = pds.create_account("layers").await?;
    publish(&pds, &account, "layers/app", &image, "latest").await?;
    publish(&pds, &account, "layers/other", &other, "latest").await?;
    publish(&pds, &account, "layers/broken", &broken, "latest").await?;

    let mut atcr = Atcr::new("layers", &pds_url, &plc_url(&pds_url), Some(0))?;
    let config_path = atcr.data_dir.parent().unwrap().join("atcr.toml");
    let toml = format!(
        "deep_inspection_max_bytes = {LIMIT}\n{}",
        bucket.toml_section(&format!("[s3_holds.\"{HOLD}\"]"), "blobs/")
    );
    std::fs::write(&config_path, toml)?;
    atcr.extra_args = vec!["--config".into(), config_path.display().to_string()];
    atcr.start(Duration::from_secs(60)).await?;

    let did = &account.did;
    let path = format!("/api/v1/layers/{did}/layers/app/latest");
    let deadline = Instant::now() + Duration::from_secs(120);
    let answer = loop {
        let (status, body) = atcr.get(&path).await?;
        if status == 200 {
            let answer: Value = serde_json::from_str(&body)?;
            let settled = answer["config"]["status"] == "stored"
                && answer["layers"].as_array().is_some_and(|layers| {
                    layers.len() == 3 && layers.iter().all(|layer| layer["inspection"]["status"] != "off")
                });
            if settled {
                break answer;
            }
        }
        ensure!(Instant::now() < deadline, "{path} not settled: {status} {body}\n{}", atcr.output_tail(60));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Platform and runtime from the config.
    assert_eq!(answer["platform"]["os"], "linux");
    assert_eq!(answer["platform"]["architecture"], "arm64");
    assert_eq!(answer["platform"]["variant"], "v8");
    assert_eq!(answer["runtime"]["cmd"], json!(["/app/main.sh", "--serve"]));
    assert_eq!(answer["runtime"]["exposed_ports"], json!(["8080/tcp"]));
    assert_eq!(answer["runtime"]["labels"]["org.opencontainers.image.source"], "https://example.test/app");
    // History: empty layers marked, the others matched to layers in order.
    let history = answer["history"].as_array().unwrap();
    let empty: Vec<bool> = history.iter().map(|step| step["empty_layer"].as_bool().unwrap()).collect();
    assert_eq!(empty, [false, true, false, false, true]);
    let layer_of: Vec<Value> = history.iter().map(|step| step["layer"].clone()).collect();
    assert_eq!(layer_of, [json!(0), Value::Null, json!(1), json!(2), Value::Null]);
    assert_eq!(history[2]["comment"], "app step");
    let layers = answer["layers"].as_array().unwrap();
    assert_eq!(layers[1]["created_by"], history[2]["created_by"]);
    for (layer, blob) in layers.iter().zip([&base.blob, &app.blob, &big.blob]) {
        assert_eq!(layer["size"], json!(blob.len()), "{layer}");
    }

    // Layer 1: everything is added.
    assert_eq!(layers[0]["inspection"]["status"], "stored", "{}", layers[0]);
    assert_eq!(
        changes(&layers[0]),
        pairs(&[
            ("etc", "added"),
            ("etc/motd", "added"),
            ("etc/old.conf", "added"),
            ("usr", "added"),
            ("usr/bin", "added"),
            ("usr/bin/tool", "added"),
            ("var/cache", "added"),
            ("var/cache/stale", "added"),
            ("salt", "added"),
        ])
    );
    let tool_entry = layers[0]["changes"].as_array().unwrap().iter().find(|change| change["path"] == "usr/bin/tool");
    assert_eq!(tool_entry.unwrap()["size"], json!(tool.len()));
    // Layer 2: whiteouts first (deleted, opaque), then modified and added files.
    assert_eq!(layers[1]["inspection"]["status"], "stored", "{}", layers[1]);
    assert_eq!(
        changes(&layers[1]),
        pairs(&[
            ("etc/old.conf", "deleted"),
            ("var/cache", "opaque"),
            ("etc/motd", "modified"),
            ("var/cache/fresh", "added"),
            ("app", "added"),
            ("app/main.sh", "added"),
            ("app/salt", "added"),
        ])
    );
    // Compression ratios, computed here from the bytes this test made.
    for (layer, built) in layers.iter().zip([&base, &app]) {
        let expected = built.tar.len() as f64 / built.blob.len() as f64;
        let ratio = layer["compression_ratio"].as_f64().unwrap();
        assert!((ratio - expected).abs() < 1e-9, "ratio {ratio} != {expected}");
        assert_eq!(layer["uncompressed_size"], json!(built.tar.len()));
        assert_eq!(layer["compression"], "gzip");
    }
    assert!(layers[0]["compression_ratio"].as_f64().unwrap() > 5.0, "the base layer compresses well");
    // Layer 3: over the limit, skipped with the reason, no crash.
    assert_eq!(layers[2]["inspection"]["status"], "rejected");
    let reason = layers[2]["inspection"]["reason"].as_str().unwrap();
    assert!(reason.contains("over the deep inspection limit of 131072 bytes"), "{reason}");
    assert!(layers[2]["changes"].as_array().unwrap().is_empty());

    // A config that is not JSON: refused with the reason, the page says so.
    let broken_path = format!("/api/v1/layers/{did}/layers/broken/latest");
    let deadline = Instant::now() + Duration::from_secs(60);
    let broken_answer = loop {
        let answer = atcr.get_json(&broken_path).await?;
        if answer["config"]["status"] != "pending" {
            break answer;
        }
        ensure!(Instant::now() < deadline, "{broken_path} still pending\n{}", atcr.output_tail(40));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(broken_answer["config"]["status"], "rejected", "{broken_answer}");
    assert!(broken_answer["config"]["reason"].as_str().unwrap().contains("not JSON"), "{broken_answer}");
    let quarantine = atcr.get_json("/api/v1/quarantine").await?.to_string();
    assert!(quarantine.contains("image config is not JSON"), "{quarantine}");

    // Sharing (read again: by now all three manifests are in the views): the base layer is used
    // by three images (app, other, broken) in three repositories.
    let answer = atcr.get_json(&path).await?;
    let layers = answer["layers"].as_array().unwrap();
    assert_eq!(layers[0]["used_by_manifests"], 3);
    assert_eq!(layers[0]["used_by_repositories"], 3);
    assert_eq!(layers[1]["used_by_manifests"], 1);
    assert_eq!(answer["dedup"]["shared_layers"], 1);
    assert_eq!(answer["dedup"]["shared_bytes"], json!(base.blob.len()));
    let dedup = atcr.get_json("/api/v1/layers/dedup").await?;
    assert!(dedup["bytes_saved"].as_u64().unwrap() >= 2 * base.blob.len() as u64, "{dedup}");
    let base_digest = digest_of(&base.blob);
    let top = dedup["top"].as_array().unwrap().iter().find(|layer| layer["digest"] == base_digest.as_str());
    assert_eq!(top.map(|layer| layer["manifests"].clone()), Some(json!(3)), "{dedup}");

    // The manifest page shows the same.
    let (status, page) = atcr.get(&format!("/r/{did}/layers/app/-/manifest/{}", image.digest())).await?;
    assert_eq!(status, 200);
    for expected in [
        "Build history",
        "empty layer",
        "app step",
        "arm64",
        "/etc/old.conf",
        "deleted",
        "modified",
        "opaque",
        "over the deep inspection limit",
        "shared by 3 images",
        &format!("{:.2}×", base.tar.len() as f64 / base.blob.len() as f64),
    ] {
        assert!(page.contains(expected), "manifest page lacks {expected:?}");
    }
    let (status, page) = atcr.get(&format!("/r/{did}/layers/broken/-/manifest/{}", broken.digest())).await?;
    assert_eq!(status, 200);
    assert!(page.contains("config unreadable"));
    let (status, page) = atcr.get("/layers").await?;
    assert_eq!(status, 200);
    assert!(page.contains("Bytes saved by sharing"));

    let pages = format!(
        "layers-manifest|/r/{did}/layers/app/-/manifest/{}|#layer-2|etc/old.conf;layers-history|/r/{did}/layers/app/-/manifest/{}|#build-history|empty layer;layers-dedup|/layers|#dedup-totals|Bytes saved",
        image.digest(),
        image.digest()
    );
    browser_check(&atcr, &pages)?;
    atcr.terminate(Duration::from_secs(20)).await?;
    Ok(())
}

/// The manifest page's layer sections and `/layers` in headless chromium: no console error, no
/// axe violation, the facts shown, saved as screenshots.
fn browser_check(atcr: &Atcr, pages: &str) -> Result<()> {
    let pages: Vec<String> = pages.split(';').map(str::to_string).collect();
    support::check_pages_in_browser(&atcr.base_url(), "layers", &pages)
}
