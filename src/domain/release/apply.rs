//! The projection of release entries: environments, the artifact registry, deployments and
//! the environments' current deployment and history.

use super::tables::{
    ARTIFACTS, ArtifactRecord, DEPLOYMENT_RUNS, DEPLOYMENTS, DeploymentRecord, ENVIRONMENTS, EnvRecord,
};
use super::{DeploymentStatus, HISTORY_MAX, ReleaseEvent};
use crate::kernel::ledger::Entry;
use crate::kernel::{ApplyError, Tx, counters};

pub fn apply(tx: &Tx, entry: &Entry, event: ReleaseEvent) -> Result<(), ApplyError> {
    match event {
        ReleaseEvent::Declared(d) => {
            let by = format!("{} {}", d.bundle, d.version);
            let mut seen = Vec::new();
            for env in d.environments {
                seen.push(env.name.clone());
                let rec = match tx.get::<EnvRecord>(ENVIRONMENTS, &env.name)? {
                    Some(mut rec) => {
                        if rec.env.baseline != env.baseline {
                            rec.baseline_version += 1;
                        }
                        rec.env = env;
                        rec.declared_by = Some(by.clone());
                        rec
                    }
                    None => EnvRecord {
                        env,
                        declared_by: Some(by.clone()),
                        baseline_version: 1,
                        current: None,
                        successes: vec![],
                        in_flight: None,
                    },
                };
                tx.put(ENVIRONMENTS, &rec.env.name.clone(), rec)?;
            }
            // Environments the bundle's earlier version declared and this one does not.
            for (name, mut rec) in tx.all::<EnvRecord>(ENVIRONMENTS)? {
                let mine = rec.declared_by.as_deref().is_some_and(|b| b.split(' ').next() == Some(d.bundle.as_str()));
                if mine && !seen.contains(&name) {
                    rec.declared_by = None;
                    tx.put(ENVIRONMENTS, &rec.env.name.clone(), rec)?;
                }
            }
        }
        ReleaseEvent::ArtifactImported(a) => {
            let rec = ArtifactRecord {
                name: a.name,
                version: a.version,
                digest: a.digest,
                size: a.size,
                files: a.files,
                signer: a.signer,
                fingerprint: a.fingerprint,
                imported_by: entry.actor.clone(),
                imported_ms: entry.time,
                backup: a.backup,
                deleted: None,
                restored_ms: None,
            };
            tx.put(ARTIFACTS, &rec.key(), rec)?;
        }
        ReleaseEvent::ArtifactDeleted(d) => {
            let mut a = tx
                .get::<ArtifactRecord>(ARTIFACTS, &d.artifact)?
                .ok_or_else(|| ApplyError::entry(entry, format!("deletes unknown artifact {}", d.artifact)))?;
            a.deleted = Some(super::tables::Deletion { ms: entry.time, actor: entry.actor.clone(), reason: d.reason });
            tx.put(ARTIFACTS, &d.artifact, a)?;
        }
        ReleaseEvent::ArtifactRestored(r) => {
            let mut a = tx
                .get::<ArtifactRecord>(ARTIFACTS, &r.artifact)?
                .ok_or_else(|| ApplyError::entry(entry, format!("restores unknown artifact {}", r.artifact)))?;
            a.deleted = None;
            a.restored_ms = Some(entry.time);
            tx.put(ARTIFACTS, &r.artifact, a)?;
        }
        ReleaseEvent::DeploymentCreated(c) => {
            let rec = DeploymentRecord {
                id: c.id.clone(),
                env: c.env.clone(),
                artifact: c.artifact,
                digest: c.digest,
                kind: c.kind,
                status: DeploymentStatus::Pending,
                run_id: c.run_id.clone(),
                actor: entry.actor.clone(),
                agent: None,
                created_ms: entry.time,
                started_ms: None,
                ended_ms: None,
                error: None,
                failed_step: None,
                reason: c.reason,
                forced: c.forced,
                promotion: c.promotion.clone(),
                seq: entry.seq,
            };
            tx.put(DEPLOYMENTS, &c.id, rec)?;
            tx.put_bytes(DEPLOYMENT_RUNS, &c.run_id, c.id.as_bytes())?;
            counters::increment(tx, "deployments")?;
            if c.promotion.is_some() {
                counters::increment(tx, "promotions")?;
            }
            update_env(tx, entry, &c.env, |e| e.in_flight = Some(c.id.clone()))?;
        }
        ReleaseEvent::DeploymentStarted(s) => {
            update(tx, entry, &s.id, |d| {
                d.status = DeploymentStatus::InProgress;
                d.agent = Some(s.agent.clone());
                d.started_ms = Some(entry.time);
            })?;
        }
        ReleaseEvent::DeploymentSucceeded(r) => {
            let d = update(tx, entry, &r.id, |d| {
                d.status = DeploymentStatus::Success;
                d.ended_ms = Some(entry.time);
            })?;
            counted(tx, &d)?;
            update_env(tx, entry, &d.env, |e| settled(e, &d))?;
        }
        ReleaseEvent::DeploymentRepaired(r) => {
            let d = update(tx, entry, &r.id, |d| {
                d.status = r.status;
                d.ended_ms = Some(entry.time);
                if r.status == DeploymentStatus::Failed {
                    d.error = Some(format!("repaired: {}", r.reason));
                }
                d.reason = Some(r.reason.clone());
            })?;
            counted(tx, &d)?;
            update_env(tx, entry, &d.env, |e| settled(e, &d))?;
        }
        ReleaseEvent::PromotionAborted(a) => {
            let d = update(tx, entry, &a.id, |d| {
                d.status = DeploymentStatus::Failed;
                d.ended_ms = Some(entry.time);
                d.error = Some(format!("aborted by {}: {}", entry.actor, a.reason));
                d.reason = Some(a.reason.clone());
            })?;
            counted(tx, &d)?;
            update_env(tx, entry, &d.env, |e| settled(e, &d))?;
        }
        ReleaseEvent::DeploymentFailed(f) => {
            let d = update(tx, entry, &f.id, |d| {
                d.status = DeploymentStatus::Failed;
                d.ended_ms = Some(entry.time);
                d.error = Some(f.error.clone());
                d.failed_step = f.step.clone();
            })?;
            counted(tx, &d)?;
            update_env(tx, entry, &d.env, |e| settled(e, &d))?;
        }
    }
    Ok(())
}

