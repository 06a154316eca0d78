//! Replay benchmark: events per second from JSONL history through
//! `connmon replay`'s stages, in memory.
//!
//! Input: `simulate` output (one compact Event Grid event a line, ~520 bytes, in delivery order with
//! duplicates and reordering) for a fleet sized to give at least `--events` events (default
//! 1,000,000). Stages, each timed separately and end to end:
//! - `baseline`: `serde_json` validating each line into `IgnoredAny`, one thread — a yardstick
//!   independent of connmon's code, measured in the same run, for noisy machines;
//! - `parse only`: `fast::parse_line` on each line, one thread;
//! - `load`: `input::Loader::add` + `finish` — JSONL parsed on all threads, identity interning,
//!   sorting;
//! - `run`: one `engine::run` at one grace period (the machine + the sweep timer);
//! - `analyse`: `replay::analyse` with one requested grace (5m): the analysis pass and the run at
//!   the requested grace in parallel, a run at the recommended grace when it differs, the report;
//! - `total`: load + analyse, i.e. `connmon replay FILE` without reading the file and writing the
//!   report.
//!
//! Run: `cargo bench --bench replay` (`-- --events 2000000 --reps 5`). Smoke (20,000 events, one
//! repetition): `cargo bench --bench replay -- --smoke`, or `cargo test --benches`.

use connmon::replay::{self, engine, fast, input, Options};
use connmon::simulate::{self, Config};
use std::time::{Duration, Instant};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let want: usize = arg(&args, "--events").unwrap_or(if smoke { 20_000 } else { 1_000_000 });
    let reps: usize = arg(&args, "--reps").unwrap_or(if smoke { 1 } else { 5 });

    // About 31 events per identity-day with the default SDK mix.
    let identities = (want / 30).max(10) as u32;
    let cfg = Config {
        identities,
        outages: identities / 100,
        ping_pong: identities / 1000,
        ..Config::default()
    };
    let sim = simulate::generate(&cfg);
    let mut text = String::with_capacity(sim.deliveries.len() * 560);
    for d in &sim.deliveries {
        text.push_str(&simulate::event_grid_json(&sim, d).to_string());
        text.push('\n');
    }
    let bytes = text.into_bytes();
    let n = sim.deliveries.len();
    println!(
        "replay bench: {n} events, {identities} identities, {:.0} MB of JSONL ({} bytes/event), {reps} repetitions",
        bytes.len() as f64 / 1e6,
        bytes.len() / n
    );

    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into())
    };
    println!("load average before: {}", loadavg());
    let (mut load, mut run, mut analyse, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut validate, mut parse) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        // The baseline, independent of connmon's code: serde_json validating every line.
        let t = Instant::now();
        let valid = bytes
            .split(|b| *b == b'\n')
            .filter(|l| serde_json::from_slice::<serde::de::IgnoredAny>(l).is_ok())
            .count();
        validate.push(n as f64 / t.elapsed().as_secs_f64());
        assert_eq!(valid, n);

        let t = Instant::now();
        let parsed = bytes
            .split(|b| *b == b'\n')
            .filter_map(fast::parse_line)
            .count();
        parse.push(n as f64 / t.elapsed().as_secs_f64());
        assert_eq!(parsed, n);

        let t = Instant::now();
        let mut loader = input::Loader::new();
        loader
            .add("bench.jsonl", false, &bytes, &mut |_| {})
            .expect("simulated JSONL loads");
        let loaded = loader.finish();
        let loaded_in = t.elapsed();
        assert_eq!(loaded.timeline.events.len(), n, "every line is an event");
        assert_eq!(loaded.rejected, 0);

        let t = Instant::now();
        let r = engine::run(
            &loaded.timeline,
            &replay::policy(Duration::from_secs(300)),
            Duration::from_secs(30),
            &mut engine::Quiet,
        );
        let run_in = t.elapsed();
        assert!(r.suppressed_reconnects > 0);

        let t = Instant::now();
        let report = replay::analyse(&loaded, &Options::default());
        let analyse_in = t.elapsed();
        assert!(report.recommended_grace_seconds > 0);

        let eps = |d: Duration| n as f64 / d.as_secs_f64();
        load.push(eps(loaded_in));
        run.push(eps(run_in));
        analyse.push(eps(analyse_in));
        total.push(eps(loaded_in + analyse_in));
    }
    println!("load average after: {}", loadavg());
    let baseline = median(validate.clone());
    println!(
        "stage                                     median events/s (of {reps})   ratio to baseline"
    );
    for (name, v) in [
        ("baseline: serde_json validates (1 thread)", validate),
        ("parse only (1 thread, fast path)         ", parse),
        ("load (parse on all threads + order)      ", load),
        ("run (machine + sweeps, 1 grace)          ", run),
        ("analyse (analysis pass + runs + report)  ", analyse),
        ("total (load + analyse)                   ", total),
    ] {
        let m = median(v);
        println!("{name} {m:>12.0}   {:>5.2}", m / baseline);
    }
}
