//! The worker lifecycle and the loop driven through their ports with doubles: a provider whose
//! connections and deletions fail on demand, a tracker in memory, the real journal in a temp dir.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cwo::config::{Settings, SshSettings};
use cwo::connector::Connector;
use cwo::journal::{Journal, WorkerState};
use cwo::orchestrator::{
    Orchestrator, OrchestratorError, Ports, RunContext, RunOptions, Shutdown, WorkerLifecycle,
};
use cwo::printer::Printer;
use cwo::provider::{
    DeleteOutcome, Instance, InstanceStatus, Plan, PlanContext, PriceSpec, Provider, ProviderError,
    Target, WorkerSpec, local::LocalPlan,
};
use cwo::tracker::juggle::Juggle;
use cwo::tracker::{Priority, Task, Tracker, TrackerError};
use tokio_util::sync::CancellationToken;

/// Workers in memory that can never be reached (an SSH target without an address, so the
/// connector refuses it); `delete` fails when told to.
#[derive(Default)]
struct FlakyProvider {
    vms: Mutex<BTreeMap<String, Instance>>,
    fail_delete: bool,
    /// What its workers are priced as (the default: no price).
    priced_as: PriceSpec,
    /// The labels of every worker created.
    created: Mutex<Vec<BTreeMap<String, String>>>,
}

