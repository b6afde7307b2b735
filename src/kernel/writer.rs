//! The single writer (DESIGN.md invariant 1): one thread owns redb's write side.
//!
//! Commands arrive on a bounded channel. The writer takes every command that is waiting (up to
//! `batch_max`), plans and applies them in one write transaction, appends their ledger entries,
//! makes the batch durable once — its entries appended to the write-ahead log and synced, then
//! the transaction committed without a sync; or, at a checkpoint, the transaction committed
//! with `Durability::Immediate` (see [`crate::kernel::wal`]) — and only then answers each
//! caller and publishes the committed entries (invariant 3). A command whose plan fails
//! changes nothing and its neighbours still commit. A failed commit fails the whole batch and
//! acknowledges nothing.

use crate::clock::SharedClock;
use crate::config::Config;
use crate::kernel::ledger::Entry;
use crate::kernel::plan::{Actor, CommandError, Committed, Derived, Machine, PlanCtx};
use crate::kernel::publish::{DueWatch, Publisher};
use crate::kernel::rng::SplitMix64;
use crate::kernel::store::{LEDGER, Store, StoreError, read};
use crate::kernel::wal::{self, RecordBuf, Wal};
use redb::{Durability, WriteTransaction};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc, oneshot};

struct Envelope<M: Machine> {
    actor: Actor,
    command: M::Command,
    reply: oneshot::Sender<Result<Committed, CommandError>>,
    /// A command planned right after this one, in the same batch, only if this one passed.
    then: Option<Then<M>>,
}

struct Then<M: Machine> {
    command: M::Command,
    reply: oneshot::Sender<Result<Committed, CommandError>>,
}

/// Counters the status endpoint, the tests and the benchmarks read.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub commits: AtomicU64,
    /// Commits made durable (`fdatasync`ed: their log record, or redb at a checkpoint) before
    /// their callers heard: those that appended entries or made a liveness write the caller is
    /// told holds. A batch of other liveness writes only (a lease that found nothing, a worker
    /// seen, a metric snapshot) is committed without a sync and made durable by the next
    /// checkpoint.
    pub durable_commits: AtomicU64,
    /// Of the durable commits, those made durable by redb (`Durability::Immediate`):
    /// checkpoints of the write-ahead log. The others synced only their log record.
    pub checkpoints: AtomicU64,
    pub commands: AtomicU64,
    pub entries: AtomicU64,
    pub head_seq: AtomicU64,
    pub alive: AtomicBool,
}

impl WriterStats {
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }
    pub fn durable_commits(&self) -> u64 {
        self.durable_commits.load(Ordering::Relaxed)
    }
    pub fn checkpoints(&self) -> u64 {
        self.checkpoints.load(Ordering::Relaxed)
    }
    pub fn head_seq(&self) -> u64 {
        self.head_seq.load(Ordering::Acquire)
    }
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// The senders' side: cheap to clone, one per API handler or engine task.
pub struct WriterHandle<M: Machine> {
    tx: mpsc::Sender<Envelope<M>>,
    stats: Arc<WriterStats>,
    publish: Arc<Publisher>,
}

impl<M: Machine> Clone for WriterHandle<M> {
    fn clone(&self) -> Self {
        WriterHandle { tx: self.tx.clone(), stats: self.stats.clone(), publish: self.publish.clone() }
    }
}

