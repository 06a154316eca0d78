//! Sweep scaling benchmark: a real SQLite file with 10k, 100k and 1M
//! tracked identities, and the sweep's claim loop (`Store::claim_due(now, 5000)` until a chunk comes
//! back short, as `Monitor::sweep` does) with 0%, 1% and 10% of them due. Also: bulk-load rate,
//! bytes per identity on disk, and the process's peak RSS (`VmHWM`).
//!
//! The fleet: every identity connected; 1% more disconnected a minute ago (pending inside the grace,
//! so the due index is not empty but nothing in it is due). A due set is every 100th (1%) or every
//! 10th (10%) identity disconnected long enough ago; after each timed sweep they reconnect, so each
//! repetition starts from the same fleet. Delivery to channels is not part of the timing.
//!
//! Run: `cargo bench --bench sweep` (sizes: `-- --sizes 10000,100000`).
//! Smoke (1,000 identities, one repetition): `cargo bench --bench sweep -- --smoke`, or
//! `cargo test --benches` (no `--bench` argument).

mod support;

use connmon::machine::Policy;
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::store::sqlite::SqliteStore;
use connmon::store::{Store, StoreConfig};
use std::time::{Duration, Instant};

/// What `Monitor` claims per call (`--chunk` tries another).
const CLAIM_CHUNK: usize = 20_000;
/// Events per `Store::apply` call while loading.
const LOAD_BATCH: usize = 5000;
const GRACE_MS: i64 = 300_000;
const MINUTE: i64 = 60_000;

struct Fleet {
    store: SqliteStore,
    n: usize,
    seq: u64,
    now: Timestamp,
    chunk: usize,
}

impl Fleet {
    fn identity(i: usize) -> Identity {
        Identity::new("benchhub", &format!("device-{i:08}"), None)
    }

    fn next_seq(&mut self) -> SequenceNumber {
        self.seq += 1;
        let mut b = [0u8; 32];
        b[24..].copy_from_slice(&self.seq.to_be_bytes());
        SequenceNumber::from_bytes(b)
    }

    /// Applies one event of `kind` at `at` to every identity `i < n` that `pick` selects, in
    /// batches of [`LOAD_BATCH`]. Returns how many events were applied.
    fn apply_to(
        &mut self,
        rt: &tokio::runtime::Runtime,
        pick: impl Fn(usize) -> bool,
        connected: bool,
        at: Timestamp,
    ) -> usize {
        let mut batch = Vec::with_capacity(LOAD_BATCH);
        let mut total = 0;
        for i in (0..self.n).filter(|&i| pick(i)) {
            let seq = self.next_seq();
            batch.push(ConnectionEvent {
                identity: Fleet::identity(i),
                kind: if connected {
                    EventKind::Connected(seq)
                } else {
                    EventKind::Disconnected(seq)
                },
                time: Some(at),
                event_id: String::new(),
            });
            if batch.len() == LOAD_BATCH {
                total += batch.len();
                rt.block_on(self.store.apply(std::mem::take(&mut batch), at))
                    .expect("apply");
                batch.reserve(LOAD_BATCH);
            }
        }
        if !batch.is_empty() {
            total += batch.len();
            rt.block_on(self.store.apply(batch, at)).expect("apply");
        }
        total
    }

