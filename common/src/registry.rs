//! The live integration registry: every service materialises the compacted
//! `activity.integrations` topic in memory and follows it (DESIGN §2).
//!
//! It reads every partition from the beginning outside any consumer group, so each process sees
//! every tenant. It is *caught up* once it has read up to the end offsets it saw on start; until
//! then a missing tenant may just not have been read yet, so services wait for it before acting.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, gauge};
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tokio::sync::watch;

use crate::event::TenantId;
use crate::integration::Integration;
use crate::kafka::{KafkaArgs, TopicSpec};
use crate::read_to_end::{
    EndOffsets, EndReachedContext, PARTITION_EOF, ReadError, assign_from_beginning,
};
use crate::shutdown::Supervisor;

/// Records of the integrations topic that were skipped because they could not be read.
pub const INVALID_RECORDS: &str = "activity_integrations_invalid_records_total";
/// Integrations currently known.
pub const KNOWN: &str = "activity_integrations_known";
/// Records of the integrations topic read and applied (updates, tombstones and skipped ones):
/// compared with the topic's record count, how far this process is behind the admin API.
pub const RECORDS_READ: &str = "activity_integrations_records_read_total";

/// How long start-up metadata requests may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// The integrations topic as services create it: compacted, so the latest value per tenant (or
/// its tombstone) is all that is kept.
pub fn topic_spec(name: &str, replication: i32) -> TopicSpec<'_> {
    TopicSpec {
        name,
        partitions: 1,
        replication,
        config: vec![("cleanup.policy", "compact")],
    }
}

/// A cheap handle on the registry; clones share the same state.
#[derive(Clone)]
pub struct IntegrationRegistry {
    integrations: Arc<RwLock<HashMap<TenantId, Integration>>>,
    caught_up: watch::Receiver<bool>,
    /// Per partition, the offset after the last record applied.
    applied: watch::Receiver<HashMap<i32, i64>>,
}

/// Why the registry could not start following the topic.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read the integrations topic {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot start reading the integrations topic {topic}: {source}")]
    Assign {
        topic: String,
        #[source]
        source: ReadError,
    },
    #[error("the integrations topic {0} does not exist")]
    NoTopic(String),
    #[error("reading the integrations topic's partitions panicked")]
    StartPanicked,
}

impl IntegrationRegistry {
    /// The tenant's current integration, if it has one.
    pub fn get(&self, tenant: &TenantId) -> Option<Integration> {
        self.inspect(tenant, |integration| integration.cloned())
    }

    /// Applies `look` to the tenant's current integration without copying it: for paths that
    /// read a field or two per record.
    pub fn inspect<T>(&self, tenant: &TenantId, look: impl FnOnce(Option<&Integration>) -> T) -> T {
        look(
            self.integrations
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(tenant),
        )
    }

