//! The single writer (DESIGN.md invariant 1): one thread owns redb's write side.
//!
//! Commands arrive on a bounded channel. The writer takes every command that is waiting (up to
//! `batch_max`), plans and applies them in one write transaction, appends their ledger entries,
//! commits once with `Durability::Immediate` and only then answers each caller and publishes the
//! committed entries (invariant 3). A command whose plan fails changes nothing and its
//! neighbours still commit. A failed commit fails the whole batch and acknowledges nothing.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::ledger::Entry;
use crate::queue::rng::SplitMix64;
use crate::store::command::{Actor, Bucket, Command, CommandError, Committed, LiveWrite, PlanCtx};
use crate::store::projection;
use crate::store::records::{Record, WorkerRecord};
use crate::store::schema::{DUE, LEDGER, LIVE_LEASES, METRIC_SNAPSHOTS, SECRETS, Store, WORKERS, read, rw};
use redb::{Durability, WriteTransaction};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc, oneshot};

struct Envelope {
    actor: Actor,
    command: Command,
    reply: oneshot::Sender<Result<Committed, CommandError>>,
}

/// Counters the status endpoint, the tests and the benchmarks read.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub commits: AtomicU64,
    pub commands: AtomicU64,
    pub entries: AtomicU64,
    pub head_seq: AtomicU64,
    pub alive: AtomicBool,
}

impl WriterStats {
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
    pub fn head_seq(&self) -> u64 {
        self.head_seq.load(Ordering::Acquire)
    }
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// The senders' side: cheap to clone, one per API handler or engine task.
#[derive(Debug, Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Envelope>,
    stats: Arc<WriterStats>,
    events: broadcast::Sender<Arc<Entry>>,
}

impl WriterHandle {
    /// Sends one command and waits for its durable outcome.
    pub async fn submit(&self, actor: Actor, command: Command) -> Result<Committed, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Envelope { actor, command, reply }).await.map_err(|_| CommandError::WriterGone)?;
        rx.await.map_err(|_| CommandError::WriterGone)?
    }

    /// Committed entries from now on; a subscriber that falls `event_buffer` behind is told it
    /// lagged (tokio's `RecvError::Lagged`) and must resume from the ledger.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.events.subscribe()
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Commands waiting for the writer.
    pub fn backlog(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The writer itself, before it is started.
pub struct Writer {
    store: Store,
    rx: mpsc::Receiver<Envelope>,
    clock: SharedClock,
    batch_max: usize,
    stats: Arc<WriterStats>,
    events: broadcast::Sender<Arc<Entry>>,
    head: (u64, String),
    /// The time of the newest entry: entry times never go backwards, even if the clock does,
    /// so a time window of the ledger is one contiguous range of sequences.
    last_time: i64,
    /// The head after the batch being committed, adopted only once the commit is durable.
    pending_head: Option<(u64, String)>,
    /// A commit failed on the disk: the database is closed and opened anew before any write.
    needs_reopen: bool,
    /// How the last write failed, while the store reports a fault.
    failure: String,
    rng: SplitMix64,
    buckets: HashMap<(String, String), Bucket>,
    defaults: Config,
    dags: HashMap<String, Arc<crate::engine::spec::Compiled>>,
}

/// How the writer is sized and seeded; `from_config` reads the file's values.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub queue: usize,
    pub batch_max: usize,
    pub event_buffer: usize,
    pub seed: u64,
    pub defaults: Config,
}

impl WriterOptions {
    pub fn from_config(config: &Config) -> Self {
        let seed = config.queue.seed.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            crate::ids::fill_random(&mut b);
            u64::from_le_bytes(b)
        });
        WriterOptions {
            queue: config.store.writer_queue,
            batch_max: config.store.batch_max,
            event_buffer: config.store.event_buffer,
            seed,
            defaults: config.clone(),
        }
    }

    /// Defaults with a fixed seed, for tests and benchmarks.
    pub fn seeded(seed: u64) -> Self {
        let mut config = Config::default();
        config.queue.seed = Some(seed);
        Self::from_config(&config)
    }
}

