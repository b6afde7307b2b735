//! The `Planner`: one run's working copy while a command is planned. Each entry it emits goes
//! through [`transition::evolve`] on the copy, the function the projection applies it with, so
//! one plan can cascade (a finished step releases its dependants, which are queued or wait for
//! a `maxParallelSteps` slot, and the run settles), and the copy is kept in the command's
//! scratch so that a second hook on the same run in one command plans on what the first left.

use crate::domain::approvals::{self, ApprovalRequested, tables::ApprovalState};
use crate::domain::bundles::tables::PLUGINS;
use crate::domain::cache;
use crate::domain::live::Effects;
use crate::domain::queue::apply::EnqueuedJob;
use crate::domain::queue::job_id;
use crate::domain::queue::tables::JOBS;
use crate::domain::queue::tables::JobRecord;
use crate::domain::queue::tables::JobState;
use crate::domain::queue::{DlqResolved, JobCancelled, QueueEvent};
use crate::domain::runs::CompiledDags;
use crate::domain::runs::run_id;
use crate::domain::runs::spec::{self, Compiled};
use crate::domain::runs::step_key;
use crate::domain::runs::tables::DAG_SPECS;
use crate::domain::runs::tables::DAGS;
use crate::domain::runs::tables::DagRecord;
use crate::domain::runs::tables::RUN_TOKENS;
use crate::domain::runs::tables::RUN_WAITING;
use crate::domain::runs::tables::RUNS;
use crate::domain::runs::tables::RunRecord;
use crate::domain::runs::tables::RunStatus;
use crate::domain::runs::tables::STEPS;
use crate::domain::runs::tables::StepRecord;
use crate::domain::runs::tables::StepState;
use crate::domain::runs::transition::{self, RunState};
use crate::domain::runs::{
    CreatedStep, NextRunSeq, RunCancelled, RunCreated, RunEvent, RunRef, StepCacheWaiting, StepCheckpoint, StepChild,
    StepFailed, StepQueued, StepRef, StepSkipped, StepSucceeded, StepWaiting,
};
use crate::kernel::CommandError;
use crate::kernel::PlanCtx;
use crate::kernel::counters::COUNTERS;
use crate::kernel::event::Event;
use crate::kernel::ledger::Draft;
use crate::kernel::storage;
use crate::kernel::store::rw;
use redb::{ReadableTable, WriteTransaction};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// The runs this command has planned so far, by id: a second hook on the same run in one
/// command (two outcomes in one tick) plans on what the first left.
#[derive(Default)]
pub(super) struct Working(HashMap<String, Work>);

/// A working copy of one run: what the projection will have made of it once the drafts so far
/// are applied, because both go through [`transition::evolve`].
struct Work {
    dag: Arc<Compiled>,
    run: RunRecord,
    steps: HashMap<String, StepRecord>,
    waiting: Option<VecDeque<String>>,
}

/// The child runs this command ended, in order: their parents' steps end in the same command
/// (`plan::follow_children`).
#[derive(Default)]
pub(super) struct ChildEnds(VecDeque<String>);

/// The next child run this command ended whose parent has not been told.
pub(super) fn next_child_end(ctx: &mut PlanCtx) -> Option<String> {
    ctx.scratch.get::<ChildEnds>().0.pop_front()
}

/// How a step's last attempt ended it.
pub(super) enum End {
    Succeeded(Value),
    /// A checkpoint's approval let it go on: its outputs are those it stopped with.
    Approved(String),
    /// A cache hit: the entry's outputs, without running.
    Cached(Value, cache::StepCache),
    Failed {
        error: String,
        code: String,
    },
    Skipped,
}

/// Plans one run: emits its entries and evolves its working copy with each.
pub(super) struct Planner<'t> {
    pub(super) txn: &'t WriteTransaction,
    pub(super) now: i64,
    pub(super) dag: Arc<Compiled>,
    pub(super) run: RunRecord,
    pub(super) steps: HashMap<String, StepRecord>,
    pub(super) drafts: Vec<Draft>,
    pub(super) waiting: Option<VecDeque<String>>,
    /// Set while a manual retry queues a step: it runs again, whatever the cache holds.
    pub(super) bypass_cache: bool,
    /// A child run that ended in this plan: its parent is told once the plan is done.
    ended_child: bool,
}

