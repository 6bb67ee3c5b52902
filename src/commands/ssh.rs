//! `cwo ssh [worker] [-- command]`: a shell on a worker, or one command there.

use std::io::{IsTerminal, Write};

use crate::cli::SshArgs;
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::transport::{ExecRequest, ExecStatus, Stream};

pub(crate) async fn ssh(
    project: &Project,
    _printer: Printer,
    args: &SshArgs,
) -> Result<ExitStatus, CommandError> {
    let journal = project.journal()?;
    let (instance, transport) = crate::orchestrator::reach(
        &journal,
        project.provider(&journal).as_ref(),
        &project.connector(&journal),
        args.worker.as_deref(),
    )
    .await?;
    let worker = &instance.name;
    let failed = |e: crate::transport::TransportError| {
        CommandError::from_error(format!("ssh to worker {worker} failed"), &e)
    };
    // One command without a terminal: plain streams, exact exit code (scripts and tests).
    if !args.command.is_empty() && !std::io::stdin().is_terminal() {
        let req = ExecRequest::new(args.command.clone()).cwd(instance.workspace.clone());
        let status = transport
            .exec(req, &mut |stream, bytes| {
                let _ = match stream {
                    Stream::Stdout => std::io::stdout().write_all(bytes),
                    Stream::Stderr => std::io::stderr().write_all(bytes),
                };
            })
            .await
            .map_err(failed)?;
        let _ = std::io::stdout().flush();
        return Ok(match status {
            ExecStatus::Exited(c) => ExitStatus::External(c.clamp(0, 255) as u8),
            ExecStatus::Signaled(s) => ExitStatus::External((128 + s).clamp(0, 255) as u8),
            ExecStatus::TimedOut | ExecStatus::Cancelled => ExitStatus::Failure,
        });
    }
    let command = (!args.command.is_empty()).then_some(args.command.as_slice());
    let code = transport
        .interactive(command, &instance.workspace)
        .await
        .map_err(failed)?;
    Ok(ExitStatus::External(code.clamp(0, 255) as u8))
}
