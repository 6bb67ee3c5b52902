//! `[github]`: the repository cwo reads issues from (with `tracker.kind = "github"`) and opens
//! pull requests on (`pull_requests`, whatever the tracker).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GithubSettings {
    /// `owner/name`; "" = parsed from the URL of `git.remote`.
    pub repo: String,
    /// The REST API's root; GitHub Enterprise Server: `https://HOST/api/v3`.
    pub api_url: String,
    /// Open issues with this label are the queue.
    pub label: String,
    /// A secret reference (`env:NAME` or `sm://…`); "" = GH_TOKEN, then GITHUB_TOKEN, then
    /// `gh auth token`.
    pub token: String,
    /// Open a pull request for every task that ends done, whatever the tracker.
    pub pull_requests: bool,
    /// Open pull requests as drafts.
    pub draft: bool,
    /// Follow-up attempts per pull request for review comments and failed checks; then the task
    /// is blocked and the pull request stays for a human.
    pub max_feedback_rounds: u32,
    /// A GitHub App instead of a token: its id (0 = no app).
    pub app_id: u64,
    /// The App's private key (PEM) as a secret reference (`env:NAME` or `sm://…`).
    pub app_key: String,
    /// The webhook's secret as a secret reference (`env:NAME` or `sm://…`): `cwo serve` checks
    /// every delivery's `X-Hub-Signature-256` with it ("" = webhooks refused).
    pub webhook_secret: String,
}

impl Default for GithubSettings {
    fn default() -> Self {
        GithubSettings {
            repo: String::new(),
            api_url: "https://api.github.com".into(),
            label: "cwo".into(),
            token: String::new(),
            pull_requests: true,
            draft: false,
            max_feedback_rounds: 3,
            app_id: 0,
            app_key: String::new(),
            webhook_secret: String::new(),
        }
    }
}
