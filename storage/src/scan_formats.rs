//! The scan documents a hold publishes beside an `io.atcr.hold.scan` record, parsed without the
//! network: the vulnerability report (`vulnReportBlob`) and the SBOM (`sbomBlob`).
//!
//! - Vulnerability reports: Grype's JSON output (`grype -o json`: `matches[]` with
//!   `vulnerability`, `relatedVulnerabilities`, `artifact`), which is what ATCR's scanner stores
//!   as `application/vnd.atcr.vulnerabilities+json`. The document may also arrive wrapped
//!   (`{"report": <grype>}`, `{"grype": <grype>}`) or flattened into a list
//!   (`{"vulnerabilities": [{id, severity, package, version, fixedIn, …}]}`): all three are read.
//! - SBOMs: SPDX 2.x JSON (`spdxVersion` `SPDX-2.x`, `packages[]` with `versionInfo`,
//!   `licenseConcluded`/`licenseDeclared` and a `purl` external reference).
//!
//! Both are untrusted: unknown fields are ignored, missing optional fields stay empty, and a
//! document that is not what it claims is refused with a reason (which ingest quarantines).
//! Strings are kept as they are; escaping is the renderer's job.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The largest number of entries kept from one document (a hostile report cannot blow up a view).
pub const MAX_ENTRIES: usize = 100_000;
/// Longest description kept (characters).
const MAX_DESCRIPTION: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScanFormatError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a vulnerability report: {0}")]
    NotAReport(String),
    #[error("not an SPDX 2.x JSON document: {0}")]
    NotSpdx(String),
}

/// Severity as scanners name it, ordered from most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Negligible,
    Unknown,
}

impl Severity {
    pub const ALL: [Severity; 6] =
        [Severity::Critical, Severity::High, Severity::Medium, Severity::Low, Severity::Negligible, Severity::Unknown];

    pub fn parse(text: &str) -> Severity {
        match text.trim().to_ascii_lowercase().as_str() {
            "critical" => Severity::Critical,
            "high" | "important" => Severity::High,
            "medium" | "moderate" => Severity::Medium,
            "low" => Severity::Low,
            "negligible" | "minimal" | "info" | "informational" => Severity::Negligible,
            _ => Severity::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Negligible => "negligible",
            Severity::Unknown => "unknown",
        }
    }
}

/// One finding: a vulnerability matched against one installed package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vulnerability {
    /// `CVE-…`, `GHSA-…`, a distribution advisory id.
    pub id: String,
    pub severity: Severity,
    /// The highest CVSS base score given (the vulnerability's own, then related ones).
    pub cvss: Option<f32>,
    pub cvss_vector: Option<String>,
    pub package: String,
    pub package_type: Option<String>,
    pub installed_version: String,
    /// Versions that fix it (empty: no fix known).
    pub fixed_in: Vec<String>,
    /// Grype's `fix.state` (`fixed`, `not-fixed`, `wont-fix`, `unknown`).
    pub fix_state: Option<String>,
    pub description: Option<String>,
    /// Ids of related vulnerabilities (the CVE behind a GHSA or a distribution advisory).
    pub related: Vec<String>,
    pub purl: Option<String>,
}

impl Vulnerability {
    pub fn is_fixable(&self) -> bool {
        !self.fixed_in.is_empty()
    }

    /// The CVE this finding is about: its own id or a related `CVE-` id.
    pub fn cve(&self) -> Option<&str> {
        if self.id.starts_with("CVE-") {
            return Some(&self.id);
        }
        self.related.iter().map(String::as_str).find(|id| id.starts_with("CVE-"))
    }
}

/// Reference links for an advisory id: NVD for CVEs, GitHub for GHSAs.
pub fn advisory_links(id: &str) -> Vec<(&'static str, String)> {
    let safe = id.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' || byte == b'.');
    if !safe {
        return Vec::new();
    }
    if id.starts_with("CVE-") {
        vec![("NVD", format!("https://nvd.nist.gov/vuln/detail/{id}"))]
    } else if id.starts_with("GHSA-") {
        vec![("GHSA", format!("https://github.com/advisories/{id}"))]
    } else {
        Vec::new()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VulnerabilityReport {
    /// `grype 0.74.0`, when the document says.
    pub scanner: Option<String>,
    pub vulnerabilities: Vec<Vulnerability>,
}

impl VulnerabilityReport {
    /// Findings per severity, in [`Severity::ALL`] order.
    pub fn counts(&self) -> [u64; 6] {
        let mut counts = [0u64; 6];
        for vulnerability in &self.vulnerabilities {
            counts[vulnerability.severity as usize] += 1;
        }
        counts
    }
}

fn text(value: &Value, key: &str) -> Option<String> {
    match value.get(key)? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        _ => None,
    }
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(|item| item.as_str().map(str::to_string)).collect(),
        Some(Value::String(one)) if !one.is_empty() => vec![one.clone()],
        _ => Vec::new(),
    }
}

