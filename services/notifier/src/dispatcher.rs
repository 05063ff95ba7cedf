//! The delivery loop: claims due attempts and coalescing windows from the bus timers and
//! runs attempts, isolated per partner.
//!
//! Isolation: every partner has its own slots (`max_in_flight_per_partner`); a due attempt
//! whose partner has no free slot, or whose endpoint's circuit breaker is open, is put
//! back on the schedule at once instead of waiting, so the loop never blocks on one
//! partner and other partners' attempts start on the next tick.
//!
//! Durability: before an attempt starts its timer is moved to the end of a lease (the
//! longest an attempt can take); the attempt then moves it to the next retry or cancels
//! it. A process killed mid-attempt therefore leaves the timer in the bus and another
//! replica (or the restarted one) tries again, with the same event id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ratemesh_bus::{Bus, BusResult};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::breaker::{Admission, Breakers};
use crate::config::Config;
use crate::delivery_metrics;
use crate::model::{ATTEMPTS, DeliveryRecord, FLUSHES, Status};
use crate::outbox::Outbox;
use crate::sender::{Request, Sender};
use crate::store::{Deliveries, Partners, now_ms, time_of};

/// Timers claimed per round.
const CLAIM_BATCH: usize = 256;

#[derive(Debug)]
pub(crate) struct Dispatcher {
    pub(crate) bus: Bus,
    pub(crate) config: Arc<Config>,
    pub(crate) partners: Partners,
    pub(crate) deliveries: Deliveries,
    pub(crate) outbox: Outbox,
    pub(crate) sender: Sender,
    pub(crate) breakers: Breakers,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Dispatcher {
    pub(crate) fn new(
        bus: Bus,
        config: Arc<Config>,
        partners: Partners,
        deliveries: Deliveries,
        outbox: Outbox,
        sender: Sender,
    ) -> Self {
        let breakers = Breakers::new(config.breaker_failure_threshold, config.breaker_open);
        Self {
            bus,
            config,
            partners,
            deliveries,
            outbox,
            sender,
            breakers,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Runs until `shutdown`, then waits (up to one request timeout) for attempts in
    /// flight; anything cut off is retried from its lease.
    pub(crate) async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Recovery must finish before claiming, or it could move fresh leases; retry it
        // while the bus is unreachable.
        loop {
            match self.recover().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "notifier recovery sweep failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        let mut tasks = JoinSet::new();
        let mut tick = tokio::time::interval(self.config.timer_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let prune_every = self.config.delivery_retention.min(Duration::from_secs(600));
        let mut last_prune = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            while tasks.try_join_next().is_some() {}
            if let Err(e) = self.poll(&mut tasks).await {
                tracing::warn!(error = %e, "claiming due notifier timers failed");
            }
            if last_prune.elapsed() >= prune_every {
                last_prune = Instant::now();
                if let Err(e) = self.prune().await {
                    tracing::warn!(error = %e, "pruning old deliveries failed");
                }
            }
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        let _ = tokio::time::timeout(self.config.request_timeout, drain).await;
        Ok(())
    }

    async fn poll(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> BusResult<()> {
        let now = SystemTime::now();
        for timer in self.bus.claim_due(FLUSHES, now, 64).await? {
            if let Err(e) = self.outbox.flush(&timer.member).await {
                tracing::warn!(partner = %timer.member, error = %e, "coalescing flush failed; retrying");
                self.bus
                    .schedule(FLUSHES, &timer.member, now + Duration::from_secs(1))
                    .await?;
            }
        }
        loop {
            let due = self.bus.claim_due(ATTEMPTS, now, CLAIM_BATCH).await?;
            let full = due.len() == CLAIM_BATCH;
            for timer in due {
                self.admit(&timer.member, tasks).await?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn slots_of(&self, partner_id: &str) -> Arc<Semaphore> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry(partner_id.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.max_in_flight_per_partner)))
            .clone()
    }

    /// Starts the attempt named by a claimed timer, or puts the timer back if the partner
    /// has no free slot or its endpoint's breaker is open.
    async fn admit(self: &Arc<Self>, member: &str, tasks: &mut JoinSet<()>) -> BusResult<()> {
        let Some((partner_id, delivery_id)) = member.split_once(':') else {
            tracing::warn!(member, "dropping malformed delivery timer");
            return Ok(());
        };
        let now = SystemTime::now();
        let Ok(permit) = self.slots_of(partner_id).try_acquire_owned() else {
            // Busy: look again soon, without holding up anyone else.
            let jitter = Duration::from_millis(rand::random_range(
                0..=self.config.timer_poll.as_millis() as u64,
            ));
            return self
                .bus
                .schedule(ATTEMPTS, member, now + self.config.timer_poll + jitter)
                .await;
        };
        let partners = self.partners.cached().await?;
        let endpoint = partners
            .iter()
            .find(|p| p.id == partner_id)
            .map(|p| p.endpoint_url.clone())
            .unwrap_or_else(|| partner_id.to_owned());
        if let Admission::HoldFor(wait) = self.breakers.admit(&endpoint, Instant::now()) {
            drop(permit);
            return self.bus.schedule(ATTEMPTS, member, now + wait).await;
        }
        self.bus
            .schedule(ATTEMPTS, member, now + self.config.attempt_lease())
            .await?;
        let this = self.clone();
        let (member, delivery_id) = (member.to_owned(), delivery_id.to_owned());
        tasks.spawn(async move {
            if let Err(e) = this.attempt(&member, &delivery_id, &endpoint, permit).await {
                // The lease timer brings it back.
                tracing::warn!(delivery = %delivery_id, error = %e, "delivery attempt could not be recorded");
            }
        });
        Ok(())
    }

    async fn attempt(
        &self,
        member: &str,
        delivery_id: &str,
        endpoint_key: &str,
        _permit: OwnedSemaphorePermit,
    ) -> BusResult<()> {
        let Some(mut delivery) = self.deliveries.get(delivery_id).await? else {
            self.bus.cancel(ATTEMPTS, member).await?;
            return Ok(());
        };
        if !delivery.status.is_open() {
            self.bus.cancel(ATTEMPTS, member).await?;
            return Ok(());
        }
        let partner = self
            .partners
            .get(&delivery.partner_id)
            .await?
            .map(|(_, p)| p)
            .filter(|p| p.enabled);
        let Some(partner) = partner else {
            delivery.status = Status::Dead;
            delivery.last_error = "partner deleted or disabled".into();
            delivery.next_attempt_at_ms = None;
            self.deliveries.update(&delivery).await?;
            delivery_metrics::attempt(delivery_metrics::DEAD);
            return self.bus.cancel(ATTEMPTS, member).await.map(|_| ());
        };

        let span = tracing::info_span!(
            "notifier.deliver",
            otel.name = "POST",
            otel.kind = "client",
            http.request.method = "POST",
            url.full = %redacted_url(&partner.endpoint_url),
            http.response.status_code = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            partner = %partner.id,
            delivery = %delivery.id,
            event_id = %delivery.event_id,
            attempt = delivery.attempts + 1,
        );
        if let Some(tp) = &delivery.traceparent {
            ratemesh_runtime::trace_context::set_parent_from_traceparent(&span, tp);
        }
        let now = now_ms();
        let outcome = async {
            // Our span's context when tracing is exported; otherwise pass the cause's own
            // traceparent on, so the partner still sees the trace id.
            let traceparent = ratemesh_runtime::trace_context::current_traceparent()
                .or_else(|| delivery.traceparent.clone());
            self.sender
                .send(Request {
                    url: &partner.endpoint_url,
                    body: delivery.body.as_bytes(),
                    event_id: &delivery.event_id,
                    secrets: partner.signing_secrets(now),
                    traceparent,
                    now_secs: now / 1000,
                })
                .await
        }
        .instrument(span.clone())
        .await;
        if outcome.status != 0 {
            span.record("http.response.status_code", outcome.status);
        }
        if !outcome.delivered {
            span.record("error.type", error_type(&outcome));
            span.record("otel.status_code", "ERROR");
        }
        let finished = now_ms();
        self.breakers
            .record(endpoint_key, outcome.delivered, Instant::now());
        delivery.attempts += 1;
        delivery.last_response_code = outcome.status;
        if outcome.delivered {
            delivery.status = Status::Delivered;
            delivery.delivered_at_ms = Some(finished);
            delivery.next_attempt_at_ms = None;
            self.deliveries.update(&delivery).await?;
            delivery_metrics::attempt(delivery_metrics::DELIVERED);
            delivery_metrics::delivered(&delivery.body, finished);
            self.bus.cancel(ATTEMPTS, member).await?;
            return Ok(());
        }
        delivery.last_error = outcome.error;
        let age = Duration::from_millis((finished - delivery.round_started_at_ms).max(0) as u64);
        if delivery.attempts >= self.config.max_attempts || age >= self.config.max_age {
            tracing::warn!(
                partner = %partner.id,
                delivery = %delivery.id,
                attempts = delivery.attempts,
                error = %delivery.last_error,
                "delivery dead-lettered"
            );
            delivery.status = Status::Dead;
            delivery.next_attempt_at_ms = None;
            self.deliveries.update(&delivery).await?;
            delivery_metrics::attempt(delivery_metrics::DEAD);
            self.bus.cancel(ATTEMPTS, member).await?;
            return Ok(());
        }
        let delay = self
            .config
            .backoff(delivery.attempts, rand::random::<f64>());
        let next = finished + delay.as_millis() as i64;
        delivery.status = Status::Retrying;
        delivery.next_attempt_at_ms = Some(next);
        self.deliveries.update(&delivery).await?;
        delivery_metrics::attempt(delivery_metrics::RETRY);
        self.bus.schedule(ATTEMPTS, member, time_of(next)).await
    }

    /// Start-up sweep: re-schedules every open delivery (and restores its index entry)
    /// and every outbox, in case the previous process died between two writes. Open
    /// deliveries are read from each partner's open ones, not from every delivery kept.
    async fn recover(&self) -> BusResult<()> {
        let mut rescheduled = 0usize;
        // An entry this young may be a creation still under way elsewhere.
        let settled_before = now_ms() - 60_000;
        for partner in self.partners.load_all().await? {
            let mut stale = Vec::new();
            for id in self.deliveries.open_ids(&partner.id).await? {
                match self.deliveries.get(&id).await? {
                    Some(delivery) if delivery.status.is_open() => {
                        self.deliveries.index(&delivery, true).await?;
                        let due = delivery.next_attempt_at_ms.unwrap_or_else(now_ms);
                        self.bus
                            .schedule(ATTEMPTS, &delivery.timer_member(), time_of(due))
                            .await?;
                        rescheduled += 1;
                    }
                    Some(_) => stale.push(id),
                    None if created_ms(&id) < settled_before => stale.push(id),
                    None => {}
                }
            }
            self.deliveries.forget_open(&partner.id, stale).await?;
        }
        let outboxes = self.outbox.recover().await?;
        tracing::info!(rescheduled, outboxes, "notifier recovered its schedule");
        Ok(())
    }

    /// Drops delivered and dead deliveries older than the retention, partner by partner,
    /// from the hours of their indexes that ended before it.
    async fn prune(&self) -> BusResult<()> {
        let cutoff = now_ms() - self.config.delivery_retention.as_millis() as i64;
        for partner in self.partners.cached().await?.iter() {
            let dropped = self
                .deliveries
                .prune(&partner.id, cutoff, last_change)
                .await?;
            if dropped > 0 {
                tracing::debug!(partner = %partner.id, dropped, "old deliveries dropped");
            }
        }
        Ok(())
    }
}

/// When a delivery was created: the time part of its id (a ULID).
fn created_ms(id: &str) -> i64 {
    ulid::Ulid::from_string(id).map_or(0, |u| u.timestamp_ms() as i64)
}

fn last_change(d: &DeliveryRecord) -> i64 {
    d.delivered_at_ms
        .unwrap_or(d.round_started_at_ms.max(d.created_at_ms))
}

/// A partner URL as a span attribute: without its query, fragment and user info, which
/// may hold credentials.
fn redacted_url(url: &str) -> std::borrow::Cow<'_, str> {
    let url = url.split(['?', '#']).next().unwrap_or(url);
    let Some(authority) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[authority..];
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{}{}", &url[..authority], &rest[at + 1..]).into(),
        None => url.into(),
    }
}

/// `error.type` of a failed attempt: the HTTP status, or the kind of transport failure.
fn error_type(outcome: &crate::sender::Outcome) -> &'static str {
    match outcome.status {
        0 if outcome.error.starts_with("timeout") => "timeout",
        0 => "transport",
        100..=399 => "unexpected_status",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::redacted_url;

    #[test]
    fn span_urls_carry_no_credentials() {
        for (url, shown) in [
            ("https://hooks.example/p/1", "https://hooks.example/p/1"),
            (
                "https://hooks.example/p?token=s3cret#x",
                "https://hooks.example/p",
            ),
            ("https://user:pw@hooks.example/p", "https://hooks.example/p"),
            ("https://hooks.example/a@b", "https://hooks.example/a@b"),
        ] {
            assert_eq!(redacted_url(url), shown, "{url}");
        }
    }
}
