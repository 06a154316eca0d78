//! Slack through an incoming webhook: one POST per batch, `{"text": <fallback>, "blocks": [...]}`
//! (Block Kit). `text` is always present: notifications and screen readers show it, and Slack
//! answers 400 `no_text` without it.
//!
//! The message is a header block counting what went offline and came back, then one section per
//! notice (`people.rs`: one per alert, or one per hub outage once the batch holds the group
//! threshold of one hub's alerts), and a closing context line counting what did not fit. Slack's
//! limits are kept: at most [`MAX_NOTICES`] sections (≤ 50 blocks), header ≤ 150 characters,
//! section text ≤ 3,000, fields ≤ 10 × 2,000, about [`TEXT_BUDGET`] characters of block text.
//!
//! Ids and hub names come from events. In mrkdwn they are shown as inline code (no `*bold*` or
//! `_italic_` inside), with `&`, `<` and `>` escaped as Slack requires (so `<!channel>` or
//! `<https://…|…>` cannot be injected), backticks replaced, and every mrkdwn text object is
//! `verbatim` (no automatic parsing of bare mentions or links).
//!
//! Slack answers in plain text: only `200 ok` is delivered; any other 200 body is a failure
//! (retried); 400 `invalid_payload` / `invalid_blocks` / `no_text`, 403 `action_prohibited`, 404
//! `channel_not_found` / `no_service` and 410 `channel_is_archived` are rejections (kept queued,
//! retried slowly, logged with the code); 429 waits `Retry-After`; 5xx is retried soon.

use super::grouping::{group, Notice};
use super::people::{self, Pace};
use super::{http_client, Channel, Failure};
use crate::alerts::AlertBody;
use crate::settings::Secret;
use crate::store::BoxFuture;
use serde_json::{json, Value};
use std::time::Duration;

/// Notice sections in one message (plus the header and the closing line: well under 50 blocks).
pub const MAX_NOTICES: usize = 20;
/// Characters of block text per message (Slack advises keeping it under about 12,000).
pub const TEXT_BUDGET: usize = 11_000;
/// Slack's limit on a section's text.
pub const SECTION_TEXT: usize = 3_000;
/// Slack's limit on a header's plain text.
pub const HEADER_TEXT: usize = 150;
/// Characters of the fallback `text` (Slack truncates at 40,000; notifications show far less).
pub const FALLBACK_TEXT: usize = 3_000;

pub struct Slack {
    url: Secret<String>,
    client: reqwest::Client,
    group_threshold: usize,
    pace: Pace,
}

impl Slack {
    pub fn new(url: Secret<String>, group_threshold: usize) -> Slack {
        Slack {
            url,
            client: http_client(),
            group_threshold,
            pace: Pace::new(Duration::from_secs(1)),
        }
    }
}

/// Slack's escaping for mrkdwn and `text`: `&`, `<`, `>` as HTML entities.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An id as inline code: escaped, and with backticks (which would end the code span) replaced.
pub fn code(id: &str) -> String {
    format!("`{}`", escape(&id.replace('`', "\u{2CB}")))
}

fn mrkdwn(text: String) -> Value {
    json!({"type": "mrkdwn", "text": text, "verbatim": true})
}

/// `text` cut to at most `max` characters on a line boundary when it has one (never inside an
/// entity or a code span of the line kept).
fn cut(text: String, max: usize) -> String {
    if text.chars().count() <= max {
        return text;
    }
    let mut out = String::new();
    for line in text.lines() {
        if out.chars().count() + line.chars().count() + 2 > max {
            break;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(line);
    }
    if out.is_empty() {
        // One line longer than `max` (cannot happen with clipped ids): plain characters only.
        out = people::clip(&text.replace(['&', '<', '>', '`'], " "), max);
    } else {
        out.push_str("\n…");
    }
    out
}

/// The section block of one notice.
fn section(n: &Notice) -> Value {
    let mut text = format!("*{}*", people::title(n, &code));
    if let Notice::Outage { .. } = n {
        let (ids, more) = people::sample(n, &code, 1_200);
        text.push('\n');
        text.push_str(&ids.join(", "));
        if more > 0 {
            text.push_str(&format!(" …and {more} more"));
        }
    }
    let fields: Vec<Value> = people::facts(n)
        .into_iter()
        // The title names the device and the hub already.
        .filter(|f| f.label != "Device" && f.label != "Hub")
        .take(10)
        .map(|f| {
            let value = if f.is_id {
                code(&f.value)
            } else {
                escape(&f.value)
            };
            mrkdwn(format!("*{}*\n{value}", f.label))
        })
        .collect();
    json!({
        "type": "section",
        "text": mrkdwn(cut(text, SECTION_TEXT)),
        "fields": fields,
    })
}

/// Characters of the text objects in a block (what Slack's limits count).
fn text_len(block: &Value) -> usize {
    let t = |v: &Value| v["text"].as_str().map_or(0, |s| s.chars().count());
    t(&block["text"])
        + block["fields"]
            .as_array()
            .map_or(0, |f| f.iter().map(t).sum::<usize>())
}

/// The message for a batch (oldest first).
pub fn message(alerts: &[AlertBody], group_threshold: usize) -> Value {
    let notices = group(alerts, group_threshold);
    let total: usize = notices.iter().map(people::alert_count).sum();
    let head = people::headline(&notices);
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": people::clip(&head, HEADER_TEXT), "emoji": true},
    })];
    let (mut used, mut shown_alerts) = (0, 0);
    let mut titles = Vec::new();
    for n in &notices {
        let block = section(n);
        let len = text_len(&block);
        if blocks.len() > MAX_NOTICES || used + len > TEXT_BUDGET {
            break;
        }
        used += len;
        shown_alerts += people::alert_count(n);
        titles.push(people::title(n, &code));
        blocks.push(block);
    }
    let rest = total - shown_alerts;
    if rest > 0 {
        blocks.push(json!({
            "type": "context",
            "elements": [mrkdwn(format!(
                "…and {rest} more alert{} (connmon's log lists every alert)",
                if rest == 1 { "" } else { "s" }
            ))],
        }));
    }
    // The fallback: the headline alone for one notice's message would say less than its title.
    let mut text = if notices.len() == 1 {
        titles.first().cloned().unwrap_or_else(|| escape(&head))
    } else {
        let mut t = escape(&head);
        for title in titles.iter().take(5) {
            t.push('\n');
            t.push_str(title);
        }
        if notices.len() > 5 {
            t.push_str("\n…");
        }
        t
    };
    text = cut(text, FALLBACK_TEXT);
    json!({ "text": text, "blocks": blocks })
}

pub fn body(alerts: &[AlertBody], group_threshold: usize) -> String {
    message(alerts, group_threshold).to_string()
}

/// Slack's answer to a 2xx: only the plain-text body `ok` means posted.
fn accept(status: u16, answer: &str) -> Result<(), Failure> {
    if answer.trim() == "ok" {
        return Ok(());
    }
    let detail: String = answer
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    Err(Failure::Transient(format!(
        "HTTP {status} without `ok` ({})",
        if detail.trim().is_empty() {
            "empty answer"
        } else {
            detail.trim()
        }
    )))
}

impl Channel for Slack {
    fn name(&self) -> &'static str {
        "slack"
    }

    fn batch_size(&self) -> usize {
        people::BATCH
    }

    fn send<'a>(&'a self, alerts: &'a [AlertBody]) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            if alerts.is_empty() {
                return Ok(());
            }
            let body = body(alerts, self.group_threshold);
            people::post_paced(&self.pace, &self.client, self.url.expose(), body, accept).await
        })
    }
}
