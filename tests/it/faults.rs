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
    // The store's file may still have room for a small commit, but the disk has none: the
    // writer stays stopped (not ready, saying why) until the disk has room again.
    let rest = app.root().join("filler-rest");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&rest).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
    }
    let (code, h) = health(c.clone()).await;
    assert_eq!((code, h["ready"].as_bool()), (503, Some(false)), "{h} after {problem}:\n{}", app.log());
    assert!(h["reason"].as_str().unwrap().contains("cannot write"), "{h}");

    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&rest).unwrap();
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

/// A stopped dev store with some history, and a pristine copy of its file.
async fn stopped_store() -> (TestAppliance, Vec<u8>) {
    let mut app = TestAppliance::start();
    let c = app.socket_client();
    for _ in 0..3 {
        run_sample(&c).await;
    }
    assert!(app.terminate().success());
    let clean = std::fs::read(app.store_path()).unwrap();
    (app, clean)
}

/// Bug: a zeroed 4 KiB page made offline `db verify` panic (exit 101, a backtrace) where
/// redb's btree code met it. Every page of a store zeroed in turn: the check either passes
/// (a free page), or names the damage (exit 8 for a ledger problem, exit 10 "is damaged" with
/// what to do) — never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zeroed_page_anywhere_is_reported_never_a_panic() {
    let (app, clean) = stopped_store().await;
    let pages = clean.len() / 4096;
    let mut damaged = 0;
    for page in 1..pages {
        let mut bytes = clean.clone();
        bytes[page * 4096..(page + 1) * 4096].fill(0);
        std::fs::write(app.store_path(), &bytes).unwrap();
        let out = app.stella(&["orch", "db", "verify", "--offline"]);
        let err = stderr(&out);
        assert!(!err.contains("panicked") && out.status.code() != Some(101), "page {page}: {err}");
        match out.status.code() {
            Some(0) => {}
            Some(8) => damaged += 1,
            Some(10) => {
                assert!(err.contains("is damaged") || err.contains("store"), "page {page}: {err}");
                damaged += 1;
            }
            other => panic!("page {page}: exit {other:?}: {err}"),
        }
    }
    assert!(damaged > 0, "some of the {pages} pages hold data");
}

/// Bug: a store whose ledger failed verification started, said ready and kept appending. Now
/// it is served read-only: health says it is damaged, writes are refused naming why, and reads
/// (`db verify`, the ledger) answer with a problem or data, never a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_ledger_fails_verification_takes_no_writes() {
    use redb::{Database, ReadableDatabase, ReadableTable};
    let (mut app, _) = stopped_store().await;
    {
        let db = Database::open(app.store_path()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut ledger = txn.open_table(stella::kernel::store::LEDGER).unwrap();
            let last = ledger.last().unwrap().unwrap().0.value();
            let mut bytes = ledger.get(last - 2).unwrap().unwrap().value().to_vec();
            let at = bytes.windows(6).position(|w| w == b"\"kind\"").unwrap() + 9;
            bytes[at] ^= 0x01;
            ledger.insert(last - 2, bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let height_before = {
        let db = Database::open(app.store_path()).unwrap();
        let t = db.begin_read().unwrap();
        t.open_table(stella::kernel::store::LEDGER).unwrap().last().unwrap().unwrap().0.value()
    };
    app.try_launch().unwrap_or_else(|log| panic!("a damaged store is served read-only, not refused:\n{log}"));
    let c = app.socket_client();
    let h = c.get("/admin/health").await.unwrap();
    assert_eq!(h.status, 503);
    let h = h.json().unwrap();
    assert!(h["reason"].as_str().unwrap().contains("damaged"), "{h}");
    let r = c.post(&format!("{API}/jobs"), &json!({ "type": "build", "payload": {} })).await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.json().unwrap()["detail"].as_str().unwrap().contains("takes no writes"));
    let verify = app.stella(&["orch", "db", "verify"]);
    assert_eq!(verify.status.code(), Some(8), "{}", stderr(&verify));
    let ledger = app.stella(&["orch", "ledger", "--limit", "5"]);
    assert!(ledger.status.success(), "{}", stderr(&ledger));
    app.terminate();
    let db = Database::open(app.store_path()).unwrap();
    let t = db.begin_read().unwrap();
    let height = t.open_table(stella::kernel::store::LEDGER).unwrap().last().unwrap().unwrap().0.value();
    assert_eq!(height, height_before, "nothing was appended to the damaged store");
}

/// Bug: a flipped byte at offset 4096 (redb's first page after its header) panicked at start
/// with a backtrace, and a zeroed page let the daemon start, say ready and append. A start
/// on a damaged file ends with a message naming it, or serves it read-only as damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_file_never_panics_the_daemon() {
    let (mut app, clean) = stopped_store().await;
    let pages = clean.len() / 4096;
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut flipped = clean.clone();
    flipped[4096] ^= 0xff;
    cases.push(("a flipped byte at 4096".into(), flipped));
    for page in [1, 2, pages / 2, pages - 1] {
        let mut zeroed = clean.clone();
        zeroed[page * 4096..(page + 1) * 4096].fill(0);
        cases.push((format!("page {page} zeroed"), zeroed));
    }
    for (what, bytes) in cases {
        std::fs::write(app.store_path(), &bytes).unwrap();
        match app.try_launch() {
            Err(log) => {
                assert!(!log.contains("panicked"), "{what}: {log}");
                assert!(log.contains("stella.redb"), "{what}: the message names the file: {log}");
            }
            Ok(()) => {
                let c = app.socket_client();
                let h = c.get("/admin/health").await.unwrap();
                let verify = app.stella(&["orch", "db", "verify"]);
                assert!(
                    !stderr(&verify).contains("task panicked") && verify.status.code() != Some(101),
                    "{what}: {}",
                    stderr(&verify)
                );
                if !verify.status.success() {
                    assert_eq!(
                        h.status,
                        503,
                        "{what}: a store that fails verification is not ready: {}{}",
                        stdout(&verify),
                        stderr(&verify)
                    );
                }
                let ledger = app.stella(&["orch", "ledger", "--limit", "1000"]);
                assert!(!stderr(&ledger).contains("connection"), "{what}: {}", stderr(&ledger));
                app.kill9();
            }
        }
    }
}

