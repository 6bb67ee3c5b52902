//! `cwo up [--plan]`: bring up a worker now (`cwo run` adopts it), or show what would be made.

use serde_json::{Value, json};

use crate::cli::{Format, UpArgs};
use crate::config::ProviderKind;
use crate::cost::Catalog;
use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::printer::Printer;
use crate::project::{Project, slug};
use crate::provider::gcp::{GcpProvider, firewall_name, network_tag};
use crate::provider::{WorkerSpec, worker_labels};

pub async fn up(
    project: &Project,
    printer: Printer,
    args: &UpArgs,
) -> Result<ExitStatus, CommandError> {
    if args.plan {
        return plan(project, printer, args.format).await;
    }
    let _lock = ControllerLock::acquire(&project.state_dir)?;
    let orch = super::run::lifecycle(project, printer)?;
    let recovered = orch.recover(true, "orphaned").await?;
    let mut pending = recovered.pending;
    let mut failed = orch
        .settle_pending(&mut pending, std::time::Duration::ZERO)
        .await;
    orch.warn_unsettled(&pending);
    if let Some(e) = failed.pop() {
        return Err(e.into());
    }
    if let Some(w) = recovered.worker {
        printer.status(format!("worker {} is already up", w.instance.name));
        printer.out(&w.instance.name);
        return Ok(ExitStatus::Success);
    }
    let w = orch
        .bring_up(&tokio_util::sync::CancellationToken::new())
        .await?
        .ok_or_else(|| CommandError::user("stopped before the worker was up"))?;
    printer.out(&w.instance.name);
    Ok(ExitStatus::Success)
}

/// The spec `cwo up` would send, without sending it.
async fn plan(
    project: &Project,
    printer: Printer,
    format: Format,
) -> Result<ExitStatus, CommandError> {
    let s = project.settings();
    let project_slug = slug(&project.name);
    let name = format!("cwo-{project_slug}-<6 hex>");
    // The labels `cwo up` gives the worker (the gcp body builder sets them itself, too).
    let labels = worker_labels(&project_slug, &name, &s.gcp.machine_type);
    let plan: Value = match s.provider {
        ProviderKind::Local => json!({
            "provider": "local",
            "worker": name,
            "creates": format!("a directory under {}", project.state_dir.join("workers").display()),
            "labels": labels,
            "hourly_cost_usd": 0.0,
        }),
        ProviderKind::Terraform => json!({
            "provider": "terraform",
            "worker": name,
            "module": if s.terraform.module.as_os_str().is_empty() { "shipped (terraform/ in cwo)".to_string() } else { s.terraform.module.display().to_string() },
            "creates": format!("terraform init + apply in {}", project.state_dir.join("terraform").join(&name).display()),
            "zone": s.gcp.zones.first(),
            "machine_type": s.gcp.machine_type,
            "image": s.gcp.image,
            "ttl": s.gcp.ttl.map(|t| humantime::format_duration(t).to_string()).unwrap_or_else(|| "none".into()),
            "ssh_source": s.gcp.ssh_source,
            "labels": labels,
            "bootstrap": s.bootstrap_method().to_string(),
        }),
        ProviderKind::Ssh => json!({
            "provider": "ssh",
            "worker": name,
            "creates": "nothing: the first free host in ssh.hosts is allocated",
            "hosts": s.ssh.hosts,
            "workspace": s.ssh.workspace,
            "hourly_cost_usd": 0.0,
        }),
        ProviderKind::Gcp => {
            let g = &s.gcp;
            let gcp = GcpProvider::new(
                g.clone(),
                s.ssh.clone(),
                project_slug.clone(),
                project.state_dir.join("keys"),
                project.journal()?,
            );
            let gcp = match project.startup_script() {
                Some(script) => gcp.with_startup_script(script),
                None => gcp,
            };
            let zone = g.zones.first().cloned().unwrap_or_default();
            let spec = WorkerSpec {
                name: name.clone(),
                labels,
                machine_type: g.machine_type.clone(),
            };
            let body = gcp.instance_body(
                &spec,
                &zone,
                "ssh-ed25519 <a key generated for this worker>",
            );
            let body = serde_json::to_value(&body).expect("the instance body serializes");
            let source = if g.ssh_source.is_empty() {
                "this machine's public address /32, detected at creation".to_string()
            } else {
                g.ssh_source.clone()
            };
            let hourly = Catalog::load()?.hourly(
                &g.machine_type,
                &zone,
                g.spot,
                &g.disk_type,
                g.disk_size_gb,
            );
            json!({
                "provider": "gcp",
                "project": g.project,
                "zones": g.zones,
                "ttl": g.ttl.map(|t| humantime::format_duration(t).to_string()).unwrap_or_else(|| "none".into()),
                "instance": body,
                "firewall": {
                    "name": firewall_name(&project_slug),
                    "network": g.network,
                    "allow": format!("tcp:{}", g.ssh_port),
                    "source_ranges": [source],
                    "target_tags": [network_tag(&project_slug)],
                },
                "service_accounts": [],
                "bootstrap": s.bootstrap_method().to_string(),
                "hourly_cost_usd": hourly.map(|h| json!({
                    "machine": h.machine, "disk": h.disk, "external_ip": h.ip, "total": h.total(),
                })),
            })
        }
    };
    if format == Format::Json {
        printer.json(json!({ "plan": plan }));
        return Ok(ExitStatus::Success);
    }
    let mut out = String::from("cwo up would create (nothing is created by --plan):\n");
    // The startup script is long: people get its size and where to read it.
    let mut shown = plan.clone();
    if let Some(items) = shown
        .pointer_mut("/instance/metadata/items")
        .and_then(Value::as_array_mut)
    {
        for item in items {
            if let Some(v) = item.get("value").and_then(Value::as_str)
                && v.len() > 200
            {
                item["value"] = json!(format!(
                    "<{} bytes: `cwo bootstrap script --gce` prints it>",
                    v.len()
                ));
            }
        }
    }
    out.push_str(&serde_json::to_string_pretty(&shown).expect("serializes"));
    out.push('\n');
    if let Some(total) = plan
        .pointer("/hourly_cost_usd/total")
        .and_then(Value::as_f64)
    {
        out.push_str(&format!(
            "expected list cost: ${total:.5}/hour (${:.2}/month if left running; an e2-micro in us-west1/us-central1/us-east1 is in the free tier)\n",
            total * crate::cost::HOURS_PER_MONTH
        ));
    } else if s.provider == ProviderKind::Gcp {
        out.push_str("expected cost: unknown (no price for this machine type in this region; see ~/.config/cwo/prices.toml)\n");
    }
    printer.out(out);
    Ok(ExitStatus::Success)
}
