//! Decoding IoT Hub **Connections resource logs** into the core's [`ConnectionEvent`], for
//! `connmon replay`. Pure, like `decode`: values and text in, typed results out, no I/O.
//!
//! Shapes accepted (iothub-events.md, "Connections resource logs"):
//! - a diagnostic-settings record `{time, resourceId, operationName, category, level, resultType,
//!   resultDescription, properties}` with `properties` an object or a JSON **string** (storage and
//!   Event Hubs exports);
//! - a Log Analytics row (`AzureDiagnostics`), from a JSON or CSV query export or the query API's
//!   answer (`{"tables": [{"columns": [...], "rows": [[...]]}]}`, [`decode_query_response`]): `TimeGenerated`,
//!   `OperationName`, `ResultType`, `ResultDescription`, `DeviceId`, `Protocol`, `SDKVersion`,
//!   `properties_s`, `_ResourceId` / `ResourceId` / `Resource` — keys compared case-insensitively,
//!   a portal export's ` [UTC]` suffix ignored.
//!
//! Logs carry **no sequence number**. [`sequence_by_time`] orders records by time (stably: file
//! order breaks ties) and numbers them 1, 2, 3, … as 256-bit sequence numbers, so the production
//! state machine sees them exactly as it would see Event Grid events in that order. What that
//! loses: two records of one identity in the same instant keep file order, and a log that is itself
//! out of order (they arrive minutes late) is only as good as its timestamps.

use crate::decode::{check_id, hub_from_topic, EnvelopeError};
use crate::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use serde_json::{Map, Value};

/// The hub of a record that names none (a Log Analytics export without resource columns).
pub const UNKNOWN_HUB: &str = "unknown-hub";

/// One `deviceConnect` / `deviceDisconnect` record, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConnection {
    pub identity: Identity,
    pub connected: bool,
    pub time: Timestamp,
    /// `sdkVersion` (connect records only), e.g. `.NET/1.42.0 (...)`.
    pub sdk_version: Option<String>,
    /// `resultType`, e.g. `404104`, `400027`.
    pub result_type: Option<String>,
    pub result_description: Option<String>,
    pub protocol: Option<String>,
}

impl LogConnection {
    /// Why the connection ended, as the record says: `resultType` and `resultDescription`, e.g.
    /// `404104 DeviceConnectionClosedRemotely`; `None` when it says nothing.
    pub fn reason(&self) -> Option<String> {
        let parts: Vec<&str> = [&self.result_type, &self.result_description]
            .into_iter()
            .flatten()
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    }

    /// 400027 ConnectionForcefullyClosedOnNewConnection: a second client took over the identity.
    pub fn forcefully_closed(&self) -> bool {
        self.result_type.as_deref() == Some("400027")
            || self.result_description.as_deref().is_some_and(|d| {
                d.eq_ignore_ascii_case("ConnectionForcefullyClosedOnNewConnection")
            })
    }
}

/// One record after decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogDecoded {
    Connection(LogConnection),
    /// Another category or operation (`c2dCommands`, `deviceTelemetry`, …): not about connections.
    Ignored(String),
    /// A connection record that cannot be understood; the reason says why.
    Rejected(String),
}

/// Whether an object looks like a resource-log record or a Log Analytics row (it has an
/// `operationName`).
pub fn is_record(obj: &Map<String, Value>) -> bool {
    field(obj, &["operationName"]).is_some()
}

/// Decodes one record or row.
pub fn decode_record(obj: &Map<String, Value>) -> LogDecoded {
    let Some(op) = field(obj, &["operationName"]).and_then(Value::as_str) else {
        return LogDecoded::Rejected("record has no string `operationName`".into());
    };
    if let Some(cat) = field(obj, &["category"]).and_then(Value::as_str) {
        if !cat.is_empty() && !cat.eq_ignore_ascii_case("Connections") {
            return LogDecoded::Ignored(format!("category `{}`", crate::decode::clip(cat)));
        }
    }
    let connected = if op.eq_ignore_ascii_case("deviceConnect") {
        true
    } else if op.eq_ignore_ascii_case("deviceDisconnect") {
        false
    } else {
        return LogDecoded::Ignored(format!("operation `{}`", crate::decode::clip(op)));
    };
    match connection(obj, connected) {
        Ok(c) => LogDecoded::Connection(c),
        Err(reason) => LogDecoded::Rejected(format!("{op}: {reason}")),
    }
}

