//! Runs through the API and CLI of a running daemon, as the runbooks describe them (002 and
//! 004 §1, §6, §7): why a step waits, manual recovery, cancel, idempotent start, a kill -9
//! mid-run, and a 1,000-wide fan-out whose event stream is resumed with Last-Event-ID.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use stella::client::Client;

async fn register(c: &Client, spec: &str) {
    api_post(c, "/dags", json!({ "spec": spec })).await;
}

/// Reads the run's events until it ends; returns them. On `lagged` it resumes from the
/// sequence the daemon names, as a client should.
async fn until_done(c: &Client, run: &str, after: Option<u64>) -> Vec<Value> {
    let mut events: Vec<Value> = Vec::new();
    let mut from = after;
    loop {
        let mut pending = String::new();
        let mut resume = None;
        let mut done = false;
        c.stream(&format!("{API}/runs/stream?run={run}"), from, |chunk| {
            pending.push_str(&String::from_utf8_lossy(chunk));
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                let data: String = block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
                let Ok(e) = serde_json::from_str::<Value>(&data) else { continue };
                if block.contains("event: lagged") {
                    resume = e["resumeFrom"].as_u64();
                    return false;
                }
                done = ["run.succeeded", "run.failed", "run.cancelled"].contains(&e["kind"].as_str().unwrap_or(""));
                events.push(e);
                if done {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap();
        match (done, resume) {
            (true, _) => return events,
            (false, Some(r)) => from = Some(r),
            (false, None) => panic!("the stream ended early"),
        }
    }
}

fn step<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_run_shows_why_each_step_waits_and_completes_when_released() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    register(&c, "name = \"held\"\nmaxParallelSteps = 1\n[steps.a]\nplugin = \"sleep\"\ninputs = { ms = 1 }\n[steps.b]\nplugin = \"sleep\"\ninputs = { ms = 1 }\n[steps.c]\nplugin = \"noop\"\nneeds = [\"a\", \"b\"]\n").await;
    assert!(app.stella(&["orch", "queue", "pause", "sleep"]).status.success());
    let run = api_post(&c, "/runs", json!({ "dag": "held" })).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let status = app.stella(&["--format", "json", "orch", "run", "status", &id]);
    let v: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(step(&v, "a")["waitReason"], "job type sleep is paused");
    assert_eq!(step(&v, "b")["waitReason"], "maxParallelSteps=1 reached");
    assert_eq!(step(&v, "c")["waitReason"], "needs a, b");
    let trace = stdout(&app.stella(&["orch", "run", "trace", &id, "--verbose"]));
    assert!(trace.contains("job type sleep is paused") && trace.contains("WORKER"), "{trace}");
    let watcher = {
        let c = app.socket_client();
        let id = id.clone();
        tokio::spawn(async move { until_done(&c, &id, Some(0)).await })
    };
    assert!(app.stella(&["orch", "queue", "resume", "sleep"]).status.success());
    let events = watcher.await.unwrap();
    assert_eq!(events.last().unwrap()["kind"], "run.succeeded");
    let v = api_get(&c, &format!("/runs/{id}")).await;
    assert!(v["steps"].as_array().unwrap().iter().all(|s| s["state"] == "succeeded" && s["waitReason"].is_null()));
}

/// The test plays a remote agent (the in-process executor is off): a failed step fails the
/// run; retry on it completes the run; retry on a succeeded run is 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_a_failed_step_completes_the_run_and_retry_on_a_succeeded_run_is_409() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let c = app.socket_client();
    register(
        &c,
        "name = \"two\"\n[steps.build]\nplugin = \"noop\"\n[steps.ship]\nplugin = \"noop\"\nneeds = [\"build\"]\n",
    )
    .await;
    let id = api_post(&c, "/runs", json!({ "dag": "two" })).await["id"].as_str().unwrap().to_owned();
    let lease = |c: Client| async move {
        api_post(&c, "/leases", json!({ "worker": "agent-1", "types": ["noop"], "wait": "10s" })).await["leases"][0]
            .clone()
    };
    let l = lease(c.clone()).await;
    api_post(
        &c,
        &format!("/leases/{}/fail", l["jobId"].as_str().unwrap()),
        json!({ "token": l["token"], "error": "disk full", "errorCode": "io" }),
    )
    .await;
    let failed = api_get(&c, &format!("/runs/{id}")).await;
    assert_eq!((failed["status"].as_str(), step(&failed, "build")["errorCode"].as_str()), (Some("failed"), Some("io")));
    assert_eq!(step(&failed, "ship")["waitReason"], "blocked by failed step build");

    let retried = app.stella(&["orch", "run", "retry", &id]);
    assert!(retried.status.success(), "{}", stderr(&retried));
    let again = app.stella(&["orch", "run", "retry", &id]);
    assert_eq!(again.status.code(), Some(7), "a retry in flight makes another one a conflict");
    for _ in 0..2 {
        let l = lease(c.clone()).await;
        api_post(&c, &format!("/leases/{}/complete", l["jobId"].as_str().unwrap()), json!({ "token": l["token"] }))
            .await;
    }
    let done = api_get(&c, &format!("/runs/{id}")).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(step(&done, "build")["attempts"], 2);
    let late = c.post(&format!("{API}/runs/{id}/actions/retry"), &json!({})).await.unwrap();
    assert_eq!(late.status, 409);
    assert_eq!(late.json().unwrap()["code"], "run_not_failed");
    let ledger = api_get(&c, "/ledger?limit=1000").await;
    let resumed = ledger["entries"].as_array().unwrap().iter().find(|e| e["kind"] == "run.resumed").unwrap();
    assert_eq!(resumed["actor"], format!("local:uid={}", unsafe { libc::geteuid() }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_running_step_ends_the_run_cancelled_and_a_timeout_is_a_clear_failure() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    register(&c, "name = \"slow\"\n[steps.wait]\nplugin = \"sleep\"\ninputs = { ms = 600000 }\n").await;
    let id = api_post(&c, "/runs", json!({ "dag": "slow" })).await["id"].as_str().unwrap().to_owned();
    let mut events = Vec::new();
    let mut pending = String::new();
    c.stream(&format!("{API}/runs/stream?run={id}"), Some(0), |chunk| {
        pending.push_str(&String::from_utf8_lossy(chunk));
        let started = pending.contains("event: step.started");
        events.push(pending.clone());
        !started
    })
    .await
    .unwrap();
    let cancel = app.stella(&["orch", "run", "cancel", &id]);
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    let v = api_get(&c, &format!("/runs/{id}")).await;
    assert_eq!((v["status"].as_str(), step(&v, "wait")["state"].as_str()), (Some("cancelled"), Some("cancelled")));
    assert!(app.stella(&["orch", "run", "cancel", &id]).status.success(), "cancel is idempotent");
    let job = api_get(&c, &format!("/jobs/{}", step(&v, "wait")["jobId"].as_str().unwrap())).await;
    assert_eq!(job["state"], "cancelled");

    register(&c, "name = \"late\"\n[steps.wait]\nplugin = \"sleep\"\ntimeout = \"100ms\"\ninputs = { ms = 60000 }\n")
        .await;
    let id = api_post(&c, "/runs", json!({ "dag": "late" })).await["id"].as_str().unwrap().to_owned();
    let events = until_done(&c, &id, Some(0)).await;
    assert_eq!(events.last().unwrap()["kind"], "run.failed");
    let v = api_get(&c, &format!("/runs/{id}")).await;
    assert_eq!(step(&v, "wait")["errorCode"], "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_starts_with_one_token_create_one_run() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let c = app.socket_client();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(&format!("{API}/runs"), &json!({ "dag": "sample-pipeline", "runToken": "release-1.4.1" }))
                .await
                .unwrap();
            (r.status.as_u16(), r.json().unwrap()["id"].as_str().unwrap().to_owned())
        }));
    }
    let mut ids = BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let (status, id) = t.await.unwrap();
        created += usize::from(status == 201);
        assert!(status == 201 || status == 200);
        ids.insert(id);
    }
    assert_eq!((ids.len(), created), (1, 1));
    assert_eq!(api_get(&c, "/runs").await["runs"].as_array().unwrap().len(), 1);
    let other = c
        .post(
            &format!("{API}/runs"),
            &json!({ "dag": "sample-pipeline", "runToken": "release-1.4.1", "inputs": { "target": "prod" } }),
        )
        .await
        .unwrap();
    assert_eq!(other.status, 409);
    assert_eq!(other.json().unwrap()["code"], "run_token_reused");
    assert!(other.json().unwrap()["detail"].as_str().unwrap().contains(ids.first().unwrap().as_str()));
}

