//! `cwo budget alert set|show|remove` and doctor's budget check, against the fake's Cloud Billing
//! Budget API (and Resource Manager for the project number).

use serde_json::{Value, json};

use crate::common::TestEnv;
use crate::common::fake_gce::{FakeGce, PROJECT_NUMBER};

pub(crate) const ACCOUNT: &str = "012345-6789AB-CDEF01";

pub(crate) struct Billing {
    pub(crate) env: TestEnv,
    pub(crate) fake: FakeGce,
}

/// A gcp project on the fake (as `test_gcp::gcp` makes one, without the sshd: no VM is reached
/// here) whose billing account pays in USD; `gcp_extra` goes into `[gcp]`.
pub(crate) fn billing(gcp_extra: &str) -> Billing {
    let env = TestEnv::new();
    let fake = FakeGce::start("proj-test", "127.0.0.1", None);
    fake.add_billing_account(ACCOUNT, "USD");
    env.settings(&format!(
        "provider = \"gcp\"\n[gcp]\nproject = \"proj-test\"\nendpoint = {u:?}\nbilling_endpoint = {u:?}\nresourcemanager_endpoint = {u:?}\ncredentials = \"anonymous\"\nssh_source = \"127.0.0.1/32\"\n{gcp_extra}\n",
        u = fake.url
    ));
    Billing { env, fake }
}

/// Bodies of the requests `method` sent to the budgets collection or a budget.
fn sent(fake: &FakeGce, method: &str) -> Vec<(String, Value)> {
    fake.log()
        .into_iter()
        .filter(|r| r.method == method && r.path.starts_with("/v1/billingAccounts/"))
        .map(|r| (r.path, serde_json::from_str(&r.body).unwrap_or(Value::Null)))
        .collect()
}

