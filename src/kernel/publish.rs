//! What the writer publishes once a batch is durable (invariant 3): every committed entry to the
//! subscribers of all of them, to each *tap* the entries it asked for, and to the timer task the
//! news that a deadline earlier than the one it sleeps toward was armed.
//!
//! A waiting subscriber is a task woken for each entry it receives. Most of the appliance's own
//! tasks want few entries (the executor the work it serves, an attempt its own cancel, the run
//! log the run and step transitions), so their predicate runs on the writer's thread and the
//! others are never woken: on two cores a wake-up that finds nothing to do costs as much as the
//! work of a small request.

use crate::kernel::ledger::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, broadcast};

/// The predicate of a tap, run on the writer's thread for each committed entry: keep it cheap
/// (the entry's kind first).
pub type Wants = Box<dyn Fn(&Entry) -> bool + Send + Sync>;

struct Tap {
    wants: Wants,
    tx: broadcast::Sender<Arc<Entry>>,
}

/// Shared by the writer and its handles.
pub struct Publisher {
    all: broadcast::Sender<Arc<Entry>>,
    taps: Mutex<Vec<Tap>>,
    capacity: usize,
    due: DueWatch,
}

impl Publisher {
    pub fn new(capacity: usize) -> Self {
        let (all, _) = broadcast::channel(capacity);
        Publisher { all, taps: Mutex::new(Vec::new()), capacity, due: DueWatch::new() }
    }

    /// Every committed entry from now on; a subscriber that falls `capacity` behind is told it
    /// lagged (`RecvError::Lagged`) and must resume from the ledger.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.all.subscribe()
    }

    /// The committed entries `wants` takes, from now on, with the same lag rule. The tap goes
    /// when its receiver is dropped.
    pub fn subscribe_where(
        &self,
        wants: impl Fn(&Entry) -> bool + Send + Sync + 'static,
    ) -> broadcast::Receiver<Arc<Entry>> {
        let (tx, rx) = broadcast::channel(self.capacity);
        self.taps.lock().unwrap_or_else(|p| p.into_inner()).push(Tap { wants: Box::new(wants), tx });
        rx
    }

    /// A durable batch's entries, in ledger order.
    pub fn entries(&self, entries: &[Arc<Entry>]) {
        if entries.is_empty() {
            return;
        }
        if self.all.receiver_count() > 0 {
            for e in entries {
                let _ = self.all.send(e.clone());
            }
        }
        let mut taps = self.taps.lock().unwrap_or_else(|p| p.into_inner());
        taps.retain(|t| t.tx.receiver_count() > 0);
        for t in taps.iter() {
            // A predicate that panics delivers the entry (its subscriber filters it again): the
            // batch is committed, and no tap may miss it or fail the callers' answers.
            let wants =
                |e: &Entry| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.wants)(e))).unwrap_or(true);
            for e in entries.iter().filter(|e| wants(e)) {
                let _ = t.tx.send(e.clone());
            }
        }
    }

    pub fn due(&self) -> &DueWatch {
        &self.due
    }
}

/// Between the writer and the timer task: the task says which deadline it sleeps toward, and
/// the writer wakes it only when a commit leaves an earlier one in the due index. A deadline
/// moved later or disarmed wakes nothing: the task wakes at the old one, finds nothing due and
/// reads the index again.
pub struct DueWatch {
    sleeping_until: AtomicU64,
    notify: Notify,
}

impl DueWatch {
    fn new() -> Self {
        DueWatch { sleeping_until: AtomicU64::new(u64::MAX), notify: Notify::new() }
    }

    /// The writer, after a commit, with the due index's earliest deadline.
    pub fn committed(&self, earliest: Option<u64>) {
        if earliest.is_some_and(|e| e < self.sleeping_until.load(Ordering::SeqCst)) {
            self.notify.notify_one();
        }
    }

    /// The timer task, before it reads the due index: whatever is committed from now on wakes
    /// it (a commit between its read and its sleep leaves a permit, so the sleep ends at once).
    pub fn reading(&self) {
        self.sleeping_until.store(u64::MAX, Ordering::SeqCst);
    }

    /// The timer task, about to sleep toward `due` (`None`: nothing is armed).
    pub fn sleeping_toward(&self, due: Option<u64>) {
        self.sleeping_until.store(due.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// Until a commit armed a deadline earlier than the one the task sleeps toward.
    pub async fn earlier(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ledger::Draft;

    fn entry(seq: u64, kind: &'static str) -> Arc<Entry> {
        let draft = Draft { tenant: "t".into(), kind, subjects: vec![], data: serde_json::json!({}) };
        Arc::new(Entry::seal_stored(draft, seq, 0, "test", "").0)
    }

    #[test]
    fn a_tap_receives_what_it_wants_and_the_others_everything() {
        let p = Publisher::new(16);
        let mut all = p.subscribe();
        let mut runs = p.subscribe_where(|e| e.kind.starts_with("run."));
        p.entries(&[entry(1, "job.enqueued"), entry(2, "run.created"), entry(3, "job.leased")]);
        let kinds = |rx: &mut broadcast::Receiver<Arc<Entry>>| {
            std::iter::from_fn(|| rx.try_recv().ok()).map(|e| e.kind.clone()).collect::<Vec<_>>()
        };
        assert_eq!(kinds(&mut all), ["job.enqueued", "run.created", "job.leased"]);
        assert_eq!(kinds(&mut runs), ["run.created"]);
        drop(runs);
        p.entries(&[entry(4, "run.succeeded")]);
        assert!(p.taps.lock().unwrap().is_empty(), "a dropped tap is removed");
        assert_eq!(kinds(&mut all), ["run.succeeded"]);
        let mut broken = p.subscribe_where(|e| if e.seq == 5 { panic!("a broken predicate") } else { false });
        let mut after = p.subscribe_where(|_| true);
        p.entries(&[entry(5, "job.enqueued"), entry(6, "job.enqueued")]);
        assert_eq!(kinds(&mut broken), ["job.enqueued"], "a panicking predicate delivers the entry");
        assert_eq!(kinds(&mut after).len(), 2, "and the taps after it miss nothing");
    }

    #[tokio::test]
    async fn the_timer_task_wakes_only_for_an_earlier_deadline() {
        let p = Publisher::new(4);
        let due = p.due();
        due.sleeping_toward(Some(1_000));
        due.committed(Some(5_000));
        due.committed(None);
        let woke = tokio::time::timeout(std::time::Duration::from_millis(20), due.earlier()).await;
        assert!(woke.is_err(), "a later deadline or none wakes nothing");
        due.committed(Some(999));
        tokio::time::timeout(std::time::Duration::from_secs(5), due.earlier()).await.expect("an earlier one wakes");
        // A commit while the task reads the index leaves a permit: its sleep ends at once.
        due.reading();
        due.committed(Some(2_000));
        due.sleeping_toward(Some(1_000));
        tokio::time::timeout(std::time::Duration::from_secs(5), due.earlier()).await.expect("the permit wakes it");
    }
}
