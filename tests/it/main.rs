//! The one integration-test binary: scenarios that drive a real `stella` daemon through its
//! public surfaces (CLI, HTTP API over the socket and TLS, files). `support` holds the
//! `TestAppliance` helper every module uses.

mod agents;
mod api_auth;
mod api_hostile;
mod approvals;
mod bundles;
mod cache;
mod cli;
mod drills;
mod engine_model;
mod executor;
mod export;
mod faults;
mod golden_ledger;
mod layers;
mod openapi;
mod otlp_golden;
mod plugins;
mod promotions;
mod queue_api;
mod queue_model;
mod releases;
mod restart;
mod runs_api;
mod store_schema;
mod store_tamper;
mod suborch;
mod support;
mod systemd_unit;
mod telemetry;
mod trust;
