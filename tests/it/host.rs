//! Functions mode, driven the way the Functions host drives a custom handler (host-protocol.md):
//! readiness pings, invocation envelopes in every encoding, chunked bodies, captured timer payloads,
//! the answers the host requires, status codes, and the alerting story end to end.

use crate::support::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Grace short enough that an event ten minutes old is due at once.
const SHORT: &[(&str, &str)] = &[("CONNMON_GRACE_PERIOD", "2s")];
/// Grace long enough that nothing sent "now" becomes due during a test.
const LONG: &[(&str, &str)] = &[("CONNMON_GRACE_PERIOD", "5m")];

fn counter(c: &Value, name: &str) -> u64 {
    c[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}: {c}"))
}

#[test]
fn answers_the_readiness_ping_with_counters() {
    let started = Instant::now();
    let cm = Connmon::functions(LONG); // returns once GET / answered, polled every 25 ms
    assert!(started.elapsed() < Duration::from_secs(10));

    let resp = Request::get("/").host_headers().send(cm.port);
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let body = resp.json();
    assert_eq!(body["status"], "ok");
    // Every counter, all zero.
    let expected: BTreeMap<String, Value> = [
        "eventsApplied",
        "duplicates",
        "stale",
        "ignored",
        "outOfScope",
        "rejected",
        "alertsRaised",
        "alertsDelivered",
        "storeFailures",
    ]
    .into_iter()
    .map(|k| (k.to_string(), json!(0)))
    .collect();
    let got: BTreeMap<String, Value> = serde_json::from_value(body["counters"].clone()).unwrap();
    assert_eq!(got, expected);

    let resp = Request::get("/no/such/route").send(cm.port);
    assert_eq!(resp.status, 404);
    error_message(&resp, 404);
    assert!(
        cm.stdout().contains("Functions custom handler"),
        "{}",
        cm.stdout()
    );
}

#[test]
fn every_encoding_of_the_event_is_applied() {
    let cm = Connmon::functions(LONG);
    let t = ago(30);
    let ev = |d: &str| disconnected(d, 1, &t);
    let cases: Vec<(&str, Value, usize)> = vec![
        ("object", encode(&ev("enc-object").eg(), Enc::Object), 1),
        ("string", encode(&ev("enc-string").eg(), Enc::Str), 1),
        (
            "string in string",
            encode(&ev("enc-strinstr").eg(), Enc::StrInStr),
            1,
        ),
        (
            "array of objects",
            json!([ev("enc-array-1").eg(), ev("enc-array-2").eg()]),
            2,
        ),
        (
            "array of strings in strings",
            json!([
                encode(&ev("enc-array-3").eg(), Enc::StrInStr),
                encode(&ev("enc-array-4").eg(), Enc::Str)
            ]),
            2,
        ),
        (
            "string holding an array",
            encode(&json!([ev("enc-array-5").eg()]), Enc::StrInStr),
            1,
        ),
        (
            "cloudevent object",
            encode(&ev("enc-ce-1").ce(), Enc::Object),
            1,
        ),
        (
            "cloudevent string in string",
            encode(&ev("enc-ce-2").ce(), Enc::StrInStr),
            1,
        ),
        (
            "cloudevents array",
            json!([ev("enc-ce-3").ce(), ev("enc-ce-4").ce()]),
            2,
        ),
    ];
    let mut total = 0;
    for (name, value, n) in cases {
        let logs = cm.invocation(invocation(value));
        assert!(
            logs[0].starts_with(&format!("connmon: {n} event(s) applied [opened={n}]")),
            "{name}: {logs:?}"
        );
        total += n as u64;
    }
    let c = cm.counters();
    assert_eq!(counter(&c, "eventsApplied"), total, "{c}");
    assert_eq!(counter(&c, "rejected"), 0, "{c}");
}