/// kill -9 while a step runs; at the restart the dead executor's attempt is requeued as
/// interrupted, the step runs again and the run completes; nothing is lost from the ledger,
/// which verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_kill_9_mid_run() {
    let mut app = TestAppliance::start_with(|c| {
        c.queue.lease_ttl_ms = 1_000;
        c.queue.backoff_base_ms = 50;
    });
    let c = app.socket_client();
    register(&c, "name = \"crash\"\n[steps.a]\nplugin = \"sleep\"\nretries = 3\ninputs = { ms = 1500 }\n[steps.b]\nplugin = \"noop\"\nneeds = [\"a\"]\n").await;
    let id = api_post(&c, "/runs", json!({ "dag": "crash" })).await["id"].as_str().unwrap().to_owned();
    wait_for_event(&c, &id, "event: step.started").await;
    app.kill9();
    app.launch();
    let c = app.socket_client();
    let events = until_done(&c, &id, Some(0)).await;
    assert_eq!(events.last().unwrap()["kind"], "run.succeeded", "{events:?}");
    let v = api_get(&c, &format!("/runs/{id}")).await;
    assert_eq!(step(&v, "a")["attempts"], 2, "the interrupted attempt, then one more");
    let stalls = api_get(&c, "/ledger?limit=1000").await["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "lease.interrupted")
        .count();
    assert_eq!(stalls, 1);
    let verify = app.stella(&["orch", "db", "verify"]);
    assert!(verify.status.success(), "{}", stderr(&verify));
}

