//! Durability across a crash: what connmon acknowledged or queued survives a SIGKILL, and the next
//! process on the same SQLite file picks it up (docs/rules.md §7; the host restarts a handler on
//! every function timeout).

use crate::support::*;
use std::time::Duration;

const SECRET: &str = "S3CRET-restart-token";

fn settings(url: &str) -> [(&str, &str); 2] {
    [
        ("CONNMON_GRACE_PERIOD", "2s"),
        ("CONNMON_ALERT_WEBHOOK_URL", url),
    ]
}

#[test]
fn an_acknowledged_disconnect_survives_sigkill() {
    let rx = Receiver::start(vec![]);
    let url = rx.url(&format!("/hook?code={SECRET}"));
    let mut cm = Connmon::functions(&settings(&url));
    let ev = disconnected("crash-1", 7, &ago(600));
    let logs = cm.event(&ev);
    assert!(logs[0].contains("[opened=1]"), "{logs:?}");
    cm.kill(); // acknowledged, then SIGKILL before any sweep

    cm.start_again();
    assert_eq!(cm.counters()["eventsApplied"], 0, "a new process");
    // The state is there: a redelivery is a duplicate, not a new outage.
    let logs = cm.event(&ev);
    assert!(logs[0].contains("[duplicate=1]"), "{logs:?}");
    assert!(
        rx.requests().is_empty(),
        "Functions mode sweeps only when the timer fires"
    );
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered), (1, 1), "{s:?}");
    let alerts = rx.wait_delivered(1, Duration::from_secs(5));
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0]["deviceId"], "crash-1");
    assert_eq!(alerts[0]["kind"], "disconnected");

    // The outage's alert state survived too: another crash does not make it alert again, and the
    // connect still pairs with it.
    cm.start_again();
    assert_eq!(cm.sweep().new_alerts, 0);
    let logs = cm.event(&connected("crash-1", 8, &ago(0)));
    assert!(logs[0].contains("[reconnected=1]"), "{logs:?}");
    cm.kill();
    cm.start_again();
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered), (0, 1), "{s:?}");
    let alerts = rx.wait_delivered(2, Duration::from_secs(5));
    assert_eq!(alerts[1]["kind"], "reconnected");
    assert_eq!(alerts[1]["dedupKey"], alerts[0]["dedupKey"]);
    assert!(!cm.logs().contains(SECRET));
}

#[test]
fn standalone_start_up_sweep_picks_up_what_a_killed_process_left() {
    let rx = Receiver::start(vec![]);
    let url = rx.url(&format!("/hook?code={SECRET}"));
    let mut cm = Connmon::functions(&settings(&url));
    cm.event(&disconnected("left-behind", 1, &ago(600)));
    cm.kill();

    // Same file, standalone with a long interval: only the start-up sweep can deliver it.
    cm.start_again_as(
        Mode::Standalone,
        &[
            ("CONNMON_GRACE_PERIOD", "2s"),
            ("CONNMON_ALERT_WEBHOOK_URL", &url),
            ("CONNMON_SWEEP_INTERVAL", "1h"),
        ],
    );
    let alerts = rx.wait_delivered(1, Duration::from_secs(10));
    assert_eq!(alerts[0]["deviceId"], "left-behind");
    assert!(!cm.logs().contains(SECRET));
}

#[test]
fn an_alert_queued_while_the_receiver_is_down_is_delivered_after_a_restart() {
    let port = free_port(); // the receiver is down: connection refused
    let url = format!("http://127.0.0.1:{port}/hook?code={SECRET}");
    let mut cm = Connmon::functions(&settings(&url));
    cm.event(&disconnected("queued-1", 1, &ago(600)));
    cm.event(&disconnected("queued-2", 1, &ago(590)));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (2, 0, 2), "{s:?}");
    cm.kill();

    let rx = Receiver::start_on(port, vec![]);
    cm.start_again();
    // The back-off was recorded with the alerts, so delivery resumes once it has passed.
    let sweeps = cm.sweep_until_delivered(Duration::from_secs(20));
    let last = sweeps.last().unwrap();
    assert_eq!(
        last.new_alerts, 0,
        "claimed once, before the crash: {sweeps:?}"
    );
    assert_eq!((last.delivered, last.queued), (2, 0), "{sweeps:?}");
    let alerts = rx.delivered();
    let devices: Vec<&str> = alerts
        .iter()
        .map(|a| a["deviceId"].as_str().unwrap())
        .collect();
    assert_eq!(devices, ["queued-1", "queued-2"]);
    assert_eq!(rx.requests().len(), 1);
    assert!(!cm.logs().contains(SECRET));
}

#[test]
fn sigterm_shuts_down_cleanly_with_exit_code_0() {
    let mut cm = Connmon::functions(&[("CONNMON_GRACE_PERIOD", "2s")]);
    cm.event(&disconnected("graceful", 1, &ago(600)));
    let status = cm.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "the host does not restart exit code 0"
    );
    assert!(cm.stdout().contains("shutting down"), "{}", cm.stdout());
    cm.start_again();
    assert_eq!(cm.sweep().new_alerts, 1);
}

/// One process per SQLite file (an overlapping restart, two containers on one volume): a second
/// process on the file refuses to start with exit code 1 and one line naming the file and the
/// holder; the first keeps working; after the first is killed with SIGKILL a new process starts
/// on the file at once (the lock dies with its process).
#[test]
fn a_second_process_on_the_same_sqlite_file_refuses_to_start() {
    let rx = Receiver::start(vec![]);
    let url = rx.url(&format!("/hook?code={SECRET}"));
    let mut first = Connmon::functions(&settings(&url));
    let db = first.db_path().display().to_string();
    let port = free_port().to_string();
    let mut env = settings(&url).to_vec();
    env.extend([
        ("CONNMON_SQLITE_PATH", db.as_str()),
        ("FUNCTIONS_CUSTOMHANDLER_PORT", port.as_str()),
    ]);
    let second = run_to_exit(&env);
    assert_eq!(second.code, Some(1), "{second:?}");
    let lines: Vec<&str> = second.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {second:?}");
    assert!(
        lines[0].contains(&db) && lines[0].contains(&format!("pid {}", first.pid())),
        "names the file and the holder: {second:?}"
    );
    assert!(!second.stderr.contains(SECRET), "{second:?}");

    // The first keeps working.
    let ev = disconnected("single", 1, &ago(600));
    assert!(first.event(&ev)[0].contains("[opened=1]"));
    let s = first.sweep();
    assert_eq!((s.new_alerts, s.delivered), (1, 1), "{s:?}");

    // SIGKILL, then a new process on the same file starts and has the state.
    first.kill();
    first.start_again();
    assert!(first.event(&ev)[0].contains("[duplicate=1]"));
    assert_eq!(first.sweep().new_alerts, 0, "claimed once, before the kill");
    assert_eq!(rx.delivered().len(), 1);
}
