//! Vulnerability scans and SBOMs: `io.atcr.hold.scan` records and the documents enrichment
//! stored for them (`ContentStored { kind: "scan.vulnerabilities" | "scan.sbom" }`), parsed here
//! with `atcr_storage::scan_formats` from the content store, never the network.
//!
//! | table | key | value |
//! |---|---|---|
//! | `scans` | owner did `\0` manifest digest `\0` hold did | [`ScanRow`]: the latest scan of that manifest by that hold |
//! | `scan_rkeys` | hold did `\0` rkey | owner did `\0` manifest digest |
//! | `scan_content` | kind `\0` scan record AT-URI | [`ScanContentRow`]: what enrichment recorded for the record's document |
//! | `scan_reports` | content digest | the parsed report: `Vec<Vulnerability>` (postcard) |
//! | `scan_report_summaries` | content digest | [`ReportSummary`] |
//! | `scan_sboms` | content digest | [`SbomRow`]: the parsed SBOM |
//! | `package_index` | lowercase package name `\0` version `\0` owner `\0` repository `\0` manifest digest `\0` hold | () |
//!
//! A rescan (the hold rewrites the record, same key) replaces the row; earlier versions stay in
//! the log (and in `record_history`). Parsed documents are keyed by content digest, so the same
//! SBOM shared by many manifests is parsed and stored once. `package_index` holds the packages of
//! the SBOM each current scan points to, so "which images contain openssl 3.0.x" is one range
//! read: `openssl\03.0` up to `openssl\03.0\u{10ffff}`.
//!
//! The content store is handed to the projections once per process ([`use_content_store`]):
//! `ContentStored` events name bytes enrichment verified and stored before appending them, so
//! the views stay a pure function of the log and the (append-only, content-addressed) store.

use std::sync::{Arc, RwLock};

use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use atcr_storage::content::{ContentStore, sha256_hex_of_cid};
use atcr_storage::records::{self, ScanRecord};
use atcr_storage::scan_formats::{Sbom, SbomPackage, Vulnerability, parse_spdx, parse_vulnerability_report};
use atcr_storage::{Event, EventBody};

use crate::tables::ViewTables;
use crate::views::{MANIFESTS, ManifestRow, Touched, decode, key};
use crate::{ProjectionError, Views};

pub const VULNERABILITIES_KIND: &str = "scan.vulnerabilities";
pub const SBOM_KIND: &str = "scan.sbom";

pub(crate) const SCANS: TableDefinition<&str, &[u8]> = TableDefinition::new("scans");
pub(crate) const SCAN_RKEYS: TableDefinition<&str, &str> = TableDefinition::new("scan_rkeys");
pub(crate) const SCAN_CONTENT: TableDefinition<&str, &[u8]> = TableDefinition::new("scan_content");
pub(crate) const SCAN_REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("scan_reports");
pub(crate) const SCAN_REPORT_SUMMARIES: TableDefinition<&str, &[u8]> = TableDefinition::new("scan_report_summaries");
pub(crate) const SCAN_SBOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("scan_sboms");
pub(crate) const PACKAGE_INDEX: TableDefinition<&str, ()> = TableDefinition::new("package_index");

static CONTENT_STORE: RwLock<Option<Arc<ContentStore>>> = RwLock::new(None);

/// Lets the projections read scan documents from `store` (the process's content store). Without
/// it, scan documents are noted as stored but not indexed (a warning says so).
pub fn use_content_store(store: Arc<ContentStore>) {
    if let Ok(mut slot) = CONTENT_STORE.write() {
        *slot = Some(store);
    }
}

fn content_store() -> Option<Arc<ContentStore>> {
    CONTENT_STORE.read().ok().and_then(|slot| slot.clone())
}

/// The latest scan of a manifest by one hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRow {
    pub hold_did: String,
    pub rkey: String,
    /// Repository as the scan record names it.
    pub repository: String,
    /// `ok`, `failed`, `skipped` (or another value as written).
    pub status: String,
    pub reason: Option<String>,
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    pub total: u64,
    pub scanner_version: Option<String>,
    pub scanned_at: Option<String>,
    /// Content digests the record's blobs name (sha256 of the blob CID).
    pub report_digest: Option<String>,
    pub sbom_digest: Option<String>,
    pub offset: u64,
}

