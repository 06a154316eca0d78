//! (being written) the PagerDuty Events API v2 channel.

use super::{http_client, Channel, Failure};
use crate::alerts::AlertBody;
use crate::settings::PagerDutySettings;
use crate::store::BoxFuture;

pub struct PagerDuty {
    settings: PagerDutySettings,
    client: reqwest::Client,
    group_threshold: usize,
}

impl PagerDuty {
    pub fn new(settings: PagerDutySettings, group_threshold: usize) -> PagerDuty {
        PagerDuty {
            settings,
            client: http_client(),
            group_threshold,
        }
    }
}

impl Channel for PagerDuty {
    fn name(&self) -> &'static str {
        "pagerduty"
    }

    fn send<'a>(&'a self, _alerts: &'a [AlertBody]) -> BoxFuture<'a, Result<(), Failure>> {
        let _ = (&self.settings, &self.client, self.group_threshold);
        Box::pin(async { Err(Failure::Rejected("not implemented yet".into())) })
    }
}
