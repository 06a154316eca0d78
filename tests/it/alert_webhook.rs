//! Alert delivery to a real HTTP receiver: the wire body (docs/rules.md, the alert body), the
//! `disconnected` / `reconnected` pairing, retries after failures without loss or reordering, and
//! the webhook URL (which carries a credential) never reaching the logs.

use crate::support::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Appears in every webhook URL; must never appear in connmon's output.
const SECRET: &str = "S3CRET-hook-token-5f1c";

fn hook_url(rx: &Receiver) -> String {
    rx.url(&format!("/alerts/{SECRET}?code={SECRET}"))
}

fn start(url: &str) -> Connmon {
    Connmon::functions(&[
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_ALERT_WEBHOOK_URL", url),
    ])
}

/// Like [`start`] with the quick retries inside an attempt off: for the tests of what stays queued
/// between sweeps and of the durable back-off (the quick retries are `delivery.rs`'s).
fn start_durable(url: &str) -> Connmon {
    Connmon::functions(&[
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_ALERT_WEBHOOK_URL", url),
        ("CONNMON_QUICK_RETRY_FOR", "0s"),
    ])
}

fn assert_no_secret(cm: &Connmon) {
    let logs = cm.logs();
    assert!(!logs.contains(SECRET), "the webhook URL leaked:\n{logs}");
}

fn secs_between(from: &Value, to: &Value) -> f64 {
    let d = parse_time(to.as_str().unwrap()) - parse_time(from.as_str().unwrap());
    d.as_seconds_f64()
}

/// Checks the documented field set and types of one alert.
fn check_shape(a: &Value) {
    let keys: BTreeSet<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = ALERT_FIELDS.into();
    assert_eq!(keys, expected, "{a}");
    assert!(a["dedupKey"].as_str().is_some_and(|k| !k.is_empty()), "{a}");
    assert!(a["hub"].is_string() && a["deviceId"].is_string(), "{a}");
    assert!(a["moduleId"].is_null() || a["moduleId"].is_string(), "{a}");
    assert!(a["downtimeSeconds"].is_i64(), "{a}");
    assert!(a["gracePeriodSeconds"].is_i64(), "{a}");
    for k in ["disconnectedAt", "detectedAt"] {
        let t = a[k].as_str().unwrap_or_else(|| panic!("{k}: {a}"));
        assert!(t.ends_with('Z'), "{k} in UTC: {a}");
        parse_time(t);
    }
    match a["kind"].as_str() {
        Some("disconnected") => {
            assert!(a["reconnectedAt"].is_null(), "{a}");
            let d = secs_between(&a["disconnectedAt"], &a["detectedAt"]);
            assert_eq!(
                a["downtimeSeconds"].as_i64().unwrap(),
                d.floor() as i64,
                "{a}"
            );
        }
        Some("reconnected") => {
            let d = secs_between(&a["disconnectedAt"], &a["reconnectedAt"]);
            assert_eq!(
                a["downtimeSeconds"].as_i64().unwrap(),
                d.floor() as i64,
                "{a}"
            );
        }
        other => panic!("unexpected kind {other:?}: {a}"),
    }
}

/// Same instant, allowing for connmon keeping milliseconds and the event 100 ns ticks.
fn assert_same_time(got: &Value, sent: &str) {
    let d = parse_time(got.as_str().unwrap()) - parse_time(sent);
    assert!(d.abs() < time::Duration::milliseconds(1), "{got} vs {sent}");
}