impl<'t> Planner<'t> {
    /// The run `id` (of `tenant`, if given), as this command has planned it so far.
    pub(super) fn load(
        txn: &'t WriteTransaction,
        ctx: &mut PlanCtx,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Self, CommandError> {
        Self::find(txn, ctx, tenant, id)?.ok_or_else(|| CommandError::NotFound { what: format!("run {id}") })
    }

    /// [`Planner::load`], `None` if there is no such run.
    pub(super) fn find(
        txn: &'t WriteTransaction,
        ctx: &mut PlanCtx,
        tenant: Option<&str>,
        id: &str,
    ) -> Result<Option<Self>, CommandError> {
        let working = ctx.scratch.get::<Working>();
        if let Some(w) = working.0.get(id) {
            if tenant.is_some_and(|t| t != w.run.tenant) {
                return Ok(None);
            }
            let Work { dag, run, steps, waiting } = working.0.remove(id).expect("present");
            return Ok(Some(Planner {
                txn,
                now: ctx.now,
                dag,
                run,
                steps,
                drafts: vec![],
                waiting,
                bypass_cache: false,
                ended_child: false,
            }));
        }
        let Some(run) = rw::get::<RunRecord>(&txn.open_table(RUNS).map_err(storage)?, "runs", id)
            .map_err(storage)?
            .filter(|r| tenant.is_none_or(|t| t == r.tenant))
        else {
            return Ok(None);
        };
        let dag = compiled(txn, ctx, &run.dag, run.version)?;
        Ok(Some(Planner {
            txn,
            now: ctx.now,
            dag,
            run,
            steps: HashMap::new(),
            drafts: vec![],
            waiting: None,
            bypass_cache: false,
            ended_child: false,
        }))
    }

    /// The step `name` of the run, `None` if it has none.
    pub(super) fn find_step(&mut self, name: &str) -> Result<Option<&mut StepRecord>, CommandError> {
        if !self.steps.contains_key(name) {
            let key = step_key(&self.run.id, name);
            let Some(rec) =
                rw::get::<StepRecord>(&self.txn.open_table(STEPS).map_err(storage)?, "steps", &key).map_err(storage)?
            else {
                return Ok(None);
            };
            self.steps.insert(name.to_owned(), rec);
        }
        Ok(self.steps.get_mut(name))
    }

    /// A run created in this very plan by `created`: every step pending, nothing waiting.
    pub(super) fn fresh(
        txn: &'t WriteTransaction,
        ctx: &PlanCtx,
        dag: Arc<Compiled>,
        created: RunCreated,
        tenant: &str,
    ) -> Self {
        let (run, steps) = transition::created(&created, tenant, ctx.now, "");
        let steps = steps.into_iter().map(|s| (s.name.clone(), s)).collect();
        let draft = RunEvent::Created(created).draft(tenant, vec![run.id.clone(), run.dag.clone()]);
        Planner {
            txn,
            now: ctx.now,
            dag,
            run,
            steps,
            drafts: vec![draft],
            waiting: Some(VecDeque::new()),
            bypass_cache: false,
            ended_child: false,
        }
    }

    /// Done with this run for now: its drafts; its working copy stays for the rest of the
    /// command.
    pub(super) fn done(self, ctx: &mut PlanCtx) -> Vec<Draft> {
        let Planner { dag, run, steps, waiting, drafts, ended_child, .. } = self;
        if ended_child {
            ctx.scratch.get::<ChildEnds>().0.push_back(run.id.clone());
        }
        ctx.scratch.get::<Working>().0.insert(run.id.clone(), Work { dag, run, steps, waiting });
        drafts
    }

    /// Records `event` and applies it to the working copy, as the projection will.
    pub(super) fn emit(&mut self, event: RunEvent) -> Result<(), CommandError> {
        if event.run_end().is_some() && self.run.parent.is_some() {
            self.ended_child = true;
        }
        transition::evolve(self, &event, self.now)?;
        self.drafts.push(event.draft(&self.run.tenant, event.subjects()));
        Ok(())
    }

    /// Step `name` is ending: if it computes a cache key it did not store (it failed, or is
    /// cancelled), the key is released and the steps waiting for it are woken.
    fn release_key(&mut self, ctx: &mut PlanCtx, name: &str) -> Result<(), CommandError> {
        let rec = self.step(name)?;
        let Some(c) = rec.cache.as_ref().filter(|c| !c.hit && c.waiting_for.is_none()) else { return Ok(()) };
        if !matches!(rec.state, StepState::Queued | StepState::Running) {
            return Ok(());
        }
        let at = cache::CacheHit { key: c.key.clone(), run_id: self.run.id.clone(), step: name.to_owned() };
        let tenant = self.run.tenant.clone();
        self.drafts.extend(cache::plan::end(self.txn, ctx, &tenant, &at, false)?);
        Ok(())
    }

    pub(super) fn last_failed(&mut self) -> Result<Option<String>, CommandError> {
        let mut best: Option<(i64, String)> = None;
        for name in self.dag.clone().steps.iter().map(|s| &s.name) {
            let rec = self.step(name)?;
            if rec.state == StepState::Failed && best.as_ref().is_none_or(|(t, _)| rec.finished_ms.unwrap_or(0) >= *t) {
                best = Some((rec.finished_ms.unwrap_or(0), name.clone()));
            }
        }
        Ok(best.map(|(_, n)| n))
    }

    pub(super) fn waiting(&mut self) -> Result<&mut VecDeque<String>, CommandError> {
        if self.waiting.is_none() {
            let t = self.txn.open_table(RUN_WAITING).map_err(storage)?;
            let from = format!("{}/", self.run.id);
            let to = format!("{}/\u{10FFFF}", self.run.id);
            let mut q = VecDeque::new();
            for row in t.range(from.as_str()..to.as_str()).map_err(storage)? {
                let (_, v) = row.map_err(storage)?;
                q.push_back(String::from_utf8_lossy(v.value()).into_owned());
            }
            self.waiting = Some(q);
        }
        Ok(self.waiting.as_mut().expect("loaded above"))
    }

    /// A step whose needs are met: queue it, or wait for a slot.
    pub(super) fn runnable(&mut self, ctx: &mut PlanCtx, idx: usize) -> Result<(), CommandError> {
        if self.run.active < self.dag.max_parallel {
            return self.enqueue(ctx, idx);
        }
        let waiting = StepWaiting {
            run_id: self.run.id.clone(),
            step: self.dag.steps[idx].name.clone(),
            reason: format!("maxParallelSteps={} reached", self.dag.max_parallel),
        };
        self.emit(RunEvent::StepWaiting(waiting))
    }

    /// The fingerprint's parts of step `idx` run with `inputs` (resolved).
    pub(super) fn fingerprint(&self, idx: usize, inputs: &Value) -> cache::Parts {
        let s = &self.dag.steps[idx];
        let digest = self.run.plugins.get(&s.plugin).map(String::as_str);
        let step = cache::Step {
            tenant: &self.run.tenant,
            dag: &self.run.dag,
            version: self.run.version,
            plugin: &s.plugin,
            digest,
            kind: s.kind.as_deref(),
            secrets: &s.secrets,
        };
        cache::parts(&step, inputs)
    }

    pub(super) fn enqueue(&mut self, ctx: &mut PlanCtx, idx: usize) -> Result<(), CommandError> {
        let s = self.dag.steps[idx].clone();
        let inputs = self.resolve(&s.inputs)?;
        if let Some(o) = &s.orchestration {
            return self.start_child(ctx, idx, o, inputs);
        }
        // A cached step (never a checkpoint's: an approval is not a result) is looked up first;
        // a live entry completes it without running it. A manual retry runs it again.
        let mut cached = None;
        if let Some(ttl_ms) = s.cache_ttl_ms.filter(|_| s.checkpoint.is_none() && !self.bypass_cache) {
            let key = cache::key(&self.fingerprint(idx, &inputs));
            let at = cache::CacheHit { key: key.clone(), run_id: self.run.id.clone(), step: s.name.clone() };
            if let Some(entry) = cache::plan::lookup(self.txn, ctx, &key)? {
                self.drafts.push(cache::plan::looked_up(&self.run.tenant, true, at));
                let meta = cache::StepCache {
                    hit: true,
                    key,
                    age_ms: Some(self.now - entry.stored_ms),
                    hits: Some(entry.hits + 1),
                    ttl_ms,
                    waiting_for: None,
                };
                return self.ended(ctx, idx, End::Cached(entry.outputs, meta));
            }
            // One computation per key: while another step computes it, this one waits.
            if let Some((computing, draft)) = cache::plan::wait(self.txn, ctx, &self.run.tenant, &at)? {
                self.drafts.push(draft);
                let waiting =
                    StepCacheWaiting { run_id: self.run.id.clone(), step: s.name, key, ttl_ms, waiting_for: computing };
                return self.emit(RunEvent::StepCacheWaiting(waiting));
            }
            self.drafts.push(cache::plan::begin(self.txn, ctx, &self.run.tenant, at)?);
            cached = Some(cache::StepCache { hit: false, key, age_ms: None, hits: None, ttl_ms, waiting_for: None });
        }
        let mut locks = Vec::with_capacity(s.locks.len());
        for l in &s.locks {
            let name = self.interpolate(l)?;
            locks.push(name.as_str().map(str::to_owned).unwrap_or_else(|| name.to_string()));
        }
        let not_before_ms = match s.plugin.as_str() {
            "wait" => match wait_until(&inputs, self.now) {
                Ok(at) => at,
                Err(error) => return self.ended(ctx, idx, End::Failed { error, code: "invalid_input".to_owned() }),
            },
            _ => self.now,
        };
        // A promotion's site gate: `gates.<name>.timeout` and `.retries`, set at runtime,
        // override its declaration from its next start on.
        let (mut timeout_ms, mut max_attempts) = (s.timeout_ms, s.retries + 1);
        if self.run.dag.starts_with("promote-") && s.kind.as_deref() == Some("gate") {
            let set = |field: &str| {
                crate::domain::appliance::plan::runtime_value(self.txn, ctx, &format!("gates.{}.{field}", s.name))
            };
            if let Some(ms) = set("timeout")?.and_then(|v| crate::runtime_config::as_ms(&v)) {
                timeout_ms = ms;
            }
            if let Some(r) = set("retries")?.and_then(|v| v.parse::<u32>().ok()) {
                max_attempts = r + 1;
            }
        }
        let seq = crate::domain::queue::take_job_seq(self.txn, ctx)?;
        let mut job = EnqueuedJob {
            id: job_id(seq),
            seq,
            job_type: s.plugin.clone(),
            priority: s.priority,
            payload: json!({ "run": self.run.id, "step": s.name, "plugin": s.plugin, "kind": s.kind, "pluginDigest": self.run.plugins.get(&s.plugin),
                             "inputs": inputs, "timeoutMs": timeout_ms, "secrets": s.secrets, "locks": locks }),
            max_attempts,
            not_before_ms,
            idempotency_key: None,
            replay_of: None,
            backoff_ms: Some(s.backoff_ms),
        };
        if let Some(agent) = &s.agent {
            // Only a remote deploy agent's step names one: other jobs' entries keep their shape.
            job.payload["agent"] = json!(agent);
        }
        let job_id = job.id.clone();
        self.drafts.push(QueueEvent::Enqueued(job).draft(&self.run.tenant, vec![job_id.clone()]));
        self.emit(RunEvent::StepQueued(StepQueued { run_id: self.run.id.clone(), step: s.name, job_id, cache: cached }))
    }

    /// A sub-orchestration step's turn: it starts its child run with `inputs`, or fails with
    /// the reason the child cannot start (an unknown or disabled DAG, a cycle, a bound).
    fn start_child(
        &mut self,
        ctx: &mut PlanCtx,
        idx: usize,
        o: &spec::SubOrchestration,
        inputs: Value,
    ) -> Result<(), CommandError> {
        let name = self.dag.steps[idx].name.clone();
        let fail = |code: &str, error: String| End::Failed { error, code: code.to_owned() };
        let limit = |ctx: &PlanCtx, key: &str| crate::domain::appliance::plan::runtime_u64(self.txn, ctx, key);
        let (max_depth, max_children) =
            (limit(ctx, "orchestrations.max_depth")?, limit(ctx, "orchestrations.max_children")?);
        let depth = self.run.parent.as_ref().map_or(0, |p| p.depth) + 1;
        if u64::from(depth) > max_depth {
            let error = format!(
                "a child run of DAG {} here would be {depth} deep; orchestrations.max_depth is {max_depth} (stella orch config set orchestrations.max_depth N)",
                o.dag
            );
            return self.ended(ctx, idx, fail("orchestration.depth_exceeded", error));
        }
        let mut chain = self.ancestors();
        if chain.contains(&o.dag) {
            chain.push(o.dag.clone());
            let error = format!("DAG cycle: {} (a run cannot start its own ancestor's DAG)", chain.join(" -> "));
            return self.ended(ctx, idx, fail("orchestration.cycle", error));
        }
        let mut in_flight = 0u64;
        for other in self.dag.clone().steps.iter().filter(|t| t.orchestration.is_some() && t.name != name) {
            if self.step(&other.name)?.state == StepState::Running {
                in_flight += 1;
            }
        }
        if in_flight >= max_children {
            let error = format!(
                "run {} already has {in_flight} child runs in flight; orchestrations.max_children is {max_children} (lower maxParallelSteps, or stella orch config set orchestrations.max_children N)",
                self.run.id
            );
            return self.ended(ctx, idx, fail("orchestration.fanout_exceeded", error));
        }
        let link = crate::domain::runs::ParentLink {
            run_id: self.run.id.clone(),
            step: name.clone(),
            depth,
            started_by: self.run.created_by.clone(),
            lineage: self.ancestors(),
        };
        let given = inputs.as_object().cloned().unwrap_or_default();
        let tenant = self.run.tenant.clone();
        match start_child(self.txn, ctx, &tenant, &o.dag, o.version, &given, link) {
            Ok((child, version, drafts)) => {
                self.drafts.extend(drafts);
                let started = StepChild {
                    run_id: self.run.id.clone(),
                    step: name,
                    child_run_id: child,
                    dag: o.dag.clone(),
                    version,
                };
                self.emit(RunEvent::StepChild(started))
            }
            Err(CommandError::NotFound { what }) => {
                let error = format!("child {what} is not registered (stella orch dag list)");
                self.ended(ctx, idx, fail("orchestration.child.not_found", error))
            }
            Err(CommandError::Conflict { code: "dag_version_disabled", detail }) => {
                let error = format!("child {detail}: enable it (stella orch dag enable {}) and retry", o.dag);
                self.ended(ctx, idx, fail("orchestration.child.disabled", error))
            }
            Err(e @ (CommandError::Conflict { .. } | CommandError::Invalid { .. })) => {
                let error = format!("child run of DAG {} cannot start: {e} ({})", o.dag, e.code());
                self.ended(ctx, idx, fail("orchestration.child.refused", error))
            }
            Err(e) => Err(e),
        }
    }

    /// The DAGs of this run and the runs above it, top-level run first.
    fn ancestors(&self) -> Vec<String> {
        let mut chain = self.run.parent.as_ref().map(|p| p.lineage.clone()).unwrap_or_default();
        chain.push(self.run.dag.clone());
        chain
    }

    /// How this (ended) child run ends its parent's step: succeeded with the outputs of its
    /// last steps (those nothing needs, merged in order) and its id as `childRunId`; failed
    /// naming its root-cause step and error; cancelled.
    pub(super) fn child_end(&mut self) -> Result<End, CommandError> {
        let (id, dag, version) = (self.run.id.clone(), self.run.dag.clone(), self.run.version);
        Ok(match self.run.status {
            RunStatus::Succeeded => {
                let mut outputs = Map::new();
                for s in self.dag.clone().steps.iter().filter(|s| s.dependants.is_empty()) {
                    if let Value::Object(o) = &self.step(&s.name)?.outputs {
                        outputs.extend(o.clone());
                    }
                }
                outputs.insert("childRunId".into(), json!(id));
                End::Succeeded(Value::Object(outputs))
            }
            RunStatus::Failed => {
                let cause = match self.last_failed()? {
                    Some(step) => {
                        let rec = self.step(&step)?;
                        format!(
                            "at step {step}: {} ({})",
                            rec.error.clone().unwrap_or_default(),
                            rec.error_code.clone().unwrap_or_default()
                        )
                    }
                    None => "without a failed step".to_owned(),
                };
                End::Failed {
                    error: format!("child run {id} (DAG {dag}@{version}) failed {cause}"),
                    code: "orchestration.child.failed".to_owned(),
                }
            }
            _ => End::Failed {
                error: format!("child run {id} (DAG {dag}@{version}) was cancelled"),
                code: "orchestration.child.cancelled".to_owned(),
            },
        })
    }

    /// The failed child run of step `name`, if it has one, is aborted (its parent's step is
    /// retried with a new child, skipped, or its run aborted).
    pub(super) fn abort_child(&mut self, ctx: &mut PlanCtx, name: &str) -> Result<(), CommandError> {
        let Some(child) = self.step(name)?.child.clone() else { return Ok(()) };
        let mut c = Planner::load(self.txn, ctx, None, &child)?;
        if c.run.status == RunStatus::Failed {
            c.cancel_all(ctx, true, None)?;
        }
        self.drafts.extend(c.done(ctx));
        Ok(())
    }

    /// Queues a failed step again (a new job); its dead job, if in the dead-letter queue, leaves it.
    pub(super) fn retry_step(&mut self, ctx: &mut PlanCtx, idx: usize, action: &str) -> Result<(), CommandError> {
        let name = self.dag.steps[idx].name.clone();
        let dead = self.dead_job(&name)?;
        self.bypass_cache = true;
        let queued = self.enqueue(ctx, idx);
        self.bypass_cache = false;
        queued?;
        if let Some(dead) = dead {
            let new = self.step(&name)?.job.clone();
            self.push_resolved(&name, &dead, action, new.as_deref());
        }
        Ok(())
    }

    /// The step's current job if it is in the dead-letter queue.
    pub(super) fn dead_job(&mut self, name: &str) -> Result<Option<String>, CommandError> {
        let Some(job) = self.step(name)?.job.clone() else { return Ok(None) };
        let jobs = self.txn.open_table(JOBS).map_err(storage)?;
        let state = rw::get::<JobRecord>(&jobs, "jobs", &job).map_err(storage)?.map(|j| j.state);
        Ok((state == Some(JobState::Dead)).then_some(job))
    }

    /// The step's dead job leaves the dead-letter queue: its run settled the step (`action`).
    pub(super) fn resolve_dead(
        &mut self,
        name: &str,
        action: &str,
        replaced_by: Option<&str>,
    ) -> Result<(), CommandError> {
        if let Some(dead) = self.dead_job(name)? {
            self.push_resolved(name, &dead, action, replaced_by);
        }
        Ok(())
    }

    pub(super) fn push_resolved(&mut self, name: &str, dead: &str, action: &str, replaced_by: Option<&str>) {
        let event = QueueEvent::DlqResolved(DlqResolved {
            run_id: self.run.id.clone(),
            step: name.to_owned(),
            job_id: dead.to_owned(),
            action: action.to_owned(),
            replaced_by: replaced_by.map(str::to_owned),
        });
        self.drafts.push(event.draft(&self.run.tenant, vec![self.run.id.clone(), dead.to_owned()]));
    }

    /// Substitutes `${inputs.x}` and `${steps.s.outputs.k}` in a step's inputs.
    pub(super) fn resolve(
        &mut self,
        inputs: &std::collections::BTreeMap<String, Value>,
    ) -> Result<Value, CommandError> {
        let mut out = Map::new();
        for (k, v) in inputs {
            let value = match v.as_str() {
                Some(text) => self.interpolate(text)?,
                None => v.clone(),
            };
            out.insert(k.clone(), value);
        }
        Ok(Value::Object(out))
    }

    pub(super) fn interpolate(&mut self, text: &str) -> Result<Value, CommandError> {
        let refs = spec::references(text);
        if refs.len() == 1 && text == format!("${{{}}}", refs[0]) {
            return self.lookup(&refs[0]);
        }
        let mut s = text.to_owned();
        for r in refs {
            let v = self.lookup(&r)?;
            let as_text = v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| if v.is_null() { String::new() } else { v.to_string() });
            s = s.replace(&format!("${{{r}}}"), &as_text);
        }
        Ok(Value::String(s))
    }

