//! Durability across stops: what the daemon acknowledged is there after a clean stop and
//! after kill -9 under load, and the ledger still verifies.

use crate::support::*;
use std::sync::{Arc, Mutex};

async fn assert_tokens_exist(app: &TestAppliance, ids: &[String]) {
    let client = app.socket_client();
    for id in ids {
        let reply = client.get(&format!("/api/v1/orchestrator/auth/tokens/{id}")).await.unwrap();
        assert_eq!(reply.status, 200, "acknowledged token {id} is missing after restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commands_survive_a_clean_stop_and_kill_9_under_load() {
    let mut app = TestAppliance::start();
    let client = app.socket_client();
    let mut acked = Vec::new();
    for _ in 0..5 {
        acked.push(create_token(&client, "default", &["orchestrator:read"], None).await.0);
    }
    assert!(app.terminate().success(), "SIGTERM exits 0\n{}", app.log());
    assert!(!app.layout().default_socket().exists(), "a clean stop removes the socket");
    app.launch();
    assert_tokens_exist(&app, &acked).await;

    // Eight producers create tokens until the daemon dies under them.
    let acked_under_load = Arc::new(Mutex::new(Vec::new()));
    let (enough_tx, mut enough_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut producers = Vec::new();
    for _ in 0..8 {
        let client = app.socket_client();
        let acked = acked_under_load.clone();
        let enough = enough_tx.clone();
        producers.push(tokio::spawn(async move {
            loop {
                let body = serde_json::json!({ "tenant": "default", "scopes": ["orchestrator:read"] });
                let Ok(reply) = client.post("/api/v1/orchestrator/auth/tokens", &body).await else {
                    return;
                };
                if reply.status != 201 {
                    return;
                }
                let id = reply.json().unwrap()["id"].as_str().unwrap().to_owned();
                let n = {
                    let mut a = acked.lock().unwrap();
                    a.push(id);
                    a.len()
                };
                if n == 200 {
                    let _ = enough.try_send(());
                }
            }
        }));
    }
    drop(enough_tx);
    enough_rx.recv().await.expect("producers acknowledged 200 commands");
    app.kill9();
    for p in producers {
        p.await.unwrap();
    }
    app.launch();
    let acked_under_load = acked_under_load.lock().unwrap().clone();
    assert!(acked_under_load.len() >= 200);
    assert_tokens_exist(&app, &acked).await;
    assert_tokens_exist(&app, &acked_under_load).await;
    let verify = app.stella(&["orch", "db", "verify"]);
    assert!(verify.status.success(), "db verify after kill -9: {}{}", stdout(&verify), stderr(&verify));
}

// A power loss inside the write-ahead log, simulated in-process: the store file as redb left it
// on disk (its last durable commit; the commits made without a sync live only in the writer's
// memory) and the log cut, or torn, at a chosen byte.

use redb::ReadableTable;
use std::collections::BTreeSet;
use std::path::Path;
use stella::domain::queue::QueueCommand;
use stella::kernel::Actor;
use stella::kernel::store::{LEDGER, Store, read};
use stella::kernel::wal;
use stella::kernel::writer::WriterOptions;
use stella::machine::{Command, WriterHandle};

/// A record's header: magic, epoch, first seq, count, payload length, digest.
const WAL_HEADER: usize = 44;
/// Commands queued before the writer starts: one batch, so the first record holds several.
const GROUPED: usize = 3;
/// Commands submitted one at a time after it: a record each.
const SINGLE: usize = 5;

fn enqueue(i: usize) -> Command {
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

fn actor() -> Actor {
    Actor { name: "appliance".into() }
}

fn writer(store: &Store) -> (WriterHandle, stella::machine::Writer) {
    stella::machine::channel(store.clone(), stella::clock::system(), WriterOptions::seeded(7)).unwrap()
}

fn last_seq(committed: &stella::kernel::Committed) -> u64 {
    committed.entries.last().expect("an enqueue appends an entry").seq
}

/// What the disk held when the power went, and what had been acknowledged before.
struct Crash {
    /// The store file: its last durable commit (a checkpoint), and whatever redb wrote since.
    store: Vec<u8>,
    /// The log file: this epoch's records, then what was there before.
    log: Vec<u8>,
    /// The log file before this epoch's records overwrote its start: the last epoch's.
    previous_log: Vec<u8>,
    /// The durable head, then the acknowledged head after each logged batch.
    heads: Vec<u64>,
    /// Each entry's stored bytes (index seq - 1), read back after a clean stop.
    stored: Vec<Vec<u8>>,
}

/// Builds a store whose durable head is a few entries in, then logs `1 + SINGLE` batches
/// (acknowledged, not checkpointed) and images the files while the writer idles. `None` if
/// the writer checkpointed meanwhile (a machine so slow that a second passed).
fn crash(dir: &Path, rt: &tokio::runtime::Runtime) -> Option<Crash> {
    let path = dir.join("s.redb");
    let log_path = wal::path_for(&path);

    // Entries made durable by a checkpoint: the log of the next epoch chains onto them.
    let store = stella::machine::open_store(&path).unwrap();
    let (handle, w) = writer(&store);
    let thread = w.spawn();
    rt.block_on(async {
        for i in 0..2 {
            handle.submit(actor(), enqueue(i)).await.unwrap();
        }
    });
    drop(handle);
    thread.join().unwrap();
    drop(store);
    let store = stella::machine::open_store(&path).unwrap();
    let previous_log = std::fs::read(&log_path).unwrap();

    let (handle, w) = writer(&store);
    let mut heads = vec![handle.stats().head_seq()];
    assert_eq!(heads[0], read::ledger_head(&store.read().unwrap()).unwrap().0);
    assert!(heads[0] > 0, "the durable part of the ledger is not empty");
    let thread = rt.block_on(async {
        let grouped: Vec<_> = (0..GROUPED)
            .map(|i| {
                let h = handle.clone();
                tokio::spawn(async move { h.submit(actor(), enqueue(100 + i)).await })
            })
            .collect();
        while handle.backlog() < GROUPED {
            tokio::task::yield_now().await;
        }
        let thread = w.spawn();
        // The head a caller was acknowledged is its entries' last seq. (The writer's
        // `head_seq` statistic is stored only after it has answered, so it can lag an ack.)
        let mut head = 0;
        for g in grouped {
            head = head.max(last_seq(&g.await.unwrap().unwrap()));
        }
        heads.push(head);
        for i in 0..SINGLE {
            heads.push(last_seq(&handle.submit(actor(), enqueue(200 + i)).await.unwrap()));
        }
        thread
    });
    let stats = handle.stats();
    let checkpointed = stats.checkpoints() > 0;
    if !checkpointed {
        assert_eq!(stats.commits(), 1 + SINGLE as u64, "the grouped commands were one batch");
        assert_eq!(stats.durable_commits(), 1 + SINGLE as u64, "every batch was logged");
    }
    // The writer is idle, every batch acknowledged: what the files hold now is what a power
    // loss would leave of them.
    let image = (std::fs::read(&path).unwrap(), std::fs::read(&log_path).unwrap());
    drop(handle);
    thread.join().unwrap();
    drop(store);
    if checkpointed {
        return None;
    }

    let store = stella::machine::open_store(&path).unwrap();
    let txn = store.read().unwrap();
    let ledger = txn.open_table(LEDGER).unwrap();
    let mut stored = Vec::new();
    for row in ledger.iter().unwrap() {
        let (k, v) = row.unwrap();
        assert_eq!(k.value(), stored.len() as u64 + 1, "the ledger has no gap");
        stored.push(v.value().to_vec());
    }
    assert_eq!(stored.len() as u64, *heads.last().unwrap(), "a clean stop keeps every acknowledged entry");
    let (store_bytes, log) = image;
    Some(Crash { store: store_bytes, log, previous_log, heads, stored })
}

/// Opens the store image in `dir` with the log image `log` (which runs redb's repair and the
/// replay) and checks it holds exactly the first `expect` entries, as acknowledged, and passes
/// the full verify. Only the log's first `log.len()` bytes are written: the rest of the file
/// is the crash image's already, and a replay never writes the log.
fn assert_recovers(dir: &Path, crash: &Crash, log: &[u8], expect: u64, case: &str) {
    use std::os::unix::fs::FileExt;
    let path = dir.join("s.redb");
    std::fs::write(&path, &crash.store).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(wal::path_for(&path)).unwrap();
    file.write_all_at(log, 0).unwrap();
    drop(file);
    let store = stella::machine::open_store(&path).unwrap_or_else(|e| panic!("{case}: open: {e}"));
    let txn = store.read().unwrap();
    let head = read::ledger_head(&txn).unwrap().0;
    assert_eq!(head, expect, "{case}: the ledger's head after the replay");
    let ledger = txn.open_table(LEDGER).unwrap();
    let mut seq = 0;
    for row in ledger.iter().unwrap() {
        let (k, v) = row.unwrap();
        seq += 1;
        assert_eq!(k.value(), seq, "{case}: the ledger has no gap");
        assert!(v.value() == crash.stored[seq as usize - 1].as_slice(), "{case}: entry {seq} is not as acknowledged");
    }
    assert_eq!(seq, expect, "{case}: entries in the ledger");
    let report = stella::kernel::verify::verify::<stella::machine::Stella>(&txn).unwrap();
    assert!(report.ok, "{case}: verify: {:?}", report.problem.map(|p| p.message()));
    assert_eq!((report.entries, report.head_seq), (expect, expect), "{case}: verify's count");
}

#[test]
fn a_power_loss_at_any_byte_of_the_log_keeps_every_acknowledged_commit_and_no_torn_one() {
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let crash = (0..3)
        .find_map(|attempt| {
            let d = dir.path().join(format!("attempt-{attempt}"));
            std::fs::create_dir(&d).unwrap();
            crash(&d, &rt)
        })
        .expect("six batches logged within a second, before any checkpoint");
    let heads = &crash.heads;

    // Where each record ends, from the entries' stored bytes alone (not the log's parser).
    let mut ends = Vec::new();
    let mut at = 0usize;
    for pair in heads.windows(2) {
        let (first, last) = (pair[0] + 1, pair[1]);
        let header = &crash.log[at..at + WAL_HEADER];
        assert_eq!(&header[..4], b"SWL1", "record {} starts at byte {at}", ends.len());
        assert_eq!(header[12..20], first.to_le_bytes(), "record {}'s first seq", ends.len());
        assert_eq!(header[20..24], ((last - first + 1) as u32).to_le_bytes(), "record {}'s count", ends.len());
        at += WAL_HEADER;
        for seq in first..=last {
            let stored = &crash.stored[seq as usize - 1];
            assert_eq!(crash.log[at..at + 4], (stored.len() as u32).to_le_bytes());
            assert!(crash.log[at + 4..at + 4 + stored.len()] == *stored, "entry {seq} in the log");
            at += 4 + stored.len();
        }
        // A cut anywhere before the end changes the record's last byte.
        assert_ne!(crash.log[at - 1], 0);
        ends.push(at);
    }
    assert!(heads[1] - heads[0] >= GROUPED as u64, "the first record holds several entries");
    let end = *ends.last().unwrap();
    assert!(crash.previous_log[..end] != crash.log[..end], "the last epoch's records were overwritten");
    assert!(crash.log[end..] == crash.previous_log[end..], "the log is overwritten in place, no further");
    assert!(
        crash.previous_log[..WAL_HEADER].starts_with(b"SWL1"),
        "the previous epoch's records are still there to be mistaken for this one's"
    );

    // Cut points: every byte of the first header, each record's end and its neighbours, every
    // 23rd byte between.
    let mut cuts: BTreeSet<usize> = (0..=WAL_HEADER).collect();
    for &e in &ends {
        cuts.extend([e - 1, e, e + 1]);
    }
    cuts.extend((0..end).step_by(23));
    cuts.retain(|&c| c <= end);

    let image = dir.path().join("image");
    std::fs::create_dir(&image).unwrap();
    std::fs::write(wal::path_for(&image.join("s.redb")), &crash.log).unwrap();
    let mut log = crash.log[..end].to_vec();
    let mut opens = 0;
    for &cut in &cuts {
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let expect = heads[whole];
        // The bytes from the cut on never reached the disk: the blocks hold zeros (a fresh
        // log) or what the last epoch wrote there.
        for (tail, name) in [(None, "zeros"), (Some(&crash.previous_log), "the last epoch's bytes")] {
            match tail {
                None => log[cut..end].fill(0),
                Some(prev) => log[cut..end].copy_from_slice(&prev[cut..end]),
            }
            assert_recovers(&image, &crash, &log, expect, &format!("log cut at byte {cut} of {end}, then {name}"));
            log[cut..end].copy_from_slice(&crash.log[cut..end]);
            opens += 1;
        }
    }

    // One byte of a record's payload is wrong. In the last record it is a torn write: that
    // record is not replayed. In an earlier one, with whole records after it, the log was
    // damaged after it was synced: the open refuses, naming the log and the byte, rather
    // than drop the acknowledged entries after it.
    let starts: Vec<usize> = std::iter::once(0).chain(ends.iter().copied()).collect();
    let last = starts.len() - 2;
    for (j, pair) in starts.windows(2).enumerate() {
        let at = pair[0] + WAL_HEADER + (pair[1] - pair[0] - WAL_HEADER) / 2;
        log[at] ^= 0x20;
        let case = format!("byte {at} (record {j}'s payload) changed");
        if j == last {
            assert_recovers(&image, &crash, &log, heads[j], &case);
        } else {
            let path = image.join("s.redb");
            std::fs::write(&path, &crash.store).unwrap();
            std::fs::write(wal::path_for(&path), &log).unwrap();
            let refused = stella::machine::open_store(&path).map(drop).expect_err(&case).to_string();
            assert!(
                refused.contains("damaged")
                    && refused.contains("-wal")
                    && refused.contains(&format!("byte {}", pair[0])),
                "{case}: {refused}"
            );
        }
        log[at] ^= 0x20;
        opens += 1;
    }

    // The whole log, once more: a second open after the replay replays nothing again.
    assert_recovers(&image, &crash, &log, *heads.last().unwrap(), "the whole log");
    let store = stella::machine::open_store(&image.join("s.redb")).unwrap();
    assert_eq!(read::ledger_head(&store.read().unwrap()).unwrap().0, *heads.last().unwrap(), "a second open");
    drop(store);
    println!(
        "{} cut points x 2 tails + {} torn records over a {end}-byte log of {} records ({} entries): {opens} opens in {:?}",
        cuts.len(),
        ends.len(),
        ends.len(),
        heads.last().unwrap() - heads[0],
        started.elapsed()
    );
}

/// A runtime to submit with, and a new store `s.redb` in a temp dir.
fn fresh_store() -> (tokio::runtime::Runtime, tempfile::TempDir, std::path::PathBuf, Store) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = stella::machine::open_store(&path).unwrap();
    (rt, dir, path, store)
}

/// A second writer on a store that stays open (no reopen between) starts with a checkpoint: its
/// log records never overwrite the first writer's, which were not yet durable in redb.
#[test]
fn a_second_writer_on_an_open_store_keeps_the_first_ones_acknowledged_entries() {
    let (rt, dir, path, store) = fresh_store();
    let mut acked = 0;
    for round in 0..2 {
        let (handle, w) = writer(&store);
        let thread = w.spawn();
        rt.block_on(async {
            for i in 0..2 - round {
                acked = last_seq(&handle.submit(actor(), enqueue(round * 10 + i)).await.unwrap());
            }
        });
        if round == 1 {
            // The crash image, taken while the second writer is alive and idle.
            let image = dir.path().join("image");
            std::fs::create_dir(&image).unwrap();
            std::fs::copy(&path, image.join("s.redb")).unwrap();
            std::fs::copy(wal::path_for(&path), wal::path_for(&image.join("s.redb"))).unwrap();
        }
        drop(handle);
        thread.join().unwrap();
    }
    drop(store);
    let copy = stella::machine::open_store(&dir.path().join("image/s.redb")).unwrap();
    let txn = copy.read().unwrap();
    assert_eq!(read::ledger_head(&txn).unwrap().0, acked, "every acknowledged entry, both writers'");
    let report = stella::kernel::verify::verify::<stella::machine::Stella>(&txn).unwrap();
    assert!(report.ok, "{report:?}");
}

/// Copies the store at `path` and its log into `to` while its writer runs: the crash image.
fn crash_image(path: &Path, to: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(to).unwrap();
    let copy = to.join("s.redb");
    std::fs::copy(path, &copy).unwrap();
    std::fs::copy(wal::path_for(path), wal::path_for(&copy)).unwrap();
    copy
}

/// A secret's value is not in its ledger entry, so not in the log: its batch is a checkpoint,
/// and the value is there after a kill -9 right after it was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_set_is_durable_when_acknowledged() {
    let mut app = TestAppliance::start();
    // A job first, so that the log holds a record the secret's batch must not rely on.
    let c = app.socket_client();
    let job = serde_json::json!({ "type": "before.secret" });
    assert_eq!(c.post("/api/v1/orchestrator/jobs", &job).await.unwrap().status, 201);
    app.set_secret("db-password", "a-value-set-just-before-the-crash");
    app.kill9();
    app.launch();
    assert!(app.terminate().success());
    let store = stella::machine::open_store(&app.store_path()).unwrap();
    let txn = store.read().unwrap();
    let secrets = txn.open_table(stella::domain::appliance::tables::SECRETS).unwrap();
    assert!(secrets.get("db-password").unwrap().is_some(), "the acknowledged secret survived kill -9");
}

/// An idle writer checkpoints on its own within a second of the log's first record, so redb
/// itself (without the log) holds what was acknowledged.
#[test]
fn an_idle_writer_checkpoints_what_its_log_holds() {
    let (rt, dir, path, store) = fresh_store();
    let (handle, w) = writer(&store);
    let thread = w.spawn();
    let acked = rt.block_on(async { last_seq(&handle.submit(actor(), enqueue(1)).await.unwrap()) });
    // Wait for the checkpoint (bounded: the interval is one second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while handle.stats().checkpoints() == 0 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint within 20 s of an idle log");
        std::thread::yield_now();
    }
    let copy = crash_image(&path, &dir.path().join("image"));
    drop(handle);
    thread.join().unwrap();
    // The log is dropped from the image: only redb's durable state remains.
    std::fs::remove_file(wal::path_for(&copy)).unwrap();
    let copy = stella::machine::open_store(&copy).unwrap();
    assert_eq!(read::ledger_head(&copy.read().unwrap()).unwrap().0, acked);
}
