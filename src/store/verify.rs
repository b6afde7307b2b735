//! `db verify`: checks the ledger chain entry by entry, then replays the whole ledger through
//! the projection into an in-memory store and compares every projection table with the stored
//! one. The first disagreement is reported with the ledger sequence it belongs to.
//!
//! It reads one MVCC snapshot and never writes, so it runs beside a live writer or on a stopped
//! store opened read-only.

use crate::ledger::{ChainCursor, ChainError, Entry};
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

/// Verifies the snapshot `txn`.
pub fn verify(txn: &ReadTransaction) -> Result<VerifyReport, StoreError> {
    let replica = Database::builder().create_with_backend(InMemoryBackend::new()).map_err(rerr)?;
    let replay = replica.begin_write().map_err(rerr)?;
    let mut cursor = ChainCursor::default();
    let mut writers: HashMap<String, u64> = HashMap::new();
    let mut report = VerifyReport {
        ok: false,
        entries: 0,
        head_seq: 0,
        head_hash: cursor.prev_hash.clone(),
        tables: PROJECTIONS.iter().map(|t| t.name().to_owned()).collect(),
        problem: None,
    };
    let ledger = txn.open_table(LEDGER).map_err(rerr)?;
    for row in ledger.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        let entry: Entry = match cursor.check_raw(k.value(), v.value()) {
            Ok(entry) => entry,
            Err(e) => return Ok(with_problem(report, chain_problem(e))),
        };
        if let Err(e) = projection::apply(&replay, &entry) {
            return Ok(with_problem(report, VerifyProblem::Replay { seq: entry.seq, message: e.to_string() }));
        }
        for subject in &entry.subjects {
            writers.insert(subject.clone(), entry.seq);
        }
        report.entries += 1;
    }
    report.head_seq = cursor.next_seq - 1;
    report.head_hash = cursor.prev_hash.clone();
    for table in PROJECTIONS {
        if let Some(problem) = compare(txn, &replay, *table, &writers)? {
            return Ok(with_problem(report, problem));
        }
    }
    report.ok = true;
    Ok(report)
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
