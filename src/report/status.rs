//! `cwo status`: the journal's workers reconciled with the provider's list, and the tasks.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::table::Table;
use super::{Report, SCHEMA_VERSION};
use crate::error::CommandError;
use crate::journal::{ControllerLock, PullRequestRow, WorkerRow};
use crate::model::ids::slug;
use crate::printer::{Printer, fmt_secs};
use crate::project::Project;
use crate::provider::Instance;
use crate::tracker::Task;

/// One worker as the journal and the cloud see it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WorkerStatus {
    pub(crate) name: String,
    pub(crate) provider: String,
    /// The journal's state, or "unjournaled" for a labelled VM the journal does not know.
    pub(crate) state: String,
    /// What the provider's list says: present, missing (deleted outside cwo?) or unknown.
    pub(crate) cloud: String,
    /// The cloud zone, where there is one.
    pub(crate) zone: Option<String>,
    pub(crate) created_at: Option<DateTime<Utc>>,
    pub(crate) uptime_secs: Option<i64>,
    pub(crate) current_task: Option<String>,
    /// Every task with an attempt running on it (a worker takes `workers.tasks_per_worker`).
    pub(crate) tasks: Vec<String>,
    /// The list price per hour (machine, disk, address) taken at launch, as `cwo cost` prices
    /// the worker (local and ssh workers as the gcp settings would cost); None when unknown.
    pub(crate) hourly_usd: Option<f64>,
    /// Only while a controller runs to act on it.
    pub(crate) idle_teardown_in_secs: Option<i64>,
}

/// How many tasks are in each state, in the order they are shown.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TaskCounts {
    pub(crate) in_progress: usize,
    pub(crate) pending: usize,
    pub(crate) blocked: usize,
    pub(crate) complete: usize,
    pub(crate) researched: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct TaskStatus {
    pub(crate) counts: TaskCounts,
    pub(crate) ready: Vec<String>,
    pub(crate) balls: Vec<Task>,
}

/// An attempt running now, with what its agent has reported using so far.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunningAttempt {
    pub(crate) task: String,
    pub(crate) worker: String,
    pub(crate) attempt: i64,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) reasoning_tokens: u64,
    pub(crate) cache_read_tokens: u64,
    pub(crate) cache_write_tokens: u64,
    /// None: the agent has reported no usage (yet), or a step came without a cost.
    pub(crate) llm_usd: Option<f64>,
    /// E.g. that the soft timeout passed.
    pub(crate) warning: Option<String>,
}

/// A pull request cwo opened that is still open on the forge, as the loop last saw it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PullRequestStatus {
    pub(crate) task: String,
    pub(crate) number: u64,
    pub(crate) url: String,
    /// "open" (watched) or "blocked" (feedback rounds spent: left for a human).
    pub(crate) state: String,
    /// The last review from someone else: approved | changes_requested | commented | "".
    pub(crate) review: String,
    /// The head commit's checks and statuses: success | failure | pending | "" (none).
    pub(crate) checks: String,
    pub(crate) feedback_rounds: u32,
    pub(crate) max_feedback_rounds: u32,
    /// When the loop last read it (review and checks are as of then).
    pub(crate) seen_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StatusReport {
    pub(crate) schema_version: u32,
    pub(crate) project: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) controller_pid: Option<String>,
    pub(crate) workers: Vec<WorkerStatus>,
    /// The summed list price per hour of the workers with a known price.
    pub(crate) fleet_hourly_usd: f64,
    /// Workers whose price is unknown (not in the catalog), left out of the sum.
    pub(crate) unpriced_workers: usize,
    /// Why the provider's list failed (the workers are then the journal's only).
    pub(crate) provider_list_error: Option<String>,
    /// Why the tracker could not be read (the tasks are then empty).
    pub(crate) tracker_error: Option<String>,
    pub(crate) tasks: TaskStatus,
    /// The attempts running now.
    pub(crate) running: Vec<RunningAttempt>,
    pub(crate) pull_requests: Vec<PullRequestStatus>,
}

