//! The production state machine on a virtual clock: [`Timeline`] (every identity once, every
//! event in receipt order) and [`run`], which feeds it through `machine::apply` and
//! `machine::claim_due` exactly as the service does, with a sweep timer instead of a wall clock.
//!
//! The clock: an event is received at its `received_at` (its event time in recorded history; event
//! time plus a modelled delivery delay in a simulation). Sweeps run on a timer of period
//! `sweep_every` anchored at the Unix epoch, like the standalone ticker: before each event, every
//! timer tick strictly before its receipt at which something is due is run (a priority queue of
//! due times, checked lazily against `IdentityState::due_at`, the value the stores index). After
//! the last event, ticks up to and including the end of the clock run: the last receipt time, or a
//! later time given to [`run_until`] (when the history was exported). Events received in the same
//! instant as a tick are applied before it.

use crate::machine::{
    self, apply_in_place, claim_due, Alert, Claim, IdentityState, Outage, Outcome, Policy,
};
use crate::model::{ConnectionEvent, EventKind, Identity, Timestamp};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// One event on the timeline. The identity is a slot in [`Timeline::identities`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedEvent {
    pub slot: u32,
    pub kind: EventKind,
    pub time: Timestamp,
    pub received_at: Timestamp,
}

impl TimedEvent {
    /// An event of recorded history: received at its own time.
    pub fn recorded(slot: u32, kind: EventKind, time: Timestamp) -> TimedEvent {
        TimedEvent {
            slot,
            kind,
            time,
            received_at: time,
        }
    }
}

/// Recorded or simulated history, ready to run at any policy.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub identities: Vec<Identity>,
    /// Sorted by `received_at` (stable: input order breaks ties).
    pub events: Vec<TimedEvent>,
}

impl Timeline {
    /// The slots of each device's modules (and the device itself), by device slot: a
    /// `DeviceDeleted` removes them all, as the stores do.
    fn families(&self) -> Vec<Vec<u32>> {
        let mut by_device = std::collections::HashMap::new();
        for (i, id) in self.identities.iter().enumerate() {
            by_device
                .entry((id.hub(), id.device()))
                .or_insert_with(Vec::new)
                .push(i as u32);
        }
        self.identities
            .iter()
            .map(|id| match id.module() {
                Some(_) => Vec::new(),
                None => by_device[&(id.hub(), id.device())].clone(),
            })
            .collect()
    }

    /// The slot of each identity's device-level identity, if the timeline has one.
    fn device_slots(&self) -> Vec<Option<u32>> {
        let index: std::collections::HashMap<(&str, &str), u32> = self
            .identities
            .iter()
            .enumerate()
            .filter(|(_, id)| id.module().is_none())
            .map(|(i, id)| ((id.hub(), id.device()), i as u32))
            .collect();
        self.identities
            .iter()
            .map(|id| index.get(&(id.hub(), id.device())).copied())
            .collect()
    }

    pub fn first_time(&self) -> Option<Timestamp> {
        self.events.iter().map(|e| e.time).min()
    }

    pub fn last_time(&self) -> Option<Timestamp> {
        self.events.iter().map(|e| e.time).max()
    }
}

/// What an identity was before an event was applied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Before {
    pub connected: Option<bool>,
    pub outage: Option<Outage>,
}

/// Watches a run: every applied event (what the identity was before, its state after, what
/// happened).
pub trait Observer {
    fn applied(&mut self, _slot: u32, _before: Before, _after: &IdentityState, _outcome: Outcome) {}
}

/// An observer that watches nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// What one run at one policy produced.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Every alert, in the order it was raised (claims at sweeps, `reconnected`/`flapping` at
    /// events), `disconnected` ones stamped with their sweep tick.
    pub alerts: Vec<Alert>,
    /// Silent reconnects: outages closed inside the grace (`closed_silently`) or restarted by a
    /// newer disconnect (`restarted`, the connect was lost to IoT Hub's sampling).
    pub suppressed_reconnects: u64,
    pub duplicates: u64,
    pub stale: u64,
    /// Outages still open, without an alert, when the input ended: too young to tell.
    pub open_at_end: u64,
    /// Every identity offline when the clock stopped (alerted or not), in slot order.
    pub offline_at_end: Vec<Offline>,
}

/// An identity offline when the clock stopped: its slot and its open outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offline {
    pub slot: u32,
    pub outage: Outage,
}

/// Runs the timeline through the machine under `policy`, sweeping every `sweep_every`, with the
/// clock stopping at the last event.
pub fn run<O: Observer>(
    tl: &Timeline,
    policy: &Policy,
    sweep_every: Duration,
    observer: &mut O,
) -> RunResult {
    run_until(tl, policy, sweep_every, None, observer)
}

