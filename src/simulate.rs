//! `connmon simulate`: synthetic IoT Hub connection history with ground truth, for tuning and for
//! testing connmon against what it should find. Pure and seeded: the same [`Config`] gives the same
//! events, byte for byte.
//!
//! The model, per identity (iothub-events.md):
//! - **token renewal** by SDK: Node.js every 45 min, C every 48, Python every 58 (renewed 120 s
//!   before the 60 min lifespan), .NET and Java every 70; each period jittered ±2 %, a random phase;
//!   the reconnect gap is 0.5–15 s (97 %), 15–60 s (2.5 %) or 60–240 s (0.5 %, constrained devices);
//! - **real outages** of the chosen durations on distinct identities, fully inside the window
//!   (no renewal during them);
//! - **duplicate identity ping-pong**: two clients kicking each other out (400027) every 5–20 s
//!   for 30 minutes, each reconnecting 1–5 s later;
//! - **IoT Hub's 60 s sampling**: each identity's state is published at its own sampling ticks,
//!   60 s apart (events keep the time of the change; they leave IoT Hub at the tick after it). A
//!   window in which the state changed publishes its last change; a window that came back to
//!   where it started publishes its last two changes (70 %) or only the last one (30 %: "connect
//!   events with no disconnect between them", or a second disconnect);
//! - **Event Grid delivery**: 0.2–3 s delay; 0.2 % retried, arriving 10 s, 40 s or 100 s late (one,
//!   two or three failed attempts on Event Grid's schedule); 1 % delivered twice (same id and sequence number); the output is in delivery order, so reordering
//!   follows from the delays.
//!
//! Sequence numbers increase per identity by 1–3 per published event.

use crate::alerts::AlertBody;
use crate::machine::{Alert, AlertKind};
use crate::model::{EventKind, Identity, SequenceNumber, Timestamp};
use crate::replay::engine::{TimedEvent, Timeline};
use serde::Serialize;
use serde_json::{json, Value};
use std::time::Duration;

/// A device SDK, by its token-renewal rhythm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sdk {
    Node,
    C,
    Python,
    Dotnet,
    Java,
}

impl Sdk {
    pub const ALL: [Sdk; 5] = [Sdk::Node, Sdk::C, Sdk::Python, Sdk::Dotnet, Sdk::Java];

    pub fn name(self) -> &'static str {
        match self {
            Sdk::Node => "node",
            Sdk::C => "c",
            Sdk::Python => "python",
            Sdk::Dotnet => "dotnet",
            Sdk::Java => "java",
        }
    }

    pub fn parse(s: &str) -> Option<Sdk> {
        Sdk::ALL.into_iter().find(|k| {
            k.name().eq_ignore_ascii_case(s)
                || (s.eq_ignore_ascii_case(".net") && *k == Sdk::Dotnet)
        })
    }

    /// Minutes between reconnects.
    pub fn renewal(self) -> Duration {
        Duration::from_secs(match self {
            Sdk::Node => 45 * 60,
            Sdk::C => 48 * 60,
            Sdk::Python => 58 * 60,
            Sdk::Dotnet | Sdk::Java => 70 * 60,
        })
    }
}

/// What to simulate.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub identities: u32,
    #[serde(serialize_with = "secs")]
    pub length: Duration,
    #[serde(serialize_with = "rfc3339")]
    pub start: Timestamp,
    pub hub: String,
    /// SDKs and their weights.
    pub sdk_mix: Vec<(Sdk, u32)>,
    pub outages: u32,
    /// Durations of the real outages, used in turn.
    #[serde(serialize_with = "secs_list")]
    pub outage_durations: Vec<Duration>,
    /// Identities that get a duplicate-identity ping-pong episode.
    pub ping_pong: u32,
    /// Model IoT Hub's 60 s sampling (off: every change is published at its own time).
    pub sampling: bool,
    /// Share of deliveries Event Grid sends twice, and retries late.
    pub duplicate_rate: f64,
    pub retry_rate: f64,
    pub seed: u64,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}
fn secs_list<S: serde::Serializer>(d: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(d.iter().map(Duration::as_secs))
}
fn rfc3339<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            identities: 100,
            length: Duration::from_secs(24 * 3600),
            // 2026-11-01T00:00:00Z
            start: Timestamp::from_unix_millis(1_793_491_200_000),
            hub: "sim-hub".into(),
            sdk_mix: Sdk::ALL.iter().map(|s| (*s, 1)).collect(),
            outages: 5,
            outage_durations: vec![Duration::from_secs(600), Duration::from_secs(1800)],
            ping_pong: 0,
            sampling: true,
            duplicate_rate: 0.01,
            retry_rate: 0.002,
            seed: 1,
        }
    }
}

