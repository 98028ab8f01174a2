//! Vulnerability scans and SBOMs in the UI and the JSON API.
//!
//! Pages (picked out by [`repository_scans_layer`] before the repository route, which owns every
//! path under `/r/`):
//! - `/r/{owner}/{repository…}/-/vulnerabilities/{tag or digest}[?severity=critical,high&fixable=1&q=]`:
//!   the scan status and the findings (CVE, severity, CVSS, package, installed, fixed in,
//!   description, NVD/GHSA links), filterable;
//! - `/r/…/-/packages/{tag or digest}`: the SBOM's packages (licenses, purl links) and a
//!   license summary;
//! - `/r/…/-/compare/{base}...{head}`: findings added, fixed, unchanged; packages added,
//!   removed, upgraded;
//! - `/r/…/-/badge/vulnerabilities.svg`: a README badge for the newest tag;
//! - `/packages?name=openssl&version=3.0`: which images contain a package (network-wide).
//!
//! [`severity_badges`] and [`security_section`] are what the repository and manifest pages show.
//! JSON: `/api/v1/scans/…`, `/api/v1/vulnerabilities/…`, `/api/v1/packages/…`,
//! `/api/v1/compare/…`, `/api/v1/package-search` (documented in [`ScansApiDoc`]).
//! Descriptions and every other string from a report are untrusted: maud escapes them.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, html};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

use atcr_query::scans::Severity;
use atcr_query::scans::{
    Comparison, ImageRef, PackageList, PackageSearchPage, ScanQuery, ScanSummary, VulnerabilityEntry,
    VulnerabilityFilter, VulnerabilityList,
};

use super::badges::{Badge, badge_response, render_svg};
use super::components::RenderContext;
use super::format::{
    manifest_url, path_segment, query_string, repository_url, short_digest, tag_url, time_element, user_url,
};
use super::layout::{self, Page, Section};
use super::{html_response, not_found_page, read, request_host, unavailable};
use crate::api::{ApiPath, ApiQuery, ErrorBody};
use crate::{ApiError, AppState};

/// Package search hits per page.
const PACKAGE_PAGE: usize = 50;

fn scan_query(state: &AppState) -> Option<ScanQuery> {
    state.registry.clone().map(ScanQuery::new)
}

// ---------------------------------------------------------------------------------------------
// Components other pages use

fn severity_class(severity: &str) -> &'static str {
    match severity {
        "critical" => "sev sev-critical",
        "high" => "sev sev-high",
        "medium" => "sev sev-medium",
        "low" => "sev sev-low",
        _ => "sev sev-other",
    }
}

/// The scan of an image as small badges (critical/high/medium/low counts, or the status),
/// linking to `href`.
pub fn severity_badges(scan: Option<&ScanSummary>, href: &str) -> Markup {
    let Some(scan) = scan else {
        return html! { span.muted { "not scanned" } };
    };
    html! {
        a.sev-badges href=(href) title="Vulnerabilities" {
            @if scan.unreadable() {
                span class="sev sev-other" { "scan data unreadable" }
            } @else if scan.status != "ok" {
                span class="sev sev-other" { "scan " (scan.status) }
            } @else if scan.counts.total == 0 {
                span class="sev sev-none" { "no vulnerabilities" }
            } @else {
                @for (name, count) in [("critical", scan.counts.critical), ("high", scan.counts.high), ("medium", scan.counts.medium), ("low", scan.counts.low)] {
                    @if count > 0 {
                        span class=(severity_class(name)) { (count) " " (name) }
                    }
                }
            }
        }
    }
}

fn sub_url(owner: &str, repository: &str, what: &str, reference: &str) -> String {
    format!("{}/-/{what}/{}", repository_url(owner, repository), path_segment(reference))
}

/// The page link of an image's findings.
pub fn vulnerabilities_url(owner: &str, repository: &str, reference: &str) -> String {
    sub_url(owner, repository, "vulnerabilities", reference)
}

pub fn packages_url(owner: &str, repository: &str, reference: &str) -> String {
    sub_url(owner, repository, "packages", reference)
}

pub fn compare_url(owner: &str, repository: &str, base: &str, head: &str) -> String {
    format!("{}/-/compare/{}...{}", repository_url(owner, repository), path_segment(base), path_segment(head))
}

fn status_line(scan: &ScanSummary) -> Markup {
    html! {
        @match scan.status.as_str() {
            "ok" => { span.status-ok { "Scanned" } }
            "failed" => { span.status-bad { "Scan failed" } }
            "skipped" => { span.status-bad { "Scan skipped" } }
            other => { span.status-bad { "Scan status: " (other) } }
        }
        @if let Some(reason) = &scan.reason { " — " (reason) }
    }
}

