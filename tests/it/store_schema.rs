//! A store written by a newer stella is refused with a clear error and left byte-for-byte
//! untouched, by the daemon and by offline `db verify`.

use crate::support::*;
use redb::Database;
use sha2::{Digest, Sha256};
use stella::kernel::store::META;

#[test]
fn a_newer_schema_is_refused_and_the_file_is_untouched() {
    let mut app = TestAppliance::start();
    assert!(app.terminate().success());
    {
        let db = Database::open(app.store_path()).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema_version", 99).unwrap();
        txn.commit().unwrap();
    }
    let before = Sha256::digest(std::fs::read(app.store_path()).unwrap());
    let serve = std::process::Command::new(STELLA)
        .arg("--state-dir")
        .arg(app.root())
        .args(["serve", "--dev"])
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(10), "{}", stderr(&serve));
    assert!(stderr(&serve).contains("schema version 99, newer than this stella supports (3)"), "{}", stderr(&serve));
    let verify = app.stella(&["orch", "db", "verify", "--offline"]);
    assert_eq!(verify.status.code(), Some(10), "{}", stderr(&verify));
    let after = Sha256::digest(std::fs::read(app.store_path()).unwrap());
    assert_eq!(before, after, "the store file must not change");
}

/// A store of schema version 1 (written before steps kept an attempt history): its tables
/// disagree with what today's stella makes of its ledger, so `db verify` fails on it as it is.
/// At the first open by this stella its tables are rebuilt from the ledger, once, and then it
/// verifies; nothing of the ledger changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_schema_has_its_tables_rebuilt_from_the_ledger_once() {
    use redb::{ReadableDatabase, ReadableTable};
    use stella::domain::runs::tables::STEPS;
    use stella::kernel::store::LEDGER;
    let mut app = TestAppliance::start();
    let run = run_sample(&app.socket_client()).await;
    assert!(app.terminate().success());
    let ledger_before = {
        let db = Database::open(app.store_path()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            // As a version-1 stella wrote them: steps without a history.
            let mut steps = txn.open_table(STEPS).unwrap();
            let rows: Vec<(String, Vec<u8>)> = steps
                .iter()
                .unwrap()
                .map(|r| r.unwrap())
                .map(|(k, v)| (k.value().to_owned(), v.value().to_vec()))
                .collect();
            for (k, v) in rows {
                let mut rec: serde_json::Value = serde_json::from_slice(&v).unwrap();
                rec.as_object_mut().unwrap().remove("history");
                steps.insert(k.as_str(), serde_json::to_vec(&rec).unwrap().as_slice()).unwrap();
            }
            txn.open_table(META).unwrap().insert("schema_version", 1).unwrap();
        }
        txn.commit().unwrap();
        let read = db.begin_read().unwrap();
        let t = read.open_table(LEDGER).unwrap();
        t.iter().unwrap().map(|r| r.unwrap().1.value().to_vec()).collect::<Vec<_>>()
    };
    let stale = app.stella(&["orch", "db", "verify", "--offline"]);
    assert_eq!(stale.status.code(), Some(8), "the old tables differ from today's replay: {}", stdout(&stale));
    app.launch();
    assert!(app.log().contains("rebuilding its tables from the ledger"), "{}", app.log());
    let v = api_get(&app.socket_client(), &format!("/runs/{run}")).await;
    assert!(
        v["steps"].as_array().unwrap().iter().all(|s| s["history"].as_array().is_some_and(|h| !h.is_empty())),
        "{v}"
    );
    assert!(app.stella(&["orch", "db", "verify"]).status.success());
    assert!(app.terminate().success());
    app.launch();
    assert!(!app.log().contains("rebuilding its tables"), "once only");
    app.terminate();
    let db = Database::open(app.store_path()).unwrap();
    let read = db.begin_read().unwrap();
    let t = read.open_table(LEDGER).unwrap();
    let after: Vec<Vec<u8>> = t.iter().unwrap().map(|r| r.unwrap().1.value().to_vec()).collect();
    assert_eq!(&after[..ledger_before.len()], &ledger_before[..], "the ledger is as it was");
}

/// A store of schema version 2 (before the write-ahead log) is opened as it is — its tables
/// did not change — and marked version 3, which a stella without the log refuses.
#[test]
fn a_store_before_the_log_is_marked_for_it_without_a_rebuild() {
    use redb::ReadableDatabase;
    let mut app = TestAppliance::start();
    assert!(app.terminate().success());
    {
        let db = Database::open(app.store_path()).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("schema_version", 2).unwrap();
        txn.commit().unwrap();
    }
    app.launch();
    assert!(app.terminate().success());
    assert!(!app.log().contains("rebuilding its tables"), "no rebuild for version 2:\n{}", app.log());
    let db = Database::open(app.store_path()).unwrap();
    let version = db.begin_read().unwrap().open_table(META).unwrap().get("schema_version").unwrap().unwrap().value();
    assert_eq!(version, 3);
    drop(db);
    let verify = app.stella(&["orch", "db", "verify", "--offline"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}
