//! Opening the store file: table definitions, the schema version and its refusal of a newer
//! schema, and read helpers over MVCC snapshots.
//!
//! A store written by a newer stella is refused before anything writes to the file: the version
//! is read through redb's read-only open, which never modifies the file.

use crate::ledger::Entry;
use crate::store::records::{
    DagRecord, JobRecord, LockRecord, QueueRecord, Record, RunRecord, StepRecord, TokenRecord, WorkerRecord,
};
use redb::{
    Database, DatabaseError, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The version of the tables' layout this build reads and writes.
/// 2: steps keep an attempt history, jobs count interruptions, a disabled active version
/// pauses its schedules, a succeeded step clears its error — the projection of the same
/// ledger changed, so a store of version 1 has its projections rebuilt from the ledger once.
pub const SCHEMA_VERSION: u64 = 2;

/// Structural metadata: `schema_version`. Not a projection; never ledgered.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The ledger: sequence → canonical entry JSON. Append-only.
pub const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");
/// Projection: appliance identity (`id`).
pub const APPLIANCE: TableDefinition<&str, &[u8]> = TableDefinition::new("appliance");
/// Projection: API tokens by id.
pub const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

/// Projection: jobs by id (`job-000000000001`).
pub const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// Projection index: (job type, priority-then-age order) → job id, for dispatchable jobs.
pub const READY: TableDefinition<(&str, u64), &str> = TableDefinition::new("ready");
/// Projection: dead-letter queue, job id → time of death (decimal ms).
pub const DLQ: TableDefinition<&str, &[u8]> = TableDefinition::new("dlq");
/// Projection: per-type queue counters, pause and budgets.
pub const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
/// Projection: locks by resource key.
pub const LOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("locks");
/// Projection index: lock id (`lock-1`) → resource key.
pub const LOCK_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("lock_ids");
/// Projection: resource versions bumped by lock-guarded updates (u64 big-endian).
pub const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");
/// Projection: DAGs by name, with their versions.
pub const DAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("dags");
/// Projection: DAG spec texts by `name@version`.
pub const DAG_SPECS: TableDefinition<&str, &[u8]> = TableDefinition::new("dag_specs");
/// Projection: installed plugins by name → `{digest, entrypoint, unsigned}` JSON.
pub const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
/// Projection: cron schedules, `dag|index` → schedule JSON (next fire, paused, last run).
pub const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
/// Projection: installed bundles by name → version, kind, digest, signer.
pub const BUNDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("bundles");
/// Projection: runs by id (`run-1`).
pub const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
/// Projection: steps by `run/step`.
pub const STEPS: TableDefinition<&str, &[u8]> = TableDefinition::new("steps");
/// Projection: run idempotency, `tenant/runToken` → run id.
pub const RUN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("run_tokens");
/// Projection: steps waiting for a `maxParallelSteps` slot, `run/seq` → step name, FIFO.
pub const RUN_WAITING: TableDefinition<&str, &[u8]> = TableDefinition::new("run_waiting");
/// Projection: runtime configuration set by operators.
pub const RUNTIME_CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("runtime_config");
/// Projection: monotonic counters (`fence`, `job_seq`, `lock_seq`), u64 big-endian.
pub const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");
/// Projection: enqueue idempotency, `tenant/key` → job id.
pub const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// Due-time index of timers: (due ms, timer key) → 0. Written by the projection for ledgered
/// deadlines and re-armed by heartbeats, so `db verify` does not compare it.
pub const DUE: TableDefinition<(u64, &str), u8> = TableDefinition::new("due");
/// Secret values by name. Never ledgered (the ledger is exported): only `secret.set` with the
/// name is; `db verify` does not compare this table.
pub const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Liveness (unledgered): job id → lease expiry as extended by heartbeats.
pub const LIVE_LEASES: TableDefinition<&str, u64> = TableDefinition::new("live_leases");
/// Liveness (unledgered): worker id → last seen, types, env.
pub const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("workers");
/// The store's page cache unless `store.cache_bytes` says otherwise.
pub const CACHE_BYTES_DEFAULT: usize = 32 * 1024 * 1024;

/// Telemetry (unledgered): snapshot time ms → the Prometheus text of `/metrics` at that time,
/// so an export covers a past window; pruned past `telemetry.metrics_retention_ms`.
pub const METRIC_SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("metric_snapshots");

/// Every projection table keyed by name, in the order `db verify` compares them.
pub const PROJECTIONS: &[TableDefinition<&str, &[u8]>] = &[
    APPLIANCE,
    TOKENS,
    JOBS,
    DLQ,
    QUEUES,
    LOCKS,
    LOCK_IDS,
    RESOURCES,
    RUNTIME_CONFIG,
    COUNTERS,
    IDEMPOTENCY,
    DAGS,
    DAG_SPECS,
    RUNS,
    STEPS,
    RUN_TOKENS,
    RUN_WAITING,
    BUNDLES,
    PLUGINS,
    SCHEDULES,
];

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "open store {path}: it has schema version {found}, newer than this stella supports ({supported}); \
         upgrade stella, the file was not changed"
    )]
    NewerSchema { path: PathBuf, found: u64, supported: u64 },
    #[error("open store {path}: it is in use by another process (is the daemon running? ask it with the API instead)")]
    Locked { path: PathBuf },
    #[error("open store {path}: no store there")]
    Missing { path: PathBuf },
    #[error(
        "store {path} was not closed cleanly (the daemon crashed or was killed): it needs the repair that redb \
         runs when the store is opened for writing, and a read-only check cannot run it. Start the daemon \
         (`stella serve`), which repairs it at start, or repair it offline with `stella orch db repair`, then \
         run `stella orch db verify` again"
    )]
    NeedsRepair { path: PathBuf },
    #[error(
        "store {path}: {source} (check it with `stella orch db verify`; if it fails, restore the store from a backup)"
    )]
    Redb { path: PathBuf, source: redb::Error },
    #[error("store record {table}/{key}: {reason}")]
    Corrupt { table: &'static str, key: String, reason: String },
    #[error("store {path} cannot be used now: {reason}")]
    Unavailable { path: PathBuf, reason: String },
    #[error(
        "store {path} is damaged: {detail}. Do not serve it as it is: stop the daemon, keep a copy of the \
         file for analysis, and restore the store from a backup (or a copy) taken before the damage"
    )]
    Damaged { path: PathBuf, detail: String },
}

