//! API request and response bodies. They are the wire contract (docs/openapi.json) and convert
//! explicitly from store records; a field added here never changes the on-disk format.

use crate::clock::{UnixMs, rfc3339};
use crate::store::records::TokenRecord;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: String,
    pub live: bool,
    pub ready: bool,
    pub checks: HealthChecks,
    pub queue_depth: u64,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthChecks {
    pub store: bool,
    pub writer: bool,
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
    pub entries: Vec<crate::ledger::Entry>,
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

impl From<crate::store::verify::VerifyReport> for DbVerify {
    fn from(r: crate::store::verify::VerifyReport) -> Self {
        use crate::store::verify::VerifyProblem as P;
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
