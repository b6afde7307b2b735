//! Route handlers, one file per resource.

pub mod admin;
pub mod approvals;
pub mod bundles;
pub mod cache;
pub mod config;
pub mod dags;
pub mod exports;
pub mod locks;
pub mod promotions;
pub mod queue;
pub mod release;
pub mod runs;
pub mod stream;
pub mod tokens;

use crate::api::problem::{ApiResult, Problem};
use crate::api::state::AppState;
use crate::auth::Principal;
use crate::duration;
use crate::kernel::{Actor, Committed};
use crate::machine::Command;
use crate::progress::Progress;
use axum::http::{StatusCode, Uri};
use serde::Deserialize;
use std::sync::Arc;

// What every handler shares: who acts, for which tenant, durations in requests, submitting a
// command, following a long operation.

pub fn actor(p: &Principal) -> Actor {
    Actor { name: p.actor.clone() }
}

pub fn ms(field: &str, text: &str) -> Result<u64, Problem> {
    duration::parse(text).map(|d| d.as_millis() as u64).map_err(|e| Problem::invalid(field, e.to_string()))
}

/// The tenant a principal acts for: its own, or for the local admin the one named (default:
/// the first allowed).
pub fn acting_tenant(state: &AppState, p: &Principal, named: Option<&str>) -> Result<String, Problem> {
    match (&p.tenant, named) {
        (Some(own), Some(n)) if n != own => Err(Problem::forbidden()),
        (Some(own), _) => Ok(own.clone()),
        (None, Some(n)) if state.config.tenants.allowed.iter().any(|t| t == n) => Ok(n.to_owned()),
        (None, Some(n)) => Err(Problem::invalid("tenant", format!("tenant {n:?} is not in tenants.allowed"))),
        (None, None) => Ok(state.config.tenants.allowed[0].clone()),
    }
}

pub async fn submit(state: &AppState, p: &Principal, command: Command) -> ApiResult<Committed> {
    Ok(state.writer.submit(actor(p), command).await?)
}

/// [`submit`] of `first`, then of `then` in the same commit once `first` passed; the outcome
/// of each.
pub async fn submit_then(
    state: &AppState,
    p: &Principal,
    first: Command,
    then: Command,
) -> ApiResult<(Committed, ApiResult<Committed>)> {
    let (first, then) = state.writer.submit_then(actor(p), first, then).await?;
    Ok((first, then.map_err(Into::into)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvQuery {
    pub env: Option<String>,
}

/// The progress a request asked to be followed under `id` (registered), or an unregistered one.
pub fn progress_for(state: &AppState, id: Option<&str>) -> Result<Arc<Progress>, Problem> {
    match id {
        Some(id) => {
            state.progress.start(id).ok_or_else(|| Problem::invalid("progressId", "expected 8-64 of 0-9, a-z, '-'"))
        }
        None => Ok(Arc::default()),
    }
}

pub async fn route_not_found(uri: Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "route_not_found", format!("no route {}", uri.path()))
}

pub async fn method_not_allowed(uri: Uri) -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("method not allowed on {}", uri.path()))
}

// What the release handlers share: the site's objects and the release use cases.

/// The site's release objects are for principals that see every tenant.
pub fn site(
    state: &AppState,
    auth: &crate::api::extract::Auth,
    scope: crate::auth::Scope,
) -> Result<Principal, Problem> {
    site_principal(state, auth.require(scope)?)
}

pub fn site_principal(state: &AppState, p: &Principal) -> Result<Principal, Problem> {
    // A deploy agent's token belongs to the site.
    if !state.sees_all_tenants(p) && p.tenant.as_deref() != Some(crate::auth::SITE_TENANT) {
        return Err(Problem::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            "environments, artifacts and deployments belong to the site: a token of one tenant cannot see or change them",
        ));
    }
    Ok(p.clone())
}

pub fn releases<'a>(state: &'a AppState, p: &Principal) -> Result<crate::app::release::Releases<'a>, Problem> {
    let _ = crate::api::handlers::acting_tenant(state, p, None)?;
    Ok(crate::app::release::Releases {
        store: &state.store,
        writer: &state.writer,
        lib: &state.lib,
        trust_dir: &state.trust_dir,
        now_ms: state.clock.now_ms(),
        actor: crate::api::handlers::actor(p),
        tenant: crate::domain::release::SITE_TENANT.to_owned(),
        config: &state.config,
    })
}
