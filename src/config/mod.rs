//! Layered settings with provenance (DESIGN §3).
//!
//! Layers, later wins: built-in defaults < `~/.config/cwo/config.toml` < `<project>/cwo.toml` <
//! `CWO_*` environment < `--config KEY=VALUE` flags. Every layer is validated on its own against the
//! full schema (unknown keys and bad values are errors naming the file and line, or the variable),
//! then the layers are merged key by key and resolved once.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod agent;
pub mod bootstrap;
mod gcp;
mod git;
mod github;
mod serve;
mod ssh;
mod terraform;
mod tracker;
mod usd;
mod workers;

pub use agent::AgentSettings;
pub use bootstrap::{BootstrapSettings, Method, WatchdogSettings};
pub use gcp::{GcpSettings, UseImage};
pub use git::GitSettings;
pub use github::GithubSettings;
pub use serve::ServeSettings;
pub use ssh::{HostAddr, SshSettings};
pub use terraform::TerraformSettings;
pub use tracker::{TrackerKind, TrackerSettings};
pub use usd::UsdLimit;
pub use workers::WorkersSettings;

/// Environment variables that start with `CWO_` but are not settings.
pub(crate) const NON_SETTING_ENV: &[&str] = &["CWO_LOG", "CWO_NO_PROGRESS", "CWO_CONFIG_HOME"];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where workers come from: `local` (the embedded default).
    pub provider: ProviderKind,
    /// How often `cwo run` looks at the tracker.
    #[serde(with = "nonzero_duration_str")]
    pub poll_interval: Duration,
    /// Tear the worker down after this long with nothing ready.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Deprecated alias of `workers.tasks_per_worker` (read, with a warning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<NonZeroUsize>,
    /// `cwo reap` deletes a worker it marked on an earlier pass once the mark is this old, and
    /// treats workers the journal does not know as orphans once they are this old.
    #[serde(with = "duration_str")]
    pub reap_grace: Duration,
    /// How long teardown keeps retrying a worker's deletion before it gives up and prints the
    /// manual delete command. More than 0.
    #[serde(with = "nonzero_duration_str")]
    pub teardown_timeout: Duration,
    /// Where the journal, logs and workers live (default: per project under the XDG state dir).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    pub workers: WorkersSettings,
    pub tracker: TrackerSettings,
    pub agent: AgentSettings,
    pub git: GitSettings,
    pub github: GithubSettings,
    pub ssh: SshSettings,
    pub gcp: GcpSettings,
    pub bootstrap: BootstrapSettings,
    pub watchdog: WatchdogSettings,
    pub terraform: TerraformSettings,
    pub serve: ServeSettings,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Local,
    Ssh,
    Gcp,
    Terraform,
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderKind::Local => f.write_str("local"),
            ProviderKind::Ssh => f.write_str("ssh"),
            ProviderKind::Gcp => f.write_str("gcp"),
            ProviderKind::Terraform => f.write_str("terraform"),
        }
    }
}

impl Settings {
    /// The bootstrap method that applies: `bootstrap.method`, with `auto` resolved for the
    /// provider (native on cloud VMs, none on this machine and on hosts you already have).
    /// Never [`Method::Auto`].
    pub(crate) fn bootstrap_method(&self) -> Method {
        match self.bootstrap.method {
            Method::Auto => match self.provider {
                ProviderKind::Gcp | ProviderKind::Terraform => Method::Native,
                ProviderKind::Local | ProviderKind::Ssh => Method::None,
            },
            m => m,
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            provider: ProviderKind::Local,
            poll_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            concurrency: None,
            reap_grace: Duration::from_secs(15 * 60),
            teardown_timeout: Duration::from_secs(5 * 60),
            state_dir: None,
            workers: WorkersSettings::default(),
            tracker: TrackerSettings::default(),
            agent: AgentSettings::default(),
            git: GitSettings::default(),
            github: GithubSettings::default(),
            ssh: SshSettings::default(),
            gcp: GcpSettings::default(),
            bootstrap: BootstrapSettings::default(),
            watchdog: WatchdogSettings::default(),
            terraform: TerraformSettings::default(),
            serve: ServeSettings::default(),
        }
    }
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Env { var: String },
    Flag { arg: String },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env { var } => write!(f, "env {var}"),
            Source::Flag { arg } => write!(f, "flag --config {arg}"),
        }
    }
}

