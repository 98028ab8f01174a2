//! Identity resolution for verification: a DID's document (PLC directory or did:web), its
//! parsed facts and signing key, cached with a time to live, and handle verification in both
//! directions.
//!
//! Why it exists: every commit atcr keeps must be checked against its author's current signing
//! key (live ingest, backfill), and a handle may only name a DID when both sides agree. Fetching
//! a DID document per commit would be slow and would hammer the PLC directory, so resolved
//! identities are cached; the cache is refreshed when upstream says the identity changed
//! (`#identity`, [`IdentityResolver::invalidate`]) and callers re-fetch once before they call a
//! signature bad ([`IdentityResolver::refresh`]), because a key rotation reaches the firehose
//! before our cache expires.
//!
//! Documents come through the enrichment [`Fetcher`] (outbound URL policy, size and time
//! limits). Handles resolve through a [`HandleSource`]: production uses [`HttpHandleSource`]
//! (DNS TXT `_atproto.<handle>`, then `https://<handle>/.well-known/atproto-did`, the latter
//! through the policy); tests against the reference PDS, whose `.test` handles exist in no DNS,
//! may point it at the PDS's `com.atproto.identity.resolveHandle` on loopback, which is only
//! accepted together with the development loopback flag.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atcr_storage::did::{DidDocumentFacts, parse_did_document};
use atcr_storage::keys::{KeyError, PublicKey};

use crate::enrich::{FetchError, Fetcher};
use crate::policy::UrlPolicy;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long resolved identities are trusted, and how long a lookup may take.
#[derive(Debug, Clone, Copy)]
pub struct IdentityConfig {
    /// A resolved identity is used this long before it is fetched again.
    pub ttl: Duration,
    /// A failed resolution is remembered this long, so a burst of commits of one unresolvable
    /// DID costs one fetch, not one per commit.
    pub failure_ttl: Duration,
    /// One document or handle lookup, end to end.
    pub lookup_timeout: Duration,
    /// A handle check that failed on a lookup (not refuted) is tried again after this, then
    /// with enrichment's backoff.
    pub handle_recheck: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            ttl: Duration::from_secs(3600),
            failure_ttl: Duration::from_secs(30),
            lookup_timeout: Duration::from_secs(10),
            handle_recheck: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot fetch the DID document of {did}: {reason}")]
    Fetch { did: String, reason: String },
    #[error("DID document of {did}: {reason}")]
    Document { did: String, reason: String },
    #[error("the DID document served for {did} names another id, {served}")]
    WrongId { did: String, served: String },
    #[error("the DID document of {did} has no #atproto signing key")]
    NoSigningKey { did: String },
    #[error("the signing key of {did} is unusable: {error}")]
    Key { did: String, error: KeyError },
    #[error("resolving {did} took longer than {seconds} s")]
    Timeout { did: String, seconds: u64 },
}

/// A resolved identity: the document as served, what atcr reads from it, and its signing key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub did: String,
    pub document_json: String,
    pub facts: DidDocumentFacts,
    signing_key: Result<PublicKey, IdentityError>,
}

impl Identity {
    /// Parses a fetched document for `did`.
    pub fn from_document(did: &str, document_json: String) -> Result<Identity, IdentityError> {
        let facts = parse_did_document(&document_json)
            .map_err(|reason| IdentityError::Document { did: did.to_string(), reason })?;
        if facts.did != did {
            return Err(IdentityError::WrongId { did: did.to_string(), served: facts.did });
        }
        let signing_key = match &facts.signing_key {
            None => Err(IdentityError::NoSigningKey { did: did.to_string() }),
            Some((kind, multibase)) => PublicKey::from_verification_method(kind, multibase)
                .map_err(|error| IdentityError::Key { did: did.to_string(), error }),
        };
        Ok(Identity { did: did.to_string(), document_json, facts, signing_key })
    }

    /// The `#atproto` key, or why there is no usable one.
    pub fn signing_key(&self) -> Result<&PublicKey, IdentityError> {
        self.signing_key.as_ref().map_err(Clone::clone)
    }
}

/// Where DID documents come from: any enrichment [`Fetcher`], boxed so the resolver is one
/// concrete type that live ingest, backfill and the binary can share.
trait DocumentSource: Send + Sync + 'static {
    fn document<'a>(&'a self, did: &'a str) -> BoxFuture<'a, Result<String, FetchError>>;
}