fn scan_facts(scan: &ScanSummary, context: &RenderContext) -> Markup {
    html! {
        dl.facts.wide {
            dt { "Status" } dd { (status_line(scan)) }
            @if scan.unreadable() {
                dt { "Scan data" } dd.scan-unreadable {
                    strong { "scan data unreadable" }
                    ul { @for problem in &scan.problems { li { (problem) } } }
                }
            }
            dt { "Findings" } dd { (severity_badges(Some(scan), "#findings")) " " span.muted { (scan.counts.total) " total" @if let Some(fixable) = scan.fixable { ", " (fixable) " fixable" } } }
            @if let Some(scanner) = &scan.scanner { dt { "Scanner" } dd { code { (scanner) } } }
            @if let Some(at) = &scan.scanned_at { dt { "Scanned" } dd { (time_element(at, context.now)) } }
            dt { "Hold" } dd { a.mono href=(user_url(&scan.hold)) { (scan.hold) } }
            dt { "Record" } dd { @if let Some(url) = super::history::record_url(&scan.record) { a.mono.break href=(url) { (scan.record) } } @else { code.break { (scan.record) } } }
        }
    }
}

/// The "Security" section of a manifest page.
pub fn security_section(scan: Option<&ScanSummary>, owner: &str, repository: &str, reference: &str) -> Markup {
    html! {
        section.section #security aria-labelledby="security-title" {
            h2 #security-title { "Security" }
            @match scan {
                None => p.muted { "No hold has published a vulnerability scan of this image." },
                Some(scan) => {
                    p { (status_line(scan)) ": " (severity_badges(Some(scan), &vulnerabilities_url(owner, repository, reference))) }
                    @if scan.unreadable() { p.scan-unreadable { strong { "scan data unreadable" } } }
                    p {
                        a href=(vulnerabilities_url(owner, repository, reference)) { "Vulnerabilities" }
                        " · "
                        a href=(packages_url(owner, repository, reference)) { "Packages (SBOM)" }
                    }
                }
            }
        }
    }
}

/// The manifest page's extra sections with its "Security" section first (just `others`
/// without views).
pub async fn with_security_section(
    state: &AppState,
    page: &atcr_query::browse::ManifestPage,
    owner: &str,
    reference: &str,
    others: Option<Markup>,
) -> Option<Markup> {
    let Some(query) = scan_query(state) else { return others };
    let (did, digest) = (page.did.clone(), page.digest.clone());
    let Ok(scan) = read("manifest scan", move || query.summary_of(&did, &digest)).await else { return others };
    let security = security_section(scan.as_ref(), owner, &page.repository, reference);
    Some(html! { (security) @if let Some(others) = others { (others) } })
}

// ---------------------------------------------------------------------------------------------
// Pages

fn crumbs(image: &ImageRef, what: &str) -> Markup {
    let reference =
        image.tag.clone().map(|tag| format!(":{tag}")).unwrap_or_else(|| format!("@{}", short_digest(&image.digest)));
    html! {
        nav.crumbs aria-label="Breadcrumb" {
            a href=(user_url(&image.owner)) { (image.owner) } " / "
            a href=(repository_url(&image.owner, &image.repository)) { (image.repository) } " / "
            a.mono href=(image_url(image)) { (reference) } " / "
            span { (what) }
        }
    }
}

fn image_url(image: &ImageRef) -> String {
    match &image.tag {
        Some(tag) => tag_url(&image.owner, &image.repository, tag),
        None => manifest_url(&image.owner, &image.repository, &image.digest),
    }
}

fn image_reference(image: &ImageRef) -> &str {
    image.tag.as_deref().unwrap_or(&image.digest)
}

fn page(title: &str, description: &str, body: Markup) -> Markup {
    layout::render(Page { title, description, section: Section::Other, query: "", body })
}

fn finding_row(finding: &VulnerabilityEntry) -> Markup {
    html! {
        tr {
            th scope="row" {
                span.mono { (finding.id) }
                @for link in &finding.links { " " a.ext href=(link.url) rel="noopener noreferrer nofollow" { (link.name) } }
                @if !finding.related.is_empty() { div.muted.small { @for (index, related) in finding.related.iter().enumerate() { @if index > 0 { ", " } (related) } } }
            }
            td { span class=(severity_class(&finding.severity)) { (finding.severity) } }
            td.num { @if let Some(score) = finding.cvss { span title=[finding.cvss_vector.as_deref()] { (format!("{score:.1}")) } } @else { "—" } }
            td { span.mono { (finding.package) } @if let Some(kind) = &finding.package_type { " " span.muted.small { (kind) } } }
            td.mono { (finding.installed_version) }
            td.mono { @if finding.fixed_in.is_empty() { span.muted { (finding.fix_state.as_deref().unwrap_or("no fix")) } } @else { (finding.fixed_in.join(", ")) } }
            td.description { @if let Some(description) = &finding.description { (description) } }
        }
    }
}

fn findings_table(findings: &[VulnerabilityEntry], caption: &str) -> Markup {
    html! {
        div.table-wrap { table.data.findings {
            caption.visually-hidden { (caption) }
            thead { tr {
                th scope="col" { "Vulnerability" } th scope="col" { "Severity" } th scope="col" class="num" { "CVSS" }
                th scope="col" { "Package" } th scope="col" { "Installed" } th scope="col" { "Fixed in" } th scope="col" { "Description" }
            } }
            tbody { @for finding in findings { (finding_row(finding)) } }
        } }
    }
}

