//! Fuzzing every decoder with proptest: the body decoders (`decode::parse_json`
//! then `decode_delivery` and `decode_host_invocation`), the settings (`Settings::from_lookup`,
//! which includes the Table Storage connection settings), and the value parsers they rest on
//! (`parse_duration`, `Timestamp::parse_rfc3339`, `SequenceNumber::parse`).
//!
//! Inputs are arbitrary bytes, arbitrary JSON over the envelopes' vocabulary, and structure-aware
//! mutations of the real fixtures in `tests/fixtures/events/` and `tests/fixtures/host/` (values
//! replaced by other types, huge numbers, lone surrogates, unicode and control characters, JSON in
//! strings, deep nesting, keys deleted and inserted, then bytes flipped, deleted, inserted and the
//! text cut short). Every call runs on its own thread under `catch_unwind` with a time bound, and:
//! - nothing panics and nothing hangs;
//! - every refusal (`EnvelopeError` → 400, `Decoded::Rejected` → a log line, `SettingsError` → exit
//!   2) carries a short one-line message that names what was wrong, and never a secret;
//! - everything accepted is well-formed: ids non-empty, at most 128 characters, no control
//!   characters, the hub folded to lower case; settings within their documented ranges.
//!
//! One more test posts generated bodies to the real binary: only 200, 400 or 413, never a 5xx, and
//! the process stays up. `PROPTEST_CASES` sets the number of cases; RELIABILITY-model-fuzz.md has
//! the long run.

use crate::support::{fixture, proptest_config, Connmon, Request, SETTINGS};
use connmon::decode::{self, Decoded};
use connmon::model::{Identity, SequenceNumber, Timestamp};
use connmon::settings::{parse_duration, Mode, Settings};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest one decoder call may take on one input. Generous (a debug build on a shared CI
/// machine); what it catches is a hang or a blow-up, not a slow millisecond.
const TIME_BOUND: Duration = Duration::from_secs(10);
/// The longest message a refusal may carry: a log line or a 400 body, not an echo of the input.
const MAX_MESSAGE: usize = 512;
/// Longest device, module or hub id anything accepted may carry (IoT Hub: 128 for ids, 50 for hubs).
const MAX_ID: usize = 128;

/// Runs `f` on its own thread: `Err` if it panicked or did not finish within [`TIME_BOUND`].
fn guarded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("fuzz-input".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into())
            });
            let _ = tx.send(r);
        })
        .expect("spawn a thread");
    match rx.recv_timeout(TIME_BOUND) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(m)) => Err(format!("panicked: {m}")),
        Err(_) => Err(format!("no answer within {TIME_BOUND:?}")),
    }
}

/// [`guarded`] for a parser of text; errors name the input.
fn guarded_on<T: Send + 'static>(input: &str, parse: fn(&str) -> T) -> Result<T, String> {
    let owned = input.to_string();
    guarded(move || parse(&owned)).map_err(|e| format!("{input:?}: {e}"))
}

/// A refusal message: non-empty, short, one line, naming one of `names`.
fn check_message(what: &str, msg: &str, names: &[&str]) -> Result<(), String> {
    let ok = !msg.trim().is_empty()
        && msg.chars().count() <= MAX_MESSAGE
        && !msg.chars().any(char::is_control)
        && names.iter().any(|n| msg.contains(n));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what}: the message must be one short line naming one of {names:?}, got {msg:?}"
        ))
    }
}

/// An id as the decoder may hand it on: non-empty, at most [`MAX_ID`] characters, no control
/// characters.
fn check_id(what: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > MAX_ID || id.chars().any(char::is_control) {
        let shown: String = id.chars().take(60).collect();
        return Err(format!(
            "accepted an event whose {what} is empty, longer than {MAX_ID} characters or holds a \
             control character: {shown:?} ({} characters)",
            id.chars().count()
        ));
    }
    Ok(())
}

fn check_identity(id: &Identity) -> Result<(), String> {
    check_id("hub", id.hub())?;
    check_id("deviceId", id.device())?;
    if let Some(m) = id.module() {
        check_id("moduleId", m)?;
    }
    if id.hub() != id.hub().to_ascii_lowercase() {
        return Err(format!("hub {:?} is not folded to lower case", id.hub()));
    }
    Ok(())
}