/// Creates the writer and its handle. Commands sent before [`Writer::spawn`] wait in the channel
/// and form the first batch, which is what the group-commit test relies on.
pub fn channel(
    store: Store,
    clock: SharedClock,
    opts: WriterOptions,
) -> Result<(WriterHandle, Writer), crate::store::StoreError> {
    let head = read::ledger_head(&store.read()?)?;
    let last_time = read::ledger_after(&store.read()?, head.0.saturating_sub(1), 1)?.first().map_or(0, |e| e.time);
    let (tx, rx) = mpsc::channel(opts.queue);
    let (events, _) = broadcast::channel(opts.event_buffer);
    let stats = Arc::new(WriterStats::default());
    stats.head_seq.store(head.0, Ordering::Release);
    stats.alive.store(true, Ordering::Release);
    let handle = WriterHandle { tx, stats: stats.clone(), events: events.clone() };
    let writer = Writer {
        store,
        rx,
        clock,
        batch_max: opts.batch_max,
        stats,
        events,
        head,
        last_time,
        pending_head: None,
        needs_reopen: false,
        failure: String::new(),
        rng: SplitMix64::new(opts.seed),
        buckets: HashMap::new(),
        defaults: opts.defaults,
        dags: HashMap::new(),
    };
    Ok((handle, writer))
}

