//! The generic webhook (docs/rules.md, the alert body): `POST {"alerts": [...]}` with the per-identity alerts exactly as
//! queued, followed by an `outage` / `outage_resolved` summary per hub when a batch holds at least
//! the group threshold of one hub's alerts (`grouping.rs`). Any 2xx is delivered.

use super::grouping::{group, outage_object, Notice};
use super::{http_client, post_json, Channel, Failure};
use crate::alerts::AlertBody;
use crate::settings::Secret;
use crate::store::BoxFuture;

pub struct Webhook {
    url: Secret<String>,
    /// The URL's credential-bearing parts, scrubbed from failure messages.
    secrets: Vec<String>,
    client: reqwest::Client,
    group_threshold: usize,
}

impl Webhook {
    pub fn new(url: Secret<String>, group_threshold: usize) -> Webhook {
        Webhook {
            secrets: super::people::url_secrets(url.expose()),
            url,
            client: http_client(),
            group_threshold,
        }
    }
}

/// The request body: every alert, oldest first, then the summaries of grouped hubs.
pub fn body(alerts: &[AlertBody], group_threshold: usize) -> String {
    let mut items: Vec<serde_json::Value> = alerts
        .iter()
        .filter_map(|a| serde_json::to_value(a).ok())
        .collect();
    for n in group(alerts, group_threshold) {
        if let Notice::Outage {
            hub,
            resolved,
            alerts,
        } = n
        {
            items.push(outage_object(hub, resolved, &alerts));
        }
    }
    serde_json::json!({ "alerts": items }).to_string()
}

impl Channel for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, alerts: &'a [AlertBody]) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let body = body(alerts, self.group_threshold);
            post_json(
                &self.client,
                self.url.expose(),
                body,
                &self.secrets,
                |_, _| Ok(()),
            )
            .await
        })
    }
}
