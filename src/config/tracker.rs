//! `[tracker]`: where the work comes from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerSettings {
    /// The juggle directory, relative to the project root.
    pub dir: PathBuf,
    /// Only run balls tagged with this juggle session ("" = every ball).
    pub session: String,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        TrackerSettings {
            dir: PathBuf::from(".juggle"),
            session: String::new(),
        }
    }
}
