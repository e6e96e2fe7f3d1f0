//! The digest builder's core: the records of one deliveries partition folded, one by one, into
//! each tenant's signed digests. Pure and deterministic: the same records from the same state
//! make the same digests, byte for byte (Ed25519 signatures are deterministic), so a builder
//! that restarts from a checkpoint, or a second builder, makes exactly what the first made.
//!
//! Time is what the records say (a delivery's `at_ms`, an integration change's, a clock
//! record's), never the builder's clock. A record belongs to the period of its time, or to the
//! first period still open if that one has closed; a period closes once a record of the
//! partition says `grace` has passed since its end. A closed period gets one digest for every
//! tenant whose delivery was on at any time in it, even with no objects, so a deleted hour
//! shows; a period in which delivery went off ends the tenant's chain, and the next period in
//! which it comes on starts a new one.

use std::collections::BTreeMap;

use common::digest::signing::SigningKey;
use common::digest::{Chain, DigestedObject, reason, relative_key};
use common::event::TenantId;
use common::key::full_key;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How time is cut into digest periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Periods {
    /// A period's length, aligned to the UTC epoch (an hour by default).
    pub length_ms: i64,
    /// How long after a period's end a delivery in it may still be recorded.
    pub grace_ms: i64,
}

impl Periods {
    fn start_of(&self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.length_ms) * self.length_ms
    }
}

/// One record of a deliveries partition, as digests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An object stored for `tenant` (a log object, stored or found already there).
    Stored {
        tenant: TenantId,
        /// The prefix the object went under, when its key shows it.
        prefix: Option<String>,
        object: DigestedObject,
        at_ms: i64,
    },
    /// The tenant's integration was saved (with its prefix) or deleted.
    Change {
        tenant: TenantId,
        active: bool,
        reason: String,
        prefix: Option<String>,
        at_ms: i64,
    },
    /// Time passing on the partition.
    Clock { at_ms: i64 },
}

impl Entry {
    fn at_ms(&self) -> i64 {
        match self {
            Self::Stored { at_ms, .. } | Self::Change { at_ms, .. } | Self::Clock { at_ms } => {
                *at_ms
            }
        }
    }
}

/// A signed digest, ready to be queued for upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedDigest {
    pub tenant: TenantId,
    /// The digest's key below the customer's prefix.
    pub relative_key: String,
    pub period_start_ms: i64,
    pub period_end_ms: i64,
    /// How many objects it lists.
    pub objects: u64,
    /// The digest file, uncompressed: the signed line and the signature line.
    pub file: Vec<u8>,
}

