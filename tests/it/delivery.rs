//! The delivery engine under slow, failing and dying parties, against real receivers and the real
//! binary: a channel whose receiver hangs never delays another channel (each channel has its own
//! worker); a receiver that is down for a few seconds gets its alerts seconds after it is back
//! (quick retries inside one delivery attempt, `Retry-After` honoured); and instances sharing Table
//! Storage never deliver a batch twice however long its POST takes (leases start when the batch
//! is taken and are renewed while it is sent), while an instance that dies holding a lease has its
//! batch delivered by another within 20 s.

use crate::support::*;
use crate::table_client::{azurite_connection_string, azurite_endpoint, unique_table_name};
use connmon::alerts::AlertBody;
use connmon::model::Timestamp;
use connmon::store::table::client::{BatchOp, Entity, TableClient};
use serde_json::Value;
use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

fn slack_ok() -> Answer {
    Answer::Text(200, vec![], "ok".into())
}

/// The settings of a connmon on its own Azurite table.
fn table_settings(prefix: &str) -> Vec<(String, String)> {
    vec![
        ("CONNMON_STORE".into(), "table".into()),
        (
            "CONNMON_TABLE_CONNECTION".into(),
            azurite_connection_string(),
        ),
        ("CONNMON_TABLE_NAME".into(), unique_table_name(prefix)),
    ]
}

fn start(mode: Mode, env: &[(String, String)]) -> Connmon {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Connmon::start(mode, &env)
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The requests `rx` answered 2xx whose body mentions `needle`, with when each arrived.
fn accepted_with(rx: &Receiver, needle: &str) -> Vec<Instant> {
    rx.requests()
        .iter()
        .filter(|r| r.delivered() && String::from_utf8_lossy(&r.body).contains(needle))
        .map(|r| r.at)
        .collect()
}

/// Waits until `rx` accepted a request mentioning `needle`; returns when it arrived.
fn arrival(rx: &Receiver, needle: &str, within: Duration) -> Instant {
    eventually(&format!("a request with {needle:?}"), within, || {
        accepted_with(rx, needle).first().copied()
    })
}

/// `(kind, dedupKey)` of every delivered alert that arrived more than once, with its count.
fn duplicates(alerts: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for a in alerts {
        let key = (a["kind"].to_string(), a["dedupKey"].to_string());
        *seen.entry(key).or_default() += 1;
    }
    seen.retain(|_, n| *n > 1);
    seen
}

// ---------------------------------------------------------------------------------------------
// A slow channel holds no other

/// The webhook's first POST hangs for 9 s. Slack gets the same alert at once, and the alerts raised
/// while the webhook hangs — a `reconnected` queued by an event and a `disconnected` claimed by
/// the next sweep — reach Slack within a second of that sweep; the webhook gets all three once it
/// answers, and nothing arrives twice.
fn a_hanging_webhook_holds_back_no_slack_alert(mode: Mode, mut env: Vec<(String, String)>) {
    let webhook = Receiver::start(vec![Answer::After(
        Duration::from_secs(9),
        Box::new(Answer::Status(200)),
    )]);
    let slack = Receiver::start_then(vec![], slack_ok());
    env.extend(owned(&[
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_SWEEP_INTERVAL", "1h"),
        ("CONNMON_ALERT_WEBHOOK_URL", &webhook.url("/hook")),
        (
            "CONNMON_SLACK_WEBHOOK_URL",
            &slack.url("/services/T1/B2/slowpeer"),
        ),
    ]));
    let cm = start(mode, &env);
    cm.event(&disconnected("first-dev", 1, &ago(600)));
    let delay = thread::scope(|s| {
        s.spawn(|| cm.sweep());
        eventually(
            "the webhook POST is in flight",
            Duration::from_secs(5),
            || (!webhook.requests().is_empty()).then_some(()),
        );
        arrival(&slack, "first-dev", Duration::from_secs(5));
        let logs = cm.event(&connected("first-dev", 2, &ago(0)));
        assert!(logs[0].contains("[reconnected=1]"), "{logs:?}");
        cm.event(&disconnected("second-dev", 1, &ago(600)));
        // Slack is paced at one message a second: sweep once the pace has passed.
        thread::sleep(Duration::from_millis(1_100));
        let swept = Instant::now();
        s.spawn(|| cm.sweep());
        let second = arrival(&slack, "second-dev", Duration::from_secs(15));
        assert!(
            second - swept < Duration::from_secs(1),
            "the next sweep's alerts reach Slack within a second: {:?}",
            second - swept
        );
        let hung_until = webhook.requests()[0].at + Duration::from_secs(9);
        assert!(
            second < hung_until,
            "the webhook was still hanging when Slack got the second sweep's alerts (the test \
             measured what it should): {:?} too late",
            second - hung_until
        );
        second - swept
    });
    eprintln!(
        "{mode:?}: while the webhook hung, the next sweep's alerts reached Slack in {delay:?}"
    );
    let reqs = slack.requests();
    let second = String::from_utf8_lossy(&reqs.last().unwrap().body).to_string();
    assert!(
        second.contains("first-dev") && second.contains("second-dev"),
        "the reconnect and the new outage in one message: {second}"
    );
    // The webhook gets everything once it answers again, each alert once.
    let all = webhook.wait_delivered(3, Duration::from_secs(30));
    assert_eq!(
        names(&all),
        [
            pair("disconnected", "first-dev"),
            pair("reconnected", "first-dev"),
            pair("disconnected", "second-dev"),
        ]
    );
    assert_eq!(accepted_with(&slack, "first-dev").len(), 2, "no duplicates");
    assert_eq!(
        accepted_with(&slack, "second-dev").len(),
        1,
        "no duplicates"
    );
}

#[test]
fn a_hanging_webhook_holds_back_no_slack_alert_functions_sqlite() {
    a_hanging_webhook_holds_back_no_slack_alert(Mode::Functions, vec![]);
}

#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn a_hanging_webhook_holds_back_no_slack_alert_standalone_table() {
    a_hanging_webhook_holds_back_no_slack_alert(Mode::Standalone, table_settings("slowpeer"));
}

