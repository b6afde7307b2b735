//! The projection of lock entries: locks with their holder and waiters, lock ids, resource
//! versions, and the lock timers in the due index.

use super::{Grant, timer_key_lock};
use crate::domain::locks::tables::{LOCK_IDS, LOCKS, LockHolder, LockRecord, LockWaiter, RESOURCES};
use crate::kernel::ledger::Entry;
use crate::kernel::store::rw;
use crate::kernel::{ApplyError, counters, due};
use redb::WriteTransaction;

fn bad(entry: &Entry, reason: impl std::fmt::Display) -> ApplyError {
    ApplyError::Entry { seq: entry.seq, kind: entry.kind.clone(), reason: reason.to_string() }
}

fn r(e: impl Into<redb::Error>) -> ApplyError {
    ApplyError::Storage(e.into())
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
                due::set(txn, old.expires_ms, &timer_key_lock(&resource, old.token), false)?;
            }
            rec.holder = Some(LockHolder { owner: field("owner")?, token, acquired_ms: entry.time, expires_ms });
            due::set(txn, expires_ms, &timer_key_lock(&resource, token), true)?;
            counters::raise(txn, "fence", token)?;
            if entry.kind == "lock.acquired" {
                let n = lock_id
                    .strip_prefix("lock-")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| bad(entry, "bad lock id"))?;
                counters::raise(txn, "lock_seq", n)?;
                txn.open_table(LOCK_IDS).map_err(r)?.insert(lock_id.as_str(), resource.as_bytes()).map_err(r)?;
            }
        }
        "lock.waiting" => {
            let ttl_ms = d["ttlMs"].as_u64().ok_or_else(|| bad(entry, "no ttlMs"))?;
            rec.waiters.push(LockWaiter { owner: field("owner")?, since_ms: entry.time, ttl_ms });
        }
        "lock.released" | "lock.force_released" | "lock.expired" => {
            if let Some(old) = rec.holder.take() {
                due::set(txn, old.expires_ms, &timer_key_lock(&resource, old.token), false)?;
            }
            let next: Option<Grant> = serde_json::from_value(d["next"].clone()).map_err(|e| bad(entry, e))?;
            if let Some(g) = next {
                if rec.waiters.first().map(|w| &w.owner) != Some(&g.owner) {
                    return Err(bad(entry, "next holder is not the first waiter"));
                }
                rec.waiters.remove(0);
                due::set(txn, g.expires_ms, &timer_key_lock(&resource, g.token), true)?;
                counters::raise(txn, "fence", g.token)?;
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