fn clip(description: String) -> String {
    if description.chars().count() <= MAX_DESCRIPTION {
        return description;
    }
    let mut clipped: String = description.chars().take(MAX_DESCRIPTION).collect();
    clipped.push('…');
    clipped
}

/// The best CVSS (score, vector) in a Grype `cvss[]` list.
fn best_cvss(list: Option<&Value>) -> Option<(f32, Option<String>)> {
    let Some(Value::Array(entries)) = list else { return None };
    entries
        .iter()
        .filter_map(|entry| {
            let score = entry.get("metrics")?.get("baseScore")?.as_f64()? as f32;
            (0.0..=10.0).contains(&score).then(|| (score, text(entry, "vector")))
        })
        .max_by(|left, right| left.0.total_cmp(&right.0))
}

fn grype_match(entry: &Value) -> Result<Vulnerability, String> {
    let vulnerability = entry.get("vulnerability").ok_or("a match has no `vulnerability`")?;
    let artifact = entry.get("artifact").ok_or("a match has no `artifact`")?;
    let id = text(vulnerability, "id").ok_or("a vulnerability has no `id`")?;
    let package = text(artifact, "name").ok_or("an artifact has no `name`")?;
    let related_entries = match entry.get("relatedVulnerabilities") {
        Some(Value::Array(items)) => items.as_slice(),
        _ => &[],
    };
    let mut cvss = best_cvss(vulnerability.get("cvss"));
    if cvss.is_none() {
        cvss = related_entries
            .iter()
            .filter_map(|related| best_cvss(related.get("cvss")))
            .max_by(|a, b| a.0.total_cmp(&b.0));
    }
    let description = text(vulnerability, "description")
        .or_else(|| related_entries.iter().find_map(|related| text(related, "description")))
        .map(clip);
    let fix = vulnerability.get("fix");
    Ok(Vulnerability {
        severity: Severity::parse(&text(vulnerability, "severity").unwrap_or_default()),
        cvss: cvss.as_ref().map(|(score, _)| *score),
        cvss_vector: cvss.and_then(|(_, vector)| vector),
        package_type: text(artifact, "type"),
        installed_version: text(artifact, "version").unwrap_or_default(),
        fixed_in: strings(fix.and_then(|fix| fix.get("versions"))),
        fix_state: fix.and_then(|fix| text(fix, "state")),
        description,
        related: related_entries
            .iter()
            .filter_map(|related| text(related, "id"))
            .filter(|other| *other != id)
            .collect(),
        purl: text(artifact, "purl"),
        id,
        package,
    })
}

/// A flattened finding (`{id, severity, package, version, fixedIn, cvss, description}`).
fn flat_finding(entry: &Value) -> Result<Vulnerability, String> {
    let id = text(entry, "id").or_else(|| text(entry, "vulnerabilityId")).ok_or("a finding has no `id`")?;
    let package = match entry.get("package") {
        Some(Value::Object(_)) => entry.get("package").and_then(|package| text(package, "name")),
        _ => text(entry, "package").or_else(|| text(entry, "packageName")),
    }
    .ok_or("a finding names no package")?;
    let version = match entry.get("package") {
        Some(package @ Value::Object(_)) => text(package, "version"),
        _ => None,
    }
    .or_else(|| text(entry, "version"))
    .or_else(|| text(entry, "installedVersion"))
    .unwrap_or_default();
    let cvss = match entry.get("cvss") {
        Some(Value::Number(score)) => {
            score.as_f64().map(|score| score as f32).filter(|score| (0.0..=10.0).contains(score))
        }
        other => best_cvss(other).map(|(score, _)| score),
    };
    Ok(Vulnerability {
        severity: Severity::parse(&text(entry, "severity").unwrap_or_default()),
        cvss,
        cvss_vector: None,
        package_type: text(entry, "type"),
        installed_version: version,
        fixed_in: strings(
            entry.get("fixedIn").or_else(|| entry.get("fixedVersions")).or_else(|| entry.get("fixVersions")),
        ),
        fix_state: text(entry, "fixState"),
        description: text(entry, "description").map(clip),
        related: strings(entry.get("related")),
        purl: text(entry, "purl"),
        id,
        package,
    })
}

