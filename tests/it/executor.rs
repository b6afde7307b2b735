//! The in-process executor and the writer's syncs, driven straight into the writer: what a
//! batch costs on disk, and what wakes the executor.

use serde_json::json;
use stella::domain::queue::QueueCommand;
use stella::kernel::Actor;
use stella::machine::Command;

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

fn actor() -> Actor {
    Actor { name: "test".into() }
}

/// A batch that appends nothing (a lease that finds no work) commits without a sync; a batch
/// that appends, or extends a lease (a heartbeat), is synced before its caller hears, and what
/// it appended survives a reopen.
#[test]
fn only_batches_that_append_entries_are_synced() {
    let mut d = crate::support::Direct::new();
    let stats = |d: &crate::support::Direct| {
        let s = d.handle.as_ref().unwrap().stats();
        (s.commits(), s.durable_commits())
    };
    let before = stats(&d);
    let lease = Command::Queue(QueueCommand::Lease {
        tenant: None,
        worker: "w1".into(),
        worker_tenant: String::new(),
        types: vec!["noop".into()],
        max: 8,
        ttl_ms: Some(60_000),
        env: None,
        agent: None,
    });
    let c = d.submit(lease.clone()).unwrap();
    assert!(c.entries.is_empty());
    assert_eq!(stats(&d), (before.0 + 1, before.1), "an empty lease commits, unsynced");
    let c = d.submit(enqueue("noop", 0)).unwrap();
    let id = c.entries[0].subjects[0].clone();
    assert_eq!(stats(&d), (before.0 + 2, before.1 + 1), "an enqueue is synced");
    let granted = d.submit(lease.clone()).unwrap();
    let token = granted.entries[0].data["leases"][0]["token"].as_u64().unwrap();
    let beat = Command::Queue(QueueCommand::Heartbeat { tenant: None, job: id.clone(), token, ttl_ms: Some(90_000) });
    let synced = stats(&d);
    let c = d.submit(beat).unwrap();
    assert!(c.entries.is_empty(), "a heartbeat is not ledgered");
    assert_eq!(stats(&d), (synced.0 + 1, synced.1 + 1), "but the lease it extends is told to the worker: synced");
    d.reopen();
    let txn = d.store().read().unwrap();
    assert!(stella::machine::read::job(&txn, &id).unwrap().is_some(), "the acknowledged job is there after a reopen");
}

/// Entries that name a job type the executor does not serve wake it for nothing: 50 enqueues
/// of another type cost 50 commits, not a lease each; a job of its own type is still run.
#[test]
fn the_executor_sleeps_through_work_it_does_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let store = stella::machine::open_store(&dir.path().join("s.redb")).unwrap();
    let opts = stella::kernel::writer::WriterOptions::seeded(1);
    let clock = std::sync::Arc::new(stella::clock::ManualClock::new(1_000_000));
    let (h, w) = stella::machine::channel(store.clone(), clock, opts).unwrap();
    let _writer = w.spawn();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let before = h.stats().commits();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let exec_opts = stella::exec::worker::ExecOptions {
            worker: "local-test".into(),
            slots: 8,
            lease_ttl_ms: 60_000,
            lib: dir.path().join("lib"),
        };
        let exec = tokio::spawn(stella::exec::worker::run(h.clone(), store.clone(), exec_opts, stopped));
        let mut events = h.subscribe();
        for i in 0..50 {
            h.submit(actor(), enqueue("elsewhere", i)).await.unwrap();
        }
        let served = h.submit(actor(), enqueue("noop", 50)).await.unwrap().entries[0].subjects[0].clone();
        loop {
            let e = events.recv().await.unwrap();
            if e.kind == "job.succeeded" && e.subjects.first() == Some(&served) {
                break;
            }
        }
        let commits = h.stats().commits() - before;
        let _ = stop.send(true);
        exec.await.unwrap();
        // 51 enqueues, the executor's first lease, the lease that took the noop job, its
        // result and the lease after it (those two may share a commit): at most 55.
        assert!(commits <= 55, "{commits} commits for 51 enqueues and one job run");
    });
}
