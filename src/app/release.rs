//! Release use cases the API and the daemon share (DESIGN.md §9): checking an artifact in the
//! registry now, a direct deployment, a rollback, and what an environment's last known good is.
//! The checks that read the disk (the artifact present, its signature and files re-verified)
//! run here, before the command; the writer then checks the state (environment, freeze, one
//! deployment at a time, the lock) in the transaction that records the deployment.

use crate::domain::release::tables::{ArtifactRecord, DeploymentRecord, EnvRecord};
use crate::domain::release::{DeployRequest, DeploymentKind, ReleaseCommand};
use crate::kernel::store::{Store, StoreError};
use crate::kernel::{Actor, CommandError};
use crate::machine::{Command, WriterHandle};
use crate::trust::store::TrustStore;
use std::path::{Path, PathBuf};

/// What release use cases need of the appliance.
pub struct Releases<'a> {
    pub store: &'a Store,
    pub writer: &'a WriterHandle,
    pub lib: &'a Path,
    pub trust_dir: &'a Path,
    pub now_ms: i64,
    pub actor: Actor,
    /// The tenant the deployment's run belongs to.
    pub tenant: String,
    /// Whether the in-process agent (the daemon's executor, `exec.enabled`) runs, and when a
    /// remote one is down (`agents.down_after_ms`).
    pub config: &'a crate::config::Config,
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A check before anything changed failed: `code`, what failed, and the command that fixes it.
    #[error("{detail}")]
    Refused { code: &'static str, detail: String, fix: Option<String> },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An artifact checked on disk now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub present: bool,
    pub verified: bool,
    pub problem: Option<String>,
    pub fix: Option<String>,
}

impl Checked {
    pub fn ok(&self) -> bool {
        self.present && self.verified
    }
}

/// An artifact's files in the registry.
pub fn artifact_dir(lib: &Path, digest: &str) -> PathBuf {
    crate::app::import::registry_dir(lib).join("sha256").join(digest)
}

fn meta_dir(lib: &Path, digest: &str) -> PathBuf {
    crate::app::import::registry_dir(lib).join("meta").join(digest)
}

/// Re-verifies artifact `a` now: its files present in the registry, its signature against
/// today's trust store (a key revoked since import fails), every file against its manifest.
pub fn check_artifact(lib: &Path, trust_dir: &Path, a: &ArtifactRecord, now_ms: i64) -> Checked {
    let key = a.key();
    let restore = Some(format!("stella registry restore --artifact {key} --from backup"));
    let dir = artifact_dir(lib, &a.digest);
    if let Some(d) = &a.deleted {
        return Checked {
            present: false,
            verified: false,
            problem: Some(format!(
                "artifact {key} was deleted from the registry by {} at {} ({})",
                d.actor,
                crate::clock::rfc3339(d.ms),
                d.reason
            )),
            fix: restore,
        };
    }
    if !dir.is_dir() {
        return Checked {
            present: false,
            verified: false,
            problem: Some(format!("artifact {key} is not in the registry: {} is missing", dir.display())),
            fix: restore,
        };
    }
    let verified = TrustStore::load(trust_dir)
        .map_err(|e| format!("trust store: {e}"))
        .and_then(|t| crate::domain::bundles::verify::reverify_installed(&meta_dir(lib, &a.digest), &dir, &t, now_ms));
    match verified {
        Ok(()) => Checked { present: true, verified: true, problem: None, fix: None },
        Err(e) => Checked {
            present: true,
            verified: false,
            problem: Some(format!("artifact {key} fails verification: {e}")),
            fix: restore,
        },
    }
}

