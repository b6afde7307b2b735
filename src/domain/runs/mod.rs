//! The DAG engine (DESIGN.md invariant 4): DAG specs and versions, runs and their steps.
//! Scheduling is planning: a committed step outcome makes its dependants runnable in the same
//! transaction (`plan`), within `maxParallelSteps`; `apply` is the projection of run and step
//! entries. Steps run as queue jobs (type = plugin), so pause, budgets, leases and the
//! dead-letter rules of the queue apply to them.

pub mod apply;
pub mod cron;
pub mod plan;
pub mod spec;
pub mod tables;

pub use plan::RunCommand;

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

crate::events! {
    /// The registry's entries: plugins and DAG versions (runs, steps and schedules are still
    /// read by kind, until a step's outcome is one transition function).
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
