//! The fast path for the common line of a JSONL history: one Event Grid `DeviceConnected` /
//! `DeviceDisconnected` event, parsed into borrowed strings without a `Value` tree.
//!
//! It accepts only lines the general decoder (`decode::decode_event`) would decode to the same
//! event — exact event type, a non-empty `data.hubName` without surrounding blanks, ids that
//! `decode::check_id` accepts, a valid sequence number, a readable `eventTime`. Anything else
//! (CloudEvents, escapes in strings, other types, odd values) returns `None` and the caller takes
//! the general path, so the two cannot disagree; `tests/it/replay.rs` holds them equal.

use crate::decode::{check_id, TYPE_CONNECTED, TYPE_DISCONNECTED};
use crate::model::{EventKind, SequenceNumber, Timestamp};
use serde::Deserialize;

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(rename = "eventType", borrow)]
    event_type: &'a str,
    #[serde(rename = "eventTime", borrow)]
    event_time: &'a str,
    #[serde(borrow)]
    data: Data<'a>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(rename = "hubName", borrow)]
    hub_name: &'a str,
    #[serde(rename = "deviceId", borrow)]
    device_id: &'a str,
    #[serde(rename = "moduleId", borrow, default)]
    module_id: Option<&'a str>,
    #[serde(rename = "deviceConnectionStateEventInfo", borrow)]
    info: Info<'a>,
}

#[derive(Deserialize)]
struct Info<'a> {
    #[serde(rename = "sequenceNumber", borrow)]
    sequence_number: &'a str,
}

/// A connection event borrowed from its line. `hub` is as sent (the caller folds case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastEvent<'a> {
    pub hub: &'a str,
    pub device: &'a str,
    pub module: Option<&'a str>,
    pub kind: EventKind,
    pub time: Timestamp,
}

/// The event on `line`, when it takes the fast path.
pub fn parse_line(line: &[u8]) -> Option<FastEvent<'_>> {
    let l: Line<'_> = serde_json::from_slice(line).ok()?;
    let d = l.data;
    let hub = d.hub_name;
    if hub.is_empty() || hub.trim().len() != hub.len() || d.device_id.is_empty() {
        return None;
    }
    // Anything the decoder would refuse (a hub name with control characters or over 128
    // characters, a bad id) leaves the fast path, so the decoder gives the reason.
    check_id("hubName", hub).ok()?;
    check_id("deviceId", d.device_id).ok()?;
    let module = match d.module_id {
        Some("") | None => None,
        Some(m) => {
            check_id("moduleId", m).ok()?;
            Some(m)
        }
    };
    let seq = SequenceNumber::parse(d.info.sequence_number).ok()?;
    let kind = match l.event_type {
        TYPE_CONNECTED => EventKind::Connected(seq),
        TYPE_DISCONNECTED => EventKind::Disconnected(seq),
        _ => return None,
    };
    let time = parse_time(l.event_time)?;
    Some(FastEvent {
        hub,
        device: d.device_id,
        module,
        kind,
        time,
    })
}

/// RFC 3339 as IoT Hub writes it (`2026-11-27T10:00:00.1234567Z` or `+00:00`), without the
/// general parser's cost; any other form goes to `Timestamp::parse_rfc3339`.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    quick_time(s.as_bytes()).or_else(|| Timestamp::parse_rfc3339(s))
}

fn quick_time(b: &[u8]) -> Option<Timestamp> {
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || s > 59
    {
        return None;
    }
    let mut i = 19;
    let mut ms = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                ms = ms * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        for _ in digits..3 {
            ms *= 10;
        }
    }
    match &b[i..] {
        b"Z" | b"z" | b"+00:00" => {}
        _ => return None,
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(Timestamp::from_unix_millis(
        ((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms,
    ))
}
