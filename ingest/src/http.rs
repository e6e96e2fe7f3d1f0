//! The events endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics::{counter, gauge, histogram};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Tokens;
use crate::body::{Format, Limits, decode_content, parse_events};
use crate::error::ApiError;
use crate::metrics::{
    EVENTS_ACCEPTED, EVENTS_REJECTED, INFLIGHT_BYTES, PRODUCE_LATENCY, REQUEST_BODY, REQUESTS,
};
use crate::produce::EventWriter;
use crate::rate_limit::TenantRateLimiter;

/// Bytes are reserved against the in-flight budget in KiB, so the budget fits a semaphore's count.
const RESERVATION_UNIT: usize = 1024;

/// What the events handler needs.
pub struct EventsApi {
    pub tokens: Tokens,
    pub limits: Limits,
    pub writer: Arc<EventWriter>,
    pub rate_limiter: Option<TenantRateLimiter>,
    pub inflight: Arc<Semaphore>,
    pub retry_after: Duration,
    /// How long the body may take to arrive.
    pub body_timeout: Duration,
}

impl EventsApi {
    /// A budget of `max_inflight_bytes` request bytes held in memory at once.
    pub fn inflight_budget(max_inflight_bytes: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(
            (max_inflight_bytes / RESERVATION_UNIT).max(1),
        ))
    }
}

/// `POST /v1/events`.
pub async fn post_events(
    State(api): State<Arc<EventsApi>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = match accept(&api, &headers, body).await {
        Ok(accepted) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "accepted": accepted })),
        )
            .into_response(),
        Err(error) => {
            tracing::debug!(code = error.code(), %error, "refused a request");
            error.into_response()
        }
    };
    counter!(REQUESTS, "status" => response.status().as_str().to_owned()).increment(1);
    response
}

async fn accept(api: &EventsApi, headers: &HeaderMap, body: Body) -> Result<usize, ApiError> {
    api.tokens.check(headers.get(header::AUTHORIZATION))?;
    let format = Format::from_content_type(header_str(headers, header::CONTENT_TYPE))?;
    let encoding = header_str(headers, header::CONTENT_ENCODING);
    let max_body = api.limits.max_body_bytes;
    let declared =
        header_str(headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > max_body) {
        return Err(ApiError::BodyTooLarge { limit: max_body });
    }
    // A compressed body may expand up to the limit, so it reserves the whole limit.
    let reserve = match (encoding, declared) {
        (None, Some(length)) => length,
        _ => max_body,
    };
    let _reservation = InflightReservation::take(&api.inflight, reserve, api.retry_after)?;

    let raw = tokio::time::timeout(api.body_timeout, Limited::new(body, max_body).collect())
        .await
        .map_err(|_| ApiError::BodyTimeout {
            timeout: api.body_timeout,
        })?
        .map_err(|error| {
            if error.is::<LengthLimitError>() {
                ApiError::BodyTooLarge { limit: max_body }
            } else {
                ApiError::InvalidBody(format!("the request body could not be read: {error}"))
            }
        })?;
    let decoded = decode_content(raw.to_bytes(), encoding, max_body)?;
    histogram!(REQUEST_BODY).record(decoded.len() as f64);

    // Parsing a 5 MiB body is milliseconds of CPU: keep it off the I/O threads.
    let limits = api.limits;
    let events = tokio::task::spawn_blocking(move || parse_events(&decoded, format, &limits))
        .await
        .map_err(|e| ApiError::InvalidBody(format!("the body could not be parsed: {e}")))?
        .inspect_err(|error| {
            let count = match error {
                ApiError::InvalidEvents { total, .. } => *total,
                ApiError::TooManyEvents { count, .. } => *count,
                _ => 0,
            };
            counter!(EVENTS_REJECTED, "reason" => error.code()).increment(count as u64);
        })?;

    let reject_all = |error: ApiError| {
        counter!(EVENTS_REJECTED, "reason" => error.code()).increment(events.len() as u64);
        error
    };
    // Tokens taken here go back unless Kafka acknowledges the events.
    let admission = match &api.rate_limiter {
        Some(limiter) => Some(limiter.admit(&events).map_err(reject_all)?),
        None => None,
    };

    let started = Instant::now();
    api.writer
        .write(&events, common::clock::now_unix_ms())
        .await
        .map_err(|error| {
            tracing::warn!(%error, events = events.len(), "answering 503: the events were not acknowledged");
            reject_all(ApiError::Unavailable {
                reason: error.to_string(),
                retry_after: api.retry_after,
            })
        })?;
    histogram!(PRODUCE_LATENCY).record(started.elapsed().as_secs_f64());
    if let Some(admission) = admission {
        admission.keep();
    }
    counter!(EVENTS_ACCEPTED).increment(events.len() as u64);
    Ok(events.len())
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Request bytes counted against the in-flight budget until dropped.
struct InflightReservation {
    _permit: OwnedSemaphorePermit,
    bytes: usize,
}

impl InflightReservation {
    fn take(
        budget: &Arc<Semaphore>,
        bytes: usize,
        retry_after: Duration,
    ) -> Result<Self, ApiError> {
        let units = u32::try_from(bytes.div_ceil(RESERVATION_UNIT).max(1)).unwrap_or(u32::MAX);
        let permit =
            budget
                .clone()
                .try_acquire_many_owned(units)
                .map_err(|_| ApiError::Unavailable {
                    reason: "ingest is holding as many request bytes as it may".into(),
                    retry_after,
                })?;
        gauge!(INFLIGHT_BYTES).increment(bytes as f64);
        Ok(Self {
            _permit: permit,
            bytes,
        })
    }
}

impl Drop for InflightReservation {
    fn drop(&mut self) {
        gauge!(INFLIGHT_BYTES).decrement(self.bytes as f64);
    }
}
