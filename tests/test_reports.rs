//! Snapshots of every report command: its JSON document and, for each format, its exit code
//! and both streams; plus `--help`. A schema or wording change is a visible diff here.
//! Temp paths, times, durations, worker names and ball ids are filtered, so the snapshots are
//! the same on every run and machine.

use clap::CommandFactory;
use serde_json::{Value, json};

use crate::common::{TestEnv, filters, shown};

fn price(machine: &str, zone: &str) -> Value {
    let cat = cwo::cost::Catalog::embedded();
    serde_json::to_value(cwo::cost::PriceSnapshot::take(
        &cat,
        machine,
        zone,
        false,
        "pd-standard",
        10,
    ))
    .unwrap()
}

/// An exported ledger at fixed times: w1 (an hour of e2-small over midnight), w2 (two minutes of
/// an e2-micro where the catalog has no price).
pub(crate) fn ledger(env: &TestEnv) -> String {
    let rows = json!([
        {"worker": "w1", "provider": "gcp", "machine_type": "e2-small",
         "started_at": "2026-01-04T23:30:00Z", "ended_at": "2026-01-05T00:30:00Z",
         "seconds": 3600.0, "termination_reason": "idle", "price": price("e2-small", "us-central1-a")},
        {"worker": "w2", "provider": "gcp", "machine_type": "e2-micro",
         "started_at": "2026-01-05T10:00:00Z", "ended_at": "2026-01-05T10:02:00Z",
         "seconds": 120.0, "termination_reason": "budget", "price": price("e2-micro", "europe-west1-b")},
    ]);
    let path = env.tmp.path().join("ledger.json");
    let doc = json!({"schema_version": 1, "exported_at": "2026-01-06T00:00:00Z", "project": "proj", "ledger": rows});
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    path.display().to_string()
}

#[test]
fn status_report() {
    let env = TestEnv::new();
    env.settings("[agent]\ncommand = [\"sh\"]");
    let id = env.add(&["First", "--ac", "one"]);
    env.cwo(&["up"]).ok();
    // Two pull requests as the loop recorded them: one open with feedback in hand (shown), one
    // merged (not shown).
    let conn = rusqlite::Connection::open(env.state.join("journal.sqlite")).unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO pull_requests (ball_id, number, url, branch, state, rounds, review_state, check_state, updated_at)
         VALUES ('{id}', 7, 'https://github.com/acme/widgets/pull/7', 'cwo/{id}', 'open', 1,
                 'changes_requested', 'failure', '2026-01-05T10:00:00Z'),
                ('old', 3, 'https://github.com/acme/widgets/pull/3', 'cwo/old', 'merged', 0,
                 'approved', 'success', '2026-01-04T10:00:00Z');"
    ))
    .unwrap();
    filters(&env).bind(|| {
        let json = env.cwo(&["status", "--format", "json"]).ok().json();
        insta::assert_json_snapshot!("status_json", json, {
            ".workers[].uptime_secs" => "[secs]",
        });
        insta::assert_snapshot!("status_table", shown(&env.cwo(&["status"])));
    });
}

#[test]
fn cost_report() {
    let env = TestEnv::new();
    let f = ledger(&env);
    filters(&env).bind(|| {
        let json = env
            .cwo(&["cost", "--ledger", &f, "--format", "json"])
            .json();
        insta::assert_json_snapshot!("cost_json", json);
        for (name, args) in [
            ("cost_table", &["cost", "--ledger", &f][..]),
            (
                "cost_by_day_table",
                &["cost", "--ledger", &f, "--by", "day"][..],
            ),
            ("cost_csv", &["cost", "--ledger", &f, "--format", "csv"][..]),
            (
                "cost_by_task_with_ledger",
                &["cost", "--ledger", &f, "--by", "task"][..],
            ),
        ] {
            insta::assert_snapshot!(name, shown(&env.cwo(args)));
        }
    });
}

