//! A small fault-injecting HTTP proxy in front of the S3/STS server, for the faults moto cannot
//! produce: S3 answering 503 `SlowDown`, slow answers, STS refusing or throttling `AssumeRole`,
//! buckets owned by another account than the requests expect (moto does not check
//! `x-amz-expected-bucket-owner`; S3 answers `403 AccessDenied`), and object HEADs refused as
//! for a role without `s3:GetObject` (moto applies no bucket policy to HEAD).
//! Everything else is forwarded unchanged (moto does not check SigV4 signatures against the Host).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Faults to inject, changed while a test runs.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// The next this many object PUTs get `503 SlowDown`.
    pub failing_puts: usize,
    /// Every answer is held back this long (only those about `delayed_bucket`, when set).
    pub delay: Duration,
    pub delayed_bucket: Option<String>,
    /// `AssumeRole` is refused with `403 AccessDenied`.
    pub deny_assume_role: bool,
    /// `AssumeRole` is answered `400 Throttling` ("Rate exceeded"), as STS does when it sheds
    /// load.
    pub throttle_assume_role: bool,
    /// Buckets and the account owning each: a request about one of them whose
    /// `x-amz-expected-bucket-owner` names another account is refused as S3 refuses it.
    pub bucket_owners: Vec<(String, String)>,
    /// Object HEADs are refused with a bodiless `403`, as S3 answers a HEAD the role's policy
    /// does not allow.
    pub deny_object_heads: bool,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    faults: Arc<Mutex<Faults>>,
    puts_failed: Arc<Mutex<usize>>,
    http: reqwest::Client,
}

/// The running proxy; stops when dropped.
pub struct FaultProxy {
    pub address: SocketAddr,
    state: ProxyState,
    server: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            faults: Arc::default(),
            puts_failed: Arc::default(),
            http: reqwest::Client::new(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let router = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            address,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn set(&self, faults: Faults) {
        *self.state.faults.lock().expect("faults") = faults;
    }

    /// Object PUTs answered with 503 so far.
    pub fn puts_failed(&self) -> usize {
        *self.state.puts_failed.lock().expect("counter")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn forward(State(state): State<ProxyState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 256 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let faults = state.faults.lock().expect("faults").clone();
    let delayed = faults
        .delayed_bucket
        .as_ref()
        .is_none_or(|bucket| bucket_of(parts.uri.path()) == Some(bucket.as_str()));
    if delayed && !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let is_assume_role = parts.method == Method::POST && contains(&body, b"Action=AssumeRole");
    if is_assume_role && faults.deny_assume_role {
        return xml(StatusCode::FORBIDDEN, STS_ACCESS_DENIED);
    }
    if is_assume_role && faults.throttle_assume_role {
        return xml(StatusCode::BAD_REQUEST, STS_THROTTLING);
    }
    let expected_owner = parts
        .headers
        .get("x-amz-expected-bucket-owner")
        .and_then(|value| value.to_str().ok());
    let owned_elsewhere = faults.bucket_owners.iter().any(|(bucket, owner)| {
        bucket_of(parts.uri.path()) == Some(bucket.as_str())
            && expected_owner.is_some_and(|expected| expected != owner)
    });
    if owned_elsewhere {
        return xml(StatusCode::FORBIDDEN, S3_ACCESS_DENIED);
    }
    if parts.method == Method::HEAD && faults.deny_object_heads {
        return StatusCode::FORBIDDEN.into_response();
    }
    let is_object_put = parts.method == Method::PUT && parts.uri.path().matches('/').count() >= 2;
    if is_object_put {
        let mut remaining = state.faults.lock().expect("faults");
        if remaining.failing_puts > 0 {
            remaining.failing_puts -= 1;
            *state.puts_failed.lock().expect("counter") += 1;
            return xml(StatusCode::SERVICE_UNAVAILABLE, S3_SLOW_DOWN);
        }
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = parts.headers.clone();
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    let upstream = state
        .http
        .request(parts.method.clone(), format!("{}{path}", state.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    match upstream {
        Ok(answer) => {
            let status = answer.status();
            let mut headers = HeaderMap::new();
            for (name, value) in answer.headers() {
                if name != header::TRANSFER_ENCODING
                    && name != header::CONNECTION
                    && name != header::CONTENT_LENGTH
                {
                    headers.append(name.clone(), value.clone());
                }
            }
            let bytes = answer.bytes().await.unwrap_or_else(|_| Bytes::new());
            (status, headers, Body::from(bytes)).into_response()
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

/// The bucket a path-style request is about.
fn bucket_of(path: &str) -> Option<&str> {
    path.strip_prefix('/')
        .and_then(|path| path.split('/').next())
        .filter(|bucket| !bucket.is_empty())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn xml(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

const S3_SLOW_DOWN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>FAULTPROXY</RequestId></Error>"#;

const S3_ACCESS_DENIED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>AccessDenied</Code><Message>Access Denied</Message><RequestId>FAULTPROXY</RequestId></Error>"#;

const STS_THROTTLING: &str = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>
<RequestId>FAULTPROXY</RequestId></ErrorResponse>"#;

const STS_ACCESS_DENIED: &str = r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User is not authorized to perform: sts:AssumeRole on the role</Message></Error>
<RequestId>FAULTPROXY</RequestId></ErrorResponse>"#;
