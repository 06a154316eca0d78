//! Hostile input and standalone exposure, against the real binary.
//! - the standalone webhook key (`CONNMON_WEBHOOK_KEY`): required on every route but `GET /`,
//!   accepted as the `code` query parameter or the `x-functions-key` header, never logged;
//! - the warning for a keyless non-loopback listener;
//! - slow clients: headers (10 s) and bodies (20 s) that never finish are cut off, and the server
//!   keeps answering everyone else meanwhile;
//! - deeply nested JSON, a flood of unknown event types (log lines bounded), over-long ids.

use crate::support::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const KEY: &str = "k3y-0123456789abcdef_XYZ.~";

fn event_body() -> Vec<u8> {
    fixture("events/eg-docs-device-connected.json")
}

fn post(path: &str, body: Vec<u8>) -> Request {
    Request::post(path)
        .header("Content-Type", "application/json")
        .body(body)
}

#[test]
fn the_webhook_key_guards_every_route_but_health() {
    let cm = Connmon::standalone(&[("CONNMON_WEBHOOK_KEY", KEY)]);
    let wrong = "wrong-key-0123456789abcdef";
    let timer = fixture("host/timer-monitor-on.captured.json");
    // Refused: no key, a wrong key either way, the key in another parameter, on every guarded route.
    for req in [
        post("/api/events", event_body()),
        post(&format!("/api/events?code={wrong}"), event_body()),
        post("/api/events", event_body()).header("x-functions-key", wrong),
        post(&format!("/api/events?key={KEY}"), event_body()),
        post(&format!("/api/events?codex={KEY}"), event_body()),
        Request::new("OPTIONS", "/api/events")
            .header("WebHook-Request-Origin", "eventgrid.azure.net"),
        post("/DisconnectTimer", timer.clone()),
        post("/ConnectionEvent", b"{}".to_vec()).host_headers(),
    ] {
        let resp = req.send(cm.port);
        let msg = error_message(&resp, 401);
        assert!(
            msg.contains("`code`") && msg.contains("x-functions-key"),
            "{msg}"
        );
    }
    // Accepted: the query parameter (also percent-encoded, also after other parameters), the header.
    let encoded: String = KEY.bytes().map(|b| format!("%{b:02X}")).collect();
    for req in [
        post(&format!("/api/events?code={KEY}"), event_body()),
        post(&format!("/api/events?x=1&code={encoded}"), event_body()),
        post("/api/events", event_body()).header("x-functions-key", KEY),
    ] {
        let resp = req.send(cm.port);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["accepted"], 1);
    }
    let resp = Request::new("OPTIONS", &format!("/api/events?code={KEY}"))
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .send(cm.port);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("WebHook-Allowed-Origin"),
        Some("eventgrid.azure.net")
    );
    assert_eq!(
        post(&format!("/DisconnectTimer?code={KEY}"), timer)
            .send(cm.port)
            .status,
        200
    );
    // Health stays open for probes.
    assert_eq!(Request::get("/").send(cm.port).status, 200);
    // The refusals are reported, once (not once per request), and no key is ever written out.
    let logs = cm.logs();
    assert_eq!(
        logs.matches("refused a request without the right CONNMON_WEBHOOK_KEY")
            .count(),
        1,
        "{logs}"
    );
    assert!(!logs.contains(KEY) && !logs.contains(wrong), "{logs}");
}

#[test]
fn a_bad_webhook_key_stops_start_up_without_echoing_it() {
    for bad in [
        "short-key",
        "has space in it 0123456789",
        "ünïcode-0123456789abcdef",
    ] {
        let exit = run_to_exit(&[("CONNMON_WEBHOOK_KEY", bad)]);
        assert_eq!(exit.code, Some(2), "{exit:?}");
        assert!(exit.stderr.contains("CONNMON_WEBHOOK_KEY"), "{exit:?}");
        assert!(exit.stderr.contains("openssl rand -hex 32"), "{exit:?}");
        assert!(!exit.stderr.contains(bad), "the value is echoed: {exit:?}");
    }
}

