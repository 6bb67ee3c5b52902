//! The run loop: tracker → worker → agent → git → journal → teardown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod task;

use task::{TaskCtx, TaskReport};

use crate::agent::{self, Outcome};
use crate::bootstrap::{self, Method};
use crate::config::Settings;
use crate::error::CliError;
use crate::journal::{AttemptRow, Journal};
use crate::printer::{Printer, fmt_secs};
use crate::project::{Project, slug};
use crate::provider::{Instance, Provider, WorkerSpec};
use crate::tracker::{Task, Tracker, TrackerError};
use crate::transport::{ExecRequest, Transport};

/// Checks a worker has git, setsid and the agent's program (printing what is missing), and
/// makes its workspace.
const PREREQS: &str = r#"mkdir -p "$2" || exit 1
missing=""
for p in git setsid "$1"; do command -v "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
echo "not found on PATH:$missing"; exit 1
"#;

/// Consecutive failed bring-ups a polling controller sits out before it gives up.
const MAX_UP_FAILURES: u32 = 5;

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
    /// Touches the worker's heartbeat file while this controller holds the worker, so the VM's
    /// idle watchdog leaves it alone; stops when the worker is dropped.
    heartbeat: Option<tokio::task::AbortHandle>,
}

/// How often the controller touches a bootstrapped worker's heartbeat file.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);

impl ActiveWorker {
    /// `fed`: the worker was bootstrapped, so it has a watchdog to keep fed. The journal's
    /// heartbeat (what the reaper reads to tell a held worker from an orphan) beats for every
    /// worker.
    fn new(
        instance: Instance,
        transport: Arc<dyn Transport>,
        fed: bool,
        journal: Journal,
    ) -> ActiveWorker {
        let t = transport.clone();
        let name = instance.name.clone();
        let heartbeat = Some(
            tokio::spawn(async move {
                loop {
                    if let Err(e) = journal.worker_heartbeat(&name) {
                        tracing::debug!(worker = %name, error = %e, "journal heartbeat not written");
                    }
                    if fed {
                        let touch = ExecRequest::new([
                            "sh",
                            "-c",
                            "[ ! -d \"${1%/*}\" ] || touch \"$1\"",
                            "cwo-heartbeat",
                            bootstrap::HEARTBEAT,
                        ]);
                        if let Err(e) = t.capture(touch).await {
                            tracing::debug!(worker = t.worker(), error = %e, "heartbeat not delivered");
                        }
                    }
                    tokio::time::sleep(HEARTBEAT_EVERY).await;
                }
            })
            .abort_handle(),
        );
        ActiveWorker {
            instance,
            transport,
            heartbeat,
        }
    }
}

impl Drop for ActiveWorker {
    fn drop(&mut self) {
        if let Some(h) = &self.heartbeat {
            h.abort();
        }
    }
}

/// What `recover` found: a worker to keep using and attempts still running on it.
pub struct Recovered {
    pub worker: Option<ActiveWorker>,
    pub resume: Vec<AttemptRow>,
    /// Creates a stopped controller had sent whose VMs are not visible yet.
    pub pending: Vec<PendingCreate>,
}

/// Why a worker takes no new task.
enum Unfit {
    /// Stopped or stopping: it can do no work.
    Stopped(String),
    /// Too close to its TTL for another attempt.
    Ttl(String),
}

/// A create whose controller stopped before it answered, and whose VM the provider does not
/// show yet (a create in flight, or eventual consistency): deleted as soon as it appears.
pub struct PendingCreate {
    pub name: String,
    pub intent_at: chrono::DateTime<chrono::Utc>,
}

/// How long a command that found pending creates waits for them before it exits: a create in
/// flight answers, and a new VM shows up in reads, within seconds.
pub const PENDING_WAIT: Duration = Duration::from_secs(30);

