//! Planning runs: start (idempotent on `runToken`), step outcomes reported by the queue, cancel,
//! manual recovery (retry, skip, abort), dlq replay of steps, cron fires, and DAG versions. A
//! run's entries are emitted through its `Planner` (`planner.rs`), which applies each to its
//! working copy with the projection's own [`super::transition::evolve`].

use super::planner::{End, Planner, dag_record, plugin_digest};
use crate::domain::approvals::{Outcome as ApprovalOutcome, Resolution};
use crate::domain::cache;
use crate::domain::live::Effects;
use crate::domain::queue::tables::JobRecord;
use crate::domain::runs::spec::{self, Compiled};
use crate::domain::runs::tables::RunStatus;
use crate::domain::runs::tables::SCHEDULES;
use crate::domain::runs::tables::StepState;
use crate::domain::runs::transition::RunState;
use crate::domain::runs::{
    ClearedSchedule, DagAction, DagEvent, DagRegistered, DagRolledBack, DagVersionRef, Outcome, PluginRegistered,
    Recovery, RunCommand, RunEvent, RunResumed, ScheduleAction, ScheduleEvent, ScheduleFired, ScheduleRef,
    SchedulesCleared, StepError, StepStarted,
};
use crate::kernel::CommandError;
use crate::kernel::PlanCtx;
use crate::kernel::event::Event;
use crate::kernel::ledger::Draft;
use crate::kernel::storage;
use redb::{ReadableTable, WriteTransaction};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub fn plan(cmd: &RunCommand, txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<Effects, CommandError> {
    match cmd {
        RunCommand::RegisterDag { name, spec, unsigned } => register(txn, name, spec, *unsigned),
        RunCommand::RegisterPlugin { name, digest, entrypoint, kinds, unsigned } => {
            let current = plugin_digest(txn, name)?;
            if current.as_deref() == Some(digest.as_str()) {
                return Ok(Effects { note: Some(json!({ "unchanged": true })), ..Effects::default() });
            }
            let event = DagEvent::PluginRegistered(PluginRegistered {
                name: name.clone(),
                digest: digest.clone(),
                entrypoint: entrypoint.clone(),
                kinds: kinds.clone(),
                unsigned: *unsigned,
                previous: current,
            });
            Ok(vec![event.draft("", vec![name.clone(), digest.clone()])].into())
        }
        RunCommand::DagVersion { name, version, action } => dag_version(txn, name, *version, *action),
        RunCommand::Start { tenant, dag, inputs, run_token } => {
            start(txn, ctx, tenant, dag, inputs, run_token.as_deref())
        }
        RunCommand::Cancel { tenant, run } => {
            let mut p = Planner::load(txn, ctx, tenant.as_deref(), run)?;
            if p.run.status.terminal() {
                return Ok(Effects { note: Some(json!({ "unchanged": true })), ..Effects::default() });
            }
            p.cancel_all(ctx, false, None)?;
            Ok(p.done(ctx).into())
        }
        RunCommand::Recover { tenant, run, action, step } => {
            recover(txn, ctx, tenant.as_deref(), run, *action, step.as_deref())
        }
        RunCommand::Schedule { dag, action } => {
            let schedules = dag_schedules(txn, dag)?;
            if schedules.is_empty() {
                return Err(CommandError::NotFound { what: format!("cron schedule of DAG {dag}") });
            }
            let at = ScheduleRef { dag: dag.clone() };
            let event = match action {
                ScheduleAction::Pause => ScheduleEvent::Paused(at),
                ScheduleAction::Resume => ScheduleEvent::Resumed(at),
                ScheduleAction::Clear => {
                    let cleared = schedules
                        .iter()
                        .map(|s| ClearedSchedule {
                            dag: dag.clone(),
                            index: s["index"].as_u64().unwrap_or_default(),
                            schedule: s["schedule"].as_str().unwrap_or_default().to_owned(),
                        })
                        .collect();
                    ScheduleEvent::Cleared(SchedulesCleared { dag: dag.clone(), cleared })
                }
            };
            Ok(vec![event.draft("", vec![dag.clone()])].into())
        }
    }
}

impl RunStatus {
    pub fn terminal(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Cancelled)
    }
}