/// Starts connmon listening on `0.0.0.0:port` or `127.0.0.1:port` (standalone), waits until it
/// answers `GET /` through loopback, stops it, and returns what it logged (stdout and stderr).
fn start_up_log(all_interfaces: bool, key: Option<&str>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ip = if all_interfaces {
        "0.0.0.0"
    } else {
        "127.0.0.1"
    };
    let file = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_connmon"));
    cmd.current_dir(dir.path())
        .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
        .env_remove("CONNMON_WEBHOOK_KEY")
        .env("CONNMON_LISTEN", format!("{ip}:{port}"))
        .env("CONNMON_SQLITE_PATH", dir.path().join("c.db"))
        .stdout(file("out.log"))
        .stderr(file("err.log"));
    if let Some(k) = key {
        cmd.env("CONNMON_WEBHOOK_KEY", k);
    }
    let mut child = cmd.spawn().unwrap();
    eventually("connmon answers GET /", Duration::from_secs(10), || {
        Request::get("/").try_send(port).ok()
    });
    let _ = child.kill();
    let _ = child.wait();
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    read("out.log") + &read("err.log")
}

#[test]
fn a_keyless_listener_beyond_loopback_is_warned_about() {
    let warning = "without CONNMON_WEBHOOK_KEY";
    // Listening on all interfaces; the test only ever talks to it through loopback (here: not at all).
    let log = start_up_log(true, None);
    assert!(
        log.contains(warning) && log.contains("?code=<key>"),
        "{log}"
    );
    let log = start_up_log(true, Some(KEY));
    assert!(!log.contains(warning) && !log.contains(KEY), "{log}");
    let log = start_up_log(false, None);
    assert!(!log.contains(warning), "{log}");
}

/// Reads until the server closes the connection (or `limit` passes); returns what arrived and when
/// the connection ended.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    (got, started.elapsed())
}

#[test]
fn slow_clients_are_cut_off_and_do_not_block_others() {
    let cm = Connmon::standalone(&[]);
    // Slow-loris: many connections, each holding half a request head, plus idle ones.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", cm.port)).unwrap();
            if i % 2 == 0 {
                s.write_all(b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Ty")
                    .unwrap();
            }
            s
        })
        .collect();
    // A body that never finishes.
    let mut body_loris = TcpStream::connect(("127.0.0.1", cm.port)).unwrap();
    body_loris
        .write_all(b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{\"id\":")
        .unwrap();
    // Meanwhile everyone else is served at once.
    for _ in 0..5 {
        let t = Instant::now();
        let resp = post("/api/events", event_body()).send(cm.port);
        assert_eq!(resp.status, 200);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    // Heads: closed after the 10 s header timeout (not before; and not never).
    for s in &mut slow {
        let (got, _) = read_until_closed(s, Duration::from_secs(20));
        // hyper may answer 408 before closing; it must not answer anything else.
        let text = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    // The body: 408 with a JSON error after the 20 s body timeout.
    let (got, waited) = read_until_closed(&mut body_loris, Duration::from_secs(30));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("did not arrive within 20 s"), "{text}");
    assert!(waited < Duration::from_secs(30), "{waited:?}");
    assert_eq!(Request::get("/").send(cm.port).status, 200);
}

#[test]
fn deeply_nested_json_is_a_400_not_a_crash() {
    let cm = Connmon::functions(&[]);
    for depth in [200, 100_000] {
        let mut nested = "[".repeat(depth);
        nested.push_str(&"]".repeat(depth));
        let resp = post("/api/events", nested.clone().into_bytes()).send(cm.port);
        let msg = error_message(&resp, 400);
        assert!(msg.contains("recursion limit"), "{msg}");
        // Inside the host's envelope, as the binding's string.
        let env = json!({"Data": {"eventGridEvent": nested}}).to_string();
        let resp = post("/ConnectionEvent", env.into_bytes())
            .host_headers()
            .send(cm.port);
        assert!(error_message(&resp, 400).contains("recursion limit"));
    }
    // Nested objects inside an accepted event's `data` are the event's business: rejected or
    // accepted, never a failure of the delivery.
    let mut ev: Value = serde_json::from_slice(&event_body()).unwrap();
    let deep: Value =
        serde_json::from_str(&format!("{}1{}", "[".repeat(120), "]".repeat(120))).unwrap();
    ev[0]["data"]["extra"] = deep;
    assert_eq!(cm.api_events(&ev, &[]).json()["accepted"], 1);
    assert_eq!(Request::get("/").send(cm.port).status, 200);
}

#[test]
fn a_flood_of_unknown_event_types_is_acknowledged_with_bounded_logs() {
    let cm = Connmon::functions(&[]);
    let junk: Vec<Value> = (0..1000)
        .map(|i| json!({"id": format!("{i}-{}", "x".repeat(500)), "eventType": format!("Evil.Type{i}"), "subject": "s", "data": {}, "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1"}))
        .collect();
    for _ in 0..3 {
        let resp = cm.api_events(&Value::Array(junk.clone()), &[]);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["rejected"], 1000);
    }
    // The host route: the invocation's `Logs` are bounded too.
    let env = json!({"Data": {"eventGridEvent": Value::Array(junk[..50].to_vec()).to_string()}});
    let resp = post("/ConnectionEvent", env.to_string().into_bytes())
        .host_headers()
        .send(cm.port);
    let logs = host_logs(&resp);
    assert_eq!(logs.len(), 1 + 10 + 1, "{logs:?}");
    assert_eq!(logs[11], "rejected: 40 more");
    assert_eq!(cm.counters()["rejected"], 3 * 1000 + 50);
    let stderr = cm.stderr();
    let lines = stderr.matches("event rejected").count();
    assert_eq!(lines, 4 * 10, "{lines} rejection lines");
    assert_eq!(
        stderr
            .matches("more event(s) of this delivery rejected")
            .count(),
        4
    );
    // Event ids are clipped in the log: no 500-character id is written out.
    assert!(!stderr.contains(&"x".repeat(200)));
}

