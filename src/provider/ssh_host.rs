//! `provider = "ssh"`: hosts the user already has. A worker is one host, allocated to the worker
//! while it lives; "deleting" it stops its agents and removes its workspace, never the host.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::record::{Layout, RecordStore};
use super::{
    Check, DeleteOutcome, Instance, InstanceStatus, Plan, PlanContext, PriceSpec, Provider,
    ProviderError, Target, WorkerSpec,
};
use crate::config::{HostAddr, SshSettings};
use crate::connector::Connector;
use crate::transport::ssh::SshTransport;
use crate::transport::{ExecRequest, Transport};

/// Stops every detached agent under a workspace and removes it.
const CLEAN: &str = r#"ws=$1
[ -d "$ws" ] || exit 0
for p in "$ws"/tasks/*/*/agent.pid; do
  [ -e "$p" ] || continue
  [ -e "$(dirname "$p")/agent.exit" ] && continue
  kill -KILL "-$(cat "$p")" 2>/dev/null || true
done
rm -rf "$ws"
"#;

/// What `cwo up --plan` shows for the ssh provider.
#[derive(serde::Serialize)]
pub struct SshPlan {
    provider: &'static str,
    worker: String,
    creates: &'static str,
    hosts: Vec<String>,
    workspace: String,
    hourly_cost_usd: f64,
}

pub struct SshHostProvider {
    settings: SshSettings,
    /// One JSON record per allocated host: `<records>/<worker>.json`.
    records: RecordStore,
    /// Reaches the hosts to clean a released worker's workspace.
    connector: Connector,
    /// The bootstrap's work user and workspace root, when the hosts are bootstrapped.
    work: Option<(String, String)>,
    /// What a worker is priced as (the cloud machine the same work would have run on).
    priced_as: PriceSpec,
}

impl SshHostProvider {
    pub fn new(settings: SshSettings, records: PathBuf, connector: Connector) -> SshHostProvider {
        SshHostProvider {
            settings,
            records: RecordStore::new(records, Layout::Flat, "ssh worker"),
            connector,
            work: None,
            priced_as: PriceSpec::default(),
        }
    }

    /// Prices the workers as `spec` (what the same work would have cost on that machine).
    pub(crate) fn priced_as(mut self, spec: PriceSpec) -> SshHostProvider {
        self.priced_as = spec;
        self
    }

    fn transport(&self, instance: &Instance) -> Result<SshTransport, ProviderError> {
        self.connector
            .ssh(instance)
            .map_err(|e| ProviderError::Connect(Box::new(e)))
    }

    /// On bootstrapped hosts the agents run as the work user in `<root>/<worker>`: deleting the
    /// worker stops them and removes that directory too, as that user.
    pub(crate) fn with_work_user(mut self, user: String, root: String) -> SshHostProvider {
        self.work = Some((user, root));
        self
    }

    /// Runs CLEAN on `workspace` over the connection `t`, then closes it.
    async fn clean(
        t: SshTransport,
        workspace: &str,
    ) -> Result<crate::transport::Captured, crate::transport::TransportError> {
        let cleaned = t
            .capture(ExecRequest::new([
                "sh",
                "-c",
                CLEAN,
                "cwo-clean",
                workspace,
            ]))
            .await;
        t.close().await;
        cleaned
    }

    /// Stops the work user's agents and removes its workspace; a host where that user does not
    /// exist (the bootstrap never ran) has nothing there.
    async fn clean_work(&self, instance: &Instance) {
        let Some((user, root)) = &self.work else {
            return;
        };
        let work = instance.clone().logged_in_as(user, root);
        let Ok(t) = self.transport(&work) else { return };
        match Self::clean(t, &work.workspace).await {
            Ok(out) if out.status.success() => {}
            Ok(out) => tracing::warn!(
                "worker {}: cleaning {} as {user}: {}",
                instance.name,
                work.workspace,
                out.stderr.trim()
            ),
            Err(e) => {
                tracing::debug!(worker = %instance.name, error = %e, "no work user to clean up")
            }
        }
    }
}

