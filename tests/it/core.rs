//! The pure core, table-driven: every rule of docs/rules.md as a script of events and sweeps over one
//! or more identities, checked against the transcript it must produce. No I/O, no clock.

use connmon::machine::{apply, claim_due, dedup_key, Claim, IdentityState, Outcome, Policy};
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use std::collections::BTreeMap;
use std::time::Duration;

const GRACE: u64 = 300;
/// 2026-11-27T10:00:00Z: script times are seconds after this.
const BASE_MS: i64 = 1_795_773_600_000;

fn at(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(BASE_MS + s * 1000)
}

fn seq(n: u128) -> SequenceNumber {
    // Put the counter in the high half too, so ordering must use all 32 bytes.
    SequenceNumber::parse(&format!("{:032X}{:032X}", n >> 64, n)).unwrap()
}

fn dev(d: &str) -> Identity {
    Identity::new("hub", d, None)
}

/// One step of a script.
#[derive(Clone)]
enum S {
    /// Disconnected(identity, seq, eventTime seconds)
    Dis(Identity, u128, i64),
    Con(Identity, u128, i64),
    /// An event without eventTime, received at the given second.
    DisNoTime(Identity, u128, i64),
    Del(Identity, i64),
    Sweep(i64),
}

/// Runs a script against an in-memory map of states and returns a transcript: one line per event
/// outcome (`d1 opened`) and one per alert (`ALERT disconnected d1 from=0 down=300`).
fn run(steps: &[S]) -> Vec<String> {
    run_with(&Policy::new(Duration::from_secs(GRACE)), steps)
}

/// [`run`] under a given policy (grace overrides, silences).
fn run_with(policy: &Policy, steps: &[S]) -> Vec<String> {
    let mut states: BTreeMap<Identity, IdentityState> = BTreeMap::new();
    let mut out = Vec::new();
    let name = |id: &Identity| match id.module() {
        Some(m) => format!("{}/{}", id.device(), m),
        None => id.device().to_string(),
    };
    let secs = |t: Timestamp| (t.unix_millis() - BASE_MS) / 1000;
    let event = |states: &mut BTreeMap<Identity, IdentityState>,
                 out: &mut Vec<String>,
                 id: &Identity,
                 kind,
                 time: Option<Timestamp>,
                 received: Timestamp| {
        let ev = ConnectionEvent {
            identity: id.clone(),
            kind,
            time,
            event_id: String::new(),
        };
        let state = states.entry(id.clone()).or_default();
        let t = apply(state, &ev, received, policy);
        out.push(format!("{} {}", name(id), t.outcome.as_str()));
        if let Some(a) = &t.alert {
            let flap = a
                .flap
                .as_ref()
                .map(|f| format!(" n={} hint={}", f.disconnects, f.hint.is_some()))
                .unwrap_or_default();
            out.push(format!(
                "ALERT {} {} from={} back={} down={}{flap}",
                a.kind.as_str(),
                name(&a.identity),
                secs(a.disconnected_at),
                secs(a.reconnected_at.unwrap()),
                a.downtime_seconds
            ));
        }
        assert_eq!(
            t.outcome.changes_state(),
            t.state != *state || t.outcome == Outcome::Deleted,
            "changes_state must match whether the state changed ({:?})",
            t.outcome
        );
        *state = t.state;
    };
    for step in steps {
        match step.clone() {
            S::Dis(id, n, s) => event(
                &mut states,
                &mut out,
                &id,
                EventKind::Disconnected(seq(n)),
                Some(at(s)),
                at(s + 1),
            ),
            S::Con(id, n, s) => event(
                &mut states,
                &mut out,
                &id,
                EventKind::Connected(seq(n)),
                Some(at(s)),
                at(s + 1),
            ),
            S::DisNoTime(id, n, s) => event(
                &mut states,
                &mut out,
                &id,
                EventKind::Disconnected(seq(n)),
                None,
                at(s),
            ),
            S::Del(id, s) => event(
                &mut states,
                &mut out,
                &id,
                EventKind::Deleted,
                Some(at(s)),
                at(s + 1),
            ),
            S::Sweep(s) => {
                for (id, state) in states.iter_mut() {
                    match claim_due(id, state, at(s), policy) {
                        Claim::Alert(next, a) => {
                            out.push(format!(
                                "ALERT {} {} from={} down={}",
                                a.kind.as_str(),
                                name(id),
                                secs(a.disconnected_at),
                                a.downtime_seconds
                            ));
                            *state = next;
                        }
                        Claim::Snooze(next) => {
                            out.push(format!(
                                "snoozed {} until={}",
                                name(id),
                                secs(next.due_at(policy).unwrap())
                            ));
                            *state = next;
                        }
                        Claim::NotDue => {}
                    }
                }
            }
        }
    }
    out
}

