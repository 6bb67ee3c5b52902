//! `cwo cost` and `cwo budget check` against ledgers computed by hand.

use serde_json::{Value, json};

use crate::common::TestEnv;

fn price(machine: &str, zone: &str, spot: bool) -> Value {
    let cat = cwo::cost::Catalog::embedded();
    serde_json::to_value(cwo::cost::PriceSnapshot::take(
        &cat,
        machine,
        zone,
        spot,
        "pd-standard",
        10,
    ))
    .unwrap()
}

/// A ledger export with the given rows (worker, machine, zone, seconds), ending an hour ago.
fn ledger(env: &TestEnv, rows: &[(&str, &str, &str, i64)]) -> std::path::PathBuf {
    let end = chrono::Utc::now() - chrono::Duration::hours(1);
    let rows: Vec<Value> = rows
        .iter()
        .map(|(w, m, z, secs)| {
            json!({
                "worker": w, "provider": "gcp", "machine_type": m,
                "started_at": end - chrono::Duration::seconds(*secs), "ended_at": end,
                "seconds": *secs as f64, "termination_reason": "idle", "price": price(m, z, false),
            })
        })
        .collect();
    let path = env.tmp.path().join("ledger.json");
    std::fs::write(&path, serde_json::to_vec(&json!({"schema_version": 1, "exported_at": chrono::Utc::now(), "project": "proj", "ledger": rows})).unwrap()).unwrap();
    path
}

const E2_SMALL_HOUR: f64 = 0.01675 + 0.4 / 730.0 + 0.005;

