//! Table Storage against Azurite: storage requests per event and per alert, and
//! events/s, for `TableStore` talking to a real Azurite table service.
//!
//! Requests are counted from outside the client: the store talks to a small HTTP/1.1 forwarding
//! proxy in this process (tokio, on 127.0.0.1), which relays every request to Azurite unchanged and
//! counts it by kind — point read (`GET …(PartitionKey=…,RowKey=…)`), query (`GET …()?$filter`),
//! entity group transaction (`POST $batch`, one request; the operations it carries are counted
//! apart), single-entity `PUT` / `POST` / `DELETE` — plus 404s and failed batch operations
//! (412/409: contention). The same table is also driven without the proxy, for events/s.
//!
//! Scenarios (grace 5 min, one alert channel, `webhook`):
//! 1. steady state: N identities (default 2,000), each disconnecting on the hour and reconnecting a
//!    second later (token renewal; increasing sequence numbers; no alert). A round is all N
//!    disconnects, then all N reconnects, through `Store::apply` in deliveries of 1 event (one
//!    Functions invocation) or 64 (an Event Grid webhook batch), from 1 or 16 concurrent tasks;
//!    plus deliveries of 64 holding both events of 32 devices. The same cases on SQLite (a temp
//!    file) give the baseline for events/s.
//! 2. first sight (insert) vs a connect that changes only the sequence number (update, no index
//!    change), and module identities (updates).
//! 3. redelivered (duplicate) and reordered (stale) events.
//! 4. sweep: nothing due, at two fleet sizes (N/2 and 5N identities, 1 % of them pending inside the
//!    grace); then K outages due (default 1,000): the claim loop as `Monitor::sweep` runs it
//!    (`claim_due(now, 5000)` until a chunk comes back short), delivery as `channels::drain` runs
//!    it (`queued(channel, now, 500)` then `delivered`, until a short batch) and `queue_len`.
//!
//! Every case runs `--reps` times (default 3); medians are shown, with request counts (the same
//! every repetition unless there was contention).
//!
//! Azurite: `CONNMON_TEST_AZURITE_TABLE` (set by `scripts/test`) when set; otherwise the bench starts
//! `node_modules/azurite` itself (installed by `npm ci`) in memory on a free port and stops it at
//! the end.
//!
//! Run: `cargo bench --bench table` (`-- --identities 2000 --due 1000 --reps 3`).
//! Smoke (tiny sizes, one repetition): `cargo bench --bench table -- --smoke`, or
//! `cargo test --benches` (no `--bench` argument).

use connmon::machine::Policy;
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::store::sqlite::SqliteStore;
use connmon::store::table::client::{ClientOptions, TableClient};
use connmon::store::table::conn::TableEndpoint;
use connmon::store::table::TableStore;
use connmon::store::{Store, StoreConfig};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// The variable `scripts/test` sets to Azurite's table endpoint.
const AZURITE_ENV: &str = "CONNMON_TEST_AZURITE_TABLE";
const HUB: &str = "benchhub";
const CHANNEL: &str = "webhook";
const GRACE_MS: i64 = 300_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
/// 2024-01-01T00:00:00Z.
const T0_MS: i64 = 1_704_067_200_000;
/// What `Monitor` claims per call.
const CLAIM_CHUNK: usize = 5000;
/// What a channel takes per delivery (`Channel::batch_size`'s default).
const DELIVERY_BATCH: usize = 500;

// ---------------------------------------------------------------------------------------------
// Azurite

/// The Azurite table service the bench talks to; stopped on drop when the bench started it.
struct Azurite {
    /// `http://127.0.0.1:PORT/devstoreaccount1`
    base: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Azurite {
    fn from_env_or_start() -> Azurite {
        match std::env::var(AZURITE_ENV) {
            Ok(v) if !v.trim().is_empty() => {
                let mut url = reqwest::Url::parse(v.trim())
                    .unwrap_or_else(|e| panic!("{AZURITE_ENV}={v:?} is not a URL: {e}"));
                if url.path().trim_matches('/').is_empty() {
                    url.set_path("/devstoreaccount1");
                }
                Azurite {
                    base: url.as_str().trim_end_matches('/').to_string(),
                    child: None,
                    _dir: None,
                }
            }
            _ => Azurite::start(),
        }
    }

    /// Starts Azurite's table service as `scripts/test` does: in memory, on a free loopback port.
    fn start() -> Azurite {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let main_js = root.join("node_modules/azurite/dist/src/table/main.js");
        assert!(
            main_js.exists(),
            "table bench: Azurite is not installed ({} is missing). Run `npm ci --no-audit \
             --no-fund` in {} (it installs the Azurite pinned in package-lock.json), or set \
             {AZURITE_ENV}=http://127.0.0.1:PORT/devstoreaccount1 to a running Azurite table service",
            main_js.display(),
            root.display()
        );
        for attempt in 1..=5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let dir = tempfile::tempdir().expect("temp dir");
            let log_path = dir.path().join("azurite.log");
            let log = std::fs::File::create(&log_path).expect("azurite log");
            let mut child = Command::new("node")
                .arg(&main_js)
                .args(["--tableHost", "127.0.0.1", "--tablePort", &port.to_string()])
                .args(["--inMemoryPersistence", "--disableTelemetry"])
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("table bench: cannot run `node` ({e}); Node.js is needed for Azurite")
                });
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if child.try_wait().expect("try_wait").is_some() {
                    break;
                }
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if log.contains("successfully started")
                    && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    return Azurite {
                        base: format!("http://127.0.0.1:{port}/devstoreaccount1"),
                        child: Some(child),
                        _dir: Some(dir),
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "table bench: Azurite did not start on port {port} (attempt {attempt}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        panic!("table bench: could not start Azurite");
    }

