//! `cwo run`: the loop, under the project's controller lock, with signal handling.

use tokio::signal::unix::{SignalKind, signal};

use crate::cli::RunArgs;
use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::model::ids::slug;
use crate::orchestrator::{Orchestrator, Ports, RunContext, RunOptions, Shutdown, WorkerLifecycle};
use crate::printer::Printer;
use crate::project::Project;

pub(crate) async fn run(
    project: &Project,
    printer: Printer,
    args: &RunArgs,
) -> Result<ExitStatus, CommandError> {
    let _lock = ControllerLock::acquire(&project.state_dir)?;
    let orch = orchestrator(project, printer)?;
    let shutdown = Shutdown::default();
    watch_signals(shutdown.clone(), args.now, printer)?;
    let started = std::time::Instant::now();
    let summary = orch.run(RunOptions { once: args.once }, shutdown).await?;
    printer.status(summary.render(started.elapsed()));
    Ok(ExitStatus::Success)
}

/// The loop, with the project's ports: its tracker, journal and provider.
pub(crate) fn orchestrator(
    project: &Project,
    printer: Printer,
) -> Result<Orchestrator, CommandError> {
    let (ports, ctx) = ports(project, printer)?;
    Ok(Orchestrator::new(ports, ctx))
}

/// The worker lifecycle alone (`cwo up`, `cwo down`).
pub(crate) fn lifecycle(
    project: &Project,
    printer: Printer,
) -> Result<WorkerLifecycle, CommandError> {
    let (ports, ctx) = ports(project, printer)?;
    Ok(WorkerLifecycle::new(&ports, &ctx))
}

fn ports(project: &Project, printer: Printer) -> Result<(Ports, RunContext), CommandError> {
    let settings = project.settings().clone();
    let template = if settings.agent.prompt_template.is_empty() {
        crate::agent::DEFAULT_TEMPLATE.to_string()
    } else {
        let path = project.root.join(&settings.agent.prompt_template);
        std::fs::read_to_string(&path).map_err(|e| {
            CommandError::usage(format!("cannot read agent.prompt_template {}: {e}", path.display()))
                .hint("set agent.prompt_template to a file relative to the project root, or \"\" for the built-in prompt")
        })?
    };
    let journal = project.journal()?;
    let ports = Ports {
        tracker: std::sync::Arc::new(project.tracker()),
        provider: project.provider(&journal),
        connector: project.connector(&journal),
        journal,
        printer,
    };
    let ctx = RunContext {
        root: project.root.clone(),
        state_dir: project.state_dir.clone(),
        project_slug: slug(&project.name),
        settings: std::sync::Arc::new(settings),
        template,
    };
    Ok((ports, ctx))
}

/// First SIGINT/SIGTERM: stop claiming (and abort with --now); the second aborts running attempts.
fn watch_signals(shutdown: Shutdown, now: bool, printer: Printer) -> Result<(), CommandError> {
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CommandError::user(format!("cannot install the SIGINT handler: {e}")))?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CommandError::user(format!("cannot install the SIGTERM handler: {e}")))?;
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            seen += 1;
            if seen == 1 && !now {
                printer.status("signal received: finishing running attempts, then tearing down");
                shutdown.stop_claiming.cancel();
            } else {
                printer.status("signal received: aborting running attempts, then tearing down");
                shutdown.stop_claiming.cancel();
                shutdown.abort.cancel();
            }
        }
    });
    Ok(())
}
