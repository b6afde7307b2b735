//! The projection of cache entries: the entries, their storing order, the flights of keys being
//! computed with their waiters, and the counters (hits, misses, entries, bytes).

use crate::domain::cache::CacheEvent;
use crate::domain::cache::CacheHit;
use crate::domain::cache::tables::{CACHE, CACHE_FLIGHTS, CACHE_ORDER, CacheEntry, Flight};
use crate::kernel::counters::COUNTERS;
use crate::kernel::ledger::Entry;
use crate::kernel::{ApplyError, Tx, counters};

fn bad(entry: &Entry, reason: impl std::fmt::Display) -> ApplyError {
    ApplyError::Entry { seq: entry.seq, kind: entry.kind.clone(), reason: reason.to_string() }
}

fn gauge(tx: &Tx, name: &str, delta: i64) -> Result<(), ApplyError> {
    let now = tx.counter(COUNTERS, name)? as i64;
    tx.set_counter(COUNTERS, name, (now + delta).max(0) as u64)
}

fn remove(tx: &Tx, key: &str) -> Result<bool, ApplyError> {
    let Some(old) = tx.get::<CacheEntry>(CACHE, key)? else { return Ok(false) };
    tx.remove(CACHE_ORDER, &old.order_key())?;
    tx.remove(CACHE, key)?;
    gauge(tx, "cache_entries", -1)?;
    gauge(tx, "cache_bytes", -(old.bytes as i64))?;
    Ok(true)
}

fn holder(at: &CacheHit) -> String {
    format!("{}/{}", at.run_id, at.step)
}

/// The flight of `at.key` ends if `at` holds it.
fn land(tx: &Tx, at: &CacheHit) -> Result<(), ApplyError> {
    if tx.get::<Flight>(CACHE_FLIGHTS, &at.key)?.is_some_and(|f| f.holder == holder(at)) {
        tx.remove(CACHE_FLIGHTS, &at.key)?;
    }
    Ok(())
}

pub fn apply(tx: &Tx, entry: &Entry, event: CacheEvent) -> Result<(), ApplyError> {
    match event {
        CacheEvent::Stored(e) => {
            land(tx, &CacheHit { key: e.key.clone(), run_id: e.run_id.clone(), step: e.step.clone() })?;
            remove(tx, &e.key)?;
            let bytes = serde_json::to_vec(&e.outputs).map_or(0, |v| v.len() as u64);
            let rec = CacheEntry {
                key: e.key.clone(),
                tenant: entry.tenant.clone(),
                dag: e.dag,
                step: e.step,
                run: e.run_id,
                parts: e.parts,
                outputs: e.outputs,
                bytes,
                stored_ms: entry.time,
                expires_ms: e.expires_ms,
                hits: 0,
                last_hit_ms: None,
            };
            tx.put_bytes(CACHE_ORDER, &rec.order_key(), e.key.as_bytes())?;
            gauge(tx, "cache_entries", 1)?;
            gauge(tx, "cache_bytes", bytes as i64)?;
            tx.put(CACHE, &e.key, rec)
        }
        CacheEvent::Hit(e) => {
            let mut rec =
                tx.get::<CacheEntry>(CACHE, &e.key)?.ok_or_else(|| bad(entry, format!("no cache entry {}", e.key)))?;
            rec.hits += 1;
            rec.last_hit_ms = Some(entry.time);
            counters::increment(tx, "cache:hits")?;
            tx.put(CACHE, &e.key, rec)
        }
        CacheEvent::Missed(e) => {
            tx.put(CACHE_FLIGHTS, &e.key, Flight { holder: holder(&e), waiters: vec![] })?;
            counters::increment(tx, "cache:misses")
        }
        CacheEvent::Waiting(e) => {
            let Some(mut f) = tx.take::<Flight>(CACHE_FLIGHTS, &e.key)? else { return Ok(()) };
            let me = holder(&e);
            if f.holder != me && !f.waiters.contains(&me) {
                f.waiters.push(me);
            }
            tx.put(CACHE_FLIGHTS, &e.key, f)
        }
        CacheEvent::Released(e) => land(tx, &e),
        CacheEvent::Evicted(e) => {
            for key in &e.keys {
                if !remove(tx, key)? {
                    return Err(bad(entry, format!("no cache entry {key}")));
                }
            }
            Ok(())
        }
    }
}
