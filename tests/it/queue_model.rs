//! State-machine property test of the queue, leases and locks on virtual time: random
//! sequences of enqueue, lease, heartbeat, complete, fail, stale completions, time advances with
//! ticks, pause/resume, lock acquire/release/force-release and crash-then-reopen, driven
//! straight into the writer (no daemon). After every step:
//! no acknowledged job is lost; a job is leased at most once and the ready index, due index and
//! counters agree with the jobs; fencing tokens only grow; a job is dead exactly when its last
//! attempt failed; a stale token is always refused; the ledger verifies.

use crate::support::Direct;
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use redb::ReadableTable;
use std::collections::{BTreeMap, BTreeSet};
use stella::domain::locks::{ForceTarget, LockCommand};
use stella::domain::queue::QueueCommand;
use stella::domain::queue::tables::JOBS;
use stella::domain::queue::tables::JobRecord;
use stella::domain::queue::tables::JobState;
use stella::domain::queue::tables::QUEUES;
use stella::domain::queue::tables::QueueRecord;
use stella::domain::queue::tables::READY;
use stella::kernel::CommandError;
use stella::kernel::Committed;
use stella::kernel::store::Record;
use stella::machine::Command;

const TYPE: &str = "build";

#[derive(Debug, Clone)]
pub enum Step {
    Enqueue { max_attempts: u32 },
    Lease { worker: u8, max: u32, ttl_ms: u64 },
    Heartbeat { pick: usize },
    Complete { pick: usize },
    Fail { pick: usize, retryable: bool },
    CompleteStale { pick: usize },
    Advance { ms: i64 },
    Pause,
    Resume,
    Lock { owner: u8, resource: u8 },
    Unlock { pick: usize },
    ForceUnlock { resource: u8 },
    CrashReopen,
}

pub struct Model;

impl ReferenceStateMachine for Model {
    type State = ();
    type Transition = Step;

    fn init_state() -> BoxedStrategy<()> {
        Just(()).boxed()
    }

    fn transitions(_: &()) -> BoxedStrategy<Step> {
        prop_oneof![
            3 => (1u32..=3).prop_map(|max_attempts| Step::Enqueue { max_attempts }),
            3 => (0u8..3, 1u32..=3, 500u64..4_000).prop_map(|(worker, max, ttl_ms)| Step::Lease { worker, max, ttl_ms }),
            1 => any::<usize>().prop_map(|pick| Step::Heartbeat { pick }),
            2 => any::<usize>().prop_map(|pick| Step::Complete { pick }),
            2 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(pick, retryable)| Step::Fail { pick, retryable }),
            1 => any::<usize>().prop_map(|pick| Step::CompleteStale { pick }),
            3 => (0i64..6_000).prop_map(|ms| Step::Advance { ms }),
            1 => Just(Step::Pause),
            1 => Just(Step::Resume),
            1 => (0u8..3, 0u8..2).prop_map(|(owner, resource)| Step::Lock { owner, resource }),
            1 => any::<usize>().prop_map(|pick| Step::Unlock { pick }),
            1 => (0u8..2).prop_map(|resource| Step::ForceUnlock { resource }),
            1 => Just(Step::CrashReopen),
        ]
        .boxed()
    }

    fn apply(state: (), _: &Step) {
        state
    }
}

/// The system under test and what it has been told.
pub struct Sut {
    d: Direct,
    acked: BTreeSet<String>,
    /// Every lease we were granted: (job, token).
    held: Vec<(String, u64)>,
    /// Highest token granted for each job.
    latest: BTreeMap<String, u64>,
    max_token: u64,
    locks: Vec<(String, String, u64)>,
}

impl std::ops::Deref for Sut {
    type Target = Direct;
    fn deref(&self) -> &Direct {
        &self.d
    }
}

impl std::ops::DerefMut for Sut {
    fn deref_mut(&mut self) -> &mut Direct {
        &mut self.d
    }
}

impl Sut {
    fn job(&self, id: &str) -> JobRecord {
        let txn = self.store().read().unwrap();
        let t = txn.open_table(JOBS).unwrap();
        JobRecord::from_json_bytes(t.get(id).unwrap().unwrap().value()).unwrap()
    }

