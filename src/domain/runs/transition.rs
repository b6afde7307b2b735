//! What each run and step entry does to its run and steps: one function, [`evolve`], called by
//! the planner on its working copy (so that one plan can cascade: a finished step releases its
//! dependants, which are queued or wait for a slot, and the run settles) and by the projection
//! on the stored records. The two cannot drift apart, because there is only one.

use crate::domain::runs::tables::{AttemptRecord, RunRecord, RunStatus, StepRecord, StepState};
use crate::domain::runs::{CreatedStep, RunCreated, RunEvent};
use crate::kernel::invariant::take_one;

/// The run an entry changes and the steps it touches, as the planner or the projection holds
/// them.
pub trait RunState {
    type Error;
    fn run(&mut self) -> &mut RunRecord;
    /// The step `name` of the run (loaded on first use).
    fn step(&mut self, name: &str) -> Result<&mut StepRecord, Self::Error>;
    /// `name` joins the back of the run's queue of steps waiting for a `maxParallelSteps` slot.
    fn wait(&mut self, name: &str) -> Result<(), Self::Error>;
    /// `name` leaves that queue, if it is in it.
    fn unwait(&mut self, name: &str) -> Result<(), Self::Error>;
    /// An entry that cannot apply to this state.
    fn refuse(&self, reason: String) -> Self::Error;
}

/// The run and its pending steps that `run.created` makes.
pub fn created(e: &RunCreated, tenant: &str, time: i64, actor: &str) -> (RunRecord, Vec<StepRecord>) {
    let run = RunRecord {
        id: e.run_id.clone(),
        tenant: tenant.to_owned(),
        dag: e.dag.clone(),
        version: e.version,
        spec_sha256: e.spec_sha256.clone(),
        inputs: e.inputs.clone(),
        inputs_hash: e.inputs_hash.clone(),
        run_token: e.run_token.clone(),
        plugins: e.plugins.clone(),
        status: RunStatus::Planning,
        created_ms: time,
        // A child run is its top-level run's starter's: the requester rule of its approvals.
        created_by: e.parent.as_ref().map_or(actor, |p| p.started_by.as_str()).to_owned(),
        finished_ms: None,
        active: 0,
        steps: e.steps.len() as u32,
        terminal: 0,
        failed: 0,
        checkpoints: 0,
        parent: e.parent.clone(),
    };
    let steps = e
        .steps
        .iter()
        .enumerate()
        .map(|(i, CreatedStep { name, plugin, needs })| StepRecord::pending(&e.run_id, name, i as u32, plugin, *needs))
        .collect();
    (run, steps)
}