/// The environment's last known good: the newest successful deployment before the current one
/// whose artifact (another than the current's) is still present and verifies. With it, what
/// was skipped and why.
pub fn last_known_good(
    lib: &Path,
    trust_dir: &Path,
    env: &EnvRecord,
    deployment: impl Fn(&str) -> Result<Option<DeploymentRecord>, StoreError>,
    artifact: impl Fn(&str) -> Result<Option<ArtifactRecord>, StoreError>,
    now_ms: i64,
) -> Result<Lkg, StoreError> {
    let current = env.current.as_deref().map(&deployment).transpose()?.flatten();
    let mut skipped = Vec::new();
    let mut first_restorable: Option<String> = None;
    for id in env.successes.iter().rev() {
        if Some(id.as_str()) == env.current.as_deref() {
            continue;
        }
        let Some(d) = deployment(id)? else { continue };
        if current.as_ref().is_some_and(|c| c.artifact == d.artifact) {
            continue;
        }
        match artifact(&d.artifact)? {
            None => skipped.push(format!("{} ({}): not in the registry", d.id, d.artifact)),
            Some(a) => {
                let c = check_artifact(lib, trust_dir, &a, now_ms);
                if c.ok() {
                    let note = if skipped.is_empty() {
                        format!("{} ({}), the success before the current deployment", d.id, d.artifact)
                    } else {
                        format!("{} ({}); skipped {}", d.id, d.artifact, skipped.join("; "))
                    };
                    return Ok(Lkg { deployment: Some(d), note, restorable: first_restorable });
                }
                if first_restorable.is_none() {
                    first_restorable = Some(d.artifact.clone());
                }
                skipped.push(format!("{} ({}): {}", d.id, d.artifact, c.problem.unwrap_or_default()));
            }
        }
    }
    let note = if skipped.is_empty() {
        "none: no earlier successful deployment of another artifact".to_owned()
    } else {
        format!("none usable: {}", skipped.join("; "))
    };
    Ok(Lkg { deployment: None, note, restorable: first_restorable })
}

/// An environment's last known good, why, and the newest artifact skipped for being missing
/// or damaged in the registry (a restore from its backup brings it back).
#[derive(Debug, Clone)]
pub struct Lkg {
    pub deployment: Option<DeploymentRecord>,
    pub note: String,
    pub restorable: Option<String>,
}

/// What a deployment may break through, each ledgered with the actor: the environment's lock
/// held by a stuck holder; a promotion's path (the artifact not yet successful where the
/// environment promotes from).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forcing {
    pub lock: bool,
    pub path: bool,
}

