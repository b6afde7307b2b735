//! Run traces, built from the ledger as it is exported: one trace per run (its id is the one
//! the run's plugins receive in `traceparent`), a span for the run, one per step and one per
//! attempt (worker, plugin and its pinned digest, outcome), and one per checkpoint's wait for
//! its approval (the approval id, each decision with actor and reason). A span belongs to the pack whose
//! window holds its end; spans still open at the window's end go in a later pack. A span that
//! began before the window takes its start from the run and step records.

use crate::domain::runs::step_key;
use crate::domain::runs::tables::RUNS;
use crate::domain::runs::tables::RunRecord;
use crate::domain::runs::tables::STEPS;
use crate::domain::runs::tables::StepRecord;
use crate::kernel::store::rw;
use crate::telemetry::otlp::{self, Span, SpanParts, int, kv, string};
use std::borrow::Cow;
use std::collections::HashMap;

/// What a trace needs of a ledger entry; everything else (inputs, outputs, specs) is skipped
/// while parsing, never allocated.
#[derive(Debug, serde::Deserialize)]
pub struct TraceEntry<'a> {
    pub time: i64,
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub data: TraceData<'a>,
}

impl<'a> TraceEntry<'a> {
    /// The entry's time, kind and data: located in the canonical stored form, where only the
    /// data is parsed; parsed whole from an older form.
    pub fn of(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        match crate::kernel::ledger::stored_head(bytes) {
            Some(h) => {
                Ok(TraceEntry { time: h.time, kind: Cow::Borrowed(h.kind), data: serde_json::from_slice(h.data)? })
            }
            None => serde_json::from_slice(bytes),
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TraceData<'a> {
    #[serde(borrow)]
    run_id: Cow<'a, str>,
    #[serde(borrow)]
    step: Cow<'a, str>,
    #[serde(borrow)]
    job_id: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
    attempt: Option<u64>,
    #[serde(borrow)]
    worker: Cow<'a, str>,
    #[serde(borrow)]
    error_code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow)]
    approval_id: Cow<'a, str>,
    #[serde(borrow)]
    actor: Cow<'a, str>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    on_timeout: Option<Cow<'a, str>>,
    /// A job's payload is a tenant's data of any shape: kept raw, read leniently.
    #[serde(borrow)]
    payload: Option<&'a serde_json::value::RawValue>,
}

impl<'a> TraceData<'a> {
    /// The plugin and pinned digest a step job's payload names; nothing for any other shape.
    fn payload(&self) -> TracePayload<'a> {
        self.payload.and_then(|raw| serde_json::from_str(raw.get()).ok()).unwrap_or_default()
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TracePayload<'a> {
    #[serde(borrow)]
    plugin: Option<Cow<'a, str>>,
    #[serde(borrow)]
    plugin_digest: Option<Cow<'a, str>>,
}

/// Entry kinds the traces are built from; the export parses only these further.
pub fn relevant(kind: &str) -> bool {
    kind.starts_with("run.") || kind.starts_with("step.") || kind.starts_with("approval.") || kind == "job.enqueued"
}

struct Attempt {
    start: i64,
    attempt: u32,
    worker: String,
    job: String,
}

pub struct Builder {
    runs: Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>,
    steps: Option<redb::ReadOnlyTable<&'static str, &'static [u8]>>,
    /// Ended spans of each run not yet written (written with the run's end, or at the finish).
    pending: HashMap<String, Vec<Span>>,
    order: Vec<String>,
    queued: HashMap<String, i64>,
    attempts: HashMap<String, Attempt>,
    /// Job id → (plugin, pinned digest) from `job.enqueued`.
    jobs: HashMap<String, (String, Option<String>)>,
    /// Step key → (approval id, checkpoint time) while a checkpoint waits.
    checkpoints: HashMap<String, (String, i64)>,
    /// Approval id → its decisions so far, in words.
    decisions: HashMap<String, Vec<String>>,
}

impl Builder {
    pub fn new(txn: &redb::ReadTransaction) -> Self {
        Builder {
            runs: txn.open_table(RUNS).ok(),
            steps: txn.open_table(STEPS).ok(),
            pending: HashMap::new(),
            order: Vec::new(),
            queued: HashMap::new(),
            attempts: HashMap::new(),
            jobs: HashMap::new(),
            checkpoints: HashMap::new(),
            decisions: HashMap::new(),
        }
    }

