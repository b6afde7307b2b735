//! What a new operator hit in the runbook drills (runbooks 002–004 against `serve --dev`):
//! each test opens with the bug as it was seen and fails without its fix.

use crate::support::*;
use serde_json::{Value, json};
use stella::client::Client;

async fn register(c: &Client, spec: &str) {
    api_post(c, "/dags", json!({ "spec": spec })).await;
}

fn json_out(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

async fn start(c: &Client, dag: &str) -> String {
    api_post(c, "/runs", json!({ "dag": dag })).await["id"].as_str().unwrap().to_owned()
}

/// Bug: a step waiting for a lock never started after the lock was freed. `orch locks acquire
/// env:prod --owner deploy-7`, a run whose step takes `env:prod`, then `orch locks release
/// lock-1 --force`: 100 s later the step still said "waiting for a worker for noop" with the
/// local worker alive; it ran only when some other job of that type was enqueued, because
/// nothing woke the executor on a freed lock. The same when the lock lapsed by its TTL. And
/// `orch locks list` showed `-` under WAITERS while the step waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_or_expired_lock_wakes_the_step_that_waits_for_it() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    register(&c, "name = \"ship\"\n[steps.ship]\nplugin = \"noop\"\nlocks = [\"env:prod\"]\n").await;
    let acquired =
        json_out(&app.stella(&[
            "--format", "json", "orch", "locks", "acquire", "env:prod", "--owner", "deploy-7", "--ttl", "10m",
        ]));
    let lock = acquired["lockId"].as_str().unwrap().to_owned();
    let id = start(&c, "ship").await;
    let listed = json_out(&app.stella(&["--format", "json", "orch", "locks", "list", "--env", "prod"]));
    let waiters = listed["locks"][0]["waiters"].as_array().unwrap();
    assert!(
        waiters.iter().any(|w| w["owner"].as_str().unwrap().starts_with(&format!("{id}/ship"))),
        "the waiting step is listed: {listed}"
    );
    let text = stdout(&app.stella(&["orch", "locks", "list"]));
    assert!(text.contains(&format!("{id}/ship")), "{text}");
    let released = app.stella(&["orch", "locks", "release", &lock, "--force", "--reason", "holder crashed"]);
    assert!(released.status.success(), "{}", stderr(&released));
    wait_for_event(&c, &id, "event: run.succeeded").await;

    // By its TTL: the lock lapses, the timer's tick frees it, and that wakes the step too.
    let acquired =
        json_out(&app.stella(&[
            "--format", "json", "orch", "locks", "acquire", "env:prod", "--owner", "deploy-8", "--ttl", "1s",
        ]));
    assert_eq!(acquired["granted"], true);
    let id = start(&c, "ship").await;
    wait_for_event(&c, &id, "event: run.succeeded").await;
    let entries = api_get(&c, "/ledger?limit=1000").await;
    assert!(entries["entries"].as_array().unwrap().iter().any(|e| e["kind"] == "lock.expired"));
}

/// Bug: kill -9 of the daemon mid-step failed the step with `lease_expired` (and so the run,
/// with no retries left) once the dead executor's lease lapsed, and for that time `status`
/// showed the step running although the new daemon had killed its plugin. An attempt cut
/// short by the appliance's own restart is requeued at once as interrupted, without counting
/// against the step's retries; a crash loop ends in a clear `interrupted` failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_cut_short_by_a_daemon_crash_runs_again_without_spending_a_retry() {
    // A lease far longer than the test: only the interruption can free the step.
    let mut app = TestAppliance::start_with(|c| c.queue.lease_ttl_ms = 600_000);
    let c = app.socket_client();
    register(&c, "name = \"crash\"\n[steps.a]\nplugin = \"sleep\"\ninputs = { ms = 2000 }\n").await;
    let id = start(&c, "crash").await;
    wait_for_event(&c, &id, "event: step.started").await;
    app.kill9();
    app.launch();
    let c = app.socket_client();
    wait_for_event(&c, &id, "event: run.succeeded").await;
    let v = api_get(&c, &format!("/runs/{id}")).await;
    let a = &v["steps"][0];
    assert_eq!(a["state"], "succeeded");
    assert_eq!(a["attempts"], 2, "the interrupted attempt, then one more: {v}");
    assert!(a["error"].is_null(), "a succeeded step shows no earlier error as current: {v}");
    let entries = api_get(&c, "/ledger?limit=1000").await["entries"].as_array().unwrap().clone();
    let kinds: Vec<&str> = entries.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "lease.interrupted").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "step.interrupted").count(), 1, "{kinds:?}");
    assert!(!kinds.contains(&"lease.expired"), "{kinds:?}");
    let trace = stdout(&app.stella(&["orch", "run", "trace", &id, "--verbose"]));
    assert!(trace.contains("interrupted"), "{trace}");
    assert!(app.stella(&["orch", "db", "verify"]).status.success());
}