#[async_trait]
impl Provider for FlakyProvider {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    fn price_spec(&self, _zone: Option<&str>) -> PriceSpec {
        self.priced_as.clone()
    }
    async fn create(&self, spec: &WorkerSpec, _key: &str) -> Result<Instance, ProviderError> {
        self.created.lock().unwrap().push(spec.labels.clone());
        let inst = Instance {
            name: spec.name.clone(),
            status: InstanceStatus::Running,
            created_at: chrono::Utc::now(),
            labels: spec.labels.clone(),
            target: Target::Ssh {
                host: String::new(),
                port: 22,
                user: "nobody".into(),
                key_path: "/nonexistent/key".into(),
                host_key: None,
                pin_as: spec.name.clone(),
            },
            workspace: "/nonexistent/ws".into(),
            zone: None,
        };
        self.vms
            .lock()
            .unwrap()
            .insert(spec.name.clone(), inst.clone());
        Ok(inst)
    }
    async fn wait_running(&self, name: &str, _t: Duration) -> Result<Instance, ProviderError> {
        self.get(name)
            .await?
            .ok_or_else(|| ProviderError::NotFound(name.into()))
    }
    async fn get(&self, name: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(self.vms.lock().unwrap().get(name).cloned())
    }
    async fn list(&self, _s: &BTreeMap<String, String>) -> Result<Vec<Instance>, ProviderError> {
        Ok(self.vms.lock().unwrap().values().cloned().collect())
    }
    async fn delete(&self, name: &str) -> Result<DeleteOutcome, ProviderError> {
        if self.fail_delete {
            return Err(ProviderError::Transient("the delete was refused".into()));
        }
        Ok(match self.vms.lock().unwrap().remove(name) {
            Some(_) => DeleteOutcome::Deleted,
            None => DeleteOutcome::AlreadyGone,
        })
    }
    async fn confirm_deleted(&self, name: &str, _t: Duration) -> Result<(), ProviderError> {
        match self.vms.lock().unwrap().contains_key(name) {
            true => Err(ProviderError::Transient(format!("{name} is still there"))),
            false => Ok(()),
        }
    }
    fn plan(&self, spec: &WorkerSpec, _ctx: &PlanContext<'_>) -> Plan {
        Plan::Local(LocalPlan {
            provider: self.kind(),
            worker: spec.name.clone(),
            creates: "nothing (a test double)".into(),
            labels: spec.labels.clone(),
            hourly_cost_usd: 0.0,
        })
    }
    async fn set_labels(
        &self,
        _n: &str,
        _l: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
    fn manual_delete_hint(&self, name: &str) -> Option<String> {
        Some(format!("flaky-delete {name}"))
    }
}

/// The ports and context of a project in `dir`, with these doubles and settings.
fn ports(
    dir: &std::path::Path,
    provider: Arc<FlakyProvider>,
    tracker: Arc<dyn Tracker>,
    settings: Settings,
) -> (Ports, RunContext) {
    let journal = Journal::open(&dir.join("state")).unwrap();
    let ports = Ports {
        tracker,
        journal: journal.clone(),
        provider,
        connector: Connector::new(&SshSettings::default(), Arc::new(journal)),
        printer: Printer::new(true, false, true),
        forge: None,
    };
    let ctx = RunContext {
        root: dir.to_path_buf(),
        state_dir: dir.join("state"),
        project_slug: "doubles".into(),
        settings: Arc::new(settings),
        template: String::new(),
        origins: Default::default(),
    };
    (ports, ctx)
}

fn lifecycle(dir: &std::path::Path, provider: Arc<FlakyProvider>) -> (WorkerLifecycle, Journal) {
    let tracker = Arc::new(Juggle::new(dir.join(".juggle"), ""));
    let settings = Settings {
        teardown_timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let (ports, ctx) = ports(dir, provider, tracker, settings);
    (WorkerLifecycle::new(&ports, &ctx), ports.journal)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A worker created but never reachable is deleted again, its journal row closed as `error`,
/// and the error says it could not be reached (no VM is left behind).
#[test]
fn a_worker_that_cannot_be_connected_to_is_torn_down() {
    let tmp = tempfile::tempdir().unwrap();
    let provider = Arc::new(FlakyProvider::default());
    let (workers, journal) = lifecycle(tmp.path(), provider.clone());
    let err = match rt().block_on(workers.bring_up(&CancellationToken::new())) {
        Err(e) => e,
        Ok(_) => panic!("a worker without a connection came up"),
    };
    assert!(
        matches!(err, OrchestratorError::Connect { .. }),
        "{}",
        err.render()
    );
    assert!(
        provider.vms.lock().unwrap().is_empty(),
        "the VM was left behind"
    );
    assert!(journal.live_workers().unwrap().is_empty());
    let ledger = journal.ledger().unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].termination_reason, "error");
}

/// The lifecycle prices and labels a worker as its provider says (not from `[gcp]`, which
/// describes only the gcp and terraform providers' VMs): the ledger keeps the provider's machine
/// and zone, and the worker's `cwo-machine` label is that machine.
#[test]
fn a_worker_is_priced_and_labelled_as_its_provider_says() {
    let tmp = tempfile::tempdir().unwrap();
    let provider = Arc::new(FlakyProvider {
        priced_as: PriceSpec {
            machine_type: "n2-standard-4".into(),
            zone: "europe-west4-a".into(),
            spot: true,
            disk_type: "pd-ssd".into(),
            disk_size_gb: 50,
        },
        ..FlakyProvider::default()
    });
    let (workers, journal) = lifecycle(tmp.path(), provider.clone());
    assert!(
        rt().block_on(workers.bring_up(&CancellationToken::new()))
            .is_err()
    );
    let ledger = journal.ledger().unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].machine_type, "n2-standard-4");
    let price = ledger[0].price.as_ref().expect("a price snapshot");
    assert_eq!(
        (
            price.zone.as_str(),
            price.spot,
            price.disk_type.as_str(),
            price.disk_gb
        ),
        ("europe-west4-a", true, "pd-ssd", 50)
    );
    let created = provider.created.lock().unwrap();
    assert_eq!(created[0]["cwo-machine"], "n2-standard-4");
}