/// Gathers the status. A stopped worker is never shown as ready: it is deleted here and now (its
/// TTL no longer runs, its disk is billed); that is said on stderr.
pub(crate) async fn collect(
    project: &Project,
    printer: Printer,
) -> Result<StatusReport, CommandError> {
    let journal = project.journal()?;
    let now = Utc::now();
    let controller = ControllerLock::holder(&project.state_dir);
    // The cloud's truth next to the journal's: this project's labelled workers, as the provider
    // lists them. A failed list is reported, never read as "none".
    let provider = project.provider(&journal);
    let project_slug = slug(&project.name);
    let selector = crate::model::project_selector(&project_slug);
    let (mut listed, list_error) = match provider.list(&selector).await {
        Ok(l) => (Some(l), None),
        Err(e) => (None, Some(e.one_line())),
    };
    if let Some(l) = &mut listed {
        let on_retry = |line: String| printer.status(line);
        let reaper = crate::orchestrator::reaper::Reaper::new(
            provider.as_ref(),
            &journal,
            &project_slug,
            project.settings(),
            controller.is_some(),
            &on_retry,
        );
        let (deleted, failed) = reaper.delete_stopped(l).await;
        crate::orchestrator::report_stopped(printer, &deleted, &failed);
        l.retain(|i| !deleted.contains(&i.name));
    }
    let idle_timeout = project.settings().idle_timeout.as_secs() as i64;
    let mut workers = reconcile(
        &journal.live_workers()?,
        listed.as_deref(),
        provider.kind(),
        controller.is_some(),
        idle_timeout,
        now,
    );
    let usages = journal.usages(None)?;
    let mut running = Vec::new();
    for attempt in journal.dangling_attempts()? {
        let (usage, warning) = usages.get(&attempt.id).cloned().unwrap_or_default();
        running.push(RunningAttempt {
            task: attempt.ball_id.clone(),
            worker: attempt.worker.clone(),
            attempt: attempt.attempt,
            started_at: attempt.started_at,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            reasoning_tokens: usage.reasoning_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            llm_usd: usage.cost_usd(),
            warning,
        });
        if let Some(w) = workers.iter_mut().find(|w| w.name == attempt.worker) {
            w.tasks.push(attempt.ball_id);
        }
    }
    let (balls, tracker_error) = match tasks(project, printer).await {
        Ok(b) => (b, None),
        Err(e) => (vec![], Some(e)),
    };
    let max = project.settings().github.max_feedback_rounds;
    let pull_requests = journal
        .pull_requests(false)?
        .into_iter()
        .filter(|r| r.state == "open" || r.state == "blocked")
        .map(|r| pull_request_status(r, max))
        .collect();
    let fleet_hourly_usd = workers.iter().filter_map(|w| w.hourly_usd).sum();
    let unpriced_workers = journal
        .live_workers()?
        .iter()
        .filter(|w| w.price.as_ref().is_some_and(|p| p.hourly.is_none()))
        .count();
    Ok(StatusReport {
        schema_version: SCHEMA_VERSION,
        project: project.root.clone(),
        state_dir: project.state_dir.clone(),
        controller_pid: controller,
        workers,
        fleet_hourly_usd,
        unpriced_workers,
        provider_list_error: list_error,
        tracker_error,
        tasks: task_status(balls),
        running,
        pull_requests,
    })
}

/// The configured tracker's tasks (`github` reads the repository's issues: an unreachable
/// GitHub is reported, not fatal, so `status` still shows the workers).
async fn tasks(project: &Project, printer: Printer) -> Result<Vec<Task>, String> {
    // Only the GitHub tracker needs the client: a local tracker is read without credentials.
    let github = if project.settings().tracker.kind == crate::config::TrackerKind::Github {
        project.github(printer).await.map_err(|e| e.to_string())?
    } else {
        None
    };
    let tracker = project
        .task_source(github.as_ref())
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || tracker.list())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

fn pull_request_status(r: PullRequestRow, max_feedback_rounds: u32) -> PullRequestStatus {
    PullRequestStatus {
        task: r.ball_id,
        number: r.number,
        url: r.url,
        state: r.state,
        review: r.review_state,
        checks: r.check_state,
        feedback_rounds: r.rounds,
        max_feedback_rounds,
        seen_at: r.updated_at,
    }
}

/// The journal's live workers, each with what the provider's list (`None`: it failed) says of
/// it, then the listed workers the journal does not know.
pub(crate) fn reconcile(
    journaled: &[WorkerRow],
    listed: Option<&[Instance]>,
    provider_kind: &str,
    controller_running: bool,
    idle_timeout_secs: i64,
    now: DateTime<Utc>,
) -> Vec<WorkerStatus> {
    let mut workers: Vec<WorkerStatus> = journaled
        .iter()
        .map(|w| {
            // The provider's own word only: local and ssh workers are priced as the gcp
            // settings would be, but they have no zone.
            let zone = listed
                .and_then(|l| l.iter().find(|i| i.name == w.name))
                .and_then(|i| i.zone.clone());
            let cloud = match listed {
                None => "unknown",
                Some(l) if l.iter().any(|i| i.name == w.name) => "present",
                Some(_) => "missing (deleted outside cwo? `cwo down` records it)",
            };
            WorkerStatus {
                name: w.name.clone(),
                provider: w.provider.clone(),
                state: w.state.to_string(),
                cloud: cloud.into(),
                zone,
                created_at: w.created_at,
                uptime_secs: w.created_at.map(|c| (now - c).num_seconds().max(0)),
                current_task: w.current_task.clone(),
                tasks: vec![],
                hourly_usd: w
                    .price
                    .as_ref()
                    .and_then(|p| p.hourly.as_ref())
                    .map(|h| h.total()),
                // The countdown only runs while a controller is there to act on it.
                idle_teardown_in_secs: w
                    .idle_since
                    .filter(|_| controller_running)
                    .map(|since| (idle_timeout_secs - (now - since).num_seconds()).max(0)),
            }
        })
        .collect();
    for inst in listed.unwrap_or_default() {
        if journaled.iter().any(|w| w.name == inst.name) {
            continue;
        }
        workers.push(WorkerStatus {
            name: inst.name.clone(),
            provider: provider_kind.to_string(),
            state: "unjournaled".into(),
            cloud: "present (unknown to the journal: `cwo reap` deletes it)".into(),
            zone: inst.zone.clone(),
            created_at: Some(inst.created_at),
            uptime_secs: Some((now - inst.created_at).num_seconds().max(0)),
            current_task: None,
            tasks: vec![],
            hourly_usd: None,
            idle_teardown_in_secs: None,
        });
    }
    workers
}

