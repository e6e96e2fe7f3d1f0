//! The three services together: ingest in this process (with its admin API), a batcher process
//! and an uploader process, on one set of topics and queues unique to the test.

use std::collections::HashMap;
use std::time::Duration;

use common::codec::decompress;
use common::key::Codec;
use reqwest::StatusCode;
use serde_json::json;

use crate::admin::AdminIngest;
use crate::plan::{Plan, Shape};
use crate::process::ServiceProcess;

pub struct Pipeline {
    pub admin: AdminIngest,
    pub batcher: ServiceProcess,
    pub uploader: ServiceProcess,
    pub plan: Plan,
}

impl Pipeline {
    /// Starts one service of each kind, as `shape` says, talking to AWS at `aws_endpoint`.
    pub async fn start(aws_endpoint: &str, shape: Shape) -> Self {
        let plan = Plan::new(aws_endpoint, shape);
        let admin = plan.start_ingest().await;
        let batcher = plan.spawn_batcher();
        let uploader = plan.spawn_uploader();
        batcher.ready().await;
        uploader.ready().await;
        Self {
            admin,
            batcher,
            uploader,
            plan,
        }
    }

    /// Connects `tenant` to `bucket` in zstd through the admin API, with a role made from the
    /// setup documents; returns the admin API's answer.
    pub async fn connect(&self, tenant: &str, bucket: &str) -> (StatusCode, serde_json::Value) {
        let settings = in_zstd(self.admin.provisioned_settings(tenant, bucket).await);
        self.admin.put(tenant, &settings).await
    }

    /// Posts `count` events of `tenant` with ids `<label>-<n>` and returns the ids.
    pub async fn post(&self, tenant: &str, label: &str, count: usize) -> Vec<String> {
        let ids: Vec<String> = (0..count).map(|n| format!("{label}-{n}")).collect();
        let body: String = ids
            .iter()
            .map(|id| {
                format!(
                    "{}\n",
                    json!({"id": id, "tenant_id": tenant, "type": "device.lock",
                           "occurred_at": "2026-11-27T10:00:00Z", "actor": {"id": "admin-1"}})
                )
            })
            .collect();
        let response = self
            .admin
            .ingest
            .post_events("application/x-ndjson", body)
            .send()
            .await
            .expect("post events");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{label}");
        ids
    }

    /// Stops the processes and removes the test's queues.
    pub async fn stop(mut self) {
        self.batcher.terminate(Duration::from_secs(20)).await;
        self.uploader.terminate(Duration::from_secs(20)).await;
        let (_connection, channel) = crate::fixtures::confirm_channel("pipeline-cleanup").await;
        crate::fixtures::delete_topology(&channel, &self.plan.setup.topology).await;
    }
}

/// Every event id in `tenant`'s zstd objects in `bucket`, with how often it occurs; checks
/// that each object is under the tenant's folder and each line is one of its events.
pub async fn delivered(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    tenant: &str,
) -> HashMap<String, usize> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .expect("list the bucket");
    let mut ids = HashMap::new();
    for object in listed.contents() {
        let key = object.key().expect("key");
        assert!(key.starts_with(&format!("audit/{tenant}/")), "{key}");
        assert!(key.ends_with(".jsonl.zst"), "{key}");
        let body = s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("get the object")
            .body
            .collect()
            .await
            .expect("read the object")
            .into_bytes();
        let raw = decompress(Codec::Zstd, &body, 1 << 24).expect("a zstd object");
        for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let event: serde_json::Value = serde_json::from_slice(line).expect("an event per line");
            assert_eq!(event["tenant_id"], json!(tenant));
            *ids.entry(event["id"].as_str().expect("id").to_owned())
                .or_default() += 1;
        }
    }
    ids
}

/// `settings` in zstd, the codec [`delivered`] reads.
pub fn in_zstd(mut settings: serde_json::Value) -> serde_json::Value {
    settings["compression"] = json!("zstd");
    settings
}
