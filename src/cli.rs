//! The subcommands `connmon replay` and `connmon simulate`: argument parsing (by hand, like the
//! settings: every error names the argument and the accepted forms), reading and writing files, the
//! `--target` POSTs. The work itself is in `replay` and `simulate`. Without a subcommand `main`
//! runs the service.

use crate::replay::{self, input, report::human, Options};
use crate::settings::{is_grace, parse_duration, MAX_GRACE, MIN_GRACE};
use crate::simulate::{self, Config, Sdk};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub const USAGE: &str = "\
connmon — alerts on Azure IoT Hub devices that are really offline

usage:
  connmon                      run the service (settings from CONNMON_* environment variables)
  connmon replay FILE...       replay recorded history through connmon's state machine
  connmon simulate [OPTIONS]   generate a fleet's history with ground truth, and score connmon on it
  connmon help [replay|simulate]
";

pub const REPLAY_USAGE: &str = "\
usage: connmon replay [OPTIONS] FILE...

Runs recorded history through connmon's own state machine on a virtual clock and reports what would
have been alerted, at one or several grace periods, and which grace period the data recommends.

FILE (gzip detected by content; `-` reads standard input) holds any of:
  Event Grid events or deliveries: JSON array, single object, JSONL, CloudEvents single or batch,
    dead-letter envelopes;
  IoT Hub Connections resource logs: {\"records\": [...]}, concatenated objects, JSONL, `properties`
    as an object or a string; Log Analytics exports of AzureDiagnostics as JSON or CSV
    (TimeGenerated, OperationName, ResultType, ResultDescription, DeviceId, Protocol, SDKVersion),
    or the Log Analytics query API's answer {\"tables\": [{\"columns\": [...], \"rows\": [...]}]}.
  Resource logs carry no sequence numbers: they are ordered by time, and the report says so.

options:
  --grace LIST    grace periods to report on, e.g. 2m,5m,10m (default 5m), each 1s to 30d as the
                  service's CONNMON_GRACE_PERIOD; the recommended one is always added
  --sweep DUR     the sweep timer modelled (default 30s, the standalone default)
  --flap-threshold N   silent reconnects within the flap window that raise `flapping`, 2 to 64
                  (default 5; the service's CONNMON_FLAP_THRESHOLD)
  --flap-window DUR    the flapping window, 1m to 7d (default 30m; CONNMON_FLAP_WINDOW)
  --remind-every DUR   repeat still-open `disconnected` alerts this often, 1m to 30d (default:
                  never; CONNMON_REMIND_EVERY)
  --until TIME    run the clock on to TIME (RFC 3339, e.g. when the history was exported; not
                  before the last event; default: the last event), so outages past their grace
                  by then alert
  --json          print the report as JSON instead of text
  --html FILE     also write the report as a self-contained HTML page with an SVG histogram
  -h, --help      this help
Durations: 90s, 5m, 1h30m, plain seconds 300, or 00:05:00. Give the settings your service runs
with, so the replay decides as it would.
";

pub const SIMULATE_USAGE: &str = "\
usage: connmon simulate [OPTIONS]

Generates a fleet's connection events (token renewal per SDK with jitter, real outages,
duplicate-identity ping-pong, IoT Hub's 60 s sampling, Event Grid's delays, retries and duplicates)
as Event Grid JSON, with the ground truth, and scores connmon's state machine against it.

options:
  --identities N         fleet size (default 100)
  --length DUR           simulated time (default 24h)
  --start TIME           RFC 3339 start (default 2026-11-01T00:00:00Z)
  --hub NAME             hub name (default sim-hub)
  --sdk-mix LIST         SDK weights, e.g. node=2,c=1,python=1,dotnet=1,java=1 (default all 1)
  --outages N            real outages, on distinct identities (default 5)
  --outage-durations L   their durations, used in turn (default 10m,30m)
  --ping-pong N          identities with a 30-minute duplicate-identity episode (default 0)
  --no-sampling          publish every change at its own time (no 60 s sampling)
  --duplicates RATE      share of events Event Grid delivers twice (default 0.01)
  --retries RATE         share of events delivered late after retries (default 0.002)
  --seed N               random seed (default 1)
  --grace LIST           grace periods to score (default 5m; each 1s to 30d); the recommended one is added
  --out FILE             the events, one Event Grid event per line (default: standard output)
  --truth FILE           write the ground truth and the scores as JSON
  --target URL           POST the events, in delivery order, as Event Grid arrays to a running
                         connmon (e.g. http://127.0.0.1:8080/api/events)
  --batch N              events per POST with --target (default 100, at most 5000)
  -h, --help             this help
The score (false alerts, missed outages, detection delay) goes to standard error when the events go
to standard output, else to standard output.
";

/// Runs a subcommand when `args` (without the program name) names one; `None` means "run the
/// service".
pub fn dispatch(args: &[String]) -> Option<ExitCode> {
    let first = args.first()?;
    let rest = &args[1..];
    Some(match first.as_str() {
        "replay" => finish(replay_cmd(rest)),
        "simulate" => finish(simulate_cmd(rest)),
        "help" | "-h" | "--help" => {
            let text = match rest.first().map(String::as_str) {
                Some("replay") => REPLAY_USAGE,
                Some("simulate") => SIMULATE_USAGE,
                _ => USAGE,
            };
            print!("{text}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("connmon: unknown command `{other}`\n{USAGE}");
            ExitCode::from(2)
        }
    })
}

/// A failed command: usage errors exit 2, failures at work 1.
#[derive(Debug)]
enum CliError {
    Usage(String),
    Failed(String),
}

fn finish(r: Result<(), CliError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Usage(m)) => {
            eprintln!("connmon: {m} (see --help)");
            ExitCode::from(2)
        }
        Err(CliError::Failed(m)) => {
            eprintln!("connmon: {m}");
            ExitCode::from(1)
        }
    }
}

fn usage(m: impl Into<String>) -> CliError {
    CliError::Usage(m.into())
}

/// The value after a `--flag` (or in `--flag=value`).
fn value<'a>(
    flag: &str,
    inline: Option<&'a str>,
    it: &mut impl Iterator<Item = &'a String>,
) -> Result<&'a str, CliError> {
    match inline {
        Some(v) => Ok(v),
        None => it
            .next()
            .map(String::as_str)
            .ok_or_else(|| usage(format!("{flag} needs a value"))),
    }
}

