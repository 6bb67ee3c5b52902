//! What can go wrong talking to GitHub, typed so the loop and the user know what to do: a bad
//! token says which source it came from, a hidden repository says so, a rate limit says until
//! when.

use chrono::{DateTime, Utc};

use super::TokenSource;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// 401: the token is wrong, expired or revoked.
    #[error("GitHub refused the token from {source_} ({message})")]
    BadCredentials {
        source_: TokenSource,
        message: String,
    },
    /// 404 on the repository itself: it does not exist, or the token cannot see it.
    #[error("the token from {source_} cannot see {repo} on {api} (404)")]
    RepoNotVisible {
        repo: String,
        api: String,
        source_: TokenSource,
    },
    /// 403 without a rate limit: the token lacks a permission.
    #[error("GitHub refused {method} {path}: {message} (403)")]
    Forbidden {
        method: String,
        path: String,
        message: String,
    },
    /// The rate limit is used up (primary or secondary); nothing is sent before `until`.
    #[error("GitHub's rate limit is used up until {}", until.format("%H:%M:%S UTC"))]
    RateLimited { until: DateTime<Utc> },
    /// 404 on something inside the repository.
    #[error("{method} {path}: not found (404)")]
    NotFound { method: String, path: String },
    /// 422: GitHub understood the request and refused it (a pull request that exists already, a
    /// branch that does not).
    #[error("GitHub refused {method} {path}: {message}")]
    Validation {
        method: String,
        path: String,
        message: String,
    },
    /// 5xx after the retries, or another status cwo does not expect.
    #[error("{method} {path} answered {status}: {message}")]
    Status {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    /// The request did not get an answer (connection refused, timeout, TLS).
    #[error("{method} {path} on {api} got no answer")]
    Transport {
        method: String,
        path: String,
        api: String,
        #[source]
        source: Box<octocrab::Error>,
    },
    /// An answer cwo could not read.
    #[error("{path}: unexpected answer from GitHub")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// No token anywhere cwo looks.
    #[error(
        "no GitHub token: github.token is empty, GH_TOKEN and GITHUB_TOKEN are not set, and `gh auth token` gave none"
    )]
    NoToken,
    #[error("github.token")]
    Secret(#[source] crate::secrets::SecretError),
    /// A GitHub App key or JWT problem.
    #[error("GitHub App {app_id}: {message}")]
    App { app_id: u64, message: String },
    /// `github.repo` is empty and the remote's URL names no GitHub repository.
    #[error("{0}")]
    NoRepo(String),
    #[error("cannot build the GitHub client for {api}")]
    Client {
        api: String,
        #[source]
        source: Box<octocrab::Error>,
    },
}

impl GithubError {
    /// Worth another try on a later poll (rate limit, outage), not a reason to stop the run.
    pub fn is_transient(&self) -> bool {
        match self {
            GithubError::RateLimited { .. } | GithubError::Transport { .. } => true,
            GithubError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// What to do next, for the user.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            GithubError::BadCredentials { source_, .. } => format!(
                "make a new token (fine-grained: contents, issues and pull requests read/write on the repository) and put it where cwo found this one ({source_}), or set github.token = \"env:NAME\""
            ),
            GithubError::RepoNotVisible { repo, .. } => format!(
                "check github.repo (or the remote's URL) and that the token has access to {repo}: a fine-grained token must list the repository"
            ),
            GithubError::Forbidden { .. } => "give the token contents, issues and pull requests read/write on the repository; `cwo doctor` checks its permissions".into(),
            GithubError::RateLimited { .. } => "cwo waits for the reset by itself; a GitHub App gets a higher limit than a personal token".into(),
            GithubError::NoToken => "set GH_TOKEN, run `gh auth login`, or set github.token = \"env:NAME\" (or sm://…)".into(),
            GithubError::NoRepo(_) => "set github.repo = \"owner/name\"".into(),
            GithubError::Transport { api, .. } => format!("check the network and github.api_url ({api})"),
            _ => return None,
        })
    }
}