impl Releases<'_> {
    /// Refuses (`agent_unavailable`, with the command that tells why) when no agent would take
    /// the environment's runs now.
    fn agent_ready(&self, e: &EnvRecord) -> Result<(), ReleaseError> {
        let Some(why) = agent_down(&self.store.read()?, e, self.config, self.now_ms)? else { return Ok(()) };
        let env = &e.env.name;
        Err(ReleaseError::Refused {
            code: "agent_unavailable",
            detail: format!("environment {env}: {why}"),
            fix: Some(format!("stella orch agent status --env {env}")),
        })
    }

    fn env(&self, name: &str) -> Result<EnvRecord, ReleaseError> {
        crate::domain::release::tables::environment(&self.store.read()?, name)?
            .filter(|e| e.declared_by.is_some())
            .ok_or_else(|| CommandError::NotFound { what: format!("environment {name}") }.into())
    }

    /// A deployment of `artifact` to `env` (`direct`, `rollback`, `reset` or `promotion`): the
    /// artifact checked on disk, then the command. Answers the deployment as recorded.
    pub async fn deploy(
        &self,
        env: &str,
        artifact: &str,
        kind: DeploymentKind,
        force: Forcing,
        reason: Option<String>,
    ) -> Result<DeploymentRecord, ReleaseError> {
        let e = self.env(env)?;
        // The agent that would run it: a deployment no agent takes would stay pending.
        self.agent_ready(&e)?;
        let txn = self.store.read()?;
        let a = crate::domain::release::tables::artifact(&txn, artifact)?.ok_or_else(|| ReleaseError::Refused {
            code: "artifact_not_found",
            detail: format!("artifact {artifact} is not in the registry"),
            fix: Some(format!(
                "stella orch artifacts list --filter {}",
                artifact.split('@').next().unwrap_or(artifact)
            )),
        })?;
        drop(txn);
        let (lib, trust, rec, now) = (self.lib.to_owned(), self.trust_dir.to_owned(), a.clone(), self.now_ms);
        let checked = tokio::task::spawn_blocking(move || check_artifact(&lib, &trust, &rec, now))
            .await
            .map_err(|e| CommandError::Storage(e.to_string()))?;
        if !checked.ok() {
            return Err(ReleaseError::Refused {
                code: match (&a.deleted, checked.present) {
                    (Some(_), _) => "artifact_deleted",
                    (None, true) => "artifact_unverified",
                    (None, false) => "artifact_missing",
                },
                detail: checked.problem.unwrap_or_default(),
                fix: checked.fix,
            });
        }
        let req = DeployRequest {
            tenant: self.tenant.clone(),
            env: env.to_owned(),
            artifact: artifact.to_owned(),
            digest: a.digest.clone(),
            kind,
            force: force.lock,
            force_path: force.path,
            target: target_of(self.lib, &e),
            // A remote agent fetches the artifact by its digest into its own cache.
            source: if remote(&e) { String::new() } else { artifact_dir(self.lib, &a.digest).display().to_string() },
            reason,
        };
        let c = self.writer.submit(self.actor.clone(), Command::Release(ReleaseCommand::Deploy(req))).await?;
        let id = c.note.as_ref().and_then(|n| n["deployment"].as_str()).unwrap_or_default().to_owned();
        crate::domain::release::tables::deployment(&self.store.read()?, &id)?
            .ok_or_else(|| CommandError::Storage(format!("deployment {id} was not recorded")).into())
    }

    /// A rollback of `env` to `to` (default: its last known good). Before anything changes it
    /// checks, and names the first that fails with its fix: a target to roll back to, that
    /// artifact present and verified, the environment's agent alive, its lock free.
    pub async fn rollback(
        &self,
        env: &str,
        to: Option<&str>,
        reason: Option<String>,
    ) -> Result<DeploymentRecord, ReleaseError> {
        let e = self.env(env)?;
        let txn = self.store.read()?;
        let target = match to {
            Some(a) => a.to_owned(),
            None => {
                let lkg = last_known_good(
                    self.lib,
                    self.trust_dir,
                    &e,
                    |id| crate::domain::release::tables::deployment(&txn, id),
                    |a| crate::domain::release::tables::artifact(&txn, a),
                    self.now_ms,
                )?;
                match lkg.deployment {
                    Some(d) => d.artifact,
                    None => {
                        let fix = match &lkg.restorable {
                            Some(a) => format!(
                                "stella registry restore --artifact {a} --from backup, then stella rollback start --env {env}"
                            ),
                            None => format!(
                                "stella orch deployments list --env {env} --status success, then stella rollback start --env {env} --to NAME@VERSION"
                            ),
                        };
                        return Err(ReleaseError::Refused {
                            code: "no_last_known_good",
                            detail: format!("environment {env} has no last known good to roll back to: {}", lkg.note),
                            fix: Some(fix),
                        });
                    }
                }
            }
        };
        // An unfinished deployment holds the lock while its deploy step runs: it is named, not
        // the lock (forcing that lock would break a running deployment).
        if let Some(d) =
            e.in_flight.as_deref().map(|id| crate::domain::release::tables::deployment(&txn, id)).transpose()?.flatten()
        {
            return Err(ReleaseError::Refused {
                code: "deployment_in_progress",
                detail: format!(
                    "environment {env} has deployment {} ({} of {}) {} since {}",
                    d.id,
                    d.kind.as_str(),
                    d.artifact,
                    d.status.as_str(),
                    crate::clock::rfc3339(d.created_ms)
                ),
                fix: Some(format!(
                    "wait for it (stella orch deployments list --env {env}), or settle it: stella orch repair --deployment {}",
                    d.id
                )),
            });
        }
        self.agent_ready(&e)?;
        if let Some(lock) = crate::machine::read::locks(&txn, None, crate::domain::locks::LOCK_SCAN_MAX)?
            .into_iter()
            .find(|l| l.resource == format!("env:{env}") && l.holder.is_some())
        {
            let h = lock.holder.expect("found with a holder");
            return Err(ReleaseError::Refused {
                code: "env_locked",
                detail: format!(
                    "lock env:{env} ({}) is held by {} since {} with fencing token {}",
                    lock.id,
                    h.owner,
                    crate::clock::rfc3339(h.acquired_ms),
                    h.token
                ),
                fix: Some(format!("stella orch locks release --env {env} --force")),
            });
        }
        drop(txn);
        self.deploy(env, &target, DeploymentKind::Rollback, Forcing::default(), reason).await
    }
}

fn remote(e: &EnvRecord) -> bool {
    e.env.agent != crate::domain::release::spec::LOCAL_AGENT
}

/// The environment's target as its agent's plugin receives it: under the appliance's lib
/// directory for the in-process agent; for a remote one, relative (`targets/<env>`), under the
/// agent's own directory on its host.
pub fn target_of(lib: &Path, e: &EnvRecord) -> String {
    if remote(e) { e.env.target.clone() } else { lib.join(&e.env.target).display().to_string() }
}

