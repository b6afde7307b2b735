//! The engine on virtual time, driven straight into the writer: a worker is played by the test
//! (lease, complete, fail), so every transition is deterministic. Scenarios read like the
//! runbook sections they cover (stuck runs, manual recovery, cancel).

use crate::support::Direct;
use serde_json::{Value, json};
use stella::domain::queue::QueueCommand;
use stella::domain::runs::Recovery;
use stella::domain::runs::RunCommand;
use stella::domain::runs::tables::RUNS;
use stella::domain::runs::tables::RunRecord;
use stella::domain::runs::tables::RunStatus;
use stella::domain::runs::tables::STEPS;
use stella::domain::runs::tables::StepRecord;
use stella::domain::runs::tables::StepState;
use stella::kernel::CommandError;
use stella::kernel::store::Record;
use stella::machine::Command;

const DIAMOND: &str = r#"
name = "diamond"
maxParallelSteps = 1
[inputs.target]
default = "prod"
[steps.a]
plugin = "noop"
inputs = { env = "${inputs.target}" }
[steps.b]
plugin = "noop"
needs = ["a"]
inputs = { from = "${steps.a.outputs.artifact}", label = "for ${inputs.target}" }
[steps.c]
plugin = "noop"
needs = ["a"]
[steps.d]
plugin = "noop"
needs = ["b", "c"]
"#;

pub(crate) fn register(d: &Direct, spec: &str) {
    let name = spec.lines().find_map(|l| l.strip_prefix("name = ")).unwrap().trim_matches('"').to_owned();
    stella::domain::runs::spec::compile(spec, &[]).unwrap();
    d.submit(Command::Run(RunCommand::RegisterDag { name, spec: spec.into(), unsigned: true })).unwrap();
}

pub(crate) fn start(d: &Direct, dag: &str, inputs: Value, token: Option<&str>) -> Result<String, CommandError> {
    let c = d.submit(Command::Run(RunCommand::Start {
        tenant: "default".into(),
        dag: dag.into(),
        inputs: inputs.as_object().cloned().unwrap_or_default(),
        run_token: token.map(str::to_owned),
    }))?;
    Ok(c.note.unwrap()[if c.entries.is_empty() { "existing" } else { "runId" }].as_str().unwrap().to_owned())
}

/// Leases every ready job of the builtin types: (job, token, step, inputs).
pub(crate) fn lease(d: &Direct) -> Vec<(String, u64, String, Value)> {
    let c = d
        .submit(Command::Queue(QueueCommand::Lease {
            tenant: None,
            worker: "w1".into(),
            worker_tenant: String::new(),
            types: vec!["noop".into(), "sleep".into(), "fail".into()],
            max: 256,
            ttl_ms: Some(60_000),
            env: None,
            agent: None,
        }))
        .unwrap();
    let started: Vec<&stella::kernel::ledger::Entry> = c.entries.iter().filter(|e| e.kind == "step.started").collect();
    c.entries
        .iter()
        .filter(|e| e.kind == "lease.granted")
        .flat_map(|e| e.data["leases"].as_array().unwrap().clone())
        .map(|g| {
            let job = g["jobId"].as_str().unwrap().to_owned();
            let step = started
                .iter()
                .find(|s| s.data["jobId"] == job.as_str())
                .map(|s| s.data["step"].as_str().unwrap().to_owned())
                .unwrap_or_default();
            let inputs = job_inputs(d, &job);
            (job, g["token"].as_u64().unwrap(), step, inputs)
        })
        .collect()
}

pub(crate) fn job_inputs(d: &Direct, job: &str) -> Value {
    let txn = d.store().read().unwrap();
    stella::machine::read::job(&txn, job).unwrap().unwrap().payload["inputs"].clone()
}

pub(crate) fn complete(
    d: &Direct,
    job: &str,
    token: u64,
    outputs: Value,
) -> Result<stella::kernel::Committed, CommandError> {
    d.submit(Command::Queue(QueueCommand::Complete {
        tenant: None,
        job: job.into(),
        token,
        result: Some(json!({ "outputs": outputs })),
    }))
}

pub(crate) fn fail(d: &Direct, job: &str, token: u64) {
    fail_as(d, job, token, true);
}

/// Fails the attempt, `retryable` or for good (the step fails without retries).
pub(crate) fn fail_as(d: &Direct, job: &str, token: u64, retryable: bool) {
    d.submit(Command::Queue(QueueCommand::Fail {
        tenant: None,
        job: job.into(),
        token,
        error: "exit status 3".into(),
        error_code: Some("exit_status".into()),
        retryable,
    }))
    .unwrap();
}

pub(crate) fn run(d: &Direct, id: &str) -> RunRecord {
    let txn = d.store().read().unwrap();
    RunRecord::from_json_bytes(txn.open_table(RUNS).unwrap().get(id).unwrap().unwrap().value()).unwrap()
}

