//! `GET /metrics`: Prometheus text built at scrape time from one store snapshot — queue depth
//! and leased jobs per type, dead-letter depth, locks held, and the durable counters the queue
//! projection keeps (lease expirations, retries) — plus the writer's commit counters and build
//! info. Nothing is counted in memory that a restart would lose.

use crate::store::schema::{COUNTERS, read, rw};
use crate::store::{Store, StoreError, WriterHandle};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Locks counted at most.
const LOCKS_MAX: usize = 100_000;

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn gauge(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    g
}

pub fn render(store: &Store, writer: &WriterHandle) -> Result<String, StoreError> {
    let txn = store.read()?;
    let mut reg = Registry::default();
    let depth = Family::<Labels, Gauge>::default();
    let leased = Family::<Labels, Gauge>::default();
    let mut dead = 0;
    for (t, q) in read::queues(&txn)? {
        depth.get_or_create(&vec![("type".to_owned(), t.clone())]).set((q.ready + q.delayed) as i64);
        leased.get_or_create(&vec![("type".to_owned(), t)]).set(q.leased as i64);
        dead += q.dead;
    }
    reg.register("orchestrator_queue_depth", "Jobs waiting for dispatch (ready or delayed) per job type", depth);
    reg.register("orchestrator_queue_leased", "Jobs held under a lease per job type", leased);
    reg.register("orchestrator_dlq_depth", "Jobs in the dead-letter queue", gauge(dead));
    let held = read::locks(&txn, None, LOCKS_MAX)?.iter().filter(|l| l.holder.is_some()).count();
    reg.register("orchestrator_locks_held", "Named locks currently held", gauge(held as u64));
    let counters =
        txn.open_table(COUNTERS).map_err(|e| StoreError::Redb { path: store.path().to_owned(), source: e.into() })?;
    let stored = |name: &str| rw::counter(&counters, name).unwrap_or(0);
    reg.register(
        "orchestrator_lease_expirations",
        "Leases that expired without completion (lease stalls)",
        counter(stored("lease_expirations")),
    );
    reg.register(
        "orchestrator_step_retries",
        "Failed attempts scheduled for another attempt",
        counter(stored("retries")),
    );
    reg.register("orchestrator_ledger_height", "Sequence of the last ledger entry", gauge(writer.stats().head_seq()));
    reg.register("orchestrator_store_commits", "Durable store commits since start", counter(writer.stats().commits()));
    reg.register(
        "orchestrator_writer_backlog",
        "Commands waiting for the store writer",
        gauge(writer.backlog() as u64),
    );
    reg.register(
        "stella_build",
        "Build information",
        Info::new(vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
    );
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    Ok(out)
}

/// Stores the current `/metrics` text as a snapshot (unledgered), dropping those older than
/// `retain_ms`.
pub async fn snapshot(store: &Store, writer: &WriterHandle, retain_ms: u64) -> Result<(), String> {
    let text = render(store, writer).map_err(|e| e.to_string())?;
    let command =
        crate::store::Command::SnapshotMetrics { text, retain_ms: i64::try_from(retain_ms).unwrap_or(i64::MAX) };
    writer.submit(crate::store::command::Actor::appliance(), command).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Snapshots every `interval_ms` until `stop` turns true (and once right away).
pub async fn snapshot_loop(
    store: Store,
    writer: WriterHandle,
    interval_ms: u64,
    retain_ms: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(interval_ms));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = snapshot(&store, &writer, retain_ms).await {
                    tracing::warn!(error = %e, "metric snapshot failed");
                }
            }
            _ = stop.changed() => return,
        }
    }
}
