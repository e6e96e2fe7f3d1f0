//! Assumed-role credentials per (role ARN, external id), cached until shortly before they expire.
//!
//! The STS call is made here rather than through the SDK's `AssumeRoleProvider` so that a refusal
//! arrives as a typed `AssumeRole` error, classified like every other AWS error, and so that calls
//! and cache hits can be counted. One lock per role makes concurrent uploads for a tenant share a
//! single AssumeRole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::{Region, SdkConfig};
use aws_sdk_s3::config::Credentials;
use common::integration::Integration;
use metrics::counter;

use crate::error::{ErrorClass, UploadError};
use crate::metrics::{ASSUME_ROLE_CACHE_HITS, ASSUME_ROLE_CALLS};

/// Credentials are replaced this long before they expire, so none expires mid-upload.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Requested session length.
const SESSION_SECONDS: i32 = 3600;
/// STS's limit on `RoleSessionName`.
const MAX_SESSION_NAME: usize = 64;

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
        // STS in the integration's region: regional endpoints keep working when the global one
        // is slow or disabled for the account.
        let config = aws_sdk_sts::config::Builder::from(&self.base)
            .region(Region::new(integration.region.clone()))
            .build();
        let output = aws_sdk_sts::Client::from_conf(config)
            .assume_role()
            .role_arn(&integration.role_arn)
            .external_id(&integration.external_id)
            .role_session_name(session_name(integration.tenant_id.as_str()))
            .duration_seconds(SESSION_SECONDS)
            .send()
            .await
            .map_err(|error| UploadError::from_sdk("assume-role", &error))?;
        let issued = output.credentials().ok_or_else(|| {
            UploadError::new(
                ErrorClass::Retryable,
                "assume-role",
                "NoCredentials",
                "STS answered without credentials",
            )
        })?;
        let expires = SystemTime::try_from(*issued.expiration()).ok();
        Ok(Credentials::new(
            issued.access_key_id(),
            issued.secret_access_key(),
            Some(issued.session_token().to_owned()),
            expires,
            "activity-uploader-assume-role",
        ))
    }
}

fn is_fresh(credentials: &Credentials) -> bool {
    credentials
        .expiry()
        .is_none_or(|expiry| SystemTime::now() + REFRESH_BEFORE < expiry)
}

/// `activity-<tenant>`, cut to STS's length limit; tenant ids only hold characters STS allows.
pub fn session_name(tenant: &str) -> String {
    let mut name = format!("activity-{tenant}");
    name.truncate(MAX_SESSION_NAME);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_name_the_tenant_within_the_limit() {
        assert_eq!(session_name("acme"), "activity-acme");
        assert_eq!(session_name(&"t".repeat(63)).len(), MAX_SESSION_NAME);
    }

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
