//! `[git]`: where finished branches go and who the agent's commits are from.

use serde::{Deserialize, Serialize};
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GitSettings {
    /// Remote the task branches are pushed to.
    pub remote: String,
    /// Push finished branches (false keeps them as local refs `refs/cwo/<ball>` only).
    pub push: bool,
    /// Task branches are named `<branch_prefix><ball-id>`.
    pub branch_prefix: String,
    /// Identity of the agent's commits on the worker.
    pub author_name: String,
    pub author_email: String,
}

impl Default for GitSettings {
    fn default() -> Self {
        GitSettings {
            remote: "origin".into(),
            push: true,
            branch_prefix: "cwo/".into(),
            author_name: "cwo agent".into(),
            author_email: "cwo-agent@localhost".into(),
        }
    }
}
