//! Configuration: defaults < TOML file < `ATCR_*` environment < command-line flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    /// Where the event log and everything else atcr keeps lives.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub listen: SocketAddr,
    /// Relay or PDS to follow (`wss://…`, `https://…`, `ws://…`, `http://…`); none = serve only.
    pub upstream: Option<String>,
    /// Where to start when no cursor is stored for the upstream (default: live events only).
    pub start_cursor: Option<i64>,
    /// On `FutureCursor`, start over from upstream's beginning instead of stopping.
    pub reset_cursor: bool,
    /// `text` or `json` log lines.
    pub log_format: LogFormat,
    /// PLC directory for `did:plc` documents.
    pub plc_directory: String,
    /// Development only: let outbound fetches (DID documents, PDS blobs) reach loopback over
    /// plain http. Never set this in production.
    pub dev_allow_loopback: bool,
    /// Development only (needs `dev_allow_loopback`): resolve handles with this loopback PDS's
    /// `com.atproto.identity.resolveHandle` instead of DNS and HTTPS (`.test` handles of a
    /// local PDS exist in no DNS).
    pub dev_handle_resolver: Option<String>,
    /// `atcr serve` backfills at startup, beside live ingest: every active account of this PDS
    /// (`listRepos`)…
    pub backfill_pds: Option<String>,
    /// …or every account this relay lists with `io.atcr.*` records (`listReposByCollection`)…
    pub backfill_relay: Option<String>,
    /// …or exactly these DIDs.
    pub backfill_dids: Vec<String>,
    /// Holds atcr serves itself: hold DID → directory with `sha256/<hex>` blob files.
    pub local_holds: BTreeMap<String, PathBuf>,
    /// Holds atcr serves itself from an S3-compatible bucket, by hold DID: pulls are redirected
    /// to presigned URLs (signed for the request's method).
    pub s3_holds: BTreeMap<String, S3HoldConfig>,
    /// Where `atcr replay snapshot --to-s3` puts view snapshots and `restore --from-s3` finds
    /// them (`[snapshot_s3]`, same fields as an S3 hold; objects under `<key_prefix>snapshots/`).
    pub snapshot_s3: Option<S3HoldConfig>,
    /// Webhook subscriptions (`[[webhooks]]`: id, url, secret, events, did, repository,
    /// from_beginning); `atcr webhooks add` keeps more in `<data_dir>/webhooks.json`.
    pub webhooks: Vec<atcr_ingest::webhooks::Subscription>,
    /// Webhook delivery timeouts, backoff and retry limit (`[webhook_delivery]`).
    pub webhook_delivery: WebhookDeliveryConfig,
    /// Deep inspection of layers: enrichment reads layer tarballs up to this many (compressed)
    /// bytes through their hold and keeps each one's file list; larger layers are skipped with
    /// a reason. Off when unset or 0.
    pub deep_inspection_max_bytes: Option<u64>,
    /// The largest scan vulnerability report or SBOM enrichment fetches (default 16 MiB); a
    /// larger one is quarantined with the reason.
    pub scan_blob_max_bytes: Option<u64>,
}

/// `[webhook_delivery]`: milliseconds, so a test can shorten the backoff.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookDeliveryConfig {
    pub timeout_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub max_attempts: u32,
    /// Hours the outbox keeps an event every running subscription is past; 0 keeps everything.
    pub outbox_retention_hours: u64,
}

impl Default for WebhookDeliveryConfig {
    fn default() -> Self {
        let defaults = atcr_ingest::webhooks::DeliveryConfig::default();
        WebhookDeliveryConfig {
            timeout_ms: defaults.timeout.as_millis() as u64,
            backoff_base_ms: defaults.backoff_base.as_millis() as u64,
            backoff_max_ms: defaults.backoff_max.as_millis() as u64,
            max_attempts: defaults.max_attempts,
            outbox_retention_hours: defaults.outbox_retention.map_or(0, |retention| retention.as_secs() / 3600),
        }
    }
}

impl WebhookDeliveryConfig {
    pub fn to_delivery(self) -> atcr_ingest::webhooks::DeliveryConfig {
        use std::time::Duration;
        atcr_ingest::webhooks::DeliveryConfig {
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            max_attempts: self.max_attempts.max(1),
            outbox_retention: (self.outbox_retention_hours > 0)
                .then(|| Duration::from_secs(self.outbox_retention_hours.saturating_mul(3600))),
        }
    }
}

/// `[s3_holds."did:web:hold.example"]` (and `[snapshot_s3]`) in the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct S3HoldConfig {
    pub endpoint: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default)]
    pub key_prefix: String,
    #[serde(default = "default_path_style")]
    pub path_style: bool,
    /// Seconds a presigned URL stays valid.
    #[serde(default = "default_presign_seconds")]
    pub presign_expiry_seconds: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_path_style() -> bool {
    true
}

fn default_presign_seconds() -> u64 {
    15 * 60
}

impl S3HoldConfig {
    pub fn to_storage(&self) -> atcr_storage::blobs::S3Config {
        let mut config = atcr_storage::blobs::S3Config::new(
            self.endpoint.clone(),
            self.bucket.clone(),
            self.access_key_id.clone(),
            self.secret_access_key.clone(),
        );
        config.region = self.region.clone();
        config.key_prefix = self.key_prefix.clone();
        config.path_style = self.path_style;
        config.presign_expiry = std::time::Duration::from_secs(self.presign_expiry_seconds);
        config
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: None,
            start_cursor: None,
            reset_cursor: false,
            log_format: LogFormat::Text,
            plc_directory: "https://plc.directory".into(),
            dev_allow_loopback: false,
            dev_handle_resolver: None,
            backfill_pds: None,
            backfill_relay: None,
            backfill_dids: Vec::new(),
            local_holds: BTreeMap::new(),
            s3_holds: BTreeMap::new(),
            snapshot_s3: None,
            webhooks: Vec::new(),
            webhook_delivery: WebhookDeliveryConfig::default(),
            deep_inspection_max_bytes: None,
            scan_blob_max_bytes: None,
        }
    }
}

