//! The embedded store: one SQLite file in WAL mode, written by one dedicated thread.
//!
//! Group commit: callers send commands over a channel; the writer thread takes every command that is
//! waiting (up to [`MAX_BATCH`]), runs them in one `BEGIN IMMEDIATE` transaction, commits once
//! (`synchronous=FULL`: durable when `COMMIT` returns) and only then answers each caller. Under load
//! many concurrent events share one fsync; alone, an event costs one commit. A failed batch is rolled
//! back whole and every caller in it gets the error, so nothing is acknowledged that is not on disk.
//!
//! Rows are written conditionally (`version` must match what was read, inserts must not find a row),
//! so a bug cannot lose an update silently. One process per file: opening takes the lock of
//! `store/lock.rs` (a second process refuses to start), since two processes sweeping one file would
//! both deliver every alert.

use super::lock::ProcessLock;
use super::{
    decode_times, encode_times, Applied, BoxFuture, Counts, DeadLetter, EventResult,
    IdentityRecord, Overview, QueuedAlert, QuietCheck, Store, StoreConfig, StoreError,
};
use crate::alerts::AlertBody;
use crate::machine::{self, Alert, Claim, Flapping, IdentityState, Outage, Policy};
use crate::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use crate::status::{self, History, HubState, Quiet};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most commands folded into one transaction; bounds the latency one commit adds to the first caller.
const MAX_BATCH: usize = 2048;
/// SQLite page cache per connection, KiB.
const CACHE_KIB: u32 = 64 * 1024;
/// Tombstones of deleted identities are kept this long: Event Grid retries for up to 24 hours, so
/// anything older cannot be a late delivery of a pre-deletion event.
const TOMBSTONE_KEEP_MS: i64 = 7 * 86_400_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS identities (
    hub           TEXT    NOT NULL,
    device        TEXT    NOT NULL,
    module        TEXT    NOT NULL,   -- '' for a device-level identity (module ids are never empty)
    version       INTEGER NOT NULL,
    last_seq      BLOB,               -- 32 bytes, big-endian
    last_event_at INTEGER,            -- unix ms
    connected     INTEGER,
    outage_start  INTEGER,
    outage_seq    BLOB,
    alerted_at    INTEGER,
    outage_due    INTEGER,            -- when the open outage is due (start + grace, or silence end)
    remind_at     INTEGER,            -- after the alert: the next reminder (CONNMON_REMIND_EVERY)
    flaps         TEXT,               -- recent silent reconnects, unix ms, comma-separated
    flapping_since INTEGER,           -- an open `flapping` alert
    flapping_seq  BLOB,
    due_at        INTEGER,            -- when the sweep must look next (the index), NULL if never
    deleted_at    INTEGER,
    history       TEXT,               -- recent changes, status::History's form (layout 2)
    PRIMARY KEY (hub, device, module)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identities_due ON identities(due_at)
    WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS identities_tombstones ON identities(deleted_at)
    WHERE last_seq IS NULL AND deleted_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    hub             TEXT    NOT NULL,
    device          TEXT    NOT NULL,
    module          TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    dedup_key       TEXT    NOT NULL,
    channel         TEXT    NOT NULL,   -- one row per alert and configured channel
    body            TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    UNIQUE (dedup_key, kind, channel)
);
CREATE TABLE IF NOT EXISTS hubs (
    hub              TEXT    PRIMARY KEY,
    last_event_at    INTEGER NOT NULL,  -- receipt time of the latest event from the hub
    quiet_since      INTEGER,           -- an open `hub_quiet` alert: the silence's start
    quiet_alerted_at INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,             -- 'last_sweep_at'
    value INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,    -- the outbox row's id
    hub         TEXT,
    device      TEXT,
    module      TEXT,
    kind        TEXT,
    dedup_key   TEXT,
    channel     TEXT,
    body        TEXT,                   -- as it was: it could not be read as an alert
    attempts    INTEGER,
    created_at  INTEGER,
    dead_at     INTEGER NOT NULL,       -- when it was set aside, unix ms
    reason      TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_channel ON outbox(channel, id);
CREATE INDEX IF NOT EXISTS outbox_identity ON outbox(hub, device, module);
";

/// The sweep's only read: outages still pending whose due time is at or before `?1` (now), through
/// the partial index `identities_due`, so its cost follows what is due, not the fleet.
pub const CLAIM_DUE_SQL: &str =
    "SELECT version, last_seq, last_event_at, connected, outage_start, outage_seq,
            alerted_at, deleted_at, outage_due, flaps, flapping_since, flapping_seq, remind_at,
            hub, device, module, history
     FROM identities WHERE due_at IS NOT NULL AND due_at <= ?1
     ORDER BY due_at LIMIT ?2";

/// The layout `SCHEMA` creates, stored in SQLite's `user_version`. A file of layout 1 is upgraded
/// in place (layout 2 added `identities.history` and the `hubs` and `meta` tables); a file written
/// with any other layout is refused with a clear message instead of being misread. The
/// `dead_letters` table is created when missing, in either: older versions never read it.
pub const SCHEMA_VERSION: i64 = 2;

/// Checks the file's layout; upgrades a layout-1 file's `identities` (returns `true` then, so the
/// caller fills the new tables once `SCHEMA` has created them).
fn check_schema_version(conn: &Connection, path: &Path) -> Result<bool, StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db_err)?;
    let has_tables: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'identities')",
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if has_tables && version == 1 {
        // Layout 1 → 2: the new column; `SCHEMA` then creates the new tables.
        conn.execute_batch("ALTER TABLE identities ADD COLUMN history TEXT")
            .map_err(db_err)?;
        return Ok(true);
    }
    if has_tables && version != SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "SQLite file {} has data layout version {version}, this connmon needs {SCHEMA_VERSION}: \
             move the file aside (or set CONNMON_SQLITE_PATH to a new file) and start again",
            path.display()
        )));
    }
    Ok(false)
}

