//! The Functions app layout: `host.json`, the two `function.json` files and
//! `local.settings.json.example`, checked against the SchemaStore schemas (leniently: that schema
//! set is over-permissive and strict validators reject valid files) and against what the host needs.

use crate::support::SETTINGS;
use connmon::settings::Settings;
use serde_json::{Map, Value};
use std::collections::HashMap;

fn read(path: &str) -> Value {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{full}: {e}"))
}

/// A lenient JSON Schema check: follows local `$ref`s, checks `type`, `enum`, `required` and
/// `additionalProperties: false`, and recurses into known properties. Unknown keywords pass.
fn check(root: &Value, schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let schema = resolve(root, schema);
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.is_empty()
            || types.iter().any(|t| match *t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "boolean" => v.is_boolean(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "null" => v.is_null(),
                _ => true,
            });
        if !ok {
            errors.push(format!("{path}: expected type {t}, got {v}"));
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(v) {
            errors.push(format!("{path}: {v} is not one of {allowed:?}"));
        }
    }
    if let (Value::Object(obj), Some(props)) =
        (v, schema.get("properties").and_then(Value::as_object))
    {
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(req.as_str().unwrap_or_default()) {
                errors.push(format!("{path}: missing required {req}"));
            }
        }
        for (k, child) in obj {
            match props.get(k) {
                Some(s) => check(root, s, child, &format!("{path}/{k}"), errors),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{path}: unknown property {k}"))
                }
                None => {}
            }
        }
    }
}

fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) if r.starts_with("#/") => r[2..]
            .split('/')
            .try_fold(root, |node, part| node.get(part))
            .map(|s| resolve(root, s))
            .unwrap_or(schema),
        _ => schema,
    }
}

fn assert_valid(root: &Value, schema: &Value, v: &Value, what: &str) {
    let mut errors = Vec::new();
    check(root, schema, v, "", &mut errors);
    assert!(errors.is_empty(), "{what}:\n{}", errors.join("\n"));
}

#[test]
fn host_json_is_a_custom_handler_with_the_v4_extension_bundle() {
    let host = read("host.json");
    let schema = read("tests/fixtures/schemas/host.json");
    assert_valid(
        &schema,
        &schema["definitions"]["version-2"],
        &host,
        "host.json",
    );
    assert_eq!(host["version"], "2.0");
    assert_eq!(
        host["extensionBundle"]["id"],
        "Microsoft.Azure.Functions.ExtensionBundle"
    );
    assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
    let exe = host["customHandler"]["description"]["defaultExecutablePath"]
        .as_str()
        .unwrap();
    assert_eq!(
        exe, "bin/connmon",
        "the README's build command installs the binary there"
    );
    // DeviceStatus (an HTTP trigger) gets the request forwarded as it came; Event Grid and timer
    // functions keep the JSON envelope either way (host-protocol.md).
    assert_eq!(host["customHandler"]["enableForwardingHttpRequest"], true);
}

#[test]
fn device_status_is_one_forwarded_http_trigger_behind_function_keys() {
    let schema = read("tests/fixtures/schemas/function.json");
    let f = read("DeviceStatus/function.json");
    assert_valid(&schema, &schema, &f, "DeviceStatus/function.json");
    let b = f["bindings"].as_array().unwrap();
    // Forwarding needs exactly one httpTrigger in and one http out.
    assert_eq!(b.len(), 2);
    let (inb, out) = (&b[0], &b[1]);
    assert_eq!(inb["type"], "httpTrigger");
    assert_eq!(inb["direction"], "in");
    assert_eq!(
        inb["authLevel"], "function",
        "the host's function keys protect it"
    );
    assert_eq!(inb["methods"], serde_json::json!(["get"]));
    // Under the `api` route prefix: /api/status, /api/devices/..., /api/dashboard.
    assert_eq!(inb["route"], "{*path}");
    assert_eq!(out["type"], "http");
    assert_eq!(out["direction"], "out");
}

