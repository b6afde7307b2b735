//! Opening the store file: table definitions, the schema version and its refusal of a newer
//! schema, and read helpers over MVCC snapshots.
//!
//! A store written by a newer stella is refused before anything writes to the file: the version
//! is read through redb's read-only open, which never modifies the file.

use crate::kernel::ledger::Entry;
use crate::kernel::plan::Machine;
pub use crate::kernel::tx::Record;
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
/// 3: the store is the file and its write-ahead log (`<store>-wal`): a stella that knows no
/// log must not open it (it would miss what only the log holds). The tables did not change.
pub const SCHEMA_VERSION: u64 = 3;
/// Stores of a version below this one have their projections rebuilt at open.
const REBUILD_BELOW: u64 = 2;

/// The store's page cache unless `store.cache_bytes` says otherwise.
pub use crate::config::CACHE_BYTES_DEFAULT;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "open store {path}: it has schema version {found}, newer than this stella supports ({supported}); \
         upgrade stella, the file was not changed"
    )]
    NewerSchema { path: PathBuf, found: u64, supported: u64 },
    #[error(
        "open store {path}: it is in use by another process{} (is the daemon running? ask it with the API instead)",
        holders_text(holders)
    )]
    Locked { path: PathBuf, holders: Vec<String> },
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
    /// Opens (creating if absent) the store file at `path` for reading and writing, without
    /// its write-ahead log: [`crate::kernel::wal::open`] opens both, as every caller that
    /// serves or changes a store must.
    pub fn open<M: Machine>(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache::<M>(path, CACHE_BYTES_DEFAULT)
    }

    /// Opens with a page cache of at most `cache_bytes` (redb's default is 1 GiB).
    pub fn open_with_cache<M: Machine>(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        Self::open_waiting::<M>(path, cache_bytes, std::time::Duration::ZERO)
    }

    /// [`Self::open_with_cache`], trying a store another process holds again for up to `wait`:
    /// a process that had it open and is ending (a daemon killed just now, whose restart races
    /// its exit) lets go within moments.
    pub fn open_waiting<M: Machine>(
        path: &Path,
        cache_bytes: usize,
        wait: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + wait;
        let db = loop {
            let opened = if path.exists() {
                refuse_newer_schema(path).and_then(|()| open_database(path, cache_bytes))
            } else {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| redb_err(path)(redb::Error::Io(e)))?;
                }
                open_database(path, cache_bytes)
            };
            match opened {
                Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other?,
            }
        };
        let shared = Shared {
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            cache_bytes,
            fault: std::sync::Mutex::new(None),
            damage: std::sync::Mutex::new(None),
            checking: std::sync::atomic::AtomicBool::new(false),
        };
        let store = Store { shared: Arc::new(shared), path: path.to_owned() };
        store.init_schema::<M>()?;
        Ok(store)
    }

    fn init_schema<M: Machine>(&self) -> Result<(), StoreError> {
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
                Some(v) if v < REBUILD_BELOW => {
                    drop(meta);
                    rebuild_projections::<M>(&txn, &self.path)?;
                    meta = txn.open_table(META).map_err(|e| err(e.into()))?;
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(|e| err(e.into()))?;
                }
                Some(v) if v < SCHEMA_VERSION => {
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(|e| err(e.into()))?;
                }
                Some(_) => {}
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION).map_err(|e| err(e.into()))?;
                }
            }
            txn.open_table(LEDGER).map_err(|e| err(e.into()))?;
            M::create_tables(&txn).map_err(&err)?;
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
        self.reopen_with(|_| Ok(()))
    }

    /// [`Store::reopen`], running `prepare` on the new handle before any reader gets it (the
    /// writer replays its log there); if `prepare` fails the handle is closed again.
    pub fn reopen_with<T>(&self, prepare: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        // The lock is not held while redb opens (and perhaps repairs) the file: readers are
        // answered `Unavailable` meanwhile instead of waiting.
        let old = self.shared.db.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(old);
        let db = open_database(&self.path, self.shared.cache_bytes)?;
        let out = prepare(&db)?;
        *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(db));
        Ok(out)
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
            return Err(locked(path));
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
fn rebuild_projections<M: Machine>(txn: &redb::WriteTransaction, path: &Path) -> Result<(), StoreError> {
    let err = redb_err(path);
    tracing::warn!(store = %path.display(), "the store was written by an older stella: rebuilding its tables from the ledger");
    for table in M::PROJECTIONS {
        txn.open_table(*table).map_err(|e| err(e.into()))?.retain(|_, _| false).map_err(|e| err(e.into()))?;
    }
    M::clear_indexes(txn).map_err(&err)?;
    // Streamed: the ledger is read while the other tables are written (never held whole).
    let ledger = txn.open_table(LEDGER).map_err(|e| err(e.into()))?;
    let mut applied = 0u64;
    // A broken invariant met while rebuilding is reported, not raised: the store is history
    // that `db verify` will name; the rebuild itself must not crash the start.
    let (rebuilt, breaches) = crate::kernel::invariant::recording(|| -> Result<(), StoreError> {
        let tx = crate::kernel::tx::Tx::store(txn);
        for row in ledger.iter().map_err(|e| err(e.into()))? {
            let (k, v) = row.map_err(|e| err(e.into()))?;
            let corrupt = |reason: String| StoreError::Corrupt { table: "ledger", key: k.value().to_string(), reason };
            let entry = serde_json::from_slice::<Entry>(v.value()).map_err(|e| corrupt(e.to_string()))?;
            M::apply(&tx, &entry).map_err(|e| corrupt(format!("replaying it into the rebuilt tables: {e}")))?;
            applied += 1;
        }
        Ok(())
    });
    rebuilt?;
    for b in &breaches {
        tracing::warn!(invariant = %b, "rebuilding the tables met a broken invariant: run `stella orch db verify`");
    }
    tracing::info!(entries = applied, "tables rebuilt from the ledger");
    Ok(())
}

