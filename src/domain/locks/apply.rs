//! The projection of lock entries: locks with their holder and waiters, lock ids, resource
//! versions, and the lock timers in the due index.

use super::{LockEvent, LockExpired, LockForceReleased, LockReleased, timer_key_lock};
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

/// Applies a lock entry.
pub fn apply(txn: &WriteTransaction, entry: &Entry, event: LockEvent) -> Result<(), ApplyError> {
    let Some((lock_id, resource)) = event.lock().map(|(i, r)| (i.to_owned(), r.to_owned())) else {
        let LockEvent::ResourceUpdated(d) = event else { unreachable!("only a resource update names no lock") };
        let mut t = txn.open_table(RESOURCES).map_err(r)?;
        rw::set_counter(&mut t, &d.resource, d.version).map_err(ApplyError::Storage)?;
        return Ok(());
    };
    let existing = {
        let t = txn.open_table(LOCKS).map_err(r)?;
        rw::get::<LockRecord>(&t, "locks", &resource).map_err(|e| ApplyError::Record(e.to_string()))?
    };
    let acquired = matches!(event, LockEvent::Acquired(_));
    let mut rec = match (acquired, existing) {
        (true, None) => LockRecord {
            id: lock_id.clone(),
            resource: resource.clone(),
            tenant: entry.tenant.clone(),
            holder: None,
            waiters: vec![],
        },
        (true, Some(_)) => return Err(bad(entry, format!("{resource} is already locked"))),
        (false, Some(rec)) => rec,
        (false, None) => return Err(bad(entry, format!("no lock on {resource}"))),
    };
    match event {
        LockEvent::Acquired(d) | LockEvent::Renewed(d) => {
            if let Some(old) = rec.holder.take() {
                due::set(txn, old.expires_ms, &timer_key_lock(&resource, old.token), false)?;
            }
            rec.holder =
                Some(LockHolder { owner: d.owner, token: d.token, acquired_ms: entry.time, expires_ms: d.expires_ms });
            due::set(txn, d.expires_ms, &timer_key_lock(&resource, d.token), true)?;
            counters::raise(txn, "fence", d.token)?;
            if acquired {
                let n = lock_id
                    .strip_prefix("lock-")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| bad(entry, "bad lock id"))?;
                counters::raise(txn, "lock_seq", n)?;
                txn.open_table(LOCK_IDS).map_err(r)?.insert(lock_id.as_str(), resource.as_bytes()).map_err(r)?;
            }
        }
        LockEvent::Waiting(d) => {
            rec.waiters.push(LockWaiter { owner: d.owner, since_ms: entry.time, ttl_ms: d.ttl_ms });
        }
        LockEvent::Released(LockReleased { next, .. })
        | LockEvent::ForceReleased(LockForceReleased { next, .. })
        | LockEvent::Expired(LockExpired { next, .. }) => {
            if let Some(old) = rec.holder.take() {
                due::set(txn, old.expires_ms, &timer_key_lock(&resource, old.token), false)?;
            }
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
        LockEvent::ResourceUpdated(_) => unreachable!("handled above"),
    }
    let mut locks = txn.open_table(LOCKS).map_err(r)?;
    if rec.holder.is_none() && rec.waiters.is_empty() {
        locks.remove(resource.as_str()).map_err(r)?;
        txn.open_table(LOCK_IDS).map_err(r)?.remove(lock_id.as_str()).map_err(r)?;
    } else {
        rw::put(&mut locks, &resource, &rec).map_err(ApplyError::Storage)?;
    }
    Ok(())
}