/// When the cleanup of a failed bring-up fails too, both are reported: the bring-up's error,
/// and the teardown's with the command that deletes the worker by hand. The journal keeps the
/// worker (`deleting`) for `cwo down` and `cwo reap`.
#[test]
fn a_failed_cleanup_after_a_failed_bring_up_is_reported_with_its_delete_command() {
    let tmp = tempfile::tempdir().unwrap();
    let provider = Arc::new(FlakyProvider {
        fail_delete: true,
        ..FlakyProvider::default()
    });
    let (workers, journal) = lifecycle(tmp.path(), provider.clone());
    let err = match rt().block_on(workers.bring_up(&CancellationToken::new())) {
        Err(e) => e,
        Ok(_) => panic!("a worker without a connection came up"),
    };
    let name = provider.vms.lock().unwrap().keys().next().cloned().unwrap();
    let rendered = err.render();
    assert!(
        rendered.starts_with(&format!("error: cannot reach worker {name}\n")),
        "{rendered}"
    );
    assert!(
        rendered.contains(&format!(
            "hint: and worker {name} could not be deleted: could not delete worker {name}"
        )),
        "{rendered}"
    );
    assert!(
        rendered.contains(&format!("hint: or delete it yourself: flaky-delete {name}")),
        "{rendered}"
    );
    let row = journal.worker(&name).unwrap().unwrap();
    assert_eq!(row.state, WorkerState::Deleting);
}

/// Tasks in memory; records what the loop did to them.
struct MemoryTracker {
    tasks: Mutex<Vec<Task>>,
}

impl MemoryTracker {
    fn with(ids: &[&str]) -> MemoryTracker {
        let tasks = ids
            .iter()
            .map(|id| Task {
                id: id.to_string(),
                title: format!("task {id}"),
                context: String::new(),
                acceptance_criteria: vec![],
                priority: Priority::Medium,
                state: "pending".into(),
                blocked_reason: String::new(),
                depends_on: vec![],
                tags: vec![],
                waiting_on: vec![],
                issue: None,
                model_override: String::new(),
                model_size: String::new(),
            })
            .collect();
        MemoryTracker {
            tasks: Mutex::new(tasks),
        }
    }
    fn set(&self, id: &str, state: &str) -> Result<(), TrackerError> {
        let mut tasks = self.tasks.lock().unwrap();
        let t = tasks
            .iter_mut()
            .find(|t| t.id == id)
            .ok_or_else(|| TrackerError::NotFound(id.into()))?;
        t.state = state.into();
        Ok(())
    }
}

impl Tracker for MemoryTracker {
    fn list(&self) -> Result<Vec<Task>, TrackerError> {
        Ok(self.tasks.lock().unwrap().clone())
    }
    fn claim(&self, id: &str, _worker: &str) -> Result<(), TrackerError> {
        self.set(id, "in_progress")
    }
    fn complete(&self, id: &str, _note: &str) -> Result<(), TrackerError> {
        self.set(id, "complete")
    }
    fn block(&self, id: &str, _reason: &str) -> Result<(), TrackerError> {
        self.set(id, "blocked")
    }
    fn release(&self, id: &str) -> Result<(), TrackerError> {
        self.set(id, "pending")
    }
    fn progress(&self, _task: &Task, _text: &str) -> Result<(), TrackerError> {
        Ok(())
    }
}

/// The loop driven through its ports with doubles: under `--once`, a worker that cannot be
/// reached ends the run with that error, after it was torn down; no ball was claimed.
#[test]
fn the_loop_runs_on_doubles_and_claims_nothing_without_a_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let provider = Arc::new(FlakyProvider::default());
    let tracker = Arc::new(MemoryTracker::with(&["d-1", "d-2"]));
    let (ports, ctx) = ports(
        tmp.path(),
        provider.clone(),
        tracker.clone(),
        Settings::default(),
    );
    let journal = ports.journal.clone();
    let orch = Orchestrator::new(ports, ctx);
    let result = rt().block_on(orch.run(RunOptions { once: true }, Shutdown::default()));
    let err = match result {
        Err(e) => e,
        Ok(summary) => panic!("the run succeeded without a worker: {summary:?}"),
    };
    assert!(
        matches!(err, OrchestratorError::Connect { .. }),
        "{}",
        err.render()
    );
    assert!(
        provider.vms.lock().unwrap().is_empty(),
        "the VM was left behind"
    );
    let states: Vec<String> = tracker
        .list()
        .unwrap()
        .into_iter()
        .map(|t| t.state)
        .collect();
    assert_eq!(states, ["pending", "pending"]);
    assert!(journal.tasks().unwrap().is_empty());
    assert_eq!(journal.ledger().unwrap().len(), 1);
}
