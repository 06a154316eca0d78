//! A store that comes back empty: the storage emulator restarted in memory under running
//! instances (its tables gone, as when a table is deleted). connmon creates the table again, as it
//! did before, and now also tells people: one `store_reset` alert to every channel, raised once
//! however many instances find the reset, counted in `connmon_store_resets_total`.

use crate::support::*;
use connmon::machine::{AlertKind, Policy};
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::store::table::client::TableClient;
use connmon::store::table::conn::TableEndpoint;
use connmon::store::table::TableStore;
use connmon::store::{Store, StoreConfig};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const NOW_MS: i64 = 1_795_773_600_000;

fn at(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(NOW_MS + s * 1000)
}

fn dis(device: &str, t: i64) -> ConnectionEvent {
    ConnectionEvent {
        identity: Identity::new("hub", device, None),
        kind: EventKind::Disconnected(SequenceNumber::parse(&format!("{:064X}", 1)).unwrap()),
        time: Some(at(t)),
        event_id: String::new(),
    }
}

async fn open(az: &Azurite) -> Arc<dyn Store> {
    let client = TableClient::new(TableEndpoint::development(&az.endpoint()), "reset").unwrap();
    let cfg = StoreConfig {
        policy: Policy::new(Duration::from_secs(300)),
        channels: vec!["webhook".into(), "teams".into()],
    };
    Arc::new(TableStore::open(client, cfg).await.unwrap())
}

/// Every instance ends a sweep at `t` at the same moment; the alerts they raised, together.
async fn finish_at_once(instances: &[Arc<dyn Store>], t: i64) -> Vec<connmon::machine::Alert> {
    let mut tasks = tokio::task::JoinSet::new();
    for s in instances {
        let s = s.clone();
        tasks.spawn(async move { s.finish_sweep(at(t), None).await.unwrap() });
    }
    let mut raised = Vec::new();
    while let Some(r) = tasks.join_next().await {
        raised.extend(r.unwrap());
    }
    raised
}

