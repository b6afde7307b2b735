//! Planning runs: start (idempotent on `runToken`), step outcomes reported by the queue, cancel,
//! manual recovery (retry, skip, abort), and DAG versions. The `Planner` keeps a working copy
//! of a run and its touched steps, emits the drafts, and mirrors on its copy exactly what the
//! projection (`engine::apply`) will do, so one plan can cascade: a finished step releases its
//! dependants, which are queued or wait for a `maxParallelSteps` slot, and the run settles.

use crate::domain::bundles::tables::PLUGINS;
use crate::domain::live::Effects;
use crate::domain::queue::apply::EnqueuedJob;
use crate::domain::queue::job_id;
use crate::domain::queue::tables::JOBS;
use crate::domain::queue::tables::JobRecord;
use crate::domain::queue::tables::JobState;
use crate::domain::queue::{DlqResolved, JobCancelled, QueueEvent};
use crate::domain::runs::spec::{self, Compiled};
use crate::domain::runs::tables::DAG_SPECS;
use crate::domain::runs::tables::DAGS;
use crate::domain::runs::tables::DagRecord;
use crate::domain::runs::tables::RUN_TOKENS;
use crate::domain::runs::tables::RUN_WAITING;
use crate::domain::runs::tables::RUNS;
use crate::domain::runs::tables::RunRecord;
use crate::domain::runs::tables::RunStatus;
use crate::domain::runs::tables::SCHEDULES;
use crate::domain::runs::tables::STEPS;
use crate::domain::runs::tables::StepRecord;
use crate::domain::runs::tables::StepState;
use crate::domain::runs::{
    CompiledDags, DagEvent, DagRegistered, DagRolledBack, DagVersionRef, NextRunSeq, PluginRegistered,
};
use crate::domain::runs::{run_id, step_key};
use crate::kernel::CommandError;
use crate::kernel::PlanCtx;
use crate::kernel::counters::COUNTERS;
use crate::kernel::event::Event;
use crate::kernel::invariant::take_one;
use crate::kernel::ledger::Draft;
use crate::kernel::storage;
use crate::kernel::store::rw;
use redb::{ReadableTable, WriteTransaction};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Inputs of one run, serialized, at most.
const INPUTS_BYTES_MAX: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RunCommand {
    /// Register a new version of a DAG (validated by the caller with `spec::compile`).
    RegisterDag {
        name: String,
        spec: String,
        unsigned: bool,
    },
    /// Register a plugin sealed at `digest` (dev mode: from a local directory, unsigned).
    RegisterPlugin {
        name: String,
        digest: String,
        entrypoint: String,
        /// The step kinds it implements (`plugins::Manifest::kinds`).
        kinds: Vec<String>,
        unsigned: bool,
    },
    DagVersion {
        name: String,
        version: Option<u32>,
        action: DagAction,
    },
    Start {
        tenant: String,
        dag: String,
        inputs: Map<String, Value>,
        run_token: Option<String>,
    },
    Cancel {
        tenant: Option<String>,
        run: String,
    },
    Recover {
        tenant: Option<String>,
        run: String,
        action: Recovery,
        step: Option<String>,
    },
    /// Pause, resume or clear a DAG's cron schedules.
    Schedule {
        dag: String,
        action: ScheduleAction,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleAction {
    Pause,
    Resume,
    Clear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DagAction {
    Disable,
    Enable,
    Rollback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    Retry,
    Skip,
    Abort,
}

/// How a step's job ended, as the queue reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded {
        outputs: Value,
    },
    Retrying {
        error: String,
        code: String,
    },
    Failed {
        error: String,
        code: String,
    },
    /// The attempt died with the appliance (a crash or kill -9): queued again at once.
    Interrupted {
        error: String,
    },
}

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
            p.cancel_all(false)?;
            Ok(p.drafts.into())
        }
        RunCommand::Recover { tenant, run, action, step } => {
            recover(txn, ctx, tenant.as_deref(), run, *action, step.as_deref())
        }
        RunCommand::Schedule { dag, action } => {
            let schedules = dag_schedules(txn, dag)?;
            if schedules.is_empty() {
                return Err(CommandError::NotFound { what: format!("cron schedule of DAG {dag}") });
            }
            let (kind, data) = match action {
                ScheduleAction::Pause => ("schedule.paused", json!({ "dag": dag })),
                ScheduleAction::Resume => ("schedule.resumed", json!({ "dag": dag })),
                ScheduleAction::Clear => {
                    let cleared: Vec<Value> = schedules
                        .iter()
                        .map(|s| json!({ "dag": dag, "index": s["index"], "schedule": s["schedule"] }))
                        .collect();
                    ("schedule.cleared", json!({ "dag": dag, "cleared": cleared }))
                }
            };
            Ok(vec![Draft { tenant: String::new(), kind, subjects: vec![dag.clone()], data }].into())
        }
    }
}

