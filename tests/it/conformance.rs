//! One conformance suite, run against every store: the embedded SQLite file and Azure Table Storage
//! (a real Azurite). Each check takes a [`Backend`] that can open the same data again (a restart, or
//! a second instance), so durability and cross-instance rules are checked the same way for both.

use connmon::machine::{AlertKind, Outcome, Policy};
use connmon::model::{ConnectionEvent, EventKind, Identity, SequenceNumber, Timestamp};
use connmon::status::{self, HubState, HISTORY_LEN};
use connmon::store::sqlite::SqliteStore;
use connmon::store::table::client::TableClient;
use connmon::store::table::TableStore;
use connmon::store::{Counts, QuietCheck, Store, StoreConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const NOW_MS: i64 = 1_795_773_600_000;
const GRACE: Duration = Duration::from_secs(300);

fn at(s: i64) -> Timestamp {
    Timestamp::from_unix_millis(NOW_MS + s * 1000)
}

fn seq(n: u64) -> SequenceNumber {
    SequenceNumber::parse(&format!("{n:064X}")).unwrap()
}

fn id(device: &str) -> Identity {
    Identity::new("Hub", device, None)
}

fn event(identity: &Identity, kind: EventKind, t: i64) -> ConnectionEvent {
    ConnectionEvent {
        identity: identity.clone(),
        kind,
        time: Some(at(t)),
        event_id: String::new(),
    }
}

fn dis(i: &Identity, n: u64, t: i64) -> ConnectionEvent {
    event(i, EventKind::Disconnected(seq(n)), t)
}

fn con(i: &Identity, n: u64, t: i64) -> ConnectionEvent {
    event(i, EventKind::Connected(seq(n)), t)
}

fn del(i: &Identity, t: i64) -> ConnectionEvent {
    event(i, EventKind::Deleted, t)
}

/// The default policy with the ids matching `pattern` silenced until `until`.
fn silenced(pattern: &str, until: i64) -> Policy {
    let mut policy = Policy::new(GRACE);
    policy.silences = vec![connmon::scope::Silence {
        pattern: connmon::scope::Pattern::new(pattern).unwrap(),
        until: at(until),
    }];
    policy
}

/// Where a store's data lives; `open` may be called again for a restart or a second instance.
pub enum Backend {
    Sqlite(tempfile::TempDir),
    Table(String),
}

impl Backend {
    pub(crate) fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    pub(crate) fn table() -> Backend {
        Backend::Table(crate::table_client::unique_table_name("conf"))
    }

    /// The SQLite file `open` uses.
    pub(crate) fn db_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("c.db")
    }

    async fn open(&self) -> Arc<dyn Store> {
        self.open_with(Policy::new(GRACE)).await
    }

    async fn open_with(&self, policy: Policy) -> Arc<dyn Store> {
        self.open_config(StoreConfig {
            policy,
            channels: vec!["webhook".into(), "teams".into()],
        })
        .await
    }

    pub(crate) async fn open_config(&self, policy: StoreConfig) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(dir) => {
                Arc::new(SqliteStore::open(&Backend::db_path(dir), policy).unwrap())
            }
            Backend::Table(table) => {
                let client =
                    TableClient::new(crate::table_client::azurite_endpoint(), table).unwrap();
                Arc::new(TableStore::open(client, policy).await.unwrap())
            }
        }
    }
}

/// All alerts claimable at `t`, as `kind device from=…` lines, sorted.
async fn claim_all(store: &dyn Store, t: i64) -> Vec<String> {
    let mut out: Vec<String> = store
        .claim_due(at(t), 10_000)
        .await
        .unwrap()
        .iter()
        .map(|a| {
            let who = match a.identity.module() {
                Some(m) => format!("{}/{}", a.identity.device(), m),
                None => a.identity.device().to_string(),
            };
            format!(
                "{} {who} from={}",
                a.kind.as_str(),
                (a.disconnected_at.unix_millis() - NOW_MS) / 1000
            )
        })
        .collect();
    out.sort();
    out
}

/// The queued alert bodies (kind + deviceId + dedupKey), oldest first, without delivering them.
async fn queued(store: &dyn Store, t: i64) -> Vec<serde_json::Value> {
    store
        .queued("webhook", at(t), 1000)
        .await
        .unwrap()
        .iter()
        .map(|q| serde_json::from_str(&q.body).unwrap())
        .collect()
}

async fn outcomes(store: &dyn Store, events: Vec<ConnectionEvent>, t: i64) -> Vec<Outcome> {
    store
        .apply(events, at(t))
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.expect("no event is refused").outcome)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The checks

async fn identities_are_keyed_by_hub_device_and_module(b: Backend) {
    let s = b.open().await;
    let d = id("d1");
    let m = Identity::new("HUB", "d1", Some("$edgeHub"));
    let upper = Identity::new("hub", "D1", None);
    let o = outcomes(
        &*s,
        vec![
            dis(&d, 1, 0),
            dis(&m, 2, 0),
            dis(&upper, 1, 0),
            con(&Identity::new("hUB", "d1", None), 3, 10),
        ],
        20,
    )
    .await;
    assert_eq!(
        o,
        [
            Outcome::Opened,
            Outcome::Opened,
            Outcome::Opened,
            Outcome::ClosedSilently
        ]
    );
    assert_eq!(
        claim_all(&*s, 400).await,
        ["disconnected D1 from=0", "disconnected d1/$edgeHub from=0"]
    );
}

