//! Coalescing: each partner's rate changes wait in an outbox in bus state until its
//! window closes, then become one delivery (latest version of each SKU, in version order).
//!
//! The outbox write happens before the stream entry is acknowledged and the window's
//! timer lives in the bus, so a crash at any point loses nothing: an unacknowledged entry
//! is merged again (a version not newer than the stored one changes nothing), and
//! outboxes without a timer are found by the start-up sweep.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ratemesh_bus::{Bus, BusError, BusResult, StateWrite, Update};
use rust_decimal::Decimal;

use crate::config::Config;
use crate::model::{
    DeliveryRecord, FLUSHES, OUTBOX, OUTBOX_OPENED_AT, OutboxItem, PartnerRecord, SENT, Status,
    outbox_field,
};
use crate::scheduling::{Enqueue, deterministic_id};
use crate::store::{Partners, now_ms, time_of};
use crate::webhook::{RATE_CHANGED, WebhookBody, rfc3339_ms};

#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    bus: Bus,
    config: Arc<Config>,
    partners: Partners,
    enqueue: Enqueue,
}

fn items_of(fields: &BTreeMap<String, Bytes>) -> Vec<(String, OutboxItem)> {
    fields
        .iter()
        .filter(|(k, _)| k.starts_with("item:"))
        .filter_map(|(k, v)| Some((k.clone(), serde_json::from_slice(v).ok()?)))
        .collect()
}

impl Outbox {
    pub(crate) fn new(bus: Bus, config: Arc<Config>, partners: Partners, enqueue: Enqueue) -> Self {
        Self {
            bus,
            config,
            partners,
            enqueue,
        }
    }

    /// Adds a rate change for `partner`; a newer version of the same SKU replaces an
    /// older one, an older or equal version changes nothing.
    ///
    /// Reads only the SKU's item and the window's opening time, not the whole outbox: a
    /// bulk repricing adds thousands of items to one window, and reading them all on each
    /// add would make the window's cost grow with the square of its size.
    pub(crate) async fn add(&self, partner: &PartnerRecord, item: OutboxItem) -> BusResult<()> {
        let field = outbox_field(&item.rate.sku);
        let opened = self
            .bus
            .update_state_fields(
                OUTBOX,
                &partner.id,
                &[&field, OUTBOX_OPENED_AT],
                |record, write| {
                    let (field, mut item) = (field.clone(), item.clone());
                    async move {
                        let fields = record.map(|r| r.fields).unwrap_or_default();
                        let existing: Option<OutboxItem> = fields
                            .get(&field)
                            .and_then(|b| serde_json::from_slice(b).ok());
                        match &existing {
                            Some(old) if old.rate.version >= item.rate.version => {
                                return Ok(Update::Keep(false));
                            }
                            // The partner has not seen the intermediate rate: it still knows
                            // the one before the first change of the window.
                            Some(old) => item.rate.previous_rate = old.rate.previous_rate.clone(),
                            None => {
                                if self.below_min_change(partner, &item).await? {
                                    return Ok(Update::Keep(false));
                                }
                            }
                        }
                        // The opening time is there exactly while the outbox holds items
                        // (`remove_sent_items` takes it away with the last one).
                        let first = !fields.contains_key(OUTBOX_OPENED_AT);
                        let mut write =
                            write.set(field, serde_json::to_vec(&item).unwrap_or_default());
                        if first {
                            write = write.set(OUTBOX_OPENED_AT, now_ms().to_string());
                        }
                        Ok::<_, BusError>(Update::Write(write, first))
                    }
                },
            )
            .await?;
        if opened {
            let due = now_ms() + self.config.coalesce_window.as_millis() as i64;
            self.bus
                .schedule(FLUSHES, &partner.id, time_of(due))
                .await?;
        }
        Ok(())
    }

    /// Whether the change is smaller than the partner's `min_change`, measured against
    /// the last rate sent to it (a SKU never sent is always sent).
    async fn below_min_change(
        &self,
        partner: &PartnerRecord,
        item: &OutboxItem,
    ) -> BusResult<bool> {
        let Some(min) = partner.filters.min_change.filter(|m| !m.is_zero()) else {
            return Ok(false);
        };
        let Ok(new) = item.rate.rate.parse::<Decimal>() else {
            return Ok(false);
        };
        let last = self
            .bus
            .get_state_fields(SENT, &partner.id, &[&item.rate.sku])
            .await?
            .and_then(|r| r.fields.get(&item.rate.sku).cloned())
            .and_then(|b| std::str::from_utf8(&b).ok()?.parse::<Decimal>().ok());
        Ok(matches!(last, Some(last) if (new - last).abs() < min))
    }