/// Runs `f`, turning a panic inside redb into [`StoreError::Damaged`]: redb reports some kinds
/// of damage (a zeroed or changed page) by panicking, which must reach the operator as a
/// message naming the file and what to do, never as a crash or a dropped connection. A panic
/// elsewhere (a bug of stella's) is not called damage: it goes on as a panic.
pub fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => match store_panic(payload.as_ref()) {
            Some(detail) => Err(StoreError::Damaged { path: path.to_owned(), detail }),
            None => std::panic::resume_unwind(payload),
        },
    }
}

/// What a caught panic said, with where redb raised it — if redb raised it (the hook noted
/// the place); `None` for any other panic.
pub fn store_panic(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    let place = last_store_panic()?;
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a failure without a message".into());
    Some(format!("reading it failed inside redb ({text} at {place})"))
}

static LAST_STORE_PANIC: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// A panic hook that keeps panics raised inside redb quiet (they are reported as a damaged
/// store by [`guard`] and its callers) and leaves every other panic to `default`.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| match info.location() {
        Some(l) if l.file().contains("/redb-") => {
            let place = format!("{}:{}", l.file().rsplit("/src/").next().unwrap_or(l.file()), l.line());
            tracing::error!(place = %place, "redb failed reading the store (damage?)");
            *LAST_STORE_PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(place);
        }
        _ => default(info),
    }));
}

