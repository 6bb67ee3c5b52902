//! `cwo schedule install|remove|show`: the crontab entry that runs `cwo reap --yes` on a
//! schedule, so forgotten workers die even when no cwo is running.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::cli::ScheduleCommand;
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::util::shell::shell_quote as q;

fn marker(project: &Project) -> String {
    format!("# cwo reap: {}", project.root.display())
}

/// Whether this project's reaper line is in the user's crontab (None: crontab cannot be read).
pub(crate) fn reaper_installed(project: &Project) -> Option<bool> {
    let marker = marker(project);
    read_crontab()
        .ok()
        .map(|c| c.lines().any(|l| l.ends_with(&marker)))
}

fn read_crontab() -> Result<String, CommandError> {
    let out = Command::new("crontab").arg("-l").output().map_err(|e| {
        CommandError::user(format!("cannot run crontab: {e}"))
            .hint("install cron (Debian: apt-get install cron)")
    })?;
    // "no crontab for user" is an empty crontab.
    Ok(if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::new()
    })
}

fn write_crontab(text: &str) -> Result<(), CommandError> {
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| CommandError::user(format!("cannot run crontab: {e}")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())
        .map_err(|e| CommandError::user(format!("writing the crontab: {e}")))?;
    let st = child
        .wait()
        .map_err(|e| CommandError::user(format!("crontab: {e}")))?;
    if !st.success() {
        return Err(CommandError::user(format!("crontab - exited with {st}")));
    }
    Ok(())
}

pub(crate) fn schedule(
    project: &Project,
    printer: Printer,
    cmd: &ScheduleCommand,
) -> Result<ExitStatus, CommandError> {
    let marker = marker(project);
    let current = read_crontab()?;
    let others: Vec<&str> = current.lines().filter(|l| !l.ends_with(&marker)).collect();
    let ours: Option<&str> = current.lines().find(|l| l.ends_with(&marker));
    match cmd {
        ScheduleCommand::Show => {
            match ours {
                Some(line) => printer.out(line),
                None => printer.status("no cwo reap entry for this project in the crontab"),
            }
            Ok(ExitStatus::Success)
        }
        ScheduleCommand::Remove => {
            if ours.is_none() {
                printer.status("nothing to remove");
                return Ok(ExitStatus::Success);
            }
            let mut text = others.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            write_crontab(&text)?;
            printer.status("removed the cwo reap entry");
            Ok(ExitStatus::Success)
        }
        ScheduleCommand::Install { every } => {
            let exe = std::env::current_exe()
                .map_err(|e| CommandError::user(format!("cannot find the cwo binary: {e}")))?;
            std::fs::create_dir_all(&project.state_dir)
                .map_err(|e| CommandError::user(format!("{}: {e}", project.state_dir.display())))?;
            let log = project.state_dir.join("reap.log");
            let line = format!(
                "*/{every} * * * * cd {} && {} reap --yes --no-progress >> {} 2>&1 {marker}",
                q(&project.root.display().to_string()),
                q(&exe.display().to_string()),
                q(&log.display().to_string()),
            );
            if ours == Some(line.as_str()) {
                printer.status("the cwo reap entry is already installed");
                printer.out(&line);
                return Ok(ExitStatus::Success);
            }
            let mut lines: Vec<&str> = others;
            lines.push(&line);
            write_crontab(&(lines.join("\n") + "\n"))?;
            printer.status(format!(
                "installed: cwo reap --yes every {every} minute(s), logging to {}",
                log.display()
            ));
            printer.out(&line);
            Ok(ExitStatus::Success)
        }
    }
}
