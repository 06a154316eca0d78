//! The store boundary: durable per-identity state plus the alert outbox.
//!
//! Every implementation keeps the same promises, which the server relies on:
//! - a call returns `Ok` only after its effect is durable (rule 7);
//! - every write is conditional on the state it was computed from, so concurrent callers give the
//!   result of some serial order (rule 9);
//! - a `disconnected` alert is claimed (recorded on the identity and queued in the outbox) in the
//!   same atomic write, so it is queued exactly once and survives a crash before delivery;
//! - a sweep reads only what is due (an index on the outage start), never every identity.

mod lock;
pub mod sqlite;
pub mod table;

use crate::machine::{Alert, IdentityState, Outcome, Policy};
use crate::model::{ConnectionEvent, Identity, Timestamp};
use crate::status::{self, History, HubState, State};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long an instance owns the alerts a shared store's [`Store::queued`] leased to it, from the
/// moment it leased or last renewed them. Short, so that the alerts of an instance that died are
/// delivered by another within about this long; renewed every [`LEASE_RENEW_EVERY`] while they
/// are being delivered, so a slow receiver or a long sweep never outlives it.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often a delivery in progress renews its lease: a third of [`LEASE`], so two renewals in a
/// row may fail (a slow store) before the lease can run out.
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(5);

/// What a store needs to know besides its location: the rules' parameters, and the channels every
/// alert is queued for (one outbox entry per channel, each delivered and retried on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub policy: Policy,
    /// Channel names (`webhook`, `teams`, …); never empty (`log` when nothing else is set).
    pub channels: Vec<String>,
}

/// Times as stored in one text column or property: unix milliseconds, comma-separated (the
/// flapping history). `None` for an empty list.
pub(crate) fn encode_times(times: &[Timestamp]) -> Option<String> {
    (!times.is_empty()).then(|| {
        let v: Vec<String> = times.iter().map(|t| t.unix_millis().to_string()).collect();
        v.join(",")
    })
}

/// The inverse of [`encode_times`]; unreadable items are skipped.
pub(crate) fn decode_times(text: Option<&str>) -> Vec<Timestamp> {
    text.map(|f| {
        f.split(',')
            .filter_map(|t| t.parse().ok())
            .map(Timestamp::from_unix_millis)
            .collect()
    })
    .unwrap_or_default()
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// A `reconnected` alert queued by this event.
    pub alert: Option<Alert>,
}

/// One event the store refused for what it holds (Table Storage answered 400 for its entity),
/// while it applied the rest of the delivery: a redelivery would be refused the same way, so the
/// caller rejects this event alone (logged with `reason`, counted, acknowledged) instead of
/// failing the delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// What the store said, for the log line.
    pub reason: String,
}

/// What the store made of one event of a delivery.
pub type EventResult = Result<Applied, Refused>;

/// An alert waiting in the outbox for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedAlert {
    /// The store's own handle for this queued alert (opaque to callers): an outbox row id for
    /// SQLite; partition, row key and lease ETag for Table Storage.
    pub id: String,
    /// The alert's wire body (one element of the webhook's `alerts` array), stored as JSON text.
    pub body: String,
    pub attempts: u32,
}

/// An outbox entry that can never be delivered — its body is not an alert, or a Table entity lost
/// its properties — and why: the store moves it aside (see [`Store::dead_letter`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The [`QueuedAlert::id`] it was handed out under.
    pub id: String,
    pub reason: String,
}

/// Logs one dead letter, once: the store calls it when the entry has been moved aside. `entry`
/// names it the store's way (a row id, partition and row key); ids and reasons come from stored
/// data, so they are quoted with escapes.
pub(crate) fn log_dead_letter(entry: &str, channel: &str, reason: &str) {
    crate::log::warn(format_args!(
        "outbox entry {entry:?} for channel {channel} can never be delivered and was set aside \
         as a dead letter: {reason:?}"
    ));
}

/// One identity as the status API reads it: its state and its recent history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub identity: Identity,
    pub state: IdentityState,
    pub history: History,
}

