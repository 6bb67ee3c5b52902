//! `[tracker]`: where the work comes from.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which task source the loop reads.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrackerKind {
    /// juggle 0.4's `.juggle/balls.jsonl` (the default).
    #[default]
    Juggle,
    /// Open GitHub issues with `github.label` (`[github]`).
    Github,
    /// frontloop's task files (`.frontloop/<epic>/{clarify,ready,in_progress,done}/`), juggle 1.x's queue.
    Frontloop,
}

impl std::fmt::Display for TrackerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrackerKind::Juggle => "juggle",
            TrackerKind::Github => "github",
            TrackerKind::Frontloop => "frontloop",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerSettings {
    /// `juggle` (default), `github` or `frontloop`.
    pub kind: TrackerKind,
    /// The juggle directory, relative to the project root.
    pub dir: PathBuf,
    /// Only run balls tagged with this juggle session ("" = every ball).
    pub session: String,
    /// frontloop's directory, relative to the project root.
    pub frontloop_dir: PathBuf,
    /// Only run this frontloop epic ("" = every epic).
    pub epic: String,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        TrackerSettings {
            kind: TrackerKind::Juggle,
            dir: PathBuf::from(".juggle"),
            session: String::new(),
            frontloop_dir: PathBuf::from(".frontloop"),
            epic: String::new(),
        }
    }
}
