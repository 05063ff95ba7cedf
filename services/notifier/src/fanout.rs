//! Fan-out: reads the `rates` and `incentives` streams (consumer group `notifier`) and
//! hands every change to each partner whose filters match — rate changes into the
//! partner's outbox for coalescing, incentive changes straight to a delivery. An entry
//! is acknowledged only after that is stored in the bus.

use ratemesh_contract::time::to_millis;
use std::sync::Arc;

use prost::Message;
use ratemesh_bus::trace_context::BatchSpans;
use ratemesh_bus::{Bus, Delivery};
use ratemesh_contract::streams;
use ratemesh_proto::v1;
use ratemesh_runtime::consumer::{self, ConsumerSpec, Settled};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::model::{DeliveryRecord, OutboxItem, Status};
use crate::outbox::Outbox;
use crate::scheduling::{Enqueue, deterministic_id};
use crate::store::{Partners, now_ms};
use crate::webhook::{
    INCENTIVE_CHANGED, RATE_CHANGED, WebhookBody, incentive_of, rate_of, rfc3339_ms,
};

/// Kinds of the entries delivered to partners (the contract's).
pub use ratemesh_contract::kinds::{
    INCENTIVE_CHANGED as INCENTIVE_CHANGED_KIND, RATE_CHANGED as RATE_CHANGED_KIND,
};

#[derive(Debug, Clone)]
pub(crate) struct Fanout {
    pub(crate) bus: Bus,
    pub(crate) partners: Partners,
    pub(crate) outbox: Outbox,
    pub(crate) enqueue: Enqueue,
}

impl Fanout {
    /// Consumes `stream` in the notifier's group until shutdown (the shared consumer
    /// driver).
    pub(crate) async fn run(
        self: Arc<Self>,
        stream: &'static str,
        consumer_name: String,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let spec = ConsumerSpec {
            stream,
            group: streams::readers::NOTIFIER.group,
            name: consumer_name,
        };
        let bus = self.bus.clone();
        consumer::run(bus, spec, None, shutdown, |batch| {
            let this = self.clone();
            async move { this.handle_batch(batch).await }
        })
        .await
    }

    /// Handles each entry; unacked entries come back, and handling them again changes
    /// nothing.
    async fn handle_batch(&self, batch: Vec<Delivery>) -> Settled {
        let mut settled = Settled::default();
        // One span per trace of the batch, not per entry.
        let spans = BatchSpans::new(streams::readers::NOTIFIER.group, &batch);
        for entry in batch {
            match self.handle(&entry).instrument(spans.of(&entry)).await {
                Ok(()) => settled.ack.push(entry),
                Err(e) => settled.nack.push((entry, e.to_string())),
            }
        }
        settled
    }

    async fn handle(&self, entry: &Delivery) -> anyhow::Result<()> {
        match entry.kind.as_deref() {
            Some(RATE_CHANGED_KIND) => {
                let event = v1::RateChanged::decode(entry.payload.as_ref())?;
                self.rate_changed(entry, event).await
            }
            Some(INCENTIVE_CHANGED_KIND) => {
                let event = v1::IncentiveChanged::decode(entry.payload.as_ref())?;
                self.incentive_changed(entry, event).await
            }
            // Other kinds on these streams are not for partners.
            _ => Ok(()),
        }
    }

    async fn rate_changed(&self, entry: &Delivery, event: v1::RateChanged) -> anyhow::Result<()> {
        let card = event
            .card
            .ok_or_else(|| anyhow::anyhow!("RateChanged without a card"))?;
        let meta = event.meta.unwrap_or_default();
        let item = OutboxItem {
            rate: rate_of(&card, &event.previous_rate),
            occurred_at_ms: meta.occurred_at.as_ref().map_or_else(now_ms, to_millis),
            traceparent: traceparent_of(entry, &meta),
        };
        let partners = self.partners.cached().await?;
        for partner in partners
            .iter()
            .filter(|p| p.wants(RATE_CHANGED, &card.sku, &card.category))
        {
            self.outbox.add(partner, item.clone()).await?;
        }
        Ok(())
    }

    async fn incentive_changed(
        &self,
        entry: &Delivery,
        event: v1::IncentiveChanged,
    ) -> anyhow::Result<()> {
        let transition = event.transition();
        let incentive = event
            .incentive
            .ok_or_else(|| anyhow::anyhow!("IncentiveChanged without an incentive"))?;
        let meta = event.meta.unwrap_or_default();
        let occurred_at_ms = meta.occurred_at.as_ref().map_or_else(now_ms, to_millis);
        // The stream position identifies the event when the producer gave no id.
        let event_key = if meta.event_id.is_empty() {
            format!("{}/{}/{}", entry.stream, entry.partition, entry.id)
        } else {
            meta.event_id.clone()
        };
        let payload = incentive_of(&incentive, transition);
        let partners = self.partners.cached().await?;
        for partner in partners
            .iter()
            .filter(|p| p.wants(INCENTIVE_CHANGED, &incentive.sku, &incentive.category))
        {
            // One delivery per partner and event, whatever the number of redeliveries.
            let id = deterministic_id(occurred_at_ms, &[&partner.id, "incentive", &event_key]);
            let body = WebhookBody {
                event_id: id.clone(),
                event_type: INCENTIVE_CHANGED.to_owned(),
                occurred_at: rfc3339_ms(occurred_at_ms),
                rates: None,
                incentive: Some(payload.clone()),
            };
            let now = now_ms();
            let delivery = DeliveryRecord {
                id: id.clone(),
                partner_id: partner.id.clone(),
                event_id: id,
                event_type: INCENTIVE_CHANGED.to_owned(),
                status: Status::Pending,
                attempts: 0,
                last_error: String::new(),
                last_response_code: 0,
                next_attempt_at_ms: Some(now),
                created_at_ms: now,
                round_started_at_ms: now,
                delivered_at_ms: None,
                skus: vec![incentive.sku.clone()],
                traceparent: traceparent_of(entry, &meta),
                body: serde_json::to_string(&body)?,
            };
            self.enqueue.enqueue(&delivery).await?;
        }
        Ok(())
    }
}

/// The trace a delivery continues: the span handling the entry (so the partner POST is a
/// child of this stage), else what the entry carried.
fn traceparent_of(entry: &Delivery, meta: &v1::EventMeta) -> Option<String> {
    ratemesh_bus::trace_context::current_traceparent()
        .or_else(|| entry.traceparent.clone())
        .or_else(|| (!meta.traceparent.is_empty()).then(|| meta.traceparent.clone()))
}