fn last_store_panic() -> Option<String> {
    LAST_STORE_PANIC.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// An open store: shared by the writer (which alone writes) and every reader. After a failed
/// commit the writer closes the database and opens it again ([`Store::reopen`]); meanwhile the
/// store is unavailable and [`Store::fault`] says why.
#[derive(Debug, Clone)]
pub struct Store {
    shared: Arc<Shared>,
    path: PathBuf,
}

#[derive(Debug)]
struct Shared {
    db: std::sync::RwLock<Option<Arc<Database>>>,
    cache_bytes: usize,
    /// Why the store cannot take writes now (a failed commit, until a reopen succeeds).
    fault: std::sync::Mutex<Option<String>>,
    /// Why the store must take no writes at all until an operator acts.
    damage: std::sync::Mutex<Option<String>>,
    /// The whole chain is being checked (after an unclean stop): not ready meanwhile.
    checking: std::sync::atomic::AtomicBool,
}

fn redb_err(path: &Path) -> impl Fn(redb::Error) -> StoreError + '_ {
    move |source| StoreError::Redb { path: path.to_owned(), source }
}

impl Store {
    /// Opens (creating if absent) the store at `path` for reading and writing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, CACHE_BYTES_DEFAULT)
    }

    /// Opens with a page cache of at most `cache_bytes` (redb's default is 1 GiB).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        if path.exists() {
            refuse_newer_schema(path)?;
        } else if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| redb_err(path)(redb::Error::Io(e)))?;
        }
        let db = open_database(path, cache_bytes)?;
        let shared = Shared {
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            cache_bytes,
            fault: std::sync::Mutex::new(None),
            damage: std::sync::Mutex::new(None),
            checking: std::sync::atomic::AtomicBool::new(false),
        };
        let store = Store { shared: Arc::new(shared), path: path.to_owned() };
        store.init_schema()?;
        Ok(store)
    }

    fn init_schema(&self) -> Result<(), StoreError> {
        let err = redb_err(&self.path);
        let txn = self.db()?.begin_write().map_err(|e| err(e.into()))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| err(e.into()))?;
            let found = meta.get("schema_version").map_err(|e| err(e.into()))?.map(|v| v.value());
            match found {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::NewerSchema {
                        path: self.path.clone(),
                        found: v,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(v) if v < SCHEMA_VERSION => {
                    drop(meta);
                    rebuild_projections(&txn, &self.path)?;
                    meta = txn.open_table(META).map_err(|e| err(e.into()))?;
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(|e| err(e.into()))?;
                }
                Some(_) => {}
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(|e| err(e.into()))?;
                }
            }
            txn.open_table(LEDGER).map_err(|e| err(e.into()))?;
            for table in PROJECTIONS {
                txn.open_table(*table).map_err(|e| err(e.into()))?;
            }
            txn.open_table(READY).map_err(|e| err(e.into()))?;
            txn.open_table(DUE).map_err(|e| err(e.into()))?;
            txn.open_table(LIVE_LEASES).map_err(|e| err(e.into()))?;
            txn.open_table(WORKERS).map_err(|e| err(e.into()))?;
            txn.open_table(SECRETS).map_err(|e| err(e.into()))?;
            txn.open_table(METRIC_SNAPSHOTS).map_err(|e| err(e.into()))?;
        }
        txn.commit().map_err(|e| err(e.into()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database; panics while it is being reopened (tests and benchmarks only).
    pub fn database(&self) -> Arc<Database> {
        self.db().expect("the store is open")
    }

    /// The open database, or why there is none now.
    pub fn db(&self) -> Result<Arc<Database>, StoreError> {
        let guard = self.shared.db.read().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or_else(|| StoreError::Unavailable {
            path: self.path.clone(),
            reason: self.fault().unwrap_or_else(|| "it is being reopened".into()),
        })
    }

    pub fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db()?.begin_read().map_err(|e| redb_err(&self.path)(e.into()))
    }

    /// Why the store cannot take writes now, if it cannot.
    pub fn fault(&self) -> Option<String> {
        self.shared.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_fault(&self, reason: Option<String>) {
        *self.shared.fault.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// Why the store must take no writes until an operator acts (its ledger failed
    /// verification, or redb failed reading it), if so. Unlike a fault it never clears itself.
    pub fn damage(&self) -> Option<String> {
        self.shared.damage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn checking(&self) -> bool {
        self.shared.checking.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_checking(&self, on: bool) {
        self.shared.checking.store(on, std::sync::atomic::Ordering::Release);
    }

    pub fn set_damage(&self, reason: String) {
        tracing::error!(store = %self.path.display(), reason = %reason, "store damaged: writes refused");
        *self.shared.damage.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
    }

    /// Closes the database (a handle that saw an I/O error is never used again: redb refuses
    /// it, and a retried fsync on the same file proves nothing) and tries to open it anew,
    /// which runs redb's repair if the file needs one. Fails while a reader still holds the
    /// old handle or the disk still refuses; the caller tries again later.
    pub fn reopen(&self) -> Result<(), StoreError> {
        // The lock is not held while redb opens (and perhaps repairs) the file: readers are
        // answered `Unavailable` meanwhile instead of waiting.
        let old = self.shared.db.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(old);
        let db = open_database(&self.path, self.shared.cache_bytes)?;
        *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
        Ok(())
    }

    pub fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

/// Reads the schema version without writing; refuses a newer one. A file that needs crash
/// recovery cannot be opened read-only: it is left to the read-write open, which repairs it.
fn refuse_newer_schema(path: &Path) -> Result<(), StoreError> {
    let ro = match ReadOnlyDatabase::open(path) {
        Ok(ro) => ro,
        Err(DatabaseError::DatabaseAlreadyOpen) => {
            return Err(StoreError::Locked { path: path.to_owned() });
        }
        Err(_) => return Ok(()),
    };
    let found = schema_version(&ro.begin_read().map_err(|e| redb_err(path)(e.into()))?, path)?;
    match found {
        Some(v) if v > SCHEMA_VERSION => {
            Err(StoreError::NewerSchema { path: path.to_owned(), found: v, supported: SCHEMA_VERSION })
        }
        _ => Ok(()),
    }
}

fn schema_version(txn: &ReadTransaction, path: &Path) -> Result<Option<u64>, StoreError> {
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(redb_err(path)(e.into())),
    };
    Ok(meta.get("schema_version").map_err(|e| redb_err(path)(e.into()))?.map(|v| v.value()))
}

/// A store written by an older stella whose projection of the ledger differs from today's:
/// every projection table (with the ready and due indexes) is emptied and the ledger applied
/// again, in the opening transaction — all or nothing. What is not history (live leases,
/// workers, secrets, metric snapshots) stays.
fn rebuild_projections(txn: &redb::WriteTransaction, path: &Path) -> Result<(), StoreError> {
    let err = redb_err(path);
    tracing::warn!(store = %path.display(), "the store was written by an older stella: rebuilding its tables from the ledger");
    for table in PROJECTIONS {
        txn.open_table(*table).map_err(|e| err(e.into()))?.retain(|_, _| false).map_err(|e| err(e.into()))?;
    }
    txn.open_table(READY).map_err(|e| err(e.into()))?.retain(|_, _| false).map_err(|e| err(e.into()))?;
    txn.open_table(DUE).map_err(|e| err(e.into()))?.retain(|_, _| false).map_err(|e| err(e.into()))?;
    // Streamed: the ledger is read while the other tables are written (never held whole).
    let ledger = txn.open_table(LEDGER).map_err(|e| err(e.into()))?;
    let mut applied = 0u64;
    for row in ledger.iter().map_err(|e| err(e.into()))? {
        let (k, v) = row.map_err(|e| err(e.into()))?;
        let corrupt = |reason: String| StoreError::Corrupt { table: "ledger", key: k.value().to_string(), reason };
        let entry = serde_json::from_slice::<Entry>(v.value()).map_err(|e| corrupt(e.to_string()))?;
        crate::store::projection::apply(txn, &entry)
            .map_err(|e| corrupt(format!("replaying it into the rebuilt tables: {e}")))?;
        applied += 1;
    }
    tracing::info!(entries = applied, "tables rebuilt from the ledger");
    Ok(())
}

fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    Database::builder().set_cache_size(cache_bytes).create(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.to_owned() },
        other => redb_err(path)(other.into()),
    })
}

/// A read-only view of a stopped store, for `db verify` without a daemon.
pub fn open_read_only(path: &Path) -> Result<ReadOnlyDatabase, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing { path: path.to_owned() });
    }
    let ro = ReadOnlyDatabase::open(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.to_owned() },
        DatabaseError::RepairAborted => StoreError::NeedsRepair { path: path.to_owned() },
        other => redb_err(path)(other.into()),
    })?;
    let found = schema_version(&ro.begin_read().map_err(|e| redb_err(path)(e.into()))?, path)?;
    if let Some(v) = found.filter(|v| *v > SCHEMA_VERSION) {
        return Err(StoreError::NewerSchema { path: path.to_owned(), found: v, supported: SCHEMA_VERSION });
    }
    Ok(ro)
}

