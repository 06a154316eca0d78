//! Settings: defaults, every accepted form, and errors that name the setting without leaking secrets.

use connmon::settings::{parse_duration, Mode, Settings, StoreKind};
use std::collections::HashMap;
use std::time::Duration;

fn load(pairs: &[(&str, &str)]) -> Result<Settings, connmon::settings::SettingsError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::from_lookup(|k| map.get(k).cloned())
}

#[test]
fn defaults_match_the_design() {
    let s = load(&[]).unwrap();
    assert_eq!(s.grace, Duration::from_secs(300));
    assert_eq!(s.webhook_url, None);
    assert_eq!(
        s.store,
        StoreKind::Sqlite {
            path: "connmon.db".into()
        }
    );
    assert_eq!(
        s.mode,
        Mode::Standalone {
            listen: "127.0.0.1:8080".parse().unwrap(),
            sweep_interval: Duration::from_secs(30),
            key: None,
            api_key: None,
        }
    );
}

#[test]
fn functions_mode_when_the_host_sets_a_port() {
    let s = load(&[
        ("FUNCTIONS_CUSTOMHANDLER_PORT", "40123"),
        ("CONNMON_LISTEN", "0.0.0.0:1"),
    ])
    .unwrap();
    assert_eq!(s.mode, Mode::Functions { port: 40123 });
}

#[test]
fn every_duration_form() {
    let cases = [
        ("90s", 90_000),
        ("5m", 300_000),
        ("1h30m", 5_400_000),
        ("1h30m15s", 5_415_000),
        ("2d", 172_800_000),
        ("1500ms", 1_500),
        ("300", 300_000),
        (" 300 ", 300_000),
        ("00:05:00", 300_000),
        ("01:30:00", 5_400_000),
        ("00:00:30.5", 30_500),
        ("1.02:00:00", 93_600_000),
        ("00:05", 300_000),
        ("0", 0),
    ];
    for (s, ms) in cases {
        assert_eq!(parse_duration(s), Some(Duration::from_millis(ms)), "{s:?}");
    }
    for bad in [
        "",
        "5 m",
        "5min",
        "m5",
        "-5m",
        "5m1h",
        "1h1h",
        "25:00:00",
        "00:60:00",
        "1.5h",
        "abc",
        "00:05:00:00",
    ] {
        assert_eq!(parse_duration(bad), None, "{bad:?}");
    }
}

#[test]
fn bad_values_name_the_setting_the_value_and_the_accepted_forms() {
    let cases = [
        ("CONNMON_GRACE_PERIOD", "five minutes", "90s, 5m, 1h30m"),
        ("CONNMON_GRACE_PERIOD", "400d", "at most 30 days"),
        ("CONNMON_STORE", "redis", "`sqlite` or `table`"),
        ("CONNMON_LISTEN", "localhost", "IP address and port"),
        ("CONNMON_SWEEP_INTERVAL", "0s", "between 1s and 1h"),
        ("FUNCTIONS_CUSTOMHANDLER_PORT", "70000", "port number"),
    ];
    for (name, value, expected) in cases {
        let e = load(&[(name, value)]).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.name, name);
        assert!(
            msg.contains(name) && msg.contains(value) && msg.contains(expected),
            "{msg}"
        );
    }
}

#[test]
fn a_bad_webhook_url_is_reported_without_its_value() {
    for bad in [
        "not a url sig=SECRET123",
        "ftp://host/x?sig=SECRET123",
        "https://",
    ] {
        let e = load(&[("CONNMON_ALERT_WEBHOOK_URL", bad)]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("CONNMON_ALERT_WEBHOOK_URL"), "{msg}");
        assert!(!msg.contains("SECRET123") && !msg.contains("ftp"), "{msg}");
        assert_eq!(e.value, None);
    }
    let ok = load(&[(
        "CONNMON_ALERT_WEBHOOK_URL",
        "https://example.invalid/hook?sig=SECRET123",
    )])
    .unwrap();
    assert!(
        !format!("{ok:?}").contains("SECRET123"),
        "Debug never shows the secret"
    );
    assert_eq!(
        ok.webhook_url.unwrap().expose(),
        "https://example.invalid/hook?sig=SECRET123"
    );
}