impl<F: Fetcher> DocumentSource for F {
    fn document<'a>(&'a self, did: &'a str) -> BoxFuture<'a, Result<String, FetchError>> {
        Box::pin(self.did_document(did))
    }
}

/// Where a handle's own claim comes from (the handle → DID direction).
pub trait HandleSource: Send + Sync + 'static {
    /// The DID the handle says it belongs to.
    fn resolve_handle<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<String, HandleError>>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    #[error("{0:?} is not a valid handle")]
    Syntax(String),
    #[error("handle {handle} does not resolve: {reason}")]
    NotFound { handle: String, reason: String },
    #[error("handle {handle} resolves ambiguously: {reason}")]
    Ambiguous { handle: String, reason: String },
    #[error("refused by the outbound URL policy: {0}")]
    Policy(String),
    #[error("resolving handle {handle}: {reason}")]
    Lookup { handle: String, reason: String },
}

/// The outcome of checking a handle both ways. Only `verified` handles may name a DID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleCheck {
    pub handle: String,
    pub verified: bool,
    /// Why it did not verify (empty when it did).
    pub reason: String,
    /// It did not verify because a lookup failed (network trouble, a timeout), not because an
    /// answer refuted it: worth checking again later.
    pub transient: bool,
}

impl HandleCheck {
    fn refuted(handle: &str, reason: String) -> Self {
        HandleCheck { handle: handle.to_string(), verified: false, reason, transient: false }
    }

    fn failed(handle: &str, reason: String) -> Self {
        HandleCheck { handle: handle.to_string(), verified: false, reason, transient: true }
    }
}

enum Cached {
    Resolved { identity: Arc<Identity>, at: Instant },
    Failed { error: IdentityError, at: Instant },
}

/// Resolves and caches identities. Cheap to share behind an `Arc`; lookups of different DIDs
/// run concurrently (the cache lock is never held across a fetch).
pub struct IdentityResolver {
    documents: Box<dyn DocumentSource>,
    handles: Option<Box<dyn HandleSource>>,
    config: IdentityConfig,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for IdentityResolver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("IdentityResolver")
            .field("config", &self.config)
            .field("handles", &self.handles.is_some())
            .finish_non_exhaustive()
    }
}

impl IdentityResolver {
    pub fn new(fetcher: impl Fetcher, config: IdentityConfig) -> Self {
        IdentityResolver { documents: Box::new(fetcher), handles: None, config, cache: Mutex::new(HashMap::new()) }
    }

    /// Enables handle verification ([`IdentityResolver::verify_handle`]).
    pub fn with_handles(mut self, handles: impl HandleSource) -> Self {
        self.handles = Some(Box::new(handles));
        self
    }