// ---------------------------------------------------------------------------------------------
// Quick retries inside one delivery attempt

/// The webhook's receiver is down (connection refused) for 15 s from the first attempt, then
/// comes back: its alert arrives within 10 s of that, with no other sweep than the first (the
/// Functions timer fires once a minute; the standalone ticker is set to a minute too).
fn a_receiver_down_for_15s_has_its_alert_within_10s_of_coming_back(
    mode: Mode,
    mut env: Vec<(String, String)>,
) {
    let port = free_port(); // reserved, nobody listens: connection refused
    env.extend(owned(&[
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_SWEEP_INTERVAL", "1m"),
        (
            "CONNMON_ALERT_WEBHOOK_URL",
            &format!("http://127.0.0.1:{port}/alerts"),
        ),
    ]));
    // The outage is recorded first, so that the first sweep claims it: the timer invocation in
    // Functions mode, the ticker's sweep at start-up in standalone mode.
    let mut cm = start(Mode::Functions, &env);
    cm.event(&disconnected("restarting", 1, &ago(600)));
    if mode == Mode::Standalone {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        cm.start_again_as(Mode::Standalone, &env);
    }
    let first_attempt = Instant::now();
    let sweep = thread::scope(|s| {
        let sweeping = (mode == Mode::Functions).then(|| s.spawn(|| cm.sweep()));
        thread::sleep(Duration::from_secs(15).saturating_sub(first_attempt.elapsed()));
        let rx = Receiver::start_on(port, vec![]);
        let back = Instant::now();
        let got = arrival(&rx, "restarting", Duration::from_secs(20));
        eprintln!(
            "{mode:?}: the receiver came back {:?} after the first attempt; the alert arrived {:?} later",
            back - first_attempt,
            got - back
        );
        assert!(
            got - back < Duration::from_secs(10),
            "within 10 s of the receiver coming back: {:?}",
            got - back
        );
        assert_eq!(names(&rx.delivered()), [pair("disconnected", "restarting")]);
        sweeping.map(|t| t.join().unwrap())
    });
    if let Some(s) = sweep {
        assert_eq!(
            (s.new_alerts, s.delivered, s.queued),
            (1, 1, 0),
            "delivered inside the timer invocation: {s:?}"
        );
    }
}

