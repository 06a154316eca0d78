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
//! | `webhook` | `webhook.rs` | the generic `{"alerts": [...]}` batch of docs/rules.md, plus `outage` summaries |
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
use crate::store::{BoxFuture, DeadLetter, QueuedAlert, Store, StoreError, LEASE_RENEW_EVERY};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Per-request timeout for HTTP channels: a slow receiver is a failed delivery (docs/rules.md, the alert body).
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

/// How long one delivery attempt keeps retrying a transient failure quickly (the default of
/// `CONNMON_QUICK_RETRY_FOR`): a receiver that restarts or is redeployed is back within it, and
/// its alerts arrive seconds later instead of after the durable back-off.
pub const QUICK_RETRY_FOR: Duration = Duration::from_secs(30);
/// The longest wait between two quick retries (they wait 1 s, 2 s, 4 s, then this): a receiver
/// back within the quick-retry time has its alerts within this long, plus one request.
const QUICK_RETRY_MAX_WAIT: Duration = Duration::from_secs(8);

/// The wait before quick retry number `retry` (1 for the first) of a batch whose last attempt
/// failed with `failure`, `elapsed` after its first attempt began; `None` when it would end past
/// `budget` or the failure is not worth retrying soon (a refusal): the durable back-off takes
/// over. A `Retry-After` is honoured as it is (a second at least).
fn quick_wait(
    failure: &Failure,
    retry: u32,
    elapsed: Duration,
    budget: Duration,
) -> Option<Duration> {
    let wait = match failure {
        Failure::Rejected(_) => return None,
        Failure::Throttled(_, Some(after)) => (*after).max(Duration::from_secs(1)),
        Failure::Throttled(_, None) | Failure::Transient(_) => {
            let shift = retry.saturating_sub(1).min(3);
            Duration::from_secs(1 << shift).min(QUICK_RETRY_MAX_WAIT)
        }
    };
    (elapsed + wait <= budget).then_some(wait)
}

/// What delivery did, over all channels: one pass, or every pass since a sweep last reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivered: usize,
    /// Deliveries that failed and wait for a retry.
    pub deferred: usize,
    /// `channel: reason` of each failing channel, safe to log (no URL or key).
    pub problems: Vec<String>,
    /// Alert objects for the timer invocation's queue output binding, when one is declared.
    pub outputs: Vec<serde_json::Value>,
    /// `(channel, kind, alerts)` accepted (for the metrics).
    pub delivered_by: Vec<(String, String, usize)>,
    /// Channels whose delivery failed, once per failed batch.
    pub failed_channels: Vec<String>,
    /// Channels whose pass a sweep stopped waiting for: they go on delivering in the background
    /// and the next sweep reports what they did.
    pub still_delivering: Vec<String>,
    /// Store failures of background passes (already logged; those channels try again later).
    pub store_failures: usize,
    /// Outbox entries set aside as dead letters in this pass (unreadable: never sent).
    pub dead_lettered: usize,
}

impl DeliveryReport {
    /// Adds `o`'s figures to these (its outputs are not carried: they belong to one invocation).
    fn absorb(&mut self, o: DeliveryReport) {
        self.delivered += o.delivered;
        self.deferred += o.deferred;
        self.problems.extend(o.problems);
        for (c, k, n) in o.delivered_by {
            match self
                .delivered_by
                .iter_mut()
                .find(|(c2, k2, _)| *c2 == c && *k2 == k)
            {
                Some((_, _, m)) => *m += n,
                None => self.delivered_by.push((c, k, n)),
            }
        }
        self.failed_channels.extend(o.failed_channels);
        self.still_delivering.extend(o.still_delivering);
        self.store_failures += o.store_failures;
        self.dead_lettered += o.dead_lettered;
    }
}

struct Slot {
    channel: Box<dyn Channel>,
    /// The last problem logged for this channel: a down receiver costs one line, not one a sweep.
    last_problem: Mutex<Option<String>>,
    /// Passes asked of this channel's worker so far (see [`Notifier::kick`]).
    kicks: AtomicU64,
    kicked: tokio::sync::Notify,
    /// The number of kicks that had been asked when the last finished pass began.
    finished: tokio::sync::watch::Sender<u64>,
    /// What the worker's passes did since a sweep last collected it.
    unreported: Mutex<DeliveryReport>,
}

