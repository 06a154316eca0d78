//! Grouping for people (`channels::grouping`), pure: per hub and direction, from the threshold on,
//! in the order of each group's first alert, with a bounded sample and a stable summary key.

use connmon::alerts::AlertBody;
use connmon::channels::grouping::{group, outage_object, Notice, SAMPLE};

fn alert(kind: &str, hub: &str, device: &str) -> AlertBody {
    AlertBody {
        kind: kind.into(),
        dedup_key: format!("cm1-{hub}-{device}"),
        hub: hub.into(),
        device_id: device.into(),
        module_id: None,
        disconnected_at: "2026-11-27T10:00:00Z".into(),
        reconnected_at: None,
        downtime_seconds: 300,
        grace_period_seconds: 300,
        detected_at: "2026-11-27T10:05:00Z".into(),
        disconnects: None,
        window_seconds: None,
        hint: None,
        detail: None,
    }
}

/// `kind hub n` per notice: singles have n = 1.
fn shape(notices: &[Notice<'_>]) -> Vec<String> {
    notices
        .iter()
        .map(|n| match n {
            Notice::Single(a) => format!("{} {} 1", a.kind, a.hub),
            Notice::Outage { hub, alerts, .. } => format!("{} {hub} {}", n.kind(), alerts.len()),
        })
        .collect()
}

#[test]
fn below_the_threshold_every_alert_stays_single() {
    let alerts: Vec<_> = (0..3)
        .map(|i| alert("disconnected", "h", &format!("d{i}")))
        .collect();
    assert_eq!(shape(&group(&alerts, 4)), ["disconnected h 1"; 3]);
}

#[test]
fn at_the_threshold_one_summary_per_hub_and_direction_in_first_seen_order() {
    let mut alerts = vec![alert("reconnected", "b", "r0")];
    alerts.extend((0..4).map(|i| alert("disconnected", "a", &format!("d{i}"))));
    alerts.push(alert("flapping", "a", "f0"));
    alerts.extend((0..2).map(|i| alert("disconnected", "b", &format!("x{i}"))));
    alerts.extend((1..4).map(|i| alert("reconnected", "b", &format!("r{i}"))));
    assert_eq!(
        shape(&group(&alerts, 4)),
        [
            "outage_resolved b 4",
            "outage a 4",
            "flapping a 1",
            "disconnected b 1",
            "disconnected b 1"
        ]
    );
}

#[test]
fn summaries_carry_a_bounded_sample_and_a_key_shared_by_an_outage_and_its_resolution() {
    let down: Vec<_> = (0..25)
        .map(|i| alert("disconnected", "h", &format!("d{i:02}")))
        .collect();
    let mut up: Vec<_> = (0..25)
        .map(|i| alert("reconnected", "h", &format!("d{i:02}")))
        .collect();
    up.reverse();
    let o = outage_object("h", false, &down.iter().collect::<Vec<_>>());
    let r = outage_object("h", true, &up.iter().collect::<Vec<_>>());
    assert_eq!(o["kind"], "outage");
    assert_eq!(r["kind"], "outage_resolved");
    assert_eq!(o["count"], 25);
    assert_eq!(o["sample"].as_array().unwrap().len(), SAMPLE);
    assert_eq!(
        o["dedupKey"], r["dedupKey"],
        "same identities, either order"
    );
    let fewer = outage_object("h", true, &up[1..].iter().collect::<Vec<_>>());
    assert_ne!(o["dedupKey"], fewer["dedupKey"]);
}
