//! Domain types of the pure core: who an event is about ([`Identity`]), when ([`Timestamp`]), in which
//! order ([`SequenceNumber`]) and what happened ([`EventKind`]). Wire shapes never reach past
//! `decode`; everything here is already validated, so the state machine cannot fail.

use std::fmt;

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z: the instants RFC 3339 can write in UTC.
const MIN_RFC3339_MS: i64 = -62_167_219_200_000;
const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// A point in time as milliseconds since the Unix epoch, UTC.
///
/// Milliseconds keep the arithmetic integer and cheap to store, and are finer than anything IoT Hub
/// promises (it samples connection state every 60 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_unix_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn unix_millis(self) -> i64 {
        self.0
    }

    /// The current wall-clock time. Only the edges call this; the core takes `now` as a parameter.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_millis() as i64)
    }

    /// Parses RFC 3339 with 0–9 fractional digits and `Z` or a numeric offset (IoT Hub sends 0–7
    /// digits and `Z` or `+00:00`). Refuses an instant outside the years 0000–9999 in UTC, which
    /// an offset can reach (`9999-12-31T23:59:00-01:00`) and [`Timestamp::to_rfc3339`] cannot print.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t =
            time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
                .ok()?;
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        i64::try_from(ms)
            .ok()
            .filter(|ms| (MIN_RFC3339_MS..=MAX_RFC3339_MS).contains(ms))
            .map(Timestamp)
    }

    /// RFC 3339 in UTC with a `Z`; milliseconds only when they are not zero.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0.div_euclid(1000);
        let ms = self.0.rem_euclid(1000);
        let t = time::OffsetDateTime::from_unix_timestamp(secs)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let (y, mo, d) = (t.year(), t.month() as u8, t.day());
        let (h, mi, s) = (t.hour(), t.minute(), t.second());
        if ms == 0 {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
        } else {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
        }
    }

    pub fn plus_millis(self, ms: i64) -> Self {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Whole seconds from `earlier` to `self`, never negative (clocks and event times disagree).
    pub fn seconds_since(self, earlier: Timestamp) -> i64 {
        (self.0 - earlier.0).max(0) / 1000
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

/// IoT Hub's per-device connection-state sequence number: a 256-bit unsigned integer sent as 64 hex
/// digits. Ordering is numeric (big-endian bytes), so case and leading zeros never matter.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SequenceNumber([u8; 32]);

/// Why a sequence number string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceNumberError {
    Length(usize),
    NotHex,
}

impl fmt::Display for SequenceNumberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SequenceNumberError::Length(n) => {
                write!(
                    f,
                    "sequenceNumber must be 64 hex digits, got {n} characters"
                )
            }
            SequenceNumberError::NotHex => {
                f.write_str("sequenceNumber must be 64 hex digits, found a non-hex character")
            }
        }
    }
}

impl SequenceNumber {
    pub fn parse(s: &str) -> Result<Self, SequenceNumberError> {
        let s = s.trim();
        if s.len() != 64 {
            // 64 characters in other than 64 bytes: one of them is not ASCII, so not a hex digit.
            let chars = s.chars().count();
            return Err(if chars == 64 {
                SequenceNumberError::NotHex
            } else {
                SequenceNumberError::Length(chars)
            });
        }
        let mut out = [0u8; 32];
        let b = s.as_bytes();
        for (i, byte) in out.iter_mut().enumerate() {
            let hi = hex_val(b[2 * i]).ok_or(SequenceNumberError::NotHex)?;
            let lo = hex_val(b[2 * i + 1]).ok_or(SequenceNumberError::NotHex)?;
            *byte = (hi << 4) | lo;
        }
        Ok(SequenceNumber(out))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SequenceNumber(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Canonical form: 64 upper-case hex digits, as IoT Hub sends them.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 15) as usize] as char);
        }
        s
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.to_hex())
    }
}

/// The unit connection state is kept for: a device, or one module of a device, on one hub.
///
/// The hub name is folded to lower case on construction (IoT Hub names are case-insensitive and
/// Event Grid shows them in mixed case inside one batch); device and module ids are case-sensitive
/// and kept as sent. A device-level identity has `module == None`; an empty module id is `None`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    hub: String,
    device: String,
    module: Option<String>,
}

impl Identity {
    pub fn new(hub: &str, device: &str, module: Option<&str>) -> Self {
        Identity {
            hub: hub.to_ascii_lowercase(),
            device: device.to_string(),
            module: module.filter(|m| !m.is_empty()).map(str::to_string),
        }
    }

    pub fn hub(&self) -> &str {
        &self.hub
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn module(&self) -> Option<&str> {
        self.module.as_deref()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.module {
            Some(m) => write!(f, "{}/{}/{}", self.hub, self.device, m),
            None => write!(f, "{}/{}", self.hub, self.device),
        }
    }
}

/// What an event says happened to an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Connected(SequenceNumber),
    Disconnected(SequenceNumber),
    /// `Microsoft.Devices.DeviceDeleted`: carries no sequence number, so it is ordered by time.
    Deleted,
}

impl EventKind {
    /// `connected`, `disconnected` or `deleted` (metrics labels).
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::Connected(_) => "connected",
            EventKind::Disconnected(_) => "disconnected",
            EventKind::Deleted => "deleted",
        }
    }
}

/// One IoT Hub connection event, decoded from whichever envelope carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionEvent {
    pub identity: Identity,
    pub kind: EventKind,
    /// The event's `eventTime` / `time`; `None` when the sender left it out (receipt time is used).
    pub time: Option<Timestamp>,
    /// Event Grid's event `id`, for logs only (duplicates are recognised by sequence number).
    pub event_id: String,
}
