//! The SQLite store on a real file: durability across reopen, exactly-once claims, group commit under
//! concurrency, the sweep's index, the outbox's order, and failure when the database is locked.

use connmon::machine::{AlertKind, Outcome, Policy};
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::store::sqlite::{SqliteStore, CLAIM_DUE_SQL};
use connmon::store::{Store, StoreError};
use std::path::Path;
use std::sync::Arc;
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

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(
        path,
        Policy {
            grace: Duration::from_secs(300),
        },
    )
    .unwrap()
}

#[tokio::test]
async fn state_and_claims_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    {
        let store = open(&path);
        let applied = store
            .apply(vec![ev("d1", 1, false, 0), ev("d2", 1, false, 0)], at(1))
            .await
            .unwrap();
        assert_eq!(
            applied.iter().map(|a| a.outcome).collect::<Vec<_>>(),
            [Outcome::Opened, Outcome::Opened]
        );
        assert!(
            store.claim_due(at(299), 100).await.unwrap().is_empty(),
            "not due before the grace"
        );
    }
    let store = open(&path);
    let claimed = store.claim_due(at(300), 100).await.unwrap();
    let mut devices: Vec<&str> = claimed.iter().map(|a| a.identity.device()).collect();
    devices.sort();
    assert_eq!(devices, ["d1", "d2"]);
    assert!(
        store.claim_due(at(400), 100).await.unwrap().is_empty(),
        "claimed once"
    );
    drop(store);
    let store = open(&path);
    assert!(
        store.claim_due(at(900), 100).await.unwrap().is_empty(),
        "still claimed after reopening"
    );
    assert_eq!(
        store.queue_len().await.unwrap(),
        2,
        "both alerts wait in the outbox"
    );
    // A duplicate of the first disconnect is recognised after the restart.
    let again = store
        .apply(vec![ev("d1", 1, false, 0)], at(901))
        .await
        .unwrap();
    assert_eq!(again[0].outcome, Outcome::Duplicate);
}

#[tokio::test]
async fn claim_limit_splits_a_big_outage_without_losing_any() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("c.db"));
    let events: Vec<_> = (0..250)
        .map(|i| ev(&format!("d{i}"), 1, false, 0))
        .collect();
    store.apply(events, at(1)).await.unwrap();
    let mut total = 0;
    loop {
        let n = store.claim_due(at(300), 100).await.unwrap().len();
        total += n;
        if n < 100 {
            break;
        }
    }
    assert_eq!(total, 250);
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
    assert!(plan.contains("USING INDEX identities_pending"), "{plan}");
    assert!(
        !plan.contains("SCAN identities"),
        "a sweep must never scan the fleet: {plan}"
    );
}

#[tokio::test]
async fn concurrent_callers_get_the_result_of_sequence_number_order() {
    // 40 devices, each with 6 events delivered concurrently in scrambled order from many tasks; the
    // last event of even devices is a disconnect at t=100, of odd devices a connect.
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(open(&dir.path().join("c.db")));
    let mut events = Vec::new();
    for d in 0..40u64 {
        for n in 1..=6u64 {
            let last_is_disconnect = d % 2 == 0;
            let connected = if last_is_disconnect {
                n % 2 == 1
            } else {
                n % 2 == 0
            };
            events.push(ev(&format!("d{d}"), n, connected, (n * 20) as i64 - 20));
        }
    }
    // Deterministic scramble, then one task per event.
    for i in 0..events.len() {
        let j = (i * 97 + 13) % events.len();
        events.swap(i, j);
    }
    let tasks: Vec<_> = events
        .into_iter()
        .map(|e| {
            let s = store.clone();
            tokio::spawn(async move { s.apply(vec![e], at(200)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let claimed = store.claim_due(at(400), 1000).await.unwrap();
    let mut devices: Vec<u64> = claimed
        .iter()
        .map(|a| a.identity.device()[1..].parse().unwrap())
        .collect();
    devices.sort();
    assert_eq!(devices, (0..40).step_by(2).collect::<Vec<_>>());
    assert!(
        claimed.iter().all(|a| a.disconnected_at == at(100)),
        "outages start at the last disconnect"
    );
}

#[tokio::test]
async fn outbox_keeps_order_and_backs_off_as_a_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("c.db"));
    store
        .apply(vec![ev("d1", 1, false, 0)], at(1))
        .await
        .unwrap();
    store.claim_due(at(300), 10).await.unwrap();
    let applied = store
        .apply(vec![ev("d1", 2, true, 400)], at(401))
        .await
        .unwrap();
    assert_eq!(applied[0].outcome, Outcome::Reconnected);
    let reconnected = applied[0].alert.as_ref().unwrap();
    assert_eq!(reconnected.kind, AlertKind::Reconnected);

    let q = store.queued(at(401), 10).await.unwrap();
    assert_eq!(q.len(), 2);
    assert!(
        q[0].body.contains("\"kind\":\"disconnected\"")
            && q[1].body.contains("\"kind\":\"reconnected\"")
    );
    let key = format!("\"dedupKey\":\"{}\"", reconnected.dedup_key);
    assert!(
        q[0].body.contains(&key) && q[1].body.contains(&key),
        "same dedupKey for both"
    );

    // The head fails and backs off: nothing behind it may overtake it.
    store.failed(vec![q[0].id], at(500)).await.unwrap();
    assert!(store.queued(at(450), 10).await.unwrap().is_empty());
    let q2 = store.queued(at(500), 10).await.unwrap();
    assert_eq!(q2.len(), 2);
    assert_eq!(q2[0].attempts, 1);
    store
        .delivered(q2.iter().map(|q| q.id).collect())
        .await
        .unwrap();
    assert_eq!(store.queue_len().await.unwrap(), 0);
}

#[tokio::test]
async fn deleting_a_device_withdraws_its_undelivered_disconnected_alert() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("c.db"));
    store
        .apply(vec![ev("d1", 1, false, 0), ev("d2", 1, false, 0)], at(1))
        .await
        .unwrap();
    assert_eq!(store.claim_due(at(300), 10).await.unwrap().len(), 2);
    let del = ConnectionEvent {
        identity: Identity::new("hub", "d1", None),
        kind: EventKind::Deleted,
        time: Some(at(350)),
        event_id: String::new(),
    };
    let applied = store.apply(vec![del], at(351)).await.unwrap();
    assert_eq!(applied[0].outcome, Outcome::Deleted);
    let q = store.queued(at(400), 10).await.unwrap();
    assert_eq!(q.len(), 1);
    assert!(q[0].body.contains("\"deviceId\":\"d2\""));
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
    assert_eq!(ok[0].outcome, Outcome::Opened);
}
