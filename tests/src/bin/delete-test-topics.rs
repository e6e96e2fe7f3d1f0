//! Deletes the topics earlier test runs left on the local broker: every topic whose name ends in
//! the harness's unique suffix (`-` and 32 hex digits, see `integration_tests::unique`). Used by
//! `scripts/test.sh`.
//!
//!   delete-test-topics <brokers>
//!
//! Each test makes its own topics and none deletes them, so without this a broker that serves
//! test run after test run holds thousands of partitions, and its start, which loads every one,
//! grows past any timeout. Topics without the suffix (the demo's, an operator's) are left alone.

use std::process::ExitCode;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// Topics per delete request: a request per topic would take minutes for thousands of topics,
/// and one request for all of them can outlast the broker's request timeout.
const TOPICS_PER_REQUEST: usize = 500;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers] = args.as_slice() else {
        eprintln!("usage: delete-test-topics <brokers>");
        return ExitCode::from(2);
    };
    match delete_test_topics(brokers).await {
        Ok(deleted) => {
            println!("deleted {deleted} topics left by earlier test runs");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("delete-test-topics: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Listings are repeated until one holds no test topic: a listing of thousands of topics taken
/// here came back without a third of them.
const MAX_PASSES: usize = 10;

async fn delete_test_topics(brokers: &str) -> Result<usize, String> {
    let admin: AdminClient<DefaultClientContext> = common::kafka::KafkaArgs::new(brokers)
        .client_config(&[])
        .create()
        .map_err(|error| format!("connecting to {brokers}: {error}"))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(60)));
    let mut deleted = 0;
    for _ in 0..MAX_PASSES {
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(30))
            .map_err(|error| format!("listing the topics on {brokers}: {error}"))?;
        let names: Vec<&str> = metadata
            .topics()
            .iter()
            .map(|topic| topic.name())
            .filter(|name| made_by_a_test(name))
            .collect();
        if names.is_empty() {
            return Ok(deleted);
        }
        for chunk in names.chunks(TOPICS_PER_REQUEST) {
            let results = admin
                .delete_topics(chunk, &options)
                .await
                .map_err(|error| format!("deleting topics: {error}"))?;
            for result in results {
                match result {
                    Ok(_) => deleted += 1,
                    // Deleted since the listing (by an earlier pass still being applied).
                    Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                    Err((name, code)) => return Err(format!("deleting topic {name}: {code}")),
                }
            }
        }
    }
    Err(format!(
        "test topics were still listed after {MAX_PASSES} passes ({deleted} deleted)"
    ))
}

/// Whether `name` ends in the unique suffix the test harness gives every name it makes.
fn made_by_a_test(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(base, suffix)| {
        !base.is_empty() && suffix.len() == 32 && suffix.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

#[cfg(test)]
mod tests {
    use super::made_by_a_test;

    #[test]
    fn only_names_with_the_harness_suffix_are_test_topics() {
        let test_name = integration_tests::unique("activity.events");
        assert!(made_by_a_test(&test_name));
        assert!(!made_by_a_test("activity.events"));
        assert!(!made_by_a_test("__consumer_offsets"));
        assert!(!made_by_a_test("activity.events-demo"));
        assert!(!made_by_a_test("-c937df7f04e949d589d0e5160ec73239"));
        assert!(!made_by_a_test(
            "activity.events-c937df7f04e949d589d0e5160ec7323z"
        ));
    }
}
