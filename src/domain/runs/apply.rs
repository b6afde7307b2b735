//! The projection of DAG, run and step entries. Each entry carries what it changes (step names,
//! dependants, outputs), so replay needs no compiled DAG.

use crate::domain::bundles::tables::PLUGINS;
use crate::domain::runs::step_key;
use crate::domain::runs::tables::AttemptRecord;
use crate::domain::runs::tables::DAG_SPECS;
use crate::domain::runs::tables::DAGS;
use crate::domain::runs::tables::DagRecord;
use crate::domain::runs::tables::DagVersion;
use crate::domain::runs::tables::RUN_TOKENS;
use crate::domain::runs::tables::RUN_WAITING;
use crate::domain::runs::tables::RUNS;
use crate::domain::runs::tables::RunRecord;
use crate::domain::runs::tables::RunStatus;
use crate::domain::runs::tables::SCHEDULES;
use crate::domain::runs::tables::STEPS;
use crate::domain::runs::tables::StepRecord;
use crate::domain::runs::tables::StepState;
use crate::domain::runs::{DagEvent, DagVersionRef};
use crate::kernel::ApplyError;
use crate::kernel::counters::COUNTERS;
use crate::kernel::event::Event;
use crate::kernel::invariant::take_one;
use crate::kernel::ledger::Entry;
use crate::kernel::store::rw;
use crate::kernel::{counters, due};
use redb::{ReadableTable, WriteTransaction};
use serde_json::Value;

fn bad(entry: &Entry, reason: impl std::fmt::Display) -> ApplyError {
    ApplyError::Entry { seq: entry.seq, kind: entry.kind.clone(), reason: reason.to_string() }
}

fn r(e: impl Into<redb::Error>) -> ApplyError {
    ApplyError::Storage(e.into())
}

fn s<'a>(entry: &'a Entry, k: &str) -> Result<&'a str, ApplyError> {
    entry.data[k].as_str().ok_or_else(|| bad(entry, format!("no {k}")))
}

fn run(txn: &WriteTransaction, entry: &Entry, id: &str) -> Result<RunRecord, ApplyError> {
    rw::get::<RunRecord>(&txn.open_table(RUNS).map_err(r)?, "runs", id)
        .map_err(|e| ApplyError::Record(e.to_string()))?
        .ok_or_else(|| bad(entry, format!("unknown run {id}")))
}

fn save_run(txn: &WriteTransaction, rec: &RunRecord) -> Result<(), ApplyError> {
    rw::put(&mut txn.open_table(RUNS).map_err(r)?, &rec.id, rec).map_err(ApplyError::Storage)
}

fn step(txn: &WriteTransaction, entry: &Entry, run: &str, name: &str) -> Result<StepRecord, ApplyError> {
    rw::get::<StepRecord>(&txn.open_table(STEPS).map_err(r)?, "steps", &step_key(run, name))
        .map_err(|e| ApplyError::Record(e.to_string()))?
        .ok_or_else(|| bad(entry, format!("unknown step {run}/{name}")))
}

fn save_step(txn: &WriteTransaction, rec: &StepRecord) -> Result<(), ApplyError> {
    rw::put(&mut txn.open_table(STEPS).map_err(r)?, &step_key(&rec.run, &rec.name), rec).map_err(ApplyError::Storage)
}

fn dag(txn: &WriteTransaction, entry: &Entry, name: &str) -> Result<Option<DagRecord>, ApplyError> {
    let _ = entry;
    rw::get::<DagRecord>(&txn.open_table(DAGS).map_err(r)?, "dags", name).map_err(|e| ApplyError::Record(e.to_string()))
}

/// Marks the dependants' needs as met.
fn release_dependants(txn: &WriteTransaction, entry: &Entry, run_id: &str) -> Result<(), ApplyError> {
    for d in entry.data["dependants"].as_array().into_iter().flatten() {
        let name = d.as_str().ok_or_else(|| bad(entry, "bad dependant"))?;
        let mut dep = step(txn, entry, run_id, name)?;
        take_one(&mut dep.pending_needs, || format!("step {run_id}/{name} pending needs"));
        save_step(txn, &dep)?;
    }
    Ok(())
}

fn finish_step(rec: &mut StepRecord, run: &mut RunRecord, state: StepState, now: i64) {
    if matches!(rec.state, StepState::Queued | StepState::Running) {
        take_one(&mut run.active, || format!("run {} active steps", run.id));
    }
    rec.state = state;
    rec.finished_ms = Some(now);
    run.terminal += 1;
}

