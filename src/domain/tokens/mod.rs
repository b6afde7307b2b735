//! API tokens: created with their scopes and the sha256 of the secret (the secret is shown once
//! and never stored), revoked with a reason.

pub mod apply;
pub mod plan;
pub mod tables;

pub use plan::plan;

use serde::{Deserialize, Serialize};

crate::events! {
    /// The entries of the tokens domain.
    pub enum TokenEvent {
        Created(TokenCreated) = "token.created",
        Revoked(TokenRevoked) = "token.revoked",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenCreated {
    pub id: String,
    pub scopes: Vec<String>,
    pub sha256: String,
    pub expires_ms: Option<i64>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub id: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TokenCommand {
    Create {
        id: String,
        tenant: String,
        scopes: Vec<String>,
        sha256: String,
        expires_ms: Option<i64>,
        description: Option<String>,
    },
    /// Revoke a token; `tenant` limits it to one tenant's tokens (None: any tenant).
    Revoke { id: String, tenant: Option<String>, reason: Option<String> },
}
