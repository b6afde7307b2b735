//! Durable commands per second and acknowledgement latency at 1, 8, 64 and 256 concurrent
//! producers, for stella's group-commit writer and three baselines run in the same process on
//! the same disk: a bare redb one-transaction-per-command loop, a SQLite WAL
//! `synchronous=FULL` insert per command (rusqlite), and a raw 4 KiB append + `fdatasync`
//! loop. Prints figures and ratios; it asserts nothing (DESIGN.md §6).
//!
//! `cargo bench --bench writer` (set STELLA_BENCH_SCALE=0.2 for a quick run).

use redb::{Database, TableDefinition};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stella::clock;
use stella::domain::tokens::TokenCommand;
use stella::kernel::Actor;
use stella::kernel::writer;
use stella::machine::Command;

const PRODUCERS: [usize; 4] = [1, 8, 64, 256];

mod common;
use common::{Figure, threaded};

fn scale(n: usize) -> usize {
    common::scale(n, 256)
}

fn bench_dir() -> tempfile::TempDir {
    common::dir()
}

fn group_commit(producers: usize, total: usize) -> Figure {
    let dir = bench_dir();
    let store = stella::machine::open_store(&dir.path().join("s.redb")).unwrap();
    let (handle, w) = stella::machine::channel(store, clock::system(), writer::WriterOptions::seeded(1)).unwrap();
    let _thread = w.spawn();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let per = total / producers;
    // Ids in arrival order, as a queue's job ids are: each batch dirties few B-tree pages.
    let next_id = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let latencies = rt.block_on(async {
        let tasks: Vec<_> = (0..producers)
            .map(|_| {
                let h = handle.clone();
                let next_id = next_id.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per);
                    for _ in 0..per {
                        let n = next_id.fetch_add(1, Ordering::Relaxed);
                        let command = Command::Token(TokenCommand::Create {
                            id: format!("tok_{n:012}"),
                            tenant: "default".into(),
                            scopes: vec!["orchestrator:read".into()],
                            sha256: "00".repeat(32),
                            expires_ms: None,
                            description: None,
                        });
                        let t = Instant::now();
                        h.submit(Actor { name: "bench".into() }, command).await.unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut all = Vec::with_capacity(per * producers);
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let elapsed = started.elapsed();
    eprintln!("    (group commit: {} commits for {} commands)", handle.stats().commits(), per * producers);
    Figure { ops: per * producers, elapsed, lat: latencies }
}

const T: TableDefinition<&str, &[u8]> = TableDefinition::new("t");

fn bare_redb(producers: usize, total: usize) -> Figure {
    let dir = bench_dir();
    let db = Database::create(dir.path().join("bare.redb")).unwrap();
    let value = vec![7u8; 300];
    threaded(producers, total, |p, i| {
        let txn = db.begin_write().unwrap();
        txn.open_table(T).unwrap().insert(format!("{p}-{i}").as_str(), value.as_slice()).unwrap();
        txn.commit().unwrap();
    })
}

fn sqlite_full(producers: usize, total: usize) -> Figure {
    let dir = bench_dir();
    let path = dir.path().join("q.sqlite");
    let setup = rusqlite::Connection::open(&path).unwrap();
    setup.pragma_update(None, "journal_mode", "WAL").unwrap();
    setup.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, body BLOB)", []).unwrap();
    let conns: Vec<Mutex<rusqlite::Connection>> = (0..producers)
        .map(|_| {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.pragma_update(None, "synchronous", "FULL").unwrap();
            c.busy_timeout(Duration::from_secs(60)).unwrap();
            Mutex::new(c)
        })
        .collect();
    let value = vec![7u8; 300];
    threaded(producers, total, |p, i| {
        conns[p]
            .lock()
            .unwrap()
            .execute("INSERT INTO jobs VALUES (?1, ?2)", rusqlite::params![format!("{p}-{i}"), value])
            .unwrap();
    })
}

fn raw_fdatasync(producers: usize, total: usize) -> Figure {
    let dir = bench_dir();
    let file = Mutex::new(std::fs::File::create(dir.path().join("log")).unwrap());
    let block = vec![7u8; 4096];
    threaded(producers, total, |_, _| {
        let mut f = file.lock().unwrap();
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
    })
}

fn main() {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.as_deref().is_some_and(|f| !"writer".contains(f)) {
        return;
    }
    println!("durable commands: ops/s, p50 and p99 acknowledgement; ratio = ops/s ÷ SQLite WAL FULL");
    println!("{:>9}  {:<26} {:>10} {:>9} {:>9} {:>7}", "producers", "system", "ops/s", "p50 ms", "p99 ms", "ratio");
    for producers in PRODUCERS {
        let sqlite = sqlite_full(producers, scale(2_000));
        let mut rows = [
            ("stella group-commit writer", group_commit(producers, scale(40_000))),
            ("redb txn per command", bare_redb(producers, scale(2_000))),
            ("raw 4KiB append+fdatasync", raw_fdatasync(producers, scale(2_000))),
        ];
        let base = sqlite.rate();
        let mut sqlite = ("SQLite WAL synchronous=FULL", sqlite);
        for (name, f) in rows.iter_mut().chain(std::iter::once(&mut sqlite)) {
            let (rate, p50, p99) = (f.rate(), f.q(0.5), f.q(0.99));
            println!("{producers:>9}  {name:<26} {rate:>10.0} {p50:>9.3} {p99:>9.3} {:>6.1}x", rate / base);
        }
    }
}
