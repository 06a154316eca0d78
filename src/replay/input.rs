//! Reading history: files (gzip or not) → a [`Timeline`] plus what the logs say about each
//! identity. Formats are detected per file, never by name:
//!
//! - text starting with `[` or `{`: JSON. When the first line is a complete JSON value the file is
//!   read as **JSONL** (one value a line: an event, a delivery array, a record); otherwise as a
//!   stream of JSON values (one document, or concatenated objects as storage exports write them).
//!   Each value is an Event Grid / CloudEvents event or delivery (through `decode::decode_event`,
//!   the production decoder; dead-letter envelopes are events with extra fields), a
//!   `{"records": [...]}` resource-log file, a record, an array of Log Analytics rows, or a Log
//!   Analytics query API answer `{"tables": [...]}` (through `logs::decode_record`);
//! - anything else: a CSV export of a Log Analytics query (`logs::decode_csv`).
//!
//! Event Grid events keep their sequence numbers; resource-log records get synthesised ones in time
//! order (`logs::sequence_by_time`) and the timeline says it was ordered by time.

use super::engine::{TimedEvent, Timeline};
use super::jsonl;
use crate::decode::{self, Decoded};
use crate::logs::{self, LogConnection, LogDecoded};
use crate::model::{ConnectionEvent, Identity, Timestamp};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Read;

/// How the events of a timeline were put in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderedBy {
    /// IoT Hub's sequence numbers (Event Grid input only).
    Sequence,
    /// Time, with synthesised sequence numbers (resource logs were part of the input).
    Time,
}

impl OrderedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderedBy::Sequence => "sequence",
            OrderedBy::Time => "time",
        }
    }
}

/// What one input file held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSummary {
    pub name: String,
    pub gzip: bool,
    /// `event-grid`, `resource-logs`, `log-analytics-csv`, `mixed`, or `empty`.
    pub format: String,
    pub events: u64,
    pub log_records: u64,
    pub ignored: u64,
    pub rejected: u64,
}

/// What the resource logs said about one identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogInfo {
    /// The last `sdkVersion` seen on a connect record.
    pub sdk_version: Option<String>,
    pub protocol: Option<String>,
    /// Disconnects with 400027 ConnectionForcefullyClosedOnNewConnection.
    pub forceful_closes: u32,
    /// Each disconnect record's time and reason (`resultType` and `resultDescription`), in time
    /// order, for those that give one.
    pub disconnect_reasons: Vec<(Timestamp, String)>,
}

impl LogInfo {
    /// The reason of the disconnect that opened an outage at `started_at`: the last disconnect
    /// record at or before it.
    pub fn reason_at(&self, started_at: Timestamp) -> Option<&str> {
        let after = self
            .disconnect_reasons
            .partition_point(|(t, _)| *t <= started_at);
        after
            .checked_sub(1)
            .map(|i| self.disconnect_reasons[i].1.as_str())
    }
}

/// Everything read, ready for the engine and the report.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub timeline: Timeline,
    pub ordered_by: Option<OrderedBy>,
    pub files: Vec<FileSummary>,
    /// Per identity slot.
    pub log_info: Vec<LogInfo>,
    pub ignored: u64,
    pub rejected: u64,
    /// The first few rejection reasons, with the file they came from.
    pub rejections: Vec<String>,
}

/// Most rejection reasons kept for the report.
const REJECTIONS_KEPT: usize = 10;

/// A multiply-rotate hash of eight bytes at a time (the shape of rustc's FxHash): the identity
/// indexes hash short keys millions of times; SipHash's DoS resistance buys nothing for an
/// operator's own files.
#[derive(Default)]
pub(super) struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits weak; the table picks buckets by them.
        self.0.rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.add(u64::from_le_bytes(w.try_into().expect("eight bytes")));
        }
        let rest = words.remainder();
        let mut last = [0u8; 8];
        last[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

pub(super) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// What the general path made of one JSON value: events, log records, or why not.
#[derive(Debug)]
pub(super) enum Item {
    Event(ConnectionEvent),
    Log(LogDecoded),
    Ignored,
    Rejected(String),
}

/// Decodes one JSON value of an input (an event, a delivery array, a `{"records": [...]}` file, a
/// record or Log Analytics row) into [`Item`]s, in order. Pure, so parser threads can run it.
pub(super) fn decode_value(v: &Value, out: &mut Vec<Item>) {
    match v {
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(o) => decode_object(o, out),
                    _ => out.push(Item::Rejected("array element is not a JSON object".into())),
                }
            }
        }
        Value::Object(o) => decode_object(o, out),
        _ => out.push(Item::Rejected(
            "JSON value is neither an object nor an array".into(),
        )),
    }
}

