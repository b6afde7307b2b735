//! The appliance domain's tables: their definitions, records and reads.

use crate::kernel::store::StoreError;
use crate::kernel::store::read::{corrupt, rerr};
use redb::{ReadTransaction, ReadableTable, TableDefinition};

/// Projection: appliance identity (`id`).
pub const APPLIANCE: TableDefinition<&str, &[u8]> = TableDefinition::new("appliance");
/// Projection: runtime configuration set by operators.
pub const RUNTIME_CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("runtime_config");
/// Secret values by name. Never ledgered (the ledger is exported): only `secret.set` with the
/// name is; `db verify` does not compare this table.
pub const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
/// Telemetry (unledgered): snapshot time ms → the Prometheus text of `/metrics` at that time,
/// so an export covers a past window; pruned past `telemetry.metrics_retention_ms`.
pub const METRIC_SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("metric_snapshots");

pub fn appliance_id(txn: &ReadTransaction) -> Result<Option<String>, StoreError> {
    let table = txn.open_table(APPLIANCE).map_err(rerr)?;
    Ok(table.get("id").map_err(rerr)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
}

/// What the last export covered (`export.created` data), if any export was made.
pub fn last_export(txn: &ReadTransaction) -> Result<Option<serde_json::Value>, StoreError> {
    let table = txn.open_table(APPLIANCE).map_err(rerr)?;
    Ok(table.get("last_export").map_err(rerr)?.and_then(|v| serde_json::from_slice(v.value()).ok()))
}

/// Runtime config values set by operators.
pub fn runtime_config(txn: &ReadTransaction) -> Result<Vec<(String, String)>, StoreError> {
    let table = txn.open_table(RUNTIME_CONFIG).map_err(rerr)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        out.push((k.value().to_owned(), String::from_utf8_lossy(v.value()).into_owned()));
    }
    Ok(out)
}

/// A secret's value, for the executor only.
/// A secret's value, opened with the daemon's secrets key ([`crate::secrets`]).
pub fn secret(txn: &ReadTransaction, name: &str) -> Result<Option<String>, StoreError> {
    let table = txn.open_table(SECRETS).map_err(rerr)?;
    let Some(v) = table.get(name).map_err(rerr)? else { return Ok(None) };
    open_secret(name, v.value()).map(Some)
}

/// Every secret's value, for redaction.
pub fn secret_values(txn: &ReadTransaction) -> Result<Vec<String>, StoreError> {
    let table = txn.open_table(SECRETS).map_err(rerr)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        // One that does not open (its key was lost) is left out, said, and fails only the
        // step that needs it: it is set again with `stella secrets set`.
        match open_secret(k.value(), v.value()) {
            Ok(value) => out.push(value),
            Err(e) => tracing::warn!(error = %e, "a secret does not open; set it again"),
        }
    }
    Ok(out)
}

fn open_secret(name: &str, stored: &[u8]) -> Result<String, StoreError> {
    let key = crate::secrets::key().ok_or_else(|| corrupt("secrets", name, "no secrets key is loaded to open it"))?;
    key.open(name, stored).map_err(|e| corrupt("secrets", name, e))
}

/// The effective value of runtime key `key` in `txn`: as set, else the file's default.
pub fn runtime_value(
    txn: &ReadTransaction,
    config: &crate::config::Config,
    key: &str,
) -> Result<Option<String>, StoreError> {
    let table = txn.open_table(RUNTIME_CONFIG).map_err(rerr)?;
    let set = table.get(key).map_err(rerr)?.map(|v| String::from_utf8_lossy(v.value()).into_owned());
    Ok(set.or_else(|| crate::runtime_config::file_default(config, key)))
}
