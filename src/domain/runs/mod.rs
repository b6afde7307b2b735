//! The DAG engine (DESIGN.md invariant 4): DAG specs and versions, runs and their steps.
//! Scheduling is planning: a committed step outcome makes its dependants runnable in the same
//! transaction (`plan`), within `maxParallelSteps`; `apply` is the projection of run and step
//! entries. Steps run as queue jobs (type = plugin), so pause, budgets, leases and the
//! dead-letter rules of the queue apply to them.

pub mod apply;
pub mod cron;
pub mod plan;
mod planner;
pub mod spec;
pub mod tables;
pub mod transition;

/// A step's key in the steps table.
pub fn step_key(run: &str, step: &str) -> String {
    format!("{run}/{step}")
}

/// Run ids are `run-1`, `run-2`, … as the runbooks write them.
pub fn run_id(seq: u64) -> String {
    format!("run-{seq}")
}

/// The due-index key of a DAG's cron trigger `index`.
pub fn cron_key(dag: &str, index: u64) -> String {
    format!("cron|{dag}|{index}")
}

/// Compiled DAG versions by `name@version`: derived from stored specs, cached by the planner.
#[derive(Debug, Default)]
pub struct CompiledDags(pub std::collections::HashMap<String, std::sync::Arc<spec::Compiled>>);

/// The next run sequence number while one command starts several runs (a tick may).
#[derive(Debug, Default)]
pub struct NextRunSeq(pub Option<u64>);

/// Upper bounds (seconds) of `orchestrator_run_duration_seconds`.
pub const RUN_DURATION_BUCKETS: [f64; 9] = [1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0];
/// Upper bounds (seconds) of `orchestrator_step_queue_seconds` (queued to first start).
pub const STEP_QUEUE_BUCKETS: [f64; 10] = [0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0];

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

crate::events! {
    /// The registry's entries: plugins and DAG versions.
    pub enum DagEvent {
        PluginRegistered(PluginRegistered) = "plugin.registered",
        Registered(DagRegistered) = "dag.registered",
        Disabled(DagVersionRef) = "dag.disabled",
        Enabled(DagVersionRef) = "dag.enabled",
        RolledBack(DagRolledBack) = "dag.rolled_back",
    }
}

/// A plugin installed (from a bundle, or a local directory in dev mode: `unsigned`), and the
/// digest it replaced. Read leniently: entries of older stellas lack some fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PluginRegistered {
    pub name: String,
    pub digest: String,
    pub entrypoint: String,
    pub kinds: Vec<String>,
    pub unsigned: bool,
    pub previous: Option<String>,
}