/// A settings error the user can act on: where, what, and a hint.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    pub location: String,
    pub message: String,
    pub hint: String,
}

/// The resolved settings plus the origin of every leaf key.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub settings: Settings,
    pub origins: BTreeMap<String, Source>,
}

/// Inputs to resolution; tests and commands build this explicitly so nothing global leaks in.
pub struct Inputs<'a> {
    pub user_file: Option<PathBuf>,
    pub project_file: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub flags: &'a [String],
}

impl Inputs<'_> {
    /// The standard places: `$CWO_CONFIG_HOME` or `$XDG_CONFIG_HOME/cwo` or `~/.config/cwo`.
    pub(crate) fn standard<'a>(project_root: &Path, flags: &'a [String]) -> Inputs<'a> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let user_dir = std::env::var_os("CWO_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|x| PathBuf::from(x).join("cwo")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/cwo")));
        Inputs {
            user_file: user_dir.map(|d| d.join("config.toml")),
            project_file: Some(project_root.join("cwo.toml")),
            env,
            flags,
        }
    }
}

pub(crate) fn resolve(inputs: &Inputs<'_>) -> Result<Resolved, ConfigError> {
    let mut layers = Layers::defaults();
    for path in [&inputs.user_file, &inputs.project_file]
        .into_iter()
        .flatten()
    {
        layers.add_file(path)?;
    }
    for (var, value) in &inputs.env {
        layers.add_env(var, value)?;
    }
    for arg in inputs.flags {
        layers.add_flag(arg)?;
    }
    let Layers {
        merged,
        mut origins,
    } = layers;
    let mut settings: Settings =
        Settings::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError {
            location: "merged settings".into(),
            message: e.message().to_string(),
            hint: "run `cwo config show` to see where each value comes from".into(),
        })?;
    check_ttl_leaves_room(&settings, &origins)?;
    apply_aliases(&mut settings, &mut origins)?;
    check_fresh_per_task(&settings, &origins)?;
    check_soft_timeout(&settings, &origins)?;
    check_serve_listen(&settings, &origins)?;
    Ok(Resolved { settings, origins })
}

/// Deprecated names still read: `concurrency` is `workers.tasks_per_worker` (both set to
/// different values is an error naming both places).
fn apply_aliases(
    settings: &mut Settings,
    origins: &mut BTreeMap<String, Source>,
) -> Result<(), ConfigError> {
    let Some(old) = settings.concurrency else {
        return Ok(());
    };
    let key = "workers.tasks_per_worker";
    let new_source = origins.get(key).cloned().unwrap_or(Source::Default);
    let old_source = origins
        .get("concurrency")
        .cloned()
        .unwrap_or(Source::Default);
    if new_source != Source::Default && settings.workers.tasks_per_worker != old {
        return Err(ConfigError {
            location: old_source.to_string(),
            message: format!(
                "concurrency = {old} (deprecated) disagrees with workers.tasks_per_worker = {} from {new_source}",
                settings.workers.tasks_per_worker
            ),
            hint: "remove `concurrency`; `[workers] tasks_per_worker` replaces it".into(),
        });
    }
    settings.workers.tasks_per_worker = old;
    origins.insert(key.to_string(), old_source);
    Ok(())
}

/// Where `key`'s value comes from, for an error that names it.
fn origin_of(origins: &BTreeMap<String, Source>, key: &str) -> String {
    origins
        .get(key)
        .map(ToString::to_string)
        .unwrap_or_else(|| "the defaults".into())
}

/// A worker deleted after its task takes one task at a time: `fresh_per_task` with
/// `tasks_per_worker` above 1 asks for two things at once.
fn check_fresh_per_task(
    settings: &Settings,
    origins: &BTreeMap<String, Source>,
) -> Result<(), ConfigError> {
    let w = &settings.workers;
    if !w.fresh_per_task || w.tasks_per_worker.get() == 1 {
        return Ok(());
    }
    let at = |key: &str| origin_of(origins, key);
    Err(ConfigError {
        location: at("workers.tasks_per_worker"),
        message: format!(
            "workers.tasks_per_worker = {} contradicts workers.fresh_per_task = true (from {}): a fresh worker takes exactly one task and is deleted after it",
            w.tasks_per_worker,
            at("workers.fresh_per_task"),
        ),
        hint: "set tasks_per_worker = 1, or fresh_per_task = false to share workers between tasks"
            .into(),
    })
}

