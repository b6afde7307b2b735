//! The queue, locks and runtime config through the CLI and API of a running daemon, as the
//! runbooks use them: lock contention and forced release, config changes, dispatch order,
//! pause, backpressure, the dead-letter queue, long-poll leases, lease expiry by the daemon's
//! own timer, and kill -9 under load.

use crate::support::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use stella::client::Client;

async fn ledger(c: &Client) -> Vec<Value> {
    api_get(c, "/ledger?limit=1000").await["entries"].as_array().unwrap().clone()
}

fn json_out(app: &TestAppliance, args: &[&str]) -> Value {
    let mut full = vec!["--format", "json"];
    full.extend_from_slice(args);
    let out = app.stella(&full);
    assert!(out.status.success(), "stella {args:?}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbook_lock_and_config_commands_work_end_to_end_and_name_the_actor() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let uid = unsafe { libc::geteuid() };
    let held = api_post(&c, "/locks", json!({ "resource": "env:prod", "owner": "deploy-7", "ttl": "10m" })).await;
    assert_eq!((held["lockId"].as_str(), held["granted"].as_bool()), (Some("lock-1"), Some(true)));
    api_post(&c, "/locks", json!({ "resource": "env:prod", "owner": "deploy-8" })).await;
    api_post(&c, "/locks", json!({ "resource": "env:staging", "owner": "deploy-9" })).await;

    let listed = app.stella(&["orch", "locks", "list", "--env", "prod"]);
    let text = stdout(&listed);
    assert!(text.contains("lock-1") && text.contains("deploy-7") && text.contains("deploy-8"), "{text}");
    assert!(!text.contains("env:staging"), "--env filters: {text}");
    assert_eq!(json_out(&app, &["orch", "locks", "list"])["locks"].as_array().unwrap().len(), 2);

    let forced =
        app.stella(&["orch", "locks", "release", "lock-1", "--force", "--reason", "stale after controller crash"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let after = json_out(&app, &["orch", "locks", "list", "--env", "prod"]);
    assert_eq!(after["locks"][0]["holder"], "deploy-8", "the next waiter holds it now");
    let old = held["token"].as_u64().unwrap().to_string();
    let refused = app.stella(&["orch", "locks", "release", "lock-1", "--owner", "deploy-7", "--lock-token", &old]);
    assert_eq!(refused.status.code(), Some(7), "the old holder is refused: {}", stderr(&refused));

    // A forced release is recorded with its reason: without one (and no terminal to ask on)
    // it is refused, naming --reason, and nothing is released.
    let no_reason = app.stella(&["orch", "locks", "release", "--env", "prod", "--force"]);
    assert_eq!(no_reason.status.code(), Some(9), "{}", stderr(&no_reason));
    assert!(stderr(&no_reason).contains("--reason"), "{}", stderr(&no_reason));
    let r = c.post(&format!("{API}/locks/release"), &json!({ "env": "prod", "force": true })).await.unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(r.json().unwrap()["field"], "reason");
    assert!(!json_out(&app, &["orch", "locks", "list", "--env", "prod"])["locks"].as_array().unwrap().is_empty());
    let env_release = app.stella(&["orch", "locks", "release", "--env", "prod", "--force", "--reason", "drill"]);
    assert!(env_release.status.success(), "{}", stderr(&env_release));
    assert!(json_out(&app, &["orch", "locks", "list", "--env", "prod"])["locks"].as_array().unwrap().is_empty());

    for (key, value) in [
        ("locks.timeout", "60s"),
        ("locks.mode", "optimistic"),
        ("gates.security-scan.timeout", "5m"),
        ("gates.security-scan.retries", "3"),
    ] {
        let out = app.stella(&["orch", "config", "set", key, value]);
        assert!(out.status.success(), "config set {key}: {}", stderr(&out));
        assert_eq!(json_out(&app, &["orch", "config", "get", key])["value"], value);
    }
    let bad = app.stella(&["orch", "config", "set", "locks.colour", "red"]);
    assert_eq!(bad.status.code(), Some(9));
    assert!(stderr(&bad).contains("allowed: locks.timeout, locks.mode"), "{}", stderr(&bad));

    let fresh = api_post(&c, "/locks", json!({ "resource": "artifact:web", "owner": "promo-1" })).await;
    let lock = api_get(&c, "/locks").await["locks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["id"] == fresh["lockId"])
        .unwrap()
        .clone();
    let span = time::OffsetDateTime::parse(
        lock["expiresAt"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
        - time::OffsetDateTime::parse(
            lock["acquiredAt"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
    assert_eq!(span.whole_seconds(), 60, "locks.timeout 60s applies to new locks");

    let entries = ledger(&c).await;
    let actor = format!("local:uid={uid}");
    let force = entries.iter().find(|e| e["kind"] == "lock.force_released").unwrap();
    assert_eq!(
        (force["actor"].as_str(), force["data"]["reason"].as_str()),
        (Some(actor.as_str()), Some("stale after controller crash"))
    );
    let set = entries.iter().filter(|e| e["kind"] == "config.set").collect::<Vec<_>>();
    assert_eq!(set.len(), 4);
    assert!(set.iter().all(|e| e["actor"] == actor.as_str()));
    assert!(app.stella(&["orch", "db", "verify"]).status.success());
}

async fn lease(c: &Client, worker: &str, max: u32, extra: Value) -> Vec<Value> {
    let mut body = json!({ "worker": worker, "types": ["build"], "max": max });
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    api_post(c, "/leases", body).await["leases"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_order_pause_backpressure_and_the_dead_letter_queue() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    for (n, priority) in [(1, 100), (2, 500), (3, 100)] {
        api_post(
            &c,
            "/jobs",
            json!({ "type": "build", "payload": { "n": n }, "priority": priority, "maxAttempts": 1 }),
        )
        .await;
    }
    let got = lease(&c, "w1", 3, json!({ "env": "prod" })).await;
    let order: Vec<i64> = got.iter().map(|l| l["payload"]["n"].as_i64().unwrap()).collect();
    assert_eq!(order, vec![2, 1, 3], "highest priority first, then oldest first");
    let agents = json_out(&app, &["orch", "agent", "status", "--env", "prod"]);
    let w1 = agents["agents"].as_array().unwrap().iter().find(|a| a["id"] == "w1").unwrap();
    assert_eq!((w1["leases"].as_u64(), w1["kind"].as_str()), (Some(3), Some("remote")), "{agents}");
    assert!(w1["whyNot"].as_str().unwrap().contains("in-process agent"), "prod is the local agent's: {agents}");

    let (a, b) = (&got[0], &got[1]);
    api_post(
        &c,
        &format!("/leases/{}/complete", a["jobId"].as_str().unwrap()),
        json!({ "token": a["token"], "result": { "ok": true } }),
    )
    .await;
    let stale = c
        .post(&format!("{API}/leases/{}/complete", a["jobId"].as_str().unwrap()), &json!({ "token": a["token"] }))
        .await
        .unwrap();
    assert_eq!(stale.status, 409);
    assert_eq!(stale.json().unwrap()["code"], "lease_stale", "a specific code, not just conflict");
    api_post(
        &c,
        &format!("/leases/{}/fail", b["jobId"].as_str().unwrap()),
        json!({ "token": b["token"], "error": "exit 3" }),
    )
    .await;
    let dlq = json_out(&app, &["orch", "dlq", "list"]);
    assert_eq!(dlq["jobs"][0]["id"], b["jobId"]);
    assert_eq!(dlq["jobs"][0]["lastError"], "exit 3");
    let replayed = json_out(&app, &["orch", "dlq", "replay", b["jobId"].as_str().unwrap()]);
    assert_eq!(replayed["jobs"][0]["replayOf"], b["jobId"]);

    let c3 = &got[2];
    api_post(
        &c,
        &format!("/leases/{}/fail", c3["jobId"].as_str().unwrap()),
        json!({ "token": c3["token"], "error": "bad", "retryable": false }),
    )
    .await;
    let snapshot = app.root().join("purged.ndjson");
    let no_snapshot = app.stella(&["orch", "dlq", "purge", "--all"]);
    assert_eq!(no_snapshot.status.code(), Some(9), "purge refuses without a snapshot");
    let purged = app.stella(&["orch", "dlq", "purge", "--all", "--snapshot", snapshot.to_str().unwrap()]);
    assert!(purged.status.success(), "{}", stderr(&purged));
    let written = std::fs::read(&snapshot).unwrap();
    assert_eq!(String::from_utf8_lossy(&written).lines().count(), 1);
    let entry = ledger(&c).await.into_iter().find(|e| e["kind"] == "dlq.purged").unwrap();
    assert_eq!(entry["data"]["snapshotSha256"], hex::encode(Sha256::digest(&written)));
    assert!(json_out(&app, &["orch", "dlq", "list"])["jobs"].as_array().unwrap().is_empty());

    assert!(app.stella(&["orch", "queue", "pause", "build"]).status.success());
    assert!(lease(&c, "w2", 1, json!({})).await.is_empty(), "a paused type dispatches nothing");
    let status = json_out(&app, &["orch", "queue", "status"]);
    assert_eq!((status["types"][0]["paused"].as_bool(), status["depth"].as_u64()), (Some(true), Some(1)));
    let metrics = String::from_utf8(c.get("/metrics").await.unwrap().ok().unwrap().body.to_vec()).unwrap();
    assert!(metrics.contains("orchestrator_queue_depth{type=\"build\"} 1"), "{metrics}");
    assert!(metrics.contains("orchestrator_dlq_depth 0"), "{metrics}");
    assert!(app.stella(&["orch", "queue", "resume", "build"]).status.success());
    assert_eq!(lease(&c, "w2", 1, json!({})).await.len(), 1);

    assert!(app.stella(&["orch", "queue", "budget", "set", "build", "--max-depth", "1"]).status.success());
    api_post(&c, "/jobs", json!({ "type": "build" })).await;
    let over = c.post(&format!("{API}/jobs"), &json!({ "type": "build" })).await.unwrap();
    assert_eq!(over.status, 429);
    assert_eq!(over.headers["retry-after"], "1");

    let first =
        api_post(&c, "/jobs", json!({ "type": "deploy", "payload": { "v": 1 }, "idempotencyKey": "rel-42" })).await;
    let again = c
        .post(&format!("{API}/jobs"), &json!({ "type": "deploy", "payload": { "v": 1 }, "idempotencyKey": "rel-42" }))
        .await
        .unwrap();
    assert_eq!((again.status.as_u16(), again.json().unwrap()["id"].clone()), (200, first["id"].clone()));
    let clash = c
        .post(&format!("{API}/jobs"), &json!({ "type": "deploy", "payload": { "v": 2 }, "idempotencyKey": "rel-42" }))
        .await
        .unwrap();
    assert_eq!(clash.status, 409);
    assert_eq!(clash.json().unwrap()["code"], "idempotency_key_reused");
    assert!(app.stella(&["orch", "db", "verify"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_lease_wakes_on_enqueue_and_an_expired_lease_is_requeued_by_the_daemon() {
    let app = TestAppliance::start_with(|c| c.queue.backoff_base_ms = 20);
    let c = app.socket_client();
    let waiting = {
        let c = app.socket_client();
        tokio::spawn(async move { lease(&c, "poller", 1, json!({ "wait": "20s", "ttl": "300ms" })).await })
    };
    // Wait for the poller to be registered (its first, empty lease commits a sighting).
    let mut events = 0;
    while api_get(&c, "/workers").await["workers"].as_array().unwrap().is_empty() {
        events += 1;
        assert!(events < 10_000, "the poller never registered");
        tokio::task::yield_now().await;
    }
    api_post(&c, "/jobs", json!({ "type": "build", "payload": { "x": 1 } })).await;
    let got = waiting.await.unwrap();
    assert_eq!(got.len(), 1, "the long-poll lease woke on the enqueue");
    let token = got[0]["token"].as_u64().unwrap();

    // The poller never heartbeats: the daemon's timer expires the lease and requeues the job.
    let again = lease(&c, "rescuer", 1, json!({ "wait": "20s" })).await;
    assert_eq!(again.len(), 1, "the job came back after the lease expired");
    assert_eq!(again[0]["jobId"], got[0]["jobId"]);
    assert!(again[0]["token"].as_u64().unwrap() > token);
    let stall = ledger(&c).await.into_iter().find(|e| e["kind"] == "lease.expired").unwrap();
    assert_eq!((stall["data"]["worker"].as_str(), stall["actor"].as_str()), (Some("poller"), Some("appliance")));
    let metrics = String::from_utf8(c.get("/metrics").await.unwrap().ok().unwrap().body.to_vec()).unwrap();
    assert!(metrics.contains("orchestrator_lease_expirations_total 1"), "{metrics}");
    assert!(metrics.contains("orchestrator_step_retries_total 1"), "{metrics}");
    assert!(metrics.contains("orchestrator_queue_leased{type=\"build\"} 1"), "{metrics}");
}

/// kill -9 under enqueue, lease and complete load, three times: every acknowledged enqueue
/// exists after each restart, in exactly one state, and the ledger verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_queue_load_loses_no_acknowledged_job() {
    let mut app = TestAppliance::start();
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    for round in 0..3 {
        let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut tasks = Vec::new();
        for p in 0..6 {
            let (c, acked, enough) = (app.socket_client(), acked.clone(), enough_tx.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let body = json!({ "type": "build", "payload": { "p": p, "i": i, "round": round } });
                    let Ok(reply) = c.post(&format!("{API}/jobs"), &body).await else { return };
                    if reply.status != 201 {
                        return;
                    }
                    let n = {
                        let mut a = acked.lock().unwrap();
                        a.insert(reply.json().unwrap()["id"].as_str().unwrap().to_owned());
                        a.len()
                    };
                    if n >= 150 * (round + 1) {
                        let _ = enough.try_send(());
                    }
                    let Ok(reply) = c
                        .post(&format!("{API}/leases"), &json!({ "worker": format!("w{p}"), "types": ["build"] }))
                        .await
                    else {
                        return;
                    };
                    let Ok(v) = reply.json() else { return };
                    for l in v["leases"].as_array().into_iter().flatten() {
                        let path = format!("{API}/leases/{}/complete", l["jobId"].as_str().unwrap());
                        if c.post(&path, &json!({ "token": l["token"] })).await.is_err() {
                            return;
                        }
                    }
                }
            }));
        }
        drop(enough_tx);
        enough_rx.recv().await.expect("load ran");
        app.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        app.launch();
        let c = app.socket_client();
        let acked_now = acked.lock().unwrap().clone();
        for id in &acked_now {
            let job = api_get(&c, &format!("/jobs/{id}")).await;
            assert!(["ready", "leased", "succeeded", "delayed"].contains(&job["state"].as_str().unwrap()), "{job}");
        }
        let status = api_get(&c, "/queue").await;
        let t = &status["types"][0];
        let total: u64 =
            ["ready", "delayed", "leased", "succeeded", "dead"].iter().map(|k| t[k].as_u64().unwrap()).sum();
        assert!(total >= acked_now.len() as u64, "every acknowledged job is counted in exactly one state");
        let verify = app.stella(&["orch", "db", "verify"]);
        assert!(verify.status.success(), "round {round}: {}", stderr(&verify));
    }
}

/// `POST /jobs` with an array enqueues the jobs in one command: each answered with its id in
/// the order given, an idempotency key repeated in the batch naming the same job; a batch with
/// one bad job is refused whole, naming the job, and enqueues nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_jobs_is_enqueued_all_or_none() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let depth = |v: &Value| v["depth"].as_u64().unwrap();
    let before = depth(&api_get(&c, "/queue").await);
    let batch = json!([
        { "type": "batch.a", "payload": { "n": 1 }, "idempotencyKey": "k1" },
        { "type": "batch.a", "payload": { "n": 2 } },
        { "type": "batch.b", "payload": { "n": 1 }, "idempotencyKey": "k4" },
    ]);
    let r = c.post(&format!("{API}/jobs"), &batch).await.unwrap();
    assert_eq!(r.status, 201);
    let jobs = r.json().unwrap()["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j["created"] == true), "{jobs:?}");
    let ids: BTreeSet<&str> = jobs.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    let shown = api_get(&c, &format!("/jobs/{}", jobs[2]["id"].as_str().unwrap())).await;
    assert_eq!((shown["type"].as_str(), shown["payload"]["n"].as_u64()), (Some("batch.b"), Some(1)));

    // Same key, same job, twice in one batch: one job.
    let again = json!([
        { "type": "batch.c", "payload": { "n": 1 }, "idempotencyKey": "k2" },
        { "type": "batch.c", "payload": { "n": 1 }, "idempotencyKey": "k2" },
    ]);
    let r = c.post(&format!("{API}/jobs"), &again).await.unwrap();
    let jobs = r.json().unwrap()["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs[0]["id"], jobs[1]["id"]);
    assert_eq!((jobs[0]["created"].as_bool(), jobs[1]["created"].as_bool()), (Some(true), Some(false)));
    // Sent again: every job exists already, 200.
    let r = c.post(&format!("{API}/jobs"), &again).await.unwrap();
    assert_eq!(r.status, 200);
    let depth_now = depth(&api_get(&c, "/queue").await);

    let bad = json!([{ "type": "batch.a" }, { "type": "Not A Type" }, { "type": "batch.a" }]);
    let r = c.post(&format!("{API}/jobs"), &bad).await.unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(r.json().unwrap()["field"], "jobs[1].type");
    let clash = json!([{ "type": "batch.d", "idempotencyKey": "k3" }, { "type": "batch.e", "idempotencyKey": "k3" }]);
    let r = c.post(&format!("{API}/jobs"), &clash).await.unwrap();
    assert_eq!(r.status, 409);
    let problem = r.json().unwrap();
    assert_eq!(problem["code"], "idempotency_key_reused");
    assert!(problem["detail"].as_str().unwrap().starts_with("jobs[1]"), "{problem}");
    assert_eq!(depth(&api_get(&c, "/queue").await), depth_now, "refused batches enqueue nothing");
    assert!(depth_now >= before + 4, "{before} → {depth_now}");
}

/// A worker that leased many completes them in one request: each completion stands on its own
/// token, so a stale one fails alone and the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_leased_jobs_complete_in_one_request_each_on_its_own_token() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let batch: Vec<Value> = (0..5).map(|n| json!({ "type": "many.done", "payload": { "n": n } })).collect();
    assert_eq!(c.post(&format!("{API}/jobs"), &json!(batch)).await.unwrap().status, 201);
    let r = c
        .post(&format!("{API}/leases"), &json!({ "worker": "w-many", "types": ["many.done"], "max": 5 }))
        .await
        .unwrap();
    let leases = r.json().unwrap()["leases"].as_array().unwrap().clone();
    assert_eq!(leases.len(), 5);
    let mut completions: Vec<Value> = leases[..4]
        .iter()
        .map(|l| json!({ "jobId": l["jobId"], "token": l["token"], "result": { "ok": l["jobId"] } }))
        .collect();
    let stale = &leases[4];
    completions.push(json!({ "jobId": stale["jobId"], "token": stale["token"].as_u64().unwrap() + 7 }));
    completions.push(json!({ "jobId": "job-does-not-exist", "token": 1 }));
    let r = c.post(&format!("{API}/leases/complete"), &json!(completions)).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    let answer = r.json().unwrap();
    assert_eq!(answer["completed"], 4, "{answer}");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    assert!(results[..4].iter().all(|o| o["status"] == 200), "{answer}");
    assert_eq!((results[4]["status"].as_u64(), results[4]["jobId"].as_str()), (Some(409), stale["jobId"].as_str()));
    assert_eq!(results[5]["status"], 404, "{answer}");
    for l in &leases[..4] {
        let job = api_get(&c, &format!("/jobs/{}", l["jobId"].as_str().unwrap())).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        assert_eq!(job["result"]["ok"], l["jobId"], "{job}");
    }
    let left = api_get(&c, &format!("/jobs/{}", stale["jobId"].as_str().unwrap())).await;
    assert_eq!(left["state"], "leased", "the stale completion changed nothing: {left}");

    for bad in [json!([]), json!({ "jobId": "x", "token": 1 }), json!([{ "jobId": "x" }])] {
        let r = c.post(&format!("{API}/leases/complete"), &bad).await.unwrap();
        assert!(r.status == 422 || r.status == 400, "{bad}: {} {:?}", r.status, r.json());
    }
}

/// A worker completes a job and leases its next in one request: both in one commit (adjacent
/// entries of one time), the next only if the completion passed — a stale token leases nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_leases_the_next_job_in_the_same_commit_only_if_it_passed() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(api_post(&c, "/jobs", json!({ "type": "next.done", "payload": { "n": n } })).await["id"].clone());
    }
    let want = json!({ "worker": "w-next", "types": ["next.done"], "max": 1 });
    let a = api_post(&c, "/leases", want.clone()).await["leases"][0].clone();
    let path = |l: &Value| format!("{API}/leases/{}/complete", l["jobId"].as_str().unwrap());
    let r = c.post(&path(&a), &json!({ "token": a["token"], "result": { "ok": 1 }, "next": want })).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.json());
    let settled = r.json().unwrap();
    assert_eq!((settled["id"].as_str(), settled["state"].as_str()), (a["jobId"].as_str(), Some("succeeded")));
    let b = settled["next"]["leases"][0].clone();
    assert_eq!(settled["next"]["leases"].as_array().unwrap().len(), 1, "{settled}");
    assert_ne!(b["jobId"], a["jobId"]);
    assert_eq!(api_get(&c, &format!("/jobs/{}", b["jobId"].as_str().unwrap())).await["state"], "leased");
    let entries = ledger(&c).await;
    let at = |kind: &str, job: &Value| {
        entries
            .iter()
            .find(|e| e["kind"] == kind && e["subjects"][0] == *job)
            .unwrap_or_else(|| panic!("{kind}"))
            .clone()
    };
    let (done, granted) = (at("job.succeeded", &a["jobId"]), at("lease.granted", &b["jobId"]));
    assert_eq!(granted["seq"].as_u64(), done["seq"].as_u64().map(|s| s + 1), "the lease right after: {granted}");
    assert_eq!(granted["time"], done["time"], "one batch, one time");

    // A stale token: refused, and the third job stays ready.
    let stale = json!({ "token": b["token"].as_u64().unwrap() + 5, "next": want });
    let r = c.post(&path(&b), &stale).await.unwrap();
    assert_eq!(r.status, 409, "{:?}", r.json());
    let third = api_get(&c, &format!("/jobs/{}", ids[2].as_str().unwrap())).await;
    assert_eq!(third["state"], "ready", "nothing was leased: {third}");

    for (action, body, field) in [
        ("heartbeat", json!({ "token": b["token"], "next": want }), "next"),
        (
            "complete",
            json!({ "token": b["token"], "next": { "worker": "w-next", "types": ["next.done"], "wait": "1s" } }),
            "next.wait",
        ),
        ("complete", json!({ "token": b["token"], "next": { "worker": "w-next", "types": [] } }), "types"),
    ] {
        let url = format!("{API}/leases/{}/{action}", b["jobId"].as_str().unwrap());
        let r = c.post(&url, &body).await.unwrap();
        assert_eq!(r.status, 422, "{body}: {:?}", r.json());
        assert_eq!(r.json().unwrap()["field"].as_str(), Some(field), "{body}");
    }
    assert_eq!(api_get(&c, &format!("/jobs/{}", b["jobId"].as_str().unwrap())).await["state"], "leased");
    assert!(app.stella(&["orch", "db", "verify"]).status.success());
}

/// An idempotency key whose job was purged from the dead-letter queue names nothing any more:
/// enqueued again, it makes a new job (it answered 404 for the purged one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_jobs_idempotency_key_enqueues_a_new_job() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let job = json!({ "type": "purge.key", "payload": { "n": 1 }, "maxAttempts": 1, "idempotencyKey": "once" });
    let first = c.post(&format!("{API}/jobs"), &job).await.unwrap();
    assert_eq!(first.status, 201);
    let first_id = first.json().unwrap()["id"].as_str().unwrap().to_owned();
    let got = lease(&c, "w-purge", 1, json!({ "types": ["purge.key"] })).await;
    assert_eq!(got[0]["jobId"], first_id.as_str());
    let fail = json!({ "token": got[0]["token"], "error": "bad", "retryable": false });
    api_post(&c, &format!("/leases/{first_id}/fail"), fail).await;
    let snapshot = app.root().join("purged-key.ndjson");
    let purged = app.stella(&["orch", "dlq", "purge", "--all", "--snapshot", snapshot.to_str().unwrap()]);
    assert!(purged.status.success(), "{}", stderr(&purged));

    let again = c.post(&format!("{API}/jobs"), &job).await.unwrap();
    assert_eq!(again.status, 201, "{:?}", again.json());
    let again_id = again.json().unwrap()["id"].as_str().unwrap().to_owned();
    assert_ne!(again_id, first_id);
    assert_eq!(api_get(&c, &format!("/jobs/{again_id}")).await["state"], "ready");
    let third = c.post(&format!("{API}/jobs"), &job).await.unwrap();
    assert_eq!(third.status, 200);
    assert_eq!(third.json().unwrap()["id"].as_str(), Some(again_id.as_str()));
    let verify = app.stella(&["orch", "db", "verify"]);
    assert!(verify.status.success(), "{}", stdout(&verify));
}

/// A retried enqueue is compared with what was stored, not with how its numbers were spelt:
/// `1.0` is stored as `1` (RFC 8785), so the retry names the same job (it answered 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_retry_spelling_a_number_differently_names_the_same_job() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let first = c
        .post(
            &format!("{API}/jobs"),
            &json!({ "type": "spelt", "payload": { "n": 1.0, "m": [2.0] }, "idempotencyKey": "k" }),
        )
        .await
        .unwrap();
    assert_eq!(first.status, 201);
    let id = first.json().unwrap()["id"].as_str().unwrap().to_owned();
    for payload in [json!({ "n": 1, "m": [2] }), json!({ "n": 1.0, "m": [2.0] })] {
        let again = c
            .post(&format!("{API}/jobs"), &json!({ "type": "spelt", "payload": payload, "idempotencyKey": "k" }))
            .await
            .unwrap();
        assert_eq!(again.status, 200, "{payload}: {:?}", again.json());
        assert_eq!(again.json().unwrap()["id"].as_str(), Some(id.as_str()));
    }
    let batch = json!([
        { "type": "spelt", "payload": { "n": 3.0 }, "idempotencyKey": "b" },
        { "type": "spelt", "payload": { "n": 3 }, "idempotencyKey": "b" },
    ]);
    let r = c.post(&format!("{API}/jobs"), &batch).await.unwrap();
    assert_eq!(r.status, 201, "{:?}", r.json());
    let jobs = r.json().unwrap()["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs[0]["id"], jobs[1]["id"]);
    let other = c
        .post(&format!("{API}/jobs"), &json!({ "type": "spelt", "payload": { "n": 1.5 }, "idempotencyKey": "k" }))
        .await
        .unwrap();
    assert_eq!(other.status, 409, "a different payload still conflicts");
}