enum Command {
    Apply {
        events: Vec<ConnectionEvent>,
        received_at: Timestamp,
        reply: oneshot::Sender<Result<Vec<EventResult>, StoreError>>,
    },
    ClaimDue {
        now: Timestamp,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Alert>, StoreError>>,
    },
    Queued {
        channel: String,
        now: Timestamp,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<QueuedAlert>, StoreError>>,
    },
    Delivered {
        ids: Vec<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Failed {
        ids: Vec<String>,
        next_attempt_at: Timestamp,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    DeadLetter {
        letters: Vec<DeadLetter>,
        now: Timestamp,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    QueueLen {
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    TouchHubs {
        seen: Vec<(String, Timestamp)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    FinishSweep {
        now: Timestamp,
        quiet: Option<QuietCheck>,
        reply: oneshot::Sender<Result<Vec<Alert>, StoreError>>,
    },
}

/// Handle to the writer thread; cheap to share behind an `Arc`. Dropping the last handle ends the
/// thread after it finishes what it has.
pub struct SqliteStore {
    tx: mpsc::Sender<Command>,
    /// The status API's reads, on their own connection (WAL: readers never block the writer nor
    /// wait for it), run on tokio's blocking pool.
    reader: Arc<std::sync::Mutex<Connection>>,
    policy: Policy,
    /// One process per file: held while this handle lives (see `store/lock.rs`).
    _lock: ProcessLock,
}

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and starts the writer thread.
    pub fn open(path: &Path, cfg: StoreConfig) -> Result<SqliteStore, StoreError> {
        // Every start-up failure names the file (a read-only file fails at the first write).
        let file = path.display().to_string();
        SqliteStore::open_file(path, cfg).map_err(|e| match e {
            StoreError::Unavailable(m) if !m.contains(&file) => {
                StoreError::Unavailable(format!("SQLite file {file}: {m}"))
            }
            other => other,
        })
    }

    fn open_file(path: &Path, cfg: StoreConfig) -> Result<SqliteStore, StoreError> {
        // Before the database is touched: a second process must not even upgrade its layout.
        let lock = ProcessLock::take(path)?;
        let conn = Connection::open(path).map_err(|e| {
            StoreError::Unavailable(format!("cannot open SQLite file {}: {e}", path.display()))
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "SQLite file {} cannot use WAL (journal_mode is {mode})",
                path.display()
            )));
        }
        // 64 MiB of page cache (SQLite's default is 2 MiB): a sweep claims outages in due order,
        // which is random against the identity table's key order, so at a million identities
        // (~100 MB of rows) most claims would otherwise read their page from the OS again.
        // The cache fills only as pages are used.
        conn.execute_batch(&format!(
            "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA cache_size=-{};",
            CACHE_KIB
        ))
        .map_err(db_err)?;
        let upgraded = check_schema_version(&conn, path)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        if upgraded {
            // The hubs a layout-1 file knows, with their latest event time as a start (the
            // dead-man's switch counts from start-up at the earliest anyway).
            conn.execute_batch(
                "INSERT OR IGNORE INTO hubs (hub, last_event_at)
                 SELECT hub, max(last_event_at) FROM identities
                 WHERE last_event_at IS NOT NULL GROUP BY hub",
            )
            .map_err(db_err)?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(db_err)?;
        // Checkpoints run on their own thread and connection, off the commit path: a commit only
        // appends to the WAL and syncs it, and rarely waits for the database file to be synced.
        // Rarely, not never: under writes that never pause, a background checkpoint is never
        // complete when the writer starts its next transaction, so the WAL would never start over
        // and grow without end (3 GB in a 1M-identity sweep benchmark). So the writer still
        // checkpoints itself once the WAL passes WAL_LIMIT_PAGES (by then the background thread
        // has copied nearly all of it, so this is quick and completes), and the file is cut back to
        // that size when it starts over.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_LIMIT_PAGES)
            .map_err(db_err)?;
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_PAGES * 4096)
            .map_err(db_err)?;
        let checkpointer = Checkpointer::open(path)?;
        let reader = Connection::open(path).map_err(db_err)?;
        reader
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        reader
            .execute_batch("PRAGMA query_only=1; PRAGMA cache_size=-8192;")
            .map_err(db_err)?;
        let policy = cfg.policy.clone();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel(16_384);
        let start = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|e| StoreError::Unavailable(format!("cannot start a SQLite thread: {e}")))
        };
        start(
            "connmon-checkpoint",
            Box::new(move || checkpointer.run(stopped)),
        )?;
        start(
            "connmon-sqlite",
            Box::new(move || {
                Writer { conn, cfg }.run(rx);
                drop(stop);
            }),
        )?;
        Ok(SqliteStore {
            tx,
            reader: Arc::new(std::sync::Mutex::new(reader)),
            policy,
            _lock: lock,
        })
    }

    /// Runs `f` on the reader connection in tokio's blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a SQLite read failed: {e}")))?
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the SQLite writer thread has stopped".into()))?
    }
}

