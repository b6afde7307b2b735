//! The due index: every deadline of the store (a delayed job, a lease, a budget, a lock, a
//! cron trigger) as `(due ms, key)`. Domains arm and disarm their own keys in their projection;
//! the machine's tick reads what is due and hands each key to the domain that owns it.

use crate::kernel::plan::ApplyError;
use crate::kernel::tx::Tx;
use redb::{ReadableTable, TableDefinition};

/// Projection index: (due ms, timer key) → 0.
pub const DUE: TableDefinition<(u64, &str), u8> = TableDefinition::new("due");

/// Arms timer `key` at `due_ms`.
pub fn arm(tx: &Tx, due_ms: i64, key: &str) -> Result<(), ApplyError> {
    tx.index_insert(DUE, (due_ms.max(0) as u64, key), 0)
}

/// Disarms timer `key` at `due_ms` (nothing if it is not armed).
pub fn disarm(tx: &Tx, due_ms: i64, key: &str) -> Result<(), ApplyError> {
    tx.index_remove(DUE, (due_ms.max(0) as u64, key))
}

/// Arms (`insert`) or disarms timer `key` at `due_ms`.
pub fn set(tx: &Tx, due_ms: i64, key: &str, insert: bool) -> Result<(), ApplyError> {
    if insert { arm(tx, due_ms, key) } else { disarm(tx, due_ms, key) }
}

/// The earliest armed timer of `table` (the due index, in a read or a write transaction):
/// its due ms and key.
pub fn earliest(
    table: &impl ReadableTable<(u64, &'static str), u8>,
) -> Result<Option<(u64, String)>, redb::StorageError> {
    Ok(table.first()?.map(|(k, _)| {
        let (due, key) = k.value();
        (due, key.to_owned())
    }))
}

/// [`earliest`] of what `store` has committed; `None` also when it cannot be read.
pub fn earliest_committed(store: &crate::kernel::store::Store) -> Option<(u64, String)> {
    earliest(&store.read().ok()?.open_table(DUE).ok()?).ok().flatten()
}
