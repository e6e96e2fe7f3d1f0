//! The uploader's queue consumer on real RabbitMQ, Kafka and moto: a good job is stored and acked,
//! a denied one lands in the dead-letter queue with its error, a job for a tenant without an
//! integration is discarded, and retryable failures climb the retry tiers before dead-lettering.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::aws::AwsArgs;
use common::delivery::{ErrorClass, Outcome};
use common::kafka::KafkaArgs;
use common::registry::IntegrationRegistry;
use common::shutdown::Supervisor;
use common::topology::UploadTopology;
use integration_tests::fault_proxy::{FaultProxy, Faults};
use integration_tests::fixtures::{
    IntegrationsTopic, REGION, amqp_args, aws_args, aws_config, confirm_channel, deny_on_objects,
    enqueue_job, finish, moto_endpoint, new_bucket, object_count, payload, s3_client, upload_job,
    wait_for_object,
};
use integration_tests::{unique, wait_for};
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;
use uploader::consume::Uploader;
use uploader::credentials::AssumedRoles;
use uploader::delivery_log::DeliveryLog;
use uploader::destination::S3Writer;
use uploader::failure::header as failure_header;
use uploader::retry::RetryPolicy;

/// A registry holding the given (tenant, bucket) integrations.
async fn registry(integrations: &[(&str, &str)], supervisor: &Supervisor) -> IntegrationRegistry {
    let topic = IntegrationsTopic::create().await;
    for (tenant, bucket) in integrations {
        topic.connect(tenant, bucket).await;
    }
    let registry = IntegrationRegistry::follow(&topic.kafka, &topic.name, supervisor)
        .await
        .expect("follow");
    tokio::time::timeout(Duration::from_secs(30), registry.caught_up())
        .await
        .expect("caught up");
    registry
}

async fn start_uploader(
    aws: AwsArgs,
    registry: IntegrationRegistry,
    topology: &UploadTopology,
    supervisor: &Supervisor,
) -> String {
    start_uploader_with(aws, registry, topology, supervisor, vec![]).await
}

/// [`start_uploader`] with a deliveries topic of `deliveries_config`.
async fn start_uploader_with(
    aws: AwsArgs,
    registry: IntegrationRegistry,
    topology: &UploadTopology,
    supervisor: &Supervisor,
    deliveries_config: Vec<(&str, &str)>,
) -> String {
    let config = aws.sdk_config().await;
    let kafka = KafkaArgs::new(integration_tests::kafka::brokers());
    let deliveries_topic = unique("activity.deliveries");
    kafka
        .ensure_topics(&[common::kafka::TopicSpec {
            name: &deliveries_topic,
            partitions: 1,
            replication: 1,
            config: deliveries_config,
        }])
        .await
        .expect("deliveries topic");
    let deliveries = DeliveryLog {
        producer: common::producer::HealingProducer::new(
            kafka.producer_config(Duration::from_secs(10)),
            "uploader-deliveries",
        )
        .expect("producer"),
        topic: deliveries_topic.clone(),
    };
    let uploader = Arc::new(Uploader {
        registry,
        roles: AssumedRoles::new(config.clone()),
        writer: S3Writer::new(config),
        topology: topology.clone(),
        policy: RetryPolicy {
            tiers: topology.retry_queues.len(),
            max_attempts: 2,
            max_age: Duration::from_secs(3600),
        },
        deliveries,
        concurrency: 1,
        tenant_concurrency: 1,
        connected: Arc::default(),
    });
    let token = supervisor.token();
    supervisor.spawn("uploader", async move {
        uploader.run(&amqp_args(&[]), token).await
    });
    deliveries_topic
}

