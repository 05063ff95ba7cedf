//! The published card on the wire: a core [`RateCard`] as the proto card (decimals as
//! strings, reason codes in upper snake case with their human text, the band's name, an
//! announced cut). Overrides on the wire are in [`crate::overrides::wire`], `ExplainRate`'s
//! inputs in [`crate::engine::explain`], times in [`ratemesh_contract::time`].

use ratemesh_core::card::PendingCut;
use ratemesh_core::{Policy, Rate, RateCard, Reason};
use ratemesh_proto::v1;
use rust_decimal::Decimal;

pub use ratemesh_contract::time::{from_timestamp, to_timestamp as timestamp};

pub(crate) fn dec(d: Decimal) -> String {
    d.normalize().to_string()
}

/// The wire code of a reason: the core code in upper snake case (`LOW_COVER`,
/// `OVERRIDE_PIN`, …).
pub fn reason_code(reason: &Reason) -> String {
    reason.code().as_str().to_ascii_uppercase()
}

/// The code of the reason a card carries when no rule acted (its rate is the base rate).
pub const BASE_RATE_CODE: &str = "BASE_RATE";

/// Every reason code a published card can carry: core's codes in upper snake case and
/// [`BASE_RATE_CODE`]. The `Reason.code` comment in `proto/ratemesh/v1/common.proto`
/// lists exactly these (checked by a test).
pub fn emitted_reason_codes() -> Vec<String> {
    let mut codes: Vec<String> = ratemesh_core::ReasonCode::ALL
        .iter()
        .map(|c| c.as_str().to_ascii_uppercase())
        .collect();
    codes.push(BASE_RATE_CODE.to_owned());
    codes
}

/// The proto reason: code and human text.
pub fn reason_to_proto(reason: &Reason) -> v1::Reason {
    v1::Reason {
        code: reason_code(reason),
        text: reason.text(),
    }
}

/// Name of the band a card's state points at, if the SKU has one.
pub fn band_name(policy: &Policy, category: &str, card: &RateCard) -> String {
    let Some(position) = card.state.band else {
        return String::new();
    };
    let cat = policy.category(category);
    let table = match position.table {
        0 => Some(&cat.bands),
        n => cat.peak_bands.get(n as usize - 1),
    };
    table
        .and_then(|t| t.get(position.index as usize))
        .map(|b| b.name.clone())
        .unwrap_or_default()
}

/// The published proto card for a core card.
///
/// `version` is the published version (it grows by one per publication, see
/// [`crate::engine`]); `previous_rate` is the effective rate of the previous publication.
pub fn card_to_proto(
    policy: &Policy,
    card: &RateCard,
    category: &str,
    version: u64,
    previous_rate: Option<Rate>,
) -> v1::RateCard {
    let mut reasons: Vec<v1::Reason> = card.reasons.iter().map(reason_to_proto).collect();
    if reasons.is_empty() {
        reasons.push(v1::Reason {
            code: BASE_RATE_CODE.into(),
            text: format!(
                "base rate of {} % applies",
                (card.parts.base.get() * Decimal::ONE_HUNDRED).normalize()
            ),
        });
    }
    let p = &card.parts;
    v1::RateCard {
        sku: card.sku.to_string(),
        category: category.to_owned(),
        effective_rate: dec(card.effective_rate.get()),
        parts: Some(v1::RateParts {
            base: dec(p.base.get()),
            inventory_adjustment: dec(p.inventory_adjustment),
            boost: dec(p.boost),
            incentive: dec(p.incentive),
            override_adjustment: dec(p.overrides),
            guardrail_adjustment: dec(p.guardrails),
        }),
        reasons,
        version,
        computed_at: Some(timestamp(card.computed_at)),
        guaranteed_until: card.guaranteed_until.map(timestamp),
        previous_rate: previous_rate.map(|r| dec(r.get())).unwrap_or_default(),
        band: band_name(policy, category, card),
        scheduled_change: None,
    }
}

