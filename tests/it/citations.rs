//! Comments point only to what a reader of the repository has: the rules are cited from
//! `docs/rules.md` by section, and no source file names a document outside the repository or an
//! issue number (both mean nothing to the next engineer).

use std::path::Path;

/// The sources a comment could cite from: `src/`, `tests/` (fixtures aside: they are copied
/// verbatim) and `benches/`.
fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "benches"] {
        crate::suite::rust_files(&root.join(dir), &mut files);
    }
    files
        .into_iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "fixtures"))
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let name = f.strip_prefix(root).unwrap().display().to_string();
            (name, text)
        })
        .collect()
}

/// `(file:line, line)` of every line in `files` for which `hit` holds.
fn lines_where(files: &[(String, String)], hit: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for (name, text) in files {
        for (i, line) in text.lines().enumerate() {
            if hit(line) {
                out.push(format!("{name}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    out
}

/// Whether `line` names an issue by number (the word, a space, a digit; any case). Built from
/// parts so this file's own source does not match.
fn names_an_issue(line: &str) -> bool {
    let lower = line.to_lowercase();
    let word = format!("{}{}", "iss", "ue ");
    lower
        .match_indices(&word)
        .any(|(at, _)| lower[at + word.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

#[test]
fn no_comment_points_outside_the_repository_or_to_an_issue() {
    let files = sources();
    assert!(files.len() > 50, "read only {} files", files.len());
    let outside = [
        format!("{}{}", "design", ".md"),
        format!("{}{}", "../", "shared"),
    ];
    let bad = lines_where(&files, |l| {
        outside.iter().any(|o| l.contains(o.as_str())) || names_an_issue(l)
    });
    assert!(
        bad.is_empty(),
        "cite docs/rules.md or the README instead:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_checks_catch_what_they_look_for() {
    let cited = format!("// built for {}ue 9, item 2", "Iss");
    assert!(names_an_issue(&cited));
    assert!(!names_an_issue("// an issue with the receiver, 9 times"));
}

#[test]
fn every_cited_rule_exists_in_docs_rules() {
    let rules =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rules.md"))
            .expect("docs/rules.md");
    let headings: Vec<String> = rules
        .lines()
        .filter_map(|l| l.strip_prefix("## §"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(
        headings,
        ["1", "2", "3", "4", "5", "6", "7", "8", "9"],
        "the nine rules"
    );
    assert!(
        rules.contains("\n## Alert body\n"),
        "the alert body contract"
    );
    let files = sources();
    let mut cited = 0;
    for (name, text) in &files {
        for (at, _) in text.match_indices("docs/rules.md §") {
            let n: String = text[at + "docs/rules.md §".len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if n.is_empty() {
                continue; // this file's own needle, not a citation
            }
            cited += 1;
            assert!(
                headings.contains(&n),
                "{name} cites docs/rules.md §{n}, which is not there"
            );
        }
    }
    assert!(cited >= 5, "only {cited} citations of docs/rules.md found");
}
