//! Snapshots of the commands test_reports does not cover: exit code, stdout and stderr of each,
//! on the local provider unless said otherwise, so a change of wording, stream or exit code is a
//! visible diff. Everything that varies between runs (temp paths, times, durations, worker
//! names, ball ids, ports) is filtered; `doctor` and `up --plan` are snapshotted elsewhere.

use std::path::Path;

use crate::common::{Run, TestEnv, filters, regex_escape, shown};
use crate::test_budget_alert::{ACCOUNT, billing};

/// `filters`, with the fake API's port, budget ids and etags hidden too (the fake numbers them
/// across the whole test process).
fn fake_filters(env: &TestEnv) -> insta::Settings {
    let mut s = filters(env);
    s.add_filter(r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]");
    s.add_filter(r"/budgets/[0-9a-f-]{36}\b", "/budgets/[ID]");
    s.add_filter(r"\betag-\d+\b", "etag-[N]");
    s
}

#[test]
fn up_and_down_on_the_local_provider() {
    let env = TestEnv::new();
    env.settings("[agent]\ncommand = [\"sh\"]");
    filters(&env).bind(|| {
        insta::assert_snapshot!("up_local", shown(&env.cwo(&["up"])));
        insta::assert_snapshot!("down_local", shown(&env.cwo(&["down"])));
        insta::assert_snapshot!("down_nothing", shown(&env.cwo(&["down"])));
    });
}

#[test]
fn task_add() {
    let env = TestEnv::new();
    filters(&env).bind(|| {
        let run = env.cwo(&["task", "add", "First", "--ac", "one", "--priority", "high"]);
        insta::assert_snapshot!("task_add", shown(&run));
        let bad = env.cwo(&["task", "add", "Second", "--depends-on", "nope"]);
        insta::assert_snapshot!("task_add_unknown_dependency", shown(&bad));
    });
}

/// One ball done by a stable agent, then its log.
#[test]
fn run_once_and_logs() {
    let env = TestEnv::new();
    env.agent(
        "echo 'working on it'\ngit commit -q --allow-empty -m done\necho finished",
        "",
    );
    let id = env.add(&["Do it", "--ac", "it is done"]);
    let mut settings = filters(&env);
    // The agent's commit has the time in it.
    settings.add_filter(r"\bat [0-9a-f]{12}\b", "at [SHA]");
    settings.bind(|| {
        insta::assert_snapshot!("run_once_done", shown(&env.cwo(&["run", "--once"])));
        insta::assert_snapshot!("logs_done", shown(&env.cwo(&["logs", &id])));
        insta::assert_snapshot!("logs_unknown", shown(&env.cwo(&["logs", "nope"])));
    });
}

#[test]
fn bootstrap_script() {
    let env = TestEnv::new();
    filters(&env).bind(|| {
        let run = env.cwo(&["bootstrap", "script", "--login-user", "admin"]);
        insta::assert_snapshot!("bootstrap_script", shown(&run));
    });
}

/// The crontab is a shim on PATH writing a file in the temp dir (as in
/// test_gcp::schedule_installs_one_idempotent_crontab_entry): the machine's own is never read.
#[test]
fn schedule_install_show_remove() {
    let env = TestEnv::new();
    let bin = env.tmp.path().join("bin");
    let tab = env.tmp.path().join("crontab.txt");
    crontab_shim(&bin);
    std::fs::write(&tab, "0 3 * * * backup.sh\n").unwrap();
    let cron = |args: &[&str]| -> Run {
        env.cmd(args)
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
            )
            .env("CRONTAB_FILE", &tab)
            .output()
            .unwrap()
            .into()
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_cwo")).display().to_string();
    let mut settings = filters(&env);
    settings.add_filter(&regex_escape(&exe), "[CWO]");
    settings.bind(|| {
        insta::assert_snapshot!("schedule_show_none", shown(&cron(&["schedule", "show"])));
        let install = cron(&["schedule", "install", "--every", "5"]);
        insta::assert_snapshot!("schedule_install", shown(&install));
        let again = cron(&["schedule", "install", "--every", "5"]);
        insta::assert_snapshot!("schedule_install_again", shown(&again));
        insta::assert_snapshot!("schedule_show", shown(&cron(&["schedule", "show"])));
        insta::assert_snapshot!("schedule_remove", shown(&cron(&["schedule", "remove"])));
        let nothing = cron(&["schedule", "remove"]);
        insta::assert_snapshot!("schedule_remove_nothing", shown(&nothing));
        let bad = cron(&["schedule", "install", "--every", "60"]);
        insta::assert_snapshot!("schedule_install_bad_every", shown(&bad));
    });
    assert_eq!(
        std::fs::read_to_string(&tab).unwrap(),
        "0 3 * * * backup.sh\n"
    );
}

