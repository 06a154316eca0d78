//! Faults around connmon (issue 7, items 2 and 3): the alert channel is down for a while (500s,
//! no answer, connections refused) and the store fails (the SQLite file's disk is full or the file
//! is read-only, Table Storage stops). What must hold: every alert arrives, none is lost, retries
//! back off; a delivery the store could not make durable is answered non-2xx (so Event Grid
//! delivers it again), the process stays up, and it recovers by itself once the store is back.
//!
//! `RELIABILITY-crash-faults.md` gives the figures and what could not be tested here.

use crate::support::*;
use connmon::channels::webhook::Webhook;
use connmon::channels::Notifier;
use connmon::machine::Policy;
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::settings::Secret;
use connmon::store::{Store, StoreConfig};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn start_with_webhook(rx: &Receiver, extra: &[(&str, &str)]) -> Connmon {
    let url = rx.url("/alerts");
    let mut env = vec![
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_ALERT_WEBHOOK_URL", url.as_str()),
    ];
    env.extend_from_slice(extra);
    Connmon::functions(&env)
}

fn disc(device: &str) -> (String, String) {
    pair("disconnected", device)
}

// ---------------------------------------------------------------------------------------------
// 2. Alert channel outage

/// A receiver that accepts the connection and never answers costs one request timeout (10 s), not
/// a sweep that never ends, and events are applied as usual meanwhile. (That the alert is retried
/// after the back-off and then arrives is `the_retry_schedule_backs_off_…`, attempt 5.)
#[test]
fn a_receiver_that_never_answers_costs_one_timeout_and_blocks_no_event() {
    let rx = Receiver::start(vec![Answer::After(
        Duration::from_secs(15),
        Box::new(Answer::Close),
    )]);
    let cm = start_with_webhook(&rx, &[]);
    cm.event(&disconnected("hung-1", 1, &ago(600)));

    let (sweep, took, during) = thread::scope(|s| {
        let sweeping = s.spawn(|| {
            let started = Instant::now();
            let sweep = cm.sweep();
            (sweep, started.elapsed())
        });
        eventually(
            "the delivery reached the receiver",
            Duration::from_secs(5),
            || (!rx.requests().is_empty()).then_some(()),
        );
        let mut during = Vec::new();
        for n in 1..=3 {
            let started = Instant::now();
            let logs = cm.event(&disconnected(&format!("during-{n}"), 1, &ago(300)));
            assert!(logs[0].contains("[opened=1]"), "{logs:?}");
            during.push(started.elapsed());
        }
        let (sweep, took) = sweeping.join().unwrap();
        (sweep, took, during)
    });
    eprintln!("hung receiver: the sweep took {took:?}; events meanwhile answered in {during:?}");
    assert_eq!(
        (sweep.new_alerts, sweep.delivered, sweep.queued),
        (1, 0, 1),
        "{sweep:?}"
    );
    assert!(sweep.logs[0].contains("no answer within 10s"), "{sweep:?}");
    assert!(
        took >= Duration::from_millis(9_500) && took < Duration::from_secs(13),
        "the sweep gives up after the 10 s request timeout: {took:?}"
    );
    assert!(
        during.iter().all(|d| *d < Duration::from_secs(2)),
        "events wait for no delivery: {during:?}"
    );
    // Backing off: the next sweep claims what arrived meanwhile but sends nothing yet.
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (3, 0, 4), "{s:?}");
    assert_eq!(rx.requests().len(), 1);
    assert_eq!(rx.requests()[0].answered, None);
}

/// The generic webhook channel and a real store, driven in-process so that the clock can be
/// moved: a sweep's delivery pass takes `now` as a parameter, and a failure backs off from it.
struct Outbox {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    notifier: Notifier,
    /// A base an hour ahead of the real clock: a failure is dated `max(real now, now)`, so every
    /// time the test passes is the one the back-off is computed from.
    t0: Timestamp,
}

impl Outbox {
    fn at(&self, secs: i64) -> Timestamp {
        self.t0.plus_millis(secs * 1000)
    }

    /// Applies one event received at `at` (it happened ten minutes before).
    fn event(&self, device: &str, n: u64, disconnect: bool, at: i64) {
        let seq = SequenceNumber::parse(&format!("{n:064X}")).unwrap();
        let kind = if disconnect {
            EventKind::Disconnected(seq)
        } else {
            EventKind::Connected(seq)
        };
        let ev = ConnectionEvent {
            identity: Identity::new(HUB, device, None),
            kind,
            time: Some(self.at(at - 600)),
            event_id: String::new(),
        };
        self.rt
            .block_on(self.store.apply(vec![ev], self.at(at)))
            .unwrap();
    }

    fn claim(&self, at: i64) -> usize {
        self.rt
            .block_on(self.store.claim_due(self.at(at), 100))
            .unwrap()
            .len()
    }

