//! The HTTP edge under pressure: a client that writes a whole oversized body before it reads can
//! still read the `413`, and idle connections beyond the process's open-file limit do not keep
//! other clients waiting.

use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Writes the whole request (head and `body`) before reading anything, as Python's `urllib` does,
/// then reads the answer to its end; returns the status, or what went wrong.
fn write_all_then_read(port: u16, head: &str, body: &[u8]) -> Result<u16, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .and_then(|()| s.set_read_timeout(Some(Duration::from_secs(10))))
        .map_err(|e| e.to_string())?;
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .map_err(|e| format!("writing: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("reading: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP answer in {text:?}"))
}

/// A chunked body of `n` bytes of a JSON-looking payload, in 64 KiB chunks.
fn chunked(n: usize) -> Vec<u8> {
    let data = vec![b' '; n];
    let mut out = Vec::new();
    for c in data.chunks(64 << 10) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn a_client_that_writes_a_whole_oversized_body_first_reads_the_413() {
    let cm = Connmon::standalone(&[("CONNMON_SWEEP_INTERVAL", "1h")]);
    let head = |len: &str| {
        format!("POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n{len}\r\n")
    };
    let cases: [(&str, String, Vec<u8>); 3] = [
        (
            "Content-Length 1 MiB + 1",
            head(&format!("Content-Length: {}\r\n", (1 << 20) + 1)),
            vec![b' '; (1 << 20) + 1],
        ),
        (
            "Content-Length 3 MiB",
            head(&format!("Content-Length: {}\r\n", 3 << 20)),
            vec![b' '; 3 << 20],
        ),
        (
            "chunked 2 MiB",
            head("Transfer-Encoding: chunked\r\n"),
            chunked(2 << 20),
        ),
    ];
    for (what, head, body) in &cases {
        let answers: Vec<Result<u16, String>> = (0..6)
            .map(|_| write_all_then_read(cm.port, head, body))
            .collect();
        let read_413 = answers.iter().filter(|a| **a == Ok(413)).count();
        eprintln!("{what}: {read_413} of 6 read the 413: {answers:?}");
        assert_eq!(read_413, 6, "{what}: {answers:?}");
    }
    // And the server is still there.
    assert_eq!(Request::get("/").send(cm.port).status, 200);
}

/// Runs connmon with an open-file limit of `soft` (and `hard`): `ulimit` in a shell that then
/// `exec`s it, so the process id is connmon's.
fn with_open_files(soft: u32, hard: u32) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("ulimit -S -n {soft} && ulimit -H -n {hard} && exec \"$0\""),
    ]
}

fn launched(launcher: &[String]) -> Connmon {
    let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
    Connmon::launched(
        Mode::Standalone,
        &[("CONNMON_SWEEP_INTERVAL", "1h")],
        &launcher,
    )
}

/// `(soft, hard)` open-file limits of a running process, from `/proc/<pid>/limits`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    let n: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (n[0], n[1])
}

#[test]
fn start_up_raises_the_soft_open_file_limit_to_the_hard_one() {
    let cm = launched(&with_open_files(256, 4096));
    assert_eq!(open_file_limits(cm.pid()), (4096, 4096));
}

/// 256 open files allow 192 connections (the rest is kept for the store, outgoing requests and
/// the runtime). 300 idle connections — connected, nothing sent — are more than that: the oldest
/// idle ones are closed to make room, so another client is still answered at once, and the
/// process says so in one line.
#[test]
fn idle_connections_beyond_the_cap_do_not_keep_other_clients_waiting() {
    let cm = launched(&with_open_files(256, 256));
    let idle: Vec<TcpStream> = (0..300)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", cm.port))
                .unwrap_or_else(|e| panic!("idle connection {i}: {e}"))
        })
        .collect();
    // Let connmon accept them all.
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..3 {
        let started = Instant::now();
        let resp = Request::get("/")
            .timeout(Duration::from_secs(5))
            .try_send(cm.port);
        let took = started.elapsed();
        eprintln!("GET / beside 300 idle connections: {took:?}");
        assert_eq!(resp.map(|r| r.status), Ok(200), "round {round}");
        assert!(took < Duration::from_secs(1), "round {round}: {took:?}");
    }
    let lines = cm.stderr();
    let cap_lines: Vec<&str> = lines
        .lines()
        .filter(|l| l.contains("connection cap"))
        .collect();
    assert_eq!(cap_lines.len(), 1, "one line a minute: {lines}");
    assert!(cap_lines[0].contains("192"), "{}", cap_lines[0]);
    drop(idle);
}

/// When every connection up to the cap is busy (here: each has sent the head of a request whose
/// body does not come), a new one is refused at once with `503` and `Retry-After`, not left
/// waiting.
#[test]
fn past_the_cap_with_every_connection_busy_a_new_client_gets_503_at_once() {
    let cm = launched(&with_open_files(256, 256));
    let busy: Vec<TcpStream> = (0..192)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", cm.port)).unwrap();
            s.write_all(
                b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n",
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let resp = Request::get("/")
        .timeout(Duration::from_secs(5))
        .try_send(cm.port)
        .expect("an answer");
    let took = started.elapsed();
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.header("retry-after").is_some(), "{resp:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(busy);
    // Once they are gone, clients are served again.
    eventually("served again", Duration::from_secs(5), || {
        (Request::get("/").try_send(cm.port).ok()?.status == 200).then_some(())
    });
}