fn durations(flag: &str, v: &str) -> Result<Vec<Duration>, CliError> {
    v.split(',')
        .map(|p| {
            parse_duration(p).filter(|d| !d.is_zero()).ok_or_else(|| {
                usage(format!(
                    "{flag}: `{p}` is not a duration (e.g. 90s, 5m, 1h30m, 300, 00:05:00)"
                ))
            })
        })
        .collect()
}

/// Grace periods in the range `CONNMON_GRACE_PERIOD` accepts (`settings::is_grace`): a report on
/// a grace the service refuses would recommend something an operator cannot set.
fn graces(flag: &str, v: &str) -> Result<Vec<Duration>, CliError> {
    let list = durations(flag, v)?;
    match v.split(',').zip(&list).find(|(_, d)| !is_grace(**d)) {
        None => Ok(list),
        Some((p, _)) => Err(usage(format!(
            "{flag}: `{}` is not a grace period from {} to {} (the range CONNMON_GRACE_PERIOD takes)",
            p.trim(),
            human(MIN_GRACE.as_secs() as i64),
            human(MAX_GRACE.as_secs() as i64)
        ))),
    }
}

/// One duration between `min` and `max` seconds: the range the service's setting of the same
/// name accepts (settings.rs).
fn bounded(flag: &str, v: &str, min: u64, max: u64) -> Result<Duration, CliError> {
    let d = durations(flag, v)?;
    match d[..] {
        [d] if (min..=max).contains(&d.as_secs()) => Ok(d),
        _ => Err(usage(format!(
            "{flag}: `{v}` is not one duration from {} to {}",
            human(min as i64),
            human(max as i64)
        ))),
    }
}