#[test]
fn a_receiver_down_for_15s_has_its_alert_within_10s_of_coming_back_functions_sqlite() {
    a_receiver_down_for_15s_has_its_alert_within_10s_of_coming_back(Mode::Functions, vec![]);
}

#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn a_receiver_down_for_15s_has_its_alert_within_10s_of_coming_back_standalone_table() {
    a_receiver_down_for_15s_has_its_alert_within_10s_of_coming_back(
        Mode::Standalone,
        table_settings("quickback"),
    );
}

/// Teams answers 429 three times without `Retry-After`: retried after 1, 2 and 4 s inside the same
/// timer invocation, not after 30 s doubling.
#[test]
fn teams_throttling_without_retry_after_is_retried_quickly_first() {
    let teams = Receiver::start(vec![
        Answer::Status(429),
        Answer::Status(429),
        Answer::Status(429),
    ]);
    let url = teams.url("/workflows/1/triggers/manual/paths/invoke?sig=quick");
    let cm = Connmon::functions(&[
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_TEAMS_WEBHOOK_URL", &url),
    ]);
    cm.event(&disconnected("paced", 1, &ago(600)));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 1, 0), "{s:?}");
    let reqs = teams.requests();
    let answered: Vec<Option<u16>> = reqs.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [Some(429), Some(429), Some(429), Some(200)]);
    let gaps: Vec<f64> = reqs
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_secs_f64())
        .collect();
    eprintln!("Teams 429 x3: retried after {gaps:?} s");
    for (gap, want) in gaps.iter().zip([1.0, 2.0, 4.0]) {
        assert!(
            *gap >= want - 0.05 && *gap < want + 1.0,
            "{gaps:?}: 1 s, 2 s, 4 s"
        );
    }
    assert_eq!(reqs[0].body, reqs[3].body, "the same card again");
}

