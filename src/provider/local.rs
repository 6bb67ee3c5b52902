//! The embedded default provider: a worker is a directory under the state dir, with an
//! `instance.json` standing in for the cloud's record and a `workspace/` for task checkouts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::record::{Layout, RecordStore};
use super::{
    Check, DeleteOutcome, Instance, InstanceStatus, Plan, PlanContext, PriceSpec, Provider,
    ProviderError, Target, WorkerSpec,
};

pub struct LocalProvider {
    /// `root/<name>/instance.json`.
    records: RecordStore,
    /// What a worker is priced as (the cloud machine the same work would have run on).
    priced_as: PriceSpec,
}

impl LocalProvider {
    /// Workers live in `root/<name>/`.
    pub fn new(root: impl Into<PathBuf>) -> LocalProvider {
        LocalProvider {
            records: RecordStore::new(root, Layout::InWorkerDir("instance.json"), "local worker"),
            priced_as: PriceSpec::default(),
        }
    }

    /// Prices the workers as `spec` (what the same work would have cost on that machine).
    pub(crate) fn priced_as(mut self, spec: PriceSpec) -> LocalProvider {
        self.priced_as = spec;
        self
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.records.dir().join(name)
    }
}

/// What `cwo up --plan` shows for a local worker.
#[derive(serde::Serialize)]
pub struct LocalPlan {
    pub provider: &'static str,
    pub worker: String,
    pub creates: String,
    pub labels: BTreeMap<String, String>,
    pub hourly_cost_usd: f64,
}

/// SIGKILLs the process group of every detached agent under `tasks/<ball>/<attempt>/`.
fn kill_agents(tasks: &Path) {
    let Ok(balls) = std::fs::read_dir(tasks) else {
        return;
    };
    for attempt in balls
        .flatten()
        .filter_map(|b| std::fs::read_dir(b.path()).ok())
        .flatten()
        .flatten()
    {
        let dir = attempt.path();
        if dir.join("agent.exit").exists() {
            continue;
        }
        if let Some(pid) = std::fs::read_to_string(dir.join("agent.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<libc::pid_t>().ok())
            .filter(|p| *p > 1)
        {
            // SAFETY: killpg only sends a signal, to the group the agent's launcher created.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[async_trait]
impl Provider for LocalProvider {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn price_spec(&self, zone: Option<&str>) -> PriceSpec {
        self.priced_as.clone().in_zone(zone)
    }

    fn plan(&self, spec: &WorkerSpec, _ctx: &PlanContext<'_>) -> Plan {
        Plan::Local(LocalPlan {
            provider: self.kind(),
            worker: spec.name.clone(),
            creates: format!("a directory under {}", self.records.dir().display()),
            labels: self.labels_for(spec),
            hourly_cost_usd: 0.0,
        })
    }

    async fn doctor(&self) -> Vec<Check> {
        vec![Check::ok(
            "provider",
            format!(
                "local: workers are directories under {}",
                self.records.dir().display()
            ),
        )]
    }

    async fn create(
        &self,
        spec: &WorkerSpec,
        idempotency_key: &str,
    ) -> Result<Instance, ProviderError> {
        if !valid_name(&spec.name) {
            return Err(ProviderError::InvalidSpec(format!(
                "worker name `{}` must be 1-63 lowercase letters, digits or '-'",
                spec.name
            )));
        }
        if let Some(existing) = self.records.existing(&spec.name, idempotency_key)? {
            return Ok(existing);
        }
        let dir = self.dir(&spec.name);
        let workspace = dir.join("workspace");
        std::fs::create_dir_all(&workspace).map_err(|e| ProviderError::Io {
            path: workspace.display().to_string(),
            source: e,
        })?;
        let instance = Instance {
            name: spec.name.clone(),
            status: InstanceStatus::Running,
            created_at: Utc::now(),
            labels: spec.labels.clone(),
            target: Target::Local {
                root: dir.display().to_string(),
            },
            workspace: workspace.display().to_string(),
            zone: None,
        };
        self.records.write(&instance, idempotency_key)?;
        Ok(instance)
    }

    async fn wait_running(
        &self,
        name: &str,
        _timeout: Duration,
    ) -> Result<Instance, ProviderError> {
        self.records.wait_running(name)
    }

    async fn get(&self, name: &str) -> Result<Option<Instance>, ProviderError> {
        self.records.get(name)
    }

    async fn list(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<Instance>, ProviderError> {
        self.records.list(selector)
    }

    async fn delete(&self, name: &str) -> Result<DeleteOutcome, ProviderError> {
        let dir = self.dir(name);
        if !dir.exists() {
            return Ok(DeleteOutcome::AlreadyGone);
        }
        // A VM's deletion ends every process on it; a local worker's ends its agents.
        kill_agents(&dir.join("workspace/tasks"));
        // The record goes first so a half-removed directory never looks like a live worker.
        self.records.remove(name)?;
        std::fs::remove_dir_all(&dir).map_err(|e| ProviderError::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        Ok(DeleteOutcome::Deleted)
    }

    async fn confirm_deleted(&self, name: &str, _timeout: Duration) -> Result<(), ProviderError> {
        self.records.confirm_deleted(name)
    }

    async fn set_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        self.records.set_labels(name, labels)
    }
}
