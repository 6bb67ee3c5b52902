//! One ball, from claim to complete / blocked / pending: attempts with retries, the detached
//! agent followed by byte offset (surviving dropped connections), delivery of the branch.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::agent::detached::{AgentState, Detached, FollowEnd};
use crate::agent::{self, Outcome};
use crate::git::{self, WorkerCheckout};
use crate::journal::{AttemptRow, NewAttempt};
use crate::printer::fmt_secs;
use crate::provider::Provider;
use crate::tracker::Task;
use crate::transport::{ExecStatus, Transport, TransportError};

/// Between SIGTERM and SIGKILL for an agent that overran its timeout or was aborted.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long the controller keeps trying to reach a worker the provider says is alive (one
/// outage: the clock restarts whenever the worker answers).
const RECONNECT_LIMIT: Duration = Duration::from_secs(300);
/// Between the two reads that must both say a worker is gone.
const GONE_RECHECK: Duration = Duration::from_secs(2);

pub(super) struct TaskCtx {
    pub shared: Arc<Shared>,
    pub provider: Arc<dyn Provider>,
    pub transport: Arc<dyn Transport>,
    pub worker: String,
    pub workspace: String,
    pub abort: CancellationToken,
}

pub(super) struct TaskReport {
    pub id: String,
    /// The worker the task ran on.
    pub worker: String,
    pub outcome: Outcome,
    pub agent: Duration,
    pub git: Duration,
    /// Attempts this controller spent on the ball, across workers.
    pub tries: u32,
    /// The worker disappeared under the task (the provider says it is gone): the loop tears it
    /// down and the ball, when it has tries left, goes back to the queue for a new worker.
    pub worker_gone: bool,
}

/// Why an attempt stopped before the agent's result could be judged.
enum AttemptError {
    /// Counts as a failed attempt (retried within `agent.max_attempts`).
    Failed(String),
    /// The provider says the worker is gone: no later attempt can run there.
    WorkerGone(String),
}

impl From<String> for AttemptError {
    fn from(reason: String) -> AttemptError {
        AttemptError::Failed(reason)
    }
}

/// An error from a step on the worker that may only mean the connection was lost.
trait Lost: std::fmt::Display {
    fn lost(&self) -> bool;
}

impl Lost for TransportError {
    fn lost(&self) -> bool {
        self.is_connection()
    }
}

impl Lost for git::GitError {
    fn lost(&self) -> bool {
        self.is_connection()
    }
}

/// Runs an idempotent step on the worker. A lost connection never means a dead worker: the step
/// is retried while the provider says the worker lives, and a worker the provider says is gone
/// ends the attempt as `WorkerGone` (DESIGN invariant 5).
async fn on_worker<T, E, Fut>(
    ctx: &TaskCtx,
    what: &str,
    mut step: impl FnMut() -> Fut,
) -> Result<T, AttemptError>
where
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Lost,
{
    let mut since = None;
    let mut backoff = Duration::from_millis(250);
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if e.lost() => {
                if !still_alive(ctx, &e.to_string(), &mut since, &mut backoff).await? {
                    return Err(AttemptError::WorkerGone(format!(
                        "worker {} is gone ({what})",
                        ctx.worker
                    )));
                }
            }
            Err(e) => {
                return Err(AttemptError::Failed(format!(
                    "{what} on {}: {e}",
                    ctx.worker
                )));
            }
        }
    }
}

