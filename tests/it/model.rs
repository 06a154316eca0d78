//! Model-based property test of the core and the SQLite store.
//!
//! Each case is a ground-truth timeline of connects and disconnects for up to six identities
//! (devices and modules, two hubs), reported the way IoT Hub reports it: sequence numbers increase
//! with the real order, one counter per device shared with its modules, token-renewal gaps shorter
//! than the grace period, real outages longer, gaps right at the grace period, the 60 s sampling
//! losing short blips whole or in part (so two connects or two disconnects follow each other), and
//! event times sometimes off the real time by up to 1.5 s (only sequence numbers are promised). Event
//! Grid then delivers every reported event once or several times, after delays from seconds to its
//! 30-minute retry, batched, reordered, with the hub name in either case; sweeps run at random
//! times, at due times ± 1 ms, and once at the end.
//!
//! The schedule drives the real core (`machine::apply` / `claim_due`) and, in a second test, the
//! real SQLite store through the `Store` trait, and the result is checked three ways:
//! - against [`reference`], docs/rules.md §2–§4 and §6 restated in a few lines: the exact sequence
//!   of `disconnected` / `reconnected` alerts (flapping is outside the model);
//! - against properties of the timeline that hold whatever the implementation ([`check_timeline`]):
//!   final state, one alert per outage, no alert for a gap whose reconnect arrived in time, a real
//!   outage alerts exactly once at the first sweep after its grace, nothing left open;
//! - store against core: the same alerts (flapping included), each queued exactly once, the same
//!   final state.
//!
//! Cases shrink to a few events; a failure prints the timeline and the schedule, not the generator's
//! raw numbers. `PROPTEST_CASES` sets the number of cases (see RELIABILITY-model-fuzz.md).

use crate::support::proptest_config;
use connmon::machine::{self, flap_dedup_key, Alert, AlertKind, Claim, IdentityState, Policy};
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::store::sqlite::SqliteStore;
use connmon::store::{Store, StoreConfig};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

/// 2026-11-27T10:00:00Z: case times are milliseconds after this.
const BASE_MS: i64 = 1_795_773_600_000;

/// The identities a case draws from, in order: a device and two of its modules, a device whose id
/// would collide with `d1` + module `x` if keys were joined with `-`, the same device id on another
/// hub, and an unrelated device.
const POOL: &[(&str, &str, Option<&str>)] = &[
    ("hub", "d1", None),
    ("hub", "d1", Some("$edgeAgent")),
    ("hub", "d1-x", None),
    ("hub", "d1", Some("x")),
    ("hub2", "d1", None),
    ("hub", "pump-7", None),
];

const GRACES_S: [i64; 3] = [30, 90, 300];
/// Event Grid's retry schedule (delivery-and-retry.md), up to 30 minutes.
const RETRIES_S: [i64; 6] = [10, 30, 60, 300, 600, 1800];
/// IoT Hub samples connection state every 60 s: changes inside a window can be lost.
const SAMPLING_MS: i64 = 60_000;

// ---------------------------------------------------------------------------------------------
// What the generator draws (shrinks well: vectors lose elements, numbers move towards zero)

/// How long a disconnect lasts before the device is back.
#[derive(Debug, Clone, Copy)]
enum Gap {
    /// Seconds, under a minute: IoT Hub's sampling may lose it.
    Blip(i64),
    /// Per mille of the grace period, below 1000: the token-renewal case, never an alert.
    Renewal(i64),
    /// The grace period plus these milliseconds (−2 s … +2 s): the edge of rule 6.
    AtGrace(i64),
    /// Per mille of the grace period, above 1000: a real outage.
    Outage(i64),
}

/// What IoT Hub's 60 s sampling reports of a disconnect shorter than a minute.
#[derive(Debug, Clone, Copy)]
enum Sampling {
    Both,
    LoseBoth,
    LoseDisconnect,
    LoseConnect,
}

/// One Event Grid delivery of an event: its delay after the event time, a tie-break among things
/// happening in the same millisecond, and whether the hub name is sent upper-case.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    delay_s: i64,
    tie: u8,
    hub_upper: bool,
}

#[derive(Debug, Clone)]
struct RawEpisode {
    /// Connected this long before the disconnect.
    up_s: i64,
    gap: Gap,
    sampling: Sampling,
    dis: Vec<Delivery>,
    con: Vec<Delivery>,
    /// How far the disconnect's and the connect's `eventTime` are off the real time (ms): IoT Hub
    /// promises nothing about its clocks, only about sequence numbers.
    skew: (i64, i64),
}

#[derive(Debug, Clone)]
struct RawTimeline {
    first_s: i64,
    first: Vec<Delivery>,
    first_skew: i64,
    episodes: Vec<RawEpisode>,
    /// The last episode's device never comes back.
    open_at_end: bool,
}

