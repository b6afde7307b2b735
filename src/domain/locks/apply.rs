//! The projection of lock entries: locks with their holder and waiters, lock ids, resource
//! versions, and the lock timers in the due index.

use super::{LockEvent, LockExpired, LockForceReleased, LockReleased, timer_key_lock};
use crate::domain::locks::tables::{LOCK_IDS, LOCKS, LockHolder, LockRecord, LockWaiter, RESOURCES};
use crate::kernel::ledger::Entry;
use crate::kernel::{ApplyError, Tx, counters, due};

fn bad(entry: &Entry, reason: impl std::fmt::Display) -> ApplyError {
    ApplyError::Entry { seq: entry.seq, kind: entry.kind.clone(), reason: reason.to_string() }
}

/// Applies a lock entry.
pub fn apply(tx: &Tx, entry: &Entry, event: LockEvent) -> Result<(), ApplyError> {
    let Some((lock_id, resource)) = event.lock().map(|(i, r)| (i.to_owned(), r.to_owned())) else {
        let LockEvent::ResourceUpdated(d) = event else { unreachable!("only a resource update names no lock") };
        return tx.set_counter(RESOURCES, &d.resource, d.version);
    };
    let existing = tx.get::<LockRecord>(LOCKS, &resource)?;
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
                due::set(tx, old.expires_ms, &timer_key_lock(&resource, old.token), false)?;
            }
            rec.holder =
                Some(LockHolder { owner: d.owner, token: d.token, acquired_ms: entry.time, expires_ms: d.expires_ms });
            due::set(tx, d.expires_ms, &timer_key_lock(&resource, d.token), true)?;
            counters::raise(tx, "fence", d.token)?;
            if acquired {
                let n = lock_id
                    .strip_prefix("lock-")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| bad(entry, "bad lock id"))?;
                counters::raise(tx, "lock_seq", n)?;
                tx.put_bytes(LOCK_IDS, &lock_id, resource.as_bytes())?;
            }
        }
        LockEvent::Waiting(d) => {
            rec.waiters.push(LockWaiter { owner: d.owner, since_ms: entry.time, ttl_ms: d.ttl_ms });
        }
        LockEvent::Released(LockReleased { next, .. })
        | LockEvent::ForceReleased(LockForceReleased { next, .. })
        | LockEvent::Expired(LockExpired { next, .. }) => {
            if let Some(old) = rec.holder.take() {
                due::set(tx, old.expires_ms, &timer_key_lock(&resource, old.token), false)?;
            }
            if let Some(g) = next {
                if rec.waiters.first().map(|w| &w.owner) != Some(&g.owner) {
                    return Err(bad(entry, "next holder is not the first waiter"));
                }
                rec.waiters.remove(0);
                due::set(tx, g.expires_ms, &timer_key_lock(&resource, g.token), true)?;
                counters::raise(tx, "fence", g.token)?;
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
    if rec.holder.is_none() && rec.waiters.is_empty() {
        tx.remove(LOCKS, &resource)?;
        tx.remove(LOCK_IDS, &lock_id)
    } else {
        tx.put(LOCKS, &resource, rec)
    }
}
