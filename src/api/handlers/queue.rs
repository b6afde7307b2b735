//! The queue over HTTP: enqueue, the lease API for workers (long-poll, heartbeat, complete,
//! fail), operator controls (status, pause, resume, budgets), the dead-letter queue and the
//! worker registry. In-process executors and remote agents use these same routes.

use crate::api::dto;
use crate::api::extract::{Auth, JsonBody, QueryArgs};
use crate::api::handlers::{EnvQuery, acting_tenant, ms, submit, submit_then};
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::{Principal, Scope};
use crate::clock::rfc3339;
use crate::domain::queue::plan::NewJob;
use crate::domain::queue::plan::{LEASE_MAX, valid_type};
use crate::domain::queue::tables::Budget;
use crate::domain::queue::{QueueCommand, QueueEvent, ReplaySelector, wakes};
use crate::kernel::Committed;
use crate::kernel::event::Event;
use crate::machine::Command;
use crate::machine::read;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Jobs listed in one response at most.
const LIST_MAX: usize = 10_000;
/// Ready jobs examined for the oldest age of a type.
const OLDEST_SCAN: usize = 1_000;
/// Lease timers examined for the worker registry.
const LEASE_SCAN: usize = 100_000;

fn job_dto(state: &AppState, p: &Principal, id: &str) -> ApiResult<dto::Job> {
    let txn = state.store.read()?;
    read::job(&txn, id)?
        .filter(|j| p.sees(&j.tenant))
        .map(|j| dto::Job::from_record(&j))
        .ok_or_else(|| Problem::not_found(format!("job {id}")))
}

pub async fn enqueue(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(body): JsonBody<dto::EnqueueBody>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let p = auth.require(Scope::Operate)?;
    let req = match body {
        dto::EnqueueBody::One(req) => req,
        dto::EnqueueBody::Many(jobs) => return enqueue_many(&state, p, jobs).await.map(IntoResponse::into_response),
    };
    let tenant = acting_tenant(&state, p, req.tenant.as_deref())?;
    let job = new_job(req, None)?;
    let command = Command::Queue(QueueCommand::Enqueue {
        tenant,
        job_type: job.job_type,
        payload: job.payload,
        priority: job.priority,
        max_attempts: job.max_attempts,
        delay_ms: job.delay_ms,
        idempotency_key: job.idempotency_key,
    });
    let c = submit(&state, p, command).await?;
    let (status, id) = match (&c.note, c.entries.first()) {
        (Some(note), _) => (StatusCode::OK, note["existing"].as_str().unwrap_or_default().to_owned()),
        (None, Some(e)) => (StatusCode::CREATED, e.subjects[0].clone()),
        (None, None) => return Err(Problem::internal("enqueue committed nothing")),
    };
    Ok((status, Json(job_dto(&state, p, &id)?)).into_response())
}

/// A job of a request, checked; `index` names it in a batch.
fn new_job(req: dto::Enqueue, index: Option<usize>) -> ApiResult<NewJob> {
    let at = |field: &str| index.map_or_else(|| field.to_owned(), |i| format!("jobs[{i}].{field}"));
    if !valid_type(&req.job_type) {
        return Err(Problem::invalid(
            &at("type"),
            format!("job type {:?} is not 1-64 of a-z, 0-9, '.', '-', '_'", req.job_type),
        ));
    }
    let delay_ms = req.delay.as_deref().map(|d| ms(&at("delay"), d)).transpose()?;
    Ok(NewJob {
        job_type: req.job_type,
        payload: req.payload,
        priority: req.priority.unwrap_or(100),
        max_attempts: req.max_attempts,
        delay_ms,
        idempotency_key: req.idempotency_key,
    })
}

