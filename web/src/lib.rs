//! atcr-web: everything atcr serves over HTTP.
//!
//! - `/` — the status page: what was ingested, cursors, quarantine, recent events;
//! - `/healthz`, `/metrics` (Prometheus text);
//! - `/api/v1/status`, `/api/v1/log`, `/api/v1/log/{offset}`, `/api/v1/quarantine` (JSON);
//! - `/v2/…`: the OCI Distribution pull API ([`oci`]).
//!
//! Handlers only translate between HTTP and `atcr-query`; every error becomes a response
//! through one mapping ([`ApiError`]).

mod oci;
mod pages;

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

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
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/log", get(api_log))
        .route("/api/v1/log/{offset}", get(api_log_event))
        .route("/api/v1/quarantine", get(api_quarantine))
        .route("/v2", get(oci::base))
        .route("/v2/", get(oci::base))
        .route("/v2/{*path}", axum::routing::any(oci::dispatch))
        .fallback(not_found)
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
}

impl From<QueryError> for ApiError {
    fn from(error: QueryError) -> Self {
        tracing::error!(%error, "query failed");
        ApiError { status: StatusCode::INTERNAL_SERVER_ERROR, code: "internal", message: error.to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.code, "message": self.message });
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

async fn status_page(State(state): State<AppState>) -> Result<Response, ApiError> {
    let query = state.query.clone();
    let report = blocking(move || query.status(25)).await?;
    Ok(pages::status(&report).into_response())
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

async fn api_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let query = state.query.clone();
    let report = blocking(move || query.status(25)).await?;
    Ok(axum::Json(report).into_response())
}

#[derive(Debug, Deserialize)]
struct LogParams {
    from: Option<u64>,
    limit: Option<usize>,
    did: Option<String>,
    collection: Option<String>,
}

const MAX_PAGE: usize = 1000;

async fn api_log(State(state): State<AppState>, Query(params): Query<LogParams>) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_PAGE}")));
    }
    let filter = EventFilter { from: params.from.unwrap_or(0), limit, did: params.did, collection: params.collection };
    let query = state.query.clone();
    let page = blocking(move || query.events(&filter)).await?;
    Ok(axum::Json(page).into_response())
}

async fn api_log_event(State(state): State<AppState>, Path(offset): Path<String>) -> Result<Response, ApiError> {
    let offset: u64 = offset.parse().map_err(|_| ApiError::bad_request("offset must be a non-negative integer"))?;
    let query = state.query.clone();
    match blocking(move || query.event(offset)).await? {
        Some(event) => Ok(axum::Json(event).into_response()),
        None => Err(ApiError::not_found(format!("no event at offset {offset}"))),
    }
}

#[derive(Debug, Deserialize)]
struct QuarantineParams {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn api_quarantine(
    State(state): State<AppState>,
    Query(params): Query<QuarantineParams>,
) -> Result<Response, ApiError> {
    let limit = params.limit.unwrap_or(100).clamp(1, MAX_PAGE);
    let from = params.from.unwrap_or(0);
    let query = state.query.clone();
    let entries = blocking(move || query.quarantine(from, limit)).await?;
    Ok(axum::Json(entries).into_response())
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such page")
}
