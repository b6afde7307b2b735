//! A remote deploy agent (`stella agent run --env E`) as a separate process talking to the
//! appliance over TLS on loopback with a site token of scope `orchestrator:agent`: it alone
//! takes its environment's jobs, verifies what it runs against its own trust store, installs
//! under its own directory, and the appliance refuses to deploy while it is down — runbook
//! 001's "agent down → agent status names it → start it → rollback".

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn cli(app: &TestAppliance, args: &[&str]) -> Value {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let out = app.stella(&all);
    assert!(out.status.success(), "stella {args:?}: exit {:?}: {}", out.status.code(), stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

/// The agent process; killed when dropped.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// `stella --server URL --ca CERT --token T agent run --env edge --dir DIR`: no state
    /// directory, no socket — what an agent on another host has.
    fn start(app: &TestAppliance, token: &str, dir: &Path, trust: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join(format!("agent-{}.log", stella::ids::random_hex(4)));
        let child = Command::new(STELLA)
            .args(["--server", app.https.as_deref().unwrap()])
            .arg("--ca")
            .arg(app.layout().default_tls_cert())
            .args(["--token", token, "agent", "run", "--env", "edge", "--lease-ttl", "6s", "--dir"])
            .arg(dir)
            .arg("--trust")
            .arg(trust)
            .env_remove("STELLA_STATE_DIR")
            .env_remove("STATE_DIRECTORY")
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(std::fs::File::options().append(true).open(&log).unwrap()))
            .spawn()
            .unwrap();
        AgentProcess { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `orch agent status --env edge` until `done` holds of it (the agent's liveness is a write
/// without an event to wait on), bounded.
fn agent_status_until(app: &TestAppliance, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let v = cli(app, &["orch", "agent", "status", "--env", "edge"]);
        if done(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "agent status never showed {what}: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `.stella-pgid` files under `work`: one per plugin process running there.
fn pgid_files(work: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![work.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == ".stella-pgid") {
                out.push(p);
            }
        }
    }
    out
}

/// The agent process (of this stella version, not the test playing it) is chosen.
fn chosen(v: &Value) -> bool {
    v["agents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["id"] == "edge-agent" && a["chosen"] == true && a["version"] == env!("CARGO_PKG_VERSION"))
}

async fn deployed(app: &TestAppliance, args: &[&str]) -> Value {
    let d = cli(app, args);
    wait_end(&app.socket_client(), d["runId"].as_str().unwrap()).await;
    let all = cli(app, &["orch", "deployments", "list", "--env", "edge"]);
    all["deployments"].as_array().unwrap().iter().find(|x| x["id"] == d["id"]).unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_agent_over_tls_deploys_its_environment_and_rollback_waits_for_it_to_be_up() {
    let mut app = TestAppliance::start_with(|c| {
        c.agents.down_after_ms = 5_000;
        c.queue.long_poll_max_ms = 300;
    });
    let root = app.root().to_path_buf();
    let key = app.layout().dev_bundle_key();
    std::fs::create_dir_all(root.join("rel")).unwrap();
    std::fs::write(
        root.join("rel/release.toml"),
        "[environments.edge]\nplugin = \"sample-deploy\"\ntarget = \"targets/edge\"\nagent = \"edge-agent\"\n\
         baseline = { replicas = 2 }\n",
    )
    .unwrap();
    let bundle = root.join("edge.bundle");
    let built = build_bundle(
        &root,
        root.join("rel").to_str().unwrap(),
        "release",
        "edge-release",
        "1.0.0",
        key.to_str().unwrap(),
        bundle.to_str().unwrap(),
    );
    assert!(built.status.success(), "{}", stderr(&built));
    let out = app.stella(&["bundle", "import", bundle.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let c = app.socket_client();

    // No agent has asked for work: the deployment is refused before anything changes, and
    // agent status says why.
    let out = app.stella(&["deploy", "--env", "edge", "--artifact", "web@1.4.1"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("agent_unavailable") && stderr(&out).contains("edge-agent has never asked for work"),
        "{}",
        stderr(&out)
    );
    let status = cli(&app, &["orch", "agent", "status", "--env", "edge"]);
    assert!(status["note"].as_str().unwrap().contains("stella agent run --env edge"), "{status}");

    // Tokens: the agent's is the site's, of scope orchestrator:agent only.
    let (_, token) = create_token(&c, "site", &["orchestrator:agent"], None).await;
    let refused = c
        .post(
            "/api/v1/orchestrator/auth/tokens",
            &json!({ "tenant": "site", "scopes": ["orchestrator:agent", "orchestrator:operate"] }),
        )
        .await
        .unwrap();
    assert_eq!(refused.status.as_u16(), 422, "a site token is an agent's only");
    let (_, operator) = create_token(&c, "default", &["orchestrator:operate"], None).await;
    let as_agent = json!({ "worker": "edge-agent", "types": ["sample-deploy"], "env": "edge", "agent": "0.0.0" });
    let r = app.https_client(Some(&operator)).post("/api/v1/orchestrator/leases", &as_agent).await.unwrap();
    assert_eq!(r.status.as_u16(), 403, "an operator's token cannot lease as a deploy agent");
    let agent_client = app.https_client(Some(&token));
    let generic = json!({ "worker": "w", "types": ["sample-deploy"] });
    let r = agent_client.post("/api/v1/orchestrator/leases", &generic).await.unwrap();
    assert_eq!(r.status.as_u16(), 403, "an agent's token leases only as an agent");
    let r = agent_client
        .post("/api/v1/orchestrator/deployments", &json!({ "env": "edge", "artifact": "web@1.4.1" }))
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 403, "an agent's token does not deploy");
    for path in
        ["/api/v1/orchestrator/runs", "/api/v1/orchestrator/config", "/api/v1/orchestrator/jobs/job-000000000001"]
    {
        let r = agent_client.get(path).await.unwrap();
        assert_eq!(r.status.as_u16(), 403, "an agent's token reads only its environment: {path}");
    }
    let r = agent_client.get("/api/v1/orchestrator/environments/edge").await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "{}", String::from_utf8_lossy(&r.body));
    // Nor does it settle a job the in-process agent runs (dev is deployed by it).
    let local = cli(&app, &["deploy", "--env", "dev", "--artifact", "web@1.4.1"]);
    let run = wait_end(&c, local["runId"].as_str().unwrap()).await;
    let job = run["steps"].as_array().unwrap()[0]["jobId"].as_str().unwrap().to_owned();
    let r = agent_client
        .post(&format!("/api/v1/orchestrator/leases/{job}/complete"), &json!({ "token": 1, "result": {} }))
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 403, "{}", String::from_utf8_lossy(&r.body));
    let misnamed = json!({ "worker": "other-agent", "types": ["sample-deploy"], "env": "edge", "agent": "0.0.0" });
    let r = agent_client.post("/api/v1/orchestrator/leases", &misnamed).await.unwrap();
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(r.status.as_u16() == 409 && body.contains("agent_not_chosen") && body.contains("edge-agent"), "{body}");
    // A DAG of one's own cannot send work to an environment's agent.
    let spec = "name = \"sneaky\"\n[steps.a]\nplugin = \"sample-deploy\"\nkind = \"observe\"\nagent = \"edge-agent\"\n";
    let r = c.post("/api/v1/orchestrator/dags", &json!({ "spec": spec })).await.unwrap();
    assert_eq!(r.status.as_u16(), 422, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("agent_step"), "{}", String::from_utf8_lossy(&r.body));

    // An agent that lets its lease lapse cannot settle the attempt afterwards: the fencing
    // token it holds is stale (here the test plays the agent over TLS).
    let ask = json!({ "worker": "edge-agent", "types": ["sample-deploy"], "env": "edge", "agent": "test", "ttl": "1s", "wait": "5s" });
    let r = agent_client.post("/api/v1/orchestrator/leases", &ask).await.unwrap();
    assert_eq!(r.status.as_u16(), 200, "{}", String::from_utf8_lossy(&r.body));
    let lapsed = cli(&app, &["deploy", "--env", "edge", "--artifact", "web@1.4.0"]);
    let got = agent_client.post("/api/v1/orchestrator/leases", &ask).await.unwrap().json().unwrap();
    let lease = got["leases"][0].clone();
    assert_eq!(lease["payload"]["kind"], "deploy", "{got}");
    assert_eq!(lease["payload"]["inputs"]["target"], "targets/edge", "a remote agent's target is relative: {got}");
    let run = wait_end(&c, lapsed["runId"].as_str().unwrap()).await;
    assert_eq!(run["status"], "failed", "the lease lapsed: {run}");
    let job = lease["jobId"].as_str().unwrap();
    let late = agent_client
        .post(&format!("/api/v1/orchestrator/leases/{job}/complete"), &json!({ "token": lease["token"], "result": {} }))
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&late.body).into_owned();
    assert!(late.status.as_u16() == 409 && body.contains("lease_stale"), "{body}");
    let d = cli(&app, &["orch", "deployments", "list", "--env", "edge"]);
    assert_eq!(d["deployments"][0]["status"], "failed", "the late completion changed nothing: {d}");

    // The agent, started as another host would: it verifies with the site's allowed_signers.
    let agent_dir = app.dir.path().join("edge-host");
    let trust = app.dir.path().join("edge-trust");
    std::fs::create_dir_all(&trust).unwrap();
    std::fs::copy(app.layout().trust_dir().join("allowed_signers"), trust.join("allowed_signers")).unwrap();
    let agent = AgentProcess::start(&app, &token, &agent_dir, &trust);
    let status = agent_status_until(&app, "edge-agent chosen", chosen);
    let a = status["agents"].as_array().unwrap().iter().find(|a| a["id"] == "edge-agent").unwrap().clone();
    assert_eq!(
        (a["kind"].as_str(), a["version"].as_str(), a["env"].as_str()),
        (Some("remote"), Some(env!("CARGO_PKG_VERSION")), Some("edge")),
        "{status}"
    );
    let local = status["agents"].as_array().unwrap().iter().find(|a| a["kind"] == "in-process");
    assert!(local.is_none_or(|l| l["chosen"] == false), "the in-process executor is not edge's agent: {status}");

    // Deployments run on the agent's host, under its directory; the appliance's targets stay empty.
    let d = deployed(&app, &["deploy", "--env", "edge", "--artifact", "web@1.4.1"]).await;
    assert_eq!(
        (d["status"].as_str(), d["agent"].as_str()),
        (Some("success"), Some("edge-agent")),
        "{d}\n{}",
        agent.log()
    );
    let installed =
        |v: &str| std::fs::read_to_string(agent_dir.join("targets/edge/current/VERSION")).unwrap().trim() == v;
    assert!(installed("1.4.1"), "{}", agent.log());
    assert!(!app.layout().targets().join("edge").exists(), "the appliance installs nothing for a remote agent");

    // Its cached plugin changed on its host: verified before every use, so fetched again.
    let cached_plugin = std::fs::read_dir(agent_dir.join("cache/plugin")).unwrap().next().unwrap().unwrap().path();
    let script = cached_plugin.join("files/run.sh");
    let original = std::fs::read(&script).unwrap();
    std::fs::write(&script, "#!/bin/sh\necho tampered\n").unwrap();
    let d = deployed(&app, &["deploy", "--env", "edge", "--artifact", "web@1.4.2"]).await;
    assert_eq!(d["status"], "success", "{d}\n{}", agent.log());
    assert!(installed("1.4.2"));
    assert_eq!(std::fs::read(&script).unwrap(), original, "the tampered copy was replaced by a verified one");
    assert!(agent.log().contains("fails verification"), "{}", agent.log());

    let health = cli(&app, &["orch", "health-check", "--env", "edge"]);
    assert_eq!(
        (health["health"]["status"].as_str(), health["agent"].as_str()),
        (Some("ok"), Some("edge-agent")),
        "{health}"
    );
    let diff = cli(&app, &["orch", "env", "config", "diff", "edge"]);
    assert_eq!(diff["drift"], json!([]), "the agent reports the baseline it installed: {diff}");

    // The agent dies with kill -9 in the middle of a deployment: its plugin (its own process
    // group) lives on, the lease lapses, the deployment fails; once the agent is overdue,
    // agent status says so and rollback refuses, naming it.
    std::fs::write(agent_dir.join("targets/edge/.slow"), "120").unwrap();
    let stuck = cli(&app, &["deploy", "--env", "edge", "--artifact", "web@1.4.0"]);
    let spawned = || pgid_files(&agent_dir.join("work"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while spawned().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the slow deploy never started: {}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.kill9();
    let run = wait_end(&c, stuck["runId"].as_str().unwrap()).await;
    assert_eq!(run["status"], "failed", "{run}");
    let all = cli(&app, &["orch", "deployments", "list", "--env", "edge"]);
    let d = all["deployments"].as_array().unwrap().iter().find(|x| x["id"] == stuck["id"]).unwrap().clone();
    assert!(d["status"] == "failed" && d["error"].as_str().unwrap().contains("expired"), "{d}");
    let status = agent_status_until(&app, "edge-agent down", |v| {
        v["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "edge-agent" && a["whyNot"].as_str().is_some_and(|w| w.contains("it is down")))
    });
    assert!(status["note"].as_str().unwrap().contains("stella agent run --env edge"), "{status}");
    let out = app.stella(&["rollback", "start", "--env", "edge"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("agent_unavailable") && stderr(&out).contains("stella orch agent status --env edge"),
        "{}",
        stderr(&out)
    );

    // Started again, it first stops the plugin its predecessor left (which would otherwise
    // install 1.4.0 late), then takes the rollback to the last known good.
    let agent = AgentProcess::start(&app, &token, &agent_dir, &trust);
    agent_status_until(&app, "edge-agent chosen again", chosen);
    assert!(agent.log().contains("stopping a plugin left running"), "{}", agent.log());
    std::fs::remove_file(agent_dir.join("targets/edge/.slow")).unwrap();
    let d = deployed(&app, &["rollback", "start", "--env", "edge"]).await;
    assert_eq!(
        (d["status"].as_str(), d["kind"].as_str(), d["artifact"].as_str()),
        (Some("success"), Some("rollback"), Some("web@1.4.1")),
        "{d}\n{}",
        agent.log()
    );
    assert!(installed("1.4.1"));

    // An agent that does not trust the signer runs nothing of it.
    drop(agent);
    let strict_dir = app.dir.path().join("strict-host");
    let empty_trust = app.dir.path().join("empty-trust");
    std::fs::create_dir_all(&empty_trust).unwrap();
    std::fs::write(empty_trust.join("allowed_signers"), "").unwrap();
    let strict = AgentProcess::start(&app, &token, &strict_dir, &empty_trust);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !strict.log().contains("deploy agent started") {
        assert!(std::time::Instant::now() < deadline, "the strict agent did not start: {}", strict.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let d = deployed(&app, &["deploy", "--env", "edge", "--artifact", "web@1.4.2"]).await;
    assert_eq!(d["status"], "failed", "{d}\n{}", strict.log());
    assert!(!strict_dir.join("targets/edge/current").exists(), "nothing was installed");
    let trace = cli(&app, &["rollback", "trace", d["id"].as_str().unwrap(), "--verbose"]);
    assert!(trace.to_string().contains("fails verification on this agent"), "{trace}");
    drop(strict);

    let v = cli(&app, &["orch", "db", "verify"]);
    assert_eq!(v["ok"], true, "{v}");
    app.terminate();
}
