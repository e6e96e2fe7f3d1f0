//! AWS SDK setup. The service's own identity and region come from the SDK's standard chains
//! (environment, profile, web identity, container and instance metadata); the settings here only
//! pin a region, point the SDK at an S3-compatible endpoint, or add a CA to trust for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

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
    /// PEM certificates to trust for S3 and STS besides the system's roots: the private CA of an
    /// S3-compatible server or of a TLS-inspecting proxy. Checked when the service starts.
    #[arg(
        long = "aws-ca-file",
        env = "ACTIVITY_AWS_CA_FILE",
        value_name = "PEM_FILE",
        value_parser = CaBundle::read
    )]
    pub ca_bundle: Option<CaBundle>,
}

/// Certificates read from a PEM file, each checked to be one a TLS client can trust (the HTTP
/// client would panic on one that is not), and the HTTP client trusting them and the system's
/// roots.
#[derive(Clone)]
pub struct CaBundle {
    path: PathBuf,
    certificates: usize,
    client: SharedHttpClient,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} certificates)",
            self.path.display(),
            self.certificates
        )
    }
}

impl CaBundle {
    pub fn read(path: &str) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|error| format!("cannot read {path}: {error}"))?;
        let certificates = trusted_certificates(Path::new(path), &pem)?;
        let trust = TrustStore::default().with_pem_certificate(pem);
        let context = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|error| format!("{path}: {error}"))?;
        let client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context)
            .build_https();
        Ok(Self {
            path: PathBuf::from(path),
            certificates,
            client,
        })
    }
}

/// How many certificates `pem` holds, or why one of them cannot be trusted.
fn trusted_certificates(path: &Path, pem: &[u8]) -> Result<usize, String> {
    let mut roots = rustls::RootCertStore::empty();
    for (n, certificate) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let certificate = certificate.map_err(|error| {
            format!(
                "{}: PEM block {} is not readable: {error}",
                path.display(),
                n + 1
            )
        })?;
        roots.add(certificate).map_err(|error| {
            format!(
                "{}: certificate {} cannot be trusted: {error}",
                path.display(),
                n + 1
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(roots.len())
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
        if let Some(bundle) = &self.ca_bundle {
            loader = loader.http_client(bundle.client.clone());
        }
        loader.load().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(name: &str, text: &str) -> String {
        let path = std::env::temp_dir().join(format!("{name}-{}.pem", std::process::id()));
        std::fs::write(&path, text).expect("write");
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn a_ca_file_without_a_usable_certificate_is_refused_with_its_reason() {
        let missing = CaBundle::read("/nonexistent/ca.pem").expect_err("missing");
        assert!(
            missing.starts_with("cannot read /nonexistent/ca.pem"),
            "{missing}"
        );
        let empty = CaBundle::read(&written("empty", "not a certificate\n")).expect_err("empty");
        assert!(empty.ends_with("holds no PEM certificate"), "{empty}");
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let broken = CaBundle::read(&written("broken", garbage)).expect_err("broken");
        assert!(
            broken.contains("certificate 1 cannot be trusted"),
            "{broken}"
        );
    }
}
