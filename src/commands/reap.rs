//! `cwo reap [--yes] [--dry-run]`: the label-based reaper, safe to run from cron.

use serde_json::json;

use crate::cli::{Format, ReapArgs};
use crate::error::CliError;
use crate::orchestrator::reaper::Reaper;
use crate::printer::Printer;
use crate::project::{Project, slug};

pub async fn reap(project: &Project, printer: Printer, args: &ReapArgs) -> Result<u8, CliError> {
    let act = args.yes && !args.dry_run;
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
        CliError::from_error("could not list cwo's workers; nothing was deleted", &e)
            .hint("check the credentials and the project (`cwo doctor`), then run `cwo reap` again")
    })?;
    // A reaped worker's open attempts (a crashed controller's) give their balls back; a running
    // controller settles its own.
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
        let mut err = CliError::user(format!("{failed} worker(s) could not be marked or deleted"))
            .hint("run `cwo reap --yes` again; a running VM is also deleted by its TTL (gcp.ttl), but a stopped one only by a reaper or by hand");
        for d in decisions.iter().filter(|d| d.action == "failed") {
            if let Some(cmd) = provider.manual_delete_hint(&d.worker) {
                err = err.hint(format!("delete {} yourself: {cmd}", d.worker));
            }
        }
        return Err(err);
    }
    Ok(0)
}
