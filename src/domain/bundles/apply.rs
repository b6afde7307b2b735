//! The projection of bundle entries: the installed bundles table and its quarantine marks.

use crate::domain::bundles::tables::{BUNDLES, PLUGINS};
use crate::kernel::ApplyError;
use crate::kernel::counters;
use crate::kernel::ledger::Entry;
use redb::{ReadableTable, WriteTransaction};
use serde_json::{Value, json};

/// Applies a bundle entry; `Ok(false)` if `entry.kind` is not a bundle kind.
pub fn apply(txn: &WriteTransaction, entry: &Entry) -> Result<bool, ApplyError> {
    match entry.kind.as_str() {
        "bundle.removed" => {
            let name = entry.data["name"].as_str().unwrap_or_default();
            let storage = |e: redb::TableError| ApplyError::Storage(e.into());
            txn.open_table(BUNDLES).map_err(storage)?.remove(name).map_err(|e| ApplyError::Storage(e.into()))?;
            if entry.data["kind"] == "plugin" {
                let mut plugins = txn.open_table(PLUGINS).map_err(storage)?;
                let pinned = plugins
                    .get(name)
                    .map_err(|e| ApplyError::Storage(e.into()))?
                    .and_then(|v| serde_json::from_slice::<Value>(v.value()).ok())
                    .is_some_and(|p| p["digest"] == entry.data["digest"]);
                if pinned {
                    plugins.remove(name).map_err(|e| ApplyError::Storage(e.into()))?;
                }
            }
            Ok(true)
        }
        "bundle.rejected" => {
            counters::increment(txn, "bundle_verify_failures")?;
            Ok(true)
        }
        "bundle.quarantined" => {
            let name = entry.data["name"].as_str().unwrap_or_default();
            let mut t = txn.open_table(BUNDLES).map_err(|e| ApplyError::Storage(e.into()))?;
            let mut rec: Value = match t.get(name).map_err(|e| ApplyError::Storage(e.into()))? {
                Some(v) => serde_json::from_slice(v.value()).map_err(|e| ApplyError::Record(e.to_string()))?,
                None => {
                    return Err(ApplyError::Entry {
                        seq: entry.seq,
                        kind: entry.kind.clone(),
                        reason: format!("no bundle {name}"),
                    });
                }
            };
            rec["quarantined"] = entry.data["reason"].clone();
            counters::increment(txn, "bundle_verify_failures")?;
            t.insert(name, serde_json::to_vec(&rec).expect("json").as_slice())
                .map_err(|e| ApplyError::Storage(e.into()))?;
            Ok(true)
        }
        "bundle.imported" => {
            let name = entry.data["name"].as_str().unwrap_or_default();
            let mut rec = entry.data.clone();
            rec["importedMs"] = json!(entry.time);
            rec["importedBy"] = json!(entry.actor);
            txn.open_table(BUNDLES)
                .map_err(|e| ApplyError::Storage(e.into()))?
                .insert(name, serde_json::to_vec(&rec).expect("json").as_slice())
                .map_err(|e| ApplyError::Storage(e.into()))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}