#[test]
fn binding_name_and_top_level_keys_are_tolerated() {
    let cm = Connmon::functions(LONG);
    // The only binding, whatever its name; top-level keys in another case; no Metadata at all.
    let body = json!({"data": {"evt": encode(&disconnected("other-binding", 1, &ago(5)).eg(), Enc::StrInStr)}});
    let logs = cm.invocation(body);
    assert!(
        logs[0].starts_with("connmon: 1 event(s) applied"),
        "{logs:?}"
    );
}

#[test]
fn chunked_and_content_length_bodies_are_read_whole() {
    let cm = Connmon::functions(LONG);
    let body = |d: &str| {
        invocation(encode(&disconnected(d, 7, &ago(1)).eg(), Enc::StrInStr))
            .to_string()
            .into_bytes()
    };
    for (i, chunks) in [None, Some(1), Some(2), Some(7), Some(300)]
        .into_iter()
        .enumerate()
    {
        let mut req = Request::post("/ConnectionEvent")
            .host_headers()
            .body(body(&format!("chunks-{i}")));
        if let Some(n) = chunks {
            req = req.chunked(n);
        }
        let logs = host_logs(&req.send(cm.port));
        assert!(
            logs[0].starts_with("connmon: 1 event(s) applied [opened=1]"),
            "{chunks:?}: {logs:?}"
        );
    }
    assert_eq!(counter(&cm.counters(), "eventsApplied"), 5);
}

#[test]
fn captured_timer_payloads_and_the_manual_run_body_sweep() {
    let cm = Connmon::functions(LONG);
    let bodies: Vec<Vec<u8>> = vec![
        fixture("host/timer-monitor-on.captured.json"),
        fixture("host/timer-monitor-off.captured.json"),
        br#"{"input": ""}"#.to_vec(),
        Vec::new(),
    ];
    for body in bodies {
        let resp = Request::post("/DisconnectTimer")
            .host_headers()
            .body(body.clone())
            .chunked(2)
            .send(cm.port);
        let s = Sweep::parse(host_logs(&resp));
        assert_eq!((s.new_alerts, s.delivered, s.queued), (0, 0, 0), "{s:?}");
        assert!(s.logs[0].ends_with("(grace 300s)"), "{s:?}");
    }
    let resp = Request::post("/DisconnectTimer")
        .host_headers()
        .body(b"not json".to_vec())
        .send(cm.port);
    error_message(&resp, 400);
}

#[test]
fn the_derived_event_grid_invocation_is_applied_once() {
    let cm = Connmon::functions(LONG);
    let body = fixture("host/eventgrid-invocation.derived.json");
    let post = || {
        host_logs(
            &Request::post("/ConnectionEvent")
                .host_headers()
                .body(body.clone())
                .chunked(4)
                .send(cm.port),
        )
    };
    let first = post();
    assert_eq!(
        first[0],
        "connmon: 1 event(s) applied [connected=1], 0 ignored, 0 out of scope, 0 rejected"
    );
    let again = post(); // Event Grid redelivers: same sequence number
    assert_eq!(
        again[0],
        "connmon: 1 event(s) applied [duplicate=1], 0 ignored, 0 out of scope, 0 rejected"
    );
    let c = cm.counters();
    assert_eq!(
        (counter(&c, "eventsApplied"), counter(&c, "duplicates")),
        (1, 1),
        "{c}"
    );
}

