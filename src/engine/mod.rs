//! The DAG engine (DESIGN.md invariant 4): DAG specs and versions, runs and their steps.
//! Scheduling is planning: a committed step outcome makes its dependants runnable in the same
//! transaction (`plan`), within `maxParallelSteps`; `apply` is the projection of run and step
//! entries. Steps run as queue jobs (type = plugin), so pause, budgets, leases and the
//! dead-letter rules of the queue apply to them.

pub mod apply;
pub mod cron;
pub mod plan;
pub mod spec;

pub use plan::RunCommand;

/// A step's key in the steps table.
pub fn step_key(run: &str, step: &str) -> String {
    format!("{run}/{step}")
}

/// Run ids are `run-1`, `run-2`, … as the runbooks write them.
pub fn run_id(seq: u64) -> String {
    format!("run-{seq}")
}
