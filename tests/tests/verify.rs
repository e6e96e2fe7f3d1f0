//! The verifier customers run (`activity-logs-verify`), against a bucket on the local S3 server
//! holding six hours of objects and their signed, chained digests: intact, it says so and exits
//! 0; each kind of tampering is named and makes it exit 1.

use std::io::Write;
use std::path::Path;

use aws_sdk_s3::primitives::ByteStream;
use common::digest::signing::SigningKey;
use common::digest::{Chain, Digest, DigestedObject, Link, reason, relative_key, timestamp};
use common::event::TenantId;
use common::key::full_key;
use integration_tests::digests::{keys_file, new_key};
use integration_tests::fixtures::{aws_config, moto_endpoint, new_bucket, s3_client};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const PREFIX: &str = "audit";
const HOURS: i32 = 6;
const DAY: OffsetDateTime = datetime!(2026-11-29 0:00 UTC);

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn tenant() -> TenantId {
    TenantId::parse("acme").expect("tenant")
}

fn object_key(hour: i32, n: i32) -> String {
    let key = common::key::ObjectKey {
        tenant_id: tenant(),
        window_start: DAY + Duration::HOUR * hour,
        partition: 0,
        first_offset: i64::from(hour * 10 + n),
        codec: common::key::Codec::Zstd,
    };
    full_key(PREFIX, &key.relative())
}

fn digest_key(hour: i32) -> String {
    full_key(
        PREFIX,
        &relative_key(&tenant(), DAY + Duration::HOUR * hour),
    )
}

/// The objects of `HOURS` hours and their digests, as the pipeline would leave them.
struct Delivered {
    objects: Vec<(String, Vec<u8>)>,
    digests: Vec<(String, Vec<u8>)>,
    digest_content: Vec<Digest>,
}

fn delivered(key: &SigningKey) -> Delivered {
    let mut chain = Chain::start("acme", reason::CONNECTED);
    let mut objects = Vec::new();
    let mut digests = Vec::new();
    let mut digest_content = Vec::new();
    for hour in 0..HOURS {
        let period = DAY + Duration::HOUR * hour;
        let mut listed = Vec::new();
        for n in 0..2 {
            let body = format!("{{\"id\":\"e{hour}-{n}\",\"tenant_id\":\"acme\"}}\n").into_bytes();
            listed.push(DigestedObject {
                key: object_key(hour, n),
                sha256: common::digest::sha256_hex(&body),
                bytes: body.len() as u64,
                event_count: 1,
                window_start: timestamp(period),
                window_end: timestamp(period + Duration::HOUR),
                partition: 0,
                first_offset: i64::from(hour * 10 + n),
                last_offset: i64::from(hour * 10 + n),
            });
            objects.push((object_key(hour, n), body));
        }
        let (digest, file) = chain
            .sign_next(
                key,
                &digest_key(hour),
                (period, period + Duration::HOUR),
                listed,
                None,
            )
            .expect("sign");
        digests.push((digest_key(hour), gzip(&file)));
        digest_content.push(digest);
    }
    Delivered {
        objects,
        digests,
        digest_content,
    }
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: &[u8]) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .expect("put");
}

async fn delete(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    s3.delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("delete");
}