    /// One sweep's claim loop; returns (elapsed, alerts claimed).
    fn sweep(&self, rt: &tokio::runtime::Runtime) -> (Duration, usize) {
        let start = Instant::now();
        let mut claimed = 0;
        loop {
            let n = rt
                .block_on(self.store.claim_due(self.now, self.chunk))
                .expect("claim_due")
                .len();
            claimed += n;
            if n < self.chunk {
                break;
            }
        }
        (start.elapsed(), claimed)
    }
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Moves the WAL into the main file (from a second connection; the store's writer is idle), so
/// the file's size is what the data takes.
fn checkpoint(path: &std::path::Path) {
    rusqlite::Connection::open(path)
        .and_then(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())))
        .expect("checkpoint");
}

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn run_size(rt: &tokio::runtime::Runtime, n: usize, chunk: usize, reps: usize, empty_reps: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("sweep.db");
    let store = SqliteStore::open(
        &path,
        StoreConfig {
            policy: Policy::new(Duration::from_millis(GRACE_MS as u64)),
            channels: vec!["log".into()],
        },
    )
    .expect("open store");
    let now = Timestamp::now();
    let mut fleet = Fleet {
        store,
        n,
        seq: 0,
        now,
        chunk,
    };

    let t = Instant::now();
    let loaded = fleet.apply_to(rt, |_| true, true, now.plus_millis(-180 * MINUTE));
    let load = t.elapsed();
    // 1% pending inside the grace: in the due index, not due.
    fleet.apply_to(rt, |i| i % 100 == 50, false, now.plus_millis(-MINUTE));
    checkpoint(&path);
    let db = file_len(&path);
    let wal = file_len(&path.with_extension("db-wal"));
    println!(
        "fleet {n:>9}: loaded {loaded} events in {:.1} s ({:.0} events/s, batches of {LOAD_BATCH}); \
         file {db} B ({:.0} B/identity) + WAL {wal} B",
        load.as_secs_f64(),
        loaded as f64 / load.as_secs_f64(),
        db as f64 / n as f64,
    );

    // Nothing due: the cost must not depend on n.
    fleet.sweep(rt);
    let mut empty: Vec<Duration> = (0..empty_reps)
        .map(|_| {
            let (d, c) = fleet.sweep(rt);
            assert_eq!(c, 0, "nothing is due");
            d
        })
        .collect();
    let (lo, hi) = (*empty.iter().min().unwrap(), *empty.iter().max().unwrap());
    println!(
        "fleet {n:>9}:   0% due: sweep median {:.3} ms (min {:.3}, max {:.3}, {empty_reps} runs)",
        ms(median(&mut empty)),
        ms(lo),
        ms(hi)
    );

    let mut rep = 0;
    for (label, step) in [("1%", 100), ("10%", 10)] {
        let mut times = Vec::new();
        let mut claimed = 0;
        for _ in 0..reps {
            let down = now.plus_millis(-170 * MINUTE + rep * 10 * MINUTE);
            rep += 1;
            fleet.apply_to(rt, |i| i % step == 1, false, down);
            let (d, c) = fleet.sweep(rt);
            claimed = c;
            times.push(d);
            fleet.apply_to(
                rt,
                |i| i % step == 1,
                true,
                down.plus_millis(GRACE_MS + MINUTE),
            );
        }
        assert_eq!(claimed, (0..n).filter(|i| i % step == 1).count());
        let (lo, hi) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
        let med = median(&mut times);
        println!(
            "fleet {n:>9}: {label:>3} due: sweep median {:.1} ms (min {:.1}, max {:.1}, {reps} runs), \
             {claimed} claimed, {:.1} µs/alert",
            ms(med),
            ms(lo),
            ms(hi),
            med.as_secs_f64() * 1e6 / claimed.max(1) as f64
        );
    }
    checkpoint(&path);
    let outbox: i64 = rusqlite::Connection::open(&path)
        .and_then(|c| c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0)))
        .expect("outbox count");
    println!(
        "fleet {n:>9}: after the runs file {} B ({:.0} B/identity, {outbox} outbox rows included) \
         + WAL {} B; process VmHWM {} KiB, VmRSS {} KiB",
        file_len(&path),
        file_len(&path) as f64 / n as f64,
        file_len(&path.with_extension("db-wal")),
        support::proc_status_kib("self", "VmHWM:"),
        support::proc_status_kib("self", "VmRSS:"),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and gets the smoke run.
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let sizes: Vec<usize> = match args.iter().position(|a| a == "--sizes") {
        Some(i) => args
            .get(i + 1)
            .expect("--sizes needs a list")
            .split(',')
            .map(|s| s.trim().parse().expect("a size is a number"))
            .collect(),
        None if smoke => vec![1000],
        None => vec![10_000, 100_000, 1_000_000],
    };
    let chunk = match args.iter().position(|a| a == "--chunk") {
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .expect("--chunk needs a number"),
        None => CLAIM_CHUNK,
    };
    let (reps, empty_reps) = if smoke { (1, 1) } else { (3, 21) };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "sweep bench: claim_due chunks of {chunk}, grace {} s, channels [log]; VmHWM is the \
         whole process so far (sizes run in increasing order)",
        GRACE_MS / 1000
    );
    for n in sizes {
        run_size(&rt, n, chunk, reps, empty_reps);
    }
}