    pub(super) fn lookup(&mut self, reference: &str) -> Result<Value, CommandError> {
        let parts: Vec<&str> = reference.split('.').collect();
        Ok(match parts.as_slice() {
            ["inputs", name] => self.run.inputs[*name].clone(),
            ["steps", step, "outputs", key] => self.step(step)?.outputs[*key].clone(),
            _ => Value::Null,
        })
    }

    /// A step ended; on success or skip its dependants whose needs are now met are runnable,
    /// and freed slots are filled.
    pub(super) fn ended(&mut self, ctx: &mut PlanCtx, idx: usize, end: End) -> Result<(), CommandError> {
        let dag = self.dag.clone();
        let s = &dag.steps[idx];
        self.release_key(ctx, &s.name)?;
        let released: Vec<usize> = if matches!(end, End::Failed { .. }) { vec![] } else { s.dependants.clone() };
        let dependants: Vec<String> = released.iter().map(|d| dag.steps[*d].name.clone()).collect();
        let (run_id, step) = (self.run.id.clone(), s.name.clone());
        let event = match end {
            End::Succeeded(outputs) => RunEvent::StepSucceeded(StepSucceeded {
                run_id,
                step,
                dependants,
                outputs,
                approval_id: None,
                cache: None,
            }),
            End::Cached(outputs, meta) => RunEvent::StepSucceeded(StepSucceeded {
                run_id,
                step,
                dependants,
                outputs,
                approval_id: None,
                cache: Some(meta),
            }),
            End::Approved(approval) => {
                let outputs = self.step(&step)?.outputs.clone();
                RunEvent::StepSucceeded(StepSucceeded {
                    run_id,
                    step,
                    dependants,
                    outputs,
                    approval_id: Some(approval),
                    cache: None,
                })
            }
            End::Failed { error, code } => RunEvent::StepFailed(StepFailed {
                run_id,
                step,
                dependants,
                error: Some(error),
                error_code: Some(code),
            }),
            End::Skipped => RunEvent::StepSkipped(StepSkipped { run_id, step, dependants }),
        };
        self.emit(event)?;
        for d in released {
            let rec = self.step(&dag.steps[d].name)?;
            if rec.pending_needs == 0 && rec.state == StepState::Pending && rec.wait.is_none() {
                self.runnable(ctx, d)?;
            }
        }
        self.fill_slots(ctx)
    }