impl Config {
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join("log.redb")
    }

    /// The projections: `views/CURRENT` names the live build of each, `views/<name>-<build>/`.
    pub fn views_dir(&self) -> PathBuf {
        self.data_dir.join("views")
    }

    /// Where the views lived before builds existed; moved into `views/` on the next start.
    pub fn legacy_views_path(&self) -> PathBuf {
        self.data_dir.join("views.redb")
    }

    pub fn content_path(&self) -> PathBuf {
        self.data_dir.join("content")
    }
}

/// Flags shared by every command; each overrides the same key from file and environment.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct ConfigFlags {
    /// TOML config file (default: ./atcr.toml when it exists).
    #[arg(long, global = true, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Data directory [env: ATCR_DATA_DIR] [default: ./data].
    #[arg(long, global = true, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address [env: ATCR_LISTEN] [default: 127.0.0.1:8080].
    #[arg(long, global = true, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Log line format [env: ATCR_LOG_FORMAT].
    #[arg(long, global = true, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// Flags of the commands that ingest.
#[derive(Debug, Clone, Default, Args, Serialize)]
pub struct IngestFlags {
    /// Relay or PDS to follow [env: ATCR_UPSTREAM].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Cursor to start from when none is stored (0 = everything upstream still has) [env: ATCR_START_CURSOR].
    #[arg(long, value_name = "SEQ")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_cursor: Option<i64>,
    /// On FutureCursor, start over from upstream's beginning instead of stopping [env: ATCR_RESET_CURSOR].
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reset_cursor: bool,
    /// PLC directory URL for did:plc documents [env: ATCR_PLC_DIRECTORY] [default: https://plc.directory].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plc_directory: Option<String>,
    /// Development only: allow outbound fetches to loopback over http [env: ATCR_DEV_ALLOW_LOOPBACK].
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dev_allow_loopback: bool,
    /// Development only: resolve handles with this loopback PDS's resolveHandle instead of DNS and HTTPS
    /// (needs --dev-allow-loopback) [env: ATCR_DEV_HANDLE_RESOLVER].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_handle_resolver: Option<String>,
    /// While ingesting, backfill every active account of this PDS (like `atcr backfill --pds`,
    /// resumable) [env: ATCR_BACKFILL_PDS].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill_pds: Option<String>,
    /// While ingesting, backfill every account this relay lists with io.atcr.* records [env: ATCR_BACKFILL_RELAY].
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backfill_relay: Option<String>,
    /// While ingesting, backfill this account (repeatable).
    #[arg(long = "backfill-did", value_name = "DID")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backfill_dids: Vec<String>,
    /// Serve a hold's blobs from a local directory (`sha256/<hex>` files): DID=DIR, repeatable.
    #[arg(long = "local-hold", value_name = "DID=DIR", value_parser = parse_local_hold)]
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "serialize_holds")]
    pub local_holds: Vec<(String, PathBuf)>,
    /// Read layer tarballs up to this many bytes and list their files (off by default)
    /// [env: ATCR_DEEP_INSPECTION_MAX_BYTES].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deep_inspection_max_bytes: Option<u64>,
    /// The largest scan report or SBOM to fetch (default 16 MiB) [env: ATCR_SCAN_BLOB_MAX_BYTES].
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_blob_max_bytes: Option<u64>,
}

fn parse_local_hold(text: &str) -> Result<(String, PathBuf), String> {
    let (did, directory) = text.split_once('=').ok_or("expected DID=DIR")?;
    if !did.starts_with("did:") {
        return Err(format!("{did:?} is not a DID"));
    }
    Ok((did.to_string(), PathBuf::from(directory)))
}

fn serialize_holds<S: serde::Serializer>(holds: &[(String, PathBuf)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(holds.iter().map(|(did, directory)| (did, directory)))
}

pub fn load(flags: &ConfigFlags, ingest: Option<&IngestFlags>) -> anyhow::Result<Config> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    match &flags.config {
        Some(path) => {
            anyhow::ensure!(path.exists(), "config file {} does not exist", path.display());
            figment = figment.merge(Toml::file(path));
        }
        None => figment = figment.merge(Toml::file("atcr.toml")),
    }
    figment = figment.merge(Env::prefixed("ATCR_")).merge(Serialized::defaults(flags));
    if let Some(ingest) = ingest {
        figment = figment.merge(Serialized::defaults(ingest));
    }
    figment.extract().context("invalid configuration")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_outbox_keeps_a_week_unless_told_otherwise_and_everything_at_zero() {
        let default = WebhookDeliveryConfig::default().to_delivery();
        assert_eq!(default.outbox_retention, Some(Duration::from_secs(7 * 24 * 3600)));
        let parse = |toml: &str| -> WebhookDeliveryConfig {
            Figment::from(Serialized::defaults(WebhookDeliveryConfig::default()))
                .merge(Toml::string(toml))
                .extract()
                .expect("config")
        };
        let day = parse("outbox_retention_hours = 24").to_delivery();
        assert_eq!(day.outbox_retention, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(day.max_attempts, default.max_attempts, "the other keys keep their defaults");
        assert_eq!(parse("outbox_retention_hours = 0").to_delivery().outbox_retention, None);
    }
}