/// A 503 with `Retry-After: 3` is retried after 3 s within the attempt; one whose `Retry-After`
/// is beyond the quick retries' time goes to the durable back-off with that wait.
#[test]
fn retry_after_is_honoured_by_the_quick_retries_and_beyond_them() {
    let rx = Receiver::start(vec![
        Answer::StatusWith(503, vec![("Retry-After".into(), "3".into())]),
        Answer::StatusWith(503, vec![("Retry-After".into(), "120".into())]),
    ]);
    let cm = Connmon::functions(&[
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_ALERT_WEBHOOK_URL", &rx.url("/alerts")),
    ]);
    cm.event(&disconnected("told-3s", 1, &ago(600)));
    let started = Instant::now();
    let s = cm.sweep();
    let took = started.elapsed();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 0, 1), "{s:?}");
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2, "the second answer asks for 120 s: {reqs:?}");
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(2_950) && gap < Duration::from_secs(4),
        "Retry-After: 3 honoured: {gap:?}"
    );
    assert!(
        took < Duration::from_secs(6),
        "no wait past the answer: {took:?}"
    );
    let stderr = cm.stderr();
    assert!(stderr.contains("next attempt in 120s"), "{stderr}");
    // The next sweep does not send before the 120 s are over.
    let s = cm.sweep();
    assert_eq!((s.delivered, s.queued), (0, 1), "{s:?}");
    assert_eq!(rx.requests().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Several instances on one table: leases

/// Queues `n` due `disconnected` alerts for the `webhook` channel in `table`, written straight
/// into the outbox as ARCHITECTURE.md lays it out (`o|{raised}|{dedupKey}|{kind}|{channel}`
/// entities spread over the 32 partitions, a hundred to a batch): claiming them through the
/// store costs two requests each, which on a busy emulator takes longer than the test may.
fn seed_backlog(table: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = TableClient::new(azurite_endpoint(), table).unwrap();
        client.create_table_if_missing().await.unwrap();
        let now = Timestamp::now();
        let mut by_pk: BTreeMap<String, Vec<BatchOp>> = BTreeMap::new();
        for i in 0..n {
            let pk = format!("s{:02x}", i % 32);
            let dedup = format!("cm1-backlog{i:05}");
            let body = AlertBody {
                kind: "disconnected".into(),
                dedup_key: dedup.clone(),
                hub: HUB.into(),
                device_id: format!("backlog-{i:05}"),
                module_id: None,
                disconnected_at: now.plus_millis(-600_000).to_rfc3339(),
                reconnected_at: None,
                downtime_seconds: 600,
                grace_period_seconds: 300,
                detected_at: now.to_rfc3339(),
                disconnects: None,
                window_seconds: None,
                hint: None,
                detail: None,
            };
            let raised = now.unix_millis() + i as i64;
            let mut e = Entity::new(&pk, &format!("o|{raised:015}|{dedup}|disconnected|webhook"));
            e.set_str("channel", "webhook")
                .set_str("kind", "disconnected")
                .set_str("dedupKey", &dedup)
                .set_str("body", &serde_json::to_string(&body).unwrap())
                .set_i64("attempts", 0)
                .set_i64("nextAttemptAt", now.unix_millis())
                .set_i64("leaseUntil", 0);
            by_pk.entry(pk).or_default().push(BatchOp::Insert(e));
        }
        for (pk, ops) in by_pk {
            let mut ops = ops.into_iter().peekable();
            while ops.peek().is_some() {
                let chunk: Vec<BatchOp> = ops.by_ref().take(100).collect();
                client.batch(&pk, chunk).await.unwrap();
            }
        }
    });
}

/// The `disconnected` alerts `rx` accepted: the webhook also appends an `outage` summary to each
/// batch of one hub's alerts, which is not one of them.
fn disconnected_alerts(rx: &Receiver) -> Vec<Value> {
    rx.delivered()
        .into_iter()
        .filter(|a| a["kind"] == "disconnected")
        .collect()
}

/// Functions-mode instances on one table, delivering to `url`.
fn instances(n: usize, table: &str, url: &str) -> Vec<Connmon> {
    let env = [
        ("CONNMON_GRACE_PERIOD", "5m"),
        ("CONNMON_STORE", "table"),
        ("CONNMON_TABLE_CONNECTION", &azurite_connection_string()),
        ("CONNMON_TABLE_NAME", table),
        ("CONNMON_ALERT_WEBHOOK_URL", url),
    ];
    (0..n).map(|_| Connmon::functions(&env)).collect()
}