/// A new version of a DAG, with its spec and the plugin digests it is pinned to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagRegistered {
    pub name: String,
    pub version: u32,
    pub sha256: String,
    pub spec: String,
    #[serde(default)]
    pub unsigned: bool,
    #[serde(default)]
    pub plugins: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagVersionRef {
    pub name: String,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagRolledBack {
    pub name: String,
    pub from: u32,
    pub to: u32,
}

crate::events! {
    /// A run's and its steps' entries. What each does to the run and its steps is one function,
    /// [`transition::evolve`], which the planner runs on its working copy and the projection on
    /// the stored records.
    pub enum RunEvent {
        Created(RunCreated) = "run.created",
        Succeeded(RunRef) = "run.succeeded",
        Failed(RunRef) = "run.failed",
        Cancelled(RunCancelled) = "run.cancelled",
        Resumed(RunResumed) = "run.resumed",
        StepWaiting(StepWaiting) = "step.waiting",
        StepQueued(StepQueued) = "step.queued",
        StepCacheWaiting(StepCacheWaiting) = "step.cache_waiting",
        StepStarted(StepStarted) = "step.started",
        StepRetrying(StepError) = "step.retrying",
        StepInterrupted(StepError) = "step.interrupted",
        StepCheckpoint(StepCheckpoint) = "step.checkpoint_pending",
        StepChild(StepChild) = "step.child_started",
        StepSucceeded(StepSucceeded) = "step.succeeded",
        StepFailed(StepFailed) = "step.failed",
        StepSkipped(StepSkipped) = "step.skipped",
        StepCancelled(StepRef) = "step.cancelled",
    }
}

impl RunEvent {
    /// The run the entry is about.
    pub fn run_id(&self) -> &str {
        match self {
            RunEvent::Created(e) => &e.run_id,
            RunEvent::Succeeded(e) | RunEvent::Failed(e) => &e.run_id,
            RunEvent::Cancelled(e) => &e.run_id,
            RunEvent::Resumed(e) => &e.run_id,
            RunEvent::StepWaiting(e) => &e.run_id,
            RunEvent::StepQueued(e) => &e.run_id,
            RunEvent::StepCacheWaiting(e) => &e.run_id,
            RunEvent::StepStarted(e) => &e.run_id,
            RunEvent::StepRetrying(e) | RunEvent::StepInterrupted(e) => &e.run_id,
            RunEvent::StepCheckpoint(e) => &e.run_id,
            RunEvent::StepChild(e) => &e.run_id,
            RunEvent::StepSucceeded(e) => &e.run_id,
            RunEvent::StepFailed(e) => &e.run_id,
            RunEvent::StepSkipped(e) => &e.run_id,
            RunEvent::StepCancelled(e) => &e.run_id,
        }
    }

    /// The step the entry is about, for a step entry.
    pub fn step(&self) -> Option<&str> {
        Some(match self {
            RunEvent::Created(_)
            | RunEvent::Succeeded(_)
            | RunEvent::Failed(_)
            | RunEvent::Cancelled(_)
            | RunEvent::Resumed(_) => return None,
            RunEvent::StepWaiting(e) => &e.step,
            RunEvent::StepQueued(e) => &e.step,
            RunEvent::StepCacheWaiting(e) => &e.step,
            RunEvent::StepStarted(e) => &e.step,
            RunEvent::StepRetrying(e) | RunEvent::StepInterrupted(e) => &e.step,
            RunEvent::StepCheckpoint(e) => &e.step,
            RunEvent::StepChild(e) => &e.step,
            RunEvent::StepSucceeded(e) => &e.step,
            RunEvent::StepFailed(e) => &e.step,
            RunEvent::StepSkipped(e) => &e.step,
            RunEvent::StepCancelled(e) => &e.step,
        })
    }

    /// The entry's subjects: the run, then the step (or, for a new run, its DAG).
    pub fn subjects(&self) -> Vec<String> {
        let mut out = vec![self.run_id().to_owned()];
        match self {
            RunEvent::Created(e) => out.push(e.dag.clone()),
            other => out.extend(other.step().map(str::to_owned)),
        }
        out
    }

    /// How a run's entry ends it (`succeeded`, `failed`, `cancelled`), if it does.
    pub fn run_end(&self) -> Option<RunStatus> {
        match self {
            RunEvent::Succeeded(_) => Some(RunStatus::Succeeded),
            RunEvent::Failed(_) => Some(RunStatus::Failed),
            RunEvent::Cancelled(_) => Some(RunStatus::Cancelled),
            _ => None,
        }
    }
}

use tables::RunStatus;

/// A new run: its DAG version, inputs, plugin pins and steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunCreated {
    pub run_id: String,
    pub dag: String,
    pub version: u32,
    pub spec_sha256: String,
    pub inputs: Value,
    pub inputs_hash: String,
    pub run_token: Option<String>,
    pub steps: Vec<CreatedStep>,
    #[serde(default)]
    pub plugins: std::collections::BTreeMap<String, String>,
    /// A child run: the parent run's step that started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
}

/// The parent of a child run: its run and sub-orchestration step, how deep the child is (1
/// for a child of a top-level run), who started the top-level run (the child's starter, for
/// its approvals' requester rule), and the DAGs above it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentLink {
    pub run_id: String,
    pub step: String,
    pub depth: u32,
    pub started_by: String,
    /// The DAGs of the runs above the child, top-level first (its parent's last): what a
    /// cycle check reads.
    #[serde(default)]
    pub lineage: Vec<String>,
}