#[test]
fn alert_bodies_carry_the_documented_fields() {
    let rx = Receiver::start(vec![]);
    let cm = start(&hook_url(&rx));
    let t_device = ago(600);
    let t_module = ago(300);
    cm.event(&disconnected("dev-1", 10, &t_device).hub("MyHub"));
    cm.event(
        &disconnected("dev-1", 11, &t_module)
            .hub("MyHub")
            .module("$edgeHub"),
    );
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (2, 2, 0), "{s:?}");

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "one batch: {reqs:?}");
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, format!("/alerts/{SECRET}?code={SECRET}"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    let body = req.json();
    assert_eq!(body.as_object().unwrap().len(), 1, "only `alerts`: {body}");

    let alerts = req.alerts();
    assert_eq!(alerts.len(), 2);
    alerts.iter().for_each(check_shape);
    // Raised oldest outage first.
    let (dev, module) = (&alerts[0], &alerts[1]);
    assert_eq!(dev["kind"], "disconnected");
    assert_eq!(dev["hub"], "myhub", "hub is lower-cased");
    assert_eq!(dev["deviceId"], "dev-1");
    assert!(dev["moduleId"].is_null(), "{dev}");
    assert_eq!(dev["gracePeriodSeconds"], 2);
    assert_same_time(&dev["disconnectedAt"], &t_device);
    let downtime = dev["downtimeSeconds"].as_i64().unwrap();
    assert!((600..=610).contains(&downtime), "{dev}");
    let detected = parse_time(dev["detectedAt"].as_str().unwrap());
    let skew = (time::OffsetDateTime::now_utc() - detected).abs();
    assert!(skew < time::Duration::seconds(10), "{dev}");

    assert_eq!(module["moduleId"], "$edgeHub");
    assert_eq!(module["hub"], "myhub");
    assert_same_time(&module["disconnectedAt"], &t_module);
    assert_ne!(dev["dedupKey"], module["dedupKey"]);

    // The device comes back: one `reconnected` with the same dedupKey, at the next sweep.
    let t_back = ago(60);
    let logs = cm.event(&connected("dev-1", 12, &t_back).hub("MYHUB"));
    assert!(logs[0].contains("[reconnected=1]"), "{logs:?}");
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered), (0, 1), "{s:?}");
    let all = rx.delivered();
    assert_eq!(all.len(), 3);
    let back = &all[2];
    check_shape(back);
    assert_eq!(back["kind"], "reconnected");
    assert_eq!(back["dedupKey"], dev["dedupKey"]);
    assert_eq!(back["hub"], "myhub");
    assert!(back["moduleId"].is_null());
    assert_same_time(&back["disconnectedAt"], &t_device);
    assert_same_time(&back["reconnectedAt"], &t_back);
    assert_eq!(back["downtimeSeconds"], 540);

    // A second outage of the same device is a different incident.
    let t_again = ago(30);
    cm.event(&disconnected("dev-1", 13, &t_again).hub("myhub"));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered), (1, 1), "{s:?}");
    let all = rx.delivered();
    let again = &all[3];
    check_shape(again);
    assert_eq!(again["kind"], "disconnected");
    assert!(again["moduleId"].is_null());
    assert_same_time(&again["disconnectedAt"], &t_again);
    assert_ne!(again["dedupKey"], dev["dedupKey"]);
    assert_ne!(again["dedupKey"], module["dedupKey"]);

    // The module's outage has no `reconnected` until the module connects.
    cm.event(
        &connected("dev-1", 14, &ago(0))
            .hub("myhub")
            .module("$edgeHub"),
    );
    cm.sweep();
    let all = rx.delivered();
    assert_eq!(all.len(), 5);
    assert_eq!(all[4]["kind"], "reconnected");
    assert_eq!(all[4]["dedupKey"], module["dedupKey"]);
    assert_eq!(all[4]["moduleId"], "$edgeHub");
    assert_no_secret(&cm);
}