pub(crate) fn register(
    txn: &WriteTransaction,
    name: &str,
    text: &str,
    unsigned: bool,
) -> Result<Effects, CommandError> {
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let rec = dag_record(txn, name)?;
    // A version from a signed DAG bundle is pinned to the plugin digests installed now: a later
    // plugin upgrade does not change what this version runs (importing the DAG bundle again
    // makes a version pinned to the new ones). Dev registrations follow the installed plugins
    // at each run's start.
    let mut pins = std::collections::BTreeMap::new();
    let c = spec::compile_registered(text).map_err(|e| CommandError::invalid("spec", e.to_string()))?;
    refuse_cycle(txn, name, &c)?;
    if !unsigned {
        for s in c.steps.iter().filter(|s| s.runs_plugin()) {
            let digest = plugin_digest(txn, &s.plugin)?.ok_or_else(|| {
                CommandError::conflict(
                    "plugin_not_installed",
                    format!("step {} needs plugin {:?}, which is not installed", s.name, s.plugin),
                )
            })?;
            pins.insert(s.plugin.clone(), digest);
        }
    }
    if let Some(v) = rec
        .as_ref()
        .and_then(|r| r.versions.iter().find(|v| v.version == r.active))
        .filter(|v| v.sha256 == sha256 && v.plugins == pins)
    {
        return Ok(Effects { note: Some(json!({ "unchanged": true, "version": v.version })), ..Effects::default() });
    }
    let version = rec.map_or(1, |r| r.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1);
    let event = DagEvent::Registered(DagRegistered {
        name: name.to_owned(),
        version,
        sha256,
        spec: text.to_owned(),
        unsigned,
        plugins: pins,
    });
    Ok(vec![event.draft("", vec![name.to_owned()])].into())
}

/// Refuses a version of `name` whose sub-orchestrations lead back to `name` through the
/// active versions of the DAGs they start (a cycle formed later, by a rollback, is refused
/// when a run reaches it: `orchestration.cycle`).
fn refuse_cycle(txn: &WriteTransaction, name: &str, c: &Compiled) -> Result<(), CommandError> {
    let mut stack: Vec<Vec<String>> = c.children().into_iter().map(|d| vec![name.to_owned(), d.to_owned()]).collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(path) = stack.pop() {
        let at = path.last().expect("a path has a DAG").clone();
        if at == name {
            return Err(CommandError::Invalid {
                code: "dag_cycle",
                field: Some("spec"),
                detail: format!("DAG {name}: its sub-orchestrations form a cycle: {}", path.join(" -> ")),
            });
        }
        if !seen.insert(at.clone()) || path.len() > 64 {
            continue;
        }
        let Some(rec) = dag_record(txn, &at)? else { continue };
        let text = {
            let t = txn.open_table(crate::domain::runs::tables::DAG_SPECS).map_err(storage)?;
            let v = t.get(format!("{at}@{}", rec.active).as_str()).map_err(storage)?;
            v.map(|v| String::from_utf8_lossy(v.value()).into_owned())
        };
        let Some(child) = text.and_then(|t| spec::compile_registered(&t).ok()) else { continue };
        for next in child.children() {
            let mut p = path.clone();
            p.push(next.to_owned());
            stack.push(p);
        }
    }
    Ok(())
}

