//! One ball, from claim to complete / blocked / pending: attempts with retries, the detached
//! agent followed by byte offset (surviving dropped connections), delivery of the branch. Each
//! step says by its error type what happens next ([`TaskError`]: retry, block, or the worker is
//! gone); every transition is written by the [`Recorder`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::error::TaskError;
use super::ports::journaled;
use super::record::{RecordError, Transition};
use super::steps::{self, Flow, Verified};
use crate::agent::detached::{AgentState, Detached, FollowEnd};
use crate::agent::phase::Place;
use crate::agent::{self, Outcome};
use crate::forge::{self, FailedCheck, Forge, ReviewNote};
use crate::git::{self, WorkerCheckout};
use crate::journal::{AttemptRow, Journal, PullRequestRow};
use crate::model::Usage;
use crate::printer::fmt_secs;
use crate::secrets::StreamMask;
use crate::tracker::Task;
use crate::transport::{ExecStatus, Transport, TransportError};

/// How often a running attempt's reported usage is written to the journal (and once at its end).
const USAGE_EVERY: Duration = Duration::from_millis(500);
/// Between SIGTERM and SIGKILL for an agent that overran its timeout or was aborted.
const KILL_GRACE: Duration = Duration::from_secs(5);
pub(crate) use super::task::{TaskCtx, TaskEnv};
use super::task::{on_worker, still_alive};

/// A follow-up attempt on a task's pull request: what the reviewers and the checks said.
pub(crate) struct FollowUp {
    pub(crate) pr: PullRequestRow,
    pub(crate) notes: Vec<ReviewNote>,
    pub(crate) failed: Vec<FailedCheck>,
    /// The watermarks once this feedback is acted on: journaled when the follow-up ends, so a
    /// follow-up that is stopped, loses its worker or dies with the controller is read again.
    pub(crate) seen: crate::forge::Seen,
}

pub(crate) struct TaskReport {
    pub(crate) id: String,
    /// The worker the task ran on.
    pub(crate) worker: String,
    pub(crate) outcome: Outcome,
    pub(crate) agent: Duration,
    pub(crate) git: Duration,
    /// Attempts this controller spent on the ball, across workers.
    pub(crate) tries: u32,
    /// The worker disappeared under the task (the provider says it is gone): the loop tears it
    /// down and the ball, when it has tries left, goes back to the queue for a new worker.
    pub(crate) worker_gone: bool,
}

/// How one attempt ended: its verdict, the agent's exit as recorded, the delivered commit.
pub(crate) struct AttemptResult {
    pub(crate) outcome: Outcome,
    pub(crate) exit: String,
    pub(crate) commit: Option<String>,
    /// Commits the checks rejected, and why (the reason and the end of the checks' output).
    carry: Option<(WorkerCheckout, (String, String))>,
}

/// Runs a ball to its end and records the outcome in the tracker and the journal. `resume` is an
/// attempt a previous controller left running on this worker; `prior_tries` are attempts this
/// controller already spent on the ball on workers that went away.
pub(crate) async fn run_task(
    ctx: TaskCtx,
    task: Task,
    resume: Option<AttemptRow>,
    prior_tries: u32,
    follow_up: Option<Arc<FollowUp>>,
) -> TaskReport {
    let env = ctx.env.clone();
    let mut report = TaskReport {
        id: task.id.clone(),
        worker: ctx.worker.clone(),
        outcome: Outcome::Aborted,
        agent: Duration::ZERO,
        git: Duration::ZERO,
        tries: prior_tries,
        worker_gone: false,
    };
    let outcome = drive_task(&ctx, &task, resume, &mut report, follow_up.clone())
        .await
        .unwrap_or_else(|e| Outcome::Blocked(e.reason()));
    let max = env.settings.agent.max_attempts;
    let requeue = report.worker_gone && report.tries < max.get();
    if let Some(f) = follow_up {
        if matches!(outcome, Outcome::Aborted) || requeue {
            // The task stays as it was (delivered, its pull request open): the feedback is
            // read again at the next poll, of this run or the next.
            env.printer.status(format!(
                "■ {} follow-up on pull request #{} stopped; its feedback is taken up again at the next poll",
                task.id, f.pr.number
            ));
            report.outcome = outcome;
            return report;
        }
        let (ball, seen) = (task.id.clone(), f.seen.clone());
        let moved = journaled(&env.journal, move |j| {
            j.pull_request_seen(
                &ball,
                seen.review,
                seen.comment,
                seen.issue_comment,
                &seen.failed_sha,
            )
        })
        .await;
        if let Err(e) = moved {
            env.printer.warn(format!(
                "could not record that {}'s feedback was acted on ({e}); it may be acted on again",
                task.id
            ));
        }
    }
    let transition = match &outcome {
        Outcome::Failed(reason) if requeue => {
            env.printer.status(format!(
                "↻ {} attempt {}/{max} lost its worker ({reason}); back to the queue for a new worker",
                task.id, report.tries
            ));
            Some(Transition::Requeued {
                task: task.clone(),
                reason: reason.clone(),
            })
        }
        Outcome::Aborted => {
            env.printer
                .status(format!("■ {} aborted; back to pending", task.id));
            Some(Transition::Aborted { task: task.clone() })
        }
        Outcome::Blocked(reason) | Outcome::Failed(reason) => {
            env.printer
                .status(format!("✗ {} blocked: {reason}", task.id));
            Some(Transition::Blocked {
                task: task.clone(),
                reason: reason.clone(),
            })
        }
        // Recorded when it was delivered.
        Outcome::Done { .. } => None,
    };
    if let Some(t) = transition {
        warn_unrecorded(&env, &task.id, env.recorder.apply(t).await);
    }
    report.outcome = outcome;
    report
}

/// A transition a store refused: the run goes on, and says so.
fn warn_unrecorded<T>(env: &TaskEnv, id: &str, result: Result<T, RecordError>) {
    match result {
        Ok(_) => {}
        Err(RecordError::Tracker(e)) => env.printer.warn(format!(
            "could not record the outcome of {id} in the tracker: {e}"
        )),
        Err(RecordError::Journal(e)) => env.printer.warn(format!(
            "could not record the outcome of {id} in the journal: {e}"
        )),
    }
}