/// Applies a DAG, run or step entry; `Ok(false)` if the kind is not the engine's.
pub fn apply(txn: &WriteTransaction, entry: &Entry) -> Result<bool, ApplyError> {
    let kind = entry.kind.as_str();
    if !(kind.starts_with("dag.")
        || kind.starts_with("run.")
        || kind.starts_with("step.")
        || kind.starts_with("schedule.")
        || kind == "plugin.registered")
    {
        return Ok(false);
    }
    if kind.starts_with("schedule.") {
        return apply_schedule(txn, entry).map(|_| true);
    }
    if let Some(event) = DagEvent::of(entry) {
        return apply_registry(txn, entry, event.map_err(|e| bad(entry, e))?).map(|_| true);
    }
    let run_id = s(entry, "runId")?.to_owned();
    if kind == "run.created" {
        return create_run(txn, entry, &run_id).map(|_| true);
    }
    let mut run = run(txn, entry, &run_id)?;
    if kind.starts_with("run.") {
        match kind {
            "run.succeeded" => run.status = RunStatus::Succeeded,
            "run.failed" => run.status = RunStatus::Failed,
            "run.cancelled" => run.status = RunStatus::Cancelled,
            "run.resumed" => run.status = RunStatus::Running,
            other => return Err(bad(entry, format!("unknown run entry {other}"))),
        }
        run.finished_ms = (kind != "run.resumed").then_some(entry.time);
        if kind != "run.resumed" {
            use crate::domain::runs::RUN_DURATION_BUCKETS;
            counters::increment(txn, &format!("runs:{}", kind.trim_start_matches("run.")))?;
            counters::observe(txn, "run_duration", &RUN_DURATION_BUCKETS, entry.time - run.created_ms)?;
        }
        save_run(txn, &run)?;
        return Ok(true);
    }
    let mut rec = step(txn, entry, &run_id, s(entry, "step")?)?;
    if matches!(kind, "step.retrying" | "step.interrupted" | "step.succeeded" | "step.failed" | "step.cancelled") {
        rec.end_attempt(kind.trim_start_matches("step."), entry.time, &entry.data);
    }
    match kind {
        "step.waiting" => {
            let mut counters = txn.open_table(COUNTERS).map_err(r)?;
            let seq = rw::counter(&counters, "wait_seq").map_err(ApplyError::Storage)? + 1;
            rw::set_counter(&mut counters, "wait_seq", seq).map_err(ApplyError::Storage)?;
            let key = format!("{run_id}/{seq:012}");
            txn.open_table(RUN_WAITING).map_err(r)?.insert(key.as_str(), rec.name.as_bytes()).map_err(r)?;
            rec.wait = Some(s(entry, "reason")?.to_owned());
            rec.wait_key = Some(key);
        }
        "step.queued" => {
            if let Some(key) = rec.wait_key.take() {
                txn.open_table(RUN_WAITING).map_err(r)?.remove(key.as_str()).map_err(r)?;
            }
            if rec.state == StepState::Failed {
                take_one(&mut run.terminal, || format!("run {} finished steps", run.id));
                take_one(&mut run.failed, || format!("run {} failed steps", run.id));
            }
            rec.state = StepState::Queued;
            rec.wait = None;
            rec.job = Some(s(entry, "jobId")?.to_owned());
            rec.queued_ms = Some(entry.time);
            rec.finished_ms = None;
            run.active += 1;
            if run.status == RunStatus::Planning {
                run.status = RunStatus::Running;
            }
        }
        "step.started" => {
            if let (0, Some(queued)) = (rec.attempts, rec.queued_ms) {
                use crate::domain::runs::STEP_QUEUE_BUCKETS;
                counters::observe(txn, "step_queue", &STEP_QUEUE_BUCKETS, entry.time - queued)?;
            }
            rec.state = StepState::Running;
            rec.worker = Some(s(entry, "worker")?.to_owned());
            // Every attempt counts, across manual retries (which start a new job).
            rec.attempts += 1;
            rec.started_ms = Some(entry.time);
            if rec.history.len() >= StepRecord::HISTORY_MAX {
                rec.history.remove(0);
            }
            rec.history.push(AttemptRecord {
                attempt: entry.data["attempt"].as_u64().unwrap_or(u64::from(rec.attempts)) as u32,
                worker: s(entry, "worker")?.to_owned(),
                started_ms: entry.time,
                finished_ms: None,
                outcome: None,
                error_code: None,
                error: None,
            });
        }
        "step.retrying" | "step.interrupted" => {
            rec.state = StepState::Queued;
            rec.error = entry.data["error"].as_str().map(str::to_owned);
            rec.error_code = entry.data["errorCode"].as_str().map(str::to_owned);
        }
        "step.succeeded" => {
            // An earlier attempt's error is history (the trace keeps it), not the step's state.
            rec.error = None;
            rec.error_code = None;
            rec.outputs = entry.data["outputs"].clone();
            finish_step(&mut rec, &mut run, StepState::Succeeded, entry.time);
            release_dependants(txn, entry, &run_id)?;
        }
        "step.failed" => {
            rec.error = entry.data["error"].as_str().map(str::to_owned);
            rec.error_code = entry.data["errorCode"].as_str().map(str::to_owned);
            finish_step(&mut rec, &mut run, StepState::Failed, entry.time);
            run.failed += 1;
        }
        "step.skipped" => {
            if rec.state != StepState::Failed {
                return Err(bad(entry, "only a failed step is skipped"));
            }
            rec.state = StepState::Skipped;
            take_one(&mut run.failed, || format!("run {} failed steps", run.id));
            release_dependants(txn, entry, &run_id)?;
        }
        "step.cancelled" => {
            if let Some(key) = rec.wait_key.take() {
                txn.open_table(RUN_WAITING).map_err(r)?.remove(key.as_str()).map_err(r)?;
            }
            if rec.state == StepState::Failed {
                take_one(&mut run.failed, || format!("run {} failed steps", run.id));
                take_one(&mut run.terminal, || format!("run {} finished steps", run.id));
            }
            finish_step(&mut rec, &mut run, StepState::Cancelled, entry.time);
        }
        other => return Err(bad(entry, format!("unknown step entry {other}"))),
    }
    save_step(txn, &rec)?;
    save_run(txn, &run)?;
    Ok(true)
}