    fn started_here(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The counting proxy

/// Requests seen by the proxy, by kind.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Point reads: `GET table(PartitionKey='…',RowKey='…')`.
    get: u64,
    /// Queries: `GET table()?$filter=…` (one per page).
    query: u64,
    /// Entity group transactions: `POST $batch`.
    batch: u64,
    /// Operations carried by those batches.
    batch_ops: u64,
    /// Single-entity replace / upsert.
    put: u64,
    /// Single-entity insert.
    post: u64,
    delete: u64,
    /// Anything else (create table).
    other: u64,
    /// Answers 404 (a point read of an identity never seen, …).
    not_found: u64,
    /// 409 / 412, for a single request or an operation inside a batch: contention.
    conflicts: u64,
    /// 429 / 5xx answers.
    errors: u64,
    /// Requests the proxy sent again because Azurite had closed the idle connection (counted once
    /// above; not requests of the store).
    resent: u64,
}

impl Counts {
    fn requests(&self) -> u64 {
        self.get + self.query + self.batch + self.put + self.post + self.delete + self.other
    }

    fn minus(&self, o: &Counts) -> Counts {
        Counts {
            get: self.get - o.get,
            query: self.query - o.query,
            batch: self.batch - o.batch,
            batch_ops: self.batch_ops - o.batch_ops,
            put: self.put - o.put,
            post: self.post - o.post,
            delete: self.delete - o.delete,
            other: self.other - o.other,
            not_found: self.not_found - o.not_found,
            conflicts: self.conflicts - o.conflicts,
            errors: self.errors - o.errors,
            resent: self.resent - o.resent,
        }
    }

    fn plus(&self, o: &Counts) -> Counts {
        Counts {
            get: self.get + o.get,
            query: self.query + o.query,
            batch: self.batch + o.batch,
            batch_ops: self.batch_ops + o.batch_ops,
            put: self.put + o.put,
            post: self.post + o.post,
            delete: self.delete + o.delete,
            other: self.other + o.other,
            not_found: self.not_found + o.not_found,
            conflicts: self.conflicts + o.conflicts,
            errors: self.errors + o.errors,
            resent: self.resent + o.resent,
        }
    }

    /// `2.00 req (GET 1.00, $batch 1.00 ×2.0 ops)` with every figure divided by `per`.
    fn per(&self, per: usize) -> String {
        let d = per.max(1) as f64;
        let mut parts = Vec::new();
        for (name, n) in [
            ("GET", self.get),
            ("query", self.query),
            ("$batch", self.batch),
            ("PUT", self.put),
            ("POST", self.post),
            ("DELETE", self.delete),
            ("other", self.other),
        ] {
            if n > 0 {
                let mut s = format!("{name} {:.3}", n as f64 / d);
                if name == "$batch" {
                    s.push_str(&format!(
                        " carrying {:.2} ops",
                        self.batch_ops as f64 / self.batch as f64
                    ));
                }
                parts.push(s);
            }
        }
        let mut s = format!(
            "{:.3} req ({})",
            self.requests() as f64 / d,
            parts.join(", ")
        );
        for (name, n) in [
            ("404", self.not_found),
            ("409/412", self.conflicts),
            ("429/5xx", self.errors),
            ("resent by the proxy", self.resent),
        ] {
            if n > 0 {
                s.push_str(&format!(" [{name}: {n}]"));
            }
        }
        s
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Get,
    Query,
    Batch,
    Put,
    Post,
    Delete,
    Other,
}

/// The forwarding proxy: listens on 127.0.0.1, one upstream connection per client connection.
struct Proxy {
    addr: SocketAddr,
    counts: Arc<Mutex<Counts>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let counts = Arc::new(Mutex::new(Counts::default()));
        let c = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let c = c.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay(client, upstream, &c).await {
                        eprintln!("table bench proxy: {e}");
                    }
                });
            }
        });
        Proxy { addr, counts }
    }

    fn snapshot(&self) -> Counts {
        *self.counts.lock().expect("not poisoned")
    }
}

