//! View snapshots in S3 (`[snapshot_s3]`), so a new node or a rebuild can start from a recent
//! snapshot instead of offset 0 without copying files by hand.
//!
//! Objects: `<key_prefix>snapshots/registry-v<version>-<checkpoint, 12 digits>.atcrsnap`, the
//! snapshot file as `atcr replay snapshot` writes it, and `<key_prefix>snapshots/registry-latest`,
//! a small text object naming the newest one, written only after that snapshot is fully
//! uploaded (a reader never follows it to a half-written object). The S3 protocol stays in
//! `atcr-storage`, which presigns the URLs; this module only streams files to and from them.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use tokio::io::AsyncWriteExt;

use atcr_storage::blobs::{ObjectMethod, S3Backend};

use crate::config::Config;

/// The object naming the newest uploaded snapshot.
pub const LATEST: &str = "snapshots/registry-latest";

/// The object name of a registry snapshot at `checkpoint`, built by views `version`.
pub fn snapshot_name(version: u32, checkpoint: u64) -> String {
    format!("snapshots/registry-v{version}-{checkpoint:012}.atcrsnap")
}

pub fn backend(config: &Config) -> anyhow::Result<S3Backend> {
    let Some(s3) = &config.snapshot_s3 else {
        bail!("no [snapshot_s3] bucket is configured (endpoint, bucket, access_key_id, secret_access_key)");
    };
    S3Backend::new(s3.to_storage()).context("the [snapshot_s3] configuration is invalid")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("atcr/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Uploads the snapshot file as `name`, then points `registry-latest` at it.
pub fn upload(backend: &S3Backend, file: &Path, name: &str) -> anyhow::Result<u64> {
    runtime()?.block_on(async {
        let client = client()?;
        let size = tokio::fs::metadata(file).await.with_context(|| format!("cannot read {}", file.display()))?.len();
        let body = tokio::fs::File::open(file).await.with_context(|| format!("cannot open {}", file.display()))?;
        put(&client, backend, name, reqwest::Body::from(body), size).await?;
        put(&client, backend, LATEST, reqwest::Body::from(name.to_string()), name.len() as u64).await?;
        Ok(size)
    })
}

async fn put(
    client: &reqwest::Client,
    backend: &S3Backend,
    name: &str,
    body: reqwest::Body,
    size: u64,
) -> anyhow::Result<()> {
    let url = backend.presign_object(name, ObjectMethod::Put)?;
    let response = client
        .put(&url)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body)
        .send()
        .await
        .with_context(|| format!("uploading {name}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("uploading {name}: the bucket answered {status}: {}", text.chars().take(400).collect::<String>());
    }
    Ok(())
}

/// The name `registry-latest` points at.
pub fn latest(backend: &S3Backend) -> anyhow::Result<String> {
    runtime()?.block_on(async {
        let client = client()?;
        let url = backend.presign_object(LATEST, ObjectMethod::Get)?;
        let response = client.get(&url).send().await.context("reading the latest snapshot's name")?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            bail!("the bucket holds no snapshot yet ({LATEST} is missing)");
        }
        ensure!(response.status().is_success(), "reading {LATEST}: the bucket answered {}", response.status());
        let name = response.text().await?.trim().to_string();
        ensure!(
            name.starts_with("snapshots/registry-") && backend.config().named_object_key(&name).is_some(),
            "{LATEST} names {name:?}, which is not a registry snapshot"
        );
        Ok(name)
    })
}

/// Downloads `name` into `file` (created, or truncated), returning its size.
pub fn download(backend: &S3Backend, name: &str, file: &Path) -> anyhow::Result<u64> {
    runtime()?.block_on(async {
        let client = client()?;
        let url = backend.presign_object(name, ObjectMethod::Get)?;
        let mut response = client.get(&url).send().await.with_context(|| format!("downloading {name}"))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            bail!("the bucket has no snapshot {name}");
        }
        ensure!(response.status().is_success(), "downloading {name}: the bucket answered {}", response.status());
        let mut out =
            tokio::fs::File::create(file).await.with_context(|| format!("cannot create {}", file.display()))?;
        let mut size = 0u64;
        while let Some(chunk) = response.chunk().await.with_context(|| format!("downloading {name}"))? {
            out.write_all(&chunk).await?;
            size += chunk.len() as u64;
        }
        out.flush().await?;
        Ok(size)
    })
}