#[test]
fn a_failing_receiver_gets_every_alert_once_in_order_after_it_recovers() {
    let rx = Receiver::start(vec![Answer::Status(500)]);
    let cm = start_durable(&hook_url(&rx));
    cm.event(&disconnected("flaky-a", 1, &ago(600)));
    cm.event(&disconnected("flaky-b", 1, &ago(500)));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (2, 0, 2), "{s:?}");
    assert!(
        s.logs[0].contains("delivery failing: webhook: HTTP 500"),
        "{s:?}"
    );
    let failed_at = Instant::now();

    // Raised while the first two back off: waits behind them.
    let logs = cm.event(&connected("flaky-a", 2, &ago(5)));
    assert!(logs[0].contains("[reconnected=1]"), "{logs:?}");
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (0, 0, 3), "{s:?}");
    assert_eq!(rx.requests().len(), 1, "no retry before the back-off");

    let sweeps = cm.sweep_until_delivered(Duration::from_secs(20));
    let last = sweeps.last().unwrap();
    assert_eq!((last.delivered, last.queued), (3, 0), "{sweeps:?}");
    assert!(
        failed_at.elapsed() >= Duration::from_secs(9),
        "back-off ~10 s"
    );

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].answered, Some(500));
    assert_eq!(
        names(&reqs[0].alerts()),
        [
            pair("disconnected", "flaky-a"),
            pair("disconnected", "flaky-b")
        ]
    );
    let delivered = rx.delivered();
    assert_eq!(
        names(&delivered),
        [
            pair("disconnected", "flaky-a"),
            pair("disconnected", "flaky-b"),
            pair("reconnected", "flaky-a"),
        ]
    );
    // The retried alerts are byte-for-byte the ones that failed (stable dedupKey, times).
    assert_eq!(reqs[0].alerts()[..], delivered[..2]);
    assert_eq!(delivered[0]["dedupKey"], delivered[2]["dedupKey"]);

    let s = cm.sweep();
    assert_eq!((s.delivered, s.queued), (0, 0));
    assert_eq!(rx.requests().len(), 2, "nothing sent twice");
    let stderr = cm.stderr();
    assert_eq!(
        stderr
            .matches("alert channel webhook delivery failed")
            .count(),
        1,
        "{stderr}"
    );
    assert!(cm.stdout().contains("alert channel webhook delivers again"));
    assert_no_secret(&cm);
}

#[test]
fn a_throttling_receiver_is_retried_after_its_retry_after() {
    let rx = Receiver::start(vec![Answer::StatusWith(
        429,
        vec![("Retry-After".into(), "1".into())],
    )]);
    let cm = start_durable(&hook_url(&rx));
    cm.event(&disconnected("throttled", 1, &ago(600)));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 0, 1), "{s:?}");
    assert!(s.logs[0].contains("HTTP 429"), "{s:?}");
    let failed_at = Instant::now();
    let sweeps = cm.sweep_until_delivered(Duration::from_secs(8));
    assert!(
        failed_at.elapsed() >= Duration::from_millis(800),
        "{sweeps:?}"
    );
    assert_eq!(names(&rx.delivered()), [pair("disconnected", "throttled")]);
    assert_no_secret(&cm);
}

#[test]
fn a_receiver_that_is_not_listening_yet_gets_the_alert_once_it_is() {
    let port = free_port(); // reserved, nobody listens: connection refused
    let url = format!("http://127.0.0.1:{port}/alerts/{SECRET}?code={SECRET}");
    let cm = start(&url);
    cm.event(&disconnected("early", 1, &ago(600)));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 0, 1), "{s:?}");
    assert!(s.logs[0].contains("cannot connect"), "{s:?}");

    let rx = Receiver::start_on(port, vec![]);
    let sweeps = cm.sweep_until_delivered(Duration::from_secs(20));
    assert_eq!(sweeps.last().unwrap().queued, 0, "{sweeps:?}");
    assert_eq!(names(&rx.delivered()), [pair("disconnected", "early")]);
    assert_eq!(rx.requests().len(), 1);
    assert!(cm.stderr().contains("cannot connect"), "{}", cm.stderr());
    assert_no_secret(&cm);
}

#[test]
fn a_rejecting_receiver_keeps_alerts_queued_and_backs_off() {
    let rx = Receiver::start(vec![Answer::Status(400)]);
    let cm = start(&hook_url(&rx));
    cm.event(&disconnected("refused", 1, &ago(600)));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 0, 1), "{s:?}");
    assert!(s.logs[0].contains("HTTP 400"), "{s:?}");
    for _ in 0..3 {
        let s = cm.sweep();
        assert_eq!((s.delivered, s.queued), (0, 1), "kept, not dropped: {s:?}");
    }
    assert_eq!(rx.requests().len(), 1, "a 4xx backs off for minutes");
    let stderr = cm.stderr();
    assert!(stderr.contains("next attempt in 300s"), "{stderr}");
    assert!(stderr.contains("check its configuration"), "{stderr}");
    assert_no_secret(&cm);
}

