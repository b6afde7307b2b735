//! The durable queue (DESIGN.md §6): enqueue throughput and acknowledgement latency at 1, 8, 64
//! and 256 producers (in-process and over the API's Unix socket), the full lifecycle
//! (enqueue → lease → complete) of no-op jobs, and idle enqueue → lease latency — each against
//! a SQLite WAL `synchronous=FULL` queue and a naive redb one-transaction-per-operation queue,
//! in the same run on the same disk. Prints figures and ratios; asserts nothing.
//!
//! `cargo bench --bench queue` (STELLA_BENCH_SCALE=0.2 for a quick run).

use redb::{Database, ReadableTable, TableDefinition};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use stella::domain::queue::QueueCommand;
use stella::machine::Command;
use stella::machine::WriterHandle;

mod common;
use common::{Figure, actor, dir, lease_and_complete, lease_cmd, threaded, writer};

fn scale(n: usize) -> usize {
    common::scale(n, 512)
}

fn enqueue_cmd(i: usize) -> Command {
    Command::Queue(QueueCommand::Enqueue {
        tenant: "default".into(),
        job_type: "noop".into(),
        payload: serde_json::json!({ "i": i }),
        priority: 100,
        max_attempts: Some(3),
        delay_ms: None,
        idempotency_key: None,
    })
}

struct Stella {
    _dir: tempfile::TempDir,
    handle: WriterHandle,
    rt: tokio::runtime::Runtime,
}

fn stella() -> Stella {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (d, handle, _) = writer(1);
    Stella { _dir: d, handle, rt }
}

fn stella_enqueue(producers: usize, total: usize) -> Figure {
    stella_enqueue_on(&stella(), producers, total)
}