fn percents(rules: &Value) -> Vec<(f64, String)> {
    rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["thresholdPercent"].as_f64().unwrap(),
                r["spendBasis"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn set_creates_a_budget_on_the_project_and_label_that_emails_the_billing_admins() {
    let b = billing("");
    let run = b
        .env
        .cwo(&[
            "budget",
            "alert",
            "set",
            "--amount",
            "5",
            "--billing-account",
            ACCOUNT,
            "--format",
            "json",
        ])
        .ok();
    let posts = sent(&b.fake, "POST");
    assert_eq!(posts.len(), 1, "{posts:?}");
    let (path, body) = &posts[0];
    assert_eq!(path, &format!("/v1/billingAccounts/{ACCOUNT}/budgets"));
    assert_eq!(body["displayName"], "cwo: proj-test");
    // Money: units as an int64 string; no currency, so the billing account's is used.
    assert_eq!(body["amount"], json!({"specifiedAmount": {"units": "5"}}));
    let cs = "CURRENT_SPEND".to_string();
    assert_eq!(
        percents(&body["thresholdRules"]),
        vec![(0.5, cs.clone()), (0.9, cs.clone()), (1.0, cs.clone())]
    );
    assert_eq!(
        body["budgetFilter"]["projects"],
        json!([format!("projects/{PROJECT_NUMBER}")])
    );
    assert_eq!(
        body["budgetFilter"]["labels"],
        json!({"cwo-managed": ["true"]})
    );
    assert_eq!(body["budgetFilter"]["calendarPeriod"], "MONTH");
    assert_eq!(
        body["notificationsRule"],
        json!({"disableDefaultIamRecipients": false})
    );

    let stored = b.fake.budgets(ACCOUNT);
    assert_eq!(stored.len(), 1);
    let out = run.json();
    assert_eq!(out["schema_version"], 1);
    assert_eq!(out["action"], "created");
    assert_eq!(out["billing_account"], ACCOUNT);
    assert_eq!(out["budget"]["name"], stored[0]["name"]);
    assert_eq!(out["budget"]["amount"]["value"], "5");
    assert_eq!(out["budget"]["amount"]["currency_code"], "USD");
    let pcts: Vec<f64> = out["budget"]["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["percent"].as_f64().unwrap())
        .collect();
    assert_eq!(pcts, vec![50.0, 90.0, 100.0]);
    assert_eq!(out["budget"]["emails_billing_admins"], true);
    assert!(
        run.stderr.contains("created budget billingAccounts/"),
        "{}",
        run.stderr
    );
}

#[test]
fn set_again_updates_the_one_budget_found_on_a_later_page() {
    let b = billing(&format!("billing_account = \"billingAccounts/{ACCOUNT}\""));
    // Other people's budgets come first, and the API hands out two per page.
    for i in 0..3 {
        b.fake.add_budget(
            ACCOUNT,
            json!({"displayName": format!("team {i}"), "amount": {"specifiedAmount": {"units": "100"}},
                   "thresholdRules": [{"thresholdPercent": 1.0}]}),
        );
    }
    b.fake.faults().budget_page_size = Some(2);
    b.env.cwo(&["budget", "alert", "set", "--amount", "5"]).ok();
    let before = b.fake.budgets(ACCOUNT);
    assert_eq!(before.len(), 4);

    // A change: new amount and thresholds; one concurrent change on the way (etag conflict),
    // after which cwo reads the budget again and updates it.
    b.fake
        .faults()
        .http
        .push_back(("PATCH /v1/billingAccounts".into(), 409));
    let run = b
        .env
        .cwo(&[
            "budget",
            "alert",
            "set",
            "--amount",
            "12.5",
            "--thresholds",
            "100,80",
        ])
        .ok();
    assert!(run.stderr.contains("looking again"), "{}", run.stderr);
    assert_eq!(sent(&b.fake, "POST").len(), 1, "no second budget");
    let after = b.fake.budgets(ACCOUNT);
    assert_eq!(after.len(), 4, "{after:#?}");
    let ours: Vec<&Value> = after
        .iter()
        .filter(|x| x["displayName"] == "cwo: proj-test")
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0]["name"], before[3]["name"], "the same budget");
    assert_eq!(
        ours[0]["amount"]["specifiedAmount"],
        json!({"currencyCode": "USD", "units": "12", "nanos": 500_000_000})
    );
    let cs = "CURRENT_SPEND".to_string();
    assert_eq!(
        percents(&ours[0]["thresholdRules"]),
        vec![(0.8, cs.clone()), (1.0, cs)]
    );
    assert_eq!(after[..3], before[..3], "other budgets untouched");
    let patches = sent(&b.fake, "PATCH");
    assert_eq!(patches.len(), 2, "the refused one and the retry");
    assert!(
        patches[1].0.contains("updateMask=") && patches[1].0.contains("thresholdRules"),
        "{}",
        patches[1].0
    );
    assert_eq!(patches[1].1["etag"], before[3]["etag"]);
    assert!(run.stdout.contains("12.5 USD per month"), "{}", run.stdout);

    // The same again: nothing to change, nothing sent.
    let run = b
        .env
        .cwo(&[
            "budget",
            "alert",
            "set",
            "--amount",
            "12.50",
            "--thresholds",
            "80,100",
            "--format",
            "json",
        ])
        .ok();
    assert_eq!(run.json()["action"], "unchanged");
    assert_eq!(sent(&b.fake, "PATCH").len(), 2);
}

#[test]
fn show_and_remove() {
    let b = billing(&format!("billing_account = \"{ACCOUNT}\""));
    let run = b
        .env
        .cwo(&["budget", "alert", "show", "--format", "json"])
        .ok();
    assert_eq!(run.json()["budget"], Value::Null);
    assert!(
        run.stderr.contains("no budget alert for proj-test"),
        "{}",
        run.stderr
    );

    b.env.cwo(&["budget", "alert", "set", "--amount", "5"]).ok();
    let show = b.env.cwo(&["budget", "alert", "show"]).ok();
    assert!(
        show.stdout.contains("name    cwo: proj-test")
            && show
                .stdout
                .contains("5 USD per month; alerts at 50%, 90%, 100%")
            && show.stdout.contains(&format!(
                "scope: projects/{PROJECT_NUMBER}, label cwo-managed=true"
            )),
        "{}",
        show.stdout
    );
    let json = b
        .env
        .cwo(&["budget", "alert", "show", "--format", "json"])
        .ok()
        .json();
    let name = b.fake.budgets(ACCOUNT)[0]["name"].clone();
    assert_eq!(json["budget"]["name"], name);

    let run = b
        .env
        .cwo(&["budget", "alert", "remove", "--format", "json"])
        .ok();
    assert_eq!(run.json()["removed"], json!([name]));
    assert!(b.fake.budgets(ACCOUNT).is_empty());
    let again = b.env.cwo(&["budget", "alert", "remove"]).ok();
    assert!(
        again.stderr.contains("nothing to remove"),
        "{}",
        again.stderr
    );
}

#[test]
fn a_denied_call_names_the_role_an_unknown_account_says_so_and_5xx_are_retried() {
    let b = billing("");
    b.fake
        .faults()
        .http
        .push_back(("POST /v1/billingAccounts".into(), 403));
    let run = b.env.cwo(&[
        "budget",
        "alert",
        "set",
        "--amount",
        "5",
        "--billing-account",
        ACCOUNT,
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("permission denied"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "gcloud billing accounts add-iam-policy-binding {ACCOUNT} --member=user:YOU@EXAMPLE.COM --role=roles/billing.costsManager"
        )) && run.stderr.contains("Billing > Account management"),
        "{}",
        run.stderr
    );
    assert!(b.fake.budgets(ACCOUNT).is_empty());

    let run = b.env.cwo(&[
        "budget",
        "alert",
        "show",
        "--billing-account",
        "000000-000000-000000",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("billing account 000000-000000-000000 does not exist or is not visible")
            && run.stderr.contains("gcloud billing accounts list"),
        "{}",
        run.stderr
    );

    // Transient failures of reads are retried with a status line.
    for _ in 0..2 {
        b.fake
            .faults()
            .http
            .push_back(("GET /v1/billingAccounts".into(), 503));
    }
    let run = b
        .env
        .cwo(&[
            "budget",
            "alert",
            "set",
            "--amount",
            "5",
            "--billing-account",
            ACCOUNT,
        ])
        .ok();
    assert!(
        run.stderr.contains("retry 1 in 500ms") && run.stderr.contains("retry 2 in 1s"),
        "{}",
        run.stderr
    );
    assert_eq!(b.fake.budgets(ACCOUNT).len(), 1);
}

#[test]
fn set_without_a_billing_account_is_a_usage_error_that_says_where_to_find_it() {
    let b = billing("");
    let run = b.env.cwo(&["budget", "alert", "set", "--amount", "5"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("--billing-account")
            && run.stderr.contains("gcp.billing_account")
            && run
                .stderr
                .contains("gcloud billing projects describe proj-test"),
        "{}",
        run.stderr
    );
    let run = b.env.cwo(&["budget", "alert", "set", "--amount", "0"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(b.fake.log().is_empty(), "nothing was asked of the API");
}

#[test]
fn doctor_says_whether_a_budget_alert_covers_the_project() {
    let check = |b: &Billing| -> (i32, Value) {
        let run = b.env.cwo(&["doctor", "--format", "json"]);
        let doc = run.json();
        let c = doc["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "budget")
            .cloned()
            .unwrap_or_else(|| panic!("no budget alert check: {doc:#}"));
        (run.code, c)
    };
    // No billing account configured: a warning with how to set one; the doctor still passes.
    let b = billing("");
    let (code, c) = check(&b);
    assert_eq!(code, 0, "{c}");
    assert_eq!(c["status"], "warn");
    assert!(
        c["fix"]
            .as_str()
            .unwrap()
            .contains("set gcp.billing_account"),
        "{c}"
    );

    let b = billing(&format!("billing_account = \"{ACCOUNT}\""));
    let (code, c) = check(&b);
    assert_eq!(code, 0, "{c}");
    assert_eq!(c["status"], "warn");
    assert_eq!(
        c["fix"],
        format!("run `cwo budget alert set --amount 5 --billing-account {ACCOUNT}`")
    );
    // Someone else's budget for another project does not cover this one.
    b.fake.add_project("other-project", "999");
    b.fake.add_budget(
        ACCOUNT,
        json!({"displayName": "other", "budgetFilter": {"projects": ["projects/999"]},
               "amount": {"specifiedAmount": {"units": "10"}}, "thresholdRules": [{"thresholdPercent": 0.5}]}),
    );
    assert_eq!(check(&b).1["status"], "warn");

    b.env.cwo(&["budget", "alert", "set", "--amount", "5"]).ok();
    let (code, c) = check(&b);
    assert_eq!(code, 0);
    assert_eq!(c["status"], "ok", "{c}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("\"cwo: proj-test\" covers proj-test: 5 USD per month"),
        "{c}"
    );
}
