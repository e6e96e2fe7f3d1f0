//! The last failure a job's message carries once the uploader moves it to a retry tier or the
//! dead-letter queue: written on each move, shown by `uploader dlq list`, and cleared by a
//! redrive, which gives the job a fresh start.

use common::job::header as job_header;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::error::UploadError;

/// Headers a moved job carries about its last failure.
pub mod header {
    pub const CLASS: &str = "last-error-class";
    pub const STEP: &str = "last-error-step";
    pub const CODE: &str = "last-error-code";
    pub const MESSAGE: &str = "last-error-message";
    /// Every one of them, for clearing.
    pub const ALL: [&str; 4] = [CLASS, STEP, CODE, MESSAGE];
}

/// `headers` with `error` as the last failure, after `attempts` attempts.
pub fn with_failure(mut headers: FieldTable, error: &UploadError, attempts: u32) -> FieldTable {
    let text = |value: &str| AMQPValue::LongString(LongString::from(value));
    headers.insert(
        job_header::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    headers.insert(header::CLASS.into(), text(error.class.as_str()));
    headers.insert(header::STEP.into(), text(error.step));
    headers.insert(header::CODE.into(), text(&error.code));
    headers.insert(header::MESSAGE.into(), text(&error.message));
    headers
}
