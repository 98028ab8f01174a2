//! The OCI Distribution pull API under `/v2`, answered from projections and the content
//! store. No handler here performs network I/O: manifests come from local bytes, blobs are
//! redirected to their hold (or streamed from a hold atcr serves itself).
//!
//! Names are `<handle or DID>/<repository>` and repositories may contain `/`, so routing is
//! done here on the path after `/v2/`, by its last `/manifests/`, `/blobs/`, `/referrers/` or
//! `/tags/list` segment.

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tower::ServiceExt;

use atcr_query::{BlobMethod, BlobServe, RegistryError, RegistryQuery};

use crate::AppState;

const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");
/// Page size when the client gives none, and the most we return.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

/// An OCI error response: `{"errors":[{"code","message","detail"}]}`.
pub struct OciError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl OciError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        OciError { status, code, message: message.into() }
    }
}

impl From<RegistryError> for OciError {
    fn from(error: RegistryError) -> Self {
        let message = error.to_string();
        match error {
            RegistryError::NameInvalid(_) => OciError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", message),
            RegistryError::NameUnknown(_) => OciError::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", message),
            RegistryError::ManifestUnknown(_) => OciError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message),
            RegistryError::BlobUnknown(_) => OciError::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", message),
            RegistryError::DigestInvalid(_) => OciError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message),
            RegistryError::TagInvalid(_) => OciError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", message),
            RegistryError::Internal(_) => {
                tracing::error!(%message, "registry query failed");
                OciError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
            }
        }
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let body = json!({ "errors": [{ "code": self.code, "message": self.message, "detail": null }] });
        (self.status, [API_VERSION], axum::Json(body)).into_response()
    }
}

/// `GET /v2/`: the API version check every client starts with.
pub async fn base() -> Response {
    (StatusCode::OK, [API_VERSION], axum::Json(json!({}))).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct Params {
    n: Option<String>,
    last: Option<String>,
    #[serde(rename = "artifactType")]
    artifact_type: Option<String>,
}

enum Route<'a> {
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Upload,
    Tags { name: &'a str },
    Referrers { name: &'a str, digest: &'a str },
    Catalog,
}

fn route(path: &str) -> Option<Route<'_>> {
    if path == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some(Route::Tags { name });
    }
    if path.contains("/blobs/uploads") {
        return Some(Route::Upload);
    }
    for (marker, kind) in [("/manifests/", 0), ("/blobs/", 1), ("/referrers/", 2)] {
        if let Some(at) = path.rfind(marker) {
            let (name, rest) = (&path[..at], &path[at + marker.len()..]);
            return Some(match kind {
                0 => Route::Manifest { name, reference: rest },
                1 => Route::Blob { name, digest: rest },
                _ => Route::Referrers { name, digest: rest },
            });
        }
    }
    None
}

/// Runs a registry query on the blocking pool (redb reads and file reads may block).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, OciError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(OciError::from),
        Err(error) => Err(OciError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", error.to_string())),
    }
}

fn page_size(params: &Params) -> Result<usize, OciError> {
    match &params.n {
        None => Ok(DEFAULT_PAGE),
        Some(n) => match n.parse::<usize>() {
            Ok(n) => Ok(n.min(MAX_PAGE)),
            Err(_) => Err(OciError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("n={n:?} is not a number"),
            )),
        },
    }
}

fn link_header(path: &str, n: usize, last: &str) -> HeaderValue {
    let last: String = last
        .bytes()
        .flat_map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => vec![byte as char],
            other => format!("%{other:02X}").chars().collect(),
        })
        .collect();
    HeaderValue::from_str(&format!("<{path}?n={n}&last={last}>; rel=\"next\""))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Every `/v2/<…>` request.
