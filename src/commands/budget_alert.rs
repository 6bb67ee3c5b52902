//! `cwo budget alert set|show|remove`: the cloud's own budget alert on gcp.project (a Cloud
//! Billing budget; see provider/gcp/budget.rs for its scope and the API, and
//! report/budget_alert.rs for what is done and shown).

use crate::cli::{BudgetAlertCommand, Format};
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::report::{self, Report, budget_alert};

pub(crate) async fn alert(
    project: &Project,
    printer: Printer,
    cmd: &BudgetAlertCommand,
) -> Result<ExitStatus, CommandError> {
    match cmd {
        BudgetAlertCommand::Set(args) => {
            let account = args.common.billing_account.as_deref();
            let report =
                budget_alert::set(project, printer, account, args.amount, &args.thresholds).await?;
            print(printer, &report, args.common.format);
        }
        BudgetAlertCommand::Show(args) => {
            let report =
                budget_alert::show(project, printer, args.billing_account.as_deref()).await?;
            print(printer, &report, args.format);
        }
        BudgetAlertCommand::Remove(args) => {
            let report =
                budget_alert::remove(project, printer, args.billing_account.as_deref()).await?;
            print(printer, &report, args.format);
        }
    }
    Ok(ExitStatus::Success)
}

/// The report on stdout: its JSON, or its text unless there is none (no budget, nothing removed:
/// stderr has said so).
fn print(printer: Printer, report: &impl Report, format: Format) {
    let json = format == Format::Json;
    if json || !report.text().is_empty() {
        report::print(&printer, report, json);
    }
}
