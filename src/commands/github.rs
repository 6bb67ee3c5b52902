//! `cwo github init`: the GitHub tracker's labels on the configured repository;
//! `cwo github webhook-url`: what the repository's webhook form wants for `cwo serve`.

use crate::cli::{Format, GithubCommand};
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::report::{self, github};

pub(crate) async fn github(
    project: &Project,
    printer: Printer,
    cmd: &GithubCommand,
) -> Result<ExitStatus, CommandError> {
    match cmd {
        GithubCommand::Init(args) => {
            let report = github::init(project, printer, args.dry_run).await?;
            report::print(&printer, &report, args.format == Format::Json);
        }
        GithubCommand::WebhookUrl(args) => {
            let report = github::webhook_url(project);
            // What stands between GitHub and the URL: on stderr (and in the JSON).
            for w in &report.warnings {
                printer.warn(w);
            }
            report::print(&printer, &report, args.format == Format::Json);
        }
    }
    Ok(ExitStatus::Success)
}