fn dag_version(
    txn: &WriteTransaction,
    name: &str,
    version: Option<u32>,
    action: DagAction,
) -> Result<Effects, CommandError> {
    let rec = dag_record(txn, name)?.ok_or_else(|| CommandError::NotFound { what: format!("DAG {name}") })?;
    let draft = |event: DagEvent| event.draft("", vec![name.to_owned()]);
    match action {
        DagAction::Disable | DagAction::Enable => {
            let v = version.unwrap_or(rec.active);
            if !rec.versions.iter().any(|x| x.version == v) {
                return Err(CommandError::NotFound { what: format!("DAG {name} version {v}") });
            }
            let at = DagVersionRef { name: name.to_owned(), version: v };
            let event = if action == DagAction::Disable { DagEvent::Disabled(at) } else { DagEvent::Enabled(at) };
            Ok(vec![draft(event)].into())
        }
        DagAction::Rollback => {
            if let Some(v) = version.filter(|v| !rec.versions.iter().any(|x| x.version == *v)) {
                return Err(CommandError::NotFound { what: format!("DAG {name} version {v}") });
            }
            let to = match version {
                Some(v) => rec.versions.iter().find(|x| x.version == v && !x.disabled).map(|x| x.version),
                None => rec.versions.iter().filter(|x| x.version < rec.active && !x.disabled).map(|x| x.version).max(),
            }
            .ok_or_else(|| {
                CommandError::conflict(
                    "no_version_to_roll_back",
                    format!("DAG {name} has no enabled version to roll back to"),
                )
            })?;
            Ok(vec![draft(DagEvent::RolledBack(DagRolledBack { name: name.to_owned(), from: rec.active, to }))].into())
        }
    }
}

pub(crate) fn start(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: &str,
    dag: &str,
    given: &Map<String, Value>,
    run_token: Option<&str>,
) -> Result<Effects, CommandError> {
    super::planner::start_run(txn, ctx, tenant, dag, None, given, run_token, None)
}

fn recover(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: Option<&str>,
    run: &str,
    action: Recovery,
    step: Option<&str>,
) -> Result<Effects, CommandError> {
    let mut p = Planner::load(txn, ctx, tenant, run)?;
    if let Some(parent) = p.run.parent.clone().filter(|_| action != Recovery::Abort) {
        p.done(ctx);
        return Err(CommandError::conflict(
            "child_run",
            format!(
                "run {run} is the child run of {}'s step {}: recover it through its parent (stella orch run retry {} --step {}, or skip)",
                parent.run_id, parent.step, parent.run_id, parent.step
            ),
        ));
    }
    if p.run.status != RunStatus::Failed {
        let status = serde_json::to_value(p.run.status).expect("status").as_str().unwrap_or("?").to_owned();
        // Name what is in flight (an earlier retry's step, most often): wait for it.
        let mut busy = Vec::new();
        for name in p.dag.clone().steps.iter().map(|s| &s.name) {
            let rec = p.step(name)?;
            if matches!(rec.state, StepState::Queued | StepState::Running | StepState::CheckpointPending) {
                busy.push(format!("{name} ({})", status_name(rec.state)));
            }
        }
        let in_flight = if busy.is_empty() { String::new() } else { format!("; in flight: {}", busy.join(", ")) };
        p.done(ctx);
        return Err(CommandError::conflict(
            "run_not_failed",
            format!("run {run} is {status}{in_flight}: retry, skip and abort apply to a failed run"),
        ));
    }
    if action == Recovery::Abort {
        p.cancel_all(ctx, true, None)?;
        return Ok(p.done(ctx).into());
    }
    let target = match step {
        Some(s) => {
            let name = match s.split_once('/') {
                // A step record id names its run: it must be this one.
                Some((of, _)) if of != run => {
                    return Err(CommandError::invalid(
                        "step",
                        format!("step {s} belongs to run {of}, not {run}: name a step of {run} (or just its name)"),
                    ));
                }
                Some((_, name)) => name.to_owned(),
                None => s.to_owned(),
            };
            let rec = p.step(&name).map_err(|_| CommandError::NotFound { what: format!("step {s} of {run}") })?;
            if rec.state != StepState::Failed {
                return Err(CommandError::conflict("step_not_failed", format!("step {name} of {run} has not failed")));
            }
            name
        }
        None => p
            .last_failed()?
            .ok_or_else(|| CommandError::conflict("no_failed_step", format!("run {run} has no failed step")))?,
    };
    let idx =
        p.dag.step(&target).map(|(i, _)| i).ok_or_else(|| CommandError::NotFound { what: format!("step {target}") })?;
    let code = p.step(&target)?.error_code.clone();
    if action == Recovery::Skip && matches!(code.as_deref(), Some("approval_rejected" | "approval_timed_out")) {
        return Err(CommandError::conflict(
            "approval_not_skippable",
            format!(
                "step {target} of {run} failed its approval ({}): skipping would pass over it; retry the step (a new approval) or abort the run",
                code.unwrap_or_default()
            ),
        ));
    }
    let resumed = RunResumed {
        run_id: run.to_owned(),
        action: if action == Recovery::Retry { "retry" } else { "skip" }.to_owned(),
        step: Some(target.clone()),
        steps: None,
    };
    p.emit(RunEvent::Resumed(resumed))?;
    // A failed child run is settled through its parent: the retry starts a new child, the
    // skip goes on without it; either way the old one is aborted.
    p.abort_child(ctx, &target)?;
    match action {
        Recovery::Retry => p.retry_step(ctx, idx, "retry")?,
        Recovery::Skip => {
            p.resolve_dead(&target, "skip", None)?;
            p.ended(ctx, idx, End::Skipped)?
        }
        Recovery::Abort => unreachable!("handled above"),
    }
    p.settle()?;
    Ok(p.done(ctx).into())
}

