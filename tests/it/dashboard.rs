//! The status page (`GET /api/dashboard`) in a real browser: Debian's headless Chromium loads it
//! from a running standalone connmon, its DOM (after the browser parsed the page, and would have
//! run any script) is checked row by row, and screenshots at phone and desktop size land in
//! `target/test-output/` (paths printed; see them with `--nocapture`).
//!
//! Escaping is proven three ways: the served page parses as XML with the hostile id as text; the
//! browser's DOM holds no `<script>` element and its title is not the one the id's script would
//! set; and the same page loaded from a file (no CSP header to save the day) still runs nothing,
//! while a copy with the id spliced in raw does run it, which shows the probe would catch a lapse.
//!
//! Chromium is a test dependency (`.ci/run` installs it): when it is missing these tests fail and
//! say how to install it.

use crate::support::*;
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A device id a forged event could carry: a script, quotes, `&` and the punctuation IoT Hub
/// allows in ids (`' % $ * ( )`).
const EVIL: &str = "<script>document.title='pwned'</script>' % $ * ( ) & \"q\" <b>x</b>";
const SECOND_HUB: &str = "plant-b";
const API_KEY: &str = "dash-test-key-0123456789abcdef";

fn notification() -> [(&'static str, &'static str); 1] {
    [("aeg-event-type", "Notification")]
}

/// A connmon with: two hubs; connected devices; `pump-17` offline for 2 h 5 min (alerted by the
/// sweep); `valve-3` offline for a minute (pending); module `temp-module` of `edge-gw-1` alerted;
/// `flappy` flapping; and [`EVIL`] alerted.
fn populated(extra: &[(&str, &str)]) -> Connmon {
    let mut env = vec![
        ("CONNMON_GRACE_PERIOD", "5m"),
        ("CONNMON_SWEEP_INTERVAL", "1h"),
        ("CONNMON_FLAP_THRESHOLD", "2"),
        ("CONNMON_FLAP_WINDOW", "30m"),
    ];
    env.extend_from_slice(extra);
    let cm = Connmon::standalone(&env);
    let events = json!([
        connected("sensor-ok-1", 1, &ago(7000)).eg(),
        connected("sensor-ok-2", 1, &ago(6000)).eg(),
        connected("pump-17", 1, &ago(3 * 3600)).eg(),
        disconnected("pump-17", 2, &ago(2 * 3600 + 300)).eg(),
        connected("valve-3", 1, &ago(1800)).eg(),
        disconnected("valve-3", 2, &ago(60)).eg(),
        connected("edge-gw-1", 1, &ago(5000)).eg(),
        connected("edge-gw-1", 1, &ago(5000))
            .module("temp-module")
            .eg(),
        disconnected("edge-gw-1", 2, &ago(1200))
            .module("temp-module")
            .eg(),
        disconnected("flappy", 1, &ago(1500)).eg(),
        connected("flappy", 2, &ago(1490)).eg(),
        disconnected("flappy", 3, &ago(1000)).eg(),
        connected("flappy", 4, &ago(990)).eg(),
        connected(EVIL, 1, &ago(5400)).eg(),
        disconnected(EVIL, 2, &ago(3600)).eg(),
        connected("line-4", 1, &ago(100)).hub(SECOND_HUB).eg(),
    ]);
    let resp = cm.api_events(&events, &notification());
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["accepted"], 16, "{}", resp.text());
    let sweep = cm.sweep();
    assert_eq!(sweep.new_alerts, 3, "{sweep:?}");
    cm
}

