//! Standalone mode: connmon as a plain Event Grid webhook (`POST /api/events`, both schemas, the
//! validation handshakes) with its own sweep ticker.

use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;

const LONG: &[(&str, &str)] = &[
    ("CONNMON_GRACE_PERIOD", "5m"),
    ("CONNMON_SWEEP_INTERVAL", "1h"),
];

/// Asserts 200 with the webhook summary `{"accepted","ignored","rejected","alerts"}`.
fn summary(resp: &Response) -> [u64; 4] {
    assert_eq!(resp.status, 200, "{resp:?} {}", resp.text());
    let body = resp.json();
    let obj = body.as_object().expect("an object");
    assert_eq!(obj.len(), 4, "{body}");
    ["accepted", "ignored", "rejected", "alerts"]
        .map(|k| obj[k].as_u64().unwrap_or_else(|| panic!("no {k}: {body}")))
}

fn notification() -> [(&'static str, &'static str); 1] {
    [("aeg-event-type", "Notification")]
}

#[test]
fn event_grid_array_and_single_object() {
    let cm = Connmon::standalone(LONG);
    let t = ago(30);
    let array = json!([
        disconnected("eg-a", 1, &t).eg(),
        disconnected("eg-b", 1, &t).eg()
    ]);
    assert_eq!(
        summary(&cm.api_events(&array, &notification())),
        [2, 0, 0, 0]
    );
    let single = connected("eg-a", 2, &ago(20)).eg();
    assert_eq!(
        summary(&cm.api_events(&single, &notification())),
        [1, 0, 0, 0]
    );
    // The documented sample, as published.
    let resp = Request::post("/api/events")
        .header("Content-Type", "application/json")
        .header("aeg-event-type", "Notification")
        .body(fixture("events/eg-docs-device-connected.json"))
        .send(cm.port);
    assert_eq!(summary(&resp), [1, 0, 0, 0]);
    let c = cm.counters();
    assert_eq!(c["eventsApplied"], 4, "{c}");
    assert!(cm.stdout().contains("standalone Event Grid webhook"));
}

#[test]
fn cloudevents_single_and_batch() {
    let cm = Connmon::standalone(LONG);
    let t = ago(30);
    let resp = Request::post("/api/events")
        .header(
            "Content-Type",
            "application/cloudevents+json; charset=utf-8",
        )
        .body(disconnected("ce-a", 1, &t).ce().to_string().into_bytes())
        .send(cm.port);
    assert_eq!(summary(&resp), [1, 0, 0, 0]);
    let batch = json!([
        connected("ce-a", 2, &ago(20)).ce(),
        disconnected("ce-b", 1, &t).module("$edgeHub").ce()
    ]);
    let resp = Request::post("/api/events")
        .header(
            "Content-Type",
            "application/cloudevents-batch+json; charset=utf-8",
        )
        .body(batch.to_string().into_bytes())
        .chunked(3)
        .send(cm.port);
    assert_eq!(summary(&resp), [2, 0, 0, 0]);
    let resp = Request::post("/api/events")
        .header("Content-Type", "application/cloudevents-batch+json")
        .body(fixture("events/ce-docs-device-connected.json"))
        .send(cm.port);
    assert_eq!(summary(&resp), [1, 0, 0, 0]);
    assert_eq!(cm.counters()["eventsApplied"], 4);
}

#[test]
fn answers_the_subscription_validation_handshake() {
    let cm = Connmon::standalone(LONG);
    let body = fixture_json("events/eg-validation-event-docs-with-validationUrl.json");
    let resp = cm.api_events(&body, &[("aeg-event-type", "SubscriptionValidation")]);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(
        resp.json(),
        json!({"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    );
    // The documented response shape matches.
    let expected = fixture_json("events/eg-validation-response-docs.json");
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&resp.json()), keys(&expected));

    // A validation header with no validation event in the body is refused.
    let resp = cm.api_events(
        &json!([disconnected("v", 1, &ago(1)).eg()]),
        &[("aeg-event-type", "SubscriptionValidation")],
    );
    error_message(&resp, 400);
    let c = cm.counters();
    assert_eq!(
        (c["rejected"].as_u64(), c["ignored"].as_u64()),
        (Some(0), Some(0)),
        "{c}"
    );
}

#[test]
fn answers_the_cloudevents_abuse_protection_handshake() {
    let cm = Connmon::standalone(LONG);
    let resp = Request::new("OPTIONS", "/api/events")
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .header("WebHook-Request-Rate", "120")
        .send(cm.port);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("WebHook-Allowed-Origin"),
        Some("eventgrid.azure.net")
    );
    assert_eq!(resp.header("WebHook-Allowed-Rate"), Some("*"));
    let allow = resp.header("Allow").expect("Allow header");
    assert!(allow.contains("POST"), "{allow}");
    assert!(allow.contains("OPTIONS"), "{allow}");

    let resp = Request::new("OPTIONS", "/api/events")
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .send(cm.port);
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("WebHook-Allowed-Origin"),
        Some("eventgrid.azure.net")
    );
    assert_eq!(resp.header("WebHook-Allowed-Rate"), None);
}