/// Delivers the outbox to every channel. Each channel has a worker of its own, a task that drains
/// the channel's queue whenever it is kicked — by a sweep, or by itself when a back-off or another
/// instance's lease ends — so a channel whose receiver hangs never delays another channel's
/// deliveries, nor the next sweep's claims. Events do not kick it: a `reconnected` goes out with the
/// next sweep's batch, so a storm of reconnects is still one message for people. The queue output
/// binding is the exception: its alerts must travel in the timer invocation's own `Outputs`, so a
/// sweep drains it itself.
pub struct Notifier {
    slots: Vec<Arc<Slot>>,
    queue: Option<Arc<queue::QueueOutput>>,
    /// How long one delivery attempt retries quickly (`CONNMON_QUICK_RETRY_FOR`).
    quick: Duration,
    /// Set once the workers run (they start with the first kick, inside the runtime).
    started: std::sync::OnceLock<()>,
}

/// What a sweep waits for: the pass of each worker that began after the sweep's kick.
pub struct Tickets(Vec<u64>);

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
                        kicks: AtomicU64::new(0),
                        kicked: tokio::sync::Notify::new(),
                        finished: tokio::sync::watch::Sender::new(0),
                        unreported: Mutex::new(DeliveryReport::default()),
                    })
                })
                .collect(),
            queue,
            quick: QUICK_RETRY_FOR,
            started: std::sync::OnceLock::new(),
        }
    }

    /// How long one delivery attempt retries quickly before the durable back-off (zero: never).
    pub fn with_quick_retries(mut self, budget: Duration) -> Notifier {
        self.quick = budget;
        self
    }

    /// The longest a timer invocation waits for the channels: every quick retry of a pass, one
    /// more request that runs into its timeout, and a margin for the store. Under a minute with
    /// the largest `CONNMON_QUICK_RETRY_FOR`, so one invocation ends before the next is due.
    pub fn delivery_wait(&self) -> Duration {
        self.quick + HTTP_TIMEOUT + Duration::from_secs(10)
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

    fn is_queue(slot: &Slot) -> bool {
        slot.channel.name() == "queue"
    }

    /// One pass over every channel, channels concurrently, joined: what a test with a moved clock
    /// drives. Store errors end that channel's pass (its alerts wait for the next) and are returned
    /// after the others finished.
    pub async fn deliver(
        &self,
        store: Arc<dyn Store>,
        now: Timestamp,
    ) -> Result<DeliveryReport, StoreError> {
        let mut tasks = tokio::task::JoinSet::new();
        for slot in &self.slots {
            let (slot, store, quick) = (slot.clone(), store.clone(), self.quick);
            tasks.spawn(async move { drain(&slot, store.as_ref(), now, quick).await });
        }
        let mut report = DeliveryReport::default();
        let mut first_err = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(pass)) => report.absorb(pass.report),
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

    /// Asks every channel's worker (the queue output's excepted) for a pass, starting the workers
    /// on first use; returns what to wait on.
    pub fn kick(&self, store: &Arc<dyn Store>) -> Tickets {
        self.started.get_or_init(|| {
            for slot in self.slots.iter().filter(|s| !Notifier::is_queue(s)) {
                tokio::spawn(work(slot.clone(), store.clone(), self.quick));
            }
        });
        Tickets(
            self.slots
                .iter()
                .map(|slot| {
                    if Notifier::is_queue(slot) {
                        return 0;
                    }
                    let ticket = slot.kicks.fetch_add(1, Ordering::SeqCst) + 1;
                    slot.kicked.notify_one();
                    ticket
                })
                .collect(),
        )
    }

    /// A sweep's delivery after its [`Notifier::kick`]: drains the queue output here (its alerts
    /// go in this invocation's `outputs`), waits up to `wait` for each worker's pass that began
    /// after the kick, and reports everything the workers did since the last report. A channel
    /// still busy then is named in `still_delivering` and goes on in the background.
    pub async fn collect(
        &self,
        store: &Arc<dyn Store>,
        now: Timestamp,
        tickets: Tickets,
        wait: Duration,
    ) -> Result<DeliveryReport, StoreError> {
        let mut report = DeliveryReport::default();
        for slot in self.slots.iter().filter(|s| Notifier::is_queue(s)) {
            report.absorb(drain(slot, store.as_ref(), now, self.quick).await?.report);
        }
        let deadline = tokio::time::Instant::now() + wait;
        for (slot, ticket) in self.slots.iter().zip(tickets.0) {
            // Not waiting at all (the standalone ticker) is not a channel still busy.
            if Notifier::is_queue(slot) || wait.is_zero() {
                continue;
            }
            let mut finished = slot.finished.subscribe();
            let done = tokio::time::timeout_at(deadline, finished.wait_for(|f| *f >= ticket));
            if !matches!(done.await, Ok(Ok(_))) {
                report
                    .still_delivering
                    .push(slot.channel.name().to_string());
            }
        }
        for slot in &self.slots {
            let mut unreported = slot.unreported.lock().expect("not poisoned");
            report.absorb(std::mem::take(&mut *unreported));
        }
        if let Some(q) = &self.queue {
            report.outputs = q.take();
        }
        Ok(report)
    }
}

