//! Planning queue commands: validation against the current state and the ledger drafts that
//! carry every fact the projection needs. Time is the batch's `ctx.now`; jitter comes from the
//! seeded `ctx.rng`; rate buckets live in `ctx.buckets`. Nothing here writes.

use crate::domain::appliance::plan::{runtime_ms, runtime_u64};
use crate::domain::bundles::tables::PLUGINS;
use crate::domain::live::Effects;
use crate::domain::live::LiveWrite;
use crate::domain::locks;
use crate::domain::queue::apply::{EnqueuedJob, Grant};
use crate::domain::queue::job_id;
use crate::domain::queue::tables::Budget;
use crate::domain::queue::tables::DLQ;
use crate::domain::queue::tables::IDEMPOTENCY;
use crate::domain::queue::tables::JOBS;
use crate::domain::queue::tables::JobRecord;
use crate::domain::queue::tables::JobState;
use crate::domain::queue::tables::LIVE_LEASES;
use crate::domain::queue::tables::QUEUES;
use crate::domain::queue::tables::QueueRecord;
use crate::domain::queue::tables::READY;
use crate::domain::queue::{
    Bucket, Buckets, BudgetCleared, BudgetSet, DlqPurged, DlqReplayed, JobFailed, JobSucceeded, JobType, LeaseExpired,
    LeaseGranted, LeaseInterrupted, Next, QueueEvent,
};
use crate::domain::runs;
use crate::domain::runs::plan as engine;
use crate::kernel::CommandError;
use crate::kernel::PlanCtx;
use crate::kernel::counters::COUNTERS;
use crate::kernel::due::DUE;
use crate::kernel::event::Event;
use crate::kernel::storage;
use crate::kernel::store::rw;
use redb::{ReadableTable, WriteTransaction};
use serde_json::json;
use std::collections::{HashMap, HashSet};