/// The bound on interruptions: a step whose every attempt dies with the appliance fails with
/// `interrupted` after the third restart instead of looping forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_ends_in_a_clear_interrupted_failure() {
    let mut app = TestAppliance::start_with(|c| c.queue.lease_ttl_ms = 600_000);
    let c = app.socket_client();
    register(&c, "name = \"loop\"\n[steps.a]\nplugin = \"sleep\"\ninputs = { ms = 60000 }\n").await;
    let id = start(&c, "loop").await;
    for round in 1..=4 {
        // Follow the stream to the round-th start: the attempt runs, then the daemon dies.
        let c = app.socket_client();
        let mut seen = String::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            c.stream(&format!("{API}/runs/stream?run={id}"), Some(0), |chunk| {
                seen.push_str(&String::from_utf8_lossy(chunk));
                seen.matches("event: step.started").count() < round && !seen.contains("event: run.failed")
            }),
        )
        .await;
        if seen.contains("event: run.failed") {
            break;
        }
        app.kill9();
        app.launch();
    }
    let c = app.socket_client();
    wait_for_event(&c, &id, "event: run.failed").await;
    let v = api_get(&c, &format!("/runs/{id}")).await;
    assert_eq!(v["steps"][0]["errorCode"], "interrupted", "{v}");
    assert!(v["steps"][0]["error"].as_str().unwrap().contains("interrupted 4 times"), "{v}");
}

/// Bug: `orch db verify` on the stopped store of a crashed daemon printed `Database repair
/// aborted.` (exit 10) and nothing else. It now says what happened and what to do, and
/// `orch db repair` runs the repair offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_of_a_crashed_store_says_it_needs_repair_and_repair_does_it_offline() {
    let mut app = TestAppliance::start();
    run_sample(&app.socket_client()).await;
    app.kill9();
    let verify = app.stella(&["orch", "db", "verify"]);
    assert_eq!(verify.status.code(), Some(10), "{}", stderr(&verify));
    let err = stderr(&verify);
    assert!(err.contains("not closed cleanly") && err.contains("stella orch db repair"), "{err}");
    let repair = app.stella(&["orch", "db", "repair"]);
    assert!(repair.status.success(), "{}", stderr(&repair));
    assert!(stdout(&repair).starts_with("ok: "), "{}", stdout(&repair));
    let verify = app.stella(&["orch", "db", "verify", "--offline"]);
    assert!(verify.status.success(), "{}", stderr(&verify));

    // While a daemon has it open, a repair is refused naming the process that holds it.
    app.launch();
    let pid = app.pid();
    let refused = app.stella(&["orch", "db", "repair"]);
    assert!(!refused.status.success(), "{}", stdout(&refused));
    let err = stderr(&refused);
    assert!(err.contains("in use by another process") && err.contains(&format!("pid {pid} (stella)")), "{err}");
}

/// Leases one `noop` job as an outside worker and fails it for good (no retries left).
async fn fail_one(c: &Client) -> String {
    let l = api_post(c, "/leases", json!({ "worker": "agent-1", "types": ["noop"], "wait": "10s" })).await["leases"][0]
        .clone();
    let job = l["jobId"].as_str().unwrap().to_owned();
    api_post(
        c,
        &format!("/leases/{job}/fail"),
        json!({ "token": l["token"], "error": "disk full", "retryable": false }),
    )
    .await;
    job
}

