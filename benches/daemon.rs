//! The idle daemon (DESIGN.md §6: RSS under 30 MB): `stella serve --dev` on a fresh state
//! directory (Unix socket only), its resident set read from /proc once it has started and
//! imported its samples, and again once 20 runs of the sample DAG have finished, against the
//! bare binary (`stella --version`, peak RSS) as the baseline, in the same run.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0;

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The resident set once it stops changing: eight equal readings 250 ms apart (at most 20 s).
fn settled_rss(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut last, mut same) = (0, 0);
    while same < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = status_kib(pid, "VmRSS:");
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

fn main() {
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"daemon".contains(a.as_str())) {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_stella");
    // The baseline first: RUSAGE_CHILDREN's peak covers every child waited for so far.
    assert!(Command::new(bin).arg("--version").stdout(Stdio::null()).status().unwrap().success());
    // SAFETY: getrusage fills the zeroed struct it is given and nothing else.
    let bare_kib = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss as u64
    };

    let dir = common::dir();
    let state = dir.path().join("s");
    let mut daemon = Command::new(bin)
        .args(["serve", "--dev", "--listen", ""])
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cli = |args: &[&str]| Command::new(bin).arg("--state-dir").arg(&state).args(args).output().unwrap();
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("the daemon to answer", &|| cli(&["orch", "status"]).status.success());
    wait_for("the sample DAG", &|| {
        String::from_utf8_lossy(&cli(&["orch", "dag", "list"]).stdout).contains("sample-pipeline")
    });
    let pid = daemon.id();
    let idle = settled_rss(pid);

    let runs = 20;
    for _ in 0..runs {
        assert!(cli(&["orch", "run", "start", "sample-pipeline"]).status.success());
    }
    wait_for("the runs to finish", &|| {
        let out = cli(&["--format", "json", "orch", "run", "list"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["runs"].as_array().is_some_and(|r| r.len() == runs && r.iter().all(|r| r["status"] == "succeeded"))
    });
    let after = settled_rss(pid);

    // Sustained work: twelve runs of root → 1,000 noop steps → join, one after the other,
    // RSS and anonymous memory after each (what grows shows as a climb run after run).
    let spec = dir.path().join("wide.toml");
    let mut text = String::from("name = \"wide\"\n[steps.start]\nplugin = \"noop\"\n");
    for i in 0..1_000 {
        text.push_str(&format!("[steps.m{i}]\nplugin = \"noop\"\nneeds = [\"start\"]\n"));
    }
    let mids: Vec<String> = (0..1_000).map(|i| format!("\"m{i}\"")).collect();
    text.push_str(&format!("[steps.end]\nplugin = \"noop\"\nneeds = [{}]\n", mids.join(", ")));
    std::fs::write(&spec, text).unwrap();
    assert!(cli(&["orch", "dag", "register", spec.to_str().unwrap()]).status.success());
    let mut sustained = Vec::new();
    for n in 1..=12 {
        assert!(cli(&["orch", "run", "start", "wide"]).status.success());
        wait_for("the wide run to finish", &|| {
            let out = cli(&["--format", "json", "orch", "run", "list"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            v["runs"]
                .as_array()
                .is_some_and(|r| r.iter().filter(|r| r["dag"] == "wide" && r["status"] == "succeeded").count() == n)
        });
        sustained.push((settled_rss(pid), status_kib(pid, "RssAnon:")));
    }
    let peak = status_kib(pid, "VmHWM:");
    // SAFETY: signalling the child this function spawned.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = daemon.wait();

    let f = |kib: u64| kib as f64 / MIB;
    println!("daemon memory (target: idle RSS under 30 MB = 28.6 MiB)  MiB  ÷ bare binary");
    println!("bare binary (`stella --version`, peak RSS)     {:>8.1}        1.00x", f(bare_kib));
    println!(
        "idle, samples imported                         {:>8.1}   {:>9.2}x",
        f(idle),
        idle as f64 / bare_kib as f64
    );
    println!(
        "idle, after {runs} sample runs                    {:>8.1}   {:>9.2}x",
        f(after),
        after as f64 / bare_kib as f64
    );
    for (i, (rss, anon)) in sustained.iter().enumerate() {
        println!(
            "after wide run {:>2} (1,002 steps)              {:>8.1}   {:>9.2}x   anonymous {:>6.1}",
            i + 1,
            f(*rss),
            *rss as f64 / bare_kib as f64,
            f(*anon)
        );
    }
    let (first, last) = (sustained[0].0, sustained[sustained.len() - 1].0);
    println!("growth from wide run 1 to 12: {:+.1} MiB (target: within 10 MiB)", (last as f64 - first as f64) / MIB);
    println!(
        "peak over the whole run (VmHWM)                {:>8.1}   {:>9.2}x",
        f(peak),
        peak as f64 / bare_kib as f64
    );
}
