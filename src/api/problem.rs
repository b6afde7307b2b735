//! RFC 9457 problem documents: every error the API returns. Each has a stable `code` that
//! clients and the CLI switch on; the `detail` names what was wrong.

use crate::kernel::CommandError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem document, boxed so that `Result<T, Problem>` stays small on the happy path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem(Box<ProblemBody>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProblemBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip)]
    pub retry_after_s: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self(Box::new(ProblemBody {
            kind: format!("urn:stella:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code,
            detail: detail.into(),
            field: None,
            retry_after_s: None,
        }))
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.0.field = Some(field.into());
        self
    }

    pub fn body(&self) -> &ProblemBody {
        &self.0
    }

    /// Every bad-token class gets exactly this body.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid bearer token is required (missing, malformed, unknown, expired or revoked tokens are all refused alike)",
        )
    }

    /// Every missing-scope case gets exactly this body.
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "the token lacks the scope this operation requires")
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail).with_field(field)
    }

    pub fn not_implemented(what: &str) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", format!("not available yet: {what}"))
    }

    pub fn status(&self) -> u16 {
        self.0.status
    }

    pub fn detail(&self) -> &str {
        &self.0.detail
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail.to_string())
    }
}

impl From<CommandError> for Problem {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::NotFound { what } => Problem::not_found(what),
            CommandError::Conflict { code, detail } => Problem::new(StatusCode::CONFLICT, code, detail),
            CommandError::Invalid { code, field, detail } => {
                let p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail);
                match field {
                    Some(f) => p.with_field(f),
                    None => p,
                }
            }
            CommandError::Forbidden { code, detail } => Problem::new(StatusCode::FORBIDDEN, code, detail),
            CommandError::Busy { detail, retry_after_s } => {
                let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "backpressure", detail);
                p.0.retry_after_s = Some(retry_after_s);
                p
            }
            CommandError::Storage(detail) => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "store_error", format!("store: {detail}"))
            }
            CommandError::WriterGone => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "writer_unavailable",
                "the store writer has stopped; the daemon is shutting down",
            ),
        }
    }
}

impl From<crate::kernel::store::StoreError> for Problem {
    fn from(e: crate::kernel::store::StoreError) -> Self {
        let code =
            if matches!(e, crate::kernel::store::StoreError::Damaged { .. }) { "store_damaged" } else { "store_error" };
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.0).expect("problem serializes");
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.0.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

pub type ApiResult<T> = Result<T, Problem>;

impl From<crate::app::import::ImportError> for Problem {
    fn from(e: crate::app::import::ImportError) -> Self {
        use crate::app::import::{ImportError, Refusal};
        match e {
            ImportError::Rejected { refusal: Refusal::Invalid, reason } => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "bundle_rejected", reason)
            }
            ImportError::Rejected { refusal: Refusal::Conflict(code), reason } => {
                Problem::new(StatusCode::CONFLICT, code, reason)
            }
            ImportError::Command(e) => e.into(),
            ImportError::Store(e) => e.into(),
            ImportError::Internal(e) => Problem::internal(e),
        }
    }
}

impl From<crate::app::export::ExportError> for Problem {
    fn from(e: crate::app::export::ExportError) -> Self {
        use crate::app::export::ExportError;
        match e {
            ExportError::Failed(e) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "export_failed", e),
            ExportError::Command(e) => e.into(),
            ExportError::Internal(e) => Problem::internal(e),
        }
    }
}

impl From<crate::app::release::ReleaseError> for Problem {
    fn from(e: crate::app::release::ReleaseError) -> Self {
        use crate::app::release::ReleaseError;
        match e {
            ReleaseError::Refused { code, detail, fix } => {
                let detail = match fix {
                    Some(fix) => format!("{detail} — fix: {fix}"),
                    None => detail,
                };
                Problem::new(StatusCode::CONFLICT, code, detail)
            }
            ReleaseError::Command(e) => e.into(),
            ReleaseError::Store(e) => e.into(),
        }
    }
}