    /// How many tenants have an integration.
    pub fn len(&self) -> usize {
        self.integrations
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether everything written before the registry started has been read.
    pub fn is_caught_up(&self) -> bool {
        *self.caught_up.borrow()
    }

    /// Waits until the registry is caught up.
    pub async fn caught_up(&self) {
        let mut caught_up = self.caught_up.clone();
        // An error means the follower stopped, which the supervisor reports; nothing to wait for.
        let _ = caught_up.wait_for(|done| *done).await;
    }

    /// Waits until the record at `offset` of `partition` has been applied, so a writer reads its
    /// own write. False when the follower stopped first.
    pub async fn applied(&self, partition: i32, offset: i64) -> bool {
        let mut applied = self.applied.clone();
        applied
            .wait_for(|next| next.get(&partition).is_some_and(|next| *next > offset))
            .await
            .is_ok()
    }

    /// Starts following `topic` under `supervisor`.
    pub async fn follow(
        kafka: &KafkaArgs,
        topic: &str,
        supervisor: &Supervisor,
    ) -> Result<Self, RegistryError> {
        describe_counter!(
            INVALID_RECORDS,
            "Integration records skipped because they could not be read."
        );
        describe_gauge!(KNOWN, "Integrations currently known.");
        describe_counter!(
            RECORDS_READ,
            "Records of the integrations topic read (updates, tombstones and skipped ones)."
        );
        counter!(RECORDS_READ).increment(0);
        let kafka_error = |source| RegistryError::Kafka {
            topic: topic.to_owned(),
            source,
        };
        let consumer: StreamConsumer<EndReachedContext> = kafka
            .client_config(&[
                ("group.id", "activity-integrations-reader"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                PARTITION_EOF,
                crate::kafka::QUIET_TOPIC_FETCH_WAIT,
            ])
            .create_with_context(EndReachedContext)
            .map_err(kafka_error)?;
        let consumer = Arc::new(consumer);

        // Start-up reads are blocking librdkafka calls: keep them off the runtime's threads.
        let (consumer, end_offsets) = {
            let owned_topic = topic.to_owned();
            tokio::task::spawn_blocking(move || {
                assign_from_beginning(&*consumer, &owned_topic, METADATA_TIMEOUT)
                    .map(|ends| (consumer, ends))
            })
            .await
            .map_err(|_| RegistryError::StartPanicked)?
            .map_err(|error| match error {
                ReadError::NoTopic => RegistryError::NoTopic(topic.to_owned()),
                source => RegistryError::Assign {
                    topic: topic.to_owned(),
                    source,
                },
            })?
        };

        let (caught_up_tx, caught_up) = watch::channel(false);
        let (applied_tx, applied) = watch::channel(HashMap::new());
        let registry = Self {
            integrations: Arc::default(),
            caught_up,
            applied,
        };
        let mut follower = Follower {
            registry: registry.clone(),
            ends: end_offsets,
            caught_up: caught_up_tx,
            applied: applied_tx,
        };
        follower.declare_if_caught_up();
        let token = supervisor.token();
        supervisor.spawn("integration-registry", async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => return Ok(()),
                    message = consumer.recv() => match message {
                        Ok(message) => follower.apply(
                            message.partition(),
                            message.offset(),
                            message.key(),
                            message.payload(),
                        ),
                        Err(KafkaError::PartitionEOF(partition)) => follower.reached_end(partition),
                        Err(error) => tracing::warn!(%error, "reading the integrations topic failed; retrying"),
                    },
                }
            }
        });
        Ok(registry)
    }
}

/// Applies records to the registry; a pure state machine apart from the shared map.
struct Follower {
    registry: IntegrationRegistry,
    /// How far each partition must be read to have seen what was written before the start.
    ends: EndOffsets,
    caught_up: watch::Sender<bool>,
    applied: watch::Sender<HashMap<i32, i64>>,
}

impl Follower {
    fn apply(&mut self, partition: i32, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        counter!(RECORDS_READ).increment(1);
        match decode(key, value) {
            Ok((tenant, Some(integration))) => {
                self.write().insert(tenant, integration);
            }
            Ok((tenant, None)) => {
                self.write().remove(&tenant);
            }
            Err(problem) => {
                counter!(INVALID_RECORDS).increment(1);
                tracing::error!(partition, offset, %problem, "skipped an unreadable integration record");
            }
        }
        gauge!(KNOWN).set(self.registry.len() as f64);
        self.applied.send_modify(|applied| {
            applied.insert(partition, offset + 1);
        });
        self.ends.record(partition, offset);
        self.declare_if_caught_up();
    }

    /// The client's fetches of `partition` reached the broker's end.
    fn reached_end(&mut self, partition: i32) {
        self.ends.reached_end(partition);
        self.declare_if_caught_up();
    }

