//! The worker lifecycle, and nothing else: no commands run through a provider (DESIGN §1). A
//! provider hands out workers with their [`Target`]; `crate::connector` reaches them.

mod check;
pub mod gcp;
pub mod local;
pub(crate) mod record;
pub mod ssh_host;
pub mod terraform;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;

pub use crate::model::{DeleteOutcome, Instance, InstanceStatus, Target, WorkerSpec};
pub(crate) use crate::model::{EXPIRES_LABEL, expires_at, worker_labels};
pub(crate) use check::{Check, CheckStatus};

/// How many more workers a provider has room for, and what limits it (said to the user).
#[derive(Debug, Clone, PartialEq)]
pub struct Room {
    pub workers: usize,
    pub why: String,
}

/// The image a new worker boots from, and why (`cwo up --plan`, the bring-up's hint).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BootImage {
    /// What the VM's boot disk is made from (`sourceImage`).
    pub image: String,
    /// The baked image's name, when the worker boots from one (its bootstrap only checks).
    pub baked: Option<String>,
    /// Why this image, in one line.
    pub why: String,
    /// The hash the current settings bake to ("" when images do not apply).
    pub hash: String,
    /// No baked image matches the settings, and `cwo image build` would make one.
    pub build_would_help: bool,
}

/// What a plan needs from outside the provider.
pub struct PlanContext<'a> {
    /// The price catalog a cloud worker is priced from.
    pub catalog: &'a crate::cost::Catalog,
    /// The bootstrap method that applies (`native`, `ansible`, `none`).
    pub bootstrap: String,
}

/// What `cwo up --plan` shows: what creating a worker would make, without making it (each
/// provider says it in its own terms).
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum Plan {
    Local(local::LocalPlan),
    Ssh(ssh_host::SshPlan),
    Gcp(Box<gcp::GcpPlan>),
    Terraform(terraform::TerraformPlan),
}

impl Plan {
    /// The list price per hour: `None` when the provider bills nothing itself, `Some(None)`
    /// when it does but the catalog has no price for the configuration.
    pub(crate) fn list_price(&self) -> Option<Option<f64>> {
        match self {
            Plan::Gcp(p) => Some(p.hourly_cost_usd.as_ref().map(|h| h.total)),
            _ => None,
        }
    }
}

/// What a worker is priced as in the price catalog: the machine, where it runs, how it is
/// provisioned and its boot disk.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PriceSpec {
    pub machine_type: String,
    pub zone: String,
    pub spot: bool,
    pub disk_type: String,
    pub disk_size_gb: u32,
}

impl PriceSpec {
    /// The VM `[gcp]` describes, in the first of `gcp.zones`.
    pub fn of_gcp(g: &crate::config::GcpSettings) -> PriceSpec {
        PriceSpec {
            machine_type: g.machine_type.clone(),
            zone: g.zones.first().cloned().unwrap_or_default(),
            spot: g.spot,
            disk_type: g.disk_type.clone(),
            disk_size_gb: g.disk_size_gb,
        }
    }

    /// The same, in `zone` when the worker has one.
    pub(crate) fn in_zone(mut self, zone: Option<&str>) -> PriceSpec {
        if let Some(z) = zone {
            self.zone = z.to_string();
        }
        self
    }

    /// What a worker found by its labels (one no journal priced at launch) is priced as: the
    /// machine its `cwo-machine` label says, in its zone, on demand, with the default boot disk.
    pub(crate) fn from_labels(inst: &Instance) -> PriceSpec {
        PriceSpec {
            machine_type: inst.machine_type_label(),
            zone: inst.zone.clone().unwrap_or_default(),
            spot: false,
            disk_type: "pd-standard".into(),
            disk_size_gb: 10,
        }
    }

    /// Its price in `catalog`, as the journal keeps it from launch on.
    pub(crate) fn snapshot(&self, catalog: &crate::cost::Catalog) -> crate::cost::PriceSnapshot {
        crate::cost::PriceSnapshot::take(
            catalog,
            &self.machine_type,
            &self.zone,
            self.spot,
            &self.disk_type,
            self.disk_size_gb,
        )
    }
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
        crate::transport::ssh::generate_key(path, &format!("cwo-{worker}")).map_err(|source| {
            ProviderError::Key {
                worker: worker.to_string(),
                source: Box::new(source),
            }
        })
    }
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
pub(crate) async fn delete_confirmed(
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
            Ok(DeleteOutcome::AlreadyGone) => confirm(GONE_SETTLE.min(left)).await,
            Err(e) if e.kind() == ProviderErrorKind::NotFound => {
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
            Err(e)
                if matches!(
                    e.kind(),
                    ProviderErrorKind::Permission | ProviderErrorKind::InvalidSpec
                ) =>
            {
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
            "delete of {name}: {}; retry {retry} in {}",
            e.one_line(),
            humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
        ));
        tokio::time::sleep(wait).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// What a provider error means: retry, fallback and the hints decide on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    Capacity,
    Quota,
    Permission,
    NotFound,
    Transient,
    InvalidSpec,
    /// A provider's own file, key or connection (see the variant).
    Other,
}