fn header_text(headers: &lapin::types::FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An uploader in this process delivering for `integrations` (tenant, bucket), one job at a
/// time, with a declared queue and a channel to it.
struct Queue {
    supervisor: Supervisor,
    topology: UploadTopology,
    channel: lapin::Channel,
    _connection: lapin::Connection,
    /// Where the uploader writes its delivery records.
    deliveries: String,
}

impl Queue {
    async fn start(integrations: &[(&str, &str)]) -> Self {
        let supervisor = Supervisor::new();
        let registry = registry(integrations, &supervisor).await;
        let (connection, channel) = confirm_channel("uploader-test").await;
        let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_secs(60)]);
        topology.declare(&channel).await.expect("declare");
        let deliveries =
            start_uploader(aws_args(&moto_endpoint()), registry, &topology, &supervisor).await;
        Self {
            supervisor,
            topology,
            channel,
            _connection: connection,
            deliveries,
        }
    }

    /// Queues a job of `tenant` with its usual payload.
    async fn enqueue(&self, tenant: &str, offset: i64) -> common::job::UploadJob {
        let job = upload_job(tenant, offset, &payload(tenant));
        enqueue_job(&self.channel, &self.topology, &job, &payload(tenant)).await;
        job
    }

    /// The first delivery record the uploader writes.
    async fn delivery_record(&self) -> common::delivery::DeliveryRecord {
        let records = integration_tests::kafka::read_until(
            &integration_tests::kafka::brokers(),
            &self.deliveries,
            Duration::from_secs(30),
            |r| !r.is_empty(),
        )
        .await;
        serde_json::from_str(&records[0].value).expect("a delivery record")
    }

    /// The next message of `queue`, taken off it.
    async fn take(&self, queue: &str) -> Option<lapin::message::BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get")
    }

    async fn finish(self) {
        finish(self.supervisor, &self.channel, &self.topology).await;
    }
}

#[tokio::test]
async fn a_good_job_is_stored_and_recorded_with_what_a_signed_digest_lists() {
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let bucket = new_bucket(&s3).await;
    let queue = Queue::start(&[("acme", &bucket)]).await;
    let good = queue.enqueue("acme", 7).await;

    let key = format!("audit/{}", good.relative_key);
    wait_for_object(&s3, &bucket, &key, Duration::from_secs(30)).await;
    let record = queue.delivery_record().await;
    assert_eq!(
        (record.tenant_id.as_str(), record.outcome, record.attempt),
        ("acme", Outcome::Stored, 1)
    );
    assert_eq!(record.error_class, None);
    assert_eq!(record.key.as_deref(), Some(key.as_str()));
    assert_eq!(record.bucket.as_deref(), Some(bucket.as_str()));
    assert_eq!(record.event_count, 2);
    assert_eq!(
        (
            record.sha256.as_deref(),
            record.partition,
            record.first_offset,
            record.last_offset
        ),
        (
            Some(good.sha256_hex.as_str()),
            Some(good.partition),
            Some(good.first_offset),
            Some(good.last_offset)
        )
    );
    assert!(
        queue.take(&queue.topology.queue).await.is_none(),
        "the job was acknowledged"
    );
    queue.finish().await;
}

#[tokio::test]
async fn a_denied_job_is_dead_lettered_whole_with_its_error() {
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let bucket = new_bucket(&s3).await;
    deny_on_objects(&s3, &bucket, "s3:PutObject").await;
    let queue = Queue::start(&[("denied", &bucket)]).await;
    let denied = queue.enqueue("denied", 5).await;

    let record = queue.delivery_record().await;
    assert_eq!(
        (
            record.outcome,
            record.error_class,
            record.error_code.as_deref()
        ),
        (
            Outcome::DeadLettered,
            Some(ErrorClass::Configuration),
            Some("AccessDenied")
        )
    );
    let dead = queue
        .take(&queue.topology.dead_letter_queue)
        .await
        .expect("the denied job is in the dead-letter queue");
    let headers = dead.delivery.properties.headers().clone().expect("headers");
    assert_eq!(header_text(&headers, "tenant").as_deref(), Some("denied"));
    assert_eq!(
        header_text(&headers, failure_header::CLASS).as_deref(),
        Some("configuration")
    );
    assert_eq!(
        header_text(&headers, failure_header::CODE).as_deref(),
        Some("AccessDenied")
    );
    assert_eq!(
        dead.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str()),
        Some(denied.relative_key.as_str())
    );
    assert_eq!(dead.delivery.data, payload("denied"));
    assert_eq!(object_count(&s3, &bucket).await, Some(0));
    queue.finish().await;
}

