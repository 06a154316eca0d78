//! Faults around connmon: the alert channel is down for a while (500s,
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
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
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

/// `(kind, deviceId)` of every alert the receiver accepted, in arrival order.
fn delivered(rx: &Receiver) -> Vec<(String, String)> {
    names(&rx.delivered())
}

fn disc(device: &str) -> (String, String) {
    pair("disconnected", device)
}

/// Posts `ev` as the host does and returns the answer, whatever its status.
fn post_event(cm: &Connmon, ev: &Ev) -> Response {
    cm.invoke(
        "ConnectionEvent",
        &invocation(encode(&ev.eg(), Enc::StrInStr)),
    )
}

/// The timer firing; the answer whatever its status.
fn post_sweep(cm: &Connmon) -> Response {
    cm.invoke("DisconnectTimer", &timer_invocation())
}

fn assert_alive(cm: &mut Connmon) {
    assert!(cm.is_running(), "connmon exited:\n{}", cm.stderr());
    cm.counters();
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
    // Quick retries off: one attempt, one timeout (the quick retries are `delivery.rs`'s).
    let cm = start_with_webhook(&rx, &[("CONNMON_QUICK_RETRY_FOR", "0s")]);
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

/// The back-off of the README's delivery table ("10 s, then doubling up to 10 min") through a long outage of the
/// receiver that fails in every way in turn — connection refused, 500, hang-up, no answer, 502 —
/// while more alerts are raised behind the first ones. Each attempt happens exactly when the
/// schedule says and not a second earlier; after the outage everything arrives once, in order.
fn backoff_schedule(rt: tokio::runtime::Runtime, store: Arc<dyn Store>) {
    let port = free_port(); // nobody listens yet: connection refused
    let url = format!("http://127.0.0.1:{port}/alerts");
    let o = Outbox {
        rt,
        store,
        // The durable schedule alone: the quick retries inside an attempt are tested on their own.
        notifier: Notifier::new(vec![Box::new(Webhook::new(Secret::new(url), 20))], None)
            .with_quick_retries(Duration::ZERO),
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
#[ignore = "needs Azurite: run scripts/test"]
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

// ---------------------------------------------------------------------------------------------
// 3. Store failure: SQLite

/// The launcher for a connmon whose working directory has a 1 MiB tmpfs mounted at `db`, in a
/// mount namespace of its own (a user namespace makes this work without being root). Panics with
/// the reason when the machine does not allow it.
fn small_tmpfs_launcher() -> Vec<&'static str> {
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "this test mounts a small tmpfs in a private mount namespace (`unshare --user \
             --map-root-user --mount`), which this machine refuses: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("this test needs `unshare` (util-linux): {e}"),
    }
    vec![
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        "mkdir -p db && mount -t tmpfs -o size=1m connmon-test db && exec \"$0\"",
    ]
}

/// Writes zeros to `path` until the file system is full; returns how many bytes fitted.
fn fill_up(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0u8; 16 * 1024];
    let mut total = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    total
}

#[test]
fn a_full_disk_answers_503_keeps_the_process_up_and_recovers_when_space_is_freed() {
    let rx = Receiver::start(vec![]);
    let url = rx.url("/alerts");
    let mut cm = Connmon::launched(
        Mode::Functions,
        &[
            ("CONNMON_GRACE_PERIOD", "2s"),
            ("CONNMON_ALERT_WEBHOOK_URL", &url),
            ("CONNMON_SQLITE_PATH", "db/connmon.db"),
        ],
        &small_tmpfs_launcher(),
    );
    // The tmpfs as connmon sees it, through its process's root.
    let db_dir = PathBuf::from(format!("/proc/{}/root{}/db", cm.pid(), cm.dir().display()));
    assert!(db_dir.join("connmon.db").exists(), "{}", db_dir.display());

    let before = disconnected("before-full", 1, &ago(600));
    assert!(cm.event(&before)[0].contains("[opened=1]"));

    let filler = db_dir.join("filler");
    let bytes = fill_up(&filler);
    eprintln!("filled the 1 MiB tmpfs with {bytes} bytes");

    // Nothing can be made durable: every delivery is refused with 503, Event Grid's cue to retry.
    let during = disconnected("during-full", 1, &ago(500));
    for _ in 0..3 {
        let msg = error_message(&post_event(&cm, &during), 503);
        assert!(msg.contains("disk is full"), "{msg}");
    }
    // The sweep cannot record its claim either: no alert goes out that the store did not keep.
    let msg = error_message(&post_sweep(&cm), 503);
    assert!(msg.contains("disk is full"), "{msg}");
    assert!(rx.requests().is_empty(), "nothing delivered unclaimed");
    assert_alive(&mut cm);
    assert_eq!(cm.counters()["storeFailures"], 4);

    // Space comes back: the redelivery is applied, the sweep claims and delivers both, once.
    std::fs::remove_file(&filler).unwrap();
    assert!(cm.event(&during)[0].contains("[opened=1]"));
    assert!(cm.event(&before)[0].contains("[duplicate=1]"), "kept");
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (2, 2, 0), "{s:?}");
    assert_eq!(delivered(&rx), [disc("before-full"), disc("during-full")]);
    assert_eq!(cm.sweep().new_alerts, 0);
    assert!(cm.stderr().contains("disk is full"), "logged");
}

