//! Releases as runbook 001 tells them: deployments through the environment's agent, the last
//! known good, rollback, and each of the runbook's symptoms reproduced and resolved with the
//! runbook's own commands, through the CLI with `--format json`.

use crate::support::*;
use serde_json::Value;

pub(crate) fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "exit {:?}: {}", out.status.code(), stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

pub(crate) fn cli(app: &TestAppliance, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    json(&app.stella(&all))
}

/// A refused command: its exit code and message.
pub(crate) fn refused(app: &TestAppliance, args: &[&str]) -> (Option<i32>, String) {
    let out = app.stella(args);
    assert!(!out.status.success(), "stella {args:?} should be refused: {}", stdout(&out));
    assert!(stdout(&out).is_empty(), "no output for a refusal: {}", stdout(&out));
    (out.status.code(), stderr(&out))
}

/// Follows the deployment's run to its end; answers the deployment as it ended.
async fn settled(app: &TestAppliance, dep: &Value) -> Value {
    let id = dep["id"].as_str().unwrap();
    wait_end(&app.socket_client(), dep["runId"].as_str().unwrap()).await;
    let all = cli(app, &["orch", "deployments", "list"]);
    all["deployments"].as_array().unwrap().iter().find(|d| d["id"] == id).unwrap().clone()
}

async fn deploy(app: &TestAppliance, env: &str, artifact: &str) -> Value {
    let d = cli(app, &["deploy", "--env", env, "--artifact", artifact]);
    assert_eq!(
        (d["env"].as_str(), d["artifact"].as_str(), d["kind"].as_str()),
        (Some(env), Some(artifact), Some("direct"))
    );
    settled(app, &d).await
}

fn target(app: &TestAppliance, env: &str) -> std::path::PathBuf {
    app.layout().targets().join(env)
}

fn installed_version(app: &TestAppliance, env: &str) -> String {
    std::fs::read_to_string(target(app, env).join("current/VERSION")).unwrap().trim().to_owned()
}