#[test]
fn a_receiver_that_hangs_up_or_redirects_is_a_failed_delivery() {
    for answer in [
        Answer::Close,
        Answer::StatusWith(307, vec![("Location".into(), "http://127.0.0.1:9/".into())]),
    ] {
        let rx = Receiver::start(vec![answer.clone()]);
        let cm = start_durable(&hook_url(&rx));
        cm.event(&disconnected("hangup", 1, &ago(600)));
        let s = cm.sweep();
        assert_eq!(
            (s.new_alerts, s.delivered, s.queued),
            (1, 0, 1),
            "{answer:?}: {s:?}"
        );
        assert!(rx.delivered().is_empty(), "{answer:?}");
        assert_eq!(
            rx.requests().len(),
            1,
            "{answer:?}: not followed, not retried at once"
        );
        assert_no_secret(&cm);
    }
}

#[test]
fn an_invalid_webhook_url_is_refused_without_quoting_it() {
    for bad in [
        format!("ftp://example.com/{SECRET}"),
        format!("not a url {SECRET}"),
        format!("/relative/{SECRET}"),
        format!("http://[{SECRET}/"),
    ] {
        let exit = run_to_exit(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", &free_port().to_string()),
            ("CONNMON_ALERT_WEBHOOK_URL", &bad),
        ]);
        assert_eq!(exit.code, Some(2), "{bad}: {exit:?}");
        assert_eq!(exit.stderr.lines().count(), 1, "{exit:?}");
        assert!(
            exit.stderr.contains("CONNMON_ALERT_WEBHOOK_URL"),
            "{exit:?}"
        );
        assert!(!exit.stderr.contains(SECRET), "{exit:?}");
        assert!(!exit.stdout.contains(SECRET), "{exit:?}");
    }
}

/// A receiver that throttles the first delivery for one second, so alerts sit in the outbox
/// briefly without a long back-off.
fn throttle_once() -> Receiver {
    Receiver::start(vec![Answer::StatusWith(
        429,
        vec![("Retry-After".into(), "1".into())],
    )])
}

#[test]
fn deleting_a_device_cancels_its_unsent_disconnected_alert() {
    let rx = throttle_once();
    let cm = start_durable(&hook_url(&rx));
    cm.event(&disconnected("doomed", 1, &ago(600)));
    cm.event(&disconnected("survivor", 1, &ago(600)));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.queued), (2, 2), "{s:?}");
    let logs = cm.invocation(invocation(encode(
        &deleted("doomed", &ago(0)),
        Enc::StrInStr,
    )));
    assert!(logs[0].contains("[deleted=1]"), "{logs:?}");

    cm.sweep_until_delivered(Duration::from_secs(8));
    assert_eq!(names(&rx.delivered()), [pair("disconnected", "survivor")]);
    // A late, pre-deletion event does not resurrect the device.
    let logs = cm.event(&disconnected("doomed", 1, &ago(590)));
    assert!(logs[0].contains("[before_deletion=1]"), "{logs:?}");
    assert_eq!(cm.sweep().new_alerts, 0);
}

/// docs/rules.md §4: a `reconnected` alert follows a `disconnected` alert that was sent; docs/rules.md §5: "A
/// `reconnected` alert is never sent for a deleted device". When deletion withdraws the unsent
/// `disconnected`, its already-queued `reconnected` must not arrive on its own.
#[test]
fn deleting_a_device_never_leaves_a_lone_reconnected_alert() {
    let rx = throttle_once();
    let cm = start_durable(&hook_url(&rx));
    cm.event(&disconnected("flip", 1, &ago(600)));
    let s = cm.sweep(); // claimed; delivery throttled, so it stays queued
    assert_eq!((s.new_alerts, s.queued), (1, 1), "{s:?}");
    let logs = cm.event(&connected("flip", 2, &ago(30)));
    assert!(logs[0].contains("[reconnected=1]"), "{logs:?}");
    let logs = cm.invocation(invocation(encode(&deleted("flip", &ago(0)), Enc::StrInStr)));
    assert!(logs[0].contains("[deleted=1]"), "{logs:?}");

    // Sweep until the outbox is empty (the throttle lasts a second).
    eventually("the outbox empties", Duration::from_secs(8), || {
        (cm.sweep().queued == 0).then_some(())
    });
    let delivered = rx.delivered();
    let kinds: Vec<(String, String)> = names(&delivered);
    let lone_reconnected = kinds.contains(&pair("reconnected", "flip"))
        && !kinds.contains(&pair("disconnected", "flip"));
    assert!(
        !lone_reconnected,
        "the receiver got a `reconnected` for an outage whose `disconnected` was withdrawn: {delivered:#?}"
    );
}

