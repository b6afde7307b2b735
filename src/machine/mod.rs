//! The machine (DESIGN.md §8): the one place where the domains meet. It names the closed set
//! of commands the writer accepts and routes each to its domain's planner, routes each ledger
//! entry to its domain's projection, lists every table, and fires due timers ([`timers`]).
//! The kernel's writer and `db verify` drive it through [`Machine`].

pub mod read;
#[cfg(test)]
mod tests;
pub mod timers;

use crate::domain::appliance::{ApplianceCommand, ApplianceEvent};
use crate::domain::approvals::{ApprovalCommand, ApprovalEvent};
use crate::domain::bundles::BundleEvent;
use crate::domain::bundles::plan::BundleCommand;
use crate::domain::cache::{CacheCommand, CacheEvent};
use crate::domain::live::{Effects, LiveWrite};
use crate::domain::locks::{LockCommand, LockEvent};
use crate::domain::queue::QueueCommand;
use crate::domain::release::{ReleaseCommand, ReleaseEvent};
use crate::domain::runs::RunCommand;
use crate::domain::tokens::{TokenCommand, TokenEvent};
use crate::domain::{appliance, approvals, bundles, cache, locks, queue, release, runs, tokens};
use crate::kernel::event::Event;
use crate::kernel::ledger::Entry;
use crate::kernel::store::{Store, StoreError};
use crate::kernel::{ApplyError, CommandError, Machine, PlanCtx};
use redb::{TableDefinition, WriteTransaction};
use std::path::Path;

/// Every mutation of the store.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Command {
    Appliance(ApplianceCommand),
    Token(TokenCommand),
    Queue(QueueCommand),
    Run(RunCommand),
    Lock(LockCommand),
    Bundle(BundleCommand),
    Release(ReleaseCommand),
    Approval(ApprovalCommand),
    Cache(CacheCommand),
    /// Fire every deadline that is due: promote delayed jobs, expire leases and locks, end
    /// budgets, fire cron triggers. Sent by the timer task; tests send it on virtual time.
    Tick,
}

/// Stella's state machine.
#[derive(Debug)]
pub struct Stella;

/// Every projection table keyed by name, in the order `db verify` compares them.
pub const PROJECTIONS: &[TableDefinition<&str, &[u8]>] = &[
    appliance::tables::APPLIANCE,
    tokens::tables::TOKENS,
    queue::tables::JOBS,
    queue::tables::DLQ,
    queue::tables::QUEUES,
    locks::tables::LOCKS,
    locks::tables::LOCK_IDS,
    locks::tables::RESOURCES,
    appliance::tables::RUNTIME_CONFIG,
    crate::kernel::counters::COUNTERS,
    queue::tables::IDEMPOTENCY,
    runs::tables::DAGS,
    runs::tables::DAG_SPECS,
    runs::tables::RUNS,
    runs::tables::STEPS,
    runs::tables::RUN_TOKENS,
    runs::tables::RUN_WAITING,
    bundles::tables::BUNDLES,
    bundles::tables::PLUGINS,
    runs::tables::SCHEDULES,
    release::tables::ENVIRONMENTS,
    release::tables::ARTIFACTS,
    release::tables::DEPLOYMENTS,
    release::tables::DEPLOYMENT_RUNS,
    approvals::tables::APPROVALS,
    cache::tables::CACHE,
    cache::tables::CACHE_ORDER,
    cache::tables::CACHE_FLIGHTS,
];

