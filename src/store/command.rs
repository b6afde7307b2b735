//! Commands: the closed set of mutations the writer accepts. Each command is *planned* against
//! the current state inside the batch's write transaction — validated, then turned into ledger
//! drafts — without writing anything. Only drafts change the store, through the projection, so
//! the ledger alone can rebuild every table (DESIGN.md invariant 2).

use crate::ledger::{Draft, Entry};
use crate::store::records::TokenRecord;
use crate::store::schema::{APPLIANCE, TOKENS};
use redb::{ReadableTable, WriteTransaction};
use serde_json::json;

/// Who a command acts for: recorded on every entry it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `token:<id>`, `local:uid=<n>`, or `appliance`.
    pub name: String,
}

impl Actor {
    pub fn appliance() -> Self {
        Self {
            name: "appliance".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// A failed command. It changed nothing; its batch neighbours are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{0}")]
    Conflict(String),
    #[error("store: {0}")]
    Storage(String),
    #[error("the store writer has stopped")]
    WriterGone,
}

/// What a successful command committed: its ledger entries, in order (possibly none, for an
/// idempotent repeat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub entries: Vec<Entry>,
}

fn storage(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

impl Command {
    /// Validates against the state in `txn` and returns the drafts to append. Never writes.
    pub fn plan(&self, txn: &WriteTransaction) -> Result<Vec<Draft>, CommandError> {
        match self {
            Command::Initialize {
                appliance_id,
                key_fingerprint,
            } => {
                let table = txn.open_table(APPLIANCE).map_err(storage)?;
                if table.get("id").map_err(storage)?.is_some() {
                    return Err(CommandError::Conflict(
                        "the store is already initialized".into(),
                    ));
                }
                Ok(vec![Draft {
                    tenant: String::new(),
                    kind: "appliance.initialized",
                    subjects: vec![appliance_id.clone()],
                    data: json!({ "applianceId": appliance_id, "keyFingerprint": key_fingerprint,
                                  "schemaVersion": super::schema::SCHEMA_VERSION }),
                }])
            }
            Command::RecordStart { version, pid, dev } => Ok(vec![Draft {
                tenant: String::new(),
                kind: "appliance.started",
                subjects: vec![],
                data: json!({ "version": version, "pid": pid, "dev": dev }),
            }]),
            Command::CreateToken {
                id,
                tenant,
                scopes,
                sha256,
                expires_ms,
                description,
            } => {
                let table = txn.open_table(TOKENS).map_err(storage)?;
                if table.get(id.as_str()).map_err(storage)?.is_some() {
                    return Err(CommandError::Conflict(format!(
                        "token id {id} already exists"
                    )));
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
                let not_found = || CommandError::NotFound {
                    what: format!("token {id}"),
                };
                let raw = table
                    .get(id.as_str())
                    .map_err(storage)?
                    .ok_or_else(not_found)?;
                let rec = TokenRecord::from_bytes(raw.value()).map_err(storage)?;
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
        }
    }
}