/// One HTTP/1.1 message read whole: its bytes as received, and what framing told us.
struct Message {
    raw: Vec<u8>,
    start_line: String,
    /// Where the body starts in `raw`.
    body_at: usize,
    /// The sender closes the connection after this message.
    close: bool,
}

/// Reads one message; `None` at a clean end of stream. `request_method` is `Some` when reading a
/// response (to the request with that method).
async fn read_message<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    request_method: Option<&str>,
) -> io::Result<Option<Message>> {
    let mut raw = Vec::with_capacity(1024);
    let mut line = Vec::new();
    let (mut length, mut chunked, mut close) = (None::<usize>, false, false);
    let mut start_line = String::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return if raw.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut-off head"))
            };
        }
        raw.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if start_line.is_empty() {
            start_line = text.to_string();
            continue;
        }
        if text.is_empty() {
            break;
        }
        if let Some((k, v)) = text.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.eq_ignore_ascii_case("close");
            }
        }
    }
    let body_at = raw.len();
    let status: u16 = match request_method {
        Some(_) => start_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        None => 0,
    };
    let no_body = request_method == Some("HEAD")
        || (100..200).contains(&status)
        || matches!(status, 204 | 304);
    if no_body {
    } else if chunked {
        loop {
            line.clear();
            r.read_until(b'\n', &mut line).await?;
            raw.extend_from_slice(&line);
            let size_text = String::from_utf8_lossy(&line);
            let size_text = size_text.trim().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    r.read_until(b'\n', &mut line).await?;
                    raw.extend_from_slice(&line);
                    if line == b"\r\n" || line.is_empty() {
                        break;
                    }
                }
                break;
            }
            let at = raw.len();
            raw.resize(at + size + 2, 0);
            r.read_exact(&mut raw[at..]).await?;
        }
    } else if let Some(n) = length {
        let at = raw.len();
        raw.resize(at + n, 0);
        r.read_exact(&mut raw[at..]).await?;
    } else if request_method.is_some() {
        // A response without framing ends with the connection.
        r.read_to_end(&mut raw).await?;
        close = true;
    }
    Ok(Some(Message {
        raw,
        start_line,
        body_at,
        close,
    }))
}

fn classify(start_line: &str) -> (String, Kind) {
    let mut parts = start_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let kind = match method.as_str() {
        "POST" if path.ends_with("/$batch") => Kind::Batch,
        "POST" if path.ends_with("/Tables") => Kind::Other,
        "POST" => Kind::Post,
        "GET" if path.ends_with("()") => Kind::Query,
        "GET" if path.contains("(PartitionKey=") => Kind::Get,
        "PUT" => Kind::Put,
        "DELETE" => Kind::Delete,
        _ => Kind::Other,
    };
    (method, kind)
}

fn count_subslices(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// Statuses of the operations inside a batch answer (`HTTP/1.1 204 No Content` lines).
fn inner_statuses(body: &[u8]) -> Vec<u16> {
    let needle = b"HTTP/1.1 ";
    let mut out = Vec::new();
    let mut i = 0;
    while i + needle.len() + 3 <= body.len() {
        if &body[i..i + needle.len()] == needle {
            let s = &body[i + needle.len()..i + needle.len() + 3];
            if let Ok(code) = std::str::from_utf8(s).unwrap_or("").parse() {
                out.push(code);
            }
            i += needle.len();
        } else {
            i += 1;
        }
    }
    out
}

type Upstream = (BufReader<OwnedReadHalf>, OwnedWriteHalf);

async fn connect(addr: SocketAddr) -> io::Result<Upstream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (r, w) = s.into_split();
    Ok((BufReader::new(r), w))
}

