//! Store records: the values of the projection tables, serialized as JSON. They are built only
//! by [`super::projection`] from ledger entries and are never API DTOs (those live in `api::dto`).

use serde::{Deserialize, Serialize};

/// An API token. Only the sha256 of the token is kept; the secret is shown once at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: String,
    pub scopes: Vec<String>,
    /// Lowercase hex sha256 of the whole token string.
    pub sha256: String,
    pub description: Option<String>,
    pub created_ms: i64,
    pub created_by: String,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoked_reason: Option<String>,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Dispatchable now (in the ready index).
    Ready,
    /// Waiting for `not_before_ms` (retry backoff or a delayed enqueue), in the due index.
    Delayed,
    /// Held by a worker under a lease.
    Leased,
    Succeeded,
    /// In the dead-letter queue after its last attempt failed.
    Dead,
    /// A dead job that was replayed as a new job.
    Replayed,
    /// A dead DAG step job that left the dead-letter queue because its run recovered the step
    /// (retry, skip, abort, cancel, or a replay through the run).
    Resolved,
    /// Cancelled before it finished (its run was cancelled); a lease on it is stale.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseInfo {
    pub worker: String,
    pub token: u64,
    /// Expiry as granted; heartbeats extend it in the unledgered live-lease table.
    pub expires_ms: i64,
    pub granted_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    pub id: String,
    /// Enqueue order: "oldest first" within a priority.
    pub seq: u64,
    pub tenant: String,
    pub job_type: String,
    pub priority: u16,
    pub payload: serde_json::Value,
    /// Attempts started (leases granted).
    pub attempt: u32,
    pub max_attempts: u32,
    pub not_before_ms: i64,
    pub created_ms: i64,
    pub state: JobState,
    pub lease: Option<LeaseInfo>,
    pub last_error: Option<String>,
    pub idempotency_key: Option<String>,
    pub replay_of: Option<String>,
    pub replayed_as: Option<String>,
    pub result: Option<serde_json::Value>,
    pub finished_ms: Option<i64>,
    /// Retry backoff base of this job (a DAG step's `backoff`); absent: `queue.backoff_base`.
    #[serde(default)]
    pub backoff_ms: Option<u64>,
    /// Attempts cut short by the appliance's own restart (given back, not counted against
    /// `max_attempts`), bounded by `queue::plan::INTERRUPTIONS_MAX`.
    #[serde(default)]
    pub interruptions: u32,
}

/// A dispatch budget of one job type for one tenant (`*` for every tenant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Leases per second, in thousandths (so 50/s is 50 000).
    pub rate_milli_per_s: Option<u64>,
    pub burst: Option<u32>,
    /// Waiting jobs at most; enqueue beyond is refused with 429.
    pub max_depth: Option<u64>,
    /// When the budget ends and `previous` (or no budget) returns.
    pub until_ms: Option<i64>,
    pub set_by: String,
    /// A temporary budget (`--for`): what it overrides, restored at `until_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<Budget>>,
}

/// Per-type queue state: counters kept by the projection, pause, budgets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueRecord {
    pub ready: u64,
    pub delayed: u64,
    pub leased: u64,
    pub dead: u64,
    pub succeeded: u64,
    pub paused: bool,
    pub paused_by: Option<String>,
    pub paused_ms: Option<i64>,
    /// Tenant (or `*`) → budget.
    pub budgets: std::collections::BTreeMap<String, Budget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockHolder {
    pub owner: String,
    pub token: u64,
    pub acquired_ms: i64,
    pub expires_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockWaiter {
    pub owner: String,
    pub since_ms: i64,
    pub ttl_ms: u64,
}

/// A named lock on a resource key such as `env:prod`. It exists while held or waited for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRecord {
    pub id: String,
    pub resource: String,
    pub tenant: String,
    pub holder: Option<LockHolder>,
    /// First come, first served.
    pub waiters: Vec<LockWaiter>,
}

/// Liveness of a worker (unledgered): what it serves and when it was last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRecord {
    pub id: String,
    pub tenant: String,
    pub types: Vec<String>,
    pub env: Option<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// JSON encode/decode shared by every record type.
