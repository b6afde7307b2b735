//! `GET /metrics`: Prometheus text built at scrape time from one store snapshot — queue depth
//! and leased jobs per type, dead-letter depth, locks held, and the durable counters the queue
//! projection keeps (lease expirations, retries) — plus the writer's commit counters and build
//! info. Nothing is counted in memory that a restart would lose.

use crate::kernel::counters::COUNTERS;
use crate::kernel::store::Store;
use crate::kernel::store::StoreError;
use crate::kernel::store::rw;
use crate::machine::WriterHandle;
use crate::machine::read;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Locks counted at most.
const LOCKS_MAX: usize = 100_000;

pub use crate::domain::runs::{RUN_DURATION_BUCKETS, STEP_QUEUE_BUCKETS};

/// A histogram whose counts live in the store (`kernel::counters::observe`), encoded as is.
#[derive(Debug)]
struct StoredHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, count in this bucket), the last bound +Inf.
    buckets: Vec<(f64, u64)>,
}

impl prometheus_client::encoding::EncodeMetric for StoredHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }
    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

fn stored_histogram(stored: &dyn Fn(&str) -> u64, name: &str, bounds: &[f64]) -> StoredHistogram {
    let mut buckets: Vec<(f64, u64)> =
        bounds.iter().enumerate().map(|(i, b)| (*b, stored(&format!("{name}:b{i}")))).collect();
    buckets.push((f64::INFINITY, stored(&format!("{name}:b{}", bounds.len()))));
    StoredHistogram {
        sum: stored(&format!("{name}:sum_ms")) as f64 / 1000.0,
        count: stored(&format!("{name}:count")),
        buckets,
    }
}

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

/// What a scrape reads besides the store and the writer: the runtime keys' file defaults
/// (`promotions.stuck_after`) and the time.
pub struct Scrape<'a> {
    pub config: &'a crate::config::Config,
    pub now_ms: i64,
}

