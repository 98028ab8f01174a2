//! What atcr needs from a DID document: the handle it claims, its PDS, its hold service and its
//! signing key. Parsing only: enrichment (ingest) uses it on what it fetched, the views
//! (projections) on what the log holds. Resolution (network) is ingest's job.

use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DidDocumentFacts {
    pub did: String,
    /// The first `at://` entry of `alsoKnownAs`, lowercased.
    pub handle: Option<String>,
    /// `#atproto_pds` service endpoint.
    pub pds_endpoint: Option<String>,
    /// `#atcr_hold` service endpoint, for hold DIDs.
    pub hold_endpoint: Option<String>,
    /// `#atproto` verification method: (type, publicKeyMultibase).
    pub signing_key: Option<(String, String)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    id: String,
    #[serde(default)]
    also_known_as: Vec<String>,
    #[serde(default)]
    verification_method: Vec<VerificationMethod>,
    #[serde(default)]
    service: Vec<Service>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerificationMethod {
    id: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    public_key_multibase: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Service {
    id: String,
    #[serde(default)]
    service_endpoint: serde_json::Value,
}

fn fragment_is(id: &str, fragment: &str) -> bool {
    id.rsplit_once('#').is_some_and(|(_, tail)| tail == fragment)
}

pub fn parse_did_document(json: &str) -> Result<DidDocumentFacts, String> {
    let document: Document = serde_json::from_str(json).map_err(|error| format!("invalid DID document: {error}"))?;
    let handle = document
        .also_known_as
        .iter()
        .find_map(|alias| alias.strip_prefix("at://"))
        .map(|handle| handle.trim_end_matches('/').to_ascii_lowercase());
    let endpoint = |fragment: &str| {
        document
            .service
            .iter()
            .find(|service| fragment_is(&service.id, fragment))
            .and_then(|service| service.service_endpoint.as_str())
            .map(|endpoint| endpoint.trim_end_matches('/').to_string())
    };
    let signing_key = document
        .verification_method
        .iter()
        .find(|method| fragment_is(&method.id, "atproto"))
        .and_then(|method| Some((method.kind.clone(), method.public_key_multibase.clone()?)));
    Ok(DidDocumentFacts {
        did: document.id,
        handle,
        pds_endpoint: endpoint("atproto_pds"),
        hold_endpoint: endpoint("atcr_hold"),
        signing_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reference_plc_document_shape() {
        let json = r##"{"@context":["https://www.w3.org/ns/did/v1"],"id":"did:plc:k3u5","alsoKnownAs":["at://Alice.test"],
            "verificationMethod":[{"id":"#atproto","type":"EcdsaSecp256k1VerificationKey2019","controller":"did:plc:k3u5","publicKeyMultibase":"zQYE"}],
            "service":[{"id":"#atproto_pds","type":"AtprotoPersonalDataServer","serviceEndpoint":"http://localhost:2583/"}]}"##;
        let facts = parse_did_document(json).unwrap();
        assert_eq!(facts.handle.as_deref(), Some("alice.test"));
        assert_eq!(facts.pds_endpoint.as_deref(), Some("http://localhost:2583"));
        assert_eq!(facts.signing_key, Some(("EcdsaSecp256k1VerificationKey2019".into(), "zQYE".into())));
        assert_eq!(facts.hold_endpoint, None);
        assert!(parse_did_document("{}").is_err());
    }
}