impl ScanRow {
    pub fn record_uri(&self) -> String {
        format!("at://{}/{}/{}", self.hold_did, records::HOLD_SCAN, self.rkey)
    }
}

/// What enrichment recorded for one scan document of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanContentRow {
    pub digest: String,
    pub size: u64,
    /// Why it was refused; `None` when stored.
    pub rejected: Option<String>,
}

/// Counts of a parsed report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSummary {
    /// Per severity, in `Severity::ALL` order.
    pub counts: [u64; 6],
    /// Findings with a fixed-in version.
    pub fixable: u64,
    pub fixable_critical: u64,
}

/// A parsed SBOM as kept in the views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbomRow {
    pub spdx_version: String,
    pub name: Option<String>,
    pub created: Option<String>,
    pub creators: Vec<String>,
    pub packages: Vec<SbomPackage>,
}

impl From<Sbom> for SbomRow {
    fn from(sbom: Sbom) -> Self {
        SbomRow {
            spdx_version: sbom.spdx_version,
            name: sbom.name,
            created: sbom.created,
            creators: sbom.creators,
            packages: sbom.packages,
        }
    }
}

pub(crate) fn open_all(txn: &WriteTransaction) -> Result<(), ProjectionError> {
    txn.open_table(SCANS)?;
    txn.open_table(SCAN_RKEYS)?;
    txn.open_table(SCAN_CONTENT)?;
    txn.open_table(SCAN_REPORTS)?;
    txn.open_table(SCAN_REPORT_SUMMARIES)?;
    txn.open_table(SCAN_SBOMS)?;
    txn.open_table(PACKAGE_INDEX)?;
    Ok(())
}

fn digest_of_cid(cid: &str) -> Option<String> {
    sha256_hex_of_cid(cid).map(|hex| format!("sha256:{hex}"))
}

