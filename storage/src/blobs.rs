//! Blob backends for holds atcr serves itself. Layer and config bytes normally live in a
//! hold and the pull path redirects there; for a hold configured here, atcr answers from a
//! backend instead.
//!
//! - `Filesystem`: `<root>/sha256/<hex>` files, streamed (with `Range`) by the web layer.
//! - `S3`: objects at `<key prefix>sha256/<hex>` in one bucket of an S3-compatible store; the
//!   pull path answers with a 307 to a presigned URL, signed for the request's method (a URL
//!   signed for GET is refused for HEAD by S3, and the other way round).
//!
//! Presigning is local computation (SigV4 over the URL, the method, the time and the secret
//! key): it sends nothing, needs no async runtime and never blocks, so the pull path can call
//! [`BlobBackend::locate`] from synchronous code and still does no network I/O (invariant 6).
//! The S3 backend therefore does not check that the object exists: a blob is only served in a
//! repository whose manifests reference it, and a missing object is S3's 404 at the redirect
//! target.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, IdentityCache, Region};
use aws_sdk_s3::presigning::{PresignedRequest, PresigningConfig};

use crate::records::is_sha256_digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobBackend {
    Filesystem { root: PathBuf },
    S3(S3Backend),
}

/// The HTTP method a blob is asked for with: a presigned URL is only good for the method it
/// was signed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobMethod {
    Get,
    Head,
}

/// How to hand out a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobAccess {
    /// Stream this local file.
    File(PathBuf),
    /// Redirect (307) the client to this presigned URL: good for the method it was located
    /// with, until the backend's presign expiry runs out.
    Redirect(String),
}

impl BlobBackend {
    /// Where the blob is, `None` when the backend does not have it. Only exact
    /// `sha256:<64 lowercase hex>` digests ever reach a path or an object key.
    ///
    /// Does no network I/O and never blocks on anything but the filesystem backend's `stat`:
    /// the S3 backend presigns locally and answers for any valid digest (it cannot know whether
    /// the object exists without asking S3). A presigning failure, which [`S3Backend::new`]
    /// rules out for a valid configuration, is logged and answers `None`.
    pub fn locate(&self, digest: &str, method: BlobMethod) -> Option<BlobAccess> {
        if !is_sha256_digest(digest) {
            return None;
        }
        match self {
            BlobBackend::Filesystem { root } => {
                let path = root.join("sha256").join(&digest["sha256:".len()..]);
                path.is_file().then_some(BlobAccess::File(path))
            }
            BlobBackend::S3(backend) => match backend.presign(digest, method) {
                Ok(url) => Some(BlobAccess::Redirect(url)),
                Err(error) => {
                    tracing::error!(%error, digest, bucket = %backend.config.bucket, "cannot presign a blob url");
                    None
                }
            },
        }
    }
}

/// Where and how to reach an S3-compatible bucket. Build it with [`S3Config::new`] and set the
/// other public fields as needed; [`S3Backend::new`] checks it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Base URL of the S3 API, `http://` or `https://` (e.g. `https://s3.us-east-1.amazonaws.com`,
    /// `http://127.0.0.1:9000`).
    pub endpoint: String,
    /// Signing region (`us-east-1` for most S3-compatible servers).
    pub region: String,
    pub bucket: String,
    /// Prepended to every key as it is: blobs are at `<key_prefix>sha256/<hex>`, so a prefix
    /// that names a folder ends with `/` (`"registry/"`). Empty by default; never starts
    /// with `/`.
    pub key_prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `<endpoint>/<bucket>/<key>` instead of `<bucket>.<endpoint host>/<key>`: what most
    /// self-hosted S3 servers (MinIO, Garage, s3s) need. Off by default, like the AWS SDK.
    pub path_style: bool,
    /// How long a presigned URL stays valid: 1 s to 7 days (S3's limit), 15 min by default.
    pub presign_expiry: Duration,
}

