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
    /// Whether the in-process agent (the daemon's executor, `exec.enabled`) runs.
    pub local_agent: bool,
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
) -> Result<(Option<DeploymentRecord>, String), StoreError> {
    let current = env.current.as_deref().map(&deployment).transpose()?.flatten();
    let mut skipped = Vec::new();
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
                    return Ok((Some(d), note));
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
    Ok((None, note))
}

impl Releases<'_> {
    fn env(&self, name: &str) -> Result<EnvRecord, ReleaseError> {
        crate::domain::release::tables::environment(&self.store.read()?, name)?
            .filter(|e| e.declared_by.is_some())
            .ok_or_else(|| CommandError::NotFound { what: format!("environment {name}") }.into())
    }

    /// A deployment of `artifact` to `env` (`direct`, `rollback` or `reset`): the artifact
    /// checked on disk, then the command. Answers the deployment as recorded.
    pub async fn deploy(
        &self,
        env: &str,
        artifact: &str,
        kind: DeploymentKind,
        force: bool,
        reason: Option<String>,
    ) -> Result<DeploymentRecord, ReleaseError> {
        let e = self.env(env)?;
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
                code: if checked.present { "artifact_unverified" } else { "artifact_missing" },
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
            force,
            target: self.lib.join(&e.env.target).display().to_string(),
            source: artifact_dir(self.lib, &a.digest).display().to_string(),
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
                let (lkg, note) = last_known_good(
                    self.lib,
                    self.trust_dir,
                    &e,
                    |id| crate::domain::release::tables::deployment(&txn, id),
                    |a| crate::domain::release::tables::artifact(&txn, a),
                    self.now_ms,
                )?;
                match lkg {
                    Some(d) => d.artifact,
                    None => {
                        return Err(ReleaseError::Refused {
                            code: "no_last_known_good",
                            detail: format!("environment {env} has no last known good to roll back to: {note}"),
                            fix: Some(format!(
                                "stella orch deployments list --env {env} --status success, then stella rollback start --env {env} --to NAME@VERSION"
                            )),
                        });
                    }
                }
            }
        };
        if let Some(why) = agent_down(&e, self.local_agent) {
            return Err(ReleaseError::Refused {
                code: "agent_unavailable",
                detail: format!("environment {env}: {why}"),
                fix: Some(format!("stella orch agent status --env {env}")),
            });
        }
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
        self.deploy(env, &target, DeploymentKind::Rollback, false, reason).await
    }
}

/// Why the environment's agent could not take a deployment now, if it could not: the local
/// agent is the daemon's executor (it runs unless `exec.enabled = false`).
pub fn agent_down(env: &EnvRecord, local_agent: bool) -> Option<String> {
    if env.env.agent != crate::domain::release::spec::LOCAL_AGENT {
        return Some(format!("agent {} is a remote agent, and remote agents are not available yet", env.env.agent));
    }
    (!local_agent).then(|| "the in-process agent does not run (exec.enabled = false in orchestrator.toml)".to_owned())
}
