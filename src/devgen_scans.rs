//! `atcr dev gen --into --scans N`: vulnerability scans with SBOMs for the first N image
//! manifests of the generated world, for the package search benchmark.
//!
//! Each scan is what a hold and enrichment would leave in the log: an `io.atcr.hold.scan` record
//! put by the generated hold `did:web:scanner.gen.invalid` (its record key the manifest digest
//! hex, its `sbomBlob` a raw sha256 CID) and a `ContentStored { kind: "scan.sbom" }` for the SPDX
//! 2.3 document, whose bytes go into the content store. A benchmark shortcut: the scan records
//! are appended as events without signed commits (nothing is verified, no gate runs), which the
//! projections do not need. Every SBOM has `--sbom-packages` packages: the usual base of an
//! Alpine image (openssl in one of six versions, so "openssl 3.0" matches half the images), a
//! seeded pick from a pool of 5,000 library names, and one package unique to the image, so no two
//! documents are the same.

use atcr_storage::content::{ContentStore, sha256_digest};
use atcr_storage::records::{self, ManifestRecord};
use atcr_storage::{AppendBatch, Event, EventBody, EventLog, PutAction, Source};
use serde::Serialize;

/// The hold that "scanned" the generated images.
pub const GENERATED_SCANNER: &str = "did:web:scanner.gen.invalid";
const OPENSSL_VERSIONS: [&str; 6] = ["1.1.1w-r1", "3.0.7-r0", "3.0.8-r3", "3.0.13-r0", "3.1.4-r5", "3.2.1-r0"];
const BASE: [(&str, &str, &str); 7] = [
    ("busybox", "1.36.1-r15", "GPL-2.0-only"),
    ("musl", "1.2.4-r2", "MIT"),
    ("zlib", "1.3.1-r0", "Zlib"),
    ("libcrypto3", "3.1.4-r5", "Apache-2.0"),
    ("libssl3", "3.1.4-r5", "Apache-2.0"),
    ("ca-certificates-bundle", "20240226-r0", "MPL-2.0 AND MIT"),
    ("apk-tools", "2.14.0-r5", "GPL-2.0-only"),
];
const LICENSES: [&str; 6] = ["MIT", "Apache-2.0", "BSD-3-Clause", "GPL-2.0-only", "ISC", "MPL-2.0"];
const POOL: u64 = 5_000;

/// Picks the manifests to scan while the world is appended.
pub struct ScanPlan {
    wanted: usize,
    packages: usize,
    seed: u64,
    /// (owner, manifest digest) of image manifests, in log order.
    manifests: Vec<(String, String, String)>,
}

impl ScanPlan {
    pub fn new(wanted: usize, packages: usize, seed: u64) -> Self {
        ScanPlan { wanted, packages: packages.max(BASE.len() + 2), seed, manifests: Vec::new() }
    }

    /// Notes the image manifests among freshly appended events.
    pub fn note(&mut self, events: &[Event]) {
        for event in events {
            if self.manifests.len() >= self.wanted {
                return;
            }
            let EventBody::RecordPut { collection, record, .. } = &event.body else { continue };
            if collection != records::MANIFEST {
                continue;
            }
            let Ok(manifest) = ManifestRecord::decode(record) else { continue };
            if manifest.is_index() || manifest.subject.is_some() {
                continue;
            }
            self.manifests.push((event.did.clone(), manifest.repository, manifest.digest));
        }
    }

    /// Appends the scans (records, SBOMs, `ContentStored`) and moves the enrichment checkpoint
    /// past them. Returns how many were appended.
    pub fn append(self, log: &EventLog, content: &ContentStore, received_at_us: i64) -> anyhow::Result<usize> {
        let mut rng = self.seed ^ 0x5ca1_ab1e;
        let mut appended = 0;
        for chunk in self.manifests.chunks(1_000) {
            let mut events = Vec::with_capacity(chunk.len() * 2);
            for (owner, repository, digest) in chunk {
                let index = appended + events.len() / 2;
                let sbom = sbom_document(index, self.packages, repository, &mut rng);
                let sbom_digest = sha256_digest(&sbom);
                content.put(&sbom_digest, &sbom)?;
                let hex = &digest["sha256:".len()..];
                let record = scan_record(owner, repository, hex, &sbom, index);
                let record_cid = atcr_gen::encoding::cid_of(atcr_gen::encoding::DAG_CBOR, &record).to_string();
                let subject = format!("at://{GENERATED_SCANNER}/{}/{hex}", records::HOLD_SCAN);
                events.push(Event {
                    source: Source::Firehose,
                    upstream_seq: None,
                    did: GENERATED_SCANNER.to_string(),
                    rev: None,
                    upstream_time: None,
                    received_at_us,
                    commit_cid: None,
                    body: EventBody::RecordPut {
                        collection: records::HOLD_SCAN.to_string(),
                        rkey: hex.to_string(),
                        cid: record_cid,
                        action: PutAction::Create,
                        record,
                    },
                });
                events.push(Event::enrichment(
                    GENERATED_SCANNER,
                    received_at_us,
                    EventBody::ContentStored {
                        kind: "scan.sbom".into(),
                        digest: sbom_digest,
                        media_type: "application/spdx+json".into(),
                        size: sbom.len() as u64,
                        subject,
                    },
                ));
            }
            appended += events.len() / 2;
            let next = log.next_offset()? + events.len() as u64;
            log.append(AppendBatch {
                events,
                checkpoints: vec![(atcr_ingest::enrich::CONSUMER.to_string(), next)],
                ..AppendBatch::default()
            })?;
        }
        Ok(appended)
    }
}

