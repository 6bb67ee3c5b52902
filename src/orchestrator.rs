//! The run loop: tracker → worker → agent → git → journal → teardown.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, Outcome};
use crate::config::Settings;
use crate::error::CliError;
use crate::git::{self, WorkerCheckout};
use crate::journal::Journal;
use crate::printer::{Printer, fmt_secs};
use crate::project::{Project, slug};
use crate::provider::{Instance, Provider, WorkerSpec};
use crate::tracker::{Task, Tracker, TrackerError};
use crate::transport::{ExecRequest, Transport};

/// Deletion attempts before teardown gives up (with backoff 1, 2, 4 s).
const DELETE_TRIES: u32 = 4;

/// Signals from the outside: stop taking work; abort what runs.
#[derive(Clone, Default)]
pub struct Shutdown {
    pub stop_claiming: CancellationToken,
    pub abort: CancellationToken,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Drain the queue, tear down, exit.
    pub once: bool,
}

/// A worker that is up, with a way to reach it.
pub struct ActiveWorker {
    pub instance: Instance,
    pub transport: Arc<dyn Transport>,
}

/// What a run did, for the closing summary.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RunSummary {
    pub complete: Vec<String>,
    pub blocked: Vec<String>,
    pub aborted: Vec<String>,
    pub workers_created: u32,
    pub up_secs: f64,
    pub agent_secs: f64,
    pub git_secs: f64,
    pub teardown_secs: f64,
}

impl RunSummary {
    /// One line: what ran and where the time went.
    pub fn render(&self, total: Duration) -> String {
        let secs = |s: f64| fmt_secs(Duration::from_secs_f64(s));
        format!(
            "ran {} task(s): {} complete, {} blocked, {} aborted · worker up {} · agent {} · git {} · teardown {} · total {}",
            self.complete.len() + self.blocked.len() + self.aborted.len(),
            self.complete.len(),
            self.blocked.len(),
            self.aborted.len(),
            secs(self.up_secs),
            secs(self.agent_secs),
            secs(self.git_secs),
            secs(self.teardown_secs),
            fmt_secs(total),
        )
    }
}

/// Everything a task needs, shared with the spawned task futures.
struct Shared {
    root: PathBuf,
    state_dir: PathBuf,
    settings: Settings,
    template: String,
    tracker: Arc<dyn Tracker>,
    journal: Journal,
    printer: Printer,
}

pub struct Orchestrator {
    shared: Arc<Shared>,
    provider: Arc<dyn Provider>,
    project_slug: String,
}

struct TaskReport {
    id: String,
    outcome: Outcome,
    agent: Duration,
    git: Duration,
}

impl Orchestrator {
    pub fn new(project: &Project, printer: Printer) -> Result<Orchestrator, CliError> {
        let settings = project.settings().clone();
        let template = if settings.agent.prompt_template.is_empty() {
            agent::DEFAULT_TEMPLATE.to_string()
        } else {
            let path = project.root.join(&settings.agent.prompt_template);
            std::fs::read_to_string(&path).map_err(|e| {
                CliError::usage(format!("cannot read agent.prompt_template {}: {e}", path.display()))
                    .hint("set agent.prompt_template to a file relative to the project root, or \"\" for the built-in prompt")
            })?
        };
        Ok(Orchestrator {
            shared: Arc::new(Shared {
                root: project.root.clone(),
                state_dir: project.state_dir.clone(),
                settings,
                template,
                tracker: Arc::new(project.tracker()),
                journal: project.journal()?,
                printer,
            }),
            provider: project.provider(),
            project_slug: slug(&project.name),
        })
    }

    pub fn journal(&self) -> &Journal {
        &self.shared.journal
    }