/// Applies what an event says about scans; everything else is left to the other views.
pub(crate) fn apply(
    txn: &impl ViewTables,
    offset: u64,
    event: &Event,
    touched: &mut Touched,
) -> Result<(), ProjectionError> {
    match &event.body {
        EventBody::RecordPut { collection, rkey, record, .. } if collection == records::HOLD_SCAN => {
            match ScanRecord::decode(record, rkey) {
                Ok(scan) => put_scan(txn, offset, &event.did, rkey, scan, touched),
                Err(error) => {
                    tracing::warn!(offset, %error, "scan record skipped");
                    Ok(())
                }
            }
        }
        EventBody::RecordDeleted { collection, rkey, .. } if collection == records::HOLD_SCAN => {
            delete_scan(txn, &event.did, rkey, touched)
        }
        EventBody::ContentStored { kind, digest, size, subject, .. }
            if kind == VULNERABILITIES_KIND || kind == SBOM_KIND =>
        {
            let row = ScanContentRow { digest: digest.clone(), size: *size, rejected: None };
            txn.insert_row(SCAN_CONTENT, key(&[kind, subject]).as_str(), &row)?;
            parse_document(txn, offset, kind, digest)?;
            if let Some((owner, manifest, scan)) = scan_of_subject(txn, subject)? {
                touched.insert(&owner, Some(&scan.repository));
                if kind == SBOM_KIND && scan.sbom_digest.as_deref() == Some(digest.as_str()) {
                    index_packages(txn, &owner, &manifest, &scan, true)?;
                }
            }
            Ok(())
        }
        EventBody::ContentRejected { kind, digest, subject, reason }
            if kind == VULNERABILITIES_KIND || kind == SBOM_KIND =>
        {
            let row = ScanContentRow { digest: digest.clone(), size: 0, rejected: Some(reason.clone()) };
            txn.insert_row(SCAN_CONTENT, key(&[kind, subject]).as_str(), &row)?;
            if let Some((owner, _, scan)) = scan_of_subject(txn, subject)? {
                touched.insert(&owner, Some(&scan.repository));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Parses a stored document once per content digest.
fn parse_document(txn: &impl ViewTables, offset: u64, kind: &str, digest: &str) -> Result<(), ProjectionError> {
    let table_has =
        if kind == SBOM_KIND { txn.contains(SCAN_SBOMS, digest)? } else { txn.contains(SCAN_REPORTS, digest)? };
    if table_has {
        return Ok(());
    }
    let Some(store) = content_store() else {
        tracing::warn!(offset, kind, digest, "no content store attached to the projections: scan document not indexed");
        return Ok(());
    };
    let bytes = match store.get(digest) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            tracing::warn!(offset, kind, digest, "scan document announced but not in the content store");
            return Ok(());
        }
        Err(error) => {
            tracing::warn!(offset, kind, digest, %error, "scan document unreadable from the content store");
            return Ok(());
        }
    };
    if kind == SBOM_KIND {
        match parse_spdx(&bytes) {
            Ok(sbom) => txn.insert_row(SCAN_SBOMS, digest, &SbomRow::from(sbom))?,
            Err(error) => tracing::warn!(offset, digest, %error, "stored SBOM does not parse"),
        }
    } else {
        match parse_vulnerability_report(&bytes) {
            Ok(report) => {
                let summary = ReportSummary {
                    counts: report.counts(),
                    fixable: report.vulnerabilities.iter().filter(|vulnerability| vulnerability.is_fixable()).count()
                        as u64,
                    fixable_critical: report
                        .vulnerabilities
                        .iter()
                        .filter(|vulnerability| {
                            vulnerability.is_fixable()
                                && vulnerability.severity == atcr_storage::scan_formats::Severity::Critical
                        })
                        .count() as u64,
                };
                txn.insert_row(SCAN_REPORTS, digest, &report.vulnerabilities)?;
                txn.insert_row(SCAN_REPORT_SUMMARIES, digest, &summary)?;
            }
            Err(error) => tracing::warn!(offset, digest, %error, "stored vulnerability report does not parse"),
        }
    }
    Ok(())
}

/// The scan a record AT-URI names: (owner, manifest digest, row).
fn scan_of_subject(txn: &impl ViewTables, subject: &str) -> Result<Option<(String, String, ScanRow)>, ProjectionError> {
    let Some(rest) = subject.strip_prefix("at://") else { return Ok(None) };
    let mut parts = rest.splitn(3, '/');
    let (Some(hold), Some(collection), Some(rkey)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(None);
    };
    if collection != records::HOLD_SCAN {
        return Ok(None);
    }
    let Some(target) = txn.get(SCAN_RKEYS, key(&[hold, rkey]).as_str())? else { return Ok(None) };
    let Some((owner, manifest)) = target.split_once('\0') else { return Ok(None) };
    let Some(bytes) = txn.get(SCANS, key(&[owner, manifest, hold]).as_str())? else { return Ok(None) };
    Ok(Some((owner.to_string(), manifest.to_string(), decode("scans", &bytes)?)))
}

fn package_key(package: &SbomPackage, owner: &str, repository: &str, manifest: &str, hold: &str) -> String {
    key(&[&package.name.to_lowercase(), &package.version, owner, repository, manifest, hold])
}

/// Adds (or removes) the package index entries of a scan's SBOM, when it is parsed.
fn index_packages(
    txn: &impl ViewTables,
    owner: &str,
    manifest: &str,
    scan: &ScanRow,
    add: bool,
) -> Result<(), ProjectionError> {
    let Some(sbom_digest) = &scan.sbom_digest else { return Ok(()) };
    let Some(bytes) = txn.get(SCAN_SBOMS, sbom_digest)? else { return Ok(()) };
    let sbom: SbomRow = decode("scan_sboms", &bytes)?;
    for package in &sbom.packages {
        if package.name.contains('\0') || package.version.contains('\0') {
            continue;
        }
        let entry = package_key(package, owner, &scan.repository, manifest, &scan.hold_did);
        if add {
            txn.insert(PACKAGE_INDEX, entry.as_str(), ())?;
        } else {
            txn.remove(PACKAGE_INDEX, entry.as_str())?;
        }
    }
    Ok(())
}

fn put_scan(
    txn: &impl ViewTables,
    offset: u64,
    hold: &str,
    rkey: &str,
    scan: ScanRecord,
    touched: &mut Touched,
) -> Result<(), ProjectionError> {
    // A rescan (or a record moved to another manifest) replaces what the previous version said.
    delete_scan(txn, hold, rkey, touched)?;
    let owner = scan.owner_did.clone();
    let manifest = scan.manifest_digest.clone();
    let row = ScanRow {
        hold_did: hold.to_string(),
        rkey: rkey.to_string(),
        repository: scan.repository,
        status: scan.status.as_str().to_string(),
        reason: scan.reason,
        critical: scan.critical,
        high: scan.high,
        medium: scan.medium,
        low: scan.low,
        total: scan.total,
        scanner_version: scan.scanner_version,
        scanned_at: scan.scanned_at,
        report_digest: scan.vuln_report.as_ref().and_then(|blob| digest_of_cid(&blob.cid)),
        sbom_digest: scan.sbom.as_ref().and_then(|blob| digest_of_cid(&blob.cid)),
        offset,
    };
    txn.insert(SCAN_RKEYS, key(&[hold, rkey]).as_str(), key(&[&owner, &manifest]).as_str())?;
    txn.insert_row(SCANS, key(&[&owner, &manifest, hold]).as_str(), &row)?;
    index_packages(txn, &owner, &manifest, &row, true)?;
    touched.insert(&owner, Some(&row.repository));
    Ok(())
}

fn delete_scan(txn: &impl ViewTables, hold: &str, rkey: &str, touched: &mut Touched) -> Result<(), ProjectionError> {
    let Some(target) = txn.remove(SCAN_RKEYS, key(&[hold, rkey]).as_str())? else { return Ok(()) };
    let Some((owner, manifest)) = target.split_once('\0') else { return Ok(()) };
    if let Some(bytes) = txn.remove(SCANS, key(&[owner, manifest, hold]).as_str())? {
        let row: ScanRow = decode("scans", &bytes)?;
        index_packages(txn, owner, manifest, &row, false)?;
        touched.insert(owner, Some(&row.repository));
    }
    Ok(())
}

/// The state of one scan document as a page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentState {
    /// The record names no such document.
    Absent,
    /// Named, not fetched yet.
    Pending,
    /// Fetched and parsed.
    Indexed,
    /// Refused by enrichment (or stored but not parseable here): the reason.
    Unreadable(String),
}

/// One package search hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageHit {
    pub name: String,
    pub version: String,
    pub did: String,
    pub repository: String,
    pub manifest: String,
    pub hold: String,
}

