//! The projection of token entries.

use super::TokenEvent;
use super::tables::{TOKENS, TokenRecord};
use crate::kernel::ledger::Entry;
use crate::kernel::store::Record;
use crate::kernel::{ApplyError, plan::redb};
use redb::{ReadableTable, WriteTransaction};

/// Applies a token entry.
pub fn apply(txn: &WriteTransaction, entry: &Entry, event: TokenEvent) -> Result<(), ApplyError> {
    let mut t = txn.open_table(TOKENS).map_err(redb)?;
    match event {
        TokenEvent::Created(d) => {
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
            t.insert(rec.id.as_str(), rec.to_json_bytes().as_slice()).map_err(redb)?;
        }
        TokenEvent::Revoked(d) => {
            let mut rec = match t.get(d.id.as_str()).map_err(redb)? {
                Some(raw) => TokenRecord::from_json_bytes(raw.value()).map_err(|e| ApplyError::entry(entry, e))?,
                None => return Err(ApplyError::entry(entry, format!("revokes unknown token {}", d.id))),
            };
            rec.revoked_ms = Some(entry.time);
            rec.revoked_by = Some(entry.actor.clone());
            rec.revoked_reason = d.reason;
            t.insert(d.id.as_str(), rec.to_json_bytes().as_slice()).map_err(redb)?;
        }
    }
    Ok(())
}