/// What one attempt works with.
struct Attempt {
    id: i64,
    seq: u32,
    this_run: u32,
    dir: String,
    log_path: PathBuf,
    base: String,
    /// Where the repository's workflow is read for it: the task's starting commit, never one of
    /// its agent's commits (an attempt after failed checks starts from those).
    flow_commit: String,
    started_at: chrono::DateTime<Utc>,
    /// The complete checkout of an attempt a stopped controller left (None: a new attempt).
    resumed: Option<WorkerCheckout>,
}

/// What a task's attempts share: its branch and the bundle of the project they start from.
struct Work<'a> {
    task: &'a Task,
    branch: String,
    bundle: PathBuf,
    /// The commit the bundle holds, once made.
    base: Option<String>,
    /// Feedback on the task's pull request: the attempt starts from the branch's head and
    /// addresses it.
    follow_up: Option<Arc<FollowUp>>,
    /// The repository's workflow and the agent's limits, read at the task's first base (a
    /// follow-up attempt after failed checks starts from the agent's commits, whose workflow is
    /// not the one the task is held to).
    flow: tokio::sync::OnceCell<Flow>,
    /// What the checks said about the previous attempt's commits (the next one starts from them).
    checks_feedback: Option<String>,
}

/// Runs attempts until one decides the ball. `Err` = a reason to block the ball at once.
async fn drive_task(
    ctx: &TaskCtx,
    task: &Task,
    mut resume: Option<AttemptRow>,
    report: &mut TaskReport,
    follow_up: Option<Arc<FollowUp>>,
) -> Result<Outcome, TaskError> {
    let env = &ctx.env;
    let settings = &env.settings;
    let tmp = env.state_dir.join("tmp");
    tokio::fs::create_dir_all(&tmp)
        .await
        .map_err(|e| TaskError::block(format!("cannot create {}", tmp.display()), e))?;
    let mut work = Work {
        task,
        branch: format!("{}{}", settings.git.branch_prefix, task.id),
        bundle: tmp.join(format!("{}-input.bundle", task.id)),
        base: None,
        follow_up,
        flow: tokio::sync::OnceCell::new(),
        checks_feedback: None,
    };
    let max = settings.agent.max_attempts.get();
    while report.tries < max {
        if ctx.abort.is_cancelled() {
            return Ok(Outcome::Aborted);
        }
        let resumed = match resume.take() {
            Some(row) => match reattach(ctx, &work, row, report).await? {
                Reattach::Checkout(found) => Some(*found),
                Reattach::Fresh => None,
                Reattach::WorkerGone(reason) => return Ok(Outcome::Failed(reason)),
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
                flow_commit: match row.workflow_commit.as_str() {
                    "" => row.base.clone(),
                    c => c.to_string(),
                },
                base: row.base,
                started_at: row.started_at,
                resumed: Some(co),
            },
            None => start_attempt(ctx, &mut work, this_run, report).await?,
        };
        let result = run_attempt(ctx, &work, &attempt, report).await;
        let carry = result.carry;
        let ended = env
            .recorder
            .apply(Transition::AttemptEnded {
                id: attempt.id,
                outcome: result.outcome.label(),
                exit: result.exit,
                branch: Some(work.branch.clone()),
                commit: result.commit,
                reason: result.outcome.reason().map(str::to_string),
            })
            .await;
        warn_unrecorded(env, &task.id, ended);
        match result.outcome {
            // Nothing more can run on a worker that is gone: the loop decides where the ball goes.
            Outcome::Failed(reason) if report.worker_gone => return Ok(Outcome::Failed(reason)),
            Outcome::Failed(reason) if this_run < max => {
                if let Some((co, why)) = carry {
                    carry_over(ctx, &mut work, &co, why).await;
                }
                let wait = settings.agent.retry_backoff * 2u32.saturating_pow(this_run - 1);
                env.printer.status(format!(
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

/// What an attempt a stopped controller left running turned out to be.
enum Reattach {
    /// Its checkout is complete: it is followed (its agent may have started).
    Checkout(Box<(AttemptRow, WorkerCheckout)>),
    /// It stopped before its agent could start: a fresh attempt replaces it.
    Fresh,
    /// Its worker is gone (the attempt is closed as failed).
    WorkerGone(String),
}

/// An attempt left by a stopped controller is reattached only when its checkout was complete:
/// before that, its agent cannot have started, and a fresh attempt replaces it.
async fn reattach(
    ctx: &TaskCtx,
    work: &Work<'_>,
    row: AttemptRow,
    report: &mut TaskReport,
) -> Result<Reattach, TaskError> {
    let env = &ctx.env;
    let id = &work.task.id;
    let looked = on_worker(ctx, "looking at the checkout", || {
        WorkerCheckout::existing(
            ctx.transport.as_ref(),
            row.workdir.clone(),
            &work.branch,
            &row.base,
        )
    })
    .await;
    let end = |outcome, reason: &str| Transition::AttemptEnded {
        id: row.id,
        outcome,
        exit: "-".into(),
        branch: row.branch.clone(),
        commit: None,
        reason: Some(reason.to_string()),
    };
    match looked {
        Ok(Some(co)) => Ok(Reattach::Checkout(Box::new((row, co)))),
        Ok(None) => {
            env.printer.status(format!(
                "{id}: attempt {} stopped while its checkout was being prepared (the agent never started); starting a fresh attempt",
                row.attempt
            ));
            let closed = end("aborted", "controller stopped while preparing the checkout");
            env.recorder
                .apply(closed)
                .await
                .map_err(|e| TaskError::block("cannot close the stopped attempt", e))?;
            Ok(Reattach::Fresh)
        }
        Err(gone @ TaskError::WorkerGone { .. }) => {
            let reason = gone.reason();
            warn_unrecorded(env, id, env.recorder.apply(end("failed", &reason)).await);
            report.worker_gone = true;
            Ok(Reattach::WorkerGone(reason))
        }
        Err(e) => Err(e
            .with_context(format!("resuming attempt {}", row.attempt))
            .blocking()),
    }
}

/// A new attempt: the project bundled (once per ball), a number and a log of its own, its start
/// journaled.
async fn start_attempt(
    ctx: &TaskCtx,
    work: &mut Work<'_>,
    this_run: u32,
    report: &mut TaskReport,
) -> Result<Attempt, TaskError> {
    let env = &ctx.env;
    let id = &work.task.id;
    let base = match &work.base {
        Some(b) => b.clone(),
        None => {
            let started = Instant::now();
            let b = match &work.follow_up {
                None => git::bundle_head(&env.root, &work.bundle)
                    .await
                    .map_err(|e| TaskError::block("cannot bundle the project for the worker", e))?,
                Some(_) => follow_up_base(ctx, work).await?,
            };
            report.git += started.elapsed();
            work.base = Some(b.clone());
            b
        }
    };
    // Numbered per ball across runs, so a restarted controller never reuses a log file or a
    // worker directory; `this_run` counts tries within this run.
    let ball = id.clone();
    let earlier = journaled(&env.journal, move |j| j.attempts(Some(&ball)))
        .await
        .map_err(|e| TaskError::block("cannot count the ball's attempts in the journal", e))?;
    let seq = earlier.len() as u32 + 1;
    // The workflow this task is held to: the one already read; for a follow-up on its pull
    // request, the one its first attempt was (the branch's head holds the agent's commits); else
    // the commit the task starts from.
    let flow_commit = match (work.flow.get(), &work.follow_up, earlier.first()) {
        (Some(flow), _, _) => flow.commit.clone(),
        (None, Some(_), Some(first)) if !first.workflow_commit.is_empty() => {
            first.workflow_commit.clone()
        }
        (None, Some(_), Some(first)) => first.base.clone(),
        _ => base.clone(),
    };
    let dir = format!("{}/tasks/{id}/attempt-{seq}", ctx.workspace);
    let log_path = env
        .state_dir
        .join("logs")
        .join(id)
        .join(format!("attempt-{seq}.log"));
    let started = env
        .recorder
        .apply(Transition::AttemptStarted {
            ball_id: id.clone(),
            seq,
            worker: ctx.worker.clone(),
            log_path: log_path.clone(),
            workdir: dir.clone(),
            base: base.clone(),
            branch: work.branch.clone(),
            workflow_commit: flow_commit.clone(),
        })
        .await
        .map_err(|e| TaskError::block("cannot record the attempt in the journal", e))?;
    Ok(Attempt {
        id: started.expect("an attempt's start returns its id"),
        seq,
        this_run,
        dir,
        log_path,
        base,
        flow_commit,
        started_at: Utc::now(),
        resumed: None,
    })
}

/// One attempt to its verdict: the agent run and judged, and, when it did the work, the branch
/// delivered and the ball completed.
async fn run_attempt(
    ctx: &TaskCtx,
    work: &Work<'_>,
    a: &Attempt,
    report: &mut TaskReport,
) -> AttemptResult {
    let failed = |e: TaskError, report: &mut TaskReport| {
        report.worker_gone |= matches!(e, TaskError::WorkerGone { .. });
        match e {
            TaskError::Block { .. } => Outcome::Blocked(e.reason()),
            e => Outcome::Failed(e.reason()),
        }
    };
    let ran = match one_attempt(ctx, work, a, report).await {
        Ok(ran) => ran,
        Err(e) => Ran::ended(failed(e, report), "-".to_string(), None),
    };
    let mut result = AttemptResult {
        outcome: ran.outcome,
        exit: ran.exit,
        commit: None,
        carry: None,
    };
    let Some(co) = ran.checkout else {
        return result;
    };
    let commits = ran.commits;
    let unverified = match ran.checks_failed {
        None => None,
        // Attempts are left: the next one starts from these commits, told what failed.
        Some((reason, output)) if a.this_run < ctx.env.settings.agent.max_attempts.get() => {
            result.carry = Some((co, (reason, output)));
            return result;
        }
        Some((reason, output)) => {
            let reason = format!(
                "{reason} on attempt {} (the last); the output ends with:\n{output}",
                a.this_run
            );
            let pushes = work.flow.get().is_some_and(steps::push_on_failure);
            if !pushes {
                result.outcome = Outcome::Blocked(format!(
                    "{reason}\nnothing was pushed (verify.push_on_failure = false)"
                ));
                return result;
            }
            Some(reason)
        }
    };
    if !matches!(result.outcome, Outcome::Done { .. }) && unverified.is_none() {
        return result;
    }
    let started = Instant::now();
    let delivered = deliver(ctx, work, &co, a, commits, report, unverified.as_deref()).await;
    report.git += started.elapsed();
    match (delivered, unverified) {
        (Ok((sha, note)), None) => match complete(ctx, work.task, &co.branch, &sha, &note).await {
            Ok(()) => result.commit = Some(sha),
            Err(e) => result.outcome = failed(e, report),
        },
        // Pushed for a look, but not done: the checks still fail.
        (Ok((sha, note)), Some(reason)) => {
            result.commit = Some(sha);
            result.outcome = Outcome::Blocked(format!(
                "{reason}\n{} (verify.push_on_failure = true: delivered for a look; a pull request is a draft that says the checks fail)",
                note.trim_start_matches("cwo: ")
            ));
        }
        // A failed delivery blocks the ball (the work is kept locally, the error says where);
        // one whose worker went away is done again elsewhere.
        (Err(e), _) => result.outcome = failed(e.blocking(), report),
    }
    result
}

/// The next attempt starts from the commits the checks rejected (brought back and bundled for the
/// worker), with what failed in its prompt. Commits that cannot be brought back are dropped: the
/// next attempt starts from the task's base, still told what failed.
async fn carry_over(
    ctx: &TaskCtx,
    work: &mut Work<'_>,
    co: &WorkerCheckout,
    (reason, output): (String, String),
) {
    let env = &ctx.env;
    let id = work.task.id.clone();
    let tmp = env.state_dir.join("tmp");
    let local = tmp.join(format!("{id}-checked.bundle"));
    let bundle = tmp.join(format!("{id}-checked-input.bundle"));
    let carried = async {
        on_worker(ctx, "bringing the checked commits back", || {
            co.bring_back(ctx.transport.as_ref(), &local)
        })
        .await?;
        let sha = git::fetch_result(&env.root, &local, &co.branch)
            .await
            .map_err(|e| TaskError::retry("fetching the checked commits", e))?;
        let scratch = tmp.join(format!("{id}-checked.git"));
        git::bundle_commit(&env.root, &sha, &scratch, &bundle)
            .await
            .map_err(|e| TaskError::retry("bundling the checked commits for the worker", e))?;
        Ok::<String, TaskError>(sha)
    }
    .await;
    match carried {
        Ok(sha) => {
            work.base = Some(sha);
            work.bundle = bundle;
            work.checks_feedback = Some(steps::checks_feedback(&reason, &output, true));
        }
        Err(e) => {
            env.printer.warn(format!(
                "{id}: the commits the checks rejected could not be kept ({}); the next attempt starts from the task's base",
                e.reason()
            ));
            work.checks_feedback = Some(steps::checks_feedback(&reason, &output, false));
        }
    }
}

/// How one attempt's agent run ended, before delivery.
struct Ran {
    outcome: Outcome,
    exit: String,
    checkout: Option<WorkerCheckout>,
    /// The agent's new commits.
    commits: u64,
    /// The repository's checks rejected the agent's commits: why, and the end of their output.
    checks_failed: Option<(String, String)>,
}

impl Ran {
    fn ended(outcome: Outcome, exit: String, checkout: Option<WorkerCheckout>) -> Ran {
        Ran {
            outcome,
            exit,
            checkout,
            commits: 0,
            checks_failed: None,
        }
    }
}

/// Prepares the checkout (unless resuming) and runs the repository's setup in it, starts the
/// agent detached (idempotent), follows it to its end, judges the result, and runs the
/// repository's checks on work the agent says is done.
async fn one_attempt(
    ctx: &TaskCtx,
    work: &Work<'_>,
    a: &Attempt,
    report: &mut TaskReport,
) -> Result<Ran, TaskError> {
    let env = &ctx.env;
    let settings = &env.settings;
    let (task, branch) = (work.task, work.branch.as_str());
    let t = ctx.transport.as_ref();
    let flow = work
        .flow
        .get_or_try_init(|| steps::read_flow(ctx, task, &a.flow_commit))
        .await?;
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
                WorkerCheckout::prepare(t, a.dir.clone(), &work.bundle, &a.base, branch, author)
            })
            .await?;
            report.git += started.elapsed();
            co
        }
    };
    let place = Place {
        dir: &a.dir,
        repo: &checkout.repo,
    };
    let det = Detached::new(a.dir.clone());
    // A resumed attempt whose agent was launched is only followed; one whose controller stopped
    // between the checkout and the launch gets its setup and prompt now.
    let launched = match &a.resumed {
        Some(_) => on_worker(ctx, "looking at the agent", || det.launched(t)).await?,
        None => false,
    };
    let (mut agent_env, masker) = env.agent_env.get().cloned().unwrap_or_default();
    let model = flow.limits.model.clone().unwrap_or_default();
    if !model.is_empty() {
        agent_env.push(("CWO_MODEL".into(), model.clone()));
    }
    // The task's LLM spend before this attempt (read only when there is a cap): a task already
    // at its cap starts no agent.
    let spent_before = match flow.limits.max_cost_usd {
        Some(_) => spent_by_other_attempts(env, &task.id, a.id).await,
        None => 0.0,
    };
    if let Some(cap) = flow.limits.max_cost_usd.filter(|cap| spent_before >= *cap)
        && !launched
    {
        let reason = budget_reached(spent_before, cap, a.seq - 1);
        return Ok(Ran::ended(Outcome::Blocked(reason), "-".into(), None));
    }
    if !launched {
        let set_up =
            steps::setup(ctx, task, flow, &place, &a.log_path, &agent_env, &masker).await?;
        if !set_up {
            return Ok(Ran::ended(Outcome::Aborted, "-".into(), None));
        }
    }
    let mut feedback = String::new();
    if let Some(f) = &work.follow_up {
        feedback.push_str(&forge::feedback_prompt(f.pr.number, &f.notes, &f.failed));
    }
    if let Some(checks) = &work.checks_feedback {
        feedback.push_str(checks);
    }
    let prompt = steps::prompt(flow, &env.template, task, branch, &feedback);
    if !launched {
        let local_prompt = env
            .state_dir
            .join("tmp")
            .join(format!("{}-prompt.md", task.id));
        tokio::fs::write(&local_prompt, &prompt)
            .await
            .map_err(|e| TaskError::retry(format!("writing {}", local_prompt.display()), e))?;
        on_worker(ctx, "uploading the prompt", || {
            t.upload(&local_prompt, &prompt_file)
        })
        .await?;
    }
    let argv = agent::build_argv(
        &settings.agent.command,
        &agent::ArgvInputs {
            prompt: &prompt,
            prompt_file: &prompt_file,
            task_id: &task.id,
            workdir: &checkout.repo,
            model: &model,
        },
    )
    // Retrying would build the same prompt again.
    .map_err(|e| TaskError::block("cannot build the agent's command", e))?;
    let mut launch_env = agent_env.clone();
    launch_env.push(("CWO_TASK_ID".into(), task.id.clone()));
    launch_env.push(("CWO_PROMPT_FILE".into(), prompt_file.clone()));
    launch_env.push(("CWO_BRANCH".into(), branch.to_string()));
    launch_env.push(("CWO_ATTEMPT".into(), a.this_run.to_string()));

    // Starting is idempotent (the launch is claimed once on the worker), so a connection lost
    // while starting is retried without ever starting a second agent.
    on_worker(ctx, "starting the agent", || {
        det.start(t, &checkout.repo, &argv, launch_env.clone())
    })
    .await?;
    // The agent's time limits run from its launch (setup took its own time before it); a
    // resumed attempt's from the attempt's start, which is all the journal knows.
    let agent_since = if launched {
        env.printer
            .status(format!("↪ {} reattached to attempt {}", task.id, a.seq));
        a.started_at
    } else {
        let attempt = a.id;
        if let Err(e) = journaled(&env.journal, move |j| j.attempt_launched(attempt)).await {
            tracing::warn!(error = %e, "the agent's launch was not journaled");
        }
        Utc::now()
    };
    let agent_started = Instant::now();
    let Watched {
        status,
        blocked,
        stopped,
    } = watch(ctx, work, flow, &det, a, agent_since, spent_before).await?;
    report.agent += agent_started.elapsed();
    match stopped {
        Some(Stopped::Stalled(after)) => {
            let reason = format!("stalled after {} of silence", span(after));
            return Ok(Ran::ended(
                Outcome::Failed(reason),
                status.to_string(),
                Some(checkout),
            ));
        }
        Some(Stopped::Budget(spent, cap)) => {
            let reason = budget_reached(spent, cap, a.seq);
            return Ok(Ran::ended(
                Outcome::Blocked(reason),
                status.to_string(),
                Some(checkout),
            ));
        }
        None => {}
    }
    let commits = match status {
        ExecStatus::Cancelled => 0,
        _ => {
            on_worker(ctx, "counting the agent's commits", || {
                checkout.new_commits(t)
            })
            .await?
        }
    };
    let outcome = agent::judge(status, blocked, commits, flow.limits.timeout);
    let mut ran = Ran::ended(outcome, status.to_string(), None);
    ran.commits = commits;
    if matches!(ran.outcome, Outcome::Done { .. }) {
        match steps::verify(ctx, task, flow, &place, &a.log_path, &agent_env, &masker).await? {
            Verified::Passed => {}
            Verified::Aborted => ran.outcome = Outcome::Aborted,
            Verified::Failed { reason, output } => {
                ran.outcome = Outcome::Failed(reason.clone());
                ran.checks_failed = Some((reason, output));
            }
        }
    }
    ran.checkout = Some(checkout);
    Ok(ran)
}

/// "LLM budget of $X reached after N attempts".
fn budget_reached(spent: f64, cap: f64, attempts: u32) -> String {
    format!(
        "LLM budget of ${cap} reached after {attempts} attempt(s) (${:.4} spent; agent.max_cost_usd)",
        crate::cost::money(spent)
    )
}

/// What the task's other attempts reported spending on the LLM (known costs only).
async fn spent_by_other_attempts(env: &TaskEnv, ball: &str, this: i64) -> f64 {
    let ball = ball.to_string();
    let read = journaled(&env.journal, move |j| {
        let usages = j.usages(Some(&ball))?;
        Ok::<f64, crate::journal::JournalError>(
            usages
                .iter()
                .filter(|(id, _)| **id != this)
                .map(|(_, (u, _))| u.cost_known_usd)
                .sum(),
        )
    })
    .await;
    read.unwrap_or_else(|e| {
        env.printer.warn(format!(
            "could not read the task's LLM spend from the journal: {e}"
        ));
        0.0
    })
}

/// Why the controller stopped an agent that was still running.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stopped {
    /// No output for this long.
    Stalled(Duration),
    /// The task's reported LLM cost crossed its cap (spent, cap).
    Budget(f64, f64),
}

/// What following an attempt's agent found.
struct Watched {
    status: ExecStatus,
    blocked: Option<String>,
    stopped: Option<Stopped>,
}

/// What the follow loop is woken by.
enum Wake {
    Followed(Result<FollowEnd, TransportError>),
    Deadline,
    Abort,
    Stalled,
    Budget,
    Soft,
}

/// Resolves once the agent has been silent for `stall`: `last` is the time of its latest output,
/// in milliseconds after `base`.
async fn silence(last: &AtomicU64, base: tokio::time::Instant, stall: Duration) {
    loop {
        let due = base + Duration::from_millis(last.load(Ordering::Relaxed)) + stall;
        if tokio::time::Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

/// "10 min" for whole minutes, else the exact duration.
fn span(d: Duration) -> String {
    if d.as_secs() >= 60 && d.as_secs().is_multiple_of(60) && d.subsec_nanos() == 0 {
        format!("{} min", d.as_secs() / 60)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Follows the agent's log into the local log and the terminal until it ends, enforcing the
/// task's limits (the hard timeout, the stall timeout, the soft timeout's warning, the LLM cost
/// cap) and the abort signal, and journaling the LLM usage the agent reports as it goes. A
/// failed connection never means a dead worker: the provider is asked first, and the follow
/// resumes from the byte offset already received.
async fn watch(
    ctx: &TaskCtx,
    work: &Work<'_>,
    flow: &Flow,
    det: &Detached,
    a: &Attempt,
    agent_since: chrono::DateTime<Utc>,
    spent_before: f64,
) -> Result<Watched, TaskError> {
    let env = &ctx.env;
    let task = work.task;
    let limits = &flow.limits;
    let t = ctx.transport.as_ref();
    if let Some(parent) = a.log_path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| TaskError::retry(format!("creating {}", parent.display()), e))?;
    }
    // The usage an earlier controller already followed (a resumed attempt) is in the local log;
    // a last line it got only part of is completed by the follow, and read then.
    let earlier = tokio::fs::read(&a.log_path).await.unwrap_or_default();
    let cut = earlier
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let mut usage = Usage::from_log(&String::from_utf8_lossy(&earlier[..cut]));
    let mut pending: Vec<u8> = earlier[cut..].to_vec();
    // The local log mirrors the worker's byte for byte, so its length is the resume offset.
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .truncate(false)
        .open(&a.log_path)
        .map_err(|e| TaskError::retry(format!("opening {}", a.log_path.display()), e))?;
    let mut offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let elapsed = (Utc::now() - agent_since).to_std().unwrap_or_default();
    let now = tokio::time::Instant::now();
    let deadline = now + limits.timeout.saturating_sub(elapsed);
    let mut soft_at = limits
        .soft_timeout
        .filter(|soft| *soft > elapsed)
        .map(|soft| now + (soft - elapsed));
    let base = now;
    let last_output = AtomicU64::new(0);
    let over_budget = CancellationToken::new();
    // The task's spend when the cap was crossed (f64 bits: shared with the line handler).
    let spent_at_stop = AtomicU64::new(0);
    let mut blocked: Option<String> = None;
    let printer = env.printer;
    let id = task.id.clone();
    let masker = env
        .agent_env
        .get()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    let journal = env.journal.clone();
    let mut last_journaled: Option<Instant> = None;
    let cap = limits.max_cost_usd;
    // Stops the agent once the task's spend crosses the cap (once: the first crossing is kept).
    let check_cap = |spent: f64| {
        if cap.is_some_and(|cap| spent >= cap) && !over_budget.is_cancelled() {
            spent_at_stop.store(spent.to_bits(), Ordering::Relaxed);
            over_budget.cancel();
        }
    };
    // A resumed attempt may have crossed it already.
    check_cap(spent_before + usage.cost_known_usd);
    let mut on_line = |line: &[u8]| {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\n');
        printer.task_line(&id, text);
        if blocked.is_none() {
            blocked = agent::blocked_marker(text);
        }
        if usage.add_line(text) {
            // Journaled as it comes (`cwo status` shows a running task's tokens), at most every
            // USAGE_EVERY (a write per line costs an fsync: an agent printing thousands of steps
            // would spend its controller on them), and always at the end; off the async threads,
            // and a write that arrives late never moves the count back.
            if last_journaled.is_none_or(|t: Instant| t.elapsed() >= USAGE_EVERY) {
                last_journaled = Some(Instant::now());
                let (j, snapshot, ball, attempt) = (journal.clone(), usage, id.clone(), a.id);
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = j.attempt_usage(attempt, &ball, &snapshot) {
                        tracing::warn!(error = %e, "the agent's usage was not journaled");
                    }
                });
            }
            check_cap(spent_before + usage.cost_known_usd);
        }
    };
    // A secret the worker's output splits across two reads is masked all the same.
    let mut masking = StreamMask::new(&masker);
    let mut unreachable_since: Option<Instant> = None;
    let mut backoff = Duration::from_millis(250);
    let gone = || TaskError::gone(format!("worker {} is gone", ctx.worker));
    let mut stopped = None;
    let verdict = loop {
        let offset_before = offset;
        let stop = CancellationToken::new();
        let mut sink = |bytes: &[u8]| {
            last_output.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
            // Masked with same-length stars: the local log keeps the worker log's offsets (a
            // few bytes that may start a secret wait for the next read; a controller that stops
            // meanwhile reads them again from the worker, at the local log's length).
            let bytes = masking.push(bytes);
            if let Err(e) = log.write_all(&bytes) {
                tracing::debug!(error = %e, "local agent log not written");
            }
            pending.extend_from_slice(&bytes);
            if pending.ends_with(b"\n") {
                on_line(&pending);
                pending.clear();
            }
        };
        let follow = det.follow(t, &mut offset, &mut sink, stop.clone());
        let soft_due = soft_at.unwrap_or(deadline);
        let wake = tokio::select! {
            r = follow => Wake::Followed(r),
            _ = tokio::time::sleep_until(deadline) => Wake::Deadline,
            _ = ctx.abort.cancelled() => Wake::Abort,
            _ = silence(&last_output, base, limits.stall_timeout) => Wake::Stalled,
            _ = over_budget.cancelled() => Wake::Budget,
            _ = tokio::time::sleep_until(soft_due), if soft_at.is_some() => Wake::Soft,
        };
        if !matches!(wake, Wake::Followed(_)) {
            stop.cancel();
        }
        // The worker answered (a follow that ended cleanly or delivered bytes): an outage after
        // this one is a new outage, with its own time limit.
        if matches!(wake, Wake::Followed(Ok(_))) || offset > offset_before {
            unreachable_since = None;
            backoff = Duration::from_millis(250);
        }
        let failed_call = match wake {
            Wake::Abort => break ExecStatus::Cancelled,
            Wake::Deadline => break ExecStatus::TimedOut,
            Wake::Stalled => {
                stopped = Some(Stopped::Stalled(limits.stall_timeout));
                break ExecStatus::TimedOut;
            }
            Wake::Budget => {
                stopped = Some(Stopped::Budget(
                    f64::from_bits(spent_at_stop.load(Ordering::Relaxed)),
                    cap.unwrap_or_default(),
                ));
                break ExecStatus::TimedOut;
            }
            Wake::Soft => {
                soft_at = None;
                soft_warning(ctx, work, flow, det, a).await;
                continue;
            }
            Wake::Followed(Ok(end)) => match (end, det.state(t).await) {
                (_, Ok(AgentState::Exited(status))) => break status,
                (FollowEnd::Stopped, Ok(AgentState::Missing)) => {
                    return Err(TaskError::retry_because(format!(
                        "the agent is not running on {} and left no exit status",
                        ctx.worker
                    )));
                }
                (_, Ok(_)) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                (_, Err(e)) => e,
            },
            Wake::Followed(Err(e)) => e,
        };
        let error = failed_call.to_string();
        if !still_alive(ctx, &error, &mut unreachable_since, &mut backoff).await? {
            return Err(gone());
        }
        // Silence while the worker could not be reached is not the agent's.
        last_output.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
    };
    let rest = masking.finish();
    if let Err(e) = log.write_all(&rest) {
        tracing::debug!(error = %e, "local agent log not written");
    }
    pending.extend_from_slice(&rest);
    if !pending.is_empty() {
        on_line(&pending);
    }
    if matches!(verdict, ExecStatus::TimedOut | ExecStatus::Cancelled) {
        stop_agent(t, det).await;
    }
    if let Err(e) = writeln!(log, "[cwo] agent ended: {verdict}") {
        tracing::debug!(error = %e, "local agent log not written");
    }
    let (ball, attempt) = (task.id.clone(), a.id);
    if let Err(e) = journaled(&env.journal, move |j| {
        j.attempt_usage(attempt, &ball, &usage)
    })
    .await
    {
        env.printer.warn(format!(
            "could not journal what {}'s agent reported using: {e}",
            task.id
        ));
    }
    Ok(Watched {
        status: verdict,
        blocked,
        stopped,
    })
}

/// The soft timeout passed: a warning in the agent's log (appended on the worker, so the local
/// mirror keeps its offsets), on the terminal and in `cwo status`; the attempt goes on to the
/// hard timeout.
async fn soft_warning(ctx: &TaskCtx, work: &Work<'_>, flow: &Flow, det: &Detached, a: &Attempt) {
    let env = &ctx.env;
    let limits = &flow.limits;
    let text = format!(
        "soft timeout: the agent has run {} (agent.soft_timeout); its deadline is extended once, to agent.timeout ({})",
        span(limits.soft_timeout.unwrap_or_default()),
        span(limits.timeout)
    );
    env.printer.warn(format!("{}: {text}", work.task.id));
    if let Err(e) = det
        .note(ctx.transport.as_ref(), &format!("[cwo] {text}"))
        .await
    {
        tracing::debug!(error = %e, "the soft timeout's note was not written to the agent's log");
    }
    let (ball, attempt) = (work.task.id.clone(), a.id);
    if let Err(e) = journaled(&env.journal, move |j| {
        j.attempt_warning(attempt, &ball, &text)
    })
    .await
    {
        tracing::warn!(error = %e, "the soft timeout's warning was not journaled");
    }
}

/// TERM, then KILL after the grace period, to the agent's whole process group. Best effort: an
/// agent that cannot be signalled is killed with its worker at teardown.
async fn stop_agent(t: &dyn Transport, det: &Detached) {
    if let Err(e) = det.signal(t, "TERM").await {
        tracing::debug!(error = %e, "TERM not delivered to the agent");
    }
    let end = Instant::now() + KILL_GRACE;
    while Instant::now() < end {
        if !matches!(det.state(t).await, Ok(AgentState::Running)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Err(e) = det.signal(t, "KILL").await {
        tracing::debug!(error = %e, "KILL not delivered to the agent");
    }
}

/// A follow-up starts from the pull request's head on the remote (a human may have pushed to
/// it), fetched with the forge's token, bundled for the worker. Returns that commit.
async fn follow_up_base(ctx: &TaskCtx, work: &Work<'_>) -> Result<String, TaskError> {
    let env = &ctx.env;
    let settings = &env.settings;
    let id = &work.task.id;
    let local_ref = format!("refs/cwo/{id}");
    let head = if settings.git.push {
        let token = push_token(env).await?;
        git::fetch_branch(
            &env.root,
            &settings.git.remote,
            &work.branch,
            &local_ref,
            token.as_deref(),
        )
        .await
        .map_err(|e| TaskError::retry(format!("fetching {} for the follow-up", work.branch), e))?
    } else {
        git::rev_parse(&env.root, &local_ref)
            .await
            .map_err(|e| TaskError::block(format!("the follow-up needs {local_ref}"), e))?
    };
    let scratch = env.state_dir.join("tmp").join(format!("{id}-base.git"));
    git::bundle_commit(&env.root, &head, &scratch, &work.bundle)
        .await
        .map_err(|e| TaskError::block("cannot bundle the pull request's head for the worker", e))?;
    Ok(head)
}

/// The forge's token for pushing to an HTTP(S) remote (None: no forge, or a remote git reaches
/// with the user's own credentials, such as SSH or a path).
async fn push_token(env: &TaskEnv) -> Result<Option<String>, TaskError> {
    let Some(forge) = &env.forge else {
        return Ok(None);
    };
    let url = git::remote_url(&env.root, &env.settings.git.remote)
        .await
        .unwrap_or_default();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Ok(None);
    }
    forge
        .push_token()
        .await
        .map(Some)
        .map_err(|e| TaskError::retry("getting the token to push with", e))
}

/// Brings the task branch back, pushes it (fast-forward only) and, with a forge, opens or
/// updates its pull request and answers the review comments a follow-up addressed. Returns the
/// commit and the note that says where the work is.
async fn deliver(
    ctx: &TaskCtx,
    work: &Work<'_>,
    co: &WorkerCheckout,
    a: &Attempt,
    commits: u64,
    report: &TaskReport,
    unverified: Option<&str>,
) -> Result<(String, String), TaskError> {
    let env = &ctx.env;
    let settings = &env.settings;
    let task = work.task;
    let seq = a.seq;
    let local = env
        .state_dir
        .join("tmp")
        .join(format!("{}-output.bundle", task.id));
    on_worker(ctx, "bringing the branch back", || {
        co.bring_back(ctx.transport.as_ref(), &local)
    })
    .await?;
    let sha = git::fetch_result(&env.root, &local, &co.branch)
        .await
        .map_err(|e| TaskError::block("fetching the result", e))?;
    let short = &sha[..12.min(sha.len())];
    let where_ = if settings.git.push {
        let remote = &settings.git.remote;
        if !git::has_remote(&env.root, remote).await {
            return Err(TaskError::Block {
                context: format!(
                    "the work is at refs/cwo/{} ({short}) but git remote `{remote}` does not exist; add it or set git.push = false",
                    task.id
                ),
                source: None,
            });
        }
        let token = push_token(env).await?;
        git::push(&env.root, remote, &sha, &co.branch, token.as_deref())
            .await
            .map_err(|e| {
                TaskError::block(
                    format!(
                        "pushing {} to {remote} failed (the work is kept at refs/cwo/{})",
                        co.branch, task.id
                    ),
                    e,
                )
            })?;
        format!("pushed to {remote}")
    } else {
        format!("kept at refs/cwo/{} (git.push = false)", task.id)
    };
    let mut note = format!(
        "cwo: branch {} at {short} {where_} ({commits} commit(s), attempt {seq})",
        co.branch
    );
    if let (Some(forge), true) = (&env.forge, settings.git.push) {
        let pr = open_pull_request(ctx, forge.as_ref(), work, a, report, unverified).await?;
        note.push_str(&format!("; pull request #{} {}", pr.number, pr.url));
        // Feedback is answered only by work that passes the repository's checks.
        if let (Some(f), None) = (&work.follow_up, unverified) {
            answer_feedback(env, forge.as_ref(), f, short).await;
        }
    }
    Ok((sha, note))
}

/// Opens (or updates) the task's pull request with a description of the work, and journals it.
async fn open_pull_request(
    ctx: &TaskCtx,
    forge: &dyn Forge,
    work: &Work<'_>,
    a: &Attempt,
    report: &TaskReport,
    unverified: Option<&str>,
) -> Result<forge::OpenedPullRequest, TaskError> {
    let env = &ctx.env;
    let task = work.task;
    let log = tokio::fs::read_to_string(&a.log_path)
        .await
        .unwrap_or_default();
    let summary = agent::closing_summary(&log);
    let ball = task.id.clone();
    let (cost_usd, llm) = journaled(&env.journal, move |j| {
        (task_cost(j, &ball), task_llm_usage(j, &ball))
    })
    .await;
    let (title, body) = forge::describe(&forge::Delivery {
        task,
        summary: &summary,
        attempts: a.seq,
        duration: report.agent,
        cost_usd,
        llm,
        feedback_rounds: work.follow_up.as_ref().map_or(0, |f| f.pr.rounds),
        unverified,
    });
    let draft = forge::PullRequestDraft {
        branch: work.branch.clone(),
        title,
        body,
        draft: env.settings.github.draft || unverified.is_some(),
    };
    let pr = forge.open_or_update(&draft).await.map_err(|e| {
        let context = format!(
            "the branch {} is pushed, but the pull request on {} could not be opened",
            work.branch,
            forge.describe()
        );
        if e.is_transient() {
            TaskError::retry(context, e)
        } else {
            TaskError::block(context, e)
        }
    })?;
    let (ball, url, branch, number) = (
        task.id.clone(),
        pr.url.clone(),
        work.branch.clone(),
        pr.number,
    );
    if let Err(e) = journaled(&env.journal, move |j| {
        j.pull_request_opened(&ball, number, &url, &branch)
    })
    .await
    {
        env.printer.warn(format!(
            "pull request #{number} for {} is open, but the journal could not record it: {e}",
            task.id
        ));
    }
    Ok(pr)
}

/// After a follow-up's push: a reply on every review thread it addressed, and a comment for
/// the failed checks. A reply that fails is a warning (the commits are pushed).
async fn answer_feedback(env: &TaskEnv, forge: &dyn Forge, f: &FollowUp, short: &str) {
    let mut threads: Vec<u64> = f.notes.iter().filter_map(|n| n.reply_to).collect();
    threads.dedup();
    for id in threads {
        let text = format!("🤖 cwo: addressed in {short}.");
        if let Err(e) = forge.reply(f.pr.number, id, &text).await {
            env.printer.warn(format!(
                "could not reply to review comment {id} on #{}: {e}",
                f.pr.number
            ));
        }
    }
    let general = f.notes.iter().any(|n| n.reply_to.is_none());
    if !f.failed.is_empty() || general {
        let mut text = format!("🤖 cwo: pushed {short} to address");
        let mut parts = Vec::new();
        if general {
            parts.push("the review".to_string());
        }
        if !f.failed.is_empty() {
            let names: Vec<&str> = f.failed.iter().map(|c| c.name.as_str()).collect();
            parts.push(format!("the failed check(s) {}", names.join(", ")));
        }
        text.push_str(&format!(" {}.", parts.join(" and ")));
        if let Err(e) = forge.comment(f.pr.number, &text).await {
            env.printer
                .warn(format!("could not comment on #{}: {e}", f.pr.number));
        }
    }
}

/// What the task's attempts cost: each attempt's time on its worker at the worker's launch
/// price (list price; `cwo cost --by task` apportions shared workers exactly). None: a worker
/// with no known price.
fn task_cost(j: &Journal, ball: &str) -> Option<f64> {
    let attempts = j.attempts(Some(ball)).ok()?;
    let mut total = 0.0;
    for a in attempts {
        let hourly = j.worker(&a.worker).ok()??.price?.hourly?.total();
        let end = a.ended_at.unwrap_or_else(Utc::now);
        let secs = (end - a.started_at).num_milliseconds().max(0) as f64 / 1000.0;
        total += hourly * secs / 3600.0;
    }
    Some(crate::cost::money(total))
}

/// What the task's attempts reported using on the LLM, summed (None: an attempt reported
/// nothing, so the cost is unknown).
fn task_llm_usage(j: &Journal, ball: &str) -> Option<Usage> {
    let attempts = j.attempts(Some(ball)).ok()?;
    let usages = j.usages(Some(ball)).ok()?;
    let mut total = Usage::default();
    for a in attempts {
        let usage = usages.get(&a.id).map(|(u, _)| u);
        // Unknown as soon as one attempt's is (an attempt with no agent cost nothing).
        a.llm_cost(usage)?;
        if let Some(u) = usage {
            total += *u;
        }
    }
    Some(total)
}

/// Completes the delivered ball in both stores. A tracker that refuses blocks the ball (the work
/// is pushed; the error says so); a journal that refuses is a warning (the tracker has it).
async fn complete(
    ctx: &TaskCtx,
    task: &Task,
    branch: &str,
    sha: &str,
    note: &str,
) -> Result<(), TaskError> {
    let env = &ctx.env;
    let done = env
        .recorder
        .apply(Transition::Done {
            task: task.clone(),
            branch: branch.to_string(),
            commit: sha.to_string(),
            note: note.to_string(),
        })
        .await;
    match done {
        Err(RecordError::Tracker(e)) => return Err(TaskError::block("recording completion", e)),
        Err(RecordError::Journal(e)) => env.printer.warn(format!(
            "{} is complete, but the journal could not record it: {e}",
            task.id
        )),
        Ok(_) => {}
    }
    env.printer.status(format!(
        "✓ {} {}",
        task.id,
        note.trim_start_matches("cwo: ")
    ));
    Ok(())
}