    pub fn config(&self) -> IdentityConfig {
        self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        // A panic while holding the lock leaves a map that is still consistent (single inserts).
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached identity while it is fresh; never fetches. `Some(Err)` is a remembered failure.
    pub fn cached(&self, did: &str) -> Option<Result<Arc<Identity>, IdentityError>> {
        let cache = self.lock();
        match cache.get(did)? {
            Cached::Resolved { identity, at } if at.elapsed() < self.config.ttl => Some(Ok(identity.clone())),
            Cached::Failed { error, at } if at.elapsed() < self.config.failure_ttl => Some(Err(error.clone())),
            _ => None,
        }
    }

    /// The identity of `did`, from the cache while fresh, fetched otherwise.
    pub async fn resolve(&self, did: &str) -> Result<Arc<Identity>, IdentityError> {
        if let Some(cached) = self.cached(did) {
            return cached;
        }
        self.refresh(did).await
    }

    /// Fetches `did`'s document now, whatever the cache holds, and caches the outcome.
    pub async fn refresh(&self, did: &str) -> Result<Arc<Identity>, IdentityError> {
        let timeout = self.config.lookup_timeout;
        let outcome = match tokio::time::timeout(timeout, self.documents.document(did)).await {
            Err(_) => Err(IdentityError::Timeout { did: did.to_string(), seconds: timeout.as_secs() }),
            Ok(Err(error)) => Err(IdentityError::Fetch { did: did.to_string(), reason: error.to_string() }),
            Ok(Ok(document)) => Identity::from_document(did, document).map(Arc::new),
        };
        metrics::counter!(crate::metrics::IDENTITY_FETCHES, "outcome" => if outcome.is_ok() { "ok" } else { "error" })
            .increment(1);
        let at = Instant::now();
        let entry = match &outcome {
            Ok(identity) => Cached::Resolved { identity: identity.clone(), at },
            Err(error) => Cached::Failed { error: error.clone(), at },
        };
        self.lock().insert(did.to_string(), entry);
        outcome
    }

    /// The current signing key of `did`.
    pub async fn signing_key(&self, did: &str) -> Result<PublicKey, IdentityError> {
        self.resolve(did).await?.signing_key().cloned()
    }

    /// Forgets what is cached for `did` (after `#identity`): the next lookup fetches.
    pub fn invalidate(&self, did: &str) {
        self.lock().remove(did);
    }

    /// Checks `handle` for `did` in both directions: the DID document must claim it (its first
    /// `at://` alias) and the handle's own resolution must name the DID.
    pub async fn verify_handle(&self, did: &str, handle: &str) -> HandleCheck {
        let handle = handle.to_ascii_lowercase();
        let identity = match self.resolve(did).await {
            Ok(identity) => identity,
            Err(error) => return HandleCheck::failed(&handle, error.to_string()),
        };
        if identity.facts.handle.as_deref() != Some(handle.as_str()) {
            let reason = format!(
                "the DID document of {did} claims {}, not {handle}",
                identity.facts.handle.as_deref().unwrap_or("no handle")
            );
            return HandleCheck::refuted(&handle, reason);
        }
        self.verify_claimed_handle(&identity.facts)
            .await
            .unwrap_or_else(|| HandleCheck::refuted(&handle, "the DID document claims no handle".into()))
    }

    /// Checks the handle a DID document claims (`facts.handle`, the document side) against the
    /// handle's own resolution. `None` when the document claims no handle.
    pub async fn verify_claimed_handle(&self, facts: &DidDocumentFacts) -> Option<HandleCheck> {
        let handle = facts.handle.clone()?;
        let did = facts.did.as_str();
        let refused = |reason: String| Some(HandleCheck::refuted(&handle, reason));
        let failed = |reason: String| Some(HandleCheck::failed(&handle, reason));
        if let Err(error) = check_handle_syntax(&handle) {
            return refused(error.to_string());
        }
        let Some(handles) = &self.handles else {
            return refused("handle resolution is not configured".into());
        };
        let timeout = self.config.lookup_timeout;
        let outcome = tokio::time::timeout(timeout, handles.resolve_handle(&handle)).await;
        metrics::counter!(crate::metrics::HANDLE_CHECKS, "outcome" => if matches!(&outcome, Ok(Ok(resolved)) if resolved == did) { "verified" } else { "refused" })
            .increment(1);
        match outcome {
            Err(_) => failed(format!("resolving handle {handle} took longer than {} s", timeout.as_secs())),
            Ok(Err(error @ HandleError::Lookup { .. })) => failed(error.to_string()),
            Ok(Err(error)) => refused(error.to_string()),
            Ok(Ok(resolved)) if resolved == did => {
                Some(HandleCheck { handle: handle.clone(), verified: true, reason: String::new(), transient: false })
            }
            Ok(Ok(resolved)) => refused(format!("handle {handle} resolves to {resolved}, not {did}")),
        }
    }
}

/// atproto handle syntax: a domain name of at least two labels, ASCII letters, digits and
/// hyphens, no label starting or ending with a hyphen, a top-level label not starting with a
/// digit, at most 253 characters.
pub fn check_handle_syntax(handle: &str) -> Result<(), HandleError> {
    let invalid = || HandleError::Syntax(handle.to_string());
    if handle.is_empty() || handle.len() > 253 {
        return Err(invalid());
    }
    let labels: Vec<&str> = handle.split('.').collect();
    if labels.len() < 2 {
        return Err(invalid());
    }
    for label in &labels {
        let bytes = label.as_bytes();
        let well_formed = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes.iter().all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-')
            && bytes[0] != b'-'
            && bytes[bytes.len() - 1] != b'-';
        if !well_formed {
            return Err(invalid());
        }
    }
    if labels.last().is_some_and(|tld| tld.as_bytes()[0].is_ascii_digit()) {
        return Err(invalid());
    }
    Ok(())
}

/// The DID of `_atproto.<handle>` TXT records (`did=<did>`): exactly one distinct DID, or none.
pub fn did_from_txt_records<'a>(
    handle: &str,
    records: impl IntoIterator<Item = &'a str>,
) -> Result<String, HandleError> {
    let mut dids: Vec<&str> = records.into_iter().filter_map(|record| record.trim().strip_prefix("did=")).collect();
    dids.sort_unstable();
    dids.dedup();
    match dids.as_slice() {
        [] => Err(HandleError::NotFound { handle: handle.to_string(), reason: "no did= TXT record".into() }),
        [did] if did.starts_with("did:") => Ok(did.to_string()),
        [did] => Err(HandleError::NotFound { handle: handle.to_string(), reason: format!("TXT names {did:?}") }),
        several => Err(HandleError::Ambiguous {
            handle: handle.to_string(),
            reason: format!("{} different did= TXT records", several.len()),
        }),
    }
}

