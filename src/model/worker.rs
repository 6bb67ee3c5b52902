//! A worker as every layer sees it: what to bring up, what came up, and how to reach it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::labels::{EXPIRES_LABEL, IMAGING_GRACE, IMAGING_LABEL};

/// What to bring up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Deterministic name, also the journal key.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Machine type the work is priced as.
    pub machine_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InstanceStatus {
    Provisioning,
    Running,
    Stopping,
    Terminated,
}

impl InstanceStatus {
    /// Stopping, stopped or suspended: Compute Engine has cleared the VM's termination timer
    /// (its TTL no longer runs) and it can do no work, but its disks are still billed.
    pub(crate) fn is_stopped(self) -> bool {
        matches!(self, InstanceStatus::Stopping | InstanceStatus::Terminated)
    }
}

/// How to reach a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Target {
    /// A directory on this machine; `root` holds the worker's files.
    Local { root: String },
    /// An SSH server.
    Ssh {
        host: String,
        port: u16,
        user: String,
        key_path: String,
        /// The host key the provider knows the host has (OpenSSH line), if it knows one.
        host_key: Option<String>,
        /// What the host key is pinned under in the journal.
        pin_as: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub status: InstanceStatus,
    /// The provider's own creation time (the start of billing).
    pub created_at: DateTime<Utc>,
    pub labels: BTreeMap<String, String>,
    pub target: Target,
    /// Where task directories go on the worker.
    pub workspace: String,
    /// The cloud zone, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl Instance {
    /// When the worker's TTL ends (label `cwo-expires-at`, Unix seconds); None without a TTL.
    pub(crate) fn expires_at(&self) -> Option<i64> {
        self.labels.get(EXPIRES_LABEL)?.parse().ok()
    }

    /// An image builder stopped for imaging less than `IMAGING_GRACE` ago (label `cwo-imaging`):
    /// not to be deleted for being stopped while its build goes on.
    pub(crate) fn being_imaged(&self) -> bool {
        self.labels
            .get(IMAGING_LABEL)
            .and_then(|m| m.parse::<i64>().ok())
            .is_some_and(|at| {
                (0..IMAGING_GRACE.as_secs() as i64).contains(&(Utc::now().timestamp() - at))
            })
    }

    /// The machine type the worker was created as (label `cwo-machine`), or "unknown".
    pub(crate) fn machine_type_label(&self) -> String {
        self.labels
            .get("cwo-machine")
            .cloned()
            .unwrap_or_else(|| "unknown".into())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    AlreadyGone,
}

impl Instance {
    /// This worker logged in as `user`, in its own directory under the workspace `root` (one
    /// directory per worker): how the agent's work sees a bootstrapped worker or a host's
    /// work user.
    pub(crate) fn logged_in_as(mut self, user: &str, root: &str) -> Instance {
        if let Target::Ssh { user: u, .. } = &mut self.target {
            *u = user.to_string();
        }
        self.workspace = workspace_of(root, &self.name);
        self
    }
}

/// The worker's own directory under a workspace root shared by workers (`<root>/<worker>`): where
/// its task directories go on a host or VM.
pub(crate) fn workspace_of(root: &str, worker: &str) -> String {
    format!("{}/{worker}", root.trim_end_matches('/'))
}
