//! The cache domain's tables: entries by fingerprint and their order of storing.

use crate::domain::cache::Parts;
use crate::kernel::store::read::{records, rerr};
use crate::kernel::store::{Record, StoreError, rw};
use redb::{ReadTransaction, TableDefinition};
use serde::{Deserialize, Serialize};

/// Projection: cache entries by fingerprint.
pub const CACHE: TableDefinition<&str, &[u8]> = TableDefinition::new("cache");
/// Projection: `<stored ms, 20 digits>|<key>` → key, oldest first (what eviction takes).
pub const CACHE_ORDER: TableDefinition<&str, &[u8]> = TableDefinition::new("cache_order");
/// Projection: the key a missed step is computing → its [`Flight`].
pub const CACHE_FLIGHTS: TableDefinition<&str, &[u8]> = TableDefinition::new("cache_flights");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheEntry {
    pub key: String,
    pub tenant: String,
    pub dag: String,
    pub step: String,
    /// The run whose step computed it.
    pub run: String,
    pub parts: Parts,
    pub outputs: serde_json::Value,
    pub bytes: u64,
    pub stored_ms: i64,
    pub expires_ms: i64,
    pub hits: u64,
    pub last_hit_ms: Option<i64>,
}

impl Record for CacheEntry {}

/// A key being computed: the step whose lookup missed (`run/step`) and the steps waiting for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flight {
    pub holder: String,
    pub waiters: Vec<String>,
}

impl Record for Flight {}

impl CacheEntry {
    pub fn order_key(&self) -> String {
        order_key(self.stored_ms, &self.key)
    }
}

pub fn order_key(stored_ms: i64, key: &str) -> String {
    format!("{:020}|{key}", stored_ms.max(0))
}

pub fn entry(txn: &ReadTransaction, key: &str) -> Result<Option<CacheEntry>, StoreError> {
    rw::get(&txn.open_table(CACHE).map_err(rerr)?, "cache", key)
}

/// Entries of `tenant` (every tenant's for `None`), of `dag` if named.
pub fn entries(txn: &ReadTransaction, tenant: Option<&str>, dag: Option<&str>) -> Result<Vec<CacheEntry>, StoreError> {
    records(txn, CACHE, "cache", usize::MAX, |e: &CacheEntry| {
        tenant.is_none_or(|t| t == e.tenant) && dag.is_none_or(|d| d == e.dag)
    })
}
