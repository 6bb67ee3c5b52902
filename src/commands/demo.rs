//! `cwo demo`: the whole loop on a throwaway repository, with a scripted agent (see `demo.rs`).

use crate::cli::{DemoArgs, GlobalArgs};
use crate::demo;
use crate::error::{CommandError, ExitStatus};
use crate::journal::ControllerLock;
use crate::orchestrator::{RunOptions, Shutdown};
use crate::printer::Printer;
use crate::project::Project;

pub(crate) async fn demo(
    printer: Printer,
    args: &DemoArgs,
    g: &GlobalArgs,
) -> Result<ExitStatus, CommandError> {
    let base = demo::base_dir(args.dir.as_deref())?;
    printer.status(format!("building the demo in {}", base.display()));
    let root = demo::build(&base)?;
    let project = Project::load(Some(&root), &g.config)?;
    super::warn_about_settings(&project, &printer);
    let orch = project.orchestrator(printer).await?;
    printer.status("running `cwo run --once` on the local provider with the scripted demo agent\n");
    let _lock = ControllerLock::acquire(&project.state_dir)?;
    orch.run(RunOptions { once: true }, Shutdown::default())
        .await?;
    printer.out(demo::what_happened(
        &project,
        &base,
        orch.workers().journal(),
    )?);
    Ok(ExitStatus::Success)
}
