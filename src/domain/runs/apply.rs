//! The projection of DAG, run, step and schedule entries. Each entry carries what it changes
//! (step names, dependants, outputs), so replay needs no compiled DAG; a run or step entry
//! changes its records through [`transition::evolve`], as the planner's working copy did.

use crate::domain::bundles::tables::PLUGINS;
use crate::domain::runs::step_key;
use crate::domain::runs::tables::DAG_SPECS;
use crate::domain::runs::tables::DAGS;
use crate::domain::runs::tables::DagRecord;
use crate::domain::runs::tables::DagVersion;
use crate::domain::runs::tables::RUN_TOKENS;
use crate::domain::runs::tables::RUN_WAITING;
use crate::domain::runs::tables::RUNS;
use crate::domain::runs::tables::RunRecord;
use crate::domain::runs::tables::SCHEDULES;
use crate::domain::runs::tables::STEPS;
use crate::domain::runs::tables::StepRecord;
use crate::domain::runs::transition::{self, RunState};
use crate::domain::runs::{DagEvent, DagVersionRef, RunCreated, RunEvent, ScheduleEvent};
use crate::kernel::counters::COUNTERS;
use crate::kernel::event::Event;
use crate::kernel::ledger::Entry;
use crate::kernel::{ApplyError, Tx};
use crate::kernel::{counters, due};
use serde_json::Value;
use std::collections::BTreeMap;

fn bad(entry: &Entry, reason: impl std::fmt::Display) -> ApplyError {
    ApplyError::Entry { seq: entry.seq, kind: entry.kind.clone(), reason: reason.to_string() }
}

/// A run's record, for [`Stored`], which saves it again.
fn run(tx: &Tx, entry: &Entry, id: &str) -> Result<RunRecord, ApplyError> {
    tx.take::<RunRecord>(RUNS, id)?.ok_or_else(|| bad(entry, format!("unknown run {id}")))
}

fn save_run(tx: &Tx, rec: RunRecord) -> Result<(), ApplyError> {
    tx.put(RUNS, &rec.id.clone(), rec)
}

/// A step's record, for [`Stored`], which saves it again.
fn step(tx: &Tx, entry: &Entry, run: &str, name: &str) -> Result<StepRecord, ApplyError> {
    tx.take::<StepRecord>(STEPS, &step_key(run, name))?.ok_or_else(|| bad(entry, format!("unknown step {run}/{name}")))
}

fn save_step(tx: &Tx, rec: StepRecord) -> Result<(), ApplyError> {
    tx.put(STEPS, &step_key(&rec.run, &rec.name), rec)
}

/// Applies a DAG, run, step or schedule entry; `Ok(false)` if the kind is not the engine's.
pub fn apply(tx: &Tx, entry: &Entry) -> Result<bool, ApplyError> {
    if let Some(event) = ScheduleEvent::of(entry) {
        return apply_schedule(tx, entry, &event.map_err(|e| bad(entry, e))?).map(|_| true);
    }
    if let Some(event) = DagEvent::of(entry) {
        return apply_registry(tx, entry, event.map_err(|e| bad(entry, e))?).map(|_| true);
    }
    let Some(event) = RunEvent::of(entry) else {
        let kind = entry.kind.as_str();
        if ["dag.", "run.", "step.", "schedule."].iter().any(|p| kind.starts_with(p)) {
            return Err(bad(entry, format!("unknown entry kind {kind}")));
        }
        return Ok(false);
    };
    let event = event.map_err(|e| bad(entry, e))?;
    if let RunEvent::Created(e) = &event {
        return create_run(tx, entry, e).map(|_| true);
    }
    let mut stored = Stored { tx, entry, run: run(tx, entry, event.run_id())?, steps: BTreeMap::new() };
    if let RunEvent::StepStarted(e) = &event
        && let rec = stored.step(&e.step)?
        && let (0, Some(queued)) = (rec.attempts, rec.queued_ms)
    {
        use crate::domain::runs::STEP_QUEUE_BUCKETS;
        counters::observe(tx, "step_queue", &STEP_QUEUE_BUCKETS, entry.time - queued)?;
    }
    transition::evolve(&mut stored, &event, entry.time)?;
    if event.run_end().is_some() {
        use crate::domain::runs::RUN_DURATION_BUCKETS;
        counters::increment(tx, &format!("runs:{}", entry.kind.trim_start_matches("run.")))?;
        counters::observe(tx, "run_duration", &RUN_DURATION_BUCKETS, entry.time - stored.run.created_ms)?;
    }
    stored.save().map(|_| true)
}

/// A run and the steps an entry touched, read from the tables and written back.
struct Stored<'t, 'a> {
    tx: &'t Tx<'a>,
    entry: &'t Entry,
    run: RunRecord,
    steps: BTreeMap<String, StepRecord>,
}

impl Stored<'_, '_> {
    fn save(self) -> Result<(), ApplyError> {
        for rec in self.steps.into_values() {
            save_step(self.tx, rec)?;
        }
        save_run(self.tx, self.run)
    }
}

impl RunState for Stored<'_, '_> {
    type Error = ApplyError;