impl RunStatus {
    pub fn terminal(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Cancelled)
    }
}

/// The sealed digest of an installed plugin.
fn plugin_digest(txn: &WriteTransaction, name: &str) -> Result<Option<String>, CommandError> {
    let t = txn.open_table(PLUGINS).map_err(storage)?;
    let v = t.get(name).map_err(storage)?;
    Ok(v.and_then(|v| serde_json::from_slice::<Value>(v.value()).ok())
        .and_then(|p| p["digest"].as_str().map(str::to_owned)))
}

fn dag_record(txn: &WriteTransaction, name: &str) -> Result<Option<DagRecord>, CommandError> {
    rw::get::<DagRecord>(&txn.open_table(DAGS).map_err(storage)?, "dags", name).map_err(storage)
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
    if !unsigned {
        let c = spec::compile_registered(text).map_err(|e| CommandError::invalid("spec", e))?;
        for s in c.steps.iter().filter(|s| !spec::BUILTINS.contains(&s.plugin.as_str())) {
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

/// The compiled DAG `name@version`, from the writer's cache or the stored spec.
fn compiled(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    name: &str,
    version: u32,
) -> Result<Arc<Compiled>, CommandError> {
    let key = format!("{name}@{version}");
    if let Some(c) = ctx.derived.get::<CompiledDags>().0.get(&key) {
        return Ok(c.clone());
    }
    let text = {
        let t = txn.open_table(DAG_SPECS).map_err(storage)?;
        let v = t
            .get(key.as_str())
            .map_err(storage)?
            .ok_or_else(|| CommandError::NotFound { what: format!("DAG spec {key}") })?;
        String::from_utf8_lossy(v.value()).into_owned()
    };
    // Plugins were checked when the version was registered.
    let c = Arc::new(
        spec::compile_registered(&text).map_err(|e| CommandError::Storage(format!("stored spec {key}: {e}")))?,
    );
    ctx.derived.get::<CompiledDags>().0.insert(key, c.clone());
    Ok(c)
}

fn next_counter(txn: &WriteTransaction, name: &str) -> Result<u64, CommandError> {
    Ok(rw::counter(&txn.open_table(COUNTERS).map_err(storage)?, name).map_err(storage)? + 1)
}

fn start(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: &str,
    dag: &str,
    given: &Map<String, Value>,
    run_token: Option<&str>,
) -> Result<Effects, CommandError> {
    let rec = dag_record(txn, dag)?.ok_or_else(|| CommandError::NotFound { what: format!("DAG {dag}") })?;
    let active = rec
        .versions
        .iter()
        .find(|v| v.version == rec.active)
        .ok_or_else(|| CommandError::Storage(format!("DAG {dag} has no active version")))?;
    if active.disabled {
        return Err(CommandError::conflict(
            "dag_version_disabled",
            format!("DAG {dag} version {} is disabled", active.version),
        ));
    }
    let c = compiled(txn, ctx, dag, active.version)?;
    let inputs = merged_inputs(&c, given)?;
    let inputs_hash = hex::encode(Sha256::digest(
        serde_json_canonicalizer::to_vec(&inputs)
            .map_err(|e| CommandError::invalid("inputs", format!("inputs: {e}")))?,
    ));
    if let Some(token) = run_token {
        let existing = {
            let t = txn.open_table(RUN_TOKENS).map_err(storage)?;
            t.get(format!("{tenant}/{token}").as_str())
                .map_err(storage)?
                .map(|v| String::from_utf8_lossy(v.value()).into_owned())
        };
        if let Some(id) = existing {
            let run = rw::get::<RunRecord>(&txn.open_table(RUNS).map_err(storage)?, "runs", &id).map_err(storage)?;
            return match run {
                Some(r) if r.inputs_hash == inputs_hash => {
                    Ok(Effects { note: Some(json!({ "existing": id })), ..Effects::default() })
                }
                _ => Err(CommandError::conflict(
                    "run_token_reused",
                    format!("runToken {token:?} already started {id} with different inputs"),
                )),
            };
        }
    }
    let mut plugins = std::collections::BTreeMap::new();
    for s in c.steps.iter().filter(|s| !spec::BUILTINS.contains(&s.plugin.as_str())) {
        if let Some(pinned) = active.plugins.get(&s.plugin) {
            plugins.insert(s.plugin.clone(), pinned.clone());
            continue;
        }
        let digest = plugin_digest(txn, &s.plugin)?.ok_or_else(|| {
            CommandError::conflict(
                "plugin_not_installed",
                format!("step {} needs plugin {:?}, which is not installed", s.name, s.plugin),
            )
        })?;
        plugins.insert(s.plugin.clone(), digest);
    }
    let pinned: Vec<(String, String)> = plugins.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(reason) = crate::domain::bundles::tables::quarantine_reason(txn, dag, &pinned)? {
        return Err(CommandError::conflict("bundle_quarantined", format!("DAG {dag} cannot start: {reason}")));
    }
    let seq = match ctx.scratch.get::<NextRunSeq>().0 {
        Some(n) => n,
        None => next_counter(txn, "run_seq")?,
    };
    ctx.scratch.get::<NextRunSeq>().0 = Some(seq + 1);
    let id = run_id(seq);
    let steps: Vec<Value> =
        c.steps.iter().map(|s| json!({ "name": s.name, "plugin": s.plugin, "needs": s.needs.len() })).collect();
    let created = json!({ "runId": id, "dag": dag, "version": active.version, "specSha256": active.sha256, "inputs": inputs,
                          "inputsHash": inputs_hash, "runToken": run_token, "steps": steps, "plugins": plugins });
    let run = RunRecord {
        id: id.clone(),
        tenant: tenant.to_owned(),
        dag: dag.to_owned(),
        version: active.version,
        spec_sha256: active.sha256.clone(),
        inputs,
        inputs_hash,
        run_token: run_token.map(str::to_owned),
        plugins,
        status: RunStatus::Planning,
        created_ms: ctx.now,
        created_by: String::new(),
        finished_ms: None,
        active: 0,
        steps: c.steps.len() as u32,
        terminal: 0,
        failed: 0,
    };
    let mut p = Planner::fresh(txn, ctx, c.clone(), run);
    p.drafts.push(Draft {
        tenant: tenant.to_owned(),
        kind: "run.created",
        subjects: vec![id.clone(), dag.to_owned()],
        data: created,
    });
    for (i, s) in c.steps.iter().enumerate() {
        if s.needs.is_empty() {
            p.runnable(ctx, i)?;
        }
    }
    Ok(Effects { drafts: p.drafts, live: vec![], note: Some(json!({ "runId": id })) })
}

fn merged_inputs(c: &Compiled, given: &Map<String, Value>) -> Result<Value, CommandError> {
    if let Some(unknown) = given.keys().find(|k| !c.inputs.contains_key(*k)) {
        let declared: Vec<&str> = c.inputs.keys().map(String::as_str).collect();
        let known = if declared.is_empty() {
            "it declares no inputs".to_owned()
        } else {
            format!("declared: {}", declared.join(", "))
        };
        return Err(CommandError::invalid("inputs", format!("input {unknown:?} is not declared by the DAG ({known})")));
    }
    let mut out = Map::new();
    for (k, default) in &c.inputs {
        match given.get(k).cloned().or_else(|| default.clone()) {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => {
                return Err(CommandError::invalid("inputs", format!("input {k:?} is required (it has no default)")));
            }
        }
    }
    if serde_json::to_vec(&out).map_or(0, |v| v.len()) > INPUTS_BYTES_MAX {
        return Err(CommandError::invalid("inputs", format!("inputs are larger than {INPUTS_BYTES_MAX} bytes")));
    }
    Ok(Value::Object(out))
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
    if p.run.status != RunStatus::Failed {
        let status = serde_json::to_value(p.run.status).expect("status").as_str().unwrap_or("?").to_owned();
        return Err(CommandError::conflict(
            "run_not_failed",
            format!("run {run} is {status}: retry, skip and abort apply to a failed run"),
        ));
    }
    if action == Recovery::Abort {
        p.cancel_all(true)?;
        return Ok(p.drafts.into());
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
    p.drafts.push(p.draft(
        "run.resumed",
        None,
        json!({ "runId": run, "action": if action == Recovery::Retry { "retry" } else { "skip" }, "step": target }),
    ));
    p.run.status = RunStatus::Running;
    match action {
        Recovery::Retry => p.retry_step(ctx, idx, "retry")?,
        Recovery::Skip => {
            p.resolve_dead(&target, "skip", None)?;
            p.finished(ctx, idx, StepState::Skipped, json!({}))?
        }
        Recovery::Abort => unreachable!("handled above"),
    }
    p.settle();
    Ok(p.drafts.into())
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
        match step_of(txn, j)? {
            Some((run, step)) if run.tenant == j.tenant => by_run.entry(run.id).or_default().push((j, step)),
            _ => refused.push((j.id.clone(), "it is no longer the current job of a step it names".to_owned())),
        }
    }
    let mut drafts = Vec::new();
    for (run, jobs) in by_run {
        let mut p = Planner::load(txn, ctx, None, &run)?;
        let mut steps = Vec::new();
        for (j, step) in jobs {
            let rec = p.step(&step)?.clone();
            let why = if p.run.status != RunStatus::Failed {
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
            continue;
        }
        p.drafts.push(p.draft("run.resumed", None, json!({ "runId": run, "action": "replay", "steps": steps })));
        p.run.status = RunStatus::Running;
        for step in &steps {
            let idx = p
                .dag
                .step(step)
                .map(|(i, _)| i)
                .ok_or_else(|| CommandError::NotFound { what: format!("step {step}") })?;
            p.retry_step(ctx, idx, "replay")?;
        }
        p.settle();
        drafts.extend(p.drafts);
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
    let data = json!({ "dag": dag, "index": index, "dueMs": due_ms, "runId": run, "error": error, "nextMs": next });
    drafts.push(Draft { tenant: String::new(), kind: "schedule.fired", subjects: vec![dag.to_owned()], data });
    Ok(Some(drafts))
}

/// The queue's hook when a lease is granted on a step's job.
pub fn on_started(
    txn: &WriteTransaction,
    job: &JobRecord,
    worker: &str,
    attempt: u32,
) -> Result<Vec<Draft>, CommandError> {
    let Some((run, step)) = step_of(txn, job)? else { return Ok(vec![]) };
    let data = json!({ "runId": run.id, "step": step, "worker": worker, "attempt": attempt, "jobId": job.id });
    Ok(vec![Draft { tenant: run.tenant.clone(), kind: "step.started", subjects: vec![run.id.clone(), step], data }])
}

/// The queue's hook when a step's job finished an attempt.
pub fn on_outcome(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    job: &JobRecord,
    outcome: Outcome,
) -> Result<Vec<Draft>, CommandError> {
    let Some((run, step)) = step_of(txn, job)? else { return Ok(vec![]) };
    let mut p = Planner::load(txn, ctx, None, &run.id)?;
    if p.run.status.terminal() {
        return Ok(vec![]);
    }
    let idx = p
        .dag
        .step(&step)
        .map(|(i, _)| i)
        .ok_or_else(|| CommandError::Storage(format!("step {step} is not in its DAG")))?;
    match outcome {
        Outcome::Succeeded { outputs } => p.finished(ctx, idx, StepState::Succeeded, json!({ "outputs": outputs }))?,
        Outcome::Retrying { error, code } => {
            let d = p.draft(
                "step.retrying",
                Some(&step),
                json!({ "runId": run.id, "step": step, "error": error, "errorCode": code }),
            );
            p.drafts.push(d);
        }
        Outcome::Failed { error, code } => {
            p.finished(ctx, idx, StepState::Failed, json!({ "error": error, "errorCode": code }))?
        }
        Outcome::Interrupted { error } => {
            let d = p.draft(
                "step.interrupted",
                Some(&step),
                json!({ "runId": run.id, "step": step, "error": error, "errorCode": "interrupted" }),
            );
            p.drafts.push(d);
        }
    }
    p.settle();
    Ok(p.drafts)
}

/// The run and step a job belongs to, if it is the current job of a step.
fn step_of(txn: &WriteTransaction, job: &JobRecord) -> Result<Option<(RunRecord, String)>, CommandError> {
    let (Some(run), Some(step)) = (job.payload["run"].as_str(), job.payload["step"].as_str()) else { return Ok(None) };
    let rec = rw::get::<StepRecord>(&txn.open_table(STEPS).map_err(storage)?, "steps", &step_key(run, step))
        .map_err(storage)?;
    if rec.and_then(|r| r.job).as_deref() != Some(job.id.as_str()) {
        return Ok(None);
    }
    let run = rw::get::<RunRecord>(&txn.open_table(RUNS).map_err(storage)?, "runs", run).map_err(storage)?;
    Ok(run.map(|r| (r, step.to_owned())))
}

/// A working copy of one run while planning.
struct Planner<'t> {
    txn: &'t WriteTransaction,
    now: i64,
    dag: Arc<Compiled>,
    run: RunRecord,
    steps: HashMap<String, StepRecord>,
    drafts: Vec<Draft>,
    waiting: Option<VecDeque<String>>,
}

impl<'t> Planner<'t> {
    fn load(
        txn: &'t WriteTransaction,
        ctx: &mut PlanCtx,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Self, CommandError> {
        let run = rw::get::<RunRecord>(&txn.open_table(RUNS).map_err(storage)?, "runs", id)
            .map_err(storage)?
            .filter(|r| tenant.is_none_or(|t| t == r.tenant))
            .ok_or_else(|| CommandError::NotFound { what: format!("run {id}") })?;
        let dag = compiled(txn, ctx, &run.dag, run.version)?;
        Ok(Planner { txn, now: ctx.now, dag, run, steps: HashMap::new(), drafts: vec![], waiting: None })
    }

    /// A planner for a run created in this very plan: every step pending, nothing waiting.
    fn fresh(txn: &'t WriteTransaction, ctx: &PlanCtx, dag: Arc<Compiled>, run: RunRecord) -> Self {
        let steps = dag
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let rec = StepRecord::pending(&run.id, &s.name, i as u32, &s.plugin, s.needs.len() as u32);
                (s.name.clone(), rec)
            })
            .collect();
        Planner { txn, now: ctx.now, dag, run, steps, drafts: vec![], waiting: Some(VecDeque::new()) }
    }

    fn draft(&self, kind: &'static str, step: Option<&str>, data: Value) -> Draft {
        let mut subjects = vec![self.run.id.clone()];
        subjects.extend(step.map(str::to_owned));
        Draft { tenant: self.run.tenant.clone(), kind, subjects, data }
    }

    fn step(&mut self, name: &str) -> Result<&mut StepRecord, CommandError> {
        if !self.steps.contains_key(name) {
            let rec = rw::get::<StepRecord>(
                &self.txn.open_table(STEPS).map_err(storage)?,
                "steps",
                &step_key(&self.run.id, name),
            )
            .map_err(storage)?
            .ok_or_else(|| CommandError::Storage(format!("run {} has no step {name}", self.run.id)))?;
            self.steps.insert(name.to_owned(), rec);
        }
        Ok(self.steps.get_mut(name).expect("inserted above"))
    }

    fn all_steps(&mut self) -> Result<Vec<String>, CommandError> {
        Ok(self.dag.steps.iter().map(|s| s.name.clone()).collect())
    }

    fn last_failed(&mut self) -> Result<Option<String>, CommandError> {
        let mut best: Option<(i64, String)> = None;
        for name in self.all_steps()? {
            let rec = self.step(&name)?;
            if rec.state == StepState::Failed && best.as_ref().is_none_or(|(t, _)| rec.finished_ms.unwrap_or(0) >= *t) {
                best = Some((rec.finished_ms.unwrap_or(0), name));
            }
        }
        Ok(best.map(|(_, n)| n))
    }

    fn waiting(&mut self) -> Result<&mut VecDeque<String>, CommandError> {
        if self.waiting.is_none() {
            let t = self.txn.open_table(RUN_WAITING).map_err(storage)?;
            let from = format!("{}/", self.run.id);
            let to = format!("{}/\u{10FFFF}", self.run.id);
            let mut q = VecDeque::new();
            for row in t.range(from.as_str()..to.as_str()).map_err(storage)? {
                let (_, v) = row.map_err(storage)?;
                q.push_back(String::from_utf8_lossy(v.value()).into_owned());
            }
            self.waiting = Some(q);
        }
        Ok(self.waiting.as_mut().expect("loaded above"))
    }

    /// A step whose needs are met: queue it, or wait for a slot.
    fn runnable(&mut self, ctx: &mut PlanCtx, idx: usize) -> Result<(), CommandError> {
        if self.run.active < self.dag.max_parallel {
            return self.enqueue(ctx, idx);
        }
        let name = self.dag.steps[idx].name.clone();
        let reason = format!("maxParallelSteps={} reached", self.dag.max_parallel);
        let d =
            self.draft("step.waiting", Some(&name), json!({ "runId": self.run.id, "step": name, "reason": reason }));
        self.drafts.push(d);
        self.step(&name)?.wait = Some(reason);
        self.waiting()?.push_back(name);
        Ok(())
    }

    fn enqueue(&mut self, ctx: &mut PlanCtx, idx: usize) -> Result<(), CommandError> {
        let s = self.dag.steps[idx].clone();
        let inputs = self.resolve(&s.inputs)?;
        let mut locks = Vec::with_capacity(s.locks.len());
        for l in &s.locks {
            let name = self.interpolate(l)?;
            locks.push(name.as_str().map(str::to_owned).unwrap_or_else(|| name.to_string()));
        }
        let seq = crate::domain::queue::take_job_seq(self.txn, ctx)?;
        let job = EnqueuedJob {
            id: job_id(seq),
            seq,
            job_type: s.plugin.clone(),
            priority: s.priority,
            payload: json!({ "run": self.run.id, "step": s.name, "plugin": s.plugin, "kind": s.kind, "pluginDigest": self.run.plugins.get(&s.plugin),
                             "inputs": inputs, "timeoutMs": s.timeout_ms, "secrets": s.secrets, "locks": locks }),
            max_attempts: s.retries + 1,
            not_before_ms: self.now,
            idempotency_key: None,
            replay_of: None,
            backoff_ms: Some(s.backoff_ms),
        };
        let job_id = job.id.clone();
        self.drafts.push(QueueEvent::Enqueued(job).draft(&self.run.tenant, vec![job_id.clone()]));
        let d =
            self.draft("step.queued", Some(&s.name), json!({ "runId": self.run.id, "step": s.name, "jobId": job_id }));
        self.drafts.push(d);
        self.step(&s.name)?;
        let run = &mut self.run;
        let rec = self.steps.get_mut(&s.name).expect("loaded just above");
        if rec.state == StepState::Failed {
            take_one(&mut run.terminal, || format!("run {} finished steps (planned)", run.id));
            take_one(&mut run.failed, || format!("run {} failed steps (planned)", run.id));
        }
        rec.state = StepState::Queued;
        rec.job = Some(job_id);
        rec.wait = None;
        run.active += 1;
        if run.status == RunStatus::Planning {
            run.status = RunStatus::Running;
        }
        Ok(())
    }

    /// Queues a failed step again (a new job); its dead job, if in the dead-letter queue, leaves it.
    fn retry_step(&mut self, ctx: &mut PlanCtx, idx: usize, action: &str) -> Result<(), CommandError> {
        let name = self.dag.steps[idx].name.clone();
        let dead = self.dead_job(&name)?;
        self.enqueue(ctx, idx)?;
        if let Some(dead) = dead {
            let new = self.step(&name)?.job.clone();
            self.push_resolved(&name, &dead, action, new.as_deref());
        }
        Ok(())
    }

    /// The step's current job if it is in the dead-letter queue.
    fn dead_job(&mut self, name: &str) -> Result<Option<String>, CommandError> {
        let Some(job) = self.step(name)?.job.clone() else { return Ok(None) };
        let jobs = self.txn.open_table(JOBS).map_err(storage)?;
        let state = rw::get::<JobRecord>(&jobs, "jobs", &job).map_err(storage)?.map(|j| j.state);
        Ok((state == Some(JobState::Dead)).then_some(job))
    }

    /// The step's dead job leaves the dead-letter queue: its run settled the step (`action`).
    fn resolve_dead(&mut self, name: &str, action: &str, replaced_by: Option<&str>) -> Result<(), CommandError> {
        if let Some(dead) = self.dead_job(name)? {
            self.push_resolved(name, &dead, action, replaced_by);
        }
        Ok(())
    }

    fn push_resolved(&mut self, name: &str, dead: &str, action: &str, replaced_by: Option<&str>) {
        let event = QueueEvent::DlqResolved(DlqResolved {
            run_id: self.run.id.clone(),
            step: name.to_owned(),
            job_id: dead.to_owned(),
            action: action.to_owned(),
            replaced_by: replaced_by.map(str::to_owned),
        });
        self.drafts.push(event.draft(&self.run.tenant, vec![self.run.id.clone(), dead.to_owned()]));
    }

    /// Substitutes `${inputs.x}` and `${steps.s.outputs.k}` in a step's inputs.
    fn resolve(&mut self, inputs: &std::collections::BTreeMap<String, Value>) -> Result<Value, CommandError> {
        let mut out = Map::new();
        for (k, v) in inputs {
            let value = match v.as_str() {
                Some(text) => self.interpolate(text)?,
                None => v.clone(),
            };
            out.insert(k.clone(), value);
        }
        Ok(Value::Object(out))
    }

    fn interpolate(&mut self, text: &str) -> Result<Value, CommandError> {
        let refs = spec::references(text);
        if refs.len() == 1 && text == format!("${{{}}}", refs[0]) {
            return self.lookup(&refs[0]);
        }
        let mut s = text.to_owned();
        for r in refs {
            let v = self.lookup(&r)?;
            let as_text = v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| if v.is_null() { String::new() } else { v.to_string() });
            s = s.replace(&format!("${{{r}}}"), &as_text);
        }
        Ok(Value::String(s))
    }

    fn lookup(&mut self, reference: &str) -> Result<Value, CommandError> {
        let parts: Vec<&str> = reference.split('.').collect();
        Ok(match parts.as_slice() {
            ["inputs", name] => self.run.inputs[*name].clone(),
            ["steps", step, "outputs", key] => self.step(step)?.outputs[*key].clone(),
            _ => Value::Null,
        })
    }

    /// A step reached `state`; releases dependants on success or skip, fills freed slots.
    fn finished(
        &mut self,
        ctx: &mut PlanCtx,
        idx: usize,
        state: StepState,
        mut data: Value,
    ) -> Result<(), CommandError> {
        let s = self.dag.steps[idx].clone();
        let kind = match state {
            StepState::Succeeded => "step.succeeded",
            StepState::Failed => "step.failed",
            StepState::Skipped => "step.skipped",
            _ => unreachable!("finished takes an outcome"),
        };
        let releases = matches!(state, StepState::Succeeded | StepState::Skipped);
        let dependants: Vec<String> =
            if releases { s.dependants.iter().map(|d| self.dag.steps[*d].name.clone()).collect() } else { vec![] };
        data["runId"] = json!(self.run.id);
        data["step"] = json!(s.name);
        data["dependants"] = json!(dependants);
        let outputs = data["outputs"].clone();
        let d = self.draft(kind, Some(&s.name), data);
        self.drafts.push(d);
        let rec = self.step(&s.name)?;
        let was_active = matches!(rec.state, StepState::Queued | StepState::Running);
        let was_failed = rec.state == StepState::Failed;
        rec.state = state;
        rec.outputs = outputs;
        if was_active {
            take_one(&mut self.run.active, || format!("run {} active steps (planned)", self.run.id));
        }
        match state {
            StepState::Skipped if was_failed => {
                take_one(&mut self.run.failed, || format!("run {} failed steps (planned)", self.run.id))
            }
            StepState::Failed => {
                self.run.terminal += 1;
                self.run.failed += 1;
            }
            _ => self.run.terminal += 1,
        }
        for d in s.dependants.iter().filter(|_| releases) {
            let name = self.dag.steps[*d].name.clone();
            let rec = self.step(&name)?;
            take_one(&mut rec.pending_needs, || format!("step {name} pending needs (planned)"));
            if rec.pending_needs == 0 && rec.state == StepState::Pending && rec.wait.is_none() {
                self.runnable(ctx, *d)?;
            }
        }
        self.fill_slots(ctx)
    }

    fn fill_slots(&mut self, ctx: &mut PlanCtx) -> Result<(), CommandError> {
        while self.run.active < self.dag.max_parallel {
            let Some(name) = self.waiting()?.pop_front() else { break };
            let idx = self
                .dag
                .step(&name)
                .map(|(i, _)| i)
                .ok_or_else(|| CommandError::Storage(format!("waiting step {name} is not in its DAG")))?;
            self.enqueue(ctx, idx)?;
        }
        Ok(())
    }

    /// Ends the run when nothing more can happen: succeeded if every step finished well,
    /// failed if a failed step blocks the rest.
    fn settle(&mut self) {
        if !matches!(self.run.status, RunStatus::Running | RunStatus::Planning) || self.run.active > 0 {
            return;
        }
        if self.waiting.as_ref().is_some_and(|w| !w.is_empty()) {
            return;
        }
        let kind = if self.run.failed > 0 {
            "run.failed"
        } else if self.run.terminal >= self.run.steps {
            "run.succeeded"
        } else {
            return;
        };
        let d = self.draft(kind, None, json!({ "runId": self.run.id }));
        self.drafts.push(d);
        self.run.status = if kind == "run.failed" { RunStatus::Failed } else { RunStatus::Succeeded };
    }

    /// Cancels every unfinished step (and the job of a queued or running one), then the run.
    /// Failed steps stay failed.
    fn cancel_all(&mut self, aborted: bool) -> Result<(), CommandError> {
        for name in self.all_steps()? {
            let rec = self.step(&name)?.clone();
            if rec.state == StepState::Failed {
                self.resolve_dead(&name, if aborted { "abort" } else { "cancel" }, None)?;
            }
            if rec.state.terminal() {
                continue;
            }
            if let Some(job) = rec.job.as_ref().filter(|_| matches!(rec.state, StepState::Queued | StepState::Running))
            {
                let jobs = self.txn.open_table(JOBS).map_err(storage)?;
                let state = rw::get::<JobRecord>(&jobs, "jobs", job).map_err(storage)?.map(|j| j.state);
                if matches!(state, Some(JobState::Ready | JobState::Delayed | JobState::Leased)) {
                    let event =
                        QueueEvent::Cancelled(JobCancelled { job_id: job.clone(), run_id: self.run.id.clone() });
                    self.drafts.push(event.draft(&self.run.tenant, vec![job.clone(), self.run.id.clone()]));
                }
            }
            let d = self.draft("step.cancelled", Some(&name), json!({ "runId": self.run.id, "step": name }));
            self.drafts.push(d);
        }
        let d = self.draft("run.cancelled", None, json!({ "runId": self.run.id, "aborted": aborted }));
        self.drafts.push(d);
        Ok(())
    }
}
