//! The projection of queue entries: jobs, the ready index, the due index, the dead-letter
//! queue, per-type counters, pause and budgets, the fencing counter. A pure function of the
//! entry and the tables, run by the writer and by `db verify`'s replay alike.

use crate::domain::queue::tables::Budget;
use crate::domain::queue::tables::DLQ;
use crate::domain::queue::tables::IDEMPOTENCY;
use crate::domain::queue::tables::JOBS;
use crate::domain::queue::tables::JobRecord;
use crate::domain::queue::tables::JobState;
use crate::domain::queue::tables::LIVE_LEASES;
use crate::domain::queue::tables::LeaseInfo;
use crate::domain::queue::tables::QUEUES;
use crate::domain::queue::tables::QueueRecord;
use crate::domain::queue::tables::READY;
use crate::domain::queue::{JobType, Next, QueueEvent};
use crate::domain::queue::{ready_order, timer_key};
use crate::kernel::ApplyError;
use crate::kernel::event::Event;
use crate::kernel::invariant::take_one;
use crate::kernel::ledger::Entry;
use crate::kernel::store::rw;
use crate::kernel::{counters, due};
use redb::WriteTransaction;
use serde::{Deserialize, Serialize};

/// The facts of a new job that a `job.enqueued` (or `dlq.replayed`) entry carries; tenant and
/// creation time are the entry's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnqueuedJob {
    pub id: String,
    pub seq: u64,
    #[serde(rename = "type")]
    pub job_type: String,
    pub priority: u16,
    pub payload: serde_json::Value,
    pub max_attempts: u32,
    pub not_before_ms: i64,
    pub idempotency_key: Option<String>,
    pub replay_of: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

/// One lease of a `lease.granted` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grant {
    #[serde(rename = "jobId")]
    pub job: String,
    pub token: u64,
    pub expires_ms: i64,
    pub attempt: u32,
}

fn bad(entry: &Entry, reason: impl std::fmt::Display) -> ApplyError {
    ApplyError::Entry { seq: entry.seq, kind: entry.kind.clone(), reason: reason.to_string() }
}

fn r(e: impl Into<redb::Error>) -> ApplyError {
    ApplyError::Storage(e.into())
}

fn load(txn: &WriteTransaction, entry: &Entry, id: &str) -> Result<JobRecord, ApplyError> {
    let table = txn.open_table(JOBS).map_err(r)?;
    rw::get::<JobRecord>(&table, "jobs", id)
        .map_err(|e| bad(entry, e))?
        .ok_or_else(|| bad(entry, format!("unknown job {id}")))
}

fn save(txn: &WriteTransaction, job: &JobRecord) -> Result<(), ApplyError> {
    rw::put(&mut txn.open_table(JOBS).map_err(r)?, &job.id, job).map_err(ApplyError::Storage)
}

fn with_queue(txn: &WriteTransaction, job_type: &str, f: impl FnOnce(&mut QueueRecord)) -> Result<(), ApplyError> {
    let mut table = txn.open_table(QUEUES).map_err(r)?;
    let mut q = rw::get::<QueueRecord>(&table, "queues", job_type)
        .map_err(|e| ApplyError::Record(e.to_string()))?
        .unwrap_or_default();
    f(&mut q);
    rw::put(&mut table, job_type, &q).map_err(ApplyError::Storage)
}

fn slot(q: &mut QueueRecord, state: JobState) -> Option<&mut u64> {
    match state {
        JobState::Ready => Some(&mut q.ready),
        JobState::Delayed => Some(&mut q.delayed),
        JobState::Leased => Some(&mut q.leased),
        JobState::Dead => Some(&mut q.dead),
        JobState::Succeeded => Some(&mut q.succeeded),
        JobState::Replayed | JobState::Resolved | JobState::Cancelled => None,
    }
}

