//! `GET /api/dashboard`: the status page, one server-rendered HTML document. It loads
//! nothing and runs no script (the route sends a CSP that forbids both): inline CSS, inline SVG
//! timelines, and a `<meta http-equiv="refresh">` without a URL, so the browser reloads the very
//! URL it has, `?code=` included.
//!
//! Ids come from events anyone who can post one controls, so every text and attribute value goes
//! through [`escape_into`], and only through the [`Page`] writer: markup it writes is either a
//! `&'static str` written here or escaped text; nothing else can reach the output. The page is also
//! well-formed XML (void elements closed, no named entities), so tests can parse it with an XML
//! parser. Layout: tables on a desktop, one card per row below 640 px (each cell labelled from its
//! `data-label`), ids wrap anywhere, nothing wider than the screen.

use crate::api::{Dashboard, DeviceView, HubView};
use crate::channels::people::duration;
use crate::html::escape_into;
use crate::model::Timestamp;
use crate::status::{Change, ChangeKind};
use std::fmt::Write as _;

/// The only writer of the page: tag and attribute names and fixed markup are `&'static str`
/// (written in this file), every value and text is escaped.
struct Page(String);

type Attrs<'a> = &'a [(&'static str, &'a str)];

impl Page {
    /// Fixed markup written in this file.
    fn markup(&mut self, m: &'static str) {
        self.0.push_str(m);
    }

    fn text(&mut self, t: &str) {
        escape_into(&mut self.0, t);
    }

    fn start(&mut self, name: &'static str, attrs: Attrs) {
        self.0.push('<');
        self.0.push_str(name);
        for (k, v) in attrs {
            self.0.push(' ');
            self.0.push_str(k);
            self.0.push_str("=\"");
            escape_into(&mut self.0, v);
            self.0.push('"');
        }
        self.0.push('>');
    }

    /// A void element (`<meta … />`), closed so the page stays well-formed XML.
    fn void(&mut self, name: &'static str, attrs: Attrs) {
        self.start(name, attrs);
        self.0.pop();
        self.0.push_str("/>");
    }

    fn end(&mut self, name: &'static str) {
        self.0.push_str("</");
        self.0.push_str(name);
        self.0.push('>');
    }

    fn elem(&mut self, name: &'static str, attrs: Attrs, text: &str) {
        self.start(name, attrs);
        self.text(text);
        self.end(name);
    }

    /// `<time datetime="…">12:34:56</time>`.
    fn time(&mut self, t: Timestamp, now: Timestamp) {
        self.elem("time", &[("datetime", &t.to_rfc3339())], &clock(t, now));
    }

    /// A table cell labelled for the narrow (card) layout.
    fn cell(&mut self, label: &'static str, class: &'static str, text: &str) {
        self.start("td", &[("class", class), ("data-label", label)]);
        self.text(text);
        self.end("td");
    }

    fn time_cell(&mut self, label: &'static str, t: Option<Timestamp>, now: Timestamp) {
        self.start("td", &[("class", "t"), ("data-label", label)]);
        match t {
            Some(t) => self.time(t, now),
            None => self.markup("\u{2014}"),
        }
        self.end("td");
    }
}

/// UTC wall time: `HH:MM:SS` on the day of `now`, else `YYYY-MM-DD HH:MM`.
pub fn clock(t: Timestamp, now: Timestamp) -> String {
    let (s, n) = (t.to_rfc3339(), now.to_rfc3339());
    match (s.get(..10), s.get(11..19), s.get(11..16)) {
        (Some(day), Some(hms), _) if n.get(..10) == Some(day) => hms.to_string(),
        (Some(day), _, Some(hm)) => format!("{day} {hm}"),
        _ => s,
    }
}

fn parse(t: &Option<String>) -> Option<Timestamp> {
    t.as_deref().and_then(Timestamp::parse_rfc3339)
}

// ---------------------------------------------------------------------------------------------
// The timeline

/// What an identity was doing during a span of its timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connected,
    Offline,
    Deleted,
}

impl Phase {
    fn class(self) -> &'static str {
        match self {
            Phase::Connected => "tl-on",
            Phase::Offline => "tl-off",
            Phase::Deleted => "tl-del",
        }
    }

    fn fill(self) -> &'static str {
        match self {
            Phase::Connected => "#2e7d32",
            Phase::Offline => "#c62828",
            Phase::Deleted => "#5f6368",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Connected => "connected",
            Phase::Offline => "offline",
            Phase::Deleted => "deleted",
        }
    }
}

/// An identity's recent history laid on a time axis ending at `end` (now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub start: Timestamp,
    pub end: Timestamp,
    /// Known phases, in time order, inside `start..end`; gaps are unknown (before the first entry).
    pub spans: Vec<(Timestamp, Timestamp, Phase)>,
    /// Alerts raised inside the window.
    pub marks: Vec<Change>,
}

