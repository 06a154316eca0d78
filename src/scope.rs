//! Which identities connmon watches and how: glob patterns over `deviceId` or `deviceId/moduleId`,
//! used by the include/exclude scope, per-pattern grace periods and silences. Pure: no I/O, no clock.
//!
//! A pattern matches an identity when it matches its display name — `deviceId` for a device,
//! `deviceId/moduleId` for a module (`/` never occurs in IoT Hub ids, so the two cannot be
//! confused). `*` matches any run of characters (including none) and `?` exactly one, neither
//! crossing the `/`; everything else matches itself, case-sensitively like the ids. So
//! `*/$edgeAgent` is every device's edge agent, `pump-*` every pump, `pump-*/*` every pump module,
//! `*` every device and `*/*` every module.

use crate::model::{Identity, Timestamp};
use std::fmt;
use std::time::Duration;

/// A glob over identity names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Any non-empty text is a pattern.
    pub fn new(glob: &str) -> Option<Pattern> {
        let g = glob.trim();
        (!g.is_empty()).then(|| Pattern(g.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, id: &Identity) -> bool {
        let name = match id.module() {
            Some(m) => format!("{}/{}", id.device(), m),
            None => id.device().to_string(),
        };
        glob_match(self.0.as_bytes(), name.as_bytes())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Iterative glob matching with single-star backtracking: linear in practice, no recursion, so a
/// hostile id cannot make it blow up. `*` and `?` never match the `/` between device and module.
fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && ((p[pi] == b'?' && s[si] != b'/') || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star.filter(|&(_, ss)| s[ss] != b'/') {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Include / exclude lists. An empty include list includes everything; exclude wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub include: Vec<Pattern>,
    pub exclude: Vec<Pattern>,
}

impl Scope {
    pub fn contains(&self, id: &Identity) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(id)))
            && !self.exclude.iter().any(|p| p.matches(id))
    }
}

/// A grace period for the identities a pattern matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraceOverride {
    pub pattern: Pattern,
    pub grace: Duration,
}

/// Mutes alerts for matching identities until `until`; state is kept, so an outage still open when
/// the silence ends alerts then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    pub pattern: Pattern,
    pub until: Timestamp,
}

impl Silence {
    pub fn mutes(&self, id: &Identity, now: Timestamp) -> bool {
        now < self.until && self.pattern.matches(id)
    }
}