#[track_caller]
fn check(steps: &[S], expected: &[&str]) {
    let got = run(steps);
    assert_eq!(
        got,
        expected,
        "\nexpected:\n  {}\ngot:\n  {}\n",
        expected.join("\n  "),
        got.join("\n  ")
    );
}

#[test]
fn token_renewal_reconnect_within_grace_is_silent() {
    let d = dev("d1");
    check(
        &[
            S::Dis(d.clone(), 1, 0),
            S::Con(d.clone(), 2, 20),
            S::Sweep(400),
        ],
        &["d1 opened", "d1 closed_silently"],
    );
}

#[test]
fn reconnect_after_a_gap_of_four_minutes_is_still_silent() {
    let d = dev("d1");
    check(
        &[
            S::Dis(d.clone(), 1, 0),
            S::Sweep(240),
            S::Con(d.clone(), 2, 299),
            S::Sweep(1000),
        ],
        &["d1 opened", "d1 closed_silently"],
    );
}

#[test]
fn disconnect_past_grace_alerts_once_and_reconnect_follows_once() {
    let d = dev("d1");
    check(
        &[
            S::Dis(d.clone(), 1, 0),
            S::Sweep(299),
            S::Sweep(300),
            S::Sweep(330),
            S::Sweep(9000),
            S::Con(d.clone(), 2, 400),
            S::Sweep(9999),
            S::Con(d.clone(), 3, 500),
        ],
        &[
            "d1 opened",
            "ALERT disconnected d1 from=0 down=300",
            "d1 reconnected",
            "ALERT reconnected d1 from=0 back=400 down=400",
            "d1 connected",
        ],
    );
}

#[test]
fn alert_is_due_exactly_at_start_plus_grace() {
    let d = dev("d1");
    check(
        &[S::Dis(d.clone(), 1, 100), S::Sweep(399), S::Sweep(400)],
        &["d1 opened", "ALERT disconnected d1 from=100 down=300"],
    );
}

#[test]
fn duplicate_delivery_changes_nothing() {
    let d = dev("d1");
    check(
        &[
            S::Dis(d.clone(), 1, 0),
            S::Dis(d.clone(), 1, 0),
            S::Sweep(300),
            S::Dis(d.clone(), 1, 0),
            S::Con(d.clone(), 2, 400),
            S::Con(d.clone(), 2, 400),
        ],
        &[
            "d1 opened",
            "d1 duplicate",
            "ALERT disconnected d1 from=0 down=300",
            "d1 duplicate",
            "d1 reconnected",
            "ALERT reconnected d1 from=0 back=400 down=400",
            "d1 duplicate",
        ],
    );
}

#[test]
fn out_of_order_connect_first_means_no_outage() {
    // Event Grid delivers the newer connect before the older disconnect.
    let d = dev("d1");
    check(
        &[
            S::Con(d.clone(), 2, 20),
            S::Dis(d.clone(), 1, 0),
            S::Sweep(1000),
        ],
        &["d1 connected", "d1 stale"],
    );
}

#[test]
fn out_of_order_disconnect_after_newer_disconnect_is_stale() {
    let d = dev("d1");
    check(
        &[
            S::Dis(d.clone(), 3, 200),
            S::Con(d.clone(), 2, 100),
            S::Dis(d.clone(), 1, 0),
            S::Sweep(499),
            S::Sweep(500),
        ],
        &[
            "d1 opened",
            "d1 stale",
            "d1 stale",
            "ALERT disconnected d1 from=200 down=300",
        ],
    );
}

