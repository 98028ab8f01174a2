//! Shared pieces of the end-to-end tests that drive the real `atcr` binary against Bluesky's
//! reference PDS (`fixtures/pds`, started by `fixtures/test-all.sh`):
//!
//! - [`pds_url_or_skip`]: the PDS under test (`ATCR_TEST_PDS_URL`), loopback only;
//! - [`Pds`]: a small XRPC client (accounts, blobs, record writes, listRecords);
//! - [`Atcr`]: one `atcr serve` child process on its own data dir and port, killed on drop (and
//!   its output printed when the test fails), plus the read side of its HTTP API and CLI;
//! - [`Op`] and [`assert_same_ops`]: the record operations a test wrote, compared with the log.
//!
//! All tests of a run share one PDS and its firehose, which carries every test's writes: each
//! test creates its own accounts (unique handles) and only looks at its own DIDs.

#![allow(dead_code)] // every test binary uses a different part of this module

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

pub const SKIP_MESSAGE: &str = "SKIP: ATCR_TEST_PDS_URL not set (run fixtures/test-all.sh)";

/// Password of every test account (the harness convention).
pub const PASSWORD: &str = "hunter2hunter2";

/// The PDS under test, or `None` (after printing the one SKIP line) when the harness is not
/// running. Only loopback URLs are accepted: these tests never talk to another machine.
pub fn pds_url_or_skip() -> Option<String> {
    let url = match std::env::var("ATCR_TEST_PDS_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_string(),
        _ => {
            println!("{SKIP_MESSAGE}");
            return None;
        }
    };
    let parsed =
        reqwest::Url::parse(&url).unwrap_or_else(|error| panic!("ATCR_TEST_PDS_URL={url:?} is not a URL: {error}"));
    let host = parsed.host_str().unwrap_or_default();
    assert!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "::1"),
        "ATCR_TEST_PDS_URL={url:?}: only a loopback PDS is allowed in tests"
    );
    Some(url)
}

/// The harness's PLC directory (`ATCR_TEST_PLC_URL`; by the harness convention the port below
/// the PDS port when unset). atcr resolves DIDs through it: never through plc.directory.
pub fn plc_url(pds_url: &str) -> String {
    let url = match std::env::var("ATCR_TEST_PLC_URL") {
        Ok(url) if !url.trim().is_empty() => url.trim().trim_end_matches('/').to_string(),
        _ => format!("http://127.0.0.1:{}", port_of(pds_url) - 1),
    };
    let host = reqwest::Url::parse(&url).ok().and_then(|parsed| parsed.host_str().map(str::to_string));
    assert!(
        matches!(host.as_deref(), Some("127.0.0.1" | "localhost" | "[::1]")),
        "ATCR_TEST_PLC_URL={url:?}: only a loopback PLC is allowed in tests"
    );
    url
}

/// The PDS port of a loopback URL (`http://127.0.0.1:2583` → 2583).
pub fn port_of(url: &str) -> u16 {
    let parsed = reqwest::Url::parse(url).expect("a URL");
    parsed.port_or_known_default().expect("a port")
}

// ------------------------------------------------------------------------------------------------
// Randomness without a dependency: std's randomly keyed SipHash, and xorshift for sequences.
// ------------------------------------------------------------------------------------------------

static RANDOM_COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(RANDOM_COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A small deterministic generator (xorshift64*), seeded from [`random_u64`] unless a test
/// wants to replay a seed it printed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    pub fn seeded_randomly() -> (Self, u64) {
        let seed = random_u64();
        (Rng::new(seed), seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    pub fn millis_between(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high.saturating_sub(low) + 1))
    }
}

/// A handle nobody else in this PDS has: `<prefix>-<10 hex>.test`. The first label stays at
/// most 17 characters (the PDS allows up to 18 for its service domain).
pub fn unique_handle(prefix: &str) -> String {
    assert!((1..=6).contains(&prefix.len()), "handle prefix {prefix:?} must be 1 to 6 characters");
    format!("{prefix}-{:010x}.test", random_u64() & 0xff_ffff_ffff)
}

