//! `connmon replay` and `connmon simulate`: every input format, the engine against the
//! core's rules, the fast JSONL path against the production decoder, the report (JSON shape, HTML),
//! and simulate → replay round trips scored against ground truth.

use crate::support::{fixture, Connmon, ALERT_FIELDS};
use connmon::decode::{self, Decoded};
use connmon::machine::AlertKind;
use connmon::model::{EventKind, Identity, SequenceNumber, Timestamp};
use connmon::replay::engine::{self, TimedEvent, Timeline};
use connmon::replay::report::Report;
use connmon::replay::{self, fast, input, Options};
use connmon::simulate::{self, Config, Sdk};
use serde_json::{json, Value};
use std::io::Write;
use std::process::Command;
use std::time::Duration;

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

/// Loads named inputs (bytes as they would be in files) and analyses them.
fn replay_inputs(inputs: &[(&str, Vec<u8>)], graces: &[Duration]) -> (input::Loaded, Report) {
    let mut loader = input::Loader::new();
    for (name, bytes) in inputs {
        let (bytes, gzip) = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::MultiGzDecoder::new(&bytes[..]),
                &mut out,
            )
            .unwrap();
            (out, true)
        } else {
            (bytes.clone(), false)
        };
        loader
            .add(name, gzip, &bytes, &mut |_| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let loaded = loader.finish();
    let report = replay::analyse(
        &loaded,
        &Options {
            graces: graces.to_vec(),
            ..Options::default()
        },
    );
    (loaded, report)
}

/// Runs the `connmon` binary with `args`.
fn connmon(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_connmon"))
        .args(args)
        .output()
        .unwrap()
}

