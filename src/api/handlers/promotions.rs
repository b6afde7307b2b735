//! Promotions over HTTP (DESIGN.md §9): start one (`POST /promotions`), list them (by status,
//! environment, age), show one with its gates and why it waits, abort one. A promotion is a
//! deployment of kind `promotion`: its run is the environment's promotion DAG, whose steps
//! are the gates, then `deploy` and `health`.

use super::runs::run_dto;
use super::{releases, site};
use crate::api::dto;
use crate::api::extract::{Auth, JsonBody};
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::app::release::Forcing;
use crate::auth::Scope;
use crate::clock::rfc3339;
use crate::domain::release::spec::{Gate, GateKind};
use crate::domain::release::tables::{self as t, DeploymentRecord};
use crate::domain::release::{DeploymentKind, DeploymentStatus, ReleaseCommand};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use std::sync::Arc;

/// Promotions listed at most (the newest).
const LIST_MAX: usize = 1_000;

pub async fn start(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::PromotionStart>,
) -> ApiResult<(StatusCode, Json<dto::Promotion>)> {
    let p = site(&state, &auth, Scope::Operate)?;
    if req.force_path && !p.scopes.contains(&Scope::Admin) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "promotion start --force-path skips the promotion path: it needs the orchestrator:admin scope",
        ));
    }
    if crate::domain::release::split_artifact(&req.artifact).is_none() {
        return Err(Problem::invalid("artifact", format!("artifact {:?}: expected NAME@VERSION", req.artifact)));
    }
    let force = Forcing { lock: false, path: req.force_path };
    let d = releases(&state, &p)?.deploy(&req.to, &req.artifact, DeploymentKind::Promotion, force, req.reason).await?;
    Ok((StatusCode::CREATED, Json(promotion(&state, &d)?)))
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub env: Option<String>,
    /// Only those whose state has not changed for this long (`5m`).
    pub older_than: Option<String>,
}

/// The statuses a promotion has.
const STATUSES: [&str; 3] = ["in_progress", "success", "failed"];