/// A soft timeout extends the deadline to the hard one: it must come first.
fn check_soft_timeout(
    settings: &Settings,
    origins: &BTreeMap<String, Source>,
) -> Result<(), ConfigError> {
    let a = &settings.agent;
    match a.soft_timeout {
        Some(soft) if soft >= a.timeout => Err(ConfigError {
            location: origin_of(origins, "agent.soft_timeout"),
            message: format!(
                "agent.soft_timeout ({}) is not below agent.timeout ({}, from {}): the soft timeout warns and extends the deadline to the hard one",
                humantime::format_duration(soft),
                humantime::format_duration(a.timeout),
                origin_of(origins, "agent.timeout"),
            ),
            hint: "set agent.soft_timeout below agent.timeout, or to \"\" for none".into(),
        }),
        _ => Ok(()),
    }
}

/// `serve.listen` is an address and port to bind (`127.0.0.1:8484`, `[::1]:8484`).
fn check_serve_listen(
    settings: &Settings,
    origins: &BTreeMap<String, Source>,
) -> Result<(), ConfigError> {
    let listen = &settings.serve.listen;
    match listen.parse::<std::net::SocketAddr>() {
        Ok(_) => Ok(()),
        Err(e) => Err(ConfigError {
            location: origin_of(origins, "serve.listen"),
            message: format!("serve.listen = {listen:?} is not an address and port to bind ({e})"),
            hint:
                "write it like \"127.0.0.1:8484\" or \"[::1]:8484\" (a host name is not accepted)"
                    .into(),
        }),
    }
}

/// The settings merged so far, layer over layer, with the origin of every leaf key.
struct Layers {
    merged: toml::Table,
    origins: BTreeMap<String, Source>,
}

impl Layers {
    fn defaults() -> Layers {
        let defaults = toml::Table::try_from(Settings::default()).expect("defaults serialize");
        let origins = leaves(&defaults)
            .into_iter()
            .map(|(key, _)| (key, Source::Default))
            .collect();
        Layers {
            merged: defaults,
            origins,
        }
    }

    /// A settings file (the user's, the project's); one that does not exist adds nothing.
    fn add_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(ConfigError {
                    location: path.display().to_string(),
                    message: format!("cannot read: {e}"),
                    hint: "check the file's permissions".into(),
                });
            }
        };
        let table = parse_file(path, &text)?;
        for (key, _) in leaves(&table) {
            let line = line_of_key(&text, &key);
            let path = path.to_path_buf();
            self.origins.insert(key, Source::File { path, line });
        }
        merge(&mut self.merged, table);
        Ok(())
    }

    /// `CWO_SECTION__KEY=value`; other `CWO_*` variables that are not settings are skipped.
    fn add_env(&mut self, var: &str, value: &str) -> Result<(), ConfigError> {
        let Some(rest) = var.strip_prefix("CWO_") else {
            return Ok(());
        };
        if NON_SETTING_ENV.contains(&var) {
            return Ok(());
        }
        let key = rest.to_ascii_lowercase().replace("__", ".");
        let table = layer_from_pair(&key, value, || {
            (
                format!("environment variable {var}"),
                "settings in the environment are CWO_<KEY>, with __ between a section and its key (CWO_AGENT__TIMEOUT=10m); see config/cwo.example.toml",
            )
        })?;
        let var = var.to_string();
        self.origins.insert(key, Source::Env { var });
        merge(&mut self.merged, table);
        Ok(())
    }

    /// `--config KEY=VALUE`.
    fn add_flag(&mut self, arg: &str) -> Result<(), ConfigError> {
        let Some((key, value)) = arg.split_once('=') else {
            return Err(ConfigError {
                location: format!("--config {arg}"),
                message: "expected KEY=VALUE".into(),
                hint: "for example --config agent.timeout=10m".into(),
            });
        };
        let key = key.trim().to_string();
        let table = layer_from_pair(&key, value.trim(), || {
            (
                format!("--config {arg}"),
                "keys are dotted paths from config/cwo.example.toml",
            )
        })?;
        let arg = arg.to_string();
        self.origins.insert(key, Source::Flag { arg });
        merge(&mut self.merged, table);
        Ok(())
    }
}

