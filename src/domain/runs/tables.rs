//! The runs domain's tables: their definitions, records and reads.

use crate::kernel::store::read::{corrupt, records, rerr};
use crate::kernel::store::{Record, StoreError, rw};
use redb::{ReadTransaction, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Projection: DAGs by name, with their versions.
pub const DAGS: TableDefinition<&str, &[u8]> = TableDefinition::new("dags");
/// Projection: DAG spec texts by `name@version`.
pub const DAG_SPECS: TableDefinition<&str, &[u8]> = TableDefinition::new("dag_specs");
/// Projection: cron schedules, `dag|index` → schedule JSON (next fire, paused, last run).
pub const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
/// Projection: runs by id (`run-1`).
pub const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
/// Projection: steps by `run/step`.
pub const STEPS: TableDefinition<&str, &[u8]> = TableDefinition::new("steps");
/// Projection: run idempotency, `tenant/runToken` → run id.
pub const RUN_TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("run_tokens");
/// Projection: steps waiting for a `maxParallelSteps` slot, `run/seq` → step name, FIFO.
pub const RUN_WAITING: TableDefinition<&str, &[u8]> = TableDefinition::new("run_waiting");

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
    /// Succeeded, and waiting for its approval (`checkpoint_after`): holds no slot.
    CheckpointPending,
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
    /// Steps in `checkpoint_pending`: the run does not settle while one waits.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub checkpoints: u32,
    /// A child run: the parent run's step that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<crate::domain::runs::ParentLink>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
    /// The latest approval its checkpoint asked for (`checkpoint_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Its latest cache lookup (`cache`): hit or miss, key, a hit's entry age and hit count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::domain::cache::StepCache>,
    /// A sub-orchestration step's latest child run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child: Option<String>,
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
            approval: None,
            cache: None,
            child: None,
        }
    }

    /// Attempts kept in [`StepRecord::history`].
    pub const HISTORY_MAX: usize = 16;

    /// Ends the running attempt in the history with `outcome` and its error.
    pub fn end_attempt(&mut self, outcome: &str, time: i64, error: Option<&str>, code: Option<&str>) {
        if let Some(a) = self.history.last_mut().filter(|a| a.outcome.is_none()) {
            a.finished_ms = Some(time);
            a.outcome = Some(outcome.to_owned());
            a.error_code = code.map(str::to_owned);
            a.error = error.map(|e| e.chars().take(512).collect());
        }
    }
}

impl Record for DagRecord {}
impl Record for RunRecord {}
impl Record for StepRecord {}

pub fn run(txn: &ReadTransaction, id: &str) -> Result<Option<RunRecord>, StoreError> {
    rw::get(&txn.open_table(RUNS).map_err(rerr)?, "runs", id)
}

pub fn runs(txn: &ReadTransaction, tenant: Option<&str>, limit: usize) -> Result<Vec<RunRecord>, StoreError> {
    records(txn, RUNS, "runs", limit, |r: &RunRecord| tenant.is_none_or(|t| t == r.tenant))
}

/// The steps of a run, in the table's key order.
pub fn steps(txn: &ReadTransaction, run: &str) -> Result<Vec<StepRecord>, StoreError> {
    let table = txn.open_table(STEPS).map_err(rerr)?;
    let (from, to) = (format!("{run}/"), format!("{run}/\u{10FFFF}"));
    let mut out = Vec::new();
    for row in table.range(from.as_str()..to.as_str()).map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        out.push(StepRecord::from_json_bytes(v.value()).map_err(|e| corrupt("steps", k.value(), e))?);
    }
    Ok(out)
}

pub fn dags(txn: &ReadTransaction) -> Result<Vec<DagRecord>, StoreError> {
    records(txn, DAGS, "dags", usize::MAX, |_: &DagRecord| true)
}

pub fn dag_spec(txn: &ReadTransaction, name: &str, version: u32) -> Result<Option<String>, StoreError> {
    let table = txn.open_table(DAG_SPECS).map_err(rerr)?;
    let key = format!("{name}@{version}");
    Ok(table.get(key.as_str()).map_err(rerr)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
}

pub fn schedules(txn: &ReadTransaction) -> Result<Vec<serde_json::Value>, StoreError> {
    let table = txn.open_table(SCHEDULES).map_err(rerr)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        out.push(serde_json::from_slice(v.value()).map_err(|e| corrupt("schedules", k.value(), e))?);
    }
    Ok(out)
}
