//! `GET /api/dashboard`: the status page, server-rendered HTML (placeholder until the page lands).

use crate::api::Dashboard;

/// The whole page for `d`; refreshes itself every `refresh_seconds`.
pub fn render(d: &Dashboard, refresh_seconds: u32) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{refresh_seconds}\"><title>connmon</title></head><body><p>{} tracked, {} offline</p></body></html>",
        d.status.tracked,
        d.status.pending + d.status.alerted
    )
}
