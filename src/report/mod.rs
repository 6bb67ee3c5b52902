//! Typed reports: what `status`, `cost`, `budget check`, `budget alert`, `reap`, `doctor`, `github init`, `task list`
//! and `config show` print. Each gathers its data here (from the journal, the provider, the tracker, the cost
//! algorithms) into a `#[derive(Serialize)]` struct that carries `schema_version`; the command
//! prints it through one of two paths: `Printer::json`, or the text the report renders (its
//! tables through the one renderer in `table`).

pub(crate) mod budget;
pub(crate) mod budget_alert;
pub(crate) mod config;
pub(crate) mod cost;
pub(crate) mod doctor;
pub(crate) mod github;
pub(crate) mod image;
pub(crate) mod plan;
pub(crate) mod reap;
pub(crate) mod serve;
pub(crate) mod sources;
pub(crate) mod status;
pub(crate) mod table;
pub(crate) mod tasks;

pub(crate) use crate::printer::SCHEMA_VERSION;

use crate::printer::Printer;

/// A report with a text form next to its JSON.
pub(crate) trait Report: serde::Serialize {
    /// What stdout shows without `--format json`.
    fn text(&self) -> String;
}

/// Prints a report: JSON (with its `schema_version`) or its text, on stdout.
pub(crate) fn print(printer: &Printer, report: &impl Report, json: bool) {
    if json {
        printer.json(report);
    } else {
        printer.out(report.text());
    }
}

/// A JSON number as the JSON output writes it (`60.0`, not `60`), for text and CSV cells.
pub(crate) fn number(v: f64) -> String {
    serde_json::Value::from(v).to_string()
}
