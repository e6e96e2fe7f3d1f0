//! Prints the records of a topic with their partition, offset, key and timestamp.
//!
//!   read-topic <brokers> <topic> <count>
//!
//! Waits up to 30 s for `count` records. Used by `scripts/demo.sh`.

use std::process::ExitCode;
use std::time::Duration;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, count] = args.as_slice() else {
        eprintln!("usage: read-topic <brokers> <topic> <count>");
        return ExitCode::from(2);
    };
    let Ok(count) = count.parse::<usize>() else {
        eprintln!("read-topic: count {count:?} is not a number");
        return ExitCode::from(2);
    };
    let records =
        integration_tests::kafka::read_until(brokers, topic, Duration::from_secs(30), move |r| {
            r.len() >= count
        })
        .await;
    for record in records {
        println!(
            "partition {} offset {} key {:?} timestamp {}\n  {}",
            record.partition, record.offset, record.key, record.timestamp_ms, record.value
        );
    }
    ExitCode::SUCCESS
}
