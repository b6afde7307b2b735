//! Golden files of the export's OTLP-JSON: a fixed ledger (two runs, one with a retried step),
//! a fixed log file and a fixed metric snapshot exported over a fixed window with a fixed,
//! test-only key give exactly the committed `logs.ndjson`, `metrics.ndjson`, `traces.ndjson`
//! and `manifest.json`. `STELLA_BLESS=1` rewrites them after a deliberate format change.

use serde_json::json;
use std::path::Path;
use stella::domain::appliance::tables::METRIC_SNAPSHOTS;
use stella::kernel::ledger::{Draft, Entry, GENESIS_PREV};
use stella::kernel::store::LEDGER;

const T0: i64 = 1_800_000_000_000;

fn drafts() -> Vec<(i64, Draft)> {
    let d =
        |kind: &'static str, data: serde_json::Value| Draft { tenant: "default".into(), kind, subjects: vec![], data };
    vec![
        (
            0,
            d(
                "run.created",
                json!({ "runId": "run-1", "dag": "release", "inputs": {}, "plugins": { "deploy": "ab".repeat(32) } }),
            ),
        ),
        (
            1,
            d(
                "job.enqueued",
                json!({ "id": "job-1", "payload": { "plugin": "deploy", "pluginDigest": "ab".repeat(32), "run": "run-1", "step": "ship" } }),
            ),
        ),
        (2, d("step.queued", json!({ "runId": "run-1", "step": "ship", "jobId": "job-1" }))),
        (
            10,
            d(
                "step.started",
                json!({ "runId": "run-1", "step": "ship", "jobId": "job-1", "attempt": 1, "worker": "w1" }),
            ),
        ),
        (
            500,
            d(
                "step.retrying",
                json!({ "runId": "run-1", "step": "ship", "error": "connection refused", "errorCode": "exit_status" }),
            ),
        ),
        (
            1500,
            d(
                "step.started",
                json!({ "runId": "run-1", "step": "ship", "jobId": "job-1", "attempt": 2, "worker": "w2" }),
            ),
        ),
        (2100, d("step.succeeded", json!({ "runId": "run-1", "step": "ship", "outputs": { "version": "1.4.1" } }))),
        (2101, d("run.succeeded", json!({ "runId": "run-1" }))),
        (3000, d("run.created", json!({ "runId": "run-2", "dag": "release", "inputs": {}, "plugins": {} }))),
        (3001, d("step.queued", json!({ "runId": "run-2", "step": "wait", "jobId": "job-2" }))),
        (3500, d("step.cancelled", json!({ "runId": "run-2", "step": "wait" }))),
        (3501, d("run.cancelled", json!({ "runId": "run-2" }))),
    ]
}

#[test]
fn otlp_files_match_their_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = stella::machine::open_store(&dir.path().join("s.redb")).unwrap();
    let txn = store.database().begin_write().unwrap();
    {
        let mut ledger = txn.open_table(LEDGER).unwrap();
        let mut prev = GENESIS_PREV.to_owned();
        for (i, (at, d)) in drafts().into_iter().enumerate() {
            let e = Entry::seal(d, i as u64 + 1, T0 + at, "token:tok_golden", &prev);
            prev.clone_from(&e.hash);
            ledger.insert(e.seq, e.to_stored().as_slice()).unwrap();
        }
        let text = "# HELP orchestrator_queue_depth Jobs waiting.\n# TYPE orchestrator_queue_depth gauge\norchestrator_queue_depth{type=\"deploy\"} 2\n# HELP orchestrator_runs Runs that ended.\n# TYPE orchestrator_runs counter\norchestrator_runs_total{status=\"succeeded\"} 1\n# HELP orchestrator_run_duration_seconds Run durations.\n# TYPE orchestrator_run_duration_seconds histogram\norchestrator_run_duration_seconds_sum 2.1\norchestrator_run_duration_seconds_count 1\norchestrator_run_duration_seconds_bucket{le=\"1.0\"} 0\norchestrator_run_duration_seconds_bucket{le=\"5.0\"} 1\norchestrator_run_duration_seconds_bucket{le=\"+Inf\"} 1\n# EOF\n";
        txn.open_table(METRIC_SNAPSHOTS).unwrap().insert((T0 + 2500) as u64, text.as_bytes()).unwrap();
    }
    txn.commit().unwrap();
    let logs = dir.path().join("log");
    std::fs::create_dir(&logs).unwrap();
    std::fs::write(
        logs.join("stella.2027-01-15.log"),
        format!(
            "{{\"timestamp\":\"{}\",\"level\":\"INFO\",\"fields\":{{\"message\":\"run.succeeded run-1\",\"runId\":\"run-1\",\"seq\":8}},\"target\":\"stella::telemetry::logs\"}}\nnot json\n{{\"timestamp\":\"{}\",\"level\":\"WARN\",\"fields\":{{\"message\":\"slow\",\"ok\":false}},\"target\":\"stella::api\"}}\n",
            stella::clock::rfc3339(T0 + 2101),
            stella::clock::rfc3339(T0 + 9999)
        ),
    )
    .unwrap();
    // TEST-ONLY KEY: a fixed seed so the signature, and so SHA256SUMS.sig, is reproducible.
    let key = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[11u8; 32]));
    let src = stella::export::Sources { store: &store, log_dir: &logs, key: &key, now_ms: T0 + 60_000 };
    let out = dir.path().join("pack");
    let req = stella::export::Request {
        from_ms: Some(T0),
        to_ms: Some(T0 + 5_000),
        out: out.clone(),
        signals: stella::export::Signal::ALL.to_vec(),
        tar: false,
    };
    stella::export::write(&src, &req, &Default::default()).unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/export");
    for file in ["logs.ndjson", "metrics.ndjson", "traces.ndjson", "manifest.json", "SHA256SUMS"] {
        let got = std::fs::read_to_string(out.join(file)).unwrap();
        if std::env::var_os("STELLA_BLESS").is_some() {
            std::fs::write(golden.join(file), &got).unwrap();
        }
        assert_eq!(got, std::fs::read_to_string(golden.join(file)).unwrap(), "{file} differs from its golden file");
    }
    // Every line parses as the request its file claims, with OTLP/JSON's encodings.
    for (file, key) in
        [("logs.ndjson", "resourceLogs"), ("metrics.ndjson", "resourceMetrics"), ("traces.ndjson", "resourceSpans")]
    {
        for line in std::fs::read_to_string(out.join(file)).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), vec![key], "{file}");
        }
    }
}