    fn run(&mut self) -> &mut RunRecord {
        &mut self.run
    }

    fn step(&mut self, name: &str) -> Result<&mut StepRecord, ApplyError> {
        if !self.steps.contains_key(name) {
            let rec = step(self.tx, self.entry, &self.run.id, name)?;
            self.steps.insert(name.to_owned(), rec);
        }
        Ok(self.steps.get_mut(name).expect("inserted above"))
    }

    fn wait(&mut self, name: &str) -> Result<(), ApplyError> {
        let seq = self.tx.counter(COUNTERS, "wait_seq")? + 1;
        self.tx.set_counter(COUNTERS, "wait_seq", seq)?;
        let key = format!("{}/{seq:012}", self.run.id);
        self.tx.put_bytes(RUN_WAITING, &key, name.as_bytes())?;
        self.step(name)?.wait_key = Some(key);
        Ok(())
    }

    fn unwait(&mut self, name: &str) -> Result<(), ApplyError> {
        if let Some(key) = self.step(name)?.wait_key.take() {
            self.tx.remove(RUN_WAITING, &key)?;
        }
        Ok(())
    }

    fn refuse(&self, reason: String) -> ApplyError {
        bad(self.entry, reason)
    }
}

fn create_run(tx: &Tx, entry: &Entry, e: &RunCreated) -> Result<(), ApplyError> {
    let (rec, steps) = transition::created(e, &entry.tenant, entry.time, &entry.actor);
    for step in steps {
        save_step(tx, step)?;
    }
    if let Some(token) = &rec.run_token {
        tx.put_bytes(RUN_TOKENS, &format!("{}/{token}", rec.tenant), rec.id.as_bytes())?;
    }
    let n: u64 = rec.id.strip_prefix("run-").and_then(|n| n.parse().ok()).ok_or_else(|| bad(entry, "bad run id"))?;
    counters::raise(tx, "run_seq", n)?;
    save_run(tx, rec)
}

/// Applies a registry entry (plugins, DAG versions). A plugin's record is the entry's data as
/// written, so a record from an older stella reads as it always did.
pub fn apply_registry(tx: &Tx, entry: &Entry, event: DagEvent) -> Result<(), ApplyError> {
    let name = match &event {
        DagEvent::PluginRegistered(d) => {
            let record = serde_json::json!({ "digest": entry.data["digest"], "entrypoint": entry.data["entrypoint"], "kinds": entry.data["kinds"],
                                             "unsigned": entry.data["unsigned"], "registeredMs": entry.time, "registeredBy": entry.actor });
            return tx.put(PLUGINS, &d.name, record);
        }
        DagEvent::Registered(d) => d.name.clone(),
        DagEvent::Disabled(d) | DagEvent::Enabled(d) => d.name.clone(),
        DagEvent::RolledBack(d) => d.name.clone(),
    };
    let mut rec =
        tx.get::<DagRecord>(DAGS, &name)?.unwrap_or(DagRecord { name: name.clone(), versions: vec![], active: 0 });
    match event {
        DagEvent::PluginRegistered(_) => unreachable!("handled above"),
        DagEvent::Registered(d) => {
            rec.versions.push(DagVersion {
                version: d.version,
                sha256: d.sha256,
                registered_ms: entry.time,
                registered_by: entry.actor.clone(),
                unsigned: d.unsigned,
                disabled: false,
                plugins: d.plugins,
            });
            rec.active = d.version;
            let key = format!("{name}@{}", d.version);
            tx.put_bytes(DAG_SPECS, &key, d.spec.as_bytes())?;
            arm_schedules(tx, entry, &name, &d.spec, false)?;
        }
        DagEvent::Disabled(DagVersionRef { version, .. }) | DagEvent::Enabled(DagVersionRef { version, .. }) => {
            let v =
                rec.versions.iter_mut().find(|v| v.version == version).ok_or_else(|| bad(entry, "unknown version"))?;
            v.disabled = entry.kind == "dag.disabled";
            // The triggers belong to the active version: disabling it pauses them.
            if version == rec.active {
                let reason = v.disabled.then(|| format!("DAG {name} version {version} is disabled"));
                disable_schedules(tx, entry, &name, reason)?;
            }
        }
        DagEvent::RolledBack(d) => {
            rec.active = d.to;
            let spec = active_spec(tx, entry, &name, rec.active)?;
            arm_schedules(tx, entry, &name, &spec, false)?;
        }
    }
    tx.put(DAGS, &name, rec)
}

fn active_spec(tx: &Tx, entry: &Entry, name: &str, version: u32) -> Result<String, ApplyError> {
    let key = format!("{name}@{version}");
    let v = tx.get_bytes(DAG_SPECS, &key)?.ok_or_else(|| bad(entry, format!("no spec {key}")))?;
    Ok(String::from_utf8_lossy(&v).into_owned())
}

fn schedule_timer(tx: &Tx, due: Option<i64>, dag: &str, index: u64, insert: bool) -> Result<(), ApplyError> {
    let Some(due) = due else { return Ok(()) };
    due::set(tx, due, &super::cron_key(dag, index), insert)
}

