//! `PolicyService.WhatIf`: a what-if run over a range of the input archive, as an RPC for
//! the merchandising console — progress while the replay runs, then the report.
//!
//! It is served next to the archive, by the ingest module, where `ingest.archive.dir` is
//! set ([`attach`]); without an archive every call is answered FAILED_PRECONDITION naming
//! that setting. Runs are bounded by `[ingest.whatif]`: the range's length, the events
//! read, the wall-clock time and the runs at once. A run reads and replays on blocking
//! threads, never on the async workers, and stops when the client drops the stream.
//!
//! Everything about the request is checked, and the range read, before the stream
//! starts: a refused call replays nothing.

use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use ratemesh_archive::ReadError;
use ratemesh_core::Policy;
use ratemesh_ingest::{IngestSettings, WhatIfSettings};
use ratemesh_proto::v1::policy_service_server::{PolicyService, PolicyServiceServer};
use ratemesh_proto::v1::{
    WhatIfEvent, WhatIfGap, WhatIfPhase, WhatIfProgress, WhatIfRequest, WhatIfResult, what_if_event,
};
use ratemesh_runtime::auth::MethodRoles;
use ratemesh_runtime::{ApiError, Context, Role, ServiceModule, Settings};
use rust_decimal::Decimal;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::archive::{Range, Selection};
use crate::engine::{Cancelled, Control, Phase, Progress, WhatIfOptions};
use crate::history::{History, HistoryOptions};

/// Who may call `PolicyService`: merchandisers try policies before turning them on
/// (admin may call anything).
pub const POLICY_SERVICE: MethodRoles = &[("WhatIf", &[Role::Merchandiser])];

/// Largest policy text a request may carry.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;

/// How often a run sends its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Adds `PolicyService` to `module` (the ingest module, which keeps the archive).
pub fn attach(ctx: &Context, module: ServiceModule) -> ServiceModule {
    module.grpc(
        PolicyServiceServer::new(PolicyApi::new(ctx.settings().clone())),
        POLICY_SERVICE,
    )
}

/// The `PolicyService` implementation.
#[derive(Debug, Clone)]
pub struct PolicyApi {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// For the live baseline policy (`policy.file`).
    settings: Settings,
    /// The archive, when it is on.
    archive: Option<PathBuf>,
    bounds: WhatIfSettings,
    /// One permit per run allowed at once.
    runs: Arc<Semaphore>,
}

impl PolicyApi {
    /// A service reading the archive and bounds of `settings`' `[ingest]` section.
    pub fn new(settings: Settings) -> Self {
        let ingest = settings.section::<IngestSettings>();
        let archive = ingest.archive.dir().map(PathBuf::from);
        let bounds = ingest.whatif.clone();
        Self {
            inner: Arc::new(Inner {
                runs: Arc::new(Semaphore::new(bounds.max_concurrent)),
                settings,
                archive,
                bounds,
            }),
        }
    }
}

/// A checked request.
struct Plan {
    baseline: Policy,
    baseline_source: String,
    candidate: Policy,
    range: Range,
    selection: Selection,
    elasticity: Option<Decimal>,
}

fn policy_text(field: &str, text: &str) -> Result<Policy, ApiError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {MAX_POLICY_BYTES} bytes"),
        ));
    }
    if text.trim().is_empty() {
        return Err(ApiError::invalid(field, "must hold a policy"));
    }
    Policy::from_toml_str(text).map_err(|e| ApiError::invalid(field, e.to_string()))
}

fn timestamp(
    field: &str,
    value: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|t| {
            let nanos = u32::try_from(t.nanos).ok();
            nanos
                .and_then(|n| DateTime::from_timestamp(t.seconds, n))
                .ok_or_else(|| ApiError::invalid(field, "is not a valid timestamp"))
        })
        .transpose()
}

