//! Compute Engine VMs through the official `google-cloud-compute-v1` crate.
//!
//! Money safety is part of the request itself: every VM carries `maxRunDuration` with
//! `instanceTerminationAction: DELETE` (GCE deletes it even if cwo never comes back), the
//! `cwo-managed` labels the reaper finds it by, no service account, and only its own worker key.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use google_cloud_compute_v1::client::{
    Disks, Firewalls, GlobalOperations, Images, Instances, RegionInstances, Regions, ZoneOperations,
};
use google_cloud_compute_v1::model::{
    self as gce, AccessConfig, AttachedDisk, AttachedDiskInitializeParams, Firewall, Metadata,
    NetworkInterface, Operation, Scheduling, Tags,
};
use tokio::sync::OnceCell;

use crate::util::gcp_api::configure;

pub(crate) mod budget;
mod bulk;
mod doctor;
pub(crate) mod images;
pub(crate) mod import;
pub(crate) use budget::{AlertSpec, Amount, BudgetApi};

use super::{
    BootImage, Check, DeleteOutcome, Instance, InstanceStatus, Plan, PlanContext, PriceSpec,
    Provider, ProviderError, ProviderErrorKind, Target, WorkerSpec,
};
use crate::config::{GcpSettings, SshSettings};

/// The roles the account cwo runs as needs on gcp.project, and what each is for.
pub(crate) const ROLES: &str = "roles/compute.instanceAdmin.v1 (create, delete, list, setLabels, getGuestAttributes) and roles/compute.securityAdmin (the SSH firewall rule)";

/// How long an operation may take before cwo stops waiting for it.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a freshly created VM may stay invisible to `get` (eventual consistency).
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(120);
/// Retries of a call that failed with a transient error (429, 5xx, timeouts).
const TRANSIENT_TRIES: u32 = 5;

/// Publishes the SSH host key through guest attributes (images without Google's guest agent,
/// such as Alpine, do not) so cwo can pin it from the API rather than trust the network.
pub(crate) const HOSTKEY_SCRIPT: &str = r#"#!/bin/sh
# cwo: publish this VM's SSH host key where cwo can read it through the Compute API.
k=/etc/ssh/ssh_host_ed25519_key.pub
i=0
while [ ! -f "$k" ] && [ "$i" -lt 60 ]; do sleep 1; i=$((i + 1)); done
if [ -f "$k" ] && command -v curl >/dev/null 2>&1; then
  curl -sf -X PUT -H "Metadata-Flavor: Google" --data "$(cut -d' ' -f2 "$k")" \
    http://metadata.google.internal/computeMetadata/v1/instance/guest-attributes/hostkeys/ssh-ed25519
fi
"#;

struct Clients {
    instances: Instances,
    operations: ZoneOperations,
    firewalls: Firewalls,
    /// `regionInstances.bulkInsert` and its region operations.
    region_instances: RegionInstances,
    /// A region's zones (for a bulk insert's location policy).
    regions: Regions,
    /// The boot disks of a bulk insert's VMs, labelled with their worker afterwards.
    disks: Disks,
    /// cwo's worker images (`cwo image`), and their global operations.
    images: Images,
    global_operations: GlobalOperations,
}

pub struct GcpProvider {
    settings: GcpSettings,
    /// Workspace location and connection timing on the VMs.
    ssh: SshSettings,
    project_slug: String,
    keys_dir: PathBuf,
    /// The VM's startup script and user-data: the native bootstrap, or only the host-key
    /// publisher when another bootstrap (or none) is configured.
    startup_script: String,
    clients: OnceCell<Clients>,
    firewall: OnceCell<()>,
    /// Zone of each VM seen, so lookups do not search every zone.
    zones: Mutex<HashMap<String, String>>,
    /// The zones of gcp.zones' region, asked once (a bulk insert denies the others).
    region_zones: OnceCell<Vec<String>>,
    /// The hash the current settings bake an image to (`None`: baked images do not apply).
    image_hash: Option<String>,
    /// The image new workers boot from, decided at the first create (`images.rs`).
    boot: std::sync::Mutex<Option<images::Chosen>>,
}

/// What `cwo up --plan` shows for gcp: the exact instance body, the firewall rule, the price.
#[derive(serde::Serialize)]
pub struct GcpPlan {
    provider: &'static str,
    project: String,
    zones: Vec<String>,
    ttl: String,
    instance: gce::Instance,
    firewall: FirewallPlan,
    service_accounts: Vec<String>,
    bootstrap: String,
    /// `None`: no price for this machine type in this region.
    pub hourly_cost_usd: Option<HourlyPlan>,
}

