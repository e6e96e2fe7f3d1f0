//! RabbitMQ connection setup. `amqp://` and `amqps://` URLs both work: TLS trusts the system's CA
//! store, plus an operator-supplied PEM bundle for a private CA.

use std::path::PathBuf;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

/// How to reach RabbitMQ.
#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// RabbitMQ URL, `amqp://` or `amqps://` (credentials included; never logged).
    #[arg(
        long = "amqp-url",
        env = "ACTIVITY_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub url: SecretString,
    /// Extra CA certificates (PEM) to trust for `amqps://`, besides the system's.
    #[arg(long = "amqp-ca-file", env = "ACTIVITY_AMQP_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Why RabbitMQ could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum AmqpConnectError {
    #[error("cannot read the CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to RabbitMQ at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: lapin::Error,
    },
}

impl AmqpArgs {
    /// The URL without its credentials, for log lines and errors.
    pub fn endpoint(&self) -> String {
        redact_credentials(self.url.expose_secret())
    }

    /// Opens a connection named `name` (shown in RabbitMQ's management UI).
    pub async fn connect(&self, name: &str) -> Result<Connection, AmqpConnectError> {
        let cert_chain =
            match &self.ca_file {
                Some(path) => Some(std::fs::read_to_string(path).map_err(|source| {
                    AmqpConnectError::CaFile {
                        path: path.clone(),
                        source,
                    }
                })?),
                None => None,
            };
        let tls = OwnedTLSConfig {
            identity: None,
            cert_chain,
        };
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let failed = |source| AmqpConnectError::Connect {
            endpoint: self.endpoint(),
            source,
        };
        let runtime = lapin::runtime::default_runtime().map_err(failed)?;
        Connection::connect_with_config(self.url.expose_secret(), properties, tls, runtime)
            .await
            .map_err(failed)
    }
}

/// Capped exponential waits between attempts at RabbitMQ, so a broker that is away, or that
/// refuses the session (a queue declared with other arguments), is not hammered. Each wait is
/// stretched by a random part of itself, so the uploaders and batchers that lost one RabbitMQ
/// together do not all come back in the same instant.
#[derive(Debug)]
pub struct Backoff {
    delays: backon::ExponentialBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delays: Self::schedule(),
        }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    /// Before jitter, which adds up to as much again.
    const LONGEST: Duration = Duration::from_secs(10);

    fn schedule() -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Self::FIRST)
            .with_max_delay(Self::LONGEST)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The wait before the next attempt.
    fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(Self::LONGEST)
    }

    /// Waits the next delay, or returns `false` at once when `shutdown` fires first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Starts again from the shortest delay, after a success.
    pub fn reset(&mut self) {
        self.delays = Self::schedule();
    }
}

impl AmqpArgs {
    /// Connects, retrying with capped exponential backoff for as long as RabbitMQ is away.
    /// Returns `None` only when `shutdown` fires first.
    pub async fn connect_with_retry(
        &self,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Option<Connection> {
        let mut backoff = Backoff::default();
        loop {
            let attempt = tokio::select! {
                () = shutdown.cancelled() => return None,
                attempt = self.connect(name) => attempt,
            };
            match attempt {
                Ok(connection) => return Some(connection),
                Err(error) => {
                    tracing::warn!(%error, "RabbitMQ is unreachable");
                }
            }
            if !backoff.wait(shutdown).await {
                return None;
            }
        }
    }
}

/// Opens a channel on `connection` in publisher-confirm mode.
pub async fn confirm_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// A message that RabbitMQ did not take for sure.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot publish to {exchange}: {source}")]
    Publish {
        exchange: String,
        #[source]
        source: lapin::Error,
    },
    #[error("RabbitMQ did not confirm the message on {exchange}: {confirmation}")]
    NotConfirmed {
        exchange: String,
        confirmation: String,
    },
}

/// Publishes a persistent message as `mandatory` on a channel in confirm mode and waits for the
/// broker's confirm. A nack, or a message returned because nothing was bound to take it, is an
/// error: the caller still owns the message.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    headers: FieldTable,
    message_id: Option<ShortString>,
) -> Result<(), PublishError> {
    let pending =
        publish_persistent(channel, exchange, routing_key, body, headers, message_id).await?;
    confirmed(exchange, pending).await
}

/// Sends a persistent, `mandatory` message and returns its pending confirm, so a publisher can
/// keep many messages in flight and await their confirms in order.
pub async fn publish_persistent(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    headers: FieldTable,
    message_id: Option<ShortString>,
) -> Result<PublisherConfirm, PublishError> {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(id) = message_id {
        properties = properties.with_message_id(id);
    }
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await
        .map_err(|source| PublishError::Publish {
            exchange: exchange.to_owned(),
            source,
        })
}

/// Waits for the broker's answer to a message sent to `exchange`; only a plain ack is success.
pub async fn confirmed(exchange: &str, pending: PublisherConfirm) -> Result<(), PublishError> {
    let confirmation = pending.await.map_err(|source| PublishError::Publish {
        exchange: exchange.to_owned(),
        source,
    })?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        other => Err(PublishError::NotConfirmed {
            exchange: exchange.to_owned(),
            confirmation: format!("{other:?}"),
        }),
    }
}

/// Replaces the `user:password@` part of a URL with `***@`.
fn redact_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}***{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_a_cap_each_stretched_by_a_random_part_of_itself() {
        let mut backoff = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        let mut base = Backoff::FIRST;
        for delay in &delays {
            assert!(
                *delay >= base && *delay < base * 2,
                "{delay:?} outside [{base:?}, {:?})",
                base * 2
            );
            base = (base * 2).min(Backoff::LONGEST);
        }
        let mut other = Backoff::default();
        let others: Vec<Duration> = (0..10).map(|_| other.next_delay()).collect();
        assert_ne!(delays, others, "two processes would retry in lockstep");
        backoff.reset();
        assert!(backoff.next_delay() < Backoff::FIRST * 2);
    }

    #[test]
    fn credentials_never_reach_log_lines() {
        assert_eq!(
            redact_credentials("amqps://svc:s3cr3t@mq.internal:5671/prod"),
            "amqps://***@mq.internal:5671/prod"
        );
        assert_eq!(
            redact_credentials("amqp://mq.internal/%2f"),
            "amqp://mq.internal/%2f"
        );
    }
}
