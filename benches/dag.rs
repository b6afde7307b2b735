//! DAG scheduling cost (DESIGN.md §6): durable step transitions per second and the engine's
//! overhead per step (process spawn excluded: built-in `noop` steps, completed by a worker loop
//! in the benchmark) for a 10-step diamond and a 1,000-wide fan-out/fan-in, against the same
//! number of plain queue jobs through the same worker loop, in the same run.
//!
//! The approval round trip (decided → next step leased) against a run's start → first step
//! leased, both on the in-process executor.
//!
//! `cargo bench --bench dag` (`-- approvals`: that alone)

use serde_json::json;
use std::time::{Duration, Instant};
use stella::domain::queue::QueueCommand;
use stella::domain::runs::RunCommand;
use stella::machine::Command;
use stella::machine::WriterHandle;

mod common;
use common::{actor, lease_and_complete, writer};

/// Leases and completes `noop` jobs until `expect` are done; returns jobs completed.
async fn work(h: &WriterHandle, expect: usize) -> usize {
    let mut completed = 0;
    while completed < expect {
        match lease_and_complete(h, 0, 256, Some(json!({ "outputs": {} }))).await {
            0 => tokio::task::yield_now().await,
            n => completed += n,
        }
    }
    completed
}

fn diamond(n: usize) -> String {
    // start → n-2 parallel middle steps → end.
    let mut s = String::from("name = \"d\"\n[steps.start]\nplugin = \"noop\"\n");
    for i in 0..n - 2 {
        s.push_str(&format!("[steps.m{i}]\nplugin = \"noop\"\nneeds = [\"start\"]\n"));
    }
    let mids: Vec<String> = (0..n - 2).map(|i| format!("\"m{i}\"")).collect();
    s.push_str(&format!("[steps.end]\nplugin = \"noop\"\nneeds = [{}]\n", mids.join(", ")));
    s
}

/// Runs one DAG of `steps` steps `runs` times; returns the elapsed time and the store.
fn dag(steps: usize, runs: usize) -> (Duration, stella::kernel::store::Store, tempfile::TempDir) {
    let (d, h, store) = writer(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let spec = diamond(steps);
        h.submit(actor(), Command::Run(RunCommand::RegisterDag { name: "d".into(), spec, unsigned: true }))
            .await
            .unwrap();
        let started = Instant::now();
        for _ in 0..runs {
            h.submit(
                actor(),
                Command::Run(RunCommand::Start {
                    tenant: "default".into(),
                    dag: "d".into(),
                    inputs: Default::default(),
                    run_token: None,
                }),
            )
            .await
            .unwrap();
        }
        work(&h, steps * runs).await;
        (started.elapsed(), store, d)
    })
}

/// `db verify` (chain on a second thread, replay, compare) of a ledger the engine wrote,
/// against checking its chain alone on two threads, in entries/s.
fn db_verify(store: &stella::kernel::store::Store) {
    let txn = store.read().unwrap();
    let started = Instant::now();
    let report = stella::machine::verify(&txn).unwrap();
    let full = started.elapsed();
    assert!(report.ok, "{:?}", report.problem);
    let started = Instant::now();
    let (head, _) = stella::kernel::verify::check_chain(&txn, 2).unwrap().unwrap();
    let chain = started.elapsed();
    let rate = |d: Duration| head as f64 / d.as_secs_f64();
    println!(
        "db verify of its ledger ({head} entries): {:.0} entries/s; the chain alone, 2 threads: {:.0} entries/s ({:.2}x)",
        rate(full),
        rate(chain),
        rate(full) / rate(chain)
    );
}

/// A one-attempt job of `job_type`.
fn enqueue(job_type: &str, i: usize) -> Command {
    Command::Queue(QueueCommand::Enqueue {
        tenant: "default".into(),
        job_type: job_type.into(),
        payload: json!({ "i": i }),
        priority: 100,
        max_attempts: Some(1),
        delay_ms: None,
        idempotency_key: None,
    })
}