/// The schedules of one DAG, by key.
fn schedule_rows(tx: &Tx, dag: &str) -> Result<Vec<(String, Value)>, ApplyError> {
    let (from, to) = (format!("{dag}|"), format!("{dag}|\u{10FFFF}"));
    tx.records(SCHEDULES, &from, Some(&to))
}

fn put_schedule(tx: &Tx, key: &str, v: Value) -> Result<(), ApplyError> {
    tx.put(SCHEDULES, key, v)
}

/// Replaces a DAG's schedules with those of `spec`, armed from the entry's time (or disarmed).
/// A pause set by an operator survives a new version.
fn arm_schedules(tx: &Tx, entry: &Entry, dag: &str, spec: &str, disabled: bool) -> Result<(), ApplyError> {
    let mut paused = None;
    for (key, v) in schedule_rows(tx, dag)? {
        schedule_timer(tx, v["nextMs"].as_i64(), dag, v["index"].as_u64().unwrap_or(0), false)?;
        if v["paused"] == true {
            paused = Some(v["pausedBy"].clone());
        }
        tx.remove(SCHEDULES, &key)?;
    }
    let compiled = crate::domain::runs::spec::compile_registered(spec).map_err(|e| bad(entry, e))?;
    for (i, c) in compiled.cron.iter().enumerate() {
        let schedule = crate::domain::runs::cron::Schedule::parse(&c.schedule).map_err(|e| bad(entry, e))?;
        let live = !disabled && paused.is_none();
        let next = if live { schedule.next_after(entry.time) } else { None };
        let row = serde_json::json!({ "dag": dag, "index": i, "schedule": c.schedule, "inputs": c.inputs, "paused": paused.is_some(),
                                      "pausedBy": paused.clone().unwrap_or(Value::Null), "disabled": disabled, "nextMs": next,
                                      "lastMs": null, "lastRun": null, "lastError": null });
        put_schedule(tx, &format!("{dag}|{i}"), row)?;
        schedule_timer(tx, next, dag, i as u64, true)?;
    }
    Ok(())
}

/// Pauses (with `reason`) or resumes a DAG's schedules as its active version is disabled or
/// enabled; an operator's own pause stays.
fn disable_schedules(tx: &Tx, entry: &Entry, dag: &str, reason: Option<String>) -> Result<(), ApplyError> {
    for (key, mut v) in schedule_rows(tx, dag)? {
        let index = v["index"].as_u64().unwrap_or(0);
        schedule_timer(tx, v["nextMs"].as_i64(), dag, index, false)?;
        v["disabled"] = Value::Bool(reason.is_some());
        v["disabledReason"] = reason.clone().map_or(Value::Null, Value::String);
        v["nextMs"] = Value::Null;
        if reason.is_none() && v["paused"] != true {
            let schedule = crate::domain::runs::cron::Schedule::parse(v["schedule"].as_str().unwrap_or_default())
                .map_err(|e| bad(entry, e))?;
            v["nextMs"] = serde_json::json!(schedule.next_after(entry.time));
            schedule_timer(tx, v["nextMs"].as_i64(), dag, index, true)?;
        }
        put_schedule(tx, &key, v)?;
    }
    Ok(())
}

fn apply_schedule(tx: &Tx, entry: &Entry, event: &ScheduleEvent) -> Result<(), ApplyError> {
    let dag = event.dag();
    for (key, mut v) in schedule_rows(tx, dag)? {
        let index = v["index"].as_u64().unwrap_or(0);
        match event {
            ScheduleEvent::Fired(e) if e.index == index => {
                schedule_timer(tx, v["nextMs"].as_i64(), dag, index, false)?;
                v["lastMs"] = serde_json::json!(entry.time);
                v["lastRun"] = serde_json::json!(e.run_id);
                v["lastError"] = serde_json::json!(e.error);
                v["nextMs"] = serde_json::json!(e.next_ms);
                schedule_timer(tx, e.next_ms, dag, index, true)?;
            }
            ScheduleEvent::Fired(_) => continue,
            ScheduleEvent::Paused(_) => {
                schedule_timer(tx, v["nextMs"].as_i64(), dag, index, false)?;
                v["paused"] = Value::Bool(true);
                v["pausedBy"] = Value::String(entry.actor.clone());
                v["nextMs"] = Value::Null;
            }
            ScheduleEvent::Resumed(_) => {
                v["paused"] = Value::Bool(false);
                v["pausedBy"] = Value::Null;
                if v["disabled"] != true {
                    let schedule =
                        crate::domain::runs::cron::Schedule::parse(v["schedule"].as_str().unwrap_or_default())
                            .map_err(|e| bad(entry, e))?;
                    v["nextMs"] = serde_json::json!(schedule.next_after(entry.time));
                    schedule_timer(tx, v["nextMs"].as_i64(), dag, index, true)?;
                }
            }
            ScheduleEvent::Cleared(_) => {
                schedule_timer(tx, v["nextMs"].as_i64(), dag, index, false)?;
                tx.remove(SCHEDULES, &key)?;
                continue;
            }
        }
        put_schedule(tx, &key, v)?;
    }
    Ok(())
}