/// The current time as an ATProto datetime (`2025-01-01T00:00:00.000Z`), for `createdAt`.
pub fn now_datetime() -> String {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs() as i64;
    let millis = since_epoch.subsec_millis();
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

// ------------------------------------------------------------------------------------------------
// XRPC client
// ------------------------------------------------------------------------------------------------

fn http_client() -> reqwest::Client {
    // The workspace builds reqwest with `rustls-no-provider`: a client cannot be built before a
    // process-wide crypto provider is installed (plain HTTP on loopback needs none, but reqwest
    // checks anyway).
    static CRYPTO_PROVIDER: std::sync::Once = std::sync::Once::new();
    CRYPTO_PROVIDER.call_once(|| {
        // ring, like src/main.rs (deprecated in rustls only for lacking post-quantum kx)
        #[allow(deprecated)]
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .no_proxy() // loopback only, whatever the environment says
        .build()
        .expect("an HTTP client")
}

#[derive(Clone)]
pub struct Pds {
    pub url: String,
    http: reqwest::Client,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub did: String,
    pub handle: String,
    access_jwt: String,
}

/// What the PDS answered to a record write (createRecord / putRecord / one applyWrites result).
#[derive(Debug, Clone)]
pub struct Written {
    pub uri: String,
    pub collection: String,
    pub rkey: String,
    pub cid: String,
    /// The commit that carried the write, and its rev.
    pub commit_cid: String,
    pub rev: String,
}

#[derive(Debug, Clone)]
pub struct Deleted {
    pub commit_cid: Option<String>,
    pub rev: Option<String>,
}

/// One write of `com.atproto.repo.applyWrites`.
pub enum BatchWrite<'a> {
    Create { collection: &'a str, rkey: Option<&'a str>, value: &'a Value },
}

#[derive(Debug, Clone)]
pub struct ListedRecord {
    pub rkey: String,
    pub cid: String,
    pub value: Value,
}

/// `base?k=v&…`, form-encoded (reqwest is built without its `query` feature).
fn with_query(base: &str, params: &[(&str, &str)]) -> Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base).with_context(|| format!("bad URL {base}"))?;
    url.query_pairs_mut().extend_pairs(params);
    Ok(url)
}

fn rkey_of(uri: &str) -> String {
    uri.rsplit('/').next().unwrap_or_default().to_string()
}

fn string_at(value: &Value, pointer: &str) -> Result<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no string at {pointer} in {value}"))
}

impl Pds {
    pub fn new(url: &str) -> Self {
        Pds { url: url.trim_end_matches('/').to_string(), http: http_client() }
    }