/// The same number of plain jobs, enqueued in as many waves as the DAG has levels.
fn plain(jobs: usize) -> Duration {
    let (_d, h, _) = writer(3);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let started = Instant::now();
        let tasks: Vec<_> = (0..jobs)
            .map(|i| {
                let h = h.clone();
                tokio::spawn(async move {
                    h.submit(actor(), enqueue("noop", i)).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        work(&h, jobs).await;
        started.elapsed()
    })
}

/// What one executor run of a wide DAG took.
struct Fan {
    wall: Duration,
    commits: u64,
    durable: u64,
    /// Attempt time over slot time: the share of the slots' time spent running a step.
    busy: f64,
}

/// Seals `bundles/sample-plugin` under `lib` and registers it (dev mode, unsigned).
async fn sample_plugin(h: &WriterHandle, lib: &std::path::Path) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/sample-plugin");
    let checked = stella::plugins::check(&dir).unwrap();
    stella::plugins::seal(lib, &checked).unwrap();
    let register = RunCommand::RegisterPlugin {
        name: checked.manifest.name.clone(),
        digest: checked.digest.clone(),
        entrypoint: checked.manifest.entrypoint.clone(),
        kinds: checked.manifest.kinds(),
        unsigned: true,
    };
    h.submit(actor(), Command::Run(register)).await.unwrap();
}

/// The daemon's in-process executor on `h` with `slots`, until `stop` says so.
fn executor(
    h: &WriterHandle,
    store: &stella::kernel::store::Store,
    slots: usize,
    lib: &std::path::Path,
) -> (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let opts = stella::exec::worker::ExecOptions {
        worker: "local-bench".into(),
        slots,
        lease_ttl_ms: 60_000,
        lib: lib.to_owned(),
    };
    (stop, tokio::spawn(stella::exec::worker::run(h.clone(), store.clone(), opts, stopped)))
}

/// Waits on `events` for `run` to succeed and returns the `step.started` entries seen on the
/// way. A run that fails or is cancelled ends the benchmark with its steps' errors: waiting for a
/// success that cannot come would hang it silently.
async fn until_succeeded(
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<stella::kernel::ledger::Entry>>,
    store: &stella::kernel::store::Store,
    run: &str,
) -> usize {
    let mut started = 0;
    loop {
        let e = events.recv().await.unwrap();
        if e.subjects.first().map(String::as_str) != Some(run) {
            continue;
        }
        match e.kind.as_str() {
            "step.started" => started += 1,
            "run.succeeded" => return started,
            "run.failed" | "run.cancelled" => {
                let txn = store.read().unwrap();
                let failed: Vec<_> = stella::machine::read::steps(&txn, run)
                    .unwrap()
                    .into_iter()
                    .filter_map(|s| Some(format!("{}: [{}] {}", s.name, s.error_code?, s.error.unwrap_or_default())))
                    .collect();
                panic!("{run} ended with {}: {failed:?}", e.kind);
            }
            _ => {}
        }
    }
}

/// Root → `width` steps of `plugin` (the built-in `noop`, or the sample plugin, a real process
/// per step) → join, run by the daemon's own in-process executor with its default slots (what an
/// operator's run goes through): wall time to `run.succeeded`, the writer's commits (of which
/// durable) it took, and how busy the slots were.
fn executor_fan(width: usize, plugin: &str) -> Fan {
    let (d, h, store) = writer(5);
    let slots = stella::config::Config::default().exec.slots;
    let lib = d.path().join("lib");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        if plugin != "noop" {
            sample_plugin(&h, &lib).await;
        }
        let spec = diamond(width + 2).replace("\"noop\"", &format!("\"{plugin}\""));
        h.submit(actor(), Command::Run(RunCommand::RegisterDag { name: "d".into(), spec, unsigned: true }))
            .await
            .unwrap();
        let (stop, exec) = executor(&h, &store, slots, &lib);
        let mut events = h.subscribe();
        let (commits, durable) = (h.stats().commits(), h.stats().durable_commits());
        let started = Instant::now();
        let start = RunCommand::Start {
            tenant: "default".into(),
            dag: "d".into(),
            inputs: Default::default(),
            run_token: None,
        };
        h.submit(actor(), Command::Run(start)).await.unwrap();
        until_succeeded(&mut events, &store, "run-1").await;
        let wall = started.elapsed();
        let taken = (h.stats().commits() - commits, h.stats().durable_commits() - durable);
        let _ = stop.send(true);
        exec.await.unwrap();
        let txn = store.read().unwrap();
        let steps = stella::machine::read::steps(&txn, "run-1").unwrap();
        let attempt_ms: i64 = steps.iter().filter_map(|s| Some(s.finished_ms? - s.started_ms?)).sum();
        let busy = attempt_ms as f64 / (slots as f64 * wall.as_secs_f64() * 1e3);
        Fan { wall, commits: taken.0, durable: taken.1, busy }
    })
}

