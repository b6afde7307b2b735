//! Sub-orchestrations (runbook 004 §3): a step that starts a child run of another DAG and ends
//! as the child ends, in the child's last transaction; the links both ways; a child's failure
//! naming its root cause; retry (a new child) and skip; cancel reaching children and
//! grandchildren; unknown, disabled, cyclic, too deep and too wide children refused with a
//! code; kill -9 while the parent goes on after its child. Each scenario ends with `db verify`.

use crate::engine_model::{complete, fail_as, lease, register, run, start, step, verify};
use crate::support::*;
use serde_json::{Value, json};
use stella::domain::appliance::ApplianceCommand;
use stella::domain::runs::tables::{RunStatus, StepState};
use stella::domain::runs::{DagAction, Recovery, RunCommand};
use stella::kernel::CommandError;
use stella::machine::Command;

const CHILD: &str = r#"
name = "child"
[inputs.x]
[steps.work]
plugin = "noop"
inputs = { x = "${inputs.x}" }
"#;

const PARENT: &str = r#"
name = "parent"
[inputs.x]
default = "1"
[steps.prep]
plugin = "noop"
inputs = { x = "${inputs.x}" }
[steps.sub]
orchestration = "child"
needs = ["prep"]
inputs = { x = "${steps.prep.outputs.x}" }
[steps.after]
plugin = "noop"
needs = ["sub"]
inputs = { y = "${steps.sub.outputs.y}", child = "${steps.sub.outputs.childRunId}" }
"#;

fn kinds(c: &stella::kernel::Committed) -> Vec<String> {
    c.entries.iter().map(|e| e.kind.clone()).collect()
}

fn recover(d: &Direct, id: &str, action: Recovery, step: Option<&str>) -> Result<Vec<String>, CommandError> {
    let c = d.submit(Command::Run(RunCommand::Recover {
        tenant: None,
        run: id.into(),
        action,
        step: step.map(str::to_owned),
    }))?;
    Ok(kinds(&c))
}

fn set(d: &Direct, key: &str, value: &str) {
    d.submit(Command::Appliance(ApplianceCommand::SetConfig { key: key.into(), value: value.into() })).unwrap();
}

/// Starts `parent` and completes `prep` with `x`; returns the parent run and its child.
fn to_child(d: &Direct) -> (String, String) {
    let id = start(d, "parent", json!({}), None).unwrap();
    let (job, token, s, _) = lease(d).remove(0);
    assert_eq!(s, "prep");
    complete(d, &job, token, json!({ "x": "v" })).unwrap();
    let sub = step(d, &id, "sub");
    assert_eq!(sub.state, StepState::Running, "the child run is the step's attempt");
    (id, sub.child.expect("the step names its child"))
}

#[test]
fn a_child_run_ends_its_parents_step_in_the_same_commit_and_passes_its_outputs_on() {
    let d = Direct::new();
    register(&d, CHILD);
    register(&d, PARENT);
    let (id, child) = to_child(&d);
    let c = run(&d, &child);
    let link = c.parent.clone().expect("the child links its parent");
    assert_eq!((link.run_id.as_str(), link.step.as_str(), link.depth), (id.as_str(), "sub", 1));
    assert_eq!(c.inputs, json!({ "x": "v" }), "the step's inputs are the child's");
    let (job, token, s, inputs) = lease(&d).remove(0);
    assert_eq!((s.as_str(), inputs), ("work", json!({ "x": "v" })));
    let done = complete(&d, &job, token, json!({ "y": "out" })).unwrap();
    let k = kinds(&done);
    let end = k.iter().position(|k| k == "run.succeeded").expect("the child ends");
    assert_eq!(
        &k[end..],
        ["run.succeeded", "step.succeeded", "job.enqueued", "step.queued"],
        "the child's end, its parent's step and the next step are one commit"
    );
    assert_eq!(step(&d, &id, "sub").outputs, json!({ "y": "out", "childRunId": child }));
    let (job, token, s, inputs) = lease(&d).remove(0);
    assert_eq!((s.as_str(), inputs), ("after", json!({ "y": "out", "child": child })));
    complete(&d, &job, token, json!({})).unwrap();
    assert_eq!(run(&d, &id).status, RunStatus::Succeeded);
    verify(&d);
}