/// A dead job left where it was, and why.
pub type Refusal = (String, String);

/// `dlq replay` of dead DAG step jobs: each is retried through its run, as `run retry --step`
/// would (one `run.resumed` per run), and leaves the dead-letter queue. Returns the drafts and
/// the jobs refused, each with the reason (its run moved on, or it is no longer its step's job).
pub fn replay_dead_steps(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    jobs: &[JobRecord],
) -> Result<(Vec<Draft>, Vec<Refusal>), CommandError> {
    // A payload is the enqueuer's word: a job is replayed through a run only if it is that
    // run's step's current job, of the same tenant (`step_of`); any other is refused alone.
    let mut by_run: std::collections::BTreeMap<String, Vec<(&JobRecord, String)>> = Default::default();
    let mut refused = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for j in jobs.iter().filter(|j| seen.insert(j.id.clone())) {
        match step_of(txn, ctx, j)? {
            Some((p, step)) if p.run.tenant == j.tenant => {
                by_run.entry(p.run.id.clone()).or_default().push((j, step));
                p.done(ctx);
            }
            Some((p, _)) => {
                p.done(ctx);
                refused.push((j.id.clone(), "it is no longer the current job of a step it names".to_owned()))
            }
            None => refused.push((j.id.clone(), "it is no longer the current job of a step it names".to_owned())),
        }
    }
    let mut drafts = Vec::new();
    for (run, jobs) in by_run {
        let mut p = Planner::load(txn, ctx, None, &run)?;
        let mut steps = Vec::new();
        for (j, step) in jobs {
            let rec = p.step(&step)?.clone();
            let why = if let Some(parent) = &p.run.parent {
                Some(format!(
                    "its run {run} is a child of {}: retry {}'s step {} instead",
                    parent.run_id, parent.run_id, parent.step
                ))
            } else if p.run.status != RunStatus::Failed {
                Some(format!("its run {run} is {}", status_name(p.run.status)))
            } else if rec.state != StepState::Failed {
                Some(format!("step {run}/{step} has moved on (it is {})", status_name(rec.state)))
            } else {
                None
            };
            match why {
                Some(why) => refused.push((j.id.clone(), why)),
                None => steps.push(step),
            }
        }
        if steps.is_empty() {
            p.done(ctx);
            continue;
        }
        let resumed =
            RunResumed { run_id: run.clone(), action: "replay".to_owned(), step: None, steps: Some(steps.clone()) };
        p.emit(RunEvent::Resumed(resumed))?;
        for step in &steps {
            let idx = p
                .dag
                .step(step)
                .map(|(i, _)| i)
                .ok_or_else(|| CommandError::NotFound { what: format!("step {step}") })?;
            p.retry_step(ctx, idx, "replay")?;
        }
        p.settle()?;
        drafts.extend(p.done(ctx));
    }
    Ok((drafts, refused))
}

