//! Layers of an image on its manifest page (build history with empty layers marked, platform
//! and runtime details, layer sizes and sharing, per-layer file changes when deep inspection
//! read them, the compression ratio), the network-wide layer dedup page `/layers`, and their
//! JSON: `/api/v1/layers/{owner}/{repository…}/{reference}` and `/api/v1/layers/dedup`.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use maud::{Markup, html};

use atcr_query::layers::{DedupSummary, ImageLayers, LayerDetail, LayersError, LayersQuery};

use super::components::{RenderContext, digest_with_copy};
use super::format::{human_size, short_digest, thousands, time_element};
use super::layout::{Page, Section, render};
use super::{error_page, html_response, security_headers};
use crate::api::{ApiPath, ErrorBody};
use crate::{ApiError, AppState};

/// At most this many file changes are listed per layer on the page (the JSON has them all).
const PAGE_CHANGES: usize = 500;

pub fn routes() -> Router<AppState> {
    let pages = Router::new().route("/layers", get(dedup_page)).layer(axum::middleware::from_fn(security_headers));
    Router::new()
        .merge(pages)
        .route("/api/v1/layers/dedup", get(api_dedup))
        .route("/api/v1/layers/{owner}/{*rest}", get(api_image_layers))
}

pub(crate) fn layers_query(state: &AppState) -> Option<LayersQuery> {
    state.registry.clone().map(LayersQuery::new)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LayersError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            tracing::error!(%error, "layers query failed");
            Err(error.to_string())
        }
        Err(error) => {
            tracing::error!(%error, "layers task failed");
            Err(error.to_string())
        }
    }
}

/// The layers section of a manifest page; `None` for an index, an unknown manifest, or a
/// failed read (the rest of the page still renders).
pub(crate) async fn manifest_section(
    state: &AppState,
    owner: &str,
    repository: &str,
    digest: &str,
    context: &RenderContext,
) -> Option<Markup> {
    let query = layers_query(state)?;
    let (owner_arg, repository_arg, digest_arg) = (owner.to_string(), repository.to_string(), digest.to_string());
    let layers = blocking(move || query.image_layers(&owner_arg, &repository_arg, &digest_arg)).await.ok()??;
    Some(section(&layers, context))
}

fn status_text(status: &str, reason: Option<&str>) -> Markup {
    html! {
        @match status {
            "stored" => { "inspected" },
            "rejected" => { span.badge { "not inspected" } " " span.muted { (reason.unwrap_or("")) } },
            "pending" => { span.muted { "not fetched yet" } },
            _ => { span.muted { "not inspected" } },
        }
    }
}

fn ratio(value: f64) -> String {
    format!("{value:.2}×")
}