    /// A step with `checkpoint_after` succeeded with `outputs`: it asks for approval and waits,
    /// its slot freed for the next waiting step.
    pub(super) fn checkpoint(
        &mut self,
        ctx: &mut PlanCtx,
        idx: usize,
        outputs: Value,
        inputs_hash: String,
    ) -> Result<(), CommandError> {
        let s = &self.dag.steps[idx];
        let cp =
            s.checkpoint.clone().ok_or_else(|| CommandError::Storage(format!("step {} has no checkpoint", s.name)))?;
        let step = s.name.clone();
        let approval_id = approvals::plan::take_seq(self.txn, ctx)?;
        let request = ApprovalRequested {
            approval_id: approval_id.clone(),
            run_id: self.run.id.clone(),
            step: step.clone(),
            inputs_hash,
            dag: self.run.dag.clone(),
            dag_version: self.run.version,
            approvers: cp.approvers,
            self_approval: cp.self_approval,
            requested_by: self.run.created_by.clone(),
            deadline_ms: cp.timeout_ms.map(|t| self.now.saturating_add(t as i64)),
            on_timeout: cp.on_timeout,
        };
        self.drafts.push(approvals::plan::request(&self.run.tenant, request));
        self.emit(RunEvent::StepCheckpoint(StepCheckpoint {
            run_id: self.run.id.clone(),
            step,
            approval_id,
            outputs,
        }))?;
        self.fill_slots(ctx)
    }

