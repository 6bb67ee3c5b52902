//! The project being worked on: its root, resolved settings and state dir, and the layers built
//! from them (tracker, provider, journal).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{self, ProviderKind, Resolved, TrackerKind};
use crate::connector::Connector;
use crate::error::CommandError;
use crate::forge::{Forge, github::GithubForge};
use crate::github::{Credentials, Github, GithubError, RepoRef};
use crate::journal::{Journal, JournalError};
use crate::model::ids::{fnv, slug};
use crate::orchestrator::image::BuildSpec;
use crate::orchestrator::{Orchestrator, Ports, RunContext, WorkerLifecycle};
use crate::printer::Printer;
use crate::provider::{
    PriceSpec, Provider, gcp::GcpProvider, local::LocalProvider, ssh_host::SshHostProvider,
    terraform::TerraformProvider,
};
use crate::tracker::Tracker;
use crate::tracker::github::GithubTracker;
use crate::tracker::juggle::Juggle;
use crate::transport::{KnownHosts, KnownHostsError};

/// The longest an image builder lives (its TTL): a bake takes minutes.
const BUILDER_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The journal's pinned host keys, the journal opened on first use.
struct JournalOnDemand {
    state_dir: PathBuf,
    journal: std::sync::OnceLock<Journal>,
}

impl JournalOnDemand {
    fn journal(&self) -> Result<&Journal, KnownHostsError> {
        if let Some(j) = self.journal.get() {
            return Ok(j);
        }
        let j = Journal::open(&self.state_dir).map_err(|e| KnownHostsError {
            what: "opening the journal",
            source: Box::new(e),
        })?;
        Ok(self.journal.get_or_init(|| j))
    }
}

impl KnownHosts for JournalOnDemand {
    fn pinned(&self, pin_as: &str) -> Result<Option<String>, KnownHostsError> {
        self.journal()?.pinned(pin_as)
    }

    fn pin(&self, pin_as: &str, address: &str, key: &str) -> Result<(), KnownHostsError> {
        self.journal()?.pin(pin_as, address, key)
    }
}

#[derive(Clone)]
pub(crate) struct Project {
    pub(crate) root: PathBuf,
    /// The project's name (the root directory's name), used in worker names and ball ids.
    pub(crate) name: String,
    pub(crate) resolved: Resolved,
    pub(crate) state_dir: PathBuf,
}

/// The nearest ancestor of `start` holding `.juggle`, `cwo.toml` or `.git`.
pub(crate) fn find_root(start: &Path) -> PathBuf {
    let start = start.canonicalize().unwrap_or_else(|_| start.to_path_buf());
    for dir in start.ancestors() {
        if [".juggle", "cwo.toml", ".git"]
            .iter()
            .any(|m| dir.join(m).exists())
        {
            return dir.to_path_buf();
        }
    }
    start
}

/// The one place a provider is chosen and built from the settings (`provider = …`).
pub(crate) fn build_provider(project: &Project, connector: Connector) -> Arc<dyn Provider> {
    let s = project.settings();
    let state = &project.state_dir;
    match s.provider {
        ProviderKind::Local => {
            Arc::new(LocalProvider::new(state.join("workers")).priced_as(PriceSpec::of_gcp(&s.gcp)))
        }
        ProviderKind::Ssh => {
            let mut ssh = s.ssh.clone();
            if let Some(rest) = ssh.key.strip_prefix("~/")
                && let Some(home) = std::env::var_os("HOME")
            {
                ssh.key = PathBuf::from(home).join(rest).display().to_string();
            } else if !ssh.key.is_empty() {
                ssh.key = project.root.join(&ssh.key).display().to_string();
            }
            let mut provider = SshHostProvider::new(ssh, state.join("ssh-workers"), connector)
                .priced_as(PriceSpec::of_gcp(&s.gcp));
            if s.bootstrap_method() != crate::bootstrap::Method::None {
                provider = provider
                    .with_work_user(s.bootstrap.user.clone(), s.bootstrap.workspace.clone());
            }
            Arc::new(provider)
        }
        ProviderKind::Gcp => {
            let mut gcp = GcpProvider::new(
                s.gcp.clone(),
                s.ssh.clone(),
                slug(&project.name),
                state.join("keys"),
            );
            if let Some(script) = project.bootstrap_script() {
                let hash = crate::bootstrap::image_hash(&s.gcp.image, &script);
                gcp = gcp.with_startup_script(script.text).with_image_hash(hash);
            }
            Arc::new(gcp)
        }
        ProviderKind::Terraform => {
            let script = project.bootstrap_script();
            let mut tf = TerraformProvider::new(
                &s.gcp,
                &s.ssh,
                &s.terraform,
                state.join("terraform"),
                state.join("keys"),
                script
                    .as_ref()
                    .map(|s| s.text.clone())
                    .unwrap_or_else(|| crate::provider::gcp::HOSTKEY_SCRIPT.to_string()),
            );
            if let Some(script) = &script
                && s.gcp.use_image != crate::config::UseImage::Never
            {
                tf = tf.with_boot_images(project.image_provider_for(script));
            }
            Arc::new(tf)
        }
    }
}

