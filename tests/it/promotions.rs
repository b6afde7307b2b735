//! Promotions as runbook 000 tells them: an artifact moves dev → staging → prod through each
//! environment's gates (a site gate plugin, an approval no requester may give, a soak), with
//! `promotion status|gates|list|trace|abort` telling where it is and why it waits, through the
//! CLI with `--format json`.

use crate::releases::{cli, refused};
use crate::support::*;
use serde_json::Value;

fn target(app: &TestAppliance, env: &str) -> std::path::PathBuf {
    app.layout().targets().join(env)
}

fn installed_version(app: &TestAppliance, env: &str) -> Option<String> {
    std::fs::read_to_string(target(app, env).join("current/VERSION")).ok().map(|v| v.trim().to_owned())
}

async fn deploy(app: &TestAppliance, env: &str, artifact: &str) {
    let d = cli(app, &["deploy", "--env", env, "--artifact", artifact]);
    let run = wait_end(&app.socket_client(), d["runId"].as_str().unwrap()).await;
    assert_eq!(run["status"], "succeeded", "{run}");
}

/// Starts a promotion and follows its run to its end: the promotion as it ended.
async fn promoted(app: &TestAppliance, artifact: &str, to: &str) -> Value {
    let p = cli(app, &["promotion", "start", artifact, "--to", to]);
    wait_end(&app.socket_client(), p["runId"].as_str().unwrap()).await;
    cli(app, &["promotion", "status", p["id"].as_str().unwrap()])
}

fn gate<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["gates"].as_array().unwrap().iter().find(|g| g["name"] == name).unwrap_or_else(|| panic!("gate {name}: {p}"))
}

