//! `stella agent run --env E`: an environment's deploy agent in its own process, on the
//! target's host, talking to the appliance over HTTPS (or its socket) with a site token of
//! scope `orchestrator:agent`. It leases the jobs bound to it (the steps of the environment's
//! deployment and probe DAGs; nothing else), long-polling so that it asks for work at least
//! every [`POLL`] — which is how the appliance knows it is alive. For each job it fetches the
//! sealed plugin the job pins (and, to deploy, the artifact) once, verifies it against its own
//! trust store (`app::sealed`), and runs it like the in-process executor does
//! (`exec::plugin`), heartbeating the lease; a refused heartbeat (the lease expired, was taken
//! over or the job cancelled) stops the plugin's process group. The result goes back with the
//! lease's fencing token, so an agent cut off meanwhile cannot settle a newer attempt.
//!
//! On its host the agent keeps, under `--dir`: `cache/` (verified plugins and artifacts by
//! digest), `work/` (attempt directories, as the daemon's), and `targets/` (where the sample
//! plugin installs: an environment's target is relative, `targets/<env>`, on its agent).

use crate::api::dto;
use crate::app::sealed::{self, Sealed};
use crate::client::Client;
use crate::exec::builtin::StepResult;
use crate::exec::plugin;
use crate::exit::CliError;
use crate::trust::store::TrustStore;
use serde_json::{Value, json};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The agent asks for work at least this often (the long poll's wait).
pub const POLL: Duration = Duration::from_secs(5);
/// After a failed request, the agent tries again this much later.
const RETRY: Duration = Duration::from_secs(2);
const API: &str = "/api/v1/orchestrator";

#[derive(Debug, Clone)]
pub struct Options {
    pub env: String,
    /// The agent's name (its worker id); default: the agent the environment names.
    pub name: Option<String>,
    /// Where the agent keeps its cache, attempt directories and targets.
    pub dir: PathBuf,
    /// The `allowed_signers` (and `revoked`) the agent verifies plugins and artifacts with.
    pub trust_dir: PathBuf,
    pub slots: usize,
    pub lease_ttl: Duration,
}

struct Agent {
    client: Client,
    opts: Options,
    name: String,
}

/// Runs the agent until `stop` turns true; then it takes no new work and waits for the
/// attempts it has to end.
pub async fn run(client: Client, opts: Options, mut stop: watch::Receiver<bool>) -> Result<(), CliError> {
    crate::exec::procs::become_subreaper();
    for d in ["cache", "work", "targets"] {
        std::fs::create_dir_all(opts.dir.join(d))
            .map_err(|e| CliError::Invalid(format!("{}: {e}", opts.dir.join(d).display())))?;
    }
    // One agent per directory: a second would reap the first one's plugins as orphans.
    let lock_path = opts.dir.join("agent.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|e| CliError::Invalid(format!("{}: {e}", lock_path.display())))?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` is dropped at return.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(CliError::Invalid(format!(
            "{} is in use by another agent: give each agent a --dir of its own",
            opts.dir.display()
        )));
    }
    // Plugins a previous agent left running (it was killed under them) stop before any new
    // attempt: their leases have lapsed, and a late install must not land after a newer one.
    crate::exec::plugin::reap_orphans(&opts.dir);
    TrustStore::load(&opts.trust_dir).map_err(|e| {
        CliError::Invalid(format!(
            "trust store {}: {e} (the agent verifies what it runs: copy the site's allowed_signers there, or pass --trust DIR)",
            opts.trust_dir.display()
        ))
    })?;
    let env = environment(&client, &opts.env).await?;
    if env.agent == crate::domain::release::spec::LOCAL_AGENT {
        return Err(CliError::Invalid(format!(
            "environment {} is deployed by the appliance's in-process agent (agent = \"local\"): declare agent = \"NAME\" for it in the release bundle to deploy it from here",
            opts.env
        )));
    }
    let name = opts.name.clone().unwrap_or_else(|| env.agent.clone());
    if name != env.agent {
        tracing::warn!(agent = %name, chosen = %env.agent, env = %opts.env, "environment is deployed by another agent: this one will not be given its jobs");
    }
    tracing::info!(agent = %name, env = %opts.env, server = %client.describe(), version = env!("CARGO_PKG_VERSION"), "deploy agent started");
    let agent = Arc::new(Agent { client, opts, name });
    let (done_tx, mut done_rx) = mpsc::channel::<()>(agent.opts.slots.max(1));
    let (mut free, mut plugin) = (agent.opts.slots.max(1), env.plugin);
    while !*stop.borrow() {
        while done_rx.try_recv().is_ok() {
            free += 1;
        }
        if free == 0 {
            tokio::select! {
                _ = done_rx.recv() => free += 1,
                _ = stop.changed() => {}
            }
            continue;
        }
        let leased = tokio::select! {
            r = agent.lease(&plugin, free) => r,
            _ = stop.changed() => break,
        };
        match leased {
            Ok(leases) if leases.is_empty() => {
                // A new release may have given the environment another plugin.
                if let Ok(e) = environment(&agent.client, &agent.opts.env).await {
                    plugin = e.plugin;
                }
            }
            Ok(leases) => {
                for lease in leases {
                    free -= 1;
                    let (agent, done) = (agent.clone(), done_tx.clone());
                    tokio::spawn(async move {
                        agent.attempt(lease).await;
                        let _ = done.send(()).await;
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease request failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    tracing::info!(running = agent.opts.slots.max(1) - free, "deploy agent stopping: waiting for its attempts");
    drop(done_tx);
    while done_rx.recv().await.is_some() {}
    crate::exec::procs::kill_all(&agent.opts.dir.join("work"));
    Ok(())
}

async fn environment(client: &Client, env: &str) -> Result<dto::EnvStatus, CliError> {
    let reply = client.get(&format!("{API}/environments/{env}")).await?.ok()?;
    Ok(reply.typed::<dto::EnvStatus>()?.1)
}

/// Ids as the appliance makes them (`job-…`, `run-…`, step names): 1-128 of `a-z A-Z 0-9 - _ .`,
/// not starting with a dot.
fn plain_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// An environment's target as the appliance names it for a remote agent (`targets/<env>`),
/// under the agent's directory; anything else is refused.
fn target_dir(dir: &Path, target: &str) -> Result<PathBuf, String> {
    let rel = Path::new(target);
    let plain = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain || !target.starts_with("targets/") {
        return Err(format!("target {target:?} is not a relative path under targets/"));
    }
    Ok(dir.join(rel))
}

impl Agent {
    async fn lease(&self, plugin: &str, max: usize) -> Result<Vec<dto::Leased>, CliError> {
        let body = json!({
            "worker": self.name,
            "types": [plugin],
            "max": max,
            "ttl": format!("{}ms", self.opts.lease_ttl.as_millis()),
            "wait": format!("{}ms", POLL.as_millis()),
            "env": self.opts.env,
            "agent": env!("CARGO_PKG_VERSION"),
        });
        let reply = self.client.post(&format!("{API}/leases"), &body).await?.ok()?;
        Ok(reply.typed::<dto::LeaseResponse>()?.1.leases)
    }

    /// The sealed copy of `digest`, from the cache or fetched, verified either way.
    async fn sealed(&self, kind: Sealed, digest: &str) -> Result<PathBuf, (&'static str, String)> {
        let trust = TrustStore::load(&self.opts.trust_dir).map_err(|e| ("trust_store", e.to_string()))?;
        let now = crate::clock::SystemClock.now();
        let cache = self.opts.dir.join("cache");
        let (c, t, d) = (cache.clone(), trust.clone(), digest.to_owned());
        let hit = tokio::task::spawn_blocking(move || sealed::cached(&c, kind, &d, &t, now))
            .await
            .map_err(|e| ("agent", e.to_string()))?;
        if let Some(files) = hit {
            return Ok(files);
        }
        let reply =
            self.client.get(&format!("{API}/sealed/{}/{digest}", kind.as_str())).await.and_then(|r| r.ok()).map_err(
                |e| ("fetch", format!("{} {digest} could not be fetched from the appliance: {e}", kind.as_str())),
            )?;
        let d = digest.to_owned();
        tokio::task::spawn_blocking(move || sealed::install(&cache, kind, &d, &reply.body, &trust, now))
            .await
            .map_err(|e| ("agent", e.to_string()))?
            .map_err(|e| ("verification", e))
    }

    /// What the plugin of this lease runs: its verified copy, the artifact for a deployment,
    /// the target under the agent's directory.
    async fn invocation(&self, lease: &dto::Leased) -> Result<plugin::Invocation, (&'static str, String)> {
        let mut payload = lease.payload.clone();
        if payload["secrets"].as_array().is_some_and(|s| !s.is_empty()) {
            return Err(("secrets_unsupported", "a remote agent is given no secrets: the step names some".into()));
        }
        // Everything here names paths on this host: it must have the shapes the appliance gives.
        for (what, v) in
            [("job", Some(lease.job_id.as_str())), ("run", payload["run"].as_str()), ("step", payload["step"].as_str())]
        {
            if !v.is_some_and(plain_name) {
                return Err(("invalid_job", format!("the lease names a {what} {v:?} that is not a plain name")));
            }
        }
        let digest = payload["pluginDigest"]
            .as_str()
            .filter(|d| sealed::valid_digest(d))
            .ok_or_else(|| ("plugin_missing", format!("job {} pins no plugin digest", lease.job_id)))?
            .to_owned();
        let plugin_dir = self.sealed(Sealed::Plugin, &digest).await?;
        let inputs = &mut payload["inputs"];
        if let Some(t) = inputs["target"].as_str() {
            let dir = target_dir(&self.opts.dir, t).map_err(|e| ("target_invalid", e))?;
            inputs["target"] = json!(dir.display().to_string());
        }
        let artifact = inputs["digest"].as_str().filter(|d| sealed::valid_digest(d)).map(str::to_owned);
        if let (Some(a), Some("deploy")) = (artifact, payload["kind"].as_str()) {
            let files = self.sealed(Sealed::Artifact, &a).await?;
            payload["inputs"]["source"] = json!(files.display().to_string());
        }
        plugin::Attempt {
            job: &lease.job_id,
            job_type: &lease.job_type,
            attempt: lease.attempt,
            payload: &payload,
            plugin_dir: &plugin_dir,
            work_root: &self.opts.dir.join("work"),
            secrets: Default::default(),
        }
        .invocation()
    }

    async fn attempt(&self, lease: dto::Leased) {
        let job = lease.job_id.clone();
        tracing::info!(job = %job, attempt = lease.attempt, kind = lease.payload["kind"].as_str().unwrap_or("-"), "leased");
        let ttl = self.opts.lease_ttl;
        let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
        // Fetching and verifying run under the lease's heartbeat too: a slow link must not
        // let the lease lapse before the plugin starts.
        let work = async {
            match self.invocation(&lease).await {
                Ok(inv) => {
                    plugin::run(inv, async {
                        let _ = cancel_rx.await;
                    })
                    .await
                }
                Err((code, error)) => Some(StepResult::Failed { code: code.into(), error }),
            }
        };
        tokio::pin!(work);
        let beat = (ttl / 3).max(Duration::from_millis(100));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        let mut held_until = tokio::time::Instant::now() + ttl;
        let mut cancel = Some(cancel_tx);
        let result = loop {
            tokio::select! {
                r = &mut work => break r,
                _ = heartbeat.tick(), if cancel.is_some() => {
                    let body = json!({ "token": lease.token, "ttl": format!("{}ms", ttl.as_millis()) });
                    let asked = tokio::time::Instant::now();
                    match self.act(&job, "heartbeat", body).await {
                        Ok(()) => held_until = asked + ttl,
                        Err(e @ CliError::Api { status: 403 | 404 | 409 | 410, .. }) => {
                            tracing::info!(job = %job, error = %e, "lease lost; stopping the plugin");
                            let _ = cancel.take().map(|c| c.send(()));
                        }
                        // The appliance may be restarting: the lease holds until its expiry,
                        // and once that is past the attempt is another's to make.
                        Err(e) if tokio::time::Instant::now() >= held_until => {
                            tracing::warn!(job = %job, error = %e, "lease expired unrenewed; stopping the plugin");
                            let _ = cancel.take().map(|c| c.send(()));
                        }
                        Err(e) => tracing::warn!(job = %job, error = %e, "heartbeat failed; trying again"),
                    }
                }
            }
        };
        let Some(result) = result else {
            tracing::info!(job = %job, "attempt stopped");
            return;
        };
        let (action, body) = match result {
            StepResult::Outputs(outputs) => {
                ("complete", json!({ "token": lease.token, "result": { "outputs": outputs } }))
            }
            StepResult::Failed { code, error } => {
                ("fail", json!({ "token": lease.token, "error": error, "errorCode": code, "retryable": true }))
            }
        };
        // A result not delivered is tried again while the lease may still hold: a blip must
        // not turn a finished deployment into a lapsed one.
        loop {
            match self.act(&job, action, body.clone()).await {
                Ok(()) => return tracing::info!(job = %job, outcome = action, "reported"),
                Err(e @ CliError::Api { .. }) => return tracing::warn!(job = %job, error = %e, "result refused"),
                Err(e) if tokio::time::Instant::now() >= held_until => {
                    return tracing::warn!(job = %job, error = %e, "result not delivered before the lease expired");
                }
                Err(e) => {
                    tracing::warn!(job = %job, error = %e, "result not delivered; trying again");
                    tokio::time::sleep(RETRY.min(beat)).await;
                }
            }
        }
    }

    async fn act(&self, job: &str, action: &str, body: Value) -> Result<(), CliError> {
        self.client.post(&format!("{API}/leases/{job}/{action}"), &body).await?.ok().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_stay_under_the_agents_targets_directory() {
        let dir = Path::new("/srv/agent");
        assert_eq!(target_dir(dir, "targets/prod").unwrap(), Path::new("/srv/agent/targets/prod"));
        assert!(plain_name("job-000000000001") && plain_name("run-7") && plain_name("deploy"));
        for bad in ["", "..", "../x", "a/b", ".hidden", "x\0"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
        for bad in ["/etc", "targets/../../etc", "registry", "../targets/x", ""] {
            assert!(target_dir(dir, bad).is_err(), "{bad}");
        }
    }
}
