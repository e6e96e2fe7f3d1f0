//! The integration registry on a real broker: it reads what was written before it started,
//! reports when it has caught up, skips unreadable records, and follows updates and tombstones.

use std::time::Duration;

use common::registry::IntegrationRegistry;
use common::shutdown::Supervisor;
use integration_tests::fixtures::IntegrationsTopic;
use integration_tests::wait_for;

fn integration(tenant: &str, enabled: bool) -> String {
    serde_json::json!({
        "tenant_id": tenant, "enabled": enabled, "aws_account_id": "123456789012",
        "bucket": "logs-bucket", "prefix": "audit", "role_arn": "arn:aws:iam::123456789012:role/Writer",
        "external_id": "ext-0123456789", "region": "eu-west-1", "compression": "gzip",
        "connected_at": "2026-11-27T10:00:00Z", "updated_at": "2026-11-27T10:00:00Z"
    })
    .to_string()
}

#[tokio::test]
async fn the_registry_catches_up_then_follows_updates_and_tombstones() {
    let topic = IntegrationsTopic::create().await;
    topic.write("acme", Some(&integration("acme", true))).await;
    topic
        .write("globex", Some(&integration("globex", true)))
        .await;
    topic.write("broken", Some("{not an integration")).await;
    topic
        .write("initech", Some(&integration("initech", true)))
        .await;

    let supervisor = Supervisor::new();
    let registry = IntegrationRegistry::follow(&topic.kafka, &topic.name, &supervisor)
        .await
        .expect("follow");
    tokio::time::timeout(Duration::from_secs(30), registry.caught_up())
        .await
        .expect("caught up in time");
    assert_eq!(registry.len(), 3, "the unreadable record is skipped");
    let acme = registry
        .get(&"acme".parse().expect("tenant"))
        .expect("acme is known");
    assert_eq!(
        (acme.bucket.as_str(), acme.prefix.as_str()),
        ("logs-bucket", "audit")
    );

    topic.write("acme", Some(&integration("acme", false))).await;
    topic.write("globex", None).await;
    wait_for(
        "the update and the tombstone",
        Duration::from_secs(30),
        || async {
            let acme_disabled = registry
                .get(&"acme".parse().expect("tenant"))
                .is_some_and(|i| !i.enabled);
            let globex_gone = registry.get(&"globex".parse().expect("tenant")).is_none();
            (acme_disabled && globex_gone).then_some(())
        },
    )
    .await;
    assert_eq!(registry.len(), 2);
    supervisor.cancel();
    supervisor
        .run_until_stopped(Duration::from_secs(10))
        .await
        .expect("the follower stops cleanly");
}