/// Why the environment's agent could not take a deployment now, if it could not: the local
/// agent is the daemon's executor (it runs unless `exec.enabled = false`); a remote one must
/// have asked for work within `agents.down_after_ms` or hold a lease (a running agent asks at
/// least every [`crate::agent::POLL`]).
pub fn agent_down(
    txn: &redb::ReadTransaction,
    env: &EnvRecord,
    config: &crate::config::Config,
    now_ms: i64,
) -> Result<Option<String>, StoreError> {
    if env.env.agent == crate::domain::release::spec::LOCAL_AGENT {
        return Ok((!config.exec.enabled)
            .then(|| "the in-process agent does not run (exec.enabled = false in orchestrator.toml)".to_owned()));
    }
    let name = &env.env.agent;
    let seen = crate::machine::read::workers(txn, WORKERS_MAX)?
        .into_iter()
        .find(|w| &w.id == name && w.env.as_deref() == Some(env.env.name.as_str()) && w.version.is_some());
    let Some(w) = seen else {
        return Ok(Some(format!(
            "agent {name} has never asked for work: start it on the target's host (stella agent run --env {})",
            env.env.name
        )));
    };
    let age = (now_ms - w.last_seen_ms).max(0);
    let down_after = config.agents.down_after_ms as i64;
    if age <= down_after || crate::machine::read::leases_by_worker(txn, LEASE_SCAN)?.contains_key(name) {
        return Ok(None);
    }
    Ok(Some(format!(
        "agent {name} was last seen {}s ago ({}), longer than {}s: it is down (start it: stella agent run --env {})",
        age / 1000,
        crate::clock::rfc3339(w.last_seen_ms),
        down_after / 1000,
        env.env.name
    )))
}

/// Damaged copies kept aside in `registry/damaged/` (for a look at what changed), newest first.
const DAMAGED_KEPT: usize = 10;

/// Removes all but the `keep` newest entries of `dir`.
fn keep_newest(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut all: Vec<_> = entries
        .flatten()
        .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
        .collect();
    all.sort();
    for (_, old) in all.iter().rev().skip(keep) {
        let _ = std::fs::remove_dir_all(old);
    }
}

/// At start: removes registry copies no live artifact record names — an import that died
/// after sealing and before its record, or a deletion whose files outlived its entry — so the
/// registry holds exactly what its records say. Returns the digests removed.
pub fn sweep_registry(store: &Store, lib: &Path) -> Result<Vec<String>, StoreError> {
    let txn = store.read()?;
    let live: std::collections::HashSet<String> = crate::domain::release::tables::artifacts(&txn, usize::MAX)?
        .into_iter()
        .filter(|a| a.deleted.is_none())
        .map(|a| a.digest)
        .collect();
    drop(txn);
    let registry = crate::app::import::registry_dir(lib);
    let mut removed = Vec::new();
    for sub in ["sha256", "meta"] {
        let Ok(entries) = std::fs::read_dir(registry.join(sub)) else { continue };
        for e in entries.flatten() {
            let digest = e.file_name().to_string_lossy().into_owned();
            if live.contains(&digest) {
                continue;
            }
            if std::fs::remove_dir_all(e.path()).is_ok() && !removed.contains(&digest) {
                removed.push(digest);
            }
        }
    }
    Ok(removed)
}

/// Workers and lease timers examined to tell whether an agent is alive.
const WORKERS_MAX: usize = 10_000;
const LEASE_SCAN: usize = 100_000;

/// One check a probe ran: `ok`, `failed`, or `absent` (the plugin has no such kind) /
/// `running` (not done within the wait).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeCheck {
    pub status: String,
    pub detail: Option<String>,
    pub outputs: serde_json::Value,
    pub ms: Option<i64>,
}

/// What the environment's agent answered about its target.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub env: String,
    pub run_id: String,
    pub agent: Option<String>,
    pub target: String,
    pub health: ProbeCheck,
    pub connectivity: ProbeCheck,
    pub credentials: ProbeCheck,
    pub observe: ProbeCheck,
    /// Reach, authenticate, authorize: each `ok`, `failed` or `not checked` (a step before it
    /// failed), from the connectivity and credentials checks.
    pub reach: String,
    pub authenticate: String,
    pub authorize: String,
}

/// How long a probe is waited for (within the default `server.request_timeout_ms`, 30 s);
/// a check still running then is reported as `running`.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

