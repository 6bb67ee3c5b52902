//! `provider = "terraform"`: the shipped Terraform module (or the user's own) driven by cwo.
//! Each worker gets its own directory under the state dir holding a copy of the module, its
//! variables (`terraform.tfvars.json`) and its own state, so workers never share a state file.
//! `create` runs `init` + `apply` and reads `output -json` (name, zone, ip, ssh_port); `delete`
//! runs `destroy` and removes the directory. The VM is described by the `[gcp]` settings.
//!
//! What Terraform knows is its state: `get` and `list` answer from the worker directories, so a
//! VM deleted behind Terraform's back (the GCE TTL) is still listed until `cwo down`/`reap`
//! destroys it, which Terraform then treats as already gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Value, json};

use super::record::{Layout, RecordStore};
use super::{
    Check, DeleteOutcome, Instance, InstanceStatus, Plan, PlanContext, PriceSpec, Provider,
    ProviderError, Target, WorkerSpec,
};
use crate::config::{GcpSettings, SshSettings, TerraformSettings};

/// The module shipped inside cwo (`terraform/` in the repository).
pub(crate) const MODULE: &[(&str, &str)] = &[
    ("main.tf", include_str!("../../terraform/main.tf")),
    ("variables.tf", include_str!("../../terraform/variables.tf")),
    ("outputs.tf", include_str!("../../terraform/outputs.tf")),
    ("versions.tf", include_str!("../../terraform/versions.tf")),
];

/// `terraform apply` as cwo runs it: no prompts, no colour codes in the messages it relays.
const APPLY: &[&str] = &["apply", "-auto-approve", "-input=false", "-no-color"];

/// What `cwo up --plan` shows for the terraform provider.
#[derive(serde::Serialize)]
pub struct TerraformPlan {
    provider: &'static str,
    worker: String,
    module: String,
    creates: String,
    zone: Option<String>,
    machine_type: String,
    image: String,
    ttl: String,
    ssh_source: String,
    labels: BTreeMap<String, String>,
    bootstrap: String,
}

pub struct TerraformProvider {
    /// The VM the module makes.
    gcp: GcpSettings,
    /// Where the workspace lives on the VM.
    ssh: SshSettings,
    /// The module, the program, the extra variables.
    terraform: TerraformSettings,
    /// `<state>/terraform`: one directory per worker, plus the shared plugin cache.
    dir: PathBuf,
    /// `<dir>/<worker>/cwo-instance.json`.
    records: RecordStore,
    keys_dir: PathBuf,
    startup_script: String,
    /// Decides the image workers boot from (`gcp.use_image`: a baked one when it matches)
    /// through the Compute API, as the gcp provider does, so both paths boot identical workers.
    images: Option<super::gcp::GcpProvider>,
}

impl TerraformProvider {
    pub fn new(
        gcp: &GcpSettings,
        ssh: &SshSettings,
        terraform: &TerraformSettings,
        dir: PathBuf,
        keys_dir: PathBuf,
        startup_script: String,
    ) -> TerraformProvider {
        TerraformProvider {
            gcp: gcp.clone(),
            ssh: ssh.clone(),
            terraform: terraform.clone(),
            records: RecordStore::new(
                &dir,
                Layout::InWorkerDir("cwo-instance.json"),
                "terraform worker",
            ),
            dir,
            keys_dir,
            startup_script,
            images: None,
        }
    }

    /// Workers boot from the image `gcp` chooses (see [`super::gcp::GcpProvider::with_image_hash`]).
    pub(crate) fn with_boot_images(mut self, gcp: super::gcp::GcpProvider) -> TerraformProvider {
        self.images = Some(gcp);
        self
    }

    /// The image chosen for this provider's workers, once it was (the first create or plan).
    fn chosen(&self) -> Option<super::BootImage> {
        self.images.as_ref().and_then(|g| g.chosen_boot_image())
    }

