//! The CLI against a running daemon, as the runbooks use it: real commands do the real thing
//! with documented exit codes; commands whose capability is not built yet say so (exit 3).

use crate::support::*;

#[test]
fn runbook_commands_not_built_yet_say_so_with_exit_3() {
    let app = TestAppliance::start();
    for args in [
        &["orch", "repair"][..],
        &["promotion", "gate", "skip", "--reason", "External service timeout"],
        &["doctor", "--check", "check.orchestrator.queue-depth"],
    ] {
        let out = app.stella(args);
        assert_eq!(out.status.code(), Some(3), "stella {args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("not available yet:"), "stella {args:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "no fake output for {args:?}");
    }
}

#[test]
fn tokens_are_created_listed_and_revoked_and_the_ledger_names_the_actor() {
    let app = TestAppliance::start();
    let created = app.stella(&[
        "--format",
        "json",
        "auth",
        "token",
        "create",
        "--tenant",
        "default",
        "--scopes",
        "orchestrator:read,orchestrator:operate",
        "--expires",
        "30d",
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    let v: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let id = v["id"].as_str().unwrap();
    assert!(v["token"].as_str().unwrap().starts_with("stl_"));
    assert_eq!(v["scopes"], serde_json::json!(["orchestrator:read", "orchestrator:operate"]));

    let revoked = app.stella(&["auth", "token", "revoke", id, "--reason", "rotated"]);
    assert!(stdout(&revoked).contains("revoked"), "{}", stderr(&revoked));
    let list: serde_json::Value =
        serde_json::from_slice(&app.stella(&["auth", "token", "list", "--format", "json"]).stdout).unwrap();
    let listed = list["tokens"].as_array().unwrap().iter().find(|t| t["id"] == id).unwrap();
    assert_eq!(listed["state"], "revoked");
    assert_eq!(listed["revokedReason"], "rotated");

    let ledger: serde_json::Value =
        serde_json::from_slice(&app.stella(&["orch", "ledger", "--format", "json"]).stdout).unwrap();
    let entry = ledger["entries"].as_array().unwrap().iter().find(|e| e["kind"] == "token.revoked").unwrap();
    let uid = unsafe { libc::geteuid() };
    assert_eq!(entry["actor"], format!("local:uid={uid}"));
    assert_eq!(entry["subjects"], serde_json::json!([id]));
}

#[test]
fn bad_input_and_a_stopped_daemon_get_their_exit_codes() {
    let mut app = TestAppliance::start();
    let bad = app.stella(&["auth", "token", "create", "--tenant", "nobody", "--scopes", "orchestrator:read"]);
    assert_eq!(bad.status.code(), Some(9), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("\"nobody\" is not in tenants.allowed"), "{}", stderr(&bad));
    let missing = app.stella(&["auth", "token", "show", "tok_000000000000"]);
    assert_eq!(missing.status.code(), Some(6), "{}", stderr(&missing));

    let status = app.stella(&["orch", "status", "--format", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(v["ledger"]["height"].as_u64().unwrap() >= 3);
    assert!(v["listeners"].as_array().unwrap().len() == 2);

    assert!(app.terminate().success());
    let down = app.stella(&["orch", "status"]);
    assert_eq!(down.status.code(), Some(4), "{}", stderr(&down));
}

#[test]
fn https_with_the_state_dir_uses_the_dev_token_and_certificate() {
    let app = TestAppliance::start();
    let out = app.stella(&["--server", app.https.as_deref().unwrap(), "orch", "status", "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let no_ca = std::process::Command::new(STELLA)
        .args(["--server", app.https.as_deref().unwrap(), "orch", "status"])
        .env_remove("STELLA_STATE_DIR")
        .output()
        .unwrap();
    assert_eq!(no_ca.status.code(), Some(9), "{}", stderr(&no_ca));
}

#[test]
fn completions_and_man_pages_are_generated() {
    let out = std::process::Command::new(STELLA).args(["generate", "completions", "bash"]).output().unwrap();
    assert!(out.status.success() && stdout(&out).contains("stella"));
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(STELLA).args(["generate", "man", "--out"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("stella.1").exists());
}

/// The README's first command, `serve --dev` in a working directory without `--state-dir`,
/// leaves the state in the relative `./stella-dev`: the sample DAG runs to the end there, its
/// plugin step included (its program is found whatever directory it runs in), and the CLI
/// reaches the daemon from that directory although the socket's absolute path is longer than
/// a socket address holds.
#[test]
fn the_readme_appliance_runs_the_sample_dag() {
    let app = TestAppliance::start_as_the_readme_does();
    assert!(app.root().join("var/lib/stella").is_dir());
    assert!(app.layout().default_socket().as_os_str().len() > 107, "the test needs a deep directory");
    let cli = |args: &[&str]| {
        std::process::Command::new(STELLA)
            .current_dir(app.working_dir())
            .args(["--state-dir", "stella-dev", "--format", "json"])
            .args(args)
            .output()
            .unwrap()
    };
    let started = cli(&["orch", "run", "start", "sample-pipeline"]);
    assert!(started.status.success(), "{}", stderr(&started));
    let id = serde_json::from_slice::<serde_json::Value>(&started.stdout).unwrap()["id"].as_str().unwrap().to_owned();
    let streamed = cli(&["orch", "run", "stream", &id, "--after", "0", "--until-done"]);
    assert!(streamed.status.success(), "{}", stderr(&streamed));
    let status = cli(&["orch", "run", "status", &id]);
    let run: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(run["status"], "succeeded", "{run}");
}