#[derive(Debug, Clone, Copy)]
enum RawSweep {
    /// At this fraction (of `u16::MAX`) of the time until the last delivery.
    Within(u16, u8),
    /// At the due time (event time + grace) of the k-th reported disconnect, plus milliseconds.
    AtDue(usize, i64, u8),
}

#[derive(Clone)]
struct RawCase {
    grace_s: i64,
    /// Silent reconnects within 30 minutes that raise `flapping` (low values make it common).
    flap_threshold: usize,
    /// Where the devices' sequence counters start: 0, or just below 2^64 so that numbers cross
    /// into the upper half of the 256-bit value.
    seq_base: u128,
    /// Timeline k belongs to `POOL[k]`.
    timelines: Vec<RawTimeline>,
    sweeps: Vec<RawSweep>,
}

/// Failures print the built case (timeline and schedule), not the raw draws.
impl fmt::Debug for RawCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", build(self))
    }
}

fn delivery() -> impl Strategy<Value = Delivery> {
    let delay = prop_oneof![
        8 => 0i64..=5,
        2 => (0..RETRIES_S.len(), 0i64..5).prop_map(|(i, j)| RETRIES_S[i] + j),
    ];
    (delay, any::<u8>(), any::<bool>()).prop_map(|(delay_s, tie, hub_upper)| Delivery {
        delay_s,
        tie,
        hub_upper,
    })
}

/// Usually one delivery, sometimes duplicates (Event Grid is at-least-once).
fn deliveries() -> impl Strategy<Value = Vec<Delivery>> {
    prop_oneof![
        3 => prop::collection::vec(delivery(), 1),
        1 => prop::collection::vec(delivery(), 2..=3),
    ]
}

/// Usually none, sometimes up to 1.5 s either way.
fn skew() -> impl Strategy<Value = i64> {
    prop_oneof![4 => Just(0i64), 1 => -1500i64..=1500]
}

fn episode() -> impl Strategy<Value = RawEpisode> {
    let up = prop_oneof![3 => 5i64..600, 1 => 2700i64..4200];
    let gap = prop_oneof![
        (1i64..60).prop_map(Gap::Blip),
        (1i64..1000).prop_map(Gap::Renewal),
        (-2000i64..=2000).prop_map(Gap::AtGrace),
        (1001i64..4000).prop_map(Gap::Outage),
    ];
    let sampling = prop_oneof![
        2 => Just(Sampling::Both),
        1 => Just(Sampling::LoseBoth),
        1 => Just(Sampling::LoseDisconnect),
        1 => Just(Sampling::LoseConnect),
    ];
    let skews = (skew(), skew());
    (up, gap, sampling, deliveries(), deliveries(), skews).prop_map(
        |(up_s, gap, sampling, dis, con, skew)| RawEpisode {
            up_s,
            gap,
            sampling,
            dis,
            con,
            skew,
        },
    )
}

fn timeline() -> impl Strategy<Value = RawTimeline> {
    (
        0i64..600,
        deliveries(),
        skew(),
        prop::collection::vec(episode(), 0..6),
        any::<bool>(),
    )
        .prop_map(
            |(first_s, first, first_skew, episodes, open_at_end)| RawTimeline {
                first_s,
                first,
                first_skew,
                episodes,
                open_at_end,
            },
        )
}

fn sweep() -> impl Strategy<Value = RawSweep> {
    prop_oneof![
        (any::<u16>(), any::<u8>()).prop_map(|(x, tie)| RawSweep::Within(x, tie)),
        (
            0usize..64,
            prop::sample::select(vec![0i64, -1, 1, -1000, 1000, 30_000]),
            any::<u8>()
        )
            .prop_map(|(k, d, tie)| RawSweep::AtDue(k, d, tie)),
    ]
}

