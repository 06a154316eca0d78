//! Status API benchmark: what the read side costs on a real SQLite file of 100k (and, with
//! `--sizes`, 1M) identities — `GET /api/status`'s counts, one page of `GET /api/devices?state=
//! offline`, the whole dashboard (one pass over every identity plus rendering), and `/metrics` —
//! against a baseline measured on the same file in the same run: a bare `SELECT COUNT(*)`.
//!
//! The fleet: every identity connected with a token renewal in its history; 1% offline (pending).
//! Timings are wall clock through `Monitor` (as the routes call it), median of `--reps` (default 5).
//!
//! Run: `cargo bench --bench status` (`-- --sizes 100000,1000000 --reps 5`).
//! Smoke (2,000 identities, one repetition): `cargo bench --bench status -- --smoke`, or
//! `cargo test --benches`.

mod support;

use connmon::channels::{LogOnly, Notifier};
use connmon::machine::Policy;
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::monitor::{DeviceQuery, Monitor};
use connmon::store::sqlite::SqliteStore;
use connmon::store::{Store, StoreConfig};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH: usize = 5000;

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Loads `n` identities: disconnect at t−2h, connect 30 s later (a renewal), and 1% disconnect
/// again a minute before `now`.
fn load(rt: &tokio::runtime::Runtime, store: &SqliteStore, n: usize, now: Timestamp) {
    let mut seq = 0u64;
    let mut next = || {
        seq += 1;
        let mut b = [0u8; 32];
        b[24..].copy_from_slice(&seq.to_be_bytes());
        SequenceNumber::from_bytes(b)
    };
    let id = |i: usize| Identity::new("benchhub", &format!("device-{i:08}"), None);
    let phases: [(i64, bool, usize); 3] = [
        (-7_200_000, false, 1),
        (-7_170_000, true, 1),
        (-60_000, false, 100),
    ];
    for (offset, connected, every) in phases {
        let at = now.plus_millis(offset);
        let mut batch = Vec::with_capacity(BATCH);
        for i in (0..n).filter(|i| i % every == 0) {
            let s = next();
            batch.push(ConnectionEvent {
                identity: id(i),
                kind: if connected {
                    EventKind::Connected(s)
                } else {
                    EventKind::Disconnected(s)
                },
                time: Some(at),
                event_id: String::new(),
            });
            if batch.len() == BATCH {
                rt.block_on(store.apply(std::mem::take(&mut batch), at))
                    .expect("apply");
            }
        }
        if !batch.is_empty() {
            rt.block_on(store.apply(batch, at)).expect("apply");
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let sizes: Vec<usize> = match arg::<String>(&args, "--sizes") {
        Some(s) => s.split(',').map(|n| n.parse().expect("a size")).collect(),
        None if smoke => vec![2000],
        None => vec![100_000],
    };
    let reps: usize = arg(&args, "--reps").unwrap_or(if smoke { 1 } else { 5 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("status bench: {reps} repetitions per figure, medians");
    println!("| identities | COUNT(*) baseline | /api/status | devices?state=offline (100) | dashboard (scan + render) | render only | /metrics | RSS peak |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("status.db");
        let policy = Policy::new(Duration::from_secs(300));
        let cfg = StoreConfig {
            policy: policy.clone(),
            channels: vec!["log".into()],
        };
        let store = SqliteStore::open(&path, cfg).expect("open");
        let now = Timestamp::now();
        load(&rt, &store, n, now);
        let store: Arc<dyn Store> = Arc::new(store);
        let monitor = Monitor::new(store, Notifier::new(vec![Box::new(LogOnly)], None), policy);
        let conn = rusqlite::Connection::open(&path).expect("baseline connection");
        let time = |f: &mut dyn FnMut()| {
            let v: Vec<Duration> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed()
                })
                .collect();
            median(v)
        };
        let baseline = time(&mut || {
            let c: i64 = conn
                .query_row("SELECT COUNT(*) FROM identities", [], |r| r.get(0))
                .unwrap();
            assert_eq!(c as usize, n);
        });
        // Past the counts cache (5 s): each call a minute later than the one before.
        let mut later = 0;
        let mut past_cache = move || {
            later += 60_000;
            Timestamp::now().plus_millis(later)
        };
        let status = time(&mut || {
            let s = rt.block_on(monitor.status(past_cache())).unwrap();
            assert_eq!(s.tracked as usize, n);
            assert_eq!(s.pending as usize, n.div_ceil(100));
        });
        let devices = time(&mut || {
            let q = DeviceQuery {
                hub: None,
                state: connmon::api::StateFilter::parse("offline"),
                after: None,
                limit: 100,
                scan_budget: 100_000,
            };
            let p = rt.block_on(monitor.devices(q, Timestamp::now())).unwrap();
            assert!(!p.devices.is_empty());
        });
        let mut page = String::new();
        let dashboard = time(&mut || {
            let d = rt.block_on(monitor.dashboard(past_cache())).unwrap();
            page = connmon::dashboard::render(&d, 30);
        });
        let d = rt.block_on(monitor.dashboard(Timestamp::now())).unwrap();
        let render = time(&mut || {
            page = connmon::dashboard::render(&d, 30);
        });
        let metrics = time(&mut || {
            let m = rt.block_on(monitor.prometheus(past_cache())).unwrap();
            assert!(m.contains("connmon_identities"));
        });
        let rss = support::proc_status_kib("self", "VmHWM");
        println!(
            "| {n} | {:.1} ms | {:.1} ms ({:.1}×) | {:.1} ms | {:.0} ms ({:.0}×) | {:.2} ms ({} KB) | {:.1} ms | {} MB |",
            ms(baseline),
            ms(status),
            ms(status) / ms(baseline),
            ms(devices),
            ms(dashboard),
            ms(dashboard) / ms(baseline),
            ms(render),
            page.len() / 1024,
            ms(metrics),
            rss / 1024
        );
    }
}
