//! The generic webhook (design.md): `POST {"alerts": [...]}` with the per-identity alerts exactly as
//! queued. Any 2xx is delivered.

use super::{http_client, post_json, Channel, Failure};
use crate::alerts::AlertBody;
use crate::settings::Secret;
use crate::store::BoxFuture;

pub struct Webhook {
    url: Secret<String>,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(url: Secret<String>) -> Webhook {
        Webhook {
            url,
            client: http_client(),
        }
    }
}

/// The request body: the alerts, oldest first.
pub fn body(alerts: &[AlertBody]) -> String {
    serde_json::json!({ "alerts": alerts }).to_string()
}

impl Channel for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, alerts: &'a [AlertBody]) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            post_json(&self.client, self.url.expose(), body(alerts), |_, _| Ok(())).await
        })
    }
}
