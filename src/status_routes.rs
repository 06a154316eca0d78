//! The status routes, in both modes: `GET /api/status`, `/api/devices`,
//! `/api/devices/{deviceId}`, `/api/devices/{deviceId}/modules/{moduleId}`, `/api/dashboard` and
//! `/metrics`. Who may call them is decided in `server::app` (`ApiAccess`); the figures come from
//! `Monitor`, the shapes from `api`, the page from `dashboard`.

use crate::api::{self, StateFilter};
use crate::decode::check_id;
use crate::model::{Identity, Timestamp};
use crate::monitor::{DeviceQuery, Monitor};
use crate::server::ApiError;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// Devices per page of `GET /api/devices` unless `limit=` says otherwise (at most 1,000).
pub const DEFAULT_LIMIT: usize = 100;
/// Identities one `GET /api/devices` request looks at, at most, when a filter matches few: the
/// answer's `next` cursor goes on from there.
pub const MAX_SCAN: usize = 100_000;
/// The dashboard reloads itself this often.
pub const DASHBOARD_REFRESH_SECONDS: u32 = 30;

pub fn routes() -> Router<Arc<Monitor>> {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/devices", get(devices))
        .route("/api/devices/{device}", get(device))
        .route("/api/devices/{device}/modules/{module}", get(module))
        .route("/api/dashboard", get(dashboard))
        .route("/metrics", get(metrics))
}

/// Answers 400 for a query parameter the route does not know (a typo must not silently list
/// everything).
fn only_params(q: &HashMap<String, String>, known: &[&str]) -> Result<(), ApiError> {
    match q
        .keys()
        .find(|k| !known.contains(&k.as_str()) && k.as_str() != "code")
    {
        Some(k) => Err(ApiError::BadRequest(format!(
            "unknown query parameter {:?}: expected {}",
            crate::decode::clip(k),
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

async fn status(
    State(m): State<Arc<Monitor>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only_params(&q, &[])?;
    Ok(no_store(Json(m.status(Timestamp::now()).await?)))
}

async fn devices(
    State(m): State<Arc<Monitor>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only_params(&q, &["state", "hub", "limit", "after"])?;
    let state = match q.get("state") {
        None => None,
        Some(s) => Some(StateFilter::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "state={:?} is not a state: expected one of {}",
                crate::decode::clip(s),
                StateFilter::ACCEPTED
            ))
        })?),
    };
    let hub = q.get("hub").map(|h| h.to_ascii_lowercase());
    if let Some(h) = &hub {
        check_id("hub", h).map_err(ApiError::BadRequest)?;
    }
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit={:?}: expected a number from 1 to 1000",
                    crate::decode::clip(l)
                ))
            })?,
    };
    let after = match q.get("after") {
        None => None,
        Some(c) => Some(api::decode_cursor(c).ok_or_else(|| {
            ApiError::BadRequest(
                "after= is not a cursor this API gave out (pass the previous page's `next`)".into(),
            )
        })?),
    };
    let query = DeviceQuery {
        hub,
        state,
        after,
        limit,
        scan_budget: MAX_SCAN,
    };
    Ok(no_store(Json(m.devices(query, Timestamp::now()).await?)))
}

#[derive(Deserialize)]
struct HubParam {
    hub: Option<String>,
    #[serde(rename = "code")]
    _code: Option<String>,
}

async fn device(
    State(m): State<Arc<Monitor>>,
    Path(device): Path<String>,
    Query(q): Query<HubParam>,
) -> Result<Response, ApiError> {
    one_identity(&m, &device, None, q.hub).await
}

async fn module(
    State(m): State<Arc<Monitor>>,
    Path((device, module)): Path<(String, String)>,
    Query(q): Query<HubParam>,
) -> Result<Response, ApiError> {
    one_identity(&m, &device, Some(&module), q.hub).await
}

/// One identity: in `hub` when given, else in whichever hub has it (409 when several do).
async fn one_identity(
    m: &Monitor,
    device: &str,
    module: Option<&str>,
    hub: Option<String>,
) -> Result<Response, ApiError> {
    check_id("device id", device).map_err(ApiError::BadRequest)?;
    if let Some(module) = module {
        check_id("module id", module).map_err(ApiError::BadRequest)?;
    }
    let now = Timestamp::now();
    let mut found = match hub {
        Some(h) => {
            let h = h.to_ascii_lowercase();
            check_id("hub", &h).map_err(ApiError::BadRequest)?;
            let id = Identity::new(&h, device, module);
            m.device(id, now).await?.into_iter().collect()
        }
        None => m.find_device(device, module, now).await?,
    };
    match found.len() {
        0 => Ok((
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!(
                "no such identity: device {:?}{} has sent no connection event connmon knows of",
                crate::decode::clip(device),
                module.map(|m| format!(" module {:?}", crate::decode::clip(m))).unwrap_or_default()
            ) })),
        )
            .into_response()),
        1 => Ok(no_store(Json(found.remove(0)))),
        _ => {
            let hubs: Vec<&str> = found.iter().map(|d| d.device.hub.as_str()).collect();
            Ok((
                StatusCode::CONFLICT,
                Json(json!({
                    "error": "this id exists in several hubs: add ?hub=<hub>",
                    "hubs": hubs,
                })),
            )
                .into_response())
        }
    }
}

async fn dashboard(
    State(m): State<Arc<Monitor>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only_params(&q, &[])?;
    let d = m.dashboard(Timestamp::now()).await?;
    let html = crate::dashboard::render(&d, DASHBOARD_REFRESH_SECONDS);
    let mut resp = html.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page loads nothing and runs no script: say so, so a bug in escaping cannot run one.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn metrics(
    State(m): State<Arc<Monitor>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    only_params(&q, &[])?;
    let text = m.prometheus(Timestamp::now()).await?;
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

/// Status answers are live: never cached by a proxy or browser.
fn no_store(body: impl IntoResponse) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