    fn run(&self, id: &str) -> Option<RunRecord> {
        rw::get::<RunRecord>(self.runs.as_ref()?, "runs", id).ok().flatten()
    }

    fn step(&self, run: &str, step: &str) -> Option<StepRecord> {
        rw::get::<StepRecord>(self.steps.as_ref()?, "steps", &step_key(run, step)).ok().flatten()
    }

    fn push(&mut self, run: &str, span: Span) {
        if !self.pending.contains_key(run) {
            self.order.push(run.to_owned());
        }
        self.pending.entry(run.to_owned()).or_default().push(span);
    }

    /// Feeds one ledger entry; `emit` receives the spans of each run's trace as it ends.
    pub fn feed(&mut self, e: &TraceEntry, emit: &mut dyn FnMut(Vec<Span>)) {
        let d = &e.data;
        let run = d.run_id.to_string();
        let step = d.step.to_string();
        let key = step_key(&run, &step);
        match e.kind.as_ref() {
            "job.enqueued" => {
                let p = d.payload();
                if let (false, Some(plugin)) = (d.id.is_empty(), p.plugin.as_deref()) {
                    let digest = p.plugin_digest.as_deref().map(str::to_owned);
                    self.jobs.insert(d.id.to_string(), (plugin.to_owned(), digest));
                }
            }
            "step.queued" => {
                self.queued.insert(key, e.time);
            }
            // A sub-orchestration step's attempt is its child run (a trace of its own).
            "step.child_started" => {
                self.queued.insert(key.clone(), e.time);
                let attempt = Attempt { start: e.time, attempt: 1, worker: "child run".to_owned(), job: String::new() };
                self.attempts.insert(key, attempt);
            }
            "step.started" => {
                let attempt = Attempt {
                    start: e.time,
                    attempt: d.attempt.unwrap_or(1) as u32,
                    worker: d.worker.to_string(),
                    job: d.job_id.to_string(),
                };
                self.attempts.insert(key, attempt);
            }
            "step.succeeded"
            | "step.failed"
            | "step.retrying"
            | "step.interrupted"
            | "step.cancelled"
            | "step.skipped"
            | "step.checkpoint_pending" => self.attempt_ended(e, &run, &step, &key),
            "approval.approved" | "approval.rejected" => {
                let verb = e.kind.trim_start_matches("approval.");
                let why = d.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
                self.decisions.entry(d.approval_id.to_string()).or_default().push(format!("{} {verb}{why}", d.actor));
            }
            "approval.expired" => {
                let then = d.on_timeout.as_deref().unwrap_or("reject");
                self.decisions.entry(d.approval_id.to_string()).or_default().push(format!("timed out: {then}"));
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
                let span = SpanParts {
                    trace_id: otlp::trace_id(&run),
                    span_id: otlp::run_span_id(&run),
                    parent: None,
                    name: "run",
                    start_ms: record.as_ref().map_or(e.time, |r| r.created_ms),
                    end_ms: e.time,
                    attributes,
                    error: (status != "succeeded").then(|| status.to_owned()),
                };
                self.push(&run, span.build());
                self.order.retain(|r| *r != run);
                if let Some(spans) = self.pending.remove(&run) {
                    emit(spans);
                }
            }
            _ => {}
        }
    }

