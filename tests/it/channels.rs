//! The channels for people — Microsoft Teams (Workflows webhook, Adaptive Card), Slack (incoming
//! webhook, Block Kit) and PagerDuty (Events API v2) — against real local receivers: the documented
//! request of each service, how each service's answers are handled, one channel down not blocking
//! the others, forged ids escaped, credentials never logged, and an outage storm of 2,000 devices
//! told to people once. The payload limits are checked on the rendering functions directly.

use crate::support::*;
use connmon::alerts::AlertBody;
use connmon::channels::{pagerduty, slack, teams};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// In every webhook URL; must never appear in connmon's output.
const SECRET: &str = "S3CRET-chat-token-9d2e";
/// A PagerDuty routing key (32 letters and digits); must never appear in connmon's output.
const KEY: &str = "R0uTiNgKeYsEcReT0123456789abcdef";

const CARD: &str = "application/vnd.microsoft.card.adaptive";

fn slack_ok() -> Answer {
    Answer::Text(200, vec![], "ok".into())
}

fn pd_ok() -> Answer {
    Answer::Text(
        202,
        vec![],
        r#"{"status":"success","message":"Event processed","dedup_key":"x"}"#.into(),
    )
}

/// Receivers for every channel and connmon (Functions mode) pointed at them.
struct Rig {
    cm: Connmon,
    webhook: Receiver,
    teams: Receiver,
    slack: Receiver,
    pd: Receiver,
}

impl Rig {
    /// Every channel answers as documented on success.
    fn start(extra: &[(&str, &str)]) -> Rig {
        Rig::with(
            Receiver::start(vec![]),
            Receiver::start(vec![]),
            Receiver::start_then(vec![], slack_ok()),
            Receiver::start_then(vec![], pd_ok()),
            extra,
        )
    }

    fn with(
        webhook: Receiver,
        teams: Receiver,
        slack: Receiver,
        pd: Receiver,
        extra: &[(&str, &str)],
    ) -> Rig {
        let hook = webhook.url(&format!("/alerts/{SECRET}"));
        let teams_url = teams.url(&format!(
            "/workflows/0123/triggers/manual/paths/invoke?api-version=1&sig={SECRET}"
        ));
        let slack_url = slack.url(&format!("/services/T0001/B0002/{SECRET}"));
        let pd_url = pd.url("/v2/enqueue");
        let mut env: Vec<(&str, &str)> = vec![
            ("CONNMON_GRACE_PERIOD", "2s"),
            ("CONNMON_ALERT_WEBHOOK_URL", &hook),
            ("CONNMON_TEAMS_WEBHOOK_URL", &teams_url),
            ("CONNMON_SLACK_WEBHOOK_URL", &slack_url),
            ("CONNMON_PAGERDUTY_ROUTING_KEY", KEY),
            ("CONNMON_PAGERDUTY_EVENTS_URL", &pd_url),
        ];
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k, v));
        }
        let cm = Connmon::functions(&env);
        Rig {
            cm,
            webhook,
            teams,
            slack,
            pd,
        }
    }

    fn assert_no_secret(&self) {
        assert_no_secret(&self.cm);
    }
}

fn assert_no_secret(cm: &Connmon) {
    let logs = cm.logs();
    assert!(!logs.contains(SECRET), "a webhook URL leaked:\n{logs}");
    assert!(!logs.contains(KEY), "the routing key leaked:\n{logs}");
}

/// Checks the Workflows envelope (one Adaptive Card 1.4 attachment, no actions) and returns the card.
fn card_of(r: &Received) -> Value {
    assert_eq!(r.method, "POST");
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    card_in(&r.body)
}

