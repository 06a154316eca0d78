//! Azure Table Storage: the scale-out store, shared by every instance of a Function App.
//!
//! # Layout of the one table
//! Every entity lives in one of [`SHARDS`] partitions, `PartitionKey = "s00"…"s1f"`, chosen by a
//! stable hash of (hub, device) — so a device and its modules share a partition and one
//! entity-group transaction can change them together. Inside a partition, row keys are typed by a
//! prefix:
//!
//! | row key | entity | present while |
//! |---|---|---|
//! | `i\|{hub}\|{device}\|{module}` | the identity's state (`IdentityState`) and `history` | the identity is known |
//! | `d\|{due time, 15 digits}\|{hub}\|{device}\|{module}` | the sweep index | an outage waits for its grace (or silence) |
//! | `o\|{raised at, 15 digits}\|{dedupKey}\|{kind}` | a queued alert (the outbox) | until delivered |
//! | `h\|{hub}` | a hub (`HubState`): its last event, an open `hub_quiet`; in partition `shard_of(hub, "")` | the hub was heard from |
//! | `m\|lastSweep` | when the last sweep ended; in `s00` | after the first sweep |
//! | `m\|store` | the store marker: `generation`, `announced` (a `store_reset` was raised for it); in `s00` | from the first start on |
//! | `{partition}\|{outbox row key}` in partition `dead` | a dead letter: an outbox entity that can never be delivered, with `reason` and `deadAt` | kept |
//!
//! Ids are escaped (`%XX` for `%`, `'`, `|`, `/`, `\`, `#`, `?`, control and non-ASCII
//! characters), so prefixes never collide, and a part too long for the service's key size is
//! hashed: every IoT Hub identity has a valid key (`keys.rs` owns the scheme).
//!
//! # Promises (those of `store/mod.rs`)
//! - Durable: a call returns after Table Storage acknowledged every write.
//! - Conditional: the identity entity is replaced only at the ETag it was read at (or inserted only
//!   if absent), in the same entity-group transaction as its index and outbox changes. A 412/409
//!   means another instance got there first: re-read and re-apply.
//! - Exactly-once claims: claiming an alert replaces the identity (ETag), deletes its index entity and
//!   inserts the outbox entity atomically; of several instances sweeping at once one wins.
//! - Sweep cost follows what is due: one range query per partition over `d|…` up to `now`.
//! - Exactly-once hub alerts: a `hub_quiet` / `hub_resumed` replaces the hub entity (ETag) and
//!   inserts its outbox entities in one batch, like a claim.
//! - Exactly-once `store_reset`: the store marker's new generation and the alert's outbox entities
//!   are written in one batch, conditional on the marker.

pub mod auth;
pub mod client;
pub mod conn;
mod keys;

use super::{
    decode_times, encode_times, Applied, BoxFuture, Counts, DeadLetter, EventResult,
    IdentityRecord, Overview, QueuedAlert, QuietCheck, Refused, Store, StoreConfig, StoreError,
};
use crate::alerts::AlertBody;
use crate::machine::{self, Alert, Claim, Flapping, IdentityState, Outage, Policy};
use crate::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use crate::status::{self, History, HubState, Quiet};
use client::{odata_string, BatchOp, Continuation, Entity, TableClient, TableError, MAX_PAGE};
use keys::{device_prefix, due_key, hub_part, identity_key, key_part};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::task::JoinSet;

/// Number of partitions. Part of the data layout: changing it needs a migration.
pub const SHARDS: u32 = 32;
/// Attempts at one conditional update before giving up (each after re-reading).
const MAX_CONFLICT_RETRIES: usize = 16;
/// How long an instance owns the alerts it is delivering (from the lease or its last renewal);
/// another instance may take them after.
const LEASE_MS: i64 = super::LEASE.as_millis() as i64;
/// Identities applied in parallel within one delivery (different identities never conflict).
const PARALLEL_IDENTITIES: usize = 32;

/// The Table Storage store. Cheap to clone.
#[derive(Clone)]
pub struct TableStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    cfg: StoreConfig,
    /// What this process last wrote for each identity (see [`Rows`]).
    rows: Rows,
    /// The hub and meta entities this process last read or wrote (see [`Inner::advance`]).
    known: Memory<Entity>,
    /// The generation of the store marker this process knows (see [`Inner::check_reset`]).
    generation: std::sync::Mutex<Option<i64>>,
    /// Per channel, when the alert the last [`Inner::lease`] stopped at becomes due (another
    /// instance's lease ends, or its back-off): what `Store::held_back_until` answers.
    held_back: std::sync::Mutex<HashMap<String, Timestamp>>,
}

/// The identity entities this process wrote last, with the ETags the service gave them, so the
/// next state-changing event of the same identity can skip its read: the write is conditional on
/// that ETag, so if anyone else changed the entity meanwhile (another instance, a sweep) the write
/// fails with 412 and the event is applied again from a fresh read. Only state changes are decided
/// on a remembered row; an event that would change nothing (a duplicate, a stale event) is decided
/// again on a fresh read, since nothing conditional would catch a stale decision there. Bounded:
/// at [`ROWS_CAP`] entries it starts over.
///
/// A remembered row saves a request when it is still current and costs one when it is not (the
/// failed write, then the read it skipped). With several instances taking a device's events in
/// turn it is often outdated, so [`Rows::worth_it`] keeps a score of how it went — up for a write
/// that went through on a remembered row, down twice as much for one that failed — and uses
/// memory only while the score is not negative (break-even is two in three current), trying it
/// on one event in 16 regardless, so a process that becomes the only instance finds out.
type Rows = Memory<Remembered>;

/// Entities remembered with their ETags, keyed `{partition}/{row key}`, used while they pay (see
/// [`Rows`], the main use).
struct Memory<T> {
    map: std::sync::Mutex<HashMap<String, T>>,
    score: std::sync::atomic::AtomicI64,
    tries: std::sync::atomic::AtomicU64,
}

impl<T> Default for Memory<T> {
    fn default() -> Self {
        Memory {
            map: std::sync::Mutex::new(HashMap::new()),
            score: Default::default(),
            tries: Default::default(),
        }
    }
}

/// An identity entity as read or written: what an event is decided on. The default is an absent
/// entity (no ETag: the write inserts).
#[derive(Clone, Default)]
struct Remembered {
    state: IdentityState,
    etag: Option<String>,
    index_at: Option<Timestamp>,
    /// The `history` property: a replace rewrites every property, so it travels with the state.
    history: History,
}

/// Identities remembered at most (a few hundred bytes each).
const ROWS_CAP: usize = 65_536;

/// Bounds of [`Rows`]' score: it reacts within a few dozen events.
const SCORE_LIMIT: i64 = 32;

