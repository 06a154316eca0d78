//! Log lines, one per event worth telling. Information goes to stdout and problems to stderr, which
//! is how the Functions host levels a custom handler's output (stdout → Information, stderr → Error,
//! or Warning when the line contains "warn"). Callers never pass secrets here: settings hold them in
//! `Secret`, and HTTP errors are stripped of their URL before they are formatted.

use crate::model::Timestamp;
use std::io::Write;

pub fn info(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout().lock(), "{} info: {msg}", Timestamp::now());
}

pub fn warn(msg: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{} warn: {msg}", Timestamp::now());
}

pub fn error(msg: impl std::fmt::Display) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "{} error: {msg}",
        Timestamp::now()
    );
}

/// An alert, always logged (stderr, so it stands out as an error in Application Insights).
pub fn alert(line: &str) {
    let _ = writeln!(
        std::io::stderr().lock(),
        "{} ALERT {line}",
        Timestamp::now()
    );
}
