//! Token administration: create (the secret is returned once), list, show, revoke. A tenant's
//! admin manages its own tenant's tokens; another tenant's token is 404 to it.

use crate::api::dto;
use crate::api::extract::{Auth, JsonBody};
use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::{self, Scope};
use crate::config::valid_name;
use crate::duration;
use crate::kernel::Actor;
use crate::machine::Command;
use crate::machine::read;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use std::sync::Arc;

/// Tokens listed in one response at most.
const TOKEN_LIST_MAX: usize = 10_000;
/// A description longer than this is refused.
const DESCRIPTION_BYTES_MAX: usize = 256;

pub async fn create(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    JsonBody(req): JsonBody<dto::TokenCreate>,
) -> ApiResult<(StatusCode, Json<dto::TokenCreated>)> {
    let principal = auth.require(Scope::Admin)?;
    let scopes = auth::Scope::parse_list(&req.scopes.join(",")).map_err(|e| Problem::invalid("scopes", e))?;
    let names: Vec<String> = scopes.iter().map(|s| s.as_str().to_owned()).collect();
    if !valid_name(&req.tenant) || !auth::tenant_allowed(&req.tenant, &names, &state.config.tenants.allowed) {
        return Err(Problem::invalid(
            "tenant",
            format!(
                "tenant {:?} is not in tenants.allowed ({}); a deploy agent's token is --tenant {} --scopes {}",
                req.tenant,
                state.config.tenants.allowed.join(", "),
                auth::SITE_TENANT,
                auth::Scope::Agent.as_str()
            ),
        ));
    }
    // A site token (a deploy agent's) only from an administrator of every tenant.
    let site = req.tenant == auth::SITE_TENANT && !state.config.tenants.allowed.contains(&req.tenant);
    if (site && principal.tenant.is_some()) || (!site && !principal.sees(&req.tenant)) {
        return Err(Problem::forbidden());
    }
    let now = state.clock.now_ms();
    let expires_ms = match &req.expires {
        None => None,
        Some(text) => {
            let d = duration::parse(text).map_err(|e| Problem::invalid("expires", e.to_string()))?;
            Some(now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
        }
    };
    if req.description.as_ref().is_some_and(|d| d.len() > DESCRIPTION_BYTES_MAX) {
        return Err(Problem::invalid("description", format!("longer than {DESCRIPTION_BYTES_MAX} bytes")));
    }
    let minted = auth::mint();
    let command = Command::Token(crate::domain::tokens::TokenCommand::Create {
        id: minted.id.clone(),
        tenant: req.tenant.clone(),
        scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
        sha256: minted.sha256.clone(),
        expires_ms,
        description: req.description.clone(),
    });
    state.writer.submit(Actor { name: principal.actor.clone() }, command).await?;
    let txn = state.store.read()?;
    let record = read::token(&txn, &minted.id)?.ok_or_else(|| Problem::internal("committed token is not readable"))?;
    let info = dto::Token::from_record(&record, now);
    Ok((StatusCode::CREATED, Json(dto::TokenCreated { token: minted.secret, info })))
}

pub async fn list(State(state): State<Arc<AppState>>, auth: Auth) -> ApiResult<Json<dto::TokenList>> {
    let principal = auth.require(Scope::Admin)?;
    let txn = state.store.read()?;
    let now = state.clock.now_ms();
    let records = read::tokens(&txn, principal.tenant.as_deref(), TOKEN_LIST_MAX)?;
    Ok(Json(dto::TokenList { tokens: records.iter().map(|r| dto::Token::from_record(r, now)).collect() }))
}

pub async fn show(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
) -> ApiResult<Json<dto::Token>> {
    let principal = auth.require(Scope::Admin)?;
    let txn = state.store.read()?;
    let record = read::token(&txn, &id)?
        .filter(|r| principal.sees(&r.tenant))
        .ok_or_else(|| Problem::not_found(format!("token {id}")))?;
    Ok(Json(dto::Token::from_record(&record, state.clock.now_ms())))
}

pub async fn revoke(
    State(state): State<Arc<AppState>>,
    auth: Auth,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<dto::Token>> {
    let principal = auth.require(Scope::Admin)?;
    // The body is optional: an empty one revokes without a reason.
    let revoke: dto::TokenRevoke = if body.is_empty() {
        dto::TokenRevoke::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| Problem::invalid("reason", format!("bad revoke body: {e}")))?
    };
    let reason = revoke.reason;
    let command = Command::Token(crate::domain::tokens::TokenCommand::Revoke {
        id: id.clone(),
        tenant: principal.tenant.clone(),
        reason,
    });
    state.writer.submit(Actor { name: principal.actor.clone() }, command).await?;
    let txn = state.store.read()?;
    let record = read::token(&txn, &id)?.ok_or_else(|| Problem::not_found(format!("token {id}")))?;
    Ok(Json(dto::Token::from_record(&record, state.clock.now_ms())))
}