async fn duplicates_and_stale_events_change_nothing_even_after_a_restart(b: Backend) {
    let d = id("d1");
    {
        let s = b.open().await;
        let o = outcomes(&*s, vec![dis(&d, 5, 0), dis(&d, 5, 0), con(&d, 4, 10)], 20).await;
        assert_eq!(o, [Outcome::Opened, Outcome::Duplicate, Outcome::Stale]);
    }
    let s = b.open().await;
    assert_eq!(
        outcomes(&*s, vec![dis(&d, 5, 0), con(&d, 3, 5)], 30).await,
        [Outcome::Duplicate, Outcome::Stale]
    );
    assert_eq!(claim_all(&*s, 300).await, ["disconnected d1 from=0"]);
}

async fn outages_restart_continue_and_alert_exactly_once(b: Backend) {
    let s = b.open().await;
    let (d1, d2) = (id("d1"), id("d2"));
    outcomes(
        &*s,
        vec![dis(&d1, 1, 0), dis(&d2, 1, 0), dis(&d1, 3, 200)],
        201,
    )
    .await;
    assert!(
        claim_all(&*s, 299).await.is_empty(),
        "nothing due before the grace"
    );
    assert_eq!(claim_all(&*s, 300).await, ["disconnected d2 from=0"]);
    assert_eq!(claim_all(&*s, 499).await, Vec::<String>::new());
    assert_eq!(claim_all(&*s, 500).await, ["disconnected d1 from=200"]);
    assert_eq!(
        outcomes(&*s, vec![dis(&d1, 4, 600)], 601).await,
        [Outcome::Continued]
    );
    assert!(
        claim_all(&*s, 5000).await.is_empty(),
        "claimed once, even after a later disconnect"
    );
}