/// Bug: `stella --server https://… --token T bundle import /etc/shadow` made the daemon open a
/// file of its own host chosen by the client and answer with its first ~100 bytes in the
/// error, ledgered in `bundle.rejected` (so they reached export packs). The CLI now uploads the
/// bundle's bytes; a path is read only inside the inbox; no error or entry quotes file content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_import_opens_no_host_path_and_quotes_no_content() {
    let app = TestAppliance::start_production();
    let c = app.socket_client();
    let secret = "root:$6$SECRET-HASH-4f1e9a:19700:0:99999:7:::";
    let outside = app.root().join("shadow");
    std::fs::write(&outside, format!("{secret}\ndaemon:*:19700:0:99999:7:::\n")).unwrap();
    let inbox = app.layout().inbox();
    std::fs::create_dir_all(&inbox).unwrap();
    std::os::unix::fs::symlink(&outside, inbox.join("link.bundle")).unwrap();
    for path in [outside.to_str().unwrap(), "/etc/passwd", "../../../../etc/passwd", "link.bundle"] {
        let r = c.post(&format!("{API}/bundles"), &json!({ "path": path })).await.unwrap();
        assert_eq!(r.status, 403, "{path}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json().unwrap()["code"], "outside_inbox");
    }
    // Uploaded (what the CLI does now), the same bytes are refused without being quoted.
    let out = app.stella(&["bundle", "import", outside.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(!err.contains("SECRET") && !err.contains("root:"), "{err}");
    let ledger = app.stella(&["--format", "json", "orch", "ledger", "--limit", "1000"]);
    let text = stdout(&ledger);
    assert!(text.contains("bundle.rejected"), "the refusal is ledgered: {text}");
    assert!(!text.contains("SECRET") && !text.contains("root:$6"), "{text}");
    // Inside the inbox a path still works, for a local administrator who copied a bundle there.
    let r = c.post(&format!("{API}/bundles"), &json!({ "path": "missing.bundle" })).await.unwrap();
    assert_eq!(r.status, 403);
}

/// A plugin that starts three long sleepers — one in its own group, one `setsid` (a session
/// of its own), one `setsid` with a cleared environment — writes their pids to `dir`, and then
/// finishes (or, with `hold`, keeps running).
const FORKER: &str = r#"
DIR="$STELLA_INPUT_DIR"
sh -c 'echo $$ > "$0/group.pid"; exec sleep 300' "$DIR" &
setsid sh -c 'echo $$ > "$0/setsid.pid"; exec sleep 300' "$DIR" </dev/null >/dev/null 2>&1 &
env -i /usr/bin/setsid /bin/sh -c 'echo $$ > "$0/cleared.pid"; exec sleep 300' "$DIR" </dev/null >/dev/null 2>&1 &
n=0
while [ ! -s "$DIR/group.pid" ] || [ ! -s "$DIR/setsid.pid" ] || [ ! -s "$DIR/cleared.pid" ]; do
  n=$((n+1)); [ $n -gt 500 ] && exit 3; sleep 0.01
done
[ "$STELLA_INPUT_HOLD" = "true" ] && exec sleep 300
echo '{"event":"result","outputs":{}}'
"#;

fn pids(dir: &std::path::Path) -> Vec<(String, i32)> {
    ["group", "setsid", "cleared"]
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(format!("{n}.pid"))).unwrap();
            ((*n).to_owned(), text.trim().parse().unwrap())
        })
        .collect()
}

