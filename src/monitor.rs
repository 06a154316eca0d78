//! The service between the HTTP edge and the store: applies decoded deliveries, runs sweeps, keeps
//! counters. Both modes and every route go through one [`Monitor`].

use crate::alerts;
use crate::channels::{DeliveryReport, Notifier};
use crate::decode::Decoded;
use crate::log;
use crate::machine::{Alert, Outcome, Policy};
use crate::model::Timestamp;
use crate::store::{Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Outages claimed per store transaction during a sweep; a big outage is claimed in several.
/// Bigger chunks write each touched page once for more alerts (a 100k-alert sweep over a million
/// identities: 6.0 s in chunks of 5,000, 2.9 s in chunks of 20,000, BENCHMARKS.md); events that
/// arrive meanwhile wait for the chunk's commit (under a second).
const CLAIM_CHUNK: usize = 20_000;
/// Alert lines copied into one timer invocation's `Logs` (all of them always reach stderr).
const MAX_ALERT_LOG_LINES: usize = 100;
/// Rejected events of one delivery logged one by one (and listed in the host's `Logs`); the rest
/// are counted in one line, so a flood of junk cannot flood the log.
pub const MAX_REJECTION_LOG_LINES: usize = 10;

/// Running totals since start-up, reported on `GET /` and in sweep summaries.
#[derive(Debug, Default)]
pub struct Counters {
    pub events_applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub stale: AtomicU64,
    pub ignored: AtomicU64,
    pub out_of_scope: AtomicU64,
    pub rejected: AtomicU64,
    pub alerts_raised: AtomicU64,
    pub alerts_delivered: AtomicU64,
    pub store_failures: AtomicU64,
}

impl Counters {
    fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "eventsApplied": g(&self.events_applied),
            "duplicates": g(&self.duplicates),
            "stale": g(&self.stale),
            "ignored": g(&self.ignored),
            "outOfScope": g(&self.out_of_scope),
            "rejected": g(&self.rejected),
            "alertsRaised": g(&self.alerts_raised),
            "alertsDelivered": g(&self.alerts_delivered),
            "storeFailures": g(&self.store_failures),
        })
    }
}

/// What one delivery (one POST) amounted to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IngestReport {
    pub outcomes: Vec<Outcome>,
    pub alerts: Vec<Alert>,
    pub ignored: usize,
    /// Events about identities outside `CONNMON_INCLUDE` / `CONNMON_EXCLUDE`.
    pub out_of_scope: usize,
    /// Reasons of events that could not be understood (already logged).
    pub rejected: Vec<String>,
    /// Codes of `SubscriptionValidationEvent`s found in the delivery.
    pub validation_codes: Vec<String>,
}

impl IngestReport {
    /// One line for the host's `Logs`.
    pub fn summary(&self) -> String {
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for o in &self.outcomes {
            match counts.iter_mut().find(|(k, _)| *k == o.as_str()) {
                Some((_, n)) => *n += 1,
                None => counts.push((o.as_str(), 1)),
            }
        }
        let detail: Vec<String> = counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
        format!(
            "connmon: {} event(s) applied [{}], {} ignored, {} out of scope, {} rejected",
            self.outcomes.len(),
            detail.join(" "),
            self.ignored,
            self.out_of_scope,
            self.rejected.len()
        )
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub claimed: Vec<Alert>,
    pub delivery: DeliveryReport,
    pub queued_after: u64,
}

/// An alert raised this long after it was due comes from a backlog: connmon was down, or far
/// behind, or Event Grid held the events back.
pub const BACKLOG_LATENESS_SECS: i64 = 300;

impl SweepReport {
    /// `disconnected` alerts of this sweep that were due long before it.
    pub fn backlog(&self) -> usize {
        self.claimed
            .iter()
            .filter(|a| a.kind == crate::machine::AlertKind::Disconnected)
            .filter(|a| a.downtime_seconds - a.grace_period_seconds > BACKLOG_LATENESS_SECS)
            .count()
    }