impl Project {
    pub(crate) fn load(dir: Option<&Path>, flags: &[String]) -> Result<Project, CommandError> {
        let cwd = std::env::current_dir()
            .map_err(|e| CommandError::user(format!("cannot read the current directory: {e}")))?;
        let start = dir.map(|d| cwd.join(d)).unwrap_or(cwd);
        if !start.is_dir() {
            return Err(CommandError::usage(format!(
                "project directory {} does not exist",
                start.display()
            )));
        }
        let root = find_root(&start);
        let resolved = config::resolve(&config::Inputs::standard(&root, flags))?;
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "project".into());
        let state_dir = match &resolved.settings.state_dir {
            Some(p) => root.join(p),
            None => {
                let base = std::env::var_os("XDG_STATE_HOME")
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state"))
                    })
                    .unwrap_or_else(|| PathBuf::from("/tmp"));
                base.join("cwo").join(format!(
                    "{}-{:08x}",
                    slug(&name),
                    fnv(&root.display().to_string()) as u32
                ))
            }
        };
        Ok(Project {
            root,
            name,
            resolved,
            state_dir,
        })
    }

    pub(crate) fn settings(&self) -> &config::Settings {
        &self.resolved.settings
    }

    /// The tracker; what it skips or cannot make ready is a warning on stderr, once per problem
    /// for the life of the returned value (the run loop keeps one for the whole run).
    pub(crate) fn tracker(&self) -> Juggle {
        // `warn` prints whatever the printer's settings, so a default one does.
        let printer = Printer::new(false, false, true);
        self.tracker_quiet()
            .on_problem(Arc::new(move |p| printer.warn(p.to_string())))
    }

    /// The tracker without those warnings, for a caller that shows `problems()` itself.
    pub(crate) fn tracker_quiet(&self) -> Juggle {
        Juggle::new(
            self.root.join(&self.settings().tracker.dir),
            self.settings().tracker.session.clone(),
        )
    }

    /// Reaches workers, pinning host keys in `journal`.
    pub(crate) fn connector(&self, journal: &Journal) -> Connector {
        Connector::new(&self.settings().ssh, Arc::new(journal.clone()))
    }

    /// The configured provider, reaching hosts (where it must) through `journal`'s connector.
    pub(crate) fn provider(&self, journal: &Journal) -> Arc<dyn Provider> {
        build_provider(self, self.connector(journal))
    }

    /// The configured provider for commands that only look (`up --plan`, `doctor`): the
    /// journal is opened only if a connection needs a host key, so looking creates no state.
    pub(crate) fn provider_to_inspect(&self) -> Arc<dyn Provider> {
        let known_hosts = Arc::new(JournalOnDemand {
            state_dir: self.state_dir.clone(),
            journal: std::sync::OnceLock::new(),
        });
        build_provider(self, Connector::new(&self.settings().ssh, known_hosts))
    }

    /// The native bootstrap a cloud VM boots with (startup-script and user-data), when that is
    /// the configured method.
    pub(crate) fn bootstrap_script(&self) -> Option<crate::bootstrap::Script> {
        let s = self.settings();
        (s.bootstrap_method() == crate::bootstrap::Method::Native).then(|| {
            crate::bootstrap::render(
                s,
                &crate::bootstrap::Target {
                    login_user: &s.gcp.ssh_user,
                    gce: true,
                },
            )
        })
    }

    /// A Compute Engine client of the settings' project, whatever the provider and bootstrap
    /// (`cwo image import`: an image is imported before anything boots it).
    pub(crate) fn gce_api(&self) -> GcpProvider {
        let s = self.settings();
        GcpProvider::new(
            s.gcp.clone(),
            s.ssh.clone(),
            slug(&self.name),
            self.state_dir.join("keys"),
        )
    }

    /// A Compute Engine client of the settings' project that knows which image the settings
    /// bake to (`cwo image`, and the terraform provider's choice of image).
    fn image_provider_for(&self, script: &crate::bootstrap::Script) -> GcpProvider {
        let s = self.settings();
        self.gce_api()
            .with_image_hash(crate::bootstrap::image_hash(&s.gcp.image, script))
    }

    /// The native bootstrap script `cwo image` bakes, or why there is none to bake.
    fn bake_script(&self) -> Result<crate::bootstrap::Script, CommandError> {
        let s = self.settings();
        if !matches!(s.provider, ProviderKind::Gcp | ProviderKind::Terraform) {
            return Err(CommandError::usage(format!(
                "cwo image makes Compute Engine images, and provider = \"{}\"",
                s.provider
            ))
            .hint("set provider = \"gcp\" (or \"terraform\") and [gcp] project"));
        }
        self.bootstrap_script().ok_or_else(|| {
            CommandError::usage(format!(
                "cwo image bakes the native bootstrap, and bootstrap.method = \"{}\"",
                s.bootstrap.method
            ))
            .hint("set bootstrap.method = \"native\" (or \"auto\")")
        })
    }

    /// `cwo image list | prune`: the settings' Compute Engine project and the hash they bake to.
    pub(crate) fn image_provider(&self) -> Result<GcpProvider, CommandError> {
        Ok(self.image_provider_for(&self.bake_script()?))
    }

    /// `cwo image build`: a lifecycle that brings up builders (booting gcp.image with no
    /// bootstrap at boot, journaled and TTL'd like workers), the builder's provider, and what
    /// the image is made from.
    pub(crate) fn image_builder(
        &self,
        printer: Printer,
    ) -> Result<(WorkerLifecycle, Arc<GcpProvider>, BuildSpec), CommandError> {
        let script = self.bake_script()?;
        let s = self.settings();
        let mut g = s.gcp.clone();
        // The builder boots the base image whatever use_image says, and lives an hour at most:
        // a bake takes minutes, and it is deleted as soon as it is imaged.
        g.use_image = crate::config::UseImage::Never;
        g.ttl = Some(g.ttl.map_or(BUILDER_TTL, |t| t.min(BUILDER_TTL)));
        // A preempted builder is a failed build: it is on standard provisioning, whatever
        // workers are (minutes of an e2-micro; spot would save a fraction of a cent).
        g.spot = false;
        let builder = Arc::new(GcpProvider::new(
            g,
            s.ssh.clone(),
            slug(&self.name),
            self.state_dir.join("keys"),
        ));
        let (mut ports, ctx) = self.ports(printer, Arc::new(self.tracker()), None)?;
        ports.provider = builder.clone();
        let b = &s.bootstrap;
        let packages = if b.packages.is_empty() {
            String::new()
        } else {
            format!(", packages {}", b.packages.join(" "))
        };
        let spec = BuildSpec {
            family: s.gcp.image_family.clone(),
            hash: crate::bootstrap::image_hash(&s.gcp.image, &script),
            base: s.gcp.image.clone(),
            project_slug: slug(&self.name),
            description: format!(
                "cwo {} worker image: {}, opencode {}{packages}, swap {}",
                env!("CARGO_PKG_VERSION"),
                s.gcp.image,
                b.opencode,
                b.swap.map_or("off".into(), |m| format!("{m} MiB")),
            ),
        };
        Ok((WorkerLifecycle::new(&ports, &ctx).baking(), builder, spec))
    }

    pub(crate) fn journal(&self) -> Result<Journal, JournalError> {
        Journal::open(&self.state_dir)
    }

    /// The loop (`cwo run`, `cwo demo`), with the project's ports: the configured tracker, and
    /// the forge when pull requests are on and the remote is on GitHub.
    pub(crate) async fn orchestrator(&self, printer: Printer) -> Result<Orchestrator, PortsError> {
        let github = self.github(printer).await?;
        let tracker = self.task_source(github.as_ref())?;
        let forge = github
            .filter(|_| self.settings().github.pull_requests)
            .map(|gh| Arc::new(GithubForge::new(gh)) as Arc<dyn Forge>);
        let (ports, ctx) = self.ports(printer, tracker, forge)?;
        Ok(Orchestrator::new(ports, ctx))
    }

    /// The worker lifecycle alone (`cwo up`, `cwo down`). It never reads the tracker or opens
    /// pull requests, so it needs no GitHub credentials: `cwo down` works whatever they are.
    pub(crate) fn lifecycle(&self, printer: Printer) -> Result<WorkerLifecycle, PortsError> {
        let (ports, ctx) = self.ports(printer, Arc::new(self.tracker()), None)?;
        Ok(WorkerLifecycle::new(&ports, &ctx))
    }

    /// The tracker `tracker.kind` names (`github` needs the client).
    pub(crate) fn task_source(
        &self,
        github: Option<&Github>,
    ) -> Result<Arc<dyn Tracker>, PortsError> {
        let s = self.settings();
        Ok(match s.tracker.kind {
            TrackerKind::Juggle => Arc::new(self.tracker()),
            TrackerKind::Github => {
                let gh =
                    github
                        .cloned()
                        .ok_or(PortsError::Github(Box::new(GithubError::NoRepo(
                            "tracker.kind = \"github\" but no GitHub repository is configured"
                                .into(),
                        ))))?;
                Arc::new(GithubTracker::new(
                    gh,
                    s.github.label.clone(),
                    s.git.branch_prefix.clone(),
                    self.controller_id(),
                ))
            }
            TrackerKind::Frontloop => {
                let printer = Printer::new(false, false, true);
                Arc::new(
                    crate::tracker::frontloop::Frontloop::new(
                        self.root.join(&s.tracker.frontloop_dir),
                        s.tracker.epic.clone(),
                    )
                    .on_problem(Arc::new(move |p| printer.warn(p.to_string()))),
                )
            }
        })
    }

    /// This controller's id in GitHub claim comments: the same for every run from this state dir
    /// on this machine (so a restarted controller resumes its own claims), different elsewhere.
    pub(crate) fn controller_id(&self) -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!(
            "{:012x}",
            fnv(&format!("{}|{}", host.trim(), self.state_dir.display())) & 0xffff_ffff_ffff
        )
    }

    /// The GitHub repository this project works with, when it does: `tracker.kind = "github"`,
    /// or pull requests on and `github.repo` set or `git.remote` on GitHub's host. Credentials
    /// are resolved here, on the controller. Without a token, pull requests for a juggle task
    /// are skipped with a warning; the GitHub tracker cannot run without one.
    pub(crate) async fn github(&self, printer: Printer) -> Result<Option<Github>, PortsError> {
        let s = self.settings();
        let needed = s.tracker.kind == TrackerKind::Github;
        if !needed && (!s.github.pull_requests || !s.git.push) {
            return Ok(None);
        }
        match self.github_client().await {
            Ok(gh) => Ok(Some(gh)),
            Err(e) if needed => Err(PortsError::Github(Box::new(e))),
            // No GitHub repository: nothing to say. No token for one: say why no pull requests.
            Err(GithubError::NoRepo(_)) => Ok(None),
            Err(e) => {
                let on = self
                    .github_repo()
                    .map(|r| format!(" on {r}"))
                    .unwrap_or_default();
                printer.warn(format!(
                    "no pull requests{on}: {e}{}",
                    e.hint().map(|h| format!(" ({h})")).unwrap_or_default()
                ));
                Ok(None)
            }
        }
    }

    /// The client for [`Self::github_repo`] with the resolved credentials, whatever the tracker
    /// (`cwo github init`, `cwo doctor`).
    pub(crate) async fn github_client(&self) -> Result<Github, GithubError> {
        let s = self.settings();
        let repo = self.github_repo()?;
        let creds = Credentials::resolve(&s.github, &s.gcp).await?;
        Github::new(&s.github.api_url, repo, creds)
    }

    /// `github.repo`, or the repository `git.remote`'s URL names on the API's host.
    pub(crate) fn github_repo(&self) -> Result<RepoRef, GithubError> {
        let s = self.settings();
        if !s.github.repo.is_empty() {
            return RepoRef::parse(&s.github.repo).ok_or_else(|| {
                GithubError::NoRepo(format!(
                    "github.repo = {:?} is not \"owner/name\"",
                    s.github.repo
                ))
            });
        }
        let url = std::process::Command::new("git")
            .arg("-C")
            .arg(&self.root)
            .args(["remote", "get-url", &s.git.remote])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let host = crate::github::host_of(&s.github.api_url);
        match RepoRef::from_remote_url(&url) {
            Some((h, repo)) if h == host => Ok(repo),
            _ => Err(GithubError::NoRepo(format!(
                "github.repo is empty and git remote `{}` ({}) is not a repository on {host}",
                s.git.remote,
                if url.is_empty() {
                    "missing"
                } else {
                    url.as_str()
                }
            ))),
        }
    }

    /// The orchestrator's ports (tracker, journal, provider, connector, forge) and what a run
    /// reads once (the settings, the prompt template).
    pub(crate) fn ports(
        &self,
        printer: Printer,
        tracker: Arc<dyn Tracker>,
        forge: Option<Arc<dyn Forge>>,
    ) -> Result<(Ports, RunContext), PortsError> {
        let settings = self.settings().clone();
        let template = self.prompt_template()?;
        let journal = self.journal()?;
        let ports = Ports {
            forge,
            tracker,
            provider: self.provider(&journal),
            connector: self.connector(&journal),
            journal,
            printer,
        };
        let ctx = RunContext {
            root: self.root.clone(),
            state_dir: self.state_dir.clone(),
            project_slug: slug(&self.name),
            settings: Arc::new(settings),
            template,
            origins: Arc::new(self.resolved.origins.clone()),
        };
        Ok((ports, ctx))
    }

    /// agent.prompt_template's text, or the built-in prompt when it is `""`.
    fn prompt_template(&self) -> Result<String, PortsError> {
        let file = &self.settings().agent.prompt_template;
        if file.is_empty() {
            return Ok(crate::agent::DEFAULT_TEMPLATE.to_string());
        }
        let path = self.root.join(file);
        std::fs::read_to_string(&path).map_err(|cause| PortsError::Template { path, cause })
    }
}

/// Why the orchestrator's ports could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PortsError {
    /// The cause is part of the message (it is the message users know), not a source.
    #[error("cannot read agent.prompt_template {}: {cause}", path.display())]
    Template {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Github(Box<GithubError>),
}

impl From<PortsError> for CommandError {
    fn from(e: PortsError) -> CommandError {
        match e {
            PortsError::Template { .. } => CommandError::usage(e.to_string()).hint(
                "set agent.prompt_template to a file relative to the project root, or \"\" for the built-in prompt",
            ),
            PortsError::Journal(e) => e.into(),
            PortsError::Github(e) => (*e).into(),
        }
    }
}