/// A 1,000-wide fan-out and fan-in completes; its stream, cut halfway and resumed with
/// Last-Event-ID, shows every step event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_wide_fan_out_streams_every_step_event_exactly_once_across_a_resume() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let mut spec = String::from("name = \"wide\"\n[steps.start]\nplugin = \"noop\"\n");
    for i in 0..1000 {
        spec.push_str(&format!("[steps.s{i}]\nplugin = \"noop\"\nneeds = [\"start\"]\n"));
    }
    let all: Vec<String> = (0..1000).map(|i| format!("\"s{i}\"")).collect();
    spec.push_str(&format!("[steps.end]\nplugin = \"noop\"\nneeds = [{}]\n", all.join(", ")));
    register(&c, &spec).await;
    let id = api_post(&c, "/runs", json!({ "dag": "wide" })).await["id"].as_str().unwrap().to_owned();

    let mut seen: Vec<Value> = Vec::new();
    let mut pending = String::new();
    c.stream(&format!("{API}/runs/stream?run={id}"), Some(0), |chunk| {
        pending.push_str(&String::from_utf8_lossy(chunk));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let data: String = block.lines().filter_map(|l| l.strip_prefix("data:")).map(str::trim).collect();
            if let Ok(e) = serde_json::from_str::<Value>(&data) {
                seen.push(e);
                if seen.iter().filter(|e| e["kind"] == "step.succeeded").count() == 500 {
                    return false;
                }
            }
        }
        true
    })
    .await
    .unwrap();
    let last = seen.last().unwrap()["seq"].as_u64().unwrap();
    seen.extend(until_done(&c, &id, Some(last)).await);
    assert_eq!(seen.last().unwrap()["kind"], "run.succeeded");
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut seqs = BTreeSet::new();
    for e in &seen {
        assert!(seqs.insert(e["seq"].as_u64().unwrap()), "event {} delivered twice", e["seq"]);
        if let Some(step) = e["subjects"][1].as_str() {
            *counts.entry((e["kind"].as_str().unwrap().to_owned(), step.to_owned())).or_default() += 1;
        }
    }
    for kind in ["step.queued", "step.started", "step.succeeded"] {
        let n = counts.iter().filter(|((k, _), c)| k == kind && **c == 1).count();
        assert_eq!(n, 1002, "{kind}: every step exactly once");
    }
    assert!(app.stella(&["orch", "db", "verify"]).status.success());
}

