//! `cwo budget alert set|show|remove`: cwo's Cloud Billing budget on gcp.project, as it is after
//! the command (or what was removed).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{Report, SCHEMA_VERSION};
use crate::error::CommandError;
use crate::printer::Printer;
use crate::project::Project;
use crate::provider::gcp::budget::{self, Budget};
use crate::provider::gcp::{AlertSpec, Amount, BudgetApi};

/// `set`: puts cwo's budget of `amount` with alerts at `thresholds` (percent, any order) on
/// gcp.project; the billing account is `billing_account`, else gcp.billing_account.
pub(crate) async fn set(
    project: &Project,
    printer: Printer,
    billing_account: Option<&str>,
    amount: Amount,
    thresholds: &[f64],
) -> Result<AlertReport, CommandError> {
    let api = client(project, printer, billing_account)?;
    let gcp_project = project.settings().gcp.project.clone();
    let mut thresholds = thresholds.to_vec();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    let spec = AlertSpec {
        project: gcp_project.clone(),
        amount,
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
    Ok(AlertReport::new(
        api.account(),
        &gcp_project,
        Some(&b),
        Some(outcome.as_str()),
    ))
}

/// `show`: cwo's budget on gcp.project, if there is one.
pub(crate) async fn show(
    project: &Project,
    printer: Printer,
    billing_account: Option<&str>,
) -> Result<AlertReport, CommandError> {
    let api = client(project, printer, billing_account)?;
    let gcp_project = &project.settings().gcp.project;
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
    Ok(AlertReport::new(
        api.account(),
        gcp_project,
        found.first(),
        None,
    ))
}

/// `remove`: deletes cwo's budgets on gcp.project (every one with its display name).
pub(crate) async fn remove(
    project: &Project,
    printer: Printer,
    billing_account: Option<&str>,
) -> Result<AlertRemovedReport, CommandError> {
    let api = client(project, printer, billing_account)?;
    let gcp_project = &project.settings().gcp.project;
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
    Ok(AlertRemovedReport::new(api.account(), gcp_project, removed))
}

/// The API client for gcp.project and the billing account (flag, else setting).
fn client(
    project: &Project,
    printer: Printer,
    billing_account: Option<&str>,
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
    let account = billing_account.unwrap_or(&gcp.billing_account).to_string();
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

fn api_error(context: String, e: budget::ApiError) -> CommandError {
    let mut err = CommandError::from_error(context, &e.kind);
    err.hints = e.hints;
    err
}

/// `set` and `show`: the budget found (none when there is none) and, for `set`, what was done.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AlertReport {
    pub(crate) schema_version: u32,
    pub(crate) billing_account: String,
    /// The gcp project the budget is on.
    pub(crate) project: String,
    pub(crate) budget: Option<AlertBudget>,
    /// `created`, `updated` or `unchanged` (`set` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) action: Option<String>,
}

/// One budget, as cwo shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AlertBudget {
    pub(crate) name: String,
    pub(crate) display_name: String,
    /// None: the budget follows last period's spend.
    pub(crate) amount: Option<AlertAmount>,
    /// `MONTH` unless the budget says otherwise (as the API returns it).
    pub(crate) calendar_period: Value,
    pub(crate) thresholds: Vec<Threshold>,
    pub(crate) projects: Vec<String>,
    pub(crate) labels: BTreeMap<String, Vec<Value>>,
    pub(crate) emails_billing_admins: bool,
    pub(crate) etag: String,
    /// The one-line description the text form shows.
    #[serde(skip)]
    pub(crate) summary: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AlertAmount {
    /// The amount as a decimal, e.g. `12.5`.
    pub(crate) value: String,
    pub(crate) units: String,
    pub(crate) nanos: i32,
    /// None: the billing account's currency.
    pub(crate) currency_code: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Threshold {
    pub(crate) percent: f64,
    /// `CURRENT_SPEND` or `FORECASTED_SPEND`.
    pub(crate) spend_basis: String,
}

impl From<&Budget> for AlertBudget {
    fn from(b: &Budget) -> AlertBudget {
        let f = b.filter();
        AlertBudget {
            name: b.name.clone(),
            display_name: b.display_name.clone(),
            amount: b.money().map(|m| AlertAmount {
                value: m.amount().to_string(),
                units: m.units.clone(),
                nanos: m.nanos,
                currency_code: (!m.currency_code.is_empty()).then(|| m.currency_code.clone()),
            }),
            calendar_period: f
                .other
                .get("calendarPeriod")
                .cloned()
                .unwrap_or_else(|| Value::from("MONTH")),
            thresholds: b
                .thresholds()
                .into_iter()
                .map(|(percent, basis)| Threshold {
                    percent,
                    spend_basis: basis.to_string(),
                })
                .collect(),
            projects: f.projects,
            labels: f.labels,
            emails_billing_admins: b.emails_admins(),
            etag: b.etag.clone(),
            summary: b.describe(),
        }
    }
}

impl AlertReport {
    pub(crate) fn new(
        billing_account: &str,
        project: &str,
        budget: Option<&Budget>,
        action: Option<&str>,
    ) -> AlertReport {
        AlertReport {
            schema_version: SCHEMA_VERSION,
            billing_account: billing_account.to_string(),
            project: project.to_string(),
            budget: budget.map(AlertBudget::from),
            action: action.map(str::to_string),
        }
    }
}

impl Report for AlertReport {
    /// The budget's name, display name and description; nothing when there is none.
    fn text(&self) -> String {
        match &self.budget {
            Some(b) => format!(
                "budget  {}\nname    {}\nalert   {}\n",
                b.name, b.display_name, b.summary
            ),
            None => String::new(),
        }
    }
}

/// `remove`: the budgets deleted.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AlertRemovedReport {
    pub(crate) schema_version: u32,
    pub(crate) billing_account: String,
    pub(crate) project: String,
    pub(crate) removed: Vec<String>,
}

impl AlertRemovedReport {
    pub(crate) fn new(
        billing_account: &str,
        project: &str,
        removed: Vec<String>,
    ) -> AlertRemovedReport {
        AlertRemovedReport {
            schema_version: SCHEMA_VERSION,
            billing_account: billing_account.to_string(),
            project: project.to_string(),
            removed,
        }
    }
}

impl Report for AlertRemovedReport {
    /// The removed budgets' names, one a line.
    fn text(&self) -> String {
        self.removed.iter().map(|n| format!("{n}\n")).collect()
    }
}
