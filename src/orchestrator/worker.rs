//! The worker lifecycle: bring up, adopt (recover), check fitness, tear down. It writes a
//! worker's journal rows ahead of each provider call as it brings it up and adopts it; every
//! deletion (its own, the reaper's, `budget check --enforce`'s) goes through `teardown.rs`. The
//! one place the loop connects to a worker (through the connector).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::error::OrchestratorError;
use super::ports::{Ports, RunContext, journaled, off_thread};
use super::teardown::{Teardown, TeardownError, delete_journaled};
use crate::bootstrap::{self, Method};
use crate::config::Settings;
use crate::connector::{ConnectError, Connector};
use crate::journal::{AttemptRow, Journal, JournalError, WorkerRow, WorkerState};
use crate::printer::{Printer, fmt_secs};
use crate::provider::{Instance, Provider, WorkerSpec};
use crate::transport::{ExecRequest, Transport};

/// Checks a worker has git, setsid and the agent's program (printing what is missing), and
/// makes its workspace.
const PREREQS: &str = r#"mkdir -p "$2" || exit 1
missing=""
for p in git setsid "$1"; do command -v "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
echo "not found on PATH:$missing"; exit 1
"#;

/// How often the controller touches a bootstrapped worker's heartbeat file.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(60);

/// How long a command that found pending creates waits for them before it exits: a create in
/// flight answers, and a new VM shows up in reads, within seconds.
pub(crate) const PENDING_WAIT: Duration = Duration::from_secs(30);

