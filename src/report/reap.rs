//! `cwo reap`: the label-based reaper's decisions, and what it did.

use serde::Serialize;

use super::table::Table;
use super::{Report, SCHEMA_VERSION};
use crate::error::CommandError;
use crate::model::ids::slug;
use crate::orchestrator::reaper::{Decision, Reaper};
use crate::printer::Printer;
use crate::project::Project;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReapReport {
    pub(crate) schema_version: u32,
    /// Nothing was changed (no `--yes`, or `--dry-run`).
    pub(crate) dry_run: bool,
    pub(crate) workers: Vec<Decision>,
    /// How many could not be marked or deleted.
    pub(crate) failed: usize,
    /// For each failed worker, the command that deletes it by hand (when the provider has one).
    #[serde(skip)]
    pub(crate) manual_deletes: Vec<(String, String)>,
}

/// One reaper pass (acting when `act`). A reaped worker's open attempts (a crashed
/// controller's) give their balls back; progress and those releases are said on stderr.
pub(crate) async fn collect(
    project: &Project,
    printer: Printer,
    act: bool,
) -> Result<ReapReport, CommandError> {
    let journal = project.journal()?;
    let provider = project.provider(&journal);
    let project_slug = slug(&project.name);
    let on_retry = |line: String| printer.status(line);
    let reaper = Reaper::new(
        provider.as_ref(),
        &journal,
        &project_slug,
        project.settings(),
        crate::journal::ControllerLock::holder(&project.state_dir).is_some(),
        &on_retry,
    );
    let decisions = reaper.pass(act).await.map_err(|e| {
        CommandError::from(e)
            .context("could not list cwo's workers; nothing was deleted")
            .hint("check the credentials and the project (`cwo doctor`), then run `cwo reap` again")
    })?;
    // A running controller settles its own workers' attempts.
    if act && !reaper.controller_running {
        let tracker = project.tracker();
        for d in decisions
            .iter()
            .filter(|d| matches!(d.action.as_str(), "deleted" | "gone"))
        {
            match crate::orchestrator::reaper::release_attempts(&journal, &tracker, &d.worker) {
                Ok(balls) if !balls.is_empty() => printer.status(format!(
                    "{}: back to pending (worker {} was reaped)",
                    balls.join(", "),
                    d.worker
                )),
                Ok(_) => {}
                Err(e) => printer.warn(format!(
                    "worker {} was reaped, but its balls could not be released: {e}",
                    d.worker
                )),
            }
        }
    }
    let failed: Vec<&Decision> = decisions.iter().filter(|d| d.action == "failed").collect();
    let manual_deletes = failed
        .iter()
        .filter_map(|d| {
            provider
                .manual_delete_hint(&d.worker)
                .map(|cmd| (d.worker.clone(), cmd))
        })
        .collect();
    Ok(ReapReport {
        schema_version: SCHEMA_VERSION,
        dry_run: !act,
        failed: failed.len(),
        manual_deletes,
        workers: decisions,
    })
}

impl ReapReport {
    /// How many workers vanished before the reaper got to them (done, not failed).
    pub(crate) fn gone(&self) -> usize {
        self.workers.iter().filter(|d| d.action == "gone").count()
    }

    /// The error a pass with failures ends with: what to run again, and how to delete each
    /// failed worker by hand.
    pub(crate) fn failure(&self) -> Option<CommandError> {
        if self.failed == 0 {
            return None;
        }
        let mut err = CommandError::user(format!(
            "{} worker(s) could not be marked or deleted",
            self.failed
        ))
        .hint("run `cwo reap --yes` again; a running VM is also deleted by its TTL (gcp.ttl), but a stopped one only by a reaper or by hand");
        for (worker, cmd) in &self.manual_deletes {
            err = err.hint(format!("delete {worker} yourself: {cmd}"));
        }
        Some(err)
    }
}

impl Report for ReapReport {
    fn text(&self) -> String {
        let mut out = format!(
            "{} cwo-managed worker(s){}\n",
            self.workers.len(),
            if self.dry_run {
                " (dry run: nothing changed; --yes acts)"
            } else {
                ""
            }
        );
        let mut t = Table::new(&["action", "worker", "zone", "reason", "detail"]);
        for d in &self.workers {
            t.row(vec![
                d.action.clone(),
                d.worker.clone(),
                d.zone.clone().unwrap_or_default(),
                d.reason.clone(),
                d.detail.clone(),
            ]);
        }
        out.push_str(&t.render());
        out
    }
}
