//! The status API's answers: serde views built from store records by pure functions, so
//! the JSON routes and the dashboard show the same figures. The routes live in `server`; the
//! reads in `Monitor`.

use crate::machine::Policy;
use crate::model::{Identity, Timestamp};
use crate::status::{self, Change, ChangeKind, HubState, State, Status};
use crate::store::{Counts, IdentityRecord, Overview};
use base64::Engine;
use serde::Serialize;

/// `GET /api/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub tracked: u64,
    pub connected: u64,
    pub pending: u64,
    pub alerted: u64,
    pub flapping: u64,
    pub silenced: u64,
    pub hubs: Vec<HubView>,
    pub last_sweep_at: Option<String>,
    /// Alert deliveries waiting in the outbox (all channels).
    pub queued_deliveries: u64,
    /// Outbox entries set aside because they can never be delivered (their body is not an
    /// alert): neither sent nor retried, kept for an operator to look at.
    pub dead_letters: u64,
    pub grace_period_seconds: i64,
    /// `CONNMON_HUB_QUIET_AFTER` in seconds, when set.
    pub hub_quiet_after_seconds: Option<i64>,
    pub generated_at: String,
}

/// One hub in `GET /api/status`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HubView {
    pub hub: String,
    /// When an event from the hub last arrived (receipt time).
    pub last_event_at: String,
    pub seconds_since_last_event: i64,
    /// A `hub_quiet` alert is open: no event since this time.
    pub quiet_since: Option<String>,
}

impl HubView {
    pub fn of(h: &HubState, now: Timestamp) -> HubView {
        HubView {
            hub: h.hub.clone(),
            last_event_at: h.last_event_at.to_rfc3339(),
            seconds_since_last_event: now.seconds_since(h.last_event_at).max(0),
            quiet_since: h.quiet.map(|q| q.since.to_rfc3339()),
        }
    }
}

/// Builds `GET /api/status` from the store's figures.
pub fn status_view(
    counts: Counts,
    overview: &Overview,
    queued: u64,
    dead_letters: u64,
    policy: &Policy,
    hub_quiet_after: Option<std::time::Duration>,
    now: Timestamp,
) -> StatusView {
    StatusView {
        tracked: counts.tracked,
        connected: counts.connected,
        pending: counts.pending,
        alerted: counts.alerted,
        flapping: counts.flapping,
        silenced: counts.silenced,
        hubs: overview.hubs.iter().map(|h| HubView::of(h, now)).collect(),
        last_sweep_at: overview.last_sweep_at.map(Timestamp::to_rfc3339),
        queued_deliveries: queued,
        dead_letters,
        grace_period_seconds: policy.grace_seconds(),
        hub_quiet_after_seconds: hub_quiet_after.map(|d| d.as_secs() as i64),
        generated_at: now.to_rfc3339(),
    }
}

/// One identity in `GET /api/devices`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    pub hub: String,
    pub device_id: String,
    pub module_id: Option<String>,
    /// `connected`, `pending`, `alerted`, `deleted` or `unknown`.
    pub state: &'static str,
    pub flapping: bool,
    /// A pending outage held back by a silence: until when.
    pub silenced_until: Option<String>,
    /// The open outage's start and length so far.
    pub offline_since: Option<String>,
    pub offline_seconds: Option<i64>,
    /// A pending outage: when it alerts.
    pub alert_due_at: Option<String>,
    /// Time of the last applied event.
    pub last_event_at: Option<String>,
}

impl DeviceView {
    pub fn of(r: &IdentityRecord, s: &Status, now: Timestamp) -> DeviceView {
        DeviceView {
            hub: r.identity.hub().to_string(),
            device_id: r.identity.device().to_string(),
            module_id: r.identity.module().map(str::to_string),
            state: s.state.as_str(),
            flapping: s.flapping,
            silenced_until: s.silenced_until.map(Timestamp::to_rfc3339),
            offline_since: s.offline_since.map(Timestamp::to_rfc3339),
            offline_seconds: s.offline_since.map(|t| now.seconds_since(t).max(0)),
            alert_due_at: s.due_at.map(Timestamp::to_rfc3339),
            last_event_at: r.state.last_event_at.map(Timestamp::to_rfc3339),
        }
    }
}

/// One history entry in the API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ChangeView {
    pub at: String,
    /// `connected`, `disconnected`, `deleted`, or `alert:<kind>` (`alert:disconnected`, …).
    pub kind: String,
    /// A connect closing an outage: how long it lasted; an alert: its downtime.
    pub seconds: Option<i64>,
}

impl From<&Change> for ChangeView {
    fn from(c: &Change) -> Self {
        ChangeView {
            at: c.at.to_rfc3339(),
            kind: c.kind.name(),
            seconds: c.seconds,
        }
    }
}

/// `GET /api/devices/{deviceId}` and `…/modules/{moduleId}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: DeviceView,
    pub open_outage: Option<OutageView>,
    /// Connects, disconnects and deletion, newest first.
    pub transitions: Vec<ChangeView>,
    /// Alerts raised for this identity (and queued for every channel), newest first.
    pub alerts: Vec<ChangeView>,
}

/// The open outage of an identity.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OutageView {
    pub since: String,
    pub seconds: i64,
    pub alerted_at: Option<String>,
    pub alert_due_at: Option<String>,
}

