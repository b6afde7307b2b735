//! Runtime configuration over HTTP: what `orch config set|get|show` call. Values are validated
//! by `runtime_config` and ledgered; only the local administrator may change them.

use crate::api::dto;
use crate::api::extract::{Auth, JsonBody};
use crate::api::handlers::submit;
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::Scope;
use crate::machine::Command;
use crate::machine::read;
use crate::runtime_config;
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
    runtime_config::known(&key).map_err(|e| Problem::invalid(e.field(), e.to_string()))?;
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
    let value = runtime_config::validate(&key, &req.value).map_err(|e| Problem::invalid(e.field(), e.to_string()))?;
    submit(
        &state,
        p,
        Command::Appliance(crate::domain::appliance::ApplianceCommand::SetConfig { key: key.clone(), value }),
    )
    .await?;
    let set = read::runtime_config(&state.store.read()?)?;
    Ok(Json(config_value(&state, &set, &key)))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSet {
    pub value: String,
}

/// Secret values at most.
const SECRET_BYTES_MAX: usize = 64 * 1024;

/// `PUT /secrets/{name}` (local administrator): stores the value, ledgers the name only.
pub async fn secret_set(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<SecretSet>,
) -> ApiResult<Json<serde_json::Value>> {
    let p = auth.require(Scope::Admin)?;
    if p.tenant.is_some() {
        return Err(Problem::forbidden());
    }
    if !crate::config::valid_name(&name) {
        return Err(Problem::invalid("name", format!("secret name {name:?} must be 1-64 of a-z, 0-9, '-', '_'")));
    }
    if req.value.is_empty() || req.value.len() > SECRET_BYTES_MAX {
        return Err(Problem::invalid("value", format!("a secret is 1 to {SECRET_BYTES_MAX} bytes")));
    }
    crate::telemetry::logs::add_secret(&req.value);
    submit(
        &state,
        p,
        Command::Appliance(crate::domain::appliance::ApplianceCommand::SetSecret {
            name: name.clone(),
            value: req.value,
        }),
    )
    .await?;
    Ok(Json(serde_json::json!({ "name": name, "set": true })))
}

/// `GET /secrets`: names only.
pub async fn secret_list(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<serde_json::Value>> {
    auth.require(Scope::Admin)?;
    let txn = state.store.read()?;
    let table = txn.open_table(crate::domain::appliance::tables::SECRETS).map_err(Problem::internal)?;
    let mut names = Vec::new();
    for row in redb::ReadableTable::iter(&table).map_err(Problem::internal)? {
        names.push(row.map_err(Problem::internal)?.0.value().to_owned());
    }
    Ok(Json(serde_json::json!({ "secrets": names })))
}