#[test]
fn two_disconnects_in_a_row_restart_the_outage() {
    // IoT Hub's 60 s sampling lost the connect in between: the device was briefly back.
    let d = dev("d1");
    check(
        &[
            S::Dis(d.clone(), 1, 0),
            S::Dis(d.clone(), 5, 200),
            S::Sweep(300),
            S::Sweep(499),
            S::Sweep(500),
        ],
        &[
            "d1 opened",
            "d1 restarted",
            "ALERT disconnected d1 from=200 down=300",
        ],
    );
}

#[test]
fn a_second_disconnect_after_the_alert_continues_the_outage() {
    let d = dev("d1");
    check(
        &[
            S::Dis(d.clone(), 1, 0),
            S::Sweep(300),
            S::Dis(d.clone(), 2, 600),
            S::Sweep(2000),
            S::Con(d.clone(), 3, 2100),
        ],
        &[
            "d1 opened",
            "ALERT disconnected d1 from=0 down=300",
            "d1 continued",
            "d1 reconnected",
            "ALERT reconnected d1 from=0 back=2100 down=2100",
        ],
    );
}

#[test]
fn two_connects_in_a_row_are_quiet() {
    let d = dev("d1");
    check(
        &[
            S::Con(d.clone(), 1, 0),
            S::Con(d.clone(), 4, 3600),
            S::Sweep(9000),
        ],
        &["d1 connected", "d1 connected"],
    );
}

#[test]
fn sequence_numbers_compare_as_256_bit_numbers_not_strings() {
    let d = dev("d1");
    // 2^64 is greater than 2^64 - 1 although its low half is smaller.
    let low = u64::MAX as u128;
    let high = 1u128 << 64;
    check(
        &[
            S::Dis(d.clone(), high, 0),
            S::Con(d.clone(), low, 10),
            S::Sweep(300),
        ],
        &[
            "d1 opened",
            "d1 stale",
            "ALERT disconnected d1 from=0 down=300",
        ],
    );
    let lower = SequenceNumber::parse(&format!("{}0f", "0".repeat(62))).unwrap();
    let upper = SequenceNumber::parse(&format!("{}10", "0".repeat(62))).unwrap();
    assert!(upper > lower, "0x10 > 0x0f");
    assert_eq!(
        SequenceNumber::parse(&"ab".repeat(32)).unwrap(),
        SequenceNumber::parse(&"AB".repeat(32)).unwrap(),
        "case never matters"
    );
}

#[test]
fn identities_are_independent_and_modules_are_their_own_identity() {
    let d = dev("d1");
    let m = Identity::new("hub", "d1", Some("$edgeHub"));
    let other_hub = Identity::new("hub2", "d1", None);
    check(
        &[
            S::Dis(d.clone(), 1, 0),
            S::Dis(m.clone(), 2, 0),
            S::Con(d.clone(), 3, 30),
            S::Dis(other_hub.clone(), 1, 0),
            S::Sweep(300),
        ],
        &[
            "d1 opened",
            "d1/$edgeHub opened",
            "d1 closed_silently",
            "d1 opened",
            "ALERT disconnected d1/$edgeHub from=0 down=300",
            "ALERT disconnected d1 from=0 down=300",
        ],
    );
}

#[test]
fn hub_names_fold_case_and_empty_module_is_device_level() {
    assert_eq!(
        Identity::new("MyHub", "d", None),
        Identity::new("myhub", "d", None)
    );
    assert_eq!(
        Identity::new("MYHUB", "d", Some("")),
        Identity::new("myhub", "d", None)
    );
    assert_ne!(
        Identity::new("h", "d", None),
        Identity::new("h", "D", None),
        "device ids are case-sensitive"
    );
    assert_ne!(
        Identity::new("h", "a-b", None),
        Identity::new("h", "a", Some("b")),
        "never a joined string"
    );
    let upper = Identity::new("IOT-DEMO", "d1", None);
    let lower = Identity::new("iot-demo", "d1", None);
    check(
        &[S::Dis(upper, 1, 0), S::Con(lower, 2, 10)],
        &["d1 opened", "d1 closed_silently"],
    );
}

