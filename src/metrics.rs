//! Operational figures: counters kept in memory per process, rendered as the Prometheus
//! text exposition format (`GET /metrics`, standalone) or as one JSON log line of what changed
//! since the last one (Functions mode, for Application Insights).
//!
//! Counters are cumulative since start-up. Gauges that describe the store (identities by state,
//! queued deliveries, hubs) are read from the store when rendered, not kept here.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the sweep-duration histogram's buckets.
pub const SWEEP_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// A counter family: name, help, label names.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

pub const EVENTS: Family = Family {
    name: "connmon_events_total",
    help: "Connection events applied, by event type and outcome (duplicate and stale are Event Grid redeliveries and reorderings, dropped).",
    labels: &["type", "outcome"],
};
pub const IGNORED: Family = Family {
    name: "connmon_events_ignored_total",
    help: "Events of other types (telemetry, twin changes) acknowledged and ignored.",
    labels: &[],
};
pub const OUT_OF_SCOPE: Family = Family {
    name: "connmon_events_out_of_scope_total",
    help: "Events about identities outside CONNMON_INCLUDE / CONNMON_EXCLUDE, acknowledged and not tracked.",
    labels: &[],
};
pub const REJECTED: Family = Family {
    name: "connmon_events_rejected_total",
    help: "Events that could not be understood (logged, acknowledged, not applied).",
    labels: &[],
};
pub const FUTURE_TIME: Family = Family {
    name: "connmon_events_future_time_total",
    help: "Events applied at their receipt time because their eventTime was more than 5 minutes after it (a wrong clock), by event type.",
    labels: &["type"],
};
pub const ALERTS_RAISED: Family = Family {
    name: "connmon_alerts_raised_total",
    help: "Alerts raised (each queued once per channel), by kind.",
    labels: &["kind"],
};
pub const ALERTS_DELIVERED: Family = Family {
    name: "connmon_alerts_delivered_total",
    help: "Alerts a channel accepted, by channel and kind.",
    labels: &["channel", "kind"],
};
pub const DELIVERY_FAILURES: Family = Family {
    name: "connmon_delivery_failures_total",
    help: "Failed delivery attempts (one per batch), by channel; the alerts stay queued.",
    labels: &["channel"],
};
pub const STORE_FAILURES: Family = Family {
    name: "connmon_store_failures_total",
    help:
        "Store operations that failed (the sender was asked to retry, or the next sweep retries).",
    labels: &[],
};

pub const DEAD_LETTERS: Family = Family {
    name: "connmon_outbox_dead_letters_total",
    help: "Outbox entries set aside as dead letters because they can never be delivered (their body is not an alert); neither sent nor counted as delivered.",
    labels: &[],
};

pub const STORE_RESETS: Family = Family {
    name: "connmon_store_resets_total",
    help: "Times this process found the store come back empty and raised the store_reset alert (one instance raises it per reset).",
    labels: &[],
};

const COUNTERS: [&Family; 11] = [
    &EVENTS,
    &IGNORED,
    &OUT_OF_SCOPE,
    &REJECTED,
    &FUTURE_TIME,
    &ALERTS_RAISED,
    &ALERTS_DELIVERED,
    &DELIVERY_FAILURES,
    &STORE_FAILURES,
    &DEAD_LETTERS,
    &STORE_RESETS,
];

