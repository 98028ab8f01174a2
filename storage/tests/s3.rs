//! The S3 blob backend against a real S3-compatible server: s3s-fs, which checks SigV4
//! signatures (method, path, query, host) and presigned-URL expiry like S3 does.
//!
//! Start one with `fixtures/s3/setup.sh && export ATCR_TEST_S3_ENDPOINT="$(fixtures/s3/start.sh)"`
//! and export `ATCR_TEST_S3_ACCESS_KEY` / `ATCR_TEST_S3_SECRET_KEY` (fixtures/s3/env.sh has the
//! server's test credentials); without them each test that needs the server prints one
//! `SKIP: …` line and passes. Each test makes its own bucket, so they run in parallel.
//! Loopback only: the endpoint must be on 127.0.0.0/8 or [::1].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use atcr_storage::blobs::{BlobAccess, BlobBackend, BlobMethod, S3Backend, S3Config, S3Error};
use aws_sdk_s3::primitives::ByteStream;
use sha2::{Digest, Sha256};

const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

struct TestServer {
    endpoint: String,
    access_key: String,
    secret_key: String,
}

fn test_server(test: &str) -> Option<TestServer> {
    let variables = ["ATCR_TEST_S3_ENDPOINT", "ATCR_TEST_S3_ACCESS_KEY", "ATCR_TEST_S3_SECRET_KEY"];
    let values: Vec<Option<String>> =
        variables.iter().map(|name| std::env::var(name).ok().filter(|value| !value.is_empty())).collect();
    let [Some(endpoint), Some(access_key), Some(secret_key)] = <[Option<String>; 3]>::try_from(values).unwrap() else {
        println!("SKIP: {test}: set {} (fixtures/s3/start.sh) to run it against s3s-fs", variables.join(", "));
        return None;
    };
    let host = endpoint.trim_start_matches("http://").split(['/', ':']).next().unwrap_or_default();
    let loopback = endpoint.starts_with("http://127.") || endpoint.starts_with("http://[::1]") || host == "localhost";
    assert!(loopback, "ATCR_TEST_S3_ENDPOINT must be a plain-http loopback url, not {endpoint}");
    Some(TestServer { endpoint: endpoint.trim_end_matches('/').to_string(), access_key, secret_key })
}

impl TestServer {
    /// A path-style configuration for a bucket of its own, named after the test.
    fn config(&self, test: &str) -> S3Config {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let bucket = format!("atcr-{test}-{}-{nanos}", std::process::id()).replace('_', "-");
        let mut config = S3Config::new(&self.endpoint, bucket, &self.access_key, &self.secret_key);
        config.path_style = true;
        config.key_prefix = "registry/".to_string();
        config
    }
}

/// The SDK client that uploads (the backend itself only presigns): same endpoint, region,
/// credentials and addressing, plus a plain-HTTP client for the loopback server.
fn uploader(config: &S3Config) -> aws_sdk_s3::Client {
    let sdk_config =
        config.sdk_config().to_builder().http_client(aws_smithy_http_client::Builder::new().build_http()).build();
    aws_sdk_s3::Client::from_conf(sdk_config)
}

fn http_client() -> reqwest::Client {
    // ring, like src/main.rs (deprecated in rustls only for lacking post-quantum key exchange)
    #[allow(deprecated)]
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Deterministic, incompressible-looking bytes and their digest.
fn blob(seed: u8, length: usize) -> (Vec<u8>, String) {
    let mut bytes = Vec::with_capacity(length);
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
    (bytes, digest)
}

/// Creates the config's bucket and uploads `bytes` at the blob's key.
async fn upload(config: &S3Config, digest: &str, bytes: &[u8]) {
    let client = uploader(config);
    client.create_bucket().bucket(&config.bucket).send().await.expect("create bucket");
    let key = config.object_key(digest).unwrap();
    assert_eq!(key, format!("registry/sha256/{}", &digest["sha256:".len()..]));
    client
        .put_object()
        .bucket(&config.bucket)
        .key(&key)
        .content_type(LAYER_MEDIA_TYPE)
        .body(ByteStream::from(bytes.to_vec()))
        .send()
        .await
        .map_err(aws_sdk_s3::error::DisplayErrorContext)
        .expect("put object");
}

fn redirect_url(backend: &BlobBackend, digest: &str, method: BlobMethod) -> String {
    match backend.locate(digest, method) {
        Some(BlobAccess::Redirect(url)) => url,
        other => panic!("an s3 backend answers with a redirect, not {other:?}"),
    }
}

/// The status and the S3 error code (`<Code>…</Code>`) of a refused GET.
async fn refused_get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let code = body
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| code.to_string())
        .unwrap_or(body);
    (status, code)
}