const HOUR_MS: i64 = 3_600_000;
/// The longest window a timeline shows; older entries only say what the state was at its start.
pub const TIMELINE_MAX_HOURS: i64 = 24;
/// The SVG's user units (it is stretched to the cell's width).
pub const TIMELINE_WIDTH: f64 = 240.0;
const TIMELINE_HEIGHT: f64 = 16.0;

/// Lays `history` (oldest first, as stored) out from its earliest entry (or `offline_since`),
/// rounded up to whole hours, between 1 and [`TIMELINE_MAX_HOURS`] hours, until `now`. An open
/// outage (`offline_since`) is offline until now even when the bounded history no longer holds
/// its disconnect. Times after `now` (clock skew) count as `now`.
pub fn timeline(history: &[Change], offline_since: Option<Timestamp>, now: Timestamp) -> Timeline {
    let clamp = |t: Timestamp| t.min(now);
    let earliest = history
        .iter()
        .map(|c| c.at)
        .chain(offline_since)
        .min()
        .map(clamp);
    let hours = earliest.map_or(1, |e| {
        let ms = now.unix_millis() - e.unix_millis();
        (ms + HOUR_MS - 1).div_euclid(HOUR_MS)
    });
    let start = now.plus_millis(-hours.clamp(1, TIMELINE_MAX_HOURS) * HOUR_MS);

    let mut phases: Vec<(Timestamp, Phase)> = history
        .iter()
        .filter_map(|c| {
            let phase = match c.kind {
                ChangeKind::Connected => Phase::Connected,
                ChangeKind::Disconnected => Phase::Offline,
                ChangeKind::Deleted => Phase::Deleted,
                ChangeKind::Alert(_) => return None,
            };
            Some((clamp(c.at), phase))
        })
        .collect();
    phases.sort_by_key(|p| p.0);

    let mut spans: Vec<(Timestamp, Timestamp, Phase)> = Vec::new();
    let mut push = |from: Timestamp, to: Timestamp, phase: Phase| {
        if to <= from {
            return;
        }
        match spans.last_mut() {
            Some(last) if last.2 == phase && last.1 == from => last.1 = to,
            _ => spans.push((from, to, phase)),
        }
    };
    // The phase at `start`: the last entry at or before it.
    let mut current: Option<(Timestamp, Phase)> = phases
        .iter()
        .rev()
        .find(|p| p.0 <= start)
        .map(|p| (start, p.1));
    for &(at, phase) in phases.iter().filter(|p| p.0 > start) {
        if let Some((from, ph)) = current {
            push(from, at, ph);
        }
        current = Some((at, phase));
    }
    if let Some((from, ph)) = current {
        push(from, now, ph);
    }
    if let Some(since) = offline_since.map(|t| clamp(t).max(start)) {
        spans.retain_mut(|s| {
            s.1 = s.1.min(since);
            s.0 < s.1
        });
        match spans.last_mut() {
            Some(last) if last.2 == Phase::Offline && last.1 == since => last.1 = now,
            _ if since < now => spans.push((since, now, Phase::Offline)),
            _ => {}
        }
    }
    let marks = history
        .iter()
        .filter(|c| matches!(c.kind, ChangeKind::Alert(_)))
        .filter(|c| c.at >= start)
        .map(|c| Change {
            at: clamp(c.at),
            ..*c
        })
        .collect();
    Timeline {
        start,
        end: now,
        spans,
        marks,
    }
}

impl Timeline {
    /// The x coordinate of `t` in the SVG, 0 at `start` and [`TIMELINE_WIDTH`] at `end`.
    pub fn x(&self, t: Timestamp) -> f64 {
        let whole = (self.end.unix_millis() - self.start.unix_millis()).max(1) as f64;
        let at = (t.unix_millis() - self.start.unix_millis()) as f64;
        (at / whole * TIMELINE_WIDTH).clamp(0.0, TIMELINE_WIDTH)
    }

    fn hours(&self) -> i64 {
        (self.end.unix_millis() - self.start.unix_millis()) / HOUR_MS
    }