#[tokio::test]
async fn a_job_of_a_tenant_without_an_integration_is_discarded_not_dead_lettered() {
    let queue = Queue::start(&[]).await;
    queue.enqueue("ghost", 6).await;

    let record = queue.delivery_record().await;
    assert_eq!(
        (
            record.tenant_id.as_str(),
            record.outcome,
            record.error_class,
            record.error_code.as_deref()
        ),
        (
            "ghost",
            Outcome::Discarded,
            Some(ErrorClass::Discard),
            Some("NoIntegration")
        )
    );
    assert!(
        queue
            .take(&queue.topology.dead_letter_queue)
            .await
            .is_none()
    );
    assert!(
        queue.take(&queue.topology.queue).await.is_none(),
        "the job was acknowledged"
    );
    queue.finish().await;
}

#[tokio::test]
async fn retryable_failures_wait_in_the_retry_tier_then_dead_letter_with_their_attempts() {
    let supervisor = Supervisor::new();
    let registry = registry(&[("acme", "some-bucket")], &supervisor).await;
    let (_connection, channel) = confirm_channel("uploader-test").await;
    let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_millis(300)]);
    topology.declare(&channel).await.expect("declare");
    // Nothing listens there: every STS and S3 call fails as a network error.
    let unreachable = format!(
        "http://127.0.0.1:{}",
        integration_tests::services::free_port()
    );
    start_uploader(aws_args(&unreachable), registry, &topology, &supervisor).await;

    enqueue_job(
        &channel,
        &topology,
        &upload_job("acme", 1, &payload("acme")),
        &payload("acme"),
    )
    .await;
    let dead = wait_for(
        "the job to be dead-lettered",
        Duration::from_secs(60),
        || async {
            channel
                .basic_get(
                    topology.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .expect("get")
        },
    )
    .await;
    let headers = dead.delivery.properties.headers().clone().expect("headers");
    assert_eq!(
        header_text(&headers, "attempt").as_deref(),
        Some("2"),
        "one try, one retry"
    );
    assert_eq!(
        header_text(&headers, failure_header::CLASS).as_deref(),
        Some("retryable")
    );
    assert_eq!(
        header_text(&headers, failure_header::STEP).as_deref(),
        Some("assume-role")
    );
    assert!(
        headers.inner().contains_key("x-death"),
        "it went through the retry tier"
    );
    finish(supervisor, &channel, &topology).await;
}

#[tokio::test]
async fn the_uploader_service_becomes_ready_once_caught_up_and_delivers() {
    let config = aws_config(&moto_endpoint()).await;
    let s3 = s3_client(&config);
    let bucket = new_bucket(&s3).await;
    let supervisor = Supervisor::new();
    // The service follows this topic itself.
    let topic = IntegrationsTopic::create().await;
    topic.connect("acme", &bucket).await;

    let uploads = unique("uploads");
    let endpoint = moto_endpoint();
    let brokers = integration_tests::kafka::brokers();
    let service_config = uploader::config::UploaderConfig::try_parse_from([
        "uploader",
        "--listen",
        "127.0.0.1:0",
        "--integrations-topic",
        &topic.name,
        "--kafka-brokers",
        &brokers,
        "--uploads-name",
        &uploads,
        "--retry-tiers",
        "1s",
        "--aws-endpoint-url",
        &endpoint,
        "--aws-region",
        REGION,
    ])
    .expect("uploader arguments");
    let address = uploader::start(service_config, &supervisor)
        .await
        .expect("uploader starts");
    let ready = format!("http://{address}/readyz");
    wait_for(
        "the uploader to be ready",
        Duration::from_secs(30),
        || async { (reqwest::get(&ready).await.ok()?.status() == 200).then_some(()) },
    )
    .await;

    let (_connection, channel) = confirm_channel("uploader-test").await;
    let topology = UploadTopology::new(&uploads, &[Duration::from_secs(1)]);
    let good = upload_job("acme", 11, &payload("acme"));
    enqueue_job(
        &channel,
        &topology,
        &good,
        &payload(good.tenant_id.as_str()),
    )
    .await;
    let key = format!("audit/{}", good.relative_key);
    wait_for_object(&s3, &bucket, &key, Duration::from_secs(30)).await;
    let metrics = reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "activity_uploader_uploads_total{outcome=\"stored\"",
        "activity_uploader_upload_latency_seconds_bucket",
        "activity_uploader_object_size_bytes_bucket",
        "activity_uploader_in_flight_uploads",
        "activity_uploader_dlq_depth_messages",
        "activity_uploader_assume_role_calls_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    finish(supervisor, &channel, &topology).await;
}

