//! Following every running attempt's agent log at once (`cwo logs -f` without a task): the
//! attempts the journal shows running, picked up as they start and let go once they end, each
//! complete line returned with its task.

use std::collections::HashMap;
use std::io::Read;

use crate::journal::{Journal, JournalError};

/// One log being followed.
struct Tail {
    task: String,
    file: std::fs::File,
    /// Bytes after the last newline, held until the line is complete (or the attempt ends).
    partial: Vec<u8>,
}

impl Tail {
    /// What the file gained since the last read, as complete lines (`all`: the unfinished
    /// last line too).
    fn lines(&mut self, all: bool) -> Vec<String> {
        let _ = self.file.read_to_end(&mut self.partial);
        let mut out = Vec::new();
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            out.push(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        if all && !self.partial.is_empty() {
            out.push(String::from_utf8_lossy(&self.partial).into_owned());
            self.partial.clear();
        }
        out
    }
}

/// The logs of the running attempts, by attempt id.
#[derive(Default)]
pub struct Follower {
    tails: HashMap<i64, Tail>,
}

impl Follower {
    /// Picks up attempts that started, reads what each log gained, and lets go of the ones that
    /// ended (after their last lines). Returns `(task, line)` pairs, attempt by attempt.
    pub(crate) fn poll(
        &mut self,
        journal: &Journal,
    ) -> Result<Vec<(String, String)>, JournalError> {
        let running = journal.dangling_attempts()?;
        for a in &running {
            if self.tails.contains_key(&a.id) {
                continue;
            }
            // Not created yet: the next poll opens it.
            if let Ok(file) = std::fs::File::open(&a.log_path) {
                self.tails.insert(
                    a.id,
                    Tail {
                        task: a.ball_id.clone(),
                        file,
                        partial: Vec::new(),
                    },
                );
            }
        }
        let mut ids: Vec<i64> = self.tails.keys().copied().collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let ended = !running.iter().any(|a| a.id == id);
            let tail = self.tails.get_mut(&id).expect("listed above");
            out.extend(
                tail.lines(ended)
                    .into_iter()
                    .map(|l| (tail.task.clone(), l)),
            );
            if ended {
                self.tails.remove(&id);
            }
        }
        Ok(out)
    }
}