    /// The worker's labels, with `cwo-image` when it boots a baked image.
    fn labels_with_image(
        &self,
        spec: &WorkerSpec,
        chosen: Option<&super::BootImage>,
    ) -> BTreeMap<String, String> {
        let mut labels = self.labels_for(spec);
        if let Some(baked) = chosen.and_then(|b| b.baked.as_ref()) {
            labels.insert(crate::model::IMAGE_LABEL.into(), baked.clone());
        }
        labels
    }

    pub(crate) fn binary(&self) -> &str {
        self.terraform.program()
    }

    fn worker_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Copies the module's `*.tf` files into the worker's directory.
    fn place_module(&self, wdir: &Path) -> Result<(), ProviderError> {
        let io = |e: std::io::Error| ProviderError::InvalidSpec(format!("{}: {e}", wdir.display()));
        std::fs::create_dir_all(wdir).map_err(io)?;
        let module = &self.terraform.module;
        if module.as_os_str().is_empty() {
            for (name, text) in MODULE {
                std::fs::write(wdir.join(name), text).map_err(io)?;
            }
            return Ok(());
        }
        let entries = std::fs::read_dir(module).map_err(|e| {
            ProviderError::InvalidSpec(format!("terraform.module {}: {e}", module.display()))
        })?;
        let mut any = false;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "tf") {
                std::fs::copy(&path, wdir.join(entry.file_name())).map_err(io)?;
                any = true;
            }
        }
        if !any {
            return Err(ProviderError::InvalidSpec(format!(
                "terraform.module {} has no *.tf files",
                module.display()
            )));
        }
        Ok(())
    }

    fn variables(&self, spec: &WorkerSpec, public_key: &str) -> Result<Value, ProviderError> {
        let g = &self.gcp;
        let zone = g
            .zones
            .first()
            .ok_or_else(|| ProviderError::InvalidSpec("gcp.zones is empty".into()))?;
        if g.ssh_source.is_empty() {
            return Err(ProviderError::InvalidSpec(
                "gcp.ssh_source is empty: the terraform provider needs this machine's address as a CIDR (e.g. \"203.0.113.7/32\")".into(),
            ));
        }
        let chosen = self.chosen();
        let labels = self.labels_with_image(spec, chosen.as_ref());
        let mut vars = json!({
            "name": spec.name,
            "project": g.project,
            "zone": zone,
            "machine_type": g.machine_type,
            "image": chosen.as_ref().map_or(&g.image, |b| &b.image),
            "disk_size_gb": g.disk_size_gb,
            "disk_type": g.disk_type,
            "spot": g.spot,
            "ttl_seconds": g.ttl.map(|t| t.as_secs()).unwrap_or(0),
            "network": g.network,
            "ssh_source": g.ssh_source,
            "ssh_user": g.ssh_user,
            "ssh_port": g.ssh_port,
            "ssh_public_key": public_key.trim(),
            "labels": labels,
            "startup_script": self.startup_script,
        });
        for (k, v) in &self.terraform.vars {
            vars[k] = json!(v);
        }
        Ok(vars)
    }

    /// Runs terraform in the worker's directory; stdout on success, typed error otherwise.
    async fn tf(&self, wdir: &Path, args: &[&str]) -> Result<String, ProviderError> {
        let plugin_cache = self.dir.join("plugin-cache");
        let _ = std::fs::create_dir_all(&plugin_cache);
        tracing::debug!(dir = %wdir.display(), ?args, "terraform");
        let out = tokio::process::Command::new(self.binary())
            .arg(format!("-chdir={}", wdir.display()))
            .args(args)
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env("TF_PLUGIN_CACHE_DIR", &plugin_cache)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                ProviderError::InvalidSpec(format!(
                    "cannot run `{}`: {e} (install Terraform, or set terraform.binary)",
                    self.binary()
                ))
            })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let msg = format!(
            "`{} {}` in {} failed: {}",
            self.binary(),
            args.first().unwrap_or(&""),
            wdir.display(),
            tail[tail.len().saturating_sub(12)..].join("\n")
        );
        // Terraform reports only text: configuration problems are the user's to fix, anything
        // during apply/destroy may pass on a retry.
        Err(
            if args.first() == Some(&"init") || args.first() == Some(&"validate") {
                ProviderError::InvalidSpec(msg)
            } else {
                ProviderError::Transient(msg)
            },
        )
    }

    fn instance_from(&self, spec: &WorkerSpec, outputs: &Value, key_path: &Path) -> Instance {
        let text = |k: &str| {
            outputs[k]["value"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_default()
        };
        let port = outputs["ssh_port"]["value"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(self.gcp.ssh_port);
        let zone = text("zone");
        Instance {
            name: spec.name.clone(),
            status: InstanceStatus::Running,
            created_at: Utc::now(),
            labels: spec.labels.clone(),
            target: Target::Ssh {
                host: text("ip"),
                port,
                user: self.gcp.ssh_user.clone(),
                key_path: key_path.display().to_string(),
                host_key: None,
                pin_as: spec.name.clone(),
            },
            workspace: crate::model::workspace_of(&self.ssh.workspace, &spec.name),
            zone: (!zone.is_empty()).then(|| zone.rsplit('/').next().unwrap_or(&zone).to_string()),
        }
    }
}

#[async_trait]
impl Provider for TerraformProvider {
    fn kind(&self) -> &'static str {
        "terraform"
    }

    fn boots_with_startup_script(&self) -> bool {
        true
    }

    async fn boot_image(&self) -> Option<Result<super::BootImage, ProviderError>> {
        match &self.images {
            Some(g) => Some(g.boot_image_choice().await),
            None => None,
        }
    }

    fn creates_machines(&self) -> bool {
        true
    }

    /// The worker's labels with its expiry (`cwo-expires-at`, as the gcp provider sets it), so
    /// the reaper and TTL rotation see a terraform worker's remaining life too.
    fn labels_for(&self, spec: &WorkerSpec) -> BTreeMap<String, String> {
        let mut labels = spec.labels.clone();
        labels.insert(super::EXPIRES_LABEL.into(), super::expires_at(self.gcp.ttl));
        labels
    }

    fn price_spec(&self, zone: Option<&str>) -> PriceSpec {
        PriceSpec::of_gcp(&self.gcp).in_zone(zone)
    }

    fn plan(&self, spec: &WorkerSpec, ctx: &PlanContext<'_>) -> Plan {
        let g = &self.gcp;
        let module = &self.terraform.module;
        let chosen = self.chosen();
        Plan::Terraform(TerraformPlan {
            provider: self.kind(),
            worker: spec.name.clone(),
            module: if module.as_os_str().is_empty() {
                "shipped (terraform/ in cwo)".to_string()
            } else {
                module.display().to_string()
            },
            creates: format!(
                "terraform init + apply in {}",
                self.worker_dir(&spec.name).display()
            ),
            zone: g.zones.first().cloned(),
            machine_type: g.machine_type.clone(),
            image: chosen.as_ref().map_or(&g.image, |b| &b.image).clone(),
            ttl: super::gcp::ttl_text(g.ttl),
            ssh_source: g.ssh_source.clone(),
            labels: self.labels_with_image(spec, chosen.as_ref()),
            bootstrap: ctx.bootstrap.clone(),
        })
    }

    /// Whether the Terraform binary runs, and the address SSH is opened to is set.
    async fn doctor(&self) -> Vec<Check> {
        let bin = self.binary();
        let version = tokio::process::Command::new(bin)
            .arg("version")
            .stdin(std::process::Stdio::null())
            .output()
            .await;
        let mut checks = vec![match version {
            Ok(out) if out.status.success() => Check::ok(
                "provider",
                format!(
                    "terraform: {}",
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .next()
                        .unwrap_or(bin)
                ),
            ),
            _ => Check::fail(
                "provider",
                format!("terraform: `{bin} version` does not run"),
                "install Terraform (or OpenTofu and set terraform.binary = \"tofu\")",
            ),
        }];
        if self.gcp.ssh_source.is_empty() {
            checks.push(Check::fail(
                "ssh_source",
                "gcp.ssh_source is empty",
                "set gcp.ssh_source to this machine's address as a /32",
            ));
        }
        checks
    }

    async fn create(
        &self,
        spec: &WorkerSpec,
        idempotency_key: &str,
    ) -> Result<Instance, ProviderError> {
        if let Some(existing) = self.records.existing(&spec.name, idempotency_key)? {
            return Ok(existing);
        }
        if let Some(images) = &self.images {
            images.boot_image_choice().await?;
        }
        let wdir = self.worker_dir(&spec.name);
        self.place_module(&wdir)?;
        let key_path = self.keys_dir.join(&spec.name);
        let public_key = super::worker_key(&key_path, &spec.name)?;
        let vars = self.variables(spec, &public_key)?;
        std::fs::write(wdir.join("terraform.tfvars.json"), vars.to_string())
            .map_err(|e| ProviderError::InvalidSpec(format!("{}: {e}", wdir.display())))?;
        self.tf(&wdir, &["init", "-input=false", "-no-color"])
            .await?;
        self.tf(&wdir, APPLY).await?;
        let outputs: Value = serde_json::from_str(&self.tf(&wdir, &["output", "-json"]).await?)
            .map_err(|e| ProviderError::Transient(format!("terraform output -json: {e}")))?;
        if outputs["ip"]["value"].as_str().is_none_or(str::is_empty) {
            return Err(ProviderError::InvalidSpec(format!(
                "the module in {} has no `ip` output (it needs name, zone, ip and ssh_port)",
                wdir.display()
            )));
        }
        let mut instance = self.instance_from(spec, &outputs, &key_path);
        // What the module was given, expiry included.
        if let Ok(labels) = serde_json::from_value(vars["labels"].clone()) {
            instance.labels = labels;
        }
        self.records.write(&instance, idempotency_key)?;
        Ok(instance)
    }

    async fn wait_running(
        &self,
        name: &str,
        _timeout: Duration,
    ) -> Result<Instance, ProviderError> {
        // `apply` returns once the VM runs.
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
        let wdir = self.worker_dir(name);
        if !wdir.exists() {
            return Ok(DeleteOutcome::AlreadyGone);
        }
        if wdir.join("terraform.tfstate").exists() {
            self.tf(
                &wdir,
                &["destroy", "-auto-approve", "-input=false", "-no-color"],
            )
            .await?;
        }
        std::fs::remove_dir_all(&wdir)
            .map_err(|e| ProviderError::Transient(format!("{}: {e}", wdir.display())))?;
        Ok(DeleteOutcome::Deleted)
    }

    async fn confirm_deleted(&self, name: &str, _timeout: Duration) -> Result<(), ProviderError> {
        if self.worker_dir(name).exists() {
            Err(ProviderError::Transient(format!(
                "worker {name} still has Terraform state in {}",
                self.worker_dir(name).display()
            )))
        } else {
            Ok(())
        }
    }

    async fn set_labels(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ProviderError> {
        if self.records.get(name)?.is_none() {
            return Err(ProviderError::NotFound(format!("terraform worker {name}")));
        }
        let wdir = self.worker_dir(name);
        let vars_path = wdir.join("terraform.tfvars.json");
        let mut vars: Value = std::fs::read_to_string(&vars_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| {
                ProviderError::Transient(format!("{} is unreadable", vars_path.display()))
            })?;
        vars["labels"] = json!(labels);
        std::fs::write(&vars_path, vars.to_string())
            .map_err(|e| ProviderError::Transient(format!("{}: {e}", vars_path.display())))?;
        self.tf(&wdir, APPLY).await?;
        self.records.set_labels(name, labels)
    }

    fn manual_delete_hint(&self, name: &str) -> Option<String> {
        Some(format!(
            "{} -chdir={} destroy",
            self.binary(),
            self.worker_dir(name).display()
        ))
    }
}
