//! Alert channels and the [`Notifier`] that drains the outbox into them.
//!
//! Every alert is queued once per configured channel (see `StoreConfig::channels`); each channel is
//! then delivered on its own: oldest first, in batches of its own size, with its own back-off. A
//! channel that is down never blocks the others, and nothing leaves the outbox before the channel
//! accepted it (at-least-once). Problems are logged once per channel and distinct problem, never
//! with the destination URL or key (they carry the credential).
//!
//! | channel | file | what it sends |
//! |---|---|---|
//! | `webhook` | `webhook.rs` | the generic `{"alerts": [...]}` batch of design.md, plus `outage` summaries |
//! | `teams` | `teams.rs` | one Adaptive Card 1.4 per batch through a Workflows webhook |
//! | `slack` | `slack.rs` | one Block Kit message per batch through an incoming webhook |
//! | `pagerduty` | `pagerduty.rs` | Events API v2 `trigger` / `resolve` events, one per notice |
//! | `queue` | `queue.rs` | the timer invocation's `Outputs` for a declared queue binding |
//! | `log` | here | nothing: alerts are logged when raised; used when no other channel is set |
//!
//! The three channels for people group a batch's alerts per hub (`grouping.rs`) and share their
//! wording in `people.rs`.

pub mod grouping;
pub mod pagerduty;
pub mod people;
pub mod queue;
pub mod slack;
pub mod teams;
pub mod webhook;

use crate::alerts::AlertBody;
use crate::answer;
use crate::log;
use crate::model::Timestamp;
use crate::store::{BoxFuture, DeadLetter, QueuedAlert, Store, StoreError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Per-request timeout for HTTP channels: a slow receiver is a failed delivery (design.md).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a send failed, and so how to retry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Network error, timeout, 5xx, 408: short exponential back-off.
    Transient(String),
    /// 429 or 503, possibly with `Retry-After`.
    Throttled(String, Option<Duration>),
    /// The receiver refuses the request (a 4xx other than 408/429): it is misconfigured. Keep the
    /// alerts, retry slowly, log loudly.
    Rejected(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Throttled(m, _) | Failure::Rejected(m) => m,
        }
    }

    /// Delay before the next attempt, after `attempts` failed ones (1 = the first failure).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let exp = |base: u64, cap: u64| {
            let shift = attempts.saturating_sub(1).min(20);
            Duration::from_secs(base.saturating_mul(1u64 << shift).min(cap))
        };
        match self {
            Failure::Transient(_) => exp(10, 600),
            Failure::Throttled(_, after) => {
                let b = exp(30, 600);
                after.map_or(b, |a| {
                    a.clamp(Duration::from_secs(1), Duration::from_secs(3600))
                })
            }
            Failure::Rejected(_) => exp(300, 3600),
        }
    }

    /// Classifies an HTTP status that is not a success.
    pub fn from_status(status: u16, retry_after: Option<Duration>, detail: &str) -> Failure {
        let msg = if detail.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status} {detail}")
        };
        match status {
            429 | 503 => Failure::Throttled(msg, retry_after),
            408 => Failure::Transient(msg),
            400..=499 => Failure::Rejected(msg),
            _ => Failure::Transient(msg),
        }
    }
}

/// One destination for alerts.
pub trait Channel: Send + Sync {
    /// The name alerts are queued under, and that logs show.
    fn name(&self) -> &'static str;
    /// Most alerts handed to one `send`.
    fn batch_size(&self) -> usize {
        500
    }
    /// Delivers `alerts` (oldest first); `Ok` only when the destination accepted all of them.
    fn send<'a>(&'a self, alerts: &'a [AlertBody]) -> BoxFuture<'a, Result<(), Failure>>;
}

/// The `log` channel: alerts were logged when raised, so there is nothing left to do.
pub struct LogOnly;

impl Channel for LogOnly {
    fn name(&self) -> &'static str {
        "log"
    }
    fn send<'a>(&'a self, _: &'a [AlertBody]) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async { Ok(()) })
    }
}

/// A shared HTTP client for the channels: timeouts, no redirects (a redirect could forward the
/// credential in the URL elsewhere), a recognisable user agent.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("connmon/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a reqwest client with static settings builds")
}

