//! One file per subcommand. Each takes resolved values and returns an exit code or a `CommandError`.

mod bootstrap;
mod budget;
mod budget_alert;
mod completions;
mod config;
mod cost;
mod demo;
mod doctor;
mod down;
mod github;
mod image;
mod logs;
mod reap;
mod run;
mod schedule;
mod serve;
mod ssh;
mod status;
mod task;
mod up;

use crate::cli::{BootstrapCommand, Cli, Command, ConfigCommand, TaskCommand};
use crate::error::{CommandError, ExitStatus};
use crate::printer::Printer;
use crate::project::Project;

/// Says, once per command, which accepted settings deserve a warning and where they came from.
pub(crate) fn warn_about_settings(project: &Project, printer: &Printer) {
    for w in project.resolved.warnings() {
        printer.warn(w.to_string());
    }
}

pub(crate) async fn dispatch(cli: Cli) -> Result<ExitStatus, CommandError> {
    let g = &cli.global;
    let printer = Printer::new(g.quiet, g.verbose, g.no_progress);
    // `doctor` lists the settings warnings among its checks instead.
    let load_quiet = || Project::load(g.project.as_deref(), &g.config);
    let load = || {
        let project = load_quiet()?;
        warn_about_settings(&project, &printer);
        Ok::<_, CommandError>(project)
    };
    match cli.command {
        Command::Run(args) => run::run(&load()?, printer, &args).await,
        Command::Serve(args) => serve::serve(&load()?, printer, &args).await,
        Command::Up(args) => up::up(&load()?, printer, &args).await,
        Command::Down => down::down(&load()?, printer).await,
        Command::Status(args) => status::status(&load()?, printer, args.format).await,
        Command::Ssh(args) => ssh::ssh(&load()?, printer, &args).await,
        Command::Logs(args) => logs::logs(&load()?, printer, &args).await,
        Command::Task(TaskCommand::Add(args)) => task::add(&load()?, printer, &args),
        Command::Task(TaskCommand::List(args)) => task::list(&load()?, printer, args.format),
        Command::Config(ConfigCommand::Show(args)) => config::show(&load()?, printer, args.format),
        Command::Reap(args) => reap::reap(&load()?, printer, &args).await,
        Command::Bootstrap(BootstrapCommand::Script { login_user, gce }) => {
            bootstrap::script(&load()?, &printer, &login_user, gce)
        }
        Command::Image(cmd) => image::image(&load()?, printer, &cmd).await,
        Command::Schedule(cmd) => schedule::schedule(&load()?, printer, &cmd),
        Command::Cost(args) => cost::cost(&load()?, printer, &args).await,
        Command::Budget(crate::cli::BudgetCommand::Check(args)) => {
            budget::check(&load()?, printer, &args).await
        }
        Command::Budget(crate::cli::BudgetCommand::Alert(cmd)) => {
            budget_alert::alert(&load()?, printer, &cmd).await
        }
        Command::Github(cmd) => github::github(&load()?, printer, &cmd).await,
        Command::Doctor(args) => doctor::doctor(&load_quiet()?, printer, args.format).await,
        Command::Demo(args) => demo::demo(printer, &args, g).await,
        Command::Completions { shell } => completions::completions(shell),
    }
}
