//! `atcr replay` end to end, on the real binary and a generated world (`atcr dev gen --into`:
//! signed commits through ingest's frame processor, DID documents, manifest bytes): views built live by `atcr serve` equal a rebuild (`--verify` reports zero
//! differences); deleting the views and restarting rebuilds them and the same queries get the
//! same bytes; a replay while serving flips the server to the new build without a failed
//! request and the old build's files go away; a snapshot restores the same answers.
//!
//! 10,000 record ops by default (`ATCR_TEST_REPLAY_EVENTS` to change; the acceptance run
//! is 100,000): the test builds the views five times over in a debug build, which applies events
//! many times slower than release.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use support::{ATCR_BIN, TestBucket, free_port, metric_value};

fn http_client() -> reqwest::Client {
    // reqwest is built with `rustls-no-provider`: a client needs a process-wide provider even for
    // plain HTTP on loopback.
    static CRYPTO_PROVIDER: std::sync::Once = std::sync::Once::new();
    CRYPTO_PROVIDER.call_once(|| {
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("an HTTP client")
}

fn events() -> u64 {
    std::env::var("ATCR_TEST_REPLAY_EVENTS").ok().and_then(|value| value.parse().ok()).unwrap_or(10_000)
}

fn atcr(data_dir: &Path, args: &[&str]) -> Result<Output> {
    let output = Command::new(ATCR_BIN)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("ATCR_DATA_DIR")
        .env_remove("ATCR_UPSTREAM")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running atcr {args:?}"))?;
    Ok(output)
}

fn atcr_ok(data_dir: &Path, args: &[&str]) -> Result<String> {
    let output = atcr(data_dir, args)?;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    ensure!(
        output.status.success(),
        "atcr {args:?} failed with {}:\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

/// `atcr serve` without an upstream: it serves the log it has and builds the views.
struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    http: reqwest::Client,
}

impl Server {
    async fn start(data_dir: &Path, log: PathBuf) -> Result<Server> {
        let port = free_port()?;
        let output = std::fs::File::create(&log)?;
        let child = Command::new(ATCR_BIN)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("serve")
            .env("NO_COLOR", "1")
            .env_remove("ATCR_UPSTREAM")
            .env_remove("ATCR_DATA_DIR")
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()?;
        let mut server = Server { child, port, log, http: http_client() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("atcr serve exited with {status}:\n{}", server.output());
            }
            if server.get("/healthz").await.is_ok_and(|(status, _)| status == 200) {
                return Ok(server);
            }
            ensure!(Instant::now() < deadline, "atcr serve not ready:\n{}", server.output());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> Result<(u16, Vec<u8>)> {
        let response = self.http.get(format!("http://127.0.0.1:{}{path}", self.port)).send().await?;
        Ok((response.status().as_u16(), response.bytes().await?.to_vec()))
    }

    async fn metric(&self, name: &str) -> Result<Option<f64>> {
        let (_, body) = self.get("/metrics").await?;
        Ok(metric_value(&String::from_utf8_lossy(&body), name))
    }

    /// Waits until the live views have applied `checkpoint` events.
    async fn wait_checkpoint(&self, checkpoint: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.metric("atcr_views_checkpoint").await? == Some(checkpoint as f64) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "views did not reach {checkpoint} (at {:?}):\n{}",
                self.metric("atcr_views_checkpoint").await?,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(mut self) -> Result<()> {
        // SIGTERM: a clean shutdown, so the views are closed before the next process opens them.
        let pid = i32::try_from(self.child.id())?;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                ensure!(status.success(), "atcr serve stopped with {status}:\n{}", self.output());
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("atcr serve did not stop:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Searches whose order does not depend on relevance scores (those count deleted documents,
/// which a live index keeps until it merges): every field of the cards is compared.
const SEARCHES: [&str; 5] =
    ["sort:stars", "sort:size", "sort:recent", "nginx sort:name", "platform:linux/arm64 sort:name"];

/// The answers of [`SEARCHES`] (without `took_us`), once the index has caught up with the views:
/// the same twice in a row, 400 ms apart (a live index commits within 200 ms).
async fn search_answers(server: &Server) -> Result<Vec<(String, u16, Vec<u8>)>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut previous: Option<Vec<(String, u16, Vec<u8>)>> = None;
    loop {
        let mut out = Vec::new();
        for query in SEARCHES {
            let path = format!("/api/v1/search?per_page=50&q={}", query.replace(' ', "+").replace(':', "%3A"));
            let (status, body) = server.get(&path).await?;
            let body = match serde_json::from_slice::<Value>(&body) {
                Ok(mut value) => {
                    value.as_object_mut().map(|object| object.remove("took_us"));
                    serde_json::to_vec(&value)?
                }
                Err(_) => body,
            };
            out.push((path, status, body));
        }
        let ready = out.iter().all(|(_, status, _)| *status == 200);
        if ready && previous.as_ref() == Some(&out) {
            ensure!(out.iter().any(|(_, _, body)| body.len() > 1000), "searches found nothing: {out:?}");
            return Ok(out);
        }
        ensure!(
            Instant::now() < deadline,
            "search answers did not settle: {:?}",
            out.iter().map(|(path, status, _)| (path, status)).collect::<Vec<_>>()
        );
        previous = ready.then_some(out);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// The answers compared across rebuilds: the whole catalog, then tags lists and manifests by
/// tag for up to 150 repositories (status and body bytes of each), then [`SEARCHES`].
async fn answers(server: &Server) -> Result<Vec<(String, u16, Vec<u8>)>> {
    let mut out = Vec::new();
    let (status, catalog) = server.get("/v2/_catalog?n=1000000").await?;
    ensure!(status == 200, "catalog: {status}");
    let names: Vec<String> = serde_json::from_slice::<Value>(&catalog)?["repositories"]
        .as_array()
        .context("catalog without repositories")?
        .iter()
        .filter_map(|name| name.as_str().map(str::to_string))
        .collect();
    ensure!(names.len() > 100, "a synthetic world has many repositories, got {}", names.len());
    out.push(("/v2/_catalog".to_string(), status, catalog));
    let step = (names.len() / 150).max(1);
    for name in names.iter().step_by(step) {
        let path = format!("/v2/{name}/tags/list");
        let (status, body) = server.get(&path).await?;
        if status == 200 {
            let tags: Value = serde_json::from_slice(&body)?;
            if let Some(tag) = tags["tags"].as_array().and_then(|tags| tags.first()).and_then(Value::as_str) {
                let manifest = format!("/v2/{name}/manifests/{tag}");
                let (status, body) = server.get(&manifest).await?;
                out.push((manifest, status, body));
            }
        }
        out.push((path, status, body));
    }
    out.extend(search_answers(server).await?);
    Ok(out)
}

fn assert_same(before: &[(String, u16, Vec<u8>)], after: &[(String, u16, Vec<u8>)], what: &str) {
    assert_eq!(before.len(), after.len(), "{what}: not the same queries");
    for ((path, status, body), (_, status_after, body_after)) in before.iter().zip(after) {
        assert_eq!(status, status_after, "{what}: {path} status");
        assert!(body == body_after, "{what}: {path} answered other bytes");
    }
}

fn registry_builds(data_dir: &Path) -> Vec<String> {
    let mut builds: Vec<String> = std::fs::read_dir(data_dir.join("views"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with("registry-"))
                .collect()
        })
        .unwrap_or_default();
    builds.sort();
    builds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_rebuild_bit_for_bit_and_flip_while_serving() -> Result<()> {
    let events = events();
    let root = tempfile::tempdir()?;
    let data_dir = root.path().join("data");
    let users = (events / 150).max(20).to_string();
    let repositories = (events / 50).max(60).to_string();
    let record_ops = events.to_string();
    let generate = ["dev", "gen", "--seed", "7", "--users", &users, "--repositories", &repositories, "--events"];
    atcr_ok(&data_dir, &[&generate[..], &[record_ops.as_str(), "--into"]].concat())?;
    let status: Value = serde_json::from_str(&atcr_ok(&data_dir, &["status"])?)?;
    let events = status["log"]["next_offset"].as_u64().context("no next_offset in atcr status")?;

    // 1. Views built live by serve.
    let server = Server::start(&data_dir, root.path().join("serve-1.log")).await?;
    server.wait_checkpoint(events, Duration::from_secs(120)).await?;
    let live_answers = answers(&server).await?;

    // --verify needs the live views, which serve holds: a clear refusal, not a wrong answer.
    let refused = atcr(&data_dir, &["replay", "--verify"])?;
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("atcr serve") && message.contains("stop it first"), "{message}");
    server.stop()?;

    // 2. A rebuild equals the live views, table by table.
    let verified = atcr_ok(&data_dir, &["replay", "--verify"])?;
    assert!(verified.contains("registry: zero differences"), "{verified}");
    for table in ["identities", "handles", "repositories", "manifests", "tags", "checkpoints"] {
        assert!(verified.contains(&format!("  {table}: ok (")), "{table} missing from:\n{verified}");
    }

    // 3. Delete the projection files and restart: rebuilt, same answers byte for byte.
    std::fs::remove_dir_all(data_dir.join("views"))?;
    let server = Server::start(&data_dir, root.path().join("serve-2.log")).await?;
    server.wait_checkpoint(events, Duration::from_secs(120)).await?;
    assert_same(&live_answers, &answers(&server).await?, "after deleting the views");
    let build_before = server.metric("atcr_views_build").await?.context("no build metric")?;

    // 4. A replay while serving: requests keep succeeding through the flip; serve swaps to the
    //    new build and deletes the old one.
    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (server, stop, served, failed) = (server.clone(), stop.clone(), served.clone(), failed.clone());
        let expected_catalog = live_answers[0].2.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match server.get("/v2/_catalog?n=1000000").await {
                    Ok((200, body)) if body == expected_catalog => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    let replayed = atcr_ok(&data_dir, &["replay"])?;
    assert!(replayed.contains("is live"), "{replayed}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("atcr_views_build").await? == Some(build_before) {
        ensure!(Instant::now() < deadline, "serve did not swap to the replayed build:\n{}", server.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await?;
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed or changed during the flip");
    assert!(served.load(Ordering::Relaxed) > 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry_builds(&data_dir).len() != 1 {
        ensure!(Instant::now() < deadline, "old build not deleted: {:?}", registry_builds(&data_dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_same(&live_answers, &answers(&server).await?, "after a replay while serving");
    let Ok(server) = Arc::try_unwrap(server) else { bail!("server still shared") };
    server.stop()?;

    // 5. Snapshot and restore: a new build from the file, the same answers.
    let snapshot = root.path().join("registry.snapshot");
    let written = atcr_ok(&data_dir, &["replay", "snapshot", "--out", &snapshot.display().to_string()])?;
    assert!(written.contains(&format!("at offset {events}")), "{written}");
    let restored = atcr_ok(&data_dir, &["replay", "restore", &snapshot.display().to_string()])?;
    assert!(restored.contains("now live"), "{restored}");
    let server = Server::start(&data_dir, root.path().join("serve-3.log")).await?;
    server.wait_checkpoint(events, Duration::from_secs(30)).await?;
    assert_same(&live_answers, &answers(&server).await?, "after a snapshot restore");
    server.stop()?;

    // 6. The same through S3 (s3s-fs, which checks SigV4 and presigned-URL expiry).
    let Some(config) = s3_snapshot_config(root.path()).await? else { return Ok(()) };
    let config = config.display().to_string();
    let uploaded = atcr_ok(&data_dir, &["--config", &config, "replay", "snapshot", "--to-s3"])?;
    assert!(uploaded.contains("snapshots/registry-latest names it"), "{uploaded}");
    let restored = atcr_ok(&data_dir, &["--config", &config, "replay", "restore", "--from-s3"])?;
    assert!(restored.contains("snapshots/registry-v") && restored.contains("now live"), "{restored}");
    let server = Server::start(&data_dir, root.path().join("serve-4.log")).await?;
    server.wait_checkpoint(events, Duration::from_secs(30)).await?;
    assert_same(&live_answers, &answers(&server).await?, "after a restore from S3");
    server.stop()?;
    let missing =
        atcr(&data_dir, &["--config", &config, "replay", "restore", "--from-s3", "--name", "snapshots/none"])?;
    assert!(!missing.status.success(), "restoring a missing object must fail");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no snapshot snapshots/none"));
    Ok(())
}

/// A config file with `[snapshot_s3]` pointing at a fresh bucket of the test-all S3 server, or
/// `None` (with a SKIP line) when it is not running.
async fn s3_snapshot_config(root: &Path) -> Result<Option<PathBuf>> {
    let bucket = format!("atcr-snapshots-{}", std::process::id());
    let Some(s3) = TestBucket::create("S3 snapshot part", &bucket).await? else { return Ok(None) };
    let path = root.join("snapshot-s3.toml");
    std::fs::write(&path, s3.toml_section("[snapshot_s3]", "views/"))?;
    Ok(Some(path))
}