#[tokio::test]
async fn dead_lettered_jobs_are_listed_in_place_and_redriven_per_tenant_after_the_fix() {
    let config = aws_config(&moto_endpoint()).await;
    let s3 = s3_client(&config);
    let bucket = new_bucket(&s3).await;
    deny_on_objects(&s3, &bucket, "s3:PutObject").await;

    let supervisor = Supervisor::new();
    let registry = registry(&[("acme", &bucket), ("globex", &bucket)], &supervisor).await;
    let (_connection, channel) = confirm_channel("uploader-test").await;
    let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_secs(60)]);
    topology.declare(&channel).await.expect("declare");
    start_uploader(aws_args(&moto_endpoint()), registry, &topology, &supervisor).await;
    let acme = upload_job("acme", 21, &payload("acme"));
    enqueue_job(
        &channel,
        &topology,
        &acme,
        &payload(acme.tenant_id.as_str()),
    )
    .await;
    enqueue_job(
        &channel,
        &topology,
        &upload_job("globex", 22, &payload("globex")),
        &payload("globex"),
    )
    .await;

    let listed = wait_for(
        "both jobs in the dead-letter queue",
        Duration::from_secs(30),
        || async {
            let jobs = uploader::dlq::list(&channel, &topology, None)
                .await
                .expect("list");
            (jobs.len() == 2).then_some(jobs)
        },
    )
    .await;
    assert!(
        listed
            .iter()
            .all(|j| j.code == "AccessDenied" && j.class == "configuration"),
        "{listed:?}"
    );
    let only_acme =
        uploader::dlq::list(&channel, &topology, Some(&"acme".parse().expect("tenant")))
            .await
            .expect("list");
    assert_eq!(
        only_acme.len(),
        1,
        "listing filters by tenant and leaves the jobs in place"
    );
    assert_eq!(only_acme[0].key, acme.relative_key);

    s3.delete_bucket_policy()
        .bucket(&bucket)
        .send()
        .await
        .expect("the customer fixes the policy");
    let summary = uploader::dlq::redrive(
        &channel,
        &topology,
        Some(&"acme".parse().expect("tenant")),
        None,
    )
    .await
    .expect("redrive");
    assert_eq!(summary.redriven.len(), 1);
    assert_eq!(summary.kept, 1, "the other tenant's job stays");

    let key = format!("audit/{}", acme.relative_key);
    wait_for_object(&s3, &bucket, &key, Duration::from_secs(30)).await;
    let left = uploader::dlq::list(&channel, &topology, None)
        .await
        .expect("list");
    assert_eq!(
        left.iter().map(|j| j.tenant.as_str()).collect::<Vec<_>>(),
        ["globex"]
    );
    finish(supervisor, &channel, &topology).await;
}

