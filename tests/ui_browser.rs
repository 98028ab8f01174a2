//! The web UI in a real browser: headless Chromium (Debian's `chromium`) driven by playwright-core
//! (`fixtures/browser/ui-test.mjs`, run through `fixtures/browser/run.sh`).
//!
//! - [`demo_ui_in_chromium`]: `atcr demo` on a free loopback port; home, search with a filter and
//!   a sort (live, htmx), user, repository, tag and manifest pages, the dark-mode toggle (and that
//!   it is remembered), 404s, phone width, keyboard basics, no console errors. Screenshots go to
//!   `target/test-output/screenshots/` (or `$ATCR_TEST_OUTPUT/screenshots`).
//! - [`hostile_readme_and_annotations_render_inert`]: a repository published through the
//!   reference PDS whose README (`io.atcr.repo.page`) and OCI annotations carry `<script>`,
//!   event-handler attributes and `javascript:` links; the browser must open no dialog and run
//!   none of them (each payload sets `window.__pwned`). Needs `ATCR_TEST_PDS_URL`.
//!
//! Each test prints one SKIP line and passes when chromium, node or the PDS is not available.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use support::{ATCR_BIN, Atcr, OCI_MANIFEST, Pds, free_port, now_datetime, pds_url_or_skip, plc_url, sha256_hex};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn screenshots_dir(name: &str) -> PathBuf {
    let output = std::env::var_os("ATCR_TEST_OUTPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/test-output"));
    output.join("screenshots").join(name)
}

fn chromium_or_skip() -> bool {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if std::path::Path::new(&chromium).exists() {
        return true;
    }
    println!("SKIP: no chromium at {chromium} (fixtures/test-all.sh installs Debian's chromium)");
    false
}

/// Runs the browser script; `Ok(false)` when it skipped (no node).
fn run_browser(base_url: &str, screenshots: &PathBuf, extra_env: &[(&str, &str)]) -> Result<bool> {
    std::fs::create_dir_all(screenshots)?;
    let mut command = Command::new("bash");
    command
        .arg(repo_root().join("fixtures/browser/run.sh"))
        .env("ATCR_UI_URL", base_url)
        .env("ATCR_UI_SCREENSHOTS", screenshots);
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let output = command.output().context("running fixtures/browser/run.sh")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    if output.status.code() == Some(3) && stdout.contains("SKIP") {
        return Ok(false);
    }
    ensure!(
        output.status.success(),
        "browser tests failed ({}); screenshots in {}\nstderr:\n{stderr}",
        output.status,
        screenshots.display()
    );
    ensure!(stdout.contains(" passed, 0 failed"), "no summary line from the browser script:\n{stdout}");
    println!("screenshots: {}", screenshots.display());
    Ok(true)
}

/// A tiny blocking HTTP GET over loopback: status and body.
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((status, text))
}

