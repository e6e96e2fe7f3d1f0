//! AWS SDK setup. The service's own identity and region come from the SDK's standard chains
//! (environment, profile, web identity, container and instance metadata); the settings here only
//! pin a region or point the SDK at an S3-compatible endpoint.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};

/// How the services talk to AWS.
#[derive(Debug, Clone, clap::Args)]
pub struct AwsArgs {
    /// Region for the service's own AWS calls; unset, the SDK's chain decides (AWS_REGION, profile, instance metadata).
    #[arg(long = "aws-region", env = "ACTIVITY_AWS_REGION")]
    pub region: Option<String>,
    /// Endpoint for S3 and STS instead of AWS's own (an S3-compatible server, or tests).
    #[arg(long = "aws-endpoint-url", env = "ACTIVITY_AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Longest wait for one S3 or STS request attempt (a hung customer bucket must not hold an
    /// upload slot for long); a timed-out attempt is retried later like any transient failure.
    #[arg(long = "aws-attempt-timeout", env = "ACTIVITY_AWS_ATTEMPT_TIMEOUT", default_value = "60s", value_parser = crate::config::parse_duration)]
    pub attempt_timeout: Duration,
}

/// Longest wait for a TCP (and TLS) connection to S3 or STS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl AwsArgs {
    /// Loads the SDK configuration through the standard credential and region chains.
    pub async fn sdk_config(&self) -> SdkConfig {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(self.attempt_timeout)
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts);
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        loader.load().await
    }
}
