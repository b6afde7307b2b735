//! Telemetry: the Prometheus exposition of the appliance's state. Logs go through `tracing`
//! (set up in `serve`); traces and the offline export are not built yet.

pub mod metrics;
pub mod redact;
