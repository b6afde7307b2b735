//! Step result caching (runbook 004 §5): a hit completes the step without spawning its plugin;
//! a changed input misses and `orch cache explain` names it; an expired entry misses (virtual
//! time); a retry runs again; entries are the tenant's own; purge; one computation per key at a
//! time (a second run with the same key waits for the first).

use crate::engine_model::{complete, fail_as, lease, register, run, start, step, verify};
use crate::support::*;
use serde_json::{Value, json};
use stella::domain::cache::CacheCommand;
use stella::domain::runs::tables::{RunStatus, StepState};
use stella::domain::runs::{Recovery, RunCommand};
use stella::machine::Command;

const CACHED: &str = r#"
name = "cached"
[inputs.v]
default = "1"
[steps.a]
plugin = "noop"
inputs = { v = "${inputs.v}" }
cache = { ttl = "10m" }
[steps.b]
plugin = "noop"
needs = ["a"]
inputs = { from = "${steps.a.outputs.n}" }
cache = { ttl = "10m" }
"#;

/// Runs every leased job to success with outputs `{"n": N}`; returns how many ran.
fn drain(d: &Direct, n: u64) -> usize {
    let mut ran = 0;
    loop {
        let jobs = lease(d);
        if jobs.is_empty() {
            return ran;
        }
        for (job, token, _, _) in jobs {
            complete(d, &job, token, json!({ "n": n })).unwrap();
            ran += 1;
        }
    }
}

