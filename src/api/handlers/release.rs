//! Release routes (DESIGN.md §9): environments and their status, the artifact registry,
//! deployments, rollbacks. Environments and artifacts belong to the site, not to a tenant: a
//! token of one tenant on an appliance with several is refused.

use super::{releases, site, site_principal};
use crate::api::dto;
use crate::api::extract::{Auth, JsonBody, QueryArgs};
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::app::release::{check_artifact, last_known_good};
use crate::auth::Scope;
use crate::domain::release::tables::{self as t, DeploymentRecord, EnvRecord};
use crate::domain::release::{DeploymentKind, DeploymentStatus};
use axum::Json;
use axum::extract::{Path, State};
use std::sync::Arc;

/// Deployments answered by one listing at most.
const LIST_MAX: usize = 1_000;

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentQuery {
    pub env: Option<String>,
    pub last: Option<usize>,
    pub status: Option<String>,
}

pub async fn deployments(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    QueryArgs(q): QueryArgs<DeploymentQuery>,
) -> ApiResult<Json<dto::DeploymentList>> {
    site(&state, &auth, Scope::Read)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(DeploymentStatus::parse(s).ok_or_else(|| {
            Problem::invalid("status", format!("status {s:?}: expected pending, in_progress, success or failed"))
        })?),
    };
    let txn = state.store.read()?;
    let deployments = t::deployments(&txn, q.env.as_deref())?
        .iter()
        .filter(|d| status.is_none_or(|s| d.status == s))
        .take(q.last.unwrap_or(LIST_MAX).min(LIST_MAX))
        .map(dto::Deployment::from_record)
        .collect();
    Ok(Json(dto::DeploymentList { deployments }))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvOnly {
    pub env: String,
}

/// The environment's current deployment: its last success.
pub async fn current(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    QueryArgs(q): QueryArgs<EnvOnly>,
) -> ApiResult<Json<dto::Deployment>> {
    site(&state, &auth, Scope::Read)?;
    let txn = state.store.read()?;
    let env = t::environment(&txn, &q.env)?.ok_or_else(|| Problem::not_found(format!("environment {}", q.env)))?;
    let d = env
        .current
        .as_deref()
        .map(|id| t::deployment(&txn, id))
        .transpose()?
        .flatten()
        .ok_or_else(|| Problem::not_found(format!("a successful deployment of environment {}", q.env)))?;
    Ok(Json(dto::Deployment::from_record(&d)))
}

pub async fn deployment(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<dto::Deployment>> {
    site(&state, &auth, Scope::Read)?;
    let d = t::deployment(&state.store.read()?, &id)?.ok_or_else(|| Problem::not_found(format!("deployment {id}")))?;
    Ok(Json(dto::Deployment::from_record(&d)))
}

pub async fn deploy(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::DeployRequest>,
) -> ApiResult<Json<dto::Deployment>> {
    let p = site(&state, &auth, Scope::Operate)?;
    if req.force && !p.scopes.contains(&Scope::Admin) {
        return Err(Problem::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "deploy --force breaks a lock: it needs the orchestrator:admin scope",
        ));
    }
    if crate::domain::release::split_artifact(&req.artifact).is_none() {
        return Err(Problem::invalid("artifact", format!("artifact {:?}: expected NAME@VERSION", req.artifact)));
    }
    let d = releases(&state, &p)?
        .deploy(
            &req.env,
            &req.artifact,
            DeploymentKind::Direct,
            crate::app::release::Forcing { lock: req.force, path: false },
            req.reason,
        )
        .await?;
    Ok(Json(dto::Deployment::from_record(&d)))
}

