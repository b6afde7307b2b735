//! The due index: every deadline of the store (a delayed job, a lease, a budget, a lock, a
//! cron trigger) as `(due ms, key)`. Domains arm and disarm their own keys in their projection;
//! the machine's tick reads what is due and hands each key to the domain that owns it.

use crate::kernel::plan::{ApplyError, redb};
use redb::{TableDefinition, WriteTransaction};

/// Projection index: (due ms, timer key) → 0.
pub const DUE: TableDefinition<(u64, &str), u8> = TableDefinition::new("due");

/// Arms timer `key` at `due_ms`.
pub fn arm(txn: &WriteTransaction, due_ms: i64, key: &str) -> Result<(), ApplyError> {
    txn.open_table(DUE).map_err(redb)?.insert((due_ms.max(0) as u64, key), 0).map_err(redb)?;
    Ok(())
}

/// Disarms timer `key` at `due_ms` (nothing if it is not armed).
pub fn disarm(txn: &WriteTransaction, due_ms: i64, key: &str) -> Result<(), ApplyError> {
    txn.open_table(DUE).map_err(redb)?.remove((due_ms.max(0) as u64, key)).map_err(redb)?;
    Ok(())
}

/// Arms (`insert`) or disarms timer `key` at `due_ms`.
pub fn set(txn: &WriteTransaction, due_ms: i64, key: &str, insert: bool) -> Result<(), ApplyError> {
    if insert { arm(txn, due_ms, key) } else { disarm(txn, due_ms, key) }
}
