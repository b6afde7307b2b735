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
use crate::kernel::Tx;
use crate::kernel::event::Event;
use crate::kernel::invariant::take_one;
use crate::kernel::ledger::Entry;
use crate::kernel::{counters, due};
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

fn load(tx: &Tx, entry: &Entry, id: &str) -> Result<JobRecord, ApplyError> {
    // Every caller saves the job again (or removes it).
    tx.take::<JobRecord>(JOBS, id)?.ok_or_else(|| bad(entry, format!("unknown job {id}")))
}

fn save(tx: &Tx, job: JobRecord) -> Result<(), ApplyError> {
    tx.put(JOBS, &job.id.clone(), job)
}

fn with_queue(tx: &Tx, job_type: &str, f: impl FnOnce(&mut QueueRecord)) -> Result<(), ApplyError> {
    let mut q = tx.take::<QueueRecord>(QUEUES, job_type)?.unwrap_or_default();
    f(&mut q);
    tx.put(QUEUES, job_type, q)
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
fn count(tx: &Tx, job_type: &str, from: Option<JobState>, to: Option<JobState>) -> Result<(), ApplyError> {
    with_queue(tx, job_type, |q| {
        if let Some(c) = from.and_then(|s| slot(q, s)) {
            take_one(c, || format!("queue {job_type} {from:?} count"));
        }
        if let Some(c) = to.and_then(|s| slot(q, s)) {
            *c += 1;
        }
    })
}

/// Puts a job in the ready index or, if not yet due, in the due index.
fn make_waiting(tx: &Tx, job: &mut JobRecord, now: i64) -> Result<(), ApplyError> {
    if job.not_before_ms > now {
        job.state = JobState::Delayed;
        due::set(tx, job.not_before_ms, &timer_key::ready(&job.id), true)
    } else {
        job.state = JobState::Ready;
        tx.index_insert(READY, (job.job_type.as_str(), ready_order(job.priority, job.seq)), job.id.as_str())
    }
}

fn insert_new(tx: &Tx, entry: &Entry, new: &EnqueuedJob) -> Result<(), ApplyError> {
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
    make_waiting(tx, &mut job, entry.time)?;
    count(tx, &job.job_type, None, Some(job.state))?;
    save(tx, job)?;
    counters::raise(tx, "job_seq", new.seq)?;
    if let Some(key) = &new.idempotency_key {
        tx.put_bytes(IDEMPOTENCY, &format!("{}/{key}", entry.tenant), new.id.as_bytes())?;
    }
    Ok(())
}

/// Ends the job's lease: its timer and its liveness row.
fn end_lease(tx: &Tx, job: &mut JobRecord) -> Result<(), ApplyError> {
    if let Some(lease) = job.lease.take() {
        due::set(tx, lease.expires_ms, &timer_key::lease(&job.id, lease.token), false)?;
        tx.index_remove(LIVE_LEASES, job.id.as_str())?;
    }
    Ok(())
}

/// Ends the attempt `end` (an attempt's end: success, failure, expiry, interruption) names.
fn finish_attempt(tx: &Tx, entry: &Entry, end: &QueueEvent) -> Result<(), ApplyError> {
    let (id, token) = end.attempt_end().expect("an attempt's end");
    let mut job = load(tx, entry, id)?;
    if job.lease.as_ref().map(|l| l.token) != Some(token) {
        return Err(bad(entry, format!("token {token} is not the lease of job {}", job.id)));
    }
    end_lease(tx, &mut job)?;
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
            make_waiting(tx, &mut job, entry.time)?;
        }
        (_, Some(Next::Dead)) => {
            job.state = JobState::Dead;
            job.finished_ms = Some(entry.time);
            tx.put_bytes(DLQ, &job.id, entry.time.to_string().as_bytes())?;
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
        counters::increment(tx, "lease_expirations")?;
    }
    if matches!(end, QueueEvent::LeaseInterrupted(_)) {
        counters::increment(tx, "interruptions")?;
    } else {
        if matches!(end.next(), Some(Next::Retry { .. })) {
            counters::increment(tx, "retries")?;
        }
        // Attempts by outcome and job type: the failure-rate and burn-rate alerts divide these.
        let outcome = if matches!(end, QueueEvent::Succeeded(_)) { "succeeded" } else { "failed" };
        counters::increment(tx, &format!("attempts:{outcome}:{}", job.job_type))?;
    }
    count(tx, &job.job_type, from, Some(job.state))?;
    save(tx, job)
}

fn grant(tx: &Tx, entry: &Entry, worker: &str, g: &Grant) -> Result<(), ApplyError> {
    let mut job = load(tx, entry, &g.job)?;
    if job.state != JobState::Ready {
        return Err(bad(entry, format!("job {} is not ready", job.id)));
    }
    tx.index_remove(READY, (job.job_type.as_str(), ready_order(job.priority, job.seq)))?;
    job.state = JobState::Leased;
    job.attempt = g.attempt;
    job.lease =
        Some(LeaseInfo { worker: worker.to_owned(), token: g.token, expires_ms: g.expires_ms, granted_ms: entry.time });
    due::set(tx, g.expires_ms, &timer_key::lease(&job.id, g.token), true)?;
    counters::raise(tx, "fence", g.token)?;
    count(tx, &job.job_type, Some(JobState::Ready), Some(JobState::Leased))?;
    save(tx, job)
}

