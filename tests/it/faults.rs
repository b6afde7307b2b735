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

/// Free bytes on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the struct we pass for a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Bug: after ENOSPC the writer was dead until a restart while health said ready: with space
/// back, every write still answered 503 "Previous I/O error occurred. Please close and re-open
/// the database." The writer closes and reopens the database after a failed commit, answers
/// the failed callers with an error, reports not-ready with the reason while it cannot write,
/// and recovers by itself when space returns. On a small tmpfs (root only; CI runs as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_and_the_writer_recovers_when_space_returns() {
    let Some(app) = TestAppliance::start_on_tmpfs(48, |c| {
        c.exec.enabled = false;
        c.telemetry.log_files = false;
    }) else {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root and must run this test");
        eprintln!("not root: the full-disk test needs a tmpfs mount; skipped");
        return;
    };
    let c = app.socket_client();
    let health = |c: stella::client::Client| async move {
        let r = c.get("/admin/health").await.unwrap();
        (r.status.as_u16(), r.json().unwrap())
    };
    assert_eq!(health(c.clone()).await.0, 200);
    let filler = app.root().join("filler");
    let spare = 3 * 1024 * 1024;
    std::fs::write(&filler, vec![0u8; (free_bytes(app.root()) - spare) as usize]).unwrap();
    let payload = json!({ "blob": "x".repeat(200 * 1024) });
    let (mut acknowledged, mut refused) = (0, None);
    for _ in 0..200 {
        let r = c.post(&format!("{API}/jobs"), &json!({ "type": "build", "payload": payload })).await.unwrap();
        if r.status.is_success() {
            acknowledged += 1;
        } else {
            refused = Some((r.status.as_u16(), r.json().unwrap()));
            break;
        }
    }
    let (status, problem) = refused.expect("the disk filled up");
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "store_error", "{problem}");
    let (code, h) = health(c.clone()).await;
    assert_eq!((code, h["ready"].as_bool()), (503, Some(false)), "{h}");
    assert!(h["reason"].as_str().unwrap().contains("cannot write"), "{h}");

    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while health(c.clone()).await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "the writer did not recover: {}", app.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    api_post(&c, "/jobs", json!({ "type": "build", "payload": {} })).await;
    let q = api_get(&c, "/queue").await;
    assert_eq!(q["depth"].as_u64(), Some(acknowledged + 1), "every acknowledged enqueue is there: {q}");
    let verify = app.stella(&["orch", "db", "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}