async fn read_records(topic: &str, count: usize) -> Vec<common::delivery::DeliveryRecord> {
    let records = integration_tests::kafka::read_until(
        &integration_tests::kafka::brokers(),
        topic,
        Duration::from_secs(60),
        move |r| r.len() >= count,
    )
    .await;
    records
        .iter()
        .map(|r| serde_json::from_str(&r.value).expect("a delivery record"))
        .collect()
}

/// A stored object whose delivery record Kafka refuses would be missing from the tenant's
/// signed digest: its job goes round the retry tier, finds the object already there, and records
/// it once Kafka takes records again.
#[tokio::test]
async fn a_stored_object_whose_record_kafka_refuses_is_recorded_on_the_jobs_next_round() {
    let config = aws_config(&moto_endpoint()).await;
    let s3 = s3_client(&config);
    let bucket = new_bucket(&s3).await;
    let supervisor = Supervisor::new();
    let registry = registry(&[("acme", &bucket)], &supervisor).await;
    let (_connection, channel) = confirm_channel("uploader-test").await;
    let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_secs(3)]);
    topology.declare(&channel).await.expect("declare");
    // Records of a few hundred bytes are too large for this topic.
    let deliveries = start_uploader_with(
        aws_args(&moto_endpoint()),
        registry,
        &topology,
        &supervisor,
        vec![("max.message.bytes", "64")],
    )
    .await;
    let job = upload_job("acme", 41, &payload("acme"));
    enqueue_job(&channel, &topology, &job, &payload(job.tenant_id.as_str())).await;
    let key = format!("audit/{}", job.relative_key);
    wait_for_object(&s3, &bucket, &key, Duration::from_secs(30)).await;

    // Kafka takes records again before the job's retry comes round.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        KafkaArgs::new(integration_tests::kafka::brokers())
            .client_config(&[])
            .create()
            .expect("admin client");
    let topic = rdkafka::admin::ResourceSpecifier::Topic(&deliveries);
    let altered = admin
        .alter_configs(
            &[rdkafka::admin::AlterConfig::new(topic).set("max.message.bytes", "1048588")],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .expect("alter the topic");
    assert!(altered.iter().all(Result::is_ok), "{altered:?}");

    let records = read_records(&deliveries, 1).await;
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.outcome.as_str(), r.key.as_deref(), r.attempt))
        .collect();
    assert_eq!(summary, [("already_there", Some(key.as_str()), 2)]);
    assert_eq!(object_count(&s3, &bucket).await, Some(1), "stored once");
    finish(supervisor, &channel, &topology).await;
}

#[tokio::test]
async fn s3_slowdowns_past_the_sdk_retries_go_through_a_tier_and_the_object_lands_once() {
    let config = aws_config(&moto_endpoint()).await;
    let s3 = s3_client(&config);
    let bucket = new_bucket(&s3).await;
    let proxy = FaultProxy::start(&moto_endpoint()).await;
    // The SDK itself tries a throttled PUT three times; the third 503 hands the job to a tier.
    proxy.set(Faults {
        failing_puts: 3,
        ..Faults::default()
    });

    let supervisor = Supervisor::new();
    let registry = registry(&[("acme", &bucket)], &supervisor).await;
    let (_connection, channel) = confirm_channel("uploader-test").await;
    let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_millis(300)]);
    topology.declare(&channel).await.expect("declare");
    let deliveries = start_uploader(aws_args(&proxy.url()), registry, &topology, &supervisor).await;
    let job = upload_job("acme", 31, &payload("acme"));
    enqueue_job(&channel, &topology, &job, &payload(job.tenant_id.as_str())).await;

    let records = read_records(&deliveries, 2).await;
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.outcome.as_str(), r.error_code.as_deref(), r.attempt))
        .collect();
    assert_eq!(
        summary,
        [("retried", Some("SlowDown"), 1), ("stored", None, 2)]
    );
    assert_eq!(proxy.puts_failed(), 3);
    assert_eq!(object_count(&s3, &bucket).await, Some(1), "delivered once");
    finish(supervisor, &channel, &topology).await;
}