#[test]
fn bodies_that_are_not_json_or_not_an_envelope_get_400() {
    let mut cm = Connmon::functions(LONG);
    let bad: Vec<(&str, &[u8])> = vec![
        ("not json", b"this is not json"),
        ("empty", b""),
        ("truncated", br#"{"Data": {"eventGridEvent": "#),
        ("array", b"[1, 2]"),
        ("no Data", br#"{"Metadata": {}}"#),
        ("Data not an object", br#"{"Data": "x"}"#),
        ("no binding", br#"{"Data": {}}"#),
        ("number event", br#"{"Data": {"eventGridEvent": 42}}"#),
        (
            "string that is not JSON",
            br#"{"Data": {"eventGridEvent": "not json"}}"#,
        ),
    ];
    for (name, body) in bad {
        let resp = Request::post("/ConnectionEvent")
            .host_headers()
            .body(body.to_vec())
            .send(cm.port);
        assert_eq!(resp.status, 400, "{name}: {}", resp.text());
        error_message(&resp, 400);
    }
    assert!(cm.is_running());
}

#[test]
fn bodies_over_one_mebibyte_get_413() {
    let cm = Connmon::functions(LONG);
    const MIB: usize = 1024 * 1024;
    // A valid envelope padded with whitespace to an exact size.
    let padded = |size: usize| {
        let mut b = invocation(encode(&disconnected("big", 1, &ago(1)).eg(), Enc::StrInStr))
            .to_string()
            .into_bytes();
        b.resize(size, b' ');
        b
    };

    let resp = Request::post("/ConnectionEvent")
        .host_headers()
        .body(padded(MIB + 1))
        .chunked(40)
        .send(cm.port);
    let msg = error_message(&resp, 413);
    assert!(msg.contains("larger than"), "{msg}");

    let resp = Request::post("/ConnectionEvent")
        .host_headers()
        .body(padded(2 * MIB))
        .send(cm.port);
    error_message(&resp, 413);

    let resp = Request::post("/api/events")
        .body(vec![b' '; MIB + 1])
        .chunked(3)
        .send(cm.port);
    error_message(&resp, 413);

    // Exactly 1 MiB is still accepted.
    let logs = host_logs(
        &Request::post("/ConnectionEvent")
            .host_headers()
            .body(padded(MIB))
            .chunked(16)
            .send(cm.port),
    );
    assert!(
        logs[0].starts_with("connmon: 1 event(s) applied"),
        "{logs:?}"
    );
}

#[test]
fn bad_events_inside_an_envelope_are_acknowledged_and_counted() {
    let cm = Connmon::functions(LONG);
    let mut unknown = disconnected("x", 1, &ago(1)).eg();
    unknown["eventType"] = json!("Contoso.Items.ItemShipped");
    let mut bad_seq = disconnected("bad-seq", 1, &ago(1)).eg();
    bad_seq["data"]["deviceConnectionStateEventInfo"]["sequenceNumber"] = json!("12345");
    let mut no_device = disconnected("no-device", 1, &ago(1)).eg();
    no_device["data"]
        .as_object_mut()
        .unwrap()
        .remove("deviceId");

    for (name, ev) in [
        ("unknown type", unknown),
        ("bad sequence number", bad_seq),
        ("missing deviceId", no_device),
    ] {
        let logs = cm.invocation(invocation(encode(&ev, Enc::StrInStr)));
        assert_eq!(
            logs[0], "connmon: 0 event(s) applied [], 0 ignored, 0 out of scope, 1 rejected",
            "{name}"
        );
        assert!(logs[1].starts_with("rejected: "), "{name}: {logs:?}");
    }
    // One bad event does not spoil the good one next to it.
    let mut bad = disconnected("x", 1, &ago(1)).eg();
    bad["eventType"] = json!("Contoso.Items.ItemShipped");
    let logs = cm.invocation(invocation(json!([
        bad,
        disconnected("good", 1, &ago(1)).eg()
    ])));
    assert_eq!(
        logs[0],
        "connmon: 1 event(s) applied [opened=1], 0 ignored, 0 out of scope, 1 rejected"
    );
    let c = cm.counters();
    assert_eq!(counter(&c, "rejected"), 4, "{c}");
    assert_eq!(counter(&c, "eventsApplied"), 1, "{c}");
    assert!(
        cm.stderr().contains("unknown event type"),
        "{}",
        cm.stderr()
    );
}

#[test]
fn disconnect_alerts_after_grace_and_connect_sends_one_reconnected() {
    let cm = Connmon::functions(SHORT);
    let logs = cm.event(&disconnected("story-1", 10, &ago(600)));
    assert_eq!(
        logs[0],
        "connmon: 1 event(s) applied [opened=1], 0 ignored, 0 out of scope, 0 rejected"
    );

    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 1, 0), "{s:?}");
    assert!(s.logs[0].ends_with("(grace 2s)"), "{s:?}");
    let lines = s.alert_lines();
    assert_eq!(lines.len(), 1, "{s:?}");
    assert!(
        lines[0].starts_with("ALERT disconnected hub=\"connmon-test-hub\" device=\"story-1\""),
        "{lines:?}"
    );

    // The outage alerts exactly once.
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered), (0, 0), "{s:?}");

    let logs = cm.event(&connected("story-1", 11, &ago(60)));
    assert_eq!(
        logs[0],
        "connmon: 1 event(s) applied [reconnected=1], 0 ignored, 0 out of scope, 0 rejected"
    );
    assert!(
        logs[1].starts_with("ALERT reconnected hub=\"connmon-test-hub\" device=\"story-1\""),
        "{logs:?}"
    );
    assert!(logs[1].contains("after 540s offline"), "{logs:?}");
    // Delivered (to the log) at the next sweep.
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (0, 1, 0), "{s:?}");
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered), (0, 0), "{s:?}");

    let c = cm.counters();
    assert_eq!(counter(&c, "alertsRaised"), 2, "{c}");
    assert_eq!(counter(&c, "alertsDelivered"), 2, "{c}");
    assert!(
        cm.stderr().contains("ALERT disconnected"),
        "{}",
        cm.stderr()
    );
}

