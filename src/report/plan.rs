//! `cwo up --plan`: the worker `cwo up` would make, as the provider would send it, and its
//! expected cost.

use serde::Serialize;
use serde_json::{Value, json};

use super::{Report, SCHEMA_VERSION};
use crate::config::ProviderKind;
use crate::cost::{Catalog, CatalogError};
use crate::model::ids::slug;
use crate::project::Project;
use crate::provider::{BootImage, Plan, PlanContext, WorkerSpec, worker_labels};

#[derive(Serialize)]
pub(crate) struct PlanReport {
    pub(crate) schema_version: u32,
    pub(crate) plan: Plan,
    /// The image a worker would boot from and why (providers that boot images only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) boot_image: Option<BootImagePlan>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum BootImagePlan {
    Chosen(BootImage),
    /// The choice failed (`gcp.use_image = "always"` with no image, or the images cannot be
    /// listed): `cwo up` would fail the same way.
    Failed {
        error: String,
    },
}

/// The spec `cwo up` would send, without sending it.
pub(crate) async fn collect(project: &Project) -> Result<PlanReport, CatalogError> {
    let s = project.settings();
    let project_slug = slug(&project.name);
    let name = format!("cwo-{project_slug}-<6 hex>");
    // The spec `cwo up` sends: the labels every worker carries, priced as the machine type.
    let spec = WorkerSpec {
        labels: worker_labels(&project_slug, &name, &s.gcp.machine_type),
        name,
        machine_type: s.gcp.machine_type.clone(),
    };
    // Only a gcp plan is priced from the catalog, so only there does a broken price file stop
    // the plan (as `cwo up` would stop); the others show what they did before it.
    let catalog = match s.provider {
        ProviderKind::Gcp => Catalog::load()?,
        _ => Catalog::load().unwrap_or_else(|_| Catalog::embedded()),
    };
    let ctx = PlanContext {
        catalog: &catalog,
        bootstrap: s.bootstrap_method().to_string(),
    };
    let provider = project.provider_to_inspect();
    // Decided first, so the instance body shows the image it would boot.
    let boot_image = provider.boot_image().await.map(|r| match r {
        Ok(b) => BootImagePlan::Chosen(b),
        Err(e) => BootImagePlan::Failed {
            error: e.one_line(),
        },
    });
    Ok(PlanReport {
        schema_version: SCHEMA_VERSION,
        plan: provider.plan(&spec, &ctx),
        boot_image,
    })
}

impl Report for PlanReport {
    /// The plan as people read it: its JSON, with the long startup script replaced by its size,
    /// and the expected cost.
    fn text(&self) -> String {
        let mut out = String::from("cwo up would create (nothing is created by --plan):\n");
        let mut shown = serde_json::to_value(&self.plan).expect("the plan serializes");
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
        if let Some(map) = shown.as_object_mut() {
            map.remove("boot_image");
        }
        out.push_str(&serde_json::to_string_pretty(&shown).expect("serializes"));
        out.push('\n');
        match &self.boot_image {
            Some(BootImagePlan::Chosen(b)) => {
                out.push_str(&format!("boot image: {} ({})\n", b.image, b.why));
                if b.build_would_help {
                    out.push_str(
                        "  `cwo image build` bakes one, so each worker's bootstrap only checks\n",
                    );
                }
            }
            Some(BootImagePlan::Failed { error }) => {
                out.push_str(&format!("boot image: cannot be chosen: {error}\n"));
            }
            None => {}
        }
        match self.plan.list_price() {
            Some(Some(total)) => out.push_str(&format!(
                "expected list cost: ${total:.5}/hour (${:.2}/month if left running; an e2-micro in us-west1/us-central1/us-east1 is in the free tier)\n",
                total * crate::cost::HOURS_PER_MONTH
            )),
            Some(None) => out.push_str("expected cost: unknown (no price for this machine type in this region; see ~/.config/cwo/prices.toml)\n"),
            None => {}
        }
        out
    }
}
