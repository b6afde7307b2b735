//! The locks domain's tables: their definitions, records and reads.

use crate::kernel::store::read::{records, rerr};
use crate::kernel::store::{Record, StoreError, rw};
use redb::{ReadTransaction, TableDefinition};
use serde::{Deserialize, Serialize};

/// Projection: locks by resource key.
pub const LOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("locks");
/// Projection index: lock id (`lock-1`) → resource key.
pub const LOCK_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("lock_ids");
/// Projection: resource versions bumped by lock-guarded updates (u64 big-endian).
pub const RESOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("resources");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockHolder {
    pub owner: String,
    pub token: u64,
    pub acquired_ms: i64,
    pub expires_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockWaiter {
    pub owner: String,
    pub since_ms: i64,
    pub ttl_ms: u64,
}

/// A named lock on a resource key such as `env:prod`. It exists while held or waited for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRecord {
    pub id: String,
    pub resource: String,
    pub tenant: String,
    pub holder: Option<LockHolder>,
    /// First come, first served.
    pub waiters: Vec<LockWaiter>,
}

impl Record for LockRecord {}

pub fn locks(txn: &ReadTransaction, tenant: Option<&str>, limit: usize) -> Result<Vec<LockRecord>, StoreError> {
    records(txn, LOCKS, "locks", limit, |l: &LockRecord| tenant.is_none_or(|t| t == l.tenant))
}

pub fn resource_version(txn: &ReadTransaction, resource: &str) -> Result<u64, StoreError> {
    rw::counter(&txn.open_table(RESOURCES).map_err(rerr)?, resource).map_err(rerr)
}