impl Machine for Stella {
    type Command = Command;
    type Live = LiveWrite;
    const PROJECTIONS: &'static [TableDefinition<'static, &'static str, &'static [u8]>] = PROJECTIONS;

    fn create_tables(txn: &WriteTransaction) -> Result<(), redb::Error> {
        for table in PROJECTIONS {
            txn.open_table(*table)?;
        }
        txn.open_table(queue::tables::READY)?;
        txn.open_table(crate::kernel::due::DUE)?;
        txn.open_table(queue::tables::LIVE_LEASES)?;
        txn.open_table(queue::tables::WORKERS)?;
        txn.open_table(appliance::tables::SECRETS)?;
        txn.open_table(appliance::tables::METRIC_SNAPSHOTS)?;
        Ok(())
    }

    fn clear_indexes(txn: &WriteTransaction) -> Result<(), redb::Error> {
        txn.open_table(queue::tables::READY)?.retain(|_, _| false)?;
        txn.open_table(crate::kernel::due::DUE)?.retain(|_, _| false)?;
        Ok(())
    }

    fn plan(command: &Command, txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<Effects, CommandError> {
        let mut effects = match command {
            Command::Appliance(a) => appliance::plan(a, txn),
            Command::Token(t) => tokens::plan(t, txn).map(Effects::from),
            Command::Queue(q) => queue::plan::plan(q, txn, ctx),
            Command::Lock(l) => locks::plan(l, txn, ctx),
            Command::Run(r) => {
                match r {
                    runs::RunCommand::Start { dag, .. } => release::plan::guard_start(txn, dag)?,
                    runs::RunCommand::Recover { run, action: runs::Recovery::Retry | runs::Recovery::Skip, .. } => {
                        release::plan::guard_resume(txn, run)?
                    }
                    runs::RunCommand::RegisterDag { name, spec, .. } => {
                        release::plan::guard_owned(txn, name)?;
                        release::plan::guard_agent_steps(name, spec)?;
                        release::plan::guard_children(txn, spec)?
                    }
                    runs::RunCommand::DagVersion { name, .. } => release::plan::guard_owned(txn, name)?,
                    _ => {}
                }
                let mut effects = runs::plan::plan(r, txn, ctx)?;
                if matches!(
                    r,
                    runs::RunCommand::Cancel { .. } | runs::RunCommand::Recover { action: runs::Recovery::Abort, .. }
                ) {
                    locks::release_cancelled(txn, ctx, &mut effects.drafts)?;
                }
                Ok(effects)
            }
            Command::Bundle(b) => {
                // A DAG bundle cannot replace an environment's generated DAGs (its release can).
                if let bundles::plan::BundleCommand::Import { dags, environments: None, .. } = b {
                    for (name, spec) in dags {
                        release::plan::guard_owned(txn, name)?;
                        release::plan::guard_agent_steps(name, spec)?;
                        release::plan::guard_children(txn, spec)?;
                    }
                }
                bundles::plan::plan(b, txn)
            }
            Command::Release(r) => release::plan(r, txn, ctx),
            Command::Approval(a) => {
                let (mut drafts, resolution) = approvals::plan::plan(a, txn, ctx)?;
                if let Some(res) = resolution {
                    drafts.extend(decided(txn, ctx, &res)?);
                }
                Ok(drafts.into())
            }
            Command::Cache(c) => cache::plan::plan(c, txn, ctx).map(Effects::from),
            Command::Tick => timers::tick(txn, ctx),
        }?;
        // A child run that ended ends its parent's step, and a cached step's flight that ended
        // wakes the steps waiting for its key, in this transaction (each may lead to the other).
        loop {
            let children = runs::plan::follow_children(txn, ctx)?;
            let woken = runs::plan::follow_cache(txn, ctx)?;
            if children.is_empty() && woken.is_empty() {
                break;
            }
            effects.drafts.extend(children);
            effects.drafts.extend(woken);
        }
        // A deployment follows its run: whatever moved the run (a step's outcome, a lease
        // expiry, a cancel) moves the deployment in the same transaction.
        release::follow(txn, &mut effects.drafts)?;
        Ok(effects)
    }

    fn apply(tx: &crate::kernel::Tx, entry: &Entry) -> Result<(), ApplyError> {
        let bad = |e: serde_json::Error| ApplyError::entry(entry, e);
        if let Some(event) = ApplianceEvent::of(entry) {
            return appliance::apply::apply(tx, event.map_err(bad)?);
        }
        if let Some(event) = TokenEvent::of(entry) {
            return tokens::apply::apply(tx, entry, event.map_err(bad)?);
        }
        if let Some(event) = BundleEvent::of(entry) {
            return bundles::apply::apply(tx, entry, event.map_err(bad)?);
        }
        if let Some(event) = LockEvent::of(entry) {
            return locks::apply::apply(tx, entry, event.map_err(bad)?);
        }
        if let Some(event) = ReleaseEvent::of(entry) {
            return release::apply::apply(tx, entry, event.map_err(bad)?);
        }
        if let Some(event) = ApprovalEvent::of(entry) {
            return approvals::apply::apply(tx, entry, event.map_err(bad)?);
        }
        if let Some(event) = CacheEvent::of(entry) {
            return cache::apply::apply(tx, entry, event.map_err(bad)?);
        }
        let applied = queue::apply::apply(tx, entry)? || runs::apply::apply(tx, entry)?;
        if !applied {
            return Err(ApplyError::entry(entry, format!("unknown entry kind {:?}", entry.kind)));
        }
        Ok(())
    }

    fn live_is_durable(live: &LiveWrite) -> bool {
        // A heartbeat's new expiry is answered to the worker: losing it in a crash would expire
        // a healthy worker's lease early; a secret's value is answered as set (its entry, in
        // the log, holds no value to replay it from). The rest (workers seen, timers re-armed
        // from state, metric snapshots) may be lost.
        matches!(live, LiveWrite::LeaseExpiry { .. } | LiveWrite::Secret { .. })
    }

    fn apply_live(txn: &WriteTransaction, live: &[LiveWrite], now: i64) -> Result<(), redb::Error> {
        crate::domain::live::apply(txn, live, now)
    }
}