/// `POST /jobs` with an array: one command, so all the jobs are enqueued or none is.
async fn enqueue_many(
    state: &AppState,
    p: &Principal,
    jobs: Vec<dto::Enqueue>,
) -> ApiResult<(StatusCode, Json<dto::EnqueuedJobs>)> {
    let named = jobs.first().and_then(|j| j.tenant.clone());
    if let Some(i) = jobs.iter().position(|j| j.tenant != named) {
        return Err(Problem::invalid(
            &format!("jobs[{i}].tenant"),
            "every job of a batch is for the same tenant: name it on each or on none",
        ));
    }
    let tenant = acting_tenant(state, p, named.as_deref())?;
    let jobs = jobs.into_iter().enumerate().map(|(i, j)| new_job(j, Some(i))).collect::<ApiResult<Vec<_>>>()?;
    let c = submit(state, p, Command::Queue(QueueCommand::EnqueueMany { tenant, jobs })).await?;
    let answer: dto::EnqueuedJobs = c
        .note
        .as_ref()
        .and_then(|n| serde_json::from_value(n.clone()).ok())
        .ok_or_else(|| Problem::internal("enqueue of a batch answered nothing"))?;
    let status = if answer.jobs.iter().any(|j| j.created) { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(answer)))
}

pub async fn show_job(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<dto::Job>> {
    let p = auth.require(Scope::Read)?;
    Ok(Json(job_dto(&state, p, &id)?))
}

/// Leases ready work, waiting up to `wait` (bounded by `queue.long_poll_max`) for some.
pub async fn lease(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::LeaseRequest>,
) -> ApiResult<Json<dto::LeaseResponse>> {
    let p = auth.require_either(Scope::Operate, Scope::Agent)?;
    let (command, wait) = lease_command(&state, p, &req)?;
    let deadline = tokio::time::Instant::now() + wait;
    // Woken only by entries that may have made work of these types ready.
    let types = req.types.clone();
    let mut events = state.writer.subscribe_where(move |e| wakes(e, |t| types.iter().any(|k| k == t)));
    loop {
        let c = submit(&state, p, command.clone()).await?;
        if !c.entries.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(leased(&state, &c)?));
        }
        // Wait for a committed event that may have made work available, or the deadline
        // (lagged or closed: try again too).
        let woke = tokio::time::timeout_at(deadline, events.recv()).await;
        if woke.is_err() {
            return Ok(Json(dto::LeaseResponse { leases: vec![] }));
        }
    }
}

/// The lease command of a request, checked, and how long it may wait for work.
fn lease_command(state: &AppState, p: &Principal, req: &dto::LeaseRequest) -> ApiResult<(Command, Duration)> {
    let tenant = match &req.agent {
        None if p.has(Scope::Operate) => p.tenant.clone(),
        None => {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a token of scope orchestrator:agent leases only as a deploy agent (\"agent\": its version, \"env\": its environment)",
            ));
        }
        Some(version) => Some(agent_tenant(state, p, req, version)?),
    };
    if req.types.is_empty() || req.types.iter().any(|t| !valid_type(t)) {
        return Err(Problem::invalid("types", "name at least one job type (1-64 of a-z, 0-9, '.', '-', '_')"));
    }
    if req.worker.is_empty() || req.worker.len() > 128 {
        return Err(Problem::invalid("worker", "worker id must be 1-128 characters"));
    }
    if req.worker.starts_with(crate::domain::queue::LOCAL_WORKER) {
        // The in-process executor's leases are requeued at every start: a remote worker must
        // never be taken for it.
        return Err(Problem::invalid(
            "worker",
            format!(
                "worker ids starting with {:?} are the appliance's own executor's",
                crate::domain::queue::LOCAL_WORKER
            ),
        ));
    }
    let max = req.max.unwrap_or(1).clamp(1, LEASE_MAX);
    let ttl_ms = req.ttl.as_deref().map(|t| ms("ttl", t)).transpose()?;
    let wait = Duration::from_millis(
        req.wait.as_deref().map(|w| ms("wait", w)).transpose()?.unwrap_or(0).min(state.config.queue.long_poll_max_ms),
    );
    let command = Command::Queue(QueueCommand::Lease {
        worker_tenant: tenant.clone().unwrap_or_default(),
        tenant,
        worker: req.worker.clone(),
        types: req.types.clone(),
        max,
        ttl_ms,
        env: req.env.clone(),
        agent: req.agent.clone(),
    });
    Ok((command, wait))
}

