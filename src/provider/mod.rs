//! The worker lifecycle, and nothing else: no commands run through a provider (DESIGN §1).

pub mod gcp;
pub mod local;
pub mod ssh_host;
pub mod terraform;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::transport::Transport;

pub use crate::model::{
    DeleteOutcome, EXPIRES_LABEL, Instance, InstanceStatus, Target, WorkerSpec, expires_at,
    worker_labels,
};

/// A transport to `instance`'s SSH target, with the connection timing and the journal the host
/// key is pinned in.
pub fn ssh_transport(
    instance: &Instance,
    ssh: &crate::config::SshSettings,
    journal: &crate::journal::Journal,
) -> Result<crate::transport::ssh::SshTransport, ProviderError> {
    let Target::Ssh {
        host,
        port,
        user,
        key_path,
        host_key,
        pin_as,
    } = &instance.target
    else {
        return Err(ProviderError::InvalidSpec(format!(
            "worker {} is not reached over SSH ({:?})",
            instance.name, instance.target
        )));
    };
    if host.is_empty() {
        return Err(ProviderError::Transient(format!(
            "worker {} has no address yet",
            instance.name
        )));
    }
    Ok(crate::transport::ssh::SshTransport::new(
        instance.name.clone(),
        pin_as.clone(),
        crate::transport::ssh::SshTarget {
            host: host.clone(),
            port: *port,
            user: user.clone(),
            key_path: key_path.into(),
            host_key: host_key.clone(),
            connect_timeout: ssh.connect_timeout,
            keepalive: ssh.keepalive,
        },
        Some(journal.clone()),
    ))
}

/// What the local and ssh providers keep per worker (the cloud keeps this for gcp).
#[derive(Serialize, Deserialize)]
pub(crate) struct Record {
    pub instance: Instance,
    pub request_id: String,
}

/// Reads a record written by [`write_record`]; `None` when there is none.
pub(crate) fn read_record(path: &std::path::Path) -> Result<Option<Record>, ProviderError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProviderError::Transient(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ProviderError::Transient(format!("{}: {e}", path.display()))),
    }
}

/// Every record under `dir`, sorted by worker name: `record_of` maps each entry of `dir` to the
/// record file it holds, if any. A missing `dir` holds none; any other read error is an error.
pub(crate) fn read_records(
    dir: &std::path::Path,
    record_of: impl Fn(&std::path::Path) -> Option<std::path::PathBuf>,
) -> Result<Vec<Record>, ProviderError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(ProviderError::Transient(format!("{}: {e}", dir.display()))),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| ProviderError::Transient(format!("{}: {e}", dir.display())))?
            .path();
        if let Some(file) = record_of(&path)
            && let Some(r) = read_record(&file)?
        {
            out.push(r);
        }
    }
    out.sort_by(|a, b| a.instance.name.cmp(&b.instance.name));
    Ok(out)
}

/// The instances of `records` that carry every label in `selector`.
pub(crate) fn matching(records: Vec<Record>, selector: &BTreeMap<String, String>) -> Vec<Instance> {
    records
        .into_iter()
        .map(|r| r.instance)
        .filter(|i| selector.iter().all(|(k, v)| i.labels.get(k) == Some(v)))
        .collect()
}

/// The worker's own ed25519 key at `path`: read when it exists, generated (private, 0600)
/// otherwise. Returns the public key line.
pub(crate) fn worker_key(path: &std::path::Path, worker: &str) -> Result<String, ProviderError> {
    if path.exists() {
        russh::keys::PrivateKey::read_openssh_file(path)
            .map_err(|e| ProviderError::InvalidSpec(format!("{}: {e}", path.display())))?
            .public_key()
            .to_openssh()
            .map_err(|e| ProviderError::InvalidSpec(e.to_string()))
    } else {
        crate::transport::ssh::generate_key(path, &format!("cwo-{worker}"))
            .map_err(ProviderError::InvalidSpec)
    }
}

/// Writes a provider's own JSON record atomically (temp file, then rename), as the local and
/// ssh providers keep their workers.
pub(crate) fn write_record(
    path: &std::path::Path,
    record: &impl Serialize,
) -> Result<(), ProviderError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(record).expect("a record serializes"),
    )
    .and_then(|_| std::fs::rename(&tmp, path))
    .map_err(|e| ProviderError::Transient(format!("{}: {e}", path.display())))
}

