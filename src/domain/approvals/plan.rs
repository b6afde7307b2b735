//! Planning approvals: the request a checkpoint makes (called by the engine), one actor's
//! decision, a timeout, a cancel. A decision that settles an approval returns its
//! [`Resolution`]; the machine hands it to the engine in the same command.

use crate::domain::approvals::tables::{APPROVALS, ApprovalRecord, ApprovalState};
use crate::domain::approvals::{
    ApprovalCancelled, ApprovalCommand, ApprovalEvent, ApprovalExpired, ApprovalRequested, ApprovalVote, OnTimeout,
    Outcome, REASON_MAX, Resolution, approval_id,
};
use crate::kernel::counters::COUNTERS;
use crate::kernel::event::Event;
use crate::kernel::ledger::Draft;
use crate::kernel::store::rw;
use crate::kernel::{CommandError, PlanCtx, storage};
use redb::WriteTransaction;

/// The next approval sequence number while one command requests several.
#[derive(Debug, Default)]
struct NextApprovalSeq(Option<u64>);

/// A new approval's id, unique within the command.
pub fn take_seq(txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<String, CommandError> {
    let next = match ctx.scratch.get::<NextApprovalSeq>().0 {
        Some(n) => n,
        None => {
            crate::kernel::counters::get(&txn.open_table(COUNTERS).map_err(storage)?, "approval_seq")
                .map_err(storage)?
                + 1
        }
    };
    ctx.scratch.get::<NextApprovalSeq>().0 = Some(next + 1);
    Ok(approval_id(next))
}

/// The draft of a checkpoint's request, in `tenant`.
pub fn request(tenant: &str, e: ApprovalRequested) -> Draft {
    let subjects = vec![e.run_id.clone(), e.step.clone(), e.approval_id.clone()];
    ApprovalEvent::Requested(e).draft(tenant, subjects)
}

/// The draft that closes a pending approval without a decision (its run was cancelled).
pub fn cancel(rec: &ApprovalRecord, reason: &str) -> Draft {
    let e = ApprovalEvent::Cancelled(ApprovalCancelled { approval_id: rec.id.clone(), reason: reason.to_owned() });
    e.draft(&rec.tenant, subjects(rec))
}

/// An approval entry's subjects: its run first (as a run entry's), then the step and itself.
fn subjects(rec: &ApprovalRecord) -> Vec<String> {
    vec![rec.run.clone(), rec.step.clone(), rec.id.clone()]
}

/// The approval `id` as the transaction holds it.
pub fn find(txn: &WriteTransaction, id: &str) -> Result<Option<ApprovalRecord>, CommandError> {
    rw::get::<ApprovalRecord>(&txn.open_table(APPROVALS).map_err(storage)?, "approvals", id).map_err(storage)
}

pub fn plan(
    cmd: &ApprovalCommand,
    txn: &WriteTransaction,
    _ctx: &mut PlanCtx,
) -> Result<(Vec<Draft>, Option<Resolution>), CommandError> {
    match cmd {
        ApprovalCommand::Decide { tenant, id, actor, approve, reason } => {
            decide(txn, tenant.as_deref(), id, actor, *approve, reason.as_deref())
        }
    }
}

fn decide(
    txn: &WriteTransaction,
    tenant: Option<&str>,
    id: &str,
    actor: &str,
    approve: bool,
    reason: Option<&str>,
) -> Result<(Vec<Draft>, Option<Resolution>), CommandError> {
    let rec = find(txn, id)?
        .filter(|r| tenant.is_none_or(|t| t == r.tenant))
        .ok_or_else(|| CommandError::NotFound { what: format!("approval {id}") })?;
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.chars().count() > REASON_MAX) {
        return Err(CommandError::invalid("reason", format!("a reason is at most {REASON_MAX} characters")));
    }
    if !approve && reason.is_none() {
        return Err(CommandError::invalid("reason", "a rejection needs a reason (--reason)"));
    }
    if rec.state != ApprovalState::Pending {
        return Err(CommandError::conflict(
            "approval_not_pending",
            format!(
                "approval {id} is {}{}",
                rec.state.as_str(),
                rec.resolution.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            ),
        ));
    }
    if actor == rec.requested_by && !rec.self_approval {
        return Err(CommandError::Forbidden {
            code: "self_approval",
            detail: format!(
                "{actor} started run {} and may not decide its approval {id}: a second actor with orchestrator:approve must",
                rec.run
            ),
        });
    }
    if let Some(d) = rec.decisions.iter().find(|d| d.actor == actor) {
        return Err(CommandError::conflict(
            "already_decided",
            format!("{actor} already decided approval {id} ({}); another approver must", d.decision),
        ));
    }
    let approvals = rec.approvals() + u32::from(approve);
    let decided = !approve || approvals >= rec.approvers;
    let vote = ApprovalVote {
        approval_id: id.to_owned(),
        actor: actor.to_owned(),
        reason: reason.map(str::to_owned),
        approvals: if approve { approvals } else { 0 },
        decided,
    };
    let event = if approve { ApprovalEvent::Approved(vote) } else { ApprovalEvent::Rejected(vote) };
    let drafts = vec![event.draft(&rec.tenant, subjects(&rec))];
    if !decided {
        return Ok((drafts, None));
    }
    let outcome = if approve {
        let mut by: Vec<String> = rec.decisions.iter().map(|d| d.actor.clone()).collect();
        by.push(actor.to_owned());
        Outcome::Approved { by }
    } else {
        Outcome::Rejected {
            code: "approval_rejected",
            error: format!("approval {id} rejected by {actor}: {}", reason.unwrap_or_default()),
        }
    };
    Ok((drafts, Some(Resolution { approval: rec, outcome })))
}

/// A due approval timeout: what its `on_timeout` says, if it is still pending at that deadline.
pub fn expire(txn: &WriteTransaction, id: &str, due_ms: i64) -> Result<Option<(Vec<Draft>, Resolution)>, CommandError> {
    let Some(rec) = find(txn, id)?.filter(|r| r.state == ApprovalState::Pending && r.deadline_ms == Some(due_ms))
    else {
        return Ok(None);
    };
    let on_timeout = rec.on_timeout.unwrap_or(OnTimeout::Reject);
    let event = ApprovalEvent::Expired(ApprovalExpired { approval_id: id.to_owned(), on_timeout });
    let drafts = vec![event.draft(&rec.tenant, subjects(&rec))];
    let outcome = match on_timeout {
        OnTimeout::Approve => Outcome::Approved { by: vec!["timeout".to_owned()] },
        OnTimeout::Reject => Outcome::Rejected {
            code: "approval_timed_out",
            error: format!("approval {id} timed out with no decision (on_timeout = reject)"),
        },
        OnTimeout::Cancel => Outcome::CancelRun,
    };
    Ok(Some((drafts, Resolution { approval: rec, outcome })))
}
