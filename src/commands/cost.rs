//! `cwo cost [--since] [--until] [--by worker|task|day] [--format table|json|csv] [--ledger FILE]`
//! and `cwo cost export FILE`.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::json;

use crate::cli::{CostAction, CostArgs, CostBy, CostFormat};
use crate::cost::compute::{self, Costed};
use crate::cost::sources::{self, LedgerFile};
use crate::cost::{money, money_sum};
use crate::error::{CommandError, ExitStatus};
use crate::printer::{Printer, SCHEMA_VERSION};
use crate::project::Project;

pub fn parse_time(s: &str, flag: &str) -> Result<DateTime<Utc>, CommandError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(CommandError::usage(format!("{flag} `{s}` is not a time"))
        .hint("write 2026-11-01 or 2026-11-01T12:00:00Z"))
}

fn usd(v: Option<f64>) -> String {
    match v.map(money) {
        // Short lives cost fractions of a cent: keep them visible.
        Some(v) if v != 0.0 && v.abs() < 0.01 => format!("{v:.6}"),
        Some(v) => format!("{v:.4}"),
        None => "unknown".into(),
    }
}

/// Sum of known values, and whether any was unknown.
fn total(values: impl Iterator<Item = Option<f64>>) -> (f64, bool) {
    let mut unknown = false;
    let sum = money_sum(values.filter_map(|v| {
        unknown |= v.is_none();
        v
    }));
    (sum, unknown)
}