/// The tenant a deploy agent's lease takes jobs of (the site's), once it has shown it may
/// lease as one: scope `orchestrator:agent`, a site token (or one that sees every tenant), an
/// environment that exists.
fn agent_tenant(state: &AppState, p: &Principal, req: &dto::LeaseRequest, version: &str) -> Result<String, Problem> {
    let site = crate::auth::SITE_TENANT;
    if !p.has(Scope::Agent) || !(p.tenant.as_deref() == Some(site) || state.sees_all_tenants(p)) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "leasing as a deploy agent needs a site token of scope orchestrator:agent (stella auth token create --tenant {site} --scopes orchestrator:agent)"
            ),
        ));
    }
    if version.is_empty() || version.len() > 64 {
        return Err(Problem::invalid("agent", "the agent's version: 1-64 characters"));
    }
    let env = req
        .env
        .as_deref()
        .ok_or_else(|| Problem::invalid("env", "a deploy agent leases for one environment: name it"))?;
    let e = crate::domain::release::tables::environment(&state.store.read()?, env)?
        .filter(|e| e.declared_by.is_some())
        .ok_or_else(|| Problem::not_found(format!("environment {env}")))?;
    if e.env.agent != req.worker {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "agent_not_chosen",
            format!(
                "environment {env} is deployed by agent {:?}, not {:?}: run the agent under that name (stella agent run --env {env}, without --name), or name this one in the release",
                e.env.agent, req.worker
            ),
        ));
    }
    Ok(site.to_owned())
}

fn leased(state: &AppState, c: &Committed) -> ApiResult<dto::LeaseResponse> {
    let txn = state.store.read()?;
    let mut leases = Vec::new();
    for entry in &c.entries {
        for g in entry.data["leases"].as_array().into_iter().flatten() {
            let id = g["jobId"].as_str().unwrap_or_default();
            let job =
                read::job(&txn, id)?.ok_or_else(|| Problem::internal(format!("leased job {id} is not readable")))?;
            leases.push(dto::Leased {
                job_id: job.id.clone(),
                token: g["token"].as_u64().unwrap_or(0),
                expires_at: rfc3339(g["expiresMs"].as_i64().unwrap_or(0)),
                attempt: g["attempt"].as_u64().unwrap_or(0) as u32,
                job_type: job.job_type.clone(),
                tenant: job.tenant.clone(),
                payload: job.payload.clone(),
            });
        }
    }
    Ok(dto::LeaseResponse { leases })
}

pub async fn lease_action(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path((job, action)): Path<(String, String)>,
    JsonBody(req): JsonBody<dto::LeaseAction>,
) -> ApiResult<Json<dto::Settled>> {
    let p = auth.require_either(Scope::Operate, Scope::Agent)?;
    if !p.has(Scope::Operate) {
        // A deploy agent's token settles only jobs bound to a deploy agent (its fencing token
        // then decides), never one the in-process executor or another worker runs.
        let bound = read::job(&state.store.read()?, &job)?
            .is_some_and(|j| j.tenant == crate::auth::SITE_TENANT && j.payload["agent"].is_string());
        if !bound {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "job {job} is not leased by a deploy agent: a deploy agent's token acts on its own leases only"
                ),
            ));
        }
    }
    let tenant = p.tenant.clone();
    let command = match action.as_str() {
        "heartbeat" => {
            let ttl_ms = req.ttl.as_deref().map(|t| ms("ttl", t)).transpose()?;
            QueueCommand::Heartbeat { tenant, job: job.clone(), token: req.token, ttl_ms }
        }
        "complete" => QueueCommand::Complete { tenant, job: job.clone(), token: req.token, result: req.result },
        "fail" => QueueCommand::Fail {
            tenant,
            job: job.clone(),
            token: req.token,
            error: req.error.unwrap_or_else(|| "failed without a message".to_owned()),
            error_code: req.error_code,
            retryable: req.retryable.unwrap_or(true),
        },
        other => return Err(Problem::not_found(format!("lease action {other:?} (heartbeat, complete, fail)"))),
    };
    let Some(next) = req.next else {
        submit(&state, p, Command::Queue(command)).await?;
        return Ok(Json(dto::Settled { job: job_dto(&state, p, &job)?, next: None }));
    };
    // The next lease, planned right after this one in the same commit, and only if it passed.
    if action == "heartbeat" {
        return Err(Problem::invalid("next", "a next lease comes with a complete or a fail, not a heartbeat"));
    }
    if next.wait.is_some() {
        return Err(Problem::invalid(
            "next.wait",
            "a lease taken with a completion does not wait: long-poll with POST /leases",
        ));
    }
    let (lease, _) = lease_command(&state, p, &next)?;
    let (_, leased_next) = submit_then(&state, p, Command::Queue(command), lease).await?;
    // The completion is committed: a next lease that could not be planned leases nothing and
    // must not turn the answer into an error (a retry of the completion would be refused).
    let next = match leased_next {
        Ok(c) => leased(&state, &c)?,
        Err(problem) => {
            tracing::warn!(job = %job, code = problem.body().code, detail = problem.detail(), "the next lease after a completion was refused; nothing was leased");
            dto::LeaseResponse { leases: vec![] }
        }
    };
    Ok(Json(dto::Settled { job: job_dto(&state, p, &job)?, next: Some(next) }))
}

