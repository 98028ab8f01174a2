//! atcr-web: everything atcr serves over HTTP.
//!
//! - the web UI ([`ui`]): `/` home, `/search`, `/u/…` users, `/r/…` repositories, tags and
//!   manifests, `/status` (what was ingested, cursors, quarantine), `/static/…` assets;
//! - `/healthz`, `/metrics` (Prometheus text);
//! - `/api/v1/status`, `/api/v1/log`, `/api/v1/log/{offset}`, `/api/v1/quarantine` (JSON);
//! - `/api/v1/events`: the log tail as server-sent events ([`events`]);
//! - `/api/openapi.json` (the OpenAPI 3.1 document), users, repositories, manifests, stars and
//!   `/api/v1/export/{did}` ([`api`], which also adds ETags and CORS to all of `/api`);
//! - `/v2/…`: the OCI Distribution pull API ([`oci`]).
//!
//! Handlers only translate between HTTP and `atcr-query`; every error becomes a response
//! through one mapping per surface ([`ApiError`] for JSON, OCI errors for `/v2`, error pages for
//! the UI). The UI and the JSON API are compressed (gzip/br); `/v2` never is: blob bodies are
//! already compressed and must keep their exact length.

pub mod api;
pub mod events;
mod oci;
pub mod ui;
pub mod webhooks;

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tower_http::compression::CompressionLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use atcr_query::browse::Browse;
use atcr_query::search::{SearchParams, SearchService};
use atcr_query::{EventFilter, LogQuery, QueryError, RegistryQuery};

/// Installs the process-wide metrics recorder and returns the handle `/metrics` renders.
pub fn install_metrics_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new().install_recorder().map_err(|error| error.to_string())
}

#[derive(Clone)]
pub struct AppState {
    pub query: LogQuery,
    /// The registry views; `None` serves the log only.
    pub registry: Option<RegistryQuery>,
    pub metrics: Option<PrometheusHandle>,
    /// The browse read models behind the UI pages; `None` answers them with 503.
    pub browse: Option<Browse>,
    /// The search index; `None` answers `/search` and `/api/v1/search` with 503.
    pub search: Option<SearchService>,
    /// The live event streams (`/api/v1/events`, live pages); `None` answers them with 503.
    pub live: Option<events::LiveEvents>,
}

pub fn router(state: AppState) -> Router {
    let compressed = Router::new()
        .merge(ui::routes())
        .merge(ui::history::routes())
        .merge(ui::scans::routes())
        .merge(ui::layers::routes())
        .merge(ui::holds::routes())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/log", get(api_log))
        .route("/api/v1/log/{offset}", get(api_log_event))
        .route("/api/v1/quarantine", get(api_quarantine))
        .route("/api/v1/search", get(api_search))
        .merge(api::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), ui::history::repository_history_layer))
        .layer(axum::middleware::from_fn_with_state(state.clone(), ui::scans::repository_scans_layer))
        .layer(axum::middleware::from_fn(api::etag_layer))
        .layer(CompressionLayer::new());
    Router::new()
        // Never compressed: a compressor would hold events back until its buffer fills.
        .route("/api/v1/events", get(events::api_events))
        .route("/v2", get(oci::base))
        .route("/v2/", get(oci::base))
        .route("/v2/{*path}", axum::routing::any(oci::dispatch))
        .merge(compressed)
        .layer(axum::middleware::from_fn(api::cors_layer))
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .with_state(state)
}

/// The one mapping from failures to HTTP responses: a stable code, a status, a message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn not_found(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::BAD_REQUEST, code: "bad_request", message: message.into() }
    }

    fn internal(message: impl Into<String>) -> Self {
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: message.into() }
    }
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        tracing::error!(%error, "query failed");
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: error.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // `error` repeats `code` for clients of the first API version ([`api::ErrorBody`]).
        let body = serde_json::json!({ "code": self.code, "message": self.message, "error": self.code });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Runs a query on the blocking pool: redb reads may touch the disk.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(error) => Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("query task failed: {error}"),
        }),
    }
}

async fn healthz(State(state): State<AppState>) -> Result<Response, ApiError> {
    let query = state.query.clone();
    let report = blocking(move || query.status(0)).await?;
    Ok(axum::Json(serde_json::json!({ "status": "ok", "events": report.log.events })).into_response())
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], body).into_response()
}

/// `GET /api/v1/status`: the log's counts, recent events and quarantine, stream notes.
#[utoipa::path(get, path = "/api/v1/status", tag = "log", summary = "Log statistics, recent events and quarantine",
    responses(
        (status = 200, description = "Log statistics, the 25 newest events and quarantined inputs, stream notes", body = Object),
        (status = 500, description = "The log could not be read", body = api::ErrorBody),
    ))]