#[derive(Debug, Default, Deserialize)]
struct FilterParams {
    /// Comma-separated severities.
    #[serde(default)]
    severity: String,
    #[serde(default)]
    fixable: String,
    #[serde(default)]
    q: String,
}

impl FilterParams {
    fn filter(&self) -> VulnerabilityFilter {
        VulnerabilityFilter {
            severities: self
                .severity
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(Severity::parse)
                .collect(),
            fixable_only: matches!(self.fixable.as_str(), "1" | "true" | "on" | "yes"),
            text: Some(self.q.clone()).filter(|text| !text.trim().is_empty()),
        }
    }
}

fn vulnerabilities_page(list: &VulnerabilityList, params: &FilterParams, context: &RenderContext) -> Markup {
    let image = &list.image;
    let reference = image_reference(image);
    let selected: Vec<&str> = params.severity.split(',').map(str::trim).collect();
    let body = html! {
        div.container.scan-page {
            (crumbs(image, "Vulnerabilities"))
            h1 { "Vulnerabilities of " span.mono { (image.repository) @if let Some(tag) = &image.tag { ":" (tag) } } }
            @match &list.scan {
                None => p.muted { "No hold has published a vulnerability scan of this image." },
                Some(scan) => {
                    (scan_facts(scan, context))
                    p { a href=(packages_url(&image.owner, &image.repository, reference)) { "Packages (SBOM)" } }
                    form.filters method="get" action=(vulnerabilities_url(&image.owner, &image.repository, reference)) {
                        fieldset {
                            legend { "Filter" }
                            label for="severity" { "Severity" }
                            select #severity name="severity" {
                                option value="" selected[params.severity.is_empty()] { "any" }
                                @for name in ["critical", "high", "medium", "low", "critical,high"] {
                                    option value=(name) selected[selected == name.split(',').collect::<Vec<_>>()] { (name.replace(',', " + ")) }
                                }
                            }
                            label { input type="checkbox" name="fixable" value="1" checked[params.filter().fixable_only]; " fixable only" }
                            label for="finding-text" { "Text" }
                            input #finding-text type="search" name="q" value=(params.q) placeholder="CVE, package…";
                            button type="submit" { "Apply" }
                        }
                    }
                    h2 #findings { (list.vulnerabilities.len()) " of " (list.unfiltered) " findings" }
                    @if list.vulnerabilities.is_empty() {
                        p.muted { @if scan.report == "indexed" { "No finding matches." } @else if scan.report == "unreadable" { "scan data unreadable" } @else { "The vulnerability report is not available." } }
                    } @else {
                        (findings_table(&list.vulnerabilities, "Findings"))
                    }
                }
            }
        }
    };
    let title = format!("Vulnerabilities · {}", image.repository);
    page(&title, "Vulnerability scan results of a container image", body)
}

fn packages_page(list: &PackageList, context: &RenderContext) -> Markup {
    let image = &list.image;
    let reference = image_reference(image);
    let body = html! {
        div.container.scan-page {
            (crumbs(image, "Packages"))
            h1 { "Packages of " span.mono { (image.repository) @if let Some(tag) = &image.tag { ":" (tag) } } }
            @match &list.scan {
                None => p.muted { "No hold has published an SBOM of this image." },
                Some(scan) => {
                    (scan_facts(scan, context))
                    p { a href=(vulnerabilities_url(&image.owner, &image.repository, reference)) { "Vulnerabilities" } }
                    @if !list.creators.is_empty() { p.muted { "SBOM by " (list.creators.join(", ")) } }
                    @if scan.sbom == "unreadable" { p.scan-unreadable { strong { "scan data unreadable" } } }
                    section.section aria-labelledby="licenses-title" {
                        h2 #licenses-title { "Licenses" }
                        ul.badges.licenses { @for license in &list.licenses { li { span.badge { (license.license) ": " (license.packages) } } } }
                    }
                    section.section aria-labelledby="packages-title" {
                        h2 #packages-title { (list.packages.len()) " packages" }
                        div.table-wrap { table.data {
                            caption.visually-hidden { "Packages" }
                            thead { tr { th scope="col" { "Package" } th scope="col" { "Version" } th scope="col" { "Licenses" } th scope="col" { "purl" } } }
                            tbody { @for package in &list.packages { tr {
                                th scope="row" { a.mono href=(format!("/packages?{}", query_string(&[("name", package.name.clone()), ("version", package.version.clone())]))) { (package.name) } }
                                td.mono { (package.version) }
                                td { (package.licenses.join(", ")) }
                                td.break { @if let Some(purl) = &package.purl { @if let Some(url) = &package.purl_url { a.mono href=(url) rel="noopener noreferrer nofollow" { (purl) } } @else { code { (purl) } } } }
                            } } }
                        } }
                    }
                }
            }
        }
    };
    let title = format!("Packages · {}", image.repository);
    page(&title, "The software bill of materials of a container image", body)
}

