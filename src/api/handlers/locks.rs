//! Named locks over HTTP: what the runbooks' `orch locks …` commands call.

use crate::api::dto;
use crate::api::extract::{Auth, JsonBody, QueryArgs};
use crate::api::handlers::{EnvQuery, acting_tenant, ms, submit};
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::Scope;
use crate::domain::locks::{ForceTarget, LockCommand, LockEvent, in_env};
use crate::kernel::event::Event;
use crate::machine::Command;
use crate::machine::read;
use axum::Json;
use axum::extract::{Path, State};
use std::sync::Arc;

/// Locks listed at most.
const LOCK_LIST_MAX: usize = 10_000;
/// Ready jobs examined for DAG steps waiting on a lock.
const WAITING_SCAN: usize = 10_000;

fn s(v: &serde_json::Value) -> &str {
    v.as_str().unwrap_or("?")
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    QueryArgs(q): QueryArgs<EnvQuery>,
) -> ApiResult<Json<dto::LockList>> {
    let p = auth.require(Scope::Read)?;
    let txn = state.store.read()?;
    let now = state.clock.now_ms();
    let waiting = read::lock_waiting_jobs(&txn, WAITING_SCAN)?;
    let locks = read::locks(&txn, p.tenant.as_deref(), LOCK_LIST_MAX)?
        .iter()
        .filter(|l| q.env.as_ref().is_none_or(|e| in_env(&l.resource, e)))
        .map(|l| {
            let mut lock = dto::Lock::from_record(l, now);
            // DAG steps that name this lock wait for it without joining its waiter list.
            lock.waiters.extend(
                waiting
                    .iter()
                    .filter(|j| {
                        j.tenant == l.tenant
                            && j.payload["locks"]
                                .as_array()
                                .is_some_and(|ls| ls.iter().any(|x| x == l.resource.as_str()))
                    })
                    .map(|j| dto::LockWaiterDto {
                        owner: format!("{}/{} (job:{})", s(&j.payload["run"]), s(&j.payload["step"]), j.id),
                        since: crate::clock::rfc3339(j.created_ms),
                    }),
            );
            lock
        })
        .collect();
    Ok(Json(dto::LockList { locks }))
}

pub async fn acquire(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::LockAcquire>,
) -> ApiResult<Json<dto::LockAcquired>> {
    let p = auth.require(Scope::Operate)?;
    // An environment's lock is the site's: a tenant's token on a shared appliance cannot take it.
    if req.resource.starts_with("env:") && !state.sees_all_tenants(p) {
        return Err(Problem::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "locks env:<name> belong to the site's environments: a token of one tenant cannot take them",
        ));
    }
    let tenant = acting_tenant(&state, p, req.tenant.as_deref())?;
    let ttl_ms = req.ttl.as_deref().map(|t| ms("ttl", t)).transpose()?;
    let c = submit(
        &state,
        p,
        Command::Lock(LockCommand::Acquire { tenant, resource: req.resource, owner: req.owner, ttl_ms }),
    )
    .await?;
    let answer = match (&c.note, c.entries.first().and_then(LockEvent::of)) {
        (Some(n), _) => dto::LockAcquired {
            lock_id: n["lockId"].as_str().unwrap_or_default().to_owned(),
            granted: false,
            token: None,
            position: n["position"].as_u64(),
        },
        (None, Some(Ok(LockEvent::Waiting(w)))) => {
            dto::LockAcquired { lock_id: w.lock_id, granted: false, token: None, position: Some(w.position as u64) }
        }
        (None, Some(Ok(LockEvent::Acquired(h) | LockEvent::Renewed(h)))) => {
            dto::LockAcquired { lock_id: h.lock_id, granted: true, token: Some(h.token), position: None }
        }
        _ => return Err(Problem::internal("acquire committed neither a grant nor a place in line")),
    };
    Ok(Json(answer))
}

/// A forced release is ledgered with why: an auditor reads it, so it is never empty.
fn force_reason(reason: Option<String>) -> Result<String, Problem> {
    reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| Problem::invalid("reason", "a forced release needs a reason; it is recorded in the ledger"))
}

/// `POST /locks/{id}/release`: by the holder with its token, or forced (admin, reason recorded).
pub async fn release(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<dto::LockRelease>,
) -> ApiResult<Json<dto::Released>> {
    let command = if req.force {
        let p = auth.require(Scope::Admin)?;
        let reason = force_reason(req.reason)?;
        let Some(token) = req.token else {
            return Err(Problem::invalid(
                "token",
                "a forced release names the fencing token it breaks (the TOKEN column of orch locks list)",
            ));
        };
        LockCommand::ForceRelease {
            tenant: p.tenant.clone(),
            target: ForceTarget::Id(id.clone()),
            reason: Some(reason),
            tokens: Some([(id, token)].into()),
        }
    } else {
        let p = auth.require(Scope::Operate)?;
        let (Some(owner), Some(token)) = (req.owner, req.token) else {
            return Err(Problem::invalid("token", "a holder's release needs owner and token; an operator uses force"));
        };
        LockCommand::Release { tenant: p.tenant.clone(), lock_id: id, owner, token }
    };
    let c = submit(&state, &auth.0, Command::Lock(command)).await?;
    Ok(Json(dto::Released {
        released: c.entries.iter().filter_map(|e| e.data["lockId"].as_str().map(str::to_owned)).collect(),
    }))
}

/// `POST /locks/release` with `env` and `force`: every held lock of an environment.
pub async fn release_env(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::LockRelease>,
) -> ApiResult<Json<dto::Released>> {
    let p = auth.require(Scope::Admin)?;
    let Some(env) = req.env.filter(|_| req.force) else {
        return Err(Problem::invalid("env", "releasing by environment needs env and force: true"));
    };
    let reason = force_reason(req.reason)?;
    let Some(tokens) = req.tokens else {
        return Err(Problem::invalid(
            "tokens",
            "a forced release names the fencing token it breaks for each lock (lock id → token, from orch locks list)",
        ));
    };
    let command = LockCommand::ForceRelease {
        tenant: p.tenant.clone(),
        target: ForceTarget::Env(env),
        reason: Some(reason),
        tokens: Some(tokens),
    };
    let c = submit(&state, p, Command::Lock(command)).await?;
    Ok(Json(dto::Released {
        released: c.entries.iter().filter_map(|e| e.data["lockId"].as_str().map(str::to_owned)).collect(),
    }))
}

pub async fn resource(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(resource): Path<String>,
) -> ApiResult<Json<dto::Resource>> {
    auth.require(Scope::Read)?;
    let version = read::resource_version(&state.store.read()?, &resource)?;
    Ok(Json(dto::Resource { resource, version }))
}

/// A lock-guarded update: the holder's token in pessimistic mode, the read version in
/// optimistic mode (`locks.mode`).
pub async fn update_resource(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(resource): Path<String>,
    JsonBody(req): JsonBody<dto::ResourceUpdate>,
) -> ApiResult<Json<dto::Resource>> {
    let p = auth.require(Scope::Operate)?;
    let tenant = acting_tenant(&state, p, req.tenant.as_deref())?;
    let command = LockCommand::Update {
        tenant,
        resource: resource.clone(),
        owner: req.owner,
        token: req.token,
        expected_version: req.expected_version,
        note: req.note,
    };
    let c = submit(&state, p, Command::Lock(command)).await?;
    let version = c.entries.first().and_then(|e| e.data["version"].as_u64()).unwrap_or_default();
    Ok(Json(dto::Resource { resource, version }))
}
