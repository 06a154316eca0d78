//! The pure side of the operator surfaces (`connmon::status`): classification, the bounded history and what adds
//! to it, the dead-man's switch on a virtual clock, and the API's views and cursors. No I/O.

use connmon::api::{self, DashboardBuilder, StateFilter};
use connmon::machine::{apply, claim_due, AlertKind, Claim, IdentityState, Policy};
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::scope::{Pattern, Silence};
use connmon::status::{
    changes_of, check_hub, classify, Change, ChangeKind, History, HubState, Quiet, State,
    HISTORY_LEN,
};
use connmon::store::{Counts, IdentityRecord};
use std::time::Duration;

const BASE_MS: i64 = 1_795_773_600_000;
const GRACE: Duration = Duration::from_secs(300);

fn at(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(BASE_MS + s * 1000)
}

fn seq(n: u64) -> SequenceNumber {
    SequenceNumber::parse(&format!("{n:064X}")).unwrap()
}

fn id(d: &str) -> Identity {
    Identity::new("hub", d, None)
}

fn ev(i: &Identity, kind: EventKind, t: i64) -> ConnectionEvent {
    ConnectionEvent {
        identity: i.clone(),
        kind,
        time: Some(at(t)),
        event_id: String::new(),
    }
}

/// Applies events and sweeps to one identity, keeping its history as the stores do.
fn script(policy: &Policy, i: &Identity, steps: &[(char, u64, i64)]) -> (IdentityState, History) {
    let mut state = IdentityState::default();
    let mut history = History::default();
    for &(what, n, t) in steps {
        match what {
            'd' | 'c' | 'x' => {
                let kind = match what {
                    'd' => EventKind::Disconnected(seq(n)),
                    'c' => EventKind::Connected(seq(n)),
                    _ => EventKind::Deleted,
                };
                let tr = apply(&state, &ev(i, kind, t), at(t), policy);
                if tr.outcome.changes_state() {
                    history.extend(changes_of(&state, &tr));
                    state = tr.state;
                }
            }
            's' => {
                if let Claim::Alert(next, alert) = claim_due(i, &state, at(t), policy) {
                    history.extend([connmon::status::alert_change(&alert)]);
                    state = next;
                }
            }
            _ => unreachable!(),
        }
    }
    (state, history)
}

fn kinds(h: &History) -> Vec<String> {
    h.0.iter().map(|c| c.kind.name()).collect()
}

#[test]
fn classification_follows_the_outage() {
    let p = Policy::new(GRACE);
    let d = id("d");
    type Case<'a> = (&'a [(char, u64, i64)], State, Option<i64>);
    let cases: &[Case] = &[
        (&[('c', 1, 0)], State::Connected, None),
        (&[('d', 1, 0)], State::Pending, Some(0)),
        (&[('d', 1, 0), ('s', 0, 300)], State::Alerted, Some(0)),
        (&[('d', 1, 0), ('c', 2, 60)], State::Connected, None),
        (
            &[('d', 1, 0), ('s', 0, 300), ('c', 2, 400)],
            State::Connected,
            None,
        ),
        (&[('c', 1, 0), ('x', 0, 10)], State::Deleted, None),
        (&[], State::Unknown, None),
    ];
    for (steps, want, since) in cases {
        let (state, _) = script(&p, &d, steps);
        let s = classify(&d, &state, at(1000), &p);
        assert_eq!(s.state, *want, "{steps:?}");
        assert_eq!(s.offline_since, since.map(at), "{steps:?}");
        assert_eq!(s.due_at.is_some(), *want == State::Pending, "{steps:?}");
    }
}