fn compare_page(comparison: &Comparison, context: &RenderContext) -> Markup {
    let (base, head) = (&comparison.base, &comparison.head);
    let label = |image: &ImageRef| image.tag.clone().unwrap_or_else(|| short_digest(&image.digest));
    let _ = context;
    let body = html! {
        div.container.scan-page {
            nav.crumbs aria-label="Breadcrumb" {
                a href=(user_url(&base.owner)) { (base.owner) } " / "
                a href=(repository_url(&base.owner, &base.repository)) { (base.repository) } " / "
                span { "Compare" }
            }
            h1 { "Compare " span.mono { (label(base)) } " → " span.mono { (label(head)) } }
            dl.facts.wide {
                dt { a.mono href=(image_url(base)) { (label(base)) } } dd { (severity_badges(comparison.base_scan.as_ref(), &vulnerabilities_url(&base.owner, &base.repository, image_reference(base)))) }
                dt { a.mono href=(image_url(head)) { (label(head)) } } dd { (severity_badges(comparison.head_scan.as_ref(), &vulnerabilities_url(&head.owner, &head.repository, image_reference(head)))) }
            }
            section.section aria-labelledby="cves-title" {
                h2 #cves-title { "Vulnerabilities" }
                @if !comparison.vulnerabilities_compared {
                    p.muted { "Both images need a readable vulnerability report to compare findings." }
                } @else {
                    p { span.diff-added { (comparison.added.len()) " added" } ", " span.diff-fixed { (comparison.fixed.len()) " fixed" } ", " (comparison.unchanged.len()) " unchanged" }
                    h3 { "Added in " (label(head)) } @if comparison.added.is_empty() { p.muted { "None." } } @else { (findings_table(&comparison.added, "Added")) }
                    h3 { "Fixed since " (label(base)) } @if comparison.fixed.is_empty() { p.muted { "None." } } @else { (findings_table(&comparison.fixed, "Fixed")) }
                    h3 { "Unchanged" } @if comparison.unchanged.is_empty() { p.muted { "None." } } @else { (findings_table(&comparison.unchanged, "Unchanged")) }
                }
            }
            section.section aria-labelledby="pkgs-title" {
                h2 #pkgs-title { "Packages" }
                @if !comparison.packages_compared {
                    p.muted { "Both images need a readable SBOM to compare packages." }
                } @else {
                    p { (comparison.packages_added.len()) " added, " (comparison.packages_removed.len()) " removed, " (comparison.packages_upgraded.len()) " upgraded" }
                    div.table-wrap { table.data {
                        caption.visually-hidden { "Package changes" }
                        thead { tr { th scope="col" { "Package" } th scope="col" { "Change" } th scope="col" { (label(base)) } th scope="col" { (label(head)) } } }
                        tbody {
                            @for package in &comparison.packages_added { tr { th scope="row" .mono { (package.name) } td.diff-added { "added" } td { "—" } td.mono { (package.version) } } }
                            @for package in &comparison.packages_removed { tr { th scope="row" .mono { (package.name) } td.diff-fixed { "removed" } td.mono { (package.version) } td { "—" } } }
                            @for change in &comparison.packages_upgraded { tr { th scope="row" .mono { (change.name) } td { "upgraded" } td.mono { (change.from) } td.mono { (change.to) } } }
                        }
                    } }
                }
            }
        }
    };
    let title = format!("Compare {} → {} · {}", label(base), label(head), base.repository);
    page(&title, "Two images of a repository compared: vulnerabilities and packages", body)
}

fn package_search_page(params: &PackageSearchParams, results: Option<&PackageSearchPage>) -> Markup {
    let body = html! {
        div.container.scan-page {
            h1 { "Package search" }
            p.muted { "Which images contain a package: the name as the SBOM writes it, and a version prefix (" code { "3.0" } " matches 3.0.7 and 3.0.8)." }
            form.filters method="get" action="/packages" role="search" {
                label for="package-name" { "Package" }
                input #package-name type="search" name="name" value=(params.name) placeholder="openssl" required;
                label for="package-version" { "Version prefix" }
                input #package-version type="search" name="version" value=(params.version) placeholder="3.0";
                button type="submit" { "Search" }
            }
            @if let Some(results) = results {
                h2 { (results.hits.len()) @if results.next_cursor.is_some() { "+" } " images with " span.mono { (results.name) " " (results.version_prefix) } }
                @if results.hits.is_empty() { p.muted { "No image atcr knows contains this package." } } @else {
                    div.table-wrap { table.data {
                        caption.visually-hidden { "Images containing the package" }
                        thead { tr { th scope="col" { "Repository" } th scope="col" { "Tags" } th scope="col" { "Image" } th scope="col" { "Version" } } }
                        tbody { @for hit in &results.hits {
                            @let owner = hit.handle.clone().unwrap_or_else(|| hit.did.clone());
                            tr {
                                th scope="row" { a href=(repository_url(&owner, &hit.repository)) { (owner) "/" (hit.repository) } }
                                td { ul.badges { @for tag in &hit.tags { li { a.badge.tag href=(tag_url(&owner, &hit.repository, tag)) { (tag) } } } } }
                                td { a.mono href=(packages_url(&owner, &hit.repository, &hit.digest)) title=(hit.digest) { (short_digest(&hit.digest)) } }
                                td.mono { (hit.version) }
                            }
                        } }
                    } }
                    @if let Some(cursor) = &results.next_cursor {
                        p { a rel="next" href=(format!("/packages?{}", query_string(&[("name", params.name.clone()), ("version", params.version.clone()), ("cursor", cursor.clone())]))) { "More images →" } }
                    }
                }
            }
        }
    };
    page("Package search", "Find the images that contain a package", body)
}