#[test]
#[ignore = "needs Chromium: run scripts/test"]
fn the_dashboard_in_a_real_browser() {
    let chromium = chromium();
    let cm = populated(&[]);
    let url = format!("http://127.0.0.1:{}/api/dashboard", cm.port);

    // The page as served: HTML that is also well-formed XML, with the strict CSP.
    let resp = Request::get("/api/dashboard").send(cm.port);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = resp.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let page = resp.text();
    check_served_page(&page);

    // The DOM after Chromium parsed it.
    let dom = Dom::parse(&chromium.dump_dom(&url, &[]));
    check_dom(&dom);

    // Screenshots: a phone and a desktop.
    let out = output_dir();
    for (name, w, h) in [("phone", 390, 844), ("desktop", 1280, 900)] {
        let png = out.join(format!("dashboard-{name}.png"));
        let _ = std::fs::remove_file(&png);
        chromium.screenshot(&url, &png, w, h);
        let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert_eq!(png_dimensions(&png), (w, h), "{}", png.display());
        println!(
            "dashboard screenshot ({name}, {w}x{h}, {size} bytes): {}",
            png.display()
        );
    }

    // Without the CSP header (loaded from a file) the page still runs nothing ...
    let file = out.join("dashboard.html");
    std::fs::write(&file, &page).expect("write the page");
    let dom = Dom::parse(&chromium.dump_dom(&file_url(&file), &[]));
    assert_eq!(dom.title(), "connmon: 4 offline");
    assert_eq!(dom.all("script").len(), 0);
    println!("dashboard page as served: {}", file.display());
    // ... while the same page with the id spliced in unescaped does: the probe works.
    let escaped = EVIL
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    assert!(page.contains(&format!(">{escaped}</td>")));
    let broken = page.replacen(&format!(">{escaped}</td>"), &format!(">{EVIL}</td>"), 1);
    let control = out.join("dashboard-unescaped-control.html");
    std::fs::write(&control, broken).expect("write the control page");
    let dom = Dom::parse(&chromium.dump_dom(&file_url(&control), &[]));
    assert_eq!(
        dom.title(),
        "pwned",
        "the control page's script did not run"
    );
    assert_eq!(dom.all("script").len(), 1);
}

fn check_served_page(page: &str) {
    let doc = roxmltree::Document::parse_with_options(
        page,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("the page is not well-formed XML: {e}\n{page}"));
    let el = |name: &'static str| {
        doc.descendants()
            .filter(move |n| n.tag_name().name() == name)
    };
    assert_eq!(el("script").count(), 0);
    let evil = el("tr")
        .find(|n| {
            n.attribute("class") == Some("offline") && n.attribute("data-device") == Some(EVIL)
        })
        .expect("the hostile id's row");
    let texts: Vec<String> = evil
        .children()
        .filter(|c| c.tag_name().name() == "td")
        .map(|c| {
            c.descendants()
                .filter(|t| t.is_text())
                .filter_map(|t| t.text())
                .collect()
        })
        .collect();
    assert_eq!(texts[1], EVIL);
    let viewport = el("meta")
        .find(|n| n.attribute("name") == Some("viewport"))
        .and_then(|n| n.attribute("content"));
    assert_eq!(viewport, Some("width=device-width, initial-scale=1"));
}