/// A deployment ended: a success is the environment's current one and joins its history;
/// either way the environment has no deployment in flight from it any more.
fn settled(e: &mut EnvRecord, d: &DeploymentRecord) {
    if d.status == DeploymentStatus::Success {
        e.current = Some(d.id.clone());
        e.successes.retain(|s| *s != d.id);
        e.successes.push(d.id.clone());
        if e.successes.len() > HISTORY_MAX {
            e.successes.remove(0);
        }
    }
    if e.in_flight.as_deref() == Some(d.id.as_str()) {
        e.in_flight = None;
    }
}

/// `orchestrator_deployments_total{env,kind,status}` as durable counters (the rollbacks'
/// metric is read from those of kind rollback).
fn counted(tx: &Tx, d: &DeploymentRecord) -> Result<(), ApplyError> {
    let status = d.status.as_str();
    counters::increment(tx, &format!("deployments_total|{}|{}|{status}", d.env, d.kind.as_str()))
}

fn update(
    tx: &Tx,
    entry: &Entry,
    id: &str,
    change: impl FnOnce(&mut DeploymentRecord),
) -> Result<DeploymentRecord, ApplyError> {
    let mut d = tx
        .get::<DeploymentRecord>(DEPLOYMENTS, id)?
        .ok_or_else(|| ApplyError::entry(entry, format!("names unknown deployment {id}")))?;
    change(&mut d);
    d.seq = entry.seq;
    tx.put(DEPLOYMENTS, id, d.clone())?;
    Ok(d)
}

fn update_env(tx: &Tx, entry: &Entry, env: &str, change: impl FnOnce(&mut EnvRecord)) -> Result<(), ApplyError> {
    let mut e = tx
        .get::<EnvRecord>(ENVIRONMENTS, env)?
        .ok_or_else(|| ApplyError::entry(entry, format!("names unknown environment {env}")))?;
    change(&mut e);
    tx.put(ENVIRONMENTS, env, e)
}
