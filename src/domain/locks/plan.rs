//! Planning lock commands: acquire (or wait in line), release with the holder's token, forced
//! release, lock-guarded resource updates, and the expiry a tick finds due.

use super::{ForceTarget, Grant, LOCK_SCAN_MAX, LOCK_TTL_MAX_MS, LockCommand, WAITERS_MAX, in_env, valid_resource};
use super::{LockEvent, LockExpired, LockForceReleased, LockHeld, LockReleased, LockWaiting, ResourceUpdated};
use crate::domain::appliance::plan::{runtime_ms, runtime_value};
use crate::domain::live::Effects;
use crate::domain::locks::tables::LOCK_IDS;
use crate::domain::locks::tables::LOCKS;
use crate::domain::locks::tables::LockRecord;
use crate::domain::locks::tables::RESOURCES;
use crate::domain::queue::plan::Fence;
use crate::kernel::CommandError;
use crate::kernel::PlanCtx;
use crate::kernel::counters::COUNTERS;
use crate::kernel::event::Event;
use crate::kernel::ledger::Draft;
use crate::kernel::storage;
use crate::kernel::store::rw;
use redb::{ReadableTable, WriteTransaction};
use serde_json::json;
use std::collections::HashSet;

fn draft(tenant: &str, rec: &LockRecord, event: LockEvent) -> Draft {
    event.draft(tenant, vec![rec.id.clone(), rec.resource.clone()])
}

pub fn by_resource(txn: &WriteTransaction, resource: &str) -> Result<Option<LockRecord>, CommandError> {
    let table = txn.open_table(LOCKS).map_err(storage)?;
    rw::get::<LockRecord>(&table, "locks", resource).map_err(storage)
}

fn by_id(txn: &WriteTransaction, tenant: Option<&str>, id: &str) -> Result<LockRecord, CommandError> {
    let resource = {
        let ids = txn.open_table(LOCK_IDS).map_err(storage)?;
        ids.get(id).map_err(storage)?.map(|v| String::from_utf8_lossy(v.value()).into_owned())
    };
    resource
        .map(|r| by_resource(txn, &r))
        .transpose()?
        .flatten()
        .filter(|l| tenant.is_none_or(|t| t == l.tenant))
        .ok_or_else(|| CommandError::NotFound { what: format!("lock {id}") })
}

/// The next holder when the current one goes: the first waiter, with a new token.
fn next_grant(rec: &LockRecord, fence: &mut Fence, now: i64) -> Option<Grant> {
    rec.waiters.first().map(|w| Grant {
        owner: w.owner.clone(),
        token: fence.take(),
        expires_ms: now + w.ttl_ms as i64,
    })
}