fn check_dom(dom: &Dom) {
    assert_eq!(dom.all("script").len(), 0, "a script element in the DOM");
    assert_eq!(dom.title(), "connmon: 4 offline");
    for id in ["counts", "hubs", "offline", "alerts", "flapping"] {
        assert!(dom.by_id(id).is_some(), "no #{id}");
    }
    let count = |name: &str| {
        dom.all("li")
            .into_iter()
            .find(|li| li.attr("data-count") == Some(name))
            .and_then(|li| li.all("span").first().map(|s| s.text()))
            .unwrap_or_else(|| panic!("no count {name}"))
    };
    // tracked: 7 devices + 1 module across both hubs.
    let counts: Vec<String> = ["tracked", "connected", "pending", "alerted", "flapping"]
        .iter()
        .map(|n| count(n))
        .collect();
    assert_eq!(counts, ["9", "5", "1", "3", "1"]);

    // Hubs.
    let hubs = dom.rows("hub");
    let names: Vec<&str> = hubs.iter().filter_map(|r| r.attr("data-hub")).collect();
    assert_eq!(names, ["connmon-test-hub", SECOND_HUB]);
    assert_eq!(hubs[0].cells()[0], "connmon-test-hub");

    // Offline: longest first, with state, duration, timeline.
    let offline = dom.rows("offline");
    let who: Vec<(&str, Option<&str>, &str)> = offline
        .iter()
        .map(|r| {
            (
                r.attr("data-device").unwrap_or_default(),
                r.attr("data-module"),
                r.attr("data-state").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("pump-17", None, "alerted"),
            (EVIL, None, "alerted"),
            ("edge-gw-1", Some("temp-module"), "alerted"),
            ("valve-3", None, "pending"),
        ]
    );
    let pump = offline[0].cells();
    assert_eq!(
        pump[..4],
        ["connmon-test-hub", "pump-17", "\u{2014}", "alerted"]
    );
    assert!(pump[5].starts_with("2h 5m"), "{pump:?}");
    // The hostile id is text in its cell, exactly as sent.
    assert_eq!(offline[1].cells()[1], EVIL);
    assert_eq!(offline[2].cells()[2], "temp-module");
    assert!(
        offline[3].cells()[3].starts_with("pending alert due"),
        "{:?}",
        offline[3].cells()
    );
    for row in &offline {
        let svg = row.all("svg");
        assert_eq!(svg.len(), 1, "one timeline a row");
        let off = svg[0]
            .all("rect")
            .into_iter()
            .filter(|r| r.attr("class") == Some("tl-off"))
            .count();
        assert_eq!(off, 1, "the open outage is drawn");
    }

    // Recent alerts: the three disconnects and the flapping alert.
    let alerts = dom.rows("alert");
    let mut kinds: Vec<(&str, &str)> = alerts
        .iter()
        .map(|r| {
            (
                r.attr("data-kind").unwrap_or_default(),
                r.attr("data-device").unwrap_or_default(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("disconnected", EVIL),
            ("disconnected", "edge-gw-1"),
            ("disconnected", "pump-17"),
            ("flapping", "flappy"),
        ]
    );
    let evil_alert = alerts
        .iter()
        .find(|r| r.attr("data-device") == Some(EVIL))
        .unwrap();
    assert_eq!(evil_alert.cells()[3], EVIL);

    // Flapping.
    let flapping = dom.rows("flapping");
    assert_eq!(flapping.len(), 1);
    assert_eq!(flapping[0].attr("data-device"), Some("flappy"));
    assert_eq!(flapping[0].attr("data-state"), Some("connected"));
}

#[test]
#[ignore = "needs Chromium: run scripts/test"]
fn with_an_api_key_the_page_wants_the_code_and_its_refresh_keeps_it() {
    let chromium = chromium();
    let cm = populated(&[("CONNMON_API_KEY", API_KEY)]);
    assert_eq!(Request::get("/api/dashboard").send(cm.port).status, 401);
    let wrong = Request::get("/api/dashboard?code=not-the-key-0123456789").send(cm.port);
    assert_eq!(wrong.status, 401);
    let bearer = Request::get("/api/dashboard")
        .header("Authorization", &format!("Bearer {API_KEY}"))
        .send(cm.port);
    assert_eq!(bearer.status, 200);

    // In the browser: nothing without the code, the page with it.
    let base = format!("http://127.0.0.1:{}/api/dashboard", cm.port);
    let dom = Dom::parse(&chromium.dump_dom(&base, &[]));
    assert!(dom.by_id("offline").is_none());
    let dom = Dom::parse(&chromium.dump_dom(&format!("{base}?code={API_KEY}"), &[]));
    assert_eq!(dom.title(), "connmon: 4 offline");
    assert_eq!(dom.rows("offline").len(), 4);
    // The refresh names no URL, so the browser reloads the one it has, `?code=` included.
    let refresh: Vec<&str> = dom
        .all("meta")
        .into_iter()
        .filter(|m| m.attr("http-equiv") == Some("refresh"))
        .filter_map(|m| m.attr("content"))
        .collect();
    assert_eq!(refresh, ["30"]);

    // And it does: with virtual time Chromium follows the refresh at once. A recording proxy
    // passes the first two loads through and then serves a page without a refresh, so it stops.
    let proxy = Recorder::start(cm.port, 2);
    let url = format!(
        "http://127.0.0.1:{}/api/dashboard?code={API_KEY}",
        proxy.port
    );
    let dom = Dom::parse(&chromium.dump_dom(&url, &["--virtual-time-budget=120000"]));
    let seen = proxy.seen();
    let loads: Vec<&(String, u16)> = seen
        .iter()
        .filter(|(path, _)| path.starts_with("/api/dashboard"))
        .collect();
    assert!(loads.len() >= 3, "the page was not reloaded: {seen:?}");
    let want = format!("/api/dashboard?code={API_KEY}");
    for (path, status) in &loads[..2] {
        assert_eq!((path.as_str(), *status), (want.as_str(), 200), "{seen:?}");
    }
    assert_eq!(loads[2].0, want, "{seen:?}");
    assert_eq!(dom.title(), "stopped");
}

/// Appended to a copy of the page (loaded from a file, so no CSP): for every alert tick of the
/// timelines, its computed fill and the background it is drawn on (the first ancestor of its SVG
/// with a background colour), one `fill|background` line each, in `<pre id="probe">`.
const TICK_PROBE: &str = r#"<script>
const out = [];
for (const tick of document.querySelectorAll('rect.tl-alert')) {
  let e = tick.closest('svg').parentElement, bg = 'rgb(255, 255, 255)';
  for (; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor;
    if (c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') { bg = c; break; }
  }
  out.push(getComputedStyle(tick).fill + '|' + bg);
}
const pre = document.createElement('pre');
pre.id = 'probe';
pre.textContent = out.join('\n');
document.body.appendChild(pre);
</script>"#;

/// `rgb(r, g, b)` as CSS computes it → WCAG relative luminance.
fn luminance(css: &str) -> f64 {
    let inner = css
        .trim()
        .strip_prefix("rgb(")
        .and_then(|c| c.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not an rgb() colour: {css:?}"));
    let channel = |v: &str| {
        let c = v.trim().parse::<f64>().expect("a channel") / 255.0;
        if c <= 0.03928 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    let c: Vec<f64> = inner.split(',').map(channel).collect();
    0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
}

/// The WCAG contrast ratio of two computed colours (1 to 21).
fn contrast(a: &str, b: &str) -> f64 {
    let (la, lb) = (luminance(a), luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

#[test]
#[ignore = "needs Chromium: run scripts/test"]
fn the_alert_tick_stands_out_in_light_and_dark_mode() {
    let chromium = chromium();
    let cm = populated(&[]);
    let page = Request::get("/api/dashboard").send(cm.port).text();
    let file = output_dir().join("dashboard-tick-probe.html");
    std::fs::write(
        &file,
        page.replace("</body>", &format!("{TICK_PROBE}</body>")),
    )
    .expect("write the probe page");
    // `--force-dark-mode` makes `prefers-color-scheme: dark` match, as a phone or desktop set to
    // dark does.
    for (mode, args) in [("light", &[][..]), ("dark", &["--force-dark-mode"][..])] {
        let dom = Dom::parse(&chromium.dump_dom(&file_url(&file), args));
        let probe = dom.by_id("probe").expect("the probe ran").text();
        let ticks: Vec<(&str, &str)> = probe
            .lines()
            .map(|l| l.split_once('|').expect("fill|background"))
            .collect();
        assert!(!ticks.is_empty(), "{mode}: no alert tick on the page");
        for (fill, background) in ticks {
            // 3:1, WCAG's minimum for graphical objects.
            let ratio = contrast(fill, background);
            assert!(
                ratio >= 3.0,
                "{mode} mode: an alert tick {fill} on {background} has contrast {ratio:.2}, under 3"
            );
        }
    }
}

/// The replay report read on a phone: Chromium finds the viewport meta, so a phone lays the page
/// out at its own width instead of 980 px shrunk to fit.
#[test]
#[ignore = "needs Chromium: run scripts/test"]
fn the_replay_report_declares_a_viewport_in_a_real_browser() {
    let chromium = chromium();
    let out = output_dir();
    let report = out.join("replay-report.html");
    let status = Command::new(env!("CARGO_BIN_EXE_connmon"))
        .arg("replay")
        .arg(format!(
            "{}/tests/fixtures/replay/resource-logs-properties-string.jsonl",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg("--html")
        .arg(&report)
        .stdout(Stdio::null())
        .status()
        .expect("run connmon replay");
    assert!(status.success());
    let dom = Dom::parse(&chromium.dump_dom(&file_url(&report), &[]));
    let viewports: Vec<Option<&str>> = dom
        .all("meta")
        .into_iter()
        .filter(|m| m.attr("name") == Some("viewport"))
        .map(|m| m.attr("content"))
        .collect();
    assert_eq!(
        viewports,
        vec![Some("width=device-width, initial-scale=1")],
        "the replay report's viewport meta, as Chromium parsed it"
    );
    assert!(dom.by_id("durations").is_some(), "the histogram is there");
}

// ---------------------------------------------------------------------------------------------
// Chromium

struct Chromium {
    bin: PathBuf,
}

/// Finds Debian's Chromium on PATH (`chromium`, or `chromium-browser` elsewhere); fails the test,
/// saying how to install it, when there is none.
fn chromium() -> Chromium {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&path) {
            let bin = dir.join(name);
            if bin.is_file() {
                return Chromium { bin };
            }
        }
    }
    panic!(
        "headless Chromium is needed for the dashboard tests and neither `chromium` nor \
         `chromium-browser` is on PATH: install Debian's package with \
         `apt-get install --no-install-recommends chromium` (scripts/test does this when it can)"
    );
}

impl Chromium {
    /// Runs headless Chromium on `url` with `args`; returns its stdout. Every host name but the
    /// loopback address resolves to nothing and background services are off, so it reaches no
    /// network; its profile is a fresh temporary directory.
    fn run(&self, url: &str, args: &[&str]) -> String {
        let profile = tempfile::tempdir().expect("temp dir");
        let stderr_path = profile.path().join("stderr.log");
        let mut child = Command::new(&self.bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-default-apps",
                "--disable-domain-reliability",
                "--hide-scrollbars",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let mut stdout = child.stdout.take().expect("piped");
        let reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(90) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromium {args:?} {url} did not finish within 90 s:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        };
        let out = reader.join().expect("reader");
        assert!(
            status.success(),
            "chromium {args:?} {url} failed ({status}):\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        out
    }

    fn dump_dom(&self, url: &str, args: &[&str]) -> String {
        let mut all = vec!["--dump-dom"];
        all.extend_from_slice(args);
        let dom = self.run(url, &all);
        assert!(dom.contains("<html"), "no DOM from {url}: {dom:?}");
        dom
    }

    fn screenshot(&self, url: &str, png: &Path, width: u32, height: u32) {
        self.run(
            url,
            &[
                &format!("--screenshot={}", png.display()),
                &format!("--window-size={width},{height}"),
                // Paint everything before the capture (on a busy machine a tile could still be
                // blank); the virtual-time budget stays below the page's 30 s refresh.
                "--run-all-compositor-stages-before-draw",
                "--virtual-time-budget=5000",
            ],
        );
        assert!(png.is_file(), "chromium wrote no {}", png.display());
    }
}

/// `target/test-output`, made if missing.
fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("test-output");
    std::fs::create_dir_all(&dir).expect("create target/test-output");
    dir
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Checks the PNG signature, the IHDR chunk and a non-trivial size; returns (width, height).
fn png_dimensions(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).expect("read the screenshot");
    assert!(
        bytes.len() > 5_000,
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR", "no IHDR chunk first");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(be(8), 13, "IHDR length");
    (be(16), be(20))
}

// ---------------------------------------------------------------------------------------------
// The DOM Chromium prints (`--dump-dom`): its HTML serialisation, read back into a small tree.
// Chromium escapes `&`, `<` and `>` in text and writes attribute values in double quotes with `&`
// and `"` escaped (`<` and `>` too, since version 138), and this reader skips quoted values whole:
// so outside `<style>`, a `<` it meets always starts a tag. An id shown as text cannot look like an
// element here, and an injected element cannot hide.

#[derive(Debug, Default)]
struct Dom {
    name: String,
    attrs: HashMap<String, String>,
    children: Vec<Node>,
}

#[derive(Debug)]
enum Node {
    El(Dom),
    Text(String),
}

const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

impl Dom {
    fn parse(html: &str) -> Dom {
        let mut stack = vec![Dom {
            name: "#document".into(),
            ..Dom::default()
        }];
        let mut rest = html;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("<!") {
                let end = if after.starts_with("--") { "-->" } else { ">" };
                let at = after.find(end).expect("an unclosed comment or doctype");
                rest = &after[at + end.len()..];
            } else if let Some(after) = rest.strip_prefix("</") {
                let at = after.find('>').expect("an unclosed end tag");
                let name = after[..at].trim().to_ascii_lowercase();
                rest = &after[at + 1..];
                // Pop to the matching element.
                if stack.iter().skip(1).any(|e| e.name == name) {
                    loop {
                        let done = stack.last().is_some_and(|e| e.name == name);
                        close(&mut stack);
                        if done {
                            break;
                        }
                    }
                }
            } else if let Some(after) = rest.strip_prefix('<') {
                let (el, self_closing, tail) = start_tag(after);
                rest = tail;
                let raw = matches!(el.name.as_str(), "style" | "script");
                let name = el.name.clone();
                stack.push(el);
                if raw {
                    let end = format!("</{name}>");
                    let at = rest.find(&end).unwrap_or(rest.len());
                    let text = rest[..at].to_string();
                    stack.last_mut().unwrap().children.push(Node::Text(text));
                    rest = &rest[at..];
                } else if self_closing || VOID.contains(&name.as_str()) {
                    close(&mut stack);
                }
            } else {
                let at = rest.find('<').unwrap_or(rest.len());
                let text = decode(&rest[..at]);
                stack.last_mut().unwrap().children.push(Node::Text(text));
                rest = &rest[at..];
            }
        }
        while stack.len() > 1 {
            close(&mut stack);
        }
        stack.pop().unwrap()
    }

    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }

    /// Every element below this one named `name`, in document order.
    fn all(&self, name: &str) -> Vec<&Dom> {
        let mut out = Vec::new();
        for c in &self.children {
            if let Node::El(e) = c {
                if e.name == name {
                    out.push(e);
                }
                out.extend(e.all(name));
            }
        }
        out
    }

    fn by_id(&self, id: &str) -> Option<&Dom> {
        if self.attr("id") == Some(id) {
            return Some(self);
        }
        self.children.iter().find_map(|c| match c {
            Node::El(e) => e.by_id(id),
            Node::Text(_) => None,
        })
    }

    /// The text content, as `textContent` gives it.
    fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.children {
            match c {
                Node::Text(t) => s.push_str(t),
                Node::El(e) => s.push_str(&e.text()),
            }
        }
        s
    }

    fn title(&self) -> String {
        self.all("title")
            .first()
            .map(|t| t.text())
            .unwrap_or_default()
    }

    /// The `<tr class="{class}">` rows.
    fn rows(&self, class: &str) -> Vec<&Dom> {
        self.all("tr")
            .into_iter()
            .filter(|r| r.attr("class") == Some(class))
            .collect()
    }

    /// A row's cells' text.
    fn cells(&self) -> Vec<String> {
        self.all("td").iter().map(|c| c.text()).collect()
    }
}

fn close(stack: &mut Vec<Dom>) {
    let el = stack.pop().expect("an open element");
    stack
        .last_mut()
        .expect("the document")
        .children
        .push(Node::El(el));
}

/// Reads a start tag after its `<`: the element, whether it ended in `/>`, and the rest.
fn start_tag(s: &str) -> (Dom, bool, &str) {
    let name_end = s
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .expect("an unclosed start tag");
    let mut el = Dom {
        name: s[..name_end].to_ascii_lowercase(),
        ..Dom::default()
    };
    let mut rest = &s[name_end..];
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("/>") {
            return (el, true, r);
        }
        if let Some(r) = rest.strip_prefix('>') {
            return (el, false, r);
        }
        if let Some(r) = rest.strip_prefix('/') {
            rest = r;
            continue;
        }
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '>' || c == '/')
            .expect("an unclosed attribute");
        let name = rest[..end].to_ascii_lowercase();
        rest = &rest[end..];
        let value = if let Some(r) = rest.strip_prefix("=\"") {
            let close = r.find('"').expect("an unclosed attribute value");
            rest = &r[close + 1..];
            decode(&r[..close])
        } else {
            String::new()
        };
        el.attrs.insert(name, value);
    }
}

/// Decodes the character references Chromium's serialiser writes (and numeric ones).
fn decode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let end = rest.find(';').filter(|e| *e < 12);
        let (entity, after) = match end {
            Some(e) => (&rest[1..e], &rest[e + 1..]),
            None => {
                out.push('&');
                rest = &rest[1..];
                continue;
            }
        };
        let c = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = after;
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// A recording proxy

/// A loopback HTTP proxy in front of connmon that records each request's path and the status it
/// answered: it passes the first `pass` dashboard loads through, then answers a page with no
/// refresh (titled `stopped`), so a browser that follows refreshes comes to rest.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<(String, u16)>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start(upstream: u16, pass: usize) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let seen = seen2.clone();
                        thread::spawn(move || serve(stream, upstream, pass, &seen));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Recorder { port, seen, stop }
    }

    fn seen(&self) -> Vec<(String, u16)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(mut stream: TcpStream, upstream: u16, pass: usize, seen: &Mutex<Vec<(String, u16)>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return, // a speculative connection that sent nothing
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut log = seen.lock().unwrap();
    let loads = log
        .iter()
        .filter(|(p, _)| p.starts_with("/api/dashboard"))
        .count();
    let (status, content_type, body) = if path.starts_with("/api/dashboard") && loads < pass {
        let resp = Request::get(&path).send(upstream);
        let ct = resp
            .header("content-type")
            .unwrap_or("text/plain")
            .to_string();
        (resp.status, ct, resp.body)
    } else if path.starts_with("/api/dashboard") {
        let page =
            "<!DOCTYPE html><html><head><title>stopped</title></head><body>stopped</body></html>";
        (200, "text/html".to_string(), page.as_bytes().to_vec())
    } else {
        (404, "text/plain".to_string(), b"not found".to_vec())
    };
    log.push((path, status));
    drop(log);
    let mut answer = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    let _ = stream.write_all(&answer);
}
