//! Decoding every shape an event arrives in into [`Decoded`] items: Event Grid schema (array or
//! single object), CloudEvents 1.0 (single or batch), and the Functions host's invocation envelope
//! whose `Data.<binding>` holds the event as an object, a JSON string, or a JSON string holding a
//! JSON string (host-protocol.md).
//!
//! Two kinds of failure, kept apart on purpose (docs/rules.md §8):
//! - [`EnvelopeError`]: the body as a whole is not something we accept → HTTP 400;
//! - [`Decoded::Rejected`]: one event inside an accepted body cannot be understood → logged,
//!   counted and acknowledged, so one bad event never blocks a subscription.

use crate::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use serde_json::{Map, Value};
use std::fmt;

pub const TYPE_CONNECTED: &str = "Microsoft.Devices.DeviceConnected";
pub const TYPE_DISCONNECTED: &str = "Microsoft.Devices.DeviceDisconnected";
pub const TYPE_DELETED: &str = "Microsoft.Devices.DeviceDeleted";
pub const TYPE_VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
/// IoT Hub event types a subscription may carry that say nothing about connection state.
const TYPES_IGNORED: &[&str] = &[
    "Microsoft.Devices.DeviceCreated",
    "Microsoft.Devices.DeviceTelemetry",
];

/// The longest device or module id (or hub name) accepted. IoT Hub allows 128 for ids and 50 for
/// hub names.
pub const MAX_ID_LEN: usize = 128;

/// One item of a delivery, after decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Event(ConnectionEvent),
    /// Event Grid's webhook `SubscriptionValidationEvent`.
    Validation {
        code: String,
    },
    /// A well-formed event of a type connmon has no use for (DeviceCreated, DeviceTelemetry).
    Ignored {
        event_type: String,
    },
    /// An event that cannot be understood; `reason` names what was wrong.
    Rejected {
        reason: String,
        event_id: Option<String>,
    },
}

/// The body as a whole is not an accepted envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeError(pub String);

impl fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EnvelopeError {}

fn env_err(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError(msg.into())
}

/// Parses bytes as JSON, naming the problem when they are not.
pub fn parse_json(body: &[u8]) -> Result<Value, EnvelopeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(env_err("body is empty; expected JSON"));
    }
    serde_json::from_slice(body).map_err(|e| env_err(format!("body is not valid JSON: {e}")))
}

/// A direct Event Grid delivery (`POST /api/events`): an array of Event Grid or CloudEvents events,
/// or a single event object.
pub fn decode_delivery(body: &Value) -> Result<Vec<Decoded>, EnvelopeError> {
    match body {
        Value::Array(items) => Ok(items.iter().map(decode_event_value).collect()),
        Value::Object(obj) => {
            if event_type(obj).is_none() {
                return Err(env_err(
                    "body is neither an Event Grid event nor a CloudEvent: no string `eventType` or `type` field",
                ));
            }
            Ok(vec![decode_event(obj)])
        }
        _ => Err(env_err(
            "body must be a JSON array of events or a single event object",
        )),
    }
}

/// A Functions host invocation of the Event Grid trigger: `{"Data": {"<binding>": <event>}, ...}`.
/// The binding named `eventGridEvent` is used, or the only one there is.
pub fn decode_host_invocation(body: &Value) -> Result<Vec<Decoded>, EnvelopeError> {
    let data = host_data(body)?;
    let value = match get_ci(data, "eventGridEvent") {
        Some(v) => v,
        None if data.len() == 1 => data.values().next().expect("len is 1"),
        None if data.is_empty() => return Err(env_err("invocation `Data` has no input binding")),
        None => {
            return Err(env_err(format!(
                "invocation `Data` has {} bindings and none is named `eventGridEvent`",
                data.len()
            )))
        }
    };
    decode_host_value(unwrap_host_value(value.clone())?)
}

/// What the binding held, once its string layers are undone: one event object or an array.
fn decode_host_value(value: Value) -> Result<Vec<Decoded>, EnvelopeError> {
    match value {
        Value::Array(items) => Ok(items
            .into_iter()
            .map(|item| match unwrap_host_value(item) {
                Ok(v) => decode_event_value(&v),
                Err(e) => rejected(e.0, None),
            })
            .collect()),
        Value::Object(obj) => Ok(vec![decode_event(&obj)]),
        _ => Err(env_err(
            "invocation `Data.eventGridEvent` holds neither an event object nor an array of events",
        )),
    }
}