/// Sends `req` upstream and reads the answer (`None`: the upstream closed without one). The
/// proxy keeps its own upstream connections: Azurite (Node.js) closes one that stayed idle for 5 s,
/// which a direct client would notice, but behind the proxy the client's connection stays open.
/// So a request that meets a closed kept-alive upstream is sent once more on a fresh connection
/// (Node closed it without reading the request) and counted once.
async fn exchange(
    up: &mut Option<Upstream>,
    addr: SocketAddr,
    req: &Message,
    method: &str,
    counts: &Mutex<Counts>,
) -> io::Result<Option<Message>> {
    for attempt in 0..2 {
        let reused = up.is_some();
        let (sr, sw) = match up {
            Some(u) => u,
            None => up.insert(connect(addr).await?),
        };
        let answer = match sw.write_all(&req.raw).await {
            Ok(()) => read_message(sr, Some(method)).await,
            Err(e) => Err(e),
        };
        let stale = match &answer {
            Ok(None) => true,
            Err(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            Ok(Some(_)) => false,
        };
        if stale && reused && attempt == 0 {
            *up = None;
            counts.lock().expect("not poisoned").resent += 1;
            continue;
        }
        if !matches!(&answer, Ok(Some(m)) if !m.close) {
            *up = None;
        }
        return answer;
    }
    unreachable!("the second attempt returns")
}

async fn relay(client: TcpStream, upstream: SocketAddr, counts: &Mutex<Counts>) -> io::Result<()> {
    client.set_nodelay(true)?;
    let (cr, mut cw) = client.into_split();
    let mut cr = BufReader::new(cr);
    let mut up = None;
    loop {
        let Some(req) = read_message(&mut cr, None).await? else {
            return Ok(());
        };
        let (method, kind) = classify(&req.start_line);
        let ops = match kind {
            Kind::Batch => count_subslices(&req.raw[req.body_at..], b"application/http"),
            _ => 0,
        };
        let resp = exchange(&mut up, upstream, &req, &method, counts).await?;
        {
            let mut c = counts.lock().expect("not poisoned");
            match kind {
                Kind::Get => c.get += 1,
                Kind::Query => c.query += 1,
                Kind::Batch => {
                    c.batch += 1;
                    c.batch_ops += ops;
                }
                Kind::Put => c.put += 1,
                Kind::Post => c.post += 1,
                Kind::Delete => c.delete += 1,
                Kind::Other => c.other += 1,
            }
            if let Some(resp) = &resp {
                let status: u16 = resp
                    .start_line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let mut statuses = vec![status];
                if matches!(kind, Kind::Batch) {
                    statuses.extend(inner_statuses(&resp.raw[resp.body_at..]));
                }
                for s in statuses {
                    match s {
                        404 => c.not_found += 1,
                        409 | 412 => c.conflicts += 1,
                        429 | 500..=599 => c.errors += 1,
                        _ => {}
                    }
                }
            }
        }
        let Some(resp) = resp else {
            return Ok(());
        };
        cw.write_all(&resp.raw).await?;
        if req.close {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events and deliveries

/// Events with sequence numbers that only increase, as IoT Hub's do per device.
#[derive(Default)]
struct Gen {
    seq: u64,
}

impl Gen {
    fn event(&mut self, id: &Identity, connected: bool, at_ms: i64) -> ConnectionEvent {
        self.seq += 1;
        let mut b = [0u8; 32];
        b[24..].copy_from_slice(&self.seq.to_be_bytes());
        let seq = SequenceNumber::from_bytes(b);
        ConnectionEvent {
            identity: id.clone(),
            kind: if connected {
                EventKind::Connected(seq)
            } else {
                EventKind::Disconnected(seq)
            },
            time: Some(Timestamp::from_unix_millis(at_ms)),
            event_id: String::new(),
        }
    }

    fn all(&mut self, ids: &[Identity], connected: bool, at_ms: i64) -> Vec<ConnectionEvent> {
        ids.iter()
            .map(|i| self.event(i, connected, at_ms))
            .collect()
    }
}

fn devices(prefix: &str, from: usize, to: usize) -> Vec<Identity> {
    (from..to)
        .map(|i| Identity::new(HUB, &format!("{prefix}-{i:06}"), None))
        .collect()
}

fn chunks(events: Vec<ConnectionEvent>, size: usize) -> Vec<Vec<ConnectionEvent>> {
    let mut out = Vec::new();
    let mut it = events.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(size).collect());
    }
    out
}

/// What one driven phase did: wall time, events, outcomes, and the requests the proxy saw.
#[derive(Default, Clone)]
struct Run {
    elapsed: Duration,
    events: usize,
    outcomes: BTreeMap<&'static str, usize>,
    counts: Counts,
}

impl Run {
    fn plus(mut self, o: Run) -> Run {
        self.elapsed += o.elapsed;
        self.events += o.events;
        for (k, v) in o.outcomes {
            *self.outcomes.entry(k).or_default() += v;
        }
        self.counts = self.counts.plus(&o.counts);
        self
    }

    fn per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn only(&self, outcome: &str) -> bool {
        self.outcomes.len() == 1 && self.outcomes.contains_key(outcome)
    }
}

/// Delivers `deliveries` through `Store::apply` from `concurrency` tasks, each taking the next
/// delivery when its previous one is durable.
async fn drive(
    store: &Arc<dyn Store>,
    proxy: Option<&Proxy>,
    deliveries: Vec<Vec<ConnectionEvent>>,
    concurrency: usize,
    received_at_ms: i64,
) -> Run {
    let events = deliveries.iter().map(Vec::len).sum();
    let queue = Arc::new(Mutex::new(VecDeque::from(deliveries)));
    let before = proxy.map(Proxy::snapshot).unwrap_or_default();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (queue, store) = (queue.clone(), store.clone());
        tasks.spawn(async move {
            let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
            loop {
                let Some(d) = queue.lock().expect("not poisoned").pop_front() else {
                    break;
                };
                let received_at = Timestamp::from_unix_millis(received_at_ms);
                for a in store.apply(d, received_at).await.expect("apply") {
                    let a = a.expect("no event of the bench is refused");
                    *outcomes.entry(a.outcome.as_str()).or_default() += 1;
                }
            }
            outcomes
        });
    }
    let mut outcomes: BTreeMap<&'static str, usize> = BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        for (k, v) in r.expect("delivery task") {
            *outcomes.entry(k).or_default() += v;
        }
    }
    let elapsed = start.elapsed();
    let counts = proxy
        .map(|p| p.snapshot().minus(&before))
        .unwrap_or_default();
    Run {
        elapsed,
        events,
        outcomes,
        counts,
    }
}