fn status_name(v: impl serde::Serialize) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| "?".into())
}

/// The schedules of one DAG.
fn dag_schedules(txn: &WriteTransaction, dag: &str) -> Result<Vec<Value>, CommandError> {
    let t = txn.open_table(SCHEDULES).map_err(storage)?;
    let (from, to) = (format!("{dag}|"), format!("{dag}|\u{10FFFF}"));
    let mut out = Vec::new();
    for row in t.range(from.as_str()..to.as_str()).map_err(storage)? {
        out.push(serde_json::from_slice(row.map_err(storage)?.1.value()).map_err(storage)?);
    }
    Ok(out)
}

/// A due cron timer: start the run (idempotent on the fire time) and arm the next fire.
/// Missed fires while the appliance was down collapse into this one.
pub fn fire_schedule(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    dag: &str,
    index: u64,
    due_ms: i64,
) -> Result<Option<Vec<Draft>>, CommandError> {
    let key = format!("{dag}|{index}");
    let rec: Option<Value> = {
        let t = txn.open_table(SCHEDULES).map_err(storage)?;
        let v = t.get(key.as_str()).map_err(storage)?;
        v.map(|v| serde_json::from_slice(v.value())).transpose().map_err(storage)?
    };
    let Some(rec) =
        rec.filter(|r| r["nextMs"].as_i64() == Some(due_ms) && r["paused"] != true && r["disabled"] != true)
    else {
        return Ok(None);
    };
    let schedule = crate::domain::runs::cron::Schedule::parse(rec["schedule"].as_str().unwrap_or_default())
        .map_err(CommandError::Storage)?;
    let next = schedule.next_after(ctx.now);
    let inputs = rec["inputs"].as_object().cloned().unwrap_or_default();
    let tenant = ctx.defaults.tenants.allowed[0].clone();
    let token = format!("cron:{dag}:{index}:{due_ms}");
    let mut drafts = Vec::new();
    let (run, error) = match start(txn, ctx, &tenant, dag, &inputs, Some(&token)) {
        Ok(e) => {
            drafts.extend(e.drafts);
            (e.note.and_then(|n| n["runId"].as_str().or(n["existing"].as_str()).map(str::to_owned)), None)
        }
        Err(e) => (None, Some(e.to_string())),
    };
    let fired = ScheduleFired { dag: dag.to_owned(), index, due_ms, run_id: run, error, next_ms: next };
    drafts.push(ScheduleEvent::Fired(fired).draft("", vec![dag.to_owned()]));
    Ok(Some(drafts))
}

/// The queue's hook when a lease is granted on a step's job.
pub fn on_started(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    job: &JobRecord,
    worker: &str,
    attempt: u32,
) -> Result<Vec<Draft>, CommandError> {
    let Some((mut p, step)) = step_of(txn, ctx, job)? else { return Ok(vec![]) };
    let event = RunEvent::StepStarted(StepStarted {
        run_id: p.run.id.clone(),
        step,
        worker: worker.to_owned(),
        attempt: Some(attempt),
        job_id: job.id.clone(),
    });
    p.emit(event)?;
    Ok(p.done(ctx))
}

