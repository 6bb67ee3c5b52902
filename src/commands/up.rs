//! `cwo up [--plan]`: bring up a worker now (`cwo run` adopts it), or show what would be made.

use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::{Format, UpArgs};
use crate::cost::Catalog;
use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::model::ids::slug;
use crate::printer::Printer;
use crate::project::Project;
use crate::provider::{Plan, PlanContext, WorkerSpec, worker_labels};

pub(crate) async fn up(
    project: &Project,
    printer: Printer,
    args: &UpArgs,
) -> Result<ExitStatus, CommandError> {
    if args.plan {
        return plan(project, printer, args.format).await;
    }
    let _lock = ControllerLock::acquire(&project.state_dir)?;
    let orch = project.lifecycle(printer)?;
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

/// `cwo up --plan --format json`.
#[derive(Serialize)]
struct PlanReport<'a> {
    schema_version: u32,
    plan: &'a Plan,
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
    // The spec `cwo up` sends: the labels every worker carries, priced as the machine type.
    let spec = WorkerSpec {
        labels: worker_labels(&project_slug, &name, &s.gcp.machine_type),
        name,
        machine_type: s.gcp.machine_type.clone(),
    };
    let catalog = Catalog::load()?;
    let ctx = PlanContext {
        catalog: &catalog,
        bootstrap: s.bootstrap_method().to_string(),
    };
    let plan = project.provider_to_inspect().plan(&spec, &ctx);
    if format == Format::Json {
        let report = PlanReport {
            schema_version: 1,
            plan: &plan,
        };
        printer.json(serde_json::to_value(&report).expect("the plan serializes"));
        return Ok(ExitStatus::Success);
    }
    printer.out(human(&plan));
    Ok(ExitStatus::Success)
}

/// The plan as people read it: its JSON, with the long startup script replaced by its size,
/// and the expected cost.
fn human(plan: &Plan) -> String {
    let mut out = String::from("cwo up would create (nothing is created by --plan):\n");
    let mut shown = serde_json::to_value(plan).expect("the plan serializes");
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
    match plan.list_price() {
        Some(Some(total)) => out.push_str(&format!(
            "expected list cost: ${total:.5}/hour (${:.2}/month if left running; an e2-micro in us-west1/us-central1/us-east1 is in the free tier)\n",
            total * crate::cost::HOURS_PER_MONTH
        )),
        Some(None) => out.push_str("expected cost: unknown (no price for this machine type in this region; see ~/.config/cwo/prices.toml)\n"),
        None => {}
    }
    out
}
