//! Planning the appliance's own commands.

use super::tables::APPLIANCE;
use super::{ApplianceCommand, ApplianceEvent, ConfigSet, Initialized, SecretSet, Started};
use crate::domain::live::{Effects, LiveWrite};
use crate::kernel::event::Event;
use crate::kernel::store::SCHEMA_VERSION;
use crate::kernel::{CommandError, storage};
use redb::{ReadableTable, WriteTransaction};

pub fn plan(cmd: &ApplianceCommand, txn: &WriteTransaction) -> Result<Effects, CommandError> {
    Ok(match cmd {
        ApplianceCommand::Initialize { appliance_id, key_fingerprint } => {
            let table = txn.open_table(APPLIANCE).map_err(storage)?;
            if table.get("id").map_err(storage)?.is_some() {
                return Err(CommandError::conflict("already_initialized", "the store is already initialized"));
            }
            let event = ApplianceEvent::Initialized(Initialized {
                appliance_id: appliance_id.clone(),
                key_fingerprint: key_fingerprint.clone(),
                schema_version: SCHEMA_VERSION,
            });
            vec![event.draft("", vec![appliance_id.clone()])].into()
        }
        ApplianceCommand::RecordStart { version, pid, dev } => {
            let event = ApplianceEvent::Started(Started { version: version.clone(), pid: *pid, dev: *dev });
            vec![event.draft("", vec![])].into()
        }
        ApplianceCommand::RecordExport { data } => {
            let pack = data["packSha256"].as_str().unwrap_or_default().to_owned();
            vec![ApplianceEvent::ExportCreated(data.clone()).draft("", vec![pack])].into()
        }
        ApplianceCommand::SnapshotMetrics { text, retain_ms } => Effects {
            live: vec![LiveWrite::MetricSnapshot { text: text.clone(), retain_ms: *retain_ms }],
            ..Effects::default()
        },
        ApplianceCommand::SetSecret { name, value } => Effects {
            drafts: vec![
                ApplianceEvent::SecretSet(SecretSet { name: name.clone(), bytes: value.len() })
                    .draft("", vec![name.clone()]),
            ],
            live: vec![LiveWrite::Secret { name: name.clone(), value: value.clone() }],
            note: None,
        },
        ApplianceCommand::SetConfig { key, value } => {
            let event = ApplianceEvent::ConfigSet(ConfigSet { key: key.clone(), value: value.clone() });
            vec![event.draft("", vec![key.clone()])].into()
        }
    })
}