#[test]
fn a_fresh_disconnect_does_not_alert_yet() {
    let cm = Connmon::functions(LONG);
    cm.event(&disconnected("fresh", 1, &ago(0)));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (0, 0, 0), "{s:?}");
}

#[test]
fn a_token_renewal_reconnect_within_grace_is_silent() {
    let cm = Connmon::functions(LONG);
    // SAS renewal: disconnected 30 s ago, back 20 s ago.
    cm.event(&disconnected("renewing", 100, &ago(30)));
    let logs = cm.event(&connected("renewing", 101, &ago(20)));
    assert_eq!(
        logs[0],
        "connmon: 1 event(s) applied [closed_silently=1], 0 ignored, 0 out of scope, 0 rejected"
    );
    // The control: a device that really went away 10 minutes ago.
    cm.event(&disconnected("gone", 100, &ago(600)));
    let s = cm.sweep();
    assert_eq!(s.new_alerts, 1, "{s:?}");
    let lines = s.alert_lines();
    assert!(lines[0].contains("device=\"gone\""), "{lines:?}");
    assert!(!s.logs.iter().any(|l| l.contains("renewing")), "{s:?}");
}

#[test]
fn a_connect_delivered_before_an_older_disconnect_opens_no_outage() {
    let cm = Connmon::functions(SHORT);
    let logs = cm.event(&connected("reordered", 6, &ago(540)));
    assert!(logs[0].contains("[connected=1]"), "{logs:?}");
    let logs = cm.event(&disconnected("reordered", 5, &ago(600)));
    assert!(logs[0].contains("[stale=1]"), "{logs:?}");
    let s = cm.sweep();
    assert_eq!(s.new_alerts, 0, "{s:?}");
    assert_eq!(counter(&cm.counters(), "stale"), 1);

    // Numeric, not textual, order: 0x…0A > 0x…09, and lower-case hex is the same number.
    let mut ev = disconnected("reordered", 0x0a, &ago(500)).eg();
    ev["data"]["deviceConnectionStateEventInfo"]["sequenceNumber"] =
        json!(seq(0x0a).to_lowercase());
    let logs = cm.invocation(invocation(encode(&ev, Enc::StrInStr)));
    assert!(logs[0].contains("[opened=1]"), "{logs:?}");
    let logs = cm.event(&connected("reordered", 9, &ago(490)));
    assert!(logs[0].contains("[stale=1]"), "{logs:?}");
    assert_eq!(cm.sweep().new_alerts, 1);
}

