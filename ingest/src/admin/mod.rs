//! The admin API: how a customer connects their bucket (DESIGN §1). It answers under its own
//! bearer tokens, separate from the events API's.
//!
//! - `GET /v1/integrations/s3/setup?tenant=&bucket=[&prefix=]`: the external id and the policy
//!   documents to create;
//! - `PUT /v1/tenants/{tenant}/integrations/s3`: validate, test the connection, save;
//! - `GET` the integration with its delivery status; `DELETE` it (disconnect);
//! - `POST /v1/tenants/{tenant}/integrations/s3/test`: the connection test alone;
//! - `GET /v1/digest-keys`: the public keys signed digests are checked with.
//!
//! Saved integrations go to the compacted integrations topic that every service follows; a
//! write answers only once this instance's registry has read it back, so a `GET` right after a
//! `PUT` sees it. A new connection also writes a first-delivery request for the batchers.

pub mod connection;
pub mod settings;
pub mod setup;
pub mod status;
pub mod test_limits;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::clock::now_unix_ms;
use common::delivery::{IntegrationChange, RECORD_KIND_HEADER, record_kind};
use common::digest::reason;
use common::event::TenantId;
use common::integration::{FirstDeliveryRequest, Integration};
use common::producer::HealingProducer;
use common::registry::IntegrationRegistry;
use common::s3::S3Writer;
use metrics::counter;
use rdkafka::message::{Header, OwnedHeaders};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::auth::Tokens;
use crate::error::ApiError;
use crate::metrics::ADMIN_REQUESTS;

use self::connection::{ConnectionFailure, ConnectionSuccess, test_connection};
use self::settings::{FieldProblem, IntegrationSettings};
use self::setup::Vendor;
use self::status::DeliveryStatuses;
use self::test_limits::{ConnectionTestLimits, Refused};

/// What the admin handlers share.
pub struct AdminApi {
    pub tokens: Tokens,
    pub vendor: Vendor,
    pub external_id_secret: SecretString,
    pub registry: IntegrationRegistry,
    pub statuses: DeliveryStatuses,
    pub writer: S3Writer,
    pub producer: HealingProducer,
    pub integrations_topic: String,
    pub first_deliveries_topic: String,
    /// Where integration changes are recorded for the digests, beside the delivery records.
    pub deliveries_topic: String,
    pub connection_test_timeout: Duration,
    pub connection_tests: ConnectionTestLimits,
    /// How long a write waits for Kafka, and then for the registry to read it back.
    pub write_timeout: Duration,
    /// The digest public keys to publish (none when not configured).
    pub digest_keys: crate::config::PublishedKeys,
    /// How long a tenant's uploads may fail, with none stored, before it is listed as stale.
    pub stale_after: Duration,
}

/// The admin routes.
pub fn router(api: Arc<AdminApi>) -> Router {
    Router::new()
        .route("/v1/integrations/s3/setup", get(get_setup))
        .route("/v1/digest-keys", get(get_digest_keys))
        .route("/v1/stale-tenants", get(get_stale_tenants))
        .route(
            "/v1/tenants/{tenant}/integrations/s3",
            get(get_integration)
                .put(put_integration)
                .delete(delete_integration),
        )
        .route(
            "/v1/tenants/{tenant}/integrations/s3/test",
            post(post_connection_test),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            require_admin_token,
        ))
        // Outside the token check, so refused requests are counted too.
        .route_layer(axum::middleware::from_fn(count_request))
        .with_state(api)
}

