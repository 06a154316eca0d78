//! Helpers for the wire-level tests: the `connmon` process ([`Connmon`]), a small blocking HTTP/1.1
//! client that speaks like the Functions host ([`Request`]), a real webhook receiver ([`Receiver`]),
//! and builders for IoT Hub events and host invocation envelopes ([`Ev`], [`invocation`]).
//!
//! Only std, serde_json, tempfile and `time` (already a dependency of connmon): the point is to see
//! the bytes on the wire, not what a client library makes of them.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// The fields of every alert object the webhook receives (docs/rules.md, the alert body), also what replay reports.
pub const ALERT_FIELDS: [&str; 10] = [
    "kind",
    "dedupKey",
    "hub",
    "deviceId",
    "moduleId",
    "disconnectedAt",
    "reconnectedAt",
    "downtimeSeconds",
    "gracePeriodSeconds",
    "detectedAt",
];

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// A fixture file's bytes, e.g. `fixture("host/timer-monitor-on.captured.json")`.
pub fn fixture(rel: &str) -> Vec<u8> {
    let path = Path::new(FIXTURES).join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

pub fn fixture_json(rel: &str) -> Value {
    serde_json::from_slice(&fixture(rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Property tests

/// proptest's configuration for a test that runs `default_cases` cases unless `PROPTEST_CASES`
/// says otherwise (proptest reads that variable only for a test that keeps its default count).
/// Failures print the shrunk case; no regression files are written into the source tree.
pub fn proptest_config(default_cases: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default_cases);
    proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// The connmon process

/// A free TCP port on 127.0.0.1: bind port 0, read the port, drop the listener (as the host does).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `probe` every 25 ms until it returns `Some`, for at most `within`; panics with `what`.
pub fn eventually<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        thread::sleep(Duration::from_millis(25));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `FUNCTIONS_CUSTOMHANDLER_PORT` set, as under the Functions host.
    Functions,
    /// `CONNMON_LISTEN` set, `FUNCTIONS_CUSTOMHANDLER_PORT` removed.
    Standalone,
}

/// Every setting connmon reads: removed from the inherited environment before each spawn, so only
/// what a test passes applies (and the settings fuzzer's vocabulary).
pub const SETTINGS: &[&str] = &[
    "FUNCTIONS_CUSTOMHANDLER_PORT",
    "FUNCTIONS_HTTPWORKER_PORT",
    "CONNMON_GRACE_PERIOD",
    "CONNMON_ALERT_WEBHOOK_URL",
    "CONNMON_TEAMS_WEBHOOK_URL",
    "CONNMON_SLACK_WEBHOOK_URL",
    "CONNMON_PAGERDUTY_ROUTING_KEY",
    "CONNMON_PAGERDUTY_EVENTS_URL",
    "CONNMON_GROUP_THRESHOLD",
    "CONNMON_QUICK_RETRY_FOR",
    "CONNMON_INCLUDE",
    "CONNMON_EXCLUDE",
    "CONNMON_GRACE_OVERRIDES",
    "CONNMON_SILENCES",
    "CONNMON_FLAP_THRESHOLD",
    "CONNMON_FLAP_WINDOW",
    "CONNMON_REMIND_EVERY",
    "CONNMON_STORE",
    "CONNMON_SQLITE_PATH",
    "CONNMON_LISTEN",
    "CONNMON_SWEEP_INTERVAL",
    "CONNMON_TABLE_CONNECTION",
    "CONNMON_TABLE_NAME",
    "CONNMON_WEBHOOK_KEY",
    "CONNMON_API_KEY",
    "CONNMON_HUB_QUIET_AFTER",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__accountName",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__clientId",
    "AzureWebJobsStorage__credential",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
];

/// One `connmon` process in its own temporary directory (its cwd, its SQLite file, its logs).
/// Killed on drop. `kill` + `start_again` reuse the directory, so the SQLite file survives.
pub struct Connmon {
    dir: tempfile::TempDir,
    mode: Mode,
    env: Vec<(String, String)>,
    /// A command that runs connmon (appended as its last argument), e.g. `unshare …` or
    /// `setpriv …`; empty to run it directly.
    launcher: Vec<String>,
    child: Option<Child>,
    pub port: u16,
}

impl Connmon {
    /// Functions mode with the given settings (e.g. `[("CONNMON_GRACE_PERIOD", "2s")]`).
    pub fn functions(env: &[(&str, &str)]) -> Connmon {
        Connmon::start(Mode::Functions, env)
    }

    /// Standalone mode with the given settings.
    pub fn standalone(env: &[(&str, &str)]) -> Connmon {
        Connmon::start(Mode::Standalone, env)
    }

    pub fn start(mode: Mode, env: &[(&str, &str)]) -> Connmon {
        Connmon::start_with_files(mode, env, &[])
    }

    /// Like [`Connmon::start`], with files written into its working directory (the app root under
    /// the host) first, e.g. `("DisconnectTimer/function.json", "...")`.
    pub fn start_with_files(mode: Mode, env: &[(&str, &str)], files: &[(&str, &str)]) -> Connmon {
        let mut c = Connmon::prepare(mode, env, files, &[]);
        c.spawn();
        c
    }

    /// Like [`Connmon::start`], run through `launcher` (a command that gets the binary's path as
    /// its last argument and must `exec` it, so that the process id is connmon's).
    pub fn launched(mode: Mode, env: &[(&str, &str)], launcher: &[&str]) -> Connmon {
        let mut c = Connmon::prepare(mode, env, &[], launcher);
        c.spawn();
        c
    }

    /// The working directory, its files and settings; nothing started yet.
    fn prepare(
        mode: Mode,
        env: &[(&str, &str)],
        files: &[(&str, &str)],
        launcher: &[&str],
    ) -> Connmon {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, text) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().expect("a file in a folder")).expect("mkdir");
            std::fs::write(full, text).expect("write file");
        }
        Connmon {
            dir,
            mode,
            env: owned(env),
            launcher: launcher.iter().map(|s| s.to_string()).collect(),
            child: None,
            port: 0,
        }
    }

    /// The working directory (the app root).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The most memory the running process has held so far (`VmHWM`, peak resident set), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {status}"))
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("connmon.db")
    }

    fn log_file(&self, name: &str) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .expect("log file")
    }

    fn spawn(&mut self) {
        if let Err(why) = self.try_spawn() {
            panic!(
                "{why}\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }

    /// Starts the process and waits until it answers; `Err` if it exits first or does not answer.
    fn try_spawn(&mut self) -> Result<(), String> {
        // A port picked by `free_port` can be taken by someone else before connmon binds it:
        // then connmon exits with "cannot listen" and we try another one.
        for attempt in 1..=3 {
            let port = free_port();
            let bin = env!("CARGO_BIN_EXE_connmon");
            let mut cmd = match self.launcher.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(bin);
                    c
                }
                None => Command::new(bin),
            };
            cmd.current_dir(self.dir.path())
                .stdin(Stdio::null())
                .stdout(self.log_file("stdout.log"))
                .stderr(self.log_file("stderr.log"));
            for k in SETTINGS {
                cmd.env_remove(k);
            }
            cmd.env("CONNMON_SQLITE_PATH", self.db_path());
            match self.mode {
                Mode::Functions => cmd.env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string()),
                Mode::Standalone => cmd.env("CONNMON_LISTEN", format!("127.0.0.1:{port}")),
            };
            // `{port}` in a setting stands for the port picked here (e.g. `0.0.0.0:{port}`).
            for (k, v) in &self.env {
                cmd.env(k, v.replace("{port}", &port.to_string()));
            }
            self.child = Some(cmd.spawn().expect("spawn connmon"));
            self.port = port;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(why) if attempt < 3 && self.stderr().contains("cannot listen") => {
                    eprintln!("retrying on another port: {why}");
                }
                Err(why) => return Err(why),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Like the host: `GET /` every 25 ms until any HTTP answer, for at most 10 s.
    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!("connmon exited ({status}) before answering GET /"));
            }
            if Request::get("/")
                .timeout(Duration::from_secs(1))
                .try_send(self.port)
                .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err("connmon did not answer GET / within 10 s".into());
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL: no graceful shutdown, nothing flushed that was not already durable.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new process on the same directory and SQLite file (same mode and settings).
    pub fn start_again(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Starts a new process on the same directory and settings; `Err` (with what it printed) if it
    /// exits instead of answering.
    pub fn try_start_again(&mut self) -> Result<(), String> {
        self.kill();
        self.try_spawn()
    }

    /// Starts a new process on the same directory and SQLite file with another mode and settings.
    pub fn start_again_as(&mut self, mode: Mode, env: &[(&str, &str)]) {
        self.kill();
        self.mode = mode;
        self.env = owned(env);
        self.spawn();
    }

    /// SIGTERM (what an orderly stop sends); waits at most 10 s for the exit and returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("connmon did not exit within 10 s of SIGTERM");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Both streams, for "never appears in the logs" assertions.
    pub fn logs(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    // --- talking to it

    /// `GET /` → the counters object.
    pub fn counters(&self) -> Value {
        let resp = Request::get("/").send(self.port);
        assert_eq!(resp.status, 200, "GET /: {resp:?}");
        let body = resp.json();
        assert_eq!(body["status"], "ok", "{body}");
        body["counters"].clone()
    }

    /// The host invoking `function` with `body` (host headers, chunked in several chunks).
    pub fn invoke(&self, function: &str, body: &Value) -> Response {
        invocation_request(function, body).send(self.port)
    }

    /// Delivers one event through `ConnectionEvent` the way the host most likely encodes it
    /// (string in string); asserts success and returns the invocation's `Logs`.
    pub fn event(&self, ev: &Ev) -> Vec<String> {
        self.invocation(invocation(encode(&ev.eg(), Enc::StrInStr)))
    }

    /// Posts an invocation envelope to `ConnectionEvent`; asserts success, returns `Logs`.
    pub fn invocation(&self, envelope: Value) -> Vec<String> {
        host_logs(&self.invoke("ConnectionEvent", &envelope))
    }

    /// The timer trigger firing (captured payload): one sweep. Asserts success.
    pub fn sweep(&self) -> Sweep {
        Sweep::parse(host_logs(
            &self.invoke("DisconnectTimer", &timer_invocation()),
        ))
    }

    /// Sweeps every 200 ms until one delivers something or `within` passes; returns every sweep.
    pub fn sweep_until_delivered(&self, within: Duration) -> Vec<Sweep> {
        let started = Instant::now();
        let mut sweeps = Vec::new();
        loop {
            let s = self.sweep();
            let done = s.delivered > 0;
            sweeps.push(s);
            if done {
                return sweeps;
            }
            assert!(
                started.elapsed() < within,
                "nothing delivered within {within:?}: {sweeps:#?}\nstderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `POST /api/events` (the standalone webhook) with a JSON body and extra headers.
    pub fn api_events(&self, body: &Value, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::post("/api/events")
            .header("Content-Type", "application/json")
            .body(body.to_string().into_bytes());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.send(self.port)
    }
}

/// The request the host sends to invoke `function` with `body` (host headers, chunked in several
/// chunks); send it with [`Request::try_send`] where the process may be gone.
pub fn invocation_request(function: &str, body: &Value) -> Request {
    Request::post(&format!("/{function}"))
        .host_headers()
        .body(body.to_string().into_bytes())
        .chunked(3)
}

/// The timer trigger's invocation body (captured from the host).
pub fn timer_invocation() -> Value {
    fixture_json("host/timer-monitor-on.captured.json")
}

impl Drop for Connmon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn owned(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// How a process that was expected to refuse to start ended.
#[derive(Debug)]
pub struct Exit {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs connmon with only `env` set (in a fresh temp dir) and waits for it to exit (at most 10 s).
pub fn run_to_exit(env: &[(&str, &str)]) -> Exit {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_connmon"));
    cmd.current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in SETTINGS {
        cmd.env_remove(k);
    }
    cmd.env("CONNMON_SQLITE_PATH", dir.path().join("connmon.db"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn connmon");
    let started = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "connmon did not exit with {env:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    Exit {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// An Azurite of a test's own

/// Azurite's Table service on a port of its own, for tests that stop the store and start it
/// again (the shared one `scripts/test` starts must stay up for the other tests). The pinned
/// Azurite from `node_modules` (`npm ci`, which `scripts/test` runs), started like `scripts/test`
/// does. Killed on drop.
pub struct Azurite {
    pub port: u16,
    /// Its working directory; with `persist`, also where it keeps its data.
    dir: tempfile::TempDir,
    persist: bool,
    child: Option<Child>,
}

impl Azurite {
    /// Data in memory only: a restart comes back empty, without tables.
    pub fn in_memory() -> Azurite {
        Azurite::start(false)
    }

    /// Data in its directory: a restart after [`Azurite::stop`] keeps every table and entity.
    pub fn persistent() -> Azurite {
        Azurite::start(true)
    }

    fn start(persist: bool) -> Azurite {
        let mut a = Azurite {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            persist,
            child: None,
        };
        a.start_again();
        a
    }

    /// The table endpoint, `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/devstoreaccount1", self.port)
    }

    pub fn connection_string(&self) -> String {
        crate::table_client::connection_string(&self.endpoint())
    }

    /// Starts it (again) on the same port and waits until it accepts connections (at most 30 s).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "Azurite is already running");
        let main = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("node_modules/azurite/dist/src/table/main.js");
        assert!(
            main.exists(),
            "{} is missing: run `npm ci` (scripts/test does)",
            main.display()
        );
        // A fresh log per start: "successfully started" is this start's.
        let log_path = self.dir.path().join("azurite.log");
        let log = File::create(&log_path).expect("azurite log");
        let mut cmd = Command::new("node");
        cmd.arg(&main)
            .args(["--tableHost", "127.0.0.1", "--tablePort"])
            .arg(self.port.to_string())
            .arg("--disableTelemetry")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if self.persist {
            cmd.arg("--location").arg(self.dir.path());
        } else {
            cmd.arg("--inMemoryPersistence");
        }
        let mut child = cmd
            .spawn()
            .expect("start node (Node.js is needed for Azurite)");
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains("successfully started")
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                break;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("Azurite exited ({status}) on port {}:\n{text}", self.port);
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!(
                    "Azurite did not start on port {} within 30 s:\n{text}",
                    self.port
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// Stops it the way Ctrl-C does (it saves its data, if persistent, and closes); waits at most
    /// 10 s, then kills it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let started = Instant::now();
        while child.try_wait().expect("try_wait").is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL: gone at once, whatever it had not saved is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// A blocking HTTP/1.1 client

/// One HTTP request, sent on its own connection with `Connection: close`.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// `Some(n)`: send the body with `Transfer-Encoding: chunked` in `n` chunks.
    chunks: Option<usize>,
    timeout: Duration,
}

impl Request {
    pub fn new(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
            chunks: None,
            timeout: Duration::from_secs(30),
        }
    }

    pub fn get(path: &str) -> Request {
        Request::new("GET", path)
    }

    pub fn post(path: &str) -> Request {
        Request::new("POST", path)
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The headers the Functions host sends with every invocation.
    pub fn host_headers(self) -> Request {
        self.header("X-Azure-Functions-HostVersion", "4.1037.0.0")
            .header(
                "X-Azure-Functions-InvocationId",
                "0f6a3a4c-3b1e-4c8f-9a39-6d9f2b7c1e55",
            )
            .header("User-Agent", "Azure-Functions-Host/4.1037.0.0")
            .header("Content-Type", "application/json; charset=utf-8")
    }

    pub fn body(mut self, body: Vec<u8>) -> Request {
        self.body = body;
        self
    }

    /// Sends the body with `Transfer-Encoding: chunked`, split into `n` chunks (no Content-Length).
    pub fn chunked(mut self, n: usize) -> Request {
        self.chunks = Some(n.max(1));
        self
    }

    pub fn timeout(mut self, t: Duration) -> Request {
        self.timeout = t;
        self
    }

    /// Sends and returns the response; panics if there is none.
    pub fn send(&self, port: u16) -> Response {
        self.try_send(port)
            .unwrap_or_else(|e| panic!("{} {} on port {port}: {e}", self.method, self.path))
    }

    pub fn try_send(&self, port: u16) -> Result<Response, String> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, self.timeout).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n",
            self.method, self.path
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut wire = Vec::new();
        match self.chunks {
            None => {
                if !self.body.is_empty() || self.method != "GET" {
                    head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
                }
                head.push_str("\r\n");
                wire.extend_from_slice(head.as_bytes());
                wire.extend_from_slice(&self.body);
            }
            Some(n) => {
                head.push_str("Transfer-Encoding: chunked\r\n\r\n");
                wire.extend_from_slice(head.as_bytes());
                let size = self.body.len().div_ceil(n).max(1);
                for chunk in self.body.chunks(size) {
                    wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    wire.extend_from_slice(chunk);
                    wire.extend_from_slice(b"\r\n");
                }
                wire.extend_from_slice(b"0\r\n\r\n");
            }
        }
        // Write on another thread while this one reads: a server may answer (413) and close before
        // it has read everything, and the answer must still be seen.
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        let sender = thread::spawn(move || {
            let _ = writer.write_all(&wire).and_then(|()| writer.flush());
        });
        let mut raw = Vec::new();
        let read = (&stream).read_to_end(&mut raw);
        let _ = sender.join();
        match (read, Response::parse(&raw)) {
            (_, Some(r)) => Ok(r),
            (Err(e), None) => Err(format!("no HTTP response ({e})")),
            (Ok(_), None) => Err(format!(
                "no complete HTTP response in {:?}",
                String::from_utf8_lossy(&raw)
            )),
        }
    }
}

/// An HTTP response as received.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// Parses a whole response (read to EOF): Content-Length, chunked, or up to EOF.
    fn parse(raw: &[u8]) -> Option<Response> {
        let end = find(raw, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&raw[..end]).ok()?;
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let rest = &raw[end + 4..];
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let body = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            dechunk(rest)?
        } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            rest.get(..n)?.to_vec()
        } else {
            rest.to_vec()
        };
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics (showing it) if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {} {:?}",
                self.status,
                self.text()
            )
        })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a complete chunked body (trailers ignored); `None` if it is cut short.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}

/// Asserts the answer the Functions host requires (200, JSON object with `Outputs`, `Logs`,
/// `ReturnValue: null`) and returns the `Logs`.
pub fn host_logs(resp: &Response) -> Vec<String> {
    assert_eq!(
        resp.status,
        200,
        "invocation failed: {resp:?} {}",
        resp.text()
    );
    let ct = resp.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/json"), "Content-Type {ct:?}");
    let body = resp.json();
    let obj = body.as_object().expect("a JSON object");
    assert_eq!(obj.len(), 3, "exactly Outputs, Logs, ReturnValue: {body}");
    assert_eq!(obj["Outputs"], json!({}), "{body}");
    assert_eq!(obj["ReturnValue"], Value::Null, "{body}");
    obj["Logs"]
        .as_array()
        .expect("Logs is an array")
        .iter()
        .map(|l| {
            l.as_str()
                .expect("every Logs entry is a string")
                .to_string()
        })
        .collect()
}

/// Asserts a 4xx/5xx answer with `{"error": "<non-empty>"}` and returns the message.
pub fn error_message(resp: &Response, status: u16) -> String {
    assert_eq!(resp.status, status, "{resp:?} {}", resp.text());
    let body = resp.json();
    let msg = body["error"].as_str().unwrap_or_default().to_string();
    assert!(!msg.is_empty(), "no `error` message: {body}");
    msg
}

/// One timer invocation's result, read from its `Logs`.
#[derive(Debug, Clone)]
pub struct Sweep {
    pub new_alerts: u64,
    pub delivered: u64,
    pub queued: u64,
    pub logs: Vec<String>,
}

impl Sweep {
    /// Reads `connmon sweep: N new disconnected alert(s), D delivered, Q queued for retry …`.
    pub fn parse(logs: Vec<String>) -> Sweep {
        let first = logs.first().expect("a summary line");
        let rest = first
            .strip_prefix("connmon sweep: ")
            .unwrap_or_else(|| panic!("unexpected summary line {first:?}"));
        let nums: Vec<u64> = rest
            .split(", ")
            .take(3)
            .map(|part| {
                part.split(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected summary line {first:?}"))
            })
            .collect();
        Sweep {
            new_alerts: nums[0],
            delivered: nums[1],
            queued: nums[2],
            logs,
        }
    }

    /// The `ALERT …` lines that follow the summary.
    pub fn alert_lines(&self) -> Vec<&str> {
        self.logs[1..]
            .iter()
            .filter(|l| l.starts_with("ALERT "))
            .map(String::as_str)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// A real webhook receiver

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    StatusWith(u16, Vec<(String, String)>),
    /// A status, headers and a plain-text body (Slack answers `ok`, `channel_not_found`, …).
    Text(u16, Vec<(String, String)>, String),
    /// Close the connection without answering.
    Close,
    /// Wait, then answer as the inner answer says: a slow receiver, or with `Close` inside one
    /// that hangs until the sender gives up.
    After(Duration, Box<Answer>),
    /// A status and a chunked body that does not end: [`ENDLESS_BYTES`] as fast as the client
    /// takes them, then nothing until the client gives up (or 15 s pass), then the connection is
    /// closed without the last chunk.
    Endless(u16),
}

/// What an [`Answer::Endless`] sends at most before it falls silent.
pub const ENDLESS_BYTES: usize = 64 << 20;

impl Answer {
    /// The status the receiver will answer with (`None`: it closes without answering).
    fn code(&self) -> Option<u16> {
        match self {
            Answer::Close => None,
            Answer::Status(code)
            | Answer::StatusWith(code, _)
            | Answer::Text(code, _, _)
            | Answer::Endless(code) => Some(*code),
            Answer::After(_, inner) => inner.code(),
        }
    }
}

/// One request the receiver got, and what it answered (`None`: closed without answering).
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub answered: Option<u16>,
    /// When the request had been read in full.
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The elements of the body's `alerts` array.
    pub fn alerts(&self) -> Vec<Value> {
        self.json()["alerts"]
            .as_array()
            .expect("`alerts` is an array")
            .clone()
    }

    pub fn delivered(&self) -> bool {
        self.answered.is_some_and(|s| (200..300).contains(&s))
    }
}

/// (kind, deviceId) of each alert, in order.
pub fn names(alerts: &[Value]) -> Vec<(String, String)> {
    alerts
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap().to_string(),
                a["deviceId"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn pair(kind: &str, device: &str) -> (String, String) {
    (kind.to_string(), device.to_string())
}

struct Log {
    script: VecDeque<Answer>,
    /// The answer once the script is used up.
    then: Answer,
    requests: Vec<Received>,
}

type Shared = Arc<(Mutex<Log>, Condvar)>;

/// An HTTP server on 127.0.0.1 that records every request and answers from a script (then 200).
pub struct Receiver {
    pub port: u16,
    shared: Shared,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// On a fresh port; answers `script` in order, then 200 to everything.
    pub fn start(script: Vec<Answer>) -> Receiver {
        Receiver::start_then(script, Answer::Status(200))
    }

    /// On a fresh port; answers `script` in order, then `then` to everything.
    pub fn start_then(script: Vec<Answer>, then: Answer) -> Receiver {
        Receiver::listen(
            TcpListener::bind("127.0.0.1:0").expect("bind"),
            script,
            then,
        )
    }

    /// On a given port (one reserved earlier with [`free_port`]).
    pub fn start_on(port: u16, script: Vec<Answer>) -> Receiver {
        Receiver::listen(
            TcpListener::bind(("127.0.0.1", port)).expect("bind the reserved port"),
            script,
            Answer::Status(200),
        )
    }

    fn listen(listener: TcpListener, script: Vec<Answer>, then: Answer) -> Receiver {
        let port = listener.local_addr().expect("addr").port();
        let shared: Shared = Arc::new((
            Mutex::new(Log {
                script: script.into(),
                then,
                requests: Vec::new(),
            }),
            Condvar::new(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (shared.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let s = s.clone();
                    thread::spawn(move || serve_connection(conn, s));
                }
            }
        });
        Receiver { port, shared, stop }
    }

    /// The webhook URL for this receiver with `path_and_query` (e.g. `/hook?code=…`).
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_and_query}", self.port)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.shared.0.lock().unwrap().requests.clone()
    }

    /// Alerts of every request answered 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| r.delivered())
            .flat_map(Received::alerts)
            .collect()
    }

    /// Waits until at least `k` alerts were delivered (answered 2xx); returns all delivered alerts.
    pub fn wait_delivered(&self, k: usize, within: Duration) -> Vec<Value> {
        let (lock, cv) = &*self.shared;
        let deadline = Instant::now() + within;
        let mut log = lock.lock().unwrap();
        loop {
            let got: Vec<Value> = log
                .requests
                .iter()
                .filter(|r| r.delivered())
                .flat_map(Received::alerts)
                .collect();
            if got.len() >= k {
                return got;
            }
            let now = Instant::now();
            assert!(
                now < deadline,
                "expected {k} delivered alert(s) within {within:?}, got {}: {got:#?}",
                got.len()
            );
            log = cv.wait_timeout(log, deadline - now).unwrap().0;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes `accept`
    }
}

/// Serves keep-alive requests on one connection until the client closes it or the script says so.
/// Each request is recorded *before* it is answered, so whatever connmon reports after getting the
/// answer is already visible to the test.
fn serve_connection(conn: TcpStream, shared: Shared) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut conn = conn;
    while let Some(mut req) = read_request(&mut reader) {
        let (lock, cv) = &*shared;
        let answer = {
            let mut log = lock.lock().unwrap();
            let answer = log.script.pop_front().unwrap_or_else(|| log.then.clone());
            req.answered = answer.code();
            log.requests.push(req);
            answer
        };
        cv.notify_all();
        if !answer_with(&mut conn, answer) {
            return;
        }
    }
}

/// Writes `answer`; `false` when the connection is closed instead.
fn answer_with(conn: &mut TcpStream, answer: Answer) -> bool {
    match answer {
        Answer::Close => {
            let _ = conn.shutdown(Shutdown::Both);
            return false;
        }
        Answer::After(wait, inner) => {
            thread::sleep(wait);
            return answer_with(conn, *inner);
        }
        Answer::Status(code) => write_answer(conn, code, &[], "{}"),
        Answer::StatusWith(code, headers) => write_answer(conn, code, &headers, "{}"),
        Answer::Text(code, headers, body) => write_answer(conn, code, &headers, &body),
        Answer::Endless(code) => {
            write_endless(conn, code);
            return false;
        }
    }
    true
}

/// [`Answer::Endless`]: chunks until [`ENDLESS_BYTES`] are sent or the client stops reading
/// (closes), then silence until the client closes or 15 s pass.
fn write_endless(conn: &mut TcpStream, code: u16) {
    let head = format!("HTTP/1.1 {code} Scripted\r\nTransfer-Encoding: chunked\r\n\r\n");
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    let data = vec![b'x'; 64 << 10];
    let mut chunk = format!("{:x}\r\n", data.len()).into_bytes();
    chunk.extend_from_slice(&data);
    chunk.extend_from_slice(b"\r\n");
    let mut sent = 0;
    while sent < ENDLESS_BYTES {
        if conn.write_all(&chunk).is_err() {
            return;
        }
        sent += data.len();
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
    let _ = conn.read(&mut [0u8; 1]);
    let _ = conn.shutdown(Shutdown::Both);
}

fn write_answer(conn: &mut TcpStream, code: u16, headers: &[(String, String)], body: &str) {
    let mut head = format!(
        "HTTP/1.1 {code} Scripted\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    let _ = conn.write_all(head.as_bytes());
}

/// Reads one request (Content-Length or chunked body); `None` at EOF or on garbage.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(n, 0);
        match r.read_exact(&mut body) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return None,
            Err(_) => return None,
        }
    }
    Some(Received {
        method,
        target,
        headers,
        body,
        answered: None,
        at: Instant::now(),
    })
}

// ---------------------------------------------------------------------------------------------
// Events and envelopes

pub const CONNECTED: &str = "Microsoft.Devices.DeviceConnected";
pub const DISCONNECTED: &str = "Microsoft.Devices.DeviceDisconnected";
pub const HUB: &str = "connmon-test-hub";

/// A sequence number as IoT Hub sends it: 64 upper-case hex digits.
pub fn seq(n: u64) -> String {
    format!("{n:064X}")
}

/// RFC 3339 UTC with 7 fractional digits (like IoT Hub), `secs` seconds before now.
pub fn ago(secs: i64) -> String {
    rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(secs))
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    )
}

