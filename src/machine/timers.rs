//! The timer task (DESIGN.md invariant 4): deadlines live in the store's due index; this task
//! sleeps until the earliest one, or until a committed event may have added an earlier one,
//! and then sends one `Tick` command. It never polls on an interval. The tick itself is
//! planned here too: each due key, typed as [`Due`], goes to the domain that owns it.

use crate::clock::SharedClock;
use crate::domain::live::{Effects, LiveWrite};
use crate::domain::locks;
use crate::domain::queue::plan::{Fence, expire_lease, queue_record, visible_job};
use crate::domain::queue::tables::JobState;
use crate::domain::queue::timer_key;
use crate::domain::queue::{BudgetCleared, BudgetRestored, JobsReady, QueueEvent};
use crate::domain::runs::plan as engine;
use crate::kernel::Actor;
use crate::kernel::due::DUE;
use crate::kernel::event::Event;
use crate::kernel::store::Store;
use crate::kernel::{CommandError, PlanCtx, storage};
use crate::machine::Command;
use crate::machine::WriterHandle;
use redb::ReadableTable;
use redb::WriteTransaction;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::watch;

/// Timers one tick fires at most.
const TICK_MAX: usize = 1_024;

/// A key of the due index, typed: which domain's deadline it is and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due<'a> {
    /// A delayed job (retry backoff or a delayed enqueue) becomes ready.
    Ready { job: &'a str },
    /// A lease ends unless a heartbeat extended it.
    Lease { job: &'a str, token: u64 },
    /// A temporary budget ends.
    Budget { job_type: &'a str, tenant: &'a str },
    /// A DAG's cron trigger fires.
    Cron { dag: &'a str, index: u64 },
    /// A lock's TTL lapses.
    Lock { resource: &'a str, token: u64 },
    /// A checkpoint's approval times out.
    Approval { id: &'a str },
}

impl<'a> Due<'a> {
    /// Parses a stored key; `None` for one this build does not know (it is dropped).
    pub fn parse(key: &'a str) -> Option<Self> {
        let parts: Vec<&str> = key.split('|').collect();
        Some(match parts.as_slice() {
            ["ready", job] => Due::Ready { job },
            ["lease", job, token] => Due::Lease { job, token: token.parse().ok()? },
            ["budget", job_type, tenant] => Due::Budget { job_type, tenant },
            ["cron", dag, index] => Due::Cron { dag, index: index.parse().ok()? },
            ["lock", resource, token] => Due::Lock { resource, token: token.parse().ok()? },
            ["approval", id] => Due::Approval { id },
            _ => return None,
        })
    }

    /// The stored form, as the domains arm it.
    pub fn key(&self) -> String {
        match self {
            Due::Ready { job } => timer_key::ready(job),
            Due::Lease { job, token } => timer_key::lease(job, *token),
            Due::Budget { job_type, tenant } => timer_key::budget(job_type, tenant),
            Due::Cron { dag, index } => crate::domain::runs::cron_key(dag, *index),
            Due::Lock { resource, token } => crate::domain::locks::timer_key_lock(resource, *token),
            Due::Approval { id } => crate::domain::approvals::timer_key(id),
        }
    }
}

/// After a tick that left a due timer in place (it could not be resolved), wait this long.
const STUCK_BACKOFF: Duration = Duration::from_millis(250);
/// A failing tick (store error) is retried after this long.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

fn earliest(store: &Store) -> Option<(i64, String)> {
    crate::kernel::due::earliest_committed(store).map(|(due, key)| (due as i64, key))
}

pub async fn run(store: Store, writer: WriterHandle, clock: SharedClock, mut stop: watch::Receiver<bool>) {
    let due = writer.due();
    let mut last_fired: Option<(i64, String)> = None;
    loop {
        due.reading();
        let next = earliest(&store);
        let now = clock.now_ms();
        if let Some(due) = next.as_ref().filter(|(at, _)| *at <= now) {
            if last_fired.as_ref() == Some(due) {
                // The same timer survived a tick: do not spin on it.
                tokio::time::sleep(STUCK_BACKOFF).await;
            }
            last_fired = Some(due.clone());
            if let Err(e) = writer.submit(Actor::appliance(), Command::Tick).await {
                tracing::warn!(error = %e, "timer tick failed");
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
            continue;
        }
        let wait = next.as_ref().map(|(at, _)| Duration::from_millis((at - now).max(0) as u64));
        // Woken early only by a commit that armed an earlier deadline (not by every entry).
        due.sleeping_toward(next.map(|(at, _)| at.max(0) as u64));
        tokio::select! {
            _ = async { match wait { Some(w) => tokio::time::sleep(w).await, None => std::future::pending().await } } => {}
            _ = due.earlier() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Fires every due timer (at most `TICK_MAX`): delayed jobs become ready, expired leases go
/// back (or to the dead-letter queue) as a ledgered lease stall naming the worker, budgets end,
/// expired locks pass to their next waiter. Stale timers are dropped; heartbeated leases are
/// re-armed at their extended expiry.
pub fn tick(txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<Effects, CommandError> {
    let due: Vec<(i64, String)> = {
        let table = txn.open_table(DUE).map_err(storage)?;
        let range = table.range((0u64, "")..=(ctx.now.max(0) as u64, "\u{10FFFF}")).map_err(storage)?;
        range
            .take(TICK_MAX)
            .map(|row| row.map(|(k, _)| (k.value().0 as i64, k.value().1.to_owned())))
            .collect::<Result<_, _>>()
            .map_err(storage)?
    };
    let mut effects = Effects::default();
    let mut ready: Vec<(String, String)> = Vec::new();
    let mut fence = Fence::read(txn)?;
    // Locks already moved by an earlier timer of this tick: a second move would be planned
    // against a state the first has changed.
    let mut touched = HashSet::new();
    for (planned, (due_ms, key)) in due.into_iter().enumerate() {
        // An approval's timeout may cancel its run (jobs, locks, other approvals): it is
        // planned in a tick of its own, so no other timer of the tick plans on what it changes.
        let approval = matches!(Due::parse(&key), Some(Due::Approval { .. }));
        if approval && planned > 0 {
            break;
        }
        match Due::parse(&key) {
            Some(Due::Ready { job }) => match visible_job(txn, None, job) {
                Ok(j) if j.state == JobState::Delayed => ready.push((j.tenant.clone(), j.id.clone())),
                _ => effects.live.push(LiveWrite::DropTimer { due_ms, key }),
            },
            Some(Due::Lease { job, token }) => expire_lease(
                txn,
                ctx,
                &mut effects,
                (&mut fence, &mut touched),
                (due_ms, &key),
                job,
                &token.to_string(),
            )?,
            Some(Due::Budget { job_type, tenant }) => {
                let q = queue_record(txn, job_type)?;
                match q.budgets.get(tenant) {
                    Some(b) if b.until_ms.is_some_and(|u| u <= ctx.now) => {
                        let (job_type, tenant, reason) = (job_type.to_owned(), tenant.to_owned(), "expired".to_owned());
                        let event = match &b.previous {
                            Some(previous) => QueueEvent::BudgetRestored(BudgetRestored {
                                job_type: job_type.clone(),
                                tenant,
                                reason,
                                restored: (**previous).clone(),
                            }),
                            None => {
                                QueueEvent::BudgetCleared(BudgetCleared { job_type: job_type.clone(), tenant, reason })
                            }
                        };
                        effects.drafts.push(event.draft("", vec![job_type]));
                    }
                    _ => effects.live.push(LiveWrite::DropTimer { due_ms, key }),
                }
            }
            Some(Due::Cron { dag, index }) => match engine::fire_schedule(txn, ctx, dag, index, due_ms)? {
                Some(drafts) => effects.drafts.extend(drafts),
                None => effects.live.push(LiveWrite::DropTimer { due_ms, key }),
            },
            Some(Due::Lock { resource, token }) => {
                match locks::expire(txn, ctx, &mut fence, resource, token, &mut touched)? {
                    Some(d) => effects.drafts.push(d),
                    None => effects.live.push(LiveWrite::DropTimer { due_ms, key }),
                }
            }
            Some(Due::Approval { id }) => match crate::domain::approvals::plan::expire(txn, id, due_ms)? {
                Some((drafts, res)) => {
                    effects.drafts.extend(drafts);
                    match crate::machine::decided(txn, ctx, &res) {
                        Ok(d) => effects.drafts.extend(d),
                        // The step moved on without it (a bug's state): the approval still ends.
                        Err(CommandError::Conflict { code: "approval_stale", detail }) => {
                            tracing::warn!(approval = id, %detail, "an expired approval's step no longer waits for it")
                        }
                        Err(e) => return Err(e),
                    }
                }
                None => effects.live.push(LiveWrite::DropTimer { due_ms, key }),
            },
            None => effects.live.push(LiveWrite::DropTimer { due_ms, key }),
        }
        if approval {
            break;
        }
    }
    ready.sort();
    for chunk in ready.chunk_by(|a, b| a.0 == b.0) {
        let ids: Vec<String> = chunk.iter().map(|(_, id)| id.clone()).collect();
        effects.drafts.push(QueueEvent::Ready(JobsReady { job_ids: ids.clone() }).draft(&chunk[0].0, ids));
    }
    Ok(effects)
}