    fn deliver(&self, at: i64) -> connmon::channels::DeliveryReport {
        self.rt
            .block_on(self.notifier.deliver(self.store.clone(), self.at(at)))
            .unwrap()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The back-off of design.md ("10 s, then doubling up to 10 min") through a long outage of the
/// receiver that fails in every way in turn — connection refused, 500, hang-up, no answer, 502 —
/// while more alerts are raised behind the first ones. Each attempt happens exactly when the
/// schedule says and not a second earlier; after the outage everything arrives once, in order.
fn backoff_schedule(rt: tokio::runtime::Runtime, store: Arc<dyn Store>) {
    let port = free_port(); // nobody listens yet: connection refused
    let url = format!("http://127.0.0.1:{port}/alerts");
    let o = Outbox {
        rt,
        store,
        notifier: Notifier::new(vec![Box::new(Webhook::new(Secret::new(url), 20))], None),
        t0: Timestamp::now().plus_millis(3_600_000),
    };
    for d in ["a", "b", "c"] {
        o.event(d, 1, true, 0);
    }
    assert_eq!(o.claim(0), 3);

    // (seconds after the first attempt, what the receiver does with it)
    let schedule: [(i64, &str); 8] = [
        (0, "refused"),
        (10, "refused"),
        (30, "500"),
        (70, "hang-up"),
        (150, "no answer"),
        (310, "502"),
        (630, "500"),
        (1230, "200"),
    ];
    let mut rx: Option<Receiver> = None;
    let mut queued = 3;
    for (i, (at, what)) in schedule.iter().enumerate() {
        if *at == 30 {
            rx = Some(Receiver::start_on(
                port,
                vec![
                    Answer::Status(500),
                    Answer::Close,
                    Answer::After(Duration::from_secs(12), Box::new(Answer::Close)),
                    Answer::Status(502),
                    Answer::Status(500),
                ],
            ));
        }
        // More alerts while the receiver is down: a reconnect and a new outage, queued behind.
        if i == 4 {
            o.event("a", 2, false, 80);
            o.event("d", 1, true, 90);
            assert_eq!(o.claim(100), 1);
            queued = 5;
        }
        let seen = rx.as_ref().map_or(0, |r| r.requests().len());
        // A second before the attempt is due: nothing is sent.
        let early = o.deliver(at - 1);
        assert_eq!(
            (early.delivered, early.deferred),
            (0, 0),
            "attempt {} ({what}) not before +{at}s",
            i + 1
        );
        assert_eq!(rx.as_ref().map_or(0, |r| r.requests().len()), seen);
        // When it is due: one attempt.
        let started = Instant::now();
        let r = o.deliver(*at);
        eprintln!(
            "attempt {} at +{at}s: {what}: {:?} (took {:?})",
            i + 1,
            r.problems,
            started.elapsed()
        );
        if *what == "200" {
            assert_eq!((r.delivered, r.deferred), (queued, 0), "{r:?}");
        } else {
            assert_eq!((r.delivered, r.deferred), (0, queued), "{r:?}");
            let expect = match *what {
                "refused" => "cannot connect",
                "no answer" => "no answer within 10s",
                "hang-up" => "request failed",
                code => code,
            };
            assert!(r.problems[0].contains(expect), "{what}: {r:?}");
        }
        if *what != "refused" {
            assert_eq!(rx.as_ref().unwrap().requests().len(), seen + 1, "{what}");
        }
    }
    assert_eq!(o.rt.block_on(o.store.queue_len()).unwrap(), 0);
    let later = o.deliver(5000);
    assert_eq!((later.delivered, later.deferred), (0, 0));

    let rx = rx.unwrap();
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 6, "attempts 3 to 8 reached the receiver");
    let kinds = |r: &Received| names(&r.alerts());
    // The first three were raised in one sweep, in an order of the store's choosing (Table
    // Storage: by dedupKey); what came later queues behind them, in order.
    let mut first_three = kinds(&reqs[0]);
    first_three.sort();
    assert_eq!(first_three, [disc("a"), disc("b"), disc("c")]);
    let mut all_five = kinds(&reqs[0]);
    all_five.extend([pair("reconnected", "a"), disc("d")]);
    assert_eq!(kinds(&reqs[1]), kinds(&reqs[0]));
    for r in &reqs[2..] {
        assert_eq!(kinds(r), all_five, "the queue grew behind, in order");
    }
    // Retried byte for byte: the same alerts with the same dedupKeys and times.
    assert_eq!(reqs[0].alerts()[..], reqs[5].alerts()[..3]);
    assert_eq!(rx.delivered().len(), 5, "each alert delivered once");
}

#[test]
fn the_retry_schedule_backs_off_10s_doubling_to_10min_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        policy: Policy::new(Duration::from_secs(1)),
        channels: vec!["webhook".into()],
    };
    let store = connmon::store::sqlite::SqliteStore::open(&dir.path().join("c.db"), cfg).unwrap();
    backoff_schedule(runtime(), Arc::new(store));
}

#[test]
fn the_retry_schedule_backs_off_10s_doubling_to_10min_table() {
    let cfg = StoreConfig {
        policy: Policy::new(Duration::from_secs(1)),
        channels: vec!["webhook".into()],
    };
    let client = connmon::store::table::client::TableClient::new(
        crate::table_client::azurite_endpoint(),
        &crate::table_client::unique_table_name("backoff"),
    )
    .unwrap();
    let rt = runtime();
    let store = rt
        .block_on(connmon::store::table::TableStore::open(client, cfg))
        .unwrap();
    backoff_schedule(rt, Arc::new(store));
}
