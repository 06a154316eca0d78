//! The fast path for the common line of a JSONL history: one Event Grid `DeviceConnected` /
//! `DeviceDisconnected` event, scanned in place into borrowed strings — no `Value` tree, no
//! allocation, and the line's end found by the scan itself.
//!
//! It accepts only lines the general path (`serde_json` into a `Value`, then
//! `decode::decode_event`) would decode to the same event, and takes no chance on the rest: the
//! line must be one JSON object, strictly valid, whose strings hold no escape, no control character
//! and no byte outside ASCII, whose numbers are plain integers, with the exact event type, a
//! non-empty `data.hubName` without surrounding blanks, ids that `decode::check_id` accepts, a
//! valid sequence number and a readable `eventTime`; each of the fields read appears once, and no
//! key makes the general path read the object as resource logs (`records`, `tables`,
//! `operationName`). Anything else (CloudEvents, escapes, other types, odd values, several lines'
//! worth of JSON) returns `None` and the caller takes the general path, so the two cannot
//! disagree; `tests/it/replay.rs` holds them equal.

use crate::decode::{MAX_ID_LEN, TYPE_CONNECTED, TYPE_DISCONNECTED};
use crate::model::{EventKind, SequenceNumber, Timestamp};

/// A connection event borrowed from its line. `hub` is as sent (the caller folds case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FastEvent<'a> {
    pub hub: &'a str,
    pub device: &'a str,
    pub module: Option<&'a str>,
    pub kind: EventKind,
    pub time: Timestamp,
}

/// The event on `line` (one line, without its `\n`), when it takes the fast path.
pub fn parse_line(line: &[u8]) -> Option<FastEvent<'_>> {
    scan_line(line, 0).and_then(|(ev, end)| (end == line.len()).then_some(ev))
}

/// The event on the line of `buf` that starts at `start`, and where that line ends (the index of
/// its `\n`, or `buf.len()`), when it takes the fast path.
pub fn scan_line(buf: &[u8], start: usize) -> Option<(FastEvent<'_>, usize)> {
    let mut c = Cursor { b: buf, i: start };
    let fields = c.event()?;
    c.ws();
    match c.peek() {
        None | Some(b'\n') => Some((fields.event()?, c.i)),
        _ => None,
    }
}

/// The fields read from an event line, before they are checked.
#[derive(Default)]
struct Fields<'a> {
    event_type: Option<&'a str>,
    event_time: Option<&'a str>,
    data: Option<Data<'a>>,
}

#[derive(Default)]
struct Data<'a> {
    hub: Option<&'a str>,
    device: Option<&'a str>,
    /// `Some(None)`: `"moduleId": null`.
    module: Option<Option<&'a str>>,
    sequence_number: Option<&'a str>,
    /// `deviceConnectionStateEventInfo` was seen.
    info: bool,
}

impl<'a> Fields<'a> {
    /// The checks `decode::decode_event` makes, on the fields as read.
    fn event(self) -> Option<FastEvent<'a>> {
        let d = self.data?;
        let hub = d.hub?;
        let device = d.device?;
        // The strings are plain ASCII (see `Cursor::plain`), so blanks are spaces, and
        // `decode::check_id` refuses exactly the over-long ones and those with DEL in them.
        if hub.is_empty()
            || hub.starts_with(' ')
            || hub.ends_with(' ')
            || device.is_empty()
            || !plain_id(hub)
            || !plain_id(device)
        {
            return None;
        }
        let module = match d.module.flatten() {
            Some("") | None => None,
            Some(m) if plain_id(m) => Some(m),
            Some(_) => return None,
        };
        let seq = SequenceNumber::parse(d.sequence_number?).ok()?;
        let kind = match self.event_type? {
            TYPE_CONNECTED => EventKind::Connected(seq),
            TYPE_DISCONNECTED => EventKind::Disconnected(seq),
            _ => return None,
        };
        let time = parse_time(self.event_time?)?;
        Some(FastEvent {
            hub,
            device,
            module,
            kind,
            time,
        })
    }
}

/// Whether `logs::is_record` could find `operationName` under this key (it compares keys without
/// case and with suffixes): such an object is a resource-log record to the general path.
fn names_operation(key: &[u8]) -> bool {
    const NAME: &[u8] = b"operationname";
    key.len() >= NAME.len()
        && key
            .windows(NAME.len())
            .any(|w| w.eq_ignore_ascii_case(NAME))
}

/// What `decode::check_id` accepts, for plain ASCII (no byte below 0x20): anything it would
/// refuse leaves the fast path, so the decoder gives the reason.
fn plain_id(id: &str) -> bool {
    id.len() <= MAX_ID_LEN && !id.bytes().any(|b| b == 0x7f)
}

/// Nesting deeper than this leaves the fast path.
const MAX_DEPTH: usize = 32;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

