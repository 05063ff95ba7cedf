//! [`compute()`]: the rate policy as a pure function of
//! `(policy, inputs, previous card, now)`.
//!
//! The rules act in this order, each adding a [`Reason`] when it acts:
//!
//! 1. **No product data** → rate 0, nothing else applies.
//! 2. **Base rate**: the product's own, else the category's.
//! 3. **Inventory target**: out of stock → `out_of_stock_rate` (default: the base);
//!    unknown velocity → the base; otherwise days of cover selects a band (with
//!    hysteresis) in the normal table or, inside a peak window, the window's table, and
//!    the band's multiplier or addition applies to the base.
//! 4. **Mode**. *Direct*: the policy rate moves towards the target by at most `max_step`
//!    and not within `min_hold` of its last move. *Boost*: the published base follows the
//!    base rate up at once and down only after the network's notice and within its
//!    maximum cut per period; the inventory target above the published base becomes a
//!    boost (damped the same way), guaranteed for `boost_hours` once raised, and a target
//!    below the published base lets the boost lapse instead of cutting the base.
//! 5. **Flash incentive** bonus, while the incentive is active. The bonus is guaranteed
//!    until the incentive's `ends_at`: nothing in the policy withdraws it earlier, and the
//!    card's `guaranteed_until` is that end (or the boost guarantee, if that ends first).
//! 6. **Overrides**, in the precedence documented in [`crate::overrides`].
//! 7. **Guardrails, always last**: floor, cap, then the margin guard
//!    (`rate × price ≤ margin_share × (price − unit_cost)`, so a product sold at or below
//!    cost gets rate 0). An exclude override skips the floor.
//!
//! The version is bumped only when the published rate changes.
//!
//! **Coming into stock is not smoothed.** The first card of a SKU, and the first card
//! with stock after a card without product data (`no_product_data`) or without stock
//! (`out_of_stock`) — the first stock after the product master data, a restock from zero
//! — takes the policy's target at once: no hold, no damping, and the band is chosen
//! without hysteresis from the band before the stock-out. In direct mode that is the
//! policy rate, up or down; in boost mode a higher boost is raised at once, while a lower
//! one still lapses step by step after its guarantee (the network's rules on cuts do not
//! care why stock came back). The hold clock starts at that card. Going out of stock,
//! and leaving `no_velocity_data`, are damped as usual: the rate before was a published
//! rate for stock on hand.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::card::{BandPosition, BaseChange, CardState, PendingCut, RateCard, RateParts};
use crate::incentive::Incentive;
use crate::overrides::{ActiveOverrides, Override};
use crate::policy::config::Mode;
use crate::policy::{CategoryPolicy, Policy};
use crate::reason::Reason;
use crate::types::{DaysOfCover, Quantity, Rate, Sku, Velocity};

pub use crate::product::Product;

/// Everything about one SKU that the policy reads, borrowed from wherever it is kept
/// (usually [`crate::SkuState::inputs`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateInputs<'a> {
    /// The SKU.
    pub sku: &'a Sku,
    /// Product master data, if received.
    pub product: Option<&'a Product>,
    /// Available units across locations.
    pub available: Quantity,
    /// Sales velocity, if known.
    pub velocity: Option<Velocity>,
    /// SKU-scoped overrides (inactive ones are ignored).
    pub overrides: &'a [Override],
    /// Category-scoped overrides (those for other categories are ignored).
    pub category_overrides: &'a [Override],
    /// The SKU's flash incentive, if one is open.
    pub incentive: Option<&'a Incentive>,
}

