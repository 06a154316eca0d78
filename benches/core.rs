//! Core benchmark: one connection event from bytes to a state transition,
//! in memory, beside serde_json parsing alone of the same bytes (the ceiling).
//!
//! Two envelopes: a direct Event Grid delivery (a JSON array of one event, `POST /api/events`) and
//! the Functions host invocation (`POST /ConnectionEvent`, the event double-encoded as a string in
//! a string). Each iteration takes the next of 1,024 pre-rendered events of one device — a
//! disconnect and a reconnect one second later, every hour (the SAS-token-renewal cadence) — and
//! applies it to the state the previous event left, so every apply changes state as in production.
//!
//! Run: `cargo bench --bench core`. Smoke (each case once): `cargo bench --bench core -- --test`, or
//! `cargo test --benches` (criterion runs each case once when not given `--bench`).

use connmon::decode::{self, Decoded};
use connmon::machine::{self, IdentityState, Policy};
use connmon::model::Timestamp;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::Duration;

/// `decode::parse_json` + `decode::decode_delivery` or `decode::decode_host_invocation`, as the
/// server calls them.
type Decode = fn(&[u8]) -> Result<Vec<Decoded>, decode::EnvelopeError>;
/// A parse-only ceiling.
type Parse = fn(&[u8]) -> Value;

/// Distinct events cycled through; the states before each are computed once, outside the timing.
const EVENTS: usize = 1024;
/// 2024-01-01T00:00:00Z.
const T0_MS: i64 = 1_704_067_200_000;

/// The `i`-th event of the device as an Event Grid event object, in the shape IoT Hub sends.
fn event(i: usize) -> Value {
    let hour = (i / 2) as i64;
    let (kind, at) = if i.is_multiple_of(2) {
        ("DeviceDisconnected", T0_MS + hour * 3_600_000)
    } else {
        ("DeviceConnected", T0_MS + hour * 3_600_000 + 1_000)
    };
    json!({
        "id": format!("f6bbf8f4-d365-520d-a878-{:012x}", i),
        "topic": "/SUBSCRIPTIONS/5CDD9A3B-8DAB-4CF4-9B2F-C22E8A755472/RESOURCEGROUPS/EGTESTRG/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/MYIOTHUB",
        "subject": "devices/48e44e11-1437-4907-83b1-4a8d7e89859e",
        "eventType": format!("Microsoft.Devices.{kind}"),
        "eventTime": Timestamp::from_unix_millis(at).to_rfc3339(),
        "data": {
            "deviceConnectionStateEventInfo": {
                "sequenceNumber": format!("000000000000000001D4132452F67CE2000000020000000000000000{:08X}", i + 1)
            },
            "hubName": "MYIOTHUB",
            "deviceId": "48e44e11-1437-4907-83b1-4a8d7e89859e",
            "moduleId": ""
        },
        "dataVersion": "1",
        "metadataVersion": "1"
    })
}

/// A direct Event Grid delivery: an array holding the one event.
fn event_grid_body(i: usize) -> Vec<u8> {
    serde_json::to_vec_pretty(&json!([event(i)])).expect("serialisable")
}

/// The host's invocation: `Data.eventGridEvent` is a JSON string holding a JSON string holding the
/// event (the form captured from the host, `tests/fixtures/host/eventgrid-invocation.derived.json`).
fn host_body(i: usize) -> Vec<u8> {
    let once = serde_json::to_string_pretty(&event(i)).expect("serialisable");
    let twice = serde_json::to_string(&once).expect("serialisable");
    serde_json::to_vec(&json!({
        "Data": { "eventGridEvent": twice },
        "Metadata": { "sys": { "MethodName": "ConnectionEvent", "UtcNow": "2024-01-01T00:00:01Z" } }
    }))
    .expect("serialisable")
}

/// Decodes the one event of `bytes` with `decode` and applies it to `state`.
fn decode_apply(
    bytes: &[u8],
    decode: Decode,
    state: &IdentityState,
    policy: &Policy,
) -> machine::Transition {
    let received_at = Timestamp::from_unix_millis(T0_MS);
    let mut items = decode(bytes).expect("accepted envelope");
    match items.pop() {
        Some(Decoded::Event(e)) => machine::apply(state, &e, received_at, policy),
        other => panic!("expected one event, got {other:?}"),
    }
}

/// The state before each event: the result of applying all earlier ones.
fn states_before(bodies: &[Vec<u8>], decode: Decode, policy: &Policy) -> Vec<IdentityState> {
    let mut states = Vec::with_capacity(bodies.len());
    let mut state = IdentityState::default();
    for b in bodies {
        states.push(state.clone());
        let t = decode_apply(b, decode, &state, policy);
        assert!(t.outcome.changes_state(), "every event must change state");
        state = t.state;
    }
    states
}

fn bench_envelope(
    c: &mut Criterion,
    group_name: &str,
    body: fn(usize) -> Vec<u8>,
    decode: Decode,
    extra_ceiling: Option<(&str, Parse)>,
) {
    let policy = Policy::new(Duration::from_secs(300));
    let bodies: Vec<Vec<u8>> = (0..EVENTS).map(body).collect();
    let states = states_before(&bodies, decode, &policy);
    let mut g = c.benchmark_group(group_name);
    g.throughput(Throughput::Elements(1));
    g.bench_function("serde_json_parse_only", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % EVENTS;
            black_box(serde_json::from_slice::<Value>(black_box(&bodies[i])).expect("valid"))
        })
    });
    g.bench_function("decode_apply", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % EVENTS;
            black_box(decode_apply(
                black_box(&bodies[i]),
                decode,
                &states[i],
                &policy,
            ))
        })
    });
    if let Some((name, parse)) = extra_ceiling {
        g.bench_function(name, |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % EVENTS;
                black_box(parse(black_box(&bodies[i])))
            })
        });
    }
    g.finish();
}

/// The host envelope's whole parsing work: the outer object, then the string layers down to the
/// event object — the ceiling that counts the double encoding as unavoidable.
fn parse_all_layers(bytes: &[u8]) -> Value {
    let outer: Value = serde_json::from_slice(bytes).expect("valid");
    let s1 = outer["Data"]["eventGridEvent"].as_str().expect("string");
    let s2: String = serde_json::from_str(s1).expect("string in string");
    serde_json::from_str(&s2).expect("event")
}

fn core(c: &mut Criterion) {
    bench_envelope(
        c,
        "event_grid",
        event_grid_body,
        |b| decode::decode_delivery(&decode::parse_json(b)?),
        None,
    );
    bench_envelope(
        c,
        "host",
        host_body,
        |b| decode::decode_host_invocation(&decode::parse_json(b)?),
        Some(("serde_json_parse_all_layers", parse_all_layers)),
    );
}

criterion_group! {
    name = benches;
    // Enough samples for a stable median on a noisy 2-core machine, short enough to run often.
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = core
}
criterion_main!(benches);