/// What the decoders made of the inputs of one run (the figures RELIABILITY-model-fuzz.md quotes).
/// Tests use the fields that mean something for them; the others stay 0 and are not printed.
#[derive(Debug, Default)]
struct Tally {
    inputs: u64,
    bytes: u64,
    /// `parse_json` refused the body.
    not_json: u64,
    /// A decoder refused the body as a whole (400 over HTTP).
    envelope_errors: u64,
    /// Events decoded (HTTP: 200 answers; settings and times: values accepted).
    accepted: u64,
    /// Events rejected one by one (HTTP: 413 answers; settings: refused at start-up).
    rejected: u64,
    validations: u64,
    ignored: u64,
}

/// A request body; failures show it as text (invalid UTF-8 replaced), not as a list of numbers.
#[derive(Clone)]
struct Body(Vec<u8>);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes: {:?}",
            self.0.len(),
            String::from_utf8_lossy(&self.0)
        )
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fields = [
            ("inputs", self.inputs),
            ("bytes", self.bytes),
            ("not JSON", self.not_json),
            ("envelope errors", self.envelope_errors),
            ("accepted", self.accepted),
            ("rejected", self.rejected),
            ("validations", self.validations),
            ("ignored", self.ignored),
        ];
        let shown: Vec<String> = fields
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        f.write_str(&shown.join(", "))
    }
}

/// Parses and decodes `body` both ways (a direct Event Grid delivery and a host invocation) and
/// checks everything that came out.
fn check_body(Body(body): Body, tally: &mut Tally) -> Result<(), String> {
    tally.bytes += body.len() as u64;
    let (parsed, decoded) = guarded(move || {
        let parsed = decode::parse_json(&body);
        let decoded = parsed.as_ref().ok().map(|v| {
            [
                decode::decode_delivery(v),
                decode::decode_host_invocation(v),
            ]
        });
        // The parsed value is dropped on this thread too: dropping is recursive.
        (parsed.err(), decoded)
    })?;
    if let Some(e) = parsed {
        tally.not_json += 1;
        return check_message("parse_json", &e.0, &["JSON"]);
    }
    for result in decoded.into_iter().flatten() {
        let items = match result {
            Ok(items) => items,
            Err(e) => {
                tally.envelope_errors += 1;
                check_message("envelope error (400)", &e.0, &["body", "invocation"])?;
                continue;
            }
        };
        for item in items {
            match item {
                Decoded::Event(ev) => {
                    tally.accepted += 1;
                    check_identity(&ev.identity)?;
                }
                Decoded::Rejected { reason, event_id } => {
                    tally.rejected += 1;
                    check_message(
                        "rejected event (log line)",
                        &reason,
                        &["`", "event", "sequenceNumber"],
                    )?;
                    // The id is logged with the reason: bounded and on one line too.
                    let id = event_id.unwrap_or_default();
                    if id.chars().count() > MAX_ID || id.chars().any(char::is_control) {
                        return Err(format!("rejected event's id goes into a log line: {id:?}"));
                    }
                }
                Decoded::Validation { .. } => tally.validations += 1,
                Decoded::Ignored { event_type } => {
                    tally.ignored += 1;
                    if !event_type.starts_with("Microsoft.Devices.") {
                        return Err(format!("ignored an unknown type {event_type:?}"));
                    }
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// The fixtures the mutations start from: every JSON fixture of `events/` and `host/`, and each
/// event fixture inside a host invocation envelope in the host's three encodings.
fn seeds() -> Vec<Value> {
    let events = [
        "events/ce-docs-device-connected.json",
        "events/ce-docs-device-created.json",
        "events/eg-cosmos-tutorial-device-connected.json",
        "events/eg-deadletter-envelope-docs.json",
        "events/eg-docs-device-connected.json",
        "events/eg-docs-device-created.json",
        "events/eg-validation-event-docs-with-validationUrl.json",
        "events/eg-validation-response-docs.json",
        "events/log-connections-docs-template.json",
    ];
    let host = [
        "host/eventgrid-invocation.derived.json",
        "host/queue-string.captured.json",
        "host/timer-monitor-off.captured.json",
        "host/timer-monitor-on.captured.json",
    ];
    let parse = |p: &str| -> Value {
        serde_json::from_slice(&fixture(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let mut out: Vec<Value> = Vec::new();
    for p in events {
        let v = parse(p);
        let single = match &v {
            Value::Array(items) if items.len() == 1 => items[0].clone(),
            other => other.clone(),
        };
        let as_text = single.to_string();
        for data in [
            single.clone(),
            Value::String(as_text.clone()),
            Value::String(Value::String(as_text).to_string()),
        ] {
            out.push(json!({"Data": {"eventGridEvent": data}, "Metadata": {}}));
        }
        out.push(v);
    }
    out.extend(host.iter().map(|p| parse(p)));
    out
}

/// Keys the decoders look at, and a few they must not care about.
const KEYS: &[&str] = &[
    "id",
    "eventType",
    "type",
    "eventTime",
    "time",
    "topic",
    "source",
    "subject",
    "data",
    "hubName",
    "deviceId",
    "moduleId",
    "deviceConnectionStateEventInfo",
    "sequenceNumber",
    "twin",
    "validationCode",
    "Data",
    "data",
    "eventGridEvent",
    "Metadata",
    "specversion",
    "",
    "ÿ",
];

const TYPES: &[&str] = &[
    "Microsoft.Devices.DeviceConnected",
    "Microsoft.Devices.DeviceDisconnected",
    "Microsoft.Devices.DeviceDeleted",
    "Microsoft.Devices.DeviceCreated",
    "Microsoft.Devices.DeviceTelemetry",
    "Microsoft.EventGrid.SubscriptionValidationEvent",
    "microsoft.devices.deviceconnected",
];

/// Tokens a `serde_json::Value` cannot hold, spliced into the text after serialisation: numbers out
/// of range, lone and swapped surrogates, escapes of control characters, a stray byte.
const RAW_TOKENS: &[&str] = &[
    "1e400",
    "-1e400",
    "123456789012345678901234567890123456789",
    "1.0e-400",
    "-0",
    "0e0",
    "1E+2",
    "NaN",
    "Infinity",
    "\"\\ud800\"",
    "\"\\udc00\\ud800\"",
    "\"\\u0000\\u001f\\u007f\"",
    "\"a\\\"b\\\\c\\/d\\n\"",
    "\"\\uD83D\\uDE00\"",
    "\"\u{feff}\"",
    "\"\\x41\"",
];

fn string_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(TYPES).prop_map(str::to_string),
        "[0-9A-Fa-f]{62,66}",
        "[0-9A-F]{63}[é\u{0}g ]",
        " {0,2}[0-9A-F]{64} {0,2}",
        "[a-zA-Z0-9\\-:.+%_#*?!(),=@;$']{0,140}",
        "[a-z]{127,130}",
        "/SUBSCRIPTIONS/[a-z0-9]{1,8}/RESOURCEGROUPS/g/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/.{0,12}",
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,10})?(Z|[+-][0-9]{2}:[0-9]{2})?",
        prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter),
        "[\\x00-\\x1f\\x7f\u{80}-\u{9f}\u{2028}\u{2029}a]{1,8}",
        Just(String::new()),
        Just(" ".to_string()),
    ]
}

fn number_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![
            json!(0),
            json!(-0.0),
            json!(1e308),
            json!(-1e308),
            json!(5e-324),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(9_007_199_254_740_993u64),
            json!(1.5),
        ]),
    ]
}