#[test]
fn blank_values_count_as_unset() {
    let s = load(&[
        ("CONNMON_ALERT_WEBHOOK_URL", ""),
        ("CONNMON_GRACE_PERIOD", " "),
        ("CONNMON_STORE", ""),
    ])
    .unwrap();
    assert_eq!(s, load(&[]).unwrap());
}

#[test]
fn table_store_settings_come_from_its_own_connection_or_azure_web_jobs_storage() {
    let dev = load(&[
        ("CONNMON_STORE", "table"),
        ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
    ])
    .unwrap();
    match dev.store {
        StoreKind::Table { endpoint, table } => {
            assert_eq!(table, "connmon");
            assert!(
                endpoint
                    .base_url
                    .starts_with("http://127.0.0.1:10002/devstoreaccount1"),
                "{}",
                endpoint.base_url
            );
        }
        other => panic!("{other:?}"),
    }
    let own = load(&[
        ("CONNMON_STORE", "table"),
        ("CONNMON_TABLE_NAME", "alerts2"),
        ("CONNMON_TABLE_CONNECTION", "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net"),
        ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
    ])
    .unwrap();
    match own.store {
        StoreKind::Table { endpoint, table } => {
            assert_eq!(table, "alerts2");
            assert_eq!(
                endpoint.base_url.trim_end_matches('/'),
                "https://acct.table.core.windows.net"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn table_store_errors_name_the_setting() {
    let e = load(&[("CONNMON_STORE", "table")]).unwrap_err();
    assert!(e.to_string().contains("AzureWebJobsStorage"), "{e}");
    for bad in ["ab", "1abc", "has-dash", "Tables"] {
        let e = load(&[
            ("CONNMON_STORE", "table"),
            ("AzureWebJobsStorage", "UseDevelopmentStorage=true"),
            ("CONNMON_TABLE_NAME", bad),
        ])
        .unwrap_err();
        assert_eq!(e.name, "CONNMON_TABLE_NAME", "{bad}: {e}");
    }
    let e = load(&[
        ("CONNMON_STORE", "table"),
        (
            "CONNMON_TABLE_CONNECTION",
            "AccountName=a;AccountKey=%%%notbase64",
        ),
    ])
    .unwrap_err();
    assert_eq!(e.name, "CONNMON_TABLE_CONNECTION");
    assert!(!e.to_string().contains("notbase64"), "{e}");
}

#[test]
fn scope_grace_overrides_and_silences_parse_and_name_bad_items() {
    let s = load(&[
        ("CONNMON_INCLUDE", "crit-*, crit-*/*"),
        ("CONNMON_EXCLUDE", "*/$edgeAgent"),
        ("CONNMON_GRACE_OVERRIDES", "slow-*=15m, a=b=90s"),
        (
            "CONNMON_SILENCES",
            "site7-*@2026-12-01T06:00:00Z,x@y@2026-12-01T07:00:00+01:00",
        ),
    ])
    .unwrap();
    let names = |v: &[connmon::scope::Pattern]| {
        v.iter().map(|p| p.as_str().to_string()).collect::<Vec<_>>()
    };
    assert_eq!(names(&s.scope.include), ["crit-*", "crit-*/*"]);
    assert_eq!(names(&s.scope.exclude), ["*/$edgeAgent"]);
    assert_eq!(s.grace_overrides.len(), 2);
    assert_eq!(
        s.grace_overrides[1].pattern.as_str(),
        "a=b",
        "split at the last `=`"
    );
    assert_eq!(s.grace_overrides[0].grace, Duration::from_secs(900));
    assert_eq!(
        s.silences[1].pattern.as_str(),
        "x@y",
        "split at the last `@`"
    );
    assert_eq!(
        s.silences[0].until,
        connmon::model::Timestamp::parse_rfc3339("2026-12-01T06:00:00Z").unwrap()
    );
    assert_eq!(
        s.silences[1].until,
        connmon::model::Timestamp::parse_rfc3339("2026-12-01T06:00:00Z").unwrap()
    );
    for (name, value, item) in [
        ("CONNMON_GRACE_OVERRIDES", "ok=5m,broken", "broken"),
        ("CONNMON_GRACE_OVERRIDES", "x=5 minutes", "x=5 minutes"),
        ("CONNMON_GRACE_OVERRIDES", "x=400d", "x=400d"),
        ("CONNMON_SILENCES", "x@tomorrow", "x@tomorrow"),
        (
            "CONNMON_SILENCES",
            "@2026-12-01T06:00:00Z",
            "@2026-12-01T06:00:00Z",
        ),
    ] {
        let e = load(&[(name, value)]).unwrap_err();
        assert_eq!(e.name, name);
        assert!(e.to_string().contains(item), "{e}");
    }
}

#[test]
fn hub_quiet_after_and_the_api_key() {
    assert_eq!(load(&[]).unwrap().hub_quiet_after, None);
    let s = load(&[("CONNMON_HUB_QUIET_AFTER", "30m")]).unwrap();
    assert_eq!(s.hub_quiet_after, Some(Duration::from_secs(1800)));
    let key = "0123456789abcdef0123";
    let s = load(&[("CONNMON_API_KEY", key)]).unwrap();
    match s.mode {
        Mode::Standalone {
            api_key,
            key: webhook,
            ..
        } => {
            assert_eq!(api_key.map(|k| k.expose().clone()).as_deref(), Some(key));
            assert!(webhook.is_none(), "the API key is not the webhook key");
        }
        other => panic!("{other:?}"),
    }
    // A secret: refused without being echoed.
    let e = load(&[("CONNMON_API_KEY", "short")]).unwrap_err();
    assert_eq!(e.name, "CONNMON_API_KEY");
    assert!(e.value.is_none() && !e.to_string().contains("short"), "{e}");
}

#[test]
fn flapping_and_reminder_settings() {
    let s = load(&[
        ("CONNMON_FLAP_THRESHOLD", "3"),
        ("CONNMON_FLAP_WINDOW", "1h"),
        ("CONNMON_REMIND_EVERY", "4h"),
    ])
    .unwrap();
    let p = s.policy();
    assert_eq!(
        (p.flap_threshold, p.flap_window, p.remind_every),
        (
            3,
            Duration::from_secs(3600),
            Some(Duration::from_secs(14_400))
        )
    );
    let d = load(&[]).unwrap().policy();
    assert_eq!(
        (d.flap_threshold, d.flap_window, d.remind_every),
        (5, Duration::from_secs(1800), None)
    );
    for (name, value) in [
        ("CONNMON_FLAP_THRESHOLD", "1"),
        ("CONNMON_FLAP_THRESHOLD", "many"),
        ("CONNMON_FLAP_WINDOW", "10s"),
        ("CONNMON_REMIND_EVERY", "5s"),
        ("CONNMON_HUB_QUIET_AFTER", "5s"),
        ("CONNMON_HUB_QUIET_AFTER", "8d"),
        ("CONNMON_HUB_QUIET_AFTER", "soon"),
    ] {
        assert_eq!(
            load(&[(name, value)]).unwrap_err().name,
            name,
            "{name}={value}"
        );
    }
}

#[test]
fn a_timespan_past_u64_seconds_is_refused_not_wrapped() {
    // Found by fuzz.rs (`durations_parse_as_the_grammar_says_or_not_at_all`): the sum overflowed,
    // a panic in a debug build; in release it wrapped and this was accepted as about 17 hours.
    assert_eq!(parse_duration("213503982334601.23:59:59"), None);
    assert_eq!(
        parse_duration("213503982334600.23:59:59"),
        Some(Duration::from_secs(213_503_982_334_600 * 86_400 + 86_399))
    );
    let err = load(&[("CONNMON_GRACE_PERIOD", "213503982334601.23:59:59")]).unwrap_err();
    assert_eq!(err.name, "CONNMON_GRACE_PERIOD");
}

/// A grace period under one second alerts on every SAS-token renewal (a reconnect takes longer
/// than that), so it is refused wherever a grace period is given.
const TOO_SHORT: [&str; 6] = ["0", "0s", "0ms", "999ms", "00:00:00", "00:00:00.5"];

#[test]
fn a_grace_period_under_one_second_is_refused() {
    for value in TOO_SHORT {
        let e = load(&[("CONNMON_GRACE_PERIOD", value)]).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.name, "CONNMON_GRACE_PERIOD", "{msg}");
        assert!(
            msg.contains(&format!("{value:?}")) && msg.contains("at least 1s"),
            "{msg}"
        );
        assert!(msg.contains("90s, 5m, 1h30m"), "the accepted forms: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    for (value, millis) in [("1s", 1_000), ("1000ms", 1_000), ("00:00:01", 1_000)] {
        let s = load(&[("CONNMON_GRACE_PERIOD", value)]).unwrap();
        assert_eq!(s.grace, Duration::from_millis(millis), "{value}");
    }
}

#[test]
fn a_grace_override_under_one_second_is_refused() {
    for value in TOO_SHORT {
        let setting = format!("slow-*=15m,pump-*={value}");
        let e = load(&[("CONNMON_GRACE_OVERRIDES", &setting)]).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.name, "CONNMON_GRACE_OVERRIDES", "{msg}");
        assert!(
            msg.contains(&format!("pump-*={value}")) && msg.contains("at least 1s"),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
    let s = load(&[("CONNMON_GRACE_OVERRIDES", "pump-*=1s")]).unwrap();
    assert_eq!(s.grace_overrides[0].grace, Duration::from_secs(1));
}

#[test]
fn the_binary_refuses_a_zero_grace_with_one_line_and_exit_code_2() {
    for (name, value) in [
        ("CONNMON_GRACE_PERIOD", "0"),
        ("CONNMON_GRACE_PERIOD", "0ms"),
        ("CONNMON_GRACE_OVERRIDES", "pump-*=0"),
    ] {
        let exit = crate::support::run_to_exit(&[(name, value)]);
        assert_eq!(exit.code, Some(2), "{name}={value}: {exit:?}");
        let lines: Vec<&str> = exit.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {exit:?}");
        assert!(
            lines[0].contains(name) && lines[0].contains(value),
            "{exit:?}"
        );
    }
}

/// `connmon replay --grace` and `connmon simulate --grace` take the range the setting takes: a
/// report on a grace the service refuses would recommend nothing an operator can use.
#[test]
fn replay_and_simulate_refuse_the_graces_the_setting_refuses() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_connmon"))
            .args(args)
            .output()
            .expect("run connmon")
    };
    for command in ["replay", "simulate"] {
        for grace in ["500ms", "5m,999ms", "31d"] {
            let mut args = vec![command, "--grace", grace];
            if command == "replay" {
                args.push("/nonexistent/history.jsonl");
            }
            let out = run(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} --grace {grace}: {stderr}"
            );
            assert!(
                stderr.contains("--grace") && stderr.contains("from 1s to 30d"),
                "{command} --grace {grace}: {stderr}"
            );
        }
    }
}

#[test]
fn quick_retry_time_defaults_to_30s_and_stays_under_the_timer_period() {
    assert_eq!(load(&[]).unwrap().quick_retry_for, Duration::from_secs(30));
    let off = load(&[("CONNMON_QUICK_RETRY_FOR", "0s")]).unwrap();
    assert_eq!(off.quick_retry_for, Duration::ZERO);
    let most = load(&[("CONNMON_QUICK_RETRY_FOR", "40s")]).unwrap();
    assert_eq!(most.quick_retry_for, Duration::from_secs(40));
    for bad in ["41s", "1m", "soon", "-1s"] {
        let e = load(&[("CONNMON_QUICK_RETRY_FOR", bad)]).unwrap_err();
        assert_eq!(e.name, "CONNMON_QUICK_RETRY_FOR");
        assert!(e.to_string().contains("between 0s (off) and 40s"), "{e}");
    }
}
