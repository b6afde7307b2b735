//! Plugin processes (protocol v1) under the daemon's executor: a plugin that floods stdout is
//! stopped at the output cap, one that hangs is timed out with its whole process group, one
//! that exits non-zero without a result fails with a clear code, cancel kills a running
//! plugin's process group, and the sample plugin's side effect survives kill -9 mid-run
//! exactly once per attempt and never concurrently.

use crate::support::*;
use serde_json::{Value, json};
use stella::client::Client;

/// Writes a plugin directory with `script` as its entrypoint and registers it.
async fn plugin(app: &TestAppliance, c: &Client, name: &str, script: &str) {
    plugin_with(app, c, name, "", script).await
}

/// Same, with more lines for `plugin.toml`.
async fn plugin_with(app: &TestAppliance, c: &Client, name: &str, toml: &str, script: &str) {
    script_plugin_with(app, c, name, toml, script).await
}

async fn run_once(c: &Client, name: &str, plugin: &str, extra: &str) -> (String, Value) {
    let spec = format!("name = \"{name}\"\n[steps.only]\nplugin = \"{plugin}\"\n{extra}\n");
    api_post(c, "/dags", json!({ "spec": spec })).await;
    let id = api_post(c, "/runs", json!({ "dag": name })).await["id"].as_str().unwrap().to_owned();
    (id.clone(), wait_end(c, &id).await)
}

fn alive(marker: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().filter_map(Result::ok).any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(marker))
            .unwrap_or(false)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_hanging_and_silent_plugins_fail_with_clear_codes() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    plugin(
        &app,
        &c,
        "flood",
        "cat >/dev/null\nyes \"$(head -c 1000 /dev/zero | tr '\\0' x)\" | head -c 1073741824\necho '{\"event\":\"result\",\"outputs\":{}}'",
    )
    .await;
    plugin(&app, &c, "hang", "cat >/dev/null\nsleep 6101 &\nwait").await;
    plugin(&app, &c, "silent", "cat >/dev/null\necho 'partial work' >&2\nexit 3").await;
    plugin(&app, &c, "quiet", "cat >/dev/null\nexit 0").await;

    let (_, run) = run_once(&c, "flood-dag", "flood", "").await;
    assert_eq!((run["status"].as_str(), run["steps"][0]["errorCode"].as_str()), (Some("failed"), Some("output_limit")));
    let (_, run) = run_once(&c, "hang-dag", "hang", "timeout = \"1s\"").await;
    assert_eq!(run["steps"][0]["errorCode"], "timeout");
    assert!(!alive("sleep 6101"), "the hung plugin's process group was killed");
    let (_, run) = run_once(&c, "silent-dag", "silent", "").await;
    assert_eq!(run["steps"][0]["errorCode"], "exit_status");
    assert!(run["steps"][0]["error"].as_str().unwrap().contains("partial work"), "{run}");
    let (_, run) = run_once(&c, "quiet-dag", "quiet", "").await;
    assert_eq!(run["steps"][0]["errorCode"], "no_result");
}

