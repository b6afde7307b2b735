//! Checkpoint approvals (runbook 004 §2): a `checkpoint_after` step waits in
//! `checkpoint_pending` for its approval; approvers, the requester rule, each `on_timeout`
//! on virtual time, cancel, and over the API the tenant's list, the scopes and the runbook's
//! paths. Every scenario ends with the replay agreeing (`db verify`).

use crate::engine_model::{complete, fail_as, lease, register, run, start, step, verify};
use crate::support::*;
use serde_json::{Value, json};
use stella::client::Client;
use stella::domain::approvals::ApprovalCommand;
use stella::domain::approvals::tables::{ApprovalState, approval};
use stella::domain::runs::tables::{RunStatus, StepState};
use stella::domain::runs::{Recovery, RunCommand};
use stella::kernel::CommandError;
use stella::machine::Command;

fn gated(approval: &str) -> String {
    format!(
        "name = \"gated\"\n[steps.build]\nplugin = \"noop\"\n[steps.review]\nplugin = \"noop\"\nneeds = [\"build\"]\ncheckpoint_after = true\n{approval}\n[steps.ship]\nplugin = \"noop\"\nneeds = [\"review\"]\n"
    )
}

/// Runs `build` and `review` to review's checkpoint; returns the run and the approval id.
fn to_checkpoint(d: &Direct) -> (String, String) {
    let id = start(d, "gated", json!({}), None).unwrap();
    for _ in 0..2 {
        let (job, token, _, _) = lease(d).remove(0);
        complete(d, &job, token, json!({ "digest": "sha256:abc" })).unwrap();
    }
    let rec = step(d, &id, "review");
    assert_eq!(rec.state, StepState::CheckpointPending);
    assert!(lease(d).is_empty(), "ship waits for the approval");
    (id, rec.approval.unwrap())
}

fn decide(d: &Direct, id: &str, actor: &str, approve: bool, reason: Option<&str>) -> Result<Vec<String>, CommandError> {
    let c = d.submit(Command::Approval(ApprovalCommand::Decide {
        tenant: Some("default".into()),
        id: id.into(),
        actor: actor.into(),
        approve,
        reason: reason.map(str::to_owned),
    }))?;
    Ok(c.entries.iter().map(|e| e.kind.clone()).collect())
}

fn state(d: &Direct, id: &str) -> ApprovalState {
    approval(&d.store().read().unwrap(), id).unwrap().unwrap().state
}

#[test]
fn two_approvers_release_the_checkpoint_and_the_requester_may_not_be_one() {
    let d = Direct::new();
    register(&d, &gated("approval = { approvers = 2 }"));
    let (id, apr) = to_checkpoint(&d);
    let r = run(&d, &id);
    assert_eq!((r.status, r.active, r.checkpoints), (RunStatus::Running, 0, 1));
    assert_eq!(step(&d, &id, "review").outputs["digest"], "sha256:abc", "the outputs wait with the step");
    // The run was started by "test" (the direct writer's actor).
    let e = decide(&d, &apr, "test", true, None).unwrap_err();
    assert!(matches!(e, CommandError::Forbidden { code: "self_approval", .. }), "{e:?}");
    assert_eq!(decide(&d, &apr, "alice", true, Some("diff reviewed")).unwrap(), ["approval.approved"]);
    assert_eq!(state(&d, &apr), ApprovalState::Pending, "one of two");
    let e = decide(&d, &apr, "alice", true, None).unwrap_err();
    assert!(matches!(e, CommandError::Conflict { code: "already_decided", .. }), "{e:?}");
    let kinds = decide(&d, &apr, "bob", true, None).unwrap();
    assert_eq!(kinds, ["approval.approved", "step.succeeded", "job.enqueued", "step.queued"]);
    assert_eq!(state(&d, &apr), ApprovalState::Approved);
    let e = decide(&d, &apr, "carol", false, Some("late")).unwrap_err();
    assert!(matches!(e, CommandError::Conflict { code: "approval_not_pending", .. }), "{e:?}");
    let (job, token, s, inputs) = lease(&d).remove(0);
    assert_eq!((s.as_str(), inputs), ("ship", json!({})));
    complete(&d, &job, token, json!({})).unwrap();
    assert_eq!(run(&d, &id).status, RunStatus::Succeeded);
    verify(&d);
}

