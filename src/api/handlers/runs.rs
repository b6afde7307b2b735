//! Runs over HTTP: start (idempotent on `runToken`), show with per-step wait reasons, list,
//! cancel (`POST /runs/{runId}:cancel`) and manual recovery (`/actions/retry|skip|abort`).

use crate::api::dto;
use crate::api::extract::{Auth, JsonBody};
use crate::api::handlers::{acting_tenant, submit};
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::Scope;
use crate::clock::rfc3339;
use crate::domain::queue::tables::JobState;
use crate::domain::runs::Recovery;
use crate::domain::runs::RunCommand;
use crate::domain::runs::spec;
use crate::domain::runs::tables::RunRecord;
use crate::domain::runs::tables::RunStatus;
use crate::domain::runs::tables::StepRecord;
use crate::domain::runs::tables::StepState;
use crate::machine::Command;
use crate::machine::read;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use redb::ReadTransaction;
use std::collections::HashMap;
use std::sync::Arc;

/// Runs listed at most.
const RUN_LIST_MAX: usize = 10_000;

fn state_name<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

pub async fn start(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::RunStart>,
) -> ApiResult<(StatusCode, Json<dto::Run>)> {
    let p = auth.require(Scope::Operate)?;
    let tenant = acting_tenant(&state, p, req.tenant.as_deref())?;
    if req.run_token.as_ref().is_some_and(|t| t.is_empty() || t.len() > 128) {
        return Err(Problem::invalid("runToken", "runToken must be 1-128 characters"));
    }
    let c = submit(
        &state,
        p,
        Command::Run(RunCommand::Start { tenant, dag: req.dag, inputs: req.inputs, run_token: req.run_token }),
    )
    .await?;
    let note = c.note.unwrap_or_default();
    let (status, id) = match note["existing"].as_str() {
        Some(id) => (StatusCode::OK, id.to_owned()),
        None => (StatusCode::CREATED, note["runId"].as_str().unwrap_or_default().to_owned()),
    };
    Ok((status, Json(run_dto(&state, p.tenant.as_deref(), &id)?)))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(run): Path<String>,
) -> ApiResult<Json<dto::Run>> {
    let p = auth.require(Scope::Read)?;
    Ok(Json(run_dto(&state, p.tenant.as_deref(), &run)?))
}

pub async fn list(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<dto::RunList>> {
    let p = auth.require(Scope::Read)?;
    let txn = state.store.read()?;
    let mut runs = read::runs(&txn, p.tenant.as_deref(), RUN_LIST_MAX)?;
    runs.sort_by_key(|r| (r.created_ms, r.id.len(), r.id.clone()));
    let runs = runs
        .iter()
        .map(|r| dto::RunSummary {
            id: r.id.clone(),
            dag: r.dag.clone(),
            version: r.version,
            status: run_status(r),
            created_at: rfc3339(r.created_ms),
            finished_at: r.finished_ms.map(rfc3339),
            steps: r.steps,
            failed: r.failed,
        })
        .collect();
    Ok(Json(dto::RunList { runs }))
}

/// `POST /runs/{runId}:cancel` (the only POST on a run's own path).
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(run): Path<String>,
) -> ApiResult<Json<dto::Run>> {
    let p = auth.require(Scope::Operate)?;
    let Some(id) = run.strip_suffix(":cancel") else {
        return Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("POST /runs/{run}: did you mean /runs/{run}:cancel?"),
        ));
    };
    submit(&state, p, Command::Run(RunCommand::Cancel { tenant: p.tenant.clone(), run: id.to_owned() })).await?;
    Ok(Json(run_dto(&state, p.tenant.as_deref(), id)?))
}