/// What a run did, for the closing summary.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RunSummary {
    pub complete: Vec<String>,
    pub blocked: Vec<String>,
    pub aborted: Vec<String>,
    /// Balls whose worker went away mid-task and that went back to the queue.
    pub requeued: Vec<String>,
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
pub(crate) struct Shared {
    /// `agent.env` with secret references resolved, and the masker for their values; set
    /// once at the start of a run.
    agent_env: tokio::sync::OnceCell<(Vec<(String, String)>, crate::secrets::Masker)>,
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
    connector: crate::connector::Connector,
    project_slug: String,
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
        let journal = project.journal()?;
        Ok(Orchestrator {
            provider: project.provider(&journal),
            connector: project.connector(&journal),
            shared: Arc::new(Shared {
                agent_env: tokio::sync::OnceCell::new(),
                root: project.root.clone(),
                state_dir: project.state_dir.clone(),
                settings,
                template,
                tracker: Arc::new(project.tracker()),
                journal,
                printer,
            }),
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
            (
                "cwo-machine".to_string(),
                self.shared.settings.gcp.machine_type.clone(),
            ),
        ])
    }

    /// What this worker costs per hour, at launch: the configured machine type in the worker's
    /// zone (the first configured zone for providers without one: what the same work would have
    /// cost on GCE).
    fn price_snapshot(&self, zone: Option<&str>) -> crate::cost::PriceSnapshot {
        let g = &self.shared.settings.gcp;
        let zone = zone
            .map(str::to_string)
            .or_else(|| g.zones.first().cloned())
            .unwrap_or_default();
        let catalog = crate::cost::Catalog::load().unwrap_or_else(|e| {
            self.shared
                .printer
                .warn(format!("price catalog: {e}; using the built-in prices"));
            crate::cost::Catalog::embedded()
        });
        crate::cost::PriceSnapshot::take(
            &catalog,
            &g.machine_type,
            &zone,
            g.spot,
            &g.disk_type,
            g.disk_size_gb,
        )
    }

    /// Creates a worker: journal intent first, then the provider, then a prerequisite check.
    /// `stop` cancelled (a signal) between the phases tears the new worker down again: a create
    /// already sent is waited for, never abandoned, so the journal can always account for it.
    /// `Ok(None)`: stopped (before anything was created, or the new worker is deleted again).
    pub async fn bring_up(
        &self,
        stop: &CancellationToken,
    ) -> Result<Option<ActiveWorker>, CliError> {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let p = &self.shared.printer;
        let short = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let name = format!("cwo-{}-{short}", self.project_slug);
        let request_id = uuid::Uuid::new_v4().to_string();
        let labels = self.labels(&name);
        let spec = WorkerSpec {
            name: name.clone(),
            labels: labels.clone(),
            // What the work is priced as: the configured machine type, even on the local
            // provider (what the same work would have cost).
            machine_type: self.shared.settings.gcp.machine_type.clone(),
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
                return Err(self
                    .abandon(
                        &name,
                        CliError::from_error(format!("could not bring up worker {name}"), &e),
                    )
                    .await);
            }
        };
        let stopped = || async {
            p.status(format!(
                "stopping: tearing down worker {name}, which was coming up"
            ));
            self.tear_down(&name, "user").await.map(|()| None)
        };
        if stop.is_cancelled() {
            return stopped().await;
        }
        let login_view = instance.clone();
        j.worker_created(
            &name,
            instance.created_at,
            &serde_json::to_string(&instance).expect("instance serializes"),
        )?;
        j.worker_price(&name, &self.price_snapshot(instance.zone.as_deref()))?;
        let login: Arc<dyn Transport> = Arc::from(
            self.connector
                .connect(&instance)
                .map_err(|e| CliError::from_error(format!("cannot reach worker {name}"), &e))?,
        );
        let (instance, transport) = match self.bootstrap(&instance, login).await {
            Ok(pair) => pair,
            Err(problem) => return Err(self.abandon(&name, problem).await),
        };
        // Reachability (for SSH: banner, key, pinned host key) and prerequisites in one call.
        let program = &self.shared.settings.agent.command[0];
        let check = transport
            .capture(ExecRequest::new([
                "sh",
                "-c",
                PREREQS,
                "cwo-prereqs",
                program.as_str(),
                instance.workspace.as_str(),
            ]))
            .await;
        let problem = match check {
            Err(e) => Some(
                CliError::from_error(format!("cannot reach worker {name}"), &e).hint(
                    "check the address, the key and the network; `cwo doctor` checks the settings",
                ),
            ),
            Ok(out) if !out.status.success() => Some(
                CliError::user(format!(
                    "worker {name} is missing what the agent needs: {}",
                    out.stdout.trim()
                ))
                .hint("install it there, or change agent.command (`cwo doctor` checks both)"),
            ),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            return Err(self.abandon(&name, problem).await);
        }
        if stop.is_cancelled() {
            return stopped().await;
        }
        // Only now may a later controller adopt it (the login's view is what the journal keeps:
        // adoption derives the work user's view again).
        j.worker_ready(
            &name,
            instance.created_at,
            &serde_json::to_string(&login_view).expect("instance serializes"),
        )?;
        phase.finish(format!("worker {name} is up"));
        Ok(Some(ActiveWorker::new(
            instance,
            transport,
            self.bootstrapped(),
            j.clone(),
        )))
    }

    /// Tears down a worker whose bring-up failed; the bring-up's error says so if that failed
    /// too, with the teardown's own hints (the exact delete command).
    async fn abandon(&self, name: &str, problem: CliError) -> CliError {
        match self.tear_down(name, "error").await {
            Ok(()) => problem,
            Err(down) => {
                let mut problem = problem.hint(format!(
                    "and worker {name} could not be deleted: {}",
                    down.message
                ));
                problem.hints.extend(down.hints);
                problem
            }
        }
    }

    fn bootstrapped(&self) -> bool {
        bootstrap::effective_method(&self.shared.settings) != Method::None
    }

    /// Makes a fresh worker ready (the configured bootstrap method) over the login connection,
    /// and returns the worker as the agent's work sees it, with a connection as the work user.
    async fn bootstrap(
        &self,
        instance: &Instance,
        login: Arc<dyn Transport>,
    ) -> Result<(Instance, Arc<dyn Transport>), CliError> {
        let settings = &self.shared.settings;
        let p = &self.shared.printer;
        let method = bootstrap::effective_method(settings);
        let name = &instance.name;
        let fail = |e: &(dyn std::error::Error + 'static)| {
            CliError::from_error(format!("could not bootstrap worker {name}"), e).hint(
                "`cwo bootstrap script` prints the script to run by hand; bootstrap.method = \"none\" skips it",
            )
        };
        if method != Method::None
            && let crate::provider::Target::Ssh { host, .. } = &instance.target
            && bootstrap::is_this_machine(host)
        {
            return Err(CliError::user(format!(
                "refusing to bootstrap worker {name}: its address {host} is this machine, and the bootstrap would add swap, harden sshd and install a watchdog that powers it off"
            ))
            .hint("set bootstrap.method = \"none\" for hosts on this machine (emulators, tests)"));
        }
        match method {
            Method::None => return Ok((instance.clone(), login)),
            Method::Native => {
                let login_user = match &instance.target {
                    crate::provider::Target::Ssh { user, .. } => user.as_str(),
                    crate::provider::Target::Local { .. } => "",
                };
                // A GCE VM booted with this very script (startup-script / user-data): cwo's
                // run waits for that one and checks it.
                let gce = self.provider.boots_with_startup_script();
                let script = bootstrap::render(settings, &bootstrap::Target { login_user, gce });
                p.status(format!("bootstrapping worker {name} (native)"));
                let report = bootstrap::run_native(&*login, &script, gce, &mut |step| {
                    p.status(bootstrap::step_line(step));
                })
                .await
                .map_err(|e| fail(&e))?;
                if let Some(printed) = &report.host_key
                    && let Err(problem) = self.connector.check_host_key(instance, printed)
                {
                    return Err(CliError::user(format!("worker {name}: {problem}")).hint(
                        "the worker is torn down; check the network path to it before trying again",
                    ));
                }
                p.status(format!(
                    "bootstrap: {} step(s) changed, {} in {}{}",
                    report.changed(),
                    report.steps.len(),
                    fmt_secs(report.elapsed),
                    if report.reused { " (done at boot)" } else { "" }
                ));
            }
            Method::Ansible => {
                // One authenticated round trip pins the host key Ansible is then held to.
                login
                    .check(ExecRequest::new(["true"]))
                    .await
                    .map_err(|e| CliError::from_error(format!("cannot reach worker {name}"), &e))?;
                p.status(format!("bootstrapping worker {name} (ansible)"));
                let host_key = self
                    .connector
                    .host_key(instance)
                    .map_err(|e| CliError::from_error(format!("cannot reach worker {name}"), &e))?;
                bootstrap::ansible::run(
                    settings,
                    host_key.as_deref(),
                    &self.shared.state_dir,
                    instance,
                    &mut |line| p.status(format!("  {line}")),
                )
                .await
                .map_err(|e| fail(&e))?;
            }
            Method::Auto => unreachable!("effective_method resolves auto"),
        }
        let work = bootstrap::as_work_user(settings, instance.clone());
        let transport: Arc<dyn Transport> = Arc::from(
            self.connector
                .connect(&work)
                .map_err(|e| CliError::from_error(format!("cannot reach worker {name}"), &e))?,
        );
        Ok((work, transport))
    }

    /// Deletes a worker and confirms it is gone under the one deletion retry policy (progress on
    /// stderr, `teardown_timeout` overall); the journal records each step. Giving up names the
    /// exact command that deletes the worker by hand.
    pub async fn tear_down(&self, name: &str, reason: &str) -> Result<(), CliError> {
        let j = &self.shared.journal;
        j.worker_deleting(name, reason)?;
        tracing::debug!(%name, %reason, "delete");
        let deadline = self.shared.settings.teardown_timeout;
        let printer = self.shared.printer;
        let result =
            crate::provider::delete_confirmed(&*self.provider, name, deadline, &mut |line| {
                printer.status(line)
            })
            .await;
        match result {
            Ok(_) => {
                j.worker_deleted(name, reason)?;
                Ok(())
            }
            Err(e) => {
                let mut err = CliError::from_error(
                    format!(
                        "could not delete worker {name} (gave up after {}, teardown_timeout)",
                        fmt_secs(deadline)
                    ),
                    &e,
                )
                .hint("run `cwo down` again; the journal still lists the worker");
                if let Some(cmd) = self.provider.manual_delete_hint(name) {
                    err = err.hint(format!("or delete it yourself: {cmd}"));
                }
                Err(err)
            }
        }
    }

    /// Reconciles the journal with the provider after a crash or a `cwo up`: workers the
    /// provider no longer has are closed; a ready worker is adopted when `adopt`, every other one
    /// is deleted. Attempts a stopped controller left open are returned for reattaching when
    /// their worker was adopted, and closed as aborted otherwise.
    pub async fn recover(&self, adopt: bool, reason: &str) -> Result<Recovered, CliError> {
        let j = &self.shared.journal;
        self.delete_stopped().await;
        let mut adopted: Option<ActiveWorker> = None;
        let mut pending = Vec::new();
        for row in j.live_workers()? {
            let found = self.provider.get(&row.name).await.map_err(|e| {
                CliError::from_error(format!("cannot look up worker {}", row.name), &e)
            })?;
            match found {
                // A create that never answered may still be invisible (eventual consistency):
                // the row stays until the grace period says it never happened; meanwhile the
                // reaper finds the VM by its labels if it does appear.
                None if row.state == "intent"
                    && (chrono::Utc::now() - row.intent_at)
                        .to_std()
                        .unwrap_or_default()
                        < self.shared.settings.reap_grace =>
                {
                    self.shared.printer.status(format!(
                        "worker {} was being created when its controller stopped and is not visible yet; deleting it if it appears",
                        row.name
                    ));
                    pending.push(PendingCreate {
                        name: row.name.clone(),
                        intent_at: row.intent_at,
                    });
                }
                None => {
                    j.worker_deleting(&row.name, "gone")?;
                    j.worker_deleted(&row.name, "gone")?;
                    self.shared.printer.status(format!(
                        "worker {} is already gone; journal updated",
                        row.name
                    ));
                }
                // Only a running worker is adopted: a stopped one can do no work (and is
                // deleted below, like every worker not adopted).
                Some(instance)
                    if adopt
                        && adopted.is_none()
                        && row.state == "ready"
                        && instance.status == crate::provider::InstanceStatus::Running =>
                {
                    let instance = bootstrap::as_work_user(&self.shared.settings, instance);
                    let transport: Arc<dyn Transport> =
                        Arc::from(self.connector.connect(&instance).map_err(|e| {
                            CliError::from_error(format!("cannot reach worker {}", row.name), &e)
                        })?);
                    self.shared
                        .printer
                        .status(format!("adopting worker {}", row.name));
                    j.worker_activity(&row.name, None)?;
                    adopted = Some(ActiveWorker::new(
                        instance,
                        transport,
                        self.bootstrapped(),
                        j.clone(),
                    ));
                }
                Some(instance) => {
                    let why = if instance.status.is_stopped() {
                        "stopped"
                    } else {
                        reason
                    };
                    self.shared
                        .printer
                        .status(format!("deleting worker {} ({why})", row.name));
                    self.tear_down(&row.name, why).await?;
                }
            }
        }
        let mut resume = Vec::new();
        for attempt in j.dangling_attempts()? {
            if adopted
                .as_ref()
                .is_some_and(|w| w.instance.name == attempt.worker)
            {
                resume.push(attempt);
            } else {
                self.shared.printer.warn(format!(
                    "attempt {} of {} was cut short: its controller stopped and worker {} is gone",
                    attempt.attempt, attempt.ball_id, attempt.worker
                ));
                j.attempt_end(
                    attempt.id,
                    "aborted",
                    "-",
                    attempt.branch.as_deref(),
                    None,
                    Some("controller stopped; worker gone"),
                )?;
            }
        }
        Ok(Recovered {
            worker: adopted,
            resume,
            pending,
        })
    }

    /// Deletes this project's stopped workers, journaled or not (the reaper's rule, applied by
    /// every command that looks at the project's workers). A failed list is only a warning here:
    /// `cwo reap` and the next command try again.
    async fn delete_stopped(&self) {
        let printer = self.shared.printer;
        let on_retry = |line: String| printer.status(line);
        let reaper = crate::reaper::Reaper::new(
            &*self.provider,
            &self.shared.journal,
            &self.project_slug,
            &self.shared.settings,
            true,
            &on_retry,
        );
        match reaper.sweep_stopped().await {
            Ok((deleted, failed)) => report_stopped(printer, &deleted, &failed),
            Err(e) => printer.warn(format!("could not list the project's workers: {e}")),
        }
    }

    /// Why `w` should take no new task, if it should not: the provider says it is stopped, or its
    /// TTL (`cwo-expires-at`, as the provider shows it, else as it was at creation) leaves less
    /// than `agent.timeout` + `TTL_MARGIN` for another attempt. A provider that cannot answer, or
    /// one empty read (a new VM may not be visible everywhere yet), is no verdict on its status.
    async fn fitness(&self, w: &ActiveWorker) -> Option<Unfit> {
        let seen = match self.provider.get(&w.instance.name).await {
            Ok(Some(i)) if i.status.is_stopped() => {
                return Some(Unfit::Stopped(
                    format!("it is {:?}", i.status).to_lowercase(),
                ));
            }
            Ok(Some(i)) => Some(i),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(worker = %w.instance.name, error = %e, "worker check: no answer");
                None
            }
        };
        let expires = seen.as_ref().unwrap_or(&w.instance).expires_at()?;
        let left = expires - chrono::Utc::now().timestamp();
        let needed = self.shared.settings.agent.timeout + crate::config::TTL_MARGIN;
        (left < needed.as_secs() as i64).then(|| {
            Unfit::Ttl(format!(
                "its TTL ends in {}, less than an attempt may need (agent.timeout + {})",
                fmt_secs(Duration::from_secs(left.max(0) as u64)),
                fmt_secs(crate::config::TTL_MARGIN)
            ))
        })
    }

    /// Says which pending creates are still unaccounted for, and what will deal with them.
    pub fn warn_unsettled(&self, pending: &[PendingCreate]) {
        for p in pending {
            self.shared.printer.warn(format!(
                "worker {} was being created when its controller stopped and has not appeared; the next `cwo run`, `cwo down` or `cwo reap` deletes it if it does",
                p.name
            ));
        }
    }

    /// Looks for the VMs of pending creates, for up to `wait` (zero: once): each that appeared is
    /// deleted; one still invisible past `reap_grace` is left to `cwo reap` with a warning, as is
    /// every one still invisible when the wait ends (the caller may look again later).
    pub async fn settle_pending(
        &self,
        pending: &mut Vec<PendingCreate>,
        wait: Duration,
    ) -> Vec<CliError> {
        let end = Instant::now() + wait;
        let grace = self.shared.settings.reap_grace;
        let mut failed = Vec::new();
        loop {
            let mut still = Vec::new();
            for p in pending.drain(..) {
                match self.provider.get(&p.name).await {
                    Ok(Some(_)) => {
                        self.shared.printer.status(format!(
                            "worker {}, which a stopped controller was creating, has appeared; deleting it",
                            p.name
                        ));
                        // A delete that fails is reported; the journal keeps the worker
                        // (`deleting`) for `cwo down` and `cwo reap`.
                        if let Err(e) = self.tear_down(&p.name, "orphaned").await {
                            failed.push(e);
                        }
                    }
                    Ok(None)
                        if (chrono::Utc::now() - p.intent_at)
                            .to_std()
                            .unwrap_or_default()
                            >= grace =>
                    {
                        self.shared.printer.warn(format!(
                            "worker {} never appeared within reap_grace; `cwo reap` deletes it if it ever does",
                            p.name
                        ));
                    }
                    // Not visible yet, or the provider could not say: look again.
                    Ok(None) | Err(_) => still.push(p),
                }
            }
            *pending = still;
            if pending.is_empty() || Instant::now() >= end {
                return failed;
            }
            tokio::time::sleep(Duration::from_secs(2).min(end - Instant::now())).await;
        }
    }

    fn task_ctx(&self, w: &ActiveWorker, shutdown: &Shutdown) -> TaskCtx {
        TaskCtx {
            shared: self.shared.clone(),
            provider: self.provider.clone(),
            transport: w.transport.clone(),
            worker: w.instance.name.clone(),
            workspace: w.instance.workspace.clone(),
            abort: shutdown.abort.clone(),
        }
    }

    /// The loop. Returns after `--once` drained the queue or after a shutdown signal; the worker
    /// is always torn down before it returns.
    pub async fn run(&self, opts: RunOptions, shutdown: Shutdown) -> Result<RunSummary, CliError> {
        let sh = &self.shared;
        let settings = &sh.settings;
        let mut summary = RunSummary::default();
        // Secrets first: a missing one stops the run before anything is created.
        sh.agent_env
            .get_or_try_init(|| crate::secrets::resolve(&settings.agent.env, &settings.gcp))
            .await
            .map_err(|e| {
                CliError::usage(e)
                    .hint("secrets are sm://projects/P/secrets/S/versions/V or env:NAME")
            })?;
        let recovered = self.recover(true, "orphaned").await?;
        let mut worker = recovered.worker;
        // The current worker has taken no task yet (a TTL too short for even one is a settings
        // error, not a reason to rotate forever).
        let mut fresh = false;
        let mut pending = recovered.pending;
        // Failures that do not stop the queue but make the run exit 1 at its end (a worker that
        // could not be deleted: the error carries the exact delete command).
        let mut deferred: Vec<CliError> = Vec::new();
        let mut running: JoinSet<TaskReport> = JoinSet::new();
        let mut in_flight: HashSet<String> = HashSet::new();
        // Attempts spent on balls whose worker went away, so a requeued ball keeps its count.
        let mut tries: HashMap<String, u32> = HashMap::new();
        if let Some(w) = &worker {
            let tasks = sh.tracker.list()?;
            for attempt in recovered.resume {
                let Some(task) = tasks.iter().find(|t| t.id == attempt.ball_id).cloned() else {
                    sh.journal.attempt_end(
                        attempt.id,
                        "aborted",
                        "-",
                        None,
                        None,
                        Some("the ball left the tracker"),
                    )?;
                    continue;
                };
                in_flight.insert(task.id.clone());
                sh.journal
                    .worker_activity(&w.instance.name, Some(&task.id))?;
                running.spawn(task::run_task(
                    self.task_ctx(w, &shutdown),
                    task,
                    Some(attempt),
                    0,
                ));
            }
        }
        let mut idle_since = Instant::now();
        let mut up_failures: u32 = 0;
        let concurrency = settings.concurrency.get();

        let result: Result<(), CliError> = async {
            loop {
                if !pending.is_empty() {
                    deferred.extend(self.settle_pending(&mut pending, Duration::ZERO).await);
                }
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
                            match self.bring_up(&shutdown.stop_claiming).await {
                                // A signal arrived before or during the bring-up: nothing is
                                // claimed, and the worker (if one was made) is deleted again.
                                Ok(None) => continue,
                                Ok(Some(w)) => {
                                    worker = Some(w);
                                    fresh = true;
                                    summary.workers_created += 1;
                                    summary.up_secs += started.elapsed().as_secs_f64();
                                    up_failures = 0;
                                }
                                // `--once` reports the failure; a polling controller keeps going
                                // (capacity and networks come back), waiting longer each time.
                                Err(e) if shutdown.stop_claiming.is_cancelled() => return Err(e),
                                Err(e) if !opts.once && up_failures < MAX_UP_FAILURES => {
                                    up_failures += 1;
                                    let wait = settings.poll_interval * 2u32.pow(up_failures.min(6));
                                    sh.printer.warn(format!(
                                        "{}retrying in {} (failure {up_failures} of {MAX_UP_FAILURES})",
                                        e.render().replace("error: ", "could not bring up a worker: "),
                                        fmt_secs(wait)
                                    ));
                                    tokio::select! {
                                        _ = tokio::time::sleep(wait) => {}
                                        _ = shutdown.stop_claiming.cancelled() => {}
                                    }
                                    continue;
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        // Before new work: is the worker still fit for it? (It may have been
                        // stopped outside cwo, or be too close to its TTL for another attempt.)
                        let fit = self.fitness(worker.as_ref().expect("worker is up")).await;
                        if let Some(Unfit::Ttl(why)) = &fit
                            && fresh
                        {
                            return Err(CliError::usage(format!(
                                "worker {} came up with too little life for one task: {why}",
                                worker.as_ref().expect("worker is up").instance.name
                            ))
                            .hint("raise gcp.ttl (it must cover the bring-up, agent.timeout and 5 minutes), or lower agent.timeout"));
                        }
                        if let Some(Unfit::Stopped(why) | Unfit::Ttl(why)) = fit {
                            if in_flight.is_empty() {
                                let w = worker.take().expect("worker is up");
                                sh.printer.status(format!(
                                    "rotating worker {}: {why}; a fresh worker takes the rest of the queue",
                                    w.instance.name
                                ));
                                let started = Instant::now();
                                if let Err(e) = self.tear_down(&w.instance.name, "rotated").await {
                                    deferred.push(e);
                                }
                                summary.teardown_secs += started.elapsed().as_secs_f64();
                                continue;
                            }
                            // Its running tasks finish first; nothing new goes there.
                        } else {
                        let w = worker.as_ref().expect("worker is up");
                        for task in ready.into_iter().take(free) {
                            // A signal during the bring-up (or an earlier claim): nothing new.
                            if shutdown.stop_claiming.is_cancelled() {
                                break;
                            }
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
                            fresh = false;
                            let prior = tries.get(&task.id).copied().unwrap_or(0);
                            running.spawn(task::run_task(self.task_ctx(w, &shutdown), task, None, prior));
                        }
                        continue;
                        }
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
                        let requeued = report.worker_gone
                            && report.tries < settings.agent.max_attempts.get();
                        if report.worker_gone {
                            tries.insert(report.id.clone(), report.tries);
                            let lost = worker.as_ref().is_some_and(|w| w.instance.name == report.worker);
                            // Its worker is gone: confirmed torn down, and the next ball (this
                            // one included, when it has tries left) gets a new worker.
                            if let Some(w) = worker.take_if(|_| lost) {
                                sh.printer.warn(format!(
                                    "worker {} is lost ({}); tearing it down and bringing up a new one for the rest of the queue",
                                    w.instance.name,
                                    report.outcome.reason().unwrap_or("gone")
                                ));
                                let started = Instant::now();
                                // A teardown that fails here (an unreachable host) keeps its
                                // journal row for `cwo down` / `cwo reap`; the queue goes on.
                                if let Err(e) = self.tear_down(&w.instance.name, "lost").await {
                                    sh.printer.warn(format!(
                                        "could not delete lost worker {}; going on, and the run will exit 1",
                                        w.instance.name
                                    ));
                                    deferred.push(e);
                                }
                                summary.teardown_secs += started.elapsed().as_secs_f64();
                            }
                        }
                        match report.outcome {
                            Outcome::Done { .. } => summary.complete.push(report.id),
                            Outcome::Failed(_) if requeued => summary.requeued.push(report.id),
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
                    deferred.push(e);
                }
            }
        }
        // A create a stopped controller had in flight: give it the time to show up and go.
        if result.is_ok() && !pending.is_empty() {
            deferred.extend(self.settle_pending(&mut pending, PENDING_WAIT).await);
            self.warn_unsettled(&pending);
        }
        // Every failure is shown; the last one is the run's error (exit 1).
        let last = match result {
            Err(e) => Some(e),
            Ok(()) => deferred.pop(),
        };
        for e in &deferred {
            eprint!("{}", e.render());
        }
        match last {
            Some(e) => Err(e),
            None => Ok(summary),
        }
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

/// What deleting stopped workers did, on stderr.
pub fn report_stopped(printer: Printer, deleted: &[String], failed: &[String]) {
    for name in deleted {
        printer.status(format!(
            "worker {name} was stopped (Compute Engine no longer deletes it at its TTL); deleted"
        ));
    }
    for f in failed {
        printer.warn(format!("could not delete stopped worker {f}"));
    }
}
