//! ATProto JSON → the atproto data model (IPLD), with the data model's rules: the inverse of
//! [`crate::json`]. `{"$link": "<cid>"}` is a link, `{"$bytes": "<base64>"}` a byte string,
//! integers only (no fractional numbers), `$type` a non-empty string where present, blobs
//! (`$type: "blob"`) with `ref`, `mimeType` and an integer `size`.
//!
//! Why it exists: records and test fixtures written as JSON must encode to exactly the DAG-CBOR
//! (and CID) a PDS would produce; the interop data-model vectors check both directions
//! (`storage/tests/interop.rs`).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ipld_core::cid::Cid;
use ipld_core::ipld::Ipld;
use serde_json::Value;

/// Base64 of `$bytes`: standard alphabet, padding optional (atproto writes none).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Integers the data model allows through JSON: JavaScript's safe range.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DataModelError(String);

fn invalid(reason: impl Into<String>) -> DataModelError {
    DataModelError(reason.into())
}

/// A whole record or object: the top level must be an object.
pub fn json_object_to_ipld(value: &Value) -> Result<Ipld, DataModelError> {
    if !value.is_object() {
        return Err(invalid("top level is not an object"));
    }
    json_to_ipld(value)
}

/// Any ATProto JSON value.
pub fn json_to_ipld(value: &Value) -> Result<Ipld, DataModelError> {
    Ok(match value {
        Value::Null => Ipld::Null,
        Value::Bool(value) => Ipld::Bool(*value),
        Value::Number(number) => {
            if let Some(integer) = number.as_i64() {
                Ipld::Integer(i128::from(integer))
            } else if let Some(integer) = number.as_u64() {
                Ipld::Integer(i128::from(integer))
            } else {
                // A JSON number with a fraction part of zero (`123.0`) is the integer it names.
                let float = number.as_f64().unwrap_or(f64::NAN);
                if float.fract() != 0.0 || float.abs() > MAX_SAFE_INTEGER {
                    return Err(invalid(format!("{number} is not an integer (the data model has no floats)")));
                }
                Ipld::Integer(float as i128)
            }
        }
        Value::String(text) => Ipld::String(text.clone()),
        Value::Array(items) => Ipld::List(items.iter().map(json_to_ipld).collect::<Result<_, _>>()?),
        Value::Object(object) => {
            if let Some(link) = object.get("$link") {
                if object.len() != 1 {
                    return Err(invalid("$link object has other fields"));
                }
                let Value::String(link) = link else {
                    return Err(invalid("$link is not a string"));
                };
                let cid: Cid =
                    link.parse().map_err(|error| invalid(format!("$link {link:?} is not a CID: {error}")))?;
                return Ok(Ipld::Link(cid));
            }
            if let Some(bytes) = object.get("$bytes") {
                if object.len() != 1 {
                    return Err(invalid("$bytes object has other fields"));
                }
                let Value::String(bytes) = bytes else {
                    return Err(invalid("$bytes is not a string"));
                };
                let decoded =
                    BASE64.decode(bytes).map_err(|error| invalid(format!("$bytes is not base64: {error}")))?;
                return Ok(Ipld::Bytes(decoded));
            }
            match object.get("$type") {
                None => {}
                Some(Value::String(kind)) if kind == "blob" => check_blob(object)?,
                Some(Value::String(kind)) if !kind.is_empty() => {}
                Some(other) => return Err(invalid(format!("$type {other} is not a non-empty string"))),
            }
            let mut map = BTreeMap::new();
            for (key, value) in object {
                map.insert(key.clone(), json_to_ipld(value)?);
            }
            Ipld::Map(map)
        }
    })
}

fn check_blob(object: &serde_json::Map<String, Value>) -> Result<(), DataModelError> {
    match object.get("ref") {
        Some(Value::Object(reference)) if reference.contains_key("$link") => {}
        _ => return Err(invalid("blob has no ref link")),
    }
    if !matches!(object.get("mimeType"), Some(Value::String(_))) {
        return Err(invalid("blob has no mimeType string"));
    }
    if !object.get("size").is_some_and(|size| size.is_i64() || size.is_u64()) {
        return Err(invalid("blob size is not an integer"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_links_and_bytes_and_refuses_floats() {
        let value = json!({"a": {"$link": "bafyreidfayvfuwqa7qlnopdjiqrxzs6blmoeu4rujcjtnci5beludirz2a"}, "b": {"$bytes": "AQID"}, "n": 3.0});
        let ipld = json_object_to_ipld(&value).unwrap();
        let back = crate::json::ipld_to_json(ipld);
        assert_eq!(back, json!({"a": value["a"], "b": {"$bytes": "AQID"}, "n": 3}));
        assert!(json_object_to_ipld(&json!({"n": 1.5})).is_err());
        assert!(json_object_to_ipld(&json!("text")).is_err());
    }
}
