//! The what-if page: a candidate policy replayed next to a baseline over a range of the
//! input archive (`PolicyService.WhatIf`), its progress streamed to the page as it runs and
//! then its report.
//!
//! The answer is NDJSON, one object a line, written as the service's events arrive:
//! `{"event":"progress","phase","done","total"}` while the replay runs, then one
//! `{"event":"result","report","baseline_source","gaps","events"}`. A failure after the
//! stream started (the run's time limit) is a last `{"event":"error",...}` line with the
//! HTTP status and body a refusal before it would have had. The gRPC stream lives in the
//! response body: a browser that cancels drops the body, and with it the stream, which
//! cancels the run on the server.

use std::convert::Infallible;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use http::HeaderValue;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use ratemesh_proto::v1;
use ratemesh_proto::v1::what_if_event::Event;
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::Code;

use super::{body, non_empty, time};
use crate::ConsoleState;
use crate::error::GatewayError;
use crate::json;
use crate::session::SignedIn;

/// A what-if run as the form sends it; the service checks every field.
#[derive(Deserialize)]
pub(super) struct Run {
    /// The candidate policy's TOML text.
    #[serde(default)]
    candidate_policy: String,
    /// The baseline policy's TOML text; empty: the live policy of the serving process.
    baseline_policy: Option<String>,
    /// Start of the range (RFC 3339).
    since: Option<String>,
    /// End of the range (RFC 3339); empty: now.
    until: Option<String>,
    /// Only these SKUs.
    #[serde(default)]
    skus: Vec<String>,
    /// Only this category.
    category: Option<String>,
    /// An assumed elasticity, for the report's separate estimate.
    elasticity: Option<String>,
}

/// `POST /api/whatif`: runs a what-if and streams its progress, then its report, as NDJSON.
#[tracing::instrument(skip_all)]
pub(super) async fn run(
    State(state): State<ConsoleState>,
    user: SignedIn,
    request: Result<Json<Run>, JsonRejection>,
) -> Result<Response, GatewayError> {
    let run = body(request)?;
    let request = v1::WhatIfRequest {
        since: time("since", run.since)?,
        until: time("until", run.until)?,
        candidate_policy: run.candidate_policy,
        // An empty baseline box means the live policy, not an empty policy.
        baseline_policy: run.baseline_policy.filter(|text| !text.trim().is_empty()),
        skus: run.skus,
        category: non_empty(run.category),
        elasticity: non_empty(run.elasticity),
    };
    let events = state
        .gateway
        .policy(&user)?
        .what_if(request)
        .await
        .map_err(not_served_here)?
        .into_inner();

    let mut finished = false;
    let lines = events
        .take_until(state.stop.clone().cancelled_owned())
        .map(Some)
        // A stream that ends without its result did not finish: say so as its last line.
        .chain(futures::stream::once(async { None }))
        .filter_map(move |event| {
            let line = match event {
                _ if finished => None,
                Some(Ok(v1::WhatIfEvent { event: Some(event) })) => {
                    finished = matches!(event, Event::Result(_));
                    Some(event_line(event))
                }
                Some(Ok(v1::WhatIfEvent { event: None })) => None,
                Some(Err(status)) => {
                    finished = true;
                    Some(error_line(GatewayError::from(status)))
                }
                None => Some(error_line(GatewayError::from(tonic::Status::aborted(
                    "the what-if run ended without a report",
                )))),
            };
            std::future::ready(line.map(|line| Ok::<_, Infallible>(format!("{line}\n"))))
        });
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson; charset=utf-8"),
            ),
            (CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        Body::from_stream(lines),
    )
        .into_response())
}

/// A process that does not serve `PolicyService` answers UNIMPLEMENTED: say where what-if
/// runs are served instead of tonic's words.
fn not_served_here(status: tonic::Status) -> GatewayError {
    if status.code() != Code::Unimplemented {
        return status.into();
    }
    tonic::Status::unimplemented(
        "what-if runs are not served at console.policy_endpoint: point it at the ingest \
         process that keeps the input archive (ingest.archive.dir)",
    )
    .into()
}