/// The `Data` object of a host invocation envelope (keys compared case-insensitively).
pub fn host_data(body: &Value) -> Result<&Map<String, Value>, EnvelopeError> {
    let obj = body
        .as_object()
        .ok_or_else(|| env_err("body is not a Functions invocation envelope: not a JSON object"))?;
    match get_ci(obj, "Data") {
        Some(Value::Object(d)) => Ok(d),
        Some(Value::Null) | None => Err(env_err(
            "body is not a Functions invocation envelope: no `Data` object",
        )),
        Some(_) => Err(env_err(
            "body is not a Functions invocation envelope: `Data` is not an object",
        )),
    }
}

/// Undoes the host's string encoding: a JSON string is parsed again, at most twice (the host
/// encodes the extension's JSON text as a string once more).
fn unwrap_host_value(mut value: Value) -> Result<Value, EnvelopeError> {
    for _ in 0..3 {
        match value {
            Value::String(s) => {
                value = serde_json::from_str(&s).map_err(|e| {
                    env_err(format!(
                        "invocation `Data.eventGridEvent` is a string that does not hold JSON: {e}"
                    ))
                })?;
            }
            other => return Ok(other),
        }
    }
    Err(env_err(
        "invocation `Data.eventGridEvent` is encoded as a string more than twice",
    ))
}

fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn event_type(obj: &Map<String, Value>) -> Option<&str> {
    obj.get("eventType")
        .and_then(Value::as_str)
        .or_else(|| obj.get("type").and_then(Value::as_str))
}

/// The event's `id` goes into the log line with the reason: clipped like any other input.
fn rejected(reason: impl Into<String>, event_id: Option<&str>) -> Decoded {
    Decoded::Rejected {
        reason: reason.into(),
        event_id: event_id.map(clip),
    }
}

fn decode_event_value(v: &Value) -> Decoded {
    match v {
        Value::Object(obj) => decode_event(obj),
        _ => rejected("event is not a JSON object", None),
    }
}

/// Decodes one Event Grid or CloudEvents event object.
pub fn decode_event(obj: &Map<String, Value>) -> Decoded {
    let id = obj.get("id").and_then(Value::as_str);
    let Some(ty) = event_type(obj) else {
        return rejected(
            "event has no string `eventType` (Event Grid) or `type` (CloudEvents)",
            id,
        );
    };
    let data = obj.get("data");
    if ty == TYPE_VALIDATION {
        return match data
            .and_then(|d| d.get("validationCode"))
            .and_then(Value::as_str)
        {
            Some(code) => Decoded::Validation {
                code: code.to_string(),
            },
            None => rejected("validation event has no string `data.validationCode`", id),
        };
    }
    if TYPES_IGNORED.contains(&ty) {
        return Decoded::Ignored {
            event_type: ty.to_string(),
        };
    }
    if ty != TYPE_CONNECTED && ty != TYPE_DISCONNECTED && ty != TYPE_DELETED {
        return rejected(format!("unknown event type `{}`", clip(ty)), id);
    }
    let Some(data) = data.and_then(Value::as_object) else {
        return rejected(format!("{ty} event has no `data` object"), id);
    };
    match decode_device_event(ty, obj, data) {
        Ok(ev) => Decoded::Event(ev),
        Err(reason) => rejected(format!("{ty}: {reason}"), id),
    }
}