/// Counts every admin request by route (the path template, so tenants do not multiply series),
/// method and status.
async fn count_request(
    route: MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    counter!(
        ADMIN_REQUESTS,
        "route" => route.as_str().to_owned(),
        "method" => method,
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    response
}

/// Refuses a request without a valid admin token before its body is read: a client without a
/// token cannot make ingest wait for, or hold, a body.
async fn require_admin_token(
    State(api): State<Arc<AdminApi>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match api.authorize(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// Why an admin request was refused.
#[derive(Debug)]
pub enum AdminError {
    Auth(ApiError),
    Invalid(Vec<FieldProblem>),
    ConnectionFailed(ConnectionFailure),
    NotFound(TenantId),
    /// The registry is still reading the integrations topic.
    NotReady,
    Unavailable(String),
    /// Too many connection tests, for the tenant or in total.
    TooManyTests(Refused),
}

impl AdminError {
    fn code(&self) -> &'static str {
        match self {
            Self::Auth(error) => error.code(),
            Self::Invalid(_) => "invalid_settings",
            Self::ConnectionFailed(_) => "connection_test_failed",
            Self::NotFound(_) => "not_found",
            Self::NotReady | Self::Unavailable(_) => "unavailable",
            Self::TooManyTests(_) => "rate_limited",
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let code = self.code();
        tracing::info!(code, error = ?self, "refused an admin request");
        let (status, body) = match self {
            Self::Auth(error) => return error.into_response(),
            Self::Invalid(problems) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "error": code,
                    "message": format!("{} problem(s) with the settings; nothing was saved", problems.len()),
                    "problems": problems,
                }),
            ),
            Self::ConnectionFailed(failure) => (
                if failure.transient {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                },
                json!({
                    "error": code,
                    "message": format!(
                        "the connection test failed at {}: {}: {}; nothing was saved",
                        failure.step, failure.code, failure.message
                    ),
                    "connection_test": failure,
                }),
            ),
            Self::NotFound(tenant) => (
                StatusCode::NOT_FOUND,
                json!({"error": code, "message": format!("tenant {tenant} has no S3 integration")}),
            ),
            Self::NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": code, "message": "the integrations are still being read; retry shortly"}),
            ),
            Self::Unavailable(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": code, "message": format!("{reason}; retry the request")}),
            ),
            Self::TooManyTests(refused) => {
                let seconds = refused.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let body = json!({"error": code, "message": format!(
                    "too many connection tests for {}; retry in {seconds} s", refused.scope
                )});
                let mut response =
                    (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                return response;
            }
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(5_u32));
        }
        response
    }
}

type AdminResult = Result<Response, AdminError>;

impl AdminApi {
    /// Runs the connection test, within the limits on how often tests may run.
    async fn connection_test(
        &self,
        integration: &Integration,
    ) -> Result<ConnectionSuccess, AdminError> {
        self.connection_tests
            .admit(&integration.tenant_id)
            .map_err(AdminError::TooManyTests)?;
        test_connection(&self.writer, integration, self.connection_test_timeout)
            .await
            .map_err(AdminError::ConnectionFailed)
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), AdminError> {
        self.tokens
            .check(headers.get(header::AUTHORIZATION))
            .map_err(AdminError::Auth)
    }

    fn ready(&self) -> Result<(), AdminError> {
        if self.registry.is_caught_up() {
            Ok(())
        } else {
            Err(AdminError::NotReady)
        }
    }

    /// The connected, enabled tenants not getting their logs, as of `now_ms`.
    pub fn stale_tenants(&self, now_ms: i64) -> Vec<status::StaleTenant> {
        let after_ms = i64::try_from(self.stale_after.as_millis()).unwrap_or(i64::MAX);
        self.statuses.stale(now_ms, after_ms, |tenant| {
            TenantId::parse(tenant)
                .ok()
                .and_then(|tenant| self.registry.get(&tenant))
                .is_some_and(|integration| integration.enabled)
        })
    }

    fn external_id(&self, tenant: &TenantId) -> String {
        self.registry
            .inspect(tenant, |current| current.map(|i| i.external_id.clone()))
            .unwrap_or_else(|| {
                setup::external_id(self.external_id_secret.expose_secret().as_bytes(), tenant)
            })
    }

    /// The integration these settings make: a new connection, or an update that keeps the
    /// tenant's external id and connection time.
    fn integration(&self, tenant: &TenantId, settings: IntegrationSettings) -> (Integration, bool) {
        let now = OffsetDateTime::now_utc();
        let current = self.registry.get(tenant);
        let new_connection = current.is_none();
        let integration = Integration {
            tenant_id: tenant.clone(),
            enabled: settings.enabled,
            aws_account_id: settings.aws_account_id,
            bucket: settings.bucket,
            prefix: settings.prefix,
            role_arn: settings.role_arn,
            external_id: self.external_id(tenant),
            region: settings.region,
            compression: settings.compression,
            connected_at: current.as_ref().map_or(now, |c| c.connected_at),
            updated_at: now,
        };
        (integration, new_connection)
    }

