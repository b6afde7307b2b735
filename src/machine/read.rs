//! Reads over an MVCC snapshot, for the API and the CLI's offline paths: the ledger's (from the
//! kernel) and every domain's, in one place.

pub use crate::domain::appliance::tables::{appliance_id, last_export, runtime_config, secret, secret_values};
pub use crate::domain::approvals::tables::{approval, approvals};
pub use crate::domain::bundles::tables::{bundles, installed_plugins, plugins};
pub use crate::domain::cache::tables::{entries as cache_entries, entry as cache_entry};
pub use crate::domain::locks::tables::{locks, resource_version};
pub use crate::domain::queue::tables::{
    dlq, job, leases_by_worker, lock_waiting_jobs, oldest_ready_ms, queues, tenant_queue_counts, workers,
};
pub use crate::domain::runs::tables::{dag_spec, dags, run, runs, schedules, steps};
pub use crate::domain::tokens::tables::{token, tokens};
pub use crate::kernel::store::read::{ledger_after, ledger_head, ledger_len};
