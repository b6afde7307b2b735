//! Route handlers, one file per resource.

pub mod admin;
pub mod bundles;
pub mod config;
pub mod dags;
pub mod exports;
pub mod locks;
pub mod pending;
pub mod queue;
pub mod runs;
pub mod stream;
pub mod tokens;

use crate::api::problem::Problem;
use axum::http::{StatusCode, Uri};

pub async fn route_not_found(uri: Uri) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "route_not_found", format!("no route {}", uri.path()))
}

pub async fn method_not_allowed(uri: Uri) -> Problem {
    Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("method not allowed on {}", uri.path()))
}
