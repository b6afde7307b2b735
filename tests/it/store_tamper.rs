//! Tamper evidence: a changed byte in a stored ledger entry, a deleted entry, or a projection
//! row that the ledger does not explain makes `db verify` (on the stopped store) fail and name
//! the ledger sequence.

use crate::support::*;
use redb::{Database, ReadableDatabase, ReadableTable};
use stella::domain::tokens::tables::TOKENS;
use stella::kernel::store::LEDGER;

/// A stopped store holding the dev token, the signed samples and three more tokens (the last
/// three entries).
async fn stopped_store() -> (TestAppliance, Vec<String>) {
    let mut app = TestAppliance::start();
    let client = app.socket_client();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create_token(&client, "default", &["orchestrator:read"], None).await.0);
    }
    // Through the running daemon, the chain alone.
    let chain = app.stella(&["orch", "db", "verify", "--chain-only"]);
    assert!(chain.status.success(), "{}", stderr(&chain));
    let height = ledger_height(&client).await;
    assert!(
        stdout(&chain).contains(&format!("the chain of {height} ledger entries holds, head {height} ")),
        "{}",
        stdout(&chain)
    );
    assert!(app.terminate().success());
    let ok = app.stella(&["orch", "db", "verify"]);
    assert!(ok.status.success(), "pristine store verifies: {}", stderr(&ok));
    (app, ids)
}

fn edit_ledger(app: &TestAppliance, seq: u64, edit: impl FnOnce(&mut Vec<u8>)) {
    let db = Database::open(app.store_path()).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut ledger = txn.open_table(LEDGER).unwrap();
        let mut bytes = ledger.get(seq).unwrap().unwrap().value().to_vec();
        edit(&mut bytes);
        ledger.insert(seq, bytes.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

fn assert_verify_names(app: &TestAppliance, needle: &str) {
    let out = app.stella(&["orch", "db", "verify"]);
    assert_eq!(out.status.code(), Some(8), "verify must fail with exit 8: {}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains(needle), "expected {needle:?} in: {}", stderr(&out));
}

/// The damage is in the chain itself: `db verify --chain-only` names it the same way.
fn assert_chain_check_names(app: &TestAppliance, needle: &str) {
    assert_verify_names(app, needle);
    let out = app.stella(&["orch", "db", "verify", "--chain-only"]);
    assert_eq!(out.status.code(), Some(8), "--chain-only must fail with exit 8: {}{}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains(needle), "expected {needle:?} from --chain-only in: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_inside_a_value_is_named_by_sequence() {
    let (app, _) = stopped_store().await;
    // The first entry that carries a digest (a registration of the dev samples).
    let seq = {
        let db = Database::open(app.store_path()).unwrap();
        let txn = db.begin_read().unwrap();
        let ledger = txn.open_table(LEDGER).unwrap();
        (1..100u64)
            .find(|s| ledger.get(*s).unwrap().is_some_and(|v| v.value().windows(8).any(|w| w == b"\"sha256\"")))
            .unwrap()
    };
    edit_ledger(&app, seq, |bytes| {
        let at = bytes.windows(8).position(|w| w == b"\"sha256\"").unwrap() + 11;
        bytes[at] = if bytes[at] == b'a' { b'b' } else { b'a' };
    });
    assert_chain_check_names(&app, &format!("ledger entry {seq}: hash does not match"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_structural_byte_is_named_by_sequence() {
    let (app, _) = stopped_store().await;
    edit_ledger(&app, 4, |bytes| bytes[0] ^= 0x01);
    assert_chain_check_names(&app, "ledger entry 4: stored bytes do not parse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_entry_is_named_by_sequence() {
    let (app, _) = stopped_store().await;
    let db = Database::open(app.store_path()).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(LEDGER).unwrap().remove(5).unwrap();
    txn.commit().unwrap();
    drop(db);
    assert_chain_check_names(&app, "ledger entry 5 is missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_row_the_ledger_does_not_explain_is_named() {
    let (app, ids) = stopped_store().await;
    let db = Database::open(app.store_path()).unwrap();
    let txn = db.begin_write().unwrap();
    let created_at = {
        let ledger = txn.open_table(LEDGER).unwrap();
        ledger
            .iter()
            .unwrap()
            .map(|r| r.unwrap())
            .find(|(_, v)| String::from_utf8_lossy(v.value()).contains(&format!("\"subjects\":[\"{}\"]", ids[1])))
            .map(|(k, _)| k.value())
            .unwrap()
    };
    {
        let mut tokens = txn.open_table(TOKENS).unwrap();
        let raw = String::from_utf8(tokens.get(ids[1].as_str()).unwrap().unwrap().value().to_vec()).unwrap();
        let widened = raw.replace("[\"orchestrator:read\"]", "[\"orchestrator:admin\"]");
        assert_ne!(raw, widened);
        tokens.insert(ids[1].as_str(), widened.as_bytes()).unwrap();
    }
    txn.commit().unwrap();
    drop(db);
    assert_verify_names(
        &app,
        &format!(
            "tokens/{}: stored value differs from the ledger replay (last written by ledger entry {created_at})",
            ids[1]
        ),
    );
    // The chain itself is whole: only the full check, which replays it, sees the widened token.
    let chain = app.stella(&["orch", "db", "verify", "--chain-only"]);
    assert!(chain.status.success(), "{}", stderr(&chain));
    assert!(stdout(&chain).contains("(tables not checked)"), "{}", stdout(&chain));
}