pub async fn dispatch(State(state): State<AppState>, Query(params): Query<Params>, request: Request) -> Response {
    let path = request.uri().path().trim_start_matches("/v2/").to_string();
    match handle(&state, &params, &path, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn handle(state: &AppState, params: &Params, path: &str, request: Request) -> Result<Response, OciError> {
    let Some(registry) = state.registry.clone() else {
        return Err(OciError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "the registry views are not configured",
        ));
    };
    if path.split('/').any(|segment| segment == ".." || segment == ".") || path.contains('\\') {
        return Err(OciError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", "path traversal is not a repository name"));
    }
    let method = request.method().clone();
    let read_only = method == Method::GET || method == Method::HEAD;
    let route = route(path)
        .ok_or_else(|| OciError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no such endpoint /v2/{path}")))?;
    if matches!(route, Route::Upload) || !read_only {
        return Err(OciError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "atcr is a read-only AppView: push images to your PDS and hold with the ATCR credential helper",
        ));
    }
    let head = method == Method::HEAD;
    match route {
        Route::Catalog => {
            let n = page_size(params)?;
            let last = params.last.clone();
            let (names, more) = blocking(move || registry.catalog(last.as_deref(), n)).await?;
            let mut headers = HeaderMap::new();
            if more && let Some(last) = names.last() {
                headers.insert(header::LINK, link_header("/v2/_catalog", n, last));
            }
            Ok((headers, [API_VERSION], axum::Json(json!({ "repositories": names }))).into_response())
        }
        Route::Tags { name } => {
            let n = page_size(params)?;
            let (name, last) = (name.to_string(), params.last.clone());
            let (repository, tags, more) = blocking(move || {
                let repository = registry.resolve(&name)?;
                let (tags, more) = registry.tags(&repository, last.as_deref(), n)?;
                Ok((repository, tags, more))
            })
            .await?;
            let mut headers = HeaderMap::new();
            if more && let Some(last) = tags.last() {
                headers.insert(header::LINK, link_header(&format!("/v2/{}/tags/list", repository.name), n, last));
            }
            Ok((headers, [API_VERSION], axum::Json(json!({ "name": repository.name, "tags": tags }))).into_response())
        }
        Route::Manifest { name, reference } => {
            let response = manifest(registry, name, reference, head).await?;
            // A pull is a successful manifest GET; counted off the request path (the pull log).
            if !head && let Some(counter) = state.browse.as_ref().and_then(|browse| browse.pull_counter()) {
                counter.record(name);
            }
            Ok(response)
        }
        Route::Referrers { name, digest } => {
            let (name, digest, wanted) = (name.to_string(), digest.to_string(), params.artifact_type.clone());
            let filtered = wanted.is_some();
            let index = blocking(move || {
                let repository = registry.resolve(&name)?;
                registry.referrers(&repository, &digest, wanted.as_deref())
            })
            .await?;
            let mut response =
                ([(header::CONTENT_TYPE, "application/vnd.oci.image.index.v1+json")], [API_VERSION], index.to_string())
                    .into_response();
            if filtered {
                response.headers_mut().insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
            }
            Ok(response)
        }
        Route::Blob { name, digest } => blob(registry, name, digest, request).await,
        Route::Upload => unreachable!("answered above"),
    }
}

async fn manifest(registry: RegistryQuery, name: &str, reference: &str, head: bool) -> Result<Response, OciError> {
    // The hot path: an answer cached for the current views, no storage read, no thread hop.
    let manifest = match registry.cached_manifest(name, reference) {
        Some(manifest) => manifest,
        None => {
            let (name, reference) = (name.to_string(), reference.to_string());
            blocking(move || registry.manifest_by_name(&name, &reference)).await?
        }
    };
    let mut headers = HeaderMap::new();
    let content_type =
        HeaderValue::from_str(&manifest.media_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(
        "docker-content-digest",
        HeaderValue::from_str(&manifest.digest).unwrap_or(HeaderValue::from_static("")),
    );
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{}\"", manifest.digest)).unwrap_or(HeaderValue::from_static("")),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(manifest.bytes.len()));
    headers.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
    let body = if head { Body::empty() } else { Body::from(bytes_of(&manifest.bytes)) };
    Ok((StatusCode::OK, headers, body).into_response())
}

fn bytes_of(bytes: &std::sync::Arc<[u8]>) -> axum::body::Bytes {
    axum::body::Bytes::from_owner(ArcBytes(bytes.clone()))
}

/// Lets the cached manifest bytes be sent without copying.
struct ArcBytes(std::sync::Arc<[u8]>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

async fn blob(registry: RegistryQuery, name: &str, digest: &str, request: Request) -> Result<Response, OciError> {
    let (name, digest) = (name.to_string(), digest.to_string());
    let method = if request.method() == Method::HEAD { BlobMethod::Head } else { BlobMethod::Get };
    let serve = blocking(move || {
        let repository = registry.resolve(&name)?;
        registry.serve_blob(&repository, &digest, method)
    })
    .await?;
    match serve {
        BlobServe::Redirect { url, digest } => {
            let location = HeaderValue::from_str(&url).map_err(|_| {
                OciError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "hold URL is not a valid header")
            })?;
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, location);
            // The target may be a presigned URL that expires: never let a cache keep it.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(
                "docker-content-digest",
                HeaderValue::from_str(&digest).unwrap_or(HeaderValue::from_static("")),
            );
            Ok((StatusCode::TEMPORARY_REDIRECT, headers, [API_VERSION]).into_response())
        }
        BlobServe::File { path, digest } => {
            let mut response = tower_http::services::ServeFile::new_with_mime(&path, &mime_octet_stream())
                .oneshot(request)
                .await
                .map_err(|error| OciError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", error.to_string()))?
                .map(Body::new);
            let headers = response.headers_mut();
            headers.insert(
                "docker-content-digest",
                HeaderValue::from_str(&digest).unwrap_or(HeaderValue::from_static("")),
            );
            headers.insert(API_VERSION.0, HeaderValue::from_static(API_VERSION.1));
            Ok(response)
        }
    }
}

fn mime_octet_stream() -> mime::Mime {
    mime::APPLICATION_OCTET_STREAM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_at_the_last_marker() {
        assert!(matches!(
            route("alice.test/web/app/manifests/latest"),
            Some(Route::Manifest { name: "alice.test/web/app", reference: "latest" })
        ));
        assert!(matches!(
            route("alice.test/manifests/x/manifests/v1"),
            Some(Route::Manifest { name: "alice.test/manifests/x", reference: "v1" })
        ));
        assert!(matches!(
            route("a.test/b/blobs/sha256:ab"),
            Some(Route::Blob { name: "a.test/b", digest: "sha256:ab" })
        ));
        assert!(matches!(route("a.test/b/blobs/uploads/"), Some(Route::Upload)));
        assert!(matches!(route("a.test/b/tags/list"), Some(Route::Tags { name: "a.test/b" })));
        assert!(matches!(route("_catalog"), Some(Route::Catalog)));
        assert!(route("a.test/b/other").is_none());
    }

    #[test]
    fn link_headers_escape_the_last_name() {
        let value = link_header("/v2/_catalog", 2, "alice.test/web app");
        assert_eq!(value.to_str().unwrap(), "</v2/_catalog?n=2&last=alice.test%2Fweb%20app>; rel=\"next\"");
    }
}
