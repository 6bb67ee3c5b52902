//! `cwo budget alert set|show|remove`: the cloud's own budget alert on gcp.project (a Cloud
//! Billing budget; see provider/gcp/budget.rs for its scope and the API).

use crate::cli::{BudgetAlertArgs, BudgetAlertCommand, Format};
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::provider::gcp::{AlertSpec, BudgetApi, budget};
use crate::report::budget_alert::{AlertRemovedReport, AlertReport};
use crate::report::{self, Report};

fn api_error(context: String, e: budget::ApiError) -> CommandError {
    let mut err = CommandError::from_error(context, &e.kind);
    err.hints = e.hints;
    err
}

/// The API client for gcp.project and the billing account (flag, else setting).
fn client(
    project: &Project,
    printer: Printer,
    args: &BudgetAlertArgs,
) -> Result<BudgetApi, CommandError> {
    let gcp = &project.settings().gcp;
    if gcp.project.is_empty() {
        return Err(CommandError::usage(
            "the budget alert is put on gcp.project, which is not set",
        )
        .hint(
            "set [gcp] project = \"my-project\" in cwo.toml (or --config gcp.project=my-project)",
        ));
    }
    let account = args
        .billing_account
        .clone()
        .unwrap_or_else(|| gcp.billing_account.clone());
    if budget::account_id(&account).is_empty() {
        return Err(CommandError::usage(format!(
            "no billing account: the budget alert for {} needs the Cloud Billing account it is billed to",
            gcp.project
        ))
        .hint(format!(
            "`gcloud billing projects describe {} --format='value(billingAccountName)'` shows it; pass it as --billing-account ID or set gcp.billing_account",
            gcp.project
        )));
    }
    BudgetApi::new(gcp, &account, Box::new(move |line| printer.status(line)))
        .map_err(|e| api_error("cannot call the Cloud Billing Budget API".into(), e))
}

pub(crate) async fn alert(
    project: &Project,
    printer: Printer,
    cmd: &BudgetAlertCommand,
) -> Result<ExitStatus, CommandError> {
    let gcp_project = project.settings().gcp.project.clone();
    match cmd {
        BudgetAlertCommand::Set(args) => {
            let api = client(project, printer, &args.common)?;
            let mut thresholds = args.thresholds.clone();
            thresholds.sort_by(f64::total_cmp);
            thresholds.dedup();
            let spec = AlertSpec {
                project: gcp_project.clone(),
                amount: args.amount,
                thresholds,
            };
            let (b, outcome, extra) = api.set(&spec).await.map_err(|e| {
                api_error(
                    format!(
                        "cannot set the budget alert for {gcp_project} on billing account {}",
                        api.account()
                    ),
                    e,
                )
            })?;
            printer.status(format!(
                "{} budget {} for {gcp_project}",
                outcome.as_str(),
                b.name
            ));
            for name in &extra {
                printer.warn(format!(
                    "{name} has the same display name \"{}\" and was left alone; `cwo budget alert remove` deletes them all",
                    b.display_name
                ));
            }
            let report = AlertReport::new(
                api.account(),
                &gcp_project,
                Some(&b),
                Some(outcome.as_str()),
            );
            print(printer, &report, args.common.format);
            Ok(ExitStatus::Success)
        }
        BudgetAlertCommand::Show(args) => {
            let api = client(project, printer, args)?;
            let found = api.find().await.map_err(|e| {
                api_error(
                    format!(
                        "cannot read the budgets of billing account {}",
                        api.account()
                    ),
                    e,
                )
            })?;
            if found.is_empty() {
                printer.status(format!(
                    "no budget alert for {gcp_project} on billing account {}; `cwo budget alert set --amount 5` creates one",
                    api.account()
                ));
            }
            for extra in found.iter().skip(1) {
                printer.warn(format!(
                    "{} has the same display name too; `cwo budget alert remove` deletes them all",
                    extra.name
                ));
            }
            let report = AlertReport::new(api.account(), &gcp_project, found.first(), None);
            print(printer, &report, args.format);
            Ok(ExitStatus::Success)
        }
        BudgetAlertCommand::Remove(args) => {
            let api = client(project, printer, args)?;
            let removed = api.remove().await.map_err(|e| {
                api_error(
                    format!(
                        "cannot remove the budget alert for {gcp_project} from billing account {}",
                        api.account()
                    ),
                    e,
                )
            })?;
            if removed.is_empty() {
                printer.status(format!(
                    "no budget alert for {gcp_project} on billing account {}: nothing to remove",
                    api.account()
                ));
            }
            for name in &removed {
                printer.status(format!("removed budget {name}"));
            }
            let report = AlertRemovedReport::new(api.account(), &gcp_project, removed);
            print(printer, &report, args.format);
            Ok(ExitStatus::Success)
        }
    }
}

/// The report on stdout: its JSON, or its text unless there is none (no budget, nothing removed:
/// stderr has said so).
fn print(printer: Printer, report: &impl Report, format: Format) {
    let json = format == Format::Json;
    if json || !report.text().is_empty() {
        report::print(&printer, report, json);
    }
}
