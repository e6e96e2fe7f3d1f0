//! Inspecting and redriving the dead-letter queue (`uploader dlq list|redrive`).
//!
//! Messages are read with `basic.get` without auto-ack, and every message read is moved, never
//! returned (see [`walk`]): a redriven one to the upload exchange, a kept one to the tail of the
//! dead-letter queue. The original is acknowledged only after RabbitMQ confirmed its copy.

use anyhow::Context;
use common::amqp::publish_confirmed;
use common::clock::now_unix_ms;
use common::event::TenantId;
use common::job::header;
use common::topology::{
    DEAD_ROUTING_KEY, UPLOAD_DELIVERY_LIMIT, UPLOAD_ROUTING_KEY, UploadTopology,
};
use lapin::Channel;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};

use crate::failure::header as failure_header;

/// One dead-lettered job as `dlq list` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// Left in the dead-letter queue (in their order): other tenants, or past the limit.
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
        ..failure(&headers)
    }
}

/// The failure a dead-lettered message carries: the uploader's headers, or, for a job RabbitMQ
/// moved itself (past the upload queue's delivery limit), the broker's reason.
fn failure(headers: &FieldTable) -> DeadJob {
    let by_broker = !headers.inner().contains_key(failure_header::CLASS);
    let reason = broker_reason(headers).filter(|_| by_broker);
    match reason {
        Some(reason) => DeadJob {
            class: "broker".into(),
            message: format!(
                "RabbitMQ moved the job here ({reason}): uploaders holding it died or lost their connection {UPLOAD_DELIVERY_LIMIT} times"
            ),
            code: reason,
            ..DeadJob::default()
        },
        None => DeadJob {
            class: text(headers, failure_header::CLASS),
            code: text(headers, failure_header::CODE),
            message: text(headers, failure_header::MESSAGE),
            ..DeadJob::default()
        },
    }
}

/// The `reason` of the latest entry of RabbitMQ's `x-death` header.
fn broker_reason(headers: &FieldTable) -> Option<String> {
    let Some(AMQPValue::FieldArray(deaths)) = headers.inner().get("x-death") else {
        return None;
    };
    deaths.as_slice().iter().find_map(|death| match death {
        AMQPValue::FieldTable(death) => Some(text(death, "reason")),
        _ => None,
    })
}

/// What a walk does with one dead-lettered message.
enum Decision {
    /// Leave it in the dead-letter queue.
    Keep,
    /// Send it back to the upload exchange with a fresh retry budget.
    Redrive,
}

/// Walks once through the messages in the dead-letter queue when the walk starts, handing each
/// to `decide`. A kept message is published again at the queue's tail and the original
/// acknowledged once RabbitMQ confirmed the copy, so after a full walk the kept messages are in
/// their old order and none was *returned* to the queue: a return counts as a failed delivery
/// towards a quorum queue's delivery limit (RabbitMQ 4 drops a message past 20 by default), so
/// listing the queue must never return one. A crash between a copy and its acknowledgement
/// leaves a duplicate job in the queue (harmless: `If-None-Match`), never a lost one.
async fn walk(
    channel: &Channel,
    topology: &UploadTopology,
    mut decide: impl FnMut(&DeadJob) -> Decision,
) -> anyhow::Result<()> {
    let mut remaining: Option<u32> = None;
    while remaining != Some(0) {
        let Some(message) = channel
            .basic_get(
                topology.dead_letter_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await?
        else {
            break;
        };
        // The first message says how many were behind it: the walk ends there, before the
        // copies it made come round again.
        let left = *remaining.get_or_insert(message.message_count.saturating_add(1));
        remaining = Some(left - 1);
        let job = describe(&message);
        let moved = match decide(&job) {
            Decision::Keep => keep(channel, topology, &message).await,
            Decision::Redrive => republish(channel, topology, &message).await,
        };
        match moved {
            Ok(()) => {
                message
                    .delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .context("cannot acknowledge a dead-lettered message")?;
            }
            Err(error) => {
                // Returned unchanged: one delivery counted against it, nothing lost.
                message
                    .delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
                return Err(error.context(format!(
                    "moving {} failed; it stays in the dead-letter queue",
                    job.key
                )));
            }
        }
    }
    Ok(())
}

/// Lists the dead-lettered jobs (of one tenant, if given), leaving them in place and in order.
pub async fn list(
    channel: &Channel,
    topology: &UploadTopology,
    tenant: Option<&TenantId>,
) -> anyhow::Result<Vec<DeadJob>> {
    let mut jobs = Vec::new();
    walk(channel, topology, |job| {
        if tenant.is_none_or(|t| job.tenant == t.as_str()) {
            jobs.push(job.clone());
        }
        Decision::Keep
    })
    .await?;
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
    let mut summary = RedriveSummary::default();
    walk(channel, topology, |job| {
        let wanted = tenant.is_none_or(|t| job.tenant == t.as_str())
            && limit.is_none_or(|l| summary.redriven.len() < l);
        if wanted {
            summary.redriven.push(job.clone());
            Decision::Redrive
        } else {
            summary.kept += 1;
            Decision::Keep
        }
    })
    .await?;
    Ok(summary)
}

/// Publishes a copy of a dead-lettered message at the dead-letter queue's tail, unchanged.
async fn keep(
    channel: &Channel,
    topology: &UploadTopology,
    message: &BasicGetMessage,
) -> anyhow::Result<()> {
    publish_confirmed(
        channel,
        &topology.dead_letter_exchange,
        DEAD_ROUTING_KEY,
        &message.delivery.data,
        message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default(),
        message.delivery.properties.message_id().clone(),
    )
    .await?;
    Ok(())
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
    for name in failure_header::ALL.into_iter().chain(["x-death"]) {
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
