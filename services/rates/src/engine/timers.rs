//! Time-driven recomputes on durable bus timers, so they fire after a restart and on
//! exactly one replica.
//!
//! One timer queue, `rates-recompute`, whose members name what to do and when:
//! - `sku:<ms>:<SKU>` — recompute one SKU (hold or damping step over, boost guarantee or
//!   announced cut due, incentive or SKU override starting or ending);
//! - `cat:<ms>:<category>` — recompute every SKU of a category (a category override
//!   starts or ends);
//! - `all:<ms>:<label>` — recompute every SKU (a peak window starts or ends);
//! - `expire:<ms>:<override id>` — record that an override reached its end (audit trail
//!   and `OverrideChanged` EXPIRE) and recompute what it applied to.
//!
//! The due time inside the member is the `now` of the recompute, so a timer that fires
//! late, or twice after a crash, computes the same card. Sweeps over many SKUs walk
//! `scan_states` pages (a category's sweep only the category's records), each page's SKUs
//! computed in memory and written in one step per partition, several pages at once, and
//! report progress as metrics
//! (`ratemesh_rates_recompute_*`); a sweep re-arms its own timer a lease ahead while it
//! runs, so a crash mid-sweep only means the sweep runs again (SKUs already done are
//! skipped: their tick at that instant is a duplicate).

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use ratemesh_bus::{Bus, BusError, BusResult, Expect, StateRecord, StateWrite, Update};
use ratemesh_core::{Event, Sku};
use tokio_util::task::AbortOnDropHandle;

use super::record::{EngineRecord, FIELD_ENGINE, NAMESPACE};
use super::{Engine, EngineError};

/// The timer queue of the rates service.
pub const QUEUE: &str = "rates-recompute";

/// What a timer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Recompute one SKU.
    Sku(Sku),
    /// Recompute a category's SKUs.
    Category(String),
    /// Recompute every SKU.
    All(String),
    /// An override reached its end.
    Expire(String),
}

/// Timers have millisecond resolution: `at` rounded up, so a timer never fires (and
/// never computes) before the instant it stands for.
pub fn ceil_ms(at: DateTime<Utc>) -> i64 {
    let ms = at.timestamp_millis();
    if at.timestamp_subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms + 1
    }
}

