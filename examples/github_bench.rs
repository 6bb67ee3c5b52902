//! GitHub figures for scripts/bench.sh, against the test suite's fake GitHub (zero latency, so
//! the times are cwo's own; the request counts are what real latency multiplies):
//! `github_bench CWO WORKDIR [TASKS [IDLE_SECS]]`.
//!
//! 1. The pull-request step's per-task overhead: TASKS juggle tasks delivered with
//!    `github.pull_requests = false`, then TASKS more with it on, both pushing to the fake's own
//!    bare repository through a file remote, so the difference is the pull-request step alone
//!    (API calls, description, journal); then the same with the push over smart HTTP. The poll
//!    interval is an hour there, so the watch of open pull requests stays out of the figure.
//! 2. The idle poll: `cwo run` on the GitHub tracker against 100 open labelled issues that all
//!    wait on an open one, plus one delivered pull request it watches; every request of
//!    IDLE_SECS of polls (poll_interval = 1 s) is counted, with how many were answered 304 and
//!    the rate-limit points they cost, extrapolated to an hour at the default 30 s interval.

#[path = "../tests/common/fake_github.rs"]
mod fake_github;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_github::FakeGithub;

const TOKEN: &str = "ghp_benchTokenNotARealOne000000000000";
const AGENT: &str =
    "echo bench > \"bench-$(date +%s%N).txt\"; git add -A; git commit -q -m bench\n";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: github_bench CWO WORKDIR [TASKS [IDLE_SECS]]");
        std::process::exit(2);
    }
    let cwo = PathBuf::from(&args[0]);
    let work = PathBuf::from(&args[1]);
    let tasks: usize = args.get(2).map(|s| s.parse().expect("TASKS")).unwrap_or(10);
    let idle_secs: u64 = args
        .get(3)
        .map(|s| s.parse().expect("IDLE_SECS"))
        .unwrap_or(20);
    std::fs::create_dir_all(&work).unwrap();
    let seed = work.join("seed");
    git_init(&seed);

    // 1. The pull-request step.
    let fake = FakeGithub::start(TOKEN, "cwo-bot");
    fake.create_repo("acme", "bench", &seed);
    let file_remote = fake.repo_path("acme", "bench").display().to_string();
    let proj = project(&work.join("deliver"), &seed, &file_remote);
    let settings = |prs: bool| {
        format!(
            "poll_interval = \"1h\"\nstate_dir = {:?}\n[agent]\ncommand = [\"sh\", {:?}]\n[github]\nrepo = \"acme/bench\"\napi_url = {:?}\ntoken = \"env:BENCH_GH_TOKEN\"\npull_requests = {prs}\n",
            work.join("deliver.state").display().to_string(),
            work.join("agent.sh").display().to_string(),
            fake.api_url()
        )
    };
    std::fs::write(work.join("agent.sh"), AGENT).unwrap();
    let deliver = |prs: bool| -> (Duration, Vec<fake_github::Req>, u64) {
        std::fs::write(proj.join("cwo.toml"), settings(prs)).unwrap();
        for i in 0..tasks {
            run(cwo_cmd(&cwo, &proj).args(["-q", "task", "add", &format!("bench task {i}")]));
        }
        fake.reset_requests();
        let t0 = Instant::now();
        run(cwo_cmd(&cwo, &proj).args(["run", "--once"]));
        (t0.elapsed(), fake.requests(), fake.rate_points_used())
    };
    let (push_only, _, _) = deliver(false);
    let (with_prs, pr_requests, pr_points) = deliver(true);
    let writes = pr_requests.iter().filter(|r| r.method != "GET").count();
    let pulls = fake.pulls().as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(
        pulls, tasks,
        "every task of the second run has a pull request"
    );
    // The same over smart HTTP (the push then takes the token through the credential helper).
    let http = project(&work.join("http"), &seed, &fake.git_url("acme", "bench"));
    std::fs::write(
        http.join("cwo.toml"),
        settings(true).replace("deliver.state", "http.state"),
    )
    .unwrap();
    for i in 0..tasks {
        run(cwo_cmd(&cwo, &http).args(["-q", "task", "add", &format!("http task {i}")]));
    }
    let t0 = Instant::now();
    run(cwo_cmd(&cwo, &http).args(["run", "--once"]));
    let over_http = t0.elapsed();
    let per = |d: Duration| d.as_millis() as f64 / tasks as f64;
    let overhead = per(with_prs) - per(push_only);
    println!(
        "github: {tasks} tasks pushed, no pull requests:   {} ms ({:.0} ms/task)",
        push_only.as_millis(),
        per(push_only)
    );
    println!(
        "github: {tasks} tasks pushed + pull requests:     {} ms ({:.0} ms/task)",
        with_prs.as_millis(),
        per(with_prs)
    );
    println!(
        "github: pull-request step per task:           {overhead:.0} ms; {:.1} API requests ({:.1} writes, {:.1} rate points; x your latency to GitHub)",
        pr_requests.len() as f64 / tasks as f64,
        writes as f64 / tasks as f64,
        pr_points as f64 / tasks as f64
    );
    println!(
        "github: {tasks} tasks over smart HTTP + PRs:     {} ms ({:.0} ms/task)",
        over_http.as_millis(),
        per(over_http)
    );

    // 2. The idle poll.
    let fake = FakeGithub::start(TOKEN, "cwo-bot");
    fake.create_repo("acme", "idle", &seed);
    let blocker = fake.add_issue("Blocker", "Not for cwo.", &["design"]);
    for i in 0..100 {
        fake.add_issue(
            &format!("Waiting task {i}"),
            &format!("Needs the design first.\n\ndepends on #{blocker}\n\n- [ ] task {i} works\n"),
            &["cwo"],
        );
    }
    let ready = fake.add_issue("Greet", "Say hello.", &["cwo"]);
    let idle = project(&work.join("idle"), &seed, &fake.git_url("acme", "idle"));
    std::fs::write(
        idle.join("cwo.toml"),
        format!(
            "poll_interval = \"1s\"\nidle_timeout = \"1h\"\nstate_dir = {:?}\n[tracker]\nkind = \"github\"\n[agent]\ncommand = [\"sh\", {:?}]\n[github]\napi_url = {:?}\ntoken = \"env:BENCH_GH_TOKEN\"\n",
            work.join("idle.state").display().to_string(),
            work.join("agent.sh").display().to_string(),
            fake.api_url()
        ),
    )
    .unwrap();
    let mut child = cwo_cmd(&cwo, &idle)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(work.join("idle.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let delivered = Instant::now();
    while fake.pulls().as_array().map(Vec::len).unwrap_or(0) == 0 {
        if delivered.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!(
                "issue #{ready} was not delivered: {}",
                std::fs::read_to_string(work.join("idle.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the loop settle (the delivered pull request's first full read), then count.
    std::thread::sleep(Duration::from_secs(3));
    fake.reset_requests();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_secs));
    let window = t0.elapsed().as_secs_f64();
    let reqs = fake.requests();
    let points = fake.rate_points_used();
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let not_modified = reqs.iter().filter(|r| r.status == 304).count();
    let polls = window / 1.0;
    let per_poll = reqs.len() as f64 / polls;
    let per_hour = |x: f64| x / polls * 3600.0 / 30.0;
    println!(
        "github: idle poll, 100 waiting issues + 1 PR:  {per_poll:.1} requests/poll, {not_modified} of {} answered 304, {points} rate points in {window:.0} s",
        reqs.len()
    );
    println!(
        "github: idle cwo run at poll_interval 30s:     {:.0} requests/hour, {:.0} rate points/hour (goal 0: {}; each request would cost a point without ETags)",
        per_hour(reqs.len() as f64),
        per_hour(points as f64),
        if points == 0 { "met" } else { "NOT met" },
    );
}

fn cwo_cmd(cwo: &Path, dir: &Path) -> Command {
    let mut c = Command::new(cwo);
    identity(&mut c);
    c.arg("-C")
        .arg(dir)
        .env("BENCH_GH_TOKEN", TOKEN)
        .env("CWO_NO_PROGRESS", "1");
    c
}

/// The agent's and git's commits need an identity wherever the bench runs.
fn identity(c: &mut Command) -> &mut Command {
    for (k, v) in [
        ("GIT_AUTHOR_NAME", "bench"),
        ("GIT_AUTHOR_EMAIL", "bench@localhost"),
        ("GIT_COMMITTER_NAME", "bench"),
        ("GIT_COMMITTER_EMAIL", "bench@localhost"),
    ] {
        c.env(k, v);
    }
    c
}

fn run(c: &mut Command) {
    let out = c.output().unwrap();
    if !out.status.success() {
        panic!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

fn git(dir: &Path, args: &[&str]) {
    run(identity(&mut Command::new("git"))
        .arg("-C")
        .arg(dir)
        .args(args));
}

/// A repository of realistic size: 200 files of 50 lines.
fn git_init(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git(dir, &["init", "-q", "-b", "main"]);
    for i in 0..200 {
        let text: String = (1..=50).map(|l| format!("line {l}\n")).collect();
        std::fs::write(dir.join(format!("file{i}.txt")), text).unwrap();
    }
    std::fs::write(dir.join(".gitignore"), ".juggle/\ncwo.toml\n").unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", "init"]);
}

/// A clone of `seed` whose `origin` is `remote`.
fn project(dir: &Path, seed: &Path, remote: &str) -> PathBuf {
    run(Command::new("git").args(["clone", "-q"]).arg(seed).arg(dir));
    git(dir, &["remote", "set-url", "origin", remote]);
    dir.to_path_buf()
}
