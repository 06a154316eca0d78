//! PagerDuty Events API v2: one `POST {events_url}` per event, events in the order of the batch's
//! notices (`grouping.rs`).
//!
//! | notice | events |
//! |---|---|
//! | a `disconnected` alert | `trigger`, `dedup_key` = the alert's `dedupKey` |
//! | a `reconnected` alert | `resolve`, same `dedup_key` |
//! | an `outage` (≥ threshold of one hub offline in the batch) | one `trigger` for the hub, `dedup_key` = the summary's `dedupKey`; no per-device triggers |
//! | an `outage_resolved` | `resolve` of that key, then a `resolve` per identity |
//! | a `flapping` alert | `trigger` with severity `warning`, `dedup_key` = the alert's |
//! | a `flapping_resolved` alert | `resolve`, same `dedup_key` |
//! | a `reminder` | nothing: the incident is still open, PagerDuty re-notifies by its escalation policy |
//!
//! Per-identity resolves are always sent: an identity that went offline on its own (and got its
//! own incident) may come back in a group. PagerDuty ignores a resolve for a key with no open
//! alert. The outage's key is a hash of its identities' keys, so an outage incident resolves by
//! itself only when the same identities come back in one batch; otherwise it is resolved by hand.
//!
//! A batch is delivered only when every event was accepted (202 `{"status": "success"}`). When
//! event k fails the failure is returned and the batch retried later: the events before k were
//! accepted, and sending them again is harmless (a repeated trigger attaches to the open alert of
//! its `dedup_key`, a repeated resolve is ignored). They are not sent again by this process
//! anyway: accepted events are remembered until their batch completes, so a batch larger than
//! PagerDuty's rate limit (about 120 events a minute per routing key) still makes progress.
//!
//! Answers: 400 (an invalid event) is a rejection: the batch stays queued, retried every few
//! minutes up to an hour, logged loudly. 429 waits `Retry-After` when given, else 60 s (the
//! limit is per minute). 5xx and network errors are retried soon. The routing key is in every
//! request body and in no log line: failures are scrubbed of it.

use super::grouping::{display_id, group, outage_object, Notice};
use super::people;
use super::{http_client, post_json, Channel, Failure};
use crate::alerts::AlertBody;
use crate::settings::PagerDutySettings;
use crate::store::BoxFuture;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// PagerDuty's limit on `payload.summary`.
pub const SUMMARY_CHARS: usize = 1_024;
/// `payload.class` of an offline device's or hub outage's trigger.
pub const CLASS: &str = "device-connectivity";
/// `payload.class` of a `flapping` trigger.
pub const FLAPPING_CLASS: &str = "device-flapping";
/// `payload.class` of a `hub_quiet` trigger (the dead-man's switch).
pub const HUB_CLASS: &str = "hub-silence";
/// `payload.class` of a `store_reset` trigger.
pub const STORE_RESET_CLASS: &str = "store-reset";
/// The wait after a 429 without `Retry-After`: PagerDuty's limit is counted per minute.
pub const THROTTLE_WAIT: Duration = Duration::from_secs(60);
/// Accepted events remembered at most (a batch is at most `people::BATCH` alerts, so at most
/// twice as many events plus outages; beyond this something is wrong and forgetting is safe).
const MEMORY: usize = 4 * people::BATCH;

pub struct PagerDuty {
    settings: PagerDutySettings,
    client: reqwest::Client,
    group_threshold: usize,
    /// `action dedup_key` of events accepted for the batch being delivered (see the module docs).
    /// A std mutex: never held across an `.await`.
    accepted: Mutex<HashSet<String>>,
}

impl PagerDuty {
    pub fn new(settings: PagerDutySettings, group_threshold: usize) -> PagerDuty {
        PagerDuty {
            settings,
            client: http_client(),
            group_threshold,
            accepted: Mutex::new(HashSet::new()),
        }
    }

    fn remembered(&self, mark: &str) -> bool {
        self.accepted.lock().expect("not poisoned").contains(mark)
    }

