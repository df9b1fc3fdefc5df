//! The publisher: reconcile CloudEvents to the exchange on a confirm-mode channel, pipelined,
//! `mandatory`; an event counts as published only once the broker confirmed it and routed it to a
//! queue (a returned event is [`Error::Unroutable`]).

use std::collections::HashSet;

use cloudevents::AttributesReader;
use hyperfleet_common::{
    cloudevent::{self, ReconcileData},
    telemetry,
};
use lapin::{
    Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};

use tracing::Instrument;

use crate::{Error, Resource, SentinelConfig, decision::Reason, leader::Leadership};

/// The reconcile CloudEvent announcing `r`.
pub fn event_for(r: &Resource) -> Result<cloudevents::Event, cloudevent::EventError> {
    cloudevent::reconcile_event(&ReconcileData {
        id: r.id.clone(),
        kind: r.kind.clone(),
        href: r.href.clone(),
        generation: r.generation,
        owner_references: r.owner_references.clone(),
    })
}

/// The span of one event, from its send to the broker's confirm (none when tracing is off). The
/// first announcement of a new generation continues the trace of the request that made it; any
/// later one (a retry after `max_age_not_ready`, a periodic re-announcement) starts a trace of its
/// own, linked to that one, so a trace does not grow for as long as adapters lag.
fn publish_span(r: &Resource, reason: Reason, first: bool, exchange: &str, routing_key: &str) -> tracing::Span {
    let span = hyperfleet_common::trace_span!(
        "publish",
        otel.name = %format!("publish {routing_key}"),
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.destination.name = exchange,
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = tracing::field::Empty,
        hyperfleet.resource.id = %r.id,
        hyperfleet.resource.generation = r.generation,
        hyperfleet.reason = reason.as_str(),
    );
    if let Some(parent) = r.traceparent.as_deref() {
        match reason {
            Reason::New | Reason::GenerationChanged if first => telemetry::continue_from(&span, Some(parent), None),
            _ => telemetry::link_to(&span, parent),
        }
    }
    span
}

/// A confirm-mode channel on its own connection.
pub struct Publisher {
    conn: Connection,
    channel: Channel,
    exchange: String,
}

/// Events in flight (published, confirm not yet awaited) at most.
const PIPELINE: usize = 512;

impl Publisher {
    pub async fn open(cfg: &SentinelConfig) -> Result<Self, Error> {
        let conn = cfg.broker.connect("hyperfleet-sentinel").await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        if let Err(e) = cfg.broker.declare_exchange(&channel).await {
            let _ = conn.close(200, "exchange declaration failed".into()).await;
            return Err(e.into());
        }
        Ok(Publisher { conn, channel, exchange: cfg.broker.exchange.clone() })
    }

    pub fn is_open(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }

    /// Publishes one reconcile event per resource, pipelined: up to [`PIPELINE`] events are sent
    /// before their confirms are awaited. One result per input, in order; `Ok` only once the
    /// broker confirmed and did not return it. Leadership is checked before every send: once it is
    /// lost, the rest is not published and has no result (the results are fewer than `due`).
    pub async fn publish_all(
        &self,
        due: &[(&Resource, Reason)],
        routing_key: &str,
        leadership: &Leadership,
        announced: &HashSet<String>,
    ) -> Vec<Result<String, Error>> {
        let mut results = Vec::with_capacity(due.len());
        for chunk in due.chunks(PIPELINE) {
            let mut inflight = Vec::with_capacity(chunk.len());
            for (r, reason) in chunk {
                if !leadership.is_leader() {
                    break;
                }
                let first = !announced.contains(&r.id);
                let span = publish_span(r, *reason, first, &self.exchange, routing_key);
                inflight.push((self.send(r, routing_key).instrument(span.clone()).await, span));
            }
            let lost = inflight.len() < chunk.len();
            // Every confirm first: lapin hands a returned message to whichever confirm completes
            // next, so returned events are told apart by their message id (the event id).
            let mut returned = HashSet::new();
            let mut confirmed = Vec::with_capacity(inflight.len());
            for (sent, span) in inflight {
                let outcome = match sent {
                    Ok((id, confirm)) => match confirm.instrument(span.clone()).await {
                        Ok(Confirmation::Ack(back)) => {
                            if let Some(back) = back {
                                let back_id = back.properties.message_id().as_ref().map(|m| m.to_string());
                                returned.insert(back_id.unwrap_or_else(|| id.clone()));
                            }
                            Ok(id)
                        }
                        Ok(_) => Err(Error::NotConfirmed(id)),
                        Err(e) => Err(e.into()),
                    },
                    Err(e) => Err(e),
                };
                confirmed.push((outcome, span));
            }
            results.extend(confirmed.into_iter().map(|(c, span)| {
                let result = match c {
                    Ok(id) if returned.contains(&id) => Err(Error::Unroutable {
                        event_id: id,
                        exchange: self.exchange.clone(),
                        routing_key: routing_key.to_string(),
                    }),
                    other => other,
                };
                if let Err(e) = &result {
                    telemetry::fail(&span, e);
                }
                result // the span ends here, with the broker's answer
            }));
            if lost {
                tracing::info!(left = due.len() - results.len(), "leadership lost; not publishing the rest");
                break;
            }
        }
        results
    }

    async fn send(&self, r: &Resource, routing_key: &str) -> Result<(String, lapin::PublisherConfirm), Error> {
        let mut event = event_for(r)?;
        cloudevent::add_trace_context(&mut event);
        tracing::Span::current().record("messaging.message.id", event.id());
        let (body, props) = cloudevent::encode(&event)?;
        let id = event.id().to_string();
        let confirm = self
            .channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                &body,
                props,
            )
            .await?;
        Ok((id, confirm))
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "sentinel stopping".into()).await;
        let _ = self.conn.close(200, "sentinel stopping".into()).await;
    }
}