#[test]
fn a_silence_marks_pending_outages_and_moves_their_due_time() {
    let mut p = Policy::new(GRACE);
    p.silences.push(Silence {
        pattern: Pattern::new("lab-*").unwrap(),
        until: at(7200),
    });
    let (state, _) = script(&p, &id("lab-1"), &[('d', 1, 0)]);
    let s = classify(&id("lab-1"), &state, at(60), &p);
    assert_eq!(
        (s.state, s.silenced_until, s.due_at),
        (State::Pending, Some(at(7200)), Some(at(7200)))
    );
    // After the silence: an ordinary pending outage.
    let s = classify(&id("lab-1"), &state, at(7300), &p);
    assert_eq!(s.silenced_until, None);
    let (state, _) = script(&p, &id("other"), &[('d', 1, 0)]);
    assert_eq!(
        classify(&id("other"), &state, at(60), &p).silenced_until,
        None
    );
    let mut c = Counts::default();
    c.add(&classify(
        &id("lab-1"),
        &script(&p, &id("lab-1"), &[('d', 1, 0)]).0,
        at(60),
        &p,
    ));
    c.add(&classify(
        &id("x"),
        &script(&p, &id("x"), &[('c', 1, 0)]).0,
        at(60),
        &p,
    ));
    c.add(&classify(
        &id("y"),
        &script(&p, &id("y"), &[('c', 1, 0), ('x', 0, 5)]).0,
        at(60),
        &p,
    ));
    assert_eq!(
        (c.tracked, c.connected, c.pending, c.silenced, c.alerted),
        (2, 1, 1, 1, 0),
        "a deleted identity is not tracked"
    );
}

#[test]
fn history_records_transitions_alerts_and_durations() {
    let p = Policy::new(GRACE);
    let d = id("d");
    let (_, h) = script(
        &p,
        &d,
        &[
            ('c', 1, 0),
            ('d', 2, 100),
            ('c', 3, 130), // a token renewal: 30 s
            ('c', 3, 130), // duplicate: nothing
            ('d', 4, 1000),
            ('s', 0, 1300), // alert
            ('d', 5, 1400), // continues
            ('c', 6, 2000), // reconnected alert
        ],
    );
    assert_eq!(
        kinds(&h),
        [
            "connected",
            "disconnected",
            "connected",
            "disconnected",
            "alert:disconnected",
            "disconnected",
            "connected",
            "alert:reconnected"
        ]
    );
    assert_eq!(h.0[2].seconds, Some(30));
    assert_eq!(h.0[4].seconds, Some(300));
    assert_eq!(h.0[6].seconds, Some(1000));
    assert_eq!(h.0[7].seconds, Some(1000));
    assert_eq!(h.0[4].at, at(1300));
    // The stored form reads back the same.
    assert_eq!(History::decode(h.encode().as_deref()), h);
}

#[test]
fn history_is_bounded_and_its_text_form_is_robust() {
    let p = Policy::new(GRACE);
    let d = id("d");
    let steps: Vec<(char, u64, i64)> = (1..=100)
        .map(|n| (if n % 2 == 0 { 'c' } else { 'd' }, n, n as i64 * 10))
        .collect();
    let (_, h) = script(&p, &d, &steps);
    assert_eq!(h.0.len(), HISTORY_LEN);
    assert_eq!(h.0.last().unwrap().at, at(1000), "the newest kept");
    let text = h.encode().unwrap();
    assert!(
        text.len() < HISTORY_LEN * 20,
        "{} bytes: {text}",
        text.len()
    );
    assert_eq!(History::decode(None), History::default());
    assert_eq!(History::default().encode(), None);
    // Unreadable entries are skipped, the rest kept.
    let h = History::decode(Some(
        "c1795773600,??,d1795773700+5,Z1,A,x12+x,R1795773800+60",
    ));
    assert_eq!(
        kinds(&h),
        ["connected", "disconnected", "alert:reconnected"]
    );
    assert_eq!(h.0[1].seconds, Some(5));
    // Every kind survives the round trip.
    let all = [
        ChangeKind::Connected,
        ChangeKind::Disconnected,
        ChangeKind::Deleted,
        ChangeKind::Alert(AlertKind::Disconnected),
        ChangeKind::Alert(AlertKind::Reconnected),
        ChangeKind::Alert(AlertKind::Reminder),
        ChangeKind::Alert(AlertKind::Flapping),
        ChangeKind::Alert(AlertKind::FlappingResolved),
        ChangeKind::Alert(AlertKind::HubQuiet),
        ChangeKind::Alert(AlertKind::HubResumed),
    ];
    let mut h = History::default();
    h.extend(all.iter().enumerate().map(|(i, k)| Change {
        at: at(i as i64),
        kind: *k,
        seconds: (i % 2 == 0).then_some(i as i64 * 7 - 3),
    }));
    assert_eq!(History::decode(h.encode().as_deref()), h);
}

