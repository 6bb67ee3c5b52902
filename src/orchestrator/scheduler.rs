//! The loop: polls the tracker, scales a fleet of workers 0..`workers.max` by the ready tasks
//! (capped by `workers.max_hourly_usd` and the provider's quota), claims ready balls onto workers
//! with room (up to `workers.tasks_per_worker` each), settles finished tasks, tears each worker
//! down on its own when idle (or after its one task, with `workers.fresh_per_task`), and tears
//! every worker down before it returns. Bring-ups and teardowns run beside the loop, so tasks on
//! the other workers keep being settled and claimed meanwhile.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attempt::{self, FollowUp, TaskCtx, TaskEnv, TaskReport};
use super::error::OrchestratorError;
use super::ports::{Ports, RunContext, journaled, tracked};
use super::record::{RecordError, Recorder, Transition};
use super::worker::{ActiveWorker, Batch, PENDING_WAIT, PendingCreate, Unfit, WorkerLifecycle};
use super::{RunOptions, RunSummary, Shutdown, one_line};
use crate::agent::Outcome;
use crate::forge::{Forge, PullRequestLife, Seen};
use crate::journal::{AttemptRow, PullRequestRow};
use crate::printer::fmt_secs;
use crate::provider::Provider;
use crate::tracker::{Task, Tracker, TrackerError};

/// Consecutive failed bring-ups a polling controller with no worker up sits out before it gives
/// up.
const MAX_UP_FAILURES: u32 = 5;

pub struct Orchestrator {
    workers: Arc<WorkerLifecycle>,
    env: Arc<TaskEnv>,
    tracker: Arc<dyn Tracker>,
    provider: Arc<dyn Provider>,
    forge: Option<Arc<dyn Forge>>,
}

/// One worker of the fleet, as the loop holds it.
struct Slot {
    worker: ActiveWorker,
    /// The tasks running on it.
    tasks: HashSet<String>,
    /// Since when it has run nothing (its own `idle_timeout` counts from here).
    idle_since: Instant,
    /// It takes no new task: unfit (stopped, or too close to its TTL) with tasks still running,
    /// or a `fresh_per_task` worker that has had its task. It goes when its tasks end.
    closed: Option<&'static str>,
}

impl Slot {
    /// It takes new tasks and has room for one more.
    fn has_room(&self, tasks_per_worker: usize) -> bool {
        self.closed.is_none() && self.tasks.len() < tasks_per_worker
    }

    /// A worker that has just come up.
    fn new(worker: ActiveWorker) -> Slot {
        Slot {
            worker,
            tasks: HashSet::new(),
            idle_since: Instant::now(),
            closed: None,
        }
    }
}

/// What a bring-up running beside the loop reports.
enum UpEvent {
    /// A batch's creates answered, one result per worker (`Err`: the journal refused the
    /// intents, and nothing was created).
    Created(u64, Result<Batch, OrchestratorError>),
    /// A created worker is ready (`None`: a signal arrived, and it was deleted again).
    Ready {
        batch: u64,
        name: String,
        result: Result<Option<ActiveWorker>, OrchestratorError>,
        secs: f64,
    },
}

/// A teardown running beside the loop: the worker, how long it took, and how it went.
type Down = (String, f64, Result<(), OrchestratorError>);

