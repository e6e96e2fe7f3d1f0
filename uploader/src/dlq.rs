//! Inspecting and redriving the dead-letter queue (`uploader dlq list|redrive`).
//!
//! Messages are read with `basic.get` without auto-ack. A redriven message is acknowledged on the
//! dead-letter queue only after RabbitMQ confirmed its copy on the upload exchange, so a crash in
//! between leaves a duplicate job (harmless: `If-None-Match`), never a lost one. Messages that are
//! not redriven are returned to the queue.

use common::amqp::publish_confirmed;
use common::clock::now_unix_ms;
use common::event::TenantId;
use common::job::header;
use common::topology::{UPLOAD_ROUTING_KEY, UploadTopology};
use lapin::Channel;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::consume::failure_header;

/// One dead-lettered job as `dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadJob {
    pub key: String,
    pub tenant: String,
    pub attempts: String,
    pub class: String,
    pub code: String,
    pub message: String,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedriveSummary {
    pub redriven: Vec<DeadJob>,
    /// Left in the dead-letter queue: other tenants, or past the limit.
    pub kept: usize,
}

fn text(headers: &FieldTable, name: &str) -> String {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_owned(),
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        Some(AMQPValue::LongInt(n)) => n.to_string(),
        Some(other) => format!("{other:?}"),
        None => "-".into(),
    }
}

fn describe(message: &BasicGetMessage) -> DeadJob {
    let headers = message
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    DeadJob {
        key: message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map_or_else(
                || text(&headers, header::RELATIVE_KEY),
                |id| id.as_str().to_owned(),
            ),
        tenant: text(&headers, header::TENANT),
        attempts: text(&headers, header::ATTEMPT),
        class: text(&headers, failure_header::CLASS),
        code: text(&headers, failure_header::CODE),
        message: text(&headers, failure_header::MESSAGE),
    }
}

/// Takes every message currently in the dead-letter queue, unacknowledged.
async fn take_all(
    channel: &Channel,
    topology: &UploadTopology,
) -> lapin::Result<Vec<BasicGetMessage>> {
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(
            topology.dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await?
    {
        taken.push(message);
    }
    Ok(taken)
}

async fn give_back(messages: Vec<BasicGetMessage>) -> lapin::Result<()> {
    for message in messages {
        message
            .delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await?;
    }
    Ok(())
}

/// Lists the dead-lettered jobs (of one tenant, if given), leaving them in place.
pub async fn list(
    channel: &Channel,
    topology: &UploadTopology,
    tenant: Option<&TenantId>,
) -> lapin::Result<Vec<DeadJob>> {
    let messages = take_all(channel, topology).await?;
    let jobs = messages
        .iter()
        .map(describe)
        .filter(|job| tenant.is_none_or(|t| job.tenant == t.as_str()))
        .collect();
    give_back(messages).await?;
    Ok(jobs)
}

/// Moves dead-lettered jobs (of one tenant, at most `limit`) back to the upload exchange with a
/// fresh attempt count and age, so they get the full retry budget again.
pub async fn redrive(
    channel: &Channel,
    topology: &UploadTopology,
    tenant: Option<&TenantId>,
    limit: Option<usize>,
) -> anyhow::Result<RedriveSummary> {
    let messages = take_all(channel, topology).await?;
    let mut summary = RedriveSummary::default();
    let mut kept = Vec::new();
    let mut remaining = messages.into_iter();
    for message in remaining.by_ref() {
        let job = describe(&message);
        let wanted = tenant.is_none_or(|t| job.tenant == t.as_str())
            && limit.is_none_or(|l| summary.redriven.len() < l);
        if !wanted {
            kept.push(message);
            continue;
        }
        match republish(channel, topology, &message).await {
            Ok(()) => {
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await?;
                summary.redriven.push(job);
            }
            Err(error) => {
                kept.push(message);
                give_back(kept).await?;
                give_back(remaining.collect()).await?;
                return Err(error.context(format!(
                    "redriving {} failed; it stays in the dead-letter queue",
                    job.key
                )));
            }
        }
    }
    summary.kept = kept.len();
    give_back(kept).await?;
    Ok(summary)
}

async fn republish(
    channel: &Channel,
    topology: &UploadTopology,
    message: &BasicGetMessage,
) -> anyhow::Result<()> {
    let mut entries = message
        .delivery
        .properties
        .headers()
        .as_ref()
        .map(|headers| headers.inner().clone())
        .unwrap_or_default();
    for name in [
        failure_header::CLASS,
        failure_header::STEP,
        failure_header::CODE,
        failure_header::MESSAGE,
        "x-death",
    ] {
        entries.remove(name);
    }
    entries.insert(header::ATTEMPT.into(), AMQPValue::LongLongInt(0));
    entries.insert(
        header::CREATED_AT.into(),
        AMQPValue::LongLongInt(now_unix_ms()),
    );
    publish_confirmed(
        channel,
        &topology.exchange,
        UPLOAD_ROUTING_KEY,
        &message.delivery.data,
        FieldTable::from(entries),
        message.delivery.properties.message_id().clone(),
    )
    .await?;
    Ok(())
}
