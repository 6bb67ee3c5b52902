//! `cwo schedule install|remove|show`: the crontab entry that runs `cwo reap --yes` on a
//! schedule, so forgotten workers die even when no cwo is running (see `schedule.rs`).

use crate::cli::ScheduleCommand;
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::schedule::{Crontab, ScheduleError};

pub(crate) fn schedule(
    project: &Project,
    printer: Printer,
    cmd: &ScheduleCommand,
) -> Result<ExitStatus, CommandError> {
    let crontab = Crontab::read(&project.root).map_err(error)?;
    match cmd {
        ScheduleCommand::Show => match crontab.ours {
            Some(line) => printer.out(line),
            None => printer.status("no cwo reap entry for this project in the crontab"),
        },
        ScheduleCommand::Remove => {
            if crontab.remove().map_err(error)? {
                printer.status("removed the cwo reap entry");
            } else {
                printer.status("nothing to remove");
            }
        }
        ScheduleCommand::Install { every } => {
            let installed = crontab
                .install(&project.root, &project.state_dir, *every)
                .map_err(error)?;
            if installed.already {
                printer.status("the cwo reap entry is already installed");
            } else {
                printer.status(format!(
                    "installed: cwo reap --yes every {every} minute(s), logging to {}",
                    installed.log.display()
                ));
            }
            printer.out(&installed.line);
        }
    }
    Ok(ExitStatus::Success)
}

fn error(e: ScheduleError) -> CommandError {
    let hint = matches!(e, ScheduleError::NoCrontab(_));
    let err = CommandError::user(e.to_string());
    if hint {
        err.hint("install cron (Debian: apt-get install cron)")
    } else {
        err
    }
}
