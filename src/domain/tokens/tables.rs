//! The tokens domain's tables: their definitions, records and reads.

use crate::kernel::store::read::{corrupt, rerr};
use crate::kernel::store::{Record, StoreError};
use redb::{ReadTransaction, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Projection: API tokens by id.
pub const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

/// An API token. Only the sha256 of the token is kept; the secret is shown once at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: String,
    pub scopes: Vec<String>,
    /// Lowercase hex sha256 of the whole token string.
    pub sha256: String,
    pub description: Option<String>,
    pub created_ms: i64,
    pub created_by: String,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoked_reason: Option<String>,
}

impl Record for TokenRecord {}

pub fn token(txn: &ReadTransaction, id: &str) -> Result<Option<TokenRecord>, StoreError> {
    let table = txn.open_table(TOKENS).map_err(rerr)?;
    let Some(raw) = table.get(id).map_err(rerr)? else {
        return Ok(None);
    };
    TokenRecord::from_json_bytes(raw.value()).map(Some).map_err(|e| corrupt("tokens", id, e))
}

/// Tokens, optionally of one tenant, at most `limit` of them.
pub fn tokens(txn: &ReadTransaction, tenant: Option<&str>, limit: usize) -> Result<Vec<TokenRecord>, StoreError> {
    let table = txn.open_table(TOKENS).map_err(rerr)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(rerr)? {
        let (k, v) = row.map_err(rerr)?;
        let rec = TokenRecord::from_json_bytes(v.value()).map_err(|e| corrupt("tokens", k.value(), e))?;
        if tenant.is_none_or(|t| t == rec.tenant) {
            out.push(rec);
            if out.len() >= limit {
                break;
            }
        }
    }
    Ok(out)
}