async fn complete_one(c: &Client) {
    let l = api_post(c, "/leases", json!({ "worker": "agent-1", "types": ["noop"], "wait": "10s" })).await["leases"][0]
        .clone();
    api_post(c, &format!("/leases/{}/complete", l["jobId"].as_str().unwrap()), json!({ "token": l["token"] })).await;
}

fn dlq_ids(app: &TestAppliance) -> Vec<String> {
    let v = json_out(&app.stella(&["--format", "json", "orch", "dlq", "list"]));
    v["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect()
}

/// Bug: `orch dlq replay` of a DAG step's dead job ran the plugin outside its run: the job
/// succeeded, the run stayed failed; and after `orch run retry` the old DLQ entry stayed and
/// could run the side effect a second time. A step's dead job is replayed through its run (a
/// retry of that step), refused with 409 once the run has moved on, and it leaves the DLQ when
/// its run retries, skips or aborts the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_step_job_is_replayed_through_its_run_and_leaves_the_dlq_when_the_run_recovers() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let c = app.socket_client();
    register(&c, "name = \"one\"\n[steps.work]\nplugin = \"noop\"\n").await;
    register(&c, "name = \"pair\"\n[steps.a]\nplugin = \"noop\"\n[steps.b]\nplugin = \"noop\"\n").await;

    // Replay through the run: the run completes, the DLQ is empty.
    let run = start(&c, "one").await;
    let dead = fail_one(&c).await;
    assert_eq!(dlq_ids(&app), vec![dead.clone()]);
    let replayed = app.stella(&["orch", "dlq", "replay", &dead]);
    assert!(replayed.status.success(), "{}", stderr(&replayed));
    assert!(stdout(&replayed).contains(&format!("through its run: step {run}/work")), "{}", stdout(&replayed));
    assert!(dlq_ids(&app).is_empty());
    assert_eq!(api_get(&c, &format!("/runs/{run}")).await["status"], "running");
    complete_one(&c).await;
    assert_eq!(api_get(&c, &format!("/runs/{run}")).await["status"], "succeeded");

    // Retry, skip and abort of the run take the step's dead job out of the DLQ.
    for action in ["retry", "skip", "abort"] {
        let run = start(&c, "one").await;
        fail_one(&c).await;
        assert_eq!(dlq_ids(&app).len(), 1);
        let out = app.stella(&["orch", "run", action, &run]);
        assert!(out.status.success(), "{action}: {}", stderr(&out));
        assert!(dlq_ids(&app).is_empty(), "after {action}");
        if action == "retry" {
            complete_one(&c).await;
        }
    }

    // Two failed steps; a retry of one moves the run on, so the other's replay is a conflict.
    let run = start(&c, "pair").await;
    let first = fail_one(&c).await;
    let second = fail_one(&c).await;
    assert_eq!(api_get(&c, &format!("/runs/{run}")).await["status"], "failed");
    let first_step = api_get(&c, &format!("/jobs/{first}")).await["payload"]["step"].as_str().unwrap().to_owned();
    assert!(app.stella(&["orch", "run", "retry", &run, "--step", &first_step]).status.success());
    assert_eq!(dlq_ids(&app), vec![second.clone()]);
    let refused = app.stella(&["orch", "dlq", "replay", &second]);
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("replayed only through its run"), "{}", stderr(&refused));
    assert!(app.stella(&["orch", "db", "verify"]).status.success());
}

fn budget_of(d: &Direct, job_type: &str) -> Option<stella::domain::queue::tables::Budget> {
    let txn = d.store().read().unwrap();
    let queues = stella::machine::read::queues(&txn).unwrap();
    queues.into_iter().find(|(t, _)| t == job_type).and_then(|(_, q)| q.budgets.get("*").cloned())
}

fn set_budget(d: &Direct, rate: Option<u64>, max_depth: Option<u64>, for_ms: Option<u64>) {
    use stella::domain::queue::QueueCommand;
    let budget = stella::domain::queue::tables::Budget {
        rate_milli_per_s: rate,
        burst: None,
        max_depth,
        until_ms: None,
        set_by: "test".into(),
        previous: None,
    };
    let cmd = QueueCommand::SetBudget { job_type: "build".into(), tenant: "*".into(), budget, for_ms };
    d.submit(stella::machine::Command::Queue(cmd)).unwrap();
}