/// The instant a timer standing for `at` is due ([`ceil_ms`]).
pub fn system_time(at: DateTime<Utc>) -> SystemTime {
    let ms = u64::try_from(ceil_ms(at)).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

fn member(kind: &str, at: DateTime<Utc>, subject: &str) -> String {
    format!("{kind}:{}:{subject}", ceil_ms(at))
}

/// Parses a member into its due time and action.
pub fn parse_member(member: &str) -> Option<(DateTime<Utc>, Due)> {
    let mut parts = member.splitn(3, ':');
    let kind = parts.next()?;
    let ms: i64 = parts.next()?.parse().ok()?;
    let subject = parts.next()?.to_owned();
    let at = DateTime::from_timestamp_millis(ms)?;
    let due = match kind {
        "sku" => Due::Sku(Sku::new(subject).ok()?),
        "cat" => Due::Category(subject),
        "all" => Due::All(subject),
        "expire" => Due::Expire(subject),
        _ => return None,
    };
    Some((at, due))
}

/// Recompute `sku` at `at`.
pub async fn schedule_sku(bus: &Bus, sku: &Sku, at: DateTime<Utc>) -> BusResult<()> {
    bus.schedule(QUEUE, &sku_member(sku, at), system_time(at))
        .await
}

/// The timer member that recomputes `sku` at `at`.
pub fn sku_member(sku: &Sku, at: DateTime<Utc>) -> String {
    member("sku", at, sku.as_str())
}

/// Recompute the SKUs of `category` at `at`.
pub async fn schedule_category(bus: &Bus, category: &str, at: DateTime<Utc>) -> BusResult<()> {
    bus.schedule(QUEUE, &member("cat", at, category), system_time(at))
        .await
}

/// Record the end of override `id` at `at`.
pub async fn schedule_expiry(bus: &Bus, id: &str, at: DateTime<Utc>) -> BusResult<()> {
    bus.schedule(QUEUE, &member("expire", at, id), system_time(at))
        .await
}

/// State namespace recording which peak-window edge the last full sweep applied, so an
/// edge that passed while no replica ran is swept at the next start, and only once.
pub const PEAK_EDGES: &str = "rates-peak-edges";
const FIELD_SWEPT_AT: &str = "swept_at_ms";
const PEAK_EDGES_KEY: &str = "last";

/// Schedules a full sweep at each peak window's start and end that is still ahead, and —
/// when the latest edge already passed (a window opened or closed while the process was
/// down) and no sweep recorded it — a sweep for that edge now. Idempotent (the members are
/// fixed), so every replica does it at start.
pub async fn schedule_peak_windows(engine: &Engine, now: DateTime<Utc>) -> BusResult<()> {
    let mut latest_past: Option<(DateTime<Utc>, String)> = None;
    for window in &engine.policy().peak_windows {
        for (edge, at) in [("start", window.starts_at), ("end", window.ends_at)] {
            let label = format!("peak-{}-{edge}", window.name);
            if at > now {
                engine
                    .bus()
                    .schedule(QUEUE, &member("all", at, &label), system_time(at))
                    .await?;
            } else if latest_past.as_ref().is_none_or(|(t, _)| at > *t) {
                latest_past = Some((at, label));
            }
        }
    }
    let Some((at, label)) = latest_past else {
        return Ok(());
    };
    let swept = last_swept_edge(engine.bus()).await?;
    if swept.is_none_or(|ms| ms < ceil_ms(at)) {
        tracing::info!(edge = %label, at = %at, "no sweep recorded for the latest peak window edge; re-pricing every sku for it");
        engine
            .bus()
            .schedule(QUEUE, &member("all", at, &label), SystemTime::now())
            .await?;
    }
    Ok(())
}

/// The due time (ms) of the latest peak-window edge a full sweep finished for.
async fn last_swept_edge(bus: &Bus) -> BusResult<Option<i64>> {
    let Some(record) = bus.get_state(PEAK_EDGES, PEAK_EDGES_KEY).await? else {
        return Ok(None);
    };
    Ok(record
        .fields
        .get(FIELD_SWEPT_AT)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| t.parse().ok()))
}

/// Records that the full sweep for the peak edge due at `at` finished (never moves back).
pub(crate) async fn record_swept_edge(bus: &Bus, at: DateTime<Utc>) -> BusResult<()> {
    let ms = ceil_ms(at);
    bus.update_state(PEAK_EDGES, PEAK_EDGES_KEY, |current, write| async move {
        let swept = current
            .as_ref()
            .and_then(|r| r.fields.get(FIELD_SWEPT_AT))
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| t.parse::<i64>().ok());
        Ok::<_, BusError>(if swept.is_some_and(|s| s >= ms) {
            Update::Keep(())
        } else {
            Update::Write(write.set(FIELD_SWEPT_AT, ms.to_string().into_bytes()), ())
        })
    })
    .await
}

/// State namespace of sweeps in progress: the page a sweep has reached, by sweep (its
/// timer member), so a sweep cut short by a crash resumes there instead of starting over.
pub const SWEEPS: &str = "rates-sweeps";
const FIELD_PAGE: &str = "next_page";
/// A sweep logs how far it got every this many pages.
const PAGES_PER_PROGRESS_LOG: u64 = 20;