#[test]
fn forged_ids_are_rejected_or_carried_verbatim_never_interpreted() {
    let receiver = Receiver::start(vec![]);
    let cm = Connmon::functions(&[
        ("CONNMON_GRACE_PERIOD", "1s"),
        ("CONNMON_ALERT_WEBHOOK_URL", &receiver.url("/hook")),
    ]);
    // Every character IoT Hub allows in a device id, plus markup.
    let ids = [
        "dev-._:%+*=!@#$&'(),;",
        "<script>alert(1)</script>",
        "\"quoted\" & <b>bold</b>",
    ];
    for (i, id) in ids.iter().enumerate() {
        cm.event(&disconnected(id, i as u64 + 1, &ago(60)));
    }
    // Too long and control characters: rejected with a reason naming the field.
    let long = "d".repeat(129);
    for (bad, why) in [
        (long.as_str(), "longer than 128"),
        ("tab\there", "control character"),
    ] {
        let logs = cm.event(&disconnected(bad, 9, &ago(60)));
        assert!(
            logs.iter()
                .any(|l| l.contains("deviceId") && l.contains(why)),
            "{logs:?}"
        );
    }
    cm.sweep_until_delivered(Duration::from_secs(20));
    let got: Vec<String> = receiver
        .requests()
        .iter()
        .flat_map(|r| r.alerts())
        .map(|a| a["deviceId"].as_str().unwrap().to_string())
        .collect();
    for id in ids {
        assert!(
            got.contains(&id.to_string()),
            "{id} not delivered verbatim: {got:?}"
        );
    }
}

