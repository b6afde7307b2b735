//! `db verify`: checks the ledger chain entry by entry, then replays the whole ledger through
//! the projection into a [`Replica`] in memory and compares every projection table with the stored
//! one. The first disagreement is reported with the ledger sequence it belongs to.
//!
//! It reads one MVCC snapshot and never writes, so it runs beside a live writer or on a stopped
//! store opened read-only.

use crate::kernel::invariant;
use crate::kernel::ledger::{ChainCursor, ChainError, Entry, Link};
use crate::kernel::plan::Machine;
use crate::kernel::store::LEDGER;
use crate::kernel::store::StoreError;
use crate::kernel::tx::{Replica, Tx};
use redb::{ReadTransaction, ReadableTable, TableDefinition, TableHandle};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub ok: bool,
    pub entries: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub tables: Vec<String>,
    /// The first thing wrong, if any.
    pub problem: Option<VerifyProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum VerifyProblem {
    /// The chain itself is broken at `seq`.
    Chain { seq: u64, message: String },
    /// An entry cannot be replayed.
    Replay { seq: u64, message: String },
    /// A projection row differs from the replay; `seq` is the last entry that wrote it, if any.
    Projection { table: String, key: String, seq: Option<u64>, message: String },
}

impl VerifyProblem {
    pub fn message(&self) -> String {
        match self {
            VerifyProblem::Chain { message, .. } | VerifyProblem::Replay { message, .. } => message.clone(),
            VerifyProblem::Projection { table, key, seq, message } => match seq {
                Some(seq) => {
                    format!("{table}/{key}: {message} (last written by ledger entry {seq})")
                }
                None => format!("{table}/{key}: {message} (no ledger entry writes it)"),
            },
        }
    }
}

fn rerr(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb { path: "<verify>".into(), source: e.into() }
}

/// Verifies the snapshot `txn`: a second thread reads the ledger once, checks its chain and
/// hands the stored entries on in batches, which this one parses and replays.
pub fn verify<M: Machine>(txn: &ReadTransaction) -> Result<VerifyReport, StoreError> {
    std::thread::scope(|scope| {
        let (rows, received) = std::sync::mpsc::sync_channel::<Rows>(4);
        let chain = scope.spawn(move || read_checked(txn, rows));
        let (replayed, _) = invariant::recording(|| replay::<M>(received));
        // A panic inside redb (a damaged page) goes on as itself, for `store::guard` to name.
        let chain = chain.join().unwrap_or_else(|payload| std::panic::resume_unwind(payload))?;
        let (replay, entries, replay_problem) = replayed;
        let mut report = VerifyReport {
            ok: false,
            entries,
            head_seq: 0,
            head_hash: crate::kernel::ledger::GENESIS_PREV.to_owned(),
            tables: M::PROJECTIONS.iter().map(|t| t.name().to_owned()).collect(),
            problem: None,
        };
        // The first problem in ledger order; the chain's first when both are at one entry.
        let replay_failed = |report, p: ReplayProblem| {
            Ok(with_problem(report, VerifyProblem::Replay { seq: p.seq, message: p.message }))
        };
        match (chain, replay_problem) {
            (Ok((seq, hash)), None) => (report.head_seq, report.head_hash) = (seq, hash),
            (Ok(_), Some(p)) => return replay_failed(report, p),
            (Err(e), Some(p)) if p.seq < e.seq() => return replay_failed(report, p),
            (Err(e), _) => {
                report.entries = report.entries.min(e.seq().saturating_sub(1));
                return Ok(with_problem(report, chain_problem(e)));
            }
        }
        for table in M::PROJECTIONS {
            if let Some(problem) = compare(txn, &replay, *table)? {
                return Ok(with_problem(report, problem));
            }
        }
        report.ok = true;
        Ok(report)
    })
}

/// Checks the ledger's chain alone in the snapshot `txn` (`db verify --chain-only`), on
/// `threads` threads: every entry hashes to itself and links to the one before, without the
/// replay — a quick check for a large store. The report names no tables.
pub fn verify_chain(txn: &ReadTransaction, threads: usize) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport {
        ok: false,
        entries: 0,
        head_seq: 0,
        head_hash: crate::kernel::ledger::GENESIS_PREV.to_owned(),
        tables: Vec::new(),
        problem: None,
    };
    match check_chain(txn, threads)? {
        Ok((seq, hash)) => {
            (report.ok, report.entries, report.head_seq, report.head_hash) = (true, seq, seq, hash);
            Ok(report)
        }
        Err(e) => {
            report.entries = e.seq().saturating_sub(1);
            Ok(with_problem(report, chain_problem(e)))
        }
    }
}