/// Completions in one `POST /leases/complete`, like the jobs of one `POST /jobs`.
const COMPLETIONS_MAX: usize = 10_000;

/// `POST /leases/complete`: completes many leased jobs, each with its fencing token. Each is
/// its own command — one stale token fails that completion only — and all are submitted at
/// once, so they share the writer's group commits.
pub async fn complete_many(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(items): JsonBody<Vec<dto::Completion>>,
) -> ApiResult<Json<dto::Completions>> {
    let p = auth.require(Scope::Operate)?;
    if items.is_empty() || items.len() > COMPLETIONS_MAX {
        return Err(Problem::invalid("", format!("1 to {COMPLETIONS_MAX} completions, got {}", items.len())));
    }
    let outcomes = futures_util::future::join_all(items.into_iter().map(|c| {
        let command = QueueCommand::Complete {
            tenant: p.tenant.clone(),
            job: c.job_id.clone(),
            token: c.token,
            result: c.result,
        };
        let state = &state;
        async move {
            match submit(state, p, Command::Queue(command)).await {
                Ok(_) => dto::CompletionOutcome { job_id: c.job_id, status: 200, code: None, detail: None },
                Err(problem) => dto::CompletionOutcome {
                    job_id: c.job_id,
                    status: problem.status(),
                    code: Some(problem.body().code.to_owned()),
                    detail: Some(problem.detail().to_owned()),
                },
            }
        }
    }))
    .await;
    let completed = outcomes.iter().filter(|o| o.status == 200).count();
    Ok(Json(dto::Completions { completed, results: outcomes }))
}

fn rate_text(milli: u64) -> String {
    if milli.is_multiple_of(1000) { format!("{}/s", milli / 1000) } else { format!("{:.3}/s", milli as f64 / 1000.0) }
}

fn budget_dto(tenant: &str, b: &Budget) -> dto::BudgetDto {
    dto::BudgetDto {
        tenant: tenant.to_owned(),
        rate: b.rate_milli_per_s.map(rate_text),
        burst: b.burst,
        max_depth: b.max_depth,
        until: b.until_ms.map(rfc3339),
        set_by: b.set_by.clone(),
        restores: b.previous.as_ref().map(|p| Box::new(budget_dto(tenant, p))),
    }
}

/// Jobs examined for a tenant's own queue figures on a multi-tenant appliance.
const TENANT_SCAN: usize = 200_000;