async fn token_renewal_is_silent_and_a_reconnect_after_an_alert_is_queued_once(b: Backend) {
    let s = b.open().await;
    let (quiet, loud) = (id("quiet"), id("loud"));
    outcomes(
        &*s,
        vec![dis(&quiet, 1, 0), con(&quiet, 2, 30), dis(&loud, 1, 0)],
        40,
    )
    .await;
    assert_eq!(claim_all(&*s, 300).await, ["disconnected loud from=0"]);
    let applied = s
        .apply(vec![con(&loud, 2, 400), con(&loud, 2, 400)], at(401))
        .await
        .unwrap();
    assert_eq!(applied[0].as_ref().unwrap().outcome, Outcome::Reconnected);
    assert_eq!(applied[1].as_ref().unwrap().outcome, Outcome::Duplicate);
    let q = queued(&*s, 401).await;
    let kinds: Vec<(&str, &str)> = q
        .iter()
        .map(|v| (v["kind"].as_str().unwrap(), v["deviceId"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds, [("disconnected", "loud"), ("reconnected", "loud")]);
    assert_eq!(q[0]["dedupKey"], q[1]["dedupKey"]);
    assert_eq!(q[1]["downtimeSeconds"], 400);
    assert_eq!(q[0]["hub"], "hub");
}

async fn deletion_forgets_device_and_modules_and_withdraws_unsent_alerts(b: Backend) {
    let s = b.open().await;
    let dev = id("edge");
    let module = Identity::new("hub", "edge", Some("$edgeAgent"));
    let other = id("other");
    outcomes(
        &*s,
        vec![dis(&dev, 1, 0), dis(&module, 2, 0), dis(&other, 1, 0)],
        1,
    )
    .await;
    assert_eq!(claim_all(&*s, 300).await.len(), 3);
    // The device came back (reconnected queued behind its undelivered disconnected), then was deleted.
    outcomes(&*s, vec![con(&dev, 3, 350)], 351).await;
    assert_eq!(
        outcomes(&*s, vec![del(&dev, 400)], 401).await,
        [Outcome::Deleted]
    );
    let left: Vec<String> = queued(&*s, 500)
        .await
        .iter()
        .map(|v| format!("{} {}", v["kind"], v["deviceId"]))
        .collect();
    assert_eq!(left, ["\"disconnected\" \"other\""]);
    // Late events from before the deletion, for the device and for its module, are ignored.
    assert_eq!(
        outcomes(
            &*s,
            vec![
                dis(&dev, 9, 390),
                dis(&module, 10, 395),
                dis(&Identity::new("hub", "edge", Some("new")), 11, 399)
            ],
            500
        )
        .await,
        [
            Outcome::BeforeDeletion,
            Outcome::BeforeDeletion,
            Outcome::BeforeDeletion
        ]
    );
    // A re-created device starts fresh.
    assert_eq!(
        outcomes(&*s, vec![dis(&dev, 1, 600)], 601).await,
        [Outcome::Opened]
    );
    assert_eq!(claim_all(&*s, 900).await, ["disconnected edge from=600"]);
}

async fn claims_survive_a_restart_and_big_outages_are_claimed_in_full(b: Backend) {
    {
        let s = b.open().await;
        let events: Vec<_> = (0..120)
            .map(|i| dis(&id(&format!("dev{i:03}")), 1, i))
            .collect();
        s.apply(events, at(200)).await.unwrap();
    }
    let s = b.open().await;
    let mut total = 0;
    loop {
        let n = s.claim_due(at(1000), 50).await.unwrap().len();
        total += n;
        if n < 50 {
            break;
        }
    }
    assert_eq!(total, 120);
    let s2 = b.open().await;
    assert!(claim_all(&*s2, 2000).await.is_empty());
    assert_eq!(
        s2.queue_len().await.unwrap(),
        240,
        "one delivery per alert and channel"
    );
}

async fn concurrent_deliveries_equal_sequence_number_order(b: Backend) {
    // 12 devices × 6 events, scrambled, one task each, spread over two store handles (two
    // "instances"). Even devices end disconnected at t=100, odd ones connected.
    let s1 = b.open().await;
    let s2 = b.open().await;
    let mut events = Vec::new();
    for d in 0..12u64 {
        for n in 1..=6u64 {
            let ends_down = d % 2 == 0;
            let connected = if ends_down { n % 2 == 1 } else { n % 2 == 0 };
            let ev = if connected {
                con(&id(&format!("d{d:02}")), n, (n as i64) * 20 - 20)
            } else {
                dis(&id(&format!("d{d:02}")), n, (n as i64) * 20 - 20)
            };
            events.push(ev.clone());
            if n == 3 {
                events.push(ev); // a duplicate delivery
            }
        }
    }
    let len = events.len();
    for i in 0..len {
        events.swap(i, (i * 31 + 7) % len);
    }
    let tasks: Vec<_> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            tokio::spawn(async move { s.apply(vec![e], at(200)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Two instances sweep at once: each outage is claimed exactly once between them.
    let (a, b2) = tokio::join!(s1.claim_due(at(400), 1000), s2.claim_due(at(400), 1000));
    let mut claimed: Vec<String> = a
        .unwrap()
        .into_iter()
        .chain(b2.unwrap())
        .map(|a| {
            format!(
                "{} {}",
                a.identity.device(),
                (a.disconnected_at.unix_millis() - NOW_MS) / 1000
            )
        })
        .collect();
    claimed.sort();
    let expected: Vec<String> = (0..12).step_by(2).map(|d| format!("d{d:02} 100")).collect();
    assert_eq!(claimed, expected);
}

async fn the_outbox_keeps_order_backs_off_and_forgets_what_was_delivered(b: Backend) {
    let s = b.open().await;
    let d = id("d1");
    outcomes(&*s, vec![dis(&d, 1, 0)], 1).await;
    claim_all(&*s, 300).await;
    outcomes(&*s, vec![con(&d, 2, 400)], 401).await;
    let q = s.queued("webhook", at(401), 10).await.unwrap();
    assert_eq!(q.len(), 2);
    assert_eq!(q[0].attempts, 0);
    s.failed(vec![q[0].id.clone()], at(500)).await.unwrap();
    // While the head backs off nothing overtakes it (the reconnected waits too).
    assert!(s.queued("webhook", at(450), 10).await.unwrap().is_empty());
    let q2 = s.queued("webhook", at(500), 10).await.unwrap();
    assert_eq!(q2.len(), 2, "both due again at 500");
    assert_eq!(q2[0].attempts, 1);
    assert!(q2[0].body.contains("\"disconnected\"") && q2[1].body.contains("\"reconnected\""));
    s.delivered(q2.iter().map(|q| q.id.clone()).collect())
        .await
        .unwrap();
    // The other channel was never blocked by this one's back-off, and still has both.
    let teams = s.queued("teams", at(450), 10).await.unwrap();
    assert_eq!(teams.len(), 2);
    assert_eq!(teams[0].attempts, 0);
    s.delivered(teams.iter().map(|q| q.id.clone()).collect())
        .await
        .unwrap();
    assert_eq!(s.queue_len().await.unwrap(), 0);
    assert!(s.queued("webhook", at(9999), 10).await.unwrap().is_empty());
}

async fn an_alert_handed_out_but_never_confirmed_is_handed_out_again(b: Backend) {
    // An instance takes alerts for delivery and dies before it confirms or fails them: they stay
    // queued and another instance delivers them once the lease (60 s) has run out.
    let s1 = b.open().await;
    outcomes(&*s1, vec![dis(&id("d1"), 1, 0)], 1).await;
    claim_all(&*s1, 300).await;
    assert_eq!(s1.queued("webhook", at(300), 10).await.unwrap().len(), 1);
    drop(s1);
    let s2 = b.open().await;
    let later = s2.queued("webhook", at(400), 10).await.unwrap();
    assert_eq!(
        later.len(),
        1,
        "still queued after the first taker vanished"
    );
    s2.delivered(vec![later[0].id.clone()]).await.unwrap();
    assert_eq!(
        s2.queue_len().await.unwrap(),
        1,
        "the teams delivery still waits"
    );
}

/// The kinds of the queued alert bodies, in delivery order.
fn kinds(queued: &[serde_json::Value]) -> Vec<&str> {
    queued.iter().map(|q| q["kind"].as_str().unwrap()).collect()
}

async fn a_reconnect_received_before_the_alert_was_raised_still_queues_behind_it(b: Backend) {
    // The connect arrives (received at 200) while a sweep claims the outage (at 300); the claim
    // writes first, so the connect is applied after it and raises the `reconnected`. Found by
    // tests/it/crash.rs: it must not be delivered before its `disconnected`.
    let s = b.open().await;
    let d = id("d1");
    outcomes(&*s, vec![dis(&d, 1, 0)], 1).await;
    assert_eq!(claim_all(&*s, 300).await, ["disconnected d1 from=0"]);
    let o = outcomes(&*s, vec![con(&d, 2, 150)], 200).await;
    assert_eq!(o, [Outcome::Reconnected]);
    assert_eq!(
        kinds(&queued(&*s, 400).await),
        ["disconnected", "reconnected"]
    );
}

async fn an_alert_handed_out_and_not_confirmed_holds_back_what_queued_behind_it(b: Backend) {
    // An instance takes the `disconnected` for delivery (and dies, or is still sending it) before
    // the `reconnected` is queued: until the lease ends nothing goes out that would overtake it.
    let s1 = b.open().await;
    let d = id("d1");
    outcomes(&*s1, vec![dis(&d, 1, 0)], 1).await;
    claim_all(&*s1, 300).await;
    assert_eq!(kinds(&queued(&*s1, 300).await), ["disconnected"]);
    drop(s1);
    let s2 = b.open().await;
    outcomes(&*s2, vec![con(&d, 2, 305)], 310).await;
    let leased = queued(&*s2, 320).await;
    let now = kinds(&leased);
    assert!(
        now.is_empty() || now == ["disconnected", "reconnected"],
        "the reconnected overtook its disconnected: {now:?}"
    );
    assert_eq!(
        kinds(&queued(&*s2, 400).await),
        ["disconnected", "reconnected"]
    );
}

async fn silenced_outages_wait_in_the_index_and_alert_when_the_silence_ends(b: Backend) {
    let policy = silenced("site7-*", 1000);
    let s = b.open_with(policy).await;
    // 60 silenced outages ahead of one that is not: the sweep must reach it in one pass even with
    // a claim limit smaller than the silenced crowd.
    let mut events: Vec<_> = (0..60)
        .map(|i| dis(&id(&format!("site7-{i:02}")), 1, 0))
        .collect();
    events.push(dis(&id("site8-a"), 1, 1));
    s.apply(events, at(2)).await.unwrap();
    let first: Vec<String> = s
        .claim_due(at(400), 50)
        .await
        .unwrap()
        .iter()
        .map(|a| a.identity.device().to_string())
        .collect();
    assert_eq!(first, ["site8-a"]);
    assert!(
        s.claim_due(at(999), 50).await.unwrap().is_empty(),
        "still silenced"
    );
    let mut total = 0;
    loop {
        let n = s.claim_due(at(1000), 50).await.unwrap().len();
        total += n;
        if n < 50 {
            break;
        }
    }
    assert_eq!(
        total, 60,
        "every silenced outage alerts once the silence is over"
    );
}

async fn flapping_and_reminders_are_kept_across_a_restart(b: Backend) {
    let mut policy = Policy::new(GRACE);
    policy.remind_every = Some(Duration::from_secs(600));
    let flappy = id("flappy");
    {
        let s = b.open_with(policy.clone()).await;
        let mut events = Vec::new();
        for i in 0..5u64 {
            let t = i as i64 * 30;
            events.push(dis(&flappy, 2 * i + 1, t));
            events.push(con(&flappy, 2 * i + 2, t + 10));
        }
        events.push(dis(&id("down"), 1, 0));
        let applied = s.apply(events, at(200)).await.unwrap();
        let kinds: Vec<&str> = applied
            .iter()
            .filter_map(|a| a.as_ref().unwrap().alert.as_ref())
            .map(|a| a.kind.as_str())
            .collect();
        assert_eq!(kinds, ["flapping"]);
        assert_eq!(claim_all(&*s, 300).await, ["disconnected down from=0"]);
    }
    let s = b.open_with(policy).await;
    // The last flap started at 120: calm (and resolved) at 120 + 1800; the reminder is due at 900.
    let kinds = |v: Vec<connmon::machine::Alert>| -> Vec<String> {
        v.iter()
            .map(|a| format!("{} {}", a.kind.as_str(), a.identity.device()))
            .collect()
    };
    assert_eq!(
        kinds(s.claim_due(at(899), 100).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        kinds(s.claim_due(at(900), 100).await.unwrap()),
        ["reminder down"]
    );
    let mut at_calm = kinds(s.claim_due(at(1920), 100).await.unwrap());
    at_calm.sort();
    assert_eq!(at_calm, ["flapping_resolved flappy", "reminder down"]);
    assert_eq!(
        kinds(s.claim_due(at(1920), 100).await.unwrap()),
        Vec::<String>::new()
    );
}

async fn every_allowed_id_character_and_case_round_trips(b: Backend) {
    let s = b.open().await;
    let specials = [
        "a-b:c.d+e%f_g#h*i?j!k(l)m,n=o@p;q$r's",
        "%2F",
        "x|y",
        "caseID",
        "CaseId",
        "o'brien",
        "x',y",
        ",lead",
    ];
    let events: Vec<_> = specials
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            [
                dis(&Identity::new("hub", d, None), 1, i as i64),
                dis(
                    &Identity::new("hub", "dev", Some(d)),
                    2 + i as u64,
                    i as i64,
                ),
            ]
        })
        .collect();
    let o = outcomes(&*s, events, 100).await;
    assert!(o.iter().all(|o| *o == Outcome::Opened), "{o:?}");
    let claimed = s.claim_due(at(1000), 1000).await.unwrap();
    assert_eq!(claimed.len(), specials.len() * 2);
    let mut devices: Vec<&str> = claimed
        .iter()
        .filter(|a| a.identity.module().is_none())
        .map(|a| a.identity.device())
        .collect();
    devices.sort();
    let mut want = specials.to_vec();
    want.sort();
    assert_eq!(devices, want);
    let mut modules: Vec<&str> = claimed.iter().filter_map(|a| a.identity.module()).collect();
    modules.sort();
    assert_eq!(modules, want);
    assert!(claimed.iter().all(|a| a.kind == AlertKind::Disconnected));
}

/// Two instances on one store taking turns decide every event exactly as one instance does. The
/// Table store remembers the rows it wrote (to skip a read): here every turn finds its memory
/// outdated by the other instance — a newer event, a deletion, a sweep's claim — so this checks
/// that an outdated memory never decides an event.
async fn two_instances_taking_turns_decide_like_one(b: Backend) {
    let d = id("d1");
    let m = Identity::new("Hub", "d1", Some("m1"));
    // (instance A?, event, received at)
    let script = [
        (true, dis(&d, 1, 0), 1),
        (false, con(&d, 2, 10), 11),
        (true, dis(&d, 3, 20), 21), // A remembers seq 1; the store holds seq 2
        (true, dis(&m, 4, 22), 23),
        (false, del(&d, 30), 31),   // deletes the device and its module
        (true, con(&d, 5, 25), 32), // before the deletion: stale, though A remembers seq 3
        (true, con(&m, 6, 26), 33), // the module's event before the deletion too
        (true, dis(&d, 7, 40), 41), // after the deletion: a new life
        (false, con(&d, 8, 42), 43),
        (true, dis(&d, 9, 50), 51), // A remembers seq 7
        (true, dis(&d, 9, 50), 52), // a duplicate, decided on a fresh read
        (true, con(&d, 8, 42), 53), // stale
        (false, del(&d, 60), 61),
        // After the deletion, a lower sequence number than A remembers (9) is a new life, not stale.
        (true, dis(&d, 2, 70), 71),
    ];
    let (a, other) = (b.open().await, b.open().await);
    let mut got = Vec::new();
    for (first, ev, t) in &script {
        let s = if *first { &a } else { &other };
        got.extend(outcomes(&**s, vec![ev.clone()], *t).await);
    }
    // A sweep on the other instance claims the open outage; A's next event finds its memory old.
    assert_eq!(claim_all(&*other, 400).await, ["disconnected d1 from=70"]);
    got.extend(outcomes(&*a, vec![con(&d, 10, 410)], 411).await);

    let single = match b {
        Backend::Sqlite(_) => Backend::sqlite(),
        Backend::Table(_) => Backend::table(),
    }
    .open()
    .await;
    let mut want = Vec::new();
    for (_, ev, t) in &script {
        want.extend(outcomes(&*single, vec![ev.clone()], *t).await);
    }
    assert_eq!(claim_all(&*single, 400).await, ["disconnected d1 from=70"]);
    want.extend(outcomes(&*single, vec![con(&d, 10, 410)], 411).await);
    assert_eq!(got, want);
    let kinds_of = |q: Vec<serde_json::Value>| -> Vec<String> {
        q.iter()
            .map(|v| v["kind"].as_str().unwrap().to_string())
            .collect()
    };
    // (Asked once each: the Table store leases what it hands out.)
    let mine = kinds_of(queued(&*a, 500).await);
    assert_eq!(mine, kinds_of(queued(&*single, 500).await));
    assert_eq!(mine, ["disconnected", "reconnected"]);
}

// ---------------------------------------------------------------------------------------------
// What operators see

/// An identity's history as `kind@t+seconds` (times relative to NOW_MS).
async fn history(store: &dyn Store, i: &Identity) -> Vec<String> {
    let r = store.identity(i.clone()).await.unwrap().expect("known");
    r.history
        .0
        .iter()
        .map(|c| {
            let t = (c.at.unix_millis() - NOW_MS) / 1000;
            match c.seconds {
                Some(s) => format!("{}@{t}+{s}", c.kind.name()),
                None => format!("{}@{t}", c.kind.name()),
            }
        })
        .collect()
}

async fn history_records_changes_and_alerts_bounded_and_kept_across_a_restart(b: Backend) {
    let d = id("d1");
    let m = Identity::new("hub", "d1", Some("m1"));
    {
        let s = b.open().await;
        assert_eq!(s.identity(d.clone()).await.unwrap(), None, "never heard of");
        // Each event in its own delivery: the Table store then decides the second on the row it
        // remembers writing, which must carry the history too.
        outcomes(&*s, vec![dis(&d, 1, 0)], 1).await;
        outcomes(&*s, vec![dis(&d, 1, 0)], 2).await; // a duplicate adds nothing
        assert_eq!(claim_all(&*s, 300).await, ["disconnected d1 from=0"]);
        outcomes(&*s, vec![con(&d, 2, 400)], 401).await;
        outcomes(&*s, vec![dis(&m, 3, 410), con(&m, 4, 420)], 421).await;
    }
    let s = b.open().await;
    assert_eq!(
        history(&*s, &d).await,
        [
            "disconnected@0",
            "alert:disconnected@300+300",
            "connected@400+400",
            "alert:reconnected@401+400"
        ]
    );
    assert_eq!(
        history(&*s, &m).await,
        ["disconnected@410", "connected@420+10"]
    );
    // Bounded: the oldest entries go first. (Token renewals further apart than the flap window.)
    let renewals: Vec<_> = (0..HISTORY_LEN as u64)
        .flat_map(|i| {
            let t = 1000 + 2000 * i as i64;
            [dis(&d, 10 + 2 * i, t), con(&d, 11 + 2 * i, t + 1)]
        })
        .collect();
    s.apply(renewals, at(40_000)).await.unwrap();
    let h = history(&*s, &d).await;
    assert_eq!(h.len(), HISTORY_LEN);
    assert_eq!(h.last().unwrap(), "connected@31001+1");
    assert_eq!(h[0], "disconnected@17000");
    // A deletion is recorded on the device and on its modules (the tombstones stay readable).
    outcomes(&*s, vec![del(&d, 50_000)], 50_001).await;
    assert_eq!(history(&*s, &d).await.last().unwrap(), "deleted@50000");
    assert_eq!(
        history(&*s, &m).await,
        ["disconnected@410", "connected@420+10", "deleted@50000"]
    );
    let tomb = s.identity(m.clone()).await.unwrap().unwrap();
    assert_eq!(tomb.identity, m);
    assert_eq!(tomb.state.deleted_at, Some(at(50_000)));
}

async fn a_snoozed_claim_keeps_the_history(b: Backend) {
    let policy = silenced("muted", 1000);
    let s = b.open_with(policy).await;
    let d = id("muted");
    outcomes(&*s, vec![dis(&d, 1, 0)], 1).await;
    assert!(claim_all(&*s, 300).await.is_empty(), "snoozed");
    assert_eq!(history(&*s, &d).await, ["disconnected@0"]);
    assert_eq!(claim_all(&*s, 1000).await, ["disconnected muted from=0"]);
    assert_eq!(
        history(&*s, &d).await,
        ["disconnected@0", "alert:disconnected@1000+1000"]
    );
}

async fn identities_page_through_every_identity_once_and_filter_by_hub(b: Backend) {
    let s = b.open().await;
    let mut all = BTreeSet::new();
    let mut events = Vec::new();
    for (n, (hub, device, module)) in [
        ("hub", "a", None),
        ("hub", "a", Some("m1")),
        ("hub", "a", Some("$edgeHub")),
        ("hub", "b'c", None),
        ("hub", "x|y", None),
        ("hub", "Z", None),
        ("hub-2", "a", None),
        ("hub-2", "q%20", None),
        ("hub2", "a", None),
        ("hu", "b", None),
        ("hub", "gone", None),
    ]
    .into_iter()
    .enumerate()
    {
        let i = Identity::new(hub, device, module);
        events.push(dis(&i, n as u64 + 1, n as i64));
        all.insert(i);
    }
    events.push(del(&Identity::new("hub", "gone", None), 50));
    s.apply(events, at(100)).await.unwrap();

    async fn page_through(s: &dyn Store, hub: Option<&str>) -> Vec<Identity> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .identities(hub.map(str::to_string), after.clone(), 3)
                .await
                .unwrap();
            assert!(page.len() <= 3);
            out.extend(page.iter().map(|r| r.identity.clone()));
            if page.len() < 3 {
                return out;
            }
            after = page.last().map(|r| r.identity.clone());
        }
    }
    let listed = page_through(&*s, None).await;
    assert_eq!(listed.len(), all.len(), "each once: {listed:?}");
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), all);
    // The same order every time.
    assert_eq!(page_through(&*s, None).await, listed);
    for hub in ["hub", "hub-2", "hub2", "hu", "nohub"] {
        let mine = page_through(&*s, Some(hub)).await;
        let want: BTreeSet<_> = all.iter().filter(|i| i.hub() == hub).cloned().collect();
        assert_eq!(mine.len(), want.len(), "{hub}: {mine:?}");
        assert_eq!(mine.into_iter().collect::<BTreeSet<_>>(), want, "{hub}");
    }
    // Records carry state and history; the tombstone is listed.
    let big = s.identities(None, None, 100).await.unwrap();
    let gone = big.iter().find(|r| r.identity.device() == "gone").unwrap();
    assert_eq!(gone.state.deleted_at, Some(at(50)));
    let a = big
        .iter()
        .find(|r| r.identity == Identity::new("hub", "a", None))
        .unwrap();
    assert!(a.state.outage.is_some());
    assert_eq!(a.history.0.len(), 1);
    assert!(s.identities(None, None, 0).await.unwrap().is_empty());
}