impl Store for SqliteStore {
    fn apply(
        &self,
        events: Vec<ConnectionEvent>,
        received_at: Timestamp,
    ) -> BoxFuture<'_, Result<Vec<EventResult>, StoreError>> {
        Box::pin(self.call(move |reply| Command::Apply {
            events,
            received_at,
            reply,
        }))
    }

    fn claim_due(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Alert>, StoreError>> {
        Box::pin(self.call(move |reply| Command::ClaimDue { now, limit, reply }))
    }

    fn queued(
        &self,
        channel: &str,
        now: Timestamp,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<QueuedAlert>, StoreError>> {
        let channel = channel.to_string();
        Box::pin(self.call(move |reply| Command::Queued {
            channel,
            now,
            limit,
            reply,
        }))
    }

    fn delivered(&self, ids: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.call(move |reply| Command::Delivered { ids, reply }))
    }

    fn failed(
        &self,
        ids: Vec<String>,
        next_attempt_at: Timestamp,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.call(move |reply| Command::Failed {
            ids,
            next_attempt_at,
            reply,
        }))
    }

    fn dead_letter(
        &self,
        letters: Vec<DeadLetter>,
        now: Timestamp,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.call(move |reply| Command::DeadLetter {
            letters,
            now,
            reply,
        }))
    }

    fn dead_letters(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(db_err)
        }))
    }

    fn queue_len(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.call(|reply| Command::QueueLen { reply }))
    }

    fn identity(&self, id: Identity) -> BoxFuture<'_, Result<Option<IdentityRecord>, StoreError>> {
        Box::pin(self.read(move |conn| {
            let sql = format!("{RECORD_SQL} WHERE hub = ?1 AND device = ?2 AND module = ?3");
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            stmt.query_row(params![id.hub(), id.device(), module_key(&id)], record)
                .optional()
                .map_err(db_err)
        }))
    }

    fn identities(
        &self,
        hub: Option<String>,
        after: Option<Identity>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<IdentityRecord>, StoreError>> {
        Box::pin(self.read(move |conn| {
            // Within one hub only the part of the cursor in that hub matters.
            let after = match (&hub, after) {
                (Some(h), Some(a)) if a.hub() < h.as_str() => None,
                (Some(h), Some(a)) if a.hub() > h.as_str() => return Ok(Vec::new()),
                (_, a) => a,
            };
            let sql = identities_sql(hub.is_some(), after.is_some());
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let (a_hub, a_dev, a_mod) = match &after {
                Some(a) => (Some(a.hub()), Some(a.device()), Some(module_key(a))),
                None => (None, None, None),
            };
            let rows = stmt
                .query_map(params![hub, a_hub, a_dev, a_mod, limit as i64], record)
                .map_err(db_err)?;
            rows.collect::<Result<_, _>>().map_err(db_err)
        }))
    }

    fn noteworthy(
        &self,
        after: Option<Identity>,
        limit: usize,
    ) -> BoxFuture<'_, Result<super::NoteworthyPage, StoreError>> {
        Box::pin(self.read(move |conn| {
            // The same test as `store::is_noteworthy`, in SQL: the scan stays inside SQLite and
            // only the few rows the page shows are decoded. Alert entries are the upper-case
            // history codes and `f`/`q` (status::ChangeKind::code).
            let sql = noteworthy_sql(after.is_some());
            let mut stmt = conn.prepare_cached(&sql).map_err(db_err)?;
            let (a_hub, a_dev, a_mod) = match &after {
                Some(a) => (Some(a.hub()), Some(a.device()), Some(module_key(a))),
                None => (None, None, None),
            };
            let rows: Vec<IdentityRecord> = stmt
                .query_map(params![a_hub, a_dev, a_mod, limit as i64], record)
                .map_err(db_err)?
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            let next = (rows.len() == limit)
                .then(|| rows.last().map(|r| r.identity.clone()))
                .flatten();
            Ok((rows, next))
        }))
    }

    fn counts(&self, now: Timestamp) -> BoxFuture<'_, Result<Counts, StoreError>> {
        let policy = self.policy.clone();
        Box::pin(self.read(move |conn| {
            // The same classification as `status::classify`, in SQL (one pass over the table).
            let mut c = conn
                .query_row(
                    "SELECT
                       COALESCE(SUM(NOT (last_seq IS NULL AND deleted_at IS NOT NULL
                                         AND outage_start IS NULL)), 0),
                       COALESCE(SUM(outage_start IS NULL AND connected = 1), 0),
                       COALESCE(SUM(outage_start IS NOT NULL AND alerted_at IS NULL), 0),
                       COALESCE(SUM(outage_start IS NOT NULL AND alerted_at IS NOT NULL), 0),
                       COALESCE(SUM(flapping_since IS NOT NULL
                                    AND NOT (last_seq IS NULL AND deleted_at IS NOT NULL
                                             AND outage_start IS NULL)), 0)
                     FROM identities",
                    [],
                    |r| {
                        Ok(Counts {
                            tracked: r.get::<_, i64>(0)? as u64,
                            connected: r.get::<_, i64>(1)? as u64,
                            pending: r.get::<_, i64>(2)? as u64,
                            alerted: r.get::<_, i64>(3)? as u64,
                            flapping: r.get::<_, i64>(4)? as u64,
                            silenced: 0,
                        })
                    },
                )
                .map_err(db_err)?;
            if !policy.silences.is_empty() {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT hub, device, module FROM identities
                         WHERE outage_start IS NOT NULL AND alerted_at IS NULL",
                    )
                    .map_err(db_err)?;
                let ids = stmt.query_map([], identity_at(0)).map_err(db_err)?;
                for id in ids {
                    let id = id.map_err(db_err)?;
                    c.silenced += u64::from(policy.silenced_until(&id, now).is_some());
                }
            }
            Ok(c)
        }))
    }

    fn touch_hubs(&self, seen: Vec<(String, Timestamp)>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.call(move |reply| Command::TouchHubs { seen, reply }))
    }

    fn overview(&self) -> BoxFuture<'_, Result<Overview, StoreError>> {
        Box::pin(self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT hub, last_event_at, quiet_since, quiet_alerted_at FROM hubs ORDER BY hub",
                )
                .map_err(db_err)?;
            let hubs = stmt
                .query_map([], hub_row)
                .map_err(db_err)?
                .collect::<Result<_, _>>()
                .map_err(db_err)?;
            let last_sweep_at = conn
                .query_row(
                    "SELECT value FROM meta WHERE key = 'last_sweep_at'",
                    [],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()
                .map_err(db_err)?
                .flatten()
                .map(Timestamp::from_unix_millis);
            Ok(Overview {
                hubs,
                last_sweep_at,
            })
        }))
    }

    fn finish_sweep(
        &self,
        now: Timestamp,
        quiet: Option<QuietCheck>,
    ) -> BoxFuture<'_, Result<Vec<Alert>, StoreError>> {
        Box::pin(self.call(move |reply| Command::FinishSweep { now, quiet, reply }))
    }
}

