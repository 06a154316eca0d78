//! The HTTP edge: envelopes in, JSON out, status codes. One router serves both modes.
//!
//! | route | caller |
//! |---|---|
//! | `GET /` | host readiness / health ping |
//! | `POST /ConnectionEvent` | host, Event Grid trigger invocation envelope |
//! | `POST /DisconnectTimer` | host, timer trigger invocation envelope (also tests, standalone) |
//! | `POST /api/events` | Event Grid directly (standalone webhook), both schemas |
//! | `OPTIONS /api/events` | Event Grid CloudEvents abuse-protection handshake |
//!
//! Status codes live in [`ApiError`]: 400 for a body that is not JSON or not an envelope, 413 over
//! [`MAX_BODY`], 503 when the store failed (so Event Grid or the host redelivers). A body that is
//! accepted is acknowledged with 200 even when some events in it were rejected (design.md rule 8).

use crate::decode::{self, EnvelopeError};
use crate::model::Timestamp;
use crate::monitor::{IngestReport, Monitor};
use crate::store::StoreError;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};
use std::sync::Arc;

/// Largest accepted request body: Event Grid's own limit for one event and for one array.
pub const MAX_BODY: usize = 1024 * 1024;

/// Builds the router. Tests call it in-process; `run` serves it on a socket.
pub fn app(monitor: Arc<Monitor>) -> Router {
    Router::new()
        .route("/", get(health))
        .route("/ConnectionEvent", post(connection_event))
        .route("/DisconnectTimer", post(disconnect_timer))
        .route("/api/events", post(webhook_events).options(webhook_options))
        .fallback(not_found)
        .with_state(monitor)
}

/// Every non-2xx answer, in one place.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    TooLarge,
    Store(StoreError),
}

impl From<EnvelopeError> for ApiError {
    fn from(e: EnvelopeError) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body is larger than {MAX_BODY} bytes"),
            ),
            ApiError::Store(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        (status, Json(json!({ "error": msg }))).into_response()
    }
}

/// Reads the whole body (chunked or not) up to [`MAX_BODY`].
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::TooLarge);
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::TooLarge),
        Err(e) => Err(ApiError::BadRequest(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// The JSON object the Functions host expects from every successful invocation.
fn host_response(logs: Vec<String>) -> Response {
    host_response_with(serde_json::Map::new(), logs)
}

fn host_response_with(outputs: serde_json::Map<String, Value>, logs: Vec<String>) -> Response {
    Json(json!({ "Outputs": outputs, "Logs": logs, "ReturnValue": null })).into_response()
}

async fn health(State(m): State<Arc<Monitor>>) -> Response {
    Json(json!({ "status": "ok", "counters": m.counters.snapshot() })).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "no such route" })),
    )
        .into_response()
}

/// Reads, parses and decodes a delivery with `decode`, then applies it; stamps receipt time first.
async fn ingest(
    m: &Monitor,
    headers: &HeaderMap,
    body: Body,
    decode: fn(&[u8]) -> Result<Vec<decode::Decoded>, EnvelopeError>,
) -> Result<IngestReport, ApiError> {
    let received_at = Timestamp::now();
    let bytes = read_body(headers, body).await?;
    let items = decode(&bytes)?;
    Ok(m.ingest(items, received_at).await?)
}

async fn connection_event(
    State(m): State<Arc<Monitor>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let report = ingest(&m, &headers, body, decode::decode_host_invocation_bytes).await?;
    let mut logs = vec![report.summary()];
    logs.extend(report.rejected.iter().map(|r| format!("rejected: {r}")));
    logs.extend(
        report
            .alerts
            .iter()
            .map(|a| format!("ALERT {}", crate::alerts::log_line(a))),
    );
    Ok(host_response(logs))
}

async fn disconnect_timer(
    State(m): State<Arc<Monitor>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body).await?;
    // The timer payload carries nothing connmon needs (its dates come in several formats), but a
    // body that is present must still be a JSON object.
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        match decode::parse_json(&bytes)? {
            Value::Object(_) => {}
            _ => {
                return Err(ApiError::BadRequest(
                    "body is not a Functions invocation envelope: not a JSON object".into(),
                ))
            }
        }
    }
    let report = m.sweep().await?;
    let mut outputs = serde_json::Map::new();
    if let Some(binding) = m.queue_binding() {
        // A collector binding takes an array: one queue message per alert object.
        outputs.insert(
            binding.to_string(),
            Value::Array(report.delivery.outputs.clone()),
        );
    }
    Ok(host_response_with(outputs, report.log_lines(m.policy())))
}

async fn webhook_events(
    State(m): State<Arc<Monitor>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let report = ingest(&m, &headers, body, |b| {
        decode::decode_delivery(&decode::parse_json(b)?)
    })
    .await?;
    if let Some(code) = report.validation_codes.first() {
        crate::log::info("answered an Event Grid subscription validation handshake");
        return Ok(Json(json!({ "validationResponse": code })).into_response());
    }
    let is_validation_header = headers
        .get("aeg-event-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SubscriptionValidation"));
    if is_validation_header {
        return Err(ApiError::BadRequest(
            "aeg-event-type is SubscriptionValidation but the body holds no validation event with a data.validationCode".into(),
        ));
    }
    Ok(Json(json!({
        "accepted": report.outcomes.len(),
        "ignored": report.ignored,
        "rejected": report.rejected.len(),
        "alerts": report.alerts.len(),
    }))
    .into_response())
}

/// CloudEvents 1.0 webhook abuse protection: Event Grid asks with `OPTIONS` before delivering.
async fn webhook_options(headers: HeaderMap) -> Response {
    let origin = headers
        .get("webhook-request-origin")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert("webhook-allowed-origin", origin);
    if headers.contains_key("webhook-request-rate") {
        h.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    }
    h.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    resp
}