    pub(super) fn fill_slots(&mut self, ctx: &mut PlanCtx) -> Result<(), CommandError> {
        while self.run.active < self.dag.max_parallel {
            let Some(name) = self.waiting()?.front().cloned() else { break };
            let idx = self
                .dag
                .step(&name)
                .map(|(i, _)| i)
                .ok_or_else(|| CommandError::Storage(format!("waiting step {name} is not in its DAG")))?;
            self.enqueue(ctx, idx)?;
        }
        Ok(())
    }

    /// Ends the run when nothing more can happen: succeeded if every step finished well,
    /// failed if a failed step blocks the rest.
    pub(super) fn settle(&mut self) -> Result<(), CommandError> {
        if !matches!(self.run.status, RunStatus::Running | RunStatus::Planning)
            || self.run.active > 0
            || self.run.checkpoints > 0
        {
            return Ok(());
        }
        if self.waiting.as_ref().is_some_and(|w| !w.is_empty()) {
            return Ok(());
        }
        let at = RunRef { run_id: self.run.id.clone() };
        if self.run.failed > 0 {
            self.emit(RunEvent::Failed(at))
        } else if self.run.terminal >= self.run.steps {
            self.emit(RunEvent::Succeeded(at))
        } else {
            Ok(())
        }
    }