/// Recomputes every SKU (of `category`, if given) as of `at`, page by page: each page's
/// SKUs computed in memory from the records the page carried and written in one step per
/// partition ([`Engine::apply_decoded`]), up to `sweep_pages` pages at once while the next
/// page is read. `tick` folds a tick (time passed: ended overrides are forgotten, a SKU already
/// ticked at `at` is skipped); otherwise every SKU is recomputed. With `progress`, the sweep records the
/// page it reached under that name after every page and starts from the recorded page if
/// there is one (a previous attempt died). Returns how many SKUs changed.
pub async fn sweep(
    engine: &Engine,
    category: Option<&str>,
    at: DateTime<Utc>,
    tick: bool,
    progress: Option<&str>,
) -> Result<u64, EngineError> {
    let options = engine.options().clone();
    let label = category.unwrap_or("*").to_owned();
    metrics::gauge!("ratemesh_rates_recompute_sweeps_running").increment(1.0);
    let started = std::time::Instant::now();
    let result = async {
        let page: Option<String> = match progress {
            Some(name) => engine
                .bus()
                .get_state(SWEEPS, name)
                .await?
                .and_then(|r| r.fields.get(FIELD_PAGE).cloned())
                .and_then(|p| String::from_utf8(p.to_vec()).ok()),
            None => None,
        };
        if let Some(from) = &page {
            tracing::info!(category = %label, at = %at, page = %from, "resuming a recompute sweep where an earlier attempt stopped");
        }
        let mut changed = 0u64;
        let (mut pages, mut scanned) = (0u64, 0u64);
        // A category's SKUs are listed under it: its sweep reads only them, once records
        // written before categories were listed have been listed too.
        let by_group = match category {
            Some(c) if categories_indexed(engine.bus()).await? => Some(c),
            _ => None,
        };
        let scan = |page: Option<String>| async move {
            let bus = engine.bus();
            match by_group {
                Some(c) => bus.scan_group(NAMESPACE, c, page.as_deref(), options.scan_page).await,
                None => bus.scan_states(NAMESPACE, page.as_deref(), options.scan_page).await,
            }
        };
        // Pages are read one after the other and computed and written up to
        // `sweep_pages` at once, each on a task of its own. They finish in order here, so
        // the progress recorded is a page before which every page is done.
        let mut in_flight = FuturesOrdered::new();
        let mut page = page;
        loop {
            let batch = scan(page.take()).await?;
            let following = batch.next.clone();
            let scanned_here = batch.items.len() as u64;
            metrics::counter!("ratemesh_rates_recompute_scanned_total").increment(scanned_here);
            let work = AbortOnDropHandle::new(tokio::spawn(sweep_page(
                engine.clone(),
                batch.items,
                category.map(str::to_owned),
                at,
                tick,
            )));
            let resume_at = following.clone();
            in_flight.push_back(async move { (work.await, resume_at, scanned_here) });
            while in_flight.len() >= options.sweep_pages.max(1)
                || (following.is_none() && !in_flight.is_empty())
            {
                let Some((done, resume_at, scanned_here)) = in_flight.next().await else {
                    break;
                };
                let (changed_here, computed) = done.map_err(|e| {
                    EngineError::Bus(BusError::Backend(format!("a sweep page failed: {e}")))
                })??;
                metrics::counter!("ratemesh_rates_recompute_skus_total").increment(computed);
                changed += changed_here;
                pages += 1;
                scanned += scanned_here;
                if pages % PAGES_PER_PROGRESS_LOG == 0 {
                    tracing::info!(category = %label, at = %at, scanned, changed, elapsed_s = started.elapsed().as_secs(), "recompute sweep in progress");
                }
                if let (Some(name), Some(next)) = (progress, resume_at) {
                    let write = StateWrite::new(SWEEPS, name).set(FIELD_PAGE, next.into_bytes());
                    engine.bus().write_state(write).await?;
                }
            }
            match following {
                Some(next) => page = Some(next),
                None => break,
            }
        }
        if let Some(name) = progress {
            engine.bus().delete_state(SWEEPS, name, Expect::Any).await?;
        }
        Ok::<u64, EngineError>(changed)
    }
    .await;
    metrics::gauge!("ratemesh_rates_recompute_sweeps_running").decrement(1.0);
    match &result {
        Ok(n) => {
            metrics::counter!("ratemesh_rates_recompute_sweeps_total").increment(1);
            tracing::info!(category = %label, at = %at, changed = n, "recompute sweep finished");
        }
        Err(e) => tracing::warn!(category = %label, error = %e, "recompute sweep failed"),
    }
    result
}