/// splitmix64: small, seedable, good enough for jitter.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn f(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform milliseconds in [lo, hi).
    fn ms(&mut self, lo: f64, hi: f64) -> i64 {
        ((lo + (hi - lo) * self.f()) * 1000.0) as i64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A real outage: offline from `start` to `end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrueOutage {
    pub hub: String,
    pub device_id: String,
    #[serde(serialize_with = "rfc3339")]
    pub start: Timestamp,
    #[serde(serialize_with = "rfc3339")]
    pub end: Timestamp,
    pub duration_seconds: i64,
}

/// A duplicate-identity episode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PingPong {
    pub hub: String,
    pub device_id: String,
    #[serde(serialize_with = "rfc3339")]
    pub from: Timestamp,
    #[serde(serialize_with = "rfc3339")]
    pub to: Timestamp,
}

/// One identity of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub hub: String,
    pub device_id: String,
    pub sdk: Sdk,
}

/// What really happened.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Truth {
    pub devices: Vec<Device>,
    pub outages: Vec<TrueOutage>,
    pub duplicate_identities: Vec<PingPong>,
    /// Real connection changes, events IoT Hub published, and deliveries (with duplicates).
    pub changes: u64,
    pub published: u64,
    pub deliveries: u64,
}

/// One delivery of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub slot: u32,
    pub connected: bool,
    pub seq: SequenceNumber,
    pub time: Timestamp,
    pub received_at: Timestamp,
    /// The event's number (its Event Grid `id`); a duplicate delivery repeats it.
    pub number: u64,
}

/// A generated fleet history.
#[derive(Debug, Clone, Default)]
pub struct Simulation {
    pub identities: Vec<Identity>,
    /// In delivery order (`received_at`, stable).
    pub deliveries: Vec<Delivery>,
    pub truth: Truth,
}

fn seq_of(n: u64) -> SequenceNumber {
    SequenceNumber::parse(&format!("000000000000000001D4132452F67CE2{n:032X}"))
        .expect("64 hex digits")
}

/// The reconnect gap of a token renewal.
fn renewal_gap(rng: &mut Rng) -> i64 {
    let p = rng.f();
    if p < 0.97 {
        rng.ms(0.5, 15.0)
    } else if p < 0.995 {
        rng.ms(15.0, 60.0)
    } else {
        rng.ms(60.0, 240.0)
    }
}

/// The start of an episode of `len` ms, at random but at least an hour from either end of the
/// window, so that it is seen whole.
fn place(rng: &mut Rng, start: i64, end: i64, len: i64) -> i64 {
    let room = (end - start - len - 2 * 3_600_000).max(1);
    start + 3_600_000 + (rng.f() * room as f64) as i64
}

/// Generates the fleet's history.
pub fn generate(cfg: &Config) -> Simulation {
    let mut rng = Rng(cfg.seed ^ 0x5eed_c0de);
    let start = cfg.start.0;
    let end = start + cfg.length.as_millis() as i64;
    let total_weight: u32 = cfg.sdk_mix.iter().map(|(_, w)| w).sum::<u32>().max(1);
    let mut sim = Simulation::default();
    let n = cfg.identities.max(1);
    // Which identities get outages and ping-pong: distinct, spread over the fleet.
    let mut order: Vec<u32> = (0..n).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let outage_of = |i: u32| {
        order
            .iter()
            .position(|&o| o == i)
            .filter(|p| (*p as u32) < cfg.outages)
    };
    let pingpong_of = |i: u32| {
        order
            .iter()
            .position(|&o| o == i)
            .filter(|p| (*p as u32) >= cfg.outages && (*p as u32) < cfg.outages + cfg.ping_pong)
    };
    // (slot, connected, event time, published at)
    let mut published: Vec<(u32, bool, Timestamp, Timestamp)> = Vec::new();
    for i in 0..n {
        let mut pick = rng.below(u64::from(total_weight)) as u32;
        let sdk = cfg
            .sdk_mix
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map_or(Sdk::Node, |(s, _)| *s);
        let device = format!("sim-{}-{:05}", sdk.name(), i);
        sim.identities.push(Identity::new(&cfg.hub, &device, None));
        sim.truth.devices.push(Device {
            hub: cfg.hub.to_ascii_lowercase(),
            device_id: device.clone(),
            sdk,
        });
        // Special episodes: [from, to) in which renewals do not happen.
        let mut blocked: Option<(i64, i64)> = None;
        let mut changes: Vec<(i64, bool)> = vec![(start + rng.ms(0.0, 60.0), true)];
        if let Some(k) = outage_of(i) {
            let dur =
                cfg.outage_durations[k % cfg.outage_durations.len().max(1)].as_millis() as i64;
            let s = place(&mut rng, start, end, dur);
            blocked = Some((s, s + dur));
            sim.truth.outages.push(TrueOutage {
                hub: cfg.hub.to_ascii_lowercase(),
                device_id: device.clone(),
                start: Timestamp(s),
                end: Timestamp(s + dur),
                duration_seconds: dur / 1000,
            });
        } else if pingpong_of(i).is_some() {
            let len = 30 * 60_000;
            let s = place(&mut rng, start, end, len);
            blocked = Some((s, s + len));
            sim.truth.duplicate_identities.push(PingPong {
                hub: cfg.hub.to_ascii_lowercase(),
                device_id: device.clone(),
                from: Timestamp(s),
                to: Timestamp(s + len),
            });
        }
        let period = sdk.renewal().as_millis() as f64;
        let mut t = start + 60_000 + (rng.f() * period) as i64;
        let mut episode_done = false;
        while t < end {
            if let Some((bs, be)) = blocked.filter(|_| !episode_done) {
                if t + 300_000 >= bs {
                    if pingpong_of(i).is_some() {
                        let mut k = bs;
                        while k < be {
                            changes.push((k, false));
                            changes.push((k + rng.ms(1.0, 5.0), true));
                            k += rng.ms(5.0, 20.0) + 5_000;
                        }
                    } else {
                        changes.push((bs, false));
                        changes.push((be, true));
                    }
                    episode_done = true;
                    t = be + (rng.f() * period) as i64;
                    continue;
                }
            }
            let gap = renewal_gap(&mut rng);
            changes.push((t, false));
            changes.push((t + gap, true));
            t += (period * (0.98 + 0.04 * rng.f())) as i64 + gap;
        }
        changes.retain(|(at, _)| *at < end);
        changes.sort_by_key(|c| c.0);
        sim.truth.changes += changes.len() as u64;
        let phase = rng.ms(0.0, 60.0);
        publish(
            &changes,
            cfg.sampling,
            phase,
            &mut rng,
            |connected, at, tick| {
                published.push((i, connected, Timestamp(at), Timestamp(tick)));
            },
        );
    }
    // Sequence numbers per identity, in publication order.
    published.sort_by_key(|p| (p.0, p.2));
    let mut counters = vec![0u64; n as usize];
    let mut deliveries = Vec::with_capacity(published.len() + published.len() / 50);
    for (number, (slot, connected, time, tick)) in published.iter().enumerate() {
        let c = &mut counters[*slot as usize];
        *c += 1 + rng.below(3);
        let seq = seq_of(*c);
        let mut delay = rng.ms(0.2, 3.0);
        if rng.f() < cfg.retry_rate {
            // Event Grid's schedule (10 s, 30 s, 1 m after each failure), cumulative.
            delay += [10_000, 40_000, 100_000][rng.below(3) as usize];
        }
        let d = Delivery {
            slot: *slot,
            connected: *connected,
            seq,
            time: *time,
            received_at: tick.plus_millis(delay),
            number: number as u64,
        };
        deliveries.push(d);
        if rng.f() < cfg.duplicate_rate {
            deliveries.push(Delivery {
                received_at: d.received_at.plus_millis(rng.ms(10.0, 60.0)),
                ..d
            });
        }
    }
    deliveries.sort_by_key(|d| d.received_at);
    sim.truth.published = published.len() as u64;
    sim.truth.deliveries = deliveries.len() as u64;
    sim.deliveries = deliveries;
    sim
}

/// Applies IoT Hub's sampling to one identity's changes (sorted), calling
/// `emit(connected, event_time, published_at)`.
fn publish(
    changes: &[(i64, bool)],
    sampling: bool,
    phase: i64,
    rng: &mut Rng,
    mut emit: impl FnMut(bool, i64, i64),
) {
    if !sampling {
        for (at, c) in changes {
            emit(*c, *at, *at);
        }
        return;
    }
    let tick_after = |at: i64| {
        let k = (at - phase).div_euclid(60_000) + 1;
        phase + k * 60_000
    };
    let mut state: Option<bool> = None;
    let mut i = 0;
    while i < changes.len() {
        let tick = tick_after(changes[i].0);
        let mut j = i;
        while j < changes.len() && tick_after(changes[j].0) == tick {
            j += 1;
        }
        let (last_at, last) = changes[j - 1];
        if state == Some(last) && j - i >= 2 {
            // Back where the window started: both changes, or only the last one.
            if rng.f() < 0.7 {
                emit(!last, changes[j - 2].0, tick);
            }
        }
        if state != Some(last) || j - i >= 2 {
            emit(last, last_at, tick);
        }
        state = Some(last);
        i = j;
    }
}

/// The deliveries as the replay engine's timeline (received at the modelled delivery times).
pub fn timeline(sim: &Simulation) -> Timeline {
    Timeline {
        identities: sim.identities.clone(),
        events: sim
            .deliveries
            .iter()
            .map(|d| TimedEvent {
                slot: d.slot,
                kind: if d.connected {
                    EventKind::Connected(d.seq)
                } else {
                    EventKind::Disconnected(d.seq)
                },
                time: d.time,
                received_at: d.received_at,
            })
            .collect(),
    }
}

/// One delivery as the Event Grid event IoT Hub sends (compact JSON, one line).
pub fn event_grid_json(sim: &Simulation, d: &Delivery) -> Value {
    let id = &sim.identities[d.slot as usize];
    json!({
        "id": format!("sim-{:010}", d.number),
        "topic": format!("/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/CONNMON-SIM/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/{}", id.hub().to_ascii_uppercase()),
        "subject": format!("devices/{}", id.device()),
        "eventType": if d.connected { crate::decode::TYPE_CONNECTED } else { crate::decode::TYPE_DISCONNECTED },
        "eventTime": d.time.to_rfc3339(),
        "data": {
            "deviceConnectionStateEventInfo": {"sequenceNumber": d.seq.to_hex()},
            "hubName": id.hub(),
            "deviceId": id.device(),
        },
        "dataVersion": "1",
        "metadataVersion": "1"
    })
}

/// How well a run found the truth at one grace period.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Score {
    pub grace_seconds: i64,
    /// `disconnected` alerts during no real outage.
    pub false_alerts: u64,
    /// Real outages longer than grace + 2 minutes (sampling and sweep never hide those).
    pub outages_longer_than_grace_plus_2m: u64,
    /// … of which no `disconnected` alert was raised.
    pub missed_outages: u64,
    /// Shorter outages that alerted anyway (grace < duration ≤ grace + 2 m: sampling decides).
    pub borderline_alerted: u64,
    /// From the real start of an outage to its alert.
    pub detection_delay_median_seconds: Option<i64>,
    pub detection_delay_max_seconds: Option<i64>,
    /// The false alerts themselves (as the webhook would receive them), at most 20.
    pub false_alert_samples: Vec<AlertBody>,
}

/// Scores `alerts` raised at `grace` against the truth.
pub fn score(truth: &Truth, alerts: &[Alert], grace: Duration) -> Score {
    let grace_ms = grace.as_millis() as i64;
    let disc: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Disconnected)
        .collect();
    let matches = |a: &Alert, o: &TrueOutage| {
        a.identity.device() == o.device_id
            && a.identity.hub() == o.hub
            && a.disconnected_at >= o.start
            && a.disconnected_at <= o.end.plus_millis(60_000)
    };
    let mut false_alerts = Vec::new();
    for a in &disc {
        if !truth.outages.iter().any(|o| matches(a, o)) {
            false_alerts.push(AlertBody::from(*a));
        }
    }
    let mut delays = Vec::new();
    let (mut long, mut missed, mut borderline) = (0, 0, 0);
    for o in &truth.outages {
        let hit = disc.iter().find(|a| matches(a, o));
        let dur = o.end.0 - o.start.0;
        if dur > grace_ms + 120_000 {
            long += 1;
            match hit {
                Some(a) => delays.push(a.detected_at.0 - o.start.0),
                None => missed += 1,
            }
        } else if hit.is_some() {
            borderline += 1;
        }
    }
    delays.sort_unstable();
    Score {
        grace_seconds: grace.as_secs() as i64,
        false_alerts: false_alerts.len() as u64,
        outages_longer_than_grace_plus_2m: long,
        missed_outages: missed,
        borderline_alerted: borderline,
        detection_delay_median_seconds: delays.get(delays.len() / 2).map(|d| d / 1000),
        detection_delay_max_seconds: delays.last().map(|d| d / 1000),
        false_alert_samples: false_alerts.into_iter().take(20).collect(),
    }
}