/// Checks the last `n` entries of the snapshot's ledger: each hashes to itself and links to
/// the one before (the first of them is taken at its word): the quick check of the tail at
/// every start. Returns the head, or the first problem.
pub fn check_tail(txn: &ReadTransaction, n: u64) -> Result<Result<(u64, String), ChainError>, StoreError> {
    let table = txn.open_table(LEDGER).map_err(rerr)?;
    let Some(last) = table.last().map_err(rerr)?.map(|(k, _)| k.value()) else {
        return Ok(Ok((0, crate::kernel::ledger::GENESIS_PREV.to_owned())));
    };
    let first = last.saturating_sub(n.saturating_sub(1)).max(1);
    let mut cursor: Option<ChainCursor> = None;
    for row in table.range(first..=last).map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        let c = match &mut cursor {
            Some(c) => c,
            None => {
                let bytes = v.value();
                let prev = match crate::kernel::ledger::stored_head(bytes) {
                    Some(h) => h.prev.to_owned(),
                    None => match serde_json::from_slice::<Entry>(bytes) {
                        Ok(e) => e.prev,
                        Err(e) => {
                            return Ok(Err(ChainError::Unparsable { seq: k.value(), reason: e.to_string() }));
                        }
                    },
                };
                let Some(link) = Link::parse(&prev) else {
                    return Ok(Err(ChainError::BrokenLink { seq: k.value() }));
                };
                cursor.insert(ChainCursor::new(k.value(), link))
            }
        };
        if let Err(e) = c.check_stored(k.value(), v.value()) {
            return Ok(Err(e));
        }
    }
    let c = cursor.expect("the range holds the last entry");
    Ok(Ok((last, c.prev_hash().to_owned())))
}

/// Why an entry could not be replayed.
struct ReplayProblem {
    seq: u64,
    message: String,
}

type Replayed = (Replica, u64, Option<ReplayProblem>);

/// Consecutive stored entries from `first`: their bytes end to end, and where each ends.
struct Rows {
    first: u64,
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

/// Reads the ledger of `txn` once, checking the chain entry by entry, and sends the entries
/// in batches to `rows`, up to the first that breaks the chain. Returns the head, or that
/// problem. One copy out of redb's pages serves both checks (each reading the ledger on its
/// own thread fought over the page cache).
fn read_checked(
    txn: &ReadTransaction,
    rows: std::sync::mpsc::SyncSender<Rows>,
) -> Result<Result<(u64, String), ChainError>, StoreError> {
    const BYTES: usize = 256 * 1024;
    let table = txn.open_table(LEDGER).map_err(rerr)?;
    let mut cursor = ChainCursor::default();
    let mut batch = Rows { first: 1, bytes: Vec::with_capacity(BYTES), ends: Vec::new() };
    let mut verdict = None;
    for row in table.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        if let Err(e) = cursor.check_stored(k.value(), v.value()) {
            verdict = Some(e);
            break;
        }
        batch.bytes.extend_from_slice(v.value());
        batch.ends.push(batch.bytes.len());
        if batch.bytes.len() >= BYTES {
            let next = Rows { first: k.value() + 1, bytes: Vec::with_capacity(BYTES), ends: Vec::new() };
            if rows.send(std::mem::replace(&mut batch, next)).is_err() {
                break; // the replay stopped
            }
        }
    }
    let _ = rows.send(batch);
    Ok(match verdict {
        Some(e) => Err(e),
        None => Ok((cursor.next_seq - 1, cursor.prev_hash().to_owned())),
    })
}

/// Applies every entry `rows` brings, in order, to empty projections in memory: the replica,
/// the entries applied, and the first that failed.
fn replay<M: Machine>(rows: std::sync::mpsc::Receiver<Rows>) -> Replayed {
    let replica = Replica::default();
    let (entries, problem) = replay_into::<M>(&Tx::replica(&replica), rows);
    (replica, entries, problem)
}