/// Enqueues of a job type no local worker serves, with the executor running: the commits they
/// cost (one each is the floor: a durable commit per acknowledged enqueue).
fn unserved_enqueues(n: usize) -> (u64, u64) {
    let (d, h, store) = writer(6);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (stop, exec) = executor(&h, &store, 8, &d.path().join("lib"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (commits, durable) = (h.stats().commits(), h.stats().durable_commits());
        for i in 0..n {
            h.submit(actor(), enqueue("elsewhere", i)).await.unwrap();
        }
        // Let the executor react to the last one before counting.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let taken = (h.stats().commits() - commits, h.stats().durable_commits() - durable);
        let _ = stop.send(true);
        exec.await.unwrap();
        taken
    })
}

/// One plugin attempt (the sample plugin, protocol v1, through the executor's runner) against
/// spawning `/bin/true`, in the same run: the cost of a plugin process.
fn plugin_spawn(n: usize) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let plugin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/sample-plugin/run.sh");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut runner = Vec::with_capacity(n);
    let mut baseline = Vec::with_capacity(n);
    rt.block_on(async {
        for i in 0..n {
            let workdir = dir.path().join(format!("a{i}"));
            let env = vec![
                ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
                ("STELLA_STEP".to_owned(), "s".to_owned()),
                ("STELLA_ATTEMPT".to_owned(), "1".to_owned()),
            ];
            let inv = stella::exec::plugin::Invocation {
                secrets: vec![],
                program: plugin.clone(),
                workdir,
                request: stella::exec::protocol::Request {
                    attempt: 1,
                    inputs: json!({}),
                    job: format!("j{i}"),
                    kind: "sample-plugin".into(),
                    protocol: stella::exec::protocol::PROTOCOL,
                    run: "bench".into(),
                    secrets: Default::default(),
                    step: "s".into(),
                    traceparent: String::new(),
                },
                env,
                timeout: Duration::from_secs(30),
                work_root: dir.path().to_owned(),
            };
            let t = Instant::now();
            let r = stella::exec::plugin::run(inv, std::future::pending()).await;
            runner.push(t.elapsed());
            assert!(matches!(r, Some(stella::exec::builtin::StepResult::Outputs(_))), "{r:?}");
            let t = Instant::now();
            tokio::process::Command::new("/bin/true").status().await.unwrap();
            baseline.push(t.elapsed());
        }
    });
    let q = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
    };
    println!(
        "plugin attempt (sample plugin, sh): p50 {:.2} ms p99 {:.2} ms; /bin/true spawn: p50 {:.2} ms p99 {:.2} ms",
        q(&mut runner, 0.5),
        q(&mut runner, 0.99),
        q(&mut baseline, 0.5),
        q(&mut baseline, 0.99)
    );
}