#[test]
fn missing_event_time_uses_receipt_time() {
    let d = dev("d1");
    check(
        &[S::DisNoTime(d.clone(), 1, 50), S::Sweep(349), S::Sweep(350)],
        &["d1 opened", "ALERT disconnected d1 from=50 down=300"],
    );
}

#[test]
fn delete_cancels_the_unsent_alert_and_ignores_older_late_events() {
    let d = dev("d1");
    check(
        &[
            S::Dis(d.clone(), 5, 0),
            S::Del(d.clone(), 100),
            S::Sweep(1000),
            // A late delivery of an event from before the deletion.
            S::Con(d.clone(), 6, 50),
            S::Dis(d.clone(), 7, 60),
            S::Sweep(2000),
        ],
        &[
            "d1 opened",
            "d1 deleted",
            "d1 before_deletion",
            "d1 before_deletion",
        ],
    );
}

#[test]
fn a_recreated_device_starts_fresh_after_deletion() {
    // Sequence numbers of the new device may be lower than the old one's.
    let d = dev("d1");
    check(
        &[
            S::Dis(d.clone(), 50, 0),
            S::Del(d.clone(), 100),
            S::Con(d.clone(), 1, 200),
            S::Dis(d.clone(), 2, 300),
            S::Sweep(600),
        ],
        &[
            "d1 opened",
            "d1 deleted",
            "d1 connected",
            "d1 opened",
            "ALERT disconnected d1 from=300 down=300",
        ],
    );
}

#[test]
fn a_deletion_delivered_after_newer_events_is_superseded_and_duplicates_ignored() {
    let d = dev("d1");
    check(
        &[
            S::Del(d.clone(), 100),
            S::Del(d.clone(), 100),
            S::Con(d.clone(), 1, 200),
            S::Del(d.clone(), 150),
            S::Dis(d.clone(), 2, 300),
            S::Sweep(600),
        ],
        &[
            "d1 deleted",
            "d1 duplicate",
            "d1 connected",
            "d1 delete_superseded",
            "d1 opened",
            "ALERT disconnected d1 from=300 down=300",
        ],
    );
}

#[test]
fn deleting_after_the_alert_sends_no_reconnected() {
    let d = dev("d1");
    check(
        &[
            S::Dis(d.clone(), 1, 0),
            S::Sweep(300),
            S::Del(d.clone(), 400),
            S::Con(d.clone(), 2, 500),
        ],
        &[
            "d1 opened",
            "ALERT disconnected d1 from=0 down=300",
            "d1 deleted",
            "d1 connected",
        ],
    );
}

#[test]
fn delete_sets_the_cancel_flag_only_when_it_deletes() {
    let policy = Policy::new(Duration::from_secs(GRACE));
    let d = dev("d1");
    let ev = |kind, t| ConnectionEvent {
        identity: d.clone(),
        kind,
        time: Some(at(t)),
        event_id: String::new(),
    };
    let s0 = IdentityState::default();
    let t1 = apply(&s0, &ev(EventKind::Disconnected(seq(1)), 0), at(1), &policy);
    let t2 = apply(&t1.state, &ev(EventKind::Deleted, 10), at(11), &policy);
    assert!(t2.cancel_queued_alerts);
    assert_eq!(t2.state.outage, None);
    assert_eq!(t2.state.due_at(&policy), None);
    let t3 = apply(&t2.state, &ev(EventKind::Deleted, 10), at(12), &policy);
    assert!(!t3.cancel_queued_alerts);
}

#[test]
fn reordered_delivery_of_a_whole_history_ends_in_the_same_state() {
    // Rule 9's core: applying a set of events in any order gives the state of applying them in
    // sequence-number order (here: the last event is a disconnect at t=900).
    let d = dev("d1");
    let events: Vec<S> = (1..=8u128)
        .map(|n| {
            let t = n as i64 * 100;
            if n % 2 == 0 {
                S::Con(d.clone(), n, t)
            } else {
                S::Dis(d.clone(), n, t)
            }
        })
        .chain([S::Dis(d.clone(), 9, 900)])
        .collect();
    let mut orders: Vec<Vec<S>> = vec![events.clone(), events.iter().rev().cloned().collect()];
    let mut shuffled = events.clone();
    for i in 0..shuffled.len() {
        shuffled.swap(i, (i * 7 + 3) % events.len());
    }
    orders.push(shuffled);
    for order in orders {
        let mut script = order;
        script.push(S::Sweep(1199));
        script.push(S::Sweep(1200));
        let alerts: Vec<String> = run(&script)
            .into_iter()
            .filter(|l| l.starts_with("ALERT"))
            .collect();
        assert_eq!(alerts, ["ALERT disconnected d1 from=900 down=300"]);
    }
}

