//! Deploy-to-success and rollback-to-success latency through the in-process agent with the
//! sample deploy plugin (process spawns included), over the API on the Unix socket, p50/p99
//! over 100 cycles — against the same plugin kinds (`deploy` then `health`) run by hand in a
//! shell loop, in the same run; then the same deployments through a remote agent
//! (`stella agent run`, a separate process). The difference is what the appliance adds per deployment
//! (issue target: ≤ 20 ms): the command, the run's entries, the executor's leases and
//! completions, each durable. `STELLA_BENCH_SCALE` scales the cycles (at least 10).

mod common;

use common::Conn;
use std::time::{Duration, Instant};

fn q(lat: &mut [Duration], q: f64) -> f64 {
    lat.sort();
    lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3
}

/// The sample plugin's deploy and health, by hand, as the agent runs them (a clean
/// environment, the inputs as `STELLA_INPUT_*`, the request on stdin).
fn by_hand(plugin: &std::path::Path, target: &std::path::Path, source: &std::path::Path, artifact: &str) -> Duration {
    let started = Instant::now();
    for kind in ["deploy", "health"] {
        let mut child = std::process::Command::new(plugin)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("STELLA_KIND", kind)
            .env("STELLA_INPUT_TARGET", target)
            .env("STELLA_INPUT_SOURCE", source)
            .env("STELLA_INPUT_ARTIFACT", artifact)
            .env("STELLA_INPUT_DIGEST", "d")
            .env("STELLA_INPUT_DEPLOYMENT", "dep-0")
            .env("STELLA_INPUT_KIND", "direct")
            .env("STELLA_INPUT_BASELINE", "{}")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(br#"{"protocol":1,"inputs":{}}"#);
        }
        assert!(child.wait().unwrap().success(), "the plugin by hand ({kind}) failed");
    }
    started.elapsed()
}

/// One deployment (or rollback) through the API, from the request to its run's success.
async fn through_api(c: &mut Conn, s: &mut Conn, path: &str, body: serde_json::Value) -> (Duration, serde_json::Value) {
    let (_, status) = c.get("/api/v1/orchestrator/status").await;
    let after = status["ledger"]["height"].as_u64().unwrap();
    let started = Instant::now();
    let (code, d) = c.post(path, &body).await;
    assert_eq!(code, 200, "{d}");
    let run = d["runId"].as_str().unwrap();
    let stream = format!("/api/v1/orchestrator/runs/stream?run={run}&after={after}");
    assert!(s.stream_until(&stream, "event: run.succeeded").await, "{run} did not succeed");
    (started.elapsed(), d)
}

/// Kills the agent process if the bench panics.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"release".contains(a.as_str())) {
        return;
    }
    let cycles = common::scale(100, 10);
    let (dir, socket, mut child) = common::daemon("warn");
    let lib = dir.path().join("var/lib/stella");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut deploy, mut rollback, mut remote) = (Vec::new(), Vec::new(), Vec::new());
    let mut sources = Vec::new();
    rt.block_on(async {
        let mut c = Conn::unix(&socket).await;
        for (i, artifact) in ["web@1.4.1", "web@1.4.2"].iter().enumerate() {
            let (lat, d) = through_api(
                &mut c,
                &mut Conn::unix(&socket).await,
                "/api/v1/orchestrator/deployments",
                serde_json::json!({ "env": "dev", "artifact": artifact }),
            )
            .await;
            let _ = (i, lat);
            sources.push(lib.join("registry/sha256").join(d["digest"].as_str().unwrap()));
        }
        for i in 0..cycles {
            let artifact = if i % 2 == 0 { "web@1.4.1" } else { "web@1.4.2" };
            let mut s = Conn::unix(&socket).await;
            let (lat, _) = through_api(
                &mut c,
                &mut s,
                "/api/v1/orchestrator/deployments",
                serde_json::json!({ "env": "dev", "artifact": artifact }),
            )
            .await;
            deploy.push(lat);
            let mut s = Conn::unix(&socket).await;
            let (lat, d) =
                through_api(&mut c, &mut s, "/api/v1/orchestrator/rollbacks", serde_json::json!({ "env": "dev" }))
                    .await;
            assert_eq!(d["kind"], "rollback");
            rollback.push(lat);
        }
        // The same deployments to an environment of a remote agent: `stella agent run` as a
        // separate process (over the socket here), fetching the sealed copies once and
        // verifying them before every use.
        let release =
            "[environments.edge]\nplugin = \"sample-deploy\"\ntarget = \"targets/edge\"\nagent = \"edge-agent\"\n";
        let (code, v) = c.post("/api/v1/orchestrator/environments", &serde_json::json!({ "release": release })).await;
        assert_eq!(code, 201, "{v}");
        let agent = std::process::Command::new(env!("CARGO_BIN_EXE_stella"))
            .arg("--state-dir")
            .arg(dir.path())
            .args(["agent", "run", "--env", "edge"])
            .env("STELLA_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let agent = Guard(agent);
        loop {
            let (_, a) = c.get("/api/v1/orchestrator/environments/edge/agents").await;
            if a["agents"].as_array().unwrap().iter().any(|x| x["id"] == "edge-agent" && x["chosen"] == true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for i in 0..cycles + 1 {
            let artifact = if i % 2 == 0 { "web@1.4.1" } else { "web@1.4.2" };
            let mut s = Conn::unix(&socket).await;
            let body = serde_json::json!({ "env": "edge", "artifact": artifact });
            let (lat, _) = through_api(&mut c, &mut s, "/api/v1/orchestrator/deployments", body).await;
            if i > 0 {
                remote.push(lat);
            }
        }
        drop(agent);
    });
    let _ = child.kill();
    let _ = child.wait();
    // The baseline: the same kinds by hand, on a target of their own, in the same run.
    let plugin = lib.join("dev/sample-deploy-0.1.0/run.sh");
    let plugin = if plugin.exists() {
        plugin
    } else {
        std::fs::read_dir(lib.join("dev"))
            .unwrap()
            .flatten()
            .map(|e| e.path().join("run.sh"))
            .find(|p| p.to_string_lossy().contains("sample-deploy"))
            .unwrap()
    };
    let target = dir.path().join("by-hand");
    let mut hand: Vec<Duration> = (0..cycles)
        .map(|i| by_hand(&plugin, &target, &sources[i % 2], if i % 2 == 0 { "web@1.4.1" } else { "web@1.4.2" }))
        .collect();
    let (h50, h99) = (q(&mut hand, 0.5), q(&mut hand, 0.99));
    let (d50, d99) = (q(&mut deploy, 0.5), q(&mut deploy, 0.99));
    let (r50, r99) = (q(&mut rollback, 0.5), q(&mut rollback, 0.99));
    println!("release: {cycles} cycles, in-process agent, sample deploy plugin (deploy + health)");
    println!("  by hand (sh loop)    p50 {h50:7.2} ms  p99 {h99:7.2} ms");
    println!("  deploy to success    p50 {d50:7.2} ms  p99 {d99:7.2} ms  added p50 {:+.2} ms", d50 - h50);
    println!("  rollback to success  p50 {r50:7.2} ms  p99 {r99:7.2} ms  added p50 {:+.2} ms", r50 - h50);
    let (e50, e99) = (q(&mut remote, 0.5), q(&mut remote, 0.99));
    println!("  remote agent deploy  p50 {e50:7.2} ms  p99 {e99:7.2} ms  added p50 {:+.2} ms", e50 - h50);
    println!("  target: the appliance adds <= 20 ms per deployment over the plugins' own time");
}