/// A `crontab` that reads and writes `$CRONTAB_FILE`.
fn crontab_shim(bin: &Path) {
    std::fs::create_dir_all(bin).unwrap();
    let path = bin.join("crontab");
    std::fs::write(
        &path,
        "#!/bin/sh\ncase \"$1\" in\n-l) [ -f \"$CRONTAB_FILE\" ] && exec cat \"$CRONTAB_FILE\"; echo 'no crontab for user' >&2; exit 1 ;;\n-) exec cat > \"$CRONTAB_FILE\" ;;\nesac\nexit 2\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `budget alert set|show|remove` against the fake Cloud Billing Budget API: each one's JSON
/// and text, so the alert report's keys are pinned.
#[test]
fn budget_alert_set_show_remove() {
    let b = billing(&format!("billing_account = \"{ACCOUNT}\""));
    let env = &b.env;
    fake_filters(env).bind(|| {
        let none = env.cwo(&["budget", "alert", "show"]);
        insta::assert_snapshot!("budget_alert_show_none", shown(&none));
        let none = env.cwo(&["budget", "alert", "show", "--format", "json"]);
        insta::assert_snapshot!("budget_alert_show_none_json", shown(&none));
        let set = env.cwo(&[
            "budget", "alert", "set", "--amount", "5", "--format", "json",
        ]);
        insta::assert_snapshot!("budget_alert_set_json", shown(&set));
        let again = env.cwo(&["budget", "alert", "set", "--amount", "5"]);
        insta::assert_snapshot!("budget_alert_set_unchanged", shown(&again));
        let show = env.cwo(&["budget", "alert", "show"]);
        insta::assert_snapshot!("budget_alert_show", shown(&show));
        let show = env.cwo(&["budget", "alert", "show", "--format", "json"]);
        insta::assert_snapshot!("budget_alert_show_json", shown(&show));
        let remove = env.cwo(&["budget", "alert", "remove", "--format", "json"]);
        insta::assert_snapshot!("budget_alert_remove_json", shown(&remove));
        let nothing = env.cwo(&["budget", "alert", "remove"]);
        insta::assert_snapshot!("budget_alert_remove_nothing", shown(&nothing));
    });
}

/// No billing account anywhere: a usage error (exit 2) that says where to find it.
#[test]
fn budget_alert_without_a_billing_account() {
    let b = billing("");
    fake_filters(&b.env).bind(|| {
        let run = b.env.cwo(&["budget", "alert", "show"]);
        insta::assert_snapshot!("budget_alert_no_account", shown(&run));
    });
}

/// The bash completion script is long: its size, a hash and its first lines.
#[test]
fn completions_bash() {
    let env = TestEnv::new();
    let run = env.cwo(&["completions", "bash"]);
    let hash = run.stdout.bytes().fold(0xcbf29ce484222325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let head: Vec<&str> = run.stdout.lines().take(5).collect();
    let summary = format!(
        "exit: {}\nlines: {}\nfnv64: {hash:016x}\n--- head\n{}\n--- stderr\n{}",
        run.code,
        run.stdout.lines().count(),
        head.join("\n"),
        run.stderr
    );
    insta::assert_snapshot!("completions_bash", summary);
}

/// Usage errors exit 2: an unknown flag (clap's message) and a bad setting (file:line).
#[test]
fn usage_errors() {
    let env = TestEnv::new();
    filters(&env).bind(|| {
        insta::assert_snapshot!(
            "usage_bad_flag",
            shown(&env.cwo(&["status", "--no-such-flag"]))
        );
        insta::assert_snapshot!(
            "usage_bad_config_flag",
            shown(&env.cwo(&["status", "--config", "agent.max_attempts=three"]))
        );
        std::fs::write(
            env.project.join("cwo.toml"),
            "poll_interval = \"1s\"\n[agent]\nmax_atempts = 3\n",
        )
        .unwrap();
        insta::assert_snapshot!("usage_bad_setting", shown(&env.cwo(&["status"])));
    });
}

/// Each JSON report's shape: every key path with the JSON types seen there (array elements
/// merged under `[]`), so a renamed, added, removed or retyped field is a one-line diff even
/// where the value snapshots are long. The shapes are those of these runs (a field that is
/// skipped when empty, or an array that is empty here, shows no more than the run has), which
/// is why each report gets data: a worker, a ball, a ledger, a budget. `doctor` and `up --plan`
/// are left to their owner.
#[test]
fn json_report_shapes() {
    let mut shapes = String::new();
    let mut add = |name: &str, run: Run| {
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        shapes.push_str(&format!("## {name}\n{}\n", shape(&run.json())));
    };

    let env = TestEnv::new();
    env.settings("[agent]\ncommand = [\"sh\"]");
    env.add(&["First", "--ac", "one"]);
    env.cwo(&["up"]).ok();
    let json = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        env.cwo(&a)
    };
    add("status", json(&["status"]));
    add("reap", json(&["reap"]));
    add("task list", json(&["task", "list"]));
    add("config show", json(&["config", "show"]));
    let f = crate::test_reports::ledger(&env);
    add("cost", json(&["cost", "--ledger", &f]));
    add(
        "cost --by day",
        json(&["cost", "--ledger", &f, "--by", "day"]),
    );
    // Per task needs the journal's attempts: one ball run on the local provider.
    let ran = TestEnv::new();
    ran.agent("git commit -q --allow-empty -m done", "");
    ran.add(&["Do it"]);
    ran.cwo(&["run", "--once"]).ok();
    add(
        "cost --by task",
        ran.cwo(&["cost", "--by", "task", "--format", "json"]),
    );
    let check = [
        "budget",
        "check",
        "--ledger",
        &f,
        "--period",
        "all",
        "--limit-usd",
        "10",
        "--on-unknown",
        "warn",
    ];
    add("budget check", json(&check));

    let b = billing(&format!("billing_account = \"{ACCOUNT}\""));
    let alert = |args: &[&str]| {
        let mut a = vec!["budget", "alert"];
        a.extend_from_slice(args);
        a.extend(["--format", "json"]);
        b.env.cwo(&a)
    };
    add("budget alert set", alert(&["set", "--amount", "5"]));
    add("budget alert show", alert(&["show"]));
    add("budget alert remove", alert(&["remove"]));
    insta::assert_snapshot!("json_report_shapes", shapes);
}

/// `path: types` lines, sorted by path.
fn shape(doc: &serde_json::Value) -> String {
    use std::collections::{BTreeMap, BTreeSet};
    fn walk(
        v: &serde_json::Value,
        path: String,
        out: &mut BTreeMap<String, BTreeSet<&'static str>>,
    ) {
        use serde_json::Value::*;
        let kind = match v {
            Null => "null",
            Bool(_) => "bool",
            Number(_) => "number",
            String(_) => "string",
            Array(items) => {
                for item in items {
                    walk(item, format!("{path}[]"), out);
                }
                "array"
            }
            Object(map) => {
                for (k, item) in map {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(item, p, out);
                }
                "object"
            }
        };
        out.entry(path).or_default().insert(kind);
    }
    let mut out = BTreeMap::new();
    walk(doc, String::new(), &mut out);
    out.into_iter()
        .filter(|(p, _)| !p.is_empty())
        .map(|(p, kinds)| format!("{p}: {}\n", kinds.into_iter().collect::<Vec<_>>().join("|")))
        .collect()
}

/// `cwo doctor` on the local provider, both formats: each check, its fix, and exit 1 for the
/// missing remote and agent. The git version is the machine's, the commit the test's.
#[test]
fn doctor_local() {
    let env = TestEnv::new();
    let mut settings = filters(&env);
    settings.add_filter(r"git version \d+(\.\d+)*\S*", "git version [VERSION]");
    settings.add_filter(r"\bat [0-9a-f]{12}\b", "at [SHA]");
    settings.bind(|| {
        insta::assert_snapshot!("doctor_local", shown(&env.cwo(&["doctor"])));
        insta::assert_snapshot!(
            "doctor_local_json",
            shown(&env.cwo(&["doctor", "--format", "json"]))
        );
    });
}

/// `cwo up --plan` on the local provider and on gcp (against the fake, which it never calls),
/// both formats: the worker, its labels, what it would cost.
#[test]
fn up_plan() {
    let env = TestEnv::new();
    filters(&env).bind(|| {
        insta::assert_snapshot!("up_plan_local", shown(&env.cwo(&["up", "--plan"])));
        insta::assert_snapshot!(
            "up_plan_local_json",
            shown(&env.cwo(&["up", "--plan", "--format", "json"]))
        );
    });
    let Some(g) = crate::test_gcp::gcp("", "true", "") else {
        return;
    };
    // The instance body's label maps come from the Compute client's hash maps: sorted here. The
    // expiry is the time of the run.
    let run = g.env.cwo(&["up", "--plan", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "");
    let mut settings = fake_filters(&g.env);
    settings.set_sort_maps(true);
    settings.bind(|| {
        insta::assert_json_snapshot!("up_plan_gcp_json", run.json(), {
            r#".plan.instance.labels["cwo-expires-at"]"# => "[EXPIRES AT]",
            // The test sshd's port (the fake VMs' SSH port).
            ".plan.firewall.allow" => "tcp:[PORT]",
        });
    });
    assert!(g.fake.log().is_empty(), "no API call: {:?}", g.fake.log());
}