impl<M: Machine> std::fmt::Debug for WriterHandle<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle").field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl<M: Machine> WriterHandle<M> {
    /// Sends one command and waits for its durable outcome.
    pub async fn submit(&self, actor: Actor, command: M::Command) -> Result<Committed, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Envelope { actor, command, reply, then: None }).await.map_err(|_| CommandError::WriterGone)?;
        rx.await.map_err(|_| CommandError::WriterGone)?
    }

    /// Sends `first` and, to be planned right after it in the same batch (one sync for both)
    /// and only if it passed, `then`. The outcome of `first`, and of `then` once `first`
    /// passed: a worker completes a job and leases its next in one round trip and one commit,
    /// and never holds a lease taken beside a completion that was refused.
    pub async fn submit_then(
        &self,
        actor: Actor,
        first: M::Command,
        then: M::Command,
    ) -> Result<(Committed, Result<Committed, CommandError>), CommandError> {
        let (reply, rx) = oneshot::channel();
        let (then_reply, then_rx) = oneshot::channel();
        let then = Some(Then { command: then, reply: then_reply });
        self.tx.send(Envelope { actor, command: first, reply, then }).await.map_err(|_| CommandError::WriterGone)?;
        let first = rx.await.map_err(|_| CommandError::WriterGone)??;
        Ok((first, then_rx.await.map_err(|_| CommandError::WriterGone)?))
    }

    /// Committed entries from now on; a subscriber that falls `event_buffer` behind is told it
    /// lagged (tokio's `RecvError::Lagged`) and must resume from the ledger.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.publish.subscribe()
    }

    /// The committed entries `wants` takes (run on the writer's thread: keep it cheap), with
    /// the same lag rule: a task that waits for a few kinds is not woken for every entry.
    pub fn subscribe_where(
        &self,
        wants: impl Fn(&Entry) -> bool + Send + std::marker::Sync + 'static,
    ) -> broadcast::Receiver<Arc<Entry>> {
        self.publish.subscribe_where(wants)
    }

    /// Where the timer task learns that an earlier deadline was armed.
    pub fn due(&self) -> &DueWatch {
        self.publish.due()
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
pub struct Writer<M: Machine> {
    store: Store,
    rx: mpsc::Receiver<Envelope<M>>,
    clock: SharedClock,
    batch_max: usize,
    stats: Arc<WriterStats>,
    publish: Arc<Publisher>,
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
    defaults: Config,
    /// What the machine's planners keep between batches (compiled DAGs, rate buckets).
    derived: Derived,
    /// The write-ahead log, and the record of the batch being committed.
    wal: Wal,
    record: RecordBuf,
}

/// How a batch is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sync {
    /// Nothing to sync: liveness only, made durable by a later batch.
    Lazy,
    /// Its record appended to the write-ahead log and synced; redb commits without a sync.
    Logged,
    /// redb commits durably, and the log starts a new epoch.
    Checkpoint,
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
pub fn channel<M: Machine>(
    store: Store,
    clock: SharedClock,
    opts: WriterOptions,
) -> Result<(WriterHandle<M>, Writer<M>), StoreError> {
    // A checkpoint first: the log is then written from its start in a new epoch, which must
    // never overwrite records not yet durable in redb (a writer made earlier on this store).
    let epoch = wal::replay::<M>(&*store.db()?, store.path())?.epoch;
    let wal = Wal::open(store.path(), epoch).map_err(|e| StoreError::Unavailable {
        path: store.path().to_owned(),
        reason: format!("its write-ahead log {} cannot be opened: {e}", wal::path_for(store.path()).display()),
    })?;
    let head = read::ledger_head(&store.read()?)?;
    let last_time = read::ledger_after(&store.read()?, head.0.saturating_sub(1), 1)?.first().map_or(0, |e| e.time);
    let (tx, rx) = mpsc::channel(opts.queue);
    let publish = Arc::new(Publisher::new(opts.event_buffer));
    let stats = Arc::new(WriterStats::default());
    stats.head_seq.store(head.0, Ordering::Release);
    stats.alive.store(true, Ordering::Release);
    let handle = WriterHandle { tx, stats: stats.clone(), publish: publish.clone() };
    let writer = Writer {
        store,
        rx,
        clock,
        batch_max: opts.batch_max,
        stats,
        publish,
        head,
        last_time,
        pending_head: None,
        needs_reopen: false,
        failure: String::new(),
        rng: SplitMix64::new(opts.seed),
        defaults: opts.defaults,
        derived: Derived::default(),
        wal,
        record: RecordBuf::default(),
    };
    Ok((handle, writer))
}

impl<M: Machine> Writer<M> {
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
        // Times the wait for a command while the log holds records to checkpoint.
        let timer =
            tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a timer for the store writer");
        let mut batch = Vec::with_capacity(self.batch_max);
        while let Some(first) = self.next_command(&timer) {
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
                self.unwrite_log();
                let answer = match crate::kernel::store::store_panic(payload.as_ref()) {
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
    ///
    /// While the log holds records not yet checkpointed, the wait for a command is bounded:
    /// when [`wal::CHECKPOINT_INTERVAL`] has passed since the first of them, an idle writer
    /// checkpoints on its own, so redb is never more than that behind what was acknowledged.
    fn next_command(&mut self, timer: &tokio::runtime::Runtime) -> Option<Envelope<M>> {
        loop {
            if self.store.fault().is_none() {
                let Some(wait) = self.wal.checkpoint_wait() else { return self.rx.blocking_recv() };
                // A command already waiting needs no timer.
                match self.rx.try_recv() {
                    Ok(env) => return Some(env),
                    Err(mpsc::error::TryRecvError::Disconnected) => return None,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
                match timer.block_on(async { tokio::time::timeout(wait, self.rx.recv()).await }) {
                    Ok(env) => return env,
                    Err(_) => {
                        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.idle_checkpoint()));
                        if let Err(payload) = done {
                            match crate::kernel::store::store_panic(payload.as_ref()) {
                                Some(detail) => self.store.set_damage(format!("a checkpoint failed: {detail}")),
                                None => std::panic::resume_unwind(payload),
                            }
                        }
                        continue;
                    }
                }
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

    /// A checkpoint with no batch: the log's records, acknowledged a while ago, become durable
    /// in redb and the log starts its next epoch. On a failure the next try waits another
    /// interval; a failure on the disk faults the store as a failed commit does.
    fn idle_checkpoint(&mut self) {
        if self.store.damage().is_some() {
            self.wal.postpone();
            return;
        }
        let epoch = self.wal.epoch() + 1;
        let done = self.store.db().map_err(|e| e.to_string()).and_then(|db| {
            let mut txn = db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
            wal::start_epoch(&txn, epoch).map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())
        });
        match done {
            Ok(()) => {
                self.wal.checkpointed(epoch);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.durable_commits.fetch_add(1, Ordering::Relaxed);
                self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
            }
            Err(reason) => {
                tracing::error!(%reason, "a checkpoint of the write-ahead log failed; the log keeps its records");
                self.wal.postpone();
                if reason_is_io(&reason) {
                    self.fault(format!("a checkpoint failed: {reason}"));
                }
            }
        }
    }

    /// The disk failed a write: the store reports `failure` and takes no writes until it has
    /// been closed, opened anew and has taken a probe commit ([`Self::recover`]).
    fn fault(&mut self, failure: String) {
        self.needs_reopen = true;
        self.failure = failure;
        self.store.set_fault(Some(self.failure.clone()));
    }

    /// Drops what was planned into memory along with a batch that did not commit: compiled
    /// DAG versions and rate buckets are rebuilt from the store as they are needed.
    fn forget_caches(&mut self) {
        self.derived.clear();
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
        // A record whose batch failed must be gone from the log before anything replays it.
        if let Err(e) = self.wal.unwrite() {
            self.failure = format!("writes fail: the write-ahead log {}: {e}", self.wal.path().display());
            self.store.set_fault(Some(self.failure.clone()));
            return false;
        }
        // The probe is a checkpoint: it replays what the log holds past redb's durable head
        // (a reopened handle lost the commits made without a sync) and proves the store takes
        // a durable commit again. A reopened store is shown to readers only once replayed, so
        // that none of them sees acknowledged entries missing.
        let path = self.store.path().to_owned();
        let probe = if self.needs_reopen {
            let replayed = self.store.reopen_with(|db| wal::replay::<M>(db, &path));
            if replayed.is_ok() {
                self.needs_reopen = false;
            }
            replayed.map_err(|e| e.to_string())
        } else {
            self.store.db().and_then(|db| wal::replay::<M>(&db, &path)).map_err(|e| e.to_string())
        };
        match probe {
            Ok(replayed) => self.wal.checkpointed(replayed.epoch),
            Err(reason) => {
                self.fault(format!("writes fail: {reason}"));
                return false;
            }
        }
        match self.store.read().and_then(|t| read::ledger_head(&t)) {
            Ok(head) => self.head = head,
            Err(_) => return false,
        }
        // The replay may have armed deadlines the timer task has not seen.
        let earliest = crate::kernel::due::earliest_committed(&self.store).map(|(due, _)| due);
        self.publish.due().committed(earliest);
        self.store.set_fault(None);
        tracing::info!("the store takes writes again");
        true
    }

    fn commit_batch(&mut self, batch: &mut Vec<Envelope<M>>) {
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
            let (results, sync) = self.apply_batch(&txn, batch)?;
            // History (and a lease extended) is acknowledged only once it is on disk; other
            // liveness need not wait.
            match sync {
                Sync::Lazy => txn.set_durability(Durability::None).map_err(|e| e.to_string())?,
                Sync::Logged => {
                    let log = self.wal.path().display().to_string();
                    self.wal.append(&self.record).map_err(|e| format!("the write-ahead log {log}: {e}"))?;
                    txn.set_durability(Durability::None).map_err(|e| e.to_string())?;
                }
                Sync::Checkpoint => {
                    txn.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
                    wal::start_epoch(&txn, self.wal.epoch() + 1).map_err(|e| e.to_string())?;
                }
            }
            let earliest =
                crate::kernel::due::earliest(&txn.open_table(crate::kernel::due::DUE).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?
                    .map(|(due, _)| due);
            txn.commit().map_err(|e| e.to_string())?;
            match sync {
                Sync::Logged => self.wal.committed(),
                Sync::Checkpoint => self.wal.checkpointed(self.wal.epoch() + 1),
                Sync::Lazy => {}
            }
            Ok((results, sync, earliest))
        });
        let n = batch.len() as u64;
        match outcome {
            Ok((results, sync, earliest)) => {
                self.publish.due().committed(earliest);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.durable_commits.fetch_add(u64::from(sync != Sync::Lazy), Ordering::Relaxed);
                self.stats.checkpoints.fetch_add(u64::from(sync == Sync::Checkpoint), Ordering::Relaxed);
                self.stats.commands.fetch_add(n, Ordering::Relaxed);
                self.answer(batch.drain(..).zip(results));
            }
            Err(reason) => {
                tracing::error!(%reason, commands = n, "store commit failed; batch not acknowledged");
                self.forget_caches();
                self.pending_head = None;
                self.unwrite_log();
                // An I/O error poisons redb's handle: the store is closed and opened anew
                // before the next write, and until then it reports the fault — set before the
                // callers hear of the failure, so that health says so when they look.
                let io = reason_is_io(&reason);
                if io {
                    self.fault(format!("the last commit failed: {reason}"));
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

    /// Plans every command and appends the entries of those that pass (and of a command's
    /// `then`, planned right after it once it passed). An `Err` here is a storage failure or a
    /// projection bug: the whole transaction is dropped.
    #[allow(clippy::type_complexity)]
    fn apply_batch(
        &mut self,
        txn: &WriteTransaction,
        batch: &[Envelope<M>],
    ) -> Result<(Vec<(Result<Committed, CommandError>, Option<Result<Committed, CommandError>>)>, Sync), String> {
        let now = self.clock.now_ms().max(self.last_time);
        self.last_time = now;
        let mut head = self.head.clone();
        let mut results = Vec::with_capacity(batch.len());
        let mut live_durable = false;
        self.record.clear();
        let mut ledger = txn.open_table(LEDGER).map_err(|e| e.to_string())?;
        for env in batch {
            let first = self.plan_one(txn, &mut ledger, &env.actor, &env.command, now, &mut head, &mut live_durable)?;
            let then = match (&first, &env.then) {
                (Ok(_), Some(then)) => Some(self.plan_one(
                    txn,
                    &mut ledger,
                    &env.actor,
                    &then.command,
                    now,
                    &mut head,
                    &mut live_durable,
                )?),
                _ => None,
            };
            results.push((first, then));
        }
        drop(ledger);
        self.pending_head = Some(head);
        // A lease extended is not in the ledger, so not in the log: its batch is a checkpoint.
        let sync = if live_durable || (!self.record.is_empty() && self.wal.checkpoint_due(&self.record)) {
            Sync::Checkpoint
        } else if self.record.is_empty() {
            Sync::Lazy
        } else {
            Sync::Logged
        };
        Ok((results, sync))
    }

    /// Plans one command against the batch so far and, if it passes, appends its entries after
    /// `head` and applies them (and its liveness writes) to the transaction.
    #[allow(clippy::too_many_arguments)]
    fn plan_one(
        &mut self,
        txn: &WriteTransaction,
        ledger: &mut redb::Table<u64, &[u8]>,
        actor: &Actor,
        command: &M::Command,
        now: i64,
        head: &mut (u64, String),
        live_durable: &mut bool,
    ) -> Result<Result<Committed, CommandError>, String> {
        let mut ctx = PlanCtx {
            now,
            rng: &mut self.rng,
            defaults: &self.defaults,
            derived: &mut self.derived,
            scratch: Derived::default(),
        };
        let effects = match M::plan(command, txn, &mut ctx) {
            Ok(effects) => effects,
            Err(e) => return Ok(Err(e)),
        };
        let (seq, prev) = head;
        let mut entries = Vec::with_capacity(effects.drafts.len());
        // The command's entries share the tables the projection opens; closed before the
        // next plan reads them.
        let tx = crate::kernel::tx::Tx::store(txn);
        for draft in effects.drafts {
            *seq += 1;
            let (entry, stored) = Entry::seal_stored(draft, *seq, now, &actor.name, prev);
            ledger.insert(*seq, stored.as_slice()).map_err(|e| e.to_string())?;
            self.record.push(*seq, &stored);
            M::apply(&tx, &entry).map_err(|e| e.to_string())?;
            prev.clone_from(&entry.hash);
            entries.push(entry);
        }
        drop(tx);
        *live_durable |= effects.live.iter().any(M::live_is_durable);
        M::apply_live(txn, &effects.live, now).map_err(|e| e.to_string())?;
        Ok(Ok(Committed { entries, note: effects.note }))
    }

    /// After a batch failed: its log record, if it was appended, is zeroed so that no replay
    /// finds it. If even that fails, the store takes no writes until [`Self::recover`] has.
    fn unwrite_log(&mut self) {
        if !self.wal.has_unwritten() {
            return;
        }
        if let Err(e) = self.wal.unwrite() {
            self.fault(format!("the write-ahead log {}: {e}", self.wal.path().display()));
        }
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

impl<M: Machine> Writer<M> {
    #[allow(clippy::type_complexity)]
    fn answer(
        &mut self,
        done: impl Iterator<
            Item = (Envelope<M>, (Result<Committed, CommandError>, Option<Result<Committed, CommandError>>)),
        >,
    ) {
        if let Some(head) = self.pending_head.take() {
            self.head = head;
        }
        let done: Vec<_> = done.collect();
        let entries: Vec<Arc<Entry>> = done
            .iter()
            .flat_map(|(_, (first, then))| [Some(first), then.as_ref()])
            .filter_map(|r| r?.as_ref().ok())
            .flat_map(|c| c.entries.iter().map(|e| Arc::new(e.clone())))
            .collect();
        self.publish.entries(&entries);
        for (env, (first, then)) in done {
            let _ = env.reply.send(first);
            if let (Some(t), Some(result)) = (env.then, then) {
                let _ = t.reply.send(result);
            }
        }
        self.stats.entries.fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.stats.head_seq.store(self.head.0, Ordering::Release);
    }
}