#[test]
fn duplicate_deliveries_raise_one_alert() {
    let cm = Connmon::functions(SHORT);
    let ev = disconnected("dup", 42, &ago(600));
    cm.event(&ev);
    cm.invocation(invocation(encode(&ev.eg(), Enc::Object)));
    cm.invocation(invocation(json!([ev.eg(), ev.eg()])));
    let c = cm.counters();
    assert_eq!(
        (counter(&c, "eventsApplied"), counter(&c, "duplicates")),
        (1, 3),
        "{c}"
    );
    assert_eq!(cm.sweep().new_alerts, 1);
    cm.event(&ev); // redelivered after the alert
    assert_eq!(cm.sweep().new_alerts, 0);
    assert_eq!(counter(&cm.counters(), "alertsRaised"), 1);
}

fn assert_refuses(env: &[(&str, &str)], setting: &str, value: &str) {
    let exit = run_to_exit(env);
    assert_eq!(exit.code, Some(2), "{exit:?}");
    let lines: Vec<&str> = exit.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {exit:?}");
    assert!(lines[0].contains(setting), "{exit:?}");
    assert!(lines[0].contains(value), "the bad value is shown: {exit:?}");
}

#[test]
fn a_bad_grace_period_stops_start_up_with_exit_code_2() {
    let port = free_port().to_string();
    for bad in ["5 minutes", "-5m", "5x", "1h5h", "25:00:00"] {
        assert_refuses(
            &[
                ("FUNCTIONS_CUSTOMHANDLER_PORT", &port),
                ("CONNMON_GRACE_PERIOD", bad),
            ],
            "CONNMON_GRACE_PERIOD",
            bad,
        );
    }
}

#[test]
fn a_bad_functions_port_stops_start_up_with_exit_code_2() {
    for bad in ["70000", "http", "0", "-1"] {
        assert_refuses(
            &[
                ("FUNCTIONS_CUSTOMHANDLER_PORT", bad),
                ("CONNMON_GRACE_PERIOD", "5m"),
            ],
            "FUNCTIONS_CUSTOMHANDLER_PORT",
            bad,
        );
    }
}

/// 50 devices, 4 events each, with a fixed expected outcome per device. Returns the events.
fn fleet() -> Vec<Ev> {
    let base = 3_600; // all events are an hour or less old
    let mut evs = Vec::new();
    for d in 0..50 {
        let dev = format!("fleet-{d:02}");
        let at = |k: i64| ago(base - 60 * k - d);
        evs.push(disconnected(&dev, 1, &at(1)));
        evs.push(connected(&dev, 2, &at(2)));
        evs.push(disconnected(&dev, 3, &at(3)));
        if d % 2 == 0 {
            evs.push(connected(&dev, 4, &at(4))); // back: no alert
        } else {
            evs.push(disconnected(&dev, 3, &at(3))); // a duplicate: still offline, alerts
        }
    }
    evs
}

/// Every delivered `disconnected` alert, keyed by device, without the sweep-time fields.
fn alerts_by_device(r: &Receiver) -> BTreeMap<String, Value> {
    r.delivered()
        .into_iter()
        .filter(|a| a["kind"] == "disconnected")
        .map(|mut a| {
            let o = a.as_object_mut().unwrap();
            o.remove("detectedAt");
            o.remove("downtimeSeconds");
            (o["deviceId"].as_str().unwrap().to_string(), a)
        })
        .collect()
}

