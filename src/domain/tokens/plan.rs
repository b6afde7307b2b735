//! Planning token commands.

use super::tables::{TOKENS, TokenRecord};
use super::{TokenCommand, TokenCreated, TokenEvent, TokenRevoked};
use crate::kernel::event::Event;
use crate::kernel::ledger::Draft;
use crate::kernel::store::Record;
use crate::kernel::{CommandError, storage};
use redb::{ReadableTable, WriteTransaction};

pub fn plan(cmd: &TokenCommand, txn: &WriteTransaction) -> Result<Vec<Draft>, CommandError> {
    let table = txn.open_table(TOKENS).map_err(storage)?;
    match cmd {
        TokenCommand::Create { id, tenant, scopes, sha256, expires_ms, description } => {
            if table.get(id.as_str()).map_err(storage)?.is_some() {
                return Err(CommandError::conflict("token_exists", format!("token id {id} already exists")));
            }
            let created = TokenCreated {
                id: id.clone(),
                scopes: scopes.clone(),
                sha256: sha256.clone(),
                expires_ms: *expires_ms,
                description: description.clone(),
            };
            Ok(vec![TokenEvent::Created(created).draft(tenant, vec![id.clone()])])
        }
        TokenCommand::Revoke { id, tenant, reason } => {
            let not_found = || CommandError::NotFound { what: format!("token {id}") };
            let raw = table.get(id.as_str()).map_err(storage)?.ok_or_else(not_found)?;
            let rec = TokenRecord::from_json_bytes(raw.value()).map_err(storage)?;
            if tenant.as_ref().is_some_and(|t| *t != rec.tenant) {
                return Err(not_found());
            }
            if rec.revoked_ms.is_some() {
                return Ok(vec![]);
            }
            let revoked = TokenRevoked { id: id.clone(), reason: reason.clone() };
            Ok(vec![TokenEvent::Revoked(revoked).draft(&rec.tenant, vec![id.clone()])])
        }
    }
}
