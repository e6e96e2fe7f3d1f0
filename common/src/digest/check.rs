//! Checking a tenant's digests against what its bucket holds: every digest's signature, the
//! chain from one digest to the next, and every listed object's SHA-256. Pure: the verifier
//! command reads the bucket and hands the files and checksums in.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Digest;
use super::signing::PublicKeys;

/// A digest file: its full key and its uncompressed bytes.
pub type DigestFile = (String, Vec<u8>);

/// Objects found: full key and the SHA-256 of their bytes, lowercase hex.
pub type Checksums = BTreeMap<String, String>;

/// One thing wrong, naming the object or digest it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// A digest file that cannot be trusted: unreadable, badly signed, unknown key.
    DigestUntrusted { key: String, reason: String },
    /// A digest the chain points to, or a period between two digests, has no digest.
    DigestMissing { key: String },
    /// Two consecutive digests do not link: the later one names another previous digest or
    /// signature, or a chain starts again without the previous one having ended.
    ChainBroken { key: String, reason: String },
    /// A listed object is not in the bucket.
    ObjectMissing { key: String, digest: String },
    /// A listed object's bytes are not the ones delivered.
    ObjectAltered {
        key: String,
        digest: String,
        listed: String,
        found: String,
    },
    /// An object in the tenant's folder that no digest lists.
    ObjectNotListed { key: String },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DigestUntrusted { key, reason } => write!(f, "digest {key} {reason}"),
            Self::DigestMissing { key } => write!(f, "digest {key} is missing"),
            Self::ChainBroken { key, reason } => write!(f, "chain broken at {key}: {reason}"),
            Self::ObjectMissing { key, digest } => {
                write!(f, "object {key} is missing (listed in {digest})")
            }
            Self::ObjectAltered {
                key,
                digest,
                listed,
                found,
            } => write!(
                f,
                "object {key} was altered: its SHA-256 is {found}, {digest} lists {listed}"
            ),
            Self::ObjectNotListed { key } => write!(f, "object {key} is not listed in any digest"),
        }
    }
}

/// What a check covered and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub digests: usize,
    pub objects: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.findings.is_empty()
    }
}

/// A digest that opened, with where it was and its signature.
struct Opened {
    key: String,
    digest: Digest,
    signature: String,
    start: OffsetDateTime,
    end: OffsetDateTime,
}

/// Checks `digests` (full key and uncompressed file) and `objects` (full key and the SHA-256 of
/// the bytes found, lowercase hex: every object of the tenant the caller expects a digest to
/// list). `digest_key` names the digest of a period from its start, for periods the chain skips.
pub fn check(
    keys: &PublicKeys,
    digests: &[DigestFile],
    objects: &Checksums,
    digest_key: impl Fn(OffsetDateTime) -> String,
) -> Report {
    let mut findings = Vec::new();
    let mut opened: Vec<Opened> = digests
        .iter()
        .filter_map(|(key, file)| match open(keys, key, file) {
            Ok(opened) => Some(opened),
            Err(reason) => {
                findings.push(Finding::DigestUntrusted {
                    key: key.clone(),
                    reason,
                });
                None
            }
        })
        .collect();
    opened.sort_by_key(|digest| digest.start);
    for pair in opened.windows(2) {
        check_link(&pair[0], &pair[1], &digest_key, &mut findings);
    }
    let mut listed = BTreeSet::new();
    for digest in &opened {
        for object in &digest.digest.objects {
            listed.insert(object.key.as_str());
            match objects.get(&object.key) {
                None => findings.push(Finding::ObjectMissing {
                    key: object.key.clone(),
                    digest: digest.key.clone(),
                }),
                Some(found) if *found != object.sha256 => findings.push(Finding::ObjectAltered {
                    key: object.key.clone(),
                    digest: digest.key.clone(),
                    listed: object.sha256.clone(),
                    found: found.clone(),
                }),
                Some(_) => {}
            }
        }
    }
    findings.extend(
        objects
            .keys()
            .filter(|key| !listed.contains(key.as_str()))
            .map(|key| Finding::ObjectNotListed { key: key.clone() }),
    );
    Report {
        digests: opened.len(),
        objects: listed.len(),
        findings,
    }
}

fn open(keys: &PublicKeys, key: &str, file: &[u8]) -> Result<Opened, String> {
    let (digest, line) = keys.open(file)?;
    let parse = |raw: &str| {
        OffsetDateTime::parse(raw, &Rfc3339)
            .map_err(|_| format!("has an unreadable period {raw:?}"))
    };
    let (start, end) = (parse(&digest.period_start)?, parse(&digest.period_end)?);
    if end <= start {
        return Err("has a period that ends before it starts".into());
    }
    Ok(Opened {
        key: key.to_owned(),
        digest,
        signature: line.signature,
        start,
        end,
    })
}

