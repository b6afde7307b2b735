//! Checkpoint approvals over HTTP: the tenant's list (by state, pending by default), one
//! approval, and an approver's decision (`orchestrator:approve`; never the run's starter unless
//! the step allows it). A decision that settles an approval moves its run in the same commit.

use crate::api::dto;
use crate::api::extract::Auth;
use crate::api::handlers::submit;
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::Scope;
use crate::domain::approvals::ApprovalCommand;
use crate::domain::approvals::tables::ApprovalState;
use crate::machine::Command;
use crate::machine::read;
use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use std::sync::Arc;

/// Approvals listed at most.
const APPROVAL_LIST_MAX: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `pending` (default), `approved`, `rejected`, `expired`, `cancelled` or `all`.
    pub state: Option<String>,
    pub run: Option<String>,
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<dto::ApprovalList>> {
    let p = auth.require(Scope::Read)?;
    let wanted = match q.state.as_deref().unwrap_or("pending") {
        "all" => None,
        s => Some(ApprovalState::parse(s).ok_or_else(|| {
            Problem::invalid(
                "state",
                format!("{s:?} is not one of pending, approved, rejected, expired, cancelled, all"),
            )
        })?),
    };
    let txn = state.store.read()?;
    let mut approvals = read::approvals(&txn, seen(&state, p).as_deref(), wanted, APPROVAL_LIST_MAX)?;
    approvals.retain(|a| q.run.as_deref().is_none_or(|r| r == a.run));
    approvals.sort_by_key(|a| (a.requested_ms, a.id.len(), a.id.clone()));
    Ok(Json(dto::ApprovalList { approvals: approvals.iter().map(dto::Approval::from_record).collect() }))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<dto::Approval>> {
    let p = auth.require(Scope::Read)?;
    Ok(Json(approval_dto(&state, seen(&state, p).as_deref(), &id)?))
}

/// `POST /approvals/{id}/approve` or `/reject`.
pub async fn decide(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path((id, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<dto::Approval>> {
    let approve = match action.as_str() {
        "approve" => true,
        "reject" => false,
        other => return Err(Problem::not_found(format!("approval action {other:?} (approve, reject)"))),
    };
    let p = auth.require(Scope::Approve)?;
    let req: dto::ApprovalDecide = if body.is_empty() {
        dto::ApprovalDecide::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Problem::invalid("reason", format!("bad decision body: {e}")))?
    };
    let reason = req.reason;
    let tenant = seen(&state, p);
    let command =
        ApprovalCommand::Decide { tenant: tenant.clone(), id: id.clone(), actor: p.actor.clone(), approve, reason };
    submit(&state, p, Command::Approval(command)).await?;
    Ok(Json(approval_dto(&state, tenant.as_deref(), &id)?))
}

/// The tenant whose approvals `p` sees: its own, or every one's (the site's too: a promotion's
/// approval gate) for a principal that sees every tenant.
fn seen(state: &AppState, p: &crate::auth::Principal) -> Option<String> {
    if state.sees_all_tenants(p) { None } else { p.tenant.clone() }
}

fn approval_dto(state: &AppState, tenant: Option<&str>, id: &str) -> ApiResult<dto::Approval> {
    let txn = state.store.read()?;
    let rec = read::approval(&txn, id)?
        .filter(|a| tenant.is_none_or(|t| t == a.tenant))
        .ok_or_else(|| Problem::not_found(format!("approval {id}")))?;
    Ok(dto::Approval::from_record(&rec))
}