/// Read helpers shared by the API and the CLI's offline paths.
pub mod read {
    use super::*;

    fn corrupt(table: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt { table, key: key.to_owned(), reason: e.to_string() }
    }

    fn rerr(e: impl Into<redb::Error>) -> StoreError {
        StoreError::Redb { path: PathBuf::from("<snapshot>"), source: e.into() }
    }

    pub fn token(txn: &ReadTransaction, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let table = txn.open_table(TOKENS).map_err(rerr)?;
        let Some(raw) = table.get(id).map_err(rerr)? else {
            return Ok(None);
        };
        TokenRecord::from_json_bytes(raw.value()).map(Some).map_err(|e| corrupt("tokens", id, e))
    }

    /// Tokens, optionally of one tenant, at most `limit` of them.
    pub fn tokens(txn: &ReadTransaction, tenant: Option<&str>, limit: usize) -> Result<Vec<TokenRecord>, StoreError> {
        let table = txn.open_table(TOKENS).map_err(rerr)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            let rec = TokenRecord::from_json_bytes(v.value()).map_err(|e| corrupt("tokens", k.value(), e))?;
            if tenant.is_none_or(|t| t == rec.tenant) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn appliance_id(txn: &ReadTransaction) -> Result<Option<String>, StoreError> {
        let table = txn.open_table(APPLIANCE).map_err(rerr)?;
        Ok(table.get("id").map_err(rerr)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    /// What the last export covered (`export.created` data), if any export was made.
    pub fn last_export(txn: &ReadTransaction) -> Result<Option<serde_json::Value>, StoreError> {
        let table = txn.open_table(APPLIANCE).map_err(rerr)?;
        Ok(table.get("last_export").map_err(rerr)?.and_then(|v| serde_json::from_slice(v.value()).ok()))
    }

    /// The last committed entry's sequence and hash, or `(0, GENESIS_PREV)`.
    pub fn ledger_head(txn: &ReadTransaction) -> Result<(u64, String), StoreError> {
        let table = txn.open_table(LEDGER).map_err(rerr)?;
        match table.last().map_err(rerr)? {
            None => Ok((0, crate::ledger::GENESIS_PREV.to_owned())),
            Some((k, v)) => {
                let seq = k.value();
                let entry: Entry =
                    serde_json::from_slice(v.value()).map_err(|e| corrupt("ledger", &seq.to_string(), e))?;
                Ok((seq, entry.hash))
            }
        }
    }

    /// Entries with sequence > `after`, at most `limit`.
    pub fn ledger_after(txn: &ReadTransaction, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        let table = txn.open_table(LEDGER).map_err(rerr)?;
        let mut out = Vec::new();
        for row in table.range(after.saturating_add(1)..).map_err(rerr)?.take(limit) {
            let (k, v) = row.map_err(rerr)?;
            let entry: Entry =
                serde_json::from_slice(v.value()).map_err(|e| corrupt("ledger", &k.value().to_string(), e))?;
            out.push(entry);
        }
        Ok(out)
    }

    fn records<R: Record>(
        txn: &ReadTransaction,
        def: TableDefinition<&str, &[u8]>,
        name: &'static str,
        limit: usize,
        keep: impl Fn(&R) -> bool,
    ) -> Result<Vec<R>, StoreError> {
        let table = txn.open_table(def).map_err(rerr)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            let rec = R::from_json_bytes(v.value()).map_err(|e| corrupt(name, k.value(), e))?;
            if keep(&rec) {
                out.push(rec);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn job(txn: &ReadTransaction, id: &str) -> Result<Option<JobRecord>, StoreError> {
        rw::get(&txn.open_table(JOBS).map_err(rerr)?, "jobs", id)
    }

    pub fn queues(txn: &ReadTransaction) -> Result<Vec<(String, QueueRecord)>, StoreError> {
        let table = txn.open_table(QUEUES).map_err(rerr)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            out.push((
                k.value().to_owned(),
                QueueRecord::from_json_bytes(v.value()).map_err(|e| corrupt("queues", k.value(), e))?,
            ));
        }
        Ok(out)
    }

    /// Creation time of the oldest of the first `scan` ready jobs of `job_type`.
    pub fn oldest_ready_ms(txn: &ReadTransaction, job_type: &str, scan: usize) -> Result<Option<i64>, StoreError> {
        let ready = txn.open_table(READY).map_err(rerr)?;
        let jobs = txn.open_table(JOBS).map_err(rerr)?;
        let mut oldest = None;
        for row in ready.range((job_type, 0u64)..=(job_type, u64::MAX)).map_err(rerr)?.take(scan) {
            let (_, id) = row.map_err(rerr)?;
            if let Some(j) = rw::get::<JobRecord>(&jobs, "jobs", id.value())? {
                oldest = Some(oldest.map_or(j.created_ms, |o: i64| o.min(j.created_ms)));
            }
        }
        Ok(oldest)
    }

    /// Ready jobs (the first `scan` of the ready index) that name locks: DAG steps waiting for
    /// a lock someone else holds. They are dispatched, and granted their locks, once all are free.
    pub fn lock_waiting_jobs(txn: &ReadTransaction, scan: usize) -> Result<Vec<JobRecord>, StoreError> {
        let ready = txn.open_table(READY).map_err(rerr)?;
        let jobs = txn.open_table(JOBS).map_err(rerr)?;
        let mut out = Vec::new();
        for row in ready.iter().map_err(rerr)?.take(scan) {
            let (_, id) = row.map_err(rerr)?;
            if let Some(j) = rw::get::<JobRecord>(&jobs, "jobs", id.value())?
                && j.payload["locks"].as_array().is_some_and(|l| !l.is_empty())
            {
                out.push(j);
            }
        }
        Ok(out)
    }

    /// One tenant's job counts per type and state, from its jobs (at most `scan` examined).
    pub fn tenant_queue_counts(
        txn: &ReadTransaction,
        tenant: &str,
        scan: usize,
    ) -> Result<std::collections::BTreeMap<String, QueueRecord>, StoreError> {
        use crate::store::records::JobState;
        let jobs = txn.open_table(JOBS).map_err(rerr)?;
        let mut out: std::collections::BTreeMap<String, QueueRecord> = Default::default();
        for row in jobs.iter().map_err(rerr)?.take(scan) {
            let (k, v) = row.map_err(rerr)?;
            let j = JobRecord::from_json_bytes(v.value()).map_err(|e| corrupt("jobs", k.value(), e))?;
            if j.tenant != tenant {
                continue;
            }
            let q = out.entry(j.job_type.clone()).or_default();
            match j.state {
                JobState::Ready => q.ready += 1,
                JobState::Delayed => q.delayed += 1,
                JobState::Leased => q.leased += 1,
                JobState::Dead => q.dead += 1,
                JobState::Succeeded => q.succeeded += 1,
                JobState::Replayed | JobState::Resolved | JobState::Cancelled => {}
            }
        }
        Ok(out)
    }

    /// Dead jobs visible to `tenant`, oldest death first.
    pub fn dlq(txn: &ReadTransaction, tenant: Option<&str>, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let dlq = txn.open_table(DLQ).map_err(rerr)?;
        let jobs = txn.open_table(JOBS).map_err(rerr)?;
        let mut out = Vec::new();
        for row in dlq.iter().map_err(rerr)? {
            let (id, _) = row.map_err(rerr)?;
            if let Some(j) = rw::get::<JobRecord>(&jobs, "jobs", id.value())?
                && tenant.is_none_or(|t| t == j.tenant)
            {
                out.push(j);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn locks(txn: &ReadTransaction, tenant: Option<&str>, limit: usize) -> Result<Vec<LockRecord>, StoreError> {
        records(txn, LOCKS, "locks", limit, |l: &LockRecord| tenant.is_none_or(|t| t == l.tenant))
    }

    pub fn workers(txn: &ReadTransaction, limit: usize) -> Result<Vec<WorkerRecord>, StoreError> {
        records(txn, WORKERS, "workers", limit, |_: &WorkerRecord| true)
    }

    /// Leased jobs per worker, from the lease timers (at most `scan` timers examined).
    pub fn leases_by_worker(
        txn: &ReadTransaction,
        scan: usize,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let due = txn.open_table(DUE).map_err(rerr)?;
        let jobs = txn.open_table(JOBS).map_err(rerr)?;
        let mut out = std::collections::HashMap::new();
        for row in due.iter().map_err(rerr)?.take(scan) {
            let (k, _) = row.map_err(rerr)?;
            let key = k.value().1.to_owned();
            let Some(job) = key.strip_prefix("lease|").and_then(|r| r.split('|').next()) else { continue };
            if let Some(lease) = rw::get::<JobRecord>(&jobs, "jobs", job)?.and_then(|j| j.lease) {
                *out.entry(lease.worker).or_insert(0) += 1;
            }
        }
        Ok(out)
    }

    /// Runtime config values set by operators.
    pub fn runtime_config(txn: &ReadTransaction) -> Result<Vec<(String, String)>, StoreError> {
        let table = txn.open_table(RUNTIME_CONFIG).map_err(rerr)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            out.push((k.value().to_owned(), String::from_utf8_lossy(v.value()).into_owned()));
        }
        Ok(out)
    }

    pub fn run(txn: &ReadTransaction, id: &str) -> Result<Option<RunRecord>, StoreError> {
        rw::get(&txn.open_table(RUNS).map_err(rerr)?, "runs", id)
    }

    pub fn runs(txn: &ReadTransaction, tenant: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
        records(txn, RUNS, "runs", limit, |r: &RunRecord| tenant.is_none_or(|t| t == r.tenant))
    }

    /// The steps of a run, in the table's key order.
    pub fn steps(txn: &ReadTransaction, run: &str) -> Result<Vec<StepRecord>, StoreError> {
        let table = txn.open_table(STEPS).map_err(rerr)?;
        let (from, to) = (format!("{run}/"), format!("{run}/\u{10FFFF}"));
        let mut out = Vec::new();
        for row in table.range(from.as_str()..to.as_str()).map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            out.push(StepRecord::from_json_bytes(v.value()).map_err(|e| corrupt("steps", k.value(), e))?);
        }
        Ok(out)
    }

    /// Installed plugins: name → record JSON.
    pub fn plugins(txn: &ReadTransaction) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let table = txn.open_table(PLUGINS).map_err(rerr)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            out.push((
                k.value().to_owned(),
                serde_json::from_slice(v.value()).map_err(|e| corrupt("plugins", k.value(), e))?,
            ));
        }
        Ok(out)
    }

    /// Installed plugins as specs see them: name and step kinds (the name when none recorded).
    pub fn installed_plugins(txn: &ReadTransaction) -> Result<Vec<crate::engine::spec::InstalledPlugin>, StoreError> {
        Ok(plugins(txn)?
            .into_iter()
            .map(|(name, rec)| {
                let kinds: Vec<String> = rec["kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect();
                let kinds = if kinds.is_empty() { vec![name.clone()] } else { kinds };
                (name, kinds)
            })
            .collect())
    }

    /// A secret's value, for the executor only.
    /// A secret's value, opened with the daemon's secrets key ([`crate::secrets`]).
    pub fn secret(txn: &ReadTransaction, name: &str) -> Result<Option<String>, StoreError> {
        let table = txn.open_table(SECRETS).map_err(rerr)?;
        let Some(v) = table.get(name).map_err(rerr)? else { return Ok(None) };
        open_secret(name, v.value()).map(Some)
    }

    /// Every secret's value, for redaction.
    pub fn secret_values(txn: &ReadTransaction) -> Result<Vec<String>, StoreError> {
        let table = txn.open_table(SECRETS).map_err(rerr)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            // One that does not open (its key was lost) is left out, said, and fails only the
            // step that needs it: it is set again with `stella secrets set`.
            match open_secret(k.value(), v.value()) {
                Ok(value) => out.push(value),
                Err(e) => tracing::warn!(error = %e, "a secret does not open; set it again"),
            }
        }
        Ok(out)
    }

    fn open_secret(name: &str, stored: &[u8]) -> Result<String, StoreError> {
        let key =
            crate::secrets::key().ok_or_else(|| corrupt("secrets", name, "no secrets key is loaded to open it"))?;
        key.open(name, stored).map_err(|e| corrupt("secrets", name, e))
    }

    pub fn schedules(txn: &ReadTransaction) -> Result<Vec<serde_json::Value>, StoreError> {
        let table = txn.open_table(SCHEDULES).map_err(rerr)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt("schedules", k.value(), e))?);
        }
        Ok(out)
    }