/// `events` (received a second after `at_ms`) in deliveries of 64 from 16 tasks: how fleets are
/// loaded, and the delivery of scenarios 2 and 3.
async fn all_in_64s(
    store: &Arc<dyn Store>,
    proxy: Option<&Proxy>,
    events: Vec<ConnectionEvent>,
    at_ms: i64,
) -> Run {
    drive(store, proxy, chunks(events, 64), 16, at_ms + 1_000).await
}

fn print_run(label: &str, r: &Run) {
    println!(
        "  {label:<36} {:>8.0} events/s  per event {}",
        r.per_sec(),
        r.counts.per(r.events)
    );
}

/// How a steady-state round is cut into deliveries.
#[derive(Clone, Copy)]
struct Case {
    size: usize,
    concurrency: usize,
    /// Both events of a device in the same delivery (else: all disconnects, then all connects).
    pairs: bool,
}

impl Case {
    fn label(&self) -> String {
        format!(
            "deliveries of {:>2}{}, {:>2} task{}",
            self.size,
            if self.pairs {
                format!(" ({} devices × 2)", self.size / 2)
            } else {
                String::new()
            },
            self.concurrency,
            if self.concurrency == 1 { "" } else { "s" }
        )
    }
}

/// One token-renewal round for every identity: a disconnect on hour `hour`, the reconnect a second
/// later. Asserts that every event changed state and none raised an alert.
async fn renewal_round(
    store: &Arc<dyn Store>,
    proxy: Option<&Proxy>,
    gen: &mut Gen,
    ids: &[Identity],
    hour: i64,
    case: Case,
) -> Run {
    let down = T0_MS + hour * HOUR;
    let up = down + 1_000;
    let run = if case.pairs {
        let mut events = Vec::with_capacity(ids.len() * 2);
        for id in ids {
            events.push(gen.event(id, false, down));
            events.push(gen.event(id, true, up));
        }
        drive(
            store,
            proxy,
            chunks(events, case.size),
            case.concurrency,
            up + 1_000,
        )
        .await
    } else {
        let d = chunks(gen.all(ids, false, down), case.size);
        let first = drive(store, proxy, d, case.concurrency, down + 1_000).await;
        let c = chunks(gen.all(ids, true, up), case.size);
        first.plus(drive(store, proxy, c, case.concurrency, up + 1_000).await)
    };
    assert_eq!(
        run.outcomes.get("opened").copied().unwrap_or(0),
        ids.len(),
        "{:?}",
        run.outcomes
    );
    assert_eq!(
        run.outcomes.get("closed_silently").copied().unwrap_or(0),
        ids.len(),
        "{:?}",
        run.outcomes
    );
    run
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

fn config() -> StoreConfig {
    StoreConfig {
        policy: Policy::new(Duration::from_millis(GRACE_MS as u64)),
        channels: vec![CHANNEL.into()],
    }
}

/// A table of its own (a letter, then letters and digits).
fn table_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("{prefix}{}x{nanos}", std::process::id())
}

/// The same table through the proxy (counted) and directly.
struct Stores {
    counted: Arc<dyn Store>,
    direct: Arc<dyn Store>,
}

