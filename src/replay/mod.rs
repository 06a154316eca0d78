//! `connmon replay`: recorded history through the production state machine, and what it says about
//! the grace period.
//!
//! # Layout
//! - [`input`]: files (gzip too) → [`input::Loaded`]: format detection, Event Grid through
//!   `decode`, resource logs through `logs`, identity interning, the progress bar.
//! - [`fast`]: the borrowed-struct fast path for JSONL Event Grid lines.
//! - [`engine`]: the [`engine::Timeline`] and [`engine::run`] — `machine::apply` /
//!   `machine::claim_due` on a virtual clock.
//! - this file: [`analyse`] — runs per grace period, disconnect durations, cadence per identity,
//!   flapping, duplicate-identity suspects, the recommended grace — into a [`report::Report`].
//! - [`report`]: the report as text and JSON; [`html`]: as a self-contained HTML page with an SVG
//!   histogram.

pub mod engine;
pub mod fast;
pub mod html;
pub mod input;
mod jsonl;
pub mod report;

use crate::alerts::AlertBody;
use crate::machine::{self, AlertKind, Cadence, IdentityState, Outcome, Policy};
use crate::model::Timestamp;
use engine::{Before, Observer, Timeline};
use input::Loaded;
use report::{
    Bucket, DuplicateSuspect, Durations, FlappingEntry, GraceResult, IdentityReport, InputReport,
    Report,
};
use std::time::Duration;

/// Reconnect gaps at least this long are not counted as token renewal when recommending a grace
/// period: the SDKs reconnect within seconds, constrained devices within about 4 minutes
/// (iothub-events.md); longer gaps are treated as outages. The report still shows them all.
pub const RENEWAL_GAP_CAP: Duration = Duration::from_secs(5 * 60);
/// Reconnects under this count toward an identity's rhythm (cadence).
pub const SHORT_RECONNECT: Duration = Duration::from_secs(15 * 60);
/// IoT Hub samples connection state every 60 s: added to the recommendation.
pub const SAMPLING: Duration = Duration::from_secs(60);
/// The share of renewal gaps the recommended grace covers (before the sampling margin).
pub const COVERAGE: f64 = 0.999;
/// Recommended when the input holds no reconnect at all: connmon's default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// How to replay.
#[derive(Debug, Clone)]
pub struct Options {
    /// Grace periods to report on; the recommended one is added when missing.
    pub graces: Vec<Duration>,
    /// The modelled sweep timer (standalone default 30 s).
    pub sweep_every: Duration,
    /// The settings besides the grace that change what is alerted, as the service takes them
    /// (`CONNMON_FLAP_THRESHOLD`, `CONNMON_FLAP_WINDOW`, `CONNMON_REMIND_EVERY`); connmon's
    /// defaults unless given.
    pub flap_threshold: usize,
    pub flap_window: Duration,
    pub remind_every: Option<Duration>,
    /// Where the clock stops (`--until`, e.g. when the history was exported): the sweeps up to
    /// then run. `None`: at the last event.
    pub until: Option<Timestamp>,
}

impl Default for Options {
    fn default() -> Self {
        let defaults = Policy::new(DEFAULT_GRACE);
        Options {
            graces: vec![DEFAULT_GRACE],
            sweep_every: Duration::from_secs(30),
            flap_threshold: defaults.flap_threshold,
            flap_window: defaults.flap_window,
            remind_every: defaults.remind_every,
            until: None,
        }
    }
}

impl Options {
    /// The policy a replay runs at `grace`: connmon's defaults with these settings.
    pub fn policy(&self, grace: Duration) -> Policy {
        Policy {
            flap_threshold: self.flap_threshold,
            flap_window: self.flap_window,
            remind_every: self.remind_every,
            ..Policy::new(grace)
        }
    }
}

/// What the analysis run sees: every reconnect's gap (disconnect → connect), per identity the
/// times of its reconnects (the renewal rhythm: connects closing a short outage, connects with no
/// disconnect before them and second disconnects — both mean IoT Hub's sampling lost the change in
/// between), and how many outages restarted.
struct Gaps {
    durations_ms: Vec<i64>,
    reconnects: Vec<Vec<Timestamp>>,
    disconnects: Vec<u32>,
    restarted: u64,
}

