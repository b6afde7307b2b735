//! Planning release commands, and [`follow`]: a deployment's status follows its run, in the
//! transaction of the run's own entries, so "run failed, deployment in progress" cannot exist.

use super::tables::{
    ARTIFACTS, ArtifactRecord, DEPLOYMENT_RUNS, DEPLOYMENTS, DeploymentRecord, ENVIRONMENTS, EnvRecord,
};
use super::{
    DeployRequest, DeploymentCreated, DeploymentFailed, DeploymentRef, DeploymentStarted, ProbeRequest, ReleaseCommand,
    ReleaseEvent, deployment_id, spec,
};
use crate::domain::live::Effects;
use crate::domain::locks::{ForceTarget, LockCommand};
use crate::domain::runs::RunEvent;
use crate::kernel::counters::COUNTERS;
use crate::kernel::event::Event;
use crate::kernel::ledger::Draft;
use crate::kernel::store::rw;
use crate::kernel::{CommandError, PlanCtx, storage};
use redb::{ReadableTable, WriteTransaction};
use serde_json::json;

pub fn plan(cmd: &ReleaseCommand, txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<Effects, CommandError> {
    match cmd {
        ReleaseCommand::RegisterArtifact(a) => {
            let key = format!("{}@{}", a.name, a.version);
            let table = txn.open_table(ARTIFACTS).map_err(storage)?;
            if let Some(cur) = rw::get::<ArtifactRecord>(&table, "artifacts", &key).map_err(storage)? {
                if cur.digest == a.digest {
                    return Ok(Effects { note: Some(json!({ "unchanged": true })), ..Effects::default() });
                }
                return Err(CommandError::conflict(
                    "version_reused",
                    format!("artifact {key} is in the registry with other content: versions are never reused"),
                ));
            }
            let event = ReleaseEvent::ArtifactImported(a.clone());
            Ok(vec![event.draft("", vec![key, a.digest.clone()])].into())
        }
        ReleaseCommand::Deploy(req) => deploy(txn, ctx, req),
        ReleaseCommand::Probe(p) => probe(txn, ctx, p),
        ReleaseCommand::Settle { id, succeeded, reason } => settle(txn, ctx, id, *succeeded, reason),
        ReleaseCommand::Abort { promotion, reason } => abort(txn, ctx, promotion, reason),
        ReleaseCommand::DeleteArtifact { key, reason } => delete_artifact(txn, ctx, key, reason),
        ReleaseCommand::RestoreArtifact(r) => {
            let a = artifact_record(txn, &r.artifact)?;
            if a.digest != r.digest {
                return Err(CommandError::conflict(
                    "artifact_changed",
                    format!(
                        "artifact {} is recorded with digest {}, the backup holds {}",
                        r.artifact, a.digest, r.digest
                    ),
                ));
            }
            let event = ReleaseEvent::ArtifactRestored(r.clone());
            Ok(vec![event.draft("", vec![r.artifact.clone(), r.digest.clone()])].into())
        }
        ReleaseCommand::DeclareUnsigned { source, digest, environments, dags } => {
            let mut drafts = vec![declared(source, UNSIGNED, digest, environments)];
            for (dag, spec) in dags {
                drafts.extend(crate::domain::runs::plan::register(txn, dag, spec, true)?.drafts);
            }
            Ok(drafts.into())
        }
    }
}

/// The `release.declared` entry of a release's environments (from bundle `bundle` at
/// `version`, or a dev-mode file), naming the bundle and every environment.
pub fn declared(bundle: &str, version: &str, digest: &str, environments: &[super::Environment]) -> Draft {
    let event = ReleaseEvent::Declared(crate::domain::release::ReleaseDeclared {
        bundle: bundle.to_owned(),
        version: version.to_owned(),
        digest: digest.to_owned(),
        environments: environments.to_vec(),
    });
    let mut subjects = vec![bundle.to_owned()];
    subjects.extend(environments.iter().map(|e| e.name.clone()));
    event.draft("", subjects)
}

/// The version an unsigned (dev mode) declaration of environments is recorded with.
pub const UNSIGNED: &str = "unsigned";

fn env_record(txn: &WriteTransaction, env: &str) -> Result<EnvRecord, CommandError> {
    let table = txn.open_table(ENVIRONMENTS).map_err(storage)?;
    rw::get::<EnvRecord>(&table, "environments", env)
        .map_err(storage)?
        .filter(|e| e.declared_by.is_some())
        .ok_or_else(|| CommandError::NotFound { what: format!("environment {env}") })
}

fn deployment(txn: &WriteTransaction, id: &str) -> Result<Option<DeploymentRecord>, CommandError> {
    let table = txn.open_table(DEPLOYMENTS).map_err(storage)?;
    rw::get::<DeploymentRecord>(&table, "deployments", id).map_err(storage)
}

/// The environment a generated DAG's name says it belongs to (`deploy-`, `promote-`, `probe-`).
fn owner_env(dag: &str) -> Option<&str> {
    ["deploy-", "promote-", "probe-"].into_iter().find_map(|p| dag.strip_prefix(p))
}

/// Refuses a run of an environment's deployment DAG started by hand: it runs only as a
/// deployment, which records it.
pub fn guard_start(txn: &WriteTransaction, dag: &str) -> Result<(), CommandError> {
    let Some(env) = owner_env(dag) else { return Ok(()) };
    let table = txn.open_table(ENVIRONMENTS).map_err(storage)?;
    if rw::get::<EnvRecord>(&table, "environments", env).map_err(storage)?.is_some_and(|e| e.env.owns_dag(dag)) {
        return Err(CommandError::conflict(
            "deployment_dag",
            format!(
                "DAG {dag} runs only as a deployment (stella deploy --env {env} --artifact NAME@VERSION), a promotion (stella promotion start NAME@VERSION --to {env}) or a check (stella orch health-check --env {env})"
            ),
        ));
    }
    Ok(())
}

/// Refuses to retry or skip a step of a deployment's run: that would take the deployment up
/// again past its checks (one at a time, freeze, the artifact verified). A new deployment or a
/// rollback does it instead.
pub fn guard_resume(txn: &WriteTransaction, run: &str) -> Result<(), CommandError> {
    let table = txn.open_table(DEPLOYMENT_RUNS).map_err(storage)?;
    let Some(id) = table.get(run).map_err(storage)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()) else {
        return Ok(());
    };
    let d = deployment(txn, &id)?
        .ok_or_else(|| CommandError::Storage(format!("deployment {id} of run {run} is missing")))?;
    Err(CommandError::conflict(
        "deployment_run",
        format!(
            "run {run} is deployment {id}'s: a deployment is not taken up again; deploy again (stella deploy --env {env} --artifact {a}) or roll back (stella rollback start --env {env})",
            env = d.env,
            a = d.artifact
        ),
    ))
}