/// Scan-derived facts about one repository, for its search document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepositoryScanStatus {
    pub scanned: bool,
    pub critical: bool,
    pub fixable: bool,
}

impl RepositoryScanStatus {
    /// The search index's `vuln` tokens (`is:scanned`, `is:no-critical`, `is:fixable`).
    pub fn tokens(&self) -> Vec<String> {
        [(self.scanned, "scanned"), (self.critical, "critical"), (self.fixable, "fixable")]
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, token)| token.to_string())
            .collect()
    }
}

/// The scans of a manifest, the one pages show first: its own hold's, else the latest.
fn scans_in(read: &redb::ReadTransaction, did: &str, manifest: &str) -> Result<Vec<ScanRow>, ProjectionError> {
    let Some(table) = open_read(read, SCANS)? else { return Ok(Vec::new()) };
    let prefix = format!("{}\0", key(&[did, manifest]));
    let mut rows = Vec::new();
    for entry in table.range(prefix.as_str()..)? {
        let (entry_key, value) = entry?;
        if !entry_key.value().starts_with(prefix.as_str()) {
            break;
        }
        rows.push(decode::<ScanRow>("scans", value.value())?);
    }
    if rows.len() > 1 {
        let own_hold = read
            .open_table(MANIFESTS)?
            .get(key(&[did, manifest]).as_str())?
            .map(|bytes| decode::<ManifestRow>("manifests", bytes.value()))
            .transpose()?
            .and_then(|row| row.hold_did);
        rows.sort_by_key(|row| (Some(&row.hold_did) != own_hold.as_ref(), std::cmp::Reverse(row.offset)));
    }
    Ok(rows)
}