/// Bug: after `budget set build --max-depth 3 --rate 100/s`, a temporary `budget set build
/// --rate 1/s --for 15s` dropped the depth limit, and at its end the budget was cleared rather
/// than restored (runbook 003, Backpressure: "restore defaults after stability"). A `--for`
/// change overrides only what it names and restores the budget it overrode at its end (on
/// virtual time here); without an earlier budget it ends in none.
#[test]
fn a_temporary_budget_overrides_only_what_it_names_and_restores_the_previous_one() {
    let d = Direct::new();
    set_budget(&d, Some(100_000), Some(3), None);
    set_budget(&d, Some(1_000), None, Some(15_000));
    let temporary = budget_of(&d, "build").unwrap();
    assert_eq!((temporary.rate_milli_per_s, temporary.max_depth), (Some(1_000), Some(3)), "depth kept");
    assert!(temporary.until_ms.is_some());
    // A second temporary change on top still restores the permanent budget.
    set_budget(&d, None, Some(1), Some(15_000));
    assert_eq!(budget_of(&d, "build").unwrap().max_depth, Some(1));
    d.clock.advance_ms(14_000);
    d.submit(stella::machine::Command::Tick).unwrap();
    assert_eq!(budget_of(&d, "build").unwrap().max_depth, Some(1), "not yet due");
    d.clock.advance_ms(2_000);
    d.submit(stella::machine::Command::Tick).unwrap();
    let restored = budget_of(&d, "build").unwrap();
    assert_eq!((restored.rate_milli_per_s, restored.max_depth, restored.until_ms), (Some(100_000), Some(3), None));

    let d = Direct::new();
    set_budget(&d, Some(1_000), None, Some(1_000));
    d.clock.advance_ms(1_000);
    d.submit(stella::machine::Command::Tick).unwrap();
    assert_eq!(budget_of(&d, "build"), None);
    let txn = d.store().read().unwrap();
    let report = stella::machine::verify(&txn).unwrap();
    assert!(report.problem.is_none(), "{:?}", report.problem);
}

/// The text output of a temporary budget says when it ends and what comes back then.
#[test]
fn queue_status_text_shows_when_a_temporary_budget_ends_and_what_it_restores() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    assert!(
        app.stella(&["orch", "queue", "budget", "set", "build", "--max-depth", "3", "--rate", "100/s"])
            .status
            .success()
    );
    let out = app.stella(&["orch", "queue", "budget", "set", "build", "--rate", "1/s", "--for", "15m"]);
    let text = stdout(&out);
    assert!(text.contains("*:1/s depth<=3 until ") && text.contains(", then 100/s depth<=3"), "{text}");
}

/// Bug: after `orch dag disable D --version 1` (its active version), `orch schedule list` still
/// showed the trigger active and the ledger gained a failing `schedule.fired` every minute.
/// Disabling the active version pauses its triggers, shown with the reason; `schedule clear`
/// says what it cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_the_active_version_pauses_its_triggers_and_clear_names_what_it_cleared() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let c = app.socket_client();
    register(&c, "name = \"nightly\"\n[[cron]]\nschedule = \"* * * * *\"\n[steps.a]\nplugin = \"noop\"\n").await;
    assert!(app.stella(&["orch", "dag", "disable", "nightly", "--version", "1"]).status.success());
    let v = json_out(&app.stella(&["--format", "json", "orch", "schedule", "list"]));
    let row = &v["schedules"][0];
    assert_eq!((row["disabled"].as_bool(), row["nextAt"].as_str()), (Some(true), None), "{v}");
    let text = stdout(&app.stella(&["orch", "schedule", "list"]));
    assert!(text.contains("paused: DAG nightly version 1 is disabled"), "{text}");
    assert!(app.stella(&["orch", "dag", "enable", "nightly", "--version", "1"]).status.success());
    let v = json_out(&app.stella(&["--format", "json", "orch", "schedule", "list"]));
    assert!(v["schedules"][0]["nextAt"].is_string(), "armed again: {v}");
    let cleared = app.stella(&["orch", "schedule", "clear", "nightly"]);
    assert!(stdout(&cleared).contains("cleared schedule 0 (* * * * *) of nightly"), "{}", stdout(&cleared));
}

