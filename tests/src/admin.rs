//! An ingest service with its admin API on, and requests to it.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::fixtures::REGION;
use crate::plan::{Plan, Shape};
use crate::services::TestIngest;

/// The admin API's bearer token in tests (distinct from the events token).
pub const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
/// The vendor role customers trust.
pub const VENDOR_ROLE: &str = "arn:aws:iam::111122223333:role/ActivityDelivery";
pub use crate::customer::CUSTOMER_ACCOUNT;
/// A role in the customer account that the local server does not hold: settings naming it pass
/// validation, and a connection test with them fails (such a role is assumed without the
/// external id). Tests that connect use [`AdminIngest::provisioned_settings`].
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
    /// Ingest with the admin API on the shared test broker, one retry tier of a second and
    /// `extra` flags, talking to AWS at `aws_endpoint`; see [`Plan`] for anything else.
    pub async fn spawn(aws_endpoint: &str, extra: &[&str]) -> Self {
        let shape = Shape::single().with_ingest_flags(extra);
        Plan::new(aws_endpoint, shape).start_ingest().await
    }

    /// `plan`'s ingest in this process, returned once it says it is ready.
    pub async fn start(plan: &Plan) -> Self {
        let ingest =
            TestIngest::start(plan.ingest_args(), &plan.shape.brokers, &plan.events_topic).await;
        let admin = Self {
            ingest,
            topics: plan.topics.clone(),
            http: reqwest::Client::new(),
        };
        // Ingest says ready once the admin API has read the integrations.
        crate::wait_for("ingest ready", Duration::from_secs(20), || async {
            let ready = admin.ingest.get("/readyz").send().await;
            ready
                .is_ok_and(|answer| answer.status().is_success())
                .then_some(())
        })
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

    /// [`settings`] for `tenant` and `bucket`, naming a role made for them in the customer
    /// account from this API's setup documents, as a customer following them would.
    pub async fn provisioned_settings(&self, tenant: &str, bucket: &str) -> Value {
        provisioned_settings(&self.http, &self.ingest.url(""), tenant, bucket).await
    }

    /// The setup documents for `tenant` and `bucket` (see [`setup_documents`]).
    pub async fn setup_documents(&self, tenant: &str, bucket: &str) -> Value {
        setup_documents(&self.http, &self.ingest.url(""), tenant, bucket).await
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

/// [`settings`] for `tenant` and `bucket`, naming a new role in the customer account made (on
/// the local S3/STS server) from the setup documents of the admin API at `admin_url`.
pub async fn provisioned_settings(
    http: &reqwest::Client,
    admin_url: &str,
    tenant: &str,
    bucket: &str,
) -> Value {
    let mut settings = settings(bucket);
    let setup = setup_documents(http, admin_url, tenant, bucket).await;
    let iam = crate::customer::Iam::new(&crate::fixtures::moto_endpoint());
    let role = crate::customer::create_role_from_setup(&iam, &setup, &crate::unique("writer"))
        .await
        .unwrap_or_else(|error| panic!("creating {tenant}'s role: {error}"));
    settings["role_arn"] = json!(role);
    settings
}

/// The setup documents the admin API at `admin_url` gives `tenant` for `bucket` under the
/// prefix [`settings`] uses.
pub async fn setup_documents(
    http: &reqwest::Client,
    admin_url: &str,
    tenant: &str,
    bucket: &str,
) -> Value {
    let prefix = settings(bucket)["prefix"].clone();
    let url = format!(
        "{admin_url}/v1/integrations/s3/setup?tenant={tenant}&bucket={bucket}&prefix={}",
        prefix.as_str().unwrap_or_default()
    );
    let (status, setup) = admin_request(http, Method::GET, &url, None).await;
    assert_eq!(status, StatusCode::OK, "setup documents: {setup}");
    setup
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