/// Checks a Workflows envelope's bytes and returns its card.
fn card_in(body: &[u8]) -> Value {
    assert!(body.len() < 20_000, "envelope of {} bytes", body.len());
    let env: Value = serde_json::from_slice(body).expect("JSON");
    assert_eq!(env["type"], "message", "{env}");
    let attachments = env["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 1, "exactly one attachment: {env}");
    let a = &attachments[0];
    assert_eq!(a["contentType"], CARD);
    assert!(a.as_object().unwrap().contains_key("contentUrl") && a["contentUrl"].is_null());
    let card = a["content"].clone();
    assert_eq!(
        card["$schema"],
        "http://adaptivecards.io/schemas/adaptive-card.json"
    );
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4", "1.5+ does not render via Workflows");
    assert!(card.get("actions").is_none(), "no actions: {card}");
    card
}

/// The card's bold titles, in order.
fn card_titles(card: &Value) -> Vec<String> {
    card["body"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "TextBlock" && e["weight"] == "Bolder")
        .map(|e| {
            assert_eq!(e["size"], "Medium", "{e}");
            e["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// The facts of the card's `i`-th FactSet as (title, value).
fn card_facts(card: &Value, i: usize) -> Vec<(String, String)> {
    let sets: Vec<&Value> = card["body"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "FactSet")
        .collect();
    sets[i]["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap().to_string(),
                f["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Checks a Slack message against the documented limits and escaping; returns it.
fn slack_message(r: &Received) -> Value {
    assert_eq!(r.method, "POST");
    let m = r.json();
    let text = m["text"].as_str().expect("`text` is always present");
    assert!(!text.is_empty() && text.chars().count() <= 40_000, "{m}");
    let blocks = m["blocks"].as_array().expect("blocks");
    assert!(
        !blocks.is_empty() && blocks.len() <= 50,
        "{} blocks",
        blocks.len()
    );
    let mut total = 0;
    for b in blocks {
        match b["type"].as_str().unwrap() {
            "header" => {
                assert_eq!(b["text"]["type"], "plain_text");
                assert!(b["text"]["text"].as_str().unwrap().chars().count() <= 150);
            }
            "section" => {
                let t = &b["text"];
                assert_eq!(t["type"], "mrkdwn");
                assert_eq!(t["verbatim"], true);
                let n = t["text"].as_str().unwrap().chars().count();
                assert!(n <= 3_000, "section text of {n}");
                total += n;
                let fields = b["fields"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                assert!(fields.len() <= 10);
                for f in fields {
                    assert_eq!(f["verbatim"], true);
                    let n = f["text"].as_str().unwrap().chars().count();
                    assert!(n <= 2_000);
                    total += n;
                }
            }
            "context" => {
                let elements = b["elements"].as_array().unwrap();
                assert!(elements.len() <= 10);
            }
            other => panic!("unexpected block {other}"),
        }
    }
    assert!(total <= 12_000, "{total} characters of block text");
    m
}

/// Every text a Slack message shows in mrkdwn (the fallback, sections, fields, context).
fn slack_mrkdwn_texts(m: &Value) -> Vec<String> {
    let mut out = vec![m["text"].as_str().unwrap().to_string()];
    for b in m["blocks"].as_array().unwrap() {
        if b["type"] == "header" {
            continue;
        }
        for t in [&b["text"]]
            .into_iter()
            .chain(b["fields"].as_array().into_iter().flatten())
            .chain(b["elements"].as_array().into_iter().flatten())
        {
            if let Some(s) = t["text"].as_str() {
                out.push(s.to_string());
            }
        }
    }
    out
}

/// Requests answered 2xx.
fn accepted(r: &Receiver) -> Vec<Received> {
    r.requests().into_iter().filter(|q| q.delivered()).collect()
}

// ---------------------------------------------------------------------------------------------
// What each service receives

#[test]
fn teams_gets_one_adaptive_card_per_batch_with_a_title_and_facts() {
    let rig = Rig::start(&[]);
    let t0 = ago(600);
    rig.cm.event(&disconnected("sensor-42", 1, &t0));
    rig.cm
        .event(&disconnected("gw-1", 1, &ago(500)).module("$edgeHub"));
    let s = rig.cm.sweep();
    assert_eq!((s.new_alerts, s.queued), (2, 0), "{s:?}");

    let reqs = rig.teams.requests();
    assert_eq!(reqs.len(), 1, "one POST per batch");
    assert!(
        reqs[0].target.contains(&format!("sig={SECRET}")),
        "query string kept"
    );
    let card = card_of(&reqs[0]);
    assert_eq!(
        card_titles(&card),
        [
            format!("🔴 sensor-42 offline ({HUB})"),
            format!("🔴 gw-1/$edgeHub offline ({HUB})"),
        ]
    );
    let facts = card_facts(&card, 0);
    let titles: Vec<&str> = facts.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        titles,
        ["Device", "Hub", "Offline since", "Downtime", "Grace"]
    );
    assert_eq!(facts[0].1, "sensor-42");
    assert_eq!(facts[1].1, HUB);
    let since = parse_time(&t0);
    assert_eq!(
        facts[2].1,
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            since.year(),
            since.month() as u8,
            since.day(),
            since.hour(),
            since.minute(),
            since.second()
        )
    );
    assert!(facts[3].1.starts_with("10m"), "{facts:?}");
    assert_eq!(facts[4].1, "2s");
    let module_facts = card_facts(&card, 1);
    assert_eq!(module_facts[0], ("Device".into(), "gw-1".into()));
    assert_eq!(module_facts[1], ("Module".into(), "$edgeHub".into()));

    // Back online: one more card, titled with the downtime.
    rig.cm.event(&connected("sensor-42", 2, &ago(60)));
    let s = rig.cm.sweep();
    assert_eq!((s.delivered, s.queued), (4, 0), "{s:?}");
    let reqs = rig.teams.requests();
    assert_eq!(reqs.len(), 2);
    let card = card_of(&reqs[1]);
    assert_eq!(
        card_titles(&card),
        [format!("🟢 sensor-42 back online after 9m ({HUB})")]
    );
    let titles: Vec<String> = card_facts(&card, 0).into_iter().map(|(t, _)| t).collect();
    assert_eq!(
        titles,
        [
            "Device",
            "Hub",
            "Offline since",
            "Back online",
            "Downtime",
            "Grace"
        ]
    );
    rig.assert_no_secret();
}

#[test]
fn slack_gets_one_block_kit_message_per_batch_with_a_fallback_text() {
    let rig = Rig::start(&[]);
    rig.cm.event(&disconnected("sensor-42", 1, &ago(600)));
    let s = rig.cm.sweep();
    assert_eq!((s.new_alerts, s.queued), (1, 0), "{s:?}");
    let reqs = rig.slack.requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].target.ends_with(SECRET));
    let m = slack_message(&reqs[0]);
    assert_eq!(m["text"], format!("🔴 `sensor-42` offline (`{HUB}`)"));
    let blocks = m["blocks"].as_array().unwrap();
    assert_eq!(blocks.len(), 2, "{m}");
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["text"], "🔴 1 device offline");
    assert_eq!(
        blocks[1]["text"]["text"],
        format!("*🔴 `sensor-42` offline (`{HUB}`)*")
    );
    let fields: Vec<&str> = blocks[1]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["text"].as_str().unwrap())
        .collect();
    assert!(fields[0].starts_with("*Offline since*\n"), "{fields:?}");
    assert!(fields[1].starts_with("*Downtime*\n10m"), "{fields:?}");
    assert_eq!(fields[2], "*Grace*\n2s");

    rig.cm.event(&connected("sensor-42", 2, &ago(0)));
    rig.cm.event(&disconnected("sensor-43", 1, &ago(300)));
    let s = rig.cm.sweep();
    assert_eq!((s.new_alerts, s.queued), (1, 0), "{s:?}");
    let reqs = rig.slack.requests();
    assert_eq!(reqs.len(), 2);
    let m = slack_message(&reqs[1]);
    let blocks = m["blocks"].as_array().unwrap();
    assert_eq!(
        blocks[0]["text"]["text"],
        "🔴 1 device offline · 🟢 1 back online"
    );
    assert_eq!(blocks.len(), 3, "header and one section per alert: {m}");
    let text = m["text"].as_str().unwrap();
    assert!(
        text.starts_with("🔴 1 device offline · 🟢 1 back online\n"),
        "{text}"
    );
    assert!(
        text.contains("🟢 `sensor-42` back online after 10m"),
        "{text}"
    );
    rig.assert_no_secret();
}

#[test]
fn pagerduty_triggers_and_resolves_with_the_alerts_dedup_key() {
    let rig = Rig::start(&[]);
    let t0 = ago(600);
    rig.cm.event(&disconnected("sensor-42", 1, &t0));
    rig.cm.sweep();
    let alert = rig.webhook.delivered()[0].clone();
    let reqs = rig.pd.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].target, "/v2/enqueue");
    assert!(reqs[0].header("authorization").is_none());
    let ev = reqs[0].json();
    let top: BTreeSet<&str> = ev.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        top,
        BTreeSet::from([
            "routing_key",
            "event_action",
            "dedup_key",
            "payload",
            "client"
        ])
    );
    assert_eq!(ev["routing_key"], KEY);
    assert_eq!(ev["event_action"], "trigger");
    assert_eq!(ev["dedup_key"], alert["dedupKey"]);
    assert_eq!(ev["client"], "connmon");
    let p = &ev["payload"];
    let summary = p["summary"].as_str().unwrap();
    assert!(summary.chars().count() <= 1024);
    assert!(
        summary.starts_with(&format!("sensor-42 offline on hub {HUB} since ")),
        "{summary}"
    );
    assert!(summary.ends_with("(grace 2s)"), "{summary}");
    assert_eq!(p["severity"], "error");
    assert_eq!(p["source"], HUB);
    assert_eq!(p["group"], HUB);
    assert_eq!(p["component"], "sensor-42");
    assert_eq!(p["class"], "device-connectivity");
    assert_eq!(p["timestamp"], alert["disconnectedAt"]);
    assert_eq!(p["custom_details"], alert, "every alert field");
    assert!(p.get("links").is_none() && p.get("client").is_none());

    rig.cm.event(&connected("sensor-42", 2, &ago(0)));
    rig.cm.sweep();
    let reqs = rig.pd.requests();
    assert_eq!(reqs.len(), 2);
    let ev = reqs[1].json();
    assert_eq!(
        ev,
        serde_json::json!({
            "routing_key": KEY,
            "event_action": "resolve",
            "dedup_key": alert["dedupKey"],
        })
    );
    rig.assert_no_secret();
}