impl S3Config {
    pub const DEFAULT_PRESIGN_EXPIRY: Duration = Duration::from_secs(15 * 60);
    pub const MAX_PRESIGN_EXPIRY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

    /// A configuration with region `us-east-1`, no key prefix, virtual-hosted-style addressing
    /// and the default presign expiry.
    pub fn new(
        endpoint: impl Into<String>,
        bucket: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        S3Config {
            endpoint: endpoint.into(),
            region: "us-east-1".to_string(),
            bucket: bucket.into(),
            key_prefix: String::new(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            path_style: false,
            presign_expiry: Self::DEFAULT_PRESIGN_EXPIRY,
        }
    }

    /// The object key of a blob: `<key_prefix>sha256/<hex>`; `None` unless `digest` is exactly
    /// `sha256:<64 lowercase hex>`.
    pub fn object_key(&self, digest: &str) -> Option<String> {
        if !is_sha256_digest(digest) {
            return None;
        }
        Some(format!("{}sha256/{}", self.key_prefix, &digest["sha256:".len()..]))
    }

    /// An SDK configuration for this bucket's endpoint, region, credentials and addressing,
    /// without an HTTP client: presigning needs none. Tools and tests that talk to the bucket
    /// add one (`config.sdk_config().to_builder().http_client(…).build()`).
    pub fn sdk_config(&self) -> aws_sdk_s3::Config {
        let credentials = Credentials::new(&self.access_key_id, &self.secret_access_key, None, None, "atcr-s3-config");
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new(self.region.clone()))
            .credentials_provider(credentials)
            // Static credentials need no cache; the default (lazy) cache would also want a
            // tokio timer when it loads them.
            .identity_cache(IdentityCache::no_cache())
            .force_path_style(self.path_style)
            .build()
    }

    /// The object key of a named object atcr keeps beside blobs (`<key_prefix><name>`, e.g.
    /// `snapshots/registry-v3-000000000042.atcrsnap`); `None` for a name that is empty, absolute,
    /// has an empty, `.` or `..` segment, or a character outside `[A-Za-z0-9._-]` and `/`.
    pub fn named_object_key(&self, name: &str) -> Option<String> {
        let segments_ok = name.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
        });
        if name.is_empty() || name.len() > 512 || !segments_ok {
            return None;
        }
        Some(format!("{}{name}", self.key_prefix))
    }

    fn check(&self) -> Result<(), S3Error> {
        let invalid = |reason: String| Err(S3Error::Config(reason));
        if !(self.endpoint.starts_with("http://") || self.endpoint.starts_with("https://")) {
            return invalid(format!("endpoint {:?} is not an http:// or https:// url", self.endpoint));
        }
        if self.region.trim().is_empty() {
            return invalid("region is empty".to_string());
        }
        if self.bucket.trim().is_empty() {
            return invalid("bucket is empty".to_string());
        }
        if self.key_prefix.starts_with('/') {
            return invalid(format!("key prefix {:?} starts with /", self.key_prefix));
        }
        if self.access_key_id.is_empty() || self.secret_access_key.is_empty() {
            return invalid("access key id and secret access key are required".to_string());
        }
        if self.presign_expiry < Duration::from_secs(1) || self.presign_expiry > Self::MAX_PRESIGN_EXPIRY {
            return invalid(format!("presign expiry {:?} is outside 1 s to 7 days", self.presign_expiry));
        }
        Ok(())
    }
}

/// Never prints the secret key.
impl fmt::Debug for S3Config {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("key_prefix", &self.key_prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("path_style", &self.path_style)
            .field("presign_expiry", &self.presign_expiry)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("invalid s3 blob backend configuration: {0}")]
    Config(String),
    #[error("not a sha256 digest: {0:?}")]
    InvalidDigest(String),
    #[error("not a valid object name: {0:?}")]
    InvalidName(String),
    #[error("cannot presign {key}: {reason}")]
    Presign { key: String, reason: String },
}

