//! Ledger and export (DESIGN.md §6): ledger append (sealing an entry: canonical JSON + chained
//! sha256) and full-chain verification, in entries/s against raw sha256 of the same canonical
//! bytes; durable append through redb in 1,024-entry commits; and an export of about
//! 1,000,000 records (ledger entries, log records, metric series, spans) in MB/s and peak RSS
//! against `zstd -3` of the same pre-rendered NDJSON, in the same run. Scaled by
//! `STELLA_BENCH_SCALE`.

mod common;

use redb::ReadableTable;

use sha2::Digest;
use std::io::Write;
use std::time::Instant;
use stella::domain::appliance::tables::METRIC_SNAPSHOTS;
use stella::kernel::ledger::{ChainCursor, Draft, Entry, GENESIS_PREV};
use stella::kernel::store::LEDGER;

const MIB: f64 = 1024.0 * 1024.0;

fn peak_reset() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The entries of `runs` synthetic runs, six each, as a run of the engine writes them.
fn run_drafts(run: usize) -> Vec<Draft> {
    let (id, job) = (format!("run-{run}"), format!("job-{run:012}"));
    let d = |kind: &'static str, data: serde_json::Value| Draft {
        tenant: "default".into(),
        kind,
        subjects: vec![id.clone()],
        data,
    };
    vec![
        d(
            "run.created",
            serde_json::json!({ "runId": id, "dag": "bench", "inputs": { "target": "prod" }, "plugins": {} }),
        ),
        d("job.enqueued", serde_json::json!({ "id": job, "payload": { "plugin": "noop", "run": id, "step": "only" } })),
        d("step.queued", serde_json::json!({ "runId": id, "step": "only", "jobId": job })),
        d(
            "step.started",
            serde_json::json!({ "runId": id, "step": "only", "jobId": job, "attempt": 1, "worker": "w1" }),
        ),
        d("step.succeeded", serde_json::json!({ "runId": id, "step": "only", "outputs": { "artifact": "web@1.4.1" } })),
        d("run.succeeded", serde_json::json!({ "runId": id })),
    ]
}