/// The proto form of an announced base cut: the new base, when, and the effective rate
/// `forecast` the card will have then if nothing else changes.
pub fn scheduled_change_to_proto(cut: &PendingCut, forecast: Rate) -> v1::ScheduledChange {
    v1::ScheduledChange {
        base_rate: dec(cut.to.get()),
        effective_at: Some(timestamp(cut.effective_at)),
        rate: dec(forecast.get()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};
    use ratemesh_core::Money;
    use ratemesh_core::Sku;
    use ratemesh_core::{Product, compute};
    use rust_decimal_macros::dec;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0).unwrap()
    }

    /// The codes listed in the doc comment of `ratemesh.v1.Reason.code`, as compiled into
    /// the descriptor set from `proto/ratemesh/v1/common.proto`.
    fn documented_reason_codes() -> std::collections::BTreeSet<String> {
        use prost::Message as _;
        let fds =
            prost_types::FileDescriptorSet::decode(ratemesh_proto::FILE_DESCRIPTOR_SET).unwrap();
        let file = fds
            .file
            .iter()
            .find(|f| f.name().ends_with("ratemesh/v1/common.proto"))
            .expect("common.proto");
        let message = file
            .message_type
            .iter()
            .position(|m| m.name() == "Reason")
            .expect("Reason");
        let field = file.message_type[message]
            .field
            .iter()
            .position(|f| f.name() == "code")
            .expect("Reason.code");
        // SourceCodeInfo path: message_type (4), index, field (2), index.
        let path = [4, message as i32, 2, field as i32];
        let comment = file
            .source_code_info
            .as_ref()
            .and_then(|info| info.location.iter().find(|l| l.path == path))
            .map(|l| l.leading_comments().to_owned())
            .expect("Reason.code has a comment");
        comment
            .lines()
            .filter_map(|line| line.trim().strip_prefix("- "))
            .filter_map(|item| item.split_once(':').map(|(codes, _)| codes))
            .flat_map(|codes| codes.split(',').map(|c| c.trim().to_owned()))
            .collect()
    }

    #[test]
    fn the_contract_lists_exactly_the_reason_codes_a_card_can_carry() {
        let emitted: std::collections::BTreeSet<String> =
            emitted_reason_codes().into_iter().collect();
        let documented = documented_reason_codes();
        let undocumented: Vec<_> = emitted.difference(&documented).collect();
        let never_emitted: Vec<_> = documented.difference(&emitted).collect();
        assert!(
            undocumented.is_empty() && never_emitted.is_empty(),
            "Reason.code in common.proto: missing {undocumented:?}, never emitted {never_emitted:?}"
        );
        // and every core reason maps to one of them
        let card_code = reason_code(&Reason::NoVelocityData);
        assert!(documented.contains(&card_code));
    }

    #[test]
    fn card_carries_decimals_as_strings_and_reason_codes() {
        let policy = Policy::example();
        let sku = Sku::new("S-1").unwrap();
        let mut state = ratemesh_core::SkuState::new(sku.clone(), &policy.velocity);
        state.product = Some(Product {
            category: "home".into(),
            price: Money::new(dec!(100)).unwrap(),
            unit_cost: Money::new(dec!(40)).unwrap(),
            base_rate: None,
        });
        let card = compute(&policy, &state.inputs(), None, t0());
        let proto = card_to_proto(&policy, &card, "home", 1, None);
        assert_eq!(proto.sku, "S-1");
        assert_eq!(proto.effective_rate, "0.06");
        assert_eq!(proto.parts.as_ref().unwrap().base, "0.06");
        assert_eq!(proto.version, 1);
        assert_eq!(proto.previous_rate, "");
        // out of stock (nothing observed yet) is a reason with its text
        assert_eq!(proto.reasons[0].code, "OUT_OF_STOCK");
        assert!(proto.reasons[0].text.contains("out of stock"));
    }
}
