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
