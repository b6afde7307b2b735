//! Planning the cache: a lookup before a step is queued (by the engine's planner), storing a
//! step's outputs after it succeeded (with the evictions that keep the bounds), and purges.

use crate::domain::cache::tables::{CACHE, CACHE_ORDER, CacheEntry};
use crate::domain::cache::{
    BYTES_MAX, CacheCommand, CacheEvent, CacheEvicted, CacheHit, CacheStored, ENTRIES_MAX, ENTRY_BYTES_MAX,
};
use crate::kernel::counters::COUNTERS;
use crate::kernel::event::Event;
use crate::kernel::ledger::Draft;
use crate::kernel::store::{Record, rw};
use crate::kernel::{CommandError, PlanCtx, storage};
use redb::{ReadableTable, WriteTransaction};
use std::collections::HashSet;

/// What this command has stored and evicted so far (its drafts are not applied yet).
#[derive(Default)]
struct Pending {
    entries: i64,
    bytes: i64,
    gone: HashSet<String>,
}

/// The live entry under `key` (not expired at `now`, not evicted by this command).
pub fn lookup(txn: &WriteTransaction, ctx: &mut PlanCtx, key: &str) -> Result<Option<CacheEntry>, CommandError> {
    if ctx.scratch.get::<Pending>().gone.contains(key) {
        return Ok(None);
    }
    let rec = rw::get::<CacheEntry>(&txn.open_table(CACHE).map_err(storage)?, "cache", key).map_err(storage)?;
    Ok(rec.filter(|e| e.expires_ms > ctx.now))
}

/// The drafts of a lookup: a hit on `key`, or a miss.
pub fn looked_up(tenant: &str, hit: bool, e: CacheHit) -> Draft {
    let subjects = vec![e.run_id.clone(), e.step.clone(), e.key.clone()];
    let event = if hit { CacheEvent::Hit(e) } else { CacheEvent::Missed(e) };
    event.draft(tenant, subjects)
}

/// Stores a step's outputs (nothing if they are larger than an entry may be), evicting the
/// oldest entries first while the cache would hold more than its bounds.
pub fn store(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: &str,
    stored: CacheStored,
) -> Result<Vec<Draft>, CommandError> {
    let bytes = serde_json::to_vec(&stored.outputs).map_or(0, |v| v.len());
    if bytes > ENTRY_BYTES_MAX {
        return Ok(vec![]);
    }
    let counters = txn.open_table(COUNTERS).map_err(storage)?;
    let count = crate::kernel::counters::get(&counters, "cache_entries").map_err(storage)? as i64;
    let held = crate::kernel::counters::get(&counters, "cache_bytes").map_err(storage)? as i64;
    let order = txn.open_table(CACHE_ORDER).map_err(storage)?;
    let cache = txn.open_table(CACHE).map_err(storage)?;
    let pending = ctx.scratch.get::<Pending>();
    let (mut count, mut held) = (count + pending.entries + 1, held + pending.bytes + bytes as i64);
    let mut evict = Vec::new();
    let mut freed = 0i64;
    if count > ENTRIES_MAX as i64 || held > BYTES_MAX as i64 {
        for row in order.iter().map_err(storage)? {
            if count <= ENTRIES_MAX as i64 && held <= BYTES_MAX as i64 {
                break;
            }
            let (_, v) = row.map_err(storage)?;
            let key = String::from_utf8_lossy(v.value()).into_owned();
            if key == stored.key || pending.gone.contains(&key) {
                continue;
            }
            let old = rw::get::<CacheEntry>(&cache, "cache", &key).map_err(storage)?;
            let Some(old) = old else { continue };
            count -= 1;
            held -= old.bytes as i64;
            freed += old.bytes as i64;
            pending.gone.insert(key.clone());
            evict.push(key);
        }
    }
    let mut drafts = Vec::new();
    if !evict.is_empty() {
        pending.entries -= evict.len() as i64;
        let e = CacheEvent::Evicted(CacheEvicted { keys: evict.clone(), reason: "capacity".into() });
        drafts.push(e.draft("", evict));
    }
    pending.entries += 1;
    pending.bytes += bytes as i64 - freed;
    let subjects = vec![stored.run_id.clone(), stored.step.clone(), stored.key.clone()];
    drafts.push(CacheEvent::Stored(stored).draft(tenant, subjects));
    Ok(drafts)
}

pub fn plan(cmd: &CacheCommand, txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<Vec<Draft>, CommandError> {
    match cmd {
        CacheCommand::Purge { tenant, dag } => {
            let cache = txn.open_table(CACHE).map_err(storage)?;
            let mut keys = Vec::new();
            for row in cache.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                let e = CacheEntry::from_json_bytes(v.value()).map_err(storage)?;
                if tenant.as_deref().is_none_or(|t| t == e.tenant) && dag.as_deref().is_none_or(|d| d == e.dag) {
                    keys.push(k.value().to_owned());
                }
            }
            let gone = &mut ctx.scratch.get::<Pending>().gone;
            keys.retain(|k| gone.insert(k.clone()));
            if keys.is_empty() {
                return Ok(vec![]);
            }
            let event = CacheEvent::Evicted(CacheEvicted { keys: keys.clone(), reason: "purge".into() });
            Ok(vec![event.draft(tenant.as_deref().unwrap_or(""), keys)])
        }
    }
}
