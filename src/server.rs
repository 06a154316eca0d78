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
//! [`MAX_BODY`], 408 for a body slower than [`BODY_READ_TIMEOUT`], 401 without the standalone
//! webhook key when one is set, 503 when the store failed (so Event Grid or the host redelivers). A body that is
//! accepted is acknowledged with 200 even when some events in it were rejected (docs/rules.md §8).

use crate::decode::{self, EnvelopeError};
use crate::model::Timestamp;
use crate::monitor::{IngestReport, Monitor};
use crate::settings::Secret;
use crate::store::StoreError;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Largest accepted request body: Event Grid's own limit for one event and for one array.
pub const MAX_BODY: usize = 1024 * 1024;
/// A client must send the whole body within this long, or gets 408. Event Grid itself waits 30 s
/// for an answer.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Who may read the status API, the dashboard and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAccess {
    /// Anyone who reaches the listener: Functions mode (the host checks function keys before it
    /// forwards a request), or a standalone loopback listener without `CONNMON_API_KEY`.
    Open,
    /// Standalone with `CONNMON_API_KEY`: `Authorization: Bearer <key>` or `?code=<key>`.
    Key(Secret<String>),
    /// Standalone on a non-loopback listener without `CONNMON_API_KEY`: the routes answer 403.
    Off,
}

/// Builds the router. Tests call it in-process; `listen::serve` serves it on a socket. With a `key`
/// (standalone `CONNMON_WEBHOOK_KEY`) the event and timer routes want it; `api` says who may read
/// the status routes.
pub fn app(monitor: Arc<Monitor>, key: Option<Secret<String>>, api: ApiAccess) -> Router {
    let mut guarded = Router::new()
        .route("/ConnectionEvent", post(connection_event))
        .route("/DisconnectTimer", post(disconnect_timer))
        .route("/api/events", post(webhook_events).options(webhook_options));
    if let Some(key) = key {
        let guard = Arc::new(KeyGuard::new(&key, "CONNMON_WEBHOOK_KEY"));
        guarded = guarded.route_layer(middleware::from_fn_with_state(guard, require_key));
    }
    let mut status = crate::status_routes::routes();
    match api {
        ApiAccess::Open => {}
        ApiAccess::Key(key) => {
            let guard = Arc::new(KeyGuard::new(&key, "CONNMON_API_KEY"));
            status = status.route_layer(middleware::from_fn_with_state(guard, require_api_key));
        }
        ApiAccess::Off => status = status.route_layer(middleware::from_fn(api_off)),
    }
    guarded
        .merge(status)
        .route("/", get(health))
        .fallback(not_found)
        .with_state(monitor)
}

/// A key setting (`CONNMON_WEBHOOK_KEY`, `CONNMON_API_KEY`), kept only as its digest, and how
/// many requests lacked it.
struct KeyGuard {
    digest: [u8; 32],
    setting: &'static str,
    rejected: AtomicU64,
    last_note: std::sync::Mutex<Option<std::time::Instant>>,
}

impl KeyGuard {
    fn new(key: &Secret<String>, setting: &'static str) -> KeyGuard {
        KeyGuard {
            digest: Sha256::digest(key.expose().as_bytes()).into(),
            setting,
            rejected: AtomicU64::new(0),
            last_note: std::sync::Mutex::new(None),
        }
    }

    /// Compares digests in constant time, so response timing says nothing about the key.
    fn accepts(&self, given: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        d.iter()
            .zip(self.digest)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Counts a rejection; logs the count at most once a minute (a flood must not flood the log).
    fn note_rejection(&self) {
        let n = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_note.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            *last = Some(std::time::Instant::now());
            let who = if self.setting == "CONNMON_WEBHOOK_KEY" {
                "an Event Grid subscription whose endpoint lacks `?code=<key>`, or someone else"
            } else {
                "a client without `Authorization: Bearer <key>`, or someone else"
            };
            crate::log::warn(format_args!(
                "refused a request without the right {} ({n} so far): {who}",
                self.setting
            ));
        }
    }
}