    /// Cancels every unfinished step (and the job of a queued or running one, and the approval
    /// a checkpoint waits for — but `decided`, which this command settles), then the run.
    /// Failed steps stay failed.
    pub(super) fn cancel_all(
        &mut self,
        ctx: &mut PlanCtx,
        aborted: bool,
        decided: Option<&str>,
    ) -> Result<(), CommandError> {
        for name in self.dag.clone().steps.iter().map(|s| &s.name) {
            let rec = self.step(name)?.clone();
            if rec.state == StepState::Failed {
                self.resolve_dead(name, if aborted { "abort" } else { "cancel" }, None)?;
                self.abort_child(ctx, name)?;
            }
            if rec.state.terminal() {
                continue;
            }
            // A child run in flight is cancelled with its parent (and its own children).
            if let Some(child) = rec.child.as_ref().filter(|_| rec.state == StepState::Running) {
                let mut c = Planner::load(self.txn, ctx, None, child)?;
                if !c.run.status.terminal() {
                    c.cancel_all(ctx, aborted, None)?;
                }
                self.drafts.extend(c.done(ctx));
            }
            if let Some(id) =
                rec.approval.as_deref().filter(|id| rec.state == StepState::CheckpointPending && Some(*id) != decided)
                && let Some(a) = approvals::plan::find(self.txn, id)?.filter(|a| a.state == ApprovalState::Pending)
            {
                let why = format!("run {} was {}", self.run.id, if aborted { "aborted" } else { "cancelled" });
                self.drafts.push(approvals::plan::cancel(&a, &why));
            }
            if let Some(job) = rec.job.as_ref().filter(|_| matches!(rec.state, StepState::Queued | StepState::Running))
            {
                let jobs = self.txn.open_table(JOBS).map_err(storage)?;
                let state = rw::get::<JobRecord>(&jobs, "jobs", job).map_err(storage)?.map(|j| j.state);
                if matches!(state, Some(JobState::Ready | JobState::Delayed | JobState::Leased)) {
                    let event =
                        QueueEvent::Cancelled(JobCancelled { job_id: job.clone(), run_id: self.run.id.clone() });
                    self.drafts.push(event.draft(&self.run.tenant, vec![job.clone(), self.run.id.clone()]));
                }
            }
            self.release_key(ctx, name)?;
            self.emit(RunEvent::StepCancelled(StepRef { run_id: self.run.id.clone(), step: name.clone() }))?;
        }
        self.emit(RunEvent::Cancelled(RunCancelled { run_id: self.run.id.clone(), aborted }))
    }
}

