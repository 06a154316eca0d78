//! The status API (`/api/status`, `/api/devices…`) in both modes and who may call it,
//! `/metrics` read by the Prometheus project's own text-format parser, Functions-mode metric log
//! lines, and the dead-man's switch (`CONNMON_HUB_QUIET_AFTER`) end to end.

use crate::support::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

const API_KEY: &str = "api-key-0123456789abcdef";
const WEBHOOK_KEY: &str = "webhook-key-0123456789ab";

fn get(cm: &Connmon, path: &str) -> Response {
    Request::get(path).send(cm.port)
}

fn get_json(cm: &Connmon, path: &str) -> Value {
    let r = get(cm, path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

fn post(cm: &Connmon, events: Vec<Value>) {
    let r = cm.api_events(&Value::Array(events), &[("aeg-event-type", "Notification")]);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A small fleet: `ok` connected, `gone` offline for an hour (alerted after a sweep), `soon`
/// offline for ten seconds (pending), module `ok/edge` connected, and `back` that reconnected.
fn fleet() -> Vec<Value> {
    vec![
        connected("ok", 1, &ago(600)).eg(),
        connected("ok", 1, &ago(600)).module("edge").eg(),
        disconnected("gone", 5, &ago(3600)).eg(),
        disconnected("soon", 2, &ago(10)).eg(),
        disconnected("back", 3, &ago(120)).eg(),
        connected("back", 4, &ago(100)).eg(),
    ]
}

fn devices_of(page: &Value) -> Vec<String> {
    page["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| match d["moduleId"].as_str() {
            Some(m) => format!("{}/{m}", d["deviceId"].as_str().unwrap()),
            None => d["deviceId"].as_str().unwrap().to_string(),
        })
        .collect()
}

#[test]
fn status_devices_and_one_device_standalone() {
    let cm = Connmon::standalone(&[
        ("CONNMON_GRACE_PERIOD", "5m"),
        ("CONNMON_SWEEP_INTERVAL", "1h"),
    ]);
    let empty = get_json(&cm, "/api/status");
    assert_eq!(empty["tracked"], 0, "{empty}");
    assert_eq!(empty["hubs"], json!([]));
    post(&cm, fleet());
    cm.sweep();

    let s = get_json(&cm, "/api/status");
    for (k, v) in [
        ("tracked", 5),
        ("connected", 3),
        ("pending", 1),
        ("alerted", 1),
        ("flapping", 0),
        ("silenced", 0),
    ] {
        assert_eq!(s[k], v, "{k}: {s}");
    }
    assert_eq!(s["hubs"][0]["hub"], HUB.to_lowercase(), "{s}");
    let last_event = parse_time(s["hubs"][0]["lastEventAt"].as_str().unwrap());
    assert!(
        (time::OffsetDateTime::now_utc() - last_event).whole_seconds() < 60,
        "lastEventAt is when the events arrived: {s}"
    );
    parse_time(s["lastSweepAt"].as_str().expect("a sweep ran"));
    assert_eq!(s["gracePeriodSeconds"], 300);

    // Filters.
    let offline = get_json(&cm, "/api/devices?state=offline");
    let mut names = devices_of(&offline);
    names.sort();
    assert_eq!(names, ["gone", "soon"], "{offline}");
    assert_eq!(offline["next"], Value::Null);
    let alerted = get_json(&cm, "/api/devices?state=alerted");
    assert_eq!(devices_of(&alerted), ["gone"]);
    let d = &alerted["devices"][0];
    assert_eq!(d["state"], "alerted");
    assert!(d["offlineSeconds"].as_i64().unwrap() >= 3600, "{d}");
    let pending = get_json(&cm, "/api/devices?state=pending");
    assert_eq!(devices_of(&pending), ["soon"]);
    assert!(pending["devices"][0]["alertDueAt"].is_string());
    let hub = HUB.to_lowercase();
    let in_hub = get_json(&cm, &format!("/api/devices?hub={}", HUB.to_uppercase()));
    assert_eq!(
        devices_of(&in_hub).len(),
        5,
        "hub names compare case-insensitively"
    );
    let other = get_json(&cm, "/api/devices?hub=another-hub");
    assert!(devices_of(&other).is_empty());

    // Paging: every identity exactly once, in pages of 2.
    let mut seen = Vec::new();
    let mut path = "/api/devices?limit=2".to_string();
    for _ in 0..10 {
        let page = get_json(&cm, &path);
        assert!(page["devices"].as_array().unwrap().len() <= 2);
        seen.extend(devices_of(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/api/devices?limit=2&after={next}"),
            None => break,
        }
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(unique.len(), 5, "{seen:?}");

    // One device: its open outage, transitions and the alert raised.
    let gone = get_json(&cm, "/api/devices/gone");
    assert_eq!(gone["state"], "alerted");
    assert_eq!(gone["hub"], hub);
    assert!(gone["openOutage"]["alertedAt"].is_string(), "{gone}");
    assert_eq!(gone["transitions"][0]["kind"], "disconnected", "{gone}");
    assert_eq!(gone["alerts"][0]["kind"], "alert:disconnected", "{gone}");
    assert!(gone["alerts"][0]["seconds"].as_i64().unwrap() >= 3600);
    let back = get_json(&cm, &format!("/api/devices/back?hub={hub}"));
    assert_eq!(back["state"], "connected");
    assert_eq!(back["openOutage"], Value::Null);
    let kinds: Vec<&str> = back["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["connected", "disconnected"], "newest first: {back}");
    let lasted = back["transitions"][0]["seconds"].as_i64().unwrap();
    assert!(
        (19..=20).contains(&lasted),
        "the outage lasted 20 s: {back}"
    );
    assert_eq!(back["alerts"], json!([]), "a short outage raises nothing");
    let module = get_json(&cm, "/api/devices/ok/modules/edge");
    assert_eq!(
        (module["deviceId"].as_str(), module["moduleId"].as_str()),
        (Some("ok"), Some("edge"))
    );
    assert_eq!(module["state"], "connected");

    // Not found, and bad requests naming what was wrong.
    assert_eq!(get(&cm, "/api/devices/nobody").status, 404);
    assert_eq!(get(&cm, "/api/devices/ok/modules/nothing").status, 404);
    for (path, says) in [
        ("/api/devices?state=asleep", "state="),
        ("/api/devices?limit=0", "limit="),
        ("/api/devices?limit=5000", "limit="),
        ("/api/devices?after=not-a-cursor", "after="),
        ("/api/devices?staet=offline", "staet"),
        ("/api/status?verbose=1", "verbose"),
    ] {
        let msg = error_message(&get(&cm, path), 400);
        assert!(msg.contains(says), "{path}: {msg}");
    }
}

#[test]
fn a_device_id_in_several_hubs_needs_the_hub() {
    let cm = Connmon::standalone(&[("CONNMON_SWEEP_INTERVAL", "1h")]);
    post(
        &cm,
        vec![
            connected("twin", 1, &ago(60)).hub("hub-a").eg(),
            disconnected("twin", 1, &ago(60)).hub("hub-b").eg(),
        ],
    );
    let r = get(&cm, "/api/devices/twin");
    assert_eq!(r.status, 409, "{}", r.text());
    let mut hubs: Vec<String> = r.json()["hubs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    hubs.sort();
    assert_eq!(hubs, ["hub-a", "hub-b"]);
    assert_eq!(
        get_json(&cm, "/api/devices/twin?hub=hub-b")["state"],
        "pending"
    );
}

#[test]
fn ids_with_odd_characters_round_trip_through_paths_and_cursors() {
    let cm = Connmon::standalone(&[("CONNMON_SWEEP_INTERVAL", "1h")]);
    let odd = "a'%$*()b:=@!,.";
    post(
        &cm,
        vec![
            disconnected(odd, 1, &ago(30)).eg(),
            disconnected("zz", 1, &ago(30)).eg(),
        ],
    );
    let encoded = percent_encoding::utf8_percent_encode(odd, percent_encoding::NON_ALPHANUMERIC);
    let d = get_json(&cm, &format!("/api/devices/{encoded}"));
    assert_eq!(d["deviceId"], odd);
    let first = get_json(&cm, "/api/devices?limit=1");
    let next = first["next"].as_str().expect("a second page");
    let second = get_json(&cm, &format!("/api/devices?limit=1&after={next}"));
    let mut both = devices_of(&first);
    both.extend(devices_of(&second));
    both.sort();
    assert_eq!(both, [odd, "zz"]);
}

#[test]
fn the_api_key_is_required_and_enforced_in_standalone() {
    let cm = Connmon::standalone(&[
        ("CONNMON_API_KEY", API_KEY),
        ("CONNMON_WEBHOOK_KEY", WEBHOOK_KEY),
        ("CONNMON_SWEEP_INTERVAL", "1h"),
    ]);
    for path in [
        "/api/status",
        "/api/devices",
        "/api/devices/x",
        "/api/devices/x/modules/y",
        "/api/dashboard",
        "/metrics",
    ] {
        let none = get(&cm, path);
        assert_eq!(none.status, 401, "{path}: {}", none.text());
        assert!(none
            .header("www-authenticate")
            .unwrap_or("")
            .starts_with("Bearer"));
        let wrong = Request::get(path)
            .header("Authorization", "Bearer not-the-key-at-all-0000")
            .send(cm.port);
        assert_eq!(wrong.status, 401, "{path}");
        // The webhook's key opens the webhook, not the API.
        let webhook = Request::get(&format!("{path}?code={WEBHOOK_KEY}")).send(cm.port);
        assert_eq!(webhook.status, 401, "{path}");
        let bearer = Request::get(path)
            .header("Authorization", &format!("Bearer {API_KEY}"))
            .send(cm.port);
        assert_ne!(bearer.status, 401, "{path}: {}", bearer.text());
        assert_ne!(bearer.status, 403, "{path}");
        let code = Request::get(&format!("{path}?code={API_KEY}")).send(cm.port);
        assert_ne!(code.status, 401, "{path}: {}", code.text());
    }
    // And the API key does not open the webhook.
    let r = Request::post(&format!("/api/events?code={API_KEY}"))
        .header("Content-Type", "application/json")
        .body(
            json!([connected("k", 1, &ago(5)).eg()])
                .to_string()
                .into_bytes(),
        )
        .send(cm.port);
    assert_eq!(r.status, 401);
    let logs = cm.logs();
    assert!(
        !logs.contains(API_KEY) && !logs.contains(&API_KEY[..12]),
        "{logs}"
    );
    assert!(
        logs.contains("CONNMON_API_KEY"),
        "refusals are counted in the log: {logs}"
    );
}

#[test]
fn without_a_key_the_api_is_off_beyond_loopback() {
    let cm = Connmon::standalone(&[
        ("CONNMON_LISTEN", "0.0.0.0:{port}"),
        ("CONNMON_SWEEP_INTERVAL", "1h"),
    ]);
    for path in ["/api/status", "/api/devices", "/api/dashboard", "/metrics"] {
        let msg = error_message(&get(&cm, path), 403);
        assert!(msg.contains("CONNMON_API_KEY"), "{path}: {msg}");
    }
    // The webhook still works.
    post(&cm, vec![connected("w", 1, &ago(5)).eg()]);
    assert!(cm.stdout().contains("CONNMON_API_KEY"), "said at start-up");
}

#[test]
fn functions_mode_serves_the_forwarded_requests() {
    let cm = Connmon::functions(&[("CONNMON_GRACE_PERIOD", "5m")]);
    cm.event(&disconnected("fx", 7, &ago(3600)));
    cm.event(&connected("fy", 1, &ago(60)));
    cm.sweep();
    // The host forwards the request as it came, function key included (it checked it already).
    let r = Request::get("/api/status?code=host-checked-this")
        .header("x-functions-key", "host-checked-this-too")
        .send(cm.port);
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.json();
    assert_eq!(
        (s["tracked"].as_u64(), s["alerted"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    let d = get_json(&cm, "/api/devices/fx?code=k");
    assert_eq!(d["alerts"][0]["kind"], "alert:disconnected");
    let page = get_json(&cm, "/api/devices?state=connected&code=k");
    assert_eq!(devices_of(&page), ["fy"]);
}

/// Parses Prometheus text with the Prometheus project's Python client (installed by
/// `scripts/test`); returns `[{name, type, samples: [{name, labels, value}]}]`.
fn prometheus_parse(text: &str) -> Value {
    let python = std::env::var("CONNMON_TEST_PROMETHEUS_PYTHON").expect(
        "CONNMON_TEST_PROMETHEUS_PYTHON is not set: run the tests with scripts/test, which installs prometheus_client",
    );
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
"#;
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the Prometheus parser");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The value of the sample `name` with exactly these labels.
fn sample(families: &Value, name: &str, labels: Value) -> Option<f64> {
    families
        .as_array()?
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .find(|s| s["name"] == name && s["labels"] == labels)
        .map(|s| s["value"].as_f64().unwrap())
}

fn family_type(families: &Value, name: &str) -> Option<String> {
    families
        .as_array()?
        .iter()
        .find(|f| f["name"] == name)
        .map(|f| f["type"].as_str().unwrap().to_string())
}

#[test]
#[ignore = "needs prometheus_client: run scripts/test"]
fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let receiver = Receiver::start(vec![Answer::Status(500)]);
    let hook = receiver.url("/hook");
    let cm = Connmon::standalone(&[
        ("CONNMON_GRACE_PERIOD", "5m"),
        ("CONNMON_SWEEP_INTERVAL", "1h"),
        ("CONNMON_ALERT_WEBHOOK_URL", &hook),
        // One failed attempt to count, not recovered by a quick retry 1 s later.
        ("CONNMON_QUICK_RETRY_FOR", "0s"),
    ]);
    // A hub name a forged event could carry: quotes and backslashes must be escaped in labels.
    let odd_hub = "evil\"hub\\x";
    post(
        &cm,
        vec![
            disconnected("m1", 5, &ago(3600)).eg(),
            disconnected("m1", 5, &ago(3600)).eg(), // redelivery
            disconnected("m1", 4, &ago(3700)).eg(), // older: stale
            connected("m2", 1, &ago(60)).eg(),
            connected("m3", 1, &ago(60)).hub(odd_hub).eg(),
            json!({"id": "x", "eventType": "Microsoft.Devices.DeviceTelemetry", "subject": "devices/m1",
                   "eventTime": ago(1), "data": {}, "dataVersion": "1"}),
            json!({"id": "y", "eventType": "Microsoft.Devices.DeviceConnected", "subject": "devices/",
                   "eventTime": ago(1), "data": {"hubName": "h"}, "dataVersion": "1"}),
        ],
    );
    cm.sweep(); // raises `disconnected` for m1; the receiver answers 500
    cm.sweep(); // the alert backs off: not tried again yet, still queued
    let text = {
        let r = get(&cm, "/metrics");
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        r.text()
    };
    let f = prometheus_parse(&text);
    let ev = |t: &str, o: &str| {
        sample(&f, "connmon_events_total", json!({"type": t, "outcome": o})).unwrap_or(0.0)
    };
    assert_eq!(ev("disconnected", "opened"), 1.0, "{text}");
    assert_eq!(ev("disconnected", "duplicate"), 1.0, "{text}");
    assert_eq!(ev("disconnected", "stale"), 1.0, "{text}");
    assert_eq!(ev("connected", "connected"), 2.0, "{text}");
    assert_eq!(
        sample(&f, "connmon_events_ignored_total", json!({})),
        Some(1.0)
    );
    assert_eq!(
        sample(&f, "connmon_events_rejected_total", json!({})),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &f,
            "connmon_alerts_raised_total",
            json!({"kind": "disconnected"})
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &f,
            "connmon_delivery_failures_total",
            json!({"channel": "webhook"})
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        family_type(&f, "connmon_events").as_deref(),
        Some("counter")
    );
    assert_eq!(
        family_type(&f, "connmon_sweep_duration_seconds").as_deref(),
        Some("histogram")
    );
    assert_eq!(
        sample(&f, "connmon_sweep_duration_seconds_count", json!({})),
        Some(3.0),
        "the start-up sweep and two more: {text}"
    );
    assert_eq!(
        sample(&f, "connmon_identities", json!({"state": "tracked"})),
        Some(3.0)
    );
    assert_eq!(
        sample(&f, "connmon_identities", json!({"state": "alerted"})),
        Some(1.0)
    );
    assert_eq!(sample(&f, "connmon_outbox_queued", json!({})), Some(1.0));
    let odd = sample(
        &f,
        "connmon_hub_last_event_timestamp_seconds",
        json!({"hub": odd_hub}),
    )
    .expect("the odd hub, unescaped by the parser");
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    assert!((now - odd).abs() < 120.0, "{odd}");
    assert!(sample(&f, "connmon_last_sweep_timestamp_seconds", json!({})).unwrap() > now - 120.0);
    assert!(!text.contains(&hook), "no secret in metrics");
}

#[test]
fn functions_mode_writes_metrics_as_log_lines() {
    let cm = Connmon::functions(&[("CONNMON_GRACE_PERIOD", "5m")]);
    cm.event(&disconnected("lm", 3, &ago(3600)));
    cm.event(&disconnected("lm", 3, &ago(3600)));
    cm.sweep();
    let line = eventually("a connmon_metrics line", Duration::from_secs(5), || {
        cm.stdout()
            .lines()
            .rev()
            .find_map(|l| l.split_once("connmon_metrics ").map(|(_, j)| j.to_string()))
    });
    let v: Value = serde_json::from_str(&line).expect("JSON after connmon_metrics");
    let metrics = v["metrics"].as_array().unwrap();
    let value = |name: &str, labels: Value| {
        metrics
            .iter()
            .find(|m| m["name"] == name && m["labels"] == labels)
            .map(|m| m["value"].as_f64().unwrap())
    };
    assert_eq!(
        value(
            "connmon_events_total",
            json!({"type": "disconnected", "outcome": "opened"})
        ),
        Some(1.0),
        "{v}"
    );
    assert_eq!(
        value(
            "connmon_events_total",
            json!({"type": "disconnected", "outcome": "duplicate"})
        ),
        Some(1.0),
        "{v}"
    );
    assert_eq!(
        value(
            "connmon_alerts_raised_total",
            json!({"kind": "disconnected"})
        ),
        Some(1.0),
        "{v}"
    );
    assert_eq!(value("connmon_sweeps", json!({})), Some(1.0), "{v}");
    // Increases only: the next sweep reports the sweep, not the events again.
    cm.sweep();
    let lines: Vec<String> = cm
        .stdout()
        .lines()
        .filter_map(|l| l.split_once("connmon_metrics ").map(|(_, j)| j.to_string()))
        .collect();
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(!last.to_string().contains("connmon_events_total"), "{last}");
}

#[test]
fn a_quiet_hub_alerts_once_and_once_more_when_events_return() {
    let receiver = Receiver::start(vec![]);
    let cm = Connmon::standalone(&[
        ("CONNMON_HUB_QUIET_AFTER", "10s"),
        ("CONNMON_SWEEP_INTERVAL", "1s"),
        ("CONNMON_ALERT_WEBHOOK_URL", &receiver.url("/hook")),
    ]);
    post(
        &cm,
        vec![connected("alive", 1, &ago(1)).hub("quiet-hub").eg()],
    );
    let got = receiver.wait_delivered(1, Duration::from_secs(30));
    assert_eq!(got[0]["kind"], "hub_quiet", "{got:?}");
    assert_eq!(got[0]["hub"], "quiet-hub");
    assert!(got[0]["downtimeSeconds"].as_i64().unwrap() >= 10, "{got:?}");
    let s = get_json(&cm, "/api/status");
    assert!(s["hubs"][0]["quietSince"].is_string(), "{s}");
    // Several sweeps later: still one.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(receiver.delivered().len(), 1, "{:?}", receiver.delivered());
    post(
        &cm,
        vec![connected("alive", 2, &ago(0)).hub("quiet-hub").eg()],
    );
    let got = receiver.wait_delivered(2, Duration::from_secs(30));
    assert_eq!(got[1]["kind"], "hub_resumed", "{got:?}");
    assert_eq!(got[1]["dedupKey"], got[0]["dedupKey"], "one pair");
    assert!(got[1]["reconnectedAt"].is_string());
    let s = get_json(&cm, "/api/status");
    assert_eq!(s["hubs"][0]["quietSince"], Value::Null, "{s}");
    assert!(
        cm.stderr().contains("hub_quiet hub=\"quiet-hub\""),
        "{}",
        cm.stderr()
    );
}

#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn two_functions_instances_on_table_storage_answer_for_each_other() {
    let table = crate::table_client::unique_table_name("status");
    let conn = crate::table_client::azurite_connection_string();
    let env = [
        ("CONNMON_GRACE_PERIOD", "5m"),
        ("CONNMON_STORE", "table"),
        ("CONNMON_TABLE_CONNECTION", conn.as_str()),
        ("CONNMON_TABLE_NAME", table.as_str()),
        ("CONNMON_HUB_QUIET_AFTER", "30m"),
    ];
    let a = Connmon::functions(&env);
    let b = Connmon::functions(&env);
    // Events reach instance A; the timer runs on A; B answers the questions.
    a.event(&disconnected("t-gone", 3, &ago(3600)));
    a.event(&connected("t-ok", 1, &ago(60)).module("m"));
    a.sweep();
    let s = get_json(&b, "/api/status");
    assert_eq!(
        (s["tracked"].as_u64(), s["alerted"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    assert_eq!(s["hubs"][0]["hub"], HUB.to_lowercase(), "{s}");
    assert!(s["lastSweepAt"].is_string(), "the sweep on A: {s}");
    assert_eq!(s["hubQuietAfterSeconds"], 1800);
    let d = get_json(&b, "/api/devices/t-gone");
    assert_eq!(d["alerts"][0]["kind"], "alert:disconnected", "{d}");
    let m = get_json(&b, "/api/devices/t-ok/modules/m");
    assert_eq!(m["state"], "connected");
    let all = get_json(&b, "/api/devices?limit=1");
    let next = all["next"].as_str().expect("two identities, pages of one");
    let rest = get_json(&b, &format!("/api/devices?limit=1&after={next}"));
    let mut both = devices_of(&all);
    both.extend(devices_of(&rest));
    both.sort();
    assert_eq!(both, ["t-gone", "t-ok/m"]);
}

#[test]
fn junk_paths_and_queries_get_4xx_never_5xx() {
    let cm = Connmon::standalone(&[("CONNMON_SWEEP_INTERVAL", "1h")]);
    post(&cm, vec![disconnected("j", 1, &ago(30)).eg()]);
    let pieces = [
        "state=",
        "state=offline",
        "hub=",
        "hub=%00",
        "hub=%FF%FE",
        "limit=-1",
        "limit=99999999999999999999",
        "after=",
        "after=%2F%2F",
        "after=AAAA",
        "after=aHViAGRldgA",
        "x=1",
        "code=",
        "state=offline&state=pending",
        "%",
        "&&&",
        "=",
        "limit=1&after=bm90IGEgY3Vyc29y",
    ];
    let paths = [
        "/api/devices",
        "/api/devices/",
        "/api/devices/%00",
        "/api/devices/%C3%28",
        "/api/devices/j/modules/",
        "/api/devices/j/modules/%0A",
        "/api/status",
        "/api/dashboard",
        "/metrics",
        "/api/devices/..%2F..",
    ];
    let mut rng = Rng(0x5eed_0009);
    for _ in 0..300 {
        let path = paths[(rng.next() % paths.len() as u64) as usize];
        let n = rng.next() % 3;
        let query: Vec<&str> = (0..n)
            .map(|_| pieces[(rng.next() % pieces.len() as u64) as usize])
            .collect();
        let url = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", query.join("&"))
        };
        let r = get(&cm, &url);
        assert!(r.status < 500, "{url}: {} {}", r.status, r.text());
    }
    assert_eq!(get(&cm, "/api/status").status, 200, "still serving");
}