/// Moves a job's counter from `from` to `to` in its type's record.
fn count(
    txn: &WriteTransaction,
    job_type: &str,
    from: Option<JobState>,
    to: Option<JobState>,
) -> Result<(), ApplyError> {
    with_queue(txn, job_type, |q| {
        if let Some(c) = from.and_then(|s| slot(q, s)) {
            take_one(c, || format!("queue {job_type} {from:?} count"));
        }
        if let Some(c) = to.and_then(|s| slot(q, s)) {
            *c += 1;
        }
    })
}

/// Puts a job in the ready index or, if not yet due, in the due index.
fn make_waiting(txn: &WriteTransaction, job: &mut JobRecord, now: i64) -> Result<(), ApplyError> {
    if job.not_before_ms > now {
        job.state = JobState::Delayed;
        due::set(txn, job.not_before_ms, &timer_key::ready(&job.id), true)
    } else {
        job.state = JobState::Ready;
        let mut ready = txn.open_table(READY).map_err(r)?;
        ready.insert((job.job_type.as_str(), ready_order(job.priority, job.seq)), job.id.as_str()).map_err(r)?;
        Ok(())
    }
}

fn insert_new(txn: &WriteTransaction, entry: &Entry, new: &EnqueuedJob) -> Result<(), ApplyError> {
    let mut job = JobRecord {
        id: new.id.clone(),
        seq: new.seq,
        tenant: entry.tenant.clone(),
        job_type: new.job_type.clone(),
        priority: new.priority,
        payload: new.payload.clone(),
        attempt: 0,
        max_attempts: new.max_attempts,
        not_before_ms: new.not_before_ms,
        created_ms: entry.time,
        state: JobState::Ready,
        lease: None,
        last_error: None,
        idempotency_key: new.idempotency_key.clone(),
        replay_of: new.replay_of.clone(),
        replayed_as: None,
        result: None,
        finished_ms: None,
        backoff_ms: new.backoff_ms,
        interruptions: 0,
    };
    make_waiting(txn, &mut job, entry.time)?;
    count(txn, &job.job_type, None, Some(job.state))?;
    save(txn, &job)?;
    counters::raise(txn, "job_seq", new.seq)?;
    if let Some(key) = &new.idempotency_key {
        let mut idem = txn.open_table(IDEMPOTENCY).map_err(r)?;
        idem.insert(format!("{}/{key}", entry.tenant).as_str(), new.id.as_bytes()).map_err(r)?;
    }
    Ok(())
}

/// Ends the job's lease: its timer and its liveness row.
fn end_lease(txn: &WriteTransaction, job: &mut JobRecord) -> Result<(), ApplyError> {
    if let Some(lease) = job.lease.take() {
        due::set(txn, lease.expires_ms, &timer_key::lease(&job.id, lease.token), false)?;
        txn.open_table(LIVE_LEASES).map_err(r)?.remove(job.id.as_str()).map_err(r)?;
    }
    Ok(())
}

