//! The crontab entry that runs `cwo reap --yes` for a project on a schedule, so forgotten workers
//! die even when no cwo is running (`cwo schedule`, and `cwo doctor`'s reaper check).
//!
//! The entry is one line of the user's crontab ending in a marker that names the project's root;
//! every other line is left as it is.

use std::path::{Path, PathBuf};

use crate::util::process::{ProcessError, Program};
use crate::util::shell::shell_quote as q;

/// Why the crontab could not be read or written, or the entry not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    /// `crontab -l` could not be started (cron is probably not installed).
    #[error("cannot run crontab: {0}")]
    NoCrontab(std::io::Error),
    /// `crontab -` could not be started.
    #[error("cannot run crontab: {0}")]
    Run(std::io::Error),
    #[error("writing the crontab: {0}")]
    Write(std::io::Error),
    #[error("crontab: {0}")]
    Wait(std::io::Error),
    #[error("crontab - exited with {0}")]
    Refused(std::process::ExitStatus),
    #[error("cannot find the cwo binary: {0}")]
    NoExe(std::io::Error),
    /// The cause is part of the message, not a source.
    #[error("{}: {cause}", dir.display())]
    StateDir { dir: PathBuf, cause: std::io::Error },
}

/// The user's crontab, split into this project's reaper entry and every other line.
pub(crate) struct Crontab {
    marker: String,
    /// The lines that are not this project's entry, in order.
    others: Vec<String>,
    /// This project's entry, if it is there.
    pub(crate) ours: Option<String>,
}

/// What `install` did.
pub(crate) struct Installed {
    /// The crontab line.
    pub(crate) line: String,
    /// Where the reaper's output goes.
    pub(crate) log: PathBuf,
    /// The same line was there already (nothing was written).
    pub(crate) already: bool,
}

/// Whether this project's reaper line is in the user's crontab (None: crontab cannot be read).
pub(crate) fn reaper_installed(root: &Path) -> Option<bool> {
    Crontab::read(root).ok().map(|c| c.ours.is_some())
}

impl Crontab {
    /// The user's crontab ("no crontab for user" is an empty one), for the project at `root`.
    pub(crate) fn read(root: &Path) -> Result<Crontab, ScheduleError> {
        let out = Program::new("crontab")
            .args(["-l"])
            .output()
            .map_err(|e| match e {
                ProcessError::Spawn { source, .. }
                | ProcessError::Stdin { source, .. }
                | ProcessError::Wait { source, .. } => ScheduleError::NoCrontab(source),
            })?;
        let text = if out.success {
            out.stdout
        } else {
            String::new()
        };
        let marker = format!("# cwo reap: {}", root.display());
        Ok(Crontab {
            others: text
                .lines()
                .filter(|l| !l.ends_with(&marker))
                .map(str::to_string)
                .collect(),
            ours: text
                .lines()
                .find(|l| l.ends_with(&marker))
                .map(str::to_string),
            marker,
        })
    }

    /// Removes this project's entry; false when there was none (nothing is written then).
    pub(crate) fn remove(self) -> Result<bool, ScheduleError> {
        if self.ours.is_none() {
            return Ok(false);
        }
        let mut text = self.others.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        write(&text)?;
        Ok(true)
    }

    /// Puts in (or replaces) this project's entry: `cwo reap --yes` every `every` minutes from
    /// `root`, logging to `state_dir/reap.log`.
    pub(crate) fn install(
        self,
        root: &Path,
        state_dir: &Path,
        every: u32,
    ) -> Result<Installed, ScheduleError> {
        let exe = std::env::current_exe().map_err(ScheduleError::NoExe)?;
        std::fs::create_dir_all(state_dir).map_err(|cause| ScheduleError::StateDir {
            dir: state_dir.to_path_buf(),
            cause,
        })?;
        let log = state_dir.join("reap.log");
        let line = entry(every, root, &exe, &log, &self.marker);
        if self.ours.as_deref() == Some(line.as_str()) {
            return Ok(Installed {
                line,
                log,
                already: true,
            });
        }
        let mut lines = self.others;
        lines.push(line.clone());
        write(&(lines.join("\n") + "\n"))?;
        Ok(Installed {
            line,
            log,
            already: false,
        })
    }
}

/// The crontab line: every `every` minutes, from `root`, `exe reap --yes`, appending to `log`.
fn entry(every: u32, root: &Path, exe: &Path, log: &Path, marker: &str) -> String {
    format!(
        "*/{every} * * * * cd {} && {} reap --yes --no-progress >> {} 2>&1 {marker}",
        q(&root.display().to_string()),
        q(&exe.display().to_string()),
        q(&log.display().to_string()),
    )
}

fn write(text: &str) -> Result<(), ScheduleError> {
    let st = Program::new("crontab")
        .args(["-"])
        .feed(text.as_bytes())
        .map_err(|e| match e {
            ProcessError::Spawn { source, .. } => ScheduleError::Run(source),
            ProcessError::Stdin { source, .. } => ScheduleError::Write(source),
            ProcessError::Wait { source, .. } => ScheduleError::Wait(source),
        })?;
    if !st.success() {
        return Err(ScheduleError::Refused(st));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_quotes_its_paths_and_ends_in_the_marker() {
        let line = entry(
            15,
            Path::new("/home/a b/proj"),
            Path::new("/usr/bin/cwo"),
            Path::new("/s/reap.log"),
            "# cwo reap: /home/a b/proj",
        );
        assert_eq!(
            line,
            "*/15 * * * * cd '/home/a b/proj' && /usr/bin/cwo reap --yes --no-progress >> /s/reap.log 2>&1 # cwo reap: /home/a b/proj"
        );
    }
}