/// A channel's worker: a pass whenever it is kicked, or when what held its queue back (a back-off,
/// another instance's lease) ends. Runs as long as the runtime.
async fn work(slot: Arc<Slot>, store: Arc<dyn Store>, quick: Duration) {
    let mut wake: Option<Timestamp> = None;
    loop {
        match wake {
            Some(at) => {
                let ms = (at.unix_millis() - Timestamp::now().unix_millis()).max(0) as u64;
                tokio::select! {
                    _ = slot.kicked.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                }
            }
            None => slot.kicked.notified().await,
        }
        let ticket = slot.kicks.load(Ordering::SeqCst);
        let now = Timestamp::now();
        let done = match drain(&slot, store.as_ref(), now, quick).await {
            Ok(pass) => {
                wake = pass.wake;
                pass.report
            }
            Err(e) => {
                log::error(format_args!(
                    "alert channel {} cannot read its queue, trying again in 10s: {e}",
                    slot.channel.name()
                ));
                wake = Some(now.plus_millis(10_000));
                DeliveryReport {
                    store_failures: 1,
                    ..DeliveryReport::default()
                }
            }
        };
        slot.unreported.lock().expect("not poisoned").absorb(done);
        slot.finished.send_replace(ticket);
    }
}

/// One channel's pass, and when the channel next has something due that it held back.
struct Pass {
    report: DeliveryReport,
    wake: Option<Timestamp>,
}

/// Renews the lease on `ids` every [`LEASE_RENEW_EVERY`] while `work` runs (the clock reads
/// `leased_at` when it starts), keeping `ids` current; `None` when a renewal finds the lease lost.
///
/// A lost lease means that this instance could not renew in time (a pause, a store that did not
/// answer for a whole lease) and another instance took the batch over: that instance now sends it
/// and removes it from the outbox. So `work` is abandoned — an in-flight POST is dropped, since
/// letting it finish could only add a duplicate — and the batch is neither marked delivered (the
/// removal is conditional on the lease's ETag, which the new holder's lease replaced) nor failed
/// (its back-off is the new holder's to record). What this instance still held of the batch
/// becomes free when its lease ends. A renewal that fails for another reason is tried again at
/// the next tick: two in a row may fail before the lease can run out.
async fn hold<T>(
    store: &dyn Store,
    ids: &mut Vec<String>,
    leased_at: Timestamp,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(work);
    let started = tokio::time::Instant::now();
    let mut renew = tokio::time::interval_at(started + LEASE_RENEW_EVERY, LEASE_RENEW_EVERY);
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Some(out),
            _ = renew.tick() => {
                let now = leased_at.plus_millis(started.elapsed().as_millis() as i64);
                match store.renew(ids.clone(), now).await {
                    Ok(Some(renewed)) => *ids = renewed,
                    Ok(None) => return None,
                    Err(e) => log::warn(format_args!(
                        "cannot renew a delivery's lease, trying again in {}s: {e}",
                        LEASE_RENEW_EVERY.as_secs()
                    )),
                }
            }
        }
    }
}

/// Sends `bodies`, retrying quickly (see [`quick_wait`]) for up to `quick`; the last result.
async fn send_retrying(
    ch: &dyn Channel,
    bodies: &[AlertBody],
    quick: Duration,
) -> Result<(), Failure> {
    let started = tokio::time::Instant::now();
    let mut retry = 0;
    loop {
        let failure = match ch.send(bodies).await {
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        retry += 1;
        match quick_wait(&failure, retry, started.elapsed(), quick) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return Err(failure),
        }
    }
}

