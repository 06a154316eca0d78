//! The report as one self-contained HTML page (`connmon replay --html FILE`): no scripts, no
//! external assets, an inline SVG histogram of disconnect durations on a log time axis with the
//! recommended grace as a red line (`id="grace-line"`) and the other grace periods dashed.
//!
//! Every text that came from the input (hub, device and module ids, file names, reasons) goes
//! through [`escape`]. The page is also well-formed XML, so tests parse it with an XML parser.

use super::report::{human, Report};
use crate::html::escape;
use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 50.0;
const BOTTOM: f64 = 40.0;
const TOP: f64 = 20.0;
const BINS: usize = 48;
/// Rows of the still-offline table (every identity is in the JSON report).
const OFFLINE_ROWS: usize = 200;

/// The histogram: log-spaced bins from 1 s to the longest duration (at least 1 h).
pub fn histogram_svg(report: &Report) -> String {
    let ms = &report.durations.millis;
    let max_s = (ms.last().copied().unwrap_or(0) as f64 / 1000.0).max(3600.0);
    let (lo, hi) = (0.0f64, max_s.log10());
    let x_of = |secs: f64| LEFT + (secs.max(1.0).log10() - lo) / (hi - lo) * (W - LEFT - 10.0);
    let mut counts = [0u64; BINS];
    for &m in ms {
        let s = (m as f64 / 1000.0).max(1.0).log10();
        let b = (((s - lo) / (hi - lo)) * BINS as f64) as usize;
        counts[b.min(BINS - 1)] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(0).max(1) as f64;
    let plot_h = H - TOP - BOTTOM;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" id="durations" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" aria-label="Histogram of disconnect durations with the grace period">"#
    );
    let _ = write!(
        o,
        r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>"##
    );
    let bw = (W - LEFT - 10.0) / BINS as f64;
    for (i, c) in counts.iter().enumerate() {
        if *c == 0 {
            continue;
        }
        let h = (*c as f64 / top) * plot_h;
        let _ = write!(
            o,
            r##"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#4a78b5"><title>{c}</title></rect>"##,
            LEFT + i as f64 * bw,
            TOP + plot_h - h,
            (bw - 1.0).max(1.0),
            h
        );
    }
    let axis_y = TOP + plot_h;
    let _ = write!(
        o,
        r##"<line x1="{LEFT}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="#333"/>"##,
        W - 10.0
    );
    for secs in [1.0, 10.0, 60.0, 300.0, 600.0, 3600.0, 21600.0, 86400.0] {
        if secs > max_s * 1.0001 {
            break;
        }
        let x = x_of(secs);
        let _ = write!(
            o,
            r##"<line x1="{x:.1}" y1="{axis_y}" x2="{x:.1}" y2="{}" stroke="#333"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"##,
            axis_y + 4.0,
            axis_y + 16.0,
            human(secs as i64)
        );
    }
    let _ = write!(
        o,
        r##"<text x="{}" y="{}" font-size="11" text-anchor="middle">disconnect → reconnect (log scale)</text><text x="12" y="{}" font-size="11" transform="rotate(-90 12 {})" text-anchor="middle">reconnects (max {})</text>"##,
        (W + LEFT) / 2.0,
        H - 6.0,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        top as u64
    );
    for g in &report.grace_periods {
        let x = x_of(g.grace_seconds as f64);
        if g.recommended {
            let _ = write!(
                o,
                r##"<line id="grace-line" class="grace recommended" data-grace-seconds="{}" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{axis_y}" stroke="#d62728" stroke-width="2"/><text x="{:.1}" y="{}" font-size="12" fill="#d62728">grace {} (recommended)</text>"##,
                g.grace_seconds,
                x + 4.0,
                TOP + 10.0,
                human(g.grace_seconds)
            );
        } else {
            let _ = write!(
                o,
                r##"<line class="grace" data-grace-seconds="{}" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{axis_y}" stroke="#888" stroke-dasharray="4 3"/><text x="{:.1}" y="{}" font-size="11" fill="#666">{}</text>"##,
                g.grace_seconds,
                x + 3.0,
                TOP + 24.0,
                human(g.grace_seconds)
            );
        }
    }
    o.push_str("</svg>");
    o
}