/// A transport error as text without the URL (which holds the credential).
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let what = if e.is_timeout() {
        "no answer within 10s".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut detail = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    if detail.is_empty() {
        what
    } else {
        format!("{what} ({detail})")
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare for webhooks and treated as absent).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// POSTs a JSON body; any 2xx is success unless `accept` says otherwise about the answer's body,
/// of which only the first [`answer::PREFIX`] bytes are read (a receiver answering without end
/// costs that much and no time). Every failure's text is scrubbed of `secrets` (see
/// [`people::url_secrets`]) before anything is shortened, so an answer that echoes the credential
/// cannot leak even part of it: the failure texts keep a few dozen characters of the prefix's
/// start, so a credential cut in two where the prefix ends never reaches them.
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: String,
    secrets: &[String],
    accept: impl Fn(u16, &str) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let resp = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| people::scrub(Failure::Transient(describe(e)), secrets))?;
    let status = resp.status().as_u16();
    let after = retry_after(resp.headers());
    let body = answer::prefix(resp, answer::PREFIX)
        .await
        .unwrap_or_default();
    let text = people::scrub_text(String::from_utf8_lossy(&body).into_owned(), secrets);
    if (200..300).contains(&status) {
        return accept(status, &text).map_err(|f| people::scrub(f, secrets));
    }
    // Service error bodies are short codes (`no_text`, `invalid_payload`); keep at most a few words.
    let detail: String = text.chars().take(80).filter(|c| !c.is_control()).collect();
    Err(Failure::from_status(status, after, detail.trim()))
}

/// What one delivery pass did, over all channels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivered: usize,
    /// Deliveries that failed in this pass and wait for a retry.
    pub deferred: usize,
    /// `channel: reason` of each failing channel, safe to log (no URL or key).
    pub problems: Vec<String>,
    /// Alert objects for the timer invocation's queue output binding, when one is declared.
    pub outputs: Vec<serde_json::Value>,
    /// `(channel, kind, alerts)` accepted in this pass (for the metrics).
    pub delivered_by: Vec<(String, String, usize)>,
    /// Channels whose delivery failed in this pass, once per failed batch.
    pub failed_channels: Vec<String>,
    /// Outbox entries set aside as dead letters in this pass (unreadable: never sent).
    pub dead_lettered: usize,
}

struct Slot {
    channel: Box<dyn Channel>,
    /// The last problem logged for this channel: a down receiver costs one line, not one a sweep.
    last_problem: Mutex<Option<String>>,
}

/// Delivers the outbox to every channel.
pub struct Notifier {
    slots: Vec<Arc<Slot>>,
    queue: Option<Arc<queue::QueueOutput>>,
}

impl Notifier {
    /// `channels` must match the names the store queues alerts under. The queue output, if any, is
    /// also among `channels` (as `queue`).
    pub fn new(
        channels: Vec<Box<dyn Channel>>,
        queue: Option<Arc<queue::QueueOutput>>,
    ) -> Notifier {
        Notifier {
            slots: channels
                .into_iter()
                .map(|channel| {
                    Arc::new(Slot {
                        channel,
                        last_problem: Mutex::new(None),
                    })
                })
                .collect(),
            queue,
        }
    }

    /// The queue output binding's name, when the timer function declares one.
    pub fn queue_binding(&self) -> Option<&str> {
        self.queue.as_deref().map(queue::QueueOutput::binding)
    }

    /// The channel names, in order (what the store must queue for).
    pub fn channel_names(&self) -> Vec<String> {
        self.slots
            .iter()
            .map(|s| s.channel.name().to_string())
            .collect()
    }

