//! HTTP load benchmark: the real `connmon` binary in Functions mode with
//! the durable SQLite store, driven over keep-alive HTTP/1.1 by a closed-loop generator (each
//! connection sends its next request when the previous answer is read; the connections share two
//! event-loop threads, [`GENERATOR_THREADS`]).
//!
//! Every case sends `POST /ConnectionEvent` with the host envelope (the event double-encoded as a
//! string in a string, as the Functions host sends it); each connection cycles through its own
//! 1,000 devices with increasing sequence numbers, disconnecting them in one round and reconnecting
//! them in the next, so for connmon every event changes state and is committed before its 200.
//! For each concurrency (1, 16, 64), in the same run and with the same generator, three servers:
//! - the ceiling: a no-op route — this bench binary re-run with `--noop-server PORT`, the same
//!   axum/hyper/tokio stack and runtime as connmon — reading the body and answering the same 200
//!   host JSON without touching any store;
//! - the same with the envelope decoded as connmon decodes it (`--decode`), to split HTTP, decoding
//!   and the store;
//! - connmon itself.
//!
//! Then memory at fleet scale (item 5): a SQLite file preloaded with `--fleet` connected identities
//! (default 1,000,000), connmon started on it, loaded at concurrency 16 and swept; its `VmRSS` and
//! peak `VmHWM` from `/proc/<pid>/status`.
//!
//! Each case runs `--reps` times (default 3) for `--secs` seconds (default 3); the report gives the
//! median run's events/s and that run's p50/p99 latency. The generator shares the machine's cores
//! with the server, so both figures are for client + server on one host.
//!
//! Run: `cargo bench --bench http`. Smoke (concurrency 1 and 4, 0.2 s each, one run, a fleet of
//! 2,000): `cargo bench --bench http -- --smoke`, or `cargo test --benches` (no `--bench` argument).

mod support;

use connmon::model::Timestamp;
use std::net::SocketAddr;
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
    /// The product: `connmon` in Functions mode on the SQLite file `db` (a new file in a temp dir
    /// when `None`).
    fn connmon(db: Option<&std::path::Path>) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let db = db.map_or_else(|| dir.path().join("connmon.db"), |p| p.to_path_buf());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_connmon"));
        cmd.current_dir(dir.path())
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("CONNMON_SQLITE_PATH", db);
        Server::spawn(cmd, port, dir)
    }

    /// The ceiling: this bench binary re-run as a no-op server (`--noop-server`, see [`noop`]).
    fn noop(decode: bool) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut cmd = Command::new(std::env::current_exe().expect("bench binary"));
        cmd.args(["--noop-server", &port.to_string()]);
        if decode {
            cmd.arg("--decode");
        }
        Server::spawn(cmd, port, dir)
    }

    fn spawn(mut cmd: Command, port: u16, dir: tempfile::TempDir) -> Server {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server under test");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if send_once(addr, b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n") == Some(200) {
                break;
            }
            assert!(Instant::now() < deadline, "the server did not answer GET /");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            addr,
            _dir: dir,
        }
    }

    /// `VmHWM` / `VmRSS` of the server process in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        support::proc_status_kib(&self.child.id().to_string(), field)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The no-op server: the same axum/tokio/hyper stack and runtime as `connmon` (multi-threaded,
/// one worker per core), `POST /ConnectionEvent` reads the body and answers the same 200 JSON a
/// real invocation gets, without touching any store. With `decode` it also decodes the envelope
/// the way the product does (`parse_json` + `decode_host_invocation`).
fn noop(port: u16, decode: bool) {
    use axum::routing::{get, post};
    let body = serde_json::json!({
        "Outputs": {},
        "Logs": ["connmon: 1 event(s) applied [disconnected=1], 0 ignored, 0 out of scope, 0 rejected"],
        "ReturnValue": null
    });
    let app = axum::Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/ConnectionEvent",
            post(move |bytes: axum::body::Bytes| async move {
                if decode {
                    let value = connmon::decode::parse_json(&bytes).expect("JSON");
                    let items =
                        connmon::decode::decode_host_invocation(&value).expect("a host envelope");
                    assert_eq!(items.len(), 1);
                }
                axum::Json(body)
            }),
        );
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async move {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind");
            axum::serve(l, app).await.expect("serve");
        });
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request on a new connection and returns the status.
fn send_once(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut s = tokio::io::BufReader::new(stream);
        Some(send_async(&mut s, request, &mut String::new(), &mut Vec::new()).await)
    })
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

struct RunResult {
    per_sec: f64,
    p50: Duration,
    p99: Duration,
}

/// One keep-alive connection of the async generator: writes a request, reads one response,
/// returns its status.
async fn send_async(
    s: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    request: &[u8],
    line: &mut String,
    body: &mut Vec<u8>,
) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    s.get_mut().write_all(request).await.expect("write request");
    line.clear();
    s.read_line(line).await.expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut len = 0usize;
    loop {
        line.clear();
        s.read_line(line).await.expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().expect("content-length");
            }
        }
    }
    body.resize(len, 0);
    s.read_exact(body).await.expect("body");
    status
}

/// Generator threads: at most two (the machine's cores), each an event loop holding its share of
/// the connections, so that 64 connections do not mean 64 client threads competing with the
/// server's for the CPU (the Functions host, too, is one process with a few threads).
const GENERATOR_THREADS: usize = 2;