/// [`connmon`], asserting it succeeded; its stdout and stderr.
fn connmon_ok(args: &[&std::ffi::OsStr]) -> (String, String) {
    let out = connmon(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

fn os(s: &str) -> &std::ffi::OsStr {
    s.as_ref()
}

fn replay_fixture(path: &str) -> (input::Loaded, Report) {
    replay_inputs(&[(path, fixture(path))], &[mins(5)])
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn grace(r: &Report, secs: i64) -> &connmon::replay::report::GraceResult {
    r.grace_periods
        .iter()
        .find(|g| g.grace_seconds == secs)
        .unwrap_or_else(|| {
            panic!(
                "no grace {secs}s in {:?}",
                r.grace_periods
                    .iter()
                    .map(|g| g.grace_seconds)
                    .collect::<Vec<_>>()
            )
        })
}

// ------------------------------------------------------------------------------------------------
// Every fixture format of tests/fixtures/events/

#[test]
fn replay_event_grid_and_cloudevents_fixtures() {
    for (path, identity) in [
        (
            "events/eg-docs-device-connected.json",
            Identity::new("egtesthub1", "LogicAppTestDevice", Some("DeviceModuleID")),
        ),
        (
            "events/ce-docs-device-connected.json",
            Identity::new("egtesthub1", "LogicAppTestDevice", Some("DeviceModuleID")),
        ),
        (
            "events/eg-cosmos-tutorial-device-connected.json",
            Identity::new("MYIOTHUB", "48e44e11-1437-4907-83b1-4a8d7e89859e", None),
        ),
    ] {
        let (loaded, report) = replay_fixture(path);
        assert_eq!(loaded.timeline.identities, vec![identity], "{path}");
        assert_eq!(report.input.events, 1, "{path}");
        assert_eq!(report.input.ordered_by, "sequence", "{path}");
        assert_eq!(report.input.files[0].format, "event-grid", "{path}");
        assert!(grace(&report, 300).alerts.is_empty(), "{path}");
    }
}

#[test]
fn replay_single_objects_cloudevents_single_and_jsonl_and_gzip() {
    let eg: Value =
        serde_json::from_slice(&fixture("events/eg-docs-device-connected.json")).unwrap();
    let ce: Value =
        serde_json::from_slice(&fixture("events/ce-docs-device-connected.json")).unwrap();
    let single_eg = serde_json::to_vec(&eg[0]).unwrap();
    let single_ce = serde_json::to_vec(&ce[0]).unwrap();
    let jsonl = format!("{}\n{}\n", eg[0], ce[0]).into_bytes();
    for (name, bytes) in [
        ("single-eg.json", single_eg.clone()),
        ("single-ce.json", single_ce),
        ("two.jsonl", jsonl.clone()),
        ("two.jsonl.gz", gzip(&jsonl)),
        (
            "array.json.gz",
            gzip(&fixture("events/eg-docs-device-connected.json")),
        ),
    ] {
        let (loaded, report) = replay_inputs(&[(name, bytes)], &[mins(5)]);
        assert!(report.input.events >= 1, "{name}");
        assert_eq!(loaded.timeline.identities.len(), 1, "{name}");
        assert_eq!(
            report.input.rejected, 0,
            "{name}: {:?}",
            report.input.rejections
        );
        assert_eq!(report.input.files[0].gzip, name.ends_with(".gz"), "{name}");
    }
    // The same event in two schemas is one event twice: the second is a duplicate.
    let (_, report) = replay_inputs(&[("two.jsonl", jsonl)], &[mins(5)]);
    assert_eq!((report.input.events, report.input.duplicates), (2, 1));
}

#[test]
fn replay_counts_ignored_and_rejected_fixtures() {
    for (path, ignored, rejected) in [
        ("events/eg-docs-device-created.json", 1, 0),
        ("events/ce-docs-device-created.json", 1, 0),
        (
            "events/eg-validation-event-docs-with-validationUrl.json",
            1,
            0,
        ),
        // A dead-lettered Blob Storage event: an envelope replay reads, of a type it rejects.
        ("events/eg-deadletter-envelope-docs.json", 0, 1),
        // `{"validationResponse": …}` is neither an event nor a record.
        ("events/eg-validation-response-docs.json", 0, 1),
    ] {
        let (_, report) = replay_fixture(path);
        assert_eq!(
            (
                report.input.events,
                report.input.ignored,
                report.input.rejected
            ),
            (0, ignored, rejected),
            "{path}: {:?}",
            report.input.rejections
        );
    }
    let (_, report) = replay_fixture("events/eg-deadletter-envelope-docs.json");
    assert!(
        report.input.rejections[0].contains("unknown event type `Microsoft.Storage.BlobCreated`"),
        "{:?}",
        report.input.rejections
    );
}

#[test]
fn replay_dead_lettered_iot_hub_events() {
    // Dead-letter blobs hold the events with delivery fields added: they replay like any event.
    let mut ev: Value =
        serde_json::from_slice(&fixture("events/eg-cosmos-tutorial-device-connected.json"))
            .unwrap();
    let obj = ev[0].as_object_mut().unwrap();
    obj.insert(
        "deadLetterReason".into(),
        json!("MaxDeliveryAttemptsExceeded"),
    );
    obj.insert("deliveryAttempts".into(), json!(30));
    obj.insert("lastDeliveryOutcome".into(), json!("Probation"));
    let (_, report) = replay_inputs(&[("dl.json", serde_json::to_vec(&ev).unwrap())], &[mins(5)]);
    assert_eq!((report.input.events, report.input.rejected), (1, 0));
}

#[test]
fn replay_resource_log_fixtures_order_by_time() {
    // The tutorial's two concatenated objects (`properties` an object): a connect, then a
    // disconnect that is still open when the log ends.
    let (loaded, report) =
        replay_fixture("events/log-connections-tutorial-2018-concatenated.jsonl.txt");
    assert_eq!(report.input.ordered_by, "time");
    assert_eq!(report.input.files[0].format, "resource-logs");
    assert_eq!(
        loaded.timeline.identities,
        vec![Identity::new("contosotesthub", "Contoso-Test-Device", None)]
    );
    let kinds: Vec<bool> = loaded
        .timeline
        .events
        .iter()
        .map(|e| matches!(e.kind, EventKind::Connected(_)))
        .collect();
    assert_eq!(kinds, vec![true, false]);
    assert_eq!(grace(&report, 300).open_at_end, 1);
    // The docs' template (`{"records": [...]}`, `properties` a string) has a placeholder time.
    let (_, report) = replay_fixture("events/log-connections-docs-template.json");
    assert_eq!((report.input.events, report.input.rejected), (0, 1));
    assert!(
        report.input.rejections[0].contains("is not a timestamp"),
        "{:?}",
        report.input.rejections
    );
}

/// The three synthetic exports of tests/fixtures/replay/ hold the same history.
fn check_pump_history(name: &str, report: &Report, twin: &Identity) {
    assert_eq!(report.input.ordered_by, "time", "{name}");
    assert_eq!(
        report.input.events, 7,
        "{name}: {:?}",
        report.input.rejections
    );
    for secs in [120, 300] {
        let g = grace(report, secs);
        let kinds: Vec<&str> = g.alerts.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["disconnected", "reconnected"], "{name} at {secs}s");
        let a = &g.alerts[0];
        assert_eq!(
            (
                a.hub.as_str(),
                a.device_id.as_str(),
                a.disconnected_at.as_str()
            ),
            ("contosohub", "pump-7", "2026-11-27T11:00:00Z"),
            "{name}"
        );
        let detected = Timestamp::parse_rfc3339("2026-11-27T11:00:00Z")
            .unwrap()
            .plus_millis(secs * 1000);
        assert_eq!(a.detected_at, detected.to_rfc3339(), "{name}");
        assert_eq!(a.grace_period_seconds, secs);
        assert_eq!(g.suppressed_reconnects, 2, "{name}");
    }
    // Gaps under 5 minutes: 6.5 s and 2 s → 6.5 s + 60 s sampling → 2 minutes.
    assert_eq!(
        report.recommended_grace_seconds, 120,
        "{name}: {}",
        report.recommendation
    );
    let pump = report
        .identities
        .iter()
        .find(|i| i.device_id == "pump-7")
        .unwrap();
    assert_eq!(pump.sdk.as_deref(), Some(".NET"), "{name}");
    assert_eq!(
        pump.sdk_version.as_deref(),
        Some(".NET/1.42.0 (.NET 8.0.1; Linux; X64)")
    );
    assert_eq!(report.duplicate_identity_suspects.len(), 1, "{name}");
    let s = &report.duplicate_identity_suspects[0];
    assert_eq!(
        (s.device_id.as_str(), s.module_id.as_deref()),
        (twin.device(), twin.module())
    );
    assert!(s.reasons[0].contains("400027"), "{:?}", s.reasons);
    let t = report
        .identities
        .iter()
        .find(|i| i.device_id == "twin,ned")
        .unwrap();
    assert_eq!(t.sdk.as_deref(), Some("Python"), "{name}");
}

#[test]
fn replay_resource_logs_jsonl_and_log_analytics_exports() {
    let (_, r) = replay_inputs(
        &[(
            "resource-logs",
            fixture("replay/resource-logs-properties-string.jsonl"),
        )],
        &[mins(2), mins(5)],
    );
    check_pump_history(
        "jsonl",
        &r,
        &Identity::new("contosohub", "twin,ned", Some("$edgeHub")),
    );
    assert_eq!(r.input.files[0].format, "resource-logs");
    for path in [
        "replay/la-azurediagnostics-export.json",
        "replay/la-azurediagnostics-export.csv",
    ] {
        let (_, r) = replay_inputs(&[(path, fixture(path))], &[mins(2), mins(5)]);
        check_pump_history(path, &r, &Identity::new("contosohub", "twin,ned", None));
        assert_eq!(r.input.ignored, 1, "{path}: the c2dCommands row");
    }
    let (_, r) = replay_inputs(
        &[(
            "csv.gz",
            gzip(&fixture("replay/la-azurediagnostics-export.csv")),
        )],
        &[mins(5)],
    );
    assert_eq!(r.input.files[0].format, "log-analytics-csv");
    assert_eq!(r.input.events, 7);
}

#[test]
fn replay_log_analytics_query_api_answer_replays_like_the_csv_export() {
    let api_path = "replay/la-query-api-response.json";
    let csv_path = "replay/la-azurediagnostics-export.csv";
    let (_, api) = replay_inputs(&[(api_path, fixture(api_path))], &[mins(2), mins(5)]);
    check_pump_history(
        api_path,
        &api,
        &Identity::new("contosohub", "twin,ned", None),
    );
    assert_eq!(api.input.ignored, 1, "the c2dCommands row");
    assert_eq!(api.input.rejected, 0, "{:?}", api.input.rejections);
    assert_eq!(api.input.files[0].format, "resource-logs");
    let (_, csv) = replay_inputs(&[(csv_path, fixture(csv_path))], &[mins(2), mins(5)]);
    // Everything but the file names and formats is the same.
    let without_files = |r: &Report| {
        let mut v = serde_json::to_value(r).unwrap();
        v["input"]["files"] = Value::Null;
        v
    };
    assert_eq!(without_files(&api), without_files(&csv));
    // The same answer on one line (a JSONL file of answers) reads the same.
    let one_line: Value = serde_json::from_slice(&fixture(api_path)).unwrap();
    let (_, again) = replay_inputs(
        &[("answer.jsonl", format!("{one_line}\n").into_bytes())],
        &[mins(2), mins(5)],
    );
    assert_eq!(without_files(&again), without_files(&api));
    // A row of the wrong length is rejected, not misread.
    let mut short = one_line.clone();
    short["tables"][0]["rows"][0] = json!(["2026-11-27T10:00:00Z"]);
    let (_, r) = replay_inputs(
        &[("short.json", short.to_string().into_bytes())],
        &[mins(5)],
    );
    assert_eq!((r.input.events, r.input.rejected), (6, 1));
    assert!(
        r.input.rejections[0].contains("not an array of 13 cells"),
        "{:?}",
        r.input.rejections
    );
}

#[test]
fn replay_refuses_files_that_are_neither_json_nor_an_export() {
    let mut loader = input::Loader::new();
    let err = loader
        .add("notes.txt", false, b"hello,world\n1,2\n", &mut |_| {})
        .unwrap_err();
    assert!(
        err.contains("notes.txt") && err.contains("OperationName"),
        "{err}"
    );
    let err = loader
        .add("broken.json", false, b"{\"a\": 1,\n \"b\": }", &mut |_| {})
        .unwrap_err();
    assert!(err.contains("broken.json: not JSON at byte"), "{err}");
}

// ------------------------------------------------------------------------------------------------
// The engine is the production machine on a virtual clock

const T0: i64 = 1_795_773_600_000; // 2026-11-27T10:00:00Z

fn seq(n: u64) -> SequenceNumber {
    connmon::logs::synthetic_seq(n)
}

fn ev(slot: u32, connected: bool, n: u64, secs: i64) -> TimedEvent {
    let t = Timestamp(T0 + secs * 1000);
    TimedEvent {
        slot,
        kind: if connected {
            EventKind::Connected(seq(n))
        } else {
            EventKind::Disconnected(seq(n))
        },
        time: t,
        received_at: t,
    }
}

#[test]
fn replay_engine_sweeps_on_the_timer_and_keeps_the_core_rules() {
    let tl = Timeline {
        identities: vec![
            Identity::new("hub", "a", None),
            Identity::new("hub", "b", None),
        ],
        events: vec![
            ev(0, false, 1, 0),  // a: outage from 0
            ev(1, false, 1, 10), // b: token renewal
            ev(1, true, 2, 25),
            ev(0, false, 1, 40),   // a: duplicate
            ev(0, true, 3, 400),   // a: back
            ev(1, false, 3, 1000), // b: open at the end (younger than the grace)
            ev(1, true, 2, 1100),  // b: stale
            ev(1, false, 4, 1200),
        ],
    };
    let r = engine::run(
        &tl,
        &replay::policy(mins(5)),
        Duration::from_secs(30),
        &mut engine::Quiet,
    );
    let got: Vec<(AlertKind, &str, i64)> = r
        .alerts
        .iter()
        .map(|a| (a.kind, a.identity.device(), (a.detected_at.0 - T0) / 1000))
        .collect();
    assert_eq!(
        got,
        vec![
            (AlertKind::Disconnected, "a", 300),
            (AlertKind::Reconnected, "a", 400)
        ]
    );
    assert_eq!(
        (
            r.suppressed_reconnects,
            r.duplicates,
            r.stale,
            r.open_at_end
        ),
        (2, 1, 1, 1)
    );
    // The sweep runs on 30 s ticks: an outage due at 1 s past a tick is found at the next one.
    let tl = Timeline {
        identities: vec![Identity::new("hub", "c", None)],
        events: vec![ev(0, false, 1, 1), ev(0, true, 2, 400)],
    };
    let r = engine::run(
        &tl,
        &replay::policy(mins(5)),
        Duration::from_secs(30),
        &mut engine::Quiet,
    );
    assert_eq!((r.alerts[0].detected_at.0 - T0) / 1000, 330);
    assert_eq!(r.alerts[0].downtime_seconds, 329);
}

// ------------------------------------------------------------------------------------------------
// The fast JSONL path decodes exactly what the production decoder decodes

#[test]
fn replay_fast_path_agrees_with_the_production_decoder() {
    let base = json!({
        "id": "x", "topic": "/SUBSCRIPTIONS/S/RESOURCEGROUPS/R/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/HUB",
        "subject": "devices/d", "eventType": "Microsoft.Devices.DeviceDisconnected",
        "eventTime": "2026-11-27T10:00:00.1234567Z",
        "data": {"deviceConnectionStateEventInfo": {"sequenceNumber": "000000000000000001D4132452F67CE200000002000000000000000000000001"},
                 "hubName": "MyHub", "deviceId": "d-1", "moduleId": "$edgeHub"},
        "dataVersion": "1", "metadataVersion": "1"
    });
    let variants: Vec<(&str, Value)> = vec![
        ("data.moduleId", json!("")),
        ("data.moduleId", Value::Null),
        ("data.moduleId", json!(7)),
        ("data.deviceId", json!("")),
        ("data.deviceId", json!("a\u{1}b")),
        ("data.deviceId", json!("x".repeat(129))),
        ("data.deviceId", json!("quote\"d")),
        ("data.hubName", json!(" padded ")),
        ("data.hubName", json!("")),
        ("data.hubName", json!("hub\u{0}x")),
        ("data.hubName", json!("h".repeat(129))),
        ("eventTime", json!("2026-11-27T10:00:00+00:00")),
        ("eventTime", json!("2026-11-27T10:00:00+02:00")),
        ("eventTime", json!("2024-02-29T23:59:59.999Z")),
        ("eventTime", json!("2026-02-29T10:00:00Z")),
        ("eventTime", json!("2026-11-27T10:00:00.Z")),
        ("eventTime", json!("not a time")),
        ("eventType", json!("Microsoft.Devices.DeviceConnected")),
        ("eventType", json!("Microsoft.Devices.DeviceCreated")),
        (
            "data.deviceConnectionStateEventInfo.sequenceNumber",
            json!("12"),
        ),
        // Members the fast path skips, of every JSON kind, and keys that make it step aside.
        (
            "extra",
            json!({"a": [1, -2, {"b": null}], "t": true, "f": false, "s": ""}),
        ),
        ("data.extra", json!([[], {}, 0, "x"])),
        ("data.deviceConnectionStateEventInfo.extra", json!(12345)),
        ("extra", json!(1.5)),
        ("extra", json!("with \"escapes\"")),
        ("records", json!([])),
        ("tables", json!([])),
        ("operationName", json!("deviceConnect")),
        ("data.deviceId", json!("dévice")),
        ("data", json!([])),
    ];
    let mut lines = vec![base.clone()];
    for (path, v) in variants {
        let mut e = base.clone();
        let mut at = &mut e;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            at = at.get_mut(*p).unwrap();
        }
        at[parts[parts.len() - 1]] = v;
        lines.push(e);
    }
    let mut fast_hits = 0;
    for line in &lines {
        let text = line.to_string();
        let general = match decode::decode_event(line.as_object().unwrap()) {
            Decoded::Event(e) => e.time.map(|t| (e.identity.clone(), e.kind, t)),
            _ => None,
        };
        if let Some(f) = fast::parse_line(text.as_bytes()) {
            fast_hits += 1;
            let fast = (Identity::new(f.hub, f.device, f.module), f.kind, f.time);
            assert_eq!(Some(fast), general, "{text}");
        }
    }
    assert!(
        fast_hits >= 9,
        "the common shapes take the fast path ({fast_hits})"
    );
}

#[test]
fn replay_parallel_jsonl_loads_like_the_sequential_general_path() {
    // A history whose lines take both paths: the same objects once as JSONL (parsed on all
    // threads, fast path where it can) and once as one JSON array (one line, the general path,
    // in order). Identities, events in order (ties included), counts and reports must agree.
    let sim = simulate::generate(&Config {
        identities: 200,
        outages: 3,
        ping_pong: 2,
        seed: 11,
        ..Config::default()
    });
    let mut objects = Vec::new();
    for (i, d) in sim.deliveries.iter().enumerate() {
        let mut e = simulate::event_grid_json(&sim, d);
        match i % 23 {
            0 => {
                e = json!({"specversion": "1.0", "id": e["id"], "type": e["eventType"],
                           "source": e["topic"], "subject": e["subject"], "time": e["eventTime"],
                           "data": e["data"]})
            }
            1 => e["data"]["hubName"] = json!("SIM-HUB"),
            // Not plain ASCII: the general path (an id may not hold it: IoT Hub ids are ASCII).
            2 => e["id"] = json!(format!("{}-é", e["id"].as_str().unwrap())),
            3 => e["eventType"] = json!("Microsoft.Devices.DeviceCreated"),
            4 => e["topic"] = json!(format!("{}\"", e["topic"].as_str().unwrap())),
            5 => {
                e = json!({"time": e["eventTime"], "resourceId": "/X/IOTHUBS/LOGHUB",
                           "operationName": "deviceConnect", "category": "Connections",
                           "properties": {"deviceId": format!("log-{}", i % 7)}})
            }
            _ => {}
        }
        objects.push(e);
    }
    let jsonl: Vec<String> = objects.iter().map(Value::to_string).collect();
    let jsonl = jsonl.join("\n").into_bytes();
    assert!(jsonl.len() > 2 << 20, "big enough for two chunks");
    let array = serde_json::to_vec(&objects).unwrap();
    let (par, par_report) = replay_inputs(&[("h.jsonl", jsonl)], &[mins(2), mins(5)]);
    let (seq, seq_report) = replay_inputs(&[("h.json", array)], &[mins(2), mins(5)]);
    assert_eq!(par.timeline.identities, seq.timeline.identities);
    assert_eq!(par.timeline.events, seq.timeline.events);
    assert_eq!(par.log_info, seq.log_info);
    assert!(par_report.input.ignored > 0 && par_report.input.events > 4_000);
    let without_files = |r: &Report| {
        let mut v = serde_json::to_value(r).unwrap();
        v["input"]["files"] = Value::Null;
        v
    };
    assert_eq!(without_files(&par_report), without_files(&seq_report));
}

#[test]
fn replay_fast_time_parser_agrees_with_rfc3339() {
    for s in [
        "2026-11-27T10:00:00Z",
        "2026-11-27T10:00:00.1Z",
        "2026-11-27T10:00:00.12Z",
        "2026-11-27T10:00:00.1234567Z",
        "2018-07-03T23:20:11.6921933+00:00",
        "1970-01-01T00:00:00Z",
        "2000-02-29T12:34:56.789Z",
        "2100-12-31T23:59:59.999999999Z",
    ] {
        assert_eq!(fast::parse_time(s), Timestamp::parse_rfc3339(s), "{s}");
        assert!(fast::parse_time(s).is_some(), "{s}");
    }
}

// ------------------------------------------------------------------------------------------------
// Simulate → replay, scored against ground truth

fn sdk_fleet(seed: u64) -> Config {
    Config {
        identities: 300,
        outages: 0,
        ping_pong: 0,
        seed,
        ..Config::default()
    }
}

fn loaded_from(sim: &simulate::Simulation) -> input::Loaded {
    let tl = simulate::timeline(sim);
    input::Loaded {
        log_info: vec![Default::default(); tl.identities.len()],
        timeline: tl,
        ordered_by: Some(input::OrderedBy::Sequence),
        ..Default::default()
    }
}

fn score_at(sim: &simulate::Simulation, grace: Duration) -> simulate::Score {
    let r = engine::run(
        &simulate::timeline(sim),
        &replay::policy(grace),
        Duration::from_secs(30),
        &mut engine::Quiet,
    );
    simulate::score(&sim.truth, &r.alerts, grace)
}

#[test]
fn replay_simulated_sdk_fleet_has_no_false_alert_at_the_recommended_grace() {
    for seed in [1, 2, 3] {
        let sim = simulate::generate(&sdk_fleet(seed));
        assert!(sim.truth.published > 5_000, "a day of 300 devices");
        let report = replay::analyse(&loaded_from(&sim), &Options::default());
        let rec = Duration::from_secs(report.recommended_grace_seconds as u64);
        assert!(
            (mins(2)..=mins(7)).contains(&rec),
            "seed {seed}: {}",
            report.recommendation
        );
        let s = score_at(&sim, rec);
        assert_eq!(
            s.false_alerts, 0,
            "seed {seed} at {rec:?}: {:?}",
            s.false_alert_samples
        );
        // Each SDK's rhythm is recognised.
        for (sdk, label) in [
            (Sdk::Node, "Node.js"),
            (Sdk::C, "C ("),
            (Sdk::Dotnet, ".NET"),
        ] {
            let ids: Vec<&str> = sim
                .truth
                .devices
                .iter()
                .filter(|d| d.sdk == sdk)
                .map(|d| d.device_id.as_str())
                .collect();
            let right = report
                .identities
                .iter()
                .filter(|i| ids.contains(&i.device_id.as_str()))
                .filter(|i| {
                    i.sdk_by_cadence
                        .as_deref()
                        .is_some_and(|s| s.starts_with(label))
                })
                .count();
            assert!(
                right * 10 >= ids.len() * 9,
                "seed {seed}: {sdk:?} {right} of {}",
                ids.len()
            );
        }
    }
}

#[test]
fn replay_simulated_outages_longer_than_grace_plus_2m_are_all_detected() {
    let cfg = Config {
        identities: 200,
        outages: 40,
        outage_durations: vec![mins(3), mins(6), mins(8), mins(12), mins(45)],
        ping_pong: 3,
        seed: 7,
        ..Config::default()
    };
    let sim = simulate::generate(&cfg);
    for g in [mins(2), mins(5), mins(10)] {
        let s = score_at(&sim, g);
        assert!(s.outages_longer_than_grace_plus_2m > 0, "{g:?}");
        assert_eq!(s.missed_outages, 0, "{g:?}: {s:?}");
        // Alerted within grace + sweep + delivery of the real start.
        let max = s.detection_delay_max_seconds.unwrap();
        assert!(max <= g.as_secs() as i64 + 30 + 5, "{g:?}: {max}");
    }
    // Ping-pong identities are reported as duplicate-identity suspects.
    let report = replay::analyse(&loaded_from(&sim), &Options::default());
    for p in &sim.truth.duplicate_identities {
        assert!(
            report
                .duplicate_identity_suspects
                .iter()
                .any(|s| s.device_id == p.device_id),
            "{} not suspected: {:?}",
            p.device_id,
            report.duplicate_identity_suspects
        );
    }
}

#[test]
fn replay_of_the_simulate_command_output_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (events, truth) = (
        dir.path().join("events.jsonl"),
        dir.path().join("truth.json"),
    );
    let (stdout, _) = connmon_ok(&[
        os("simulate"),
        os("--identities"),
        os("50"),
        os("--outages"),
        os("4"),
        os("--outage-durations"),
        os("20m"),
        os("--out"),
        events.as_os_str(),
        os("--truth"),
        truth.as_os_str(),
    ]);
    assert!(
        stdout.contains("0 of 4 outages longer than grace + 2m missed"),
        "{stdout}"
    );
    let truth: Value = serde_json::from_slice(&std::fs::read(&truth).unwrap()).unwrap();
    let html = dir.path().join("report.html");
    let (stdout, _) = connmon_ok(&[
        os("replay"),
        events.as_os_str(),
        os("--grace"),
        os("2m,5m"),
        os("--json"),
        os("--html"),
        html.as_os_str(),
    ]);
    let r: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["input"]["ordered_by"], "sequence");
    assert_eq!(r["input"]["identities"], 50);
    assert_eq!(r["input"]["events"], truth["truth"]["deliveries"]);
    assert!(r["recommendedGraceSeconds"].as_i64().unwrap() > 0);
    assert!(r["flapping"].is_array() && r["duplicateIdentitySuspects"].is_array());
    let g5 = r["gracePeriods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["graceSeconds"] == 300)
        .unwrap();
    assert!(g5["suppressedReconnects"].as_u64().unwrap() > 100);
    // Every real outage alerted once, with the webhook's alert objects.
    let disconnected: Vec<&Value> = g5["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "disconnected")
        .collect();
    let outages = truth["truth"]["outages"].as_array().unwrap();
    for o in outages {
        let hit = disconnected
            .iter()
            .find(|a| a["deviceId"] == o["deviceId"])
            .unwrap_or_else(|| panic!("{o} missed"));
        for key in ALERT_FIELDS {
            assert!(hit.get(key).is_some(), "{key} in {hit}");
        }
    }
    assert!(html.exists());
}

#[test]
fn replay_simulate_posts_to_a_running_connmon() {
    let cm = Connmon::standalone(&[
        ("CONNMON_GRACE_PERIOD", "5m"),
        ("CONNMON_SWEEP_INTERVAL", "1h"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let truth = dir.path().join("truth.json");
    let target = format!("http://127.0.0.1:{}/api/events", cm.port);
    let (stdout, stderr) = connmon_ok(&[
        os("simulate"),
        os("--identities"),
        os("20"),
        os("--length"),
        os("3h"),
        os("--outages"),
        os("0"),
        os("--batch"),
        os("50"),
        os("--out"),
        os("-"),
        os("--target"),
        os(&target),
        os("--truth"),
        truth.as_os_str(),
    ]);
    let lines = stdout.lines().count() as u64;
    let truth: Value = serde_json::from_slice(&std::fs::read(&truth).unwrap()).unwrap();
    assert_eq!(lines, truth["truth"]["deliveries"].as_u64().unwrap());
    assert!(stderr.contains(&format!("posted {lines} events")));
    // The running service and the replay engine, fed the same deliveries in the same order,
    // agree event for event: they are the same machine.
    let sim = simulate::generate(&Config {
        identities: 20,
        length: Duration::from_secs(3 * 3600),
        outages: 0,
        ..Config::default()
    });
    assert_eq!(sim.deliveries.len() as u64, lines);
    let r = engine::run(
        &simulate::timeline(&sim),
        &replay::policy(mins(5)),
        Duration::from_secs(30),
        &mut engine::Quiet,
    );
    let c = cm.counters();
    let counter = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{k} in {c}"));
    assert_eq!(
        (
            counter("eventsApplied"),
            counter("duplicates"),
            counter("stale")
        ),
        (lines - r.duplicates - r.stale, r.duplicates, r.stale),
        "{c}"
    );
    assert!(
        r.stale + r.duplicates > 0,
        "delivery reordered or repeated something"
    );
}

// ------------------------------------------------------------------------------------------------
// The report: HTML, text, command line

/// The HTML report parsed as XML (it is well-formed on purpose), with its doctype.
fn parse_page(page: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse_with_options(
        page,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{page}"))
}

#[test]
fn replay_html_report_renders_with_the_histogram_and_grace_line() {
    let mut history = fixture("replay/resource-logs-properties-string.jsonl");
    // An id that would break HTML if spliced in.
    history.extend_from_slice(br#"{"time":"2026-11-27T12:00:00Z","resourceId":"/X/IOTHUBS/CONTOSOHUB","operationName":"deviceDisconnect","category":"Connections","properties":{"deviceId":"<script>alert('x')&amp;"}}"#);
    history.push(b'\n');
    history.extend_from_slice(br#"{"time":"2026-11-27T12:20:00Z","resourceId":"/X/IOTHUBS/CONTOSOHUB","operationName":"deviceConnect","category":"Connections","properties":{"deviceId":"<script>alert('x')&amp;"}}"#);
    let (_, report) = replay_inputs(&[("h", history)], &[mins(2), mins(10)]);
    let page = replay::html::render(&report);
    assert!(!page.contains("<script>"));
    assert!(
        !page.contains("http://")
            || page.matches("http://").all(|_| true) && !page.contains("src="),
        "no external assets"
    );
    let doc = parse_page(&page);
    let svg = doc
        .descendants()
        .find(|n| n.tag_name().name() == "svg")
        .expect("an SVG histogram");
    assert!(
        svg.descendants()
            .filter(|n| n.attribute("class") == Some("bar"))
            .count()
            >= 2
    );
    let line = svg
        .descendants()
        .find(|n| n.attribute("id") == Some("grace-line"))
        .expect("the grace line");
    assert_eq!(
        line.attribute("data-grace-seconds"),
        Some(report.recommended_grace_seconds.to_string().as_str())
    );
    let others = svg
        .descendants()
        .filter(|n| n.attribute("class") == Some("grace"))
        .count();
    assert_eq!(report.grace_periods.len(), 2, "2m (recommended) and 10m");
    assert_eq!(others, 1, "the other grace period, dashed");
    let text: String = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(
        text.contains("<script>alert('x')&amp;"),
        "the id is shown, as text"
    );
}

#[test]
fn replay_text_report_says_how_it_ordered() {
    let (_, r) = replay_inputs(
        &[(
            "logs",
            fixture("replay/resource-logs-properties-string.jsonl"),
        )],
        &[mins(5)],
    );
    let text = r.to_text();
    assert!(
        text.contains("ordered by TIME: resource logs carry no sequence numbers"),
        "{text}"
    );
    assert!(text.contains("Recommended grace period: 2m"), "{text}");
    assert!(
        text.contains("grace 5m: 1 disconnected, 1 reconnected"),
        "{text}"
    );
    assert!(text.contains("400027"), "{text}");
}

#[test]
fn replay_flags_carry_the_services_flapping_and_reminder_settings() {
    let sim = simulate::generate(&Config {
        identities: 60,
        outages: 3,
        outage_durations: vec![mins(45)],
        ping_pong: 2,
        seed: 3,
        ..Config::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl");
    let lines: Vec<String> = sim
        .deliveries
        .iter()
        .map(|d| simulate::event_grid_json(&sim, d).to_string())
        .collect();
    std::fs::write(&history, lines.join("\n")).unwrap();
    let replay = |extra: &[&str]| -> Value {
        let mut args = vec![os("replay"), history.as_os_str(), os("--grace"), os("5m")];
        args.extend(extra.iter().map(|a| os(a)));
        args.push(os("--json"));
        serde_json::from_str(&connmon_ok(&args).0).unwrap()
    };
    let count = |r: &Value, kind: &str| {
        r["gracePeriods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["graceSeconds"] == 300)
            .unwrap()["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["kind"] == kind)
            .count()
    };
    let default = replay(&[]);
    assert_eq!(
        default["policy"],
        json!({"flapThreshold": 5, "flapWindowSeconds": 1800, "remindEverySeconds": null})
    );
    let flapping = count(&default, "flapping");
    assert!(flapping > 0, "the ping-pong identities flap");
    assert_eq!(count(&default, "reminder"), 0);
    // A threshold no reconnect rhythm reaches: no flapping at all.
    let strict = replay(&["--flap-threshold", "64"]);
    assert_eq!(strict["policy"]["flapThreshold"], 64);
    assert_eq!(count(&strict, "flapping"), 0);
    assert!(strict["flapping"].as_array().unwrap().is_empty());
    // A looser rule (two silent reconnects in two hours) flags more identities.
    let loose = replay(&["--flap-threshold=2", "--flap-window", "2h"]);
    assert_eq!(loose["policy"]["flapWindowSeconds"], 7200);
    assert!(count(&loose, "flapping") > flapping);
    // Reminders for the 45-minute outages, the same outages alerted.
    let remind = replay(&["--remind-every", "10m"]);
    assert_eq!(remind["policy"]["remindEverySeconds"], 600);
    assert!(
        count(&remind, "reminder") >= 3 * 3,
        "three outages, 40 minutes past grace"
    );
    assert_eq!(
        count(&remind, "disconnected"),
        count(&default, "disconnected")
    );
    let (text, _) = connmon_ok(&[
        os("replay"),
        history.as_os_str(),
        os("--flap-threshold"),
        os("3"),
        os("--remind-every"),
        os("1h"),
    ]);
    assert!(
        text.contains("flapping at 3 silent reconnects in 30m; reminders every 1h"),
        "{text}"
    );
    // Out of the service's ranges: refused, naming the range.
    for (flag, v, says) in [
        ("--flap-threshold", "1", "from 2 to 64"),
        ("--flap-threshold", "x", "not a whole number"),
        ("--flap-window", "30s", "from 1m to 7d"),
        ("--remind-every", "31d", "from 1m to 30d"),
    ] {
        let out = connmon(&[os("replay"), history.as_os_str(), os(flag), os(v)]);
        assert_eq!(out.status.code(), Some(2), "{flag} {v}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains(says), "{err}");
    }
}

/// A history over the 32 MB at which the progress bar starts: one simulated day of 200 devices,
/// copied onto twelve hubs (so the copies are other identities, not duplicates).
fn history_over_32_mb(path: &std::path::Path) {
    let sim = simulate::generate(&Config {
        identities: 200,
        outages: 2,
        ..Config::default()
    });
    let day: Vec<String> = sim
        .deliveries
        .iter()
        .map(|d| simulate::event_grid_json(&sim, d).to_string())
        .collect();
    let day = day.join("\n") + "\n";
    let mut text = String::new();
    for hub in 0..12 {
        text.push_str(&day.replace("\"sim-hub\"", &format!("\"hub-{hub}\"")));
    }
    assert!(text.len() > 32 << 20, "{} bytes", text.len());
    std::fs::write(path, text).unwrap();
}

#[test]
fn replay_progress_bar_is_drawn_on_a_terminal_only() {
    // A real pseudo-terminal: util-linux `script` runs the command with its standard streams on a
    // new pty and copies what the terminal shows to its own stdout.
    let script = Command::new("script").arg("--version").output();
    assert!(
        script.is_ok_and(|o| o.status.success()),
        "this test needs `script` from util-linux (Debian: apt-get install bsdutils) to give \
         connmon a terminal"
    );
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl");
    history_over_32_mb(&history);
    let report = dir.path().join("report.json");
    let command = format!(
        "'{}' replay '{}' --json > '{}'",
        env!("CARGO_BIN_EXE_connmon"),
        history.display(),
        report.display()
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{terminal}");
    // Only stderr is on the terminal (stdout went to the file): the bar, redrawn with \r, ending
    // full, then a new line.
    let full = format!("[{}] 100.0% of ", "#".repeat(40));
    assert!(terminal.contains(&full), "{terminal:?}");
    assert!(terminal.starts_with('\r'), "{terminal:?}");
    assert!(terminal.trim_end().ends_with(" MB"), "{terminal:?}");
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["input"]["identities"], 12 * 200);

    // Standard error not a terminal: not a byte of the bar.
    let out = connmon(&[os("replay"), history.as_os_str(), os("--json")]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    let piped: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(piped, r, "the same report either way");
}

#[test]
fn replay_command_line_errors_and_help() {
    let run = |args: &[&str]| connmon(&args.iter().map(|a| os(a)).collect::<Vec<_>>());
    let out = run(&["replay"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least one FILE"));
    let out = run(&["replay", "--grace", "soon", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--grace: `soon` is not a duration"));
    let out = run(&["replay", "/nonexistent/history.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    let out = run(&["simulate", "--sdk-mix", "cobol=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown SDK `cobol`"));
    for args in [
        &["replay", "--help"][..],
        &["simulate", "--help"],
        &["help"],
    ] {
        let out = run(args);
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("usage:"),
            "{args:?}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// Who is still offline when the history ends, and `--until`

/// A Connections resource log (the format of `replay/resource-logs-properties-string.jsonl`) whose
/// history ends at 10:45: `pump-7` disconnects at 10:30:02.5 with a reason and never comes back,
/// `valve-1` reconnects within seconds, `sensor-3` disconnects at 10:44 (no reason given) and is
/// still inside a 2-minute grace when the history ends.
fn history_ending_offline(dir: &std::path::Path) -> std::path::PathBuf {
    let record = |time: &str, op: &str, device: &str, result: Option<(&str, &str)>| {
        let mut r = json!({"time": time, "resourceId": "/SUBSCRIPTIONS/X/RESOURCEGROUPS/Y/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/CONTOSOHUB",
            "operationName": op, "category": "Connections",
            "properties": json!({"deviceId": device, "protocol": "Mqtt"}).to_string()});
        if let Some((code, description)) = result {
            r["resultType"] = json!(code);
            r["resultDescription"] = json!(description);
        }
        r.to_string()
    };
    let closed = Some(("404104", "DeviceConnectionClosedRemotely"));
    let lines = [
        record("2026-11-27T10:00:00Z", "deviceConnect", "pump-7", None),
        record("2026-11-27T10:00:00Z", "deviceConnect", "valve-1", None),
        record("2026-11-27T10:00:00Z", "deviceConnect", "sensor-3", None),
        record(
            "2026-11-27T10:30:02.5Z",
            "deviceDisconnect",
            "pump-7",
            closed,
        ),
        record(
            "2026-11-27T10:40:00Z",
            "deviceDisconnect",
            "valve-1",
            closed,
        ),
        record("2026-11-27T10:40:05Z", "deviceConnect", "valve-1", None),
        record("2026-11-27T10:44:00Z", "deviceDisconnect", "sensor-3", None),
        record("2026-11-27T10:45:00Z", "deviceConnect", "valve-1", None),
    ];
    let path = dir.join("connections.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn replay_json(args: &[&str]) -> Value {
    let (stdout, _) = connmon_ok(&args.iter().map(|a| os(a)).collect::<Vec<_>>());
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The `stillOffline` entries as (device, since, reason, alertedAt).
fn still_offline(r: &Value) -> Vec<(String, String, Value, Value)> {
    r["stillOffline"]
        .as_array()
        .unwrap_or_else(|| panic!("no stillOffline in {r:#}"))
        .iter()
        .map(|s| {
            (
                s["deviceId"].as_str().unwrap().to_string(),
                s["since"].as_str().unwrap().to_string(),
                s["reason"].clone(),
                s["alertedAt"].clone(),
            )
        })
        .collect()
}

#[test]
fn replay_names_who_is_still_offline_when_the_history_ends() {
    let dir = tempfile::tempdir().unwrap();
    let history = history_ending_offline(dir.path());
    let file = history.to_str().unwrap();
    let r = replay_json(&["replay", file, "--grace", "2m", "--json"]);
    assert_eq!(
        r["input"]["until"], "2026-11-27T10:45:00Z",
        "the last event"
    );
    assert_eq!(
        still_offline(&r),
        vec![
            (
                "pump-7".to_string(),
                "2026-11-27T10:30:02.500Z".to_string(),
                json!("404104 DeviceConnectionClosedRemotely"),
                json!("2026-11-27T10:32:30Z")
            ),
            (
                "sensor-3".to_string(),
                "2026-11-27T10:44:00Z".to_string(),
                Value::Null,
                Value::Null
            ),
        ]
    );
    assert_eq!(r["stillOffline"][0]["offlineSeconds"], 897);
    assert_eq!(r["stillOffline"][0]["hub"], "contosohub");
    // The old count stays: sensor-3 is open, without an alert, at the end.
    assert_eq!(r["gracePeriods"][0]["openAtEnd"], 1);

    let (text, _) = connmon_ok(&[os("replay"), os(file), os("--grace"), os("2m")]);
    assert!(
        text.contains("Still offline when the clock stopped (2026-11-27T10:45:00Z; alerts at the recommended grace): 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "  contosohub/\"pump-7\" offline since 2026-11-27T10:30:02.500Z (for 14m57s), \
             404104 DeviceConnectionClosedRemotely; alerted at 2026-11-27T10:32:30Z"
        ),
        "{text}"
    );
    assert!(
        text.contains("  contosohub/\"sensor-3\" offline since 2026-11-27T10:44:00Z (for 1m); not alerted yet"),
        "{text}"
    );

    let page = dir.path().join("report.html");
    connmon_ok(&[
        os("replay"),
        os(file),
        os("--grace"),
        os("2m"),
        os("--html"),
        page.as_os_str(),
    ]);
    let page = std::fs::read_to_string(&page).unwrap();
    let doc = parse_page(&page);
    let table = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("still-offline"))
        .unwrap_or_else(|| panic!("no still-offline table in {page}"));
    let rows: Vec<Vec<String>> = table
        .children()
        .filter(|n| n.tag_name().name() == "tr")
        .skip(1)
        .map(|tr| {
            tr.children()
                .filter(|n| n.tag_name().name() == "td")
                .map(|td| {
                    td.descendants()
                        .filter(|n| n.is_text())
                        .filter_map(|n| n.text())
                        .collect()
                })
                .collect()
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            vec![
                "contosohub / pump-7",
                "2026-11-27T10:30:02.500Z",
                "14m57s",
                "404104 DeviceConnectionClosedRemotely",
                "2026-11-27T10:32:30Z"
            ],
            vec![
                "contosohub / sensor-3",
                "2026-11-27T10:44:00Z",
                "1m",
                "-",
                "not yet"
            ],
        ]
    );
}

#[test]
fn replay_until_runs_the_clock_on_so_pending_outages_alert() {
    let dir = tempfile::tempdir().unwrap();
    let history = history_ending_offline(dir.path());
    let file = history.to_str().unwrap();
    let until = "2026-11-27T10:50:00Z";
    let r = replay_json(&["replay", file, "--grace", "2m", "--until", until, "--json"]);
    assert_eq!(r["input"]["until"], until);
    assert_eq!(r["input"]["to"], "2026-11-27T10:45:00Z", "the last event");
    let g = &r["gracePeriods"][0];
    assert_eq!(g["openAtEnd"], 0, "{g:#}");
    let sensor: Vec<&Value> = g["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["deviceId"] == "sensor-3")
        .collect();
    assert_eq!(sensor.len(), 1, "{g:#}");
    assert_eq!(sensor[0]["kind"], "disconnected");
    // Due at 10:46:00, a tick of the 30 s sweep: the alert the service would have sent then.
    assert_eq!(sensor[0]["detectedAt"], "2026-11-27T10:46:00Z");
    let offline = still_offline(&r);
    assert_eq!(offline.len(), 2);
    assert_eq!(offline[1].3, json!("2026-11-27T10:46:00Z"));
    assert_eq!(r["stillOffline"][0]["offlineSeconds"], 1197);

    // A time the sweeps reach only later than the outage is due: still one alert, not more.
    let r = replay_json(&[
        "replay",
        file,
        "--grace",
        "2m",
        "--until",
        "2026-11-28T10:50:00Z",
        "--json",
    ]);
    assert_eq!(r["gracePeriods"][0]["disconnected"], 2);

    let run = |args: &[&str]| connmon(&args.iter().map(|a| os(a)).collect::<Vec<_>>());
    let out = run(&["replay", file, "--until", "2026-11-27T10:44:59Z"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "--until 2026-11-27T10:44:59Z is before the last event (2026-11-27T10:45:00Z)"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["replay", file, "--until", "yesterday"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("--until: `yesterday` is not an RFC 3339 time"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replay_of_event_grid_names_who_is_still_offline_without_a_reason() {
    // Event Grid events carry no reason for a disconnect.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.json");
    let mut event: Value =
        serde_json::from_slice(&fixture("events/eg-docs-device-connected.json")).unwrap();
    event = event[0].take();
    event["eventType"] = json!("Microsoft.Devices.DeviceDisconnected");
    std::fs::write(&path, event.to_string()).unwrap();
    let r = replay_json(&["replay", path.to_str().unwrap(), "--json"]);
    let offline = r["stillOffline"].as_array().expect("stillOffline");
    assert_eq!(offline.len(), 1, "{r:#}");
    assert_eq!(offline[0]["deviceId"], "LogicAppTestDevice");
    assert_eq!(offline[0]["moduleId"], "DeviceModuleID");
    assert_eq!(offline[0]["reason"], Value::Null);
    assert_eq!(offline[0]["since"], r["input"]["until"]);
    assert_eq!(offline[0]["offlineSeconds"], 0);
}