#[derive(serde::Serialize)]
struct FirewallPlan {
    name: String,
    network: String,
    allow: String,
    source_ranges: Vec<String>,
    target_tags: Vec<String>,
}

#[derive(serde::Serialize)]
pub struct HourlyPlan {
    machine: f64,
    disk: f64,
    external_ip: f64,
    pub total: f64,
}

/// A TTL as settings and plans write it: `1h 30m`, or `none`.
pub(crate) fn ttl_text(ttl: Option<Duration>) -> String {
    ttl.map(|t| humantime::format_duration(t).to_string())
        .unwrap_or_else(|| "none".into())
}

/// The network tag the firewall rule targets.
pub(crate) fn network_tag(project_slug: &str) -> String {
    format!("cwo-ssh-{project_slug}")
}

pub(crate) fn firewall_name(project_slug: &str) -> String {
    format!("cwo-ssh-{project_slug}")
}

fn last_segment(s: &str) -> String {
    s.rsplit('/').next().unwrap_or(s).to_string()
}

/// Classifies an API error by its HTTP status and the structured `reason` of Google's error
/// payload (never by message text); the client's error is kept as the source.
pub(crate) fn classify(
    err: google_cloud_compute_v1::Error,
    what: &str,
    insert: bool,
) -> ProviderError {
    let kind = kind_of(&err, insert);
    ProviderError::Api {
        kind,
        what: what.to_string(),
        source: Box::new(err),
    }
}

fn kind_of(err: &google_cloud_compute_v1::Error, insert: bool) -> ProviderErrorKind {
    use ProviderErrorKind as K;
    use google_cloud_gax::error::rpc::{Code, StatusDetails};
    // The structured reasons: ErrorInfo details (Compute's legacy `errors[].reason` arrive as
    // those too), or the raw payload when it was not a status at all.
    let mut reasons: Vec<String> = Vec::new();
    let mut quota_failure = false;
    if let Some(status) = err.status() {
        for d in &status.details {
            match d {
                StatusDetails::ErrorInfo(info) => reasons.push(info.reason.to_ascii_lowercase()),
                StatusDetails::QuotaFailure(_) => quota_failure = true,
                _ => {}
            }
        }
    }
    if let Some(payload) = err.http_payload()
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload)
    {
        for e in v
            .pointer("/error/errors")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(r) = e.get("reason").and_then(|r| r.as_str()) {
                reasons.push(r.to_ascii_lowercase());
            }
        }
    }
    let code = err.status().map(|s| s.code);
    let rate_limited = reasons
        .iter()
        .any(|r| r.contains("ratelimit") || r.contains("rate_limit"));
    let quota = quota_failure || reasons.iter().any(|r| r.contains("quota"));
    match (err.http_status_code(), code) {
        (Some(404), _) | (_, Some(Code::NotFound)) => K::NotFound,
        (Some(503), _) if insert => K::Capacity,
        (Some(429), _) => K::Transient,
        _ if rate_limited => K::Transient,
        _ if quota => K::Quota,
        (_, Some(Code::ResourceExhausted)) => K::Quota,
        (Some(500) | Some(502) | Some(503) | Some(504), _) => K::Transient,
        (Some(401) | Some(403), _) | (_, Some(Code::PermissionDenied | Code::Unauthenticated)) => {
            K::Permission
        }
        (Some(400) | Some(409) | Some(412), _) => K::InvalidSpec,
        (Some(_), _) => K::Transient,
        (None, _) if err.is_authentication() => K::Permission,
        (None, _) => K::Transient,
    }
}

