//! What a reliability and security probe broke (faults, damage and hostile input): each test
//! opens with the failure as it was seen and fails without its fix.

use crate::support::*;
use serde_json::json;

/// Bug: one job whose payload was not a JSON object (or whose `plugin` member was not a
/// string) made every export whose window held it fail (`invalid type: integer 1, expected a
/// string … export_failed`), and since exports chain, the default export kept failing: any
/// tenant could block the auditors' exports. Any payload the API accepts must export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_payload_of_any_shape_exports() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let c = app.socket_client();
    for payload in [json!(1), json!("text"), json!([1, 2]), json!({ "plugin": 1, "pluginDigest": [true] }), json!(null)]
    {
        api_post(&c, "/jobs", json!({ "type": "build", "payload": payload })).await;
    }
    let pack = app.root().join("pack");
    let out = app.stella(&["export", "--out", pack.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let verify = app.stella(&["audit", "verify", pack.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", stderr(&verify));
    let ledger = std::fs::read_to_string(pack.join("ledger.ndjson")).unwrap();
    assert_eq!(ledger.lines().filter(|l| l.contains("\"kind\":\"job.enqueued\"")).count(), 5);
}

/// Bug: a 0-byte or missing store file was silently replaced by a new one (dev and
/// production): a new appliance id and a ledger of height 2, beside the old keys and sealed
/// bundles. An appliance with an identity refuses to start on a missing or empty store, names
/// what is missing and how to restore, unless told `--init-new-store`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_empty_store_is_refused_when_the_appliance_has_an_identity() {
    for production in [false, true] {
        let mut app = if production { TestAppliance::start_production() } else { TestAppliance::start() };
        let id = api_get(&app.socket_client(), "/status").await["applianceId"].as_str().unwrap().to_owned();
        app.terminate();
        let store = app.store_path();
        for damage in ["empty", "missing"] {
            if damage == "empty" {
                std::fs::write(&store, b"").unwrap();
            } else {
                std::fs::remove_file(&store).unwrap();
            }
            let out = app.serve_refused(&[]);
            assert!(!out.status.success(), "production={production} {damage}: it started");
            let err = stderr(&out);
            assert!(err.contains(&format!("is {damage}")) && err.contains("--init-new-store"), "{err}");
            assert!(err.contains("appliance_ed25519"), "names what says the appliance exists: {err}");
            let left = std::fs::metadata(&store).map(|m| m.len()).ok();
            assert_eq!(left, if damage == "empty" { Some(0) } else { None }, "the store was left as it was");
        }
        app.launch_with(&["--init-new-store"]);
        let new = api_get(&app.socket_client(), "/status").await["applianceId"].as_str().unwrap().to_owned();
        assert_ne!(new, id, "a new, empty store on purpose is a new appliance");
    }
}