    pub fn bundles(txn: &ReadTransaction) -> Result<Vec<serde_json::Value>, StoreError> {
        let table = txn.open_table(BUNDLES).map_err(rerr)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt("bundles", k.value(), e))?);
        }
        Ok(out)
    }

    pub fn dags(txn: &ReadTransaction) -> Result<Vec<DagRecord>, StoreError> {
        records(txn, DAGS, "dags", usize::MAX, |_: &DagRecord| true)
    }

    pub fn dag_spec(txn: &ReadTransaction, name: &str, version: u32) -> Result<Option<String>, StoreError> {
        let table = txn.open_table(DAG_SPECS).map_err(rerr)?;
        let key = format!("{name}@{version}");
        Ok(table.get(key.as_str()).map_err(rerr)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    pub fn resource_version(txn: &ReadTransaction, resource: &str) -> Result<u64, StoreError> {
        rw::counter(&txn.open_table(RESOURCES).map_err(rerr)?, resource).map_err(rerr)
    }

    pub fn ledger_len(txn: &ReadTransaction) -> Result<u64, StoreError> {
        let table = txn.open_table(LEDGER).map_err(rerr)?;
        table.len().map_err(rerr)
    }
}

/// Typed access to JSON-record tables, for reads in snapshots and in the writer's transaction.
pub mod rw {
    use super::*;
    use crate::store::records::Record;
    use redb::{ReadableTable, Table};

    pub fn get<R: Record>(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        name: &'static str,
        key: &str,
    ) -> Result<Option<R>, StoreError> {
        let Some(raw) =
            table.get(key).map_err(|e| StoreError::Redb { path: PathBuf::from("<txn>"), source: e.into() })?
        else {
            return Ok(None);
        };
        R::from_json_bytes(raw.value()).map(Some).map_err(|e| StoreError::Corrupt {
            table: name,
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    pub fn put<R: Record>(table: &mut Table<&str, &[u8]>, key: &str, record: &R) -> Result<(), redb::Error> {
        table.insert(key, record.to_json_bytes().as_slice()).map(|_| ()).map_err(Into::into)
    }

    pub fn counter(table: &impl ReadableTable<&'static str, &'static [u8]>, name: &str) -> Result<u64, redb::Error> {
        Ok(table.get(name)?.and_then(|v| <[u8; 8]>::try_from(v.value()).ok()).map(u64::from_be_bytes).unwrap_or(0))
    }

    pub fn set_counter(table: &mut Table<&str, &[u8]>, name: &str, value: u64) -> Result<(), redb::Error> {
        table.insert(name, value.to_be_bytes().as_slice()).map(|_| ()).map_err(Into::into)
    }
}