pub(crate) fn step(d: &Direct, id: &str, name: &str) -> StepRecord {
    let txn = d.store().read().unwrap();
    let key = format!("{id}/{name}");
    StepRecord::from_json_bytes(txn.open_table(STEPS).unwrap().get(key.as_str()).unwrap().unwrap().value()).unwrap()
}

pub(crate) fn verify(d: &Direct) {
    let txn = d.store().read().unwrap();
    let report = stella::machine::verify(&txn).unwrap();
    assert!(report.ok, "{:?}", report.problem);
}

/// A run held by `maxParallelSteps = 1` shows the wait reason, then completes in order, with
/// inputs resolved from run inputs and earlier outputs.
#[test]
fn a_diamond_held_by_max_parallel_steps_shows_why_and_completes() {
    let d = Direct::new();
    register(&d, DIAMOND);
    let id = start(&d, "diamond", json!({ "target": "staging" }), None).unwrap();
    assert_eq!(id, "run-1");
    let got = lease(&d);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].2.as_str(), &got[0].3), ("a", &json!({ "env": "staging" })));
    assert_eq!(step(&d, &id, "a").state, StepState::Running);
    complete(&d, &got[0].0, got[0].1, json!({ "artifact": "web@1.4.1" })).unwrap();
    let (b, c) = (step(&d, &id, "b"), step(&d, &id, "c"));
    assert_eq!((b.state, c.state), (StepState::Queued, StepState::Pending));
    assert_eq!(c.wait.as_deref(), Some("maxParallelSteps=1 reached"));
    let got = lease(&d);
    assert_eq!(got[0].3, json!({ "from": "web@1.4.1", "label": "for staging" }));
    complete(&d, &got[0].0, got[0].1, json!({})).unwrap();
    assert_eq!(step(&d, &id, "c").state, StepState::Queued, "the freed slot went to the waiting step");
    let got = lease(&d);
    complete(&d, &got[0].0, got[0].1, json!({})).unwrap();
    let got = lease(&d);
    assert_eq!(got[0].2, "d");
    complete(&d, &got[0].0, got[0].1, json!({})).unwrap();
    let r = run(&d, &id);
    assert_eq!((r.status, r.terminal, r.active), (RunStatus::Succeeded, 4, 0));
    verify(&d);
}

/// Runbook §7: retry on a succeeded run is 409; a failed step fails the run once nothing else
/// can progress; retry of the last failed step completes it; skip passes a failure over.
#[test]
fn manual_recovery_applies_only_to_failed_runs() {
    let d = Direct::new();
    register(&d, &DIAMOND.replace("maxParallelSteps = 1", "maxParallelSteps = 4"));
    let id = start(&d, "diamond", json!({}), None).unwrap();
    let a = lease(&d).remove(0);
    complete(&d, &a.0, a.1, json!({ "artifact": "x" })).unwrap();
    let bc = lease(&d);
    assert_eq!(bc.len(), 2);
    let (b, c) = if bc[0].2 == "b" { (&bc[0], &bc[1]) } else { (&bc[1], &bc[0]) };
    fail(&d, &b.0, b.1);
    assert_eq!(run(&d, &id).status, RunStatus::Running, "c is still running");
    complete(&d, &c.0, c.1, json!({})).unwrap();
    let r = run(&d, &id);
    assert_eq!((r.status, r.failed), (RunStatus::Failed, 1));
    assert_eq!(step(&d, &id, "b").error_code.as_deref(), Some("exit_status"));
    assert_eq!(step(&d, &id, "d").state, StepState::Pending);

    let recover =
        |action| d.submit(Command::Run(RunCommand::Recover { tenant: None, run: id.clone(), action, step: None }));
    recover(Recovery::Retry).unwrap();
    assert!(matches!(recover(Recovery::Retry), Err(CommandError::Conflict { .. })), "a retry is in flight");
    let b2 = lease(&d).remove(0);
    assert_eq!(b2.2, "b");
    complete(&d, &b2.0, b2.1, json!({})).unwrap();
    let d_step = lease(&d).remove(0);
    complete(&d, &d_step.0, d_step.1, json!({})).unwrap();
    assert_eq!(run(&d, &id).status, RunStatus::Succeeded);
    assert!(
        matches!(recover(Recovery::Retry), Err(CommandError::Conflict { detail: m, .. }) if m.contains("is succeeded"))
    );

    let id2 = start(&d, "diamond", json!({}), None).unwrap();
    let a = lease(&d).remove(0);
    fail(&d, &a.0, a.1);
    assert_eq!(run(&d, &id2).status, RunStatus::Failed);
    d.submit(Command::Run(RunCommand::Recover { tenant: None, run: id2.clone(), action: Recovery::Skip, step: None }))
        .unwrap();
    assert_eq!(step(&d, &id2, "a").state, StepState::Skipped);
    assert_eq!(lease(&d).len(), 2, "skipping a released its dependants");
    verify(&d);
}

