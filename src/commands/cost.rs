//! `cwo cost [--since] [--until] [--by worker|task|day] [--format table|json|csv] [--ledger FILE]`
//! and `cwo cost export FILE`.

use chrono::{DateTime, NaiveDate, Utc};

use crate::cli::{CostAction, CostArgs, CostBy, CostFormat};
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::report::cost::{By, CostQuery};
use crate::report::{self, sources};

pub(crate) fn parse_time(s: &str, flag: &str) -> Result<DateTime<Utc>, CommandError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    Err(CommandError::usage(format!("{flag} `{s}` is not a time"))
        .hint("write 2026-11-01 or 2026-11-01T12:00:00Z"))
}

pub(crate) async fn cost(
    project: &Project,
    printer: Printer,
    args: &CostArgs,
) -> Result<ExitStatus, CommandError> {
    if let Some(CostAction::Export { file }) = &args.action {
        let rows = sources::export_ledger(project, file)?;
        printer.status(format!("wrote {rows} ledger row(s) to {}", file.display()));
        return Ok(ExitStatus::Success);
    }
    let time = |flag: &str, value: &Option<String>| {
        value.as_deref().map(|s| parse_time(s, flag)).transpose()
    };
    let query = CostQuery {
        by: match args.by {
            CostBy::Worker => By::Worker,
            CostBy::Task => By::Task,
            CostBy::Day => By::Day,
        },
        ledger: args.ledger.clone(),
        since: time("--since", &args.since)?,
        until: time("--until", &args.until)?,
    };
    let report = report::cost::collect(project, &query)?;
    for w in &report.warnings {
        printer.warn(w);
    }
    match args.format {
        CostFormat::Csv => printer.out(report.csv()),
        format => report::print(&printer, &report, format == CostFormat::Json),
    }
    Ok(ExitStatus::Success)
}
