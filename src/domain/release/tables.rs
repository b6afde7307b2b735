//! The releases domain's tables: their definitions, records and reads.

use crate::domain::release::spec::Environment;
use crate::domain::release::{ArtifactFile, DeploymentKind, DeploymentStatus};
use crate::kernel::store::read::{records, rerr};
use crate::kernel::store::{Record, StoreError, rw};
use redb::{ReadTransaction, TableDefinition};
use serde::{Deserialize, Serialize};

/// Projection: environments by name.
pub const ENVIRONMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("environments");
/// Projection: the artifact registry by `name@version`.
pub const ARTIFACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("artifacts");
/// Projection: deployments by id (`dep-N`).
pub const DEPLOYMENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployments");
/// Projection index: a deployment's run id → the deployment id.
pub const DEPLOYMENT_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("deployment_runs");

/// An environment: its declaration (from the latest release bundle) and its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvRecord {
    pub env: Environment,
    /// The release bundle (`name version`) that declares it now; `None` once a later release
    /// no longer declares it (its history stays).
    pub declared_by: Option<String>,
    /// The baseline's version: 1, then one more each time a release changes it.
    pub baseline_version: u32,
    /// The last successful deployment.
    pub current: Option<String>,
    /// Successful deployments, oldest first, the newest [`super::HISTORY_MAX`].
    pub successes: Vec<String>,
    /// The unfinished deployment, if any.
    pub in_flight: Option<String>,
}

impl Record for EnvRecord {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArtifactRecord {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub size: u64,
    pub files: Vec<ArtifactFile>,
    pub signer: String,
    pub fingerprint: String,
    pub imported_by: String,
    pub imported_ms: i64,
    pub backup: Option<String>,
    /// Deleted from the registry (its files removed; the record stays for the audit).
    pub deleted: Option<Deletion>,
    /// Brought back from the backup copy, the last time.
    pub restored_ms: Option<i64>,
}

impl Record for ArtifactRecord {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deletion {
    pub ms: i64,
    pub actor: String,
    pub reason: String,
}

impl ArtifactRecord {
    pub fn key(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentRecord {
    pub id: String,
    pub env: String,
    pub artifact: String,
    pub digest: String,
    pub kind: DeploymentKind,
    pub status: DeploymentStatus,
    pub run_id: String,
    pub actor: String,
    pub agent: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub error: Option<String>,
    pub failed_step: Option<String>,
    pub reason: Option<String>,
    pub forced: Vec<String>,
    /// The promotion it belongs to.
    pub promotion: Option<String>,
    /// The ledger entry of its last change.
    pub seq: u64,
}

impl Record for DeploymentRecord {}

/// The number in `dep-N` (for ordering).
pub fn deployment_number(id: &str) -> u64 {
    id.strip_prefix("dep-").and_then(|n| n.parse().ok()).unwrap_or(0)
}

pub fn environments(txn: &ReadTransaction) -> Result<Vec<EnvRecord>, StoreError> {
    let mut out = records(txn, ENVIRONMENTS, "environments", super::spec::ENVIRONMENTS_MAX * 16, |_: &EnvRecord| true)?;
    out.sort_by(|a, b| (a.env.order, &a.env.name).cmp(&(b.env.order, &b.env.name)));
    Ok(out)
}

pub fn environment(txn: &ReadTransaction, name: &str) -> Result<Option<EnvRecord>, StoreError> {
    rw::get(&txn.open_table(ENVIRONMENTS).map_err(rerr)?, "environments", name)
}

pub fn artifacts(txn: &ReadTransaction, limit: usize) -> Result<Vec<ArtifactRecord>, StoreError> {
    records(txn, ARTIFACTS, "artifacts", limit, |_: &ArtifactRecord| true)
}

pub fn artifact(txn: &ReadTransaction, key: &str) -> Result<Option<ArtifactRecord>, StoreError> {
    rw::get(&txn.open_table(ARTIFACTS).map_err(rerr)?, "artifacts", key)
}

pub fn deployment(txn: &ReadTransaction, id: &str) -> Result<Option<DeploymentRecord>, StoreError> {
    rw::get(&txn.open_table(DEPLOYMENTS).map_err(rerr)?, "deployments", id)
}

/// Deployments (of `env`), newest first.
pub fn deployments(txn: &ReadTransaction, env: Option<&str>) -> Result<Vec<DeploymentRecord>, StoreError> {
    let mut out = records(txn, DEPLOYMENTS, "deployments", super::DEPLOYMENT_SCAN_MAX, |d: &DeploymentRecord| {
        env.is_none_or(|e| d.env == e)
    })?;
    out.sort_by_key(|d| std::cmp::Reverse(deployment_number(&d.id)));
    Ok(out)
}

/// When deployment `d`'s state last changed: its own moves, and each step of its run being
/// queued, started or finished (a promotion's gates are its run's steps).
pub fn last_change_ms(txn: &ReadTransaction, d: &DeploymentRecord) -> Result<i64, StoreError> {
    let mut at = [Some(d.created_ms), d.started_ms, d.ended_ms].into_iter().flatten().max().unwrap_or(0);
    for s in crate::domain::runs::tables::steps(txn, &d.run_id)? {
        at = [Some(at), s.queued_ms, s.started_ms, s.finished_ms].into_iter().flatten().max().unwrap_or(at);
    }
    Ok(at)
}