/// Ends the attempt `end` (an attempt's end: success, failure, expiry, interruption) names.
fn finish_attempt(txn: &WriteTransaction, entry: &Entry, end: &QueueEvent) -> Result<(), ApplyError> {
    let (id, token) = end.attempt_end().expect("an attempt's end");
    let mut job = load(txn, entry, id)?;
    if job.lease.as_ref().map(|l| l.token) != Some(token) {
        return Err(bad(entry, format!("token {token} is not the lease of job {}", job.id)));
    }
    end_lease(txn, &mut job)?;
    let from = Some(JobState::Leased);
    if let QueueEvent::LeaseInterrupted(e) = end {
        job.interruptions = e.interruptions;
        if matches!(e.next, Next::Retry { .. }) {
            // The attempt the restart cut short is given back: it does not count against retries.
            job.max_attempts += 1;
        }
    }
    match (end, end.next()) {
        (QueueEvent::Succeeded(e), _) => {
            job.state = JobState::Succeeded;
            job.result.clone_from(&e.result);
            job.finished_ms = Some(entry.time);
        }
        (_, Some(Next::Retry { not_before_ms })) => {
            job.not_before_ms = *not_before_ms;
            make_waiting(txn, &mut job, entry.time)?;
        }
        (_, Some(Next::Dead)) => {
            job.state = JobState::Dead;
            job.finished_ms = Some(entry.time);
            let mut dlq = txn.open_table(DLQ).map_err(r)?;
            dlq.insert(job.id.as_str(), entry.time.to_string().as_bytes()).map_err(r)?;
        }
        (_, None) => unreachable!("every other end names where the job goes"),
    }
    match end {
        QueueEvent::Succeeded(_) => {}
        QueueEvent::Failed(e) => job.last_error = Some(e.error.clone()),
        QueueEvent::LeaseInterrupted(e) => job.last_error = Some(e.error.clone()),
        _ => job.last_error = Some("lease expired".to_owned()),
    }
    if matches!(end, QueueEvent::LeaseExpired(_)) {
        counters::increment(txn, "lease_expirations")?;
    }
    if matches!(end, QueueEvent::LeaseInterrupted(_)) {
        counters::increment(txn, "interruptions")?;
    } else {
        if matches!(end.next(), Some(Next::Retry { .. })) {
            counters::increment(txn, "retries")?;
        }
        // Attempts by outcome and job type: the failure-rate and burn-rate alerts divide these.
        let outcome = if matches!(end, QueueEvent::Succeeded(_)) { "succeeded" } else { "failed" };
        counters::increment(txn, &format!("attempts:{outcome}:{}", job.job_type))?;
    }
    count(txn, &job.job_type, from, Some(job.state))?;
    save(txn, &job)
}

fn grant(txn: &WriteTransaction, entry: &Entry, worker: &str, g: &Grant) -> Result<(), ApplyError> {
    let mut job = load(txn, entry, &g.job)?;
    if job.state != JobState::Ready {
        return Err(bad(entry, format!("job {} is not ready", job.id)));
    }
    txn.open_table(READY).map_err(r)?.remove((job.job_type.as_str(), ready_order(job.priority, job.seq))).map_err(r)?;
    job.state = JobState::Leased;
    job.attempt = g.attempt;
    job.lease =
        Some(LeaseInfo { worker: worker.to_owned(), token: g.token, expires_ms: g.expires_ms, granted_ms: entry.time });
    due::set(txn, g.expires_ms, &timer_key::lease(&job.id, g.token), true)?;
    counters::raise(txn, "fence", g.token)?;
    count(txn, &job.job_type, Some(JobState::Ready), Some(JobState::Leased))?;
    save(txn, &job)
}

