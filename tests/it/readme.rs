//! The README's "See an alert" walkthrough, run as written (its `sh` blocks, in order, in one bash
//! shell, against a real standalone connmon), twice on the same database: each run must alert.

use crate::support::Connmon;
use std::process::Command;

/// The `sh` blocks of the README section that starts with `heading`, up to the next `## `.
fn sh_blocks(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR")))
        .expect("README.md");
    let start = readme.find(heading).expect("the walkthrough heading");
    let rest = &readme[start + heading.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    section
        .split("```sh\n")
        .skip(1)
        .map(|b| b[..b.find("```").expect("a closed block")].to_string())
        .collect()
}

/// Runs `blocks` in one bash shell with the README's port replaced by `port`; the output of
/// each block, in order.
fn run_walkthrough(blocks: &[String], port: u16) -> Vec<String> {
    const MARK: &str = "\n--- next block ---\n";
    let mut script = String::from("set -u\n");
    for b in blocks {
        script.push_str(&b.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")));
        script.push_str(&format!("\nprintf '{}'\n", MARK.replace('\n', "\\n")));
    }
    let curl = Command::new("curl").arg("--version").output();
    assert!(
        curl.is_ok_and(|o| o.status.success()),
        "the walkthrough needs curl (scripts/test installs it; Debian: apt-get install curl)"
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parts: Vec<String> = stdout.split(MARK).map(str::to_string).collect();
    parts.pop(); // after the last mark
    assert_eq!(parts.len(), blocks.len(), "{stdout}");
    parts
}

#[test]
fn the_see_an_alert_walkthrough_alerts_every_time_it_is_run() {
    let blocks = sh_blocks("### See an alert");
    // Names, disconnect, sweep, device state, reconnect.
    assert_eq!(blocks.len(), 5, "{blocks:#?}");
    let cm = Connmon::standalone(&[]);
    for run in 1..=2 {
        let out = run_walkthrough(&blocks, cm.port);
        let context = format!("run {run}: {out:#?}\nconnmon's log:\n{}", cm.logs());
        assert_eq!(
            out[1].trim(),
            r#"{"accepted":1,"alerts":0,"ignored":0,"rejected":0}"#,
            "{context}"
        );
        // The sweep the reader asks for raised the alert, or connmon's own sweep did first.
        assert!(
            out[2].contains("connmon sweep: 1 new disconnected alert(s)")
                && out[2].contains("ALERT disconnected")
                || out[2].contains("connmon sweep: 0 new disconnected alert(s)"),
            "{context}"
        );
        let state: serde_json::Value = serde_json::from_str(&out[3]).expect("device JSON");
        assert_eq!(state["state"], "alerted", "{context}");
        assert_eq!(
            out[4].trim(),
            r#"{"accepted":1,"alerts":1,"ignored":0,"rejected":0}"#,
            "{context}"
        );
        // What the reader sees in the terminal running connmon: one more of each per run.
        let log = cm.logs();
        for kind in ["disconnected", "reconnected"] {
            let line = format!("ALERT {kind} hub=\"myhub\" device=\"sensor-");
            assert_eq!(log.matches(&line).count(), run, "{line}\n{context}");
        }
    }
}
