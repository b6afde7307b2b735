//! The HTTP API (`/api/v1/orchestrator/…`): routing, request limits, authentication and the
//! listeners. Handlers turn DTOs into store commands and reads; they never touch redb tables
//! directly beyond the read helpers, and storage never sees an HTTP type.

pub mod dto;
pub mod extract;
pub mod handlers;
pub mod problem;
pub mod server;
pub mod state;

pub use problem::Problem;
pub use state::AppState;

use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;

/// The prefix of every route.
pub const PREFIX: &str = "/api/v1/orchestrator";

pub fn router(state: Arc<AppState>) -> Router {
    use handlers::{admin, pending, tokens};
    let api = Router::new()
        .route("/admin/health", get(admin::health))
        .route("/admin/db/verify", get(admin::db_verify))
        .route("/status", get(admin::status))
        .route("/ledger", get(admin::ledger))
        .route("/auth/tokens", post(tokens::create).get(tokens::list))
        .route("/auth/tokens/{id}", get(tokens::show))
        .route("/auth/tokens/{id}/revoke", post(tokens::revoke))
        // Routes the runbooks name whose capability is not built yet: authenticated, then 501.
        .route("/runs", post(pending::runs))
        .route("/runs/stream", get(pending::runs))
        .route("/runs/{run}", get(pending::runs).post(pending::runs))
        .route("/runs/{run}/status", get(pending::runs))
        .route("/runs/{run}/actions/{action}", post(pending::runs))
        .route("/approvals", get(pending::approvals))
        .route("/metrics", get(pending::metrics));
    Router::new()
        .nest(PREFIX, api)
        .route("/metrics", get(pending::metrics))
        .fallback(handlers::route_not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(state.config.server.body_limit_bytes))
        .with_state(state)
}