/// Any JSON value, keys drawn mostly from [`KEYS`], up to a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number_value(),
        string_value().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        let key = prop_oneof![
            4 => prop::sample::select(KEYS).prop_map(str::to_string),
            1 => string_value(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a JSON value at some node (chosen by the `usize`, modulo the number of nodes).
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Value),
    /// Index into [`RAW_TOKENS`].
    Raw(usize),
    Delete,
    Insert(String, Value),
    WrapInArray,
    /// The value as JSON text in a string, as the Functions host encodes binding data.
    Stringify,
    /// The value inside this many arrays.
    Nest(usize),
}

/// One change to the serialised bytes.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(usize, u8),
    Delete(usize),
    Insert(usize, u8),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => json_value().prop_map(Mutation::Replace),
        3 => string_value().prop_map(|s| Mutation::Replace(Value::String(s))),
        2 => (0..RAW_TOKENS.len()).prop_map(Mutation::Raw),
        2 => Just(Mutation::Delete),
        2 => (prop::sample::select(KEYS).prop_map(str::to_string), json_value())
            .prop_map(|(k, v)| Mutation::Insert(k, v)),
        1 => Just(Mutation::WrapInArray),
        1 => Just(Mutation::Stringify),
        1 => prop_oneof![1usize..20, 120usize..140, 200usize..300].prop_map(Mutation::Nest),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| ByteEdit::Flip(i, b)),
        any::<usize>().prop_map(ByteEdit::Delete),
        (
            any::<usize>(),
            prop::sample::select(b"[]{}\",:\\0-e. \x00\xff\xc3".to_vec())
        )
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        any::<usize>().prop_map(ByteEdit::Truncate),
    ]
}

