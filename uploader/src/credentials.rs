//! Assumed-role credentials per (role ARN, external id), cached until shortly before they expire.
//!
//! The STS call ([`common::s3::assume_role`]) is made directly rather than through the SDK's
//! `AssumeRoleProvider` so that a refusal arrives as a typed `AssumeRole` error, classified like
//! every other AWS error, and so that calls and cache hits can be counted. One lock per role makes concurrent uploads for a tenant share a
//! single AssumeRole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_sdk_s3::config::Credentials;
use common::integration::Integration;
use metrics::counter;

use crate::error::UploadError;
use crate::metrics::{ASSUME_ROLE_CACHE_HITS, ASSUME_ROLE_CALLS};

/// Credentials are replaced this long before they expire, so none expires mid-upload.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RoleKey {
    role_arn: String,
    external_id: String,
}

type Slot = Arc<tokio::sync::Mutex<Option<Credentials>>>;

/// The cache of assumed-role credentials.
pub struct AssumedRoles {
    base: SdkConfig,
    slots: Mutex<HashMap<RoleKey, Slot>>,
    calls: AtomicU64,
}

impl AssumedRoles {
    /// `base` carries the uploader's own identity (the standard chain) and any endpoint override.
    pub fn new(base: SdkConfig) -> Self {
        Self {
            base,
            slots: Mutex::default(),
            calls: AtomicU64::new(0),
        }
    }

    /// AssumeRole calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Credentials for the integration's role, from the cache when still fresh.
    pub async fn credentials(&self, integration: &Integration) -> Result<Credentials, UploadError> {
        let key = RoleKey {
            role_arn: integration.role_arn.clone(),
            external_id: integration.external_id.clone(),
        };
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some(credentials) = cached.as_ref().filter(|c| is_fresh(c)) {
            counter!(ASSUME_ROLE_CACHE_HITS).increment(1);
            return Ok(credentials.clone());
        }
        let credentials = self.assume(integration).await?;
        *cached = Some(credentials.clone());
        Ok(credentials)
    }

    async fn assume(&self, integration: &Integration) -> Result<Credentials, UploadError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        counter!(ASSUME_ROLE_CALLS).increment(1);
        common::s3::assume_role(&self.base, integration).await
    }
}

fn is_fresh(credentials: &Credentials) -> bool {
    credentials
        .expiry()
        .is_none_or(|expiry| SystemTime::now() + REFRESH_BEFORE < expiry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_close_to_expiry_are_not_fresh() {
        let soon = Credentials::new(
            "a",
            "b",
            None,
            Some(SystemTime::now() + Duration::from_secs(60)),
            "test",
        );
        let later = Credentials::new(
            "a",
            "b",
            None,
            Some(SystemTime::now() + Duration::from_secs(3600)),
            "test",
        );
        assert!(!is_fresh(&soon));
        assert!(is_fresh(&later));
    }
}