pub async fn status(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<dto::QueueStatus>> {
    let p = auth.require(Scope::Read)?;
    let txn = state.store.read()?;
    let now = state.clock.now_ms();
    let mut out = dto::QueueStatus { types: vec![], depth: 0, leased: 0, dlq_depth: 0 };
    let mut queues = read::queues(&txn)?;
    if !state.sees_all_tenants(p) {
        // Only this tenant's job types, counted from its own jobs; only its own budgets.
        let tenant = p.tenant.clone().unwrap_or_default();
        let mine = read::tenant_queue_counts(&txn, &tenant, TENANT_SCAN)?;
        queues.retain(|(t, _)| mine.contains_key(t));
        for (t, q) in &mut queues {
            let c = &mine[t];
            (q.ready, q.delayed, q.leased, q.dead, q.succeeded) = (c.ready, c.delayed, c.leased, c.dead, c.succeeded);
            q.budgets.retain(|b, _| *b == tenant || b == "*");
        }
    }
    for (t, q) in queues {
        out.depth += q.ready + q.delayed;
        out.leased += q.leased;
        out.dlq_depth += q.dead;
        let oldest = read::oldest_ready_ms(&txn, &t, OLDEST_SCAN)?;
        out.types.push(dto::QueueTypeStatus {
            job_type: t,
            ready: q.ready,
            delayed: q.delayed,
            leased: q.leased,
            dead: q.dead,
            succeeded: q.succeeded,
            oldest_ready_age_seconds: oldest.map(|o| ((now - o).max(0) / 1000) as u64),
            paused: q.paused,
            paused_by: q.paused_by,
            budgets: q.budgets.iter().map(|(tenant, b)| budget_dto(tenant, b)).collect(),
        });
    }
    Ok(Json(out))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseQuery {
    /// Pause a type the appliance does not know yet.
    #[serde(default)]
    create: bool,
}

pub async fn pause_resume(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path((job_type, action)): Path<(String, String)>,
    QueryArgs(q): QueryArgs<PauseQuery>,
) -> ApiResult<Json<dto::QueueStatus>> {
    let p = auth.require(Scope::Admin)?;
    if !valid_type(&job_type) {
        return Err(Problem::invalid("type", format!("job type {job_type:?} is not valid")));
    }
    let command = match action.as_str() {
        "pause" => QueueCommand::Pause { job_type, create: q.create },
        "resume" => QueueCommand::Resume { job_type },
        other => return Err(Problem::not_found(format!("queue action {other:?} (pause, resume)"))),
    };
    submit(&state, p, Command::Queue(command)).await?;
    status(State(state), auth).await
}

/// `50/s`, `600/m`, `10/h` → thousandths of a lease per second.
fn parse_rate(text: &str) -> Result<u64, Problem> {
    let bad = || Problem::invalid("rate", format!("rate {text:?}: expected a whole number per s, m or h, e.g. 50/s"));
    let (n, unit) = text.split_once('/').ok_or_else(bad)?;
    let n: u64 = n.parse().map_err(|_| bad())?;
    let per_s = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        _ => return Err(bad()),
    };
    if n == 0 || n > 1_000_000 {
        return Err(bad());
    }
    Ok(n * 1000 / per_s)
}

pub async fn set_budget(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(job_type): Path<String>,
    JsonBody(req): JsonBody<dto::BudgetSet>,
) -> ApiResult<Json<dto::QueueStatus>> {
    let p = auth.require(Scope::Admin)?;
    if !valid_type(&job_type) {
        return Err(Problem::invalid("type", format!("job type {job_type:?} is not valid")));
    }
    let tenant = req.tenant.clone().unwrap_or_else(|| "*".to_owned());
    if tenant != "*" && !state.config.tenants.allowed.contains(&tenant) {
        return Err(Problem::invalid("tenant", format!("tenant {tenant:?} is not in tenants.allowed")));
    }
    if req.rate.is_none() && req.max_depth.is_none() {
        return Err(Problem::invalid("rate", "a budget needs a rate, a maxDepth or both"));
    }
    let budget = Budget {
        rate_milli_per_s: req.rate.as_deref().map(parse_rate).transpose()?,
        burst: req.burst,
        max_depth: req.max_depth,
        until_ms: None,
        set_by: p.actor.clone(),
        previous: None,
    };
    let for_ms = req.for_.as_deref().map(|f| ms("for", f)).transpose()?;
    submit(&state, p, Command::Queue(QueueCommand::SetBudget { job_type, tenant, budget, for_ms })).await?;
    status(State(state), auth).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant: Option<String>,
}

pub async fn clear_budget(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(job_type): Path<String>,
    QueryArgs(q): QueryArgs<TenantQuery>,
) -> ApiResult<Json<dto::QueueStatus>> {
    let p = auth.require(Scope::Admin)?;
    let tenant = q.tenant.unwrap_or_else(|| "*".to_owned());
    submit(&state, p, Command::Queue(QueueCommand::ClearBudget { job_type, tenant })).await?;
    status(State(state), auth).await
}

pub async fn dlq_list(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<dto::JobList>> {
    let p = auth.require(Scope::Read)?;
    let txn = state.store.read()?;
    let jobs = read::dlq(&txn, p.tenant.as_deref(), LIST_MAX)?;
    Ok(Json(dto::JobList { jobs: jobs.iter().map(dto::Job::from_record).collect(), refused: vec![] }))
}

pub async fn dlq_show(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<dto::Job>> {
    let p = auth.require(Scope::Read)?;
    let job = job_dto(&state, p, &id)?;
    if job.state != "dead" {
        return Err(Problem::not_found(format!("dead-letter entry {id}")));
    }
    Ok(Json(job))
}

pub async fn dlq_replay(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::DlqReplay>,
) -> ApiResult<Json<dto::JobList>> {
    let p = auth.require(Scope::Operate)?;
    let selector = match (req.ids, req.job_type, req.all.unwrap_or(false)) {
        (Some(ids), None, false) if !ids.is_empty() => ReplaySelector::Ids(ids),
        (None, Some(t), false) => ReplaySelector::Type(t),
        (None, None, true) => ReplaySelector::All,
        _ => return Err(Problem::invalid("ids", "name exactly one of ids, type or all")),
    };
    let c = submit(&state, p, Command::Queue(QueueCommand::DlqReplay { tenant: p.tenant.clone(), selector })).await?;
    // A plain job comes back as a new job (`dlq.replayed`); a DAG step's as its step's new job.
    let mut new: Vec<dto::Job> = c
        .entries
        .iter()
        .filter_map(|e| match QueueEvent::of(e) {
            Some(Ok(QueueEvent::DlqReplayed(r))) => Some(r.job.id),
            Some(Ok(QueueEvent::Enqueued(j))) => Some(j.id),
            _ => None,
        })
        .map(|id| job_dto(&state, p, &id))
        .collect::<Result<_, _>>()?;
    // A step's new job names the dead job it replaces.
    for e in &c.entries {
        if let Some(Ok(QueueEvent::DlqResolved(r))) = QueueEvent::of(e)
            && let Some(j) = new.iter_mut().find(|j| r.replaced_by.as_deref() == Some(j.id.as_str()))
        {
            j.replay_of = Some(r.job_id);
        }
    }
    let refused = c.note.as_ref().and_then(|n| serde_json::from_value(n["refused"].clone()).ok()).unwrap_or_default();
    Ok(Json(dto::JobList { jobs: new, refused }))
}

pub async fn dlq_purge(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::DlqPurge>,
) -> ApiResult<Json<dto::Released>> {
    let p = auth.require(Scope::Admin)?;
    let command =
        QueueCommand::DlqPurge { tenant: p.tenant.clone(), ids: req.ids.clone(), snapshot_sha256: req.snapshot_sha256 };
    submit(&state, p, Command::Queue(command)).await?;
    Ok(Json(dto::Released { released: req.ids }))
}

pub async fn workers(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    QueryArgs(q): QueryArgs<EnvQuery>,
) -> ApiResult<Json<dto::WorkerList>> {
    let p = auth.require(Scope::Read)?;
    let txn = state.store.read()?;
    let now = state.clock.now_ms();
    let leases = read::leases_by_worker(&txn, LEASE_SCAN)?;
    let workers = read::workers(&txn, LIST_MAX)?
        .into_iter()
        .filter(|w| p.tenant.as_ref().is_none_or(|t| *t == w.tenant))
        .filter(|w| q.env.as_ref().is_none_or(|e| w.env.as_ref() == Some(e)))
        .map(|w| dto::Worker {
            leases: leases.get(&w.id).map_or(0, |j| j.len() as u64),
            first_seen: rfc3339(w.first_seen_ms),
            last_seen: rfc3339(w.last_seen_ms),
            last_seen_seconds_ago: ((now - w.last_seen_ms).max(0) / 1000) as u64,
            id: w.id,
            tenant: w.tenant,
            types: w.types,
            env: w.env,
        })
        .collect();
    Ok(Json(dto::WorkerList { workers }))
}
