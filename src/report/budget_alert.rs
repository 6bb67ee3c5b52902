//! `cwo budget alert set|show|remove`: cwo's Cloud Billing budget on gcp.project, as it is after
//! the command (or what was removed).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::{Report, SCHEMA_VERSION};
use crate::provider::gcp::budget::Budget;

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