#[test]
fn a_child_failure_fails_its_parent_at_once_and_a_retry_starts_a_new_child() {
    let d = Direct::new();
    register(&d, CHILD);
    register(&d, PARENT);
    let (id, first) = to_child(&d);
    let (job, token, _, _) = lease(&d).remove(0);
    fail_as(&d, &job, token, false);
    // "Child failed, parent running" never exists: both failed in that one commit.
    assert_eq!(run(&d, &first).status, RunStatus::Failed);
    assert_eq!(run(&d, &id).status, RunStatus::Failed);
    let sub = step(&d, &id, "sub");
    assert_eq!(sub.error_code.as_deref(), Some("orchestration.child.failed"));
    let error = sub.error.unwrap();
    assert!(error.contains(&format!("child run {first}")) && error.contains("at step work"), "{error}");
    // The child is recovered through its parent.
    let e = recover(&d, &first, Recovery::Retry, None).unwrap_err();
    assert!(matches!(e, CommandError::Conflict { code: "child_run", .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("{id}'s step sub")), "{e}");
    let k = recover(&d, &id, Recovery::Retry, Some("sub")).unwrap();
    assert!(k.contains(&"run.created".to_owned()) && k.contains(&"step.child_started".to_owned()), "{k:?}");
    let second = step(&d, &id, "sub").child.unwrap();
    assert_ne!(second, first, "a retry starts a new child");
    assert_eq!(run(&d, &first).status, RunStatus::Cancelled, "the failed child is aborted");
    let (job, token, _, _) = lease(&d).remove(0);
    complete(&d, &job, token, json!({ "y": "again" })).unwrap();
    let (job, token, s, _) = lease(&d).remove(0);
    assert_eq!(s, "after");
    complete(&d, &job, token, json!({})).unwrap();
    assert_eq!(run(&d, &id).status, RunStatus::Succeeded);
    assert_eq!(step(&d, &id, "sub").attempts, 2);

    // Skip goes on without the child's outputs.
    let (id, child) = to_child(&d);
    let (job, token, _, _) = lease(&d).remove(0);
    fail_as(&d, &job, token, false);
    recover(&d, &id, Recovery::Skip, Some(&format!("{id}/sub"))).unwrap();
    assert_eq!(run(&d, &child).status, RunStatus::Cancelled);
    let (_, _, s, inputs) = lease(&d).remove(0);
    assert_eq!((s.as_str(), inputs["y"].clone()), ("after", Value::Null));
    verify(&d);
}

#[test]
fn cancelling_a_parent_cancels_its_child_and_grandchild_and_a_cancelled_child_fails_its_step() {
    let d = Direct::new();
    register(&d, &CHILD.replace("name = \"child\"", "name = \"grand\""));
    register(&d, "name = \"middle\"\n[steps.down]\norchestration = \"grand\"\ninputs = { x = \"g\" }\n");
    register(&d, "name = \"top\"\n[steps.down]\norchestration = \"middle\"\n");
    let c = d
        .submit(Command::Run(RunCommand::Start {
            tenant: "default".into(),
            dag: "top".into(),
            inputs: Default::default(),
            run_token: None,
        }))
        .unwrap();
    let created = kinds(&c).iter().filter(|k| *k == "run.created").count();
    assert_eq!(created, 3, "the child and grandchild start in the parent's start");
    let top = c.note.unwrap()["runId"].as_str().unwrap().to_owned();
    let middle = step(&d, &top, "down").child.unwrap();
    let grand = step(&d, &middle, "down").child.unwrap();
    assert_eq!(run(&d, &grand).parent.unwrap().depth, 2);
    d.submit(Command::Run(RunCommand::Cancel { tenant: None, run: top.clone() })).unwrap();
    for r in [&top, &middle, &grand] {
        assert_eq!(run(&d, r).status, RunStatus::Cancelled, "{r}");
    }
    assert!(lease(&d).is_empty(), "the grandchild's job was cancelled");

    // A child cancelled on its own fails its parent's step (never a running parent).
    let c = d
        .submit(Command::Run(RunCommand::Start {
            tenant: "default".into(),
            dag: "middle".into(),
            inputs: Default::default(),
            run_token: None,
        }))
        .unwrap();
    let parent = c.note.unwrap()["runId"].as_str().unwrap().to_owned();
    let child = step(&d, &parent, "down").child.unwrap();
    d.submit(Command::Run(RunCommand::Cancel { tenant: None, run: child })).unwrap();
    assert_eq!(run(&d, &parent).status, RunStatus::Failed);
    assert_eq!(step(&d, &parent, "down").error_code.as_deref(), Some("orchestration.child.cancelled"));
    verify(&d);
}

#[test]
fn unknown_disabled_too_deep_and_too_wide_children_fail_the_step_with_a_code() {
    let d = Direct::new();
    let failed_with = |dag: &str, code: &str| {
        let id = start(&d, dag, json!({}), None).unwrap();
        assert_eq!(run(&d, &id).status, RunStatus::Failed, "{dag}");
        let s = step(&d, &id, "down");
        assert_eq!(s.error_code.as_deref(), Some(code), "{dag}: {:?}", s.error);
        s.error.unwrap()
    };
    register(&d, "name = \"orphan\"\n[steps.down]\norchestration = \"ghost\"\n");
    let e = failed_with("orphan", "orchestration.child.not_found");
    assert!(e.contains("DAG ghost"), "{e}");

    register(&d, &CHILD.replace("[inputs.x]\n", "[inputs.x]\ndefault = 1\n"));
    register(&d, "name = \"user\"\n[steps.down]\norchestration = \"child\"\n");
    d.submit(Command::Run(RunCommand::DagVersion { name: "child".into(), version: None, action: DagAction::Disable }))
        .unwrap();
    let e = failed_with("user", "orchestration.child.disabled");
    assert!(e.contains("stella orch dag enable child"), "{e}");
    d.submit(Command::Run(RunCommand::DagVersion { name: "child".into(), version: None, action: DagAction::Enable }))
        .unwrap();
    register(&d, "name = \"bad-input\"\n[steps.down]\norchestration = \"child\"\ninputs = { nope = 1 }\n");
    let e = failed_with("bad-input", "orchestration.child.refused");
    assert!(e.contains("\"nope\" is not declared"), "{e}");

    // Depth: with max_depth = 1 a grandchild cannot start; the child fails, and so its parent.
    register(&d, "name = \"middle\"\n[steps.down]\norchestration = \"child\"\n");
    register(&d, "name = \"top\"\n[steps.down]\norchestration = \"middle\"\n");
    set(&d, "orchestrations.max_depth", "1");
    let e = failed_with("top", "orchestration.child.failed");
    assert!(e.contains("orchestration.depth_exceeded") && e.contains("orchestrations.max_depth is 1"), "{e}");
    set(&d, "orchestrations.max_depth", "4");

    // Fan-out: two children at once against max_children = 1.
    register(
        &d,
        "name = \"wide\"\n[steps.down]\norchestration = \"child\"\n[steps.other]\norchestration = \"child\"\n",
    );
    set(&d, "orchestrations.max_children", "1");
    let id = start(&d, "wide", json!({}), None).unwrap();
    let other = step(&d, &id, "other");
    assert_eq!(other.error_code.as_deref(), Some("orchestration.fanout_exceeded"), "{:?}", other.error);
    assert_eq!(step(&d, &id, "down").state, StepState::Running);
    verify(&d);
}

#[test]
fn a_cycle_of_dags_is_refused_at_registration_and_at_start() {
    let d = Direct::new();
    let a1 = "name = \"a\"\n[steps.down]\norchestration = \"b\"\n";
    register(&d, a1);
    let b = "name = \"b\"\n[steps.down]\norchestration = \"a\"\n";
    let e = d
        .submit(Command::Run(RunCommand::RegisterDag { name: "b".into(), spec: b.into(), unsigned: true }))
        .unwrap_err();
    assert!(matches!(e, CommandError::Invalid { code: "dag_cycle", .. }), "{e:?}");
    assert!(e.to_string().contains("b -> a -> b"), "{e}");
    // A rollback can still close a cycle; the run that reaches it is refused.
    register(&d, "name = \"a\"\n[steps.down]\nplugin = \"noop\"\n");
    register(&d, b);
    d.submit(Command::Run(RunCommand::DagVersion { name: "a".into(), version: None, action: DagAction::Rollback }))
        .unwrap();
    let id = start(&d, "a", json!({}), None).unwrap();
    assert_eq!(run(&d, &id).status, RunStatus::Failed);
    let child = step(&d, &id, "down").child.unwrap();
    let s = step(&d, &child, "down");
    assert_eq!(s.error_code.as_deref(), Some("orchestration.cycle"));
    assert!(s.error.unwrap().contains("a -> b -> a"));
    verify(&d);
}

/// kill -9 while the parent runs the step after its child: the child's end, the parent's step
/// and the next step were one commit, so after the restart the parent goes on from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_past_a_childs_end_the_parent_goes_on_and_the_store_verifies() {
    let mut app = TestAppliance::start();
    let c = app.socket_client();
    let (started, go) = (app.root().join("after-started"), app.root().join("go"));
    script_plugin_with(&app, &c, "gate", "", &gated_script(&started, &go, "{}")).await;
    api_post(&c, "/dags", json!({ "spec": CHILD })).await;
    api_post(
        &c,
        "/dags",
        json!({ "spec": PARENT.replace("[steps.after]\nplugin = \"noop\"", "[steps.after]\nplugin = \"gate\"") }),
    )
    .await;
    let id = api_post(&c, "/runs", json!({ "dag": "parent" })).await["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !started.exists() {
        assert!(std::time::Instant::now() < deadline, "step after did not start within 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = api_get(&c, &format!("/runs/{id}")).await;
    let sub = before["steps"].as_array().unwrap().iter().find(|s| s["name"] == "sub").unwrap().clone();
    let child = sub["runtime"]["subOrchestration"]["childRunId"].as_str().unwrap().to_owned();
    assert_eq!(sub["state"], "succeeded", "{sub}");
    app.kill9();
    std::fs::write(&go, "").unwrap();
    app.launch();
    let c = app.socket_client();
    let end = wait_end(&c, &id).await;
    assert_eq!(end["status"], "succeeded", "{end}");
    let child_run = api_get(&c, &format!("/runs/{child}")).await;
    assert_eq!(
        (child_run["status"].as_str(), child_run["parent"]["runId"].as_str()),
        (Some("succeeded"), Some(id.as_str()))
    );
    // The runbook's path shows the link too.
    let alias: Value = c.get(&format!("/api/orchestrations/{id}")).await.unwrap().json().unwrap();
    let sub = alias["steps"].as_array().unwrap().iter().find(|s| s["name"] == "sub").unwrap().clone();
    assert_eq!(sub["runtime"]["subOrchestration"]["childRunId"], child.as_str());
    // So does the operator's status: the parent names its child, the child its parent.
    let parent_text = stdout(&app.stella(&["orch", "run", "status", &id]));
    assert!(parent_text.contains(&format!("step sub: child run {child} (DAG child v1) succeeded")), "{parent_text}");
    let child_text = stdout(&app.stella(&["orch", "run", "status", &child]));
    assert!(child_text.contains(&format!("child run of {id}, step sub (depth 1)")), "{child_text}");
    let v = app.stella(&["orch", "db", "verify"]);
    assert!(v.status.success(), "db verify after kill -9: {}{}", stdout(&v), stderr(&v));
}
