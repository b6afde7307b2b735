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
