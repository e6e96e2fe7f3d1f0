//! Upload failures, classified once (STYLE "Errors"): the class alone decides between a retry
//! tier and the dead-letter queue. Shared with the admin API's connection test.

pub use common::s3::error::{ErrorClass, UploadError, classify};
