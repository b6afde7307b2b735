//! Run traces, built from the ledger as it is exported: one trace per run (its id is the one
//! the run's plugins receive in `traceparent`), a span for the run, one per step and one per
//! attempt (worker, plugin and its pinned digest, outcome). A span belongs to the pack whose
//! window holds its end; spans still open at the window's end go in a later pack. A span that
//! began before the window takes its start from the run and step records.

use crate::engine::step_key;
use crate::ledger::Entry;
use crate::store::records::{RunRecord, StepRecord};
use crate::store::schema::{RUNS, STEPS, rw};
use crate::telemetry::otlp::{self, Span, int, kv, string};
use serde_json::Value;
use std::collections::HashMap;

struct Attempt {
    start: i64,
    attempt: u32,
    worker: String,
    job: String,
}

pub struct Builder<'a> {
    txn: &'a redb::ReadTransaction,
    resource: &'a Value,
    /// Ended spans of each run not yet written (written with the run's end, or at the finish).
    pending: HashMap<String, Vec<Value>>,
    order: Vec<String>,
    queued: HashMap<String, i64>,
    attempts: HashMap<String, Attempt>,
    /// Job id → (plugin, pinned digest) from `job.enqueued`.
    jobs: HashMap<String, (String, Option<String>)>,
}

impl<'a> Builder<'a> {
    pub fn new(txn: &'a redb::ReadTransaction, resource: &'a Value) -> Self {
        Builder {
            txn,
            resource,
            pending: HashMap::new(),
            order: Vec::new(),
            queued: HashMap::new(),
            attempts: HashMap::new(),
            jobs: HashMap::new(),
        }
    }

    fn run(&self, id: &str) -> Option<RunRecord> {
        rw::get::<RunRecord>(&self.txn.open_table(RUNS).ok()?, "runs", id).ok().flatten()
    }

    fn step(&self, run: &str, step: &str) -> Option<StepRecord> {
        rw::get::<StepRecord>(&self.txn.open_table(STEPS).ok()?, "steps", &step_key(run, step)).ok().flatten()
    }

    fn push(&mut self, run: &str, span: Value) {
        if !self.pending.contains_key(run) {
            self.order.push(run.to_owned());
        }
        self.pending.entry(run.to_owned()).or_default().push(span);
    }

