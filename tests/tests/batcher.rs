//! The batcher as a process on the real broker and RabbitMQ: closed windows become upload jobs
//! holding every delivered event once, under the key layout of DESIGN §2.

use std::collections::BTreeSet;
use std::time::Duration;

use common::clock::now_unix_ms;
use common::key::Codec;
use integration_tests::batching::{BatcherSetup, EventsTopic, jobs_until_events, take_jobs};
use integration_tests::fixtures::{
    IntegrationsTopic, confirm_channel, delete_topology, integration_json,
};

#[tokio::test]
async fn closed_windows_become_jobs_with_every_delivered_event_once() {
    let events = EventsTopic::create(2).await;
    let integrations = IntegrationsTopic::create().await;
    integrations.connect("acme", "acme-bucket").await;
    let zstd = integration_json("globex", "globex-bucket").replace("\"none\"", "\"zstd\"");
    integrations.write("globex", Some(&zstd)).await;
    let setup = BatcherSetup::new(&events, &integrations);
    let (_connection, channel) = confirm_channel("batcher-test").await;
    setup.topology.declare(&channel).await.expect("declare");

    let batcher = setup.spawn("2s", "500ms", &[]);
    batcher.ready().await;
    let now = now_unix_ms();
    for n in 0..20 {
        events.send(0, "acme", &format!("a{n}"), now + n, 10).await;
        events
            .send(1, "globex", &format!("g{n}"), now + n, 10)
            .await;
        events
            .send(0, "nobody", &format!("x{n}"), now + n, 10)
            .await;
    }
    // Idle partitions close by the clock once the window's end plus the delay has passed.
    let jobs =
        jobs_until_events(&channel, &setup.topology.queue, 40, Duration::from_secs(60)).await;

    let mut seen = BTreeSet::new();
    for published in jobs.values() {
        let job = &published.job;
        let ids = published.event_ids();
        assert_eq!(ids.len() as u64, job.event_count);
        for id in &ids {
            assert!(seen.insert(id.clone()), "event {id} is in two objects");
        }
        let (tenant, partition, codec) = match job.tenant_id.as_str() {
            "acme" => ("acme", 0, Codec::None),
            "globex" => ("globex", 1, Codec::Zstd),
            other => panic!("a job for {other}, who has no integration"),
        };
        assert_eq!(job.partition, partition);
        assert_eq!(job.codec, codec);
        assert!(
            job.relative_key.starts_with(&format!("{tenant}/2026/"))
                && job.relative_key.ends_with(&format!(
                    "_{partition}-{}.{}",
                    job.first_offset,
                    codec.extension()
                )),
            "{}",
            job.relative_key
        );
        assert_eq!(job.window_end_ms - job.window_start_ms, 2_000);
        assert_eq!(job.window_start_ms % 2_000, 0, "windows align to the epoch");
    }
    assert_eq!(seen.len(), 40);
    assert!(take_jobs(&channel, &setup.topology.queue).await.is_empty());
    drop(batcher);
    delete_topology(&channel, &setup.topology).await;
}
