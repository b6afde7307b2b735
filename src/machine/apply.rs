//! The projection: how each ledger entry changes the query tables. It is the only code that
//! writes projection tables, and it is a pure function of the entry and the tables, so the live
//! writer and `db verify`'s replay run the very same code.

use crate::ledger::Entry;
use crate::store::records::{Record, TokenRecord};
use crate::store::schema::{APPLIANCE, RUNTIME_CONFIG, TOKENS};
use redb::{ReadableTable, WriteTransaction};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("ledger entry {seq} ({kind}): {reason}")]
    Entry { seq: u64, kind: String, reason: String },
    #[error("store: {0}")]
    Storage(#[from] redb::Error),
    #[error("store record: {0}")]
    Record(String),
}

fn bad(entry: &Entry, reason: impl std::fmt::Display) -> ApplyError {
    ApplyError::Entry { seq: entry.seq, kind: entry.kind.clone(), reason: reason.to_string() }
}

fn data<T: for<'de> Deserialize<'de>>(entry: &Entry) -> Result<T, ApplyError> {
    T::deserialize(&entry.data).map_err(|e| bad(entry, e))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Initialized {
    appliance_id: String,
}

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

/// Applies one committed (or replayed) entry to the projection tables.
pub fn apply(txn: &WriteTransaction, entry: &Entry) -> Result<(), ApplyError> {
    match entry.kind.as_str() {
        "appliance.initialized" => {
            let d: Initialized = data(entry)?;
            let mut t = txn.open_table(APPLIANCE).map_err(redb::Error::from)?;
            t.insert("id", d.appliance_id.as_bytes()).map_err(redb::Error::from)?;
        }
        "appliance.started" | "secret.set" => {}
        "export.created" => {
            let mut t = txn.open_table(APPLIANCE).map_err(redb::Error::from)?;
            t.insert("last_export", entry.data.to_string().as_bytes()).map_err(redb::Error::from)?;
        }
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
            let mut t = txn.open_table(TOKENS).map_err(redb::Error::from)?;
            t.insert(rec.id.as_str(), rec.to_json_bytes().as_slice()).map_err(redb::Error::from)?;
        }
        "token.revoked" => {
            let d: TokenRevoked = data(entry)?;
            let mut t = txn.open_table(TOKENS).map_err(redb::Error::from)?;
            let mut rec = match t.get(d.id.as_str()).map_err(redb::Error::from)? {
                Some(raw) => TokenRecord::from_json_bytes(raw.value()).map_err(|e| bad(entry, e))?,
                None => return Err(bad(entry, format!("revokes unknown token {}", d.id))),
            };
            rec.revoked_ms = Some(entry.time);
            rec.revoked_by = Some(entry.actor.clone());
            rec.revoked_reason = d.reason;
            t.insert(d.id.as_str(), rec.to_json_bytes().as_slice()).map_err(redb::Error::from)?;
        }
        "config.set" => {
            let key = entry.data["key"].as_str().ok_or_else(|| bad(entry, "no key"))?;
            let value = entry.data["value"].as_str().ok_or_else(|| bad(entry, "no value"))?;
            let mut t = txn.open_table(RUNTIME_CONFIG).map_err(redb::Error::from)?;
            t.insert(key, value.as_bytes()).map_err(redb::Error::from)?;
        }
        _ => {
            if !crate::queue::apply::apply(txn, entry)?
                && !crate::locks::apply(txn, entry)?
                && !crate::engine::apply::apply(txn, entry)?
                && !crate::bundle::plan::apply(txn, entry)?
            {
                return Err(bad(entry, format!("unknown entry kind {:?}", entry.kind)));
            }
        }
    }
    Ok(())
}
