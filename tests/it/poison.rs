//! Identities at the edge of what IoT Hub accepts, and one event the store refuses. The longest
//! ids IoT Hub allows (128 `%`, which the Table keys escape to three characters each) are
//! applied, found by the status API and alerted on both stores; ids IoT Hub never sends (emoji)
//! are rejected by decode; and an event the store still refuses is rejected alone — logged,
//! counted, acknowledged — while the rest of its delivery is applied.

use crate::support::*;
use connmon::channels::Notifier;
use connmon::decode::Decoded;
use connmon::machine::Policy;
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::monitor::Monitor;
use connmon::store::sqlite::SqliteStore;
use connmon::store::table::client::TableClient;
use connmon::store::table::TableStore;
use connmon::store::{Store, StoreConfig};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// The longest device or module id IoT Hub accepts, made of the character the keys escape.
fn long_id() -> String {
    "%".repeat(128)
}

/// 100 ordinary devices disconnected an hour ago, with `odd` in the middle: one delivery.
fn delivery_with(odd: &Ev) -> Value {
    let mut events: Vec<Value> = (0..100)
        .map(|i| disconnected(&format!("plain-{i:03}"), 1, &ago(3600)).eg())
        .collect();
    events.insert(50, odd.eg());
    invocation(Value::Array(events))
}

fn start(store: &[(&str, &str)], rx: &Receiver) -> Connmon {
    let url = rx.url("/alerts");
    let mut env = vec![
        ("CONNMON_GRACE_PERIOD", "5m"),
        ("CONNMON_ALERT_WEBHOOK_URL", url.as_str()),
    ];
    env.extend_from_slice(store);
    Connmon::functions(&env)
}

/// connmon on a table of its own in the suite's Azurite.
fn start_on_table(rx: &Receiver) -> Connmon {
    let conn = crate::table_client::azurite_connection_string();
    let table = crate::table_client::unique_table_name("poison");
    let store = [
        ("CONNMON_STORE", "table"),
        ("CONNMON_TABLE_CONNECTION", conn.as_str()),
        ("CONNMON_TABLE_NAME", table.as_str()),
    ];
    start(&store, rx)
}

/// Delivers [`delivery_with`] `odd`: answered 200, with `opened` events applied and `rejected`
/// rejected. Returns the invocation's `Logs`.
fn deliver_with(cm: &Connmon, odd: &Ev, opened: usize, rejected: usize) -> Vec<String> {
    let resp = cm.invoke("ConnectionEvent", &delivery_with(odd));
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), cm.stderr());
    let logs = host_logs(&resp);
    let summary = format!("{opened} event(s) applied [opened={opened}]");
    assert!(logs[0].contains(&summary), "{logs:?}");
    assert!(
        logs[0].contains(&format!(", {rejected} rejected")),
        "{logs:?}"
    );
    logs
}

/// The 101-event delivery whose odd event is a module of 128 `%` on a device of 128 `%`: all of it
/// is applied at once, the identity is found by its ids, and the sweep alerts all 101.
fn the_longest_ids_are_applied_with_their_delivery(cm: &Connmon, rx: &Receiver) {
    let long = long_id();
    let odd = disconnected(&long, 1, &ago(3600)).module(&long);
    deliver_with(cm, &odd, 101, 0);

    let escaped = "%25".repeat(128);
    let path = format!("/api/devices/{escaped}/modules/{escaped}?hub={HUB}");
    let found = Request::get(&path).send(cm.port);
    assert_eq!(found.status, 200, "{}", found.text());
    let body = found.json();
    assert_eq!(body["deviceId"], long.as_str(), "{body}");
    assert_eq!(body["moduleId"], long.as_str(), "{body}");

    let s = cm.sweep();
    assert_eq!(
        (s.new_alerts, s.delivered, s.queued),
        (101, 101, 0),
        "{s:?}"
    );
    // Each identity's own alert (a per-hub outage summary comes with them: it names no device).
    let alerts: Vec<Value> = rx
        .delivered()
        .into_iter()
        .filter(|a| a["kind"] == "disconnected")
        .collect();
    let got = names(&alerts);
    assert_eq!(got.len(), 101);
    assert!(got.contains(&pair("disconnected", &long)), "{got:?}");
}

#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn the_longest_ids_iot_hub_accepts_fit_table_storage() {
    let rx = Receiver::start(vec![]);
    let cm = start_on_table(&rx);
    the_longest_ids_are_applied_with_their_delivery(&cm, &rx);
}