struct Demo {
    child: std::process::Child,
    _data_dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn demo_ui_in_chromium() -> Result<()> {
    if !chromium_or_skip() {
        return Ok(());
    }
    let data_dir = tempfile::tempdir()?;
    let port = free_port()?;
    let child = Command::new(ATCR_BIN)
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir.path())
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let _demo = Demo { child, _data_dir: data_dir };
    // Ready when the last repositories of the recording have their pages.
    let deadline = Instant::now() + Duration::from_secs(90);
    let ready_pages =
        ["/r/carol.test/ml/notebook/-/tag/latest", "/r/alice.test/hello/-/tag/v1.1.0", "/r/bob.test/tools/cli"];
    while !ready_pages.iter().all(|path| matches!(get(port, path), Ok((200, _)))) {
        ensure!(Instant::now() < deadline, "atcr demo did not serve {ready_pages:?} within 90 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ran = run_browser(
        &format!("http://127.0.0.1:{port}"),
        &screenshots_dir("demo"),
        &[("ATCR_UI_DEMO", "1"), ("ATCR_UI_REQUIRE_SEARCH", "1")],
    )?;
    if !ran {
        println!("SKIP: the browser tests did not run (see above)");
    }
    Ok(())
}

/// What every payload does when it runs: set the sentinel the browser script checks, and alert.
const SCRIPT: &str = "<script>window.__pwned='script';alert(1)</script>";
const IMG: &str = "<img src=x onerror=\"window.__pwned='img';alert(2)\">";
const LINK: &str = "[click](javascript:window.__pwned='link';alert(3))";
const SVG: &str = "<svg onload=\"window.__pwned='svg';alert(4)\"></svg>";

fn hostile_readme() -> String {
    format!(
        "# Totally normal image\n\n{SCRIPT}\n\n{IMG}\n\n{LINK}\n\n{SVG}\n\n\
         <a href=\"javascript:window.__pwned='html-link'\">html link</a>\n\n\
         <div onmouseover=\"window.__pwned='hover'\" style=\"position:fixed;inset:0\">hover me</div>\n"
    )
}

fn hostile_annotations() -> Value {
    json!({
        "org.opencontainers.image.title": format!("evil {SCRIPT}"),
        "org.opencontainers.image.description": format!("{IMG} {SVG}"),
        "org.opencontainers.image.source": "javascript:window.__pwned='source';alert(5)",
        "org.opencontainers.image.documentation": "javascript:alert(6)",
        "org.opencontainers.image.url": format!("https://example.com/\"><script>window.__pwned='url'</script>"),
        "com.example.note": format!("{LINK} <iframe src=\"javascript:alert(7)\"></iframe>"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_readme_and_annotations_render_inert() -> Result<()> {
    let Some(pds_url) = pds_url_or_skip() else { return Ok(()) };
    if !chromium_or_skip() {
        return Ok(());
    }
    let pds = Pds::new(&pds_url);
    let account = pds.create_account("xss").await?;
    let repository = "evil/readme";

    // An image manifest whose bytes and record both carry the hostile annotations.
    let config = json!({ "mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
        "digest": format!("sha256:{}", sha256_hex(account.did.as_bytes())) });
    let layer = json!({ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 3,
        "digest": format!("sha256:{}", sha256_hex(account.handle.as_bytes())) });
    let manifest = json!({ "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
        "layers": [layer], "annotations": hostile_annotations() });
    let bytes = serde_json::to_vec(&manifest)?;
    let hex = sha256_hex(&bytes);
    let blob = pds.upload_blob(&account, bytes, OCI_MANIFEST).await?;
    let record = json!({
        "$type": "io.atcr.manifest", "repository": repository, "digest": format!("sha256:{hex}"),
        "mediaType": OCI_MANIFEST, "schemaVersion": 2, "manifestBlob": blob, "config": config,
        "layers": [layer], "holdDid": "did:web:hold.xss.test", "annotations": hostile_annotations(),
        "createdAt": now_datetime(),
    });
    pds.create_record(&account, "io.atcr.manifest", Some(&hex), &record).await?;
    let tag = json!({ "$type": "io.atcr.tag", "repository": repository, "tag": "latest",
        "manifest": format!("at://{}/io.atcr.manifest/{hex}", account.did), "mediaType": OCI_MANIFEST,
        "updatedAt": now_datetime() });
    pds.create_record(&account, "io.atcr.tag", Some("evil~readme_latest"), &tag).await?;
    let at = now_datetime();
    let page = json!({ "$type": "io.atcr.repo.page", "repository": repository, "description": hostile_readme(),
        "createdAt": at, "updatedAt": at });
    pds.put_record(&account, "io.atcr.repo.page", "evil~readme", &page).await?;

    let mut atcr = Atcr::new("xss", &pds_url, &plc_url(&pds_url), Some(0))?;
    atcr.start(Duration::from_secs(60)).await?;
    let repository_path = format!("/r/{}/{repository}", account.handle);
    let tag_path = format!("{repository_path}/-/tag/latest");
    // Ready when the README, the annotations (from the enriched manifest) and the tag are in.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, body) = atcr.get(&repository_path).await.unwrap_or((0, String::new()));
        let (tag_status, _) = atcr.get(&tag_path).await.unwrap_or((0, String::new()));
        if status == 200
            && tag_status == 200
            && body.contains("Totally normal image")
            && body.contains("com.example.note")
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("atcr did not show {repository_path} with its README and annotations in 90 s (status {status})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let base_url = atcr.base_url();
    let paths = format!("{repository_path},{tag_path}");
    let screenshots = screenshots_dir("xss");
    let ran = tokio::task::spawn_blocking(move || {
        run_browser(&base_url, &screenshots, &[("ATCR_UI_DEMO", "0"), ("ATCR_UI_XSS_PATHS", &paths)])
    })
    .await??;
    if !ran {
        println!("SKIP: the browser tests did not run (see above)");
    }
    Ok(())
}