/// Ready-index entries one lease request examines at most per type.
const LEASE_SCAN_MAX: usize = 4_096;
/// Jobs one lease request may take at most.
pub const LEASE_MAX: u32 = 256;
/// A lease or heartbeat TTL at most.
pub const LEASE_TTL_MAX_MS: u64 = 3_600_000;
/// A job payload, serialized, at most.
pub const PAYLOAD_BYTES_MAX: usize = 256 * 1024;
/// A failure message is truncated to this.
const ERROR_BYTES_MAX: usize = 4_096;
/// Due timers one tick handles at most; the rest wait for the next tick.
/// Dead jobs one replay or purge touches at most.
pub const DLQ_BATCH_MAX: usize = 10_000;
/// A delayed enqueue at most.
const DELAY_MAX_MS: u64 = 30 * 86_400_000;
/// Attempts of one job that restarts of the appliance may cut short before the job fails
/// (`interrupted`): a crash loop ends in a clear failure instead of running forever.
pub const INTERRUPTIONS_MAX: u32 = 3;
/// Lease timers one interrupt command examines at most.
const INTERRUPT_SCAN_MAX: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum QueueCommand {
    Enqueue {
        tenant: String,
        job_type: String,
        payload: serde_json::Value,
        priority: u16,
        max_attempts: Option<u32>,
        delay_ms: Option<u64>,
        idempotency_key: Option<String>,
    },
    /// Enqueue many jobs for `tenant` in one command: all or none (a refused job names its
    /// index); an idempotency key already used (before, or earlier in the batch) answers with
    /// its job.
    EnqueueMany {
        tenant: String,
        jobs: Vec<NewJob>,
    },
    /// Lease up to `max` ready jobs of `types`; `tenant` limits to one tenant's jobs.
    Lease {
        tenant: Option<String>,
        worker: String,
        worker_tenant: String,
        types: Vec<String>,
        max: u32,
        ttl_ms: Option<u64>,
        env: Option<String>,
        /// Leasing as `env`'s deploy agent, of this stella version: only the jobs bound to
        /// this agent (steps naming it), nothing else.
        agent: Option<String>,
    },
    Heartbeat {
        tenant: Option<String>,
        job: String,
        token: u64,
        ttl_ms: Option<u64>,
    },
    Complete {
        tenant: Option<String>,
        job: String,
        token: u64,
        result: Option<serde_json::Value>,
    },
    Fail {
        tenant: Option<String>,
        job: String,
        token: u64,
        error: String,
        /// A stable code for the failure (`timeout`, `exit_status`, …); default `failed`.
        error_code: Option<String>,
        retryable: bool,
    },
    Pause {
        job_type: String,
        /// Pause a type nothing names yet (else an unknown type is refused: a typo would
        /// otherwise pause nothing and leave a phantom type behind).
        create: bool,
    },
    Resume {
        job_type: String,
    },
    SetBudget {
        job_type: String,
        tenant: String,
        budget: Budget,
        for_ms: Option<u64>,
    },
    ClearBudget {
        job_type: String,
        tenant: String,
    },
    DlqReplay {
        tenant: Option<String>,
        selector: ReplaySelector,
    },
    DlqPurge {
        tenant: Option<String>,
        ids: Vec<String>,
        snapshot_sha256: String,
    },
    /// At daemon start: the attempts that in-process workers of a previous daemon (names
    /// starting with `worker_prefix`) held died with it. Each goes back to ready at once,
    /// ledgered as `lease.interrupted`, without counting against its retries.
    Interrupt {
        worker_prefix: String,
        /// Whether these interruptions count toward `INTERRUPTIONS_MAX` (a crash), or not (a
        /// clean stop or restart cut them short).
        counted: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaySelector {
    Ids(Vec<String>),
    Type(String),
    All,
}

/// Job type names: 1–64 of a-z, 0-9, '.', '-', '_'.
pub fn valid_type(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

pub fn plan(cmd: &QueueCommand, txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<Effects, CommandError> {
    match cmd {
        QueueCommand::Enqueue { tenant, job_type, payload, priority, max_attempts, delay_ms, idempotency_key } => {
            let job = NewJob {
                job_type: job_type.clone(),
                payload: payload.clone(),
                priority: *priority,
                max_attempts: *max_attempts,
                delay_ms: *delay_ms,
                idempotency_key: idempotency_key.clone(),
            };
            match enqueue(txn, ctx, tenant, &job, &mut Batch::default())? {
                Queued::New(draft) => Ok(vec![draft].into()),
                Queued::Existing(id) => Ok(Effects { note: Some(json!({ "existing": id })), ..Effects::default() }),
            }
        }
        QueueCommand::EnqueueMany { tenant, jobs } => enqueue_many(txn, ctx, tenant, jobs),
        QueueCommand::Lease { tenant, worker, worker_tenant, types, max, ttl_ms, env, agent } => lease(
            txn,
            ctx,
            LeaseAsk {
                tenant: tenant.as_deref(),
                worker,
                worker_tenant,
                types,
                max: *max,
                ttl_ms: *ttl_ms,
                env,
                agent,
            },
        ),
        QueueCommand::Heartbeat { tenant, job, token, ttl_ms } => {
            heartbeat(txn, ctx, tenant.as_deref(), job, *token, *ttl_ms)
        }
        QueueCommand::Complete { tenant, job, token, result } => {
            complete(txn, ctx, tenant.as_deref(), job, *token, result)
        }
        QueueCommand::Fail { tenant, job, token, error, error_code, retryable } => {
            let code = error_code.as_deref().unwrap_or("failed");
            fail(txn, ctx, tenant.as_deref(), (job, *token), (error, code), *retryable)
        }
        QueueCommand::Pause { job_type, .. } | QueueCommand::Resume { job_type } => {
            let pause = matches!(cmd, QueueCommand::Pause { .. });
            let create = matches!(cmd, QueueCommand::Pause { create: true, .. });
            if !create && !known_type(txn, job_type)? {
                return Err(CommandError::NotFound {
                    what: format!(
                        "job type {job_type}: no job, plugin or built-in kind of that name has been \
                         seen (add --create to pause it before its first job), so it was"
                    ),
                });
            }
            let q = queue_record(txn, job_type)?;
            if q.paused == pause {
                return Ok(Effects { note: Some(json!({ "unchanged": true })), ..Effects::default() });
            }
            let t = JobType { job_type: job_type.clone() };
            let event = if pause { QueueEvent::Paused(t) } else { QueueEvent::Resumed(t) };
            Ok(vec![event.draft("", vec![job_type.clone()])].into())
        }
        QueueCommand::SetBudget { job_type, tenant, budget, for_ms } => {
            let until_ms = for_ms.map(|f| ctx.now.saturating_add(f as i64));
            let mut budget = budget.clone();
            let mut previous = None;
            if until_ms.is_some() {
                // A temporary change overrides only what it names and restores, at its end, the
                // budget it overrode (the one before an earlier temporary change, if one is on).
                let current = queue_record(txn, job_type)?.budgets.remove(tenant.as_str());
                if let Some(current) = current {
                    budget.rate_milli_per_s = budget.rate_milli_per_s.or(current.rate_milli_per_s);
                    budget.burst = budget.burst.or(current.burst);
                    budget.max_depth = budget.max_depth.or(current.max_depth);
                    previous = if current.until_ms.is_some() { current.previous } else { Some(Box::new(current)) };
                }
            }
            let event = QueueEvent::BudgetSet(BudgetSet {
                job_type: job_type.clone(),
                tenant: tenant.clone(),
                rate_milli_per_s: budget.rate_milli_per_s,
                burst: budget.burst,
                max_depth: budget.max_depth,
                until_ms,
                previous,
            });
            Ok(vec![event.draft("", vec![job_type.clone()])].into())
        }
        QueueCommand::ClearBudget { job_type, tenant } => {
            let q = queue_record(txn, job_type)?;
            if !q.budgets.contains_key(tenant) {
                return Err(CommandError::NotFound { what: format!("budget of {job_type} for tenant {tenant}") });
            }
            let event = QueueEvent::BudgetCleared(BudgetCleared {
                job_type: job_type.clone(),
                tenant: tenant.clone(),
                reason: "operator".into(),
            });
            Ok(vec![event.draft("", vec![job_type.clone()])].into())
        }
        QueueCommand::DlqReplay { tenant, selector } => dlq_replay(txn, ctx, tenant.as_deref(), selector),
        QueueCommand::DlqPurge { tenant, ids, snapshot_sha256 } => {
            dlq_purge(txn, tenant.as_deref(), ids, snapshot_sha256)
        }
        QueueCommand::Interrupt { worker_prefix, counted } => interrupt(txn, ctx, worker_prefix, *counted),
    }
}

/// See [`QueueCommand::Interrupt`]. Two jobs of one run are two outcomes planned one after the
/// other on that run's working copy.
fn interrupt(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    worker_prefix: &str,
    counted: bool,
) -> Result<Effects, CommandError> {
    let leased: Vec<(String, String)> = {
        let table = txn.open_table(DUE).map_err(storage)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(storage)?.take(INTERRUPT_SCAN_MAX) {
            let (k, _) = row.map_err(storage)?;
            if let ["lease", job, token] = k.value().1.split('|').collect::<Vec<_>>().as_slice() {
                out.push(((*job).to_owned(), (*token).to_owned()));
            }
        }
        out
    };
    let mut effects = Effects::default();
    let mut fence = Fence::read(txn)?;
    let mut touched = HashSet::new();
    let mut interrupted = 0;
    for (id, token) in leased {
        let Ok(j) = visible_job(txn, None, &id) else { continue };
        let Some(lease) = j.lease.clone().filter(|l| {
            j.state == JobState::Leased && l.token.to_string() == token && l.worker.starts_with(worker_prefix)
        }) else {
            continue;
        };
        let interruptions = j.interruptions + u32::from(counted);
        let (next, error, outcome) = if interruptions > INTERRUPTIONS_MAX {
            let error = format!(
                "attempt {} was cut short by a restart of the appliance: this job was interrupted {interruptions} times \
                 (at most {INTERRUPTIONS_MAX} are started again), so it fails",
                j.attempt
            );
            (Next::Dead, error.clone(), runs::Outcome::Failed { error, code: "interrupted".into() })
        } else {
            let error = format!("attempt {} was cut short by a restart of the appliance; started again", j.attempt);
            (Next::Retry { not_before_ms: ctx.now }, error.clone(), runs::Outcome::Interrupted { error })
        };
        let event = QueueEvent::LeaseInterrupted(LeaseInterrupted {
            job_id: j.id.clone(),
            token: lease.token,
            worker: lease.worker.clone(),
            attempt: j.attempt,
            interruptions,
            error,
            error_code: "interrupted".to_owned(),
            next,
        });
        effects.drafts.push(event.draft(&j.tenant, vec![j.id.clone(), lease.worker.clone()]));
        interrupted += 1;
        effects.drafts.extend(engine::on_outcome(txn, ctx, &j, outcome)?);
        effects.drafts.extend(locks::release_owned(txn, ctx, &mut fence, &format!("job:{}", j.id), &mut touched)?);
    }
    effects.note = Some(json!({ "interrupted": interrupted }));
    Ok(effects)
}

/// Whether a job type exists: it has had jobs, or a plugin or built-in kind serves it.
fn known_type(txn: &WriteTransaction, job_type: &str) -> Result<bool, CommandError> {
    if crate::domain::runs::spec::BUILTINS.contains(&job_type)
        || txn.open_table(QUEUES).map_err(storage)?.get(job_type).map_err(storage)?.is_some()
    {
        return Ok(true);
    }
    Ok(txn.open_table(PLUGINS).map_err(storage)?.get(job_type).map_err(storage)?.is_some())
}

pub fn queue_record(txn: &WriteTransaction, job_type: &str) -> Result<QueueRecord, CommandError> {
    let table = txn.open_table(QUEUES).map_err(storage)?;
    Ok(rw::get::<QueueRecord>(&table, "queues", job_type).map_err(storage)?.unwrap_or_default())
}

/// The job, if it exists and `tenant` (None: any) may see it.
pub fn visible_job(txn: &WriteTransaction, tenant: Option<&str>, id: &str) -> Result<JobRecord, CommandError> {
    let table = txn.open_table(JOBS).map_err(storage)?;
    rw::get::<JobRecord>(&table, "jobs", id)
        .map_err(storage)?
        .filter(|j| tenant.is_none_or(|t| t == j.tenant))
        .ok_or_else(|| CommandError::NotFound { what: format!("job {id}") })
}

/// The shared fencing-token counter for leases and locks, advanced locally while planning.
pub struct Fence(u64);

impl Fence {
    pub fn read(txn: &WriteTransaction) -> Result<Self, CommandError> {
        let table = txn.open_table(COUNTERS).map_err(storage)?;
        Ok(Fence(rw::counter(&table, "fence").map_err(storage)?))
    }
    pub fn take(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// One job to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub job_type: String,
    pub payload: serde_json::Value,
    pub priority: u16,
    pub max_attempts: Option<u32>,
    pub delay_ms: Option<u64>,
    pub idempotency_key: Option<String>,
}

/// What the jobs planned so far in one command hold: the keys they took and the waiting
/// jobs they add per type (the depth budget counts them).
#[derive(Default)]
struct Batch {
    /// Key → the job it names: id, type and payload.
    keys: HashMap<String, (String, String, serde_json::Value)>,
    waiting: HashMap<String, u64>,
    /// Per type: the waiting jobs stored before this batch and the depth budget (read once).
    depth: HashMap<String, (u64, u64)>,
    /// `queue.max_attempts` (read once).
    max_attempts: Option<u32>,
}

enum Queued {
    New(crate::kernel::ledger::Draft),
    Existing(String),
}

/// Most jobs one `EnqueueMany` takes.
pub const ENQUEUE_MANY_MAX: usize = 10_000;

fn enqueue_many(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: &str,
    jobs: &[NewJob],
) -> Result<Effects, CommandError> {
    if jobs.is_empty() || jobs.len() > ENQUEUE_MANY_MAX {
        return Err(CommandError::invalid("jobs", format!("a batch holds 1 to {ENQUEUE_MANY_MAX} jobs")));
    }
    let mut batch = Batch::default();
    let mut drafts = Vec::with_capacity(jobs.len());
    let mut answers = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        match enqueue(txn, ctx, tenant, job, &mut batch).map_err(|e| at_index(e, i))? {
            Queued::New(draft) => {
                answers.push(json!({ "id": draft.subjects[0], "created": true }));
                drafts.push(draft);
            }
            Queued::Existing(id) => answers.push(json!({ "id": id, "created": false })),
        }
    }
    Ok(Effects { drafts, live: vec![], note: Some(json!({ "jobs": answers })) })
}

/// A batch's refusal names the job it is about.
fn at_index(e: CommandError, i: usize) -> CommandError {
    match e {
        CommandError::Invalid { code, field, detail } => {
            let field_text = field.map(|f| format!(".{f}")).unwrap_or_default();
            CommandError::Invalid { code, field: Some("jobs"), detail: format!("jobs[{i}]{field_text}: {detail}") }
        }
        CommandError::Conflict { code, detail } => {
            CommandError::Conflict { code, detail: format!("jobs[{i}]: {detail}") }
        }
        CommandError::Busy { detail, retry_after_s } => {
            CommandError::Busy { detail: format!("jobs[{i}]: {detail}"), retry_after_s }
        }
        other => other,
    }
}

fn enqueue(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: &str,
    job: &NewJob,
    batch: &mut Batch,
) -> Result<Queued, CommandError> {
    let NewJob { job_type, payload, priority, max_attempts, delay_ms, idempotency_key } = job;
    if !valid_type(job_type) {
        return Err(CommandError::invalid(
            "type",
            format!("job type {job_type:?} is not 1-64 of a-z, 0-9, '.', '-', '_'"),
        ));
    }
    if serde_json::to_vec(payload).map_or(0, |v| v.len()) > PAYLOAD_BYTES_MAX {
        return Err(CommandError::invalid("payload", format!("payload is larger than {PAYLOAD_BYTES_MAX} bytes")));
    }
    if delay_ms.is_some_and(|d| d > DELAY_MAX_MS) {
        return Err(CommandError::invalid("delay", format!("delay is longer than {DELAY_MAX_MS} ms")));
    }
    if let Some(key) = idempotency_key
        && let Some(id) = existing_job(txn, tenant, key, job_type, payload, batch)?
    {
        return Ok(Queued::Existing(id));
    }
    let (stored, limit) = match batch.depth.get(job_type) {
        Some(d) => *d,
        None => {
            let q = queue_record(txn, job_type)?;
            let budget = q.budgets.get(tenant).or_else(|| q.budgets.get("*"));
            let limit = match budget.and_then(|b| b.max_depth) {
                Some(limit) => limit,
                None => runtime_u64(txn, ctx, "queue.max_depth")?,
            };
            *batch.depth.entry(job_type.clone()).or_insert((q.ready + q.delayed, limit))
        }
    };
    let waiting = stored + batch.waiting.get(job_type).copied().unwrap_or(0);
    if waiting >= limit {
        return Err(CommandError::Busy {
            detail: format!("queue {job_type} holds {waiting} waiting jobs, its depth budget is {limit}; retry later"),
            retry_after_s: 1,
        });
    }
    let max_attempts = match (*max_attempts, batch.max_attempts) {
        (Some(n), _) | (None, Some(n)) => n,
        (None, None) => *batch.max_attempts.insert(runtime_u64(txn, ctx, "queue.max_attempts")? as u32),
    };
    if max_attempts == 0 || max_attempts > 1_000 {
        return Err(CommandError::invalid("maxAttempts", "maxAttempts must be from 1 to 1000"));
    }
    let seq = super::take_job_seq(txn, ctx)?;
    let new = EnqueuedJob {
        id: job_id(seq),
        seq,
        job_type: job_type.clone(),
        priority: *priority,
        payload: payload.clone(),
        max_attempts,
        not_before_ms: ctx.now.saturating_add(delay_ms.unwrap_or(0) as i64),
        idempotency_key: idempotency_key.clone(),
        replay_of: None,
        backoff_ms: None,
    };
    *batch.waiting.entry(job_type.clone()).or_default() += 1;
    if let Some(key) = idempotency_key {
        batch.keys.insert(key.clone(), (new.id.clone(), job_type.clone(), as_stored(payload)));
    }
    let subjects = vec![new.id.clone()];
    Ok(Queued::New(QueueEvent::Enqueued(new).draft(tenant, subjects)))
}

/// A payload as its job's entry will store it (an integral float such as `1.0` reads back as
/// `1`), so that a retried request is compared with what was stored, not with how it was spelt.
fn as_stored(payload: &serde_json::Value) -> serde_json::Value {
    let mut p = payload.clone();
    crate::kernel::ledger::integral_floats_as_integers(&mut p);
    p
}

/// The job an idempotency key already names (stored, or taken earlier in this batch), if it is
/// the same job; a conflict if the key names another.
fn existing_job(
    txn: &WriteTransaction,
    tenant: &str,
    key: &str,
    job_type: &str,
    payload: &serde_json::Value,
    batch: &Batch,
) -> Result<Option<String>, CommandError> {
    let reused = |id: &str| {
        CommandError::conflict(
            "idempotency_key_reused",
            format!("idempotency key {key:?} already names job {id} with a different type or payload"),
        )
    };
    let payload = &as_stored(payload);
    if let Some((id, t, p)) = batch.keys.get(key) {
        // Taken in this batch: not stored yet, so compared with what this batch planned.
        return if t == job_type && p == payload { Ok(Some(id.clone())) } else { Err(reused(id)) };
    }
    let table = txn.open_table(IDEMPOTENCY).map_err(storage)?;
    let existing = table.get(format!("{tenant}/{key}").as_str()).map_err(storage)?;
    let Some(id) = existing.map(|v| String::from_utf8_lossy(v.value()).into_owned()) else { return Ok(None) };
    // The key's tenant is in the row's key, so only a purge from the dead-letter queue leaves
    // it naming no job: the key is free again, and the new job's entry takes the row.
    let jobs = txn.open_table(JOBS).map_err(storage)?;
    let Some(job) = rw::get::<JobRecord>(&jobs, "jobs", &id).map_err(storage)? else { return Ok(None) };
    if job.job_type != job_type || job.payload != *payload {
        return Err(reused(&id));
    }
    Ok(Some(id))
}

struct LeaseAsk<'a> {
    tenant: Option<&'a str>,
    worker: &'a str,
    worker_tenant: &'a str,
    types: &'a [String],
    max: u32,
    ttl_ms: Option<u64>,
    env: &'a Option<String>,
    agent: &'a Option<String>,
}

fn lease(txn: &WriteTransaction, ctx: &mut PlanCtx, ask: LeaseAsk) -> Result<Effects, CommandError> {
    let ttl = match ask.ttl_ms {
        Some(t) => t,
        None => runtime_ms(txn, ctx, "queue.lease_ttl")?,
    }
    .clamp(1, LEASE_TTL_MAX_MS);
    let mut fence = Fence::read(txn)?;
    let mut types: Vec<&String> = ask.types.iter().collect();
    types.sort();
    types.dedup();
    let mut grants: Vec<(String, Grant)> = Vec::new();
    let mut started: Vec<(JobRecord, u32)> = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    let mut lock_drafts = Vec::new();
    {
        let queues = txn.open_table(QUEUES).map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        let ready = txn.open_table(READY).map_err(storage)?;
        for t in types {
            let q = rw::get::<QueueRecord>(&queues, "queues", t).map_err(storage)?.unwrap_or_default();
            if q.paused {
                continue;
            }
            let range = ready.range((t.as_str(), 0u64)..=(t.as_str(), u64::MAX)).map_err(storage)?;
            for row in range.take(LEASE_SCAN_MAX) {
                if grants.len() >= ask.max.min(LEASE_MAX) as usize {
                    break;
                }
                let (_, id) = row.map_err(storage)?;
                let job = rw::get::<JobRecord>(&jobs, "jobs", id.value())
                    .map_err(storage)?
                    .ok_or_else(|| CommandError::Storage(format!("ready index names missing job {}", id.value())))?;
                if ask.tenant.is_some_and(|x| x != job.tenant) {
                    continue;
                }
                // A job bound to a remote deploy agent goes to that agent's leases only; an
                // agent's leases (they name an environment) take nothing else.
                // (A tenant's job may have any payload: only the site's jobs are bound.)
                let bound = job.payload["agent"].as_str().filter(|_| job.tenant == super::SITE_TENANT);
                if bound != ask.agent.as_ref().map(|_| ask.worker) {
                    continue;
                }
                // A step holding named locks is dispatched only when all of them are free; they
                // are granted to its job now and released when its attempt ends.
                let wanted: Vec<&str> =
                    job.payload["locks"].as_array().into_iter().flatten().filter_map(|l| l.as_str()).collect();
                if wanted.iter().any(|l| taken.contains(*l)) {
                    continue;
                }
                let owner = format!("job:{}", job.id);
                let lock_ttl = job.payload["timeoutMs"].as_u64().unwrap_or(300_000) + 60_000;
                let mut grants_here = Vec::new();
                for l in &wanted {
                    match locks::try_grant(txn, ctx, &mut fence, (&job.tenant, l, &owner), lock_ttl)? {
                        Some(d) => grants_here.push(d),
                        None => break,
                    }
                }
                if grants_here.len() < wanted.len() || !budget_allows(&q, t, &job.tenant, ctx) {
                    continue;
                }
                for l in &wanted {
                    taken.insert((*l).to_owned());
                }
                lock_drafts.extend(grants_here);
                let grant = Grant {
                    job: job.id.clone(),
                    token: fence.take(),
                    expires_ms: ctx.now + ttl as i64,
                    attempt: job.attempt + 1,
                };
                started.push((job.clone(), grant.attempt));
                grants.push((job.tenant.clone(), grant));
            }
        }
    }
    let live = vec![LiveWrite::WorkerSeen {
        id: ask.worker.to_owned(),
        tenant: ask.worker_tenant.to_owned(),
        types: ask.types.to_vec(),
        env: ask.env.clone(),
        version: ask.agent.clone(),
    }];
    grants.sort_by(|a, b| a.0.cmp(&b.0));
    let mut drafts = Vec::new();
    for chunk in grants.chunk_by(|a, b| a.0 == b.0) {
        let subjects = chunk.iter().map(|(_, g)| g.job.clone()).collect();
        let leases = chunk.iter().map(|(_, g)| g.clone()).collect();
        let event = QueueEvent::LeaseGranted(LeaseGranted { worker: ask.worker.to_owned(), leases });
        drafts.push(event.draft(&chunk[0].0, subjects));
    }
    drafts.extend(lock_drafts);
    for (job, attempt) in &started {
        drafts.extend(engine::on_started(txn, ctx, job, ask.worker, *attempt)?);
    }
    Ok(Effects { drafts, live, note: None })
}

/// Debits the type's rate bucket for `tenant` (or the shared `*` bucket) if it has a token.
fn budget_allows(q: &QueueRecord, job_type: &str, tenant: &str, ctx: &mut PlanCtx) -> bool {
    let (scope, budget) = match q.budgets.get(tenant) {
        Some(b) => (tenant, b),
        None => match q.budgets.get("*") {
            Some(b) => ("*", b),
            None => return true,
        },
    };
    let Some(rate) = budget.rate_milli_per_s else { return true };
    let capacity = f64::from(budget.burst.unwrap_or(1).max(1));
    let now = ctx.now;
    let bucket = ctx
        .derived
        .get::<Buckets>()
        .0
        .entry((job_type.to_owned(), scope.to_owned()))
        .or_insert(Bucket { tokens: capacity, last_ms: now });
    let elapsed = (now - bucket.last_ms).max(0) as f64;
    bucket.tokens = (bucket.tokens + elapsed * rate as f64 / 1_000_000.0).min(capacity);
    bucket.last_ms = ctx.now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        true
    } else {
        false
    }
}

/// The lease's effective expiry: as granted, or later if heartbeats extended it.
pub fn effective_expiry(txn: &WriteTransaction, job: &JobRecord) -> Result<i64, CommandError> {
    let granted = job.lease.as_ref().map_or(i64::MIN, |l| l.expires_ms);
    let table = txn.open_table(LIVE_LEASES).map_err(storage)?;
    let live = table.get(job.id.as_str()).map_err(storage)?.map_or(i64::MIN, |v| v.value() as i64);
    Ok(granted.max(live))
}

/// Refuses unless `token` is the job's current, unexpired lease.
fn check_lease(txn: &WriteTransaction, job: &JobRecord, token: u64, now: i64) -> Result<(), CommandError> {
    let Some(lease) = job.lease.as_ref().filter(|_| job.state == JobState::Leased) else {
        return Err(CommandError::conflict(
            "lease_stale",
            format!(
                "stale lease token {token}: job {} is not leased (it is {})",
                job.id,
                serde_json::to_value(job.state).expect("state serializes").as_str().unwrap_or("?")
            ),
        ));
    };
    if lease.token != token {
        return Err(CommandError::conflict(
            "lease_stale",
            format!("stale lease token {token} for job {}: its current lease has token {}", job.id, lease.token),
        ));
    }
    let expiry = effective_expiry(txn, job)?;
    if now >= expiry {
        return Err(CommandError::conflict(
            "lease_expired",
            format!("lease {token} on job {} expired at {}", job.id, crate::clock::rfc3339(expiry)),
        ));
    }
    Ok(())
}

fn heartbeat(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: Option<&str>,
    id: &str,
    token: u64,
    ttl_ms: Option<u64>,
) -> Result<Effects, CommandError> {
    let job = visible_job(txn, tenant, id)?;
    check_lease(txn, &job, token, ctx.now)?;
    let ttl = match ttl_ms {
        Some(t) => t,
        None => runtime_ms(txn, ctx, "queue.lease_ttl")?,
    }
    .clamp(1, LEASE_TTL_MAX_MS);
    let expires_ms = ctx.now + ttl as i64;
    let worker = job.lease.as_ref().map(|l| l.worker.clone()).unwrap_or_default();
    Ok(Effects {
        drafts: vec![],
        live: vec![
            LiveWrite::LeaseExpiry { job: job.id.clone(), expires_ms },
            LiveWrite::WorkerBeat { id: worker.clone() },
        ],
        note: Some(json!({ "jobId": job.id, "token": token, "expiresMs": expires_ms, "worker": worker })),
    })
}

fn complete(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: Option<&str>,
    id: &str,
    token: u64,
    result: &Option<serde_json::Value>,
) -> Result<Effects, CommandError> {
    let job = visible_job(txn, tenant, id)?;
    check_lease(txn, &job, token, ctx.now)?;
    let event = QueueEvent::Succeeded(JobSucceeded { job_id: job.id.clone(), token, result: result.clone() });
    let mut drafts = vec![event.draft(&job.tenant, vec![job.id.clone()])];
    let outputs = result.as_ref().map(|r| r.get("outputs").cloned().unwrap_or_else(|| r.clone())).unwrap_or(json!({}));
    drafts.extend(engine::on_outcome(txn, ctx, &job, runs::Outcome::Succeeded { outputs })?);
    let mut fence = Fence::read(txn)?;
    drafts.extend(locks::release_owned(txn, ctx, &mut fence, &format!("job:{}", job.id), &mut HashSet::new())?);
    Ok(drafts.into())
}

/// Where a failed attempt goes: back after a backoff, or to the dead-letter queue.
pub fn next_after_failure(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    job: &JobRecord,
    retryable: bool,
) -> Result<Next, CommandError> {
    if !retryable || job.attempt >= job.max_attempts {
        return Ok(Next::Dead);
    }
    let base = match job.backoff_ms {
        Some(b) => b as f64,
        None => runtime_ms(txn, ctx, "queue.backoff_base")? as f64,
    };
    let cap = runtime_ms(txn, ctx, "queue.backoff_max")? as f64;
    let exp = base * 2f64.powi(job.attempt.saturating_sub(1).min(30) as i32);
    let jitter = 0.75 + 0.5 * ctx.rng.next_f64();
    let delay = (exp.min(cap) * jitter).round() as i64;
    Ok(Next::Retry { not_before_ms: ctx.now + delay.max(1) })
}

/// What the engine hears of a failed attempt.
pub fn step_outcome(next: &Next, error: String, code: &str) -> runs::Outcome {
    let code = code.to_owned();
    match next {
        Next::Retry { .. } => runs::Outcome::Retrying { error, code },
        Next::Dead => runs::Outcome::Failed { error, code },
    }
}

fn fail(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: Option<&str>,
    (id, token): (&str, u64),
    (error, code): (&str, &str),
    retryable: bool,
) -> Result<Effects, CommandError> {
    let job = visible_job(txn, tenant, id)?;
    check_lease(txn, &job, token, ctx.now)?;
    let next = next_after_failure(txn, ctx, &job, retryable)?;
    let error: String = error.chars().take(ERROR_BYTES_MAX).collect();
    let outcome = step_outcome(&next, error.clone(), code);
    let event =
        QueueEvent::Failed(JobFailed { job_id: job.id.clone(), token, next, error, error_code: code.to_owned() });
    let mut drafts = vec![event.draft(&job.tenant, vec![job.id.clone()])];
    drafts.extend(engine::on_outcome(txn, ctx, &job, outcome)?);
    let mut fence = Fence::read(txn)?;
    drafts.extend(locks::release_owned(txn, ctx, &mut fence, &format!("job:{}", job.id), &mut HashSet::new())?);
    Ok(drafts.into())
}

fn dlq_replay(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: Option<&str>,
    selector: &ReplaySelector,
) -> Result<Effects, CommandError> {
    let dead: Vec<JobRecord> = match selector {
        ReplaySelector::Ids(ids) => ids
            .iter()
            .map(|id| visible_job(txn, tenant, id).and_then(|j| dead_or_not_found(j, id)))
            .collect::<Result<_, _>>()?,
        ReplaySelector::Type(t) => dead_jobs(txn, tenant)?.into_iter().filter(|j| j.job_type == *t).collect(),
        ReplaySelector::All => dead_jobs(txn, tenant)?,
    };
    // A DAG step's job is replayed through its run, as a retry of that step: run alone, its
    // side effect would happen outside the run and leave the run failed.
    let (steps, dead): (Vec<JobRecord>, Vec<JobRecord>) =
        dead.into_iter().partition(|j| j.payload["run"].is_string() && j.payload["step"].is_string());
    let (mut drafts, refused) = engine::replay_dead_steps(txn, ctx, &steps)?;
    if let (ReplaySelector::Ids(_), Some((id, why))) = (selector, refused.first()) {
        return Err(CommandError::conflict(
            "replay_through_run",
            format!("dead job {id} is a DAG step's job and is replayed only through its run, but {why}"),
        ));
    }
    for job in &dead {
        let seq = super::take_job_seq(txn, ctx)?;
        let new = EnqueuedJob {
            id: job_id(seq),
            seq,
            job_type: job.job_type.clone(),
            priority: job.priority,
            payload: job.payload.clone(),
            max_attempts: job.max_attempts,
            not_before_ms: ctx.now,
            idempotency_key: None,
            replay_of: Some(job.id.clone()),
            backoff_ms: job.backoff_ms,
        };
        let subjects = vec![job.id.clone(), new.id.clone()];
        drafts.push(
            QueueEvent::DlqReplayed(DlqReplayed { dead_id: job.id.clone(), job: new }).draft(&job.tenant, subjects),
        );
    }
    let refused: Vec<serde_json::Value> = refused.iter().map(|(id, why)| json!({ "id": id, "reason": why })).collect();
    Ok(Effects { drafts, live: vec![], note: Some(json!({ "refused": refused })) })
}

fn dead_or_not_found(job: JobRecord, id: &str) -> Result<JobRecord, CommandError> {
    if job.state == JobState::Dead {
        Ok(job)
    } else {
        Err(CommandError::NotFound { what: format!("dead-letter entry {id}") })
    }
}

/// Dead jobs visible to `tenant`, oldest first, at most `DLQ_BATCH_MAX`.
fn dead_jobs(txn: &WriteTransaction, tenant: Option<&str>) -> Result<Vec<JobRecord>, CommandError> {
    let dlq = txn.open_table(DLQ).map_err(storage)?;
    let jobs = txn.open_table(JOBS).map_err(storage)?;
    let mut out = Vec::new();
    for row in dlq.iter().map_err(storage)?.take(DLQ_BATCH_MAX) {
        let (id, _) = row.map_err(storage)?;
        if let Some(job) = rw::get::<JobRecord>(&jobs, "jobs", id.value()).map_err(storage)?
            && tenant.is_none_or(|t| t == job.tenant)
        {
            out.push(job);
        }
    }
    Ok(out)
}

fn dlq_purge(
    txn: &WriteTransaction,
    tenant: Option<&str>,
    ids: &[String],
    snapshot: &str,
) -> Result<Effects, CommandError> {
    if snapshot.len() != 64 || !snapshot.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CommandError::invalid(
            "snapshotSha256",
            "snapshotSha256 must be the sha256 (64 hex digits) of the NDJSON snapshot written first",
        ));
    }
    if ids.is_empty() || ids.len() > DLQ_BATCH_MAX {
        return Err(CommandError::invalid("ids", format!("purge takes 1 to {DLQ_BATCH_MAX} ids")));
    }
    let mut by_tenant: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for id in ids {
        let job = dead_or_not_found(visible_job(txn, tenant, id)?, id)?;
        by_tenant.entry(job.tenant).or_default().push(id.clone());
    }
    let drafts = by_tenant
        .into_iter()
        .map(|(t, ids)| {
            let event = QueueEvent::DlqPurged(DlqPurged { ids: ids.clone(), snapshot_sha256: snapshot.to_owned() });
            event.draft(&t, ids)
        })
        .collect::<Vec<_>>();
    Ok(drafts.into())
}

