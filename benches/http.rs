//! HTTP load benchmark (issue 6, item 2): the real `connmon` binary in Functions mode with the
//! durable SQLite store, driven over keep-alive HTTP/1.1 by a closed-loop generator (one blocking
//! connection per thread, each sending its next request when the previous answer is read).
//!
//! For each concurrency (1, 16, 64), in the same run and with the same generator:
//! - `POST /ConnectionEvent` with the host envelope (the event double-encoded as a string in a
//!   string, as the Functions host sends it); each connection cycles through its own 1,000 devices
//!   with increasing sequence numbers, disconnecting them in one round and reconnecting them in the
//!   next — every event changes state and is committed before it is answered;
//! - `GET /` — the ceiling: a small 200 JSON that does not touch the store (the issue's no-op
//!   route would have to be added to the product's router; `GET /` is the nearest existing one).
//!
//! Each case runs `--reps` times (default 3) for `--secs` seconds (default 3); the report gives the
//! median run's events/s and that run's p50/p99 latency. The generator shares the machine's cores
//! with the server, so both figures are for client + server on one host.
//!
//! Run: `cargo bench --bench http`. Smoke (concurrency 1 and 4, 0.2 s each, one run):
//! `cargo bench --bench http -- --smoke`, or `cargo test --benches` (no `--bench` argument).

use connmon::model::Timestamp;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Devices each connection cycles through.
const DEVICES_PER_CONN: u64 = 1000;
/// 2024-01-01T00:00:00Z.
const T0_MS: i64 = 1_704_067_200_000;

/// The connmon process under test, stopped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(env!("CARGO_BIN_EXE_connmon"))
            .current_dir(dir.path())
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("CONNMON_SQLITE_PATH", dir.path().join("connmon.db"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start target/release/connmon");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(s) = TcpStream::connect(addr) {
                let mut c = Conn::new(s);
                if c.send(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n") == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "connmon did not answer GET /");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One keep-alive connection: writes a request, reads one response, returns its status.
struct Conn {
    reader: BufReader<TcpStream>,
    body: Vec<u8>,
}

impl Conn {
    fn new(s: TcpStream) -> Conn {
        s.set_nodelay(true).expect("nodelay");
        Conn {
            reader: BufReader::new(s),
            body: Vec::new(),
        }
    }

    fn send(&mut self, request: &[u8]) -> u16 {
        self.reader
            .get_mut()
            .write_all(request)
            .expect("write request");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("status line");
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {line:?}"));
        let mut len = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().expect("content-length");
                }
            }
        }
        self.body.resize(len, 0);
        self.reader.read_exact(&mut self.body).expect("body");
        status
    }
}

/// The host's invocation for event `k` of connection `conn`.
fn connection_event_request(conn: usize, k: u64) -> Vec<u8> {
    let device = format!("bench-{conn:03}-{:05}", k % DEVICES_PER_CONN);
    // A device's events: a disconnect on the hour and a reconnect a second later (the
    // token-renewal cadence), so every event changes state and none raises an alert.
    let j = (k / DEVICES_PER_CONN) as i64;
    let (kind, at) = if j % 2 == 0 {
        ("DeviceDisconnected", T0_MS + j / 2 * 3_600_000)
    } else {
        ("DeviceConnected", T0_MS + j / 2 * 3_600_000 + 1_000)
    };
    let at = Timestamp::from_unix_millis(at).to_rfc3339();
    let event = format!(
        r#"{{
  "id": "{conn:08x}-0000-0000-0000-{k:012x}",
  "topic": "/SUBSCRIPTIONS/5CDD9A3B-8DAB-4CF4-9B2F-C22E8A755472/RESOURCEGROUPS/EGTESTRG/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/BENCHHUB",
  "subject": "devices/{device}",
  "eventType": "Microsoft.Devices.{kind}",
  "eventTime": "{at}",
  "data": {{
    "deviceConnectionStateEventInfo": {{ "sequenceNumber": "000000000000000001D4132452F67CE2000000020000000000000000{:08X}" }},
    "hubName": "BENCHHUB",
    "deviceId": "{device}",
    "moduleId": ""
  }},
  "dataVersion": "1",
  "metadataVersion": "1"
}}"#,
        k + 1
    );
    let once = serde_json::to_string(&event).expect("string");
    let twice = serde_json::to_string(&once).expect("string in string");
    let body = format!(
        r#"{{"Data":{{"eventGridEvent":{twice}}},"Metadata":{{"sys":{{"MethodName":"ConnectionEvent","UtcNow":"2024-01-01T00:00:01Z"}}}}}}"#
    );
    let mut req = format!(
        "POST /ConnectionEvent HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Health,
    ConnectionEvent,
}

struct RunResult {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// Drives `route` with `concurrency` connections for `secs`. `round` keeps sequence numbers
/// increasing across runs (each run starts where the previous one's numbers end).
fn run(addr: SocketAddr, route: Route, concurrency: usize, secs: f64, round: u64) -> RunResult {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..concurrency)
        .map(|c| {
            std::thread::spawn(move || {
                let mut conn = Conn::new(TcpStream::connect(addr).expect("connect"));
                let health = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec();
                let mut lat = Vec::with_capacity(1 << 16);
                let mut k = round * 10_000_000;
                while Instant::now() < deadline {
                    let req = match route {
                        Route::Health => health.clone(),
                        Route::ConnectionEvent => connection_event_request(c, k),
                    };
                    k += 1;
                    let t = Instant::now();
                    let status = conn.send(&req);
                    lat.push(t.elapsed());
                    assert_eq!(status, 200, "unexpected status");
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("load thread"))
        .collect();
    let elapsed = start.elapsed();
    lat.sort();
    RunResult {
        per_sec: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: lat[lat.len() / 2],
        p99: lat[(lat.len() * 99 / 100).min(lat.len() - 1)],
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    Some(args.get(i + 1)?.parse().ok().expect("a number"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and gets the smoke run.
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let secs: f64 = arg(&args, "--secs").unwrap_or(if smoke { 0.2 } else { 3.0 });
    let reps: usize = arg(&args, "--reps").unwrap_or(if smoke { 1 } else { 3 });
    let levels: &[usize] = if smoke { &[1, 4] } else { &[1, 16, 64] };
    let server = Server::start();
    println!(
        "http bench: {} in Functions mode, SQLite in a temp dir; {reps} runs of {secs} s per case, \
         median run shown",
        env!("CARGO_BIN_EXE_connmon")
    );
    let mut round = 0;
    // Warm-up: first inserts of every device the runs will use, page cache, allocator.
    run(
        server.addr,
        Route::ConnectionEvent,
        64,
        secs.min(1.0),
        round,
    );
    for &c in levels {
        let mut results = Vec::new();
        for route in [Route::Health, Route::ConnectionEvent] {
            let mut runs: Vec<RunResult> = (0..reps)
                .map(|_| {
                    round += 1;
                    run(server.addr, route, c, secs, round)
                })
                .collect();
            runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
            results.push(runs.swap_remove(reps / 2));
        }
        let (ceiling, events) = (&results[0], &results[1]);
        for (name, r) in [
            ("GET / (ceiling)", ceiling),
            ("POST /ConnectionEvent", events),
        ] {
            println!(
                "concurrency {c:>3}  {name:<22} {:>9.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms",
                r.per_sec,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3
            );
        }
        println!(
            "concurrency {c:>3}  events/s ÷ ceiling = {:.2}",
            events.per_sec / ceiling.per_sec
        );
    }
}
