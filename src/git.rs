//! Moving code between the controller's repository and a worker, as git bundles, and pushing
//! finished branches with the user's own credentials. The worker holds no git credentials.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use crate::transport::{ExecRequest, Transport, TransportError};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("`git {args}` in {dir} failed: {stderr}")]
    Failed {
        args: String,
        dir: String,
        stderr: String,
    },
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    #[error(transparent)]
    Worker(#[from] TransportError),
}

/// Runs git in the controller's repository.
async fn git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(GitError::Spawn)?;
    if !out.status.success() {
        return Err(GitError::Failed {
            args: args.join(" "),
            dir: dir.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit the controller's HEAD points at.
pub async fn head(project: &Path) -> Result<String, GitError> {
    git(project, &["rev-parse", "--verify", "HEAD^{commit}"]).await
}

/// A bundle of HEAD for the worker; returns the base commit.
pub async fn bundle_head(project: &Path, out: &Path) -> Result<String, GitError> {
    let base = head(project).await?;
    git(
        project,
        &[
            "bundle",
            "create",
            "--quiet",
            &out.display().to_string(),
            "HEAD",
        ],
    )
    .await?;
    Ok(base)
}

/// Fetches a task branch from a bundle the worker produced into `refs/cwo/<branch>`; returns its commit.
pub async fn fetch_result(project: &Path, bundle: &Path, branch: &str) -> Result<String, GitError> {
    let local_ref = format!("refs/cwo/{}", branch.trim_start_matches("cwo/"));
    let spec = format!("+refs/heads/{branch}:{local_ref}");
    git(
        project,
        &[
            "fetch",
            "--quiet",
            "--no-tags",
            &bundle.display().to_string(),
            &spec,
        ],
    )
    .await?;
    git(project, &["rev-parse", &local_ref]).await
}

/// Pushes a commit as `refs/heads/<branch>` on the remote. Never forced: a remote branch with other
/// history makes this fail, and the caller blocks the ball with the reason.
pub async fn push(
    project: &Path,
    remote: &str,
    commit: &str,
    branch: &str,
) -> Result<(), GitError> {
    let spec = format!("{commit}:refs/heads/{branch}");
    git(project, &["push", "--quiet", remote, &spec])
        .await
        .map(|_| ())
}

pub async fn has_remote(project: &Path, remote: &str) -> bool {
    git(project, &["remote", "get-url", remote]).await.is_ok()
}

/// A task's checkout on the worker: `<dir>/repo`, on branch `branch`, based on `base`.
pub struct WorkerCheckout {
    pub dir: String,
    pub repo: String,
    pub branch: String,
    pub base: String,
}

impl WorkerCheckout {
    /// Uploads the bundle, clones it and creates the task branch.
    pub async fn prepare(
        t: &dyn Transport,
        dir: String,
        bundle: &Path,
        base: &str,
        branch: &str,
        author: (&str, &str),
    ) -> Result<WorkerCheckout, GitError> {
        let input = format!("{dir}/input.bundle");
        let repo = format!("{dir}/repo");
        t.upload(bundle, &input).await?;
        t.check(ExecRequest::new([
            "git",
            "clone",
            "--quiet",
            input.as_str(),
            repo.as_str(),
        ]))
        .await?;
        for args in [
            vec!["checkout", "--quiet", "-B", branch, base],
            vec!["config", "user.name", author.0],
            vec!["config", "user.email", author.1],
        ] {
            let mut argv = vec!["git", "-C", repo.as_str()];
            argv.extend(args);
            t.check(ExecRequest::new(argv)).await?;
        }
        Ok(WorkerCheckout {
            dir,
            repo,
            branch: branch.to_string(),
            base: base.to_string(),
        })
    }

    /// A checkout an earlier controller prepared (resuming an attempt).
    pub fn existing(dir: String, branch: &str, base: &str) -> WorkerCheckout {
        WorkerCheckout {
            repo: format!("{dir}/repo"),
            dir,
            branch: branch.to_string(),
            base: base.to_string(),
        }
    }

    /// Commits the agent made on top of the base.
    pub async fn new_commits(&self, t: &dyn Transport) -> Result<u64, GitError> {
        let range = format!("{}..HEAD", self.base);
        let out = t
            .check(ExecRequest::new([
                "git",
                "-C",
                self.repo.as_str(),
                "rev-list",
                "--count",
                range.as_str(),
            ]))
            .await?;
        Ok(out.trim().parse().unwrap_or(0))
    }

    /// Bundles the new commits (whatever branch the agent left checked out) and brings the
    /// bundle to `local`.
    pub async fn bring_back(&self, t: &dyn Transport, local: &Path) -> Result<PathBuf, GitError> {
        let branch_ref = format!("refs/heads/{}", self.branch);
        let out = format!("{}/output.bundle", self.dir);
        let not_base = format!("^{}", self.base);
        t.check(ExecRequest::new([
            "git",
            "-C",
            self.repo.as_str(),
            "update-ref",
            branch_ref.as_str(),
            "HEAD",
        ]))
        .await?;
        t.check(ExecRequest::new([
            "git",
            "-C",
            self.repo.as_str(),
            "bundle",
            "create",
            "--quiet",
            out.as_str(),
            branch_ref.as_str(),
            not_base.as_str(),
        ]))
        .await?;
        t.download(&out, local).await?;
        Ok(local.to_path_buf())
    }
}