/// One page of identities in key order: a range seek on the primary key from the cursor (a
/// separate statement per case, so the planner never falls back to scanning from the start —
/// which made paging through a million identities quadratic). Parameters: `?1` hub, `?2..?4` the
/// cursor, `?5` the limit.
pub fn identities_sql(hub: bool, after: bool) -> String {
    let filter = match (hub, after) {
        (false, false) => "WHERE ?1 IS NULL AND ?2 IS NULL",
        (false, true) => "WHERE ?1 IS NULL AND (hub, device, module) > (?2, ?3, ?4)",
        (true, false) => "WHERE hub = ?1 AND ?2 IS NULL",
        // The cursor is in the same hub (see `identities`): seek on (device, module) within it.
        (true, true) => "WHERE hub = ?1 AND ?2 = ?1 AND (device, module) > (?3, ?4)",
    };
    format!("{RECORD_SQL} {filter} ORDER BY hub, device, module LIMIT ?5")
}

/// [`Store::noteworthy`]'s page, seeking from the cursor like [`identities_sql`]. Parameters:
/// `?1..?3` the cursor, `?4` the limit.
pub fn noteworthy_sql(after: bool) -> String {
    let from = if after {
        "(hub, device, module) > (?1, ?2, ?3)"
    } else {
        "?1 IS NULL"
    };
    format!(
        "{RECORD_SQL} WHERE {from}
           AND (outage_start IS NOT NULL OR flapping_since IS NOT NULL
                OR history GLOB '*[ARMFQfq]*')
         ORDER BY hub, device, module LIMIT ?4"
    )
}

/// An identity's record: `record` maps these columns.
const RECORD_SQL: &str =
    "SELECT version, last_seq, last_event_at, connected, outage_start, outage_seq,
            alerted_at, deleted_at, outage_due, flaps, flapping_since, flapping_seq, remind_at,
            hub, device, module, history
     FROM identities";

/// The identity in columns `hub, device, module` from `first` on.
fn identity_at(first: usize) -> impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<Identity> {
    move |r| {
        let module: String = r.get(first + 2)?;
        Ok(Identity::new(
            &r.get::<_, String>(first)?,
            &r.get::<_, String>(first + 1)?,
            (!module.is_empty()).then_some(module.as_str()),
        ))
    }
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<IdentityRecord> {
    Ok(IdentityRecord {
        identity: identity_at(13)(r)?,
        state: row_to_state(r)?.1,
        history: history_at(r, 16)?,
    })
}

fn hub_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<HubState> {
    let quiet = match (r.get::<_, Option<i64>>(2)?, r.get::<_, Option<i64>>(3)?) {
        (Some(since), Some(at)) => Some(Quiet {
            since: Timestamp::from_unix_millis(since),
            alerted_at: Timestamp::from_unix_millis(at),
        }),
        _ => None,
    };
    Ok(HubState {
        hub: r.get(0)?,
        last_event_at: Timestamp::from_unix_millis(r.get(1)?),
        quiet,
    })
}

/// A result computed inside the transaction, sent only after the commit succeeded.
enum Pending {
    Apply(
        oneshot::Sender<Result<Vec<EventResult>, StoreError>>,
        Vec<EventResult>,
    ),
    Claim(oneshot::Sender<Result<Vec<Alert>, StoreError>>, Vec<Alert>),
    Queued(
        oneshot::Sender<Result<Vec<QueuedAlert>, StoreError>>,
        Vec<QueuedAlert>,
    ),
    Unit(oneshot::Sender<Result<(), StoreError>>),
    Len(oneshot::Sender<Result<u64, StoreError>>, u64),
}

impl Pending {
    fn send_ok(self) {
        // A caller that gave up (its HTTP request was dropped) no longer listens; that is fine.
        let _ = match self {
            Pending::Apply(r, v) => r.send(Ok(v)).map_err(drop),
            Pending::Claim(r, v) => r.send(Ok(v)).map_err(drop),
            Pending::Queued(r, v) => r.send(Ok(v)).map_err(drop),
            Pending::Unit(r) => r.send(Ok(())).map_err(drop),
            Pending::Len(r, v) => r.send(Ok(v)).map_err(drop),
        };
    }

    fn send_err(self, e: StoreError) {
        let _ = match self {
            Pending::Apply(r, _) => r.send(Err(e)).map_err(drop),
            Pending::Claim(r, _) => r.send(Err(e)).map_err(drop),
            Pending::Queued(r, _) => r.send(Err(e)).map_err(drop),
            Pending::Unit(r) => r.send(Err(e)).map_err(drop),
            Pending::Len(r, _) => r.send(Err(e)).map_err(drop),
        };
    }
}

struct Writer {
    conn: Connection,
    cfg: StoreConfig,
}

/// WAL size (pages of 4 KiB) past which the writer checkpoints itself: 64 MiB.
const WAL_LIMIT_PAGES: i64 = 16_384;

/// How often the checkpointer moves committed WAL frames into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A second connection that checkpoints the WAL (`PASSIVE`: never blocks the writer) every
/// [`CHECKPOINT_EVERY`], and truncates it once the writer has stopped.
struct Checkpointer {
    conn: Connection,
}

impl Checkpointer {
    fn open(path: &Path) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db_err)?;
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(db_err)?;
        Ok(Checkpointer { conn })
    }

    fn checkpoint(&self, mode: &str) -> Result<(), rusqlite::Error> {
        self.conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()))
    }

    fn run(self, stopped: std::sync::mpsc::Receiver<()>) {
        use std::sync::mpsc::RecvTimeoutError;
        let mut last_problem = None;
        while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
            // A failure (disk full, say) leaves the frames in the WAL, where they are durable;
            // the next round tries again. Logged when it starts and when it changes.
            let problem = self.checkpoint("PASSIVE").err().map(|e| e.to_string());
            if problem.is_some() && problem != last_problem {
                crate::log::warn(format_args!(
                    "SQLite checkpoint failed (committed data is safe in the WAL): {}",
                    problem.as_deref().unwrap_or_default()
                ));
            }
            last_problem = problem;
        }
        let _ = self.checkpoint("TRUNCATE");
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut batch);
        }
    }

    /// Runs every command of `batch` in one transaction; answers them after the commit.
    fn run_batch(&mut self, batch: &mut Vec<Command>) {
        let mut done: Vec<Pending> = Vec::with_capacity(batch.len());
        let mut failures: Vec<(Pending, StoreError)> = Vec::new();
        let result = (|| -> Result<(), StoreError> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err)?;
            for cmd in batch.drain(..) {
                match exec(&tx, &self.cfg, cmd) {
                    Ok(p) => done.push(p),
                    Err((p, e)) => failures.push((p, e)),
                }
            }
            if let Some((_, e)) = failures.first() {
                return Err(e.clone());
            }
            tx.commit().map_err(db_err)
        })();
        match result {
            Ok(()) => done.into_iter().for_each(Pending::send_ok),
            Err(e) => {
                // Nothing of this batch is durable: every caller hears so, and retries.
                for p in done {
                    p.send_err(e.clone());
                }
                for (p, own) in failures {
                    p.send_err(own);
                }
                for cmd in batch.drain(..) {
                    reply_err(cmd, e.clone());
                }
            }
        }
    }
}

