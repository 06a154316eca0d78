//! Grouping for people: when at least `threshold` identities of one hub alert in the same batch
//! (a site or network outage, or connmon replaying a backlog), people get one `outage` summary per
//! hub — and one `outage_resolved` when they come back together — instead of one message per device.
//! Machines (the generic webhook, the queue) still get every per-identity alert as well.

use crate::alerts::AlertBody;
use sha2::{Digest, Sha256};

/// Ids listed in a summary; the rest is a count.
pub const SAMPLE: usize = 10;

/// One thing to tell people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice<'a> {
    Single(&'a AlertBody),
    /// Many identities of `hub` went offline (`resolved == false`) or came back (`true`).
    Outage {
        hub: &'a str,
        resolved: bool,
        alerts: Vec<&'a AlertBody>,
    },
}

impl Notice<'_> {
    /// `outage` / `outage_resolved` for summaries, else the alert's own kind.
    pub fn kind(&self) -> &str {
        match self {
            Notice::Single(a) => &a.kind,
            Notice::Outage {
                resolved: false, ..
            } => "outage",
            Notice::Outage { resolved: true, .. } => "outage_resolved",
        }
    }
}

/// `deviceId` or `deviceId/moduleId`: how ids are shown and matched.
pub fn display_id(a: &AlertBody) -> String {
    match &a.module_id {
        Some(m) => format!("{}/{}", a.device_id, m),
        None => a.device_id.clone(),
    }
}

/// Groups `alerts` (oldest first) per hub and direction once a group reaches `threshold`; keeps
/// the order of each group's first alert.
pub fn group(alerts: &[AlertBody], threshold: usize) -> Vec<Notice<'_>> {
    let direction = |a: &AlertBody| match a.kind.as_str() {
        "disconnected" => Some(false),
        "reconnected" => Some(true),
        _ => None,
    };
    let mut keys: Vec<(&str, bool)> = Vec::new();
    let mut members: Vec<Vec<&AlertBody>> = Vec::new();
    for a in alerts {
        if let Some(resolved) = direction(a) {
            let key = (a.hub.as_str(), resolved);
            match keys.iter().position(|k| *k == key) {
                Some(i) => members[i].push(a),
                None => {
                    keys.push(key);
                    members.push(vec![a]);
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut emitted = vec![false; keys.len()];
    for a in alerts {
        let Some(resolved) = direction(a) else {
            out.push(Notice::Single(a));
            continue;
        };
        let i = keys
            .iter()
            .position(|k| *k == (a.hub.as_str(), resolved))
            .expect("every alert was keyed");
        if members[i].len() < threshold {
            out.push(Notice::Single(a));
        } else if !emitted[i] {
            emitted[i] = true;
            out.push(Notice::Outage {
                hub: keys[i].0,
                resolved,
                alerts: members[i].clone(),
            });
        }
    }
    out
}

/// A summary as an object for machines: `kind`, `dedupKey` (the same for an outage and its
/// resolution when the same identities come back together), `hub`, `count`, `sample`,
/// `detectedAt`.
pub fn outage_object(hub: &str, resolved: bool, alerts: &[&AlertBody]) -> serde_json::Value {
    let mut keys: Vec<&str> = alerts.iter().map(|a| a.dedup_key.as_str()).collect();
    keys.sort_unstable();
    let mut h = Sha256::new();
    h.update(hub.as_bytes());
    for k in keys {
        h.update([0]);
        h.update(k.as_bytes());
    }
    let digest = h.finalize();
    let dedup: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    serde_json::json!({
        "kind": if resolved { "outage_resolved" } else { "outage" },
        "dedupKey": format!("cm1o-{dedup}"),
        "hub": hub,
        "count": alerts.len(),
        "sample": alerts.iter().take(SAMPLE).map(|a| display_id(a)).collect::<Vec<_>>(),
        "detectedAt": alerts.last().map(|a| a.detected_at.clone()),
    })
}
