//! (being written) the Teams channel.

use super::{http_client, Channel, Failure};
use crate::alerts::AlertBody;
use crate::settings::Secret;
use crate::store::BoxFuture;

pub struct Teams {
    url: Secret<String>,
    client: reqwest::Client,
    group_threshold: usize,
}

impl Teams {
    pub fn new(url: Secret<String>, group_threshold: usize) -> Teams {
        Teams {
            url,
            client: http_client(),
            group_threshold,
        }
    }
}

impl Channel for Teams {
    fn name(&self) -> &'static str {
        "teams"
    }

    fn send<'a>(&'a self, _alerts: &'a [AlertBody]) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = (&self.url, &self.client, self.group_threshold);
        Box::pin(async { Err(Failure::Rejected("not implemented yet".into())) })
    }
}
