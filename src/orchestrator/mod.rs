//! The run loop: tracker → worker → agent → git → journal → teardown, in layers of meaning:
//! the worker lifecycle (`worker`), one task's attempts (`attempt`), the one writer of task
//! transitions (`record`), the loop (`scheduler`), and the label-based reaper (`reaper`). It
//! takes its ports (tracker, journal, provider, printer) as values and has its own error types.

mod attempt;
mod error;
pub mod image;
pub mod logs;
mod ports;
pub mod reaper;
mod record;
mod scheduler;
mod steps;
mod task;
mod teardown;
mod worker;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use error::OrchestratorError;
pub use ports::{Ports, RunContext};
pub use scheduler::Orchestrator;
pub use teardown::{TeardownError, delete_journaled};
pub use worker::WorkerLifecycle;
pub(crate) use worker::reach;

use crate::printer::{Printer, fmt_secs};

/// Signals from the outside: stop taking work; abort what runs; look at the tracker and the
/// pull requests now rather than at the next poll (`cwo serve`'s webhooks: a hint, never state).
#[derive(Clone, Default)]
pub struct Shutdown {
    pub stop_claiming: CancellationToken,
    pub abort: CancellationToken,
    /// `notify_one`: a wake that arrives while the loop is busy is kept (one permit) for its
    /// next wait.
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Drain the queue, tear down, exit.
    pub once: bool,
}

/// What a run did, for the closing summary.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RunSummary {
    pub complete: Vec<String>,
    pub blocked: Vec<String>,
    pub aborted: Vec<String>,
    /// Balls whose worker went away mid-task and that went back to the queue.
    pub requeued: Vec<String>,
    pub workers_created: u32,
    pub up_secs: f64,
    pub agent_secs: f64,
    pub git_secs: f64,
    pub teardown_secs: f64,
}

impl RunSummary {
    /// One line: what ran and where the time went.
    pub(crate) fn render(&self, total: Duration) -> String {
        let secs = |s: f64| fmt_secs(Duration::from_secs_f64(s));
        format!(
            "ran {} task(s): {} complete, {} blocked, {} aborted · worker up {} · agent {} · git {} · teardown {} · total {}",
            self.complete.len() + self.blocked.len() + self.aborted.len(),
            self.complete.len(),
            self.blocked.len(),
            self.aborted.len(),
            secs(self.up_secs),
            secs(self.agent_secs),
            secs(self.git_secs),
            secs(self.teardown_secs),
            fmt_secs(total),
        )
    }
}

fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > 72 {
        format!("{}…", line.chars().take(71).collect::<String>())
    } else {
        line.to_string()
    }
}

/// What deleting stopped workers did, on stderr.
pub(crate) fn report_stopped(printer: Printer, deleted: &[String], failed: &[String]) {
    for name in deleted {
        printer.status(format!(
            "worker {name} was stopped (Compute Engine no longer deletes it at its TTL); deleted"
        ));
    }
    for f in failed {
        printer.warn(format!("could not delete stopped worker {f}"));
    }
}
