//! `cwo budget check`: a CI gate. The exit status says within (also past --warn-at), over,
//! usage error, or cannot determine; see `ExitStatus::budget_check_help`.

use crate::cli::{BudgetCheckArgs, Format, OnUnknown, Period, Spend};
use crate::cost::budget::{self, Policy};
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;
use crate::report::{self, budget::BudgetCheck, budget::BudgetQuery};

pub(crate) async fn check(
    project: &Project,
    printer: Printer,
    args: &BudgetCheckArgs,
) -> Result<ExitStatus, CommandError> {
    if !(0.0..=100.0).contains(&args.warn_at) {
        return Err(CommandError::usage(format!(
            "--warn-at {} must be between 0 and 100",
            args.warn_at
        )));
    }
    let query = BudgetQuery {
        policy: Policy {
            limit_usd: args.limit_usd,
            warn_at_pct: args.warn_at,
            fail_on_unknown: args.on_unknown == OnUnknown::Fail,
        },
        period: match args.period {
            Period::Day => budget::Period::Day,
            Period::Week => budget::Period::Week,
            Period::Month => budget::Period::Month,
            Period::All => budget::Period::All,
        },
        ledger: args.ledger.clone(),
        enforce: args.enforce,
        include_llm: args.include.contains(&Spend::Llm),
    };
    let check = report::budget::collect(project, printer, &query).await?;
    match &check {
        BudgetCheck::Undetermined(u) => {
            printer.warn(format!("cannot determine the spend: {}", u.reason));
        }
        BudgetCheck::Determined(r) => {
            for w in &r.warnings {
                printer.warn(w);
            }
            printer.status(r.summary());
        }
    }
    report::print(&printer, &check, args.format == Format::Json);
    Ok(check.exit_status())
}