/// A worker takes a task only while its TTL leaves room for the attempt (rotation): a TTL that
/// never does would bring up workers that can do nothing.
fn check_ttl_leaves_room(
    settings: &Settings,
    origins: &BTreeMap<String, Source>,
) -> Result<(), ConfigError> {
    let cloud = matches!(
        settings.provider,
        ProviderKind::Gcp | ProviderKind::Terraform
    );
    let Some(ttl) = settings.gcp.ttl.filter(|_| cloud) else {
        return Ok(());
    };
    if ttl >= settings.agent.timeout + 2 * TTL_MARGIN {
        return Ok(());
    }
    let at = |key: &str| origin_of(origins, key);
    Err(ConfigError {
        location: at("gcp.ttl"),
        message: format!(
            "gcp.ttl ({}) leaves a worker no time for a task: a worker takes a task only while it has agent.timeout ({}, from {}) + {} of life left",
            humantime::format_duration(ttl),
            humantime::format_duration(settings.agent.timeout),
            at("agent.timeout"),
            humantime::format_duration(TTL_MARGIN),
        ),
        hint: format!(
            "set gcp.ttl to at least \"{}\" (agent.timeout + {}), or lower agent.timeout",
            humantime::format_duration(settings.agent.timeout + 2 * TTL_MARGIN),
            humantime::format_duration(2 * TTL_MARGIN),
        ),
    })
}

/// What a worker keeps beyond `agent.timeout` before its TTL when it takes a task (the delivery
/// after the agent: bring-back, push): a worker with less life left takes no new task, and cwo
/// rotates to a fresh one.
pub(crate) const TTL_MARGIN: Duration = Duration::from_secs(5 * 60);

fn parse_file(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let located = |e: toml::de::Error| {
        let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        ConfigError {
            location: format!("{}:{line}:{col}", path.display()),
            message: e.message().trim().to_string(),
            hint: "every key is documented in config/cwo.example.toml; `cwo config show` prints the resolved values".into(),
        }
    };
    // Validate against the full schema first: this is what reports unknown keys and bad values
    // with their position in the file.
    toml::from_str::<Settings>(text).map_err(located)?;
    toml::from_str::<toml::Table>(text).map_err(located)
}

/// Builds a one-key layer from a dotted key and a textual value, and validates it; `origin`
/// names where the pair came from and what to do about a bad one.
fn layer_from_pair(
    key: &str,
    value: &str,
    origin: impl Fn() -> (String, &'static str),
) -> Result<toml::Table, ConfigError> {
    let error = |message: String| {
        let (location, hint) = origin();
        ConfigError {
            location,
            message,
            hint: hint.into(),
        }
    };
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut table = toml::Table::new();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(error(format!("`{key}` is not a settings key")));
    }
    let mut cursor = &mut table;
    for part in &parts[..parts.len() - 1] {
        cursor = cursor
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("just inserted a table");
    }
    cursor.insert(parts[parts.len() - 1].to_string(), parsed);
    Settings::deserialize(toml::Value::Table(table.clone()))
        .map_err(|e| error(format!("`{key}`: {}", e.message().trim())))?;
    Ok(table)
}

fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (k, v) in layer {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) if k != "env" => merge(b, l),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Dotted leaf keys of a table (arrays and maps like `agent.env` are leaves).
pub(crate) fn leaves(table: &toml::Table) -> Vec<(String, toml::Value)> {
    fn walk(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(inner) if key != "agent.env" => walk(&key, inner, out),
                other => out.push((key, other.clone())),
            }
        }
    }
    let mut out = Vec::new();
    walk("", table, &mut out);
    out
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

/// The line where a dotted key is set: the `[section]` header is found first, then the key.
fn line_of_key(text: &str, dotted: &str) -> usize {
    let (section, key) = match dotted.rsplit_once('.') {
        Some((s, k)) => (s, k),
        None => ("", dotted),
    };
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(h) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = h.trim().to_string();
            if dotted == "agent.env" && current == "agent.env" {
                return i + 1;
            }
            continue;
        }
        let Some((k, _)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim();
        if (current == section && k == key) || (current.is_empty() && k == dotted) {
            return i + 1;
        }
    }
    1
}

/// A setting that is accepted but is probably not what its author wants: said on stderr once per
/// command, and listed by `cwo doctor`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Warning {
    pub key: String,
    /// The value as TOML.
    pub value: String,
    /// Where it came from (file:line, variable or flag).
    pub source: Source,
    /// What the value does in practice.
    pub problem: String,
    /// What to set instead.
    pub fix: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} = {}: {}; {}",
            self.source, self.key, self.value, self.problem, self.fix
        )
    }
}

