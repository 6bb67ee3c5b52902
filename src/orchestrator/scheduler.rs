//! The loop: polls the tracker, keeps one worker fit for the queue, claims ready balls onto it
//! (up to `workers.tasks_per_worker`), settles finished tasks, tears the worker down when idle, and always
//! before it returns.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attempt::{self, FollowUp, TaskCtx, TaskEnv, TaskReport};
use super::error::OrchestratorError;
use super::ports::{Ports, RunContext, journaled, tracked};
use super::record::{RecordError, Recorder, Transition};
use super::worker::{ActiveWorker, PENDING_WAIT, PendingCreate, Unfit, WorkerLifecycle};
use super::{RunOptions, RunSummary, Shutdown, one_line};
use crate::agent::Outcome;
use crate::forge::{Forge, PullRequestLife, Seen};
use crate::journal::{AttemptRow, PullRequestRow};
use crate::printer::fmt_secs;
use crate::provider::Provider;
use crate::tracker::{Task, Tracker, TrackerError};

/// Consecutive failed bring-ups a polling controller sits out before it gives up.
const MAX_UP_FAILURES: u32 = 5;

pub struct Orchestrator {
    workers: WorkerLifecycle,
    env: Arc<TaskEnv>,
    tracker: Arc<dyn Tracker>,
    provider: Arc<dyn Provider>,
    forge: Option<Arc<dyn Forge>>,
}

/// What the loop holds during a run.
struct RunState {
    opts: RunOptions,
    shutdown: Shutdown,
    worker: Option<ActiveWorker>,
    /// The current worker has taken no task yet (a TTL too short for even one is a settings
    /// error, not a reason to rotate forever).
    fresh: bool,
    pending: Vec<PendingCreate>,
    /// Failures that do not stop the queue but make the run exit 1 at its end (a worker that
    /// could not be deleted: the error carries the exact delete command).
    deferred: Vec<OrchestratorError>,
    running: JoinSet<TaskReport>,
    in_flight: HashSet<String>,
    /// Each running task's own abort (a child of the run's): cancelled when its task is no
    /// longer wanted (a GitHub issue closed or unlabelled while it runs).
    aborts: HashMap<String, CancellationToken>,
    /// Follow-up attempts the pull requests' feedback asked for, waiting for room.
    follow_ups: VecDeque<(Task, Arc<FollowUp>)>,
    /// When the running tasks and the pull requests were last looked at.
    watched: Option<Instant>,
    /// Attempts spent on balls whose worker went away, so a requeued ball keeps its count.
    tries: HashMap<String, u32>,
    idle_since: Instant,
    up_failures: u32,
    summary: RunSummary,
}

/// What the loop does after a step.
enum Next {
    /// Look at the queue again at once.
    Poll,
    /// Wait for a task to end, the poll interval, or a signal.
    Wait,
}

impl Orchestrator {
    pub fn new(ports: Ports, ctx: RunContext) -> Orchestrator {
        let recorder = Recorder::new(ports.tracker.clone(), ports.journal.clone());
        Orchestrator {
            workers: WorkerLifecycle::new(&ports, &ctx),
            env: Arc::new(TaskEnv {
                agent_env: tokio::sync::OnceCell::new(),
                root: ctx.root,
                state_dir: ctx.state_dir,
                settings: ctx.settings,
                template: ctx.template,
                recorder,
                journal: ports.journal,
                printer: ports.printer,
                forge: ports.forge.clone(),
            }),
            tracker: ports.tracker,
            provider: ports.provider,
            forge: ports.forge,
        }
    }

    /// The worker lifecycle the loop brings workers up and down with.
    pub(crate) fn workers(&self) -> &WorkerLifecycle {
        &self.workers
    }

