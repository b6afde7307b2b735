//! The projection of the appliance's entries.

use super::ApplianceEvent;
use super::tables::{APPLIANCE, RUNTIME_CONFIG};
use crate::kernel::{ApplyError, Tx};

/// Applies an appliance entry.
pub fn apply(tx: &Tx, event: ApplianceEvent) -> Result<(), ApplyError> {
    match event {
        ApplianceEvent::Initialized(d) => tx.put_bytes(APPLIANCE, "id", d.appliance_id.as_bytes()),
        ApplianceEvent::Started(_) | ApplianceEvent::SecretSet(_) => Ok(()),
        ApplianceEvent::ExportCreated(data) => tx.put_bytes(APPLIANCE, "last_export", data.to_string().as_bytes()),
        ApplianceEvent::ConfigSet(d) => tx.put_bytes(RUNTIME_CONFIG, &d.key, d.value.as_bytes()),
    }
}