fn stella_enqueue_on(s: &Stella, producers: usize, total: usize) -> Figure {
    let per = total / producers;
    let started = Instant::now();
    let lat = s.rt.block_on(async {
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let h = s.handle.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per);
                    for i in 0..per {
                        let t = Instant::now();
                        h.submit(actor(), enqueue_cmd(p * per + i)).await.unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    Figure { ops: per * producers, elapsed: started.elapsed(), lat }
}

/// Enqueue over the API: a daemon on a temp dir, one request per connection on its socket.
/// `batch` jobs per request (1: the single-job body; more: an array, one command each).
fn api_enqueue(producers: usize, total: usize, batch: usize) -> Figure {
    api_enqueue_logged(producers, total, batch, "info")
}

/// [`api_enqueue`] with the daemon's log filter `log` (`info` writes a line per request).
fn api_enqueue_logged(producers: usize, total: usize, batch: usize, log: &str) -> Figure {
    let d = dir();
    let notify = d.path().join("n.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stella"))
        .arg("--state-dir")
        .arg(d.path())
        .args(["serve", "--dev", "--listen", ""])
        .env("NOTIFY_SOCKET", &notify)
        .env("STELLA_LOG", log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        let n = sock.recv(&mut buf).unwrap();
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break;
        }
    }
    let client = stella::client::Client::unix(d.path().join("run/stella/orchestrator.sock"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let per = total / producers / batch;
    let started = Instant::now();
    let lat = rt.block_on(async {
        let tasks: Vec<_> = (0..producers)
            .map(|_| {
                let c = client.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per);
                    for i in 0..per {
                        let body = if batch == 1 {
                            serde_json::json!({ "type": "noop", "payload": { "i": i } })
                        } else {
                            let jobs: Vec<_> = (0..batch)
                                .map(|j| serde_json::json!({ "type": "noop", "payload": { "i": i * batch + j } }))
                                .collect();
                            serde_json::Value::Array(jobs)
                        };
                        let t = Instant::now();
                        let r = c.post("/api/v1/orchestrator/jobs", &body).await.unwrap();
                        assert_eq!(r.status, 201);
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let elapsed = started.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    Figure { ops: per * producers * batch, elapsed, lat }
}

/// 64 producers enqueue while 8 workers lease up to 64 at a time and complete each job.
fn stella_lifecycle(total: usize) -> Figure {
    let s = stella();
    let started = Instant::now();
    s.rt.block_on(async {
        let producers: Vec<_> = (0..64)
            .map(|p| {
                let h = s.handle.clone();
                tokio::spawn(async move {
                    for i in 0..total / 64 {
                        h.submit(actor(), enqueue_cmd(p * total + i)).await.unwrap();
                    }
                })
            })
            .collect();
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let target = (total / 64) * 64;
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (h, done) = (s.handle.clone(), done.clone());
                tokio::spawn(async move {
                    while done.load(std::sync::atomic::Ordering::Relaxed) < target {
                        match lease_and_complete(&h, w, 64, None).await {
                            0 => tokio::task::yield_now().await,
                            n => _ = done.fetch_add(n, std::sync::atomic::Ordering::Relaxed),
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.await.unwrap();
        }
        for w in workers {
            w.await.unwrap();
        }
    });
    Figure { ops: (total / 64) * 64, elapsed: started.elapsed(), lat: vec![] }
}

/// Idle: one job at a time; a worker woken by the committed event leases it.
fn stella_idle_latency(n: usize) -> Figure {
    let s = stella();
    let started = Instant::now();
    let lat = s.rt.block_on(async {
        let mut events = s.handle.subscribe();
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            let h = s.handle.clone();
            let worker = tokio::spawn(async move {
                loop {
                    let e = events.recv().await.unwrap();
                    if e.kind == "job.enqueued" {
                        let c = h.submit(actor(), lease_cmd(0, 1)).await.unwrap();
                        assert_eq!(c.entries.len(), 1);
                        return events;
                    }
                }
            });
            s.handle.submit(actor(), enqueue_cmd(i)).await.unwrap();
            events = worker.await.unwrap();
            lat.push(t.elapsed());
        }
        lat
    });
    Figure { ops: n, elapsed: started.elapsed(), lat }
}

// ---- baselines ----

fn sqlite_open(path: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.busy_timeout(Duration::from_secs(60)).unwrap();
    c
}

fn sqlite_queue(producers: usize, total: usize, lifecycle: bool) -> Figure {
    let d = dir();
    let path = d.path().join("q.sqlite");
    sqlite_open(&path)
        .execute_batch(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, type TEXT, priority INT, state TEXT, payload TEXT, token INT);
                        CREATE INDEX ready ON jobs (type, state, priority DESC, id);",
        )
        .unwrap();
    let conns: Vec<Mutex<rusqlite::Connection>> = (0..producers).map(|_| Mutex::new(sqlite_open(&path))).collect();
    threaded(producers, total, |p, i| {
        let c = conns[p].lock().unwrap();
        c.execute(
            "INSERT INTO jobs (type, priority, state, payload, token) VALUES ('noop', 100, 'ready', ?1, 0)",
            [format!("{{\"i\":{i}}}")],
        )
        .unwrap();
        if lifecycle {
            let id: Option<i64> = c
                .query_row(
                    "UPDATE jobs SET state = 'leased', token = token + 1 WHERE id = (SELECT id FROM jobs WHERE type = 'noop' AND state = 'ready' ORDER BY priority DESC, id LIMIT 1) RETURNING id",
                    [],
                    |r| r.get(0),
                )
                .ok();
            if let Some(id) = id {
                c.execute("UPDATE jobs SET state = 'done' WHERE id = ?1", [id]).unwrap();
            }
        }
    })
}

const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
const READY: TableDefinition<u64, u64> = TableDefinition::new("ready");

fn naive_redb(producers: usize, total: usize, lifecycle: bool) -> Figure {
    let d = dir();
    let db = Database::create(d.path().join("naive.redb")).unwrap();
    let next = std::sync::atomic::AtomicU64::new(0);
    threaded(producers, total, |_, i| {
        let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let txn = db.begin_write().unwrap();
        txn.open_table(JOBS).unwrap().insert(id, format!("{{\"i\":{i},\"state\":\"ready\"}}").as_bytes()).unwrap();
        txn.open_table(READY).unwrap().insert(id, 100).unwrap();
        txn.commit().unwrap();
        if lifecycle {
            let txn = db.begin_write().unwrap();
            let leased = {
                let mut ready = txn.open_table(READY).unwrap();
                let first = ready.first().unwrap().map(|(k, _)| k.value());
                if let Some(k) = first {
                    ready.remove(k).unwrap();
                }
                first
            };
            txn.commit().unwrap();
            if let Some(k) = leased {
                let txn = db.begin_write().unwrap();
                txn.open_table(JOBS).unwrap().insert(k, b"{\"state\":\"done\"}".as_slice()).unwrap();
                txn.commit().unwrap();
            }
        }
    })
}

fn row(what: &str, producers: usize, f: &mut Figure, base: f64) {
    let (p50, p99) = (f.q(0.5), f.q(0.99));
    println!("{what:<34} {producers:>9} {:>10.0} {p50:>9.3} {p99:>9.3} {:>7.1}x", f.rate(), f.rate() / base);
}

/// Bytes this process has passed to `write`/`pwrite` so far (`/proc/self/io` `wchar`): what a
/// commit costs the disk, before the page cache merges anything.
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Bytes written per acknowledged single-job commit, one producer: stella's writer against
/// SQLite WAL FULL, in the same run.
/// Counted once the store is open: creating it (and its write-ahead log, written full of
/// zeros once) is not a commit's cost.
fn bytes_per_commit(n: usize) {
    let s = stella();
    let before = written_bytes();
    let f = stella_enqueue_on(&s, 1, n);
    let stella = (written_bytes() - before) as f64 / f.ops as f64;
    let before = written_bytes();
    let f = sqlite_queue(1, n, false);
    let sqlite = (written_bytes() - before) as f64 / f.ops as f64;
    println!(
        "bytes written per single-job commit (1 producer): stella {:.1} KiB, SQLite WAL FULL {:.1} KiB ({:.1}x)",
        stella / 1024.0,
        sqlite / 1024.0,
        stella / sqlite.max(1.0)
    );
}

fn main() {
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"queue".contains(a.as_str())) {
        return;
    }
    println!(
        "{:<34} {:>9} {:>10} {:>9} {:>9} {:>8}",
        "durable queue", "producers", "jobs/s", "p50 ms", "p99 ms", "÷SQLite"
    );
    for producers in [1, 8, 64, 256] {
        let mut sqlite = sqlite_queue(producers, scale(2_000), false);
        let base = sqlite.rate();
        row("enqueue: stella in-process", producers, &mut stella_enqueue(producers, scale(40_000)), base);
        row("enqueue: stella API (unix socket)", producers, &mut api_enqueue(producers, scale(10_000), 1), base);
        if producers <= 8 {
            let mut batched = api_enqueue(producers, scale(400_000), 1_000);
            row("enqueue: API, arrays of 1,000 (p = request)", producers, &mut batched, base);
        }
        row("enqueue: naive redb txn/op", producers, &mut naive_redb(producers, scale(2_000), false), base);
        row("enqueue: SQLite WAL FULL", producers, &mut sqlite, base);
    }
    let mut sqlite = sqlite_queue(8, scale(2_000), true);
    let base = sqlite.rate();
    row("lifecycle: stella (64 prod, 8 workers)", 64, &mut stella_lifecycle(scale(100_000)), base);
    row("lifecycle: naive redb txn/op", 8, &mut naive_redb(8, scale(2_000), true), base);
    row("lifecycle: SQLite WAL FULL", 8, &mut sqlite, base);
    bytes_per_commit(scale(2_000));
    let logged = api_enqueue_logged(1, scale(10_000), 1, "info").rate();
    let quiet = api_enqueue_logged(1, scale(10_000), 1, "warn").rate();
    println!(
        "the request log line, 1 producer over the API: {logged:.0} enqueues/s with it, {quiet:.0} without (STELLA_LOG=warn): it costs {:.1} %",
        (1.0 - logged / quiet) * 100.0
    );
    let mut idle = stella_idle_latency(scale(2_000).min(2_000));
    println!(
        "idle enqueue → lease (stella, event-woken worker): p50 {:.3} ms, p99 {:.3} ms",
        idle.q(0.5),
        idle.q(0.99)
    );
}