pub fn expire_lease(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    effects: &mut Effects,
    (fence, touched): (&mut Fence, &mut HashSet<String>),
    (due_ms, key): (i64, &str),
    job: &str,
    token: &str,
) -> Result<(), CommandError> {
    let stale = || LiveWrite::DropTimer { due_ms, key: key.to_owned() };
    let Ok(j) = visible_job(txn, None, job) else {
        effects.live.push(stale());
        return Ok(());
    };
    let current = j.lease.as_ref().filter(|l| j.state == JobState::Leased && l.token.to_string() == token);
    let Some(lease) = current else {
        effects.live.push(stale());
        return Ok(());
    };
    let expiry = effective_expiry(txn, &j)?;
    if expiry > ctx.now {
        effects.live.push(stale());
        effects.live.push(LiveWrite::Timer { due_ms: expiry, key: key.to_owned() });
        return Ok(());
    }
    let next = next_after_failure(txn, ctx, &j, true)?;
    let outcome = step_outcome(&next, format!("lease of worker {} expired", lease.worker), "lease_expired");
    let event = QueueEvent::LeaseExpired(LeaseExpired {
        job_id: j.id.clone(),
        token: lease.token,
        worker: lease.worker.clone(),
        expired_ms: expiry,
        next,
    });
    effects.drafts.push(event.draft(&j.tenant, vec![j.id.clone(), lease.worker.clone()]));
    effects.drafts.extend(engine::on_outcome(txn, ctx, &j, outcome)?);
    effects.drafts.extend(locks::release_owned(txn, ctx, fence, &format!("job:{}", j.id), touched)?);
    Ok(())
}
