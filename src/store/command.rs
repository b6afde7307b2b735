//! Commands: the closed set of mutations the writer accepts. Each command is *planned* against
//! the current state inside the batch's write transaction — validated, then turned into ledger
//! drafts — without writing anything. Only drafts change the store, through the projection, so
//! the ledger alone can rebuild every table (DESIGN.md invariant 2).

use crate::config::Config;
use crate::ledger::{Draft, Entry};
use crate::queue::rng::SplitMix64;
use crate::store::records::{Record, TokenRecord};
use crate::store::schema::{APPLIANCE, TOKENS};
use redb::{ReadableTable, WriteTransaction};
use serde_json::json;
use std::collections::HashMap;

/// Who a command acts for: recorded on every entry it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `token:<id>`, `local:uid=<n>`, or `appliance`.
    pub name: String,
}

impl Actor {
    pub fn appliance() -> Self {
        Self { name: "appliance".to_owned() }
    }
}

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Command {
    /// The first entry of a new store: the appliance's identity.
    Initialize {
        appliance_id: String,
        key_fingerprint: Option<String>,
    },
    /// The daemon started: history for auditors, no projection.
    RecordStart {
        version: String,
        pid: u32,
        dev: bool,
    },
    CreateToken {
        id: String,
        tenant: String,
        scopes: Vec<String>,
        sha256: String,
        expires_ms: Option<i64>,
        description: Option<String>,
    },
    /// Revoke a token; `tenant` limits it to one tenant's tokens (None: any tenant).
    RevokeToken {
        id: String,
        tenant: Option<String>,
        reason: Option<String>,
    },
    Queue(crate::queue::QueueCommand),
    Run(crate::engine::RunCommand),
    Lock(crate::locks::LockCommand),
    Bundle(crate::bundle::plan::BundleCommand),
    /// Store a secret's value (unledgered) and ledger that it was set, by name only.
    SetSecret {
        name: String,
        value: String,
    },
    /// Set a runtime config key (validated by the caller with `runtime_config::validate`).
    SetConfig {
        key: String,
        value: String,
    },
    /// Fire every deadline that is due: promote delayed jobs, expire leases and locks, end
    /// budgets. Sent by the timer task; tests send it on virtual time.
    Tick,
    /// An export pack was written and is durable: what it covers, so the next one links.
    RecordExport {
        data: serde_json::Value,
    },
    /// Keep the current metric values (telemetry, unledgered) for exports of past windows.
    SnapshotMetrics {
        text: String,
        retain_ms: i64,
    },
}

/// A token bucket of a rate budget, kept in the writer's memory: after a restart every bucket
/// starts full, which never lets more through than one burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    pub last_ms: i64,
}

/// What planning may use besides the transaction: the batch's time, the seeded RNG, the rate
/// buckets and the file's defaults.
pub struct PlanCtx<'a> {
    pub now: i64,
    pub rng: &'a mut SplitMix64,
    pub buckets: &'a mut HashMap<(String, String), Bucket>,
    pub defaults: &'a Config,
    /// Compiled DAGs by `name@version`: derived from stored specs, cached by the writer.
    pub dags: &'a mut HashMap<String, std::sync::Arc<crate::engine::spec::Compiled>>,
    /// The next job sequence number while this command enqueues (None: read the counter).
    pub next_job_seq: Option<u64>,
    /// The next run sequence number while this command starts runs (a tick may start several).
    pub next_run_seq: Option<u64>,
}

/// Writes that are liveness, not history (DESIGN.md invariant 2): applied in the same
/// transaction, never ledgered, not compared by `db verify`.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveWrite {
    LeaseExpiry {
        job: String,
        expires_ms: i64,
    },
    WorkerSeen {
        id: String,
        tenant: String,
        types: Vec<String>,
        env: Option<String>,
    },
    Timer {
        due_ms: i64,
        key: String,
    },
    DropTimer {
        due_ms: i64,
        key: String,
    },
    /// `/metrics` as it read at the batch's time; snapshots older than `retain_ms` go.
    MetricSnapshot {
        text: String,
        retain_ms: i64,
    },
    /// A secret's value: stored, never ledgered.
    Secret {
        name: String,
        value: String,
    },
}

/// A plan: ledger drafts, liveness writes, and a note for the caller (e.g. "already exists").
#[derive(Debug, Default)]
pub struct Effects {
    pub drafts: Vec<Draft>,
    pub live: Vec<LiveWrite>,
    pub note: Option<serde_json::Value>,
}

impl From<Vec<Draft>> for Effects {
    fn from(drafts: Vec<Draft>) -> Self {
        Effects { drafts, ..Effects::default() }
    }
}

/// A failed command. It changed nothing; its batch neighbours are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    /// Backpressure: try again after this many seconds.
    #[error("{detail}")]
    Busy { detail: String, retry_after_s: u64 },
    #[error("store: {0}")]
    Storage(String),
    #[error("the store writer has stopped")]
    WriterGone,
}

