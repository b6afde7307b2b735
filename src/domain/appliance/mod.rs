//! The appliance itself: its identity (the first entry of a store), its starts, runtime
//! configuration set by operators, secrets (ledgered by name only), exports made, and the
//! metric snapshots kept for exports of past windows.

pub mod apply;
pub mod plan;
pub mod tables;

pub use plan::plan;

use serde::{Deserialize, Serialize};

crate::events! {
    /// The appliance's own entries.
    pub enum ApplianceEvent {
        Initialized(Initialized) = "appliance.initialized",
        Started(Started) = "appliance.started",
        SecretSet(SecretSet) = "secret.set",
        ConfigSet(ConfigSet) = "config.set",
        /// What the pack covers: its manifest's summary, as `export` wrote it.
        ExportCreated(serde_json::Value) = "export.created",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Initialized {
    pub appliance_id: String,
    pub key_fingerprint: Option<String>,
    #[serde(default)]
    pub schema_version: u64,
}

/// History for auditors only (no projection): read leniently.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Started {
    pub version: String,
    pub pid: u32,
    pub dev: bool,
}

/// A secret was set: by name and length only, never its value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretSet {
    pub name: String,
    pub bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigSet {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ApplianceCommand {
    /// The first entry of a new store: the appliance's identity.
    Initialize { appliance_id: String, key_fingerprint: Option<String> },
    /// The daemon started: history for auditors, no projection.
    RecordStart { version: String, pid: u32, dev: bool },
    /// Store a secret's value (unledgered) and ledger that it was set, by name only.
    SetSecret { name: String, value: String },
    /// Set a runtime config key (validated by the caller with `runtime_config::validate`).
    SetConfig { key: String, value: String },
    /// An export pack was written and is durable: what it covers, so the next one links.
    RecordExport { data: serde_json::Value },
    /// Keep the current metric values (telemetry, unledgered) for exports of past windows.
    SnapshotMetrics { text: String, retain_ms: i64 },
}