/// What a settled approval does to its run, in the same command (a decision or a timeout): the
/// engine's entries, and the locks of jobs a cancel ends.
pub(crate) fn decided(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    res: &approvals::Resolution,
) -> Result<Vec<crate::kernel::ledger::Draft>, CommandError> {
    let mut drafts = runs::plan::on_approval(txn, ctx, res)?;
    if res.outcome == approvals::Outcome::CancelRun {
        locks::release_cancelled(txn, ctx, &mut drafts)?;
    }
    Ok(drafts)
}

/// The writer of stella's store, and its handle.
pub type Writer = crate::kernel::writer::Writer<Stella>;
pub type WriterHandle = crate::kernel::writer::WriterHandle<Stella>;

/// Creates stella's writer and its handle (see [`crate::kernel::writer::channel`]).
pub fn channel(
    store: Store,
    clock: crate::clock::SharedClock,
    opts: crate::kernel::writer::WriterOptions,
) -> Result<(WriterHandle, Writer), StoreError> {
    crate::kernel::writer::channel::<Stella>(store, clock, opts)
}

/// Opens (creating if absent) stella's store at `path`.
pub fn open_store(path: &Path) -> Result<Store, StoreError> {
    crate::kernel::wal::open::<Stella>(path, crate::kernel::store::CACHE_BYTES_DEFAULT, std::time::Duration::ZERO)
}

/// [`open_store`] with a page cache of at most `cache_bytes`.
pub fn open_store_with_cache(path: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
    // The daemon's start: a killed predecessor may still be letting go of the store.
    crate::kernel::wal::open::<Stella>(path, cache_bytes, std::time::Duration::from_secs(3))
}

/// `db verify`: the chain, then a replay of the whole ledger through this machine compared
/// table by table with the stored projections.
pub fn verify(txn: &redb::ReadTransaction) -> Result<crate::kernel::verify::VerifyReport, StoreError> {
    crate::kernel::verify::verify::<Stella>(txn)
}

/// Reads every table of the store through, row by row (see
/// [`crate::kernel::verify::walk_table`]); returns the rows read.
pub fn walk_tables(txn: &redb::ReadTransaction) -> Result<u64, StoreError> {
    use crate::kernel::verify::walk_table;
    let mut rows = walk_table(txn, crate::kernel::store::LEDGER)? + walk_table(txn, crate::kernel::store::META)?;
    for table in PROJECTIONS {
        rows += walk_table(txn, *table)?;
    }
    rows += walk_table(txn, queue::tables::READY)?;
    rows += walk_table(txn, crate::kernel::due::DUE)?;
    rows += walk_table(txn, queue::tables::LIVE_LEASES)?;
    rows += walk_table(txn, queue::tables::WORKERS)?;
    rows += walk_table(txn, appliance::tables::SECRETS)?;
    rows += walk_table(txn, appliance::tables::METRIC_SNAPSHOTS)?;
    Ok(rows)
}
