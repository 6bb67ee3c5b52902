//! The command line. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// cwo — the Cloud Worker Orchestrator.
///
/// Runs an AI coding agent over a juggle backlog (.juggle/balls.jsonl) on ephemeral workers:
/// one branch per ball, pushed with your credentials; the worker is torn down when idle.
#[derive(Debug, Parser)]
#[command(
    name = "cwo",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_long_help = crate::error::ExitStatus::top_level_help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The project directory (default: the nearest parent of the current directory holding
    /// .juggle, cwo.toml or .git).
    #[arg(short = 'C', long = "project", global = true, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Override a setting for this invocation, e.g. --config agent.timeout=10m (repeatable;
    /// wins over files and CWO_* variables).
    #[arg(long = "config", global = true, value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// Only errors and warnings on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Debug logs on stderr (CWO_LOG=<filter> for finer control).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// No spinners (also CWO_NO_PROGRESS=1; automatic when stderr is not a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work through the backlog: bring up a worker when balls are ready, run the agent on each,
    /// push its branch, mark the ball, and tear the worker down when idle.
    ///
    /// SIGINT/SIGTERM: stop claiming, let running attempts finish (or abort them with --now, or
    /// by a second signal), tear the worker down, exit. Aborted balls go back to pending.
    Run(RunArgs),
    /// `cwo run`'s loop plus an HTTP server: GitHub webhooks that wake the loop at once, a
    /// health check, a JSON state API, live agent logs and a dashboard.
    ///
    /// Routes: GET / (dashboard), GET /healthz, GET /api/v1/state, /api/v1/workers,
    /// /api/v1/tasks/{id}, /api/v1/tasks/{id}/log?offset=N, /api/v1/tasks/{id}/log/stream (SSE),
    /// POST /webhooks/github. Loopback by default; any other address needs serve.token, then
    /// required as a bearer token on every route but /healthz and the webhook (HMAC-checked
    /// with github.webhook_secret). SIGINT/SIGTERM as for `cwo run`.
    Serve(ServeArgs),
    /// Bring up a worker now (the next `cwo run` adopts it); `--plan` shows what would be
    /// created, and its hourly cost, without creating anything.
    Up(UpArgs),
    /// Tear down every worker this project has, and confirm each is gone.
    Down,
    /// Workers (state, uptime, current task, idle countdown) and tasks by state.
    Status(FormatArgs),
    /// A shell on a worker, or one command there (`cwo ssh [WORKER] -- git status`).
    Ssh(SshArgs),
    /// Show an agent's log for a ball (the latest attempt by default).
    Logs(LogsArgs),
    /// Queue and list work (juggle-compatible balls, for people without juggle).
    #[command(subcommand)]
    Task(TaskCommand),
    /// Settings.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Delete workers that should not exist: past their cwo-expires-at, stopped, or unknown to
    /// the journal. Two phases: a worker is marked (label cwo-reap-marked) on one pass and
    /// deleted on a later pass once the mark is older than reap_grace. cwo-keep=true is never
    /// touched. Without --yes nothing is changed. Exit 1 when the list or a deletion failed.
    Reap(ReapArgs),
    /// Install, remove or show the cron entry that runs `cwo reap --yes` on a schedule (the
    /// auto-shutdown that works even when no cwo is running).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// What every worker cost: list price and expected bill (free tier applied), per worker,
    /// task or day, from the provider's creation time to the confirmed deletion.
    Cost(CostArgs),
    /// Budget gates for CI, and the cloud's own budget alert.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// GitHub: the labels the GitHub tracker uses (`cwo github init`), and the webhook for
    /// `cwo serve` (`cwo github webhook-url`).
    #[command(subcommand)]
    Github(GithubCommand),
    /// The worker bootstrap (swap, packages, opencode, work user, sshd hardening, watchdog).
    #[command(subcommand)]
    Bootstrap(BootstrapCommand),
    /// Worker images on Compute Engine: bake the bootstrap once, and workers boot ready.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Check what the configured provider and agent need, each with a fix.
    Doctor(FormatArgs),
    /// Run the whole loop on a throwaway repository with a scripted agent (no cloud, no LLM).
    Demo(DemoArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Drain the queue, tear the worker down and exit (for cron and CI).
    #[arg(long)]
    pub once: bool,
    /// On SIGINT/SIGTERM abort running attempts at once instead of letting them finish.
    #[arg(long)]
    pub now: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address and port to listen on (default: serve.listen, 127.0.0.1:8484; port 0 picks
    /// a free one, printed on stderr).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// On SIGINT/SIGTERM abort running attempts at once instead of letting them finish.
    #[arg(long)]
    pub now: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct FormatArgs {
    /// Output format; json carries a schema_version.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CostFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CostBy {
    Worker,
    Task,
    Day,
}

#[derive(Debug, Args)]
pub struct CostArgs {
    #[command(subcommand)]
    pub action: Option<CostAction>,
    /// Only workers started at or after this time (RFC 3339 or YYYY-MM-DD, UTC).
    #[arg(long)]
    pub since: Option<String>,
    /// Only workers started before this time.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long, value_enum, default_value = "worker")]
    pub by: CostBy,
    #[arg(long, value_enum, default_value = "table")]
    pub format: CostFormat,
    /// Read an exported ledger (`cwo cost export`) instead of this project's journal.
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CostAction {
    /// Write the ledger (every finished worker life with its launch price) as JSON, for CI.
    Export { file: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Period {
    Day,
    Week,
    Month,
    All,
}

/// A kind of spend `cwo budget check` adds up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Spend {
    /// The workers' lives (always counted).
    Workers,
    /// What the agents reported spending on the LLM, for attempts started in the period.
    Llm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnUnknown {
    Fail,
    Warn,
}

#[derive(Debug, Subcommand)]
pub enum GithubCommand {
    /// Create the labels cwo uses on the repository (github.repo, else the remote's): the
    /// queue label (github.label), cwo:in-progress, cwo:blocked, cwo:done and
    /// priority:urgent|high|medium|low. Labels that exist are left as they are.
    Init(GithubInitArgs),
    /// What to paste into the repository's webhook settings for `cwo serve`: the payload URL
    /// (serve.public_url, else the listen address), the content type, the secret's reference
    /// (github.webhook_secret) and the events to send.
    WebhookUrl(FormatArgs),
}

#[derive(Debug, Args)]
pub struct GithubInitArgs {
    /// Say which labels would be created, and create none.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format; json carries a schema_version.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum BudgetCommand {
    /// Compare the period's spend (ledger + the live labelled VMs' accrued cost, asked of the
    /// provider) with a limit.
    ///
    /// A summary goes to stderr, JSON with schema_version to stdout.
    #[command(after_long_help = crate::error::ExitStatus::budget_check_help())]
    Check(BudgetCheckArgs),
    /// The cloud's own budget alert on gcp.project (set, show, remove).
    ///
    /// A Cloud Billing budget that emails the billing account's administrators when the month's
    /// spend crosses the thresholds, even when no cwo runs.
    #[command(subcommand)]
    Alert(BudgetAlertCommand),
}

#[derive(Debug, Subcommand)]
pub enum BudgetAlertCommand {
    /// Create or update cwo's budget for the project.
    ///
    /// The budget ("cwo: <gcp project>") is a monthly amount in the billing account's currency,
    /// scoped to gcp.project and to resources labelled cwo-managed=true, alerting at each
    /// threshold of the actual spend by email to the billing account's administrators and users.
    /// Needs roles/billing.costsManager on the billing account.
    Set(BudgetAlertSetArgs),
    /// Show cwo's budget for the project, if there is one.
    Show(BudgetAlertArgs),
    /// Delete cwo's budget for the project.
    Remove(BudgetAlertArgs),
}

#[derive(Debug, Args)]
pub struct BudgetAlertArgs {
    /// The Cloud Billing account (default: gcp.billing_account), e.g. 012345-6789AB-CDEF01.
    #[arg(long, value_name = "ID")]
    pub billing_account: Option<String>,
    /// Output format; json carries a schema_version.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct BudgetAlertSetArgs {
    /// The monthly budget, in the billing account's currency (e.g. 5 or 12.50).
    #[arg(long, value_name = "AMOUNT", value_parser = crate::provider::gcp::Amount::parse)]
    pub amount: crate::provider::gcp::Amount,
    /// Alert at these percentages of the amount (actual spend), comma-separated.
    #[arg(long, value_name = "PCT,...", value_delimiter = ',', default_value = "50,90,100", value_parser = parse_pct)]
    pub thresholds: Vec<f64>,
    #[command(flatten)]
    pub common: BudgetAlertArgs,
}

/// Why a number on the command line was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NumberArgError {
    #[error("`{0}` is not a percentage")]
    NotAPercentage(String),
    #[error("`{0}`: a threshold is a percentage above 0 and at most 1000")]
    ThresholdOutOfRange(String),
    #[error("`{0}` is not a number of USD")]
    NotUsd(String),
    #[error("`{0}`: the limit must be 0 or more")]
    NegativeLimit(String),
}

fn parse_pct(s: &str) -> Result<f64, NumberArgError> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| NumberArgError::NotAPercentage(s.to_string()))?;
    if !v.is_finite() || v <= 0.0 || v > 1000.0 {
        return Err(NumberArgError::ThresholdOutOfRange(s.to_string()));
    }
    Ok(v)
}

#[derive(Debug, Args)]
pub struct BudgetCheckArgs {
    /// The budget in USD, for the period.
    #[arg(long, value_name = "USD", value_parser = parse_usd)]
    pub limit_usd: f64,
    /// Warn (exit 0) past this percentage of the limit.
    #[arg(long, value_name = "PCT", default_value_t = 80.0)]
    pub warn_at: f64,
    /// day (UTC today), week (the last 7 days), month (this UTC calendar month) or all.
    #[arg(long, value_enum, default_value = "month")]
    pub period: Period,
    /// What an unknown price means: fail (exit 3) or warn (counted as $0, said so).
    #[arg(long, value_enum, default_value = "fail")]
    pub on_unknown: OnUnknown,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Over budget: delete every managed worker of this project (the kill switch).
    #[arg(long)]
    pub enforce: bool,
    /// Read an exported ledger instead of this project's journal (the live VMs are still asked for).
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
    /// Spend to count besides the workers: `llm` adds what the agents reported for the LLM (an
    /// attempt that reported nothing is an unknown cost, as --on-unknown says). Repeatable.
    #[arg(long, value_enum, value_name = "SPEND")]
    pub include: Vec<Spend>,
}

fn parse_usd(s: &str) -> Result<f64, NumberArgError> {
    let v: f64 = s
        .parse()
        .map_err(|_| NumberArgError::NotUsd(s.to_string()))?;
    if !v.is_finite() || v < 0.0 {
        return Err(NumberArgError::NegativeLimit(s.to_string()));
    }
    Ok(v)
}

#[derive(Debug, Args)]
pub struct ReapArgs {
    /// Act: mark and delete. Without it, only report what would be done.
    #[arg(long)]
    pub yes: bool,
    /// Report only, even with --yes.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format; json carries a schema_version.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Bake an image of the native bootstrap into gcp.image_family.
    ///
    /// A builder VM boots gcp.image (journaled, labelled and TTL'd like any worker), runs the
    /// bootstrap without the per-worker parts, has its per-host state cleaned (host keys,
    /// machine-id, authorized_keys, logs, history), is stopped and imaged, and is deleted
    /// whatever happens. The image is labelled with the hash of what went into it; with
    /// gcp.use_image = "auto" new workers boot from the newest image with the current hash.
    Build(FormatArgs),
    /// The images of gcp.image_family: which matches the current settings, which VMs use each.
    List(FormatArgs),
    /// Delete cwo's older images of gcp.image_family, never one a live VM booted from.
    Prune(ImagePruneArgs),
    /// Import a distribution's published GCE image into gcp.project (Alpine).
    ///
    /// Takes Alpine's GCE disk (the tiny-cloud `.tar.gz` from https://alpinelinux.org/cloud/),
    /// uploads it to gcp.image_bucket (created when missing; a lifecycle rule deletes uploads
    /// after a day), creates the image (family alpine-<major>-<minor>) and deletes the upload.
    /// It prints the gcp.image and gcp.ssh_user lines to set; `cwo image build` then bakes the
    /// bootstrap on top of it.
    Import(ImageImportArgs),
}

/// A distribution `cwo image import` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportDistro {
    Alpine,
}

/// The firmware a disk boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirmwareArg {
    Uefi,
    Bios,
}

#[derive(Debug, Args)]
pub struct ImageImportArgs {
    /// The distribution whose image this is.
    #[arg(value_enum)]
    pub distro: ImportDistro,
    /// The `.tar.gz` (a gzip'd tar of `disk.raw`): a file, or an http(s) URL to download.
    #[arg(long, value_name = "FILE|URL")]
    pub from: String,
    /// The firmware the disk boots with, when its file name says neither `uefi` nor `bios`.
    #[arg(long, value_enum)]
    pub firmware: Option<FirmwareArg>,
    /// Output format; json carries a schema_version.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct ImagePruneArgs {
    /// How many of the newest images to keep.
    #[arg(long, default_value_t = 2)]
    pub keep: usize,
    /// Report what would be deleted, and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format; json carries a schema_version.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum BootstrapCommand {
    /// Print the native bootstrap script rendered from the settings: run it as root on a host of
    /// your own (`cwo bootstrap script | ssh admin@host sudo sh`), or give it to a VM as user-data.
    /// Every step prints `cwo-step <name> <changed|ok|skipped|failed> <ms> <detail>`.
    Script {
        /// The SSH login whose authorized keys the work user gets too ("" = none).
        #[arg(long, default_value = "")]
        login_user: String,
        /// Also publish the host key through GCE guest attributes.
        #[arg(long)]
        gce: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Add (or update) the crontab entry for this project.
    Install {
        /// How often, in minutes.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=59))]
        every: u32,
    },
    /// Remove this project's crontab entry.
    Remove,
    /// Print this project's crontab entry, if any.
    Show,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Print the exact worker spec (machine, image, zone, TTL, labels, firewall rule) and the
    /// expected hourly cost; create nothing.
    #[arg(long)]
    pub plan: bool,
    /// Output format of --plan; json carries a schema_version.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// The worker (default: the only live one).
    pub worker: Option<String>,
    /// A command to run instead of a shell; its exit code becomes cwo's.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The ball id (a unique prefix of its short id is enough). Without it, `-f` follows every
    /// running attempt at once, each line prefixed with its task, while a controller runs.
    #[arg(required_unless_present = "follow")]
    pub task: Option<String>,
    /// Keep following the log while the attempt runs.
    #[arg(short, long)]
    pub follow: bool,
    /// Which attempt (default: the latest).
    #[arg(long)]
    pub attempt: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Add a pending ball to .juggle/balls.jsonl.
    Add(TaskAddArgs),
    /// List the balls, with what each waits on.
    List(FormatArgs),
}

#[derive(Debug, Args)]
pub struct TaskAddArgs {
    /// The ball's title.
    pub title: String,
    /// An acceptance criterion (repeatable).
    #[arg(long = "ac", value_name = "CRITERION")]
    pub acceptance_criteria: Vec<String>,
    /// Longer description handed to the agent.
    #[arg(long, default_value = "")]
    pub context: String,
    #[arg(long, value_enum, default_value = "medium")]
    pub priority: PriorityArg,
    /// A ball this one waits for (repeatable; id or unique prefix).
    #[arg(long = "depends-on", value_name = "ID")]
    pub depends_on: Vec<String>,
    /// A tag, e.g. a juggle session name (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PriorityArg {
    Low,
    Medium,
    High,
    Urgent,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every resolved setting and where it came from.
    Show(FormatArgs),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to build the demo (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}