fn task_status(balls: Vec<Task>) -> TaskStatus {
    let count = |s: &str| balls.iter().filter(|t| t.state == s).count();
    TaskStatus {
        counts: TaskCounts {
            in_progress: count("in_progress"),
            pending: count("pending"),
            blocked: count("blocked"),
            complete: count("complete"),
            researched: count("researched"),
        },
        ready: balls
            .iter()
            .filter(|t| t.is_ready())
            .map(|t| t.id.clone())
            .collect(),
        balls,
    }
}

fn secs_cell(secs: Option<i64>) -> String {
    secs.map(|s| fmt_secs(std::time::Duration::from_secs(s as u64)))
        .unwrap_or_else(|| "-".into())
}

impl Report for StatusReport {
    fn text(&self) -> String {
        let mut out = match &self.controller_pid {
            Some(pid) => format!("controller: running (pid {pid})\n"),
            None => "controller: not running\n".to_string(),
        };
        if self.workers.is_empty() {
            out.push_str("workers: none\n");
        } else {
            let mut t = Table::new(&[
                "worker",
                "provider",
                "zone",
                "state",
                "uptime",
                "task",
                "idle teardown in",
                "$/h",
                "cloud",
            ]);
            for w in &self.workers {
                t.row(vec![
                    w.name.clone(),
                    w.provider.clone(),
                    w.zone.clone().unwrap_or_else(|| "-".into()),
                    w.state.clone(),
                    secs_cell(w.uptime_secs),
                    match (w.tasks.as_slice(), &w.current_task) {
                        ([], Some(t)) => t.clone(),
                        ([], None) => "-".into(),
                        (tasks, _) => tasks.join(","),
                    },
                    secs_cell(w.idle_teardown_in_secs),
                    w.hourly_usd
                        .map(|h| format!("{h:.4}"))
                        .unwrap_or_else(|| "-".into()),
                    w.cloud.clone(),
                ]);
            }
            out.push_str(&t.render());
            if self.fleet_hourly_usd > 0.0 || self.unpriced_workers > 0 {
                out.push_str(&format!(
                    "fleet: {} worker(s), ${:.4}/h list price{}\n",
                    self.workers.len(),
                    self.fleet_hourly_usd,
                    match self.unpriced_workers {
                        0 => String::new(),
                        n => format!(" ({n} with no catalog price, not counted)"),
                    }
                ));
            }
        }
        let c = &self.tasks.counts;
        out.push_str(&format!(
            "tasks: {} in_progress, {} pending, {} blocked, {} complete, {} researched ({} ready)\n",
            c.in_progress,
            c.pending,
            c.blocked,
            c.complete,
            c.researched,
            self.tasks.ready.len()
        ));
        if !self.running.is_empty() {
            let mut t = Table::new(&[
                "running",
                "worker",
                "attempt",
                "for",
                "llm tokens",
                "llm $",
                "warning",
            ]);
            let now = Utc::now();
            for r in &self.running {
                let tokens = r.input_tokens
                    + r.output_tokens
                    + r.reasoning_tokens
                    + r.cache_read_tokens
                    + r.cache_write_tokens;
                t.row(vec![
                    r.task.clone(),
                    r.worker.clone(),
                    r.attempt.to_string(),
                    secs_cell(Some((now - r.started_at).num_seconds().max(0))),
                    tokens.to_string(),
                    r.llm_usd
                        .map(|c| format!("{c:.4}"))
                        .unwrap_or_else(|| "unknown".into()),
                    r.warning.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            out.push_str(&t.render());
        }
        if !self.pull_requests.is_empty() {
            let mut t = Table::new(&[
                "pull request",
                "task",
                "state",
                "review",
                "checks",
                "rounds",
                "url",
            ]);
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_string()
                } else {
                    s.replace('_', " ")
                }
            };
            for p in &self.pull_requests {
                t.row(vec![
                    format!("#{}", p.number),
                    p.task.clone(),
                    p.state.clone(),
                    dash(&p.review),
                    dash(&p.checks),
                    format!("{}/{}", p.feedback_rounds, p.max_feedback_rounds),
                    p.url.clone(),
                ]);
            }
            out.push_str(&t.render());
        }
        out
    }
}