/// Applies `event` (any run entry but `run.created`) at `time`.
pub fn evolve<S: RunState>(state: &mut S, event: &RunEvent, time: i64) -> Result<(), S::Error> {
    match event {
        RunEvent::Created(_) => return Err(state.refuse("a run is created once".to_owned())),
        RunEvent::Succeeded(_) | RunEvent::Failed(_) | RunEvent::Cancelled(_) => {
            let run = state.run();
            run.status = event.run_end().expect("a run's end");
            run.finished_ms = Some(time);
        }
        RunEvent::Resumed(_) => {
            let run = state.run();
            run.status = RunStatus::Running;
            run.finished_ms = None;
        }
        RunEvent::StepWaiting(e) => {
            state.step(&e.step)?.wait = Some(e.reason.clone());
            state.wait(&e.step)?;
        }
        RunEvent::StepQueued(e) => {
            let rec = take_up(state, &e.step, StepState::Queued, time)?;
            rec.job = Some(e.job_id.clone());
            rec.cache.clone_from(&e.cache);
        }
        RunEvent::StepCacheWaiting(e) => {
            // It holds its slot while it waits, as a queued step does, but has no job.
            let rec = take_up(state, &e.step, StepState::Queued, time)?;
            rec.job = None;
            let short: String = e.key.chars().take(12).collect();
            rec.wait = Some(format!(
                "waiting for {} to compute its cached result (key {short}…), not computing it twice",
                e.waiting_for
            ));
            rec.cache = Some(crate::domain::cache::StepCache {
                hit: false,
                key: e.key.clone(),
                age_ms: None,
                hits: None,
                ttl_ms: e.ttl_ms,
                waiting_for: Some(e.waiting_for.clone()),
            });
        }
        RunEvent::StepChild(e) => {
            // The child run is the step's attempt: it runs (holding a slot) until the child ends.
            let rec = take_up(state, &e.step, StepState::Running, time)?;
            rec.job = None;
            rec.cache = None;
            rec.child = Some(e.child_run_id.clone());
            rec.worker = Some(format!("child {}", e.child_run_id));
            rec.attempts += 1;
            rec.started_ms = Some(time);
            if rec.history.len() >= StepRecord::HISTORY_MAX {
                rec.history.remove(0);
            }
            rec.history.push(AttemptRecord {
                attempt: rec.attempts,
                worker: format!("child {}", e.child_run_id),
                started_ms: time,
                finished_ms: None,
                outcome: None,
                error_code: None,
                error: None,
            });
        }
        RunEvent::StepStarted(e) => {
            let rec = state.step(&e.step)?;
            rec.state = StepState::Running;
            rec.worker = Some(e.worker.clone());
            // Every attempt counts, across manual retries (which start a new job).
            rec.attempts += 1;
            rec.started_ms = Some(time);
            if rec.history.len() >= StepRecord::HISTORY_MAX {
                rec.history.remove(0);
            }
            rec.history.push(AttemptRecord {
                attempt: e.attempt.unwrap_or(rec.attempts),
                worker: e.worker.clone(),
                started_ms: time,
                finished_ms: None,
                outcome: None,
                error_code: None,
                error: None,
            });
        }
        RunEvent::StepRetrying(e) | RunEvent::StepInterrupted(e) => {
            let rec = state.step(&e.step)?;
            rec.end_attempt(event.kind_outcome(), time, e.error.as_deref(), e.error_code.as_deref());
            rec.state = StepState::Queued;
            rec.error.clone_from(&e.error);
            rec.error_code.clone_from(&e.error_code);
        }
        RunEvent::StepCheckpoint(e) => {
            let rec = state.step(&e.step)?;
            if !matches!(rec.state, StepState::Queued | StepState::Running) {
                return Err(state.refuse(format!("step {} reaches its checkpoint but is not running", e.step)));
            }
            rec.end_attempt("succeeded", time, None, None);
            rec.error = None;
            rec.error_code = None;
            rec.outputs = e.outputs.clone();
            rec.state = StepState::CheckpointPending;
            rec.approval = Some(e.approval_id.clone());
            let run = state.run();
            take_one(&mut run.active, || format!("run {} active steps", run.id));
            run.checkpoints += 1;
        }
        RunEvent::StepSucceeded(e) => {
            // A cache hit may take a step waiting for a slot.
            state.unwait(&e.step)?;
            let rec = state.step(&e.step)?;
            if e.cache.is_some() {
                rec.cache.clone_from(&e.cache);
                rec.wait = None;
            }
            if rec.state == StepState::CheckpointPending && rec.approval != e.approval_id {
                return Err(state.refuse(format!("step {} goes on without its approval", e.step)));
            }
            rec.end_attempt("succeeded", time, None, None);
            // An earlier attempt's error is history (the trace keeps it), not the step's state.
            rec.error = None;
            rec.error_code = None;
            rec.outputs = e.outputs.clone();
            finish(state, &e.step, StepState::Succeeded, time)?;
            release(state, &e.dependants)?;
        }
        RunEvent::StepFailed(e) => {
            // A step may fail before it is queued (a child run that cannot start), while it
            // waits for a slot, or on a retry of a failed step.
            state.unwait(&e.step)?;
            let rec = state.step(&e.step)?;
            let was_failed = rec.state == StepState::Failed;
            rec.wait = None;
            if rec.state == StepState::CheckpointPending {
                // Rejected outputs are not passed on.
                rec.outputs = serde_json::Value::Null;
            }
            rec.end_attempt("failed", time, e.error.as_deref(), e.error_code.as_deref());
            rec.error.clone_from(&e.error);
            rec.error_code.clone_from(&e.error_code);
            if was_failed {
                rec.finished_ms = Some(time);
            } else {
                finish(state, &e.step, StepState::Failed, time)?;
                state.run().failed += 1;
            }
        }
        RunEvent::StepSkipped(e) => {
            let rec = state.step(&e.step)?;
            if rec.state != StepState::Failed {
                return Err(state.refuse(format!("step {} is skipped but has not failed", e.step)));
            }
            rec.state = StepState::Skipped;
            let run = state.run();
            take_one(&mut run.failed, || format!("run {} failed steps", run.id));
            release(state, &e.dependants)?;
        }
        RunEvent::StepCancelled(e) => {
            state.unwait(&e.step)?;
            let rec = state.step(&e.step)?;
            rec.end_attempt("cancelled", time, None, None);
            if rec.state == StepState::Failed {
                let run = state.run();
                take_one(&mut run.failed, || format!("run {} failed steps", run.id));
                take_one(&mut run.terminal, || format!("run {} finished steps", run.id));
            }
            finish(state, &e.step, StepState::Cancelled, time)?;
        }
    }
    Ok(())
}