pub async fn rollback(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::RollbackRequest>,
) -> ApiResult<Json<dto::Deployment>> {
    let p = site(&state, &auth, Scope::Operate)?;
    if let Some(to) = &req.to
        && crate::domain::release::split_artifact(to).is_none()
    {
        return Err(Problem::invalid("to", format!("to {to:?}: expected NAME@VERSION")));
    }
    let d = releases(&state, &p)?.rollback(&req.env, req.to.as_deref(), req.reason).await?;
    Ok(Json(dto::Deployment::from_record(&d)))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailQuery {
    #[serde(default)]
    pub detailed: bool,
}

pub async fn environments(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<dto::EnvList>> {
    site(&state, &auth, Scope::Read)?;
    let envs = t::environments(&state.store.read()?)?;
    let mut out = Vec::new();
    for e in envs.iter().filter(|e| e.declared_by.is_some()) {
        out.push(status_of(&state, e, false).await?);
    }
    Ok(Json(dto::EnvList { environments: out }))
}

/// `POST /environments` (dev mode only): environments declared from a local `release.toml`,
/// recorded unsigned; a signed `release` bundle is the only way in otherwise.
pub async fn declare(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::EnvDeclare>,
) -> ApiResult<(axum::http::StatusCode, Json<dto::EnvList>)> {
    let p = site(&state, &auth, Scope::Admin)?;
    if !state.dev {
        return Err(Problem::new(
            axum::http::StatusCode::FORBIDDEN,
            "signed_bundle_required",
            "outside dev mode environments are declared only by a signed release bundle (stella bundle build DIR --kind release …; stella bundle import FILE); this daemon was not started with --dev",
        ));
    }
    if req.release.len() > 1024 * 1024 {
        return Err(Problem::invalid("release", "release.toml larger than 1 MiB"));
    }
    let release =
        crate::app::import::release_contents(&state.store, &req.release).map_err(|e| Problem::invalid("release", e))?;
    let (environments, dags) = (release.environments, release.dags);
    let source = format!("{} (dev mode)", req.source.as_deref().unwrap_or(crate::domain::release::spec::FILE));
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(req.release.as_bytes()));
    let command = crate::domain::release::ReleaseCommand::DeclareUnsigned { source, digest, environments, dags };
    crate::api::handlers::submit(&state, &p, crate::machine::Command::Release(command)).await?;
    let envs = t::environments(&state.store.read()?)?;
    let mut out = Vec::new();
    for e in envs.iter().filter(|e| e.declared_by.is_some()) {
        out.push(status_of(&state, e, false).await?);
    }
    Ok((axum::http::StatusCode::CREATED, Json(dto::EnvList { environments: out })))
}

pub async fn environment(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(name): Path<String>,
    QueryArgs(q): QueryArgs<DetailQuery>,
) -> ApiResult<Json<dto::EnvStatus>> {
    // Its deploy agent reads it too (its agent name and plugin).
    site_principal(&state, auth.require_either(Scope::Read, Scope::Agent)?)?;
    let e = t::environment(&state.store.read()?, &name)?
        .ok_or_else(|| Problem::not_found(format!("environment {name}")))?;
    Ok(Json(status_of(&state, &e, q.detailed).await?))
}

/// An environment's status: its deployments (current, last known good, last, in flight), the
/// health its last deployment's health step reported, its lock and freeze windows.
async fn status_of(state: &Arc<AppState>, e: &EnvRecord, detailed: bool) -> ApiResult<dto::EnvStatus> {
    let now = state.clock.now_ms();
    let lkg = lkg_of(state, e).await?;
    let txn = state.store.read()?;
    let get = |id: &Option<String>| -> Result<Option<DeploymentRecord>, crate::kernel::StoreError> {
        Ok(id.as_deref().map(|id| t::deployment(&txn, id)).transpose()?.flatten())
    };
    let name = &e.env.name;
    let recent = t::deployments(&txn, Some(name))?;
    let last = recent.first().cloned();
    let health = health_of(&txn, last.as_ref())?;
    let lock = crate::machine::read::locks(&txn, None, crate::domain::locks::LOCK_SCAN_MAX)?
        .iter()
        .find(|l| l.resource == format!("env:{name}"))
        .map(|l| dto::Lock::from_record(l, now));
    let window = |w: &crate::domain::release::spec::Window| dto::FreezeWindow {
        name: w.name.clone(),
        from: crate::clock::rfc3339(w.from_ms),
        until: crate::clock::rfc3339(w.until_ms),
        reason: w.reason.clone(),
        active: w.from_ms <= now && now < w.until_ms,
    };
    let deployment = |d: &DeploymentRecord| dto::Deployment::from_record(d);
    Ok(dto::EnvStatus {
        name: name.clone(),
        order: e.env.order,
        promotes_from: e.env.promotes_from.clone(),
        description: e.env.description.clone(),
        agent: e.env.agent.clone(),
        plugin: e.env.plugin.clone(),
        target: crate::app::release::target_of(&state.lib, e),
        declared_by: e.declared_by.clone(),
        baseline_version: e.baseline_version,
        current: get(&e.current)?.as_ref().map(deployment),
        last_known_good: lkg.deployment.as_ref().map(deployment),
        last_known_good_note: lkg.note,
        last_deployment: last.as_ref().map(deployment),
        in_flight: get(&e.in_flight)?.as_ref().map(deployment),
        health,
        lock,
        frozen: crate::domain::release::spec::frozen(&e.env.freeze, now).map(window),
        freeze: e.env.freeze.iter().map(window).collect(),
        gates: e.env.gates.clone(),
        baseline: detailed.then(|| e.env.baseline.clone()),
        recent: detailed.then(|| recent.iter().take(10).map(deployment).collect()),
    })
}

/// The environment's last known good now (its artifacts checked on disk, off the runtime).
async fn lkg_of(state: &Arc<AppState>, e: &EnvRecord) -> ApiResult<crate::app::release::Lkg> {
    let (st, e, now) = (state.clone(), e.clone(), state.clock.now_ms());
    let lkg = tokio::task::spawn_blocking(move || -> Result<_, crate::kernel::StoreError> {
        let txn = st.store.read()?;
        last_known_good(&st.lib, &st.trust_dir, &e, |i| t::deployment(&txn, i), |a| t::artifact(&txn, a), now)
    })
    .await
    .map_err(|e| Problem::internal(e.to_string()))??;
    Ok(lkg)
}

/// What the last deployment's health step says about the environment.
fn health_of(txn: &redb::ReadTransaction, last: Option<&DeploymentRecord>) -> ApiResult<dto::EnvHealth> {
    let unknown = |detail: &str| dto::EnvHealth {
        status: "unknown".into(),
        detail: detail.to_owned(),
        checked_at: None,
        deployment: last.map(|d| d.id.clone()),
    };
    let Some(d) = last else { return Ok(unknown("never deployed")) };
    let steps = crate::machine::read::steps(txn, &d.run_id)?;
    let Some(h) = steps.iter().find(|s| s.name == "health") else { return Ok(unknown("no health step")) };
    let at = h.finished_ms.map(crate::clock::rfc3339);
    use crate::domain::runs::tables::StepState;
    Ok(match h.state {
        StepState::Succeeded => dto::EnvHealth {
            status: "healthy".into(),
            detail: format!("the health check of {} ({}) passed", d.id, d.artifact),
            checked_at: at,
            deployment: Some(d.id.clone()),
        },
        StepState::Failed => dto::EnvHealth {
            status: "failing".into(),
            detail: h.error.clone().unwrap_or_else(|| "the health check failed".into()),
            checked_at: at,
            deployment: Some(d.id.clone()),
        },
        other => unknown(&format!("the health check of {} is {other:?}", d.id).to_lowercase()),
    })
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactQuery {
    pub env: Option<String>,
    pub filter: Option<String>,
}

/// Artifacts listed at most.
const ARTIFACTS_MAX: usize = 10_000;

pub async fn artifacts(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    QueryArgs(q): QueryArgs<ArtifactQuery>,
) -> ApiResult<Json<dto::ArtifactList>> {
    site(&state, &auth, Scope::Read)?;
    let txn = state.store.read()?;
    let usage = usage(&txn)?;
    let artifacts = t::artifacts(&txn, ARTIFACTS_MAX)?
        .iter()
        .filter(|a| q.filter.as_deref().is_none_or(|f| a.key().contains(f)))
        .map(|a| artifact_dto(a, &usage))
        .filter(|a| q.env.as_deref().is_none_or(|e| a.deployed_in.iter().any(|d| d == e) || ever_in(&txn, &a.id, e)))
        .collect();
    Ok(Json(dto::ArtifactList { artifacts }))
}

/// Whether artifact `id` was ever deployed successfully to `env`.
fn ever_in(txn: &redb::ReadTransaction, id: &str, env: &str) -> bool {
    t::deployments(txn, Some(env))
        .is_ok_and(|ds| ds.iter().any(|d| d.artifact == id && d.status == DeploymentStatus::Success))
}

/// Per artifact: the environments it runs in now.
fn usage(txn: &redb::ReadTransaction) -> ApiResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in t::environments(txn)? {
        if let Some(d) = e.current.as_deref().map(|id| t::deployment(txn, id)).transpose()?.flatten() {
            out.push((d.artifact, e.env.name.clone()));
        }
    }
    Ok(out)
}

fn artifact_dto(a: &t::ArtifactRecord, usage: &[(String, String)]) -> dto::Artifact {
    let key = a.key();
    dto::Artifact {
        id: key.clone(),
        name: a.name.clone(),
        version: a.version.clone(),
        digest: a.digest.clone(),
        size: a.size,
        files: a.files.clone(),
        signer: a.signer.clone(),
        fingerprint: a.fingerprint.clone(),
        imported_by: a.imported_by.clone(),
        imported_at: crate::clock::rfc3339(a.imported_ms),
        backup: a.backup.clone(),
        deleted: a.deleted.clone(),
        restored_at: a.restored_ms.map(crate::clock::rfc3339),
        deployed_in: usage.iter().filter(|(k, _)| *k == key).map(|(_, e)| e.clone()).collect(),
        last_known_good_in: vec![],
        check: None,
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckQuery {
    #[serde(default)]
    pub check: bool,
}

pub async fn artifact(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
    QueryArgs(q): QueryArgs<CheckQuery>,
) -> ApiResult<Json<dto::Artifact>> {
    site(&state, &auth, Scope::Read)?;
    let (rec, usage, lkg_in) = {
        let txn = state.store.read()?;
        let rec =
            t::artifact(&txn, &id)?.ok_or_else(|| Problem::not_found(format!("artifact {id} in the registry")))?;
        (rec, usage(&txn)?, Vec::<String>::new())
    };
    let mut out = artifact_dto(&rec, &usage);
    // Where it is the last known good (each environment's, checked on disk).
    let mut lkg_in = lkg_in;
    for e in t::environments(&state.store.read()?)? {
        if lkg_of(&state, &e).await?.deployment.is_some_and(|d| d.artifact == id) {
            lkg_in.push(e.env.name.clone());
        }
    }
    out.last_known_good_in = lkg_in;
    if q.check {
        let (st, now) = (state.clone(), state.clock.now_ms());
        let c = tokio::task::spawn_blocking(move || check_artifact(&st.lib, &st.trust_dir, &rec, now))
            .await
            .map_err(|e| Problem::internal(e.to_string()))?;
        out.check = Some(dto::ArtifactCheck {
            ok: c.ok(),
            present: c.present,
            verified: c.verified,
            problem: c.problem,
            fix: c.fix,
            checked_at: crate::clock::rfc3339(now),
        });
    }
    Ok(Json(out))
}

/// `orch health-check`, `orch connectivity`, `orch credentials verify`: the environment's
/// probe through its agent.
pub async fn probe(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(env): Path<String>,
) -> ApiResult<Json<crate::app::release::ProbeReport>> {
    let p = site(&state, &auth, Scope::Operate)?;
    Ok(Json(releases(&state, &p)?.probe(&env).await?))
}

/// `orch env config diff`: what the agent observes against the baseline.
pub async fn config_diff(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(env): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let p = site(&state, &auth, Scope::Operate)?;
    let rec =
        t::environment(&state.store.read()?, &env)?.ok_or_else(|| Problem::not_found(format!("environment {env}")))?;
    if rec.current.is_none() {
        return Err(Problem::new(
            axum::http::StatusCode::CONFLICT,
            "never_deployed",
            format!(
                "environment {env} has no successful deployment: there is no configuration to compare yet — deploy first: stella deploy --env {env} --artifact NAME@VERSION"
            ),
        ));
    }
    let report = releases(&state, &p)?.probe(&env).await?;
    if report.observe.status != "ok" {
        return Err(Problem::new(
            axum::http::StatusCode::CONFLICT,
            "observe_failed",
            format!(
                "the agent could not observe environment {env}'s configuration ({}): {}",
                report.observe.status,
                report.observe.detail.clone().unwrap_or_default()
            ),
        ));
    }
    let observed = report.observe.outputs["config"].clone();
    let baseline = rec.env.baseline.clone();
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let drift = crate::app::release::drift(&baseline, &observed);
    let unified = crate::app::release::unified_diff(
        &format!("baseline (version {})", rec.baseline_version),
        &pretty(&baseline),
        &format!("observed ({} by {})", env, report.agent.clone().unwrap_or_default()),
        &pretty(&observed),
    );
    Ok(Json(serde_json::json!({
        "env": env,
        "drifted": !drift.is_empty(),
        "baselineVersion": rec.baseline_version,
        "baseline": baseline,
        "observed": observed,
        "drift": drift,
        "unifiedDiff": unified,
        "runId": report.run_id,
        "agent": report.agent,
    })))
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResetBody {
    pub to_baseline: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `orch env reset --to-baseline`: a deployment of kind `reset`.
pub async fn reset(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(env): Path<String>,
    JsonBody(body): JsonBody<ResetBody>,
) -> ApiResult<Json<dto::Deployment>> {
    let p = site(&state, &auth, Scope::Operate)?;
    if !body.to_baseline {
        return Err(Problem::invalid("toBaseline", "a reset goes to the baseline: toBaseline must be true"));
    }
    let d = releases(&state, &p)?.reset(&env, body.reason).await?;
    Ok(Json(dto::Deployment::from_record(&d)))
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepairBody {
    #[serde(default)]
    pub reason: Option<String>,
}

/// `orch repair --deployment`: settle an unfinished deployment from its agent's report.
pub async fn repair(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RepairBody>,
) -> ApiResult<Json<dto::Deployment>> {
    let p = site(&state, &auth, Scope::Admin)?;
    let (d, _) = releases(&state, &p)?.repair(&id, body.reason).await?;
    Ok(Json(dto::Deployment::from_record(&d)))
}

/// `registry retention show`: the policy and each artifact's verdict.
pub async fn retention(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<serde_json::Value>> {
    site(&state, &auth, Scope::Read)?;
    let (min, verdicts) = crate::app::release::retention(&state.store.read()?, &state.config)?;
    Ok(Json(serde_json::json!({
        "policy": {
            "minVersions": min,
            "never": ["what an environment runs now", "an environment's last known good", "an unfinished deployment's artifact"],
        },
        "artifacts": verdicts,
    })))
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReasonBody {
    pub reason: String,
}

/// `registry delete --artifact A --reason R`: refused (409 `artifact_retained`, naming why)
/// when retention keeps it.
pub async fn delete_artifact(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReasonBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let p = site(&state, &auth, Scope::Admin)?;
    let deleted = releases(&state, &p)?.delete(&id, &body.reason).await?;
    Ok(Json(serde_json::json!({ "artifact": id, "deleted": deleted })))
}

/// `registry retention apply`: deletes every artifact retention does not keep.
pub async fn apply_retention(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(body): JsonBody<ReasonBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let p = site(&state, &auth, Scope::Admin)?;
    let (_, verdicts) = crate::app::release::retention(&state.store.read()?, &state.config)?;
    let r = releases(&state, &p)?;
    let mut deleted = Vec::new();
    for v in verdicts.iter().filter(|v| !v.keep) {
        // Each deletion is checked again by the writer against the state it meets.
        match r.delete(&v.artifact, &body.reason).await {
            Ok(true) => deleted.push(v.artifact.clone()),
            Ok(false) => {}
            Err(crate::app::release::ReleaseError::Command(crate::kernel::CommandError::Conflict { .. })) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(serde_json::json!({ "deleted": deleted })))
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreBody {
    /// Only `backup` (the `registry.backup_dir` copy).
    pub from: String,
}

/// `registry restore --artifact A --from backup`.
pub async fn restore_artifact(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RestoreBody>,
) -> ApiResult<Json<dto::Artifact>> {
    let p = site(&state, &auth, Scope::Admin)?;
    if body.from != "backup" {
        return Err(Problem::invalid(
            "from",
            format!("from {:?}: the only source is backup (registry.backup_dir)", body.from),
        ));
    }
    let rec = releases(&state, &p)?.restore(&id, state.config.registry.backup_dir.as_deref()).await?;
    let usage = usage(&state.store.read()?)?;
    Ok(Json(artifact_dto(&rec, &usage)))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoctorQuery {
    pub check: Option<String>,
}

/// `GET /admin/doctor[?check=ID]`: the checks built so far (the releases' rollback health,
/// checkpoints, job health: stuck promotions); another id answers 501 until it exists.
pub async fn doctor(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    QueryArgs(q): QueryArgs<DoctorQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    site(&state, &auth, Scope::Read)?;
    // Debt: a handler reading another's view (promotions' job health); to move into `app/`
    // with the run and promotion views it composes.
    use super::promotions::JOB_HEALTH;
    use crate::app::doctor::CHECKPOINTS;
    use crate::app::release::ROLLBACK_HEALTH;
    let known = [ROLLBACK_HEALTH, CHECKPOINTS, JOB_HEALTH];
    if let Some(id) = q.check.as_deref().filter(|c| !known.contains(c)) {
        return Err(Problem::not_implemented(&format!("doctor check {id} (only {} exist so far)", known.join(", "))));
    }
    let checks: Vec<&'static str> = known.into_iter().filter(|c| q.check.as_deref().is_none_or(|q| q == *c)).collect();
    let (st, now, run) = (state.clone(), state.clock.now_ms(), checks.clone());
    let findings = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for check in run {
            out.extend(match check {
                ROLLBACK_HEALTH => {
                    crate::app::release::rollback_health(&st.store, &st.config, &st.lib, &st.trust_dir, now)?
                }
                JOB_HEALTH => super::promotions::job_health(&st)?,
                _ => crate::app::doctor::checkpoints(&st.store)?,
            });
        }
        Ok::<_, Problem>(out)
    })
    .await
    .map_err(|e| Problem::internal(e.to_string()))??;
    let worst = ["error", "warn", "ok"].into_iter().find(|l| findings.iter().any(|f| f.level == *l)).unwrap_or("ok");
    Ok(Json(serde_json::json!({ "worst": worst, "checks": checks, "findings": findings })))
}

/// `orch agent status --env E`: the workers that could run the environment's deployments
/// (they run its plugin), each with its last heartbeat, leases, and why it would not be chosen.
pub async fn agents(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(env): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    site(&state, &auth, Scope::Read)?;
    let txn = state.store.read()?;
    let e = t::environment(&txn, &env)?.ok_or_else(|| Problem::not_found(format!("environment {env}")))?;
    let now = state.clock.now_ms();
    let ttl = state.config.queue.lease_ttl_ms as i64;
    let leases = crate::machine::read::leases_by_worker(&txn, 100_000)?;
    let local = e.env.agent == crate::domain::release::spec::LOCAL_AGENT;
    let down = crate::app::release::agent_down(&txn, &e, &state.config, now)?;
    let agents: Vec<serde_json::Value> = crate::machine::read::workers(&txn, 10_000)?
        .into_iter()
        .filter(|w| w.types.contains(&e.env.plugin) || w.env.as_deref() == Some(env.as_str()))
        .map(|w| {
            let in_process = w.id.starts_with(crate::domain::queue::LOCAL_WORKER);
            let age = (now - w.last_seen_ms).max(0);
            let held = leases.get(&w.id).cloned().unwrap_or_default();
            let why_not = if !in_process && local {
                Some(format!("environment {env} is deployed by the in-process agent, not by {}", w.id))
            } else if in_process && !local {
                Some(format!("environment {env} is deployed by agent {}", e.env.agent))
            } else if in_process && !state.config.exec.enabled {
                Some("the in-process agent is off (exec.enabled = false)".to_owned())
            } else if in_process && age > ttl {
                Some(format!("not seen for {}s, longer than a lease ({}s): it is down", age / 1000, ttl / 1000))
            } else if in_process {
                None
            } else if w.id != e.env.agent {
                Some(format!("environment {env} is deployed by agent {}, not by {}", e.env.agent, w.id))
            } else if w.version.is_none() || w.env.as_deref() != Some(env.as_str()) {
                Some(format!(
                    "{} leases as a worker, not as the deploy agent of {env} (stella agent run --env {env})",
                    w.id
                ))
            } else {
                down.clone()
            };
            serde_json::json!({
                "id": w.id,
                "kind": if in_process { "in-process" } else { "remote" },
                "version": if in_process { Some(env!("CARGO_PKG_VERSION").to_owned()) } else { w.version.clone() },
                "env": w.env,
                "lastHeartbeat": crate::clock::rfc3339(w.last_seen_ms),
                "lastSeenSecondsAgo": age / 1000,
                "leases": held.len(),
                "currentLeases": held,
                "chosen": why_not.is_none(),
                "whyNot": why_not,
            })
        })
        .collect();
    let note = if agents.iter().any(|a| a["chosen"] == true) {
        None
    } else if local && !state.config.exec.enabled {
        Some("the in-process agent is off: set exec.enabled = true in orchestrator.toml and restart".to_owned())
    } else if local {
        Some("the in-process agent has not leased yet: it does on the first deployment".to_owned())
    } else {
        down.or_else(|| Some(format!("agent {} has not been seen (stella agent run --env {env})", e.env.agent)))
    };
    Ok(Json(serde_json::json!({
        "env": env,
        "agent": e.env.agent,
        "plugin": e.env.plugin,
        "agents": agents,
        "note": note,
    })))
}