fn reply_err(cmd: Command, e: StoreError) {
    let p = match cmd {
        Command::Apply { reply, .. } => Pending::Apply(reply, Vec::new()),
        Command::ClaimDue { reply, .. } => Pending::Claim(reply, Vec::new()),
        Command::Queued { reply, .. } => Pending::Queued(reply, Vec::new()),
        Command::Delivered { reply, .. }
        | Command::Failed { reply, .. }
        | Command::DeadLetter { reply, .. } => Pending::Unit(reply),
        Command::QueueLen { reply } => Pending::Len(reply, 0),
        Command::TouchHubs { reply, .. } => Pending::Unit(reply),
        Command::FinishSweep { reply, .. } => Pending::Claim(reply, Vec::new()),
    };
    p.send_err(e);
}

type ExecResult = Result<Pending, (Pending, StoreError)>;

fn exec(tx: &rusqlite::Transaction<'_>, cfg: &StoreConfig, cmd: Command) -> ExecResult {
    match cmd {
        Command::Apply {
            events,
            received_at,
            reply,
        } => match apply_events(tx, cfg, &events, received_at) {
            // SQLite refuses no single event: no id reaches a limit of its, and what can fail
            // (a full disk, a read-only or corrupt file) fails every event alike.
            Ok(v) => Ok(Pending::Apply(reply, v.into_iter().map(Ok).collect())),
            Err(e) => Err((Pending::Apply(reply, Vec::new()), e)),
        },
        Command::ClaimDue { now, limit, reply } => match claim_due(tx, cfg, now, limit) {
            Ok(v) => Ok(Pending::Claim(reply, v)),
            Err(e) => Err((Pending::Claim(reply, Vec::new()), e)),
        },
        Command::Queued {
            channel,
            now,
            limit,
            reply,
        } => match queued(tx, &channel, now, limit) {
            Ok(v) => Ok(Pending::Queued(reply, v)),
            Err(e) => Err((Pending::Queued(reply, Vec::new()), e)),
        },
        Command::Delivered { ids, reply } => {
            let r = row_ids(&ids).try_for_each(|id| {
                tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")
                    .and_then(|mut s| s.execute([id]))
                    .map(drop)
                    .map_err(db_err)
            });
            unit(reply, r)
        }
        Command::Failed {
            ids,
            next_attempt_at,
            reply,
        } => {
            let r = row_ids(&ids).try_for_each(|id| {
                tx.prepare_cached(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2 WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![id, next_attempt_at.unix_millis()]))
                .map(drop)
                .map_err(db_err)
            });
            unit(reply, r)
        }
        Command::DeadLetter {
            letters,
            now,
            reply,
        } => unit(reply, dead_letter(tx, &letters, now)),
        Command::QueueLen { reply } => {
            match tx.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0)) {
                Ok(n) => Ok(Pending::Len(reply, n as u64)),
                Err(e) => Err((Pending::Len(reply, 0), db_err(e))),
            }
        }
        Command::TouchHubs { seen, reply } => {
            // A merge that only ever moves a hub's time forward: concurrent writers cannot lose
            // each other's updates whatever their order.
            let r = seen.iter().try_for_each(|(hub, at)| {
                tx.prepare_cached(
                    "INSERT INTO hubs (hub, last_event_at) VALUES (?1, ?2)
                     ON CONFLICT (hub) DO UPDATE
                     SET last_event_at = max(last_event_at, excluded.last_event_at)",
                )
                .and_then(|mut s| s.execute(params![hub, at.unix_millis()]))
                .map(drop)
                .map_err(db_err)
            });
            unit(reply, r)
        }
        Command::FinishSweep { now, quiet, reply } => match finish_sweep(tx, cfg, now, quiet) {
            Ok(v) => Ok(Pending::Claim(reply, v)),
            Err(e) => Err((Pending::Claim(reply, Vec::new()), e)),
        },
    }
}