async fn counts_equal_the_classification_of_every_identity(b: Backend) {
    let policy = silenced("muted-*", 10_000);
    let s = b.open_with(policy.clone()).await;
    let flappy = id("flappy");
    let mut events = vec![
        con(&id("c1"), 1, 0),
        con(&id("c2"), 1, 0),
        dis(&Identity::new("hub", "c2", Some("mod")), 2, 0),
        dis(&id("alerted"), 1, 0),
        dis(&id("muted-1"), 1, 0),
        con(&id("gone"), 1, 0),
        del(&id("gone"), 10),
        del(&id("never-seen"), 10),
    ];
    for i in 0..5u64 {
        let t = i as i64 * 30;
        events.push(dis(&flappy, 2 * i + 1, t));
        events.push(con(&flappy, 2 * i + 2, t + 10));
    }
    s.apply(events, at(200)).await.unwrap();
    // Claimed: alerted and the module; snoozed: muted-1. Then a fresh outage, still pending.
    assert_eq!(
        claim_all(&*s, 300).await,
        ["disconnected alerted from=0", "disconnected c2/mod from=0"]
    );
    outcomes(&*s, vec![dis(&id("pending"), 1, 250)], 301).await;
    let now = at(400);
    let counts = s.counts(now).await.unwrap();
    assert_eq!(
        counts,
        Counts {
            tracked: 7,
            connected: 3,
            pending: 2,
            alerted: 2,
            flapping: 1,
            silenced: 1,
        }
    );
    // By hand, from the records.
    let mut by_hand = Counts::default();
    for r in s.identities(None, None, 1000).await.unwrap() {
        by_hand.add(&status::classify(&r.identity, &r.state, now, &policy));
    }
    assert_eq!(counts, by_hand);
    // The silence is over: nothing is silenced any more.
    assert_eq!(s.counts(at(10_000)).await.unwrap().silenced, 0);
}