fn create_run(txn: &WriteTransaction, entry: &Entry, run_id: &str) -> Result<(), ApplyError> {
    let d = &entry.data;
    let steps = d["steps"].as_array().ok_or_else(|| bad(entry, "no steps"))?;
    let rec = RunRecord {
        id: run_id.to_owned(),
        tenant: entry.tenant.clone(),
        dag: s(entry, "dag")?.to_owned(),
        version: d["version"].as_u64().ok_or_else(|| bad(entry, "no version"))? as u32,
        spec_sha256: s(entry, "specSha256")?.to_owned(),
        inputs: d["inputs"].clone(),
        inputs_hash: s(entry, "inputsHash")?.to_owned(),
        run_token: d["runToken"].as_str().map(str::to_owned),
        plugins: serde_json::from_value(d["plugins"].clone()).unwrap_or_default(),
        status: RunStatus::Planning,
        created_ms: entry.time,
        created_by: entry.actor.clone(),
        finished_ms: None,
        active: 0,
        steps: steps.len() as u32,
        terminal: 0,
        failed: 0,
    };
    for (i, st) in steps.iter().enumerate() {
        let name = st["name"].as_str().ok_or_else(|| bad(entry, "step without name"))?;
        let (plugin, needs) = (st["plugin"].as_str().unwrap_or_default(), st["needs"].as_u64().unwrap_or(0) as u32);
        save_step(txn, &StepRecord::pending(run_id, name, i as u32, plugin, needs))?;
    }
    if let Some(token) = &rec.run_token {
        let key = format!("{}/{token}", rec.tenant);
        txn.open_table(RUN_TOKENS).map_err(r)?.insert(key.as_str(), run_id.as_bytes()).map_err(r)?;
    }
    let n: u64 = run_id.strip_prefix("run-").and_then(|n| n.parse().ok()).ok_or_else(|| bad(entry, "bad run id"))?;
    let mut counters = txn.open_table(COUNTERS).map_err(r)?;
    if n > rw::counter(&counters, "run_seq").map_err(ApplyError::Storage)? {
        rw::set_counter(&mut counters, "run_seq", n).map_err(ApplyError::Storage)?;
    }
    drop(counters);
    save_run(txn, &rec)
}

