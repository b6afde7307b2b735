//! Named locks on resource keys (`env:prod`, `artifact:web`): an owner, an expiry
//! (`locks.timeout`), a fencing token from the counter leases share, and FIFO waiters. A
//! release needs the holder's token; a forced release (admin) records its reason and the next
//! holder gets a new token, so the old holder is refused. A lock whose owner is `job:<id>` is
//! released when that job's attempt ends.

use crate::ledger::{Draft, Entry};
use crate::queue::plan::runtime_value;
use crate::queue::plan::{Fence, runtime_ms};
use crate::queue::timer_key;
use crate::store::command::{CommandError, Effects, PlanCtx, storage};
use crate::store::projection::ApplyError;
use crate::store::records::{LockHolder, LockRecord, LockWaiter};
use crate::store::schema::{COUNTERS, DUE, LOCK_IDS, LOCKS, RESOURCES, rw};
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashSet;

/// Locks examined by one scan (list, force release by env, release by owner) at most.
pub const LOCK_SCAN_MAX: usize = 10_000;
/// Waiters on one lock at most.
const WAITERS_MAX: usize = 1_000;
/// A lock TTL at most.
const LOCK_TTL_MAX_MS: u64 = 7 * 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockCommand {
    Acquire {
        tenant: String,
        resource: String,
        owner: String,
        ttl_ms: Option<u64>,
    },
    Release {
        tenant: Option<String>,
        lock_id: String,
        owner: String,
        token: u64,
    },
    ForceRelease {
        tenant: Option<String>,
        target: ForceTarget,
        reason: Option<String>,
        /// The fencing token each lock is forced from (lock id → token), as the operator saw
        /// it: a lock that has moved on since (to its next holder) is left alone. `None`:
        /// whatever holds it now (internal callers only).
        tokens: Option<std::collections::BTreeMap<String, u64>>,
    },
    /// A lock-guarded update of a resource: bumps its version. In `pessimistic` mode the caller
    /// must hold the resource's lock (owner and token); in `optimistic` mode it must name the
    /// version it read (compare-and-set) and needs no lock.
    Update {
        tenant: String,
        resource: String,
        owner: String,
        token: Option<u64>,
        expected_version: Option<u64>,
        note: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceTarget {
    Id(String),
    Env(String),
}

/// Whether `resource` belongs to environment `env`: `env:<env>` itself or below it.
pub fn in_env(resource: &str, env: &str) -> bool {
    resource
        .strip_prefix("env:")
        .and_then(|r| r.strip_prefix(env))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':') || rest.starts_with('/'))
}