/// Whether `later` follows `earlier` in one chain, or a new chain starts after `earlier` ended.
fn check_link(
    earlier: &Opened,
    later: &Opened,
    digest_key: &impl Fn(OffsetDateTime) -> String,
    findings: &mut Vec<Finding>,
) {
    let broken = |reason: String| Finding::ChainBroken {
        key: later.key.clone(),
        reason,
    };
    match (&later.digest.previous, &earlier.digest.chain_end) {
        (None, Some(_)) => {}
        (None, None) => findings.push(broken(format!(
            "a new chain starts ({}) though {} did not end its chain",
            later
                .digest
                .chain_start
                .as_deref()
                .unwrap_or("no reason given"),
            earlier.key
        ))),
        (Some(_), Some(ended)) => findings.push(broken(format!(
            "it continues the chain {} ended ({ended})",
            earlier.key
        ))),
        (Some(link), None) if later.start == earlier.end => {
            if link.key != earlier.key {
                findings.push(broken(format!(
                    "it names {} as the previous digest, not {}",
                    link.key, earlier.key
                )));
            } else if link.signature != earlier.signature {
                findings.push(broken(format!(
                    "the previous digest's signature it records is not {}'s",
                    earlier.key
                )));
            }
        }
        (Some(link), None) => {
            // Periods without a digest between the two: each is missing (the link names the
            // last of them, which was there when this digest was made).
            let length = earlier.end - earlier.start;
            let mut start = earlier.end;
            while start < later.start {
                findings.push(Finding::DigestMissing {
                    key: digest_key(start),
                });
                start += length;
            }
            if !findings
                .iter()
                .any(|f| matches!(f, Finding::DigestMissing { key } if *key == link.key))
            {
                findings.push(broken(format!(
                    "it names {} as the previous digest, which is not the period before it",
                    link.key
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::signing::SigningKey;
    use crate::digest::signing::tests::{published, test_key};
    use crate::digest::{Chain, DigestedObject, Link, reason, timestamp};
    use time::macros::datetime;

    const HOUR: time::Duration = time::Duration::HOUR;

    fn digest_key(start: OffsetDateTime) -> String {
        format!("audit/acme/digests/{}", timestamp(start))
    }

    fn object_key(hour: i32, n: usize) -> String {
        format!("audit/acme/h{hour}-{n}.jsonl.zst")
    }

    fn sha(seed: &str) -> String {
        crate::digest::sha256_hex(seed.as_bytes())
    }

    /// `hours` hourly digests of one chain, each listing two objects, and the bucket's objects.
    fn day(key: &SigningKey, hours: i32) -> (Vec<DigestFile>, Checksums) {
        let start = datetime!(2026-11-30 0:00 UTC);
        let mut chain = Chain::start("acme", reason::CONNECTED);
        let mut files = Vec::new();
        let mut objects = BTreeMap::new();
        for hour in 0..hours {
            let period = start + HOUR * hour;
            let listed: Vec<DigestedObject> = (0..2)
                .map(|n| {
                    let object = object_key(hour, n);
                    objects.insert(object.clone(), sha(&object));
                    DigestedObject {
                        sha256: sha(&object),
                        key: object,
                        bytes: 10,
                        event_count: 1,
                        window_start: timestamp(period),
                        window_end: timestamp(period + HOUR),
                        partition: 0,
                        first_offset: i64::from(hour),
                        last_offset: i64::from(hour),
                    }
                })
                .collect();
            let (_, file) = chain
                .sign_next(
                    key,
                    &digest_key(period),
                    (period, period + HOUR),
                    listed,
                    None,
                )
                .expect("sign");
            files.push((digest_key(period), file));
        }
        (files, objects)
    }

    fn run(key: &SigningKey, files: &[DigestFile], objects: &Checksums) -> Report {
        let keys = PublicKeys::new(vec![published(key)]).expect("keys");
        check(&keys, files, objects, digest_key)
    }

    #[test]
    fn an_untouched_day_is_intact() {
        let key = test_key();
        let (files, objects) = day(&key, 24);
        let report = run(&key, &files, &objects);
        assert!(report.intact(), "{:?}", report.findings);
        assert_eq!((report.digests, report.objects), (24, 48));
    }

    #[test]
    fn each_tampering_is_named() {
        let key = test_key();
        let (files, objects) = day(&key, 6);
        let mut cases: Vec<(&str, Vec<DigestFile>, Checksums, Finding)> = Vec::new();

        let mut deleted = objects.clone();
        deleted.remove(&object_key(2, 1));
        cases.push((
            "an object deleted",
            files.clone(),
            deleted,
            Finding::ObjectMissing {
                key: object_key(2, 1),
                digest: files[2].0.clone(),
            },
        ));

        let mut altered = objects.clone();
        altered.insert(object_key(3, 0), sha("other bytes"));
        cases.push((
            "an object overwritten",
            files.clone(),
            altered,
            Finding::ObjectAltered {
                key: object_key(3, 0),
                digest: files[3].0.clone(),
                listed: sha(&object_key(3, 0)),
                found: sha("other bytes"),
            },
        ));

        let mut extra = objects.clone();
        extra.insert("audit/acme/dropped-in.jsonl.zst".into(), sha("x"));
        cases.push((
            "an object dropped in",
            files.clone(),
            extra,
            Finding::ObjectNotListed {
                key: "audit/acme/dropped-in.jsonl.zst".into(),
            },
        ));

        let mut without = files.clone();
        without.remove(3);
        cases.push((
            "a digest deleted",
            without,
            objects.clone(),
            Finding::DigestMissing {
                key: files[3].0.clone(),
            },
        ));

        let mut changed = files.clone();
        let text = String::from_utf8(changed[1].1.clone()).expect("text");
        changed[1].1 = text
            .replacen("\"bytes\":10", "\"bytes\":11", 1)
            .into_bytes();
        cases.push((
            "a digest altered",
            changed,
            objects.clone(),
            Finding::DigestUntrusted {
                key: files[1].0.clone(),
                reason: format!(
                    "has a signature by key {} that does not match its content",
                    key.key_id()
                ),
            },
        ));

        for (what, files, objects, expected) in cases {
            let report = run(&key, &files, &objects);
            assert!(
                report.findings.contains(&expected),
                "{what}: expected {expected}, found {:?}",
                report.findings
            );
        }
    }

    #[test]
    fn a_chain_rewritten_from_the_middle_is_broken_and_another_key_is_not_trusted() {
        let key = test_key();
        let (mut files, objects) = day(&key, 4);
        // Digest 2 replaced by one that is signed correctly but links to a made-up digest.
        let keys = PublicKeys::new(vec![published(&key)]).expect("keys");
        let (mut forged, _) = keys.open(&files[2].1).expect("open");
        forged.previous = Some(Link {
            key: files[1].0.clone(),
            signature: "bm90IHRoZSBzaWduYXR1cmU=".into(),
        });
        files[2].1 = key.sign(&forged).expect("sign").0;
        let report = run(&key, &files, &objects);
        assert!(
            report.findings.iter().any(|f| matches!(
                f,
                Finding::ChainBroken { key, reason } if *key == files[2].0
                    && reason.contains("signature it records")
            )),
            "{:?}",
            report.findings
        );

        let other = SigningKey::from_pem(
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIDvSWDq3FGcQ1ZgZ9nn0vgG2yKc2c1Q0pW0wQ1ZJH3nN\n-----END PRIVATE KEY-----\n",
        )
        .expect("another key");
        let (by_other, _) = day(&other, 1);
        let report = run(&key, &by_other, &BTreeMap::new());
        assert!(
            matches!(&report.findings[0], Finding::DigestUntrusted { reason, .. } if reason.contains("not a published key")),
            "{:?}",
            report.findings
        );
    }

    #[test]
    fn a_chain_that_ends_and_starts_again_is_intact_but_a_silent_restart_is_not() {
        let key = test_key();
        let (mut files, objects) = day(&key, 4);
        let keys = PublicKeys::new(vec![published(&key)]).expect("keys");
        let (mut ending, _) = keys.open(&files[1].1).expect("open");
        ending.chain_end = Some(reason::DISABLED.into());
        files[1].1 = key.sign(&ending).expect("sign").0;
        let (mut restart, _) = keys.open(&files[3].1).expect("open");
        restart.previous = None;
        restart.chain_start = Some(reason::ENABLED.into());
        files[3].1 = key.sign(&restart).expect("sign").0;
        // Period 2 had no digest: delivery was disabled.
        files.remove(2);
        let report = run(&key, &files, &objects);
        assert_eq!(
            report.findings,
            [
                Finding::ObjectNotListed {
                    key: object_key(2, 0)
                },
                Finding::ObjectNotListed {
                    key: object_key(2, 1)
                },
            ],
            "only period 2's objects, which no digest covers"
        );

        let (mut files, objects) = day(&key, 3);
        let (mut silent, _) = keys.open(&files[2].1).expect("open");
        silent.previous = None;
        silent.chain_start = Some(reason::CONNECTED.into());
        files[2].1 = key.sign(&silent).expect("sign").0;
        let report = run(&key, &files, &objects);
        assert!(
            matches!(&report.findings[..], [Finding::ChainBroken { reason, .. }] if reason.contains("did not end its chain")),
            "{:?}",
            report.findings
        );
    }
}