/// A worker that is up, with a way to reach it.
pub struct ActiveWorker {
    pub instance: Instance,
    pub transport: Arc<dyn Transport>,
    /// Touches the worker's heartbeat file while this controller holds the worker, so the VM's
    /// idle watchdog leaves it alone; stops when the worker is dropped.
    heartbeat: Option<tokio::task::AbortHandle>,
}

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
                    let n = name.clone();
                    if let Err(e) = journaled(&journal, move |j| j.worker_heartbeat(&n)).await {
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

/// What `recover` found: workers to keep using and attempts still running on them.
pub(crate) struct Recovered {
    pub(crate) workers: Vec<ActiveWorker>,
    pub(crate) resume: Vec<AttemptRow>,
    /// Creates a stopped controller had sent whose VMs are not visible yet.
    pub(crate) pending: Vec<PendingCreate>,
}

/// A create whose controller stopped before it answered, and whose VM the provider does not
/// show yet (a create in flight, or eventual consistency): deleted as soon as it appears.
pub(crate) struct PendingCreate {
    pub(crate) name: String,
    pub(crate) intent_at: chrono::DateTime<chrono::Utc>,
}

/// What a batch of creates made: each worker's name, and the worker or why it was not created.
pub(crate) type Batch = Vec<(String, Result<Instance, OrchestratorError>)>;

/// Why a worker takes no new task.
pub(crate) enum Unfit {
    /// Stopped or stopping: it can do no work.
    Stopped(String),
    /// Too close to its TTL for another attempt.
    Ttl(String),
}

/// What the hint says a baked image saves, from measured bootstrap times (milliseconds) of
/// workers booted from the base image (`full`) and from baked ones.
pub(crate) fn image_saving(full: &[u64], baked: &[u64]) -> String {
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let secs = |ms: u64| format!("{:.0} s", ms as f64 / 1000.0);
    match (median(full), median(baked)) {
        (Some(f), Some(b)) => format!(
            "`cwo image build` would save ~{} per worker (bootstrap: {} from the base image over {} worker(s), {} from a baked one)",
            secs(f.saturating_sub(b)),
            secs(f),
            full.len(),
            secs(b)
        ),
        (Some(f), None) => format!(
            "`cwo image build` would save most of the {} each worker's bootstrap takes (median of {} worker(s)); from a baked image it only checks",
            secs(f),
            full.len()
        ),
        (None, _) => {
            "`cwo image build` bakes the bootstrap into an image, so each worker only checks it"
                .into()
        }
    }
}

/// Brings workers up, adopts them, checks them, and tears them down.
pub struct WorkerLifecycle {
    provider: Arc<dyn Provider>,
    connector: Connector,
    journal: Journal,
    printer: Printer,
    settings: Arc<Settings>,
    state_dir: PathBuf,
    project_slug: String,
    /// Bringing up an image builder (`cwo image build`): bootstrapped in bake mode, never
    /// journaled ready (no controller adopts it), reached as the login.
    bake: bool,
    /// The hint that a baked image would save bootstrap time was given (once per lifecycle).
    hinted: std::sync::atomic::AtomicBool,
}

impl WorkerLifecycle {
    pub fn new(ports: &Ports, ctx: &RunContext) -> WorkerLifecycle {
        WorkerLifecycle {
            provider: ports.provider.clone(),
            connector: ports.connector.clone(),
            journal: ports.journal.clone(),
            printer: ports.printer,
            settings: ctx.settings.clone(),
            state_dir: ctx.state_dir.clone(),
            project_slug: ctx.project_slug.clone(),
            bake: false,
            hinted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A lifecycle that brings up image builders (`cwo image build`) instead of workers.
    pub(crate) fn baking(mut self) -> WorkerLifecycle {
        self.bake = true;
        self
    }

    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Runs `f` on the journal off the async threads.
    async fn j<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, OrchestratorError> {
        Ok(journaled(&self.journal, f).await?)
    }

    /// What this worker costs per hour, at launch, as its provider prices it (in the worker's
    /// zone, when it has one).
    fn price_snapshot(&self, zone: Option<&str>) -> crate::cost::PriceSnapshot {
        let catalog = crate::cost::Catalog::load().unwrap_or_else(|e| {
            self.printer
                .warn(format!("price catalog: {e}; using the built-in prices"));
            crate::cost::Catalog::embedded()
        });
        self.provider.price_spec(zone).snapshot(&catalog)
    }

    /// A connection to the worker as `instance` describes it (the lifecycle's only connect).
    fn connect(&self, instance: &Instance) -> Result<Arc<dyn Transport>, OrchestratorError> {
        self.connector
            .connect(instance)
            .map(Arc::from)
            .map_err(|e| OrchestratorError::Connect {
                name: instance.name.clone(),
                source: e.into(),
            })
    }

    fn bootstrapped(&self) -> bool {
        self.settings.bootstrap_method() != Method::None
    }

    /// Creates a worker: journal intent first, then the provider, then a prerequisite check.
    /// `stop` cancelled (a signal) between the phases tears the new worker down again: a create
    /// already sent is waited for, never abandoned, so the journal can always account for it.
    /// `Ok(None)`: stopped (before anything was created, or the new worker is deleted again).
    pub async fn bring_up(
        &self,
        stop: &CancellationToken,
    ) -> Result<Option<ActiveWorker>, OrchestratorError> {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let (_, created) = self
            .create_fleet(1)
            .await?
            .pop()
            .expect("one result per worker");
        self.finish_up(created?, stop).await
    }

    /// `count` names no other worker of this project has had (the journal keys workers by
    /// name, and a fleet makes many).
    async fn new_names(&self, count: usize) -> Result<Vec<String>, OrchestratorError> {
        let slug = self.project_slug.clone();
        // A builder says so in its name (`cwo status`, the console, the reaper's report).
        let kind = if self.bake { "build-" } else { "" };
        self.j(move |j| {
            let mut names: Vec<String> = Vec::with_capacity(count);
            while names.len() < count {
                let short = &uuid::Uuid::new_v4().simple().to_string()[..6];
                let name = format!("cwo-{slug}-{kind}{short}");
                if !names.contains(&name) && j.worker(&name)?.is_none() {
                    names.push(name);
                }
            }
            Ok(names)
        })
        .await
    }

    /// Creates `count` workers together (a fleet scaling up): every worker's intent (name,
    /// request id, labels) is journaled before the provider is asked, then one `create_many`
    /// (on Compute Engine one `bulkInsert` that places them in zones with capacity). One result
    /// per worker; a worker that was not created is torn down (whatever part of it exists) and
    /// closed in the journal. `Err`: the journal refused the intents, and nothing was asked.
    pub(crate) async fn create_fleet(&self, count: usize) -> Result<Batch, OrchestratorError> {
        // What the work is priced as, by the provider (on one that bills nothing: what the same
        // work would have cost).
        let machine_type = self.provider.price_spec(None).machine_type;
        let specs: Vec<(WorkerSpec, String)> = self
            .new_names(count)
            .await?
            .into_iter()
            .map(|name| {
                let labels = crate::model::worker_labels(&self.project_slug, &name, &machine_type);
                let spec = WorkerSpec {
                    name,
                    labels,
                    machine_type: machine_type.clone(),
                };
                (spec, uuid::Uuid::new_v4().to_string())
            })
            .collect();
        let intents: Vec<(String, String, String)> = specs
            .iter()
            .map(|(s, rid)| {
                let labels = serde_json::to_string(&s.labels).expect("labels serialize");
                (s.name.clone(), rid.clone(), labels)
            })
            .collect();
        let (kind, machine) = (self.provider.kind(), machine_type.clone());
        self.j(move |j| {
            for (name, rid, labels) in &intents {
                j.worker_intent(name, kind, &machine, rid, labels)?;
            }
            Ok(())
        })
        .await?;
        for (s, rid) in &specs {
            tracing::debug!(name = %s.name, request_id = %rid, provider = self.provider.kind(), "create");
        }
        let mut created = self.provider.create_many(&specs).await.into_iter();
        self.hint_image().await;
        let mut out = Vec::with_capacity(count);
        for (spec, _) in specs {
            // A provider that answers for fewer workers than asked: the rest were not created
            // as far as cwo can tell, and are torn down (and closed) like any failed create.
            let result = created.next().unwrap_or_else(|| {
                Err(crate::provider::ProviderError::Transient(format!(
                    "the {} provider gave no result for {}",
                    self.provider.kind(),
                    spec.name
                )))
            });
            let result = match result {
                Ok(i) => Ok(i),
                Err(source) => {
                    let problem = OrchestratorError::BringUp {
                        name: spec.name.clone(),
                        source,
                    };
                    Err(self.abandon(&spec.name, problem).await)
                }
            };
            out.push((spec.name, result));
        }
        Ok(out)
    }

    /// Once per lifecycle: when no baked image matches the settings, what `cwo image build`
    /// would save per worker, from the bootstrap times the journal measured.
    async fn hint_image(&self) {
        use std::sync::atomic::Ordering;
        if self.bake || self.hinted.load(Ordering::Relaxed) {
            return;
        }
        let Some(Ok(boot)) = self.provider.boot_image().await else {
            return;
        };
        if !boot.build_would_help || self.hinted.swap(true, Ordering::Relaxed) {
            return;
        }
        let times = self
            .j(|j| Ok((j.bootstrap_times(false)?, j.bootstrap_times(true)?)))
            .await;
        let (full, baked) = times.unwrap_or_default();
        self.printer
            .warn(format!("{}; {}", boot.why, image_saving(&full, &baked)));
    }

    /// Takes a created worker the rest of the way: running, journaled as created (with its
    /// price at launch), bootstrapped, checked, and journaled ready (only now may a later
    /// controller adopt it). A failure tears it down; `stop` cancelled deletes it again
    /// (`Ok(None)`).
    pub(crate) async fn finish_up(
        &self,
        created: Instance,
        stop: &CancellationToken,
    ) -> Result<Option<ActiveWorker>, OrchestratorError> {
        let name = created.name.clone();
        let phase = self.printer.phase(format!(
            "bringing up {} {name} ({})",
            if self.bake { "builder" } else { "worker" },
            self.provider.kind()
        ));
        let instance = match self
            .provider
            .wait_running(&name, Duration::from_secs(600))
            .await
        {
            Ok(i) => i,
            Err(source) => {
                let problem = OrchestratorError::BringUp {
                    name: name.clone(),
                    source,
                };
                phase.finish(format!("worker {name} did not come up"));
                return Err(self.abandon(&name, problem).await);
            }
        };
        if stop.is_cancelled() {
            phase.finish(format!("worker {name} stopped"));
            return self.stopped(&name).await;
        }
        let login_view = instance.clone();
        let (created_at, record) = (
            instance.created_at,
            serde_json::to_string(&instance).expect("instance serializes"),
        );
        let price = self.price_snapshot(instance.zone.as_deref());
        let n = name.clone();
        let journaled = self
            .j(move |j| {
                j.worker_created(&n, created_at, &record)?;
                j.worker_price(&n, &price)
            })
            .await;
        if let Err(problem) = journaled {
            phase.finish(format!("worker {name} could not be journaled"));
            return Err(self.abandon(&name, problem).await);
        }
        let (instance, transport) = match self.make_ready(&instance).await {
            Ok(pair) => pair,
            Err(problem) => {
                phase.finish(format!("worker {name} could not be made ready"));
                return Err(self.abandon(&name, problem).await);
            }
        };
        if stop.is_cancelled() {
            phase.finish(format!("worker {name} stopped"));
            return self.stopped(&name).await;
        }
        if self.bake {
            // A builder is never adopted as a worker: it stays `starting` until it is deleted.
            phase.finish(format!("builder {name} is bootstrapped"));
            return Ok(Some(ActiveWorker::new(
                instance,
                transport,
                false,
                self.journal.clone(),
            )));
        }
        // Only now may a later controller adopt it (the login's view is what the journal keeps:
        // adoption derives the work user's view again).
        let (n, record) = (
            name.clone(),
            serde_json::to_string(&login_view).expect("instance serializes"),
        );
        if let Err(problem) = self
            .j(move |j| j.worker_ready(&n, created_at, &record))
            .await
        {
            phase.finish(format!("worker {name} could not be journaled"));
            return Err(self.abandon(&name, problem).await);
        }
        phase.finish(format!("worker {name} is up"));
        Ok(Some(ActiveWorker::new(
            instance,
            transport,
            self.bootstrapped(),
            self.journal.clone(),
        )))
    }

    /// What one more worker costs per hour at list price, as the fleet's ceiling counts it (in
    /// the provider's first zone). `None`: the catalog has no price for it.
    pub(crate) fn hourly_price(&self) -> Option<f64> {
        self.price_snapshot(None).hourly.map(|h| h.total())
    }

    /// How many more workers the provider's quota leaves room for (`None`: no limit known).
    pub(crate) async fn room(&self) -> Result<Option<crate::provider::Room>, OrchestratorError> {
        self.provider
            .fleet_room()
            .await
            .map_err(|source| OrchestratorError::Quota { source })
    }

    /// A signal arrived while the worker came up: it is deleted again.
    async fn stopped(&self, name: &str) -> Result<Option<ActiveWorker>, OrchestratorError> {
        self.printer.status(format!(
            "stopping: tearing down worker {name}, which was coming up"
        ));
        self.tear_down(name, "user").await.map(|()| None)
    }

    /// Bootstraps a created worker and checks it can run the agent; returns the work user's view
    /// and connection.
    async fn make_ready(
        &self,
        instance: &Instance,
    ) -> Result<(Instance, Arc<dyn Transport>), OrchestratorError> {
        let name = &instance.name;
        let login = self.connect(instance)?;
        let (instance, transport) = self.bootstrap(instance, login).await?;
        if self.bake {
            // The work user has no keys on a builder (an image carries none): nothing to check
            // as it, and no agent runs there.
            return Ok((instance, transport));
        }
        // Reachability (for SSH: banner, key, pinned host key) and prerequisites in one call.
        let program = &self.settings.agent.command[0];
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
        match check {
            Err(source) => Err(OrchestratorError::Unreachable {
                name: name.clone(),
                source,
            }),
            Ok(out) if !out.status.success() => Err(OrchestratorError::MissingPrereqs {
                name: name.clone(),
                missing: out.stdout.trim().to_string(),
            }),
            Ok(_) => Ok((instance, transport)),
        }
    }

    /// Tears down a worker whose bring-up failed. If that fails too, both errors are returned:
    /// the bring-up's, and the teardown's with its own hints (the exact delete command).
    async fn abandon(&self, name: &str, problem: OrchestratorError) -> OrchestratorError {
        match self.tear_down(name, "error").await {
            Ok(()) => problem,
            Err(cleanup) => OrchestratorError::Abandoned {
                name: name.to_string(),
                problem: Box::new(problem),
                cleanup: Box::new(cleanup),
            },
        }
    }

    /// Makes a fresh worker ready (the configured bootstrap method) over the login connection,
    /// and returns the worker as the agent's work sees it, with a connection as the work user.
    async fn bootstrap(
        &self,
        instance: &Instance,
        login: Arc<dyn Transport>,
    ) -> Result<(Instance, Arc<dyn Transport>), OrchestratorError> {
        let settings = &self.settings;
        let p = &self.printer;
        let method = settings.bootstrap_method();
        let name = &instance.name;
        let fail = |source| OrchestratorError::Bootstrap {
            name: name.clone(),
            source,
        };
        if method != Method::None
            && let crate::provider::Target::Ssh { host, .. } = &instance.target
            && bootstrap::is_this_machine(host)
        {
            return Err(OrchestratorError::BootstrapThisMachine {
                name: name.clone(),
                host: host.clone(),
            });
        }
        match method {
            Method::None => return Ok((instance.clone(), login)),
            Method::Native => {
                let login_user = match &instance.target {
                    crate::provider::Target::Ssh { user, .. } => user.as_str(),
                    crate::provider::Target::Local { .. } => "",
                };
                // A GCE VM booted with this very script (startup-script / user-data), or from
                // an image baked with it: cwo's run waits for the boot run and checks it.
                let gce = self.provider.boots_with_startup_script();
                let script = bootstrap::render(settings, &bootstrap::Target { login_user, gce });
                let mode = match (self.bake, gce) {
                    (true, _) => bootstrap::Mode::Bake,
                    (false, true) => bootstrap::Mode::Reuse,
                    (false, false) => bootstrap::Mode::Run,
                };
                let image = instance.labels.get(crate::model::IMAGE_LABEL).cloned();
                let from = image
                    .as_deref()
                    .map(|i| format!(", from image {i}"))
                    .unwrap_or_default();
                let what = if self.bake { "builder" } else { "worker" };
                p.status(format!("bootstrapping {what} {name} (native{from})"));
                let report = bootstrap::run_native(&*login, &script, mode, &mut |step| {
                    p.status(bootstrap::step_line(step));
                })
                .await
                .map_err(fail)?;
                if !self.bake {
                    let (n, ms) = (name.clone(), report.elapsed.as_millis() as u64);
                    // A measurement only: a journal that refuses it loses the hint's figure.
                    if let Err(e) = self
                        .j(move |j| j.worker_bootstrapped(&n, ms, image.as_deref()))
                        .await
                    {
                        tracing::debug!(error = %e, "bootstrap time not journaled");
                    }
                }
                if let Some(printed) = report.host_key.clone() {
                    let (connector, inst) = (self.connector.clone(), instance.clone());
                    match off_thread(move || connector.check_host_key(&inst, &printed)).await {
                        Ok(()) => {}
                        Err(e @ ConnectError::HostKeyMismatch { .. }) => {
                            return Err(OrchestratorError::HostKeyMismatch {
                                name: name.clone(),
                                problem: e.to_string(),
                            });
                        }
                        Err(e) => {
                            return Err(OrchestratorError::Connect {
                                name: name.clone(),
                                source: e.into(),
                            });
                        }
                    }
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
                login.check(ExecRequest::new(["true"])).await.map_err(|e| {
                    OrchestratorError::Connect {
                        name: name.clone(),
                        source: e.into(),
                    }
                })?;
                p.status(format!("bootstrapping worker {name} (ansible)"));
                let (connector, inst) = (self.connector.clone(), instance.clone());
                let host_key = off_thread(move || connector.host_key(&inst))
                    .await
                    .map_err(|e| OrchestratorError::Connect {
                        name: name.clone(),
                        source: e.into(),
                    })?;
                bootstrap::ansible::run(
                    settings,
                    host_key.as_deref(),
                    &self.state_dir,
                    instance,
                    &mut |line| p.status(format!("  {line}")),
                )
                .await
                .map_err(fail)?;
            }
            Method::Auto => unreachable!("bootstrap_method resolves auto"),
        }
        let work = bootstrap::as_work_user(settings, instance.clone());
        let transport = self.connect(&work)?;
        Ok((work, transport))
    }

    /// Deletes a worker and confirms it is gone under the one deletion retry policy (progress on
    /// stderr, `teardown_timeout` overall); the journal records each step. Giving up names the
    /// exact command that deletes the worker by hand.
    pub(crate) async fn tear_down(
        &self,
        name: &str,
        reason: &str,
    ) -> Result<(), OrchestratorError> {
        let deadline = self.settings.teardown_timeout;
        let printer = self.printer;
        let result = delete_journaled(
            &*self.provider,
            Some(&self.journal),
            name,
            reason,
            deadline,
            &mut |line| printer.status(line),
        )
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(TeardownError::Journal(e)) => Err(e.into()),
            Err(TeardownError::Provider(source)) => Err(OrchestratorError::Delete {
                name: name.to_string(),
                deadline,
                source,
                manual: self.provider.manual_delete_hint(name),
            }),
        }
    }

    /// `cwo down`: deletes every worker the journal knows, confirmed, and waits a while for
    /// creates still in flight. Returns how many workers there were. A create that never
    /// appeared stays journaled (and is warned about) for the next `down` or the reaper.
    pub(crate) async fn down(&self) -> Result<usize, OrchestratorError> {
        let live = self.j(|j| j.live_workers()).await?;
        if live.is_empty() {
            return Ok(0);
        }
        let mut pending = self.recover(0, "user").await?.pending;
        let mut failed = self.settle_pending(&mut pending, PENDING_WAIT).await;
        self.warn_unsettled(&pending);
        if let Some(e) = failed.pop() {
            return Err(e);
        }
        let left: Vec<String> = self
            .j(|j| j.live_workers())
            .await?
            .into_iter()
            .filter(|w| w.state != WorkerState::Intent)
            .map(|w| w.name)
            .collect();
        if !left.is_empty() {
            return Err(OrchestratorError::StillLive(left));
        }
        Ok(live.len())
    }

    /// Reconciles the journal with the provider after a crash or a `cwo up`: workers the
    /// provider no longer has are closed; up to `adopt` ready, running workers are adopted (the
    /// fleet's cap), every other one is deleted. Attempts a stopped controller left open are
    /// returned for reattaching when their worker was adopted, and closed as aborted otherwise.
    pub(crate) async fn recover(
        &self,
        adopt: usize,
        reason: &str,
    ) -> Result<Recovered, OrchestratorError> {
        self.delete_stopped().await;
        let mut found = Recovered {
            workers: Vec::new(),
            resume: Vec::new(),
            pending: Vec::new(),
        };
        for row in self.j(|j| j.live_workers()).await? {
            self.reconcile(row, adopt, reason, &mut found).await?;
        }
        for attempt in self.j(|j| j.dangling_attempts()).await? {
            if found
                .workers
                .iter()
                .any(|w| w.instance.name == attempt.worker)
            {
                found.resume.push(attempt);
                continue;
            }
            self.printer.warn(format!(
                "attempt {} of {} was cut short: its controller stopped and worker {} is gone",
                attempt.attempt, attempt.ball_id, attempt.worker
            ));
            self.j(move |j| {
                j.attempt_end(
                    attempt.id,
                    "aborted",
                    "-",
                    attempt.branch.as_deref(),
                    None,
                    Some("controller stopped; worker gone"),
                )
            })
            .await?;
        }
        Ok(found)
    }

    /// One journaled worker against what the provider shows: pending (a create not visible
    /// yet), closed (gone), adopted (a ready, running one, while fewer than `adopt` are),
    /// or deleted.
    async fn reconcile(
        &self,
        row: WorkerRow,
        adopt: usize,
        reason: &str,
        found: &mut Recovered,
    ) -> Result<(), OrchestratorError> {
        let seen =
            self.provider
                .get(&row.name)
                .await
                .map_err(|source| OrchestratorError::Lookup {
                    name: row.name.clone(),
                    source,
                })?;
        let age = (chrono::Utc::now() - row.intent_at)
            .to_std()
            .unwrap_or_default();
        match seen {
            // A create that never answered may still be invisible (eventual consistency): the
            // row stays until the grace period says it never happened; meanwhile the reaper finds
            // the VM by its labels if it does appear.
            None if row.state == WorkerState::Intent && age < self.settings.reap_grace => {
                self.printer.status(format!(
                    "worker {} was being created when its controller stopped and is not visible yet; deleting it if it appears",
                    row.name
                ));
                found.pending.push(PendingCreate {
                    name: row.name,
                    intent_at: row.intent_at,
                });
            }
            None => {
                let n = row.name.clone();
                self.j(move |j| {
                    j.worker_deleting(&n, "gone")?;
                    j.worker_deleted(&n, "gone")
                })
                .await?;
                self.printer.status(format!(
                    "worker {} is already gone; journal updated",
                    row.name
                ));
            }
            // Only a running worker is adopted: a stopped one can do no work (and is deleted
            // below, like every worker not adopted).
            Some(instance)
                if found.workers.len() < adopt
                    && row.state == WorkerState::Ready
                    && instance.status == crate::provider::InstanceStatus::Running =>
            {
                let instance = bootstrap::as_work_user(&self.settings, instance);
                let transport = self.connect(&instance)?;
                self.printer.status(format!("adopting worker {}", row.name));
                let n = row.name.clone();
                self.j(move |j| j.worker_activity(&n, None)).await?;
                found.workers.push(ActiveWorker::new(
                    instance,
                    transport,
                    self.bootstrapped(),
                    self.journal.clone(),
                ));
            }
            Some(instance) => {
                let why = if instance.status.is_stopped() {
                    "stopped"
                } else {
                    reason
                };
                self.printer
                    .status(format!("deleting worker {} ({why})", row.name));
                self.tear_down(&row.name, why).await?;
            }
        }
        Ok(())
    }

    /// Deletes this project's stopped workers, journaled or not (the reaper's rule, applied by
    /// every command that looks at the project's workers). A failed list is only a warning here:
    /// `cwo reap` and the next command try again.
    async fn delete_stopped(&self) {
        let printer = self.printer;
        let on_retry = |line: String| printer.status(line);
        let teardown = Teardown {
            provider: &*self.provider,
            journal: &self.journal,
            project_slug: &self.project_slug,
            teardown_timeout: self.settings.teardown_timeout,
            on_retry: &on_retry,
        };
        match teardown.sweep_stopped().await {
            Ok((deleted, failed)) => super::report_stopped(printer, &deleted, &failed),
            Err(e) => printer.warn(format!(
                "could not list the project's workers: {}",
                crate::util::error::one_line(&e)
            )),
        }
    }

    /// Why `w` should take no new task, if it should not: the provider says it is stopped, or its
    /// TTL (`cwo-expires-at`, as the provider shows it, else as it was at creation) leaves less
    /// than `agent.timeout` + `TTL_MARGIN` for another attempt. A provider that cannot answer, or
    /// one empty read (a new VM may not be visible everywhere yet), is no verdict on its status.
    pub(crate) async fn fitness(&self, w: &ActiveWorker) -> Option<Unfit> {
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
        let needed = self.settings.agent.timeout + crate::config::TTL_MARGIN;
        (left < needed.as_secs() as i64).then(|| {
            Unfit::Ttl(format!(
                "its TTL ends in {}, less than an attempt may need (agent.timeout + {})",
                fmt_secs(Duration::from_secs(left.max(0) as u64)),
                fmt_secs(crate::config::TTL_MARGIN)
            ))
        })
    }

    /// Says which pending creates are still unaccounted for, and what will deal with them.
    pub(crate) fn warn_unsettled(&self, pending: &[PendingCreate]) {
        for p in pending {
            self.printer.warn(format!(
                "worker {} was being created when its controller stopped and has not appeared; the next `cwo run`, `cwo down` or `cwo reap` deletes it if it does",
                p.name
            ));
        }
    }

    /// Looks for the VMs of pending creates, for up to `wait` (zero: once): each that appeared is
    /// deleted; one still invisible past `reap_grace` is left to `cwo reap` with a warning, as is
    /// every one still invisible when the wait ends (the caller may look again later).
    pub(crate) async fn settle_pending(
        &self,
        pending: &mut Vec<PendingCreate>,
        wait: Duration,
    ) -> Vec<OrchestratorError> {
        let end = Instant::now() + wait;
        let grace = self.settings.reap_grace;
        let mut failed = Vec::new();
        loop {
            let mut still = Vec::new();
            for p in pending.drain(..) {
                match self.provider.get(&p.name).await {
                    Ok(Some(_)) => {
                        self.printer.status(format!(
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
                        self.printer.warn(format!(
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
}

/// A ready worker to run a command on (`cwo ssh`): the one named, or the only one up; with its
/// current description from the provider and a transport to it.
pub(crate) async fn reach(
    journal: &Journal,
    provider: &dyn Provider,
    connector: &Connector,
    name: Option<&str>,
) -> Result<(Instance, Box<dyn Transport>), OrchestratorError> {
    let ready: Vec<String> = journaled(journal, |j| j.live_workers())
        .await?
        .into_iter()
        .filter(|w| w.state == WorkerState::Ready)
        .map(|w| w.name)
        .collect();
    let name = match (name, ready.as_slice()) {
        (Some(n), _) if ready.iter().any(|w| w == n) => n.to_string(),
        (Some(n), _) => return Err(OrchestratorError::NoLiveWorker(n.to_string())),
        (None, [one]) => one.clone(),
        (None, []) => return Err(OrchestratorError::NoWorkerUp),
        (None, _) => return Err(OrchestratorError::SeveralUp(ready)),
    };
    let instance = provider
        .get(&name)
        .await
        .map_err(|source| OrchestratorError::Lookup {
            name: name.clone(),
            source,
        })?
        .ok_or_else(|| OrchestratorError::Gone(name.clone()))?;
    let transport = connector
        .connect(&instance)
        .map_err(|e| OrchestratorError::Connect {
            name: name.clone(),
            source: e.into(),
        })?;
    Ok((instance, transport))
}