/// JSON pointers of every node of `v`, the root first.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointers(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(obj) => {
            for (k, item) in obj {
                let k = k.replace('~', "~0").replace('/', "~1");
                pointers(item, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
}

/// Applies the mutations to `seed` and the byte edits to its text.
fn mutate(seed: &Value, mutations: &[(usize, Mutation)], edits: &[ByteEdit]) -> Vec<u8> {
    let mut v = seed.clone();
    let mut raws: Vec<(String, &str)> = Vec::new();
    for (pick, m) in mutations {
        let mut all = Vec::new();
        pointers(&v, String::new(), &mut all);
        let at = &all[pick % all.len()];
        let (parent, last) = match at.rsplit_once('/') {
            Some((p, l)) => (p.to_string(), Some(l.replace("~1", "/").replace("~0", "~"))),
            None => (String::new(), None),
        };
        match m {
            Mutation::Delete => match (v.pointer_mut(&parent), last) {
                (Some(Value::Object(o)), Some(k)) => {
                    o.remove(&k);
                }
                (Some(Value::Array(a)), Some(i)) => {
                    if let Ok(i) = i.parse::<usize>() {
                        a.remove(i);
                    }
                }
                _ => v = Value::Null,
            },
            Mutation::Insert(k, new) => {
                if let Some(Value::Object(o)) = v.pointer_mut(at) {
                    o.insert(k.clone(), new.clone());
                }
            }
            other => {
                let node = v.pointer_mut(at).expect("a pointer just listed");
                let old = node.take();
                *node = match other {
                    Mutation::Replace(new) => new.clone(),
                    Mutation::Raw(i) => {
                        let mark = format!("\u{1}raw{}\u{1}", raws.len());
                        raws.push((Value::String(mark.clone()).to_string(), RAW_TOKENS[*i]));
                        Value::String(mark)
                    }
                    Mutation::WrapInArray => Value::Array(vec![old]),
                    Mutation::Stringify => Value::String(old.to_string()),
                    Mutation::Nest(n) => (0..*n).fold(old, |acc, _| Value::Array(vec![acc])),
                    Mutation::Delete | Mutation::Insert(..) => unreachable!(),
                };
            }
        }
    }
    let mut text = v.to_string();
    for (mark, token) in raws {
        text = text.replace(&mark, token);
    }
    let mut bytes = text.into_bytes();
    for e in edits {
        let n = bytes.len();
        match *e {
            ByteEdit::Flip(i, b) if n > 0 => bytes[i % n] ^= b,
            ByteEdit::Delete(i) if n > 0 => {
                bytes.remove(i % n);
            }
            ByteEdit::Insert(i, b) => bytes.insert(i % (n + 1), b),
            ByteEdit::Truncate(i) => bytes.truncate(i % (n + 1)),
            _ => {}
        }
    }
    bytes
}

/// A request body: arbitrary bytes, arbitrary JSON, or a mutated fixture (most of the time).
fn body() -> impl Strategy<Value = Body> {
    let seeds = seeds();
    let mutated = (
        prop::sample::select(seeds),
        prop::collection::vec((any::<usize>(), mutation()), 0..5),
        prop_oneof![
            3 => Just(Vec::new()),
            1 => prop::collection::vec(byte_edit(), 1..4),
        ],
    )
        .prop_map(|(seed, ms, edits)| mutate(&seed, &ms, &edits));
    let json_array = prop::collection::vec(json_value(), 0..4).prop_map(|items| {
        let v = Value::Array(items);
        v.to_string().into_bytes()
    });
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => json_array,
        6 => mutated,
    ]
    .prop_map(Body)
}