fn hub_times(hubs: &[HubState]) -> Vec<(String, i64)> {
    hubs.iter()
        .map(|h| {
            (
                h.hub.clone(),
                (h.last_event_at.unix_millis() - NOW_MS) / 1000,
            )
        })
        .collect()
}

async fn hub_times_and_the_last_sweep_only_move_forward(b: Backend) {
    let (s1, s2) = (b.open().await, b.open().await);
    let o = s1.overview().await.unwrap();
    assert!(o.hubs.is_empty() && o.last_sweep_at.is_none());
    s1.touch_hubs(vec![
        ("hub-b".into(), at(5)),
        ("hub-a".into(), at(10)),
        ("hub-a".into(), at(3)),
    ])
    .await
    .unwrap();
    s1.touch_hubs(vec![("hub-a".into(), at(7))]).await.unwrap();
    assert_eq!(
        hub_times(&s1.overview().await.unwrap().hubs),
        [("hub-a".into(), 10), ("hub-b".into(), 5)]
    );
    // Another instance moves it on; the first, remembering 10, cannot move it back.
    s2.touch_hubs(vec![("hub-a".into(), at(20))]).await.unwrap();
    s1.touch_hubs(vec![("hub-a".into(), at(15))]).await.unwrap();
    s1.touch_hubs(vec![("hub-b".into(), at(30))]).await.unwrap();
    // Concurrent touches: the latest wins.
    let touches: Vec<_> = (0..8)
        .map(|i| {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            tokio::spawn(async move { s.touch_hubs(vec![("hub-c".into(), at(40 + i))]).await })
        })
        .collect();
    for t in touches {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s1.finish_sweep(at(100), None).await.unwrap(), []);
    assert_eq!(s2.finish_sweep(at(50), None).await.unwrap(), []);
    for s in [&s1, &s2, &b.open().await] {
        let o = s.overview().await.unwrap();
        assert_eq!(
            hub_times(&o.hubs),
            [
                ("hub-a".into(), 20),
                ("hub-b".into(), 30),
                ("hub-c".into(), 47)
            ]
        );
        assert!(o.hubs.iter().all(|h| h.quiet.is_none()));
        assert_eq!(o.last_sweep_at, Some(at(100)));
    }
}