#[test]
fn dedup_key_is_stable_per_outage_and_distinct_across_outages_and_identities() {
    let a = dev("d1");
    let k1 = dedup_key(&a, &seq(1));
    assert_eq!(k1, dedup_key(&Identity::new("HUB", "d1", None), &seq(1)));
    assert_ne!(k1, dedup_key(&a, &seq(2)));
    assert_ne!(k1, dedup_key(&dev("d2"), &seq(1)));
    assert_ne!(
        dedup_key(&Identity::new("h", "a", Some("b")), &seq(1)),
        dedup_key(&Identity::new("h", "a-b", None), &seq(1))
    );
    assert_ne!(
        dedup_key(&Identity::new("h", "ab", None), &seq(1)),
        dedup_key(&Identity::new("ha", "b", None), &seq(1))
    );
    assert!(k1.len() <= 255 && k1.is_ascii());
}

#[test]
fn timestamps_parse_every_form_iot_hub_sends() {
    let cases = [
        ("2018-06-02T19:17:44.4383997Z", 1_527_967_064_438),
        ("2018-07-03T23:20:11.6921933+00:00", 1_530_660_011_692),
        ("2026-11-27T10:00:00Z", BASE_MS),
        ("2026-11-27T11:00:00+01:00", BASE_MS),
        ("2026-11-27T10:00:00.5Z", BASE_MS + 500),
    ];
    for (s, ms) in cases {
        assert_eq!(
            Timestamp::parse_rfc3339(s),
            Some(Timestamp::from_unix_millis(ms)),
            "{s}"
        );
    }
    for bad in ["06/10/2019 18:41:00", "", "2026-11-27", "yesterday"] {
        assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad}");
    }
    assert_eq!(at(0).to_rfc3339(), "2026-11-27T10:00:00Z");
    assert_eq!(
        Timestamp::from_unix_millis(BASE_MS + 250).to_rfc3339(),
        "2026-11-27T10:00:00.250Z"
    );
}

#[test]
fn sequence_number_rejects_bad_input_with_a_reason() {
    for bad in ["", "12", &"G".repeat(64), &"0".repeat(65), &"0".repeat(63)] {
        let e = SequenceNumber::parse(bad).unwrap_err().to_string();
        assert!(e.contains("64 hex digits"), "{bad}: {e}");
    }
    let s = "000000000000000001D4132452F67CE200000002000000000000000000000001";
    assert_eq!(SequenceNumber::parse(s).unwrap().to_hex(), s);
}

// ---------------------------------------------------------------------------------------------
// Scope, per-pattern grace periods and silences

use connmon::scope::{GraceOverride, Pattern, Scope, Silence};

fn pat(g: &str) -> Pattern {
    Pattern::new(g).unwrap()
}

#[test]
fn patterns_match_device_or_device_slash_module() {
    let dev = Identity::new("h", "pump-7", None);
    let module = Identity::new("h", "pump-7", Some("$edgeAgent"));
    let cases = [
        ("pump-*", true, false),
        ("pump-*/*", false, true),
        ("*/$edgeAgent", false, true),
        ("pump-?", true, false),
        ("PUMP-*", false, false),
        ("*", true, false),
        ("*/*", false, true),
        ("pump-7", true, false),
        ("*7*", true, false),
        ("x*", false, false),
    ];
    for (g, on_dev, on_module) in cases {
        assert_eq!(pat(g).matches(&dev), on_dev, "{g} on the device");
        assert_eq!(pat(g).matches(&module), on_module, "{g} on the module");
    }
    // No blow-up on hostile input: many stars against a long non-matching id.
    let long = Identity::new("h", &"a".repeat(128), None);
    assert!(!pat(&format!("{}b", "*a".repeat(40))).matches(&long));
    assert_eq!(Pattern::new("  "), None);
}