async fn open_table(az: &Azurite, proxy: &Proxy, prefix: &str) -> Stores {
    let table = table_name(prefix);
    let url = reqwest::Url::parse(&az.base).expect("azurite url");
    let proxied = format!("http://{}{}", proxy.addr, url.path());
    let open = |base: String| {
        let table = table.clone();
        async move {
            // Azurite is one Node.js thread on cores shared with the bench: with 16 deliveries
            // of 64 (32 identities each in parallel) it queues hundreds of requests, some for
            // longer than the client's default 10 s timeout, and a timed-out write would be sent
            // again (and counted twice). Wait for the answer instead.
            let options = ClientOptions {
                request_timeout: Duration::from_secs(120),
                retry_budget: Duration::from_secs(300),
                ..ClientOptions::default()
            };
            let endpoint = TableEndpoint::development(&base);
            let client =
                TableClient::with_options(endpoint, &table, options).expect("table client");
            Arc::new(
                TableStore::open(client, config())
                    .await
                    .expect("open table"),
            ) as Arc<dyn Store>
        }
    };
    Stores {
        counted: open(proxied).await,
        direct: open(az.base.clone()).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Params {
    identities: usize,
    due: usize,
    reps: usize,
    cases: Vec<Case>,
}

/// Scenarios 2, 1 and 3 on one table (in that order: the first sight loads the fleet); scenario 1
/// also on SQLite.
async fn events(az: &Azurite, proxy: &Proxy, p: &Params) {
    let s = open_table(az, proxy, "bench").await;
    let ids = devices("dev", 0, p.identities);
    let mut gen = Gen::default();
    let mut hour = 0;

    println!(
        "\n[2] first sight vs update ({} identities, deliveries of 64, 16 tasks)",
        p.identities
    );
    // Module identities: one module under each of the first quarter of the devices.
    let modules: Vec<Identity> = ids[..(p.identities / 4).max(1)]
        .iter()
        .map(|d| Identity::new(HUB, d.device(), Some("mod")))
        .collect();
    let module_first = format!("module first sight ({} modules)", modules.len());
    for (label, who) in [
        ("first sight (connect, insert)", &ids),
        ("update (connect again, no index)", &ids),
        (module_first.as_str(), &modules),
        ("module update", &modules),
    ] {
        hour += 1;
        let at = T0_MS + hour * HOUR;
        let r = all_in_64s(&s.counted, Some(proxy), gen.all(who, true, at), at).await;
        assert!(r.only("connected"), "{:?}", r.outcomes);
        print_run(label, &r);
    }

    println!(
        "\n[1] steady state: {} identities, token-renewal rounds (disconnect, connect 1 s later), \
         {} rep(s) per case, median; 'direct' = same table without the proxy",
        p.identities, p.reps
    );
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    let sqlite: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&sqlite_dir.path().join("bench.db"), config()).expect("open sqlite"),
    );
    // SQLite gets the same fleet first.
    all_in_64s(&sqlite, None, gen.all(&ids, true, T0_MS), T0_MS).await;
    let mut last_round = None;
    for &case in &p.cases {
        let (mut per_event, mut counted_eps, mut direct_eps, mut sqlite_eps) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut counts = Counts::default();
        let mut events = 0;
        let mut alone = Vec::new();
        for _ in 0..p.reps {
            hour += 1;
            let r = renewal_round(&s.counted, Some(proxy), &mut gen, &ids, hour, case).await;
            per_event.push(r.counts.requests() as f64 / r.events as f64);
            counted_eps.push(r.per_sec());
            counts = counts.plus(&r.counts);
            events += r.events;
            // The same instance again right away: what one instance alone costs (its remembered
            // rows are current; in the round above the other instance had written last).
            hour += 1;
            let r = renewal_round(&s.counted, Some(proxy), &mut gen, &ids, hour, case).await;
            alone.push(r.counts.requests() as f64 / r.events as f64);
            hour += 1;
            let r = renewal_round(&s.direct, None, &mut gen, &ids, hour, case).await;
            direct_eps.push(r.per_sec());
            hour += 1;
            let r = renewal_round(&sqlite, None, &mut gen, &ids, hour, case).await;
            sqlite_eps.push(r.per_sec());
            last_round = Some(hour);
        }
        let (table_direct, sqlite_med) = (median(direct_eps.clone()), median(sqlite_eps.clone()));
        let (lo, hi) = range(&direct_eps);
        println!(
            "  {:<44} per event {}  (median {:.3}; after the other instance wrote)",
            case.label(),
            counts.per(events),
            median(per_event)
        );
        println!(
            "  {:<44} per event {:.3} req (median; one instance alone, its rows remembered)",
            "",
            median(alone)
        );
        println!(
            "  {:<44} events/s: Table direct {:>7.0} ({:.0}–{:.0}), via proxy {:>7.0}; SQLite \
             {:>7.0}; Table ÷ SQLite {:.3}",
            "",
            table_direct,
            lo,
            hi,
            median(counted_eps),
            sqlite_med,
            table_direct / sqlite_med
        );
    }

    // Scenario 3: one more round, then its connects again (duplicates) and its disconnects again,
    // now older than the connects (stale).
    println!("\n[3] duplicates and stale events (deliveries of 64, 16 tasks)");
    let hour = last_round.map_or(hour + 1, |h| h + 1);
    let down = T0_MS + hour * HOUR;
    let disc = gen.all(&ids, false, down);
    let conn = gen.all(&ids, true, down + 1_000);
    let fresh = all_in_64s(&s.counted, Some(proxy), disc.clone(), down)
        .await
        .plus(all_in_64s(&s.counted, Some(proxy), conn.clone(), down + 1_000).await);
    assert_eq!(fresh.outcomes.get("closed_silently"), Some(&ids.len()));
    for (label, events, expect) in [
        ("duplicate (same sequence number)", conn, "duplicate"),
        ("stale (lower sequence number)", disc, "stale"),
    ] {
        let r = all_in_64s(&s.counted, Some(proxy), events, down + 2_000).await;
        assert!(r.only(expect), "{:?}", r.outcomes);
        print_run(label, &r);
    }
}