/// A plugin declaring several step kinds: a step must name one it implements (the DAG is
/// refused otherwise, naming the kinds), and the plugin receives it in the request and as
/// STELLA_KIND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_picks_one_of_the_kinds_its_plugin_declares() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let script = r#"req=$(cat)
case "$req" in *'"kind":"'"$STELLA_KIND"'"'*) ;; *) exit 7;; esac
printf '{"event":"result","outputs":{"kind":"%s"}}\n' "$STELLA_KIND""#;
    plugin_with(&app, &c, "multi", "kinds = [\"greet\", \"count\"]\n", script).await;
    for (step, reason) in [
        ("", "plugin \\\"multi\\\" implements several kinds (greet, count)"),
        ("kind = \"wave\"", "plugin \\\"multi\\\" has no kind \\\"wave\\\" (kinds: greet, count)"),
    ] {
        let spec = format!("name = \"k\"\n[steps.only]\nplugin = \"multi\"\n{step}\n");
        let reply = c.post(&format!("{API}/dags"), &json!({ "spec": spec })).await.unwrap();
        assert_eq!(reply.status.as_u16(), 422, "{step}");
        assert!(String::from_utf8_lossy(&reply.body).contains(reason), "{}", String::from_utf8_lossy(&reply.body));
    }
    let (_, run) = run_once(&c, "counting", "multi", "kind = \"count\"").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"][0]["outputs"]["kind"], "count", "{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_a_running_plugins_process_group() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    plugin(&app, &c, "long", "cat >/dev/null\nsleep 6102 &\nwait").await;
    api_post(&c, "/dags", json!({ "spec": "name = \"long-dag\"\n[steps.only]\nplugin = \"long\"\n" })).await;
    let id = api_post(&c, "/runs", json!({ "dag": "long-dag" })).await["id"].as_str().unwrap().to_owned();
    wait_for_event(&c, &id, "event: step.started").await;
    // The plugin has been spawned once its step started; wait for its child to show.
    for _ in 0..2_000 {
        if alive("sleep 6102") {
            break;
        }
        tokio::task::yield_now().await;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(alive("sleep 6102"), "the plugin is running");
    assert!(app.stella(&["orch", "run", "cancel", &id]).status.success());
    assert_eq!(wait_end(&c, &id).await["status"], "cancelled");
    let mut gone = false;
    for _ in 0..1_000 {
        if !alive("sleep 6102") {
            gone = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(gone, "cancel killed the plugin's whole process group");
}

/// kill -9 while the sample plugin runs: after the restart the step runs again; the side-effect
/// file shows each attempt started and ended, never two at once, and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sample_plugin_runs_again_after_kill_9_and_never_concurrently() {
    let mut app = TestAppliance::start_with(|c| {
        c.queue.lease_ttl_ms = 1_000;
        c.queue.backoff_base_ms = 50;
    });
    let c = app.socket_client();
    let file = app.root().join("effects.txt");
    let spec = format!(
        "name = \"effects\"\n[steps.a]\nplugin = \"sample-plugin\"\nretries = 3\ninputs = {{ file = \"{}\", sleep = 1 }}\n[steps.b]\nplugin = \"sample-plugin\"\nneeds = [\"a\"]\ninputs = {{ file = \"{}\" }}\n",
        file.display(),
        file.display()
    );
    api_post(&c, "/dags", json!({ "spec": spec })).await;
    let id = api_post(&c, "/runs", json!({ "dag": "effects" })).await["id"].as_str().unwrap().to_owned();
    for _ in 0..2_000 {
        if std::fs::read_to_string(&file).unwrap_or_default().contains("a start") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    app.kill9();
    app.launch();
    let c = app.socket_client();
    let run = wait_end(&c, &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let lines: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(str::to_owned).collect();
    // The killed attempt of `a` started and never ended (its process group was stopped when
    // the daemon came back); after it, every start has its end before the next start.
    assert_eq!(lines.first().map(String::as_str), Some("a start"), "{lines:?}");
    let rest = &lines[1..];
    let rest = if rest.first().map(String::as_str) == Some("a end") { &rest[1..] } else { rest };
    for pair in rest.chunks(2) {
        let (start, end) = (&pair[0], pair.get(1).expect("an attempt without its end"));
        let step = start.strip_suffix(" start").unwrap_or_else(|| panic!("expected a start, got {start:?}: {lines:?}"));
        assert_eq!(end, &format!("{step} end"), "two attempts overlapped: {lines:?}");
    }
    assert!(
        lines.iter().filter(|l| *l == "a end").count() >= 1 && lines.iter().filter(|l| *l == "b end").count() == 1,
        "{lines:?}"
    );
    assert!(app.stella(&["orch", "db", "verify"]).status.success());
}

/// A run that uses a secret: the plugin receives it on stdin by reference, and the value
/// appears nowhere else — not in the daemon log, the ledger, the step's outputs or error, nor
/// the job's payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_plugin_and_nothing_else() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let value = "s3cr3t-hunter2-value";
    app.set_secret("db-password", value);
    assert_eq!(stdout(&app.stella(&["secrets", "list"])).trim(), "db-password");
    plugin(
        &app,
        &c,
        "leaky",
        r#"req=$(cat)
s=$(printf '%s' "$req" | sed -n 's/.*"db-password":"\([^"]*\)".*/\1/p')
printf '{"event":"log","message":"connecting with %s"}\n' "$s"
echo "debug: password is $s" >&2
printf '{"event":"result","outputs":{"leak":"%s","len":%s}}\n' "$s" "${#s}"
[ "${STELLA_INPUT_FAIL:-no}" = yes ] && exit 4
exit 0"#,
    )
    .await;
    let (id, run) = run_once(&c, "uses-secret", "leaky", "secrets = [\"db-password\"]").await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let outputs = &run["steps"][0]["outputs"];
    assert_eq!(
        (outputs["leak"].as_str(), outputs["len"].as_u64()),
        (Some("[REDACTED]"), Some(value.len() as u64)),
        "the plugin got the value"
    );
    let spec = "name = \"fails-secret\"\n[steps.only]\nplugin = \"leaky\"\nsecrets = [\"db-password\"]\ninputs = { fail = \"yes\" }\n";
    api_post(&c, "/dags", json!({ "spec": spec })).await;
    let failed_id = api_post(&c, "/runs", json!({ "dag": "fails-secret" })).await["id"].as_str().unwrap().to_owned();
    let failed = wait_end(&c, &failed_id).await;
    assert!(failed["steps"][0]["error"].as_str().unwrap().contains("[REDACTED]"), "{failed}");

    let ledger = String::from_utf8(c.get(&format!("{API}/ledger?limit=1000")).await.unwrap().body.to_vec()).unwrap();
    let job = c.get(&format!("{API}/jobs/{}", run["steps"][0]["jobId"].as_str().unwrap())).await.unwrap().body.to_vec();
    for (place, text) in [
        ("ledger", ledger),
        ("daemon log", app.log()),
        ("job", String::from_utf8(job).unwrap()),
        ("run", run.to_string()),
        ("failed run", failed.to_string()),
    ] {
        assert!(!text.contains(value), "the secret leaked into the {place} of {id}");
    }
    // Nor into the log files or any file of an export pack (ledger, logs, metrics, traces).
    let pack = app.root().join("pack");
    let exported = app.stella(&["export", "--out", pack.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let logs = app.root().join("var/log/stella");
    let files: Vec<std::path::PathBuf> =
        [pack, logs].iter().flat_map(|d| std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path())).collect();
    assert!(
        files.iter().any(|f| f.ends_with("traces.ndjson"))
            && files.iter().any(|f| f.extension().is_some_and(|x| x == "log"))
    );
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        assert!(!text.contains(value), "the secret leaked into {}", f.display());
    }
}