/// The layers part of a manifest page.
pub fn section(layers: &ImageLayers, context: &RenderContext) -> Markup {
    let total: u64 = layers.layers.iter().filter_map(|layer| layer.size).sum();
    html! {
        section.section #image-platform aria-labelledby="platform-title" {
            h2 #platform-title { "Platform and runtime" }
            @match layers.config.status.as_str() {
                "stored" => {},
                "rejected" => { p { span.badge { "config unreadable" } " " (layers.config.reason.as_deref().unwrap_or("")) } },
                "none" => { p.muted { "This manifest has no image config." } },
                _ => { p.muted { "The image config has not been fetched from the hold yet." } },
            }
            @if let Some(platform) = &layers.platform {
                dl.facts.wide {
                    @if let Some(os) = &platform.os { dt { "OS" } dd { (os) } }
                    @if let Some(architecture) = &platform.architecture { dt { "Architecture" } dd { (architecture) } }
                    @if let Some(variant) = &platform.variant { dt { "Variant" } dd { (variant) } }
                    @if let Some(version) = &platform.os_version { dt { "OS version" } dd { (version) } }
                    @if !platform.os_features.is_empty() { dt { "OS features" } dd { (platform.os_features.join(", ")) } }
                    @if let Some(created) = &layers.created { dt { "Built" } dd { (time_element(created, context.now)) } }
                    @if let Some(author) = &layers.author { dt { "Author" } dd { (author) } }
                    @if let Some(runtime) = &layers.runtime {
                        @if !runtime.entrypoint.is_empty() { dt { "Entrypoint" } dd { code.break { (shell_words(&runtime.entrypoint)) } } }
                        @if !runtime.cmd.is_empty() { dt { "Command" } dd { code.break { (shell_words(&runtime.cmd)) } } }
                        @if let Some(dir) = &runtime.working_dir { dt { "Working dir" } dd { code { (dir) } } }
                        @if let Some(user) = &runtime.user { dt { "User" } dd { code { (user) } } }
                        @if !runtime.exposed_ports.is_empty() { dt { "Exposed ports" } dd { (runtime.exposed_ports.join(", ")) } }
                        @if !runtime.volumes.is_empty() { dt { "Volumes" } dd { (runtime.volumes.join(", ")) } }
                        @if let Some(signal) = &runtime.stop_signal { dt { "Stop signal" } dd { (signal) } }
                        @if !runtime.env.is_empty() {
                            dt { "Environment" }
                            dd { ul.plain { @for variable in &runtime.env { li { code.break { (variable) } } } } }
                        }
                        @if !runtime.labels.is_empty() {
                            dt { "Labels" }
                            dd { ul.plain { @for (name, value) in &runtime.labels { li { code.break { (name) "=" (value) } } } } }
                        }
                    }
                }
            }
        }
        @if !layers.history.is_empty() {
            section.section #build-history aria-labelledby="history-title" {
                h2 #history-title { "Build history" span.muted { " (" (layers.history.len()) " steps)" } }
                div.table-wrap { table.data {
                    thead { tr {
                        th scope="col" class="num" { "#" }
                        th scope="col" { "Step" }
                        th scope="col" { "Layer" }
                        th scope="col" class="num" { "Size" }
                    } }
                    tbody {
                        @for (index, step) in layers.history.iter().enumerate() {
                            tr {
                                td.num { (index + 1) }
                                td {
                                    code.break { (step.created_by.as_deref().unwrap_or("—")) }
                                    @if let Some(comment) = &step.comment { br; span.muted { (comment) } }
                                }
                                td {
                                    @match step.layer {
                                        Some(layer) => { "layer " (layer + 1) },
                                        None => { span.badge { "empty layer" } },
                                    }
                                }
                                td.num {
                                    @if let Some(size) = step.layer.and_then(|layer| layers.layers.get(layer)).and_then(|layer| layer.size) { (human_size(size)) }
                                }
                            }
                        }
                    }
                } }
            }
        }
        section.section #layer-details aria-labelledby="layer-details-title" {
            h2 #layer-details-title { "Layer details" span.muted { " (" (layers.layers.len()) ", " (human_size(total)) ")" } }
            p #layer-dedup {
                (layers.dedup.shared_layers) " of " (layers.dedup.layers) " layers are shared with other images ("
                (human_size(layers.dedup.shared_bytes)) " stored once for all of them); "
                (layers.dedup.cross_repository_layers) " are used in other repositories too. "
                a href="/layers" { "Network-wide layer sharing" }
            }
            @if !layers.changes_complete {
                p.muted { "Some lower layers were not inspected: files listed as added may modify them." }
            }
            @for layer in &layers.layers { (layer_block(layer)) }
        }
    }
}

