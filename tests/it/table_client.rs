//! The Table Storage REST client (`connmon::store::table`): against a real Azurite for the
//! protocol (CRUD, conditional writes, paging, transactions, awkward keys), and against tiny local
//! HTTP servers for what Azurite cannot show (managed identity tokens, retries, error hygiene).
//! Connection-string parsing and the SharedKey signature are checked without any server.
//!
//! Azurite comes from `scripts/test`, which starts it and sets `CONNMON_TEST_AZURITE_TABLE`; a test
//! that needs it fails (never skips) when it is missing. Every test uses its own table, so they run
//! in parallel against one emulator.

use connmon::settings::Secret;
use connmon::store::table::auth::{canonicalized_resource, rfc1123, sign, string_to_sign};
use connmon::store::table::client::{
    odata_string, BatchOp, ClientOptions, Entity, TableClient, TableError, MAX_PAGE,
};
use connmon::store::table::conn::{
    Credential, ManagedIdentity, TableEndpoint, DEV_ACCOUNT, DEV_ACCOUNT_KEY, STORAGE_RESOURCE,
};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------------------------
// Azurite helpers (also used by the store tests)

/// The variable `scripts/test` sets to Azurite's table endpoint.
pub const AZURITE_ENV: &str = "CONNMON_TEST_AZURITE_TABLE";

/// Azurite's table base URL (`http://127.0.0.1:PORT/devstoreaccount1`). Panics with instructions
/// when `scripts/test` did not set it or nothing answers there: a Table test never passes by
/// skipping.
pub fn azurite_table_endpoint() -> String {
    let raw = std::env::var(AZURITE_ENV).unwrap_or_default();
    if raw.trim().is_empty() {
        panic!(
            "{AZURITE_ENV} is not set: the Table Storage tests need Azurite. Run scripts/test \
             (it installs Azurite with npm, starts it and sets {AZURITE_ENV}), or start Azurite's \
             table service yourself and set {AZURITE_ENV}=http://127.0.0.1:PORT"
        );
    }
    let url = reqwest::Url::parse(raw.trim())
        .unwrap_or_else(|e| panic!("{AZURITE_ENV}={raw:?} is not a URL ({e}); run scripts/test"));
    let host = url.host_str().unwrap_or("127.0.0.1").to_string();
    let port = url.port_or_known_default().unwrap_or(10002);
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)));
    match reachable {
        Some(Ok(_)) => {}
        Some(Err(e)) => panic!(
            "Azurite is not reachable at {raw} ({e}): run scripts/test, which starts it for the \
             duration of the tests"
        ),
        None => panic!("{AZURITE_ENV}={raw:?} names no reachable address; run scripts/test"),
    }
    let base = raw.trim().trim_end_matches('/');
    if url.path().trim_matches('/').is_empty() {
        format!("{base}/{DEV_ACCOUNT}")
    } else {
        base.to_string()
    }
}

/// Azurite's table service with the emulator's well-known account.
pub fn azurite_endpoint() -> TableEndpoint {
    TableEndpoint::development(&azurite_table_endpoint())
}

/// A connection string for Azurite, as an operator would write it (for tests that start connmon).
pub fn azurite_connection_string() -> String {
    connection_string(&azurite_table_endpoint())
}

/// A connection string for the emulator's account at `table_endpoint`
/// (`http://127.0.0.1:PORT/devstoreaccount1`).
pub fn connection_string(table_endpoint: &str) -> String {
    format!(
        "DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_ACCOUNT_KEY};\
         TableEndpoint={table_endpoint};"
    )
}