/// Records the sweep and runs the dead-man's switch over every hub; each hub's new state is
/// written only if the row is still the one read (and its alert queued in the same transaction).
fn finish_sweep(
    tx: &rusqlite::Transaction<'_>,
    cfg: &StoreConfig,
    now: Timestamp,
    quiet: Option<QuietCheck>,
) -> Result<Vec<Alert>, StoreError> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('last_sweep_at', ?1)
         ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
    )
    .and_then(|mut s| s.execute([now.unix_millis()]))
    .map_err(db_err)?;
    let Some(q) = quiet else {
        return Ok(Vec::new());
    };
    let hubs: Vec<HubState> = {
        let mut stmt = tx
            .prepare_cached("SELECT hub, last_event_at, quiet_since, quiet_alerted_at FROM hubs")
            .map_err(db_err)?;
        let rows = stmt.query_map([], hub_row).map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)?
    };
    let mut alerts = Vec::new();
    for hub in hubs {
        let Some((next, alert)) = status::check_hub(&hub, now, q.quiet_after, q.watching_since)
        else {
            continue;
        };
        let ms = |t: Option<Timestamp>| t.map(Timestamp::unix_millis);
        let changed = tx
            .prepare_cached(
                "UPDATE hubs SET quiet_since = ?2, quiet_alerted_at = ?3
                 WHERE hub = ?1 AND last_event_at = ?4 AND quiet_since IS ?5",
            )
            .and_then(|mut s| {
                s.execute(params![
                    hub.hub,
                    ms(next.quiet.map(|q| q.since)),
                    ms(next.quiet.map(|q| q.alerted_at)),
                    hub.last_event_at.unix_millis(),
                    ms(hub.quiet.map(|q| q.since)),
                ])
            })
            .map_err(db_err)?;
        if changed != 1 {
            return Err(StoreError::Conflict(format!(
                "hub {} changed while it was being checked",
                hub.hub
            )));
        }
        enqueue(tx, &cfg.channels, &alert)?;
        alerts.push(alert);
    }
    Ok(alerts)
}

/// Moves outbox rows to `dead_letters` (in the writer's transaction, so a row is in exactly one
/// of the two) and logs each once it is moved.
fn dead_letter(
    tx: &rusqlite::Transaction<'_>,
    letters: &[DeadLetter],
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut moved = Vec::new();
    for l in letters {
        let Ok(id) = l.id.parse::<i64>() else {
            continue;
        };
        let channel: Option<String> = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO dead_letters
                   (id, hub, device, module, kind, dedup_key, channel, body, attempts, created_at,
                    dead_at, reason)
                 SELECT id, hub, device, module, kind, dedup_key, channel, body, attempts,
                        created_at, ?2, ?3
                 FROM outbox WHERE id = ?1
                 RETURNING channel",
            )
            .and_then(|mut s| {
                s.query_row(params![id, now.unix_millis(), l.reason], |r| r.get(0))
                    .optional()
            })
            .map_err(db_err)?;
        let Some(channel) = channel else {
            continue;
        };
        tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .map_err(db_err)?;
        moved.push((id, channel, &l.reason));
    }
    // Logged before the commit: a failed commit answers an error and the next pass moves (and
    // logs) the same rows again, which only repeats a line.
    for (id, channel, reason) in moved {
        super::log_dead_letter(&format!("outbox row {id}"), &channel, reason);
    }
    Ok(())
}

/// Outbox row ids from the opaque handles `queued` gave out; anything else names no row.
fn row_ids(ids: &[String]) -> impl Iterator<Item = i64> + '_ {
    ids.iter().filter_map(|id| id.parse::<i64>().ok())
}

fn unit(reply: oneshot::Sender<Result<(), StoreError>>, r: Result<(), StoreError>) -> ExecResult {
    match r {
        Ok(()) => Ok(Pending::Unit(reply)),
        Err(e) => Err((Pending::Unit(reply), e)),
    }
}

/// A row as read: the state and the version the conditional write must find.
struct Row {
    state: IdentityState,
    version: Option<i64>,
    history: History,
}

fn module_key(id: &Identity) -> &str {
    id.module().unwrap_or("")
}

fn seq_from(blob: Option<Vec<u8>>) -> Option<SequenceNumber> {
    blob.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .map(SequenceNumber::from_bytes)
}

fn load(tx: &rusqlite::Transaction<'_>, id: &Identity) -> Result<Row, StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT version, last_seq, last_event_at, connected, outage_start, outage_seq,
                    alerted_at, deleted_at, outage_due, flaps, flapping_since, flapping_seq, remind_at,
                    history
             FROM identities WHERE hub = ?1 AND device = ?2 AND module = ?3",
        )
        .map_err(db_err)?;
    let row = stmt
        .query_row(params![id.hub(), id.device(), module_key(id)], |r| {
            Ok((row_to_state(r)?, history_at(r, 13)?))
        })
        .optional()
        .map_err(db_err)?;
    Ok(match row {
        Some(((version, state), history)) => Row {
            state,
            version: Some(version),
            history,
        },
        None => Row {
            state: IdentityState::default(),
            version: None,
            history: History::default(),
        },
    })
}

fn history_at(r: &rusqlite::Row<'_>, column: usize) -> rusqlite::Result<History> {
    Ok(History::decode(
        r.get::<_, Option<String>>(column)?.as_deref(),
    ))
}