    fn svg(&self, p: &mut Page) {
        let now = self.end;
        let label = {
            let mut l = format!("last {}h:", self.hours());
            for (from, to, phase) in &self.spans {
                let _ = write!(
                    l,
                    " {} {}\u{2013}{};",
                    phase.name(),
                    clock(*from, now),
                    clock(*to, now)
                );
            }
            if self.spans.is_empty() {
                l.push_str(" nothing known;");
            }
            let _ = write!(l, " {} alert(s)", self.marks.len());
            l
        };
        let (w, h) = (TIMELINE_WIDTH.to_string(), TIMELINE_HEIGHT.to_string());
        p.start(
            "svg",
            &[
                ("xmlns", "http://www.w3.org/2000/svg"),
                ("class", "tl"),
                ("viewBox", &format!("0 0 {w} {h}")),
                ("preserveAspectRatio", "none"),
                ("role", "img"),
                ("aria-label", &label),
            ],
        );
        p.elem("title", &[], &label);
        p.void(
            "rect",
            &[
                ("class", "tl-bg"),
                ("x", "0"),
                ("y", "3"),
                ("width", &w),
                ("height", "10"),
                ("fill", "#d5d9de"),
            ],
        );
        for &(from, to, phase) in &self.spans {
            let (x0, x1) = (self.x(from), self.x(to));
            p.start(
                "rect",
                &[
                    ("class", phase.class()),
                    ("x", &format!("{x0:.2}")),
                    ("y", "3"),
                    ("width", &format!("{:.2}", (x1 - x0).max(0.5))),
                    ("height", "10"),
                    ("fill", phase.fill()),
                ],
            );
            p.elem(
                "title",
                &[],
                &format!(
                    "{} {}\u{2013}{}",
                    phase.name(),
                    clock(from, now),
                    clock(to, now)
                ),
            );
            p.end("rect");
        }
        for m in &self.marks {
            let x = (self.x(m.at) - 1.0).clamp(0.0, TIMELINE_WIDTH - 2.0);
            p.start(
                "rect",
                &[
                    ("class", "tl-alert"),
                    ("data-kind", &m.kind.name()),
                    ("x", &format!("{x:.2}")),
                    ("y", "0"),
                    ("width", "2"),
                    ("height", &h),
                    ("fill", "#1a1a1a"),
                ],
            );
            p.elem(
                "title",
                &[],
                &format!("{} {}", m.kind.name(), clock(m.at, now)),
            );
            p.end("rect");
        }
        p.end("svg");
        p.start("div", &[("class", "tl-axis")]);
        p.elem("span", &[], &format!("\u{2212}{}h", self.hours()));
        p.elem("span", &[], "now");
        p.end("div");
    }
}

// ---------------------------------------------------------------------------------------------
// The page

const CSS: &str = "\
:root{color-scheme:light dark}\
*{box-sizing:border-box}\
body{margin:0;font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1b1d21;background:#f3f4f6}\
header,main,footer{max-width:1180px;margin:0 auto;padding:0 12px}\
h1{font-size:1.35em;margin:.7em 0 .2em}\
h2{font-size:1.1em;margin:.5em 0}\
h2 .n{font-weight:400;color:#4a4f57}\
.meta{margin:.2em 0;color:#3d4249;font-size:.92em}\
ul.counts{list-style:none;display:flex;flex-wrap:wrap;gap:6px;padding:0;margin:.6em 0}\
ul.counts li{background:#fff;border:1px solid #c9ced6;border-radius:6px;padding:3px 10px}\
ul.counts .n{font-weight:700;font-size:1.2em;margin-right:.25em}\
ul.counts li.bad{border-color:#b3261e;background:#fdecea}\
ul.counts li.warn{border-color:#a86b00;background:#fff6e0}\
section{background:#fff;border:1px solid #c9ced6;border-radius:8px;padding:6px 12px 10px;margin:12px 0;overflow-x:auto}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e1e4e8;vertical-align:top}\
th{font-size:.84em;color:#3d4249;font-weight:600;white-space:nowrap}\
td.id{overflow-wrap:anywhere;min-width:9em;font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}\
td.t{white-space:nowrap}\
td.none{color:#5f6368}\
td.tl-cell{min-width:150px;width:260px}\
.badge{display:inline-block;padding:0 7px;border-radius:10px;font-size:.85em;font-weight:600;white-space:nowrap}\
.b-alerted,.b-quiet,.b-disconnected{background:#b3261e;color:#fff}\
.b-pending,.b-reminder{background:#fff1c4;color:#4d3700;border:1px solid #c99700}\
.b-reconnected,.b-hub_resumed,.b-flapping_resolved,.b-connected{background:#e1f2e3;color:#1b5e20;border:1px solid #7cb77f}\
.b-flapping,.b-hub_quiet{background:#efe2f6;color:#4f1a6b;border:1px solid #a779c2}\
.b-deleted,.b-unknown{background:#e8eaed;color:#3c4043}\
small{color:#4a4f57}\
.empty{color:#4a4f57;font-style:italic;margin:.4em 0}\
svg.tl{display:block;width:100%;height:16px}\
.tl-axis{display:flex;justify-content:space-between;font-size:.72em;color:#5f6368}\
.sw{display:inline-block;width:.9em;height:.9em;vertical-align:-.1em;border-radius:2px;margin:0 .25em 0 .6em}\
footer{padding-bottom:2em;font-size:.9em;color:#3d4249}\
a{color:#0b57d0}\
@media (max-width:640px){\
header,main,footer{padding:0 8px}\
section{padding:4px 10px 8px;overflow-x:visible}\
table.cards thead{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}\
table.cards,table.cards tbody,table.cards tr,table.cards td{display:block;width:auto}\
table.cards tr{border-bottom:1px solid #c9ced6;padding:6px 0}\
table.cards td{border:0;padding:1px 0;min-width:0}\
table.cards td.t{white-space:normal}\
table.cards td::before{content:attr(data-label);display:inline-block;min-width:7.2em;color:#4a4f57;font-size:.84em;font-family:system-ui,sans-serif}\
table.cards td.tl-cell::before{display:block}\
td.tl-cell{width:auto}\
}\
@media (prefers-color-scheme:dark){\
body{background:#121417;color:#e6e8eb}\
section,ul.counts li{background:#1b1e22;border-color:#3a3f46}\
th,.meta,h2 .n,small,.empty,td.none,footer,.tl-axis,table.cards td::before{color:#b9bec6}\
th,td{border-color:#2d3238}\
ul.counts li.bad{background:#3b1512}\
ul.counts li.warn{background:#33270b}\
a{color:#8ab4f8}\
.tl-alert{fill:#f1f3f4}\
.sw.tl-alert{background:#f1f3f4!important}\
}";