fn number<T: std::str::FromStr>(flag: &str, v: &str, what: &str) -> Result<T, CliError> {
    v.parse()
        .map_err(|_| usage(format!("{flag}: `{v}` is not {what}")))
}

fn split_flag(a: &str) -> (&str, Option<&str>) {
    match a.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f, Some(v)),
        _ => (a, None),
    }
}

fn replay_cmd(args: &[String]) -> Result<(), CliError> {
    let mut opts = Options::default();
    let mut json = false;
    let mut html: Option<PathBuf> = None;
    let mut files: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = split_flag(a);
        match flag {
            "-h" | "--help" => {
                print!("{REPLAY_USAGE}");
                return Ok(());
            }
            "--grace" => opts.graces = graces(flag, value(flag, inline, &mut it)?)?,
            "--sweep" => {
                opts.sweep_every = durations(flag, value(flag, inline, &mut it)?)?
                    .into_iter()
                    .next()
                    .expect("split yields one part at least")
            }
            "--flap-threshold" => {
                opts.flap_threshold =
                    number(flag, value(flag, inline, &mut it)?, "a whole number")?;
                if !(2..=64).contains(&opts.flap_threshold) {
                    return Err(usage(
                        "--flap-threshold: from 2 to 64 reconnects (as CONNMON_FLAP_THRESHOLD)",
                    ));
                }
            }
            "--flap-window" => {
                opts.flap_window = bounded(flag, value(flag, inline, &mut it)?, 60, 7 * 86_400)?
            }
            "--remind-every" => {
                opts.remind_every = Some(bounded(
                    flag,
                    value(flag, inline, &mut it)?,
                    60,
                    30 * 86_400,
                )?)
            }
            "--until" => {
                let v = value(flag, inline, &mut it)?;
                opts.until = Some(crate::model::Timestamp::parse_rfc3339(v).ok_or_else(|| {
                    usage(format!(
                        "--until: `{v}` is not an RFC 3339 time (e.g. 2026-11-27T12:00:00Z)"
                    ))
                })?);
            }
            "--json" => json = true,
            "--html" => html = Some(value(flag, inline, &mut it)?.into()),
            f if f.starts_with("--") => return Err(usage(format!("unknown option `{f}`"))),
            file => files.push(file.to_string()),
        }
    }
    if files.is_empty() {
        return Err(usage("replay needs at least one FILE"));
    }
    let mut loader = input::Loader::new();
    let mut inputs = Vec::new();
    for f in &files {
        let (bytes, gzip) = if f == "-" {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
                .map_err(|e| CliError::Failed(format!("standard input: {e}")))?;
            (input::Bytes::Owned(b), false)
        } else {
            input::read_file(std::path::Path::new(f)).map_err(CliError::Failed)?
        };
        inputs.push((f, bytes, gzip));
    }
    let total: usize = inputs.iter().map(|(_, b, _)| b.len()).sum();
    let mut progress = input::Progress::new(total);
    let mut done = 0;
    for (name, bytes, gzip) in &inputs {
        progress.next_file(done);
        loader
            .add(name, *gzip, bytes, &mut |n| progress.update(n))
            .map_err(CliError::Failed)?;
        done += bytes.len();
    }
    progress.finish();
    drop(inputs);
    let loaded = loader.finish();
    if let (Some(until), Some(last)) = (opts.until, loaded.timeline.last_time()) {
        if until < last {
            return Err(usage(format!(
                "--until {} is before the last event ({}): the clock cannot stop before the history ends",
                until.to_rfc3339(),
                last.to_rfc3339()
            )));
        }
    }
    let report = replay::analyse(&loaded, &opts);
    if let Some(path) = html {
        std::fs::write(&path, replay::html::render(&report))
            .map_err(|e| CliError::Failed(format!("--html {}: {e}", path.display())))?;
    }
    let text = if json {
        report.to_json() + "\n"
    } else {
        report.to_text()
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| CliError::Failed(format!("standard output: {e}")))
}

