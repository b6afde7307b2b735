//! The step result cache over HTTP: its entries (the tenant's), `explain` (a step's fingerprint
//! part by part against the nearest entry: the runbook's "fingerprint churn"), and purge.

use crate::api::extract::{Auth, QueryArgs};
use crate::api::handlers::submit;
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::Scope;
use crate::clock::rfc3339;
use crate::domain::cache::tables::CacheEntry;
use crate::domain::cache::{self, CacheCommand, Parts};
use crate::domain::runs::spec;
use crate::machine::Command;
use crate::machine::read;
use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    dag: Option<String>,
}

fn entry_json(e: &CacheEntry, now: i64) -> Value {
    json!({
        "key": e.key, "tenant": e.tenant, "dag": e.dag, "step": e.step, "run": e.run,
        "storedAt": rfc3339(e.stored_ms), "expiresAt": rfc3339(e.expires_ms), "expired": e.expires_ms <= now,
        "ageMs": now - e.stored_ms, "hits": e.hits, "lastHitAt": e.last_hit_ms.map(rfc3339), "bytes": e.bytes,
        "parts": e.parts,
    })
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    QueryArgs(q): QueryArgs<ListQuery>,
) -> ApiResult<Json<Value>> {
    let p = auth.require(Scope::Read)?;
    let txn = state.store.read()?;
    let mut entries = read::cache_entries(&txn, p.tenant.as_deref(), q.dag.as_deref())?;
    entries.sort_by_key(|e| (e.stored_ms, e.key.clone()));
    let now = state.clock.now_ms();
    let counters = txn.open_table(crate::kernel::counters::COUNTERS).ok();
    let metric = |name| counters.as_ref().and_then(|t| crate::kernel::counters::get(t, name).ok());
    Ok(Json(json!({
        "entries": entries.iter().map(|e| entry_json(e, now)).collect::<Vec<_>>(),
        "hits": metric("cache:hits"), "misses": metric("cache:misses"),
        "limits": { "entries": cache::ENTRIES_MAX, "bytes": cache::BYTES_MAX, "entryBytes": cache::ENTRY_BYTES_MAX },
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    run: String,
    step: String,
}

/// A step's fingerprint and its lookup, against the nearest other entry of the same DAG and
/// step (fewest differing parts, newest first): which parts differ, with both values.
pub async fn explain(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    QueryArgs(q): QueryArgs<ExplainQuery>,
) -> ApiResult<Json<Value>> {
    let p = auth.require(Scope::Read)?;
    let txn = state.store.read()?;
    let run = read::run(&txn, &q.run)?
        .filter(|r| p.sees(&r.tenant))
        .ok_or_else(|| Problem::not_found(format!("run {}", q.run)))?;
    let rec = read::steps(&txn, &run.id)?
        .into_iter()
        .find(|s| s.name == q.step)
        .ok_or_else(|| Problem::not_found(format!("step {} of {}", q.step, run.id)))?;
    let text = read::dag_spec(&txn, &run.dag, run.version)?
        .ok_or_else(|| Problem::internal(format!("spec of {}@{} is missing", run.dag, run.version)))?;
    let c = spec::compile_registered(&text).map_err(Problem::internal)?;
    let (_, s) = c.step(&q.step).ok_or_else(|| Problem::not_found(format!("step {}", q.step)))?;
    let Some(ttl) = s.cache_ttl_ms.filter(|_| s.checkpoint.is_none()) else {
        return Ok(Json(json!({ "run": run.id, "step": q.step, "cached": false,
            "explanation": format!("step {} is not cached: give it cache = {{ ttl = \"1h\" }} or the DAG [execution.caching]", q.step) })));
    };
    // Its parts: the entry it stored or hit, else from its job's inputs.
    let own = rec.cache.as_ref().map(|c| read::cache_entry(&txn, &c.key)).transpose()?.flatten();
    let parts: Option<Parts> = match &own {
        Some(e) => Some(e.parts.clone()),
        None => rec.job.as_ref().map(|j| read::job(&txn, j)).transpose()?.flatten().map(|j| {
            let digest = run.plugins.get(&s.plugin).map(String::as_str);
            let step = cache::Step {
                tenant: &run.tenant,
                dag: &run.dag,
                version: run.version,
                plugin: &s.plugin,
                digest,
                kind: s.kind.as_deref(),
                secrets: &s.secrets,
            };
            cache::parts(&step, &j.payload["inputs"])
        }),
    };
    let Some(parts) = parts else {
        return Ok(Json(json!({ "run": run.id, "step": q.step, "cached": true,
            "explanation": "the step has not been looked up yet (it has not been queued)" })));
    };
    let key = cache::key(&parts);
    let now = state.clock.now_ms();
    let differs = |other: &Parts| -> Vec<Value> {
        let names: std::collections::BTreeSet<&String> = parts.keys().chain(other.keys()).collect();
        names
            .into_iter()
            .filter(|n| parts.get(*n) != other.get(*n))
            .map(|n| json!({ "part": n, "this": parts.get(n), "nearest": other.get(n) }))
            .collect()
    };
    let nearest = read::cache_entries(&txn, Some(&run.tenant), Some(&run.dag))?
        .into_iter()
        .filter(|e| e.step == q.step && e.key != key)
        .min_by_key(|e| (differs(&e.parts).len(), -e.stored_ms));
    let lookup = rec.cache.as_ref().map(|c| if c.hit { "hit" } else { "miss" });
    let diff = nearest.as_ref().map(|n| differs(&n.parts)).unwrap_or_default();
    let explanation = match (lookup, &nearest) {
        (Some("hit"), _) => format!("hit: entry {key} (stored by {})", own.as_ref().map_or("?", |e| e.run.as_str())),
        (_, None) => "miss: no other entry of this DAG's step to compare with".to_owned(),
        (_, Some(n)) => format!(
            "miss: nearest entry {} (from {}) differs in {}",
            n.key,
            n.run,
            diff.iter().filter_map(|d| d["part"].as_str()).collect::<Vec<_>>().join(", ")
        ),
    };
    Ok(Json(json!({
        "run": run.id, "step": q.step, "cached": true, "ttlMs": ttl, "key": key, "lookup": lookup, "parts": parts,
        "entry": own.as_ref().map(|e| entry_json(e, now)),
        "nearest": nearest.as_ref().map(|e| entry_json(e, now)), "differs": diff, "explanation": explanation,
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    dag: Option<String>,
}

pub async fn purge(State(state): State<Arc<AppState>>, auth: Auth, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    let p = auth.require(Scope::Operate)?;
    let req: PurgeBody = if body.is_empty() {
        PurgeBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Problem::invalid("dag", format!("bad purge body: {e}")))?
    };
    let c = submit(&state, p, Command::Cache(CacheCommand::Purge { tenant: p.tenant.clone(), dag: req.dag })).await?;
    let purged: usize = c.entries.iter().map(|e| e.data["keys"].as_array().map_or(0, Vec::len)).sum();
    Ok(Json(json!({ "purged": purged })))
}