    /// Turns the partner's outbox into a delivery (or several, past the size limit).
    pub(crate) async fn flush(&self, partner_id: &str) -> BusResult<()> {
        let Some(record) = self.bus.get_state(OUTBOX, partner_id).await? else {
            return Ok(());
        };
        let mut items = items_of(&record.fields);
        if items.is_empty() {
            return Ok(());
        }
        let partner = self.partners.get(partner_id).await?.map(|(_, p)| p);
        let Some(partner) = partner.filter(|p| p.enabled) else {
            // A deleted or disabled partner accumulates nothing.
            self.bus
                .delete_state(
                    OUTBOX,
                    partner_id,
                    ratemesh_bus::Expect::Version(record.version),
                )
                .await
                .or_else(|e| match e {
                    BusError::Conflict { .. } => Ok(true),
                    e => Err(e),
                })?;
            return Ok(());
        };
        items.sort_by(|a, b| {
            (a.1.rate.version, &a.1.rate.sku).cmp(&(b.1.rate.version, &b.1.rate.sku))
        });
        let split = items.len() > self.config.max_rates_per_delivery;
        items.truncate(self.config.max_rates_per_delivery);

        let opened_at = record
            .fields
            .get(OUTBOX_OPENED_AT)
            .and_then(|b| std::str::from_utf8(b).ok()?.parse::<i64>().ok())
            .unwrap_or_else(now_ms);
        // Derived from the outbox version, so a flush retried after a crash finds the
        // delivery it already made instead of making a second one.
        let id = deterministic_id(
            opened_at,
            &[partner_id, "flush", &record.version.to_string()],
        );
        let latest = items
            .iter()
            .max_by_key(|(_, i)| i.occurred_at_ms)
            .map(|(_, i)| i.clone());
        let occurred_at_ms = latest
            .as_ref()
            .map(|i| i.occurred_at_ms)
            .unwrap_or(opened_at);
        let body = WebhookBody {
            event_id: id.clone(),
            event_type: RATE_CHANGED.to_owned(),
            occurred_at: rfc3339_ms(occurred_at_ms),
            rates: Some(items.iter().map(|(_, i)| i.rate.clone()).collect()),
            incentive: None,
        };
        let now = now_ms();
        let delivery = DeliveryRecord {
            id: id.clone(),
            partner_id: partner_id.to_owned(),
            event_id: id,
            event_type: RATE_CHANGED.to_owned(),
            status: Status::Pending,
            attempts: 0,
            last_error: String::new(),
            last_response_code: 0,
            next_attempt_at_ms: Some(now),
            created_at_ms: now,
            round_started_at_ms: now,
            delivered_at_ms: None,
            skus: items.iter().map(|(_, i)| i.rate.sku.clone()).collect(),
            traceparent: latest.and_then(|i| i.traceparent),
            body: serde_json::to_string(&body).unwrap_or_default(),
        };
        self.enqueue.enqueue(&delivery).await?;

        if partner.filters.min_change.is_some_and(|m| !m.is_zero()) {
            let mut sent = StateWrite::new(SENT, partner_id.to_owned());
            for (_, item) in &items {
                sent = sent.set(item.rate.sku.clone(), item.rate.rate.clone().into_bytes());
            }
            self.bus.write_state(sent).await?;
        }

        let included: Vec<(String, u64)> = items
            .iter()
            .map(|(field, i)| (field.clone(), i.rate.version))
            .collect();
        self.remove_sent_items(partner_id, &included, split).await
    }

    /// Removes the items a delivery was made of, unless a newer version replaced them
    /// meanwhile; schedules the next window if anything is left.
    async fn remove_sent_items(
        &self,
        partner_id: &str,
        included: &[(String, u64)],
        split: bool,
    ) -> BusResult<()> {
        // The outbox may hold thousands of items while `add`s keep changing it: the pass
        // between reading it and writing it back decodes the delivered items only, or it
        // loses the race to every `add`. The rest are counted by their keys; one that does
        // not decode costs at most a window whose flush finds nothing to deliver.
        let remaining = self
            .bus
            .update_state(OUTBOX, partner_id, |record, write| async move {
                let Some(record) = record else {
                    return Ok::<_, BusError>(Update::Keep(0));
                };
                let mut write = write;
                let mut removed = 0usize;
                for (field, version) in included {
                    let unchanged = record
                        .fields
                        .get(field)
                        .and_then(|bytes| serde_json::from_slice::<OutboxItem>(bytes).ok())
                        .is_some_and(|item| item.rate.version == *version);
                    if unchanged {
                        write = write.remove(field.clone());
                        removed += 1;
                    }
                }
                let remaining = record
                    .fields
                    .keys()
                    .filter(|k| k.starts_with("item:"))
                    .count()
                    - removed;
                if remaining == 0 {
                    write = write.remove(OUTBOX_OPENED_AT);
                } else {
                    write = write.set(OUTBOX_OPENED_AT, now_ms().to_string());
                }
                Ok(Update::Write(write, remaining))
            })
            .await?;
        if remaining > 0 {
            let delay = if split {
                Duration::ZERO
            } else {
                self.config.coalesce_window
            };
            let due = now_ms() + delay.as_millis() as i64;
            self.bus.schedule(FLUSHES, partner_id, time_of(due)).await?;
        }
        Ok(())
    }

    /// Schedules a flush for every outbox holding items (start-up recovery: the process
    /// may have died between writing an outbox and scheduling its window).
    pub(crate) async fn recover(&self) -> BusResult<usize> {
        let mut page: Option<String> = None;
        let mut scheduled = 0;
        loop {
            let result = self.bus.scan_states(OUTBOX, page.as_deref(), 500).await?;
            for (partner_id, record) in result.items {
                if items_of(&record.fields).is_empty() {
                    continue;
                }
                let opened_at = record
                    .fields
                    .get(OUTBOX_OPENED_AT)
                    .and_then(|b| std::str::from_utf8(b).ok()?.parse::<i64>().ok())
                    .unwrap_or_else(now_ms);
                let due = opened_at + self.config.coalesce_window.as_millis() as i64;
                self.bus
                    .schedule(FLUSHES, &partner_id, time_of(due))
                    .await?;
                scheduled += 1;
            }
            match result.next {
                Some(next) => page = Some(next),
                None => return Ok(scheduled),
            }
        }
    }
}
