//! The durable job queue: jobs, leases with fencing tokens, retries with backoff, the
//! dead-letter queue, pause and budgets. `plan` turns queue commands into ledger drafts (and
//! unledgered liveness writes); `apply` is the projection of queue entries; `tables` holds
//! its tables and records.

pub mod apply;
pub mod plan;
pub mod tables;

pub use plan::{QueueCommand, ReplaySelector};

/// The tenant of the site's own jobs (deployment and probe runs, and the locks their steps
/// take): never one of `tenants.allowed`, so a tenant's token, worker or lease cannot see,
/// take or cancel them. Only its jobs can be bound to a remote deploy agent.
pub const SITE_TENANT: &str = "site";

/// The in-process executor's worker names start with this (then the daemon's pid); the API
/// refuses it for other workers.
pub const LOCAL_WORKER: &str = "local-";

/// Entry kinds after which ready work may exist for a waiting lease request or the executor:
/// a new or returning job, a resumed type, an ended budget, and a freed lock (a step that
/// names the lock is dispatched only once it is free).
pub const WAKE_KINDS: &[&str] = &[
    "job.enqueued",
    "job.ready",
    "job.failed",
    "lease.expired",
    "lease.interrupted",
    "queue.resumed",
    "dlq.replayed",
    "queue.budget_cleared",
    "queue.budget_restored",
    "lock.released",
    "lock.force_released",
    "lock.expired",
];

/// Whether a committed `entry` may have made work ready for a worker whose job types `serves`
/// accepts: a new, replayed, resumed or unbudgeted job of another type does not wake it.
pub fn wakes(entry: &crate::kernel::ledger::Entry, serves: impl Fn(&str) -> bool) -> bool {
    if !WAKE_KINDS.contains(&entry.kind.as_str()) {
        return false;
    }
    // Read in place: this runs for every committed entry, for every waiting worker.
    #[derive(Deserialize)]
    struct Typed<'a> {
        #[serde(rename = "type", borrow, default)]
        job_type: Option<&'a str>,
        #[serde(borrow, default)]
        job: Option<TypedJob<'a>>,
    }
    #[derive(Deserialize)]
    struct TypedJob<'a> {
        #[serde(rename = "type", borrow)]
        job_type: &'a str,
    }
    match Typed::deserialize(&entry.data) {
        Ok(Typed { job_type: Some(t), .. }) | Ok(Typed { job: Some(TypedJob { job_type: t }), .. }) => serves(t),
        _ => true,
    }
}

/// Orders the ready index: higher priority first, then oldest (lowest enqueue seq) first.
pub fn ready_order(priority: u16, seq: u64) -> u64 {
    (u64::from(u16::MAX - priority) << 48) | (seq & ((1 << 48) - 1))
}

/// Timer keys in the due index.
pub mod timer_key {
    pub fn ready(job: &str) -> String {
        format!("ready|{job}")
    }
    pub fn lease(job: &str, token: u64) -> String {
        format!("lease|{job}|{token}")
    }
    pub fn budget(job_type: &str, tenant: &str) -> String {
        format!("budget|{job_type}|{tenant}")
    }
}

/// Job ids are sequential so that the ready index and job table grow at their ends.
pub fn job_id(seq: u64) -> String {
    format!("job-{seq:012}")
}

/// The next job sequence number, shared by everything one command enqueues (a tick may enqueue
/// for several runs).
pub fn take_job_seq(
    txn: &redb::WriteTransaction,
    ctx: &mut crate::kernel::PlanCtx,
) -> Result<u64, crate::kernel::CommandError> {
    let next = match ctx.scratch.get::<NextJobSeq>().0 {
        Some(n) => n,
        None => {
            crate::kernel::counters::get(
                &txn.open_table(crate::kernel::counters::COUNTERS).map_err(crate::kernel::storage)?,
                "job_seq",
            )
            .map_err(crate::kernel::storage)?
                + 1
        }
    };
    ctx.scratch.get::<NextJobSeq>().0 = Some(next + 1);
    Ok(next)
}

/// A token bucket of a rate budget, kept in the writer's memory: after a restart every bucket
/// starts full, which never lets more through than one burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub last_ms: i64,
}

/// The rate buckets by (job type, tenant): derived state of the planner.
#[derive(Debug, Default)]
pub struct Buckets(pub std::collections::HashMap<(String, String), Bucket>);

/// The next job sequence number while one command enqueues several jobs.
#[derive(Debug, Default)]
pub struct NextJobSeq(pub Option<u64>);

use crate::domain::queue::apply::{EnqueuedJob, Grant};
use crate::domain::queue::tables::Budget;
use serde::{Deserialize, Serialize};