#[test]
fn a_hit_runs_nothing_an_expired_entry_runs_again_and_a_retry_bypasses_the_cache() {
    let d = Direct::new();
    register(&d, CACHED);
    let first = start(&d, "cached", json!({}), None).unwrap();
    assert_eq!(drain(&d, 7), 2, "the first run computes both steps");
    assert!(!step(&d, &first, "a").cache.unwrap().hit);
    // Same inputs: both steps complete from the cache in the start's own commit.
    let c = d
        .submit(Command::Run(RunCommand::Start {
            tenant: "default".into(),
            dag: "cached".into(),
            inputs: Default::default(),
            run_token: None,
        }))
        .unwrap();
    let second = c.note.unwrap()["runId"].as_str().unwrap().to_owned();
    let kinds: Vec<&str> = c.entries.iter().map(|e| e.kind.as_str()).collect();
    assert!(!kinds.contains(&"job.enqueued"), "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "cache.hit").count(), 2, "{kinds:?}");
    assert_eq!(run(&d, &second).status, RunStatus::Succeeded);
    let b = step(&d, &second, "b");
    assert_eq!((b.state, b.outputs.clone()), (StepState::Succeeded, json!({ "n": 7 })));
    let meta = b.cache.unwrap();
    assert!(meta.hit && meta.hits == Some(1) && meta.age_ms == Some(0), "{meta:?}");
    // A changed input misses a, and b's input (a's new output) misses b.
    let third = start(&d, "cached", json!({ "v": "2" }), None).unwrap();
    assert_eq!(drain(&d, 8), 2);
    assert!(!step(&d, &third, "a").cache.unwrap().hit);
    // Expired: runs again.
    d.clock.advance_ms(11 * 60_000);
    start(&d, "cached", json!({}), None).unwrap();
    assert_eq!(drain(&d, 7), 2, "expired entries are not used");
    verify(&d);
}

#[test]
fn a_manual_retry_runs_the_step_again_and_purge_empties_the_cache() {
    let d = Direct::new();
    register(&d, CACHED);
    let first = start(&d, "cached", json!({}), None).unwrap();
    let (job, token, _, _) = lease(&d).remove(0);
    fail_as(&d, &job, token, false);
    assert_eq!(run(&d, &first).status, RunStatus::Failed);
    // Another run computes a, so an entry exists; the failed run's retry still runs a.
    start(&d, "cached", json!({}), None).unwrap();
    assert_eq!(drain(&d, 1), 2);
    d.submit(Command::Run(RunCommand::Recover {
        tenant: None,
        run: first.clone(),
        action: Recovery::Retry,
        step: None,
    }))
    .unwrap();
    assert_eq!(lease(&d).len(), 1, "the retried step runs, whatever the cache holds");
    // A second retry while the first one's step runs: 409 naming it (runbook 004 §7).
    let again = d.submit(Command::Run(RunCommand::Recover {
        tenant: None,
        run: first.clone(),
        action: Recovery::Retry,
        step: None,
    }));
    let Err(stella::kernel::CommandError::Conflict { code: "run_not_failed", detail }) = again else {
        panic!("{again:?}")
    };
    assert!(detail.contains("in flight: a (running)"), "{detail}");
    let purged = d.submit(Command::Cache(CacheCommand::Purge { tenant: None, dag: Some("cached".into()) })).unwrap();
    assert_eq!(purged.entries[0].data["keys"].as_array().unwrap().len(), 2);
    start(&d, "cached", json!({}), None).unwrap();
    assert!(!lease(&d).is_empty(), "after a purge, a run computes again");
    verify(&d);
}

/// Two runs that miss one key together compute it once: the second run's step waits, holding
/// its slot, and hits the entry in the commit that stores it; its own next step then waits for
/// the first run's. `db verify` replays the flights.
#[test]
fn two_runs_with_one_key_compute_it_once_and_the_second_hits_in_the_same_commit() {
    let d = Direct::new();
    register(&d, CACHED);
    let first = start(&d, "cached", json!({}), None).unwrap();
    let second = start(&d, "cached", json!({}), None).unwrap();
    let waiter = step(&d, &second, "a");
    assert_eq!((waiter.state, waiter.job.as_ref()), (StepState::Queued, None), "{waiter:?}");
    let why = waiter.wait.clone().unwrap();
    assert!(why.contains(&format!("waiting for {first}/a to compute its cached result")), "{why}");
    assert_eq!(waiter.cache.unwrap().waiting_for.as_deref(), Some(format!("{first}/a").as_str()));
    assert_eq!(run(&d, &second).active, 1, "a waiter holds its slot");
    let jobs = lease(&d);
    assert_eq!(jobs.len(), 1, "only the first run's a runs: {jobs:?}");
    let (job, token, _, _) = jobs.into_iter().next().unwrap();
    let c = complete(&d, &job, token, json!({ "n": 5 })).unwrap();
    let done: Vec<(String, String)> = c
        .entries
        .iter()
        .filter(|e| e.kind.starts_with("cache.") || e.kind == "step.succeeded")
        .map(|e| (e.kind.clone(), e.subjects.join(" ")))
        .collect();
    assert!(
        done.iter().any(|(k, s)| k == "cache.hit" && s.starts_with(&format!("{second} a"))),
        "the waiter hits in the storing commit: {done:?}"
    );
    let a2 = step(&d, &second, "a");
    assert_eq!((a2.state, a2.outputs.clone()), (StepState::Succeeded, json!({ "n": 5 })));
    assert!(a2.cache.unwrap().hit);
    // b: the first run computes it, the second waits again.
    assert_eq!(step(&d, &second, "b").cache.unwrap().waiting_for, Some(format!("{first}/b")));
    assert_eq!(drain(&d, 6), 1, "b is computed once too");
    for id in [&first, &second] {
        assert_eq!(run(&d, id).status, RunStatus::Succeeded, "{id}");
        assert_eq!(step(&d, id, "b").outputs, json!({ "n": 6 }));
    }
    assert_eq!(run(&d, &second).active, 0);
    verify(&d);
}

/// A computation that fails or is cancelled stores nothing: its key is released and the step
/// waiting for it computes it itself (no waiter is left behind).
#[test]
fn a_failed_or_cancelled_computation_hands_the_key_to_a_waiter() {
    let d = Direct::new();
    register(&d, CACHED);
    let first = start(&d, "cached", json!({}), None).unwrap();
    let second = start(&d, "cached", json!({}), None).unwrap();
    let third = start(&d, "cached", json!({}), None).unwrap();
    let (job, token, _, _) = lease(&d).remove(0);
    fail_as(&d, &job, token, false);
    assert_eq!(run(&d, &first).status, RunStatus::Failed);
    // The second run computes a now; the third waits for it.
    assert_eq!(step(&d, &second, "a").cache.unwrap().waiting_for, None);
    assert_eq!(step(&d, &third, "a").cache.unwrap().waiting_for, Some(format!("{second}/a")));
    assert_eq!(lease(&d).len(), 1, "one computation of a at a time");
    d.submit(Command::Run(RunCommand::Cancel { tenant: None, run: second.clone() })).unwrap();
    // Cancelled: the third run computes it.
    let a3 = step(&d, &third, "a");
    assert_eq!((a3.state, a3.cache.unwrap().waiting_for), (StepState::Queued, None));
    assert_eq!(drain(&d, 3), 2, "the third run computes a and b");
    assert_eq!(run(&d, &third).status, RunStatus::Succeeded);
    // A cancelled waiter is passed over when the key is freed.
    let fourth = start(&d, "cached", json!({ "v": "9" }), None).unwrap();
    let fifth = start(&d, "cached", json!({ "v": "9" }), None).unwrap();
    d.submit(Command::Run(RunCommand::Cancel { tenant: None, run: fifth.clone() })).unwrap();
    assert_eq!(drain(&d, 4), 2);
    assert_eq!(run(&d, &fourth).status, RunStatus::Succeeded);
    assert_eq!(run(&d, &fifth).status, RunStatus::Cancelled);
    assert_eq!(run(&d, &fifth).active, 0);
    verify(&d);
}

/// Over the API with a real plugin process: the rerun spawns nothing (the plugin counts its
/// runs in a file), `explain` names the changed input, and another tenant neither sees the
/// entries nor hits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_rerun_spawns_no_plugin_and_explain_names_the_changed_input() {
    let app = TestAppliance::start_with(|c| c.tenants.allowed = vec!["default".into(), "acme".into()]);
    let c = app.socket_client();
    let counter = app.root().join("spawns");
    let script = format!("echo x >> {}\necho '{{\"event\":\"result\",\"outputs\":{{\"n\":1}}}}'", counter.display());
    script_plugin_with(&app, &c, "counted", "", &script).await;
    let spec = CACHED.replace("plugin = \"noop\"\ninputs = { v", "plugin = \"counted\"\ninputs = { v");
    api_post(&c, "/dags", json!({ "spec": spec })).await;
    let spawns = || std::fs::read_to_string(&counter).map_or(0, |t| t.lines().count());
    let run1 = api_post(&c, "/runs", json!({ "dag": "cached" })).await["id"].as_str().unwrap().to_owned();
    assert_eq!(wait_end(&c, &run1).await["status"], "succeeded");
    assert_eq!(spawns(), 1);
    let run2 = api_post(&c, "/runs", json!({ "dag": "cached" })).await;
    assert_eq!(run2["status"], "succeeded", "completed from the cache in its start's commit");
    assert_eq!(spawns(), 1, "no plugin process for a hit");
    let a = run2["steps"].as_array().unwrap().iter().find(|s| s["name"] == "a").unwrap().clone();
    assert_eq!(a["runtime"]["cache"]["hit"], true, "{a}");
    assert_eq!(run2["execution"]["caching"]["enabled"], true);

    let run3 = api_post(&c, "/runs", json!({ "dag": "cached", "inputs": { "v": "2" } })).await;
    let run3 = run3["id"].as_str().unwrap().to_owned();
    wait_end(&c, &run3).await;
    assert_eq!(spawns(), 2);
    let explain = app.stella(&["orch", "cache", "explain", &run3, "a"]);
    assert!(stdout(&explain).contains("differs in inputs.v"), "{}", stdout(&explain));
    let metrics = String::from_utf8(c.get("/metrics").await.unwrap().body.to_vec()).unwrap();
    // Hits: run 2's a and b, run 3's b (a's output, its only input, did not change).
    assert!(metrics.contains("orchestrator_cache_hits_total 3"), "{metrics}");
    assert!(metrics.contains("orchestrator_cache_misses_total 3"), "{metrics}");

    // Another tenant: its own fingerprint (the tenant is a part), no entries of ours listed.
    let (_, acme) = create_token(&c, "acme", &["orchestrator:operate"], None).await;
    let ac = app.https_client(Some(&acme));
    let theirs = api_post(&ac, "/runs", json!({ "dag": "cached" })).await["id"].as_str().unwrap().to_owned();
    // Followed over HTTPS with the tenant's own token, as a remote operator does.
    assert_eq!(wait_end(&ac, &theirs).await["status"], "succeeded");
    assert_eq!(spawns(), 3, "a tenant never hits another tenant's entry");
    let listed: Value = ac.get(&format!("{API}/cache")).await.unwrap().json().unwrap();
    assert!(listed["entries"].as_array().unwrap().iter().all(|e| e["tenant"] == "acme"), "{listed}");
    let purge = app.stella(&["orch", "cache", "purge", "--dag", "cached"]);
    assert!(stdout(&purge).contains("purged"), "{}", stdout(&purge));
    let v = app.stella(&["orch", "db", "verify"]);
    assert!(v.status.success(), "{}", stdout(&v));
}

