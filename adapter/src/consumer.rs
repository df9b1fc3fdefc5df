//! The consumer: the queue, its dead-letter queue and binding declared, deliveries handled
//! `prefetch` at a time — acknowledged when done, dead-lettered (confirmed first) when they are not
//! reconcile events, put back when the API refuses the adapter's credentials.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use hyperfleet_common::cloudevent::EventError;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use tokio_util::sync::CancellationToken;

use crate::{AdapterConfig, Error, Outcome, Worker, process};

/// Declares the topology and consumes until the connection drops or shutdown.
pub(crate) async fn consume(
    worker: &Arc<Worker>,
    consuming: &AtomicBool,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let cfg = &worker.cfg;
    let conn = cfg.broker.connect(&format!("hyperfleet-adapter-{}", cfg.name)).await?;
    let channel = conn.create_channel().await?;
    cfg.broker.declare_exchange(&channel).await?;
    declare_dead_letter_queue(&channel, cfg).await?;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(cfg.queue.as_str().into(), durable, FieldTable::default()).await?;
    channel
        .queue_bind(
            cfg.queue.as_str().into(),
            cfg.broker.exchange.as_str().into(),
            cfg.binding_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Dead letters go out on their own confirm-mode channel: a poison message is acknowledged only
    // after the broker has confirmed its dead-letter copy.
    let dlq = conn.create_channel().await?;
    dlq.confirm_select(ConfirmSelectOptions::default()).await?;
    channel.basic_qos(cfg.prefetch, BasicQosOptions::default()).await?;
    let tag = format!("{}-{}", cfg.queue, uuid::Uuid::new_v4());
    let consumer = channel
        .basic_consume(
            cfg.queue.as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    consuming.store(true, Ordering::Relaxed);
    metrics::gauge!("hyperfleet_adapter_up").set(1.0);
    tracing::info!(queue = %cfg.queue, consumer_tag = %tag, prefetch = cfg.prefetch, "consuming");

    let dlq = &dlq;
    consumer
        .take_until(shutdown.cancelled())
        .for_each_concurrent(usize::from(cfg.prefetch), |delivery| async move {
            match delivery {
                Ok(d) => handle(worker, dlq, d).await,
                Err(e) => tracing::warn!(error = %e, "delivery error"),
            }
        })
        .await;
    close(conn, channel).await;
    Ok(())
}

async fn close(conn: Connection, channel: Channel) {
    let _ = channel.close(200, "adapter stopping".into()).await;
    let _ = conn.close(200, "adapter stopping".into()).await;
}

pub fn dead_letter_queue(cfg: &AdapterConfig) -> String {
    format!("{}.dead-letter", cfg.queue)
}

/// Declares `<queue>.dead-letter`, durable (idempotent).
async fn declare_dead_letter_queue(channel: &Channel, cfg: &AdapterConfig) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(dead_letter_queue(cfg).as_str().into(), durable, FieldTable::default()).await.map(|_| ())
}

async fn handle(worker: &Worker, dlq: &Channel, delivery: Delivery) {
    let started = std::time::Instant::now();
    let outcome = process(worker, &delivery).await;
    let label = match &outcome {
        Outcome::Done(what) => {
            if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                tracing::warn!(error = %e, "ack failed; the event will be redelivered");
            }
            *what
        }
        Outcome::Poison(reason) => {
            tracing::warn!(reason = reason.label(), error = %reason, "dead-lettering a message that is not a reconcile event");
            metrics::counter!("hyperfleet_adapter_dead_letters_total", "reason" => reason.label()).increment(1);
            match dead_letter(dlq, &worker.cfg, &delivery, reason).await {
                Ok(()) => {
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot dead-letter; requeueing");
                    // Someone deleted the dead-letter queue: declare it again.
                    if matches!(e, Error::Unroutable(_))
                        && let Err(e) = declare_dead_letter_queue(dlq, &worker.cfg).await
                    {
                        tracing::warn!(error = %e, "cannot declare the dead-letter queue");
                    }
                    pause().await;
                    let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                }
            }
            "dead_lettered"
        }
        Outcome::Requeue => {
            // Not processed: neither acknowledged nor counted as an outcome; it comes back.
            tokio::time::sleep(REQUEUE_PAUSE).await;
            if let Err(e) = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await {
                tracing::warn!(error = %e, "requeue failed; the broker redelivers the event when the channel closes");
            }
            return;
        }
    };
    metrics::counter!("hyperfleet_adapter_events_processed_total", "status" => label).increment(1);
    metrics::histogram!("hyperfleet_adapter_event_processing_duration_seconds").record(started.elapsed().as_secs_f64());
}

/// How long an event the API refused to let the adapter work on waits before it is put back (on
/// top of the in-process retries), so that refused credentials do not spin the queue.
const REQUEUE_PAUSE: Duration = Duration::from_secs(2);

/// A pause before a requeue so a persistent failure does not spin.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Publishes the dead-letter copy `mandatory` and waits for the broker's confirm: `Ok` only once
/// the copy is in `<queue>.dead-letter` (a returned copy — the queue deleted — is an error).
async fn dead_letter(
    dlq: &Channel,
    cfg: &AdapterConfig,
    delivery: &Delivery,
    reason: &EventError,
) -> Result<(), Error> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert("x-hyperfleet-dead-letter-reason".into(), AMQPValue::LongString(reason.to_string().into()));
    headers.insert("x-hyperfleet-dead-letter-code".into(), AMQPValue::LongString(reason.label().into()));
    headers.insert("x-hyperfleet-original-exchange".into(), AMQPValue::LongString(delivery.exchange.as_str().into()));
    headers.insert(
        "x-hyperfleet-original-routing-key".into(),
        AMQPValue::LongString(delivery.routing_key.as_str().into()),
    );
    let mut props = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
    if let Some(ct) = delivery.properties.content_type() {
        props = props.with_content_type(ct.clone());
    }
    let queue = dead_letter_queue(cfg);
    let confirm = dlq
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions { mandatory: true, ..Default::default() },
            &delivery.data,
            props,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Error::Unroutable(format!("the dead-letter queue {queue} does not exist"))),
        _ => Err(Error::Unroutable(format!("the broker did not confirm the dead-letter copy in {queue}"))),
    }
}
