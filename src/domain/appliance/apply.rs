//! The projection of the appliance's entries.

use super::tables::{APPLIANCE, RUNTIME_CONFIG};
use crate::kernel::ledger::Entry;
use crate::kernel::{ApplyError, plan::redb};
use redb::WriteTransaction;

/// Applies an appliance entry; `Ok(false)` if `entry.kind` is not one.
pub fn apply(txn: &WriteTransaction, entry: &Entry) -> Result<bool, ApplyError> {
    match entry.kind.as_str() {
        "appliance.initialized" => {
            let id = entry.data["applianceId"].as_str().ok_or_else(|| ApplyError::entry(entry, "no applianceId"))?;
            txn.open_table(APPLIANCE).map_err(redb)?.insert("id", id.as_bytes()).map_err(redb)?;
        }
        "appliance.started" | "secret.set" => {}
        "export.created" => {
            let mut t = txn.open_table(APPLIANCE).map_err(redb)?;
            t.insert("last_export", entry.data.to_string().as_bytes()).map_err(redb)?;
        }
        "config.set" => {
            let key = entry.data["key"].as_str().ok_or_else(|| ApplyError::entry(entry, "no key"))?;
            let value = entry.data["value"].as_str().ok_or_else(|| ApplyError::entry(entry, "no value"))?;
            txn.open_table(RUNTIME_CONFIG).map_err(redb)?.insert(key, value.as_bytes()).map_err(redb)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}
