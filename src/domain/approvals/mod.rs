//! Human approvals (DESIGN.md §10): a step with `checkpoint_after = true` waits, once it has
//! succeeded, in `checkpoint_pending` for an approval bound to its run, step, inputs hash and
//! DAG version. Distinct approvers (`orchestrator:approve`; never the run's starter unless the
//! step allows it) approve it, one rejection rejects it, and a timeout does what its
//! `on_timeout` says. This domain keeps the approvals and their decisions; what a decision does
//! to the run is the engine's (`runs::plan::on_approval`), which the machine calls with the
//! [`Resolution`] a plan returns.

pub mod apply;
pub mod plan;
pub mod tables;

use serde::{Deserialize, Serialize};

/// A decision's reason at most (characters).
pub const REASON_MAX: usize = 512;

/// What a checkpoint's timeout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The step fails (`approval_timed_out`), as a rejection would.
    Reject,
    /// The step goes on, as an approval would.
    Approve,
    /// The whole run is cancelled.
    Cancel,
}

impl OnTimeout {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reject" => Some(OnTimeout::Reject),
            "approve" => Some(OnTimeout::Approve),
            "cancel" => Some(OnTimeout::Cancel),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Reject => "reject",
            OnTimeout::Approve => "approve",
            OnTimeout::Cancel => "cancel",
        }
    }
}

/// Approval ids are `apr-1`, `apr-2`, …
pub fn approval_id(seq: u64) -> String {
    format!("apr-{seq}")
}

/// The due-index key of an approval's timeout.
pub fn timer_key(id: &str) -> String {
    format!("approval|{id}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApprovalCommand {
    /// One actor's decision on a pending approval (`tenant`: the caller's, `None` for the
    /// local administrator).
    Decide { tenant: Option<String>, id: String, actor: String, approve: bool, reason: Option<String> },
}

crate::events! {
    /// The approvals' entries.
    pub enum ApprovalEvent {
        Requested(ApprovalRequested) = "approval.requested",
        Approved(ApprovalVote) = "approval.approved",
        Rejected(ApprovalVote) = "approval.rejected",
        Expired(ApprovalExpired) = "approval.expired",
        Cancelled(ApprovalCancelled) = "approval.cancelled",
    }
}

impl ApprovalEvent {
    pub fn approval_id(&self) -> &str {
        match self {
            ApprovalEvent::Requested(e) => &e.approval_id,
            ApprovalEvent::Approved(e) | ApprovalEvent::Rejected(e) => &e.approval_id,
            ApprovalEvent::Expired(e) => &e.approval_id,
            ApprovalEvent::Cancelled(e) => &e.approval_id,
        }
    }
}

/// A checkpoint asks for approval: what it is bound to and who may decide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequested {
    pub approval_id: String,
    pub run_id: String,
    pub step: String,
    /// sha256 of the step's RFC 8785 canonical inputs, as its job ran with them.
    pub inputs_hash: String,
    pub dag: String,
    pub dag_version: u32,
    /// Distinct approvers needed.
    pub approvers: u32,
    /// Whether the run's starter may approve.
    pub self_approval: bool,
    /// Who started the run.
    pub requested_by: String,
    pub deadline_ms: Option<i64>,
    pub on_timeout: Option<OnTimeout>,
}

/// One approver's decision (the entry's actor), and whether it decided the approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalVote {
    pub approval_id: String,
    pub actor: String,
    pub reason: Option<String>,
    /// Approvals so far, this one included (a rejection: 0).
    pub approvals: u32,
    /// The approval is decided by this entry: enough approvers, or a rejection.
    pub decided: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalExpired {
    pub approval_id: String,
    pub on_timeout: OnTimeout,
}

/// The step stopped waiting without a decision: its run was cancelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalCancelled {
    pub approval_id: String,
    pub reason: String,
}

/// How a plan decided an approval, for the engine to act on in the same command.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    pub approval: tables::ApprovalRecord,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The step goes on (`by`: the approvers, or `timeout`).
    Approved { by: Vec<String> },
    /// The step fails with this code and message.
    Rejected { code: &'static str, error: String },
    /// The run is cancelled.
    CancelRun,
}