/// How many identities stand where, at one moment (`GET /api/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Every identity with a state (not deleted).
    pub tracked: u64,
    pub connected: u64,
    /// Offline within the grace period (or held back by a silence).
    pub pending: u64,
    /// Offline past the grace period, `disconnected` alert raised.
    pub alerted: u64,
    /// With an open `flapping` alert.
    pub flapping: u64,
    /// Pending and muted by a silence active now.
    pub silenced: u64,
}

impl Counts {
    /// Counts one identity's status.
    pub fn add(&mut self, s: &status::Status) {
        if s.state == State::Deleted {
            return;
        }
        self.tracked += 1;
        match s.state {
            State::Connected => self.connected += 1,
            State::Pending => self.pending += 1,
            State::Alerted => self.alerted += 1,
            State::Deleted | State::Unknown => {}
        }
        self.flapping += u64::from(s.flapping);
        self.silenced += u64::from(s.silenced_until.is_some());
    }
}

impl std::ops::AddAssign for Counts {
    /// Sums counts of disjoint sets of identities (a sharded store counts each shard).
    fn add_assign(&mut self, o: Counts) {
        self.tracked += o.tracked;
        self.connected += o.connected;
        self.pending += o.pending;
        self.alerted += o.alerted;
        self.flapping += o.flapping;
        self.silenced += o.silenced;
    }
}

/// One page of [`Store::noteworthy`]: the records, and the identity to go on after (`None`: done).
pub type NoteworthyPage = (Vec<IdentityRecord>, Option<Identity>);

/// Whether the dashboard shows anything of `r` (see [`Store::noteworthy`]).
pub fn is_noteworthy(r: &IdentityRecord) -> bool {
    r.state.outage.is_some()
        || r.state.flapping.is_some()
        || r.history
            .0
            .iter()
            .any(|c| matches!(c.kind, status::ChangeKind::Alert(_)))
}

/// What the store knows beyond identities: every hub heard from, and the last sweep.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Overview {
    /// Sorted by hub name.
    pub hubs: Vec<HubState>,
    /// When the last sweep finished (on any instance).
    pub last_sweep_at: Option<Timestamp>,
}

/// The dead-man's switch as the sweep runs it: `CONNMON_HUB_QUIET_AFTER` and when this process
/// started watching (quiet time is never counted from before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietCheck {
    pub quiet_after: Duration,
    pub watching_since: Timestamp,
}