#[test]
fn function_json_files_declare_the_two_triggers() {
    let schema = read("tests/fixtures/schemas/function.json");
    let ev = read("ConnectionEvent/function.json");
    let timer = read("DisconnectTimer/function.json");
    assert_valid(&schema, &schema, &ev, "ConnectionEvent/function.json");
    assert_valid(&schema, &schema, &timer, "DisconnectTimer/function.json");
    let b = &ev["bindings"][0];
    assert_eq!(
        (
            b["type"].as_str(),
            b["direction"].as_str(),
            b["name"].as_str()
        ),
        (Some("eventGridTrigger"), Some("in"), Some("eventGridEvent"))
    );
    let t = &timer["bindings"][0];
    assert_eq!(
        (t["type"].as_str(), t["direction"].as_str()),
        (Some("timerTrigger"), Some("in"))
    );
    // Six-field NCRONTAB, second 0 of every minute.
    let fields: Vec<&str> = t["schedule"].as_str().unwrap().split_whitespace().collect();
    assert_eq!(fields, ["0", "*", "*", "*", "*", "*"]);
}

#[test]
fn local_settings_example_lists_every_setting_with_its_default() {
    let example = read("local.settings.json.example");
    let schema = read("tests/fixtures/schemas/local.settings.json");
    assert_valid(&schema, &schema, &example, "local.settings.json.example");
    let values: &Map<String, Value> = example["Values"].as_object().unwrap();
    assert_eq!(values["FUNCTIONS_WORKER_RUNTIME"], "custom");
    assert_eq!(values["AzureWebJobsStorage"], "UseDevelopmentStorage=true");
    for name in SETTINGS.iter().filter(|n| n.starts_with("CONNMON_")) {
        assert!(values.contains_key(*name), "{name} missing");
    }
    // And every setting the binary reads (a `"CONNMON_…"` literal in src/) is listed, here and
    // in the tests' list (which clears them for spawned processes and drives the settings fuzzer).
    for name in settings_in_src() {
        assert!(
            values.contains_key(&name),
            "{name} is read in src/ but missing from local.settings.json.example"
        );
        assert!(
            SETTINGS.contains(&name.as_str()),
            "{name} is read in src/ but missing from tests/it/support.rs SETTINGS"
        );
    }
    // The values shown are the defaults: loading them equals loading nothing.
    let map: HashMap<String, String> = values
        .iter()
        .filter(|(k, _)| k.starts_with("CONNMON_"))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let from_example = Settings::from_lookup(|k| map.get(k).cloned()).unwrap();
    assert_eq!(from_example, Settings::from_lookup(|_| None).unwrap());
}

/// Every `"CONNMON_…"` string literal in src/ (what infra/validate also scans for).
fn settings_in_src() -> std::collections::BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut std::collections::BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for part in text.split("\"CONNMON_").skip(1) {
                    let tail: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if part[tail.len()..].starts_with('"') {
                        out.insert(format!("CONNMON_{tail}"));
                    }
                }
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut out,
    );
    assert!(
        out.contains("CONNMON_GRACE_PERIOD"),
        "the scan works: {out:?}"
    );
    out
}

#[test]
fn the_lenient_checker_still_catches_wrong_files() {
    let schema = read("tests/fixtures/schemas/host.json");
    let mut errors = Vec::new();
    let bad = serde_json::json!({"version": "2.0", "customHandler": {"description": {"defaultExecutablePath": 5}}, "extensionBundle": {"id": 1}});
    check(
        &schema,
        &schema["definitions"]["version-2"],
        &bad,
        "",
        &mut errors,
    );
    assert!(
        errors.iter().any(|e| e.contains("defaultExecutablePath")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("extensionBundle/id")),
        "{errors:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// What `func azure functionapp publish` uploads

/// Whether `.funcignore`'s `pattern` (gitignore syntax: `*` and `?` within one path component, a
/// leading or inner `/` anchors to the root, a trailing `/` matches directories only) leaves out
/// `path` (relative, `/`-separated), itself or through one of its parent directories.
fn ignores(pattern: &str, path: &str) -> bool {
    let dir_only = pattern.ends_with('/');
    let pattern = pattern.trim_end_matches('/');
    let anchored = pattern.contains('/');
    let pattern = pattern.trim_start_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    let wanted: Vec<&str> = pattern.split('/').collect();
    // Each prefix of the path (a parent directory, or the file itself) can be what is matched.
    (1..=parts.len()).any(|n| {
        let is_dir = n < parts.len();
        if dir_only && !is_dir {
            return false;
        }
        if anchored {
            n == wanted.len() && wanted.iter().zip(&parts[..n]).all(|(w, p)| glob(w, p))
        } else {
            glob(pattern, parts[n - 1])
        }
    })
}

/// `*` (any run of characters) and `?` (one character) within one path component.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    fn at(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| at(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && at(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && at(&p[1..], &t[1..]),
        }
    }
    at(&p, &t)
}