/// Claims everything due as `Monitor::sweep` does; returns the alerts claimed.
async fn claim_all(store: &dyn Store, now: Timestamp) -> usize {
    let mut n = 0;
    loop {
        let c = store
            .claim_due(now, CLAIM_CHUNK)
            .await
            .expect("claim_due")
            .len();
        n += c;
        if c < CLAIM_CHUNK {
            return n;
        }
    }
}

/// Delivers the channel's queue as `channels::drain` does (the send always succeeds).
async fn drain(store: &dyn Store, now: Timestamp) -> usize {
    let mut n = 0;
    loop {
        let batch = store
            .queued(CHANNEL, now, DELIVERY_BATCH)
            .await
            .expect("queued");
        if batch.is_empty() {
            return n;
        }
        n += batch.len();
        let short = batch.len() < DELIVERY_BATCH;
        store
            .delivered(batch.into_iter().map(|q| q.id).collect())
            .await
            .expect("delivered");
        if short {
            return n;
        }
    }
}

/// Counted requests and wall time of `f`.
async fn measured<T>(
    proxy: &Proxy,
    f: impl std::future::Future<Output = T>,
) -> (T, Counts, Duration) {
    let before = proxy.snapshot();
    let start = Instant::now();
    let out = f.await;
    (out, proxy.snapshot().minus(&before), start.elapsed())
}

