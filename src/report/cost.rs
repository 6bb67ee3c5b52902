//! `cwo cost`: what the worker lives of a time range cost, per worker, task or day.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::table::Table;
use super::{Report, SCHEMA_VERSION, number, sources};
use crate::cost::compute;
use crate::cost::money;
use crate::cost::report::{self, AttemptSpan, DayCost, TaskCost, WorkerCost};
use crate::error::CommandError;
use crate::project::Project;

/// How the rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum By {
    Worker,
    Task,
    Day,
}

impl By {
    fn name(self) -> &'static str {
        match self {
            By::Worker => "worker",
            By::Task => "task",
            By::Day => "day",
        }
    }
}

/// What to report on.
#[derive(Debug, Clone)]
pub(crate) struct CostQuery {
    pub(crate) by: By,
    /// An exported ledger instead of this project's journal.
    pub(crate) ledger: Option<PathBuf>,
    /// Lives that started in [since, until).
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum Rows {
    Worker(Vec<WorkerCost>),
    Task(Vec<TaskCost>),
    Day(Vec<DayCost>),
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CostTotal {
    /// `None` when any life's price is unknown.
    pub(crate) list_usd: Option<f64>,
    pub(crate) expected_usd: Option<f64>,
    /// The sums of the known prices.
    pub(crate) known_list_usd: f64,
    pub(crate) known_expected_usd: f64,
    pub(crate) unknown_workers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CostReport {
    pub(crate) schema_version: u32,
    pub(crate) by: &'static str,
    pub(crate) rows: Rows,
    pub(crate) total: CostTotal,
    /// Why the free tier does not apply (also said on stderr).
    pub(crate) warnings: Vec<String>,
}

pub(crate) fn collect(project: &Project, query: &CostQuery) -> Result<CostReport, CommandError> {
    if query.by == By::Task && query.ledger.is_some() {
        return Err(CommandError::usage(
            "--by task needs the journal's attempts; it cannot be used with --ledger",
        ));
    }
    let now = Utc::now();
    let journal = project.journal()?;
    let mut lives = match &query.ledger {
        Some(path) => sources::ledger_lives(&sources::read_ledger_file(path)?),
        None => {
            let mut l = sources::ledger_lives(&journal.ledger()?);
            l.extend(sources::running_lives(&journal)?);
            l
        }
    };
    lives.retain(|l| {
        query.since.is_none_or(|s| l.started_at >= s)
            && query.until.is_none_or(|u| l.started_at < u)
    });
    let (costed, warnings) = compute::cost(&lives, now);
    let rows = match query.by {
        By::Worker => Rows::Worker(report::by_worker(&costed)),
        By::Day => Rows::Day(report::by_day(&costed, now)),
        By::Task => {
            let usages = journal.usages(None)?;
            let attempts: Vec<AttemptSpan> = journal
                .attempts(None)?
                .into_iter()
                .map(|a| AttemptSpan {
                    usage: usages.get(&a.id).map(|(u, _)| *u).filter(|u| u.steps > 0),
                    llm_usd: a.llm_cost(usages.get(&a.id).map(|(u, _)| u)),
                    task: a.ball_id,
                    worker: a.worker,
                    started_at: a.started_at,
                    ended_at: a.ended_at,
                })
                .collect();
            let pull_requests = journal
                .pull_requests(false)?
                .into_iter()
                .map(|p| (p.ball_id, p.number))
                .collect();
            Rows::Task(report::by_task(&costed, &attempts, &pull_requests, now))
        }
    };
    let (list, list_unknown) = report::total(costed.iter().map(|c| c.list_usd));
    let (expected, expected_unknown) = report::total(costed.iter().map(|c| c.expected_usd));
    Ok(CostReport {
        schema_version: SCHEMA_VERSION,
        by: query.by.name(),
        rows,
        total: CostTotal {
            list_usd: (!list_unknown).then_some(list),
            expected_usd: (!expected_unknown).then_some(expected),
            known_list_usd: list,
            known_expected_usd: expected,
            unknown_workers: costed
                .iter()
                .filter(|c| c.list_usd.is_none())
                .map(|c| c.life.worker.clone())
                .collect(),
        },
        warnings,
    })
}

/// A money amount for people: fractions of a cent stay visible.
fn usd(v: f64) -> String {
    let v = money(v);
    if v != 0.0 && v.abs() < 0.01 {
        format!("{v:.6}")
    } else {
        format!("{v:.4}")
    }
}

fn usd_cell(v: Option<f64>) -> String {
    v.map_or_else(|| "unknown".into(), |v| format!("${}", usd(v)))
}

fn time_cell(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

impl CostReport {
    fn table(&self) -> Table {
        match &self.rows {
            Rows::Worker(rows) => {
                let mut t = Table::new(&[
                    "worker",
                    "provider",
                    "machine_type",
                    "zone",
                    "started_at",
                    "billed_seconds",
                    "list_usd",
                    "expected_usd",
                    "termination_reason",
                ]);
                for r in rows {
                    t.row(vec![
                        r.worker.clone(),
                        r.provider.clone(),
                        or_dash(&r.machine_type),
                        or_dash(&r.zone),
                        time_cell(r.started_at),
                        number(r.billed_seconds),
                        usd_cell(r.list_usd),
                        usd_cell(r.expected_usd),
                        r.termination_reason.clone(),
                    ]);
                }
                t
            }
            Rows::Task(rows) => {
                let mut t = Table::new(&[
                    "task",
                    "pr",
                    "seconds",
                    "worker_list_usd",
                    "worker_expected_usd",
                    "llm_tokens",
                    "llm_usd",
                    "total_usd",
                ]);
                for r in rows {
                    let tokens = r.input_tokens
                        + r.output_tokens
                        + r.reasoning_tokens
                        + r.cache_read_tokens
                        + r.cache_write_tokens;
                    t.row(vec![
                        r.task.clone(),
                        r.pull_request
                            .map_or_else(|| "-".into(), |n| format!("#{n}")),
                        number(r.seconds),
                        usd_cell(r.list_usd),
                        usd_cell(r.expected_usd),
                        tokens.to_string(),
                        usd_cell(r.llm_usd),
                        usd_cell(r.total_usd),
                    ]);
                }
                t
            }
            Rows::Day(rows) => {
                let mut t = Table::new(&["day", "list_usd", "expected_usd"]);
                for r in rows {
                    t.row(vec![
                        r.day.clone(),
                        usd_cell(r.list_usd),
                        usd_cell(r.expected_usd),
                    ]);
                }
                t
            }
        }
    }

    /// The rows as CSV: the JSON keys as the header, an unknown amount as `unknown`.
    pub(crate) fn csv(&self) -> String {
        let rows = match serde_json::to_value(&self.rows).expect("rows serialize") {
            serde_json::Value::Array(rows) => rows,
            _ => unreachable!("rows are a list"),
        };
        let mut out = String::new();
        let keys: Vec<String> = match rows.first() {
            Some(serde_json::Value::Object(first)) => first.keys().cloned().collect(),
            _ => vec![],
        };
        out.push_str(&keys.join(","));
        out.push('\n');
        for row in rows {
            let serde_json::Value::Object(row) = row else {
                continue;
            };
            let cells: Vec<String> = row
                .into_iter()
                .map(|(_, v)| match v {
                    serde_json::Value::String(s) if s.contains([',', '"', '\n']) => {
                        format!("\"{}\"", s.replace('"', "\"\""))
                    }
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => "unknown".into(),
                    v => v.to_string(),
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }
}

impl Report for CostReport {
    fn text(&self) -> String {
        let table = self.table();
        let mut out = String::new();
        if table.is_empty() {
            out.push_str("no worker lives in this range\n");
        }
        out.push_str(&table.render());
        let t = &self.total;
        out.push_str(&format!(
            "total: list ${}{}, expected bill ${}{} (free tier applied)\n",
            usd(t.known_list_usd),
            if t.list_usd.is_none() {
                " + unknown"
            } else {
                ""
            },
            usd(t.known_expected_usd),
            if t.expected_usd.is_none() {
                " + unknown"
            } else {
                ""
            },
        ));
        out
    }
}