/// Computes the rate card for one SKU. Never fails: every situation has a defined rate
/// and reasons. See the module documentation for the order of the rules.
pub fn compute(
    policy: &Policy,
    inputs: &RateInputs<'_>,
    previous: Option<&RateCard>,
    now: DateTime<Utc>,
) -> RateCard {
    let prev_state = previous.map(|c| &c.state);
    let Some(product) = inputs.product else {
        let state = prev_state.cloned().unwrap_or_default();
        return finish(
            inputs.sku,
            previous,
            Rate::ZERO,
            RateParts::default(),
            vec![Reason::NoProductData],
            None,
            state,
            now,
        );
    };
    let dp = policy.rate_decimals;
    let cat = policy.category(&product.category);
    let base = product.base_rate.unwrap_or(cat.base_rate);
    let mut reasons = Vec::with_capacity(4);
    let mut state = CardState::default();
    let mut parts = RateParts {
        base,
        ..RateParts::default()
    };

    // Inventory target.
    let (table_id, table) = match policy.peak_window_at(now) {
        Some((i, window)) => {
            reasons.push(Reason::PeakWindow {
                window: window.name.clone(),
            });
            let id = u32::try_from(i + 1).unwrap_or(u32::MAX);
            (id, cat.peak_bands.get(i).unwrap_or(&cat.bands))
        }
        None => (0, &cat.bands),
    };
    let in_stock = inputs.available.get() > Decimal::ZERO;
    // Coming into stock (the first stock after product data, a restock from zero) the
    // policy rate takes its target at once: there was no stock-derived rate to smooth.
    let arriving = in_stock && previous.is_none_or(|p| p.reasons.iter().any(left_at_once));
    // The band before the stock-out says nothing about the new stock: no hysteresis.
    let previous_band = prev_state.and_then(|s| s.band).filter(|_| !arriving);
    state.band = previous_band;
    let target = if !in_stock {
        let rate = cat.out_of_stock_rate.unwrap_or(base);
        reasons.push(Reason::OutOfStock { rate });
        rate
    } else if let Some(velocity) = inputs.velocity {
        let cover = DaysOfCover::from_stock(inputs.available, velocity);
        let prev_index = previous_band
            .filter(|b| b.table == table_id)
            .map(|b| b.index as usize);
        let index = table.select(cover.get(), prev_index, cat.hysteresis);
        state.band = Some(BandPosition {
            table: table_id,
            index: u32::try_from(index).unwrap_or(u32::MAX),
        });
        match table.get(index) {
            Some(band) => {
                let days = DaysOfCover::clamped(cover.get().round_dp(2));
                match band.adjustment.direction() {
                    Ordering::Less => reasons.push(Reason::LowCover {
                        days,
                        band: band.name.clone(),
                    }),
                    Ordering::Greater => reasons.push(Reason::Overstock {
                        days,
                        band: band.name.clone(),
                    }),
                    Ordering::Equal => {}
                }
                Rate::clamped(band.adjustment.apply(base).get().round_dp(dp))
            }
            None => base,
        }
    } else {
        reasons.push(Reason::NoVelocityData);
        base
    };

    // Mode: damping (direct) or published base + boost (boost).
    let mut guaranteed_until = None;
    let policy_rate = match policy.mode {
        Mode::Direct => {
            let (rate, changed_at) = match prev_state.and_then(|s| s.policy_rate) {
                Some(prev) if arriving && prev == target => {
                    (prev.get(), prev_state.and_then(|s| s.policy_changed_at))
                }
                None => (target.get(), Some(now)),
                Some(_) if arriving => (target.get(), Some(now)),
                Some(prev) => damp(
                    prev.get(),
                    target.get(),
                    prev_state.and_then(|s| s.policy_changed_at),
                    now,
                    cat,
                    target,
                    &mut reasons,
                ),
            };
            state.policy_rate = Some(Rate::clamped(rate));
            state.policy_changed_at = changed_at;
            parts.inventory_adjustment = rate - base.get();
            rate
        }
        Mode::Boost => {
            let published = published_base(policy, base, prev_state, &mut state, &mut reasons, now);
            parts.base = published;
            let boost = boost(
                policy,
                cat,
                published,
                target,
                prev_state,
                arriving,
                &mut state,
                &mut reasons,
                now,
            );
            parts.boost = boost;
            // A guarantee that has run out (the boost lapsing) promises nothing any more.
            guaranteed_until = state.boost_guaranteed_until.filter(|g| *g > now);
            published.get() + boost
        }
    };

    // Flash incentive.
    let mut rate = policy_rate;
    if let Some(inc) = inputs
        .incentive
        .filter(|i| i.is_active(now) && i.sku == *inputs.sku)
    {
        rate += inc.bonus.get();
        parts.incentive = inc.bonus.get();
        // The bonus is promised for its whole window: the card says so. With a boost
        // guarantee too, the card carries the earlier end, the first instant at which a
        // guaranteed part may go (each part's own end is on its reason).
        guaranteed_until = Some(guaranteed_until.map_or(inc.ends_at, |g| g.min(inc.ends_at)));
        reasons.push(Reason::Incentive {
            id: inc.id.clone(),
            bonus: inc.bonus,
            ends_at: inc.ends_at,
        });
    }

    // Overrides.
    let active = ActiveOverrides::resolve(
        inputs.overrides.iter().chain(inputs.category_overrides),
        inputs.sku,
        &product.category,
        now,
    );
    let before_overrides = rate;
    let excluded = active.exclude.is_some();
    if let Some(o) = active.exclude {
        rate = Decimal::ZERO;
        reasons.push(Reason::OverrideExclude { id: o.id.clone() });
    } else if let Some((o, pin)) = active.pin {
        rate = pin.get();
        reasons.push(Reason::OverridePin {
            id: o.id.clone(),
            rate: pin,
        });
    } else {
        if let Some((o, factor)) = active.multiplier {
            rate = (rate * factor).round_dp(dp);
            reasons.push(Reason::OverrideMultiplier {
                id: o.id.clone(),
                factor,
            });
        }
        if let Some((o, floor)) = active.floor
            && rate < floor.get()
        {
            rate = floor.get();
            reasons.push(Reason::OverrideFloor {
                id: o.id.clone(),
                floor,
            });
        }
        if let Some((o, cap)) = active.cap
            && rate > cap.get()
        {
            rate = cap.get();
            reasons.push(Reason::OverrideCap {
                id: o.id.clone(),
                cap,
            });
        }
    }
    parts.overrides = rate - before_overrides;

    // Guardrails, always last.
    let before_guardrails = rate;
    if !excluded {
        if rate < cat.floor.get() {
            rate = cat.floor.get();
            reasons.push(Reason::Floor { floor: cat.floor });
        }
        if rate > cat.cap.get() {
            rate = cat.cap.get();
            reasons.push(Reason::Cap { cap: cat.cap });
        }
        let max_rate = product.margin_limit(cat.margin_share, dp);
        if rate > max_rate.get() {
            rate = max_rate.get();
            reasons.push(Reason::MarginGuard { max_rate });
        }
    }
    parts.guardrails = rate - before_guardrails;

    finish(
        inputs.sku,
        previous,
        Rate::clamped(rate),
        parts,
        reasons,
        guaranteed_until,
        state,
        now,
    )
}

