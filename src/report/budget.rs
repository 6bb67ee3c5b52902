//! `cwo budget check`: the period's spend (the ledger plus the live labelled workers' accrued
//! cost, asked of the provider) against a limit, and the kill switch (`--enforce`).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Report, SCHEMA_VERSION, sources};
use crate::cost::budget::{self, Period, Policy, Verdict};
use crate::cost::{Catalog, compute};
use crate::error::{CommandError, ExitStatus};
use crate::model::ids::slug;
use crate::orchestrator::reaper::Reaper;
use crate::printer::Printer;
use crate::project::Project;

/// What to check.
#[derive(Debug, Clone)]
pub(crate) struct BudgetQuery {
    pub(crate) policy: Policy,
    pub(crate) period: Period,
    /// An exported ledger instead of this project's journal.
    pub(crate) ledger: Option<PathBuf>,
    /// Over budget: delete every managed worker of this project.
    pub(crate) enforce: bool,
    /// Count the LLM spend the agents reported too.
    pub(crate) include_llm: bool,
}

/// One worker life in the period.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct BudgetWorker {
    pub(crate) worker: String,
    pub(crate) running: bool,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    pub(crate) billed_seconds: f64,
    pub(crate) list_usd: Option<f64>,
    pub(crate) expected_usd: Option<f64>,
    pub(crate) termination_reason: Option<String>,
}

/// A worker `--enforce` deleted, or could not.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Enforced {
    pub(crate) worker: String,
    pub(crate) deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct BudgetReport {
    pub(crate) schema_version: u32,
    pub(crate) status: Verdict,
    pub(crate) exit_code: u8,
    pub(crate) period: &'static str,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) limit_usd: f64,
    pub(crate) warn_at_pct: f64,
    pub(crate) expected_usd: f64,
    pub(crate) list_usd: f64,
    /// Of the limit; `null` when the limit is 0 and something was spent.
    pub(crate) percent: Option<f64>,
    pub(crate) unknown_price_workers: Vec<String>,
    /// The LLM spend counted in expected_usd and list_usd (`--include llm`); null when not
    /// counted.
    pub(crate) llm_usd: Option<f64>,
    /// Tasks with an attempt whose LLM cost is unknown (`--include llm`).
    pub(crate) unknown_llm_tasks: Vec<String>,
    pub(crate) workers: Vec<BudgetWorker>,
    /// Why the free tier does not apply.
    pub(crate) warnings: Vec<String>,
    pub(crate) enforced: Vec<Enforced>,
    /// `percent`, infinite when the limit is 0 (for the summary line).
    #[serde(skip)]
    pub(crate) percent_of_limit: f64,
}

/// The spend could not be determined: the provider's list failed.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UnknownSpend {
    pub(crate) schema_version: u32,
    pub(crate) status: Verdict,
    pub(crate) exit_code: u8,
    pub(crate) limit_usd: f64,
    pub(crate) reason: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub(crate) enum BudgetCheck {
    Determined(BudgetReport),
    Undetermined(UnknownSpend),
}

/// The gate's verdict as the exit status: a warning still passes.
pub(crate) fn exit_status(verdict: Verdict) -> ExitStatus {
    match verdict {
        Verdict::Within | Verdict::Warn => ExitStatus::Success,
        Verdict::Deny => ExitStatus::Failure,
        Verdict::Unknown => ExitStatus::BudgetUnknown,
    }
}