    /// A step's attempt ended (or the step did without one: a skip): the attempt's span, and
    /// the step's unless it is queued again.
    fn attempt_ended(&mut self, e: &TraceEntry, run: &str, step: &str, key: &str) {
        let d = &e.data;
        let error = match e.kind.as_ref() {
            "step.succeeded" | "step.skipped" | "step.checkpoint_pending" => None,
            "step.cancelled" => Some("cancelled".to_owned()),
            _ => Some(format!(
                "{}: {}",
                d.error_code.as_deref().unwrap_or("error"),
                d.error.as_deref().unwrap_or_default()
            )),
        };
        // The step record only for what began before the window.
        let mut record: Option<Option<StepRecord>> = None;
        let mut lookup = |b: &Self| record.get_or_insert_with(|| b.step(run, step)).clone();
        // A step ending after its checkpoint ends the wait, not an attempt (that ended at the
        // checkpoint): a success carries the approval, a refusal its code.
        let checkpoint = e.kind == "step.checkpoint_pending";
        let after_checkpoint = if checkpoint {
            None
        } else {
            self.checkpoints.remove(key).or_else(|| {
                // Its checkpoint was before the window: the step record names the approval.
                let ends_wait = matches!(e.kind.as_ref(), "step.succeeded" | "step.failed" | "step.cancelled");
                let approval = match d.approval_id.is_empty() {
                    false => Some(d.approval_id.to_string()),
                    true if ends_wait => lookup(self).and_then(|r| r.approval),
                    true => None,
                };
                approval.map(|a| (a, e.time))
            })
        };
        let open = match after_checkpoint {
            Some(_) => None,
            None => self.attempts.remove(key).or_else(|| {
                // Started before the window: the step record has the last attempt's start.
                let r = lookup(self)?;
                Some(Attempt {
                    start: r.started_ms?,
                    attempt: r.attempts,
                    worker: r.worker.clone().unwrap_or_default(),
                    job: r.job.clone()?,
                })
            }),
        };
        if let Some((approval, since)) = after_checkpoint {
            let mut attributes = vec![
                kv("stella.run.id", string(run)),
                kv("stella.step", string(step)),
                kv("stella.outcome", string(e.kind.trim_start_matches("step."))),
            ];
            if !approval.is_empty() {
                attributes.push(kv("stella.approval.id", string(&approval)));
                if let Some(ds) = self.decisions.remove(&approval) {
                    attributes.push(kv("stella.approval.decisions", string(&ds.join("; "))));
                }
            }
            let span = SpanParts {
                trace_id: otlp::trace_id(run),
                span_id: otlp::approval_span_id(if approval.is_empty() { key } else { &approval }),
                parent: Some(otlp::step_span_id(run, step)),
                name: "approval",
                start_ms: since,
                end_ms: e.time,
                attributes,
                error: error.clone(),
            };
            self.push(run, span.build());
        }
        if checkpoint {
            self.checkpoints.insert(key.to_owned(), (d.approval_id.to_string(), e.time));
        }
        if let Some(a) = open.filter(|_| e.kind != "step.skipped") {
            let again = matches!(e.kind.as_ref(), "step.retrying" | "step.interrupted");
            let outcome =
                if e.kind == "step.checkpoint_pending" { "succeeded" } else { e.kind.trim_start_matches("step.") };
            let known = if again { self.jobs.get(&a.job).cloned() } else { self.jobs.remove(&a.job) };
            let (plugin, digest) = known.unwrap_or_else(|| {
                let plugin = lookup(self).map(|r| r.plugin).unwrap_or_default();
                let digest = self.run(run).and_then(|r| r.plugins.get(&plugin).cloned());
                (plugin, digest)
            });
            let mut attributes = vec![
                kv("stella.run.id", string(run)),
                kv("stella.step", string(step)),
                kv("stella.job.id", string(&a.job)),
                kv("stella.attempt", int(i64::from(a.attempt))),
                kv("stella.worker", string(&a.worker)),
                kv("stella.plugin", string(&plugin)),
                kv("stella.outcome", string(outcome)),
            ];
            if let Some(digest) = digest {
                attributes.push(kv("stella.plugin.digest", string(&digest)));
            }
            let span = SpanParts {
                trace_id: otlp::trace_id(run),
                span_id: otlp::attempt_span_id(&a.job, a.attempt),
                parent: Some(otlp::step_span_id(run, step)),
                name: "attempt",
                start_ms: a.start,
                end_ms: e.time,
                attributes,
                error: error.clone(),
            };
            self.push(run, span.build());
        }
        if !matches!(e.kind.as_ref(), "step.retrying" | "step.interrupted" | "step.checkpoint_pending") {
            let start = self.queued.remove(key).or_else(|| lookup(self).and_then(|r| r.queued_ms)).unwrap_or(e.time);
            let span = SpanParts {
                trace_id: otlp::trace_id(run),
                span_id: otlp::step_span_id(run, step),
                parent: Some(otlp::run_span_id(run)),
                name: "step",
                start_ms: start,
                end_ms: e.time,
                attributes: vec![
                    kv("stella.run.id", string(run)),
                    kv("stella.step", string(step)),
                    kv("stella.outcome", string(e.kind.trim_start_matches("step."))),
                ],
                error,
            };
            self.push(run, span.build());
        }
    }

    /// Writes the ended spans of runs that are still running at the window's end.
    pub fn finish(mut self, emit: &mut dyn FnMut(Vec<Span>)) {
        for run in std::mem::take(&mut self.order) {
            if let Some(spans) = self.pending.remove(&run) {
                emit(spans);
            }
        }
    }
}