fn connection(obj: &Map<String, Value>, connected: bool) -> Result<LogConnection, String> {
    let props = properties(obj)?;
    let text = |keys: &[&str]| -> Option<String> {
        props
            .as_ref()
            .and_then(|p| field(p, keys))
            .or_else(|| field(obj, keys))
            .and_then(|v| match v {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    };
    let time_text = field(obj, &["time", "TimeGenerated"])
        .and_then(Value::as_str)
        .ok_or("no `time` / `TimeGenerated`")?;
    let time = parse_log_time(time_text).ok_or_else(|| {
        format!(
            "`time` {:?} is not a timestamp",
            crate::decode::clip(time_text)
        )
    })?;
    let device = text(&["deviceId"]).ok_or("no `deviceId` (in `properties` or a column)")?;
    check_id("deviceId", &device)?;
    let module = text(&["moduleId"]);
    if let Some(m) = &module {
        check_id("moduleId", m)?;
    }
    let hub = field(obj, &["resourceId", "_ResourceId"])
        .and_then(Value::as_str)
        .and_then(hub_from_topic)
        .or_else(|| {
            field(obj, &["Resource"])
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| UNKNOWN_HUB.to_string());
    Ok(LogConnection {
        identity: Identity::new(&hub, &device, module.as_deref()),
        connected,
        time,
        sdk_version: text(&["sdkVersion"]),
        result_type: text(&["resultType"]),
        result_description: text(&["resultDescription"]),
        protocol: text(&["protocol"]),
    })
}

/// `properties` (object, or a JSON string holding one) or Log Analytics' `properties_s`.
fn properties(obj: &Map<String, Value>) -> Result<Option<Map<String, Value>>, String> {
    match field(obj, &["properties", "properties_s"]) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            _ => Err("`properties` is a string that does not hold a JSON object".into()),
        },
        Some(_) => Err("`properties` is neither an object nor a string".into()),
    }
}

/// A value by any of `keys`, compared case-insensitively, ignoring a ` [UTC]` suffix (portal
/// exports name the column `TimeGenerated [UTC]`) and Log Analytics' `_s` / `_d` type suffixes.
fn field<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    for key in keys {
        if let Some(v) = obj.get(*key) {
            return Some(v);
        }
    }
    obj.iter()
        .find(|(k, _)| {
            let k = k.trim();
            let k = k.strip_suffix("[UTC]").map_or(k, str::trim_end);
            keys.iter().any(|want| {
                k.eq_ignore_ascii_case(want)
                    || (k.len() == want.len() + 2
                        && k[..want.len()].eq_ignore_ascii_case(want)
                        && matches!(&k[want.len()..], "_s" | "_d"))
            })
        })
        .map(|(_, v)| v)
}

/// The rows of a Log Analytics **query API** answer (`POST …/v1/workspaces/{id}/query`):
/// `{"tables": [{"name": "PrimaryResult", "columns": [{"name": "TimeGenerated", "type":
/// "datetime"}, …], "rows": [["2026-…", …], …]}]}`. Each row becomes an object keyed by column name
/// and goes through [`decode_record`]. `None` when `obj` is not such an answer.
pub fn decode_query_response(obj: &Map<String, Value>) -> Option<Vec<LogDecoded>> {
    let tables = obj.get("tables")?.as_array()?;
    let mut out = Vec::new();
    for table in tables {
        let columns: Option<Vec<&str>> =
            table
                .get("columns")
                .and_then(Value::as_array)
                .and_then(|cols| {
                    cols.iter()
                        .map(|c| c.get("name").and_then(Value::as_str))
                        .collect()
                });
        let (Some(columns), Some(rows)) = (columns, table.get("rows").and_then(Value::as_array))
        else {
            out.push(LogDecoded::Rejected(
                "`tables` element without `columns` (each with a `name`) and `rows`".into(),
            ));
            continue;
        };
        for row in rows {
            out.push(match row.as_array() {
                Some(cells) if cells.len() == columns.len() => {
                    let obj: Map<String, Value> = columns
                        .iter()
                        .map(|c| c.to_string())
                        .zip(cells.iter().cloned())
                        .collect();
                    decode_record(&obj)
                }
                _ => LogDecoded::Rejected(format!(
                    "`tables[].rows` element is not an array of {} cells",
                    columns.len()
                )),
            });
        }
    }
    Some(out)
}