/// Runs a ball to its end and records the outcome in the tracker and the journal. `resume` is an
/// attempt a previous controller left running on this worker; `prior_tries` are attempts this
/// controller already spent on the ball on workers that went away.
pub(super) async fn run_task(
    ctx: TaskCtx,
    task: Task,
    resume: Option<AttemptRow>,
    prior_tries: u32,
) -> TaskReport {
    let sh = ctx.shared.clone();
    let mut report = TaskReport {
        id: task.id.clone(),
        worker: ctx.worker.clone(),
        outcome: Outcome::Aborted,
        agent: Duration::ZERO,
        git: Duration::ZERO,
        tries: prior_tries,
        worker_gone: false,
    };
    let outcome = drive_task(&ctx, &task, resume, &mut report)
        .await
        .unwrap_or_else(Outcome::Blocked);
    let requeue = report.worker_gone && report.tries < sh.settings.agent.max_attempts.get();
    let settle = match &outcome {
        Outcome::Failed(reason) if requeue => {
            sh.printer.status(format!(
                "↻ {} attempt {}/{} lost its worker ({reason}); back to the queue for a new worker",
                task.id, report.tries, sh.settings.agent.max_attempts
            ));
            sh.tracker.release(&task.id).map(|_| "pending")
        }
        Outcome::Aborted => {
            sh.printer
                .status(format!("■ {} aborted; back to pending", task.id));
            sh.tracker.release(&task.id).map(|_| "pending")
        }
        Outcome::Blocked(reason) | Outcome::Failed(reason) => {
            sh.printer
                .status(format!("✗ {} blocked: {reason}", task.id));
            sh.tracker
                .block(&task.id, reason)
                .and_then(|_| {
                    sh.tracker
                        .progress(&task, &format!("cwo: {} blocked: {reason}", task.id))
                })
                .map(|_| "blocked")
        }
        Outcome::Done { .. } => Ok("complete"),
    };
    match settle {
        Ok(state) => {
            let reason = match &outcome {
                Outcome::Blocked(r) | Outcome::Failed(r) => Some(r.as_str()),
                _ => None,
            };
            let _ = sh
                .journal
                .task_state(&task.id, &task.title, state, None, reason);
        }
        Err(e) => sh.printer.warn(format!(
            "could not record the outcome of {} in the tracker: {e}",
            task.id
        )),
    }
    report.outcome = outcome;
    report
}

/// What one attempt works with.
struct Attempt {
    id: i64,
    seq: u32,
    this_run: u32,
    dir: String,
    log_path: PathBuf,
    base: String,
    started_at: chrono::DateTime<Utc>,
    /// The complete checkout of an attempt a stopped controller left (None: a new attempt).
    resumed: Option<WorkerCheckout>,
}