// ---------------------------------------------------------------------------------------------
// Each service's answers

#[test]
fn slack_200_without_ok_is_a_failure_and_retried_later() {
    let rig = Rig::with(
        Receiver::start(vec![]),
        Receiver::start(vec![]),
        Receiver::start_then(
            vec![Answer::Text(200, vec![], "invalid_token".into())],
            slack_ok(),
        ),
        Receiver::start_then(vec![], pd_ok()),
        // Quick retries off: this is about the retry between sweeps.
        &[("CONNMON_QUICK_RETRY_FOR", "0s")],
    );
    rig.cm.event(&disconnected("lost", 1, &ago(600)));
    let s = rig.cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 3, 1), "{s:?}");
    assert!(
        s.logs[0].contains("delivery failing: slack: HTTP 200 without `ok` (invalid_token)"),
        "{s:?}"
    );
    let failed_at = Instant::now();
    let s = rig.cm.sweep();
    assert_eq!((s.delivered, s.queued), (0, 1), "backing off: {s:?}");
    let sweeps = rig.cm.sweep_until_delivered(Duration::from_secs(20));
    assert!(failed_at.elapsed() >= Duration::from_secs(9), "{sweeps:?}");
    assert_eq!(sweeps.last().unwrap().queued, 0);
    let reqs = rig.slack.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, reqs[1].body, "the same message again");
    assert!(rig
        .cm
        .stdout()
        .contains("alert channel slack delivers again"));
    rig.assert_no_secret();
}

#[test]
fn slack_channel_not_found_is_a_rejection_and_the_other_channels_deliver() {
    let rig = Rig::with(
        Receiver::start(vec![]),
        Receiver::start(vec![]),
        Receiver::start_then(
            vec![Answer::Text(404, vec![], "channel_not_found".into())],
            slack_ok(),
        ),
        Receiver::start_then(vec![], pd_ok()),
        &[],
    );
    rig.cm.event(&disconnected("orphan", 1, &ago(600)));
    let s = rig.cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 3, 1), "{s:?}");
    assert!(
        s.logs[0].contains("delivery failing: slack: HTTP 404 channel_not_found"),
        "{s:?}"
    );
    assert_eq!(rig.webhook.delivered().len(), 1);
    assert_eq!(accepted(&rig.teams).len(), 1);
    assert_eq!(accepted(&rig.pd).len(), 1);
    for _ in 0..3 {
        let s = rig.cm.sweep();
        assert_eq!((s.delivered, s.queued), (0, 1), "kept, not dropped: {s:?}");
    }
    assert_eq!(
        rig.slack.requests().len(),
        1,
        "a rejection backs off for minutes"
    );
    let stderr = rig.cm.stderr();
    assert!(
        stderr.contains("alert channel slack delivery failed: HTTP 404 channel_not_found"),
        "{stderr}"
    );
    assert!(stderr.contains("check its configuration"), "{stderr}");
    assert!(stderr.contains("next attempt in 300s"), "{stderr}");
    rig.assert_no_secret();
}

#[test]
fn slack_throttling_is_retried_after_its_retry_after() {
    let rig = Rig::with(
        Receiver::start(vec![]),
        Receiver::start(vec![]),
        Receiver::start_then(
            vec![Answer::Text(
                429,
                vec![("Retry-After".into(), "1".into())],
                "rate_limited".into(),
            )],
            slack_ok(),
        ),
        Receiver::start_then(vec![], pd_ok()),
        // Quick retries off: this is about the retry between sweeps.
        &[("CONNMON_QUICK_RETRY_FOR", "0s")],
    );
    rig.cm.event(&disconnected("busy", 1, &ago(600)));
    let s = rig.cm.sweep();
    assert_eq!((s.new_alerts, s.queued), (1, 1), "{s:?}");
    assert!(s.logs[0].contains("slack: HTTP 429 rate_limited"), "{s:?}");
    let failed_at = Instant::now();
    let sweeps = rig.cm.sweep_until_delivered(Duration::from_secs(8));
    assert!(
        failed_at.elapsed() >= Duration::from_millis(800),
        "{sweeps:?}"
    );
    assert_eq!(sweeps.last().unwrap().queued, 0, "{sweeps:?}");
    let reqs = rig.slack.requests();
    assert_eq!(
        reqs.iter().map(|r| r.answered).collect::<Vec<_>>(),
        [Some(429), Some(200)]
    );
    rig.assert_no_secret();
}