/// Parses an RFC 3339 time (for checking connmon's output).
pub fn parse_time(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

/// A DeviceConnected / DeviceDisconnected event, rendered in either schema.
#[derive(Debug, Clone)]
pub struct Ev {
    pub event_type: String,
    pub hub: String,
    pub device: String,
    pub module: Option<String>,
    pub seq: String,
    pub time: String,
}

pub fn disconnected(device: &str, n: u64, time: &str) -> Ev {
    Ev::new(DISCONNECTED, device, n, time)
}

pub fn connected(device: &str, n: u64, time: &str) -> Ev {
    Ev::new(CONNECTED, device, n, time)
}

impl Ev {
    pub fn new(event_type: &str, device: &str, n: u64, time: &str) -> Ev {
        Ev {
            event_type: event_type.into(),
            hub: HUB.into(),
            device: device.into(),
            module: None,
            seq: seq(n),
            time: time.into(),
        }
    }

    pub fn hub(mut self, hub: &str) -> Ev {
        self.hub = hub.into();
        self
    }

    pub fn module(mut self, module: &str) -> Ev {
        self.module = Some(module.into());
        self
    }

    fn data(&self) -> Value {
        let mut data = json!({
            "deviceConnectionStateEventInfo": { "sequenceNumber": self.seq },
            "hubName": self.hub,
            "deviceId": self.device,
        });
        if let Some(m) = &self.module {
            data["moduleId"] = json!(m);
        }
        data
    }

    fn id(&self) -> String {
        let short = self.event_type.rsplit('.').next().unwrap_or_default();
        format!(
            "{}-{}-{short}",
            self.device,
            self.seq.trim_start_matches('0')
        )
    }

    fn subject(&self) -> String {
        match &self.module {
            Some(m) => format!("devices/{}/{m}", self.device),
            None => format!("devices/{}", self.device),
        }
    }

    fn topic(&self) -> String {
        format!(
            "/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/{}",
            self.hub.to_uppercase()
        )
    }

    /// Event Grid schema.
    pub fn eg(&self) -> Value {
        json!({
            "id": self.id(),
            "topic": self.topic(),
            "subject": self.subject(),
            "eventType": self.event_type,
            "eventTime": self.time,
            "data": self.data(),
            "dataVersion": "1",
            "metadataVersion": "1",
        })
    }

    /// CloudEvents 1.0 schema.
    pub fn ce(&self) -> Value {
        json!({
            "id": self.id(),
            "source": self.topic(),
            "subject": self.subject(),
            "type": self.event_type,
            "time": self.time,
            "data": self.data(),
            "specversion": "1.0",
        })
    }
}

/// A `Microsoft.Devices.DeviceDeleted` event (Event Grid schema; `data` has no sequence number).
pub fn deleted(device: &str, time: &str) -> Value {
    json!({
        "id": format!("{device}-deleted"),
        "topic": "/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000000/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.DEVICES/IOTHUBS/CONNMON-TEST-HUB",
        "subject": format!("devices/{device}"),
        "eventType": "Microsoft.Devices.DeviceDeleted",
        "eventTime": time,
        "data": {
            "twin": { "deviceId": device, "etag": "AAAAAAAAAAI=", "status": "enabled", "version": 3 },
            "hubName": HUB,
            "deviceId": device,
        },
        "dataVersion": "1",
        "metadataVersion": "1",
    })
}

/// How the host may put an event into `Data.eventGridEvent` (host-protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enc {
    /// A JSON object (older Event Grid extension).
    Object,
    /// A JSON string holding the event's JSON text.
    Str,
    /// A JSON string holding a JSON string literal holding the (indented) event text: what the
    /// host most likely sends.
    StrInStr,
}

pub fn encode(event: &Value, enc: Enc) -> Value {
    let text = serde_json::to_string_pretty(event).expect("serialise");
    match enc {
        Enc::Object => event.clone(),
        Enc::Str => Value::String(text),
        Enc::StrInStr => Value::String(Value::String(text).to_string()),
    }
}

/// The host's invocation envelope for the Event Grid trigger, with `value` as the binding's data.
pub fn invocation(value: Value) -> Value {
    json!({
        "Data": { "eventGridEvent": value },
        "Metadata": {
            "sys": {
                "MethodName": "ConnectionEvent",
                "UtcNow": ago(0),
                "RandGuid": "5a0e2c2e-8f0e-4d43-a4a7-9b9b8c1d2e3f",
            }
        }
    })
}

/// A tiny deterministic PRNG (xorshift64*) for shuffles; the seed is printed by the tests using it.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}