impl ProviderErrorKind {
    /// How an error of this kind starts.
    fn prefix(self) -> &'static str {
        match self {
            ProviderErrorKind::Capacity => "no capacity",
            ProviderErrorKind::Quota => "quota exceeded",
            ProviderErrorKind::Permission => "permission denied",
            ProviderErrorKind::NotFound => "not found",
            ProviderErrorKind::Transient => "transient failure",
            ProviderErrorKind::InvalidSpec => "invalid worker spec",
            ProviderErrorKind::Other => "failed",
        }
    }
}

/// Any error, kept with its source chain.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Typed provider errors: retry and fallback decide on the kind, never on message text.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A cloud API call failed: `kind` is what it means, `what` what was being done, and the
    /// client's own error is kept as the source.
    #[error("{}: {what}", kind.prefix())]
    Api {
        kind: ProviderErrorKind,
        what: String,
        #[source]
        source: BoxError,
    },
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
    /// A provider's own file (a worker record, a Terraform directory) could not be read or
    /// written: worth another try, like a transient failure.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A host the provider must reach itself (to clean a released worker) cannot be reached.
    #[error(transparent)]
    Connect(Box<crate::connector::ConnectError>),
    /// The worker's own SSH key could not be made: nothing was created.
    #[error("the key of worker {worker}: {source}")]
    Key {
        worker: String,
        #[source]
        source: Box<crate::transport::ssh::KeyError>,
    },
    /// A provider's own record is not what cwo wrote.
    #[error("{path} is unreadable: {source}")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ProviderError {
    /// What the error means.
    pub fn kind(&self) -> ProviderErrorKind {
        match self {
            ProviderError::Api { kind, .. } => *kind,
            ProviderError::Capacity(_) => ProviderErrorKind::Capacity,
            ProviderError::Quota(_) => ProviderErrorKind::Quota,
            ProviderError::Permission(_) => ProviderErrorKind::Permission,
            ProviderError::NotFound(_) => ProviderErrorKind::NotFound,
            ProviderError::Transient(_) => ProviderErrorKind::Transient,
            ProviderError::InvalidSpec(_) => ProviderErrorKind::InvalidSpec,
            ProviderError::Io { .. }
            | ProviderError::Connect(_)
            | ProviderError::Key { .. }
            | ProviderError::Corrupt { .. } => ProviderErrorKind::Other,
        }
    }

    /// The error and its causes on one line (`error: cause: cause`), for a progress line, a
    /// check or a report field, where no "Caused by" list follows.
    pub(crate) fn one_line(&self) -> String {
        crate::util::error::one_line(self)
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name, for messages, the journal and reports (never for decisions: those
    /// are the capabilities below).
    fn kind(&self) -> &'static str;
    /// Whether a worker boots with the native bootstrap as its startup script (a cloud VM's
    /// startup-script / user-data), so cwo's own run of it waits for the boot run.
    fn boots_with_startup_script(&self) -> bool {
        false
    }
    /// The image new workers boot from, for providers that boot images (`None`: the others).
    /// `Err`: the configuration wants a baked image there is none of.
    async fn boot_image(&self) -> Option<Result<BootImage, ProviderError>> {
        None
    }
    /// Whether workers are machines cwo creates and pays for, which can outlive a controller
    /// (a reaper must watch them), rather than this machine or hosts the user owns.
    fn creates_machines(&self) -> bool {
        false
    }
    /// The labels a worker made from `spec` really carries (a provider may add its own, such
    /// as the expiry).
    fn labels_for(&self, spec: &WorkerSpec) -> BTreeMap<String, String> {
        spec.labels.clone()
    }
    /// What a worker is priced as, in `zone` when it has one of its own. A provider that bills
    /// nothing itself prices its workers as the cloud machine it was given (what the same work
    /// would have cost); one given none has no price.
    fn price_spec(&self, _zone: Option<&str>) -> PriceSpec {
        PriceSpec::default()
    }
    /// What creating `spec` would make, without making it (`cwo up --plan`).
    fn plan(&self, spec: &WorkerSpec, ctx: &PlanContext<'_>) -> Plan;
    /// What `cwo doctor` checks for this provider.
    async fn doctor(&self) -> Vec<Check> {
        Vec::new()
    }
    /// Creates the worker; calling it again with the same key returns the same worker.
    async fn create(
        &self,
        spec: &WorkerSpec,
        idempotency_key: &str,
    ) -> Result<Instance, ProviderError>;
    /// Creates several workers at once (a fleet scaling up), each spec with its own idempotency
    /// key. One result per spec, in order: the worker, or why it was not created (a worker that
    /// was not created leaves nothing behind). The default sends the single creates concurrently;
    /// a provider with a batch call of its own (Compute Engine's `regionInstances.bulkInsert`)
    /// overrides it.
    async fn create_many(
        &self,
        specs: &[(WorkerSpec, String)],
    ) -> Vec<Result<Instance, ProviderError>> {
        futures::future::join_all(specs.iter().map(|(spec, key)| self.create(spec, key))).await
    }
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
    /// Replaces the worker's labels (the reaper's marks).
    async fn set_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError>;
    /// How many more workers the provider has room for (Compute Engine: the region's CPUS quota
    /// over the machine type's vCPUs; SSH: the hosts no worker holds). `Ok(None)`: no limit
    /// known.
    async fn fleet_room(&self) -> Result<Option<Room>, ProviderError> {
        Ok(None)
    }
    /// What a person can run to delete the worker when cwo gives up.
    fn manual_delete_hint(&self, _name: &str) -> Option<String> {
        None
    }
}