fn layer_block(layer: &LayerDetail) -> Markup {
    let count = |change: &str| layer.changes.iter().filter(|entry| entry.change == change).count();
    html! {
        // Small change lists start open, so the page shows them without a click.
        details.layer id=(format!("layer-{}", layer.index + 1)) open[layer.inspection.status == "stored" && layer.changes.len() <= 40] {
            summary {
                "Layer " (layer.index + 1) " · " code title=(layer.digest) { (short_digest(&layer.digest)) }
                " · " (layer.size.map(human_size).unwrap_or_else(|| "size unknown".into()))
                @if let Some(ratio_value) = layer.compression_ratio { " · compression " (ratio(ratio_value)) }
                @if layer.used_by_manifests > 1 { " · " span.badge { "shared by " (layer.used_by_manifests) " images" } }
                @if layer.inspection.status == "rejected" { " · " span.badge { "not inspected" } }
            }
            dl.facts.wide {
                dt { "Digest" } dd { (digest_with_copy(&layer.digest)) }
                @if let Some(media_type) = &layer.media_type { dt { "Media type" } dd { code.break { (media_type) } } }
                @if let Some(step) = &layer.created_by { dt { "Created by" } dd { code.break { (step) } } }
                dt { "Used by" } dd { (plural(layer.used_by_manifests, "image", "images")) " in " (plural(layer.used_by_repositories, "repository", "repositories")) }
                dt { "Files" } dd { (status_text(&layer.inspection.status, layer.inspection.reason.as_deref())) }
                @if let (Some(uncompressed), Some(compression)) = (layer.uncompressed_size, &layer.compression) {
                    dt { "Uncompressed" } dd { (human_size(uncompressed)) " (" (compression) ")" }
                }
                @if let Some(ratio_value) = layer.compression_ratio { dt { "Compression ratio" } dd.ratio { (ratio(ratio_value)) } }
            }
            @if layer.inspection.status == "stored" {
                p.muted {
                    (count("added")) " added, " (count("modified")) " modified, " (count("deleted")) " deleted"
                    @if count("opaque") > 0 { ", " (count("opaque")) " opaque directories" }
                }
                @if !layer.changes.is_empty() {
                    div.table-wrap { table.data.files {
                        thead { tr {
                            th scope="col" { "Change" }
                            th scope="col" { "Path" }
                            th scope="col" { "Kind" }
                            th scope="col" class="num" { "Size" }
                        } }
                        tbody {
                            @for change in layer.changes.iter().take(PAGE_CHANGES) {
                                tr data-change=(change.change) {
                                    td { span.badge { (change.change) } }
                                    td { code.break { "/" (change.path) } }
                                    td { (change.kind) }
                                    td.num { @if change.kind == "file" && change.change != "deleted" { (human_size(change.size)) } }
                                }
                            }
                        }
                    } }
                    @if layer.changes.len() > PAGE_CHANGES {
                        p.muted { (layer.changes.len() - PAGE_CHANGES) " more changes are in the JSON API." }
                    }
                }
                @if layer.truncated > 0 { p.muted { (thousands(layer.truncated)) " entries were not listed (over the list's cap)." } }
            }
        }
    }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// `["sh", "-c", "x y"]` → `sh -c "x y"` (for reading, not for pasting into a shell).
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(
            |word| {
                if word.is_empty() || word.contains(char::is_whitespace) { format!("{word:?}") } else { word.clone() }
            },
        )
        .collect::<Vec<_>>()
        .join(" ")
}

fn dedup_body(summary: &DedupSummary) -> Markup {
    html! {
        div.container {
            h1 { "Layer sharing" }
            p.muted { "Layers shared between images are stored once by the holds that keep them. Counted over every image manifest atcr knows." }
            dl.facts #dedup-totals {
                dt { "Distinct layers" } dd { (thousands(summary.layers)) }
                dt { "Layer references" } dd { (thousands(summary.references)) }
                dt { "Shared by more than one image" } dd { (thousands(summary.shared_layers)) }
                dt { "Used in more than one repository" } dd { (thousands(summary.cross_repository_layers)) }
                dt { "Bytes referenced" } dd { (human_size(summary.referenced_bytes)) }
                dt { "Bytes stored once" } dd { (human_size(summary.stored_bytes)) }
                dt { "Bytes saved by sharing" } dd #bytes-saved { (human_size(summary.bytes_saved)) }
            }
            @if !summary.top.is_empty() {
                h2 { "Most shared layers" }
                div.table-wrap { table.data {
                    thead { tr {
                        th scope="col" { "Layer" }
                        th scope="col" class="num" { "Size" }
                        th scope="col" class="num" { "Images" }
                        th scope="col" class="num" { "Repositories" }
                    } }
                    tbody {
                        @for layer in &summary.top {
                            tr {
                                th scope="row" { code title=(layer.digest) { (short_digest(&layer.digest)) } }
                                td.num { (human_size(layer.size)) }
                                td.num { (layer.manifests) }
                                td.num { (layer.repositories) }
                            }
                        }
                    }
                } }
            }
        }
    }
}