impl<T: Clone> Memory<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, T>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The remembered row of `key`, when memory is worth using (see [`Rows`]).
    fn get(&self, key: &str) -> Option<T> {
        if !self.worth_it() {
            return None;
        }
        self.lock().get(key).cloned()
    }

    fn worth_it(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.score.load(Relaxed) >= 0 || self.tries.fetch_add(1, Relaxed).is_multiple_of(16)
    }

    /// How a write decided on a remembered row went.
    fn judged(&self, current: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let step = if current { 1 } else { -2 };
        let _ = self.score.fetch_update(Relaxed, Relaxed, |s| {
            Some((s + step).clamp(-SCORE_LIMIT, SCORE_LIMIT))
        });
    }

    fn put(&self, key: String, row: T) {
        let mut rows = self.lock();
        if rows.len() >= ROWS_CAP && !rows.contains_key(&key) {
            rows.clear();
        }
        rows.insert(key, row);
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// The table's client, creating the table again when a request finds it missing — deleted, or
/// the storage emulator restarted empty — and then repeating that request once (a request on a
/// missing table changed nothing). Without it every request would fail until a restart. The
/// second field is when this process first found the table missing since the last
/// [`Inner::check_reset`], which announces the reset.
struct Client(TableClient, std::sync::Mutex<Option<Timestamp>>);

impl Client {
    async fn again<T, Fut>(&self, op: impl Fn() -> Fut) -> Result<T, TableError>
    where
        Fut: std::future::Future<Output = Result<T, TableError>>,
    {
        match op().await {
            Err(e) if is_table_missing(&e) => {
                crate::log::warn(format_args!(
                    "table {} is missing (deleted, or the storage emulator restarted empty): \
                     creating it again; what it held is gone (a store_reset alert says so)",
                    self.0.table_name()
                ));
                self.1
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(Timestamp::now);
                self.0.create_table_if_missing().await?;
                op().await
            }
            r => r,
        }
    }

    async fn get(&self, pk: &str, rk: &str) -> Result<Option<Entity>, TableError> {
        self.again(|| self.0.get(pk, rk)).await
    }

    async fn query(
        &self,
        filter: &str,
        select: Option<&[&str]>,
        limit: Option<usize>,
    ) -> Result<Vec<Entity>, TableError> {
        self.again(|| self.0.query(filter, select, limit)).await
    }

    async fn query_page(
        &self,
        filter: &str,
        select: Option<&[&str]>,
        from: Option<&Continuation>,
    ) -> Result<(Vec<Entity>, Option<Continuation>), TableError> {
        self.again(|| self.0.query_page(filter, select, Some(MAX_PAGE), from))
            .await
    }

    async fn insert(&self, e: &Entity) -> Result<String, TableError> {
        self.again(|| self.0.insert(e)).await
    }

    async fn replace(&self, e: &Entity, etag: &str) -> Result<String, TableError> {
        self.again(|| self.0.replace(e, etag)).await
    }

    async fn upsert(&self, e: &Entity) -> Result<String, TableError> {
        self.again(|| self.0.upsert(e)).await
    }

    async fn delete(&self, pk: &str, rk: &str, etag: &str) -> Result<(), TableError> {
        self.again(|| self.0.delete(pk, rk, etag)).await
    }

    async fn batch(&self, pk: &str, ops: Vec<BatchOp>) -> Result<Vec<Option<String>>, TableError> {
        self.again(|| self.0.batch(pk, ops.clone())).await
    }
}

/// The table itself is missing (404 `TableNotFound`), not an entity in it.
fn is_table_missing(e: &TableError) -> bool {
    match e {
        TableError::Rejected {
            status: 404, code, ..
        } => code == "TableNotFound",
        TableError::BatchFailed { source, .. } => is_table_missing(source),
        _ => false,
    }
}

fn table_err(e: TableError) -> StoreError {
    StoreError::Unavailable(format!("Azure Table Storage: {e}"))
}

/// Why one event was not applied: the service refused what it holds, or the store failed.
enum Failed {
    /// This event alone (see [`refuses_entity`]); the rest of the delivery goes on.
    Refused(Refused),
    /// The whole delivery is answered 503.
    Store(StoreError),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Failed {
        Failed::Store(e)
    }
}

/// The service refused the request for what it holds — 400 (an entity or key it does not take:
/// `PropertyValueTooLarge`, `InvalidInput`, `OutOfRangeInput`) or 413 (an entity over 1 MiB) — or
/// the client refused to send it (a key with a forbidden character): sending it again can only
/// end the same way. Authentication failures (401/403), a missing table and the service being
/// unavailable are none of these: they fail every event alike.
fn refuses_entity(e: &TableError) -> bool {
    match e {
        TableError::Rejected { status, .. } => matches!(status, 400 | 413),
        TableError::Invalid(_) => true,
        TableError::BatchFailed { source, .. } => refuses_entity(source),
        _ => false,
    }
}

/// A failed request made while applying one event, sorted into [`Failed`].
fn event_err(e: TableError) -> Failed {
    if refuses_entity(&e) {
        Failed::Refused(Refused {
            reason: format!("Azure Table Storage refused it: {e}"),
        })
    } else {
        Failed::Store(table_err(e))
    }
}

impl TableStore {
    /// Creates the table if it is missing and returns the store.
    pub async fn open(client: TableClient, cfg: StoreConfig) -> Result<TableStore, StoreError> {
        client.create_table_if_missing().await.map_err(table_err)?;
        let inner = Arc::new(Inner {
            client: Client(client, Default::default()),
            cfg,
            rows: Rows::default(),
            known: Memory::default(),
            generation: Default::default(),
            held_back: std::sync::Mutex::new(HashMap::new()),
        });
        // Learns the store's generation (or starts the first one) in the background: a fresh
        // process cannot tell a first start from a reset, so this never raises an alert, and
        // start-up must not wait on it (or fail while the service throttles). If it fails, the
        // first sweep learns the generation instead.
        let me = inner.clone();
        tokio::spawn(async move {
            let _ = me.check_reset(Timestamp::now()).await;
        });
        Ok(TableStore { inner })
    }
}

// ---------------------------------------------------------------------------------------------
// Keys

/// The partition of a device (and of all its modules).
pub fn shard_of(hub: &str, device: &str) -> String {
    // FNV-1a: stable across versions and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in hub.bytes().chain([0u8]).chain(device.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    shard_name((h % u64::from(SHARDS)) as u32)
}

fn shard_name(n: u32) -> String {
    format!("s{n:02x}")
}

/// `queued_at`: the alert's place in the delivery order (`detected_at`, or later: see
/// `apply_one`).
fn outbox_key(alert: &Alert, queued_at: Timestamp, channel: &str) -> String {
    format!(
        "o|{:015}|{}|{}|{}",
        queued_at.unix_millis().max(0),
        alert.dedup_key,
        alert.kind.as_str(),
        key_part(channel)
    )
}

/// The hub entity's partition: the identities' hash with an empty device id (device ids are never
/// empty), so hubs spread over the partitions like devices do.
fn hub_shard(hub: &str) -> String {
    shard_of(hub, "")
}

fn hub_key(hub: &str) -> String {
    format!("h|{}", key_part(hub))
}

/// The meta entity recording the last sweep (property `at`, unix ms): one per table.
const SWEEP_SHARD: &str = "s00";
const SWEEP_KEY: &str = "m|lastSweep";
/// The store marker, in [`SWEEP_SHARD`]: `generation` (when the table's current state began,
/// unix ms) and `announced` (whether a `store_reset` was raised for it). It is written once per
/// generation, so a table that comes back empty has none, or one a process that could not tell
/// wrote (see [`Inner::check_reset`]).
const STORE_KEY: &str = "m|store";

/// The row keys starting with `prefix`, as a `[from, to)` range: `to` is `prefix` with its last
/// character (always `|`) replaced by the next one, `}`.
fn prefix_range(prefix: &str) -> (String, String) {
    let mut upper = prefix.to_string();
    upper.pop();
    upper.push('}');
    (prefix.to_string(), upper)
}

/// Row-key range `[from, to)` as an OData filter inside one partition.
fn range_filter(pk: &str, from: &str, to: &str) -> String {
    format!(
        "PartitionKey eq {} and RowKey ge {} and RowKey lt {}",
        odata_string(pk),
        odata_string(from),
        odata_string(to)
    )
}

// ---------------------------------------------------------------------------------------------
// Entities ↔ state

fn seq_hex(s: Option<SequenceNumber>) -> Option<String> {
    s.map(|s| s.to_hex())
}

/// The identity entity for `st` and `history`. `indexAt` records the time its index entity (`d|…`)
/// was written under, so a later writer deletes exactly that one even if the settings that decide
/// the time (grace, flap window) changed since.
fn identity_entity(
    pk: &str,
    id: &Identity,
    st: &IdentityState,
    history: &History,
    policy: &Policy,
) -> Entity {
    let mut e = Entity::new(pk, &identity_key(id));
    e.set_str("hub", id.hub());
    e.set_str("device", id.device());
    e.set_str("module", id.module().unwrap_or(""));
    if let Some(s) = seq_hex(st.last_seq) {
        e.set_str("lastSeq", &s);
    }
    if let Some(t) = st.last_event_at {
        e.set_i64("lastEventAt", t.unix_millis());
    }
    if let Some(c) = st.connected {
        e.set_bool("connected", c);
    }
    if let Some(o) = st.outage {
        e.set_i64("outageStart", o.started_at.unix_millis());
        e.set_str("outageSeq", &o.seq.to_hex());
        if let Some(a) = o.alerted_at {
            e.set_i64("alertedAt", a.unix_millis());
        }
        e.set_i64("dueAt", o.due_at.unix_millis());
        if let Some(r) = o.remind_at {
            e.set_i64("remindAt", r.unix_millis());
        }
    }
    if let Some(d) = st.deleted_at {
        e.set_i64("deletedAt", d.unix_millis());
    }
    if let Some(flaps) = encode_times(&st.flaps) {
        e.set_str("flaps", &flaps);
    }
    if let Some(f) = st.flapping {
        e.set_i64("flappingSince", f.since.unix_millis());
        e.set_str("flappingSeq", &f.seq.to_hex());
    }
    if let Some(t) = st.due_at(policy) {
        e.set_i64("indexAt", t.unix_millis());
    }
    if let Some(h) = history.encode() {
        e.set_str("history", &h);
    }
    e
}

/// The identity an identity entity is of (its `hub`, `device` and `module` properties).
fn identity_of(e: &Entity) -> Identity {
    Identity::new(
        e.get_str("hub").unwrap_or(""),
        e.get_str("device").unwrap_or(""),
        e.get_str("module"),
    )
}

fn history_of(e: &Entity) -> History {
    History::decode(e.get_str("history"))
}

fn record_of(e: &Entity) -> IdentityRecord {
    IdentityRecord {
        identity: identity_of(e),
        state: state_of(e),
        history: history_of(e),
    }
}

/// The hub entity for `h` (every property: a replace rewrites them all).
fn hub_entity(pk: &str, h: &HubState) -> Entity {
    let mut e = Entity::new(pk, &hub_key(&h.hub));
    e.set_str("hub", &h.hub);
    e.set_i64("lastEventAt", h.last_event_at.unix_millis());
    if let Some(q) = h.quiet {
        e.set_i64("quietSince", q.since.unix_millis());
        e.set_i64("quietAlertedAt", q.alerted_at.unix_millis());
    }
    e
}

/// The hub a hub entity records; `None` for an entity without a name or time.
fn hub_of(e: &Entity) -> Option<HubState> {
    let ts = |k: &str| e.get_i64(k).map(Timestamp::from_unix_millis);
    let quiet = match (ts("quietSince"), ts("quietAlertedAt")) {
        (Some(since), Some(alerted_at)) => Some(Quiet { since, alerted_at }),
        _ => None,
    };
    Some(HubState {
        hub: e.get_str("hub")?.to_string(),
        last_event_at: ts("lastEventAt")?,
        quiet,
    })
}

/// What `counts` reads of each identity entity: what `status::classify` looks at.
const CLASSIFY_PROPS: &[&str] = &[
    "hub",
    "device",
    "module",
    "lastSeq",
    "connected",
    "outageStart",
    "outageSeq",
    "alertedAt",
    "dueAt",
    "deletedAt",
    "flappingSince",
    "flappingSeq",
];

/// The index time the stored entity was written with (see [`identity_entity`]).
fn index_at(e: &Entity) -> Option<Timestamp> {
    e.get_i64("indexAt").map(Timestamp::from_unix_millis)
}

fn state_of(e: &Entity) -> IdentityState {
    let ts = |k: &str| e.get_i64(k).map(Timestamp::from_unix_millis);
    let seq = |k: &str| e.get_str(k).and_then(|s| SequenceNumber::parse(s).ok());
    let outage = match (ts("outageStart"), seq("outageSeq")) {
        (Some(started_at), Some(seq)) => Some(Outage {
            started_at,
            seq,
            alerted_at: ts("alertedAt"),
            due_at: ts("dueAt").unwrap_or(started_at),
            remind_at: ts("remindAt"),
        }),
        _ => None,
    };
    let flapping = match (ts("flappingSince"), seq("flappingSeq")) {
        (Some(since), Some(seq)) => Some(Flapping { since, seq }),
        _ => None,
    };
    IdentityState {
        flaps: decode_times(e.get_str("flaps")),
        flapping,
        last_seq: seq("lastSeq"),
        last_event_at: ts("lastEventAt"),
        connected: e.get_bool("connected"),
        outage,
        deleted_at: ts("deletedAt"),
    }
}

/// The outbox entities of `alert`: one per channel, each delivered and retried on its own.
fn outbox_ops(
    pk: &str,
    channels: &[String],
    alert: &Alert,
    queued_at: Timestamp,
) -> Result<Vec<BatchOp>, StoreError> {
    channels
        .iter()
        .map(|c| outbox_entity(pk, c, alert, queued_at).map(BatchOp::Insert))
        .collect()
}

fn outbox_entity(
    pk: &str,
    channel: &str,
    alert: &Alert,
    queued_at: Timestamp,
) -> Result<Entity, StoreError> {
    let body = serde_json::to_string(&AlertBody::from(alert))
        .map_err(|e| StoreError::Unavailable(format!("cannot encode alert: {e}")))?;
    let mut e = Entity::new(pk, &outbox_key(alert, queued_at, channel));
    e.set_str("channel", channel);
    e.set_str("identity", &identity_key(&alert.identity));
    e.set_str("kind", alert.kind.as_str());
    e.set_str("dedupKey", &alert.dedup_key);
    e.set_str("body", &body);
    e.set_i64("attempts", 0);
    e.set_i64("nextAttemptAt", alert.detected_at.unix_millis());
    e.set_i64("leaseUntil", 0);
    Ok(e)
}

/// The channel an outbox entity is queued for, escaped as in keys: its `channel` property, or the
/// last part of its row key when the properties are gone.
fn outbox_channel(e: &Entity) -> Option<String> {
    match e.get_str("channel") {
        Some(c) => Some(key_part(c)),
        None => e.row_key.rsplit('|').next().map(str::to_string),
    }
}

/// Dead letters all live in this one partition (outside the shards, which nothing else reads),
/// keyed by the outbox entity's partition and row key: counting them is one query, and setting
/// the same entity aside twice writes the same row.
const DEAD_SHARD: &str = "dead";

/// The dead-letter entity of the outbox entity `e`: every property it had, plus why and when.
fn dead_entity(e: &Entity, reason: &str, now: Timestamp) -> Entity {
    let mut d = Entity::new(DEAD_SHARD, &format!("{}|{}", e.partition_key, e.row_key));
    d.props = e.props.clone();
    d.set_str("reason", reason);
    d.set_i64("deadAt", now.unix_millis());
    d
}

/// The opaque handle `queued` gives out: partition, row key and the lease's ETag.
fn handle(e: &Entity) -> String {
    handle_of(
        &e.partition_key,
        &e.row_key,
        e.etag.as_deref().unwrap_or("*"),
    )
}

fn handle_of(pk: &str, rk: &str, etag: &str) -> String {
    format!("{pk}\u{1f}{rk}\u{1f}{etag}")
}

fn parse_handle(h: &str) -> Option<(&str, &str, &str)> {
    let mut it = h.splitn(3, '\u{1f}');
    Some((it.next()?, it.next()?, it.next()?))
}

/// A 412 or 409 from a conditional write: someone else changed the row; re-read and retry.
fn is_contention(e: &TableError) -> bool {
    match e {
        TableError::PreconditionFailed | TableError::Conflict => true,
        // Inside a batch a missing entity also means a concurrent change: the index entity a batch
        // deletes exists exactly while the identity it was read with is current. (Azurite, like
        // the service, may report that op rather than the identity's 412.)
        TableError::BatchFailed { source, .. } => {
            is_contention(source) || matches!(**source, TableError::NotFound)
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

/// What claiming one index entry did.
enum Claimed {
    Alert(Alert),
    Snoozed,
}

impl Inner {
    async fn load(&self, pk: &str, id: &Identity) -> Result<Remembered, Failed> {
        match self
            .client
            .get(pk, &identity_key(id))
            .await
            .map_err(event_err)?
        {
            Some(e) => Ok(Remembered {
                state: state_of(&e),
                etag: e.etag.clone(),
                index_at: index_at(&e),
                history: history_of(&e),
            }),
            None => Ok(Remembered::default()),
        }
    }

    /// Queued alerts of `id` to withdraw on deletion: its undelivered `disconnected` alerts and the
    /// `reconnected` alerts paired with them.
    async fn withdrawable(&self, pk: &str, id: &Identity) -> Result<Vec<Entity>, Failed> {
        let filter = format!(
            "{} and identity eq {}",
            range_filter(pk, "o|", "o}"),
            odata_string(&identity_key(id))
        );
        let queued = self
            .client
            .query(&filter, Some(&["kind", "dedupKey"]), None)
            .await
            .map_err(event_err)?;
        let withdrawn: Vec<String> = queued
            .iter()
            .filter(|e| e.get_str("kind") == Some("disconnected"))
            .filter_map(|e| e.get_str("dedupKey").map(str::to_string))
            .collect();
        Ok(queued
            .into_iter()
            .filter(|e| {
                e.get_str("dedupKey")
                    .is_some_and(|k| withdrawn.iter().any(|w| w == k))
            })
            .collect())
    }

    /// Applies one event to one identity with optimistic concurrency: read, decide, write
    /// conditionally; on contention start over.
    async fn apply_one(
        &self,
        ev: &ConnectionEvent,
        received_at: Timestamp,
    ) -> Result<Applied, Failed> {
        let id = &ev.identity;
        let pk = shard_of(id.hub(), id.device());
        let row_key = format!("{pk}/{}", identity_key(id));
        let mut remembered = self.rows.get(&row_key);
        for _ in 0..MAX_CONFLICT_RETRIES {
            let from_memory = remembered.is_some();
            let row = match remembered.take() {
                Some(r) => r,
                None => self.load(&pk, id).await?,
            };
            let device_deleted_at = match (id.module(), ev.kind) {
                (Some(_), EventKind::Connected(_) | EventKind::Disconnected(_)) => {
                    let device = Identity::new(id.hub(), id.device(), None);
                    self.load(&pk, &device).await?.state.deleted_at
                }
                _ => None,
            };
            let state = machine::with_device_deletion(&row.state, device_deleted_at);
            let t = machine::apply(&state, ev, received_at, &self.cfg.policy);
            if !t.outcome.changes_state() && t.alert.is_none() {
                if from_memory {
                    // Decided on what this process last wrote: confirm on a fresh read.
                    self.rows.forget(&row_key);
                    continue;
                }
                return Ok(Applied {
                    outcome: t.outcome,
                    alert: None,
                });
            }
            let mut history = row.history;
            history.extend(status::changes_of(&state, &t));
            let mut ops = Vec::with_capacity(4);
            let entity = identity_entity(&pk, id, &t.state, &history, &self.cfg.policy);
            ops.push(match &row.etag {
                Some(tag) => BatchOp::Replace {
                    entity,
                    etag: tag.clone(),
                },
                None => BatchOp::Insert(entity),
            });
            let new_due = t.state.due_at(&self.cfg.policy);
            if row.index_at != new_due {
                if let Some(start) = row.index_at {
                    ops.push(BatchOp::Delete {
                        row_key: due_key(start, id),
                        etag: "*".into(),
                    });
                }
                if let Some(start) = new_due {
                    ops.push(BatchOp::Upsert(Entity::new(&pk, &due_key(start, id))));
                }
            }
            if let Some(alert) = &t.alert {
                // Queued behind the `disconnected` it pairs with, even when this event was
                // received before that was raised: a sweep's claim can land between this event's
                // read and its write (and the retry then raises the `reconnected`).
                let after = state.outage.and_then(|o| o.alerted_at);
                let queued_at = after.map_or(alert.detected_at, |a| a.max(alert.detected_at));
                ops.extend(outbox_ops(&pk, &self.cfg.channels, alert, queued_at)?);
            }
            if t.cancel_queued_alerts {
                for q in self.withdrawable(&pk, id).await? {
                    ops.push(BatchOp::Delete {
                        row_key: q.row_key.clone(),
                        etag: "*".into(),
                    });
                }
            }
            match self.client.batch(&pk, ops).await {
                Ok(etags) => {
                    if from_memory {
                        self.rows.judged(true);
                    }
                    match etags.into_iter().next().flatten() {
                        Some(etag) => self.rows.put(
                            row_key,
                            Remembered {
                                state: t.state,
                                etag: Some(etag),
                                index_at: new_due,
                                history,
                            },
                        ),
                        None => self.rows.forget(&row_key),
                    }
                    return Ok(Applied {
                        outcome: t.outcome,
                        alert: t.alert,
                    });
                }
                Err(e) if is_contention(&e) => {
                    if from_memory {
                        self.rows.judged(false);
                    }
                    self.rows.forget(&row_key);
                    continue;
                }
                Err(e) => {
                    self.rows.forget(&row_key);
                    return Err(event_err(e));
                }
            }
        }
        Err(Failed::Store(StoreError::Conflict(format!(
            "identity {id} kept changing during {MAX_CONFLICT_RETRIES} attempts"
        ))))
    }

    /// A `DeviceDeleted` applies to the device and to every module of it (same partition).
    async fn apply_delete(
        &self,
        ev: &ConnectionEvent,
        received_at: Timestamp,
    ) -> Result<Applied, Failed> {
        let id = &ev.identity;
        let pk = shard_of(id.hub(), id.device());
        let (from, to) = prefix_range(&format!("i|{}|", device_prefix(id.hub(), id.device())));
        let rows = self
            .client
            .query(
                &range_filter(&pk, &from, &to),
                Some(&["hub", "device", "module"]),
                None,
            )
            .await
            .map_err(event_err)?;
        let device = self.apply_one(ev, received_at).await?;
        for row in rows {
            let module = row.get_str("module").unwrap_or("");
            if module.is_empty() {
                continue;
            }
            let one = ConnectionEvent {
                identity: Identity::new(id.hub(), id.device(), Some(module)),
                ..ev.clone()
            };
            self.apply_one(&one, received_at).await?;
        }
        Ok(device)
    }

    async fn apply_events(
        self: &Arc<Self>,
        events: Vec<ConnectionEvent>,
        received_at: Timestamp,
    ) -> Result<Vec<EventResult>, StoreError> {
        // Events of one identity are applied in the order given; identities in parallel.
        let n = events.len();
        let mut groups: BTreeMap<Identity, Vec<(usize, ConnectionEvent)>> = BTreeMap::new();
        for (i, ev) in events.into_iter().enumerate() {
            let key = Identity::new(ev.identity.hub(), ev.identity.device(), None);
            groups.entry(key).or_default().push((i, ev));
        }
        let mut results: Vec<Option<EventResult>> = vec![None; n];
        let mut tasks = JoinSet::new();
        let mut groups = groups.into_values();
        loop {
            while tasks.len() < PARALLEL_IDENTITIES {
                let Some(group) = groups.next() else { break };
                let me = self.clone();
                tasks.spawn(async move {
                    let mut out = Vec::with_capacity(group.len());
                    for (i, ev) in group {
                        let a = if ev.kind == EventKind::Deleted {
                            me.apply_delete(&ev, received_at).await
                        } else {
                            me.apply_one(&ev, received_at).await
                        };
                        out.push((
                            i,
                            match a {
                                Ok(a) => Ok(a),
                                Err(Failed::Refused(r)) => Err(r),
                                Err(Failed::Store(e)) => return Err(e),
                            },
                        ));
                    }
                    Ok::<_, StoreError>(out)
                });
            }
            let Some(joined) = tasks.join_next().await else {
                break;
            };
            let done = joined
                .map_err(|e| StoreError::Unavailable(format!("apply task failed: {e}")))??;
            for (i, a) in done {
                results[i] = Some(a);
            }
        }
        Ok(results
            .into_iter()
            .map(|a| a.expect("every event applied"))
            .collect())
    }

    /// Claims what is due in one partition, at most `limit`.
    async fn claim_shard(
        &self,
        pk: String,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<Alert>, StoreError> {
        let upper = format!("d|{:015}", now.unix_millis().max(-1) + 1);
        let mut alerts = Vec::new();
        // Snoozed (silenced) outages move out of the range: scan again until `limit` alerts are
        // claimed or nothing due is left.
        loop {
            let due = self
                .client
                .query(
                    &range_filter(&pk, "d|", &upper),
                    Some(&["RowKey"]),
                    Some(limit),
                )
                .await
                .map_err(table_err)?;
            let scanned = due.len();
            let mut snoozed = 0;
            for d in due {
                // The identity's row key is the index key's suffix after `d|{due}|`.
                let Some(suffix) = d.row_key.splitn(3, '|').nth(2) else {
                    continue;
                };
                let id_key = format!("i|{suffix}");
                match self.claim_one(&pk, &id_key, &d.row_key, now).await? {
                    Some(Claimed::Alert(a)) => alerts.push(a),
                    Some(Claimed::Snoozed) => snoozed += 1,
                    None => {}
                }
            }
            if scanned < limit || alerts.len() >= limit || snoozed == 0 {
                return Ok(alerts);
            }
        }
    }

    async fn claim_one(
        &self,
        pk: &str,
        id_key: &str,
        due_row: &str,
        now: Timestamp,
    ) -> Result<Option<Claimed>, StoreError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let Some(e) = self.client.get(pk, id_key).await.map_err(table_err)? else {
                return Ok(None);
            };
            let id = identity_of(&e);
            let state = state_of(&e);
            let (next, alert) = match machine::claim_due(&id, &state, now, &self.cfg.policy) {
                Claim::Alert(next, alert) => (next, Some(alert)),
                Claim::Snooze(next) => (next, None),
                Claim::NotDue => {
                    // Another instance claimed it, or the outage moved: the index entity (if it
                    // is still there) is stale only if it no longer matches the state.
                    if index_at(&e).map(|t| due_key(t, &id)).as_deref() != Some(due_row) {
                        let _ = self.client.delete(pk, due_row, "*").await;
                    }
                    return Ok(None);
                }
            };
            // The alert joins the history; a snooze changes nothing there.
            let mut history = history_of(&e);
            history.extend(alert.as_ref().map(status::alert_change));
            let mut ops = vec![BatchOp::Replace {
                entity: identity_entity(pk, &id, &next, &history, &self.cfg.policy),
                etag: e.etag.clone().unwrap_or_else(|| "*".into()),
            }];
            // Move the index entry to the state's next due time (a reminder, the end of a flapping
            // window or of a silence), or drop it.
            let next_row = next.due_at(&self.cfg.policy).map(|t| due_key(t, &id));
            if next_row.as_deref() != Some(due_row) {
                ops.push(BatchOp::Delete {
                    row_key: due_row.to_string(),
                    etag: "*".into(),
                });
                if let Some(row) = next_row {
                    ops.push(BatchOp::Upsert(Entity::new(pk, &row)));
                }
            }
            if let Some(a) = &alert {
                ops.extend(outbox_ops(pk, &self.cfg.channels, a, a.detected_at)?);
            }
            // Whatever this process remembered of the identity is about to be outdated.
            self.rows.forget(&format!("{pk}/{id_key}"));
            match self.client.batch(pk, ops).await {
                Ok(_) => return Ok(Some(alert.map_or(Claimed::Snoozed, Claimed::Alert))),
                Err(e) if is_contention(&e) => continue,
                Err(e) => return Err(table_err(e)),
            }
        }
        Ok(None)
    }

    /// The outbox entities of `channel` in partition `pk`. Filtered here rather than by the
    /// service on the `channel` property, so an entity that lost its properties is still found
    /// (its row key names the channel) and set aside as a dead letter instead of waiting forever.
    async fn outbox(&self, pk: String, channel: String) -> Result<Vec<Entity>, StoreError> {
        let mut all = self
            .client
            .query(&range_filter(&pk, "o|", "o}"), None, None)
            .await
            .map_err(table_err)?;
        all.retain(|e| outbox_channel(e) == Some(key_part(&channel)));
        Ok(all)
    }

    /// Leases up to `limit` due alerts of `channel`, oldest first across partitions.
    async fn lease(
        self: &Arc<Self>,
        channel: &str,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<QueuedAlert>, StoreError> {
        let name = channel.to_string();
        let mut all = per_shard(self, move |me, pk| {
            let channel = name.clone();
            async move { me.outbox(pk, channel).await }
        })
        .await?;
        // Oldest first: the row key starts with the time the alert was raised.
        all.sort_by(|a, b| a.row_key[2..].cmp(&b.row_key[2..]));
        let mut picked = Vec::new();
        let mut held_back = None;
        for e in all {
            if picked.len() >= limit {
                break;
            }
            let due = e.get_i64("nextAttemptAt").unwrap_or(0);
            let lease = e.get_i64("leaseUntil").unwrap_or(0);
            if due > now.unix_millis() || lease > now.unix_millis() {
                // Backing off, or being delivered by another instance, or by one that died doing
                // it (then it is handed out again when the lease ends): what queued behind it
                // waits, or it could overtake it (a `reconnected` before its `disconnected`).
                held_back = Some(Timestamp::from_unix_millis(due.max(lease)));
                break;
            }
            picked.push(e);
        }
        // Every picked entity is leased at once, one conditional merge batch per partition: one
        // at a time, 500 of them took longer than the lease itself on a busy store.
        let keys: Vec<(String, String, String)> = picked
            .iter()
            .map(|e| {
                let etag = e.etag.clone().unwrap_or_else(|| "*".into());
                (e.partition_key.clone(), e.row_key.clone(), etag)
            })
            .collect();
        let etags = self.set_leases(keys, now.unix_millis() + LEASE_MS).await?;
        // Someone else leased or delivered one first: keep order by handing out only what came
        // before it, and free what was leased after it.
        let cut = etags
            .iter()
            .position(Option::is_none)
            .unwrap_or(etags.len());
        let lost_race = cut < etags.len();
        let free: Vec<(String, String, String)> = picked[cut..]
            .iter()
            .zip(&etags[cut..])
            .filter_map(|(e, etag)| {
                let etag = etag.clone()?;
                Some((e.partition_key.clone(), e.row_key.clone(), etag))
            })
            .collect();
        if !free.is_empty() {
            // Best effort: what is not freed here is free when its lease ends.
            let _ = self.set_leases(free, 0).await;
        }
        let out: Vec<QueuedAlert> = picked
            .into_iter()
            .zip(etags)
            .take(cut)
            .map(|(mut e, etag)| {
                e.etag = etag;
                QueuedAlert {
                    id: handle(&e),
                    body: e.get_str("body").unwrap_or_default().to_string(),
                    attempts: e.get_i64("attempts").unwrap_or(0) as u32,
                }
            })
            .collect();
        if lost_race {
            // Another instance leased it just now: its lease ends within `LEASE_MS`.
            held_back = Some(now.plus_millis(LEASE_MS));
        }
        let mut memo = self.held_back.lock().unwrap_or_else(|p| p.into_inner());
        match held_back {
            Some(t) => memo.insert(channel.to_string(), t),
            None => memo.remove(channel),
        };
        Ok(out)
    }

    /// Sets `leaseUntil = until` on each `(partition, row key, etag)` with ETag-conditional
    /// merges of that property alone: one entity-group batch per partition (up to 100 entities),
    /// all partitions at once. Returns each entity's new ETag, or `None` where its batch found an
    /// entity changed or gone (another instance leased or delivered it).
    async fn set_leases(
        self: &Arc<Self>,
        keys: Vec<(String, String, String)>,
        until: i64,
    ) -> Result<Vec<Option<String>>, StoreError> {
        let mut by_pk: BTreeMap<String, Vec<(usize, BatchOp)>> = BTreeMap::new();
        for (i, (pk, rk, etag)) in keys.iter().enumerate() {
            let mut e = Entity::new(pk, rk);
            e.set_i64("leaseUntil", until);
            let op = BatchOp::Merge {
                entity: e,
                etag: etag.clone(),
            };
            by_pk.entry(pk.clone()).or_default().push((i, op));
        }
        let mut tasks = JoinSet::new();
        for (pk, ops) in by_pk {
            for chunk in chunks(ops, 100) {
                let (me, pk) = (self.clone(), pk.clone());
                tasks.spawn(async move {
                    let (index, ops): (Vec<usize>, Vec<BatchOp>) = chunk.into_iter().unzip();
                    match me.client.batch(&pk, ops).await {
                        Ok(etags) => Ok(index.into_iter().zip(etags).collect()),
                        Err(e) if is_contention(&e) || is_not_found(&e) => {
                            Ok(index.into_iter().map(|i| (i, None)).collect::<Vec<_>>())
                        }
                        Err(e) => Err(table_err(e)),
                    }
                });
            }
        }
        let mut out = vec![None; keys.len()];
        while let Some(done) = tasks.join_next().await {
            let done =
                done.map_err(|e| StoreError::Unavailable(format!("lease task failed: {e}")))?;
            for (i, etag) in done? {
                out[i] = etag;
            }
        }
        Ok(out)
    }

    /// Extends the leases behind `handles` to `now + LEASE_MS`; `None` when one of them was
    /// changed or gone: another instance leased it after this one's lease ran out.
    async fn renew(
        self: &Arc<Self>,
        handles: Vec<String>,
        now: Timestamp,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let mut keys = Vec::with_capacity(handles.len());
        for h in &handles {
            let Some((pk, rk, etag)) = parse_handle(h) else {
                return Ok(None);
            };
            keys.push((pk.to_string(), rk.to_string(), etag.to_string()));
        }
        let etags = self
            .set_leases(keys.clone(), now.unix_millis() + LEASE_MS)
            .await?;
        Ok(keys
            .iter()
            .zip(etags)
            .map(|((pk, rk, _), etag)| Some(handle_of(pk, rk, &etag?)))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// What operators see: reads of identities, hubs and the dead-man's switch

impl Inner {
    /// Up to `limit` identity entities of partition `pk` in `[from, to)` after `after` (a row
    /// key), in row-key order.
    async fn identity_range(
        &self,
        pk: &str,
        (from, to): (&str, &str),
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Entity>, StoreError> {
        let mut filter = range_filter(pk, from, to);
        if let Some(after) = after {
            filter.push_str(&format!(" and RowKey gt {}", odata_string(after)));
        }
        self.client
            .query(&filter, None, Some(limit))
            .await
            .map_err(table_err)
    }

    /// The counts of one partition, read a page at a time (only what classification needs).
    async fn count_shard(&self, pk: &str, now: Timestamp) -> Result<Counts, StoreError> {
        let filter = range_filter(pk, "i|", "i}");
        let mut counts = Counts::default();
        let mut next = None;
        loop {
            let (page, more) = self
                .client
                .query_page(&filter, Some(CLASSIFY_PROPS), next.as_ref())
                .await
                .map_err(table_err)?;
            for e in &page {
                let s = status::classify(&identity_of(e), &state_of(e), now, &self.cfg.policy);
                counts.add(&s);
            }
            match more {
                Some(c) => next = Some(c),
                None => return Ok(counts),
            }
        }
    }

    /// Moves the integer property `name` of entity (`pk`, `rk`) forward to `to`, never back:
    /// inserts the entity (with `init`'s properties) when absent, leaves it when it already holds
    /// `to` or later, else replaces it at the ETag it was read at. A lost race (412, 409, or the
    /// entity vanished) reads it again and decides again; a later time written meanwhile ends it.
    ///
    /// The entity last read or written stands in for the first read (see [`Memory`]): when it
    /// already holds `to` or later, nothing is sent (the stored time only moves forward); when it
    /// is current, the write is the only request.
    async fn advance(
        &self,
        pk: &str,
        rk: &str,
        name: &str,
        to: Timestamp,
        init: impl Fn(&mut Entity),
    ) -> Result<(), StoreError> {
        let key = format!("{pk}/{rk}");
        let mut remembered = self.known.get(&key);
        for _ in 0..MAX_CONFLICT_RETRIES {
            let from_memory = remembered.is_some();
            let stored = match remembered.take() {
                Some(e) => Some(e),
                None => self.client.get(pk, rk).await.map_err(table_err)?,
            };
            let (mut e, written) = match stored {
                Some(e) if e.get_i64(name).is_some_and(|t| t >= to.unix_millis()) => {
                    self.known.put(key, e);
                    return Ok(());
                }
                Some(mut e) => {
                    let etag = e.etag.take().unwrap_or_else(|| "*".into());
                    e.set_i64(name, to.unix_millis());
                    let written = self.client.replace(&e, &etag).await;
                    (e, written)
                }
                None => {
                    let mut e = Entity::new(pk, rk);
                    init(&mut e);
                    e.set_i64(name, to.unix_millis());
                    let written = self.client.insert(&e).await;
                    (e, written)
                }
            };
            if from_memory {
                self.known.judged(written.is_ok());
            }
            match written {
                Ok(etag) => {
                    e.etag = Some(etag);
                    self.known.put(key, e);
                    return Ok(());
                }
                Err(err) if is_contention(&err) || is_not_found(&err) => self.known.forget(&key),
                Err(err) => {
                    self.known.forget(&key);
                    return Err(table_err(err));
                }
            }
        }
        Err(StoreError::Conflict(format!(
            "{rk} kept changing during {MAX_CONFLICT_RETRIES} attempts"
        )))
    }

    /// Every hub entity (one range query per partition).
    async fn hub_entities(self: &Arc<Self>) -> Result<Vec<Entity>, StoreError> {
        per_shard(self, |me, pk| async move {
            me.client
                .query(&range_filter(&pk, "h|", "h}"), None, None)
                .await
                .map_err(table_err)
        })
        .await
    }

    /// The dead-man's switch for the hub entity `e`: when `status::check_hub` raises an alert,
    /// one batch in the hub's partition replaces the entity at its ETag and queues the alert for
    /// every channel. A lost race means another instance (or a touch) changed the hub: read it
    /// again and check again, so an alert is never queued twice.
    async fn check_hub(
        &self,
        mut e: Entity,
        now: Timestamp,
        q: QuietCheck,
    ) -> Result<Option<Alert>, StoreError> {
        let (pk, rk) = (e.partition_key.clone(), e.row_key.clone());
        let key = format!("{pk}/{rk}");
        for _ in 0..MAX_CONFLICT_RETRIES {
            let Some(hub) = hub_of(&e) else {
                return Ok(None);
            };
            let Some((next, alert)) = status::check_hub(&hub, now, q.quiet_after, q.watching_since)
            else {
                return Ok(None);
            };
            let mut written = hub_entity(&pk, &next);
            let mut ops = vec![BatchOp::Replace {
                entity: written.clone(),
                etag: e.etag.clone().unwrap_or_else(|| "*".into()),
            }];
            ops.extend(outbox_ops(
                &pk,
                &self.cfg.channels,
                &alert,
                alert.detected_at,
            )?);
            self.known.forget(&key);
            match self.client.batch(&pk, ops).await {
                Ok(etags) => {
                    if let Some(etag) = etags.into_iter().next().flatten() {
                        written.etag = Some(etag);
                        self.known.put(key, written);
                    }
                    return Ok(Some(alert));
                }
                Err(err) if is_contention(&err) => {
                    match self.client.get(&pk, &rk).await.map_err(table_err)? {
                        Some(fresh) => e = fresh,
                        None => return Ok(None),
                    }
                }
                Err(err) => return Err(table_err(err)),
            }
        }
        Err(StoreError::Conflict(format!(
            "hub {rk} kept changing during {MAX_CONFLICT_RETRIES} attempts"
        )))
    }
}

/// The store marker and the `store_reset` alert (see [`STORE_KEY`]).
impl Inner {
    /// Checks that the table is still the one this process knew, and when it is not raises one
    /// `store_reset` for every instance: the marker's new generation and the alert's outbox
    /// entities are written in one batch, conditional on the marker (inserted only if absent,
    /// replaced only at its ETag), so of several instances finding the same reset one wins and
    /// the others read the marker again and find it announced. A process that does not know a
    /// generation yet (just started) only learns it: it cannot tell a first start from a reset.
    async fn check_reset(&self, now: Timestamp) -> Result<Option<Alert>, StoreError> {
        let missing_since = self
            .client
            .1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for _ in 0..MAX_CONFLICT_RETRIES {
            let known = *self.generation.lock().unwrap_or_else(|p| p.into_inner());
            let marker = self
                .client
                .get(SWEEP_SHARD, STORE_KEY)
                .await
                .map_err(table_err)?;
            let (generation, since, detail, etag) = match &marker {
                Some(m) => {
                    let generation = m.get_i64("generation").unwrap_or(0);
                    let announced = m.get_bool("announced").unwrap_or(false);
                    if known.is_none() || known == Some(generation) || announced {
                        self.learn(generation);
                        return Ok(None);
                    }
                    let detail = format!(
                        "Azure Table Storage table {} was started again empty by another \
                         instance",
                        self.client.0.table_name()
                    );
                    let since = Timestamp::from_unix_millis(generation);
                    (generation, since, detail, m.etag.clone())
                }
                None => {
                    let generation = now.unix_millis();
                    let detail = match missing_since {
                        Some(_) => format!(
                            "Azure Table Storage table {} was missing (deleted, or the storage \
                             emulator restarted empty) and was created again empty",
                            self.client.0.table_name()
                        ),
                        None => format!(
                            "Azure Table Storage table {} came back empty (deleted and created \
                             again, the storage emulator restarted, or emptied): its marker \
                             entity is gone",
                            self.client.0.table_name()
                        ),
                    };
                    (generation, missing_since.unwrap_or(now), detail, None)
                }
            };
            let mut m = Entity::new(SWEEP_SHARD, STORE_KEY);
            m.set_i64("generation", generation);
            let silent = known.is_none();
            m.set_bool("announced", !silent);
            let mut ops = vec![match etag {
                Some(etag) => BatchOp::Replace { entity: m, etag },
                None => BatchOp::Insert(m),
            }];
            let alert = (!silent).then(|| Alert {
                kind: machine::AlertKind::StoreReset,
                dedup_key: format!("cm1s-{generation:032x}"),
                identity: Identity::new("", "", None),
                disconnected_at: since,
                reconnected_at: None,
                downtime_seconds: now.seconds_since(since).max(0),
                grace_period_seconds: self.cfg.policy.grace_seconds(),
                detected_at: now,
                flap: None,
                detail: Some(Box::new(machine::Detail(detail))),
            });
            if let Some(a) = &alert {
                ops.extend(outbox_ops(SWEEP_SHARD, &self.cfg.channels, a, now)?);
            }
            match self.client.batch(SWEEP_SHARD, ops).await {
                Ok(_) => {
                    self.learn(generation);
                    return Ok(alert);
                }
                Err(err) if is_contention(&err) => continue,
                Err(err) => return Err(table_err(err)),
            }
        }
        Err(StoreError::Conflict(format!(
            "the store marker kept changing during {MAX_CONFLICT_RETRIES} attempts"
        )))
    }

    fn learn(&self, generation: i64) {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) = Some(generation);
    }
}

/// Runs `f` for every partition concurrently and concatenates the results.
async fn per_shard<T, F, Fut>(me: &Arc<Inner>, f: F) -> Result<Vec<T>, StoreError>
where
    T: Send + 'static,
    F: Fn(Arc<Inner>, String) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, StoreError>> + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for n in 0..SHARDS {
        tasks.spawn(f(me.clone(), shard_name(n)));
    }
    let mut out = Vec::new();
    while let Some(r) = tasks.join_next().await {
        out.extend(r.map_err(|e| StoreError::Unavailable(format!("shard task failed: {e}")))??);
    }
    Ok(out)
}

impl Store for TableStore {
    fn apply(
        &self,
        events: Vec<ConnectionEvent>,
        received_at: Timestamp,
    ) -> BoxFuture<'_, Result<Vec<EventResult>, StoreError>> {
        Box::pin(async move { self.inner.apply_events(events, received_at).await })
    }

    fn claim_due(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Alert>, StoreError>> {
        Box::pin(async move {
            // Each partition claims up to `limit`, so a short answer still means nothing is left.
            let mut alerts = per_shard(&self.inner, move |me, pk| async move {
                me.claim_shard(pk, now, limit).await
            })
            .await?;
            alerts.sort_by_key(|a| a.disconnected_at);
            Ok(alerts)
        })
    }

    fn queued(
        &self,
        channel: &str,
        now: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<QueuedAlert>, StoreError>> {
        let channel = channel.to_string();
        Box::pin(async move { self.inner.lease(&channel, now, limit).await })
    }

    fn renew(
        &self,
        ids: Vec<String>,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<Option<Vec<String>>, StoreError>> {
        Box::pin(async move { self.inner.renew(ids, now).await })
    }

    fn held_back_until(&self, channel: &str) -> Option<Timestamp> {
        let memo = self
            .inner
            .held_back
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        memo.get(channel).copied()
    }

    fn delivered(&self, ids: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut by_pk: BTreeMap<&str, Vec<BatchOp>> = BTreeMap::new();
            for h in &ids {
                if let Some((pk, rk, etag)) = parse_handle(h) {
                    by_pk.entry(pk).or_default().push(BatchOp::Delete {
                        row_key: rk.to_string(),
                        etag: etag.to_string(),
                    });
                }
            }
            for (pk, ops) in by_pk {
                for chunk in chunks(ops, 100) {
                    match self.inner.client.batch(pk, chunk).await {
                        Ok(_) => {}
                        // The lease ran out and another instance took the alert over: it is
                        // theirs to finish (at worst delivered twice, never lost).
                        Err(e) if is_contention(&e) || is_not_found(&e) => {}
                        Err(e) => return Err(table_err(e)),
                    }
                }
            }
            Ok(())
        })
    }

    fn failed(
        &self,
        ids: Vec<String>,
        next_attempt_at: Timestamp,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            for h in &ids {
                let Some((pk, rk, etag)) = parse_handle(h) else {
                    continue;
                };
                let Some(mut e) = self.inner.client.get(pk, rk).await.map_err(table_err)? else {
                    continue;
                };
                if e.etag.as_deref() != Some(etag) {
                    continue; // no longer ours
                }
                e.set_i64("attempts", e.get_i64("attempts").unwrap_or(0) + 1);
                e.set_i64("nextAttemptAt", next_attempt_at.unix_millis());
                e.set_i64("leaseUntil", 0);
                match self.inner.client.replace(&e, etag).await {
                    Ok(_) => {}
                    Err(err) if is_contention(&err) || matches!(err, TableError::NotFound) => {}
                    Err(err) => return Err(table_err(err)),
                }
            }
            Ok(())
        })
    }

    fn dead_letter(
        &self,
        letters: Vec<DeadLetter>,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let client = &self.inner.client;
            for l in &letters {
                let Some((pk, rk, etag)) = parse_handle(&l.id) else {
                    continue;
                };
                let Some(e) = client.get(pk, rk).await.map_err(table_err)? else {
                    continue;
                };
                if e.etag.as_deref() != Some(etag) {
                    continue; // no longer ours
                }
                // Two steps (the dead letters are in another partition): written first, so a
                // crash in between leaves the entry in the outbox to be set aside again, onto
                // the same dead-letter row.
                client
                    .upsert(&dead_entity(&e, &l.reason, now))
                    .await
                    .map_err(table_err)?;
                match client.delete(pk, rk, etag).await {
                    Ok(()) => {
                        let channel = outbox_channel(&e).unwrap_or_default();
                        super::log_dead_letter(&format!("{pk}/{rk}"), &channel, &l.reason);
                    }
                    Err(err) if is_contention(&err) || is_not_found(&err) => {}
                    Err(err) => return Err(table_err(err)),
                }
            }
            Ok(())
        })
    }

    fn dead_letters(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let rows = self
                .inner
                .client
                .query(
                    &format!("PartitionKey eq {}", odata_string(DEAD_SHARD)),
                    Some(&["RowKey"]),
                    None,
                )
                .await
                .map_err(table_err)?;
            Ok(rows.len() as u64)
        })
    }

    fn queue_len(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let n = per_shard(&self.inner, |me, pk| async move {
                me.client
                    .query(&range_filter(&pk, "o|", "o}"), Some(&["RowKey"]), None)
                    .await
                    .map(|v| vec![v.len()])
                    .map_err(table_err)
            })
            .await?;
            Ok(n.into_iter().sum::<usize>() as u64)
        })
    }

    fn identity(&self, id: Identity) -> BoxFuture<'_, Result<Option<IdentityRecord>, StoreError>> {
        Box::pin(async move {
            let pk = shard_of(id.hub(), id.device());
            let e = self
                .inner
                .client
                .get(&pk, &identity_key(&id))
                .await
                .map_err(table_err)?;
            Ok(e.as_ref().map(record_of))
        })
    }

    fn identities(
        &self,
        hub: Option<String>,
        after: Option<Identity>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<IdentityRecord>, StoreError>> {
        Box::pin(async move {
            // Row-key order (the escaped ids), merged over the partitions: each gives its first
            // `limit` after the cursor, the smallest `limit` of them all are the page.
            let (from, to) = match &hub {
                Some(h) => prefix_range(&format!("i|{}|", hub_part(h))),
                None => prefix_range("i|"),
            };
            let after = after.as_ref().map(identity_key);
            let mut all = per_shard(&self.inner, |me, pk| {
                let (from, to, after) = (from.clone(), to.clone(), after.clone());
                async move {
                    me.identity_range(&pk, (&from, &to), after.as_deref(), limit)
                        .await
                }
            })
            .await?;
            all.sort_by(|a, b| a.row_key.cmp(&b.row_key));
            all.truncate(limit);
            Ok(all.iter().map(record_of).collect())
        })
    }

    fn counts(&self, now: Timestamp) -> BoxFuture<'_, Result<Counts, StoreError>> {
        Box::pin(async move {
            let per = per_shard(&self.inner, move |me, pk| async move {
                me.count_shard(&pk, now).await.map(|c| vec![c])
            })
            .await?;
            let mut total = Counts::default();
            per.iter().for_each(|c| total += *c);
            Ok(total)
        })
    }

    fn touch_hubs(&self, seen: Vec<(String, Timestamp)>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // One write per hub, at its latest time.
            let mut latest: BTreeMap<String, Timestamp> = BTreeMap::new();
            for (hub, at) in seen {
                let t = latest.entry(hub).or_insert(at);
                *t = (*t).max(at);
            }
            for (hub, at) in latest {
                let init = |e: &mut Entity| {
                    e.set_str("hub", &hub);
                };
                self.inner
                    .advance(&hub_shard(&hub), &hub_key(&hub), "lastEventAt", at, init)
                    .await?;
            }
            Ok(())
        })
    }

    fn overview(&self) -> BoxFuture<'_, Result<Overview, StoreError>> {
        Box::pin(async move {
            let (hubs, sweep) = tokio::join!(
                self.inner.hub_entities(),
                self.inner.client.get(SWEEP_SHARD, SWEEP_KEY)
            );
            let mut hubs: Vec<HubState> = hubs?.iter().filter_map(hub_of).collect();
            hubs.sort_by(|a, b| a.hub.cmp(&b.hub));
            let last_sweep_at = sweep
                .map_err(table_err)?
                .and_then(|e| e.get_i64("at"))
                .map(Timestamp::from_unix_millis);
            Ok(Overview {
                hubs,
                last_sweep_at,
            })
        })
    }

    fn finish_sweep(
        &self,
        now: Timestamp,
        quiet: Option<QuietCheck>,
    ) -> BoxFuture<'_, Result<Vec<Alert>, StoreError>> {
        Box::pin(async move {
            self.inner
                .advance(SWEEP_SHARD, SWEEP_KEY, "at", now, |_| {})
                .await?;
            let mut alerts: Vec<Alert> = self.inner.check_reset(now).await?.into_iter().collect();
            let Some(q) = quiet else {
                return Ok(alerts);
            };
            for e in self.inner.hub_entities().await? {
                alerts.extend(self.inner.check_hub(e, now, q).await?);
            }
            Ok(alerts)
        })
    }
}