impl Inner {
    fn plan(&self, request: &WhatIfRequest, now: DateTime<Utc>) -> Result<Plan, ApiError> {
        let candidate = policy_text("candidate_policy", &request.candidate_policy)?;
        let (baseline, baseline_source) = match &request.baseline_policy {
            Some(text) => (policy_text("baseline_policy", text)?, "request".to_owned()),
            None => {
                let policy = ratemesh_runtime::policy::load_policy(&self.settings)
                    .map_err(|e| ApiError::Internal(format!("the live policy: {e}")))?;
                let file = self.settings.policy.file.trim();
                let source = if file.is_empty() {
                    "live built-in example".to_owned()
                } else {
                    format!("live policy.file {file}")
                };
                (policy, source)
            }
        };
        let since = timestamp("since", request.since.as_ref())?
            .ok_or_else(|| ApiError::invalid("since", "is required"))?;
        // A later end is read as now: the archive holds nothing after it.
        let until = timestamp("until", request.until.as_ref())?
            .unwrap_or(now)
            .min(now);
        if since >= until {
            return Err(ApiError::invalid(
                "since",
                "must be before until (and before now)",
            ));
        }
        let max_days = self.bounds.max_range_days;
        if until - since > TimeDelta::days(i64::from(max_days)) {
            return Err(ApiError::invalid(
                "until",
                format!("the range may be at most {max_days} days (ingest.whatif.max_range_days)"),
            ));
        }
        let mut selection = Selection::default();
        for (i, sku) in request.skus.iter().enumerate() {
            let sku = sku.trim();
            if sku.is_empty() {
                return Err(ApiError::invalid(format!("skus[{i}]"), "must not be empty"));
            }
            selection.skus.insert(sku.to_owned());
        }
        if let Some(category) = &request.category {
            let category = category.trim();
            if category.is_empty() {
                return Err(ApiError::invalid("category", "must not be empty when set"));
            }
            selection.category = Some(category.to_lowercase());
        }
        let elasticity = request
            .elasticity
            .as_deref()
            .map(|e| {
                Decimal::from_str(e.trim())
                    .map_err(|_| ApiError::invalid("elasticity", format!("`{e}` is not a decimal")))
            })
            .transpose()?;
        Ok(Plan {
            baseline,
            baseline_source,
            candidate,
            range: Range {
                since,
                until,
                today: now.date_naive(),
            },
            selection,
            elasticity,
        })
    }
}

/// The response stream as the generated trait takes it.
type EventStream = Pin<Box<dyn Stream<Item = Result<WhatIfEvent, Status>> + Send>>;

/// The response stream: the run's events; dropping it cancels the run.
pub struct WhatIfStream {
    events: ReceiverStream<Result<WhatIfEvent, Status>>,
    cancelled: Arc<AtomicBool>,
}

impl std::fmt::Debug for WhatIfStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatIfStream")
            .field("cancelled", &self.cancelled.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Stream for WhatIfStream {
    type Item = Result<WhatIfEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.events).poll_next(cx)
    }
}

impl Drop for WhatIfStream {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

fn progress_event(progress: Progress) -> WhatIfEvent {
    let phase = match progress.phase {
        Phase::Replaying => WhatIfPhase::Replaying,
        Phase::Reporting => WhatIfPhase::Reporting,
    };
    WhatIfEvent {
        event: Some(what_if_event::Event::Progress(WhatIfProgress {
            phase: phase.into(),
            done: progress.done,
            total: progress.total,
        })),
    }
}

fn to_timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn time_limit_status(limit: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "the what-if run took longer than {} s (ingest.whatif.time_limit_secs)",
        limit.as_secs()
    ))
}

/// Counts a replay that ended: `completed` (its report was sent), `cancelled` (the client
/// went away), `time_limit` or `failed`.
fn finished(outcome: &'static str) {
    metrics::counter!("ratemesh_whatif_runs_total", "outcome" => outcome).increment(1);
}