/// The queue's hook when a step's job finished an attempt.
pub fn on_outcome(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    job: &JobRecord,
    outcome: Outcome,
) -> Result<Vec<Draft>, CommandError> {
    let Some((mut p, step)) = step_of(txn, ctx, job)? else { return Ok(vec![]) };
    if p.run.status.terminal() {
        return Ok(p.done(ctx));
    }
    let idx = p
        .dag
        .step(&step)
        .map(|(i, _)| i)
        .ok_or_else(|| CommandError::Storage(format!("step {step} is not in its DAG")))?;
    let run_id = p.run.id.clone();
    match outcome {
        Outcome::Succeeded { outputs } if p.dag.steps[idx].checkpoint.is_some() => {
            let inputs_hash = hex::encode(Sha256::digest(crate::kernel::canonical::to_vec(&job.payload["inputs"])));
            p.checkpoint(ctx, idx, outputs, inputs_hash)?
        }
        Outcome::Succeeded { outputs } => {
            // A cached step's lookup missed when it was queued: its outputs are stored now,
            // before its end (which would otherwise release its key unstored).
            let miss = p.step(&step)?.cache.clone().filter(|c| !c.hit && c.waiting_for.is_none());
            let parts = miss.as_ref().map(|_| p.fingerprint(idx, &job.payload["inputs"]));
            if let (Some(c), Some(parts)) = (miss, parts)
                && cache::key(&parts) == c.key
            {
                let stored = cache::CacheStored {
                    key: c.key,
                    dag: p.run.dag.clone(),
                    step: step.clone(),
                    run_id: run_id.clone(),
                    parts,
                    outputs: outputs.clone(),
                    expires_ms: ctx.now.saturating_add(c.ttl_ms as i64),
                };
                let tenant = p.run.tenant.clone();
                let drafts = cache::plan::store(txn, ctx, &tenant, stored)?;
                p.drafts.extend(drafts);
            }
            p.ended(ctx, idx, End::Succeeded(outputs))?;
        }
        Outcome::Retrying { error, code } => {
            let again = StepError { run_id, step, error: Some(error), error_code: Some(code) };
            p.emit(RunEvent::StepRetrying(again))?
        }
        Outcome::Failed { error, code } => p.ended(ctx, idx, End::Failed { error, code })?,
        Outcome::Interrupted { error } => {
            let again = StepError { run_id, step, error: Some(error), error_code: Some("interrupted".to_owned()) };
            p.emit(RunEvent::StepInterrupted(again))?
        }
    }
    p.settle()?;
    Ok(p.done(ctx))
}

/// An approval was decided (or timed out) in this command: its checkpoint goes on, fails, or
/// its run is cancelled. Refused if the step no longer waits for that very approval or the
/// run is no longer the DAG version it was bound to.
pub fn on_approval(txn: &WriteTransaction, ctx: &mut PlanCtx, res: &Resolution) -> Result<Vec<Draft>, CommandError> {
    let a = &res.approval;
    let mut p = Planner::load(txn, ctx, None, &a.run)?;
    let rec = p.step(&a.step)?.clone();
    if rec.state != StepState::CheckpointPending
        || rec.approval.as_deref() != Some(a.id.as_str())
        || p.run.dag != a.dag
        || p.run.version != a.dag_version
    {
        p.done(ctx);
        return Err(CommandError::conflict(
            "approval_stale",
            format!(
                "step {}/{} no longer waits for approval {} (it is {})",
                a.run,
                a.step,
                a.id,
                status_name(rec.state)
            ),
        ));
    }
    let idx = p
        .dag
        .step(&a.step)
        .map(|(i, _)| i)
        .ok_or_else(|| CommandError::Storage(format!("step {} is not in its DAG", a.step)))?;
    match &res.outcome {
        ApprovalOutcome::Approved { .. } => p.ended(ctx, idx, End::Approved(a.id.clone()))?,
        ApprovalOutcome::Rejected { code, error } => {
            p.ended(ctx, idx, End::Failed { error: error.clone(), code: (*code).to_owned() })?
        }
        ApprovalOutcome::CancelRun => {
            p.cancel_all(ctx, false, Some(&a.id))?;
            return Ok(p.done(ctx));
        }
    }
    p.settle()?;
    Ok(p.done(ctx))
}