/// Reads one unmasked server frame: (opcode, payload).
fn ws_frame(s: &mut std::os::unix::net::UnixStream) -> (u8, Vec<u8>) {
    use std::io::Read;
    let mut head = [0u8; 2];
    s.read_exact(&mut head).unwrap();
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).unwrap();
    (head[0] & 0x0f, payload)
}

/// The stream upgrades to a WebSocket: the same entries, one JSON text message each, resumable
/// with `after`.
#[test]
fn the_stream_speaks_websocket_on_upgrade() {
    use std::io::{Read, Write};
    let app = TestAppliance::start();
    let run = app.stella(&["--format", "json", "orch", "run", "start", "sample-pipeline"]);
    let id = serde_json::from_slice::<Value>(&run.stdout).unwrap()["id"].as_str().unwrap().to_owned();
    let mut s = std::os::unix::net::UnixStream::connect(app.layout().default_socket()).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {API}/runs/stream?run={id}&after=0 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let mut kinds = Vec::new();
    let mut last = 0;
    loop {
        let (op, payload) = ws_frame(&mut s);
        assert_eq!(op, 1, "text frames");
        let e: Value = serde_json::from_slice(&payload).unwrap();
        let seq = e["seq"].as_u64().unwrap();
        assert!(seq > last, "in ledger order");
        last = seq;
        kinds.push(e["kind"].as_str().unwrap().to_owned());
        if kinds.last().unwrap().starts_with("run.succeeded") {
            break;
        }
    }
    assert_eq!(kinds[0], "run.created");
    assert_eq!(kinds.iter().filter(|k| *k == "step.succeeded").count(), 6);
}

/// A consumer that stops reading falls behind the bounded buffers; when it reads again it
/// finds a `lagged` event naming the sequence to resume from, and the stream is closed. A
/// resume from there delivers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_falls_behind_gets_lagged_and_can_resume() {
    use std::io::{Read, Write};
    let app = TestAppliance::start_with(|c| c.store.event_buffer = 8);
    let c = app.socket_client();
    let mut spec = String::from("name = \"burst\"\n");
    for i in 0..1500 {
        spec.push_str(&format!("[steps.s{i}]\nplugin = \"noop\"\n"));
    }
    register(&c, &spec).await;
    let mut slow = std::os::unix::net::UnixStream::connect(app.layout().default_socket()).unwrap();
    write!(slow, "GET {API}/runs/stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let id = api_post(&c, "/runs", json!({ "dag": "burst" })).await["id"].as_str().unwrap().to_owned();
    // Meanwhile `slow` reads nothing; wait for the run to end on another connection.
    let events = until_done(&c, &id, Some(0)).await;
    assert_eq!(events.last().unwrap()["kind"], "run.succeeded");
    slow.set_read_timeout(Some(std::time::Duration::from_secs(60))).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match slow.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&all).contains("event: lagged") && all.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&all);
    let lagged = text.split("event: lagged\n").nth(1).expect("a lagged event");
    let resume: Value = serde_json::from_str(lagged.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    let from = resume["resumeFrom"].as_u64().unwrap();
    let delivered = text.matches("event: step.succeeded").count();
    assert!(delivered < 1500, "the slow consumer was cut off ({delivered} delivered)");
    let rest = until_done(&c, &id, Some(from)).await;
    let after = rest.iter().filter(|e| e["kind"] == "step.succeeded").count();
    assert_eq!(delivered + after, 1500, "resuming from resumeFrom delivers exactly the rest");
}