/// Reasons of a card whose policy rate was not derived from stock (no product data, out of
/// stock): the next card with stock moves to its target without hold or damping.
fn left_at_once(reason: &Reason) -> bool {
    matches!(reason, Reason::NoProductData | Reason::OutOfStock { .. })
}

/// Moves `prev` towards `target` by at most `max_step`, unless it moved within
/// `min_hold`. Returns the new value and when it last changed.
#[allow(clippy::too_many_arguments)]
fn damp(
    prev: Decimal,
    target: Decimal,
    changed_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    cat: &CategoryPolicy,
    shown_target: Rate,
    reasons: &mut Vec<Reason>,
) -> (Decimal, Option<DateTime<Utc>>) {
    if target == prev {
        return (prev, changed_at);
    }
    if let Some(at) = changed_at {
        let until = at + cat.min_hold;
        if now < until {
            reasons.push(Reason::Held {
                target: shown_target,
                until,
            });
            return (prev, changed_at);
        }
    }
    let delta = target - prev;
    let next = if delta.abs() > cat.max_step {
        reasons.push(Reason::Damped {
            target: shown_target,
            max_step: cat.max_step,
        });
        if delta > Decimal::ZERO {
            prev + cat.max_step
        } else {
            prev - cat.max_step
        }
    } else {
        target
    };
    (next, Some(now))
}

/// The highest published base in force at any time in `[since, now]`.
fn max_base_since(history: &[BaseChange], since: DateTime<Utc>) -> Decimal {
    let in_force_at_start = history
        .iter()
        .rev()
        .find(|c| c.at <= since)
        .map(|c| c.rate.get());
    history
        .iter()
        .filter(|c| c.at > since)
        .map(|c| c.rate.get())
        .chain(in_force_at_start)
        .max()
        .unwrap_or(Decimal::ZERO)
}

/// Drops history that no longer matters: everything before the last change made at or
/// before `since` (that one stays, it was in force at the start of the period).
fn prune(history: &mut Vec<BaseChange>, since: DateTime<Utc>) {
    if let Some(keep_from) = history.iter().rposition(|c| c.at <= since) {
        history.drain(..keep_from);
    }
}