#[test]
fn concurrent_invocations_give_the_sequential_result() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("shuffle seed {seed}");
    let evs = fleet();
    assert_eq!(evs.len(), 200);

    // Sequential, in sequence-number order.
    let seq_rx = Receiver::start(vec![]);
    let url = seq_rx.url("/seq");
    let sequential = Connmon::functions(&[
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_ALERT_WEBHOOK_URL", &url),
    ]);
    for ev in &evs {
        sequential.event(ev);
    }
    let s = sequential.sweep();
    assert_eq!((s.new_alerts, s.delivered), (25, 25), "{s:?}");

    // Concurrent, shuffled, one invocation per event, mixed encodings, 16 threads.
    let con_rx = Receiver::start(vec![]);
    let url = con_rx.url("/con");
    let concurrent = Connmon::functions(&[
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_ALERT_WEBHOOK_URL", &url),
    ]);
    let mut shuffled = evs.clone();
    Rng(seed).shuffle(&mut shuffled);
    let port = concurrent.port;
    std::thread::scope(|scope| {
        for (t, part) in shuffled.chunks(200 / 16 + 1).enumerate() {
            scope.spawn(move || {
                for (i, ev) in part.iter().enumerate() {
                    let value = match (t + i) % 3 {
                        0 => encode(&ev.eg(), Enc::StrInStr),
                        1 => encode(&ev.eg(), Enc::Object),
                        _ => encode(&ev.ce(), Enc::Str),
                    };
                    let resp = Request::post("/ConnectionEvent")
                        .host_headers()
                        .body(invocation(value).to_string().into_bytes())
                        .chunked(2)
                        .send(port);
                    host_logs(&resp);
                }
            });
        }
    });
    let c = concurrent.counters();
    let seen = counter(&c, "eventsApplied") + counter(&c, "duplicates") + counter(&c, "stale");
    assert_eq!(seen, 200, "every event accounted for: {c}");
    let s = concurrent.sweep();
    assert_eq!((s.new_alerts, s.delivered), (25, 25), "seed {seed}: {s:?}");

    let expected = alerts_by_device(&seq_rx);
    let got = alerts_by_device(&con_rx);
    assert_eq!(expected.len(), 25);
    let odd: Vec<String> = (0..50)
        .filter(|d| d % 2 == 1)
        .map(|d| format!("fleet-{d:02}"))
        .collect();
    assert_eq!(expected.keys().cloned().collect::<Vec<_>>(), odd);
    // Same devices, same outage start (the seq-3 disconnect), same dedupKey across instances.
    assert_eq!(got, expected, "seed {seed}");
}

#[test]
fn a_store_failure_answers_503_and_acknowledges_nothing() {
    let cm = Connmon::functions(SHORT);
    let ev = disconnected("locked-out", 1, &ago(600));
    // Another writer holds the SQLite write lock longer than connmon's 5 s busy timeout.
    let mut blocker = rusqlite::Connection::open(cm.db_path()).expect("open the store");
    let tx = blocker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .expect("take the write lock");
    let body = invocation(encode(&ev.eg(), Enc::StrInStr));
    let timer = fixture_json("host/timer-monitor-on.captured.json");
    let (event_resp, timer_resp) = std::thread::scope(|s| {
        let e = s.spawn(|| cm.invoke("ConnectionEvent", &body));
        let t = s.spawn(|| cm.invoke("DisconnectTimer", &timer));
        (e.join().unwrap(), t.join().unwrap())
    });
    drop(tx);
    drop(blocker);
    let msg = error_message(&event_resp, 503);
    assert!(msg.contains("store"), "{msg}");
    error_message(&timer_resp, 503);
    let c = cm.counters();
    assert_eq!(counter(&c, "storeFailures"), 2, "{c}");
    assert_eq!(counter(&c, "eventsApplied"), 0, "{c}");

    // Nothing was applied: the host's redelivery opens the outage (not a duplicate), and alerts.
    let logs = cm.event(&ev);
    assert!(logs[0].contains("[opened=1]"), "{logs:?}");
    assert_eq!(cm.sweep().new_alerts, 1);
}

#[test]
fn a_newer_disconnect_within_grace_restarts_the_outage() {
    let cm = Connmon::functions(LONG);
    cm.event(&disconnected("flapping", 1, &ago(600)));
    // Briefly back (the connect was lost in IoT Hub's sampling), then gone again 10 s ago.
    let logs = cm.event(&disconnected("flapping", 3, &ago(10)));
    assert!(logs[0].contains("[restarted=1]"), "{logs:?}");
    assert_eq!(cm.sweep().new_alerts, 0, "the outage now starts 10 s ago");
}

