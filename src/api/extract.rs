//! Request extractors: who is calling ([`Auth`]) and a JSON body whose every rejection is a
//! problem document naming what is wrong ([`JsonBody`]).

use crate::api::problem::Problem;
use crate::api::state::AppState;
use crate::auth::{self, Principal, Scope};
use crate::machine::read;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;

/// How the request reached us, set per connection by the server.
#[derive(Debug, Clone)]
pub enum Peer {
    /// A Unix-socket peer and its uid, from `SO_PEERCRED`.
    Unix {
        uid: Option<u32>,
    },
    Tcp {
        addr: SocketAddr,
    },
}

/// The authenticated principal of a request. A bearer token always decides when present; on
/// the Unix socket, a peer with the daemon's uid or root without a token is the local admin.
#[derive(Debug, Clone)]
pub struct Auth(pub Principal);

impl Auth {
    /// Refuses with the one `forbidden` body unless the principal holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<&Principal, Problem> {
        if self.0.has(scope) { Ok(&self.0) } else { Err(Problem::forbidden()) }
    }

    /// Like [`Auth::require`], for a route that either of two scopes may use.
    pub fn require_either(&self, a: Scope, b: Scope) -> Result<&Principal, Problem> {
        if self.0.has(a) || self.0.has(b) { Ok(&self.0) } else { Err(Problem::forbidden()) }
    }
}

/// Who a request turned out to be, filled in by [`Auth`] for the server's request log line:
/// the actor and the tenant (none for the local administrator).
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Arc<std::sync::OnceLock<(String, Option<String>)>>);

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        let principal = if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let token =
                value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(Problem::unauthenticated)?;
            authenticate(state, token.trim()).ok_or_else(Problem::unauthenticated)?
        } else {
            match parts.extensions.get::<Peer>() {
                Some(Peer::Unix { uid: Some(uid) }) if *uid == state.owner_uid || *uid == 0 => {
                    Principal::local_admin(*uid)
                }
                _ => return Err(Problem::unauthenticated()),
            }
        };
        if let Some(caller) = parts.extensions.get::<Caller>() {
            let _ = caller.0.set((principal.actor.clone(), principal.tenant.clone()));
        }
        Ok(Auth(principal))
    }
}

fn authenticate(state: &AppState, token: &str) -> Option<Principal> {
    let id = auth::claimed_id(token)?;
    let txn = state.store.read().ok()?;
    let record = read::token(&txn, &id).ok().flatten();
    auth::check(token, record.as_ref(), state.clock.now_ms(), &state.config.tenants.allowed)
}

/// A query string: 400 with the problem body (`invalid_query`, naming what is wrong) when it
/// does not fit, like every other refusal, rather than axum's plain-text one.
#[derive(Debug)]
pub struct QueryArgs<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(QueryArgs(v)),
            Err(rejection) => {
                let text = rejection.body_text();
                let detail = text.strip_prefix("Failed to deserialize query string: ").unwrap_or(&text).to_owned();
                Err(Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail))
            }
        }
    }
}

/// A JSON body: 400 when it does not parse, 422 naming the field when it does not fit,
/// 413 when too large, 415 without a JSON content type.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(JsonBody(v)),
            Err(rejection) => Err(json_problem(rejection)),
        }
    }
}

fn json_problem(rejection: JsonRejection) -> Problem {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            let text = e.body_text();
            let detail = text.split_once(": ").map_or(text.as_str(), |(_, rest)| rest).to_owned();
            let field = detail.split_once(": ").map(|(path, _)| path.to_owned());
            let problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail);
            match field.filter(|f| !f.contains(' ')) {
                Some(f) => problem.with_field(f),
                None => problem,
            }
        }
        JsonRejection::JsonSyntaxError(e) => Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("request body is not valid JSON: {}", e.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request body must have Content-Type: application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => payload_too_large(),
        other => Problem::new(other.status(), "bad_request", other.body_text()),
    }
}

pub fn payload_too_large() -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body exceeds server.body_limit_bytes")
}