fn replay_into<M: Machine>(replay: &Tx, rows: std::sync::mpsc::Receiver<Rows>) -> (u64, Option<ReplayProblem>) {
    let mut entries = 0;
    for batch in rows {
        let mut start = 0;
        for (i, &end) in batch.ends.iter().enumerate() {
            let seq = batch.first + i as u64;
            let problem = match serde_json::from_slice::<Entry>(&batch.bytes[start..end]) {
                // The chain check names an entry that does not parse.
                Err(e) => Some(ReplayProblem { seq, message: format!("ledger entry {seq} does not parse: {e}") }),
                Ok(entry) => match M::apply(replay, &entry) {
                    Err(e) => Some(ReplayProblem { seq, message: e.to_string() }),
                    Ok(()) if let Some(b) = invariant::drain().into_iter().next() => {
                        Some(ReplayProblem { seq, message: format!("replaying entry {seq} breaks an invariant: {b}") })
                    }
                    Ok(()) => None,
                },
            };
            if problem.is_some() {
                return (entries, problem);
            }
            start = end;
            entries += 1;
        }
    }
    (entries, None)
}

/// The last entry whose subjects name `key`: looked up only for a row that differs, by a walk
/// back from the head (keeping a map of every subject's last writer cost a tenth of a replay).
fn last_writer(txn: &ReadTransaction, key: &str) -> Result<Option<u64>, StoreError> {
    #[derive(serde::Deserialize)]
    struct Subjects {
        #[serde(default)]
        subjects: Vec<String>,
    }
    let ledger = txn.open_table(LEDGER).map_err(rerr)?;
    for row in ledger.iter().map_err(rerr)?.rev() {
        let (k, v) = row.map_err(rerr)?;
        if let Ok(e) = serde_json::from_slice::<Subjects>(v.value())
            && e.subjects.iter().any(|s| s == key)
        {
            return Ok(Some(k.value()));
        }
    }
    Ok(None)
}

/// Checks the stored ledger's chain alone in the snapshot `txn`: every entry hashes to
/// itself and links to the one before. Returns the head, or the first problem in sequence
/// order.
///
/// With `threads` > 1, this thread only reads: it copies the entries out of redb in batches
/// and hands them round-robin to `threads − 1` checkers. A batch is checked from the hash the
/// entry before it stores, which the checker of the batch before checks in turn, so together
/// they check the whole chain. One reader keeps redb's page cache off the other threads' way
/// (two threads each reading a range fought over its eviction, and sometimes ran slower than
/// one).
pub fn check_chain(txn: &ReadTransaction, threads: usize) -> Result<Result<(u64, String), ChainError>, StoreError> {
    check_chain_in_batches(txn, threads, ChainBatch::BYTES)
}

fn check_chain_in_batches(
    txn: &ReadTransaction,
    threads: usize,
    batch_bytes: usize,
) -> Result<Result<(u64, String), ChainError>, StoreError> {
    let table = txn.open_table(LEDGER).map_err(rerr)?;
    if threads <= 1 {
        let mut cursor = ChainCursor::default();
        for row in table.iter().map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            if let Err(e) = cursor.check_stored(k.value(), v.value()) {
                return Ok(Err(e));
            }
        }
        return Ok(Ok((cursor.next_seq - 1, cursor.prev_hash().to_owned())));
    }
    let checkers = (threads - 1).min(63);
    std::thread::scope(|scope| {
        let (senders, handles): (Vec<_>, Vec<_>) = (0..checkers)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<ChainBatch>(4);
                (tx, scope.spawn(move || check_batches(rx)))
            })
            .unzip();
        // The reader checks a batch itself when the checkers are all busy.
        let mut checked = Checked::default();
        let mut batch = ChainBatch { first: 1, prev: Link::GENESIS, bytes: Vec::new(), ends: Vec::new() };
        let mut turn = 0usize;
        let mut hand_over = |batch: ChainBatch, checked: &mut Checked| {
            turn += 1;
            match senders[turn % checkers].try_send(batch) {
                Ok(()) => true,
                Err(std::sync::mpsc::TrySendError::Full(batch)) => {
                    checked.add(batch.check());
                    checked.problem.is_none()
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => false, // it met a problem
            }
        };
        for (seq, row) in (1u64..).zip(table.iter().map_err(rerr)?) {
            let (k, v) = row.map_err(rerr)?;
            if k.value() != seq {
                checked.add(Err(ChainError::Missing { expected: seq, found: k.value() }));
                break;
            }
            let next = seq + 1;
            batch.bytes.extend_from_slice(v.value());
            batch.ends.push(batch.bytes.len());
            if batch.bytes.len() >= batch_bytes {
                // The next batch starts from the hash this batch's last entry stores; if it
                // has none, the check of this batch names what is wrong with it.
                let last = v.value();
                let prev = match crate::kernel::ledger::stored_head(last) {
                    Some(h) => Link::parse(h.hash),
                    None => serde_json::from_slice::<Entry>(last).ok().and_then(|e| Link::parse(&e.hash)),
                };
                let following = ChainBatch {
                    first: next,
                    prev: prev.unwrap_or(Link::GENESIS),
                    bytes: Vec::new(),
                    ends: Vec::new(),
                };
                if !hand_over(std::mem::replace(&mut batch, following), &mut checked) {
                    break;
                }
                if prev.is_none() {
                    // The batch's check fails on that entry; should it not, the chain still
                    // cannot go on from it.
                    let reason = "its hash is not a sha256".to_owned();
                    checked.add(Err(ChainError::Unparsable { seq, reason }));
                    break;
                }
            }
        }
        // Checked even after a gap: a problem before the gap comes first.
        if !batch.ends.is_empty() {
            hand_over(batch, &mut checked);
        }
        drop(senders);
        for h in handles {
            checked.merge(h.join().expect("a chain checker panicked"));
        }
        Ok(match (checked.problem, checked.last) {
            (Some(e), _) => Err(e),
            (None, Some((seq, link))) => Ok((seq, link.as_str().to_owned())),
            (None, None) => Ok((0, crate::kernel::ledger::GENESIS_PREV.to_owned())),
        })
    })
}