fn scan_report_summary_in(
    read: &redb::ReadTransaction,
    digest: &str,
) -> Result<Option<ReportSummary>, ProjectionError> {
    let Some(table) = open_read(read, SCAN_REPORT_SUMMARIES)? else { return Ok(None) };
    table.get(digest)?.map(|bytes| decode("scan_report_summaries", bytes.value())).transpose()
}

/// Whether any image the tags point to was scanned, has critical findings, or has fixable ones,
/// read in one transaction (the search index asks this for every repository it indexes).
/// Whether any scan is recorded: without one, every repository's scan status is the default.
pub(crate) fn any_scans(read: &redb::ReadTransaction) -> Result<bool, ProjectionError> {
    match open_read(read, SCANS)? {
        Some(scans) => Ok(!scans.is_empty()?),
        None => Ok(false),
    }
}

pub(crate) fn scan_status_of_tags(
    read: &redb::ReadTransaction,
    did: &str,
    tags: &[(String, crate::views::TagRow)],
) -> Result<RepositoryScanStatus, ProjectionError> {
    let mut status = RepositoryScanStatus::default();
    let Some(scans) = open_read(read, SCANS)? else { return Ok(status) };
    if scans.is_empty()? {
        return Ok(status);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (_, row) in tags {
        if !seen.insert(row.digest.as_str()) {
            continue;
        }
        let Some(scan) = scans_in(read, did, &row.digest)?.into_iter().next() else { continue };
        if scan.status != "ok" {
            continue;
        }
        status.scanned = true;
        status.critical |= scan.critical > 0;
        if let Some(digest) = &scan.report_digest
            && let Some(summary) = scan_report_summary_in(read, digest)?
        {
            status.fixable |= summary.fixable > 0;
        }
    }
    Ok(status)
}

fn open_read<V: redb::Value + 'static>(
    read: &redb::ReadTransaction,
    table: TableDefinition<&'static str, V>,
) -> Result<Option<redb::ReadOnlyTable<&'static str, V>>, ProjectionError> {
    match read.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

impl Views {
    /// Every hold's latest scan of a manifest of `did`, the manifest's own hold first.
    pub fn scans(&self, did: &str, manifest: &str) -> Result<Vec<ScanRow>, ProjectionError> {
        scans_in(&self.read()?, did, manifest)
    }

    /// The scan pages show for a manifest: its own hold's, else the latest.
    pub fn scan(&self, did: &str, manifest: &str) -> Result<Option<ScanRow>, ProjectionError> {
        Ok(self.scans(did, manifest)?.into_iter().next())
    }

    /// Whether a scan's report or SBOM is there to show.
    pub fn scan_document_state(&self, scan: &ScanRow, kind: &str) -> Result<DocumentState, ProjectionError> {
        let expected = if kind == SBOM_KIND { &scan.sbom_digest } else { &scan.report_digest };
        let Some(expected) = expected else { return Ok(DocumentState::Absent) };
        let read = self.read()?;
        let recorded = match open_read(&read, SCAN_CONTENT)? {
            Some(table) => table
                .get(key(&[kind, &scan.record_uri()]).as_str())?
                .map(|bytes| decode::<ScanContentRow>("scan_content", bytes.value()))
                .transpose()?,
            None => None,
        };
        let Some(recorded) = recorded else { return Ok(DocumentState::Pending) };
        if !recorded.digest.is_empty() && recorded.digest != *expected {
            return Ok(DocumentState::Pending); // about an earlier version of the record
        }
        if let Some(reason) = recorded.rejected {
            return Ok(DocumentState::Unreadable(reason));
        }
        let parsed = match kind {
            SBOM_KIND => {
                open_read(&read, SCAN_SBOMS)?.map(|table| table.get(expected.as_str()).map(|row| row.is_some()))
            }
            _ => open_read(&read, SCAN_REPORTS)?.map(|table| table.get(expected.as_str()).map(|row| row.is_some())),
        };
        match parsed.transpose()? {
            Some(true) => Ok(DocumentState::Indexed),
            _ => Ok(DocumentState::Unreadable("stored, but not indexed by this build".into())),
        }
    }