    /// Writes `value` (or a tombstone) for `tenant` to `topic`; returns where it landed.
    async fn write(
        &self,
        topic: &str,
        tenant: &TenantId,
        value: Option<Vec<u8>>,
    ) -> Result<(i32, i64), AdminError> {
        self.producer
            .send(topic, tenant.as_str(), value.as_deref(), self.write_timeout)
            .await
            .map(|position| (position.partition, position.offset))
            .map_err(|error| {
                AdminError::Unavailable(format!("Kafka did not take the write to {topic}: {error}"))
            })
    }

    /// Waits until this instance's registry has read back the write at `position`.
    async fn read_back(&self, (partition, offset): (i32, i64)) {
        let applied =
            tokio::time::timeout(self.write_timeout, self.registry.applied(partition, offset));
        if !matches!(applied.await, Ok(true)) {
            tracing::warn!(
                partition,
                offset,
                "the integration registry did not read back a write in time; a GET may briefly show the previous state"
            );
        }
    }

    /// Saves an integration that passed its connection test. A new connection's first-delivery
    /// request goes first: if saving then fails, the request finds no matching integration and
    /// is dropped, while the reverse order could leave a connection without its first delivery.
    async fn save(
        &self,
        integration: &Integration,
        new_connection: bool,
    ) -> Result<(), AdminError> {
        if new_connection {
            let request = FirstDeliveryRequest {
                tenant_id: integration.tenant_id.clone(),
                connected_at: integration.connected_at,
            };
            let value =
                serde_json::to_vec(&request).map_err(|e| AdminError::Unavailable(e.to_string()))?;
            self.write(
                &self.first_deliveries_topic,
                &integration.tenant_id,
                Some(value),
            )
            .await?;
        }
        let value =
            serde_json::to_vec(integration).map_err(|e| AdminError::Unavailable(e.to_string()))?;
        let position = self
            .write(
                &self.integrations_topic,
                &integration.tenant_id,
                Some(value),
            )
            .await?;
        let why = match (new_connection, integration.enabled) {
            (true, true) => reason::CONNECTED,
            (false, true) => reason::ENABLED,
            (_, false) => reason::DISABLED,
        };
        self.record_change(
            &integration.tenant_id,
            integration.enabled,
            why,
            Some(integration.prefix.clone()),
        )
        .await?;
        self.read_back(position).await;
        Ok(())
    }

    /// Records on the deliveries topic that delivery for `tenant` is now on or off, and why,
    /// so each period's digests cover exactly the tenants whose delivery was on in it.
    async fn record_change(
        &self,
        tenant: &TenantId,
        active: bool,
        why: &str,
        prefix: Option<String>,
    ) -> Result<(), AdminError> {
        let change = IntegrationChange {
            tenant_id: tenant.to_string(),
            active,
            reason: why.to_owned(),
            prefix,
            at_ms: now_unix_ms(),
        };
        let value =
            serde_json::to_vec(&change).map_err(|e| AdminError::Unavailable(e.to_string()))?;
        let headers = OwnedHeaders::new().insert(Header {
            key: RECORD_KIND_HEADER,
            value: Some(record_kind::INTEGRATION),
        });
        self.producer
            .send_with_headers(
                &self.deliveries_topic,
                tenant.as_str(),
                Some(&value),
                Some(headers),
                self.write_timeout,
            )
            .await
            .map(drop)
            .map_err(|error| {
                AdminError::Unavailable(format!(
                    "Kafka did not take the write to {}: {error}",
                    self.deliveries_topic
                ))
            })
    }
}

fn tenant_from_path(raw: &str) -> Result<TenantId, AdminError> {
    TenantId::parse(raw)
        .map_err(|error| AdminError::Invalid(vec![FieldProblem::new("tenant", format!("{error}"))]))
}

#[derive(Debug, Deserialize)]
pub struct SetupQuery {
    tenant: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
}

/// `GET /v1/digest-keys`: what customers save and give the verifier (`--public-keys`).
async fn get_digest_keys(State(api): State<Arc<AdminApi>>) -> Response {
    axum::Json(&api.digest_keys).into_response()
}

/// `GET /v1/stale-tenants`: where `ActivityTenantsStale` leads, each tenant with when its uploads
/// started failing, its last delivery and its last error.
async fn get_stale_tenants(State(api): State<Arc<AdminApi>>) -> AdminResult {
    api.ready()?;
    Ok(axum::Json(json!({
        "stale_after_seconds": api.stale_after.as_secs(),
        "tenants": api.stale_tenants(now_unix_ms()),
    }))
    .into_response())
}

