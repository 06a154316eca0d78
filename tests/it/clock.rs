//! Event times from a wrong clock, over the wire: a disconnect stamped in the year 2999 alerts a
//! grace period after it arrived, a deletion stamped 2999 does not hide the device's later events,
//! each such event is counted in `/metrics`, and an identity's wrong clock is logged once — on
//! both stores.

use crate::support::*;
use serde_json::Value;
use std::time::Duration;

const Y2999: &str = "2999-01-01T00:00:00.0000000Z";

fn post(cm: &Connmon, events: Vec<Value>) -> Value {
    let r = cm.api_events(&Value::Array(events), &[("aeg-event-type", "Notification")]);
    assert_eq!(r.status, 200, "{}\n{}", r.text(), cm.stderr());
    r.json()
}

/// The value of the sample `name{type="…"}` in a Prometheus text page (0 when absent).
fn sample(text: &str, name: &str, event_type: &str) -> u64 {
    let prefix = format!("{name}{{type=\"{event_type}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn wrong_clocks_are_taken_as_the_receipt_time(store: &[(&str, &str)]) {
    let rx = Receiver::start(vec![]);
    let url = rx.url("/alerts");
    let mut env = vec![
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_SWEEP_INTERVAL", "1h"),
        ("CONNMON_ALERT_WEBHOOK_URL", url.as_str()),
    ];
    env.extend_from_slice(store);
    let cm = Connmon::standalone(&env);

    post(&cm, vec![disconnected("broken-clock", 1, Y2999).eg()]);
    // The same device again, still from 2999: counted again, not logged again.
    post(&cm, vec![disconnected("broken-clock", 2, Y2999).eg()]);
    std::thread::sleep(Duration::from_millis(2_100));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered), (1, 1), "{s:?}");
    let alert = &rx.delivered()[0];
    assert_eq!(alert["deviceId"], "broken-clock");
    let since = parse_time(alert["disconnectedAt"].as_str().unwrap());
    let age = time::OffsetDateTime::now_utc() - since;
    assert!(age < time::Duration::seconds(60), "{alert}");

    // A deletion from 2999, then the device's ordinary events: they are applied.
    post(&cm, vec![deleted("reborn", Y2999)]);
    let answer = post(
        &cm,
        vec![
            connected("reborn", 1, &ago(0)).eg(),
            disconnected("reborn", 2, &ago(0)).eg(),
        ],
    );
    assert_eq!(answer["accepted"], 2, "{answer}");
    let found = Request::get(&format!("/api/devices/reborn?hub={HUB}")).send(cm.port);
    assert_eq!(found.status, 200, "{}", found.text());
    assert_eq!(found.json()["state"], "pending", "{}", found.text());

    let metrics = Request::get("/metrics").send(cm.port).text();
    let name = "connmon_events_future_time_total";
    assert_eq!(sample(&metrics, name, "disconnected"), 2, "{metrics}");
    assert_eq!(sample(&metrics, name, "deleted"), 1, "{metrics}");
    assert_eq!(sample(&metrics, name, "connected"), 0, "{metrics}");
    let logs = cm.logs();
    let logged = |device: &str| {
        logs.lines()
            .filter(|l| l.contains("a clock is wrong") && l.contains(device))
            .count()
    };
    assert_eq!((logged("broken-clock"), logged("reborn")), (1, 1), "{logs}");
}

#[test]
fn a_wrong_clock_neither_delays_an_alert_nor_hides_a_device_sqlite() {
    wrong_clocks_are_taken_as_the_receipt_time(&[]);
}

#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn a_wrong_clock_neither_delays_an_alert_nor_hides_a_device_table() {
    let conn = crate::table_client::azurite_connection_string();
    let table = crate::table_client::unique_table_name("clock");
    wrong_clocks_are_taken_as_the_receipt_time(&[
        ("CONNMON_STORE", "table"),
        ("CONNMON_TABLE_CONNECTION", &conn),
        ("CONNMON_TABLE_NAME", &table),
    ]);
}