/// Runs attempts until one decides the ball. `Err` = a reason to block the ball at once.
async fn drive_task(
    ctx: &TaskCtx,
    task: &Task,
    mut resume: Option<AttemptRow>,
    report: &mut TaskReport,
) -> Result<Outcome, String> {
    let sh = &ctx.shared;
    let settings = &sh.settings;
    let branch = format!("{}{}", settings.git.branch_prefix, task.id);
    let tmp = sh.state_dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let bundle = tmp.join(format!("{}-input.bundle", task.id));
    let mut base: Option<String> = None;
    let max = settings.agent.max_attempts.get();
    while report.tries < max {
        if ctx.abort.is_cancelled() {
            return Ok(Outcome::Aborted);
        }
        // An attempt left by a stopped controller is reattached only when its checkout was
        // complete: before that, its agent cannot have started, and a fresh attempt replaces it.
        let resumed = match resume.take() {
            Some(row) => match on_worker(ctx, "looking at the checkout", || {
                WorkerCheckout::existing(
                    ctx.transport.as_ref(),
                    row.workdir.clone(),
                    &branch,
                    &row.base,
                )
            })
            .await
            {
                Ok(Some(co)) => Some((row, co)),
                Ok(None) => {
                    sh.printer.status(format!(
                        "{}: attempt {} stopped while its checkout was being prepared (the agent never started); starting a fresh attempt",
                        task.id, row.attempt
                    ));
                    sh.journal
                        .attempt_end(
                            row.id,
                            "aborted",
                            "-",
                            row.branch.as_deref(),
                            None,
                            Some("controller stopped while preparing the checkout"),
                        )
                        .map_err(|e| e.to_string())?;
                    None
                }
                Err(AttemptError::WorkerGone(reason)) => {
                    let _ = sh.journal.attempt_end(
                        row.id,
                        "failed",
                        "-",
                        row.branch.as_deref(),
                        None,
                        Some(&reason),
                    );
                    report.worker_gone = true;
                    return Ok(Outcome::Failed(reason));
                }
                Err(AttemptError::Failed(reason)) => {
                    return Err(format!("resuming attempt {}: {reason}", row.attempt));
                }
            },
            None => None,
        };
        report.tries += 1;
        let this_run = report.tries;
        let attempt = match resumed {
            Some((row, co)) => Attempt {
                id: row.id,
                seq: row.attempt as u32,
                this_run,
                dir: row.workdir,
                log_path: PathBuf::from(row.log_path),
                base: row.base,
                started_at: row.started_at,
                resumed: Some(co),
            },
            None => {
                if base.is_none() {
                    let started = Instant::now();
                    base =
                        Some(git::bundle_head(&sh.root, &bundle).await.map_err(|e| {
                            format!("cannot bundle the project for the worker: {e}")
                        })?);
                    report.git += started.elapsed();
                }
                // Numbered per ball across runs, so a restarted controller never reuses a log
                // file or a worker directory; `this_run` counts tries within this run.
                let seq = sh
                    .journal
                    .attempts(Some(&task.id))
                    .map_err(|e| e.to_string())?
                    .len() as u32
                    + 1;
                let dir = format!("{}/tasks/{}/attempt-{seq}", ctx.workspace, task.id);
                let log_path = sh
                    .state_dir
                    .join("logs")
                    .join(&task.id)
                    .join(format!("attempt-{seq}.log"));
                let base = base.clone().expect("bundled above");
                let id = sh
                    .journal
                    .attempt_start(&NewAttempt {
                        ball_id: &task.id,
                        seq,
                        worker: &ctx.worker,
                        log_path: &log_path,
                        workdir: &dir,
                        base: &base,
                        branch: &branch,
                    })
                    .map_err(|e| e.to_string())?;
                Attempt {
                    id,
                    seq,
                    this_run,
                    dir,
                    log_path,
                    base,
                    started_at: Utc::now(),
                    resumed: None,
                }
            }
        };
        let (outcome, exit, checkout) =
            match one_attempt(ctx, task, &attempt, &bundle, &branch, report).await {
                Ok(x) => x,
                Err(AttemptError::Failed(reason)) => {
                    (Outcome::Failed(reason), "-".to_string(), None)
                }
                Err(AttemptError::WorkerGone(reason)) => {
                    report.worker_gone = true;
                    (Outcome::Failed(reason), "-".to_string(), None)
                }
            };
        let mut commit = None;
        let outcome = match (outcome, checkout) {
            (Outcome::Done { commits }, Some(co)) => {
                let started = Instant::now();
                let delivered = deliver(ctx, task, &co, attempt.seq, commits).await;
                report.git += started.elapsed();
                match delivered {
                    Ok(sha) => {
                        commit = Some(sha);
                        Outcome::Done { commits }
                    }
                    Err(AttemptError::Failed(reason)) => Outcome::Blocked(reason),
                    // The work went with the worker: done again elsewhere.
                    Err(AttemptError::WorkerGone(reason)) => {
                        report.worker_gone = true;
                        Outcome::Failed(reason)
                    }
                }
            }
            (other, _) => other,
        };
        let reason = match &outcome {
            Outcome::Blocked(r) | Outcome::Failed(r) => Some(r.as_str()),
            _ => None,
        };
        let _ = sh.journal.attempt_end(
            attempt.id,
            outcome.label(),
            &exit,
            Some(&branch),
            commit.as_deref(),
            reason,
        );
        match outcome {
            // Nothing more can run on a worker that is gone: the loop decides where the ball goes.
            Outcome::Failed(reason) if report.worker_gone => return Ok(Outcome::Failed(reason)),
            Outcome::Failed(reason) if this_run < max => {
                let wait = settings.agent.retry_backoff * 2u32.saturating_pow(this_run - 1);
                sh.printer.status(format!(
                    "↻ {} attempt {this_run}/{max} failed: {reason}; retrying in {}",
                    task.id,
                    fmt_secs(wait)
                ));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.abort.cancelled() => return Ok(Outcome::Aborted),
                }
            }
            Outcome::Failed(reason) => {
                return Ok(Outcome::Failed(format!(
                    "failed {max} attempt(s); last: {reason} (log: {})",
                    attempt.log_path.display()
                )));
            }
            other => return Ok(other),
        }
    }
    Ok(Outcome::Failed(format!(
        "no attempts left ({max} spent, the last on a worker that went away)"
    )))
}