/// The digests of one deliveries partition in the making: what a checkpoint keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDigests {
    /// Start of the first period not closed yet; `None` before the first record.
    open_from_ms: Option<i64>,
    /// The latest time a record said.
    time_ms: i64,
    tenants: BTreeMap<TenantId, TenantDigests>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TenantDigests {
    /// Delivery is on, after the records applied so far.
    on: bool,
    /// Why an integration change turned delivery off, if one did (and none turned it on since):
    /// objects stored now (jobs that were in flight) are listed, but do not turn it on again.
    /// Kept, unlike a tenant never heard of, whose first object turns delivery on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    turned_off: Option<String>,
    /// Where the tenant's digests go (the destination prefix last seen).
    prefix: String,
    /// The open chain: delivery was on at the end of the last closed period.
    chain: Option<Chain>,
    /// What happened in each open period, by its start.
    periods: BTreeMap<i64, PeriodActivity>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PeriodActivity {
    objects: Vec<DigestedObject>,
    /// Why delivery came on in the period, the first time it did.
    came_on: Option<String>,
    /// Why delivery went off in the period, the last time it did.
    went_off: Option<String>,
    /// Whether delivery was on after the period's last change.
    on_at_end: Option<bool>,
}

impl PartitionDigests {
    /// Applies one record; returns the digests of the periods its time closes, in period order
    /// and, within a period, in tenant order. An error (a digest that cannot be signed) leaves
    /// this state half applied: drop it and rebuild from the last checkpoint.
    pub fn apply(
        &mut self,
        entry: Entry,
        periods: Periods,
        key: &SigningKey,
    ) -> Result<Vec<SignedDigest>, String> {
        let at_ms = entry.at_ms();
        let open_from = *self
            .open_from_ms
            .get_or_insert_with(|| periods.start_of(at_ms));
        self.time_ms = self.time_ms.max(at_ms);
        let period = periods.start_of(at_ms).max(open_from);
        match entry {
            Entry::Clock { .. } => {}
            Entry::Change {
                tenant,
                active,
                reason,
                prefix,
                ..
            } => self.tenant(tenant, prefix).turn(active, reason, period),
            Entry::Stored {
                tenant,
                prefix,
                object,
                ..
            } => {
                let tenant = self.tenant(tenant, prefix);
                // An object of a tenant never heard of (connected before digests existed, or a
                // change record that never came) starts its chain. One of a tenant turned off is
                // listed in its period's digest only: every stored object is listed somewhere.
                if !tenant.on && tenant.turned_off.is_none() {
                    tenant.turn(true, reason::CONNECTED.to_owned(), period);
                }
                tenant
                    .periods
                    .entry(period)
                    .or_default()
                    .objects
                    .push(object);
            }
        }
        let mut signed = Vec::new();
        while let Some(start) = self
            .open_from_ms
            .filter(|start| start + periods.length_ms + periods.grace_ms <= self.time_ms)
        {
            let end = start + periods.length_ms;
            for (tenant_id, tenant) in &mut self.tenants {
                signed.extend(tenant.close(tenant_id, (start, end), key)?);
            }
            self.tenants.retain(|_, tenant| {
                tenant.on
                    || tenant.turned_off.is_some()
                    || tenant.chain.is_some()
                    || !tenant.periods.is_empty()
            });
            self.open_from_ms = Some(end);
        }
        Ok(signed)
    }
}

impl PartitionDigests {
    /// `tenant`'s state, with the destination prefix a record names, if it names one.
    fn tenant(&mut self, tenant: TenantId, prefix: Option<String>) -> &mut TenantDigests {
        let state = self.tenants.entry(tenant).or_default();
        if let Some(prefix) = prefix {
            state.prefix = prefix;
        }
        state
    }
}

impl TenantDigests {
    fn turn(&mut self, on: bool, why: String, period: i64) {
        if on == self.on {
            return;
        }
        self.on = on;
        self.turned_off = (!on).then(|| why.clone());
        let activity = self.periods.entry(period).or_default();
        if on {
            activity.came_on.get_or_insert(why);
        } else {
            activity.went_off = Some(why);
        }
        activity.on_at_end = Some(on);
    }

    /// The tenant's digest of `[start, end)`, if its delivery was on at any time in it.
    fn close(
        &mut self,
        tenant_id: &TenantId,
        (start, end): (i64, i64),
        key: &SigningKey,
    ) -> Result<Option<SignedDigest>, String> {
        let activity = self.periods.remove(&start).unwrap_or_default();
        let chained = self.chain.is_some();
        let mut chain = match (self.chain.take(), &activity.came_on) {
            (Some(chain), _) => chain,
            (None, Some(why)) => Chain::start(tenant_id.as_str(), why),
            // Objects stored while delivery was off: a digest of their own, starting and
            // ending a chain.
            (None, None) if !activity.objects.is_empty() => {
                Chain::start(tenant_id.as_str(), reason::DELIVERED_WHILE_OFF)
            }
            (None, None) => return Ok(None),
        };
        // Without a change in the period, delivery stayed as it was at its start.
        let on_at_end = activity.on_at_end.unwrap_or(chained);
        let ends = (!on_at_end).then(|| {
            activity
                .went_off
                .as_deref()
                .or(self.turned_off.as_deref())
                .unwrap_or(reason::DISABLED)
        });
        let relative = relative_key(tenant_id, time_of(start)?);
        let digest_key = full_key(&self.prefix, &relative);
        let objects = activity.objects.len() as u64;
        let (_, file) = chain.sign_next(
            key,
            &digest_key,
            (time_of(start)?, time_of(end)?),
            activity.objects,
            ends,
        )?;
        if on_at_end {
            self.chain = Some(chain);
        }
        Ok(Some(SignedDigest {
            tenant: tenant_id.clone(),
            relative_key: relative,
            period_start_ms: start,
            period_end_ms: end,
            objects,
            file,
        }))
    }
}

fn time_of(ms: i64) -> Result<OffsetDateTime, String> {
    common::clock::from_unix_ms(ms)
        .map_err(|error| format!("a period at {ms} ms is out of range: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::digest::Digest;

    fn new_key() -> SigningKey {
        SigningKey::generate().expect("a key")
    }

    const PERIODS: Periods = Periods {
        length_ms: 3_600_000,
        grace_ms: 300_000,
    };
    /// 2026-11-30T00:00:00Z.
    const DAY: i64 = 1_795_996_800_000;
    const MINUTE: i64 = 60_000;
    const HOUR: i64 = 3_600_000;

    fn acme() -> TenantId {
        TenantId::parse("acme").expect("tenant")
    }

    fn stored(name: &str, at_ms: i64) -> Entry {
        Entry::Stored {
            tenant: acme(),
            prefix: Some("audit".into()),
            object: DigestedObject {
                key: format!("audit/acme/{name}.jsonl.zst"),
                sha256: common::digest::sha256_hex(name.as_bytes()),
                bytes: 10,
                event_count: 1,
                window_start: String::new(),
                window_end: String::new(),
                partition: 0,
                first_offset: 0,
                last_offset: 0,
            },
            at_ms,
        }
    }

    fn change(active: bool, why: &str, at_ms: i64) -> Entry {
        Entry::Change {
            tenant: acme(),
            active,
            reason: why.into(),
            prefix: Some("audit".into()),
            at_ms,
        }
    }

    fn content(digest: &SignedDigest) -> Digest {
        let line = digest.file.split(|b| *b == b'\n').next().expect("line 1");
        serde_json::from_slice(line).expect("a digest")
    }

    /// Applies `entries` from `state`; returns every digest made.
    fn fold(
        state: &mut PartitionDigests,
        entries: Vec<Entry>,
        key: &SigningKey,
    ) -> Vec<SignedDigest> {
        entries
            .into_iter()
            .flat_map(|entry| state.apply(entry, PERIODS, key).expect("apply"))
            .collect()
    }

    #[test]
    fn a_period_closes_once_a_record_says_its_grace_has_passed_and_lists_its_objects() {
        let key = new_key();
        let mut state = PartitionDigests::default();
        let made = fold(
            &mut state,
            vec![
                change(true, reason::CONNECTED, DAY + MINUTE),
                stored("a", DAY + 10 * MINUTE),
                stored("b", DAY + 50 * MINUTE),
                Entry::Clock {
                    at_ms: DAY + HOUR + 4 * MINUTE,
                },
                // Stored in the first hour, recorded after it but within the grace.
                stored("late", DAY + HOUR - MINUTE),
            ],
            &key,
        );
        assert!(made.is_empty(), "closed before its grace: {made:?}");
        let made = fold(
            &mut state,
            vec![
                Entry::Clock {
                    at_ms: DAY + HOUR + 5 * MINUTE,
                },
                // Recorded after the first hour closed: listed in the next one.
                stored("too-late", DAY + HOUR - MINUTE),
                Entry::Clock {
                    at_ms: DAY + 2 * HOUR + 5 * MINUTE,
                },
            ],
            &key,
        );
        assert_eq!(made.len(), 2);
        assert_eq!(
            content(&made[1]).objects[0].key,
            "audit/acme/too-late.jsonl.zst"
        );
        let digest = content(&made[0]);
        assert_eq!(
            made[0].relative_key,
            "acme/digests/2026/11/30/acme_20261130T000000Z_digest.json.gz"
        );
        assert_eq!(
            (digest.period_start.as_str(), digest.period_end.as_str()),
            ("2026-11-30T00:00:00Z", "2026-11-30T01:00:00Z")
        );
        let keys: Vec<&str> = digest.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "audit/acme/a.jsonl.zst",
                "audit/acme/b.jsonl.zst",
                "audit/acme/late.jsonl.zst"
            ]
        );
        assert_eq!(digest.chain_start.as_deref(), Some(reason::CONNECTED));
        assert_eq!(digest.previous, None);
    }

    #[test]
    fn an_hour_without_objects_gets_a_digest_linked_into_the_chain() {
        let key = new_key();
        let mut state = PartitionDigests::default();
        let made = fold(
            &mut state,
            vec![
                stored("a", DAY + MINUTE),
                Entry::Clock {
                    at_ms: DAY + 3 * HOUR + 5 * MINUTE,
                },
            ],
            &key,
        );
        let digests: Vec<Digest> = made.iter().map(content).collect();
        assert_eq!(digests.len(), 3, "{digests:?}");
        assert_eq!(digests[0].objects.len(), 1);
        assert!(digests[1].objects.is_empty() && digests[2].objects.is_empty());
        let first = digests[1].previous.as_ref().expect("a link");
        assert_eq!(
            first.key,
            "audit/acme/digests/2026/11/30/acme_20261130T000000Z_digest.json.gz"
        );
        assert_eq!(
            digests[2].previous.as_ref().map(|link| link.key.as_str()),
            Some("audit/acme/digests/2026/11/30/acme_20261130T010000Z_digest.json.gz")
        );
    }

    #[test]
    fn a_disabled_period_ends_the_chain_and_enabling_starts_a_new_one() {
        let key = new_key();
        let mut state = PartitionDigests::default();
        let made = fold(
            &mut state,
            vec![
                change(true, reason::CONNECTED, DAY + MINUTE),
                change(false, reason::DISABLED, DAY + HOUR + 10 * MINUTE),
                // Off for the whole third hour: no digest.
                change(true, reason::ENABLED, DAY + 3 * HOUR + 10 * MINUTE),
                change(false, reason::DISCONNECTED, DAY + 4 * HOUR + 10 * MINUTE),
                Entry::Clock {
                    at_ms: DAY + 8 * HOUR,
                },
            ],
            &key,
        );
        let summary: Vec<(String, Option<String>, Option<String>)> = made
            .iter()
            .map(content)
            .map(|d| (d.period_start, d.chain_start, d.chain_end))
            .collect();
        let hour = |h: u8| format!("2026-11-30T0{h}:00:00Z");
        assert_eq!(
            summary,
            [
                (hour(0), Some(reason::CONNECTED.into()), None),
                (hour(1), None, Some(reason::DISABLED.into())),
                (hour(3), Some(reason::ENABLED.into()), None),
                (hour(4), None, Some(reason::DISCONNECTED.into())),
            ]
        );
        assert!(
            state
                .tenants
                .values()
                .all(|tenant| !tenant.on && tenant.chain.is_none()),
            "a disconnected tenant has no chain"
        );
    }

    #[test]
    fn an_object_stored_after_delivery_went_off_is_listed_without_turning_it_on_again() {
        let key = new_key();
        let mut state = PartitionDigests::default();
        let made = fold(
            &mut state,
            vec![
                change(true, reason::CONNECTED, DAY + MINUTE),
                change(false, reason::DISCONNECTED, DAY + 10 * MINUTE),
                // An upload that was under way when the tenant disconnected.
                stored("in-flight", DAY + 2 * HOUR + MINUTE),
                Entry::Clock {
                    at_ms: DAY + 6 * HOUR,
                },
            ],
            &key,
        );
        let summary: Vec<(String, Option<String>, Option<String>, usize)> = made
            .iter()
            .map(content)
            .map(|d| (d.period_start, d.chain_start, d.chain_end, d.objects.len()))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "2026-11-30T00:00:00Z".into(),
                    Some(reason::CONNECTED.into()),
                    Some(reason::DISCONNECTED.into()),
                    0
                ),
                (
                    "2026-11-30T02:00:00Z".into(),
                    Some(reason::DELIVERED_WHILE_OFF.into()),
                    Some(reason::DISCONNECTED.into()),
                    1
                ),
            ]
        );
    }

    #[test]
    fn rebuilding_from_any_point_makes_the_same_bytes() {
        let entries: Vec<Entry> = (0..40)
            .map(|n| match n % 7 {
                0 => Entry::Clock {
                    at_ms: DAY + n * 10 * MINUTE,
                },
                3 => change(n % 2 == 0, reason::ENABLED, DAY + n * 10 * MINUTE),
                _ => stored(&format!("o{n}"), DAY + n * 10 * MINUTE),
            })
            .collect();
        let key = new_key();
        let whole = fold(&mut PartitionDigests::default(), entries.clone(), &key);
        assert!(whole.len() >= 4, "{}", whole.len());
        for cut in [1, 9, 17, 33] {
            let mut state = PartitionDigests::default();
            let mut made = fold(&mut state, entries[..cut].to_vec(), &key);
            // A checkpoint's round trip through JSON.
            let mut restored: PartitionDigests =
                serde_json::from_slice(&serde_json::to_vec(&state).expect("encode"))
                    .expect("decode");
            made.extend(fold(&mut restored, entries[cut..].to_vec(), &key));
            assert_eq!(made, whole, "rebuilt from record {cut}");
        }
    }
}