/// Bug: `orch run stream run-999 --after 0 --until-done` (and `--dag no-such-dag`) waited
/// forever for a run that does not exist. Both are a 404 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_an_unknown_run_or_dag_is_a_404_at_once() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    for args in [
        &["orch", "run", "stream", "run-999", "--after", "0", "--until-done"][..],
        &["orch", "run", "stream", "--dag", "no-such-dag", "--until-done"][..],
    ] {
        let out = app.stella(args);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    }
}

/// Bug: `orch run retry run-9 --step run-3/work` was accepted and retried run-9's `work`. A
/// step record id of another run is refused (422, naming it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_id_of_another_run_is_refused() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let c = app.socket_client();
    register(&c, "name = \"one\"\n[steps.work]\nplugin = \"noop\"\n").await;
    let other = start(&c, "one").await;
    complete_one(&c).await;
    let run = start(&c, "one").await;
    fail_one(&c).await;
    let step = format!("{other}/work");
    let r = c.post(&format!("{API}/runs/{run}/actions/retry"), &json!({ "stepRecordId": step })).await.unwrap();
    assert_eq!(r.status, 422);
    assert_eq!(
        (r.json().unwrap()["code"].clone(), r.json().unwrap()["field"].clone()),
        (json!("invalid_field"), json!("step"))
    );
    assert!(r.json().unwrap()["detail"].as_str().unwrap().contains(&format!("belongs to run {other}")));
    let out = app.stella(&["orch", "run", "retry", &run, "--step", &step]);
    assert!(!out.status.success());
    assert_eq!(api_get(&c, &format!("/runs/{run}")).await["status"], "failed", "nothing was retried");
    assert!(app.stella(&["orch", "run", "retry", &run, "--step", &format!("{run}/work")]).status.success());
}

/// Bug: `orch queue pause no-such-type` succeeded and left a phantom type row. An unknown type
/// is refused unless `--create` says to pause it before its first job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_an_unknown_job_type_is_refused_unless_create() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let out = app.stella(&["orch", "queue", "pause", "no-such-type"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("--create"), "{}", stderr(&out));
    let status = json_out(&app.stella(&["--format", "json", "orch", "queue", "status"]));
    assert!(!status["types"].as_array().unwrap().iter().any(|t| t["type"] == "no-such-type"), "{status}");
    assert!(app.stella(&["orch", "queue", "pause", "sleep"]).status.success(), "a built-in kind is known");
    assert!(app.stella(&["orch", "queue", "pause", "nightly-report", "--create"]).status.success());
    let status = json_out(&app.stella(&["--format", "json", "orch", "queue", "status"]));
    assert!(status["types"].as_array().unwrap().iter().any(|t| t["type"] == "nightly-report" && t["paused"] == true));
}

/// Bug: `stella service restart orchestrator` ignored `--state-dir` and, without systemd,
/// failed with systemctl's own error. With a dev appliance named, it restarts that appliance in
/// place (same process, same terminal) and returns once the new daemon answers; a production
/// appliance says it is restarted by systemd; without systemd the command says so in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_restart_restarts_a_named_dev_appliance_in_place() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let before = api_get(&c, "/status").await["startedAt"].as_str().unwrap().to_owned();
    let out = app.stella(&["service", "restart", "orchestrator"]);
    assert!(out.status.success(), "{}{}", stderr(&out), app.log());
    assert!(stdout(&out).starts_with("restarted: "), "{}", stdout(&out));
    let after = api_get(&c, "/status").await;
    assert_ne!(after["startedAt"], before.as_str());
    run_sample(&c).await;
    let entries = api_get(&c, "/ledger?limit=1000").await;
    let starts = entries["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "appliance.started").count();
    assert_eq!(starts, 2, "one start, then the restart");

    let prod = TestAppliance::start_production();
    let out = prod.stella(&["service", "restart", "orchestrator"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("systemctl restart stella.service"), "{}", stderr(&out));

    if !std::path::Path::new("/run/systemd/system").exists() {
        let out = std::process::Command::new(STELLA).args(["service", "restart", "orchestrator"]).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("does not run systemd"), "{err}");
    }
}

