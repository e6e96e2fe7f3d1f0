//! `activity-logs-verify`: a customer checks the activity logs delivered into their own bucket
//! against the signed digests delivered beside them, with their own AWS credentials (the SDK's
//! standard chain) and the vendor's published public keys.
//!
//!   activity-logs-verify --bucket B --prefix P --tenant T --from 2026-11-30T00:00:00Z \
//!     [--to 2026-12-01T00:00:00Z] --public-keys keys.json
//!
//! It walks the chain of digests whose periods start in `[from, to)`, checks each signature,
//! recomputes the SHA-256 of every object they list, and looks for objects in the tenant's
//! folders for those hours that no digest lists. Each problem is printed on a line of its own;
//! the exit status is 0 only when everything is intact (1: problems found, 2: could not check).

mod bucket;

use std::path::PathBuf;
use std::process::ExitCode;

use bucket::Later;
use clap::Parser;
use common::digest::check::{DigestFile, Finding, check};
use common::digest::signing::{PublicKeys, PublishedKey};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Parser)]
#[command(name = "activity-logs-verify", about, long_about = None)]
struct Args {
    /// The bucket the logs are delivered to.
    #[arg(long)]
    bucket: String,
    /// The destination prefix set for the integration (empty when none).
    #[arg(long, default_value = "")]
    prefix: String,
    /// The tenant whose logs to check.
    #[arg(long)]
    tenant: String,
    /// Check digests whose period starts at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    from: OffsetDateTime,
    /// And before this time (RFC 3339); default now.
    #[arg(long, value_parser = parse_time)]
    to: Option<OffsetDateTime>,
    /// The vendor's public keys: the admin API's `GET /v1/digest-keys` answer, saved as is.
    #[arg(long)]
    public_keys: PathBuf,
    /// The bucket's region, an S3-compatible endpoint, a CA to trust: the services' own AWS
    /// settings, read from the same flags and `ACTIVITY_AWS_*` variables.
    #[command(flatten)]
    aws: common::aws::AwsArgs,
}

fn parse_time(raw: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(raw, &Rfc3339)
        .map_err(|error| format!("{raw:?} is not an RFC 3339 time ({error})"))
}

/// The admin API's answer listing the keys.
#[derive(serde::Deserialize)]
struct KeysFile {
    keys: Vec<PublishedKey>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("activity-logs-verify: {error}");
            ExitCode::from(2)
        }
    }
}

/// The length of the digests' periods (an hour when there is no digest to tell).
fn period_length(keys: &PublicKeys, digests: &[DigestFile]) -> time::Duration {
    digests
        .iter()
        .filter_map(|(_, file)| keys.open(file).ok())
        .find_map(|(digest, _)| {
            let start = OffsetDateTime::parse(&digest.period_start, &Rfc3339).ok()?;
            let end = OffsetDateTime::parse(&digest.period_end, &Rfc3339).ok()?;
            (end > start).then_some(end - start)
        })
        .unwrap_or(time::Duration::HOUR)
}

/// Whether everything checked is intact.
async fn run(args: &Args) -> Result<bool, String> {
    let keys_text = std::fs::read_to_string(&args.public_keys)
        .map_err(|error| format!("cannot read {}: {error}", args.public_keys.display()))?;
    let file: KeysFile = serde_json::from_str(&keys_text).map_err(|error| {
        format!(
            "{} is not the list of public keys ({error})",
            args.public_keys.display()
        )
    })?;
    let keys = PublicKeys::new(file.keys)?;
    let tenant = common::event::TenantId::parse(&args.tenant)
        .map_err(|error| format!("--tenant: {error}"))?;
    let to = args.to.unwrap_or_else(OffsetDateTime::now_utc);
    if to <= args.from {
        return Err("--to must be after --from".into());
    }
    let bucket = bucket::Bucket::new(args).await;
    let digests = bucket.digests(&tenant, args.from, to).await?;
    let found = bucket
        .objects(&tenant, (args.from, to), &keys, &digests)
        .await?;
    let mut report = check(&keys, &digests, &found.checksums, |start| {
        common::key::full_key(&args.prefix, &common::digest::relative_key(&tenant, start))
    });
    // An object of the range's hours that the range's digests do not list may have been stored
    // later (a late or replayed window): the digests of when it was stored decide.
    let period = period_length(&keys, &digests);
    let mut pending = Vec::new();
    let mut findings = Vec::new();
    let mut seen = bucket::LaterDigests::default();
    for finding in std::mem::take(&mut report.findings) {
        let Finding::ObjectNotListed { key } = &finding else {
            findings.push(finding);
            continue;
        };
        let Some(stored_at) = found.stored_at.get(key) else {
            findings.push(finding);
            continue;
        };
        match bucket
            .listed_later(&mut seen, &tenant, key, *stored_at, period, &keys)
            .await?
        {
            Later::Listed => {}
            Later::NotListed => findings.push(finding),
            Later::Pending => pending.push(key.clone()),
        }
    }
    report.findings = findings;
    for finding in &report.findings {
        println!("{finding}");
    }
    for key in &pending {
        println!(
            "object {key} was stored after the latest digest: run again once its period's digest is delivered"
        );
    }
    let verdict = if report.intact() {
        "intact"
    } else {
        "NOT intact"
    };
    println!(
        "{} digests and {} objects checked for tenant {} from {} to {}: {verdict} ({} problems)",
        report.digests,
        report.objects,
        tenant,
        common::digest::timestamp(args.from),
        common::digest::timestamp(to),
        report.findings.len()
    );
    Ok(report.intact())
}
