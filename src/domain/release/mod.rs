//! Releases (DESIGN.md §9): environments declared by a signed `release` bundle, the artifact
//! registry (signed `artifact` bundles, content-addressed on disk, recorded here), and
//! deployments — each a run of its environment's deployment DAG through the environment's
//! agent, created, started and settled in the same transactions as its run's entries.

pub mod apply;
pub mod plan;
pub mod retention;
pub mod spec;
pub mod tables;

pub use plan::{follow, plan};
use serde::{Deserialize, Serialize};
pub use spec::Environment;

/// The tenant deployment and probe runs belong to (see the queue's).
pub use crate::domain::queue::SITE_TENANT;

/// Deployments listed or scanned at most.
pub const DEPLOYMENT_SCAN_MAX: usize = 100_000;
/// Successful deployments remembered per environment (for its last known good).
pub const HISTORY_MAX: usize = 100;

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ReleaseCommand {
    /// Record an artifact the daemon verified and sealed into the registry.
    RegisterArtifact(ArtifactImported),
    /// Start a deployment of `artifact` to `env`: its run, in the same transaction.
    Deploy(DeployRequest),
    /// Ask the environment's agent how its target is: a run of its probe DAG.
    Probe(ProbeRequest),
    /// `promotion abort`: end an unfinished promotion as failed with the operator's reason (its
    /// run cancelled, its locks released, in the same transaction).
    Abort { promotion: String, reason: String },
    /// `orch repair --deployment`: settle an unfinished deployment (its run, if still going,
    /// is cancelled in the same transaction).
    Settle { id: String, succeeded: bool, reason: String },
    /// Delete an artifact retention does not keep (its files go after the entry commits).
    DeleteArtifact { key: String, reason: String },
    /// Record an artifact brought back from its backup copy (already verified and sealed).
    RestoreArtifact(ArtifactRestored),
    /// Dev mode: environments declared from a local `release.toml`, unsigned (their generated
    /// DAGs registered unsigned in the same transaction).
    DeclareUnsigned { source: String, digest: String, environments: Vec<Environment>, dags: Vec<(String, String)> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeRequest {
    pub tenant: String,
    pub env: String,
    /// The agent's target, resolved on this host.
    pub target: String,
    /// The deployment to check for (default: the current one).
    pub deployment: Option<String>,
}

/// What a deployment is asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployRequest {
    pub tenant: String,
    pub env: String,
    /// `name@version`; `None` for a rollback to the last known good (the caller resolved it) or
    /// a reset to the baseline.
    pub artifact: String,
    /// The digest the caller verified on disk just now.
    pub digest: String,
    pub kind: DeploymentKind,
    /// Break the environment's lock (held by a stuck holder); ledgered with the actor.
    pub force: bool,
    /// A promotion of an artifact not yet deployed successfully where the environment promotes
    /// from (an admin's choice, ledgered in the deployment's `forced`).
    pub force_path: bool,
    /// The agent's target, resolved on this host.
    pub target: String,
    /// The artifact's files, resolved on this host.
    pub source: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentKind {
    Direct,
    Rollback,
    Reset,
    Promotion,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Direct => "direct",
            DeploymentKind::Rollback => "rollback",
            DeploymentKind::Reset => "reset",
            DeploymentKind::Promotion => "promotion",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    Pending,
    InProgress,
    Success,
    Failed,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Pending => "pending",
            DeploymentStatus::InProgress => "in_progress",
            DeploymentStatus::Success => "success",
            DeploymentStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::InProgress, Self::Success, Self::Failed].into_iter().find(|k| k.as_str() == s)
    }

    pub fn terminal(self) -> bool {
        matches!(self, DeploymentStatus::Success | DeploymentStatus::Failed)
    }
}

/// `dep-N`.
pub fn deployment_id(n: u64) -> String {
    format!("dep-{n}")
}

/// `name@version` split, when both parts are there.
pub fn split_artifact(a: &str) -> Option<(&str, &str)> {
    a.split_once('@').filter(|(n, v)| !n.is_empty() && !v.is_empty())
}

crate::events! {
    /// The entries of the releases domain.
    pub enum ReleaseEvent {
        Declared(ReleaseDeclared) = "release.declared",
        ArtifactImported(ArtifactImported) = "artifact.imported",
        DeploymentCreated(DeploymentCreated) = "deployment.created",
        DeploymentStarted(DeploymentStarted) = "deployment.started",
        DeploymentSucceeded(DeploymentRef) = "deployment.succeeded",
        DeploymentFailed(DeploymentFailed) = "deployment.failed",
        DeploymentRepaired(DeploymentRepaired) = "deployment.repaired",
        ArtifactDeleted(ArtifactDeleted) = "artifact.deleted",
        ArtifactRestored(ArtifactRestored) = "artifact.restored",
        PromotionAborted(PromotionAborted) = "promotion.aborted",
    }
}

/// A release bundle's environments, replacing the declaration before (state — current
/// deployment, history — stays with each environment's name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseDeclared {
    pub bundle: String,
    pub version: String,
    pub digest: String,
    pub environments: Vec<Environment>,
}

/// An artifact in the registry: `name@version`, its payload digest, files and provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactImported {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub size: u64,
    pub files: Vec<ArtifactFile>,
    pub signer: String,
    pub fingerprint: String,
    /// Where a verified second copy of the bundle was written (`registry.backup_dir`).
    pub backup: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactFile {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentCreated {
    pub id: String,
    pub env: String,
    pub artifact: String,
    pub digest: String,
    pub kind: DeploymentKind,
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The locks `--force` broke for it, as `lock-id (owner, token N)`, and a promotion path
    /// `--force-path` skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forced: Vec<String>,
    /// The promotion (`prom-N`) it is, for a deployment of kind promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<String>,
}

/// An operator ended an unfinished promotion (`promotion abort`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromotionAborted {
    pub promotion: String,
    /// Its deployment.
    pub id: String,
    pub reason: String,
}

/// `prom-N`.
pub fn promotion_id(n: u64) -> String {
    format!("prom-{n}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStarted {
    pub id: String,
    pub agent: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRef {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentFailed {
    pub id: String,
    pub error: String,
    /// The step that failed (`deploy`, `health`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

/// An unfinished deployment settled by an operator (`orch repair --deployment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRepaired {
    pub id: String,
    pub status: DeploymentStatus,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactDeleted {
    pub artifact: String,
    pub digest: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRestored {
    pub artifact: String,
    pub digest: String,
    /// The backup copy it came from.
    pub from: String,
}
