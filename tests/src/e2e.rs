//! The end-to-end harness: the three real binaries as separate processes on the real local
//! servers, a producer that keeps posting events for many tenants and remembers what ingest
//! acknowledged, and a checker that reads every object of every bucket back and compares.
//!
//! Fault scenarios (`tests/tests/faults.rs`) run a [`Deployment`], break something while the
//! [`Producer`] runs, and ask [`Deployment::check`] for a [`Verdict`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::codec::decompress;
use common::key::Codec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::plan::{Plan, Shape};
use crate::process::ServiceProcess;
use crate::services::TEST_TOKEN;

/// One deployment: its plan, buckets and processes.
pub struct Deployment {
    pub plan: Plan,
    pub tenants: BTreeMap<String, String>,
    pub ingest: ServiceProcess,
    pub batchers: Vec<ServiceProcess>,
    pub uploaders: Vec<ServiceProcess>,
    http: reqwest::Client,
}

impl Deployment {
    /// Starts a deployment of `shape` talking to AWS at `aws_endpoint`, and connects `tenants`
    /// tenants through the admin API, each to its own new bucket on `s3`.
    pub async fn start(
        s3: &aws_sdk_s3::Client,
        aws_endpoint: &str,
        tenants: usize,
        shape: Shape,
    ) -> Self {
        let mut deployment = Self::launch(aws_endpoint, shape).await;
        for n in 0..tenants {
            let tenant = format!("t{n:03}");
            let bucket = crate::fixtures::new_bucket(s3).await;
            let settings = crate::admin::provisioned_settings(
                &deployment.http,
                &deployment.ingest.url(""),
                &tenant,
                &bucket,
            )
            .await;
            let (status, answer) = deployment
                .admin(
                    reqwest::Method::PUT,
                    &crate::admin::integration_path(&tenant),
                    Some(&crate::pipeline::in_zstd(settings)),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "connect {tenant}: {answer}");
            deployment.tenants.insert(tenant, bucket);
        }
        deployment
    }

    /// Starts ingest, the batchers and the uploaders of `shape`, every one ready, with no
    /// tenant connected.
    pub async fn launch(aws_endpoint: &str, shape: Shape) -> Self {
        let plan = Plan::new(aws_endpoint, shape);
        let ingest = plan.spawn_ingest();
        ingest.ready().await;
        let deployment = Self {
            batchers: (0..plan.shape.batchers)
                .map(|_| plan.spawn_batcher())
                .collect(),
            uploaders: (0..plan.shape.uploaders)
                .map(|_| plan.spawn_uploader())
                .collect(),
            plan,
            tenants: BTreeMap::new(),
            ingest,
            http: reqwest::Client::new(),
        };
        for service in deployment.batchers.iter().chain(&deployment.uploaders) {
            service.ready().await;
        }
        deployment
    }
}

impl Deployment {
    /// An admin API request to the ingest process.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        crate::admin::admin_request(&self.http, method, &self.ingest.url(path), body).await
    }

    /// Sleeps until the next window's close time (its end plus the close delay) and a random
    /// 0–300 ms more, drawn from `rng`: the moment the batchers cut, publish and commit.
    pub async fn until_window_closes(&self, rng: &mut StdRng) {
        let now = common::clock::now_unix_ms();
        let window_ms = self.plan.shape.window_ms();
        let close_delay_ms = self.plan.shape.close_delay_ms();
        let close = (now / window_ms + 1) * window_ms + close_delay_ms + rng.random_range(0..300);
        tokio::time::sleep(Duration::from_millis(
            u64::try_from(close - now).unwrap_or(0),
        ))
        .await;
    }

    /// Starts posting events for every tenant, chosen by `seed`.
    pub fn produce(&self, seed: u64) -> Producer {
        Producer::start(
            self.ingest.url("/v1/events"),
            self.tenants.keys().cloned().collect(),
            seed,
        )
    }

    /// Stops every process and removes the queues. A service that cannot reach Kafka (a
    /// cluster still recovering from the scenario's fault) may spend its whole drain timeout
    /// (30 s by default) before it exits, so each gets longer than that.
    pub async fn stop(mut self) {
        for service in self
            .batchers
            .iter_mut()
            .chain(self.uploaders.iter_mut())
            .chain(std::iter::once(&mut self.ingest))
        {
            service.terminate(Duration::from_secs(45)).await;
        }
        let (_connection, channel) = crate::fixtures::confirm_channel("e2e-cleanup").await;
        crate::fixtures::delete_topology(&channel, &self.plan.setup.topology).await;
    }
}

/// What ingest acknowledged, per tenant.
pub type Acknowledged = BTreeMap<String, BTreeSet<String>>;

/// Posts a batch of events every 100 ms, each for a tenant picked by a seeded generator, and
/// retries a refused or unanswered request whole until ingest acknowledges it, as a producer
/// must (DESIGN §3). Only acknowledged events are remembered.
pub struct Producer {
    stop: CancellationToken,
    task: JoinHandle<()>,
    acknowledged: Arc<Mutex<Acknowledged>>,
}