// ---------------------------------------------------------------------------------------------
// Routing

/// What a scan path under `/r/` names.
#[derive(Debug, PartialEq, Eq)]
enum ScanRoute {
    Vulnerabilities { owner: String, repository: String, reference: String },
    Packages { owner: String, repository: String, reference: String },
    Compare { owner: String, repository: String, base: String, head: String },
    Badge { owner: String, repository: String },
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn scan_route(path: &str) -> Option<ScanRoute> {
    let rest = path.strip_prefix("/r/")?;
    let (owner, rest) = rest.split_once('/')?;
    let (repository, sub) = rest.split_once("/-/")?;
    let (owner, repository) = (percent_decode(owner)?, percent_decode(repository)?);
    if owner.is_empty() || repository.is_empty() || repository.split('/').any(|part| part.is_empty() || part == "-") {
        return None;
    }
    let sub = sub.trim_end_matches('/');
    if sub == "badge/vulnerabilities.svg" {
        return Some(ScanRoute::Badge { owner, repository });
    }
    let (kind, argument) = sub.split_once('/')?;
    let argument = percent_decode(argument)?;
    if argument.is_empty() || argument.contains('/') {
        return None;
    }
    match kind {
        "vulnerabilities" => Some(ScanRoute::Vulnerabilities { owner, repository, reference: argument }),
        "packages" => Some(ScanRoute::Packages { owner, repository, reference: argument }),
        "compare" => {
            let (base, head) = argument.split_once("...")?;
            (!base.is_empty() && !head.is_empty()).then(|| ScanRoute::Compare {
                owner,
                repository,
                base: base.to_string(),
                head: head.to_string(),
            })
        }
        _ => None,
    }
}

/// Serves the scan pages under `/r/…/-/…` before the repository route sees them.
pub async fn repository_scans_layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(route) = scan_route(request.uri().path()) else { return next.run(request).await };
    let headers = request.headers().clone();
    let params: FilterParams =
        axum::extract::Query::try_from_uri(request.uri()).map(|query| query.0).unwrap_or_default();
    let response = scan_page(state, route, params, &headers).await;
    super::security_headers_on(response)
}

async fn scan_page(state: AppState, route: ScanRoute, params: FilterParams, headers: &HeaderMap) -> Response {
    let Some(query) = scan_query(&state) else { return unavailable("Browsing") };
    let context = RenderContext::new(request_host(headers));
    match route {
        ScanRoute::Vulnerabilities { owner, repository, reference } => {
            let filter = params.filter();
            let lookup = (owner.clone(), repository.clone(), reference.clone());
            match read("vulnerabilities", move || query.vulnerabilities(&lookup.0, &lookup.1, &lookup.2, &filter)).await
            {
                Ok(Some(list)) => html_response(StatusCode::OK, vulnerabilities_page(&list, &params, &context)),
                Ok(None) => not_found_page(&format!("{owner}/{repository} has no tag or manifest {reference}.")),
                Err(response) => response,
            }
        }
        ScanRoute::Packages { owner, repository, reference } => {
            let lookup = (owner.clone(), repository.clone(), reference.clone());
            match read("packages", move || query.packages(&lookup.0, &lookup.1, &lookup.2)).await {
                Ok(Some(list)) => html_response(StatusCode::OK, packages_page(&list, &context)),
                Ok(None) => not_found_page(&format!("{owner}/{repository} has no tag or manifest {reference}.")),
                Err(response) => response,
            }
        }
        ScanRoute::Compare { owner, repository, base, head } => {
            let lookup = (owner.clone(), repository.clone(), base.clone(), head.clone());
            match read("compare", move || query.compare(&lookup.0, &lookup.1, &lookup.2, &lookup.3)).await {
                Ok(Some(comparison)) => html_response(StatusCode::OK, compare_page(&comparison, &context)),
                Ok(None) => not_found_page(&format!("{owner}/{repository} has no tag or manifest {base} or {head}.")),
                Err(response) => response,
            }
        }
        ScanRoute::Badge { owner, repository } => {
            vulnerabilities_badge(&state, query, owner, repository, headers).await
        }
    }
}

/// The badge of the repository's newest tag: "3 critical", "2 high", "clean", "not scanned".
async fn vulnerabilities_badge(
    state: &AppState,
    query: ScanQuery,
    owner: String,
    repository: String,
    headers: &HeaderMap,
) -> Response {
    let Some(browse) = state.browse.clone() else { return unavailable("Browsing") };
    let lookup = move || {
        let Some(page) = browse.repository(&owner, &repository).map_err(|error| error.to_string())? else {
            return Ok::<_, String>(None);
        };
        let Some(newest) = page.tags.first() else { return Ok(Some(None)) };
        Ok(Some(query.summary_of(&page.did, &newest.digest).map_err(|error| error.to_string())?))
    };
    let (status, badge) = match read("vulnerabilities badge", lookup).await {
        Ok(Some(scan)) => (StatusCode::OK, badge_of(scan.as_ref())),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Badge { label: "vulnerabilities".into(), value: "not found".into(), color: "#9f9f9f" },
        ),
        Err(response) => return response,
    };
    badge_response(status, render_svg(&badge), headers)
}