pub async fn action(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path((run, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<dto::Run>> {
    let p = auth.require(Scope::Operate)?;
    let req: dto::RunAction = if body.is_empty() {
        dto::RunAction::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Problem::invalid("stepRecordId", format!("bad action body: {e}")))?
    };
    let action = match action.as_str() {
        "retry" => Recovery::Retry,
        "skip" => Recovery::Skip,
        "abort" => Recovery::Abort,
        other => return Err(Problem::not_found(format!("run action {other:?} (retry, skip, abort)"))),
    };
    let command = RunCommand::Recover { tenant: p.tenant.clone(), run: run.clone(), action, step: req.step_record_id };
    submit(&state, p, Command::Run(command)).await?;
    Ok(Json(run_dto(&state, p.tenant.as_deref(), &run)?))
}

pub fn run_dto(state: &AppState, tenant: Option<&str>, id: &str) -> ApiResult<dto::Run> {
    let txn = state.store.read()?;
    let run = read::run(&txn, id)?
        .filter(|r| tenant.is_none_or(|t| t == r.tenant))
        .ok_or_else(|| Problem::not_found(format!("run {id}")))?;
    let mut steps = read::steps(&txn, id)?;
    steps.sort_by_key(|s| s.index);
    let (needs, execution) = needs_of(&txn, &run)?;
    let by_name: HashMap<&str, &StepRecord> = steps.iter().map(|s| (s.name.as_str(), s)).collect();
    let dto_steps = steps
        .iter()
        .map(|s| {
            Ok(dto::RunStep {
                id: format!("{}/{}", run.id, s.name),
                name: s.name.clone(),
                state: state_name(s.state),
                plugin: s.plugin.clone(),
                plugin_digest: run.plugins.get(&s.plugin).cloned(),
                attempts: s.attempts,
                job_id: s.job.clone(),
                worker: s.worker.clone(),
                queued_at: s.queued_ms.map(rfc3339),
                started_at: s.started_ms.map(rfc3339),
                finished_at: s.finished_ms.map(rfc3339),
                duration_ms: s.started_ms.zip(s.finished_ms).map(|(a, b)| b - a),
                error_code: s.error_code.clone(),
                error: s.error.clone(),
                wait_reason: wait_reason(&txn, state, &run, s, needs.get(s.name.as_str()), &by_name)?,
                approval_id: s.approval.clone(),
                runtime: runtime(&txn, s)?,
                outputs: s.outputs.clone(),
                history: s.history.iter().map(dto::StepAttempt::from_record).collect(),
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let mut waiting_on: Vec<String> = dto_steps
        .iter()
        .filter(|s| s.state == "checkpoint_pending")
        .map(|s| format!("step {}: {}", s.name, s.wait_reason.as_deref().unwrap_or("waiting for approval")))
        .collect();
    for s in steps.iter().filter(|s| s.state == StepState::Running) {
        if let Some(child) = &s.child {
            let status = read::run(&txn, child)?.map_or_else(|| "missing".to_owned(), |c| run_status(&c));
            waiting_on.push(format!("step {}: child run {child} is {status} (stella orch run show {child})", s.name));
        }
    }
    Ok(dto::Run {
        id: run.id.clone(),
        tenant: run.tenant.clone(),
        dag: run.dag.clone(),
        version: run.version,
        status: run_status(&run),
        inputs: run.inputs.clone(),
        inputs_hash: run.inputs_hash.clone(),
        run_token: run.run_token.clone(),
        created_at: rfc3339(run.created_ms),
        created_by: run.created_by.clone(),
        finished_at: run.finished_ms.map(rfc3339),
        parent: run.parent.as_ref().map(|p| serde_json::json!({ "runId": p.run_id, "step": p.step, "depth": p.depth })),
        waiting_on,
        execution,
        steps: dto_steps,
    })
}

/// A step's `runtime` metadata (runbook 004): its latest cache lookup (`cache`) and, for a
/// sub-orchestration step, its latest child run (`subOrchestration.childRunId`, its DAG and
/// status).
fn runtime(txn: &ReadTransaction, s: &StepRecord) -> ApiResult<Option<serde_json::Value>> {
    let mut out = serde_json::Map::new();
    if let Some(c) = &s.cache {
        out.insert("cache".into(), serde_json::json!(c));
    }
    if let Some(child) = &s.child {
        let rec = read::run(txn, child)?;
        out.insert(
            "subOrchestration".into(),
            serde_json::json!({
                "childRunId": child,
                "dag": rec.as_ref().map(|r| r.dag.clone()),
                "version": rec.as_ref().map(|r| r.version),
                "status": rec.as_ref().map(run_status),
            }),
        );
    }
    Ok((!out.is_empty()).then_some(serde_json::Value::Object(out)))
}

/// A run's status as the API shows it: `waiting_approval` for a running run whose only
/// unfinished work is checkpoints waiting for approval (stored as `running`).
pub fn run_status(run: &RunRecord) -> String {
    if run.status == RunStatus::Running && run.checkpoints > 0 && run.active == 0 {
        return "waiting_approval".to_owned();
    }
    state_name(run.status)
}

/// Each step's needs, from the run's pinned DAG version, and the run's `execution` metadata
/// (runbook 004: `execution.concurrency.maxParallelSteps`, `execution.caching`).
fn needs_of(txn: &ReadTransaction, run: &RunRecord) -> ApiResult<(HashMap<String, Vec<String>>, serde_json::Value)> {
    let text = read::dag_spec(txn, &run.dag, run.version)?
        .ok_or_else(|| Problem::internal(format!("spec of {}@{} is missing", run.dag, run.version)))?;
    let c = spec::compile_registered(&text).map_err(Problem::internal)?;
    let needs =
        c.steps.iter().map(|s| (s.name.clone(), s.needs.iter().map(|n| c.steps[*n].name.clone()).collect())).collect();
    let cached: serde_json::Map<String, serde_json::Value> = c
        .steps
        .iter()
        .filter(|s| s.checkpoint.is_none())
        .filter_map(|s| s.cache_ttl_ms.map(|t| (s.name.clone(), serde_json::json!({ "ttlMs": t }))))
        .collect();
    let max = (c.max_parallel != u32::MAX).then_some(c.max_parallel);
    let execution = serde_json::json!({
        "concurrency": { "maxParallelSteps": max },
        "caching": { "enabled": !cached.is_empty(), "steps": cached },
    });
    Ok((needs, execution))
}

/// Why a step that is not running waits: its needs, a concurrency limit, a paused type, a rate
/// budget, a retry backoff, or no worker yet.
fn wait_reason(
    txn: &ReadTransaction,
    state: &AppState,
    run: &RunRecord,
    step: &StepRecord,
    needs: Option<&Vec<String>>,
    by_name: &HashMap<&str, &StepRecord>,
) -> ApiResult<Option<String>> {
    match step.state {
        StepState::Pending => {
            if let Some(w) = &step.wait {
                return Ok(Some(w.clone()));
            }
            let open: Vec<&str> = needs
                .into_iter()
                .flatten()
                .filter(|n| {
                    by_name
                        .get(n.as_str())
                        .is_none_or(|s| !matches!(s.state, StepState::Succeeded | StepState::Skipped))
                })
                .map(String::as_str)
                .collect();
            let failed: Vec<&str> =
                open.iter().copied().filter(|n| by_name.get(n).is_some_and(|s| s.state == StepState::Failed)).collect();
            Ok(Some(if !failed.is_empty() {
                format!("blocked by failed step {}", failed.join(", "))
            } else {
                format!("needs {}", open.join(", "))
            }))
        }
        StepState::Queued => {
            let Some(job) = step.job.as_ref().map(|j| read::job(txn, j)).transpose()?.flatten() else {
                // A cached step waiting for the step that computes its key says which.
                return Ok(Some(step.wait.clone().unwrap_or_else(|| "queued".into())));
            };
            let queue =
                read::queues(txn)?.into_iter().find(|(t, _)| *t == job.job_type).map(|(_, q)| q).unwrap_or_default();
            let locks = read::locks(txn, None, 10_000)?;
            let held: Vec<String> = job.payload["locks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str())
                .filter_map(|l| crate::domain::locks::holder(&locks, l).map(|h| format!("lock {l} held by {h}")))
                .collect();
            Ok(Some(match job.state {
                JobState::Delayed if job.job_type == "wait" && job.attempt == 0 => {
                    format!("waiting until {} (a wait step)", rfc3339(job.not_before_ms))
                }
                JobState::Delayed => format!("retry backoff until {}", rfc3339(job.not_before_ms)),
                JobState::Ready if queue.paused => format!("job type {} is paused", job.job_type),
                JobState::Ready if !held.is_empty() => format!("waiting for {}", held.join(", ")),
                JobState::Ready if queue.budgets.values().any(|b| b.rate_milli_per_s.is_some()) => {
                    format!("waiting for a worker within the rate budget of {}", job.job_type)
                }
                JobState::Ready => format!("waiting for a worker for {}", job.job_type),
                JobState::Leased => "starting".into(),
                _ => return Ok(None),
            }))
        }
        StepState::CheckpointPending => {
            let Some(a) = step.approval.as_ref().map(|id| read::approval(txn, id)).transpose()?.flatten() else {
                return Ok(Some("checkpoint pending, but its approval is missing (run stella doctor)".into()));
            };
            let until = match (a.deadline_ms, a.on_timeout) {
                (Some(at), Some(t)) => format!("; times out {} ({})", rfc3339(at), t.as_str()),
                _ => String::new(),
            };
            Ok(Some(format!(
                "waiting for approval {} ({} of {} approvals; requested by {}{until}): stella orch approvals approve {}",
                a.id,
                a.approvals(),
                a.approvers,
                a.requested_by,
                a.id
            )))
        }
        _ => {
            let _ = (state, run);
            Ok(None)
        }
    }
}
