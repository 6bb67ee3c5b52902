//! The repository's own commands around the agent (`.cwo/workflow.toml`): setup before it,
//! verify after it, each run in the attempt's checkout on the worker, as the user the agent runs
//! as, with the agent's environment. Plain POSIX sh (busybox ash compatible); every value reaches
//! the scripts as a positional argument, never spliced into script text.
//!
//! Setup output is appended to the worker's `agent.log`, ahead of the agent's, so every reader of
//! the task log (`cwo logs`, a controller that resumes the attempt) sees it as the `setup` phase.
//! A setup that succeeded leaves `setup.done` in the attempt's directory, so a controller that
//! resumes the attempt does not run it again.
//!
//! A setup cache is the untracked files setup left in the checkout (dependencies, build output),
//! kept in one tar per cache key in the workspace: the next checkout with the same key gets them
//! back instead of running setup.

use tokio_util::sync::CancellationToken;

use crate::transport::{ExecRequest, ExecStatus, Stream, Transport, TransportError};

/// One setup command: `$1` the attempt's directory, `$2` the checkout, then the argv. Its output
/// (stdout and stderr) goes to the agent's log and to this script's stdout; its status is the
/// script's.
const SETUP: &str = r#"d=$(cd "$1" && pwd) || exit 97
repo=$(cd "$2" && pwd) || exit 97
shift 2
cd "$repo" || exit 97
[ -r /etc/cwo/agent.env ] && . /etc/cwo/agent.env
rm -f "$d/setup.rc"
{ printf '[cwo] setup: %s\n' "$*"
  "$@" </dev/null 2>&1
  echo $? > "$d/setup.rc"
} | tee -a "$d/agent.log"
rc=$(cat "$d/setup.rc" 2>/dev/null) || rc=98
exit "$rc"
"#;

/// Marks the setup of an attempt done (`$1` the attempt's directory), with a line in its log.
const SETUP_DONE: &str = r#"printf '[cwo] setup: %s\n' "$2" | tee -a "$1/agent.log" && : > "$1/setup.done"
"#;

/// Whether the attempt's setup already ran (`$1`).
const SETUP_RAN: &str = r#"[ -e "$1/setup.done" ]"#;

/// Restores a setup cache into the checkout: `$1` the cache tar, `$2` the checkout. Exit 1: none.
const RESTORE: &str = r#"[ -f "$1" ] || exit 1
tar -xf "$1" -C "$2"
"#;

/// Saves what setup left untracked in the checkout (`$2`) as the cache tar `$1`, atomically.
/// Both may be relative to the login's home (the ssh provider's default workspace is).
const SAVE: &str = r#"mkdir -p "$(dirname "$1")" || exit 1
cache=$(cd "$(dirname "$1")" && pwd)/$(basename "$1") || exit 1
tmp="$cache.$$.tmp"
cd "$2" || exit 1
# Unquoted names (tar reads one per line): names with a newline are the only ones left out.
git -c core.quotePath=false ls-files -o --directory > "$tmp.list" || exit 1
if [ -s "$tmp.list" ]; then tar -cf "$tmp" -T "$tmp.list" || { rm -f "$tmp" "$tmp.list"; exit 1; }
else tar -cf "$tmp" -T /dev/null || { rm -f "$tmp" "$tmp.list"; exit 1; }; fi
rm -f "$tmp.list"
mv "$tmp" "$cache"
"#;

/// The log bytes from offset `$2` of the attempt's log (`$1`).
const READ_FROM: &str = r#"tail -c +"$(($2 + 1))" "$1/agent.log""#;

/// One verify command: `$1` the checkout, then the argv.
const VERIFY: &str = r#"repo=$1; shift
cd "$repo" || exit 97
[ -r /etc/cwo/agent.env ] && . /etc/cwo/agent.env
"$@" </dev/null 2>&1
"#;

fn sh(script: &str, name: &str, args: &[&str]) -> ExecRequest {
    let mut argv = vec!["sh", "-c", script, name];
    argv.extend_from_slice(args);
    ExecRequest::new(argv)
}

/// How a command of the repository's ended, and the end of what it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PhaseEnd {
    pub(crate) status: ExecStatus,
    /// The last lines of its output (at most [`TAIL_BYTES`]).
    pub(crate) tail: String,
}

/// How much of a failing command's output is kept for the task's reason and the agent's next
/// prompt: the end, where the error usually is.
pub(crate) const TAIL_BYTES: usize = 4000;

/// The last `TAIL_BYTES` of `text`, on a character boundary.
pub(crate) fn tail(text: &str) -> String {
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// An attempt's directory and checkout on the worker.
pub(crate) struct Place<'a> {
    pub(crate) dir: &'a str,
    pub(crate) repo: &'a str,
}