/// `instances` instances of one store end a sweep at once, at `t`, `t + 1`, … (so their alerts
/// would not even share outbox keys): every alert they raised.
async fn sweep_at_once(
    instances: &[Arc<dyn Store>],
    t: i64,
    check: Option<QuietCheck>,
) -> Vec<connmon::machine::Alert> {
    let tasks: Vec<_> = instances
        .iter()
        .zip(t..)
        .map(|(s, t)| {
            let s = s.clone();
            tokio::spawn(async move { s.finish_sweep(at(t), check).await.unwrap() })
        })
        .collect();
    let mut raised = Vec::new();
    for task in tasks {
        raised.extend(task.await.unwrap());
    }
    raised
}

async fn a_quiet_hub_alerts_once_and_once_more_when_it_resumes(b: Backend) {
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(b.open().await);
    }
    let (s1, s2) = (instances[0].clone(), instances[1].clone());
    let check = Some(QuietCheck {
        quiet_after: Duration::from_secs(600),
        watching_since: at(0),
    });
    s1.touch_hubs(vec![("hub".into(), at(0)), ("busy".into(), at(0))])
        .await
        .unwrap();
    assert!(sweep_at_once(&instances, 596, check).await.is_empty());
    s2.touch_hubs(vec![("busy".into(), at(500))]).await.unwrap();
    // Every instance ends a sweep at once: one of them raises the alert.
    let raised = sweep_at_once(&instances, 600, check).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].kind, AlertKind::HubQuiet);
    assert_eq!(raised[0].identity.hub(), "hub");
    assert_eq!(raised[0].disconnected_at, at(0));
    assert!(sweep_at_once(&instances, 900, check).await.is_empty());
    assert_eq!(s1.queue_len().await.unwrap(), 2, "queued once per channel");
    let quiet = s2.overview().await.unwrap().hubs[1].clone();
    assert_eq!(quiet.hub, "hub");
    assert_eq!(quiet.quiet.map(|q| q.since), Some(at(0)));
    // Events again (after a restart): one `hub_resumed`, however many instances sweep.
    drop(instances);
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(b.open().await);
    }
    let (s1, s2) = (instances[0].clone(), instances[1].clone());
    s1.touch_hubs(vec![("hub".into(), at(1000)), ("busy".into(), at(1000))])
        .await
        .unwrap();
    let raised = sweep_at_once(&instances, 1100, check).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].kind, AlertKind::HubResumed);
    assert_eq!(raised[0].downtime_seconds, 1000);
    assert!(sweep_at_once(&instances, 1200, check).await.is_empty());
    let hubs = s2.overview().await.unwrap().hubs;
    assert!(hubs.iter().all(|h| h.quiet.is_none()), "{hubs:?}");
    // Delivered through the outbox like every other alert, in order, each once.
    let q = queued(&*s2, 1300).await;
    assert_eq!(kinds(&q), ["hub_quiet", "hub_resumed"]);
    assert_eq!(q[0]["dedupKey"], q[1]["dedupKey"]);
    assert_eq!(q[0]["hub"], "hub");
    assert_eq!(s1.queue_len().await.unwrap(), 4);
    // Quiet again later: new alerts, with new keys.
    let again = sweep_at_once(&instances, 1600, check).await;
    assert_eq!(again.len(), 2, "busy and hub are both quiet now: {again:?}");
    assert!(again.iter().all(|a| a.dedup_key != q[0]["dedupKey"]));
}