/// The DID in a `/.well-known/atproto-did` body: the whole body, trimmed, one line.
pub fn did_from_well_known(handle: &str, body: &[u8]) -> Result<String, HandleError> {
    let text = std::str::from_utf8(body).map_err(|_| HandleError::NotFound {
        handle: handle.to_string(),
        reason: "well-known body is not UTF-8".into(),
    })?;
    let did = text.trim();
    if !did.starts_with("did:") || did.contains(char::is_whitespace) {
        return Err(HandleError::NotFound {
            handle: handle.to_string(),
            reason: "well-known body is not a single DID".into(),
        });
    }
    Ok(did.to_string())
}

/// The most a handle resolution response may be.
const MAX_HANDLE_RESPONSE: usize = 8 * 1024;

/// Handles resolved over the network: DNS TXT, then HTTPS well-known (through the URL policy),
/// or, for development against a local PDS, its `resolveHandle` endpoint on loopback.
pub struct HttpHandleSource {
    client: reqwest::Client,
    policy: UrlPolicy,
    dns: Option<hickory_resolver::TokioResolver>,
    loopback_resolver: Option<String>,
}

impl HttpHandleSource {
    /// `loopback_resolver`: a base URL whose `/xrpc/com.atproto.identity.resolveHandle`
    /// answers instead of DNS and HTTPS (only with `policy.allow_loopback`, and only a loopback
    /// URL; anything else is an error, so a production config cannot use it by mistake).
    pub fn new(policy: UrlPolicy, loopback_resolver: Option<String>) -> Result<Self, HandleError> {
        let setup = |reason: String| HandleError::Lookup { handle: String::new(), reason };
        if let Some(base) = &loopback_resolver {
            if !policy.allow_loopback {
                return Err(setup("a handle resolver override needs --dev-allow-loopback".into()));
            }
            let host = reqwest::Url::parse(base).ok().and_then(|url| url.host_str().map(str::to_string));
            let loopback = host.as_deref().is_some_and(|host| {
                host == "localhost" || host.starts_with("127.") || host == "[::1]" || host == "::1"
            });
            if !loopback {
                return Err(setup(format!("handle resolver override {base:?} is not a loopback URL")));
            }
        }
        let client = reqwest::Client::builder()
            .dns_resolver(policy.resolver())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("atcr/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| setup(error.to_string()))?;
        let dns = match loopback_resolver {
            Some(_) => None,
            None => Some(
                hickory_resolver::TokioResolver::builder_tokio()
                    .map_err(|error| setup(format!("system DNS configuration: {error}")))?
                    .build()
                    .map_err(|error| setup(format!("DNS resolver: {error}")))?,
            ),
        };
        Ok(HttpHandleSource {
            client,
            policy,
            dns,
            loopback_resolver: loopback_resolver.map(|base| base.trim_end_matches('/').to_string()),
        })
    }

    async fn get(&self, handle: &str, url: &str) -> Result<Vec<u8>, HandleError> {
        self.policy.check(url).map_err(HandleError::Policy)?;
        let failed = |reason: String| HandleError::Lookup { handle: handle.to_string(), reason };
        let mut response = self.client.get(url).send().await.map_err(|error| failed(error.to_string()))?;
        if !response.status().is_success() {
            return Err(HandleError::NotFound {
                handle: handle.to_string(),
                reason: format!("{url} answered {}", response.status()),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| failed(error.to_string()))? {
            if body.len() + chunk.len() > MAX_HANDLE_RESPONSE {
                return Err(failed(format!("response over {MAX_HANDLE_RESPONSE} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn resolve(&self, handle: &str) -> Result<String, HandleError> {
        check_handle_syntax(handle)?;
        if let Some(base) = &self.loopback_resolver {
            let url = format!("{base}/xrpc/com.atproto.identity.resolveHandle?handle={handle}");
            let body = self.get(handle, &url).await?;
            #[derive(serde::Deserialize)]
            struct Resolved {
                did: String,
            }
            let resolved: Resolved = serde_json::from_slice(&body).map_err(|error| HandleError::Lookup {
                handle: handle.to_string(),
                reason: format!("resolveHandle answered {error}"),
            })?;
            return Ok(resolved.did);
        }
        let mut dns_failure = None;
        if let Some(dns) = &self.dns {
            match dns.txt_lookup(format!("_atproto.{handle}.")).await {
                Ok(lookup) => {
                    let texts: Vec<String> = lookup
                        .answers()
                        .iter()
                        .filter_map(|record| match &record.data {
                            hickory_resolver::proto::rr::RData::TXT(txt) => {
                                Some(txt.txt_data.iter().map(|part| String::from_utf8_lossy(part)).collect::<String>())
                            }
                            _ => None,
                        })
                        .collect();
                    match did_from_txt_records(handle, texts.iter().map(String::as_str)) {
                        Ok(did) => return Ok(did),
                        Err(error @ HandleError::Ambiguous { .. }) => return Err(error),
                        Err(error) => dns_failure = Some(error.to_string()),
                    }
                }
                Err(error) => dns_failure = Some(format!("DNS: {error}")),
            }
        }
        let url = format!("https://{handle}/.well-known/atproto-did");
        let body = self.get(handle, &url).await.map_err(|error| match (dns_failure, error) {
            // network trouble stays a lookup failure (checked again later), anything else refutes
            (Some(dns), HandleError::Lookup { handle, reason }) => {
                HandleError::Lookup { handle, reason: format!("{dns}; {reason}") }
            }
            (Some(dns), error) => {
                HandleError::NotFound { handle: handle.to_string(), reason: format!("{dns}; {error}") }
            }
            (None, error) => error,
        })?;
        did_from_well_known(handle, &body)
    }
}

impl HandleSource for HttpHandleSource {
    fn resolve_handle<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<String, HandleError>> {
        Box::pin(self.resolve(handle))
    }
}

/// Handles answered from a fixed table (the demo's recording, tests).
pub struct StaticHandles(pub HashMap<String, String>);

impl HandleSource for StaticHandles {
    fn resolve_handle<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<String, HandleError>> {
        let outcome = self.0.get(handle).cloned().ok_or_else(|| HandleError::NotFound {
            handle: handle.to_string(),
            reason: "not in the recorded handles".into(),
        });
        Box::pin(std::future::ready(outcome))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// reqwest is built without a default TLS provider; the binary installs ring, tests do too.
    fn install_tls_provider() {
        #[allow(deprecated)] // ring lacks only post-quantum key exchange (see src/main.rs)
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    /// Documents from a table, counting fetches.
    #[derive(Clone, Default)]
    struct Documents {
        served: Arc<Mutex<HashMap<String, String>>>,
        fetches: Arc<AtomicUsize>,
    }

    impl Documents {
        fn serve(&self, did: &str, document: String) {
            self.served.lock().unwrap().insert(did.to_string(), document);
        }
    }

    impl Fetcher for Documents {
        async fn did_document(&self, did: &str) -> Result<String, FetchError> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            self.served.lock().unwrap().get(did).cloned().ok_or(FetchError::NotFound)
        }
        async fn blob(&self, _pds: &str, _did: &str, _cid: &str) -> Result<Vec<u8>, FetchError> {
            Err(FetchError::NotFound)
        }
    }

    fn key(seed: u8) -> PublicKey {
        let signing = k256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        PublicKey::K256(*signing.verifying_key())
    }

    fn document(did: &str, handle: &str, kind: &str, multibase: &str) -> String {
        serde_json::json!({
            "id": did,
            "alsoKnownAs": [format!("at://{handle}")],
            "verificationMethod": [{"id": format!("{did}#atproto"), "type": kind, "controller": did, "publicKeyMultibase": multibase}],
            "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.example.com"}],
        })
        .to_string()
    }

    fn legacy_uncompressed(key: &PublicKey) -> String {
        let PublicKey::K256(inner) = key else { unreachable!() };
        multibase::encode(multibase::Base::Base58Btc, inner.to_sec1_point(false).as_bytes())
    }

    #[tokio::test]
    async fn caches_for_the_ttl_and_fetches_again_after_invalidate() {
        let documents = Documents::default();
        let did = "did:plc:alice";
        documents.serve(did, document(did, "alice.example.com", "Multikey", &key(1).to_multikey()));
        let resolver = IdentityResolver::new(documents.clone(), IdentityConfig::default());
        assert_eq!(resolver.signing_key(did).await.unwrap(), key(1));
        assert_eq!(resolver.signing_key(did).await.unwrap(), key(1));
        assert_eq!(documents.fetches.load(Ordering::SeqCst), 1, "the second lookup is a cache hit");

        // rotation: the cache still answers the old key until told otherwise
        documents.serve(did, document(did, "alice.example.com", "Multikey", &key(2).to_multikey()));
        assert_eq!(resolver.signing_key(did).await.unwrap(), key(1));
        resolver.invalidate(did);
        assert_eq!(resolver.signing_key(did).await.unwrap(), key(2));
        assert_eq!(documents.fetches.load(Ordering::SeqCst), 2);
        assert_eq!(resolver.refresh(did).await.unwrap().signing_key().unwrap(), &key(2));
        assert_eq!(documents.fetches.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn expired_entries_are_fetched_again_and_failures_are_remembered_briefly() {
        let documents = Documents::default();
        let config =
            IdentityConfig { ttl: Duration::ZERO, failure_ttl: Duration::from_secs(60), ..IdentityConfig::default() };
        let resolver = IdentityResolver::new(documents.clone(), config);
        let did = "did:plc:bob";
        documents.serve(did, document(did, "bob.example.com", "Multikey", &key(3).to_multikey()));
        resolver.resolve(did).await.unwrap();
        resolver.resolve(did).await.unwrap();
        assert_eq!(documents.fetches.load(Ordering::SeqCst), 2, "a zero ttl never hits");

        let missing = "did:plc:nobody";
        assert!(matches!(resolver.resolve(missing).await, Err(IdentityError::Fetch { .. })));
        assert!(matches!(resolver.resolve(missing).await, Err(IdentityError::Fetch { .. })));
        assert_eq!(documents.fetches.load(Ordering::SeqCst), 3, "a failure is cached for failure_ttl");
    }

    #[tokio::test]
    async fn accepts_both_key_forms_and_refuses_bad_documents() {
        let documents = Documents::default();
        let resolver = IdentityResolver::new(documents.clone(), IdentityConfig::default());
        let legacy = "did:plc:legacy";
        documents.serve(
            legacy,
            document(legacy, "l.example.com", "EcdsaSecp256k1VerificationKey2019", &legacy_uncompressed(&key(4))),
        );
        assert_eq!(resolver.signing_key(legacy).await.unwrap(), key(4));

        let other = "did:plc:other";
        documents.serve(other, document("did:plc:impostor", "o.example.com", "Multikey", &key(5).to_multikey()));
        assert!(matches!(resolver.resolve(other).await, Err(IdentityError::WrongId { .. })));

        let keyless = "did:plc:keyless";
        documents.serve(keyless, serde_json::json!({"id": keyless}).to_string());
        assert!(matches!(resolver.signing_key(keyless).await, Err(IdentityError::NoSigningKey { .. })));

        let garbage = "did:plc:garbage";
        documents.serve(garbage, document(garbage, "g.example.com", "Multikey", "zNotAKey"));
        assert!(matches!(resolver.signing_key(garbage).await, Err(IdentityError::Key { .. })));
    }

    #[tokio::test]
    async fn a_handle_verifies_only_when_both_directions_agree() {
        let documents = Documents::default();
        let (alice, mallory) = ("did:plc:alice", "did:plc:mallory");
        documents.serve(alice, document(alice, "Alice.Example.com", "Multikey", &key(1).to_multikey()));
        // mallory's document claims alice's handle
        documents.serve(mallory, document(mallory, "alice.example.com", "Multikey", &key(2).to_multikey()));
        let handles = StaticHandles(HashMap::from([("alice.example.com".to_string(), alice.to_string())]));
        let resolver = IdentityResolver::new(documents, IdentityConfig::default()).with_handles(handles);

        let check = resolver.verify_handle(alice, "alice.example.com").await;
        assert!(check.verified, "{check:?}");
        let check = resolver.verify_handle(mallory, "alice.example.com").await;
        assert!(!check.verified && check.reason.contains("resolves to did:plc:alice"), "{check:?}");
        let check = resolver.verify_handle(alice, "someone.example.com").await;
        assert!(!check.verified && check.reason.contains("claims alice.example.com"), "{check:?}");
        let check = resolver.verify_handle(alice, "handle.invalid-").await;
        assert!(!check.verified, "{check:?}");

        let unconfigured = IdentityResolver::new(Documents::default(), IdentityConfig::default());
        assert!(!unconfigured.verify_handle(alice, "alice.example.com").await.verified);
    }

    #[test]
    fn handle_syntax_txt_and_well_known_parsing() {
        for valid in ["alice.test", "a.b.c", "xn--ls8h.example", "1x.example.com", "alice.bsky.social"] {
            assert!(check_handle_syntax(valid).is_ok(), "{valid}");
        }
        for invalid in ["", "alice", "-a.test", "a-.test", "a..test", "a.test.", "a.1com", "a_b.test", "a/b.test"] {
            assert!(check_handle_syntax(invalid).is_err(), "{invalid:?}");
        }
        assert_eq!(did_from_txt_records("a.test", ["did=did:plc:x"]).unwrap(), "did:plc:x");
        assert_eq!(did_from_txt_records("a.test", ["v=spf1", "did=did:plc:x", "did=did:plc:x"]).unwrap(), "did:plc:x");
        assert!(matches!(
            did_from_txt_records("a.test", ["did=did:plc:x", "did=did:plc:y"]),
            Err(HandleError::Ambiguous { .. })
        ));
        assert!(matches!(did_from_txt_records("a.test", ["v=spf1"]), Err(HandleError::NotFound { .. })));
        assert!(did_from_txt_records("a.test", ["did=plc:x"]).is_err());
        assert_eq!(did_from_well_known("a.test", b"did:plc:x\n").unwrap(), "did:plc:x");
        assert!(did_from_well_known("a.test", b"<html>did:plc:x</html>").is_err());
        assert!(did_from_well_known("a.test", b"did:plc:x did:plc:y").is_err());
    }

    #[test]
    fn the_loopback_override_needs_the_dev_flag_and_a_loopback_url() {
        install_tls_provider();
        let strict = UrlPolicy::default();
        let dev = UrlPolicy { allow_loopback: true };
        assert!(HttpHandleSource::new(strict, Some("http://127.0.0.1:2583".into())).is_err());
        assert!(HttpHandleSource::new(dev, Some("https://pds.example.com".into())).is_err());
        assert!(HttpHandleSource::new(dev, Some("http://localhost:2583/".into())).is_ok());
    }

    /// The override path end to end against a one-shot HTTP server on loopback.
    #[tokio::test]
    async fn the_loopback_override_asks_resolve_handle() {
        install_tls_provider();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let read = socket.read(&mut request).await.unwrap();
            let request = String::from_utf8_lossy(&request[..read]).to_string();
            let body = r#"{"did":"did:plc:alice"}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await.unwrap();
            request
        });
        let source =
            HttpHandleSource::new(UrlPolicy { allow_loopback: true }, Some(format!("http://{address}"))).unwrap();
        assert_eq!(source.resolve_handle("alice.test").await.unwrap(), "did:plc:alice");
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /xrpc/com.atproto.identity.resolveHandle?handle=alice.test "), "{request}");
    }
}