fn is_not_found(e: &TableError) -> bool {
    match e {
        TableError::NotFound => true,
        TableError::BatchFailed { source, .. } => is_not_found(source),
        _ => false,
    }
}

fn chunks<T>(v: Vec<T>, n: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::with_capacity(n);
    for x in v {
        cur.push(x);
        if cur.len() == n {
            out.push(std::mem::replace(&mut cur, Vec::with_capacity(n)));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod rows_tests {
    use super::*;

    fn row() -> Remembered {
        Remembered {
            etag: Some("W/\"1\"".into()),
            ..Remembered::default()
        }
    }

    #[test]
    fn memory_is_used_while_it_pays_and_probed_when_it_does_not() {
        let rows = Rows::default();
        rows.put("k".into(), row());
        assert!(rows.get("k").is_some(), "a fresh process uses its memory");
        // Mostly outdated (another instance keeps writing): memory goes off...
        rows.judged(true);
        rows.judged(false);
        assert!(rows.score.load(std::sync::atomic::Ordering::Relaxed) < 0);
        let used = (0..160).filter(|_| rows.get("k").is_some()).count();
        assert_eq!(used, 10, "one event in 16 still tries it");
        // ...and comes back once it pays again (this process became the only writer).
        for _ in 0..3 {
            rows.judged(true);
        }
        assert!((0..10).all(|_| rows.get("k").is_some()));
        // Bounded both ways.
        (0..1000).for_each(|_| rows.judged(true));
        assert_eq!(
            rows.score.load(std::sync::atomic::Ordering::Relaxed),
            SCORE_LIMIT
        );
    }

    #[test]
    fn memory_is_bounded() {
        let rows = Rows::default();
        for i in 0..ROWS_CAP {
            rows.put(format!("k{i}"), row());
        }
        assert_eq!(rows.lock().len(), ROWS_CAP);
        rows.put("one more".into(), row());
        assert_eq!(rows.lock().len(), 1, "starts over at the cap");
    }
}