/// The whole page for `d`; refreshes itself every `refresh_seconds`.
pub fn render(d: &Dashboard, refresh_seconds: u32) -> String {
    let s = &d.status;
    let offline = s.pending + s.alerted;
    let mut p = Page(String::with_capacity(16_384 + 2_048 * d.offline.len()));
    p.markup("<!DOCTYPE html>\n");
    p.start("html", &[("lang", "en")]);
    p.markup("<head>");
    p.void("meta", &[("charset", "utf-8")]);
    p.void(
        "meta",
        &[
            ("name", "viewport"),
            ("content", "width=device-width, initial-scale=1"),
        ],
    );
    // No URL: the browser reloads the URL it has, query string (`?code=`) included.
    p.void(
        "meta",
        &[
            ("http-equiv", "refresh"),
            ("content", &refresh_seconds.to_string()),
        ],
    );
    p.void(
        "meta",
        &[("name", "color-scheme"), ("content", "light dark")],
    );
    let quiet = s.hubs.iter().filter(|h| h.quiet_since.is_some()).count();
    let mut title = format!("connmon: {offline} offline");
    if quiet > 0 {
        let _ = write!(title, ", {quiet} quiet hub(s)");
    }
    p.elem("title", &[], &title);
    p.markup("<style>");
    p.markup(CSS);
    p.markup("</style></head><body>");
    header(&mut p, d, refresh_seconds);
    p.markup("<main>");
    hubs(&mut p, &s.hubs, d.now);
    offline_section(&mut p, d);
    alerts(&mut p, d);
    flapping(&mut p, d);
    p.markup("</main>");
    footer(&mut p);
    p.markup("</body></html>\n");
    p.0
}

fn header(p: &mut Page, d: &Dashboard, refresh_seconds: u32) {
    let s = &d.status;
    p.markup("<header><h1>connmon status</h1>");
    p.start("p", &[("class", "meta")]);
    p.markup("Generated ");
    let generated = Timestamp::parse_rfc3339(&s.generated_at).unwrap_or(d.now);
    p.time(generated, d.now);
    p.text(&format!(
        " UTC; reloads every {refresh_seconds} s. Last sweep: "
    ));
    match parse(&s.last_sweep_at) {
        Some(t) => {
            p.time(t, d.now);
            p.text(&format!(" ({} ago)", duration(d.now.seconds_since(t))));
        }
        None => p.markup("never"),
    }
    p.markup(".</p>");
    p.start("ul", &[("class", "counts"), ("id", "counts")]);
    for (name, n, class) in [
        ("tracked", s.tracked, ""),
        ("connected", s.connected, ""),
        (
            "pending",
            s.pending,
            if s.pending > 0 { "warn" } else { "" },
        ),
        ("alerted", s.alerted, if s.alerted > 0 { "bad" } else { "" }),
        (
            "flapping",
            s.flapping,
            if s.flapping > 0 { "warn" } else { "" },
        ),
        ("silenced", s.silenced, ""),
    ] {
        p.start("li", &[("data-count", name), ("class", class)]);
        p.elem("span", &[("class", "n")], &n.to_string());
        p.text(&format!(" {name}"));
        p.end("li");
    }
    p.end("ul");
    p.start("p", &[("class", "meta")]);
    p.text(&format!(
        "Grace period {}; hub silence alerts {}; alert deliveries queued: {}.",
        duration(s.grace_period_seconds),
        s.hub_quiet_after_seconds
            .map_or("off".into(), |q| format!("after {}", duration(q))),
        s.queued_deliveries
    ));
    p.markup("</p></header>");
}