    async fn answer(response: reqwest::Response, what: &str) -> Result<Value> {
        let status = response.status();
        let body = response.text().await.with_context(|| format!("{what}: reading the answer"))?;
        ensure!(status.is_success(), "{what}: HTTP {status}: {body}");
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body).with_context(|| format!("{what}: answer is not JSON: {body}"))
    }

    async fn procedure(&self, nsid: &str, auth: Option<&Account>, body: &Value) -> Result<Value> {
        let mut request = self.http.post(format!("{}/xrpc/{nsid}", self.url)).json(body);
        if let Some(account) = auth {
            request = request.bearer_auth(&account.access_jwt);
        }
        let response = request.send().await.with_context(|| format!("POST {nsid}"))?;
        Self::answer(response, nsid).await
    }

    async fn query(&self, nsid: &str, params: &[(&str, &str)]) -> Result<Value> {
        let response = self
            .http
            .get(with_query(&format!("{}/xrpc/{nsid}", self.url), params)?)
            .send()
            .await
            .with_context(|| format!("GET {nsid}"))?;
        Self::answer(response, nsid).await
    }

    /// A fresh account `<prefix>-<random>.test` (the PDS needs no invite in dev mode).
    pub async fn create_account(&self, prefix: &str) -> Result<Account> {
        let handle = unique_handle(prefix);
        let label = handle.trim_end_matches(".test");
        let body = json!({ "handle": handle, "email": format!("{label}@example.com"), "password": PASSWORD });
        let answer = self.procedure("com.atproto.server.createAccount", None, &body).await?;
        Ok(Account {
            did: string_at(&answer, "/did")?,
            handle: string_at(&answer, "/handle")?,
            access_jwt: string_at(&answer, "/accessJwt")?,
        })
    }

    /// Uploads bytes as a blob and returns the blob object to put into a record
    /// (`{"$type":"blob","ref":{"$link":…},"mimeType":…,"size":…}`).
    pub async fn upload_blob(&self, account: &Account, bytes: Vec<u8>, mime_type: &str) -> Result<Value> {
        let response = self
            .http
            .post(format!("{}/xrpc/com.atproto.repo.uploadBlob", self.url))
            .bearer_auth(&account.access_jwt)
            .header(reqwest::header::CONTENT_TYPE, mime_type)
            .body(bytes)
            .send()
            .await
            .context("POST com.atproto.repo.uploadBlob")?;
        let answer = Self::answer(response, "com.atproto.repo.uploadBlob").await?;
        answer.get("blob").cloned().ok_or_else(|| anyhow!("uploadBlob answered without a blob: {answer}"))
    }

    fn written(answer: &Value, collection: &str) -> Result<Written> {
        let uri = string_at(answer, "/uri")?;
        Ok(Written {
            rkey: rkey_of(&uri),
            collection: collection.to_string(),
            cid: string_at(answer, "/cid")?,
            commit_cid: string_at(answer, "/commit/cid")?,
            rev: string_at(answer, "/commit/rev")?,
            uri,
        })
    }

    /// createRecord with `validate` omitted (the PDS stores io.atcr.* records unvalidated).
    pub async fn create_record(
        &self,
        account: &Account,
        collection: &str,
        rkey: Option<&str>,
        record: &Value,
    ) -> Result<Written> {
        let mut body = json!({ "repo": account.did, "collection": collection, "record": record });
        if let Some(rkey) = rkey {
            body["rkey"] = json!(rkey);
        }
        let answer = self.procedure("com.atproto.repo.createRecord", Some(account), &body).await?;
        Self::written(&answer, collection)
    }

    pub async fn put_record(&self, account: &Account, collection: &str, rkey: &str, record: &Value) -> Result<Written> {
        let body = json!({ "repo": account.did, "collection": collection, "rkey": rkey, "record": record });
        let answer = self.procedure("com.atproto.repo.putRecord", Some(account), &body).await?;
        Self::written(&answer, collection)
    }

    pub async fn delete_record(&self, account: &Account, collection: &str, rkey: &str) -> Result<Deleted> {
        let body = json!({ "repo": account.did, "collection": collection, "rkey": rkey });
        let answer = self.procedure("com.atproto.repo.deleteRecord", Some(account), &body).await?;
        Ok(Deleted {
            commit_cid: answer.pointer("/commit/cid").and_then(Value::as_str).map(str::to_string),
            rev: answer.pointer("/commit/rev").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// Several creates in one commit; returns one [`Written`] per write, in order.
    pub async fn apply_writes(&self, account: &Account, writes: &[BatchWrite<'_>]) -> Result<Vec<Written>> {
        let writes_json: Vec<Value> = writes
            .iter()
            .map(|write| match write {
                BatchWrite::Create { collection, rkey, value } => {
                    let mut write = json!({
                        "$type": "com.atproto.repo.applyWrites#create",
                        "collection": collection,
                        "value": value,
                    });
                    if let Some(rkey) = rkey {
                        write["rkey"] = json!(rkey);
                    }
                    write
                }
            })
            .collect();
        let body = json!({ "repo": account.did, "writes": writes_json });
        let answer = self.procedure("com.atproto.repo.applyWrites", Some(account), &body).await?;
        let commit_cid = string_at(&answer, "/commit/cid")?;
        let rev = string_at(&answer, "/commit/rev")?;
        let results = answer
            .get("results")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("applyWrites answered without results: {answer}"))?;
        ensure!(results.len() == writes.len(), "applyWrites: {} results for {} writes", results.len(), writes.len());
        results
            .iter()
            .zip(writes)
            .map(|(result, write)| {
                let BatchWrite::Create { collection, .. } = write;
                let uri = string_at(result, "/uri")?;
                Ok(Written {
                    rkey: rkey_of(&uri),
                    collection: collection.to_string(),
                    cid: string_at(result, "/cid")?,
                    commit_cid: commit_cid.clone(),
                    rev: rev.clone(),
                    uri,
                })
            })
            .collect()
    }

    pub async fn update_handle(&self, account: &mut Account, handle: &str) -> Result<()> {
        self.procedure("com.atproto.identity.updateHandle", Some(account), &json!({ "handle": handle })).await?;
        account.handle = handle.to_string();
        Ok(())
    }

    /// Every record of one collection in a repo (all pages).
    pub async fn list_records(&self, did: &str, collection: &str) -> Result<Vec<ListedRecord>> {
        let mut records = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut params = vec![("repo", did), ("collection", collection), ("limit", "100")];
            if let Some(cursor) = cursor.as_deref() {
                params.push(("cursor", cursor));
            }
            let answer = self.query("com.atproto.repo.listRecords", &params).await?;
            let page = answer
                .get("records")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("listRecords answered without records: {answer}"))?;
            for record in page {
                records.push(ListedRecord {
                    rkey: rkey_of(&string_at(record, "/uri")?),
                    cid: string_at(record, "/cid")?,
                    value: record.get("value").cloned().unwrap_or(Value::Null),
                });
            }
            match answer.get("cursor").and_then(Value::as_str) {
                Some(next) if !page.is_empty() => cursor = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(records)
    }
}

// ------------------------------------------------------------------------------------------------
// The atcr binary
// ------------------------------------------------------------------------------------------------

pub const ATCR_BIN: &str = env!("CARGO_BIN_EXE_atcr");

/// Environment variables of atcr's config that must not leak from the caller's shell into a
/// test's process. (Children also run in the test's temp dir, so no `./atcr.toml` applies.)
const ATCR_ENV: &[&str] = &[
    "ATCR_PLC_DIRECTORY",
    "ATCR_DEV_ALLOW_LOOPBACK",
    "ATCR_DEV_HANDLE_RESOLVER",
    "ATCR_DATA_DIR",
    "ATCR_LISTEN",
    "ATCR_UPSTREAM",
    "ATCR_START_CURSOR",
    "ATCR_RESET_CURSOR",
    "ATCR_LOG_FORMAT",
    "ATCR_CONFIG",
];

pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

fn tail_of_file(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `child` until it exits or `timeout` passes (then `None`).
async fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn signal(child: &Child, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet (we hold its Child).
    let rc = unsafe { libc::kill(pid, signal) };
    ensure!(rc == 0, "kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    Ok(())
}

/// One atcr data dir and the `atcr serve` process running on it (restartable, e.g. after a
/// `kill -9`). Dropping it kills the process; when the test is failing it also prints the tail
/// of every run's output and keeps the temporary directory for inspection.
pub struct Atcr {
    name: String,
    tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    pub data_dir: PathBuf,
    pub upstream: String,
    pub start_cursor: Option<i64>,
    /// Where atcr resolves did:plc documents (the harness's PLC, loopback).
    pub plc_directory: String,
    child: Option<Child>,
    pub port: u16,
    /// How many times `serve` was started (the output of run N is `serve-N.log`).
    pub runs: u32,
    /// More `atcr serve` arguments (e.g. `--local-hold`, `--config`).
    pub extra_args: Vec<String>,
    /// Pass `--dev-allow-loopback` (default): enrichment may then fetch from the loopback PDS.
    pub dev_allow_loopback: bool,
    /// With `dev_allow_loopback`: `--dev-handle-resolver` (default: the upstream when it is a
    /// PDS, else the harness PDS; its resolveHandle answers for its `.test` handles, which
    /// exist in no DNS).
    pub dev_handle_resolver: Option<String>,
    http: reqwest::Client,
}

impl Atcr {
    /// A fresh data dir for `atcr serve --upstream <upstream>`, resolving DIDs through the PLC
    /// `plc_directory` (see [`plc_url`]).
    pub fn new(name: &str, upstream: &str, plc_directory: &str, start_cursor: Option<i64>) -> Result<Self> {
        let tmp = tempfile::Builder::new().prefix(&format!("atcr-e2e-{name}-")).tempdir()?;
        let root = tmp.path().to_path_buf();
        Ok(Atcr {
            name: name.to_string(),
            data_dir: root.join("data"),
            root,
            tmp: Some(tmp),
            upstream: upstream.to_string(),
            start_cursor,
            plc_directory: plc_directory.to_string(),
            child: None,
            port: 0,
            runs: 0,
            extra_args: Vec::new(),
            dev_allow_loopback: true,
            // the PDS atcr follows, or the harness PDS behind a replaying upstream
            dev_handle_resolver: if upstream.starts_with("http://") {
                Some(upstream.trim_end_matches('/').to_string())
            } else {
                std::env::var("ATCR_TEST_PDS_URL").ok().map(|url| url.trim().to_string())
            },
            http: http_client(),
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn output_path(&self, run: u32) -> PathBuf {
        self.root.join(format!("serve-{run}.log"))
    }

    /// Spawns `atcr serve` on a fresh free port; does not wait for it (see [`Atcr::wait_ready`]).
    pub fn spawn(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "atcr serve is already running");
        self.port = free_port()?;
        self.runs += 1;
        let output = File::create(self.output_path(self.runs))?;
        let mut command = Command::new(ATCR_BIN);
        command
            .current_dir(&self.root)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--upstream")
            .arg(&self.upstream)
            // enrichment (DID documents, manifest blobs) stays on loopback: the harness's PLC,
            // and the PDS at the http://localhost:<port> its DID documents name
            .arg("--plc-directory")
            .arg(&self.plc_directory);
        if self.dev_allow_loopback {
            command.arg("--dev-allow-loopback");
            // `.test` handles exist in no DNS: the harness PDS answers the handle → DID
            // direction of handle verification (resolveHandle), on loopback
            if let Some(resolver) = &self.dev_handle_resolver {
                command.arg("--dev-handle-resolver").arg(resolver);
            }
        }
        if let Some(cursor) = self.start_cursor {
            command.arg("--start-cursor").arg(cursor.to_string());
        }
        command.args(&self.extra_args);
        for name in ATCR_ENV {
            command.env_remove(name);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // plain text in the output files; panics keep their backtraces, errors do not
        command.env("NO_COLOR", "1").env("RUST_LIB_BACKTRACE", "0");
        let child = command
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("spawning {ATCR_BIN} serve"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/healthz` answers 200; fails early (with the output) if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/healthz", self.base_url());
        loop {
            let Some(child) = self.child.as_mut() else { bail!("atcr serve is not running") };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "atcr serve (run {}) exited with {status} before it was ready; output:\n{}",
                    self.runs,
                    tail_of_file(&self.output_path(self.runs), 40)
                );
            }
            if let Ok(response) = self.http.get(&url).timeout(Duration::from_secs(2)).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "atcr serve (run {}) not ready at {url} after {timeout:?}; output:\n{}",
                    self.runs,
                    tail_of_file(&self.output_path(self.runs), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Spawns and waits until ready; retries twice on another port if the process dies early
    /// (the free port can be taken between our probe and its bind).
    pub async fn start(&mut self, timeout: Duration) -> Result<()> {
        let mut last_error = None;
        for _ in 0..3 {
            self.spawn()?;
            match self.wait_ready(timeout).await {
                Ok(()) => return Ok(()),
                Err(error) if self.child.is_none() => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow!("atcr serve did not start")))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `kill -9` and reap.
    pub async fn kill9(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("atcr serve is not running"))?;
        if let Some(status) = child.try_wait()? {
            bail!(
                "atcr serve (run {}) had exited on its own with {status} before kill -9; output:\n{}",
                self.runs,
                self.output_tail(40)
            );
        }
        signal(&child, libc::SIGKILL)?;
        wait_exit(&mut child, Duration::from_secs(10))
            .await?
            .ok_or_else(|| anyhow!("atcr serve survived SIGKILL for 10 s"))
    }

    /// SIGTERM, then waits for a clean exit (SIGKILL and an error after `timeout`).
    pub async fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("atcr serve is not running"))?;
        if let Some(status) = child.try_wait()? {
            bail!("atcr serve had already exited with {status} before SIGTERM");
        }
        signal(&child, libc::SIGTERM)?;
        let signalled = Instant::now();
        match wait_exit(&mut child, timeout).await? {
            Some(status) => {
                println!("[{}] atcr serve exited {:?} after SIGTERM ({status})", self.name, signalled.elapsed());
                Ok(status)
            }
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "atcr serve did not exit within {timeout:?} of SIGTERM; output:\n{}",
                    tail_of_file(&self.output_path(self.runs), 40)
                )
            }
        }
    }

    /// The last lines of the current run's output.
    pub fn output_tail(&self, lines: usize) -> String {
        tail_of_file(&self.output_path(self.runs), lines)
    }

    pub async fn get(&self, path_and_query: &str) -> Result<(u16, String)> {
        let url = format!("{}{path_and_query}", self.base_url());
        let response = self.http.get(&url).send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    }

    pub async fn get_json(&self, path_and_query: &str) -> Result<Value> {
        let (status, body) = self.get(path_and_query).await?;
        ensure!(status == 200, "GET {path_and_query}: HTTP {status}: {body}");
        serde_json::from_str(&body).with_context(|| format!("GET {path_and_query}: not JSON: {body}"))
    }

    pub async fn status(&self) -> Result<Value> {
        self.get_json("/api/v1/status").await
    }

    /// Every event matching the filter, all pages of `/api/v1/log`.
    pub async fn events(&self, did: Option<&str>, collection: Option<&str>) -> Result<Vec<Value>> {
        let mut events = Vec::new();
        let mut from: u64 = 0;
        loop {
            let from_text = from.to_string();
            let mut params = vec![("from", from_text.as_str()), ("limit", "1000")];
            if let Some(did) = did {
                params.push(("did", did));
            }
            if let Some(collection) = collection {
                params.push(("collection", collection));
            }
            let url = with_query(&format!("{}/api/v1/log", self.base_url()), &params)?;
            let response = self.http.get(url).send().await.context("GET /api/v1/log")?;
            let status = response.status();
            let body = response.text().await?;
            ensure!(status.is_success(), "GET /api/v1/log?from={from}: HTTP {status}: {body}");
            let page: Value = serde_json::from_str(&body).with_context(|| format!("/api/v1/log: not JSON: {body}"))?;
            let batch = page
                .get("events")
                .and_then(Value::as_array)
                .ok_or_else(|| anyhow!("/api/v1/log without events: {body}"))?;
            let next =
                page.get("next").and_then(Value::as_u64).ok_or_else(|| anyhow!("/api/v1/log without next: {body}"))?;
            events.extend(batch.iter().cloned());
            if batch.len() < 1000 {
                return Ok(events);
            }
            ensure!(next > from, "/api/v1/log: next {next} does not move past from {from}");
            from = next;
        }
    }

    /// Polls the events of `did` until `done` holds for them (then returns them), failing after
    /// `timeout` with what was there and the process output. Fails at once if atcr exits.
    pub async fn wait_for_events(
        &mut self,
        did: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                bail!("atcr serve exited while waiting for {what}; output:\n{}", self.output_tail(40));
            }
            let events = self.events(Some(did), None).await;
            match events {
                Ok(events) if done(&events) => return Ok(events),
                Ok(events) if Instant::now() >= deadline => bail!(
                    "timeout after {timeout:?} waiting for {what}: the log has {} events for {did}:\n{}\noutput:\n{}",
                    events.len(),
                    describe_events(&events),
                    self.output_tail(30)
                ),
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!("timeout waiting for {what}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// `/metrics` as text (empty when absent).
    pub async fn metrics(&self) -> Result<String> {
        let (status, body) = self.get("/metrics").await?;
        Ok(if status == 200 { body } else { String::new() })
    }

    /// Runs `atcr <args>` (a one-shot CLI command such as `log tail` or `status`) and returns its
    /// stdout; fails on a non-zero exit or after 60 s.
    pub async fn cli(&self, args: &[&str]) -> Result<String> {
        let stamp = random_u64();
        let stdout_path = self.root.join(format!("cli-{stamp:x}.out"));
        let stderr_path = self.root.join(format!("cli-{stamp:x}.err"));
        let mut command = Command::new(ATCR_BIN);
        command.current_dir(&self.root).args(args).env("NO_COLOR", "1").env("RUST_LIB_BACKTRACE", "0");
        for name in ATCR_ENV {
            command.env_remove(name);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("spawning atcr {args:?}"))?;
        let status = match wait_exit(&mut child, Duration::from_secs(60)).await? {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "`atcr {}` did not exit within 60 s; stderr:\n{}",
                    args.join(" "),
                    tail_of_file(&stderr_path, 20)
                );
            }
        };
        let stdout = std::fs::read_to_string(&stdout_path)?;
        ensure!(
            status.success(),
            "`atcr {}` exited with {status}; stderr:\n{}\nstdout:\n{}",
            args.join(" "),
            tail_of_file(&stderr_path, 20),
            stdout.lines().take(20).collect::<Vec<_>>().join("\n")
        );
        Ok(stdout)
    }

    /// `atcr log tail --data-dir DIR <extra>`: one event per line, parsed.
    pub async fn log_tail(&self, extra: &[&str]) -> Result<Vec<Value>> {
        let data_dir = self.data_dir.to_string_lossy().into_owned();
        let mut args = vec!["log", "tail", "--data-dir", data_dir.as_str()];
        args.extend_from_slice(extra);
        let stdout = self.cli(&args).await?;
        stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).with_context(|| format!("`atcr log tail` printed a non-JSON line: {line}"))
            })
            .collect()
    }

    /// Starts `atcr log tail --data-dir DIR --follow <extra>` in the background (it reads the log
    /// while `serve` writes it); killed on drop.
    pub fn follow(&self, extra: &[&str]) -> Result<Follower> {
        let stamp = random_u64();
        let stdout_path = self.root.join(format!("follow-{stamp:x}.out"));
        let stderr_path = self.root.join(format!("follow-{stamp:x}.err"));
        let mut command = Command::new(ATCR_BIN);
        command
            .current_dir(&self.root)
            .args(["log", "tail", "--follow", "--data-dir"])
            .arg(&self.data_dir)
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LIB_BACKTRACE", "0");
        for name in ATCR_ENV {
            command.env_remove(name);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?)
            .spawn()
            .context("spawning atcr log tail --follow")?;
        Ok(Follower { child, stdout_path, stderr_path })
    }

    /// `atcr status --data-dir DIR`, parsed.
    pub async fn status_cli(&self) -> Result<Value> {
        let data_dir = self.data_dir.to_string_lossy().into_owned();
        let stdout = self.cli(&["status", "--data-dir", data_dir.as_str()]).await?;
        serde_json::from_str(stdout.trim()).with_context(|| format!("`atcr status` did not print JSON: {stdout}"))
    }
}

/// A running `atcr log tail --follow`.
pub struct Follower {
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Follower {
    /// The complete lines printed so far, parsed.
    pub fn events(&self) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.stdout_path)?;
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).with_context(|| format!("`log tail --follow` printed: {line}")))
            .collect()
    }

    /// Waits until it printed at least `count` events (fails if it exits or after `timeout`).
    pub async fn wait_for(&mut self, count: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events()?;
            if events.len() >= count {
                return Ok(events);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "`atcr log tail --follow` exited with {status} after {} of {count} events; stderr:\n{}",
                    events.len(),
                    tail_of_file(&self.stderr_path, 20)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`atcr log tail --follow` printed {} of {count} events in {timeout:?}; stderr:\n{}",
                    events.len(),
                    tail_of_file(&self.stderr_path, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Atcr {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let mut report = String::new();
            let first = self.runs.saturating_sub(3) + 1;
            for run in first..=self.runs {
                let _ = writeln!(
                    report,
                    "---- atcr serve output, run {run} of {} ({}), last 60 lines:\n{}",
                    self.runs,
                    self.output_path(run).display(),
                    tail_of_file(&self.output_path(run), 60)
                );
            }
            if let Some(tmp) = self.tmp.take() {
                let kept = tmp.keep();
                let _ = writeln!(report, "---- [{}] kept the data dir for inspection: {}", self.name, kept.display());
            }
            eprintln!("{report}");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Events and expected operations
// ------------------------------------------------------------------------------------------------

pub fn kind(event: &Value) -> &str {
    event.get("kind").and_then(Value::as_str).unwrap_or_default()
}

pub fn is_record_event(event: &Value) -> bool {
    matches!(kind(event), "record_put" | "record_deleted")
}

pub fn str_field<'a>(event: &'a Value, key: &str) -> Option<&'a str> {
    event.get(key).and_then(Value::as_str)
}

pub fn u64_field(event: &Value, key: &str) -> Option<u64> {
    event.get(key).and_then(Value::as_u64)
}

/// One record operation as the tests compare them: for puts `cid` is the new record CID, for
/// deletes it is the CID of the record that was deleted (the event's `prev_cid`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Op {
    pub collection: String,
    pub rkey: String,
    pub action: String,
    pub cid: Option<String>,
}

impl Op {
    pub fn put(written: &Written, action: &str) -> Self {
        Op {
            collection: written.collection.clone(),
            rkey: written.rkey.clone(),
            action: action.to_string(),
            cid: Some(written.cid.clone()),
        }
    }

    pub fn delete(collection: &str, rkey: &str, prev_cid: &str) -> Self {
        Op {
            collection: collection.to_string(),
            rkey: rkey.to_string(),
            action: "delete".to_string(),
            cid: Some(prev_cid.to_string()),
        }
    }

    pub fn of_event(event: &Value) -> Self {
        let action = str_field(event, "action").unwrap_or("?").to_string();
        let cid_key = if action == "delete" { "prev_cid" } else { "cid" };
        Op {
            collection: str_field(event, "collection").unwrap_or("?").to_string(),
            rkey: str_field(event, "rkey").unwrap_or("?").to_string(),
            cid: str_field(event, cid_key).map(str::to_string),
            action,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{} {}", self.action, self.collection, self.rkey, self.cid.as_deref().unwrap_or("<no cid>"))
    }
}

/// Whether the log has caught up with `expected` (the writes of one DID, in order): it holds at
/// least as many record events, or the last write's event already arrived (so a gap shows as a
/// diff at once instead of a timeout).
pub fn caught_up(events: &[Value], expected: &[Op]) -> bool {
    let records: Vec<Op> = events.iter().filter(|event| is_record_event(event)).map(Op::of_event).collect();
    records.len() >= expected.len() || expected.last().is_some_and(|last| records.contains(last))
}

pub fn source(event: &Value) -> &str {
    event.get("source").and_then(Value::as_str).unwrap_or_default()
}

/// The log is append-only: what a reader saw earlier must be a prefix of what it sees later.
pub fn ensure_prefix(earlier: &[Value], later: &[Value], what: &str) -> Result<()> {
    let shared = earlier.len().min(later.len());
    let first_difference = (0..shared).find(|&index| earlier[index] != later[index]);
    ensure!(
        later.len() >= earlier.len() && first_difference.is_none(),
        "{what}: {} events earlier, {} later, first difference at #{}:\n earlier:\n{}\n later:\n{}",
        earlier.len(),
        later.len(),
        first_difference.unwrap_or(shared),
        describe_events(earlier),
        describe_events(later)
    );
    Ok(())
}

/// A compact listing of events for failure messages.
pub fn describe_events(events: &[Value]) -> String {
    let mut text = String::new();
    for event in events.iter().take(400) {
        let _ = writeln!(
            text,
            "  #{} seq {} {} {} {}",
            u64_field(event, "offset").map_or("?".into(), |offset| offset.to_string()),
            event.get("seq").map_or("?".into(), Value::to_string),
            source(event),
            kind(event),
            match kind(event) {
                "record_put" | "record_deleted" => Op::of_event(event).to_string(),
                "manifest_stored" => format!("{} {} bytes", event["digest"], event["size"]),
                "identity_resolved" => format!("{}", event["document"]["id"]),
                _ => format!("handle={} active={} status={}", event["handle"], event["active"], event["status"]),
            }
        );
    }
    if events.len() > 400 {
        let _ = writeln!(text, "  … {} more", events.len() - 400);
    }
    text
}

/// Asserts that the log's record operations are exactly the expected ones, in order, with a
/// readable diff at the first difference.
pub fn assert_same_ops(expected: &[Op], actual: &[Op], what: &str) {
    if expected == actual {
        return;
    }
    let first_difference =
        expected.iter().zip(actual).position(|(a, b)| a != b).unwrap_or(expected.len().min(actual.len()));
    let mut message = format!(
        "{what}: the log's record events differ from the writes: {} expected, {} in the log, first difference at #{first_difference}\n",
        expected.len(),
        actual.len()
    );
    let from = first_difference.saturating_sub(3);
    let to = (first_difference + 8).max(from).min(expected.len().max(actual.len()));
    for index in from..to {
        let expected_op = expected.get(index).map_or("-".to_string(), Op::to_string);
        let actual_op = actual.get(index).map_or("-".to_string(), Op::to_string);
        let marker = if expected.get(index) == actual.get(index) { " " } else { "!" };
        let _ = writeln!(message, "{marker} #{index}\n    expected {expected_op}\n    log      {actual_op}");
    }
    panic!("{message}");
}

/// Sum of a Prometheus counter over all its label sets (`None` when absent).
pub fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let value = rest.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok());
        if let Some(value) = value {
            total = Some(total.unwrap_or(0.0) + value);
        }
    }
    total
}

// ------------------------------------------------------------------------------------------------
// Realistic io.atcr.* records (see shared/lexicons/io/atcr and fixtures/pds/seed-demo.mjs)
// ------------------------------------------------------------------------------------------------

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// An OCI image manifest (exact bytes) and the blob descriptors it names.
pub struct ImageManifest {
    pub bytes: Vec<u8>,
    pub hex: String,
    pub config: Value,
    pub layers: Vec<Value>,
}

/// A small OCI image manifest; `salt` makes its digest unique to the test run.
pub fn image_manifest(repository: &str, version: &str, salt: &str) -> ImageManifest {
    let descriptor = |media_type: &str, content: &str| {
        json!({
            "mediaType": media_type,
            "digest": format!("sha256:{}", sha256_hex(content.as_bytes())),
            "size": content.len(),
        })
    };
    let config =
        descriptor("application/vnd.oci.image.config.v1+json", &format!("config {repository} {version} {salt}"));
    let layers = vec![
        descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &format!("base layer {salt}")),
        descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &format!("app layer {repository} {version} {salt}")),
    ];
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config,
        "layers": layers,
        "annotations": {
            "org.opencontainers.image.title": repository,
            "org.opencontainers.image.version": version,
        },
    });
    let bytes = serde_json::to_vec_pretty(&manifest).expect("JSON");
    let hex = sha256_hex(&bytes);
    ImageManifest { bytes, hex, config, layers }
}

/// The `io.atcr.manifest` record for an uploaded manifest (`blob` as uploadBlob returned it).
pub fn manifest_record(repository: &str, manifest: &ImageManifest, blob: &Value, hold_did: &str) -> Value {
    json!({
        "$type": "io.atcr.manifest",
        "repository": repository,
        "digest": format!("sha256:{}", manifest.hex),
        "mediaType": OCI_MANIFEST,
        "schemaVersion": 2,
        "manifestBlob": blob,
        "config": manifest.config,
        "layers": manifest.layers,
        "holdDid": hold_did,
        "annotations": { "org.opencontainers.image.title": repository },
        "createdAt": now_datetime(),
    })
}

pub fn tag_record(did: &str, repository: &str, tag: &str, manifest_hex: &str) -> Value {
    json!({
        "$type": "io.atcr.tag",
        "repository": repository,
        "tag": tag,
        "manifest": format!("at://{did}/io.atcr.manifest/{manifest_hex}"),
        "mediaType": OCI_MANIFEST,
        "updatedAt": now_datetime(),
    })
}

pub fn profile_record(default_hold: &str, oci_client: &str) -> Value {
    json!({
        "$type": "io.atcr.sailor.profile",
        "defaultHold": default_hold,
        "ociClient": oci_client,
        "createdAt": now_datetime(),
    })
}

pub fn repo_page_record(repository: &str, description: &str) -> Value {
    let at = now_datetime();
    json!({
        "$type": "io.atcr.repo.page",
        "repository": repository,
        "description": description,
        "createdAt": at,
        "updatedAt": at,
    })
}

pub fn star_record(owner_did: &str, repository_rkey: &str) -> Value {
    json!({
        "$type": "io.atcr.sailor.star",
        "subject": format!("at://{owner_did}/io.atcr.repo.page/{repository_rkey}"),
        "createdAt": now_datetime(),
    })
}

pub fn bsky_post(text: &str) -> Value {
    json!({ "$type": "app.bsky.feed.post", "text": text, "createdAt": now_datetime() })
}

// ------------------------------------------------------------------------------------------------
// The test-all S3 server (s3s-fs)
// ------------------------------------------------------------------------------------------------

/// A fresh bucket on the S3 server `fixtures/test-all.sh` runs, with an SDK client for it.
pub struct TestBucket {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub client: aws_sdk_s3::Client,
}

impl TestBucket {
    /// Creates `bucket` on the loopback S3 server (`ATCR_TEST_S3_*`), or returns `None` after a
    /// SKIP line naming the `part` of the test that needs it.
    pub async fn create(part: &str, bucket: &str) -> Result<Option<TestBucket>> {
        let (Ok(endpoint), Ok(access_key), Ok(secret_key)) = (
            std::env::var("ATCR_TEST_S3_ENDPOINT"),
            std::env::var("ATCR_TEST_S3_ACCESS_KEY"),
            std::env::var("ATCR_TEST_S3_SECRET_KEY"),
        ) else {
            println!("SKIP ({part}): ATCR_TEST_S3_ENDPOINT not set (run fixtures/test-all.sh)");
            return Ok(None);
        };
        ensure!(endpoint.starts_with("http://127.0.0.1"), "S3 endpoint must be loopback: {endpoint}");
        let credentials = aws_sdk_s3::config::Credentials::new(&access_key, &secret_key, None, None, "test");
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .force_path_style(true)
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        client.create_bucket().bucket(bucket).send().await.context("create bucket")?;
        Ok(Some(TestBucket { endpoint, access_key, secret_key, bucket: bucket.to_string(), client }))
    }

    /// An atcr config section (`[s3_holds."did"]`, `[snapshot_s3]`) for this bucket.
    pub fn toml_section(&self, header: &str, key_prefix: &str) -> String {
        format!(
            "{header}\nendpoint = \"{}\"\nbucket = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n\
             key_prefix = \"{key_prefix}\"\npath_style = true\n",
            self.endpoint, self.bucket, self.access_key, self.secret_key
        )
    }
}

/// Opens `pages` (`name|path|selector|text`, see `fixtures/browser/ui-test.mjs`'s
/// `ATCR_UI_SHOT_PAGES`) in headless chromium against `base_url`: each must load with no console
/// error and no axe (WCAG 2.1 AA) violation and show its text; screenshots are saved under
/// `target/test-output/screenshots/<folder>/` (or `$ATCR_TEST_OUTPUT`). Prints SKIP and passes
/// when there is no chromium (or the harness says SKIP).
pub fn check_pages_in_browser(base_url: &str, folder: &str, pages: &[String]) -> Result<()> {
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        println!("SKIP (browser part): no chromium at {chromium}");
        return Ok(());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let screenshots = std::env::var_os("ATCR_TEST_OUTPUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/test-output"))
        .join("screenshots")
        .join(folder);
    std::fs::create_dir_all(&screenshots)?;
    let output = Command::new("bash")
        .arg(root.join("fixtures/browser/run.sh"))
        .env("ATCR_UI_URL", base_url)
        .env("ATCR_UI_SCREENSHOTS", &screenshots)
        .env("ATCR_UI_DEMO", "0")
        .env("ATCR_UI_SHOT_PAGES", pages.join(";"))
        .output()
        .context("running fixtures/browser/run.sh")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    if output.status.code() == Some(3) && stdout.contains("SKIP") {
        return Ok(());
    }
    ensure!(
        output.status.success() && stdout.contains(&format!("{} passed, 0 failed", pages.len())),
        "browser checks failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    println!("screenshots: {}", screenshots.display());
    Ok(())
}
