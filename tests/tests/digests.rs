//! Signed digests made by the pipeline itself, on a compressed time scale (2 s windows, 3 s
//! digest periods, 1 s grace): the real binaries on Kafka, RabbitMQ and the local S3/STS, two
//! tenants, events posted all along, the batcher (which builds the digests) SIGKILLed just after
//! periods close. The customer's verifier then finds every tenant's chain intact: every period
//! has its digest, every object is listed with its checksum, and a digest rebuilt after a kill
//! is byte for byte the one already stored (a different one would have gone under an alternate
//! `.diverged-` key, and the chain would not link).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_s3::Client;
use common::delivery::{DeliveryRecord, Outcome};
use common::digest::signing::PublicKeys;
use common::digest::{Digest, reason};
use common::job::JobKind;
use integration_tests::digests::{batcher_flags, keys_file, new_key, published, verify};
use integration_tests::e2e::{Deployment, rng, seed};
use integration_tests::fixtures::{aws_config, moto_endpoint, new_bucket, s3_client};
use integration_tests::pipeline::{Pipeline, in_zstd};
use integration_tests::plan::Shape;
use reqwest::StatusCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const PERIOD_MS: i64 = 3_000;
const GRACE_MS: i64 = 1_000;
const PREFIX: &str = "audit";

/// Every digest in `bucket` for `tenant`, opened with `keys`, by key.
async fn digests(
    s3: &Client,
    bucket: &str,
    tenant: &str,
    keys: &PublicKeys,
) -> Vec<(String, Digest)> {
    let listed = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(format!("{PREFIX}/{tenant}/digests/"))
        .send()
        .await
        .expect("list digests");
    let mut found = Vec::new();
    for object in listed.contents() {
        let key = object.key().expect("a key").to_owned();
        let body = s3
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .expect("get a digest")
            .body
            .collect()
            .await
            .expect("read a digest")
            .into_bytes();
        let mut file = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut file)
            .expect("a gzip digest");
        let (digest, _) = keys
            .open(&file)
            .expect("a digest signed by the vendor's key");
        found.push((key, digest));
    }
    found
}

/// The outcomes the deliveries topic records for each digest, by full key.
async fn digest_outcomes(deployment: &Deployment) -> BTreeMap<String, BTreeSet<&'static str>> {
    let records = integration_tests::kafka::read_all(
        &deployment.plan.shape.brokers,
        &deployment.plan.topics.deliveries,
        Duration::from_secs(60),
    )
    .await;
    let mut outcomes: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for record in records {
        let Ok(delivery) = serde_json::from_str::<DeliveryRecord>(&record.value) else {
            continue;
        };
        let seen = delivery
            .outcome
            .is_stored()
            .then(|| delivery.outcome.as_str());
        if let (JobKind::Digest, Some(seen)) = (delivery.kind, seen) {
            // Keyed by the digest's own key, also for one stored under an alternate key.
            let key = common::key::full_key(PREFIX, &delivery.relative_key);
            outcomes.entry(key).or_default().insert(seen);
        }
    }
    outcomes
}