/// Approval round trip on the in-process executor (runbook 004 §2): a checkpoint's approval
/// decided → the next step leased (its `step.started` committed), p50/p99 over `n` runs, against
/// a run started → its first step leased through the same executor, in the same process.
fn approval_round_trip(n: usize) {
    use stella::domain::approvals::ApprovalCommand;
    let (d, h, store) = writer(7);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut gated, mut plain) = rt.block_on(async {
        let specs = [
            ("gated", "name = \"gated\"\n[steps.a]\nplugin = \"noop\"\ncheckpoint_after = true\n[steps.b]\nplugin = \"noop\"\nneeds = [\"a\"]\n"),
            ("plain", "name = \"plain\"\n[steps.a]\nplugin = \"noop\"\n[steps.b]\nplugin = \"noop\"\nneeds = [\"a\"]\n"),
        ];
        for (name, spec) in specs {
            let register = RunCommand::RegisterDag { name: name.into(), spec: spec.into(), unsigned: true };
            h.submit(actor(), Command::Run(register)).await.unwrap();
        }
        let (stop, exec) = executor(&h, &store, 8, &d.path().join("lib"));
        let mut events = h.subscribe();
        let mut wait = async |run: &str, kind: &str, step: Option<&str>| loop {
            let e = events.recv().await.unwrap();
            if e.kind == kind
                && e.subjects.first().map(String::as_str) == Some(run)
                && step.is_none_or(|s| e.data["step"] == s)
            {
                return e;
            }
        };
        let (mut gated, mut plain) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let start = |dag: &str| {
                Command::Run(RunCommand::Start {
                    tenant: "default".into(),
                    dag: dag.into(),
                    inputs: Default::default(),
                    run_token: None,
                })
            };
            let t = Instant::now();
            let c = h.submit(actor(), start("plain")).await.unwrap();
            let run = c.note.unwrap()["runId"].as_str().unwrap().to_owned();
            wait(&run, "step.started", Some("a")).await;
            plain.push(t.elapsed());
            wait(&run, "run.succeeded", None).await;

            let c = h.submit(actor(), start("gated")).await.unwrap();
            let run = c.note.unwrap()["runId"].as_str().unwrap().to_owned();
            let requested = wait(&run, "approval.requested", None).await;
            let id = requested.data["approvalId"].as_str().unwrap().to_owned();
            let t = Instant::now();
            let decide =
                ApprovalCommand::Decide { tenant: None, id, actor: "approver".into(), approve: true, reason: None };
            h.submit(actor(), Command::Approval(decide)).await.unwrap();
            wait(&run, "step.started", Some("b")).await;
            gated.push(t.elapsed());
            wait(&run, "run.succeeded", None).await;
        }
        let _ = stop.send(true);
        exec.await.unwrap();
        (gated, plain)
    });
    let q = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e3
    };
    println!(
        "approval decided → next step leased: p50 {:.2} ms p99 {:.2} ms; baseline run started → first step leased: p50 {:.2} ms p99 {:.2} ms ({n} runs each)",
        q(&mut gated, 0.5),
        q(&mut gated, 0.99),
        q(&mut plain, 0.5),
        q(&mut plain, 0.99)
    );
}

/// A 100-step DAG of sample-plugin steps (a chain of 10 levels of 10), every step cached: the
/// first run computes every step, the rerun (same inputs) completes from the cache. Wall time
/// of each and the plugin attempts each made (`step.started` entries), in the same process.
fn cached_rerun() {
    let (d, h, store) = writer(8);
    let lib = d.path().join("lib");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        sample_plugin(&h, &lib).await;
        let mut spec = String::from("name = \"c\"\n[execution.caching]\nttl = \"1h\"\n");
        for level in 0..10 {
            for i in 0..10 {
                spec.push_str(&format!("[steps.s{level}-{i}]\nplugin = \"sample-plugin\"\ninputs = {{ level = {level}, i = {i} }}\n"));
                if level > 0 {
                    spec.push_str(&format!("needs = [\"s{}-{i}\"]\n", level - 1));
                }
            }
        }
        h.submit(actor(), Command::Run(RunCommand::RegisterDag { name: "c".into(), spec, unsigned: true }))
            .await
            .unwrap();
        let (stop, exec) = executor(&h, &store, stella::config::Config::default().exec.slots, &lib);
        let mut events = h.subscribe();
        let mut walls = Vec::new();
        // The first run computes, then five reruns hit: the rerun figure is their median.
        for _ in 0..6 {
            let started = Instant::now();
            let start = RunCommand::Start {
                tenant: "default".into(),
                dag: "c".into(),
                inputs: Default::default(),
                run_token: None,
            };
            let c = h.submit(actor(), Command::Run(start)).await.unwrap();
            let run = c.entries[0].subjects[0].clone();
            let mut attempts = c.entries.iter().filter(|e| e.kind == "step.started").count();
            if !c.entries.iter().any(|e| e.kind == "run.succeeded") {
                attempts += until_succeeded(&mut events, &store, &run).await;
            }
            walls.push((started.elapsed(), attempts));
        }
        let _ = stop.send(true);
        exec.await.unwrap();
        let first = walls[0];
        let mut reruns = walls[1..].to_vec();
        reruns.sort();
        let rerun = reruns[reruns.len() / 2];
        println!(
            "100 cached sample-plugin steps: first run {:.1} ms ({} plugin attempts), cached rerun (median of 5) {:.2} ms ({} plugin attempts): {:.0}x faster",
            first.0.as_secs_f64() * 1e3,
            first.1,
            rerun.0.as_secs_f64() * 1e3,
            rerun.1,
            first.0.as_secs_f64() / rerun.0.as_secs_f64()
        );
    });
}

