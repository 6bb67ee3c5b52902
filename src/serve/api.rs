//! The handlers: the JSON API (`/api/v1/...`, each answer with `schema_version`), the log
//! (bytes from an offset, or server-sent events as the agent writes), the webhook and the page.

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use futures::Stream;
use serde::{Deserialize, Serialize};

use super::{App, page};
use crate::github::webhook::{self, Meaning};
use crate::journal::AttemptRow;
use crate::report::SCHEMA_VERSION;
use crate::report::serve::ServeState;

/// The most log bytes one answer (or one event) carries.
const LOG_CHUNK: usize = 256 * 1024;
/// How often a followed log is looked at.
const LOG_POLL: Duration = Duration::from_millis(200);
/// The most of a task's log the page shows when it is rendered (the stream goes on from there).
const PAGE_LOG_TAIL: u64 = 64 * 1024;

#[derive(Serialize)]
struct ErrorBody<'a> {
    schema_version: u32,
    error: &'a str,
}

pub(super) fn error(status: StatusCode, why: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            schema_version: SCHEMA_VERSION,
            error: why,
        }),
    )
        .into_response()
}

fn failed(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
}

pub(super) async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such route: /, /healthz, /api/v1/state, /api/v1/workers, /api/v1/tasks/{id}[/log[/stream]], POST /webhooks/github",
    )
}

/// How long a collected state is served again.
pub(super) const STATE_TTL: Duration = Duration::from_secs(2);

/// The state, collected at most once per `STATE_TTL` whatever the number of requests (they
/// wait for the one collection under way).
async fn collect(app: &App) -> Result<ServeState, Response> {
    let mut cached = app.state.lock().await;
    if let Some((at, state)) = cached.as_ref()
        && at.elapsed() < STATE_TTL
    {
        return Ok(state.clone());
    }
    let state = crate::report::serve::collect(&app.project, app.printer)
        .await
        .map_err(|e| failed(e.to_string()))?;
    *cached = Some((std::time::Instant::now(), state.clone()));
    Ok(state)
}

pub(super) async fn healthz(State(app): State<App>, headers: HeaderMap) -> Response {
    let journal = app.journal.clone();
    let health = app.health.clone();
    let mut report = match tokio::task::spawn_blocking(move || health.report(&journal)).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    // Without the token, only the statuses: paths, repository names and error texts are for
    // whoever may see the rest.
    if !super::authorized(&app, &headers) {
        for h in report.services.values_mut() {
            h.detail.clear();
        }
    }
    let status = if report.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

pub(super) async fn state(State(app): State<App>) -> Response {
    match collect(&app).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r,
    }
}

#[derive(Serialize)]
struct Workers {
    schema_version: u32,
    workers: Vec<crate::report::status::WorkerStatus>,
    fleet_hourly_usd: f64,
    provider_list_error: Option<String>,
}

pub(super) async fn workers(State(app): State<App>) -> Response {
    match collect(&app).await {
        Ok(s) => Json(Workers {
            schema_version: SCHEMA_VERSION,
            workers: s.status.workers,
            fleet_hourly_usd: s.status.fleet_hourly_usd,
            provider_list_error: s.status.provider_list_error,
        })
        .into_response(),
        Err(r) => r,
    }
}

#[derive(Serialize)]
struct TaskDetail {
    schema_version: u32,
    task: Option<crate::tracker::Task>,
    attempts: Vec<AttemptRow>,
    pull_request: Option<crate::report::status::PullRequestStatus>,
    running: Option<crate::report::status::RunningAttempt>,
}

pub(super) async fn task(State(app): State<App>, Path(id): Path<String>) -> Response {
    let status = match collect(&app).await {
        Ok(s) => s.status,
        Err(r) => return r,
    };
    let attempts = match attempts_of(&app, &id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let task = status.tasks.balls.into_iter().find(|t| t.id == id);
    if task.is_none() && attempts.is_empty() {
        return error(StatusCode::NOT_FOUND, &format!("no task {id}"));
    }
    Json(TaskDetail {
        schema_version: SCHEMA_VERSION,
        task,
        attempts,
        pull_request: status.pull_requests.into_iter().find(|p| p.task == id),
        running: status.running.into_iter().find(|r| r.task == id),
    })
    .into_response()
}

async fn attempts_of(app: &App, id: &str) -> Result<Vec<AttemptRow>, Response> {
    let (journal, id) = (app.journal.clone(), id.to_string());
    tokio::task::spawn_blocking(move || journal.attempts(Some(&id)))
        .await
        .map_err(failed)?
        .map_err(failed)
}

#[derive(Deserialize)]
pub(super) struct LogQuery {
    #[serde(default)]
    offset: u64,
    /// The attempt number (default: the latest).
    attempt: Option<i64>,
}

/// The attempt whose log a request means.
async fn log_attempt(app: &App, id: &str, attempt: Option<i64>) -> Result<AttemptRow, Response> {
    let attempts = attempts_of(app, id).await?;
    let pick = match attempt {
        Some(n) => attempts.into_iter().rev().find(|a| a.attempt == n),
        None => attempts.into_iter().last(),
    };
    pick.ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            &match attempt {
                Some(n) => format!("{id} has no attempt {n}"),
                None => format!("{id} has not run yet"),
            },
        )
    })
}