/// The badge's value and color (pure).
pub fn badge_of(scan: Option<&ScanSummary>) -> Badge {
    let label = "vulnerabilities".to_string();
    let (value, color) = match scan {
        None => ("not scanned".to_string(), "#9f9f9f"),
        Some(scan) if scan.unreadable() => ("unreadable".to_string(), "#9f9f9f"),
        Some(scan) if scan.status != "ok" => (format!("scan {}", scan.status), "#9f9f9f"),
        Some(scan) if scan.counts.critical > 0 => (format!("{} critical", scan.counts.critical), "#b60205"),
        Some(scan) if scan.counts.high > 0 => (format!("{} high", scan.counts.high), "#d93f0b"),
        Some(scan) if scan.counts.medium > 0 => (format!("{} medium", scan.counts.medium), "#9a6700"),
        Some(scan) if scan.counts.low > 0 => (format!("{} low", scan.counts.low), "#1f6feb"),
        Some(_) => ("none".to_string(), "#2da44e"),
    };
    Badge { label, value, color }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PackageSearchParams {
    /// The package name as the SBOM writes it (case-insensitive), e.g. `openssl`.
    #[serde(default)]
    pub name: String,
    /// A prefix of the version, e.g. `3.0` (empty: any version).
    #[serde(default)]
    pub version: String,
    /// The previous answer's `next_cursor`.
    #[serde(default)]
    pub cursor: Option<String>,
    /// At most this many images (default 50, at most 1000).
    #[serde(default)]
    pub limit: Option<usize>,
}

async fn package_search(
    State(state): State<AppState>,
    axum::extract::Query(params): axum::extract::Query<PackageSearchParams>,
) -> Response {
    let Some(query) = scan_query(&state) else { return unavailable("Browsing") };
    let name = params.name.trim().to_string();
    if name.is_empty() {
        return html_response(StatusCode::OK, package_search_page(&params, None));
    }
    let (version, cursor) = (params.version.trim().to_string(), params.cursor.clone());
    match read("package search", move || query.package_search(&name, &version, cursor.as_deref(), PACKAGE_PAGE)).await {
        Ok(results) => html_response(StatusCode::OK, package_search_page(&params, Some(&results))),
        Err(response) => response,
    }
}

// ---------------------------------------------------------------------------------------------
// JSON API

/// The scan routes: the package search page and the JSON API.
pub fn routes() -> Router<AppState> {
    let pages =
        Router::new().route("/packages", get(package_search)).layer(axum::middleware::from_fn(super::security_headers));
    Router::new()
        .merge(pages)
        .route("/api/v1/scans/{owner}/{*rest}", get(api_scan))
        .route("/api/v1/vulnerabilities/{owner}/{*rest}", get(api_vulnerabilities))
        .route("/api/v1/packages/{owner}/{*rest}", get(api_packages))
        .route("/api/v1/compare/{owner}/{*rest}", get(api_compare))
        .route("/api/v1/package-search", get(api_package_search))
}

#[derive(OpenApi)]
#[openapi(
    paths(api_scan, api_vulnerabilities, api_packages, api_compare, api_package_search),
    components(schemas(ScanAnswer)),
    tags((name = "scans", description = "Vulnerability scans and SBOMs published by holds"))
)]
pub struct ScansApiDoc;

/// An image and its scan (`scan` is `null` when no hold scanned it).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ScanAnswer {
    pub image: ImageRef,
    pub scan: Option<ScanSummary>,
}

fn scans_of(state: &AppState) -> Result<ScanQuery, ApiError> {
    scan_query(state).ok_or_else(|| ApiError::unavailable("browsing is not available on this server"))
}

/// `{repository…}/-/{reference}` of an API path.
fn split_reference(rest: &str) -> Result<(String, String), ApiError> {
    rest.trim_end_matches('/')
        .rsplit_once("/-/")
        .filter(|(repository, reference)| !repository.is_empty() && !reference.is_empty() && !reference.contains('/'))
        .map(|(repository, reference)| (repository.to_string(), reference.to_string()))
        .ok_or_else(|| ApiError::not_found("a scan path is {owner}/{repository}/-/{tag or digest}"))
}

async fn scan_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, atcr_query::scans::ScanQueryError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::api::query_blocking("scans", work).await
}