    /// Feeds one ledger entry; `emit` receives each finished trace request line.
    pub fn feed(&mut self, e: &Entry, emit: &mut dyn FnMut(Value)) {
        let d = &e.data;
        let run = d["runId"].as_str().unwrap_or_default().to_owned();
        let step = d["step"].as_str().unwrap_or_default().to_owned();
        let key = step_key(&run, &step);
        match e.kind.as_str() {
            "job.enqueued" => {
                let p = &d["payload"];
                if let (Some(job), Some(plugin)) = (d["id"].as_str(), p["plugin"].as_str()) {
                    self.jobs
                        .insert(job.to_owned(), (plugin.to_owned(), p["pluginDigest"].as_str().map(str::to_owned)));
                }
            }
            "step.queued" => {
                self.queued.insert(key, e.time);
            }
            "step.started" => {
                let attempt = Attempt {
                    start: e.time,
                    attempt: d["attempt"].as_u64().unwrap_or(1) as u32,
                    worker: d["worker"].as_str().unwrap_or_default().to_owned(),
                    job: d["jobId"].as_str().unwrap_or_default().to_owned(),
                };
                self.attempts.insert(key, attempt);
            }
            "step.succeeded" | "step.failed" | "step.retrying" | "step.cancelled" | "step.skipped" => {
                let error = match e.kind.as_str() {
                    "step.succeeded" | "step.skipped" => None,
                    "step.cancelled" => Some("cancelled".to_owned()),
                    _ => Some(format!(
                        "{}: {}",
                        d["errorCode"].as_str().unwrap_or("error"),
                        d["error"].as_str().unwrap_or_default()
                    )),
                };
                let record = self.step(&run, &step);
                let open = self.attempts.remove(&key).or_else(|| {
                    // Started before the window: the step record has the last attempt's start.
                    let r = record.as_ref()?;
                    Some(Attempt {
                        start: r.started_ms?,
                        attempt: r.attempts,
                        worker: r.worker.clone().unwrap_or_default(),
                        job: r.job.clone()?,
                    })
                });
                if let Some(a) = open.filter(|_| e.kind != "step.skipped") {
                    let (plugin, digest) = self.jobs.get(&a.job).cloned().unwrap_or_else(|| {
                        let plugin = record.as_ref().map(|r| r.plugin.clone()).unwrap_or_default();
                        let digest = self.run(&run).and_then(|r| r.plugins.get(&plugin).cloned());
                        (plugin, digest)
                    });
                    let mut attributes = vec![
                        kv("stella.run.id", string(&run)),
                        kv("stella.step", string(&step)),
                        kv("stella.job.id", string(&a.job)),
                        kv("stella.attempt", int(i64::from(a.attempt))),
                        kv("stella.worker", string(&a.worker)),
                        kv("stella.plugin", string(&plugin)),
                        kv("stella.outcome", string(e.kind.trim_start_matches("step."))),
                    ];
                    if let Some(digest) = digest {
                        attributes.push(kv("stella.plugin.digest", string(&digest)));
                    }
                    let span = Span {
                        trace_id: otlp::trace_id(&run),
                        span_id: otlp::attempt_span_id(&a.job, a.attempt),
                        parent: Some(otlp::step_span_id(&run, &step)),
                        name: "attempt",
                        start_ms: a.start,
                        end_ms: e.time,
                        attributes,
                        error: error.clone(),
                    };
                    self.push(&run, span.to_json());
                }
                if e.kind != "step.retrying" {
                    let start =
                        self.queued.remove(&key).or(record.as_ref().and_then(|r| r.queued_ms)).unwrap_or(e.time);
                    let span = Span {
                        trace_id: otlp::trace_id(&run),
                        span_id: otlp::step_span_id(&run, &step),
                        parent: Some(otlp::run_span_id(&run)),
                        name: "step",
                        start_ms: start,
                        end_ms: e.time,
                        attributes: vec![
                            kv("stella.run.id", string(&run)),
                            kv("stella.step", string(&step)),
                            kv("stella.outcome", string(e.kind.trim_start_matches("step."))),
                        ],
                        error,
                    };
                    self.push(&run, span.to_json());
                }
            }
            "run.succeeded" | "run.failed" | "run.cancelled" => {
                let record = self.run(&run);
                let status = e.kind.trim_start_matches("run.");
                let mut attributes = vec![kv("stella.run.id", string(&run)), kv("stella.status", string(status))];
                if let Some(r) = &record {
                    attributes.push(kv("stella.dag", string(&r.dag)));
                    attributes.push(kv("stella.dag.version", int(i64::from(r.version))));
                    attributes.push(kv("stella.tenant", string(&r.tenant)));
                    attributes.push(kv("stella.started_by", string(&r.created_by)));
                }
                let span = Span {
                    trace_id: otlp::trace_id(&run),
                    span_id: otlp::run_span_id(&run),
                    parent: None,
                    name: "run",
                    start_ms: record.as_ref().map_or(e.time, |r| r.created_ms),
                    end_ms: e.time,
                    attributes,
                    error: (status != "succeeded").then(|| status.to_owned()),
                };
                self.push(&run, span.to_json());
                self.order.retain(|r| *r != run);
                if let Some(spans) = self.pending.remove(&run) {
                    emit(otlp::traces_request(self.resource, spans));
                }
            }
            _ => {}
        }
    }

    /// Writes the ended spans of runs that are still running at the window's end.
    pub fn finish(mut self, emit: &mut dyn FnMut(Value)) {
        for run in std::mem::take(&mut self.order) {
            if let Some(spans) = self.pending.remove(&run) {
                emit(otlp::traces_request(self.resource, spans));
            }
        }
    }
}
