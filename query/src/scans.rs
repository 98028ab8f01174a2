//! Vulnerability scans and SBOMs as pages and the JSON API read them: a manifest's scan summary
//! (severity counts, status, scanner), its findings (filterable), its packages and license
//! summary, two tags compared (findings added, fixed, unchanged; packages added, removed,
//! upgraded), and the network-wide package search ("which images contain openssl 3.0.x").
//! Everything comes from the views (`atcr_projections::scans`); nothing here parses documents.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use atcr_projections::scans::{DocumentState, SBOM_KIND, ScanRow, VULNERABILITIES_KIND};
use atcr_projections::{ProjectionError, Views};
use atcr_storage::records::is_sha256_digest;
/// Severity names and their order (`Severity::parse("high")`), for filters.
pub use atcr_storage::scan_formats::Severity;
use atcr_storage::scan_formats::{SbomPackage, Vulnerability, advisory_links, purl_link};

use crate::registry::RegistryQuery;

#[derive(Debug, thiserror::Error)]
pub enum ScanQueryError {
    #[error("views: {0}")]
    Views(#[from] ProjectionError),
}

/// Severity counts as the scan record states them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct SeverityCounts {
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    pub total: u64,
}

/// A scan of one manifest, as a badge or a page header shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ScanSummary {
    /// The hold that scanned the image.
    pub hold: String,
    /// `ok`, `failed`, `skipped` (or another value the hold wrote).
    pub status: String,
    /// Why a scan failed or was skipped, as the hold says.
    pub reason: Option<String>,
    pub counts: SeverityCounts,
    pub scanner: Option<String>,
    pub scanned_at: Option<String>,
    /// The vulnerability report: `absent`, `pending`, `indexed` or `unreadable`.
    pub report: String,
    /// The SBOM: `absent`, `pending`, `indexed` or `unreadable`.
    pub sbom: String,
    /// Why a document is unreadable (the quarantine reason).
    pub problems: Vec<String>,
    /// Findings with a fixed-in version (when the report is indexed).
    pub fixable: Option<u64>,
    /// The scan record (`at://hold/io.atcr.hold.scan/<digest hex>`).
    pub record: String,
}

impl ScanSummary {
    /// True when a document the record names could not be used.
    pub fn unreadable(&self) -> bool {
        self.report == "unreadable" || self.sbom == "unreadable"
    }
}

/// A link to an advisory database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AdvisoryLink {
    pub name: String,
    pub url: String,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VulnerabilityEntry {
    pub id: String,
    /// `critical`, `high`, `medium`, `low`, `negligible`, `unknown`.
    pub severity: String,
    pub cvss: Option<f32>,
    pub cvss_vector: Option<String>,
    pub package: String,
    pub package_type: Option<String>,
    pub installed_version: String,
    pub fixed_in: Vec<String>,
    pub fix_state: Option<String>,
    /// Untrusted text from the report: escape it.
    pub description: Option<String>,
    pub related: Vec<String>,
    pub links: Vec<AdvisoryLink>,
    pub purl: Option<String>,
}

impl From<&Vulnerability> for VulnerabilityEntry {
    fn from(vulnerability: &Vulnerability) -> Self {
        let mut links: Vec<AdvisoryLink> = advisory_links(&vulnerability.id)
            .into_iter()
            .map(|(name, url)| AdvisoryLink { name: name.to_string(), url })
            .collect();
        for related in &vulnerability.related {
            for (name, url) in advisory_links(related) {
                if !links.iter().any(|link| link.url == url) {
                    links.push(AdvisoryLink { name: name.to_string(), url });
                }
            }
        }
        VulnerabilityEntry {
            id: vulnerability.id.clone(),
            severity: vulnerability.severity.as_str().to_string(),
            cvss: vulnerability.cvss,
            cvss_vector: vulnerability.cvss_vector.clone(),
            package: vulnerability.package.clone(),
            package_type: vulnerability.package_type.clone(),
            installed_version: vulnerability.installed_version.clone(),
            fixed_in: vulnerability.fixed_in.clone(),
            fix_state: vulnerability.fix_state.clone(),
            description: vulnerability.description.clone(),
            related: vulnerability.related.clone(),
            links,
            purl: vulnerability.purl.clone(),
        }
    }
}