/// Applies a registry entry (plugins, DAG versions). A plugin's record is the entry's data as
/// written, so a record from an older stella reads as it always did.
pub fn apply_registry(txn: &WriteTransaction, entry: &Entry, event: DagEvent) -> Result<(), ApplyError> {
    let name = match &event {
        DagEvent::PluginRegistered(d) => {
            let record = serde_json::json!({ "digest": entry.data["digest"], "entrypoint": entry.data["entrypoint"], "kinds": entry.data["kinds"],
                                             "unsigned": entry.data["unsigned"], "registeredMs": entry.time, "registeredBy": entry.actor });
            txn.open_table(PLUGINS)
                .map_err(r)?
                .insert(d.name.as_str(), serde_json::to_vec(&record).expect("json").as_slice())
                .map_err(r)?;
            return Ok(());
        }
        DagEvent::Registered(d) => d.name.clone(),
        DagEvent::Disabled(d) | DagEvent::Enabled(d) => d.name.clone(),
        DagEvent::RolledBack(d) => d.name.clone(),
    };
    let mut rec = dag(txn, entry, &name)?.unwrap_or(DagRecord { name: name.clone(), versions: vec![], active: 0 });
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
            txn.open_table(DAG_SPECS).map_err(r)?.insert(key.as_str(), d.spec.as_bytes()).map_err(r)?;
            arm_schedules(txn, entry, &name, &d.spec, false)?;
        }
        DagEvent::Disabled(DagVersionRef { version, .. }) | DagEvent::Enabled(DagVersionRef { version, .. }) => {
            let v =
                rec.versions.iter_mut().find(|v| v.version == version).ok_or_else(|| bad(entry, "unknown version"))?;
            v.disabled = entry.kind == "dag.disabled";
            // The triggers belong to the active version: disabling it pauses them.
            if version == rec.active {
                let reason = v.disabled.then(|| format!("DAG {name} version {version} is disabled"));
                disable_schedules(txn, entry, &name, reason)?;
            }
        }
        DagEvent::RolledBack(d) => {
            rec.active = d.to;
            let spec = active_spec(txn, entry, &name, rec.active)?;
            arm_schedules(txn, entry, &name, &spec, false)?;
        }
    }
    rw::put(&mut txn.open_table(DAGS).map_err(r)?, &name, &rec).map_err(ApplyError::Storage)
}

fn active_spec(txn: &WriteTransaction, entry: &Entry, name: &str, version: u32) -> Result<String, ApplyError> {
    let t = txn.open_table(DAG_SPECS).map_err(r)?;
    let key = format!("{name}@{version}");
    let v = t.get(key.as_str()).map_err(r)?.ok_or_else(|| bad(entry, format!("no spec {key}")))?;
    Ok(String::from_utf8_lossy(v.value()).into_owned())
}

fn schedule_timer(
    txn: &WriteTransaction,
    due: Option<i64>,
    dag: &str,
    index: u64,
    insert: bool,
) -> Result<(), ApplyError> {
    let Some(due) = due else { return Ok(()) };
    due::set(txn, due, &super::cron_key(dag, index), insert)
}

/// The schedules of one DAG, by key.
fn schedule_rows(txn: &WriteTransaction, dag: &str) -> Result<Vec<(String, Value)>, ApplyError> {
    let t = txn.open_table(SCHEDULES).map_err(r)?;
    let (from, to) = (format!("{dag}|"), format!("{dag}|\u{10FFFF}"));
    let mut out = Vec::new();
    for row in t.range(from.as_str()..to.as_str()).map_err(r)? {
        let (k, v) = row.map_err(r)?;
        out.push((
            k.value().to_owned(),
            serde_json::from_slice(v.value()).map_err(|e| ApplyError::Record(e.to_string()))?,
        ));
    }
    Ok(out)
}

fn put_schedule(txn: &WriteTransaction, key: &str, v: &Value) -> Result<(), ApplyError> {
    txn.open_table(SCHEDULES).map_err(r)?.insert(key, serde_json::to_vec(v).expect("json").as_slice()).map_err(r)?;
    Ok(())
}