    fn remember(&self, mark: String) {
        let mut m = self.accepted.lock().expect("not poisoned");
        if m.len() >= MEMORY {
            m.clear();
        }
        m.insert(mark);
    }

    fn forget_all(&self) {
        self.accepted.lock().expect("not poisoned").clear();
    }
}

/// One Events API request. Not `Debug`: the body holds the routing key.
pub struct Event {
    /// `trigger` or `resolve`.
    pub action: &'static str,
    pub dedup_key: String,
    pub body: Value,
}

fn trigger(routing_key: &str, dedup_key: &str, payload: Value) -> Event {
    Event {
        action: "trigger",
        dedup_key: dedup_key.to_string(),
        body: json!({
            "routing_key": routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key,
            "payload": payload,
            "client": "connmon",
        }),
    }
}

fn resolve(routing_key: &str, dedup_key: &str) -> Event {
    Event {
        action: "resolve",
        dedup_key: dedup_key.to_string(),
        body: json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        }),
    }
}

/// `sensor-42 offline on hub myhub since 2026-11-27 10:00:00 UTC (grace 5m)`.
fn single_summary(a: &AlertBody) -> String {
    let summary = format!(
        "{} offline on hub {} since {} (grace {})",
        display_id(a),
        a.hub,
        people::time(&a.disconnected_at),
        people::duration(a.grace_period_seconds)
    );
    people::clip(&summary, SUMMARY_CHARS)
}

/// `no events from hub myhub since <time> (30m): check the Event Grid subscription`.
fn hub_quiet_summary(a: &AlertBody) -> String {
    let summary = format!(
        "no events from hub {} since {} ({}): check the Event Grid subscription and the hub",
        a.hub,
        people::time(&a.disconnected_at),
        people::duration(a.downtime_seconds)
    );
    people::clip(&summary, SUMMARY_CHARS)
}

/// `sensor-42 flapping on hub myhub: 6 silent reconnects within 30m (<hint>)`.
fn flapping_summary(a: &AlertBody) -> String {
    let mut summary = format!(
        "{} flapping on hub {}: {} silent reconnects within {}",
        display_id(a),
        a.hub,
        a.disconnects.unwrap_or_default(),
        people::duration(a.window_seconds.unwrap_or_default())
    );
    if let Some(h) = &a.hint {
        summary.push_str(&format!(" ({h})"));
    }
    people::clip(&summary, SUMMARY_CHARS)
}

/// The `trigger` of a `store_reset`: about connmon itself (no hub or device), a warning that
/// stays open until someone has looked at what was forgotten.
fn store_reset_trigger(routing_key: &str, a: &AlertBody) -> Event {
    let summary = format!(
        "connmon's store came back empty ({}): {}",
        a.detail.as_deref().unwrap_or("state lost"),
        crate::alerts::STORE_RESET_MEANING
    );
    trigger(
        routing_key,
        &a.dedup_key,
        json!({
            "summary": people::clip(&summary, SUMMARY_CHARS),
            "source": "connmon",
            "severity": "warning",
            "timestamp": a.disconnected_at,
            "class": STORE_RESET_CLASS,
            "custom_details": a,
        }),
    )
}

/// A `trigger` about one identity, keyed by its alert's `dedupKey`.
fn device_trigger(
    routing_key: &str,
    a: &AlertBody,
    summary: impl serde::Serialize,
    severity: &str,
    class: &str,
) -> Event {
    trigger(
        routing_key,
        &a.dedup_key,
        json!({
            "summary": summary,
            "source": people::clip(&a.hub, 255),
            "severity": severity,
            "timestamp": a.disconnected_at,
            "component": people::clip(&display_id(a), 255),
            "group": people::clip(&a.hub, 255),
            "class": class,
            "custom_details": a,
        }),
    )
}

