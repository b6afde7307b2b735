//! The projection of token entries.

use super::tables::{TOKENS, TokenRecord};
use crate::kernel::ledger::Entry;
use crate::kernel::store::Record;
use crate::kernel::{ApplyError, plan::redb};
use redb::{ReadableTable, WriteTransaction};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenCreated {
    id: String,
    scopes: Vec<String>,
    sha256: String,
    expires_ms: Option<i64>,
    description: Option<String>,
}

#[derive(Deserialize)]
struct TokenRevoked {
    id: String,
    reason: Option<String>,
}

fn data<T: for<'de> Deserialize<'de>>(entry: &Entry) -> Result<T, ApplyError> {
    T::deserialize(&entry.data).map_err(|e| ApplyError::entry(entry, e))
}

/// Applies a token entry; `Ok(false)` if `entry.kind` is not a token kind.
pub fn apply(txn: &WriteTransaction, entry: &Entry) -> Result<bool, ApplyError> {
    match entry.kind.as_str() {
        "token.created" => {
            let d: TokenCreated = data(entry)?;
            let rec = TokenRecord {
                id: d.id,
                tenant: entry.tenant.clone(),
                scopes: d.scopes,
                sha256: d.sha256,
                description: d.description,
                created_ms: entry.time,
                created_by: entry.actor.clone(),
                expires_ms: d.expires_ms,
                revoked_ms: None,
                revoked_by: None,
                revoked_reason: None,
            };
            let mut t = txn.open_table(TOKENS).map_err(redb)?;
            t.insert(rec.id.as_str(), rec.to_json_bytes().as_slice()).map_err(redb)?;
        }
        "token.revoked" => {
            let d: TokenRevoked = data(entry)?;
            let mut t = txn.open_table(TOKENS).map_err(redb)?;
            let mut rec = match t.get(d.id.as_str()).map_err(redb)? {
                Some(raw) => TokenRecord::from_json_bytes(raw.value()).map_err(|e| ApplyError::entry(entry, e))?,
                None => return Err(ApplyError::entry(entry, format!("revokes unknown token {}", d.id))),
            };
            rec.revoked_ms = Some(entry.time);
            rec.revoked_by = Some(entry.actor.clone());
            rec.revoked_reason = d.reason;
            t.insert(d.id.as_str(), rec.to_json_bytes().as_slice()).map_err(redb)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}