/// An uploader delivering `acme`'s jobs to `bucket` through a fault proxy, with one job queued.
struct ProxiedDelivery {
    proxy: FaultProxy,
    supervisor: Supervisor,
    _connection: lapin::Connection,
    channel: lapin::Channel,
    topology: UploadTopology,
    job: common::job::UploadJob,
}

impl ProxiedDelivery {
    async fn start(bucket: &str, faults: Faults, first_offset: i64) -> Self {
        let proxy = FaultProxy::start(&moto_endpoint()).await;
        proxy.set(faults);
        let supervisor = Supervisor::new();
        let registry = registry(&[("acme", bucket)], &supervisor).await;
        let (connection, channel) = confirm_channel("uploader-test").await;
        let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_secs(60)]);
        topology.declare(&channel).await.expect("declare");
        start_uploader(aws_args(&proxy.url()), registry, &topology, &supervisor).await;
        let job = upload_job("acme", first_offset, &payload("acme"));
        enqueue_job(&channel, &topology, &job, &payload(job.tenant_id.as_str())).await;
        Self {
            proxy,
            supervisor,
            _connection: connection,
            channel,
            topology,
            job,
        }
    }

    async fn first_dead_letter(&self) -> uploader::dlq::DeadJob {
        wait_for(
            "the job in the dead-letter queue",
            Duration::from_secs(30),
            || async {
                let jobs = uploader::dlq::list(&self.channel, &self.topology, None)
                    .await
                    .expect("list");
                jobs.into_iter().next()
            },
        )
        .await
    }

    async fn finish(self) {
        finish(self.supervisor, &self.channel, &self.topology).await;
    }
}

#[tokio::test]
async fn a_refused_assume_role_is_dead_lettered_as_configuration_and_redrivable() {
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let bucket = new_bucket(&s3).await;
    let delivery = ProxiedDelivery::start(
        &bucket,
        Faults {
            deny_assume_role: true,
            ..Faults::default()
        },
        41,
    )
    .await;

    let dead = delivery.first_dead_letter().await;
    assert_eq!(
        (dead.class.as_str(), dead.code.as_str()),
        ("configuration", "AccessDenied")
    );
    assert!(dead.message.contains("sts:AssumeRole"), "{dead:?}");

    delivery.proxy.set(Faults::default());
    let summary = uploader::dlq::redrive(&delivery.channel, &delivery.topology, None, None)
        .await
        .expect("redrive");
    assert_eq!(summary.redriven.len(), 1);
    let key = format!("audit/{}", delivery.job.relative_key);
    wait_for_object(&s3, &bucket, &key, Duration::from_secs(30)).await;
    delivery.finish().await;
}

#[tokio::test]
async fn a_bucket_owned_by_another_account_gets_nothing_and_the_job_is_dead_lettered() {
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    // The customer deleted their bucket and another account created one of the same name.
    let bucket = new_bucket(&s3).await;
    let delivery = ProxiedDelivery::start(
        &bucket,
        Faults {
            bucket_owners: vec![(bucket.clone(), "999999999999".to_owned())],
            ..Faults::default()
        },
        43,
    )
    .await;

    let dead = delivery.first_dead_letter().await;
    assert_eq!(
        (dead.class.as_str(), dead.code.as_str()),
        ("configuration", "AccessDenied"),
        "{dead:?}"
    );
    let stored = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .expect("list the bucket");
    assert_eq!(
        stored.key_count(),
        Some(0),
        "nothing lands in the foreign bucket"
    );
    delivery.finish().await;
}