/// Refuses a DAG (not generated by a release) with a step bound to a remote deploy agent:
/// only an environment's own deployment and probe runs go to its agent.
pub fn guard_agent_steps(name: &str, spec: &str) -> Result<(), CommandError> {
    let Ok(c) = crate::domain::runs::spec::compile_registered(spec) else { return Ok(()) };
    match c.steps.iter().find(|s| s.agent.is_some()) {
        Some(s) => Err(CommandError::Invalid {
            code: "agent_step",
            field: Some("spec"),
            detail: format!(
                "DAG {name}: step {} names agent {:?}: only a release bundle's generated DAGs run on an environment's deploy agent",
                s.name,
                s.agent.as_deref().unwrap_or_default()
            ),
        }),
        None => Ok(()),
    }
}

/// Refuses a DAG whose sub-orchestration starts an environment's deployment or probe DAG: those
/// run only as a deployment or a check.
pub fn guard_children(txn: &WriteTransaction, spec: &str) -> Result<(), CommandError> {
    let Ok(c) = crate::domain::runs::spec::compile_registered(spec) else { return Ok(()) };
    for child in c.children() {
        guard_start(txn, child)?;
    }
    Ok(())
}

/// Refuses to register, disable, enable or roll back a DAG an environment owns (its
/// deployment or probe DAG): only its release bundle changes it.
pub fn guard_owned(txn: &WriteTransaction, dag: &str) -> Result<(), CommandError> {
    let Some(env) = owner_env(dag) else { return Ok(()) };
    let table = txn.open_table(ENVIRONMENTS).map_err(storage)?;
    if let Some(e) = rw::get::<EnvRecord>(&table, "environments", env).map_err(storage)?.filter(|e| e.env.owns_dag(dag))
    {
        return Err(CommandError::conflict(
            "deployment_dag",
            format!(
                "DAG {dag} belongs to environment {env} ({}): only a new version of that release bundle changes it",
                e.declared_by.as_deref().unwrap_or("no longer declared")
            ),
        ));
    }
    Ok(())
}

