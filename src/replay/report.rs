//! The replay report: one serde shape ([`Report`], what `--json` prints) and its text rendering.
//! Alerts inside it are `alerts::AlertBody`, the objects the webhook receives.

use super::input::FileSummary;
use crate::alerts::AlertBody;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub input: InputReport,
    pub sweep_seconds: i64,
    /// The settings besides the grace the runs used.
    pub policy: PolicyReport,
    pub grace_periods: Vec<GraceResult>,
    pub recommended_grace_seconds: i64,
    pub recommendation: String,
    pub durations: Durations,
    pub identities: Vec<IdentityReport>,
    pub flapping: Vec<FlappingEntry>,
    pub duplicate_identity_suspects: Vec<DuplicateSuspect>,
    /// Every identity offline when the clock stopped (`input.until`), alerted or not.
    pub still_offline: Vec<StillOffline>,
}

/// An identity offline when the clock stopped: since when, why (when the input says), and whether
/// the recommended grace had alerted on it by then.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StillOffline {
    pub hub: String,
    pub device_id: String,
    pub module_id: Option<String>,
    /// The disconnect that opened the outage.
    pub since: String,
    pub offline_seconds: i64,
    /// `resultType` and `resultDescription` of that disconnect in resource logs; Event Grid
    /// events carry none.
    pub reason: Option<String>,
    /// When the `disconnected` alert went out at the recommended grace; `None`: not yet.
    pub alerted_at: Option<String>,
}