pub async fn list(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<dto::PromotionList>> {
    site(&state, &auth, Scope::Read)?;
    if let Some(s) = q.status.as_deref().filter(|s| !STATUSES.contains(s)) {
        return Err(Problem::invalid("status", format!("status {s:?} is not one of {}", STATUSES.join(", "))));
    }
    let older = q.older_than.as_deref().map(|d| super::ms("olderThan", d)).transpose()?;
    let txn = state.store.read()?;
    if let Some(env) = &q.env
        && t::environment(&txn, env)?.is_none()
    {
        return Err(Problem::not_found(format!("environment {env}")));
    }
    let deployments = t::deployments(&txn, q.env.as_deref())?;
    drop(txn);
    let mut promotions = Vec::new();
    for d in deployments.iter().filter(|d| d.promotion.is_some()) {
        if q.status.as_deref().is_some_and(|s| s != status(d)) {
            continue;
        }
        let p = promotion(&state, d)?;
        if older.is_some_and(|o| p.age_ms < o as i64) {
            continue;
        }
        promotions.push(p);
        if promotions.len() == LIST_MAX {
            break;
        }
    }
    Ok(Json(dto::PromotionList { promotions }))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<dto::Promotion>> {
    site(&state, &auth, Scope::Read)?;
    let d = find(&state, &id)?;
    Ok(Json(promotion(&state, &d)?))
}

/// `GET /promotions/latest`'s: the newest promotion (unfinished first), or 404.
pub async fn latest(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<dto::Promotion>> {
    site(&state, &auth, Scope::Read)?;
    let all = t::deployments(&state.store.read()?, None)?;
    let mut of = all.iter().filter(|d| d.promotion.is_some());
    let d =
        all.iter().find(|d| d.promotion.is_some() && !d.status.terminal()).or_else(|| of.next()).ok_or_else(|| {
            Problem::not_found("a promotion (start one: stella promotion start NAME@VERSION --to ENV)")
        })?;
    Ok(Json(promotion(&state, d)?))
}

pub async fn abort(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<dto::PromotionAbort>,
) -> ApiResult<Json<dto::Promotion>> {
    let p = site(&state, &auth, Scope::Operate)?;
    if req.reason.trim().is_empty() || req.reason.len() > 1024 {
        return Err(Problem::invalid("reason", "a reason of 1-1024 characters says why the promotion is aborted"));
    }
    let command = ReleaseCommand::Abort { promotion: id.clone(), reason: req.reason };
    crate::api::handlers::submit(&state, &p, crate::machine::Command::Release(command)).await?;
    let d = find(&state, &id)?;
    Ok(Json(promotion(&state, &d)?))
}

fn find(state: &AppState, id: &str) -> ApiResult<DeploymentRecord> {
    t::deployments(&state.store.read()?, None)?
        .into_iter()
        .find(|d| d.promotion.as_deref() == Some(id))
        .ok_or_else(|| Problem::not_found(format!("promotion {id}")))
}

fn status(d: &DeploymentRecord) -> &'static str {
    match d.status {
        DeploymentStatus::Pending | DeploymentStatus::InProgress => "in_progress",
        DeploymentStatus::Success => "success",
        DeploymentStatus::Failed => "failed",
    }
}

/// A promotion as an operator reads it: where it is, since when, why it waits, each gate.
pub fn promotion(state: &AppState, d: &DeploymentRecord) -> ApiResult<dto::Promotion> {
    let run = run_dto(state, None, &d.run_id)?;
    let txn = state.store.read()?;
    let env = t::environment(&txn, &d.env)?;
    let gates: Vec<Gate> = env.as_ref().map(|e| e.env.typed_gates()).unwrap_or_default();
    let from = run.inputs["from"].as_str().map(str::to_owned);
    let jobs = |id: &str| crate::machine::read::job(&txn, id).ok().flatten();
    let updated = t::last_change_ms(&txn, d)?;
    let ended = d.status.terminal();
    let current = (!ended)
        .then(|| run.steps.iter().find(|s| !matches!(s.state.as_str(), "succeeded" | "skipped" | "pending")))
        .flatten();
    let wait_reason = current.map(|s| {
        let why = s.wait_reason.clone().unwrap_or_else(|| match s.state.as_str() {
            "running" => format!(
                "running{}{}",
                s.worker.as_deref().map(|w| format!(" on {w}")).unwrap_or_default(),
                s.started_at.as_deref().map(|t| format!(" since {t}")).unwrap_or_default()
            ),
            other => other.to_owned(),
        });
        let attempts = match gates.iter().find(|g| g.name == s.name) {
            Some(Gate { kind: GateKind::Plugin { retries, .. }, .. }) => {
                let max = s.job_id.as_deref().and_then(jobs).map_or(retries + 1, |j| j.max_attempts);
                format!(" attempt {}/{max}", s.attempts.max(1))
            }
            _ => String::new(),
        };
        let what = if s.name == "deploy" || s.name == "health" { "step" } else { "gate" };
        format!("{what} {}{attempts}: {why}", s.name)
    });
    let gates = gates
        .iter()
        .map(|g| {
            let step = run.steps.iter().find(|s| s.name == g.name);
            let state = match step.map(|s| s.state.as_str()) {
                None | Some("pending") => "pending",
                Some("queued") | Some("checkpoint_pending") => "waiting",
                Some("running") => "running",
                Some("succeeded") => "passed",
                Some(other) => other,
            };
            // The job's own bound once it is queued (runtime `gates.<name>.retries` may have
            // changed the declaration's).
            let max_attempts = match (&g.kind, step.and_then(|s| s.job_id.as_deref())) {
                (_, Some(job)) if let Some(j) = jobs(job) => j.max_attempts,
                (GateKind::Plugin { retries, .. }, _) => retries + 1,
                _ => 1,
            };
            let since = step.and_then(|s| s.finished_at.clone().or(s.started_at.clone()).or(s.queued_at.clone()));
            dto::PromotionGate {
                name: g.name.clone(),
                kind: g.kind.as_str().to_owned(),
                state: state.to_owned(),
                attempts: step.map_or(0, |s| s.attempts),
                max_attempts,
                since,
                waiting_on: step
                    .filter(|_| state == "waiting" || state == "pending")
                    .and_then(|s| s.wait_reason.clone()),
                error: step.and_then(|s| s.error.clone()),
                approval_id: step.and_then(|s| s.approval_id.clone()),
            }
        })
        .collect();
    Ok(dto::Promotion {
        id: d.promotion.clone().unwrap_or_default(),
        artifact: d.artifact.clone(),
        from,
        env: d.env.clone(),
        status: status(d).to_owned(),
        deployment: d.id.clone(),
        run_id: d.run_id.clone(),
        requested_by: d.actor.clone(),
        created_at: rfc3339(d.created_ms),
        updated_at: rfc3339(updated),
        age_ms: (state.clock.now_ms() - updated).max(0),
        ended_at: d.ended_ms.map(rfc3339),
        current_step: current.map(|s| s.name.clone()),
        wait_reason,
        error: d.error.clone(),
        failed_step: d.failed_step.clone(),
        reason: d.reason.clone(),
        forced: d.forced.clone(),
        gates,
    })
}

/// The id of the job-health check (runbook 000).
pub const JOB_HEALTH: &str = "check.orchestrator.job-health";

/// `check.orchestrator.job-health`: each promotion in flight whose state has not changed for
/// `promotions.stuck_after` is an error naming where it waits and the runbook's fix; one `ok`
/// otherwise.
pub fn job_health(state: &AppState) -> ApiResult<Vec<crate::app::release::Finding>> {
    use crate::app::release::Finding;
    let txn = state.store.read()?;
    let stuck_after = crate::domain::appliance::tables::runtime_value(&txn, &state.config, "promotions.stuck_after")?
        .and_then(|v| crate::runtime_config::as_ms(&v))
        .unwrap_or(600_000) as i64;
    let in_flight: Vec<DeploymentRecord> =
        t::deployments(&txn, None)?.into_iter().filter(|d| d.promotion.is_some() && !d.status.terminal()).collect();
    drop(txn);
    let mut out = Vec::new();
    for d in &in_flight {
        let p = promotion(state, d)?;
        if p.age_ms < stuck_after {
            continue;
        }
        let waits = p.wait_reason.clone().unwrap_or_else(|| "its run makes no progress".to_owned());
        let gate = p.current_step.as_deref().and_then(|s| p.gates.iter().find(|g| g.name == s));
        let fix = match gate {
            Some(g) if g.approval_id.is_some() => format!(
                "stella orch approvals approve {} --reason TEXT (by someone other than {})",
                g.approval_id.as_deref().unwrap_or_default(),
                p.requested_by
            ),
            _ if waits.contains("lock ") => {
                format!(
                    "stella orch locks list --env {e}; if the holder is gone: stella orch locks release --env {e} --force --reason TEXT",
                    e = p.env
                )
            }
            _ => format!(
                "stella promotion gates {id}; stella promotion trace {id} --verbose; or end it: stella promotion abort {id} --reason TEXT",
                id = p.id
            ),
        };
        out.push(Finding {
            check: JOB_HEALTH,
            level: "error",
            subject: format!("promotion {}", p.id),
            message: format!(
                "promotion {} of {} into {} has not changed for {} (promotions.stuck_after is {}): {waits}",
                p.id,
                p.artifact,
                p.env,
                crate::duration::human(p.age_ms as u64),
                crate::duration::human(stuck_after as u64)
            ),
            fix: Some(fix),
        });
    }
    if out.is_empty() {
        out.push(Finding {
            check: JOB_HEALTH,
            level: "ok",
            subject: "promotions".into(),
            message: format!("no promotion is stuck ({} in flight)", in_flight.len()),
            fix: None,
        });
    }
    Ok(out)
}
