//! The per-identity state machine: the rules of docs/rules.md as two pure functions.
//!
//! [`apply`] folds one event into an identity's state; [`claim_due`] decides at sweep time whether
//! an open outage has outlived the grace period. Neither does I/O or reads a clock: `now` is a
//! parameter, so every rule is tested table-driven in `tests` below and by `tests/it/core.rs`.

use crate::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use crate::scope::{GraceOverride, Scope, Silence};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// What the machine needs to know besides the events: how long a disconnect may last before it
/// alerts (by default, or per pattern), which identities are watched, and which are silenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The default grace period (`CONNMON_GRACE_PERIOD`).
    pub grace: Duration,
    /// Per-pattern grace periods; the first matching pattern wins.
    pub grace_overrides: Vec<GraceOverride>,
    /// Identities outside it are not tracked at all.
    pub scope: Scope,
    /// While a silence mutes an identity its outage is not claimed; it is once the silence ends.
    pub silences: Vec<Silence>,
    /// Silent reconnects within `flap_window` that make an identity flapping (`CONNMON_FLAP_*`).
    pub flap_threshold: usize,
    pub flap_window: Duration,
    /// Repeat a still-open `disconnected` alert this often (`CONNMON_REMIND_EVERY`).
    pub remind_every: Option<Duration>,
}

impl Policy {
    /// A policy with a default grace and nothing else.
    pub fn new(grace: Duration) -> Policy {
        Policy {
            grace,
            grace_overrides: Vec::new(),
            scope: Scope::default(),
            silences: Vec::new(),
            flap_threshold: 5,
            flap_window: Duration::from_secs(30 * 60),
            remind_every: None,
        }
    }

    /// The default grace in whole seconds (for summaries).
    pub fn grace_seconds(&self) -> i64 {
        self.grace.as_secs() as i64
    }

    /// The grace period that applies to `id`.
    pub fn grace_for(&self, id: &Identity) -> Duration {
        self.grace_overrides
            .iter()
            .find(|o| o.pattern.matches(id))
            .map_or(self.grace, |o| o.grace)
    }