    fn settle(&mut self, job: &str, token: u64, command: Command) -> Result<Committed, CommandError> {
        let before = self.job(job);
        let current = before.state == JobState::Leased && before.lease.as_ref().is_some_and(|l| l.token == token);
        let result = self.submit(command);
        if self.latest.get(job) != Some(&token) {
            assert!(
                matches!(result, Err(CommandError::Conflict { .. })),
                "stale token {token} of {job} was accepted: {result:?}"
            );
        }
        if !current {
            assert!(result.is_err(), "a token that is not the current lease was accepted");
        }
        result
    }
}

pub struct QueueMachine;

impl StateMachineTest for QueueMachine {
    type SystemUnderTest = Sut;
    type Reference = Model;

    fn init_test(_: &()) -> Sut {
        Sut {
            d: Direct::new(),
            acked: BTreeSet::new(),
            held: vec![],
            latest: BTreeMap::new(),
            max_token: 0,
            locks: vec![],
        }
    }

    fn apply(mut sut: Sut, _: &(), step: Step) -> Sut {
        let pick = |v: usize, n: usize| if n == 0 { None } else { Some(v % n) };
        match step {
            Step::Enqueue { max_attempts } => {
                let c = sut
                    .submit(Command::Queue(QueueCommand::Enqueue {
                        tenant: "default".into(),
                        job_type: TYPE.into(),
                        payload: serde_json::json!({ "n": sut.acked.len() }),
                        priority: 100,
                        max_attempts: Some(max_attempts),
                        delay_ms: None,
                        idempotency_key: None,
                    }))
                    .unwrap();
                sut.acked.insert(c.entries[0].subjects[0].clone());
            }
            Step::Lease { worker, max, ttl_ms } => {
                let paused = queue(&sut).paused;
                let c = sut
                    .submit(Command::Queue(QueueCommand::Lease {
                        tenant: None,
                        worker: format!("w{worker}"),
                        worker_tenant: "default".into(),
                        types: vec![TYPE.into()],
                        max,
                        ttl_ms: Some(ttl_ms),
                        env: None,
                        agent: None,
                    }))
                    .unwrap();
                for entry in &c.entries {
                    assert!(!paused, "a paused type dispatched work");
                    for g in entry.data["leases"].as_array().unwrap() {
                        let (job, token) = (g["jobId"].as_str().unwrap().to_owned(), g["token"].as_u64().unwrap());
                        assert!(token > sut.max_token, "fencing token {token} did not increase past {}", sut.max_token);
                        sut.max_token = token;
                        sut.latest.insert(job.clone(), token);
                        sut.held.push((job, token));
                    }
                }
            }
            Step::Heartbeat { pick: p } => {
                if let Some(i) = pick(p, sut.held.len()) {
                    let (job, token) = sut.held[i].clone();
                    let cmd = Command::Queue(QueueCommand::Heartbeat {
                        tenant: None,
                        job: job.clone(),
                        token,
                        ttl_ms: Some(2_000),
                    });
                    let _ = sut.settle(&job, token, cmd);
                }
            }
            Step::Complete { pick: p } | Step::CompleteStale { pick: p } => {
                if let Some(i) = pick(p, sut.held.len()) {
                    let (job, token) = sut.held[i].clone();
                    let cmd =
                        Command::Queue(QueueCommand::Complete { tenant: None, job: job.clone(), token, result: None });
                    if sut.settle(&job, token, cmd).is_ok() {
                        assert_eq!(sut.job(&job).state, JobState::Succeeded);
                    }
                }
            }
            Step::Fail { pick: p, retryable } => {
                if let Some(i) = pick(p, sut.held.len()) {
                    let (job, token) = sut.held[i].clone();
                    let attempt = sut.job(&job).attempt;
                    let cmd = Command::Queue(QueueCommand::Fail {
                        tenant: None,
                        job: job.clone(),
                        token,
                        error: "boom".into(),
                        error_code: None,
                        retryable,
                    });
                    if sut.settle(&job, token, cmd).is_ok() {
                        let after = sut.job(&job);
                        let dead = !retryable || attempt >= after.max_attempts;
                        assert_eq!(after.state == JobState::Dead, dead, "{after:?}");
                    }
                }
            }
            Step::Advance { ms } => {
                sut.clock.advance_ms(ms);
                sut.submit(Command::Tick).unwrap();
            }
            Step::Pause => {
                sut.submit(Command::Queue(QueueCommand::Pause { job_type: TYPE.into(), create: true })).unwrap();
            }
            Step::Resume => {
                // Before any job or pause the type is unknown, and a resume of it is refused.
                match sut.submit(Command::Queue(QueueCommand::Resume { job_type: TYPE.into() })) {
                    Ok(_) | Err(stella::kernel::CommandError::NotFound { .. }) => {}
                    Err(e) => panic!("resume: {e}"),
                }
            }
            Step::Lock { owner, resource } => {
                let cmd = Command::Lock(LockCommand::Acquire {
                    tenant: "default".into(),
                    resource: format!("env:e{resource}"),
                    owner: format!("o{owner}"),
                    ttl_ms: Some(3_000),
                });
                if let Ok(c) = sut.submit(cmd) {
                    for e in c.entries.iter().filter(|e| e.kind == "lock.acquired" || e.kind == "lock.renewed") {
                        let token = e.data["token"].as_u64().unwrap();
                        if e.kind == "lock.acquired" {
                            assert!(token > sut.max_token, "lock token {token} did not increase");
                            sut.max_token = token;
                        }
                        sut.locks.push((e.data["lockId"].as_str().unwrap().into(), format!("o{owner}"), token));
                    }
                }
            }
            Step::Unlock { pick: p } => {
                if let Some(i) = pick(p, sut.locks.len()) {
                    let (lock_id, owner, token) = sut.locks[i].clone();
                    let _ = sut.submit(Command::Lock(LockCommand::Release { tenant: None, lock_id, owner, token }));
                }
            }
            Step::ForceUnlock { resource } => {
                let target = ForceTarget::Env(format!("e{resource}"));
                if let Ok(c) = sut.submit(Command::Lock(LockCommand::ForceRelease {
                    tenant: None,
                    target,
                    reason: Some("model".into()),
                    tokens: None,
                })) {
                    for e in &c.entries {
                        let old = e.data["token"].as_u64().unwrap();
                        // The old holder is refused from now on.
                        let lock_id = e.data["lockId"].as_str().unwrap().to_owned();
                        let holder = e.data["holder"].as_str().unwrap().to_owned();
                        let again = sut.submit(Command::Lock(LockCommand::Release {
                            tenant: None,
                            lock_id,
                            owner: holder,
                            token: old,
                        }));
                        assert!(again.is_err(), "a force-released holder could still release");
                        if let Some(t) = e.data["next"]["token"].as_u64() {
                            assert!(t > sut.max_token);
                            sut.max_token = t;
                        }
                    }
                }
            }
            Step::CrashReopen => sut.reopen(),
        }
        sut
    }

