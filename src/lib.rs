//! connmon: tells Azure IoT Hub operators which devices are *really* offline.
//!
//! IoT Hub publishes `DeviceConnected` / `DeviceDisconnected` through Event Grid, and the device SDKs
//! reconnect every 45–70 minutes to renew SAS tokens. connmon records each disconnect and alerts only
//! when a device is still disconnected after a grace period. It runs as an Azure Functions custom
//! handler (Event Grid trigger `ConnectionEvent`, timer trigger `DisconnectTimer`) or standalone as
//! an Event Grid webhook with its own sweep ticker.
//!
//! # Layout
//! - [`model`]: domain types — `Identity`, `SequenceNumber`, `Timestamp`, `ConnectionEvent`.
//! - [`decode`]: every envelope shape (host invocation, Event Grid, CloudEvents) → `Decoded` items.
//! - [`logs`]: IoT Hub Connections resource logs (records, Log Analytics rows, CSV) → events.
//! - [`machine`]: the pure per-identity state machine (`apply`, `claim_due`), no I/O, no clock.
//! - [`store`]: the `Store` trait and its SQLite implementation (group commit, conditional writes).
//! - [`alerts`]: the alert wire body and the log line.
//! - [`answer`]: reading at most a bounded prefix of an HTTP answer (receivers, the token endpoint).
//! - [`channels`]: the `Channel` trait, each channel, and the `Notifier` draining the outbox.
//! - [`scope`]: glob patterns, include/exclude scope, per-pattern grace periods, silences.
//! - [`monitor`]: the service tying decode → store → alerts together; counters; sweeps; the status
//!   reads.
//! - [`status`]: what operators see, pure — classification, per-identity history, the dead-man's
//!   switch (`check_hub`).
//! - [`api`]: the status API's views and cursors; [`dashboard`]: the status page;
//!   [`html`]: the one HTML escape (status page and replay report);
//!   [`metrics`]: counters in the Prometheus text format and as Functions-mode log lines.
//! - [`server`]: the axum router and its status codes; [`status_routes`]: the read-only routes.
//! - [`listen`]: the accept loop — header timeout, graceful shutdown, the connection cap sized
//!   from the open-file limit.
//! - [`settings`]: environment → validated `Settings`.
//! - [`log`]: log lines (stdout for information, stderr for problems and alerts).
//! - [`replay`]: `connmon replay` — history through the production machine on a virtual clock, the
//!   report (text, JSON, HTML) and the recommended grace period.
//! - [`simulate`]: `connmon simulate` — synthetic fleets with ground truth, and their score.
//! - [`cli`]: the subcommands' argument parsing and I/O (`main` dispatches to it).

pub mod alerts;
pub mod answer;
pub mod api;
pub mod channels;
pub mod cli;
pub mod dashboard;
pub mod decode;
pub mod html;
pub mod listen;
pub mod log;
pub mod logs;
pub mod machine;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod replay;
pub mod scope;
pub mod server;
pub mod settings;
pub mod simulate;
pub mod status;
pub mod status_routes;
pub mod store;

use channels::queue::QueueOutput;
use channels::{Channel, Notifier};
use monitor::Monitor;
use settings::{Mode, Settings, StoreKind};
use std::future::Future;
use std::sync::Arc;
use store::table::{client::TableClient, TableStore};
use store::{sqlite::SqliteStore, Store, StoreConfig};

/// The channels the settings configure, and the queue output when the timer function declares
/// one (Functions mode only: read from `DisconnectTimer/function.json` in the app root, the working
/// directory the host starts connmon in). `log` when nothing else is set.
pub fn channels(settings: &Settings) -> Notifier {
    let mut list: Vec<Box<dyn Channel>> = Vec::new();
    if let Some(url) = &settings.webhook_url {
        list.push(Box::new(channels::webhook::Webhook::new(
            url.clone(),
            settings.group_threshold,
        )));
    }
    if let Some(url) = &settings.teams_url {
        list.push(Box::new(channels::teams::Teams::new(
            url.clone(),
            settings.group_threshold,
        )));
    }
    if let Some(url) = &settings.slack_url {
        list.push(Box::new(channels::slack::Slack::new(
            url.clone(),
            settings.group_threshold,
        )));
    }
    if let Some(pd) = &settings.pagerduty {
        list.push(Box::new(channels::pagerduty::PagerDuty::new(
            pd.clone(),
            settings.group_threshold,
        )));
    }
    let queue = match settings.mode {
        Mode::Functions { .. } => {
            QueueOutput::declared_in(std::path::Path::new("DisconnectTimer/function.json"))
                .map(|name| Arc::new(QueueOutput::new(&name)))
        }
        Mode::Standalone { .. } => None,
    };
    if let Some(q) = &queue {
        list.push(Box::new(channels::queue::QueueChannel(q.clone())));
    }
    if list.is_empty() {
        list.push(Box::new(channels::LogOnly));
    }
    Notifier::new(list, queue).with_quick_retries(settings.quick_retry_for)
}