/// Found in the drills: `audit verify` on an auditor's machine (no local trust store) and
/// without `--signers` failed on a missing file. It says to pass `--signers` and how to make
/// the file, and `keys export-appliance --allowed-signers` makes it: with that file alone the
/// pack verifies elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_without_a_trust_store_is_told_how_to_get_the_signers_file() {
    let app = TestAppliance::start();
    run_sample(&app.socket_client()).await;
    let pack = app.root().join("pack");
    let out = app.stella(&["export", "--out", pack.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = app.stella(&["keys", "export-appliance", "--allowed-signers"]);
    assert!(line.status.success(), "{}", stderr(&line));
    assert!(stdout(&line).starts_with("appliance namespaces=\"stella-export@stella.invalid\" ssh-ed25519 "));
    let auditor = tempfile::tempdir().unwrap();
    let signers = auditor.path().join("allowed_signers");
    std::fs::write(&signers, stdout(&line)).unwrap();
    let elsewhere = |args: &[&str]| {
        std::process::Command::new(STELLA).arg("--state-dir").arg(auditor.path()).args(args).output().unwrap()
    };
    let refused = elsewhere(&["audit", "verify", pack.to_str().unwrap()]);
    assert!(!refused.status.success());
    let err = stderr(&refused);
    assert!(err.contains("--signers") && err.contains("stella keys export-appliance --allowed-signers"), "{err}");
    let ok = elsewhere(&["audit", "verify", pack.to_str().unwrap(), "--signers", signers.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
}

/// The smaller drill findings, each through the CLI: `run cancel` of a finished run said
/// nothing; `dag rollback --version 9` answered 409 where `disable` answered 404; the DAG
/// version table's header was misaligned (an empty column title); `(declared: )` when a DAG
/// declares no inputs; `dlq purge --all` of an empty DLQ was a usage error; the inputs hash
/// only in JSON; `audit report` recorded a pause, resume or budget change only as "queue build".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smaller_drill_findings() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let run = run_sample(&c).await;
    let out = app.stella(&["orch", "run", "cancel", &run]);
    assert!(out.status.success());
    assert_eq!(stdout(&out), format!("{run} already succeeded; nothing to cancel\n"));

    let out = app.stella(&["orch", "dag", "rollback", "sample-pipeline", "--version", "9"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let table = stdout(&app.stella(&["orch", "dag", "show", "sample-pipeline"]));
    let header = table.lines().nth(1).unwrap();
    assert!(header.starts_with("VERSION  ACTIVE  STATE"), "{table}");

    register(&c, "name = \"bare\"\n[steps.a]\nplugin = \"noop\"\n").await;
    let out = app.stella(&["orch", "run", "start", "bare", "--input", "x=1"]);
    assert!(
        stderr(&out).contains("it declares no inputs") && !stderr(&out).contains("(declared: )"),
        "{}",
        stderr(&out)
    );

    let snapshot = app.root().join("empty.ndjson");
    let out = app.stella(&["orch", "dlq", "purge", "--all", "--snapshot", snapshot.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("the dead-letter queue is empty; nothing to purge"), "{}", stdout(&out));

    let status = stdout(&app.stella(&["orch", "run", "status", &run]));
    let hash = api_get(&c, &format!("/runs/{run}")).await["inputsHash"].as_str().unwrap().to_owned();
    assert!(status.contains(&format!("(sha256 {hash})")), "{status}");

    assert!(app.stella(&["orch", "queue", "pause", "noop"]).status.success());
    assert!(app.stella(&["orch", "queue", "resume", "noop"]).status.success());
    assert!(app.stella(&["orch", "queue", "budget", "set", "noop", "--rate", "5/s", "--for", "10m"]).status.success());
    let pack = app.root().join("pack");
    assert!(app.stella(&["export", "--out", pack.to_str().unwrap()]).status.success());
    let store = app.root().join("audit.redb");
    let imported = app.stella(&["audit", "import", "--audit-store", store.to_str().unwrap(), pack.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    let report = stdout(&app.stella(&["audit", "report", "--audit-store", store.to_str().unwrap()]));
    for action in ["paused job type", "resumed job type", "set budget"] {
        assert!(report.contains(action), "{action} in {report}");
    }
    assert!(report.contains("rate 5/s") && report.contains("until "), "the budget's detail: {report}");
}