fn decode_object(obj: &Map<String, Value>, out: &mut Vec<Item>) {
    if let Some(Value::Array(records)) = obj.get("records") {
        for r in records {
            out.push(match r {
                Value::Object(o) => Item::Log(logs::decode_record(o)),
                _ => Item::Rejected("`records` element is not a JSON object".into()),
            });
        }
        return;
    }
    if let Some(rows) = logs::decode_query_response(obj) {
        return out.extend(rows.into_iter().map(Item::Log));
    }
    if logs::is_record(obj) {
        return out.push(Item::Log(logs::decode_record(obj)));
    }
    out.push(match decode::decode_event(obj) {
        Decoded::Event(ev) if ev.time.is_none() => Item::Rejected(format!(
            "event {} has no readable eventTime: it cannot be placed on the replay clock",
            decode::clip(&ev.event_id)
        )),
        Decoded::Event(ev) => Item::Event(ev),
        Decoded::Validation { .. } | Decoded::Ignored { .. } => Item::Ignored,
        Decoded::Rejected { reason, .. } => Item::Rejected(reason),
    });
}

/// Collects events from any number of inputs.
#[derive(Default)]
pub struct Loader {
    index: FastMap<Box<[u8]>, u32>,
    key: Vec<u8>,
    identities: Vec<Identity>,
    log_info: Vec<LogInfo>,
    events: Vec<TimedEvent>,
    log_records: Vec<LogConnection>,
    files: Vec<FileSummary>,
    ignored: u64,
    rejected: u64,
    rejections: Vec<String>,
}

/// An input's bytes: a regular file mapped into memory as it is, or bytes read or un-gzipped.
pub enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// Reads a file, undoing gzip (by its magic bytes, whatever the name). A regular file is mapped
/// rather than copied: replay reads hundreds of megabytes, and a copy costs about as much as
/// parsing it.
pub fn read_file(path: &std::path::Path) -> Result<(Bytes, bool), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    let raw = if meta.is_file() && meta.len() > 0 {
        // SAFETY: the mapping is read-only and private to this process. Its one hazard is the
        // file changing under it while replay reads (a truncation faults the process, other
        // writes change what is read); replay's inputs are recorded history, which nothing writes
        // while it is being replayed (README, "connmon replay").
        Bytes::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(fail)?)
    } else {
        let mut v = Vec::new();
        (&file).read_to_end(&mut v).map_err(fail)?;
        Bytes::Owned(v)
    };
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 8);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: gzip: {e}", path.display()))?;
        Ok((Bytes::Owned(out), true))
    } else {
        Ok((raw, false))
    }
}

impl Loader {
    pub fn new() -> Loader {
        Loader::default()
    }

    /// Adds one input's bytes (already un-gzipped). `progress` is told how many bytes are done
    /// now and then. An error means the file as a whole is unreadable (not JSON, not CSV).
    pub fn add(
        &mut self,
        name: &str,
        gzip: bool,
        bytes: &[u8],
        progress: &mut dyn FnMut(usize),
    ) -> Result<(), String> {
        self.files.push(FileSummary {
            name: name.to_string(),
            gzip,
            ..FileSummary::default()
        });
        let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
        let result = match start.map(|i| bytes[i]) {
            None => Ok(()),
            Some(b'[' | b'{') => self.add_json(bytes, progress),
            Some(_) => self.add_csv(bytes),
        };
        progress(bytes.len());
        let f = self.files.last_mut().expect("pushed above");
        f.format = match (f.events > 0, f.log_records > 0) {
            (true, true) => "mixed",
            (true, false) => "event-grid",
            (false, true) if f.format == "log-analytics-csv" => "log-analytics-csv",
            (false, true) => "resource-logs",
            (false, false) => "empty",
        }
        .to_string();
        result.map_err(|e| format!("{name}: {e}"))
    }

