//! stella: the sealed orchestrator appliance, as a library that the `stella` binary, the
//! integration tests and the benchmarks share. The binary is only argument parsing and exit codes;
//! everything with behaviour lives here. See `docs/ARCHITECTURE.md` for the codemap.

pub mod agent;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod dev;
pub mod domain;
pub mod duration;
pub mod exec;
pub mod exit;
pub mod export;
pub mod fsutil;
pub mod ids;
pub mod kernel;
pub mod machine;
pub mod plugins;
pub mod progress;
pub mod runtime_config;
pub mod secrets;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod trust;