/// Runs `check` on `cases` inputs from `strategy`, then prints how many and how long.
fn fuzz<S: Strategy>(
    what: &str,
    default_cases: u32,
    strategy: S,
    check: impl Fn(S::Value, &mut Tally) -> Result<(), String>,
) -> Tally {
    let config = proptest_config(default_cases);
    let mut runner = TestRunner::new(config);
    let tally = RefCell::new(Tally::default());
    let started = Instant::now();
    let result = runner.run(&strategy, |input| {
        let mut tally = tally.borrow_mut();
        tally.inputs += 1;
        check(input, &mut tally).map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{what}: {e}");
    }
    let tally = tally.into_inner();
    eprintln!("fuzz {what}: {tally} in {:.1?}", started.elapsed());
    tally
}

#[test]
fn body_decoders_never_panic_and_explain_every_refusal() {
    let t = fuzz("bodies", 2000, body(), check_body);
    if t.inputs >= 500 {
        assert!(
            t.not_json > 0
                && t.envelope_errors > 0
                && t.accepted > 0
                && t.rejected > 0
                && t.validations > 0
                && t.ignored > 0,
            "the inputs no longer reach every outcome: {t:?}"
        );
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let deep = |open: &str, n: usize| open.repeat(n).into_bytes();
    let arrays = String::from_utf8(deep("[", 100_000)).unwrap();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("100,000 [", deep("[", 100_000)),
        ("100,000 {\"a\":", deep("{\"a\":", 100_000)),
        ("50,000 [{\"data\":", deep("[{\"data\":", 50_000)),
        (
            "100,000 [ closed",
            format!("{arrays}{}", "]".repeat(100_000)).into_bytes(),
        ),
        (
            "100,000 [ in Data.eventGridEvent",
            json!({"Data": {"eventGridEvent": arrays}})
                .to_string()
                .into_bytes(),
        ),
        (
            "100,000 [ in a string in a string",
            json!({"Data": {"eventGridEvent": Value::String(arrays.clone()).to_string()}})
                .to_string()
                .into_bytes(),
        ),
    ];
    let mut tally = Tally::default();
    for (what, body) in bodies {
        check_body(Body(body), &mut tally).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    assert_eq!(tally.not_json, 4, "{tally:?}");
    assert_eq!(tally.envelope_errors, 4, "{tally:?}");
    // serde_json's recursion limit: 127 levels parse (and decode), 128 do not.
    let nested = |n: usize| format!("{}{{}}{}", "[".repeat(n - 1), "]".repeat(n - 1));
    let v = decode::parse_json(nested(127).as_bytes()).expect("127 levels are accepted");
    assert!(matches!(
        &decode::decode_delivery(&v).unwrap()[0],
        Decoded::Rejected { reason, .. } if reason == "event is not a JSON object"
    ));
    let e = decode::parse_json(nested(128).as_bytes()).unwrap_err();
    assert!(e.0.contains("recursion limit"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The value parsers, against independent oracles

/// `[d.]hh:mm[:ss[.fffffff]]`, `300`, or `1h30m`-style, with numbers from the edges of `u64`.
#[derive(Debug, Clone)]
enum DurationText {
    Seconds(String),
    Units(Vec<(String, usize)>),
    TimeSpan(Option<String>, u64, u64, Option<(u64, String)>),
}

const UNITS: [(&str, u128); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

fn big_number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            u64::MAX.to_string(),
            (u64::MAX / 86_400).to_string(),
            (u64::MAX / 86_400 - 1).to_string(),
            (u64::MAX / 1000).to_string(),
            "18446744073709551616".to_string(),
            "00".to_string(),
        ]),
    ]
}

fn duration_text() -> impl Strategy<Value = DurationText> {
    prop_oneof![
        big_number().prop_map(DurationText::Seconds),
        prop::collection::vec((big_number(), 0..UNITS.len()), 1..4).prop_map(DurationText::Units),
        (
            prop::option::of(big_number()),
            0u64..30,
            0u64..70,
            prop::option::of((0u64..70, "[0-9]{0,8}")),
        )
            .prop_map(|(d, h, m, s)| DurationText::TimeSpan(d, h, m, s)),
    ]
}

impl DurationText {
    fn text(&self) -> String {
        match self {
            DurationText::Seconds(n) => n.clone(),
            DurationText::Units(parts) => parts
                .iter()
                .map(|(n, u)| format!("{n}{}", UNITS[*u].0))
                .collect(),
            DurationText::TimeSpan(d, h, m, s) => {
                let mut t = String::new();
                if let Some(d) = d {
                    t.push_str(&format!("{d}."));
                }
                t.push_str(&format!("{h:02}:{m:02}"));
                if let Some((s, frac)) = s {
                    t.push_str(&format!(":{s:02}"));
                    if !frac.is_empty() {
                        t.push_str(&format!(".{frac}"));
                    }
                }
                t
            }
        }
    }

    /// What the documented grammar means, computed without overflow: `None` for anything it
    /// refuses or that does not fit a `Duration` of whole `u64` seconds.
    fn oracle(&self) -> Option<Duration> {
        let num = |n: &str| n.parse::<u64>().ok().map(u128::from);
        let ms: u128 = match self {
            DurationText::Seconds(n) => num(n)? * 1000,
            DurationText::Units(parts) => {
                let mut total = 0u128;
                let mut last = usize::MAX;
                for (n, u) in parts {
                    // Largest unit first, each at most once.
                    if last != usize::MAX && *u <= last {
                        return None;
                    }
                    last = *u;
                    let part = num(n)? * UNITS[*u].1;
                    if part > u128::from(u64::MAX) {
                        return None;
                    }
                    total += part;
                }
                total
            }
            DurationText::TimeSpan(d, h, m, s) => {
                let days = match d {
                    Some(d) => num(d)?,
                    None => 0,
                };
                if *h > 23 || *m > 59 {
                    return None;
                }
                let (sec, frac_ms) = match s {
                    None => (0, 0),
                    Some((s, frac)) => {
                        if *s > 59 || frac.len() > 7 {
                            return None;
                        }
                        let ms = format!("{frac:0<3}")[..3].parse::<u128>().unwrap();
                        (u128::from(*s), ms)
                    }
                };
                let secs = days * 86_400 + u128::from(*h * 3600 + *m * 60) + sec;
                if secs > u128::from(u64::MAX) {
                    return None;
                }
                secs * 1000 + frac_ms
            }
        };
        let secs = u64::try_from(ms / 1000).ok()?;
        Some(Duration::from_secs(secs) + Duration::from_millis((ms % 1000) as u64))
    }
}

#[test]
fn durations_parse_as_the_grammar_says_or_not_at_all() {
    fuzz(
        "durations",
        2000,
        duration_text(),
        |d: DurationText, _: &mut Tally| {
            let text = d.text();
            let got = guarded_on(&text, parse_duration)?;
            let want = d.oracle();
            if got != want {
                return Err(format!(
                    "{text:?}: parsed as {got:?}, the grammar says {want:?}"
                ));
            }
            Ok(())
        },
    );
}

/// RFC 3339-like text with every field possibly out of range.
fn time_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?([Zz]|[+-][0-9]{2}:[0-9]{2})",
        "(0000|0001|9999)-(01|12)-(01|31)T(00|23):(00|59):(00|59|60)(\\.9{1,9})?(Z|[+-](00|23):(00|59))",
        "\\PC{0,40}",
    ]
}

