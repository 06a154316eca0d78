//! What the people channels (Teams, Slack, PagerDuty) share: how a [`Notice`] is put into words —
//! titles, facts, durations, times, ids clipped for display — the pace of chat webhooks, and keeping
//! credentials out of failure messages.
//!
//! Everything here returns *raw* text. Ids come from events anyone who can publish to the Event Grid
//! topic can forge, so each channel passes its own escaper (Adaptive Cards markdown, Slack mrkdwn)
//! and applies it to ids and hub names, never to connmon's own words.

use super::grouping::{display_id, Notice, SAMPLE};
use super::Failure;
use crate::alerts::AlertBody;
use crate::model::Timestamp;
use std::time::Duration;

/// Alerts handed to one send of a people channel. A sweep claims up to 5,000 outages per store
/// transaction, and grouping works within one batch: taking that many makes a storm one message
/// (Teams, Slack) or one incident (PagerDuty) instead of one per 500.
pub const BATCH: usize = 5_000;

/// Characters of a hub name shown (IoT Hub names are 3–50; `hubName` in an event is not checked).
pub const MAX_HUB: usize = 64;
/// Characters of a `device/module` id shown (each part is at most 128, checked by `decode`).
pub const MAX_ID: usize = 257;

/// `s` with control characters replaced and cut to `max` characters (`…` marks the cut).
pub fn clip(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if s.chars().nth(max).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

/// The id shown for an alert: `device` or `device/module`.
pub fn shown_id(a: &AlertBody) -> String {
    clip(&display_id(a), MAX_ID)
}

pub fn shown_hub(hub: &str) -> String {
    clip(hub, MAX_HUB)
}

/// `45s`, `5m 12s`, `2h 5m`, `3d 4h`: the two largest units, zero parts left out. The status page
/// (`dashboard`) writes its durations with this too, so a page and a message say the same.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    let parts = [
        (secs / 86_400, "d"),
        (secs % 86_400 / 3_600, "h"),
        (secs % 3_600 / 60, "m"),
        (secs % 60, "s"),
    ];
    let first = parts.iter().position(|(n, _)| *n > 0);
    match first {
        None => "0s".to_string(),
        Some(i) => parts[i..]
            .iter()
            .take(2)
            .filter(|(n, _)| *n > 0)
            .map(|(n, u)| format!("{n}{u}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// An alert time (`2026-11-27T10:00:00Z`, milliseconds optional) as `2026-11-27 10:00:00 UTC`.
pub fn time(rfc3339: &str) -> String {
    match Timestamp::parse_rfc3339(rfc3339) {
        Some(t) => {
            let s = t.to_rfc3339();
            match (s.get(..10), s.get(11..19)) {
                (Some(day), Some(clock)) => format!("{day} {clock} UTC"),
                _ => clip(rfc3339, 40),
            }
        }
        None => clip(rfc3339, 40),
    }
}

/// How many alerts a notice stands for.
pub fn alert_count(n: &Notice) -> usize {
    match n {
        Notice::Single(_) => 1,
        Notice::Outage { alerts, .. } => alerts.len(),
    }
}

/// What a notice reports, for counting: the headline's parts in order, with their emoji.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    Offline,
    StillOffline,
    BackOnline,
    Flapping,
    Stable,
    HubQuiet,
    HubResumed,
    StoreReset,
    Other,
}

impl Category {
    pub fn of(n: &Notice) -> Category {
        match n {
            Notice::Outage { resolved, .. } => {
                if *resolved {
                    Category::BackOnline
                } else {
                    Category::Offline
                }
            }
            Notice::Single(a) => match a.kind.as_str() {
                "disconnected" => Category::Offline,
                "reminder" => Category::StillOffline,
                "reconnected" => Category::BackOnline,
                "flapping" => Category::Flapping,
                "flapping_resolved" => Category::Stable,
                "hub_quiet" => Category::HubQuiet,
                "hub_resumed" => Category::HubResumed,
                "store_reset" => Category::StoreReset,
                _ => Category::Other,
            },
        }
    }

    /// `🔴 … offline`, `🟢 … back online`, …, for `count` identities.
    pub fn phrase(self, count: usize) -> String {
        match self {
            Category::Offline => format!("🔴 {count} offline"),
            Category::StillOffline => format!("🔴 {count} still offline"),
            Category::BackOnline => format!("🟢 {count} back online"),
            Category::Flapping => format!("🟠 {count} flapping"),
            Category::Stable => format!("🟢 {count} stable again"),
            Category::HubQuiet => format!("⚫ {count} hub(s) sending no events"),
            Category::HubResumed => format!("🟢 {count} hub(s) sending events again"),
            Category::StoreReset => "⚠️ connmon's store came back empty".to_string(),
            Category::Other => format!("{count} other alerts"),
        }
    }
}

/// `🔴 3 devices offline · 🟢 1 back online`: the notices counted per category (in identities).
pub fn headline(notices: &[Notice]) -> String {
    let mut counts: Vec<(Category, usize)> = Vec::new();
    for n in notices {
        let c = Category::of(n);
        match counts.iter_mut().find(|(k, _)| *k == c) {
            Some((_, k)) => *k += alert_count(n),
            None => counts.push((c, alert_count(n))),
        }
    }
    counts.sort();
    let parts: Vec<String> = counts
        .iter()
        .enumerate()
        .map(|(i, (c, k))| {
            let phrase = c.phrase(*k);
            if i > 0
                || matches!(
                    c,
                    Category::Other
                        | Category::HubQuiet
                        | Category::HubResumed
                        | Category::StoreReset
                )
            {
                return phrase;
            }
            // `devices` once, after the first number: `🔴 1 device offline`.
            let word = if *k == 1 { "device" } else { "devices" };
            match phrase.split_once(&format!("{k} ")) {
                Some((emoji, rest)) => format!("{emoji}{k} {word} {rest}"),
                None => phrase,
            }
        })
        .collect();
    parts.join(" · ")
}

/// The one-line title of a notice; `esc` is applied to every id and hub name.
///
/// `🔴 sensor-42 offline (myhub)`, `🔴 sensor-42 still offline after 4h (myhub)` (a reminder),
/// `🟢 sensor-42 back online after 5m 12s (myhub)`, `🟠 sensor-42 flapping: 6 silent reconnects
/// within 30m (myhub)`, `🟢 sensor-42 stable again after flapping (myhub)`,
/// `🔴 2000 devices offline on hub myhub`, `🟢 2000 devices back online on hub myhub`.
pub fn title(n: &Notice, esc: &dyn Fn(&str) -> String) -> String {
    match n {
        Notice::Single(a) => {
            let (id, hub) = (esc(&shown_id(a)), esc(&shown_hub(&a.hub)));
            match a.kind.as_str() {
                "disconnected" => format!("🔴 {id} offline ({hub})"),
                "reminder" => format!(
                    "🔴 {id} still offline after {} ({hub})",
                    duration(a.downtime_seconds)
                ),
                "reconnected" => format!(
                    "🟢 {id} back online after {} ({hub})",
                    duration(a.downtime_seconds)
                ),
                "flapping" => format!(
                    "🟠 {id} flapping: {} silent reconnects within {} ({hub})",
                    a.disconnects.unwrap_or_default(),
                    duration(a.window_seconds.unwrap_or_default())
                ),
                "flapping_resolved" => format!("🟢 {id} stable again after flapping ({hub})"),
                "hub_quiet" => format!(
                    "⚫ no events from hub {hub} for {}: check the Event Grid subscription",
                    duration(a.downtime_seconds)
                ),
                "hub_resumed" => format!(
                    "🟢 events from hub {hub} again after {}",
                    duration(a.downtime_seconds)
                ),
                "store_reset" => "⚠️ connmon's store came back empty: open outages are \
                                  forgotten until their devices report again"
                    .to_string(),
                other => format!("{}: {id} ({hub})", esc(&clip(other, 32))),
            }
        }
        Notice::Outage {
            hub,
            resolved,
            alerts,
        } => {
            let hub = esc(&shown_hub(hub));
            if *resolved {
                format!("🟢 {} devices back online on hub {hub}", alerts.len())
            } else {
                format!("🔴 {} devices offline on hub {hub}", alerts.len())
            }
        }
    }
}

/// One label and value of a notice's details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub label: &'static str,
    pub value: String,
    /// The value is an id or hub name from an event: escape it (and Slack shows it as code).
    pub is_id: bool,
}

fn fact(label: &'static str, value: String) -> Fact {
    Fact {
        label,
        value,
        is_id: false,
    }
}

fn id_fact(label: &'static str, value: String) -> Fact {
    Fact {
        label,
        value,
        is_id: true,
    }
}

/// The details of a notice, in display order.
///
/// A single alert: Device, Module (modules only), Hub, Offline since, Back online (reconnected
/// only), Downtime, Grace. A `flapping` one: Device, Module, Hub, Silent reconnects, Window,
/// Flapping since, Last reconnect (resolved only), Hint (when there is one). An outage: Hub,
/// Devices, Offline since (the earliest), Back online (the latest, resolved only), Grace.
pub fn facts(n: &Notice) -> Vec<Fact> {
    match n {
        Notice::Single(a) => {
            if a.kind == "store_reset" {
                return vec![
                    fact("Detected", time(&a.disconnected_at)),
                    fact(
                        "What",
                        clip(
                            a.detail.as_deref().unwrap_or("the store came back empty"),
                            300,
                        ),
                    ),
                    fact("Means", crate::alerts::STORE_RESET_MEANING.to_string()),
                ];
            }
            if a.kind.starts_with("hub_") {
                let mut f = vec![
                    id_fact("Hub", shown_hub(&a.hub)),
                    fact("Last event before", time(&a.disconnected_at)),
                ];
                if let Some(back) = &a.reconnected_at {
                    f.push(fact("Events again", time(back)));
                }
                f.push(fact("Without events", duration(a.downtime_seconds)));
                f.push(fact("Quiet after", duration(a.grace_period_seconds)));
                return f;
            }
            let mut f = vec![id_fact("Device", clip(&a.device_id, MAX_ID))];
            if let Some(m) = &a.module_id {
                f.push(id_fact("Module", clip(m, MAX_ID)));
            }
            f.push(id_fact("Hub", shown_hub(&a.hub)));
            if a.kind.starts_with("flapping") {
                if let Some(n) = a.disconnects {
                    f.push(fact("Silent reconnects", n.to_string()));
                }
                if let Some(w) = a.window_seconds {
                    f.push(fact("Window", duration(w)));
                }
                f.push(fact("Flapping since", time(&a.disconnected_at)));
                if let Some(last) = &a.reconnected_at {
                    f.push(fact("Last reconnect", time(last)));
                }
                if let Some(h) = &a.hint {
                    f.push(fact("Hint", clip(h, 200)));
                }
                return f;
            }
            f.push(fact("Offline since", time(&a.disconnected_at)));
            if let Some(back) = &a.reconnected_at {
                f.push(fact("Back online", time(back)));
            }
            f.push(fact("Downtime", duration(a.downtime_seconds)));
            f.push(fact("Grace", duration(a.grace_period_seconds)));
            f
        }
        Notice::Outage {
            hub,
            resolved,
            alerts,
        } => {
            let mut f = vec![
                id_fact("Hub", shown_hub(hub)),
                fact("Devices", alerts.len().to_string()),
            ];
            if let Some(first) = earliest(alerts.iter().map(|a| a.disconnected_at.as_str())) {
                f.push(fact("Offline since", time(&first)));
            }
            if *resolved {
                if let Some(last) =
                    latest(alerts.iter().filter_map(|a| a.reconnected_at.as_deref()))
                {
                    f.push(fact("Back online", time(&last)));
                }
            }
            if let Some(a) = alerts.first() {
                f.push(fact("Grace", duration(a.grace_period_seconds)));
            }
            f
        }
    }
}

/// The ids of an outage's first [`SAMPLE`] identities, each through `esc`, and how many more
/// there are. Ids are added while the joined text stays within `budget` characters.
pub fn sample(n: &Notice, esc: &dyn Fn(&str) -> String, budget: usize) -> (Vec<String>, usize) {
    let Notice::Outage { alerts, .. } = n else {
        return (Vec::new(), 0);
    };
    let mut shown = Vec::new();
    let mut used = 0;
    for a in alerts.iter().take(SAMPLE) {
        let s = esc(&shown_id(a));
        let len = s.chars().count() + 2;
        if used + len > budget {
            break;
        }
        used += len;
        shown.push(s);
    }
    let more = alerts.len() - shown.len();
    (shown, more)
}

/// The earliest of some RFC 3339 times (compared as instants, not as text).
pub fn earliest<'a>(times: impl Iterator<Item = &'a str>) -> Option<String> {
    times
        .filter_map(|t| Timestamp::parse_rfc3339(t).map(|p| (p, t)))
        .min_by_key(|(p, _)| *p)
        .map(|(_, t)| t.to_string())
}