/// Drives `POST /ConnectionEvent` at `addr` with `concurrency` connections for `secs`. `round`
/// keeps sequence numbers increasing across runs (each run starts where the previous one's end).
fn run(addr: SocketAddr, concurrency: usize, secs: f64, round: u64) -> RunResult {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let threads: Vec<_> = (0..GENERATOR_THREADS.min(concurrency))
        .map(|t| {
            let conns: Vec<usize> = (t..concurrency).step_by(GENERATOR_THREADS).collect();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let tasks: Vec<_> = conns
                        .into_iter()
                        .map(|c| {
                            tokio::spawn(async move {
                                let stream =
                                    tokio::net::TcpStream::connect(addr).await.expect("connect");
                                stream.set_nodelay(true).expect("nodelay");
                                let mut s = tokio::io::BufReader::new(stream);
                                let (mut line, mut body) = (String::new(), Vec::new());
                                let mut lat = Vec::with_capacity(1 << 14);
                                let mut k = round * 10_000_000;
                                while Instant::now() < deadline {
                                    let req = connection_event_request(c, k);
                                    k += 1;
                                    let t = Instant::now();
                                    let status =
                                        send_async(&mut s, &req, &mut line, &mut body).await;
                                    lat.push(t.elapsed());
                                    assert_eq!(status, 200, "unexpected status");
                                }
                                lat
                            })
                        })
                        .collect();
                    let mut all = Vec::new();
                    for t in tasks {
                        all.extend(t.await.expect("load task"));
                    }
                    all
                })
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

/// A SQLite file holding `n` connected identities (written in-process through the store, in
/// deliveries of 5,000), for the server to start on.
fn preload(path: &std::path::Path, n: usize) {
    use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber};
    use connmon::store::{sqlite::SqliteStore, Store, StoreConfig};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = SqliteStore::open(
        path,
        StoreConfig {
            policy: connmon::machine::Policy::new(Duration::from_secs(300)),
            channels: vec!["log".into()],
        },
    )
    .expect("open store");
    let at = Timestamp::from_unix_millis(T0_MS);
    for start in (0..n).step_by(5000) {
        let events = (start..n.min(start + 5000))
            .map(|i| {
                let mut seq = [0u8; 32];
                seq[24..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
                ConnectionEvent {
                    identity: Identity::new("BENCHHUB", &format!("fleet-{i:08}"), None),
                    kind: EventKind::Connected(SequenceNumber::from_bytes(seq)),
                    time: Some(at),
                    event_id: String::new(),
                }
            })
            .collect();
        rt.block_on(store.apply(events, at)).expect("preload");
    }
    drop(store);
    rusqlite::Connection::open(path)
        .and_then(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())))
        .expect("checkpoint");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(port) = arg::<u16>(&args, "--noop-server") {
        return noop(port, args.iter().any(|a| a == "--decode"));
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and gets the smoke run.
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let secs: f64 = arg(&args, "--secs").unwrap_or(if smoke { 0.2 } else { 3.0 });
    let reps: usize = arg(&args, "--reps").unwrap_or(if smoke { 1 } else { 3 });
    let fleet: usize = arg(&args, "--fleet").unwrap_or(if smoke { 2_000 } else { 1_000_000 });
    let levels: &[usize] = if smoke { &[1, 4] } else { &[1, 16, 64] };
    let servers = [
        ("no-op (HTTP only)", Server::noop(false)),
        ("no-op + decode", Server::noop(true)),
        ("connmon, SQLite", Server::connmon(None)),
    ];
    println!(
        "http bench: POST /ConnectionEvent (host envelope) to a no-op server (this bench binary, \
         same axum stack), the same with decoding, and {} in Functions mode with SQLite in a temp \
         dir; {reps} runs of {secs} s per case, median run shown",
        env!("CARGO_BIN_EXE_connmon")
    );
    let mut round = 0;
    // Warm-up: first inserts of every device the runs will use, page cache, allocator.
    for (_, server) in &servers {
        run(server.addr, 64, secs.min(1.0), round);
    }
    for &c in levels {
        let mut results = Vec::new();
        for (name, server) in &servers {
            let mut runs: Vec<RunResult> = (0..reps)
                .map(|_| {
                    round += 1;
                    run(server.addr, c, secs, round)
                })
                .collect();
            runs.sort_by(|a, b| a.per_sec.total_cmp(&b.per_sec));
            let r = runs.swap_remove(reps / 2);
            println!(
                "concurrency {c:>3}  {name:<18} {:>9.0} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms",
                r.per_sec,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3
            );
            results.push(r);
        }
        println!(
            "concurrency {c:>3}  connmon ÷ no-op = {:.2}, connmon ÷ no-op+decode = {:.2}",
            results[2].per_sec / results[0].per_sec,
            results[2].per_sec / results[1].per_sec
        );
    }
    drop(servers);

    // Memory at fleet scale: the server started on a file that already tracks `fleet` identities,
    // under load, and through a sweep.
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("fleet.db");
    let t = Instant::now();
    preload(&db, fleet);
    println!(
        "fleet {fleet}: preloaded in {:.1} s, file {} B ({:.0} B/identity)",
        t.elapsed().as_secs_f64(),
        std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0),
        std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / fleet as f64
    );
    let server = Server::connmon(Some(&db));
    let idle = server.status_kib("VmRSS:");
    let r = run(server.addr, 16, secs, round + 1);
    let timer = br#"{"Data":{"timer":{"Schedule":{"AdjustForDST":true},"ScheduleStatus":null,"IsPastDue":false}},"Metadata":{}}"#;
    let mut req = format!(
        "POST /DisconnectTimer HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        timer.len()
    )
    .into_bytes();
    req.extend_from_slice(timer);
    assert_eq!(send_once(server.addr, &req), Some(200), "sweep");
    println!(
        "fleet {fleet}: server VmRSS {idle} KiB idle after start, {} KiB after {:.0} events/s for \
         {secs} s at concurrency 16 and a sweep; peak VmHWM {} KiB",
        server.status_kib("VmRSS:"),
        r.per_sec,
        server.status_kib("VmHWM:")
    );
}