/// Prepares the checkout (unless resuming), starts the agent detached (idempotent), follows it
/// to its end, and judges the result.
async fn one_attempt(
    ctx: &TaskCtx,
    task: &Task,
    a: &Attempt,
    bundle: &Path,
    branch: &str,
    report: &mut TaskReport,
) -> Result<(Outcome, String, Option<WorkerCheckout>), AttemptError> {
    let sh = &ctx.shared;
    let settings = &sh.settings;
    let t = ctx.transport.as_ref();
    let author = (
        settings.git.author_name.as_str(),
        settings.git.author_email.as_str(),
    );
    let prompt_file = format!("{}/prompt.md", a.dir);
    let checkout = match &a.resumed {
        Some(co) => co.clone(),
        None => {
            let started = Instant::now();
            let co = on_worker(ctx, "preparing the checkout", || {
                WorkerCheckout::prepare(t, a.dir.clone(), bundle, &a.base, branch, author)
            })
            .await?;
            report.git += started.elapsed();
            co
        }
    };
    let det = Detached::new(a.dir.clone());
    // A resumed attempt whose agent was launched is only followed; one whose controller stopped
    // between the checkout and the launch gets its prompt now.
    let launched = match &a.resumed {
        Some(_) => on_worker(ctx, "looking at the agent", || det.launched(t)).await?,
        None => false,
    };
    let prompt = agent::render_prompt(&sh.template, task, branch);
    if !launched {
        let local_prompt = sh
            .state_dir
            .join("tmp")
            .join(format!("{}-prompt.md", task.id));
        std::fs::write(&local_prompt, &prompt)
            .map_err(|e| format!("writing {}: {e}", local_prompt.display()))?;
        on_worker(ctx, "uploading the prompt", || {
            t.upload(&local_prompt, &prompt_file)
        })
        .await?;
    }
    let argv = agent::build_argv(
        &settings.agent.command,
        &prompt,
        &prompt_file,
        &task.id,
        &checkout.repo,
    )?;
    let mut env: Vec<(String, String)> = sh
        .agent_env
        .get()
        .map(|(env, _)| env.clone())
        .unwrap_or_default();
    env.push(("CWO_TASK_ID".into(), task.id.clone()));
    env.push(("CWO_PROMPT_FILE".into(), prompt_file.clone()));
    env.push(("CWO_BRANCH".into(), branch.to_string()));
    env.push(("CWO_ATTEMPT".into(), a.this_run.to_string()));

    // Starting is idempotent (the launch is claimed once on the worker), so a connection lost
    // while starting is retried without ever starting a second agent.
    on_worker(ctx, "starting the agent", || {
        det.start(t, &checkout.repo, &argv, env.clone())
    })
    .await?;
    if launched {
        sh.printer
            .status(format!("↪ {} reattached to attempt {}", task.id, a.seq));
    }
    let agent_started = Instant::now();
    let (status, blocked) = watch(ctx, task, &det, a).await?;
    report.agent += agent_started.elapsed();
    let commits = match status {
        ExecStatus::Cancelled => 0,
        _ => {
            on_worker(ctx, "counting the agent's commits", || {
                checkout.new_commits(t)
            })
            .await?
        }
    };
    let outcome = agent::judge(status, blocked, commits, settings.agent.timeout);
    Ok((outcome, status.to_string(), Some(checkout)))
}