impl Writer {
    /// Starts the writer thread. It ends when every handle is dropped and the queue is drained.
    pub fn spawn(self) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new()
            .name("stella-writer".into())
            .spawn(move || self.run())
            .expect("spawn the store writer thread")
    }

    fn run(mut self) {
        // However the thread ends, health must see the writer gone.
        struct Gone(Arc<WriterStats>);
        impl Drop for Gone {
            fn drop(&mut self) {
                self.0.alive.store(false, Ordering::Release);
            }
        }
        let _gone = Gone(self.stats.clone());
        let mut batch = Vec::with_capacity(self.batch_max);
        while let Some(first) = self.next_command() {
            batch.push(first);
            while batch.len() < self.batch_max {
                match self.rx.try_recv() {
                    Ok(env) => batch.push(env),
                    Err(_) => break,
                }
            }
            // redb reports some damage by panicking: the store is marked damaged (no more
            // writes until an operator acts) and the callers get an error, not a dead writer.
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit_batch(&mut batch)));
            if let Err(payload) = caught {
                self.pending_head = None;
                self.forget_caches();
                let answer = match crate::store::schema::store_panic(payload.as_ref()) {
                    Some(detail) => {
                        self.store.set_damage(format!("a commit failed: {detail}"));
                        format!("store damaged: {detail}")
                    }
                    // A bug of stella's while planning: these commands fail, the store is fine.
                    None => {
                        tracing::error!(commands = batch.len(), "planning a batch panicked; it was not committed");
                        "the batch failed inside stella (see the daemon's log); nothing was committed".to_owned()
                    }
                };
                for env in batch.drain(..) {
                    let _ = env.reply.send(Err(CommandError::Storage(answer.clone())));
                }
            }
        }
        self.stats.alive.store(false, Ordering::Release);
    }

    /// The next command; `None` once every handle is gone. While the store cannot write, the
    /// writer also wakes on its own every [`PROBE_INTERVAL`] to try to recover, so it recovers
    /// when space returns even if no command comes.
    fn next_command(&mut self) -> Option<Envelope> {
        loop {
            if self.store.fault().is_none() {
                return self.rx.blocking_recv();
            }
            match self.rx.try_recv() {
                Ok(env) => return Some(env),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    // A panic inside redb while reopening counts as one more failed try.
                    let recovered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.recover()))
                        .unwrap_or_else(|_| {
                            self.needs_reopen = true;
                            false
                        });
                    if !recovered {
                        std::thread::sleep(PROBE_INTERVAL);
                    }
                }
            }
        }
    }

    /// Drops what was planned into memory along with a batch that did not commit: compiled
    /// DAG versions and rate buckets are rebuilt from the store as they are needed.
    fn forget_caches(&mut self) {
        self.dags.clear();
        self.buckets.clear();
    }

    /// After a failed commit: opens the store anew and proves it takes a durable commit again
    /// (a probe written to `meta`). On success the fault is cleared and the head re-read.
    fn recover(&mut self) -> bool {
        // A small commit may still fit in the file's free pages on a full disk: writes resume
        // only once the disk has room again.
        let free = free_bytes(self.store.path());
        if free.is_some_and(|f| f < RESUME_FREE_BYTES) {
            self.store.set_fault(Some(format!(
                "{}; {} bytes free beside the store, writes resume at {RESUME_FREE_BYTES}",
                self.failure,
                free.unwrap_or(0)
            )));
            return false;
        }
        if self.needs_reopen {
            if let Err(e) = self.store.reopen() {
                tracing::warn!(error = %e, "store reopen failed; trying again");
                return false;
            }
            self.needs_reopen = false;
        }
        let probe = self.store.db().map_err(|e| e.to_string()).and_then(|db| {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
            {
                let mut meta = txn.open_table(crate::store::schema::META).map_err(|e| e.to_string())?;
                meta.insert("writer_probe_ms", self.clock.now_ms().max(0) as u64).map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        });
        if let Err(reason) = probe {
            self.needs_reopen = true;
            self.failure = format!("writes fail: {reason}");
            self.store.set_fault(Some(self.failure.clone()));
            return false;
        }
        match self.store.read().and_then(|t| read::ledger_head(&t)) {
            Ok(head) => self.head = head,
            Err(_) => return false,
        }
        self.store.set_fault(None);
        tracing::info!("the store takes writes again");
        true
    }

    fn commit_batch(&mut self, batch: &mut Vec<Envelope>) {
        if let Some(damage) = self.store.damage() {
            let reason = format!(
                "the store takes no writes: {damage}; restore it (or a copy) and restart, then `stella orch db verify`"
            );
            for env in batch.drain(..) {
                let _ = env.reply.send(Err(CommandError::Storage(reason.clone())));
            }
            return;
        }
        if self.store.fault().is_some() && !self.recover() {
            let reason = self.store.fault().unwrap_or_default();
            for env in batch.drain(..) {
                let _ = env.reply.send(Err(CommandError::Storage(reason.clone())));
            }
            return;
        }
        let db = match self.store.db() {
            Ok(db) => db,
            Err(e) => {
                for env in batch.drain(..) {
                    let _ = env.reply.send(Err(CommandError::Storage(e.to_string())));
                }
                return;
            }
        };
        let outcome = db.begin_write().map_err(|e| e.to_string()).and_then(|mut txn| {
            txn.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
            let results = self.apply_batch(&txn, batch)?;
            txn.commit().map_err(|e| e.to_string())?;
            Ok(results)
        });
        let n = batch.len() as u64;
        match outcome {
            Ok(results) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.commands.fetch_add(n, Ordering::Relaxed);
                self.answer(batch.drain(..).zip(results));
            }
            Err(reason) => {
                tracing::error!(%reason, commands = n, "store commit failed; batch not acknowledged");
                self.forget_caches();
                self.pending_head = None;
                // An I/O error poisons redb's handle: the store is closed and opened anew
                // before the next write, and until then it reports the fault — set before the
                // callers hear of the failure, so that health says so when they look.
                let io = reason_is_io(&reason);
                if io {
                    self.needs_reopen = true;
                    self.failure = format!("the last commit failed: {reason}");
                    self.store.set_fault(Some(self.failure.clone()));
                }
                for env in batch.drain(..) {
                    let _ = env.reply.send(Err(CommandError::Storage(reason.clone())));
                }
                if io {
                    drop(db);
                    self.recover();
                } else if let Ok(head) = self.store.read().and_then(|t| read::ledger_head(&t)) {
                    // The transaction was rolled back: the durable head is what the store says.
                    self.head = head;
                }
            }
        }
    }

    /// Plans every command and appends the entries of those that pass. An `Err` here is a
    /// storage failure or a projection bug: the whole transaction is dropped.
    fn apply_batch(
        &mut self,
        txn: &WriteTransaction,
        batch: &[Envelope],
    ) -> Result<Vec<Result<Committed, CommandError>>, String> {
        let now = self.clock.now_ms().max(self.last_time);
        self.last_time = now;
        let (mut seq, mut prev) = self.head.clone();
        let mut results = Vec::with_capacity(batch.len());
        let mut ledger = txn.open_table(LEDGER).map_err(|e| e.to_string())?;
        for env in batch {
            let mut ctx = PlanCtx {
                now,
                rng: &mut self.rng,
                buckets: &mut self.buckets,
                defaults: &self.defaults,
                dags: &mut self.dags,
                next_job_seq: None,
                next_run_seq: None,
            };
            let effects = match env.command.plan(txn, &mut ctx) {
                Ok(effects) => effects,
                Err(e) => {
                    results.push(Err(e));
                    continue;
                }
            };
            let mut entries = Vec::with_capacity(effects.drafts.len());
            for draft in effects.drafts {
                seq += 1;
                let entry = Entry::seal(draft, seq, now, &env.actor.name, &prev);
                ledger.insert(seq, entry.to_stored().as_slice()).map_err(|e| e.to_string())?;
                projection::apply(txn, &entry).map_err(|e| e.to_string())?;
                prev.clone_from(&entry.hash);
                entries.push(entry);
            }
            apply_live(txn, &effects.live, now).map_err(|e| e.to_string())?;
            results.push(Ok(Committed { entries, note: effects.note }));
        }
        drop(ledger);
        self.pending_head = Some((seq, prev));
        Ok(results)
    }
}

