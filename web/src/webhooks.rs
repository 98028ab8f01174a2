//! Webhook delivery history over HTTP: `/api/v1/webhooks` (subscriptions, without URLs or
//! secrets), `/api/v1/webhooks/{id}/deliveries` (newest first) and the admin page
//! `/admin/webhooks`.
//!
//! Why it exists: only `web` serves HTTP, but the deliveries are made and recorded by
//! `atcr_ingest::webhooks`, which `web` must not depend on. The binary hands in a
//! [`WebhookHistory`] that reads that module's store; this module only renders it.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A subscription as the API and the admin page show it: never its URL or secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SubscriptionSummary {
    pub id: String,
    /// `config` (atcr.toml) or `cli` (`atcr webhooks add`).
    pub source: String,
    /// Event types; empty: all.
    pub events: Vec<String>,
    pub did: Option<String>,
    pub repository: Option<String>,
    /// The next outbox offset the subscription delivers from (`None`: not started yet).
    pub checkpoint: Option<u64>,
}

/// Where the history comes from (the binary implements it over the delivery store).
pub trait WebhookHistory: Send + Sync + 'static {
    fn subscriptions(&self) -> Result<Vec<SubscriptionSummary>, String>;
    /// A subscription's deliveries, newest first, as JSON objects (`delivery_id`, `status`,
    /// `attempts`, `response_code`, `latency_ms`, …); `Ok(None)` for an unknown subscription.
    fn deliveries(&self, id: &str, limit: usize) -> Result<Option<Vec<Value>>, String>;
}

/// The routes; merge them into the main router.
pub fn routes(history: Arc<dyn WebhookHistory>) -> Router {
    Router::new()
        .route("/api/v1/webhooks", get(api_subscriptions))
        .route("/api/v1/webhooks/{id}/deliveries", get(api_deliveries))
        .route("/admin/webhooks", get(admin_page))
        .with_state(history)
}

#[derive(Debug, Deserialize)]
struct LimitParams {
    limit: Option<usize>,
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    // The body every /api error has (`crate::api::ErrorBody`): `code`, `message`, and `error` = `code`.
    (status, axum::Json(serde_json::json!({ "code": code, "message": message, "error": code }))).into_response()
}

/// `GET /api/v1/webhooks` (only where `atcr serve` runs webhook delivery).
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", summary = "Webhook subscriptions",
    responses(
        (status = 200, description = "`{\"subscriptions\": [...]}`: every subscription, never its URL or secret", body = Object),
        (status = 404, description = "This server runs no webhook delivery", body = crate::api::ErrorBody),
        (status = 500, description = "The delivery store could not be read", body = crate::api::ErrorBody),
    ))]
async fn api_subscriptions(State(history): State<Arc<dyn WebhookHistory>>) -> Response {
    match history.subscriptions() {
        Ok(subscriptions) => axum::Json(serde_json::json!({ "subscriptions": subscriptions })).into_response(),
        Err(message) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
    }
}

/// `GET /api/v1/webhooks/{id}/deliveries` (only where `atcr serve` runs webhook delivery).
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks", summary = "A subscription's deliveries",
    params(
        ("id" = String, Path, description = "The subscription id"),
        ("limit" = Option<u64>, Query, description = "Most deliveries, clamped to 1..1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "`{\"subscription\", \"deliveries\": [...]}`, newest first: delivery id, status, attempts, response code, latency", body = Object),
        (status = 400, description = "A bad parameter", body = crate::api::ErrorBody),
        (status = 404, description = "No such subscription, or no webhook delivery on this server", body = crate::api::ErrorBody),
        (status = 500, description = "The delivery store could not be read", body = crate::api::ErrorBody),
    ))]
async fn api_deliveries(
    State(history): State<Arc<dyn WebhookHistory>>,
    Path(id): Path<String>,
    crate::api::ApiQuery(params): crate::api::ApiQuery<LimitParams>,
) -> Response {
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    match history.deliveries(&id, limit) {
        Ok(Some(deliveries)) => {
            axum::Json(serde_json::json!({ "subscription": id, "deliveries": deliveries })).into_response()
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", format!("no webhook subscription {id:?}")),
        Err(message) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
    }
}

async fn admin_page(State(history): State<Arc<dyn WebhookHistory>>) -> Response {
    let subscriptions = match history.subscriptions() {
        Ok(subscriptions) => subscriptions,
        Err(message) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
    };
    let mut sections = Vec::with_capacity(subscriptions.len());
    for subscription in subscriptions {
        let deliveries = match history.deliveries(&subscription.id, 50) {
            Ok(deliveries) => deliveries.unwrap_or_default(),
            Err(message) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        };
        sections.push((subscription, deliveries));
    }
    crate::ui::webhooks::page(&sections).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    struct Fixed;

    impl WebhookHistory for Fixed {
        fn subscriptions(&self) -> Result<Vec<SubscriptionSummary>, String> {
            Ok(vec![SubscriptionSummary {
                id: "ci".into(),
                source: "cli".into(),
                events: vec!["tag.moved".into()],
                did: None,
                repository: Some("app".into()),
                checkpoint: Some(7),
            }])
        }

        fn deliveries(&self, id: &str, _limit: usize) -> Result<Option<Vec<Value>>, String> {
            Ok((id == "ci").then(|| {
                vec![serde_json::json!({"delivery_id": "ci-6", "status": "dead", "attempts": 3, "response_code": 500, "latency_ms": 4})]
            }))
        }
    }

    async fn get_text(path: &str) -> (StatusCode, String) {
        let response = routes(Arc::new(Fixed))
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn deliveries_are_served_as_json_and_on_the_admin_page() {
        let (status, body) = get_text("/api/v1/webhooks/ci/deliveries").await;
        assert_eq!(status, StatusCode::OK);
        let json: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(json["deliveries"][0]["delivery_id"], "ci-6");
        let (status, body) = get_text("/api/v1/webhooks/nope/deliveries").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("not_found"));
        let (status, page) = get_text("/admin/webhooks").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("ci-6") && page.contains("dead") && page.contains("tag.moved"), "{page}");
    }
}