/// Over the API, with a real plugin process that blocks until it is let go: a second run with
/// the same key says what it waits for (`runtime.cache.waitingFor`, `orch run status`), and once
/// the first computation ends both runs succeed with one plugin process spawned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_over_the_api_spawn_one_plugin_process_per_key() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let (counter, go) = (app.root().join("spawns"), app.root().join("go"));
    script_plugin_with(&app, &c, "slow", "", &gated_script(&counter, &go, r#"{"n":1}"#)).await;
    let spec = CACHED.replace("plugin = \"noop\"\ninputs = { v", "plugin = \"slow\"\ninputs = { v");
    api_post(&c, "/dags", json!({ "spec": spec })).await;
    let spawns = || std::fs::read_to_string(&counter).map_or(0, |t| t.lines().count());
    let first = api_post(&c, "/runs", json!({ "dag": "cached" })).await["id"].as_str().unwrap().to_owned();
    let second = api_post(&c, "/runs", json!({ "dag": "cached" })).await;
    let a = second["steps"].as_array().unwrap().iter().find(|s| s["name"] == "a").unwrap().clone();
    assert_eq!(a["runtime"]["cache"]["waitingFor"], format!("{first}/a"), "{a}");
    assert!(a["waitReason"].as_str().unwrap().contains(&format!("waiting for {first}/a")), "{a}");
    let second = second["id"].as_str().unwrap().to_owned();
    let status = stdout(&app.stella(&["orch", "run", "status", &second]));
    assert!(status.contains(&format!("waiting for {first}/a to compute its cached result")), "{status}");
    std::fs::write(&go, "").unwrap();
    assert_eq!(wait_end(&c, &first).await["status"], "succeeded");
    let end = wait_end(&c, &second).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let a = end["steps"].as_array().unwrap().iter().find(|s| s["name"] == "a").unwrap().clone();
    assert_eq!((a["runtime"]["cache"]["hit"].as_bool(), a["outputs"]["n"].as_i64()), (Some(true), Some(1)), "{a}");
    assert_eq!(spawns(), 1, "one plugin process for the two runs' step a");
    let v = app.stella(&["orch", "db", "verify"]);
    assert!(v.status.success(), "{}", stdout(&v));
}