pub(crate) async fn collect(
    project: &Project,
    printer: Printer,
    query: &BudgetQuery,
) -> Result<BudgetCheck, CommandError> {
    let now = Utc::now();
    let since = query.period.start(now);
    if query.include_llm && query.ledger.is_some() {
        return Err(CommandError::usage(
            "--include llm needs the journal's attempts; it cannot be used with --ledger",
        ));
    }
    let journal = project.journal()?;
    let catalog = Catalog::load()?;
    let file_ledger = match &query.ledger {
        Some(path) => Some(sources::read_ledger_file(path)?),
        None => None,
    };
    let provider = project.provider(&journal);
    let project_slug = slug(&project.name);
    let on_retry = |line: String| printer.status(line);
    let reaper = |controller_running: bool| {
        Reaper::new(
            provider.as_ref(),
            &journal,
            &project_slug,
            project.settings(),
            controller_running,
            &on_retry,
        )
    };
    let ledger = match file_ledger {
        Some(ledger) => ledger,
        None => {
            // Stopped workers first: deleted at once (their TTL no longer runs), their life then
            // in the ledger. A failed list here is reported below by the listing that counts
            // the spend.
            let controller = crate::journal::ControllerLock::holder(&project.state_dir).is_some();
            if let Ok((deleted, failed)) = reaper(controller).sweep_stopped().await {
                crate::orchestrator::report_stopped(printer, &deleted, &failed);
            }
            journal.ledger()?
        }
    };
    let mut lives = sources::ledger_lives(&ledger);
    let journaled = journal.live_workers()?;
    let live = match sources::provider_lives(provider.as_ref(), &project_slug, &journaled, &catalog)
        .await
    {
        Ok(l) => l,
        Err(e) => {
            return Ok(BudgetCheck::Undetermined(UnknownSpend {
                schema_version: SCHEMA_VERSION,
                status: Verdict::Unknown,
                exit_code: exit_status(Verdict::Unknown).code(),
                limit_usd: query.policy.limit_usd,
                reason: format!("listing the live workers failed: {}", e.one_line()),
            }));
        }
    };
    let ledger_names: Vec<String> = lives.iter().map(|l| l.worker.clone()).collect();
    lives.extend(
        live.into_iter()
            .filter(|l| !ledger_names.contains(&l.worker)),
    );
    lives.retain(|l| since.is_none_or(|s| l.ended_at.unwrap_or(now) >= s));
    let (costed, warnings) = compute::cost(&lives, now);
    let llm = match query.include_llm {
        true => Some(llm_spend(&journal, since)?),
        false => None,
    };
    let verdict = budget::evaluate(&costed, llm.as_ref(), &query.policy);
    let enforced = if verdict.status == Verdict::Deny && query.enforce {
        let selector = crate::model::project_selector(&project_slug);
        let targets = provider.list(&selector).await.map_err(|e| {
            CommandError::from(e).context("over budget, but listing the workers to delete failed")
        })?;
        enforce(&reaper(false), provider.as_ref(), targets, printer).await
    } else {
        Vec::new()
    };
    Ok(BudgetCheck::Determined(BudgetReport::new(
        query, since, verdict, &costed, warnings, enforced,
    )))
}

/// What the agents of attempts started since `since` reported spending on the LLM.
fn llm_spend(
    journal: &crate::journal::Journal,
    since: Option<DateTime<Utc>>,
) -> Result<budget::LlmSpend, CommandError> {
    let usages = journal.usages(None)?;
    let mut spend = budget::LlmSpend::default();
    for a in journal.attempts(None)? {
        if since.is_some_and(|s| a.started_at < s) {
            continue;
        }
        let usage = usages.get(&a.id).map(|(u, _)| u);
        match a.llm_cost(usage) {
            Some(usd) => spend.usd += usd,
            None => {
                spend.usd += usage.map_or(0.0, |u| u.cost_known_usd);
                if !spend.unknown_tasks.contains(&a.ball_id) {
                    spend.unknown_tasks.push(a.ball_id);
                }
            }
        }
    }
    Ok(spend)
}

