//! `cwo logs <task> [-f]`: an attempt's agent log, optionally followed while it runs;
//! `cwo logs -f`: every running attempt's log at once (orchestrator/logs.rs).

use std::io::{Read, Write};
use std::time::Duration;

use crate::cli::LogsArgs;
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;

pub(crate) async fn logs(
    project: &Project,
    _printer: Printer,
    args: &LogsArgs,
) -> Result<ExitStatus, CommandError> {
    let journal = project.journal()?;
    let Some(task) = &args.task else {
        return follow_all(project, &journal).await;
    };
    let id = match project.tracker().resolve_id(task) {
        Ok(id) => id,
        // A ball removed from the tracker still has its logs in the journal.
        Err(e) => {
            if journal.attempts(Some(task))?.is_empty() {
                return Err(e.into());
            }
            task.clone()
        }
    };
    let attempts = journal.attempts(Some(&id))?;
    let pick = match args.attempt {
        Some(n) => attempts.iter().rev().find(|a| a.attempt == n as i64),
        None => attempts.last(),
    };
    let Some(attempt) = pick.cloned() else {
        return Err(match args.attempt {
            Some(n) => CommandError::user(format!("{id} has no attempt {n}"))
                .hint(format!("it has {} attempt(s)", attempts.len())),
            None => CommandError::user(format!("{id} has not run yet"))
                .hint("`cwo status` shows what is running"),
        });
    };
    let mut file = std::fs::File::open(&attempt.log_path).map_err(|e| {
        CommandError::user(format!("cannot open the log {}: {e}", attempt.log_path))
    })?;
    let mut stdout = std::io::stdout().lock();
    let mut buf = Vec::new();
    let mut copy = |file: &mut std::fs::File| -> Result<(), CommandError> {
        buf.clear();
        file.read_to_end(&mut buf)
            .map_err(|e| CommandError::user(format!("reading {}: {e}", attempt.log_path)))?;
        let _ = stdout.write_all(&buf);
        let _ = stdout.flush();
        Ok(())
    };
    copy(&mut file)?;
    if !args.follow {
        return Ok(ExitStatus::Success);
    }
    loop {
        let ended = journal
            .attempt(attempt.id)?
            .is_none_or(|a| a.ended_at.is_some());
        // Read once more after the end is seen: lines written just before it.
        copy(&mut file)?;
        if ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(ExitStatus::Success)
}

/// Every running attempt's log, each line prefixed with its task, while a controller runs.
async fn follow_all(
    project: &Project,
    journal: &crate::journal::Journal,
) -> Result<ExitStatus, CommandError> {
    let mut follower = crate::orchestrator::logs::Follower::default();
    let controller = || crate::journal::ControllerLock::holder(&project.state_dir).is_some();
    // Attempts open in the journal without a controller are a crashed run's leftovers, not
    // running: nothing to follow.
    if !controller() {
        return Err(CommandError::user("nothing is running")
            .hint("`cwo run` starts the loop; `cwo logs TASK` shows an attempt's log"));
    }
    let mut tick = 0u32;
    let mut running = true;
    loop {
        let lines = follower.poll(journal)?;
        let mut stdout = std::io::stdout().lock();
        for (task, line) in lines {
            let _ = writeln!(stdout, "[{task}] {line}");
        }
        let _ = stdout.flush();
        drop(stdout);
        if !running {
            return Ok(ExitStatus::Success);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The controller lock is probed once a second (a probe takes it for an instant).
        tick += 1;
        if tick.is_multiple_of(5) {
            // One more read after the controller is gone: the last lines it wrote.
            running = controller();
        }
    }
}