/// One channel's pass: batches oldest first until its queue is empty or a send fails. Each batch
/// is leased when it is taken (at `now` or the real time, whichever is later) and the lease is
/// renewed while it is being sent, however long that takes.
async fn drain(
    slot: &Slot,
    store: &dyn Store,
    now: Timestamp,
    quick: Duration,
) -> Result<Pass, StoreError> {
    let ch = slot.channel.as_ref();
    let mut report = DeliveryReport::default();
    let wake = loop {
        let leased_at = now.max(Timestamp::now());
        let batch: Vec<QueuedAlert> = store.queued(ch.name(), leased_at, ch.batch_size()).await?;
        if batch.is_empty() {
            break store.held_back_until(ch.name());
        }
        let (mut ids, bodies) = set_aside_unreadable(store, &batch, leased_at, &mut report).await?;
        if bodies.is_empty() {
            if batch.len() < ch.batch_size() {
                break store.held_back_until(ch.name());
            }
            continue;
        }
        // Quick retries are for a batch's first attempt: once it failed, a receiver that stays
        // down costs one request per durable back-off, not a series each time.
        let quick = if batch.iter().all(|q| q.attempts == 0) {
            quick
        } else {
            Duration::ZERO
        };
        let Some(sent) = hold(
            store,
            &mut ids,
            leased_at,
            send_retrying(ch, &bodies, quick),
        )
        .await
        else {
            log::warn(format_args!(
                "alert channel {}: another instance took over a batch this one held too long; it delivers it",
                ch.name()
            ));
            break None;
        };
        match sent {
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
                // Back off from when the attempt failed (never before the clock the pass was given).
                let failed_at = Timestamp::now().max(leased_at);
                let next = failed_at.plus_millis(wait.as_millis() as i64);
                store.failed(ids, next).await?;
                break Some(next);
            }
        }
        if batch.len() < ch.batch_size() {
            break store.held_back_until(ch.name());
        }
    };
    Ok(Pass { report, wake })
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

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: Duration = QUICK_RETRY_FOR;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn quick_retries_wait_1_2_4_then_8_seconds_within_the_budget() {
        let f = Failure::Transient("HTTP 500".into());
        let mut elapsed = Duration::ZERO;
        let mut waits = Vec::new();
        for retry in 1.. {
            match quick_wait(&f, retry, elapsed, BUDGET) {
                Some(w) => {
                    waits.push(w.as_secs());
                    elapsed += w;
                }
                None => break,
            }
        }
        assert_eq!(waits, [1, 2, 4, 8, 8], "the last retry starts at 23 s");
        // A receiver back within the budget waits at most 8 s for the next try.
        assert!(waits.iter().all(|w| *w <= QUICK_RETRY_MAX_WAIT.as_secs()));
    }

    #[test]
    fn throttling_is_retried_quickly_and_retry_after_is_honoured_as_it_is() {
        let teams = Failure::Throttled("HTTP 429".into(), None);
        assert_eq!(quick_wait(&teams, 1, Duration::ZERO, BUDGET), Some(secs(1)));
        assert_eq!(quick_wait(&teams, 3, secs(3), BUDGET), Some(secs(4)));
        let told = |s| Failure::Throttled("HTTP 503".into(), Some(secs(s)));
        assert_eq!(
            quick_wait(&told(3), 1, Duration::ZERO, BUDGET),
            Some(secs(3))
        );
        assert_eq!(
            quick_wait(&told(0), 1, Duration::ZERO, BUDGET),
            Some(secs(1))
        );
        // Beyond the budget: the durable back-off, which honours it too.
        assert_eq!(quick_wait(&told(120), 1, Duration::ZERO, BUDGET), None);
        assert_eq!(told(120).backoff(1), secs(120));
        assert_eq!(quick_wait(&told(20), 1, secs(15), BUDGET), None);
    }

    #[test]
    fn refusals_and_a_zero_budget_are_not_retried_quickly() {
        let refused = Failure::Rejected("HTTP 404".into());
        assert_eq!(quick_wait(&refused, 1, Duration::ZERO, BUDGET), None);
        let down = Failure::Transient("cannot connect".into());
        assert_eq!(quick_wait(&down, 1, Duration::ZERO, Duration::ZERO), None);
    }
}