/// Opens the store the settings name (creating the SQLite file or the table if missing), queuing
/// alerts for `channels`.
pub async fn open_store(
    settings: &Settings,
    channels: Vec<String>,
) -> Result<Arc<dyn Store>, String> {
    let cfg = StoreConfig {
        policy: settings.policy(),
        channels,
    };
    match &settings.store {
        StoreKind::Sqlite { path } => SqliteStore::open(path, cfg)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| e.to_string()),
        StoreKind::Table { endpoint, table } => {
            let client = TableClient::new(endpoint.clone(), table).map_err(|e| e.to_string())?;
            TableStore::open(client, cfg)
                .await
                .map(|s| Arc::new(s) as Arc<dyn Store>)
                .map_err(|e| e.to_string())
        }
    }
}

/// Serves `listener` until `shutdown` resolves. In standalone mode also sweeps every
/// `sweep_interval` (the first sweep right away, which delivers anything left queued).
pub async fn run(
    settings: Settings,
    store: Arc<dyn Store>,
    notifier: Notifier,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let policy = settings.policy();
    let functions = matches!(settings.mode, Mode::Functions { .. });
    let monitor = Arc::new(
        Monitor::new(store, notifier, policy)
            .with_hub_quiet_after(settings.hub_quiet_after)
            .with_metric_lines(functions)
            .with_counts_ttl(match settings.store {
                StoreKind::Sqlite { .. } => {
                    std::time::Duration::from_millis(monitor::COUNTS_TTL_MS as u64)
                }
                StoreKind::Table { .. } => std::time::Duration::from_secs(60),
            }),
    );
    let ticker = match settings.mode {
        Mode::Standalone { sweep_interval, .. } => {
            let m = monitor.clone();
            Some(tokio::spawn(async move {
                let mut every = tokio::time::interval(sweep_interval);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    // The ticker waits for no delivery: each channel's worker delivers on its
                    // own, and this summary counts what they finished since the last one.
                    if let Ok(r) = m.sweep_waiting(std::time::Duration::ZERO).await {
                        if !r.claimed.is_empty() || r.delivery.delivered > 0 {
                            log::info(&r.log_lines(m.policy())[0]);
                        }
                    }
                }
            }))
        }
        Mode::Functions { .. } => None,
    };
    let (key, api) = match settings.mode {
        Mode::Standalone {
            key,
            api_key,
            listen,
            ..
        } => {
            let loopback = listen.ip().is_loopback();
            if key.is_none() && !loopback {
                log::warn(format_args!(
                    "listening on {listen} without CONNMON_WEBHOOK_KEY: anyone who can reach this address can post events and trigger sweeps; set CONNMON_WEBHOOK_KEY and add `?code=<key>` to the Event Grid subscription's endpoint"
                ));
            }
            let api = match api_key {
                Some(k) => server::ApiAccess::Key(k),
                None if loopback => server::ApiAccess::Open,
                None => {
                    log::info(format_args!(
                        "the status API, dashboard and /metrics are off on {listen}: set CONNMON_API_KEY to turn them on"
                    ));
                    server::ApiAccess::Off
                }
            };
            (key, api)
        }
        // The host checks function keys (DeviceStatus is `authLevel: function`) before it
        // forwards a request, and connmon listens on 127.0.0.1 only.
        Mode::Functions { .. } => (None, server::ApiAccess::Open),
    };
    let open_files = listen::raise_open_file_limit().unwrap_or(1024);
    let app = server::app(monitor, key, api);
    let result = listen::serve(listener, app, listen::connection_cap(open_files), shutdown).await;
    if let Some(t) = ticker {
        t.abort();
    }
    result
}