/// Item 7: a full run with every secret-bearing setting in use and every channel failing in its own
/// way first — refused connections, hang-ups, 5xx, an error body that echoes the secret back — then
/// recovering; plus start-ups refused for bad secret settings. Not one secret may appear in stdout,
/// stderr, an HTTP answer or a timer invocation's `Logs`.
#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn secrets_never_reach_logs_errors_or_timer_logs() {
    use crate::table_client::{azurite_connection_string, unique_table_name};
    const HOOK: &str = "hook-s3cr3t-9f1c2d";
    const TEAMS: &str = "teams-s3cr3t-77ab01";
    const SLACK: &str = "T000/B000/slack-s3cr3t-4e5f";
    const PD_KEY: &str = "R0UT1NGK3Y0000000000000000000ABC";
    let account_key = azurite_connection_string()
        .split(';')
        .find_map(|p| p.strip_prefix("AccountKey="))
        .unwrap()
        .to_string();
    // Error bodies that quote the secret back; throttling with `Retry-After: 1` keeps the retries
    // quick enough for a test.
    let echo = |status: u16, secret: &str| {
        Answer::Text(
            status,
            vec![("Retry-After".into(), "1".into())],
            format!("invalid request for {secret}"),
        )
    };
    let hook = Receiver::start(vec![echo(429, HOOK), echo(503, HOOK)]);
    let teams = Receiver::start(vec![Answer::Close, echo(400, TEAMS)]);
    let pd = Receiver::start(vec![
        Answer::Text(
            400,
            vec![("Content-Type".into(), "application/json".into())],
            format!(r#"{{"status":"invalid event","errors":["routing_key {PD_KEY} unknown"]}}"#),
        ),
        Answer::Status(500),
    ]);
    let closed = free_port(); // nothing listens: connection refused
    let env = [
        ("CONNMON_GRACE_PERIOD", "1s".to_string()),
        (
            "CONNMON_ALERT_WEBHOOK_URL",
            hook.url(&format!("/{HOOK}?code={HOOK}")),
        ),
        (
            "CONNMON_TEAMS_WEBHOOK_URL",
            teams.url(&format!("/wf/{TEAMS}?sig={TEAMS}")),
        ),
        (
            "CONNMON_SLACK_WEBHOOK_URL",
            format!("http://127.0.0.1:{closed}/services/{SLACK}"),
        ),
        ("CONNMON_PAGERDUTY_ROUTING_KEY", PD_KEY.to_string()),
        ("CONNMON_PAGERDUTY_EVENTS_URL", pd.url("/v2/enqueue")),
        ("CONNMON_STORE", "table".to_string()),
        ("CONNMON_TABLE_CONNECTION", azurite_connection_string()),
        ("CONNMON_TABLE_NAME", unique_table_name("secrets")),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let cm = Connmon::functions(&env_ref);
    let mut answers = String::new();
    for i in 0..3u64 {
        let logs = cm.event(&disconnected(&format!("dev-{i}"), i + 1, &ago(30)));
        answers.push_str(&logs.join("\n"));
    }
    // Sweeps until the webhook got its alerts through; every channel failed at least once on the way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hook.requests().iter().any(|r| r.delivered()) {
        assert!(Instant::now() < deadline, "the webhook never recovered");
        answers.push_str(&cm.sweep().logs.join("\n"));
        std::thread::sleep(Duration::from_millis(300));
    }
    answers.push_str(&cm.sweep().logs.join("\n"));
    answers.push_str(&Request::get("/").send(cm.port).text());
    // The operator surfaces too: status, devices, one device, the page, the metrics.
    for path in [
        "/api/status",
        "/api/devices",
        "/api/devices/dev-0",
        "/api/dashboard",
        "/metrics",
    ] {
        let r = Request::get(path).send(cm.port);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        answers.push_str(&r.text());
    }
    assert!(hook.requests().len() >= 3, "{:?}", hook.requests());
    assert!(!teams.requests().is_empty() && !pd.requests().is_empty());
    let output = format!("{}\n{}\n{answers}", cm.stdout(), cm.stderr());
    assert!(
        output.contains("delivery failing") || output.contains("failed"),
        "the failures were reported: {output}"
    );
    // Start-ups refused for a bad secret setting do not echo it either.
    let refused = [
        run_to_exit(&[("CONNMON_ALERT_WEBHOOK_URL", &format!("ftp://x/{HOOK}"))]),
        run_to_exit(&[("CONNMON_TEAMS_WEBHOOK_URL", &format!("not a url {TEAMS}"))]),
        run_to_exit(&[("CONNMON_PAGERDUTY_ROUTING_KEY", &format!("{PD_KEY}!"))]),
        run_to_exit(&[
            ("CONNMON_STORE", "table"),
            (
                "CONNMON_TABLE_CONNECTION",
                &format!("AccountName=x;AccountKey={account_key};Bogus"),
            ),
        ]),
    ];
    let mut all = output;
    for exit in &refused {
        assert_ne!(exit.code, Some(0), "{exit:?}");
        all.push_str(&exit.stdout);
        all.push_str(&exit.stderr);
    }
    for secret in [
        HOOK,
        TEAMS,
        SLACK,
        "slack-s3cr3t",
        PD_KEY,
        account_key.as_str(),
    ] {
        // Not even a prefix: a secret cut short by a message's length limit is still a leak.
        assert!(!all.contains(&secret[..12]), "{secret} leaked:\n{all}");
    }
    assert!(
        all.contains("<redacted>"),
        "the echoed secrets were replaced: {all}"
    );
}
