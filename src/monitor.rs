//! The service between the HTTP edge and the store: applies decoded deliveries, runs sweeps, keeps
//! counters. Both modes and every route go through one [`Monitor`].

use crate::alerts;
use crate::api;
use crate::channels::{DeliveryReport, Notifier};
use crate::decode::{clip, Decoded};
use crate::log;
use crate::machine::{self, Alert, Outcome, Policy};
use crate::metrics::{self, Metrics};
use crate::model::{ConnectionEvent, Identity, Timestamp};
use crate::status;
use crate::store::{Counts, QuietCheck, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Outages claimed per store transaction during a sweep; a big outage is claimed in several.
/// Bigger chunks write each touched page once for more alerts (a 100k-alert sweep over a million
/// identities: 6.0 s in chunks of 5,000, 2.9 s in chunks of 20,000, BENCHMARKS.md); events that
/// arrive meanwhile wait for the chunk's commit (under a second).
const CLAIM_CHUNK: usize = 20_000;
/// Alert lines copied into one timer invocation's `Logs` (all of them always reach stderr).
const MAX_ALERT_LOG_LINES: usize = 100;
/// Identities whose future event time was logged, at most (then it starts over: a few of them are
/// logged once more).
const FUTURE_LOGGED_CAP: usize = 10_000;
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

/// Rejects one event of a delivery: logged (the first [`MAX_REJECTION_LOG_LINES`] of it) and
/// kept in the report; counted once the delivery is done.
fn reject(report: &mut IngestReport, reason: String, event_id: Option<&str>) {
    if report.rejected.len() < MAX_REJECTION_LOG_LINES {
        log::warn(format_args!(
            "event rejected (acknowledged, not applied): {reason}{}",
            event_id
                .filter(|id| !id.is_empty())
                .map(|id| format!(" [event id {id:?}]"))
                .unwrap_or_default()
        ));
    }
    report.rejected.push(reason);
}

/// What [`Monitor::ingest`] keeps of an event while the store applies it.
struct Seen {
    identity: Identity,
    kind: &'static str,
    event_id: String,
    /// The event's own time, when it is too far ahead of its receipt to be used.
    future_time: Option<Timestamp>,
}

impl Seen {
    fn of(e: &ConnectionEvent, received_at: Timestamp) -> Seen {
        Seen {
            identity: e.identity.clone(),
            kind: e.kind.type_name(),
            event_id: e.event_id.clone(),
            future_time: e.time.filter(|_| machine::too_far_ahead(e, received_at)),
        }
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
            "connmon sweep: {} new disconnected alert(s), {} delivered, {} queued for retry{}{}{}{} (grace {}s)",
            self.claimed.iter().filter(|a| a.kind == crate::machine::AlertKind::Disconnected).count(),
            self.delivery.delivered,
            self.queued_after,
            if self.delivery.problems.is_empty() {
                String::new()
            } else {
                format!(", delivery failing: {}", self.delivery.problems.join("; "))
            } + &if self.delivery.still_delivering.is_empty() {
                String::new()
            } else {
                format!(", still delivering: {}", self.delivery.still_delivering.join(", "))
            },
            match self.delivery.dead_lettered {
                0 => String::new(),
                n => format!(", {n} unreadable outbox entr(ies) set aside as dead letters"),
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

/// A hub's latest event as this process heard it, and when that was last written to the store.
#[derive(Debug, Clone, Copy)]
struct HubSeen {
    latest: Timestamp,
    /// When `latest` was last written (`None`: not yet); written again once it is this old.
    written_at: Option<Timestamp>,
    written: Timestamp,
}

/// A hub's receipt time is written to the store at most this often per process (and at every
/// sweep): the dead-man's switch counts in minutes, so this costs a store write per hub every 15 s
/// under traffic instead of one per event. A shorter `CONNMON_HUB_QUIET_AFTER` writes more often
/// (a quarter of it), so another instance's sweep never sees a busy hub as quiet.
pub const HUB_TOUCH_EVERY_MS: i64 = 15_000;
/// Functions mode: metrics go to the log at most this often per process (and after every sweep).
pub const METRIC_LINE_EVERY_MS: i64 = 60_000;
/// `GET /api/status` and `/metrics` reuse the store's counts for this long by default (counting
/// reads every identity); a sweep in this process counts again.
pub const COUNTS_TTL_MS: i64 = 5_000;

/// The service. Cheap to share: hold it in an `Arc`.
pub struct Monitor {
    store: Arc<dyn Store>,
    notifier: Notifier,
    policy: Policy,
    pub counters: Counters,
    /// The Prometheus / Application Insights figures.
    pub metrics: Metrics,
    /// Sweeps never overlap: the standalone ticker and a `POST /DisconnectTimer` share it.
    sweep_lock: tokio::sync::Mutex<()>,
    /// `CONNMON_HUB_QUIET_AFTER`.
    hub_quiet_after: Option<Duration>,
    /// When this process started: quiet time is never counted from before it.
    started_at: Timestamp,
    hubs: std::sync::Mutex<HashMap<String, HubSeen>>,
    /// Identities whose event time from the future was logged (see [`Monitor::note_future_time`]).
    future_logged: std::sync::Mutex<HashSet<Identity>>,
    /// Functions mode: write metrics as log lines (there is no `/metrics` scraper there).
    metric_lines: bool,
    last_metric_line: std::sync::Mutex<Timestamp>,
    counts_cache: tokio::sync::Mutex<Option<(Timestamp, Counts)>>,
    counts_ttl_ms: i64,
}

impl Monitor {
    pub fn new(store: Arc<dyn Store>, notifier: Notifier, policy: Policy) -> Monitor {
        let now = Timestamp::now();
        Monitor {
            store,
            notifier,
            policy,
            counters: Counters::default(),
            metrics: Metrics::default(),
            sweep_lock: tokio::sync::Mutex::new(()),
            hub_quiet_after: None,
            started_at: now,
            hubs: std::sync::Mutex::new(HashMap::new()),
            future_logged: std::sync::Mutex::new(HashSet::new()),
            metric_lines: false,
            last_metric_line: std::sync::Mutex::new(now),
            counts_cache: tokio::sync::Mutex::new(None),
            counts_ttl_ms: COUNTS_TTL_MS,
        }
    }

    /// How long counts are reused (Table Storage: counting reads every entity, ~1,000 queries at
    /// a million identities, so it is done less often).
    pub fn with_counts_ttl(mut self, ttl: Duration) -> Monitor {
        self.counts_ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self
    }

    /// Turns the dead-man's switch on (`CONNMON_HUB_QUIET_AFTER`).
    pub fn with_hub_quiet_after(mut self, d: Option<Duration>) -> Monitor {
        self.hub_quiet_after = d;
        self
    }

    /// How often this process writes a busy hub's arrival time.
    fn hub_touch_every_ms(&self) -> i64 {
        let quarter = self.hub_quiet_after.map_or(i64::MAX, |d| {
            i64::try_from(d.as_millis() / 4).unwrap_or(i64::MAX)
        });
        HUB_TOUCH_EVERY_MS.min(quarter).max(1_000)
    }

    /// Functions mode: metrics as log lines.
    pub fn with_metric_lines(mut self, on: bool) -> Monitor {
        self.metric_lines = on;
        self
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn hub_quiet_after(&self) -> Option<Duration> {
        self.hub_quiet_after
    }

    /// The store's counts, at most [`COUNTS_TTL_MS`] old.
    pub async fn counts(&self, now: Timestamp) -> Result<Counts, StoreError> {
        let mut cache = self.counts_cache.lock().await;
        if let Some((at, c)) = *cache {
            if now.unix_millis() - at.unix_millis() < self.counts_ttl_ms && now >= at {
                return Ok(c);
            }
        }
        let c = self.store.counts(now).await?;
        *cache = Some((now, c));
        Ok(c)
    }

    /// Notes events from `hubs` received at `at`; returns the hubs whose time is due to be written.
    fn note_hubs(&self, hubs: &[String], at: Timestamp) -> Vec<(String, Timestamp)> {
        let every = self.hub_touch_every_ms();
        let mut seen = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        for hub in hubs {
            let e = seen.entry(hub.clone()).or_insert(HubSeen {
                latest: at,
                written_at: None,
                written: Timestamp::from_unix_millis(i64::MIN),
            });
            e.latest = e.latest.max(at);
            let stale = e
                .written_at
                .is_none_or(|w| at.unix_millis() - w.unix_millis() >= every);
            if stale && e.latest > e.written && !due.iter().any(|(h, _)| h == hub) {
                due.push((hub.clone(), e.latest));
            }
        }
        due
    }

    /// Every hub time not yet written (before a sweep checks them).
    fn unwritten_hubs(&self) -> Vec<(String, Timestamp)> {
        let seen = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .filter(|(_, e)| e.latest > e.written)
            .map(|(h, e)| (h.clone(), e.latest))
            .collect()
    }

    /// Writes hub times; remembers what was written only if the write succeeded (a failed one is
    /// tried again with the next event or sweep, and logged, as nothing else depends on it).
    async fn touch_hubs(&self, due: Vec<(String, Timestamp)>, now: Timestamp) {
        if due.is_empty() {
            return;
        }
        match self.store.touch_hubs(due.clone()).await {
            Ok(()) => {
                let mut seen = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
                for (hub, at) in due {
                    if let Some(e) = seen.get_mut(&hub) {
                        e.written = e.written.max(at);
                        e.written_at = Some(now);
                    }
                }
            }
            Err(e) => {
                self.metrics.add(&metrics::STORE_FAILURES, &[], 1);
                log::warn(format_args!(
                    "cannot record the hubs' last event times: {e}"
                ));
            }
        }
    }

    /// Functions mode: writes the metrics that moved as one log line, at most once a minute
    /// unless `force`d (after a sweep).
    pub fn metric_line(&self, now: Timestamp, force: bool) {
        if !self.metric_lines {
            return;
        }
        {
            let mut last = self
                .last_metric_line
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !force && now.unix_millis() - last.unix_millis() < METRIC_LINE_EVERY_MS {
                return;
            }
            *last = now;
        }
        if let Some(line) = self.metrics.delta_line() {
            log::info(format_args!("connmon_metrics {line}"));
        }
    }

    /// The timer function's queue output binding, if declared (its alerts go in `Outputs`).
    pub fn queue_binding(&self) -> Option<&str> {
        self.notifier.queue_binding()
    }

    /// Applies a decoded delivery. Returns only after every event's effect is durable; a store
    /// failure fails the whole delivery (so the sender retries it) and nothing is acknowledged.
    /// An event the store refuses for what it holds is rejected alone, like one decode rejects.
    pub async fn ingest(
        &self,
        items: Vec<Decoded>,
        received_at: Timestamp,
    ) -> Result<IngestReport, StoreError> {
        let mut report = IngestReport::default();
        let mut events = Vec::new();
        let mut hubs: Vec<String> = Vec::new();
        for item in items {
            if let Decoded::Event(e) = &item {
                if !hubs.iter().any(|h| h == e.identity.hub()) {
                    hubs.push(e.identity.hub().to_string());
                }
            }
            match item {
                // Out of scope: acknowledged and not tracked (`CONNMON_INCLUDE` / `EXCLUDE`).
                Decoded::Event(e) if !self.policy.scope.contains(&e.identity) => {
                    report.out_of_scope += 1
                }
                Decoded::Event(e) => events.push(e),
                Decoded::Validation { code } => report.validation_codes.push(code),
                Decoded::Ignored { .. } => report.ignored += 1,
                Decoded::Rejected { reason, event_id } => {
                    reject(&mut report, reason, event_id.as_deref())
                }
            }
        }
        Counters::add(&self.counters.ignored, report.ignored);
        Counters::add(&self.counters.out_of_scope, report.out_of_scope);
        self.metrics.add_all([
            (&metrics::IGNORED, vec![], report.ignored as u64),
            (&metrics::OUT_OF_SCOPE, vec![], report.out_of_scope as u64),
        ]);
        let result = self.apply(events, received_at, &mut report).await;
        if report.rejected.len() > MAX_REJECTION_LOG_LINES {
            log::warn(format_args!(
                "{} more event(s) of this delivery rejected (acknowledged, not applied)",
                report.rejected.len() - MAX_REJECTION_LOG_LINES
            ));
        }
        Counters::add(&self.counters.rejected, report.rejected.len());
        let rejected = report.rejected.len() as u64;
        self.metrics.add(&metrics::REJECTED, &[], rejected);
        if result.is_ok() {
            // Only deliveries that were accepted count as signs of life.
            let due = self.note_hubs(&hubs, received_at);
            self.touch_hubs(due, received_at).await;
        }
        self.metric_line(received_at, false);
        result.map(|()| report)
    }

    async fn apply(
        &self,
        events: Vec<ConnectionEvent>,
        received_at: Timestamp,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // What the log lines and metrics need of each event once the store has it.
        let seen: Vec<Seen> = events.iter().map(|e| Seen::of(e, received_at)).collect();
        let results = match self.store.apply(events, received_at).await {
            Ok(a) => a,
            Err(e) => {
                self.metrics.add(&metrics::STORE_FAILURES, &[], 1);
                Counters::add(&self.counters.store_failures, 1);
                log::error(format_args!(
                    "cannot apply events, asking the sender to retry: {e}"
                ));
                return Err(e);
            }
        };
        for (result, seen) in results.into_iter().zip(seen) {
            let a = match result {
                Ok(a) => a,
                Err(refused) => {
                    let reason = format!(
                        "{} event of {}: {}",
                        seen.kind,
                        clip(&seen.identity.to_string()),
                        refused.reason
                    );
                    reject(report, reason, Some(&clip(&seen.event_id)));
                    continue;
                }
            };
            if let Some(time) = seen.future_time {
                self.note_future_time(&seen, time, received_at);
            }
            let labels = [seen.kind, a.outcome.as_str()];
            self.metrics.add(&metrics::EVENTS, &labels, 1);
            match a.outcome {
                Outcome::Duplicate => Counters::add(&self.counters.duplicates, 1),
                Outcome::Stale => Counters::add(&self.counters.stale, 1),
                _ => Counters::add(&self.counters.events_applied, 1),
            }
            if let Some(alert) = a.alert {
                let kind = alert.kind.as_str();
                self.metrics.add(&metrics::ALERTS_RAISED, &[kind], 1);
                log::alert(&alerts::log_line(&alert));
                Counters::add(&self.counters.alerts_raised, 1);
                report.alerts.push(alert);
            }
            report.outcomes.push(a.outcome);
        }
        Ok(())
    }

    /// An applied event whose own time was too far ahead of its receipt (the rules used the
    /// receipt time): counted every time, logged once per identity (per process), so a device
    /// with a broken clock does not fill the log.
    fn note_future_time(&self, seen: &Seen, time: Timestamp, received_at: Timestamp) {
        self.metrics.add(&metrics::FUTURE_TIME, &[seen.kind], 1);
        let first = {
            let mut logged = self.future_logged.lock().unwrap_or_else(|p| p.into_inner());
            if logged.len() >= FUTURE_LOGGED_CAP && !logged.contains(&seen.identity) {
                logged.clear();
            }
            logged.insert(seen.identity.clone())
        };
        if first {
            log::warn(format_args!(
                "{} event of {} has eventTime {time}, more than {}s after it was received \
                 ({received_at}): a clock is wrong, so the receipt time is used (logged once per \
                 identity; counted in connmon_events_future_time_total)",
                seen.kind,
                clip(&seen.identity.to_string()),
                machine::MAX_CLOCK_SKEW.as_secs(),
            ));
        }
    }

    /// A timer invocation's sweep: claims every outage due now, kicks every channel's delivery
    /// and waits for those passes, at most [`Notifier::delivery_wait`] (see
    /// [`Monitor::sweep_waiting`]).
    pub async fn sweep(&self) -> Result<SweepReport, StoreError> {
        self.sweep_waiting(self.notifier.delivery_wait()).await
    }

    /// One sweep: claims every outage due now (sweeps never claim at the same time: `now` is read
    /// once the previous sweep's claims are done, so a slow sweep never stamps the next one's
    /// alerts early), then kicks every channel's worker and waits up to `wait` for the passes that
    /// began after that kick. Only the claims hold the sweep lock: a channel still sending holds
    /// back neither another channel nor the next sweep. The report counts every delivery the
    /// workers finished since the previous sweep's report, and names the channels still busy.
    pub async fn sweep_waiting(&self, wait: Duration) -> Result<SweepReport, StoreError> {
        let started = std::time::Instant::now();
        let (now, claimed) = {
            let _guard = self.sweep_lock.lock().await;
            let now = Timestamp::now();
            (now, self.claim_all(now).await)
        };
        let result = match claimed {
            Ok(claimed) => self.deliver(claimed, now, wait).await,
            Err(e) => Err(e),
        };
        self.counts_cache.lock().await.take();
        self.metrics.sweep_took(started.elapsed());
        if let Err(e) = &result {
            self.metrics.add(&metrics::STORE_FAILURES, &[], 1);
            Counters::add(&self.counters.store_failures, 1);
            log::error(format_args!("sweep failed, the next one retries: {e}"));
        }
        self.metric_line(now, true);
        result
    }

    /// The claims of one sweep, the dead-man's switch's included.
    async fn claim_all(&self, now: Timestamp) -> Result<Vec<Alert>, StoreError> {
        let mut claimed_all = Vec::new();
        loop {
            let claimed = self.store.claim_due(now, CLAIM_CHUNK).await?;
            let n = claimed.len();
            for a in &claimed {
                log::alert(&alerts::log_line(a));
            }
            Counters::add(&self.counters.alerts_raised, n);
            claimed_all.extend(claimed);
            if n < CLAIM_CHUNK {
                break;
            }
        }
        // The dead-man's switch, with every hub time this process knows written first.
        self.touch_hubs(self.unwritten_hubs(), now).await;
        let quiet = self.hub_quiet_after.map(|quiet_after| QuietCheck {
            quiet_after,
            watching_since: self.started_at,
        });
        let hub_alerts = self.store.finish_sweep(now, quiet).await?;
        for a in &hub_alerts {
            log::alert(&alerts::log_line(a));
        }
        Counters::add(&self.counters.alerts_raised, hub_alerts.len());
        let resets = hub_alerts
            .iter()
            .filter(|a| a.kind == crate::machine::AlertKind::StoreReset)
            .count();
        self.metrics.add(&metrics::STORE_RESETS, &[], resets as u64);
        claimed_all.extend(hub_alerts);
        self.metrics.add_all(claimed_all.iter().map(|a| {
            (
                &metrics::ALERTS_RAISED,
                vec![a.kind.as_str().to_string()],
                1,
            )
        }));
        Ok(claimed_all)
    }

    /// Kicks every channel and collects what they delivered (see [`Monitor::sweep_waiting`]).
    async fn deliver(
        &self,
        claimed: Vec<Alert>,
        now: Timestamp,
        wait: Duration,
    ) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport {
            claimed,
            ..SweepReport::default()
        };
        let tickets = self.notifier.kick(&self.store);
        report.delivery = self
            .notifier
            .collect(&self.store, now, tickets, wait)
            .await?;
        Counters::add(&self.counters.alerts_delivered, report.delivery.delivered);
        Counters::add(
            &self.counters.store_failures,
            report.delivery.store_failures,
        );
        self.metrics.add(
            &metrics::STORE_FAILURES,
            &[],
            report.delivery.store_failures as u64,
        );
        self.metrics
            .add_all(report.delivery.delivered_by.iter().map(|(c, k, n)| {
                (
                    &metrics::ALERTS_DELIVERED,
                    vec![c.clone(), k.clone()],
                    *n as u64,
                )
            }));
        self.metrics.add(
            &metrics::DEAD_LETTERS,
            &[],
            report.delivery.dead_lettered as u64,
        );
        self.metrics.add_all(
            report
                .delivery
                .failed_channels
                .iter()
                .map(|c| (&metrics::DELIVERY_FAILURES, vec![c.clone()], 1)),
        );
        report.queued_after = self.store.queue_len().await?;
        Ok(report)
    }
}

/// The status API's reads. Every figure comes from the store, so any instance answers
/// for all of them.
impl Monitor {
    /// `GET /api/status`.
    pub async fn status(&self, now: Timestamp) -> Result<api::StatusView, StoreError> {
        let counts = self.counts(now).await?;
        let overview = self.store.overview().await?;
        let queued = self.store.queue_len().await?;
        let dead = self.store.dead_letters().await?;
        Ok(api::status_view(
            counts,
            &overview,
            queued,
            dead,
            &self.policy,
            self.hub_quiet_after,
            now,
        ))
    }

    /// `GET /api/devices`: up to `limit` identities after `after` matching the filters, looking at
    /// no more than `scan_budget` identities (the cursor then continues where the scan stopped).
    pub async fn devices(
        &self,
        query: DeviceQuery,
        now: Timestamp,
    ) -> Result<api::DevicePage, StoreError> {
        let mut after = query.after;
        let mut devices = Vec::new();
        let mut scanned = 0;
        let page = query.limit.clamp(1, 1000);
        let budget = query.scan_budget.max(page);
        loop {
            let chunk = page.max(256).min(budget - scanned);
            let records = self
                .store
                .identities(query.hub.clone(), after.clone(), chunk)
                .await?;
            let exhausted = records.len() < chunk;
            let mut looked_at_all = true;
            for (i, r) in records.iter().enumerate() {
                scanned += 1;
                after = Some(r.identity.clone());
                let s = status::classify(&r.identity, &r.state, now, &self.policy);
                if query.state.is_none_or(|f| f.matches(&s)) {
                    devices.push(api::DeviceView::of(r, &s, now));
                    if devices.len() == page {
                        looked_at_all = i + 1 == records.len();
                        break;
                    }
                }
            }
            if exhausted && looked_at_all {
                return Ok(api::DevicePage {
                    devices,
                    next: None,
                    scanned,
                });
            }
            if devices.len() == page || scanned >= budget {
                return Ok(api::DevicePage {
                    next: after.as_ref().map(api::encode_cursor),
                    devices,
                    scanned,
                });
            }
        }
    }

    /// `GET /api/devices/{deviceId}[/modules/{moduleId}]`.
    pub async fn device(
        &self,
        id: crate::model::Identity,
        now: Timestamp,
    ) -> Result<Option<api::DeviceDetail>, StoreError> {
        Ok(self
            .store
            .identity(id)
            .await?
            .map(|r| api::device_detail(&r, &self.policy, now)))
    }

    /// The identity in every hub connmon knows (`GET /api/devices/{id}` without `hub=`).
    pub async fn find_device(
        &self,
        device: &str,
        module: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<api::DeviceDetail>, StoreError> {
        let mut found = Vec::new();
        for hub in self.store.overview().await?.hubs {
            let id = crate::model::Identity::new(&hub.hub, device, module);
            if let Some(d) = self.device(id, now).await? {
                found.push(d);
            }
        }
        Ok(found)
    }

    /// Everything the dashboard shows: one pass over every identity.
    pub async fn dashboard(&self, now: Timestamp) -> Result<api::Dashboard, StoreError> {
        let status = self.status(now).await?;
        let mut b = api::DashboardBuilder::default();
        let mut after = None;
        loop {
            let (records, next) = self.store.noteworthy(after, DASHBOARD_PAGE).await?;
            for r in &records {
                b.add(r, &self.policy, now);
            }
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(b.finish(status, now))
    }

    /// `GET /metrics`: the counters, then gauges read from the store.
    pub async fn prometheus(&self, now: Timestamp) -> Result<String, StoreError> {
        let counts = self.counts(now).await?;
        let overview = self.store.overview().await?;
        let queued = self.store.queue_len().await?;
        let dead = self.store.dead_letters().await?;
        let mut out = String::with_capacity(8192);
        self.metrics.render(&mut out);
        metrics::header(
            &mut out,
            "connmon_identities",
            "Identities tracked, by state (flapping and silenced overlap the others).",
            "gauge",
        );
        for (state, n) in [
            ("tracked", counts.tracked),
            ("connected", counts.connected),
            ("pending", counts.pending),
            ("alerted", counts.alerted),
            ("flapping", counts.flapping),
            ("silenced", counts.silenced),
        ] {
            metrics::sample(
                &mut out,
                "connmon_identities",
                &format!("state=\"{state}\""),
                n as f64,
            );
        }
        metrics::header(
            &mut out,
            "connmon_outbox_queued",
            "Alert deliveries waiting in the outbox (all channels).",
            "gauge",
        );
        metrics::sample(&mut out, "connmon_outbox_queued", "", queued as f64);
        metrics::header(
            &mut out,
            "connmon_outbox_dead_letters",
            "Outbox entries set aside because they can never be delivered (kept in the store).",
            "gauge",
        );
        metrics::sample(&mut out, "connmon_outbox_dead_letters", "", dead as f64);
        metrics::header(
            &mut out,
            "connmon_hub_last_event_timestamp_seconds",
            "When an event from the hub last arrived (unix seconds).",
            "gauge",
        );
        for h in &overview.hubs {
            let labels = metrics::labels(&["hub"], std::slice::from_ref(&h.hub));
            let secs = h.last_event_at.unix_millis() as f64 / 1000.0;
            metrics::sample(
                &mut out,
                "connmon_hub_last_event_timestamp_seconds",
                &labels,
                secs,
            );
        }
        metrics::header(
            &mut out,
            "connmon_hub_quiet",
            "1 while a hub_quiet alert is open for the hub (CONNMON_HUB_QUIET_AFTER).",
            "gauge",
        );
        for h in &overview.hubs {
            let labels = metrics::labels(&["hub"], std::slice::from_ref(&h.hub));
            let quiet = f64::from(u8::from(h.quiet.is_some()));
            metrics::sample(&mut out, "connmon_hub_quiet", &labels, quiet);
        }
        metrics::header(
            &mut out,
            "connmon_last_sweep_timestamp_seconds",
            "When the last sweep finished, on any instance (unix seconds; 0 before the first).",
            "gauge",
        );
        let last = overview.last_sweep_at.map_or(0, |t| t.unix_millis());
        metrics::sample(
            &mut out,
            "connmon_last_sweep_timestamp_seconds",
            "",
            last as f64 / 1000.0,
        );
        Ok(out)
    }
}

/// Identities read per store call while building the dashboard.
const DASHBOARD_PAGE: usize = 5_000;

/// `GET /api/devices` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceQuery {
    pub hub: Option<String>,
    pub state: Option<api::StateFilter>,
    pub after: Option<crate::model::Identity>,
    pub limit: usize,
    pub scan_budget: usize,
}
