//! Real OCI clients driven by the pull tests: skopeo, podman (vfs storage) and the Rust
//! `oci-client` crate. Each answers the digest it pulled, so tests compare with what was pushed.

#![allow(dead_code)] // each test binary uses the clients it needs

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// True when the tool runs; otherwise prints the SKIP line for that part of a test.
pub fn has_tool(name: &str) -> bool {
    let found = Command::new(name).arg("--version").output().is_ok_and(|output| output.status.success());
    if !found {
        println!("SKIP ({name} part): {name} not installed (fixtures/test-all.sh installs it)");
    }
    found
}

/// The digest an OCI layout's index names first.
pub fn layout_digest(layout: &Path) -> String {
    let index: Value = serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_string()
}

/// `skopeo copy docker://<reference> oci:<layout>` (every platform with `all`); the digest.
pub fn skopeo_pull(reference: &str, layout: &Path, all: bool) -> String {
    std::fs::create_dir_all(layout.parent().unwrap()).unwrap();
    let mut command = Command::new("skopeo");
    // Go programs choke on this machine's AWS_CA_BUNDLE.
    command.args(["copy", "--src-tls-verify=false"]).env_remove("AWS_CA_BUNDLE");
    if all {
        command.arg("--all");
    }
    let output =
        command.arg(format!("docker://{reference}")).arg(format!("oci:{}:pulled", layout.display())).output().unwrap();
    assert!(output.status.success(), "skopeo copy {reference}: {}", String::from_utf8_lossy(&output.stderr));
    layout_digest(layout)
}

/// `podman pull` into a store of its own (vfs driver), then the digest podman recorded.
pub fn podman_pull(store: &Path, reference: &str) -> String {
    let run = |args: &[&str]| {
        let output = Command::new("podman")
            .args(["--storage-driver", "vfs", "--root"])
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .args(args)
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .unwrap();
        assert!(output.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    run(&["pull", "--tls-verify=false", reference]);
    run(&["image", "inspect", "--format", "{{.Digest}}", reference])
}

/// The Rust OCI client: the manifest's digest; for an image, every blob's bytes are checked
/// against their digests.
pub async fn oci_client_pull(reference: &str) -> String {
    use oci_client::client::{ClientConfig, ClientProtocol};
    use oci_client::manifest::OciManifest;
    use oci_client::secrets::RegistryAuth;
    use oci_client::{Client, Reference};

    #[allow(deprecated)] // ring: see src/main.rs
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::new(ClientConfig { protocol: ClientProtocol::Http, ..ClientConfig::default() });
    let parsed: Reference = reference.parse().unwrap();
    let (manifest, digest) = client.pull_manifest(&parsed, &RegistryAuth::Anonymous).await.unwrap();
    if let OciManifest::Image(image) = manifest {
        for descriptor in image.layers.iter().chain(std::iter::once(&image.config)) {
            let mut bytes = Vec::new();
            client.pull_blob(&parsed, descriptor, &mut bytes).await.unwrap();
            assert_eq!(atcr_storage::content::sha256_digest(&bytes), descriptor.digest, "{reference}: blob bytes");
        }
    }
    digest
}