impl Observer for Gaps {
    fn applied(&mut self, slot: u32, before: Before, after: &IdentityState, outcome: Outcome) {
        let slot = slot as usize;
        let Some(at) = after.last_event_at else {
            return;
        };
        match outcome {
            Outcome::Opened | Outcome::Continued => self.disconnects[slot] += 1,
            Outcome::Restarted => {
                self.disconnects[slot] += 1;
                self.restarted += 1;
                self.reconnects[slot].push(at);
            }
            Outcome::Connected if before.connected == Some(true) => {
                self.reconnects[slot].push(at);
            }
            Outcome::ClosedSilently | Outcome::Reconnected => {
                if let Some(o) = before.outage {
                    let ms = at.0 - o.started_at.0;
                    self.durations_ms.push(ms);
                    if ms < SHORT_RECONNECT.as_millis() as i64 {
                        self.reconnects[slot].push(at);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Reconnects closer than this, several in a row, are two clients sharing one identity.
const RAPID_GAP_MS: i64 = 120_000;
/// How many such reconnects in a row make a duplicate-identity suspect (token renewal never does).
const RAPID_RUN: usize = 5;

/// The longest run of reconnects each less than [`RAPID_GAP_MS`] after the previous one, when it
/// holds at least [`RAPID_RUN`]: its start and length.
fn rapid_burst(times: &[Timestamp]) -> Option<(Timestamp, usize)> {
    let mut best: Option<(Timestamp, usize)> = None;
    let mut start = 0;
    for i in 1..=times.len() {
        let continues = i < times.len() && times[i].0 - times[i - 1].0 < RAPID_GAP_MS;
        if !continues {
            let len = i - start;
            if len >= RAPID_RUN && best.is_none_or(|(_, b)| len > b) {
                best = Some((times[start], len));
            }
            start = i;
        }
    }
    best
}

/// The policy a replay runs at: connmon's defaults with the given grace.
pub fn policy(grace: Duration) -> Policy {
    Policy::new(grace)
}

/// The value at quantile `q` of sorted `v` (nearest rank).
fn quantile(v: &[i64], q: f64) -> Option<i64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// The recommended grace from sorted gap durations, and why.
pub fn recommend(sorted_ms: &[i64]) -> (Duration, String) {
    let cap = RENEWAL_GAP_CAP.as_millis() as i64;
    let short: Vec<i64> = sorted_ms.iter().copied().filter(|d| *d < cap).collect();
    let Some(q) = quantile(&short, COVERAGE) else {
        return (
            DEFAULT_GRACE,
            "no reconnect in the input: keep connmon's default of 5m".to_string(),
        );
    };
    let raw = q + SAMPLING.as_millis() as i64;
    let minutes = (raw + 59_999) / 60_000;
    let grace = Duration::from_secs((minutes.max(1) * 60) as u64);
    let slow = sorted_ms
        .iter()
        .filter(|d| (cap..SHORT_RECONNECT.as_millis() as i64).contains(*d))
        .count();
    let note = if slow * 100 > sorted_ms.len() {
        format!(
            " Note: {slow} reconnects ({:.1}%) took {}–{}: if those are token renewals of slow devices rather than outages, a longer grace is needed.",
            slow as f64 * 100.0 / sorted_ms.len() as f64,
            report::human(RENEWAL_GAP_CAP.as_secs() as i64),
            report::human(SHORT_RECONNECT.as_secs() as i64)
        )
    } else {
        String::new()
    };
    let why = format!(
        "99.9% of {} reconnect gaps under {} last at most {}; plus {} for IoT Hub's 60 s state sampling = {}, rounded up to {}. Worst-case detection latency = grace + sweep period + up to 60 s of sampling.",
        short.len(),
        report::human(RENEWAL_GAP_CAP.as_secs() as i64),
        report::human_ms(q),
        report::human(SAMPLING.as_secs() as i64),
        report::human_ms(raw),
        report::human(grace.as_secs() as i64)
    ) + &note;
    (grace, why)
}

fn sdk_from_cadence(median_ms: i64) -> Option<&'static str> {
    let min = median_ms as f64 / 60_000.0;
    match min {
        m if (43.0..46.5).contains(&m) => Some("Node.js (renews every 45 min)"),
        m if (46.5..52.0).contains(&m) => Some("C (reconnects every 48 min)"),
        m if (54.0..63.0).contains(&m) => Some("Python (renews at the 60 min token lifespan)"),
        m if (65.0..76.0).contains(&m) => Some(".NET / Java (lifespan + 10 min grace, 70 min)"),
        _ => None,
    }
}

fn sdk_from_version(v: &str) -> Option<&'static str> {
    let l = v.to_ascii_lowercase();
    if l.contains(".net") || l.contains("csharp") || l.contains("dotnet") {
        Some(".NET")
    } else if l.contains("java") {
        Some("Java")
    } else if l.contains("python") {
        Some("Python")
    } else if l.contains("node") || l.starts_with("azure-iot-device/") {
        Some("Node.js")
    } else if l.contains("iothubclient") || l.contains("native") || l.contains("azure-iot-sdk-c") {
        Some("C")
    } else {
        None
    }
}

/// The whole analysis of a loaded input.
pub fn analyse(loaded: &Loaded, opts: &Options) -> Report {
    let tl: &Timeline = &loaded.timeline;
    let n = tl.identities.len();
    let mut requested = opts.graces.clone();
    requested.sort();
    requested.dedup();
    let run_at = |g: Duration| {
        engine::run_until(
            tl,
            &opts.policy(g),
            opts.sweep_every,
            opts.until,
            &mut engine::Quiet,
        )
    };
    // The requested grace periods run on threads of their own while this one makes the analysis
    // pass; the recommended grace, known only after it, follows on this thread when it was not
    // requested. The runs share nothing but the timeline.
    let (gaps, open, recommended, why, mut runs) = std::thread::scope(|scope| {
        let handles: Vec<_> = requested
            .iter()
            .map(|g| (*g, scope.spawn(move || run_at(*g))))
            .collect();
        let mut gaps = Gaps {
            durations_ms: Vec::new(),
            reconnects: vec![Vec::new(); n],
            disconnects: vec![0; n],
            restarted: 0,
        };
        // Never claims anything: the longest grace the settings accept.
        let open = engine::run_until(
            tl,
            &opts.policy(Duration::from_secs(30 * 24 * 3600)),
            opts.sweep_every,
            opts.until,
            &mut gaps,
        );
        gaps.durations_ms.sort_unstable();
        let (recommended, why) = recommend(&gaps.durations_ms);
        let mut runs: Vec<(Duration, engine::RunResult)> = Vec::new();
        if !requested.contains(&recommended) {
            runs.push((recommended, run_at(recommended)));
        }
        for (g, h) in handles {
            runs.push((g, h.join().expect("a replay run does not panic")));
        }
        (gaps, open, recommended, why, runs)
    });
    runs.sort_by_key(|(g, _)| *g);
    let mut results = Vec::new();
    let mut at_recommended = None;
    for (g, r) in runs {
        let bodies: Vec<AlertBody> = r.alerts.iter().map(AlertBody::from).collect();
        let count = |k: AlertKind| r.alerts.iter().filter(|a| a.kind == k).count() as u64;
        results.push(GraceResult {
            grace_seconds: g.as_secs() as i64,
            recommended: g == recommended,
            disconnected: count(AlertKind::Disconnected),
            reconnected: count(AlertKind::Reconnected),
            alerts: bodies,
            suppressed_reconnects: r.suppressed_reconnects,
            open_at_end: r.open_at_end,
        });
        if g == recommended {
            at_recommended = Some(r);
        }
    }
    let at_recommended = at_recommended.expect("the recommended grace is in the list");
    let until = tl.last_time().max(opts.until);
    let still_offline = at_recommended
        .offline_at_end
        .iter()
        .map(|o| {
            let id = &tl.identities[o.slot as usize];
            let since = o.outage.started_at;
            report::StillOffline {
                hub: id.hub().to_string(),
                device_id: id.device().to_string(),
                module_id: id.module().map(str::to_string),
                since: since.to_rfc3339(),
                offline_seconds: until.map_or(0, |u| u.seconds_since(since)),
                reason: loaded
                    .log_info
                    .get(o.slot as usize)
                    .and_then(|info| info.reason_at(since))
                    .map(str::to_string),
                alerted_at: o.outage.alerted_at.map(Timestamp::to_rfc3339),
            }
        })
        .collect();

    let mut flapping: Vec<FlappingEntry> = at_recommended
        .alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Flapping)
        .map(|a| FlappingEntry {
            hub: a.identity.hub().to_string(),
            device_id: a.identity.device().to_string(),
            module_id: a.identity.module().map(str::to_string),
            since: a.detected_at.to_rfc3339(),
            silent_reconnects: a.flap.as_ref().map_or(0, |f| f.disconnects),
            hint: a.flap.as_ref().and_then(|f| f.hint.clone()),
        })
        .collect();
    flapping.sort_by(|a, b| {
        (&a.hub, &a.device_id, &a.module_id, &a.since).cmp(&(
            &b.hub,
            &b.device_id,
            &b.module_id,
            &b.since,
        ))
    });

    let mut identities = Vec::with_capacity(n);
    let mut suspects = Vec::new();
    for (slot, id) in tl.identities.iter().enumerate() {
        let starts = &gaps.reconnects[slot];
        let mut between: Vec<i64> = starts.windows(2).map(|w| w[1].0 - w[0].0).collect();
        between.sort_unstable();
        let median = (!between.is_empty()).then(|| between[between.len() / 2]);
        let class = if between.is_empty() {
            "none"
        } else {
            match machine::cadence(starts) {
                Cadence::TokenRenewal => "token_renewal",
                Cadence::Rapid => "rapid",
                Cadence::Irregular if median.and_then(sdk_from_cadence).is_some() => {
                    "token_renewal"
                }
                Cadence::Irregular => "irregular",
            }
        };
        let info = loaded.log_info.get(slot).cloned().unwrap_or_default();
        let mut reasons = Vec::new();
        if info.forceful_closes > 0 {
            reasons.push(format!(
                "{} disconnects with 400027 ConnectionForcefullyClosedOnNewConnection in the resource logs",
                info.forceful_closes
            ));
        }
        if let Some((from, count)) = rapid_burst(starts) {
            reasons.push(format!(
                "{count} reconnects less than {} apart from {from}",
                report::human_ms(RAPID_GAP_MS)
            ));
        }
        if flapping.iter().any(|f| {
            f.hint.is_some()
                && f.hub == id.hub()
                && f.device_id == id.device()
                && f.module_id.as_deref() == id.module()
        }) {
            reasons.push("flapping alert with the duplicate-identity hint".into());
        }
        if !reasons.is_empty() {
            suspects.push(DuplicateSuspect {
                hub: id.hub().to_string(),
                device_id: id.device().to_string(),
                module_id: id.module().map(str::to_string),
                reasons,
            });
        }
        identities.push(IdentityReport {
            hub: id.hub().to_string(),
            device_id: id.device().to_string(),
            module_id: id.module().map(str::to_string),
            disconnects: gaps.disconnects[slot],
            short_reconnects: starts.len() as u32,
            cadence: class.to_string(),
            cadence_minutes: median.map(|m| (m as f64 / 6_000.0).round() / 10.0),
            sdk_by_cadence: median.and_then(sdk_from_cadence).map(str::to_string),
            sdk_version: info.sdk_version.clone(),
            sdk: info
                .sdk_version
                .as_deref()
                .and_then(sdk_from_version)
                .map(str::to_string),
            protocol: info.protocol.clone(),
        });
    }

    let d = &gaps.durations_ms;
    let q = |p: f64| quantile(d, p).map(|ms| ms / 1000);
    let durations = Durations {
        count: d.len() as u64,
        restarted: gaps.restarted,
        still_open_at_end: open.open_at_end,
        p50_seconds: q(0.5),
        p90_seconds: q(0.9),
        p99_seconds: q(0.99),
        p999_seconds: q(0.999),
        max_seconds: d.last().map(|ms| ms / 1000),
        histogram: Bucket::histogram(d),
        millis: d.clone(),
    };
    Report {
        input: InputReport {
            events: tl.events.len() as u64,
            identities: n as u64,
            ordered_by: loaded
                .ordered_by
                .unwrap_or(input::OrderedBy::Sequence)
                .as_str()
                .to_string(),
            from: tl.first_time().map(Timestamp::to_rfc3339),
            to: tl.last_time().map(Timestamp::to_rfc3339),
            until: until.map(Timestamp::to_rfc3339),
            ignored: loaded.ignored,
            rejected: loaded.rejected,
            rejections: loaded.rejections.clone(),
            duplicates: open.duplicates,
            stale: open.stale,
            files: loaded.files.iter().map(report::FileReport::from).collect(),
        },
        sweep_seconds: opts.sweep_every.as_secs() as i64,
        policy: report::PolicyReport {
            flap_threshold: opts.flap_threshold as u64,
            flap_window_seconds: opts.flap_window.as_secs() as i64,
            remind_every_seconds: opts.remind_every.map(|d| d.as_secs() as i64),
        },
        grace_periods: results,
        recommended_grace_seconds: recommended.as_secs() as i64,
        recommendation: why,
        durations,
        identities,
        flapping,
        duplicate_identity_suspects: suspects,
        still_offline,
    }
}