/// Waits (bounded) until the plugin's three children have written their pids.
async fn wait_for_pids(dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let written = |n: &str| std::fs::read_to_string(dir.join(format!("{n}.pid"))).is_ok_and(|t| t.ends_with('\n'));
    while !["group", "setsid", "cleared"].iter().all(|n| written(n)) {
        assert!(std::time::Instant::now() < deadline, "the plugin never started its children");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Alive and not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').is_some_and(|i| !s[i + 1..].trim_start().starts_with('Z')))
}

/// Bug: processes a plugin started outlived its step, a clean stop and a restart: a `setsid`
/// child and a child in the plugin's own group were both alive after the run succeeded, after
/// SIGTERM and after a restart. When an attempt ends (or the daemon stops, or starts again
/// after a crash), everything the attempt started ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_a_plugin_starts_end_with_its_attempt_a_stop_and_a_restart() {
    let mut app = TestAppliance::start();
    let c = app.socket_client();
    script_plugin(&app, &c, "forker", FORKER).await;
    let spec = |name: &str, dir: &std::path::Path, hold: bool| {
        format!("name = \"{name}\"\n[steps.fork]\nplugin = \"forker\"\ninputs = {{ dir = {dir:?}, hold = {hold} }}\n")
    };

    // The attempt ends: all three are gone by the time the run has succeeded.
    let done = app.root().join("done");
    std::fs::create_dir_all(&done).unwrap();
    api_post(&c, "/dags", json!({ "spec": spec("ends", &done, false) })).await;
    let id = api_post(&c, "/runs", json!({ "dag": "ends" })).await["id"].as_str().unwrap().to_owned();
    wait_for_event(&c, &id, "event: run.succeeded").await;
    for (what, pid) in pids(&done) {
        assert!(!running(pid), "the {what} child {pid} outlived its attempt");
    }

    // A clean stop while the attempt runs.
    let stop = app.root().join("stop");
    std::fs::create_dir_all(&stop).unwrap();
    api_post(&c, "/dags", json!({ "spec": spec("stop", &stop, true) })).await;
    let id = api_post(&c, "/runs", json!({ "dag": "stop" })).await["id"].as_str().unwrap().to_owned();
    wait_for_event(&c, &id, "event: step.started").await;
    wait_for_pids(&stop).await;
    assert!(app.terminate().success());
    for (what, pid) in pids(&stop) {
        assert!(!running(pid), "the {what} child {pid} outlived the daemon's stop");
    }

    // kill -9 of the daemon while the attempt runs, then a restart.
    app.launch();
    let c = app.socket_client();
    let crash = app.root().join("crash");
    std::fs::create_dir_all(&crash).unwrap();
    api_post(&c, "/dags", json!({ "spec": spec("crash", &crash, true) })).await;
    let id = api_post(&c, "/runs", json!({ "dag": "crash" })).await["id"].as_str().unwrap().to_owned();
    wait_for_event(&c, &id, "event: step.started").await;
    wait_for_pids(&crash).await;
    let before = pids(&crash);
    app.kill9();
    app.launch();
    for (what, pid) in before.iter().filter(|(w, _)| w != "cleared") {
        assert!(!running(*pid), "the {what} child {pid} outlived the crash and the restart");
    }
    // The one that cleared its environment was re-parented to init when the daemon died:
    // nothing names it as this appliance's any more (a documented limit); end it here.
    if let Some((_, pid)) = before.iter().find(|(w, _)| w == "cleared") {
        // SAFETY: kill on the test's own sleeper.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
}

/// Bug: a forced release racing a normal release evicted the next holder (9 of 40 races): the
/// holder released, its waiter got the lock, and the force (meant for the old holder) took it
/// from the waiter. A forced release names the fencing token it breaks and does nothing once
/// the lock has moved on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_release_of_a_lock_that_moved_on_does_nothing() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let c = app.socket_client();
    let a = api_post(&c, "/locks", json!({ "resource": "env:prod", "owner": "deploy-7" })).await;
    api_post(&c, "/locks", json!({ "resource": "env:prod", "owner": "deploy-8" })).await;
    let (lock, seen) = (a["lockId"].as_str().unwrap().to_owned(), a["token"].as_u64().unwrap());
    // The operator looked (token `seen`); then the holder released and deploy-8 got it.
    api_post(&c, &format!("/locks/{lock}/release"), json!({ "owner": "deploy-7", "token": seen })).await;
    let r = c
        .post(&format!("{API}/locks/{lock}/release"), &json!({ "force": true, "reason": "stale", "token": seen }))
        .await
        .unwrap();
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json().unwrap()["detail"].as_str().unwrap().contains("held by deploy-8"));
    let env = c
        .post(
            &format!("{API}/locks/release"),
            &json!({ "env": "prod", "force": true, "reason": "stale", "tokens": { lock.clone(): seen } }),
        )
        .await
        .unwrap();
    assert_eq!(env.status, 409);
    let listed = api_get(&c, "/locks").await;
    assert_eq!(listed["locks"][0]["holder"], "deploy-8", "the next holder keeps it: {listed}");
    // Without a token the API refuses; the CLI reads the current one and breaks exactly that.
    let r = c.post(&format!("{API}/locks/{lock}/release"), &json!({ "force": true, "reason": "x" })).await.unwrap();
    assert_eq!(
        (r.status.as_u16(), r.json().unwrap()["field"].as_str().map(str::to_owned)),
        (422, Some("token".into()))
    );
    let out = app.stella(&["orch", "locks", "release", &lock, "--force", "--reason", "deploy-8 crashed"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(api_get(&c, "/locks").await["locks"].as_array().unwrap().is_empty());
}

/// Bug: a reused version with other content was refused (409) but not ledgered, and its
/// sealed copy stayed under `bundles/sha256/` with its `meta/` entry, unnoticed by `bundle
/// verify --installed`. The refusal is ledgered and leaves the disk as it was; the start-up
/// sweep removes sealed copies no record names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_version_is_ledgered_and_leaves_no_sealed_copy() {
    let mut app = TestAppliance::start_production();
    let root = app.root().to_path_buf();
    let key = root.join("ops_ed25519");
    assert!(app.stella(&["keys", "generate", "--out", key.to_str().unwrap()]).status.success());
    let pubkey = format!("{}.pub", key.display());
    let ns = "stella-bundle@stella.invalid";
    assert!(app.stella(&["keys", "trust", "add", &pubkey, "--principal", "ops", "--namespaces", ns]).status.success());
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/sample-plugin");
    let changed = root.join("changed-plugin");
    std::fs::create_dir_all(&changed).unwrap();
    for e in std::fs::read_dir(&sample).unwrap().flatten() {
        std::fs::copy(e.path(), changed.join(e.file_name())).unwrap();
    }
    std::fs::write(changed.join("EXTRA"), "other content\n").unwrap();
    let build = |dir: &std::path::Path, name: &str| {
        let out = root.join(name);
        let (dir, key) = (dir.to_str().unwrap(), key.to_str().unwrap());
        let o = build_bundle(&root, dir, "plugin", "sample-plugin", "1.0.0", key, out.to_str().unwrap());
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    let first = build(&sample, "first.bundle");
    let second = build(&changed, "second.bundle");
    let o = app.stella(&["bundle", "import", first.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lib = app.layout().lib();
    let listing = |d: &str| {
        let mut v: Vec<String> = std::fs::read_dir(lib.join(d))
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    let (sealed, meta) = (listing("bundles/sha256"), listing("bundles/meta"));
    let out = app.stella(&["bundle", "import", second.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("versions are never reused"), "{}", stderr(&out));
    assert_eq!((listing("bundles/sha256"), listing("bundles/meta")), (sealed.clone(), meta.clone()), "disk as before");
    let ledger = app.stella(&["--format", "json", "orch", "ledger", "--limit", "1000"]);
    let entries: serde_json::Value = serde_json::from_slice(&ledger.stdout).unwrap();
    let rejected: Vec<&serde_json::Value> =
        entries["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "bundle.rejected").collect();
    assert_eq!(rejected.len(), 1, "{entries}");
    assert!(rejected[0]["data"]["reason"].as_str().unwrap().contains("never reused"));

    // A sealed copy and meta entry no record names (left by an older stella) go at start.
    let orphan = "0".repeat(64);
    std::fs::create_dir_all(lib.join("bundles/sha256").join(&orphan)).unwrap();
    std::fs::create_dir_all(lib.join("bundles/meta").join(&orphan)).unwrap();
    app.terminate();
    app.launch();
    assert_eq!((listing("bundles/sha256"), listing("bundles/meta")), (sealed, meta));
    assert!(app.log().contains("removed sealed bundles no record names"), "{}", app.log());
    let verify = app.stella(&["bundle", "verify", "--installed"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

async fn script_plugin(app: &TestAppliance, c: &stella::client::Client, name: &str, script: &str) {
    script_plugin_with(app, c, name, "", script).await
}

async fn run_to_end(c: &stella::client::Client, dag: &str, spec: &str) -> serde_json::Value {
    api_post(c, "/dags", json!({ "spec": spec })).await;
    let id = api_post(c, "/runs", json!({ "dag": dag })).await["id"].as_str().unwrap().to_owned();
    wait_end(c, &id).await
}

/// Bugs: attempt working directories were 0755 and never removed, so a file a plugin wrote
/// there (a secret) stayed readable; and secret values were stored in plaintext in
/// `stella.redb`, so a copied store or backup leaked them. Work directories are 0700 and go
/// with a succeeded attempt (a failed one stays, bounded); secret values are sealed under a
/// key kept apart from the store (`keys/secrets.key`, 0600) — the store file is grepped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_directories_are_private_and_removed_and_secrets_are_sealed_at_rest() {
    use std::os::unix::fs::PermissionsExt;
    let mut app = TestAppliance::start();
    let c = app.socket_client();
    let secret = "s3cr3t-value-7d2c91e4b0";
    let mut set = std::process::Command::new(STELLA)
        .arg("--state-dir")
        .arg(app.root())
        .args(["secrets", "set", "deploy-key"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        set.stdin.take().unwrap().write_all(secret.as_bytes()).unwrap();
    }
    assert!(set.wait().unwrap().success());
    // The plugin reports its working directory's mode, writes the secret there, and succeeds
    // (`ok`) or fails.
    script_plugin(
        &app,
        &c,
        "writer",
        r#"req=$(cat); stat -c %a "$STELLA_WORKDIR" > "$STELLA_INPUT_OUT/mode"; echo "$req" > "$STELLA_WORKDIR/request.json"
echo "$STELLA_WORKDIR" > "$STELLA_INPUT_OUT/workdir"
[ "$STELLA_INPUT_OK" = "true" ] || exit 4
echo '{"event":"result","outputs":{}}'"#,
    )
    .await;
    for ok in [true, false] {
        let out = app.root().join(format!("out-{ok}"));
        std::fs::create_dir_all(&out).unwrap();
        let spec = format!(
            "name = \"w{ok}\"\n[steps.w]\nplugin = \"writer\"\nsecrets = [\"deploy-key\"]\ninputs = {{ out = {out:?}, ok = {ok} }}\n"
        );
        let run = run_to_end(&c, &format!("w{ok}"), &spec).await;
        assert_eq!(run["status"], if ok { "succeeded" } else { "failed" }, "{run}");
        assert_eq!(std::fs::read_to_string(out.join("mode")).unwrap().trim(), "700");
        let workdir = std::path::PathBuf::from(std::fs::read_to_string(out.join("workdir")).unwrap().trim());
        if ok {
            assert!(!workdir.exists(), "a succeeded attempt's directory is gone: {}", workdir.display());
        } else {
            assert!(workdir.join("request.json").exists(), "a failed attempt's directory stays for diagnosis");
            assert_eq!(std::fs::metadata(&workdir).unwrap().permissions().mode() & 0o777, 0o700);
        }
    }
    let key = app.layout().lib().join("keys/secrets.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    app.terminate();
    let store = std::fs::read(app.store_path()).unwrap();
    assert!(
        !store.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the store file holds the secret in the clear"
    );
    // And it still reaches the plugin after a restart (opened with the key beside the store).
    app.launch();
    let c = app.socket_client();
    let out = app.root().join("out-again");
    std::fs::create_dir_all(&out).unwrap();
    script_plugin(
        &app,
        &c,
        "reader",
        r#"cat > "$STELLA_INPUT_OUT/request.json"; echo '{"event":"result","outputs":{}}'"#,
    )
    .await;
    let spec = format!(
        "name = \"again\"\n[steps.r]\nplugin = \"reader\"\nsecrets = [\"deploy-key\"]\ninputs = {{ out = {out:?} }}\n"
    );
    assert_eq!(run_to_end(&c, "again", &spec).await["status"], "succeeded");
    assert!(std::fs::read_to_string(out.join("request.json")).unwrap().contains(secret));
}

/// Bug: one attempt could write 16 MiB of log events into the daemon's log and into every
/// export. What one attempt logs is bounded (1 MiB, then one truncation marker counting what
/// was dropped); its whole output stays in its output file. And a 300 KiB event line fails
/// with `protocol`, as docs/dag-spec.md says (it said `output_limit`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_logs_at_most_a_mebibyte_and_a_long_line_is_a_protocol_error() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    script_plugin(
        &app,
        &c,
        "chatty",
        r#"cat > /dev/null; i=0; line=$(head -c 2000 /dev/zero | tr '\0' 'x')
while [ $i -lt 3000 ]; do echo "{\"event\":\"log\",\"message\":\"$i $line\"}"; i=$((i+1)); done
echo '{"event":"result","outputs":{}}'"#,
    )
    .await;
    let run = run_to_end(&c, "chatty", "name = \"chatty\"\n[steps.talk]\nplugin = \"chatty\"\n").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let logs = std::fs::read_dir(app.layout().log())
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    let logged: usize = logs.lines().filter(|l| l.contains("\"plugin log\"")).map(|l| l.len()).sum();
    assert!(logged > 500_000 && logged < 1_300_000, "the daemon log got {logged} bytes of plugin log");
    assert!(logs.contains("plugin log truncated"), "a truncation marker says so");
    let job = run["steps"][0]["jobId"].as_str().unwrap();
    let kept = std::fs::read_to_string(app.layout().lib().join(format!("attempt-logs/{job}-1.ndjson"))).unwrap();
    assert_eq!(kept.lines().filter(|l| l.contains("\"log\"")).count(), 3000, "the output file has every line");

    script_plugin(&app, &c, "longline", r#"cat > /dev/null; head -c 307200 /dev/zero | tr '\0' 'y'; echo"#).await;
    let run = run_to_end(&c, "longline", "name = \"longline\"\n[steps.one]\nplugin = \"longline\"\n").await;
    assert_eq!(run["steps"][0]["errorCode"], "protocol", "{run}");
}

/// Bugs: tenant boundaries leaked metadata — queue status and `/metrics` listed other
/// tenants' job types and counts, a lock refusal said "locked by another tenant", and an
/// audit-scope token could make the daemon write an export to any path. A tenant's token sees
/// its own queue figures and budgets only, metrics without type names, a refusal naming
/// nobody, and exports go under the export directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_nothing_of_another_and_writes_exports_only_to_the_export_dir() {
    let app = TestAppliance::start_with(|c| {
        c.exec.enabled = false;
        c.tenants.allowed = vec!["default".into(), "acme".into()];
    });
    let admin = app.socket_client();
    api_post(&admin, "/jobs", json!({ "type": "payroll-export", "payload": {} })).await;
    api_post(&admin, "/locks", json!({ "resource": "env:prod", "owner": "deploy-7" })).await;
    let (_, secret) = create_token(&admin, "acme", &["orchestrator:operate", "orchestrator:audit"], None).await;
    let acme = app.https_client(Some(&secret));
    api_post(&acme, "/jobs", json!({ "type": "acme-build", "payload": {} })).await;

    let q = api_get(&acme, "/queue").await;
    let types: Vec<&str> = q["types"].as_array().unwrap().iter().map(|t| t["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["acme-build"], "{q}");
    assert_eq!(q["depth"], 1);
    let metrics = String::from_utf8(acme.get("/metrics").await.unwrap().ok().unwrap().body.to_vec()).unwrap();
    assert!(!metrics.contains("payroll-export") && !metrics.contains("acme-build"), "{metrics}");
    assert!(metrics.contains("orchestrator_queue_depth 2"), "summed over types: {metrics}");
    let full = String::from_utf8(admin.get("/metrics").await.unwrap().ok().unwrap().body.to_vec()).unwrap();
    assert!(full.contains("payroll-export"), "the local administrator sees every type");

    // An environment's lock belongs to the site: a tenant's token on this shared appliance may
    // not take it (nor learn who holds it).
    let r = acme.post(&format!("{API}/locks"), &json!({ "resource": "env:prod", "owner": "acme-1" })).await.unwrap();
    assert_eq!(r.status, 403);
    let detail = r.json().unwrap()["detail"].as_str().unwrap().to_owned();
    assert!(!detail.contains("deploy-7"), "{detail}");
    let r = acme.post(&format!("{API}/locks"), &json!({ "resource": "acme:db", "owner": "acme-1" })).await.unwrap();
    assert_eq!(r.status, 200, "its own resources it may lock");

    // A pack holds every tenant's ledger: on this appliance no tenant's token exports.
    let r = acme.post(&format!("{API}/exports"), &json!({ "out": "acme-pack" })).await.unwrap();
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
}

/// On a single-tenant appliance a token exports, but only into the export directory, one name
/// directly in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_writes_exports_only_into_the_export_directory() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let (_, secret) = create_token(&app.socket_client(), "default", &["orchestrator:audit"], None).await;
    let auditor = app.https_client(Some(&secret));
    let outside = app.root().join("anywhere-pack");
    let r = auditor.post(&format!("{API}/exports"), &json!({ "out": outside })).await.unwrap();
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(!outside.exists());
    for bad in ["../escape", "a/../../b", "a/b", ""] {
        let r = auditor.post(&format!("{API}/exports"), &json!({ "out": bad })).await.unwrap();
        assert_eq!(r.status, 403, "{bad:?}");
    }
    let r = auditor.post(&format!("{API}/exports"), &json!({ "out": "pack-1" })).await.unwrap();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert!(app.layout().lib().join("exports/pack-1/manifest.json").exists());
}

/// Bug: 1,024 idle TCP connections held every connection slot, so a health request waited
/// until the idle ones timed out (~10 s). When a listener's slots run low its idle connections
/// (and those still in their TLS handshake) close; the Unix socket has slots of its own. The
/// header and handshake timeouts are a minute here, so only that makes room in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_make_room_and_the_socket_has_slots_of_its_own() {
    let app = TestAppliance::start_with(|c| {
        c.exec.enabled = false;
        c.server.max_connections = 32;
        c.server.header_read_timeout_ms = 60_000;
        c.server.tls_handshake_timeout_ms = 60_000;
    });
    let bounded = std::time::Duration::from_secs(20);
    let health = |c: stella::client::Client| async move { c.get("/admin/health").await.map(|r| r.status.as_u16()) };
    let mut idle_tcp = Vec::new();
    for _ in 0..64 {
        idle_tcp.push(std::net::TcpStream::connect(app.tcp_addr()).unwrap());
    }
    let r = tokio::time::timeout(bounded, health(app.https_client(None))).await;
    assert_eq!(r.ok().and_then(Result::ok), Some(200), "a health request over HTTPS got a slot");
    let mut idle_unix = Vec::new();
    for _ in 0..64 {
        idle_unix.push(std::os::unix::net::UnixStream::connect(app.layout().default_socket()).unwrap());
    }
    let r = tokio::time::timeout(bounded, health(app.socket_client())).await;
    assert_eq!(r.ok().and_then(Result::ok), Some(200), "a health request over the socket got a slot");
    let r = tokio::time::timeout(bounded, health(app.https_client(None))).await;
    assert_eq!(r.ok().and_then(Result::ok), Some(200), "the socket's flood takes no TCP slot");
    drop((idle_tcp, idle_unix));
}

/// Bug: a backward step of the wall clock stalled every TTL for the size of the jump: entry
/// times are clamped to the last entry's, so after a restart one day behind, a 5 s lease and a
/// 5 s lock were still held 12 s later. Deadlines now advance with elapsed (monotonic) time,
/// and entry times stay non-decreasing. The daemon is restarted under `faketime` one day back
/// (the wall clock only; CI installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_a_day_behind_stalls_no_deadline() {
    if std::process::Command::new("faketime").arg("--version").output().is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must have faketime (.ci/run installs it)");
        eprintln!("faketime not installed: the clock-step test is skipped");
        return;
    }
    let mut app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let before = ledger_height(&app.socket_client()).await;
    app.terminate();
    app.launch_under(&["faketime", "-f", "-1d"], &[("FAKETIME_DONT_FAKE_MONOTONIC", "1")], &[]);
    let c = app.socket_client();
    let now_there: serde_json::Value = api_get(&c, "/status").await;
    assert!(now_there["startedAt"].as_str().is_some());

    api_post(&c, "/locks", json!({ "resource": "env:prod", "owner": "deploy-7", "ttl": "1s" })).await;
    api_post(&c, "/jobs", json!({ "type": "build", "payload": {} })).await;
    let first = api_post(&c, "/leases", json!({ "worker": "a", "types": ["build"], "ttl": "1s" })).await;
    assert_eq!(first["leases"].as_array().unwrap().len(), 1);
    // The lease lapses after a second of elapsed time and another worker, waiting, gets it.
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        api_post(&c, "/leases", json!({ "worker": "b", "types": ["build"], "wait": "15s" })),
    )
    .await
    .expect("the lease lapsed in time");
    assert_eq!(second["leases"].as_array().unwrap().len(), 1, "{second}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !api_get(&c, "/locks").await["locks"].as_array().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the 1 s lock was still held after 20 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let entries = api_get(&c, &format!("/ledger?after={}&limit=1000", before.saturating_sub(1))).await;
    let times: Vec<i64> = entries["entries"].as_array().unwrap().iter().map(|e| e["time"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "entry times never decrease: {times:?}");
}

/// Found by the probe: `docs/bundle-format.md` said the manifest is RFC 8785 canonical JSON,
/// but any JSON passed. Now a manifest in another byte form (here, one space added and
/// re-signed by hand with `ssh-keygen`) is refused naming the rule.
#[test]
fn a_manifest_not_in_canonical_form_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let stella =
        |args: &[&str]| std::process::Command::new(STELLA).arg("--state-dir").arg(root).args(args).output().unwrap();
    let key = root.join("ops_ed25519");
    assert!(stella(&["keys", "generate", "--out", key.to_str().unwrap()]).status.success());
    let ns = "stella-bundle@stella.invalid";
    let pubkey = format!("{}.pub", key.display());
    assert!(stella(&["keys", "trust", "add", &pubkey, "--principal", "ops", "--namespaces", ns]).status.success());
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/sample-plugin");
    let bundle = root.join("b.bundle");
    let (sample, key_path) = (sample.to_str().unwrap(), key.to_str().unwrap());
    let built = build_bundle(root, sample, "plugin", "sample-plugin", "1.0.0", key_path, bundle.to_str().unwrap());
    assert!(built.status.success(), "{}", stderr(&built));
    let script = format!(
        "set -e; mkdir x && cd x && tar -xf ../b.bundle && \
         sed -i 's/^{{/{{ /' manifest.json && \
         sha256sum manifest.json payload.tar.zst > SHA256SUMS && rm SHA256SUMS.sig && \
         ssh-keygen -q -Y sign -f {} -n {ns} SHA256SUMS && \
         tar -cf ../pretty.bundle manifest.json payload.tar.zst SHA256SUMS SHA256SUMS.sig",
        key.display()
    );
    let out = std::process::Command::new("sh").arg("-c").arg(&script).current_dir(root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let original = stella(&["bundle", "verify", bundle.to_str().unwrap()]);
    assert!(original.status.success(), "{}", stderr(&original));
    let pretty = stella(&["bundle", "verify", root.join("pretty.bundle").to_str().unwrap()]);
    assert!(!pretty.status.success());
    assert!(stderr(&pretty).contains("not in RFC 8785 canonical JSON"), "{}", stderr(&pretty));
}