/// [`run`], with the clock running on to `until` after the last event when it is later: the
/// sweeps up to then run, so outages that passed their grace by then alert. An `until` before the
/// last event changes nothing (the caller refuses one).
pub fn run_until<O: Observer>(
    tl: &Timeline,
    policy: &Policy,
    sweep_every: Duration,
    until: Option<Timestamp>,
    observer: &mut O,
) -> RunResult {
    let period = (sweep_every.as_millis() as i64).max(1);
    let tick_of = |due: Timestamp| {
        Timestamp(
            due.0.div_euclid(period) * period
                + if due.0.rem_euclid(period) == 0 {
                    0
                } else {
                    period
                },
        )
    };
    // The clock stops at the last receipt, or at `until`: what falls due after it is never swept,
    // so it is not queued (the analysis pass, whose grace is 30 days, queues nothing).
    let end = tl.events.iter().map(|e| e.received_at).max().max(until);
    let reachable = |d: &Timestamp| end.is_some_and(|end| tick_of(*d) <= end);
    let families = tl.families();
    let device_slot = tl.device_slots();
    let mut states = vec![IdentityState::default(); tl.identities.len()];
    // One reusable event per identity: applying never allocates an `Identity`.
    let mut scratch: Vec<ConnectionEvent> = tl
        .identities
        .iter()
        .map(|id| ConnectionEvent {
            identity: id.clone(),
            kind: EventKind::Deleted,
            time: None,
            event_id: String::new(),
        })
        .collect();
    let mut due: BinaryHeap<Reverse<(Timestamp, u32)>> = BinaryHeap::new();
    let mut out = RunResult::default();

    let sweep = |limit: Timestamp,
                 inclusive: bool,
                 states: &mut [IdentityState],
                 due: &mut BinaryHeap<Reverse<(Timestamp, u32)>>,
                 out: &mut RunResult| {
        while let Some(&Reverse((first, _))) = due.peek() {
            // A tick is never before what falls due at it: most events end here, without the
            // division of `tick_of`.
            if first > limit || (!inclusive && first == limit) {
                break;
            }
            let tick = tick_of(first);
            if tick > limit || (!inclusive && tick == limit) {
                break;
            }
            while let Some(&Reverse((at, slot))) = due.peek() {
                if at > tick {
                    break;
                }
                due.pop();
                let s = &mut states[slot as usize];
                if s.due_at(policy) != Some(at) {
                    continue; // superseded by a later event or claim
                }
                let id = &tl.identities[slot as usize];
                match claim_due(id, s, tick, policy) {
                    Claim::Alert(next, alert) => {
                        *s = next;
                        out.alerts.push(alert);
                    }
                    Claim::Snooze(next) => *s = next,
                    Claim::NotDue => continue,
                }
                if let Some(d) = s.due_at(policy).filter(|d| *d > at && reachable(d)) {
                    due.push(Reverse((d, slot)));
                }
            }
        }
    };

    for ev in &tl.events {
        sweep(ev.received_at, false, &mut states, &mut due, &mut out);
        let slot = ev.slot as usize;
        let e = &mut scratch[slot];
        e.kind = ev.kind;
        e.time = Some(ev.time);
        let before = Before {
            connected: states[slot].connected,
            outage: states[slot].outage,
        };
        // A module sees its device's deletion (as the stores do): on a copy, kept only when the
        // event changes the state, as production writes only then.
        let device_deleted_at = match (e.identity.module(), device_slot[slot]) {
            (Some(_), Some(d)) => states[d as usize].deleted_at,
            _ => None,
        };
        let applied = match device_deleted_at {
            Some(d) if states[slot].deleted_at.is_none_or(|own| own < d) => {
                let mut s = machine::with_device_deletion(&states[slot], Some(d));
                let a = apply_in_place(&mut s, e, ev.received_at, policy);
                if a.outcome.changes_state() {
                    states[slot] = s;
                }
                a
            }
            _ => apply_in_place(&mut states[slot], e, ev.received_at, policy),
        };
        let outcome = applied.outcome;
        observer.applied(ev.slot, before, &states[slot], outcome);
        match outcome {
            Outcome::ClosedSilently | Outcome::Restarted => out.suppressed_reconnects += 1,
            Outcome::Duplicate => out.duplicates += 1,
            Outcome::Stale => out.stale += 1,
            _ => {}
        }
        if outcome == Outcome::Deleted {
            let deleted = states[slot].clone();
            for &m in &families[slot] {
                if m as usize != slot {
                    states[m as usize] = deleted.clone();
                }
            }
            // A withdrawn alert that was not "delivered" yet: in a replay every alert counts as
            // delivered when raised, as with a healthy webhook.
        }
        if let Some(a) = applied.alert {
            out.alerts.push(a);
        }
        if !outcome.changes_state() {
            continue;
        }
        if let Some(d) = states[slot].due_at(policy).filter(reachable) {
            due.push(Reverse((d, ev.slot)));
        }
    }
    if let Some(end) = end {
        sweep(end, true, &mut states, &mut due, &mut out);
    }
    out.open_at_end = states
        .iter()
        .filter(|s| s.outage.is_some_and(|o| o.alerted_at.is_none()))
        .count() as u64;
    out.offline_at_end = states
        .iter()
        .enumerate()
        .filter_map(|(slot, s)| {
            s.outage.map(|outage| Offline {
                slot: slot as u32,
                outage,
            })
        })
        .collect();
    out
}
