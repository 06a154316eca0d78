//! The accept loop ([`serve`]): our own HTTP/1.1 connections (axum's `serve` sets no timer, so no
//! header-read timeout), graceful shutdown, and the connection cap.
//!
//! The cap comes from the open-file limit, which start-up raises from its soft value to the hard
//! one ([`raise_open_file_limit`]); [`connection_cap`] keeps a part of it for the store's files,
//! outgoing requests and the runtime. Past the cap the idlest connection with no request in flight
//! is closed to make room (an idle connection costs its client nothing to open again, and a flood
//! of them must not lock other clients out); when every connection is busy the new one gets `503`
//! with `Retry-After` and is closed. Either is logged in one line a minute at most. Without the cap
//! the process ran out of file descriptors, `accept` failed, and every new client waited until idle
//! connections timed out (10 s), while the store and the channels could not open files or sockets.

use axum::Router;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A client must send a request's headers within this long (also between keep-alive requests),
/// or its connection is closed: slow-loris clients cannot pile up connections.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer past the cap when no connection can be closed to make room.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 56\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{\"error\": \"too many connections: try again in a second\"}";

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard one and returns the soft limit
/// now in force. A hard limit the kernel will not grant (unlimited) leaves the soft one as it was.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// Connections served at once with `open_files` file descriptors: a quarter of them (at least 64,
/// at most 1,024) is kept for the SQLite files, outgoing requests (channels, Table Storage, the
/// token endpoint), the runtime and a connection being closed while its successor is accepted.
pub fn connection_cap(open_files: u64) -> usize {
    let reserve = (open_files / 4).clamp(64, 1024);
    open_files.saturating_sub(reserve).max(16) as usize
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight finish (up to
/// 10 s). HTTP/1.1 with [`HEADER_READ_TIMEOUT`], at most `max_connections` at once (see the module
/// docs); a failed `accept` (out of file descriptors, say) is retried after a pause instead of
/// ending the server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let conns = Arc::new(Connections::default());
    let mut cap_note = CapNote::new(max_connections);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    crate::log::warn(format_args!("cannot accept a connection: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if conns.len() >= max_connections {
            if conns.close_idlest() {
                cap_note.closed_idle();
            } else {
                refuse(stream);
                cap_note.refused();
                continue;
            }
        }
        let _ = stream.set_nodelay(true);
        let conn = conns.open();
        let service = Tracked {
            inner: hyper_util::service::TowerToHyperService::new(app.clone()),
            conn: conn.clone(),
        };
        let served = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let served = graceful.watch(served);
        let conns = conns.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = served => {}
                () = conn.close.notified() => {}
            }
            conns.forget(conn.id);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    Ok(())
}

/// Answers `503` on a connection past the cap and closes it. What the client has sent so far is
/// read first, so that closing does not reset the connection before it sees the answer.
fn refuse(stream: tokio::net::TcpStream) {
    let mut sent = [0u8; 16 * 1024];
    while matches!(stream.try_read(&mut sent), Ok(n) if n > 0) {}
    let _ = stream.try_write(BUSY);
}

/// One open connection, as the accept loop sees it.
struct Conn {
    id: u64,
    /// Requests being handled: a connection with one is never closed to make room.
    in_flight: AtomicUsize,
    /// When it was opened or last finished a request.
    idle_since: Mutex<Instant>,
    /// Closes the connection (its task stops serving it).
    close: Notify,
}

/// The open connections.
#[derive(Default)]
struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Connections {
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open(&self) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            close: Notify::new(),
        });
        self.lock().insert(conn.id, conn.clone());
        conn
    }

    fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Closes the connection that has been idle longest (no request in flight); `false` if every
    /// connection is busy.
    fn close_idlest(&self) -> bool {
        let mut open = self.lock();
        let idlest = open
            .values()
            .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|c| *c.idle_since.lock().unwrap_or_else(|p| p.into_inner()))
            .map(|c| c.id);
        match idlest.and_then(|id| open.remove(&id)) {
            Some(conn) => {
                conn.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// The connection's service, counting its requests in flight.
struct Tracked<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S, R> hyper::service::Service<R> for Tracked<S>
where
    S: hyper::service::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, req: R) -> Self::Future {
        let busy = Busy::start(self.conn.clone());
        let answer = self.inner.call(req);
        Box::pin(async move {
            let out = answer.await;
            drop(busy);
            out
        })
    }
}

/// A request in flight on a connection; dropping it (answered, or cancelled) ends it.
struct Busy(Arc<Conn>);

impl Busy {
    fn start(conn: Arc<Conn>) -> Busy {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the cap did, logged at most once a minute: a flood must not flood the log.
struct CapNote {
    cap: usize,
    closed: u64,
    refused: u64,
    last: Option<Instant>,
}

impl CapNote {
    fn new(cap: usize) -> CapNote {
        CapNote {
            cap,
            closed: 0,
            refused: 0,
            last: None,
        }
    }

    fn closed_idle(&mut self) {
        self.closed += 1;
        self.maybe_log();
    }

    fn refused(&mut self) {
        self.refused += 1;
        self.maybe_log();
    }

    fn maybe_log(&mut self) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
        {
            return;
        }
        let since = if self.last.is_some() {
            "in the last minute"
        } else {
            "so far"
        };
        crate::log::warn(format_args!(
            "at the connection cap of {} (from the open-file limit): closed {} idle connection(s) \
             and refused {} new one(s) with 503 {since}; the next report in a minute at the earliest",
            self.cap, self.closed, self.refused
        ));
        self.last = Some(Instant::now());
        self.closed = 0;
        self.refused = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_a_reserve_of_file_descriptors() {
        for (open_files, cap) in [
            (64, 16),
            (256, 192),
            (1024, 768),
            (4096, 3072),
            (65_536, 64_512),
            (1 << 20, (1 << 20) - 1024),
        ] {
            assert_eq!(connection_cap(open_files), cap, "{open_files}");
        }
    }

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].is_string());
    }
}