/// The events for a batch (oldest first), in order.
pub fn events(alerts: &[AlertBody], group_threshold: usize, routing_key: &str) -> Vec<Event> {
    let mut out = Vec::new();
    for n in group(alerts, group_threshold) {
        match n {
            Notice::Single(a) => match a.kind.as_str() {
                "disconnected" => out.push(device_trigger(
                    routing_key,
                    a,
                    single_summary(a),
                    "error",
                    CLASS,
                )),
                "reconnected" | "flapping_resolved" | "hub_resumed" => {
                    out.push(resolve(routing_key, &a.dedup_key))
                }
                "hub_quiet" => out.push(device_trigger(
                    routing_key,
                    a,
                    hub_quiet_summary(a),
                    "critical",
                    HUB_CLASS,
                )),
                "store_reset" => out.push(store_reset_trigger(routing_key, a)),
                "flapping" => out.push(device_trigger(
                    routing_key,
                    a,
                    flapping_summary(a),
                    "warning",
                    FLAPPING_CLASS,
                )),
                // A reminder repeats an open incident's alert: PagerDuty keeps the incident open and
                // re-notifies by its escalation policy, and a repeated trigger on an open key
                // notifies nobody — so it is not sent (nor a burst of them after a storm). A kind
                // this version does not know has nothing to trigger or resolve.
                _ => {}
            },
            Notice::Outage {
                hub,
                resolved,
                alerts,
            } => {
                let summary = outage_object(hub, resolved, &alerts);
                let key = summary["dedupKey"].as_str().unwrap_or_default().to_string();
                if resolved {
                    out.push(resolve(routing_key, &key));
                    out.extend(alerts.iter().map(|a| resolve(routing_key, &a.dedup_key)));
                    continue;
                }
                let times = || alerts.iter().map(|a| a.disconnected_at.as_str());
                let first = people::earliest(times());
                let mut details = summary.clone();
                details["firstDisconnectedAt"] = json!(first);
                details["lastDisconnectedAt"] = json!(people::latest(times()));
                details["gracePeriodSeconds"] =
                    json!(alerts.first().map(|a| a.grace_period_seconds));
                let mut payload = json!({
                    "summary": people::clip(
                        &format!("{} devices offline on hub {hub}", alerts.len()),
                        SUMMARY_CHARS
                    ),
                    "source": people::clip(hub, 255),
                    "severity": "error",
                    "group": people::clip(hub, 255),
                    "class": CLASS,
                    "custom_details": details,
                });
                if let Some(t) = first {
                    payload["timestamp"] = json!(t);
                }
                out.push(trigger(routing_key, &key, payload));
            }
        }
    }
    out
}

/// A 2xx is accepted unless its JSON says otherwise (`{"status": "success", ...}` is the answer).
fn accept(status: u16, answer: &str) -> Result<(), Failure> {
    match serde_json::from_str::<Value>(answer) {
        Ok(v) => match v.get("status").and_then(Value::as_str) {
            Some(s) if s != "success" => Err(Failure::Transient(format!(
                "HTTP {status} with status {:?}",
                people::clip(s, 40)
            ))),
            _ => Ok(()),
        },
        Err(_) => Ok(()),
    }
}

impl Channel for PagerDuty {
    fn name(&self) -> &'static str {
        "pagerduty"
    }

    fn batch_size(&self) -> usize {
        people::BATCH
    }

    fn send<'a>(&'a self, alerts: &'a [AlertBody]) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let key = self.settings.routing_key.expose();
            for ev in events(alerts, self.group_threshold, key) {
                let mark = format!("{} {}", ev.action, ev.dedup_key);
                if self.remembered(&mark) {
                    continue;
                }
                let result = post_json(
                    &self.client,
                    &self.settings.events_url,
                    ev.body.to_string(),
                    std::slice::from_ref(key),
                    accept,
                )
                .await;
                if let Err(f) = result {
                    return Err(match f {
                        Failure::Throttled(m, None) => Failure::Throttled(m, Some(THROTTLE_WAIT)),
                        other => other,
                    });
                }
                self.remember(mark);
            }
            self.forget_all();
            Ok(())
        })
    }
}