/// Maps columns `version, last_seq, last_event_at, connected, outage_start, outage_seq, alerted_at,
/// deleted_at, outage_due, flaps, flapping_since, flapping_seq, remind_at` (in that order) to a
/// state.
fn row_to_state(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, IdentityState)> {
    let ts = |v: Option<i64>| v.map(Timestamp::from_unix_millis);
    let outage_start: Option<i64> = r.get(4)?;
    let outage_seq = seq_from(r.get(5)?);
    let outage = match (outage_start, outage_seq) {
        (Some(start), Some(seq)) => Some(Outage {
            started_at: Timestamp::from_unix_millis(start),
            seq,
            alerted_at: ts(r.get(6)?),
            due_at: ts(r.get(8)?).unwrap_or(Timestamp::from_unix_millis(start)),
            remind_at: ts(r.get(12)?),
        }),
        _ => None,
    };
    Ok((
        r.get(0)?,
        IdentityState {
            last_seq: seq_from(r.get(1)?),
            last_event_at: ts(r.get(2)?),
            connected: r.get::<_, Option<bool>>(3)?,
            outage,
            deleted_at: ts(r.get(7)?),
            flaps: decode_times(r.get::<_, Option<String>>(9)?.as_deref()),
            flapping: match (ts(r.get(10)?), seq_from(r.get(11)?)) {
                (Some(since), Some(seq)) => Some(Flapping { since, seq }),
                _ => None,
            },
        },
    ))
}

/// Writes `state` for `id` if the row is still at `version` (or still absent). The single writer
/// makes a mismatch impossible within one process; across processes SQLite's write lock does, and
/// this check turns any bug in that reasoning into an error instead of a lost update.
fn save(
    tx: &rusqlite::Transaction<'_>,
    policy: &Policy,
    id: &Identity,
    state: &IdentityState,
    version: Option<i64>,
    history: &History,
) -> Result<i64, StoreError> {
    let ms = |t: Option<Timestamp>| t.map(Timestamp::unix_millis);
    let outage = state.outage;
    let last_seq = state.last_seq.map(|s| s.as_bytes().to_vec());
    let outage_seq = outage.map(|o| o.seq.as_bytes().to_vec());
    let new_version = version.map_or(1, |v| v + 1);
    let flaps = encode_times(&state.flaps);
    let values = params![
        id.hub(),
        id.device(),
        module_key(id),
        new_version,
        last_seq,
        ms(state.last_event_at),
        state.connected,
        outage.map(|o| o.started_at.unix_millis()),
        outage_seq,
        ms(outage.and_then(|o| o.alerted_at)),
        ms(state.due_at(policy)),
        ms(state.deleted_at),
        version,
        ms(outage.map(|o| o.due_at)),
        flaps,
        ms(state.flapping.map(|f| f.since)),
        state.flapping.map(|f| f.seq.as_bytes().to_vec()),
        ms(outage.and_then(|o| o.remind_at)),
        history.encode(),
    ];
    let changed = match version {
        None => tx
            .prepare_cached(
                "INSERT INTO identities (hub, device, module, version, last_seq, last_event_at,
                    connected, outage_start, outage_seq, alerted_at, due_at, deleted_at,
                    outage_due, flaps, flapping_since, flapping_seq, remind_at, history)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?14, ?15, ?16, ?17, ?18,
                        ?19
                 WHERE ?13 IS NULL
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(values)),
        Some(_) => tx
            .prepare_cached(
                "UPDATE identities SET version = ?4, last_seq = ?5, last_event_at = ?6,
                    connected = ?7, outage_start = ?8, outage_seq = ?9, alerted_at = ?10,
                    due_at = ?11, deleted_at = ?12, outage_due = ?14, flaps = ?15,
                    flapping_since = ?16, flapping_seq = ?17, remind_at = ?18, history = ?19
                 WHERE hub = ?1 AND device = ?2 AND module = ?3 AND version = ?13",
            )
            .and_then(|mut s| s.execute(values)),
    }
    .map_err(db_err)?;
    if changed != 1 {
        return Err(StoreError::Conflict(format!(
            "identity {id} changed while it was being updated"
        )));
    }
    Ok(new_version)
}

/// Queues `alert` once for every configured channel.
fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    channels: &[String],
    alert: &Alert,
) -> Result<(), StoreError> {
    let body = serde_json::to_string(&AlertBody::from(alert))
        .map_err(|e| StoreError::Unavailable(format!("cannot encode alert: {e}")))?;
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO outbox (hub, device, module, kind, dedup_key, channel, body,
                                 next_attempt_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
             ON CONFLICT (dedup_key, kind, channel) DO NOTHING",
        )
        .map_err(db_err)?;
    for channel in channels {
        stmt.execute(params![
            alert.identity.hub(),
            alert.identity.device(),
            module_key(&alert.identity),
            alert.kind.as_str(),
            alert.dedup_key,
            channel,
            body,
            alert.detected_at.unix_millis(),
        ])
        .map_err(db_err)?;
    }
    Ok(())
}

fn apply_events(
    tx: &rusqlite::Transaction<'_>,
    cfg: &StoreConfig,
    events: &[ConnectionEvent],
    received_at: Timestamp,
) -> Result<Vec<Applied>, StoreError> {
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let applied = if ev.kind == EventKind::Deleted {
            // IoT Hub deletes a device's module identities with it and sends no event for them.
            let mut first = None;
            for id in std::iter::once(ev.identity.clone()).chain(modules_of(tx, &ev.identity)?) {
                let one = ConnectionEvent {
                    identity: id,
                    ..ev.clone()
                };
                let a = apply_one(tx, cfg, &one, received_at, None)?;
                first.get_or_insert(a);
            }
            first.expect("the device itself is always applied")
        } else {
            let device_deleted_at = match ev.identity.module() {
                Some(_) => {
                    let device = Identity::new(ev.identity.hub(), ev.identity.device(), None);
                    load(tx, &device)?.state.deleted_at
                }
                None => None,
            };
            apply_one(tx, cfg, ev, received_at, device_deleted_at)?
        };
        out.push(applied);
    }
    Ok(out)
}