fn raw_case() -> impl Strategy<Value = RawCase> {
    (
        prop::sample::select(GRACES_S.to_vec()),
        prop::sample::select(vec![2usize, 3, 5]),
        prop::sample::select(vec![0u128, (1u128 << 64) - 6]),
        prop::collection::vec(timeline(), 1..=POOL.len()),
        prop::collection::vec(sweep(), 0..24),
    )
        .prop_map(
            |(grace_s, flap_threshold, seq_base, timelines, sweeps)| RawCase {
                grace_s,
                flap_threshold,
                seq_base,
                timelines,
                sweeps,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// The built case

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Con,
    Dis,
}

/// A real connection change at `time` (ms after [`BASE_MS`]). IoT Hub reports it with sequence
/// counter `n` and `eventTime` = `time + skew`, unless its sampling lost it (`event` is `None`).
struct Transition {
    who: usize,
    kind: Kind,
    time: i64,
    skew: i64,
    n: u128,
    event: Option<usize>,
}

/// A reported event: identity `POOL[who]`, sequence counter `n`, `eventTime` = `time`, delivered
/// at each of `copies` (ms), with the hub in upper case or not.
struct Event {
    who: usize,
    kind: Kind,
    n: u128,
    time: i64,
    copies: Vec<(i64, Delivery)>,
}

enum Step {
    /// One POST: these events (index, hub upper-case), applied in this order.
    Deliver(Vec<(usize, bool)>),
    Sweep,
}

struct Case {
    grace_ms: i64,
    flap_threshold: usize,
    seq_base: u128,
    transitions: Vec<Transition>,
    events: Vec<Event>,
    /// In execution order, with their time (ms after [`BASE_MS`]).
    steps: Vec<(i64, Step)>,
    /// For each event, the step that first delivered it.
    first_delivery: Vec<usize>,
}

fn build(raw: &RawCase) -> Case {
    let grace_ms = raw.grace_s * 1000;
    let mut trs: Vec<(Transition, Vec<Delivery>, bool)> = Vec::new();
    let mut real = |who, kind, time, skew, reported, copies: &Vec<Delivery>| {
        let t = Transition {
            who,
            kind,
            time,
            skew,
            n: 0,
            event: None,
        };
        trs.push((t, copies.clone(), reported));
    };
    for (who, tl) in raw.timelines.iter().enumerate() {
        let mut t = tl.first_s * 1000;
        real(who, Kind::Con, t, tl.first_skew, true, &tl.first);
        for (i, ep) in tl.episodes.iter().enumerate() {
            t += ep.up_s * 1000;
            let open = tl.open_at_end && i + 1 == tl.episodes.len();
            let gap = match ep.gap {
                Gap::Blip(s) => s * 1000,
                Gap::Renewal(p) | Gap::Outage(p) => grace_ms * p / 1000,
                Gap::AtGrace(d) => grace_ms + d,
            };
            let (dis, con) = match ep.sampling {
                _ if open || gap >= SAMPLING_MS => (true, true),
                Sampling::Both => (true, true),
                Sampling::LoseBoth => (false, false),
                Sampling::LoseDisconnect => (false, true),
                Sampling::LoseConnect => (true, false),
            };
            real(who, Kind::Dis, t, ep.skew.0, dis, &ep.dis);
            if open {
                break;
            }
            t += gap;
            real(who, Kind::Con, t, ep.skew.1, con, &ep.con);
        }
    }
    // One counter per device, shared by its modules, counting every real change in real order (lost
    // ones too, so reported numbers skip).
    trs.sort_by_key(|(t, _, _)| (POOL[t.who].0, POOL[t.who].1, t.time, t.who));
    let mut counters: HashMap<(&str, &str), u128> = HashMap::new();
    for (t, _, _) in trs.iter_mut() {
        let c = counters.entry((POOL[t.who].0, POOL[t.who].1)).or_insert(0);
        *c += 1;
        t.n = *c;
    }
    trs.sort_by_key(|(t, _, _)| (t.who, t.n));
    let mut events = Vec::new();
    for (t, copies, reported) in trs.iter_mut() {
        if *reported {
            t.event = Some(events.len());
            events.push(Event {
                who: t.who,
                kind: t.kind,
                n: t.n,
                time: t.time + t.skew,
                copies: copies
                    .iter()
                    .map(|c| (t.time + c.delay_s * 1000, *c))
                    .collect(),
            });
        }
    }
    let transitions = trs.into_iter().map(|(t, _, _)| t).collect();

    // (time, tie, kind: 0 delivery / 1 sweep, index)
    let mut items: Vec<(i64, u8, u8, usize, bool)> = Vec::new();
    for (e, ev) in events.iter().enumerate() {
        for (at, c) in &ev.copies {
            items.push((*at, c.tie, 0, e, c.hub_upper));
        }
    }
    let last_delivery = items.iter().map(|i| i.0).max().unwrap_or(0);
    let disconnects: Vec<&Event> = events.iter().filter(|e| e.kind == Kind::Dis).collect();
    for s in &raw.sweeps {
        match *s {
            RawSweep::Within(x, tie) => {
                items.push((last_delivery * i64::from(x) / 65_535, tie, 1, 0, false))
            }
            RawSweep::AtDue(k, d, tie) if !disconnects.is_empty() => {
                let due = disconnects[k % disconnects.len()].time + grace_ms;
                items.push((due + d, tie, 1, 0, false));
            }
            RawSweep::AtDue(..) => {}
        }
    }
    // The final sweep: after every delivery and every due time.
    let latest_due = events.iter().map(|e| e.time + grace_ms).max().unwrap_or(0);
    items.push((last_delivery.max(latest_due) + 1000, u8::MAX, 1, 0, false));
    items.sort();

    let mut steps: Vec<(i64, Step)> = Vec::new();
    let mut first_delivery = vec![usize::MAX; events.len()];
    for (time, _, kind, e, upper) in items {
        if kind == 1 {
            steps.push((time, Step::Sweep));
            continue;
        }
        match steps.last_mut() {
            Some((t, Step::Deliver(batch))) if *t == time => batch.push((e, upper)),
            _ => steps.push((time, Step::Deliver(vec![(e, upper)]))),
        }
        let step = steps.len() - 1;
        first_delivery[e] = first_delivery[e].min(step);
    }
    Case {
        grace_ms,
        flap_threshold: raw.flap_threshold,
        seq_base: raw.seq_base,
        transitions,
        events,
        steps,
        first_delivery,
    }
}

/// `12`, `12.345`, `-0.001`: seconds after [`BASE_MS`].
fn secs(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}", ms / 1000)
    } else {
        format!(
            "{}{}.{:03}",
            if ms < 0 { "-" } else { "" },
            ms.abs() / 1000,
            ms.abs() % 1000
        )
    }
}

