//! The in-process executor: a worker that leases step jobs through the same commands the lease
//! API sends, runs them (the built-in kinds `noop`, `sleep`, `fail`), heartbeats while they run,
//! enforces their timeout, stops them when their job is cancelled, and reports the result with
//! the lease's fencing token.

pub mod builtin;
pub mod plugin;
pub mod procs;
pub mod protocol;
pub mod worker;
