//! Microsoft Teams through a Workflows webhook ("When a Teams webhook request is received"): one
//! POST per batch, `{"type": "message", "attachments": [<one Adaptive Card 1.4>]}`. Any 2xx is
//! delivered (usually 202 with an empty body: queued by the flow).
//!
//! The card has a bold title and a `FactSet` per notice (`people.rs`): one per alert, or one per
//! hub outage when the batch holds at least the group threshold of one hub's alerts. Version 1.4:
//! 1.5 and 1.6 cards fail to render through Workflows. No actions. Flows start failing from about
//! 21 KB, so a card shows at most [`MAX_NOTICES`] notices within [`BUDGET`] bytes and ends with
//! "…and N more alerts"; the batch is accepted or failed as a whole, in one POST.
//!
//! Adaptive Cards render a markdown subset (bold, italic, lists, links) in `TextBlock` and in fact
//! titles and values. Ids and hub names come from events, so [`escape`] backslash-escapes what
//! markdown gives meaning to: a forged id cannot add links or formatting.

use super::grouping::{group, Notice};
use super::people::{self, Pace};
use super::{http_client, Channel, Failure};
use crate::alerts::AlertBody;
use crate::settings::Secret;
use crate::store::BoxFuture;
use serde_json::{json, Value};
use std::time::Duration;

/// Notices shown in one card; the rest are counted.
pub const MAX_NOTICES: usize = 15;
/// Bytes of JSON the notices may take. With the envelope and the closing line the request stays
/// under 20,000 bytes (Workflows fail from about 21 KB although 28 KB is documented).
pub const BUDGET: usize = 17_500;

pub struct Teams {
    url: Secret<String>,
    client: reqwest::Client,
    group_threshold: usize,
    pace: Pace,
}

impl Teams {
    pub fn new(url: Secret<String>, group_threshold: usize) -> Teams {
        Teams {
            url,
            client: http_client(),
            group_threshold,
            pace: Pace::new(Duration::from_secs(1)),
        }
    }
}

/// Backslash-escapes the characters Adaptive Cards markdown gives meaning to (`\ * _ [ ] ( ) ~ `
/// < >`) and a leading list marker (`-`, `+`, `1.`), so `text` shows as written.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let digits = text.chars().take_while(char::is_ascii_digit).count();
    let list_number = digits > 0 && matches!(text.chars().nth(digits), Some('.') | Some(')'));
    for (i, c) in text.chars().enumerate() {
        let leading_marker = i == 0 && matches!(c, '-' | '+' | '#' | '>');
        if leading_marker
            || (list_number && i == digits)
            || matches!(
                c,
                '\\' | '*' | '_' | '[' | ']' | '(' | ')' | '~' | '`' | '<' | '>'
            )
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn text_block(text: String, size: &str, separator: bool) -> Value {
    let mut b = json!({
        "type": "TextBlock",
        "text": text,
        "weight": "Bolder",
        "size": size,
        "wrap": true,
    });
    if separator {
        b["separator"] = json!(true);
        b["spacing"] = json!("Medium");
    }
    b
}

/// The card elements of one notice: its title, the sample of an outage, its facts.
fn notice_elements(n: &Notice, first: bool) -> Vec<Value> {
    let mut els = vec![text_block(people::title(n, &escape), "Medium", !first)];
    if let Notice::Outage { .. } = n {
        let (ids, more) = people::sample(n, &escape, 2_000);
        let mut text = ids.join(", ");
        if more > 0 {
            text.push_str(&format!(" …and {more} more"));
        }
        els.push(json!({"type": "TextBlock", "text": text, "wrap": true, "spacing": "Small"}));
    }
    let facts: Vec<Value> = people::facts(n)
        .into_iter()
        .map(|f| {
            json!({
                "title": f.label,
                "value": if f.is_id { escape(&f.value) } else { f.value },
            })
        })
        .collect();
    els.push(json!({"type": "FactSet", "facts": facts}));
    els
}

/// The Adaptive Card for a batch (oldest first).
pub fn card(alerts: &[AlertBody], group_threshold: usize) -> Value {
    let notices = group(alerts, group_threshold);
    let total: usize = notices.iter().map(people::alert_count).sum();
    let mut body: Vec<Value> = Vec::new();
    let (mut used, mut shown_notices, mut shown_alerts) = (0, 0, 0);
    for n in &notices {
        let els = notice_elements(n, body.is_empty());
        let size: usize = els.iter().map(|e| e.to_string().len() + 1).sum();
        if shown_notices == MAX_NOTICES || used + size > BUDGET {
            break;
        }
        used += size;
        shown_notices += 1;
        shown_alerts += people::alert_count(n);
        body.extend(els);
    }
    let rest = total - shown_alerts;
    if rest > 0 {
        body.push(json!({
            "type": "TextBlock",
            "text": format!("…and {rest} more alert{} (connmon's log lists every alert)", if rest == 1 { "" } else { "s" }),
            "wrap": true,
            "isSubtle": true,
            "separator": true,
        }));
    }
    json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    })
}

/// The request body: the message envelope with exactly one card attachment.
pub fn body(alerts: &[AlertBody], group_threshold: usize) -> String {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card(alerts, group_threshold),
        }],
    })
    .to_string()
}

impl Channel for Teams {
    fn name(&self) -> &'static str {
        "teams"
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
            let accept = |_: u16, _: &str| Ok(());
            people::post_paced(&self.pace, &self.client, self.url.expose(), body, accept).await
        })
    }
}