/// DAG versions: a changed spec is a new version; disable refuses new runs; rollback makes
/// the previous version active; runs pin the version they started with. Outside dev mode a
/// DAG cannot be registered from a spec text at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dag_versions_disable_and_roll_back_and_production_refuses_unsigned_specs() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let c = app.socket_client();
    register(&c, "name = \"ver\"\n[steps.a]\nplugin = \"noop\"\n").await;
    let first = api_post(&c, "/runs", json!({ "dag": "ver" })).await;
    register(&c, "name = \"ver\"\n[steps.a]\nplugin = \"noop\"\n[steps.b]\nplugin = \"noop\"\nneeds = [\"a\"]\n").await;
    let second = api_post(&c, "/runs", json!({ "dag": "ver" })).await;
    assert_eq!((first["version"].as_u64(), second["version"].as_u64()), (Some(1), Some(2)));
    assert_eq!((first["steps"].as_array().unwrap().len(), second["steps"].as_array().unwrap().len()), (1, 2));
    assert!(app.stella(&["orch", "dag", "disable", "ver"]).status.success());
    let refused = c.post(&format!("{API}/runs"), &json!({ "dag": "ver" })).await.unwrap();
    assert_eq!(refused.status, 409);
    assert!(app.stella(&["orch", "dag", "rollback", "ver"]).status.success());
    let third = api_post(&c, "/runs", json!({ "dag": "ver" })).await;
    assert_eq!(third["version"], 1);
    let shown = app.stella(&["--format", "json", "orch", "dag", "show", "ver"]);
    let v: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(v["active"], 1);
    assert!(v["versions"].as_array().unwrap().iter().all(|x| x["unsigned"] == true));
    let bad = c
        .post(
            &format!("{API}/dags"),
            &json!({ "spec": "name = \"x\"\n[steps.a]\nplugin = \"noop\"\nneeds = [\"a\"]\n" }),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 422);
    assert!(bad.json().unwrap()["detail"].as_str().unwrap().contains("cycle: a -> a"));

    let prod = TestAppliance::start_production();
    let pc = prod.socket_client();
    let r = pc
        .post(&format!("{API}/dags"), &json!({ "spec": "name = \"x\"\n[steps.a]\nplugin = \"noop\"\n" }))
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.json().unwrap()["code"].as_str().map(str::to_owned)),
        (403, Some("signed_bundle_required".to_owned()))
    );
}

/// A step held back by a lock says which lock and who holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_held_by_a_lock_names_the_lock_and_its_holder() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let c = app.socket_client();
    api_post(&c, "/locks", json!({ "resource": "env:prod", "owner": "deploy-7" })).await;
    register(&c, "name = \"locked\"\n[steps.ship]\nplugin = \"noop\"\nlocks = [\"env:prod\"]\n").await;
    let id = api_post(&c, "/runs", json!({ "dag": "locked" })).await["id"].as_str().unwrap().to_owned();
    assert!(
        api_post(&c, "/leases", json!({ "worker": "a", "types": ["noop"] })).await["leases"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let v = api_get(&c, &format!("/runs/{id}")).await;
    assert_eq!(step(&v, "ship")["waitReason"], "waiting for lock env:prod held by deploy-7");
}