/// Runs `argv` with the agent's environment, streaming its output lines to `on_line`.
async fn run(
    t: &dyn Transport,
    mut req: ExecRequest,
    env: &[(String, String)],
    limit: std::time::Duration,
    cancel: CancellationToken,
    on_line: &(dyn Fn(&str) + Send + Sync),
) -> Result<PhaseEnd, TransportError> {
    req.env = env.to_vec();
    req.timeout = Some(limit);
    req.cancel = Some(cancel);
    let mut out = String::new();
    let mut pending = String::new();
    let status = t
        .exec(req, &mut |stream, bytes| {
            if stream != Stream::Stdout {
                return;
            }
            pending.push_str(&String::from_utf8_lossy(bytes));
            while let Some(i) = pending.find('\n') {
                let line: String = pending.drain(..=i).collect();
                on_line(line.trim_end_matches('\n'));
                out.push_str(&line);
            }
            if out.len() > 4 * TAIL_BYTES {
                out = tail(&out);
                out.push('\n');
            }
        })
        .await?;
    if !pending.is_empty() {
        on_line(&pending);
        out.push_str(&pending);
    }
    Ok(PhaseEnd {
        status,
        tail: tail(&out),
    })
}

/// One setup command, its output appended to the attempt's log.
pub(crate) async fn setup_command(
    t: &dyn Transport,
    at: &Place<'_>,
    argv: &[String],
    env: &[(String, String)],
    limit: std::time::Duration,
    cancel: CancellationToken,
    on_line: &(dyn Fn(&str) + Send + Sync),
) -> Result<PhaseEnd, TransportError> {
    let mut args = vec![at.dir, at.repo];
    args.extend(argv.iter().map(String::as_str));
    run(
        t,
        sh(SETUP, "cwo-setup", &args),
        env,
        limit,
        cancel,
        on_line,
    )
    .await
}

/// Records that the attempt's setup is done, with `line` (what was done) in its log.
pub(crate) async fn setup_done(
    t: &dyn Transport,
    at: &Place<'_>,
    line: &str,
) -> Result<(), TransportError> {
    t.check(sh(SETUP_DONE, "cwo-setup-done", &[at.dir, line]))
        .await
        .map(|_| ())
}

/// Whether the attempt's setup already ran (a resumed attempt).
pub(crate) async fn setup_ran(t: &dyn Transport, at: &Place<'_>) -> Result<bool, TransportError> {
    let out = t.capture(sh(SETUP_RAN, "cwo-setup-ran", &[at.dir])).await?;
    Ok(out.status.success())
}

/// Restores the setup cache `cache` (a tar path on the worker) into the checkout; false when
/// there is none.
pub(crate) async fn restore_cache(
    t: &dyn Transport,
    at: &Place<'_>,
    cache: &str,
) -> Result<bool, TransportError> {
    let out = t
        .capture(sh(RESTORE, "cwo-restore", &[cache, at.repo]))
        .await?;
    match out.status {
        ExecStatus::Exited(0) => Ok(true),
        ExecStatus::Exited(1) => Ok(false),
        status => Err(TransportError::Failed {
            command: "restoring the setup cache".into(),
            worker: t.worker().to_string(),
            status,
            stderr: out.stderr,
        }),
    }
}

/// Keeps what setup left untracked in the checkout as the cache `cache`.
pub(crate) async fn save_cache(
    t: &dyn Transport,
    at: &Place<'_>,
    cache: &str,
) -> Result<(), TransportError> {
    t.check(sh(SAVE, "cwo-save", &[cache, at.repo]))
        .await
        .map(|_| ())
}

/// The attempt's log on the worker from byte `offset` on.
pub(crate) async fn read_log_from(
    t: &dyn Transport,
    at: &Place<'_>,
    offset: u64,
) -> Result<Vec<u8>, TransportError> {
    let mut bytes = Vec::new();
    let off = offset.to_string();
    let status = t
        .exec(sh(READ_FROM, "cwo-read", &[at.dir, &off]), &mut |s, b| {
            if s == Stream::Stdout {
                bytes.extend_from_slice(b)
            }
        })
        .await?;
    if !status.success() {
        return Err(TransportError::Failed {
            command: "reading the attempt's log".into(),
            worker: t.worker().to_string(),
            status,
            stderr: String::new(),
        });
    }
    Ok(bytes)
}