#[test]
fn empty_null_and_absent_module_ids_are_one_device_level_identity() {
    let cm = Connmon::functions(LONG);
    let mut empty = disconnected("mod-check", 1, &ago(30)).eg();
    empty["data"]["moduleId"] = json!("");
    cm.invocation(invocation(encode(&empty, Enc::StrInStr)));
    let mut null = connected("mod-check", 2, &ago(20)).eg();
    null["data"]["moduleId"] = Value::Null;
    let logs = cm.invocation(invocation(encode(&null, Enc::StrInStr)));
    assert!(logs[0].contains("[closed_silently=1]"), "{logs:?}");
    let logs = cm.event(&disconnected("mod-check", 3, &ago(10)));
    assert!(logs[0].contains("[opened=1]"), "{logs:?}");
    // A module of the device is another identity, with its own state.
    let logs = cm.event(&connected("mod-check", 4, &ago(5)).module("$edgeAgent"));
    assert!(logs[0].contains("[connected=1]"), "{logs:?}");
    let logs = cm.event(&connected("mod-check", 4, &ago(5)).hub("CONNMON-TEST-HUB"));
    assert!(
        logs[0].contains("[closed_silently=1]"),
        "hub names fold case: {logs:?}"
    );
}

#[test]
fn invocations_on_a_kept_alive_connection_are_all_answered() {
    use std::io::{BufRead, BufReader, Read, Write};
    let cm = Connmon::functions(LONG);
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", cm.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    for i in 0..3u64 {
        let body = invocation(encode(
            &disconnected("keep-alive", i + 1, &ago(30)).eg(),
            Enc::StrInStr,
        ))
        .to_string();
        write!(
            conn,
            "POST /ConnectionEvent HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "request {i}: {status:?}"
        );
        let mut length = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        let expected = if i == 0 {
            "[opened=1]"
        } else {
            "[restarted=1]"
        };
        assert!(
            body["Logs"][0].as_str().unwrap().contains(expected),
            "{body}"
        );
    }
}

/// IoT Hub deletes a device's module identities with it, and publishes no event for them: an
/// IoT Edge device deleted while `$edgeHub` was offline must not page for `$edgeHub` afterwards.
#[test]
fn deleting_an_edge_device_also_forgets_its_modules() {
    let cm = Connmon::functions(SHORT);
    cm.event(&disconnected("edge-1", 1, &ago(600)).module("$edgeHub"));
    cm.event(&disconnected("edge-1", 2, &ago(600)).module("$edgeAgent"));
    let logs = cm.invocation(invocation(encode(
        &deleted("edge-1", &ago(300)),
        Enc::StrInStr,
    )));
    assert!(logs[0].contains("[deleted=1]"), "{logs:?}");
    let s = cm.sweep();
    assert_eq!(
        s.new_alerts,
        0,
        "alerts raised for the modules of a deleted device: {:?}",
        s.alert_lines()
    );
}

#[test]
fn a_replayed_backlog_is_named_in_the_sweep_summary() {
    // connmon was down for two hours: 30 outages that were due long ago and one fresh one.
    let cm = Connmon::functions(&[("CONNMON_GRACE_PERIOD", "5m")]);
    let events: Vec<Value> = (0..30)
        .map(|i| disconnected(&format!("old-{i:02}"), 1, &ago(7200)).eg())
        .chain([disconnected("fresh", 1, &ago(330)).eg()])
        .collect();
    assert_eq!(cm.api_events(&Value::Array(events), &[]).status, 200);
    let s = cm.sweep();
    assert_eq!(s.new_alerts, 31);
    assert!(
        s.logs[0].contains("30 of them from a replayed backlog"),
        "{:?}",
        s.logs[0]
    );
    // The next sweep has nothing to say about a backlog.
    assert!(!cm.sweep().logs[0].contains("backlog"));
}