/// Up to `max` bytes of `path` from `offset` (none past its end), and the file's length.
fn read_from(path: &str, offset: u64, max: usize) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if offset >= len {
        return Ok((Vec::new(), len));
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(max.min((len - offset) as usize));
    f.take(max as u64).read_to_end(&mut buf)?;
    Ok((buf, len))
}

/// How much of `bytes` ends on a whole UTF-8 character (a character cut by the read waits for
/// the next one).
fn whole_chars(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        // Not UTF-8 at all there: sent as it is (lossily), never held back for good.
        Err(_) => bytes.len(),
    }
}

/// `GET /api/v1/tasks/{id}/log?offset=N`: the log's bytes from N (the controller's copy, masked
/// as it was written), with `X-Log-Offset` (where the next read starts) and `X-Log-Complete`
/// (the attempt ended and nothing follows).
pub(super) async fn log(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let a = match log_attempt(&app, &id, q.attempt).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let path = a.log_path.clone();
    let offset = q.offset;
    let (bytes, len) =
        match tokio::task::spawn_blocking(move || read_from(&path, offset, LOG_CHUNK)).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
            Ok(Err(e)) => return failed(format!("reading {}: {e}", a.log_path)),
            Err(e) => return failed(e),
        };
    let next = offset + bytes.len() as u64;
    let complete = a.ended_at.is_some() && next >= len;
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        bytes,
    )
        .into_response();
    let h = r.headers_mut();
    h.insert("x-log-offset", HeaderValue::from(next));
    h.insert("x-log-attempt", HeaderValue::from(a.attempt));
    h.insert(
        "x-log-complete",
        HeaderValue::from_static(if complete { "true" } else { "false" }),
    );
    r
}

/// Where a followed log is.
struct Cursor {
    app: App,
    attempt_id: i64,
    path: String,
    offset: u64,
    done: bool,
}

/// `GET /api/v1/tasks/{id}/log/stream?offset=N`: server-sent events as the agent writes. Each
/// `log` event's data is a JSON string of the bytes after the previous event and its id is the
/// offset after them, so a client that reconnects (EventSource sends `Last-Event-ID` by itself)
/// or asks with `?offset=` gets neither a gap nor a repeat. An `end` event follows the
/// attempt's last bytes.
pub(super) async fn log_stream(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
) -> Response {
    let a = match log_attempt(&app, &id, q.attempt).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let offset = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(q.offset);
    let cursor = Cursor {
        app,
        attempt_id: a.id,
        path: a.log_path,
        offset,
        done: false,
    };
    Sse::new(follow(cursor))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn follow(cursor: Cursor) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(cursor, |mut c| async move {
        if c.done {
            return None;
        }
        loop {
            // Whether it ended is read before the bytes: what was written before the end is
            // then surely in the read.
            // A journal that cannot be read now (busy) is no end: the next look decides.
            let ended = {
                let (journal, id) = (c.app.journal.clone(), c.attempt_id);
                tokio::task::spawn_blocking(move || journal.attempt(id))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .is_some_and(|a| a.is_none_or(|a| a.ended_at.is_some()))
            };
            let (path, offset) = (c.path.clone(), c.offset);
            let (bytes, _) =
                tokio::task::spawn_blocking(move || read_from(&path, offset, LOG_CHUNK))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
            let take = whole_chars(&bytes);
            if take > 0 {
                c.offset += take as u64;
                let text = String::from_utf8_lossy(&bytes[..take]);
                let data = serde_json::to_string(&text).expect("a string serializes");
                let event = Event::default()
                    .event("log")
                    .id(c.offset.to_string())
                    .data(data);
                return Some((Ok(event), c));
            }
            if ended {
                c.done = true;
                let event = Event::default()
                    .event("end")
                    .id(c.offset.to_string())
                    .data("{}");
                return Some((Ok(event), c));
            }
            tokio::select! {
                _ = tokio::time::sleep(LOG_POLL) => {}
                // The server is stopping: the stream ends (a client reconnects to the next one).
                _ = c.app.stop.cancelled() => return None,
            }
        }
    })
}

