//! The projection of bundle entries: the installed bundles table and its quarantine marks.

use super::BundleEvent;
use crate::domain::bundles::tables::{BUNDLES, PLUGINS};
use crate::kernel::counters;
use crate::kernel::ledger::Entry;
use crate::kernel::{ApplyError, Tx};
use serde_json::{Value, json};

/// Applies a bundle entry. An import's record is the entry's data as written (with when and
/// by whom), so a record reads as it always did.
pub fn apply(tx: &Tx, entry: &Entry, event: BundleEvent) -> Result<(), ApplyError> {
    match event {
        BundleEvent::Removed(d) => {
            tx.remove(BUNDLES, &d.name)?;
            if d.kind == "plugin" {
                let pinned = tx
                    .get_bytes(PLUGINS, &d.name)?
                    .and_then(|v| serde_json::from_slice::<Value>(&v).ok())
                    .is_some_and(|p| p["digest"] == d.digest.as_str());
                if pinned {
                    tx.remove(PLUGINS, &d.name)?;
                }
            }
        }
        BundleEvent::Rejected(_) => counters::increment(tx, "bundle_verify_failures")?,
        BundleEvent::Quarantined(d) => {
            let Some(mut rec) = tx.get::<Value>(BUNDLES, &d.name)? else {
                return Err(ApplyError::entry(entry, format!("no bundle {}", d.name)));
            };
            rec["quarantined"] = json!(d.reason);
            counters::increment(tx, "bundle_verify_failures")?;
            tx.put(BUNDLES, &d.name, rec)?;
        }
        BundleEvent::Imported(d) => {
            let mut rec = entry.data.clone();
            rec["importedMs"] = json!(entry.time);
            rec["importedBy"] = json!(entry.actor);
            tx.put(BUNDLES, &d.name, rec)?;
        }
    }
    Ok(())
}
