//! `cwo serve`'s state (`GET /api/v1/state` and the dashboard): the reports `cwo status`,
//! `cwo cost --by day` (this month) and, with `serve.budget_usd`, `cwo budget check --period
//! month` print, side by side.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::SCHEMA_VERSION;
use super::budget::{BudgetCheck, BudgetQuery};
use super::cost::{By, CostQuery, CostReport, Rows};
use super::status::StatusReport;
use crate::cost::budget::{Period, Policy};
use crate::error::CommandError;
use crate::printer::Printer;
use crate::project::Project;

/// What the fleet cost today and this month (UTC), as `cwo cost` prices it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CostSummary {
    /// The expected bill (free tier applied) of the lives' known prices.
    pub(crate) today_usd: f64,
    pub(crate) month_usd: f64,
    /// Workers whose price is unknown (left out of the sums).
    pub(crate) unknown_workers: Vec<String>,
    /// `cwo cost --by day --since <the month's first day>`.
    pub(crate) by_day: CostReport,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServeState {
    pub(crate) schema_version: u32,
    pub(crate) generated_at: DateTime<Utc>,
    pub(crate) status: StatusReport,
    pub(crate) cost: CostSummary,
    /// The month's spend against `serve.budget_usd`; None when it is not set.
    pub(crate) budget: Option<BudgetCheck>,
}

pub(crate) async fn collect(
    project: &Project,
    printer: Printer,
) -> Result<ServeState, CommandError> {
    let now = Utc::now();
    let status = super::status::collect(project, printer).await?;
    let by_day = super::cost::collect(
        project,
        &CostQuery {
            by: By::Day,
            ledger: None,
            since: Period::Month.start(now),
            until: None,
        },
    )?;
    let today = now.format("%Y-%m-%d").to_string();
    let today_usd = match &by_day.rows {
        Rows::Day(days) => days
            .iter()
            .filter(|d| d.day == today)
            .filter_map(|d| d.expected_usd)
            .sum(),
        _ => 0.0,
    };
    let cost = CostSummary {
        today_usd,
        month_usd: by_day.total.known_expected_usd,
        unknown_workers: by_day.total.unknown_workers.clone(),
        by_day,
    };
    let budget = match project.settings().serve.budget_usd.0 {
        Some(limit_usd) => Some(
            super::budget::collect(
                project,
                printer,
                &BudgetQuery {
                    policy: Policy {
                        limit_usd,
                        warn_at_pct: 80.0,
                        // The dashboard shows an unknown price; it does not fail on it.
                        fail_on_unknown: false,
                    },
                    period: Period::Month,
                    ledger: None,
                    enforce: false,
                    include_llm: false,
                },
            )
            .await?,
        ),
        None => None,
    };
    Ok(ServeState {
        schema_version: SCHEMA_VERSION,
        generated_at: now,
        status,
        cost,
        budget,
    })
}