    fn add_json(&mut self, bytes: &[u8], progress: &mut dyn FnMut(usize)) -> Result<(), String> {
        let mut lines = bytes.split(|b| *b == b'\n');
        let first = lines
            .find(|l| !l.iter().all(u8::is_ascii_whitespace))
            .unwrap_or_default();
        let jsonl = serde_json::from_slice::<serde::de::IgnoredAny>(first).is_ok();
        if jsonl {
            self.add_jsonl(bytes, progress);
            return Ok(());
        }
        let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
        let mut n = 0u64;
        let mut items = Vec::new();
        loop {
            match stream.next() {
                None => return Ok(()),
                Some(Ok(v)) => {
                    decode_value(&v, &mut items);
                    items.drain(..).for_each(|i| self.add_item(i));
                }
                Some(Err(e)) => {
                    return Err(format!("not JSON at byte {}: {e}", stream.byte_offset()))
                }
            }
            n += 1;
            if n.is_multiple_of(4096) {
                progress(stream.byte_offset());
            }
        }
    }

    fn add_csv(&mut self, bytes: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(bytes).map_err(|_| {
            "neither JSON nor a CSV export: not UTF-8 text (gzip is detected by its magic bytes)"
                .to_string()
        })?;
        let rows = logs::decode_csv(text).map_err(|e| format!("not JSON, and {e}"))?;
        self.files.last_mut().expect("a file").format = "log-analytics-csv".into();
        for r in rows {
            self.add_log(r);
        }
        Ok(())
    }

    /// JSONL: the lines parsed on as many threads as there are (`jsonl::parse`), then merged in
    /// input order.
    fn add_jsonl(&mut self, bytes: &[u8], progress: &mut dyn FnMut(usize)) {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut first_line = 0;
        for chunk in jsonl::parse(bytes, threads, progress) {
            let lines = chunk.lines;
            self.add_chunk(chunk, first_line);
            first_line += lines;
        }
    }

    /// One chunk's events and lines, in input order: identities get their slots in the order
    /// they first appear (whether on a fast line or a general one), exactly as if the lines had
    /// been read one by one.
    fn add_chunk(&mut self, chunk: jsonl::Chunk<'_>, first_line: usize) {
        let jsonl::Chunk {
            ids,
            mut events,
            general,
            ..
        } = chunk;
        let fast_events = events.len() as u64;
        let mut slots = Vec::with_capacity(ids.len());
        let mut ids = ids.iter().peekable();
        let mut intern_until = |this: &mut Self, line: usize, slots: &mut Vec<u32>| {
            while let Some(id) = ids.next_if(|id| id.line < line) {
                slots.push(this.intern(id.hub, id.device, id.module));
            }
        };
        if general.iter().all(|g| g.events == 0) {
            // The common case: every event came from the fast path (and the chunk is sorted).
            for g in general {
                intern_until(self, g.line, &mut slots);
                self.add_general(g, first_line);
            }
            intern_until(self, usize::MAX, &mut slots);
            for e in &mut events {
                e.slot = slots[e.slot as usize];
            }
            merge_sorted(&mut self.events, events);
        } else {
            let mut done = 0;
            for g in general {
                intern_until(self, g.line, &mut slots);
                self.events
                    .extend(events[done..g.at].iter().map(|e| TimedEvent {
                        slot: slots[e.slot as usize],
                        ..*e
                    }));
                done = g.at;
                self.add_general(g, first_line);
            }
            intern_until(self, usize::MAX, &mut slots);
            self.events
                .extend(events[done..].iter().map(|e| TimedEvent {
                    slot: slots[e.slot as usize],
                    ..*e
                }));
        }
        self.files.last_mut().expect("a file").events += fast_events;
    }