fn verified(app: &TestAppliance) {
    let v = cli(app, &["orch", "db", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
}

/// The sample's environments with a soak short enough for a test into prod.
fn declare_short_soak(app: &TestAppliance) {
    let text =
        include_str!("../../bundles/sample-release/release.toml").replace("duration = \"30s\"", "duration = \"3s\"");
    assert!(text.contains("duration = \"3s\""));
    let file = app.root().join("release.toml");
    std::fs::write(&file, text).unwrap();
    cli(app, &["orch", "env", "declare", file.to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_passes_its_gates_in_order_and_only_a_second_actor_approves_it() {
    let app = TestAppliance::start();
    declare_short_soak(&app);
    let client = app.socket_client();
    let dag = cli(&app, &["orch", "dag", "show", "promote-prod", "--spec"]);
    let spec = dag["spec"].as_str().unwrap();
    assert!(spec.contains("checkpoint_after = true") && spec.contains("plugin = \"wait\""), "the gates: {spec}");

    // The path is checked before anything changes: nothing promotes into dev, and an artifact
    // goes to prod only from staging.
    let (code, msg) = refused(&app, &["promotion", "start", "web@1.4.1", "--to", "dev"]);
    assert!(msg.contains("nothing promotes into environment dev") && code == Some(7), "{code:?} {msg}");
    let (_, msg) = refused(&app, &["promotion", "start", "web@1.4.1", "--to", "staging"]);
    assert!(msg.contains("has not been deployed successfully to dev") && msg.contains("--force-path"), "{msg}");

    deploy(&app, "dev", "web@1.4.1").await;
    let staging = promoted(&app, "web@1.4.1", "staging").await;
    assert_eq!((staging["status"].as_str(), staging["from"].as_str()), (Some("success"), Some("dev")), "{staging}");
    let scan = gate(&staging, "security-scan");
    assert_eq!((scan["state"].as_str(), scan["attempts"].as_u64()), (Some("passed"), Some(1)), "{scan}");
    assert_eq!(installed_version(&app, "staging").as_deref(), Some("1.4.1"));
    assert!(staging["currentStep"].is_null() && staging["waitReason"].is_null(), "{staging}");

    // Into prod: the approval waits, and says for what; the requester may not give it.
    let p = cli(&app, &["promotion", "start", "web@1.4.1", "--to", "prod"]);
    let (id, run) = (p["id"].as_str().unwrap().to_owned(), p["runId"].as_str().unwrap().to_owned());
    wait_for_event(&client, &run, "event: step.checkpoint_pending").await;
    let status = cli(&app, &["promotion", "status"]);
    assert_eq!((status["id"].as_str(), status["status"].as_str()), (Some(id.as_str()), Some("in_progress")));
    assert_eq!(status["currentStep"], "approval", "{status}");
    assert!(status["waitReason"].as_str().unwrap().contains("gate approval: waiting for approval apr-"), "{status}");
    let gates = cli(&app, &["promotion", "gates"]);
    assert_eq!(gate(&gates, "approval")["state"], "waiting", "{gates}");
    assert_eq!(gate(&gates, "soak")["state"], "pending", "{gates}");
    let approval = gate(&gates, "approval")["approvalId"].as_str().unwrap().to_owned();
    let (code, msg) = refused(&app, &["orch", "approvals", "approve", &approval, "--reason", "mine"]);
    assert!(msg.contains("may not decide its approval") && code.is_some(), "{msg}");
    // Another promotion to prod meanwhile is refused, naming this one.
    let (_, msg) = refused(&app, &["promotion", "start", "web@1.4.1", "--to", "prod"]);
    assert!(msg.contains(&format!("promotion {id}")) && msg.contains("in progress"), "{msg}");
    let listed = cli(&app, &["promotion", "list", "--status", "in_progress", "--env", "prod"]);
    assert_eq!(listed["promotions"].as_array().unwrap().len(), 1, "{listed}");
    // Stuck: its state has not changed for promotions.stuck_after (10m by default).
    let metrics = || async { String::from_utf8(client.get("/metrics").await.unwrap().body.to_vec()).unwrap() };
    let m = metrics().await;
    assert!(m.contains("orchestrator_promotion_stuck{env=\"prod\"} 0"), "{m}");
    assert!(m.contains("orchestrator_promotions_total{env=\"staging\",status=\"success\"} 1"), "{m}");
    let young = cli(&app, &["promotion", "list", "--status", "in_progress", "--older-than", "10m"]);
    assert!(young["promotions"].as_array().unwrap().is_empty(), "{young}");
    let healthy = cli(&app, &["doctor", "--check", "check.orchestrator.job-health"]);
    assert_eq!(healthy["worst"], "ok", "{healthy}");
    cli(&app, &["orch", "config", "set", "promotions.stuck_after", "1ms"]);
    let m = metrics().await;
    assert!(m.contains("orchestrator_promotion_stuck{env=\"prod\"} 1"), "{m}");
    assert!(m.contains("orchestrator_promotion_stuck{env=\"staging\"} 0"), "{m}");
    let doctor = app.stella(&["doctor", "--check", "check.orchestrator.job-health"]);
    assert!(!doctor.status.success(), "a stuck promotion is an error");
    let text = stdout(&doctor);
    assert!(text.starts_with(&format!("ERROR [check.orchestrator.job-health] (promotion {id}) promotion {id} of web@1.4.1 into prod has not changed for")), "{text}");
    assert!(
        text.contains("gate approval: waiting for approval")
            && text.contains(&format!("fix: stella orch approvals approve {approval}")),
        "{text}"
    );

    let (_, second) = create_token(&client, "default", &["orchestrator:read", "orchestrator:approve"], None).await;
    cli(&app, &["--token", &second, "orch", "approvals", "approve", &approval, "--reason", "change 42 reviewed"]);
    let ended = wait_end(&client, &run).await;
    assert_eq!(ended["status"], "succeeded", "{ended}");
    let done = cli(&app, &["promotion", "status", &id]);
    assert_eq!(done["status"], "success", "{done}");
    for g in ["approval", "soak"] {
        assert_eq!(gate(&done, g)["state"], "passed", "{done}");
    }
    // The soak started no earlier than its duration after the artifact's success in staging.
    let steps = ended["steps"].as_array().unwrap();
    let soak = steps.iter().find(|s| s["name"] == "soak").unwrap();
    let at = |v: &Value| stella::clock::parse_time(v.as_str().unwrap()).unwrap();
    let staged = at(&staging["endedAt"]);
    assert!(at(&soak["startedAt"]) >= staged + 3_000, "soak {soak} after staging's success at {staged}");
    assert_eq!(installed_version(&app, "prod").as_deref(), Some("1.4.1"));
    let quiet = cli(&app, &["promotion", "list", "--status", "in_progress"]);
    assert!(quiet["promotions"].as_array().unwrap().is_empty(), "{quiet}");
    let m = metrics().await;
    assert!(m.contains("orchestrator_promotion_stuck{env=\"prod\"} 0"), "{m}");
    assert!(m.contains("orchestrator_promotions_total{env=\"prod\",status=\"success\"} 1"), "{m}");
    let trace = cli(&app, &["promotion", "trace", &id, "--verbose"]);
    assert_eq!(trace["run"]["steps"].as_array().unwrap().len(), 4, "{trace}");
    verified(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gate_fails_the_promotion_with_its_error_and_nothing_is_deployed() {
    let app = TestAppliance::start();
    deploy(&app, "dev", "web@1.4.2").await;
    std::fs::create_dir_all(target(&app, "staging")).unwrap();
    std::fs::write(target(&app, "staging").join(".scan-fail"), "CVE-2026-1234").unwrap();
    let p = promoted(&app, "web@1.4.2", "staging").await;
    assert_eq!((p["status"].as_str(), p["failedStep"].as_str()), (Some("failed"), Some("security-scan")), "{p}");
    assert!(p["error"].as_str().unwrap().contains("critical finding CVE-2026-1234"), "{p}");
    let scan = gate(&p, "security-scan");
    // The sample declares one retry: two attempts, each ended by the plugin's own error.
    assert_eq!(
        (scan["state"].as_str(), scan["attempts"].as_u64(), scan["maxAttempts"].as_u64()),
        (Some("failed"), Some(2), Some(2)),
        "{scan}"
    );
    assert_eq!(installed_version(&app, "staging"), None, "nothing was deployed");
    let failed = cli(&app, &["promotion", "list", "--status", "failed"]);
    assert_eq!(failed["promotions"][0]["id"], p["id"], "{failed}");

    // `gates.<name>.retries` set at runtime takes effect for the gate's next start.
    cli(&app, &["orch", "config", "set", "gates.security-scan.retries", "0"]);
    let once = promoted(&app, "web@1.4.2", "staging").await;
    let scan = gate(&once, "security-scan");
    assert_eq!((scan["attempts"].as_u64(), scan["maxAttempts"].as_u64()), (Some(1), Some(1)), "{scan}");
    assert_eq!(once["status"], "failed", "{once}");

    // Fixed, the next promotion goes through: the environment was freed.
    std::fs::remove_file(target(&app, "staging").join(".scan-fail")).unwrap();
    let again = promoted(&app, "web@1.4.2", "staging").await;
    assert_eq!(again["status"], "success", "{again}");
    verified(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_promotion_ends_with_the_reason_and_frees_the_environment() {
    let app = TestAppliance::start();
    let client = app.socket_client();
    // The path forced by an admin (the local admin), ledgered with the deployment.
    let p = cli(&app, &["promotion", "start", "web@1.4.0", "--to", "prod", "--force-path", "--reason", "hotfix"]);
    assert!(p["forced"].to_string().contains("was not deployed successfully to staging"), "{p}");
    let (id, run) = (p["id"].as_str().unwrap().to_owned(), p["runId"].as_str().unwrap().to_owned());
    wait_for_event(&client, &run, "event: step.checkpoint_pending").await;
    let (code, msg) = refused(&app, &["promotion", "abort", &id, "--reason", ""]);
    assert!(msg.contains("reason") && code.is_some(), "{msg}");
    let aborted = cli(&app, &["promotion", "abort", &id, "--reason", "wrong build"]);
    assert_eq!(aborted["status"], "failed", "{aborted}");
    assert!(
        aborted["error"].as_str().unwrap().contains("aborted by local:")
            && aborted["error"].as_str().unwrap().contains("wrong build"),
        "{aborted}"
    );
    let run = wait_end(&client, &run).await;
    assert_eq!(run["status"], "cancelled", "{run}");
    let pending = cli(&app, &["orch", "approvals", "list"]);
    assert!(pending["approvals"].as_array().unwrap().is_empty(), "the gate's approval went with it: {pending}");
    let (_, msg) = refused(&app, &["promotion", "abort", &id, "--reason", "again"]);
    assert!(msg.contains("ended already"), "{msg}");
    let (_, msg) = refused(&app, &["promotion", "status", "prom-99"]);
    assert!(msg.contains("promotion prom-99"), "{msg}");
    // Free again: the next promotion starts.
    let next = cli(&app, &["promotion", "start", "web@1.4.0", "--to", "prod", "--force-path"]);
    assert_eq!(next["status"], "in_progress", "{next}");
    assert_ne!(next["id"], p["id"]);
    verified(&app);
}