/// Computes and writes one page of a sweep: the records of `category` (all if `None`),
/// ticked or recomputed at `at`. Returns how many changed and how many were computed.
async fn sweep_page(
    engine: Engine,
    items: Vec<(String, StateRecord)>,
    category: Option<String>,
    at: DateTime<Utc>,
    tick: bool,
) -> Result<(u64, u64), EngineError> {
    let runs: Vec<_> = items
        .into_iter()
        .filter_map(|(key, rec)| {
            let record = EngineRecord::decode(rec.fields.get(FIELD_ENGINE)?).ok()?;
            let wanted = category.is_none() || record.category() == category.as_deref();
            let sku = Sku::new(key).ok()?;
            let events = if tick {
                vec![Event::Tick {
                    at,
                    sku: Some(sku.clone()),
                }]
            } else {
                Vec::new()
            };
            wanted.then_some((sku, events, rec.version, record))
        })
        .collect();
    let force = (!tick).then_some(at);
    let outcomes = engine.apply_decoded(runs, force).await;
    let computed = outcomes.len() as u64;
    let mut changed = 0;
    for outcome in outcomes {
        if outcome?.changed {
            changed += 1;
        }
    }
    Ok((changed, computed))
}

/// State namespace noting that every rate record is listed under its category, so a
/// category's sweep can read just that group ([`Bus::scan_group`]).
pub const CATEGORY_INDEX: &str = "rates-category-index";
const CATEGORY_INDEX_KEY: &str = "complete";

async fn categories_indexed(bus: &Bus) -> BusResult<bool> {
    Ok(bus
        .get_state(CATEGORY_INDEX, CATEGORY_INDEX_KEY)
        .await?
        .is_some())
}

/// Lists every rate record under its category, once per deployment: records written
/// before records were listed by category are only in the namespace's index, and until
/// this pass has finished category sweeps walk every SKU. Safe to run on every replica at
/// once and to cut short (each record is moved under its own version check; a record
/// written meanwhile was listed by that write). Returns how many records it moved.
pub async fn index_categories(engine: &Engine) -> Result<u64, EngineError> {
    let bus = engine.bus();
    if categories_indexed(bus).await? {
        return Ok(0);
    }
    let page_size = engine.options().scan_page;
    let (mut page, mut moved) = (None::<String>, 0u64);
    loop {
        let batch = bus
            .scan_states(NAMESPACE, page.as_deref(), page_size)
            .await?;
        let writes = batch
            .items
            .iter()
            .filter_map(|(key, stored)| {
                let record = EngineRecord::decode(stored.fields.get(FIELD_ENGINE)?).ok()?;
                let category = record
                    .category()
                    .filter(|c| !c.is_empty() && !c.contains('\0'))?;
                let write = StateWrite::new(NAMESPACE, key.as_str())
                    .expect_version(stored.version)
                    .listed_in(category);
                Some((write, None))
            })
            .collect();
        for written in bus.write_states(writes).await {
            match written {
                Ok(_) => moved += 1,
                Err(BusError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match batch.next {
            Some(next) => page = Some(next),
            None => break,
        }
    }
    let done = StateWrite::new(CATEGORY_INDEX, CATEGORY_INDEX_KEY).set(
        "at_ms",
        Utc::now().timestamp_millis().to_string().into_bytes(),
    );
    bus.write_state(done).await?;
    if moved > 0 {
        tracing::info!(moved, "rate records listed under their categories");
    }
    Ok(moved)
}

impl From<EngineError> for BusError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Bus(b) => b,
            other => BusError::Backend(other.to_string()),
        }
    }
}