/// A probe of the environment's target through its agent: a run of its probe DAG.
fn probe(txn: &WriteTransaction, ctx: &mut PlanCtx, p: &ProbeRequest) -> Result<Effects, CommandError> {
    let env = env_record(txn, &p.env)?;
    let of = p.deployment.as_deref().or(env.current.as_deref());
    let current = of.map(|id| deployment(txn, id)).transpose()?.flatten();
    let inputs = json!({
        "env": p.env,
        "target": p.target,
        "artifact": current.as_ref().map(|d| d.artifact.clone()).unwrap_or_default(),
        "digest": current.as_ref().map(|d| d.digest.clone()).unwrap_or_default(),
        "source": "",
        "deployment": current.as_ref().map(|d| d.id.clone()).unwrap_or_default(),
        "kind": "probe",
        "baseline": env.env.baseline.to_string(),
    });
    let serde_json::Value::Object(inputs) = inputs else { unreachable!("an object") };
    let mut run = crate::domain::runs::plan::start(txn, ctx, &p.tenant, &spec::probe_name(&p.env), &inputs, None)?;
    let id = run.drafts.iter().find_map(|d| match RunEvent::parse(d.kind, &d.data) {
        Some(Ok(RunEvent::Created(c))) => Some(c.run_id),
        _ => None,
    });
    run.note = Some(json!({ "run": id }));
    Ok(run)
}