/// Free bytes on the store's filesystem that a writer stopped by a failed commit waits for.
const RESUME_FREE_BYTES: u64 = 8 * 1024 * 1024;

/// Free bytes (for an unprivileged writer) on the filesystem holding `path`.
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    let dir = path.parent()?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass for a valid C string; nothing else is touched.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// How often a writer that cannot write tries to recover.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Whether a failed batch failed on the disk (rather than on a plan or projection bug).
fn reason_is_io(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    ["i/o error", "io error", "no space", "os error", "previous i/o error", "quota"].iter().any(|k| r.contains(k))
}

/// Applies liveness writes: unledgered, but in the same transaction as the batch.
fn apply_live(txn: &WriteTransaction, live: &[LiveWrite], now: i64) -> Result<(), redb::Error> {
    for write in live {
        match write {
            LiveWrite::LeaseExpiry { job, expires_ms } => {
                txn.open_table(LIVE_LEASES)?.insert(job.as_str(), *expires_ms as u64)?;
            }
            LiveWrite::Timer { due_ms, key } => {
                txn.open_table(DUE)?.insert((*due_ms as u64, key.as_str()), 0)?;
            }
            LiveWrite::DropTimer { due_ms, key } => {
                txn.open_table(DUE)?.remove((*due_ms as u64, key.as_str()))?;
            }
            LiveWrite::MetricSnapshot { text, retain_ms } => {
                let mut t = txn.open_table(METRIC_SNAPSHOTS)?;
                t.insert(now as u64, text.as_bytes())?;
                let cutoff = now.saturating_sub(*retain_ms).max(0) as u64;
                t.retain_in(..cutoff, |_, _| false)?;
            }
            LiveWrite::Secret { name, value } => {
                // Sealed before it is stored: the store file never holds a value in the clear.
                let key = crate::secrets::key().ok_or_else(|| {
                    redb::Error::Io(std::io::Error::other("no secrets key is loaded: a secret cannot be stored"))
                })?;
                txn.open_table(SECRETS)?.insert(name.as_str(), key.seal(name, value).as_slice())?;
            }
            LiveWrite::WorkerSeen { id, tenant, types, env } => {
                let mut table = txn.open_table(WORKERS)?;
                let first_seen_ms =
                    rw::get::<WorkerRecord>(&table, "workers", id).ok().flatten().map_or(now, |w| w.first_seen_ms);
                let rec = WorkerRecord {
                    id: id.clone(),
                    tenant: tenant.clone(),
                    types: types.clone(),
                    env: env.clone(),
                    first_seen_ms,
                    last_seen_ms: now,
                };
                table.insert(id.as_str(), rec.to_json_bytes().as_slice())?;
            }
        }
    }
    Ok(())
}