pub trait Record: Serialize + for<'de> Deserialize<'de> {
    fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("store record serializes")
    }
    fn from_json_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl Record for TokenRecord {}
impl Record for JobRecord {}
impl Record for QueueRecord {}
impl Record for LockRecord {}
impl Record for WorkerRecord {}

/// One registered version of a DAG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagVersion {
    pub version: u32,
    pub sha256: String,
    pub registered_ms: i64,
    pub registered_by: String,
    /// Registered from a local file in dev mode rather than from a signed bundle.
    pub unsigned: bool,
    pub disabled: bool,
    /// Plugin name → sealed digest this version runs (versions from signed bundles).
    #[serde(default)]
    pub plugins: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DagRecord {
    pub name: String,
    pub versions: Vec<DagVersion>,
    /// The version new runs start with.
    pub active: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Planning,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Queued,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepState {
    pub fn terminal(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Failed | StepState::Skipped | StepState::Cancelled)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub id: String,
    pub tenant: String,
    pub dag: String,
    pub version: u32,
    pub spec_sha256: String,
    pub inputs: serde_json::Value,
    pub inputs_hash: String,
    pub run_token: Option<String>,
    /// Plugin name → the sealed digest this run pinned at start.
    #[serde(default)]
    pub plugins: std::collections::BTreeMap<String, String>,
    pub status: RunStatus,
    pub created_ms: i64,
    pub created_by: String,
    pub finished_ms: Option<i64>,
    /// Steps queued or running: what `maxParallelSteps` bounds.
    pub active: u32,
    pub steps: u32,
    pub terminal: u32,
    pub failed: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRecord {
    pub run: String,
    pub name: String,
    pub index: u32,
    pub plugin: String,
    pub state: StepState,
    /// Needs not yet finished.
    pub pending_needs: u32,
    pub attempts: u32,
    pub job: Option<String>,
    pub worker: Option<String>,
    pub queued_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    pub outputs: serde_json::Value,
    /// Why a pending step waits, when it is not its needs.
    pub wait: Option<String>,
    /// Its key in the `run_waiting` queue while it waits for a slot.
    pub wait_key: Option<String>,
    /// Its latest attempts (at most [`StepRecord::HISTORY_MAX`]), oldest first: how each ended.
    #[serde(default)]
    pub history: Vec<AttemptRecord>,
}

/// One attempt of a step, as the trace shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker: String,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// `succeeded`, `failed`, `retrying`, `interrupted`, `cancelled`; none while it runs.
    pub outcome: Option<String>,
    pub error_code: Option<String>,
    pub error: Option<String>,
}

impl StepRecord {
    /// A step of a new run: pending on `needs` steps, never attempted.
    pub fn pending(run: &str, name: &str, index: u32, plugin: &str, needs: u32) -> Self {
        StepRecord {
            run: run.to_owned(),
            name: name.to_owned(),
            index,
            plugin: plugin.to_owned(),
            state: StepState::Pending,
            pending_needs: needs,
            attempts: 0,
            job: None,
            worker: None,
            queued_ms: None,
            started_ms: None,
            finished_ms: None,
            error_code: None,
            error: None,
            outputs: serde_json::Value::Null,
            wait: None,
            wait_key: None,
            history: vec![],
        }
    }

    /// Attempts kept in [`StepRecord::history`].
    pub const HISTORY_MAX: usize = 16;

    /// Ends the running attempt in the history with `outcome` (and the entry's error).
    pub fn end_attempt(&mut self, outcome: &str, time: i64, data: &serde_json::Value) {
        if let Some(a) = self.history.last_mut().filter(|a| a.outcome.is_none()) {
            a.finished_ms = Some(time);
            a.outcome = Some(outcome.to_owned());
            a.error_code = data["errorCode"].as_str().map(str::to_owned);
            a.error = data["error"].as_str().map(|e| e.chars().take(512).collect());
        }
    }
}

impl Record for DagRecord {}
impl Record for RunRecord {}
impl Record for StepRecord {}