#[test]
fn pagerduty_rejection_keeps_the_alert_queued() {
    let rig = Rig::with(
        Receiver::start(vec![]),
        Receiver::start(vec![]),
        Receiver::start_then(vec![], slack_ok()),
        Receiver::start_then(
            vec![Answer::Text(
                400,
                vec![],
                r#"{"status":"invalid event","message":"Event object is invalid","errors":["'payload' is missing"]}"#.into(),
            )],
            pd_ok(),
        ),
        &[],
    );
    rig.cm.event(&disconnected("refused", 1, &ago(600)));
    let s = rig.cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 3, 1), "{s:?}");
    assert!(
        s.logs[0].contains("delivery failing: pagerduty: HTTP 400"),
        "{s:?}"
    );
    for _ in 0..3 {
        let s = rig.cm.sweep();
        assert_eq!((s.delivered, s.queued), (0, 1), "kept, not dropped: {s:?}");
    }
    assert_eq!(rig.pd.requests().len(), 1);
    let stderr = rig.cm.stderr();
    assert!(
        stderr.contains("alert channel pagerduty delivery failed"),
        "{stderr}"
    );
    assert!(stderr.contains("next attempt in 300s"), "{stderr}");
    rig.assert_no_secret();
}

#[test]
fn pagerduty_throttling_waits_a_minute_without_retry_after() {
    let rig = Rig::with(
        Receiver::start(vec![]),
        Receiver::start(vec![]),
        Receiver::start_then(vec![], slack_ok()),
        Receiver::start_then(vec![Answer::Status(429)], pd_ok()),
        &[],
    );
    rig.cm.event(&disconnected("paced", 1, &ago(600)));
    let s = rig.cm.sweep();
    assert_eq!(s.queued, 1, "{s:?}");
    assert!(s.logs[0].contains("pagerduty: HTTP 429"), "{s:?}");
    let stderr = rig.cm.stderr();
    assert!(stderr.contains("next attempt in 60s"), "{stderr}");
    rig.assert_no_secret();
}