// ---------------------------------------------------------------------------------------------
// One test per (check, store)

/// The dashboard's pass: `noteworthy` pages (small ones) give exactly the identities that
/// `identities` gives filtered by `store::is_noteworthy` — offline, flapping, or an alert in the
/// history — in the same order.
async fn noteworthy_pages_are_the_offline_flapping_and_alerted_identities(b: Backend) {
    let s = b.open().await;
    let flappy = id("flappy");
    let mut events = vec![
        con(&id("quiet-1"), 1, 0),
        con(&id("quiet-2"), 1, 0),
        dis(&id("renewed"), 1, 0),
        con(&id("renewed"), 2, 20),
        dis(&id("down"), 1, 0),
        dis(&id("was-down"), 1, 0),
        dis(&Identity::new("hub", "quiet-1", Some("m")), 2, 0),
        con(&id("gone"), 1, 0),
        del(&id("gone"), 10),
    ];
    for i in 0..5u64 {
        let t = i as i64 * 30;
        events.push(dis(&flappy, 2 * i + 1, t));
        events.push(con(&flappy, 2 * i + 2, t + 10));
    }
    s.apply(events, at(200)).await.unwrap();
    claim_all(&*s, 400).await;
    // Back after its alert: connected, with the alerts in its history.
    outcomes(&*s, vec![con(&id("was-down"), 2, 450)], 450).await;
    let want: Vec<Identity> = s
        .identities(None, None, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(connmon::store::is_noteworthy)
        .map(|r| r.identity)
        .collect();
    let names: Vec<&str> = want.iter().map(|i| i.device()).collect();
    for must in ["down", "was-down", "flappy", "quiet-1"] {
        assert!(names.contains(&must), "{must} missing from {names:?}");
    }
    for never in ["quiet-2", "renewed", "gone"] {
        assert!(!names.contains(&never), "{never} in {names:?}");
    }
    let mut got = Vec::new();
    let mut after = None;
    for _ in 0..50 {
        let (page, next) = s.noteworthy(after, 2).await.unwrap();
        got.extend(page.into_iter().map(|r| r.identity));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(got, want);
}

/// The longest ids IoT Hub accepts (128 `%`, escaped to 384 characters in Table keys, past the
/// service's key size together): applied, found by their ids, paged with their hub, counted,
/// claimed, and deleted with the device — its module included — like any other identity.
async fn the_longest_ids_are_found_paged_claimed_and_deleted_like_any_other(b: Backend) {
    let s = b.open().await;
    let long = "%".repeat(128);
    let hub = "h".repeat(50);
    let device = Identity::new(&hub, &long, None);
    let module = Identity::new(&hub, &long, Some(&long));
    let other = Identity::new(&hub, &long, Some(&"#".repeat(128)));
    let plain = Identity::new(&hub, "plain", None);
    let events = vec![
        dis(&device, 1, 0),
        dis(&module, 2, 0),
        dis(&other, 3, 0),
        dis(&plain, 1, 0),
    ];
    let o = outcomes(&*s, events, 1).await;
    assert_eq!(o, [Outcome::Opened; 4]);
    for i in [&device, &module, &other] {
        let r = s
            .identity(i.clone())
            .await
            .unwrap()
            .expect("found by its ids");
        assert_eq!(&r.identity, i);
        assert!(r.state.outage.is_some());
    }
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = s.identities(Some(hub.clone()), after, 2).await.unwrap();
        paged.extend(page.iter().map(|r| r.identity.clone()));
        if page.len() < 2 {
            break;
        }
        after = page.last().map(|r| r.identity.clone());
    }
    let paged: BTreeSet<_> = paged.into_iter().collect();
    let want: BTreeSet<_> = [&device, &module, &other, &plain]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(paged, want);
    assert_eq!(s.counts(at(2)).await.unwrap().pending, 4);
    assert_eq!(claim_all(&*s, 300).await.len(), 4);
    // Deleting the device deletes its modules: one later event of each is from before it.
    assert_eq!(
        outcomes(&*s, vec![del(&device, 400)], 401).await,
        [Outcome::Deleted]
    );
    let late = vec![
        dis(&device, 9, 390),
        dis(&module, 10, 390),
        dis(&other, 11, 390),
    ];
    assert_eq!(outcomes(&*s, late, 402).await, [Outcome::BeforeDeletion; 3]);
    for i in [&module, &other] {
        let r = s.identity(i.clone()).await.unwrap().unwrap();
        assert_eq!(r.state.deleted_at, Some(at(400)), "{i}");
    }
}

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $check() { super::$check(super::Backend::sqlite()).await } )*
        }
        mod table {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               #[ignore = "needs Azurite: run scripts/test"]
               async fn $check() { super::$check(super::Backend::table()).await } )*
        }
    };
}

