//! Planning the appliance's own commands.

use super::tables::{APPLIANCE, RUNTIME_CONFIG};
use super::{ApplianceCommand, ApplianceEvent, ConfigSet, Initialized, SecretSet, Started};
use crate::domain::live::{Effects, LiveWrite};
use crate::kernel::PlanCtx;
use crate::kernel::event::Event;
use crate::kernel::store::SCHEMA_VERSION;
use crate::kernel::{CommandError, storage};
use crate::runtime_config;
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

/// The effective runtime value of `key`: set by an operator, else the file's default.
pub fn runtime_value(txn: &WriteTransaction, ctx: &PlanCtx, key: &str) -> Result<Option<String>, CommandError> {
    let table = txn.open_table(RUNTIME_CONFIG).map_err(storage)?;
    let set = table.get(key).map_err(storage)?.map(|v| String::from_utf8_lossy(v.value()).into_owned());
    Ok(set.or_else(|| runtime_config::file_default(ctx.defaults, key)))
}

/// The effective runtime value of `key` as a duration in milliseconds.
pub fn runtime_ms(txn: &WriteTransaction, ctx: &PlanCtx, key: &str) -> Result<u64, CommandError> {
    runtime_value(txn, ctx, key)?
        .and_then(|v| runtime_config::as_ms(&v))
        .ok_or_else(|| CommandError::Storage(format!("runtime config {key} has no duration value")))
}

/// The effective runtime value of `key` as a count.
pub fn runtime_u64(txn: &WriteTransaction, ctx: &PlanCtx, key: &str) -> Result<u64, CommandError> {
    runtime_value(txn, ctx, key)?
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CommandError::Storage(format!("runtime config {key} has no number value")))
}