/// Consecutive stored entries, `first` onwards, that must link to `prev`.
struct ChainBatch {
    first: u64,
    prev: Link,
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl ChainBatch {
    const BYTES: usize = 256 * 1024;

    /// Checks the batch: its last entry and link, or the first problem.
    fn check(&self) -> Result<(u64, Link), ChainError> {
        let mut cursor = ChainCursor::new(self.first, self.prev);
        let mut start = 0;
        for (i, &end) in self.ends.iter().enumerate() {
            cursor.check_stored(self.first + i as u64, &self.bytes[start..end])?;
            start = end;
        }
        Ok((cursor.next_seq - 1, cursor.link()))
    }
}

/// What checking batches found: the first problem, the last entry checked.
#[derive(Default)]
struct Checked {
    problem: Option<ChainError>,
    last: Option<(u64, Link)>,
}

impl Checked {
    fn add(&mut self, result: Result<(u64, Link), ChainError>) {
        match result {
            Ok(last) if self.last.is_none_or(|l| l.0 < last.0) => self.last = Some(last),
            Ok(_) => {}
            Err(e) if self.problem.as_ref().is_none_or(|p| e.seq() < p.seq()) => self.problem = Some(e),
            Err(_) => {}
        }
    }

    fn merge(&mut self, other: Checked) {
        if let Some(e) = other.problem {
            self.add(Err(e));
        }
        if let Some(last) = other.last {
            self.add(Ok(last));
        }
    }
}

/// Checks each batch received until one has a problem.
fn check_batches(batches: std::sync::mpsc::Receiver<ChainBatch>) -> Checked {
    let mut checked = Checked::default();
    for b in batches {
        checked.add(b.check());
        if checked.problem.is_some() {
            break;
        }
    }
    checked
}

fn chain_problem(e: ChainError) -> VerifyProblem {
    VerifyProblem::Chain { seq: e.seq(), message: e.to_string() }
}

fn with_problem(mut report: VerifyReport, problem: VerifyProblem) -> VerifyReport {
    report.ok = false;
    report.problem = Some(problem);
    report
}

/// Merge-joins the stored and replayed versions of one table; returns the first difference.
fn compare(
    stored_txn: &ReadTransaction,
    replayed: &Replica,
    def: TableDefinition<&str, &[u8]>,
) -> Result<Option<VerifyProblem>, StoreError> {
    let stored = match stored_txn.open_table(def) {
        Ok(t) => Some(t),
        // A store written before the table existed (opened read-only, so not created): it
        // must hold nothing the replay writes there.
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(rerr(e)),
    };
    let mut a = match &stored {
        Some(t) => Some(t.iter().map_err(rerr)?),
        None => None,
    };
    let mut found: Option<(String, &str)> = None;
    let mut failed: Option<StoreError> = None;
    let mut next_stored = |a: &mut Option<redb::Range<'_, &str, &[u8]>>| -> Option<(String, Vec<u8>)> {
        let row = a.as_mut()?.next()?;
        match row {
            Ok((k, v)) => Some((k.value().to_owned(), v.value().to_vec())),
            Err(e) => {
                failed = Some(rerr(e));
                None
            }
        }
    };
    const IN_STORE: &str = "present in the store but not in the ledger replay";
    const MISSING: &str = "missing from the store";
    let mut pending = next_stored(&mut a);
    replayed.each(def.name(), |kr, vr| match &pending {
        Some((ks, _)) if ks.as_str() < kr => {
            found = Some((ks.clone(), IN_STORE));
            false
        }
        Some((ks, vs)) if ks.as_str() == kr => {
            if vs.as_slice() != vr {
                found = Some((ks.clone(), "stored value differs from the ledger replay"));
                return false;
            }
            pending = next_stored(&mut a);
            true
        }
        _ => {
            found = Some((kr.to_owned(), MISSING));
            false
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    if found.is_none()
        && let Some((ks, _)) = pending
    {
        found = Some((ks, IN_STORE));
    }
    let Some((key, message)) = found else { return Ok(None) };
    Ok(Some(VerifyProblem::Projection {
        table: def.name().to_owned(),
        seq: last_writer(stored_txn, &key)?,
        key,
        message: message.to_owned(),
    }))
}

/// Reads every row of `table` (keys and values), so that redb visits each of its pages: a
/// damaged page is found now (as a panic inside redb, which [`crate::kernel::store::guard`]
/// turns into a damaged store) rather than by the first request that reads it. Returns the rows.
pub fn walk_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, StoreError> {
    let t = match txn.open_table(table) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(rerr(e)),
    };
    let mut rows = 0u64;
    for row in t.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        std::hint::black_box((k.value(), v.value()));
        rows += 1;
    }
    Ok(rows)
}

#[cfg(test)]
mod chain_tests {
    use super::*;
    use crate::kernel::ledger::{Draft, GENESIS_PREV};
    use crate::kernel::plan::testing::Bare;
    use crate::kernel::store::Store;

