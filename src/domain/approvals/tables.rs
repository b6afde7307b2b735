//! The approvals domain's tables: their definitions, records and reads.

use crate::domain::approvals::OnTimeout;
use crate::kernel::store::read::{records, rerr};
use crate::kernel::store::{Record, StoreError, rw};
use redb::{ReadTransaction, TableDefinition};
use serde::{Deserialize, Serialize};

/// Projection: approvals by id (`apr-1`).
pub const APPROVALS: TableDefinition<&str, &[u8]> = TableDefinition::new("approvals");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    Pending,
    Approved,
    Rejected,
    Expired,
    Cancelled,
}

impl ApprovalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Expired => "expired",
            ApprovalState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ApprovalState::Pending,
            ApprovalState::Approved,
            ApprovalState::Rejected,
            ApprovalState::Expired,
            ApprovalState::Cancelled,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// One decision on an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub actor: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub reason: Option<String>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRecord {
    pub id: String,
    pub tenant: String,
    pub run: String,
    pub step: String,
    pub inputs_hash: String,
    pub dag: String,
    pub dag_version: u32,
    pub approvers: u32,
    pub self_approval: bool,
    pub requested_by: String,
    pub requested_ms: i64,
    pub deadline_ms: Option<i64>,
    pub on_timeout: Option<OnTimeout>,
    pub state: ApprovalState,
    pub decisions: Vec<Decision>,
    pub resolved_ms: Option<i64>,
    /// How it ended, in words: who approved or rejected and why, the timeout, the cancel.
    pub resolution: Option<String>,
}

impl ApprovalRecord {
    /// Approvals so far.
    pub fn approvals(&self) -> u32 {
        self.decisions.iter().filter(|d| d.decision == "approve").count() as u32
    }
}

impl Record for ApprovalRecord {}

pub fn approval(txn: &ReadTransaction, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
    rw::get(&txn.open_table(APPROVALS).map_err(rerr)?, "approvals", id)
}

/// Approvals of `tenant` (every tenant's for `None`) in `state` (any for `None`), at most `limit`.
pub fn approvals(
    txn: &ReadTransaction,
    tenant: Option<&str>,
    state: Option<ApprovalState>,
    limit: usize,
) -> Result<Vec<ApprovalRecord>, StoreError> {
    records(txn, APPROVALS, "approvals", limit, |r: &ApprovalRecord| {
        tenant.is_none_or(|t| t == r.tenant) && state.is_none_or(|s| s == r.state)
    })
}
