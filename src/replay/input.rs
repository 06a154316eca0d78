//! Reading history: files (gzip or not) → a [`Timeline`] plus what the logs say about each
//! identity. Formats are detected per file, never by name:
//!
//! - text starting with `[` or `{`: JSON. When the first line is a complete JSON value the file is
//!   read as **JSONL** (one value a line: an event, a delivery array, a record); otherwise as a
//!   stream of JSON values (one document, or concatenated objects as storage exports write them).
//!   Each value is an Event Grid / CloudEvents event or delivery (through `decode::decode_event`,
//!   the production decoder; dead-letter envelopes are events with extra fields), a
//!   `{"records": [...]}` resource-log file, a record, or an array of Log Analytics rows
//!   (through `logs::decode_record`);
//! - anything else: a CSV export of a Log Analytics query (`logs::decode_csv`).
//!
//! Event Grid events keep their sequence numbers; resource-log records get synthesised ones in time
//! order (`logs::sequence_by_time`) and the timeline says it was ordered by time.

use super::engine::{TimedEvent, Timeline};
use super::fast::{self, FastEvent};
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

/// FNV-1a: the identity index hashes short keys millions of times; SipHash's DoS resistance
/// buys nothing for an operator's own files.
#[derive(Default)]
struct Fnv(u64);
impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Collects events from any number of inputs.
#[derive(Default)]
pub struct Loader {
    index: HashMap<Box<[u8]>, u32, BuildHasherDefault<Fnv>>,
    key: Vec<u8>,
    identities: Vec<Identity>,
    log_info: Vec<LogInfo>,
    events: Vec<(u32, crate::model::EventKind, Timestamp)>,
    log_records: Vec<LogConnection>,
    files: Vec<FileSummary>,
    ignored: u64,
    rejected: u64,
    rejections: Vec<String>,
}

/// Reads a file, undoing gzip (by its magic bytes, whatever the name).
pub fn read_file(path: &std::path::Path) -> Result<(Vec<u8>, bool), String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 8);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: gzip: {e}", path.display()))?;
        Ok((out, true))
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
            let mut done = 0usize;
            for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
                done += line.len() + 1;
                if n.is_multiple_of(65_536) {
                    progress(done);
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if let Some(ev) = fast::parse_line(line) {
                    self.push_fast(&ev);
                    continue;
                }
                match serde_json::from_slice::<Value>(line) {
                    Ok(v) => self.add_value(&v),
                    Err(e) => self.reject(format!("line {}: not JSON: {e}", n + 1)),
                }
            }
            return Ok(());
        }
        let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
        let mut n = 0u64;
        loop {
            match stream.next() {
                None => return Ok(()),
                Some(Ok(v)) => self.add_value(&v),
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

    fn add_value(&mut self, v: &Value) {
        match v {
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::Object(o) => self.add_object(o),
                        _ => self.reject("array element is not a JSON object".into()),
                    }
                }
            }
            Value::Object(o) => self.add_object(o),
            _ => self.reject("JSON value is neither an object nor an array".into()),
        }
    }

    fn add_object(&mut self, obj: &Map<String, Value>) {
        if let Some(Value::Array(records)) = obj.get("records") {
            for r in records {
                match r {
                    Value::Object(o) => self.add_log(logs::decode_record(o)),
                    _ => self.reject("`records` element is not a JSON object".into()),
                }
            }
            return;
        }
        if logs::is_record(obj) {
            return self.add_log(logs::decode_record(obj));
        }
        match decode::decode_event(obj) {
            Decoded::Event(ev) => self.add_event(ev),
            Decoded::Validation { .. } | Decoded::Ignored { .. } => self.ignore(),
            Decoded::Rejected { reason, .. } => self.reject(reason),
        }
    }

    fn add_event(&mut self, ev: ConnectionEvent) {
        let Some(time) = ev.time else {
            return self.reject(format!(
                "event {} has no readable eventTime: it cannot be placed on the replay clock",
                decode::clip(&ev.event_id)
            ));
        };
        let slot = self.intern(
            ev.identity.hub(),
            ev.identity.device(),
            ev.identity.module(),
        );
        self.events.push((slot, ev.kind, time));
        self.files.last_mut().expect("a file").events += 1;
    }

    fn push_fast(&mut self, ev: &FastEvent<'_>) {
        let slot = self.intern(ev.hub, ev.device, ev.module);
        self.events.push((slot, ev.kind, ev.time));
        self.files.last_mut().expect("a file").events += 1;
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
            if !r.connected && r.forcefully_closed() {
                info.forceful_closes += 1;
            }
            self.events
                .push((slot, ev.kind, ev.time.expect("log events have times")));
        }
        let ordered_by = match (self.events.is_empty(), records.is_empty()) {
            (true, _) => None,
            (false, true) => Some(OrderedBy::Sequence),
            (false, false) => Some(OrderedBy::Time),
        };
        let mut events: Vec<TimedEvent> = self
            .events
            .into_iter()
            .map(|(slot, kind, time)| TimedEvent {
                slot,
                kind,
                time,
                received_at: time,
            })
            .collect();
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