#[tokio::test]
async fn a_job_whose_events_belong_to_another_tenant_never_reaches_any_bucket() {
    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let acme_bucket = new_bucket(&s3).await;
    let globex_bucket = new_bucket(&s3).await;
    let supervisor = Supervisor::new();
    let registry = registry(
        &[("acme", &acme_bucket), ("globex", &globex_bucket)],
        &supervisor,
    )
    .await;
    let (_connection, channel) = confirm_channel("uploader-test").await;
    let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_secs(60)]);
    topology.declare(&channel).await.expect("declare");
    start_uploader(aws_args(&moto_endpoint()), registry, &topology, &supervisor).await;

    let foreign = payload("globex");
    let job = upload_job("acme", 3, &foreign);
    enqueue_job(&channel, &topology, &job, &foreign).await;
    let dead = wait_for("the job in the DLQ", Duration::from_secs(30), || async {
        channel
            .basic_get(
                topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("get")
    })
    .await;
    let headers = dead
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    assert_eq!(
        header_text(&headers, failure_header::CODE).as_deref(),
        Some("TenantMismatch")
    );
    assert_eq!(
        header_text(&headers, failure_header::CLASS).as_deref(),
        Some("invalid_job")
    );
    assert_eq!(object_count(&s3, &acme_bucket).await, Some(0));
    assert_eq!(object_count(&s3, &globex_bucket).await, Some(0));
    finish(supervisor, &channel, &topology).await;
}

#[tokio::test]
async fn a_key_holding_a_different_object_is_never_counted_as_delivered_and_the_job_lands_beside_it()
 {
    let config = aws_config(&moto_endpoint()).await;
    let s3 = s3_client(&config);
    let bucket = new_bucket(&s3).await;
    let supervisor = Supervisor::new();
    let registry = registry(&[("acme", &bucket)], &supervisor).await;
    let (_connection, channel) = confirm_channel("uploader-test").await;
    let topology = UploadTopology::new(&unique("uploads"), &[Duration::from_secs(60)]);
    topology.declare(&channel).await.expect("declare");
    let deliveries =
        start_uploader(aws_args(&moto_endpoint()), registry, &topology, &supervisor).await;

    // The job's key already holds other bytes (a batcher whose object-shaping settings changed
    // rebuilt the part differently, or something else wrote there).
    let body = payload("acme");
    let job = upload_job("acme", 51, &body);
    let key = format!("audit/{}", job.relative_key);
    let other = b"{\"id\":\"x\",\"tenant_id\":\"acme\",\"type\":\"other\"}\n".to_vec();
    s3.put_object()
        .bucket(&bucket)
        .key(&key)
        .body(other.clone().into())
        .send()
        .await
        .expect("put the other object");
    // Another job's key already holds the very same bytes: an earlier delivery of it.
    let delivered = upload_job("acme", 52, &body);
    let delivered_key = format!("audit/{}", delivered.relative_key);
    s3.put_object()
        .bucket(&bucket)
        .key(&delivered_key)
        .body(body.clone().into())
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .send()
        .await
        .expect("put the earlier delivery");
    // Delivered twice: a redelivery of a diverged job finds its own object beside the key.
    enqueue_job(&channel, &topology, &job, &body).await;
    enqueue_job(&channel, &topology, &job, &body).await;
    enqueue_job(&channel, &topology, &delivered, &body).await;

    let records = read_records(&deliveries, 3).await;
    let sha256 = <[u8; 32]>::try_from(hex::decode(&job.sha256_hex).expect("hex")).expect("32");
    let diverged = common::s3::diverged_key(&key, &sha256);
    let summary: Vec<_> = records
        .iter()
        .map(|r| (r.outcome.as_str(), r.key.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            ("diverged", Some(diverged.as_str())),
            ("diverged", Some(diverged.as_str())),
            ("already_there", Some(delivered_key.as_str())),
        ]
    );
    let read = |key: String| {
        let s3 = s3.clone();
        let bucket = bucket.clone();
        async move {
            let object = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("get");
            object.body.collect().await.expect("body").to_vec()
        }
    };
    assert_eq!(read(key).await, other, "the key's object is untouched");
    assert_eq!(read(diverged).await, body, "the job's object is beside it");
    assert_eq!(object_count(&s3, &bucket).await, Some(3));
    finish(supervisor, &channel, &topology).await;
}