    fn store_with(n: u64, old_form_every: u64) -> (tempfile::TempDir, Store, Vec<Entry>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open::<Bare>(&dir.path().join("s.redb")).unwrap();
        let mut prev = GENESIS_PREV.to_owned();
        let mut entries = Vec::new();
        let txn = store.database().begin_write().unwrap();
        {
            let mut t = txn.open_table(LEDGER).unwrap();
            for seq in 1..=n {
                let d = Draft {
                    tenant: "t".into(),
                    kind: "test.entry",
                    subjects: vec![],
                    data: serde_json::json!({ "n": seq, "s": "x\"y" }),
                };
                let e = Entry::seal(d, seq, 1_000 + seq as i64, "a", &prev);
                prev.clone_from(&e.hash);
                // Some entries in the older stored form: checked the slow way, same verdict.
                let bytes = if seq % old_form_every == 0 { e.to_json() } else { e.to_stored() };
                t.insert(seq, bytes.as_slice()).unwrap();
                entries.push(e);
            }
        }
        txn.commit().unwrap();
        (dir, store, entries)
    }

    #[test]
    fn the_chain_checks_in_parallel_batches_and_names_the_first_problem() {
        let (_d, store, entries) = store_with(50, 7);
        let check = |threads, batch| check_chain_in_batches(&store.read().unwrap(), threads, batch).unwrap();
        for threads in [1, 2, 3, 8] {
            for batch in [1, 700, ChainBatch::BYTES] {
                assert_eq!(check(threads, batch), Ok((50, entries[49].hash.clone())), "{threads} threads, {batch} B");
            }
        }
        let txn = store.database().begin_write().unwrap();
        {
            let mut t = txn.open_table(LEDGER).unwrap();
            let mut bytes = entries[29].to_stored();
            let at = bytes.windows(4).position(|w| w == b"\"n\":").unwrap() + 4;
            bytes[at] = b'9';
            t.insert(30, bytes.as_slice()).unwrap();
            t.remove(40).unwrap();
        }
        txn.commit().unwrap();
        for threads in [1, 2, 4] {
            for batch in [1, 700, ChainBatch::BYTES] {
                assert_eq!(check(threads, batch), Err(ChainError::BadHash { seq: 30 }), "{threads} threads, {batch} B");
            }
        }
        // A missing entry alone is named by whoever meets it: the reader, between batches.
        let txn = store.database().begin_write().unwrap();
        {
            let mut t = txn.open_table(LEDGER).unwrap();
            t.insert(30, entries[29].to_stored().as_slice()).unwrap();
        }
        txn.commit().unwrap();
        for threads in [1, 2, 4] {
            for batch in [1, 700, ChainBatch::BYTES] {
                assert_eq!(
                    check(threads, batch),
                    Err(ChainError::Missing { expected: 40, found: 41 }),
                    "{threads} threads, {batch} B"
                );
            }
        }
    }
}