    fn check_invariants(sut: &Sut, _: &()) {
        let txn = sut.store().read().unwrap();
        let jobs = txn.open_table(JOBS).unwrap();
        let mut counts = QueueRecord::default();
        for id in &sut.acked {
            assert!(jobs.get(id.as_str()).unwrap().is_some(), "acknowledged job {id} is lost");
        }
        let ready_index: BTreeSet<String> =
            txn.open_table(READY).unwrap().iter().unwrap().map(|r| r.unwrap().1.value().to_owned()).collect();
        for row in jobs.iter().unwrap() {
            let job = JobRecord::from_json_bytes(row.unwrap().1.value()).unwrap();
            assert_eq!(job.state == JobState::Leased, job.lease.is_some(), "lease iff leased: {job:?}");
            assert_eq!(job.state == JobState::Ready, ready_index.contains(&job.id), "ready index agrees: {job:?}");
            assert!(job.attempt <= job.max_attempts, "{job:?}");
            match job.state {
                JobState::Ready => counts.ready += 1,
                JobState::Delayed => {
                    counts.delayed += 1;
                    assert!(job.not_before_ms > sut.now() - 1 || job.not_before_ms <= sut.now());
                }
                JobState::Leased => counts.leased += 1,
                JobState::Succeeded => counts.succeeded += 1,
                JobState::Dead => counts.dead += 1,
                JobState::Replayed | JobState::Resolved | JobState::Cancelled => {}
            }
        }
        let q = queue(sut);
        assert_eq!(
            (q.ready, q.delayed, q.leased, q.succeeded, q.dead),
            (counts.ready, counts.delayed, counts.leased, counts.succeeded, counts.dead)
        );
        assert!(stella::machine::verify(&txn).unwrap().ok, "the ledger replays to the same tables");
    }

    fn teardown(mut sut: Sut, _: ()) {
        sut.stop();
    }
}

