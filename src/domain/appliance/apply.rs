//! The projection of the appliance's entries.

use super::ApplianceEvent;
use super::tables::{APPLIANCE, RUNTIME_CONFIG};
use crate::kernel::{ApplyError, plan::redb};
use redb::WriteTransaction;

/// Applies an appliance entry.
pub fn apply(txn: &WriteTransaction, event: ApplianceEvent) -> Result<(), ApplyError> {
    match event {
        ApplianceEvent::Initialized(d) => {
            txn.open_table(APPLIANCE).map_err(redb)?.insert("id", d.appliance_id.as_bytes()).map_err(redb)?;
        }
        ApplianceEvent::Started(_) | ApplianceEvent::SecretSet(_) => {}
        ApplianceEvent::ExportCreated(data) => {
            txn.open_table(APPLIANCE)
                .map_err(redb)?
                .insert("last_export", data.to_string().as_bytes())
                .map_err(redb)?;
        }
        ApplianceEvent::ConfigSet(d) => {
            txn.open_table(RUNTIME_CONFIG).map_err(redb)?.insert(d.key.as_str(), d.value.as_bytes()).map_err(redb)?;
        }
    }
    Ok(())
}