/// Applies a typed queue entry.
fn apply_event(txn: &WriteTransaction, entry: &Entry, event: QueueEvent) -> Result<(), ApplyError> {
    match event {
        end @ (QueueEvent::Succeeded(_)
        | QueueEvent::Failed(_)
        | QueueEvent::LeaseExpired(_)
        | QueueEvent::LeaseInterrupted(_)) => finish_attempt(txn, entry, &end)?,
        QueueEvent::Enqueued(job) => insert_new(txn, entry, &job)?,
        QueueEvent::LeaseGranted(d) => {
            for g in &d.leases {
                grant(txn, entry, &d.worker, g)?;
            }
        }
        QueueEvent::Ready(d) => {
            for id in d.job_ids {
                let mut job = load(txn, entry, &id)?;
                due::set(txn, job.not_before_ms, &timer_key::ready(&id), false)?;
                job.not_before_ms = job.not_before_ms.min(entry.time);
                make_waiting(txn, &mut job, entry.time)?;
                count(txn, &job.job_type, Some(JobState::Delayed), Some(JobState::Ready))?;
                save(txn, &job)?;
            }
        }
        QueueEvent::Paused(JobType { job_type }) | QueueEvent::Resumed(JobType { job_type }) => {
            let paused = entry.kind == "queue.paused";
            with_queue(txn, &job_type, |q| {
                q.paused = paused;
                q.paused_by = paused.then(|| entry.actor.clone());
                q.paused_ms = paused.then_some(entry.time);
            })?;
        }
        QueueEvent::BudgetSet(d) => {
            let budget = Budget {
                rate_milli_per_s: d.rate_milli_per_s,
                burst: d.burst,
                max_depth: d.max_depth,
                until_ms: d.until_ms,
                set_by: entry.actor.clone(),
                previous: d.previous,
            };
            if let Some(until) = d.until_ms {
                due::set(txn, until, &timer_key::budget(&d.job_type, &d.tenant), true)?;
            }
            with_queue(txn, &d.job_type, |q| {
                q.budgets.insert(d.tenant.clone(), budget);
            })?;
        }
        QueueEvent::BudgetRestored(d) => {
            let mut until = None;
            with_queue(txn, &d.job_type, |q| {
                until = q.budgets.insert(d.tenant.clone(), d.restored).and_then(|b| b.until_ms)
            })?;
            if let Some(until) = until {
                due::set(txn, until, &timer_key::budget(&d.job_type, &d.tenant), false)?;
            }
        }
        QueueEvent::BudgetCleared(d) => {
            let mut until = None;
            with_queue(txn, &d.job_type, |q| until = q.budgets.remove(&d.tenant).and_then(|b| b.until_ms))?;
            if let Some(until) = until {
                due::set(txn, until, &timer_key::budget(&d.job_type, &d.tenant), false)?;
            }
        }
        QueueEvent::DlqReplayed(d) => {
            let mut dead = load(txn, entry, &d.dead_id)?;
            dead.state = JobState::Replayed;
            dead.replayed_as = Some(d.job.id.clone());
            txn.open_table(DLQ).map_err(r)?.remove(d.dead_id.as_str()).map_err(r)?;
            count(txn, &dead.job_type, Some(JobState::Dead), None)?;
            save(txn, &dead)?;
            insert_new(txn, entry, &d.job)?;
        }
        QueueEvent::Cancelled(d) => {
            let id = d.job_id;
            let mut job = load(txn, entry, &id)?;
            let from = job.state;
            match from {
                JobState::Ready => {
                    txn.open_table(READY)
                        .map_err(r)?
                        .remove((job.job_type.as_str(), ready_order(job.priority, job.seq)))
                        .map_err(r)?;
                }
                JobState::Delayed => due::set(txn, job.not_before_ms, &timer_key::ready(&job.id), false)?,
                JobState::Leased => end_lease(txn, &mut job)?,
                _ => return Err(bad(entry, format!("job {id} is already finished"))),
            }
            job.state = JobState::Cancelled;
            job.finished_ms = Some(entry.time);
            count(txn, &job.job_type, Some(from), None)?;
            save(txn, &job)?;
        }
        QueueEvent::DlqResolved(d) => {
            let replaced_by = d.replaced_by;
            for id in entry.subjects.iter().skip(1) {
                let mut job = load(txn, entry, id)?;
                if job.state != JobState::Dead {
                    return Err(bad(entry, format!("job {id} is not dead")));
                }
                txn.open_table(DLQ).map_err(r)?.remove(id.as_str()).map_err(r)?;
                job.state = JobState::Resolved;
                job.replayed_as.clone_from(&replaced_by);
                count(txn, &job.job_type, Some(JobState::Dead), None)?;
                save(txn, &job)?;
            }
        }
        QueueEvent::DlqPurged(_) => {
            for id in entry.subjects.iter() {
                let job = load(txn, entry, id)?;
                txn.open_table(DLQ).map_err(r)?.remove(id.as_str()).map_err(r)?;
                txn.open_table(JOBS).map_err(r)?.remove(id.as_str()).map_err(r)?;
                count(txn, &job.job_type, Some(JobState::Dead), None)?;
            }
        }
    }
    Ok(())
}

/// Applies a queue entry; `Ok(false)` if `entry.kind` is not a queue kind.
pub fn apply(txn: &WriteTransaction, entry: &Entry) -> Result<bool, ApplyError> {
    if let Some(event) = QueueEvent::of(entry) {
        apply_event(txn, entry, event.map_err(|e| bad(entry, e))?)?;
        return Ok(true);
    }
    Ok(false)
}
