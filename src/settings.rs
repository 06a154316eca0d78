//! Settings: read once at start-up from the environment (Function App application settings), in two
//! stages — raw strings, then a validated [`Settings`]. Every error names the setting, the value
//! (unless it is a secret) and the accepted forms; `main` prints it and exits with code 2.

use crate::machine::Policy;
use crate::model::Timestamp;
use crate::scope::{GraceOverride, Pattern, Scope, Silence};
use crate::store::table::conn::TableEndpoint;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the process is driven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Under the Functions host: listen on `127.0.0.1:port`, sweep when the timer function is
    /// invoked.
    Functions { port: u16 },
    /// A plain Event Grid webhook receiver with its own sweep ticker.
    Standalone {
        listen: SocketAddr,
        sweep_interval: Duration,
        /// `CONNMON_WEBHOOK_KEY`: when set, every route but `GET /` wants it (`code` query
        /// parameter or `x-functions-key` header).
        key: Option<Secret<String>>,
        /// `CONNMON_API_KEY`: the status API, dashboard and metrics want it as a bearer token (or
        /// the `code` query parameter, for a browser). Unset: those routes answer only on a
        /// loopback listener.
        api_key: Option<Secret<String>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite {
        path: PathBuf,
    },
    /// Azure Table Storage (scale-out): where, and which table.
    Table {
        endpoint: TableEndpoint,
        table: String,
    },
}

/// A value that must never be printed: `Debug` and `Display` show a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(v: T) -> Self {
        Secret(v)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub grace: Duration,
    /// The generic webhook (docs/rules.md, the alert body).
    pub webhook_url: Option<Secret<String>>,
    /// A Microsoft Teams Workflows webhook ("When a Teams webhook request is received").
    pub teams_url: Option<Secret<String>>,
    /// A Slack incoming webhook.
    pub slack_url: Option<Secret<String>>,
    pub pagerduty: Option<PagerDutySettings>,
    /// Identities of one hub alerting in one sweep from which people channels get one `outage`
    /// summary instead of one message each.
    pub group_threshold: usize,
    /// `CONNMON_QUICK_RETRY_FOR`: how long one delivery attempt retries a transient failure
    /// quickly (1 s, 2 s, 4 s, then every 8 s) before the durable back-off.
    pub quick_retry_for: Duration,
    /// `CONNMON_INCLUDE` / `CONNMON_EXCLUDE`.
    pub scope: Scope,
    /// `CONNMON_GRACE_OVERRIDES`, in the order given (the first match wins).
    pub grace_overrides: Vec<GraceOverride>,
    /// `CONNMON_SILENCES`.
    pub silences: Vec<Silence>,
    /// `CONNMON_FLAP_THRESHOLD` silent reconnects within `CONNMON_FLAP_WINDOW` make `flapping`.
    pub flap_threshold: usize,
    pub flap_window: Duration,
    /// `CONNMON_REMIND_EVERY`: repeat still-open `disconnected` alerts; `None` = never.
    pub remind_every: Option<Duration>,
    /// `CONNMON_HUB_QUIET_AFTER`: the dead-man's switch; `None` = off.
    pub hub_quiet_after: Option<Duration>,
    pub store: StoreKind,
}

impl Settings {
    /// The state machine's policy these settings describe.
    pub fn policy(&self) -> Policy {
        Policy {
            grace: self.grace,
            grace_overrides: self.grace_overrides.clone(),
            scope: self.scope.clone(),
            silences: self.silences.clone(),
            flap_threshold: self.flap_threshold,
            flap_window: self.flap_window,
            remind_every: self.remind_every,
        }
    }
}

/// PagerDuty Events API v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagerDutySettings {
    pub routing_key: Secret<String>,
    /// `https://events.pagerduty.com/v2/enqueue` unless overridden (tests point it elsewhere).
    pub events_url: String,
}

/// PagerDuty's public Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A setting that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub name: &'static str,
    /// `None` for secrets: the value is never echoed.
    pub value: Option<String>,
    pub expected: String,
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "invalid {}={:?}: {}", self.name, v, self.expected),
            None => write!(
                f,
                "invalid {} (value not shown: it is a secret): {}",
                self.name, self.expected
            ),
        }
    }
}

impl std::error::Error for SettingsError {}

/// The shortest grace period accepted (default or per pattern, and `connmon replay --grace`): a
/// shorter one alerts on every SAS-token renewal, whose reconnect takes longer than that.
pub const MIN_GRACE: Duration = Duration::from_secs(1);
/// The longest grace period accepted (default or per pattern, and `connmon replay --grace`).
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 86_400);