/// The error for a store another process holds, naming the processes that have it open.
fn locked(path: &Path) -> StoreError {
    StoreError::Locked { path: path.to_owned(), holders: holders(path) }
}

fn holders_text(holders: &[String]) -> String {
    if holders.is_empty() { String::new() } else { format!(" ({})", holders.join(", ")) }
}

/// The processes (other than this one) with the file at `path` open, as `pid N (name)`, read
/// from `/proc`: what holds a store's lock (redb's locks are open-file-description locks,
/// which `/proc/locks` lists without a pid).
fn holders(path: &Path) -> Vec<String> {
    let Ok(target) = path.canonicalize() else { return Vec::new() };
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = proc.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let open = std::fs::read_dir(proc.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target));
        if open && out.len() < 8 {
            let name = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
            out.push(format!("pid {pid} ({})", name.trim()));
        }
    }
    out
}

fn open_database(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    Database::builder().set_cache_size(cache_bytes).create(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => locked(path),
        other => redb_err(path)(other.into()),
    })
}

/// A read-only view of a stopped store, for `db verify` without a daemon.
pub fn open_read_only(path: &Path) -> Result<ReadOnlyDatabase, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing { path: path.to_owned() });
    }
    let ro = ReadOnlyDatabase::open(path).map_err(|e| match e {
        DatabaseError::DatabaseAlreadyOpen => locked(path),
        DatabaseError::RepairAborted => StoreError::NeedsRepair { path: path.to_owned() },
        other => redb_err(path)(other.into()),
    })?;
    let found = schema_version(&ro.begin_read().map_err(|e| redb_err(path)(e.into()))?, path)?;
    if let Some(v) = found.filter(|v| *v > SCHEMA_VERSION) {
        return Err(StoreError::NewerSchema { path: path.to_owned(), found: v, supported: SCHEMA_VERSION });
    }
    Ok(ro)
}

/// Structural metadata: `schema_version`. Not a projection; never ledgered.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The ledger: sequence → canonical entry JSON. Append-only.
pub const LEDGER: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger");

/// A record kept as plain JSON (bundles, plugins, schedules: the entry's data as written).
impl Record for serde_json::Value {}

/// Reads of the ledger, and the helpers domain tables use for theirs.
pub mod read {
    use super::*;

    pub fn corrupt(table: &'static str, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt { table, key: key.to_owned(), reason: e.to_string() }
    }

    pub fn rerr(e: impl Into<redb::Error>) -> StoreError {
        StoreError::Redb { path: PathBuf::from("<snapshot>"), source: e.into() }
    }

    /// The last committed entry's sequence and hash, or `(0, GENESIS_PREV)`.
    pub fn ledger_head(txn: &ReadTransaction) -> Result<(u64, String), StoreError> {
        let table = txn.open_table(LEDGER).map_err(rerr)?;
        match table.last().map_err(rerr)? {
            None => Ok((0, crate::kernel::ledger::GENESIS_PREV.to_owned())),
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

    pub fn records<R: Record>(
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

    pub fn ledger_len(txn: &ReadTransaction) -> Result<u64, StoreError> {
        let table = txn.open_table(LEDGER).map_err(rerr)?;
        table.len().map_err(rerr)
    }
}

pub mod rw {
    use super::*;
    use crate::kernel::store::Record;
    use redb::ReadableTable;

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

    pub fn counter(table: &impl ReadableTable<&'static str, &'static [u8]>, name: &str) -> Result<u64, redb::Error> {
        Ok(table.get(name)?.map_or(0, |v| crate::kernel::tx::counter_value(v.value())))
    }
}
