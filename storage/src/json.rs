//! DAG-CBOR rendered as ATProto JSON (`$link` for CIDs, `$bytes` for byte strings), and events
//! rendered as JSON lines for `atcr log` and the JSON API.

use base64::Engine;
use ipld_core::ipld::Ipld;
use serde_json::{Map, Value, json};

use crate::event::{Event, EventBody, PutAction};

/// Decodes DAG-CBOR bytes into ATProto JSON. Undecodable bytes give an error string, never a
/// panic: records are untrusted input.
pub fn dag_cbor_to_json(bytes: &[u8]) -> Result<Value, String> {
    let ipld: Ipld = serde_ipld_dagcbor::from_slice(bytes).map_err(|error| error.to_string())?;
    Ok(ipld_to_json(ipld))
}

pub fn ipld_to_json(ipld: Ipld) -> Value {
    match ipld {
        Ipld::Null => Value::Null,
        Ipld::Bool(value) => Value::Bool(value),
        Ipld::Integer(value) => match i64::try_from(value) {
            Ok(value) => Value::from(value),
            Err(_) => Value::String(value.to_string()),
        },
        Ipld::Float(value) => serde_json::Number::from_f64(value).map(Value::Number).unwrap_or(Value::Null),
        Ipld::String(value) => Value::String(value),
        Ipld::Bytes(value) => {
            json!({ "$bytes": base64::engine::general_purpose::STANDARD_NO_PAD.encode(value) })
        }
        Ipld::List(values) => Value::Array(values.into_iter().map(ipld_to_json).collect()),
        Ipld::Map(entries) => {
            Value::Object(entries.into_iter().map(|(key, value)| (key, ipld_to_json(value))).collect::<Map<_, _>>())
        }
        Ipld::Link(cid) => json!({ "$link": cid.to_string() }),
    }
}

/// One event as a JSON object: envelope fields plus the body's fields, `record` decoded.
pub fn event_to_json(offset: u64, event: &Event) -> Value {
    let mut object = Map::new();
    object.insert("offset".into(), json!(offset));
    object.insert("kind".into(), json!(event.body.kind()));
    object.insert("source".into(), json!(event.source.as_str()));
    object.insert("seq".into(), json!(event.upstream_seq));
    object.insert("did".into(), json!(event.did));
    object.insert("rev".into(), json!(event.rev));
    object.insert("time".into(), json!(event.upstream_time));
    object.insert("received_at_us".into(), json!(event.received_at_us));
    object.insert("commit".into(), json!(event.commit_cid));
    match &event.body {
        EventBody::RecordPut { collection, rkey, cid, action, record } => {
            object.insert("collection".into(), json!(collection));
            object.insert("rkey".into(), json!(rkey));
            object.insert("cid".into(), json!(cid));
            let action = match action {
                PutAction::Create => "create",
                PutAction::Update => "update",
            };
            object.insert("action".into(), json!(action));
            let record = dag_cbor_to_json(record).unwrap_or_else(|error| json!({ "$undecodable": error }));
            object.insert("record".into(), record);
        }
        EventBody::RecordDeleted { collection, rkey, prev_cid } => {
            object.insert("collection".into(), json!(collection));
            object.insert("rkey".into(), json!(rkey));
            object.insert("action".into(), json!("delete"));
            object.insert("prev_cid".into(), json!(prev_cid));
        }
        EventBody::Identity { handle } => {
            object.insert("handle".into(), json!(handle));
        }
        EventBody::Account { active, status } => {
            object.insert("active".into(), json!(active));
            object.insert("status".into(), json!(status));
        }
        EventBody::ManifestStored { digest, media_type, size } => {
            object.insert("digest".into(), json!(digest));
            object.insert("media_type".into(), json!(media_type));
            object.insert("size".into(), json!(size));
        }
        EventBody::Resync { reason } | EventBody::IdentityUnresolvable { reason } => {
            object.insert("reason".into(), json!(reason));
        }
        EventBody::HandleChecked { handle, verified, reason } => {
            object.insert("handle".into(), json!(handle));
            object.insert("verified".into(), json!(verified));
            object.insert("reason".into(), json!(reason));
        }
        EventBody::ContentStored { kind, digest, media_type, size, subject } => {
            object.insert("content_kind".into(), json!(kind));
            object.insert("digest".into(), json!(digest));
            object.insert("media_type".into(), json!(media_type));
            object.insert("size".into(), json!(size));
            object.insert("subject".into(), json!(subject));
        }
        EventBody::ContentRejected { kind, digest, subject, reason } => {
            object.insert("content_kind".into(), json!(kind));
            object.insert("digest".into(), json!(digest));
            object.insert("subject".into(), json!(subject));
            object.insert("reason".into(), json!(reason));
        }
        EventBody::IdentityResolved { document_json } => {
            let document = serde_json::from_str(document_json).unwrap_or_else(|_| json!(document_json));
            object.insert("document".into(), document);
        }
    }
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_bytes_use_atproto_json_conventions() {
        // {"a": bytes[1,2], "l": CID link} built with the reference encoder's types.
        let cid: ipld_core::cid::Cid = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm".parse().unwrap();
        let value = Ipld::Map(
            [("a".to_string(), Ipld::Bytes(vec![1, 2])), ("l".to_string(), Ipld::Link(cid))].into_iter().collect(),
        );
        let bytes = serde_ipld_dagcbor::to_vec(&value).unwrap();
        let json = dag_cbor_to_json(&bytes).unwrap();
        assert_eq!(json["a"]["$bytes"], "AQI");
        assert_eq!(json["l"]["$link"], "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(dag_cbor_to_json(&[0xff, 0x00]).is_err());
    }
}
