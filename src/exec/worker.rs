//! The executor's lease loop and one task per attempt. It waits on committed events (never
//! polls): a new or returning job wakes it, a finished attempt frees a slot, a cancelled job
//! stops its attempt.

use crate::domain::queue::{QueueCommand, QueueEvent, wakes};
use crate::exec::builtin::{self, StepResult};
use crate::exec::plugin;
use crate::kernel::Actor;
use crate::kernel::event::Event;
use crate::kernel::store::Store;
use crate::machine::Command;
use crate::machine::WriterHandle;
use crate::machine::read;
use serde_json::json;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{mpsc, watch};

#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub worker: String,
    pub slots: usize,
    pub lease_ttl_ms: u64,
    /// `<lib>`: sealed plugins under `bundles/sha256/`, attempt directories under `work/`.
    pub lib: std::path::PathBuf,
}

/// The job types this executor serves: the built-in kinds and every installed plugin. While
/// the store cannot be read (it is being reopened), the types it served before.
fn kinds(store: &Store, before: &[String]) -> Vec<String> {
    let mut kinds: Vec<String> = crate::domain::runs::spec::BUILTINS.iter().map(|k| (*k).to_owned()).collect();
    match store.read().and_then(|t| read::plugins(&t)) {
        Ok(plugins) => kinds.extend(plugins.into_iter().map(|(name, _)| name)),
        Err(_) if !before.is_empty() => return before.to_vec(),
        Err(_) => {}
    }
    kinds
}

fn builtin_kind(kind: &str) -> bool {
    crate::domain::runs::spec::BUILTINS.contains(&kind)
}

fn actor(worker: &str) -> Actor {
    Actor { name: format!("worker:{worker}") }
}

