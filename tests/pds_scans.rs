//! End to end against the reference PDS: vulnerability scans and SBOMs.
//!
//! An owner publishes three images of `scanme` (tags `1.0`, `1.1`, `bad`); a hold account (the
//! hold the manifests name) uploads real-shaped Grype JSON reports and SPDX 2.3 SBOMs
//! (`fixtures/scans/`) with `uploadBlob` and writes `io.atcr.hold.scan` records pointing at them.
//! atcr ingests, enrichment fetches the documents from the hold's PDS, the projections index
//! them. The JSON API and the pages must show the exact counts, the CVE list, the package list,
//! the comparison of the two tags and the package search; the malformed documents of `bad` are
//! quarantined with a reason and the page says "scan data unreadable"; a rescan (the hold
//! rewrites a failed scan) replaces the result.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use support::{Account, Atcr, Pds, image_manifest, manifest_record, now_datetime, tag_record};

const REPOSITORY: &str = "scanme";

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/scans").join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_and_sboms_from_a_hold_are_indexed_compared_and_searchable() {
    let Some(pds_url) = support::pds_url_or_skip() else { return };
    let mut atcr = Atcr::new("scans", &pds_url, &support::plc_url(&pds_url), Some(0)).expect("a temp dir");
    if let Err(error) = scenario(&pds_url, &mut atcr).await {
        panic!("{error:#}\natcr output:\n{}", atcr.output_tail(60));
    }
}

struct Counts {
    critical: u64,
    high: u64,
    medium: u64,
    low: u64,
}

/// An `io.atcr.hold.scan` record for `manifest_hex` of `owner`.
fn scan_record(
    owner: &Account,
    manifest_hex: &str,
    counts: &Counts,
    report: Option<&Value>,
    sbom: Option<&Value>,
) -> Value {
    let mut record = json!({
        "$type": "io.atcr.hold.scan",
        "manifest": format!("at://{}/io.atcr.manifest/{manifest_hex}", owner.did),
        "repository": REPOSITORY,
        "userDid": owner.did,
        "critical": counts.critical,
        "high": counts.high,
        "medium": counts.medium,
        "low": counts.low,
        "total": counts.critical + counts.high + counts.medium + counts.low,
        "scannerVersion": "atcr-scanner-v1.0.0",
        "scannedAt": now_datetime(),
        "status": "ok",
    });
    if let Some(report) = report {
        record["vulnReportBlob"] = report.clone();
    }
    if let Some(sbom) = sbom {
        record["sbomBlob"] = sbom.clone();
    }
    record
}