/// Follows the agent's log into the local log and the terminal until it ends, enforcing the
/// timeout and the abort signal. A failed connection never means a dead worker: the provider is
/// asked first, and the follow resumes from the byte offset already received.
async fn watch(
    ctx: &TaskCtx,
    task: &Task,
    det: &Detached,
    a: &Attempt,
) -> Result<(ExecStatus, Option<String>), AttemptError> {
    let sh = &ctx.shared;
    let t = ctx.transport.as_ref();
    if let Some(parent) = a.log_path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    // The local log mirrors the worker's byte for byte, so its length is the resume offset.
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .truncate(false)
        .open(&a.log_path)
        .map_err(|e| format!("opening {}: {e}", a.log_path.display()))?;
    let mut offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let timeout = sh.settings.agent.timeout;
    let elapsed = (Utc::now() - a.started_at).to_std().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + timeout.saturating_sub(elapsed);
    let mut pending: Vec<u8> = Vec::new();
    let mut blocked: Option<String> = None;
    let printer = sh.printer;
    let id = task.id.clone();
    let masker = sh
        .agent_env
        .get()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    let mut on_line = |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\n');
        printer.task_line(&id, text);
        if blocked.is_none() {
            blocked = agent::blocked_marker(text);
        }
    };
    let mut unreachable_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(250);
    let verdict = loop {
        let offset_before = offset;
        let stop = CancellationToken::new();
        let mut sink = |bytes: &[u8]| {
            // Masked with same-length stars: the local log keeps the worker log's offsets.
            let bytes = masker.mask(bytes);
            let _ = log.write_all(&bytes);
            pending.extend_from_slice(&bytes);
            if pending.ends_with(b"\n") {
                on_line(&pending);
                pending.clear();
            }
        };
        let follow = det.follow(t, &mut offset, &mut sink, stop.clone());
        let result = tokio::select! {
            r = follow => Some(r),
            _ = tokio::time::sleep_until(deadline) => { stop.cancel(); None }
            _ = ctx.abort.cancelled() => { stop.cancel(); None }
        };
        // The worker answered (a follow that ended cleanly or delivered bytes): an outage after
        // this one is a new outage, with its own time limit.
        if matches!(result, Some(Ok(_))) || offset > offset_before {
            unreachable_since = None;
            backoff = Duration::from_millis(250);
        }
        match result {
            None if ctx.abort.is_cancelled() => break ExecStatus::Cancelled,
            None => break ExecStatus::TimedOut,
            Some(Ok(FollowEnd::Complete)) => match det.state(t).await {
                Ok(AgentState::Exited(status)) => break status,
                Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => {
                    if !still_alive(ctx, &e.to_string(), &mut unreachable_since, &mut backoff)
                        .await?
                    {
                        return Err(AttemptError::WorkerGone(format!(
                            "worker {} is gone",
                            ctx.worker
                        )));
                    }
                }
            },
            Some(Ok(FollowEnd::Stopped)) => match det.state(t).await {
                Ok(AgentState::Missing) => {
                    return Err(AttemptError::Failed(format!(
                        "the agent is not running on {} and left no exit status",
                        ctx.worker
                    )));
                }
                Ok(AgentState::Exited(status)) => break status,
                Ok(AgentState::Running) => tokio::time::sleep(Duration::from_millis(200)).await,
                Err(e) => {
                    if !still_alive(ctx, &e.to_string(), &mut unreachable_since, &mut backoff)
                        .await?
                    {
                        return Err(AttemptError::WorkerGone(format!(
                            "worker {} is gone",
                            ctx.worker
                        )));
                    }
                }
            },
            Some(Err(e)) => {
                if !still_alive(ctx, &e.to_string(), &mut unreachable_since, &mut backoff).await? {
                    return Err(AttemptError::WorkerGone(format!(
                        "worker {} is gone",
                        ctx.worker
                    )));
                }
            }
        }
    };
    if !pending.is_empty() {
        on_line(&pending);
    }
    if matches!(verdict, ExecStatus::TimedOut | ExecStatus::Cancelled) {
        stop_agent(t, det).await;
    }
    let _ = writeln!(log, "[cwo] agent ended: {verdict}");
    Ok((verdict, blocked))
}