fn main() {
    if let Some(dir) = std::env::var_os("STELLA_BENCH_EXPORT_DIR") {
        return export_child(std::path::Path::new(&dir));
    }
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"export".contains(a.as_str())) {
        return;
    }
    let runs = common::scale(100_000, 2_000);
    let dir = common::dir();
    let root = dir.path();

    // Append: seal every entry (canonical JSON, chained sha256), in memory.
    let drafts: Vec<Draft> = (0..runs).flat_map(run_drafts).collect();
    let n = drafts.len();
    let started = Instant::now();
    let mut prev = GENESIS_PREV.to_owned();
    let mut sealed = Vec::with_capacity(n);
    for (i, d) in drafts.into_iter().enumerate() {
        let e = Entry::seal(d, i as u64 + 1, 1_800_000_000_000 + i as i64, "bench", &prev);
        prev.clone_from(&e.hash);
        sealed.push(e);
    }
    let append = n as f64 / started.elapsed().as_secs_f64();
    let bytes: Vec<Vec<u8>> = sealed.iter().map(Entry::to_stored).collect();
    let started = Instant::now();
    for b in &bytes {
        std::hint::black_box(sha2::Sha256::digest(b));
    }
    let raw = n as f64 / started.elapsed().as_secs_f64();

    // Durable append: the sealed entries into the store's ledger, 1,024 per commit.
    let store = stella::machine::open_store(&root.join("b.redb")).unwrap();
    let started = Instant::now();
    for chunk in bytes.chunks(1024).enumerate() {
        let txn = store.database().begin_write().unwrap();
        {
            let mut t = txn.open_table(LEDGER).unwrap();
            for (j, b) in chunk.1.iter().enumerate() {
                t.insert((chunk.0 * 1024 + j + 1) as u64, b.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let durable = n as f64 / started.elapsed().as_secs_f64();

    // Verification: every stored entry located, hashed and linked, one thread, then the same
    // check on two threads: one reads redb, one checks (`store::verify::check_chain`).
    drop(store);
    let store = stella::machine::open_store(&root.join("b.redb")).unwrap();
    let started = Instant::now();
    {
        let txn = store.read().unwrap();
        let t = txn.open_table(LEDGER).unwrap();
        let mut cursor = ChainCursor::default();
        for row in t.iter().unwrap() {
            let (k, v) = row.unwrap();
            cursor.check_stored(k.value(), v.value()).unwrap();
        }
    }
    let verify = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    {
        let txn = store.read().unwrap();
        let t = txn.open_table(LEDGER).unwrap();
        let mut bytes = 0usize;
        for row in t.iter().unwrap() {
            bytes += row.unwrap().1.value().len();
        }
        std::hint::black_box(bytes);
    }
    let iterate = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (head, _) = stella::kernel::verify::check_chain(&store.read().unwrap(), 2).unwrap().unwrap();
    assert_eq!(head as usize, n);
    let verify2 = n as f64 / started.elapsed().as_secs_f64();
    println!("ledger ({n} entries)                       entries/s   ÷ raw sha256");
    println!("raw sha256 of the same bytes              {raw:>11.0}        1.00x");
    println!("append: seal (canonical JSON + sha256)    {append:>11.0}   {:>9.2}x", append / raw);
    println!("append: durable, 1,024 entries/commit     {durable:>11.0}   {:>9.2}x", durable / raw);
    println!("read every stored entry (redb iteration)  {iterate:>11.0}   {:>9.2}x", iterate / raw);
    println!("verify: full chain (locate, hash, link)   {verify:>11.0}   {:>9.2}x", verify / raw);
    println!("verify: full chain, 2 threads             {verify2:>11.0}   {:>9.2}x", verify2 / raw);

    // Export: the ledger above, log files and metric snapshots of the same window.
    let logs = root.join("log");
    std::fs::create_dir_all(&logs).unwrap();
    let log_lines = runs * 3;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(logs.join("stella.2027-01-15.log")).unwrap());
        for i in 0..log_lines {
            let ms = 1_800_000_000_000 + (i * 6 / 3) as i64;
            writeln!(
                f,
                "{{\"timestamp\":\"{}\",\"level\":\"INFO\",\"fields\":{{\"message\":\"request\",\"requestId\":\"r{i}\",\"status\":200}},\"target\":\"stella::api\"}}",
                stella::clock::rfc3339(ms)
            )
            .unwrap();
        }
    }
    let snapshots = (runs / 100).max(10);
    let text = "# HELP orchestrator_queue_depth Jobs waiting.\n# TYPE orchestrator_queue_depth gauge\norchestrator_queue_depth{type=\"noop\"} 3\norchestrator_queue_depth{type=\"build\"} 7\n# HELP orchestrator_runs Runs.\n# TYPE orchestrator_runs counter\norchestrator_runs_total{status=\"succeeded\"} 10\norchestrator_runs_total{status=\"failed\"} 1\n# EOF\n";
    {
        let txn = store.database().begin_write().unwrap();
        {
            let mut t = txn.open_table(METRIC_SNAPSHOTS).unwrap();
            for i in 0..snapshots {
                t.insert(1_800_000_000_000 + (i * 60) as u64, text.as_bytes()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    drop(sealed);
    drop(bytes);
    drop(store);
    // The export runs in a fresh process so that its peak RSS is its own, not this one's.
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("STELLA_BENCH_EXPORT_DIR", root)
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&child.stdout));
    eprint!("{}", String::from_utf8_lossy(&child.stderr));
}

/// The child: exports each signal alone (for the breakdown), then all of them, measured.
fn export_child(root: &std::path::Path) {
    let store = stella::machine::open_store(&root.join("b.redb")).unwrap();
    let logs = root.join("log");
    let key = ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[9u8; 32])); // TEST-ONLY KEY
    let src = stella::export::Sources { store: &store, log_dir: &logs, key: &key, now_ms: 1_900_000_000_000 };
    let run = |name: &str, signals: Vec<stella::export::Signal>| {
        let req = stella::export::Request {
            from_ms: Some(0),
            to_ms: Some(1_900_000_000_000),
            out: root.join(name),
            signals,
            tar: false,
        };
        let started = Instant::now();
        let manifest = stella::export::write(&src, &req, &Default::default()).unwrap().to_json();
        (manifest, started.elapsed())
    };
    let out = root.join("pack");
    peak_reset();
    let (manifest, elapsed) = run("pack", stella::export::Signal::ALL.to_vec());
    let peak = peak_mib();
    let files = &manifest["files"];
    let records: u64 = files.as_object().unwrap().values().map(|f| f["records"].as_u64().unwrap()).sum();
    let written: u64 = files.as_object().unwrap().values().map(|f| f["bytes"].as_u64().unwrap()).sum();
    let export_mbs = written as f64 / MIB / elapsed.as_secs_f64();
    for s in stella::export::Signal::ALL {
        let (m, t) = run(&format!("only-{}", s.name()), vec![s]);
        let f = &m["files"][s.file()];
        println!(
            "  {:<8} alone: {:>8} records, {:>6.1} MiB in {:>6.3} s = {:>5.0} MB/s",
            s.name(),
            f["records"],
            f["bytes"].as_u64().unwrap() as f64 / MIB,
            t.as_secs_f64(),
            f["bytes"].as_u64().unwrap() as f64 / MIB / t.as_secs_f64()
        );
    }
    let names: Vec<String> = ["ledger", "logs", "metrics", "traces"].iter().map(|n| format!("{n}.ndjson")).collect();
    let started = Instant::now();
    let zstd = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("cat {} | zstd -3 -q -c > /dev/null", names.join(" ")))
        .current_dir(&out)
        .status();
    let zstd_mbs = zstd.ok().filter(|s| s.success()).map(|_| written as f64 / MIB / started.elapsed().as_secs_f64());
    println!(
        "export: {records} records ({} ledger, {} log, {} metric series, {} spans), {:.0} MiB of NDJSON",
        files["ledger.ndjson"]["records"],
        files["logs.ndjson"]["records"],
        files["metrics.ndjson"]["records"],
        files["traces.ndjson"]["records"],
        written as f64 / MIB
    );
    // An auditor's check of the same pack (signature, digests, blocks, lines, the chain)
    // against `sha256sum -c` of its files.
    let signers = root.join("allowed_signers");
    let public = key.public_key().to_openssh().unwrap();
    std::fs::write(&signers, format!("bench namespaces=\"stella-export@stella.invalid\" {public}\n")).unwrap();
    let trust = stella::trust::store::TrustStore::load_files(&signers, None).unwrap();
    let started = Instant::now();
    stella::audit::verify::verify(&out, &trust, 1_900_000_000_000).unwrap();
    let audit_mbs = written as f64 / MIB / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let sums = std::process::Command::new("sha256sum")
        .args(["--strict", "--quiet", "-c", "SHA256SUMS"])
        .current_dir(&out)
        .status();
    let sums_mbs = sums.ok().filter(|s| s.success()).map(|_| written as f64 / MIB / started.elapsed().as_secs_f64());
    match sums_mbs {
        Some(b) => println!(
            "audit verify {audit_mbs:.0} MB/s vs sha256sum -c of the same files {b:.0} MB/s ({:.2}x)",
            audit_mbs / b
        ),
        None => println!("audit verify {audit_mbs:.0} MB/s (sha256sum missing: no baseline)"),
    }
    match zstd_mbs {
        Some(z) => println!(
            "export {export_mbs:.0} MB/s vs zstd -3 of the same NDJSON {z:.0} MB/s ({:.2}x); peak RSS of the exporting process {peak:.1} MiB",
            export_mbs / z
        ),
        None => println!("export {export_mbs:.0} MB/s (zstd missing: no baseline); peak RSS {peak:.1} MiB"),
    }
}