impl Writer {
    fn answer(&mut self, done: impl Iterator<Item = (Envelope, Result<Committed, CommandError>)>) {
        if let Some(head) = self.pending_head.take() {
            self.head = head;
        }
        let mut published = 0u64;
        for (env, result) in done {
            if let Ok(committed) = &result {
                for entry in &committed.entries {
                    let _ = self.events.send(Arc::new(entry.clone()));
                    published += 1;
                }
            }
            let _ = env.reply.send(result);
        }
        self.stats.entries.fetch_add(published, Ordering::Relaxed);
        self.stats.head_seq.store(self.head.0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::schema::read;
    use crate::store::verify;

    fn create(id: &str) -> Command {
        Command::CreateToken {
            id: id.to_owned(),
            tenant: "default".to_owned(),
            scopes: vec!["orchestrator:read".to_owned()],
            sha256: "00".repeat(32),
            expires_ms: None,
            description: None,
        }
    }

    /// Submits every command, waits until all of them sit in the writer's channel, and only
    /// then starts the writer, so batch boundaries are deterministic.
    fn run_queued(
        commands: &[Command],
        batch_max: usize,
    ) -> (Store, WriterHandle, Vec<Result<Committed, CommandError>>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let mut opts = WriterOptions::seeded(7);
        opts.batch_max = batch_max;
        let (handle, writer) = channel(store.clone(), Arc::new(ManualClock::new(1_000)), opts).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let results = rt.block_on(async {
            let tasks: Vec<_> = commands
                .iter()
                .cloned()
                .map(|c| {
                    let h = handle.clone();
                    tokio::spawn(async move { h.submit(Actor { name: "test".into() }, c).await })
                })
                .collect();
            while handle.backlog() < commands.len() {
                tokio::task::yield_now().await;
            }
            let _thread = writer.spawn();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        (store, handle, results, dir)
    }

    #[test]
    fn waiting_commands_share_one_commit_and_failures_stay_their_own() {
        // 200 commands: creates, a duplicate of an earlier create in the same batch, and revokes
        // of tokens that do not exist. One commit; each caller its own answer.
        let mut commands: Vec<Command> = (0..190).map(|i| create(&format!("tok_{i:012}"))).collect();
        commands.insert(50, create("tok_000000000007"));
        for i in 0..9 {
            commands.insert(i * 20, Command::RevokeToken { id: format!("tok_missing{i}"), tenant: None, reason: None });
        }
        let (store, handle, results, _dir) = run_queued(&commands, 1024);
        assert_eq!(handle.stats().commits(), 1, "all waiting commands commit together");
        let ok = results.iter().filter(|r| r.is_ok()).count();
        let not_found = results.iter().filter(|r| matches!(r, Err(CommandError::NotFound { .. }))).count();
        let conflicts = results.iter().filter(|r| matches!(r, Err(CommandError::Conflict(_)))).count();
        assert_eq!((ok, not_found, conflicts), (190, 9, 1));
        for (command, result) in commands.iter().zip(&results) {
            if let (Command::CreateToken { id, .. }, Ok(c)) = (command, result) {
                assert_eq!(c.entries[0].subjects, vec![id.clone()], "each caller gets its own entry");
            }
        }
        let txn = store.read().unwrap();
        assert_eq!(read::tokens(&txn, None, 1_000).unwrap().len(), 190);
        assert_eq!(read::ledger_len(&txn).unwrap(), 190);
        assert!(verify::verify(&txn).unwrap().ok);
    }

    #[test]
    fn batches_are_bounded_by_batch_max() {
        let commands: Vec<Command> = (0..100).map(|i| create(&format!("tok_{i:012}"))).collect();
        let (_store, handle, results, _dir) = run_queued(&commands, 10);
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(handle.stats().commits(), 10);
    }

    #[test]
    fn subscribers_see_entries_only_after_commit_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let (handle, writer) = channel(store.clone(), Arc::new(ManualClock::new(0)), WriterOptions::seeded(7)).unwrap();
        let mut events = handle.subscribe();
        let _thread = writer.spawn();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            for i in 0..5 {
                handle.submit(Actor { name: "t".into() }, create(&format!("tok_{i:012}"))).await.unwrap();
            }
            for seq in 1..=5u64 {
                let entry = events.recv().await.unwrap();
                assert_eq!(entry.seq, seq);
                // Durable before published: a fresh snapshot already holds it.
                let txn = store.read().unwrap();
                assert!(read::ledger_after(&txn, seq - 1, 1).unwrap()[0].seq == seq);
            }
        });
    }
}