/// A deployment: the checks an operator needs named (environment, artifact, freeze, one at a
/// time, the lock), then its record and its run in one transaction.
fn deploy(txn: &WriteTransaction, ctx: &mut PlanCtx, req: &DeployRequest) -> Result<Effects, CommandError> {
    let env = env_record(txn, &req.env)?;
    let name = &req.env;
    let artifact = {
        let table = txn.open_table(ARTIFACTS).map_err(storage)?;
        rw::get::<ArtifactRecord>(&table, "artifacts", &req.artifact)
            .map_err(storage)?
            .ok_or_else(|| CommandError::NotFound { what: format!("artifact {} in the registry", req.artifact) })?
    };
    if let Some(d) = &artifact.deleted {
        return Err(CommandError::conflict(
            "artifact_deleted",
            format!(
                "artifact {} was deleted from the registry by {} at {} ({}): restore it with stella registry restore --artifact {} --from backup",
                req.artifact,
                d.actor,
                crate::clock::rfc3339(d.ms),
                d.reason,
                req.artifact
            ),
        ));
    }
    if artifact.digest != req.digest {
        return Err(CommandError::conflict(
            "artifact_changed",
            format!("artifact {} is recorded with digest {}, not {}", req.artifact, artifact.digest, req.digest),
        ));
    }
    if let Some(w) = spec::frozen(&env.env.freeze, ctx.now) {
        let why = w.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        return Err(CommandError::conflict(
            "env_frozen",
            format!(
                "environment {name} is frozen by window {}{why} until {}",
                w.name,
                crate::clock::rfc3339(w.until_ms)
            ),
        ));
    }
    if let Some(id) = &env.in_flight
        && let Some(d) = deployment(txn, id)?.filter(|d| !d.status.terminal())
    {
        if let Some(p) = &d.promotion {
            return Err(CommandError::conflict(
                "promotion_in_progress",
                format!(
                    "environment {name} has promotion {p} of {} in progress since {} (deployment {id}): wait for it (stella promotion status {p}), or abort it: stella promotion abort {p} --reason TEXT",
                    d.artifact,
                    crate::clock::rfc3339(d.created_ms)
                ),
            ));
        }
        return Err(CommandError::conflict(
            "deployment_in_progress",
            format!(
                "environment {name} has deployment {id} ({} of {}) {} since {}: wait for it (stella orch deployments list --env {name}), or settle it: stella orch repair --deployment {id}",
                d.kind.as_str(),
                d.artifact,
                d.status.as_str(),
                crate::clock::rfc3339(d.created_ms)
            ),
        ));
    }
    // A promotion comes from the environment before: the artifact succeeded there (a wait
    // gate soaks from then), unless an admin forces the path.
    let promotion = match req.kind {
        super::DeploymentKind::Promotion => Some(promotion_path(txn, ctx, &env, req)?),
        _ => None,
    };
    let resource = format!("env:{name}");
    let mut drafts = Vec::new();
    let mut forced: Vec<String> = promotion.iter().filter_map(|p| p.forced.clone()).collect();
    if let Some(lock) = crate::domain::locks::plan::by_resource(txn, &resource)?
        && let Some(h) = &lock.holder
    {
        if !req.force {
            return Err(CommandError::conflict(
                "env_locked",
                format!(
                    "lock {resource} ({}) is held by {} since {} with fencing token {}: wait for it, or break it: stella orch locks release --env {name} --force (or deploy --force)",
                    lock.id,
                    h.owner,
                    crate::clock::rfc3339(h.acquired_ms),
                    h.token
                ),
            ));
        }
        if !lock.waiters.is_empty() {
            let who: Vec<&str> = lock.waiters.iter().map(|w| w.owner.as_str()).collect();
            return Err(CommandError::conflict(
                "env_locked",
                format!(
                    "lock {resource} ({}) is held by {} and waited for by {}: a forced release would pass it to them; release their claims first (stella orch locks list --env {name})",
                    lock.id,
                    h.owner,
                    who.join(", ")
                ),
            ));
        }
        forced.push(format!("{} ({}, token {})", lock.id, h.owner, h.token));
        let force = LockCommand::ForceRelease {
            tenant: None,
            target: ForceTarget::Id(lock.id.clone()),
            reason: Some(req.reason.clone().unwrap_or_else(|| format!("deploy --force of {} to {name}", req.artifact))),
            tokens: Some([(lock.id.clone(), h.token)].into_iter().collect()),
        };
        drafts.extend(crate::domain::locks::plan(&force, txn, ctx)?.drafts);
    }
    let n = {
        let table = txn.open_table(COUNTERS).map_err(storage)?;
        rw::counter(&table, "deployments").map_err(storage)? + 1
    };
    let id = deployment_id(n);
    let inputs = json!({
        "env": name,
        "target": req.target,
        "artifact": req.artifact,
        "digest": req.digest,
        "source": req.source,
        "deployment": id,
        "kind": req.kind.as_str(),
        "baseline": env.env.baseline.to_string(),
    });
    let serde_json::Value::Object(mut inputs) = inputs else { unreachable!("an object") };
    let (dag, promotion_id) = match &promotion {
        Some(p) => {
            inputs.insert("from".into(), json!(p.from));
            inputs.insert("from_succeeded_ms".into(), json!(p.from_succeeded_ms));
            let n = {
                let table = txn.open_table(COUNTERS).map_err(storage)?;
                rw::counter(&table, "promotions").map_err(storage)? + 1
            };
            (spec::promote_name(name), Some(super::promotion_id(n)))
        }
        None => (env.env.dag.clone(), None),
    };
    let run = crate::domain::runs::plan::start(txn, ctx, &req.tenant, &dag, &inputs, None)?;
    let run_id = run
        .drafts
        .iter()
        .find_map(|d| match RunEvent::parse(d.kind, &d.data) {
            Some(Ok(RunEvent::Created(c))) => Some(c.run_id),
            _ => None,
        })
        .ok_or_else(|| CommandError::Storage("a deployment's run was not created".into()))?;
    let created = ReleaseEvent::DeploymentCreated(DeploymentCreated {
        id: id.clone(),
        env: name.clone(),
        artifact: req.artifact.clone(),
        digest: req.digest.clone(),
        kind: req.kind,
        run_id: run_id.clone(),
        reason: req.reason.clone(),
        forced,
        promotion: promotion_id.clone(),
    });
    let mut subjects = vec![id.clone(), name.clone(), req.artifact.clone(), run_id];
    subjects.extend(promotion_id.clone());
    drafts.push(created.draft("", subjects));
    drafts.extend(run.drafts);
    Ok(Effects { drafts, live: run.live, note: Some(json!({ "deployment": id, "promotion": promotion_id })) })
}