/// What the loop holds during a run.
struct RunState {
    opts: RunOptions,
    shutdown: Shutdown,
    /// The fleet, by worker name.
    workers: BTreeMap<String, Slot>,
    /// Bring-ups running beside the loop, and how many workers they will add.
    ups: JoinSet<UpEvent>,
    coming: usize,
    /// Stops the bring-ups (a signal, or the run ending while one is under way).
    up_stop: CancellationToken,
    /// Teardowns running beside the loop (their workers still count against `workers.max`
    /// until they are confirmed gone).
    downs: JoinSet<Down>,
    /// How many workers the fleet may have: `workers.max`, the hourly ceiling, and (once asked)
    /// the provider's quota.
    cap: usize,
    /// What sets the cap, for the line that says the fleet reached it.
    cap_why: String,
    quota_asked: bool,
    /// The cap the fleet last could not grow past, said once.
    capped: Option<String>,
    pending: Vec<PendingCreate>,
    /// Failures that do not stop the queue but make the run exit 1 at its end (a worker that
    /// could not be deleted: the error carries the exact delete command).
    deferred: Vec<OrchestratorError>,
    running: JoinSet<TaskReport>,
    /// Every running task, and the worker it runs on.
    placed: HashMap<String, String>,
    /// Each running task's own abort (a child of the run's): cancelled when its task is no
    /// longer wanted (a GitHub issue closed or unlabelled while it runs).
    aborts: HashMap<String, CancellationToken>,
    /// Follow-up attempts the pull requests' feedback asked for, waiting for room.
    follow_ups: VecDeque<(Task, Arc<FollowUp>)>,
    /// When the running tasks and the pull requests were last looked at.
    watched: Option<Instant>,
    /// Attempts spent on balls whose worker went away, so a requeued ball keeps its count.
    tries: HashMap<String, u32>,
    /// Batches that failed in a row (one failure per batch, however many of its workers failed).
    up_failures: u32,
    /// Batches started so far, and the last one a failure was counted for.
    batches: u64,
    failed_batch: Option<u64>,
    /// No new bring-up before this (backing off after failures).
    up_after: Option<Instant>,
    /// Workers whose deletion failed: they may still be alive, so they count against the cap
    /// (the journal keeps them for `cwo down` and `cwo reap`).
    undeleted: usize,
    summary: RunSummary,
}

impl RunState {
    /// Workers that count against the cap: up, coming up, being deleted, and those whose
    /// deletion failed.
    fn live(&self) -> usize {
        self.workers.len() + self.coming + self.downs.len() + self.undeleted
    }
}