#[test]
fn other_services_events_in_a_batch_are_acknowledged() {
    let cm = Connmon::standalone(LONG);
    let blob = fixture_json("events/eg-deadletter-envelope-docs.json"); // Microsoft.Storage.BlobCreated
    let created = fixture_json("events/eg-docs-device-created.json")[0].clone();
    let batch = json!([
        blob,
        disconnected("mixed", 1, &ago(30)).eg(),
        created,
        connected("mixed", 2, &ago(20)).eg(),
    ]);
    // accepted 2 (connmon's), ignored 1 (DeviceCreated), rejected 1 (not an IoT Hub event).
    assert_eq!(
        summary(&cm.api_events(&batch, &notification())),
        [2, 1, 1, 0]
    );
    let c = cm.counters();
    assert_eq!(
        (
            c["eventsApplied"].as_u64(),
            c["ignored"].as_u64(),
            c["rejected"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{c}"
    );
}

#[test]
fn bad_webhook_bodies_get_400_and_oversized_get_413() {
    let cm = Connmon::standalone(LONG);
    for body in [
        &b"not json"[..],
        b"",
        b"42",
        b"\"text\"",
        br#"{"id": "no type"}"#,
    ] {
        let resp = Request::post("/api/events")
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send(cm.port);
        error_message(&resp, 400);
    }
    let mut big = json!([disconnected("big", 1, &ago(1)).eg()])
        .to_string()
        .into_bytes();
    big.resize(1024 * 1024 + 10, b' ');
    let resp = Request::post("/api/events")
        .body(big)
        .chunked(20)
        .send(cm.port);
    error_message(&resp, 413);
    // An array holding garbage items is a delivery: acknowledged, the items rejected.
    let resp = cm.api_events(&json!([1, "x", {"eventType": 3}]), &notification());
    assert_eq!(summary(&resp), [0, 0, 3, 0]);
}

#[test]
fn the_timer_route_works_in_standalone_mode_too() {
    let cm = Connmon::standalone(&[
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_SWEEP_INTERVAL", "1h"),
    ]);
    cm.api_events(
        &disconnected("sa-timer", 1, &ago(600)).eg(),
        &notification(),
    );
    let s = cm.sweep();
    assert_eq!(s.new_alerts, 1, "{s:?}");
    let logs = cm.invocation(invocation(encode(
        &connected("sa-timer", 2, &ago(0)).eg(),
        Enc::StrInStr,
    )));
    assert!(logs[0].contains("[reconnected=1]"), "{logs:?}");
}

#[test]
fn the_builtin_ticker_delivers_alerts_without_a_timer_call() {
    let rx = Receiver::start(vec![]);
    let url = rx.url("/ticker/T0KEN-standalone-ticker");
    let cm = Connmon::standalone(&[
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_SWEEP_INTERVAL", "1s"),
        ("CONNMON_ALERT_WEBHOOK_URL", &url),
    ]);
    let resp = cm.api_events(
        &json!([disconnected("ticked", 1, &ago(600)).eg()]),
        &notification(),
    );
    assert_eq!(summary(&resp), [1, 0, 0, 0]);
    let alerts = rx.wait_delivered(1, Duration::from_secs(10));
    assert_eq!(alerts[0]["kind"], "disconnected");
    assert_eq!(alerts[0]["deviceId"], "ticked");

    // A disconnect that is fresh becomes due after the grace period, with no one calling.
    cm.api_events(
        &json!([disconnected("later", 1, &ago(0)).eg()]),
        &notification(),
    );
    let alerts = rx.wait_delivered(2, Duration::from_secs(10));
    assert_eq!(alerts[1]["deviceId"], "later");
    let downtime = alerts[1]["downtimeSeconds"].as_i64().unwrap();
    assert!((2..=8).contains(&downtime), "{}", alerts[1]);

    // The receiver answers before connmon records the delivery.
    eventually("alertsDelivered reaches 2", Duration::from_secs(5), || {
        (cm.counters()["alertsDelivered"] == 2).then_some(())
    });
    assert!(!cm.logs().contains("T0KEN"), "{}", cm.logs());
}

#[test]
fn a_bad_sweep_interval_stops_start_up_with_exit_code_2() {
    for bad in ["0s", "2h", "every minute"] {
        let exit = run_to_exit(&[
            ("CONNMON_LISTEN", "127.0.0.1:0"),
            ("CONNMON_SWEEP_INTERVAL", bad),
        ]);
        assert_eq!(exit.code, Some(2), "{exit:?}");
        assert_eq!(exit.stderr.lines().count(), 1, "{exit:?}");
        assert!(exit.stderr.contains("CONNMON_SWEEP_INTERVAL"), "{exit:?}");
    }
    let exit = run_to_exit(&[("CONNMON_LISTEN", "localhost:80:80")]);
    assert_eq!(exit.code, Some(2), "{exit:?}");
    assert!(exit.stderr.contains("CONNMON_LISTEN"), "{exit:?}");
}