type Key = (&'static str, Vec<String>);

#[derive(Debug, Default, Clone, PartialEq)]
struct Sweeps {
    /// Per bucket of [`SWEEP_BUCKETS`] (not cumulative), then the count above the last.
    buckets: [u64; SWEEP_BUCKETS.len() + 1],
    sum_seconds: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    counters: BTreeMap<Key, u64>,
    sweeps: Sweeps,
    /// What the last [`Metrics::delta_line`] reported.
    reported: BTreeMap<Key, u64>,
    reported_sweeps: Sweeps,
}

/// The process's counters. Cheap to update: one short lock per delivery or sweep.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Adds `n` to the counter of `family` with these label values (in the family's label order).
    pub fn add(&self, family: &Family, labels: &[&str], n: u64) {
        debug_assert_eq!(labels.len(), family.labels.len(), "{}", family.name);
        if n == 0 {
            return;
        }
        let key = (family.name, labels.iter().map(|l| l.to_string()).collect());
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner.counters.entry(key).or_default() += n;
    }

    /// Adds many at once (one lock).
    pub fn add_all<'a>(&self, items: impl IntoIterator<Item = (&'a Family, Vec<String>, u64)>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (family, labels, n) in items {
            if n > 0 {
                *inner.counters.entry((family.name, labels)).or_default() += n;
            }
        }
    }

    /// The current value of one counter (tests, summaries).
    pub fn get(&self, family: &Family, labels: &[&str]) -> u64 {
        let key = (family.name, labels.iter().map(|l| l.to_string()).collect());
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.counters.get(&key).copied().unwrap_or(0)
    }

    /// Records one sweep's duration.
    pub fn sweep_took(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let i = SWEEP_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(SWEEP_BUCKETS.len());
        inner.sweeps.buckets[i] += 1;
        inner.sweeps.sum_seconds += secs;
        inner.sweeps.count += 1;
    }

    /// The counters and the sweep histogram in the Prometheus text format (version 0.0.4), each
    /// family with `# HELP` and `# TYPE`, also when it has no sample yet (counters then show 0
    /// where they have no labels).
    pub fn render(&self, out: &mut String) {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for family in COUNTERS {
            header(out, family.name, family.help, "counter");
            let mut any = false;
            for ((name, values), n) in &inner.counters {
                if *name == family.name {
                    any = true;
                    sample(out, name, &labels(family.labels, values), *n as f64);
                }
            }
            if !any && family.labels.is_empty() {
                sample(out, family.name, "", 0.0);
            }
        }
        let name = "connmon_sweep_duration_seconds";
        header(
            out,
            name,
            "How long sweeps took (claiming due outages, the dead-man's switch, delivering the outbox).",
            "histogram",
        );
        let mut cumulative = 0;
        for (i, bound) in SWEEP_BUCKETS.iter().enumerate() {
            cumulative += inner.sweeps.buckets[i];
            let le = format!("le=\"{bound}\"");
            sample(out, &format!("{name}_bucket"), &le, cumulative as f64);
        }
        let total = inner.sweeps.count;
        sample(out, &format!("{name}_bucket"), "le=\"+Inf\"", total as f64);
        sample(out, &format!("{name}_sum"), "", inner.sweeps.sum_seconds);
        sample(out, &format!("{name}_count"), "", total as f64);
    }

    /// Functions mode: one JSON object of every counter that moved since the last call (and the
    /// sweeps in between), `None` if nothing did. Each metric is `{"name", "labels", "value"}`
    /// with `value` the increase, so summing over time and instances gives totals.
    pub fn delta_line(&self) -> Option<serde_json::Value> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut metrics = Vec::new();
        for ((name, values), n) in &inner.counters {
            let key = (*name, values.clone());
            let before = inner.reported.get(&key).copied().unwrap_or(0);
            if *n > before {
                let family = COUNTERS.iter().find(|f| f.name == *name).expect("known");
                let labels: serde_json::Map<String, serde_json::Value> = family
                    .labels
                    .iter()
                    .zip(values)
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.as_str())))
                    .collect();
                metrics
                    .push(serde_json::json!({"name": name, "labels": labels, "value": n - before}));
            }
        }
        let sweeps = inner.sweeps.count - inner.reported_sweeps.count;
        if sweeps > 0 {
            let secs = inner.sweeps.sum_seconds - inner.reported_sweeps.sum_seconds;
            metrics
                .push(serde_json::json!({"name": "connmon_sweeps", "labels": {}, "value": sweeps}));
            metrics.push(serde_json::json!({"name": "connmon_sweep_duration_seconds_sum", "labels": {}, "value": secs}));
        }
        if metrics.is_empty() {
            return None;
        }
        inner.reported = inner.counters.clone();
        inner.reported_sweeps = inner.sweeps.clone();
        Some(serde_json::json!({ "metrics": metrics }))
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    out.push_str(&format!(
        "# HELP {name} {}\n# TYPE {name} {kind}\n",
        escape_help(help)
    ));
}

/// One sample line; `labels` already rendered (`a="1",b="2"`), empty for none.
pub fn sample(out: &mut String, name: &str, labels: &str, value: f64) {
    if labels.is_empty() {
        out.push_str(&format!("{name} {value}\n"));
    } else {
        out.push_str(&format!("{name}{{{labels}}} {value}\n"));
    }
}

/// `name="value",…` with values escaped as the format wants (`\\`, `\"`, `\n`).
pub fn labels(names: &[&str], values: &[String]) -> String {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape_label(v)))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}