    /// Declares the registry caught up once every partition was read to its end at start.
    fn declare_if_caught_up(&mut self) {
        if self.ends.done() && !*self.caught_up.borrow() {
            self.caught_up.send_replace(true);
            tracing::info!(
                integrations = self.registry.len(),
                "integration registry caught up"
            );
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TenantId, Integration>> {
        self.registry
            .integrations
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A record's tenant and its integration, or `None` for a tombstone.
fn decode(
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(TenantId, Option<Integration>), String> {
    let key = key.ok_or("the record has no key")?;
    let key = std::str::from_utf8(key).map_err(|_| "the key is not UTF-8".to_string())?;
    let tenant =
        TenantId::parse(key).map_err(|e| format!("the key {key:?} is not a tenant id: {e}"))?;
    let Some(value) = value else {
        return Ok((tenant, None));
    };
    let integration: Integration = serde_json::from_slice(value)
        .map_err(|e| format!("the value for tenant {tenant} is not an integration: {e}"))?;
    if integration.tenant_id != tenant {
        return Err(format!(
            "the value for tenant {tenant} names tenant {}",
            integration.tenant_id
        ));
    }
    Ok((tenant, Some(integration)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follower(ends: &[(i32, i64)]) -> (Follower, IntegrationRegistry) {
        let (caught_up, receiver) = watch::channel(false);
        let (applied, applied_receiver) = watch::channel(HashMap::new());
        let registry = IntegrationRegistry {
            integrations: Arc::default(),
            caught_up: receiver,
            applied: applied_receiver,
        };
        let follower = Follower {
            registry: registry.clone(),
            ends: EndOffsets::new(ends.iter().copied()),
            caught_up,
            applied,
        };
        (follower, registry)
    }

    fn value(tenant: &str, enabled: bool) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "tenant_id": tenant, "enabled": enabled, "aws_account_id": "123456789012",
            "bucket": "logs-bucket", "role_arn": "arn:aws:iam::123456789012:role/Writer",
            "external_id": "ext-123", "region": "eu-west-1",
            "connected_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T10:00:00Z"
        }))
        .expect("json")
    }

    fn tenant(raw: &str) -> TenantId {
        TenantId::parse(raw).expect("tenant")
    }

    #[test]
    fn updates_replace_and_tombstones_remove() {
        let (mut follower, registry) = follower(&[]);
        follower.apply(0, 0, Some(b"acme"), Some(&value("acme", true)));
        follower.apply(0, 1, Some(b"acme"), Some(&value("acme", false)));
        assert_eq!(
            registry.get(&tenant("acme")).map(|i| i.enabled),
            Some(false)
        );
        follower.apply(0, 2, Some(b"acme"), None);
        assert!(registry.get(&tenant("acme")).is_none());
    }

    #[tokio::test]
    async fn a_writer_waits_until_its_record_is_applied() {
        let (mut follower, registry) = follower(&[]);
        let waiting = tokio::spawn({
            let registry = registry.clone();
            async move { registry.applied(0, 1).await }
        });
        follower.apply(0, 0, Some(b"acme"), Some(&value("acme", true)));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "offset 1 is not applied yet");
        follower.apply(0, 1, Some(b"acme"), Some(&value("acme", false)));
        assert!(waiting.await.expect("task"));
        assert_eq!(
            registry.get(&tenant("acme")).map(|i| i.enabled),
            Some(false)
        );
    }

    #[test]
    fn unreadable_records_are_skipped_without_touching_the_tenant() {
        let (mut follower, registry) = follower(&[]);
        follower.apply(0, 0, Some(b"acme"), Some(&value("acme", true)));
        follower.apply(0, 1, Some(b"acme"), Some(b"{not json"));
        follower.apply(0, 2, Some(b"acme"), Some(&value("globex", true)));
        follower.apply(0, 3, None, Some(&value("acme", false)));
        follower.apply(0, 4, Some(b"../x"), None);
        assert_eq!(registry.get(&tenant("acme")).map(|i| i.enabled), Some(true));
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn caught_up_once_every_partition_reached_its_end_at_start() {
        let (mut follower, registry) = follower(&[(0, 2), (1, 1)]);
        assert!(!registry.is_caught_up());
        follower.apply(0, 0, Some(b"a"), Some(&value("a", true)));
        follower.apply(1, 0, Some(b"b"), Some(&value("b", true)));
        assert!(!registry.is_caught_up(), "partition 0 has one more record");
        follower.apply(0, 1, Some(b"c"), Some(&value("c", true)));
        assert!(registry.is_caught_up());
    }

    #[test]
    fn caught_up_when_the_client_reaches_the_end_of_a_partition_whose_last_records_are_compacted_away()
     {
        let (mut follower, registry) = follower(&[(0, 10)]);
        follower.apply(0, 6, Some(b"a"), Some(&value("a", true)));
        assert!(!registry.is_caught_up());
        follower.reached_end(0);
        assert!(registry.is_caught_up());
    }

    #[test]
    fn an_empty_topic_is_caught_up_at_once() {
        let (mut follower, registry) = follower(&[]);
        follower.declare_if_caught_up();
        assert!(registry.is_caught_up());
    }
}