crate::events! {
    /// The queue's entries.
    pub enum QueueEvent {
        Enqueued(EnqueuedJob) = "job.enqueued",
        LeaseGranted(LeaseGranted) = "lease.granted",
        Ready(JobsReady) = "job.ready",
        Paused(JobType) = "queue.paused",
        Resumed(JobType) = "queue.resumed",
        BudgetSet(BudgetSet) = "queue.budget_set",
        BudgetCleared(BudgetCleared) = "queue.budget_cleared",
        BudgetRestored(BudgetRestored) = "queue.budget_restored",
        DlqReplayed(DlqReplayed) = "dlq.replayed",
        DlqPurged(DlqPurged) = "dlq.purged",
        Cancelled(JobCancelled) = "job.cancelled",
        DlqResolved(DlqResolved) = "dlq.resolved",
        Succeeded(JobSucceeded) = "job.succeeded",
        Failed(JobFailed) = "job.failed",
        LeaseExpired(LeaseExpired) = "lease.expired",
        LeaseInterrupted(LeaseInterrupted) = "lease.interrupted",
    }
}

impl QueueEvent {
    /// The job and lease token whose attempt this entry ends, for an attempt's end.
    pub fn attempt_end(&self) -> Option<(&str, u64)> {
        match self {
            QueueEvent::Succeeded(e) => Some((&e.job_id, e.token)),
            QueueEvent::Failed(e) => Some((&e.job_id, e.token)),
            QueueEvent::LeaseExpired(e) => Some((&e.job_id, e.token)),
            QueueEvent::LeaseInterrupted(e) => Some((&e.job_id, e.token)),
            _ => None,
        }
    }

    /// Where a failed, expired or interrupted attempt sent its job.
    pub fn next(&self) -> Option<&Next> {
        match self {
            QueueEvent::Failed(e) => Some(&e.next),
            QueueEvent::LeaseExpired(e) => Some(&e.next),
            QueueEvent::LeaseInterrupted(e) => Some(&e.next),
            _ => None,
        }
    }
}

/// Where an attempt that did not succeed sends its job: back to the queue at `notBeforeMs`, or
/// to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "next", rename_all = "lowercase")]
pub enum Next {
    Retry {
        #[serde(rename = "notBeforeMs")]
        not_before_ms: i64,
    },
    Dead,
}

/// The worker reported success (`result` as it sent it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSucceeded {
    pub job_id: String,
    pub token: u64,
    #[serde(default)]
    pub result: Option<serde_json::Value>,
}

/// The worker reported failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobFailed {
    pub job_id: String,
    pub token: u64,
    #[serde(flatten)]
    pub next: Next,
    pub error: String,
    #[serde(default)]
    pub error_code: String,
}

/// The lease ran out before the worker reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseExpired {
    pub job_id: String,
    pub token: u64,
    pub worker: String,
    pub expired_ms: i64,
    #[serde(flatten)]
    pub next: Next,
}

/// A restart of the appliance cut the attempt of one of its own workers short.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseInterrupted {
    pub job_id: String,
    pub token: u64,
    pub worker: String,
    pub attempt: u32,
    /// How many of the job's attempts restarts have cut short.
    pub interruptions: u32,
    pub error: String,
    pub error_code: String,
    #[serde(flatten)]
    pub next: Next,
}

/// A step's job cancelled with its run (the executor stops the attempt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCancelled {
    pub job_id: String,
    pub run_id: String,
}

/// A dead step job leaves the DLQ because its run recovered the step (`action`: retry, skip,
/// abort, cancel, replay), possibly by a new job (`replaced_by`). The jobs are the subjects
/// after the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqResolved {
    pub run_id: String,
    pub step: String,
    pub job_id: String,
    pub action: String,
    pub replaced_by: Option<String>,
}

/// Leases granted to one worker in one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseGranted {
    pub worker: String,
    pub leases: Vec<Grant>,
}

/// Delayed jobs that are due now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobsReady {
    pub job_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobType {
    #[serde(rename = "type")]
    pub job_type: String,
}

/// A budget set; a temporary one (`until_ms`) carries the budget it overrides (`previous`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSet {
    #[serde(rename = "type")]
    pub job_type: String,
    pub tenant: String,
    pub rate_milli_per_s: Option<u64>,
    pub burst: Option<u32>,
    pub max_depth: Option<u64>,
    pub until_ms: Option<i64>,
    #[serde(default)]
    pub previous: Option<Box<Budget>>,
}

/// `reason`: `operator`, or `expired` for a temporary budget that overrode none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetCleared {
    #[serde(rename = "type")]
    pub job_type: String,
    pub tenant: String,
    pub reason: String,
}

/// A temporary budget ended and the one it overrode is back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetRestored {
    #[serde(rename = "type")]
    pub job_type: String,
    pub tenant: String,
    pub reason: String,
    pub restored: Budget,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqReplayed {
    pub dead_id: String,
    pub job: EnqueuedJob,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqPurged {
    pub ids: Vec<String>,
    pub snapshot_sha256: String,
}
