//! AWS SDK setup. The service's own identity and region come from the SDK's standard chains
//! (environment, profile, web identity, container and instance metadata); the settings here only
//! pin a region or point the SDK at an S3-compatible endpoint.

use aws_config::{BehaviorVersion, Region, SdkConfig};

/// How the services talk to AWS.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AwsArgs {
    /// Region for the service's own AWS calls; unset, the SDK's chain decides (AWS_REGION, profile, instance metadata).
    #[arg(long = "aws-region", env = "ACTIVITY_AWS_REGION")]
    pub region: Option<String>,
    /// Endpoint for S3 and STS instead of AWS's own (an S3-compatible server, or tests).
    #[arg(long = "aws-endpoint-url", env = "ACTIVITY_AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
}

impl AwsArgs {
    /// Loads the SDK configuration through the standard credential and region chains.
    pub async fn sdk_config(&self) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        loader.load().await
    }
}