async fn api_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let query = state.query.clone();
    let report = blocking(move || query.status(25)).await?;
    Ok(axum::Json(report).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LogParams {
    /// First offset to consider (default 0); pass the previous page's `next`.
    from: Option<u64>,
    /// Most events to return, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Only this DID's events.
    did: Option<String>,
    /// An exact collection NSID, or a prefix ending in `.` or `*` (`io.atcr.sailor.*`).
    collection: Option<String>,
}

const MAX_PAGE: usize = 1000;

/// `GET /api/v1/log`: a page of log events, oldest first (the log's offset is its cursor).
#[utoipa::path(get, path = "/api/v1/log", tag = "log", summary = "A page of log events", params(LogParams),
    responses(
        (status = 200, description = "A page of events and the `from` of the next page", body = atcr_query::EventPage),
        (status = 400, description = "A bad parameter", body = api::ErrorBody),
    ))]
async fn api_log(
    State(state): State<AppState>,
    api::ApiQuery(params): api::ApiQuery<LogParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let filter = EventFilter { from: params.from.unwrap_or(0), limit, did: params.did, collection: params.collection };
    let query = state.query.clone();
    let page = blocking(move || query.events(&filter)).await?;
    Ok(axum::Json(page).into_response())
}

/// `GET /api/v1/log/{offset}`: one log event.
#[utoipa::path(get, path = "/api/v1/log/{offset}", tag = "log", summary = "One log event",
    params(("offset" = u64, Path, description = "The event's offset in the log")),
    responses(
        (status = 200, description = "The event as JSON", body = Object),
        (status = 400, description = "The offset is not a non-negative integer", body = api::ErrorBody),
        (status = 404, description = "No event at that offset", body = api::ErrorBody),
    ))]
async fn api_log_event(
    State(state): State<AppState>,
    api::ApiPath(offset): api::ApiPath<String>,
) -> Result<Response, ApiError> {
    let offset: u64 = offset.parse().map_err(|_| ApiError::bad_request("offset must be a non-negative integer"))?;
    let query = state.query.clone();
    match blocking(move || query.event(offset)).await? {
        Some(event) => Ok(axum::Json(event).into_response()),
        None => Err(ApiError::not_found(format!("no event at offset {offset}"))),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct QuarantineParams {
    /// First quarantine id to list (default 0).
    from: Option<u64>,
    /// Most entries, clamped to 1..1000 (default 100).
    limit: Option<usize>,
}

/// `GET /api/v1/quarantine`: inputs atcr could not ingest, without their raw bytes.
#[utoipa::path(get, path = "/api/v1/quarantine", tag = "log", summary = "Inputs atcr could not ingest", params(QuarantineParams),
    responses(
        (status = 200, description = "Quarantined inputs, by id", body = Vec<atcr_query::QuarantineSummary>),
        (status = 400, description = "A bad parameter", body = api::ErrorBody),
    ))]
async fn api_quarantine(
    State(state): State<AppState>,
    api::ApiQuery(params): api::ApiQuery<QuarantineParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let from = params.from.unwrap_or(0);
    let query = state.query.clone();
    let entries = blocking(move || query.quarantine(from, limit)).await?;
    Ok(axum::Json(entries).into_response())
}

/// `GET /api/v1/search?q=&sort=&page=&per_page=`: the search page's results as JSON.
#[utoipa::path(get, path = "/api/v1/search", tag = "registry", summary = "Search repositories",
    params(
        ("q" = Option<String>, Query, description = "Search text with `owner:`, `tag:`, `platform:`, `pushed:`, `sort:` filters"),
        ("sort" = Option<String>, Query, description = "relevance, recent, stars, size or name (`sort:` in `q` wins)"),
        ("page" = Option<u64>, Query, description = "1-based page number"),
        ("per_page" = Option<u64>, Query, description = "Results per page (capped by the server)"),
    ),
    responses(
        (status = 200, description = "A page of repository cards and how the query was understood", body = atcr_query::search::SearchResponse),
        (status = 400, description = "A bad parameter", body = api::ErrorBody),
        (status = 503, description = "Search is not configured or its index is being built", body = api::ErrorBody),
    ))]
async fn api_search(
    State(state): State<AppState>,
    api::ApiQuery(params): api::ApiQuery<SearchParams>,
) -> Result<Response, ApiError> {
    let Some(service) = state.search.clone() else {
        return Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: "search is not available on this server".into(),
        });
    };
    match tokio::task::spawn_blocking(move || service.search(&params)).await {
        Ok(Ok(results)) => Ok(axum::Json(results).into_response()),
        Ok(Err(atcr_query::search::SearchServiceError::NotReady)) => Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            message: "the search index is being built; try again in a moment".into(),
        }),
        Ok(Err(error)) => {
            tracing::error!(%error, "search failed");
            Err(ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: error.to_string() })
        }
        Err(error) => Err(ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("search task failed: {error}"),
        }),
    }
}

/// Unknown paths: JSON under `/api/`, the styled 404 page everywhere else.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        return ApiError::not_found("no such endpoint").into_response();
    }
    let response = ui::not_found_page("There is no page at this address.");
    ui::security_headers_on(response)
}