/// `GET /api/v1/scans/{owner}/{repository…}/-/{reference}`: an image's scan summary.
#[utoipa::path(get, path = "/api/v1/scans/{owner}/{repository}/-/{reference}", tag = "scans", summary = "An image's vulnerability scan",
    params(
        ("owner" = String, Path, example = "alice.test", description = "A handle or a DID"),
        ("repository" = String, Path, example = "hello", description = "The repository name; may contain `/` (sent unescaped)"),
        ("reference" = String, Path, example = "latest", description = "A tag or a manifest digest"),
    ),
    responses(
        (status = 200, description = "The image and its scan (`scan` null: not scanned)", body = ScanAnswer),
        (status = 400, description = "A path or parameter that does not parse", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody),
        (status = 503, description = "Browsing is not configured", body = ErrorBody),
    ))]
async fn api_scan(
    State(state): State<AppState>,
    ApiPath((owner, rest)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let query = scans_of(&state)?;
    let (repository, reference) = split_reference(&rest)?;
    let (o, r, f) = (owner.clone(), repository.clone(), reference.clone());
    match scan_blocking(move || query.summary(&o, &r, &f)).await? {
        Some((image, scan)) => Ok(axum::Json(ScanAnswer { image, scan }).into_response()),
        None => Err(ApiError::not_found(format!("no image {reference} in {owner}/{repository}"))),
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VulnerabilityParams {
    /// Comma-separated severities (`critical,high`); empty: all.
    #[serde(default)]
    pub severity: String,
    /// `true`: only findings with a fixed-in version.
    #[serde(default)]
    pub fixable: Option<bool>,
    /// Case-insensitive text in the id, package or description.
    #[serde(default)]
    pub q: String,
}

/// `GET /api/v1/vulnerabilities/{owner}/{repository…}/-/{reference}`: the findings.
#[utoipa::path(get, path = "/api/v1/vulnerabilities/{owner}/{repository}/-/{reference}", tag = "scans", summary = "An image's vulnerabilities",
    params(
        ("owner" = String, Path, example = "alice.test", description = "A handle or a DID"),
        ("repository" = String, Path, example = "hello", description = "The repository name; may contain `/` (sent unescaped)"),
        ("reference" = String, Path, example = "latest", description = "A tag or a manifest digest"),
        VulnerabilityParams,
    ),
    responses(
        (status = 200, description = "The scan and its findings, most severe first", body = VulnerabilityList),
        (status = 400, description = "A path or parameter that does not parse", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody),
        (status = 503, description = "Browsing is not configured", body = ErrorBody),
    ))]
async fn api_vulnerabilities(
    State(state): State<AppState>,
    ApiPath((owner, rest)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<VulnerabilityParams>,
) -> Result<Response, ApiError> {
    let query = scans_of(&state)?;
    let (repository, reference) = split_reference(&rest)?;
    let filter = FilterParams {
        severity: params.severity,
        fixable: if params.fixable == Some(true) { "1".into() } else { String::new() },
        q: params.q,
    }
    .filter();
    let (o, r, f) = (owner.clone(), repository.clone(), reference.clone());
    match scan_blocking(move || query.vulnerabilities(&o, &r, &f, &filter)).await? {
        Some(list) => Ok(axum::Json(list).into_response()),
        None => Err(ApiError::not_found(format!("no image {reference} in {owner}/{repository}"))),
    }
}

/// `GET /api/v1/packages/{owner}/{repository…}/-/{reference}`: the SBOM's packages.
#[utoipa::path(get, path = "/api/v1/packages/{owner}/{repository}/-/{reference}", tag = "scans", summary = "An image's packages (SBOM)",
    params(
        ("owner" = String, Path, example = "alice.test", description = "A handle or a DID"),
        ("repository" = String, Path, example = "hello", description = "The repository name; may contain `/` (sent unescaped)"),
        ("reference" = String, Path, example = "latest", description = "A tag or a manifest digest"),
    ),
    responses(
        (status = 200, description = "The packages and a license summary", body = PackageList),
        (status = 400, description = "A path or parameter that does not parse", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody),
        (status = 503, description = "Browsing is not configured", body = ErrorBody),
    ))]
async fn api_packages(
    State(state): State<AppState>,
    ApiPath((owner, rest)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let query = scans_of(&state)?;
    let (repository, reference) = split_reference(&rest)?;
    let (o, r, f) = (owner.clone(), repository.clone(), reference.clone());
    match scan_blocking(move || query.packages(&o, &r, &f)).await? {
        Some(list) => Ok(axum::Json(list).into_response()),
        None => Err(ApiError::not_found(format!("no image {reference} in {owner}/{repository}"))),
    }
}

/// `GET /api/v1/compare/{owner}/{repository…}/-/{base}...{head}`: two images compared.
#[utoipa::path(get, path = "/api/v1/compare/{owner}/{repository}/-/{range}", tag = "scans", summary = "Two images of a repository compared",
    params(
        ("owner" = String, Path, example = "alice.test", description = "A handle or a DID"),
        ("repository" = String, Path, example = "hello", description = "The repository name; may contain `/` (sent unescaped)"),
        ("range" = String, Path, example = "1.0...1.1", description = "`{base}...{head}`: two tags or digests"),
    ),
    responses(
        (status = 200, description = "Findings added, fixed, unchanged; packages added, removed, upgraded", body = Comparison),
        (status = 400, description = "A path or parameter that does not parse", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody),
        (status = 503, description = "Browsing is not configured", body = ErrorBody),
    ))]