    /// The parsed findings of a report, by content digest.
    pub fn scan_report(&self, digest: &str) -> Result<Option<Vec<Vulnerability>>, ProjectionError> {
        let read = self.read()?;
        let Some(table) = open_read(&read, SCAN_REPORTS)? else { return Ok(None) };
        table.get(digest)?.map(|bytes| decode("scan_reports", bytes.value())).transpose()
    }

    pub fn scan_report_summary(&self, digest: &str) -> Result<Option<ReportSummary>, ProjectionError> {
        scan_report_summary_in(&self.read()?, digest)
    }

    /// The parsed SBOM, by content digest.
    pub fn scan_sbom(&self, digest: &str) -> Result<Option<SbomRow>, ProjectionError> {
        let read = self.read()?;
        let Some(table) = open_read(&read, SCAN_SBOMS)? else { return Ok(None) };
        table.get(digest)?.map(|bytes| decode("scan_sboms", bytes.value())).transpose()
    }

    /// Images containing a package: name (case-insensitive, exact) and a version prefix, in key
    /// order after `after` (a hit's index key), at most `limit`.
    pub fn package_search(
        &self,
        name: &str,
        version_prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, PackageHit)>, bool), ProjectionError> {
        let read = self.read()?;
        let Some(table) = open_read(&read, PACKAGE_INDEX)? else { return Ok((Vec::new(), false)) };
        let name = name.to_lowercase();
        let prefix = format!("{name}\0{version_prefix}");
        let start = after.filter(|after| after.starts_with(prefix.as_str())).unwrap_or(prefix.as_str()).to_string();
        let mut hits = Vec::new();
        for entry in table.range(start.as_str()..)? {
            let (entry_key, _) = entry?;
            let entry_key = entry_key.value();
            if !entry_key.starts_with(prefix.as_str()) {
                break;
            }
            if after == Some(entry_key) {
                continue;
            }
            if hits.len() == limit {
                return Ok((hits, true));
            }
            let parts: Vec<&str> = entry_key.split('\0').collect();
            let [package, version, did, repository, manifest, hold] = parts.as_slice() else { continue };
            hits.push((
                entry_key.to_string(),
                PackageHit {
                    name: package.to_string(),
                    version: version.to_string(),
                    did: did.to_string(),
                    repository: repository.to_string(),
                    manifest: manifest.to_string(),
                    hold: hold.to_string(),
                },
            ));
        }
        Ok((hits, false))
    }

    /// Whether any image a tag of the repository points to was scanned, has critical findings,
    /// or has fixable ones (for search filters).
    pub fn repository_scan_status(&self, did: &str, repository: &str) -> Result<RepositoryScanStatus, ProjectionError> {
        let read = self.read()?;
        let tags = crate::browse::tag_rows(&read, did, repository)?;
        scan_status_of_tags(&read, did, &tags)
    }

    /// Whether the manifest row exists (package hits for deleted manifests are dropped).
    pub fn has_manifest(&self, did: &str, digest: &str) -> Result<bool, ProjectionError> {
        let read = self.read()?;
        let table = read.open_table(MANIFESTS)?;
        Ok(table.get(key(&[did, digest]).as_str())?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use atcr_storage::PutAction;
    use ipld_core::cid::Cid;
    use ipld_core::ipld;
    use ipld_core::ipld::Ipld;

    const OWNER: &str = "did:plc:owner";
    const HOLD: &str = "did:plc:hold";

    fn raw_cid(bytes: &[u8]) -> Cid {
        let hex = &atcr_storage::content::sha256_digest(bytes)["sha256:".len()..];
        let digest: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap()).collect();
        Cid::new_v1(0x55, ipld_core::cid::multihash::Multihash::<64>::wrap(0x12, &digest).unwrap())
    }

    fn sbom(openssl: &str) -> Vec<u8> {
        format!(
            r#"{{"spdxVersion": "SPDX-2.3", "packages": [{{"name": "OpenSSL", "versionInfo": "{openssl}"}}, {{"name": "zlib", "versionInfo": "1.3"}}]}}"#
        )
        .into_bytes()
    }

    fn event(did: &str, body: EventBody) -> Event {
        Event {
            source: atcr_storage::Source::Firehose,
            upstream_seq: None,
            did: did.into(),
            rev: None,
            upstream_time: None,
            received_at_us: 0,
            commit_cid: None,
            body,
        }
    }

    fn scan_put(hex: &str, sbom: &[u8]) -> Event {
        let record = ipld!({
            "manifest": format!("at://{OWNER}/io.atcr.manifest/{hex}"), "repository": "app", "userDid": OWNER,
            "critical": 1, "high": 0, "medium": 0, "low": 0, "total": 1, "status": "ok",
            "sbomBlob": { "$type": "blob", "ref": Ipld::Link(raw_cid(sbom)), "mimeType": "application/spdx+json", "size": sbom.len() },
        });
        let record = serde_ipld_dagcbor::to_vec(&record).unwrap();
        let body = EventBody::RecordPut {
            collection: records::HOLD_SCAN.into(),
            rkey: hex.into(),
            cid: "bafyrei".into(),
            action: PutAction::Create,
            record,
        };
        event(HOLD, body)
    }

    fn stored(hex: &str, sbom: &[u8]) -> Event {
        let body = EventBody::ContentStored {
            kind: SBOM_KIND.into(),
            digest: atcr_storage::content::sha256_digest(sbom),
            media_type: "application/spdx+json".into(),
            size: sbom.len() as u64,
            subject: format!("at://{HOLD}/{}/{hex}", records::HOLD_SCAN),
        };
        event(HOLD, body)
    }

    fn versions(views: &Views, prefix: &str) -> Vec<String> {
        let (hits, _) = views.package_search("openssl", prefix, None, 100).unwrap();
        hits.into_iter().map(|(_, hit)| hit.version).collect()
    }

    #[test]
    fn a_rescan_replaces_the_package_index_and_a_delete_clears_it() {
        let directory = tempfile::tempdir().unwrap();
        let content = Arc::new(ContentStore::open(&directory.path().join("content")).unwrap());
        use_content_store(content.clone());
        let views = Views::open(&directory.path().join("views.redb")).unwrap();
        let hex = "ab".repeat(32);
        let (old, new) = (sbom("3.0.7"), sbom("3.1.4"));
        for bytes in [&old, &new] {
            content.put(&atcr_storage::content::sha256_digest(bytes), bytes).unwrap();
        }
        let apply_all = |events: &[Event]| {
            let txn = views.database().begin_write().unwrap();
            let mut touched = Touched::new();
            for (offset, event) in events.iter().enumerate() {
                apply(&txn, offset as u64, event, &mut touched).unwrap();
            }
            txn.commit().unwrap();
        };
        apply_all(&[scan_put(&hex, &old), stored(&hex, &old)]);
        assert_eq!(versions(&views, "3.0"), vec!["3.0.7".to_string()]);
        // the hold rescans: the new SBOM replaces the old one in the index
        apply_all(&[scan_put(&hex, &new)]);
        assert!(versions(&views, "").is_empty(), "the new SBOM is not stored yet");
        apply_all(&[stored(&hex, &new)]);
        assert_eq!(versions(&views, ""), vec!["3.1.4".to_string()]);
        let digest = format!("sha256:{hex}");
        assert_eq!(views.scans(OWNER, &digest).unwrap().len(), 1, "one row per (manifest, hold)");
        // applying the same events again changes nothing
        apply_all(&[scan_put(&hex, &new), stored(&hex, &new)]);
        assert_eq!(versions(&views, ""), vec!["3.1.4".to_string()]);
        let deleted =
            EventBody::RecordDeleted { collection: records::HOLD_SCAN.into(), rkey: hex.clone(), prev_cid: None };
        apply_all(&[event(HOLD, deleted)]);
        assert!(versions(&views, "").is_empty());
        assert!(views.scans(OWNER, &digest).unwrap().is_empty());
    }
}
