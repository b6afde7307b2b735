//! Planning the cache: a lookup before a step is queued (by the engine's planner), the flight
//! of a key being computed and its waiters, storing a step's outputs after it succeeded (with
//! the evictions that keep the bounds), and purges.

use crate::domain::cache::tables::{CACHE, CACHE_FLIGHTS, CACHE_ORDER, CacheEntry, Flight};
use crate::domain::cache::{
    BYTES_MAX, CacheCommand, CacheEvent, CacheEvicted, CacheHit, CacheStored, ENTRIES_MAX, ENTRY_BYTES_MAX,
};
use crate::kernel::counters::COUNTERS;
use crate::kernel::event::Event;
use crate::kernel::ledger::Draft;
use crate::kernel::store::{Record, rw};
use crate::kernel::{CommandError, PlanCtx, storage};
use redb::{ReadableTable, WriteTransaction};
use std::collections::{HashMap, HashSet, VecDeque};

/// What this command has stored and evicted so far (its drafts are not applied yet).
#[derive(Default)]
struct Pending {
    entries: i64,
    bytes: i64,
    gone: HashSet<String>,
    /// Entries stored by this command, for the waiters it wakes.
    fresh: HashMap<String, CacheEntry>,
}

/// The flights as this command left them: `None` for one it ended.
#[derive(Default)]
struct Flights(HashMap<String, Option<Flight>>);

/// Flights this command ended, with their waiters, to be woken before it commits.
#[derive(Default)]
struct Wakes(VecDeque<(String, Vec<String>)>);

/// The live entry under `key` (not expired at `now`, not evicted by this command).
pub fn lookup(txn: &WriteTransaction, ctx: &mut PlanCtx, key: &str) -> Result<Option<CacheEntry>, CommandError> {
    let pending = ctx.scratch.get::<Pending>();
    if pending.gone.contains(key) {
        return Ok(None);
    }
    if let Some(e) = pending.fresh.get_mut(key) {
        let found = e.clone();
        e.hits += 1;
        return Ok(Some(found));
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

/// The flight of `key`, as this command has it.
fn flight<'c>(txn: &WriteTransaction, ctx: &'c mut PlanCtx, key: &str) -> Result<&'c mut Option<Flight>, CommandError> {
    let flights = &mut ctx.scratch.get::<Flights>().0;
    if !flights.contains_key(key) {
        let stored = rw::get::<Flight>(&txn.open_table(CACHE_FLIGHTS).map_err(storage)?, "cache_flights", key)
            .map_err(storage)?;
        flights.insert(key.to_owned(), stored);
    }
    Ok(flights.get_mut(key).expect("inserted above"))
}

fn holder(at: &CacheHit) -> String {
    format!("{}/{}", at.run_id, at.step)
}

/// A lookup that missed: the step at `at` computes the key (its flight begins).
pub fn begin(txn: &WriteTransaction, ctx: &mut PlanCtx, tenant: &str, at: CacheHit) -> Result<Draft, CommandError> {
    *flight(txn, ctx, &at.key)? = Some(Flight { holder: holder(&at), waiters: vec![] });
    Ok(looked_up(tenant, false, at))
}

/// A lookup that missed while another step computes the key: the step at `at` waits for it.
/// The computing step (`run/step`) and the draft, or `None` if no other step computes it.
pub fn wait(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: &str,
    at: &CacheHit,
) -> Result<Option<(String, Draft)>, CommandError> {
    let me = holder(at);
    let Some(f) = flight(txn, ctx, &at.key)?.as_mut().filter(|f| f.holder != me) else { return Ok(None) };
    if !f.waiters.contains(&me) {
        f.waiters.push(me);
    }
    let computing = f.holder.clone();
    let subjects = vec![at.run_id.clone(), at.step.clone(), at.key.clone()];
    Ok(Some((computing, CacheEvent::Waiting(at.clone()).draft(tenant, subjects))))
}

/// The step at `at` is done with the key it computed (`stored`: its outputs are stored under it,
/// in this command's `cache.stored`): the flight ends and its waiters are woken. The draft of a
/// release (`cache.released`) when nothing was stored; nothing if the step held no flight.
pub fn end(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: &str,
    at: &CacheHit,
    stored: bool,
) -> Result<Option<Draft>, CommandError> {
    let slot = flight(txn, ctx, &at.key)?;
    if slot.as_ref().is_none_or(|f| f.holder != holder(at)) {
        return Ok(None);
    }
    let ended = slot.take().expect("checked above");
    ctx.scratch.get::<Wakes>().0.push_back((at.key.clone(), ended.waiters));
    let subjects = vec![at.run_id.clone(), at.step.clone(), at.key.clone()];
    Ok((!stored).then(|| CacheEvent::Released(at.clone()).draft(tenant, subjects)))
}

/// The next flight this command ended: its key and waiters (`run/step`), to look it up again.
pub fn next_wake(ctx: &mut PlanCtx) -> Option<(String, Vec<String>)> {
    ctx.scratch.get::<Wakes>().0.pop_front()
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
    let at = CacheHit { key: stored.key.clone(), run_id: stored.run_id.clone(), step: stored.step.clone() };
    if bytes > ENTRY_BYTES_MAX {
        return Ok(end(txn, ctx, tenant, &at, false)?.into_iter().collect());
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
    pending.gone.remove(&stored.key);
    let entry = CacheEntry {
        key: stored.key.clone(),
        tenant: tenant.to_owned(),
        dag: stored.dag.clone(),
        step: stored.step.clone(),
        run: stored.run_id.clone(),
        parts: stored.parts.clone(),
        outputs: stored.outputs.clone(),
        bytes: bytes as u64,
        stored_ms: ctx.now,
        expires_ms: stored.expires_ms,
        hits: 0,
        last_hit_ms: None,
    };
    pending.fresh.insert(stored.key.clone(), entry);
    let subjects = vec![stored.run_id.clone(), stored.step.clone(), stored.key.clone()];
    drafts.push(CacheEvent::Stored(stored).draft(tenant, subjects));
    end(txn, ctx, tenant, &at, true)?;
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
