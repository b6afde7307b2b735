//! API tokens: created with their scopes and the sha256 of the secret (the secret is shown once
//! and never stored), revoked with a reason.

pub mod apply;
pub mod plan;
pub mod tables;

pub use plan::plan;

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