/// Module identities known for the device `id` names (its hub and device id).
fn modules_of(tx: &rusqlite::Transaction<'_>, id: &Identity) -> Result<Vec<Identity>, StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT module FROM identities WHERE hub = ?1 AND device = ?2 AND module <> ''",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![id.hub(), id.device()], |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    rows.map(|m| {
        m.map(|m| Identity::new(id.hub(), id.device(), Some(&m)))
            .map_err(db_err)
    })
    .collect()
}

fn apply_one(
    tx: &rusqlite::Transaction<'_>,
    cfg: &StoreConfig,
    ev: &ConnectionEvent,
    received_at: Timestamp,
    device_deleted_at: Option<Timestamp>,
) -> Result<Applied, StoreError> {
    let row = load(tx, &ev.identity)?;
    let state = machine::with_device_deletion(&row.state, device_deleted_at);
    let t = machine::apply(&state, ev, received_at, &cfg.policy);
    if t.outcome.changes_state() {
        let mut history = row.history;
        history.extend(status::changes_of(&state, &t));
        save(
            tx,
            &cfg.policy,
            &ev.identity,
            &t.state,
            row.version,
            &history,
        )?;
    }
    if let Some(alert) = &t.alert {
        enqueue(tx, &cfg.channels, alert)?;
    }
    if t.cancel_queued_alerts {
        // Withdraw the undelivered `disconnected` alert and any `reconnected` paired with it; a
        // `reconnected` whose `disconnected` already went out is still delivered.
        // (`UNIQUE (dedup_key, kind)` indexes `dedup_key`.)
        tx.prepare_cached(
            "DELETE FROM outbox WHERE dedup_key IN (
                 SELECT dedup_key FROM outbox
                 WHERE hub = ?1 AND device = ?2 AND module = ?3 AND kind = 'disconnected')",
        )
        .and_then(|mut s| {
            s.execute(params![
                ev.identity.hub(),
                ev.identity.device(),
                module_key(&ev.identity)
            ])
        })
        .map_err(db_err)?;
    }
    Ok(Applied {
        outcome: t.outcome,
        alert: t.alert,
    })
}

fn claim_due(
    tx: &rusqlite::Transaction<'_>,
    cfg: &StoreConfig,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<Alert>, StoreError> {
    let mut alerts = Vec::new();
    // Silenced outages are snoozed (their due time moves past the silence) and so leave the range:
    // scan again until `limit` alerts are claimed or nothing due is left.
    loop {
        let rows: Vec<(Identity, i64, IdentityState, History)> = {
            let mut stmt = tx.prepare_cached(CLAIM_DUE_SQL).map_err(db_err)?;
            let mapped = stmt
                .query_map(params![now.unix_millis(), limit as i64], |r| {
                    let (version, state) = row_to_state(r)?;
                    let module: String = r.get(15)?;
                    let id = Identity::new(
                        &r.get::<_, String>(13)?,
                        &r.get::<_, String>(14)?,
                        Some(module.as_str()),
                    );
                    Ok((id, version, state, history_at(r, 16)?))
                })
                .map_err(db_err)?;
            mapped.collect::<Result<_, _>>().map_err(db_err)?
        };
        let scanned = rows.len();
        let mut snoozed = 0;
        for (id, version, state, mut history) in rows {
            match machine::claim_due(&id, &state, now, &cfg.policy) {
                Claim::Alert(next, alert) => {
                    history.extend([status::alert_change(&alert)]);
                    save(tx, &cfg.policy, &id, &next, Some(version), &history)?;
                    enqueue(tx, &cfg.channels, &alert)?;
                    alerts.push(alert);
                }
                Claim::Snooze(next) => {
                    save(tx, &cfg.policy, &id, &next, Some(version), &history)?;
                    snoozed += 1;
                }
                Claim::NotDue => {}
            }
        }
        if scanned < limit || alerts.len() >= limit || snoozed == 0 {
            break;
        }
    }
    // Old tombstones go in the same pass; the partial index keeps this cheap.
    tx.prepare_cached(
        "DELETE FROM identities WHERE last_seq IS NULL AND deleted_at IS NOT NULL AND deleted_at < ?1",
    )
    .and_then(|mut s| s.execute([now.unix_millis() - TOMBSTONE_KEEP_MS]))
    .map_err(db_err)?;
    Ok(alerts)
}

fn queued(
    tx: &rusqlite::Transaction<'_>,
    channel: &str,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<QueuedAlert>, StoreError> {
    // Oldest first, stopping at the first alert still backing off: alerts for one destination go
    // out in the order they were raised, so a `reconnected` never overtakes its `disconnected`.
    let mut stmt = tx
        .prepare_cached(
            "SELECT id, body, attempts, next_attempt_at FROM outbox WHERE channel = ?1
             ORDER BY id LIMIT ?2",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map(params![channel, limit as i64], |r| {
            Ok((
                QueuedAlert {
                    id: r.get::<_, i64>(0)?.to_string(),
                    body: r.get(1)?,
                    attempts: r.get::<_, i64>(2)? as u32,
                },
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (alert, next_at) = row.map_err(db_err)?;
        if next_at > now.unix_millis() {
            break;
        }
        out.push(alert);
    }
    Ok(out)
}