/// The kill switch: deletes every one of `targets`, confirmed. Gone is done: a worker that
/// vanished meanwhile counts as deleted. One that is left says so, with the command that
/// deletes it by hand.
async fn enforce(
    reaper: &Reaper<'_>,
    provider: &dyn crate::provider::Provider,
    targets: Vec<crate::model::Instance>,
    printer: Printer,
) -> Vec<Enforced> {
    let mut enforced = Vec::new();
    for inst in targets {
        let error = match reaper.delete(&inst, "budget").await {
            Ok(_) => None,
            Err(e) => {
                let error = crate::util::error::one_line(&e);
                printer.warn(format!(
                    "over budget, but worker {} could not be deleted: {error}",
                    inst.name
                ));
                if let Some(cmd) = provider.manual_delete_hint(&inst.name) {
                    printer.warn(format!("delete it yourself: {cmd}"));
                }
                Some(error)
            }
        };
        enforced.push(Enforced {
            worker: inst.name,
            deleted: error.is_none(),
            error,
        });
    }
    enforced
}

impl BudgetReport {
    /// The report of a period whose spend could be determined.
    fn new(
        query: &BudgetQuery,
        since: Option<DateTime<Utc>>,
        verdict: budget::BudgetVerdict,
        costed: &[compute::Costed],
        warnings: Vec<String>,
        enforced: Vec<Enforced>,
    ) -> BudgetReport {
        BudgetReport {
            schema_version: SCHEMA_VERSION,
            status: verdict.status,
            exit_code: exit_status(verdict.status).code(),
            period: query.period.name(),
            since,
            limit_usd: query.policy.limit_usd,
            warn_at_pct: query.policy.warn_at_pct,
            expected_usd: verdict.expected_usd,
            list_usd: verdict.list_usd,
            percent: verdict.percent.is_finite().then_some(verdict.percent),
            unknown_price_workers: verdict.unknown_price_workers,
            llm_usd: verdict.llm_usd,
            unknown_llm_tasks: verdict.unknown_llm_tasks,
            workers: costed
                .iter()
                .map(|c| BudgetWorker {
                    worker: c.life.worker.clone(),
                    running: c.life.ended_at.is_none(),
                    started_at: c.life.started_at,
                    ended_at: c.life.ended_at,
                    billed_seconds: c.billed_seconds,
                    list_usd: c.list_usd,
                    expected_usd: c.expected_usd,
                    termination_reason: c.life.termination_reason.clone(),
                })
                .collect(),
            warnings,
            enforced,
            percent_of_limit: verdict.percent,
        }
    }
}

impl BudgetCheck {
    pub(crate) fn status(&self) -> Verdict {
        match self {
            BudgetCheck::Determined(r) => r.status,
            BudgetCheck::Undetermined(u) => u.status,
        }
    }

    pub(crate) fn exit_status(&self) -> ExitStatus {
        exit_status(self.status())
    }
}

impl BudgetReport {
    /// The one-line summary for stderr.
    pub(crate) fn summary(&self) -> String {
        format!(
            "budget {}: ${:.4} expected bill (list ${:.4}){} of ${:.2} for {} ({:.1}%){}{}{}",
            self.status.name(),
            self.expected_usd,
            self.list_usd,
            match self.llm_usd {
                Some(l) => format!(", of which ${l:.4} LLM"),
                None => String::new(),
            },
            self.limit_usd,
            self.period,
            self.percent_of_limit,
            if self.unknown_llm_tasks.is_empty() {
                String::new()
            } else {
                format!(
                    "; unknown LLM cost for {}",
                    self.unknown_llm_tasks.join(", ")
                )
            },
            if self.unknown_price_workers.is_empty() {
                String::new()
            } else {
                format!(
                    "; unknown price for {}",
                    self.unknown_price_workers.join(", ")
                )
            },
            if self.enforced.is_empty() {
                String::new()
            } else {
                let deleted = self.enforced.iter().filter(|e| e.deleted).count();
                let left = self.enforced.len() - deleted;
                let mut s = format!("; --enforce deleted {deleted} worker(s)");
                if left > 0 {
                    s.push_str(&format!(", {left} could not be deleted"));
                }
                s
            },
        )
    }
}

impl Report for BudgetCheck {
    /// The verdict alone (`ok`, `warn`, `deny` or `unknown`).
    fn text(&self) -> String {
        format!("{}\n", self.status().name())
    }
}