/// Whether `d` is a grace period the service accepts: from [`MIN_GRACE`] to [`MAX_GRACE`].
pub fn is_grace(d: Duration) -> bool {
    (MIN_GRACE..=MAX_GRACE).contains(&d)
}

/// The most `CONNMON_QUICK_RETRY_FOR` may be: with one more request timing out and the store, a
/// timer invocation still ends before the next one is due a minute later.
const MAX_QUICK_RETRY_FOR: Duration = Duration::from_secs(40);

const DURATION_FORMS: &str =
    "expected a duration such as 90s, 5m, 1h30m, 2d, plain seconds (300) or a .NET TimeSpan (00:05:00)";

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, SettingsError> {
        Settings::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get`, so tests can pass a map. Empty values count as unset (an app
    /// setting that exists but is blank).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let bad = |name: &'static str, value: &str, expected: &str| SettingsError {
            name,
            value: Some(value.to_string()),
            expected: expected.to_string(),
        };

        let grace = match get("CONNMON_GRACE_PERIOD") {
            None => Duration::from_secs(300),
            Some(v) => match parse_duration(&v) {
                None => return Err(bad("CONNMON_GRACE_PERIOD", &v, DURATION_FORMS)),
                Some(d) if !is_grace(d) => {
                    return Err(bad(
                        "CONNMON_GRACE_PERIOD",
                        &v,
                        &format!("the grace period must be at least 1s and at most 30 days ({DURATION_FORMS})"),
                    ))
                }
                Some(d) => d,
            },
        };

        // Webhook URLs carry their credential (a token in the path or `sig=` in the query).
        let secret_url = |name: &'static str| -> Result<Option<Secret<String>>, SettingsError> {
            match get(name) {
                None => Ok(None),
                Some(v) => validate_url(&v)
                    .map(|u| Some(Secret::new(u)))
                    .map_err(|why| SettingsError {
                        name,
                        value: None,
                        expected: why,
                    }),
            }
        };
        let webhook_url = secret_url("CONNMON_ALERT_WEBHOOK_URL")?;
        let teams_url = secret_url("CONNMON_TEAMS_WEBHOOK_URL")?;
        let slack_url = secret_url("CONNMON_SLACK_WEBHOOK_URL")?;
        let pagerduty = match get("CONNMON_PAGERDUTY_ROUTING_KEY") {
            None => None,
            Some(key) => {
                let key = key.trim().to_string();
                if key.len() != 32 || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(SettingsError {
                        name: "CONNMON_PAGERDUTY_ROUTING_KEY",
                        value: None,
                        expected: "expected a PagerDuty Events API v2 integration (routing) key: 32 letters and digits".into(),
                    });
                }
                let events_url = match get("CONNMON_PAGERDUTY_EVENTS_URL") {
                    None => PAGERDUTY_EVENTS_URL.to_string(),
                    Some(v) => validate_url(&v).map_err(|why| SettingsError {
                        name: "CONNMON_PAGERDUTY_EVENTS_URL",
                        value: Some(v.clone()),
                        expected: why,
                    })?,
                };
                Some(PagerDutySettings {
                    routing_key: Secret::new(key),
                    events_url,
                })
            }
        };
        let group_threshold = match get("CONNMON_GROUP_THRESHOLD") {
            None => 20,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 2)
                .ok_or_else(|| {
                    bad(
                        "CONNMON_GROUP_THRESHOLD",
                        &v,
                        "expected a whole number of identities, 2 or more",
                    )
                })?,
        };
        let quick_retry_for = match get("CONNMON_QUICK_RETRY_FOR") {
            None => crate::channels::QUICK_RETRY_FOR,
            Some(v) => parse_duration(&v)
                .filter(|d| *d <= MAX_QUICK_RETRY_FOR)
                .ok_or_else(|| {
                    bad(
                        "CONNMON_QUICK_RETRY_FOR",
                        &v,
                        &format!("{DURATION_FORMS}, between 0s (off) and 40s"),
                    )
                })?,
        };

        let patterns = |name: &'static str| -> Vec<Pattern> {
            get(name)
                .map(|v| v.split(',').filter_map(Pattern::new).collect())
                .unwrap_or_default()
        };
        let scope = Scope {
            include: patterns("CONNMON_INCLUDE"),
            exclude: patterns("CONNMON_EXCLUDE"),
        };
        let grace_overrides = match get("CONNMON_GRACE_OVERRIDES") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .filter(|item| !item.trim().is_empty())
                .map(|item| {
                    let parsed = item.rsplit_once('=').and_then(|(glob, d)| {
                        Some(GraceOverride {
                            pattern: Pattern::new(glob)?,
                            grace: parse_duration(d).filter(|d| is_grace(*d))?,
                        })
                    });
                    parsed.ok_or_else(|| {
                        bad(
                            "CONNMON_GRACE_OVERRIDES",
                            item.trim(),
                            &format!("expected comma-separated glob=duration items such as `pump-*=15m,*/$edgeAgent=1h` ({DURATION_FORMS}, at least 1s and at most 30 days)"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let silences = match get("CONNMON_SILENCES") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .filter(|item| !item.trim().is_empty())
                .map(|item| {
                    let parsed = item.rsplit_once('@').and_then(|(glob, until)| {
                        Some(Silence {
                            pattern: Pattern::new(glob)?,
                            until: Timestamp::parse_rfc3339(until)?,
                        })
                    });
                    parsed.ok_or_else(|| {
                        bad(
                            "CONNMON_SILENCES",
                            item.trim(),
                            "expected comma-separated glob@until items such as `site-7-*@2026-12-01T06:00:00Z` (until in RFC 3339)",
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };

        let flap_threshold = match get("CONNMON_FLAP_THRESHOLD") {
            None => 5,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (2..=64).contains(n))
                .ok_or_else(|| {
                    bad(
                        "CONNMON_FLAP_THRESHOLD",
                        &v,
                        "expected a number of reconnects from 2 to 64",
                    )
                })?,
        };
        let flap_window = match get("CONNMON_FLAP_WINDOW") {
            None => Duration::from_secs(30 * 60),
            Some(v) => parse_duration(&v)
                .filter(|d| *d >= Duration::from_secs(60) && *d <= Duration::from_secs(7 * 86_400))
                .ok_or_else(|| {
                    bad(
                        "CONNMON_FLAP_WINDOW",
                        &v,
                        &format!("{DURATION_FORMS}, between 1m and 7d"),
                    )
                })?,
        };

        let hub_quiet_after = match get("CONNMON_HUB_QUIET_AFTER") {
            None => None,
            Some(v) => Some(
                parse_duration(&v)
                    .filter(|d| *d >= Duration::from_secs(10) && *d <= Duration::from_secs(7 * 86_400))
                    .ok_or_else(|| {
                        bad(
                            "CONNMON_HUB_QUIET_AFTER",
                            &v,
                            &format!("{DURATION_FORMS}, between 10s and 7d (unset: no hub silence alerts)"),
                        )
                    })?,
            ),
        };
        let remind_every = match get("CONNMON_REMIND_EVERY") {
            None => None,
            Some(v) => Some(
                parse_duration(&v)
                    .filter(|d| {
                        *d >= Duration::from_secs(60) && *d <= Duration::from_secs(30 * 86_400)
                    })
                    .ok_or_else(|| {
                        bad(
                            "CONNMON_REMIND_EVERY",
                            &v,
                            &format!("{DURATION_FORMS}, between 1m and 30d (unset: no reminders)"),
                        )
                    })?,
            ),
        };

        let store = match get("CONNMON_STORE").as_deref().map(str::trim) {
            None | Some("sqlite") => StoreKind::Sqlite {
                path: PathBuf::from(
                    get("CONNMON_SQLITE_PATH").unwrap_or_else(|| "connmon.db".into()),
                ),
            },
            Some("table") => StoreKind::Table {
                endpoint: TableEndpoint::from_lookup(get)?,
                table: match get("CONNMON_TABLE_NAME") {
                    None => "connmon".to_string(),
                    Some(v) if valid_table_name(v.trim()) => v.trim().to_string(),
                    Some(v) => {
                        return Err(bad(
                            "CONNMON_TABLE_NAME",
                            &v,
                            "expected a Table Storage table name: 3-63 letters and digits, starting with a letter",
                        ))
                    }
                },
            },
            Some(v) => return Err(bad("CONNMON_STORE", v, "expected `sqlite` or `table`")),
        };

        let mode = match get("FUNCTIONS_CUSTOMHANDLER_PORT") {
            Some(p) => Mode::Functions {
                port: p
                    .trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        bad(
                            "FUNCTIONS_CUSTOMHANDLER_PORT",
                            &p,
                            "expected a TCP port number 1-65535",
                        )
                    })?,
            },
            None => {
                let listen = match get("CONNMON_LISTEN") {
                    None => SocketAddr::from(([127, 0, 0, 1], 8080)),
                    Some(v) => v.trim().parse().map_err(|_| {
                        bad("CONNMON_LISTEN", &v, "expected an IP address and port such as 127.0.0.1:8080 or 0.0.0.0:8080 or [::]:8080")
                    })?,
                };
                let sweep_interval = match get("CONNMON_SWEEP_INTERVAL") {
                    None => Duration::from_secs(30),
                    Some(v) => parse_duration(&v)
                        .filter(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(3600))
                        .ok_or_else(|| {
                            bad(
                                "CONNMON_SWEEP_INTERVAL",
                                &v,
                                &format!("{DURATION_FORMS}, between 1s and 1h"),
                            )
                        })?,
                };
                Mode::Standalone {
                    listen,
                    sweep_interval,
                    key: key_setting(&get, "CONNMON_WEBHOOK_KEY")?,
                    api_key: key_setting(&get, "CONNMON_API_KEY")?,
                }
            }
        };

        Ok(Settings {
            mode,
            grace,
            webhook_url,
            teams_url,
            slack_url,
            pagerduty,
            group_threshold,
            quick_retry_for,
            scope,
            grace_overrides,
            silences,
            flap_threshold,
            flap_window,
            remind_every,
            hub_quiet_after,
            store,
        })
    }
}

/// A key setting (`CONNMON_WEBHOOK_KEY`, `CONNMON_API_KEY`): a secret, never echoed.
fn key_setting(
    get: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<Secret<String>>, SettingsError> {
    match get(name) {
        None => Ok(None),
        Some(k) if valid_key(k.trim()) => Ok(Some(Secret::new(k.trim().to_string()))),
        Some(_) => Err(SettingsError {
            name,
            value: None,
            expected: format!(
                "expected {MIN_KEY_LEN} to 256 letters, digits, `-`, `.`, `_` or `~` (for example the output of `openssl rand -hex 32`)"
            ),
        }),
    }
}

/// The shortest key (`CONNMON_WEBHOOK_KEY`, `CONNMON_API_KEY`) accepted: guessing 16 random characters is hopeless.
pub const MIN_KEY_LEN: usize = 16;

/// A webhook key travels in a URL's query string, so only characters that need no escaping there.
fn valid_key(k: &str) -> bool {
    (MIN_KEY_LEN..=256).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Table Storage's rule for table names (`Tables` is reserved).
fn valid_table_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric())
        && !name.eq_ignore_ascii_case("tables")
}

/// Checks that a webhook URL is an absolute http(s) URL, without ever quoting it back.
fn validate_url(v: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(v.trim())
        .map_err(|e| format!("expected an absolute http:// or https:// URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err("expected an absolute http:// or https:// URL (the scheme is neither)".into());
    }
    if url.host_str().is_none() {
        return Err("expected an absolute http:// or https:// URL (no host)".into());
    }
    Ok(v.trim().to_string())
}

/// Parses the duration forms operators write: `90s`, `5m`, `1h30m`, `2d`, `250ms`, plain seconds
/// `300`, and .NET TimeSpan `[d.]hh:mm[:ss[.fffffff]]` (what Azure app settings often hold).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok().map(Duration::from_secs);
    }
    if s.contains(':') {
        return parse_timespan(s);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    let mut last_rank = usize::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, ms_per, rank) = match &rest[..unit_len] {
            "d" => ("d", 86_400_000u64, 4),
            "h" => ("h", 3_600_000, 3),
            "m" => ("m", 60_000, 2),
            "s" => ("s", 1_000, 1),
            "ms" => ("ms", 1, 0),
            _ => return None,
        };
        // Units must come largest first, each at most once: `5m1h` is more likely a typo.
        if rank >= last_rank {
            return None;
        }
        last_rank = rank;
        rest = &rest[unit.len()..];
        total = total.checked_add(Duration::from_millis(n.checked_mul(ms_per)?))?;
    }
    Some(total)
}

fn parse_timespan(s: &str) -> Option<Duration> {
    let (days, clock) = match s.split_once('.') {
        Some((d, rest)) if rest.contains(':') && !d.contains(':') => (d.parse::<u64>().ok()?, rest),
        _ => (0, s),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    if parts.len() < 2 || parts.len() > 3 {
        return None;
    }
    let num = |p: &str, max: u64| -> Option<u64> {
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse::<u64>().ok().filter(|v| *v <= max)
    };
    let h = num(parts[0], 23)?;
    let m = num(parts[1], 59)?;
    let (sec, frac_ms) = match parts.get(2) {
        None => (0, 0),
        Some(p) => {
            let (whole, frac) = p.split_once('.').unwrap_or((p, ""));
            if frac.len() > 7 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let mut ms = 0u64;
            for (i, b) in frac.bytes().take(3).enumerate() {
                ms += u64::from(b - b'0') * [100, 10, 1][i];
            }
            (num(whole, 59)?, ms)
        }
    };
    let secs = days
        .checked_mul(86_400)?
        .checked_add(h * 3600 + m * 60 + sec)?;
    Duration::from_secs(secs).checked_add(Duration::from_millis(frac_ms))
}