/// What a successful command committed: its ledger entries, in order (possibly none, for an
/// idempotent repeat).
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub entries: Vec<Entry>,
    pub note: Option<serde_json::Value>,
}

pub fn storage(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

impl Command {
    /// Validates against the state in `txn` and returns what to append and write. Never writes.
    pub fn plan(&self, txn: &WriteTransaction, ctx: &mut PlanCtx) -> Result<Effects, CommandError> {
        match self {
            Command::Queue(q) => crate::queue::plan::plan(q, txn, ctx),
            Command::Lock(l) => crate::locks::plan(l, txn, ctx),
            Command::Run(r) => crate::engine::plan::plan(r, txn, ctx),
            Command::Bundle(b) => crate::bundle::plan::plan(b, txn),
            Command::Tick => crate::queue::plan::tick(txn, ctx),
            Command::SnapshotMetrics { text, retain_ms } => Ok(Effects {
                live: vec![LiveWrite::MetricSnapshot { text: text.clone(), retain_ms: *retain_ms }],
                ..Effects::default()
            }),
            Command::SetSecret { name, value } => Ok(Effects {
                drafts: vec![Draft {
                    tenant: String::new(),
                    kind: "secret.set",
                    subjects: vec![name.clone()],
                    data: json!({ "name": name, "bytes": value.len() }),
                }],
                live: vec![LiveWrite::Secret { name: name.clone(), value: value.clone() }],
                note: None,
            }),
            Command::SetConfig { key, value } => Ok(vec![Draft {
                tenant: String::new(),
                kind: "config.set",
                subjects: vec![key.clone()],
                data: json!({ "key": key, "value": value }),
            }]
            .into()),
            other => other.plan_core(txn).map(Effects::from),
        }
    }

    fn plan_core(&self, txn: &WriteTransaction) -> Result<Vec<Draft>, CommandError> {
        match self {
            Command::Initialize { appliance_id, key_fingerprint } => {
                let table = txn.open_table(APPLIANCE).map_err(storage)?;
                if table.get("id").map_err(storage)?.is_some() {
                    return Err(CommandError::Conflict("the store is already initialized".into()));
                }
                Ok(vec![Draft {
                    tenant: String::new(),
                    kind: "appliance.initialized",
                    subjects: vec![appliance_id.clone()],
                    data: json!({ "applianceId": appliance_id, "keyFingerprint": key_fingerprint,
                                  "schemaVersion": super::schema::SCHEMA_VERSION }),
                }])
            }
            Command::RecordExport { data } => Ok(vec![Draft {
                tenant: String::new(),
                kind: "export.created",
                subjects: vec![data["packSha256"].as_str().unwrap_or_default().to_owned()],
                data: data.clone(),
            }]),
            Command::RecordStart { version, pid, dev } => Ok(vec![Draft {
                tenant: String::new(),
                kind: "appliance.started",
                subjects: vec![],
                data: json!({ "version": version, "pid": pid, "dev": dev }),
            }]),
            Command::CreateToken { id, tenant, scopes, sha256, expires_ms, description } => {
                let table = txn.open_table(TOKENS).map_err(storage)?;
                if table.get(id.as_str()).map_err(storage)?.is_some() {
                    return Err(CommandError::Conflict(format!("token id {id} already exists")));
                }
                Ok(vec![Draft {
                    tenant: tenant.clone(),
                    kind: "token.created",
                    subjects: vec![id.clone()],
                    data: json!({ "id": id, "scopes": scopes, "sha256": sha256,
                                  "expiresMs": expires_ms, "description": description }),
                }])
            }
            Command::RevokeToken { id, tenant, reason } => {
                let table = txn.open_table(TOKENS).map_err(storage)?;
                let not_found = || CommandError::NotFound { what: format!("token {id}") };
                let raw = table.get(id.as_str()).map_err(storage)?.ok_or_else(not_found)?;
                let rec = TokenRecord::from_json_bytes(raw.value()).map_err(storage)?;
                if tenant.as_ref().is_some_and(|t| *t != rec.tenant) {
                    return Err(not_found());
                }
                if rec.revoked_ms.is_some() {
                    return Ok(vec![]);
                }
                Ok(vec![Draft {
                    tenant: rec.tenant,
                    kind: "token.revoked",
                    subjects: vec![id.clone()],
                    data: json!({ "id": id, "reason": reason }),
                }])
            }
            Command::Queue(_)
            | Command::Lock(_)
            | Command::Run(_)
            | Command::Bundle(_)
            | Command::Tick
            | Command::SnapshotMetrics { .. }
            | Command::SetConfig { .. }
            | Command::SetSecret { .. } => {
                unreachable!("planned by Command::plan")
            }
        }
    }
}