/// Applies a typed queue entry.
fn apply_event(tx: &Tx, entry: &Entry, event: QueueEvent) -> Result<(), ApplyError> {
    match event {
        end @ (QueueEvent::Succeeded(_)
        | QueueEvent::Failed(_)
        | QueueEvent::LeaseExpired(_)
        | QueueEvent::LeaseInterrupted(_)) => finish_attempt(tx, entry, &end)?,
        QueueEvent::Enqueued(job) => insert_new(tx, entry, &job)?,
        QueueEvent::LeaseGranted(d) => {
            for g in &d.leases {
                grant(tx, entry, &d.worker, g)?;
            }
        }
        QueueEvent::Ready(d) => {
            for id in d.job_ids {
                let mut job = load(tx, entry, &id)?;
                due::set(tx, job.not_before_ms, &timer_key::ready(&id), false)?;
                job.not_before_ms = job.not_before_ms.min(entry.time);
                make_waiting(tx, &mut job, entry.time)?;
                count(tx, &job.job_type, Some(JobState::Delayed), Some(JobState::Ready))?;
                save(tx, job)?;
            }
        }
        QueueEvent::Paused(JobType { job_type }) | QueueEvent::Resumed(JobType { job_type }) => {
            let paused = entry.kind == "queue.paused";
            with_queue(tx, &job_type, |q| {
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
                due::set(tx, until, &timer_key::budget(&d.job_type, &d.tenant), true)?;
            }
            with_queue(tx, &d.job_type, |q| {
                q.budgets.insert(d.tenant.clone(), budget);
            })?;
        }
        QueueEvent::BudgetRestored(d) => {
            let mut until = None;
            with_queue(tx, &d.job_type, |q| {
                until = q.budgets.insert(d.tenant.clone(), d.restored).and_then(|b| b.until_ms)
            })?;
            if let Some(until) = until {
                due::set(tx, until, &timer_key::budget(&d.job_type, &d.tenant), false)?;
            }
        }
        QueueEvent::BudgetCleared(d) => {
            let mut until = None;
            with_queue(tx, &d.job_type, |q| until = q.budgets.remove(&d.tenant).and_then(|b| b.until_ms))?;
            if let Some(until) = until {
                due::set(tx, until, &timer_key::budget(&d.job_type, &d.tenant), false)?;
            }
        }
        QueueEvent::DlqReplayed(d) => {
            let mut dead = load(tx, entry, &d.dead_id)?;
            dead.state = JobState::Replayed;
            dead.replayed_as = Some(d.job.id.clone());
            tx.remove(DLQ, &d.dead_id)?;
            count(tx, &dead.job_type, Some(JobState::Dead), None)?;
            save(tx, dead)?;
            insert_new(tx, entry, &d.job)?;
        }
        QueueEvent::Cancelled(d) => {
            let id = d.job_id;
            let mut job = load(tx, entry, &id)?;
            let from = job.state;
            match from {
                JobState::Ready => {
                    tx.index_remove(READY, (job.job_type.as_str(), ready_order(job.priority, job.seq)))?;
                }
                JobState::Delayed => due::set(tx, job.not_before_ms, &timer_key::ready(&job.id), false)?,
                JobState::Leased => end_lease(tx, &mut job)?,
                _ => return Err(bad(entry, format!("job {id} is already finished"))),
            }
            job.state = JobState::Cancelled;
            job.finished_ms = Some(entry.time);
            count(tx, &job.job_type, Some(from), None)?;
            save(tx, job)?;
        }
        QueueEvent::DlqResolved(d) => {
            let replaced_by = d.replaced_by;
            for id in entry.subjects.iter().skip(1) {
                let mut job = load(tx, entry, id)?;
                if job.state != JobState::Dead {
                    return Err(bad(entry, format!("job {id} is not dead")));
                }
                tx.remove(DLQ, id)?;
                job.state = JobState::Resolved;
                job.replayed_as.clone_from(&replaced_by);
                count(tx, &job.job_type, Some(JobState::Dead), None)?;
                save(tx, job)?;
            }
        }
        QueueEvent::DlqPurged(_) => {
            for id in entry.subjects.iter() {
                let job = load(tx, entry, id)?;
                tx.remove(DLQ, id)?;
                tx.remove(JOBS, id)?;
                count(tx, &job.job_type, Some(JobState::Dead), None)?;
            }
        }
    }
    Ok(())
}

/// Applies a queue entry; `Ok(false)` if `entry.kind` is not a queue kind.
pub fn apply(tx: &Tx, entry: &Entry) -> Result<bool, ApplyError> {
    if let Some(event) = QueueEvent::of(entry) {
        apply_event(tx, entry, event.map_err(|e| bad(entry, e))?)?;
        return Ok(true);
    }
    Ok(false)
}