    /// The one-line summary for the timer's `Logs`, followed by (a bounded number of) alert lines.
    pub fn log_lines(&self, policy: &Policy) -> Vec<String> {
        let backlog = self.backlog();
        let mut lines = vec![format!(
            "connmon sweep: {} new disconnected alert(s), {} delivered, {} queued for retry{}{}{} (grace {}s)",
            self.claimed.iter().filter(|a| a.kind == crate::machine::AlertKind::Disconnected).count(),
            self.delivery.delivered,
            self.queued_after,
            if self.delivery.problems.is_empty() {
                String::new()
            } else {
                format!(", delivery failing: {}", self.delivery.problems.join("; "))
            },
            match self
                .claimed
                .iter()
                .filter(|a| a.kind != crate::machine::AlertKind::Disconnected)
                .count()
            {
                0 => String::new(),
                n => format!(", {n} reminder/flapping alert(s)"),
            },
            if backlog == 0 {
                String::new()
            } else {
                format!(
                    ", {backlog} of them from a replayed backlog (due over {}s ago: connmon was down or behind; grouped per hub for people)",
                    BACKLOG_LATENESS_SECS
                )
            },
            policy.grace_seconds()
        )];
        lines.extend(
            self.claimed
                .iter()
                .take(MAX_ALERT_LOG_LINES)
                .map(|a| format!("ALERT {}", alerts::log_line(a))),
        );
        if self.claimed.len() > MAX_ALERT_LOG_LINES {
            lines.push(format!(
                "… and {} more alert(s) (see stderr)",
                self.claimed.len() - MAX_ALERT_LOG_LINES
            ));
        }
        lines
    }
}

/// The service. Cheap to share: hold it in an `Arc`.
pub struct Monitor {
    store: Arc<dyn Store>,
    notifier: Notifier,
    policy: Policy,
    pub counters: Counters,
    /// Sweeps never overlap: the standalone ticker and a `POST /DisconnectTimer` share it.
    sweep_lock: tokio::sync::Mutex<()>,
}

impl Monitor {
    pub fn new(store: Arc<dyn Store>, notifier: Notifier, policy: Policy) -> Monitor {
        Monitor {
            store,
            notifier,
            policy,
            counters: Counters::default(),
            sweep_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The timer function's queue output binding, if declared (its alerts go in `Outputs`).
    pub fn queue_binding(&self) -> Option<&str> {
        self.notifier.queue_binding()
    }

    /// Applies a decoded delivery. Returns only after every event's effect is durable; a store
    /// failure fails the whole delivery (so the sender retries it) and nothing is acknowledged.
    pub async fn ingest(
        &self,
        items: Vec<Decoded>,
        received_at: Timestamp,
    ) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let mut events = Vec::new();
        for item in items {
            match item {
                // Out of scope: acknowledged and not tracked (`CONNMON_INCLUDE` / `EXCLUDE`).
                Decoded::Event(e) if !self.policy.scope.contains(&e.identity) => {
                    report.out_of_scope += 1
                }
                Decoded::Event(e) => events.push(e),
                Decoded::Validation { code } => report.validation_codes.push(code),
                Decoded::Ignored { .. } => report.ignored += 1,
                Decoded::Rejected { reason, event_id } => {
                    if report.rejected.len() < MAX_REJECTION_LOG_LINES {
                        log::warn(format_args!(
                            "event rejected (acknowledged, not applied): {reason}{}",
                            event_id
                                .map(|id| format!(" [event id {id:?}]"))
                                .unwrap_or_default()
                        ));
                    }
                    report.rejected.push(reason);
                }
            }
        }
        if report.rejected.len() > MAX_REJECTION_LOG_LINES {
            log::warn(format_args!(
                "{} more event(s) of this delivery rejected (acknowledged, not applied)",
                report.rejected.len() - MAX_REJECTION_LOG_LINES
            ));
        }
        Counters::add(&self.counters.ignored, report.ignored);
        Counters::add(&self.counters.out_of_scope, report.out_of_scope);
        Counters::add(&self.counters.rejected, report.rejected.len());
        if events.is_empty() {
            return Ok(report);
        }
        let applied = match self.store.apply(events, received_at).await {
            Ok(a) => a,
            Err(e) => {
                Counters::add(&self.counters.store_failures, 1);
                log::error(format_args!(
                    "cannot apply events, asking the sender to retry: {e}"
                ));
                return Err(e);
            }
        };
        for a in applied {
            match a.outcome {
                Outcome::Duplicate => Counters::add(&self.counters.duplicates, 1),
                Outcome::Stale => Counters::add(&self.counters.stale, 1),
                _ => Counters::add(&self.counters.events_applied, 1),
            }
            if let Some(alert) = a.alert {
                log::alert(&alerts::log_line(&alert));
                Counters::add(&self.counters.alerts_raised, 1);
                report.alerts.push(alert);
            }
            report.outcomes.push(a.outcome);
        }
        Ok(report)
    }

    /// One sweep: claims every outage due now, then delivers the outbox. `now` is read after the
    /// previous sweep has finished, so a slow sweep never stamps the next one's alerts early.
    pub async fn sweep(&self) -> Result<SweepReport, StoreError> {
        let _guard = self.sweep_lock.lock().await;
        let result = self.sweep_locked(Timestamp::now()).await;
        if let Err(e) = &result {
            Counters::add(&self.counters.store_failures, 1);
            log::error(format_args!("sweep failed, the next one retries: {e}"));
        }
        result
    }

    async fn sweep_locked(&self, now: Timestamp) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport::default();
        loop {
            let claimed = self.store.claim_due(now, CLAIM_CHUNK).await?;
            let n = claimed.len();
            for a in &claimed {
                log::alert(&alerts::log_line(a));
            }
            Counters::add(&self.counters.alerts_raised, n);
            report.claimed.extend(claimed);
            if n < CLAIM_CHUNK {
                break;
            }
        }
        report.delivery = self.notifier.deliver(self.store.clone(), now).await?;
        Counters::add(&self.counters.alerts_delivered, report.delivery.delivered);
        report.queued_after = self.store.queue_len().await?;
        Ok(report)
    }
}