pub async fn cost(
    project: &Project,
    printer: Printer,
    args: &CostArgs,
) -> Result<ExitStatus, CommandError> {
    let journal = project.journal()?;
    if let Some(CostAction::Export { file }) = &args.action {
        let doc = LedgerFile {
            schema_version: SCHEMA_VERSION,
            exported_at: Utc::now(),
            project: project.name.clone(),
            ledger: journal.ledger()?,
        };
        std::fs::write(file, serde_json::to_vec_pretty(&doc).expect("serializes"))
            .map_err(|e| CommandError::user(format!("cannot write {}: {e}", file.display())))?;
        printer.status(format!(
            "wrote {} ledger row(s) to {}",
            doc.ledger.len(),
            file.display()
        ));
        return Ok(ExitStatus::Success);
    }
    let now = Utc::now();
    let mut lives = match &args.ledger {
        Some(path) => {
            sources::ledger_lives(&sources::read_ledger_file(path).map_err(CommandError::usage)?)
        }
        None => {
            let mut l = sources::ledger_lives(&journal.ledger()?);
            l.extend(sources::running_lives(&journal).map_err(CommandError::user)?);
            l
        }
    };
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time(s, "--since"))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_time(s, "--until"))
        .transpose()?;
    lives.retain(|l| {
        since.is_none_or(|s| l.started_at >= s) && until.is_none_or(|u| l.started_at < u)
    });
    let (costed, warnings) = compute::cost(&lives, now);
    for w in &warnings {
        printer.warn(w);
    }
    let rows: Vec<BTreeMap<&str, serde_json::Value>> = match args.by {
        CostBy::Worker => costed.iter().map(|c| worker_row(c)).collect(),
        CostBy::Day => {
            let mut days: BTreeMap<String, (Option<f64>, Option<f64>)> = BTreeMap::new();
            for c in &costed {
                for (day, list, expected) in compute::by_day(c, now) {
                    let e = days.entry(day).or_insert((Some(0.0), Some(0.0)));
                    e.0 = e.0.zip(list).map(|(a, b)| a + b);
                    e.1 = e.1.zip(expected).map(|(a, b)| a + b);
                }
            }
            days.into_iter()
                .map(|(day, (list, expected))| {
                    BTreeMap::from([
                        ("day", json!(day)),
                        ("list_usd", json!(list)),
                        ("expected_usd", json!(expected)),
                    ])
                })
                .collect()
        }
        CostBy::Task => {
            if args.ledger.is_some() {
                return Err(CommandError::usage(
                    "--by task needs the journal's attempts; it cannot be used with --ledger",
                ));
            }
            let attempts = journal.attempts(None)?;
            let mut tasks: BTreeMap<String, (Option<f64>, Option<f64>, f64)> = BTreeMap::new();
            for c in &costed {
                let end = c.life.ended_at.unwrap_or(now);
                let life_secs = c.seconds.max(1.0);
                let mut used = 0.0;
                for a in attempts.iter().filter(|a| a.worker == c.life.worker) {
                    let a_end = a.ended_at.unwrap_or(now).min(end);
                    let secs = (a_end - a.started_at.max(c.life.started_at))
                        .num_milliseconds()
                        .max(0) as f64
                        / 1000.0;
                    let share = (secs / life_secs).min(1.0 - used);
                    used += share;
                    let e = tasks
                        .entry(a.ball_id.clone())
                        .or_insert((Some(0.0), Some(0.0), 0.0));
                    e.0 = e.0.zip(c.list_usd).map(|(x, v)| x + v * share);
                    e.1 = e.1.zip(c.expected_usd).map(|(x, v)| x + v * share);
                    e.2 += secs;
                }
                let idle = tasks
                    .entry("(idle)".into())
                    .or_insert((Some(0.0), Some(0.0), 0.0));
                idle.0 = idle.0.zip(c.list_usd).map(|(x, v)| x + v * (1.0 - used));
                idle.1 = idle
                    .1
                    .zip(c.expected_usd)
                    .map(|(x, v)| x + v * (1.0 - used));
                idle.2 += life_secs * (1.0 - used);
            }
            tasks
                .into_iter()
                .map(|(task, (list, expected, secs))| {
                    BTreeMap::from([
                        ("task", json!(task)),
                        ("seconds", json!((secs * 10.0).round() / 10.0)),
                        ("list_usd", json!(list)),
                        ("expected_usd", json!(expected)),
                    ])
                })
                .collect()
        }
    };
    let (list_total, list_unknown) = total(costed.iter().map(|c| c.list_usd));
    let (expected_total, expected_unknown) = total(costed.iter().map(|c| c.expected_usd));
    match args.format {
        CostFormat::Json => printer.json(json!({
            "by": format!("{:?}", args.by).to_lowercase(),
            "rows": rows,
            "total": {
                "list_usd": if list_unknown { None } else { Some(list_total) },
                "expected_usd": if expected_unknown { None } else { Some(expected_total) },
                "known_list_usd": list_total,
                "known_expected_usd": expected_total,
                "unknown_workers": costed.iter().filter(|c| c.list_usd.is_none()).map(|c| c.life.worker.clone()).collect::<Vec<_>>(),
            },
            "warnings": warnings,
        })),
        CostFormat::Csv => {
            let keys: Vec<&str> = rows.first().map(|r| r.keys().copied().collect()).unwrap_or_default();
            let mut out = keys.join(",");
            out.push('\n');
            for r in &rows {
                let cells: Vec<String> = keys
                    .iter()
                    .map(|k| match &r[k] {
                        serde_json::Value::String(s) => {
                            if s.contains([',', '"', '\n']) {
                                format!("\"{}\"", s.replace('"', "\"\""))
                            } else {
                                s.clone()
                            }
                        }
                        serde_json::Value::Null => "unknown".into(),
                        v => v.to_string(),
                    })
                    .collect();
                out.push_str(&cells.join(","));
                out.push('\n');
            }
            printer.out(out);
        }
        CostFormat::Table => {
            let mut out = String::new();
            if rows.is_empty() {
                out.push_str("no worker lives in this range\n");
            }
            // Columns in reading order; every row of one report has the same keys.
            let order: &[&str] = match args.by {
                CostBy::Worker => &["worker", "provider", "machine_type", "zone", "started_at", "billed_seconds", "list_usd", "expected_usd", "termination_reason"],
                CostBy::Task => &["task", "seconds", "list_usd", "expected_usd"],
                CostBy::Day => &["day", "list_usd", "expected_usd"],
            };
            let cell = |k: &str, v: &serde_json::Value| -> String {
                match v {
                    serde_json::Value::Null if k.ends_with("usd") => "unknown".into(),
                    serde_json::Value::Null => "-".into(),
                    v if k.ends_with("usd") => format!("${}", usd(v.as_f64())),
                    serde_json::Value::String(s) if k.ends_with("_at") => s.get(..19).unwrap_or(s).replace('T', " "),
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                }
            };
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| order.iter().map(|k| cell(k, &r[k])).collect())
                .collect();
            let widths: Vec<usize> = order
                .iter()
                .enumerate()
                .map(|(i, k)| table.iter().map(|r| r[i].len()).chain([k.len()]).max().unwrap_or(0))
                .collect();
            if !rows.is_empty() {
                let header: Vec<String> = order
                    .iter()
                    .zip(&widths)
                    .map(|(k, w)| format!("{:<w$}", k.to_uppercase(), w = *w))
                    .collect();
                out.push_str(header.join("  ").trim_end());
                out.push('\n');
            }
            for r in &table {
                let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}", w = *w)).collect();
                out.push_str(line.join("  ").trim_end());
                out.push('\n');
            }
            out.push_str(&format!(
                "total: list ${}{}, expected bill ${}{} (free tier applied)\n",
                usd(Some(list_total)),
                if list_unknown { " + unknown" } else { "" },
                usd(Some(expected_total)),
                if expected_unknown { " + unknown" } else { "" },
            ));
            printer.out(out);
        }
    }
    Ok(ExitStatus::Success)
}

fn worker_row(c: &Costed) -> BTreeMap<&'static str, serde_json::Value> {
    let p = c.life.price.as_ref();
    BTreeMap::from([
        ("worker", json!(c.life.worker)),
        ("provider", json!(c.life.provider)),
        ("started_at", json!(c.life.started_at)),
        ("ended_at", json!(c.life.ended_at)),
        ("billed_seconds", json!(c.billed_seconds)),
        ("machine_type", json!(p.map(|p| p.machine_type.clone()))),
        ("zone", json!(p.map(|p| p.zone.clone()))),
        ("list_usd", json!(c.list_usd)),
        ("expected_usd", json!(c.expected_usd)),
        (
            "termination_reason",
            json!(
                c.life
                    .termination_reason
                    .clone()
                    .unwrap_or_else(|| "running".into())
            ),
        ),
    ])
}
