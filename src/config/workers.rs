//! `[workers]`: how many workers a run may have, how many tasks each takes at once, whether a
//! task gets a worker of its own, and what the fleet may cost per hour.

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

use super::UsdLimit;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkersSettings {
    /// Upper bound on live workers: the fleet scales 0..max by the ready tasks.
    pub max: NonZeroUsize,
    /// Tasks run at once on one worker (replaces the top-level `concurrency`, still read as a
    /// deprecated alias).
    pub tasks_per_worker: NonZeroUsize,
    /// Every task gets a brand-new worker, deleted after it (tasks_per_worker must be 1).
    pub fresh_per_task: bool,
    /// Optional ceiling on the fleet's summed list price per hour, in USD ("" = none).
    pub max_hourly_usd: UsdLimit,
}

impl Default for WorkersSettings {
    fn default() -> Self {
        WorkersSettings {
            max: NonZeroUsize::MIN,
            tasks_per_worker: NonZeroUsize::MIN,
            fresh_per_task: false,
            max_hourly_usd: UsdLimit(None),
        }
    }
}
