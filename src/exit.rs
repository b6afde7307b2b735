//! The CLI's errors and their documented exit codes (`docs/cli.md`). Every command failure maps
//! to exactly one code, so scripts can tell "the daemon is down" from "you may not" from "that
//! does not exist".

/// Exit codes. 2 is clap's usage error.
pub mod code {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_AVAILABLE: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
    pub const DENIED: u8 = 5;
    pub const NOT_FOUND: u8 = 6;
    pub const CONFLICT: u8 = 7;
    pub const VERIFY_FAILED: u8 = 8;
    pub const INVALID: u8 = 9;
    pub const STORE: u8 = 10;
    pub const BUSY: u8 = 11;
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The command exists (the runbooks name it) but its capability is not built yet.
    #[error("not available yet: {0}")]
    NotAvailable(String),
    #[error("cannot reach the daemon: {0}")]
    Unreachable(String),
    /// The daemon answered with a problem document.
    #[error("{detail} [{code}, HTTP {status}]")]
    Api { status: u16, code: String, detail: String },
    #[error("verification failed: {0}")]
    VerifyFailed(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(String),
    #[error("{0}")]
    Other(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NotAvailable(_) => code::NOT_AVAILABLE,
            CliError::Unreachable(_) => code::UNREACHABLE,
            CliError::Api { status, .. } => match status {
                401 | 403 => code::DENIED,
                404 => code::NOT_FOUND,
                409 => code::CONFLICT,
                400 | 413 | 422 => code::INVALID,
                429 | 503 => code::BUSY,
                501 => code::NOT_AVAILABLE,
                _ => code::FAILURE,
            },
            CliError::VerifyFailed(_) => code::VERIFY_FAILED,
            CliError::Invalid(_) => code::INVALID,
            CliError::Store(_) => code::STORE,
            CliError::Other(_) => code::FAILURE,
        }
    }
}

impl From<crate::kernel::store::StoreError> for CliError {
    fn from(e: crate::kernel::store::StoreError) -> Self {
        CliError::Store(e.to_string())
    }
}
