//! The decoder against every fixture in `tests/fixtures/` (real payloads from documentation, SDK
//! fixtures and captured hosts) and against the malformed inputs rule 8 talks about.

use connmon::decode::{self, Decoded};
use connmon::model::{EventKind, Identity, SequenceNumber, Timestamp};
use serde_json::{json, Value};

fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn delivery(path: &str) -> Vec<Decoded> {
    let v = decode::parse_json(&fixture(path)).expect("fixture is JSON");
    decode::decode_delivery(&v).expect("fixture is an accepted delivery")
}

const DOC_SEQ: &str = "000000000000000001D4132452F67CE200000002000000000000000000000001";

fn event(d: &Decoded) -> &connmon::model::ConnectionEvent {
    match d {
        Decoded::Event(e) => e,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[test]
fn every_event_fixture_has_an_asserted_outcome() {
    let dir = format!("{}/tests/fixtures/events", env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let checked = [
        "ce-docs-device-connected.json",
        "ce-docs-device-created.json",
        "eg-cosmos-tutorial-device-connected.json",
        "eg-deadletter-envelope-docs.json",
        "eg-docs-device-connected.json",
        "eg-docs-device-created.json",
        "eg-validation-event-docs-with-validationUrl.json",
        "eg-validation-response-docs.json",
        "log-connections-docs-template.json",
        "log-connections-tutorial-2018-concatenated.jsonl.txt",
    ];
    assert_eq!(names, checked, "a new fixture needs an assertion below");
}

#[test]
fn event_grid_docs_device_connected_is_a_module_connect() {
    let items = delivery("events/eg-docs-device-connected.json");
    assert_eq!(items.len(), 1);
    let e = event(&items[0]);
    // The sample names a module in `data` although its subject names a plain device: data wins.
    assert_eq!(
        e.identity,
        Identity::new("egtesthub1", "LogicAppTestDevice", Some("DeviceModuleID"))
    );
    assert_eq!(
        e.kind,
        EventKind::Connected(SequenceNumber::parse(DOC_SEQ).unwrap())
    );
    assert_eq!(e.time, Timestamp::parse_rfc3339("2018-06-02T19:17:44.438Z"));
    assert_eq!(e.event_id, "f6bbf8f4-d365-520d-a878-17bf7238abd8");
}

#[test]
fn cloudevents_docs_device_connected_decodes_like_event_grid() {
    let eg = delivery("events/eg-docs-device-connected.json");
    let ce = delivery("events/ce-docs-device-connected.json");
    assert_eq!(eg, ce);
}

#[test]
fn cosmos_tutorial_event_has_empty_module_and_offset_time() {
    let items = delivery("events/eg-cosmos-tutorial-device-connected.json");
    let e = event(&items[0]);
    assert_eq!(
        e.identity,
        Identity::new("myiothub", "48e44e11-1437-4907-83b1-4a8d7e89859e", None)
    );
    assert_eq!(e.identity.hub(), "myiothub", "hub folded to lower case");
    assert_eq!(
        e.identity.module(),
        None,
        "moduleId \"\" is a device-level identity"
    );
    assert_eq!(e.time, Timestamp::parse_rfc3339("2018-07-03T23:20:11.692Z"));
}

#[test]
fn device_created_is_ignored_in_both_schemas() {
    for f in [
        "events/eg-docs-device-created.json",
        "events/ce-docs-device-created.json",
    ] {
        assert_eq!(
            delivery(f),
            [Decoded::Ignored {
                event_type: "Microsoft.Devices.DeviceCreated".into()
            }],
            "{f}"
        );
    }
}

#[test]
fn dead_lettered_blob_event_is_rejected_as_unknown_type_not_a_bad_body() {
    let items = delivery("events/eg-deadletter-envelope-docs.json");
    match &items[..] {
        [Decoded::Rejected { reason, event_id }] => {
            assert!(
                reason.contains("unknown event type `Microsoft.Storage.BlobCreated`"),
                "{reason}"
            );
            assert_eq!(
                event_id.as_deref(),
                Some("93902694-901e-008f-6f95-7153a806873c")
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn validation_event_yields_its_code() {
    assert_eq!(
        delivery("events/eg-validation-event-docs-with-validationUrl.json"),
        [Decoded::Validation {
            code: "512d38b6-c7b8-40c8-89fe-f46f9e9622b6".into()
        }]
    );
    // The documented response is exactly what the webhook answers.
    let resp: Value =
        serde_json::from_slice(&fixture("events/eg-validation-response-docs.json")).unwrap();
    assert_eq!(
        resp,
        json!({"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    );
}

#[test]
fn validation_response_fixture_is_not_an_envelope() {
    let v = decode::parse_json(&fixture("events/eg-validation-response-docs.json")).unwrap();
    let e = decode::decode_delivery(&v).unwrap_err();
    assert!(e.0.contains("no string `eventType` or `type`"), "{e}");
}

#[test]
fn connection_log_exports_are_not_event_grid_deliveries() {
    // Resource-log records are a different format (for a later replay tool); as a webhook body the
    // `{"records": [...]}` wrapper is refused with a reason, and concatenated objects are not JSON.
    let v = decode::parse_json(&fixture("events/log-connections-docs-template.json")).unwrap();
    assert!(decode::decode_delivery(&v).is_err());
    let e = decode::parse_json(&fixture(
        "events/log-connections-tutorial-2018-concatenated.jsonl.txt",
    ))
    .unwrap_err();
    assert!(e.0.starts_with("body is not valid JSON"), "{e}");
}

#[test]
fn derived_host_invocation_decodes_through_two_string_layers() {
    let v = decode::parse_json(&fixture("host/eventgrid-invocation.derived.json")).unwrap();
    let items = decode::decode_host_invocation(&v).unwrap();
    let e = event(&items[0]);
    assert_eq!(
        e.identity,
        Identity::new("MYIOTHUB", "48e44e11-1437-4907-83b1-4a8d7e89859e", None)
    );
    // Metadata's mangled eventTime ("07/03/2018 23:20:11") is never used.
    assert_eq!(e.time, Timestamp::parse_rfc3339("2018-07-03T23:20:11.692Z"));
}

/// The Event Grid fixture as the three encodings the host may use, single and as an array.
#[test]
fn host_envelope_accepts_object_string_and_string_in_string() {
    let ev: Value =
        serde_json::from_slice(&fixture("events/eg-cosmos-tutorial-device-connected.json"))
            .unwrap();
    let obj = ev[0].clone();
    let once = Value::String(serde_json::to_string_pretty(&obj).unwrap());
    let twice = Value::String(serde_json::to_string(&once).unwrap());
    let arr_twice = Value::String(serde_json::to_string(&Value::String(ev.to_string())).unwrap());
    let expected = decode::decode_delivery(&ev).unwrap();
    for (name, data) in [
        ("object", obj.clone()),
        ("string", once),
        ("string in string", twice),
        ("array", ev.clone()),
        ("array in string in string", arr_twice),
        ("array of strings", json!([obj.to_string()])),
    ] {
        let body = json!({"Data": {"eventGridEvent": data}, "Metadata": {"sys": {"MethodName": "ConnectionEvent"}}});
        assert_eq!(
            decode::decode_host_invocation(&body).unwrap(),
            expected,
            "{name}"
        );
    }
    // A differently named single binding and lower-case `data` are fine too.
    let body = json!({"data": {"myEvent": obj}});
    assert_eq!(decode::decode_host_invocation(&body).unwrap(), expected);
}

#[test]
fn host_envelope_errors_name_what_was_wrong() {
    let cases = [
        (json!([1, 2]), "not a JSON object"),
        (json!({"Metadata": {}}), "no `Data` object"),
        (json!({"Data": "x"}), "`Data` is not an object"),
        (json!({"Data": {}}), "no input binding"),
        (
            json!({"Data": {"a": {}, "b": {}}}),
            "none is named `eventGridEvent`",
        ),
        (
            json!({"Data": {"eventGridEvent": "{not json"}}),
            "does not hold JSON",
        ),
        (
            json!({"Data": {"eventGridEvent": 42}}),
            "neither an event object nor an array",
        ),
    ];
    for (body, want) in cases {
        let e = decode::decode_host_invocation(&body).unwrap_err();
        assert!(e.0.contains(want), "{body}: {e}");
    }
}

fn eg(event_type: &str, data: Value) -> Value {
    json!({"id": "e1", "topic": "/SUBSCRIPTIONS/S/RESOURCEGROUPS/R/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/IOT-DEMO",
           "subject": "devices/d1", "eventType": event_type, "eventTime": "2026-11-27T10:00:00Z",
           "data": data, "dataVersion": "1", "metadataVersion": "1"})
}

fn reason(v: &Value) -> String {
    match &decode::decode_delivery(&json!([v])).unwrap()[0] {
        Decoded::Rejected { reason, .. } => reason.clone(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn malformed_events_are_rejected_individually_with_a_reason() {
    let conn = "Microsoft.Devices.DeviceConnected";
    let seq = json!({"sequenceNumber": DOC_SEQ});
    let cases = [
        (
            eg(
                conn,
                json!({"hubName": "h", "deviceConnectionStateEventInfo": seq}),
            ),
            "`data.deviceId` is missing",
        ),
        (
            eg(
                conn,
                json!({"hubName": "h", "deviceId": 7, "deviceConnectionStateEventInfo": seq}),
            ),
            "not a string",
        ),
        (
            eg(
                conn,
                json!({"hubName": "h", "deviceId": "", "deviceConnectionStateEventInfo": seq}),
            ),
            "empty",
        ),
        (
            eg(conn, json!({"hubName": "h", "deviceId": "d"})),
            "sequenceNumber` is missing",
        ),
        (
            eg(
                conn,
                json!({"hubName": "h", "deviceId": "d", "deviceConnectionStateEventInfo": {"sequenceNumber": "12"}}),
            ),
            "64 hex digits",
        ),
        (
            eg(
                conn,
                json!({"hubName": "h", "deviceId": "d", "deviceConnectionStateEventInfo": {"sequenceNumber": "Z".repeat(64)}}),
            ),
            "non-hex",
        ),
        (
            eg(
                conn,
                json!({"hubName": "h", "deviceId": "x".repeat(129), "deviceConnectionStateEventInfo": seq}),
            ),
            "longer than 128",
        ),
        (
            eg(
                conn,
                json!({"hubName": "h", "deviceId": "a\nb", "deviceConnectionStateEventInfo": seq}),
            ),
            "control character",
        ),
        (eg(conn, json!("a string")), "no `data` object"),
        (
            eg("Contoso.Items.ItemSold", json!({})),
            "unknown event type",
        ),
        (json!({"id": "x", "data": {}}), "no string `eventType`"),
        (json!("just a string"), "not a JSON object"),
    ];
    for (ev, want) in cases {
        let r = reason(&ev);
        assert!(r.contains(want), "wanted {want:?} in {r:?}");
    }
}

#[test]
fn hub_falls_back_to_the_topic_and_ids_keep_special_characters() {
    let ev = eg(
        "Microsoft.Devices.DeviceDisconnected",
        json!({"deviceId": "a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p;q$r's", "moduleId": "$edgeHub",
               "deviceConnectionStateEventInfo": {"sequenceNumber": DOC_SEQ.to_lowercase()}}),
    );
    let items = decode::decode_delivery(&json!([ev])).unwrap();
    let e = event(&items[0]);
    assert_eq!(e.identity.hub(), "iot-demo");
    assert_eq!(e.identity.device(), "a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p;q$r's");
    assert_eq!(e.identity.module(), Some("$edgeHub"));
    assert_eq!(
        e.kind,
        EventKind::Disconnected(SequenceNumber::parse(DOC_SEQ).unwrap())
    );
}

#[test]
fn device_deleted_needs_no_sequence_number() {
    let ev = eg(
        "Microsoft.Devices.DeviceDeleted",
        json!({"twin": {"deviceId": "d1"}, "hubName": "H", "deviceId": "d1"}),
    );
    let items = decode::decode_delivery(&ev).unwrap();
    let e = event(&items[0]);
    assert_eq!(e.kind, EventKind::Deleted);
    assert_eq!(e.identity, Identity::new("h", "d1", None));
}

#[test]
fn missing_or_unreadable_event_time_is_left_to_receipt_time() {
    let mut ev = eg(
        "Microsoft.Devices.DeviceConnected",
        json!({"hubName": "h", "deviceId": "d", "deviceConnectionStateEventInfo": {"sequenceNumber": DOC_SEQ}}),
    );
    ev.as_object_mut().unwrap().remove("eventTime");
    assert_eq!(event(&decode::decode_delivery(&ev).unwrap()[0]).time, None);
    ev["eventTime"] = json!("06/10/2019 18:41:00");
    assert_eq!(event(&decode::decode_delivery(&ev).unwrap()[0]).time, None);
}

#[test]
fn body_level_errors() {
    assert!(decode::parse_json(b"").unwrap_err().0.contains("empty"));
    assert!(decode::parse_json(b"  \n").unwrap_err().0.contains("empty"));
    assert!(decode::parse_json(b"<xml/>")
        .unwrap_err()
        .0
        .contains("not valid JSON"));
    for v in [json!(1), json!("s"), json!(null), json!({"foo": 1})] {
        assert!(decode::decode_delivery(&v).is_err(), "{v}");
    }
    // An empty array is a (vacuous) delivery, not an error.
    assert_eq!(decode::decode_delivery(&json!([])).unwrap(), []);
}

#[test]
fn a_mixed_batch_decodes_item_by_item() {
    let good = eg(
        "Microsoft.Devices.DeviceConnected",
        json!({"hubName": "h", "deviceId": "d", "deviceConnectionStateEventInfo": {"sequenceNumber": DOC_SEQ}}),
    );
    let items =
        decode::decode_delivery(&json!([good, {"eventType": "Other.Thing", "data": {}}, 5, good]))
            .unwrap();
    let kinds: Vec<&str> = items
        .iter()
        .map(|d| match d {
            Decoded::Event(_) => "event",
            Decoded::Rejected { .. } => "rejected",
            Decoded::Ignored { .. } => "ignored",
            Decoded::Validation { .. } => "validation",
        })
        .collect();
    assert_eq!(kinds, ["event", "rejected", "rejected", "event"]);
}

#[test]
fn hub_names_and_rejection_lines_stay_short_and_on_one_line() {
    // Found by fuzz.rs (`body_decoders_never_panic_and_explain_every_refusal`): hub names were
    // taken as sent (control characters, any length) into identities, alerts and keys; an unknown
    // event type or an event id with a newline forged a log line of its own.
    let conn = "Microsoft.Devices.DeviceConnected";
    let seq = json!({"sequenceNumber": DOC_SEQ});
    let data =
        |hub: &str| json!({"hubName": hub, "deviceId": "d", "deviceConnectionStateEventInfo": seq});
    assert_eq!(
        reason(&eg(conn, data("hub\u{0}"))),
        format!("{conn}: `data.hubName` contains a control character")
    );
    assert_eq!(
        reason(&eg(conn, data(&"h".repeat(129)))),
        format!("{conn}: `data.hubName` is longer than 128 characters")
    );
    let mut from_topic = eg(
        conn,
        json!({"deviceId": "d", "deviceConnectionStateEventInfo": seq}),
    );
    from_topic["topic"] = json!("/SUBSCRIPTIONS/S/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/h\nx");
    assert_eq!(
        reason(&from_topic),
        format!("{conn}: the IoT hub named in `topic` contains a control character")
    );

    let rejected = |v: Value| match decode::decode_delivery(&json!([v])).unwrap().remove(0) {
        Decoded::Rejected { reason, event_id } => (reason, event_id.unwrap_or_default()),
        other => panic!("expected a rejection, got {other:?}"),
    };
    let (why, id) =
        rejected(json!({"id": format!("a\nb{}", "c".repeat(10_000)), "eventType": "x\ny"}));
    assert_eq!(why, "unknown event type `x\\ny`");
    assert_eq!(id, format!("a\\nb{}…", "c".repeat(96)));
    let (why, id) =
        rejected(json!({"id": "\u{1}".repeat(1000), "eventType": "\u{7f}".repeat(1000)}));
    assert!(
        why.chars().count() < 140 && id.chars().count() < 120,
        "{why} {id}"
    );

    // A hub name as IoT Hub sends it still decodes, folded to lower case.
    let ok = decode::decode_delivery(&json!([eg(conn, data("My-Hub"))])).unwrap();
    assert_eq!(event(&ok[0]).identity.hub(), "my-hub");
}

/// IoT Hub ids are at most 128 ASCII characters: the longest (128 `%`, the character the Table
/// keys escape) decodes, 128 emoji are rejected naming the rule, for device and module ids alike.
#[test]
fn ids_are_the_ascii_iot_hub_accepts_up_to_128_characters() {
    let conn = "Microsoft.Devices.DeviceConnected";
    let data = |device: &str, module: &str| {
        json!({"hubName": "h", "deviceId": device, "moduleId": module,
               "deviceConnectionStateEventInfo": {"sequenceNumber": DOC_SEQ}})
    };
    let long = "%".repeat(128);
    let ok = decode::decode_delivery(&json!([eg(conn, data(&long, &long))])).unwrap();
    let e = event(&ok[0]);
    assert_eq!(
        (e.identity.device(), e.identity.module()),
        (long.as_str(), Some(long.as_str()))
    );

    let emoji = "🔥".repeat(128);
    assert_eq!(
        reason(&eg(conn, data(&emoji, ""))),
        format!(
            "{conn}: `data.deviceId` contains a character that is not ASCII (IoT Hub ids are \
             ASCII letters, digits and `- : . + % _ # * ? ! ( ) , = @ ; $ '`)"
        )
    );
    assert!(reason(&eg(conn, data("d", "mödule")))
        .contains("`data.moduleId` contains a character that is not ASCII"));
    assert!(reason(&eg(conn, data("d", &format!("{long}%"))))
        .contains("`data.moduleId` is longer than 128"));
}