/// How long a delete that answered "gone" may still show the VM in a list or get (Compute's
/// reads are eventually consistent) before the delete is sent again: a spurious 404 costs
/// seconds, not the whole deadline.
const GONE_SETTLE: Duration = Duration::from_secs(10);

/// Deletes a worker and confirms it is gone, under the one retry policy for deletion: every
/// retryable failure (transient, or a VM still there after its delete) is retried with backoff
/// (1 s doubling to 30 s) until `deadline` has passed since the first try, and each retry is
/// reported through `progress` ("delete of X: …, retry N in 8 s"). Permission and invalid-spec
/// errors end it at once. The provider's own calls do not retry deletion on their own.
pub async fn delete_confirmed(
    provider: &dyn Provider,
    name: &str,
    deadline: Duration,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<DeleteOutcome, ProviderError> {
    let end = tokio::time::Instant::now() + deadline;
    let mut delay = Duration::from_secs(1);
    let mut retry = 0u32;
    // Deleted when any call of ours deleted it; AlreadyGone when it was gone every time we asked.
    let mut outcome = DeleteOutcome::AlreadyGone;
    loop {
        // The deadline holds inside a call too (an operation that never finishes, a poll that
        // keeps failing): a call cut short is sent again, or reported, like any failure.
        let in_time = |left: Duration| Duration::from_secs(1).max(left);
        let unanswered = || {
            ProviderError::Transient(format!(
                "no answer within teardown_timeout ({})",
                humantime::format_duration(deadline)
            ))
        };
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        let deleted = tokio::time::timeout(in_time(left), provider.delete(name))
            .await
            .unwrap_or_else(|_| Err(unanswered()));
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        let confirm = |wait: Duration| async move {
            tokio::time::timeout(in_time(wait), provider.confirm_deleted(name, wait))
                .await
                .unwrap_or_else(|_| Err(unanswered()))
        };
        let result = match deleted {
            // Gone (or a 404 that may be spurious): confirm briefly, delete again if still there.
            Ok(DeleteOutcome::AlreadyGone) | Err(ProviderError::NotFound(_)) => {
                confirm(GONE_SETTLE.min(left)).await
            }
            Ok(DeleteOutcome::Deleted) => {
                outcome = DeleteOutcome::Deleted;
                confirm(left).await
            }
            Err(e) => Err(e),
        };
        let e = match result {
            Ok(()) => return Ok(outcome),
            Err(e @ (ProviderError::Permission(_) | ProviderError::InvalidSpec(_))) => {
                return Err(e);
            }
            Err(e) => e,
        };
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(e);
        }
        retry += 1;
        let wait = delay.min(left);
        progress(format!(
            "delete of {name}: {e}; retry {retry} in {}",
            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
        ));
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// Typed provider errors: retry and fallback decide on the kind, never on message text.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("no capacity: {0}")]
    Capacity(String),
    #[error("quota exceeded: {0}")]
    Quota(String),
    #[error("permission denied: {0}")]
    Permission(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("transient failure: {0}")]
    Transient(String),
    #[error("invalid worker spec: {0}")]
    InvalidSpec(String),
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Creates the worker; calling it again with the same key returns the same worker.
    async fn create(
        &self,
        spec: &WorkerSpec,
        idempotency_key: &str,
    ) -> Result<Instance, ProviderError>;
    async fn wait_running(&self, name: &str, timeout: Duration) -> Result<Instance, ProviderError>;
    /// `None` = the worker is gone.
    async fn get(&self, name: &str) -> Result<Option<Instance>, ProviderError>;
    /// Workers carrying every label in `selector`. Any partial failure is an error.
    async fn list(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<Instance>, ProviderError>;
    /// Already gone is success.
    async fn delete(&self, name: &str) -> Result<DeleteOutcome, ProviderError>;
    async fn confirm_deleted(&self, name: &str, timeout: Duration) -> Result<(), ProviderError>;
    /// A transport to the worker.
    fn connect(&self, instance: &Instance) -> Result<Box<dyn Transport>, ProviderError>;
    /// Replaces the worker's labels (the reaper's marks).
    async fn set_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError>;
    /// What a person can run to delete the worker when cwo gives up.
    fn manual_delete_hint(&self, _name: &str) -> Option<String> {
        None
    }
}