pub fn device_detail(r: &IdentityRecord, policy: &Policy, now: Timestamp) -> DeviceDetail {
    let s = status::classify(&r.identity, &r.state, now, policy);
    let newest_first = |alerts: bool| -> Vec<ChangeView> {
        r.history
            .0
            .iter()
            .rev()
            .filter(|c| matches!(c.kind, ChangeKind::Alert(_)) == alerts)
            .map(ChangeView::from)
            .collect()
    };
    DeviceDetail {
        device: DeviceView::of(r, &s, now),
        open_outage: r.state.outage.map(|o| OutageView {
            since: o.started_at.to_rfc3339(),
            seconds: now.seconds_since(o.started_at).max(0),
            alerted_at: o.alerted_at.map(Timestamp::to_rfc3339),
            alert_due_at: s.due_at.map(Timestamp::to_rfc3339),
        }),
        transitions: newest_first(false),
        alerts: newest_first(true),
    }
}

/// `GET /api/devices` answer: one page, and the cursor for the next (`null` at the end).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DevicePage {
    pub devices: Vec<DeviceView>,
    /// Pass as `after=` for the next page; `null` when every identity has been looked at.
    pub next: Option<String>,
    /// Identities looked at for this page (a filter may match few of them).
    pub scanned: usize,
}

/// The `state=` filter of `GET /api/devices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    Is(State),
    /// `pending` or `alerted`.
    Offline,
    Flapping,
    Silenced,
}

impl StateFilter {
    pub const ACCEPTED: &'static str =
        "connected, pending, alerted, offline (pending or alerted), flapping, silenced, deleted, unknown";

    pub fn parse(s: &str) -> Option<StateFilter> {
        Some(match s {
            "connected" => StateFilter::Is(State::Connected),
            "pending" => StateFilter::Is(State::Pending),
            "alerted" => StateFilter::Is(State::Alerted),
            "deleted" => StateFilter::Is(State::Deleted),
            "unknown" => StateFilter::Is(State::Unknown),
            "offline" => StateFilter::Offline,
            "flapping" => StateFilter::Flapping,
            "silenced" => StateFilter::Silenced,
            _ => return None,
        })
    }

    pub fn matches(self, s: &Status) -> bool {
        match self {
            StateFilter::Is(st) => s.state == st,
            StateFilter::Offline => matches!(s.state, State::Pending | State::Alerted),
            StateFilter::Flapping => s.flapping,
            StateFilter::Silenced => s.silenced_until.is_some(),
        }
    }
}

/// The opaque paging cursor: the last identity of a page, base64url of `hub \0 device \0 module`.
pub fn encode_cursor(id: &Identity) -> String {
    let raw = format!(
        "{}\0{}\0{}",
        id.hub(),
        id.device(),
        id.module().unwrap_or("")
    );
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The inverse of [`encode_cursor`]; `None` for anything it did not make.
pub fn decode_cursor(s: &str) -> Option<Identity> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let mut parts = raw.split('\0');
    let (hub, device, module) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || hub.is_empty() || device.is_empty() {
        return None;
    }
    Some(Identity::new(
        hub,
        device,
        (!module.is_empty()).then_some(module),
    ))
}

/// What the dashboard shows, from one pass over every identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dashboard {
    pub status: StatusView,
    /// Offline identities (pending and alerted), longest offline first, with their history.
    pub offline: Vec<(DeviceView, Vec<Change>)>,
    /// Offline identities beyond the ones listed.
    pub offline_more: u64,
    /// Flapping identities, with their history.
    pub flapping: Vec<(DeviceView, Vec<Change>)>,
    /// The latest alerts over every identity, newest first: (identity, the alert entry).
    pub recent_alerts: Vec<(Identity, Change)>,
    pub now: Timestamp,
}

/// Identities listed per section of the dashboard; the API pages through the rest.
pub const DASHBOARD_ROWS: usize = 200;
/// Alerts listed under "recent alerts".
pub const DASHBOARD_ALERTS: usize = 30;

/// Folds identities into a dashboard, one at a time (so any fleet size fits in memory).
#[derive(Debug, Default)]
pub struct DashboardBuilder {
    offline: Vec<(DeviceView, Vec<Change>)>,
    offline_total: u64,
    flapping: Vec<(DeviceView, Vec<Change>)>,
    alerts: Vec<(Identity, Change)>,
}

impl DashboardBuilder {
    pub fn add(&mut self, r: &IdentityRecord, policy: &Policy, now: Timestamp) {
        let s = status::classify(&r.identity, &r.state, now, policy);
        if matches!(s.state, State::Pending | State::Alerted) {
            self.offline_total += 1;
            self.offline
                .push((DeviceView::of(r, &s, now), r.history.0.clone()));
            if self.offline.len() > 2 * DASHBOARD_ROWS {
                self.trim_offline();
            }
        }
        if s.flapping && self.flapping.len() < DASHBOARD_ROWS {
            self.flapping
                .push((DeviceView::of(r, &s, now), r.history.0.clone()));
        }
        for c in &r.history.0 {
            if matches!(c.kind, ChangeKind::Alert(_)) {
                self.alerts.push((r.identity.clone(), *c));
            }
        }
        if self.alerts.len() > 4 * DASHBOARD_ALERTS {
            self.trim_alerts();
        }
    }

    fn trim_offline(&mut self) {
        // Longest offline first: the earliest start.
        self.offline
            .sort_by_key(|a| std::cmp::Reverse(a.0.offline_seconds));
        self.offline.truncate(DASHBOARD_ROWS);
    }

    fn trim_alerts(&mut self) {
        self.alerts.sort_by_key(|a| std::cmp::Reverse(a.1.at));
        self.alerts.truncate(DASHBOARD_ALERTS);
    }

    pub fn finish(mut self, status: StatusView, now: Timestamp) -> Dashboard {
        self.trim_offline();
        self.trim_alerts();
        Dashboard {
            status,
            offline_more: self.offline_total - self.offline.len() as u64,
            offline: self.offline,
            flapping: self.flapping,
            recent_alerts: self.alerts,
            now,
        }
    }
}