pub fn plan(cmd: &LockCommand, txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<Effects, CommandError> {
    let mut fence = Fence::read(txn)?;
    match cmd {
        LockCommand::Acquire { tenant, resource, owner, ttl_ms } => {
            if !valid_resource(resource) {
                return Err(CommandError::invalid(
                    "resource",
                    format!("resource {resource:?} is not 1-256 printable characters without '|'"),
                ));
            }
            let ttl = match ttl_ms {
                Some(t) => *t,
                None => runtime_ms(txn, ctx, "locks.timeout")?,
            }
            .clamp(1, LOCK_TTL_MAX_MS);
            acquire(txn, ctx, &mut fence, tenant, resource, owner, ttl)
        }
        LockCommand::Release { tenant, lock_id, owner, token } => {
            let rec = by_id(txn, tenant.as_deref(), lock_id)?;
            let held = rec.holder.as_ref().is_some_and(|h| h.owner == *owner && h.token == *token);
            if !held {
                let current =
                    rec.holder.as_ref().map_or("nobody".to_owned(), |h| format!("{} with token {}", h.owner, h.token));
                return Err(CommandError::conflict(
                    "lock_token_stale",
                    format!("stale lock token {token} from {owner} for {lock_id}: it is held by {current}"),
                ));
            }
            let next = next_grant(&rec, &mut fence, ctx.now);
            let event = LockEvent::Released(LockReleased {
                lock_id: rec.id.clone(),
                resource: rec.resource.clone(),
                token: *token,
                next,
                reason: None,
            });
            Ok(vec![draft(&rec.tenant, &rec, event)].into())
        }
        LockCommand::Update { tenant, resource, owner, token, expected_version, note } => {
            let optimistic = runtime_value(txn, ctx, "locks.mode")?.as_deref() == Some("optimistic");
            let current = resource_version(txn, resource)?;
            if optimistic {
                let Some(expected) = expected_version else {
                    return Err(CommandError::invalid(
                        "expectedVersion",
                        "locks.mode is optimistic: an update names expectedVersion",
                    ));
                };
                if *expected != current {
                    return Err(CommandError::conflict(
                        "version_mismatch",
                        format!("resource {resource} is at version {current}, not {expected}: re-read and retry"),
                    ));
                }
            } else {
                let held = by_resource(txn, resource)?
                    .and_then(|l| l.holder.filter(|_| l.tenant == *tenant))
                    .is_some_and(|h| h.owner == *owner && Some(h.token) == *token);
                if !held {
                    return Err(CommandError::conflict(
                        "lock_not_held",
                        format!(
                            "locks.mode is pessimistic: updating {resource} needs its lock held by {owner} with its current token"
                        ),
                    ));
                }
            }
            let mode = if optimistic { "optimistic" } else { "pessimistic" };
            let event = LockEvent::ResourceUpdated(ResourceUpdated {
                resource: resource.clone(),
                version: current + 1,
                owner: owner.clone(),
                mode: mode.to_owned(),
                note: note.clone(),
            });
            Ok(vec![event.draft(tenant, vec![resource.clone()])].into())
        }
        LockCommand::ForceRelease { tenant, target, reason, tokens } => {
            let locks = match target {
                ForceTarget::Id(id) => vec![by_id(txn, tenant.as_deref(), id)?],
                ForceTarget::Env(env) => {
                    scan(txn, tenant.as_deref())?.into_iter().filter(|l| in_env(&l.resource, env)).collect()
                }
            };
            let mut drafts = Vec::new();
            let mut moved = Vec::new();
            for rec in locks.iter().filter(|l| l.holder.is_some()) {
                let holder = rec.holder.as_ref().expect("filtered on holder");
                if let Some(tokens) = tokens
                    && tokens.get(&rec.id) != Some(&holder.token)
                {
                    let named = tokens.get(&rec.id).map_or("no token".to_owned(), |t| format!("token {t}"));
                    moved.push(format!(
                        "{} is held by {} with token {} now (the release named {named})",
                        rec.id, holder.owner, holder.token
                    ));
                    continue;
                }
                let next = next_grant(rec, &mut fence, ctx.now);
                let event = LockEvent::ForceReleased(LockForceReleased {
                    lock_id: rec.id.clone(),
                    resource: rec.resource.clone(),
                    token: holder.token,
                    holder: holder.owner.clone(),
                    reason: reason.clone(),
                    next,
                });
                drafts.push(draft(&rec.tenant, rec, event));
            }
            if drafts.is_empty() && !moved.is_empty() {
                return Err(CommandError::conflict(
                    "lock_moved",
                    format!(
                        "nothing released: the lock has moved on since it was read: {}; look again (orch locks list)",
                        moved.join("; ")
                    ),
                ));
            }
            if drafts.is_empty() {
                let what = match target {
                    ForceTarget::Id(id) => format!("held lock {id}"),
                    ForceTarget::Env(env) => format!("held lock in environment {env}"),
                };
                return Err(CommandError::NotFound { what });
            }
            Ok(drafts.into())
        }
    }
}

fn acquire(
    txn: &WriteTransaction,
    ctx: &PlanCtx,
    fence: &mut Fence,
    tenant: &str,
    resource: &str,
    owner: &str,
    ttl: u64,
) -> Result<Effects, CommandError> {
    let expires_ms = ctx.now + ttl as i64;
    let Some(rec) = by_resource(txn, resource)? else {
        return Ok(vec![grant_new(txn, fence, (tenant, resource, owner), expires_ms)?].into());
    };
    if rec.tenant != tenant {
        // Nothing about who holds it: another tenant's lock is not this tenant's business.
        return Err(CommandError::conflict(
            "resource_unavailable",
            format!("resource {resource} is not available to lock now"),
        ));
    }
    match &rec.holder {
        Some(h) if h.owner == owner => {
            let event = LockEvent::Renewed(LockHeld {
                lock_id: rec.id.clone(),
                resource: resource.to_owned(),
                owner: owner.to_owned(),
                token: h.token,
                expires_ms,
            });
            Ok(vec![draft(tenant, &rec, event)].into())
        }
        _ => {
            if let Some(pos) = rec.waiters.iter().position(|w| w.owner == owner) {
                return Ok(Effects {
                    note: Some(json!({ "lockId": rec.id, "granted": false, "position": pos + 1 })),
                    ..Effects::default()
                });
            }
            if rec.waiters.len() >= WAITERS_MAX {
                return Err(CommandError::Busy {
                    detail: format!("lock {} has {WAITERS_MAX} waiters", rec.id),
                    retry_after_s: 1,
                });
            }
            let event = LockEvent::Waiting(LockWaiting {
                lock_id: rec.id.clone(),
                resource: resource.to_owned(),
                owner: owner.to_owned(),
                ttl_ms: ttl,
                position: rec.waiters.len() + 1,
            });
            Ok(vec![draft(tenant, &rec, event)].into())
        }
    }
}

/// Grants the lock on `resource` to `owner` if nobody holds or waits for it; `None` otherwise.
/// Used at dispatch for the locks a DAG step declares: the step waits (without queueing as a
/// waiter) until every one of its locks is free.
pub fn try_grant(
    txn: &WriteTransaction,
    ctx: &PlanCtx,
    fence: &mut Fence,
    (tenant, resource, owner): (&str, &str, &str),
    ttl_ms: u64,
) -> Result<Option<Draft>, CommandError> {
    if by_resource(txn, resource)?.is_some() {
        return Ok(None);
    }
    let expires_ms = ctx.now + ttl_ms.clamp(1, LOCK_TTL_MAX_MS) as i64;
    grant_new(txn, fence, (tenant, resource, owner), expires_ms).map(Some)
}

/// A new lock record (`lock-<n>`) on a free resource, granted to `owner` with a new token.
fn grant_new(
    txn: &WriteTransaction,
    fence: &mut Fence,
    (tenant, resource, owner): (&str, &str, &str),
    expires_ms: i64,
) -> Result<Draft, CommandError> {
    let seq = {
        let counters = txn.open_table(COUNTERS).map_err(storage)?;
        rw::counter(&counters, "lock_seq").map_err(storage)? + 1
    };
    let rec = LockRecord {
        id: format!("lock-{seq}"),
        resource: resource.to_owned(),
        tenant: tenant.to_owned(),
        holder: None,
        waiters: vec![],
    };
    let token = fence.take();
    let event = LockEvent::Acquired(LockHeld {
        lock_id: rec.id.clone(),
        resource: resource.to_owned(),
        owner: owner.to_owned(),
        token,
        expires_ms,
    });
    Ok(draft(tenant, &rec, event))
}

/// The holder of the lock on `resource`, if any (for wait reasons).
pub fn holder(locks: &[LockRecord], resource: &str) -> Option<String> {
    locks
        .iter()
        .find(|l| l.resource == resource)
        .map(|l| l.holder.as_ref().map_or("a waiter".to_owned(), |h| h.owner.clone()))
}

/// A resource's version: how many lock-guarded updates it has had.
fn resource_version(txn: &WriteTransaction, resource: &str) -> Result<u64, CommandError> {
    let table = txn.open_table(RESOURCES).map_err(storage)?;
    rw::counter(&table, resource).map_err(storage)
}

/// Every lock (visible to `tenant`), at most `LOCK_SCAN_MAX`.
fn scan(txn: &WriteTransaction, tenant: Option<&str>) -> Result<Vec<LockRecord>, CommandError> {
    let table = txn.open_table(LOCKS).map_err(storage)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(storage)?.take(LOCK_SCAN_MAX) {
        let (k, _) = row.map_err(storage)?;
        if let Some(rec) = rw::get::<LockRecord>(&table, "locks", k.value()).map_err(storage)?
            && tenant.is_none_or(|t| t == rec.tenant)
        {
            out.push(rec);
        }
    }
    Ok(out)
}

/// Releases every lock held by `owner` (a job whose attempt ended).
pub fn release_owned(
    txn: &WriteTransaction,
    ctx: &PlanCtx,
    fence: &mut Fence,
    owner: &str,
    touched: &mut HashSet<String>,
) -> Result<Vec<Draft>, CommandError> {
    let mut drafts = Vec::new();
    for rec in scan(txn, None)? {
        let Some(h) = rec.holder.as_ref().filter(|h| h.owner == owner) else { continue };
        if !touched.insert(rec.resource.clone()) {
            continue;
        }
        let next = next_grant(&rec, fence, ctx.now);
        let event = LockEvent::Released(LockReleased {
            lock_id: rec.id.clone(),
            resource: rec.resource.clone(),
            token: h.token,
            next,
            reason: Some("owner finished".to_owned()),
        });
        drafts.push(draft(&rec.tenant, &rec, event));
    }
    Ok(drafts)
}

/// The expiry of the lock on `resource` held with `token`, if that is still its holder and due.
pub fn expire(
    txn: &WriteTransaction,
    ctx: &PlanCtx,
    fence: &mut Fence,
    resource: &str,
    token: u64,
    touched: &mut HashSet<String>,
) -> Result<Option<Draft>, CommandError> {
    let Some(rec) = by_resource(txn, resource)? else { return Ok(None) };
    let Some(h) = rec.holder.as_ref().filter(|h| h.token == token && h.expires_ms <= ctx.now) else { return Ok(None) };
    if !touched.insert(rec.resource.clone()) {
        return Ok(None);
    }
    let next = next_grant(&rec, fence, ctx.now);
    let event = LockEvent::Expired(LockExpired {
        lock_id: rec.id.clone(),
        resource: rec.resource.clone(),
        token: h.token,
        holder: h.owner.clone(),
        next,
    });
    Ok(Some(draft(&rec.tenant, &rec, event)))
}

/// A cancelled step's job gives back the locks it holds (`job:<id>`) in the cancel's own
/// transaction: its attempt is stopped and reports nothing, so nothing else would. For the
/// commands that cancel jobs and take no other fencing token (run cancel and abort, a
/// deployment's repair): the releases read the token counter afresh.
pub fn release_cancelled(txn: &WriteTransaction, ctx: &PlanCtx, drafts: &mut Vec<Draft>) -> Result<(), CommandError> {
    use crate::domain::queue::QueueEvent;
    let jobs: Vec<String> = drafts
        .iter()
        .filter_map(|d| match QueueEvent::parse(d.kind, &d.data) {
            Some(Ok(QueueEvent::Cancelled(c))) => Some(c.job_id),
            _ => None,
        })
        .collect();
    if jobs.is_empty() {
        return Ok(());
    }
    let mut fence = Fence::read(txn)?;
    let mut touched = HashSet::new();
    for job in jobs {
        drafts.extend(release_owned(txn, ctx, &mut fence, &format!("job:{job}"), &mut touched)?);
    }
    Ok(())
}
