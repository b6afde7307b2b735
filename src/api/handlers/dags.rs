//! DAG versions over HTTP: list, show, disable, enable, roll back, and — in dev mode only —
//! register from a spec text (marked unsigned in the ledger) until signed DAG bundles land.

use crate::api::dto;
use crate::api::extract::{Auth, JsonBody};
use crate::api::handlers::submit;
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::Scope;
use crate::domain::runs::DagAction;
use crate::domain::runs::RunCommand;
use crate::domain::runs::ScheduleEvent;
use crate::domain::runs::spec;
use crate::kernel::event::Event;
use crate::machine::Command;
use crate::machine::read;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use std::sync::Arc;

pub async fn list(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<dto::DagList>> {
    auth.require(Scope::Read)?;
    let dags = read::dags(&state.store.read()?)?;
    Ok(Json(dto::DagList { dags: dags.iter().map(dto::Dag::from_record).collect() }))
}

fn dag(state: &AppState, name: &str) -> ApiResult<dto::Dag> {
    read::dags(&state.store.read()?)?
        .iter()
        .find(|d| d.name == name)
        .map(dto::Dag::from_record)
        .ok_or_else(|| Problem::not_found(format!("DAG {name}")))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShowQuery {
    #[serde(default)]
    pub spec: bool,
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<ShowQuery>,
) -> ApiResult<Json<dto::Dag>> {
    auth.require(Scope::Read)?;
    let mut d = dag(&state, &name)?;
    if q.spec {
        d.spec = crate::domain::runs::tables::dag_spec(&state.store.read()?, &name, d.active)?;
    }
    Ok(Json(d))
}

pub async fn register(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::DagRegister>,
) -> ApiResult<(StatusCode, Json<dto::Dag>)> {
    let p = auth.require(Scope::Admin)?;
    if !state.dev {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "signed_bundle_required",
            "outside dev mode DAGs enter only as signed bundles (not available yet); this daemon was not started with --dev",
        ));
    }
    let installed = read::installed_plugins(&state.store.read()?)?;
    let compiled = spec::compile(&req.spec, &installed).map_err(|e| Problem::invalid("spec", e.to_string()))?;
    let name = compiled.name.clone();
    let c =
        submit(&state, p, Command::Run(RunCommand::RegisterDag { name: name.clone(), spec: req.spec, unsigned: true }))
            .await?;
    let status = if c.entries.is_empty() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(dag(&state, &name)?)))
}

pub async fn version_action(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<dto::Dag>> {
    let p = auth.require(Scope::Admin)?;
    let req: dto::DagVersionAction = if body.is_empty() {
        Default::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Problem::invalid("version", e.to_string()))?
    };
    let action = match action.as_str() {
        "disable" => DagAction::Disable,
        "enable" => DagAction::Enable,
        "rollback" => DagAction::Rollback,
        other => return Err(Problem::not_found(format!("DAG action {other:?} (disable, enable, rollback)"))),
    };
    submit(&state, p, Command::Run(RunCommand::DagVersion { name: name.clone(), version: req.version, action }))
        .await?;
    Ok(Json(dag(&state, &name)?))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginRegister {
    /// A plugin directory on the appliance host (with `plugin.toml`).
    pub dir: String,
}

/// `GET /plugins`: installed plugins and their sealed digests.
pub async fn plugins(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<serde_json::Value>> {
    auth.require(Scope::Read)?;
    let list: Vec<serde_json::Value> = read::plugins(&state.store.read()?)?
        .into_iter()
        .map(|(name, mut rec)| {
            rec["name"] = serde_json::json!(name);
            rec
        })
        .collect();
    Ok(Json(serde_json::json!({ "plugins": list })))
}

/// `POST /plugins` (dev mode only): check a local plugin directory, copy it into the sealed
/// store and register it, marked unsigned.
pub async fn register_plugin(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<PluginRegister>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let p = auth.require(Scope::Admin)?;
    if !state.dev {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "signed_bundle_required",
            "outside dev mode plugins enter only as signed bundles (not available yet); this daemon was not started with --dev",
        ));
    }
    let lib = state.lib.clone();
    let dir = std::path::PathBuf::from(&req.dir);
    let checked = tokio::task::spawn_blocking(move || {
        crate::plugins::check(&dir).and_then(|c| crate::plugins::seal(&lib, &c).map(|_| c))
    })
    .await
    .map_err(Problem::internal)?
    .map_err(|e| Problem::invalid("dir", e))?;
    let command = RunCommand::RegisterPlugin {
        name: checked.manifest.name.clone(),
        digest: checked.digest.clone(),
        entrypoint: checked.manifest.entrypoint.clone(),
        kinds: checked.manifest.kinds(),
        unsigned: true,
    };
    let c = submit(&state, p, Command::Run(command)).await?;
    let status = if c.entries.is_empty() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(serde_json::json!({ "name": checked.manifest.name, "digest": checked.digest, "unsigned": true }))))
}

/// `GET /schedules`: every cron schedule with its next fire, pause, last run.
pub async fn schedules(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<serde_json::Value>> {
    auth.require(Scope::Read)?;
    let list: Vec<serde_json::Value> = read::schedules(&state.store.read()?)?
        .into_iter()
        .map(|mut v| {
            for k in ["nextMs", "lastMs"] {
                let at = v[k].as_i64().map(crate::clock::rfc3339);
                v[k.replace("Ms", "At")] = serde_json::json!(at);
            }
            v
        })
        .collect();
    Ok(Json(serde_json::json!({ "schedules": list })))
}

/// `POST /schedules/{dag}/{pause|resume|clear}`.
pub async fn schedule_action(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path((dag, action)): Path<(String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    use crate::domain::runs::ScheduleAction;
    let p = auth.require(Scope::Admin)?;
    let action = match action.as_str() {
        "pause" => ScheduleAction::Pause,
        "resume" => ScheduleAction::Resume,
        "clear" => ScheduleAction::Clear,
        other => return Err(Problem::not_found(format!("schedule action {other:?} (pause, resume, clear)"))),
    };
    let c = submit(&state, p, Command::Run(RunCommand::Schedule { dag, action })).await?;
    let cleared = c.entries.iter().find_map(|e| match ScheduleEvent::of(e) {
        Some(Ok(ScheduleEvent::Cleared(c))) => Some(serde_json::json!(c.cleared)),
        _ => None,
    });
    let Json(mut v) = schedules(State(state), auth).await?;
    if let Some(cleared) = cleared {
        v["cleared"] = cleared;
    }
    Ok(Json(v))
}
