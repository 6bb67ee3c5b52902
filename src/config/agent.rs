//! `[agent]`: the agent's command, limits and environment.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{UsdLimit, duration_str, non_empty_argv, nonzero_duration_str, opt_duration_str};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// argv of the agent; `{prompt_file}`, `{prompt}`, `{task_id}` and `{workdir}` are replaced
    /// inside each element (never through a shell).
    #[serde(deserialize_with = "non_empty_argv")]
    pub command: Vec<String>,
    /// Kill the agent's whole process group after this long.
    #[serde(with = "nonzero_duration_str")]
    pub timeout: Duration,
    /// An agent that prints nothing for this long is stalled: its process group is killed and
    /// the attempt fails as stalled (retried). Distinct from `timeout`.
    #[serde(with = "nonzero_duration_str")]
    pub stall_timeout: Duration,
    /// When an attempt has run this long, a warning goes to its log and to `cwo status`, and its
    /// deadline is extended once, to `timeout` ("" = none; below `timeout`).
    #[serde(with = "opt_duration_str")]
    pub soft_timeout: Option<Duration>,
    /// The model the agent uses ("" = the agent's own default): opencode gets `--model`, every
    /// agent `{model}` in its command and `CWO_MODEL` in its environment.
    pub model: String,
    /// What one task may spend on the LLM across its attempts, in USD ("" = no limit): the agent
    /// is stopped when its reported cost crosses it, and the task is blocked.
    pub max_cost_usd: UsdLimit,
    /// Attempts per task before the ball is blocked.
    pub max_attempts: NonZeroU32,
    /// Wait before the second attempt; doubles for each further attempt.
    #[serde(with = "duration_str")]
    pub retry_backoff: Duration,
    /// Prompt template file (relative to the project root); empty = the built-in template.
    pub prompt_template: String,
    /// Extra environment for the agent process only.
    pub env: BTreeMap<String, String>,
    /// Model ids for a juggle ball's `model_size` (`small`, `medium`, `large`) and
    /// `model_override` (`opus`, `sonnet`, `haiku`, or any name) fields.
    pub models: BTreeMap<String, String>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        let mut env = BTreeMap::new();
        env.insert("OPENCODE_DISABLE_AUTOUPDATE".into(), "1".into());
        env.insert("OPENCODE_DISABLE_MODELS_FETCH".into(), "1".into());
        env.insert("OPENCODE_DISABLE_SHARE".into(), "1".into());
        AgentSettings {
            command: [
                "opencode",
                "run",
                "--format",
                "json",
                "--title",
                "{task_id}",
                "{prompt}",
            ]
            .map(String::from)
            .to_vec(),
            timeout: Duration::from_secs(30 * 60),
            stall_timeout: Duration::from_secs(10 * 60),
            soft_timeout: None,
            model: String::new(),
            max_cost_usd: UsdLimit(None),
            max_attempts: NonZeroU32::new(3).unwrap(),
            retry_backoff: Duration::from_secs(2),
            prompt_template: String::new(),
            env,
            models: BTreeMap::new(),
        }
    }
}
