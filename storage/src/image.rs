//! OCI image configs and the layer file lists enrichment derives, as kept in the content store.
//!
//! Both are read tolerantly: an image config is the OCI image spec's `application/vnd.oci.image.config.v1+json`
//! (or Docker's `application/vnd.docker.container.image.v1+json`, the same shape), and every field
//! but the top-level object may be missing or `null`, as real configs from old builders have it.
//! Enrichment refuses bytes that are not a JSON object of this shape; projections and queries
//! then read the stored bytes without the network.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// The content kind of an image config (`ContentStored::kind`); its subject is the manifest digest.
pub const IMAGE_CONFIG_KIND: &str = "image.config";
/// The content kind of a layer's derived file list; its subject is the layer digest.
pub const LAYER_FILES_KIND: &str = "layer.files";
/// The media type of a stored layer file list ([`LayerFiles`] as JSON).
pub const LAYER_FILES_MEDIA_TYPE: &str = "application/vnd.atcr.layer.files.v1+json";

/// `null` reads as the default (Docker writes `"Env": null`, `"history": null`).
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, deserialize_with = "null_default")]
    pub created: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub author: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub os: Option<String>,
    #[serde(default, rename = "os.version", deserialize_with = "null_default")]
    pub os_version: Option<String>,
    #[serde(default, rename = "os.features", deserialize_with = "null_default")]
    pub os_features: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub variant: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub config: RuntimeConfig,
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
    #[serde(default, deserialize_with = "null_default")]
    pub history: Vec<HistoryEntry>,
}

/// The `config` object: how a container of the image runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default, rename = "User", deserialize_with = "null_default")]
    pub user: Option<String>,
    #[serde(default, rename = "ExposedPorts", deserialize_with = "null_default")]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(default, rename = "Env", deserialize_with = "null_default")]
    pub env: Vec<String>,
    #[serde(default, rename = "Entrypoint", deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, rename = "Cmd", deserialize_with = "null_default")]
    pub cmd: Vec<String>,
    #[serde(default, rename = "Volumes", deserialize_with = "null_default")]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(default, rename = "WorkingDir", deserialize_with = "null_default")]
    pub working_dir: Option<String>,
    #[serde(default, rename = "Labels", deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, rename = "StopSignal", deserialize_with = "null_default")]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(default, rename = "type", deserialize_with = "null_default")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<String>,
}

/// One build step. Steps with `empty_layer` produced no layer; the others map, in order, to
/// the manifest's layers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(default, deserialize_with = "null_default")]
    pub created: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub created_by: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub author: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub comment: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub empty_layer: bool,
}

impl ImageConfig {
    /// Parses config bytes; an error names what is wrong (for the quarantine reason).
    pub fn parse(bytes: &[u8]) -> Result<ImageConfig, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|error| format!("image config is not JSON: {error}"))?;
        if !value.is_object() {
            return Err("image config is not a JSON object".into());
        }
        serde_json::from_value(value).map_err(|error| format!("image config is malformed: {error}"))
    }
}

/// What a layer tarball holds, derived by enrichment's deep inspection (the bytes themselves are
/// never kept). Entries are in archive order; whiteouts are kept as entries with their
/// [`FileKind`] so the change against lower layers can be computed per image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerFiles {
    /// The layer's digest (the compressed blob's).
    pub layer: String,
    /// `gzip`, `zstd` or `none`.
    pub compression: String,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub entries: Vec<LayerEntry>,
    /// Entries past the list's cap, counted but not listed.
    #[serde(default)]
    pub truncated: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerEntry {
    /// Normalized: no leading `./` or `/`, no trailing `/`. For a whiteout, the path it deletes
    /// (`a/.wh.b` → `a/b`); for an opaque marker, its directory.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Hardlink,
    Other,
    /// `.wh.<name>`: deletes `<name>` of the lower layers.
    Whiteout,
    /// `.wh..wh..opq`: the directory's lower contents are hidden.
    OpaqueDirectory,
}

impl LayerFiles {
    /// Uncompressed over compressed size, when both are known and non-zero.
    pub fn compression_ratio(&self) -> Option<f64> {
        (self.compressed_size > 0 && self.uncompressed_size > 0)
            .then(|| self.uncompressed_size as f64 / self.compressed_size as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_with_nulls_and_missing_fields_parse() {
        let config = ImageConfig::parse(
            br#"{"architecture":"arm64","os":"linux","variant":"v8","os.version":"10.0",
                "config":{"Env":null,"Cmd":["sh"],"Labels":{"a":"b"},"ExposedPorts":{"80/tcp":{}}},
                "history":[{"created_by":"/bin/sh -c #(nop) CMD [\"sh\"]","empty_layer":true},{"created_by":"ADD x /"}]}"#,
        )
        .unwrap();
        assert_eq!(config.architecture.as_deref(), Some("arm64"));
        assert_eq!(config.os_version.as_deref(), Some("10.0"));
        assert!(config.config.env.is_empty());
        assert_eq!(config.config.cmd, vec!["sh"]);
        assert_eq!(config.history.len(), 2);
        assert!(config.history[0].empty_layer && !config.history[1].empty_layer);
        assert_eq!(ImageConfig::parse(b"{}").unwrap(), ImageConfig::default());
        assert!(ImageConfig::parse(b"[1]").unwrap_err().contains("not a JSON object"));
        assert!(ImageConfig::parse(b"{\"history\":7}").unwrap_err().contains("malformed"));
        assert!(ImageConfig::parse(b"\x89PNG").unwrap_err().contains("not JSON"));
    }
}