impl Orchestrator {
    pub fn new(ports: Ports, ctx: RunContext) -> Orchestrator {
        let recorder = Recorder::new(ports.tracker.clone(), ports.journal.clone());
        Orchestrator {
            workers: Arc::new(WorkerLifecycle::new(&ports, &ctx)),
            env: Arc::new(TaskEnv {
                agent_env: tokio::sync::OnceCell::new(),
                root: ctx.root,
                state_dir: ctx.state_dir,
                settings: ctx.settings,
                origins: ctx.origins,
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

    /// The loop. Returns after `--once` drained the queue or after a shutdown signal; every
    /// worker is torn down before it returns. Every failure is shown on stderr; the last one is
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
        // So is a repository workflow that is wrong at HEAD (each task reads it again at the
        // commit it starts from; git failing to answer here is left to the task, which says so).
        if let Err(e @ crate::workflow::WorkflowError::Invalid { .. }) =
            crate::workflow::load(&self.env.root, "HEAD").await
        {
            return Err(OrchestratorError::Workflow(e));
        }
        // So is a ceiling that cannot be kept.
        let (cap, cap_why) = self.price_cap()?;
        let recovered = self.workers.recover(cap, "orphaned").await?;
        let now = Instant::now();
        let workers = recovered
            .workers
            .into_iter()
            .map(|w| {
                let slot = Slot {
                    worker: w,
                    tasks: HashSet::new(),
                    idle_since: now,
                    closed: None,
                };
                (slot.worker.instance.name.clone(), slot)
            })
            .collect();
        let up_stop = shutdown.stop_claiming.child_token();
        let mut st = RunState {
            opts,
            shutdown,
            workers,
            ups: JoinSet::new(),
            coming: 0,
            up_stop,
            downs: JoinSet::new(),
            cap,
            cap_why,
            quota_asked: false,
            capped: None,
            pending: recovered.pending,
            deferred: Vec::new(),
            running: JoinSet::new(),
            placed: HashMap::new(),
            aborts: HashMap::new(),
            follow_ups: VecDeque::new(),
            watched: None,
            tries: HashMap::new(),
            up_failures: 0,
            batches: 0,
            failed_batch: None,
            up_after: None,
            undeleted: 0,
            summary: RunSummary::default(),
        };
        let result = match self.resume(&mut st, recovered.resume).await {
            Ok(()) => {
                // A worker per task: an adopted worker with no attempt to finish may have had
                // its task already, so it takes no other.
                if settings.workers.fresh_per_task {
                    let idle: Vec<String> = st
                        .workers
                        .iter()
                        .filter(|(_, s)| s.tasks.is_empty())
                        .map(|(n, _)| n.clone())
                        .collect();
                    for name in idle {
                        self.retire(&mut st, &name, "fresh_per_task");
                    }
                }
                self.poll(&mut st).await
            }
            Err(e) => Err(e),
        };
        self.finish(st, result).await
    }

    /// How many workers the fleet may have by `workers.max` and `workers.max_hourly_usd` (the
    /// ceiling over one worker's list price). A ceiling with no price to hold it against, or one
    /// below a single worker, is a settings error: the run refuses to scale at all.
    fn price_cap(&self) -> Result<(usize, String), OrchestratorError> {
        let w = &self.env.settings.workers;
        let max = (w.max.get(), "workers.max".to_string());
        let Some(ceiling) = w.max_hourly_usd.0 else {
            return Ok(max);
        };
        let spec = self.provider.price_spec(None);
        let Some(price) = self.workers.hourly_price() else {
            return Err(OrchestratorError::Unpriced {
                ceiling,
                machine: spec.machine_type,
                zone: spec.zone,
            });
        };
        // A hair of slack: 0.3 / 0.1 is 2.9999999999999996 in floating point.
        let fits = ((ceiling / price) + 1e-9).floor() as usize;
        if fits == 0 {
            return Err(OrchestratorError::CeilingTooLow {
                ceiling,
                machine: spec.machine_type,
                price,
            });
        }
        if fits >= w.max.get() {
            return Ok(max);
        }
        let why = format!("workers.max_hourly_usd = {ceiling} at ${price:.4}/h a worker");
        self.env.printer.status(format!(
            "{why} caps the fleet at {fits} worker(s) (workers.max = {})",
            w.max
        ));
        Ok((fits, why))
    }

    /// A task's context on worker `on`, with an abort of its own.
    fn task_ctx(&self, st: &mut RunState, id: &str, on: &str) -> TaskCtx {
        let slot = st
            .workers
            .get_mut(on)
            .expect("tasks start on a worker that is up");
        slot.tasks.insert(id.to_string());
        if self.env.settings.workers.fresh_per_task {
            slot.closed = Some("fresh_per_task");
        }
        let w = &slot.worker;
        let (transport, worker, workspace) = (
            w.transport.clone(),
            w.instance.name.clone(),
            w.instance.workspace.clone(),
        );
        st.placed.insert(id.to_string(), on.to_string());
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

    /// Reattaches the attempts a stopped controller left running on the adopted workers; one
    /// whose ball left the tracker is closed.
    async fn resume(
        &self,
        st: &mut RunState,
        attempts: Vec<AttemptRow>,
    ) -> Result<(), OrchestratorError> {
        if attempts.is_empty() {
            return Ok(());
        }
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
            let worker = attempt.worker.clone();
            if !st.workers.contains_key(&worker) || st.placed.contains_key(&task.id) {
                continue;
            }
            let (n, id) = (worker.clone(), task.id.clone());
            journaled(&self.env.journal, move |j| j.worker_activity(&n, Some(&id))).await?;
            let ctx = self.task_ctx(st, &task.id, &worker);
            st.running
                .spawn(attempt::run_task(ctx, task, Some(attempt), 0, None));
        }
        Ok(())
    }

    /// Polls until `--once` drained the queue or a signal stops the claiming and the running
    /// tasks ended.
    async fn poll(&self, st: &mut RunState) -> Result<(), OrchestratorError> {
        let settings = &self.env.settings;
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
                .filter(|t| !st.placed.contains_key(&t.id))
                .collect();
                ready_left = !ready.is_empty() || !st.follow_ups.is_empty();
                if ready_left {
                    self.take_work(st, ready).await?;
                }
            }
            if st.placed.is_empty() && (stopping || (st.opts.once && !ready_left)) {
                return Ok(());
            }
            // `--once` drains the queue: with nothing left to claim, an idle worker has no more
            // work coming and is not billed while the others finish.
            let drained = if stopping {
                Some("user")
            } else {
                (st.opts.once && !ready_left).then_some("idle")
            };
            self.tear_down_idle(st, drained);
            self.wait(st, stopping).await?;
        }
    }

    /// Ready balls: the workers with room take them (each checked fit first: it may have been
    /// stopped outside cwo, or be too close to its TTL for another attempt), and the fleet grows
    /// for the rest.
    async fn take_work(
        &self,
        st: &mut RunState,
        ready: Vec<Task>,
    ) -> Result<(), OrchestratorError> {
        let tasks_per_worker = self.env.settings.workers.tasks_per_worker.get();
        let with_room: Vec<String> = st
            .workers
            .iter()
            .filter(|(_, s)| s.has_room(tasks_per_worker))
            .map(|(n, _)| n.clone())
            .collect();
        for name in with_room {
            let slot = &st.workers[&name];
            match self.workers.fitness(&slot.worker).await {
                None => {}
                Some(Unfit::Stopped(why) | Unfit::Ttl(why)) if slot.tasks.is_empty() => {
                    self.env.printer.status(format!(
                        "rotating worker {name}: {why}; a fresh worker takes its place"
                    ));
                    self.retire(st, &name, "rotated");
                }
                Some(Unfit::Stopped(why) | Unfit::Ttl(why)) => {
                    let slot = st.workers.get_mut(&name).expect("listed above");
                    self.env.printer.status(format!(
                        "worker {name} takes no new task ({why}); it goes when its {} running task(s) end",
                        slot.tasks.len()
                    ));
                    slot.closed = Some("rotated");
                }
            }
        }
        let left = self.claim(st, ready).await?;
        if left > 0 {
            self.ask_quota(st).await;
        }
        self.grow(st, left);
        Ok(())
    }

    /// Brings up as many workers as the tasks no worker has room for need, within the fleet's
    /// cap (`workers.max`, the hourly ceiling, the provider's quota), as one batch beside the
    /// loop.
    fn grow(&self, st: &mut RunState, waiting: usize) {
        let tasks_per_worker = self.env.settings.workers.tasks_per_worker.get();
        let stopped = st.up_stop.is_cancelled();
        let backing_off = st.up_after.is_some_and(|t| Instant::now() < t);
        if waiting == 0 || stopped || backing_off {
            return;
        }
        let needed = waiting.div_ceil(tasks_per_worker).saturating_sub(st.coming);
        if needed == 0 {
            return;
        }
        let room = st.cap.saturating_sub(st.live());
        let count = needed.min(room);
        if count == 0 {
            // Said once until the fleet shrinks (the number of waiting tasks changes at every
            // claim), counting only the tasks no worker up or coming will take.
            if st.capped.is_none() {
                let beyond = waiting.saturating_sub(st.coming * tasks_per_worker);
                let why = format!(
                    "{beyond} task(s) wait for room: the fleet is at its cap of {} worker(s) ({})",
                    st.cap, st.cap_why
                );
                self.env.printer.status(&why);
                st.capped = Some(why);
            }
            return;
        }
        st.coming += count;
        if count > 1 {
            self.env.printer.status(format!(
                "bringing up {count} workers for {waiting} ready task(s)"
            ));
        }
        st.batches += 1;
        let (lifecycle, batch) = (self.workers.clone(), st.batches);
        st.ups
            .spawn(async move { UpEvent::Created(batch, lifecycle.create_fleet(count).await) });
    }

    /// Asks the provider's quota once per run, before the fleet first grows beyond one worker;
    /// the cap shrinks to what it leaves room for. A quota that cannot be read is a warning: the
    /// fleet scales as if it had none, and the workers already up are untouched.
    async fn ask_quota(&self, st: &mut RunState) {
        if st.quota_asked || st.cap <= 1 {
            return;
        }
        st.quota_asked = true;
        match self.workers.room().await {
            Ok(Some(room)) => {
                let fits = st.live() + room.workers;
                if fits < st.cap {
                    self.env.printer.status(format!(
                        "{} leaves room for {} more worker(s): the fleet is capped at {fits}",
                        room.why, room.workers
                    ));
                    st.cap = fits.max(st.live()).max(1);
                    st.cap_why = room.why;
                }
            }
            Ok(None) => {}
            Err(e) => self.env.printer.warn(format!(
                "{}the fleet scales to workers.max without it",
                e.render().replace("error: ", "")
            )),
        }
    }

    /// A batch's creates answered: each created worker goes on to be made ready beside the
    /// loop; each that was not created is a failed bring-up.
    fn created(
        &self,
        st: &mut RunState,
        batch: u64,
        created: Batch,
    ) -> Result<(), OrchestratorError> {
        for (name, result) in created {
            match result {
                Ok(instance) => {
                    let (lifecycle, stop) = (self.workers.clone(), st.up_stop.clone());
                    st.ups.spawn(async move {
                        let started = Instant::now();
                        let result = lifecycle.finish_up(instance, &stop).await;
                        UpEvent::Ready {
                            batch,
                            name,
                            result,
                            secs: started.elapsed().as_secs_f64(),
                        }
                    });
                }
                Err(e) => {
                    st.coming -= 1;
                    self.up_failed(st, batch, e)?;
                }
            }
        }
        Ok(())
    }

    /// What a bring-up running beside the loop reported.
    async fn up_event(&self, st: &mut RunState, event: UpEvent) -> Result<(), OrchestratorError> {
        match event {
            UpEvent::Created(batch, Ok(created)) => self.created(st, batch, created),
            UpEvent::Created(_, Err(e)) => Err(e),
            UpEvent::Ready {
                batch,
                name,
                result,
                secs,
            } => {
                st.coming -= 1;
                match result {
                    Ok(Some(w)) => {
                        st.summary.workers_created += 1;
                        st.summary.up_secs += secs;
                        st.up_failures = 0;
                        st.up_after = None;
                        // A worker that comes up already too close to its TTL for one task is a
                        // settings error (rotating would bring up another just like it); one
                        // that gets there later, idle or busy, is rotated.
                        let unfit = self.workers.fitness(&w).await;
                        st.workers.insert(name.clone(), Slot::new(w));
                        if let Some(Unfit::Ttl(why)) = unfit {
                            return Err(OrchestratorError::TtlTooShort { name, why });
                        }
                        Ok(())
                    }
                    // A signal arrived: it was deleted again.
                    Ok(None) => Ok(()),
                    Err(e) => self.up_failed(st, batch, e),
                }
            }
        }
    }

    /// A worker that could not be brought up costs only itself: with other workers up or coming
    /// the queue goes on, and a polling controller tries again later (capacity and networks come
    /// back), waiting longer each time. It ends the run only when nothing else can take the
    /// work: `--once` with no worker, or `MAX_UP_FAILURES` failures in a row with none.
    fn up_failed(
        &self,
        st: &mut RunState,
        batch: u64,
        e: OrchestratorError,
    ) -> Result<(), OrchestratorError> {
        if st.up_stop.is_cancelled() {
            st.deferred.push(e);
            return Ok(());
        }
        let alone = st.workers.is_empty() && st.coming == 0;
        // The other workers of a batch that already failed (one stockout fails them all): a
        // line each, and no further count or wait.
        if st.failed_batch == Some(batch) {
            if alone && (st.opts.once || st.up_failures > MAX_UP_FAILURES) {
                return Err(e);
            }
            self.env.printer.warn(format!(
                "could not bring up a worker: {}",
                crate::util::error::one_line(&e)
            ));
            return Ok(());
        }
        st.failed_batch = Some(batch);
        st.up_failures += 1;
        if alone && (st.opts.once || st.up_failures > MAX_UP_FAILURES) {
            return Err(e);
        }
        let failures = st.up_failures;
        let wait = self.env.settings.poll_interval * 2u32.pow(failures.min(6));
        st.up_after = Some(Instant::now() + wait);
        let tally = match (st.workers.len(), st.coming) {
            (0, 0) => format!(" (failure {failures} of {MAX_UP_FAILURES})"),
            (0, coming) => format!("; {coming} more worker(s) of the batch are still coming up"),
            (up, _) => format!("; {up} worker(s) keep working"),
        };
        self.env.printer.warn(format!(
            "{}retrying in {}{tally}",
            e.render()
                .replace("error: ", "could not bring up a worker: "),
            fmt_secs(wait)
        ));
        Ok(())
    }

    /// Claims ready balls (follow-ups first) onto the workers with room, each onto the least
    /// busy one, and starts them. Returns how many found no room.
    async fn claim(&self, st: &mut RunState, ready: Vec<Task>) -> Result<usize, OrchestratorError> {
        let mut ready: VecDeque<Task> = ready.into();
        let total = ready.len() + st.follow_ups.len();
        let mut placed = 0;
        while !st.shutdown.stop_claiming.is_cancelled() {
            let Some(worker) = self.roomiest(st) else {
                break;
            };
            if let Some((task, follow_up)) = st.follow_ups.pop_front() {
                placed += 1;
                self.env.printer.status(format!(
                    "▶ {} follow-up {} on pull request #{} (worker {worker})",
                    task.id, follow_up.pr.rounds, follow_up.pr.number
                ));
                let ctx = self.task_ctx(st, &task.id, &worker);
                // A delivered task is not "wanted" by its tracker any more (done label, done/
                // directory): the pull request's own life ends a follow-up, not `wanted()`.
                // Its abort still follows the run's (`--now`).
                st.aborts.remove(&task.id);
                st.running
                    .spawn(attempt::run_task(ctx, task, None, 0, Some(follow_up)));
                continue;
            }
            let Some(task) = ready.pop_front() else {
                break;
            };
            placed += 1;
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
            let on = if st.workers.len() > 1 {
                format!(" (worker {worker})")
            } else {
                String::new()
            };
            self.env
                .printer
                .status(format!("▶ {} {}{on}", task.id, one_line(&task.title)));
            let prior = st.tries.get(&task.id).copied().unwrap_or(0);
            let ctx = self.task_ctx(st, &task.id, &worker);
            st.running
                .spawn(attempt::run_task(ctx, task, None, prior, None));
        }
        Ok(total - placed)
    }

    /// The open worker with the most room (the least busy), if any has room.
    fn roomiest(&self, st: &RunState) -> Option<String> {
        let tasks_per_worker = self.env.settings.workers.tasks_per_worker.get();
        st.workers
            .iter()
            .filter(|(_, s)| s.has_room(tasks_per_worker))
            .min_by_key(|(_, s)| s.tasks.len())
            .map(|(n, _)| n.clone())
    }

    /// Takes a worker out of the fleet and deletes it beside the loop (confirmed, journaled).
    fn retire(&self, st: &mut RunState, name: &str, reason: &'static str) {
        let Some(slot) = st.workers.remove(name) else {
            return;
        };
        st.capped = None;
        // The heartbeat stops with the worker's handle.
        drop(slot);
        let (lifecycle, name) = (self.workers.clone(), name.to_string());
        st.downs.spawn(async move {
            let started = Instant::now();
            let result = lifecycle.tear_down(&name, reason).await;
            (name, started.elapsed().as_secs_f64(), result)
        });
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
            if st.placed.contains_key(&row.ball_id)
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
            model_override: String::new(),
            model_size: String::new(),
        })
    }

    /// Each worker that has run nothing for `idle_timeout` goes, on its own: the others keep
    /// working. `drained` (with the reason journaled): no more work will come (a signal, or the
    /// empty queue of a `--once` run), so an idle worker goes now.
    fn tear_down_idle(&self, st: &mut RunState, drained: Option<&'static str>) {
        let idle_timeout = self.env.settings.idle_timeout;
        let idle: Vec<String> = st
            .workers
            .iter()
            .filter(|(_, s)| {
                s.tasks.is_empty() && (drained.is_some() || s.idle_since.elapsed() >= idle_timeout)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in idle {
            let reason = match drained {
                Some("user") => {
                    self.env.printer.status(format!(
                        "stopping: tearing down idle worker {name} while the others finish"
                    ));
                    "user"
                }
                Some(reason) => {
                    self.env.printer.status(format!(
                        "the queue is drained; tearing down idle worker {name}"
                    ));
                    reason
                }
                None => {
                    self.env.printer.status(format!(
                        "idle for {}; tearing down worker {name}",
                        fmt_secs(idle_timeout)
                    ));
                    "idle"
                }
            };
            self.retire(st, &name, reason);
        }
    }

    /// Waits for a task to end (and settles it), a bring-up or teardown to report, the next
    /// poll, or a signal.
    async fn wait(&self, st: &mut RunState, stopping: bool) -> Result<(), OrchestratorError> {
        let settings = &self.env.settings;
        // The first idle worker's timeout ends the wait too.
        let wait = st
            .workers
            .values()
            .filter(|s| s.tasks.is_empty())
            .map(|s| settings.idle_timeout.saturating_sub(s.idle_since.elapsed()))
            // The end of a back-off, while it is ahead (one that has passed is no deadline).
            .chain(
                st.up_after
                    .filter(|t| *t > Instant::now())
                    .map(|t| t.saturating_duration_since(Instant::now())),
            )
            .fold(settings.poll_interval, Duration::min);
        tokio::select! {
            Some(done) = st.running.join_next() => {
                let report = done.map_err(OrchestratorError::TaskPanicked)?;
                self.task_ended(st, report).await?;
            }
            Some(up) = st.ups.join_next() => {
                let event = up.map_err(OrchestratorError::TaskPanicked)?;
                self.up_event(st, event).await?;
            }
            Some(down) = st.downs.join_next() => {
                let down = down.map_err(OrchestratorError::TaskPanicked)?;
                self.down_ended(st, down);
            }
            _ = tokio::time::sleep(wait) => {}
            // A webhook: the tracker is read at once, and the pull requests are watched too.
            _ = st.shutdown.wake.notified(), if !stopping => {
                st.watched = None;
            }
            _ = st.shutdown.stop_claiming.cancelled(), if !stopping => {
                if !st.placed.is_empty() {
                    self.env.printer.status(format!(
                        "stopping: no new tasks; waiting for {} running task(s) on {} worker(s) (signal again to abort them)",
                        st.placed.len(),
                        st.workers.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// A teardown beside the loop ended: its time goes into the summary; a failure is shown and
    /// makes the run exit 1 (the journal keeps the worker for `cwo down` / `cwo reap`).
    fn down_ended(&self, st: &mut RunState, (name, secs, result): Down) {
        st.summary.teardown_secs += secs;
        if let Err(e) = result {
            self.env.printer.warn(format!(
                "could not delete worker {name}; going on (it still counts against the fleet's cap), and the run will exit 1"
            ));
            st.undeleted += 1;
            st.deferred.push(e);
        }
    }

    /// A task ended: its time and outcome go into the summary; a worker it found gone is torn
    /// down (the next ball, this one included when it has tries left, gets another worker); a
    /// worker that takes no new task goes once its last task ended.
    async fn task_ended(
        &self,
        st: &mut RunState,
        report: TaskReport,
    ) -> Result<(), OrchestratorError> {
        let printer = self.env.printer;
        st.placed.remove(&report.id);
        st.aborts.remove(&report.id);
        st.summary.agent_secs += report.agent.as_secs_f64();
        st.summary.git_secs += report.git.as_secs_f64();
        let requeued =
            report.worker_gone && report.tries < self.env.settings.agent.max_attempts.get();
        if report.worker_gone {
            st.tries.insert(report.id.clone(), report.tries);
        }
        let s = &mut st.summary;
        match report.outcome {
            Outcome::Done { .. } => s.complete.push(report.id.clone()),
            Outcome::Failed(_) if requeued => s.requeued.push(report.id.clone()),
            Outcome::Blocked(_) | Outcome::Failed(_) => s.blocked.push(report.id.clone()),
            Outcome::Aborted => s.aborted.push(report.id.clone()),
        }
        let name = report.worker.clone();
        let Some(slot) = st.workers.get_mut(&name) else {
            return Ok(());
        };
        slot.tasks.remove(&report.id);
        if report.worker_gone {
            printer.warn(format!(
                "worker {name} is lost ({}); tearing it down, and another worker takes its tasks",
                report.outcome.reason().unwrap_or("gone")
            ));
            // Its other tasks find it gone too, and end.
            slot.closed = Some("lost");
        }
        if !slot.tasks.is_empty() {
            return Ok(());
        }
        slot.idle_since = Instant::now();
        if let Some(reason) = slot.closed {
            if reason == "fresh_per_task" {
                printer.status(format!("worker {name} had its task; deleting it"));
            }
            self.retire(st, &name, reason);
            return Ok(());
        }
        let n = name.clone();
        journaled(&self.env.journal, move |j| j.worker_activity(&n, None)).await?;
        Ok(())
    }

    /// Whatever happened, tasks are stopped and every worker goes away before returning (in
    /// parallel, each confirmed); bring-ups under way are stopped and what they made deleted;
    /// pending creates get their time to show up and go. Every failure is shown; the last one
    /// is the run's error (exit 1).
    async fn finish(
        &self,
        mut st: RunState,
        result: Result<(), OrchestratorError>,
    ) -> Result<RunSummary, OrchestratorError> {
        if result.is_err() && !st.running.is_empty() {
            st.shutdown.abort.cancel();
        }
        // No bring-up goes on: what they made is deleted by them, or below.
        st.up_stop.cancel();
        while let Some(done) = st.running.join_next().await {
            if let Ok(report) = done
                && report.outcome == Outcome::Aborted
            {
                st.summary.aborted.push(report.id);
            }
        }
        let reason = if st.shutdown.stop_claiming.is_cancelled() {
            "user"
        } else if result.is_err() {
            "error"
        } else {
            "idle"
        };
        let mut late = Vec::new();
        while let Some(up) = st.ups.join_next().await {
            match up {
                Ok(UpEvent::Created(_, Ok(created))) => {
                    for (name, made) in created {
                        match made {
                            Ok(_) => late.push(name),
                            Err(e) => st.deferred.push(e),
                        }
                    }
                }
                Ok(UpEvent::Ready {
                    name,
                    result: Ok(Some(w)),
                    ..
                }) => {
                    drop(w);
                    late.push(name);
                }
                Ok(UpEvent::Ready { result: Err(e), .. } | UpEvent::Created(_, Err(e))) => {
                    st.deferred.push(e)
                }
                Ok(UpEvent::Ready {
                    result: Ok(None), ..
                }) => {}
                // A bring-up that crashed may have left a worker: the journal has it (written
                // ahead) for `cwo down` and `cwo reap`, and the run says so.
                Err(e) => st.deferred.push(OrchestratorError::TaskPanicked(e)),
            }
        }
        let names: Vec<String> = std::mem::take(&mut st.workers)
            .into_keys()
            .chain(late)
            .collect();
        let downs = names.iter().map(|name| async move {
            let phase = self
                .env
                .printer
                .phase(format!("tearing down worker {name}"));
            let started = Instant::now();
            let down = self.workers.tear_down(name, reason).await;
            match &down {
                Ok(()) => phase.finish(format!("worker {name} deleted")),
                Err(_) => phase.finish(format!("teardown of {name} failed")),
            };
            (started.elapsed().as_secs_f64(), down)
        });
        for (secs, down) in futures::future::join_all(downs).await {
            st.summary.teardown_secs += secs;
            if let Err(e) = down {
                st.deferred.push(e);
            }
        }
        while let Some(down) = st.downs.join_next().await {
            match down {
                Ok(down) => self.down_ended(&mut st, down),
                Err(e) => st.deferred.push(OrchestratorError::TaskPanicked(e)),
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
