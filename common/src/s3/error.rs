//! Upload failures, classified once (STYLE "Errors"): the class alone decides between a retry
//! tier and the dead-letter queue.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

pub use crate::delivery::ErrorClass;

/// A failed upload step: its class, the AWS (or our own) error code, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{step}: {code}: {message}")]
pub struct UploadError {
    pub class: ErrorClass,
    /// The step that failed: `assume-role`, `put-object`, `resolve-destination`, ...
    pub step: &'static str,
    pub code: String,
    pub message: String,
}

impl UploadError {
    pub fn new(
        class: ErrorClass,
        step: &'static str,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            class,
            step,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    /// Classifies an AWS SDK error of any operation.
    pub fn from_sdk<E>(step: &'static str, error: &SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let detail = aws_sdk_s3::error::DisplayErrorContext(error).to_string();
        match error {
            SdkError::ServiceError(context) => {
                let status = context.raw().status().as_u16();
                // Responses without a body (HEAD requests, some proxies and S3-compatible servers)
                // carry no error code; the status then says what S3 would have.
                let code = context
                    .err()
                    .code()
                    .unwrap_or_else(|| code_for_status(status));
                // Without a body there is no message either; the client library's description
                // of the raw response is for developers, not for the customer reading this.
                let message = context
                    .err()
                    .message()
                    .map_or_else(|| message_for_status(status), str::to_owned);
                Self::new(classify(Some(status), code), step, code, message)
            }
            SdkError::TimeoutError(_) => Self::new(ErrorClass::Retryable, step, "Timeout", detail),
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                Self::new(ErrorClass::Retryable, step, "Network", detail)
            }
            _ => Self::new(ErrorClass::Retryable, step, "SdkError", detail),
        }
    }
}

/// The error code S3 uses for a bare status.
fn code_for_status(status: u16) -> &'static str {
    match status {
        301 => "PermanentRedirect",
        400 => "BadRequest",
        403 => "AccessDenied",
        404 => "NotFound",
        409 => "Conflict",
        412 => "PreconditionFailed",
        429 => "Throttling",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        _ => "Unknown",
    }
}

/// A sentence for an error response that came without a body.
fn message_for_status(status: u16) -> String {
    let meaning = match status {
        301 | 307 => "the bucket is in another region than the integration names",
        400 => "the request was refused as malformed",
        403 => "access denied: a bucket policy, the role's policy or the bucket's owner refuses it",
        404 => "the bucket or the object does not exist",
        409 => "a conflicting request on the same object was in progress",
        412 => "an object with this key already exists",
        429 | 503 => "S3 asked to slow down",
        500..=599 => "S3 failed to answer",
        _ => "S3 refused the request",
    };
    format!("HTTP {status} without an error body: {meaning}")
}

/// The class of an AWS error response, from its status and code. Pure, so every rule is tested.
pub fn classify(status: Option<u16>, code: &str) -> ErrorClass {
    const RETRYABLE_CODES: &[&str] = &[
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ExpiredToken",
        "ExpiredTokenException",
        "BadDigest",
        "IDPCommunicationError",
        // Two writers raced on one key (409): the next attempt finds the object there.
        "ConditionalRequestConflict",
        "OperationAborted",
    ];
    const CONFIGURATION_CODES: &[&str] = &[
        "AccessDenied",
        "AllAccessDisabled",
        "NoSuchBucket",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraintException",
        "InvalidBucketName",
        "RegionDisabledException",
        "MalformedPolicyDocument",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ];
    if RETRYABLE_CODES.contains(&code) {
        return ErrorClass::Retryable;
    }
    if CONFIGURATION_CODES.contains(&code) {
        return ErrorClass::Configuration;
    }
    match status {
        Some(429) => ErrorClass::Retryable,
        Some(s) if s >= 500 => ErrorClass::Retryable,
        // A redirect means the bucket lives in another region than the integration says.
        Some(301 | 307 | 400..=499) => ErrorClass::Configuration,
        // Anything else, including no answer at all, is worth another try.
        _ => ErrorClass::Retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_server_errors_and_expired_credentials_are_retried() {
        for (status, code) in [
            (Some(503), "SlowDown"),
            (Some(500), "InternalError"),
            (Some(502), "Unknown"),
            (Some(429), "Unknown"),
            (Some(400), "ExpiredToken"),
            (Some(400), "RequestTimeout"),
            (Some(409), "ConditionalRequestConflict"),
            (Some(409), "OperationAborted"),
            (None, "Unknown"),
        ] {
            assert_eq!(
                classify(status, code),
                ErrorClass::Retryable,
                "{status:?} {code}"
            );
        }
    }

    #[test]
    fn a_broken_customer_setup_is_a_configuration_error() {
        for (status, code) in [
            (Some(403), "AccessDenied"),
            (Some(404), "NoSuchBucket"),
            (Some(301), "PermanentRedirect"),
            (Some(400), "AuthorizationHeaderMalformed"),
            (Some(403), "RegionDisabledException"),
            (Some(400), "InvalidRequest"),
        ] {
            assert_eq!(
                classify(status, code),
                ErrorClass::Configuration,
                "{status:?} {code}"
            );
        }
    }

    #[test]
    fn an_error_without_a_body_reads_as_a_sentence() {
        assert_eq!(
            message_for_status(404),
            "HTTP 404 without an error body: the bucket or the object does not exist"
        );
        assert!(message_for_status(403).contains("access denied"));
        assert!(message_for_status(502).contains("S3 failed to answer"));
    }
}