fn verified(app: &TestAppliance) {
    let v = cli(app, &["orch", "db", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["tables"].as_array().unwrap().iter().any(|t| t == "deployments"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_installs_through_the_agent_and_rollback_returns_to_the_last_known_good() {
    let app = TestAppliance::start();
    let envs = cli(&app, &["orch", "env", "status"]);
    let names: Vec<&str> =
        envs["environments"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dev", "staging", "prod"]);
    let listed = cli(&app, &["orch", "artifacts", "list", "--filter", "web"]);
    assert_eq!(listed["artifacts"].as_array().unwrap().len(), 3, "{listed}");

    let first = deploy(&app, "prod", "web@1.4.1").await;
    assert_eq!((first["id"].as_str(), first["status"].as_str()), (Some("dep-1"), Some("success")), "{first}");
    assert!(first["agent"].as_str().is_some_and(|a| a.starts_with("local")), "{first}");
    assert_eq!(installed_version(&app, "prod"), "1.4.1");
    let second = deploy(&app, "prod", "web@1.4.2").await;
    assert_eq!(second["status"], "success", "{second}");
    assert_eq!(installed_version(&app, "prod"), "1.4.2");

    let env = cli(&app, &["orch", "env", "status", "prod", "--detailed"]);
    assert_eq!(env["current"]["id"], "dep-2", "{env}");
    assert_eq!(env["lastKnownGood"]["artifact"], "web@1.4.1", "{env}");
    assert_eq!(env["health"]["status"], "healthy", "{env}");
    assert!(env["lock"].is_null() && env["inFlight"].is_null(), "the lock and the slot are free: {env}");
    assert_eq!(env["recent"].as_array().unwrap().len(), 2);
    assert!(env["baseline"]["replicas"].is_number(), "{env}");
    let got = cli(&app, &["orch", "artifacts", "get", "web@1.4.1", "--check"]);
    assert_eq!((got["check"]["ok"].as_bool(), got["lastKnownGoodIn"][0].as_str()), (Some(true), Some("prod")), "{got}");

    // Runbook 001's verification, after the rollback.
    let rb = cli(&app, &["rollback", "start", "--env", "prod"]);
    assert_eq!((rb["kind"].as_str(), rb["artifact"].as_str()), (Some("rollback"), Some("web@1.4.1")), "{rb}");
    let rb = settled(&app, &rb).await;
    assert_eq!(rb["status"], "success", "{rb}");
    let status = cli(&app, &["rollback", "status"]);
    assert_eq!((status["id"].as_str(), status["status"].as_str()), (rb["id"].as_str(), Some("success")), "{status}");
    let current = cli(&app, &["orch", "deployments", "current", "--env", "prod"]);
    assert_eq!(current["artifact"], "web@1.4.1", "{current}");
    assert_eq!(installed_version(&app, "prod"), "1.4.1");
    let trace = cli(&app, &["rollback", "trace", "--verbose"]);
    let steps: Vec<&str> =
        trace["run"]["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(steps, ["deploy", "health"], "{trace}");
    let successes = cli(&app, &["orch", "deployments", "list", "--env", "prod", "--status", "success"]);
    assert_eq!(successes["deployments"].as_array().unwrap().len(), 3);
    let last = cli(&app, &["orch", "deployments", "list", "--env", "prod", "--last", "1"]);
    assert_eq!(last["deployments"][0]["id"], rb["id"]);
    // Every step of it is in the ledger.
    let ledger = api_get(&app.socket_client(), "/ledger?limit=1000").await;
    let kinds: Vec<&str> = ledger["entries"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in ["deployment.created", "deployment.started", "deployment.succeeded"] {
        assert_eq!(kinds.iter().filter(|x| **x == k).count(), 3, "{k}");
    }
    verified(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_lock_blocks_a_deployment_until_it_is_forced_and_the_force_is_ledgered() {
    let app = TestAppliance::start();
    let held = cli(&app, &["orch", "locks", "acquire", "env:prod", "--owner", "promotion-7"]);
    let token = held["token"].as_u64().unwrap();
    let (code, msg) = refused(&app, &["deploy", "--env", "prod", "--artifact", "web@1.4.1"]);
    assert_eq!(code, Some(7), "{msg}");
    for part in
        ["env_locked", "promotion-7", &format!("fencing token {token}"), "stella orch locks release --env prod --force"]
    {
        assert!(msg.contains(part), "{part:?} in {msg}");
    }
    let (code, msg) = refused(&app, &["rollback", "start", "--env", "prod", "--to", "web@1.4.1"]);
    assert_eq!(code, Some(7), "{msg}");
    assert!(msg.contains("env_locked") && msg.contains("promotion-7"), "{msg}");
    let listed = cli(&app, &["orch", "locks", "list", "--env", "prod"]);
    assert_eq!(listed["locks"][0]["holder"], "promotion-7", "{listed}");

    // deploy --force breaks it, in the deployment's own transaction, with the actor.
    let d = cli(
        &app,
        &["deploy", "--env", "prod", "--artifact", "web@1.4.1", "--force", "--reason", "promotion-7 is stuck"],
    );
    assert!(d["forced"][0].as_str().unwrap().contains("promotion-7"), "{d}");
    assert_eq!(settled(&app, &d).await["status"], "success");
    let ledger = api_get(&app.socket_client(), "/ledger?limit=1000").await;
    let forced = ledger["entries"].as_array().unwrap().iter().find(|e| e["kind"] == "lock.force_released").unwrap();
    assert_eq!(forced["data"]["holder"], "promotion-7", "{forced}");
    assert_eq!(forced["data"]["reason"], "promotion-7 is stuck", "{forced}");
    assert!(forced["actor"].as_str().unwrap().starts_with("local:uid="), "{forced}");

    // The runbook's other way: release it, then deploy.
    cli(&app, &["orch", "locks", "acquire", "env:prod", "--owner", "promotion-8"]);
    refused(&app, &["deploy", "--env", "prod", "--artifact", "web@1.4.2"]);
    let out = app.stella(&["orch", "locks", "release", "--env", "prod", "--force", "--reason", "runbook 001"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(deploy(&app, "prod", "web@1.4.2").await["status"], "success");
    verified(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_deploying_to_one_environment_at_once_one_wins_and_the_other_is_told_who() {
    let app = TestAppliance::start();
    let t = target(&app, "staging");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join(".slow"), "2").unwrap();
    let c = app.socket_client();
    let body = |a: &str| serde_json::json!({ "env": "staging", "artifact": a });
    let (one, two) = (body("web@1.4.1"), body("web@1.4.2"));
    let (a, b) = tokio::join!(
        c.post("/api/v1/orchestrator/deployments", &one),
        c.post("/api/v1/orchestrator/deployments", &two)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let (won, lost) = if a.status.as_u16() == 200 { (a, b) } else { (b, a) };
    let (won, lost): (Value, Value) = (won.json().unwrap(), lost.json().unwrap());
    assert_eq!(lost["code"], "deployment_in_progress", "{lost}");
    // A rollback meanwhile names the deployment, not the lock its deploy step holds.
    let (_, msg) = refused(&app, &["rollback", "start", "--env", "staging", "--to", "web@1.4.0"]);
    assert!(msg.contains("deployment_in_progress") && !msg.contains("locks release"), "{msg}");
    let detail = lost["detail"].as_str().unwrap();
    assert!(
        detail.contains(won["id"].as_str().unwrap()) && detail.contains(won["artifact"].as_str().unwrap()),
        "{detail}"
    );
    std::fs::remove_file(t.join(".slow")).unwrap();
    assert_eq!(settled(&app, &won).await["status"], "success");
    assert_eq!(
        cli(&app, &["orch", "deployments", "list", "--env", "staging"])["deployments"].as_array().unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_fails_the_deployment_with_the_plugins_error_and_frees_the_environment() {
    let app = TestAppliance::start();
    let good = deploy(&app, "dev", "web@1.4.0").await;
    assert_eq!(good["status"], "success");
    let t = target(&app, "dev");
    std::fs::write(t.join(".unhealthy"), "").unwrap();
    let bad = deploy(&app, "dev", "web@1.4.1").await;
    assert_eq!((bad["status"].as_str(), bad["failedStep"].as_str()), (Some("failed"), Some("health")), "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("does not answer"), "{bad}");
    // A failed deployment is not taken up again behind its checks: a new one is made instead.
    let (code, msg) = refused(&app, &["orch", "run", "retry", bad["runId"].as_str().unwrap(), "--step", "health"]);
    assert!(
        code == Some(7) && msg.contains("deployment_run") && msg.contains("stella rollback start --env dev"),
        "{msg}"
    );
    let replay =
        app.socket_client().post("/api/v1/orchestrator/dlq/replay", &serde_json::json!({ "all": true })).await.unwrap();
    let body = String::from_utf8_lossy(&replay.body).into_owned();
    assert!(replay.status.as_u16() == 409 && body.contains("deployment_run"), "a DLQ replay neither: {body}");
    for args in [&["orch", "dag", "disable", "deploy-dev"][..], &["orch", "dag", "rollback", "probe-dev"]] {
        let (_, msg) = refused(&app, args);
        assert!(msg.contains("deployment_dag") && msg.contains("release bundle"), "{args:?}: {msg}");
    }
    let env = cli(&app, &["orch", "env", "status", "dev"]);
    assert_eq!(env["health"]["status"], "failing", "{env}");
    assert_eq!(env["current"]["id"], good["id"], "the last success stays current: {env}");
    assert!(env["inFlight"].is_null(), "{env}");
    std::fs::remove_file(t.join(".unhealthy")).unwrap();
    std::fs::write(t.join(".bad-credentials"), "").unwrap();
    let refused_creds = deploy(&app, "dev", "web@1.4.2").await;
    assert_eq!(refused_creds["failedStep"], "deploy", "{refused_creds}");
    assert!(refused_creds["error"].as_str().unwrap().contains("credentials refused"), "{refused_creds}");
    std::fs::remove_file(t.join(".bad-credentials")).unwrap();
    assert_eq!(deploy(&app, "dev", "web@1.4.2").await["status"], "success");
    // The deployment DAG runs only as a deployment.
    let out = app.stella(&["orch", "run", "start", "deploy-dev"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("runs only as a deployment"), "{}", stderr(&out));
    verified(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_deleted_artifact_is_refused_before_anything_changes_and_the_check_names_it() {
    let app = TestAppliance::start();
    deploy(&app, "prod", "web@1.4.1").await;
    deploy(&app, "prod", "web@1.4.2").await;
    let digest = cli(&app, &["orch", "artifacts", "get", "web@1.4.1"])["digest"].as_str().unwrap().to_owned();
    let sealed = app.layout().registry().join("sha256").join(&digest);
    std::fs::write(sealed.join("index.html"), "<p>not what was signed</p>").unwrap();

    let out = app.stella(&["--format", "json", "orch", "artifacts", "get", "web@1.4.1", "--check"]);
    assert_eq!(out.status.code(), Some(8), "a failed check exits 8: {}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["check"]["present"].as_bool(), v["check"]["verified"].as_bool()), (Some(true), Some(false)), "{v}");
    assert!(v["check"]["problem"].as_str().unwrap().contains("index.html changed on disk"), "{v}");
    assert!(v["check"]["fix"].as_str().unwrap().contains("stella registry restore --artifact web@1.4.1 --from backup"));
    let before = ledger_height(&app.socket_client()).await;
    let (code, msg) = refused(&app, &["deploy", "--env", "prod", "--artifact", "web@1.4.1"]);
    assert_eq!(code, Some(7), "{msg}");
    assert!(msg.contains("artifact_unverified") && msg.contains("registry restore"), "{msg}");
    // The rollback's last known good is that artifact: there is none usable now.
    let (_, msg) = refused(&app, &["rollback", "start", "--env", "prod"]);
    assert!(msg.contains("no_last_known_good") && msg.contains("index.html changed on disk"), "{msg}");
    assert_eq!(ledger_height(&app.socket_client()).await, before, "nothing was recorded");
    assert_eq!(installed_version(&app, "prod"), "1.4.2", "nothing changed on the target");

    std::fs::remove_dir_all(&sealed).unwrap();
    let (_, msg) = refused(&app, &["deploy", "--env", "prod", "--artifact", "web@1.4.1"]);
    assert!(msg.contains("artifact_missing") && msg.contains("not in the registry"), "{msg}");
    let (code, msg) = refused(&app, &["deploy", "--env", "prod", "--artifact", "web@9.9.9"]);
    assert!(code == Some(7) && msg.contains("artifact_not_found"), "{msg}");
    let (code, msg) = refused(&app, &["deploy", "--env", "nowhere", "--artifact", "web@1.4.2"]);
    assert!(code == Some(6) && msg.contains("environment nowhere"), "{msg}");
    let (code, msg) = refused(&app, &["deploy", "--env", "prod", "--artifact", "web"]);
    assert!(code == Some(9) && msg.contains("NAME@VERSION"), "{msg}");
}

/// A site's own release bundle, signed with the dev key and imported as an operator does: a
/// frozen environment refuses deployments naming the window; a release naming a plugin that
/// is not installed, or an artifact signed by an untrusted key, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_releases_and_artifacts_enter_as_signed_bundles_and_a_freeze_refuses_deployments() {
    let app = TestAppliance::start();
    let root = app.root();
    let key = app.layout().dev_bundle_key();
    let key = key.to_str().unwrap();
    let write = |dir: &str, file: &str, text: &str| {
        std::fs::create_dir_all(root.join(dir)).unwrap();
        std::fs::write(root.join(dir).join(file), text).unwrap();
    };
    write(
        "rel",
        "release.toml",
        "[environments.vault]\nplugin = \"sample-deploy\"\ntarget = \"targets/vault\"\n\
         [[environments.vault.freeze]]\nname = \"forever\"\nfrom = \"2000-01-01\"\nuntil = \"2100-01-01\"\nreason = \"audit\"\n",
    );
    let built = build_bundle(
        root,
        root.join("rel").to_str().unwrap(),
        "release",
        "site-release",
        "1.0.0",
        key,
        root.join("rel.bundle").to_str().unwrap(),
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let out = app.stella(&["bundle", "import", root.join("rel.bundle").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let env = cli(&app, &["orch", "env", "status", "vault"]);
    assert_eq!(
        (env["frozen"]["name"].as_str(), env["declaredBy"].as_str()),
        (Some("forever"), Some("site-release 1.0.0")),
        "{env}"
    );
    let (code, msg) = refused(&app, &["deploy", "--env", "vault", "--artifact", "web@1.4.1"]);
    assert_eq!(code, Some(7), "{msg}");
    assert!(msg.contains("env_frozen") && msg.contains("forever (audit)") && msg.contains("2100-01-01"), "{msg}");

    write("rel2", "release.toml", "[environments.x]\nplugin = \"no-such-plugin\"\ntarget = \"targets/x\"\n");
    build_bundle(
        root,
        root.join("rel2").to_str().unwrap(),
        "release",
        "bad-release",
        "1.0.0",
        key,
        root.join("rel2.bundle").to_str().unwrap(),
    );
    let out = app.stella(&["bundle", "import", root.join("rel2.bundle").to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("no-such-plugin"), "{}", stderr(&out));

    // web@1.4.1 again with other content: refused before anything is written, so the registry
    // and the backup copy keep the good one.
    write("again", "VERSION", "not 1.4.1\n");
    let built = build_bundle(
        root,
        root.join("again").to_str().unwrap(),
        "artifact",
        "web",
        "1.4.1",
        key,
        root.join("again.bundle").to_str().unwrap(),
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let backup = app.layout().lib().join("registry-backup/web@1.4.1.bundle");
    let before = std::fs::read(&backup).unwrap();
    let out = app.stella(&["bundle", "import", root.join("again.bundle").to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("version_reused"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&backup).unwrap(), before, "the good backup copy stays");
    let digest = cli(&app, &["orch", "artifacts", "get", "web@1.4.1"])["digest"].as_str().unwrap().to_owned();
    std::fs::remove_dir_all(app.layout().registry().join("sha256").join(&digest)).unwrap();
    cli(&app, &["registry", "restore", "--artifact", "web@1.4.1", "--from", "backup"]);
    assert_eq!(cli(&app, &["orch", "artifacts", "get", "web@1.4.1", "--check"])["check"]["ok"], true);

    let other = root.join("other_ed25519");
    let made = app.stella(&["keys", "generate", "--out", other.to_str().unwrap()]);
    assert!(made.status.success(), "{}", stderr(&made));
    write("art", "VERSION", "2.0.0\n");
    let built = build_bundle(
        root,
        root.join("art").to_str().unwrap(),
        "artifact",
        "web",
        "2.0.0",
        other.to_str().unwrap(),
        root.join("art.bundle").to_str().unwrap(),
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let out = app.stella(&["bundle", "import", root.join("art.bundle").to_str().unwrap()]);
    assert!(!out.status.success(), "an untrusted signer is refused");
    assert!(stderr(&out).contains("signature"), "{}", stderr(&out));
    let listed = cli(&app, &["orch", "artifacts", "list", "--filter", "web@2"]);
    assert_eq!(listed["artifacts"].as_array().unwrap().len(), 0, "{listed}");
    assert!(
        !app.layout().registry().join("sha256").read_dir().unwrap().any(|e| {
            std::fs::read_to_string(e.unwrap().path().join("VERSION")).is_ok_and(|v| v.starts_with("2.0.0"))
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_one_tenant_cannot_see_or_change_the_sites_releases() {
    let app = TestAppliance::start_with(|c| c.tenants.allowed = vec!["a".into(), "b".into()]);
    let c = app.socket_client();
    let (_, secret) = create_token(&c, "a", &["orchestrator:read", "orchestrator:operate"], None).await;
    let https = app.https_client(Some(&secret));
    for path in ["/environments", "/artifacts", "/deployments"] {
        let r = https.get(&format!("/api/v1/orchestrator{path}")).await.unwrap();
        assert_eq!(r.status.as_u16(), 403, "{path}");
    }
    let r = https
        .post("/api/v1/orchestrator/deployments", &serde_json::json!({ "env": "prod", "artifact": "web@1.4.1" }))
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 403);
    assert!(cli(&app, &["orch", "deployments", "list"])["deployments"].as_array().unwrap().is_empty());
    // The site's deployment runs and environment locks are out of a tenant's reach too.
    let d = deploy(&app, "prod", "web@1.4.1").await;
    let run = d["runId"].as_str().unwrap();
    assert_eq!(https.get(&format!("/api/v1/orchestrator/runs/{run}")).await.unwrap().status.as_u16(), 404);
    let r = https.post(&format!("/api/v1/orchestrator/runs/{run}:cancel"), &serde_json::json!({})).await.unwrap();
    assert_eq!(r.status.as_u16(), 404);
    let r = https
        .post("/api/v1/orchestrator/locks", &serde_json::json!({ "resource": "env:prod", "owner": "squatter" }))
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 403);
    assert_eq!(cli(&app, &["orch", "deployments", "current", "--env", "prod"])["id"], d["id"]);
}

/// Runbook 001, "previous artifact not in registry": the rollback is refused naming the
/// missing artifact and the restore; the backup copy brings it back; retention never deletes
/// the last known good and ledgers what it deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_refused_for_a_deleted_artifact_succeeds_after_the_restore_from_backup() {
    let app = TestAppliance::start();
    for a in ["web@1.4.1", "web@1.4.2"] {
        assert_eq!(deploy(&app, "prod", a).await["status"], "success");
    }
    let digest = cli(&app, &["orch", "artifacts", "get", "web@1.4.1"])["digest"].as_str().unwrap().to_owned();
    std::fs::remove_dir_all(app.layout().registry().join("sha256").join(&digest)).unwrap();
    let (code, msg) = refused(&app, &["rollback", "start", "--env", "prod"]);
    assert_eq!(code, Some(7), "{msg}");
    assert!(msg.contains("no_last_known_good"), "{msg}");
    assert!(msg.contains("stella registry restore --artifact web@1.4.1 --from backup"), "{msg}");

    let restored = cli(&app, &["registry", "restore", "--artifact", "web@1.4.1", "--from", "backup"]);
    assert!(restored["restoredAt"].is_string(), "{restored}");
    assert_eq!(cli(&app, &["orch", "artifacts", "get", "web@1.4.1", "--check"])["check"]["ok"], true);
    let rb = cli(&app, &["rollback", "start", "--env", "prod"]);
    assert_eq!(
        (rb["artifact"].as_str(), settled(&app, &rb).await["status"].as_str()),
        (Some("web@1.4.1"), Some("success"))
    );
    assert_eq!(installed_version(&app, "prod"), "1.4.1");

    // Retention: the last known good (web@1.4.2 now) and what runs are kept, whatever the policy.
    let shown = cli(&app, &["registry", "retention", "show"]);
    assert_eq!(shown["policy"]["minVersions"], 5, "{shown}");
    cli(&app, &["registry", "retention", "set", "--min-versions", "1"]);
    let out = app.stella(&["registry", "delete", "--artifact", "web@1.4.2", "--reason", "space"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("artifact_retained") && stderr(&out).contains("last known good of prod"),
        "{}",
        stderr(&out)
    );
    let shown = cli(&app, &["registry", "retention", "show"]);
    let verdict = |a: &str| shown["artifacts"].as_array().unwrap().iter().find(|v| v["artifact"] == a).unwrap().clone();
    assert_eq!(
        (verdict("web@1.4.0")["keep"].as_bool(), verdict("web@1.4.1")["keep"].as_bool()),
        (Some(false), Some(true))
    );
    let applied = cli(&app, &["registry", "retention", "apply", "--reason", "runbook drill"]);
    assert_eq!(applied["deleted"], serde_json::json!(["web@1.4.0"]), "{applied}");
    let ledger = api_get(&app.socket_client(), "/ledger?limit=2000").await;
    let deleted: Vec<&Value> =
        ledger["entries"].as_array().unwrap().iter().filter(|e| e["kind"] == "artifact.deleted").collect();
    assert_eq!((deleted.len(), deleted[0]["data"]["reason"].as_str()), (1, Some("runbook drill")));
    let (_, msg) = refused(&app, &["deploy", "--env", "prod", "--artifact", "web@1.4.0"]);
    assert!(msg.contains("artifact_deleted") && msg.contains("registry restore --artifact web@1.4.0"), "{msg}");

    // The bundle imported again brings a deleted version back (ledgered as a restore).
    let sample = app.layout().lib().join("dev/web-1.4.0.bundle");
    let out = app.stella(&["bundle", "import", sample.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cli(&app, &["orch", "artifacts", "get", "web@1.4.0", "--check"])["check"]["ok"], true);
    let ledger = api_get(&app.socket_client(), "/ledger?limit=2000").await;
    let restored = |e: &&Value| e["kind"] == "artifact.restored" && e["data"]["artifact"] == "web@1.4.0";
    assert!(ledger["entries"].as_array().unwrap().iter().any(|e| restored(&e)));
    cli(&app, &["registry", "retention", "apply", "--reason", "again"]);

    // A damaged backup is refused, and the registry is left as it was.
    let backup = app.layout().lib().join("registry-backup/web@1.4.0.bundle");
    let mut bytes = std::fs::read(&backup).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&backup, bytes).unwrap();
    let (_, msg) = refused(&app, &["registry", "restore", "--artifact", "web@1.4.0", "--from", "backup"]);
    assert!(msg.contains("backup_unverified"), "{msg}");
    let (_, msg) = refused(&app, &["registry", "restore", "--artifact", "web@1.4.0", "--from", "elsewhere"]);
    assert!(msg.contains("the only source is backup"), "{msg}");
    verified(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_shown_by_env_config_diff_and_reset_to_baseline_puts_the_baseline_back() {
    let app = TestAppliance::start();
    deploy(&app, "staging", "web@1.4.1").await;
    let clean = cli(&app, &["orch", "env", "config", "diff", "staging"]);
    assert_eq!(clean["drifted"], false, "{clean}");
    let config = target(&app, "staging").join("config.json");
    let text = std::fs::read_to_string(&config).unwrap().replace("\"replicas\":2", "\"replicas\":7");
    std::fs::write(&config, text).unwrap();
    let drift = cli(&app, &["orch", "env", "config", "diff", "staging"]);
    assert_eq!(drift["drifted"], true, "{drift}");
    assert_eq!(drift["drift"][0]["path"], "$.replicas", "{drift}");
    assert_eq!((drift["drift"][0]["baseline"].as_u64(), drift["drift"][0]["observed"].as_u64()), (Some(2), Some(7)));
    let unified = drift["unifiedDiff"].as_str().unwrap();
    assert!(unified.contains("-  \"replicas\": 2") && unified.contains("+  \"replicas\": 7"), "{unified}");
    let text = app.stella(&["orch", "env", "config", "diff", "staging"]);
    assert!(stdout(&text).contains("stella orch env reset staging --to-baseline"), "{}", stdout(&text));

    let reset = cli(&app, &["orch", "env", "reset", "staging", "--to-baseline"]);
    assert_eq!((reset["kind"].as_str(), reset["artifact"].as_str()), (Some("reset"), Some("web@1.4.1")), "{reset}");
    assert_eq!(settled(&app, &reset).await["status"], "success");
    assert_eq!(cli(&app, &["orch", "env", "config", "diff", "staging"])["drifted"], false);
    let (_, msg) = refused(&app, &["orch", "env", "reset", "dev", "--to-baseline"]);
    assert!(msg.contains("never_deployed"), "{msg}");
    let (_, msg) = refused(&app, &["orch", "env", "config", "diff", "dev"]);
    assert!(msg.contains("never_deployed") && msg.contains("deploy first"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reach_authentication_and_authorization_are_checked_through_the_agent_one_by_one() {
    let app = TestAppliance::start();
    deploy(&app, "prod", "web@1.4.1").await;
    let health = cli(&app, &["orch", "health-check", "--env", "prod"]);
    assert_eq!((health["health"]["status"].as_str(), health["reach"].as_str()), (Some("ok"), Some("ok")), "{health}");
    let t = target(&app, "prod");
    std::fs::write(t.join(".unauthorized"), "").unwrap();
    let out = app.stella(&["--format", "json", "orch", "credentials", "verify", "--target", "prod"]);
    assert_eq!(out.status.code(), Some(1), "a failed check exits 1");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["reach"].as_str(), v["authenticate"].as_str(), v["authorize"].as_str()),
        (Some("ok"), Some("ok"), Some("failed")),
        "{v}"
    );
    std::fs::remove_file(t.join(".unauthorized")).unwrap();
    std::fs::write(t.join(".bad-credentials"), "").unwrap();
    let v: Value = serde_json::from_slice(
        &app.stella(&["--format", "json", "orch", "credentials", "verify", "--target", "prod"]).stdout,
    )
    .unwrap();
    assert_eq!((v["authenticate"].as_str(), v["authorize"].as_str()), (Some("failed"), Some("not checked")), "{v}");
    std::fs::remove_file(t.join(".bad-credentials")).unwrap();
    std::fs::write(t.join(".unreachable"), "").unwrap();
    let out = app.stella(&["orch", "connectivity", "--target", "prod"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("target unreachable"), "{}", stdout(&out));
    let v: Value = serde_json::from_slice(
        &app.stella(&["--format", "json", "orch", "credentials", "verify", "--target", "prod"]).stdout,
    )
    .unwrap();
    assert_eq!((v["reach"].as_str(), v["authenticate"].as_str()), (Some("failed"), Some("not checked")), "{v}");
    std::fs::remove_file(t.join(".unreachable")).unwrap();
    let out = app.stella(&["orch", "health-check", "--env", "prod"]);
    assert!(out.status.success() && stdout(&out).contains("health of prod: ok"), "{}", stdout(&out));
}

/// Runbook 001, "database state inconsistent": a deployment left in progress by a kill -9 is
/// settled by `orch repair --deployment` from the agent's report; the environment is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_left_in_progress_by_kill_9_is_settled_by_repair() {
    let mut app = TestAppliance::start();
    let t = target(&app, "prod");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(t.join(".slow"), "30").unwrap();
    let d = cli(&app, &["deploy", "--env", "prod", "--artifact", "web@1.4.1"]);
    wait_for_event(&app.socket_client(), d["runId"].as_str().unwrap(), "event: step.started").await;
    app.kill9();
    app.launch();
    let stuck = cli(&app, &["orch", "deployments", "list", "--env", "prod"]);
    assert_eq!(stuck["deployments"][0]["status"], "in_progress", "{stuck}");
    let (_, msg) = refused(&app, &["deploy", "--env", "prod", "--artifact", "web@1.4.2"]);
    assert!(msg.contains("deployment_in_progress") && msg.contains("stella orch repair --deployment dep-1"), "{msg}");

    let repaired = cli(&app, &["orch", "repair", "--deployment", "dep-1"]);
    assert_eq!(repaired["status"], "failed", "the agent does not report web@1.4.1 running: {repaired}");
    assert!(repaired["error"].as_str().unwrap().starts_with("repaired: the agent's health check"), "{repaired}");
    let (_, msg) = refused(&app, &["orch", "repair", "--deployment", "dep-1"]);
    assert!(msg.contains("deployment_settled"), "{msg}");
    let run = api_get(&app.socket_client(), &format!("/runs/{}", d["runId"].as_str().unwrap())).await;
    assert_eq!(run["status"], "cancelled", "its run was cancelled with it: {run}");
    // The cancelled step's job gave the lock env:prod back in the repair's own transaction.
    let locks = cli(&app, &["orch", "locks", "list", "--env", "prod"]);
    assert!(locks["locks"].as_array().unwrap().is_empty(), "{locks}");
    std::fs::remove_file(t.join(".slow")).unwrap();
    assert_eq!(deploy(&app, "prod", "web@1.4.2").await["status"], "success");
    let ledger = api_get(&app.socket_client(), "/ledger?limit=2000").await;
    let kinds: Vec<&str> = ledger["entries"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "deployment.repaired").count(), 1);
    assert!(!kinds.contains(&"deployment.failed"), "the repair settles it, not its run's cancel");
    verified(&app);
}

/// What runbook 001 starts from: the doctor's rollback-health check, the alert's metric, and
/// the agent status, each telling the state as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rollback_health_check_the_rollback_metric_and_agent_status_tell_it_as_it_is() {
    let app = TestAppliance::start();
    let doctor = |app: &TestAppliance| -> (Option<i32>, Value) {
        let out = app.stella(&["--format", "json", "doctor", "--check", "check.orchestrator.rollback-health"]);
        (out.status.code(), serde_json::from_slice(&out.stdout).unwrap())
    };
    let prod =
        |v: &Value| v["findings"].as_array().unwrap().iter().find(|f| f["subject"] == "env prod").unwrap().clone();
    deploy(&app, "prod", "web@1.4.1").await;
    let (code, v) = doctor(&app);
    assert_eq!((code, prod(&v)["level"].as_str()), (Some(0), Some("warn")), "{v}");
    deploy(&app, "prod", "web@1.4.2").await;
    let (code, v) = doctor(&app);
    assert_eq!((code, v["worst"].as_str()), (Some(0), Some("ok")), "{v}");
    let digest = cli(&app, &["orch", "artifacts", "get", "web@1.4.1"])["digest"].as_str().unwrap().to_owned();
    std::fs::remove_dir_all(app.layout().registry().join("sha256").join(&digest)).unwrap();
    let (code, v) = doctor(&app);
    assert_eq!((code, prod(&v)["level"].as_str()), (Some(1), Some("error")), "{v}");
    assert_eq!(prod(&v)["fix"], "stella registry restore --artifact web@1.4.1 --from backup", "{v}");
    let text = app.stella(&["doctor", "--check", "check.orchestrator.rollback-health"]);
    assert!(
        stdout(&text).contains("ERROR [check.orchestrator.rollback-health] (env prod) no last known good"),
        "{}",
        stdout(&text)
    );
    cli(&app, &["registry", "restore", "--artifact", "web@1.4.1", "--from", "backup"]);

    // A rollback that fails its health check: the alert's series counts it.
    std::fs::write(target(&app, "prod").join(".unhealthy"), "").unwrap();
    let rb = cli(&app, &["rollback", "start", "--env", "prod"]);
    assert_eq!(settled(&app, &rb).await["status"], "failed");
    let metrics = app.socket_client().get("/metrics").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(text.contains(r#"orchestrator_rollbacks_total{env="prod",status="failed"} 1"#), "{text}");
    assert!(text.contains(r#"orchestrator_deployments_total{env="prod",kind="direct",status="success"} 2"#), "{text}");
    assert!(text.contains(r#"orchestrator_deployment_info{env="prod",artifact="web@1.4.2"} 1"#), "{text}");
    let status = cli(&app, &["rollback", "status", "--env", "prod"]);
    assert_eq!(
        (status["status"].as_str(), status["failedStep"].as_str()),
        (Some("failed"), Some("health")),
        "{status}"
    );

    let agents = cli(&app, &["orch", "agent", "status", "--env", "prod"]);
    assert_eq!(
        (agents["agents"][0]["kind"].as_str(), agents["agents"][0]["chosen"].as_bool()),
        (Some("in-process"), Some(true)),
        "{agents}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_in_process_agent_off_the_agent_status_and_the_rollback_say_why() {
    let app = TestAppliance::start_with(|c| c.exec.enabled = false);
    let agents = cli(&app, &["orch", "agent", "status", "--env", "prod"]);
    assert!(agents["note"].as_str().unwrap().contains("exec.enabled = true"), "{agents}");
    let (code, msg) = refused(&app, &["rollback", "start", "--env", "prod", "--to", "web@1.4.1"]);
    assert_eq!(code, Some(7), "{msg}");
    assert!(msg.contains("agent_unavailable") && msg.contains("stella orch agent status --env prod"), "{msg}");
    // A direct deployment no agent would take is refused too, rather than left pending.
    let (_, msg) = refused(&app, &["deploy", "--env", "prod", "--artifact", "web@1.4.1"]);
    assert!(msg.contains("agent_unavailable") && msg.contains("exec.enabled"), "{msg}");
    assert!(cli(&app, &["orch", "deployments", "list"])["deployments"].as_array().unwrap().is_empty());
    let out = app.stella(&["--format", "json", "doctor"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["level"] == "error" && f["message"].as_str().unwrap().contains("exec.enabled"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_declares_environments_from_a_local_file_recorded_unsigned() {
    let app = TestAppliance::start();
    let file = app.root().join("lab-release.toml");
    std::fs::write(
        &file,
        "[environments.lab]\nplugin = \"sample-deploy\"\ntarget = \"targets/lab\"\nbaseline = { replicas = 1 }\n",
    )
    .unwrap();
    let declared = cli(&app, &["orch", "env", "declare", file.to_str().unwrap()]);
    let lab = declared["environments"].as_array().unwrap().iter().find(|e| e["name"] == "lab").unwrap().clone();
    assert_eq!(lab["declaredBy"], "lab-release.toml (dev mode) unsigned", "{lab}");
    let d = deploy(&app, "lab", "web@1.4.1").await;
    assert_eq!(d["status"], "success", "{d}");
    assert_eq!(installed_version(&app, "lab"), "1.4.1");
    let dag = cli(&app, &["orch", "dag", "show", "deploy-lab"]);
    assert!(dag.to_string().contains("unsigned"), "the generated DAG is recorded unsigned: {dag}");

    // A bad file is refused, naming the place; nothing changes.
    std::fs::write(&file, "[environments.lab]\nplugin = \"sample-deploy\"\ntarget = \"/etc\"\n").unwrap();
    let (code, msg) = refused(&app, &["orch", "env", "declare", file.to_str().unwrap()]);
    assert_eq!(code, Some(9), "{msg}");
    assert!(msg.contains("environment lab") && msg.contains("under targets/"), "{msg}");
    let still = cli(&app, &["orch", "env", "status", "lab"]);
    assert_eq!(still["target"].as_str().map(|t| t.ends_with("targets/lab")), Some(true), "{still}");
    verified(&app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_sweeps_registry_copies_no_record_names_and_keeps_the_recorded_ones() {
    let mut app = TestAppliance::start();
    let registry = app.layout().registry();
    let recorded: Vec<_> = std::fs::read_dir(registry.join("sha256")).unwrap().flatten().map(|e| e.path()).collect();
    assert!(!recorded.is_empty());
    // What an import killed between sealing and recording leaves behind.
    let orphan = registry.join("sha256").join("ab".repeat(32));
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("VERSION"), "9.9.9\n").unwrap();
    std::fs::create_dir_all(registry.join("meta").join("ab".repeat(32))).unwrap();
    app.terminate();
    app.launch();
    assert!(!orphan.exists() && !registry.join("meta").join("ab".repeat(32)).exists(), "the unrecorded copy is gone");
    for dir in &recorded {
        assert!(dir.is_dir(), "{} is recorded and stays", dir.display());
    }
    assert!(app.log().contains("removed registry copies no artifact record names"), "{}", app.log());
    let a = cli(&app, &["orch", "artifacts", "get", "web@1.4.1", "--check"]);
    assert_eq!(a["check"]["verified"], true, "{a}");
}