/// After a failed call: is the worker still there (keep trying) or gone? A worker that stayed
/// unreachable for `RECONNECT_LIMIT` counts as lost too (`WorkerGone`): the loop replaces it
/// rather than spending every remaining attempt, and the rest of the queue, on it.
async fn still_alive(
    ctx: &TaskCtx,
    error: &str,
    since: &mut Option<Instant>,
    backoff: &mut Duration,
) -> Result<bool, AttemptError> {
    let first = *since.get_or_insert_with(Instant::now);
    // Only the provider may declare a worker dead, and only when it says so twice a moment apart
    // (one empty read is no verdict); a provider error is no verdict either way.
    match ctx.provider.get(&ctx.worker).await {
        Ok(None) => {
            tokio::time::sleep(GONE_RECHECK).await;
            if let Ok(None) = ctx.provider.get(&ctx.worker).await {
                return Ok(false);
            }
        }
        // Stopped (outside cwo, or by a watchdog): it can do no work; deleted and replaced.
        Ok(Some(i)) if i.status.is_stopped() => return Ok(false),
        _ => {}
    }
    if first.elapsed() > RECONNECT_LIMIT {
        return Err(AttemptError::WorkerGone(format!(
            "lost the connection to {} for {}: {error}",
            ctx.worker,
            fmt_secs(first.elapsed())
        )));
    }
    ctx.shared.printer.status(format!(
        "connection to {} failed ({error}); the worker is alive, retrying in {}",
        ctx.worker,
        fmt_secs(*backoff)
    ));
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(10));
    Ok(true)
}

/// TERM, then KILL after the grace period, to the agent's whole process group.
async fn stop_agent(t: &dyn Transport, det: &Detached) {
    let _ = det.signal(t, "TERM").await;
    let end = Instant::now() + KILL_GRACE;
    while Instant::now() < end {
        if !matches!(det.state(t).await, Ok(AgentState::Running)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = det.signal(t, "KILL").await;
}

/// Brings the task branch back and pushes it; completes the ball. Returns the commit.
async fn deliver(
    ctx: &TaskCtx,
    task: &Task,
    co: &WorkerCheckout,
    seq: u32,
    commits: u64,
) -> Result<String, AttemptError> {
    let sh = &ctx.shared;
    let settings = &sh.settings;
    let local = sh
        .state_dir
        .join("tmp")
        .join(format!("{}-output.bundle", task.id));
    on_worker(ctx, "bringing the branch back", || {
        co.bring_back(ctx.transport.as_ref(), &local)
    })
    .await?;
    let sha = git::fetch_result(&sh.root, &local, &co.branch)
        .await
        .map_err(|e| format!("fetching the result: {e}"))?;
    let short = &sha[..12.min(sha.len())];
    let where_ = if settings.git.push {
        let remote = &settings.git.remote;
        if !git::has_remote(&sh.root, remote).await {
            return Err(AttemptError::Failed(format!(
                "the work is at refs/cwo/{} ({short}) but git remote `{remote}` does not exist; add it or set git.push = false",
                task.id
            )));
        }
        git::push(&sh.root, remote, &sha, &co.branch)
            .await
            .map_err(|e| {
                format!(
                    "pushing {} to {remote} failed (the work is kept at refs/cwo/{}): {e}",
                    co.branch, task.id
                )
            })?;
        format!("pushed to {remote}")
    } else {
        format!("kept at refs/cwo/{} (git.push = false)", task.id)
    };
    let note = format!(
        "cwo: branch {} at {short} {where_} ({commits} commit(s), attempt {seq})",
        co.branch
    );
    sh.tracker
        .complete(&task.id, &note)
        .and_then(|_| sh.tracker.progress(task, &note))
        .map_err(|e| format!("recording completion: {e}"))?;
    sh.journal
        .task_result(&task.id, &co.branch, &sha)
        .map_err(|e| e.to_string())?;
    sh.printer.status(format!(
        "✓ {} {}",
        task.id,
        note.trim_start_matches("cwo: ")
    ));
    Ok(sha)
}
