//! Durable counters: the `counters` projection table, written only by the projection (so a
//! replay rebuilds them) and read by `/metrics` and by planners that take sequence numbers.

use crate::kernel::plan::ApplyError;
use crate::kernel::store::rw;
use crate::kernel::tx::Tx;
use redb::{ReadableTable, TableDefinition};

/// Projection: durable counters (sequence numbers, metric totals), name → big-endian u64.
pub const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");

/// The value of counter `name` in `table` (0 when it was never set).
pub fn get(table: &impl ReadableTable<&'static str, &'static [u8]>, name: &str) -> Result<u64, redb::Error> {
    rw::counter(table, name)
}

/// Adds `by` to counter `name`.
pub fn add(tx: &Tx, name: &str, by: u64) -> Result<(), ApplyError> {
    let n = tx.counter(COUNTERS, name)?;
    tx.set_counter(COUNTERS, name, n + by)
}

/// Adds one to counter `name`.
pub fn increment(tx: &Tx, name: &str) -> Result<(), ApplyError> {
    add(tx, name, 1)
}

/// Raises counter `name` to `value` if it is below it (a sequence number seen in an entry).
pub fn raise(tx: &Tx, name: &str, value: u64) -> Result<(), ApplyError> {
    if value > tx.counter(COUNTERS, name)? {
        tx.set_counter(COUNTERS, name, value)?;
    }
    Ok(())
}

/// Records `ms` in the durable histogram `name` with upper bounds `buckets` (seconds): one
/// counter per bucket (`name:b<i>`, the last is +Inf), `name:sum_ms` and `name:count`.
pub fn observe(tx: &Tx, name: &str, buckets: &[f64], ms: i64) -> Result<(), ApplyError> {
    let ms = ms.max(0) as u64;
    let seconds = ms as f64 / 1000.0;
    let i = buckets.iter().position(|b| seconds <= *b).unwrap_or(buckets.len());
    add(tx, &format!("{name}:b{i}"), 1)?;
    add(tx, &format!("{name}:sum_ms"), ms)?;
    add(tx, &format!("{name}:count"), 1)
}
