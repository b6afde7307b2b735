//! Writes that are liveness, not history (DESIGN.md invariant 2), for every domain: applied in
//! the batch's transaction, never ledgered, not compared by `db verify`.

use crate::domain::appliance::tables::{METRIC_SNAPSHOTS, SECRETS};
use crate::domain::queue::tables::{LIVE_LEASES, WORKERS, WorkerRecord};
use crate::kernel::due::DUE;
use crate::kernel::store::{Record, rw};
use redb::WriteTransaction;

/// A plan of a domain command: ledger drafts, these liveness writes, a note for the caller.
pub type Effects = crate::kernel::Effects<LiveWrite>;

#[derive(Debug, Clone, PartialEq)]
pub enum LiveWrite {
    LeaseExpiry {
        job: String,
        expires_ms: i64,
    },
    WorkerSeen {
        id: String,
        tenant: String,
        types: Vec<String>,
        env: Option<String>,
        /// A deploy agent's stella version.
        version: Option<String>,
    },
    /// A worker heartbeating a lease is alive: its `last_seen_ms` moves (if it is known).
    WorkerBeat {
        id: String,
    },
    Timer {
        due_ms: i64,
        key: String,
    },
    DropTimer {
        due_ms: i64,
        key: String,
    },
    /// `/metrics` as it read at the batch's time; snapshots older than `retain_ms` go.
    MetricSnapshot {
        text: String,
        retain_ms: i64,
    },
    /// A secret's value: stored, never ledgered.
    Secret {
        name: String,
        value: String,
    },
}

/// Applies liveness writes: unledgered, but in the same transaction as the batch.
pub fn apply(txn: &WriteTransaction, live: &[LiveWrite], now: i64) -> Result<(), redb::Error> {
    for write in live {
        match write {
            LiveWrite::LeaseExpiry { job, expires_ms } => {
                txn.open_table(LIVE_LEASES)?.insert(job.as_str(), *expires_ms as u64)?;
            }
            LiveWrite::Timer { due_ms, key } => {
                txn.open_table(DUE)?.insert((*due_ms as u64, key.as_str()), 0)?;
            }
            LiveWrite::DropTimer { due_ms, key } => {
                txn.open_table(DUE)?.remove((*due_ms as u64, key.as_str()))?;
            }
            LiveWrite::MetricSnapshot { text, retain_ms } => {
                let mut t = txn.open_table(METRIC_SNAPSHOTS)?;
                t.insert(now as u64, text.as_bytes())?;
                let cutoff = now.saturating_sub(*retain_ms).max(0) as u64;
                t.retain_in(..cutoff, |_, _| false)?;
            }
            LiveWrite::Secret { name, value } => {
                // Sealed before it is stored: the store file never holds a value in the clear.
                let key = crate::secrets::key().ok_or_else(|| {
                    redb::Error::Io(std::io::Error::other("no secrets key is loaded: a secret cannot be stored"))
                })?;
                txn.open_table(SECRETS)?.insert(name.as_str(), key.seal(name, value).as_slice())?;
            }
            LiveWrite::WorkerBeat { id } => {
                let mut table = txn.open_table(WORKERS)?;
                let known = rw::get::<WorkerRecord>(&table, "workers", id).ok().flatten();
                if let Some(mut w) = known.filter(|w| w.last_seen_ms < now) {
                    w.last_seen_ms = now;
                    table.insert(id.as_str(), w.to_json_bytes().as_slice())?;
                }
            }
            LiveWrite::WorkerSeen { id, tenant, types, env, version } => {
                let mut table = txn.open_table(WORKERS)?;
                let first_seen_ms =
                    rw::get::<WorkerRecord>(&table, "workers", id).ok().flatten().map_or(now, |w| w.first_seen_ms);
                let rec = WorkerRecord {
                    id: id.clone(),
                    tenant: tenant.clone(),
                    types: types.clone(),
                    env: env.clone(),
                    first_seen_ms,
                    last_seen_ms: now,
                    version: version.clone(),
                };
                table.insert(id.as_str(), rec.to_json_bytes().as_slice())?;
            }
        }
    }
    Ok(())
}