pub fn latest<'a>(times: impl Iterator<Item = &'a str>) -> Option<String> {
    times
        .filter_map(|t| Timestamp::parse_rfc3339(t).map(|p| (p, t)))
        .max_by_key(|(p, _)| *p)
        .map(|(_, t)| t.to_string())
}

/// At most one request per `every` (Teams and Slack ask for about one message a second per
/// webhook). Only a backlog of more than one batch sends twice in a sweep, so this rarely waits.
pub struct Pace {
    every: Duration,
    // A tokio mutex: the wait happens while holding it, so concurrent callers queue up.
    last: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Pace {
    pub fn new(every: Duration) -> Pace {
        Pace {
            every,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits until `every` has passed since the previous call returned.
    pub async fn wait(&self) {
        let mut last = self.last.lock().await;
        if let Some(t) = *last {
            tokio::time::sleep_until(t + self.every).await;
        }
        *last = Some(tokio::time::Instant::now());
    }
}

/// One paced POST of a people-channel message to a webhook whose URL is the credential: waits
/// for the pace, posts, and scrubs the URL (and its path segments) from any failure text.
pub async fn post_paced(
    pace: &Pace,
    client: &reqwest::Client,
    url: &str,
    body: String,
    accept: impl Fn(u16, &str) -> Result<(), Failure>,
) -> Result<(), Failure> {
    pace.wait().await;
    super::post_json(client, url, body, &url_secrets(url), accept).await
}

/// The parts of a webhook URL that carry its credential — the whole URL, its path segments and
/// query values (Slack's token is the last path segment, Teams' `sig` a query value) — for
/// [`scrub`]. Parts shorter than 16 characters (`services`, `invoke`, `2016-06-01`) are left out:
/// they are not the credential and replacing them would garble messages.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    if let Ok(u) = reqwest::Url::parse(url) {
        out.extend(u.path_segments().into_iter().flatten().map(str::to_string));
        out.extend(u.query_pairs().map(|(_, v)| v.into_owned()));
        if let Some(q) = u.query() {
            out.extend(
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(_, v)| v.to_string()),
            );
        }
    }
    out.retain(|s| s.len() >= 16);
    out
}