#[test]
fn a_rejection_fails_the_step_with_its_reason_and_a_retry_asks_again() {
    let d = Direct::new();
    register(&d, &gated(""));
    let (id, apr) = to_checkpoint(&d);
    let e = decide(&d, &apr, "alice", false, None).unwrap_err();
    assert!(matches!(e, CommandError::Invalid { field: Some("reason"), .. }), "a rejection needs a reason: {e:?}");
    let kinds = decide(&d, &apr, "alice", false, Some("wrong artifact")).unwrap();
    assert_eq!(kinds, ["approval.rejected", "step.failed", "run.failed"]);
    let rec = step(&d, &id, "review");
    assert_eq!((rec.state, rec.error_code.as_deref()), (StepState::Failed, Some("approval_rejected")));
    assert!(rec.error.unwrap().contains("rejected by alice: wrong artifact"));
    // Skipping would pass over the rejection: refused.
    let skip = d.submit(Command::Run(RunCommand::Recover {
        tenant: None,
        run: id.clone(),
        action: Recovery::Skip,
        step: None,
    }));
    assert!(matches!(skip, Err(CommandError::Conflict { code: "approval_not_skippable", .. })), "{skip:?}");
    assert_eq!(step(&d, &id, "review").outputs, Value::Null, "rejected outputs are not passed on");
    // Retry runs the step again, and its checkpoint asks for a new approval.
    d.submit(Command::Run(RunCommand::Recover { tenant: None, run: id.clone(), action: Recovery::Retry, step: None }))
        .unwrap();
    let (job, token, s, _) = lease(&d).remove(0);
    assert_eq!(s, "review");
    complete(&d, &job, token, json!({})).unwrap();
    let again = step(&d, &id, "review").approval.unwrap();
    assert_ne!(again, apr);
    decide(&d, &again, "bob", true, None).unwrap();
    assert_eq!(step(&d, &id, "review").state, StepState::Succeeded);
    verify(&d);
}

/// Each `on_timeout` on virtual time: reject fails the step, approve goes on, cancel cancels
/// the run; a decision after the timeout is refused.
#[test]
fn a_timeout_does_what_on_timeout_says() {
    for (on_timeout, step_state, run_status) in [
        ("reject", StepState::Failed, RunStatus::Failed),
        ("approve", StepState::Succeeded, RunStatus::Running),
        ("cancel", StepState::Cancelled, RunStatus::Cancelled),
    ] {
        let d = Direct::new();
        register(&d, &gated(&format!("approval = {{ timeout = \"10m\", on_timeout = \"{on_timeout}\" }}")));
        let (id, apr) = to_checkpoint(&d);
        d.clock.advance_ms(9 * 60_000);
        assert!(d.submit(Command::Tick).unwrap().entries.is_empty(), "{on_timeout}: not yet");
        d.clock.advance_ms(60_000);
        let tick = d.submit(Command::Tick).unwrap();
        assert_eq!(tick.entries[0].kind, "approval.expired", "{on_timeout}");
        assert_eq!(state(&d, &apr), ApprovalState::Expired);
        assert_eq!(step(&d, &id, "review").state, step_state, "{on_timeout}");
        assert_eq!(run(&d, &id).status, run_status, "{on_timeout}");
        if on_timeout == "reject" {
            assert_eq!(step(&d, &id, "review").error_code.as_deref(), Some("approval_timed_out"));
        }
        if on_timeout == "approve" {
            assert_eq!(lease(&d).remove(0).2, "ship");
        }
        let e = decide(&d, &apr, "alice", true, None).unwrap_err();
        assert!(matches!(e, CommandError::Conflict { code: "approval_not_pending", .. }), "{e:?}");
        verify(&d);
    }
}