    /// The loop. Returns after `--once` drained the queue or after a shutdown signal; the worker
    /// is always torn down before it returns. Every failure is shown on stderr; the last one is
    /// the run's error.
    pub async fn run(
        &self,
        opts: RunOptions,
        shutdown: Shutdown,
    ) -> Result<RunSummary, OrchestratorError> {
        let settings = &self.env.settings;
        // Secrets first: a missing one stops the run before anything is created.
        self.env
            .agent_env
            .get_or_try_init(|| crate::secrets::resolve(&settings.agent.env, &settings.gcp))
            .await
            .map_err(OrchestratorError::Secrets)?;
        let recovered = self.workers.recover(true, "orphaned").await?;
        let mut st = RunState {
            opts,
            shutdown,
            worker: recovered.worker,
            fresh: false,
            pending: recovered.pending,
            deferred: Vec::new(),
            running: JoinSet::new(),
            in_flight: HashSet::new(),
            aborts: HashMap::new(),
            follow_ups: VecDeque::new(),
            watched: None,
            tries: HashMap::new(),
            idle_since: Instant::now(),
            up_failures: 0,
            summary: RunSummary::default(),
        };
        let result = match self.resume(&mut st, recovered.resume).await {
            Ok(()) => self.poll(&mut st).await,
            Err(e) => Err(e),
        };
        self.finish(st, result).await
    }

    /// A task's context on the current worker, with an abort of its own.
    fn task_ctx(&self, st: &mut RunState, id: &str) -> TaskCtx {
        let w = st
            .worker
            .as_ref()
            .expect("tasks start on a worker that is up");
        let (transport, worker, workspace) = (
            w.transport.clone(),
            w.instance.name.clone(),
            w.instance.workspace.clone(),
        );
        let abort = st.shutdown.abort.child_token();
        st.aborts.insert(id.to_string(), abort.clone());
        TaskCtx {
            env: self.env.clone(),
            provider: self.provider.clone(),
            transport,
            worker,
            workspace,
            abort,
        }
    }

    /// Reattaches the attempts a stopped controller left running on the adopted worker; one
    /// whose ball left the tracker is closed.
    async fn resume(
        &self,
        st: &mut RunState,
        attempts: Vec<AttemptRow>,
    ) -> Result<(), OrchestratorError> {
        let Some(worker) = st.worker.as_ref().map(|w| w.instance.name.clone()) else {
            return Ok(());
        };
        let tasks = tracked(&self.tracker, |t| t.list()).await?;
        let open_pulls = journaled(&self.env.journal, |j| j.pull_requests(true)).await?;
        for attempt in attempts {
            // A follow-up on a pull request is not resumed as a plain task: it is closed, and
            // its feedback (not marked seen) is read again at the next poll.
            if let Some(pr) = open_pulls.iter().find(|p| p.ball_id == attempt.ball_id) {
                let why = format!(
                    "a follow-up on pull request #{} its controller left; the feedback is read again",
                    pr.number
                );
                self.close_attempt(attempt.id, why).await?;
                continue;
            }
            let Some(task) = tasks.iter().find(|t| t.id == attempt.ball_id).cloned() else {
                self.close_attempt(attempt.id, "the ball left the tracker".into())
                    .await?;
                continue;
            };
            st.in_flight.insert(task.id.clone());
            let (n, id) = (worker.clone(), task.id.clone());
            journaled(&self.env.journal, move |j| j.worker_activity(&n, Some(&id))).await?;
            let ctx = self.task_ctx(st, &task.id);
            st.running
                .spawn(attempt::run_task(ctx, task, Some(attempt), 0, None));
        }
        Ok(())
    }