/// Where a promotion comes from: the environment before, when the artifact succeeded there.
struct Path {
    from: String,
    from_succeeded_ms: i64,
    /// What `--force-path` skipped, ledgered with the deployment.
    forced: Option<String>,
}

/// Checks a promotion's path: the target has an environment it promotes from, and the
/// artifact's latest success there (or `--force-path`, which an admin alone may give).
fn promotion_path(
    txn: &WriteTransaction,
    ctx: &PlanCtx,
    env: &EnvRecord,
    req: &DeployRequest,
) -> Result<Path, CommandError> {
    let name = &req.env;
    let Some(from) = env.env.promotes_from.clone() else {
        return Err(CommandError::conflict(
            "not_promoted_into",
            format!(
                "nothing promotes into environment {name} (it has no promotesFrom): deploy to it directly: stella deploy --env {name} --artifact {}",
                req.artifact
            ),
        ));
    };
    let dags = txn.open_table(crate::domain::runs::tables::DAGS).map_err(storage)?;
    if dags.get(spec::promote_name(name).as_str()).map_err(storage)?.is_none() {
        return Err(CommandError::conflict(
            "promotion_dag_missing",
            format!(
                "environment {name} has no promotion DAG {}: its release was declared by an older stella; import the release bundle again",
                spec::promote_name(name)
            ),
        ));
    }
    let source = env_record(txn, &from)?;
    let mut success = None;
    for id in source.successes.iter().rev() {
        if let Some(d) = deployment(txn, id)?.filter(|d| d.artifact == req.artifact) {
            success = Some(d);
            break;
        }
    }
    match success {
        Some(d) => Ok(Path { from, from_succeeded_ms: d.ended_ms.unwrap_or(d.created_ms), forced: None }),
        None if req.force_path => Ok(Path {
            forced: Some(format!("promotion path: {} was not deployed successfully to {from}", req.artifact)),
            from,
            from_succeeded_ms: ctx.now,
        }),
        None => Err(CommandError::conflict(
            "promotion_path",
            format!(
                "artifact {a} has not been deployed successfully to {from}, which {name} promotes from: promote it there first (stella promotion start {a} --to {from}), or, as an admin, skip the path with --force-path",
                a = req.artifact
            ),
        )),
    }
}

/// `promotion abort`: the promotion's deployment fails with the reason; its run is cancelled
/// and its locks released in the same transaction.
fn abort(txn: &WriteTransaction, ctx: &mut PlanCtx, promotion: &str, reason: &str) -> Result<Effects, CommandError> {
    let d = promotion_deployment(txn, promotion)?
        .ok_or_else(|| CommandError::NotFound { what: format!("promotion {promotion}") })?;
    if d.status.terminal() {
        return Err(CommandError::conflict(
            "promotion_settled",
            format!("promotion {promotion} ended already ({}): nothing to abort", d.status.as_str()),
        ));
    }
    let event = ReleaseEvent::PromotionAborted(super::PromotionAborted {
        promotion: promotion.to_owned(),
        id: d.id.clone(),
        reason: reason.to_owned(),
    });
    let mut drafts = vec![event.draft("", vec![promotion.to_owned(), d.id.clone(), d.env.clone()])];
    let cancel = crate::domain::runs::RunCommand::Cancel { tenant: None, run: d.run_id.clone() };
    drafts.extend(crate::domain::runs::plan::plan(&cancel, txn, ctx)?.drafts);
    crate::domain::locks::release_cancelled(txn, ctx, &mut drafts)?;
    Ok(Effects { drafts, note: Some(json!({ "promotion": promotion, "deployment": d.id })), ..Effects::default() })
}