pub fn render(store: &Store, writer: &WriterHandle, scrape: &Scrape<'_>) -> Result<String, StoreError> {
    let Scrape { config, now_ms } = *scrape;
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
    reg.register(
        "orchestrator_cache_hits",
        "Cached steps completed from a cache entry without running",
        counter(stored("cache:hits")),
    );
    reg.register(
        "orchestrator_cache_misses",
        "Cached steps whose lookup found no live entry (they ran)",
        counter(stored("cache:misses")),
    );
    reg.register("orchestrator_cache_entries", "Entries in the step result cache", gauge(stored("cache_entries")));
    reg.register("orchestrator_cache_bytes", "Bytes of outputs in the step result cache", gauge(stored("cache_bytes")));
    let runs = Family::<Labels, Counter>::default();
    for status in ["succeeded", "failed", "cancelled"] {
        runs.get_or_create(&vec![("status".to_owned(), status.to_owned())]).inc_by(stored(&format!("runs:{status}")));
    }
    reg.register("orchestrator_runs", "Runs that ended, by final status", runs);
    let attempts = Family::<Labels, Counter>::default();
    for row in counters
        .range("attempts:".."attempts;")
        .map_err(|e| StoreError::Redb { path: store.path().to_owned(), source: e.into() })?
    {
        let Ok((k, v)) = row else { continue };
        let Some((outcome, job_type)) = k.value().trim_start_matches("attempts:").split_once(':') else { continue };
        let n = <[u8; 8]>::try_from(v.value()).map(u64::from_be_bytes).unwrap_or(0);
        attempts
            .get_or_create(&vec![("type".to_owned(), job_type.to_owned()), ("outcome".to_owned(), outcome.to_owned())])
            .inc_by(n);
    }
    reg.register(
        "orchestrator_job_attempts",
        "Finished job attempts by job type and outcome (succeeded, failed)",
        attempts,
    );
    reg.register(
        "orchestrator_run_duration_seconds",
        "Time from a run's creation to its end",
        stored_histogram(&stored, "run_duration", &RUN_DURATION_BUCKETS),
    );
    reg.register(
        "orchestrator_step_queue_seconds",
        "Time a step waited from queued to its first attempt's start",
        stored_histogram(&stored, "step_queue", &STEP_QUEUE_BUCKETS),
    );
    // Deployments by environment, kind and final status; rollbacks are those of kind rollback.
    let deployments = Family::<Labels, Counter>::default();
    let rollbacks = Family::<Labels, Counter>::default();
    let promotions = Family::<Labels, Counter>::default();
    for row in counters
        .range("deployments_total|".."deployments_total}")
        .map_err(|e| StoreError::Redb { path: store.path().to_owned(), source: e.into() })?
    {
        let Ok((k, v)) = row else { continue };
        let parts: Vec<&str> = k.value().split('|').collect();
        let [_, env, kind, status] = parts.as_slice() else { continue };
        let n = <[u8; 8]>::try_from(v.value()).map(u64::from_be_bytes).unwrap_or(0);
        let label = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        deployments.get_or_create(&vec![label("env", env), label("kind", kind), label("status", status)]).inc_by(n);
        match *kind {
            "rollback" => rollbacks.get_or_create(&vec![label("env", env), label("status", status)]).inc_by(n),
            "promotion" => promotions.get_or_create(&vec![label("env", env), label("status", status)]).inc_by(n),
            _ => 0,
        };
    }
    reg.register("orchestrator_deployments", "Deployments that ended, by environment, kind and status", deployments);
    let current = Family::<Labels, Gauge>::default();
    let txn = store.read()?;
    let envs = crate::domain::release::tables::environments(&txn)?;
    // Every environment has both rollback series from the start, so `increase()` sees the first.
    // So are promotions into an environment something promotes into, and its stuck gauge.
    let stuck = Family::<Labels, Gauge>::default();
    for e in envs.iter().filter(|e| e.declared_by.is_some()) {
        for status in ["success", "failed"] {
            let labels = vec![("env".to_owned(), e.env.name.clone()), ("status".to_owned(), status.to_owned())];
            rollbacks.get_or_create(&labels).inc_by(0);
            if e.env.promotes_from.is_some() {
                promotions.get_or_create(&labels).inc_by(0);
            }
        }
        if e.env.promotes_from.is_some() {
            stuck.get_or_create(&vec![("env".to_owned(), e.env.name.clone())]).set(0);
        }
    }
    // In flight: a promotion whose state has not changed for `promotions.stuck_after` is stuck.
    let stuck_after = crate::domain::appliance::tables::runtime_value(&txn, config, "promotions.stuck_after")?
        .and_then(|v| crate::runtime_config::as_ms(&v))
        .unwrap_or(600_000) as i64;
    for e in envs.iter().filter(|e| e.env.promotes_from.is_some()) {
        let Some(d) = e
            .in_flight
            .as_deref()
            .map(|id| crate::domain::release::tables::deployment(&txn, id))
            .transpose()?
            .flatten()
        else {
            continue;
        };
        if d.promotion.is_some() && now_ms - crate::domain::release::tables::last_change_ms(&txn, &d)? >= stuck_after {
            stuck.get_or_create(&vec![("env".to_owned(), e.env.name.clone())]).inc();
        }
    }
    for e in envs {
        let Some(id) = &e.current else { continue };
        if let Some(d) = crate::domain::release::tables::deployment(&txn, id)? {
            current
                .get_or_create(&vec![("env".to_owned(), e.env.name.clone()), ("artifact".to_owned(), d.artifact)])
                .set(1);
        }
    }
    reg.register("orchestrator_rollbacks", "Rollbacks that ended, by environment and status", rollbacks);
    reg.register("orchestrator_promotions", "Promotions that ended, by environment and status", promotions);
    reg.register(
        "orchestrator_promotion_stuck",
        "Promotions in flight whose state has not changed for promotions.stuck_after, by environment",
        stuck,
    );
    reg.register(
        "orchestrator_deployment_info",
        "1 for the artifact each environment runs now (its last successful deployment)",
        current.clone(),
    );
    reg.register(
        "orchestrator_deployments_current",
        "The same as orchestrator_deployment_info (DESIGN.md's name)",
        current,
    );
    reg.register(
        "orchestrator_bundle_verify_failures",
        "Bundles refused at import or quarantined at re-verification",
        counter(stored("bundle_verify_failures")),
    );
    reg.register("orchestrator_ledger_height", "Sequence of the last ledger entry", gauge(writer.stats().head_seq()));
    reg.register("orchestrator_store_commits", "Durable store commits since start", counter(writer.stats().commits()));
    reg.register(
        "orchestrator_writer_backlog",
        "Commands waiting for the store writer",
        gauge(writer.backlog() as u64),
    );
    // A gauge of 1 with the version as a label (not an OpenMetrics `info`), so that plain
    // Prometheus text parsers such as `promtool check metrics` read it too.
    let build = Family::<Labels, Gauge>::default();
    build.get_or_create(&vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]).set(1);
    reg.register("stella_build_info", "Build information", build);
    let mut out = String::new();
    encode(&mut out, &reg).expect("writing to a String cannot fail");
    Ok(out)
}