/// Runs connmon as an unprivileged user when the tests run as root (root writes read-only files).
fn unprivileged_launcher() -> Vec<&'static str> {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Vec::new();
    }
    vec![
        "sh",
        "-c",
        "chmod 0777 . && exec setpriv --reuid=65534 --regid=65534 --clear-groups \"$0\"",
    ]
}

/// A SQLite file that is not writable when connmon starts stops it with exit code 1 and a clear
/// line (the host restarts it and answers Event Grid non-2xx meanwhile); once writable, it starts
/// with everything acknowledged before.
#[test]
fn a_read_only_sqlite_file_stops_start_up_clearly_and_nothing_acknowledged_is_lost() {
    let mut cm = Connmon::launched(
        Mode::Functions,
        &[("CONNMON_GRACE_PERIOD", "2s")],
        &unprivileged_launcher(),
    );
    let ev = disconnected("read-only", 1, &ago(600));
    assert!(cm.event(&ev)[0].contains("[opened=1]"));
    cm.kill();

    let db = cm.db_path();
    let writable = std::fs::metadata(&db).unwrap().permissions();
    let mut read_only = writable.clone();
    read_only.set_readonly(true);
    std::fs::set_permissions(&db, read_only).unwrap();
    let why = cm
        .try_start_again()
        .expect_err("a read-only file is refused");
    assert!(why.contains("exit status: 1"), "{why}");
    let stderr = cm.stderr();
    let line = stderr.lines().last().unwrap_or_default();
    assert!(
        line.starts_with("connmon: ")
            && line.contains("readonly database")
            && line.contains(&db.display().to_string()),
        "{stderr}"
    );

    std::fs::set_permissions(&db, writable).unwrap();
    cm.start_again();
    assert!(
        cm.event(&ev)[0].contains("[duplicate=1]"),
        "the state was kept"
    );
    assert_eq!(cm.sweep().new_alerts, 1);
}

// ---------------------------------------------------------------------------------------------
// 3. Store failure: Azure Table Storage (an Azurite of the test's own, stopped and started)

fn start_on_table(az: &Azurite, rx: &Receiver) -> Connmon {
    let conn = az.connection_string();
    start_with_webhook(
        rx,
        &[
            ("CONNMON_STORE", "table"),
            ("CONNMON_TABLE_CONNECTION", &conn),
            ("CONNMON_TABLE_NAME", "faults"),
        ],
    )
}

/// While the storage service is down: deliveries and sweeps are answered 503 within the client's
/// retry budget, and the process stays up.
fn while_storage_is_down(cm: &mut Connmon, ev: &Ev) {
    for _ in 0..2 {
        let started = Instant::now();
        let msg = error_message(&post_event(cm, ev), 503);
        assert!(msg.contains("Azure Table Storage"), "{msg}");
        assert!(
            started.elapsed() < Duration::from_secs(12),
            "{:?}",
            started.elapsed()
        );
    }
    let msg = error_message(&post_sweep(cm), 503);
    assert!(msg.contains("Azure Table Storage"), "{msg}");
    assert_alive(cm);
}

#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn table_storage_stopped_mid_run_answers_503_and_recovers_with_its_data() {
    let mut az = Azurite::persistent();
    let rx = Receiver::start(vec![]);
    let mut cm = start_on_table(&az, &rx);
    let before = disconnected("before-stop", 1, &ago(600));
    assert!(cm.event(&before)[0].contains("[opened=1]"));

    az.stop();
    let during = disconnected("during-stop", 1, &ago(500));
    while_storage_is_down(&mut cm, &during);

    az.start_again();
    assert!(cm.event(&during)[0].contains("[opened=1]"));
    assert!(cm.event(&before)[0].contains("[duplicate=1]"), "kept");
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (2, 2, 0), "{s:?}");
    // Raised in one sweep: Table Storage delivers them in dedupKey order.
    let mut got = delivered(&rx);
    got.sort();
    assert_eq!(got, [disc("before-stop"), disc("during-stop")]);
}

/// An emulator restarted in memory comes back without the table: connmon creates it again by
/// itself (what the old table held is gone with the emulator's memory; Azure keeps it) and says
/// so with one `store_reset` alert.
#[test]
#[ignore = "needs Azurite: run scripts/test"]
fn a_table_that_vanished_is_created_again_without_a_restart() {
    let mut az = Azurite::in_memory();
    let rx = Receiver::start(vec![]);
    let mut cm = start_on_table(&az, &rx);
    assert!(cm.event(&disconnected("lost", 1, &ago(600)))[0].contains("[opened=1]"));

    az.kill();
    let during = disconnected("during-outage", 1, &ago(500));
    while_storage_is_down(&mut cm, &during);

    az.start_again();
    let resp = post_event(&cm, &during);
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), cm.stderr());
    assert!(host_logs(&resp)[0].contains("[opened=1]"));
    let s = cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 2, 0), "{s:?}");
    assert_eq!(
        delivered(&rx),
        [disc("during-outage"), pair("store_reset", "")],
        "the outage open before is forgotten"
    );
    assert!(cm.stderr().contains("creating it again"), "{}", cm.stderr());
}