impl Producer {
    fn start(url: String, tenants: Vec<String>, seed: u64) -> Self {
        let stop = CancellationToken::new();
        let acknowledged: Arc<Mutex<Acknowledged>> = Arc::default();
        let task = tokio::spawn({
            let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
            async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("client");
                let mut rng = StdRng::seed_from_u64(seed);
                let mut sequence = 0_u64;
                while !stop.is_cancelled() {
                    let events: Vec<(String, String)> = (0..rng.random_range(1..=8))
                        .map(|_| {
                            sequence += 1;
                            let tenant = tenants[rng.random_range(0..tenants.len())].clone();
                            let id = format!("{tenant}-{seed}-{sequence}");
                            (tenant, id)
                        })
                        .collect();
                    let body: String = events
                        .iter()
                        .map(|(tenant, id)| {
                            format!(
                                "{}\n",
                                json!({"id": id, "tenant_id": tenant, "type": "user.invite",
                                       "occurred_at": "2026-11-27T10:00:00Z",
                                       "actor": {"email": "admin@example.com"},
                                       "target": {"email": format!("{id}@example.com")}})
                            )
                        })
                        .collect();
                    // The whole request again until it is acknowledged.
                    loop {
                        let answer = http
                            .post(&url)
                            .bearer_auth(TEST_TOKEN)
                            .header("content-type", "application/x-ndjson")
                            .body(body.clone())
                            .send()
                            .await;
                        if answer.is_ok_and(|a| a.status() == StatusCode::ACCEPTED) {
                            let mut acknowledged =
                                acknowledged.lock().expect("acknowledged events");
                            for (tenant, id) in &events {
                                acknowledged
                                    .entry(tenant.clone())
                                    .or_default()
                                    .insert(id.clone());
                            }
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self {
            stop,
            task,
            acknowledged,
        }
    }

    /// Events acknowledged so far.
    pub fn count(&self) -> usize {
        self.acknowledged
            .lock()
            .expect("acknowledged events")
            .values()
            .map(BTreeSet::len)
            .sum()
    }

    /// Stops after the request in progress is acknowledged; returns what was acknowledged.
    pub async fn finish(self) -> Acknowledged {
        self.stop.cancel();
        // The request in flight is posted again until ingest acknowledges it: an ingest that
        // never acknowledges again fails the scenario instead of hanging it.
        let deadline = Duration::from_secs(120);
        tokio::time::timeout(deadline, self.task)
            .await
            .unwrap_or_else(|_| {
                panic!("ingest acknowledged no request for {deadline:?} after the fault ended")
            })
            .expect("the producer task");
        let acknowledged = self.acknowledged.lock().expect("acknowledged events");
        acknowledged.clone()
    }
}

/// What the buckets hold, compared with what ingest acknowledged.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub acknowledged: usize,
    pub delivered: usize,
    /// Acknowledged events in no object.
    pub lost: Vec<String>,
    /// Extra copies of delivered events (same id in several objects).
    pub duplicates: usize,
    /// Events in another tenant's bucket, or objects outside the tenant's folder.
    pub foreign: Vec<String>,
    /// Objects that do not decode, whose key does not fit the layout or its window, or whose
    /// checksum does not match.
    pub bad_objects: Vec<String>,
    pub objects: usize,
}

impl Verdict {
    pub fn row(&self, scenario: &str, seed: u64) -> String {
        format!(
            "{scenario:<36} seed {seed:<20} acked {:>6}  delivered {:>6}  objects {:>4}  lost {:>3}  duplicates {:>3}  foreign {:>2}  bad objects {:>2}",
            self.acknowledged,
            self.delivered,
            self.objects,
            self.lost.len(),
            self.duplicates,
            self.foreign.len(),
            self.bad_objects.len()
        )
    }
}

impl Deployment {
    /// Where each of `ids` is in the events topic (partition/offset), or that the topic does
    /// not hold it: tells a loss before Kafka (ingest) from one after it (batcher, uploader).
    pub async fn locate(&self, ids: &[String]) -> Vec<String> {
        let records = crate::kafka::read_all(
            &self.plan.shape.brokers,
            &self.plan.events_topic,
            Duration::from_secs(60),
        )
        .await;
        ids.iter()
            .map(|id| {
                let needle = format!("\"id\":\"{id}\"");
                let found: Vec<String> = records
                    .iter()
                    .filter(|r| r.value.contains(&needle))
                    .map(|r| format!("{}/{} at {}", r.partition, r.offset, r.timestamp_ms))
                    .collect();
                if found.is_empty() {
                    format!("{id}: not in the events topic")
                } else {
                    format!("{id}: in the events topic at {}", found.join(", "))
                }
            })
            .collect()
    }

    /// Reads every object of every tenant's bucket and compares with `acknowledged`.
    pub async fn check(&self, s3: &aws_sdk_s3::Client, acknowledged: &Acknowledged) -> Verdict {
        let mut verdict = Verdict {
            acknowledged: acknowledged.values().map(BTreeSet::len).sum(),
            ..Verdict::default()
        };
        let window_ms = self.plan.shape.window_ms();
        for (tenant, bucket) in &self.tenants {
            let mut copies: BTreeMap<String, usize> = BTreeMap::new();
            // Digests (under `{tenant}/digests/`) are the verifier's to check.
            for key in list_keys(s3, bucket)
                .await
                .into_iter()
                .filter(|key| !key.contains("/digests/"))
            {
                verdict.objects += 1;
                match read_object(s3, bucket, &key, tenant, window_ms).await {
                    Ok(events) => {
                        for (owner, id) in events {
                            if owner == *tenant {
                                *copies.entry(id).or_default() += 1;
                            } else {
                                verdict
                                    .foreign
                                    .push(format!("{owner}'s {id} in {bucket}/{key}"));
                            }
                        }
                    }
                    Err(problem) => verdict
                        .bad_objects
                        .push(format!("{bucket}/{key}: {problem}")),
                }
            }
            verdict.delivered += copies.len();
            verdict.duplicates += copies.values().map(|n| n - 1).sum::<usize>();
            for id in acknowledged.get(tenant).into_iter().flatten() {
                if !copies.contains_key(id) {
                    verdict.lost.push(id.clone());
                }
            }
        }
        verdict
    }
}

async fn list_keys(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token)
            .send()
            .await
            .expect("list a bucket");
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        token = page.next_continuation_token().map(str::to_owned);
        if token.is_none() {
            return keys;
        }
    }
}

/// The (tenant, id) of every event in an object, after checking its key, window metadata and
/// checksum.
async fn read_object(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    tenant: &str,
    window_ms: i64,
) -> Result<Vec<(String, String)>, String> {
    let object = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .map_err(|e| format!("cannot read: {e}"))?;
    let stored_checksum = object.checksum_sha256().map(str::to_owned);
    let window_start = object
        .metadata()
        .and_then(|m| m.get("window-start"))
        .cloned()
        .ok_or("no window-start metadata")?;
    let body = object
        .body
        .collect()
        .await
        .map_err(|e| format!("cannot read the body: {e}"))?
        .into_bytes();
    let computed = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
    if stored_checksum.as_deref() != Some(computed.as_str()) {
        return Err(format!(
            "checksum {stored_checksum:?}, body hashes to {computed}"
        ));
    }
    check_key(key, tenant, &window_start, window_ms)?;
    let raw =
        decompress(Codec::Zstd, &body, 1 << 28).map_err(|e| format!("does not decode: {e}"))?;
    let mut events = Vec::new();
    for (n, line) in raw.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let event: Value =
            serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let owner = event["tenant_id"].as_str().unwrap_or_default().to_owned();
        let id = event["id"].as_str().unwrap_or_default().to_owned();
        events.push((owner, id));
    }
    Ok(events)
}

/// `audit/{tenant}/{YYYY}/{MM}/{DD}/{HH}/{tenant}_{YYYYMMDDTHHMM}Z_{partition}-{offset}.jsonl.zst`,
/// with the time of the window the metadata names.
fn check_key(key: &str, tenant: &str, window_start: &str, window_ms: i64) -> Result<(), String> {
    let start =
        time::OffsetDateTime::parse(window_start, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("window-start {window_start:?}: {e}"))?;
    if (start.unix_timestamp() * 1000) % window_ms != 0 {
        return Err(format!(
            "window-start {window_start} is not a window boundary"
        ));
    }
    let folder = format!(
        "audit/{tenant}/{:04}/{:02}/{:02}/{:02}/",
        start.year(),
        u8::from(start.month()),
        start.day(),
        start.hour()
    );
    let name = format!(
        "{tenant}_{:04}{:02}{:02}T{:02}{:02}Z_",
        start.year(),
        u8::from(start.month()),
        start.day(),
        start.hour(),
        start.minute()
    );
    let rest = key
        .strip_prefix(&folder)
        .and_then(|k| k.strip_prefix(&name))
        .and_then(|k| k.strip_suffix(".jsonl.zst"))
        .ok_or_else(|| format!("does not fit {folder}{name}<partition>-<offset>.jsonl.zst"))?;
    let (partition, offset) = rest.split_once('-').ok_or("no partition-offset")?;
    partition.parse::<i32>().map_err(|_| "bad partition")?;
    offset.parse::<i64>().map_err(|_| "bad offset")?;
    Ok(())
}

/// A seeded generator for a scenario's fault times.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// The seed of a scenario: `ACTIVITY_FAULT_SEED` to replay a failure, else from the clock.
pub fn seed() -> u64 {
    std::env::var("ACTIVITY_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}

/// Sleeps for a random time in `range_ms`, drawn from `rng`.
pub async fn pause(rng: &mut StdRng, range_ms: std::ops::Range<u64>) {
    let wait = rng.random_range(range_ms);
    tokio::time::sleep(Duration::from_millis(wait)).await;
}