impl RunEvent {
    /// How an attempt ended, as the step's history says it: the kind without `step.`.
    fn kind_outcome(&self) -> &'static str {
        use crate::kernel::event::Event;
        self.kind().trim_start_matches("step.")
    }
}

/// A step's new attempt: it leaves the slot queue and takes a slot (`to`: queued, or running
/// for a child run); a failed step being retried no longer counts as finished.
fn take_up<'s, S: RunState>(
    state: &'s mut S,
    name: &str,
    to: StepState,
    time: i64,
) -> Result<&'s mut StepRecord, S::Error> {
    state.unwait(name)?;
    let rec = state.step(name)?;
    let was_failed = rec.state == StepState::Failed;
    // A step that waited for its cache key already holds its slot.
    let holds_slot = matches!(rec.state, StepState::Queued | StepState::Running);
    let run = state.run();
    if was_failed {
        take_one(&mut run.terminal, || format!("run {} finished steps", run.id));
        take_one(&mut run.failed, || format!("run {} failed steps", run.id));
    }
    if !holds_slot {
        run.active += 1;
    }
    if run.status == RunStatus::Planning {
        run.status = RunStatus::Running;
    }
    let rec = state.step(name)?;
    rec.state = to;
    rec.wait = None;
    rec.queued_ms = Some(time);
    rec.finished_ms = None;
    // A new attempt: its checkpoint, if it has one, asks anew.
    rec.approval = None;
    Ok(rec)
}

/// A step reached a final `state`: it no longer holds a slot, and the run counts it finished.
fn finish<S: RunState>(state: &mut S, name: &str, to: StepState, time: i64) -> Result<(), S::Error> {
    let rec = state.step(name)?;
    let was_active = matches!(rec.state, StepState::Queued | StepState::Running);
    let was_checkpoint = rec.state == StepState::CheckpointPending;
    rec.state = to;
    rec.finished_ms = Some(time);
    let run = state.run();
    if was_active {
        take_one(&mut run.active, || format!("run {} active steps", run.id));
    }
    if was_checkpoint {
        take_one(&mut run.checkpoints, || format!("run {} checkpoints", run.id));
    }
    run.terminal += 1;
    Ok(())
}

/// Marks the dependants' needs as met.
fn release<S: RunState>(state: &mut S, dependants: &[String]) -> Result<(), S::Error> {
    for name in dependants {
        let rec = state.step(name)?;
        take_one(&mut rec.pending_needs, || format!("step {}/{name} pending needs", rec.run));
    }
    Ok(())
}