/// Classifies a finished operation's error codes.
fn classify_operation(op: &Operation, what: &str) -> Option<ProviderError> {
    let codes: Vec<(String, String)> = op
        .error
        .as_ref()
        .map(|e| {
            e.errors
                .iter()
                .map(|x| {
                    (
                        x.code.clone().unwrap_or_default(),
                        x.message.clone().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if codes.is_empty() && op.http_error_status_code.is_none() {
        return None;
    }
    let detail = codes
        .iter()
        .map(|(c, m)| format!("{c}: {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let msg = format!(
        "{what} failed ({}): {detail}",
        op.http_error_status_code
            .map(|c| c.to_string())
            .unwrap_or_default()
    );
    let has = |pred: fn(&str) -> bool| codes.iter().any(|(c, _)| pred(c));
    let capacity = has(|c| c.contains("RESOURCE_POOL_EXHAUSTED") || c == "ZONE_RESOURCE_EXHAUSTED");
    let quota = has(|c| c.contains("QUOTA"));
    let permission = has(|c| c.contains("PERMISSION") || c == "FORBIDDEN");
    let not_found = has(|c| c == "RESOURCE_NOT_FOUND");
    let invalid =
        has(|c| c.contains("INVALID") || c.contains("BAD_REQUEST") || c == "UNSUPPORTED_OPERATION");
    let kind = if capacity {
        ProviderError::Capacity(msg)
    } else if quota {
        ProviderError::Quota(msg)
    } else if permission {
        ProviderError::Permission(msg)
    } else if not_found {
        ProviderError::NotFound(msg)
    } else if invalid {
        ProviderError::InvalidSpec(msg)
    } else {
        ProviderError::Transient(msg)
    };
    Some(kind)
}

fn status_of(s: Option<&gce::instance::Status>) -> InstanceStatus {
    use gce::instance::Status as S;
    match s {
        Some(S::Running) => InstanceStatus::Running,
        Some(S::Stopping) | Some(S::Suspending) => InstanceStatus::Stopping,
        Some(S::Stopped) | Some(S::Suspended) | Some(S::Terminated) => InstanceStatus::Terminated,
        // On its way (or a state this crate version does not know): never taken for stopped,
        // which every command deletes at once.
        _ => InstanceStatus::Provisioning,
    }
}

impl GcpProvider {
    pub fn new(
        settings: GcpSettings,
        ssh: SshSettings,
        project_slug: String,
        keys_dir: PathBuf,
    ) -> GcpProvider {
        GcpProvider {
            settings,
            ssh,
            project_slug,
            keys_dir,
            startup_script: HOSTKEY_SCRIPT.to_string(),
            clients: OnceCell::new(),
            firewall: OnceCell::new(),
            zones: Mutex::new(HashMap::new()),
            region_zones: OnceCell::new(),
            image_hash: None,
            boot: std::sync::Mutex::default(),
        }
    }

    /// Workers boot from the newest image baked with `hash` when `gcp.use_image` allows it.
    pub(crate) fn with_image_hash(mut self, hash: String) -> GcpProvider {
        self.image_hash = Some(hash);
        self
    }

    /// Boots the VMs with `script` as startup-script and user-data (so boot and setup overlap).
    pub(crate) fn with_startup_script(mut self, script: String) -> GcpProvider {
        self.startup_script = script;
        self
    }

    async fn clients(&self) -> Result<&Clients, ProviderError> {
        self.clients
            .get_or_try_init(|| async {
                let s = &self.settings;
                if s.project.is_empty() {
                    return Err(ProviderError::InvalidSpec(
                        "provider = \"gcp\" needs gcp.project".into(),
                    ));
                }
                macro_rules! build {
                    ($client:ty) => {{
                        configure(<$client>::builder(), &s.endpoint, &s.credentials)
                            .build()
                            .await
                            .map_err(|e| {
                                ProviderError::Permission(format!(
                                    "cannot set up the Compute API client (credentials?): {e}"
                                ))
                            })?
                    }};
                }
                Ok(Clients {
                    instances: build!(Instances),
                    operations: build!(ZoneOperations),
                    firewalls: build!(Firewalls),
                    region_instances: build!(RegionInstances),
                    regions: build!(Regions),
                    disks: build!(Disks),
                    images: build!(Images),
                    global_operations: build!(GlobalOperations),
                })
            })
            .await
    }

    fn remember_zone(&self, name: &str, zone: &str) {
        self.zones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), zone.to_string());
    }

    fn known_zone(&self, name: &str) -> Option<String> {
        self.zones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    fn key_path(&self, name: &str) -> PathBuf {
        self.keys_dir.join(name)
    }

    /// Runs `call` until it succeeds or fails with something other than a transient error.
    async fn retry<T, F, Fut>(&self, mut call: F) -> Result<T, ProviderError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut tries = 0;
        loop {
            match call().await {
                Err(e)
                    if e.kind() == ProviderErrorKind::Transient && tries + 1 < TRANSIENT_TRIES =>
                {
                    tracing::debug!(error = %e.one_line(), "transient; retrying");
                    tries += 1;
                    let jitter = Duration::from_millis(
                        rand::random::<u64>() % (delay.as_millis() as u64 / 2 + 1),
                    );
                    tokio::time::sleep(delay + jitter).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                other => return other,
            }
        }
    }

    /// Polls a zone operation until DONE; returns it with its error (if any) classified.
    async fn wait_operation(
        &self,
        zone: &str,
        op: Operation,
        what: &str,
    ) -> Result<Operation, ProviderError> {
        let c = self.clients().await?;
        self.wait_done(op, what, |name| async move {
            c.operations
                .get()
                .set_project(&self.settings.project)
                .set_zone(zone)
                .set_operation(name)
                .send()
                .await
        })
        .await
    }

    /// Polls an operation (zone or region: `get` reads it again by name) until DONE, retrying
    /// transient read failures; returns it with its error (if any) classified.
    async fn wait_done<F, Fut>(
        &self,
        op: Operation,
        what: &str,
        get: F,
    ) -> Result<Operation, ProviderError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<Operation, google_cloud_compute_v1::Error>>,
    {
        let mut op = op;
        let deadline = tokio::time::Instant::now() + OPERATION_TIMEOUT;
        let mut delay = Duration::from_millis(50);
        while op.status != Some(gce::operation::Status::Done) {
            if tokio::time::Instant::now() > deadline {
                return Err(ProviderError::Transient(format!(
                    "{what}: operation {} still not done after {}",
                    op.name.clone().unwrap_or_default(),
                    humantime::format_duration(OPERATION_TIMEOUT)
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            let name = op.name.clone().unwrap_or_default();
            op = self
                .retry(|| async {
                    get(name.clone())
                        .await
                        .map_err(|e| classify(e, what, false))
                })
                .await?;
        }
        if let Some(e) = classify_operation(&op, what) {
            return Err(e);
        }
        // The crate's own check too: DONE is not success.
        op.clone()
            .to_result()
            .map_err(|e| ProviderError::Transient(format!("{what}: {e}")))?;
        Ok(op)
    }

    /// The source range allowed to reach SSH: the setting, or this machine's public address.
    async fn ssh_source(&self) -> Result<String, ProviderError> {
        if !self.settings.ssh_source.is_empty() {
            return Ok(self.settings.ssh_source.clone());
        }
        let resp = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| ProviderError::Transient(e.to_string()))?
            .get("https://api.ipify.org")
            .send()
            .await
            .and_then(|r| r.error_for_status());
        let ip = match resp {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => {
                return Err(ProviderError::InvalidSpec(format!(
                    "cannot detect this machine's public address for the SSH firewall rule ({e}); set gcp.ssh_source = \"<your address>/32\""
                )));
            }
        };
        let ip: std::net::IpAddr = ip.trim().parse().map_err(|_| {
            ProviderError::InvalidSpec(format!(
                "the public address detection answered `{}`; set gcp.ssh_source",
                ip.trim()
            ))
        })?;
        Ok(match ip {
            std::net::IpAddr::V4(v4) => format!("{v4}/32"),
            std::net::IpAddr::V6(v6) => format!("{v6}/128"),
        })
    }

    /// The firewall rule letting SSH in from the controller's address only; created or
    /// corrected once per run, idempotently.
    pub(crate) async fn ensure_firewall(&self) -> Result<(), ProviderError> {
        self.firewall
            .get_or_try_init(|| async {
                let c = self.clients().await?;
                let source = self.ssh_source().await?;
                let name = firewall_name(&self.project_slug);
                let rule = Firewall::new()
                    .set_name(&name)
                    .set_network(&self.settings.network)
                    .set_direction(gce::firewall::Direction::Ingress)
                    .set_description("cwo: SSH to cwo workers from the controller only")
                    .set_allowed([gce::firewall::Allowed::new()
                        .set_ip_protocol("tcp")
                        .set_ports([self.settings.ssh_port.to_string()])])
                    .set_source_ranges([source.clone()])
                    .set_target_tags([network_tag(&self.project_slug)]);
                let p = &self.settings.project;
                let existing = c
                    .firewalls
                    .get()
                    .set_project(p)
                    .set_firewall(&name)
                    .send()
                    .await;
                match existing {
                    Ok(fw) if fw.source_ranges == vec![source.clone()] => Ok(()),
                    Ok(_) => {
                        let op = c
                            .firewalls
                            .patch()
                            .set_project(p)
                            .set_firewall(&name)
                            .set_body(rule)
                            .send()
                            .await
                            .map_err(|e| classify(e, "updating the SSH firewall rule", false))?;
                        op.to_result().map(|_| ()).map_err(|e| {
                            ProviderError::Transient(format!("updating the SSH firewall rule: {e}"))
                        })
                    }
                    Err(e) if e.http_status_code() == Some(404) => {
                        match c
                            .firewalls
                            .insert()
                            .set_project(p)
                            .set_body(rule)
                            .send()
                            .await
                        {
                            Ok(op) => op.to_result().map(|_| ()).map_err(|e| {
                                ProviderError::Transient(format!(
                                    "creating the SSH firewall rule: {e}"
                                ))
                            }),
                            // Created meanwhile by another controller.
                            Err(e) if e.http_status_code() == Some(409) => Ok(()),
                            Err(e) => Err(classify(e, "creating the SSH firewall rule", false)),
                        }
                    }
                    Err(e) => Err(classify(e, "reading the SSH firewall rule", false)),
                }
            })
            .await
            .map(|_| ())
    }

    /// The instance body `instances.insert` sends, and the one `cwo up --plan` prints: the one
    /// place it is built. The worker's own labels ([`super::worker_labels`]) are set here, so no
    /// caller can send or show a body without them; the boot disk carries their identity part,
    /// so the billing export attributes its cost to the worker too.
    pub(crate) fn instance_body(
        &self,
        spec: &WorkerSpec,
        zone: &str,
        public_key: &str,
    ) -> gce::Instance {
        // The worker's identity, which never changes during its life: `cwo-expires-at` and the
        // reaper's marks are the VM's (setLabels on the instance does not reach the disk).
        const DISK_LABELS: [&str; 3] = ["cwo-managed", "cwo-project", "cwo-worker"];
        let s = &self.settings;
        let mut labels = self.labels_for(spec);
        // The image chosen at the first create (`boot_image_choice`); until then, gcp.image.
        let chosen = self.chosen_boot_image();
        let baked = chosen.as_ref().and_then(|b| b.baked.clone());
        let source_image = match (&chosen, &baked) {
            (Some(b), Some(_)) => b.image.clone(),
            _ => s.image.clone(),
        };
        if let Some(name) = &baked {
            labels.insert(images::IMAGE_LABEL.into(), name.clone());
        }
        let disk_labels: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| DISK_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut scheduling = Scheduling::new().set_provisioning_model(if s.spot {
            gce::scheduling::ProvisioningModel::Spot
        } else {
            gce::scheduling::ProvisioningModel::Standard
        });
        if let Some(ttl) = s.ttl {
            scheduling = scheduling
                .set_instance_termination_action(gce::scheduling::InstanceTerminationAction::Delete)
                .set_max_run_duration(gce::Duration::new().set_seconds(ttl.as_secs() as i64));
        } else if s.spot {
            scheduling = scheduling.set_instance_termination_action(
                gce::scheduling::InstanceTerminationAction::Delete,
            );
        }
        let item = |k: &str, v: &str| gce::metadata::Items::new().set_key(k).set_value(v);
        gce::Instance::new()
            .set_name(&spec.name)
            .set_machine_type(format!("zones/{zone}/machineTypes/{}", s.machine_type))
            .set_labels(labels)
            .set_tags(Tags::new().set_items([network_tag(&self.project_slug)]))
            .set_disks([AttachedDisk::new()
                .set_boot(true)
                .set_auto_delete(true)
                .set_initialize_params(
                    AttachedDiskInitializeParams::new()
                        .set_source_image(&source_image)
                        .set_disk_size_gb(s.disk_size_gb as i64)
                        .set_disk_type(format!("zones/{zone}/diskTypes/{}", s.disk_type))
                        .set_labels(disk_labels),
                )])
            .set_network_interfaces([NetworkInterface::new()
                .set_network(&s.network)
                .set_access_configs([AccessConfig::new()
                    .set_name("External NAT")
                    .set_type(gce::access_config::Type::OneToOneNat)])])
            .set_metadata(Metadata::new().set_items([
                item("ssh-keys", &format!("{}:{}", s.ssh_user, public_key.trim())),
                item("block-project-ssh-keys", "TRUE"),
                item("enable-oslogin", "FALSE"),
                item("enable-guest-attributes", "TRUE"),
                item("startup-script", &self.startup_script),
                item("user-data", &self.startup_script),
            ]))
            .set_scheduling(scheduling)
        // No service accounts: the VM holds no credentials at all.
    }

    fn to_instance(&self, vm: &gce::Instance, host_key: Option<String>) -> Instance {
        let name = vm.name.clone().unwrap_or_default();
        let zone = vm.zone.as_deref().map(last_segment);
        if let Some(z) = &zone {
            self.remember_zone(&name, z);
        }
        let ip = vm
            .network_interfaces
            .first()
            .and_then(|n| n.access_configs.first())
            .and_then(|a| a.nat_ip.clone())
            .unwrap_or_default();
        Instance {
            status: status_of(vm.status.as_ref()),
            created_at: vm
                .creation_timestamp
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(Utc::now),
            labels: vm
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            target: Target::Ssh {
                host: ip,
                port: self.settings.ssh_port,
                user: self.settings.ssh_user.clone(),
                key_path: self.key_path(&name).display().to_string(),
                host_key,
                pin_as: name.clone(),
            },
            workspace: crate::model::workspace_of(&self.ssh.workspace, &name),
            zone,
            name,
        }
    }

    /// `instances.get` in one zone; `None` on 404.
    async fn get_in(&self, zone: &str, name: &str) -> Result<Option<gce::Instance>, ProviderError> {
        let c = self.clients().await?;
        self.retry(|| async {
            match c
                .instances
                .get()
                .set_project(&self.settings.project)
                .set_zone(zone)
                .set_instance(name)
                .send()
                .await
            {
                Ok(vm) => Ok(Some(vm)),
                Err(e) if e.http_status_code() == Some(404) => Ok(None),
                Err(e) => Err(classify(e, &format!("reading VM {name}"), false)),
            }
        })
        .await
    }

    /// Finds a VM by name: its known zone first, then every configured zone.
    async fn find(&self, name: &str) -> Result<Option<(String, gce::Instance)>, ProviderError> {
        let mut zones = self.settings.zones.clone();
        if let Some(z) = self.known_zone(name) {
            zones.retain(|x| x != &z);
            zones.insert(0, z);
        }
        for zone in zones {
            if let Some(vm) = self.get_in(&zone, name).await? {
                return Ok(Some((zone, vm)));
            }
        }
        Ok(None)
    }

    /// The VMs carrying every label in `selector`, as the API shows them (one aggregated list,
    /// paged). Any unreachable zone is an error: a partial list must never read as "nothing
    /// there".
    async fn list_vms(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<gce::Instance>, ProviderError> {
        let c = self.clients().await?;
        let filter = selector
            .iter()
            .map(|(k, v)| format!("(labels.{k} = \"{v}\")"))
            .collect::<Vec<_>>()
            .join(" AND ");
        let mut out = Vec::new();
        let mut page: Option<String> = None;
        loop {
            let token = page.clone();
            let resp = self
                .retry(|| async {
                    let mut req = c
                        .instances
                        .aggregated_list()
                        .set_project(&self.settings.project)
                        .set_filter(&filter)
                        .set_max_results(500u32);
                    if let Some(t) = &token {
                        req = req.set_page_token(t);
                    }
                    req.send()
                        .await
                        .map_err(|e| classify(e, "listing cwo's VMs", false))
                })
                .await?;
            if !resp.unreachables.is_empty() {
                // A partial list must never read as "nothing there".
                return Err(ProviderError::Transient(format!(
                    "listing cwo's VMs: unreachable: {}",
                    resp.unreachables.join(", ")
                )));
            }
            for scoped in resp.items.values() {
                for vm in &scoped.instances {
                    out.push(vm.clone());
                }
            }
            match resp.next_page_token {
                Some(t) if !t.is_empty() => page = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// The SSH host key the VM published through guest attributes, if it did.
    async fn host_key(&self, zone: &str, name: &str) -> Option<String> {
        let c = self.clients().await.ok()?;
        let ga = c
            .instances
            .get_guest_attributes()
            .set_project(&self.settings.project)
            .set_zone(zone)
            .set_instance(name)
            .set_query_path("hostkeys/")
            .send()
            .await
            .ok()?;
        ga.query_value?
            .items
            .into_iter()
            .find(|i| i.key.as_deref() == Some("ssh-ed25519"))
            .and_then(|i| i.value)
            .map(|v| format!("ssh-ed25519 {}", v.trim()))
    }

    /// Inserts in one zone (retrying transient failures with the same request id) and waits for
    /// the operation.
    async fn insert_in(
        &self,
        zone: &str,
        body: gce::Instance,
        request_id: &str,
    ) -> Result<(), ProviderError> {
        let c = self.clients().await?;
        let what = format!(
            "creating VM {} in {zone}",
            body.name.clone().unwrap_or_default()
        );
        let op = self
            .retry(|| async {
                c.instances
                    .insert()
                    .set_project(&self.settings.project)
                    .set_zone(zone)
                    .set_request_id(request_id)
                    .set_body(body.clone())
                    .send()
                    .await
                    .map_err(|e| classify(e, &what, true))
            })
            .await?;
        self.wait_operation(zone, op, &what).await.map(|_| ())
    }
}

#[async_trait]
impl Provider for GcpProvider {
    fn kind(&self) -> &'static str {
        "gcp"
    }

    fn boots_with_startup_script(&self) -> bool {
        true
    }

    fn creates_machines(&self) -> bool {
        true
    }

    /// The worker's own labels ([`super::worker_labels`]) over `spec`'s, and its expiry.
    fn labels_for(&self, spec: &WorkerSpec) -> BTreeMap<String, String> {
        let mut labels = spec.labels.clone();
        labels.extend(super::worker_labels(
            &self.project_slug,
            &spec.name,
            &self.settings.machine_type,
        ));
        labels.insert(
            super::EXPIRES_LABEL.into(),
            super::expires_at(self.settings.ttl),
        );
        labels
    }

    fn price_spec(&self, zone: Option<&str>) -> PriceSpec {
        PriceSpec::of_gcp(&self.settings).in_zone(zone)
    }

    fn plan(&self, spec: &WorkerSpec, ctx: &PlanContext<'_>) -> Plan {
        let g = &self.settings;
        let zone = g.zones.first().cloned().unwrap_or_default();
        let body = self.instance_body(spec, &zone, "ssh-ed25519 <a key generated for this worker>");
        let source = if g.ssh_source.is_empty() {
            "this machine's public address /32, detected at creation".to_string()
        } else {
            g.ssh_source.clone()
        };
        let hourly = ctx
            .catalog
            .hourly(&g.machine_type, &zone, g.spot, &g.disk_type, g.disk_size_gb)
            .map(|h| HourlyPlan {
                machine: h.machine,
                disk: h.disk,
                external_ip: h.ip,
                total: h.total(),
            });
        Plan::Gcp(Box::new(GcpPlan {
            provider: self.kind(),
            project: g.project.clone(),
            zones: g.zones.clone(),
            ttl: ttl_text(g.ttl),
            instance: body,
            firewall: FirewallPlan {
                name: firewall_name(&self.project_slug),
                network: g.network.clone(),
                allow: format!("tcp:{}", g.ssh_port),
                source_ranges: vec![source],
                target_tags: vec![network_tag(&self.project_slug)],
            },
            service_accounts: vec![],
            bootstrap: ctx.bootstrap.clone(),
            hourly_cost_usd: hourly,
        }))
    }

    async fn doctor(&self) -> Vec<Check> {
        self.checks().await
    }

    async fn boot_image(&self) -> Option<Result<BootImage, ProviderError>> {
        Some(self.boot_image_choice().await)
    }

    async fn create(
        &self,
        spec: &WorkerSpec,
        idempotency_key: &str,
    ) -> Result<Instance, ProviderError> {
        if self.settings.zones.is_empty() {
            return Err(ProviderError::InvalidSpec("gcp.zones is empty".into()));
        }
        self.boot_image_choice().await?;
        self.ensure_firewall().await?;
        let key_path = self.key_path(&spec.name);
        let public_key = super::worker_key(&key_path, &spec.name)?;
        let mut capacity_errors = Vec::new();
        for zone in &self.settings.zones {
            // One request id per (worker, zone): a retry is the same request, another zone is not.
            let request_id = uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("{idempotency_key}/{zone}").as_bytes(),
            )
            .to_string();
            let body = self.instance_body(spec, zone, &public_key);
            match self.insert_in(zone, body, &request_id).await {
                Ok(()) => {
                    self.remember_zone(&spec.name, zone);
                    // A new VM can stay invisible for a while: wait for it, never insert again.
                    let deadline = tokio::time::Instant::now() + VISIBILITY_TIMEOUT;
                    loop {
                        if let Some(vm) = self.get_in(zone, &spec.name).await? {
                            return Ok(self.to_instance(&vm, None));
                        }
                        if tokio::time::Instant::now() > deadline {
                            return Err(ProviderError::Transient(format!(
                                "VM {} was created in {zone} but is not visible yet",
                                spec.name
                            )));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(e) if e.kind() == ProviderErrorKind::Capacity => {
                    let m = e.one_line();
                    tracing::info!("{m}; trying the next zone");
                    capacity_errors.push(m);
                }
                Err(e) => return Err(e),
            }
        }
        Err(ProviderError::Capacity(format!(
            "no capacity in any of gcp.zones: {}",
            capacity_errors.join("; ")
        )))
    }

    /// One `regionInstances.bulkInsert` for the whole batch, each worker's own key added after
    /// it (see `bulk.rs`); the single creates when the batch cannot share one body.
    async fn create_many(
        &self,
        specs: &[(WorkerSpec, String)],
    ) -> Vec<Result<Instance, ProviderError>> {
        self.create_batch(specs).await
    }

    async fn wait_running(&self, name: &str, timeout: Duration) -> Result<Instance, ProviderError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some((zone, vm)) = self.find(name).await? else {
                return Err(ProviderError::NotFound(format!(
                    "VM {name} disappeared while starting"
                )));
            };
            let inst = self.to_instance(&vm, None);
            let has_ip = matches!(&inst.target, Target::Ssh { host, .. } if !host.is_empty());
            match inst.status {
                InstanceStatus::Running if has_ip => {
                    // Pin from the API when the VM publishes its key; wait briefly for it.
                    let mut key = None;
                    for _ in 0..30 {
                        key = self.host_key(&zone, name).await;
                        if key.is_some() || tokio::time::Instant::now() > deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    return Ok(self.to_instance(&vm, key));
                }
                InstanceStatus::Terminated | InstanceStatus::Stopping => {
                    return Err(ProviderError::Transient(format!(
                        "VM {name} stopped while starting ({:?}: {})",
                        vm.status,
                        vm.status_message.unwrap_or_default()
                    )));
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ProviderError::Transient(format!(
                    "VM {name} is not running after {}",
                    humantime::format_duration(timeout)
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Instance>, ProviderError> {
        Ok(self
            .find(name)
            .await?
            .map(|(_, vm)| self.to_instance(&vm, None)))
    }

    async fn list(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<Instance>, ProviderError> {
        let mut out: Vec<Instance> = self
            .list_vms(selector)
            .await?
            .iter()
            .map(|vm| self.to_instance(vm, None))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<DeleteOutcome, ProviderError> {
        let Some((zone, _)) = self.find(name).await? else {
            return Ok(DeleteOutcome::AlreadyGone);
        };
        let c = self.clients().await?;
        let request_id = uuid::Uuid::new_v4().to_string();
        let what = format!("deleting VM {name} in {zone}");
        // One call: deletion is retried by the caller's single policy (`delete_confirmed`),
        // which reports each retry and keeps one overall deadline.
        let sent = match c
            .instances
            .delete()
            .set_project(&self.settings.project)
            .set_zone(&zone)
            .set_instance(name)
            .set_request_id(&request_id)
            .send()
            .await
        {
            Ok(op) => Some(op),
            Err(e) if e.http_status_code() == Some(404) => None,
            Err(e) => return Err(classify(e, &what, false)),
        };
        let Some(op) = sent else {
            return Ok(DeleteOutcome::AlreadyGone);
        };
        match self.wait_operation(&zone, op, &what).await {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(e) if e.kind() == ProviderErrorKind::NotFound => Ok(DeleteOutcome::Deleted),
            Err(e) => Err(e),
        }
    }

    async fn confirm_deleted(&self, name: &str, timeout: Duration) -> Result<(), ProviderError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(100);
        loop {
            if self.find(name).await?.is_none() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ProviderError::Transient(format!(
                    "VM {name} still exists {} after its deletion",
                    humantime::format_duration(timeout)
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn set_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        let Some((zone, vm)) = self.find(name).await? else {
            return Err(ProviderError::NotFound(format!("VM {name}")));
        };
        let c = self.clients().await?;
        let what = format!("labelling VM {name}");
        let op = c
            .instances
            .set_labels()
            .set_project(&self.settings.project)
            .set_zone(&zone)
            .set_instance(name)
            .set_body(
                gce::InstancesSetLabelsRequest::new()
                    .set_labels(labels.clone())
                    .set_or_clear_label_fingerprint(vm.label_fingerprint),
            )
            .send()
            .await
            .map_err(|e| classify(e, &what, false))?;
        self.wait_operation(&zone, op, &what).await.map(|_| ())
    }

    async fn fleet_room(&self) -> Result<Option<crate::provider::Room>, ProviderError> {
        doctor::fleet_room(&self.settings).await
    }

    fn manual_delete_hint(&self, name: &str) -> Option<String> {
        let zone = self
            .known_zone(name)
            .or_else(|| self.settings.zones.first().cloned())
            .unwrap_or_default();
        Some(format!(
            "gcloud compute instances delete {name} --zone {zone} --project {} --quiet",
            self.settings.project
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_gax::error::rpc::{Code, Status};

    /// Retry and zone fallback decide by the kind; the client's error is kept as the source (to
    /// render as a cause, or downcast), and a one-line rendering still carries its message.
    #[test]
    fn a_classified_api_error_keeps_the_client_error_as_its_source() {
        let status = Status::default()
            .set_code(Code::ResourceExhausted)
            .set_message("Quota 'CPUS' exceeded");
        let e = classify(
            google_cloud_compute_v1::Error::service(status),
            "creating VM w in us-central1-a",
            true,
        );
        assert_eq!(e.kind(), ProviderErrorKind::Quota);
        assert_eq!(
            e.to_string(),
            "quota exceeded: creating VM w in us-central1-a"
        );
        let source = std::error::Error::source(&e).expect("the client's error is kept");
        assert!(
            source
                .downcast_ref::<google_cloud_compute_v1::Error>()
                .is_some()
        );
        assert!(
            e.one_line().contains("Quota 'CPUS' exceeded"),
            "{}",
            e.one_line()
        );
        let denied = classify(
            google_cloud_compute_v1::Error::service(
                Status::default().set_code(Code::PermissionDenied),
            ),
            "listing cwo's VMs",
            false,
        );
        assert_eq!(denied.kind(), ProviderErrorKind::Permission);
    }
}