/// Replays `history` under the plan's policies, sending progress and then the result to
/// `events`; stops when `cancelled` is set (the stream was dropped) or at `deadline`.
fn replay(
    plan: &Plan,
    history: &History,
    threads: usize,
    deadline: Instant,
    limit: Duration,
    events: &mpsc::Sender<Result<WhatIfEvent, Status>>,
    cancelled: &AtomicBool,
) {
    let timed_out = AtomicBool::new(false);
    let follow = |progress: Progress| {
        if Instant::now() >= deadline {
            timed_out.store(true, Ordering::Relaxed);
            cancelled.store(true, Ordering::Relaxed);
            return;
        }
        if events.is_closed() {
            cancelled.store(true, Ordering::Relaxed);
            return;
        }
        // Progress is best effort: a client slower than the replay misses some.
        let _ = events.try_send(Ok(progress_event(progress)));
    };
    let control = Control {
        progress: &follow,
        cancelled,
        interval: PROGRESS_INTERVAL,
    };
    let options = WhatIfOptions {
        threads,
        elasticity: plan.elasticity,
        ..WhatIfOptions::default()
    };
    let outcome = crate::engine::run_with_progress(
        history,
        &plan.baseline,
        &plan.candidate,
        &options,
        &control,
    );
    let answer = match outcome {
        Err(Cancelled) if timed_out.load(Ordering::Relaxed) => {
            finished("time_limit");
            Err(time_limit_status(limit))
        }
        Err(Cancelled) => {
            finished("cancelled");
            tracing::info!("what-if run cancelled: the client went away");
            return;
        }
        Ok(_) if Instant::now() >= deadline => {
            finished("time_limit");
            Err(time_limit_status(limit))
        }
        Ok(report) => match serde_json::to_string(&report) {
            Ok(report_json) => Ok(WhatIfEvent {
                event: Some(what_if_event::Event::Result(WhatIfResult {
                    report_json,
                    baseline_source: plan.baseline_source.clone(),
                    gaps: report
                        .history
                        .gaps
                        .iter()
                        .map(|g| WhatIfGap {
                            from: Some(to_timestamp(g.from)),
                            until: Some(to_timestamp(g.until)),
                        })
                        .collect(),
                    events: history.events().len() as u64,
                })),
            }),
            Err(e) => Err(Status::internal(format!("serialising the report: {e}"))),
        },
    };
    finished(if answer.is_ok() {
        "completed"
    } else {
        "failed"
    });
    let _ = events.blocking_send(answer);
}

