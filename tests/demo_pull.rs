//! `atcr demo` serves pullable images: real OCI clients (skopeo, and the Rust `oci-client`
//! crate) pull by tag and by digest, single-arch and multi-arch, and get exactly the digests
//! recorded in `fixtures/demo/summary.json`. Also the pull path's errors and its refusal to
//! serve corrupted bytes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod clients;

use clients::{has_tool, oci_client_pull, podman_pull, skopeo_pull};

const ATCR: &str = env!("CARGO_BIN_EXE_atcr");

struct Demo {
    child: Child,
    port: u16,
    data_dir: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_demo() -> Demo {
    let data_dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(ATCR)
        .args(["demo", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data_dir.path())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let demo = Demo { child, port, data_dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    // Ready when a manifest resolves (ingest, enrichment and views have caught up).
    while Instant::now() < deadline {
        if let Ok((200, _, _)) = get(port, "/v2/alice.test/hello/manifests/latest", &[]) {
            return demo;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("atcr demo did not serve alice.test/hello:latest within 60 s");
}

/// Status, headers (names lowercased) and body of a response.
type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// A tiny blocking HTTP/1.1 GET over loopback.
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Response> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response.windows(4).position(|window| window == b"\r\n\r\n").unwrap_or(response.len());
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let body = response.get(split + 4..).unwrap_or_default().to_vec();
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|code| code.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    Ok((status, headers, body))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

fn summary() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo/summary.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The recorded digest of the live manifest `owner/repository` tagged `tag`
/// (`expected.repositories[].tags` in summary.json).
fn expected_digest(owner: &str, repository: &str, tag: &str) -> String {
    let summary = summary();
    let repositories = summary["expected"]["repositories"].as_array().cloned().unwrap_or_default();
    repositories
        .iter()
        .find(|entry| entry["owner"] == owner && entry["repository"] == repository)
        .and_then(|entry| entry["tags"][tag].as_str())
        .unwrap_or_else(|| panic!("summary.json expects no {owner}/{repository}:{tag}"))
        .to_string()
}

#[test]
fn skopeo_pulls_single_and_multi_arch_images_by_tag_and_digest() {
    if !has_tool("skopeo") {
        return;
    }
    let demo = start_demo();
    let out = tempfile::tempdir().unwrap();
    let pull = |reference: &str, layout: &str, all: bool| {
        skopeo_pull(&format!("127.0.0.1:{}/{reference}", demo.port), &out.path().join(layout), all)
    };
    let hello = expected_digest("alice.test", "hello", "latest");
    assert_eq!(pull("alice.test/hello:latest", "hello-tag", false), hello);
    assert_eq!(pull(&format!("alice.test/hello@{hello}"), "hello-digest", false), hello);
    let index = expected_digest("alice.test", "web/nginx-mini", "latest");
    assert_eq!(pull("alice.test/web/nginx-mini:latest", "nginx-all", true), index, "multi-arch index, all platforms");
    // Every platform's manifest and layers were fetched into the layout.
    let blobs = std::fs::read_dir(out.path().join("nginx-all/blobs/sha256")).unwrap().count();
    assert!(blobs >= 7, "index + 2 manifests + configs + layers, got {blobs}");
}

#[test]
fn pull_path_errors_use_oci_codes() {
    let demo = start_demo();
    let cases = [
        ("/v2/nobody.test/hello/manifests/latest", 404, "NAME_UNKNOWN"),
        ("/v2/alice.test/hello/manifests/no-such-tag", 404, "MANIFEST_UNKNOWN"),
        (
            "/v2/alice.test/hello/manifests/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/alice.test/hello/manifests/sha256:nothex", 400, "DIGEST_INVALID"),
        ("/v2/alice.test/hello/blobs/sha256:zz", 400, "DIGEST_INVALID"),
        (
            "/v2/alice.test/hello/blobs/sha256:1111111111111111111111111111111111111111111111111111111111111111",
            404,
            "BLOB_UNKNOWN",
        ),
        ("/v2/alice.test/Hello/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/alice.test/../../../etc/passwd/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/alice.test/hello/manifests/..%2f..%2fetc", 400, "MANIFEST_INVALID"),
        ("/v2/alice.test/hello/blobs/uploads/", 405, "UNSUPPORTED"),
    ];
    for (path, status, code) in cases {
        let (actual, headers, body) = get(demo.port, path, &[]).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert_eq!(actual, status, "{path}: {body}");
        assert_eq!(body["errors"][0]["code"], code, "{path}");
        assert_eq!(header(&headers, "docker-distribution-api-version"), Some("registry/2.0"), "{path}");
    }
    // A layer of the image: streamed from the local hold, with Range.
    let (_, _, manifest) = get(demo.port, "/v2/alice.test/hello/manifests/latest", &[]).unwrap();
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let (status, headers, body) =
        get(demo.port, &format!("/v2/alice.test/hello/blobs/{layer}"), &[("Range", "bytes=0-9")]).unwrap();
    assert_eq!((status, body.len()), (206, 10));
    assert_eq!(header(&headers, "docker-content-digest"), Some(layer));
    // A layer only alice's hello references is not served through bob's hello (other layers
    // of the demo are shared on purpose, like real base layers).
    let unique = manifest["layers"][1]["digest"].as_str().unwrap();
    let (status, _, _) = get(demo.port, &format!("/v2/alice.test/hello/blobs/{unique}"), &[]).unwrap();
    assert_eq!(status, 200);
    let (status, _, body) = get(demo.port, &format!("/v2/bob.test/hello/blobs/{unique}"), &[]).unwrap();
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn corrupted_manifest_bytes_are_never_served() {
    let demo = start_demo();
    let digest = expected_digest("bob.test", "tools/cli", "latest");
    let stored = demo.data_dir.path().join("demo/content/sha256").join(&digest["sha256:".len()..]);
    assert!(stored.exists(), "enrichment stored {digest} at {}", stored.display());
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&stored, &bytes).unwrap();
    let (status, _, body) = get(demo.port, "/v2/bob.test/tools/cli/manifests/latest", &[]).unwrap();
    assert_eq!(status, 500, "{}", String::from_utf8_lossy(&body));
    assert!(!body.windows(bytes.len().min(20)).any(|window| window == &bytes[..bytes.len().min(20)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_oci_client_pulls_by_tag_and_digest() {
    let demo = tokio::task::spawn_blocking(start_demo).await.unwrap();
    let hello = expected_digest("alice.test", "hello", "latest");
    let name = format!("127.0.0.1:{}/alice.test/hello", demo.port);
    assert_eq!(oci_client_pull(&format!("{name}:latest")).await, hello);
    assert_eq!(oci_client_pull(&format!("{name}@{hello}")).await, hello);
    let index = expected_digest("alice.test", "web/nginx-mini", "latest");
    assert_eq!(oci_client_pull(&format!("127.0.0.1:{}/alice.test/web/nginx-mini:latest", demo.port)).await, index);
    let (_, _, body) = get(demo.port, &format!("/v2/alice.test/web/nginx-mini/manifests/{index}"), &[]).unwrap();
    let index: Value = serde_json::from_slice(&body).unwrap();
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| format!("{}/{}", entry["platform"]["os"], entry["platform"]["architecture"]).replace('"', ""))
        .collect();
    assert!(platforms.contains(&"linux/amd64".into()) && platforms.contains(&"linux/arm64".into()), "{platforms:?}");
}

#[test]
fn podman_pulls_by_tag_and_digest() {
    if !has_tool("podman") {
        return;
    }
    let demo = start_demo();
    let store = tempfile::tempdir().unwrap();
    let hello = expected_digest("alice.test", "hello", "latest");
    for reference in [
        format!("127.0.0.1:{}/alice.test/hello:latest", demo.port),
        format!("127.0.0.1:{}/alice.test/hello@{hello}", demo.port),
    ] {
        assert_eq!(podman_pull(store.path(), &reference), hello);
    }
}