#[test]
fn budget_check_exit_codes_within_warn_deny_unknown() {
    let env = TestEnv::new();
    let file = ledger(&env, &[("w1", "e2-small", "us-central1-a", 3600)]);
    let f = file.to_str().unwrap();
    let check = |extra: &[&str]| {
        let mut args = vec!["budget", "check", "--ledger", f, "--period", "all"];
        args.extend_from_slice(extra);
        env.cwo(&args)
    };
    let ok = check(&["--limit-usd", "1"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let doc = ok.json();
    assert_eq!(doc["schema_version"], 1);
    assert_eq!(doc["status"], "ok");
    assert!(
        (doc["expected_usd"].as_f64().unwrap() - E2_SMALL_HOUR).abs() < 1e-9,
        "{doc}"
    );
    assert_eq!(doc["workers"][0]["worker"], "w1");
    assert!(ok.stderr.contains("budget ok:"), "{}", ok.stderr);

    let warn = check(&["--limit-usd", "0.025"]);
    assert_eq!(warn.code, 0);
    assert_eq!(warn.json()["status"], "warn");
    let deny = check(&["--limit-usd", "0.02"]);
    assert_eq!(deny.code, 1);
    assert_eq!(deny.json()["status"], "deny");
    assert_eq!(check(&["--limit-usd", "-1"]).code, 2, "usage");

    let file = ledger(
        &env,
        &[
            ("w1", "e2-small", "us-central1-a", 3600),
            ("odd", "m9-mega", "us-central1-a", 60),
        ],
    );
    let f2 = file.to_str().unwrap();
    let unknown = env.cwo(&[
        "budget",
        "check",
        "--ledger",
        f2,
        "--period",
        "all",
        "--limit-usd",
        "1",
    ]);
    assert_eq!(unknown.code, 3, "{unknown:?}");
    assert_eq!(unknown.json()["unknown_price_workers"][0], "odd");
    let warned = env.cwo(&[
        "budget",
        "check",
        "--ledger",
        f2,
        "--period",
        "all",
        "--limit-usd",
        "1",
        "--on-unknown",
        "warn",
    ]);
    assert_eq!(warned.code, 0);
}

#[test]
fn cost_reports_per_worker_and_day_in_every_format() {
    let env = TestEnv::new();
    let file = ledger(
        &env,
        &[
            ("w1", "e2-small", "us-central1-a", 3600),
            ("w2", "e2-micro", "europe-west1-b", 120),
        ],
    );
    let f = file.to_str().unwrap();
    let doc = env
        .cwo(&["cost", "--ledger", f, "--format", "json"])
        .ok()
        .json();
    assert_eq!(doc["rows"][0]["worker"], "w1");
    assert!((doc["rows"][0]["list_usd"].as_f64().unwrap() - E2_SMALL_HOUR).abs() < 1e-9);
    assert_eq!(doc["rows"][1]["list_usd"], Value::Null, "unknown, never $0");
    assert_eq!(doc["total"]["list_usd"], Value::Null);
    assert_eq!(doc["total"]["unknown_workers"][0], "w2");
    let csv = env
        .cwo(&["cost", "--ledger", f, "--format", "csv"])
        .ok()
        .stdout;
    assert!(
        csv.lines().next().unwrap().contains("expected_usd"),
        "{csv}"
    );
    assert!(csv.contains(",unknown,"), "{csv}");
    let table = env.cwo(&["cost", "--ledger", f]).ok();
    assert!(table.stdout.contains("+ unknown"), "{}", table.stdout);
    assert!(
        table
            .stderr
            .contains("europe-west1 is not a free-tier region"),
        "{}",
        table.stderr
    );
    let by_day = env
        .cwo(&["cost", "--ledger", f, "--by", "day", "--format", "json"])
        .ok()
        .json();
    assert!(!by_day["rows"].as_array().unwrap().is_empty());
}

#[test]
fn the_local_provider_shows_what_the_work_would_have_cost_and_export_round_trips() {
    let env = TestEnv::new();
    env.agent("git commit -q --allow-empty -m x", "");
    env.add(&["priced"]);
    env.cwo(&["run", "--once"]).ok();
    let doc = env.cwo(&["cost", "--format", "json"]).ok().json();
    let row = &doc["rows"][0];
    assert_eq!(row["machine_type"], "e2-micro");
    assert_eq!(row["zone"], "us-central1-a");
    assert_eq!(
        row["billed_seconds"], 60.0,
        "a short life is billed one minute"
    );
    assert!(
        (row["list_usd"].as_f64().unwrap() - (0.00838 + 0.4 / 730.0 + 0.005) / 60.0).abs() < 1e-12
    );
    let by_task = env
        .cwo(&["cost", "--by", "task", "--format", "json"])
        .ok()
        .json();
    assert!(
        by_task["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["task"].as_str().unwrap().starts_with("proj-"))
    );
    let out = env.tmp.path().join("export.json");
    env.cwo(&["cost", "export", out.to_str().unwrap()]).ok();
    let again = env
        .cwo(&[
            "cost",
            "--ledger",
            out.to_str().unwrap(),
            "--format",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(again["rows"][0]["list_usd"], row["list_usd"]);
}

#[test]
fn budget_check_json_golden_within_warn_deny() {
    let env = TestEnv::new();
    let file = ledger(
        &env,
        &[
            ("w1", "e2-small", "us-central1-a", 3600),
            ("w2", "e2-micro", "us-east1-b", 7200),
        ],
    );
    let f = file.to_str().unwrap();
    for (limit, name, code) in [
        ("1", "within", 0),
        ("0.035", "warn", 0),
        ("0.03", "deny", 1),
    ] {
        let run = env.cwo(&[
            "budget",
            "check",
            "--ledger",
            f,
            "--period",
            "all",
            "--limit-usd",
            limit,
        ]);
        assert_eq!(run.code, code, "{name}: {run:?}");
        insta::assert_json_snapshot!(format!("budget_{name}"), run.json(), {
            ".workers[].started_at" => "[time]",
            ".workers[].ended_at" => "[time]",
            ".expected_usd" => insta::rounded_redaction(6),
            ".list_usd" => insta::rounded_redaction(6),
            ".percent" => insta::rounded_redaction(3),
            ".workers[].list_usd" => insta::rounded_redaction(6),
            ".workers[].expected_usd" => insta::rounded_redaction(6),
        });
    }
}

/// Money is never negative zero: with nothing priced (no lives at all, or only unknown prices)
/// the sums are $0, not the -0.0 an empty f64 sum gives.
#[test]
fn budget_and_cost_with_nothing_priced_say_zero_never_negative_zero() {
    let env = TestEnv::new();
    let unknown_price = [("odd", "m9-mega", "us-central1-a", 60)];
    for (name, rows) in [("no_lives", &[][..]), ("unknown_price", &unknown_price[..])] {
        let file = ledger(&env, rows);
        let f = file.to_str().unwrap();
        let run = env.cwo(&[
            "budget",
            "check",
            "--ledger",
            f,
            "--period",
            "all",
            "--limit-usd",
            "1",
            "--on-unknown",
            "warn",
        ]);
        assert_eq!(run.code, 0, "{name}: {run:?}");
        let doc = run.json();
        for key in ["expected_usd", "list_usd", "percent"] {
            let v = doc[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}: {key} in {doc}"));
            assert!(v == 0.0 && v.is_sign_positive(), "{name}: {key} = {v:?}");
        }
        assert!(!run.stdout.contains("-0.0"), "{name}: {}", run.stdout);
        // The human summary (stderr).
        assert!(
            run.stderr.contains(
                "budget ok: $0.0000 expected bill (list $0.0000) of $1.00 for all (0.0%)"
            ),
            "{name}: {}",
            run.stderr
        );
        insta::assert_json_snapshot!(format!("budget_nothing_priced_{name}"), doc, {
            ".workers[].started_at" => "[time]",
            ".workers[].ended_at" => "[time]",
        });

        let cost = env.cwo(&["cost", "--ledger", f, "--format", "json"]).ok();
        assert!(!cost.stdout.contains("-0.0"), "{name}: {}", cost.stdout);
        let table = env.cwo(&["cost", "--ledger", f]).ok();
        assert!(
            table.stdout.contains("total: list $0.0000") && !table.stdout.contains("$-"),
            "{name}: {}",
            table.stdout
        );
    }
}