fn who(hub: &str, device: &str, module: Option<&str>) -> String {
    escape(&match module {
        Some(m) => format!("{hub} / {device} / {m}"),
        None => format!("{hub} / {device}"),
    })
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut o = String::new();
    let i = &report.input;
    o.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/><title>connmon replay report</title><style>body{font-family:sans-serif;max-width:900px;margin:1em auto;color:#222}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}code{font-size:90%}</style></head><body>");
    let _ = write!(
        o,
        "<h1>connmon replay</h1><p>{} events, {} identities, {} to {}; ordered by <b>{}</b>{}.</p>",
        i.events,
        i.identities,
        escape(i.from.as_deref().unwrap_or("-")),
        escape(i.to.as_deref().unwrap_or("-")),
        escape(&i.ordered_by),
        if i.ordered_by == "time" {
            " (resource logs carry no sequence numbers: records were ordered by their timestamps)"
        } else {
            ""
        }
    );
    let _ = write!(
        o,
        "<h2>Recommended grace period: {}</h2><p>{}</p>",
        human(report.recommended_grace_seconds),
        escape(&report.recommendation)
    );
    let d = &report.durations;
    let _ = write!(
        o,
        "<h2>Disconnect durations</h2><p>{} reconnects; p50 {} s, p99 {} s, p99.9 {} s, max {} s.</p>",
        d.count,
        d.p50_seconds.unwrap_or(0),
        d.p99_seconds.unwrap_or(0),
        d.p999_seconds.unwrap_or(0),
        d.max_seconds.unwrap_or(0)
    );
    o.push_str(&histogram_svg(report));
    o.push_str("<h2>Alerts per grace period</h2><table><tr><th>grace</th><th>disconnected</th><th>reconnected</th><th>suppressed reconnects</th><th>open at end</th></tr>");
    for g in &report.grace_periods {
        let _ = write!(
            o,
            "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            human(g.grace_seconds),
            if g.recommended { " (recommended)" } else { "" },
            g.disconnected,
            g.reconnected,
            g.suppressed_reconnects,
            g.open_at_end
        );
    }
    o.push_str("</table>");
    if let Some(g) = report.grace_periods.iter().find(|g| g.recommended) {
        o.push_str("<h3>Disconnected alerts at the recommended grace</h3><table><tr><th>identity</th><th>offline since</th><th>detected</th></tr>");
        for a in g
            .alerts
            .iter()
            .filter(|a| a.kind == "disconnected")
            .take(200)
        {
            let _ = write!(
                o,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                who(&a.hub, &a.device_id, a.module_id.as_deref()),
                escape(&a.disconnected_at),
                escape(&a.detected_at)
            );
        }
        o.push_str("</table>");
    }
    let _ = write!(
        o,
        "<h2>Still offline when the clock stopped</h2><p>{} identities offline at {}.</p><table id=\"still-offline\"><tr><th>identity</th><th>offline since</th><th>for</th><th>reason</th><th>alerted (recommended grace)</th></tr>",
        report.still_offline.len(),
        escape(i.until.as_deref().unwrap_or("-"))
    );
    for s in report.still_offline.iter().take(OFFLINE_ROWS) {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            who(&s.hub, &s.device_id, s.module_id.as_deref()),
            escape(&s.since),
            human(s.offline_seconds),
            escape(s.reason.as_deref().unwrap_or("-")),
            escape(s.alerted_at.as_deref().unwrap_or("not yet"))
        );
    }
    o.push_str("</table>");
    if report.still_offline.len() > OFFLINE_ROWS {
        let _ = write!(
            o,
            "<p>…and {} more (the JSON report lists all).</p>",
            report.still_offline.len() - OFFLINE_ROWS
        );
    }
    o.push_str("<h2>Duplicate-identity suspects</h2><ul>");
    for s in &report.duplicate_identity_suspects {
        let _ = write!(
            o,
            "<li>{}: {}</li>",
            who(&s.hub, &s.device_id, s.module_id.as_deref()),
            escape(&s.reasons.join("; "))
        );
    }
    o.push_str("</ul><h2>Flapping</h2><ul>");
    for f in &report.flapping {
        let _ = write!(
            o,
            "<li>{}: {} silent reconnects since {}{}</li>",
            who(&f.hub, &f.device_id, f.module_id.as_deref()),
            f.silent_reconnects,
            escape(&f.since),
            f.hint
                .as_deref()
                .map(|h| format!(" — {}", escape(h)))
                .unwrap_or_default()
        );
    }
    o.push_str("</ul></body></html>\n");
    o
}