impl Releases<'_> {
    /// Runs the environment's probe DAG through its agent and waits ([`PROBE_WAIT`] at most) for
    /// its end: each check's outcome, and reach / authenticate / authorize told apart.
    pub async fn probe(&self, env: &str) -> Result<ProbeReport, ReleaseError> {
        self.probe_for(env, None).await
    }

    /// [`Self::probe`], its health check asking for deployment `deployment`'s artifact rather
    /// than the current one's.
    async fn probe_for(&self, env: &str, deployment: Option<&str>) -> Result<ProbeReport, ReleaseError> {
        let e = self.env(env)?;
        self.agent_ready(&e)?;
        let target = target_of(self.lib, &e);
        let mut events = self.writer.subscribe();
        let req = crate::domain::release::ProbeRequest {
            tenant: self.tenant.clone(),
            env: env.to_owned(),
            target: target.clone(),
            deployment: deployment.map(str::to_owned),
        };
        let c = self.writer.submit(self.actor.clone(), Command::Release(ReleaseCommand::Probe(req))).await?;
        let run = c.note.as_ref().and_then(|n| n["run"].as_str()).unwrap_or_default().to_owned();
        let ended = |store: &Store| -> Result<bool, StoreError> {
            use crate::domain::runs::tables::RunStatus;
            // A failed run may be retried later; for the probe it has ended.
            let run = crate::machine::read::run(&store.read()?, &run)?;
            Ok(run.is_some_and(|r| matches!(r.status, RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled)))
        };
        let deadline = tokio::time::Instant::now() + PROBE_WAIT;
        while !ended(self.store)? {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Err(_) => break,
                Ok(Ok(entry)) if entry.subjects.first() != Some(&run) || !entry.kind.starts_with("run.") => {}
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => break,
            }
        }
        let steps = crate::machine::read::steps(&self.store.read()?, &run)?;
        let check = |kind: &str| -> ProbeCheck {
            use crate::domain::runs::tables::StepState;
            match steps.iter().find(|s| s.name == kind) {
                None => ProbeCheck {
                    status: "absent".into(),
                    detail: Some(format!("plugin {} has no kind {kind}", e.env.plugin)),
                    outputs: serde_json::Value::Null,
                    ms: None,
                },
                Some(s) => ProbeCheck {
                    status: match s.state {
                        StepState::Succeeded => "ok",
                        StepState::Failed | StepState::Cancelled => "failed",
                        _ => "running",
                    }
                    .into(),
                    detail: s.error.clone(),
                    outputs: s.outputs.clone(),
                    ms: s.started_ms.zip(s.finished_ms).map(|(a, b)| b - a),
                },
            }
        };
        let (connectivity, credentials) = (check("connectivity"), check("credentials"));
        let reach = connectivity.status.clone();
        let (authenticate, authorize) = match credentials.status.as_str() {
            "ok" => ("ok".to_owned(), "ok".to_owned()),
            "failed" if reach == "failed" => ("not checked".to_owned(), "not checked".to_owned()),
            // The credentials check names what it could not do first (protocol: an error that
            // starts with "authorize" means authentication passed).
            "failed"
                if credentials
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.contains(": authorize") || d.starts_with("authorize")) =>
            {
                ("ok".to_owned(), "failed".to_owned())
            }
            "failed" => ("failed".to_owned(), "not checked".to_owned()),
            other => (other.to_owned(), other.to_owned()),
        };
        Ok(ProbeReport {
            env: env.to_owned(),
            run_id: run,
            agent: steps.iter().find_map(|s| s.worker.clone()),
            target,
            health: check("health"),
            connectivity,
            credentials,
            observe: check("observe"),
            reach,
            authenticate,
            authorize,
        })
    }
}

/// One difference between the baseline and the observed configuration, by JSON path.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    pub path: String,
    pub baseline: serde_json::Value,
    pub observed: serde_json::Value,
}