/// Whether a CIDR covers every address (a /0, IPv4 or IPv6).
fn whole_internet(cidr: &str) -> bool {
    cidr.trim().rsplit_once('/').is_some_and(|(addr, len)| {
        len.trim().parse::<u8>() == Ok(0) && addr.trim().parse::<std::net::IpAddr>().is_ok()
    })
}

impl Resolved {
    /// The accepted values that deserve a warning, each with where it came from.
    pub(crate) fn warnings(&self) -> Vec<Warning> {
        let s = &self.settings;
        let mut out = Vec::new();
        let mut warn = |key: &str, value: String, problem: &str, fix: &str| {
            out.push(Warning {
                key: key.to_string(),
                value,
                source: self.origins.get(key).cloned().unwrap_or(Source::Default),
                problem: problem.to_string(),
                fix: fix.to_string(),
            })
        };
        let duration = |d: Duration| format!("\"{}\"", humantime::format_duration(d));
        // Only the providers that make the firewall rule use it.
        if matches!(s.provider, ProviderKind::Gcp | ProviderKind::Terraform)
            && whole_internet(&s.gcp.ssh_source)
        {
            warn(
                "gcp.ssh_source",
                format!("{:?}", s.gcp.ssh_source),
                "SSH open to the world: the firewall rule lets any address on the internet reach the workers' SSH port",
                "set it to your address as a /32 (\"203.0.113.7/32\"), or to \"\" to detect this machine's public address",
            );
        }
        if s.reap_grace.is_zero() {
            warn(
                "reap_grace",
                duration(s.reap_grace),
                "`cwo reap` gives no grace: a worker a running `cwo run` is still creating counts as an unfinished create at once, a VM this project's journal does not know yet is an orphan at once, and a marked worker is deleted on the very next pass",
                "set it longer than a worker takes to create, a few minutes at least (default \"15m\")",
            );
        }
        if matches!(s.provider, ProviderKind::Gcp | ProviderKind::Terraform)
            && s.gcp.ttl.is_some()
            && s.watchdog.action.trim() == "poweroff"
        {
            warn(
                "watchdog.action",
                format!("{:?}", s.watchdog.action),
                "a powered-off VM loses its TTL: Compute Engine clears the termination timer of a stopped VM, so an idle worker whose controller died is never deleted by the cloud, and its disk stays billed until a `cwo reap`",
                "leave it at \"auto\" (stop orphaned agents, let the TTL delete the VM), or schedule the reaper (`cwo schedule install`)",
            );
        }
        if let Some(c) = s.concurrency {
            warn(
                "concurrency",
                c.to_string(),
                "deprecated: it is read as workers.tasks_per_worker",
                &format!("replace it with `[workers] tasks_per_worker = {c}`"),
            );
        }
        if s.idle_timeout.is_zero() {
            warn(
                "idle_timeout",
                duration(s.idle_timeout),
                "the worker is torn down the moment nothing is ready, so work queued a moment later waits for a new worker (its boot, and on GCE another one-minute billing minimum)",
                "set it to a few minutes (default \"5m\"), or run `cwo run --once` to stop when the queue is empty",
            );
        }
        out
    }

    /// `key = value` pairs for `cwo config show`, in schema order.
    pub(crate) fn entries(&self) -> Vec<(String, toml::Value, Source)> {
        let table = toml::Table::try_from(&self.settings).expect("settings serialize");
        leaves(&table)
            .into_iter()
            .map(|(k, v)| {
                let src = self.origins.get(&k).cloned().unwrap_or(Source::Default);
                (k, v, src)
            })
            .collect()
    }
}

mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write it like \"90s\", \"5m\" or \"1h 30m\""
            ))
        })
    }
}

/// An optional duration: `""` (or `"none"`) is none.
mod opt_duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_str::serialize(d, s),
            None => s.serialize_str(""),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if matches!(text.trim(), "" | "none") {
            return Ok(None);
        }
        let v = humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration ({e}); write it like \"20m\", or \"\" for none"
            ))
        })?;
        if v.is_zero() {
            return Err(serde::de::Error::custom(
                "must be more than 0, or \"\" for none",
            ));
        }
        Ok(Some(v))
    }
}