impl RunState for Planner<'_> {
    type Error = CommandError;

    fn run(&mut self) -> &mut RunRecord {
        &mut self.run
    }

    fn step(&mut self, name: &str) -> Result<&mut StepRecord, CommandError> {
        if self.find_step(name)?.is_none() {
            return Err(CommandError::Storage(format!("run {} has no step {name}", self.run.id)));
        }
        Ok(self.steps.get_mut(name).expect("found above"))
    }

    fn wait(&mut self, name: &str) -> Result<(), CommandError> {
        self.waiting()?.push_back(name.to_owned());
        Ok(())
    }

    fn unwait(&mut self, name: &str) -> Result<(), CommandError> {
        if self.waiting.is_none() && self.step(name)?.wait.is_none() {
            return Ok(());
        }
        let q = self.waiting()?;
        if q.front().is_some_and(|n| n == name) {
            q.pop_front();
        } else {
            q.retain(|n| n != name);
        }
        Ok(())
    }

    fn refuse(&self, reason: String) -> CommandError {
        CommandError::Storage(format!("run {}: {reason}", self.run.id))
    }
}

/// The compiled DAG `name@version`, from the writer's cache or the stored spec.
pub(super) fn compiled(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    name: &str,
    version: u32,
) -> Result<Arc<Compiled>, CommandError> {
    let key = format!("{name}@{version}");
    if let Some(c) = ctx.derived.get::<CompiledDags>().0.get(&key) {
        return Ok(c.clone());
    }
    let text = {
        let t = txn.open_table(DAG_SPECS).map_err(storage)?;
        let v = t
            .get(key.as_str())
            .map_err(storage)?
            .ok_or_else(|| CommandError::NotFound { what: format!("DAG spec {key}") })?;
        String::from_utf8_lossy(v.value()).into_owned()
    };
    // Plugins were checked when the version was registered.
    let c = Arc::new(
        spec::compile_registered(&text).map_err(|e| CommandError::Storage(format!("stored spec {key}: {e}")))?,
    );
    ctx.derived.get::<CompiledDags>().0.insert(key, c.clone());
    Ok(c)
}

// Starting a run — a command's or a parent step's (a sub-orchestration), so that a child run
// and the step that waits on it are planned by the same planner.

/// Inputs of one run, serialized, at most.
const INPUTS_BYTES_MAX: usize = 256 * 1024;

/// The sealed digest of an installed plugin.
pub(super) fn plugin_digest(txn: &WriteTransaction, name: &str) -> Result<Option<String>, CommandError> {
    let t = txn.open_table(PLUGINS).map_err(storage)?;
    let v = t.get(name).map_err(storage)?;
    Ok(v.and_then(|v| serde_json::from_slice::<Value>(v.value()).ok())
        .and_then(|p| p["digest"].as_str().map(str::to_owned)))
}

pub(super) fn dag_record(txn: &WriteTransaction, name: &str) -> Result<Option<DagRecord>, CommandError> {
    rw::get::<DagRecord>(&txn.open_table(DAGS).map_err(storage)?, "dags", name).map_err(storage)
}

fn next_counter(txn: &WriteTransaction, name: &str) -> Result<u64, CommandError> {
    Ok(rw::counter(&txn.open_table(COUNTERS).map_err(storage)?, name).map_err(storage)? + 1)
}

/// A child run of `parent`'s step: DAG `dag` at `version` (or its active one). Returns its
/// id, its version and its drafts (a child may end in its start, as a fully cached run does).
pub(super) fn start_child(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: &str,
    dag: &str,
    version: Option<u32>,
    inputs: &Map<String, Value>,
    parent: crate::domain::runs::ParentLink,
) -> Result<(String, u32, Vec<Draft>), CommandError> {
    let e = start_run(txn, ctx, tenant, dag, version, inputs, None, Some(parent))?;
    let note = e.note.unwrap_or_default();
    let id = note["runId"].as_str().unwrap_or_default().to_owned();
    Ok((id, note["version"].as_u64().unwrap_or_default() as u32, e.drafts))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn start_run(
    txn: &WriteTransaction,
    ctx: &mut PlanCtx,
    tenant: &str,
    dag: &str,
    version: Option<u32>,
    given: &Map<String, Value>,
    run_token: Option<&str>,
    parent: Option<crate::domain::runs::ParentLink>,
) -> Result<Effects, CommandError> {
    let rec = dag_record(txn, dag)?.ok_or_else(|| CommandError::NotFound { what: format!("DAG {dag}") })?;
    let active = match version {
        Some(v) => rec
            .versions
            .iter()
            .find(|x| x.version == v)
            .ok_or_else(|| CommandError::NotFound { what: format!("DAG {dag} version {v}") })?,
        None => rec
            .versions
            .iter()
            .find(|v| v.version == rec.active)
            .ok_or_else(|| CommandError::Storage(format!("DAG {dag} has no active version")))?,
    };
    if active.disabled {
        return Err(CommandError::conflict(
            "dag_version_disabled",
            format!("DAG {dag} version {} is disabled", active.version),
        ));
    }
    let c = compiled(txn, ctx, dag, active.version)?;
    let inputs = merged_inputs(&c, given)?;
    let inputs_hash = hex::encode(Sha256::digest(crate::kernel::canonical::to_vec(&inputs)));
    if let Some(id) = run_token.map(|t| existing_run(txn, tenant, t, &inputs_hash)).transpose()?.flatten() {
        return Ok(Effects { note: Some(json!({ "existing": id })), ..Effects::default() });
    }
    let plugins = pinned_plugins(txn, dag, &c, active)?;
    let seq = match ctx.scratch.get::<NextRunSeq>().0 {
        Some(n) => n,
        None => next_counter(txn, "run_seq")?,
    };
    ctx.scratch.get::<NextRunSeq>().0 = Some(seq + 1);
    let id = run_id(seq);
    let steps = c
        .steps
        .iter()
        .map(|s| CreatedStep { name: s.name.clone(), plugin: s.plugin.clone(), needs: s.needs.len() as u32 })
        .collect();
    let created = RunCreated {
        run_id: id.clone(),
        dag: dag.to_owned(),
        version: active.version,
        spec_sha256: active.sha256.clone(),
        inputs,
        inputs_hash,
        run_token: run_token.map(str::to_owned),
        steps,
        plugins,
        parent,
    };
    let version = created.version;
    let mut p = Planner::fresh(txn, ctx, c.clone(), created, tenant);
    for (i, s) in c.steps.iter().enumerate() {
        if s.needs.is_empty() {
            p.runnable(ctx, i)?;
        }
    }
    // Every step may have come from the cache: the run can end in its start.
    p.settle()?;
    Ok(Effects { drafts: p.done(ctx), live: vec![], note: Some(json!({ "runId": id, "version": version })) })
}

/// The run `token` already started in `tenant`, if it did with the same inputs; a conflict if it
/// did with others.
fn existing_run(
    txn: &WriteTransaction,
    tenant: &str,
    token: &str,
    inputs_hash: &str,
) -> Result<Option<String>, CommandError> {
    let existing = {
        let t = txn.open_table(RUN_TOKENS).map_err(storage)?;
        t.get(format!("{tenant}/{token}").as_str())
            .map_err(storage)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned())
    };
    let Some(id) = existing else { return Ok(None) };
    match rw::get::<RunRecord>(&txn.open_table(RUNS).map_err(storage)?, "runs", &id).map_err(storage)? {
        Some(r) if r.inputs_hash == inputs_hash => Ok(Some(id)),
        _ => Err(CommandError::conflict(
            "run_token_reused",
            format!("runToken {token:?} already started {id} with different inputs"),
        )),
    }
}

