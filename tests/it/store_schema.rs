//! A store written by a newer stella is refused with a clear error and left byte-for-byte
//! untouched, by the daemon and by offline `db verify`.

use crate::support::*;
use redb::Database;
use sha2::{Digest, Sha256};
use stella::store::schema::META;

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
    assert!(stderr(&serve).contains("schema version 99, newer than this stella supports (1)"), "{}", stderr(&serve));
    let verify = app.stella(&["orch", "db", "verify", "--offline"]);
    assert_eq!(verify.status.code(), Some(10), "{}", stderr(&verify));
    let after = Sha256::digest(std::fs::read(app.store_path()).unwrap());
    assert_eq!(before, after, "the store file must not change");
}
