//! `cwo github init`: the labels the GitHub tracker uses, created where the repository lacks
//! them (or, with `--dry-run`, which would be).

use serde::Serialize;

use super::table::Table;
use super::{Report, SCHEMA_VERSION};
use crate::error::CommandError;
use crate::printer::Printer;
use crate::project::Project;
use crate::tracker::github::{LabelAction, ensure_labels};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LabelRow {
    pub(crate) name: String,
    pub(crate) color: String,
    pub(crate) description: String,
    pub(crate) action: LabelAction,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct GithubInitReport {
    pub(crate) schema_version: u32,
    pub(crate) repo: String,
    pub(crate) dry_run: bool,
    pub(crate) labels: Vec<LabelRow>,
}

/// Creates the queue label (`github.label`), the state labels and the priority labels on the
/// configured repository; existing labels are left as they are.
pub(crate) async fn init(
    project: &Project,
    printer: Printer,
    dry_run: bool,
) -> Result<GithubInitReport, CommandError> {
    let gh = project.github_client().await?;
    let queue = project.settings().github.label.clone();
    let client = gh.clone();
    let done = gh
        .run(async move { ensure_labels(&client, &queue, dry_run).await })
        .await?;
    let created = done
        .iter()
        .filter(|(_, a)| *a == LabelAction::Created)
        .count();
    if !dry_run {
        printer.status(format!(
            "{created} label(s) created on {}, {} already there",
            gh.repo(),
            done.len() - created
        ));
    }
    Ok(GithubInitReport {
        schema_version: SCHEMA_VERSION,
        repo: gh.repo().to_string(),
        dry_run,
        labels: done
            .into_iter()
            .map(|(spec, action)| LabelRow {
                name: spec.name,
                color: spec.color.to_string(),
                description: spec.description.to_string(),
                action,
            })
            .collect(),
    })
}

impl Report for GithubInitReport {
    fn text(&self) -> String {
        let mut t = Table::new(&["label", "color", "action", "description"]);
        for l in &self.labels {
            t.row(vec![
                l.name.clone(),
                format!("#{}", l.color),
                match l.action {
                    LabelAction::Created => "created",
                    LabelAction::Exists => "exists",
                    LabelAction::WouldCreate => "would create",
                }
                .to_string(),
                l.description.clone(),
            ]);
        }
        format!("{}:\n{}", self.repo, t.render())
    }
}