/// The plugin digests a new run of `c` runs with: the version's pins (a signed DAG) or what is
/// installed now (a dev registration). Refused if a plugin is missing or its bundle quarantined.
fn pinned_plugins(
    txn: &WriteTransaction,
    dag: &str,
    c: &Compiled,
    version: &crate::domain::runs::tables::DagVersion,
) -> Result<std::collections::BTreeMap<String, String>, CommandError> {
    let mut plugins = std::collections::BTreeMap::new();
    for s in c.steps.iter().filter(|s| s.runs_plugin()) {
        if let Some(pinned) = version.plugins.get(&s.plugin) {
            plugins.insert(s.plugin.clone(), pinned.clone());
            continue;
        }
        let digest = plugin_digest(txn, &s.plugin)?.ok_or_else(|| {
            CommandError::conflict(
                "plugin_not_installed",
                format!("step {} needs plugin {:?}, which is not installed", s.name, s.plugin),
            )
        })?;
        plugins.insert(s.plugin.clone(), digest);
    }
    let pinned: Vec<(String, String)> = plugins.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(reason) = crate::domain::bundles::tables::quarantine_reason(txn, dag, &pinned)? {
        return Err(CommandError::conflict("bundle_quarantined", format!("DAG {dag} cannot start: {reason}")));
    }
    Ok(plugins)
}

fn merged_inputs(c: &Compiled, given: &Map<String, Value>) -> Result<Value, CommandError> {
    if let Some(unknown) = given.keys().find(|k| !c.inputs.contains_key(*k)) {
        let declared: Vec<&str> = c.inputs.keys().map(String::as_str).collect();
        let known = if declared.is_empty() {
            "it declares no inputs".to_owned()
        } else {
            format!("declared: {}", declared.join(", "))
        };
        return Err(CommandError::invalid("inputs", format!("input {unknown:?} is not declared by the DAG ({known})")));
    }
    let mut out = Map::new();
    for (k, default) in &c.inputs {
        match given.get(k).cloned().or_else(|| default.clone()) {
            Some(v) => {
                out.insert(k.clone(), v);
            }
            None => {
                return Err(CommandError::invalid("inputs", format!("input {k:?} is required (it has no default)")));
            }
        }
    }
    if serde_json::to_vec(&out).map_or(0, |v| v.len()) > INPUTS_BYTES_MAX {
        return Err(CommandError::invalid("inputs", format!("inputs are larger than {INPUTS_BYTES_MAX} bytes")));
    }
    Ok(Value::Object(out))
}

/// Waits this long at most (the queue's longest delay).
const WAIT_MAX_MS: u64 = 30 * 86_400_000;

/// When a built-in `wait` step with `inputs` (`since`: epoch ms, default `now`; `ms`) queued at
/// `now` may start: never before `now`.
fn wait_until(inputs: &Value, now: i64) -> Result<i64, String> {
    let number = |k: &str| -> Result<Option<u64>, String> {
        match &inputs[k] {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            v => v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                .map(Some)
                .ok_or_else(|| format!("wait: input {k} must be a whole number of milliseconds, not {v}")),
        }
    };
    let ms = number("ms")?.unwrap_or(0);
    if ms > WAIT_MAX_MS {
        return Err(format!("wait: ms {ms} is longer than {WAIT_MAX_MS} (30 days)"));
    }
    let since = number("since")?.map_or(now, |s| s as i64);
    Ok(since.saturating_add(ms as i64).max(now))
}