fn next(state: &mut u64) -> u64 {
    // xorshift64*
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BlobWire<C: Serialize> {
    #[serde(rename = "$type")]
    kind: &'static str,
    #[serde(rename = "ref")]
    link: C,
    mime_type: &'static str,
    size: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScanWire<C: Serialize> {
    #[serde(rename = "$type")]
    kind: &'static str,
    manifest: String,
    repository: String,
    user_did: String,
    critical: u64,
    high: u64,
    medium: u64,
    low: u64,
    total: u64,
    scanner_version: &'static str,
    scanned_at: &'static str,
    status: &'static str,
    sbom_blob: BlobWire<C>,
}

fn scan_record(owner: &str, repository: &str, hex: &str, sbom: &[u8], index: usize) -> Vec<u8> {
    let (critical, high) = ((index % 3) as u64, (index % 5) as u64);
    let record = ScanWire {
        kind: records::HOLD_SCAN,
        manifest: format!("at://{owner}/{}/{hex}", records::MANIFEST),
        repository: repository.to_string(),
        user_did: owner.to_string(),
        critical,
        high,
        medium: 2,
        low: 1,
        total: critical + high + 3,
        scanner_version: "atcr-scanner-gen",
        scanned_at: "2026-01-01T00:00:00Z",
        status: "ok",
        sbom_blob: BlobWire {
            kind: "blob",
            link: atcr_gen::encoding::cid_of(atcr_gen::encoding::RAW, sbom),
            mime_type: "application/spdx+json",
            size: sbom.len() as u64,
        },
    };
    atcr_gen::encoding::dag_cbor(&record)
}

fn spdx_package(index: usize, name: &str, version: &str, license: &str, kind: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "SPDXID": format!("SPDXRef-Package-{index}"),
        "versionInfo": version,
        "downloadLocation": "NOASSERTION",
        "licenseConcluded": license,
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": format!("pkg:{kind}/{name}@{version}"),
        }],
    })
}

fn sbom_document(index: usize, packages: usize, repository: &str, rng: &mut u64) -> Vec<u8> {
    let mut list = Vec::with_capacity(packages);
    let openssl = OPENSSL_VERSIONS[index % OPENSSL_VERSIONS.len()];
    list.push(spdx_package(0, "openssl", openssl, "Apache-2.0", "apk/alpine"));
    for (name, version, license) in BASE {
        list.push(spdx_package(list.len(), name, version, license, "apk/alpine"));
    }
    list.push(spdx_package(list.len(), &format!("image-{index}"), "1.0.0", "MIT", "generic"));
    let mut picked = std::collections::BTreeSet::new();
    while list.len() < packages {
        let pick = next(rng) % POOL;
        if !picked.insert(pick) {
            continue;
        }
        let version = format!("{}.{}.{}", pick % 4, next(rng) % 20, next(rng) % 10);
        let license = LICENSES[(pick % LICENSES.len() as u64) as usize];
        list.push(spdx_package(list.len(), &format!("lib{pick:04}"), &version, license, "npm"));
    }
    let document = serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": repository,
        "documentNamespace": format!("https://scanner.gen.invalid/{index}"),
        "creationInfo": { "created": "2026-01-01T00:00:00Z", "creators": ["Tool: atcr-gen"] },
        "packages": list,
    });
    serde_json::to_vec(&document).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sboms_parse_with_the_asked_package_count() {
        let mut rng = 7;
        let bytes = sbom_document(3, 200, "app", &mut rng);
        let sbom = atcr_storage::scan_formats::parse_spdx(&bytes).unwrap();
        assert_eq!(sbom.packages.len(), 200);
        assert!(sbom.packages.iter().any(|package| package.name == "openssl" && package.version == "3.0.13-r0"));
        let record = scan_record("did:plc:a", "app", &"ab".repeat(32), &bytes, 3);
        let scan = atcr_storage::records::ScanRecord::decode(&record, &"ab".repeat(32)).unwrap();
        assert_eq!(scan.sbom.unwrap().cid, atcr_gen::encoding::cid_of(atcr_gen::encoding::RAW, &bytes).to_string());
    }
}