/// The verify command, in the checkout.
pub(crate) async fn verify(
    t: &dyn Transport,
    at: &Place<'_>,
    argv: &[String],
    env: &[(String, String)],
    limit: std::time::Duration,
    cancel: CancellationToken,
    on_line: &(dyn Fn(&str) + Send + Sync),
) -> Result<PhaseEnd, TransportError> {
    let mut args = vec![at.repo];
    args.extend(argv.iter().map(String::as_str));
    run(
        t,
        sh(VERIFY, "cwo-verify", &args),
        env,
        limit,
        cancel,
        on_line,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::local::LocalTransport;
    use std::time::Duration;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn setup_logs_caches_and_restores_untracked_files() {
        rt().block_on(async {
            let tmp = tempfile::tempdir().unwrap();
            let root = tmp.path();
            let repo = root.join("a/repo");
            std::fs::create_dir_all(&repo).unwrap();
            let git = |args: &[&str], dir: &std::path::Path| {
                assert!(
                    std::process::Command::new("git")
                        .args(args)
                        .current_dir(dir)
                        .status()
                        .unwrap()
                        .success()
                )
            };
            git(&["init", "-q"], &repo);
            std::fs::write(repo.join("tracked"), "t").unwrap();
            git(&["add", "."], &repo);
            let t = LocalTransport::new("w");
            let (dir, repo_s) = (
                root.join("a").display().to_string(),
                repo.display().to_string(),
            );
            let at = Place {
                dir: &dir,
                repo: &repo_s,
            };
            let lines = std::sync::Mutex::new(Vec::new());
            let end = setup_command(
                &t,
                &at,
                &argv(&[
                    "sh",
                    "-c",
                    "mkdir -p deps && echo built > deps/x; echo 'npm ok'",
                ]),
                &[("V".into(), "1".into())],
                Duration::from_secs(30),
                CancellationToken::new(),
                &|l| lines.lock().unwrap().push(l.to_string()),
            )
            .await
            .unwrap();
            assert_eq!(end.status, ExecStatus::Exited(0));
            let lines = lines.into_inner().unwrap();
            assert_eq!(lines[1], "npm ok");
            assert!(
                lines[0].starts_with("[cwo] setup: sh -c mkdir"),
                "{lines:?}"
            );
            let fail = setup_command(
                &t,
                &at,
                &argv(&["sh", "-c", "echo broken >&2; exit 3"]),
                &[],
                Duration::from_secs(30),
                CancellationToken::new(),
                &|_| {},
            )
            .await
            .unwrap();
            assert_eq!(fail.status, ExecStatus::Exited(3));
            assert!(fail.tail.ends_with("broken"), "{}", fail.tail);
            let log = std::fs::read_to_string(root.join("a/agent.log")).unwrap();
            assert!(
                log.contains("npm ok\n") && log.contains("broken\n"),
                "{log}"
            );
            assert_eq!(
                read_log_from(&t, &at, 5).await.unwrap(),
                log.as_bytes()[5..]
            );

            assert!(!setup_ran(&t, &at).await.unwrap());
            setup_done(&t, &at, "done").await.unwrap();
            assert!(setup_ran(&t, &at).await.unwrap());

            let cache = root.join("cache/k.tar").display().to_string();
            assert!(!restore_cache(&t, &at, &cache).await.unwrap());
            save_cache(&t, &at, &cache).await.unwrap();
            std::fs::remove_dir_all(repo.join("deps")).unwrap();
            assert!(restore_cache(&t, &at, &cache).await.unwrap());
            assert_eq!(
                std::fs::read_to_string(repo.join("deps/x")).unwrap(),
                "built\n"
            );
        });
    }

    /// The ssh provider's default workspace is relative to the login's home.
    #[test]
    fn setup_and_its_cache_work_with_paths_relative_to_the_home() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path();
        std::fs::create_dir_all(home.join("ws/a/repo")).unwrap();
        let run = |script: &str, args: &[&str]| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("t")
                .args(args)
                .current_dir(home)
                .output()
                .unwrap()
        };
        assert!(
            std::process::Command::new("git")
                .args(["init", "-q"])
                .current_dir(home.join("ws/a/repo"))
                .status()
                .unwrap()
                .success()
        );
        let out = run(
            SETUP,
            &[
                "ws/a",
                "ws/a/repo",
                "sh",
                "-c",
                "echo hi > dep.txt; echo ok",
            ],
        );
        assert!(out.status.success(), "{out:?}");
        assert!(
            std::fs::read_to_string(home.join("ws/a/agent.log"))
                .unwrap()
                .ends_with("ok\n")
        );
        let out = run(SAVE, &["ws/setup-cache/k.tar", "ws/a/repo"]);
        assert!(out.status.success(), "{out:?}");
        std::fs::remove_file(home.join("ws/a/repo/dep.txt")).unwrap();
        let out = run(RESTORE, &["ws/setup-cache/k.tar", "ws/a/repo"]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(home.join("ws/a/repo/dep.txt")).unwrap(),
            "hi\n"
        );
    }

    #[test]
    fn verify_reports_status_and_the_end_of_its_output() {
        rt().block_on(async {
            let tmp = tempfile::tempdir().unwrap();
            let repo = tmp.path().display().to_string();
            let t = LocalTransport::new("w");
            let at = Place {
                dir: &repo,
                repo: &repo,
            };
            let long = "x".repeat(TAIL_BYTES * 2);
            let script = format!("echo {long}; echo 'FAIL: test_a'; exit 1");
            let end = verify(
                &t,
                &at,
                &argv(&["sh", "-c", &script]),
                &[],
                Duration::from_secs(30),
                CancellationToken::new(),
                &|_| {},
            )
            .await
            .unwrap();
            assert_eq!(end.status, ExecStatus::Exited(1));
            assert!(end.tail.ends_with("FAIL: test_a"));
            assert!(end.tail.len() <= TAIL_BYTES);
            assert!(
                !std::path::Path::new(&repo).join("agent.log").exists(),
                "verify output stays off the worker's log"
            );
        });
    }
}