/// The deployment of promotion `id` (`prom-N`): the newest deployments are looked at first.
fn promotion_deployment(txn: &WriteTransaction, id: &str) -> Result<Option<DeploymentRecord>, CommandError> {
    let table = txn.open_table(DEPLOYMENTS).map_err(storage)?;
    for row in table.iter().map_err(storage)? {
        let (_, v) = row.map_err(storage)?;
        let d = <DeploymentRecord as crate::kernel::store::Record>::from_json_bytes(v.value()).map_err(storage)?;
        if d.promotion.as_deref() == Some(id) {
            return Ok(Some(d));
        }
    }
    Ok(None)
}

fn artifact_record(txn: &WriteTransaction, key: &str) -> Result<ArtifactRecord, CommandError> {
    let table = txn.open_table(ARTIFACTS).map_err(storage)?;
    rw::get::<ArtifactRecord>(&table, "artifacts", key)
        .map_err(storage)?
        .ok_or_else(|| CommandError::NotFound { what: format!("artifact {key} in the registry") })
}

/// The registry's retention verdicts over the state in `txn`.
pub fn verdicts(txn: &WriteTransaction, ctx: &PlanCtx) -> Result<Vec<super::retention::Verdict>, CommandError> {
    let min = crate::domain::appliance::plan::runtime_value(txn, ctx, "registry.min_versions")?
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(5);
    let mut envs = Vec::new();
    for row in txn.open_table(ENVIRONMENTS).map_err(storage)?.iter().map_err(storage)? {
        let (_, v) = row.map_err(storage)?;
        envs.push(<EnvRecord as crate::kernel::store::Record>::from_json_bytes(v.value()).map_err(storage)?);
    }
    let mut artifacts = Vec::new();
    for row in txn.open_table(ARTIFACTS).map_err(storage)?.iter().map_err(storage)? {
        let (_, v) = row.map_err(storage)?;
        artifacts.push(<ArtifactRecord as crate::kernel::store::Record>::from_json_bytes(v.value()).map_err(storage)?);
    }
    Ok(super::retention::verdicts(&envs, |id| deployment(txn, id).ok().flatten(), &artifacts, min))
}

/// Deletes an artifact retention does not keep; refused, naming why, when it keeps it.
fn delete_artifact(txn: &WriteTransaction, ctx: &PlanCtx, key: &str, reason: &str) -> Result<Effects, CommandError> {
    let a = artifact_record(txn, key)?;
    if a.deleted.is_some() {
        return Ok(Effects { note: Some(json!({ "unchanged": true })), ..Effects::default() });
    }
    if let Some(v) = verdicts(txn, ctx)?.into_iter().find(|v| v.artifact == key && v.keep) {
        return Err(CommandError::conflict(
            "artifact_retained",
            format!("retention keeps artifact {key}: {}", v.why.join("; ")),
        ));
    }
    let event = ReleaseEvent::ArtifactDeleted(super::ArtifactDeleted {
        artifact: key.to_owned(),
        digest: a.digest.clone(),
        reason: reason.to_owned(),
    });
    Ok(vec![event.draft("", vec![key.to_owned(), a.digest])].into())
}

/// An operator settles an unfinished deployment; its run, if it still goes, is cancelled.
fn settle(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    id: &str,
    succeeded: bool,
    reason: &str,
) -> Result<Effects, CommandError> {
    let d = deployment(txn, id)?.ok_or_else(|| CommandError::NotFound { what: format!("deployment {id}") })?;
    if d.status.terminal() {
        return Err(CommandError::conflict(
            "deployment_settled",
            format!("deployment {id} is {} already: nothing to repair", d.status.as_str()),
        ));
    }
    let status = if succeeded { super::DeploymentStatus::Success } else { super::DeploymentStatus::Failed };
    let event = ReleaseEvent::DeploymentRepaired(super::DeploymentRepaired {
        id: id.to_owned(),
        status,
        reason: reason.to_owned(),
    });
    let mut drafts = vec![event.draft("", vec![id.to_owned(), d.env.clone()])];
    let cancel = crate::domain::runs::RunCommand::Cancel { tenant: None, run: d.run_id.clone() };
    drafts.extend(crate::domain::runs::plan::plan(&cancel, txn, ctx)?.drafts);
    crate::domain::locks::release_cancelled(txn, ctx, &mut drafts)?;
    Ok(Effects { drafts, note: Some(json!({ "deployment": id })), ..Effects::default() })
}

