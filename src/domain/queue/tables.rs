//! The queue domain's tables: their definitions, records and reads.

use crate::kernel::due::DUE;
use crate::kernel::store::read::{corrupt, records, rerr};
use crate::kernel::store::{Record, StoreError, rw};
use redb::{ReadTransaction, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Projection: jobs by id (`job-000000000001`).
pub const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// Projection index: (job type, priority-then-age order) → job id, for dispatchable jobs.
pub const READY: TableDefinition<(&str, u64), &str> = TableDefinition::new("ready");
/// Projection: dead-letter queue, job id → time of death (decimal ms).
pub const DLQ: TableDefinition<&str, &[u8]> = TableDefinition::new("dlq");
/// Projection: per-type queue counters, pause and budgets.
pub const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
/// Projection: enqueue idempotency, `tenant/key` → job id.
pub const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// Liveness (unledgered): job id → lease expiry as extended by heartbeats.
pub const LIVE_LEASES: TableDefinition<&str, u64> = TableDefinition::new("live_leases");
/// Liveness (unledgered): worker id → last seen, types, env.
pub const WORKERS: TableDefinition<&str, &[u8]> = TableDefinition::new("workers");

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
    /// A deploy agent's stella version (`stella agent run`); none for other workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Record for JobRecord {}
impl Record for QueueRecord {}
impl Record for WorkerRecord {}

pub fn job(txn: &ReadTransaction, id: &str) -> Result<Option<JobRecord>, StoreError> {
    rw::get(&txn.open_table(JOBS).map_err(rerr)?, "jobs", id)
}

pub fn queues(txn: &ReadTransaction) -> Result<Vec<(String, QueueRecord)>, StoreError> {
    let table = txn.open_table(QUEUES).map_err(rerr)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        out.push((
            k.value().to_owned(),
            QueueRecord::from_json_bytes(v.value()).map_err(|e| corrupt("queues", k.value(), e))?,
        ));
    }
    Ok(out)
}

/// Creation time of the oldest of the first `scan` ready jobs of `job_type`.
pub fn oldest_ready_ms(txn: &ReadTransaction, job_type: &str, scan: usize) -> Result<Option<i64>, StoreError> {
    let ready = txn.open_table(READY).map_err(rerr)?;
    let jobs = txn.open_table(JOBS).map_err(rerr)?;
    let mut oldest = None;
    for row in ready.range((job_type, 0u64)..=(job_type, u64::MAX)).map_err(rerr)?.take(scan) {
        let (_, id) = row.map_err(rerr)?;
        if let Some(j) = rw::get::<JobRecord>(&jobs, "jobs", id.value())? {
            oldest = Some(oldest.map_or(j.created_ms, |o: i64| o.min(j.created_ms)));
        }
    }
    Ok(oldest)
}

/// Ready jobs (the first `scan` of the ready index) that name locks: DAG steps waiting for
/// a lock someone else holds. They are dispatched, and granted their locks, once all are free.
pub fn lock_waiting_jobs(txn: &ReadTransaction, scan: usize) -> Result<Vec<JobRecord>, StoreError> {
    let ready = txn.open_table(READY).map_err(rerr)?;
    let jobs = txn.open_table(JOBS).map_err(rerr)?;
    let mut out = Vec::new();
    for row in ready.iter().map_err(rerr)?.take(scan) {
        let (_, id) = row.map_err(rerr)?;
        if let Some(j) = rw::get::<JobRecord>(&jobs, "jobs", id.value())?
            && j.payload["locks"].as_array().is_some_and(|l| !l.is_empty())
        {
            out.push(j);
        }
    }
    Ok(out)
}

/// One tenant's job counts per type and state, from its jobs (at most `scan` examined).
pub fn tenant_queue_counts(
    txn: &ReadTransaction,
    tenant: &str,
    scan: usize,
) -> Result<std::collections::BTreeMap<String, QueueRecord>, StoreError> {
    use crate::domain::queue::tables::JobState;
    let jobs = txn.open_table(JOBS).map_err(rerr)?;
    let mut out: std::collections::BTreeMap<String, QueueRecord> = Default::default();
    for row in jobs.iter().map_err(rerr)?.take(scan) {
        let (k, v) = row.map_err(rerr)?;
        let j = JobRecord::from_json_bytes(v.value()).map_err(|e| corrupt("jobs", k.value(), e))?;
        if j.tenant != tenant {
            continue;
        }
        let q = out.entry(j.job_type.clone()).or_default();
        match j.state {
            JobState::Ready => q.ready += 1,
            JobState::Delayed => q.delayed += 1,
            JobState::Leased => q.leased += 1,
            JobState::Dead => q.dead += 1,
            JobState::Succeeded => q.succeeded += 1,
            JobState::Replayed | JobState::Resolved | JobState::Cancelled => {}
        }
    }
    Ok(out)
}

/// Dead jobs visible to `tenant`, oldest death first.
pub fn dlq(txn: &ReadTransaction, tenant: Option<&str>, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
    let dlq = txn.open_table(DLQ).map_err(rerr)?;
    let jobs = txn.open_table(JOBS).map_err(rerr)?;
    let mut out = Vec::new();
    for row in dlq.iter().map_err(rerr)? {
        let (id, _) = row.map_err(rerr)?;
        if let Some(j) = rw::get::<JobRecord>(&jobs, "jobs", id.value())?
            && tenant.is_none_or(|t| t == j.tenant)
        {
            out.push(j);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}

pub fn workers(txn: &ReadTransaction, limit: usize) -> Result<Vec<WorkerRecord>, StoreError> {
    records(txn, WORKERS, "workers", limit, |_: &WorkerRecord| true)
}

/// The jobs each worker holds leased, from the lease timers (at most `scan` timers examined).
pub fn leases_by_worker(
    txn: &ReadTransaction,
    scan: usize,
) -> Result<std::collections::HashMap<String, Vec<String>>, StoreError> {
    let due = txn.open_table(DUE).map_err(rerr)?;
    let jobs = txn.open_table(JOBS).map_err(rerr)?;
    let mut out = std::collections::HashMap::new();
    for row in due.iter().map_err(rerr)?.take(scan) {
        let (k, _) = row.map_err(rerr)?;
        let key = k.value().1.to_owned();
        let Some(job) = key.strip_prefix("lease|").and_then(|r| r.split('|').next()) else { continue };
        if let Some(lease) = rw::get::<JobRecord>(&jobs, "jobs", job)?.and_then(|j| j.lease) {
            out.entry(lease.worker).or_insert_with(Vec::new).push(job.to_owned());
        }
    }
    Ok(out)
}
