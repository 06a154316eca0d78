//! What operators see, decided purely: an identity's status at `now`, the bounded
//! history of what happened to it, and per-hub liveness (the dead-man's switch). No I/O, no clock.
//!
//! The stores keep the [`History`] beside each identity's state (one text column / property,
//! written in the same conditional write as the state) and one [`HubState`] per hub; the status
//! API, the dashboard and the sweep read them through these functions.

use crate::machine::{dedup_key, Alert, AlertKind, IdentityState, Outcome, Policy, Transition};
use crate::model::{Identity, SequenceNumber, Timestamp};
use std::time::Duration;

/// Where an identity stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Last heard connecting (or connected after an outage).
    Connected,
    /// Disconnected, still within its grace period (or held back by a silence): no alert yet.
    Pending,
    /// Disconnected past its grace period: the `disconnected` alert was raised.
    Alerted,
    /// Deleted from the hub (a tombstone kept for late deliveries).
    Deleted,
    /// Known, but no connect or disconnect applied yet.
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connected => "connected",
            State::Pending => "pending",
            State::Alerted => "alerted",
            State::Deleted => "deleted",
            State::Unknown => "unknown",
        }
    }
}

/// An identity's status at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// An open `flapping` alert.
    pub flapping: bool,
    /// A pending outage held back by a silence active at `now`: until when.
    pub silenced_until: Option<Timestamp>,
    /// The open outage's start.
    pub offline_since: Option<Timestamp>,
    /// A pending outage: when it alerts (start + grace, or the end of a silence).
    pub due_at: Option<Timestamp>,
}

/// Classifies `state` at `now` under `policy`.
pub fn classify(id: &Identity, state: &IdentityState, now: Timestamp, policy: &Policy) -> Status {
    let outage = state.outage;
    let st = match (outage, state.connected) {
        (Some(o), _) if o.alerted_at.is_some() => State::Alerted,
        (Some(_), _) => State::Pending,
        (None, _) if state.last_seq.is_none() && state.deleted_at.is_some() => State::Deleted,
        (None, Some(true)) => State::Connected,
        // A connect closes every outage, so "no outage, last seen disconnected" cannot be stored;
        // treated as unknown rather than guessed.
        (None, _) => State::Unknown,
    };
    let silenced_until = match st {
        State::Pending => policy.silenced_until(id, now),
        _ => None,
    };
    Status {
        state: st,
        flapping: state.flapping.is_some(),
        silenced_until,
        offline_since: outage.map(|o| o.started_at),
        due_at: outage
            .filter(|o| o.alerted_at.is_none())
            .map(|o| silenced_until.map_or(o.due_at, |s| s.max(o.due_at))),
    }
}

/// What a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Connected,
    Disconnected,
    Deleted,
    /// An alert was raised (and queued for every channel).
    Alert(AlertKind),
}

impl ChangeKind {
    /// The name in the API (`connected`, `disconnected`, `deleted`, `alert:disconnected`, …).
    pub fn name(self) -> String {
        match self {
            ChangeKind::Connected => "connected".into(),
            ChangeKind::Disconnected => "disconnected".into(),
            ChangeKind::Deleted => "deleted".into(),
            ChangeKind::Alert(k) => format!("alert:{}", k.as_str()),
        }
    }

    fn code(self) -> char {
        match self {
            ChangeKind::Connected => 'c',
            ChangeKind::Disconnected => 'd',
            ChangeKind::Deleted => 'x',
            ChangeKind::Alert(AlertKind::Disconnected) => 'A',
            ChangeKind::Alert(AlertKind::Reconnected) => 'R',
            ChangeKind::Alert(AlertKind::Reminder) => 'M',
            ChangeKind::Alert(AlertKind::Flapping) => 'F',
            ChangeKind::Alert(AlertKind::FlappingResolved) => 'f',
            ChangeKind::Alert(AlertKind::HubQuiet) => 'Q',
            ChangeKind::Alert(AlertKind::HubResumed) => 'q',
            ChangeKind::Alert(AlertKind::StoreReset) => 'S',
        }
    }

    fn from_code(c: char) -> Option<ChangeKind> {
        Some(match c {
            'c' => ChangeKind::Connected,
            'd' => ChangeKind::Disconnected,
            'x' => ChangeKind::Deleted,
            'A' => ChangeKind::Alert(AlertKind::Disconnected),
            'R' => ChangeKind::Alert(AlertKind::Reconnected),
            'M' => ChangeKind::Alert(AlertKind::Reminder),
            'F' => ChangeKind::Alert(AlertKind::Flapping),
            'f' => ChangeKind::Alert(AlertKind::FlappingResolved),
            'Q' => ChangeKind::Alert(AlertKind::HubQuiet),
            'q' => ChangeKind::Alert(AlertKind::HubResumed),
            'S' => ChangeKind::Alert(AlertKind::StoreReset),
            _ => return None,
        })
    }
}

/// One thing that happened to an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// When (event time for connects and disconnects, `detectedAt` for alerts); whole seconds.
    pub at: Timestamp,
    pub kind: ChangeKind,
    /// How long: for a connect that closed an outage, the outage; for an alert, its downtime.
    pub seconds: Option<i64>,
}

/// Entries kept per identity: at one token renewal an hour, about eight hours of history.
pub const HISTORY_LEN: usize = 16;

/// An identity's recent changes, oldest first, at most [`HISTORY_LEN`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History(pub Vec<Change>);

impl History {
    /// Appends `changes`, dropping the oldest beyond [`HISTORY_LEN`].
    pub fn extend(&mut self, changes: impl IntoIterator<Item = Change>) {
        self.0.extend(changes);
        let excess = self.0.len().saturating_sub(HISTORY_LEN);
        self.0.drain(..excess);
    }