#[test]
fn a_hub_goes_quiet_once_and_resumes_once() {
    let quiet = Duration::from_secs(600);
    let started = at(0);
    let hub = HubState {
        hub: "h".into(),
        last_event_at: at(100),
        quiet: None,
    };
    assert_eq!(check_hub(&hub, at(699), quiet, started), None, "not yet");
    let (next, alert) = check_hub(&hub, at(700), quiet, started).expect("quiet");
    assert_eq!(alert.kind, AlertKind::HubQuiet);
    assert_eq!(
        (alert.disconnected_at, alert.downtime_seconds),
        (at(100), 600)
    );
    assert_eq!(alert.grace_period_seconds, 600);
    assert_eq!(
        next.quiet,
        Some(Quiet {
            since: at(100),
            alerted_at: at(700)
        })
    );
    assert_eq!(check_hub(&next, at(5000), quiet, started), None, "once");
    // An event arrives: resumed, with the same dedup key, then nothing.
    let back = HubState {
        last_event_at: at(5100),
        ..next
    };
    let (done, resumed) = check_hub(&back, at(5110), quiet, started).expect("resumed");
    assert_eq!(resumed.kind, AlertKind::HubResumed);
    assert_eq!(resumed.dedup_key, alert.dedup_key);
    assert_eq!(
        (resumed.reconnected_at, resumed.downtime_seconds),
        (Some(at(5100)), 5000)
    );
    assert_eq!(done.quiet, None);
    assert_eq!(check_hub(&done, at(5200), quiet, started), None);
    // The next quiet period is another pair.
    let (_, again) = check_hub(&done, at(5700), quiet, started).expect("quiet again");
    assert_ne!(again.dedup_key, alert.dedup_key);
    // Never counted from before connmon was running.
    let (_, late) = check_hub(&hub, at(10_600), quiet, at(10_000)).expect("600 s after start");
    assert_eq!(late.disconnected_at, at(10_000));
    assert_eq!(check_hub(&hub, at(10_599), quiet, at(10_000)), None);
}

#[test]
fn cursors_round_trip_and_refuse_what_they_did_not_make() {
    for i in [
        Identity::new("hub", "d", None),
        Identity::new("hub", "d", Some("m")),
        Identity::new("HUB", "a'%$*()\u{e9}", Some("x/y")),
    ] {
        assert_eq!(api::decode_cursor(&api::encode_cursor(&i)), Some(i.clone()));
    }
    for bad in ["", "!!", "aGVsbG8", "AAAA"] {
        assert_eq!(api::decode_cursor(bad), None, "{bad}");
    }
}

#[test]
fn state_filters_and_the_dashboard_fold() {
    let p = Policy::new(GRACE);
    assert!(StateFilter::parse("sleeping").is_none());
    let mut b = DashboardBuilder::default();
    let mut records = Vec::new();
    for n in 0..450 {
        let d = id(&format!("d{n:03}"));
        // d000..d299 offline since n seconds; the rest connected.
        let steps: Vec<(char, u64, i64)> = if n < 300 {
            vec![('d', 1, n as i64)]
        } else {
            vec![('c', 1, 0)]
        };
        let (state, history) = script(&p, &d, &steps);
        records.push(IdentityRecord {
            identity: d,
            state,
            history,
        });
    }
    let offline = StateFilter::parse("offline").unwrap();
    let now = at(100);
    let matching = records
        .iter()
        .filter(|r| offline.matches(&classify(&r.identity, &r.state, now, &p)))
        .count();
    assert_eq!(matching, 300);
    for r in &records {
        b.add(r, &p, now);
    }
    let status = api::status_view(Counts::default(), &Default::default(), 0, 0, &p, None, now);
    let d = b.finish(status, now);
    assert_eq!(d.offline.len(), api::DASHBOARD_ROWS);
    assert_eq!(d.offline_more, 300 - api::DASHBOARD_ROWS as u64);
    // Longest offline first: d000 went offline first.
    assert_eq!(d.offline[0].0.device_id, "d000");
    assert!(d
        .offline
        .windows(2)
        .all(|w| w[0].0.offline_seconds >= w[1].0.offline_seconds));
}
