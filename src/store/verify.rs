//! `db verify`: checks the ledger chain entry by entry, then replays the whole ledger through
//! the projection into an in-memory store and compares every projection table with the stored
//! one. The first disagreement is reported with the ledger sequence it belongs to.
//!
//! It reads one MVCC snapshot and never writes, so it runs beside a live writer or on a stopped
//! store opened read-only.

use crate::ledger::{ChainCursor, ChainError, Entry, Link};
use crate::store::projection;
use crate::store::schema::{LEDGER, PROJECTIONS, StoreError};
use redb::backends::InMemoryBackend;
use redb::{Database, ReadTransaction, ReadableTable, TableDefinition, TableHandle};
use serde::Serialize;
use std::collections::HashMap;

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

/// Verifies the snapshot `txn`: the chain is checked on a second thread while this one
/// replays, so the check costs no time of its own.
pub fn verify(txn: &ReadTransaction) -> Result<VerifyReport, StoreError> {
    std::thread::scope(|scope| {
        let chain = scope.spawn(|| check_chain(txn, 1));
        let replayed = replay(txn);
        let chain = chain.join().expect("the chain check panicked")?;
        let (replay, writers, entries, replay_problem) = replayed?;
        let mut report = VerifyReport {
            ok: false,
            entries,
            head_seq: 0,
            head_hash: crate::ledger::GENESIS_PREV.to_owned(),
            tables: PROJECTIONS.iter().map(|t| t.name().to_owned()).collect(),
            problem: None,
        };
        // The first problem in ledger order; the chain's first when both are at one entry.
        match (chain, replay_problem) {
            (Err(e), p) if p.as_ref().is_none_or(|p| e.seq() <= p.seq) => {
                return Ok(with_problem(report, chain_problem(e)));
            }
            (_, Some(p)) => {
                return Ok(with_problem(report, VerifyProblem::Replay { seq: p.seq, message: p.message }));
            }
            (Err(e), None) => return Ok(with_problem(report, chain_problem(e))),
            (Ok((seq, hash)), None) => (report.head_seq, report.head_hash) = (seq, hash),
        }
        for table in PROJECTIONS {
            if let Some(problem) = compare(txn, &replay, *table, &writers)? {
                return Ok(with_problem(report, problem));
            }
        }
        report.ok = true;
        Ok(report)
    })
}

/// Why an entry could not be replayed.
struct ReplayProblem {
    seq: u64,
    message: String,
}

type Replayed = (redb::WriteTransaction, HashMap<String, u64>, u64, Option<ReplayProblem>);

/// Applies every stored entry, in order, to empty projections in memory: the replica, the
/// last entry that wrote each subject, the entries applied, and the first that failed.
fn replay(txn: &ReadTransaction) -> Result<Replayed, StoreError> {
    let replica = Database::builder().create_with_backend(InMemoryBackend::new()).map_err(rerr)?;
    let replay = replica.begin_write().map_err(rerr)?;
    let mut writers: HashMap<String, u64> = HashMap::new();
    let mut entries = 0;
    let ledger = txn.open_table(LEDGER).map_err(rerr)?;
    for row in ledger.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        let seq = k.value();
        let problem = match serde_json::from_slice::<Entry>(v.value()) {
            // The chain check names an entry that does not parse.
            Err(e) => Some(ReplayProblem { seq, message: format!("ledger entry {seq} does not parse: {e}") }),
            Ok(entry) => match projection::apply(&replay, &entry) {
                Err(e) => Some(ReplayProblem { seq, message: e.to_string() }),
                Ok(()) => {
                    for subject in &entry.subjects {
                        writers.insert(subject.clone(), entry.seq);
                    }
                    None
                }
            },
        };
        if problem.is_some() {
            return Ok((replay, writers, entries, problem));
        }
        entries += 1;
    }
    Ok((replay, writers, entries, None))
}

