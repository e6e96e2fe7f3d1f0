//! Does what a customer's administrator does with the setup guide and documents: reads the
//! documents from the admin API, creates the bucket as the guide says (public access blocked,
//! SSE-S3 with the bucket key, versioning off, the documents' SSL-only bucket policy) and the
//! role they describe (trust policy and inline policy), then prints the role's ARN. Used by
//! `scripts/demo.sh`, so the demo connects tenants the way customers do.
//!
//!   provision-customer --admin-url http://127.0.0.1:8080 --s3-endpoint https://localhost:5443 \
//!     --iam-endpoint http://127.0.0.1:5000 --tenant acme --bucket acme-audit \
//!     --prefix activity-logs --role-name ActivityLogWriter
//!
//! The admin token is read from `ACTIVITY_ADMIN_TOKEN`. An `https://` S3 endpoint is trusted
//! through the local CA (see `integration_tests::tls`).

use std::process::ExitCode;

use clap::Parser;
use integration_tests::customer::{Iam, create_bucket_from_setup, create_role_from_setup};

#[derive(Parser)]
struct Args {
    /// The ingest service's base URL (its admin API).
    #[arg(long)]
    admin_url: String,
    /// A token of the admin API.
    #[arg(long, env = "ACTIVITY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// S3 for the customer's account (the local S3/STS server, over TLS: the bucket policy
    /// refuses anything else).
    #[arg(long)]
    s3_endpoint: String,
    /// IAM for the customer's account (the local S3/STS server's plain port: this tool's HTTP
    /// client speaks no TLS).
    #[arg(long)]
    iam_endpoint: String,
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    bucket: String,
    #[arg(long, default_value = "")]
    prefix: String,
    /// The name of the role to create.
    #[arg(long)]
    role_name: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match provision(&args).await {
        Ok(role_arn) => {
            println!("{role_arn}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("provision-customer: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn provision(args: &Args) -> Result<String, String> {
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("tenant", &args.tenant)
        .append_pair("bucket", &args.bucket)
        .append_pair("prefix", &args.prefix)
        .finish();
    let url = format!(
        "{}/v1/integrations/s3/setup?{query}",
        args.admin_url.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .get(&url)
        .bearer_auth(&args.admin_token)
        .send()
        .await
        .map_err(|error| format!("asking {url} for the setup documents: {error}"))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|error| format!("reading the setup documents: {error}"))?;
    if !status.is_success() {
        return Err(format!("{url} answered {status}: {text}"));
    }
    let setup: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| format!("the setup documents are not JSON ({error}): {text}"))?;
    let s3 = integration_tests::fixtures::s3_client(
        &integration_tests::fixtures::aws_config(&args.s3_endpoint).await,
    );
    create_bucket_from_setup(&s3, &setup, &args.bucket).await?;
    create_role_from_setup(&Iam::new(&args.iam_endpoint), &setup, &args.role_name).await
}