async fn api_compare(
    State(state): State<AppState>,
    ApiPath((owner, rest)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let query = scans_of(&state)?;
    let (repository, range) = split_reference(&rest)?;
    let Some((base, head)) = range.split_once("...").filter(|(base, head)| !base.is_empty() && !head.is_empty()) else {
        return Err(ApiError::not_found("a comparison path is {owner}/{repository}/-/{base}...{head}"));
    };
    let (o, r, b, h) = (owner.clone(), repository.clone(), base.to_string(), head.to_string());
    match scan_blocking(move || query.compare(&o, &r, &b, &h)).await? {
        Some(comparison) => Ok(axum::Json(comparison).into_response()),
        None => Err(ApiError::not_found(format!("no image {base} or {head} in {owner}/{repository}"))),
    }
}

/// `GET /api/v1/package-search?name=&version=`: images containing a package.
#[utoipa::path(get, path = "/api/v1/package-search", tag = "scans", summary = "Images containing a package",
    params(PackageSearchParams),
    responses(
        (status = 200, description = "A page of images whose SBOM lists the package", body = PackageSearchPage),
        (status = 400, description = "No `name`, or a bad `limit`", body = ErrorBody),
        (status = 503, description = "Browsing is not configured", body = ErrorBody),
    ))]
async fn api_package_search(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<PackageSearchParams>,
) -> Result<Response, ApiError> {
    let query = scans_of(&state)?;
    let name = params.name.trim().to_string();
    if name.is_empty() {
        return Err(ApiError::bad_request("`name` is required"));
    }
    let limit = params.limit.unwrap_or(PACKAGE_PAGE);
    if limit == 0 || limit > crate::api::MAX_PAGE {
        return Err(ApiError::bad_request(format!("`limit` must be 1..={}", crate::api::MAX_PAGE)));
    }
    let (version, cursor) = (params.version.trim().to_string(), params.cursor.clone());
    let page = scan_blocking(move || query.package_search(&name, &version, cursor.as_deref(), limit)).await?;
    Ok(axum::Json(page).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(critical: u64, status: &str, report: &str) -> ScanSummary {
        ScanSummary {
            hold: "did:plc:hold".into(),
            status: status.into(),
            reason: None,
            counts: atcr_query::scans::SeverityCounts { critical, high: 2, medium: 0, low: 1, total: critical + 3 },
            scanner: None,
            scanned_at: None,
            report: report.into(),
            sbom: "indexed".into(),
            problems: vec!["vulnerability report: not json".into()],
            fixable: None,
            record: "at://did:plc:hold/io.atcr.hold.scan/ab".into(),
        }
    }

    #[test]
    fn routes_under_the_repository() {
        assert_eq!(
            scan_route("/r/alice.test/web/app/-/vulnerabilities/1.0"),
            Some(ScanRoute::Vulnerabilities {
                owner: "alice.test".into(),
                repository: "web/app".into(),
                reference: "1.0".into()
            })
        );
        assert_eq!(
            scan_route("/r/alice.test/app/-/compare/1.0...1.1"),
            Some(ScanRoute::Compare {
                owner: "alice.test".into(),
                repository: "app".into(),
                base: "1.0".into(),
                head: "1.1".into()
            })
        );
        assert_eq!(
            scan_route("/r/a/app/-/badge/vulnerabilities.svg"),
            Some(ScanRoute::Badge { owner: "a".into(), repository: "app".into() })
        );
        assert_eq!(scan_route("/r/a/app/-/tag/1.0"), None);
        assert_eq!(scan_route("/r/a/app/-/compare/1.0"), None);
        assert_eq!(scan_route("/r/a/app/-/packages/a/b"), None);
    }

    #[test]
    fn badges_say_the_worst_severity_or_the_status() {
        assert_eq!(badge_of(Some(&summary(3, "ok", "indexed"))).value, "3 critical");
        assert_eq!(badge_of(Some(&summary(0, "ok", "indexed"))).value, "2 high");
        assert_eq!(badge_of(Some(&summary(0, "failed", "absent"))).value, "scan failed");
        assert_eq!(badge_of(Some(&summary(0, "ok", "unreadable"))).value, "unreadable");
        assert_eq!(badge_of(None).value, "not scanned");
        let html = severity_badges(Some(&summary(0, "ok", "unreadable")), "/x").into_string();
        assert!(html.contains("scan data unreadable"));
    }

    #[test]
    fn descriptions_are_escaped() {
        let finding = VulnerabilityEntry {
            id: "CVE-1".into(),
            severity: "high".into(),
            cvss: Some(7.5),
            cvss_vector: None,
            package: "<b>pkg</b>".into(),
            package_type: None,
            installed_version: "1".into(),
            fixed_in: vec![],
            fix_state: None,
            description: Some("<script>alert(1)</script>".into()),
            related: vec![],
            links: vec![],
            purl: None,
        };
        let html = finding_row(&finding).into_string();
        assert!(!html.contains("<script>") && html.contains("&lt;script&gt;"));
        assert!(!html.contains("<b>pkg"));
    }
}