    /// The latest silence muting `id` at `now`, if any.
    pub fn silenced_until(&self, id: &Identity, now: Timestamp) -> Option<Timestamp> {
        self.silences
            .iter()
            .filter(|s| s.mutes(id, now))
            .map(|s| s.until)
            .max()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An open outage: the identity was last seen disconnecting at `started_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub started_at: Timestamp,
    /// Sequence number of the disconnect that opened (or last restarted) it: the outage's name in
    /// `dedupKey`.
    pub seq: SequenceNumber,
    /// When the `disconnected` alert was claimed; `None` while the outage is still within its grace.
    pub alerted_at: Option<Timestamp>,
    /// When the sweep should look at it: start + the identity's grace when it opened, moved to the
    /// end of a silence that muted it. Meaningful only while no alert is claimed.
    pub due_at: Timestamp,
    /// After the alert: when the next `reminder` is due (with `CONNMON_REMIND_EVERY`).
    pub remind_at: Option<Timestamp>,
}

/// Everything kept about one identity. `Default` is "never heard of".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityState {
    /// Highest sequence number applied; events at or below it change nothing (rule 2).
    pub last_seq: Option<SequenceNumber>,
    /// Time of the last applied event (event time, else receipt time).
    pub last_event_at: Option<Timestamp>,
    /// Last known connection state; `None` before the first connect/disconnect.
    pub connected: Option<bool>,
    pub outage: Option<Outage>,
    /// Set by `DeviceDeleted`: events from before this instant are ignored (rule 5).
    pub deleted_at: Option<Timestamp>,
    /// Start times of recent outages that ended inside the grace (oldest first, within the flap
    /// window, at most [`FLAP_MEMORY`]).
    pub flaps: Vec<Timestamp>,
    /// An open `flapping` alert.
    pub flapping: Option<Flapping>,
}

/// Most silent reconnects remembered per identity (bounds the state whatever the settings).
pub const FLAP_MEMORY: usize = 64;

/// A `flapping` alert that was raised and not yet resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flapping {
    pub since: Timestamp,
    /// Sequence number of the event that raised it: names it in `dedupKey`.
    pub seq: SequenceNumber,
}

impl IdentityState {
    /// When this identity's pending outage is due for the sweep, if one is pending: the value the
    /// stores index.
    pub fn due_at(&self, policy: &Policy) -> Option<Timestamp> {
        let outage = self.outage.and_then(|o| match o.alerted_at {
            None => Some(o.due_at),
            Some(_) => o.remind_at,
        });
        outage.into_iter().chain(self.calm_at(policy)).min()
    }

    /// When an open `flapping` alert resolves if no further silent reconnect comes.
    pub fn calm_at(&self, policy: &Policy) -> Option<Timestamp> {
        self.flapping?;
        let last = self.flaps.last()?;
        Some(last.plus_millis(millis(policy.flap_window)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    Disconnected,
    Reconnected,
    Flapping,
    FlappingResolved,
    /// A still-open `disconnected` alert, repeated (same `dedupKey`).
    Reminder,
    /// No event at all from a hub for `CONNMON_HUB_QUIET_AFTER` (the dead-man's switch): the
    /// subscription or the hub may be broken. The identity names the hub, with an empty device id.
    HubQuiet,
    /// Events arrive again from a hub that was reported quiet (same `dedupKey`).
    HubResumed,
    /// The store came back empty (its table deleted, the emulator restarted, the file replaced):
    /// outages open before it are forgotten until their devices report again. Hub and device
    /// ids are empty; `Alert::detail` says what was detected.
    StoreReset,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Disconnected => "disconnected",
            AlertKind::Reconnected => "reconnected",
            AlertKind::Flapping => "flapping",
            AlertKind::FlappingResolved => "flapping_resolved",
            AlertKind::Reminder => "reminder",
            AlertKind::HubQuiet => "hub_quiet",
            AlertKind::HubResumed => "hub_resumed",
            AlertKind::StoreReset => "store_reset",
        }
    }
}

/// An alert in domain terms; `alerts::AlertBody` is its wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub kind: AlertKind,
    pub dedup_key: String,
    pub identity: Identity,
    pub disconnected_at: Timestamp,
    pub reconnected_at: Option<Timestamp>,
    pub downtime_seconds: i64,
    pub grace_period_seconds: i64,
    pub detected_at: Timestamp,
    /// For `flapping` / `flapping_resolved`: how it flapped.
    pub flap: Option<FlapInfo>,
    /// For `store_reset`: what was detected, in words. Boxed: a rare kind's text should not make
    /// every alert (and every enum that carries one) bigger.
    pub detail: Option<Box<Detail>>,
}

/// The words of a `store_reset` alert: which store, and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail(pub String);

/// The particulars of a `flapping` alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlapInfo {
    /// Silent reconnects counted within the window.
    pub disconnects: u32,
    pub window_seconds: i64,
    pub hint: Option<String>,
}

/// What the rhythm of an identity's silent reconnects suggests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// Regular, 40-75 minutes apart: SAS token renewal by the device SDK. Never flapping.
    TokenRenewal,
    /// Typically under two minutes apart: two clients sharing one identity kick each other out.
    Rapid,
    Irregular,
}

/// Hint shown with a rapid `flapping` alert.
pub const DUPLICATE_IDENTITY_HINT: &str =
    "possible duplicate device identity (400027 ConnectionForcefullyClosedOnNewConnection)";

/// Classifies the intervals between the (sorted) times of silent reconnects.
pub fn cadence(times: &[Timestamp]) -> Cadence {
    let mut gaps: Vec<i64> = times.windows(2).map(|w| w[1].0 - w[0].0).collect();
    if gaps.is_empty() {
        return Cadence::Irregular;
    }
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    if gaps.iter().all(|g| (40 * 60_000..=75 * 60_000).contains(g)) {
        Cadence::TokenRenewal
    } else if median < 120_000 {
        Cadence::Rapid
    } else {
        Cadence::Irregular
    }
}

/// What applying an event did, for logs, counters and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Same sequence number as the last applied event (Event Grid redelivery).
    Duplicate,
    /// Lower sequence number than the last applied event (reordered delivery).
    Stale,
    /// The event's time is before the identity's deletion.
    BeforeDeletion,
    /// A disconnect with no outage open: an outage starts.
    Opened,
    /// A newer disconnect while an un-alerted outage was open: the device was briefly back.
    Restarted,
    /// A newer disconnect after the alert was sent: the outage goes on.
    Continued,
    /// A connect with no outage open.
    Connected,
    /// A connect closed an outage inside its grace period: the token-renewal case, silent.
    ClosedSilently,
    /// A connect closed an alerted outage: one `reconnected` alert.
    Reconnected,
    /// `DeviceDeleted` removed the identity's state.
    Deleted,
    /// `DeviceDeleted` older than events already applied (the id was re-created since).
    DeleteSuperseded,
}

impl Outcome {
    /// Whether the store has anything to write.
    pub fn changes_state(self) -> bool {
        !matches!(
            self,
            Outcome::Duplicate
                | Outcome::Stale
                | Outcome::BeforeDeletion
                | Outcome::DeleteSuperseded
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::BeforeDeletion => "before_deletion",
            Outcome::Opened => "opened",
            Outcome::Restarted => "restarted",
            Outcome::Continued => "continued",
            Outcome::Connected => "connected",
            Outcome::ClosedSilently => "closed_silently",
            Outcome::Reconnected => "reconnected",
            Outcome::Deleted => "deleted",
            Outcome::DeleteSuperseded => "delete_superseded",
        }
    }
}

/// The result of [`apply`]: the next state (equal to the old one when nothing changed), what
/// happened, and the alert to queue, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub state: IdentityState,
    pub outcome: Outcome,
    pub alert: Option<Alert>,
    /// The identity was deleted: any of its alerts still waiting for delivery are withdrawn.
    pub cancel_queued_alerts: bool,
}

/// How far an event's own time may run ahead of its receipt. IoT Hub, Event Grid and connmon
/// stamp times on clocks that disagree by seconds; a time further ahead comes from a wrong clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// Whether the event's own time is more than [`MAX_CLOCK_SKEW`] after `received_at`.
pub fn too_far_ahead(event: &ConnectionEvent, received_at: Timestamp) -> bool {
    event
        .time
        .is_some_and(|t| t > received_at.plus_millis(millis(MAX_CLOCK_SKEW)))
}

/// The time the rules take an event to have happened at: its own time, or `received_at` when it
/// has none or when it is [too far ahead](too_far_ahead). Believed, a disconnect stamped 2999
/// would be due in 2999 and a deletion stamped 2999 would make every later event of the device
/// "from before the deletion". Replay receives events at their own time, so there it changes
/// nothing.
pub fn event_time(event: &ConnectionEvent, received_at: Timestamp) -> Timestamp {
    match event.time {
        Some(t) if !too_far_ahead(event, received_at) => t,
        _ => received_at,
    }
}

/// Applies one event to an identity's state (rules 2–5). `received_at` stands in for a missing
/// or [too far ahead](too_far_ahead) event time and stamps a `reconnected` alert's `detectedAt`.
pub fn apply(
    state: &IdentityState,
    event: &ConnectionEvent,
    received_at: Timestamp,
    policy: &Policy,
) -> Transition {
    let mut next = state.clone();
    let Applied {
        outcome,
        alert,
        cancel_queued_alerts,
    } = apply_in_place(&mut next, event, received_at, policy);
    Transition {
        state: next,
        outcome,
        alert,
        cancel_queued_alerts,
    }
}

/// What [`apply_in_place`] did: a [`Transition`] without the state, which was updated in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    pub alert: Option<Alert>,
    pub cancel_queued_alerts: bool,
}

/// [`apply`] on a state the caller owns: the same rules, the state updated where it lies (left as
/// it was when the outcome does not [change state](Outcome::changes_state)). `apply` is this on a
/// copy; `connmon replay` calls it directly, so the millions of events of a history are not each
/// paid for with a copy of the state.
pub fn apply_in_place(
    state: &mut IdentityState,
    event: &ConnectionEvent,
    received_at: Timestamp,
    policy: &Policy,
) -> Applied {
    let at = event_time(event, received_at);
    let unchanged = |outcome| Applied {
        outcome,
        alert: None,
        cancel_queued_alerts: false,
    };
    let seq = match event.kind {
        EventKind::Deleted => return apply_delete(state, at),
        EventKind::Connected(s) | EventKind::Disconnected(s) => s,
    };
    if state.deleted_at.is_some_and(|d| at < d) {
        return unchanged(Outcome::BeforeDeletion);
    }
    if let Some(last) = state.last_seq {
        if seq == last {
            return unchanged(Outcome::Duplicate);
        }
        if seq < last {
            return unchanged(Outcome::Stale);
        }
    }
    let previous = state.outage;
    state.last_seq = Some(seq);
    state.last_event_at = Some(at);
    let mut alert = None;
    let outcome = match event.kind {
        EventKind::Disconnected(_) => {
            state.connected = Some(false);
            match previous {
                None => {
                    state.outage = Some(open_outage(&event.identity, at, seq, policy));
                    Outcome::Opened
                }
                Some(o) if o.alerted_at.is_none() => {
                    // The device was back in between (IoT Hub lost the connect): a silent flap.
                    let id = &event.identity;
                    alert = record_flap(state, id, o.started_at, at, seq, received_at, policy);
                    state.outage = Some(open_outage(id, at, seq, policy));
                    Outcome::Restarted
                }
                Some(_) => Outcome::Continued,
            }
        }
        EventKind::Connected(_) => {
            state.connected = Some(true);
            state.outage = None;
            match previous {
                None => Outcome::Connected,
                Some(o) if o.alerted_at.is_none() => {
                    let id = &event.identity;
                    alert = record_flap(state, id, o.started_at, at, seq, received_at, policy);
                    Outcome::ClosedSilently
                }
                Some(o) => {
                    alert = Some(Alert {
                        kind: AlertKind::Reconnected,
                        dedup_key: dedup_key(&event.identity, &o.seq),
                        identity: event.identity.clone(),
                        disconnected_at: o.started_at,
                        reconnected_at: Some(at),
                        downtime_seconds: at.seconds_since(o.started_at),
                        grace_period_seconds: policy.grace_for(&event.identity).as_secs() as i64,
                        detected_at: received_at,
                        flap: None,
                        detail: None,
                    });
                    Outcome::Reconnected
                }
            }
        }
        EventKind::Deleted => unreachable!("handled above"),
    };
    Applied {
        outcome,
        alert,
        cancel_queued_alerts: false,
    }
}

/// Remembers a silent reconnect (an outage that began at `started` ended inside its grace) and
/// raises `flapping` when the window holds enough of them, unless their rhythm is token renewal or
/// the identity is silenced.
fn record_flap(
    next: &mut IdentityState,
    id: &Identity,
    started: Timestamp,
    at: Timestamp,
    seq: SequenceNumber,
    received_at: Timestamp,
    policy: &Policy,
) -> Option<Alert> {
    let window_start = at.plus_millis(-millis(policy.flap_window));
    next.flaps.push(started);
    next.flaps.sort_unstable();
    next.flaps.retain(|t| *t >= window_start);
    let excess = next.flaps.len().saturating_sub(FLAP_MEMORY);
    next.flaps.drain(..excess);
    if next.flapping.is_some()
        || next.flaps.len() < policy.flap_threshold
        || policy.silenced_until(id, received_at).is_some()
    {
        return None;
    }
    let hint = match cadence(&next.flaps) {
        Cadence::TokenRenewal => return None,
        Cadence::Rapid => Some(DUPLICATE_IDENTITY_HINT.to_string()),
        Cadence::Irregular => None,
    };
    next.flapping = Some(Flapping { since: at, seq });
    Some(Alert {
        kind: AlertKind::Flapping,
        dedup_key: flap_dedup_key(id, &seq),
        identity: id.clone(),
        disconnected_at: next.flaps[0],
        reconnected_at: Some(at),
        downtime_seconds: 0,
        grace_period_seconds: policy.grace_for(id).as_secs() as i64,
        detected_at: received_at,
        flap: Some(FlapInfo {
            disconnects: next.flaps.len() as u32,
            window_seconds: policy.flap_window.as_secs() as i64,
            hint,
        }),
        detail: None,
    })
}

fn open_outage(id: &Identity, at: Timestamp, seq: SequenceNumber, policy: &Policy) -> Outage {
    Outage {
        started_at: at,
        seq,
        alerted_at: None,
        due_at: at.plus_millis(millis(policy.grace_for(id))),
        remind_at: None,
    }
}

fn apply_delete(state: &mut IdentityState, at: Timestamp) -> Applied {
    let superseded = state.last_event_at.is_some_and(|t| t > at);
    let duplicate = state.deleted_at.is_some_and(|d| d >= at) && state.last_seq.is_none();
    if superseded || duplicate {
        return Applied {
            outcome: if duplicate {
                Outcome::Duplicate
            } else {
                Outcome::DeleteSuperseded
            },
            alert: None,
            cancel_queued_alerts: false,
        };
    }
    *state = IdentityState {
        deleted_at: Some(at),
        ..IdentityState::default()
    };
    Applied {
        outcome: Outcome::Deleted,
        alert: None,
        cancel_queued_alerts: true,
    }
}

/// A module's state as seen through its device's deletion: IoT Hub deletes module identities with
/// their device (and sends no event for them), so a module event from before the device's deletion
/// is as stale as one from before the module's own.
pub fn with_device_deletion(
    state: &IdentityState,
    device_deleted_at: Option<Timestamp>,
) -> IdentityState {
    match device_deleted_at {
        Some(d) if state.deleted_at.is_none_or(|own| own < d) => IdentityState {
            deleted_at: Some(d),
            ..state.clone()
        },
        _ => state.clone(),
    }
}

/// What the sweep does with one pending identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Not due (or nothing pending): leave it.
    NotDue,
    /// Due but silenced: move its due time to the end of the silence (the new state), no alert.
    Snooze(IdentityState),
    /// Due: the state with the alert recorded, and the `disconnected` alert (rule 6).
    Alert(IdentityState, Alert),
}

/// At sweep time `now`: claims the identity's outage if it has lasted its grace period, has no
/// alert yet and is not silenced.
pub fn claim_due(
    identity: &Identity,
    state: &IdentityState,
    now: Timestamp,
    policy: &Policy,
) -> Claim {
    if let Some(claim) = remind(identity, state, now, policy) {
        return claim;
    }
    let pending = state
        .outage
        .filter(|o| o.alerted_at.is_none() && o.due_at <= now);
    let Some(outage) = pending else {
        return resolve_flapping(identity, state, now, policy);
    };
    if let Some(until) = policy.silenced_until(identity, now) {
        let next = IdentityState {
            outage: Some(Outage {
                due_at: until,
                ..outage
            }),
            ..state.clone()
        };
        return Claim::Snooze(next);
    }
    let grace = policy.grace_for(identity);
    let alert = Alert {
        kind: AlertKind::Disconnected,
        dedup_key: dedup_key(identity, &outage.seq),
        identity: identity.clone(),
        disconnected_at: outage.started_at,
        reconnected_at: None,
        downtime_seconds: now.seconds_since(outage.started_at),
        grace_period_seconds: grace.as_secs() as i64,
        detected_at: now,
        flap: None,
        detail: None,
    };
    let next = IdentityState {
        outage: Some(Outage {
            alerted_at: Some(now),
            remind_at: policy.remind_every.map(|r| now.plus_millis(millis(r))),
            ..outage
        }),
        ..state.clone()
    };
    Claim::Alert(next, alert)
}

/// A reminder for an alerted outage whose `remind_at` has come (snoozed while silenced).
fn remind(
    identity: &Identity,
    state: &IdentityState,
    now: Timestamp,
    policy: &Policy,
) -> Option<Claim> {
    let outage = state.outage?;
    outage.alerted_at?;
    let due = outage.remind_at.filter(|t| *t <= now)?;
    let with_next = |remind_at: Option<Timestamp>| IdentityState {
        outage: Some(Outage {
            remind_at,
            ..outage
        }),
        ..state.clone()
    };
    if let Some(until) = policy.silenced_until(identity, now) {
        return Some(Claim::Snooze(with_next(Some(until.max(due)))));
    }
    let next_at = policy.remind_every.map(|r| now.plus_millis(millis(r)));
    let alert = Alert {
        kind: AlertKind::Reminder,
        dedup_key: dedup_key(identity, &outage.seq),
        identity: identity.clone(),
        disconnected_at: outage.started_at,
        reconnected_at: None,
        downtime_seconds: now.seconds_since(outage.started_at),
        grace_period_seconds: policy.grace_for(identity).as_secs() as i64,
        detected_at: now,
        flap: None,
        detail: None,
    };
    Some(Claim::Alert(with_next(next_at), alert))
}

/// A `flapping` alert resolves once its window passed without another silent reconnect.
fn resolve_flapping(
    identity: &Identity,
    state: &IdentityState,
    now: Timestamp,
    policy: &Policy,
) -> Claim {
    let (Some(flapping), Some(calm)) = (state.flapping, state.calm_at(policy)) else {
        return Claim::NotDue;
    };
    if calm > now {
        return Claim::NotDue;
    }
    let alert = Alert {
        kind: AlertKind::FlappingResolved,
        dedup_key: flap_dedup_key(identity, &flapping.seq),
        identity: identity.clone(),
        disconnected_at: state.flaps.first().copied().unwrap_or(flapping.since),
        reconnected_at: state.flaps.last().copied(),
        downtime_seconds: 0,
        grace_period_seconds: policy.grace_for(identity).as_secs() as i64,
        detected_at: now,
        flap: Some(FlapInfo {
            disconnects: state.flaps.len() as u32,
            window_seconds: policy.flap_window.as_secs() as i64,
            hint: None,
        }),
        detail: None,
    };
    let next = IdentityState {
        flaps: Vec::new(),
        flapping: None,
        ..state.clone()
    };
    Claim::Alert(next, alert)
}

/// Names one flapping episode (its `flapping` and `flapping_resolved` alerts).
pub fn flap_dedup_key(identity: &Identity, seq: &SequenceNumber) -> String {
    format!("cm1f-{}", &dedup_key(identity, seq)[4..])
}

/// Names one outage: the same for its `disconnected` and `reconnected` alerts, on every retry and
/// every instance, and different for every outage (each starts at a distinct sequence number).
/// The fields are length-prefixed so no choice of ids can collide with another.
pub fn dedup_key(identity: &Identity, seq: &SequenceNumber) -> String {
    let mut h = Sha256::new();
    for part in [
        identity.hub().as_bytes(),
        identity.device().as_bytes(),
        identity.module().unwrap_or("").as_bytes(),
    ] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.update([identity.module().is_some() as u8]);
    h.update(seq.as_bytes());
    let digest = h.finalize();
    let mut s = String::with_capacity(40);
    s.push_str("cm1-");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in &digest[..16] {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}
