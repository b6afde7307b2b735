//! API request and response bodies. They are the wire contract (docs/openapi.json) and convert
//! explicitly from store records; a field added here never changes the on-disk format.

use crate::clock::{UnixMs, rfc3339};
use crate::domain::tokens::tables::TokenRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: String,
    pub live: bool,
    pub ready: bool,
    pub checks: HealthChecks,
    pub queue_depth: u64,
    pub version: String,
    /// Why it is not ready (e.g. the store cannot write: the disk is full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthChecks {
    pub store: bool,
    pub writer: bool,
    /// Installed bundles that no longer verify (runs needing them are refused).
    pub quarantined_bundles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub version: String,
    pub appliance_id: Option<String>,
    pub dev: bool,
    pub started_at: String,
    pub uptime_seconds: u64,
    pub store: StoreStatus,
    pub ledger: LedgerStatus,
    pub writer: WriterStatus,
    pub queue_depth: u64,
    pub listeners: Vec<String>,
    pub quarantined_bundles: Vec<String>,
    /// Steps waiting for a person: each pending approval the caller may see, one line each.
    #[serde(default)]
    pub waiting_approval: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoreStatus {
    pub path: String,
    pub size_bytes: u64,
    pub schema_version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LedgerStatus {
    pub height: u64,
    pub head_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WriterStatus {
    pub alive: bool,
    /// Durable commits since start; with `commands`, shows how much group commit batches.
    pub commits: u64,
    pub commands: u64,
    pub backlog: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenCreate {
    pub tenant: String,
    pub scopes: Vec<String>,
    /// A duration such as `30d`; absent means the token does not expire.
    pub expires: Option<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    /// The secret, shown this once; the appliance keeps only its sha256.
    pub token: String,
    #[serde(flatten)]
    pub info: Token,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Token {
    pub id: String,
    pub tenant: String,
    pub scopes: Vec<String>,
    pub state: String,
    pub description: Option<String>,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
    pub revoked_reason: Option<String>,
}

impl Token {
    pub fn from_record(rec: &TokenRecord, now_ms: UnixMs) -> Self {
        let state = if rec.revoked_ms.is_some() {
            "revoked"
        } else if rec.expires_ms.is_some_and(|e| now_ms >= e) {
            "expired"
        } else {
            "active"
        };
        Token {
            id: rec.id.clone(),
            tenant: rec.tenant.clone(),
            scopes: rec.scopes.clone(),
            state: state.to_owned(),
            description: rec.description.clone(),
            created_at: rfc3339(rec.created_ms),
            created_by: rec.created_by.clone(),
            expires_at: rec.expires_ms.map(rfc3339),
            revoked_at: rec.revoked_ms.map(rfc3339),
            revoked_by: rec.revoked_by.clone(),
            revoked_reason: rec.revoked_reason.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRevoke {
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenList {
    pub tokens: Vec<Token>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LedgerPage {
    pub entries: Vec<crate::kernel::ledger::Entry>,
    /// Pass as `after` for the next page; absent at the end.
    pub next_after: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DbVerify {
    pub ok: bool,
    pub entries: u64,
    pub head_seq: u64,
    pub head_hash: String,
    pub tables: Vec<String>,
    /// The ledger sequence of the first disagreement, if one names a sequence.
    pub failed_seq: Option<u64>,
    pub problem: Option<String>,
}

impl From<crate::kernel::verify::VerifyReport> for DbVerify {
    fn from(r: crate::kernel::verify::VerifyReport) -> Self {
        use crate::kernel::verify::VerifyProblem as P;
        let failed_seq = r.problem.as_ref().and_then(|p| match p {
            P::Chain { seq, .. } | P::Replay { seq, .. } => Some(*seq),
            P::Projection { seq, .. } => *seq,
        });
        DbVerify {
            ok: r.ok,
            entries: r.entries,
            head_seq: r.head_seq,
            head_hash: r.head_hash,
            tables: r.tables,
            failed_seq,
            problem: r.problem.map(|p| p.message()),
        }
    }
}

// ---- queue ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Enqueue {
    #[serde(rename = "type")]
    pub job_type: String,
    #[serde(default)]
    pub payload: serde_json::Value,
    /// 0–65535, higher first; default 100.
    pub priority: Option<u16>,
    pub max_attempts: Option<u32>,
    /// Not before this duration from now, e.g. `30s`.
    pub delay: Option<String>,
    pub idempotency_key: Option<String>,
    /// For the local administrator only: the tenant to enqueue for (default: the first allowed).
    pub tenant: Option<String>,
}

/// `POST /jobs`: one job, or an array of jobs enqueued together (all or none).
#[derive(Debug, Clone, PartialEq)]
pub enum EnqueueBody {
    One(Enqueue),
    Many(Vec<Enqueue>),
}

impl<'de> Deserialize<'de> for EnqueueBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Body;
        impl<'de> serde::de::Visitor<'de> for Body {
            type Value = EnqueueBody;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a job, or an array of jobs")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<EnqueueBody, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(EnqueueBody::Many)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<EnqueueBody, A::Error> {
                Enqueue::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(EnqueueBody::One)
            }
        }
        d.deserialize_any(Body)
    }
}

/// The answer to a batch: each job's id, in the order given, and whether this request created
/// it (`false`: its idempotency key named it already).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnqueuedJobs {
    pub jobs: Vec<EnqueuedRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnqueuedRef {
    pub id: String,
    pub created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub id: String,
    pub tenant: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub state: String,
    pub priority: u16,
    pub payload: serde_json::Value,
    pub attempt: u32,
    pub max_attempts: u32,
    pub created_at: String,
    pub not_before: String,
    pub lease: Option<JobLease>,
    pub last_error: Option<String>,
    pub idempotency_key: Option<String>,
    pub replay_of: Option<String>,
    pub replayed_as: Option<String>,
    pub result: Option<serde_json::Value>,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobLease {
    pub worker: String,
    pub token: u64,
    pub expires_at: String,
}

impl Job {
    pub fn from_record(j: &crate::domain::queue::tables::JobRecord) -> Self {
        Job {
            id: j.id.clone(),
            tenant: j.tenant.clone(),
            job_type: j.job_type.clone(),
            state: serde_json::to_value(j.state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            priority: j.priority,
            payload: j.payload.clone(),
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            created_at: rfc3339(j.created_ms),
            not_before: rfc3339(j.not_before_ms),
            lease: j.lease.as_ref().map(|l| JobLease {
                worker: l.worker.clone(),
                token: l.token,
                expires_at: rfc3339(l.expires_ms),
            }),
            last_error: j.last_error.clone(),
            idempotency_key: j.idempotency_key.clone(),
            replay_of: j.replay_of.clone(),
            replayed_as: j.replayed_as.clone(),
            result: j.result.clone(),
            finished_at: j.finished_ms.map(rfc3339),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseRequest {
    pub worker: String,
    pub types: Vec<String>,
    pub max: Option<u32>,
    /// Lease duration, e.g. `30s`; default `queue.lease_ttl`.
    pub ttl: Option<String>,
    /// Wait this long for work when none is ready (bounded by `queue.long_poll_max`).
    pub wait: Option<String>,
    /// The environment the worker serves (shown by `orch agent status --env`).
    pub env: Option<String>,
    /// Leasing as `env`'s deploy agent (`stella agent run`), of this stella version: only the
    /// jobs bound to the agent named `worker` (scope `orchestrator:agent`, a site token).
    #[serde(default)]
    pub agent: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Leased {
    pub job_id: String,
    pub token: u64,
    pub expires_at: String,
    pub attempt: u32,
    #[serde(rename = "type")]
    pub job_type: String,
    pub tenant: String,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseResponse {
    pub leases: Vec<Leased>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LeaseAction {
    pub token: u64,
    pub ttl: Option<String>,
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    /// For `fail`: a stable failure code such as `timeout` or `exit_status`.
    pub error_code: Option<String>,
    /// For `fail`: whether another attempt may follow (default true).
    pub retryable: Option<bool>,
    /// For `complete` and `fail`: lease the next job(s) in the same commit, once this one is
    /// settled (a lease request without `wait`).
    pub next: Option<LeaseRequest>,
}

/// The answer to a lease action: the job, and the next lease when one was asked for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Settled {
    #[serde(flatten)]
    pub job: Job,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<LeaseResponse>,
}

/// `POST /leases/complete`: one leased job's completion, with its fencing token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Completion {
    pub job_id: String,
    pub token: u64,
    pub result: Option<serde_json::Value>,
}

/// The answer to a completion of many: one outcome per completion, in the order given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Completions {
    pub completed: usize,
    pub results: Vec<CompletionOutcome>,
}

/// 200, or the status, code and detail the single-job `complete` would have answered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompletionOutcome {
    pub job_id: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    pub types: Vec<QueueTypeStatus>,
    pub depth: u64,
    pub leased: u64,
    pub dlq_depth: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueTypeStatus {
    #[serde(rename = "type")]
    pub job_type: String,
    pub ready: u64,
    pub delayed: u64,
    pub leased: u64,
    pub dead: u64,
    pub succeeded: u64,
    pub oldest_ready_age_seconds: Option<u64>,
    pub paused: bool,
    pub paused_by: Option<String>,
    pub budgets: Vec<BudgetDto>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BudgetDto {
    pub tenant: String,
    pub rate: Option<String>,
    pub burst: Option<u32>,
    pub max_depth: Option<u64>,
    pub until: Option<String>,
    pub set_by: String,
    /// A temporary budget: the budget it overrides, restored at `until` (none: no budget then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restores: Option<Box<BudgetDto>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BudgetSet {
    /// `*` (default) for every tenant together, or one tenant.
    pub tenant: Option<String>,
    /// Leases per second such as `50/s` (or `/m`, `/h`).
    pub rate: Option<String>,
    pub burst: Option<u32>,
    pub max_depth: Option<u64>,
    /// The budget lapses after this long and the defaults return, e.g. `30m`.
    #[serde(rename = "for")]
    pub for_: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DlqReplay {
    pub ids: Option<Vec<String>>,
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    pub all: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DlqPurge {
    pub ids: Vec<String>,
    /// sha256 of the NDJSON snapshot of these entries, written before the purge.
    pub snapshot_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// A bulk DLQ replay: dead DAG step jobs left where they are, with why (their run moved on).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refused>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Refused {
    pub id: String,
    pub reason: String,
}

// ---- locks ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Lock {
    pub id: String,
    pub resource: String,
    pub tenant: String,
    pub holder: Option<String>,
    pub token: Option<u64>,
    pub acquired_at: Option<String>,
    pub age_seconds: Option<u64>,
    pub expires_at: Option<String>,
    pub waiters: Vec<LockWaiterDto>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LockWaiterDto {
    pub owner: String,
    pub since: String,
}

impl Lock {
    pub fn from_record(l: &crate::domain::locks::tables::LockRecord, now_ms: UnixMs) -> Self {
        let h = l.holder.as_ref();
        Lock {
            id: l.id.clone(),
            resource: l.resource.clone(),
            tenant: l.tenant.clone(),
            holder: h.map(|h| h.owner.clone()),
            token: h.map(|h| h.token),
            acquired_at: h.map(|h| rfc3339(h.acquired_ms)),
            age_seconds: h.map(|h| ((now_ms - h.acquired_ms).max(0) / 1000) as u64),
            expires_at: h.map(|h| rfc3339(h.expires_ms)),
            waiters: l
                .waiters
                .iter()
                .map(|w| LockWaiterDto { owner: w.owner.clone(), since: rfc3339(w.since_ms) })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LockList {
    pub locks: Vec<Lock>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockAcquire {
    pub resource: String,
    pub owner: String,
    pub ttl: Option<String>,
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LockAcquired {
    pub lock_id: String,
    pub granted: bool,
    pub token: Option<u64>,
    pub position: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockRelease {
    pub owner: Option<String>,
    pub token: Option<u64>,
    #[serde(default)]
    pub force: bool,
    pub reason: Option<String>,
    /// With `POST /locks/release`: every held lock of this environment.
    pub env: Option<String>,
    /// A forced release of an environment's locks: the token each lock is forced from (as
    /// listed); a lock that has moved on since is left alone.
    #[serde(default)]
    pub tokens: Option<std::collections::BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    pub released: Vec<String>,
}

// ---- runtime config and workers ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigValue {
    pub key: String,
    pub value: Option<String>,
    /// `runtime` (set with `orch config set`) or `default` (the config file or built in).
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigList {
    pub values: Vec<ConfigValue>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSet {
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Worker {
    pub id: String,
    pub tenant: String,
    pub types: Vec<String>,
    pub env: Option<String>,
    pub leases: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub last_seen_seconds_ago: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerList {
    pub workers: Vec<Worker>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub resource: String,
    pub version: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceUpdate {
    pub owner: String,
    /// The lock token (pessimistic mode).
    pub token: Option<u64>,
    /// The version read before the change (optimistic mode).
    pub expected_version: Option<u64>,
    pub note: Option<String>,
    pub tenant: Option<String>,
}

// ---- DAGs and runs ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunStart {
    pub dag: String,
    #[serde(default)]
    pub inputs: serde_json::Map<String, serde_json::Value>,
    /// Idempotency: the same token with the same inputs returns the same run.
    pub run_token: Option<String>,
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub id: String,
    pub tenant: String,
    pub dag: String,
    pub version: u32,
    pub status: String,
    pub inputs: serde_json::Value,
    pub inputs_hash: String,
    pub run_token: Option<String>,
    pub created_at: String,
    pub created_by: String,
    pub finished_at: Option<String>,
    /// A child run: the parent run and sub-orchestration step that started it, and its depth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<serde_json::Value>,
    /// What the run waits on besides its running steps, one line each (a checkpoint's
    /// approval, a child run): a run that waits for a person or a child says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_on: Vec<String>,
    /// `concurrency.maxParallelSteps` (null: unbounded) and `caching` (the cached steps and
    /// their TTLs), from the run's DAG version.
    #[serde(default)]
    pub execution: serde_json::Value,
    pub steps: Vec<RunStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunStep {
    /// The step record id (`run-1/build`) that `--step` takes.
    pub id: String,
    pub name: String,
    pub state: String,
    pub plugin: String,
    /// Digest of the plugin bundle the run pinned; none for built-in kinds.
    pub plugin_digest: Option<String>,
    pub attempts: u32,
    pub job_id: Option<String>,
    pub worker: Option<String>,
    pub queued_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub error_code: Option<String>,
    pub error: Option<String>,
    /// Why a step that is not running waits.
    pub wait_reason: Option<String>,
    /// The latest approval its checkpoint asked for (`checkpoint_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// `cache`: the step's latest cache lookup (hit, key, ageMs and hits of a hit, ttlMs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<serde_json::Value>,
    pub outputs: serde_json::Value,
    /// Its latest attempts, oldest first, each with how it ended.
    #[serde(default)]
    pub history: Vec<StepAttempt>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepAttempt {
    pub attempt: u32,
    pub worker: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// `succeeded`, `failed`, `retrying`, `interrupted` (the appliance restarted), `cancelled`;
    /// none while it runs.
    pub outcome: Option<String>,
    pub error_code: Option<String>,
    pub error: Option<String>,
}

impl StepAttempt {
    pub fn from_record(a: &crate::domain::runs::tables::AttemptRecord) -> Self {
        StepAttempt {
            attempt: a.attempt,
            worker: a.worker.clone(),
            started_at: rfc3339(a.started_ms),
            finished_at: a.finished_ms.map(rfc3339),
            outcome: a.outcome.clone(),
            error_code: a.error_code.clone(),
            error: a.error.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: String,
    pub dag: String,
    pub version: u32,
    pub status: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub steps: u32,
    pub failed: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunList {
    pub runs: Vec<RunSummary>,
}

/// A checkpoint's approval (`GET /approvals/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub id: String,
    pub tenant: String,
    /// `pending`, `approved`, `rejected`, `expired`, `cancelled`.
    pub state: String,
    pub run_id: String,
    pub step: String,
    /// The step record id (`run-1/review`).
    pub step_record_id: String,
    pub dag: String,
    pub dag_version: u32,
    /// sha256 of the step's canonical inputs the approval is bound to.
    pub inputs_hash: String,
    /// Distinct approvers needed, and approvals so far.
    pub approvers: u32,
    pub approvals: u32,
    pub self_approval: bool,
    pub requested_by: String,
    pub requested_at: String,
    pub deadline: Option<String>,
    pub on_timeout: Option<String>,
    pub decisions: Vec<ApprovalDecision>,
    pub resolved_at: Option<String>,
    pub resolution: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalDecision {
    pub actor: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub reason: Option<String>,
    pub at: String,
}

impl Approval {
    pub fn from_record(r: &crate::domain::approvals::tables::ApprovalRecord) -> Self {
        use crate::clock::rfc3339;
        Approval {
            id: r.id.clone(),
            tenant: r.tenant.clone(),
            state: r.state.as_str().to_owned(),
            run_id: r.run.clone(),
            step: r.step.clone(),
            step_record_id: format!("{}/{}", r.run, r.step),
            dag: r.dag.clone(),
            dag_version: r.dag_version,
            inputs_hash: r.inputs_hash.clone(),
            approvers: r.approvers,
            approvals: r.approvals(),
            self_approval: r.self_approval,
            requested_by: r.requested_by.clone(),
            requested_at: rfc3339(r.requested_ms),
            deadline: r.deadline_ms.map(rfc3339),
            on_timeout: r.on_timeout.map(|t| t.as_str().to_owned()),
            decisions: r
                .decisions
                .iter()
                .map(|d| ApprovalDecision {
                    actor: d.actor.clone(),
                    decision: d.decision.clone(),
                    reason: d.reason.clone(),
                    at: rfc3339(d.at_ms),
                })
                .collect(),
            resolved_at: r.resolved_ms.map(rfc3339),
            resolution: r.resolution.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ApprovalList {
    pub approvals: Vec<Approval>,
}

/// `POST /approvals/{id}/approve|reject`: why (required to reject).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalDecide {
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunAction {
    /// A step record id (`run-1/build`) or step name; default: the last failed step.
    pub step_record_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Dag {
    pub name: String,
    pub active: u32,
    pub versions: Vec<DagVersionDto>,
    /// The active version's spec (TOML), when asked for (`?spec=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DagVersionDto {
    pub version: u32,
    pub sha256: String,
    pub registered_at: String,
    pub registered_by: String,
    pub unsigned: bool,
    pub disabled: bool,
}

impl Dag {
    pub fn from_record(d: &crate::domain::runs::tables::DagRecord) -> Self {
        Dag {
            name: d.name.clone(),
            active: d.active,
            versions: d
                .versions
                .iter()
                .map(|v| DagVersionDto {
                    version: v.version,
                    sha256: v.sha256.clone(),
                    registered_at: rfc3339(v.registered_ms),
                    registered_by: v.registered_by.clone(),
                    unsigned: v.unsigned,
                    disabled: v.disabled,
                })
                .collect(),
            spec: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DagList {
    pub dags: Vec<Dag>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DagRegister {
    /// The DAG spec, TOML.
    pub spec: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DagVersionAction {
    pub version: Option<u32>,
}

// ---- releases: environments, the artifact registry, deployments (DESIGN.md §9) ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub id: String,
    pub env: String,
    pub artifact: String,
    pub digest: String,
    pub kind: String,
    pub status: String,
    pub run_id: String,
    pub actor: String,
    pub agent: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    pub failed_step: Option<String>,
    pub reason: Option<String>,
    #[serde(default)]
    pub forced: Vec<String>,
    pub promotion: Option<String>,
}

impl Deployment {
    pub fn from_record(d: &crate::domain::release::tables::DeploymentRecord) -> Self {
        Deployment {
            id: d.id.clone(),
            env: d.env.clone(),
            artifact: d.artifact.clone(),
            digest: d.digest.clone(),
            kind: d.kind.as_str().to_owned(),
            status: d.status.as_str().to_owned(),
            run_id: d.run_id.clone(),
            actor: d.actor.clone(),
            agent: d.agent.clone(),
            created_at: rfc3339(d.created_ms),
            started_at: d.started_ms.map(rfc3339),
            ended_at: d.ended_ms.map(rfc3339),
            duration_ms: d.ended_ms.map(|e| e - d.created_ms),
            error: d.error.clone(),
            failed_step: d.failed_step.clone(),
            reason: d.reason.clone(),
            forced: d.forced.clone(),
            promotion: d.promotion.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentList {
    pub deployments: Vec<Deployment>,
}

/// `POST /deployments`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeployRequest {
    pub env: String,
    pub artifact: String,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /promotions`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromotionStart {
    /// `name@version`.
    pub artifact: String,
    /// The environment it is promoted into.
    pub to: String,
    /// Promote although the artifact has not succeeded where `to` promotes from (admin).
    #[serde(default)]
    pub force_path: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /promotions/{id}/abort`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromotionAbort {
    pub reason: String,
}

/// A promotion (DESIGN.md §9): an artifact moving into an environment through its gates, then
/// deployed by its agent and checked; a run of the environment's promotion DAG.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    pub id: String,
    pub artifact: String,
    pub from: Option<String>,
    pub env: String,
    /// `in_progress`, `success` or `failed`.
    pub status: String,
    pub deployment: String,
    pub run_id: String,
    pub requested_by: String,
    pub created_at: String,
    /// The last change of its state (a step or gate moved, the deployment moved).
    pub updated_at: String,
    /// Since that change, at the time of asking.
    pub age_ms: i64,
    pub ended_at: Option<String>,
    /// The step or gate it is at (none once it ended).
    pub current_step: Option<String>,
    /// Why it waits, one line (none once it ended).
    pub wait_reason: Option<String>,
    pub error: Option<String>,
    pub failed_step: Option<String>,
    pub reason: Option<String>,
    /// What it was forced through (a lock, the promotion path), ledgered.
    #[serde(default)]
    pub forced: Vec<String>,
    pub gates: Vec<PromotionGate>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromotionGate {
    pub name: String,
    /// `approval`, `wait` or `plugin`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending` (not its turn), `waiting`, `running`, `passed`, `failed`, `skipped`,
    /// `cancelled`.
    pub state: String,
    pub attempts: u32,
    pub max_attempts: u32,
    /// When it entered that state.
    pub since: Option<String>,
    /// What it waits on, one line.
    pub waiting_on: Option<String>,
    pub error: Option<String>,
    /// The approval of an approval gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromotionList {
    pub promotions: Vec<Promotion>,
}

/// `POST /rollbacks`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackRequest {
    pub env: String,
    /// `name@version`; default: the environment's last known good.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FreezeWindow {
    pub name: String,
    pub from: String,
    pub until: String,
    pub reason: Option<String>,
    pub active: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvHealth {
    /// `healthy`, `failing` or `unknown`.
    pub status: String,
    pub detail: String,
    pub checked_at: Option<String>,
    /// The deployment whose health step says so.
    pub deployment: Option<String>,
}

/// `POST /environments` (dev mode): a local `release.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvDeclare {
    /// The file's text.
    pub release: String,
    /// Where it came from (a file name), for the record.
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvStatus {
    pub name: String,
    pub order: u32,
    pub promotes_from: Option<String>,
    pub description: Option<String>,
    pub agent: String,
    pub plugin: String,
    pub target: String,
    /// The release bundle that declares it (`None`: no longer declared).
    pub declared_by: Option<String>,
    pub baseline_version: u32,
    pub current: Option<Deployment>,
    pub last_known_good: Option<Deployment>,
    /// Why the last known good is what it is (or why there is none).
    pub last_known_good_note: String,
    pub last_deployment: Option<Deployment>,
    pub in_flight: Option<Deployment>,
    pub health: EnvHealth,
    pub lock: Option<Lock>,
    pub frozen: Option<FreezeWindow>,
    pub freeze: Vec<FreezeWindow>,
    pub gates: Vec<Value>,
    /// `--detailed` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<Vec<Deployment>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EnvList {
    pub environments: Vec<EnvStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactCheck {
    pub ok: bool,
    pub present: bool,
    /// Signature, manifest digest and every file, re-verified against the trust store now.
    pub verified: bool,
    pub problem: Option<String>,
    pub fix: Option<String>,
    pub checked_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub id: String,
    pub name: String,
    pub version: String,
    pub digest: String,
    pub size: u64,
    pub files: Vec<crate::domain::release::ArtifactFile>,
    pub signer: String,
    pub fingerprint: String,
    pub imported_by: String,
    pub imported_at: String,
    pub backup: Option<String>,
    /// Deleted from the registry: when, by whom, why.
    pub deleted: Option<crate::domain::release::tables::Deletion>,
    pub restored_at: Option<String>,
    /// Environments it runs in now.
    pub deployed_in: Vec<String>,
    /// Environments whose last known good it is.
    pub last_known_good_in: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<ArtifactCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactList {
    pub artifacts: Vec<Artifact>,
}
