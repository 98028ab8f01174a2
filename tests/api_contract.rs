//! The JSON API's contract against the real binary: `atcr demo` on loopback serves
//! `/api/openapi.json`; `openapi-spec-validator` (PyPI) says the document is valid OpenAPI 3.1,
//! and `schemathesis` (PyPI) property-tests every documented operation (but the endless SSE
//! stream) and finds no 5xx, no response that violates its schema, no undocumented status or
//! content type, and no schema-violating request accepted.
//!
//! The tools live in a venv that `fixtures/api-tools/setup.sh` installs (fixtures/test-all.sh
//! runs it): `$ATCR_API_TOOLS`, else `~/.cache/atcr/api-tools/venv/bin`. Without them each test
//! prints a SKIP line and passes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ATCR: &str = env!("CARGO_BIN_EXE_atcr");

struct Demo {
    child: Child,
    port: u16,
    _data_dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A tiny blocking HTTP/1.1 GET over loopback: status and body.
fn get(port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response.windows(4).position(|window| window == b"\r\n\r\n").unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((status, response.get(split + 4..).unwrap_or_default().to_vec()))
}

fn start_demo() -> Demo {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let child = Command::new(ATCR)
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn atcr demo");
    let demo = Demo { child, port, _data_dir: data_dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ready when the views serve a demo user (ingest, enrichment and views have caught up).
    while Instant::now() < deadline {
        if let Ok((200, _)) = get(port, "/api/v1/users/alice.test") {
            return demo;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("atcr demo did not serve /api/v1/users/alice.test within 60 s");
}

/// The venv's bin directory when it holds `tool`; prints a SKIP line otherwise.
fn api_tool(tool: &str) -> Option<PathBuf> {
    let bin = match std::env::var_os("ATCR_API_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = std::env::var_os("ATCR_CACHE")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/atcr")))?;
            cache.join("api-tools/venv/bin")
        }
    };
    let path = bin.join(tool);
    if path.is_file() {
        Some(path)
    } else {
        println!("SKIP: {} not installed (fixtures/api-tools/setup.sh installs it)", path.display());
        None
    }
}

#[test]
fn the_served_document_is_valid_openapi() {
    let Some(validator) = api_tool("openapi-spec-validator") else { return };
    let demo = start_demo();
    let (status, body) = get(demo.port, "/api/openapi.json").expect("openapi.json");
    assert_eq!(status, 200);
    let document: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.1")), "{}", document["openapi"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, &body).expect("write");
    let output = Command::new(validator).arg(&file).output().expect("run openapi-spec-validator");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("openapi-spec-validator: {}", stdout.trim());
    assert!(output.status.success(), "invalid document:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(": OK"), "{stdout}");
}

#[test]
fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    let Some(schemathesis) = api_tool("schemathesis") else { return };
    let demo = start_demo();
    let base = format!("http://127.0.0.1:{}", demo.port);
    let reports = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let output = Command::new(schemathesis)
        .current_dir(reports.path())
        .args(["run", &format!("{base}/api/openapi.json"), "--url", &base])
        // The live stream never ends; tests/pds_sse.rs and web/tests/live.rs cover it.
        .args(["--exclude-path", "/api/v1/events"])
        // Every check but `positive_data_acceptance`: an opaque `cursor` is any string to the
        // schema, yet one the server never issued is rightly a 400.
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        // Bounded: ~600 requests, a few seconds on loopback; the same cases every run. (No
        // `--max-time`: schemathesis treats it as a budget to fill and fuzzes until it is spent.)
        .args(["--max-examples", "20", "--seed", "1", "--request-timeout", "10"])
        .args(["--no-color", "--report-dir", "reports"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> =
        stdout.lines().filter(|line| line.contains("generated") || line.contains("passed")).collect();
    println!("schemathesis in {:.1} s: {}", started.elapsed().as_secs_f64(), summary.join(" | ").trim());
    assert!(output.status.success(), "schemathesis failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("passed") && !stdout.contains(" failed"), "{stdout}");
}
