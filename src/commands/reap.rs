//! `cwo reap [--yes] [--dry-run]`: the label-based reaper, safe to run from cron.

use serde_json::json;

use crate::cli::{Format, ReapArgs};
use crate::error::CliError;
use crate::printer::Printer;
use crate::project::{Project, slug};
use crate::reaper::Reaper;

pub async fn reap(project: &Project, printer: Printer, args: &ReapArgs) -> Result<u8, CliError> {
    let act = args.yes && !args.dry_run;
    let journal = project.journal()?;
    let provider = project.provider(&journal);
    let project_slug = slug(&project.name);
    let reaper = Reaper {
        provider: provider.as_ref(),
        journal: &journal,
        project_slug: &project_slug,
        grace: project.settings().reap_grace,
        controller_running: crate::journal::ControllerLock::holder(&project.state_dir).is_some(),
        teardown_timeout: project.settings().teardown_timeout,
        on_retry: &|line| printer.status(line),
    };
    let decisions = reaper.pass(act).await.map_err(|e| {
        CliError::from_error("could not list cwo's workers; nothing was deleted", &e)
            .hint("check the credentials and the project (`cwo doctor`), then run `cwo reap` again")
    })?;
    let failed = decisions.iter().filter(|d| d.action == "failed").count();
    let gone = decisions.iter().filter(|d| d.action == "gone").count();
    if gone > 0 {
        // Gone is done: not a failure, and nothing to do about it.
        printer.status(format!(
            "{gone} worker(s) vanished before cwo got to them (deleted outside cwo or by their TTL)"
        ));
    }
    if args.format == Format::Json {
        printer.json(json!({ "dry_run": !act, "workers": decisions, "failed": failed }));
    } else {
        let mut out = format!(
            "{} cwo-managed worker(s){}\n",
            decisions.len(),
            if act {
                ""
            } else {
                " (dry run: nothing changed; --yes acts)"
            }
        );
        for d in &decisions {
            out.push_str(&format!(
                "  {:<8} {:<28} {:<10} {:<20} {}\n",
                d.action,
                d.worker,
                d.zone.clone().unwrap_or_default(),
                d.reason,
                d.detail
            ));
        }
        printer.out(out);
    }
    if failed > 0 {
        return Err(
            CliError::user(format!("{failed} worker(s) could not be marked or deleted"))
                .hint("run `cwo reap --yes` again; the TTL (gcp.ttl) deletes them in any case"),
        );
    }
    Ok(0)
}