/// A duration that must be more than zero.
mod nonzero_duration_str {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        super::duration_str::serialize(d, s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let v = super::duration_str::deserialize(d)?;
        if v.is_zero() {
            return Err(serde::de::Error::custom(
                "must be more than 0 (a zero wait or time limit would spin or fail at once); write it like \"90s\" or \"5m\"",
            ));
        }
        Ok(v)
    }
}

fn non_empty_argv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() || v[0].trim().is_empty() {
        return Err(serde::de::Error::custom(
            "agent.command must name a program, e.g. [\"opencode\", \"run\", \"{prompt}\"]",
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs_for<'a>(
        project: Option<PathBuf>,
        env: &[(&str, &str)],
        flags: &'a [String],
    ) -> Inputs<'a> {
        Inputs {
            user_file: None,
            project_file: project,
            env: env
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            flags,
        }
    }

    #[test]
    fn layers_override_in_order_and_remember_origin() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cwo.toml");
        std::fs::write(
            &f,
            "idle_timeout = \"1m\"\n\n[agent]\nmax_attempts = 5\ntimeout = \"10m\"\n",
        )
        .unwrap();
        let flags = vec!["agent.timeout=20m".to_string()];
        let r = resolve(&inputs_for(
            Some(f.clone()),
            &[("CWO_AGENT__MAX_ATTEMPTS", "7")],
            &flags,
        ))
        .unwrap();
        assert_eq!(r.settings.idle_timeout, Duration::from_secs(60));
        assert_eq!(r.settings.agent.max_attempts.get(), 7);
        assert_eq!(r.settings.agent.timeout, Duration::from_secs(1200));
        assert_eq!(
            r.origins["idle_timeout"],
            Source::File {
                path: f.clone(),
                line: 1
            }
        );
        assert_eq!(
            r.origins["agent.max_attempts"],
            Source::Env {
                var: "CWO_AGENT__MAX_ATTEMPTS".into()
            }
        );
        assert_eq!(
            r.origins["agent.timeout"],
            Source::Flag {
                arg: "agent.timeout=20m".into()
            }
        );
        assert_eq!(r.origins["workers.tasks_per_worker"], Source::Default);
    }

    #[test]
    fn concurrency_is_a_deprecated_alias_of_tasks_per_worker() {
        let flags = vec!["concurrency=3".to_string()];
        let r = resolve(&inputs_for(None, &[], &flags)).unwrap();
        assert_eq!(r.settings.workers.tasks_per_worker.get(), 3);
        assert_eq!(
            r.origins["workers.tasks_per_worker"],
            Source::Flag {
                arg: "concurrency=3".into()
            }
        );
        let w = r.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "concurrency");
        assert!(w[0].fix.contains("tasks_per_worker = 3"), "{}", w[0].fix);
        // The same value twice is fine; two different ones name both places.
        let same = vec!["concurrency=2".into(), "workers.tasks_per_worker=2".into()];
        assert_eq!(
            resolve(&inputs_for(None, &[], &same))
                .unwrap()
                .settings
                .workers
                .tasks_per_worker
                .get(),
            2
        );
        let both = vec!["concurrency=2".into(), "workers.tasks_per_worker=4".into()];
        let e = resolve(&inputs_for(None, &[], &both)).unwrap_err();
        assert!(e.message.contains("workers.tasks_per_worker = 4"), "{e:?}");
        assert!(e.location.contains("concurrency=2"), "{e:?}");
    }

    #[test]
    fn a_fleet_is_set_in_workers_and_fresh_workers_take_one_task_each() {
        let r = resolve(&inputs_for(None, &[], &[])).unwrap();
        let w = &r.settings.workers;
        assert_eq!((w.max.get(), w.fresh_per_task), (1, false));
        assert_eq!(w.max_hourly_usd.0, None);
        let flags = vec![
            "workers.max=8".to_string(),
            "workers.max_hourly_usd=\"0.05\"".into(),
        ];
        let w = resolve(&inputs_for(None, &[], &flags))
            .unwrap()
            .settings
            .workers;
        assert_eq!((w.max.get(), w.max_hourly_usd.0), (8, Some(0.05)));
        let number = vec!["workers.max_hourly_usd=2".to_string()];
        let w = resolve(&inputs_for(None, &[], &number))
            .unwrap()
            .settings
            .workers;
        assert_eq!(w.max_hourly_usd.0, Some(2.0));
        let clash = vec![
            "workers.fresh_per_task=true".to_string(),
            "workers.tasks_per_worker=2".into(),
        ];
        let e = resolve(&inputs_for(None, &[], &clash)).unwrap_err();
        assert!(e.message.contains("fresh_per_task = true"), "{e:?}");
        assert!(e.location.contains("workers.tasks_per_worker=2"), "{e:?}");
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cwo.toml");
        std::fs::write(&f, "[agent]\ntimeout = \"1m\"\ntimout = \"2m\"\n").unwrap();
        let err = resolve(&inputs_for(Some(f.clone()), &[], &[])).unwrap_err();
        assert_eq!(err.location, format!("{}:3:1", f.display()));
        assert!(
            err.message.contains("unknown field `timout`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn bad_values_are_rejected_with_position() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cwo.toml");
        for (text, line, needle) in [
            ("concurrency = 0\n", 1, "nonzero"),
            ("\n[agent]\ntimeout = \"soon\"\n", 3, "not a duration"),
            ("[agent]\ncommand = []\n", 2, "must name a program"),
            ("provider = \"aws\"\n", 1, "unknown variant"),
            ("[ssh]\nhosts = [\"nouser:22\"]\n", 2, "needs a user"),
            ("[ssh]\nhosts = [\"u@h:99999\"]\n", 2, "is not a port"),
            (
                "[gcp]\nproject = \"p\"\nzones = []\n",
                3,
                "gcp.zones is empty",
            ),
            ("teardown_timeout = \"0s\"\n", 1, "more than 0"),
            (
                "[gcp]\nzones = [\"\", \"us-central1-a\"]\n",
                2,
                "entry 1 is \"\"",
            ),
            ("poll_interval = \"0s\"\n", 1, "more than 0"),
            ("[agent]\ntimeout = \"0s\"\n", 2, "more than 0"),
            ("[ssh]\nconnect_timeout = \"0ms\"\n", 2, "more than 0"),
            ("[workers]\nmax = 0\n", 2, "nonzero"),
            (
                "[workers]\nmax_hourly_usd = \"cheap\"\n",
                2,
                "\"cheap\" is not a number",
            ),
            (
                "[workers]\nmax_hourly_usd = -1\n",
                2,
                "not a positive amount",
            ),
            ("[agent]\nmax_cost_usd = 0\n", 2, "not a positive amount"),
            ("[agent]\nstall_timeout = \"0s\"\n", 2, "more than 0"),
            ("[agent]\nsoft_timeout = \"later\"\n", 2, "not a duration"),
        ] {
            std::fs::write(&f, text).unwrap();
            let err = resolve(&inputs_for(Some(f.clone()), &[], &[])).unwrap_err();
            assert!(
                err.location
                    .starts_with(&format!("{}:{line}:", f.display())),
                "{text}: {}",
                err.location
            );
            assert!(err.message.contains(needle), "{text}: {}", err.message);
        }
    }

    #[test]
    fn a_soft_timeout_comes_before_the_hard_one() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cwo.toml");
        std::fs::write(&f, "[agent]\ntimeout = \"20m\"\nsoft_timeout = \"20m\"\n").unwrap();
        let err = resolve(&inputs_for(Some(f.clone()), &[], &[])).unwrap_err();
        assert_eq!(err.location, format!("{}:3", f.display()));
        assert!(
            err.message.contains("not below agent.timeout (20m"),
            "{}",
            err.message
        );
        let flags = vec!["agent.soft_timeout=15m".to_string()];
        let r = resolve(&inputs_for(Some(f), &[], &flags)).unwrap();
        assert_eq!(
            r.settings.agent.soft_timeout,
            Some(Duration::from_secs(900))
        );
        assert_eq!(r.settings.agent.stall_timeout, Duration::from_secs(600));
    }

    #[test]
    fn teardown_timeout_defaults_to_5m_and_reads_like_a_duration() {
        let r = resolve(&inputs_for(None, &[], &[])).unwrap();
        assert_eq!(r.settings.teardown_timeout, Duration::from_secs(300));
        let flags = vec!["teardown_timeout=90s".to_string()];
        let r = resolve(&inputs_for(None, &[], &flags)).unwrap();
        assert_eq!(r.settings.teardown_timeout, Duration::from_secs(90));
        let err = resolve(&inputs_for(None, &[("CWO_TEARDOWN_TIMEOUT", "0s")], &[])).unwrap_err();
        assert_eq!(err.location, "environment variable CWO_TEARDOWN_TIMEOUT");
        assert!(err.message.contains("more than 0"), "{}", err.message);
    }

    #[test]
    fn empty_zones_from_the_environment_are_refused_naming_the_variable() {
        let err = resolve(&inputs_for(None, &[("CWO_GCP__ZONES", "[]")], &[])).unwrap_err();
        assert_eq!(err.location, "environment variable CWO_GCP__ZONES");
        assert!(
            err.message.contains("gcp.zones is empty"),
            "{}",
            err.message
        );
    }

    #[test]
    fn questionable_values_warn_with_their_origin() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cwo.toml");
        std::fs::write(
            &f,
            "provider = \"gcp\"\nreap_grace = \"0s\"\n\n[gcp]\nssh_source = \"0.0.0.0/0\"\n",
        )
        .unwrap();
        let r = resolve(&inputs_for(
            Some(f.clone()),
            &[("CWO_IDLE_TIMEOUT", "0s")],
            &[],
        ))
        .unwrap();
        let w = r.warnings();
        let by_key = |k: &str| {
            w.iter()
                .find(|w| w.key == k)
                .unwrap_or_else(|| panic!("{k}: {w:?}"))
        };
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(
            by_key("gcp.ssh_source").source,
            Source::File {
                path: f.clone(),
                line: 5
            }
        );
        assert!(
            by_key("gcp.ssh_source")
                .problem
                .contains("SSH open to the world")
        );
        assert_eq!(
            by_key("reap_grace").source,
            Source::File {
                path: f.clone(),
                line: 2
            }
        );
        assert_eq!(
            by_key("idle_timeout").source,
            Source::Env {
                var: "CWO_IDLE_TIMEOUT".into()
            }
        );
        assert!(
            by_key("idle_timeout")
                .to_string()
                .starts_with("env CWO_IDLE_TIMEOUT: idle_timeout = \"0s\": "),
            "{}",
            by_key("idle_timeout")
        );
        assert!(
            by_key("reap_grace")
                .to_string()
                .starts_with(&format!("{}:2: reap_grace = \"0s\": ", f.display())),
            "{}",
            by_key("reap_grace")
        );

        // IPv6 too; any /0 is the whole internet; a real range is not.
        for (source, warned) in [
            ("::/0", true),
            (" 10.0.0.0/0 ", true),
            ("203.0.113.7/32", false),
            ("", false),
        ] {
            let flags = vec![
                "provider=terraform".to_string(),
                format!("gcp.ssh_source={source}"),
            ];
            let r = resolve(&inputs_for(None, &[], &flags)).unwrap();
            assert_eq!(r.warnings().len(), usize::from(warned), "{source:?}");
        }
        // Providers that make no firewall rule do not use it.
        let flags = vec!["gcp.ssh_source=0.0.0.0/0".to_string()];
        assert!(
            resolve(&inputs_for(None, &[], &flags))
                .unwrap()
                .warnings()
                .is_empty()
        );
        // The defaults deserve no warning.
        assert!(
            resolve(&inputs_for(None, &[], &[]))
                .unwrap()
                .warnings()
                .is_empty()
        );
    }

    #[test]
    fn bad_env_and_flag_name_their_source() {
        let err =
            resolve(&inputs_for(None, &[("CWO_AGENT__TIMEOUT", "forever")], &[])).unwrap_err();
        assert_eq!(err.location, "environment variable CWO_AGENT__TIMEOUT");
        let err = resolve(&inputs_for(None, &[("CWO_NOPE", "1")], &[])).unwrap_err();
        assert!(
            err.message.contains("unknown field `nope`"),
            "{}",
            err.message
        );
        let flags = vec!["concurrency".to_string()];
        let err = resolve(&inputs_for(None, &[], &flags)).unwrap_err();
        assert!(err.message.contains("KEY=VALUE"));
    }

    #[test]
    fn example_file_documents_every_key_and_parses() {
        let text = include_str!("../../config/cwo.example.toml");
        let table: toml::Table = toml::from_str(text).unwrap();
        toml::from_str::<Settings>(text).unwrap();
        let documented: Vec<String> = leaves(&table).into_iter().map(|(k, _)| k).collect();
        let defaults = toml::Table::try_from(Settings::default()).unwrap();
        let mut all: Vec<String> = leaves(&defaults).into_iter().map(|(k, _)| k).collect();
        all.push("state_dir".into());
        for key in all {
            assert!(
                documented.contains(&key),
                "config/cwo.example.toml does not document `{key}`"
            );
        }
    }
}
