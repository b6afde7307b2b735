//! Telemetry: the Prometheus exposition of the appliance's state (`metrics`), the daemon's JSON
//! logs with redaction (`logs`, `redact`), and the OTLP-JSON rendering of logs, metric
//! snapshots and run traces for exports (`otlp`).

pub mod logs;
pub mod metrics;
pub mod otlp;
pub mod redact;
