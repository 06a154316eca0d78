//! What only the SQLite store has: the sweep's partial index (checked in the query plan) and its
//! behaviour when another process holds the database lock. The behaviour both stores share is in
//! `conformance.rs`.

use connmon::machine::{Outcome, Policy};
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::store::sqlite::{SqliteStore, CLAIM_DUE_SQL};
use connmon::store::{Store, StoreConfig, StoreError};
use std::path::Path;
use std::time::Duration;

const NOW_MS: i64 = 1_795_773_600_000;

fn at(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(NOW_MS + s * 1000)
}

fn seq(n: u64) -> SequenceNumber {
    SequenceNumber::parse(&format!("{:064X}", n)).unwrap()
}

fn ev(device: &str, n: u64, connected: bool, t: i64) -> ConnectionEvent {
    ConnectionEvent {
        identity: Identity::new("Hub", device, None),
        kind: if connected {
            EventKind::Connected(seq(n))
        } else {
            EventKind::Disconnected(seq(n))
        },
        time: Some(at(t)),
        event_id: format!("{device}-{n}"),
    }
}

fn config() -> StoreConfig {
    StoreConfig {
        policy: Policy::new(Duration::from_secs(300)),
        channels: vec!["log".into()],
    }
}

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(path, config()).unwrap()
}

#[tokio::test]
async fn the_sweep_query_uses_the_pending_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let _store = open(&path);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {CLAIM_DUE_SQL}"))
        .unwrap()
        .query_map(rusqlite::params![0i64, 10i64], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plan = plan.join("; ");
    assert!(plan.contains("USING INDEX identities_due"), "{plan}");
    assert!(
        !plan.contains("SCAN identities"),
        "a sweep must never scan the fleet: {plan}"
    );
}

#[tokio::test]
async fn paging_through_identities_seeks_from_the_cursor() {
    // A page after a cursor must start where the cursor is, not scan from the first identity:
    // a dashboard pages through every identity, and a scan from the start made that quadratic.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let _store = open(&path);
    let conn = rusqlite::Connection::open(&path).unwrap();
    for (hub, after, seek) in [
        (false, true, "(hub,device,module)>(?,?,?)"),
        (true, true, "(hub=? AND (device,module)>(?,?))"),
        (true, false, "(hub=?)"),
    ] {
        let sql = connmon::store::sqlite::identities_sql(hub, after);
        check_plan(
            &conn,
            &sql,
            rusqlite::params!["h", "h", "d", "", 10i64],
            seek,
        );
    }
    let sql = connmon::store::sqlite::noteworthy_sql(true);
    let seek = "(hub,device,module)>(?,?,?)";
    check_plan(&conn, &sql, rusqlite::params!["h", "d", "", 10i64], seek);
}

fn check_plan(conn: &rusqlite::Connection, sql: &str, params: impl rusqlite::Params, seek: &str) {
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map(params, |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plan = plan.join("; ");
    assert!(
        plan.contains("USING PRIMARY KEY") && plan.contains(seek),
        "{sql}: {plan}"
    );
}

#[tokio::test]
async fn a_locked_database_fails_the_call_and_recovers_when_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let store = open(&path);
    // Another process holds the write lock past the store's 5 s busy timeout.
    let locker = rusqlite::Connection::open(&path).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = store
        .apply(vec![ev("d1", 1, false, 0)], at(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable(ref m) if m.contains("locked")),
        "{err}"
    );
    locker.execute_batch("ROLLBACK").unwrap();
    // Nothing of the failed call was kept: the same event applies as new.
    let ok = store
        .apply(vec![ev("d1", 1, false, 0)], at(2))
        .await
        .unwrap();
    assert_eq!(ok[0].as_ref().unwrap().outcome, Outcome::Opened);
}

#[tokio::test]
async fn a_file_with_another_data_layout_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    drop(open(&path));
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let cfg = config();
    let err = SqliteStore::open(&path, cfg.clone())
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("layout version 99") && msg.contains("CONNMON_SQLITE_PATH"),
        "{msg}"
    );
    // A fresh file gets the current version.
    let fresh = dir.path().join("fresh.db");
    drop(SqliteStore::open(&fresh, cfg).unwrap());
    let v: i64 = rusqlite::Connection::open(&fresh)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, connmon::store::sqlite::SCHEMA_VERSION);
}

#[tokio::test]
async fn a_layout_1_file_is_upgraded_in_place_keeping_its_identities() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let store = open(&path);
        store
            .apply(vec![ev("old", 1, false, 0)], at(0))
            .await
            .unwrap();
    }
    // What layout 1 looked like: no history column, no hubs or meta tables.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch(
        "ALTER TABLE identities DROP COLUMN history; DROP TABLE hubs; DROP TABLE meta;
         PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);
    let store = open(&path);
    let hubs = store.overview().await.unwrap().hubs;
    assert_eq!(
        hubs.len(),
        1,
        "the hubs the file knows are listed: {hubs:?}"
    );
    assert_eq!(
        (hubs[0].hub.as_str(), hubs[0].last_event_at),
        ("hub", at(0))
    );
    let old = Identity::new("hub", "old", None);
    let rec = store.identity(old.clone()).await.unwrap().expect("kept");
    assert!(rec.state.outage.is_some(), "its open outage survived");
    assert!(rec.history.0.is_empty(), "no history before the upgrade");
    store
        .apply(vec![ev("old", 2, true, 60)], at(60))
        .await
        .unwrap();
    let rec = store.identity(old).await.unwrap().unwrap();
    assert_eq!(rec.history.0.len(), 1, "{:?}", rec.history);
    store
        .touch_hubs(vec![("hub".into(), at(60))])
        .await
        .unwrap();
    assert_eq!(store.overview().await.unwrap().hubs.len(), 1);
    let v: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, connmon::store::sqlite::SCHEMA_VERSION);
}

/// One process per SQLite file: the lock beside it is held while a store is open — shared by the
/// stores of one process (the conformance tests' instances) — naming this process, and released
/// when the last one closes. (Another process is refused: `restart.rs`.)
#[tokio::test]
async fn the_lock_beside_the_file_is_held_while_a_store_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let lock_path = dir.path().join("c.db.lock");
    let other_process = || {
        let f = std::fs::File::open(&lock_path).expect("the lock file exists");
        let free = f.try_lock().is_ok();
        (free, std::fs::read_to_string(&lock_path).unwrap())
    };
    let first = open(&path);
    let second = open(&path);
    let (free, holder) = other_process();
    assert!(!free, "held while the stores are open");
    assert!(
        holder.starts_with(&format!("pid {}", std::process::id())),
        "{holder:?}"
    );
    first
        .apply(vec![ev("one", 1, false, 0)], at(0))
        .await
        .unwrap();
    drop(first);
    assert!(!other_process().0, "held while one store is open");
    assert!(second
        .identity(Identity::new("Hub", "one", None))
        .await
        .unwrap()
        .is_some());
    drop(second);
    assert!(other_process().0, "released when the last store closes");
}