/// The leaves where `observed` differs from `baseline` (objects compared key by key; a
/// missing key is `null` on its side).
pub fn drift(baseline: &serde_json::Value, observed: &serde_json::Value) -> Vec<Drift> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<Drift>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                let null = serde_json::Value::Null;
                for k in keys {
                    walk(&format!("{path}.{k}"), x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => out.push(Drift { path: path.to_owned(), baseline: a.clone(), observed: b.clone() }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("$", baseline, observed, &mut out);
    out
}

/// A unified diff (`---`/`+++`, one hunk with all lines as context) of two texts, line by
/// line over their longest common subsequence. Hand-written: configuration documents are
/// small, and a diff crate would be a dependency for these few lines.
pub fn unified_diff(from_name: &str, a: &str, to_name: &str, b: &str) -> String {
    let (x, y): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    if x == y {
        return String::new();
    }
    let mut lcs = vec![vec![0u32; y.len() + 1]; x.len() + 1];
    for i in (0..x.len()).rev() {
        for j in (0..y.len()).rev() {
            lcs[i][j] = if x[i] == y[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut out = format!("--- {from_name}\n+++ {to_name}\n@@ -1,{} +1,{} @@\n", x.len(), y.len());
    let (mut i, mut j) = (0, 0);
    while i < x.len() || j < y.len() {
        if i < x.len() && j < y.len() && x[i] == y[j] {
            out.push_str(&format!(" {}\n", x[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < x.len() && (j == y.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("-{}\n", x[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", y[j]));
            j += 1;
        }
    }
    out
}

impl Releases<'_> {
    /// `env reset --to-baseline`: the baseline applied through the agent as a deployment of
    /// kind `reset` (of the artifact that runs there now).
    pub async fn reset(&self, env: &str, reason: Option<String>) -> Result<DeploymentRecord, ReleaseError> {
        let e = self.env(env)?;
        let current =
            e.current.as_deref().map(|id| crate::domain::release::tables::deployment(&self.store.read()?, id));
        let Some(current) = current.transpose()?.flatten() else {
            return Err(ReleaseError::Refused {
                code: "never_deployed",
                detail: format!("environment {env} has no successful deployment to reset"),
                fix: Some(format!("stella deploy --env {env} --artifact NAME@VERSION")),
            });
        };
        self.deploy(env, &current.artifact, DeploymentKind::Reset, Forcing::default(), reason).await
    }
}

impl Releases<'_> {
    /// `orch repair --deployment dep-N`: an unfinished deployment settled from its agent's
    /// report — success when the agent's health check finds its artifact running and healthy,
    /// otherwise failed with what the agent said (or that it could not be asked). Its run is
    /// cancelled in the same transaction. A finished deployment is left as it is.
    pub async fn repair(&self, id: &str, reason: Option<String>) -> Result<(DeploymentRecord, String), ReleaseError> {
        let d = crate::domain::release::tables::deployment(&self.store.read()?, id)?
            .ok_or_else(|| CommandError::NotFound { what: format!("deployment {id}") })?;
        if d.status.terminal() {
            return Err(CommandError::conflict(
                "deployment_settled",
                format!("deployment {id} is {} already: nothing to repair", d.status.as_str()),
            )
            .into());
        }
        let (succeeded, why) = match self.probe_for(&d.env, Some(id)).await {
            Ok(r) if r.health.status == "ok" => (true, format!("the agent reports {} running and healthy", d.artifact)),
            Ok(r) => (false, format!("the agent's health check: {}", r.health.detail.unwrap_or(r.health.status))),
            Err(ReleaseError::Refused { detail, .. }) => (false, format!("the agent could not be asked: {detail}")),
            Err(e) => return Err(e),
        };
        let reason = match reason {
            Some(r) => format!("{r}; {why}"),
            None => why,
        };
        let settle = ReleaseCommand::Settle { id: id.to_owned(), succeeded, reason: reason.clone() };
        self.writer.submit(self.actor.clone(), Command::Release(settle)).await?;
        let d = crate::domain::release::tables::deployment(&self.store.read()?, id)?
            .ok_or_else(|| CommandError::Storage(format!("deployment {id} vanished")))?;
        Ok((d, reason))
    }
}

/// The registry's retention: the policy and each artifact's verdict.
pub fn retention(
    txn: &redb::ReadTransaction,
    config: &crate::config::Config,
) -> Result<(usize, Vec<crate::domain::release::retention::Verdict>), StoreError> {
    use crate::domain::release::tables as t;
    let min = crate::machine::read::runtime_config(txn)?
        .into_iter()
        .find(|(k, _)| k == "registry.min_versions")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(config.registry.min_versions as usize);
    let artifacts = t::artifacts(txn, usize::MAX)?;
    let envs = t::environments(txn)?;
    let v =
        crate::domain::release::retention::verdicts(&envs, |id| t::deployment(txn, id).ok().flatten(), &artifacts, min);
    Ok((min, v))
}

impl Releases<'_> {
    /// Deletes artifact `key` from the registry, if retention does not keep it: the ledgered
    /// deletion, then its files (its backup copy stays).
    pub async fn delete(&self, key: &str, reason: &str) -> Result<bool, ReleaseError> {
        let a = crate::domain::release::tables::artifact(&self.store.read()?, key)?
            .ok_or_else(|| CommandError::NotFound { what: format!("artifact {key} in the registry") })?;
        let cmd = ReleaseCommand::DeleteArtifact { key: key.to_owned(), reason: reason.to_owned() };
        let c = self.writer.submit(self.actor.clone(), Command::Release(cmd)).await?;
        if c.entries.is_empty() {
            return Ok(false);
        }
        // Another version with the same content keeps the files.
        let shared = crate::domain::release::tables::artifacts(&self.store.read()?, usize::MAX)?
            .iter()
            .any(|b| b.digest == a.digest && b.deleted.is_none());
        if !shared {
            let _ = std::fs::remove_dir_all(artifact_dir(self.lib, &a.digest));
            let _ = std::fs::remove_dir_all(meta_dir(self.lib, &a.digest));
        }
        Ok(true)
    }

    /// `registry restore --artifact A --from backup`: the backup copy of the bundle verified
    /// like an import (signature against today's trust store, every digest), its digest
    /// checked against the registry's record, then sealed into the registry again (a damaged
    /// copy there is moved aside to `registry/damaged/`) and the restore ledgered.
    pub async fn restore(&self, key: &str, backup_dir: Option<&Path>) -> Result<ArtifactRecord, ReleaseError> {
        let a = crate::domain::release::tables::artifact(&self.store.read()?, key)?
            .ok_or_else(|| CommandError::NotFound { what: format!("artifact {key} in the registry") })?;
        let Some(dir) = backup_dir else {
            return Err(ReleaseError::Refused {
                code: "no_backup_dir",
                detail: "registry.backup_dir is not set, so no backup copy was kept".into(),
                fix: Some("set [registry] backup_dir in orchestrator.toml and import the artifact bundle again".into()),
            });
        };
        let file = crate::app::import::backup_path(dir, key);
        if !file.is_file() {
            return Err(ReleaseError::Refused {
                code: "backup_missing",
                detail: format!("no backup copy of {key}: {} is missing", file.display()),
                fix: Some(format!("import the artifact bundle of {key} again: stella bundle import FILE")),
            });
        }
        let (lib, trust, now, f) = (self.lib.to_owned(), self.trust_dir.to_owned(), self.now_ms, file.clone());
        let digest = a.digest.clone();
        let sealed = tokio::task::spawn_blocking(move || -> Result<String, String> {
            let trust = TrustStore::load(&trust).map_err(|e| format!("trust store: {e}"))?;
            let progress = crate::progress::Progress::default();
            let v = crate::domain::bundles::verify::check_envelope(&f, &trust, now, &progress)
                .map_err(|e| e.to_string())?;
            if v.manifest.payload.sha256 != digest {
                return Err(format!(
                    "the backup holds digest {}, the registry records {digest}",
                    v.manifest.payload.sha256
                ));
            }
            let target = artifact_dir(&lib, &digest);
            if target.exists() {
                let damaged = crate::app::import::registry_dir(&lib).join("damaged");
                let aside = damaged.join(format!("{digest}-{now}"));
                std::fs::create_dir_all(&damaged).map_err(|e| e.to_string())?;
                std::fs::rename(&target, &aside).map_err(|e| format!("move the damaged copy aside: {e}"))?;
                keep_newest(&damaged, DAMAGED_KEPT);
            }
            crate::domain::bundles::import::seal_at(&f, &v, &lib, target, &progress)?;
            let members = crate::domain::bundles::verify::signed_members(&f).map_err(|e| e.to_string())?;
            let meta = meta_dir(&lib, &digest);
            for (name, bytes) in members {
                crate::fsutil::write_file_atomic(&meta.join(name), &bytes, 0o644).map_err(|e| e.to_string())?;
            }
            Ok(v.manifest.payload.sha256)
        })
        .await
        .map_err(|e| CommandError::Storage(e.to_string()))?
        .map_err(|e| ReleaseError::Refused {
            code: "backup_unverified",
            detail: format!("the backup copy {} of {key} fails verification: {e}", file.display()),
            fix: Some(format!("import a good artifact bundle of {key}: stella bundle import FILE")),
        })?;
        let r = crate::domain::release::ArtifactRestored {
            artifact: key.to_owned(),
            digest: sealed,
            from: file.display().to_string(),
        };
        self.writer.submit(self.actor.clone(), Command::Release(ReleaseCommand::RestoreArtifact(r))).await?;
        let restored = crate::domain::release::tables::artifact(&self.store.read()?, key)?
            .ok_or_else(|| CommandError::Storage(format!("artifact {key} vanished")))?;
        let c = check_artifact(self.lib, self.trust_dir, &restored, self.now_ms);
        if !c.ok() {
            return Err(CommandError::Storage(c.problem.unwrap_or_default()).into());
        }
        Ok(restored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drift_names_each_differing_leaf_and_the_diff_shows_it() {
        let base = json!({ "replicas": 3, "log_level": "warn", "flags": [] });
        let seen = json!({ "replicas": 5, "log_level": "warn", "debug": true, "flags": [] });
        let d = drift(&base, &seen);
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["$.debug", "$.replicas"]);
        assert_eq!((d[1].baseline.clone(), d[1].observed.clone()), (json!(3), json!(5)));
        let text = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap();
        let u = unified_diff("baseline", &text(&base), "observed", &text(&seen));
        assert!(u.starts_with("--- baseline\n+++ observed\n@@ "), "{u}");
        assert!(
            u.contains("-  \"replicas\": 3\n")
                && u.contains("+  \"replicas\": 5\n")
                && u.contains("+  \"debug\": true,\n"),
            "{u}"
        );
        assert!(u.contains("   \"log_level\": \"warn\","), "{u}");
        assert!(drift(&base, &base).is_empty() && unified_diff("a", "x\n", "b", "x\n").is_empty());
    }
}

/// One finding of a doctor check: its level (`ok`, `warn`, `error`), what it is about, what is
/// wrong and the command that fixes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub check: &'static str,
    pub level: &'static str,
    pub subject: String,
    pub message: String,
    pub fix: Option<String>,
}

/// The id of the rollback-health check (runbook 001).
pub const ROLLBACK_HEALTH: &str = "check.orchestrator.rollback-health";
/// A deployment unchanged this long is stuck.
const STUCK_AFTER_MS: i64 = 10 * 60 * 1000;

/// `check.orchestrator.rollback-health`, per environment: a last known good present and
/// verified, that retention keeps it, the agent alive, no deployment stuck in progress.
pub fn rollback_health(
    store: &Store,
    config: &crate::config::Config,
    lib: &Path,
    trust_dir: &Path,
    now_ms: i64,
) -> Result<Vec<Finding>, StoreError> {
    use crate::domain::release::tables as t;
    let txn = store.read()?;
    let (_, verdicts) = retention(&txn, config)?;
    let mut out = Vec::new();
    let mut finding = |level, subject: &str, message: String, fix: Option<String>| {
        out.push(Finding { check: ROLLBACK_HEALTH, level, subject: subject.to_owned(), message, fix })
    };
    for e in t::environments(&txn)?.iter().filter(|e| e.declared_by.is_some()) {
        let name = &e.env.name;
        let subject = format!("env {name}");
        let lkg = last_known_good(lib, trust_dir, e, |id| t::deployment(&txn, id), |a| t::artifact(&txn, a), now_ms)?;
        match (&lkg.deployment, &e.current) {
            (Some(d), _) => {
                let kept = verdicts.iter().any(|v| v.artifact == d.artifact && v.keep);
                if kept {
                    finding(
                        "ok",
                        &subject,
                        format!("last known good {} ({}) is present and verifies", d.artifact, d.id),
                        None,
                    );
                } else {
                    finding(
                        "warn",
                        &subject,
                        format!("retention would not keep the last known good {}", d.artifact),
                        Some("stella registry retention set --min-versions 10".into()),
                    );
                }
            }
            (None, None) => finding("ok", &subject, "never deployed: nothing to roll back".into(), None),
            (None, Some(_)) => finding(
                if lkg.restorable.is_some() { "error" } else { "warn" },
                &subject,
                format!("no last known good to roll back to: {}", lkg.note),
                lkg.restorable.as_ref().map(|a| format!("stella registry restore --artifact {a} --from backup")),
            ),
        }
        if let Some(why) = agent_down(&txn, e, config, now_ms)? {
            finding(
                "error",
                &subject,
                format!("agent {}: {why}", e.env.agent),
                Some(format!("stella orch agent status --env {name}")),
            );
        }
        if let Some(d) = e.in_flight.as_deref().map(|id| t::deployment(&txn, id)).transpose()?.flatten() {
            let since = d.started_ms.unwrap_or(d.created_ms);
            if now_ms - since > STUCK_AFTER_MS {
                finding(
                    "error",
                    &subject,
                    format!(
                        "deployment {} ({} of {}) has been {} since {}",
                        d.id,
                        d.kind.as_str(),
                        d.artifact,
                        d.status.as_str(),
                        crate::clock::rfc3339(since)
                    ),
                    Some(format!("stella orch repair --deployment {}", d.id)),
                );
            }
        }
    }
    Ok(out)
}