/// A line of the answer for one of the service's events.
fn event_line(event: Event) -> Value {
    match event {
        Event::Progress(progress) => json!({
            "event": "progress",
            "phase": match progress.phase() {
                v1::WhatIfPhase::Replaying => "replaying",
                v1::WhatIfPhase::Reporting => "reporting",
                v1::WhatIfPhase::Unspecified => "unspecified",
            },
            "done": progress.done,
            "total": progress.total,
        }),
        Event::Result(result) => match serde_json::from_str::<Value>(&result.report_json) {
            Ok(report) => json!({
                "event": "result",
                "report": report,
                "baseline_source": result.baseline_source,
                "gaps": result.gaps.iter().map(|gap| json!({
                    "from": json::time(gap.from.as_ref()),
                    "until": json::time(gap.until.as_ref()),
                })).collect::<Vec<_>>(),
                "events": result.events,
            }),
            Err(err) => error_line(GatewayError::from(tonic::Status::internal(format!(
                "the what-if report is not JSON: {err}"
            )))),
        },
    }
}

/// The last line of an answer whose run failed after it started: the status and body the
/// failure would have answered with before.
fn error_line(error: GatewayError) -> Value {
    let mut line = error.body();
    line["event"] = json!("error");
    line["status"] = json!(error.http_status().as_u16());
    line
}

#[cfg(test)]
mod tests {
    use tonic_types::{ErrorDetails, StatusExt as _};

    use super::*;

    #[test]
    fn a_process_without_policy_service_is_named_by_the_setting_that_points_at_it() {
        let err = not_served_here(tonic::Status::unimplemented(""));
        assert_eq!(err.http_status(), http::StatusCode::NOT_IMPLEMENTED);
        let message = err.body()["error"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.contains("console.policy_endpoint") && message.contains("ingest.archive.dir"),
            "{message}"
        );
        let other = not_served_here(tonic::Status::failed_precondition("archive off"));
        assert_eq!(other.body()["error"], "archive off");
    }

    #[test]
    fn lines_carry_progress_the_report_and_a_late_failure_with_its_status_and_field() {
        let progress = event_line(Event::Progress(v1::WhatIfProgress {
            phase: v1::WhatIfPhase::Replaying as i32,
            done: 3,
            total: 10,
        }));
        assert_eq!(
            progress,
            json!({"event": "progress", "phase": "replaying", "done": 3, "total": 10})
        );
        let result = event_line(Event::Result(v1::WhatIfResult {
            report_json: r#"{"program": {"units_sold": "4"}}"#.into(),
            baseline_source: "request".into(),
            gaps: vec![v1::WhatIfGap {
                from: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                }),
                until: None,
            }],
            events: 15,
        }));
        assert_eq!(result["event"], "result");
        assert_eq!(result["report"]["program"]["units_sold"], "4");
        assert_eq!(result["gaps"][0]["from"], "1970-01-01T00:00:00.000Z");
        assert_eq!(result["events"], 15);
        let broken = event_line(Event::Result(v1::WhatIfResult {
            report_json: "{".into(),
            ..Default::default()
        }));
        assert_eq!(
            (&broken["event"], &broken["status"]),
            (&json!("error"), &json!(502))
        );

        let late = error_line(GatewayError::from(tonic::Status::deadline_exceeded(
            "the run took longer than 600 s",
        )));
        assert_eq!(late["status"], 504);
        assert_eq!(late["error"], "the run took longer than 600 s");
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation("since", "is required");
        let refused = error_line(GatewayError::from(tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "since: is required",
            details,
        )));
        assert_eq!(
            (&refused["status"], &refused["field"]),
            (&json!(400), &json!("since"))
        );
    }
}
