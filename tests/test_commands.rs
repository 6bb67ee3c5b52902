//! The reporting and housekeeping commands.

use crate::common::TestEnv;

#[test]
fn config_errors_name_file_and_line() {
    let env = TestEnv::new();
    std::fs::write(
        env.project.join("cwo.toml"),
        "poll_interval = \"1s\"\n[agent]\nmax_attempts = \"three\"\n",
    )
    .unwrap();
    let run = env.cwo(&["status"]);
    assert_eq!(run.code, 2);
    let path = env.project.canonicalize().unwrap().join("cwo.toml");
    assert!(
        run.stderr.contains(&format!("{}:3:16", path.display())),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint: "), "{}", run.stderr);

    std::fs::write(
        env.project.join("cwo.toml"),
        "[agent]\ntimeout = \"1m\"\nmax_atempts = 3\n",
    )
    .unwrap();
    let run = env.cwo(&["run", "--once"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains(&format!(
            "{}:3:1: unknown field `max_atempts`",
            path.display()
        )),
        "{}",
        run.stderr
    );
    assert!(!env.state.exists() || env.live_workers() == 0);
}

#[test]
fn empty_zones_are_refused_at_load_with_file_line_and_hint() {
    let env = TestEnv::new();
    // Lines 1-2 are poll_interval and state_dir; [gcp] is line 3.
    env.settings("[gcp]\nproject = \"p\"\nzones = []");
    let run = env.cwo(&["status"]);
    assert_eq!(run.code, 2, "{run:?}");
    let path = env.project.canonicalize().unwrap().join("cwo.toml");
    assert!(
        run.stderr
            .contains(&format!("{}:5:9: gcp.zones is empty", path.display())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("zones = [\"us-central1-a\"]") && run.stderr.contains("hint: "),
        "{}",
        run.stderr
    );
}

#[test]
fn questionable_settings_warn_once_per_command_naming_where_they_came_from() {
    let env = TestEnv::new();
    // Line 3 onwards: provider, reap_grace, idle_timeout, [gcp], ssh_source.
    env.settings(
        "provider = \"gcp\"\nreap_grace = \"0s\"\nidle_timeout = \"0s\"\n[gcp]\nssh_source = \"0.0.0.0/0\"",
    );
    let path = env.project.canonicalize().unwrap().join("cwo.toml");
    let p = path.display();
    for args in [&["config", "show"][..], &["task", "list"][..]] {
        let run = env.cwo(args).ok();
        let warnings: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("warning: "))
            .collect();
        assert_eq!(warnings.len(), 3, "{args:?}: once each:\n{}", run.stderr);
        for (line, key, says) in [
            (4, "reap_grace = \"0s\"", "deleted on the very next pass"),
            (5, "idle_timeout = \"0s\"", "waits for a new worker"),
            (7, "gcp.ssh_source = \"0.0.0.0/0\"", "SSH open to the world"),
        ] {
            assert!(
                warnings
                    .iter()
                    .any(|w| w.starts_with(&format!("warning: {p}:{line}: {key}: "))
                        && w.contains(says)),
                "{key} at line {line}:\n{}",
                run.stderr
            );
        }
        assert!(
            !run.stdout.contains("warning"),
            "stdout is data: {}",
            run.stdout
        );
    }
    // From the environment: the variable is named; `::/0` is the whole internet too.
    let run: crate::common::Run = env
        .cmd(&["config", "show"])
        .env("CWO_GCP__SSH_SOURCE", "::/0")
        .output()
        .unwrap()
        .into();
    assert!(
        run.stderr.contains(
            "warning: env CWO_GCP__SSH_SOURCE: gcp.ssh_source = \"::/0\": SSH open to the world"
        ),
        "{}",
        run.stderr
    );

    // `cwo doctor` lists them among its checks, each with its fix (and not twice on stderr).
    env.settings("reap_grace = \"0s\"\nidle_timeout = \"0s\"\n[agent]\ncommand = [\"sh\"]");
    let run = env.cwo(&["doctor", "--format", "json"]);
    assert_eq!(run.code, 0, "warnings do not fail the doctor: {run:?}");
    assert!(!run.stderr.contains("warning: "), "{}", run.stderr);
    let doc = run.json();
    let settings: Vec<&serde_json::Value> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "settings")
        .collect();
    assert_eq!(settings.len(), 2, "{doc}");
    for (c, key, fix) in [
        (settings[0], "reap_grace", "15m"),
        (settings[1], "idle_timeout", "5m"),
    ] {
        assert_eq!(c["status"], "warn", "{c}");
        assert!(
            c["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{key} = \"0s\" ({p}:")),
            "{c}"
        );
        assert!(c["fix"].as_str().unwrap().contains(fix), "{c}");
    }
    let table = env.cwo(&["doctor"]).ok().stdout;
    assert!(table.contains("warn settings    reap_grace"), "{table}");
}

