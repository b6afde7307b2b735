//! Runtime configuration over HTTP: what `orch config set|get|show` call. Values are validated
//! by `runtime_config` and ledgered; only the local administrator may change them.

use crate::api::dto;
use crate::api::extract::{Auth, JsonBody};
use crate::api::handlers::queue::submit;
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::Scope;
use crate::runtime_config;
use crate::store::Command;
use crate::store::schema::read;
use axum::Json;
use axum::extract::{Path, State};
use std::sync::Arc;

fn config_value(state: &AppState, set: &[(String, String)], key: &str) -> dto::ConfigValue {
    match set.iter().find(|(k, _)| k == key) {
        Some((_, v)) => dto::ConfigValue { key: key.to_owned(), value: Some(v.clone()), source: "runtime".into() },
        None => dto::ConfigValue {
            key: key.to_owned(),
            value: runtime_config::file_default(&state.config, key),
            source: "default".into(),
        },
    }
}

pub async fn config_show(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<dto::ConfigList>> {
    auth.require(Scope::Read)?;
    let set = read::runtime_config(&state.store.read()?)?;
    let mut keys: Vec<String> =
        runtime_config::KEYS.iter().filter(|k| !k.contains('<')).map(|k| (*k).to_owned()).collect();
    keys.extend(set.iter().map(|(k, _)| k.clone()).filter(|k| k.starts_with("gates.")));
    keys.sort();
    keys.dedup();
    Ok(Json(dto::ConfigList { values: keys.iter().map(|k| config_value(&state, &set, k)).collect() }))
}

pub async fn config_get(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(key): Path<String>,
) -> ApiResult<Json<dto::ConfigValue>> {
    auth.require(Scope::Read)?;
    runtime_config::known(&key).map_err(|e| Problem::invalid("key", e))?;
    let set = read::runtime_config(&state.store.read()?)?;
    Ok(Json(config_value(&state, &set, &key)))
}

pub async fn config_set(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<dto::ConfigSet>,
) -> ApiResult<Json<dto::ConfigValue>> {
    let p = auth.require(Scope::Admin)?;
    if p.tenant.is_some() {
        // Runtime config is appliance-wide: only the local administrator changes it.
        return Err(Problem::forbidden());
    }
    let value = runtime_config::validate(&key, &req.value).map_err(|e| Problem::invalid("value", e))?;
    submit(&state, p, Command::SetConfig { key: key.clone(), value }).await?;
    let set = read::runtime_config(&state.store.read()?)?;
    Ok(Json(config_value(&state, &set, &key)))
}
