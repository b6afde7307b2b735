//! Telemetry: `/metrics` counts runs, attempts, queue waits and bundle failures from the store
//! and passes `promtool check metrics`; the alert rules and the dashboard are valid PromQL over
//! metrics the appliance serves; the daemon's JSON log goes to files too.

use crate::support::*;
use std::path::Path;

/// `promtool`, required in CI (`.ci/run` installs it); elsewhere its checks are skipped.
fn promtool() -> Option<&'static str> {
    let found = std::process::Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    assert!(found || std::env::var_os("CI").is_none(), "CI must have promtool (.ci/run installs it)");
    if !found {
        eprintln!("promtool not installed: its checks are skipped");
    }
    found.then_some("promtool")
}

fn promtool_run(args: &[&str], stdin: Option<&str>, dir: &Path) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

async fn scrape(app: &TestAppliance) -> String {
    String::from_utf8(app.socket_client().get("/metrics").await.unwrap().ok().unwrap().body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_runs_attempts_and_failures_and_pass_promtool() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    let id = run_sample(&c).await;
    let junk = app.root().join("junk.bundle");
    std::fs::write(&junk, b"not a bundle").unwrap();
    let junk = app.copy_to_inbox(&junk);
    let refused = c.post(&format!("{API}/bundles"), &serde_json::json!({ "path": junk })).await.unwrap();
    assert_eq!(refused.status.as_u16(), 422);

    let text = scrape(&app).await;
    for line in [
        "orchestrator_runs_total{status=\"succeeded\"} 1",
        "orchestrator_runs_total{status=\"failed\"} 0",
        "orchestrator_run_duration_seconds_count 1",
        "orchestrator_step_queue_seconds_count 6",
        "orchestrator_run_duration_seconds_bucket{le=\"+Inf\"} 1",
        "orchestrator_bundle_verify_failures_total 1",
        "orchestrator_job_attempts_total{type=\"sample-plugin\",outcome=\"succeeded\"} 1",
        "# TYPE orchestrator_runs_total counter",
        "stella_build_info{version=",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    if let Some(p) = promtool() {
        let checked = promtool_run(&["check", "metrics"], Some(&text), app.root());
        assert!(
            checked.status.success(),
            "{p}: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    }
    let open = c.send(hyper::Method::GET, "/metrics", None).await.unwrap();
    assert!(open.headers["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));

    let logs = stella::telemetry::logs::files(&app.root().join("var/log/stella"));
    assert_eq!(logs.len(), 1, "one daily file so far: {logs:?}");
    let first = std::fs::read_to_string(&logs[0]).unwrap();
    let line: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert!(line["timestamp"].is_string() && line["level"].is_string(), "{line}");
    // Run and step transitions are logged with their identifiers (written by a task that
    // follows the commits: wait for it, bounded).
    let mut found = None;
    for _ in 0..500 {
        let text = std::fs::read_to_string(&logs[0]).unwrap();
        found = text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find(|l| {
            l["fields"]["runId"] == id.as_str() && l["fields"]["status"] == "succeeded" && l["fields"]["stepId"] == ""
        });
        if found.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let found = found.expect("the run's end is in the log file");
    assert_eq!(
        (found["fields"]["dagId"].as_str(), found["fields"]["tenant"].as_str()),
        (Some("sample-pipeline"), Some("default"))
    );

    // Every request's line names its request id, who made it and their tenant.
    let (token_id, secret) = create_token(&c, "default", &["orchestrator:read"], None).await;
    let reply = app.https_client(Some(&secret)).get(&format!("{API}/runs/{id}")).await.unwrap();
    let request_id = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    let line = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["requestId"] == request_id.as_str())
        .expect("the request's line is in the log file");
    let f = &line["fields"];
    assert_eq!(
        (f["actor"].as_str(), f["tenant"].as_str(), f["status"].as_u64(), f["path"].as_str()),
        (
            Some(format!("token:{token_id}").as_str()),
            Some("default"),
            Some(200),
            Some(format!("{API}/runs/{id}").as_str())
        ),
        "{line}"
    );
    let local = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["method"] == "POST" && l["fields"]["path"] == format!("{API}/runs").as_str())
        .expect("the run's start request is in the log file");
    assert!(local["fields"]["actor"].as_str().is_some_and(|a| a.starts_with("local:uid=")), "{local}");
}

/// Every metric a rule or a dashboard query names must be one `/metrics` serves.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if (rest.starts_with("orchestrator_") || rest.starts_with("stella_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
        {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            out.push(rest[..end].to_owned());
            i += end;
        } else {
            i += 1;
        }
    }
    out.sort();
    out.dedup();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_rules_and_the_dashboard_are_valid_over_served_metrics() {
    let app = TestAppliance::start();
    let c = app.socket_client();
    run_sample(&c).await;
    let served = scrape(&app).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance");
    let rules = std::fs::read_to_string(dir.join("prometheus/stella-alerts.yml")).unwrap();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana/stella-overview.json")).unwrap()).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    assert!(exprs.len() >= 10, "the dashboard has its panels");
    for alert in ["QueueDepthHigh", "DLQDepthHigh", "FailuresHigh", "FailureBurnRateHigh", "LeaseStall", "Backpressure"]
    {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert} is defined");
    }
    for name in metric_names(&format!("{rules}\n{}", exprs.join("\n"))) {
        let served_name = name.trim_end_matches("_bucket");
        assert!(served.contains(&format!("\n{served_name}")), "{name} is not served by /metrics:\n{served}");
    }
    if let Some(p) = promtool() {
        let prom = dir.join("prometheus");
        for args in [["check", "rules", "stella-alerts.yml"], ["test", "rules", "stella-alerts.test.yml"]] {
            let o = promtool_run(&args, None, &prom);
            assert!(
                o.status.success(),
                "{p} {args:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        // The dashboard's queries as recording rules: promtool parses every one of them.
        let recorded: String = exprs
            .iter()
            .enumerate()
            .map(|(i, e)| {
                format!("      - record: dashboard:q{i}\n        expr: {}\n", serde_json::to_string(e).unwrap())
            })
            .collect();
        let file = app.root().join("dashboard-rules.yml");
        std::fs::write(&file, format!("groups:\n  - name: dashboard\n    rules:\n{recorded}")).unwrap();
        let o = promtool_run(&["check", "rules", file.to_str().unwrap()], None, app.root());
        assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
}

/// `/metrics` needs a token with `orchestrator:read` (decided and documented); the scrape
/// configuration in `appliance/prometheus/prometheus.yml` says so and is what works: HTTPS,
/// the appliance's certificate as CA, a bearer token read from a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_as_the_shipped_prometheus_config_says() {
    let app = TestAppliance::start();
    let config =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance/prometheus/prometheus.yml"))
            .unwrap();
    for needed in ["scheme: https", "metrics_path: /metrics", "type: Bearer", "credentials_file:", "ca_file:"] {
        assert!(config.contains(needed), "{needed}");
    }
    let (_, secret) = create_token(&app.socket_client(), "default", &["orchestrator:read"], None).await;
    let secret = secret.as_str();
    let scraped = app.https_client(Some(secret)).get("/metrics").await.unwrap();
    assert_eq!(scraped.status, 200);
    assert!(String::from_utf8_lossy(&scraped.body).contains("orchestrator_ledger_height"));
    assert_eq!(app.https_client(None).get("/metrics").await.unwrap().status, 401);
    if promtool().is_some() {
        let prom = Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance/prometheus");
        let o = promtool_run(&["check", "config", "--syntax-only", "prometheus.yml"], None, &prom);
        assert!(o.status.success(), "{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
}