/// `GET /v1/integrations/s3/setup`.
async fn get_setup(
    State(api): State<Arc<AdminApi>>,
    Query(query): Query<SetupQuery>,
) -> AdminResult {
    api.ready()?;
    let mut problems = Vec::new();
    let tenant = match query.tenant.as_deref().map(TenantId::parse) {
        Some(Ok(tenant)) => Some(tenant),
        Some(Err(error)) => {
            problems.push(FieldProblem::new("tenant", error.to_string()));
            None
        }
        None => {
            problems.push(FieldProblem::new("tenant", "is required"));
            None
        }
    };
    match query
        .bucket
        .as_deref()
        .map(common::integration::check_bucket)
    {
        Some(Ok(())) => {}
        Some(Err(message)) => problems.push(FieldProblem::new("bucket", message)),
        None => problems.push(FieldProblem::new("bucket", "is required")),
    }
    let prefix = query.prefix.unwrap_or_default();
    if let Err(message) = common::integration::check_prefix(&prefix) {
        problems.push(FieldProblem::new("prefix", message));
    }
    let (Some(tenant), Some(bucket), true) = (tenant, query.bucket, problems.is_empty()) else {
        return Err(AdminError::Invalid(problems));
    };
    let external_id = api.external_id(&tenant);
    let documents = setup::documents(
        &api.vendor,
        &tenant,
        &external_id,
        &bucket,
        prefix.trim_end_matches('/'),
    );
    Ok(axum::Json(documents).into_response())
}

/// `PUT /v1/tenants/{tenant}/integrations/s3`.
async fn put_integration(
    State(api): State<Arc<AdminApi>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> AdminResult {
    let (integration, new_connection) = proposed(&api, &tenant, &body)?;
    // Disabling must work while the customer's side is broken; everything else is proven.
    let connection_test = if integration.enabled {
        Some(api.connection_test(&integration).await?)
    } else {
        None
    };
    api.save(&integration, new_connection).await?;
    tracing::info!(tenant = %integration.tenant_id, new_connection, enabled = integration.enabled, bucket = %integration.bucket, "integration saved");
    let status = if new_connection {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        axum::Json(json!({
            "integration": integration,
            "connection_test": connection_test,
            "first_delivery_requested": new_connection,
        })),
    )
        .into_response())
}

/// The integration a PUT or test request proposes, once validated, and whether it would be a
/// new connection.
fn proposed(api: &AdminApi, tenant: &str, body: &[u8]) -> Result<(Integration, bool), AdminError> {
    let tenant = tenant_from_path(tenant)?;
    let settings = settings::parse(body).map_err(AdminError::Invalid)?;
    api.ready()?;
    Ok(api.integration(&tenant, settings))
}

/// `GET /v1/tenants/{tenant}/integrations/s3`.
async fn get_integration(
    State(api): State<Arc<AdminApi>>,
    Path(tenant): Path<String>,
) -> AdminResult {
    let tenant = tenant_from_path(&tenant)?;
    api.ready()?;
    let integration = api
        .registry
        .get(&tenant)
        .ok_or_else(|| AdminError::NotFound(tenant.clone()))?;
    let status = api.statuses.status(tenant.as_str(), now_unix_ms());
    Ok(axum::Json(json!({"integration": integration, "status": status})).into_response())
}

/// `DELETE /v1/tenants/{tenant}/integrations/s3`.
async fn delete_integration(
    State(api): State<Arc<AdminApi>>,
    Path(tenant): Path<String>,
) -> AdminResult {
    let tenant = tenant_from_path(&tenant)?;
    api.ready()?;
    if api.registry.get(&tenant).is_none() {
        return Err(AdminError::NotFound(tenant));
    }
    let position = api.write(&api.integrations_topic, &tenant, None).await?;
    api.record_change(&tenant, false, reason::DISCONNECTED, None)
        .await?;
    api.read_back(position).await;
    api.statuses.forget(tenant.as_str());
    tracing::info!(tenant = %tenant, "integration deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/tenants/{tenant}/integrations/s3/test`.
async fn post_connection_test(
    State(api): State<Arc<AdminApi>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> AdminResult {
    let (integration, _) = proposed(&api, &tenant, &body)?;
    let success = api.connection_test(&integration).await?;
    Ok(
        axum::Json(json!({"connection_test": success, "external_id": integration.external_id}))
            .into_response(),
    )
}
