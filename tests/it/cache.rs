//! Step result caching (runbook 004 §5): a hit completes the step without spawning its plugin;
//! a changed input misses and `orch cache explain` names it; an expired entry misses (virtual
//! time); a retry runs again; entries are the tenant's own; purge.

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