/// Which findings to list.
#[derive(Debug, Clone, Default)]
pub struct VulnerabilityFilter {
    /// Only these severities (empty: all).
    pub severities: Vec<Severity>,
    pub fixable_only: bool,
    /// Case-insensitive substring of the id, package or description.
    pub text: Option<String>,
}

impl VulnerabilityFilter {
    fn matches(&self, vulnerability: &Vulnerability) -> bool {
        if !self.severities.is_empty() && !self.severities.contains(&vulnerability.severity) {
            return false;
        }
        if self.fixable_only && !vulnerability.is_fixable() {
            return false;
        }
        match self.text.as_deref().map(str::trim).filter(|text| !text.is_empty()) {
            None => true,
            Some(text) => {
                let text = text.to_lowercase();
                vulnerability.id.to_lowercase().contains(&text)
                    || vulnerability.package.to_lowercase().contains(&text)
                    || vulnerability.description.as_deref().is_some_and(|d| d.to_lowercase().contains(&text))
            }
        }
    }
}

/// Which image a scan page is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ImageRef {
    pub did: String,
    /// The handle or DID the request named.
    pub owner: String,
    pub repository: String,
    pub digest: String,
    /// The tag the page was opened by.
    pub tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VulnerabilityList {
    pub image: ImageRef,
    /// `None`: no hold has scanned this image.
    pub scan: Option<ScanSummary>,
    /// Findings matching the filter, most severe first.
    pub vulnerabilities: Vec<VulnerabilityEntry>,
    /// Findings in the report before filtering.
    pub unfiltered: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PackageEntry {
    pub name: String,
    pub version: String,
    pub licenses: Vec<String>,
    pub purl: Option<String>,
    /// The package's page for ecosystems that have one (npm, PyPI, crates.io, …).
    pub purl_url: Option<String>,
}

impl From<&SbomPackage> for PackageEntry {
    fn from(package: &SbomPackage) -> Self {
        PackageEntry {
            name: package.name.clone(),
            version: package.version.clone(),
            licenses: package.licenses.clone(),
            purl_url: package.purl.as_deref().and_then(purl_link),
            purl: package.purl.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct LicenseCount {
    /// An SPDX license expression, or `unknown`.
    pub license: String,
    pub packages: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PackageList {
    pub image: ImageRef,
    pub scan: Option<ScanSummary>,
    /// The SBOM's generator (`Tool: syft-…`).
    pub creators: Vec<String>,
    pub packages: Vec<PackageEntry>,
    /// Packages per license, most used first.
    pub licenses: Vec<LicenseCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PackageChange {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// Two images of a repository compared (`base` → `head`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Comparison {
    pub base: ImageRef,
    pub head: ImageRef,
    pub base_scan: Option<ScanSummary>,
    pub head_scan: Option<ScanSummary>,
    /// Findings in `head` only.
    pub added: Vec<VulnerabilityEntry>,
    /// Findings in `base` only (fixed by the move).
    pub fixed: Vec<VulnerabilityEntry>,
    pub unchanged: Vec<VulnerabilityEntry>,
    pub packages_added: Vec<PackageEntry>,
    pub packages_removed: Vec<PackageEntry>,
    pub packages_upgraded: Vec<PackageChange>,
    /// False when either side has no indexed report (the finding lists are then empty).
    pub vulnerabilities_compared: bool,
    /// False when either side has no indexed SBOM.
    pub packages_compared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PackageSearchHit {
    pub name: String,
    pub version: String,
    pub did: String,
    /// The owner's handle, when it verifies.
    pub handle: Option<String>,
    pub repository: String,
    pub digest: String,
    /// Tags pointing at the image now.
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct PackageSearchPage {
    pub name: String,
    pub version_prefix: String,
    pub hits: Vec<PackageSearchHit>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// Reads scans from the live views.
#[derive(Clone)]
pub struct ScanQuery {
    registry: RegistryQuery,
}

fn state_name(state: &DocumentState) -> &'static str {
    match state {
        DocumentState::Absent => "absent",
        DocumentState::Pending => "pending",
        DocumentState::Indexed => "indexed",
        DocumentState::Unreadable(_) => "unreadable",
    }
}

/// The scan summary of a manifest of `did` (badges on tag rows).
pub fn scan_summary(views: &Views, did: &str, digest: &str) -> Result<Option<ScanSummary>, ScanQueryError> {
    views.scan(did, digest)?.map(|scan| summarize(views, &scan)).transpose()
}

fn summarize(views: &Views, scan: &ScanRow) -> Result<ScanSummary, ScanQueryError> {
    let report = views.scan_document_state(scan, VULNERABILITIES_KIND)?;
    let sbom = views.scan_document_state(scan, SBOM_KIND)?;
    let mut problems = Vec::new();
    for (what, state) in [("vulnerability report", &report), ("SBOM", &sbom)] {
        if let DocumentState::Unreadable(reason) = state {
            problems.push(format!("{what}: {reason}"));
        }
    }
    let fixable = match (&report, &scan.report_digest) {
        (DocumentState::Indexed, Some(digest)) => views.scan_report_summary(digest)?.map(|summary| summary.fixable),
        _ => None,
    };
    Ok(ScanSummary {
        hold: scan.hold_did.clone(),
        status: scan.status.clone(),
        reason: scan.reason.clone(),
        counts: SeverityCounts {
            critical: scan.critical,
            high: scan.high,
            medium: scan.medium,
            low: scan.low,
            total: scan.total,
        },
        scanner: scan.scanner_version.clone(),
        scanned_at: scan.scanned_at.clone(),
        report: state_name(&report).to_string(),
        sbom: state_name(&sbom).to_string(),
        problems,
        fixable,
        record: scan.record_uri(),
    })
}

impl ScanQuery {
    pub fn new(registry: RegistryQuery) -> Self {
        ScanQuery { registry }
    }

    fn views(&self) -> Arc<Views> {
        self.registry.views()
    }

    /// The image a tag or digest of a repository names, when the views know it.
    pub fn image(&self, owner: &str, repository: &str, reference: &str) -> Result<Option<ImageRef>, ScanQueryError> {
        image_ref(&self.views(), owner, repository, reference)
    }

    /// The scan summary of an image (`None` inside: not scanned).
    pub fn summary(
        &self,
        owner: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(ImageRef, Option<ScanSummary>)>, ScanQueryError> {
        let views = self.views();
        let Some(image) = image_ref(&views, owner, repository, reference)? else { return Ok(None) };
        let scan = views.scan(&image.did, &image.digest)?.map(|scan| summarize(&views, &scan)).transpose()?;
        Ok(Some((image, scan)))
    }

    /// The scan summary of a manifest of `did` (for badges on tag rows).
    pub fn summary_of(&self, did: &str, digest: &str) -> Result<Option<ScanSummary>, ScanQueryError> {
        let views = self.views();
        views.scan(did, digest)?.map(|scan| summarize(&views, &scan)).transpose()
    }

    pub fn vulnerabilities(
        &self,
        owner: &str,
        repository: &str,
        reference: &str,
        filter: &VulnerabilityFilter,
    ) -> Result<Option<VulnerabilityList>, ScanQueryError> {
        let views = self.views();
        let Some(image) = image_ref(&views, owner, repository, reference)? else { return Ok(None) };
        let Some(scan) = views.scan(&image.did, &image.digest)? else {
            return Ok(Some(VulnerabilityList { image, scan: None, vulnerabilities: Vec::new(), unfiltered: 0 }));
        };
        let findings = report_of(&views, &scan)?.unwrap_or_default();
        Ok(Some(VulnerabilityList {
            scan: Some(summarize(&views, &scan)?),
            unfiltered: findings.len(),
            vulnerabilities: findings.iter().filter(|finding| filter.matches(finding)).map(Into::into).collect(),
            image,
        }))
    }

    pub fn packages(
        &self,
        owner: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<PackageList>, ScanQueryError> {
        let views = self.views();
        let Some(image) = image_ref(&views, owner, repository, reference)? else { return Ok(None) };
        let Some(scan) = views.scan(&image.did, &image.digest)? else {
            return Ok(Some(PackageList {
                image,
                scan: None,
                creators: Vec::new(),
                packages: Vec::new(),
                licenses: Vec::new(),
            }));
        };
        let sbom = match &scan.sbom_digest {
            Some(digest) => views.scan_sbom(digest)?,
            None => None,
        };
        let (creators, packages) = sbom.map(|sbom| (sbom.creators, sbom.packages)).unwrap_or_default();
        Ok(Some(PackageList {
            scan: Some(summarize(&views, &scan)?),
            creators,
            licenses: license_summary(&packages),
            packages: packages.iter().map(Into::into).collect(),
            image,
        }))
    }

    /// Compares two tags (or digests) of a repository.
    pub fn compare(
        &self,
        owner: &str,
        repository: &str,
        base: &str,
        head: &str,
    ) -> Result<Option<Comparison>, ScanQueryError> {
        let views = self.views();
        let (Some(base), Some(head)) =
            (image_ref(&views, owner, repository, base)?, image_ref(&views, owner, repository, head)?)
        else {
            return Ok(None);
        };
        let base_scan = views.scan(&base.did, &base.digest)?;
        let head_scan = views.scan(&head.did, &head.digest)?;
        let report = |scan: &Option<ScanRow>| -> Result<Option<Vec<Vulnerability>>, ScanQueryError> {
            match scan {
                Some(scan) => report_of(&views, scan),
                None => Ok(None),
            }
        };
        let sbom = |scan: &Option<ScanRow>| -> Result<Option<Vec<SbomPackage>>, ScanQueryError> {
            match scan.as_ref().and_then(|scan| scan.sbom_digest.as_ref()) {
                Some(digest) => Ok(views.scan_sbom(digest)?.map(|sbom| sbom.packages)),
                None => Ok(None),
            }
        };
        let mut comparison = Comparison {
            base_scan: base_scan.as_ref().map(|scan| summarize(&views, scan)).transpose()?,
            head_scan: head_scan.as_ref().map(|scan| summarize(&views, scan)).transpose()?,
            base,
            head,
            added: Vec::new(),
            fixed: Vec::new(),
            unchanged: Vec::new(),
            packages_added: Vec::new(),
            packages_removed: Vec::new(),
            packages_upgraded: Vec::new(),
            vulnerabilities_compared: false,
            packages_compared: false,
        };
        if let (Some(before), Some(after)) = (report(&base_scan)?, report(&head_scan)?) {
            comparison.vulnerabilities_compared = true;
            let identity = |finding: &Vulnerability| (finding.id.clone(), finding.package.clone());
            let before_keys: BTreeSet<_> = before.iter().map(identity).collect();
            let after_keys: BTreeSet<_> = after.iter().map(identity).collect();
            for finding in &after {
                if before_keys.contains(&identity(finding)) {
                    comparison.unchanged.push(finding.into());
                } else {
                    comparison.added.push(finding.into());
                }
            }
            comparison.fixed =
                before.iter().filter(|finding| !after_keys.contains(&identity(finding))).map(Into::into).collect();
        }
        if let (Some(before), Some(after)) = (sbom(&base_scan)?, sbom(&head_scan)?) {
            comparison.packages_compared = true;
            fn versions(packages: &[SbomPackage]) -> BTreeMap<String, (BTreeSet<String>, &SbomPackage)> {
                let mut map: BTreeMap<String, (BTreeSet<String>, &SbomPackage)> = BTreeMap::new();
                for package in packages {
                    map.entry(package.name.clone())
                        .or_insert_with(|| (BTreeSet::new(), package))
                        .0
                        .insert(package.version.clone());
                }
                map
            }
            let (before, after) = (versions(&before), versions(&after));
            let joined = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
            for (name, (after_versions, package)) in &after {
                match before.get(name) {
                    None => comparison.packages_added.push((*package).into()),
                    Some((before_versions, _)) if before_versions != after_versions => {
                        comparison.packages_upgraded.push(PackageChange {
                            name: name.clone(),
                            from: joined(before_versions),
                            to: joined(after_versions),
                        })
                    }
                    Some(_) => {}
                }
            }
            comparison.packages_removed = before
                .iter()
                .filter(|(name, _)| !after.contains_key(*name))
                .map(|(_, (_, package))| (*package).into())
                .collect();
        }
        Ok(Some(comparison))
    }

    /// Images containing a package (`name` exact, case-insensitive; `version_prefix` a prefix of
    /// the version), a page of at most `limit` after `cursor`.
    pub fn package_search(
        &self,
        name: &str,
        version_prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<PackageSearchPage, ScanQueryError> {
        let views = self.views();
        let mut hits = Vec::new();
        let mut seen = BTreeSet::new();
        // The cursor is the index key of the last entry a page examined.
        let mut after = cursor.map(str::to_string);
        let mut next_cursor = None;
        // Several holds may have scanned one image: one hit per (image, package version).
        'pages: loop {
            let (page, more) = views.package_search(name, version_prefix, after.as_deref(), limit.max(1))?;
            for (entry_key, hit) in page {
                if hits.len() == limit {
                    next_cursor = after.clone();
                    break 'pages;
                }
                after = Some(entry_key);
                if !seen.insert((hit.name.clone(), hit.version.clone(), hit.did.clone(), hit.manifest.clone())) {
                    continue;
                }
                if !views.has_manifest(&hit.did, &hit.manifest)? {
                    continue;
                }
                let tags = tags_of(&views, &hit.did, &hit.repository, &hit.manifest)?;
                let handle = views
                    .identity(&hit.did)?
                    .and_then(|identity| identity.handle)
                    .filter(|handle| views.did_for_handle(handle).ok().flatten().as_deref() == Some(hit.did.as_str()));
                hits.push(PackageSearchHit {
                    name: hit.name,
                    version: hit.version,
                    did: hit.did,
                    handle,
                    repository: hit.repository,
                    digest: hit.manifest,
                    tags,
                });
            }
            if !more {
                break;
            }
        }
        Ok(PackageSearchPage { name: name.to_string(), version_prefix: version_prefix.to_string(), hits, next_cursor })
    }
}

/// Findings of a scan's report, when indexed.
fn report_of(views: &Views, scan: &ScanRow) -> Result<Option<Vec<Vulnerability>>, ScanQueryError> {
    match &scan.report_digest {
        Some(digest) => Ok(views.scan_report(digest)?),
        None => Ok(None),
    }
}

fn license_summary(packages: &[SbomPackage]) -> Vec<LicenseCount> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for package in packages {
        if package.licenses.is_empty() {
            *counts.entry("unknown".to_string()).or_default() += 1;
        }
        for license in &package.licenses {
            *counts.entry(license.clone()).or_default() += 1;
        }
    }
    let mut out: Vec<LicenseCount> =
        counts.into_iter().map(|(license, packages)| LicenseCount { license, packages }).collect();
    out.sort_by(|a, b| b.packages.cmp(&a.packages).then_with(|| a.license.cmp(&b.license)));
    out
}

/// Tags of a repository pointing at `digest`.
fn tags_of(views: &Views, did: &str, repository: &str, digest: &str) -> Result<Vec<String>, ScanQueryError> {
    let mut tags = Vec::new();
    for tag in views.tags(did, repository, None, 1000)? {
        if views.tag(did, repository, &tag)?.is_some_and(|row| row.digest == digest) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

fn image_ref(
    views: &Views,
    owner: &str,
    repository: &str,
    reference: &str,
) -> Result<Option<ImageRef>, ScanQueryError> {
    let did = if owner.starts_with("did:") { Some(owner.to_string()) } else { views.did_for_handle(owner)? };
    let Some(did) = did else { return Ok(None) };
    let (digest, tag) = if is_sha256_digest(reference) {
        (reference.to_string(), None)
    } else {
        match views.tag(&did, repository, reference)? {
            Some(row) => (row.digest, Some(reference.to_string())),
            None => return Ok(None),
        }
    };
    if !views.has_manifest(&did, &digest)? {
        return Ok(None);
    }
    Ok(Some(ImageRef { did, owner: owner.to_string(), repository: repository.to_string(), digest, tag }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(name: &str, licenses: &[&str]) -> SbomPackage {
        SbomPackage {
            name: name.into(),
            version: "1".into(),
            licenses: licenses.iter().map(|license| license.to_string()).collect(),
            purl: None,
            supplier: None,
        }
    }

    #[test]
    fn license_summary_counts_unknown_and_sorts_by_use() {
        let summary = license_summary(&[package("a", &["MIT"]), package("b", &["MIT"]), package("c", &[])]);
        assert_eq!(summary[0], LicenseCount { license: "MIT".into(), packages: 2 });
        assert_eq!(summary[1], LicenseCount { license: "unknown".into(), packages: 1 });
    }
}