pub async fn run(writer: WriterHandle, store: Store, opts: ExecOptions, mut stop: watch::Receiver<bool>) {
    let (done_tx, mut done_rx) = mpsc::channel::<()>(opts.slots.max(1));
    // The writer hands this loop only the entries that may have made work of its types ready
    // (and a plugin installed): the others, most of a busy appliance's, wake nothing.
    let served = std::sync::Arc::new(std::sync::RwLock::new(Vec::<String>::new()));
    let mut events = {
        let served = served.clone();
        writer.subscribe_where(move |e| {
            e.kind == "plugin.registered"
                || wakes(e, |t| served.read().unwrap_or_else(|p| p.into_inner()).iter().any(|k| k == t))
        })
    };
    let reload = |before: &[String]| {
        let types = kinds(&store, before);
        served.write().unwrap_or_else(|p| p.into_inner()).clone_from(&types);
        types
    };
    let mut types = reload(&[]);
    let mut free = opts.slots;
    let mut ready = true;
    loop {
        // Every attempt that ended since the last lease frees its slot for this one: one lease
        // command fills every free slot.
        while done_rx.try_recv().is_ok() {
            free += 1;
            ready = true;
        }
        // What was committed before this lease is what it will see: those events wake nothing.
        loop {
            match events.try_recv() {
                // Missed entries may have installed a plugin.
                Ok(e) if e.kind == "plugin.registered" => types = reload(&types),
                Err(TryRecvError::Lagged(_)) => types = reload(&types),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if free > 0 && ready {
            let lease = Command::Queue(QueueCommand::Lease {
                tenant: None,
                worker: opts.worker.clone(),
                worker_tenant: String::new(),
                types: types.clone(),
                max: free as u32,
                ttl_ms: Some(opts.lease_ttl_ms),
                env: None,
                agent: None,
            });
            match writer.submit(actor(&opts.worker), lease).await {
                Ok(c) => {
                    let grants: Vec<(String, u64)> = c
                        .entries
                        .iter()
                        .filter_map(|e| match QueueEvent::of(e) {
                            Some(Ok(QueueEvent::LeaseGranted(g))) => Some(g.leases),
                            _ => None,
                        })
                        .flatten()
                        .map(|g| (g.job, g.token))
                        .collect();
                    // A full grant may have left more behind; a partial one took all there was.
                    ready = grants.len() == free.min(crate::domain::queue::plan::LEASE_MAX as usize);
                    for (job, token) in grants {
                        free -= 1;
                        let slot = Slot(done_tx.clone());
                        let attempt =
                            Attempt { writer: writer.clone(), store: store.clone(), job, token, opts: opts.clone() };
                        tokio::spawn(attempt.run(slot));
                    }
                }
                Err(crate::kernel::CommandError::WriterGone) => return,
                Err(e) => {
                    // A store fault (a full disk) passes: try again shortly, or on the next event.
                    tracing::warn!(error = %e, "executor lease failed; trying again");
                    ready = true;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            }
        }
        if ready && free > 0 {
            continue;
        }
        tokio::select! {
            _ = done_rx.recv() => {
                free += 1;
                ready = true;
            }
            w = wake(&mut events, &types) => {
                if w == Wake::Plugins {
                    types = reload(&types);
                }
                ready = true;
            }
            _ = stop.changed() => return,
        }
    }
}

#[derive(PartialEq)]
enum Wake {
    Work,
    /// A plugin was installed: the executor serves its type from now on.
    Plugins,
}

/// Returns when a committed entry may have made work of `types` ready.
async fn wake(
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<crate::kernel::ledger::Entry>>,
    types: &[String],
) -> Wake {
    loop {
        match events.recv().await {
            Ok(e) if e.kind == "plugin.registered" => return Wake::Plugins,
            Ok(e) if wakes(&e, |t| types.iter().any(|k| k == t)) => return Wake::Work,
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => return Wake::Plugins,
            Err(RecvError::Closed) => std::future::pending().await,
        }
    }
}

/// A slot of the executor, given back when dropped: when its attempt has its result (so that
/// the next lease rides in the same group commit as the result) or ends without one.
struct Slot(mpsc::Sender<()>);

impl Drop for Slot {
    fn drop(&mut self) {
        // The channel holds one message per slot: it is never full.
        let _ = self.0.try_send(());
    }
}

struct Attempt {
    writer: WriterHandle,
    store: Store,
    job: String,
    token: u64,
    opts: ExecOptions,
}

impl Attempt {
    /// The plugin process for this attempt: the run's pinned digest, a fresh working directory.
    fn invocation(
        &self,
        job: &crate::domain::queue::tables::JobRecord,
    ) -> Result<plugin::Invocation, (&'static str, String)> {
        let digest = job.payload["pluginDigest"]
            .as_str()
            .ok_or_else(|| ("plugin_missing", format!("job {} pins no plugin digest", job.id)))?;
        // Secrets travel by reference until here: resolved now, given on stdin only.
        let mut secrets = std::collections::BTreeMap::new();
        let txn = self.store.read().map_err(|e| ("store", e.to_string()))?;
        for name in job.payload["secrets"].as_array().into_iter().flatten().filter_map(|n| n.as_str()) {
            let value = read::secret(&txn, name)
                .map_err(|e| ("store", e.to_string()))?
                .ok_or_else(|| ("secret_missing", format!("secret {name:?} is not set (stella secrets set {name})")))?;
            secrets.insert(name.to_owned(), value);
        }
        plugin::Attempt {
            job: &job.id,
            job_type: &job.job_type,
            attempt: job.attempt,
            payload: &job.payload,
            plugin_dir: &crate::plugins::sealed_dir(&self.opts.lib, digest),
            work_root: &self.opts.lib.join("work"),
            secrets,
        }
        .invocation()
    }

    async fn run(self, slot: Slot) {
        // The watch for this job's cancel first, then the job: a cancel committed after the
        // grant is either in what the read sees or delivered to the watch, never missed.
        let watch = {
            let job = self.job.clone();
            self.writer.subscribe_where(move |e| cancels(e, &job))
        };
        let Some(job) = self.store.read().ok().and_then(|t| read::job(&t, &self.job).ok().flatten()) else { return };
        if !leased_under(&job, self.token) {
            tracing::info!(job = %self.job, "job no longer leased to this attempt (cancelled or taken over); not started");
            return;
        }
        let timeout = Duration::from_millis(job.payload["timeoutMs"].as_u64().unwrap_or(300_000));
        let builtin = builtin_kind(&job.job_type);
        // A built-in's cancel is watched here, a plugin's by its supervision.
        let (mut events, plugin_watch) =
            if builtin { (watch, None) } else { (tokio::sync::broadcast::channel(1).1, Some(watch)) };
        let beat = Duration::from_millis((self.opts.lease_ttl_ms / 3).max(1));
        let cancelled = {
            let (job_id, token, store) = (self.job.clone(), self.token, self.store.clone());
            async move {
                let Some(mut events) = plugin_watch else { return std::future::pending().await };
                loop {
                    match events.recv().await {
                        Ok(e) if cancels(&e, &job_id) => return,
                        Err(RecvError::Lagged(_)) if !still_leased(&store, &job_id, token) => return,
                        Err(RecvError::Closed) => return,
                        _ => continue,
                    }
                }
            }
        };
        let work: std::pin::Pin<Box<dyn std::future::Future<Output = Option<StepResult>> + Send>> = if builtin {
            Box::pin(async { Some(builtin::run(&job.job_type, &job.payload["inputs"]).await) })
        } else {
            match self.invocation(&job) {
                Ok(inv) => Box::pin(plugin::run(inv, cancelled)),
                Err((code, e)) => Box::pin(async move { Some(StepResult::Failed { code: code.into(), error: e }) }),
            }
        };
        tokio::pin!(work);
        // A plugin enforces its own timeout and cancel (it must stop its whole process group);
        // here they apply to the built-in kinds only.
        let deadline = tokio::time::sleep(if builtin { timeout } else { Duration::MAX / 4 });
        tokio::pin!(deadline);
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
        let result = loop {
            tokio::select! {
                r = &mut work => match r {
                    Some(r) => break r,
                    None => {
                        tracing::info!(job = %self.job, "job cancelled; plugin stopped");
                        return;
                    }
                },
                _ = &mut deadline => break StepResult::Failed { code: "timeout".into(), error: format!("step did not finish within {} ms", timeout.as_millis()) },
                _ = heartbeat.tick() => {
                    let hb = Command::Queue(QueueCommand::Heartbeat { tenant: None, job: self.job.clone(), token: self.token, ttl_ms: Some(self.opts.lease_ttl_ms) });
                    if let Err(e) = self.writer.submit(actor(&self.opts.worker), hb).await {
                        tracing::info!(job = %self.job, error = %e, "lease lost; attempt stopped");
                        return;
                    }
                }
                ev = events.recv(), if builtin => {
                    let gone = match ev {
                        Ok(e) => cancels(&e, &self.job),
                        // Entries were missed: the store says whether this attempt still holds its lease.
                        Err(RecvError::Lagged(_)) => !still_leased(&self.store, &self.job, self.token),
                        Err(RecvError::Closed) => false,
                    };
                    if gone {
                        tracing::info!(job = %self.job, "job cancelled; attempt stopped");
                        return;
                    }
                }
            }
        };
        let report = match result {
            StepResult::Outputs(outputs) => QueueCommand::Complete {
                tenant: None,
                job: self.job.clone(),
                token: self.token,
                result: Some(json!({ "outputs": outputs })),
            },
            StepResult::Failed { code, error } => QueueCommand::Fail {
                tenant: None,
                job: self.job.clone(),
                token: self.token,
                error,
                error_code: Some(code),
                retryable: true,
            },
        };
        drop(slot);
        if let Err(e) = self.writer.submit(actor(&self.opts.worker), Command::Queue(report)).await {
            tracing::info!(job = %self.job, error = %e, "result refused");
        }
    }
}

/// Whether the job is still leased under `token` (not cancelled, expired or taken over).
fn still_leased(store: &Store, job: &str, token: u64) -> bool {
    let Ok(Some(j)) = store.read().and_then(|t| read::job(&t, job)) else { return true };
    leased_under(&j, token)
}

fn leased_under(job: &crate::domain::queue::tables::JobRecord, token: u64) -> bool {
    job.state == crate::domain::queue::tables::JobState::Leased && job.lease.as_ref().is_some_and(|l| l.token == token)
}

/// Whether `entry` cancels the job `job` (its run was cancelled or aborted).
fn cancels(entry: &crate::kernel::ledger::Entry, job: &str) -> bool {
    // The kind first: this runs on the writer's thread for every entry, for every attempt.
    entry.kind == "job.cancelled"
        && matches!(QueueEvent::of(entry), Some(Ok(QueueEvent::Cancelled(c))) if c.job_id == job)
}
