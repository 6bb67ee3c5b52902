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

impl GitError {
    /// The worker could not be reached (the git command's fate is unknown).
    pub(crate) fn is_connection(&self) -> bool {
        matches!(self, GitError::Worker(e) if e.is_connection())
    }
}

/// Runs git in the controller's repository.
async fn git(dir: &Path, args: &[&str]) -> Result<String, GitError> {
    git_with(dir, args, None).await
}

/// The credential helper that answers an HTTPS remote's challenge with the token from the git
/// process's own environment (`CWO_GIT_TOKEN`): the token is in no argv, URL or file.
const CREDENTIAL_HELPER: &str = "!f() { test \"$1\" = get || exit 0; echo username=x-access-token; echo \"password=$CWO_GIT_TOKEN\"; }; f";

/// Runs git; with `token`, a remote asking for credentials gets it through
/// [`CREDENTIAL_HELPER`] (every other configured helper is switched off for this process, and
/// git never prompts). Its output as trimmed text.
async fn git_with(dir: &Path, args: &[&str], token: Option<&str>) -> Result<String, GitError> {
    let out = git_bytes(dir, args, token).await?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// [`git_with`]'s runner: git's stdout byte for byte.
async fn git_bytes(dir: &Path, args: &[&str], token: Option<&str>) -> Result<Vec<u8>, GitError> {
    let mut cmd = Command::new("git");
    cmd.arg("-C").arg(dir);
    if let Some(token) = token {
        cmd.args(["-c", "credential.helper="])
            .args(["-c", &format!("credential.helper={CREDENTIAL_HELPER}")])
            .env("CWO_GIT_TOKEN", token)
            .env("GIT_TERMINAL_PROMPT", "0");
    }
    let out = cmd
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
    Ok(out.stdout)
}

/// The commit a revision names in the controller's repository.
pub(crate) async fn rev_parse(project: &Path, rev: &str) -> Result<String, GitError> {
    git(
        project,
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .await
}

/// The commit the controller's HEAD points at.
pub(crate) async fn head(project: &Path) -> Result<String, GitError> {
    git(project, &["rev-parse", "--verify", "HEAD^{commit}"]).await
}

/// A bundle of HEAD for the worker; returns the base commit.
pub(crate) async fn bundle_head(project: &Path, out: &Path) -> Result<String, GitError> {
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
pub(crate) async fn fetch_result(
    project: &Path,
    bundle: &Path,
    branch: &str,
) -> Result<String, GitError> {
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
/// history makes this fail, and the caller blocks the ball with the reason. A push that failed
/// while the remote branch already is `commit` (the same push by a controller that was killed,
/// still running and holding the ref's lock) is a success: the work is there.
/// `token`: the forge's token for an HTTPS remote (None: git's own credentials).
pub(crate) async fn push(
    project: &Path,
    remote: &str,
    commit: &str,
    branch: &str,
    token: Option<&str>,
) -> Result<(), GitError> {
    let spec = format!("{commit}:refs/heads/{branch}");
    let pushed = git_with(project, &["push", "--quiet", remote, &spec], token).await;
    let Err(e) = pushed else { return Ok(()) };
    let refname = format!("refs/heads/{branch}");
    match git_with(project, &["ls-remote", remote, &refname], token).await {
        Ok(out) if out.split_whitespace().next() == Some(commit) => Ok(()),
        _ => Err(e),
    }
}

pub(crate) async fn has_remote(project: &Path, remote: &str) -> bool {
    git(project, &["remote", "get-url", remote]).await.is_ok()
}

/// The URL of a remote, if it exists.
pub(crate) async fn remote_url(project: &Path, remote: &str) -> Option<String> {
    git(project, &["remote", "get-url", remote]).await.ok()
}

/// Fetches a branch of the remote into `refs/cwo/<id>` (a follow-up attempt starts from the pull
/// request's head, which a human may have moved); returns its commit.
pub(crate) async fn fetch_branch(
    project: &Path,
    remote: &str,
    branch: &str,
    local_ref: &str,
    token: Option<&str>,
) -> Result<String, GitError> {
    let spec = format!("+refs/heads/{branch}:{local_ref}");
    git_with(
        project,
        &["fetch", "--quiet", "--no-tags", remote, &spec],
        token,
    )
    .await?;
    git(project, &["rev-parse", local_ref]).await
}

/// A bundle of `commit` (and its history) for the worker, as its branch `main` and HEAD. Made in
/// a scratch repository under `scratch` that borrows the project's objects (git alternates), so
/// the user's repository gets no ref, not even for a moment.
pub(crate) async fn bundle_commit(
    project: &Path,
    commit: &str,
    scratch: &Path,
    out: &Path,
) -> Result<(), GitError> {
    let common = git(
        project,
        &["rev-parse", "--path-format=absolute", "--git-common-dir"],
    )
    .await?;
    if !scratch.join("HEAD").exists() {
        git(
            project,
            &["init", "--quiet", "--bare", &scratch.display().to_string()],
        )
        .await?;
    }
    let alternates = scratch.join("objects/info/alternates");
    std::fs::write(&alternates, format!("{common}/objects\n")).map_err(|e| GitError::Failed {
        args: format!("writing {}", alternates.display()),
        dir: scratch.display().to_string(),
        stderr: e.to_string(),
    })?;
    git(scratch, &["update-ref", "refs/heads/main", commit]).await?;
    git(scratch, &["symbolic-ref", "HEAD", "refs/heads/main"]).await?;
    git(
        scratch,
        &[
            "bundle",
            "create",
            "--quiet",
            &out.display().to_string(),
            "HEAD",
            "refs/heads/main",
        ],
    )
    .await
    .map(drop)
}

/// A task's checkout on the worker: `<dir>/repo`, on branch `branch`, based on `base`.
#[derive(Debug, Clone)]
pub(crate) struct WorkerCheckout {
    pub(crate) dir: String,
    pub(crate) repo: String,
    pub(crate) branch: String,
    pub(crate) base: String,
}

/// Makes a task's checkout in one round trip, atomically: cloned and configured under
/// `repo.partial`, renamed to `repo` only when complete, so a controller killed half-way leaves
/// nothing a later run could mistake for a ready checkout. Paths may be relative to the login's
/// home (the default `ssh.workspace`): every git call names its directory the same way. Running
/// it again after a lost connection finishes the job or finds it done.
///
/// A run cut off by a lost connection may still be going on the worker when the retry starts:
/// each run builds its own `repo.partial.<pid>`, and the first to finish claims the rename
/// (`repo.claimed`, mkdir is atomic); a later one removes its copy and waits for `repo`.
const PREPARE: &str = r#"set -e
d=$1; branch=$2; base=$3
[ -d "$d/repo" ] && exit 0
p="$d/repo.partial.$$"
rm -rf "$p"
git clone --quiet "$d/input.bundle" "$p"
git -C "$p" checkout --quiet -B "$branch" "$base"
git -C "$p" config user.name "$4"
git -C "$p" config user.email "$5"
if mkdir "$d/repo.claimed" 2>/dev/null; then
  mv "$p" "$d/repo"
else
  rm -rf "$p"
  i=0
  while [ ! -d "$d/repo" ] && [ "$i" -lt 600 ]; do i=$((i + 1)); sleep 0.1; done
  [ -d "$d/repo" ]
fi
"#;

/// Brings the task branch to a bundle in one round trip: the branch is set to whatever the agent
/// left checked out, and the bundle is written under a name of this run's own and renamed, so a
/// retry after a lost connection never trips over a run that is still going.
const BRING_BACK: &str = r#"set -e
cd "$1/repo"
git update-ref "refs/heads/$2" HEAD
git bundle create --quiet "../output.bundle.$$" "refs/heads/$2" "^$3"
mv "../output.bundle.$$" ../output.bundle
"#;

impl WorkerCheckout {
    /// Uploads the bundle, clones it and creates the task branch.
    pub(crate) async fn prepare(
        t: &dyn Transport,
        dir: String,
        bundle: &Path,
        base: &str,
        branch: &str,
        author: (&str, &str),
    ) -> Result<WorkerCheckout, GitError> {
        let input = format!("{dir}/input.bundle");
        t.upload(bundle, &input).await?;
        t.check(ExecRequest::new([
            "sh",
            "-c",
            PREPARE,
            "cwo-checkout",
            dir.as_str(),
            branch,
            base,
            author.0,
            author.1,
        ]))
        .await?;
        Ok(WorkerCheckout::at(dir, branch, base))
    }

    fn at(dir: String, branch: &str, base: &str) -> WorkerCheckout {
        WorkerCheckout {
            repo: format!("{dir}/repo"),
            dir,
            branch: branch.to_string(),
            base: base.to_string(),
        }
    }

    /// The checkout an earlier controller prepared (resuming an attempt), or None when it never
    /// finished preparing it (the agent cannot have started there).
    pub(crate) async fn existing(
        t: &dyn Transport,
        dir: String,
        branch: &str,
        base: &str,
    ) -> Result<Option<WorkerCheckout>, GitError> {
        let out = t
            .capture(ExecRequest::new([
                "sh",
                "-c",
                "[ -d \"$1/repo\" ]",
                "cwo-checkout-ready",
                dir.as_str(),
            ]))
            .await?;
        Ok(out
            .status
            .success()
            .then(|| WorkerCheckout::at(dir, branch, base)))
    }

    /// Commits the agent made on top of the base.
    pub(crate) async fn new_commits(&self, t: &dyn Transport) -> Result<u64, GitError> {
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
    pub(crate) async fn bring_back(
        &self,
        t: &dyn Transport,
        local: &Path,
    ) -> Result<PathBuf, GitError> {
        let out = format!("{}/output.bundle", self.dir);
        t.check(ExecRequest::new([
            "sh",
            "-c",
            BRING_BACK,
            "cwo-bring-back",
            self.dir.as_str(),
            self.branch.as_str(),
            self.base.as_str(),
        ]))
        .await?;
        t.download(&out, local).await?;
        Ok(local.to_path_buf())
    }
}

/// The object at `path` in `rev`'s tree: (type, id), or None when nothing is there. Pathspec
/// magic is off, so a path with `*` or `:` names only itself.
async fn tree_entry(
    project: &Path,
    rev: &str,
    path: &str,
) -> Result<Option<(String, String)>, GitError> {
    let out = git(
        project,
        &[
            "--literal-pathspecs",
            "ls-tree",
            "-z",
            "--full-tree",
            rev,
            "--",
            path,
        ],
    )
    .await?;
    // Each entry is `<mode> SP <type> SP <id> TAB <path> NUL`; the one whose path is exactly
    // `path` is the answer (ls-tree names a directory's own entry, never its contents, here).
    Ok(out.split('\0').find_map(|entry| {
        let (meta, name) = entry.split_once('\t')?;
        if name != path {
            return None;
        }
        let mut fields = meta.split(' ');
        let (_mode, kind, id) = (fields.next()?, fields.next()?, fields.next()?);
        Some((kind.to_string(), id.to_string()))
    }))
}

/// The id of the file (blob) at `path` in `rev`, None when `rev` has no file there (a directory
/// is not a file). Errors are git's: an unknown `rev`, a broken repository.
pub(crate) async fn blob_id(
    project: &Path,
    rev: &str,
    path: &str,
) -> Result<Option<String>, GitError> {
    Ok(tree_entry(project, rev, path)
        .await?
        .filter(|(kind, _)| kind == "blob")
        .map(|(_, id)| id))
}

/// The bytes of the file at `path` in `rev` (the committed version, not the working tree's), None
/// when `rev` has no file there. Bytes as stored, so a caller can tell text from binary.
pub(crate) async fn show_file(
    project: &Path,
    rev: &str,
    path: &str,
) -> Result<Option<Vec<u8>>, GitError> {
    let Some(id) = blob_id(project, rev, path).await? else {
        return Ok(None);
    };
    // A file's content is read byte for byte (`git()` trims text).
    git_bytes(project, &["cat-file", "blob", &id], None)
        .await
        .map(Some)
}