    /// A line that took the general path.
    fn add_general(&mut self, g: jsonl::General, first_line: usize) {
        match g.items {
            Ok(items) => items.into_iter().for_each(|i| self.add_item(i)),
            Err(e) => self.reject(format!("line {}: not JSON: {e}", first_line + g.line + 1)),
        }
    }

    fn add_item(&mut self, item: Item) {
        match item {
            Item::Event(ev) => {
                let slot = self.intern(
                    ev.identity.hub(),
                    ev.identity.device(),
                    ev.identity.module(),
                );
                let time = ev.time.expect("events without a time are rejected");
                self.events.push(TimedEvent::recorded(slot, ev.kind, time));
                self.files.last_mut().expect("a file").events += 1;
            }
            Item::Log(r) => self.add_log(r),
            Item::Ignored => self.ignore(),
            Item::Rejected(reason) => self.reject(reason),
        }
    }

    fn add_log(&mut self, r: LogDecoded) {
        match r {
            LogDecoded::Connection(c) => {
                self.files.last_mut().expect("a file").log_records += 1;
                self.log_records.push(c);
            }
            LogDecoded::Ignored(_) => self.ignore(),
            LogDecoded::Rejected(reason) => self.reject(reason),
        }
    }

    fn ignore(&mut self) {
        self.ignored += 1;
        self.files.last_mut().expect("a file").ignored += 1;
    }

    fn reject(&mut self, reason: String) {
        self.rejected += 1;
        let f = self.files.last_mut().expect("a file");
        f.rejected += 1;
        if self.rejections.len() < REJECTIONS_KEPT {
            self.rejections.push(format!("{}: {reason}", f.name));
        }
    }

    /// The slot of (hub, device, module), hub compared case-insensitively (it is folded here).
    fn intern(&mut self, hub: &str, device: &str, module: Option<&str>) -> u32 {
        self.key.clear();
        self.key.extend(hub.bytes().map(|b| b.to_ascii_lowercase()));
        self.key.push(0xff);
        self.key.extend_from_slice(device.as_bytes());
        if let Some(m) = module {
            self.key.push(0xff);
            self.key.extend_from_slice(m.as_bytes());
        }
        if let Some(&slot) = self.index.get(&self.key[..]) {
            return slot;
        }
        let slot = self.identities.len() as u32;
        self.index.insert(self.key.clone().into_boxed_slice(), slot);
        self.identities.push(Identity::new(hub, device, module));
        self.log_info.push(LogInfo::default());
        slot
    }

    /// Orders everything read and builds the timeline.
    pub fn finish(mut self) -> Loaded {
        let mut records = std::mem::take(&mut self.log_records);
        let from_logs = logs::sequence_by_time(&mut records);
        for (r, ev) in records.iter().zip(&from_logs) {
            let slot = self.intern(
                ev.identity.hub(),
                ev.identity.device(),
                ev.identity.module(),
            );
            let info = &mut self.log_info[slot as usize];
            if r.sdk_version.is_some() {
                info.sdk_version.clone_from(&r.sdk_version);
            }
            if r.protocol.is_some() {
                info.protocol.clone_from(&r.protocol);
            }
            let time = ev.time.expect("log events have times");
            if !r.connected && r.forcefully_closed() {
                info.forceful_closes += 1;
            }
            if !r.connected {
                if let Some(reason) = r.reason() {
                    info.disconnect_reasons.push((time, reason));
                }
            }
            self.events.push(TimedEvent::recorded(slot, ev.kind, time));
        }
        let ordered_by = match (self.events.is_empty(), records.is_empty()) {
            (true, _) => None,
            (false, true) => Some(OrderedBy::Sequence),
            (false, false) => Some(OrderedBy::Time),
        };
        // Stable, and linear on what is already in order: each parser thread sorted its chunk and
        // the chunks were merged.
        let mut events = self.events;
        events.sort_by_key(|e| e.received_at);
        Loaded {
            timeline: Timeline {
                identities: self.identities,
                events,
            },
            ordered_by,
            files: self.files,
            log_info: self.log_info,
            ignored: self.ignored,
            rejected: self.rejected,
            rejections: self.rejections,
        }
    }
}