/// `text` with every secret replaced by `<redacted>`.
pub fn scrub_text(text: String, secrets: &[String]) -> String {
    secrets.iter().fold(text, |m, s| {
        if !s.is_empty() && m.contains(s.as_str()) {
            m.replace(s.as_str(), "<redacted>")
        } else {
            m
        }
    })
}

/// `f` with every secret replaced by `<redacted>`: an error body that echoes the request (a proxy,
/// a misconfigured receiver) must not carry the credential into the logs.
pub fn scrub(f: Failure, secrets: &[String]) -> Failure {
    let clean = |m: String| scrub_text(m, secrets);
    match f {
        Failure::Transient(m) => Failure::Transient(clean(m)),
        Failure::Throttled(m, after) => Failure::Throttled(clean(m), after),
        Failure::Rejected(m) => Failure::Rejected(clean(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_show_the_two_largest_units() {
        for (secs, want) in [
            (0, "0s"),
            (45, "45s"),
            (300, "5m"),
            (312, "5m 12s"),
            (3_600, "1h"),
            (3_725, "1h 2m"),
            (90_061, "1d 1h"),
            (86_400 + 59, "1d"),
            (-5, "0s"),
        ] {
            assert_eq!(duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn the_status_page_spans_read_like_people_write_them() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(60), "1m");
        assert_eq!(duration(125), "2m 5s");
        assert_eq!(duration(7500), "2h 5m");
        assert_eq!(duration(7200), "2h");
        assert_eq!(duration(93_600), "1d 2h");
        assert_eq!(duration(-5), "0s");
    }

    #[test]
    fn times_are_shown_in_utc_without_milliseconds() {
        assert_eq!(time("2026-11-27T10:00:00Z"), "2026-11-27 10:00:00 UTC");
        assert_eq!(time("2026-11-27T10:00:00.250Z"), "2026-11-27 10:00:00 UTC");
        assert_eq!(time("garbage\n"), "garbage\u{FFFD}");
    }

    #[test]
    fn clipping_counts_characters_and_marks_the_cut() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcd", 3), "ab…");
        assert_eq!(clip("äöüß", 3), "äö…");
        assert_eq!(clip("a\nb", 5), "a\u{FFFD}b");
    }

    #[test]
    fn earliest_compares_instants_not_text() {
        let t = ["2026-11-27T10:00:00Z", "2026-11-27T09:59:59.500Z"];
        assert_eq!(earliest(t.into_iter()).unwrap(), t[1]);
        assert_eq!(latest(t.into_iter()).unwrap(), t[0]);
    }

    #[test]
    fn secrets_are_scrubbed_from_failure_messages() {
        let url =
            "https://hooks.slack.com/services/T0001/B0002/abcdefghijklmnop?sig=s3cr3t-sig-value";
        let secrets = url_secrets(url);
        let f = scrub(
            Failure::Rejected("HTTP 400 bad abcdefghijklmnop and s3cr3t-sig-value".into()),
            &secrets,
        );
        assert_eq!(f.message(), "HTTP 400 bad <redacted> and <redacted>");
    }
}
