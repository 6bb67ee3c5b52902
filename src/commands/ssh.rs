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
    let live: Vec<_> = journal
        .live_workers()?
        .into_iter()
        .filter(|w| w.state == "ready")
        .collect();
    let row = match &args.worker {
        Some(name) => live.iter().find(|w| &w.name == name).ok_or_else(|| {
            CommandError::user(format!("no live worker named {name}"))
                .hint("`cwo status` lists the workers")
        })?,
        None => match live.as_slice() {
            [one] => one,
            [] => {
                return Err(CommandError::user("no worker is up")
                    .hint("bring one up with `cwo up`, or let `cwo run` do it"));
            }
            many => {
                let names: Vec<&str> = many.iter().map(|w| w.name.as_str()).collect();
                return Err(CommandError::usage(format!(
                    "{} workers are up: {}; name one",
                    many.len(),
                    names.join(", ")
                )));
            }
        },
    };
    let provider = project.provider(&journal);
    let instance = provider
        .get(&row.name)
        .await
        .map_err(|e| CommandError::from(e).context(format!("cannot look up worker {}", row.name)))?
        .ok_or_else(|| {
            CommandError::user(format!("worker {} is gone", row.name))
                .hint("`cwo down` updates the journal")
        })?;
    let transport = project
        .connector(&journal)
        .connect(&instance)
        .map_err(|e| CommandError::from_error(format!("cannot reach worker {}", row.name), &e))?;
    let failed = |e: crate::transport::TransportError| {
        CommandError::from_error(format!("ssh to worker {} failed", row.name), &e)
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