fn queue(sut: &Sut) -> QueueRecord {
    let txn = sut.store().read().unwrap();
    let t = txn.open_table(QUEUES).unwrap();
    t.get(TYPE).unwrap().map(|v| QueueRecord::from_json_bytes(v.value()).unwrap()).unwrap_or_default()
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, .. ProptestConfig::default() })]
    #[test]
    fn queue_leases_and_locks_hold_their_invariants(sequential 1..40 => QueueMachine);
}

/// A worker that stalls past its lease (virtual time) and then completes is refused; the job
/// is leased again by another worker with a larger token and completes there.
#[test]
fn a_worker_paused_past_its_lease_is_refused_and_the_job_runs_elsewhere() {
    let mut sut = QueueMachine::init_test(&());
    let c = sut
        .submit(Command::Queue(QueueCommand::Enqueue {
            tenant: "default".into(),
            job_type: TYPE.into(),
            payload: serde_json::json!({}),
            priority: 100,
            max_attempts: Some(3),
            delay_ms: None,
            idempotency_key: None,
        }))
        .unwrap();
    let job = c.entries[0].subjects[0].clone();
    let lease = |sut: &Sut, worker: &str| {
        let c = sut
            .submit(Command::Queue(QueueCommand::Lease {
                tenant: None,
                worker: worker.into(),
                worker_tenant: "default".into(),
                types: vec![TYPE.into()],
                max: 1,
                ttl_ms: Some(1_000),
                env: None,
                agent: None,
            }))
            .unwrap();
        c.entries.first().map(|e| e.data["leases"][0]["token"].as_u64().unwrap())
    };
    let first = lease(&sut, "slow").expect("leased");
    sut.clock.advance_ms(1_001);
    sut.submit(Command::Tick).unwrap();
    let late = sut.submit(Command::Queue(QueueCommand::Complete {
        tenant: None,
        job: job.clone(),
        token: first,
        result: None,
    }));
    assert!(
        matches!(&late, Err(CommandError::Conflict { detail: m, .. }) if m.contains("stale lease token")),
        "{late:?}"
    );
    let stall = sut.job(&job);
    assert_eq!(stall.last_error.as_deref(), Some("lease expired"));
    // Backoff first: nothing to lease until the retry is due.
    assert_eq!(lease(&sut, "fast"), None);
    sut.clock.advance_ms(10_000);
    sut.submit(Command::Tick).unwrap();
    let second = lease(&sut, "fast").expect("leased again");
    assert!(second > first);
    sut.submit(Command::Queue(QueueCommand::Complete { tenant: None, job: job.clone(), token: second, result: None }))
        .unwrap();
    let done = sut.job(&job);
    assert_eq!((done.state, done.attempt), (JobState::Succeeded, 2));
    let txn = sut.store().read().unwrap();
    let ledger = stella::machine::read::ledger_after(&txn, 0, 100).unwrap();
    let stall_entry = ledger.iter().find(|e| e.kind == "lease.expired").expect("the stall is ledgered");
    assert_eq!(stall_entry.data["worker"], "slow");
    drop(txn);
    sut.stop();
}

fn enqueue(sut: &Sut, tenant: &str) -> String {
    let c = sut
        .submit(Command::Queue(QueueCommand::Enqueue {
            tenant: tenant.into(),
            job_type: TYPE.into(),
            payload: serde_json::json!({}),
            priority: 100,
            max_attempts: Some(2),
            delay_ms: None,
            idempotency_key: None,
        }))
        .unwrap();
    c.entries[0].subjects[0].clone()
}

fn lease_n(sut: &Sut, max: u32) -> Vec<(String, u64)> {
    let c = sut
        .submit(Command::Queue(QueueCommand::Lease {
            tenant: None,
            worker: "w".into(),
            worker_tenant: String::new(),
            types: vec![TYPE.into()],
            max,
            ttl_ms: Some(60_000),
            env: None,
            agent: None,
        }))
        .unwrap();
    c.entries
        .iter()
        .flat_map(|e| e.data["leases"].as_array().cloned().unwrap_or_default())
        .map(|g| (g["jobId"].as_str().unwrap().to_owned(), g["token"].as_u64().unwrap()))
        .collect()
}

