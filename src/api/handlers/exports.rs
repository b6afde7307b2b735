//! `POST /exports` (scope `orchestrator:audit`): writes a signed export pack to a path on the
//! appliance host — like bundle import, packs cross the gap by hand — then ledgers it
//! (`export.created`) so the next pack names this one's head.

use crate::api::extract::{Auth, JsonBody};
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::Scope;
use crate::export::{self, Signal};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExportRequest {
    /// The pack to create on the appliance host (absolute; it must not exist).
    pub out: String,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    /// `ledger,logs,metrics,traces` (default: all).
    #[serde(default)]
    pub signals: Option<String>,
    #[serde(default)]
    pub tar: bool,
    #[serde(default)]
    pub progress_id: Option<String>,
}

/// Where the pack goes. The local administrator names any absolute path (it owns the host's
/// files anyway); a token's export goes under the export directory (`<lib>/exports`): a
/// relative name, or an absolute path inside it.
fn export_path(state: &AppState, token: bool, out: &str) -> Result<PathBuf, Problem> {
    let given = PathBuf::from(out);
    if !token {
        if !given.is_absolute() {
            return Err(Problem::invalid("out", "must be an absolute path on the appliance host"));
        }
        return Ok(given);
    }
    let dir = state.lib.join("exports");
    std::fs::create_dir_all(&dir).map_err(Problem::internal)?;
    let dir = std::fs::canonicalize(&dir).map_err(Problem::internal)?;
    let refuse = || {
        Problem::new(
            StatusCode::FORBIDDEN,
            "outside_export_dir",
            format!("a token's export is written only under {}: name the pack relative to it", dir.display()),
        )
    };
    let rel = if given.is_absolute() { given.strip_prefix(&dir).map_err(|_| refuse())?.to_owned() } else { given };
    // One name: a pack directly in the export directory, never inside another pack.
    let mut parts = rel.components();
    if !matches!((parts.next(), parts.next()), (Some(std::path::Component::Normal(_)), None)) {
        return Err(refuse());
    }
    Ok(dir.join(rel))
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<ExportRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let p = auth.require(Scope::Audit)?;
    let time = |field: &'static str, v: &Option<String>| {
        v.as_deref().map(crate::clock::parse_time).transpose().map_err(|e| Problem::invalid(field, e))
    };
    let (from_ms, to_ms) = (time("from", &req.from)?, time("to", &req.to)?);
    let signals = match &req.signals {
        Some(s) => Signal::parse_list(s).map_err(|e| Problem::invalid("signals", e))?,
        None => Signal::ALL.to_vec(),
    };
    if !state.sees_all_tenants(p) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "an export pack holds every tenant's ledger and logs: on an appliance with several tenants only its \
             administrator exports",
        ));
    }
    let out = export_path(&state, p.tenant.is_some(), &req.out)?;
    let progress = crate::api::handlers::progress_for(&state, req.progress_id.as_deref())?;
    let request = export::Request { from_ms, to_ms, out: out.clone(), signals, tar: req.tar };
    let exporter = crate::app::export::Exporter {
        store: &state.store,
        writer: &state.writer,
        clock: &state.clock,
        lib: &state.lib,
        log_dir: &state.log_dir,
        metrics_retention_ms: state.config.telemetry.metrics_retention_ms,
        config: &state.config,
        actor: crate::api::handlers::actor(p),
    };
    let manifest = crate::app::export::export(&exporter, request, progress).await?;
    Ok((StatusCode::CREATED, Json(json!({ "out": out, "manifest": manifest }))))
}
