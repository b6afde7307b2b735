//! Planning the appliance's own commands.

use super::ApplianceCommand;
use super::tables::APPLIANCE;
use crate::domain::live::{Effects, LiveWrite};
use crate::kernel::ledger::Draft;
use crate::kernel::store::SCHEMA_VERSION;
use crate::kernel::{CommandError, storage};
use redb::{ReadableTable, WriteTransaction};
use serde_json::json;

fn draft(kind: &'static str, subjects: Vec<String>, data: serde_json::Value) -> Draft {
    Draft { tenant: String::new(), kind, subjects, data }
}

pub fn plan(cmd: &ApplianceCommand, txn: &WriteTransaction) -> Result<Effects, CommandError> {
    Ok(match cmd {
        ApplianceCommand::Initialize { appliance_id, key_fingerprint } => {
            let table = txn.open_table(APPLIANCE).map_err(storage)?;
            if table.get("id").map_err(storage)?.is_some() {
                return Err(CommandError::conflict("already_initialized", "the store is already initialized"));
            }
            vec![draft(
                "appliance.initialized",
                vec![appliance_id.clone()],
                json!({ "applianceId": appliance_id, "keyFingerprint": key_fingerprint,
                        "schemaVersion": SCHEMA_VERSION }),
            )]
            .into()
        }
        ApplianceCommand::RecordStart { version, pid, dev } => {
            vec![draft("appliance.started", vec![], json!({ "version": version, "pid": pid, "dev": dev }))].into()
        }
        ApplianceCommand::RecordExport { data } => {
            let pack = data["packSha256"].as_str().unwrap_or_default().to_owned();
            vec![draft("export.created", vec![pack], data.clone())].into()
        }
        ApplianceCommand::SnapshotMetrics { text, retain_ms } => Effects {
            live: vec![LiveWrite::MetricSnapshot { text: text.clone(), retain_ms: *retain_ms }],
            ..Effects::default()
        },
        ApplianceCommand::SetSecret { name, value } => Effects {
            drafts: vec![draft("secret.set", vec![name.clone()], json!({ "name": name, "bytes": value.len() }))],
            live: vec![LiveWrite::Secret { name: name.clone(), value: value.clone() }],
            note: None,
        },
        ApplianceCommand::SetConfig { key, value } => {
            vec![draft("config.set", vec![key.clone()], json!({ "key": key, "value": value }))].into()
        }
    })
}
