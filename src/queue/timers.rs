//! The timer task (DESIGN.md invariant 4): deadlines live in the store's due index; this task
//! sleeps until the earliest one, or until a committed event may have added an earlier one,
//! and then sends one `Tick` command. It never polls on an interval.

use crate::clock::SharedClock;
use crate::store::command::Actor;
use crate::store::schema::DUE;
use crate::store::{Command, Store, WriterHandle};
use redb::ReadableTable;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

/// After a tick that left a due timer in place (it could not be resolved), wait this long.
const STUCK_BACKOFF: Duration = Duration::from_millis(250);
/// A failing tick (store error) is retried after this long.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

fn earliest(store: &Store) -> Option<(i64, String)> {
    let txn = store.read().ok()?;
    let table = txn.open_table(DUE).ok()?;
    let (k, _) = table.first().ok()??;
    let (due, key) = k.value();
    Some((due as i64, key.to_owned()))
}

pub async fn run(store: Store, writer: WriterHandle, clock: SharedClock, mut stop: watch::Receiver<bool>) {
    let mut events = writer.subscribe();
    let mut last_fired: Option<(i64, String)> = None;
    loop {
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
        let wait = next.map(|(at, _)| Duration::from_millis((at - now).max(0) as u64));
        tokio::select! {
            _ = async { match wait { Some(w) => tokio::time::sleep(w).await, None => std::future::pending().await } } => {}
            ev = events.recv() => if let Err(RecvError::Closed) = ev { return },
            _ = stop.changed() => return,
        }
    }
}
