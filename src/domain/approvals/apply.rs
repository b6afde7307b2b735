//! The projection of approval entries: the approvals with their decisions, and their timeouts
//! in the due index.

use crate::domain::approvals::tables::{APPROVALS, ApprovalRecord, ApprovalState, Decision};
use crate::domain::approvals::{ApprovalEvent, timer_key};
use crate::kernel::ledger::Entry;
use crate::kernel::{ApplyError, Tx, counters, due};

fn bad(entry: &Entry, reason: impl std::fmt::Display) -> ApplyError {
    ApplyError::Entry { seq: entry.seq, kind: entry.kind.clone(), reason: reason.to_string() }
}

pub fn apply(tx: &Tx, entry: &Entry, event: ApprovalEvent) -> Result<(), ApplyError> {
    let id = event.approval_id().to_owned();
    if let ApprovalEvent::Requested(e) = event {
        if tx.get::<ApprovalRecord>(APPROVALS, &id)?.is_some() {
            return Err(bad(entry, format!("approval {id} exists")));
        }
        let n = id.strip_prefix("apr-").and_then(|n| n.parse().ok()).ok_or_else(|| bad(entry, "bad approval id"))?;
        counters::raise(tx, "approval_seq", n)?;
        if let Some(at) = e.deadline_ms {
            due::arm(tx, at, &timer_key(&id))?;
        }
        let rec = ApprovalRecord {
            id: id.clone(),
            tenant: entry.tenant.clone(),
            run: e.run_id,
            step: e.step,
            inputs_hash: e.inputs_hash,
            dag: e.dag,
            dag_version: e.dag_version,
            approvers: e.approvers,
            self_approval: e.self_approval,
            requested_by: e.requested_by,
            requested_ms: entry.time,
            deadline_ms: e.deadline_ms,
            on_timeout: e.on_timeout,
            state: ApprovalState::Pending,
            decisions: vec![],
            resolved_ms: None,
            resolution: None,
        };
        return tx.put(APPROVALS, &id, rec);
    }
    let mut rec =
        tx.get::<ApprovalRecord>(APPROVALS, &id)?.ok_or_else(|| bad(entry, format!("unknown approval {id}")))?;
    if rec.state != ApprovalState::Pending {
        return Err(bad(entry, format!("approval {id} is {}", rec.state.as_str())));
    }
    let (state, resolution) = match &event {
        ApprovalEvent::Approved(v) | ApprovalEvent::Rejected(v) => {
            let approve = matches!(event, ApprovalEvent::Approved(_));
            rec.decisions.push(Decision {
                actor: v.actor.clone(),
                decision: if approve { "approve" } else { "reject" }.to_owned(),
                reason: v.reason.clone(),
                at_ms: entry.time,
            });
            if !v.decided {
                return tx.put(APPROVALS, &id, rec);
            }
            let by: Vec<&str> = rec.decisions.iter().map(|d| d.actor.as_str()).collect();
            let why = v.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
            if approve {
                (ApprovalState::Approved, format!("approved by {}{why}", by.join(", ")))
            } else {
                (ApprovalState::Rejected, format!("rejected by {}{why}", v.actor))
            }
        }
        ApprovalEvent::Expired(e) => {
            (ApprovalState::Expired, format!("timed out with no decision: on_timeout = {}", e.on_timeout.as_str()))
        }
        ApprovalEvent::Cancelled(e) => (ApprovalState::Cancelled, e.reason.clone()),
        ApprovalEvent::Requested(_) => unreachable!("handled above"),
    };
    if let Some(at) = rec.deadline_ms {
        due::disarm(tx, at, &timer_key(&id))?;
    }
    rec.state = state;
    rec.resolution = Some(resolution);
    rec.resolved_ms = Some(entry.time);
    counters::increment(tx, &format!("approvals:{}", state.as_str()))?;
    tx.put(APPROVALS, &id, rec)
}