/// Two instances, a backlog of 1,200 alerts (three batches) and a receiver that answers each POST
/// after 6 s — the first one with a 503 after 10 s, so that batch is held (10 s, a quick retry
/// 1 s later, 6 s more) past the 15 s lease. Both instances' timers fire every 2 s while they deliver.
/// Every alert arrives, none twice: a batch's lease starts when it is taken and is renewed while
/// it is sent.
#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn two_instances_and_a_slow_receiver_deliver_a_backlog_once() {
    let table = unique_table_name("slowbacklog");
    // A longer run (RELIABILITY.md) sets a bigger backlog.
    let n: usize = std::env::var("CONNMON_TEST_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_200);
    let started = Instant::now();
    seed_backlog(&table, n);
    eprintln!("backlog of {n} queued in {:?}", started.elapsed());
    let rx = Receiver::start_then(
        vec![Answer::After(
            Duration::from_secs(10),
            Box::new(Answer::Status(503)),
        )],
        Answer::After(Duration::from_secs(6), Box::new(Answer::Status(200))),
    );
    let all = instances(2, &table, &rx.url("/backlog"));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(50.max(n as u64 / 500 * 10));
    thread::scope(|s| {
        for cm in &all {
            let rx = &rx;
            s.spawn(move || {
                while disconnected_alerts(rx).len() < n && Instant::now() < deadline {
                    if let Ok(resp) =
                        invocation_request("DisconnectTimer", &timer_invocation()).try_send(cm.port)
                    {
                        assert_eq!(resp.status, 200, "{resp:?}");
                    }
                    thread::sleep(Duration::from_secs(2));
                }
            });
        }
    });
    let took = started.elapsed();
    // Anything sent late (a duplicate in flight) would arrive within one more answer.
    thread::sleep(Duration::from_secs(7));
    let delivered = disconnected_alerts(&rx);
    let dups = duplicates(&delivered);
    eprintln!(
        "two instances: {} alerts delivered in {took:?} over {} POSTs, {} delivered twice",
        delivered.len(),
        rx.requests().len(),
        dups.len()
    );
    for (i, cm) in all.iter().enumerate() {
        for line in cm
            .logs()
            .lines()
            .filter(|l| l.contains("lease") || l.contains("alert channel"))
        {
            eprintln!("instance {i}: {line}");
        }
    }
    assert!(
        dups.is_empty(),
        "{} alerts delivered more than once, e.g. {:?}",
        dups.len(),
        dups.iter().next()
    );
    assert_eq!(delivered.len(), n, "every alert delivered");
}

/// An instance is killed (SIGKILL) while its POST hangs, holding the batch's lease: the other
/// instance, whose timer fires right after, delivers the batch within 20 s of the kill.
#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn a_batch_held_by_an_instance_that_died_is_delivered_by_another_within_20s() {
    let table = unique_table_name("deadholder");
    seed_backlog(&table, 3);
    let rx = Receiver::start(vec![Answer::After(
        Duration::from_secs(40),
        Box::new(Answer::Close),
    )]);
    let mut all = instances(2, &table, &rx.url("/orphaned"));
    let port = all[0].port;
    thread::spawn(move || {
        // Its answer never comes: the process is killed meanwhile.
        let _ = invocation_request("DisconnectTimer", &timer_invocation())
            .timeout(Duration::from_secs(60))
            .try_send(port);
    });
    eventually(
        "the first instance's POST is in flight",
        Duration::from_secs(10),
        || (!rx.requests().is_empty()).then_some(()),
    );
    // Long enough for at least one renewal of the lease before the kill.
    thread::sleep(Duration::from_secs(6));
    all[0].kill();
    let killed = Instant::now();
    // The survivor's timer, every 2 s as long as the test waits.
    let survivor = all[1].port;
    let got = thread::scope(|s| {
        let rx = &rx;
        s.spawn(move || {
            while accepted_with(rx, "backlog-").is_empty()
                && killed.elapsed() < Duration::from_secs(25)
            {
                let _ = invocation_request("DisconnectTimer", &timer_invocation())
                    .timeout(Duration::from_secs(60))
                    .try_send(survivor);
                thread::sleep(Duration::from_secs(2));
            }
        });
        arrival(rx, "backlog-", Duration::from_secs(25))
    });
    let resumed = got - killed;
    eprintln!("the survivor delivered the dead instance's batch {resumed:?} after the kill");
    assert!(
        resumed < Duration::from_secs(20),
        "resumed within 20 s: {resumed:?}"
    );
    let delivered = rx.delivered();
    assert_eq!(delivered.len(), 3, "{delivered:#?}");
    assert!(duplicates(&delivered).is_empty());
}