fn sdk_mix(v: &str) -> Result<Vec<(Sdk, u32)>, CliError> {
    v.split(',')
        .map(|part| {
            let (name, w) = part.split_once('=').unwrap_or((part, "1"));
            let sdk = Sdk::parse(name.trim()).ok_or_else(|| {
                usage(format!(
                    "--sdk-mix: unknown SDK `{name}` (node, c, python, dotnet, java)"
                ))
            })?;
            Ok((sdk, number("--sdk-mix", w.trim(), "a whole weight")?))
        })
        .collect()
}

fn simulate_cmd(args: &[String]) -> Result<(), CliError> {
    let mut cfg = Config::default();
    let mut graces = vec![replay::DEFAULT_GRACE];
    let mut out: Option<PathBuf> = None;
    let mut truth_path: Option<PathBuf> = None;
    let mut target: Option<String> = None;
    let mut batch = 100usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = split_flag(a);
        let rate = |v: &str| -> Result<f64, CliError> {
            let r: f64 = number(flag, v, "a rate between 0 and 1")?;
            if (0.0..=1.0).contains(&r) {
                Ok(r)
            } else {
                Err(usage(format!(
                    "{flag}: `{v}` is not a rate between 0 and 1"
                )))
            }
        };
        match flag {
            "-h" | "--help" => {
                print!("{SIMULATE_USAGE}");
                return Ok(());
            }
            "--identities" => {
                cfg.identities = number(flag, value(flag, inline, &mut it)?, "a whole number")?
            }
            "--length" => cfg.length = durations(flag, value(flag, inline, &mut it)?)?[0],
            "--start" => {
                let v = value(flag, inline, &mut it)?;
                cfg.start = crate::model::Timestamp::parse_rfc3339(v)
                    .ok_or_else(|| usage(format!("--start: `{v}` is not an RFC 3339 time")))?
            }
            "--hub" => cfg.hub = value(flag, inline, &mut it)?.to_string(),
            "--sdk-mix" => cfg.sdk_mix = sdk_mix(value(flag, inline, &mut it)?)?,
            "--outages" => {
                cfg.outages = number(flag, value(flag, inline, &mut it)?, "a whole number")?
            }
            "--outage-durations" => {
                cfg.outage_durations = durations(flag, value(flag, inline, &mut it)?)?
            }
            "--ping-pong" => {
                cfg.ping_pong = number(flag, value(flag, inline, &mut it)?, "a whole number")?
            }
            "--no-sampling" => cfg.sampling = false,
            "--duplicates" => cfg.duplicate_rate = rate(value(flag, inline, &mut it)?)?,
            "--retries" => cfg.retry_rate = rate(value(flag, inline, &mut it)?)?,
            "--seed" => cfg.seed = number(flag, value(flag, inline, &mut it)?, "a whole number")?,
            "--grace" => graces = self::graces(flag, value(flag, inline, &mut it)?)?,
            "--out" => out = Some(value(flag, inline, &mut it)?.into()),
            "--truth" => truth_path = Some(value(flag, inline, &mut it)?.into()),
            "--target" => target = Some(value(flag, inline, &mut it)?.to_string()),
            "--batch" => {
                batch = number(flag, value(flag, inline, &mut it)?, "a whole number")?;
                if !(1..=5000).contains(&batch) {
                    return Err(usage("--batch: between 1 and 5000 events per POST"));
                }
            }
            other => return Err(usage(format!("unknown option `{other}`"))),
        }
    }
    if cfg.identities == 0 {
        return Err(usage("--identities: at least 1"));
    }
    if cfg.outages + cfg.ping_pong > cfg.identities {
        return Err(usage(
            "--outages + --ping-pong: at most one episode per identity, so at most --identities",
        ));
    }
    let sim = simulate::generate(&cfg);
    let lines: Vec<String> = sim
        .deliveries
        .iter()
        .map(|d| simulate::event_grid_json(&sim, d).to_string())
        .collect();
    let to_stdout = out.as_ref().is_none_or(|p| p.as_os_str() == "-");
    {
        let mut text = lines.join("\n");
        text.push('\n');
        match &out {
            Some(p) if !to_stdout => std::fs::write(p, text)
                .map_err(|e| CliError::Failed(format!("--out {}: {e}", p.display())))?,
            _ => std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| CliError::Failed(format!("standard output: {e}")))?,
        }
    }

    // The score: connmon's machine over the deliveries as Event Grid would make them.
    let tl = simulate::timeline(&sim);
    let loaded = input::Loaded {
        log_info: vec![Default::default(); tl.identities.len()],
        timeline: tl,
        ordered_by: Some(input::OrderedBy::Sequence),
        ..Default::default()
    };
    let report = replay::analyse(
        &loaded,
        &Options {
            graces: graces.clone(),
            ..Options::default()
        },
    );
    let recommended = Duration::from_secs(report.recommended_grace_seconds as u64);
    let mut all = graces;
    if !all.contains(&recommended) {
        all.push(recommended);
    }
    all.sort();
    let scores: Vec<simulate::Score> = all
        .iter()
        .map(|g| {
            let r = replay::engine::run(
                &loaded.timeline,
                &replay::policy(*g),
                Options::default().sweep_every,
                &mut replay::engine::Quiet,
            );
            simulate::score(&sim.truth, &r.alerts, *g)
        })
        .collect();
    let mut summary = format!(
        "connmon simulate: {} identities, {} real changes, {} events published, {} deliveries; {} real outages, {} duplicate-identity episodes\nrecommended grace {}: {}\n",
        cfg.identities,
        sim.truth.changes,
        sim.truth.published,
        sim.truth.deliveries,
        sim.truth.outages.len(),
        sim.truth.duplicate_identities.len(),
        human(report.recommended_grace_seconds),
        report.recommendation
    );
    for s in &scores {
        summary.push_str(&format!(
            "grace {}{}: {} false alerts, {} of {} outages longer than grace + 2m missed, detection delay median {} max {}\n",
            human(s.grace_seconds),
            if s.grace_seconds == report.recommended_grace_seconds { " (recommended)" } else { "" },
            s.false_alerts,
            s.missed_outages,
            s.outages_longer_than_grace_plus_2m,
            s.detection_delay_median_seconds.map_or("-".into(), human),
            s.detection_delay_max_seconds.map_or("-".into(), human),
        ));
    }
    if let Some(p) = &truth_path {
        let doc = serde_json::json!({
            "config": cfg,
            "truth": sim.truth,
            "recommendedGraceSeconds": report.recommended_grace_seconds,
            "scores": scores,
        });
        std::fs::write(p, serde_json::to_string_pretty(&doc).expect("serialisable"))
            .map_err(|e| CliError::Failed(format!("--truth {}: {e}", p.display())))?;
    }
    if let Some(url) = &target {
        let posted = post_all(url, &lines, batch).map_err(CliError::Failed)?;
        summary.push_str(&format!(
            "posted {} events in {} requests to the target\n",
            lines.len(),
            posted
        ));
    }
    if to_stdout {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    Ok(())
}

/// POSTs the event lines as Event Grid arrays of `batch`, in order, one request at a time (the
/// order is the delivery order the simulation modelled). Returns how many requests were sent.
fn post_all(url: &str, lines: &[String], batch: usize) -> Result<usize, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("--target: {}", e.without_url()))?;
        let mut n = 0;
        for chunk in lines.chunks(batch) {
            let body = format!("[{}]", chunk.join(","));
            let resp = client
                .post(url)
                .header("Content-Type", "application/json")
                .header("aeg-event-type", "Notification")
                .body(body)
                .send()
                .await
                .map_err(|e| format!("--target: POST failed: {}", e.without_url()))?;
            if !resp.status().is_success() {
                return Err(format!(
                    "--target: answered HTTP {} to POST {} of {}",
                    resp.status().as_u16(),
                    n + 1,
                    lines.len().div_ceil(batch)
                ));
            }
            n += 1;
        }
        Ok(n)
    })
}
