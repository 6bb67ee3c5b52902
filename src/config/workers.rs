//! `[workers]`: how many tasks a worker takes at once.

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersSettings {
    /// Tasks run at once on one worker (replaces the top-level `concurrency`, still read as a
    /// deprecated alias).
    pub tasks_per_worker: NonZeroUsize,
}

impl Default for WorkersSettings {
    fn default() -> Self {
        WorkersSettings {
            tasks_per_worker: NonZeroUsize::MIN,
        }
    }
}