#[test]
fn scope_includes_then_excludes() {
    let scope = Scope {
        include: vec![pat("crit-*"), pat("crit-*/*")],
        exclude: vec![pat("*/$edgeAgent")],
    };
    assert!(scope.contains(&Identity::new("h", "crit-1", None)));
    assert!(scope.contains(&Identity::new("h", "crit-1", Some("$edgeHub"))));
    assert!(!scope.contains(&Identity::new("h", "crit-1", Some("$edgeAgent"))));
    assert!(!scope.contains(&Identity::new("h", "other", None)));
    assert!(Scope::default().contains(&Identity::new("h", "anything", None)));
}

#[test]
fn a_grace_override_changes_when_an_outage_is_due_and_what_the_alert_says() {
    let mut policy = Policy::new(Duration::from_secs(GRACE));
    policy.grace_overrides = vec![
        GraceOverride {
            pattern: pat("slow-*"),
            grace: Duration::from_secs(900),
        },
        GraceOverride {
            pattern: pat("*"),
            grace: Duration::from_secs(60),
        },
    ];
    let (slow, fast) = (dev("slow-1"), dev("fast-1"));
    let got = run_with(
        &policy,
        &[
            S::Dis(slow.clone(), 1, 0),
            S::Dis(fast.clone(), 1, 0),
            S::Sweep(60),
            S::Sweep(899),
            S::Sweep(900),
        ],
    );
    assert_eq!(
        got,
        [
            "slow-1 opened",
            "fast-1 opened",
            "ALERT disconnected fast-1 from=0 down=60",
            "ALERT disconnected slow-1 from=0 down=900",
        ]
    );
    // The first matching pattern wins, and the alert carries the grace that applied.
    let mut state = IdentityState::default();
    let ev = ConnectionEvent {
        identity: slow.clone(),
        kind: EventKind::Disconnected(seq(1)),
        time: Some(at(0)),
        event_id: String::new(),
    };
    state = apply(&state, &ev, at(1), &policy).state;
    match claim_due(&slow, &state, at(900), &policy) {
        Claim::Alert(_, a) => assert_eq!(a.grace_period_seconds, 900),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_silence_mutes_without_losing_the_outage_and_lets_it_out_when_it_ends() {
    let mut policy = Policy::new(Duration::from_secs(GRACE));
    policy.silences = vec![Silence {
        pattern: pat("site7-*"),
        until: at(1000),
    }];
    let (muted, other) = (dev("site7-a"), dev("site8-a"));
    let got = run_with(
        &policy,
        &[
            S::Dis(muted.clone(), 1, 0),
            S::Dis(other.clone(), 1, 0),
            S::Sweep(300),
            S::Sweep(600),
            S::Sweep(999),
            S::Sweep(1000),
        ],
    );
    assert_eq!(
        got,
        [
            "site7-a opened",
            "site8-a opened",
            "snoozed site7-a until=1000",
            "ALERT disconnected site8-a from=0 down=300",
            "ALERT disconnected site7-a from=0 down=1000",
        ]
    );
    // A device that comes back during the silence never alerts.
    let got = run_with(
        &policy,
        &[
            S::Dis(muted.clone(), 1, 0),
            S::Sweep(300),
            S::Con(muted.clone(), 2, 500),
            S::Sweep(2000),
        ],
    );
    assert_eq!(
        got,
        [
            "site7-a opened",
            "snoozed site7-a until=1000",
            "site7-a closed_silently"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Flapping

/// `n` silent reconnects of `d`: disconnect at `start + i*every`, connect 10 s later.
fn flaps(d: &Identity, n: u64, start: i64, every: i64) -> Vec<S> {
    (0..n)
        .flat_map(|i| {
            let t = start + i as i64 * every;
            [
                S::Dis(d.clone(), 2 * i as u128 + 1, t),
                S::Con(d.clone(), 2 * i as u128 + 2, t + 10),
            ]
        })
        .collect()
}

fn alerts_only(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter(|l| l.starts_with("ALERT"))
        .collect()
}

#[test]
fn rapid_silent_reconnects_raise_one_flapping_alert_with_the_duplicate_identity_hint() {
    let d = dev("d1");
    let mut script = flaps(&d, 8, 0, 30);
    script.push(S::Sweep(300));
    // The last silent reconnect's outage started at 210; the window (1800 s) passes at 2010.
    script.push(S::Sweep(2009));
    script.push(S::Sweep(2010));
    assert_eq!(
        alerts_only(run(&script)),
        [
            "ALERT flapping d1 from=0 back=130 down=0 n=5 hint=true",
            "ALERT flapping_resolved d1 from=0 down=0",
        ]
    );
}

#[test]
fn token_renewal_cadence_never_flaps_even_with_a_long_window() {
    let mut policy = Policy::new(Duration::from_secs(GRACE));
    policy.flap_window = Duration::from_secs(86_400);
    let d = dev("d1");
    // Every 60 minutes, like the .NET SDK renewing its SAS token.
    let mut script = flaps(&d, 12, 0, 3600);
    script.push(S::Sweep(100_000));
    assert_eq!(
        alerts_only(run_with(&policy, &script)),
        Vec::<String>::new()
    );
}

#[test]
fn irregular_flapping_has_no_hint_and_fewer_than_the_threshold_is_quiet() {
    let d = dev("d1");
    let four = flaps(&d, 4, 0, 300);
    assert_eq!(alerts_only(run(&four)), Vec::<String>::new(), "4 < 5");
    let five = flaps(&d, 5, 0, 300);
    assert_eq!(
        alerts_only(run(&five)),
        ["ALERT flapping d1 from=0 back=1210 down=0 n=5 hint=false"]
    );
    // Spread wider than the window: never 5 inside 30 minutes.
    let spread = flaps(&d, 10, 0, 500);
    assert_eq!(alerts_only(run(&spread)), Vec::<String>::new());
}

#[test]
fn two_disconnects_in_a_row_count_as_a_silent_reconnect() {
    let d = dev("d1");
    let script: Vec<S> = (0..6u128)
        .map(|i| S::Dis(d.clone(), i + 1, i as i64 * 40))
        .collect();
    let got = alerts_only(run(&script));
    assert_eq!(
        got,
        ["ALERT flapping d1 from=0 back=200 down=0 n=5 hint=true"]
    );
}

#[test]
fn reminders_repeat_an_open_alert_until_it_reconnects_and_respect_silences() {
    let mut policy = Policy::new(Duration::from_secs(GRACE));
    policy.remind_every = Some(Duration::from_secs(600));
    let d = dev("d1");
    let got = run_with(
        &policy,
        &[
            S::Dis(d.clone(), 1, 0),
            S::Sweep(300),
            S::Sweep(899),
            S::Sweep(900),
            S::Sweep(1500),
            S::Con(d.clone(), 2, 1600),
            S::Sweep(5000),
        ],
    );
    assert_eq!(
        got,
        [
            "d1 opened",
            "ALERT disconnected d1 from=0 down=300",
            "ALERT reminder d1 from=0 down=900",
            "ALERT reminder d1 from=0 down=1500",
            "d1 reconnected",
            "ALERT reconnected d1 from=0 back=1600 down=1600",
        ]
    );
    // Without the setting: no reminders at all.
    let none = run(&[S::Dis(d.clone(), 1, 0), S::Sweep(300), S::Sweep(100_000)]);
    assert_eq!(alerts_only(none).len(), 1);
    // A silence snoozes the reminder to its end.
    policy.silences = vec![Silence {
        pattern: pat("d1"),
        until: at(2000),
    }];
    let got = run_with(
        &policy,
        &[
            S::Dis(d.clone(), 1, 0),
            S::Sweep(100),
            S::Sweep(2000),
            S::Sweep(2600),
        ],
    );
    assert_eq!(
        alerts_only(got),
        [
            "ALERT disconnected d1 from=0 down=2000",
            "ALERT reminder d1 from=0 down=2600"
        ]
    );
}

#[test]
fn an_event_time_outside_years_0000_to_9999_utc_counts_as_absent() {
    // Found by fuzz.rs (`event_times_parse_without_panicking_and_print_back_to_themselves`): an
    // offset moved these out of range, and alerts printed the time as 1970-01-01T00:00:00Z.
    for s in ["9999-12-31T23:59:00-00:59", "0000-01-01T00:00:00+00:01"] {
        assert_eq!(Timestamp::parse_rfc3339(s), None, "{s}");
    }
    for s in ["9999-12-31T23:59:59.999Z", "0000-01-01T00:00:00Z"] {
        assert_eq!(Timestamp::parse_rfc3339(s).unwrap().to_rfc3339(), s);
    }
}

#[test]
fn a_sequence_number_of_64_characters_but_not_64_bytes_is_not_hex() {
    // Found by fuzz.rs (`sequence_numbers_parse_exactly_64_hex_digits_and_say_why_not`): the
    // message said "must be 64 hex digits, got 64 characters".
    let s = format!("{}é", "0".repeat(63));
    assert_eq!(
        SequenceNumber::parse(&s).unwrap_err().to_string(),
        "sequenceNumber must be 64 hex digits, found a non-hex character"
    );
}

/// An event time more than five minutes after the receipt comes from a wrong clock: the rules use
/// the receipt time instead, for disconnects and deletions alike. Up to five minutes ahead (clocks
/// disagree by seconds) and anything earlier is believed; no time at all is the receipt time.
#[test]
fn an_event_time_more_than_five_minutes_after_its_receipt_is_taken_as_the_receipt() {
    let policy = Policy::new(Duration::from_secs(GRACE));
    let received = at(1000);
    let y2999 = Timestamp::parse_rfc3339("2999-01-01T00:00:00Z").unwrap();
    // (the event's own time, the time the rules must use)
    let cases = [
        (None, received),
        (Some(at(10)), at(10)),
        (Some(at(1300)), at(1300)),
        (Some(at(1300).plus_millis(1)), received),
        (Some(y2999), received),
    ];
    for (time, want) in cases {
        for kind in [EventKind::Disconnected(seq(1)), EventKind::Deleted] {
            let ev = ConnectionEvent {
                identity: dev("d1"),
                kind,
                time,
                event_id: String::new(),
            };
            let t = apply(&IdentityState::default(), &ev, received, &policy);
            let used = match kind {
                EventKind::Deleted => t.state.deleted_at,
                _ => t.state.outage.map(|o| o.started_at),
            };
            assert_eq!(used, Some(want), "{kind:?} at {time:?}");
        }
    }
}

/// A disconnect stamped 2999 alerts a grace period after it was received; a deletion stamped 2999
/// does not hide the device's later events.
#[test]
fn a_disconnect_or_deletion_stamped_2999_does_not_blind_connmon() {
    let policy = Policy::new(Duration::from_secs(GRACE));
    let y2999 = Some(Timestamp::parse_rfc3339("2999-01-01T00:00:00Z").unwrap());
    let ev = |kind, time| ConnectionEvent {
        identity: dev("d1"),
        kind,
        time,
        event_id: String::new(),
    };
    let t = apply(
        &IdentityState::default(),
        &ev(EventKind::Disconnected(seq(1)), y2999),
        at(0),
        &policy,
    );
    assert_eq!(t.outcome, Outcome::Opened);
    assert_eq!(
        claim_due(&dev("d1"), &t.state, at(GRACE as i64 - 1), &policy),
        Claim::NotDue
    );
    let Claim::Alert(_, alert) = claim_due(&dev("d1"), &t.state, at(GRACE as i64), &policy) else {
        panic!("due a grace period after it was received");
    };
    assert_eq!(alert.disconnected_at, at(0));

    let deleted = apply(
        &IdentityState::default(),
        &ev(EventKind::Deleted, y2999),
        at(0),
        &policy,
    );
    assert_eq!(deleted.outcome, Outcome::Deleted);
    let back = apply(
        &deleted.state,
        &ev(EventKind::Connected(seq(1)), Some(at(10))),
        at(11),
        &policy,
    );
    assert_eq!(back.outcome, Outcome::Connected);
}