/// Cancel: queued jobs are cancelled, a running step's lease becomes stale, the run ends
/// cancelled; cancelling again changes nothing.
#[test]
fn cancel_stops_queued_and_running_steps() {
    let d = Direct::new();
    register(&d, &DIAMOND.replace("maxParallelSteps = 1", "maxParallelSteps = 4"));
    let id = start(&d, "diamond", json!({}), None).unwrap();
    let a = lease(&d).remove(0);
    complete(&d, &a.0, a.1, json!({})).unwrap();
    let running = lease(&d).remove(0);
    let c = d.submit(Command::Run(RunCommand::Cancel { tenant: None, run: id.clone() })).unwrap();
    assert_eq!(c.entries.iter().filter(|e| e.kind == "job.cancelled").count(), 2);
    assert_eq!(run(&d, &id).status, RunStatus::Cancelled);
    assert!(matches!(complete(&d, &running.0, running.1, json!({})), Err(CommandError::Conflict { .. })));
    assert!(lease(&d).is_empty());
    let again = d.submit(Command::Run(RunCommand::Cancel { tenant: None, run: id.clone() })).unwrap();
    assert!(again.entries.is_empty());
    verify(&d);
}

/// Two outcomes of one run in one tick (both parallel steps' leases expire together) are
/// planned one after the other on the run's working copy: the run fails in that same tick,
/// once, and the replayed projection agrees.
#[test]
fn two_leases_of_one_run_expiring_in_one_tick_settle_it_in_that_tick() {
    let d = Direct::new();
    register(
        &d,
        "name = \"pair\"\n[steps.a]\nplugin = \"noop\"\n[steps.b]\nplugin = \"noop\"\n[steps.c]\nplugin = \"noop\"\nneeds = [\"a\", \"b\"]\n",
    );
    let id = start(&d, "pair", json!({}), None).unwrap();
    assert_eq!(lease(&d).len(), 2, "a and b run side by side");
    d.clock.advance_ms(61_000);
    let tick = d.submit(Command::Tick).unwrap();
    let kinds: Vec<&str> = tick.entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "lease.expired").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "step.failed").count(), 2, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "run.failed").count(), 1, "{kinds:?}");
    let r = run(&d, &id);
    assert_eq!((r.status, r.active, r.failed, r.terminal), (RunStatus::Failed, 0, 2, 2));
    assert_eq!(step(&d, &id, "c").state, StepState::Pending);
    verify(&d);
}

/// The same runToken with the same inputs returns the same run; with other inputs it is a
/// conflict naming the run.
#[test]
fn a_run_token_makes_start_idempotent() {
    let d = Direct::new();
    register(&d, DIAMOND);
    let first = start(&d, "diamond", json!({ "target": "prod" }), Some("rel-42")).unwrap();
    assert_eq!(start(&d, "diamond", json!({ "target": "prod" }), Some("rel-42")).unwrap(), first);
    assert_eq!(start(&d, "diamond", json!({}), Some("rel-42")).unwrap(), first, "defaults give the same inputs");
    let clash = start(&d, "diamond", json!({ "target": "qa" }), Some("rel-42"));
    assert!(matches!(&clash, Err(CommandError::Conflict { detail: m, .. }) if m.contains(&first)), "{clash:?}");
    let unknown = start(&d, "diamond", json!({ "colour": "red" }), None);
    assert!(matches!(&unknown, Err(CommandError::Invalid { detail: m, .. }) if m.contains("colour")), "{unknown:?}");
}

/// A step with retries backs off and runs again; the run survives a crash of everything in
/// memory between the attempts.
#[test]
fn a_retried_step_backs_off_and_the_run_survives_a_reopen() {
    let mut d = Direct::new();
    register(&d, "name = \"one\"\n[steps.only]\nplugin = \"noop\"\nretries = 1\nbackoff = \"2s\"\n");
    let id = start(&d, "one", json!({}), None).unwrap();
    let first = lease(&d).remove(0);
    fail(&d, &first.0, first.1);
    assert_eq!(step(&d, &id, "only").state, StepState::Queued);
    assert!(lease(&d).is_empty(), "backing off");
    d.reopen();
    d.clock.advance_ms(3_000);
    d.submit(Command::Tick).unwrap();
    let second = lease(&d).remove(0);
    assert_eq!(second.0, first.0, "the same job, second attempt");
    complete(&d, &second.0, second.1, json!({})).unwrap();
    let s = step(&d, &id, "only");
    assert_eq!((s.state, s.attempts), (StepState::Succeeded, 2));
    assert_eq!(run(&d, &id).status, RunStatus::Succeeded);
    verify(&d);
}