/// The key from the `x-functions-key` header or the `code` query parameter (percent-decoded).
fn given_key(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get("x-functions-key") {
        return v.to_str().ok().map(str::to_string);
    }
    code_param(req)
}

/// The `code` query parameter, percent-decoded.
fn code_param(req: &Request) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "code").then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

async fn require_key(State(guard): State<Arc<KeyGuard>>, req: Request, next: Next) -> Response {
    if given_key(&req).is_some_and(|k| guard.accepts(&k)) {
        return next.run(req).await;
    }
    guard.note_rejection();
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "missing or wrong key: pass CONNMON_WEBHOOK_KEY as the `code` query parameter or the `x-functions-key` header" })),
    )
        .into_response()
}

/// The API key from `Authorization: Bearer <key>` or the `code` query parameter (a browser).
fn given_api_key(req: &Request) -> Option<String> {
    if let Some(v) = req.headers().get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    code_param(req)
}

async fn require_api_key(State(guard): State<Arc<KeyGuard>>, req: Request, next: Next) -> Response {
    if given_api_key(&req).is_some_and(|k| guard.accepts(&k)) {
        return next.run(req).await;
    }
    guard.note_rejection();
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "missing or wrong key: send CONNMON_API_KEY as `Authorization: Bearer <key>` (or, from a browser, the `code` query parameter)" })),
    )
        .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"connmon\""),
    );
    resp
}

async fn api_off(_req: Request, _next: Next) -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "error": "the status API, dashboard and metrics are off: this listener is not loopback and CONNMON_API_KEY is not set" })),
    )
        .into_response()
}

/// Every non-2xx answer, in one place.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    TooLarge,
    /// The body did not arrive within [`BODY_READ_TIMEOUT`].
    Timeout,
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
            ApiError::TooLarge => {
                // The rest of the body (past what was drained) is not read: the connection ends.
                let mut resp = (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Json(json!({ "error": format!("body is larger than {MAX_BODY} bytes") })),
                )
                    .into_response();
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            ),
            ApiError::Store(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        };
        (status, Json(json!({ "error": msg }))).into_response()
    }
}

/// Reads the whole body (chunked or not) up to [`MAX_BODY`]. A larger body is answered `413`
/// only after it has been read on (and thrown away) up to [`DRAIN_LIMIT`] or for [`DRAIN_TIME`]:
/// a client that writes its whole request before it reads (Python's `urllib`, most scripts)
/// would otherwise find the connection reset under its feet and never see the answer.
async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        drain(body).await;
        return Err(ApiError::TooLarge);
    }
    let mut body = body;
    let mut kept = Vec::new();
    let read = tokio::time::timeout(BODY_READ_TIMEOUT, async {
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue; // trailers
            };
            if kept.len() + data.len() > MAX_BODY {
                return Ok(false);
            }
            kept.extend_from_slice(&data);
        }
        Ok::<bool, axum::Error>(true)
    });
    match read.await.map_err(|_| ApiError::Timeout)? {
        Ok(true) => Ok(Bytes::from(kept)),
        Ok(false) => {
            drain(body).await;
            Err(ApiError::TooLarge)
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

/// How much of a body over [`MAX_BODY`] is read and thrown away before the `413`.
pub const DRAIN_LIMIT: usize = 4 * MAX_BODY;
/// How long a body over [`MAX_BODY`] is read on before the `413`.
pub const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Reads `body` to its end and discards it, for at most [`DRAIN_LIMIT`] bytes or [`DRAIN_TIME`].
async fn drain(mut body: Body) {
    let mut seen = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
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
    let report = ingest(&m, &headers, body, |b| {
        decode::decode_host_invocation(&decode::parse_json(b)?)
    })
    .await?;
    let mut logs = vec![report.summary()];
    let shown = crate::monitor::MAX_REJECTION_LOG_LINES;
    logs.extend(
        report
            .rejected
            .iter()
            .take(shown)
            .map(|r| format!("rejected: {r}")),
    );
    if report.rejected.len() > shown {
        logs.push(format!("rejected: {} more", report.rejected.len() - shown));
    }
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