#[tonic::async_trait]
impl PolicyService for PolicyApi {
    #[tracing::instrument(skip_all, fields(since, until))]
    async fn what_if(
        &self,
        request: Request<WhatIfRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let started = Instant::now();
        let inner = &self.inner;
        let Some(dir) = inner.archive.clone() else {
            return Err(ApiError::FailedPrecondition {
                message: "the input archive is off on this process (ingest.archive.dir is empty): what-if runs read it".to_owned(),
                conflicts: Vec::new(),
            }
            .into());
        };
        let plan = inner.plan(request.get_ref(), Utc::now())?;
        tracing::Span::current()
            .record("since", plan.range.since.to_rfc3339())
            .record("until", plan.range.until.to_rfc3339());
        let permit = inner.runs.clone().try_acquire_owned().map_err(|_| {
            Status::from(ApiError::ResourceExhausted {
                message: format!(
                    "{} what-if run(s) already running on this process (ingest.whatif.max_concurrent)",
                    inner.bounds.max_concurrent
                ),
                retry_after: Duration::from_secs(30),
            })
        })?;
        let limit = Duration::from_secs(inner.bounds.time_limit_secs);
        let deadline = started + limit;
        let max_events = inner.bounds.max_events;
        let (range, selection) = (plan.range.clone(), plan.selection.clone());
        // The read holds the slot: a caller that goes away while it reads does not free
        // the slot for another read until this one is done.
        let (permit, read) = tokio::task::spawn_blocking(move || {
            // The cap stops the read itself: a range too large to replay is never held
            // in memory whole.
            let cap = usize::try_from(max_events).unwrap_or(usize::MAX);
            let read =
                crate::archive::select_within(&dir, &range, &selection, cap).map(|selected| {
                    crate::archive::history(&selected, HistoryOptions::default().max_gap)
                });
            (permit, read)
        })
        .await
        .map_err(|e| Status::internal(format!("reading the archive: {e}")))?;
        let history = match read {
            Ok(history) => history,
            Err(ReadError::TooMany { limit }) => {
                return Err(ApiError::FailedPrecondition {
                    message: format!(
                        "the archive holds more than ingest.whatif.max_events ({limit}) events for the range, before any skus or category narrowing: narrow the range"
                    ),
                    conflicts: Vec::new(),
                }
                .into());
            }
            Err(e) => return Err(Status::internal(format!("reading the archive: {e}"))),
        };
        if Instant::now() >= deadline {
            return Err(time_limit_status(limit));
        }

        let (events, receiver) = mpsc::channel(16);
        let cancelled = Arc::new(AtomicBool::new(false));
        let flag = cancelled.clone();
        let threads = inner.bounds.threads;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            replay(&plan, &history, threads, deadline, limit, &events, &flag);
        });
        Ok(Response::new(Box::pin(WhatIfStream {
            events: ReceiverStream::new(receiver),
            cancelled,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratemesh_runtime::settings::{EnvSource, SectionDef};

    fn api(archive: &std::path::Path) -> PolicyApi {
        let mut settings =
            Settings::load(None, EnvSource::None, &[SectionDef::of::<IngestSettings>()])
                .expect("the defaults load");
        settings.section_mut::<IngestSettings>().archive.dir =
            archive.to_str().expect("utf-8").to_owned();
        PolicyApi::new(settings)
    }

    fn request(now: DateTime<Utc>) -> Request<WhatIfRequest> {
        let since = now - TimeDelta::hours(1);
        Request::new(WhatIfRequest {
            candidate_policy: ratemesh_core::EXAMPLE_POLICY_TOML.to_owned(),
            baseline_policy: Some(ratemesh_core::EXAMPLE_POLICY_TOML.to_owned()),
            since: Some(to_timestamp(since)),
            until: Some(to_timestamp(now)),
            ..WhatIfRequest::default()
        })
    }

    #[tokio::test]
    async fn a_run_beyond_the_concurrency_bound_is_resource_exhausted_until_one_ends() {
        let archive = tempfile::tempdir().expect("tempdir");
        let api = api(archive.path());
        let running = api
            .inner
            .runs
            .clone()
            .try_acquire_owned()
            .expect("the one slot");
        let Err(status) = api.what_if(request(Utc::now())).await else {
            panic!("a second run was let through");
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("ingest.whatif.max_concurrent"));
        drop(running);
        let mut stream = api
            .what_if(request(Utc::now()))
            .await
            .expect("the slot is free")
            .into_inner();
        let mut last = None;
        while let Some(event) = tokio_stream::StreamExt::next(&mut stream).await {
            last = Some(event.expect("no error"));
        }
        assert!(matches!(
            last,
            Some(WhatIfEvent {
                event: Some(what_if_event::Event::Result(_))
            })
        ));
    }

    #[test]
    fn dropping_the_stream_cancels_the_run_and_a_late_run_is_deadline_exceeded() {
        let (_sender, receiver) = mpsc::channel(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        drop(WhatIfStream {
            events: ReceiverStream::new(receiver),
            cancelled: cancelled.clone(),
        });
        assert!(cancelled.load(Ordering::Relaxed));

        // A history of several chunks, replayed past its deadline: the workers stop at
        // the first report and the stream ends with DEADLINE_EXCEEDED, not a report.
        let now = Utc::now();
        let mut events = Vec::new();
        for n in 0..(3 * crate::engine::CHUNK as u64) {
            events.push(ratemesh_core::Event::StockObserved {
                sku: ratemesh_core::Sku::new(format!("S-{}", n % 7)).unwrap(),
                location: String::new(),
                on_hand: ratemesh_core::Quantity::new(Decimal::from(1000 - n % 500)).unwrap(),
                reserved: ratemesh_core::Quantity::ZERO,
                sequence: n + 1,
                as_of: now + TimeDelta::seconds(n as i64),
                erp_velocity: None,
                received_at: Some(now + TimeDelta::seconds(n as i64)),
            });
        }
        let history = History::from_events(events, TimeDelta::days(1));
        let plan = api(std::path::Path::new("/nonexistent"))
            .inner
            .plan(request(now).get_ref(), now)
            .expect("a good request");
        let (sender, mut receiver) = mpsc::channel(64);
        let cancelled = AtomicBool::new(false);
        let limit = Duration::from_secs(600);
        replay(
            &plan,
            &history,
            1,
            Instant::now(),
            limit,
            &sender,
            &cancelled,
        );
        drop(sender);
        let mut seen = Vec::new();
        while let Some(event) = receiver.blocking_recv() {
            seen.push(event);
        }
        assert!(cancelled.load(Ordering::Relaxed));
        let last = seen.pop().expect("an answer");
        assert_eq!(
            last.expect_err("no report").code(),
            tonic::Code::DeadlineExceeded
        );
        assert!(
            seen.iter().all(|e| matches!(
                e,
                Ok(WhatIfEvent {
                    event: Some(what_if_event::Event::Progress(_))
                })
            )),
            "{seen:?}"
        );
    }

    #[test]
    fn every_rpc_is_declared() {
        ratemesh_runtime::auth::check_declaration(ratemesh_proto::POLICY_SERVICE, POLICY_SERVICE)
            .unwrap();
    }
}