/// Checks the stored ledger's chain alone in the snapshot `txn`, on `threads` threads, each
/// over a contiguous range of sequences: every entry hashes to itself and links to the one
/// before — a range's first entry to the stored hash of the entry before it, which the
/// previous range checks in turn, so together they check the whole chain. Returns the head,
/// or the first problem in sequence order.
pub fn check_chain(txn: &ReadTransaction, threads: usize) -> Result<Result<(u64, String), ChainError>, StoreError> {
    let head = match txn.open_table(LEDGER).map_err(rerr)?.last().map_err(rerr)? {
        None => return Ok(Ok((0, crate::ledger::GENESIS_PREV.to_owned()))),
        Some((k, _)) => k.value(),
    };
    let threads = threads.clamp(1, 64) as u64;
    let per = head.div_ceil(threads);
    let ranges: Vec<(u64, u64)> =
        (0..threads).map(|i| (i * per + 1, ((i + 1) * per).min(head))).filter(|(a, b)| a <= b).collect();
    let check = |(first, last): (u64, u64)| -> Result<Result<Link, ChainError>, StoreError> {
        let table = txn.open_table(LEDGER).map_err(rerr)?;
        // A range starts from the hash the entry before it stores; the range holding that
        // entry checks that the hash is right.
        let prev = if first == 1 {
            Link::GENESIS
        } else {
            let Some(v) = table.get(first - 1).map_err(rerr)? else {
                return Ok(Err(ChainError::Missing { expected: first - 1, found: first }));
            };
            let unparsable = |reason: String| ChainError::Unparsable { seq: first - 1, reason };
            match serde_json::from_slice::<Entry>(v.value()) {
                Ok(e) => match Link::parse(&e.hash) {
                    Some(link) => link,
                    None => return Ok(Err(unparsable(format!("hash {:?} is not a sha256", e.hash)))),
                },
                Err(e) => return Ok(Err(unparsable(e.to_string()))),
            }
        };
        let mut cursor = ChainCursor::new(first, prev);
        for row in table.range(first..=last).map_err(rerr)? {
            let (k, v) = row.map_err(rerr)?;
            if let Err(e) = cursor.check_stored(k.value(), v.value()) {
                return Ok(Err(e));
            }
        }
        if cursor.next_seq != last + 1 {
            return Ok(Err(ChainError::Missing { expected: cursor.next_seq, found: last + 1 }));
        }
        Ok(Ok(cursor.link()))
    };
    let results: Vec<Result<Result<Link, ChainError>, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges[1..].iter().map(|&r| s.spawn(move || check(r))).collect();
        let first = check(ranges[0]);
        std::iter::once(first).chain(handles.into_iter().map(|h| h.join().expect("a chain thread panicked"))).collect()
    });
    let mut first_problem: Option<ChainError> = None;
    let mut head_link = Link::GENESIS;
    for r in results {
        match r? {
            Ok(link) => head_link = link,
            Err(e) if first_problem.as_ref().is_none_or(|p| e.seq() < p.seq()) => first_problem = Some(e),
            Err(_) => {}
        }
    }
    Ok(match first_problem {
        Some(e) => Err(e),
        None => Ok((head, head_link.as_str().to_owned())),
    })
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
    replay_txn: &redb::WriteTransaction,
    def: TableDefinition<&str, &[u8]>,
    writers: &HashMap<String, u64>,
) -> Result<Option<VerifyProblem>, StoreError> {
    let stored = stored_txn.open_table(def).map_err(rerr)?;
    let replayed = replay_txn.open_table(def).map_err(rerr)?;
    let mut a = stored.iter().map_err(rerr)?;
    let mut b = replayed.iter().map_err(rerr)?;
    let problem = |key: String, message: &str| {
        Some(VerifyProblem::Projection {
            table: def.name().to_owned(),
            seq: writers.get(&key).copied(),
            key,
            message: message.to_owned(),
        })
    };
    loop {
        let (x, y) = (a.next().transpose().map_err(rerr)?, b.next().transpose().map_err(rerr)?);
        match (x, y) {
            (None, None) => return Ok(None),
            (Some((k, _)), None) => {
                return Ok(problem(k.value().to_owned(), "present in the store but not in the ledger replay"));
            }
            (None, Some((k, _))) => {
                return Ok(problem(k.value().to_owned(), "missing from the store"));
            }
            (Some((ks, vs)), Some((kr, vr))) => {
                if ks.value() < kr.value() {
                    return Ok(problem(ks.value().to_owned(), "present in the store but not in the ledger replay"));
                }
                if ks.value() > kr.value() {
                    return Ok(problem(kr.value().to_owned(), "missing from the store"));
                }
                if vs.value() != vr.value() {
                    return Ok(problem(ks.value().to_owned(), "stored value differs from the ledger replay"));
                }
            }
        }
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;
    use crate::ledger::{Draft, GENESIS_PREV};
    use crate::store::Store;

    fn store_with(n: u64, old_form_every: u64) -> (tempfile::TempDir, Store, Vec<Entry>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
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
    fn the_chain_checks_in_parallel_ranges_and_names_the_first_problem() {
        let (_d, store, entries) = store_with(50, 7);
        for threads in [1, 2, 3, 8] {
            let txn = store.read().unwrap();
            assert_eq!(check_chain(&txn, threads).unwrap(), Ok((50, entries[49].hash.clone())), "{threads} threads");
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
            assert_eq!(
                check_chain(&store.read().unwrap(), threads).unwrap(),
                Err(ChainError::BadHash { seq: 30 }),
                "{threads} threads"
            );
        }
    }
}
