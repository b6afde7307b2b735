//! Doctor checks that are not a release's: `check.orchestrator.checkpoints` (runbook 004 §2), a
//! step waiting in `checkpoint_pending` must have a pending approval row that names it.

use crate::app::release::Finding;
use crate::domain::approvals::tables::{ApprovalState, approval};
use crate::domain::runs::tables::{RunStatus, StepState, runs, steps};
use crate::kernel::store::{Store, StoreError};

/// The id of the checkpoint check.
pub const CHECKPOINTS: &str = "check.orchestrator.checkpoints";

/// Every step in `checkpoint_pending` of a running run, with the approval it waits for: an
/// error for one whose approval row is missing or no longer pending, one `ok` otherwise.
pub fn checkpoints(store: &Store) -> Result<Vec<Finding>, StoreError> {
    let txn = store.read()?;
    let mut out = Vec::new();
    let mut waiting = 0;
    for run in runs(&txn, None, usize::MAX)?.iter().filter(|r| r.status == RunStatus::Running && r.checkpoints > 0) {
        for s in steps(&txn, &run.id)?.iter().filter(|s| s.state == StepState::CheckpointPending) {
            let subject = format!("step {}/{}", run.id, s.name);
            let found = s.approval.as_deref().map(|id| approval(&txn, id)).transpose()?.flatten();
            let problem = match (&s.approval, &found) {
                (None, _) => Some("is checkpoint_pending but names no approval".to_owned()),
                (Some(id), None) => Some(format!("is checkpoint_pending but approval {id} has no row")),
                (Some(id), Some(a)) if a.state != ApprovalState::Pending || a.run != run.id || a.step != s.name => {
                    Some(format!(
                        "is checkpoint_pending but approval {id} is {} (for {}/{})",
                        a.state.as_str(),
                        a.run,
                        a.step
                    ))
                }
                _ => None,
            };
            match problem {
                Some(message) => out.push(Finding {
                    check: CHECKPOINTS,
                    level: "error",
                    subject,
                    message: format!("{message}: no one can approve it (the store disagrees with its ledger)"),
                    fix: Some(format!(
                        "stella orch db verify; then stella orch run cancel {} and start it again",
                        run.id
                    )),
                }),
                None => waiting += 1,
            }
        }
    }
    if out.is_empty() {
        let message = match waiting {
            0 => "no step waits at a checkpoint".to_owned(),
            n => format!("{n} step(s) wait at a checkpoint, each with its pending approval"),
        };
        let fix = (waiting > 0).then(|| "stella orch approvals list".to_owned());
        out.push(Finding { check: CHECKPOINTS, level: "ok", subject: "checkpoints".into(), message, fix });
    }
    Ok(out)
}
