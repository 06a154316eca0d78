//! The test suite's own rules: a test is ignored only because it needs an outside service that
//! `scripts/test` provides (Azurite, Chromium, prometheus_client), and says which one, so a plain
//! `cargo test` is green without them and names what it left out, and nothing is skipped silently.

use std::path::{Path, PathBuf};

/// The only reasons a test may be ignored: one per outside service. `scripts/test` starts or
/// installs each of them and runs the ignored tests with `--include-ignored`.
const ALLOWED: [&str; 3] = [
    "needs Azurite: run scripts/test",
    "needs Chromium: run scripts/test",
    "needs prometheus_client: run scripts/test",
];

/// Every `ignore` attribute in `text` whose reason is not one of [`ALLOWED`], with its line.
fn unexplained_ignores(text: &str) -> Vec<(usize, String)> {
    // Built at run time so this file's own source does not hold the attribute it looks for.
    let needle = format!("#[{}", "ignore");
    let mut out = Vec::new();
    for (start, _) in text.match_indices(&needle) {
        let attribute = match text[start..].find(']') {
            Some(len) => &text[start..=start + len],
            None => &text[start..],
        };
        let allowed = ALLOWED
            .iter()
            .any(|reason| attribute == format!("{needle} = \"{reason}\"]"));
        if !allowed {
            let line = text[..start].matches('\n').count() + 1;
            out.push((line, attribute.to_string()));
        }
    }
    out
}

/// Every `.rs` file below `dir`, recursively (also what `citations` reads).
pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_ignored_test_names_the_service_it_needs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        rust_files(&root.join(dir), &mut files);
    }
    let needle = format!("#[{}", "ignore");
    let mut seen = 0;
    let mut bad = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        seen += text.matches(&needle).count();
        for (line, attribute) in unexplained_ignores(&text) {
            bad.push(format!("{}:{line}: {attribute}", file.display()));
        }
    }
    assert!(
        bad.is_empty(),
        "tests ignored without one of the allowed reasons {ALLOWED:?} (a test is ignored only \
         when it needs a service scripts/test provides):\n{}",
        bad.join("\n")
    );
    // The Table Storage, browser and Prometheus tests are there and were found.
    assert!(
        seen >= 3,
        "only {seen} ignored tests found in {} files",
        files.len()
    );
}

#[test]
fn a_bare_or_other_ignore_is_caught() {
    let needle = format!("#[{}", "ignore");
    let text = format!(
        "{n}]\nfn a() {{}}\n{n} = \"slow\"]\nfn b() {{}}\n{n} = \"{ok}\"]\nfn c() {{}}\n",
        n = needle,
        ok = ALLOWED[0]
    );
    let found = unexplained_ignores(&text);
    assert_eq!(
        found,
        vec![
            (1, format!("{needle}]")),
            (3, format!("{needle} = \"slow\"]"))
        ]
    );
}