/// The repository's files as git tracks them.
fn tracked_files() -> Vec<String> {
    let out = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git ls-files");
    assert!(out.status.success(), "git ls-files failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

/// Files a working checkout also holds, untracked, once the README's commands ran: `func`
/// uploads the folder as it is, not what git tracks.
const BUILT: &[&str] = &[
    "bin/connmon",
    "target/debug/connmon",
    "target/x86_64-unknown-linux-gnu/release/connmon",
    ".crates.toml",
    ".crates2.json",
    "node_modules/azurite/package.json",
    ".tools/prometheus-venv/bin/python",
    ".tools/cargo/bin/cargo-zigbuild",
    ".venv-infra/bin/python",
    "dist/connmon-functionapp.zip",
    "connmon.db",
    "connmon.db-wal",
    "connmon.db-shm",
    "local.settings.json",
    "infra/main.parameters.json",
    ".vscode/settings.json",
];

/// What Core Tools skips by itself before `.funcignore` applies (its `GetLocalFiles`).
fn skipped_by_core_tools(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    path.split('/').any(|c| c == ".git" || c == ".vscode")
        || [
            ".funcignore",
            ".gitignore",
            "local.settings.json",
            "project.lock.json",
        ]
        .contains(&name)
}

/// What the zip of `scripts/package` holds: host.json, every folder's function.json and the
/// executable host.json names.
fn package_contents() -> std::collections::BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = std::collections::BTreeSet::from(["host.json".to_string()]);
    for entry in std::fs::read_dir(root).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("function.json").is_file() {
            let name = dir.file_name().unwrap().to_str().unwrap().to_string();
            files.insert(format!("{name}/function.json"));
        }
    }
    let exe = read("host.json")["customHandler"]["description"]["defaultExecutablePath"]
        .as_str()
        .expect("defaultExecutablePath")
        .to_string();
    files.insert(exe);
    files
}

#[test]
fn func_publish_uploads_exactly_what_the_package_holds() {
    let text = std::fs::read_to_string(format!("{}/.funcignore", env!("CARGO_MANIFEST_DIR")))
        .expect(".funcignore");
    let patterns: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for p in &patterns {
        assert!(
            !p.starts_with('!') && !p.contains("**") && !p.contains('['),
            ".funcignore: `{p}` uses syntax this check (and Core Tools' matcher) may read differently"
        );
    }
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<&&str> = patterns.iter().filter(|p| !seen.insert(**p)).collect();
    assert!(twice.is_empty(), ".funcignore lists {twice:?} twice");

    let mut files = tracked_files();
    files.extend(BUILT.iter().map(|f| f.to_string()));
    let uploaded: std::collections::BTreeSet<String> = files
        .into_iter()
        .filter(|f| !skipped_by_core_tools(f) && !patterns.iter().any(|p| ignores(p, f)))
        .collect();
    assert_eq!(
        uploaded,
        package_contents(),
        "what `func azure functionapp publish` would upload (left) is not what scripts/package \
         zips (right): fix .funcignore"
    );
    // Every pattern leaves out something: none is dead weight.
    let all: Vec<String> = tracked_files()
        .into_iter()
        .chain(BUILT.iter().map(|f| f.to_string()))
        .collect();
    for p in &patterns {
        assert!(
            all.iter().any(|f| ignores(p, f)),
            ".funcignore: `{p}` matches no file"
        );
    }
}

#[test]
fn the_funcignore_matcher_reads_gitignore_syntax() {
    assert!(ignores("target", "target/debug/connmon"));
    assert!(ignores("*.md", "README.md"));
    assert!(ignores("*.md", "tests/fixtures/SOURCES.md"));
    assert!(ignores(".crates*", ".crates2.json"));
    assert!(ignores("/infra", "infra/main.bicep"));
    assert!(ignores("src/", "src/main.rs"));
    assert!(!ignores("src/", "src"));
    assert!(!ignores("/bin/x", "a/bin/x"));
    assert!(!ignores("*.db", "connmon.dbx"));
    assert!(!ignores("tests", "host.json"));
    assert!(ignores("a?c", "x/abc"));
}
