//! Alerts as they leave connmon: the wire body of design.md ([`AlertBody`], what the outbox stores
//! and every channel renders from) and the one-line log form. Delivery lives in `channels`.

use crate::machine::{Alert, AlertKind};
use crate::model::Timestamp;
use serde::{Deserialize, Serialize};

/// One element of the webhook body's `alerts` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertBody {
    pub kind: String,
    pub dedup_key: String,
    pub hub: String,
    pub device_id: String,
    pub module_id: Option<String>,
    pub disconnected_at: String,
    pub reconnected_at: Option<String>,
    pub downtime_seconds: i64,
    pub grace_period_seconds: i64,
    pub detected_at: String,
}

impl From<&Alert> for AlertBody {
    fn from(a: &Alert) -> Self {
        AlertBody {
            kind: a.kind.as_str().to_string(),
            dedup_key: a.dedup_key.clone(),
            hub: a.identity.hub().to_string(),
            device_id: a.identity.device().to_string(),
            module_id: a.identity.module().map(str::to_string),
            disconnected_at: a.disconnected_at.to_rfc3339(),
            reconnected_at: a.reconnected_at.map(Timestamp::to_rfc3339),
            downtime_seconds: a.downtime_seconds,
            grace_period_seconds: a.grace_period_seconds,
            detected_at: a.detected_at.to_rfc3339(),
        }
    }
}

/// The alert as one log line. Ids are quoted with escapes so a forged id cannot fake log lines.
pub fn log_line(a: &Alert) -> String {
    let module = match a.identity.module() {
        Some(m) => format!(" module={m:?}"),
        None => String::new(),
    };
    let what = match a.kind {
        AlertKind::Disconnected => format!(
            "offline since {} ({}s, grace {}s)",
            a.disconnected_at, a.downtime_seconds, a.grace_period_seconds
        ),
        AlertKind::Reconnected => format!(
            "back online at {} after {}s offline",
            a.reconnected_at.unwrap_or(a.detected_at),
            a.downtime_seconds
        ),
    };
    format!(
        "{} hub={:?} device={:?}{module} {what} dedupKey={}",
        a.kind.as_str(),
        a.identity.hub(),
        a.identity.device(),
        a.dedup_key
    )
}
