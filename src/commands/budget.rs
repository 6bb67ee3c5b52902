//! `cwo budget check`: a CI gate. Exit 0 within budget, 1 over (deny), 2 usage or
//! configuration error, 3 cannot determine (an unknown price, or the provider's list failed).

use chrono::{Datelike, Duration, TimeZone, Utc};
use serde_json::json;

use crate::cli::{BudgetCheckArgs, Format, OnUnknown, Period};
use crate::cost::compute;
use crate::cost::sources;
use crate::cost::{Catalog, money, money_sum};
use crate::error::CliError;
use crate::orchestrator::reaper::Reaper;
use crate::printer::Printer;
use crate::project::{Project, slug};

pub const EXIT_OK: u8 = 0;
pub const EXIT_DENY: u8 = 1;
pub const EXIT_UNKNOWN: u8 = 3;

pub async fn check(
    project: &Project,
    printer: Printer,
    args: &BudgetCheckArgs,
) -> Result<u8, CliError> {
    if !(0.0..=100.0).contains(&args.warn_at) {
        return Err(CliError::usage(format!(
            "--warn-at {} must be between 0 and 100",
            args.warn_at
        )));
    }
    let now = Utc::now();
    let since = match args.period {
        Period::Day => Some(
            now.date_naive()
                .and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc(),
        ),
        Period::Week => Some(now - Duration::days(7)),
        Period::Month => Some(
            Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
                .unwrap(),
        ),
        Period::All => None,
    };
    let journal = project.journal()?;
    let catalog =
        Catalog::load().map_err(|e| CliError::usage(format!("the price catalog: {e}")))?;
    let ledger = match &args.ledger {
        Some(path) => sources::read_ledger_file(path).map_err(CliError::usage)?,
        None => journal.ledger()?,
    };
    let provider = project.provider(&journal);
    let project_slug = slug(&project.name);
    // Stopped workers first: deleted at once (their TTL no longer runs), their life then in the
    // ledger. A failed list here is reported below by the listing that counts the spend.
    if args.ledger.is_none() {
        let on_retry = |line: String| printer.status(line);
        let reaper = Reaper::new(
            provider.as_ref(),
            &journal,
            &project_slug,
            project.settings(),
            crate::journal::ControllerLock::holder(&project.state_dir).is_some(),
            &on_retry,
        );
        if let Ok((deleted, failed)) = reaper.sweep_stopped().await {
            crate::orchestrator::report_stopped(printer, &deleted, &failed);
        }
    }
    let ledger = match &args.ledger {
        Some(_) => ledger,
        None => journal.ledger()?,
    };
    let mut lives = sources::ledger_lives(&ledger);
    let live =
        match sources::provider_lives(provider.as_ref(), &project_slug, &journal, &catalog).await {
            Ok(l) => l,
            Err(e) => {
                printer.warn(format!(
                    "cannot determine the spend: listing the live workers failed: {e}"
                ));
                printer.json(json!({
                    "status": "unknown", "exit_code": EXIT_UNKNOWN, "limit_usd": args.limit_usd,
                    "reason": format!("listing the live workers failed: {e}"),
                }));
                return Ok(EXIT_UNKNOWN);
            }
        };
    let ledger_names: Vec<String> = lives.iter().map(|l| l.worker.clone()).collect();
    lives.extend(
        live.into_iter()
            .filter(|l| !ledger_names.contains(&l.worker)),
    );
    lives.retain(|l| since.is_none_or(|s| l.ended_at.unwrap_or(now) >= s));
    let (costed, warnings) = compute::cost(&lives, now);
    let unknown: Vec<String> = costed
        .iter()
        .filter(|c| c.expected_usd.is_none())
        .map(|c| c.life.worker.clone())
        .collect();
    let spent = money_sum(costed.iter().filter_map(|c| c.expected_usd));
    let list = money_sum(costed.iter().filter_map(|c| c.list_usd));
    let pct = if args.limit_usd > 0.0 {
        money(spent / args.limit_usd * 100.0)
    } else if spent > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };
    let (status, code) = if !unknown.is_empty() && args.on_unknown == OnUnknown::Fail {
        ("unknown", EXIT_UNKNOWN)
    } else if spent > args.limit_usd {
        ("deny", EXIT_DENY)
    } else if pct >= args.warn_at {
        ("warn", EXIT_OK)
    } else {
        ("ok", EXIT_OK)
    };
    let mut enforced = Vec::new();
    if code == EXIT_DENY && args.enforce {
        let on_retry = |line: String| printer.status(line);
        let reaper = Reaper::new(
            provider.as_ref(),
            &journal,
            &project_slug,
            project.settings(),
            false,
            &on_retry,
        );
        let selector = std::collections::BTreeMap::from([
            ("cwo-managed".to_string(), "true".to_string()),
            ("cwo-project".to_string(), project_slug.clone()),
        ]);
        let targets = provider.list(&selector).await.map_err(|e| {
            CliError::from_error("over budget, but listing the workers to delete failed", &e)
        })?;
        for inst in targets {
            // Gone is done: a worker that vanished meanwhile counts as deleted.
            match reaper.delete(&inst, "budget").await {
                Ok(_) => enforced.push(json!({"worker": inst.name, "deleted": true})),
                Err(e) => enforced
                    .push(json!({"worker": inst.name, "deleted": false, "error": e.to_string()})),
            }
        }
    }
    for w in &warnings {
        printer.warn(w);
    }
    printer.status(format!(
        "budget {status}: ${spent:.4} expected bill (list ${list:.4}) of ${:.2} for {} ({pct:.1}%){}{}",
        args.limit_usd,
        format!("{:?}", args.period).to_lowercase(),
        if unknown.is_empty() { String::new() } else { format!("; unknown price for {}", unknown.join(", ")) },
        if enforced.is_empty() { String::new() } else { format!("; --enforce deleted {} worker(s)", enforced.len()) },
    ));
    let doc = json!({
        "status": status,
        "exit_code": code,
        "period": format!("{:?}", args.period).to_lowercase(),
        "since": since,
        "limit_usd": args.limit_usd,
        "warn_at_pct": args.warn_at,
        "expected_usd": spent,
        "list_usd": list,
        "percent": if pct.is_finite() { json!(pct) } else { json!(null) },
        "unknown_price_workers": unknown,
        "workers": costed.iter().map(|c| json!({
            "worker": c.life.worker, "running": c.life.ended_at.is_none(),
            "started_at": c.life.started_at, "ended_at": c.life.ended_at,
            "billed_seconds": c.billed_seconds, "list_usd": c.list_usd, "expected_usd": c.expected_usd,
            "termination_reason": c.life.termination_reason,
        })).collect::<Vec<_>>(),
        "warnings": warnings,
        "enforced": enforced,
    });
    if args.format == Format::Json {
        printer.json(doc);
    } else {
        printer.out(format!("{status}\n"));
    }
    Ok(code)
}