/// A table name no other test (in this run or an earlier one on the same emulator) uses:
/// `prefix` (letters and digits kept) + process id + a counter + the clock.
pub fn unique_table_name(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut p: String = prefix.chars().filter(char::is_ascii_alphanumeric).collect();
    if !p.starts_with(|c: char| c.is_ascii_alphabetic()) {
        p.insert(0, 't');
    }
    p.truncate(30);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{p}{}x{}x{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client on a fresh table of its own in Azurite.
async fn fresh_table(prefix: &str) -> TableClient {
    let client = TableClient::new(azurite_endpoint(), &unique_table_name(prefix)).unwrap();
    client.create_table_if_missing().await.unwrap();
    client
}

fn entity(pk: &str, rk: &str, n: i64) -> Entity {
    let mut e = Entity::new(pk, rk);
    e.set_i64("n", n).set_str("s", &format!("v{n}"));
    e
}

// ---------------------------------------------------------------------------------------------
// Against Azurite

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn crud_round_trips_typed_properties() {
    let c = fresh_table("crud").await;
    let mut e = Entity::new("dev", "row");
    e.set_str("name", "sensor-42")
        .set_i64("big", (1 << 53) + 1)
        .set_i64("neg", -5)
        .set_i64("max", i64::MAX)
        .set_bool("on", true)
        .set_str("multi", "line one\nline two \"quoted\"");
    let etag1 = c.insert(&e).await.unwrap();

    let got = c.get("dev", "row").await.unwrap().expect("inserted");
    assert_eq!(got.etag.as_deref(), Some(etag1.as_str()));
    assert_eq!(
        (got.partition_key.as_str(), got.row_key.as_str()),
        ("dev", "row")
    );
    assert_eq!(got.get_str("name"), Some("sensor-42"));
    assert_eq!(
        got.get_i64("big"),
        Some((1 << 53) + 1),
        "Int64 beyond 2^53 survives"
    );
    assert_eq!(got.get_i64("neg"), Some(-5));
    assert_eq!(got.get_i64("max"), Some(i64::MAX));
    assert_eq!(got.get_bool("on"), Some(true));
    assert_eq!(got.get_str("multi"), Some("line one\nline two \"quoted\""));
    assert_eq!(got.get_str("big"), None, "an Int64 is not a string");
    for reserved in [
        "PartitionKey",
        "RowKey",
        "Timestamp",
        "odata.etag",
        "odata.metadata",
    ] {
        assert!(
            !got.props.contains_key(reserved),
            "{reserved} leaked into props: {:?}",
            got.props
        );
    }

    // Replace with what was read: types survive the round trip.
    let mut changed = got.clone();
    changed.set_bool("on", false).remove("neg");
    let etag2 = c.replace(&changed, &etag1).await.unwrap();
    assert_ne!(etag1, etag2);
    let got2 = c.get("dev", "row").await.unwrap().unwrap();
    assert_eq!(got2.etag.as_deref(), Some(etag2.as_str()));
    assert_eq!(got2.get_bool("on"), Some(false));
    assert_eq!(got2.get_i64("neg"), None, "removed by the replace");
    assert_eq!(
        got2.get_i64("big"),
        Some((1 << 53) + 1),
        "still an Int64 after a read-modify-write"
    );

    let etag3 = c.upsert(&entity("dev", "other", 7)).await.unwrap();
    assert!(!etag3.is_empty());
    c.delete("dev", "row", &etag2).await.unwrap();
    assert_eq!(c.get("dev", "row").await.unwrap(), None);
    assert_eq!(
        c.get("dev", "other").await.unwrap().unwrap().get_i64("n"),
        Some(7)
    );
}

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn conditional_writes_fail_on_stale_etags() {
    let c = fresh_table("cond").await;
    let old = c.insert(&entity("p", "r", 1)).await.unwrap();
    let new = c.replace(&entity("p", "r", 2), &old).await.unwrap();

    assert_eq!(
        c.replace(&entity("p", "r", 3), &old).await,
        Err(TableError::PreconditionFailed)
    );
    assert_eq!(
        c.delete("p", "r", &old).await,
        Err(TableError::PreconditionFailed)
    );
    assert_eq!(
        c.get("p", "r").await.unwrap().unwrap().get_i64("n"),
        Some(2),
        "nothing changed"
    );

    let newer = c.replace(&entity("p", "r", 4), "*").await.unwrap();
    assert_ne!(newer, new);
    assert_eq!(
        c.replace(&entity("p", "gone", 1), "*").await,
        Err(TableError::NotFound)
    );
    assert_eq!(c.delete("p", "gone", "*").await, Err(TableError::NotFound));
    c.delete("p", "r", "*").await.unwrap();
}

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn insert_of_an_existing_entity_is_a_conflict() {
    let c = fresh_table("conflict").await;
    c.insert(&entity("p", "r", 1)).await.unwrap();
    assert_eq!(
        c.insert(&entity("p", "r", 2)).await,
        Err(TableError::Conflict)
    );
    assert_eq!(
        c.get("p", "r").await.unwrap().unwrap().get_i64("n"),
        Some(1)
    );
}

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn get_of_a_missing_entity_is_none_but_a_missing_table_is_an_error() {
    let c = fresh_table("missing").await;
    assert_eq!(c.get("p", "nothing").await.unwrap(), None);

    let no_table = TableClient::new(azurite_endpoint(), &unique_table_name("never")).unwrap();
    match no_table.get("p", "r").await {
        Err(TableError::Rejected {
            status: 404, code, ..
        }) => assert_eq!(code, "TableNotFound"),
        other => panic!("expected Rejected 404 TableNotFound, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn create_table_if_missing_twice_is_fine() {
    // Through a connection string, as an operator configures it.
    let cs = azurite_connection_string();
    let endpoint =
        TableEndpoint::from_lookup(|k| (k == "AzureWebJobsStorage").then(|| cs.clone())).unwrap();
    assert_eq!(endpoint, azurite_endpoint());
    let c = TableClient::new(endpoint, &unique_table_name("twice")).unwrap();
    c.create_table_if_missing().await.unwrap();
    c.create_table_if_missing().await.unwrap();
    c.insert(&entity("p", "r", 1)).await.unwrap();
    c.create_table_if_missing().await.unwrap();
    assert!(
        c.get("p", "r").await.unwrap().is_some(),
        "the second create kept the data"
    );
}

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn query_follows_continuations_past_a_page() {
    let c = fresh_table("paging").await;
    let n = 1_100;
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops = chunk
            .iter()
            .map(|i| BatchOp::Insert(entity("big", &format!("r{i:05}"), *i)))
            .collect();
        c.batch("big", ops).await.unwrap();
    }
    c.insert(&entity("other", "x", -1)).await.unwrap();

    // The emulator pages like the service: 1,000 entities, then a continuation.
    let filter = format!("PartitionKey eq {}", odata_string("big"));
    let (first, next) = c.query_page(&filter, None, None, None).await.unwrap();
    assert_eq!(first.len(), MAX_PAGE);
    let next = next.expect("a continuation after 1,000 entities");
    let (second, last) = c
        .query_page(&filter, None, None, Some(&next))
        .await
        .unwrap();
    assert_eq!(second.len(), n as usize - MAX_PAGE);
    assert_eq!(last, None);

    let all = c.query(&filter, None, None).await.unwrap();
    assert_eq!(all.len(), n as usize);
    let keys: Vec<String> = all.iter().map(|e| e.row_key.clone()).collect();
    let expected: Vec<String> = (0..n).map(|i| format!("r{i:05}")).collect();
    assert_eq!(keys, expected, "every entity once, in key order");
    assert!(
        all.iter().all(|e| e.etag.is_some()),
        "query results carry etags"
    );
    assert_eq!(all[1_099].get_i64("n"), Some(1_099));

    let limited = c.query(&filter, None, Some(1_050)).await.unwrap();
    assert_eq!(limited.len(), 1_050);
    assert_eq!(limited.last().unwrap().row_key, "r01049");
    assert_eq!(c.query(&filter, None, Some(3)).await.unwrap().len(), 3);
    assert_eq!(c.query(&filter, None, Some(0)).await.unwrap(), vec![]);
    assert_eq!(
        c.query("", None, None).await.unwrap().len(),
        n as usize + 1,
        "empty filter = all"
    );
}

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn query_select_returns_only_the_named_properties() {
    let c = fresh_table("select").await;
    let mut e = Entity::new("p", "r");
    e.set_str("a", "A").set_i64("b", 2).set_bool("c", true);
    let etag = c.insert(&e).await.unwrap();

    let got = c
        .query(
            &format!("PartitionKey eq {}", odata_string("p")),
            Some(&["b"]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let g = &got[0];
    assert_eq!(
        (g.partition_key.as_str(), g.row_key.as_str()),
        ("p", "r"),
        "keys always come back"
    );
    assert_eq!(g.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(g.get_i64("b"), Some(2));
    assert_eq!(g.get_str("a"), None);
    assert_eq!(g.get_bool("c"), None);
}

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn batch_applies_mixed_operations_and_returns_their_etags() {
    let c = fresh_table("batchok").await;
    let e1 = c.insert(&entity("p", "r1", 1)).await.unwrap();
    c.insert(&entity("p", "r2", 2)).await.unwrap();
    let e3 = c.insert(&entity("p", "r3", 3)).await.unwrap();

    let etags = c
        .batch(
            "p",
            vec![
                BatchOp::Insert(entity("p", "r4", 4)),
                BatchOp::Replace {
                    entity: entity("p", "r1", 10),
                    etag: e1.clone(),
                },
                BatchOp::Upsert(entity("p", "r5", 5)),
                BatchOp::Upsert(entity("p", "r2", 20)),
                BatchOp::Delete {
                    row_key: "r3".into(),
                    etag: e3,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(etags.len(), 5);
    assert!(etags[..4].iter().all(Option::is_some), "{etags:?}");
    assert_eq!(etags[4], None, "a delete has no etag");

    for (rk, n, etag) in [
        ("r4", 4, &etags[0]),
        ("r1", 10, &etags[1]),
        ("r5", 5, &etags[2]),
        ("r2", 20, &etags[3]),
    ] {
        let got = c
            .get("p", rk)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{rk} missing"));
        assert_eq!(got.get_i64("n"), Some(n), "{rk}");
        assert_eq!(&got.etag, etag, "{rk}: the returned etag is the stored one");
    }
    assert_eq!(c.get("p", "r3").await.unwrap(), None);
    // The returned etag is usable for the next conditional write.
    c.replace(&entity("p", "r1", 11), etags[1].as_ref().unwrap())
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn a_failed_batch_names_the_operation_and_applies_nothing() {
    let c = fresh_table("batchfail").await;
    let stale = c.insert(&entity("p", "r1", 1)).await.unwrap();
    let current = c.replace(&entity("p", "r1", 2), &stale).await.unwrap();
    c.insert(&entity("p", "taken", 0)).await.unwrap();

    let check_nothing_applied = |label: &'static str| {
        let c = c.clone();
        let current = current.clone();
        async move {
            let r1 = c.get("p", "r1").await.unwrap().unwrap();
            assert_eq!(
                (r1.get_i64("n"), r1.etag.as_deref()),
                (Some(2), Some(current.as_str())),
                "{label}"
            );
            assert_eq!(
                c.get("p", "new1").await.unwrap(),
                None,
                "{label}: the insert before was rolled back"
            );
            assert_eq!(c.get("p", "new2").await.unwrap(), None, "{label}");
            assert!(c.get("p", "taken").await.unwrap().is_some(), "{label}");
        }
    };

    // A stale etag in the middle.
    let r = c
        .batch(
            "p",
            vec![
                BatchOp::Insert(entity("p", "new1", 1)),
                BatchOp::Replace {
                    entity: entity("p", "r1", 3),
                    etag: stale.clone(),
                },
                BatchOp::Insert(entity("p", "new2", 1)),
            ],
        )
        .await;
    assert_eq!(
        r,
        Err(TableError::BatchFailed {
            index: 1,
            source: Box::new(TableError::PreconditionFailed)
        })
    );
    check_nothing_applied("stale etag").await;

    // An existing row, last.
    let r = c
        .batch(
            "p",
            vec![
                BatchOp::Insert(entity("p", "new1", 1)),
                BatchOp::Delete {
                    row_key: "r1".into(),
                    etag: current.clone(),
                },
                BatchOp::Insert(entity("p", "taken", 1)),
            ],
        )
        .await;
    assert_eq!(
        r,
        Err(TableError::BatchFailed {
            index: 2,
            source: Box::new(TableError::Conflict)
        })
    );
    check_nothing_applied("conflict").await;

    // A missing row, first.
    let r = c
        .batch(
            "p",
            vec![
                BatchOp::Delete {
                    row_key: "nobody".into(),
                    etag: "*".into(),
                },
                BatchOp::Insert(entity("p", "new1", 1)),
            ],
        )
        .await;
    assert_eq!(
        r,
        Err(TableError::BatchFailed {
            index: 0,
            source: Box::new(TableError::NotFound)
        })
    );
    check_nothing_applied("not found").await;

    let e = r.unwrap_err();
    assert!(e.to_string().contains("operation 0"), "{e}");
    assert!(std::error::Error::source(&e).is_some());
}

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn batch_of_one_hundred_and_the_limits_around_it() {
    let c = fresh_table("batch100").await;
    let ops: Vec<BatchOp> = (0..100)
        .map(|i| BatchOp::Insert(entity("p", &format!("r{i:03}"), i)))
        .collect();
    let etags = c.batch("p", ops).await.unwrap();
    assert_eq!(etags.len(), 100);
    assert!(etags.iter().all(Option::is_some));
    assert_eq!(c.query("", None, None).await.unwrap().len(), 100);

    let too_many: Vec<BatchOp> = (0..101)
        .map(|i| BatchOp::Upsert(entity("p", &format!("s{i:03}"), i)))
        .collect();
    assert!(matches!(
        c.batch("p", too_many).await,
        Err(TableError::Invalid(_))
    ));
    let other_partition = vec![BatchOp::Insert(entity("q", "r", 1))];
    assert!(matches!(
        c.batch("p", other_partition).await,
        Err(TableError::Invalid(_))
    ));
    let twice = vec![
        BatchOp::Upsert(entity("p", "d", 1)),
        BatchOp::Delete {
            row_key: "d".into(),
            etag: "*".into(),
        },
    ];
    assert!(matches!(
        c.batch("p", twice).await,
        Err(TableError::Invalid(_))
    ));
    assert_eq!(c.batch("p", vec![]).await, Ok(vec![]));
    assert_eq!(
        c.query("", None, None).await.unwrap().len(),
        100,
        "refused batches sent nothing"
    );
}

/// Characters device ids and our composite keys contain. Each must survive every operation, in
/// both keys, alone and among others.
const AWKWARD: &[char] = &[
    '\'', '%', '$', '*', '(', ')', '!', '+', '=', '@', ';', ',', ':', '|', ' ', '-', '.', '_', '~',
    'é',
];

/// Azurite (3.37.0) finds a batch operation's PartitionKey with the greedy regex
/// `(?<=PartitionKey=')(.*)(?=',)` on the decoded URL, so a row key that starts with `,` or holds
/// `',` makes it read the wrong partition key (the operation then fails as NotFound). The URL the
/// client sends is the documented one; the Table service parses keys as OData literals. Such row
/// keys are still tested through every single-entity operation.
fn azurite_batch_misreads(row_key: &str) -> bool {
    row_key.starts_with(',') || row_key.contains("',")
}

#[tokio::test]
#[ignore = "needs Azurite: run scripts/test"]
async fn awkward_keys_survive_every_operation() {
    let c = fresh_table("awkward").await;
    let mut keys: Vec<(String, String)> = Vec::new();
    for ch in AWKWARD {
        keys.push((format!("p{ch}x"), format!("{ch}")));
        keys.push((format!("{ch}{ch}"), format!("r{ch}{ch}{ch}r")));
    }
    let all: String = AWKWARD.iter().collect();
    keys.push((all.clone(), all.clone()));
    keys.push(("%27''%25".into(), "a'',b".into()));
    keys.push(("a',b".into(), "r'".into()));
    keys.push(("Device".into(), "Module".into()));
    keys.push(("device".into(), "module".into()));
    keys.push(("DEVICE".into(), "module".into()));

    for (i, (pk, rk)) in keys.iter().enumerate() {
        let label = format!("keys {pk:?} / {rk:?}");
        let e1 = c
            .insert(&entity(pk, rk, i as i64))
            .await
            .unwrap_or_else(|e| panic!("insert {label}: {e}"));
        let got = c
            .get(pk, rk)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("get {label}"));
        assert_eq!((&got.partition_key, &got.row_key), (pk, rk), "{label}");
        assert_eq!(got.get_i64("n"), Some(i as i64), "{label}");

        let found = c
            .query(
                &format!(
                    "PartitionKey eq {} and RowKey eq {}",
                    odata_string(pk),
                    odata_string(rk)
                ),
                None,
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("query {label}: {e}"));
        assert_eq!(found.len(), 1, "query {label}: {found:?}");
        assert_eq!(
            (&found[0].partition_key, &found[0].row_key),
            (pk, rk),
            "{label}"
        );

        let e2 = c
            .replace(&entity(pk, rk, 1000 + i as i64), &e1)
            .await
            .unwrap_or_else(|e| panic!("replace {label}: {e}"));
        assert_eq!(
            c.get(pk, rk).await.unwrap().unwrap().get_i64("n"),
            Some(1000 + i as i64),
            "{label}"
        );

        if azurite_batch_misreads(rk) {
            c.delete(pk, rk, &e2)
                .await
                .unwrap_or_else(|e| panic!("delete {label}: {e}"));
            continue;
        }
        // A transaction in the same partition: replace this row, insert a sibling with the same
        // awkward row key plus a suffix, then delete both again in a second transaction.
        let sibling = format!("{rk}+sib");
        let etags = c
            .batch(
                pk,
                vec![
                    BatchOp::Replace {
                        entity: entity(pk, rk, 2000 + i as i64),
                        etag: e2.clone(),
                    },
                    BatchOp::Insert(entity(pk, &sibling, 1)),
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("batch {label}: {e}"));
        let e3 = etags[0].clone().unwrap();
        assert_eq!(
            c.get(pk, rk).await.unwrap().unwrap().get_i64("n"),
            Some(2000 + i as i64),
            "{label}"
        );
        assert!(c.get(pk, &sibling).await.unwrap().is_some(), "{label}");
        c.batch(
            pk,
            vec![
                BatchOp::Delete {
                    row_key: sibling.clone(),
                    etag: etags[1].clone().unwrap(),
                },
                BatchOp::Upsert(entity(pk, rk, 3000 + i as i64)),
            ],
        )
        .await
        .unwrap_or_else(|e| panic!("second batch {label}: {e}"));
        assert_eq!(c.get(pk, &sibling).await.unwrap(), None, "{label}");
        assert_eq!(
            c.delete(pk, rk, &e3).await,
            Err(TableError::PreconditionFailed),
            "{label}: upserted since"
        );
        c.delete(pk, rk, "*")
            .await
            .unwrap_or_else(|e| panic!("delete {label}: {e}"));
        assert_eq!(c.get(pk, rk).await.unwrap(), None, "{label}");
    }

    // Ids that differ only in case are different entities.
    c.insert(&entity("Dev", "x", 1)).await.unwrap();
    c.insert(&entity("dev", "x", 2)).await.unwrap();
    c.insert(&entity("dev", "X", 3)).await.unwrap();
    assert_eq!(
        c.get("Dev", "x").await.unwrap().unwrap().get_i64("n"),
        Some(1)
    );
    assert_eq!(
        c.get("dev", "x").await.unwrap().unwrap().get_i64("n"),
        Some(2)
    );
    assert_eq!(
        c.get("dev", "X").await.unwrap().unwrap().get_i64("n"),
        Some(3)
    );
    assert_eq!(
        c.query(
            &format!("PartitionKey eq {}", odata_string("dev")),
            None,
            None
        )
        .await
        .unwrap()
        .len(),
        2
    );
}

#[tokio::test]
async fn keys_the_service_forbids_are_refused_before_sending() {
    // No server: nothing may be sent.
    let c = TableClient::new(
        TableEndpoint::development("http://127.0.0.1:9/devstoreaccount1"),
        "nowhere",
    )
    .unwrap();
    for bad in ["a/b", "a\\b", "a#b", "a?b", "a\nb", "a\u{7f}b"] {
        assert!(
            matches!(c.get(bad, "r").await, Err(TableError::Invalid(_))),
            "{bad:?}"
        );
        assert!(
            matches!(
                c.insert(&entity("p", bad, 1)).await,
                Err(TableError::Invalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        TableClient::new(TableEndpoint::development("http://x/y"), "1abc"),
        Err(TableError::Invalid(_))
    ));
    assert!(matches!(
        TableClient::new(TableEndpoint::development("http://x/y"), "ab"),
        Err(TableError::Invalid(_))
    ));
    assert!(matches!(
        TableClient::new(TableEndpoint::development("http://x/y"), "tables"),
        Err(TableError::Invalid(_))
    ));
    assert!(matches!(
        TableClient::new(TableEndpoint::development("http://x/y"), "with-dash"),
        Err(TableError::Invalid(_))
    ));
}

#[test]
fn odata_string_doubles_quotes() {
    assert_eq!(odata_string("plain"), "'plain'");
    assert_eq!(odata_string("it's"), "'it''s'");
    assert_eq!(odata_string("''"), "''''''");
    assert_eq!(odata_string(""), "''");
}

// ---------------------------------------------------------------------------------------------
// SharedKey signing

/// Vectors computed independently of this code, with Python's standard library:
///
/// ```text
/// import base64, hmac, hashlib
/// def sig(key_b64, sts): return base64.b64encode(hmac.new(base64.b64decode(key_b64),
///                                sts.encode(), hashlib.sha256).digest()).decode()
/// sig(DEV_ACCOUNT_KEY, "GET\n\n\nSat, 28 Nov 2026 10:00:00 GMT\n/devstoreaccount1/devstoreaccount1/"
///     "mytable(PartitionKey='p%27%27k',RowKey='r%2B1')")  -> mKjqIMd6N4/cQy4r0ToqJ6tChqULr6ni7jgrQywf3Hw=
/// sig("c2VjcmV0LWtleS1mb3ItdGVzdHM=", "POST\n\napplication/json\nMon, 14 Oct 2013 18:25:49 GMT\n"
///     "/myaccount/Tables")                    -> t1czS0hZfw/uHyE+eCHS2WLZbS+f4eEWGyYlDEU+gfg=
/// ```
///
/// The REST documentation ("Authorize with Shared Key") gives the Table string-to-sign layout and
/// canonicalised resource rules but no signature computed with a published key, so there is no
/// vector to copy from it; the request against Azurite in every other test checks the same
/// code end to end.
#[test]
fn shared_key_signature_matches_independent_vectors() {
    let dev_key = base64_decode(DEV_ACCOUNT_KEY);
    let url = reqwest::Url::parse(
        "http://127.0.0.1:10002/devstoreaccount1/mytable(PartitionKey='p%27%27k',RowKey='r%2B1')",
    )
    .unwrap();
    let resource = canonicalized_resource(DEV_ACCOUNT, &url);
    assert_eq!(
        resource,
        "/devstoreaccount1/devstoreaccount1/mytable(PartitionKey='p%27%27k',RowKey='r%2B1')",
        "path-style emulator URLs name the account twice; the path stays percent-encoded"
    );
    let sts = string_to_sign("GET", "", "", "Sat, 28 Nov 2026 10:00:00 GMT", &resource);
    assert_eq!(
        sign(&dev_key, &sts),
        "mKjqIMd6N4/cQy4r0ToqJ6tChqULr6ni7jgrQywf3Hw="
    );

    let url = reqwest::Url::parse("https://myaccount.table.core.windows.net/Tables").unwrap();
    let sts = string_to_sign(
        "POST",
        "",
        "application/json",
        "Mon, 14 Oct 2013 18:25:49 GMT",
        &canonicalized_resource("myaccount", &url),
    );
    assert_eq!(
        sts,
        "POST\n\napplication/json\nMon, 14 Oct 2013 18:25:49 GMT\n/myaccount/Tables"
    );
    assert_eq!(
        sign(b"secret-key-for-tests", &sts),
        "t1czS0hZfw/uHyE+eCHS2WLZbS+f4eEWGyYlDEU+gfg="
    );

    // Only `comp` of the query is signed (the Table flavour).
    let url = reqwest::Url::parse(
        "https://myaccount.table.core.windows.net/mytable()?$filter=a&comp=acl&NextRowKey=x",
    )
    .unwrap();
    assert_eq!(
        canonicalized_resource("myaccount", &url),
        "/myaccount/mytable()?comp=acl"
    );
    let url =
        reqwest::Url::parse("https://myaccount.table.core.windows.net/mytable()?$top=5").unwrap();
    assert_eq!(
        canonicalized_resource("myaccount", &url),
        "/myaccount/mytable()"
    );
}

#[test]
fn dates_are_rfc_1123() {
    let t = UNIX_EPOCH + Duration::from_secs(1_381_775_149); // the documentation's example date
    assert_eq!(rfc1123(t), "Mon, 14 Oct 2013 18:25:49 GMT");
    assert_eq!(
        rfc1123(UNIX_EPOCH + Duration::from_secs(1_795_860_000)),
        "Sat, 28 Nov 2026 10:00:00 GMT"
    );
    assert_eq!(rfc1123(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Connection settings

const KEY_B64: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM="; // "secret-key-for-tests"

/// Settings for one case: name and value.
type Env = Vec<(&'static str, String)>;

fn lookup(pairs: &[(&str, &str)]) -> Result<TableEndpoint, connmon::settings::SettingsError> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    TableEndpoint::from_lookup(|k| map.get(k).cloned())
}

fn shared(base: &str, account: &str, key: &[u8]) -> TableEndpoint {
    TableEndpoint {
        base_url: base.into(),
        account: account.into(),
        credential: Credential::SharedKey {
            account: account.into(),
            key: Secret::new(key.to_vec()),
        },
    }
}

#[test]
fn connection_settings_table() {
    let key = b"secret-key-for-tests";
    let mi = |client_id: Option<&str>| {
        Credential::ManagedIdentity(ManagedIdentity {
            endpoint: "http://localhost:8081/msi/token".into(),
            header: Secret::new("hdr-secret".into()),
            client_id: client_id.map(str::to_string),
            resource: STORAGE_RESOURCE.into(),
        })
    };
    let identity_env = [
        ("IDENTITY_ENDPOINT", "http://localhost:8081/msi/token"),
        ("IDENTITY_HEADER", "hdr-secret"),
    ];
    let cases: Vec<(&str, Env, TableEndpoint)> = vec![
        (
            "account key, defaults",
            vec![("AzureWebJobsStorage", format!("AccountName=myacct;AccountKey={KEY_B64}"))],
            shared("https://myacct.table.core.windows.net", "myacct", key),
        ),
        (
            "portal form with EndpointSuffix",
            vec![(
                "AzureWebJobsStorage",
                format!("DefaultEndpointsProtocol=https;AccountName=myacct;AccountKey={KEY_B64};EndpointSuffix=core.chinacloudapi.cn"),
            )],
            shared("https://myacct.table.core.chinacloudapi.cn", "myacct", key),
        ),
        (
            "http, keys in any case, blob endpoint ignored, trailing ;",
            vec![(
                "AzureWebJobsStorage",
                format!("defaultendpointsprotocol=http;ACCOUNTNAME=myacct;accountkey={KEY_B64};BlobEndpoint=https://x/;"),
            )],
            shared("http://myacct.table.core.windows.net", "myacct", key),
        ),
        (
            "TableEndpoint",
            vec![(
                "AzureWebJobsStorage",
                format!("TableEndpoint=https://tables.example.net/;AccountName=myacct;AccountKey={KEY_B64}"),
            )],
            shared("https://tables.example.net", "myacct", key),
        ),
        (
            "emulator",
            vec![("AzureWebJobsStorage", "UseDevelopmentStorage=true".into())],
            shared("http://127.0.0.1:10002/devstoreaccount1", DEV_ACCOUNT, &base64_decode(DEV_ACCOUNT_KEY)),
        ),
        (
            "emulator behind a proxy",
            vec![("AzureWebJobsStorage", "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://myproxy".into())],
            shared("http://myproxy:10002/devstoreaccount1", DEV_ACCOUNT, &base64_decode(DEV_ACCOUNT_KEY)),
        ),
        (
            "CONNMON_TABLE_CONNECTION wins over AzureWebJobsStorage",
            vec![
                ("AzureWebJobsStorage", "UseDevelopmentStorage=true".into()),
                ("CONNMON_TABLE_CONNECTION", format!("AccountName=other;AccountKey={KEY_B64}")),
            ],
            shared("https://other.table.core.windows.net", "other", key),
        ),
        (
            "a blank CONNMON_TABLE_CONNECTION is unset",
            vec![("CONNMON_TABLE_CONNECTION", "  ".into()), ("AzureWebJobsStorage", "UseDevelopmentStorage=true".into())],
            shared("http://127.0.0.1:10002/devstoreaccount1", DEV_ACCOUNT, &base64_decode(DEV_ACCOUNT_KEY)),
        ),
        (
            "identity-based by account name, system-assigned",
            [vec![("AzureWebJobsStorage__accountName", "myacct".to_string())], identity_env.iter().map(|(k, v)| (*k, v.to_string())).collect()].concat(),
            TableEndpoint { base_url: "https://myacct.table.core.windows.net".into(), account: "myacct".into(), credential: mi(None) },
        ),
        (
            "identity-based by service URI, user-assigned, credential named",
            [
                vec![
                    ("AzureWebJobsStorage__tableServiceUri", "https://myacct.table.core.windows.net/".to_string()),
                    ("AzureWebJobsStorage__clientId", "5e29463d-71da-4fe0-8e69-999b57db23b0".to_string()),
                    ("AzureWebJobsStorage__credential", "managedidentity".to_string()),
                ],
                identity_env.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            ]
            .concat(),
            TableEndpoint {
                base_url: "https://myacct.table.core.windows.net".into(),
                account: "myacct".into(),
                credential: mi(Some("5e29463d-71da-4fe0-8e69-999b57db23b0")),
            },
        ),
        (
            "identity-based, path-style URI names the account in the path",
            [vec![("AzureWebJobsStorage__tableServiceUri", "http://127.0.0.1:10002/devstoreaccount1".to_string())], identity_env.iter().map(|(k, v)| (*k, v.to_string())).collect()].concat(),
            TableEndpoint { base_url: "http://127.0.0.1:10002/devstoreaccount1".into(), account: DEV_ACCOUNT.into(), credential: mi(None) },
        ),
    ];
    for (label, env, want) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            lookup(&env).unwrap_or_else(|e| panic!("{label}: {e}")),
            want,
            "{label}"
        );
    }
}

#[test]
fn bad_connection_settings_name_the_setting_and_never_the_secret() {
    let secret_key = "c3VwZXItc2VjcmV0LWtleS12YWx1ZQ=="; // "super-secret-key-value"
                                                         // (settings, the setting the error must name, a phrase the error must contain, whether the value may be shown)
    let cases: Vec<(Env, &str, &str, bool)> = vec![
        (
            vec![],
            "AzureWebJobsStorage",
            "AzureWebJobsStorage__accountName",
            false,
        ),
        (
            vec![("AzureWebJobsStorage", format!("AccountKey={secret_key}"))],
            "AzureWebJobsStorage",
            "no AccountName",
            false,
        ),
        (
            vec![("AzureWebJobsStorage", "AccountName=myacct".into())],
            "AzureWebJobsStorage",
            "no AccountKey",
            false,
        ),
        (
            vec![(
                "AzureWebJobsStorage",
                "AccountName=myacct;AccountKey=not*base64!super-secret".into(),
            )],
            "AzureWebJobsStorage",
            "not valid base64",
            false,
        ),
        (
            vec![(
                "CONNMON_TABLE_CONNECTION",
                format!("AccountName=My_Account;AccountKey={secret_key}"),
            )],
            "CONNMON_TABLE_CONNECTION",
            "AccountName",
            false,
        ),
        (
            vec![("AzureWebJobsStorage", "just-a-super-secret".into())],
            "AzureWebJobsStorage",
            "Key=Value",
            false,
        ),
        (
            vec![("AzureWebJobsStorage", format!("just-a-secret-{secret_key}"))],
            "AzureWebJobsStorage",
            "no AccountName",
            false,
        ),
        (
            vec![(
                "AzureWebJobsStorage",
                "TableEndpoint=https://x.example;SharedAccessSignature=sv=2020&sig=super-secret"
                    .into(),
            )],
            "AzureWebJobsStorage",
            "shared access signature",
            false,
        ),
        (
            vec![(
                "AzureWebJobsStorage",
                format!("TableEndpoint=not a url;AccountName=myacct;AccountKey={secret_key}"),
            )],
            "AzureWebJobsStorage",
            "TableEndpoint",
            false,
        ),
        (
            vec![("AzureWebJobsStorage", "UseDevelopmentStorage=yes".into())],
            "AzureWebJobsStorage",
            "UseDevelopmentStorage",
            false,
        ),
        (
            vec![(
                "AzureWebJobsStorage",
                format!("DefaultEndpointsProtocol=ftp;AccountName=myacct;AccountKey={secret_key}"),
            )],
            "AzureWebJobsStorage",
            "DefaultEndpointsProtocol",
            false,
        ),
        (
            vec![("AzureWebJobsStorage__accountName", "MyAcct".into())],
            "AzureWebJobsStorage__accountName",
            "lowercase",
            true,
        ),
        (
            vec![("AzureWebJobsStorage__accountName", "myacct".into())],
            "IDENTITY_ENDPOINT",
            "managed identity",
            false,
        ),
        (
            vec![
                ("AzureWebJobsStorage__accountName", "myacct".into()),
                (
                    "IDENTITY_ENDPOINT",
                    "http://localhost:8081/msi/token".into(),
                ),
            ],
            "IDENTITY_HEADER",
            "IDENTITY_HEADER",
            false,
        ),
        (
            vec![
                ("AzureWebJobsStorage__accountName", "myacct".into()),
                ("AzureWebJobsStorage__credential", "clientsecret".into()),
                (
                    "IDENTITY_ENDPOINT",
                    "http://localhost:8081/msi/token".into(),
                ),
                ("IDENTITY_HEADER", "super-secret".into()),
            ],
            "AzureWebJobsStorage__credential",
            "managedidentity",
            true,
        ),
        (
            vec![(
                "AzureWebJobsStorage__tableServiceUri",
                "https://myacct.table.core.windows.net/?sv=1&sig=abc".into(),
            )],
            "AzureWebJobsStorage__tableServiceUri",
            "without a query",
            true,
        ),
    ];
    for (env, name, phrase, value_shown) in cases {
        let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let err = lookup(&env_ref).expect_err(&format!("{env:?} should be refused"));
        let text = err.to_string();
        assert_eq!(err.name, name, "{env:?}: {text}");
        assert!(
            text.contains(phrase),
            "{env:?}: {text:?} should mention {phrase:?}"
        );
        assert_eq!(err.value.is_some(), value_shown, "{env:?}: {err:?}");
        for forbidden in [secret_key, "super-secret", "not*base64"] {
            assert!(
                !text.contains(forbidden) && !format!("{err:?}").contains(forbidden),
                "{env:?} leaked a secret: {text}"
            );
        }
    }
}

#[test]
fn debug_output_hides_keys_and_identity_headers() {
    let cs = format!("AccountName=myacct;AccountKey={KEY_B64}");
    let ep = lookup(&[("AzureWebJobsStorage", cs.as_str())]).unwrap();
    let text = format!("{ep:?}");
    assert!(
        text.contains("myacct") && text.contains("<secret>"),
        "{text}"
    );
    assert!(
        !text.contains(KEY_B64) && !text.contains("115, 101, 99"),
        "{text}"
    ); // b"sec" as bytes

    let ep = lookup(&[
        ("AzureWebJobsStorage__accountName", "myacct"),
        ("IDENTITY_ENDPOINT", "http://localhost:8081/msi/token"),
        ("IDENTITY_HEADER", "hdr-super-secret"),
    ])
    .unwrap();
    assert!(!format!("{ep:?}").contains("hdr-super-secret"));
    let client = TableClient::new(ep, "mytable").unwrap();
    assert!(!format!("{client:?}").contains("hdr-super-secret"));
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server for what Azurite cannot show

/// One request as the fake server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// Path and query, as sent.
    target: String,
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap()
    }
    /// Query parameters, decoded.
    fn query(&self) -> HashMap<String, String> {
        reqwest::Url::parse(&format!("http://x{}", self.target))
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect()
    }
}

/// What the fake answers: status, headers, body.
type Reply = (u16, Vec<(&'static str, String)>, String);

/// Answers each request with `respond(request, n)` (n counts from 0), on its own thread, one
/// connection at a time (`Connection: close`). Stops on drop.
struct Fake {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl Fake {
    fn start(respond: impl Fn(&Seen, usize) -> Option<Reply> + Send + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let Some(req) = read_request(&mut stream) else {
                    continue;
                };
                let n = {
                    let mut s = seen2.lock().unwrap();
                    s.push(req.clone());
                    s.len() - 1
                };
                // None = never answer (a hung server): keep the socket open until the client gives up.
                match respond(&req, n) {
                    Some((status, headers, body)) => {
                        let mut out = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                            body.len()
                        );
                        for (k, v) in headers {
                            out.push_str(&format!("{k}: {v}\r\n"));
                        }
                        out.push_str("\r\n");
                        out.push_str(&body);
                        let _ = stream.write_all(out.as_bytes());
                    }
                    None => {
                        thread::spawn(move || {
                            thread::sleep(Duration::from_secs(5));
                            drop(stream);
                        });
                    }
                }
            }
        });
        Fake {
            url: format!("http://{addr}"),
            seen,
            stop,
            addr,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Seen {
        method,
        target,
        headers,
    })
}

fn entity_reply() -> Option<Reply> {
    Some((
        200,
        vec![
            (
                "Content-Type",
                "application/json;odata=minimalmetadata".into(),
            ),
            ("ETag", "W/\"1\"".into()),
        ],
        r#"{"PartitionKey":"p","RowKey":"r","n@odata.type":"Edm.Int64","n":"5"}"#.into(),
    ))
}

fn fast_retries() -> ClientOptions {
    ClientOptions {
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(2),
        ..ClientOptions::default()
    }
}

fn fake_client(fake: &Fake, options: ClientOptions) -> TableClient {
    TableClient::with_options(
        shared(&format!("{}/acct", fake.url), "acct", b"k"),
        "mytable",
        options,
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Managed identity

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token endpoint issuing `tok-1`, `tok-2`, … valid for `lifetime` seconds, answering after
/// `delay` (so concurrent callers overlap).
fn token_endpoint(lifetime: u64, delay: Duration) -> Fake {
    Fake::start(move |_, n| {
        thread::sleep(delay);
        let body = format!(
            r#"{{"access_token":"tok-{}","expires_on":"{}","resource":"https://storage.azure.com/","token_type":"Bearer"}}"#,
            n + 1,
            now_secs() + lifetime
        );
        Some((200, vec![("Content-Type", "application/json".into())], body))
    })
}

fn mi_client(table: &Fake, tokens: &Fake, client_id: Option<&str>) -> TableClient {
    let ep = TableEndpoint {
        base_url: table.url.clone(),
        account: "acct".into(),
        credential: Credential::ManagedIdentity(ManagedIdentity {
            endpoint: format!("{}/msi/token", tokens.url),
            header: Secret::new("the-identity-header".into()),
            client_id: client_id.map(str::to_string),
            resource: STORAGE_RESOURCE.into(),
        }),
    };
    TableClient::with_options(ep, "mytable", fast_retries()).unwrap()
}

#[tokio::test]
async fn managed_identity_token_is_requested_as_documented_and_cached() {
    let tokens = token_endpoint(3600, Duration::from_millis(200));
    let table = Fake::start(|_, _| entity_reply());
    let client = mi_client(
        &table,
        &tokens,
        Some("5e29463d-71da-4fe0-8e69-999b57db23b0"),
    );

    // Twenty concurrent callers with an empty cache share one token request.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.get("p", "r").await })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().unwrap().get_i64("n"), Some(5));
    }
    for _ in 0..5 {
        client.get("p", "r").await.unwrap();
    }

    let token_requests = tokens.seen();
    assert_eq!(
        token_requests.len(),
        1,
        "one token for 25 calls: {token_requests:?}"
    );
    let t = &token_requests[0];
    assert_eq!((t.method.as_str(), t.path()), ("GET", "/msi/token"));
    let q = t.query();
    assert_eq!(
        q.get("resource").map(String::as_str),
        Some("https://storage.azure.com/")
    );
    assert_eq!(q.get("api-version").map(String::as_str), Some("2019-08-01"));
    assert_eq!(
        q.get("client_id").map(String::as_str),
        Some("5e29463d-71da-4fe0-8e69-999b57db23b0")
    );
    assert_eq!(q.len(), 3, "{q:?}");
    assert_eq!(t.header("X-IDENTITY-HEADER"), Some("the-identity-header"));

    let table_requests = table.seen();
    assert_eq!(table_requests.len(), 25);
    for r in &table_requests {
        assert_eq!(r.header("Authorization"), Some("Bearer tok-1"));
        assert_eq!(r.header("x-ms-version"), Some("2019-02-02"));
    }
}

#[tokio::test]
async fn managed_identity_token_is_refreshed_when_it_nears_expiry_or_is_rejected() {
    // Tokens that live 60 s: always inside the 5-minute refresh margin.
    let tokens = token_endpoint(60, Duration::ZERO);
    let table = Fake::start(|r, _| match r.header("Authorization") {
        Some("Bearer tok-3") => Some((
            401,
            vec![("x-ms-error-code", "InvalidAuthenticationInfo".into())],
            String::new(),
        )),
        _ => entity_reply(),
    });
    let client = mi_client(&table, &tokens, None);
    client.get("p", "r").await.unwrap();
    client.get("p", "r").await.unwrap();
    // tok-3 is refused with 401: the client drops it, fetches tok-4 and tries again, once.
    client.get("p", "r").await.unwrap();

    let auth: Vec<String> = table
        .seen()
        .iter()
        .map(|r| r.header("Authorization").unwrap().to_string())
        .collect();
    assert_eq!(
        auth,
        [
            "Bearer tok-1",
            "Bearer tok-2",
            "Bearer tok-3",
            "Bearer tok-4"
        ]
    );
    let token_requests = tokens.seen();
    assert_eq!(token_requests.len(), 4);
    assert!(
        token_requests
            .iter()
            .all(|t| !t.query().contains_key("client_id")),
        "system-assigned: no client_id"
    );
}

#[tokio::test]
async fn managed_identity_failures_are_typed_and_keep_the_header_secret() {
    let tokens = Fake::start(|_, _| {
        Some((
            400,
            vec![("Content-Type", "application/json".into())],
            r#"{"statusCode":400,"message":"No managed identity found for specified ClientId"}"#
                .into(),
        ))
    });
    let table = Fake::start(|_, _| entity_reply());
    let client = mi_client(&table, &tokens, Some("nobody"));
    let err = client.get("p", "r").await.unwrap_err();
    match &err {
        TableError::Rejected {
            status: 400,
            message,
            ..
        } => assert!(message.contains("No managed identity"), "{message}"),
        other => panic!("expected Rejected 400, got {other:?}"),
    }
    assert!(!err.to_string().contains("the-identity-header"));
    assert_eq!(
        tokens.seen().len(),
        1,
        "a 400 from the token endpoint is not retried"
    );
    assert!(table.seen().is_empty(), "no table request without a token");
}

// ---------------------------------------------------------------------------------------------
// Retries and error hygiene

#[tokio::test]
async fn retries_503_then_succeeds() {
    let fake = Fake::start(|_, n| {
        if n == 0 {
            Some((
                503,
                vec![("x-ms-error-code", "ServerBusy".into())],
                String::new(),
            ))
        } else {
            entity_reply()
        }
    });
    let got = fake_client(&fake, fast_retries())
        .get("p", "r")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.get_i64("n"), Some(5));
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(seen[0].header("x-ms-date"), None);
    assert_eq!(seen[0].path(), "/acct/mytable(PartitionKey='p',RowKey='r')");
}

#[tokio::test]
async fn honours_retry_after() {
    let fake = Fake::start(|_, n| {
        if n == 0 {
            Some((429, vec![("Retry-After", "1".into())], String::new()))
        } else {
            entity_reply()
        }
    });
    let started = Instant::now();
    fake_client(&fake, fast_retries())
        .get("p", "r")
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(fake.seen().len(), 2);
}

#[tokio::test]
async fn gives_up_after_the_attempt_budget_with_a_typed_error() {
    let busy = Fake::start(|_, _| Some((503, vec![("Retry-After", "0".into())], String::new())));
    assert_eq!(
        fake_client(&busy, fast_retries()).get("p", "r").await,
        Err(TableError::Throttled {
            retry_after: Some(Duration::ZERO)
        })
    );
    assert_eq!(busy.seen().len(), 4, "four attempts");

    let broken = Fake::start(|_, _| {
        Some((
            500,
            vec![("x-ms-error-code", "InternalError".into())],
            String::new(),
        ))
    });
    let err = fake_client(&broken, fast_retries())
        .insert(&entity("p", "r", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TableError::Transient(m) if m.contains("500")),
        "{err:?}"
    );
    assert_eq!(broken.seen().len(), 4);

    // A Retry-After longer than the client may wait: returned at once with the hint.
    let slow = Fake::start(|_, _| Some((429, vec![("Retry-After", "30".into())], String::new())));
    assert_eq!(
        fake_client(&slow, fast_retries()).get("p", "r").await,
        Err(TableError::Throttled {
            retry_after: Some(Duration::from_secs(30))
        })
    );
    assert_eq!(slow.seen().len(), 1);
}

#[tokio::test]
async fn network_failures_and_timeouts_are_transient_after_retries() {
    let port = crate::support::free_port(); // nothing listens there
    let c = TableClient::with_options(
        shared(&format!("http://127.0.0.1:{port}/acct"), "acct", b"k"),
        "mytable",
        fast_retries(),
    )
    .unwrap();
    let started = Instant::now();
    let err = c.get("p", "r").await.unwrap_err();
    assert!(matches!(&err, TableError::Transient(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    let hung = Fake::start(|_, _| None);
    let options = ClientOptions {
        request_timeout: Duration::from_millis(300),
        max_attempts: 2,
        ..fast_retries()
    };
    let err = fake_client(&hung, options).get("p", "r").await.unwrap_err();
    assert!(
        matches!(&err, TableError::Transient(m) if m.contains("timed out")),
        "{err:?}"
    );
    assert_eq!(hung.seen().len(), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    for (status, code, want) in [
        (
            412,
            "UpdateConditionNotSatisfied",
            TableError::PreconditionFailed,
        ),
        (409, "EntityAlreadyExists", TableError::Conflict),
        (404, "ResourceNotFound", TableError::NotFound),
        (
            400,
            "InvalidInput",
            TableError::Rejected {
                status: 400,
                code: "InvalidInput".into(),
                message: "One of the request inputs is not valid.".into(),
            },
        ),
    ] {
        let fake = Fake::start(move |_, _| {
            Some((
                status,
                vec![
                    ("x-ms-error-code", code.into()),
                    ("Content-Type", "application/json".into()),
                ],
                format!(
                    r#"{{"odata.error":{{"code":"{code}","message":{{"lang":"en-US","value":"One of the request inputs is not valid.\nRequestId:1\nTime:x"}}}}}}"#
                ),
            ))
        });
        let c = fake_client(&fake, fast_retries());
        assert_eq!(
            c.replace(&entity("p", "r", 1), "W/\"1\"").await,
            Err(want.clone()),
            "{status}"
        );
        assert_eq!(fake.seen().len(), 1, "{status} was retried");
    }
}

#[tokio::test]
async fn authentication_failures_never_echo_signatures_or_keys() {
    // What the real service says for a bad signature: it quotes the signature and the string it signed.
    let fake = Fake::start(|r, _| {
        let sent = r.header("Authorization").unwrap_or_default().to_string();
        Some((
            403,
            vec![("x-ms-error-code", "AuthenticationFailed".into()), ("Content-Type", "application/xml".into())],
            format!(
                "<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request. \
                 The MAC signature found in the HTTP request '{sent}' is not the same as any computed signature. \
                 Server used following string to sign: 'GET...'.</Message></Error>"
            ),
        ))
    });
    let c = fake_client(&fake, fast_retries());
    let err = c.get("p", "r").await.unwrap_err();
    let sent = fake.seen()[0].header("Authorization").unwrap().to_string();
    let signature = sent.split(':').nth(1).unwrap().to_string();
    assert!(sent.starts_with("SharedKey acct:"), "{sent}");
    let text = format!("{err} {err:?}");
    assert!(
        matches!(&err, TableError::Rejected { status: 403, code, .. } if code == "AuthenticationFailed"),
        "{err:?}"
    );
    assert!(!text.contains(&signature), "the signature leaked: {text}");
    assert!(!text.contains("string to sign"), "{text}");
    assert!(!text.contains(&fake.url), "the URL leaked: {text}");
}

// ---------------------------------------------------------------------------------------------
// Batch responses as the documentation shows them (Azurite's differ in details)

/// `text` with CRLF line ends, as multipart bodies travel.
fn crlf(text: &str) -> String {
    text.lines()
        .map(|l| format!("{}\r\n", l.trim_start()))
        .collect()
}

#[tokio::test]
async fn batch_parses_the_documented_success_response() {
    // "Performing entity group transactions", sample response (JSON, versions 2013-08-15 and later).
    let body = crlf(
        "--batchresponse_e69b1c6c-62ff-471e-ab88-9a4aeef0a880
        Content-Type: multipart/mixed; boundary=changesetresponse_a6253244-7e21-42a8-a149-479ee9e94a25

        --changesetresponse_a6253244-7e21-42a8-a149-479ee9e94a25
        Content-Type: application/http
        Content-Transfer-Encoding: binary

        HTTP/1.1 204 No Content
        Content-ID: 1
        X-Content-Type-Options: nosniff
        Cache-Control: no-cache
        Preference-Applied: return-no-content
        DataServiceVersion: 3.0;
        Location: https://myaccount.table.core.windows.net/Blogs(PartitionKey='Channel_19',RowKey='1')
        DataServiceId: https://myaccount.table.core.windows.net/Blogs(PartitionKey='Channel_19',RowKey='1')
        ETag: W/\"0x8D101F7E4B662C4\"

        --changesetresponse_a6253244-7e21-42a8-a149-479ee9e94a25
        Content-Type: application/http
        Content-Transfer-Encoding: binary

        HTTP/1.1 204 No Content
        Content-ID: 2
        X-Content-Type-Options: nosniff
        Cache-Control: no-cache
        Preference-Applied: return-no-content
        DataServiceVersion: 3.0;
        ETag: W/\"0x8C134F7A4B692D8\"

        --changesetresponse_a6253244-7e21-42a8-a149-479ee9e94a25
        Content-Type: application/http
        Content-Transfer-Encoding: binary

        HTTP/1.1 204 No Content
        Content-ID: 3
        X-Content-Type-Options: nosniff
        Cache-Control: no-cache
        DataServiceVersion: 1.0;
        ETag: W/\"0x8A541B7C4D699D7\"

        --changesetresponse_a6253244-7e21-42a8-a149-479ee9e94a25--
        --batchresponse_e69b1c6c-62ff-471e-ab88-9a4aeef0a880--",
    );
    let fake = Fake::start(move |_, _| {
        Some((
            202,
            vec![(
                "Content-Type",
                "multipart/mixed; boundary=batchresponse_e69b1c6c-62ff-471e-ab88-9a4aeef0a880"
                    .into(),
            )],
            body.clone(),
        ))
    });
    let etags = fake_client(&fake, fast_retries())
        .batch(
            "Channel_19",
            vec![
                BatchOp::Insert(entity("Channel_19", "1", 1)),
                BatchOp::Insert(entity("Channel_19", "2", 2)),
                BatchOp::Replace {
                    entity: entity("Channel_19", "3", 3),
                    etag: "*".into(),
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        etags,
        [
            Some("W/\"0x8D101F7E4B662C4\"".to_string()),
            Some("W/\"0x8C134F7A4B692D8\"".to_string()),
            Some("W/\"0x8A541B7C4D699D7\"".to_string())
        ]
    );

    // What was sent: one changeset, each operation an absolute URL with a Content-ID.
    let sent = &fake.seen()[0];
    assert_eq!(
        (sent.method.as_str(), sent.path()),
        ("POST", "/acct/$batch")
    );
    assert!(sent
        .header("Content-Type")
        .unwrap()
        .starts_with("multipart/mixed; boundary=batch_"));
}

#[tokio::test]
async fn batch_finds_the_failed_operation_in_the_documented_error_responses() {
    // The documentation's JSON sample (its message even lacks a closing quote): operation 0 failed,
    // told by the "0:" prefix of the message.
    let json_error = crlf(
        "--batchresponse_4e1c04af-af2b-4cfc-9e35-7677a5efcfca
        Content-Type: multipart/mixed; boundary=changesetresponse_e2a26601-bba8-4c1a-8a8c-bb66badcbca1

        --changesetresponse_e2a26601-bba8-4c1a-8a8c-bb66badcbca1
        Content-Type: application/http
        Content-Transfer-Encoding: binary

        HTTP/1.1 400 Bad Request
        Content-ID: 1
        X-Content-Type-Options: nosniff
        DataServiceVersion: 3.0;
        Content-Type: application/json;odata=minimalmetadata;streaming=true;charset=utf-8

        {\"odata.error\":{\"code\":\"OutOfRangeInput\",\"message\":{\"lang\":\"en-US\",\"value\":\"0:One of the request inputs is out of range.\\nRequestId:8abd3c55-a72e-47ba-ae0b-ba43abeb76ae\\nTime:2013-10-14T19:21:58.0890048Z}}}
        --changesetresponse_e2a26601-bba8-4c1a-8a8c-bb66badcbca1--
        --batchresponse_4e1c04af-af2b-4cfc-9e35-7677a5efcfca--",
    );
    // The Atom sample's shape: the fourth operation failed ("3:" and Content-ID 4), here with the
    // code a stale etag gets, under the documented 400.
    let xml_error = crlf(
        "--batchresponse_7ab1553a-7dd6-44e7-8107-bf1ea1ab1876
        Content-Type: multipart/mixed; boundary=changesetresponse_6cc856b4-8cb9-41eb-b8d2-bb73475c6cec

        --changesetresponse_6cc856b4-8cb9-41eb-b8d2-bb73475c6cec
        Content-Type: application/http
        Content-Transfer-Encoding: binary

        HTTP/1.1 400 Bad Request
        Content-ID: 4
        Content-Type: application/xml
        Cache-Control: no-cache
        DataServiceVersion: 1.0;

        <?xml version=\"1.0\" encoding=\"utf-8\" standalone=\"yes\"?>
        <error xmlns=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\">
        <code>UpdateConditionNotSatisfied</code>
        <message xml:lang=\"en-US\">3:The update condition specified in the request was not satisfied.</message>
        </error>
        --changesetresponse_6cc856b4-8cb9-41eb-b8d2-bb73475c6cec--
        --batchresponse_7ab1553a-7dd6-44e7-8107-bf1ea1ab1876--",
    );
    let ops = || -> Vec<BatchOp> {
        (0..4)
            .map(|i| BatchOp::Insert(entity("pk", &format!("r{i}"), i)))
            .collect()
    };
    for (body, boundary, want) in [
        (
            json_error,
            "batchresponse_4e1c04af-af2b-4cfc-9e35-7677a5efcfca",
            TableError::BatchFailed {
                index: 0,
                source: Box::new(TableError::Rejected {
                    status: 400,
                    code: "OutOfRangeInput".into(),
                    message: "One of the request inputs is out of range.".into(),
                }),
            },
        ),
        (
            xml_error,
            "batchresponse_7ab1553a-7dd6-44e7-8107-bf1ea1ab1876",
            TableError::BatchFailed {
                index: 3,
                source: Box::new(TableError::PreconditionFailed),
            },
        ),
    ] {
        let fake = Fake::start(move |_, _| {
            Some((
                202,
                vec![(
                    "Content-Type",
                    format!("multipart/mixed; boundary={boundary}"),
                )],
                body.clone(),
            ))
        });
        assert_eq!(
            fake_client(&fake, fast_retries()).batch("pk", ops()).await,
            Err(want)
        );
    }
}

/// A token endpoint that answers with a body that does not end (64 MiB as fast as it is read,
/// then silence): the token request fails at once on a short prefix, instead of buffering the
/// answer until the 10 s request timeout.
#[tokio::test]
async fn an_endless_token_answer_fails_at_once() {
    use crate::support::{Answer, Receiver};
    use connmon::store::table::auth::TokenSource;
    for code in [200, 500] {
        let endpoint = Receiver::start_then(vec![], Answer::Endless(code));
        let tokens = TokenSource::new(
            ManagedIdentity {
                endpoint: endpoint.url("/msi/token"),
                header: Secret::new("the-identity-header".into()),
                client_id: None,
                resource: STORAGE_RESOURCE.into(),
            },
            reqwest::Client::builder()
                .timeout(ClientOptions::default().request_timeout)
                .build()
                .unwrap(),
        );
        let started = Instant::now();
        let err = tokens
            .token()
            .await
            .expect_err("an endless answer is no token");
        let took = started.elapsed();
        let text = err.to_string();
        assert!(text.contains("managed identity endpoint"), "{code}: {text}");
        if code == 500 {
            assert!(text.contains("answered 500"), "{text}");
        }
        assert!(
            took < Duration::from_secs(2),
            "{code}: took {took:?}: {text}"
        );
    }
}