#[async_trait]
impl Provider for SshHostProvider {
    fn kind(&self) -> &'static str {
        "ssh"
    }

    fn price_spec(&self, zone: Option<&str>) -> PriceSpec {
        self.priced_as.clone().in_zone(zone)
    }

    fn plan(&self, spec: &WorkerSpec, _ctx: &PlanContext<'_>) -> Plan {
        Plan::Ssh(SshPlan {
            provider: self.kind(),
            worker: spec.name.clone(),
            creates: "nothing: the first free host in ssh.hosts is allocated",
            hosts: self.settings.hosts.clone(),
            workspace: self.settings.workspace.clone(),
            hourly_cost_usd: 0.0,
        })
    }

    async fn doctor(&self) -> Vec<Check> {
        let s = &self.settings;
        vec![if s.hosts.is_empty() || s.key.is_empty() {
            Check::fail(
                "provider",
                "ssh: ssh.hosts and ssh.key must both be set",
                "set [ssh] hosts = [\"user@host:22\"] and key = \"path/to/key\"",
            )
        } else {
            Check::ok("provider", format!("ssh: {} host(s)", s.hosts.len()))
        }]
    }

    async fn create(
        &self,
        spec: &WorkerSpec,
        idempotency_key: &str,
    ) -> Result<Instance, ProviderError> {
        if self.settings.hosts.is_empty() {
            return Err(ProviderError::InvalidSpec(
                "provider = \"ssh\" needs ssh.hosts = [\"user@host:port\", ...]".into(),
            ));
        }
        if self.settings.key.is_empty() {
            return Err(ProviderError::InvalidSpec(
                "provider = \"ssh\" needs ssh.key, the private key that logs in to those hosts"
                    .into(),
            ));
        }
        if let Some(existing) = self.records.existing(&spec.name, idempotency_key)? {
            return Ok(existing);
        }
        let existing = self.records.all()?;
        let in_use: Vec<String> = existing
            .iter()
            .filter_map(|r| match &r.instance.target {
                Target::Ssh { pin_as, .. } => Some(pin_as.clone()),
                _ => None,
            })
            .collect();
        let free = self
            .settings
            .hosts
            .iter()
            .map(|h| HostAddr::parse(h).map_err(|e| ProviderError::InvalidSpec(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .find(|h| !in_use.contains(&h.to_string()))
            .ok_or_else(|| {
                ProviderError::Capacity(format!(
                    "all {} host(s) in ssh.hosts are in use by other workers",
                    self.settings.hosts.len()
                ))
            })?;
        let workspace = crate::model::workspace_of(&self.settings.workspace, &spec.name);
        let instance = Instance {
            name: spec.name.clone(),
            status: InstanceStatus::Running,
            created_at: Utc::now(),
            labels: spec.labels.clone(),
            target: Target::Ssh {
                host: free.host.clone(),
                port: free.port,
                user: free.user.clone(),
                key_path: self.settings.key.clone(),
                host_key: None,
                pin_as: free.to_string(),
            },
            workspace,
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

    /// One worker per host: the hosts in ssh.hosts no worker holds.
    async fn fleet_room(&self) -> Result<Option<crate::provider::Room>, ProviderError> {
        let held = self.records.all()?.len();
        let hosts = self.settings.hosts.len();
        Ok(Some(crate::provider::Room {
            workers: hosts.saturating_sub(held),
            why: format!("ssh.hosts ({hosts} host(s), one worker each)"),
        }))
    }

    /// A host the user owns is alive for as long as it is allocated: an unreachable host is a
    /// network problem to wait out, not a dead worker.
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
        let Some(instance) = self.get(name).await? else {
            return Ok(DeleteOutcome::AlreadyGone);
        };
        self.clean_work(&instance).await;
        let t = self.transport(&instance)?;
        let out = match Self::clean(t, &instance.workspace).await {
            Ok(out) => out,
            // The host is the user's and costs nothing while cwo holds it; an unreachable one is
            // released rather than held forever, and the user is told what may be left there.
            Err(e) => {
                tracing::warn!(
                    "worker {name}: could not reach the host to clean {} ({e}); released anyway, the directory may be left there",
                    instance.workspace
                );
                self.records.remove(name)?;
                return Ok(DeleteOutcome::Deleted);
            }
        };
        if !out.status.success() {
            return Err(ProviderError::Transient(format!(
                "cleaning {name}'s workspace ({}): {}",
                out.status,
                out.stderr.trim()
            )));
        }
        self.records.remove(name)?;
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