    /// Polls until `--once` drained the queue or a signal stops the claiming and the running
    /// tasks ended.
    async fn poll(&self, st: &mut RunState) -> Result<(), OrchestratorError> {
        let settings = &self.env.settings;
        let tasks_per_worker = settings.workers.tasks_per_worker.get();
        loop {
            if !st.pending.is_empty() {
                let failed = self
                    .workers
                    .settle_pending(&mut st.pending, Duration::ZERO)
                    .await;
                st.deferred.extend(failed);
            }
            let stopping = st.shutdown.stop_claiming.is_cancelled();
            let mut ready_left = false;
            if !stopping
                && st
                    .watched
                    .is_none_or(|t| t.elapsed() >= settings.poll_interval)
            {
                st.watched = Some(Instant::now());
                self.watch(st).await?;
            }
            if !stopping {
                let ready: Vec<Task> = match tracked(&self.tracker, |t| t.ready()).await {
                    Ok(r) => r,
                    // GitHub rate-limited or out: say so, and look again at the next poll.
                    Err(TrackerError::Remote(e)) if remote_transient(e.as_ref()) => {
                        self.env.printer.warn(format!(
                            "the tracker could not be read: {e}; trying again at the next poll"
                        ));
                        vec![]
                    }
                    Err(e) => return Err(e.into()),
                }
                .into_iter()
                .filter(|t| !st.in_flight.contains(&t.id))
                .collect();
                ready_left = !ready.is_empty() || !st.follow_ups.is_empty();
                let free = tasks_per_worker.saturating_sub(st.in_flight.len());
                if ready_left
                    && free > 0
                    && let Next::Poll = self.take_work(st, ready, free).await?
                {
                    continue;
                }
            }
            if st.in_flight.is_empty() {
                if stopping || (st.opts.once && !ready_left) {
                    return Ok(());
                }
                self.tear_down_if_idle(st).await?;
            }
            self.wait(st, stopping).await?;
        }
    }

    /// Ready balls and room for them: a worker (brought up, or rotated when it is no longer
    /// fit), then claims.
    async fn take_work(
        &self,
        st: &mut RunState,
        ready: Vec<Task>,
        free: usize,
    ) -> Result<Next, OrchestratorError> {
        if st.worker.is_none()
            && let Next::Poll = self.bring_up(st).await?
        {
            return Ok(Next::Poll);
        }
        // Before new work: is the worker still fit for it? (It may have been stopped outside
        // cwo, or be too close to its TTL for another attempt.)
        let w = st.worker.as_ref().expect("a worker is up after bring_up");
        match self.workers.fitness(w).await {
            Some(Unfit::Ttl(why)) if st.fresh => Err(OrchestratorError::TtlTooShort {
                name: w.instance.name.clone(),
                why,
            }),
            Some(Unfit::Stopped(why) | Unfit::Ttl(why)) => {
                if !st.in_flight.is_empty() {
                    // Its running tasks finish first; nothing new goes there.
                    return Ok(Next::Wait);
                }
                let w = st.worker.take().expect("checked above");
                self.env.printer.status(format!(
                    "rotating worker {}: {why}; a fresh worker takes the rest of the queue",
                    w.instance.name
                ));
                let started = Instant::now();
                if let Err(e) = self.workers.tear_down(&w.instance.name, "rotated").await {
                    st.deferred.push(e);
                }
                st.summary.teardown_secs += started.elapsed().as_secs_f64();
                Ok(Next::Poll)
            }
            None => {
                self.claim(st, ready, free).await?;
                Ok(Next::Poll)
            }
        }
    }

