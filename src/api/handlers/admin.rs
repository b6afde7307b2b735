//! Appliance-level routes: health, status, the ledger and `db verify`.

use crate::api::dto;
use crate::api::extract::{Auth, QueryArgs};
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::Scope;
use crate::clock::rfc3339;
use crate::domain::approvals::tables::ApprovalState;
use crate::kernel::store::SCHEMA_VERSION;
use crate::kernel::verify;
use crate::machine::read;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;

/// Liveness, readiness and queue depth; unauthenticated so that probes need no secret.
pub async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<dto::Health>) {
    let fault = state.store.fault();
    let damage = state.store.damage();
    let checking = state.store.checking();
    let store_ok = state.store.read().is_ok() && fault.is_none() && damage.is_none() && !checking;
    let writer_ok = state.writer.stats().alive();
    let ready = store_ok && writer_ok;
    let reason = match (&fault, store_ok, writer_ok) {
        _ if damage.is_some() => {
            Some(format!("the store is damaged and takes no writes: {}", damage.as_deref().unwrap_or_default()))
        }
        _ if checking => Some("checking the ledger's chain after an unclean stop".to_owned()),
        (Some(f), _, _) => Some(format!("the store cannot write: {f}")),
        (None, false, _) => Some("the store cannot be read".to_owned()),
        (None, true, false) => Some("the store writer has stopped".to_owned()),
        _ => None,
    };
    let health = dto::Health {
        status: if ready { "ok" } else { "degraded" }.to_owned(),
        live: true,
        ready,
        checks: dto::HealthChecks { store: store_ok, writer: writer_ok, quarantined_bundles: quarantined(&state) },
        queue_depth: queue_depth(&state),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        reason,
    };
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(health))
}

/// Names of quarantined bundles, with their reasons.
fn quarantined(state: &AppState) -> Vec<String> {
    let Ok(txn) = state.store.read() else { return vec![] };
    read::bundles(&txn)
        .unwrap_or_default()
        .iter()
        .filter_map(|b| b["quarantined"].as_str().map(|r| format!("{}: {r}", b["name"].as_str().unwrap_or("?"))))
        .collect()
}

/// Jobs waiting for dispatch (ready or delayed) over every type.
fn queue_depth(state: &AppState) -> u64 {
    let Ok(txn) = state.store.read() else { return 0 };
    read::queues(&txn).map(|qs| qs.iter().map(|(_, q)| q.ready + q.delayed).sum()).unwrap_or(0)
}

pub async fn status(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<dto::Status>> {
    let p = auth.require(Scope::Read)?;
    let txn = state.store.read()?;
    let mut pending = read::approvals(&txn, p.tenant.as_deref(), Some(ApprovalState::Pending), usize::MAX)?;
    pending.sort_by_key(|a| (a.requested_ms, a.id.len(), a.id.clone()));
    pending.truncate(100);
    let waiting_approval = pending
        .iter()
        .map(|a| {
            format!(
                "{}/{}: approval {} ({} of {}), requested {} by {}",
                a.run,
                a.step,
                a.id,
                a.approvals(),
                a.approvers,
                rfc3339(a.requested_ms),
                a.requested_by
            )
        })
        .collect();
    let (height, head_hash) = read::ledger_head(&txn)?;
    let stats = state.writer.stats();
    Ok(Json(dto::Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        appliance_id: read::appliance_id(&txn)?,
        dev: state.dev,
        started_at: rfc3339(state.started_ms),
        uptime_seconds: state.started.elapsed().as_secs(),
        store: dto::StoreStatus {
            path: state.store.path().display().to_string(),
            size_bytes: state.store.file_size(),
            schema_version: SCHEMA_VERSION,
        },
        ledger: dto::LedgerStatus { height, head_hash },
        writer: dto::WriterStatus {
            alive: stats.alive(),
            commits: stats.commits(),
            commands: stats.commands.load(std::sync::atomic::Ordering::Relaxed),
            backlog: state.writer.backlog() as u64,
        },
        queue_depth: queue_depth(&state),
        listeners: state.listeners.clone(),
        quarantined_bundles: quarantined(&state),
        waiting_approval,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifyQuery {
    /// Only the ledger's chain, on two threads, without the replay.
    #[serde(default)]
    chain_only: bool,
}

pub async fn db_verify(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    QueryArgs(q): QueryArgs<VerifyQuery>,
) -> ApiResult<Json<dto::DbVerify>> {
    if !(auth.0.has(Scope::Admin) || auth.0.has(Scope::Audit)) || auth.0.tenant.is_some() && !auth.0.has(Scope::Admin) {
        return Err(Problem::forbidden());
    }
    let store = state.store.clone();
    let report = tokio::task::spawn_blocking(move || {
        crate::kernel::store::guard(store.path(), || {
            let txn = store.read()?;
            if q.chain_only { verify::verify_chain(&txn, 2) } else { crate::machine::verify(&txn) }
        })
    })
    .await
    .map_err(Problem::internal)??;
    Ok(Json(report.into()))
}

/// Ledger pages are bounded; a client pages with `after`.
const LEDGER_PAGE_MAX: usize = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

/// Ledger entries after a sequence. A tenant's auditor sees only its tenant's entries.
pub async fn ledger(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    QueryArgs(q): QueryArgs<LedgerQuery>,
) -> ApiResult<Json<dto::LedgerPage>> {
    let principal = auth.require(Scope::Audit)?;
    let limit = q.limit.unwrap_or(LEDGER_PAGE_MAX).clamp(1, LEDGER_PAGE_MAX);
    let txn = state.store.read()?;
    let page = read::ledger_after(&txn, q.after.unwrap_or(0), limit)?;
    let next_after = (page.len() == limit).then(|| page.last().map(|e| e.seq)).flatten();
    let entries = page.into_iter().filter(|e| principal.sees(&e.tenant)).collect();
    Ok(Json(dto::LedgerPage { entries, next_after }))
}

/// Prometheus text exposition (scope `orchestrator:read`).
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    headers: axum::http::HeaderMap,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let p = auth.require(Scope::Read)?;
    let scrape = crate::telemetry::metrics::Scrape { config: &state.config, now_ms: state.clock.now_ms() };
    let mut body = crate::telemetry::metrics::render(&state.store, &state.writer, &scrape)?;
    if !state.sees_all_tenants(p) {
        // On a multi-tenant appliance a token sees no job type names: per-type series are
        // summed over types.
        body = crate::telemetry::metrics::without_label(&body, "type");
    }
    // OpenMetrics for scrapers that ask for it (Prometheus does); the classic text format
    // otherwise.
    let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (content_type, body) = if accept.contains("application/openmetrics-text") {
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", body)
    } else {
        ("text/plain; version=0.0.4; charset=utf-8", crate::telemetry::metrics::to_prometheus_text(&body))
    };
    Ok(([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response())
}

/// `POST /admin/restart`: a dev appliance drains and starts again in place (same process, same
/// terminal, same state directory). A production appliance is restarted by its service manager.
pub async fn restart(
    State(state): State<Arc<AppState>>,
    auth: Auth,
) -> ApiResult<(axum::http::StatusCode, Json<serde_json::Value>)> {
    auth.require(Scope::Admin)?;
    if !state.dev {
        return Err(Problem::new(
            axum::http::StatusCode::CONFLICT,
            "restarted_by_service_manager",
            "a production appliance is restarted by systemd: systemctl restart stella.service",
        ));
    }
    tracing::info!("restart requested: draining, then starting again in place");
    let _ = state.restart.send(true);
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(serde_json::json!({ "restarting": true, "startedAt": rfc3339(state.started_ms) })),
    ))
}