/// A step of a new run: its plugin and how many steps it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreatedStep {
    pub name: String,
    #[serde(default)]
    pub plugin: String,
    #[serde(default)]
    pub needs: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRef {
    pub run_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunCancelled {
    pub run_id: String,
    /// By `run abort` (a failed run given up), rather than `run cancel`.
    #[serde(default)]
    pub aborted: bool,
}

/// A failed run taken up again: `retry` or `skip` of one step, or `replay` of dead steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunResumed {
    pub run_id: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepRef {
    pub run_id: String,
    pub step: String,
}

/// A runnable step waits for a `maxParallelSteps` slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepWaiting {
    pub run_id: String,
    pub step: String,
    pub reason: String,
}

/// A cached step whose key another step is computing waits for it (holding its slot), rather
/// than compute it twice; the end of that computation wakes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepCacheWaiting {
    pub run_id: String,
    pub step: String,
    pub key: String,
    pub ttl_ms: u64,
    /// The step computing the key (`run/step`).
    pub waiting_for: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepQueued {
    pub run_id: String,
    pub step: String,
    pub job_id: String,
    /// A cached step's lookup that missed: it runs, and its outputs are stored under the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::domain::cache::StepCache>,
}

/// A worker took the step's job (attempt `attempt` of that job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepStarted {
    pub run_id: String,
    pub step: String,
    pub worker: String,
    #[serde(default)]
    pub attempt: Option<u32>,
    pub job_id: String,
}

/// An attempt that ended without ending the step: it is queued again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepError {
    pub run_id: String,
    pub step: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSucceeded {
    pub run_id: String,
    pub step: String,
    /// The steps whose needs this success meets.
    #[serde(default)]
    pub dependants: Vec<String>,
    #[serde(default)]
    pub outputs: Value,
    /// The approval that let a checkpoint go on (the continue carries its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// A cache hit: the step did not run; its outputs are the entry's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<crate::domain::cache::StepCache>,
}

/// A step with `checkpoint_after` succeeded: it waits for approval `approvalId`, its
/// dependants not yet released.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepCheckpoint {
    pub run_id: String,
    pub step: String,
    pub approval_id: String,
    #[serde(default)]
    pub outputs: Value,
}

/// A sub-orchestration step started its child run `childRunId` (of DAG `dag` at `version`);
/// it ends as the child ends, in the child's last transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepChild {
    pub run_id: String,
    pub step: String,
    pub child_run_id: String,
    pub dag: String,
    pub version: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepFailed {
    pub run_id: String,
    pub step: String,
    /// Always empty: a failed step releases no one (kept as written).
    #[serde(default)]
    pub dependants: Vec<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
}

/// A failed step passed over by `run skip`: its dependants go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSkipped {
    pub run_id: String,
    pub step: String,
    #[serde(default)]
    pub dependants: Vec<String>,
}

crate::events! {
    /// The cron triggers' entries.
    pub enum ScheduleEvent {
        Fired(ScheduleFired) = "schedule.fired",
        Paused(ScheduleRef) = "schedule.paused",
        Resumed(ScheduleRef) = "schedule.resumed",
        Cleared(SchedulesCleared) = "schedule.cleared",
    }
}

impl ScheduleEvent {
    pub fn dag(&self) -> &str {
        match self {
            ScheduleEvent::Fired(e) => &e.dag,
            ScheduleEvent::Paused(e) | ScheduleEvent::Resumed(e) => &e.dag,
            ScheduleEvent::Cleared(e) => &e.dag,
        }
    }
}

/// A due trigger started its run (`runId`, or the `error` that refused it) and was armed again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleFired {
    pub dag: String,
    pub index: u64,
    pub due_ms: i64,
    pub run_id: Option<String>,
    pub error: Option<String>,
    pub next_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRef {
    pub dag: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulesCleared {
    pub dag: String,
    pub cleared: Vec<ClearedSchedule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClearedSchedule {
    pub dag: String,
    pub index: u64,
    pub schedule: String,
}