conformance!(
    identities_are_keyed_by_hub_device_and_module,
    duplicates_and_stale_events_change_nothing_even_after_a_restart,
    outages_restart_continue_and_alert_exactly_once,
    token_renewal_is_silent_and_a_reconnect_after_an_alert_is_queued_once,
    deletion_forgets_device_and_modules_and_withdraws_unsent_alerts,
    claims_survive_a_restart_and_big_outages_are_claimed_in_full,
    concurrent_deliveries_equal_sequence_number_order,
    the_outbox_keeps_order_backs_off_and_forgets_what_was_delivered,
    an_alert_handed_out_but_never_confirmed_is_handed_out_again,
    a_reconnect_received_before_the_alert_was_raised_still_queues_behind_it,
    an_alert_handed_out_and_not_confirmed_holds_back_what_queued_behind_it,
    silenced_outages_wait_in_the_index_and_alert_when_the_silence_ends,
    flapping_and_reminders_are_kept_across_a_restart,
    every_allowed_id_character_and_case_round_trips,
    two_instances_taking_turns_decide_like_one,
    history_records_changes_and_alerts_bounded_and_kept_across_a_restart,
    a_snoozed_claim_keeps_the_history,
    identities_page_through_every_identity_once_and_filter_by_hub,
    counts_equal_the_classification_of_every_identity,
    hub_times_and_the_last_sweep_only_move_forward,
    a_quiet_hub_alerts_once_and_once_more_when_it_resumes,
    noteworthy_pages_are_the_offline_flapping_and_alerted_identities,
    the_longest_ids_are_found_paged_claimed_and_deleted_like_any_other,
);