#[test]
fn the_longest_ids_iot_hub_accepts_are_applied_on_sqlite_too() {
    let rx = Receiver::start(vec![]);
    let cm = start(&[], &rx);
    the_longest_ids_are_applied_with_their_delivery(&cm, &rx);
}

/// IoT Hub ids are ASCII: 128 emoji are no id it sends, so decode rejects that event (naming
/// why) and the other 100 are applied.
#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn an_emoji_device_id_is_rejected_by_decode_and_the_rest_is_applied() {
    let rx = Receiver::start(vec![]);
    let cm = start_on_table(&rx);
    let odd = disconnected(&"🔥".repeat(128), 1, &ago(3600));
    let logs = deliver_with(&cm, &odd, 100, 1);
    assert!(
        logs.iter()
            .any(|l| l.contains("deviceId") && l.contains("ASCII")),
        "{logs:?}"
    );
    assert_eq!(cm.counters()["rejected"], 1);
}

// ---------------------------------------------------------------------------------------------
// One event the store refuses

fn event(device: &str, n: u64) -> Decoded {
    Decoded::Event(ConnectionEvent {
        identity: Identity::new(HUB, device, None),
        kind: EventKind::Disconnected(SequenceNumber::parse(&seq(n)).unwrap()),
        time: Some(Timestamp::now().plus_millis(-3_600_000)),
        event_id: format!("{}-{n}", &device[..device.len().min(8)]),
    })
}

/// A delivery of 101 events whose middle one the store cannot take: a device id of 40,000
/// characters, over the 32K characters Table Storage allows in a property (decode never lets
/// such an id through; the store is handed it directly). Table Storage answers 400 for that
/// entity: the event is rejected, logged with the service's reason and counted, and the other
/// 100 are applied and acknowledged. SQLite takes it.
async fn one_refused_event_leaves_the_rest_applied(store: Arc<dyn Store>, refuses: bool) {
    let monitor = Monitor::new(store, Notifier::new(Vec::new(), None), policy());
    let mut items: Vec<Decoded> = (0..100).map(|i| event(&format!("ok-{i:03}"), 1)).collect();
    items.insert(50, event(&"p".repeat(40_000), 1));
    let report = monitor
        .ingest(items.clone(), Timestamp::now())
        .await
        .expect("the delivery is acknowledged");
    let applied = if refuses { 100 } else { 101 };
    assert_eq!(report.outcomes.len(), applied, "{report:?}");
    assert_eq!(report.rejected.len(), 101 - applied, "{report:?}");
    if refuses {
        assert!(
            report.rejected[0].contains("PropertyValueTooLarge"),
            "the reason names what the service refused: {:?}",
            report.rejected
        );
    }
    let counted = |m: &Monitor| m.counters.snapshot()["rejected"].as_u64();
    assert_eq!(counted(&monitor), Some(101 - applied as u64));
    let text = monitor.prometheus(Timestamp::now()).await.unwrap();
    assert!(
        text.contains(&format!("connmon_events_rejected_total {}", 101 - applied)),
        "{text}"
    );

    // Event Grid delivers it again (it was acknowledged, so it should not; but if it does): the
    // 100 are duplicates, the refused one is refused again, and the delivery is acknowledged.
    let again = monitor.ingest(items, Timestamp::now()).await.unwrap();
    let duplicates = again
        .outcomes
        .iter()
        .filter(|o| **o == connmon::machine::Outcome::Duplicate)
        .count();
    assert_eq!(duplicates, applied, "{again:?}");
    let claimed = monitor
        .store()
        .claim_due(Timestamp::now(), 1000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), applied);
}

fn policy() -> Policy {
    Policy::new(Duration::from_secs(300))
}

fn config() -> StoreConfig {
    StoreConfig {
        policy: policy(),
        channels: vec!["log".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Azurite: run scripts/test"]
async fn an_event_table_storage_refuses_is_rejected_alone() {
    let table = crate::table_client::unique_table_name("refused");
    let client = TableClient::new(crate::table_client::azurite_endpoint(), &table).unwrap();
    let store = TableStore::open(client, config()).await.unwrap();
    one_refused_event_leaves_the_rest_applied(Arc::new(store), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_delivery_is_applied_whole_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("p.db"), config()).unwrap();
    one_refused_event_leaves_the_rest_applied(Arc::new(store), false).await;
}