/// Adds `new` (sorted by receipt) to `events`, merging it into the events it overlaps in time: the
/// result is sorted when `events` was, and events of equal time keep `events` before `new` (input
/// order) whatever `events` held (its unsorted tails are not merged into), so the final stable
/// sort gives the same order as sorting the whole input. Chunks of a history overlap only by Event Grid's delivery delays: the merge
/// touches a few events, the rest is a copy.
fn merge_sorted(events: &mut Vec<TimedEvent>, mut new: Vec<TimedEvent>) {
    let Some(first) = new.first().map(|e| e.received_at) else {
        return;
    };
    if events.is_empty() {
        *events = new;
        return;
    }
    let k = events.partition_point(|e| e.received_at <= first);
    if !events[k..].is_sorted_by_key(|e| e.received_at) {
        // `events` is out of order: leave the ordering to the final sort.
        events.append(&mut new);
        return;
    }
    let mut tail = events.split_off(k).into_iter().peekable();
    events.reserve(tail.len() + new.len());
    let mut rest = new.drain(..);
    while tail.peek().is_some() {
        let Some(e) = rest.next() else { break };
        while let Some(t) = tail.next_if(|t| t.received_at <= e.received_at) {
            events.push(t);
        }
        events.push(e);
    }
    events.extend(tail);
    events.extend(rest);
}

/// A progress bar on stderr for large inputs, drawn only when stderr is a terminal.
pub struct Progress {
    total: usize,
    base: usize,
    last_drawn: usize,
    enabled: bool,
}

impl Progress {
    /// Inputs smaller than this get no bar.
    const MIN_BYTES: usize = 32 << 20;

    pub fn new(total: usize) -> Progress {
        use std::io::IsTerminal;
        Progress {
            total,
            base: 0,
            last_drawn: 0,
            enabled: total >= Self::MIN_BYTES && std::io::stderr().is_terminal(),
        }
    }

    /// Moves on to the next file, `size` bytes after the ones done.
    pub fn next_file(&mut self, done_before: usize) {
        self.base = done_before;
    }

    pub fn update(&mut self, done_in_file: usize) {
        if !self.enabled {
            return;
        }
        let done = (self.base + done_in_file).min(self.total);
        let permille = done * 1000 / self.total.max(1);
        if permille == self.last_drawn && done != self.total {
            return;
        }
        self.last_drawn = permille;
        let width = 40;
        let filled = done * width / self.total.max(1);
        eprint!(
            "\r[{}{}] {:5.1}% of {} MB",
            "#".repeat(filled),
            " ".repeat(width - filled),
            permille as f64 / 10.0,
            self.total >> 20
        );
    }

    pub fn finish(&mut self) {
        if self.enabled {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, Timestamp};

    #[test]
    fn merge_sorted_is_a_stable_sort_of_the_concatenation() {
        let ev = |slot: u32, t: i64| TimedEvent {
            slot,
            kind: EventKind::Deleted,
            time: Timestamp(t),
            received_at: Timestamp(t),
        };
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 33) as i64
        };
        for round in 0..200 {
            let mut all = Vec::new();
            let mut merged: Vec<TimedEvent> = Vec::new();
            let mut slot = 0;
            for _ in 0..(round % 5 + 1) {
                let base = next() % 50;
                let mut chunk: Vec<TimedEvent> = (0..next() % 20)
                    .map(|_| {
                        slot += 1;
                        ev(slot, base + next() % 30)
                    })
                    .collect();
                all.extend(chunk.iter().copied());
                // Some chunks are appended as they are (the general path's), so later chunks
                // merge into an unsorted vector: still the same final order.
                if next() % 4 == 0 {
                    merged.extend(chunk);
                } else {
                    chunk.sort_by_key(|e| e.received_at);
                    merge_sorted(&mut merged, chunk);
                }
            }
            all.sort_by_key(|e| e.received_at);
            merged.sort_by_key(|e| e.received_at);
            assert_eq!(merged, all, "round {round}");
        }
    }
}