#[tokio::test]
async fn presigned_get_and_head_urls_serve_the_uploaded_blob() {
    let Some(server) = test_server("presigned_get_and_head_urls_serve_the_uploaded_blob") else { return };
    let config = server.config("get-head");
    let (bytes, digest) = blob(1, 300_000);
    upload(&config, &digest, &bytes).await;
    let backend = BlobBackend::S3(S3Backend::new(config.clone()).unwrap());
    let client = http_client();

    let get_url = redirect_url(&backend, &digest, BlobMethod::Get);
    assert!(get_url.starts_with(&format!("{}/{}/registry/sha256/", server.endpoint, config.bucket)), "{get_url}");
    let response = client.get(&get_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], bytes.len().to_string().as_str());
    assert_eq!(response.headers()["content-type"], LAYER_MEDIA_TYPE);
    let body = response.bytes().await.unwrap();
    assert_eq!(format!("sha256:{:x}", Sha256::digest(&body)), digest);
    assert_eq!(body.as_ref(), bytes.as_slice());

    // Range is not signed: clients that resume a layer download can use the same URL.
    let response = client.get(&get_url).header("range", "bytes=1000-1999").send().await.unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &bytes[1000..2000]);

    let head_url = redirect_url(&backend, &digest, BlobMethod::Head);
    assert_ne!(head_url, get_url);
    let response = client.head(&head_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], bytes.len().to_string().as_str());
    assert_eq!(response.headers()["content-type"], LAYER_MEDIA_TYPE);
    assert!(response.bytes().await.unwrap().is_empty());

    // The backend does not know what the bucket holds: a blob that is not there is S3's 404.
    let (_, missing) = blob(2, 10);
    let (status, code) = refused_get(&client, &redirect_url(&backend, &missing, BlobMethod::Get)).await;
    assert_eq!((status, code.as_str()), (404, "NoSuchKey"));
}