/// One section of the page: its heading with `count`, then the table's head when there are rows
/// to list, or the empty-state message (`<p class="empty" id="{id}-empty">`) when there are none.
struct Section {
    id: &'static str,
    title: &'static str,
    columns: &'static [&'static str],
    empty: &'static str,
}

impl Section {
    /// Writes the start; `true` when the caller is to write `rows` rows, then [`Section::end`].
    fn start(&self, p: &mut Page, count: usize, rows: usize) -> bool {
        p.start("section", &[("id", self.id)]);
        p.markup("<h2>");
        p.text(self.title);
        p.elem("span", &[("class", "n")], &format!(" ({count})"));
        p.markup("</h2>");
        if rows == 0 {
            let id = format!("{}-empty", self.id);
            p.elem("p", &[("class", "empty"), ("id", &id)], self.empty);
            return false;
        }
        p.markup("<table class=\"cards\"><thead><tr>");
        for c in self.columns {
            p.elem("th", &[("scope", "col")], c);
        }
        p.markup("</tr></thead><tbody>");
        true
    }

    /// Closes the table (when [`Section::start`] opened one) and the section.
    fn end(p: &mut Page, table: bool) {
        if table {
            p.markup("</tbody></table>");
        }
        p.end("section");
    }
}

/// `<tr class=… data-hub=… data-device=… [data-module=…] {last}>`: a module's row has
/// `data-module`, a device's does not.
fn row_start(
    p: &mut Page,
    class: &'static str,
    id: (&str, &str, Option<&str>),
    last: (&'static str, &str),
) {
    let (hub, device, module) = id;
    let mut attrs: Vec<(&'static str, &str)> =
        vec![("class", class), ("data-hub", hub), ("data-device", device)];
    if let Some(m) = module {
        attrs.push(("data-module", m));
    }
    attrs.push(last);
    p.start("tr", &attrs);
}

fn identity_cells(p: &mut Page, hub: &str, device: &str, module: Option<&str>) {
    p.cell("Hub", "id", hub);
    if device.is_empty() {
        p.cell("Device", "none", "(whole hub)");
    } else {
        p.cell("Device", "id", device);
    }
    match module {
        Some(m) => p.cell("Module", "id", m),
        None => p.cell("Module", "none", "\u{2014}"),
    }
}

fn badge(p: &mut Page, kind: &str) {
    p.elem("span", &[("class", &format!("badge b-{kind}"))], kind);
}

/// An identity's row up to its state cell: hub, device, module, and the state (with when a pending
/// outage alerts).
fn device_row_start(p: &mut Page, class: &'static str, v: &DeviceView, now: Timestamp) {
    let module = v.module_id.as_deref();
    row_start(
        p,
        class,
        (&v.hub, &v.device_id, module),
        ("data-state", v.state),
    );
    identity_cells(p, &v.hub, &v.device_id, module);
    p.start("td", &[("data-label", "State")]);
    badge(p, v.state);
    if let Some(due) = parse(&v.alert_due_at) {
        p.markup(" <small>alert due ");
        p.time(due, now);
        p.markup("</small>");
    }
    p.end("td");
}

fn timeline_cell(p: &mut Page, v: &DeviceView, history: &[Change], now: Timestamp) {
    p.start("td", &[("class", "tl-cell"), ("data-label", "Timeline")]);
    timeline(history, parse(&v.offline_since), now).svg(p);
    p.end("td");
}

fn hubs(p: &mut Page, hubs: &[HubView], now: Timestamp) {
    const HUBS: Section = Section {
        id: "hubs",
        title: "Hubs",
        columns: &["Hub", "Last event", "Ago", "Status"],
        empty: "No event has arrived from any hub yet.",
    };
    let table = HUBS.start(p, hubs.len(), hubs.len());
    for h in hubs {
        let quiet = parse(&h.quiet_since);
        p.start(
            "tr",
            &[
                ("class", "hub"),
                ("data-hub", &h.hub),
                ("data-quiet", if quiet.is_some() { "true" } else { "false" }),
            ],
        );
        p.cell("Hub", "id", &h.hub);
        p.time_cell(
            "Last event",
            Timestamp::parse_rfc3339(&h.last_event_at),
            now,
        );
        p.cell("Ago", "t", &duration(h.seconds_since_last_event));
        p.start("td", &[("data-label", "Status")]);
        match quiet {
            Some(t) => {
                p.elem("span", &[("class", "badge b-quiet")], "quiet");
                p.markup(" <small>since ");
                p.time(t, now);
                p.markup("</small>");
            }
            None => p.markup("\u{2014}"),
        }
        p.end("td");
        p.end("tr");
    }
    Section::end(p, table);
}

fn offline_section(p: &mut Page, d: &Dashboard) {
    const OFFLINE: Section = Section {
        id: "offline",
        title: "Offline",
        columns: &[
            "Hub",
            "Device",
            "Module",
            "State",
            "Offline since",
            "For",
            "Silenced until",
            "Timeline",
        ],
        empty: "No device or module is offline.",
    };
    let total = d.offline.len() + d.offline_more as usize;
    let table = OFFLINE.start(p, total, d.offline.len());
    for (v, history) in &d.offline {
        device_row_start(p, "offline", v, d.now);
        p.time_cell("Offline since", parse(&v.offline_since), d.now);
        p.start("td", &[("class", "t for"), ("data-label", "For")]);
        p.text(&v.offline_seconds.map_or("\u{2014}".into(), duration));
        p.end("td");
        p.time_cell("Silenced until", parse(&v.silenced_until), d.now);
        timeline_cell(p, v, history, d.now);
        p.end("tr");
    }
    if table {
        p.markup("</tbody></table>");
    }
    if d.offline_more > 0 {
        let more = d.offline_more.to_string();
        p.start("p", &[("id", "offline-more"), ("data-more", &more)]);
        p.text(&format!(
            "{more} more offline identities are not listed here (longest offline first); all of them: "
        ));
        p.start("a", &[("href", "devices?state=offline")]);
        p.elem("code", &[], "GET /api/devices?state=offline");
        p.markup("</a>.</p>");
    }
    Section::end(p, false); // the table is closed above, before the pointer to the rest
}

fn alerts(p: &mut Page, d: &Dashboard) {
    const ALERTS: Section = Section {
        id: "alerts",
        title: "Recent alerts",
        columns: &["Time", "Kind", "Hub", "Device", "Module", "Downtime"],
        empty: "No alert has been raised.",
    };
    let n = d.recent_alerts.len();
    let table = ALERTS.start(p, n, n);
    for (id, c) in &d.recent_alerts {
        let kind = match c.kind {
            ChangeKind::Alert(k) => k.as_str(),
            _ => "other",
        };
        row_start(
            p,
            "alert",
            (id.hub(), id.device(), id.module()),
            ("data-kind", kind),
        );
        p.time_cell("Time", Some(c.at), d.now);
        p.start("td", &[("data-label", "Kind")]);
        badge(p, kind);
        p.end("td");
        identity_cells(p, id.hub(), id.device(), id.module());
        // A flapping alert's downtime is always 0: nothing to show.
        let downtime = c.seconds.filter(|_| !kind.starts_with("flapping"));
        p.cell(
            "Downtime",
            "t",
            &downtime.map_or("\u{2014}".into(), duration),
        );
        p.end("tr");
    }
    Section::end(p, table);
}

fn flapping(p: &mut Page, d: &Dashboard) {
    const FLAPPING: Section = Section {
        id: "flapping",
        title: "Flapping",
        columns: &["Hub", "Device", "Module", "State", "Last event", "Timeline"],
        empty: "No device or module is flapping.",
    };
    let n = d.flapping.len();
    let table = FLAPPING.start(p, n, n);
    for (v, history) in &d.flapping {
        device_row_start(p, "flapping", v, d.now);
        p.time_cell("Last event", parse(&v.last_event_at), d.now);
        timeline_cell(p, v, history, d.now);
        p.end("tr");
    }
    Section::end(p, table);
}

fn footer(p: &mut Page) {
    p.markup("<footer><p>Timeline:");
    for (phase, label) in [
        (Phase::Connected, "connected"),
        (Phase::Offline, "offline"),
        (Phase::Deleted, "deleted"),
    ] {
        p.start(
            "span",
            &[
                ("class", &format!("sw {}", phase.class())),
                ("style", &format!("background:{}", phase.fill())),
            ],
        );
        p.end("span");
        p.text(label);
    }
    // Not `void`: `<span/>` would open a span in HTML, not close one.
    p.start("span", &[("class", "sw"), ("style", "background:#d5d9de")]);
    p.end("span");
    p.markup("unknown");
    p.start(
        "span",
        &[
            ("class", "sw tl-alert"),
            ("style", "background:#1a1a1a;width:3px"),
        ],
    );
    p.end("span");
    p.markup("alert. All times UTC. The same figures as JSON: ");
    p.start("a", &[("href", "status")]);
    p.elem("code", &[], "/api/status");
    p.markup("</a>, ");
    p.start("a", &[("href", "devices?state=offline")]);
    p.elem("code", &[], "/api/devices?state=offline");
    p.markup("</a>.</p></footer>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HubView, StatusView};
    use crate::machine::AlertKind;
    use crate::model::Identity;

    const T0: i64 = 1_790_000_000_000; // 2026-09-21T…Z, whole seconds

    fn at(secs_before_now: i64) -> Timestamp {
        Timestamp::from_unix_millis(T0 - secs_before_now * 1000)
    }

    fn change(secs_before_now: i64, kind: ChangeKind) -> Change {
        Change {
            at: at(secs_before_now),
            kind,
            seconds: None,
        }
    }

    #[test]
    fn clock_shows_the_date_only_for_other_days() {
        let now = Timestamp::parse_rfc3339("2026-11-30T19:46:05Z").unwrap();
        let same = Timestamp::parse_rfc3339("2026-11-30T01:02:03Z").unwrap();
        let before = Timestamp::parse_rfc3339("2026-11-29T23:59:59Z").unwrap();
        assert_eq!(clock(same, now), "01:02:03");
        assert_eq!(clock(before, now), "2026-11-29 23:59");
    }

    #[test]
    fn timeline_window_is_whole_hours_from_the_earliest_entry() {
        let now = at(0);
        // Nothing known: one hour, nothing drawn.
        let t = timeline(&[], None, now);
        assert_eq!((t.start, t.end), (at(3600), now));
        assert!(t.spans.is_empty() && t.marks.is_empty());
        // 90 minutes of history: two hours.
        let h = [change(5400, ChangeKind::Connected)];
        assert_eq!(timeline(&h, None, now).start, at(7200));
        // Three days: capped at 24 hours, connected all along.
        let h = [change(3 * 86_400, ChangeKind::Connected)];
        let t = timeline(&h, None, now);
        assert_eq!(t.start, at(86_400));
        assert_eq!(t.spans, vec![(at(86_400), now, Phase::Connected)]);
        assert_eq!((t.x(t.start), t.x(now)), (0.0, TIMELINE_WIDTH));
    }

    #[test]
    fn timeline_geometry_of_an_outage_with_its_alert() {
        let now = at(0);
        let alert = Change {
            at: at(3000),
            kind: ChangeKind::Alert(AlertKind::Disconnected),
            seconds: Some(600),
        };
        let h = [
            change(7200, ChangeKind::Connected),
            change(3600, ChangeKind::Disconnected),
            alert,
        ];
        let t = timeline(&h, Some(at(3600)), now);
        assert_eq!(t.start, at(7200));
        assert_eq!(
            t.spans,
            vec![
                (at(7200), at(3600), Phase::Connected),
                (at(3600), now, Phase::Offline)
            ]
        );
        assert_eq!(t.marks, vec![alert]);
        // Two hours over 240 units: the disconnect halfway, the alert at 50 minutes from the end.
        assert_eq!(t.x(at(3600)), 120.0);
        assert_eq!(t.x(at(3000)), 140.0);
        // Outside the window and in the future are clamped to the edges.
        assert_eq!(t.x(at(9000)), 0.0);
        assert_eq!(t.x(at(-60)), TIMELINE_WIDTH);
    }

    #[test]
    fn timeline_keeps_an_open_outage_the_history_lost_and_merges_repeats() {
        let now = at(0);
        // Sixteen reminders pushed the disconnect out: the outage still shows from offline_since.
        let reminders: Vec<Change> = (1..=3)
            .map(|i| change(i * 600, ChangeKind::Alert(AlertKind::Reminder)))
            .collect();
        let t = timeline(&reminders, Some(at(5000)), now);
        assert_eq!(t.start, at(7200));
        assert_eq!(t.spans, vec![(at(5000), now, Phase::Offline)]);
        assert_eq!(t.marks.len(), 3);
        // A stale connect after the outage began is cut at the outage start; repeated connects
        // merge into one span; a future event time counts as now.
        let h = [
            change(6000, ChangeKind::Connected),
            change(5000, ChangeKind::Connected),
            change(-30, ChangeKind::Connected),
        ];
        let t = timeline(&h, Some(at(1800)), now);
        assert_eq!(
            t.spans,
            vec![
                (at(6000), at(1800), Phase::Connected),
                (at(1800), now, Phase::Offline)
            ]
        );
        // The state before the window carries into it.
        let h = [
            change(100_000, ChangeKind::Disconnected),
            change(90_000, ChangeKind::Connected),
            change(600, ChangeKind::Deleted),
        ];
        let t = timeline(&h, None, now);
        assert_eq!(
            t.spans,
            vec![
                (at(86_400), at(600), Phase::Connected),
                (at(600), now, Phase::Deleted)
            ]
        );
    }

    fn view(hub: &str, device: &str, module: Option<&str>, state: &'static str) -> DeviceView {
        DeviceView {
            hub: hub.into(),
            device_id: device.into(),
            module_id: module.map(str::to_string),
            state,
            flapping: false,
            silenced_until: None,
            offline_since: Some(at(4000).to_rfc3339()),
            offline_seconds: Some(4000),
            alert_due_at: None,
            last_event_at: Some(at(4000).to_rfc3339()),
        }
    }

    fn dashboard(evil: &str) -> Dashboard {
        let now = at(0);
        let status = StatusView {
            tracked: 3,
            connected: 1,
            pending: 0,
            alerted: 2,
            flapping: 0,
            silenced: 0,
            hubs: vec![HubView {
                hub: format!("hub-{evil}"),
                last_event_at: at(30).to_rfc3339(),
                seconds_since_last_event: 30,
                quiet_since: Some(at(20).to_rfc3339()),
            }],
            last_sweep_at: None,
            queued_deliveries: 0,
            dead_letters: 0,
            grace_period_seconds: 300,
            hub_quiet_after_seconds: None,
            generated_at: now.to_rfc3339(),
        };
        let history = vec![
            change(7200, ChangeKind::Connected),
            change(4000, ChangeKind::Disconnected),
        ];
        Dashboard {
            status,
            offline: vec![
                (view("h", evil, None, "alerted"), history.clone()),
                (view("h", "dev", Some(evil), "alerted"), history),
            ],
            offline_more: 7,
            flapping: vec![],
            recent_alerts: vec![(
                Identity::new("h", evil, None),
                Change {
                    at: at(3700),
                    kind: ChangeKind::Alert(AlertKind::Disconnected),
                    seconds: Some(300),
                },
            )],
            now,
        }
    }

    #[test]
    fn the_page_is_well_formed_and_every_id_stays_text() {
        let evil = r#"<script>document.title='pwned'</script>"&amp;' % $ * ( )"#;
        let html = render(&dashboard(evil), 30);
        assert!(!html.contains("<script"), "{html}");
        let doc = roxmltree::Document::parse_with_options(
            &html,
            roxmltree::ParsingOptions {
                allow_dtd: true,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{html}"));
        let els = |name: &'static str| {
            doc.descendants()
                .filter(move |n| n.tag_name().name() == name)
        };
        assert_eq!(els("script").count(), 0);
        let rows: Vec<_> = els("tr")
            .filter(|n| n.attribute("class") == Some("offline"))
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].attribute("data-device"), Some(evil));
        assert_eq!(rows[1].attribute("data-module"), Some(evil));
        let cell_texts = |n: roxmltree::Node| -> Vec<String> {
            n.children()
                .filter(|c| c.tag_name().name() == "td")
                .map(|c| {
                    c.descendants()
                        .filter(|t| t.is_text())
                        .filter_map(|t| t.text())
                        .collect::<String>()
                })
                .collect()
        };
        assert_eq!(cell_texts(rows[0])[1], evil);
        assert_eq!(cell_texts(rows[1])[2], evil);
        assert_eq!(cell_texts(rows[0])[5], "1h 6m");
        let hub = els("tr")
            .find(|n| n.attribute("class") == Some("hub"))
            .unwrap();
        assert_eq!(
            hub.attribute("data-hub"),
            Some(format!("hub-{evil}").as_str())
        );
        assert_eq!(hub.attribute("data-quiet"), Some("true"));
        let alert = els("tr")
            .find(|n| n.attribute("class") == Some("alert"))
            .unwrap();
        assert_eq!(alert.attribute("data-kind"), Some("disconnected"));
        assert_eq!(cell_texts(alert)[3], evil);
        assert_eq!(
            els("p")
                .find(|n| n.attribute("id") == Some("offline-more"))
                .and_then(|n| n.attribute("data-more")),
            Some("7")
        );
        assert!(els("p").any(|n| n.attribute("id") == Some("flapping-empty")));
        let title = els("title").next().and_then(|n| n.text()).unwrap();
        assert_eq!(title, "connmon: 2 offline, 1 quiet hub(s)");
        let refresh = els("meta")
            .find(|n| n.attribute("http-equiv") == Some("refresh"))
            .unwrap();
        assert_eq!(refresh.attribute("content"), Some("30"));
        // Each timeline: offline from 4000 s ago over a two-hour window.
        let off = els("rect")
            .find(|n| n.attribute("class") == Some("tl-off"))
            .unwrap();
        assert_eq!(off.attribute("x"), Some("106.67"));
        assert_eq!(off.attribute("width"), Some("133.33"));
    }

    #[test]
    fn empty_sections_say_so() {
        let mut d = dashboard("x");
        d.status.hubs.clear();
        d.offline.clear();
        d.offline_more = 0;
        d.recent_alerts.clear();
        let html = render(&d, 30);
        for id in [
            "hubs-empty",
            "offline-empty",
            "alerts-empty",
            "flapping-empty",
        ] {
            assert!(html.contains(&format!("id=\"{id}\"")), "{id}: {html}");
        }
        assert!(!html.contains("offline-more"));
        assert!(html.contains("Last sweep: never"));
    }
}
