//! The projection of bundle entries: the installed bundles table and its quarantine marks.

use super::BundleEvent;
use crate::domain::bundles::tables::{BUNDLES, PLUGINS};
use crate::kernel::ApplyError;
use crate::kernel::counters;
use crate::kernel::ledger::Entry;
use crate::kernel::plan::redb;
use redb::{ReadableTable, WriteTransaction};
use serde_json::{Value, json};

/// Applies a bundle entry. An import's record is the entry's data as written (with when and
/// by whom), so a record reads as it always did.
pub fn apply(txn: &WriteTransaction, entry: &Entry, event: BundleEvent) -> Result<(), ApplyError> {
    match event {
        BundleEvent::Removed(d) => {
            txn.open_table(BUNDLES).map_err(redb)?.remove(d.name.as_str()).map_err(redb)?;
            if d.kind == "plugin" {
                let mut plugins = txn.open_table(PLUGINS).map_err(redb)?;
                let pinned = plugins
                    .get(d.name.as_str())
                    .map_err(redb)?
                    .and_then(|v| serde_json::from_slice::<Value>(v.value()).ok())
                    .is_some_and(|p| p["digest"] == d.digest.as_str());
                if pinned {
                    plugins.remove(d.name.as_str()).map_err(redb)?;
                }
            }
        }
        BundleEvent::Rejected(_) => counters::increment(txn, "bundle_verify_failures")?,
        BundleEvent::Quarantined(d) => {
            let mut t = txn.open_table(BUNDLES).map_err(redb)?;
            let mut rec: Value = match t.get(d.name.as_str()).map_err(redb)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(|e| ApplyError::Record(e.to_string()))?,
                None => return Err(ApplyError::entry(entry, format!("no bundle {}", d.name))),
            };
            rec["quarantined"] = json!(d.reason);
            counters::increment(txn, "bundle_verify_failures")?;
            t.insert(d.name.as_str(), serde_json::to_vec(&rec).expect("json").as_slice()).map_err(redb)?;
        }
        BundleEvent::Imported(d) => {
            let mut rec = entry.data.clone();
            rec["importedMs"] = json!(entry.time);
            rec["importedBy"] = json!(entry.actor);
            let mut t = txn.open_table(BUNDLES).map_err(redb)?;
            t.insert(d.name.as_str(), serde_json::to_vec(&rec).expect("json").as_slice()).map_err(redb)?;
        }
    }
    Ok(())
}
