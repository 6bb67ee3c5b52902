//! The one place a task's progress is written down: each transition goes to the tracker (what
//! the user's task list shows) and the journal (what cwo's reports and a restarted controller
//! read) together, off the async threads. The tracker goes first; a transition it refused is not
//! journaled, and a journal write that fails is returned, never dropped.

use std::path::PathBuf;
use std::sync::Arc;

use super::ports::off_thread;
use crate::journal::{Journal, JournalError, NewAttempt};
use crate::tracker::{Task, Tracker, TrackerError};

/// A change in a task's life.
pub(crate) enum Transition {
    /// The loop took the ball for `worker`.
    Claimed {
        task: Task,
        worker: String,
    },
    /// An attempt begins (its id comes back from [`Recorder::apply`]).
    AttemptStarted {
        ball_id: String,
        seq: u32,
        worker: String,
        log_path: PathBuf,
        workdir: String,
        base: String,
        branch: String,
        workflow_commit: String,
    },
    /// An attempt ended (`outcome`: done, blocked, failed, aborted).
    AttemptEnded {
        id: i64,
        outcome: &'static str,
        exit: String,
        branch: Option<String>,
        commit: Option<String>,
        reason: Option<String>,
    },
    /// The work is delivered: `note` says where.
    Done {
        task: Task,
        branch: String,
        commit: String,
        note: String,
    },
    Blocked {
        task: Task,
        reason: String,
    },
    /// Its pull request was merged: the task is complete for good.
    Merged {
        task: Task,
        note: String,
    },
    /// Its worker went away; back to pending for a new one.
    Requeued {
        task: Task,
        reason: String,
    },
    /// Stopped by a signal; back to pending.
    Aborted {
        task: Task,
    },
}

/// Which store refused a transition.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

#[derive(Clone)]
pub(crate) struct Recorder {
    tracker: Arc<dyn Tracker>,
    journal: Journal,
}

impl Recorder {
    pub(crate) fn new(tracker: Arc<dyn Tracker>, journal: Journal) -> Recorder {
        Recorder { tracker, journal }
    }

    /// Applies `t` to both stores. `Ok(Some(id))`: the new attempt's id (`AttemptStarted`).
    pub(crate) async fn apply(&self, t: Transition) -> Result<Option<i64>, RecordError> {
        let (tracker, journal) = (self.tracker.clone(), self.journal.clone());
        off_thread(move || apply(tracker.as_ref(), &journal, t)).await
    }
}

fn apply(tracker: &dyn Tracker, j: &Journal, t: Transition) -> Result<Option<i64>, RecordError> {
    match t {
        Transition::Claimed { task, worker } => {
            tracker.claim(&task.id, &worker)?;
            j.task_state(&task.id, &task.title, "in_progress", Some(&worker), None)?;
            j.worker_activity(&worker, Some(&task.id))?;
        }
        Transition::AttemptStarted {
            ball_id,
            seq,
            worker,
            log_path,
            workdir,
            base,
            branch,
            workflow_commit,
        } => {
            let id = j.attempt_start(&NewAttempt {
                ball_id: &ball_id,
                seq,
                worker: &worker,
                log_path: &log_path,
                workdir: &workdir,
                base: &base,
                branch: &branch,
                workflow_commit: &workflow_commit,
            })?;
            return Ok(Some(id));
        }
        Transition::AttemptEnded {
            id,
            outcome,
            exit,
            branch,
            commit,
            reason,
        } => j.attempt_end(
            id,
            outcome,
            &exit,
            branch.as_deref(),
            commit.as_deref(),
            reason.as_deref(),
        )?,
        Transition::Done {
            task,
            branch,
            commit,
            note,
        } => {
            tracker.complete(&task.id, &note)?;
            tracker.progress(&task, &note)?;
            j.task_result(&task.id, &branch, &commit)?;
            j.task_state(&task.id, &task.title, "complete", None, None)?;
        }
        Transition::Blocked { task, reason } => {
            tracker.block(&task.id, &reason)?;
            tracker.progress(&task, &format!("cwo: {} blocked: {reason}", task.id))?;
            j.task_state(&task.id, &task.title, "blocked", None, Some(&reason))?;
        }
        Transition::Merged { task, note } => {
            tracker.complete(&task.id, &note)?;
            j.task_state(&task.id, &task.title, "complete", None, None)?;
        }
        Transition::Requeued { task, reason } => {
            tracker.release(&task.id)?;
            j.task_state(&task.id, &task.title, "pending", None, Some(&reason))?;
        }
        Transition::Aborted { task } => {
            tracker.release(&task.id)?;
            j.task_state(&task.id, &task.title, "pending", None, None)?;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::juggle::Juggle;

    fn stores(dir: &std::path::Path) -> (Arc<dyn Tracker>, Journal) {
        let balls = dir.join(".juggle");
        std::fs::create_dir_all(&balls).unwrap();
        std::fs::write(
            balls.join("balls.jsonl"),
            "{\"id\":\"p-1\",\"title\":\"one\",\"state\":\"in_progress\"}\n",
        )
        .unwrap();
        let tracker: Arc<dyn Tracker> = Arc::new(Juggle::new(balls, ""));
        (tracker, Journal::open(&dir.join("state")).unwrap())
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// A blocked ball is blocked in the tracker (with a progress line) and in the journal, in one
    /// transition.
    #[test]
    fn a_transition_reaches_the_tracker_and_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let (tracker, journal) = stores(tmp.path());
        let task = tracker.list().unwrap().remove(0);
        let recorder = Recorder::new(tracker.clone(), journal.clone());
        let blocked = Transition::Blocked {
            task,
            reason: "needs creds".into(),
        };
        rt().block_on(recorder.apply(blocked)).unwrap();
        let t = tracker.list().unwrap().remove(0);
        assert_eq!(
            (t.state.as_str(), t.blocked_reason.as_str()),
            ("blocked", "needs creds")
        );
        let row = journal.tasks().unwrap().remove(0);
        assert_eq!(row.state, "blocked");
        assert_eq!(row.reason.as_deref(), Some("needs creds"));
    }

    /// A journal write that fails is returned to the caller (which reports it), never dropped.
    #[test]
    fn a_failed_journal_write_is_returned() {
        let tmp = tempfile::tempdir().unwrap();
        let (tracker, journal) = stores(tmp.path());
        let task = tracker.list().unwrap().remove(0);
        rusqlite::Connection::open(tmp.path().join("state/journal.sqlite"))
            .unwrap()
            .execute_batch("DROP TABLE tasks")
            .unwrap();
        let recorder = Recorder::new(tracker.clone(), journal);
        let aborted = Transition::Aborted { task };
        let result = rt().block_on(recorder.apply(aborted));
        assert!(matches!(result, Err(RecordError::Journal(_))), "{result:?}");
        // The tracker went first: the ball is back to pending.
        assert_eq!(tracker.list().unwrap()[0].state, "pending");
    }
}
