//! `/install`: how to pull from this registry with docker, podman, nerdctl, skopeo and crane.
//! Every command names the registry by the host the browser used (the request's `Host`, like
//! the pull box on repository pages), so the page is right behind any proxy or port.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};

use super::components::copy_button;
use super::layout::{self, Page, Section};
use super::{html_response, request_host};

/// One client's commands for `reference` (`host/owner/repository:tag`).
pub struct ClientGuide {
    pub client: &'static str,
    pub pull: String,
    /// The same pull when the registry is served over plain HTTP (local or test setups).
    pub plain_http: String,
}

/// The commands of every client the page explains, for `reference` on `host`.
pub fn guides(host: &str, reference: &str) -> Vec<ClientGuide> {
    vec![
        ClientGuide {
            client: "docker",
            pull: format!("docker pull {reference}"),
            plain_http: format!(
                "# /etc/docker/daemon.json: {{ \"insecure-registries\": [\"{host}\"] }}, then\ndocker pull {reference}"
            ),
        },
        ClientGuide {
            client: "podman",
            pull: format!("podman pull {reference}"),
            plain_http: format!("podman pull --tls-verify=false {reference}"),
        },
        ClientGuide {
            client: "nerdctl",
            pull: format!("nerdctl pull {reference}"),
            plain_http: format!("nerdctl pull --insecure-registry {reference}"),
        },
        ClientGuide {
            client: "skopeo",
            pull: format!("skopeo copy docker://{reference} oci:image:latest"),
            plain_http: format!("skopeo copy --src-tls-verify=false docker://{reference} oci:image:latest"),
        },
        ClientGuide {
            client: "crane",
            pull: format!("crane pull {reference} image.tar"),
            plain_http: format!("crane pull --insecure {reference} image.tar"),
        },
    ]
}

pub fn install(host: &str) -> Markup {
    let reference = format!("{host}/OWNER/REPOSITORY:TAG");
    let body = html! {
        div.container.page.install {
            h1 { "Pull from this registry" }
            p {
                "atcr serves every image its users pushed to the AT Protocol through the standard OCI "
                "Distribution API at " code { (host) } ". Pulls are anonymous: no login is needed. Name an "
                "image as " code { (reference) } ", where " code { "OWNER" } " is a handle (" code { "alice.example.com" }
                ") or a DID (" code { "did:plc:…" } "), " code { "REPOSITORY" } " may contain slashes, and "
                code { ":TAG" } " may be " code { "@sha256:…" } " to pull by digest. Every repository page shows "
                "its own pull command; " a href="/search" { "search" } " finds repositories."
            }
            @for guide in guides(host, &reference) {
                section.section aria-labelledby=(format!("client-{}", guide.client)) {
                    h2 #(format!("client-{}", guide.client)) { (guide.client) }
                    div.pull {
                        code { (guide.pull) }
                        (copy_button(&guide.pull, &format!("{} command", guide.client), false))
                    }
                    details {
                        summary { "When the registry is served over plain HTTP" }
                        pre { code { (guide.plain_http) } }
                    }
                }
            }
            section.section aria-labelledby="api" {
                h2 #api { "API" }
                p {
                    "What the pages show is also JSON: " a href="/api/docs" { "the API explorer" } " and "
                    a href="/api/openapi.json" { "its OpenAPI document" } ". "
                    code { "/api/v1/export/DID" } " downloads everything atcr holds about an identity."
                }
            }
        }
    };
    layout::render(Page {
        title: "Install",
        description: "How to pull images from this atcr registry with docker, podman, nerdctl, skopeo and crane.",
        section: Section::Other,
        query: "",
        body,
    })
}

/// `GET /install`.
pub async fn install_page(headers: HeaderMap) -> Response {
    html_response(StatusCode::OK, install(&request_host(&headers)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_pulls_the_reference_from_this_host() {
        let guides = guides("reg.example:5000", "reg.example:5000/alice.test/app:1");
        let clients: Vec<&str> = guides.iter().map(|guide| guide.client).collect();
        assert_eq!(clients, ["docker", "podman", "nerdctl", "skopeo", "crane"]);
        for guide in &guides {
            assert!(guide.pull.starts_with(guide.client), "{}", guide.pull);
            assert!(guide.pull.contains("reg.example:5000/alice.test/app:1"), "{}", guide.pull);
            assert!(guide.plain_http.contains("reg.example:5000"), "{}", guide.plain_http);
        }
    }
}
