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
use common::{Conn, Figure, actor, daemon, dir, lease_and_complete, lease_cmd, threaded, writer};

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

/// Enqueue over the API: a daemon on a temp dir, each producer on its own keep-alive
/// connection to the socket. `batch` jobs per request (1: the single-job body; more: an array).
fn api_enqueue(producers: usize, total: usize, batch: usize) -> Figure {
    api_enqueue_logged(producers, total, batch, "info")
}

fn api_enqueue_logged(producers: usize, total: usize, batch: usize, log: &str) -> Figure {
    let (_d, socket, mut child) = daemon(log);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let per = total / producers / batch;
    let started = Instant::now();
    let lat = rt.block_on(async {
        let tasks: Vec<_> = (0..producers)
            .map(|_| {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let mut c = Conn::unix(&socket).await;
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
                        let (status, _) = c.post("/api/v1/orchestrator/jobs", &body).await;
                        assert_eq!(status, 201);
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

/// The request log line's cost: one producer over the API, the same daemon logging at `info`
/// (a line per request) and at `warn`, each twice, interleaved.
fn request_log() {
    let mut rounds = Vec::new();
    for _ in 0..2 {
        let logged = api_enqueue_logged(1, scale(10_000), 1, "info").rate();
        let quiet = api_enqueue_logged(1, scale(10_000), 1, "warn").rate();
        rounds.push(format!("{logged:.0} / {quiet:.0} ({:.1} %)", (1.0 - logged / quiet) * 100.0));
    }
    println!(
        "the request log line, 1 producer over the API, enqueues/s with it / without (STELLA_LOG=warn) (its cost): {}",
        rounds.join(", ")
    );
}

/// One producer and one consumer over the API against the same pair on SQLite, same run.
fn pairs() {
    let mut sqlite = sqlite_pair(scale(10_000), None);
    let base = Some((sqlite.enqueue.rate(), sqlite.processed_per_s));
    print_pair("1 producer + 1 consumer: SQLite WAL FULL", &mut sqlite, None);
    print_pair("1 producer + 1 consumer: stella API, max 1", &mut api_pair(scale(10_000), 1, None), base);
    print_pair("1 producer + 1 consumer: stella API, max 64", &mut api_pair(scale(10_000), 64, None), base);
    print_pair("1 producer + 1 consumer: stella, max 1, next", &mut api_pair_with(scale(10_000), 1, None, true), base);
    // Flat out, the consumer falls behind and enqueue → start is time in the queue; paced at
    // 300 jobs/s (below both consumers' rate) it is the wake-up and lease path.
    let n = scale(10_000).min(1_500);
    print_pair("paced 300/s: SQLite WAL FULL (polling)", &mut sqlite_pair(n, Some(300.0)), None);
    print_pair("paced 300/s: stella API, max 1 (long-poll)", &mut api_pair(n, 1, Some(300.0)), None);
    let lease_max = stella::domain::queue::plan::LEASE_MAX;
    println!(
        "end to end through the API (arrays of 1,000 enqueued; leases of {lease_max}; completions of all leased): {:.0} jobs/s",
        api_pipeline(scale(200_000), 1_000, lease_max)
    );
}

/// What one producer and one consumer see: enqueues/s, processed/s, enqueue → start latency.
struct Pair {
    enqueue: Figure,
    processed_per_s: f64,
    start: Figure,
}

fn print_pair(what: &str, p: &mut Pair, base: Option<(f64, f64)>) {
    let (e, c) = (p.enqueue.rate(), p.processed_per_s);
    let ratio = base.map_or(String::new(), |(be, bc)| format!("  ({:.2}x, {:.2}x)", e / be, c / bc));
    println!(
        "{what:<40} enqueue {e:>6.0}/s  processed {c:>6.0}/s  enqueue→start p50 {:.3} ms p99 {:.3} ms{ratio}",
        p.start.q(0.5),
        p.start.q(0.99)
    );
}

/// One producer enqueues `n` jobs over its keep-alive connection while one consumer, on its
/// own, leases (up to `max` at a time, long-polling) and completes each with its fencing token.
fn api_pair(n: usize, max: u32, pace: Option<f64>) -> Pair {
    api_pair_with(n, max, pace, false)
}

/// [`api_pair`]; with `next`, the consumer's last completion of a lease asks for the next one
/// (`"next"` on `POST /leases/{job}/complete`: one request and one commit), long-polling only
/// when that found nothing.
fn api_pair_with(n: usize, max: u32, pace: Option<f64>, next: bool) -> Pair {
    use std::collections::HashMap;
    let (_d, socket, mut child) = daemon("warn");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let acked: std::sync::Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let started = Instant::now();
    let (enqueue, start, done_at) = rt.block_on(async {
        let producer = {
            let (socket, acked) = (socket.clone(), acked.clone());
            tokio::spawn(async move {
                let mut c = Conn::unix(&socket).await;
                let mut lat = Vec::with_capacity(n);
                for i in 0..n {
                    if let Some(rate) = pace {
                        tokio::time::sleep_until((started + Duration::from_secs_f64(i as f64 / rate)).into()).await;
                    }
                    let t = Instant::now();
                    let body = serde_json::json!({ "type": "bench.work", "payload": { "i": i } });
                    let (status, job) = c.post("/api/v1/orchestrator/jobs", &body).await;
                    assert_eq!(status, 201);
                    acked.lock().unwrap().insert(job["id"].as_str().unwrap().to_owned(), Instant::now());
                    lat.push(t.elapsed());
                }
                Figure { ops: n, elapsed: started.elapsed(), lat }
            })
        };
        let consumer = {
            let (socket, acked) = (socket.clone(), acked.clone());
            tokio::spawn(async move {
                let mut c = Conn::unix(&socket).await;
                let mut starts = Vec::with_capacity(n);
                let mut done = 0;
                let want = serde_json::json!({ "worker": "bench-1", "types": ["bench.work"], "max": max });
                let mut carried: Vec<serde_json::Value> = Vec::new();
                while done < n {
                    let leases = if carried.is_empty() {
                        let mut body = want.clone();
                        body["wait"] = "1s".into();
                        let (status, leased) = c.post("/api/v1/orchestrator/leases", &body).await;
                        assert_eq!(status, 200);
                        leased["leases"].as_array().cloned().unwrap_or_default()
                    } else {
                        std::mem::take(&mut carried)
                    };
                    let now = Instant::now();
                    for l in &leases {
                        let id = l["jobId"].as_str().unwrap();
                        // The producer notes the ack after the response: a lease can come first.
                        if let Some(t) = acked.lock().unwrap().get(id) {
                            starts.push(now.saturating_duration_since(*t));
                        }
                    }
                    let last = leases.len().saturating_sub(1);
                    for (i, l) in leases.into_iter().enumerate() {
                        let path = format!("/api/v1/orchestrator/leases/{}/complete", l["jobId"].as_str().unwrap());
                        let mut body = serde_json::json!({ "token": l["token"] });
                        if next && i == last && done + 1 < n {
                            body["next"] = want.clone();
                        }
                        let (status, settled) = c.post(&path, &body).await;
                        assert_eq!(status, 200);
                        carried = settled["next"]["leases"].as_array().cloned().unwrap_or_default();
                        done += 1;
                    }
                }
                (starts, started.elapsed())
            })
        };
        let enqueue = producer.await.unwrap();
        let (starts, done_at) = consumer.await.unwrap();
        (enqueue, Figure { ops: starts.len(), elapsed: done_at, lat: starts }, done_at)
    });
    let _ = child.kill();
    let _ = child.wait();
    Pair { enqueue, processed_per_s: n as f64 / done_at.as_secs_f64(), start }
}

/// Jobs end to end through the API in batches: one producer posts arrays of `batch` jobs
/// while one consumer leases up to `max` at a time and completes them with one
/// `POST /leases/complete`: enqueued, leased and completed (durable at each step) per second.
fn api_pipeline(n: usize, batch: usize, max: u32) -> f64 {
    let (_d, socket, mut child) = daemon("warn");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let done_at = rt.block_on(async {
        let producer = {
            let socket = socket.clone();
            tokio::spawn(async move {
                let mut c = Conn::unix(&socket).await;
                for b in 0..n / batch {
                    let jobs: Vec<_> = (0..batch)
                        .map(|j| serde_json::json!({ "type": "bench.work", "payload": { "i": b * batch + j } }))
                        .collect();
                    let (status, _) = c.post("/api/v1/orchestrator/jobs", &serde_json::Value::Array(jobs)).await;
                    assert_eq!(status, 201);
                }
            })
        };
        let consumer = tokio::spawn(async move {
            let mut c = Conn::unix(&socket).await;
            let mut done = 0;
            while done < n / batch * batch {
                let body =
                    serde_json::json!({ "worker": "bench-1", "types": ["bench.work"], "max": max, "wait": "1s" });
                let (status, leased) = c.post("/api/v1/orchestrator/leases", &body).await;
                assert_eq!(status, 200);
                let completions: Vec<_> = leased["leases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| serde_json::json!({ "jobId": l["jobId"], "token": l["token"] }))
                    .collect();
                if completions.is_empty() {
                    continue;
                }
                let (status, answer) = c.post("/api/v1/orchestrator/leases/complete", &completions.into()).await;
                assert_eq!(status, 200);
                done += answer["completed"].as_u64().unwrap() as usize;
            }
            started.elapsed()
        });
        producer.await.unwrap();
        consumer.await.unwrap()
    });
    let _ = child.kill();
    let _ = child.wait();
    (n / batch * batch) as f64 / done_at.as_secs_f64()
}

/// The same pair on a SQLite WAL FULL table: the producer inserts, the consumer leases (one
/// durable update) and completes (another), each on its own thread, sharing one connection
/// behind a mutex (two writing connections meet SQLite's busy handler, which sleeps for
/// milliseconds: 140 jobs/s here).
fn sqlite_pair(n: usize, pace: Option<f64>) -> Pair {
    let (_d, path) = sqlite_jobs();
    let acked: Mutex<Vec<Option<Instant>>> = Mutex::new(vec![None; n + 1]);
    let conn = Mutex::new(sqlite_open(&path));
    let started = Instant::now();
    let (enqueue, (starts, done_at)) = std::thread::scope(|s| {
        let producer = s.spawn(|| {
            let mut lat = Vec::with_capacity(n);
            for i in 0..n {
                if let Some(rate) = pace {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
                let t = Instant::now();
                let c = conn.lock().unwrap();
                c.execute(
                    "INSERT INTO jobs (type, priority, state, payload, token) VALUES ('work', 100, 'ready', ?1, 0)",
                    [format!("{{\"i\":{i}}}")],
                )
                .unwrap();
                acked.lock().unwrap()[c.last_insert_rowid() as usize] = Some(Instant::now());
                lat.push(t.elapsed());
            }
            Figure { ops: n, elapsed: started.elapsed(), lat }
        });
        let consumer = s.spawn(|| {
            let mut starts = Vec::with_capacity(n);
            let mut done = 0;
            while done < n {
                let c = conn.lock().unwrap();
                // The consumer polls (SQLite has no wake-up) with a read, which takes no lock
                // from the producer, and leases what it found with a durable update.
                let ready: Option<i64> = c
                    .query_row(
                        "SELECT id FROM jobs WHERE type = 'work' AND state = 'ready' ORDER BY priority DESC, id LIMIT 1",
                        [],
                        |r| r.get(0),
                    )
                    .ok();
                let Some(id) = ready else {
                    drop(c);
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                };
                let token: i64 = c
                    .query_row(
                        "UPDATE jobs SET state = 'leased', token = token + 1 WHERE id = ?1 AND state = 'ready' RETURNING token",
                        [id],
                        |r| r.get(0),
                    )
                    .unwrap();
                if let Some(t) = acked.lock().unwrap()[id as usize] {
                    starts.push(Instant::now().saturating_duration_since(t));
                }
                c.execute("UPDATE jobs SET state = 'done' WHERE id = ?1 AND token = ?2", [id, token]).unwrap();
                done += 1;
            }
            (starts, started.elapsed())
        });
        (producer.join().unwrap(), consumer.join().unwrap())
    });
    Pair {
        enqueue,
        processed_per_s: n as f64 / done_at.as_secs_f64(),
        start: Figure { ops: starts.len(), elapsed: done_at, lat: starts },
    }
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

/// A SQLite queue table (and its ready index) in a fresh temp dir.
fn sqlite_jobs() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = dir();
    let path = d.path().join("q.sqlite");
    sqlite_open(&path)
        .execute_batch(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, type TEXT, priority INT, state TEXT, payload TEXT, token INT);
             CREATE INDEX ready ON jobs (type, state, priority DESC, id);",
        )
        .unwrap();
    (d, path)
}

fn sqlite_queue(producers: usize, total: usize, lifecycle: bool) -> Figure {
    let (_d, path) = sqlite_jobs();
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
    // `cargo bench --bench queue -- pair` runs the single producer and consumer only.
    let parts: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if parts.iter().any(|a| a == "pair") {
        return pairs();
    }
    if parts.iter().any(|a| a == "flat") {
        // The flat-out pairs alone, leasing one at a time, twice.
        for _ in 0..2 {
            let mut sqlite = sqlite_pair(scale(10_000), None);
            let base = Some((sqlite.enqueue.rate(), sqlite.processed_per_s));
            print_pair("1 producer + 1 consumer: SQLite WAL FULL", &mut sqlite, None);
            print_pair("1 producer + 1 consumer: stella API, max 1", &mut api_pair(scale(10_000), 1, None), base);
            let mut chained = api_pair_with(scale(10_000), 1, None, true);
            print_pair("1 producer + 1 consumer: stella, max 1, next", &mut chained, base);
        }
        return;
    }
    if parts.iter().any(|a| a == "e2e") {
        // Jobs end to end through the API alone, twice.
        for _ in 0..2 {
            let rate = api_pipeline(scale(200_000), 1_000, stella::domain::queue::plan::LEASE_MAX);
            println!("end to end through the API: {rate:.0} jobs/s");
        }
        return;
    }
    if parts.iter().any(|a| a == "log") {
        return request_log();
    }
    if parts.iter().any(|a| a == "one") {
        // One producer only: in process and over the API, against SQLite, twice.
        for _ in 0..2 {
            let mut sqlite = sqlite_queue(1, scale(2_000), false);
            let base = sqlite.rate();
            row("enqueue: stella in-process", 1, &mut stella_enqueue(1, scale(40_000)), base);
            row("enqueue: stella API (unix socket)", 1, &mut api_enqueue(1, scale(10_000), 1), base);
            row("enqueue: SQLite WAL FULL", 1, &mut sqlite, base);
        }
        return;
    }
    if parts.iter().any(|a| !"queue".contains(a.as_str())) {
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
    pairs();
    request_log();
    let mut idle = stella_idle_latency(scale(2_000).min(2_000));
    println!(
        "idle enqueue → lease (stella, event-woken worker): p50 {:.3} ms, p99 {:.3} ms",
        idle.q(0.5),
        idle.q(0.99)
    );
}
