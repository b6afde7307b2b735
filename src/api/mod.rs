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
/// Runbook 004's paths (`/api/orchestrations/:runId/status`, `/actions/retry`, `/approvals`):
/// aliases of the runs and approvals routes, with the same auth and problem documents.
pub const RUNBOOK_PREFIX: &str = "/api/orchestrations";

/// A handler that panics (redb does so on some damage) answers a problem naming the store and
/// what to do, instead of dropping the connection.
async fn catch_panics(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(payload) => match crate::kernel::store::store_panic(payload.as_ref()) {
            Some(detail) => {
                let e = crate::kernel::store::StoreError::Damaged { path: state.store.path().to_owned(), detail };
                problem::Problem::from(e).into_response()
            }
            // Not the store's: a bug of stella's, told to the log, not to the caller.
            None => {
                tracing::error!("a request handler panicked");
                problem::Problem::internal("the request failed inside stella (see the daemon's log)").into_response()
            }
        },
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    use axum::routing::put;
    use handlers::{
        admin, approvals, bundles, cache, config, dags, exports, locks, promotions, queue, release, runs, stream,
        tokens,
    };
    let api = Router::new()
        .route("/admin/health", get(admin::health))
        .route("/admin/db/verify", get(admin::db_verify))
        .route("/admin/doctor", get(release::doctor))
        .route("/admin/restart", post(admin::restart))
        .route("/status", get(admin::status))
        .route("/ledger", get(admin::ledger))
        .route("/auth/tokens", post(tokens::create).get(tokens::list))
        .route("/auth/tokens/{id}", get(tokens::show))
        .route("/auth/tokens/{id}/revoke", post(tokens::revoke))
        .route("/jobs", post(queue::enqueue))
        .route("/jobs/{id}", get(queue::show_job))
        .route("/leases", post(queue::lease))
        .route("/leases/complete", post(queue::complete_many))
        .route("/leases/{job}/{action}", post(queue::lease_action))
        .route("/queue", get(queue::status))
        .route("/queue/{type}/budget", put(queue::set_budget).delete(queue::clear_budget))
        .route("/queue/{type}/{action}", post(queue::pause_resume))
        .route("/dlq", get(queue::dlq_list))
        .route("/dlq/replay", post(queue::dlq_replay))
        .route("/dlq/purge", post(queue::dlq_purge))
        .route("/dlq/{id}", get(queue::dlq_show))
        .route("/workers", get(queue::workers))
        .route("/locks", get(locks::list).post(locks::acquire))
        .route("/locks/release", post(locks::release_env))
        .route("/locks/{id}/release", post(locks::release))
        .route("/resources/{resource}", get(locks::resource))
        .route("/resources/{resource}/update", post(locks::update_resource))
        .route("/config", get(config::config_show))
        .route("/config/{key}", get(config::config_get).put(config::config_set))
        .route("/runs", post(runs::start).get(runs::list))
        .route("/runs/stream", get(stream::stream))
        .route("/runs/{run}", get(runs::show).post(runs::cancel))
        .route("/runs/{run}/status", get(runs::show))
        .route("/runs/{run}/actions/{action}", post(runs::action))
        .route("/dags", get(dags::list).post(dags::register))
        .route("/dags/{name}", get(dags::show))
        .route("/dags/{name}/{action}", post(dags::version_action))
        .route("/plugins", get(dags::plugins).post(dags::register_plugin))
        .route("/bundles", get(bundles::list).post(bundles::import_bundle))
        .route("/bundles/upload", post(bundles::upload))
        .route("/bundles/verify-installed", post(bundles::verify_installed))
        .route("/bundles/{name}", get(bundles::show).delete(bundles::remove))
        .route("/sealed/{kind}/{digest}", get(bundles::sealed))
        .route("/progress/{id}", get(bundles::progress))
        .route("/exports", post(exports::create))
        .route("/schedules", get(dags::schedules))
        .route("/schedules/{dag}/{action}", post(dags::schedule_action))
        .route("/secrets", get(config::secret_list))
        .route("/secrets/{name}", put(config::secret_set))
        .route("/approvals", get(approvals::list))
        .route("/approvals/{id}", get(approvals::show))
        .route("/approvals/{id}/{action}", post(approvals::decide))
        .route("/cache", get(cache::list))
        .route("/cache/explain", get(cache::explain))
        .route("/cache/purge", post(cache::purge))
        .route("/environments", get(release::environments).post(release::declare))
        .route("/environments/{env}", get(release::environment))
        .route("/environments/{env}/probe", post(release::probe))
        .route("/environments/{env}/agents", get(release::agents))
        .route("/environments/{env}/config/diff", post(release::config_diff))
        .route("/environments/{env}/reset", post(release::reset))
        .route("/artifacts", get(release::artifacts))
        .route("/artifacts/{id}", get(release::artifact))
        .route("/artifacts/{id}/delete", post(release::delete_artifact))
        .route("/artifacts/{id}/restore", post(release::restore_artifact))
        .route("/registry/retention", get(release::retention))
        .route("/registry/retention/apply", post(release::apply_retention))
        .route("/deployments", get(release::deployments).post(release::deploy))
        .route("/deployments/current", get(release::current))
        .route("/deployments/{id}", get(release::deployment))
        .route("/deployments/{id}/repair", post(release::repair))
        .route("/rollbacks", post(release::rollback))
        .route("/promotions", get(promotions::list).post(promotions::start))
        .route("/promotions/latest", get(promotions::latest))
        .route("/promotions/{id}", get(promotions::show))
        .route("/promotions/{id}/abort", post(promotions::abort))
        .route("/metrics", get(admin::metrics));
    let runbook = Router::new()
        .route("/stream", get(stream::stream))
        .route("/approvals", get(approvals::list))
        .route("/approvals/{id}", get(approvals::show))
        .route("/approvals/{id}/{action}", post(approvals::decide))
        .route("/{run}", get(runs::show))
        .route("/{run}/status", get(runs::show))
        .route("/{run}/actions/{action}", post(runs::action));
    Router::new()
        .nest(PREFIX, api)
        .nest(RUNBOOK_PREFIX, runbook)
        .route("/metrics", get(admin::metrics))
        // Runbook 002 names the health endpoint without the API prefix too.
        .route("/admin/health", get(admin::health))
        .fallback(handlers::route_not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(state.config.server.body_limit_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), catch_panics))
        .with_state(state)
}
