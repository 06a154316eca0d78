//! Alerts as they leave connmon: the alert body of docs/rules.md ([`AlertBody`], what the outbox stores
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
    /// `flapping` / `flapping_resolved`: silent reconnects counted in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnects: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<i64>,
    /// `flapping`: what the rhythm suggests (e.g. a duplicate device identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// `store_reset`: what was detected, in words (which store, what was missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a `store_reset` means for the people who receive it: said the same way by every channel.
pub const STORE_RESET_MEANING: &str = "connmon's state was lost: outages that were open before \
     it are forgotten (no reconnected alert will follow them) until those devices report again; \
     alerts that were queued and not yet delivered are gone";

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
            disconnects: a.flap.as_ref().map(|f| f.disconnects),
            window_seconds: a.flap.as_ref().map(|f| f.window_seconds),
            hint: a.flap.as_ref().and_then(|f| f.hint.clone()),
            detail: a.detail.as_ref().map(|d| d.0.clone()),
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
        AlertKind::Reminder => format!(
            "still offline since {} ({}s)",
            a.disconnected_at, a.downtime_seconds
        ),
        AlertKind::HubQuiet => format!(
            "no event from the hub since {} ({}s): check the Event Grid subscription and the hub",
            a.disconnected_at, a.downtime_seconds
        ),
        AlertKind::HubResumed => format!(
            "events arrive again since {} after {}s without any",
            a.reconnected_at.unwrap_or(a.detected_at),
            a.downtime_seconds
        ),
        AlertKind::StoreReset => {
            return format!(
                "store_reset since {}: {}; {STORE_RESET_MEANING} dedupKey={}",
                a.disconnected_at,
                a.detail
                    .as_ref()
                    .map_or("the store came back empty", |d| &d.0),
                a.dedup_key
            )
        }
        AlertKind::Flapping | AlertKind::FlappingResolved => {
            let f = a.flap.as_ref();
            format!(
                "{} silent reconnects within {}s since {}{}",
                f.map_or(0, |f| f.disconnects),
                f.map_or(0, |f| f.window_seconds),
                a.disconnected_at,
                f.and_then(|f| f.hint.as_ref())
                    .map(|h| format!(": {h}"))
                    .unwrap_or_default()
            )
        }
    };
    if matches!(a.kind, AlertKind::HubQuiet | AlertKind::HubResumed) {
        return format!(
            "{} hub={:?} {what} dedupKey={}",
            a.kind.as_str(),
            a.identity.hub(),
            a.dedup_key
        );
    }
    format!(
        "{} hub={:?} device={:?}{module} {what} dedupKey={}",
        a.kind.as_str(),
        a.identity.hub(),
        a.identity.device(),
        a.dedup_key
    )
}