#[test]
fn a_large_sweep_is_posted_in_ordered_batches_and_logs_stay_bounded() {
    let rx = Receiver::start(vec![]);
    let cm = start(&hook_url(&rx));
    let events: Vec<Value> = (0..600)
        .map(|i| disconnected(&format!("bulk-{i:03}"), 1, &ago(3600 - i)).eg())
        .collect();
    let resp = cm.api_events(&Value::Array(events), &[]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["accepted"], 600);

    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (600, 600, 0));
    assert_eq!(
        s.alert_lines().len(),
        100,
        "Logs carry a bounded number of alert lines"
    );
    assert!(
        s.logs.last().unwrap().contains("500 more"),
        "{:?}",
        s.logs.last()
    );

    // Per-identity alerts in batches of 500, each batch followed by its hub's `outage` summary
    // (600 alerts of one hub are over the group threshold of 20).
    let reqs = rx.requests();
    let per_identity = |r: &Received| {
        r.alerts()
            .iter()
            .filter(|a| a["kind"] == "disconnected")
            .count()
    };
    assert_eq!(
        reqs.iter().map(per_identity).collect::<Vec<_>>(),
        [500, 100]
    );
    let summaries: Vec<(u64, u64)> = reqs
        .iter()
        .flat_map(|r| r.alerts())
        .filter(|a| a["kind"] == "outage")
        .map(|a| {
            (
                a["count"].as_u64().unwrap(),
                a["sample"].as_array().unwrap().len() as u64,
            )
        })
        .collect();
    assert_eq!(summaries, [(500, 10), (100, 10)]);
    let devices: Vec<String> = rx
        .delivered()
        .iter()
        .filter(|a| a["kind"] == "disconnected")
        .map(|a| a["deviceId"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..600).map(|i| format!("bulk-{i:03}")).collect();
    assert_eq!(devices, expected, "oldest outage first, each once");
    assert_eq!(cm.stderr().matches("ALERT disconnected").count(), 600);
}

#[test]
fn a_disconnect_after_the_alert_continues_the_same_outage() {
    let rx = Receiver::start(vec![]);
    let cm = start(&hook_url(&rx));
    let t0 = ago(600);
    cm.event(&disconnected("long-haul", 1, &t0));
    assert_eq!(cm.sweep().new_alerts, 1);
    // IoT Hub lost the connect in between (60 s sampling): a newer disconnect, same outage.
    let logs = cm.event(&disconnected("long-haul", 5, &ago(120)));
    assert!(logs[0].contains("[continued=1]"), "{logs:?}");
    assert_eq!(cm.sweep().new_alerts, 0);
    cm.event(&connected("long-haul", 6, &ago(0)));
    cm.sweep();
    let all = rx.delivered();
    assert_eq!(
        names(&all),
        [
            pair("disconnected", "long-haul"),
            pair("reconnected", "long-haul")
        ]
    );
    assert_eq!(all[0]["dedupKey"], all[1]["dedupKey"]);
    assert_same_time(&all[1]["disconnectedAt"], &t0);
    assert_no_secret(&cm);
}

#[test]
fn a_webhook_host_name_holding_the_secret_is_not_logged_either() {
    // `.invalid` never resolves (RFC 2606): the DNS error must not quote the host.
    let url = format!("http://{}.invalid/hook", SECRET.to_lowercase());
    let cm = start(&url);
    cm.event(&disconnected("nowhere", 1, &ago(600)));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 0, 1), "{s:?}");
    assert!(
        !s.logs
            .join("\n")
            .to_lowercase()
            .contains(&SECRET.to_lowercase()),
        "{s:?}"
    );
    assert!(
        !cm.logs().to_lowercase().contains(&SECRET.to_lowercase()),
        "{}",
        cm.logs()
    );
}