async fn sweeps(az: &Azurite, proxy: &Proxy, p: &Params) {
    let s = open_table(az, proxy, "sweep").await;
    let store = s.counted.as_ref();
    let mut gen = Gen::default();
    let now_ms = T0_MS + 1000 * HOUR;
    let now = Timestamp::from_unix_millis(now_ms);
    let sizes = [(p.identities / 2).max(20), p.identities * 5];
    println!(
        "\n[4] sweep (grace {} s, channel [{CHANNEL}], claim_due chunks of {CLAIM_CHUNK}, \
         delivery batches of {DELIVERY_BATCH}); fleets loaded in deliveries of 64 from 16 tasks",
        GRACE_MS / 1000
    );
    let mut loaded = 0;
    for n in sizes {
        let ids = devices("sw", loaded, n);
        let load_at = now_ms - 10 * HOUR;
        all_in_64s(&s.direct, None, gen.all(&ids, true, load_at), load_at).await;
        // 1% pending inside the grace: in the index, not due.
        let pending: Vec<Identity> = (loaded..n)
            .filter(|i| i % 100 == 50)
            .map(|i| ids[i - loaded].clone())
            .collect();
        let down = now_ms - MINUTE;
        all_in_64s(&s.direct, None, gen.all(&pending, false, down), down).await;
        loaded = n;
        let (mut reqs, mut times) = (Vec::new(), Vec::new());
        let mut last = Counts::default();
        for _ in 0..p.reps.max(3) {
            let ((claimed, delivered, queued), c, d) = measured(proxy, async {
                let claimed = claim_all(store, now).await;
                let delivered = drain(store, now).await;
                (
                    claimed,
                    delivered,
                    store.queue_len().await.expect("queue_len"),
                )
            })
            .await;
            assert_eq!((claimed, delivered, queued), (0, 0, 0));
            reqs.push(c.requests() as f64);
            times.push(d.as_secs_f64() * 1e3);
            last = c;
        }
        let (lo, hi) = range(&times);
        println!(
            "  nothing due, fleet {n:>6} ({} pending): per sweep {} (median {:.0}); {:.1} ms \
             ({lo:.1}–{hi:.1})",
            pending.len(),
            last.per(1),
            median(reqs),
            median(times)
        );
    }

    // K due: disconnected long enough ago; after each repetition they reconnect (which queues a
    // `reconnected` alert each, drained unmeasured) so the next one starts from the same fleet.
    let due: Vec<Identity> = devices("sw", 0, loaded)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % 100 != 50)
        .map(|(_, id)| id)
        .take(p.due)
        .collect();
    let k = due.len();
    let (mut claim_req, mut deliver_req, mut total_req) = (Vec::new(), Vec::new(), Vec::new());
    let (mut claim_ms, mut deliver_ms) = (Vec::new(), Vec::new());
    let (mut claim_counts, mut deliver_counts, mut len_counts) =
        (Counts::default(), Counts::default(), Counts::default());
    for rep in 0..p.reps as i64 {
        let down = now_ms - 30 * MINUTE + rep * 1_000;
        all_in_64s(&s.direct, None, gen.all(&due, false, down), down).await;
        let (claimed, cc, cd) = measured(proxy, claim_all(store, now)).await;
        assert_eq!(claimed, k, "every due outage claimed once");
        let (delivered, dc, dd) = measured(proxy, drain(store, now)).await;
        assert_eq!(delivered, k, "every claimed alert delivered");
        let (queued, lc, _) = measured(proxy, store.queue_len()).await;
        assert_eq!(queued.expect("queue_len"), 0);
        claim_req.push(cc.requests() as f64 / k as f64);
        deliver_req.push(dc.requests() as f64 / k as f64);
        total_req.push((cc.requests() + dc.requests() + lc.requests()) as f64 / k as f64);
        claim_ms.push(cd.as_secs_f64() * 1e3);
        deliver_ms.push(dd.as_secs_f64() * 1e3);
        (claim_counts, deliver_counts, len_counts) = (cc, dc, lc);
        let up = now_ms - MINUTE;
        all_in_64s(&s.direct, None, gen.all(&due, true, up), up).await;
        assert_eq!(drain(s.direct.as_ref(), now).await, k, "reconnected alerts");
    }
    let (cm, dm) = (median(claim_ms), median(deliver_ms));
    println!(
        "  {k} due of {loaded}: claim   per alert {} (median {:.3}); {:.0} ms, {:.0} alerts/s",
        claim_counts.per(k),
        median(claim_req),
        cm,
        k as f64 / (cm / 1e3)
    );
    println!(
        "  {k} due of {loaded}: deliver per alert {} (median {:.3}); {:.0} ms, {:.0} alerts/s",
        deliver_counts.per(k),
        median(deliver_req),
        dm,
        k as f64 / (dm / 1e3)
    );
    println!(
        "  {k} due of {loaded}: queue_len {}; whole sweep per alert median {:.3} req",
        len_counts.per(1),
        median(total_req)
    );
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    Some(
        args.get(i + 1)?
            .parse()
            .ok()
            .unwrap_or_else(|| panic!("{name} needs a number")),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and gets the smoke run.
    let smoke = args.iter().any(|a| a == "--smoke") || !args.iter().any(|a| a == "--bench");
    let identities: usize = arg(&args, "--identities").unwrap_or(if smoke { 40 } else { 2000 });
    let due: usize = arg(&args, "--due").unwrap_or(if smoke { 20 } else { 1000 });
    let reps: usize = arg(&args, "--reps").unwrap_or(if smoke { 1 } else { 3 });
    let case = |size, concurrency, pairs| Case {
        size,
        concurrency,
        pairs,
    };
    let params = Params {
        identities,
        due,
        reps: reps.max(1),
        cases: vec![
            case(1, 1, false),
            case(1, 16, false),
            case(64, 1, false),
            case(64, 16, false),
            case(64, 16, true),
        ],
    };

    let azurite = Azurite::from_env_or_start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = reqwest::Url::parse(&azurite.base).expect("azurite url");
        let upstream = tokio::net::lookup_host((
            url.host_str().unwrap_or("127.0.0.1"),
            url.port_or_known_default().unwrap_or(10002),
        ))
        .await
        .expect("resolve azurite")
        .next()
        .expect("an address for azurite");
        let proxy = Proxy::start(upstream).await;
        println!(
            "table bench: Azurite at {} ({}), counting proxy at {}; grace {} s, channel [{CHANNEL}]",
            azurite.base,
            if azurite.started_here() {
                "started by the bench"
            } else {
                AZURITE_ENV
            },
            proxy.addr,
            GRACE_MS / 1000
        );
        events(&azurite, &proxy, &params).await;
        sweeps(&azurite, &proxy, &params).await;
    });
    drop(rt);
    drop(azurite);
}