/// Two checkpoints of one run time out together and the first cancels the run: each timeout
/// is planned in a tick of its own, so the second finds its approval already cancelled.
#[test]
fn two_timeouts_of_one_run_due_together_cancel_it_once() {
    let d = Direct::new();
    let both = "approval = { timeout = \"5m\", on_timeout = \"cancel\" }";
    register(
        &d,
        &format!(
            "name = \"twin\"\n[steps.x]\nplugin = \"noop\"\ncheckpoint_after = true\n{both}\n[steps.y]\nplugin = \"noop\"\ncheckpoint_after = true\n{both}\n"
        ),
    );
    let id = start(&d, "twin", json!({}), None).unwrap();
    for (job, token, _, _) in lease(&d) {
        complete(&d, &job, token, json!({})).unwrap();
    }
    assert_eq!(run(&d, &id).checkpoints, 2);
    d.clock.advance_ms(6 * 60_000);
    let first = d.submit(Command::Tick).unwrap();
    let kinds: Vec<&str> = first.entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "approval.expired").count(), 1, "{kinds:?}");
    assert!(kinds.contains(&"approval.cancelled") && kinds.contains(&"run.cancelled"), "{kinds:?}");
    assert!(d.submit(Command::Tick).unwrap().entries.is_empty(), "the other timeout's approval is closed");
    assert_eq!(run(&d, &id).status, RunStatus::Cancelled);
    verify(&d);
}

#[test]
fn cancelling_the_run_cancels_its_pending_approval() {
    let d = Direct::new();
    register(&d, &gated("approval = { timeout = \"1h\", on_timeout = \"approve\" }"));
    let (id, apr) = to_checkpoint(&d);
    let c = d.submit(Command::Run(RunCommand::Cancel { tenant: None, run: id.clone() })).unwrap();
    let kinds: Vec<&str> = c.entries.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"approval.cancelled") && kinds.contains(&"run.cancelled"), "{kinds:?}");
    assert_eq!(state(&d, &apr), ApprovalState::Cancelled);
    assert_eq!(run(&d, &id).checkpoints, 0);
    // Its timeout no longer fires.
    d.clock.advance_ms(2 * 3_600_000);
    assert!(d.submit(Command::Tick).unwrap().entries.is_empty());
    verify(&d);
}

/// A run waiting at a checkpoint does not settle while another branch fails: it fails once
/// the approval is decided, and the replay agrees after a reopen.
#[test]
fn a_failed_branch_waits_for_the_checkpoint_and_the_state_survives_a_reopen() {
    let mut d = Direct::new();
    register(
        &d,
        "name = \"two\"\n[steps.gate]\nplugin = \"noop\"\ncheckpoint_after = true\n[steps.bad]\nplugin = \"noop\"\nretries = 0\n",
    );
    let id = start(&d, "two", json!({}), None).unwrap();
    let jobs = lease(&d);
    for (job, token, s, _) in jobs {
        if s == "gate" {
            complete(&d, &job, token, json!({})).unwrap();
        } else {
            fail_as(&d, &job, token, false);
        }
    }
    assert_eq!(run(&d, &id).status, RunStatus::Running, "the checkpoint holds the run open");
    d.reopen();
    let apr = step(&d, &id, "gate").approval.unwrap();
    decide(&d, &apr, "alice", true, None).unwrap();
    assert_eq!(run(&d, &id).status, RunStatus::Failed);
    verify(&d);
}

// --- over the API --------------------------------------------------------------------------

async fn register_api(c: &Client, spec: &str) {
    api_post(c, "/dags", json!({ "spec": spec })).await;
}

