//! Watches customer buckets and prints every object as it arrives: key, size, event count,
//! window, and its first event decoded; for a signed digest, its period, how many objects it
//! lists and how it links to the chain. Used by `scripts/demo.sh`.
//!
//!   show-deliveries --endpoint http://127.0.0.1:5000 --bucket A --bucket B \
//!     [--until-objects N] [--until-digests M]
//!
//! With `--until-objects N` (and `--until-digests M`) it exits 0 once every bucket holds N log
//! objects (and M digests), or 1 after `--timeout`; without, it watches until interrupted.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use common::codec::decompress;
use common::key::Codec;

#[derive(Parser)]
struct Args {
    /// The S3 endpoint (the local test server).
    #[arg(long)]
    endpoint: String,
    /// A bucket to watch; repeat for several.
    #[arg(long = "bucket", required = true)]
    buckets: Vec<String>,
    /// Exit once every bucket holds this many log objects (0: watch until interrupted).
    #[arg(long, default_value_t = 0)]
    until_objects: usize,
    /// And this many digests.
    #[arg(long, default_value_t = 0)]
    until_digests: usize,
    /// Give up after this long when waiting for objects.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = integration_tests::fixtures::aws_config(&args.endpoint).await;
    let s3 = integration_tests::fixtures::s3_client(&config);
    let started = Instant::now();
    let mut seen: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    let waiting = args.until_objects > 0 || args.until_digests > 0;
    loop {
        for bucket in &args.buckets {
            let listed = match s3.list_objects_v2().bucket(bucket).send().await {
                Ok(listed) => listed,
                Err(error) => {
                    eprintln!("show-deliveries: cannot list {bucket}: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let known = seen.entry(bucket.clone()).or_default();
            for object in listed.contents() {
                let Some(key) = object.key() else { continue };
                if known.insert(key.to_owned()) {
                    describe(&s3, bucket, key).await;
                }
            }
        }
        let enough = |bucket: &String| {
            let keys = seen.get(bucket);
            let count = |digests: bool| {
                keys.map_or(0, |keys| {
                    keys.iter().filter(|key| is_digest(key) == digests).count()
                })
            };
            count(false) >= args.until_objects && count(true) >= args.until_digests
        };
        if waiting && args.buckets.iter().all(enough) {
            return ExitCode::SUCCESS;
        }
        if waiting && started.elapsed() > args.timeout {
            eprintln!(
                "show-deliveries: fewer than {} object(s) and {} digest(s) per bucket after {:?}",
                args.until_objects, args.until_digests, args.timeout
            );
            return ExitCode::FAILURE;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn is_digest(key: &str) -> bool {
    common::digest::period_start_of_key(key).is_some()
}

async fn describe(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) {
    let object = match s3.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => object,
        Err(error) => {
            println!("s3://{bucket}/{key}: cannot read it: {error}");
            return;
        }
    };
    let metadata = object.metadata().cloned().unwrap_or_default();
    let field = |name: &str| metadata.get(name).cloned().unwrap_or_else(|| "?".into());
    let body = match object.body.collect().await {
        Ok(body) => body.into_bytes(),
        Err(error) => {
            println!("s3://{bucket}/{key}: cannot read it: {error}");
            return;
        }
    };
    let codec = if key.ends_with(".zst") {
        Codec::Zstd
    } else if key.ends_with(".gz") {
        Codec::Gzip
    } else {
        Codec::None
    };
    if is_digest(key) {
        println!("s3://{bucket}/{key}\n  {}", describe_digest(&body));
        return;
    }
    let sample = match decompress(codec, &body, 1 << 30) {
        Ok(raw) => {
            let first = raw.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = String::from_utf8_lossy(first);
            if line.chars().count() > 240 {
                format!("{} ...", line.chars().take(240).collect::<String>())
            } else {
                line.into_owned()
            }
        }
        Err(error) => format!("(does not decode: {error})"),
    };
    println!(
        "s3://{bucket}/{key}\n  {} bytes, {} events, window {} to {}\n  first event: {sample}",
        body.len(),
        field("event-count"),
        field("window-start"),
        field("window-end"),
    );
}

/// A digest's period, objects and place in its chain, from its signed line.
fn describe_digest(body: &[u8]) -> String {
    let Ok(raw) = decompress(Codec::Gzip, body, 1 << 30) else {
        return "a digest that does not decompress".into();
    };
    let first = raw.split(|b| *b == b'\n').next().unwrap_or_default();
    let Ok(digest) = serde_json::from_slice::<common::digest::Digest>(first) else {
        return "a digest that does not read".into();
    };
    let link = match (&digest.previous, &digest.chain_start) {
        (Some(previous), _) => format!("follows {}", previous.key),
        (None, Some(reason)) => format!("starts a chain ({reason})"),
        (None, None) => "starts a chain".into(),
    };
    format!(
        "signed digest of {} to {}: {} object(s), key {}, {link}{}",
        digest.period_start,
        digest.period_end,
        digest.objects.len(),
        digest.key_id,
        digest
            .chain_end
            .map(|reason| format!(", ends the chain ({reason})"))
            .unwrap_or_default()
    )
}
