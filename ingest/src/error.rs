//! Every way a request can fail, each with its status code and a JSON body that says precisely
//! what is wrong.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// At most this many per-event problems are listed in one response; the count says how many
/// there were in all.
pub const MAX_REPORTED_PROBLEMS: usize = 100;

/// Where in the body a problem is: a 1-based NDJSON line or a 0-based JSON array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Position {
    Line(usize),
    Index(usize),
}

/// One problem with one event of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventProblem {
    #[serde(flatten)]
    pub position: Position,
    /// The field at fault, when the problem is with one field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'static str>,
    pub message: String,
    /// True when the event is over the size limit.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub too_large: bool,
}

/// A request that is not accepted, with nothing of it written.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("unsupported content type {found:?}; send application/x-ndjson or application/json")]
    UnsupportedMediaType { found: String },
    #[error("unsupported content encoding {found:?}; send gzip or an uncompressed body")]
    UnsupportedEncoding { found: String },
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body did not arrive within {} s", timeout.as_secs())]
    BodyTimeout { timeout: std::time::Duration },
    #[error("the request holds {count} events; at most {limit} are accepted per request")]
    TooManyEvents { count: usize, limit: usize },
    #[error("{0}")]
    InvalidBody(String),
    #[error("{} of {total} event(s) are invalid; nothing was accepted", problem_events(.problems))]
    InvalidEvents {
        problems: Vec<EventProblem>,
        /// Events in the request, valid or not.
        total: usize,
    },
    #[error("tenant {tenant} is over its rate limit; nothing was accepted")]
    RateLimited {
        tenant: String,
        retry_after: Duration,
    },
    #[error(
        "the request carries {count} events for tenant {tenant}, more than its burst of {burst}; split it"
    )]
    OverTenantBurst {
        tenant: String,
        count: u32,
        burst: u32,
    },
    #[error("{reason}; nothing was acknowledged, retry the whole request")]
    Unavailable {
        reason: String,
        retry_after: Duration,
    },
}

fn problem_events(problems: &[EventProblem]) -> usize {
    let mut positions: Vec<_> = problems.iter().map(|p| p.position).collect();
    positions.dedup();
    positions.len()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    problems: Option<&'a [EventProblem]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem_count: Option<usize>,
}

impl ApiError {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::UnsupportedMediaType { .. } | Self::UnsupportedEncoding { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::BodyTooLarge { .. }
            | Self::TooManyEvents { .. }
            | Self::OverTenantBurst { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidEvents { problems, .. } if problems.iter().any(|p| p.too_large) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::InvalidBody(_) | Self::InvalidEvents { .. } => StatusCode::BAD_REQUEST,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::UnsupportedEncoding { .. } => "unsupported_encoding",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::TooManyEvents { .. } => "too_many_events",
            Self::InvalidBody(_) => "invalid_body",
            Self::InvalidEvents { .. } => "invalid_events",
            Self::RateLimited { .. } => "rate_limited",
            Self::OverTenantBurst { .. } => "over_tenant_burst",
            Self::Unavailable { .. } => "unavailable",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Unavailable { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problems = match &self {
            Self::InvalidEvents { problems, .. } => Some(problems.as_slice()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
            problem_count: problems.map(<[_]>::len),
            problems: problems.map(|p| &p[..p.len().min(MAX_REPORTED_PROBLEMS)]),
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up: retrying early would only be refused again.
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        if matches!(self, Self::Unauthorized(_)) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
