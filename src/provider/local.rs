//! The embedded default provider: a worker is a directory under the state dir, with an
//! `instance.json` standing in for the cloud's record and a `workspace/` for task checkouts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::{
    DeleteOutcome, Instance, InstanceStatus, Provider, ProviderError, Record, Target, WorkerSpec,
};
use crate::transport::{Transport, local::LocalTransport};

pub struct LocalProvider {
    root: PathBuf,
}

impl LocalProvider {
    /// Workers live in `root/<name>/`.
    pub fn new(root: impl Into<PathBuf>) -> LocalProvider {
        LocalProvider { root: root.into() }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn read(path: &Path) -> Result<Option<Record>, ProviderError> {
        super::read_record(path)
    }
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
        let dir = self.dir(&spec.name);
        let record_path = dir.join("instance.json");
        if let Some(existing) = Self::read(&record_path)? {
            if existing.request_id == idempotency_key {
                return Ok(existing.instance);
            }
            return Err(ProviderError::InvalidSpec(format!(
                "a worker named {} already exists (created by another request)",
                spec.name
            )));
        }
        let workspace = dir.join("workspace");
        std::fs::create_dir_all(&workspace)
            .map_err(|e| ProviderError::Transient(format!("{}: {e}", workspace.display())))?;
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
        let record = Record {
            instance: instance.clone(),
            request_id: idempotency_key.to_string(),
        };
        super::write_record(&record_path, &record)?;
        Ok(instance)
    }

    async fn wait_running(
        &self,
        name: &str,
        _timeout: Duration,
    ) -> Result<Instance, ProviderError> {
        self.get(name)
            .await?
            .ok_or_else(|| ProviderError::NotFound(format!("local worker {name}")))
    }

    async fn get(&self, name: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(Self::read(&self.dir(name).join("instance.json"))?.map(|r| r.instance))
    }

    async fn list(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<Instance>, ProviderError> {
        let records = super::read_records(&self.root, |p| Some(p.join("instance.json")))?;
        Ok(super::matching(records, selector))
    }

    async fn delete(&self, name: &str) -> Result<DeleteOutcome, ProviderError> {
        let dir = self.dir(name);
        if !dir.exists() {
            return Ok(DeleteOutcome::AlreadyGone);
        }
        // A VM's deletion ends every process on it; a local worker's ends its agents.
        kill_agents(&dir.join("workspace/tasks"));
        // The record goes first so a half-removed directory never looks like a live worker.
        let _ = std::fs::remove_file(dir.join("instance.json"));
        std::fs::remove_dir_all(&dir)
            .map_err(|e| ProviderError::Transient(format!("removing {}: {e}", dir.display())))?;
        Ok(DeleteOutcome::Deleted)
    }

    async fn confirm_deleted(&self, name: &str, _timeout: Duration) -> Result<(), ProviderError> {
        match self.get(name).await? {
            None => Ok(()),
            Some(_) => Err(ProviderError::Transient(format!(
                "local worker {name} still exists"
            ))),
        }
    }

    async fn set_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        let path = self.dir(name).join("instance.json");
        let mut record = Self::read(&path)?
            .ok_or_else(|| ProviderError::NotFound(format!("local worker {name}")))?;
        record.instance.labels = labels.clone();
        super::write_record(&path, &record)
    }

    fn connect(&self, instance: &Instance) -> Result<Box<dyn Transport>, ProviderError> {
        match &instance.target {
            Target::Local { .. } => Ok(Box::new(LocalTransport::new(instance.name.clone()))),
            other => Err(ProviderError::InvalidSpec(format!(
                "worker {} is not local ({other:?})",
                instance.name
            ))),
        }
    }
}
