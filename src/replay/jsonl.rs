//! JSONL on parser threads. The input is cut into one chunk of whole lines per thread; each thread
//! scans its lines with the fast path (`fast::scan_line`), numbers the identities it meets in a
//! map of its own (keys borrowed from the input, no allocation per event), decodes the other
//! lines with the general path (`input::decode_value`, pure), and sorts its events by time when
//! all of them came from the fast path. `input::Loader` then merges the chunks in input order,
//! giving identities their global slots in the order they first appear, so the result is the same
//! as reading the lines one by one.

use super::engine::TimedEvent;
use super::fast;
use super::input::{decode_value, FastMap, Item};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Chunks smaller than this are not worth a thread.
const MIN_CHUNK: usize = 1 << 20;
/// How often (in lines) a thread says how far it got.
const PROGRESS_LINES: usize = 65_536;

/// An identity as first met in a chunk: hub as sent (case not folded yet).
pub(super) struct LocalId<'a> {
    pub hub: &'a str,
    pub device: &'a str,
    pub module: Option<&'a str>,
    /// The chunk's line (from 0) it first appeared on.
    pub line: usize,
}

/// A line that took the general path.
pub(super) struct General {
    /// The chunk's line number, from 0.
    pub line: usize,
    /// How many fast events came before it in the chunk.
    pub at: usize,
    /// What it held, or why it is not JSON.
    pub items: Result<Vec<Item>, String>,
    /// How many of the items are events.
    pub events: usize,
}

/// What a parser thread made of its chunk.
pub(super) struct Chunk<'a> {
    /// Identities in the order they first appear on fast lines; `events` name them by index.
    pub ids: Vec<LocalId<'a>>,
    /// The fast lines' events (slot = index in `ids`); sorted by time (stably) when no general
    /// line held an event, else in line order.
    pub events: Vec<TimedEvent>,
    /// The general lines, in line order.
    pub general: Vec<General>,
    /// Lines in the chunk.
    pub lines: usize,
}

/// Parses JSONL `bytes` on up to `threads` threads, telling `progress` how many bytes are done now
/// and then. The chunks come back in input order.
pub(super) fn parse<'a>(
    bytes: &'a [u8],
    threads: usize,
    progress: &mut dyn FnMut(usize),
) -> Vec<Chunk<'a>> {
    let parts = split(bytes, threads);
    let done: Vec<AtomicUsize> = parts.iter().map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|scope| {
        let waiter = std::thread::current();
        let handles: Vec<_> = parts
            .iter()
            .zip(&done)
            .map(|(part, done)| {
                let waiter = waiter.clone();
                scope.spawn(move || {
                    let chunk = parse_chunk(part, done);
                    waiter.unpark();
                    chunk
                })
            })
            .collect();
        while !handles.iter().all(|h| h.is_finished()) {
            progress(done.iter().map(|d| d.load(Ordering::Relaxed)).sum());
            std::thread::park_timeout(Duration::from_millis(100));
        }
        handles
            .into_iter()
            .map(|h| h.join().expect("a parser thread does not panic"))
            .collect()
    })
}

/// Cuts `bytes` into at most `n` pieces of whole lines (each but the last ends with `\n`).
fn split(bytes: &[u8], n: usize) -> Vec<&[u8]> {
    let n = n.clamp(1, (bytes.len() / MIN_CHUNK).max(1));
    let mut parts = Vec::with_capacity(n);
    let mut rest = bytes;
    for i in (1..n).rev() {
        let want = rest.len() - rest.len() * i / (i + 1);
        match rest[want..].iter().position(|b| *b == b'\n') {
            Some(nl) => {
                let (part, tail) = rest.split_at(want + nl + 1);
                parts.push(part);
                rest = tail;
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

fn parse_chunk<'a>(part: &'a [u8], done: &AtomicUsize) -> Chunk<'a> {
    // Keys are copied out of the input: compared in place they would be a cache miss each, the
    // first line of an identity being anywhere in hundreds of megabytes.
    let mut index: FastMap<Box<[u8]>, u32> = FastMap::default();
    let mut key = Vec::new();
    let mut chunk = Chunk {
        ids: Vec::new(),
        // Event Grid events are 250–600 bytes a line.
        events: Vec::with_capacity(part.len() / 256),
        general: Vec::new(),
        lines: 0,
    };
    let mut pos = 0;
    while pos < part.len() {
        let line = chunk.lines;
        let end = match fast::scan_line(part, pos) {
            Some((ev, end)) => {
                key.clear();
                key.extend_from_slice(ev.hub.as_bytes());
                key.push(0xff);
                key.extend_from_slice(ev.device.as_bytes());
                if let Some(m) = ev.module {
                    key.push(0xff);
                    key.extend_from_slice(m.as_bytes());
                }
                let slot = match index.get(&key[..]) {
                    Some(&slot) => slot,
                    None => {
                        let slot = chunk.ids.len() as u32;
                        index.insert(key.as_slice().into(), slot);
                        chunk.ids.push(LocalId {
                            hub: ev.hub,
                            device: ev.device,
                            module: ev.module,
                            line,
                        });
                        slot
                    }
                };
                chunk
                    .events
                    .push(TimedEvent::recorded(slot, ev.kind, ev.time));
                end
            }
            None => {
                let end = part[pos..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(part.len(), |n| pos + n);
                let text = &part[pos..end];
                if !text.iter().all(u8::is_ascii_whitespace) {
                    chunk.general.push(general(text, line, chunk.events.len()));
                }
                end
            }
        };
        pos = end + 1;
        chunk.lines += 1;
        if chunk.lines.is_multiple_of(PROGRESS_LINES) {
            done.store(pos.min(part.len()), Ordering::Relaxed);
        }
    }
    done.store(part.len(), Ordering::Relaxed);
    if chunk.general.iter().all(|g| g.events == 0) {
        chunk.events.sort_by_key(|e| e.received_at);
    }
    chunk
}

fn general(text: &[u8], line: usize, at: usize) -> General {
    let items = serde_json::from_slice::<Value>(text)
        .map(|v| {
            let mut items = Vec::new();
            decode_value(&v, &mut items);
            items
        })
        .map_err(|e| e.to_string());
    let events = items.as_ref().map_or(0, |items| {
        items.iter().filter(|i| matches!(i, Item::Event(_))).count()
    });
    General {
        line,
        at,
        items,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_whole_lines() {
        let line = b"0123456789abcdef\n".repeat(200_000);
        for n in 1..5 {
            let parts = split(&line, n);
            assert!(parts.len() <= n && !parts.is_empty());
            assert_eq!(parts.concat(), line);
            for p in &parts[..parts.len() - 1] {
                assert_eq!(p.last(), Some(&b'\n'));
            }
        }
        assert_eq!(
            split(b"a\nb", 4),
            vec![&b"a\nb"[..]],
            "small inputs stay whole"
        );
    }
}