    /// The stored form: `{code}{unix seconds}[+{seconds}]`, comma-separated (about 14 bytes an
    /// entry). `None` when empty.
    pub fn encode(&self) -> Option<String> {
        if self.0.is_empty() {
            return None;
        }
        let mut s = String::with_capacity(self.0.len() * 16);
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push(c.kind.code());
            s.push_str(&c.at.unix_millis().div_euclid(1000).to_string());
            if let Some(secs) = c.seconds {
                s.push('+');
                s.push_str(&secs.to_string());
            }
        }
        Some(s)
    }

    /// The inverse of [`History::encode`]; unreadable entries are skipped (history is for display).
    pub fn decode(text: Option<&str>) -> History {
        let Some(text) = text else {
            return History::default();
        };
        let entries = text.split(',').filter_map(|e| {
            let mut chars = e.chars();
            let kind = ChangeKind::from_code(chars.next()?)?;
            let rest = chars.as_str();
            let (at, seconds) = match rest.split_once('+') {
                Some((at, s)) => (at, Some(s.parse().ok()?)),
                None => (rest, None),
            };
            let at: i64 = at.parse().ok()?;
            Some(Change {
                at: Timestamp::from_unix_millis(at.checked_mul(1000)?),
                kind,
                seconds,
            })
        });
        let mut h = History::default();
        h.extend(entries);
        h
    }
}

/// What applying an event adds to the identity's history (nothing for duplicates and stale
/// events). `before` is the state the transition was computed from.
pub fn changes_of(before: &IdentityState, t: &Transition) -> Vec<Change> {
    let at = t.state.last_event_at;
    let mut out = Vec::new();
    match t.outcome {
        Outcome::Opened | Outcome::Restarted | Outcome::Continued => {
            out.extend(at.map(|at| Change {
                at,
                kind: ChangeKind::Disconnected,
                seconds: None,
            }))
        }
        Outcome::Connected | Outcome::ClosedSilently | Outcome::Reconnected => {
            out.extend(at.map(|at| Change {
                at,
                kind: ChangeKind::Connected,
                seconds: before.outage.map(|o| at.seconds_since(o.started_at)),
            }))
        }
        Outcome::Deleted => out.extend(t.state.deleted_at.map(|at| Change {
            at,
            kind: ChangeKind::Deleted,
            seconds: None,
        })),
        Outcome::Duplicate
        | Outcome::Stale
        | Outcome::BeforeDeletion
        | Outcome::DeleteSuperseded => {}
    }
    out.extend(t.alert.as_ref().map(alert_change));
    out
}

/// The history entry for a raised alert.
pub fn alert_change(a: &Alert) -> Change {
    Change {
        at: a.detected_at,
        kind: ChangeKind::Alert(a.kind),
        seconds: Some(a.downtime_seconds),
    }
}

/// What connmon knows about one hub: when an event from it last arrived, and whether a
/// `hub_quiet` alert is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubState {
    /// Lower case, as in identities.
    pub hub: String,
    /// Receipt time of the latest event from the hub (any event: stale, duplicate and out-of-scope
    /// ones prove the subscription works too).
    pub last_event_at: Timestamp,
    /// An open `hub_quiet` alert.
    pub quiet: Option<Quiet>,
}

/// A `hub_quiet` alert that was raised and not yet answered by `hub_resumed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiet {
    /// The start of the silence: the last event before it (or when connmon started watching).
    pub since: Timestamp,
    pub alerted_at: Timestamp,
}

/// Names one quiet period of a hub (its `hub_quiet` and `hub_resumed` alerts): the same on every
/// instance and retry, different for every quiet period.
pub fn hub_dedup_key(hub: &str, since: Timestamp) -> String {
    let mut seq = [0u8; 32];
    seq[24..].copy_from_slice(&since.unix_millis().to_be_bytes());
    let key = dedup_key(
        &Identity::new(hub, "", None),
        &SequenceNumber::from_bytes(seq),
    );
    format!("cm1h-{}", &key[4..])
}

/// The dead-man's switch (`CONNMON_HUB_QUIET_AFTER`) for one hub at `now`: the next state and the
/// alert when the hub just went quiet — no event for `quiet_after`, counted from `watching_since`
/// at the earliest, as connmon cannot have heard anything while it was not running — or when an
/// event arrived after it went quiet. `None` when nothing changes.
pub fn check_hub(
    hub: &HubState,
    now: Timestamp,
    quiet_after: Duration,
    watching_since: Timestamp,
) -> Option<(HubState, Alert)> {
    let quiet_ms = i64::try_from(quiet_after.as_millis()).unwrap_or(i64::MAX);
    let alert = |kind, since: Timestamp, back: Option<Timestamp>| Alert {
        kind,
        dedup_key: hub_dedup_key(&hub.hub, since),
        identity: Identity::new(&hub.hub, "", None),
        disconnected_at: since,
        reconnected_at: back,
        downtime_seconds: back.unwrap_or(now).seconds_since(since),
        grace_period_seconds: quiet_after.as_secs() as i64,
        detected_at: now,
        flap: None,
        detail: None,
    };
    match hub.quiet {
        None => {
            let since = hub.last_event_at.max(watching_since);
            (since.plus_millis(quiet_ms) <= now).then(|| {
                let next = HubState {
                    quiet: Some(Quiet {
                        since,
                        alerted_at: now,
                    }),
                    ..hub.clone()
                };
                (next, alert(AlertKind::HubQuiet, since, None))
            })
        }
        Some(q) if hub.last_event_at > q.since => {
            let next = HubState {
                quiet: None,
                ..hub.clone()
            };
            let back = Some(hub.last_event_at);
            Some((next, alert(AlertKind::HubResumed, q.since, back)))
        }
        Some(_) => None,
    }
}