fn decode_device_event(
    ty: &str,
    obj: &Map<String, Value>,
    data: &Map<String, Value>,
) -> Result<ConnectionEvent, String> {
    let device = match data.get("deviceId") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err("`data.deviceId` is not a string".into()),
        None => data
            .get("twin")
            .and_then(|t| t.get("deviceId"))
            .and_then(Value::as_str)
            .ok_or("`data.deviceId` is missing")?,
    };
    check_id("deviceId", device)?;
    if device.is_empty() {
        return Err("`data.deviceId` is empty".into());
    }
    let module = match data.get("moduleId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => {
            check_id("moduleId", s)?;
            Some(s.as_str())
        }
        Some(_) => return Err("`data.moduleId` is not a string".into()),
    };
    let topic = obj
        .get("topic")
        .or_else(|| obj.get("source"))
        .and_then(Value::as_str);
    let hub = match data.get("hubName").and_then(Value::as_str) {
        Some(h) if !h.trim().is_empty() => {
            check_id("hubName", h.trim())?;
            h.trim().to_string()
        }
        _ => {
            let hub = topic
                .and_then(hub_from_topic)
                .ok_or("`data.hubName` is missing and the topic names no IoT hub")?;
            check_text("the IoT hub named in `topic`", &hub)?;
            hub
        }
    };
    let time_field = obj.get("eventTime").or_else(|| obj.get("time"));
    let time = time_field
        .and_then(Value::as_str)
        .and_then(Timestamp::parse_rfc3339);
    let kind = if ty == TYPE_DELETED {
        EventKind::Deleted
    } else {
        let seq = data
            .get("deviceConnectionStateEventInfo")
            .and_then(|i| i.get("sequenceNumber"))
            .ok_or("`data.deviceConnectionStateEventInfo.sequenceNumber` is missing")?;
        let seq = match seq {
            Value::String(s) => SequenceNumber::parse(s).map_err(|e| e.to_string())?,
            _ => return Err("`sequenceNumber` is not a string".into()),
        };
        if ty == TYPE_CONNECTED {
            EventKind::Connected(seq)
        } else {
            EventKind::Disconnected(seq)
        }
    };
    Ok(ConnectionEvent {
        identity: Identity::new(&hub, device, module),
        kind,
        time,
        event_id: obj
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// Whether a device or module id is acceptable (length, no control characters); `field` names it in
/// the reason. Shared with the replay's fast JSONL path and the resource-log decoder.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    text_problem(id).map_or(Ok(()), |p| Err(format!("`data.{field}` {p}")))
}

/// Ids and hub names go into keys, alert bodies and log lines: bounded, one line.
fn check_text(what: &str, text: &str) -> Result<(), String> {
    text_problem(text).map_or(Ok(()), |p| Err(format!("{what} {p}")))
}

/// What is wrong with an id or hub name, if anything (the reason is only written when needed:
/// replay checks millions of ids). IoT Hub names and ids are ASCII, so anything else is no event
/// IoT Hub sent; refusing it here also bounds every id's escaped form in the Table keys (three
/// characters per byte at most).
fn text_problem(text: &str) -> Option<String> {
    if text.chars().count() > MAX_ID_LEN {
        return Some(format!("is longer than {MAX_ID_LEN} characters"));
    }
    if text.chars().any(char::is_control) {
        return Some("contains a control character".into());
    }
    if !text.is_ascii() {
        return Some(
            "contains a character that is not ASCII (IoT Hub ids are ASCII letters, digits and \
             `- : . + % _ # * ? ! ( ) , = @ ; $ '`)"
                .into(),
        );
    }
    None
}

/// `/SUBSCRIPTIONS/…/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/<hub>` → `<hub>` (also a resource log's
/// `resourceId`).
pub fn hub_from_topic(topic: &str) -> Option<String> {
    let lower = topic.to_ascii_lowercase();
    let at = lower.rfind("/iothubs/")? + "/iothubs/".len();
    let hub = topic[at..].split('/').next()?;
    (!hub.is_empty()).then(|| hub.to_string())
}

/// Keeps attacker-controlled text short and on one line in log lines: control characters are
/// written as escapes (`\n`, `\u{0}`), so no input can start a forged line, and the result is
/// cut after about 100 characters.
pub fn clip(s: &str) -> String {
    const MAX: usize = 100;
    let mut out = String::new();
    let mut len = 0;
    for c in s.chars() {
        if len >= MAX {
            out.push('…');
            break;
        }
        if c.is_control() {
            let escaped: String = c.escape_default().collect();
            len += escaped.chars().count();
            out.push_str(&escaped);
        } else {
            len += 1;
            out.push(c);
        }
    }
    out
}