/// Stores the current `/metrics` text as a snapshot (unledgered), dropping those older than
/// `retain_ms`.
pub async fn snapshot(store: &Store, writer: &WriterHandle, scrape: &Scrape<'_>, retain_ms: u64) -> Result<(), String> {
    let text = render(store, writer, scrape).map_err(|e| e.to_string())?;
    let command = crate::machine::Command::Appliance(crate::domain::appliance::ApplianceCommand::SnapshotMetrics {
        text,
        retain_ms: i64::try_from(retain_ms).unwrap_or(i64::MAX),
    });
    writer.submit(crate::kernel::Actor::appliance(), command).await.map(|_| ()).map_err(|e| e.to_string())
}

/// Snapshots every `interval_ms` until `stop` turns true (and once right away).
pub async fn snapshot_loop(
    store: Store,
    writer: WriterHandle,
    (config, clock): (crate::config::Config, crate::clock::SharedClock),
    interval_ms: u64,
    retain_ms: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(interval_ms));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let scrape = Scrape { config: &config, now_ms: clock.now_ms() };
                if let Err(e) = snapshot(&store, &writer, &scrape, retain_ms).await {
                    tracing::warn!(error = %e, "metric snapshot failed");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// The same exposition in the Prometheus text format 0.0.4, for scrapers and tools that do not
/// ask for OpenMetrics (`promtool check metrics`, curl): counter families are named with their
/// `_total` suffix, `# EOF` and `# UNIT` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# HELP ") {
            if let Some(h) = help.replace(line) {
                out.push_str(h);
                out.push('\n');
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let renamed =
                if kind == "counter" && !name.ends_with("_total") { format!("{name}_total") } else { name.to_owned() };
            if let Some(h) = help.take() {
                let text = h.strip_prefix("# HELP ").and_then(|r| r.split_once(' ')).map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {renamed} {text}\n"));
            }
            out.push_str(&format!("# TYPE {renamed} {kind}\n"));
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(h);
            out.push('\n');
        }
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The exposition `text` with the label `name` dropped from every sample, samples that then
/// name the same series summed (in the order each series first appears).
pub fn without_label(text: &str, name: &str) -> String {
    let prefix = format!("{name}=\"");
    let mut order: Vec<String> = Vec::new();
    let mut sums: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    let mut out = String::with_capacity(text.len());
    let flush = |out: &mut String, order: &mut Vec<String>, sums: &mut std::collections::HashMap<String, f64>| {
        for series in order.drain(..) {
            out.push_str(&format!("{series} {}\n", sums.remove(&series).unwrap_or(0.0)));
        }
    };
    for line in text.lines() {
        let labelled = line.find('{').zip(line.rfind('}')).filter(|(a, b)| a < b && !line.starts_with('#'));
        let Some((open, close)) = labelled.filter(|(a, b)| line[*a + 1..*b].contains(&prefix)) else {
            flush(&mut out, &mut order, &mut sums);
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let kept: Vec<&str> = line[open + 1..close].split(',').filter(|l| !l.starts_with(&prefix)).collect();
        let series =
            if kept.is_empty() { line[..open].to_owned() } else { format!("{}{{{}}}", &line[..open], kept.join(",")) };
        let value: f64 = line[close + 1..].split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        if !sums.contains_key(&series) {
            order.push(series.clone());
        }
        *sums.entry(series).or_insert(0.0) += value;
    }
    flush(&mut out, &mut order, &mut sums);
    out
}