/// The flapping and reminder settings of a replay (`--flap-threshold`, `--flap-window`,
/// `--remind-every`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub flap_threshold: u64,
    pub flap_window_seconds: i64,
    pub remind_every_seconds: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InputReport {
    pub events: u64,
    pub identities: u64,
    /// `"sequence"` (Event Grid) or `"time"` (resource logs: sequence numbers synthesised from
    /// time order).
    #[serde(rename = "ordered_by")]
    pub ordered_by: String,
    pub from: Option<String>,
    pub to: Option<String>,
    /// Where the clock stopped: `--until`, or the last event.
    pub until: Option<String>,
    pub ignored: u64,
    pub rejected: u64,
    pub rejections: Vec<String>,
    /// Events the machine found to be redeliveries (same sequence number) or older than one
    /// already applied.
    pub duplicates: u64,
    pub stale: u64,
    pub files: Vec<FileReport>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileReport {
    pub name: String,
    pub format: String,
    pub gzip: bool,
    pub events: u64,
    pub log_records: u64,
    pub ignored: u64,
    pub rejected: u64,
}

impl From<&FileSummary> for FileReport {
    fn from(f: &FileSummary) -> Self {
        FileReport {
            name: f.name.clone(),
            format: f.format.clone(),
            gzip: f.gzip,
            events: f.events,
            log_records: f.log_records,
            ignored: f.ignored,
            rejected: f.rejected,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GraceResult {
    pub grace_seconds: i64,
    pub recommended: bool,
    pub alerts: Vec<AlertBody>,
    pub disconnected: u64,
    pub reconnected: u64,
    pub suppressed_reconnects: u64,
    /// Outages open without an alert when the input ended (younger than the grace).
    pub open_at_end: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Durations {
    /// Disconnects followed by a connect (silent or not), measured disconnect → connect.
    pub count: u64,
    /// Disconnects followed by another disconnect (the connect between was lost to sampling).
    pub restarted: u64,
    pub still_open_at_end: u64,
    pub p50_seconds: Option<i64>,
    pub p90_seconds: Option<i64>,
    pub p99_seconds: Option<i64>,
    pub p999_seconds: Option<i64>,
    pub max_seconds: Option<i64>,
    pub histogram: Vec<Bucket>,
    /// Every duration, sorted (for the HTML histogram); not serialised.
    #[serde(skip)]
    pub millis: Vec<i64>,
}

/// One histogram bucket, `[fromSeconds, toSeconds)`; `toSeconds` null for the last.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bucket {
    pub from_seconds: i64,
    pub to_seconds: Option<i64>,
    pub count: u64,
}

/// Bucket edges in seconds: fine where token renewal lives, coarse beyond.
const EDGES: &[i64] = &[0, 10, 30, 60, 120, 180, 240, 300, 600, 1800, 3600, 21600];

impl Bucket {
    pub fn histogram(sorted_ms: &[i64]) -> Vec<Bucket> {
        EDGES
            .iter()
            .enumerate()
            .map(|(i, &from)| {
                let to = EDGES.get(i + 1).copied();
                let count = sorted_ms
                    .iter()
                    .filter(|ms| **ms >= from * 1000 && to.is_none_or(|t| **ms < t * 1000))
                    .count() as u64;
                Bucket {
                    from_seconds: from,
                    to_seconds: to,
                    count,
                }
            })
            .collect()
    }

    pub fn label(&self) -> String {
        match self.to_seconds {
            Some(t) => format!("{}–{}", human(self.from_seconds), human(t)),
            None => format!("≥ {}", human(self.from_seconds)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityReport {
    pub hub: String,
    pub device_id: String,
    pub module_id: Option<String>,
    pub disconnects: u32,
    /// Reconnects under 15 minutes (the rhythm below is measured between their starts).
    pub short_reconnects: u32,
    /// `token_renewal`, `rapid`, `irregular`, or `none` (fewer than two short reconnects).
    pub cadence: String,
    pub cadence_minutes: Option<f64>,
    /// The SDK whose renewal rhythm matches the cadence (iothub-events.md's table).
    pub sdk_by_cadence: Option<String>,
    /// `sdkVersion` from the resource logs, as sent, and the SDK it names.
    pub sdk_version: Option<String>,
    pub sdk: Option<String>,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlappingEntry {
    pub hub: String,
    pub device_id: String,
    pub module_id: Option<String>,
    pub since: String,
    pub silent_reconnects: u32,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DuplicateSuspect {
    pub hub: String,
    pub device_id: String,
    pub module_id: Option<String>,
    pub reasons: Vec<String>,
}

/// `90` → `1m30s`, `300` → `5m`, `3600` → `1h`. Not `channels::people::duration` (`1m 30s`, the two
/// largest units only): this one writes every unit without spaces, and the text report keeps its bytes.
pub fn human(secs: i64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    for (v, u) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
        if v != 0 {
            let _ = write!(out, "{v}{u}");
        }
    }
    out
}

/// [`human`] for milliseconds, rounded up to whole seconds.
pub fn human_ms(ms: i64) -> String {
    human((ms + 999) / 1000)
}

fn who(hub: &str, device: &str, module: Option<&str>) -> String {
    match module {
        Some(m) => format!("{hub}/{device:?}/{m:?}"),
        None => format!("{hub}/{device:?}"),
    }
}

/// Alerts listed per grace period in text (all of them are in `--json`).
const ALERTS_SHOWN: usize = 10;
const IDENTITIES_SHOWN: usize = 15;
/// Identities still offline listed in text (all of them are in `--json`).
pub const OFFLINE_SHOWN: usize = 20;

impl StillOffline {
    /// `since 10:30:02Z (for 1h29m), 404104 DeviceConnectionClosedRemotely; alerted at …`.
    fn describe(&self) -> String {
        format!(
            "offline since {} (for {}){}; {}",
            self.since,
            human(self.offline_seconds),
            self.reason
                .as_deref()
                .map(|r| format!(", {r}"))
                .unwrap_or_default(),
            match &self.alerted_at {
                Some(at) => format!("alerted at {at}"),
                None => "not alerted yet".to_string(),
            }
        )
    }
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// The text report.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let i = &self.input;
        let _ = writeln!(
            o,
            "connmon replay: {} events, {} identities, {} .. {}",
            i.events,
            i.identities,
            i.from.as_deref().unwrap_or("-"),
            i.to.as_deref().unwrap_or("-")
        );
        for f in &i.files {
            let _ = writeln!(
                o,
                "  {}{}: {} ({} events, {} log records, {} ignored, {} rejected)",
                f.name,
                if f.gzip { " (gzip)" } else { "" },
                f.format,
                f.events,
                f.log_records,
                f.ignored,
                f.rejected
            );
        }
        let _ = writeln!(
            o,
            "ordered by {}",
            if i.ordered_by == "time" {
                "TIME: resource logs carry no sequence numbers, so records were ordered by their timestamps (file order breaks ties) and numbered in that order"
            } else {
                "IoT Hub's sequence numbers"
            }
        );
        if i.duplicates + i.stale > 0 {
            let _ = writeln!(
                o,
                "{} duplicate and {} out-of-order events changed nothing (as in production)",
                i.duplicates, i.stale
            );
        }
        if i.rejected > 0 {
            let _ = writeln!(o, "{} rejected, e.g.:", i.rejected);
            for r in &i.rejections {
                let _ = writeln!(o, "  {r}");
            }
        }

        let d = &self.durations;
        let _ = writeln!(o, "\nDisconnect durations ({} reconnects; {} disconnects restarted by another disconnect; {} still open at the end):", d.count, d.restarted, d.still_open_at_end);
        if d.count > 0 {
            let p = |v: Option<i64>| v.map_or("-".into(), human);
            let _ = writeln!(
                o,
                "  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                p(d.p50_seconds),
                p(d.p90_seconds),
                p(d.p99_seconds),
                p(d.p999_seconds),
                p(d.max_seconds)
            );
            let top = d
                .histogram
                .iter()
                .map(|b| b.count)
                .max()
                .unwrap_or(1)
                .max(1);
            for b in &d.histogram {
                let bar = (b.count * 40).div_ceil(top) as usize;
                let _ = writeln!(o, "  {:>12} {:<40} {}", b.label(), "#".repeat(bar), b.count);
            }
        }

        let reminders = match self.policy.remind_every_seconds {
            Some(r) => format!("reminders every {}", human(r)),
            None => "no reminders".into(),
        };
        let _ = writeln!(
            o,
            "\nAlerts per grace period (sweep every {}; flapping at {} silent reconnects in {}; {}):",
            human(self.sweep_seconds),
            self.policy.flap_threshold,
            human(self.policy.flap_window_seconds),
            reminders
        );
        for g in &self.grace_periods {
            let _ = writeln!(
                o,
                "  grace {}{}: {} disconnected, {} reconnected, {} other alerts; {} reconnects suppressed; {} outages open at the end",
                human(g.grace_seconds),
                if g.recommended { " (recommended)" } else { "" },
                g.disconnected,
                g.reconnected,
                g.alerts.len() as u64 - g.disconnected - g.reconnected,
                g.suppressed_reconnects,
                g.open_at_end
            );
            for a in g
                .alerts
                .iter()
                .filter(|a| a.kind == "disconnected")
                .take(ALERTS_SHOWN)
            {
                let _ = writeln!(
                    o,
                    "    {} offline since {}, alerted {}",
                    who(&a.hub, &a.device_id, a.module_id.as_deref()),
                    a.disconnected_at,
                    a.detected_at
                );
            }
            if g.disconnected as usize > ALERTS_SHOWN {
                let _ = writeln!(
                    o,
                    "    …and {} more (--json lists every alert)",
                    g.disconnected as usize - ALERTS_SHOWN
                );
            }
        }

        let _ = writeln!(
            o,
            "\nStill offline when the clock stopped ({}; alerts at the recommended grace): {}",
            i.until.as_deref().unwrap_or("-"),
            self.still_offline.len()
        );
        for s in self.still_offline.iter().take(OFFLINE_SHOWN) {
            let _ = writeln!(
                o,
                "  {} {}",
                who(&s.hub, &s.device_id, s.module_id.as_deref()),
                s.describe()
            );
        }
        if self.still_offline.len() > OFFLINE_SHOWN {
            let _ = writeln!(
                o,
                "  …and {} more (--json lists all)",
                self.still_offline.len() - OFFLINE_SHOWN
            );
        }

        let _ = writeln!(
            o,
            "\nRecommended grace period: {} — {}",
            human(self.recommended_grace_seconds),
            self.recommendation
        );

        let _ = writeln!(o, "\nReconnect cadence per identity:");
        let mut by_class = std::collections::BTreeMap::<(&str, Option<&str>), u64>::new();
        for id in &self.identities {
            *by_class
                .entry((id.cadence.as_str(), id.sdk_by_cadence.as_deref()))
                .or_default() += 1;
        }
        for ((class, sdk), n) in &by_class {
            let _ = writeln!(
                o,
                "  {n} × {class}{}",
                sdk.map(|s| format!(": {s}")).unwrap_or_default()
            );
        }
        let mut busiest: Vec<&IdentityReport> = self.identities.iter().collect();
        busiest.sort_by_key(|b| std::cmp::Reverse(b.disconnects));
        for id in busiest.iter().take(IDENTITIES_SHOWN) {
            let _ = writeln!(
                o,
                "  {}: {} disconnects, cadence {}{}{}",
                who(&id.hub, &id.device_id, id.module_id.as_deref()),
                id.disconnects,
                id.cadence,
                id.cadence_minutes
                    .map(|m| format!(" ~{m} min"))
                    .unwrap_or_default(),
                match (&id.sdk_version, &id.sdk) {
                    (Some(v), Some(s)) => format!(", SDK {s} ({v:?})"),
                    (Some(v), None) => format!(", sdkVersion {v:?}"),
                    _ => String::new(),
                }
            );
        }
        if self.identities.len() > IDENTITIES_SHOWN {
            let _ = writeln!(
                o,
                "  …and {} more identities (--json lists all)",
                self.identities.len() - IDENTITIES_SHOWN
            );
        }

        let _ = writeln!(
            o,
            "\nFlapping at the recommended grace: {}",
            self.flapping.len()
        );
        for f in self.flapping.iter().take(IDENTITIES_SHOWN) {
            let _ = writeln!(
                o,
                "  {} since {}: {} silent reconnects{}",
                who(&f.hub, &f.device_id, f.module_id.as_deref()),
                f.since,
                f.silent_reconnects,
                f.hint
                    .as_deref()
                    .map(|h| format!(" — {h}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            o,
            "\nDuplicate-identity suspects (400027): {}",
            self.duplicate_identity_suspects.len()
        );
        for s in self
            .duplicate_identity_suspects
            .iter()
            .take(IDENTITIES_SHOWN)
        {
            let _ = writeln!(
                o,
                "  {}: {}",
                who(&s.hub, &s.device_id, s.module_id.as_deref()),
                s.reasons.join("; ")
            );
        }
        o
    }
}