/// `POST /webhooks/github`: see `webhook.rs`. Signature first, then the delivery id, then the
/// event; every refusal and every action is a line on stderr.
pub(super) async fn webhook(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let delivery = h("x-github-delivery").unwrap_or("").to_string();
    let event = h("x-github-event").unwrap_or("").to_string();
    let body = match body {
        Ok(b) => b,
        Err(rejected) => {
            app.printer.warn(format!(
                "webhook refused (delivery {}, event {}): {} (the limit is {} bytes)",
                or_none(&delivery),
                or_none(&event),
                rejected.body_text(),
                webhook::MAX_BODY
            ));
            return rejected.into_response();
        }
    };
    if let Err(refused) = webhook::verify(
        app.webhook_secret.as_deref(),
        h("x-hub-signature-256"),
        &body,
    ) {
        app.printer.warn(format!(
            "webhook refused (delivery {}, event {}): {refused}",
            or_none(&delivery),
            or_none(&event)
        ));
        return super::unauthorized(&refused.to_string());
    }
    if delivery.is_empty() || event.is_empty() {
        app.printer
            .warn("webhook refused: no X-GitHub-Delivery or X-GitHub-Event header");
        return error(
            StatusCode::BAD_REQUEST,
            "X-GitHub-Delivery and X-GitHub-Event are required",
        );
    }
    let (journal, id, ev) = (app.journal.clone(), delivery.clone(), event.clone());
    let new = tokio::task::spawn_blocking(move || {
        journal.webhook_delivery_new(
            &id,
            &ev,
            chrono::Duration::hours(webhook::REPLAY_WINDOW_HOURS),
        )
    })
    .await;
    match new {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            app.printer.status(format!(
                "webhook delivery {delivery} ({event}) was received before: nothing done"
            ));
            return answer("duplicate", "this delivery was received before");
        }
        Ok(Err(e)) => return failed(e),
        Err(e) => return failed(e),
    }
    match webhook::meaning(&event, &body) {
        Meaning::Ping => {
            app.printer.status(format!(
                "webhook ping (delivery {delivery}): the hook works"
            ));
            answer("pong", "cwo is listening")
        }
        Meaning::Wake => {
            app.wake.notify_one();
            app.printer.status(format!(
                "webhook {event} (delivery {delivery}): looking at the tracker now"
            ));
            answer("woke", "the loop reads the tracker and pull requests now")
        }
        Meaning::Ignored(why) => answer("ignored", &why),
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "none" } else { s }
}

#[derive(Serialize)]
struct WebhookAnswer<'a> {
    schema_version: u32,
    result: &'a str,
    detail: &'a str,
}

fn answer(result: &str, detail: &str) -> Response {
    Json(WebhookAnswer {
        schema_version: SCHEMA_VERSION,
        result,
        detail,
    })
    .into_response()
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    task: Option<String>,
}

/// `GET /`: the dashboard, with `?task=ID` the task's log so far (its last `PAGE_LOG_TAIL`
/// bytes) ready to be followed live.
pub(super) async fn page(State(app): State<App>, Query(q): Query<PageQuery>) -> Response {
    let state = match collect(&app).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut log = None;
    if let Some(task) = &q.task
        && let Ok(a) = log_attempt(&app, task, None).await
    {
        let path = a.log_path.clone();
        let (from, bytes) = tokio::task::spawn_blocking(move || {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let from = len.saturating_sub(PAGE_LOG_TAIL);
            let (bytes, _) = read_from(&path, from, PAGE_LOG_TAIL as usize).unwrap_or_default();
            (from, bytes)
        })
        .await
        .unwrap_or_default();
        let take = whole_chars(&bytes);
        log = Some(page::Log {
            task: task.clone(),
            attempt: a.attempt,
            text: String::from_utf8_lossy(&bytes[..take]).into_owned(),
            offset: from + take as u64,
        });
    }
    let html = page::render(&state, log.as_ref());
    let mut r = Html(html).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
