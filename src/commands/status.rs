//! `cwo status`: workers and tasks.

use chrono::Utc;
use serde_json::json;

use crate::cli::Format;
use crate::error::CliError;
use crate::journal::ControllerLock;
use crate::printer::{Printer, fmt_secs};
use crate::project::Project;
use crate::tracker::Tracker;

const STATES: [&str; 5] = [
    "in_progress",
    "pending",
    "blocked",
    "complete",
    "researched",
];

pub async fn status(project: &Project, printer: Printer, format: Format) -> Result<u8, CliError> {
    let journal = project.journal()?;
    let idle_timeout = project.settings().idle_timeout;
    let now = Utc::now();
    let controller = ControllerLock::holder(&project.state_dir);
    let workers: Vec<serde_json::Value> = journal
        .live_workers()?
        .into_iter()
        .map(|w| {
            let uptime = w.created_at.map(|c| (now - c).num_seconds().max(0));
            // The countdown only runs while a controller is there to act on it.
            let idle_left = match (&controller, w.idle_since) {
                (Some(_), Some(since)) => {
                    Some((idle_timeout.as_secs() as i64 - (now - since).num_seconds()).max(0))
                }
                _ => None,
            };
            json!({
                "name": w.name, "provider": w.provider, "state": w.state,
                "created_at": w.created_at, "uptime_secs": uptime,
                "current_task": w.current_task, "idle_teardown_in_secs": idle_left,
            })
        })
        .collect();
    let tasks = project.tracker().list()?;
    let mut counts = serde_json::Map::new();
    for s in STATES {
        counts.insert(
            s.into(),
            tasks.iter().filter(|t| t.state == s).count().into(),
        );
    }
    let ready: Vec<&str> = tasks
        .iter()
        .filter(|t| t.is_ready())
        .map(|t| t.id.as_str())
        .collect();

    if format == Format::Json {
        printer.json(json!({
            "project": project.root, "state_dir": project.state_dir,
            "controller_pid": controller, "workers": workers,
            "tasks": { "counts": counts, "ready": ready, "balls": tasks },
        }));
        return Ok(0);
    }
    let mut out = String::new();
    match &controller {
        Some(pid) => out.push_str(&format!("controller: running (pid {pid})\n")),
        None => out.push_str("controller: not running\n"),
    }
    if workers.is_empty() {
        out.push_str("workers: none\n");
    } else {
        out.push_str(&format!(
            "{:<28} {:<8} {:<9} {:>9}  {:<24} {}\n",
            "WORKER", "PROVIDER", "STATE", "UPTIME", "TASK", "IDLE TEARDOWN IN"
        ));
        for w in &workers {
            let secs = |k: &str| {
                w[k].as_i64()
                    .map(|s| fmt_secs(std::time::Duration::from_secs(s as u64)))
                    .unwrap_or_else(|| "-".into())
            };
            out.push_str(&format!(
                "{:<28} {:<8} {:<9} {:>9}  {:<24} {}\n",
                w["name"].as_str().unwrap_or(""),
                w["provider"].as_str().unwrap_or(""),
                w["state"].as_str().unwrap_or(""),
                secs("uptime_secs"),
                w["current_task"].as_str().unwrap_or("-"),
                secs("idle_teardown_in_secs"),
            ));
        }
    }
    let summary: Vec<String> = STATES
        .iter()
        .map(|s| format!("{} {s}", counts[*s]))
        .collect();
    out.push_str(&format!(
        "tasks: {} ({} ready)\n",
        summary.join(", "),
        ready.len()
    ));
    printer.out(out);
    Ok(0)
}
