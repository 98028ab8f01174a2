//! Scan documents: the vulnerability report and SBOM an `io.atcr.hold.scan` record names
//! (`vulnReportBlob`, `sbomBlob`), fetched from the PDS of the hold that wrote the record
//! (`com.atproto.sync.getBlob`, through the URL policy, size-capped), checked against the blob
//! CID (raw codec, sha256), parsed with `atcr_storage::scan_formats` (so what is stored is known
//! to be readable), kept in the content store and announced with
//! `ContentStored { kind: "scan.vulnerabilities" | "scan.sbom", subject: <scan record AT-URI> }`.
//! Anything refused (too large, not matching its CID, not parseable) becomes a quarantine entry
//! with the reason and a `ContentRejected` event, so pages say "scan data unreadable".

use atcr_storage::AppendBatch;
use atcr_storage::content::sha256_digest;
use atcr_storage::records::{BlobRef, HOLD_SCAN, ScanRecord};
use atcr_storage::scan_formats::{parse_spdx, parse_vulnerability_report};

use super::{Enricher, Failure, FetchError, Fetcher};

/// Event kind of a stored vulnerability report.
pub const VULNERABILITIES_KIND: &str = "scan.vulnerabilities";
/// Event kind of a stored SBOM.
pub const SBOM_KIND: &str = "scan.sbom";
/// Default cap on one scan document (reports of large images run to a few MiB).
pub const MAX_SCAN_BLOB_BYTES: usize = 16 * 1024 * 1024;

/// One scan document to fetch.
#[derive(Debug, Clone)]
pub(super) struct ScanBlobJob {
    /// The hold that wrote the scan record (its PDS serves the blob).
    pub hold_did: String,
    pub kind: &'static str,
    pub cid: String,
    pub media_type: String,
    /// The scan record's AT-URI.
    pub subject: String,
}

/// The documents a scan record names.
pub(super) fn jobs_for(hold_did: &str, rkey: &str, record: &[u8]) -> Vec<ScanBlobJob> {
    let Ok(scan) = ScanRecord::decode(record, rkey) else { return Vec::new() };
    let subject = format!("at://{hold_did}/{HOLD_SCAN}/{rkey}");
    let job = |kind: &'static str, blob: BlobRef, default_type: &str| ScanBlobJob {
        hold_did: hold_did.to_string(),
        kind,
        cid: blob.cid,
        media_type: blob.mime_type.unwrap_or_else(|| default_type.to_string()),
        subject: subject.clone(),
    };
    let mut jobs = Vec::new();
    if let Some(blob) = scan.vuln_report {
        jobs.push(job(VULNERABILITIES_KIND, blob, "application/vnd.atcr.vulnerabilities+json"));
    }
    if let Some(blob) = scan.sbom {
        jobs.push(job(SBOM_KIND, blob, "application/spdx+json"));
    }
    jobs
}

/// `sha256:<hex>` of a raw-codec sha256 CID (what ATProto blob CIDs are), or why not.
fn raw_sha256_digest(cid: &str) -> Result<String, String> {
    let parsed: ipld_core::cid::Cid =
        cid.parse().map_err(|error| format!("blob CID {cid:?} does not parse: {error}"))?;
    if parsed.codec() != 0x55 {
        return Err(format!("blob CID {cid} is not a raw-codec CID"));
    }
    if parsed.hash().code() != 0x12 || parsed.hash().size() != 32 {
        return Err(format!("blob CID {cid} is not sha2-256"));
    }
    Ok(format!("sha256:{}", parsed.hash().digest().iter().map(|byte| format!("{byte:02x}")).collect::<String>()))
}

/// Why the bytes are not a readable document of `kind` (`None`: they are).
fn unreadable(kind: &str, bytes: &[u8]) -> Option<String> {
    let result =
        if kind == SBOM_KIND { parse_spdx(bytes).map(drop) } else { parse_vulnerability_report(bytes).map(drop) };
    result.err().map(|error| error.to_string())
}

impl<F: Fetcher> Enricher<F> {
    pub(super) async fn fetch_scan_blob(&mut self, job: &ScanBlobJob, batch: &mut AppendBatch) -> Result<(), Failure> {
        let ScanBlobJob { hold_did, kind, cid, media_type, subject } = job;
        let digest = match raw_sha256_digest(cid) {
            Ok(digest) => digest,
            Err(reason) => {
                Self::reject_scan_blob(hold_did, kind, "", subject, reason, Vec::new(), batch);
                return Ok(());
            }
        };
        let bytes = match self.content.get(&digest) {
            Ok(Some(bytes)) => bytes,
            _ => match self.download_scan_blob(job, &digest, batch).await? {
                Some(bytes) => bytes,
                None => return Ok(()), // refused for good, already recorded
            },
        };
        if let Some(reason) = unreadable(kind, &bytes) {
            Self::reject_scan_blob(hold_did, kind, &digest, subject, reason, bytes, batch);
            return Ok(());
        }
        self.content.put(&digest, &bytes).map_err(|error| Failure::Retry(format!("storing {digest}: {error}")))?;
        batch.events.push(super::enrichment_event(
            hold_did,
            atcr_storage::EventBody::ContentStored {
                kind: kind.to_string(),
                digest,
                media_type: media_type.clone(),
                size: bytes.len() as u64,
                subject: subject.clone(),
            },
        ));
        Ok(())
    }