/// Resource keys: 1–256 printable ASCII characters without spaces or `|`.
pub fn valid_resource(r: &str) -> bool {
    (1..=256).contains(&r.len()) && r.bytes().all(|b| b.is_ascii_graphic() && b != b'|')
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Grant {
    owner: String,
    token: u64,
    expires_ms: i64,
}

fn draft(tenant: &str, kind: &'static str, rec: &LockRecord, data: serde_json::Value) -> Draft {
    Draft { tenant: tenant.to_owned(), kind, subjects: vec![rec.id.clone(), rec.resource.clone()], data }
}

fn by_resource(txn: &WriteTransaction, resource: &str) -> Result<Option<LockRecord>, CommandError> {
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
                return Err(CommandError::Invalid(format!(
                    "resource {resource:?} is not 1-256 printable characters without '|'"
                )));
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
                return Err(CommandError::Conflict(format!(
                    "stale lock token {token} from {owner} for {lock_id}: it is held by {current}"
                )));
            }
            let next = next_grant(&rec, &mut fence, ctx.now);
            let data = json!({ "lockId": rec.id, "resource": rec.resource, "token": token, "next": next });
            Ok(vec![draft(&rec.tenant, "lock.released", &rec, data)].into())
        }
        LockCommand::Update { tenant, resource, owner, token, expected_version, note } => {
            let optimistic = runtime_value(txn, ctx, "locks.mode")?.as_deref() == Some("optimistic");
            let current = resource_version(txn, resource)?;
            if optimistic {
                let Some(expected) = expected_version else {
                    return Err(CommandError::Invalid(
                        "locks.mode is optimistic: an update names expectedVersion".into(),
                    ));
                };
                if *expected != current {
                    return Err(CommandError::Conflict(format!(
                        "resource {resource} is at version {current}, not {expected}: re-read and retry"
                    )));
                }
            } else {
                let held = by_resource(txn, resource)?
                    .and_then(|l| l.holder.filter(|_| l.tenant == *tenant))
                    .is_some_and(|h| h.owner == *owner && Some(h.token) == *token);
                if !held {
                    return Err(CommandError::Conflict(format!(
                        "locks.mode is pessimistic: updating {resource} needs its lock held by {owner} with its current token"
                    )));
                }
            }
            let mode = if optimistic { "optimistic" } else { "pessimistic" };
            let data =
                json!({ "resource": resource, "version": current + 1, "owner": owner, "mode": mode, "note": note });
            Ok(vec![Draft { tenant: tenant.clone(), kind: "resource.updated", subjects: vec![resource.clone()], data }]
                .into())
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
                let data = json!({ "lockId": rec.id, "resource": rec.resource, "token": holder.token,
                                   "holder": holder.owner, "reason": reason, "next": next });
                drafts.push(draft(&rec.tenant, "lock.force_released", rec, data));
            }
            if drafts.is_empty() && !moved.is_empty() {
                return Err(CommandError::Conflict(format!(
                    "nothing released: the lock has moved on since it was read: {}; look again (orch locks list)",
                    moved.join("; ")
                )));
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
        return Err(CommandError::Conflict(format!("resource {resource} is not available to lock now")));
    }
    match &rec.holder {
        Some(h) if h.owner == owner => {
            let data = json!({ "lockId": rec.id, "resource": resource, "owner": owner, "token": h.token, "expiresMs": expires_ms });
            Ok(vec![draft(tenant, "lock.renewed", &rec, data)].into())
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
            let data = json!({ "lockId": rec.id, "resource": resource, "owner": owner, "ttlMs": ttl, "position": rec.waiters.len() + 1 });
            Ok(vec![draft(tenant, "lock.waiting", &rec, data)].into())
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
    let data =
        json!({ "lockId": rec.id, "resource": resource, "owner": owner, "token": token, "expiresMs": expires_ms });
    Ok(draft(tenant, "lock.acquired", &rec, data))
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
        let data = json!({ "lockId": rec.id, "resource": rec.resource, "token": h.token, "next": next, "reason": "owner finished" });
        drafts.push(draft(&rec.tenant, "lock.released", &rec, data));
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
    let data = json!({ "lockId": rec.id, "resource": rec.resource, "token": h.token, "holder": h.owner, "next": next });
    Ok(Some(draft(&rec.tenant, "lock.expired", &rec, data)))
}

fn bad(entry: &Entry, reason: impl std::fmt::Display) -> ApplyError {
    ApplyError::Entry { seq: entry.seq, kind: entry.kind.clone(), reason: reason.to_string() }
}

fn r(e: impl Into<redb::Error>) -> ApplyError {
    ApplyError::Storage(e.into())
}

fn set_timer(txn: &WriteTransaction, due_ms: i64, resource: &str, token: u64, insert: bool) -> Result<(), ApplyError> {
    let mut due = txn.open_table(DUE).map_err(r)?;
    let key = timer_key::lock(resource, token);
    let k = (due_ms.max(0) as u64, key.as_str());
    if insert {
        due.insert(k, 0).map_err(r)?;
    } else {
        due.remove(k).map_err(r)?;
    }
    Ok(())
}

fn bump_counter(txn: &WriteTransaction, name: &str, value: u64) -> Result<(), ApplyError> {
    let mut t = txn.open_table(COUNTERS).map_err(r)?;
    if value > rw::counter(&t, name).map_err(ApplyError::Storage)? {
        rw::set_counter(&mut t, name, value).map_err(ApplyError::Storage)?;
    }
    Ok(())
}

/// Applies a lock entry; `Ok(false)` if `entry.kind` is not a lock kind.
pub fn apply(txn: &WriteTransaction, entry: &Entry) -> Result<bool, ApplyError> {
    if entry.kind == "resource.updated" {
        let resource = entry.data["resource"].as_str().ok_or_else(|| bad(entry, "no resource"))?;
        let version = entry.data["version"].as_u64().ok_or_else(|| bad(entry, "no version"))?;
        rw::set_counter(&mut txn.open_table(RESOURCES).map_err(r)?, resource, version).map_err(ApplyError::Storage)?;
        return Ok(true);
    }
    if !entry.kind.starts_with("lock.") {
        return Ok(false);
    }
    let d = &entry.data;
    let field = |k: &str| d[k].as_str().map(str::to_owned).ok_or_else(|| bad(entry, format!("no {k}")));
    let (lock_id, resource) = (field("lockId")?, field("resource")?);
    let existing = {
        let t = txn.open_table(LOCKS).map_err(r)?;
        rw::get::<LockRecord>(&t, "locks", &resource).map_err(|e| ApplyError::Record(e.to_string()))?
    };
    let mut rec = match (entry.kind.as_str(), existing) {
        ("lock.acquired", None) => LockRecord {
            id: lock_id.clone(),
            resource: resource.clone(),
            tenant: entry.tenant.clone(),
            holder: None,
            waiters: vec![],
        },
        ("lock.acquired", Some(_)) => return Err(bad(entry, format!("{resource} is already locked"))),
        (_, Some(rec)) => rec,
        (_, None) => return Err(bad(entry, format!("no lock on {resource}"))),
    };
    match entry.kind.as_str() {
        "lock.acquired" | "lock.renewed" => {
            let token = d["token"].as_u64().ok_or_else(|| bad(entry, "no token"))?;
            let expires_ms = d["expiresMs"].as_i64().ok_or_else(|| bad(entry, "no expiresMs"))?;
            if let Some(old) = rec.holder.take() {
                set_timer(txn, old.expires_ms, &resource, old.token, false)?;
            }
            rec.holder = Some(LockHolder { owner: field("owner")?, token, acquired_ms: entry.time, expires_ms });
            set_timer(txn, expires_ms, &resource, token, true)?;
            bump_counter(txn, "fence", token)?;
            if entry.kind == "lock.acquired" {
                let n = lock_id
                    .strip_prefix("lock-")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| bad(entry, "bad lock id"))?;
                bump_counter(txn, "lock_seq", n)?;
                txn.open_table(LOCK_IDS).map_err(r)?.insert(lock_id.as_str(), resource.as_bytes()).map_err(r)?;
            }
        }
        "lock.waiting" => {
            let ttl_ms = d["ttlMs"].as_u64().ok_or_else(|| bad(entry, "no ttlMs"))?;
            rec.waiters.push(LockWaiter { owner: field("owner")?, since_ms: entry.time, ttl_ms });
        }
        "lock.released" | "lock.force_released" | "lock.expired" => {
            if let Some(old) = rec.holder.take() {
                set_timer(txn, old.expires_ms, &resource, old.token, false)?;
            }
            let next: Option<Grant> = serde_json::from_value(d["next"].clone()).map_err(|e| bad(entry, e))?;
            if let Some(g) = next {
                if rec.waiters.first().map(|w| &w.owner) != Some(&g.owner) {
                    return Err(bad(entry, "next holder is not the first waiter"));
                }
                rec.waiters.remove(0);
                set_timer(txn, g.expires_ms, &resource, g.token, true)?;
                bump_counter(txn, "fence", g.token)?;
                rec.holder = Some(LockHolder {
                    owner: g.owner,
                    token: g.token,
                    acquired_ms: entry.time,
                    expires_ms: g.expires_ms,
                });
            }
        }
        other => return Err(bad(entry, format!("unknown lock entry {other}"))),
    }
    let mut locks = txn.open_table(LOCKS).map_err(r)?;
    if rec.holder.is_none() && rec.waiters.is_empty() {
        locks.remove(resource.as_str()).map_err(r)?;
        txn.open_table(LOCK_IDS).map_err(r)?.remove(lock_id.as_str()).map_err(r)?;
    } else {
        rw::put(&mut locks, &resource, &rec).map_err(ApplyError::Storage)?;
    }
    Ok(true)
}