/// Sets `slot` once; a second value for the same field leaves the fast path (the general path
/// would keep the last one).
fn once<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    slot.is_none().then(|| *slot = Some(v))
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// JSON whitespace, but not `\n`: that ends the line.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// After a member: `true` at `,`, `false` at the closing `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let c = self.peek()?;
        self.i += 1;
        match c {
            b',' => Some(true),
            c if c == close => Some(false),
            _ => None,
        }
    }

    /// The bytes of a string of plain ASCII: no escape, no control character.
    fn plain(&mut self) -> Option<&'a [u8]> {
        self.ws();
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let len = plain_len(&self.b[start..])?;
        self.i = start + len + 1;
        Some(&self.b[start..start + len])
    }

    /// A string of plain ASCII, as text.
    fn string(&mut self) -> Option<&'a str> {
        // Plain ASCII is UTF-8: this check cannot fail, and costs little on ASCII.
        std::str::from_utf8(self.plain()?).ok()
    }

    /// The members of an object, each key handed to `member` with the cursor on its value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.plain()?;
            self.eat(b':')?;
            member(self, key)?;
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    fn event(&mut self) -> Option<Fields<'a>> {
        let mut f = Fields::default();
        self.object(|c, key| match key {
            b"eventType" => once(&mut f.event_type, c.string()?),
            b"eventTime" => once(&mut f.event_time, c.string()?),
            b"data" => once(&mut f.data, c.data()?),
            // The general path reads such an object as resource logs.
            b"records" | b"tables" => None,
            k if names_operation(k) => None,
            _ => c.skip(1),
        })?;
        Some(f)
    }

    fn data(&mut self) -> Option<Data<'a>> {
        let mut d = Data::default();
        self.object(|c, key| match key {
            b"hubName" => once(&mut d.hub, c.string()?),
            b"deviceId" => once(&mut d.device, c.string()?),
            b"moduleId" => {
                c.ws();
                let m = if c.peek()? == b'n' {
                    c.literal(b"null")?;
                    None
                } else {
                    Some(c.string()?)
                };
                once(&mut d.module, m)
            }
            b"deviceConnectionStateEventInfo" => {
                if std::mem::replace(&mut d.info, true) {
                    return None;
                }
                c.object(|c, key| match key {
                    b"sequenceNumber" => once(&mut d.sequence_number, c.string()?),
                    _ => c.skip(2),
                })
            }
            _ => c.skip(1),
        })?;
        Some(d)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..]
            .starts_with(word)
            .then(|| self.i += word.len())
    }

    /// Skips any value: strings and numbers as the fast path takes them, objects and arrays up to
    /// [`MAX_DEPTH`].
    fn skip(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'"' => self.plain().map(drop),
            b'{' => self.object(|c, _| c.skip(depth + 1)),
            b'[' => {
                self.i += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip(depth + 1)?;
                    if !self.more(b']')? {
                        return Some(());
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.integer(),
        }
    }

    /// `-?(0|[1-9][0-9]*)`, at most 18 digits: what every JSON reader holds exactly. A fraction or
    /// an exponent is not consumed, so the member that holds it fails to end.
    fn integer(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        (!digits.is_empty() && digits.len() <= 18 && (digits[0] != b'0' || digits.len() == 1))
            .then_some(())
    }
}

/// The length of the string body at the start of `s` (up to its closing quote), when it is plain
/// ASCII: no `\`, no control character, no byte of 0x80 or above. Eight bytes at a time: in a word
/// that holds anything but plain characters, the lowest flagged byte is the first such byte (the
/// tests below may also flag bytes above it, never below), so it says at once whether the string
/// ends there or leaves the fast path.
fn plain_len(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Flags the bytes of `x` below `n` (n <= 128).
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let mut i = 0;
    while let Some(word) = s.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let special = below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            | below(w, 0x20)
            | (w & HIGH);
        if special != 0 {
            let at = i + special.trailing_zeros() as usize / 8;
            return (s[at] == b'"').then_some(at);
        }
        i += 8;
    }
    loop {
        match *s.get(i)? {
            b'"' => return Some(i),
            b'\\' | 0..=0x1f | 0x80..=0xff => return None,
            _ => i += 1,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_len_finds_the_quote_and_refuses_the_rest() {
        for (s, want) in [
            (&b"\""[..], Some(0)),
            (b"abc\"", Some(3)),
            (b"abcdefghijklmnop\"x", Some(16)),
            (b"abcdefgh\"", Some(8)),
            (b"abcdefghi", None),
            (b"abcdefg\\\"", None),
            (b"abcdefghij\x01\"", None),
            (b"abcdefghij\x7f\"", Some(11)),
            (b"abc\xc3\xa9defghij\"", None),
            (b"abcdefg\x00\"", None),
            (b"abcdefghijklmno\xff\"", None),
            (b"\"\x00\\\xff\x01abc", Some(0)),
        ] {
            assert_eq!(plain_len(s), want, "{:?}", String::from_utf8_lossy(s));
        }
    }

    #[test]
    fn only_strict_single_objects_take_the_fast_path() {
        let ok = r#"{"eventType":"Microsoft.Devices.DeviceConnected","eventTime":"2026-11-27T10:00:00Z","n":[1,-2,{"a":[]},true,false,null],"data":{"hubName":"h","deviceId":"d","moduleId":null,"deviceConnectionStateEventInfo":{"sequenceNumber":"000000000000000001D4132452F67CE200000002000000000000000000000001"}}}"#;
        assert!(parse_line(ok.as_bytes()).is_some());
        let with_end = format!("{ok} \r\nnext");
        let (_, end) = scan_line(with_end.as_bytes(), 0).unwrap();
        assert_eq!(&with_end[end..], "\nnext");
        for bad in [
            ok.replace("-2", "-2.5"),
            ok.replace("-2", "1e9"),
            ok.replace("-2", "01"),
            ok.replace("true", "tru"),
            ok.replace("[1,", "[1,,"),
            ok.replace(r#""n":"#, r#""records":"#),
            ok.replace(r#""n":"#, r#""tables":"#),
            ok.replace(r#""n":"#, r#""OperationName":"#),
            ok.replace(r#""hubName":"h""#, r#""hubName":"h","hubName":"h""#),
            ok.replace(r#""d""#, r#""d\u0041""#),
            format!("{ok},"),
            format!("[{ok}]"),
            format!("{ok}\n"),
            ok[..ok.len() - 1].to_string(),
        ] {
            assert!(parse_line(bad.as_bytes()).is_none(), "{bad}");
        }
    }
}