/// Boost mode: the published base under the network's cut rules.
fn published_base(
    policy: &Policy,
    base: Rate,
    prev: Option<&CardState>,
    state: &mut CardState,
    reasons: &mut Vec<Reason>,
    now: DateTime<Utc>,
) -> Rate {
    let rules = &policy.network;
    let mut published = prev.and_then(|s| s.published_base).unwrap_or(base);
    let mut history = prev.map(|s| s.base_history.clone()).unwrap_or_default();
    if history.is_empty() {
        history.push(BaseChange {
            at: now,
            rate: published,
        });
    }
    let mut pending = prev.and_then(|s| s.pending_cut);
    match base.cmp(&published) {
        Ordering::Greater => {
            published = base;
            history.push(BaseChange {
                at: now,
                rate: base,
            });
            pending = None;
        }
        Ordering::Equal => pending = None,
        Ordering::Less => {
            let cut = match pending {
                None => PendingCut {
                    to: base,
                    effective_at: now + rules.notice,
                },
                // A deeper cut than announced needs fresh notice.
                Some(p) if base < p.to => PendingCut {
                    to: base,
                    effective_at: p.effective_at.max(now + rules.notice),
                },
                // A shallower cut is covered by the notice already given.
                Some(p) => PendingCut {
                    to: base,
                    effective_at: p.effective_at,
                },
            };
            if now >= cut.effective_at {
                let highest = max_base_since(&history, now - rules.cut_period);
                let lowest_allowed = ((Decimal::ONE - rules.max_cut) * highest)
                    .round_dp_with_strategy(policy.rate_decimals, RoundingStrategy::AwayFromZero);
                let to = Rate::clamped(lowest_allowed.max(cut.to.get()));
                if to < published {
                    reasons.push(Reason::BaseCut {
                        from: published,
                        to,
                    });
                    published = to;
                    history.push(BaseChange { at: now, rate: to });
                }
                if to > cut.to {
                    reasons.push(Reason::BaseCutLimited {
                        target: cut.to,
                        allowed: to,
                    });
                    pending = Some(cut);
                } else {
                    pending = None;
                }
            } else {
                reasons.push(Reason::BaseCutScheduled {
                    to: cut.to,
                    effective_at: cut.effective_at,
                });
                pending = Some(cut);
            }
        }
    }
    prune(&mut history, now - rules.cut_period);
    state.published_base = Some(published);
    state.base_history = history;
    state.pending_cut = pending;
    published
}

/// Boost mode: the damped, guaranteed boost on top of `published`.
#[allow(clippy::too_many_arguments)]
fn boost(
    policy: &Policy,
    cat: &CategoryPolicy,
    published: Rate,
    target: Rate,
    prev: Option<&CardState>,
    arriving: bool,
    state: &mut CardState,
    reasons: &mut Vec<Reason>,
    now: DateTime<Utc>,
) -> Decimal {
    let prev_boost = prev.map_or(Decimal::ZERO, |s| s.boost);
    let mut guaranteed = prev.and_then(|s| s.boost_guaranteed_until);
    let mut wanted = (target.get() - published.get()).max(Decimal::ZERO);
    if wanted < prev_boost
        && let Some(until) = guaranteed.filter(|g| now < *g)
    {
        reasons.push(Reason::BoostGuaranteed { until });
        wanted = prev_boost;
    }
    let (boost, changed_at) = match prev {
        None => (wanted, Some(now)),
        // Coming into stock raises the boost at once; a lower target still lapses step by
        // step, as the network expects of any cut.
        Some(_) if arriving && wanted > prev_boost => (wanted, Some(now)),
        Some(s) => damp(
            prev_boost,
            wanted,
            s.boost_changed_at,
            now,
            cat,
            Rate::clamped(published.get() + wanted),
            reasons,
        ),
    };
    if boost < prev_boost {
        reasons.push(Reason::BoostLapsed {
            from: prev_boost,
            to: boost,
        });
    }
    let expired = guaranteed.is_none_or(|g| now >= g);
    if boost > prev_boost || (boost == prev_boost && wanted >= boost && expired) {
        guaranteed = Some(now + policy.network.boost_duration);
    }
    if boost <= Decimal::ZERO {
        guaranteed = None;
    } else if let Some(until) = guaranteed {
        reasons.push(Reason::Boost {
            boost,
            guaranteed_until: until,
        });
    }
    state.boost = boost;
    state.boost_changed_at = changed_at;
    state.boost_guaranteed_until = guaranteed;
    boost
}

#[allow(clippy::too_many_arguments)]
fn finish(
    sku: &Sku,
    previous: Option<&RateCard>,
    rate: Rate,
    parts: RateParts,
    reasons: Vec<Reason>,
    guaranteed_until: Option<DateTime<Utc>>,
    state: CardState,
    now: DateTime<Utc>,
) -> RateCard {
    let (version, previous_rate, changed_at) = match previous {
        None => (1, None, now),
        Some(p) if p.effective_rate != rate => (p.version + 1, Some(p.effective_rate), now),
        Some(p) => (p.version, p.previous_rate, p.changed_at),
    };
    RateCard {
        sku: sku.clone(),
        effective_rate: rate,
        previous_rate,
        parts,
        reasons,
        version,
        computed_at: now,
        changed_at,
        guaranteed_until,
        state,
    }
}

#[cfg(test)]
mod tests;