    /// The blob from the hold's PDS; `None` when it was refused for good (already recorded).
    async fn download_scan_blob(
        &mut self,
        job: &ScanBlobJob,
        digest: &str,
        batch: &mut AppendBatch,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let ScanBlobJob { hold_did, kind, cid, subject, .. } = job;
        if self.unresolvable.contains(hold_did) {
            let reason = format!("hold {hold_did} cannot be resolved");
            Self::reject_scan_blob(hold_did, kind, digest, subject, reason, Vec::new(), batch);
            return Ok(None);
        }
        let Some((_, pds)) = self.resolved.get(hold_did) else {
            return Err(Failure::Retry(format!("hold {hold_did} is not resolved yet")));
        };
        let Some(pds) = pds.clone() else {
            return Err(Failure::Retry(format!("hold {hold_did} has no PDS endpoint")));
        };
        if !hold_did.bytes().all(|byte| byte.is_ascii_graphic() && byte != b'&' && byte != b'#') {
            let reason = "malformed hold did".to_string();
            Self::reject_scan_blob(hold_did, kind, digest, subject, reason, Vec::new(), batch);
            return Ok(None);
        }
        let url = format!(
            "{}/xrpc/com.atproto.sync.getBlob?did={}&cid={cid}",
            pds.trim_end_matches('/'),
            hold_did.replace('%', "%25")
        );
        let bytes = match self.fetcher.hold_blob(&url, false, self.scan_blob_max_bytes).await {
            Ok(bytes) => bytes,
            Err(error @ (FetchError::Policy(_) | FetchError::TooLarge(_))) => {
                Self::reject_scan_blob(hold_did, kind, digest, subject, error.to_string(), Vec::new(), batch);
                return Ok(None);
            }
            Err(error) => return Err(Failure::Retry(format!("fetching {kind} {cid} of {hold_did}: {error}"))),
        };
        let actual = sha256_digest(&bytes);
        if actual != digest {
            let reason = format!("the PDS's bytes hash to {actual}, not the blob CID's {digest}");
            Self::reject_scan_blob(hold_did, kind, digest, subject, reason, bytes, batch);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// A scan document atcr will not use: quarantined with the reason (and the bytes, when
    /// there are any), and a `ContentRejected` event so pages say the data is unreadable.
    pub(super) fn reject_scan_blob(
        hold_did: &str,
        kind: &str,
        digest: &str,
        subject: &str,
        reason: String,
        raw: Vec<u8>,
        batch: &mut AppendBatch,
    ) {
        tracing::warn!(hold = %hold_did, kind, digest, subject, %reason, "scan document rejected");
        metrics::counter!("atcr_enrichment_scan_documents_rejected_total").increment(1);
        batch.quarantine.push(atcr_storage::QuarantineEntry {
            received_at_us: atcr_storage::now_micros(),
            upstream: format!("enrichment:{kind}"),
            upstream_seq: None,
            did: Some(hold_did.to_string()),
            reason: format!("{kind} {digest} of {subject}: {reason}"),
            raw,
        });
        batch.events.push(super::enrichment_event(
            hold_did,
            atcr_storage::EventBody::ContentRejected {
                kind: kind.to_string(),
                digest: digest.to_string(),
                subject: subject.to_string(),
                reason,
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_raw_sha256_cids_name_a_digest() {
        let digest = raw_sha256_digest("bafkreifxz44pav6zvtuqgpeiggm3xrtop2uqyrasgrrwc63b6p55mybzei").unwrap();
        assert!(atcr_storage::records::is_sha256_digest(&digest));
        // a dag-cbor record CID is not a blob
        assert!(raw_sha256_digest("bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm").is_err());
        assert!(raw_sha256_digest("not-a-cid").is_err());
    }

    #[test]
    fn documents_are_validated_by_kind() {
        assert!(unreadable(SBOM_KIND, br#"{"spdxVersion": "SPDX-2.3", "packages": []}"#).is_none());
        assert!(unreadable(SBOM_KIND, br#"{"matches": []}"#).is_some());
        assert!(unreadable(VULNERABILITIES_KIND, br#"{"matches": []}"#).is_none());
        assert!(unreadable(VULNERABILITIES_KIND, b"<html>").is_some());
    }
}