fn name(who: usize) -> String {
    let (hub, device, module) = POOL[who];
    let id = match module {
        Some(m) => format!("{device}/{m}"),
        None => device.to_string(),
    };
    match hub {
        "hub" => id,
        other => format!("{other}:{id}"),
    }
}

impl Event {
    fn label(&self) -> String {
        let kind = match self.kind {
            Kind::Con => "con",
            Kind::Dis => "dis",
        };
        format!("{} {kind}#{}", name(self.who), self.n)
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "grace {}s, flapping at {}; times in s after {}; #n = sequence counter (from {:#x})",
            self.grace_ms / 1000,
            self.flap_threshold,
            Timestamp::from_unix_millis(BASE_MS),
            self.seq_base
        )?;
        writeln!(
            f,
            "timeline (real order; `lost` = dropped by IoT Hub's sampling):"
        )?;
        for t in &self.transitions {
            let kind = match t.kind {
                Kind::Con => "con",
                Kind::Dis => "dis",
            };
            let fate = match t.event {
                None => "lost".to_string(),
                Some(e) => {
                    let at: Vec<String> = self.events[e]
                        .copies
                        .iter()
                        .map(|(d, _)| secs(*d))
                        .collect();
                    format!("delivered at {}", at.join(", "))
                }
            };
            let skew = match t.skew {
                0 => String::new(),
                s => format!(" (eventTime {})", secs(t.time + s)),
            };
            writeln!(
                f,
                "  {:<15} {kind}#{:<3} @{}{skew} {fate}",
                name(t.who),
                t.n,
                secs(t.time)
            )?;
        }
        writeln!(f, "schedule:")?;
        for (i, (time, step)) in self.steps.iter().enumerate() {
            match step {
                Step::Sweep => writeln!(f, "  {i:>3} @{:<9} sweep", secs(*time))?,
                Step::Deliver(batch) => {
                    let evs: Vec<String> = batch
                        .iter()
                        .map(|&(e, upper)| {
                            let l = self.events[e].label();
                            if upper {
                                format!("{l} (HUB)")
                            } else {
                                l
                            }
                        })
                        .collect();
                    writeln!(f, "  {i:>3} @{:<9} deliver {}", secs(*time), evs.join(", "))?
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the real core and the real store

fn at(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(BASE_MS + ms)
}

/// Puts the counter in the high half too, so ordering must use all 32 bytes.
fn seq(case: &Case, n: u128) -> SequenceNumber {
    let v = case.seq_base + n;
    SequenceNumber::parse(&format!("{:032X}{:032X}", v >> 64, v)).expect("64 hex digits")
}

fn identity(who: usize, hub_upper: bool) -> Identity {
    let (hub, device, module) = POOL[who];
    let hub = if hub_upper {
        hub.to_ascii_uppercase()
    } else {
        hub.to_string()
    };
    Identity::new(&hub, device, module)
}

fn connection_event(case: &Case, e: usize, hub_upper: bool) -> ConnectionEvent {
    let ev = &case.events[e];
    let s = seq(case, ev.n);
    ConnectionEvent {
        identity: identity(ev.who, hub_upper),
        kind: match ev.kind {
            Kind::Con => EventKind::Connected(s),
            Kind::Dis => EventKind::Disconnected(s),
        },
        time: Some(at(ev.time)),
        event_id: ev.label(),
    }
}

fn policy(case: &Case) -> Policy {
    Policy {
        flap_threshold: case.flap_threshold,
        ..Policy::new(Duration::from_millis(case.grace_ms as u64))
    }
}

/// What a run produced: every alert with the step that raised it, and each identity's final
/// connection state.
struct Run {
    alerts: Vec<(usize, Alert)>,
    connected: BTreeMap<Identity, Option<bool>>,
    /// Events that changed nothing (duplicates and stale ones), for coverage.
    ignored: usize,
}

fn run_core(case: &Case) -> Run {
    let policy = policy(case);
    let mut states: BTreeMap<Identity, IdentityState> = BTreeMap::new();
    let mut alerts = Vec::new();
    let mut ignored = 0;
    for (i, (time, step)) in case.steps.iter().enumerate() {
        match step {
            Step::Deliver(batch) => {
                for &(e, upper) in batch {
                    let ev = connection_event(case, e, upper);
                    let state = states.entry(ev.identity.clone()).or_default();
                    let t = machine::apply(state, &ev, at(*time), &policy);
                    ignored += usize::from(!t.outcome.changes_state());
                    alerts.extend(t.alert.map(|a| (i, a)));
                    *state = t.state;
                }
            }
            Step::Sweep => {
                for (id, state) in states.iter_mut() {
                    match machine::claim_due(id, state, at(*time), &policy) {
                        Claim::Alert(next, a) => {
                            alerts.push((i, a));
                            *state = next;
                        }
                        Claim::Snooze(_) => panic!("snoozed {id} without any silence"),
                        Claim::NotDue => {}
                    }
                }
            }
        }
    }
    Run {
        alerts,
        connected: states.into_iter().map(|(k, s)| (k, s.connected)).collect(),
        ignored,
    }
}

/// The same schedule through a SQLite file: one `Store::apply` per POST, one `claim_due` per
/// sweep. Returns the run and the outbox as `(kind, dedupKey)`, oldest first.
fn run_store(case: &Case) -> (Run, Vec<(String, String)>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.db");
    let cfg = StoreConfig {
        policy: policy(case),
        channels: vec!["log".into()],
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (alerts, outbox) = rt.block_on(async {
        let store = SqliteStore::open(&path, cfg).expect("open the store");
        let mut alerts = Vec::new();
        for (i, (time, step)) in case.steps.iter().enumerate() {
            match step {
                Step::Deliver(batch) => {
                    let events = batch
                        .iter()
                        .map(|&(e, upper)| connection_event(case, e, upper))
                        .collect();
                    let applied = store.apply(events, at(*time)).await.expect("apply");
                    alerts.extend(
                        applied
                            .into_iter()
                            .filter_map(|a| a.expect("not refused").alert)
                            .map(|a| (i, a)),
                    );
                }
                Step::Sweep => {
                    let claimed = store.claim_due(at(*time), 10_000).await.expect("claim");
                    alerts.extend(claimed.into_iter().map(|a| (i, a)));
                }
            }
        }
        let queued = store
            .queued("log", Timestamp::from_unix_millis(i64::MAX), 100_000)
            .await
            .expect("queued");
        let outbox = queued
            .iter()
            .map(|q| {
                let v: serde_json::Value = serde_json::from_str(&q.body).expect("JSON body");
                (
                    v["kind"].as_str().unwrap_or("?").to_string(),
                    v["dedupKey"].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect();
        (alerts, outbox)
    });
    drop(rt);
    let conn = rusqlite::Connection::open(&path).expect("open the file");
    let mut stmt = conn
        .prepare("SELECT hub, device, module, connected FROM identities")
        .expect("query");
    let connected = stmt
        .query_map([], |r| {
            let module: String = r.get(2)?;
            Ok((
                Identity::new(
                    &r.get::<_, String>(0)?,
                    &r.get::<_, String>(1)?,
                    Some(&module),
                ),
                r.get::<_, Option<bool>>(3)?,
            ))
        })
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    let run = Run {
        alerts,
        connected,
        ignored: 0,
    };
    (run, outbox)
}

// ---------------------------------------------------------------------------------------------
// The reference model: docs/rules.md §2, §3, §4 and §6, and nothing else

/// What the model keeps per identity: the highest sequence counter applied, and the open outage
/// (start time, counter of the disconnect that opened or last restarted it, alert sent).
#[derive(Default)]
struct RefIdentity {
    last: Option<u128>,
    outage: Option<(i64, u128, bool)>,
}

/// The `disconnected` / `reconnected` alerts docs/rules.md prescribes for the schedule, as [`line`]s.
fn reference(case: &Case) -> Vec<String> {
    let grace_s = case.grace_ms / 1000;
    let mut ids: BTreeMap<usize, RefIdentity> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, (now, step)) in case.steps.iter().enumerate() {
        match step {
            Step::Deliver(batch) => {
                for &(e, _) in batch {
                    let ev = &case.events[e];
                    let id = ids.entry(ev.who).or_default();
                    // Rule 2: only a greater sequence number changes anything.
                    if id.last.is_some_and(|last| ev.n <= last) {
                        continue;
                    }
                    id.last = Some(ev.n);
                    match (ev.kind, id.outage) {
                        // Rule 3: opens, or restarts an outage without a sent alert, or continues.
                        (Kind::Dis, None | Some((_, _, false))) => {
                            id.outage = Some((ev.time, ev.n, false))
                        }
                        (Kind::Dis, Some((_, _, true))) => {}
                        // Rule 4: closes; one `reconnected` if its `disconnected` was sent.
                        (Kind::Con, outage) => {
                            if let Some((start, n, true)) = outage {
                                let down = (ev.time - start).max(0) / 1000;
                                out.push(line_parts(
                                    i,
                                    *now,
                                    "reconnected",
                                    ev.who,
                                    n,
                                    start,
                                    Some(ev.time),
                                    down,
                                    grace_s,
                                ));
                            }
                            id.outage = None;
                        }
                    }
                }
            }
            // Rule 6: one `disconnected` for each outage with start + grace <= now and none yet.
            Step::Sweep => {
                for (&who, id) in ids.iter_mut() {
                    if let Some((start, n, alerted)) = &mut id.outage {
                        if !*alerted && *start + case.grace_ms <= *now {
                            *alerted = true;
                            let down = (now - *start) / 1000;
                            out.push(line_parts(
                                i,
                                *now,
                                "disconnected",
                                who,
                                *n,
                                *start,
                                None,
                                down,
                                grace_s,
                            ));
                        }
                    }
                }
            }
        }
    }
    sorted_per_step(out)
}

/// Alert lines are compared sorted within a step: a sweep may claim identities in any order.
fn sorted_per_step(mut lines: Vec<String>) -> Vec<String> {
    lines.sort_by(|a, b| step_of(a).cmp(&step_of(b)).then(a.cmp(b)));
    lines
}

fn step_of(line: &str) -> usize {
    line.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX)
}

#[allow(clippy::too_many_arguments)]
fn line_parts(
    step: usize,
    now: i64,
    kind: &str,
    who: usize,
    n: u128,
    from: i64,
    back: Option<i64>,
    down: i64,
    grace_s: i64,
) -> String {
    format!(
        "{step:>3} @{} {kind} {} key=#{n} from={} back={} down={down}s grace={grace_s}s",
        secs(now),
        name(who),
        secs(from),
        back.map_or("-".to_string(), secs)
    )
}

/// Maps what the real code produced back to case terms: identity → pool index, dedup key → the
/// disconnect (or flapping event) it names.
struct Names {
    who: HashMap<Identity, usize>,
    keys: HashMap<String, usize>,
    flap_keys: HashMap<String, usize>,
}

impl Names {
    fn new(case: &Case) -> Names {
        let who = (0..POOL.len()).map(|w| (identity(w, false), w)).collect();
        let mut keys = HashMap::new();
        let mut flap_keys = HashMap::new();
        for (e, ev) in case.events.iter().enumerate() {
            let id = identity(ev.who, false);
            let s = seq(case, ev.n);
            keys.insert(machine::dedup_key(&id, &s), e);
            flap_keys.insert(flap_dedup_key(&id, &s), e);
        }
        Names {
            who,
            keys,
            flap_keys,
        }
    }

    /// The event an alert's dedup key names, if any.
    fn keyed(&self, a: &Alert) -> Option<usize> {
        match a.kind {
            AlertKind::Flapping | AlertKind::FlappingResolved => {
                self.flap_keys.get(&a.dedup_key).copied()
            }
            _ => self.keys.get(&a.dedup_key).copied(),
        }
    }
}

/// An alert as a transcript line, in the reference model's terms.
fn line(case: &Case, names: &Names, step: usize, a: &Alert) -> String {
    let now = case.steps[step].0;
    let who = names.who.get(&a.identity).copied();
    let key = names.keyed(a).map(|e| case.events[e].n);
    let rel = |t: Timestamp| t.unix_millis() - BASE_MS;
    let mut l = match (who, key) {
        (Some(who), Some(n)) => line_parts(
            step,
            now,
            a.kind.as_str(),
            who,
            n,
            rel(a.disconnected_at),
            a.reconnected_at.map(rel),
            a.downtime_seconds,
            a.grace_period_seconds,
        ),
        _ => format!("{step:>3} {a:?} (identity or dedupKey names nothing in the case)"),
    };
    if rel(a.detected_at) != now {
        l.push_str(&format!(" detectedAt={}", secs(rel(a.detected_at))));
    }
    if let Some(f) = &a.flap {
        l.push_str(&format!(
            " flaps={} hint={}",
            f.disconnects,
            f.hint.is_some()
        ));
    }
    l
}

fn listing(lines: &[String]) -> String {
    if lines.is_empty() {
        "(none)".to_string()
    } else {
        lines.join("\n  ")
    }
}

fn is_outage_alert(a: &Alert) -> bool {
    matches!(a.kind, AlertKind::Disconnected | AlertKind::Reconnected)
}

// ---------------------------------------------------------------------------------------------
// Properties of the timeline, independent of how the rules are implemented

/// How often each conditional property had something to check, over a whole run.
#[derive(Debug, Default)]
struct Coverage {
    cases: usize,
    lost_by_sampling: usize,
    ignored_events: usize,
    renewal_gaps_checked: usize,
    real_outages_checked: usize,
    reconnected: usize,
    flapping: usize,
}

fn check_timeline(case: &Case, run: &Run, cov: &mut Coverage) -> Result<(), String> {
    let names = Names::new(case);
    let grace_s = case.grace_ms / 1000;
    let sweeps: Vec<usize> = (0..case.steps.len())
        .filter(|&i| matches!(case.steps[i].1, Step::Sweep))
        .collect();
    // The first sweep at or after `t`.
    let first_sweep_from = |t: i64| {
        *sweeps
            .iter()
            .find(|&&i| case.steps[i].0 >= t)
            .expect("the final sweep is after every due time")
    };
    let per_identity = |who: usize| -> Vec<usize> {
        let mut v: Vec<usize> = (0..case.events.len())
            .filter(|&e| case.events[e].who == who)
            .collect();
        v.sort_by_key(|&e| case.events[e].n);
        v
    };
    let alerts_of = |who: usize| -> Vec<&(usize, Alert)> {
        run.alerts
            .iter()
            .filter(|(_, a)| names.who.get(&a.identity) == Some(&who))
            .collect()
    };

    for (step, a) in &run.alerts {
        let Some(e) = names.keyed(a) else {
            return Err(format!("alert at step {step} names no event: {a:?}"));
        };
        let ev = &case.events[e];
        let now = case.steps[*step].0;
        match a.kind {
            // Never early, and about the disconnect its key names.
            AlertKind::Disconnected => {
                let ok = ev.kind == Kind::Dis
                    && a.disconnected_at == at(ev.time)
                    && a.detected_at == at(now)
                    && now >= ev.time + case.grace_ms
                    && a.downtime_seconds >= grace_s
                    && a.grace_period_seconds == grace_s;
                if !ok {
                    return Err(format!(
                        "step {step}: `disconnected` does not match its disconnect {}: {a:?}",
                        ev.label()
                    ));
                }
            }
            AlertKind::Reconnected => {
                let back = a.reconnected_at.map(|t| t.unix_millis() - BASE_MS);
                let by = case.events.iter().find(|c| {
                    c.who == ev.who && c.kind == Kind::Con && c.n > ev.n && Some(c.time) == back
                });
                if by.is_none() || a.disconnected_at != at(ev.time) {
                    return Err(format!(
                        "step {step}: `reconnected` names no later connect of {}: {a:?}",
                        ev.label()
                    ));
                }
                cov.reconnected += 1;
            }
            AlertKind::Flapping => cov.flapping += 1,
            _ => {}
        }
    }

    for who in 0..case_identities(case) {
        let evs = per_identity(who);
        let Some(&last) = evs.last() else { continue };
        let outage_alerts: Vec<&Alert> = alerts_of(who)
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| is_outage_alert(a))
            .collect();

        // Final state: the event with the highest sequence number, whatever the delivery order.
        let want = Some(case.events[last].kind == Kind::Con);
        let got = run.connected.get(&identity(who, false)).copied().flatten();
        if got != want {
            return Err(format!(
                "{}: final state connected={got:?}, but the last event is {}",
                name(who),
                case.events[last].label()
            ));
        }

        // One page per outage: `disconnected` and `reconnected` alternate, a `reconnected` closes
        // the `disconnected` just before it, and no outage is paged twice.
        let mut open: Option<usize> = None;
        let mut seen = std::collections::HashSet::new();
        let label = |e: Option<usize>| e.map_or("none".to_string(), |e| case.events[e].label());
        for a in &outage_alerts {
            let key = names.keyed(a);
            match (a.kind, open) {
                (AlertKind::Disconnected, None) if seen.insert(key) => open = key,
                (AlertKind::Reconnected, Some(k)) if Some(k) == key => open = None,
                _ => {
                    return Err(format!(
                        "{}: `{}` for {} out of turn (open outage: {})",
                        name(who),
                        a.kind.as_str(),
                        label(key),
                        label(open)
                    ))
                }
            }
        }
        // Nothing left open for a device that is back; a device still down has its page.
        match (case.events[last].kind, open) {
            (Kind::Con, Some(k)) => {
                return Err(format!(
                    "{}: back ({}) but the outage of {} never got its `reconnected`",
                    name(who),
                    case.events[last].label(),
                    case.events[k].label()
                ))
            }
            (Kind::Dis, None) => {
                return Err(format!(
                    "{}: still down since {} at the final sweep, but no open `disconnected`",
                    name(who),
                    case.events[last].label()
                ))
            }
            _ => {}
        }

        for (k, &d) in evs.iter().enumerate() {
            let dis = &case.events[d];
            if dis.kind != Kind::Dis {
                continue;
            }
            let due_sweep = first_sweep_from(dis.time + case.grace_ms);
            let keyed: Vec<&(usize, Alert)> = alerts_of(who)
                .into_iter()
                .filter(|(_, a)| a.kind == AlertKind::Disconnected && names.keyed(a) == Some(d))
                .collect();
            // A disconnect whose successor (reconnect or a newer disconnect) arrived before the
            // first sweep past its grace never pages: the token-renewal case, also when delivered
            // out of order or twice.
            if let Some(&next) = evs.get(k + 1) {
                if case.first_delivery[next] < due_sweep {
                    cov.renewal_gaps_checked += 1;
                    if !keyed.is_empty() {
                        return Err(format!(
                            "{}: paged although {} arrived (step {}) before the first sweep past \
                             its grace (step {due_sweep})",
                            dis.label(),
                            case.events[next].label(),
                            case.first_delivery[next]
                        ));
                    }
                }
            }
            // A real outage whose evidence is in time pages exactly once, at the first sweep past
            // its grace: the disconnect follows a connect delivered before it (or nothing), it
            // arrived before that sweep, and nothing newer did.
            let prev_ok = match k.checked_sub(1).map(|p| evs[p]) {
                None => true,
                Some(p) => {
                    case.events[p].kind == Kind::Con
                        && case.first_delivery[p] < case.first_delivery[d]
                }
            };
            let newer_in_time = evs[k + 1..]
                .iter()
                .any(|&n| case.first_delivery[n] < due_sweep);
            if prev_ok && case.first_delivery[d] < due_sweep && !newer_in_time {
                cov.real_outages_checked += 1;
                let once_on_time = keyed.len() == 1 && keyed[0].0 == due_sweep;
                if !once_on_time {
                    let steps: Vec<usize> = keyed.iter().map(|(s, _)| *s).collect();
                    return Err(format!(
                        "{}: a real outage must page exactly once at step {due_sweep}, paged at \
                         steps {steps:?}",
                        dis.label()
                    ));
                }
            }
        }
    }

    // Flapping: one `flapping` per episode, resolved at most once and only after it.
    let mut flaps: HashMap<&str, (usize, usize)> = HashMap::new();
    for (_, a) in &run.alerts {
        let f = flaps.entry(&a.dedup_key).or_default();
        match a.kind {
            AlertKind::Flapping if f.0 == 0 => f.0 = 1,
            AlertKind::FlappingResolved if f.0 == 1 && f.1 == 0 => f.1 = 1,
            AlertKind::Flapping | AlertKind::FlappingResolved => {
                return Err(format!("flapping alert out of turn: {a:?}"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn case_identities(case: &Case) -> usize {
    case.events.iter().map(|e| e.who + 1).max().unwrap_or(0)
}

/// Checks the core on one case; with `store`, the SQLite store too.
fn check_case(case: &Case, store: bool, cov: &mut Coverage) -> Result<(), String> {
    let names = Names::new(case);
    let core = run_core(case);
    cov.cases += 1;
    cov.ignored_events += core.ignored;
    cov.lost_by_sampling += case
        .transitions
        .iter()
        .filter(|t| t.event.is_none())
        .count();

    let model = reference(case);
    let got: Vec<String> = sorted_per_step(
        core.alerts
            .iter()
            .filter(|(_, a)| is_outage_alert(a))
            .map(|(s, a)| line(case, &names, *s, a))
            .collect(),
    );
    if got != model {
        return Err(format!(
            "the core's alerts differ from the reference model\nmodel:\n  {}\ncore:\n  {}",
            listing(&model),
            listing(&got)
        ));
    }
    check_timeline(case, &core, cov)?;

    if store {
        let (stored, outbox) = run_store(case);
        let all = |r: &Run| {
            sorted_per_step(
                r.alerts
                    .iter()
                    .map(|(s, a)| line(case, &names, *s, a))
                    .collect(),
            )
        };
        let (want, got) = (all(&core), all(&stored));
        if want != got {
            return Err(format!(
                "the SQLite store's alerts differ from the core's\ncore:\n  {}\nstore:\n  {}",
                listing(&want),
                listing(&got)
            ));
        }
        let raised: Vec<(String, String)> = stored
            .alerts
            .iter()
            .map(|(_, a)| (a.kind.as_str().to_string(), a.dedup_key.clone()))
            .collect();
        if outbox != raised {
            return Err(format!(
                "the outbox does not hold each raised alert exactly once, in order\nraised: \
                 {raised:?}\noutbox: {outbox:?}"
            ));
        }
        if stored.connected != core.connected {
            return Err(format!(
                "final states differ\ncore:  {:?}\nstore: {:?}",
                core.connected, stored.connected
            ));
        }
    }
    Ok(())
}

/// Runs the property over generated cases and, for a run of a reasonable size, checks that every
/// conditional property actually had cases to check.
fn check_property(default_cases: u32, store: bool) {
    let config = proptest_config(default_cases);
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let cov = RefCell::new(Coverage::default());
    let result = runner.run(&raw_case(), |raw| {
        let case = build(&raw);
        check_case(&case, store, &mut cov.borrow_mut()).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let cov = cov.into_inner();
    eprintln!("model coverage over {cases} cases: {cov:?}");
    if cases >= 16 {
        assert!(
            cov.lost_by_sampling > 0
                && cov.ignored_events > 0
                && cov.renewal_gaps_checked > 0
                && cov.real_outages_checked > 0
                && cov.reconnected > 0,
            "the generator no longer exercises every property: {cov:?}"
        );
    }
}

#[test]
fn the_core_follows_the_reference_model_under_event_grid_delivery() {
    check_property(256, false);
}

#[test]
fn the_sqlite_store_follows_the_core_under_event_grid_delivery() {
    check_property(24, true);
}