    /// Drains every channel's due alerts, channels concurrently. Store errors end that channel's
    /// pass (its alerts wait for the next) and are returned after the others finished.
    pub async fn deliver(
        &self,
        store: Arc<dyn Store>,
        now: Timestamp,
    ) -> Result<DeliveryReport, StoreError> {
        let mut tasks = tokio::task::JoinSet::new();
        for slot in &self.slots {
            let (slot, store) = (slot.clone(), store.clone());
            tasks.spawn(async move { drain(&slot, store.as_ref(), now).await });
        }
        let mut report = DeliveryReport::default();
        let mut first_err = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(r)) => {
                    report.delivered += r.delivered;
                    report.deferred += r.deferred;
                    report.problems.extend(r.problems);
                    report.delivered_by.extend(r.delivered_by);
                    report.failed_channels.extend(r.failed_channels);
                    report.dead_lettered += r.dead_lettered;
                }
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(StoreError::Unavailable(format!(
                        "delivery task failed: {e}"
                    )));
                }
            }
        }
        if let Some(q) = &self.queue {
            report.outputs = q.take();
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

/// One channel's pass: batches oldest first until its queue is empty or a send fails.
async fn drain(
    slot: &Slot,
    store: &dyn Store,
    now: Timestamp,
) -> Result<DeliveryReport, StoreError> {
    let ch = slot.channel.as_ref();
    let mut report = DeliveryReport::default();
    loop {
        let batch: Vec<QueuedAlert> = store.queued(ch.name(), now, ch.batch_size()).await?;
        if batch.is_empty() {
            break;
        }
        let (ids, bodies) = set_aside_unreadable(store, &batch, now, &mut report).await?;
        if bodies.is_empty() {
            if batch.len() < ch.batch_size() {
                break;
            }
            continue;
        }
        match ch.send(&bodies).await {
            Ok(()) => {
                report.delivered += ids.len();
                for b in &bodies {
                    match report
                        .delivered_by
                        .iter_mut()
                        .find(|(_, k, _)| *k == b.kind)
                    {
                        Some((_, _, n)) => *n += 1,
                        None => {
                            report
                                .delivered_by
                                .push((ch.name().to_string(), b.kind.clone(), 1))
                        }
                    }
                }
                store.delivered(ids).await?;
                if slot
                    .last_problem
                    .lock()
                    .expect("not poisoned")
                    .take()
                    .is_some()
                {
                    log::info(format_args!("alert channel {} delivers again", ch.name()));
                }
            }
            Err(failure) => {
                let attempts = batch.iter().map(|q| q.attempts).max().unwrap_or(0) + 1;
                let wait = failure.backoff(attempts);
                report.deferred += ids.len();
                report.failed_channels.push(ch.name().to_string());
                report
                    .problems
                    .push(format!("{}: {}", ch.name(), failure.message()));
                note_problem(slot, &failure, wait);
                // Back off from when the attempt failed (up to 10 s after `now`).
                let failed_at = Timestamp::now().max(now);
                store
                    .failed(ids, failed_at.plus_millis(wait.as_millis() as i64))
                    .await?;
                break;
            }
        }
        if batch.len() < ch.batch_size() {
            break;
        }
    }
    Ok(report)
}

/// The readable part of a batch (ids and bodies, in order); every entry whose body is not an
/// alert is moved to the dead letters instead — never sent, never counted as delivered, never
/// retried — so it cannot block or fake the delivery of the rest.
async fn set_aside_unreadable(
    store: &dyn Store,
    batch: &[QueuedAlert],
    now: Timestamp,
    report: &mut DeliveryReport,
) -> Result<(Vec<String>, Vec<AlertBody>), StoreError> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut bodies = Vec::with_capacity(batch.len());
    let mut dead = Vec::new();
    for q in batch {
        match read_body(&q.body) {
            Ok(b) => {
                ids.push(q.id.clone());
                bodies.push(b);
            }
            Err(reason) => dead.push(DeadLetter {
                id: q.id.clone(),
                reason,
            }),
        }
    }
    if !dead.is_empty() {
        report.dead_lettered += dead.len();
        store.dead_letter(dead, now).await?;
    }
    Ok((ids, bodies))
}

/// A stored body as an alert, or why it is not one.
fn read_body(body: &str) -> Result<AlertBody, String> {
    if body.trim().is_empty() {
        return Err("the entry has no body".into());
    }
    serde_json::from_str(body).map_err(|e| format!("the body is not an alert: {e}"))
}

fn note_problem(slot: &Slot, failure: &Failure, wait: Duration) {
    let mut last = slot.last_problem.lock().expect("not poisoned");
    if last.as_deref() != Some(failure.message()) {
        let advice = match failure {
            Failure::Rejected(_) => {
                " — the receiver refuses the request: check its configuration; alerts stay queued"
            }
            _ => "; alerts stay queued",
        };
        log::warn(format_args!(
            "alert channel {} delivery failed: {}{advice}; next attempt in {}s",
            slot.channel.name(),
            failure.message(),
            wait.as_secs()
        ));
        *last = Some(failure.message().to_string());
    }
}