/// Cron triggers on virtual time: a due schedule starts a run; pausing, or disabling the
/// active version, stops it; resuming picks up at the next slot; missed fires collapse.
#[test]
fn cron_triggers_start_runs_and_stop_when_paused_or_disabled() {
    let d = Direct::new();
    let spec = "name = \"nightly\"\n[inputs.env]\ndefault = \"staging\"\n[[cron]]\nschedule = \"*/5 * * * *\"\ninputs = { env = \"prod\" }\n[steps.a]\nplugin = \"noop\"\n";
    register(&d, spec);
    let runs = |d: &Direct| {
        let txn = d.store().read().unwrap();
        stella::machine::read::runs(&txn, None, 100).unwrap()
    };
    let tick_after = |d: &Direct, ms: i64| {
        d.clock.advance_ms(ms);
        d.submit(Command::Tick).unwrap();
    };
    tick_after(&d, 5 * 60_000);
    let started = runs(&d);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].inputs, json!({ "env": "prod" }));
    tick_after(&d, 60 * 60_000);
    assert_eq!(runs(&d).len(), 2, "twelve missed fires collapse into one");
    d.submit(Command::Run(RunCommand::Schedule {
        dag: "nightly".into(),
        action: stella::domain::runs::ScheduleAction::Pause,
    }))
    .unwrap();
    tick_after(&d, 10 * 60_000);
    assert_eq!(runs(&d).len(), 2, "paused");
    d.submit(Command::Run(RunCommand::Schedule {
        dag: "nightly".into(),
        action: stella::domain::runs::ScheduleAction::Resume,
    }))
    .unwrap();
    tick_after(&d, 5 * 60_000);
    assert_eq!(runs(&d).len(), 3, "resumed");
    d.submit(Command::Run(RunCommand::DagVersion {
        name: "nightly".into(),
        version: None,
        action: stella::domain::runs::DagAction::Disable,
    }))
    .unwrap();
    let fired = |d: &Direct| {
        let txn = d.store().read().unwrap();
        let entries = stella::machine::read::ledger_after(&txn, 0, 10_000).unwrap();
        entries.iter().filter(|e| e.kind == "schedule.fired").count()
    };
    let before = fired(&d);
    tick_after(&d, 30 * 60_000);
    assert_eq!(runs(&d).len(), 3, "a disabled version's triggers stop");
    assert_eq!(fired(&d), before, "and do not fire (and fail) at all while it is disabled");
    d.submit(Command::Run(RunCommand::DagVersion {
        name: "nightly".into(),
        version: None,
        action: stella::domain::runs::DagAction::Enable,
    }))
    .unwrap();
    tick_after(&d, 5 * 60_000);
    assert_eq!(runs(&d).len(), 4, "enabled again, the triggers resume");
    verify(&d);
}

/// A step that declares a lock is held back while another holder has it, runs with the lock
/// once it is free (owned by its job, so a force-release would fence it), and releases it when
/// its attempt ends.
#[test]
fn a_step_waits_for_its_lock_and_releases_it_when_done() {
    use stella::domain::locks::LockCommand;
    let d = Direct::new();
    register(
        &d,
        "name = \"deploy\"\n[inputs.target]\ndefault = \"prod\"\n[steps.ship]\nplugin = \"noop\"\nlocks = [\"env:${inputs.target}\"]\n",
    );
    let held = d
        .submit(Command::Lock(LockCommand::Acquire {
            tenant: "default".into(),
            resource: "env:prod".into(),
            owner: "operator".into(),
            ttl_ms: None,
        }))
        .unwrap();
    let token = held.entries[0].data["token"].as_u64().unwrap();
    let id = start(&d, "deploy", json!({}), None).unwrap();
    assert!(lease(&d).is_empty(), "env:prod is held by the operator");
    assert_eq!(step(&d, &id, "ship").state, StepState::Queued);
    d.submit(Command::Lock(LockCommand::Release {
        tenant: None,
        lock_id: "lock-1".into(),
        owner: "operator".into(),
        token,
    }))
    .unwrap();
    let got = lease(&d);
    assert_eq!(got.len(), 1, "the lock is free: the step runs");
    let locks = |d: &Direct| {
        let txn = d.store().read().unwrap();
        stella::machine::read::locks(&txn, None, 10).unwrap()
    };
    assert_eq!(locks(&d)[0].holder.as_ref().unwrap().owner, format!("job:{}", got[0].0));
    complete(&d, &got[0].0, got[0].1, json!({})).unwrap();
    assert!(locks(&d).is_empty(), "released with the attempt");
    assert_eq!(run(&d, &id).status, RunStatus::Succeeded);
    verify(&d);
}