/// After any command's plan: the deployments whose runs its drafts move (the deploy step
/// started, the run succeeded, failed or was cancelled) get their entries, appended to the
/// same drafts.
pub fn follow(txn: &WriteTransaction, drafts: &mut Vec<Draft>) -> Result<(), CommandError> {
    let moves =
        |kind: &str| matches!(kind, "step.started" | "run.resumed" | "run.succeeded" | "run.failed" | "run.cancelled");
    if !drafts.iter().any(|d| moves(d.kind)) {
        return Ok(());
    }
    let runs = txn.open_table(DEPLOYMENT_RUNS).map_err(storage)?;
    // Deployments this command settles itself (a repair) follow no run entry of it.
    let settled: Vec<String> = drafts
        .iter()
        .filter_map(|d| match ReleaseEvent::parse(d.kind, &d.data) {
            Some(Ok(ReleaseEvent::DeploymentRepaired(r))) => Some(r.id),
            Some(Ok(ReleaseEvent::PromotionAborted(a))) => Some(a.id),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for (i, d) in drafts.iter().enumerate().filter(|(_, d)| moves(d.kind)) {
        let Some(Ok(event)) = RunEvent::parse(d.kind, &d.data) else { continue };
        let Some(id) =
            runs.get(event.run_id()).map_err(storage)?.map(|v| String::from_utf8_lossy(v.value()).into_owned())
        else {
            continue;
        };
        // Whatever would take a deployment's run up again (a retry, a skip, a DLQ replay) is
        // refused: it would bypass the deployment's checks.
        if matches!(event, RunEvent::Resumed(_)) {
            return Err(CommandError::conflict(
                "deployment_run",
                format!(
                    "run {} is deployment {id}'s: a deployment is not taken up again; deploy again or roll back",
                    event.run_id()
                ),
            ));
        }
        // A settled deployment stays as it ended (its run cannot be taken up again).
        let Some(dep) = deployment(txn, &id)?.filter(|d| !settled.contains(&id) && !d.status.terminal()) else {
            continue;
        };
        let subjects = vec![id.clone(), dep.env.clone()];
        let follow = match &event {
            RunEvent::StepStarted(s) if s.step == "deploy" && dep.status == super::DeploymentStatus::Pending => {
                ReleaseEvent::DeploymentStarted(DeploymentStarted { id, agent: s.worker.clone() })
            }
            RunEvent::Succeeded(_) => ReleaseEvent::DeploymentSucceeded(DeploymentRef { id }),
            RunEvent::Failed(r) => {
                // The step that failed it, from this command's entries.
                let failed = drafts[..i].iter().rev().find_map(|d| match RunEvent::parse(d.kind, &d.data) {
                    Some(Ok(RunEvent::StepFailed(f))) if f.run_id == r.run_id => Some(f),
                    _ => None,
                });
                let error =
                    failed.as_ref().and_then(|f| f.error.clone()).unwrap_or_else(|| format!("run {} failed", r.run_id));
                ReleaseEvent::DeploymentFailed(DeploymentFailed { id, error, step: failed.map(|f| f.step) })
            }
            RunEvent::Cancelled(c) => {
                let how = if c.aborted { "aborted" } else { "cancelled" };
                ReleaseEvent::DeploymentFailed(DeploymentFailed {
                    id,
                    error: format!("its run {} was {how}", c.run_id),
                    step: None,
                })
            }
            _ => continue,
        };
        out.push(follow.draft("", subjects));
    }
    drafts.extend(out);
    Ok(())
}