/// Polls `path` until `done` holds for its JSON.
async fn wait_json(atcr: &mut Atcr, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if !atcr.is_running() {
            bail!("atcr exited while waiting for {what}");
        }
        let (status, body) = atcr.get(path).await?;
        if status == 200 {
            let value: Value = serde_json::from_str(&body).with_context(|| format!("{path}: not JSON"))?;
            if done(&value) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}; last answer of {path}: {value:#}");
            }
        } else if Instant::now() > deadline {
            bail!("timed out waiting for {what}; {path} answered {status}: {body}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn ids(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| {
                    (
                        item["id"].as_str().unwrap_or_default().to_string(),
                        item["package"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|items| items.iter().map(|item| item["name"].as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(id, package)| (id.to_string(), package.to_string())).collect()
}

async fn scenario(pds_url: &str, atcr: &mut Atcr) -> Result<()> {
    let pds = Pds::new(pds_url);
    let owner = pds.create_account("so").await?;
    let hold = pds.create_account("sh").await?;
    println!("owner {} {}\nhold  {} {}", owner.handle, owner.did, hold.handle, hold.did);

    // --- the owner's images ------------------------------------------------------------------
    let mut hexes = Vec::new();
    for tag in ["1.0", "bad", "1.1"] {
        let manifest = image_manifest(REPOSITORY, tag, &owner.did);
        let blob = pds.upload_blob(&owner, manifest.bytes.clone(), support::OCI_MANIFEST).await?;
        let record = manifest_record(REPOSITORY, &manifest, &blob, &hold.did);
        pds.create_record(&owner, "io.atcr.manifest", Some(&manifest.hex), &record).await?;
        let record = tag_record(&owner.did, REPOSITORY, tag, &manifest.hex);
        pds.put_record(&owner, "io.atcr.tag", &format!("{REPOSITORY}_{tag}"), &record).await?;
        hexes.push(manifest.hex);
    }
    let (hex10, hex_bad, hex11) = (hexes[0].clone(), hexes[1].clone(), hexes[2].clone());

    // --- the hold's scans --------------------------------------------------------------------
    const REPORT: &str = "application/vnd.atcr.vulnerabilities+json";
    const SPDX: &str = "application/spdx+json";
    let report10 = pds.upload_blob(&hold, fixture("grype-1.0.json"), REPORT).await?;
    let sbom10 = pds.upload_blob(&hold, fixture("spdx-1.0.json"), SPDX).await?;
    let counts10 = Counts { critical: 1, high: 3, medium: 2, low: 1 };
    pds.put_record(
        &hold,
        "io.atcr.hold.scan",
        &hex10,
        &scan_record(&owner, &hex10, &counts10, Some(&report10), Some(&sbom10)),
    )
    .await?;
    let bad_report = pds.upload_blob(&hold, fixture("grype-malformed.json"), REPORT).await?;
    let bad_sbom = pds.upload_blob(&hold, fixture("spdx-malformed.json"), SPDX).await?;
    let counts_bad = Counts { critical: 1, high: 0, medium: 0, low: 0 };
    pds.put_record(
        &hold,
        "io.atcr.hold.scan",
        &hex_bad,
        &scan_record(&owner, &hex_bad, &counts_bad, Some(&bad_report), Some(&bad_sbom)),
    )
    .await?;
    // 1.1's first scan failed (no documents); the hold rescans it while atcr runs.
    let mut failed = scan_record(&owner, &hex11, &Counts { critical: 0, high: 0, medium: 0, low: 0 }, None, None);
    failed["status"] = json!("failed");
    failed["reason"] = json!("scanner ran out of memory");
    pds.put_record(&hold, "io.atcr.hold.scan", &hex11, &failed).await?;

    atcr.start(Duration::from_secs(60)).await?;
    let owner_name = owner.handle.clone();
    let base = format!("{owner_name}/{REPOSITORY}/-");

    // --- 1.0: exact counts, CVE list, packages ----------------------------------------------
    let scan10 = wait_json(atcr, &format!("/api/v1/scans/{base}/1.0"), "1.0 indexed", |value| {
        value["scan"]["report"] == "indexed" && value["scan"]["sbom"] == "indexed"
    })
    .await?;
    let scan = &scan10["scan"];
    ensure!(
        scan["counts"] == json!({ "critical": 1, "high": 3, "medium": 2, "low": 1, "total": 7 }),
        "1.0 counts: {scan:#}"
    );
    ensure!(scan["status"] == "ok" && scan["fixable"] == 6 && scan["hold"] == hold.did.as_str(), "1.0 scan: {scan:#}");
    ensure!(scan["scanner"] == "atcr-scanner-v1.0.0", "scanner: {scan:#}");

    let list = atcr.get_json(&format!("/api/v1/vulnerabilities/{base}/1.0")).await?;
    let expected10 = pairs(&[
        ("CVE-2022-48174", "busybox"),
        ("CVE-2023-0464", "libcrypto3"),
        ("CVE-2023-0286", "libcrypto3"),
        ("GHSA-35jh-r3h4-6jhm", "lodash"),
        ("CVE-2023-0465", "libcrypto3"),
        ("GHSA-29mw-wpgm-hmr9", "lodash"),
        ("CVE-2023-5678", "libcrypto3"),
    ]);
    ensure!(ids(&list["vulnerabilities"]) == expected10, "1.0 findings: {:#?}", ids(&list["vulnerabilities"]));
    let first = &list["vulnerabilities"][0];
    ensure!(
        first["severity"] == "critical"
            && (first["cvss"].as_f64().unwrap_or(0.0) - 9.8).abs() < 0.01
            && first["installed_version"] == "1.35.0-r29"
            && first["fixed_in"] == json!(["1.35.0-r31"])
            && first["links"][0]["url"] == "https://nvd.nist.gov/vuln/detail/CVE-2022-48174",
        "first finding: {first:#}"
    );
    let lodash = &list["vulnerabilities"][3];
    ensure!(
        lodash["related"] == json!(["CVE-2021-23337"])
            && lodash["links"]
                == json!([
                    { "name": "GHSA", "url": "https://github.com/advisories/GHSA-35jh-r3h4-6jhm" },
                    { "name": "NVD", "url": "https://nvd.nist.gov/vuln/detail/CVE-2021-23337" },
                ])
            && lodash["description"].as_str().is_some_and(|text| text.contains("Command Injection")),
        "GHSA finding: {lodash:#}"
    );
    let unfixed = &list["vulnerabilities"][6];
    ensure!(unfixed["fixed_in"] == json!([]) && unfixed["fix_state"] == "not-fixed", "unfixed: {unfixed:#}");
    let severe = atcr.get_json(&format!("/api/v1/vulnerabilities/{base}/1.0?severity=critical,high")).await?;
    ensure!(ids(&severe["vulnerabilities"]) == expected10[..4].to_vec(), "critical+high: {severe:#}");
    let fixable = atcr.get_json(&format!("/api/v1/vulnerabilities/{base}/1.0?fixable=true")).await?;
    ensure!(ids(&fixable["vulnerabilities"]) == expected10[..6].to_vec(), "fixable: {fixable:#}");

    let packages = atcr.get_json(&format!("/api/v1/packages/{base}/1.0")).await?;
    ensure!(
        names(&packages["packages"])
            == ["busybox", "ca-certificates-bundle", "libcrypto3", "libssl3", "lodash", "musl", "openssl", "zlib"],
        "1.0 packages: {:#?}",
        names(&packages["packages"])
    );
    let openssl = &packages["packages"][6];
    ensure!(
        openssl["version"] == "3.0.7-r0"
            && openssl["licenses"] == json!(["Apache-2.0"])
            && openssl["purl"] == "pkg:apk/alpine/openssl@3.0.7-r0?arch=x86_64&distro=alpine-3.17.3",
        "openssl: {openssl:#}"
    );
    ensure!(
        packages["packages"][4]["purl_url"] == "https://www.npmjs.com/package/lodash",
        "lodash purl link: {:#}",
        packages["packages"][4]
    );
    ensure!(
        packages["licenses"][0] == json!({ "license": "Apache-2.0", "packages": 3 }),
        "licenses: {:#}",
        packages["licenses"]
    );
    ensure!(packages["creators"] == json!(["Organization: Anchore, Inc", "Tool: syft-0.105.0"]), "creators");

    // --- the malformed documents: quarantined, the page says so ------------------------------
    let bad = wait_json(atcr, &format!("/api/v1/scans/{base}/bad"), "bad rejected", |value| {
        value["scan"]["report"] == "unreadable" && value["scan"]["sbom"] == "unreadable"
    })
    .await?;
    let problems = bad["scan"]["problems"].to_string();
    ensure!(
        problems.contains("not JSON") && problems.contains("not an SPDX 2.x JSON document"),
        "problems: {problems}"
    );
    let quarantine = atcr.get_json("/api/v1/quarantine").await?.to_string();
    ensure!(
        quarantine.contains("scan.vulnerabilities") && quarantine.contains("scan.sbom"),
        "quarantine: {quarantine}"
    );
    let events = atcr.events(Some(&hold.did), None).await?;
    let rejected = events.iter().filter(|event| event["kind"] == "content_rejected").count();
    let stored = events.iter().filter(|event| event["kind"] == "content_stored").count();
    ensure!(rejected == 2 && stored == 2, "hold events: {rejected} rejected, {stored} stored");
    let (status, page) = atcr.get(&format!("/r/{base}/tag/bad")).await?;
    ensure!(status == 200 && page.contains("scan data unreadable"), "bad tag page: {status}");
    let (status, page) = atcr.get(&format!("/r/{base}/vulnerabilities/bad")).await?;
    ensure!(status == 200 && page.contains("scan data unreadable"), "bad vulnerabilities page: {status}");

    // --- 1.1: failed, then rescanned -----------------------------------------------------------
    let failed = atcr.get_json(&format!("/api/v1/scans/{base}/1.1")).await?;
    ensure!(
        failed["scan"]["status"] == "failed" && failed["scan"]["reason"] == "scanner ran out of memory",
        "failed scan: {failed:#}"
    );
    let report11 = pds.upload_blob(&hold, fixture("grype-1.1.json"), REPORT).await?;
    let sbom11 = pds.upload_blob(&hold, fixture("spdx-1.1.json"), SPDX).await?;
    let counts11 = Counts { critical: 1, high: 0, medium: 0, low: 2 };
    pds.put_record(
        &hold,
        "io.atcr.hold.scan",
        &hex11,
        &scan_record(&owner, &hex11, &counts11, Some(&report11), Some(&sbom11)),
    )
    .await?;
    let scan11 = wait_json(atcr, &format!("/api/v1/scans/{base}/1.1"), "1.1 rescanned", |value| {
        value["scan"]["status"] == "ok" && value["scan"]["report"] == "indexed" && value["scan"]["sbom"] == "indexed"
    })
    .await?;
    ensure!(
        scan11["scan"]["counts"] == json!({ "critical": 1, "high": 0, "medium": 0, "low": 2, "total": 3 })
            && scan11["scan"]["reason"].is_null(),
        "1.1 after the rescan: {scan11:#}"
    );
    let history = atcr.events(Some(&hold.did), Some("io.atcr.hold.scan")).await?;
    ensure!(
        history.iter().filter(|event| event["rkey"] == hex11.as_str()).count() == 2,
        "both versions of the 1.1 scan stay in the log"
    );

    // --- the comparison ------------------------------------------------------------------------
    let comparison = atcr.get_json(&format!("/api/v1/compare/{base}/1.0...1.1")).await?;
    ensure!(
        ids(&comparison["added"]) == pairs(&[("CVE-2023-38545", "curl"), ("CVE-2023-38546", "libcurl")]),
        "added: {:#?}",
        ids(&comparison["added"])
    );
    ensure!(ids(&comparison["fixed"]) == expected10[..6].to_vec(), "fixed: {:#?}", ids(&comparison["fixed"]));
    ensure!(ids(&comparison["unchanged"]) == pairs(&[("CVE-2023-5678", "libcrypto3")]), "unchanged");
    ensure!(names(&comparison["packages_added"]) == ["curl", "libcurl"], "packages added");
    ensure!(names(&comparison["packages_removed"]) == ["lodash"], "packages removed");
    ensure!(
        comparison["packages_upgraded"]
            == json!([
                { "name": "busybox", "from": "1.35.0-r29", "to": "1.36.1-r0" },
                { "name": "libcrypto3", "from": "3.0.7-r0", "to": "3.0.8-r3" },
                { "name": "libssl3", "from": "3.0.7-r0", "to": "3.0.8-r3" },
                { "name": "openssl", "from": "3.0.7-r0", "to": "3.0.8-r3" },
            ]),
        "upgraded: {:#}",
        comparison["packages_upgraded"]
    );

    // --- package search ------------------------------------------------------------------------
    // (the PDS may hold earlier runs' accounts too: only this owner's hits are checked exactly)
    let search = atcr.get_json("/api/v1/package-search?name=openssl&version=3.0&limit=1000").await?;
    let all: Vec<Value> = search["hits"].as_array().cloned().unwrap_or_default();
    let mine: Vec<(String, Value)> = all
        .iter()
        .filter(|hit| hit["did"] == owner.did.as_str())
        .map(|hit| (hit["digest"].as_str().unwrap_or_default().to_string(), hit["tags"].clone()))
        .collect();
    ensure!(
        mine == vec![(format!("sha256:{hex10}"), json!(["1.0"])), (format!("sha256:{hex11}"), json!(["1.1"]))],
        "openssl 3.0: {search:#}"
    );
    let exact = atcr.get_json("/api/v1/package-search?name=OpenSSL&version=3.0.7&limit=1000").await?;
    let exact_mine: Vec<&Value> =
        exact["hits"].as_array().into_iter().flatten().filter(|hit| hit["did"] == owner.did.as_str()).collect();
    ensure!(exact_mine.len() == 1 && exact_mine[0]["version"] == "3.0.7-r0", "openssl 3.0.7: {exact:#}");
    // one hit per page: the pages together are the whole list, in order, without repeats
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..=all.len() {
        let path = match &cursor {
            Some(cursor) => {
                format!("/api/v1/package-search?name=openssl&version=3.0&limit=1&cursor={}", urlencode(cursor))
            }
            None => "/api/v1/package-search?name=openssl&version=3.0&limit=1".to_string(),
        };
        let page = atcr.get_json(&path).await?;
        paged.extend(page["hits"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    ensure!(paged == all, "paging by one gives {} hits, the whole list {}", paged.len(), all.len());

    // --- search filters ------------------------------------------------------------------------
    let fixable =
        wait_json(atcr, "/api/v1/search?q=is:fixable", "is:fixable", |value| value.to_string().contains(REPOSITORY))
            .await?;
    ensure!(fixable.to_string().contains(REPOSITORY), "is:fixable");
    let no_critical = atcr.get_json("/api/v1/search?q=is:no-critical").await?;
    ensure!(
        !no_critical.to_string().contains(&format!("\"{REPOSITORY}\"")),
        "is:no-critical lists a repository with criticals"
    );

    // --- pages ---------------------------------------------------------------------------------
    let (status, page) = atcr.get(&format!("/r/{owner_name}/{REPOSITORY}")).await?;
    ensure!(status == 200 && page.contains("1 critical") && page.contains("3 high"), "repository page badges");
    // Each scanned tag links a comparison with the next older scanned tag, and the link works.
    let compare_href = page
        .split("class=\"compare-link\" href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(|href| href.replace("&amp;", "&"))
        .context("the repository page links no tag comparison")?;
    let (status, compared) = atcr.get(&compare_href).await?;
    ensure!(status == 200 && compared.contains("id=\"cves-title\""), "compare link {compare_href}: {status}");
    let (status, page) = atcr.get(&format!("/r/{base}/vulnerabilities/1.0")).await?;
    ensure!(status == 200, "vulnerabilities page: {status}");
    for needle in
        ["CVE-2022-48174", "9.8", "1.35.0-r31", "https://nvd.nist.gov/vuln/detail/CVE-2022-48174", "7 of 7 findings"]
    {
        ensure!(page.contains(needle), "vulnerabilities page lacks {needle}");
    }
    ensure!(
        !page.contains("<script>alert('cve')</script>") && page.contains("&lt;script&gt;alert"),
        "a description's markup must be escaped"
    );
    let (_, page) = atcr.get(&format!("/r/{base}/vulnerabilities/1.0?severity=critical")).await?;
    ensure!(page.contains("1 of 7 findings"), "filtered page");
    let (status, page) = atcr.get(&format!("/r/{base}/packages/1.0")).await?;
    ensure!(
        status == 200 && page.contains("Apache-2.0: 3") && page.contains("pkg:apk/alpine/openssl@3.0.7-r0"),
        "packages page"
    );
    let (status, page) = atcr.get(&format!("/r/{base}/compare/1.0...1.1")).await?;
    ensure!(
        status == 200 && page.contains("2 added") && page.contains("6 fixed") && page.contains("1 unchanged"),
        "compare page"
    );
    ensure!(page.contains("2 added, 1 removed, 4 upgraded"), "compare page packages");
    let (status, page) = atcr.get(&format!("/r/{base}/tag/1.0")).await?;
    ensure!(status == 200 && page.contains("Security") && page.contains("1 critical"), "manifest page security");
    let (status, page) = atcr.get("/packages?name=openssl&version=3.0").await?;
    ensure!(
        status == 200 && page.contains(&format!("sha256:{hex10}")) && page.contains(REPOSITORY),
        "package search page"
    );
    let (status, badge) = atcr.get(&format!("/r/{base}/badge/vulnerabilities.svg")).await?;
    ensure!(status == 200 && badge.starts_with("<svg") && badge.contains("vulnerabilities"), "badge: {status} {badge}");

    browser_check(atcr, &owner_name)?;
    println!("scans: ok");
    atcr.terminate(Duration::from_secs(20)).await?;
    Ok(())
}

/// The scan pages in headless chromium: they load with no console error and no axe (WCAG 2.1 AA)
/// violation, show the facts, and are saved as screenshots
/// (`target/test-output/screenshots/scans/`).
fn browser_check(atcr: &Atcr, owner: &str) -> Result<()> {
    let base = format!("/r/{owner}/{REPOSITORY}/-");
    let pages = [
        format!("scan-repository|/r/{owner}/{REPOSITORY}|#tags|1 critical"),
        format!("scan-manifest|{base}/tag/1.0|#security|Vulnerabilities"),
        format!("scan-vulnerabilities|{base}/vulnerabilities/1.0|table.findings|CVE-2022-48174"),
        format!(
            "scan-vulnerabilities-filtered|{base}/vulnerabilities/1.0?severity=critical,high&fixable=1|#findings|4 of 7"
        ),
        format!("scan-packages|{base}/packages/1.0|#packages-title|8 packages"),
        format!("scan-compare|{base}/compare/1.0...1.1|#cves-title|Vulnerabilities"),
        format!("scan-unreadable|{base}/vulnerabilities/bad|.scan-unreadable|scan data unreadable"),
        "scan-package-search|/packages?name=openssl&version=3.0|table.data|scanme".to_string(),
    ];
    support::check_pages_in_browser(&atcr.base_url(), "scans", &pages)
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}