    fn labels(&self, name: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cwo-managed".to_string(), "true".to_string()),
            ("cwo-project".to_string(), self.project_slug.clone()),
            ("cwo-worker".to_string(), name.to_string()),
        ])
    }

    /// Creates a worker: journal intent first, then the provider, then a prerequisite check.
    pub async fn bring_up(&self) -> Result<ActiveWorker, CliError> {
        let p = &self.shared.printer;
        let short = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let name = format!("cwo-{}-{short}", self.project_slug);
        let request_id = uuid::Uuid::new_v4().to_string();
        let labels = self.labels(&name);
        let spec = WorkerSpec {
            name: name.clone(),
            labels: labels.clone(),
            machine_type: "local".into(),
        };
        let phase = p.phase(format!(
            "bringing up worker {name} ({})",
            self.provider.kind()
        ));
        let j = &self.shared.journal;
        j.worker_intent(
            &name,
            self.provider.kind(),
            &spec.machine_type,
            &request_id,
            &serde_json::to_string(&labels).expect("labels serialize"),
        )?;
        tracing::debug!(%name, %request_id, provider = self.provider.kind(), "create");
        let created = async {
            self.provider.create(&spec, &request_id).await?;
            self.provider
                .wait_running(&name, Duration::from_secs(600))
                .await
        }
        .await;
        let instance = match created {
            Ok(i) => i,
            Err(e) => {
                let _ = self.tear_down(&name, "error").await;
                return Err(CliError::from_error(
                    format!("could not bring up worker {name}"),
                    &e,
                ));
            }
        };
        j.worker_ready(
            &name,
            instance.created_at,
            &serde_json::to_string(&instance).expect("instance serializes"),
        )?;
        let transport: Arc<dyn Transport> = Arc::from(
            self.provider
                .connect(&instance)
                .map_err(|e| CliError::from_error(format!("cannot reach worker {name}"), &e))?,
        );
        let git_ok = transport
            .capture(ExecRequest::new(["git", "--version"]))
            .await
            .map(|c| c.status.success())
            .unwrap_or(false);
        if !git_ok {
            let _ = self.tear_down(&name, "error").await;
            return Err(
                CliError::user(format!("worker {name} has no working `git`"))
                    .hint("install git where the worker runs (`cwo doctor` checks it)"),
            );
        }
        phase.finish(format!("worker {name} is up"));
        Ok(ActiveWorker {
            instance,
            transport,
        })
    }

    /// Deletes a worker and confirms it is gone, retrying; the journal records each step.
    pub async fn tear_down(&self, name: &str, reason: &str) -> Result<(), CliError> {
        let j = &self.shared.journal;
        j.worker_deleting(name, reason)?;
        tracing::debug!(%name, %reason, "delete");
        let mut last_err = None;
        for attempt in 0..DELETE_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
            }
            let result = async {
                self.provider.delete(name).await?;
                self.provider
                    .confirm_deleted(name, Duration::from_secs(300))
                    .await
            }
            .await;
            match result {
                Ok(()) => {
                    j.worker_deleted(name, reason)?;
                    return Ok(());
                }
                Err(e) => last_err = Some(e),
            }
        }
        let e = last_err.expect("at least one try");
        Err(CliError::from_error(
            format!("could not delete worker {name} after {DELETE_TRIES} tries"),
            &e,
        )
        .hint("run `cwo down` again; the journal still lists the worker"))
    }

    /// Reconciles the journal with the provider after a crash or a `cwo up`: workers the
    /// provider no longer has are closed; a ready worker is adopted when `adopt`, every other one
    /// is deleted.
    pub async fn recover(
        &self,
        adopt: bool,
        reason: &str,
    ) -> Result<Option<ActiveWorker>, CliError> {
        let j = &self.shared.journal;
        let closed = j.close_dangling_attempts()?;
        if closed > 0 {
            self.shared.printer.warn(format!(
                "{closed} attempt(s) were cut short by a controller that stopped"
            ));
        }
        let mut adopted = None;
        for row in j.live_workers()? {
            let found = self.provider.get(&row.name).await.map_err(|e| {
                CliError::from_error(format!("cannot look up worker {}", row.name), &e)
            })?;
            match found {
                None => {
                    j.worker_deleting(&row.name, "gone")?;
                    j.worker_deleted(&row.name, "gone")?;
                    self.shared.printer.status(format!(
                        "worker {} is already gone; journal updated",
                        row.name
                    ));
                }
                Some(instance) if adopt && adopted.is_none() && row.state == "ready" => {
                    let transport: Arc<dyn Transport> =
                        Arc::from(self.provider.connect(&instance).map_err(|e| {
                            CliError::from_error(format!("cannot reach worker {}", row.name), &e)
                        })?);
                    self.shared
                        .printer
                        .status(format!("adopting worker {}", row.name));
                    j.worker_activity(&row.name, None)?;
                    adopted = Some(ActiveWorker {
                        instance,
                        transport,
                    });
                }
                Some(_) => {
                    self.shared
                        .printer
                        .status(format!("deleting worker {}", row.name));
                    self.tear_down(&row.name, reason).await?;
                }
            }
        }
        Ok(adopted)
    }

    /// The loop. Returns after `--once` drained the queue or after a shutdown signal; the worker
    /// is always torn down before it returns.
    pub async fn run(&self, opts: RunOptions, shutdown: Shutdown) -> Result<RunSummary, CliError> {
        let sh = &self.shared;
        let settings = &sh.settings;
        let mut summary = RunSummary::default();
        let mut worker = self.recover(true, "orphaned").await?;
        let mut running: JoinSet<TaskReport> = JoinSet::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut idle_since = Instant::now();
        let concurrency = settings.concurrency.get();

        let result: Result<(), CliError> = async {
            loop {
                let stopping = shutdown.stop_claiming.is_cancelled();
                let mut ready_left = false;
                if !stopping {
                    let ready: Vec<Task> = sh
                        .tracker
                        .ready()?
                        .into_iter()
                        .filter(|t| !in_flight.contains(&t.id))
                        .collect();
                    ready_left = !ready.is_empty();
                    let free = concurrency.saturating_sub(in_flight.len());
                    if !ready.is_empty() && free > 0 {
                        if worker.is_none() {
                            let started = Instant::now();
                            worker = Some(self.bring_up().await?);
                            summary.workers_created += 1;
                            summary.up_secs += started.elapsed().as_secs_f64();
                        }
                        let w = worker.as_ref().expect("worker is up");
                        for task in ready.into_iter().take(free) {
                            // A ball removed or rewritten between the read and the claim is
                            // skipped, not fatal: the next poll sees the file as it is.
                            if let Err(e) = sh.tracker.claim(&task.id) {
                                if matches!(e, TrackerError::NotFound(_)) {
                                    sh.printer.warn(format!("{} vanished before it could be claimed", task.id));
                                    continue;
                                }
                                return Err(e.into());
                            }
                            sh.journal
                                .task_state(&task.id, &task.title, "in_progress", Some(&w.instance.name), None)?;
                            sh.journal.worker_activity(&w.instance.name, Some(&task.id))?;
                            in_flight.insert(task.id.clone());
                            sh.printer
                                .status(format!("▶ {} {}", task.id, one_line(&task.title)));
                            let ctx = TaskCtx {
                                shared: sh.clone(),
                                transport: w.transport.clone(),
                                worker: w.instance.name.clone(),
                                workspace: w.instance.workspace.clone(),
                                abort: shutdown.abort.clone(),
                            };
                            running.spawn(run_task(ctx, task));
                        }
                        continue;
                    }
                }
                if in_flight.is_empty() {
                    if stopping || (opts.once && !ready_left) {
                        return Ok(());
                    }
                    if let Some(w) = &worker
                        && idle_since.elapsed() >= settings.idle_timeout
                    {
                        sh.printer.status(format!(
                            "idle for {}; tearing down worker {}",
                            fmt_secs(settings.idle_timeout),
                            w.instance.name
                        ));
                        let started = Instant::now();
                        self.tear_down(&w.instance.name, "idle").await?;
                        summary.teardown_secs += started.elapsed().as_secs_f64();
                        worker = None;
                    }
                }
                let wait = if worker.is_some() && in_flight.is_empty() {
                    settings
                        .poll_interval
                        .min(settings.idle_timeout.saturating_sub(idle_since.elapsed()))
                } else {
                    settings.poll_interval
                };
                tokio::select! {
                    Some(done) = running.join_next() => {
                        let report = done.map_err(|e| CliError::user(format!("a task crashed inside cwo: {e}")))?;
                        in_flight.remove(&report.id);
                        summary.agent_secs += report.agent.as_secs_f64();
                        summary.git_secs += report.git.as_secs_f64();
                        match report.outcome {
                            Outcome::Done { .. } => summary.complete.push(report.id),
                            Outcome::Blocked(_) | Outcome::Failed(_) => summary.blocked.push(report.id),
                            Outcome::Aborted => summary.aborted.push(report.id),
                        }
                        if in_flight.is_empty() {
                            idle_since = Instant::now();
                            if let Some(w) = &worker {
                                sh.journal.worker_activity(&w.instance.name, None)?;
                            }
                        }
                    }
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.stop_claiming.cancelled(), if !stopping => {
                        if !in_flight.is_empty() {
                            sh.printer.status(format!(
                                "stopping: no new tasks; waiting for {} running task(s) (signal again to abort them)",
                                in_flight.len()
                            ));
                        }
                    }
                }
            }
        }
        .await;

        // Whatever happened, tasks are stopped and the worker goes away before returning.
        if result.is_err() && !running.is_empty() {
            shutdown.abort.cancel();
        }
        while let Some(done) = running.join_next().await {
            if let Ok(report) = done
                && report.outcome == Outcome::Aborted
            {
                summary.aborted.push(report.id);
            }
        }
        if let Some(w) = worker.take() {
            let reason = if shutdown.stop_claiming.is_cancelled() {
                "user"
            } else if result.is_err() {
                "error"
            } else {
                "idle"
            };
            let phase = sh
                .printer
                .phase(format!("tearing down worker {}", w.instance.name));
            let started = Instant::now();
            let down = self.tear_down(&w.instance.name, reason).await;
            summary.teardown_secs += started.elapsed().as_secs_f64();
            match down {
                Ok(()) => {
                    phase.finish(format!("worker {} deleted", w.instance.name));
                }
                Err(e) => {
                    phase.finish("teardown failed");
                    result?;
                    return Err(e);
                }
            }
        }
        result.map(|_| summary)
    }
}

fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > 72 {
        format!("{}…", line.chars().take(71).collect::<String>())
    } else {
        line.to_string()
    }
}

struct TaskCtx {
    shared: Arc<Shared>,
    transport: Arc<dyn Transport>,
    worker: String,
    workspace: String,
    abort: CancellationToken,
}

/// One ball, from claim to complete / blocked / pending, with retries.
async fn run_task(ctx: TaskCtx, task: Task) -> TaskReport {
    let sh = ctx.shared.clone();
    let mut report = TaskReport {
        id: task.id.clone(),
        outcome: Outcome::Aborted,
        agent: Duration::ZERO,
        git: Duration::ZERO,
    };
    let outcome = match drive_task(&ctx, &task, &mut report).await {
        Ok(o) => o,
        Err(reason) => Outcome::Blocked(reason),
    };
    let settle = match &outcome {
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
                        .progress(&task.id, &format!("cwo: {} blocked: {reason}", task.id))
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

/// Runs attempts until one decides the ball. `Err` = a reason to block the ball at once.
async fn drive_task(
    ctx: &TaskCtx,
    task: &Task,
    report: &mut TaskReport,
) -> Result<Outcome, String> {
    let sh = &ctx.shared;
    let settings = &sh.settings;
    let branch = format!("{}{}", settings.git.branch_prefix, task.id);
    let tmp = sh.state_dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let git_started = Instant::now();
    let bundle = tmp.join(format!("{}-input.bundle", task.id));
    let base = git::bundle_head(&sh.root, &bundle)
        .await
        .map_err(|e| format!("cannot bundle the project for the worker: {e}"))?;
    report.git += git_started.elapsed();
    let max = settings.agent.max_attempts.get();
    for attempt in 1..=max {
        if ctx.abort.is_cancelled() {
            return Ok(Outcome::Aborted);
        }
        // Attempts are numbered per ball across runs, so a restarted controller never reuses a
        // log file or a worker directory; `attempt` counts tries within this run.
        let seq = sh
            .journal
            .attempts(Some(&task.id))
            .map_err(|e| e.to_string())?
            .len() as u32
            + 1;
        let log_path = sh
            .state_dir
            .join("logs")
            .join(&task.id)
            .join(format!("attempt-{seq}.log"));
        let attempt_id = sh
            .journal
            .attempt_start(&task.id, seq, &ctx.worker, &log_path)
            .map_err(|e| e.to_string())?;
        let tries = Tries {
            seq,
            this_run: attempt,
        };
        let (outcome, exit, checkout) =
            match one_attempt(ctx, task, tries, &base, &bundle, &branch, &log_path, report).await {
                Ok(x) => x,
                Err(reason) => (Outcome::Failed(reason), "-".to_string(), None),
            };
        let mut commit = None;
        let final_outcome = match (&outcome, checkout) {
            (Outcome::Done { commits }, Some(co)) => {
                let started = Instant::now();
                let delivered = deliver(ctx, task, &co, seq, *commits).await;
                report.git += started.elapsed();
                match delivered {
                    Ok(sha) => {
                        commit = Some(sha);
                        outcome.clone()
                    }
                    Err(reason) => Outcome::Blocked(reason),
                }
            }
            _ => outcome.clone(),
        };
        let reason = match &final_outcome {
            Outcome::Blocked(r) | Outcome::Failed(r) => Some(r.as_str()),
            _ => None,
        };
        let _ = sh.journal.attempt_end(
            attempt_id,
            final_outcome.label(),
            &exit,
            Some(&branch),
            commit.as_deref(),
            reason,
        );
        match final_outcome {
            Outcome::Failed(reason) if attempt < max => {
                let wait = settings.agent.retry_backoff * 2u32.saturating_pow(attempt - 1);
                sh.printer.status(format!(
                    "↻ {} attempt {attempt}/{max} failed: {reason}; retrying in {}",
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
                    log_path.display()
                )));
            }
            other => return Ok(other),
        }
    }
    unreachable!("the last attempt always returns")
}

/// Which attempt this is: across runs (names files) and within this run (what the agent sees).
#[derive(Clone, Copy)]
struct Tries {
    seq: u32,
    this_run: u32,
}

/// Prepares the checkout, runs the agent once, and judges the result.
#[allow(clippy::too_many_arguments)]
async fn one_attempt(
    ctx: &TaskCtx,
    task: &Task,
    tries: Tries,
    base: &str,
    bundle: &Path,
    branch: &str,
    log_path: &Path,
    report: &mut TaskReport,
) -> Result<(Outcome, String, Option<WorkerCheckout>), String> {
    let sh = &ctx.shared;
    let settings = &sh.settings;
    let t = ctx.transport.as_ref();
    let dir = format!("{}/tasks/{}/attempt-{}", ctx.workspace, task.id, tries.seq);
    let started = Instant::now();
    let checkout = WorkerCheckout::prepare(
        t,
        dir.clone(),
        bundle,
        base,
        branch,
        (&settings.git.author_name, &settings.git.author_email),
    )
    .await
    .map_err(|e| format!("preparing the checkout on {}: {e}", ctx.worker))?;
    report.git += started.elapsed();

    let prompt = agent::render_prompt(&sh.template, task, branch);
    let local_prompt = sh
        .state_dir
        .join("tmp")
        .join(format!("{}-prompt.md", task.id));
    std::fs::write(&local_prompt, &prompt)
        .map_err(|e| format!("writing {}: {e}", local_prompt.display()))?;
    let prompt_file = format!("{dir}/prompt.md");
    t.upload(&local_prompt, &prompt_file)
        .await
        .map_err(|e| e.to_string())?;
    let argv = agent::build_argv(
        &settings.agent.command,
        &prompt,
        &prompt_file,
        &task.id,
        &checkout.repo,
    )?;

    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let mut log = std::fs::File::create(log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let mut env: Vec<(String, String)> = settings
        .agent
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("CWO_TASK_ID".into(), task.id.clone()));
    env.push(("CWO_PROMPT_FILE".into(), prompt_file.clone()));
    env.push(("CWO_BRANCH".into(), branch.to_string()));
    env.push(("CWO_ATTEMPT".into(), tries.this_run.to_string()));
    let req = ExecRequest {
        argv,
        cwd: Some(checkout.repo.clone()),
        env,
        timeout: Some(settings.agent.timeout),
        cancel: Some(ctx.abort.clone()),
    };
    let mut blocked: Option<String> = None;
    let printer = sh.printer;
    let id = task.id.clone();
    let agent_started = Instant::now();
    let status = t
        .exec(req, &mut |_, line| {
            let _ = writeln!(log, "{line}");
            printer.task_line(&id, line);
            if blocked.is_none() {
                blocked = agent::blocked_marker(line);
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    report.agent += agent_started.elapsed();
    let _ = writeln!(log, "[cwo] agent ended: {status}");
    let commits = if status == crate::transport::ExecStatus::Cancelled {
        0
    } else {
        checkout.new_commits(t).await.map_err(|e| e.to_string())?
    };
    let outcome = agent::judge(status, blocked, commits, settings.agent.timeout);
    Ok((outcome, status.to_string(), Some(checkout)))
}

/// Brings the task branch back and pushes it; completes the ball. Returns the commit.
async fn deliver(
    ctx: &TaskCtx,
    task: &Task,
    co: &WorkerCheckout,
    attempt: u32,
    commits: u64,
) -> Result<String, String> {
    let sh = &ctx.shared;
    let settings = &sh.settings;
    let local = sh
        .state_dir
        .join("tmp")
        .join(format!("{}-output.bundle", task.id));
    co.bring_back(ctx.transport.as_ref(), &local)
        .await
        .map_err(|e| format!("bringing the branch back from {}: {e}", ctx.worker))?;
    let sha = git::fetch_result(&sh.root, &local, &co.branch)
        .await
        .map_err(|e| format!("fetching the result: {e}"))?;
    let short = &sha[..12.min(sha.len())];
    let where_ = if settings.git.push {
        let remote = &settings.git.remote;
        if !git::has_remote(&sh.root, remote).await {
            return Err(format!(
                "the work is at refs/cwo/{} ({short}) but git remote `{remote}` does not exist; add it or set git.push = false",
                task.id
            ));
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
        "cwo: branch {} at {short} {where_} ({commits} commit(s), attempt {attempt})",
        co.branch
    );
    sh.tracker
        .complete(&task.id, &note)
        .and_then(|_| sh.tracker.progress(&task.id, &note))
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