#[tokio::test]
async fn a_url_signed_for_one_method_is_refused_for_the_other() {
    let Some(server) = test_server("a_url_signed_for_one_method_is_refused_for_the_other") else { return };
    let config = server.config("method");
    let (bytes, digest) = blob(3, 1000);
    upload(&config, &digest, &bytes).await;
    let backend = S3Backend::new(config).unwrap();
    let client = http_client();

    // s3s-fs, like S3, signs the method into the canonical request: 403 SignatureDoesNotMatch
    // (a HEAD answer has no body, so only the status is seen there).
    let get_url = backend.presign_get(&digest).unwrap();
    let response = client.head(&get_url).send().await.unwrap();
    assert_eq!(response.status(), 403, "a GET-signed url used for HEAD");
    let head_url = backend.presign_head(&digest).unwrap();
    let (status, code) = refused_get(&client, &head_url).await;
    assert_eq!((status, code.as_str()), (403, "SignatureDoesNotMatch"), "a HEAD-signed url used for GET");

    // Each works for its own method.
    assert_eq!(client.get(&get_url).send().await.unwrap().status(), 200);
    assert_eq!(client.head(&head_url).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_expired_presigned_url_is_refused() {
    let Some(server) = test_server("an_expired_presigned_url_is_refused") else { return };
    let mut config = server.config("expiry");
    let (bytes, digest) = blob(4, 1000);
    upload(&config, &digest, &bytes).await;
    config.presign_expiry = Duration::from_secs(1);
    let backend = S3Backend::new(config).unwrap();
    let get_url = backend.presign_get(&digest).unwrap();
    let head_url = backend.presign_head(&digest).unwrap();
    assert!(get_url.contains("X-Amz-Expires=1&"), "{get_url}");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let client = http_client();
    let response = client.get(&get_url).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let body = response.text().await.unwrap();
    assert!(body.contains("<Code>AccessDenied</Code>") && body.contains("expired"), "{body}");
    assert_eq!(client.head(&head_url).send().await.unwrap().status(), 403);
}

#[tokio::test]
async fn urls_signed_with_wrong_credentials_or_altered_are_refused() {
    let Some(server) = test_server("urls_signed_with_wrong_credentials_or_altered_are_refused") else { return };
    let config = server.config("credentials");
    let (bytes, digest) = blob(5, 1000);
    upload(&config, &digest, &bytes).await;
    let client = http_client();

    let mut wrong_secret = config.clone();
    wrong_secret.secret_access_key.push('x');
    let url = S3Backend::new(wrong_secret).unwrap().presign_get(&digest).unwrap();
    let (status, code) = refused_get(&client, &url).await;
    assert_eq!((status, code.as_str()), (403, "SignatureDoesNotMatch"), "wrong secret");
    let url = S3Backend::new(config.clone()).unwrap().presign_head(&digest).unwrap();
    assert_eq!(client.head(&url).send().await.unwrap().status(), 200, "the right secret");

    let mut unknown_key = config.clone();
    unknown_key.access_key_id = "nobody".to_string();
    let url = S3Backend::new(unknown_key).unwrap().presign_get(&digest).unwrap();
    assert_eq!(refused_get(&client, &url).await.0, 403, "unknown access key");

    // The key is signed: a URL for one blob cannot be bent to another key.
    let (other_bytes, other_digest) = blob(6, 1000);
    uploader(&config)
        .put_object()
        .bucket(&config.bucket)
        .key(config.object_key(&other_digest).unwrap())
        .body(ByteStream::from(other_bytes))
        .send()
        .await
        .unwrap();
    let url = S3Backend::new(config).unwrap().presign_get(&digest).unwrap();
    let bent = url.replace(&digest["sha256:".len()..], &other_digest["sha256:".len()..]);
    assert_ne!(bent, url);
    assert_eq!(refused_get(&client, &bent).await, (403, "SignatureDoesNotMatch".to_string()));
}

/// Needs no server: nothing but an exact `sha256:<64 lowercase hex>` ever becomes a key or URL.
#[test]
fn traversal_shaped_digests_never_produce_a_url() {
    let mut config = S3Config::new("http://127.0.0.1:9", "blobs", "access", "secret");
    config.path_style = true;
    let backend = S3Backend::new(config).unwrap();
    let locator = BlobBackend::S3(backend.clone());
    let hex = "ab".repeat(32);
    let digests = [
        "sha256:../../../etc/passwd".to_string(),
        "sha256:..%2F..%2Fetc%2Fpasswd".to_string(),
        format!("sha256:../{}", &hex[..61]),
        format!("sha256:{}/..", &hex[..62]),
        format!("sha256:{}?x=", &hex[..61]),
        format!("sha256:{}#", &hex[..63]),
        format!("sha256:{hex}/../../other-bucket/key"),
        format!("sha256:{}", hex.to_uppercase()),
        format!("sha256:{hex}\0"),
        format!("sha256/{hex}"),
        format!("sha256:sha256:{hex}"),
        format!("../sha256:{hex}"),
        hex.clone(),
    ];
    for digest in &digests {
        assert!(matches!(backend.presign_get(digest), Err(S3Error::InvalidDigest(_))), "{digest:?}");
        assert!(matches!(backend.presign_head(digest), Err(S3Error::InvalidDigest(_))), "{digest:?}");
        for method in [BlobMethod::Get, BlobMethod::Head] {
            assert_eq!(locator.locate(digest, method), None, "{digest:?}");
        }
    }
    assert!(backend.presign_get(&format!("sha256:{hex}")).is_ok());
}