/// Blobs in an S3-compatible bucket, handed out as presigned URLs. Cheap to clone (the SDK
/// client is reference-counted); equal when the configurations are.
#[derive(Clone)]
pub struct S3Backend {
    config: S3Config,
    client: aws_sdk_s3::Client,
}

impl S3Backend {
    /// Checks the configuration and presigns once, so that a bad endpoint or expiry fails at
    /// startup rather than on a pull. Sends nothing.
    pub fn new(config: S3Config) -> Result<S3Backend, S3Error> {
        config.check()?;
        let client = aws_sdk_s3::Client::from_conf(config.sdk_config());
        let backend = S3Backend { config, client };
        let probe = format!("sha256:{}", "0".repeat(64));
        backend.presign_get(&probe)?;
        Ok(backend)
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// A presigned `GET` URL for the blob (the bytes), valid for the presign expiry. No network.
    pub fn presign_get(&self, digest: &str) -> Result<String, S3Error> {
        self.presign(digest, BlobMethod::Get)
    }

    /// A presigned `HEAD` URL for the blob (size and type without the bytes). No network.
    pub fn presign_head(&self, digest: &str) -> Result<String, S3Error> {
        self.presign(digest, BlobMethod::Head)
    }

    /// A URL presigned for `method`; only exact `sha256:<64 lowercase hex>` digests become keys.
    pub fn presign(&self, digest: &str, method: BlobMethod) -> Result<String, S3Error> {
        let key = self.config.object_key(digest).ok_or_else(|| S3Error::InvalidDigest(digest.to_string()))?;
        let operation = match method {
            BlobMethod::Get => Operation::Get,
            BlobMethod::Head => Operation::Head,
        };
        self.presign_key(key, operation)
    }

    /// A URL presigned for reading or writing the named object (see
    /// [`S3Config::named_object_key`]): how whole files such as view snapshots go to and come
    /// from the bucket with any HTTP client. No network.
    pub fn presign_object(&self, name: &str, method: ObjectMethod) -> Result<String, S3Error> {
        let key = self.config.named_object_key(name).ok_or_else(|| S3Error::InvalidName(name.to_string()))?;
        let operation = match method {
            ObjectMethod::Get => Operation::Get,
            ObjectMethod::Put => Operation::Put,
        };
        self.presign_key(key, operation)
    }

    /// The one presigning path for blobs and named objects, with the presign expiry.
    fn presign_key(&self, key: String, operation: Operation) -> Result<String, S3Error> {
        let presign_error = |reason: String| S3Error::Presign { key: key.clone(), reason };
        let expiry = PresigningConfig::expires_in(self.config.presign_expiry)
            .map_err(|error| presign_error(error.to_string()))?;
        let (bucket, client) = (&self.config.bucket, &self.client);
        let presigned = match operation {
            Operation::Get => resolve_without_runtime(client.get_object().bucket(bucket).key(&key).presigned(expiry))
                .map(|result| result.map_err(sdk_error_text)),
            Operation::Head => resolve_without_runtime(client.head_object().bucket(bucket).key(&key).presigned(expiry))
                .map(|result| result.map_err(sdk_error_text)),
            Operation::Put => resolve_without_runtime(client.put_object().bucket(bucket).key(&key).presigned(expiry))
                .map(|result| result.map_err(sdk_error_text)),
        };
        let presigned: PresignedRequest = match presigned {
            Some(Ok(presigned)) => presigned,
            Some(Err(reason)) => return Err(presign_error(reason)),
            None => return Err(presign_error("the sdk presigner did not finish without waiting".to_string())),
        };
        // A redirect carries only the URL: a request that needs extra signed headers is no use.
        if let Some((name, _)) = presigned.headers().next() {
            return Err(presign_error(format!("the presigned request needs a {name} header")));
        }
        Ok(presigned.uri().to_string())
    }
}

/// What a presigned URL for a named object may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectMethod {
    Get,
    Put,
}