/// A rate budget of 2/s with burst 2 lets two leases through at once, then one per 500 ms of
/// virtual time; when its `--for` runs out the tick removes it and dispatch is unlimited again.
#[test]
fn a_rate_budget_paces_dispatch_and_lapses_when_its_time_is_up() {
    let mut sut = QueueMachine::init_test(&());
    for _ in 0..8 {
        enqueue(&sut, "default");
    }
    let budget = stella::domain::queue::tables::Budget {
        rate_milli_per_s: Some(2_000),
        burst: Some(2),
        max_depth: None,
        until_ms: None,
        set_by: "t".into(),
        previous: None,
    };
    sut.submit(Command::Queue(QueueCommand::SetBudget {
        job_type: TYPE.into(),
        tenant: "*".into(),
        budget,
        for_ms: Some(10_000),
    }))
    .unwrap();
    assert_eq!(lease_n(&sut, 8).len(), 2, "the burst");
    assert_eq!(lease_n(&sut, 8).len(), 0, "no time has passed");
    sut.clock.advance_ms(500);
    assert_eq!(lease_n(&sut, 8).len(), 1, "one token per 500 ms");
    sut.clock.advance_ms(10_000);
    sut.submit(Command::Tick).unwrap();
    assert!(queue(&sut).budgets.is_empty(), "the budget lapsed");
    assert_eq!(lease_n(&sut, 8).len(), 5, "unlimited again");
    sut.stop();
}

/// A lock owned by a job (`job:<id>`) is released when the job's attempt ends, and its first
/// waiter gets it with a new token.
#[test]
fn a_lock_owned_by_a_job_is_released_when_the_job_finishes() {
    let mut sut = QueueMachine::init_test(&());
    let job = enqueue(&sut, "default");
    let (_, token) = lease_n(&sut, 1)[0].clone();
    let acquire = |owner: &str| {
        Command::Lock(LockCommand::Acquire {
            tenant: "default".into(),
            resource: "env:prod".into(),
            owner: owner.into(),
            ttl_ms: Some(60_000),
        })
    };
    let held = sut.submit(acquire(&format!("job:{job}"))).unwrap();
    let lock_token = held.entries[0].data["token"].as_u64().unwrap();
    sut.submit(acquire("promotion-9")).unwrap();
    let done = sut.submit(Command::Queue(QueueCommand::Complete { tenant: None, job, token, result: None })).unwrap();
    let released = done.entries.iter().find(|e| e.kind == "lock.released").expect("the job's lock is released with it");
    assert_eq!(released.data["next"]["owner"], "promotion-9");
    assert!(released.data["next"]["token"].as_u64().unwrap() > lock_token);
    sut.stop();
}

/// `locks.mode`: pessimistic updates need the lock's holder and token; after
/// `config set locks.mode optimistic` they need the version read instead (compare-and-set),
/// and a stale version is refused.
#[test]
fn lock_guarded_updates_follow_locks_mode() {
    let mut sut = QueueMachine::init_test(&());
    let update = |owner: &str, token: Option<u64>, expected_version: Option<u64>| {
        Command::Lock(LockCommand::Update {
            tenant: "default".into(),
            resource: "env:prod".into(),
            owner: owner.into(),
            token,
            expected_version,
            note: None,
        })
    };
    assert!(matches!(sut.submit(update("ci", None, None)), Err(CommandError::Conflict { .. })), "no lock, no update");
    let held = sut
        .submit(Command::Lock(LockCommand::Acquire {
            tenant: "default".into(),
            resource: "env:prod".into(),
            owner: "ci".into(),
            ttl_ms: None,
        }))
        .unwrap();
    let token = held.entries[0].data["token"].as_u64();
    let v1 = sut.submit(update("ci", token, None)).unwrap();
    assert_eq!(v1.entries[0].data["version"], 1);
    assert!(sut.submit(update("intruder", Some(999), None)).is_err());

    sut.submit(Command::Appliance(stella::domain::appliance::ApplianceCommand::SetConfig {
        key: "locks.mode".into(),
        value: "optimistic".into(),
    }))
    .unwrap();
    let v2 = sut.submit(update("a", None, Some(1))).unwrap();
    assert_eq!(v2.entries[0].data["version"], 2);
    let stale = sut.submit(update("b", None, Some(1)));
    assert!(
        matches!(&stale, Err(CommandError::Conflict { detail: m, .. }) if m.contains("is at version 2, not 1")),
        "{stale:?}"
    );
    sut.stop();
}