/// Restarts the emulator empty at `t`, lets the instances `finders` each apply an event (finding
/// the table missing), then has every instance end a sweep at once, 10 s later.
async fn reset_under(
    az: &mut Azurite,
    instances: &[Arc<dyn Store>],
    finders: &[usize],
    t: i64,
) -> Vec<connmon::machine::Alert> {
    az.kill();
    az.start_again();
    for (k, &i) in finders.iter().enumerate() {
        let t = t + k as i64;
        instances[i]
            .apply(vec![dis(&format!("after-{t}"), t)], at(t))
            .await
            .unwrap();
    }
    finish_at_once(instances, t + 10).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Azurite: run scripts/test"]
async fn three_instances_finding_one_reset_raise_one_store_reset() {
    let mut az = Azurite::in_memory();
    let mut instances = Vec::new();
    for _ in 0..3 {
        instances.push(open(&az).await);
    }
    instances[0].apply(vec![dis("a", 0)], at(0)).await.unwrap();
    assert!(
        finish_at_once(&instances, 10).await.is_empty(),
        "a first start is no reset"
    );

    // Two of them find the table missing (and create it again); the third notices nothing.
    let raised = reset_under(&mut az, &instances, &[0, 1], 20).await;
    assert_eq!(raised.len(), 1, "one alert for one reset: {raised:?}");
    let reset = &raised[0];
    assert_eq!(reset.kind, AlertKind::StoreReset);
    // Worded by whichever instance won: one that found the table missing, or the marker gone.
    let detail = &reset.detail.as_ref().unwrap().0;
    assert!(
        detail.contains("table reset ") && detail.contains("empty"),
        "{reset:?}"
    );
    assert_eq!(
        instances[2].queue_len().await.unwrap(),
        2,
        "queued once per channel"
    );
    assert!(finish_at_once(&instances, 40).await.is_empty(), "said once");
    // An instance started after the reset knows only the new store: nothing to say either.
    instances.push(open(&az).await);
    assert!(finish_at_once(&instances, 50).await.is_empty());

    // A second reset is a new alert, with a new key; the new instance takes part like the others.
    let again = reset_under(&mut az, &instances, &[3], 60).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_ne!(again[0].dedup_key, reset.dedup_key);
}

fn metric(cm: &Connmon, name: &str) -> Option<f64> {
    let text = Request::get("/metrics").send(cm.port).text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
}

fn resets(alerts: &[Value]) -> Vec<&Value> {
    alerts
        .iter()
        .filter(|a| a["kind"] == "store_reset")
        .collect()
}

/// End to end: two standalone instances on one emulator, the emulator restarted empty under
/// them, both sweeping: the webhook receiver gets one `store_reset` with its documented fields,
/// the instances' counters sum to 1, and the outage that was open before is forgotten.
#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn an_emulator_restarted_empty_under_two_instances_sends_one_store_reset() {
    let mut az = Azurite::in_memory();
    let rx = Receiver::start(vec![]);
    let conn = az.connection_string();
    let env = [
        ("CONNMON_GRACE_PERIOD", "5m"),
        ("CONNMON_SWEEP_INTERVAL", "1h"),
        ("CONNMON_STORE", "table"),
        ("CONNMON_TABLE_CONNECTION", conn.as_str()),
        ("CONNMON_TABLE_NAME", "resets"),
        ("CONNMON_ALERT_WEBHOOK_URL", &rx.url("/hook")),
    ];
    let one = Connmon::standalone(&env);
    let two = Connmon::standalone(&env);
    let post = |cm: &Connmon, ev: Ev| {
        let r = cm.api_events(
            &Value::Array(vec![ev.eg()]),
            &[("aeg-event-type", "Notification")],
        );
        assert_eq!(r.status, 200, "{}", r.text());
    };
    post(&one, disconnected("pending", 1, &ago(10)));
    one.sweep();
    two.sweep();
    assert!(resets(&rx.delivered()).is_empty(), "{:?}", rx.delivered());

    az.kill();
    az.start_again();
    post(&two, disconnected("later", 1, &ago(5)));
    let (s1, s2) = std::thread::scope(|s| {
        let a = s.spawn(|| one.sweep());
        let b = s.spawn(|| two.sweep());
        (a.join().unwrap(), b.join().unwrap())
    });
    one.sweep();
    two.sweep();
    let delivered = rx.delivered();
    let got = resets(&delivered);
    assert_eq!(
        got.len(),
        1,
        "one store_reset: {delivered:#?}\n{s1:?}\n{s2:?}"
    );
    let r = got[0];
    assert_eq!(r["hub"], "");
    assert_eq!(r["deviceId"], "");
    assert!(r["dedupKey"].as_str().unwrap().starts_with("cm1s-"), "{r}");
    // Whichever instance wins the claim words it: the one that found the table missing, or the
    // one that found the new table without its marker.
    let detail = r["detail"].as_str().unwrap();
    assert!(
        detail.contains("table resets ") && detail.contains("empty"),
        "{r}"
    );
    for f in ["disconnectedAt", "detectedAt"] {
        assert!(
            Timestamp::parse_rfc3339(r[f].as_str().unwrap()).is_some(),
            "{f}: {r}"
        );
    }
    let counted: f64 = [&one, &two]
        .iter()
        .map(|cm| metric(cm, "connmon_store_resets_total").unwrap())
        .sum();
    assert_eq!(counted, 1.0, "one instance raised it");
    // The outage open before the reset is forgotten: the status shows only what came after.
    let status = Request::get("/api/status").send(one.port).json();
    assert_eq!(status["tracked"], 1, "{status}");
    let alert_lines = one.logs() + &two.logs();
    assert_eq!(
        alert_lines
            .lines()
            .filter(|l| l.contains("ALERT store_reset"))
            .count(),
        1,
        "{alert_lines}"
    );
}