/// Follows the run's events from the start until `marker` has come `n` times (a minute at
/// most); returns the run as it is then.
async fn wait_nth(c: &Client, id: &str, marker: &str, n: usize) -> Value {
    let mut seen = String::new();
    let followed = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        c.stream(&format!("{API}/runs/stream?run={id}"), Some(0), |chunk| {
            seen.push_str(&String::from_utf8_lossy(chunk));
            seen.matches(marker).count() < n
        }),
    )
    .await;
    assert!(followed.is_ok_and(|r| r.is_ok()), "no {n}x {marker:?} from {id}:\n{seen}");
    api_get(c, &format!("/runs/{id}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_api_an_approval_is_its_tenants_and_needs_a_second_actor_with_the_scope() {
    let app = TestAppliance::start_with(|c| c.tenants.allowed = vec!["default".into(), "acme".into()]);
    let admin = app.socket_client();
    register_api(&admin, &gated("approval = { timeout = \"1h\", on_timeout = \"reject\" }")).await;
    let (_, starter) = create_token(&admin, "default", &["orchestrator:operate", "orchestrator:approve"], None).await;
    let (_, approver) = create_token(&admin, "default", &["orchestrator:approve"], None).await;
    let (_, reader) = create_token(&admin, "default", &["orchestrator:read"], None).await;
    let (_, other) = create_token(&admin, "acme", &["orchestrator:approve"], None).await;
    let starter_c = app.https_client(Some(&starter));
    let run = api_post(&starter_c, "/runs", json!({ "dag": "gated" })).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let v = wait_nth(&admin, &id, "event: approval.requested", 1).await;
    assert_eq!(v["status"], "waiting_approval");
    let review = v["steps"].as_array().unwrap().iter().find(|s| s["name"] == "review").unwrap().clone();
    assert_eq!(review["state"], "checkpoint_pending");
    let apr = review["approvalId"].as_str().unwrap().to_owned();
    assert!(review["waitReason"].as_str().unwrap().contains(&format!("waiting for approval {apr}")), "{review}");
    assert!(v["waitingOn"][0].as_str().unwrap().contains(&apr), "{v}");
    // The runbook's paths answer the same.
    let alias = admin.get(&format!("/api/orchestrations/{id}/status")).await.unwrap().ok().unwrap().json().unwrap();
    assert_eq!(alias["status"], "waiting_approval");
    let status = api_get(&admin, "/status").await;
    assert!(status["waitingApproval"][0].as_str().unwrap().contains(&apr), "{status}");

    // Listed for its tenant only.
    let listed = |c: Client, path: &'static str| async move {
        let v: Value = c.get(path).await.unwrap().ok().unwrap().json().unwrap();
        v["approvals"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(
        listed(app.https_client(Some(&reader)), "/api/orchestrations/approvals").await,
        std::slice::from_ref(&apr)
    );
    assert!(listed(app.https_client(Some(&other)), "/api/v1/orchestrator/approvals").await.is_empty());
    let hidden = app.https_client(Some(&other)).get(&format!("{API}/approvals/{apr}")).await.unwrap();
    assert_eq!(hidden.status.as_u16(), 404, "another tenant's approval is not found");
    let foreign =
        app.https_client(Some(&other)).post(&format!("{API}/approvals/{apr}/approve"), &json!({})).await.unwrap();
    assert_eq!(foreign.status.as_u16(), 404);

    // Refused: no scope, the requester; then a second actor approves through the runbook path.
    let no_scope =
        app.https_client(Some(&reader)).post(&format!("{API}/approvals/{apr}/approve"), &json!({})).await.unwrap();
    assert_eq!(no_scope.status.as_u16(), 403);
    let own = starter_c.post(&format!("{API}/approvals/{apr}/approve"), &json!({})).await.unwrap();
    assert_eq!((own.status.as_u16(), own.json().unwrap()["code"].clone()), (403, json!("self_approval")));
    let ok = app
        .https_client(Some(&approver))
        .post(&format!("/api/orchestrations/approvals/{apr}/approve"), &json!({ "reason": "checked" }))
        .await
        .unwrap()
        .ok()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(ok["state"], "approved");
    assert!(ok["decisions"][0]["actor"].as_str().unwrap().starts_with("token:"), "{ok}");
    let done = wait_end(&admin, &id).await;
    assert_eq!(done["status"], "succeeded");
    assert!(
        admin.get(&format!("{API}/approvals")).await.unwrap().json().unwrap()["approvals"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The decision is in the ledger with its actor and reason, and the doctor finds nothing wrong.
    let ledger = api_get(&admin, "/ledger?limit=1000").await;
    let approved = ledger["entries"].as_array().unwrap().iter().find(|e| e["kind"] == "approval.approved").unwrap();
    assert_eq!(approved["data"]["reason"], "checked");
    assert!(approved["actor"].as_str().unwrap().starts_with("token:"));
    let doctor = app.stella(&["doctor", "--check", "check.orchestrator.checkpoints"]);
    assert!(doctor.status.success(), "{}", stderr(&doctor));
    assert!(stdout(&doctor).contains("OK [check.orchestrator.checkpoints]"), "{}", stdout(&doctor));
    let verify = app.stella(&["orch", "db", "verify"]);
    assert!(verify.status.success() && stdout(&verify).contains("approvals"), "{}", stdout(&verify));

    // An auditor's pack holds the decision: the entries, and the approval span of the trace.
    let pack = app.root().join("pack");
    let o = app.stella(&["export", "--out", pack.to_str().unwrap(), "--signals", "ledger,traces"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ledger = std::fs::read_to_string(pack.join("ledger.ndjson")).unwrap();
    for kind in ["approval.requested", "step.checkpoint_pending", "approval.approved"] {
        assert!(ledger.contains(&format!("\"kind\":\"{kind}\"")), "{kind} not exported");
    }
    let traces = std::fs::read_to_string(pack.join("traces.ndjson")).unwrap();
    let trace: Value = serde_json::from_str(traces.lines().next().unwrap()).unwrap();
    let spans = trace["resourceSpans"][0]["scopeSpans"][0]["spans"].as_array().unwrap();
    let span = spans.iter().find(|s| s["name"] == "approval").expect("an approval span");
    let attrs = span["attributes"].to_string();
    assert!(attrs.contains(&apr) && attrs.contains("approved: checked"), "{attrs}");
    let attempts = spans.iter().filter(|s| s["name"] == "attempt").count();
    assert_eq!(attempts, 3, "one attempt per step, none made up for the wait");
}

/// The CLI an operator follows: `orch approvals list` shows it, `reject --reason` fails the
/// step with the reason, `run retry` runs it again and asks anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_and_rejects_and_the_trace_shows_the_decision() {
    let app = TestAppliance::start();
    let admin = app.socket_client();
    register_api(&admin, &gated("approval = { self_approval = true }")).await;
    let id = app.stella(&["--format", "json", "orch", "run", "start", "gated"]);
    let id = serde_json::from_str::<Value>(&stdout(&id)).unwrap()["id"].as_str().unwrap().to_owned();
    wait_nth(&admin, &id, "event: approval.requested", 1).await;
    let list = app.stella(&["orch", "approvals", "list"]);
    assert!(stdout(&list).contains(&format!("{id}/review")), "{}", stdout(&list));
    let apr = api_get(&admin, "/approvals").await["approvals"][0]["id"].as_str().unwrap().to_owned();
    let rejected = app.stella(&["orch", "approvals", "reject", &apr, "--reason", "wrong build"]);
    assert!(rejected.status.success(), "{}", stderr(&rejected));
    assert!(stdout(&rejected).contains("rejected by local:uid="), "{}", stdout(&rejected));
    let failed = wait_end(&admin, &id).await;
    assert_eq!(failed["status"], "failed");
    let trace = app.stella(&["orch", "run", "trace", &id, "--verbose"]);
    assert!(stdout(&trace).contains(&format!("{apr} rejected step review: rejected by")), "{}", stdout(&trace));
    let retry = admin
        .post(&format!("/api/orchestrations/{id}/actions/retry"), &json!({ "stepRecordId": format!("{id}/review") }))
        .await
        .unwrap();
    assert!(retry.status.is_success(), "{}", String::from_utf8_lossy(&retry.body));
    assert_eq!(wait_nth(&admin, &id, "event: approval.requested", 2).await["status"], "waiting_approval");
    let again = app.stella(&["--format", "json", "orch", "approvals", "list"]);
    let again: Value = serde_json::from_str(&stdout(&again)).unwrap();
    assert_ne!(again["approvals"][0]["id"], apr.as_str());
    // A completed run refuses retry (409), as runbook 004 §7 says.
    let approve = app.stella(&["orch", "approvals", "approve", again["approvals"][0]["id"].as_str().unwrap()]);
    assert!(approve.status.success(), "{}", stderr(&approve));
    assert_eq!(wait_nth(&admin, &id, "event: run.succeeded", 1).await["status"], "succeeded");
    let late = admin.post(&format!("/api/orchestrations/{id}/actions/retry"), &json!({})).await.unwrap();
    assert_eq!(late.status.as_u16(), 409);
    assert_eq!(late.json().unwrap()["code"], "run_not_failed");
    let v = app.stella(&["orch", "db", "verify"]);
    assert!(v.status.success(), "{}", stdout(&v));
}