    /// Brings a worker up for the queue. `--once` reports a failure; a polling controller keeps
    /// going (capacity and networks come back), waiting longer each time. `Poll`: look at the
    /// queue again (a signal arrived, or the bring-up is retried).
    async fn bring_up(&self, st: &mut RunState) -> Result<Next, OrchestratorError> {
        let started = Instant::now();
        let stop = &st.shutdown.stop_claiming;
        match self.workers.bring_up(stop).await {
            // A signal arrived before or during the bring-up: nothing is claimed, and the
            // worker (if one was made) is deleted again.
            Ok(None) => Ok(Next::Poll),
            Ok(Some(w)) => {
                st.worker = Some(w);
                st.fresh = true;
                st.summary.workers_created += 1;
                st.summary.up_secs += started.elapsed().as_secs_f64();
                st.up_failures = 0;
                Ok(Next::Wait)
            }
            Err(e) if stop.is_cancelled() => Err(e),
            Err(e) if !st.opts.once && st.up_failures < MAX_UP_FAILURES => {
                st.up_failures += 1;
                let failures = st.up_failures;
                let wait = self.env.settings.poll_interval * 2u32.pow(failures.min(6));
                self.env.printer.warn(format!(
                    "{}retrying in {} (failure {failures} of {MAX_UP_FAILURES})",
                    e.render()
                        .replace("error: ", "could not bring up a worker: "),
                    fmt_secs(wait)
                ));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => {}
                }
                Ok(Next::Poll)
            }
            Err(e) => Err(e),
        }
    }

    /// Claims up to `free` ready balls onto the worker and starts them.
    async fn claim(
        &self,
        st: &mut RunState,
        ready: Vec<Task>,
        free: usize,
    ) -> Result<(), OrchestratorError> {
        let worker = st
            .worker
            .as_ref()
            .expect("claims go to a worker that is up")
            .instance
            .name
            .clone();
        let mut free = free;
        while free > 0
            && !st.shutdown.stop_claiming.is_cancelled()
            && let Some((task, follow_up)) = st.follow_ups.pop_front()
        {
            free -= 1;
            st.in_flight.insert(task.id.clone());
            self.env.printer.status(format!(
                "▶ {} follow-up {} on pull request #{}",
                task.id, follow_up.pr.rounds, follow_up.pr.number
            ));
            st.fresh = false;
            let ctx = self.task_ctx(st, &task.id);
            // A delivered task is not "wanted" by its tracker any more (done label, done/
            // directory): the pull request's own life ends a follow-up, not `wanted()`.
            // Its abort still follows the run's (`--now`).
            st.aborts.remove(&task.id);
            st.running
                .spawn(attempt::run_task(ctx, task, None, 0, Some(follow_up)));
        }
        for task in ready.into_iter().take(free) {
            // A signal during the bring-up (or an earlier claim): nothing new.
            if st.shutdown.stop_claiming.is_cancelled() {
                break;
            }
            let claimed = self
                .env
                .recorder
                .apply(Transition::Claimed {
                    task: task.clone(),
                    worker: worker.clone(),
                })
                .await;
            // A ball removed or rewritten between the read and the claim is skipped, not
            // fatal: the next poll sees the file as it is.
            if let Err(RecordError::Tracker(TrackerError::NotFound(_))) = claimed {
                self.env
                    .printer
                    .warn(format!("{} vanished before it could be claimed", task.id));
                continue;
            }
            // Another controller was first: it has the task, this one backs off.
            if let Err(RecordError::Tracker(TrackerError::Taken { id, by })) = &claimed {
                self.env.printer.status(format!(
                    "{id} was claimed by {by} first; leaving it to them"
                ));
                continue;
            }
            claimed.map_err(into_run_error)?;
            st.in_flight.insert(task.id.clone());
            self.env
                .printer
                .status(format!("▶ {} {}", task.id, one_line(&task.title)));
            st.fresh = false;
            let prior = st.tries.get(&task.id).copied().unwrap_or(0);
            let ctx = self.task_ctx(st, &task.id);
            st.running
                .spawn(attempt::run_task(ctx, task, None, prior, None));
        }
        Ok(())
    }

    /// Closes an attempt a stopped controller left open, as aborted, with why.
    async fn close_attempt(&self, id: i64, why: String) -> Result<(), OrchestratorError> {
        self.env
            .recorder
            .apply(Transition::AttemptEnded {
                id,
                outcome: "aborted",
                exit: "-".into(),
                branch: None,
                commit: None,
                reason: Some(why),
            })
            .await
            .map_err(into_run_error)
            .map(|_| ())
    }

    /// At each poll: running tasks the tracker no longer wants are aborted, and cwo's open pull
    /// requests are read (merged → complete, closed → blocked, new feedback → a follow-up).
    async fn watch(&self, st: &mut RunState) -> Result<(), OrchestratorError> {
        let running: Vec<String> = st.aborts.keys().cloned().collect();
        for id in running {
            let asked = id.clone();
            match tracked(&self.tracker, move |t| t.wanted(&asked)).await {
                Ok(false) => {
                    if let Some(abort) = st.aborts.get(&id) {
                        self.env.printer.status(format!(
                            "■ {id} is no longer wanted (closed or unlabelled); aborting its attempt"
                        ));
                        abort.cancel();
                    }
                }
                Ok(true) => {}
                Err(e) => self.env.printer.warn(format!(
                    "could not ask the tracker whether {id} is still wanted: {e}"
                )),
            }
        }
        let Some(forge) = &self.forge else {
            return Ok(());
        };
        let rows = journaled(&self.env.journal, |j| j.pull_requests(true)).await?;
        if rows.is_empty() {
            return Ok(());
        }
        // One read of the tracker for every pull request of this poll (None: it could not be
        // read; the journal's titles stand in).
        let tasks = tracked(&self.tracker, |t| t.list()).await.ok();
        for row in rows {
            if st.in_flight.contains(&row.ball_id)
                || st.follow_ups.iter().any(|(t, _)| t.id == row.ball_id)
            {
                continue;
            }
            let seen = Seen {
                review: row.seen_review,
                comment: row.seen_comment,
                issue_comment: row.seen_issue_comment,
                failed_sha: row.failed_sha.clone(),
            };
            let report = match forge.report(row.number, &seen).await {
                Ok(r) => r,
                Err(e) => {
                    self.env.printer.warn(format!(
                        "could not read pull request #{} ({}): {e}",
                        row.number, row.ball_id
                    ));
                    if e.is_transient() {
                        break;
                    }
                    continue;
                }
            };
            self.pull_request_moved(st, row, report, tasks.as_deref())
                .await?;
        }
        Ok(())
    }

    /// Acts on what one pull request's report says.
    async fn pull_request_moved(
        &self,
        st: &mut RunState,
        mut row: PullRequestRow,
        report: crate::forge::PullRequestReport,
        tasks: Option<&[Task]>,
    ) -> Result<(), OrchestratorError> {
        let printer = self.env.printer;
        let max = self.env.settings.github.max_feedback_rounds;
        row.review_state = report.review_state.clone();
        row.check_state = report.check_state.clone();
        // Feedback handed to a follow-up is marked seen when the follow-up ends.
        let mut acted_on = true;
        let task = self.task_for(&row, tasks).await?;
        match &report.life {
            PullRequestLife::Merged { by } => {
                row.state = "merged".into();
                printer.status(format!(
                    "✓ {} pull request #{} merged by {by}",
                    row.ball_id, row.number
                ));
                let note = format!(
                    "cwo: pull request #{} {} merged by {by}",
                    row.number, row.url
                );
                let done = self
                    .env
                    .recorder
                    .apply(Transition::Merged { task, note })
                    .await;
                if let Err(e) = done {
                    printer.warn(format!(
                        "could not record the merge of {}: {e}",
                        row.ball_id
                    ));
                }
            }
            PullRequestLife::Closed { by } => {
                row.state = "closed".into();
                let reason = format!(
                    "pull request #{} closed without merging by {by}",
                    row.number
                );
                self.block_for_pull_request(&row, task, reason).await;
            }
            PullRequestLife::Open { .. } if report.has_feedback() && row.rounds >= max => {
                row.state = "blocked".into();
                let reason = format!(
                    "pull request #{} still has review comments or failed checks after {max} feedback round(s); it stays open for a human",
                    row.number
                );
                self.block_for_pull_request(&row, task, reason).await;
            }
            PullRequestLife::Open { .. } if report.has_feedback() => {
                // The round is journaled when the follow-up ends (with the watermarks): a
                // follow-up that is stopped costs no round.
                let mut next = row.clone();
                next.rounds += 1;
                let what = match (report.notes.len(), report.failed.len()) {
                    (n, 0) => format!("{n} review comment(s)"),
                    (0, f) => format!("{f} failed check(s)"),
                    (n, f) => format!("{n} review comment(s) and {f} failed check(s)"),
                };
                printer.status(format!(
                    "↺ {} pull request #{}: {what}; follow-up {}/{max}",
                    row.ball_id, row.number, next.rounds
                ));
                st.follow_ups.push_back((
                    task,
                    Arc::new(FollowUp {
                        pr: next,
                        notes: report.notes.clone(),
                        failed: report.failed.clone(),
                        seen: report.seen.clone(),
                    }),
                ));
                acted_on = false;
            }
            PullRequestLife::Open { .. } => {}
        }
        if acted_on {
            row.seen_review = report.seen.review;
            row.seen_comment = report.seen.comment;
            row.seen_issue_comment = report.seen.issue_comment;
            row.failed_sha = report.seen.failed_sha;
        }
        journaled(&self.env.journal, move |j| j.pull_request_update(&row)).await?;
        Ok(())
    }

    /// Blocks a task because of its pull request; a store that refuses is a warning (the pull
    /// request row still records why).
    async fn block_for_pull_request(&self, row: &PullRequestRow, task: Task, reason: String) {
        let printer = self.env.printer;
        printer.status(format!("✗ {} blocked: {reason}", row.ball_id));
        let blocked = self
            .env
            .recorder
            .apply(Transition::Blocked { task, reason })
            .await;
        if let Err(e) = blocked {
            printer.warn(format!(
                "could not record that {} is blocked: {e}",
                row.ball_id
            ));
        }
    }

    /// The task a pull request belongs to, as the tracker has it now (or, once it left the
    /// tracker, as the journal remembers it).
    async fn task_for(
        &self,
        row: &PullRequestRow,
        tasks: Option<&[Task]>,
    ) -> Result<Task, OrchestratorError> {
        let id = row.ball_id.clone();
        if let Some(t) = tasks.into_iter().flatten().find(|t| t.id == id) {
            return Ok(t.clone());
        }
        let ball = id.clone();
        let title = journaled(&self.env.journal, move |j| j.tasks())
            .await?
            .into_iter()
            .find(|t| t.ball_id == ball)
            .map(|t| t.title)
            .unwrap_or_default();
        Ok(Task {
            id,
            title,
            context: String::new(),
            acceptance_criteria: vec![],
            priority: crate::tracker::Priority::Medium,
            state: "complete".into(),
            blocked_reason: String::new(),
            depends_on: vec![],
            tags: vec![],
            waiting_on: vec![],
            issue: None,
        })
    }

    /// With nothing running for `idle_timeout`, the worker goes.
    async fn tear_down_if_idle(&self, st: &mut RunState) -> Result<(), OrchestratorError> {
        let idle_timeout = self.env.settings.idle_timeout;
        if let Some(w) = &st.worker
            && st.idle_since.elapsed() >= idle_timeout
        {
            self.env.printer.status(format!(
                "idle for {}; tearing down worker {}",
                fmt_secs(idle_timeout),
                w.instance.name
            ));
            let started = Instant::now();
            self.workers.tear_down(&w.instance.name, "idle").await?;
            st.summary.teardown_secs += started.elapsed().as_secs_f64();
            st.worker = None;
        }
        Ok(())
    }

    /// Waits for a task to end (and settles it), the next poll, or a signal.
    async fn wait(&self, st: &mut RunState, stopping: bool) -> Result<(), OrchestratorError> {
        let settings = &self.env.settings;
        let wait = if st.worker.is_some() && st.in_flight.is_empty() {
            settings.poll_interval.min(
                settings
                    .idle_timeout
                    .saturating_sub(st.idle_since.elapsed()),
            )
        } else {
            settings.poll_interval
        };
        tokio::select! {
            Some(done) = st.running.join_next() => {
                let report = done.map_err(OrchestratorError::TaskPanicked)?;
                self.task_ended(st, report).await?;
            }
            _ = tokio::time::sleep(wait) => {}
            _ = st.shutdown.stop_claiming.cancelled(), if !stopping => {
                if !st.in_flight.is_empty() {
                    self.env.printer.status(format!(
                        "stopping: no new tasks; waiting for {} running task(s) (signal again to abort them)",
                        st.in_flight.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// A task ended: its time and outcome go into the summary; a worker it found gone is torn
    /// down (the next ball, this one included when it has tries left, gets a new worker).
    async fn task_ended(
        &self,
        st: &mut RunState,
        report: TaskReport,
    ) -> Result<(), OrchestratorError> {
        let printer = self.env.printer;
        st.in_flight.remove(&report.id);
        st.aborts.remove(&report.id);
        st.summary.agent_secs += report.agent.as_secs_f64();
        st.summary.git_secs += report.git.as_secs_f64();
        let requeued =
            report.worker_gone && report.tries < self.env.settings.agent.max_attempts.get();
        if report.worker_gone {
            st.tries.insert(report.id.clone(), report.tries);
            let lost = st
                .worker
                .as_ref()
                .is_some_and(|w| w.instance.name == report.worker);
            if let Some(w) = st.worker.take_if(|_| lost) {
                printer.warn(format!(
                    "worker {} is lost ({}); tearing it down and bringing up a new one for the rest of the queue",
                    w.instance.name,
                    report.outcome.reason().unwrap_or("gone")
                ));
                let started = Instant::now();
                // A teardown that fails here (an unreachable host) keeps its journal row for
                // `cwo down` / `cwo reap`; the queue goes on.
                if let Err(e) = self.workers.tear_down(&w.instance.name, "lost").await {
                    printer.warn(format!(
                        "could not delete lost worker {}; going on, and the run will exit 1",
                        w.instance.name
                    ));
                    st.deferred.push(e);
                }
                st.summary.teardown_secs += started.elapsed().as_secs_f64();
            }
        }
        let s = &mut st.summary;
        match report.outcome {
            Outcome::Done { .. } => s.complete.push(report.id),
            Outcome::Failed(_) if requeued => s.requeued.push(report.id),
            Outcome::Blocked(_) | Outcome::Failed(_) => s.blocked.push(report.id),
            Outcome::Aborted => s.aborted.push(report.id),
        }
        if st.in_flight.is_empty() {
            st.idle_since = Instant::now();
            if let Some(w) = &st.worker {
                let n = w.instance.name.clone();
                journaled(&self.env.journal, move |j| j.worker_activity(&n, None)).await?;
            }
        }
        Ok(())
    }

    /// Whatever happened, tasks are stopped and the worker goes away before returning; pending
    /// creates get their time to show up and go. Every failure is shown; the last one is the
    /// run's error (exit 1).
    async fn finish(
        &self,
        mut st: RunState,
        result: Result<(), OrchestratorError>,
    ) -> Result<RunSummary, OrchestratorError> {
        if result.is_err() && !st.running.is_empty() {
            st.shutdown.abort.cancel();
        }
        while let Some(done) = st.running.join_next().await {
            if let Ok(report) = done
                && report.outcome == Outcome::Aborted
            {
                st.summary.aborted.push(report.id);
            }
        }
        if let Some(w) = st.worker.take() {
            let reason = if st.shutdown.stop_claiming.is_cancelled() {
                "user"
            } else if result.is_err() {
                "error"
            } else {
                "idle"
            };
            let phase = self
                .env
                .printer
                .phase(format!("tearing down worker {}", w.instance.name));
            let started = Instant::now();
            let down = self.workers.tear_down(&w.instance.name, reason).await;
            st.summary.teardown_secs += started.elapsed().as_secs_f64();
            match down {
                Ok(()) => {
                    phase.finish(format!("worker {} deleted", w.instance.name));
                }
                Err(e) => {
                    phase.finish("teardown failed");
                    st.deferred.push(e);
                }
            }
        }
        // A create a stopped controller had in flight: give it the time to show up and go.
        if result.is_ok() && !st.pending.is_empty() {
            let failed = self
                .workers
                .settle_pending(&mut st.pending, PENDING_WAIT)
                .await;
            st.deferred.extend(failed);
            self.workers.warn_unsettled(&st.pending);
        }
        let last = match result {
            Err(e) => Some(e),
            Ok(()) => st.deferred.pop(),
        };
        for e in &st.deferred {
            eprint!("{}", e.render());
        }
        match last {
            Some(e) => Err(e),
            None => Ok(st.summary),
        }
    }
}

/// A remote tracker's error that a later poll may not meet (rate limit, outage).
fn remote_transient(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<crate::github::GithubError>()
        .is_some_and(|g| g.is_transient())
}

/// A store that refused one of the loop's own transitions stops the loop.
fn into_run_error(e: RecordError) -> OrchestratorError {
    match e {
        RecordError::Tracker(e) => e.into(),
        RecordError::Journal(e) => e.into(),
    }
}