fn main() {
    // `cargo bench --bench dag -- cache`: a 100-step cached DAG, computed then rerun.
    if std::env::args().skip(1).any(|a| a == "cache") {
        for _ in 0..2 {
            cached_rerun();
        }
        return;
    }
    // `cargo bench --bench dag -- approvals`: the approval round trip alone.
    if std::env::args().skip(1).any(|a| a == "approvals") {
        approval_round_trip(300);
        return;
    }
    // `cargo bench --bench dag -- verify`: db verify alone, of the 1,000-wide fan-out ×5 ledger.
    if std::env::args().skip(1).any(|a| a == "verify") {
        let (_, store, _dir) = dag(1002, 5);
        for _ in 0..5 {
            db_verify(&store);
        }
        return;
    }
    // `cargo bench --bench dag -- w1`: root → 1,000 sample-plugin steps → join alone, twice.
    if std::env::args().skip(1).any(|a| a == "w1") {
        for _ in 0..2 {
            let f = executor_fan(1_000, "sample-plugin");
            println!(
                "root → 1000 sample-plugin → join: {:.1} ms wall, slots busy {:.0} %",
                f.wall.as_secs_f64() * 1e3,
                f.busy * 100.0
            );
        }
        return;
    }
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"dag".contains(a.as_str())) {
        return;
    }
    println!(
        "{:<36} {:>8} {:>12} {:>14} {:>16}",
        "workload", "steps", "elapsed ms", "transitions/s", "overhead ms/step"
    );
    for (name, steps, runs) in [
        ("10-step diamond × 100 runs", 10, 100),
        ("1,000-wide fan-out/fan-in × 1", 1002, 1),
        ("1,000-wide fan-out/fan-in × 5", 1002, 5),
    ] {
        let total = steps * runs;
        let (d, store, _dir) = dag(steps, runs);
        let p = plain(total);
        // queued, started and succeeded are three durable step transitions per step.
        let transitions = (3 * total) as f64 / d.as_secs_f64();
        let overhead = (d.as_secs_f64() - p.as_secs_f64()) * 1e3 / total as f64;
        println!("{name:<36} {total:>8} {:>12.1} {transitions:>14.0} {overhead:>16.3}", d.as_secs_f64() * 1e3);
        println!(
            "{:<36} {total:>8} {:>12.1} {:>14} {:>16}",
            "  same number of plain queue jobs",
            p.as_secs_f64() * 1e3,
            "-",
            "baseline"
        );
        if runs != 1 {
            db_verify(&store);
        }
    }
    approval_round_trip(300);
    cached_rerun();
    let width = 1_000;
    for plugin in ["noop", "sample-plugin"] {
        let f = executor_fan(width, plugin);
        println!(
            "executor (8 slots): root → {width} {plugin} → join: {:.1} ms wall, {} commits ({} durable), {:.2} steps per commit, slots busy {:.0} %",
            f.wall.as_secs_f64() * 1e3,
            f.commits,
            f.durable,
            (width + 2) as f64 / f.commits.max(1) as f64,
            f.busy * 100.0
        );
    }
    let (commits, durable) = unserved_enqueues(1_000);
    println!(
        "1,000 enqueues of a type no local worker serves, executor running: {commits} commits ({durable} durable)"
    );
    plugin_spawn(200);
}
