//! Metric names of ingest, in one place so dashboards and docs have one list to read.
//! Recorded through the `metrics` facade; `web` renders them at `/metrics`.

pub const FRAMES_SEEN: &str = "atcr_ingest_frames_total";
pub const FRAMES_MATCHED: &str = "atcr_ingest_frames_matched_total";
pub const FRAMES_FILTERED: &str = "atcr_ingest_frames_filtered_total";
pub const FRAMES_QUARANTINED: &str = "atcr_ingest_frames_quarantined_total";
pub const FRAMES_DUPLICATE: &str = "atcr_ingest_frames_duplicate_total";
pub const EVENTS_APPENDED: &str = "atcr_log_events_appended_total";
pub const CURSOR: &str = "atcr_ingest_cursor";
/// Seconds between now and the upstream time of the newest frame handled.
pub const LAG_SECONDS: &str = "atcr_ingest_lag_seconds";
pub const QUEUE_DEPTH: &str = "atcr_ingest_queue_depth";
pub const CONNECTIONS: &str = "atcr_ingest_connections_total";
pub const RECONNECTS: &str = "atcr_ingest_reconnects_total";
/// DID document fetches of the identity resolver, by `outcome` (`ok`, `error`).
pub const IDENTITY_FETCHES: &str = "atcr_identity_fetches_total";
/// `io.atcr.*` commits that passed the Sync 1.1 checks.
pub const COMMITS_VERIFIED: &str = "atcr_ingest_commits_verified_total";
/// Verified by signature only: the frame carried no `prevData` to prove its ops against.
pub const COMMITS_UNPROVEN: &str = "atcr_ingest_commits_ops_unproven_total";
/// Commits refused (quarantined), by `reason` (`stale_rev`, `signature`, `ops_disagree`, …).
pub const COMMITS_REJECTED: &str = "atcr_ingest_commits_rejected_total";
/// Accounts marked for resync, by `cause` (`since`: a broken chain, `sync`: upstream `#sync`).
pub const REPOS_DESYNCHRONIZED: &str = "atcr_ingest_repos_desynchronized_total";
/// DID documents fetched again after a signature failure.
pub const KEY_REFRESHES: &str = "atcr_ingest_key_refreshes_total";
/// Handles checked both ways by enrichment, by `outcome` (`verified`, `refused`).
pub const HANDLE_CHECKS: &str = "atcr_identity_handle_checks_total";
