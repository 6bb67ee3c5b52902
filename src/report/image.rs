//! `cwo image build | list | prune`: the reports, gathered through the orchestrator's image
//! module from the settings' Compute Engine project.

use tokio_util::sync::CancellationToken;

use super::Report;
use super::table::Table;
use crate::error::CommandError;
use crate::orchestrator::image::{self, Built, ImageList, PruneReport};
use crate::printer::Printer;
use crate::project::Project;

pub(crate) async fn build(
    project: &Project,
    printer: Printer,
    stop: &CancellationToken,
) -> Result<Built, CommandError> {
    let (lifecycle, builder, spec) = project.image_builder(printer)?;
    printer.status(format!(
        "baking an image of {} into family {} (hash {})",
        spec.base, spec.family, spec.hash
    ));
    Ok(image::build(&lifecycle, &builder, &spec, stop).await?)
}

pub(crate) async fn list(project: &Project) -> Result<ImageList, CommandError> {
    let gcp = project.image_provider()?;
    Ok(image::list(&gcp, &project.settings().gcp.image_family).await?)
}

pub(crate) async fn prune(
    project: &Project,
    keep: usize,
    dry_run: bool,
) -> Result<PruneReport, CommandError> {
    let gcp = project.image_provider()?;
    Ok(image::prune(&gcp, &project.settings().gcp.image_family, keep, dry_run).await?)
}

fn when(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

impl Report for Built {
    fn text(&self) -> String {
        format!(
            "image {} (family {}, hash {}) from {}: {} GB, baked in {:.0} s ({:.0} s bootstrap); builder {} deleted\n",
            self.image.name,
            self.family,
            self.hash,
            self.base,
            self.image
                .disk_size_gb
                .map_or("?".into(), |g| g.to_string()),
            self.total_secs,
            self.bootstrap_secs,
            self.builder
        )
    }
}

impl Report for ImageList {
    fn text(&self) -> String {
        let mut t = Table::new(&["image", "created", "status", "hash", "current", "used by"]);
        for i in &self.images {
            t.row(vec![
                i.image.name.clone(),
                when(i.image.created_at),
                i.image.status.clone(),
                if i.image.hash.is_empty() {
                    "-".into()
                } else {
                    i.image.hash.clone()
                },
                if i.current { "yes" } else { "no" }.into(),
                if i.used_by.is_empty() {
                    "-".into()
                } else {
                    i.used_by.join(" ")
                },
            ]);
        }
        let mut out = if t.is_empty() {
            format!("family {} has no image\n", self.family)
        } else {
            t.render()
        };
        if let Some(b) = &self.boot {
            out.push_str(&format!("new workers boot {}: {}\n", b.image, b.why));
        }
        out
    }
}

impl Report for PruneReport {
    fn text(&self) -> String {
        let mut t = Table::new(&["image", "created", "action", "detail"]);
        for p in &self.images {
            t.row(vec![
                p.name.clone(),
                when(p.created_at),
                p.action.clone(),
                p.detail.clone(),
            ]);
        }
        if t.is_empty() {
            format!("family {} has no image cwo baked\n", self.family)
        } else {
            t.render()
        }
    }
}