#[test]
fn event_times_parse_without_panicking_and_print_back_to_themselves() {
    fuzz(
        "event times",
        1000,
        time_text(),
        |s: String, t: &mut Tally| {
            let parsed = guarded_on(&s, |s| {
                Timestamp::parse_rfc3339(s).map(|ts| (ts, ts.to_rfc3339()))
            })?;
            if let Some((ts, text)) = parsed {
                t.accepted += 1;
                if Timestamp::parse_rfc3339(&text) != Some(ts) {
                    return Err(format!(
                    "{s:?} parsed as {ts:?}, which prints as {text:?}, which does not parse back"
                ));
                }
            }
            Ok(())
        },
    );
}

fn sequence_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-fA-F]{64}",
        "[0-9A-F]{60,68}",
        "[0-9A-Fé ]{62,65}",
        " *[0-9A-F]{64} *",
        prop::collection::vec(any::<char>(), 60..68).prop_map(String::from_iter),
    ]
}

#[test]
fn sequence_numbers_parse_exactly_64_hex_digits_and_say_why_not() {
    fuzz(
        "sequence numbers",
        1000,
        sequence_text(),
        |s: String, _: &mut Tally| {
            let r = guarded_on(&s, |s| SequenceNumber::parse(s).map_err(|e| e.to_string()))?;
            let hex = s.trim();
            let valid = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
            match r {
                Ok(n) if valid && n.to_hex() == hex.to_ascii_uppercase() => Ok(()),
                Ok(n) => Err(format!("{s:?} accepted as {n:?}")),
                Err(e) if valid => Err(format!("{s:?} refused: {e}")),
                Err(e) => {
                    check_message("sequenceNumber", &e, &["64 hex digits"])?;
                    // "got N characters" must be true, and not 64.
                    let n = hex.chars().count();
                    if e.contains("characters") && (n == 64 || !e.contains(&format!("got {n} "))) {
                        return Err(format!("{s:?} ({n} characters) refused as {e:?}"));
                    }
                    Ok(())
                }
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Settings

/// Settings whose values are secrets: never in a message, never in `Debug`.
const SECRETS: &[&str] = &[
    "CONNMON_ALERT_WEBHOOK_URL",
    "CONNMON_TEAMS_WEBHOOK_URL",
    "CONNMON_SLACK_WEBHOOK_URL",
    "CONNMON_PAGERDUTY_ROUTING_KEY",
    "CONNMON_TABLE_CONNECTION",
    "AzureWebJobsStorage",
    "IDENTITY_HEADER",
];

/// Put into every secret value; must never come back out.
const MARK: &str = "S3CR3T";

fn setting_value() -> impl Strategy<Value = String> {
    prop_oneof![
        duration_text().prop_map(|d| d.text()),
        prop::collection::vec(any::<char>(), 0..30).prop_map(String::from_iter),
        "-?[0-9]{1,25}",
        "(https?|ftp|file)://[a-z0-9.\\-\\[\\]:@]{0,20}(/[a-zA-Z0-9%?=&#]{0,12})?",
        "((DefaultEndpointsProtocol|AccountName|AccountKey|EndpointSuffix|TableEndpoint|UseDevelopmentStorage|DevelopmentStorageProxyUri|SharedAccessSignature|x)=[a-zA-Z0-9+/=:.\\-]{0,20};?){0,5}",
        "([a-z0-9*?/$\\-]{0,8}(=[0-9]{1,4}[smhd]?|@[0-9T:Z\\-]{0,22})?,?){0,4}",
        prop::sample::select(vec![
            "sqlite", "table", "TABLE", "managedidentity", "true", "127.0.0.1:8080", "[::]:0",
            "0", "65536", "2", "64", "65", "UseDevelopmentStorage=true", "x;y", " ",
        ])
        .prop_map(str::to_string),
        Just("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5".to_string()),
    ]
}

/// Connection strings: only their `AccountKey` is secret (account names and endpoints are not).
const CONNECTION_STRINGS: &[&str] = &["CONNMON_TABLE_CONNECTION", "AzureWebJobsStorage"];

/// A few settings with generated values. Secrets carry [`MARK`] somewhere; connection strings in
/// an `AccountKey` part (valid base64).
fn settings_env() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let one = (
        prop::sample::select(SETTINGS),
        setting_value(),
        any::<usize>(),
    )
        .prop_map(|(name, mut v, at)| {
            if CONNECTION_STRINGS.contains(&name) {
                let mut parts: Vec<String> = v.split(';').map(str::to_string).collect();
                parts.insert(at % (parts.len() + 1), format!("AccountKey={MARK}=="));
                v = parts.join(";");
            } else if SECRETS.contains(&name) {
                let i = (0..=v.len())
                    .filter(|i| v.is_char_boundary(*i))
                    .nth(at % (v.chars().count() + 1))
                    .unwrap_or(0);
                v.insert_str(i, MARK);
            }
            (name, v)
        });
    prop::collection::vec(one, 0..7)
}

fn check_settings(env: Vec<(&'static str, String)>, t: &mut Tally) -> Result<(), String> {
    let map: HashMap<&str, String> = env.iter().cloned().collect();
    let r = guarded(move || Settings::from_lookup(|k| map.get(k).cloned()))?;
    match r {
        Err(e) => {
            t.rejected += 1;
            let msg = e.to_string();
            if !SETTINGS.contains(&e.name) || !msg.contains(e.name) || e.expected.trim().is_empty()
            {
                return Err(format!(
                    "the error must name a setting and what it expects: {msg:?}"
                ));
            }
            if msg.contains(MARK) || msg.chars().any(char::is_control) {
                return Err(format!(
                    "the error shows a secret or is not one line: {msg:?}"
                ));
            }
            if SECRETS.contains(&e.name) && e.value.is_some() {
                return Err(format!(
                    "{} is a secret but its value is kept: {msg:?}",
                    e.name
                ));
            }
        }
        Ok(s) => {
            t.accepted += 1;
            if format!("{s:?}").contains(MARK) {
                return Err(format!("Debug of the settings shows a secret: {s:?}"));
            }
            let within = |d: Duration, lo: u64, hi: u64| {
                (Duration::from_secs(lo)..=Duration::from_secs(hi)).contains(&d)
            };
            let mut ok = within(s.grace, 1, 30 * 86_400)
                && s.grace_overrides
                    .iter()
                    .all(|o| within(o.grace, 1, 30 * 86_400))
                && (2..=64).contains(&s.flap_threshold)
                && within(s.flap_window, 60, 7 * 86_400)
                && s.remind_every.is_none_or(|r| within(r, 60, 30 * 86_400))
                && s.group_threshold >= 2;
            ok &= match s.mode {
                Mode::Functions { port } => port != 0,
                Mode::Standalone { sweep_interval, .. } => within(sweep_interval, 1, 3600),
            };
            if !ok {
                return Err(format!("accepted settings out of their ranges: {s:?}"));
            }
        }
    }
    Ok(())
}

#[test]
fn settings_refuse_bad_values_by_name_and_never_show_secrets() {
    let t = fuzz("settings", 1000, settings_env(), check_settings);
    if t.inputs >= 500 {
        assert!(t.accepted > 0 && t.rejected > 0, "{t:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Over the wire

/// Generated bodies posted to the real binary: 200, 400 or 413 only, a 400 explains itself in
/// `{"error"}`, and the process stays up.
#[test]
fn the_binary_answers_random_bodies_with_200_400_or_413_only() {
    let mut cm = Connmon::standalone(&[
        ("CONNMON_SWEEP_INTERVAL", "1h"),
        ("CONNMON_GRACE_PERIOD", "1h"),
    ]);
    let routes = ["/api/events", "/ConnectionEvent", "/DisconnectTimer"];
    let headers = [
        ("Content-Type", "application/json"),
        ("Content-Type", "application/cloudevents-batch+json"),
        ("aeg-event-type", "SubscriptionValidation"),
        ("aeg-event-type", "Notification"),
    ];
    let strategy = (body(), 0..routes.len(), 0..headers.len(), any::<bool>());
    let cm_ref = &cm;
    fuzz(
        "HTTP bodies",
        300,
        strategy,
        |(Body(body), route, header, chunked), t: &mut Tally| {
            t.bytes += body.len() as u64;
            let (k, v) = headers[header];
            let mut req = Request::post(routes[route]).header(k, v).body(body);
            if chunked {
                req = req.chunked(3);
            }
            let resp = req
                .timeout(TIME_BOUND)
                .try_send(cm_ref.port)
                .map_err(|e| format!("POST {}: {e}", routes[route]))?;
            match resp.status {
                200 => t.accepted += 1,
                413 => t.rejected += 1,
                400 => {
                    t.envelope_errors += 1;
                    let v: Value = serde_json::from_slice(&resp.body)
                        .map_err(|e| format!("400 without a JSON body ({e}): {}", resp.text()))?;
                    let msg = v["error"].as_str().unwrap_or_default();
                    check_message(
                        "400 body",
                        msg,
                        &["body", "invocation", "JSON", "aeg-event-type"],
                    )?;
                }
                s => {
                    return Err(format!(
                        "POST {} answered {s}: {}",
                        routes[route],
                        resp.text()
                    ))
                }
            }
            Ok(())
        },
    );
    // Over the limit, and nested far past serde_json's recursion limit.
    let huge = Request::post("/api/events")
        .body(vec![b' '; connmon::server::MAX_BODY + 1])
        .send(cm.port);
    assert_eq!(huge.status, 413, "{}", huge.text());
    for route in routes {
        let deep = Request::post(route)
            .body("[".repeat(100_000).into_bytes())
            .send(cm.port);
        assert_eq!(deep.status, 400, "{route}: {}", deep.text());
    }
    assert!(cm.is_running(), "connmon exited:\n{}", cm.stderr());
    assert_eq!(Request::get("/").send(cm.port).status, 200);
}

/// `mutate` itself, so that the mutation tests mutate what they claim to.
#[test]
fn mutations_change_what_they_say() {
    let seed = json!({"a": [1, {"b": "c"}]});
    let one = |m: Mutation, at: usize| String::from_utf8(mutate(&seed, &[(at, m)], &[])).unwrap();
    // Nodes in order: "", /a, /a/0, /a/1, /a/1/b.
    assert_eq!(one(Mutation::Delete, 4), r#"{"a":[1,{}]}"#);
    assert_eq!(one(Mutation::Raw(0), 2), r#"{"a":[1e400,{"b":"c"}]}"#);
    assert_eq!(one(Mutation::Nest(2), 4), r#"{"a":[1,{"b":[["c"]]}]}"#);
    assert_eq!(one(Mutation::Stringify, 3), r#"{"a":[1,"{\"b\":\"c\"}"]}"#);
    assert_eq!(
        one(Mutation::Insert("k".into(), json!(null)), 0),
        r#"{"a":[1,{"b":"c"}],"k":null}"#
    );
    let cut = mutate(&seed, &[], &[ByteEdit::Truncate(3)]);
    assert_eq!(cut, b"{\"a");
    // The strategy produces values (a smoke check that it builds from the fixtures).
    let mut runner = TestRunner::default();
    let Body(v) = body().new_tree(&mut runner).unwrap().current();
    assert!(v.len() < 10_000_000);
}