/// Replaces a DAG's schedules with those of `spec`, armed from the entry's time (or disarmed).
/// A pause set by an operator survives a new version.
fn arm_schedules(
    txn: &WriteTransaction,
    entry: &Entry,
    dag: &str,
    spec: &str,
    disabled: bool,
) -> Result<(), ApplyError> {
    let mut paused = None;
    for (key, v) in schedule_rows(txn, dag)? {
        schedule_timer(txn, v["nextMs"].as_i64(), dag, v["index"].as_u64().unwrap_or(0), false)?;
        if v["paused"] == true {
            paused = Some(v["pausedBy"].clone());
        }
        txn.open_table(SCHEDULES).map_err(r)?.remove(key.as_str()).map_err(r)?;
    }
    let compiled = crate::domain::runs::spec::compile_registered(spec).map_err(|e| bad(entry, e))?;
    for (i, c) in compiled.cron.iter().enumerate() {
        let schedule = crate::domain::runs::cron::Schedule::parse(&c.schedule).map_err(|e| bad(entry, e))?;
        let live = !disabled && paused.is_none();
        let next = if live { schedule.next_after(entry.time) } else { None };
        let row = serde_json::json!({ "dag": dag, "index": i, "schedule": c.schedule, "inputs": c.inputs, "paused": paused.is_some(),
                                      "pausedBy": paused.clone().unwrap_or(Value::Null), "disabled": disabled, "nextMs": next,
                                      "lastMs": null, "lastRun": null, "lastError": null });
        put_schedule(txn, &format!("{dag}|{i}"), &row)?;
        schedule_timer(txn, next, dag, i as u64, true)?;
    }
    Ok(())
}

/// Pauses (with `reason`) or resumes a DAG's schedules as its active version is disabled or
/// enabled; an operator's own pause stays.
fn disable_schedules(
    txn: &WriteTransaction,
    entry: &Entry,
    dag: &str,
    reason: Option<String>,
) -> Result<(), ApplyError> {
    for (key, mut v) in schedule_rows(txn, dag)? {
        let index = v["index"].as_u64().unwrap_or(0);
        schedule_timer(txn, v["nextMs"].as_i64(), dag, index, false)?;
        v["disabled"] = Value::Bool(reason.is_some());
        v["disabledReason"] = reason.clone().map_or(Value::Null, Value::String);
        v["nextMs"] = Value::Null;
        if reason.is_none() && v["paused"] != true {
            let schedule = crate::domain::runs::cron::Schedule::parse(v["schedule"].as_str().unwrap_or_default())
                .map_err(|e| bad(entry, e))?;
            v["nextMs"] = serde_json::json!(schedule.next_after(entry.time));
            schedule_timer(txn, v["nextMs"].as_i64(), dag, index, true)?;
        }
        put_schedule(txn, &key, &v)?;
    }
    Ok(())
}

fn apply_schedule(txn: &WriteTransaction, entry: &Entry) -> Result<(), ApplyError> {
    let dag = s(entry, "dag")?.to_owned();
    for (key, mut v) in schedule_rows(txn, &dag)? {
        let index = v["index"].as_u64().unwrap_or(0);
        match entry.kind.as_str() {
            "schedule.fired" if entry.data["index"].as_u64() == Some(index) => {
                schedule_timer(txn, v["nextMs"].as_i64(), &dag, index, false)?;
                v["lastMs"] = serde_json::json!(entry.time);
                v["lastRun"] = entry.data["runId"].clone();
                v["lastError"] = entry.data["error"].clone();
                v["nextMs"] = entry.data["nextMs"].clone();
                schedule_timer(txn, v["nextMs"].as_i64(), &dag, index, true)?;
            }
            "schedule.fired" => continue,
            "schedule.paused" => {
                schedule_timer(txn, v["nextMs"].as_i64(), &dag, index, false)?;
                v["paused"] = Value::Bool(true);
                v["pausedBy"] = Value::String(entry.actor.clone());
                v["nextMs"] = Value::Null;
            }
            "schedule.resumed" => {
                v["paused"] = Value::Bool(false);
                v["pausedBy"] = Value::Null;
                if v["disabled"] != true {
                    let schedule =
                        crate::domain::runs::cron::Schedule::parse(v["schedule"].as_str().unwrap_or_default())
                            .map_err(|e| bad(entry, e))?;
                    v["nextMs"] = serde_json::json!(schedule.next_after(entry.time));
                    schedule_timer(txn, v["nextMs"].as_i64(), &dag, index, true)?;
                }
            }
            "schedule.cleared" => {
                schedule_timer(txn, v["nextMs"].as_i64(), &dag, index, false)?;
                txn.open_table(SCHEDULES).map_err(r)?.remove(key.as_str()).map_err(r)?;
                continue;
            }
            other => return Err(bad(entry, format!("unknown schedule entry {other}"))),
        }
        put_schedule(txn, &key, &v)?;
    }
    Ok(())
}
