//! `cwo status`: workers and tasks.

use std::collections::BTreeMap;

use chrono::Utc;
use serde_json::json;

use crate::cli::Format;
use crate::error::CliError;
use crate::journal::ControllerLock;
use crate::printer::{Printer, fmt_secs};
use crate::project::{Project, slug};
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
    // The cloud's truth next to the journal's: this project's labelled workers, as the provider
    // lists them. A failed list is reported, never read as "none".
    let provider = project.provider(&journal);
    let selector = BTreeMap::from([
        ("cwo-managed".to_string(), "true".to_string()),
        ("cwo-project".to_string(), slug(&project.name)),
    ]);
    let (mut listed, list_error) = match provider.list(&selector).await {
        Ok(l) => (Some(l), None),
        Err(e) => (None, Some(e.to_string())),
    };
    // A stopped worker is never shown as ready: it is deleted here and now (its TTL no longer
    // runs, its disk is billed).
    if let Some(l) = &mut listed {
        let slug = slug(&project.name);
        let on_retry = |line: String| printer.status(line);
        let reaper = crate::orchestrator::reaper::Reaper::new(
            provider.as_ref(),
            &journal,
            &slug,
            project.settings(),
            controller.is_some(),
            &on_retry,
        );
        let (deleted, failed) = reaper.delete_stopped(l).await;
        crate::orchestrator::report_stopped(printer, &deleted, &failed);
        l.retain(|i| !deleted.contains(&i.name));
    }
    let listed_names: Vec<&str> = listed.iter().flatten().map(|i| i.name.as_str()).collect();
    let journaled = journal.live_workers()?;
    let mut workers: Vec<serde_json::Value> = journaled
        .iter()
        .map(|w| {
            let uptime = w.created_at.map(|c| (now - c).num_seconds().max(0));
            // The countdown only runs while a controller is there to act on it.
            let idle_left = match (&controller, w.idle_since) {
                (Some(_), Some(since)) => {
                    Some((idle_timeout.as_secs() as i64 - (now - since).num_seconds()).max(0))
                }
                _ => None,
            };
            let cloud = match &listed {
                None => "unknown",
                Some(_) if listed_names.contains(&w.name.as_str()) => "present",
                Some(_) => "missing (deleted outside cwo? `cwo down` records it)",
            };
            json!({
                "name": w.name, "provider": w.provider, "state": w.state, "cloud": cloud,
                "created_at": w.created_at, "uptime_secs": uptime,
                "current_task": w.current_task, "idle_teardown_in_secs": idle_left,
            })
        })
        .collect();
    for inst in listed.iter().flatten() {
        if journaled.iter().any(|w| w.name == inst.name) {
            continue;
        }
        workers.push(json!({
            "name": inst.name, "provider": provider.kind(), "state": "unjournaled",
            "cloud": "present (unknown to the journal: `cwo reap` deletes it)",
            "created_at": inst.created_at, "uptime_secs": (now - inst.created_at).num_seconds().max(0),
            "current_task": null, "idle_teardown_in_secs": null,
        }));
    }
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
            "controller_pid": controller, "workers": workers, "provider_list_error": list_error,
            "tasks": { "counts": counts, "ready": ready, "balls": tasks },
        }));
        return Ok(0);
    }
    let mut out = String::new();
    match &controller {
        Some(pid) => out.push_str(&format!("controller: running (pid {pid})\n")),
        None => out.push_str("controller: not running\n"),
    }
    if let Some(e) = &list_error {
        out.push_str(&format!(
            "warning: the provider could not list workers ({e}); showing the journal only\n"
        ));
    }
    if workers.is_empty() {
        out.push_str("workers: none\n");
    } else {
        out.push_str(&format!(
            "{:<28} {:<8} {:<11} {:>9}  {:<24} {:<16} {}\n",
            "WORKER", "PROVIDER", "STATE", "UPTIME", "TASK", "IDLE TEARDOWN IN", "CLOUD"
        ));
        for w in &workers {
            let secs = |k: &str| {
                w[k].as_i64()
                    .map(|s| fmt_secs(std::time::Duration::from_secs(s as u64)))
                    .unwrap_or_else(|| "-".into())
            };
            out.push_str(&format!(
                "{:<28} {:<8} {:<11} {:>9}  {:<24} {:<16} {}\n",
                w["name"].as_str().unwrap_or(""),
                w["provider"].as_str().unwrap_or(""),
                w["state"].as_str().unwrap_or(""),
                secs("uptime_secs"),
                w["current_task"].as_str().unwrap_or("-"),
                secs("idle_teardown_in_secs"),
                w["cloud"].as_str().unwrap_or(""),
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
