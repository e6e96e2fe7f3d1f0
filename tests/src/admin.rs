//! An ingest service with its admin API on, and requests to it.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::REGION;
use crate::services::TestIngest;

/// The admin API's bearer token in tests (distinct from the events token).
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
/// The vendor role customers trust.
pub const VENDOR_ROLE: &str = "arn:aws:iam::111122223333:role/ActivityDelivery";
/// The customer account and role the tests connect with.
pub const CUSTOMER_ACCOUNT: &str = "123456789012";
pub const CUSTOMER_ROLE: &str = "arn:aws:iam::123456789012:role/ActivityLogWriter";

/// The topics an admin-enabled ingest writes and reads, unique to the test.
#[derive(Debug, Clone)]
pub struct AdminTopics {
    pub integrations: String,
    pub first_deliveries: String,
    pub deliveries: String,
}

impl AdminTopics {
    pub fn unique() -> Self {
        Self {
            integrations: crate::unique("activity.integrations"),
            first_deliveries: crate::unique("activity.first-deliveries"),
            deliveries: crate::unique("activity.deliveries"),
        }
    }
}

/// Ingest with the admin API, talking to AWS at `aws_endpoint`.
pub struct AdminIngest {
    pub ingest: TestIngest,
    pub topics: AdminTopics,
    http: reqwest::Client,
}

impl AdminIngest {
    pub async fn spawn(aws_endpoint: &str, topics: AdminTopics, extra: &[&str]) -> Self {
        let secret = "external-id-secret-for-tests-0123456789";
        let mut args = vec![
            "--admin-token",
            ADMIN_TOKEN,
            "--vendor-role-arn",
            VENDOR_ROLE,
            "--external-id-secret",
            secret,
            "--integrations-topic",
            &topics.integrations,
            "--first-deliveries-topic",
            &topics.first_deliveries,
            "--deliveries-topic",
            &topics.deliveries,
            "--aws-region",
            REGION,
            "--aws-endpoint-url",
            aws_endpoint,
        ];
        args.extend_from_slice(extra);
        let ingest = TestIngest::spawn(&args).await;
        let admin = Self {
            ingest,
            topics,
            http: reqwest::Client::new(),
        };
        // Ingest says ready once the admin API has read the integrations.
        crate::wait_for(
            "ingest ready",
            std::time::Duration::from_secs(20),
            || async {
                let ready = admin.ingest.get("/readyz").send().await;
                ready
                    .is_ok_and(|answer| answer.status().is_success())
                    .then_some(())
            },
        )
        .await;
        admin
    }

    /// An admin request with the admin token and an optional JSON body; returns the status and
    /// the JSON answer (`null` when there is none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        admin_request(&self.http, method, &self.ingest.url(path), body).await
    }

    pub async fn put(&self, tenant: &str, settings: &Value) -> (StatusCode, Value) {
        self.call(Method::PUT, &integration_path(tenant), Some(settings))
            .await
    }

    pub async fn get(&self, tenant: &str) -> (StatusCode, Value) {
        self.call(Method::GET, &integration_path(tenant), None)
            .await
    }

    pub async fn test(&self, tenant: &str, settings: &Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("{}/test", integration_path(tenant)),
            Some(settings),
        )
        .await
    }

    pub async fn delete(&self, tenant: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, &integration_path(tenant), None)
            .await
    }
}

/// An admin API request to `url` with the admin token and an optional JSON body; returns the
/// status and the JSON answer (`null` when there is none).
pub async fn admin_request(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut request = http.request(method, url).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status();
    let text = response.text().await.expect("admin answer");
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, value)
}

pub fn integration_path(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/integrations/s3")
}

/// Valid settings delivering to `bucket` under `audit`, uncompressed.
pub fn settings(bucket: &str) -> Value {
    json!({
        "aws_account_id": CUSTOMER_ACCOUNT,
        "bucket": bucket,
        "prefix": "audit",
        "role_arn": CUSTOMER_ROLE,
        "region": REGION,
        "compression": "none",
    })
}