#[test]
fn pagerduty_resumes_a_batch_after_the_event_that_failed() {
    // Three alerts in one batch; the second event is refused by a 503 once.
    let rig = Rig::with(
        Receiver::start(vec![]),
        Receiver::start(vec![]),
        Receiver::start_then(vec![], slack_ok()),
        Receiver::start_then(
            vec![
                pd_ok(),
                Answer::StatusWith(503, vec![("Retry-After".into(), "1".into())]),
            ],
            pd_ok(),
        ),
        // Quick retries off: this is about the retry between sweeps.
        &[("CONNMON_QUICK_RETRY_FOR", "0s")],
    );
    for (i, d) in ["first", "second", "third"].iter().enumerate() {
        rig.cm.event(&disconnected(d, 1, &ago(600 - i as i64)));
    }
    let s = rig.cm.sweep();
    assert_eq!(s.queued, 3, "{s:?}");
    rig.cm.sweep_until_delivered(Duration::from_secs(8));
    let components: Vec<String> = rig
        .pd
        .requests()
        .iter()
        .map(|r| {
            r.json()["payload"]["component"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        components,
        ["first", "second", "second", "third"],
        "the accepted event is not sent again"
    );
    rig.assert_no_secret();
}

#[test]
fn a_channel_that_is_down_does_not_block_the_others() {
    let rig = Rig::with(
        Receiver::start(vec![]),
        Receiver::start_then(vec![], Answer::Status(500)),
        Receiver::start_then(vec![], slack_ok()),
        Receiver::start_then(vec![], pd_ok()),
        // Quick retries off: this is about the retry between sweeps.
        &[("CONNMON_QUICK_RETRY_FOR", "0s")],
    );
    rig.cm.event(&disconnected("up-a", 1, &ago(600)));
    rig.cm.event(&disconnected("up-b", 1, &ago(590)));
    let s = rig.cm.sweep();
    assert_eq!((s.new_alerts, s.delivered, s.queued), (2, 6, 2), "{s:?}");
    assert!(
        s.logs[0].contains("delivery failing: teams: HTTP 500"),
        "{s:?}"
    );
    assert_eq!(rig.webhook.delivered().len(), 2);
    assert_eq!(accepted(&rig.slack).len(), 1);
    assert_eq!(accepted(&rig.pd).len(), 2);

    // While Teams backs off, a new alert reaches the others at once.
    rig.cm.event(&connected("up-a", 2, &ago(0)));
    let s = rig.cm.sweep();
    assert_eq!((s.delivered, s.queued), (3, 3), "{s:?}");
    assert_eq!(rig.webhook.delivered().len(), 3);
    assert_eq!(accepted(&rig.slack).len(), 2);
    assert_eq!(accepted(&rig.pd).len(), 3);
    assert_eq!(
        rig.teams.requests().len(),
        1,
        "Teams waits out its back-off"
    );
    assert_eq!(
        rig.cm
            .stderr()
            .matches("alert channel teams delivery failed")
            .count(),
        1
    );
    rig.assert_no_secret();
}

#[test]
fn ids_that_look_like_markup_are_escaped() {
    let rig = Rig::start(&[]);
    let ids = [
        "<script>alert(1)</script>",
        "*b*_i_[x](http://e.vil)",
        "a&b<!channel>",
    ];
    for (i, id) in ids.iter().enumerate() {
        rig.cm.event(&disconnected(id, 1, &ago(600 - i as i64)));
    }
    let s = rig.cm.sweep();
    assert_eq!((s.new_alerts, s.queued), (3, 0), "{s:?}");

    // Teams: markdown-significant characters backslash-escaped.
    let card = card_of(&rig.teams.requests()[0]);
    assert_eq!(
        card_titles(&card),
        [
            format!(r"🔴 \<script\>alert\(1\)\</script\> offline ({HUB})"),
            format!(r"🔴 \*b\*\_i\_\[x\]\(http://e.vil\) offline ({HUB})"),
            format!(r"🔴 a&b\<!channel\> offline ({HUB})"),
        ]
    );
    assert_eq!(
        card_facts(&card, 1)[0].1,
        r"\*b\*\_i\_\[x\]\(http://e.vil\)"
    );

    // Slack: `&`, `<`, `>` as entities, ids as code, nothing parsed automatically.
    let m = slack_message(&rig.slack.requests()[0]);
    let texts = slack_mrkdwn_texts(&m);
    for t in &texts {
        assert!(!t.contains('<') && !t.contains('>'), "unescaped in {t:?}");
    }
    let all = texts.join("\n");
    assert!(
        all.contains("`&lt;script&gt;alert(1)&lt;/script&gt;`"),
        "{all}"
    );
    assert!(all.contains("`*b*_i_[x](http://e.vil)`"), "{all}");
    assert!(all.contains("`a&amp;b&lt;!channel&gt;`"), "{all}");

    // PagerDuty shows plain text: the id as it is.
    let summaries: Vec<String> = rig
        .pd
        .requests()
        .iter()
        .map(|r| r.json()["payload"]["summary"].as_str().unwrap().to_string())
        .collect();
    assert!(
        summaries[2].starts_with("a&b<!channel> offline"),
        "{summaries:?}"
    );
    rig.assert_no_secret();
}

#[test]
fn credentials_echoed_by_a_failing_receiver_are_not_logged() {
    let echo = |code: u16, what: &str| Answer::Text(code, vec![], format!("bad request {what}"));
    let rig = Rig::with(
        Receiver::start(vec![]),
        Receiver::start_then(vec![], echo(401, &format!("sig={SECRET}"))),
        Receiver::start_then(
            vec![],
            echo(400, &format!("/services/T0001/B0002/{SECRET}")),
        ),
        Receiver::start_then(vec![], echo(400, &format!("routing_key {KEY}"))),
        &[],
    );
    rig.cm.event(&disconnected("echo", 1, &ago(600)));
    let s = rig.cm.sweep();
    assert_eq!(s.queued, 3, "{s:?}");
    let line = &s.logs[0];
    for ch in ["teams", "slack", "pagerduty"] {
        assert!(line.contains(&format!("{ch}: HTTP 4")), "{line}");
    }
    assert!(line.contains("<redacted>"), "{line}");
    assert!(!line.contains(SECRET) && !line.contains(KEY), "{line}");
    rig.assert_no_secret();
}

// ---------------------------------------------------------------------------------------------
// A storm: 2,000 devices of one hub go offline within a minute, then come back.

/// Posts Event Grid events to `/api/events`, 1,000 per request (about 450 KB, under 1 MiB).
fn post_events(cm: &Connmon, events: Vec<Value>) {
    for chunk in events.chunks(1_000) {
        let resp = cm.api_events(&Value::Array(chunk.to_vec()), &[]);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["accepted"], chunk.len());
    }
}

#[test]
fn a_storm_of_2000_devices_is_one_message_per_channel_for_people() {
    const N: usize = 2_000;
    let started = Instant::now();
    let rig = Rig::start(&[
        ("CONNMON_GRACE_PERIOD", "5m"),
        ("CONNMON_GROUP_THRESHOLD", "20"),
    ]);
    let device = |i: usize| format!("storm-{i:04}");
    // Offline between 11 and 10 minutes ago.
    let events: Vec<Value> = (0..N)
        .map(|i| disconnected(&device(i), 1, &ago(660 - (i * 60 / N) as i64)).eg())
        .collect();
    post_events(&rig.cm, events);
    let ingested = started.elapsed();

    let t = Instant::now();
    let s = rig.cm.sweep();
    let swept = t.elapsed();
    assert_eq!(
        (s.new_alerts, s.delivered, s.queued),
        (N as u64, 4 * N as u64, 0),
        "{:?}",
        s.logs[0]
    );

    // Teams: one card.
    let reqs = rig.teams.requests();
    assert_eq!(reqs.len(), 1);
    let card = card_of(&reqs[0]);
    assert_eq!(
        card_titles(&card),
        [format!("🔴 2000 devices offline on hub {HUB}")]
    );
    let sample = card["body"][1]["text"].as_str().unwrap();
    let (ids, more) = sample.split_once(" …and ").unwrap();
    assert_eq!(more, "1990 more", "{sample}");
    assert_eq!(
        ids.split(", ")
            .filter(|id| id.starts_with("storm-"))
            .count(),
        10,
        "{sample}"
    );
    assert!(card_facts(&card, 0).contains(&("Devices".into(), "2000".into())));

    // Slack: one message.
    let reqs = rig.slack.requests();
    assert_eq!(reqs.len(), 1);
    let m = slack_message(&reqs[0]);
    assert_eq!(m["blocks"][0]["text"]["text"], "🔴 2000 devices offline");
    assert_eq!(m["blocks"].as_array().unwrap().len(), 2);
    assert_eq!(m["text"], format!("🔴 2000 devices offline on hub `{HUB}`"));

    // PagerDuty: one trigger for the hub.
    let reqs = rig.pd.requests();
    assert_eq!(reqs.len(), 1, "one trigger, not 2000");
    let trig = reqs[0].json();
    assert_eq!(trig["event_action"], "trigger");
    assert_eq!(
        trig["payload"]["summary"],
        format!("2000 devices offline on hub {HUB}")
    );
    assert_eq!(trig["payload"]["source"], HUB);
    assert_eq!(trig["payload"]["severity"], "error");
    assert_eq!(trig["payload"]["custom_details"]["count"], 2000);
    let outage_key = trig["dedup_key"].as_str().unwrap().to_string();
    assert!(outage_key.starts_with("cm1o-"), "{outage_key}");

    // The webhook: every identity once, in POSTs of 500, each with its own outage summary.
    let reqs = rig.webhook.requests();
    assert_eq!(reqs.len(), 4);
    let mut seen: BTreeMap<String, String> = BTreeMap::new(); // device -> dedupKey
    let mut summed = 0;
    for r in &reqs {
        let items = r.alerts();
        assert_eq!(items.len(), 501);
        for a in &items {
            match a["kind"].as_str().unwrap() {
                "disconnected" => {
                    let d = a["deviceId"].as_str().unwrap().to_string();
                    let k = a["dedupKey"].as_str().unwrap().to_string();
                    assert!(seen.insert(d, k).is_none(), "{a}");
                }
                "outage" => summed += a["count"].as_u64().unwrap(),
                other => panic!("{other}"),
            }
        }
    }
    assert_eq!(seen.len(), N);
    assert_eq!(summed, N as u64);

    // All come back within a minute: one recovery each.
    let events: Vec<Value> = (0..N)
        .map(|i| connected(&device(i), 2, &ago(60 - (i * 60 / N) as i64)).eg())
        .collect();
    post_events(&rig.cm, events);
    let t = Instant::now();
    let s = rig.cm.sweep();
    let swept_back = t.elapsed();
    assert_eq!(
        (s.new_alerts, s.delivered, s.queued),
        (0, 4 * N as u64, 0),
        "{:?}",
        s.logs[0]
    );

    let reqs = rig.teams.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        card_titles(&card_of(&reqs[1])),
        [format!("🟢 2000 devices back online on hub {HUB}")]
    );
    let reqs = rig.slack.requests();
    assert_eq!(reqs.len(), 2);
    let m = slack_message(&reqs[1]);
    assert_eq!(
        m["blocks"][0]["text"]["text"],
        "🟢 2000 devices back online"
    );
    assert_eq!(m["blocks"].as_array().unwrap().len(), 2);

    // PagerDuty: the outage's resolve first (same key as its trigger), then one per device.
    let reqs = rig.pd.requests();
    let resolves: Vec<Value> = reqs[1..].iter().map(Received::json).collect();
    assert_eq!(resolves[0]["event_action"], "resolve");
    assert_eq!(resolves[0]["dedup_key"], outage_key.as_str());
    assert_eq!(resolves.len(), 1 + N);
    let per_device: BTreeSet<&str> = resolves[1..]
        .iter()
        .map(|e| {
            assert_eq!(e["event_action"], "resolve");
            e["dedup_key"].as_str().unwrap()
        })
        .collect();
    let expected: BTreeSet<&str> = seen.values().map(String::as_str).collect();
    assert_eq!(per_device, expected);

    let reqs = rig.webhook.requests();
    assert_eq!(reqs.len(), 8);
    let mut back = BTreeSet::new();
    let mut summed = 0;
    for r in &reqs[4..] {
        for a in r.alerts() {
            match a["kind"].as_str().unwrap() {
                "reconnected" => assert!(back.insert(a["deviceId"].as_str().unwrap().to_string())),
                "outage_resolved" => summed += a["count"].as_u64().unwrap(),
                other => panic!("{other}"),
            }
        }
    }
    assert_eq!((back.len(), summed), (N, N as u64));
    rig.assert_no_secret();
    eprintln!(
        "storm: ingest {ingested:?}, sweep {swept:?}, recovery sweep {swept_back:?}, total {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Payload limits, on the rendering functions: a full batch of worst-case ids.

/// `n` alerts over hubs of `per_hub` identities each, with 128-character ids full of markup and
/// 64-character hub names.
fn worst_batch(n: usize, per_hub: usize, kind: &str) -> Vec<AlertBody> {
    (0..n)
        .map(|i| {
            let id = format!("{i:05}&<>*_[]()`~\\").repeat(10)[..128].to_string();
            let hub = format!("hub-{:03}-", i / per_hub).repeat(8)[..64].to_string();
            serde_json::from_value(serde_json::json!({
                "kind": kind,
                "dedupKey": format!("cm1-{i:032x}"),
                "hub": hub,
                "deviceId": id,
                "moduleId": id,
                "disconnectedAt": "2026-11-27T10:00:00.123Z",
                "reconnectedAt": (kind == "reconnected").then_some("2026-11-27T11:00:00Z"),
                "downtimeSeconds": 3_600,
                "gracePeriodSeconds": 300,
                "detectedAt": "2026-11-27T11:00:00Z",
            }))
            .expect("an alert body")
        })
        .collect()
}

#[test]
fn a_full_batch_of_worst_case_ids_stays_within_every_services_limits() {
    // One hub per alert (the most notices), hubs just under the threshold, a full batch of outages.
    for (n, per_hub, kind) in [
        (1_000, 1, "disconnected"),
        (1_000, 19, "reconnected"),
        (5_000, 250, "disconnected"),
    ] {
        let alerts = worst_batch(n, per_hub, kind);

        let body = teams::body(&alerts, 20);
        assert!(
            body.len() < 20_000,
            "{per_hub}: Teams body of {} bytes",
            body.len()
        );
        let env: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(env["attachments"].as_array().unwrap().len(), 1);
        let last = env["attachments"][0]["content"]["body"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["text"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(last.contains("more alerts"), "{per_hub}: {last}");

        let m = slack::message(&alerts, 20);
        let blocks = m["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50);
        assert!(m["text"].as_str().unwrap().chars().count() <= 3_000);
        let mut total = 0;
        for b in blocks {
            if b["type"] == "section" {
                let n = b["text"]["text"].as_str().unwrap().chars().count();
                assert!(n <= 3_000, "{per_hub}: section of {n}");
                total += n;
                for f in b["fields"].as_array().unwrap() {
                    let n = f["text"].as_str().unwrap().chars().count();
                    assert!(n <= 2_000);
                    total += n;
                }
            }
        }
        assert!(total <= 12_000, "{per_hub}: {total}");
        for t in slack_mrkdwn_texts(&m) {
            assert!(!t.contains('<') && !t.contains('>'), "{t}");
        }
        assert!(
            blocks.last().unwrap()["elements"][0]["text"]
                .as_str()
                .unwrap()
                .contains("more alerts"),
            "{per_hub}"
        );

        for ev in pagerduty::events(&alerts, 20, KEY) {
            assert!(ev.dedup_key.len() <= 255);
            if ev.action == "trigger" {
                let s = ev.body["payload"]["summary"].as_str().unwrap();
                assert!(s.chars().count() <= 1_024);
                assert!(ev.body.to_string().len() < 512 * 1024);
            }
        }
    }
}

#[test]
fn pagerduty_sends_one_trigger_per_outage_and_every_resolve() {
    let down = worst_batch(45, 15, "disconnected"); // three hubs of 15
    let evs = pagerduty::events(&down, 10, KEY);
    assert_eq!(evs.len(), 3, "one trigger per hub");
    assert!(evs
        .iter()
        .all(|e| e.action == "trigger" && e.dedup_key.starts_with("cm1o-")));
    let up = worst_batch(45, 15, "reconnected");
    let evs = pagerduty::events(&up, 10, KEY);
    assert_eq!(
        evs.len(),
        3 + 45,
        "an outage resolve per hub, then each identity's"
    );
    assert!(evs.iter().all(|e| e.action == "resolve"));
    assert_eq!(
        evs[0].dedup_key,
        pagerduty::events(&down, 10, KEY)[0].dedup_key
    );
    assert_eq!(evs[1].dedup_key, up[0].dedup_key);
    // Below the threshold every alert is its own event.
    let evs = pagerduty::events(&down[..5], 10, KEY);
    assert_eq!(evs.len(), 5);
    assert_eq!(evs[0].dedup_key, down[0].dedup_key);
}

#[test]
fn flapping_and_reminders_read_as_such_for_people() {
    let alert = |kind: &str, extra: Value| -> AlertBody {
        let mut v = serde_json::json!({
            "kind": kind,
            "dedupKey": "cm1f-0123456789abcdef",
            "hub": "myhub",
            "deviceId": "sensor-42",
            "moduleId": null,
            "disconnectedAt": "2026-11-27T10:00:00Z",
            "reconnectedAt": null,
            "downtimeSeconds": 15_000,
            "gracePeriodSeconds": 300,
            "detectedAt": "2026-11-27T14:10:00Z",
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).expect("an alert body")
    };
    let hint =
        "possible duplicate device identity (400027 ConnectionForcefullyClosedOnNewConnection)";
    let flapping = alert(
        "flapping",
        serde_json::json!({"disconnects": 6, "windowSeconds": 1_800, "hint": hint}),
    );
    let calm = alert(
        "flapping_resolved",
        serde_json::json!({"disconnects": 6, "windowSeconds": 1_800, "reconnectedAt": "2026-11-27T10:20:00Z"}),
    );
    let reminder = alert("reminder", serde_json::json!({}));

    let card = card_in(teams::body(std::slice::from_ref(&flapping), 20).as_bytes());
    assert_eq!(
        card_titles(&card),
        ["🟠 sensor-42 flapping: 6 silent reconnects within 30m (myhub)"]
    );
    let facts = card_facts(&card, 0);
    for fact in [
        ("Silent reconnects", "6"),
        ("Window", "30m"),
        ("Hint", hint),
    ] {
        assert!(facts.contains(&(fact.0.into(), fact.1.into())), "{facts:?}");
    }
    let card = card_in(teams::body(&[calm.clone(), reminder.clone()], 20).as_bytes());
    assert_eq!(
        card_titles(&card),
        [
            "🟢 sensor-42 stable again after flapping (myhub)",
            "🔴 sensor-42 still offline after 4h 10m (myhub)",
        ]
    );
    let m = slack::message(&[flapping.clone(), calm.clone(), reminder.clone()], 20);
    assert_eq!(
        m["blocks"][0]["text"]["text"],
        "🔴 1 device still offline · 🟠 1 flapping · 🟢 1 stable again"
    );

    let evs = pagerduty::events(&[flapping.clone(), reminder, calm], 20, KEY);
    assert_eq!(evs.len(), 2, "no event for a reminder");
    assert_eq!(evs[0].action, "trigger");
    let p = &evs[0].body["payload"];
    assert_eq!(p["severity"], "warning");
    assert_eq!(p["class"], "device-flapping");
    assert_eq!(
        p["summary"],
        format!("sensor-42 flapping on hub myhub: 6 silent reconnects within 30m ({hint})")
    );
    assert_eq!(p["custom_details"]["disconnects"], 6);
    assert_eq!(evs[1].action, "resolve");
    assert_eq!(evs[1].dedup_key, flapping.dedup_key);
}

#[test]
fn a_store_reset_reads_as_such_for_people() {
    let reset: AlertBody = serde_json::from_value(serde_json::json!({
        "kind": "store_reset",
        "dedupKey": "cm1s-0000000000000000000001a24282cdc2",
        "hub": "",
        "deviceId": "",
        "moduleId": null,
        "disconnectedAt": "2026-11-27T10:00:00Z",
        "reconnectedAt": null,
        "downtimeSeconds": 4,
        "gracePeriodSeconds": 300,
        "detectedAt": "2026-11-27T10:00:04Z",
        "detail": "Azure Table Storage table connmon was missing (deleted, or the storage emulator restarted empty) and was created again empty",
    }))
    .expect("an alert body");
    let title = "⚠️ connmon's store came back empty: open outages are forgotten until their devices report again";
    let card = card_in(teams::body(std::slice::from_ref(&reset), 20).as_bytes());
    assert_eq!(card_titles(&card), [title]);
    let facts = card_facts(&card, 0);
    let labels: Vec<&str> = facts.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels, ["Detected", "What", "Means"], "{facts:?}");
    assert_eq!(facts[0].1, "2026-11-27 10:00:00 UTC");
    assert!(
        facts[1].1.contains("table connmon was missing"),
        "{facts:?}"
    );
    assert!(facts[2].1.contains("forgotten"), "{facts:?}");

    let m = slack::message(std::slice::from_ref(&reset), 20);
    assert_eq!(
        m["blocks"][0]["text"]["text"],
        "⚠️ connmon's store came back empty"
    );
    assert!(
        m["text"].as_str().unwrap().contains("came back empty"),
        "{m}"
    );

    let evs = pagerduty::events(std::slice::from_ref(&reset), 20, KEY);
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].action, "trigger");
    assert_eq!(evs[0].dedup_key, reset.dedup_key);
    let p = &evs[0].body["payload"];
    assert_eq!(p["source"], "connmon", "PagerDuty needs a source: {p}");
    assert_eq!(p["severity"], "warning");
    assert_eq!(p["class"], "store-reset");
    assert!(p["summary"].as_str().unwrap().contains("forgotten"), "{p}");
    assert_eq!(p["custom_details"]["detail"], reset.detail.clone().unwrap());
}

// ---------------------------------------------------------------------------------------------
// The Functions queue output binding

#[test]
fn a_declared_queue_output_binding_gets_every_alert_as_one_message_object() {
    let function_json = r#"{"bindings": [
        {"type": "timerTrigger", "name": "timer", "direction": "in", "schedule": "0 * * * * *"},
        {"type": "queue", "direction": "out", "name": "alerts", "queueName": "connmon-alerts",
         "connection": "AzureWebJobsStorage"}
    ]}"#;
    let cm = Connmon::start_with_files(
        Mode::Functions,
        &[("CONNMON_GRACE_PERIOD", "5m")],
        &[("DisconnectTimer/function.json", function_json)],
    );
    assert!(
        cm.stdout().contains("alert channels: queue"),
        "{}",
        cm.stdout()
    );
    cm.event(&disconnected("q-1", 1, &ago(600)));
    cm.event(&disconnected("q-2", 1, &ago(500)).module("$edgeHub"));
    let resp = cm.invoke(
        "DisconnectTimer",
        &fixture_json("host/timer-monitor-on.captured.json"),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let body = resp.json();
    let messages = body["Outputs"]["alerts"]
        .as_array()
        .expect("Outputs.alerts is an array");
    // One message per alert, each a JSON object (a string could be split or base64-decoded).
    assert_eq!(messages.len(), 2, "{body}");
    assert!(messages.iter().all(Value::is_object), "{body}");
    assert_eq!(messages[0]["deviceId"], "q-1");
    assert_eq!(messages[1]["moduleId"], "$edgeHub");
    assert_eq!(messages[0]["kind"], "disconnected");
    assert_eq!(body["ReturnValue"], Value::Null);
    // Handed over once: the next sweep's Outputs carry an empty array.
    let again = cm
        .invoke(
            "DisconnectTimer",
            &fixture_json("host/timer-monitor-on.captured.json"),
        )
        .json();
    assert_eq!(again["Outputs"]["alerts"], serde_json::json!([]));
}

#[test]
fn without_a_queue_binding_the_outputs_stay_empty() {
    let cm = Connmon::functions(&[("CONNMON_GRACE_PERIOD", "5m")]);
    cm.event(&disconnected("q-1", 1, &ago(600)));
    let body = cm
        .invoke(
            "DisconnectTimer",
            &fixture_json("host/timer-monitor-on.captured.json"),
        )
        .json();
    assert_eq!(body["Outputs"], serde_json::json!({}));
}

// ---------------------------------------------------------------------------------------------
// Receivers that answer without end

/// Every channel's receiver answers `code` with a body that does not end (64 MiB as fast as it is
/// read, then silence): connmon reads a short prefix of each answer and stops, so the sweep is
/// prompt and the process's peak memory stays small. Read whole, the answers took the 10 s
/// timeout and hundreds of MiB.
fn endless_answers(code: u16) -> (Sweep, Duration, u64, u64) {
    let endless = || Receiver::start_then(vec![], Answer::Endless(code));
    // One attempt per channel: the subject is how much of an answer is read, not the retries.
    let rig = Rig::with(
        endless(),
        endless(),
        endless(),
        endless(),
        &[("CONNMON_QUICK_RETRY_FOR", "0s")],
    );
    rig.cm.event(&disconnected("endless", 1, &ago(600)));
    let before = rig.cm.peak_rss_kib();
    let started = Instant::now();
    let sweep = rig.cm.sweep();
    let took = started.elapsed();
    let after = rig.cm.peak_rss_kib();
    rig.assert_no_secret();
    (sweep, took, before, after)
}

/// Peak memory (KiB) the sweeps below may add: four answers' prefixes are a few hundred KiB.
const ENDLESS_RSS_GROWTH_KIB: u64 = 16 << 10;

#[test]
fn an_endless_200_is_read_only_as_far_as_needed() {
    let (s, took, before, after) = endless_answers(200);
    eprintln!("endless 200: sweep {took:?}, VmHWM {before} KiB -> {after} KiB");
    // Any 2xx delivers for the webhook, Teams and PagerDuty (its answer is not JSON); Slack wants
    // `ok` and gets something else, so its alert waits for a retry.
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 3, 1), "{s:?}");
    assert!(
        s.logs[0].contains("slack: HTTP 200 without `ok` (xxxx"),
        "{s:?}"
    );
    assert!(took < Duration::from_secs(3), "the sweep took {took:?}");
    assert!(
        after < before + ENDLESS_RSS_GROWTH_KIB,
        "VmHWM {before} KiB -> {after} KiB"
    );
}

#[test]
fn an_endless_500_is_read_only_as_far_as_needed() {
    let (s, took, before, after) = endless_answers(500);
    eprintln!("endless 500: sweep {took:?}, VmHWM {before} KiB -> {after} KiB");
    assert_eq!((s.new_alerts, s.delivered, s.queued), (1, 0, 4), "{s:?}");
    for ch in ["webhook", "teams", "slack", "pagerduty"] {
        assert!(s.logs[0].contains(&format!("{ch}: HTTP 500 xxxx")), "{s:?}");
    }
    assert!(took < Duration::from_secs(3), "the sweep took {took:?}");
    assert!(
        after < before + ENDLESS_RSS_GROWTH_KIB,
        "VmHWM {before} KiB -> {after} KiB"
    );
}