/// The S3 operations atcr presigns.
#[derive(Debug, Clone, Copy)]
enum Operation {
    Get,
    Head,
    Put,
}

impl PartialEq for S3Backend {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl Eq for S3Backend {}

impl fmt::Debug for S3Backend {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("S3Backend").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The error and its sources on one line.
fn sdk_error_text(error: impl std::error::Error) -> String {
    aws_sdk_s3::error::DisplayErrorContext(error).to_string()
}

/// Polls a future once. The SDK's presigning is `async` only because it shares the request
/// pipeline with real calls; with static credentials, no identity cache and a stop before
/// transmit it awaits nothing, so it is ready on the first poll. `None` if it was not (it is
/// dropped rather than waited for, so a change in the SDK can never hang a pull).
fn resolve_without_runtime<F: Future>(future: F) -> Option<F::Output> {
    let mut context = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut context) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_config() -> S3Config {
        let mut config = S3Config::new("http://127.0.0.1:9", "blobs", "test-access", "test-secret");
        config.path_style = true;
        config.key_prefix = "registry/".to_string();
        config
    }

    fn query_parameter<'url>(url: &'url str, name: &str) -> Option<&'url str> {
        let query = url.split_once('?')?.1;
        query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    }

    #[test]
    fn filesystem_backend_finds_only_exact_digests() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(directory.path().join("sha256")).unwrap();
        let hex = "a".repeat(64);
        std::fs::write(directory.path().join("sha256").join(&hex), b"layer").unwrap();
        let backend = BlobBackend::Filesystem { root: directory.path().to_path_buf() };
        for method in [BlobMethod::Get, BlobMethod::Head] {
            assert!(matches!(backend.locate(&format!("sha256:{hex}"), method), Some(BlobAccess::File(_))));
            assert_eq!(backend.locate(&format!("sha256:{}", "b".repeat(64)), method), None);
            assert_eq!(backend.locate("sha256:../../../etc/passwd", method), None);
        }
    }

    /// No tokio runtime here: presigning must not need one (the pull path calls it from
    /// synchronous code).
    #[test]
    fn s3_backend_presigns_path_style_urls_per_method_without_a_runtime() {
        let backend = S3Backend::new(test_config()).unwrap();
        let hex = "c".repeat(64);
        let digest = format!("sha256:{hex}");
        let get = backend.presign_get(&digest).unwrap();
        let head = backend.presign_head(&digest).unwrap();
        let expected_prefix = format!("http://127.0.0.1:9/blobs/registry/sha256/{hex}?");
        assert!(get.starts_with(&expected_prefix), "{get}");
        assert!(head.starts_with(&expected_prefix), "{head}");
        assert_ne!(
            query_parameter(&get, "X-Amz-Signature"),
            query_parameter(&head, "X-Amz-Signature"),
            "the method is part of the signature"
        );
        assert_eq!(query_parameter(&get, "X-Amz-Expires"), Some("900"));
        assert_eq!(query_parameter(&get, "X-Amz-Algorithm"), Some("AWS4-HMAC-SHA256"));
        assert!(query_parameter(&get, "X-Amz-Credential").unwrap().starts_with("test-access%2F"));
        assert!(!get.contains("test-secret"));

        let locator = BlobBackend::S3(backend);
        let Some(BlobAccess::Redirect(located)) = locator.locate(&digest, BlobMethod::Head) else {
            panic!("an s3 backend redirects")
        };
        assert!(located.starts_with(&expected_prefix));
        assert_eq!(query_parameter(&located, "X-Amz-Signature").map(str::len), Some(64));
    }

    #[test]
    fn s3_backend_virtual_hosted_style_puts_the_bucket_in_the_host() {
        let mut config = test_config();
        config.endpoint = "https://s3.example.test".to_string();
        config.path_style = false;
        config.key_prefix = String::new();
        let url = S3Backend::new(config).unwrap().presign_get(&format!("sha256:{}", "d".repeat(64))).unwrap();
        assert!(url.starts_with(&format!("https://blobs.s3.example.test/sha256/{}?", "d".repeat(64))), "{url}");
    }

    #[test]
    fn s3_backend_never_turns_a_malformed_digest_into_a_key() {
        let backend = S3Backend::new(test_config()).unwrap();
        let hex = "e".repeat(64);
        let malformed = [
            "sha256:../../../etc/passwd".to_string(),
            format!("sha256:{}/../x", &hex[..59]),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{hex}0"),
            format!("sha256:{}", &hex[..63]),
            format!("sha512:{hex}"),
            format!("SHA256:{hex}"),
            format!(" sha256:{hex}"),
            format!("sha256:{hex}\n"),
            format!("sha256:{}%2F", &hex[..61]),
            hex.clone(),
            String::new(),
        ];
        let locator = BlobBackend::S3(backend.clone());
        for digest in &malformed {
            assert!(matches!(backend.presign_get(digest), Err(S3Error::InvalidDigest(_))), "{digest:?}");
            assert!(matches!(backend.presign_head(digest), Err(S3Error::InvalidDigest(_))), "{digest:?}");
            assert_eq!(locator.locate(digest, BlobMethod::Get), None, "{digest:?}");
            assert_eq!(backend.config().object_key(digest), None, "{digest:?}");
        }
    }

    #[test]
    fn s3_config_is_checked_and_its_secret_never_printed() {
        let mut config = test_config();
        config.secret_access_key = "hunter2-very-secret".to_string();
        assert!(!format!("{config:?}").contains("hunter2"));
        let backend = S3Backend::new(config.clone()).unwrap();
        assert!(!format!("{backend:?}").contains("hunter2"));
        assert!(!format!("{:?}", BlobBackend::S3(backend)).contains("hunter2"));

        let cases: [fn(&mut S3Config); 7] = [
            |config| config.endpoint = "127.0.0.1:9000".to_string(),
            |config| config.bucket = String::new(),
            |config| config.region = " ".to_string(),
            |config| config.key_prefix = "/registry/".to_string(),
            |config| config.secret_access_key = String::new(),
            |config| config.presign_expiry = Duration::ZERO,
            |config| config.presign_expiry = S3Config::MAX_PRESIGN_EXPIRY + Duration::from_secs(1),
        ];
        for break_it in cases {
            let mut broken = config.clone();
            break_it(&mut broken);
            assert!(matches!(S3Backend::new(broken.clone()), Err(S3Error::Config(_))), "{broken:?}");
        }
        let mut longest = config;
        longest.presign_expiry = S3Config::MAX_PRESIGN_EXPIRY;
        let url = S3Backend::new(longest).unwrap().presign_get(&format!("sha256:{}", "f".repeat(64))).unwrap();
        assert_eq!(query_parameter(&url, "X-Amz-Expires"), Some("604800"));
    }

    #[test]
    fn named_objects_are_presigned_under_the_prefix_and_hostile_names_are_refused() {
        let backend = S3Backend::new(test_config()).unwrap();
        let name = "snapshots/registry-v3-000000000042.atcrsnap";
        let put = backend.presign_object(name, ObjectMethod::Put).unwrap();
        assert!(
            put.starts_with("http://127.0.0.1:9/blobs/registry/snapshots/registry-v3-000000000042.atcrsnap?"),
            "{put}"
        );
        assert!(query_parameter(&put, "X-Amz-Signature").is_some(), "{put}");
        let get = backend.presign_object(name, ObjectMethod::Get).unwrap();
        assert_ne!(get, put, "a URL signed for PUT is not the GET URL");
        for hostile in
            ["", "/abs", "a//b", "../escape", "snapshots/../../x", "a/./b", "sp ace", "q?x=1", "semi;colon", "%2e%2e"]
        {
            assert!(backend.presign_object(hostile, ObjectMethod::Get).is_err(), "{hostile:?} must be refused");
        }
    }
}
