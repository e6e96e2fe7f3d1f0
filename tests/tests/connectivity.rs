//! Production connectivity of the shared client setup: RabbitMQ over plain AMQP and over TLS with
//! a private CA.

use integration_tests::fixtures::{amqp_args, aws_args, moto_endpoint};
use integration_tests::tls::TlsFront;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

/// Declares and deletes a queue: proof that the connection carries AMQP, not just TCP.
async fn round_trip(connection: &lapin::Connection) {
    let channel = connection.create_channel().await.expect("channel");
    let queue = integration_tests::unique("connectivity");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare a queue");
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the queue");
}

#[tokio::test]
async fn amqp_urls_reach_the_local_rabbitmq() {
    let args = amqp_args(&[]);
    let connection = args.connect("connectivity-test").await.expect("connect");
    round_trip(&connection).await;
}

#[tokio::test]
async fn amqps_urls_work_with_a_private_ca_and_fail_clearly_without_it() {
    let front = TlsFront::start(5672);
    let url = format!("amqps://guest:guest@localhost:{}/%2f", front.port);
    let ca_file = front.ca_file.to_string_lossy().into_owned();

    let trusted = amqp_args(&["--amqp-url", &url, "--amqp-ca-file", &ca_file]);
    let connection = trusted
        .connect("connectivity-test")
        .await
        .expect("connect over TLS");
    round_trip(&connection).await;

    let untrusted = amqp_args(&["--amqp-url", &url]);
    let error = untrusted
        .connect("connectivity-test")
        .await
        .expect_err("an unknown CA must be refused");
    let message = format!("{error:#} {:?}", error);
    assert!(message.contains("amqps://***@localhost"), "{message}");
    assert!(
        !message.contains("guest:guest"),
        "credentials leaked: {message}"
    );
    assert!(
        message.to_lowercase().contains("certificate") || message.contains("UnknownIssuer"),
        "{message}"
    );
}

#[tokio::test]
async fn the_aws_sdk_takes_its_identity_from_the_standard_chain_and_its_endpoint_from_settings() {
    let args = common::aws::AwsArgs {
        region: Some("eu-west-1".into()),
        ..aws_args(&moto_endpoint())
    };
    let config = args.sdk_config().await;
    assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-west-1"));
    let identity = aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity");
    assert_eq!(
        identity.account(),
        Some("123456789012"),
        "moto's default account answers"
    );
}