fn scanner_name(document: &Value) -> Option<String> {
    let descriptor = document.get("descriptor")?;
    let name = text(descriptor, "name")?;
    Some(match text(descriptor, "version") {
        Some(version) => format!("{name} {version}"),
        None => name,
    })
}

/// Parses a vulnerability report (Grype JSON, wrapped Grype JSON, or a flat findings list).
pub fn parse_vulnerability_report(bytes: &[u8]) -> Result<VulnerabilityReport, ScanFormatError> {
    let document: Value = serde_json::from_slice(bytes).map_err(|error| ScanFormatError::NotJson(error.to_string()))?;
    let document = match document.get("report").or_else(|| document.get("grype")) {
        Some(inner @ Value::Object(_)) => inner.clone(),
        _ => document,
    };
    let Value::Object(_) = document else {
        return Err(ScanFormatError::NotAReport("the document is not a JSON object".into()));
    };
    type Parse = fn(&Value) -> Result<Vulnerability, String>;
    let (entries, parse): (&[Value], Parse) = match (document.get("matches"), document.get("vulnerabilities")) {
        (Some(Value::Array(matches)), _) => (matches, grype_match),
        // Grype writes `[]`; a `null` list is read as empty too.
        (Some(Value::Null), _) => (&[], grype_match),
        (_, Some(Value::Array(findings))) => (findings, flat_finding),
        _ => {
            return Err(ScanFormatError::NotAReport(
                "neither `matches` (Grype) nor `vulnerabilities` is a list".into(),
            ));
        }
    };
    if entries.len() > MAX_ENTRIES {
        return Err(ScanFormatError::NotAReport(format!("{} findings, more than {MAX_ENTRIES}", entries.len())));
    }
    let mut vulnerabilities = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        vulnerabilities
            .push(parse(entry).map_err(|reason| ScanFormatError::NotAReport(format!("finding {index}: {reason}")))?);
    }
    vulnerabilities.sort_by(|a, b| {
        (a.severity, b.cvss.unwrap_or(-1.0), &a.id, &a.package)
            .partial_cmp(&(b.severity, a.cvss.unwrap_or(-1.0), &b.id, &b.package))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(VulnerabilityReport { scanner: scanner_name(&document), vulnerabilities })
}

/// One package of an SBOM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SbomPackage {
    pub name: String,
    pub version: String,
    /// SPDX license expressions (concluded, else declared); `NOASSERTION`/`NONE` left out.
    pub licenses: Vec<String>,
    pub purl: Option<String>,
    pub supplier: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sbom {
    pub spdx_version: String,
    pub name: Option<String>,
    pub created: Option<String>,
    /// `Tool: syft-1.0.0`, `Organization: …`.
    pub creators: Vec<String>,
    /// Sorted by (name, version); the document's own root package (the image) is left out.
    pub packages: Vec<SbomPackage>,
}

fn license(value: Option<String>) -> Option<String> {
    value.filter(|license| !matches!(license.as_str(), "NOASSERTION" | "NONE" | ""))
}

/// Parses an SPDX 2.x JSON document.
pub fn parse_spdx(bytes: &[u8]) -> Result<Sbom, ScanFormatError> {
    let document: Value = serde_json::from_slice(bytes).map_err(|error| ScanFormatError::NotJson(error.to_string()))?;
    let spdx_version = text(&document, "spdxVersion").ok_or(ScanFormatError::NotSpdx("no `spdxVersion`".into()))?;
    if !spdx_version.starts_with("SPDX-2.") {
        return Err(ScanFormatError::NotSpdx(format!("spdxVersion {spdx_version:?} is not SPDX-2.x")));
    }
    let packages = match document.get("packages") {
        Some(Value::Array(packages)) => packages.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err(ScanFormatError::NotSpdx("`packages` is not a list".into())),
    };
    if packages.len() > MAX_ENTRIES {
        return Err(ScanFormatError::NotSpdx(format!("{} packages, more than {MAX_ENTRIES}", packages.len())));
    }
    // The package the document describes (the image itself) is not one of its contents.
    // (`documentDescribes`, or a `DESCRIBES` relationship of the document, as Syft writes it.)
    let mut described: Vec<String> = strings(document.get("documentDescribes"));
    if let Some(Value::Array(relationships)) = document.get("relationships") {
        described.extend(relationships.iter().filter_map(|relationship| {
            (text(relationship, "relationshipType").as_deref() == Some("DESCRIBES")
                && text(relationship, "spdxElementId").as_deref() == Some("SPDXRef-DOCUMENT"))
            .then(|| text(relationship, "relatedSpdxElement"))
            .flatten()
        }));
    }
    let mut out = Vec::with_capacity(packages.len());
    for (index, package) in packages.iter().enumerate() {
        let Value::Object(_) = package else {
            return Err(ScanFormatError::NotSpdx(format!("package {index} is not an object")));
        };
        let name =
            text(package, "name").ok_or_else(|| ScanFormatError::NotSpdx(format!("package {index} has no name")))?;
        if text(package, "SPDXID").is_some_and(|id| described.contains(&id)) {
            continue;
        }
        let purl = match package.get("externalRefs") {
            Some(Value::Array(references)) => references.iter().find_map(|reference| {
                (text(reference, "referenceType").as_deref() == Some("purl"))
                    .then(|| text(reference, "referenceLocator"))
                    .flatten()
            }),
            _ => None,
        };
        let licenses: Vec<String> = license(text(package, "licenseConcluded"))
            .or_else(|| license(text(package, "licenseDeclared")))
            .into_iter()
            .collect();
        out.push(SbomPackage {
            name,
            version: text(package, "versionInfo").unwrap_or_default(),
            licenses,
            purl,
            supplier: license(text(package, "supplier")),
        });
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    out.dedup();
    let creation = document.get("creationInfo");
    Ok(Sbom {
        spdx_version,
        name: text(&document, "name"),
        created: creation.and_then(|creation| text(creation, "created")),
        creators: strings(creation.and_then(|creation| creation.get("creators"))),
        packages: out,
    })
}

/// A purl's web page, for the few ecosystems that have one (`pkg:npm`, `pkg:pypi`, `pkg:cargo`,
/// `pkg:golang`, `pkg:gem`, `pkg:maven`); `None` otherwise.
pub fn purl_link(purl: &str) -> Option<String> {
    let rest = purl.strip_prefix("pkg:")?;
    let (kind, path) = rest.split_once('/')?;
    let path = path.split(['?', '#']).next()?;
    let (name, version) = match path.rsplit_once('@') {
        Some((name, version)) => (name, Some(version)),
        None => (path, None),
    };
    let safe = |text: &str| text.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-._/%@+~".contains(&byte));
    if !safe(name) || !version.is_none_or(safe) {
        return None;
    }
    Some(match kind {
        "npm" => format!("https://www.npmjs.com/package/{name}"),
        "pypi" => format!("https://pypi.org/project/{name}/"),
        "cargo" => format!("https://crates.io/crates/{name}"),
        "golang" => format!("https://pkg.go.dev/{name}"),
        "gem" => format!("https://rubygems.org/gems/{name}"),
        "maven" => format!("https://central.sonatype.com/artifact/{name}"),
        "apk" if name.starts_with("alpine/") => format!("https://pkgs.alpinelinux.org/packages?name={}", &name[7..]),
        "deb" if name.starts_with("debian/") => format!("https://packages.debian.org/search?keywords={}", &name[7..]),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRYPE: &str = r#"{
      "matches": [
        {"vulnerability": {"id": "CVE-2023-0286", "severity": "High", "description": "X.400 <script>",
          "cvss": [{"version": "3.1", "vector": "CVSS:3.1/AV:N", "metrics": {"baseScore": 7.4}}],
          "fix": {"versions": ["3.0.8-r0"], "state": "fixed"}},
         "relatedVulnerabilities": [],
         "artifact": {"name": "libssl3", "version": "3.0.7-r0", "type": "apk", "purl": "pkg:apk/alpine/libssl3@3.0.7-r0"}},
        {"vulnerability": {"id": "GHSA-aaaa-bbbb-cccc", "severity": "Critical", "fix": {"versions": [], "state": "not-fixed"}},
         "relatedVulnerabilities": [{"id": "CVE-2024-1", "description": "from nvd",
           "cvss": [{"metrics": {"baseScore": 9.8}}]}],
         "artifact": {"name": "lodash", "version": "4.17.20", "type": "npm"}}
      ],
      "descriptor": {"name": "grype", "version": "0.74.0"}
    }"#;

    #[test]
    fn grype_reports_parse_with_cvss_fixes_and_related_cves() {
        let report = parse_vulnerability_report(GRYPE.as_bytes()).unwrap();
        assert_eq!(report.scanner.as_deref(), Some("grype 0.74.0"));
        assert_eq!(report.counts(), [1, 1, 0, 0, 0, 0]);
        let critical = &report.vulnerabilities[0];
        assert_eq!(
            (critical.id.as_str(), critical.cvss, critical.cve()),
            ("GHSA-aaaa-bbbb-cccc", Some(9.8), Some("CVE-2024-1"))
        );
        assert_eq!(critical.description.as_deref(), Some("from nvd"));
        assert!(!critical.is_fixable());
        let high = &report.vulnerabilities[1];
        assert_eq!(
            (high.fixed_in.as_slice(), high.cvss_vector.as_deref()),
            (&["3.0.8-r0".to_string()][..], Some("CVSS:3.1/AV:N"))
        );
        let wrapped = format!(r#"{{"report": {GRYPE}}}"#);
        assert_eq!(parse_vulnerability_report(wrapped.as_bytes()).unwrap().vulnerabilities.len(), 2);
        let flat = r#"{"vulnerabilities": [{"id": "CVE-1", "severity": "LOW", "package": "zlib", "version": "1.2", "fixedIn": "1.3", "cvss": 3.1}]}"#;
        let flat = parse_vulnerability_report(flat.as_bytes()).unwrap();
        assert_eq!((flat.vulnerabilities[0].severity, flat.vulnerabilities[0].fixed_in.len()), (Severity::Low, 1));
    }

    #[test]
    fn malformed_reports_are_refused_with_a_reason() {
        assert!(matches!(parse_vulnerability_report(b"{not json"), Err(ScanFormatError::NotJson(_))));
        assert!(matches!(parse_vulnerability_report(b"[1,2]"), Err(ScanFormatError::NotAReport(_))));
        let no_artifact = r#"{"matches": [{"vulnerability": {"id": "CVE-1"}}]}"#;
        let error = parse_vulnerability_report(no_artifact.as_bytes()).unwrap_err();
        assert_eq!(error.to_string(), "not a vulnerability report: finding 0: a match has no `artifact`");
    }

    #[test]
    fn spdx_packages_keep_licenses_and_purls() {
        let document = r#"{"spdxVersion": "SPDX-2.3", "name": "img",
          "relationships": [{"spdxElementId": "SPDXRef-DOCUMENT", "relatedSpdxElement": "SPDXRef-root", "relationshipType": "DESCRIBES"}],
          "creationInfo": {"created": "2026-01-01T00:00:00Z", "creators": ["Tool: syft-1.0.0"]},
          "packages": [
            {"SPDXID": "SPDXRef-root", "name": "img"},
            {"SPDXID": "SPDXRef-b", "name": "openssl", "versionInfo": "3.0.7-r0", "licenseConcluded": "NOASSERTION", "licenseDeclared": "Apache-2.0",
             "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": "pkg:apk/alpine/openssl@3.0.7-r0"}]},
            {"SPDXID": "SPDXRef-a", "name": "busybox", "versionInfo": "1.36.0-r0", "licenseConcluded": "GPL-2.0-only"}
          ]}"#;
        let sbom = parse_spdx(document.as_bytes()).unwrap();
        assert_eq!(sbom.packages.len(), 2);
        assert_eq!(sbom.packages[0].name, "busybox");
        assert_eq!(sbom.packages[1].licenses, vec!["Apache-2.0".to_string()]);
        assert_eq!(sbom.packages[1].purl.as_deref(), Some("pkg:apk/alpine/openssl@3.0.7-r0"));
        assert_eq!(sbom.creators, vec!["Tool: syft-1.0.0".to_string()]);
        assert!(matches!(parse_spdx(br#"{"spdxVersion": "SPDX-3.0"}"#), Err(ScanFormatError::NotSpdx(_))));
        assert!(matches!(parse_spdx(br#"{"packages": []}"#), Err(ScanFormatError::NotSpdx(_))));
        assert!(matches!(
            parse_spdx(br#"{"spdxVersion": "SPDX-2.3", "packages": [{"versionInfo": "1"}]}"#),
            Err(ScanFormatError::NotSpdx(_))
        ));
    }

    #[test]
    fn links_only_for_safe_ids() {
        assert_eq!(advisory_links("CVE-2023-0286")[0].1, "https://nvd.nist.gov/vuln/detail/CVE-2023-0286");
        assert_eq!(advisory_links("GHSA-aaaa-bbbb-cccc")[0].0, "GHSA");
        assert!(advisory_links("CVE-1\"><script>").is_empty());
        assert_eq!(purl_link("pkg:npm/lodash@4.17.20").as_deref(), Some("https://www.npmjs.com/package/lodash"));
        assert_eq!(purl_link("pkg:npm/lo\"dash@1"), None);
    }
}