#[test]
fn config_show_prints_values_and_origins() {
    let env = TestEnv::new();
    let run = env
        .cmd(&["config", "show", "--config", "agent.max_attempts=5"])
        .env("CWO_IDLE_TIMEOUT", "10m")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success());
    assert!(
        out.contains("idle_timeout = \"10m\"    # env CWO_IDLE_TIMEOUT"),
        "{out}"
    );
    assert!(
        out.contains("agent.max_attempts = 5    # flag --config agent.max_attempts=5"),
        "{out}"
    );
    assert!(out.contains("cwo.toml:1"), "{out}");
    assert!(
        out.contains("git.remote = \"origin\"    # default"),
        "{out}"
    );
    let json = env.cwo(&["config", "show", "--format", "json"]).ok().json();
    assert_eq!(json["schema_version"], 1);
    assert!(
        json["settings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["key"] == "agent.command")
    );
}

#[test]
fn up_refuses_a_worker_without_the_agent() {
    let env = TestEnv::new();
    env.settings("[agent]\ncommand = [\"definitely-not-an-agent\", \"{prompt}\"]");
    let run = env.cwo(&["up"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("not found on PATH: definitely-not-an-agent"),
        "{}",
        run.stderr
    );
    assert_eq!(env.live_workers(), 0, "the half-made worker is deleted");
    assert_eq!(
        env.journal("SELECT state, termination_reason FROM workers"),
        "deleted|error"
    );
}

#[test]
fn up_status_down() {
    let env = TestEnv::new();
    env.settings("[agent]\ncommand = [\"sh\"]");
    let name = env.cwo(&["up"]).ok().stdout.trim().to_string();
    assert!(name.starts_with("cwo-proj-"), "{name}");
    assert_eq!(env.live_workers(), 1);
    let status = env.cwo(&["status", "--format", "json"]).ok().json();
    assert_eq!(status["schema_version"], 1);
    assert_eq!(status["workers"][0]["name"], name.as_str());
    assert_eq!(status["workers"][0]["state"], "ready");
    let table = env.cwo(&["status"]).ok().stdout;
    assert!(
        table.contains(&name) && table.contains("controller: not running"),
        "{table}"
    );
    // up again: the same worker.
    assert_eq!(env.cwo(&["up"]).ok().stdout.trim(), name);
    let down = env.cwo(&["down"]).ok();
    assert!(
        down.stderr.contains("1 worker(s) torn down"),
        "{}",
        down.stderr
    );
    assert_eq!(env.live_workers(), 0);
    assert_eq!(env.journal("SELECT termination_reason FROM ledger"), "user");
    assert!(env.cwo(&["down"]).ok().stderr.contains("no workers"));
}

#[test]
fn down_notices_a_worker_deleted_outside_cwo() {
    let env = TestEnv::new();
    env.settings("[agent]\ncommand = [\"sh\"]");
    let name = env.cwo(&["up"]).ok().stdout.trim().to_string();
    std::fs::remove_dir_all(env.state.join("workers").join(&name)).unwrap();
    let down = env.cwo(&["down"]).ok();
    assert!(down.stderr.contains("already gone"), "{}", down.stderr);
    assert_eq!(env.journal("SELECT state FROM workers"), "deleted");
}

#[test]
fn task_add_and_list() {
    let env = TestEnv::new();
    let a = env.add(&[
        "First",
        "--ac",
        "one",
        "--ac",
        "two",
        "--priority",
        "urgent",
        "--tag",
        "s",
    ]);
    let short = a.rsplit('-').next().unwrap();
    let b = env.add(&["Second", "--depends-on", &short[..5]]);
    let ball = env.ball(&b);
    assert_eq!(ball["depends_on"][0], a.as_str());
    assert_eq!(ball["state"], "pending");
    let first = env.ball(&a);
    assert_eq!(first["acceptance_criteria"][1], "two");
    assert_eq!(first["priority"], "urgent");
    assert_eq!(first["update_count"], 0);
    let list = env.cwo(&["task", "list", "--format", "json"]).ok().json();
    assert_eq!(list["tasks"][1]["waiting_on"][0], a.as_str());
    let table = env.cwo(&["task", "list"]).ok().stdout;
    assert!(table.contains(&format!("(waits on {a})")), "{table}");
    let bad = env.cwo(&["task", "add", "x", "--depends-on", "nope"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("no ball `nope`"), "{}", bad.stderr);
}

#[test]
fn doctor_reports_each_check_with_a_fix() {
    let env = TestEnv::new();
    env.settings("[agent]\ncommand = [\"definitely-not-an-agent\"]");
    let run = env.cwo(&["doctor", "--format", "json"]);
    assert_eq!(run.code, 1);
    let json = run.json();
    let agent = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "agent")
        .unwrap();
    assert_eq!(agent["status"], "fail");
    assert!(
        agent["fix"]
            .as_str()
            .unwrap()
            .contains("definitely-not-an-agent")
    );
    env.settings("[agent]\ncommand = [\"sh\"]");
    let ok = env.cwo(&["doctor"]);
    assert_eq!(ok.code, 0, "{}", ok.stdout);
    assert!(ok.stdout.contains("ok   remote"), "{}", ok.stdout);
}

#[test]
fn run_output_snapshot() {
    let env = TestEnv::new();
    env.agent("echo 'I need a key'\necho 'BLOCKED: no API key'", "");
    env.add(&["Needs a key"]);
    let run = env.cwo(&["run", "--once"]).ok();
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(r"proj-[0-9a-f]{8}", "[BALL]");
    settings.add_filter(r"cwo-proj-[0-9a-f]{6}", "[WORKER]");
    settings.add_filter(r"\d+\.\d\ds", "[T]");
    settings.bind(|| {
        insta::assert_snapshot!(run.stderr, @r"
        bringing up worker [WORKER] (local)...
        worker [WORKER] is up ([T])
        ▶ [BALL] Needs a key
        [[BALL]] I need a key
        [[BALL]] BLOCKED: no API key
        ✗ [BALL] blocked: no API key
        tearing down worker [WORKER]...
        worker [WORKER] deleted ([T])
        ran 1 task(s): 0 complete, 1 blocked, 0 aborted · worker up [T] · agent [T] · git [T] · teardown [T] · total [T]
        ");
    });
}

#[test]
fn help_lists_every_command_and_exit_codes() {
    let env = TestEnv::new();
    let help = env.cwo(&["--help"]).ok().stdout;
    for cmd in [
        "run",
        "up",
        "down",
        "status",
        "logs",
        "task",
        "config",
        "doctor",
        "demo",
        "completions",
    ] {
        assert!(
            help.contains(&format!("\n  {cmd} ")),
            "{cmd} missing from\n{help}"
        );
    }
    assert!(help.contains("Exit codes: 0 success; 1"), "{help}");
    let completions = env.cwo(&["completions", "bash"]).ok().stdout;
    assert!(completions.contains("_cwo()"));
}

#[test]
fn an_unreadable_prompt_template_is_a_usage_error_with_its_path_and_a_hint() {
    let env = TestEnv::new();
    env.settings("[agent]\nprompt_template = \"missing.tmpl\"");
    let run = env.cwo(&["up"]);
    assert_eq!(run.code, 2, "{run:?}");
    let path = env.project.canonicalize().unwrap().join("missing.tmpl");
    assert!(
        run.stderr.contains(&format!(
            "error: cannot read agent.prompt_template {}: No such file or directory",
            path.display()
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: set agent.prompt_template to a file relative to the project root, or \"\" for the built-in prompt"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("Caused by"), "{}", run.stderr);
    assert!(!env.state.exists() || env.live_workers() == 0);
}
