//! The projection of token entries.

use super::TokenEvent;
use super::tables::{TOKENS, TokenRecord};
use crate::kernel::ledger::Entry;
use crate::kernel::{ApplyError, Tx};

/// Applies a token entry.
pub fn apply(tx: &Tx, entry: &Entry, event: TokenEvent) -> Result<(), ApplyError> {
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
            tx.put(TOKENS, &rec.id.clone(), rec)
        }
        TokenEvent::Revoked(d) => {
            let Some(mut rec) = tx.get::<TokenRecord>(TOKENS, &d.id)? else {
                return Err(ApplyError::entry(entry, format!("revokes unknown token {}", d.id)));
            };
            rec.revoked_ms = Some(entry.time);
            rec.revoked_by = Some(entry.actor.clone());
            rec.revoked_reason = d.reason;
            tx.put(TOKENS, &d.id, rec)
        }
    }
}