/// The store could not do what was asked; the caller answers non-2xx so the sender retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database is unavailable, full, read-only or corrupt; the message says which.
    Unavailable(String),
    /// A conditional write found the row changed underneath it more times than retries allow.
    Conflict(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(m) => write!(f, "store unavailable: {m}"),
            StoreError::Conflict(m) => write!(f, "store conflict: {m}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Durable state behind the state machine. Object-safe so the server holds `Arc<dyn Store>`.
pub trait Store: Send + Sync {
    /// Applies events (in the order given) and makes the result durable before returning: one
    /// result per event, in order. An event the store refuses for what it holds is [`Refused`]
    /// alone; an `Err` of the whole call (the store is unavailable) means the delivery must be
    /// retried — what of it was applied is then applied again as duplicates.
    fn apply(
        &self,
        events: Vec<ConnectionEvent>,
        received_at: Timestamp,
    ) -> BoxFuture<'_, Result<Vec<EventResult>, StoreError>>;

    /// Claims outages due at `now` (start + grace <= now, no alert yet): records the alert on each
    /// identity and queues it, atomically. Returns the claimed alerts: about `limit` of them (a
    /// sharded store may return a few times more); fewer than `limit` means none is left due.
    fn claim_due(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Alert>, StoreError>>;

    /// Up to `limit` alerts queued for `channel`, oldest first, ending before the first one whose next attempt is
    /// after `now` (delivery keeps the order alerts were raised in). A store shared by several
    /// instances leases what it returns, so two instances do not deliver the same alert at once.
    fn queued(
        &self,
        channel: &str,
        now: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<QueuedAlert>, StoreError>>;

    /// Removes delivered alerts from the outbox.
    fn delivered(&self, ids: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Extends the lease on alerts that [`Store::queued`] handed out (`ids` are its handles, or
    /// those a previous renewal returned), from `now`, and returns their new handles in the same
    /// order. `None` when the lease is lost: another instance took at least one of them over after
    /// the lease ran out (it then delivers them), so the caller must stop working on them. A store
    /// that only one process uses has no leases and returns `ids` as they are.
    fn renew(
        &self,
        ids: Vec<String>,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<Vec<String>>, StoreError>> {
        let _ = now;
        Box::pin(async move { Ok(Some(ids)) })
    }

    /// After a [`Store::queued`] call for `channel` handed out less than was asked: when an alert
    /// it held back becomes due (the end of another instance's lease), as that call saw it.
    /// `None`: nothing held back, or the store does not know (the next sweep looks again).
    fn held_back_until(&self, channel: &str) -> Option<Timestamp> {
        let _ = channel;
        None
    }

    /// Records a failed attempt: the alerts are tried again at `next_attempt_at`.
    fn failed(
        &self,
        ids: Vec<String>,
        next_attempt_at: Timestamp,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Moves entries handed out by [`Store::queued`] aside, out of the outbox and into the dead
    /// letters, with their reasons and `now`, logging each once. They are neither delivered nor
    /// retried; the rest of the queue goes on. An entry already gone (another instance took it
    /// over) is left alone.
    fn dead_letter(
        &self,
        letters: Vec<DeadLetter>,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// How many dead letters the store holds (`GET /api/status`, `/metrics`).
    fn dead_letters(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// How many deliveries wait in the outbox, over all channels (for the sweep summary).
    fn queue_len(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// One identity's record, deleted ones (tombstones) included; `None` if never heard of.
    fn identity(&self, id: Identity) -> BoxFuture<'_, Result<Option<IdentityRecord>, StoreError>>;

    /// Up to `limit` identities after `after` in the store's own stable order (every identity
    /// exactly once when paged through from `None`), of one hub or all. A read: it never waits for
    /// writes and never blocks them.
    fn identities(
        &self,
        hub: Option<String>,
        after: Option<Identity>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<IdentityRecord>, StoreError>>;

    /// What the dashboard shows, paged: identities that are offline, flapping, or have an alert in
    /// their history (every other identity is skipped), and where to go on (`None`: done). The
    /// default pages through [`Store::identities`] and filters; a store that can filter where the
    /// data is does so.
    fn noteworthy(
        &self,
        after: Option<Identity>,
        limit: usize,
    ) -> BoxFuture<'_, Result<NoteworthyPage, StoreError>> {
        Box::pin(async move {
            let page = self.identities(None, after, limit).await?;
            let next = (page.len() == limit)
                .then(|| page.last().map(|r| r.identity.clone()))
                .flatten();
            let kept = page.into_iter().filter(is_noteworthy).collect();
            Ok((kept, next))
        })
    }

    /// The counts of `GET /api/status` at `now`.
    fn counts(&self, now: Timestamp) -> BoxFuture<'_, Result<Counts, StoreError>>;

    /// Records that events from these hubs arrived at these times (each hub's latest time wins;
    /// an earlier time never moves it back).
    fn touch_hubs(&self, seen: Vec<(String, Timestamp)>) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Every hub heard from, and the last sweep.
    fn overview(&self) -> BoxFuture<'_, Result<Overview, StoreError>>;

    /// Ends a sweep at `now`: records it as the last sweep and, with a `quiet` check, runs
    /// `status::check_hub` for every hub, raising and queuing each `hub_quiet` / `hub_resumed`
    /// alert exactly once (atomically with the hub's new state, like `claim_due`).
    fn finish_sweep(
        &self,
        now: Timestamp,
        quiet: Option<QuietCheck>,
    ) -> BoxFuture<'_, Result<Vec<Alert>, StoreError>>;
}