/// The run (as this command has planned it so far) and step a job belongs to, if it is the
/// current job of that step.
fn step_of<'t>(
    txn: &'t WriteTransaction,
    ctx: &mut PlanCtx,
    job: &JobRecord,
) -> Result<Option<(Planner<'t>, String)>, CommandError> {
    let (Some(run), Some(step)) = (job.payload["run"].as_str(), job.payload["step"].as_str()) else { return Ok(None) };
    let Some(mut p) = Planner::find(txn, ctx, None, run)? else { return Ok(None) };
    if p.find_step(step)?.is_none_or(|rec| rec.job.as_deref() != Some(job.id.as_str())) {
        p.done(ctx);
        return Ok(None);
    }
    Ok(Some((p, step.to_owned())))
}

/// The parents of the child runs this command ended: each parent's step ends as its child did
/// (succeeded with the child's outputs, or failed with `orchestration.child.failed` naming the
/// child's root-cause step), in this same transaction, so that no child ends while its
/// parent's step still runs. A parent that ends in turn settles its own parent.
pub fn follow_children(txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<Vec<Draft>, CommandError> {
    let mut drafts = Vec::new();
    while let Some(child) = super::planner::next_child_end(ctx) {
        let mut c = Planner::load(txn, ctx, None, &child)?;
        let Some(link) = c.run.parent.clone() else {
            c.done(ctx);
            continue;
        };
        let end = c.child_end()?;
        let inputs_hash = c.run.inputs_hash.clone();
        c.done(ctx);
        let mut p = Planner::load(txn, ctx, None, &link.run_id)?;
        let rec = p.step(&link.step)?;
        // A parent that moved on (cancelled, or its step retried with a new child) ignores it.
        if rec.state != StepState::Running || rec.child.as_deref() != Some(child.as_str()) || p.run.status.terminal() {
            p.done(ctx);
            continue;
        }
        let idx = p
            .dag
            .step(&link.step)
            .map(|(i, _)| i)
            .ok_or_else(|| CommandError::Storage(format!("step {} is not in its DAG", link.step)))?;
        match end {
            End::Succeeded(outputs) if p.dag.steps[idx].checkpoint.is_some() => {
                p.checkpoint(ctx, idx, outputs, inputs_hash)?
            }
            end => p.ended(ctx, idx, end)?,
        }
        p.settle()?;
        drafts.extend(p.done(ctx));
    }
    Ok(drafts)
}

/// Wakes the steps waiting for the keys whose flights this command ended (stored, or released
/// by a step that failed or was cancelled): each looks its key up again, and hits the entry
/// just stored, computes the key itself, or waits for the waiter that now computes it. A
/// waiter that moved on (its run cancelled) is passed over.
pub fn follow_cache(txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<Vec<Draft>, CommandError> {
    let mut drafts = Vec::new();
    while let Some((key, waiters)) = cache::plan::next_wake(ctx) {
        for waiter in waiters {
            let Some((run, step)) = waiter.split_once('/') else { continue };
            let Some(mut p) = Planner::find(txn, ctx, None, run)? else { continue };
            let rec = p.find_step(step)?.cloned();
            let waits = rec.is_some_and(|r| {
                r.state == StepState::Queued
                    && r.job.is_none()
                    && r.cache.is_some_and(|c| c.key == key && c.waiting_for.is_some())
            });
            if waits && !p.run.status.terminal() {
                let idx = p
                    .dag
                    .step(step)
                    .map(|(i, _)| i)
                    .ok_or_else(|| CommandError::Storage(format!("step {step} is not in its DAG")))?;
                p.enqueue(ctx, idx)?;
                p.settle()?;
            }
            drafts.extend(p.done(ctx));
        }
    }
    Ok(drafts)
}