fn at(raw: &str) -> OffsetDateTime {
    OffsetDateTime::parse(raw, &Rfc3339).expect("an RFC 3339 time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_made_through_batcher_kills_verify_intact_for_every_tenant() {
    let dir = std::env::temp_dir().join(integration_tests::unique("digests"));
    std::fs::create_dir_all(&dir).expect("directory");
    let (key, key_path) = new_key(&dir, "vendor");
    let keys_path = keys_file(&dir, &key);
    let keys = PublicKeys::new(vec![published(&key)]).expect("keys");

    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let mut shape = Shape::new(1, 1);
    shape.batcher_flags.extend(batcher_flags(
        &key_path,
        &format!("{PERIOD_MS}ms"),
        &format!("{GRACE_MS}ms"),
    ));
    let mut deployment = Deployment::start(&s3, &moto_endpoint(), 2, shape).await;
    let seed = seed();
    let mut rng = rng(seed);
    let producer = deployment.produce(seed);

    // Kill the builder twice just after a period closed: the digests it had queued are made
    // again from the last checkpoint.
    for _ in 0..2 {
        let now = common::clock::now_unix_ms();
        let closes = (now / PERIOD_MS + 2) * PERIOD_MS + GRACE_MS;
        let jitter = rand::Rng::random_range(&mut rng, 0..400);
        tokio::time::sleep(Duration::from_millis(
            (closes - now + jitter).unsigned_abs(),
        ))
        .await;
        deployment.batchers[0] = deployment.plan.spawn_batcher();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acknowledged = producer.finish().await;

    let verdict = integration_tests::wait_for(
        "every event delivered",
        Duration::from_secs(120),
        || async {
            let verdict = deployment.check(&s3, &acknowledged).await;
            verdict.lost.is_empty().then_some(verdict)
        },
    )
    .await;
    assert!(
        verdict.acknowledged > 0 && verdict.foreign.is_empty() && verdict.bad_objects.is_empty(),
        "{verdict:?}"
    );

    // Every object is stored, and its delivery record written within seconds: the digests of
    // the periods from a little later on close a chain that lists them all.
    let recorded_by = common::clock::now_unix_ms() + 5_000;
    let mut stored = Vec::new();
    for (tenant, bucket) in &deployment.tenants {
        let (found, first, last) = integration_tests::wait_for(
            &format!("{tenant}'s digests up to after the last delivery"),
            Duration::from_secs(120),
            || async {
                let found = digests(&s3, bucket, tenant, &keys).await;
                let first = found.iter().map(|(_, d)| at(&d.period_start)).min()?;
                let last = found.iter().map(|(_, d)| at(&d.period_end)).max()?;
                let periods = (last - first).whole_milliseconds() / i128::from(PERIOD_MS);
                // Digests are uploaded concurrently: wait until no period in between lacks one.
                let covered: std::collections::BTreeSet<&str> =
                    found.iter().map(|(_, d)| d.period_start.as_str()).collect();
                let complete = covered.len() as i128 == periods;
                (complete
                    && (last.unix_timestamp_nanos() / 1_000_000) as i64 > recorded_by + PERIOD_MS)
                    .then_some((found, first, last))
            },
        )
        .await;
        assert!(
            found.iter().all(|(key, _)| !key.contains(".diverged-")),
            "a rebuilt digest differed from the stored one: {:?}",
            found.iter().map(|(key, _)| key).collect::<Vec<_>>()
        );
        let listed: usize = found.iter().map(|(_, d)| d.objects.len()).sum();
        assert!(listed > 0, "the digests list the tenant's objects");

        let (code, output) = verify(bucket, PREFIX, tenant, (first, last), &keys_path);
        assert_eq!(code, 0, "{tenant}: {output}");
        assert!(output.contains(": intact"), "{output}");
        println!(
            "{tenant}: {} digests, {listed} objects listed: {}",
            found.len(),
            output.trim()
        );
        stored.extend(found.into_iter().map(|(key, _)| key));
    }

    let rebuild_group = integration_tests::unique("digests-rebuild");
    let rebuilder = deployment
        .plan
        .spawn_batcher_with(&["--digest-group", &rebuild_group]);
    deployment.batchers.push(rebuilder);
    let outcomes = integration_tests::wait_for(
        "every stored digest made again and found already stored",
        Duration::from_secs(120),
        || async {
            let outcomes = digest_outcomes(&deployment).await;
            stored
                .iter()
                .all(|key| {
                    outcomes
                        .get(key)
                        .is_some_and(|seen| seen.contains(Outcome::AlreadyThere.as_str()))
                })
                .then_some(outcomes)
        },
    )
    .await;
    let diverged: Vec<&String> = outcomes
        .iter()
        .filter(|(_, seen)| seen.contains(Outcome::Diverged.as_str()))
        .map(|(key, _)| key)
        .collect();
    assert!(diverged.is_empty(), "rebuilt digests differ: {diverged:?}");
    println!(
        "{} digests rebuilt by a new group, each already stored byte for byte",
        stored.len()
    );
    deployment.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Delivery turned off for a while: the digest of the period it went off in ends the chain
/// (`chain_end: disabled`), no digest covers the periods it stayed off, and the first period it
/// is on again starts a new chain (`chain_start: enabled`); the verifier finds the whole range
/// intact across the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_ends_the_chain_and_enabling_starts_a_new_one() {
    let dir = std::env::temp_dir().join(integration_tests::unique("digests"));
    std::fs::create_dir_all(&dir).expect("directory");
    let (key, key_path) = new_key(&dir, "vendor");
    let keys_path = keys_file(&dir, &key);
    let keys = PublicKeys::new(vec![published(&key)]).expect("keys");
    let digest_flags = batcher_flags(
        &key_path,
        &format!("{PERIOD_MS}ms"),
        &format!("{GRACE_MS}ms"),
    );
    let digest_flags: Vec<&str> = digest_flags.iter().map(String::as_str).collect();
    let moto = moto_endpoint();
    let shape = Shape::single().with_batcher_flags(&digest_flags);
    let pipeline = Pipeline::start(&moto, shape).await;
    let s3 = s3_client(&aws_config(&moto).await);
    let bucket = new_bucket(&s3).await;
    let mut settings = in_zstd(pipeline.admin.provisioned_settings("acme", &bucket).await);
    let (status, answer) = pipeline.admin.put("acme", &settings).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    pipeline.post("acme", "before", 3).await;
    let chain_of = |found: &[(String, Digest)]| -> Vec<(String, Option<String>, Option<String>)> {
        let mut chain: Vec<_> = found
            .iter()
            .map(|(_, d)| {
                (
                    d.period_start.clone(),
                    d.chain_start.clone(),
                    d.chain_end.clone(),
                )
            })
            .collect();
        chain.sort();
        chain
    };
    integration_tests::wait_for("a first digest", Duration::from_secs(60), || async {
        (!digests(&s3, &bucket, "acme", &keys).await.is_empty()).then_some(())
    })
    .await;

    settings["enabled"] = serde_json::json!(false);
    let (status, answer) = pipeline.admin.put("acme", &settings).await;
    assert_eq!(status, StatusCode::OK, "disable: {answer}");
    // Off for more than two whole periods.
    tokio::time::sleep(Duration::from_millis((3 * PERIOD_MS).unsigned_abs())).await;
    settings["enabled"] = serde_json::json!(true);
    let (status, answer) = pipeline.admin.put("acme", &settings).await;
    assert_eq!(status, StatusCode::OK, "enable: {answer}");
    pipeline.post("acme", "after", 3).await;

    let found = integration_tests::wait_for(
        "the new chain's second digest",
        Duration::from_secs(90),
        || async {
            let found = digests(&s3, &bucket, "acme", &keys).await;
            let chain = chain_of(&found);
            let restart = chain
                .iter()
                .position(|(_, start, _)| start.as_deref() == Some(reason::ENABLED))?;
            (chain.len() > restart + 1).then_some(found)
        },
    )
    .await;
    let chain = chain_of(&found);
    let ended = chain
        .iter()
        .position(|(_, _, end)| end.as_deref() == Some(reason::DISABLED))
        .unwrap_or_else(|| panic!("no digest ends the chain when delivery is disabled: {chain:?}"));
    let (restart_start, restart_reason, _) = &chain[ended + 1];
    assert_eq!(
        restart_reason.as_deref(),
        Some(reason::ENABLED),
        "{chain:?}"
    );
    let gap = at(restart_start) - at(&chain[ended].0);
    assert!(
        gap.whole_milliseconds() >= i128::from(2 * PERIOD_MS),
        "no digest covers the periods delivery was off: {chain:?}"
    );
    assert_eq!(
        chain[..ended]
            .iter()
            .chain(&chain[ended + 1..])
            .filter(|(_, start, _)| start.is_some())
            .count(),
        2,
        "two chains, each started once: {chain:?}"
    );

    let first = at(&chain[0].0);
    let last = found
        .iter()
        .map(|(_, d)| at(&d.period_end))
        .max()
        .expect("digests");
    let (code, output) = verify(&bucket, PREFIX, "acme", (first, last), &keys_path);
    assert_eq!(code, 0, "{output}");
    println!("{chain:?}\n{}", output.trim());
    pipeline.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