async fn dedup_page(State(state): State<AppState>) -> Response {
    let Some(query) = layers_query(&state) else {
        return error_page(StatusCode::SERVICE_UNAVAILABLE, "Layer statistics are not available on this server.");
    };
    match blocking(move || query.dedup_summary()).await {
        Ok(summary) => html_response(
            StatusCode::OK,
            render(Page {
                title: "Layer sharing",
                description: "How many container image layers are shared across images and repositories.",
                section: Section::Other,
                query: "",
                body: dedup_body(&summary),
            }),
        ),
        Err(_) => error_page(StatusCode::INTERNAL_SERVER_ERROR, "This page could not be built. Try again in a moment."),
    }
}

/// `GET /api/v1/layers/{owner}/{repository…}/{reference}`: an image's layers.
#[utoipa::path(get, path = "/api/v1/layers/{owner}/{repository}/{reference}", tag = "registry", summary = "An image's build history, platform, layers and file changes",
    params(
        ("owner" = String, Path, example = "alice.test", description = "A handle or a DID"),
        ("repository" = String, Path, example = "hello", description = "The repository name; may contain `/` (sent unescaped)"),
        ("reference" = String, Path, example = "latest", description = "A digest (`sha256:…`) or a tag"),
    ),
    responses(
        (status = 200, description = "The image's config details, history and layers (file changes when deep inspection read them)", body = ImageLayers),
        (status = 404, description = "No such image manifest (or it is an index)", body = ErrorBody),
        (status = 503, description = "The registry views are not configured", body = ErrorBody),
    ))]
pub(crate) async fn api_image_layers(
    State(state): State<AppState>,
    ApiPath((owner, rest)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let query =
        layers_query(&state).ok_or_else(|| ApiError::unavailable("the registry is not available on this server"))?;
    let rest = rest.trim_end_matches('/');
    let Some((repository, reference)) =
        rest.rsplit_once('/').filter(|(repository, reference)| !repository.is_empty() && !reference.is_empty())
    else {
        return Err(ApiError::not_found("a layers path is {owner}/{repository}/{digest or tag}"));
    };
    let (lookup_owner, lookup_repository, lookup_reference) =
        (owner.clone(), repository.to_string(), reference.to_string());
    match blocking(move || query.image_layers(&lookup_owner, &lookup_repository, &lookup_reference))
        .await
        .map_err(|_| ApiError::internal("layers query failed"))?
    {
        Some(layers) => Ok(axum::Json(layers).into_response()),
        None => Err(ApiError::not_found(format!("no image manifest {reference} in {owner}/{repository}"))),
    }
}

/// `GET /api/v1/layers/dedup`: layer sharing over every manifest.
#[utoipa::path(get, path = "/api/v1/layers/dedup", tag = "registry", summary = "Layer sharing across images and repositories",
    responses(
        (status = 200, description = "Distinct layers, references, shared layers and bytes saved", body = DedupSummary),
        (status = 503, description = "The registry views are not configured", body = ErrorBody),
    ))]
pub(crate) async fn api_dedup(State(state): State<AppState>) -> Result<Response, ApiError> {
    let query =
        layers_query(&state).ok_or_else(|| ApiError::unavailable("the registry is not available on this server"))?;
    let summary =
        blocking(move || query.dedup_summary()).await.map_err(|_| ApiError::internal("layers query failed"))?;
    Ok(axum::Json(summary).into_response())
}
