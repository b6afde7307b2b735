//! Durable counters: the `counters` projection table, written only by the projection (so a
//! replay rebuilds them) and read by `/metrics` and by planners that take sequence numbers.

use crate::kernel::plan::{ApplyError, redb};
use crate::kernel::store::rw;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

/// Projection: durable counters (sequence numbers, metric totals), name → big-endian u64.
pub const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");

/// The value of counter `name` in `table` (0 when it was never set).
pub fn get(table: &impl ReadableTable<&'static str, &'static [u8]>, name: &str) -> Result<u64, redb::Error> {
    rw::counter(table, name)
}

/// Adds `by` to counter `name`.
pub fn add(txn: &WriteTransaction, name: &str, by: u64) -> Result<(), ApplyError> {
    let mut table = txn.open_table(COUNTERS).map_err(redb)?;
    let n = rw::counter(&table, name).map_err(ApplyError::Storage)?;
    rw::set_counter(&mut table, name, n + by).map_err(ApplyError::Storage)
}

/// Adds one to counter `name`.
pub fn increment(txn: &WriteTransaction, name: &str) -> Result<(), ApplyError> {
    add(txn, name, 1)
}

/// Raises counter `name` to `value` if it is below it (a sequence number seen in an entry).
pub fn raise(txn: &WriteTransaction, name: &str, value: u64) -> Result<(), ApplyError> {
    let mut table = txn.open_table(COUNTERS).map_err(redb)?;
    if value > rw::counter(&table, name).map_err(ApplyError::Storage)? {
        rw::set_counter(&mut table, name, value).map_err(ApplyError::Storage)?;
    }
    Ok(())
}

/// Records `ms` in the durable histogram `name` with upper bounds `buckets` (seconds): one
/// counter per bucket (`name:b<i>`, the last is +Inf), `name:sum_ms` and `name:count`.
pub fn observe(txn: &WriteTransaction, name: &str, buckets: &[f64], ms: i64) -> Result<(), ApplyError> {
    let ms = ms.max(0) as u64;
    let seconds = ms as f64 / 1000.0;
    let i = buckets.iter().position(|b| seconds <= *b).unwrap_or(buckets.len());
    add(txn, &format!("{name}:b{i}"), 1)?;
    add(txn, &format!("{name}:sum_ms"), ms)?;
    add(txn, &format!("{name}:count"), 1)
}
