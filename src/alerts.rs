//! Alert output: the wire body of design.md ([`AlertBody`]), the one-line log form, and delivery of
//! the outbox to the generic webhook ([`Notifier`]).
//!
//! Delivery is at-least-once: alerts leave the outbox only after a 2xx. A failure backs the whole
//! destination off (alerts stay in order), is logged once per distinct problem rather than once per
//! alert, and never prints the webhook URL (it carries the credential).

use crate::log;
use crate::machine::{Alert, AlertKind};
use crate::model::Timestamp;
use crate::settings::Secret;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;

/// One element of the webhook body's `alerts` array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertBody {
    pub kind: String,
    pub dedup_key: String,
    pub hub: String,
    pub device_id: String,
    pub module_id: Option<String>,
    pub disconnected_at: String,
    pub reconnected_at: Option<String>,
    pub downtime_seconds: i64,
    pub grace_period_seconds: i64,
    pub detected_at: String,
}

impl From<&Alert> for AlertBody {
    fn from(a: &Alert) -> Self {
        AlertBody {
            kind: a.kind.as_str().to_string(),
            dedup_key: a.dedup_key.clone(),
            hub: a.identity.hub().to_string(),
            device_id: a.identity.device().to_string(),
            module_id: a.identity.module().map(str::to_string),
            disconnected_at: a.disconnected_at.to_rfc3339(),
            reconnected_at: a.reconnected_at.map(Timestamp::to_rfc3339),
            downtime_seconds: a.downtime_seconds,
            grace_period_seconds: a.grace_period_seconds,
            detected_at: a.detected_at.to_rfc3339(),
        }
    }
}

/// The alert as one log line. Ids are quoted with escapes so a forged id cannot fake log lines.
pub fn log_line(a: &Alert) -> String {
    let module = match a.identity.module() {
        Some(m) => format!(" module={m:?}"),
        None => String::new(),
    };
    let what = match a.kind {
        AlertKind::Disconnected => format!(
            "offline since {} ({}s, grace {}s)",
            a.disconnected_at, a.downtime_seconds, a.grace_period_seconds
        ),
        AlertKind::Reconnected => format!(
            "back online at {} after {}s offline",
            a.reconnected_at.unwrap_or(a.detected_at),
            a.downtime_seconds
        ),
    };
    format!(
        "{} hub={:?} device={:?}{module} {what} dedupKey={}",
        a.kind.as_str(),
        a.identity.hub(),
        a.identity.device(),
        a.dedup_key
    )
}

/// Alerts per webhook request: keeps bodies well under a megabyte (about 400 bytes each).
const BATCH: usize = 500;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What one delivery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivered: usize,
    /// Alerts whose delivery failed in this pass and wait for a retry.
    pub deferred: usize,
    /// The reason of the failure, safe to log (no URL).
    pub problem: Option<String>,
}

/// How a failed attempt should be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// Network error, timeout, 5xx, 408: short exponential back-off.
    Transient(String),
    /// 429 or 503, possibly with `Retry-After`.
    Throttled(String, Option<Duration>),
    /// Any other 4xx: the receiver is misconfigured. Keep the alerts, retry slowly, log loudly.
    Rejected(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Transient(m) | Failure::Throttled(m, _) | Failure::Rejected(m) => m,
        }
    }

    /// Delay before the next attempt, after `attempts` failed ones (1 = the first failure).
    fn backoff(&self, attempts: u32) -> Duration {
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
}

struct Webhook {
    url: Secret<String>,
    client: reqwest::Client,
}

/// Delivers queued alerts. Without a webhook the log is the only channel, and an alert counts as
/// delivered once logged (which happened when it was raised).
pub struct Notifier {
    webhook: Option<Webhook>,
    /// The last delivery problem logged, so a down receiver costs one log line, not one per sweep.
    last_problem: Mutex<Option<String>>,
}

impl Notifier {
    pub fn new(webhook_url: Option<Secret<String>>) -> Notifier {
        let webhook = webhook_url.map(|url| Webhook {
            url,
            client: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("connmon/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("a reqwest client with static settings builds"),
        });
        Notifier {
            webhook,
            last_problem: Mutex::new(None),
        }
    }

    /// Sends everything in the outbox that is due, oldest first, until it is empty or the webhook
    /// fails. Store errors end the pass; queued alerts then wait for the next one.
    pub async fn deliver(
        &self,
        store: &dyn Store,
        now: Timestamp,
    ) -> Result<DeliveryReport, StoreError> {
        let mut report = DeliveryReport::default();
        loop {
            let batch = store.queued(now, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            let ids: Vec<String> = batch.iter().map(|q| q.id.clone()).collect();
            let Some(hook) = &self.webhook else {
                report.delivered += ids.len();
                store.delivered(ids).await?;
                continue;
            };
            match post(hook, &batch).await {
                Ok(()) => {
                    report.delivered += ids.len();
                    store.delivered(ids).await?;
                    self.note_recovered();
                }
                Err(failure) => {
                    let attempts = batch.iter().map(|q| q.attempts).max().unwrap_or(0) + 1;
                    let wait = failure.backoff(attempts);
                    report.deferred += ids.len();
                    report.problem = Some(failure.message().to_string());
                    self.note_problem(&failure, wait);
                    // Back off from when the attempt failed (up to 10 s after `now`).
                    let failed_at = Timestamp::now().max(now);
                    store
                        .failed(ids, failed_at.plus_millis(wait.as_millis() as i64))
                        .await?;
                    break;
                }
            }
            if batch.len() < BATCH {
                break;
            }
        }
        Ok(report)
    }

    fn note_problem(&self, failure: &Failure, wait: Duration) {
        let mut last = self.last_problem.lock().expect("not poisoned");
        if last.as_deref() != Some(failure.message()) {
            let advice = match failure {
                Failure::Rejected(_) => {
                    " — the receiver refuses the request: check its configuration; alerts stay queued"
                }
                _ => "; alerts stay queued",
            };
            log::warn(format_args!(
                "alert webhook delivery failed: {}{advice}; next attempt in {}s",
                failure.message(),
                wait.as_secs()
            ));
            *last = Some(failure.message().to_string());
        }
    }

    fn note_recovered(&self) {
        let mut last = self.last_problem.lock().expect("not poisoned");
        if last.take().is_some() {
            log::info("alert webhook delivery works again");
        }
    }
}

async fn post(hook: &Webhook, batch: &[crate::store::QueuedAlert]) -> Result<(), Failure> {
    // The bodies were serialised when queued; splice them rather than re-encode.
    let mut body =
        String::with_capacity(batch.iter().map(|q| q.body.len() + 1).sum::<usize>() + 16);
    body.push_str("{\"alerts\":[");
    for (i, q) in batch.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&q.body);
    }
    body.push_str("]}");
    let resp = hook
        .client
        .post(hook.url.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::Transient(describe(e)))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let msg = format!("HTTP {}", status.as_u16());
    Err(match status.as_u16() {
        429 | 503 => Failure::Throttled(msg, retry_after),
        408 => Failure::Transient(msg),
        400..=499 => Failure::Rejected(msg),
        _ => Failure::Transient(msg),
    })
}

/// A transport error as text without the URL (which holds the webhook's credential).
fn describe(e: reqwest::Error) -> String {
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
