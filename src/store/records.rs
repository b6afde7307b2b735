//! Store records: the values of the projection tables, serialized as JSON. They are built only
//! by [`super::projection`] from ledger entries and are never API DTOs (those live in `api::dto`).

use serde::{Deserialize, Serialize};

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

impl TokenRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("token record serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