#[test]
fn budget_check_report() {
    let env = TestEnv::new();
    let f = ledger(&env);
    let check = |more: &[&str]| {
        let mut args = vec!["budget", "check", "--ledger", &f, "--period", "all"];
        args.extend_from_slice(more);
        env.cwo(&args)
    };
    filters(&env).bind(|| {
        let unknown = check(&["--limit-usd", "1"]);
        insta::assert_json_snapshot!("budget_json_unknown_price", unknown.json());
        insta::assert_snapshot!("budget_run_unknown_price", shown(&unknown));
        let deny = check(&[
            "--limit-usd",
            "0.01",
            "--on-unknown",
            "warn",
            "--format",
            "table",
        ]);
        insta::assert_snapshot!("budget_run_deny_table", shown(&deny));
        let usage = check(&["--limit-usd", "1", "--warn-at", "120"]);
        insta::assert_snapshot!("budget_run_usage", shown(&usage));
    });
}

#[test]
fn reap_report() {
    let env = TestEnv::new();
    env.settings("[agent]\ncommand = [\"sh\"]");
    env.cwo(&["up"]).ok();
    filters(&env).bind(|| {
        let json = env.cwo(&["reap", "--format", "json"]).ok().json();
        insta::assert_json_snapshot!("reap_json", json);
        insta::assert_snapshot!("reap_table", shown(&env.cwo(&["reap"])));
    });
}

#[test]
fn task_list_report() {
    let env = TestEnv::new();
    let first = env.add(&["First", "--ac", "one", "--priority", "high"]);
    env.add(&["Second", "--depends-on", &first]);
    filters(&env).bind(|| {
        let json = env.cwo(&["task", "list", "--format", "json"]).ok().json();
        insta::assert_json_snapshot!("task_list_json", json);
        insta::assert_snapshot!("task_list_table", shown(&env.cwo(&["task", "list"])));
    });
}

#[test]
fn config_show_report() {
    let env = TestEnv::new();
    filters(&env).bind(|| {
        let json = env
            .cwo(&[
                "config",
                "show",
                "--format",
                "json",
                "--config",
                "agent.max_attempts=5",
            ])
            .ok()
            .json();
        insta::assert_json_snapshot!("config_show_json", json);
        insta::assert_snapshot!("config_show_text", shown(&env.cwo(&["config", "show"])));
    });
}

/// Errors keep their causes: each is its own "Caused by" line under what failed.
#[test]
fn broken_ledgers_and_price_overrides_are_usage_errors_with_their_cause() {
    let env = TestEnv::new();
    let bad = env.tmp.path().join("bad.json");
    std::fs::write(&bad, "{\"schema_version\": 1}").unwrap();
    let prices = env.home.join(".config/cwo");
    std::fs::create_dir_all(&prices).unwrap();
    std::fs::write(prices.join("prices.toml"), "[machine.x]\nregions = 3\n").unwrap();
    filters(&env).bind(|| {
        let bad_ledger = env.cwo(&["cost", "--ledger", bad.to_str().unwrap()]);
        insta::assert_snapshot!("error_bad_ledger", shown(&bad_ledger));
        let bad_prices = env.cwo(&["budget", "check", "--limit-usd", "1"]);
        insta::assert_snapshot!("error_bad_prices", shown(&bad_prices));
    });
}

#[test]
fn help_lists_the_exit_codes_of_the_exit_status_enum() {
    cwo::cli::Cli::command().debug_assert();
    let env = TestEnv::new();
    let help = env.cwo(&["--help"]).ok().stdout;
    assert!(
        help.contains(&cwo::error::ExitStatus::top_level_help()),
        "{help}"
    );
    insta::assert_snapshot!("help", help);
    let budget = env.cwo(&["budget", "check", "--help"]).ok().stdout;
    assert!(budget.contains(&cwo::error::ExitStatus::budget_check_help()));
}

/// Warnings never go to stdout: a failed provider list is said on stderr, and stdout is the
/// journal's table alone.
#[test]
fn status_says_a_failed_provider_list_on_stderr_not_in_the_table() {
    let Some(g) = crate::test_gcp::gcp("", "true", "") else {
        return;
    };
    for _ in 0..10 {
        g.fake
            .faults()
            .http
            .push_back(("GET /compute/v1/projects/proj-test/aggregated".into(), 500));
    }
    let run = g.env.cwo(&["status"]).ok();
    assert!(!run.stdout.contains("warning"), "{}", run.stdout);
    assert!(
        run.stderr
            .contains("warning: the provider could not list workers ("),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("workers: none"), "{}", run.stdout);
}