/// Runs the verifier over the day's six hours.
fn verify(bucket: &str, keys_file: &Path) -> (i32, String) {
    integration_tests::digests::verify(
        bucket,
        PREFIX,
        "acme",
        (DAY, DAY + Duration::HOUR * HOURS),
        keys_file,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifier_finds_a_delivered_day_intact_and_names_each_tampering() {
    let dir = std::env::temp_dir().join(integration_tests::unique("verify"));
    std::fs::create_dir_all(&dir).expect("directory");
    let (key, _) = new_key(&dir, "vendor");
    let keys_file = keys_file(&dir, &key);

    let s3 = s3_client(&aws_config(&moto_endpoint()).await);
    let bucket = new_bucket(&s3).await;
    let day = delivered(&key);
    for (object, body) in day.objects.iter().chain(&day.digests) {
        put(&s3, &bucket, object, body).await;
    }

    let (code, output) = verify(&bucket, &keys_file);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("6 digests and 12 objects checked for tenant acme")
            && output.contains(": intact"),
        "{output}"
    );

    // Each tampering, undone before the next.
    let (object, body) = &day.objects[5];
    delete(&s3, &bucket, object).await;
    let (code, output) = verify(&bucket, &keys_file);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!(
            "object {object} is missing (listed in {})",
            digest_key(2)
        )),
        "{output}"
    );
    put(&s3, &bucket, object, body).await;

    put(&s3, &bucket, object, b"{\"id\":\"forged\"}\n").await;
    let (code, output) = verify(&bucket, &keys_file);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!("object {object} was altered")),
        "{output}"
    );
    put(&s3, &bucket, object, body).await;

    // An object slipped into an hour of the day now: the day's digests do not list it, and
    // until the digests of the hours it was stored in exist, it may yet be a late delivery.
    let extra = object_key(4, 7);
    put(&s3, &bucket, &extra, b"{}\n").await;
    let (code, output) = verify(&bucket, &keys_file);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains(&format!(
            "object {extra} was stored after the latest digest: run again"
        )),
        "{output}"
    );
    // The pipeline's digests of this hour and the next, which do not list it either.
    let this_hour = OffsetDateTime::now_utc()
        .replace_minute(0)
        .and_then(|t| t.replace_second(0))
        .and_then(|t| t.replace_nanosecond(0))
        .expect("the top of the hour");
    let mut now_chain = Chain::start("acme", reason::CONNECTED);
    for start in [this_hour, this_hour + Duration::HOUR] {
        let key_of_period = full_key(PREFIX, &relative_key(&tenant(), start));
        let (_, file) = now_chain
            .sign_next(
                &key,
                &key_of_period,
                (start, start + Duration::HOUR),
                Vec::new(),
                None,
            )
            .expect("sign");
        put(&s3, &bucket, &key_of_period, &gzip(&file)).await;
    }
    let (code, output) = verify(&bucket, &keys_file);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!("object {extra} is not listed in any digest")),
        "{output}"
    );
    delete(&s3, &bucket, &extra).await;

    let (digest, file) = &day.digests[3];
    delete(&s3, &bucket, digest).await;
    let (code, output) = verify(&bucket, &keys_file);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!("digest {digest} is missing")),
        "{output}"
    );
    put(&s3, &bucket, digest, file).await;

    // A digest edited after signing: one event more for one object.
    let (signed, _) = key.sign(&day.digest_content[3]).expect("sign");
    let edited = String::from_utf8(signed).expect("text").replacen(
        "\"event_count\":1",
        "\"event_count\":2",
        1,
    );
    put(&s3, &bucket, digest, &gzip(edited.as_bytes())).await;
    let (code, output) = verify(&bucket, &keys_file);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!(
            "digest {digest} has a signature by key {} that does not match its content",
            key.key_id()
        )),
        "{output}"
    );
    put(&s3, &bucket, digest, file).await;

    let mut relinked = day.digest_content[4].clone();
    relinked.previous = Some(Link {
        key: digest_key(3),
        signature: "bm90IHRoZSBzaWduYXR1cmU=".into(),
    });
    put(
        &s3,
        &bucket,
        &digest_key(4),
        &gzip(&key.sign(&relinked).expect("sign").0),
    )
    .await;
    let (code, output) = verify(&bucket, &keys_file);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!("chain broken at {}", digest_key(4))),
        "{output}"
    );
    put(&s3, &bucket, &digest_key(4), &day.digests[4].1).await;

    let (stranger, _) = new_key(&dir, "stranger");
    let mut foreign = day.digest_content[5].clone();
    foreign.key_id = stranger.key_id().into();
    put(
        &s3,
        &bucket,
        &digest_key(5),
        &gzip(&stranger.sign(&foreign).expect("sign").0),
    )
    .await;
    let (code, output) = verify(&bucket, &keys_file);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("which is not a published key"), "{output}");
    put(&s3, &bucket, &digest_key(5), &day.digests[5].1).await;

    let (code, output) = verify(&bucket, &keys_file);
    assert_eq!(code, 0, "everything undone: {output}");
    let _ = std::fs::remove_dir_all(&dir);
}