/// RFC 3339, or the portal's CSV form `11/27/2026, 10:00:00.123 AM` (UTC).
pub fn parse_log_time(s: &str) -> Option<Timestamp> {
    Timestamp::parse_rfc3339(s).or_else(|| parse_portal_time(s.trim()))
}

fn parse_portal_time(s: &str) -> Option<Timestamp> {
    let (date, rest) = s.split_once(',')?;
    let mut d = date.trim().split('/');
    let (mo, day, year): (u8, u8, i32) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let mut parts = rest.split_whitespace();
    let clock = parts.next()?;
    let meridiem = parts.next();
    let mut c = clock.split(':');
    let (mut h, mi): (u8, u8) = (c.next()?.parse().ok()?, c.next()?.parse().ok()?);
    let sec_text = c.next().unwrap_or("0");
    let (sec, frac) = sec_text.split_once('.').unwrap_or((sec_text, ""));
    let sec: u8 = sec.parse().ok()?;
    let ms: u16 = format!("{frac:0<3}").get(..3)?.parse().ok()?;
    match meridiem.map(str::to_ascii_uppercase).as_deref() {
        Some("PM") if h < 12 => h += 12,
        Some("AM") if h == 12 => h = 0,
        _ => {}
    }
    let date = time::Date::from_calendar_date(year, time::Month::try_from(mo).ok()?, day).ok()?;
    let t = date.with_hms_milli(h, mi, sec, ms).ok()?.assume_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .ok()
        .map(Timestamp::from_unix_millis)
}

/// A CSV export of a Log Analytics query: a header row naming the columns, then one record a row
/// (RFC 4180 quoting: `"…"` with `""` inside, newlines allowed in quotes). Every row becomes an
/// object of string values and goes through [`decode_record`].
pub fn decode_csv(text: &str) -> Result<Vec<LogDecoded>, EnvelopeError> {
    let mut rows = csv_rows(text.trim_start_matches('\u{feff}'));
    let header = rows
        .next()
        .ok_or_else(|| EnvelopeError("CSV file is empty".into()))?;
    let named = |want: &str| {
        let obj: Map<String, Value> = header.iter().map(|h| (h.clone(), Value::Null)).collect();
        field(&obj, &[want]).is_some()
    };
    if !named("operationName") || !(named("TimeGenerated") || named("time")) {
        return Err(EnvelopeError(
            "CSV header has no `OperationName` and `TimeGenerated` columns (expected a Log Analytics export of AzureDiagnostics)".into(),
        ));
    }
    Ok(rows
        .filter(|r| !(r.len() == 1 && r[0].is_empty()))
        .map(|row| {
            let obj: Map<String, Value> = header
                .iter()
                .cloned()
                .zip(row.into_iter().map(Value::String))
                .collect();
            decode_record(&obj)
        })
        .collect())
}

/// Splits CSV text into rows of fields.
fn csv_rows(text: &str) -> impl Iterator<Item = Vec<String>> + '_ {
    let mut chars = text.chars().peekable();
    std::iter::from_fn(move || {
        chars.peek()?;
        let mut row = Vec::new();
        let mut cell = String::new();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => cell.push(c),
                (false, '"') if cell.is_empty() => quoted = true,
                (false, ',') => row.push(std::mem::take(&mut cell)),
                (false, '\r') => {}
                (false, '\n') => break,
                (false, c) => cell.push(c),
            }
        }
        row.push(cell);
        Some(row)
    })
}

/// A synthesised sequence number: `n` as a 256-bit big-endian number.
pub fn synthetic_seq(n: u64) -> SequenceNumber {
    let mut b = [0u8; 32];
    b[24..].copy_from_slice(&n.to_be_bytes());
    SequenceNumber::from_bytes(b)
}

/// Orders records by time (stable) and turns them into events numbered 1, 2, 3, … in that order
/// (one counter for all identities, so it increases per identity too). The records come back in
/// the same order as the events.
pub fn sequence_by_time(records: &mut [LogConnection]) -> Vec<ConnectionEvent> {
    records.sort_by_key(|r| r.time);
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let seq = synthetic_seq(i as u64 + 1);
            ConnectionEvent {
                identity: r.identity.clone(),
                kind: if r.connected {
                    EventKind::Connected(seq)
                } else {
                    EventKind::Disconnected(seq)
                },
                time: Some(r.time),
                event_id: String::new(),
            }
        })
        .collect()
}
