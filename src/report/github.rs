//! `cwo github init`: the labels the GitHub tracker uses, created where the repository lacks
//! them (or, with `--dry-run`, which would be).

use serde::Serialize;

use super::table::Table;
use super::{Report, SCHEMA_VERSION};
use crate::error::CommandError;
use crate::printer::Printer;
use crate::project::Project;
use crate::tracker::github::{LabelAction, ensure_labels};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct LabelRow {
    pub(crate) name: String,
    pub(crate) color: String,
    pub(crate) description: String,
    pub(crate) action: LabelAction,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct GithubInitReport {
    pub(crate) schema_version: u32,
    pub(crate) repo: String,
    pub(crate) dry_run: bool,
    pub(crate) labels: Vec<LabelRow>,
}

/// Creates the queue label (`github.label`), the state labels and the priority labels on the
/// configured repository; existing labels are left as they are.
pub(crate) async fn init(
    project: &Project,
    printer: Printer,
    dry_run: bool,
) -> Result<GithubInitReport, CommandError> {
    let gh = project.github_client().await?;
    let queue = project.settings().github.label.clone();
    let client = gh.clone();
    let done = gh
        .run(async move { ensure_labels(&client, &queue, dry_run).await })
        .await?;
    let created = done
        .iter()
        .filter(|(_, a)| *a == LabelAction::Created)
        .count();
    if !dry_run {
        printer.status(format!(
            "{created} label(s) created on {}, {} already there",
            gh.repo(),
            done.len() - created
        ));
    }
    Ok(GithubInitReport {
        schema_version: SCHEMA_VERSION,
        repo: gh.repo().to_string(),
        dry_run,
        labels: done
            .into_iter()
            .map(|(spec, action)| LabelRow {
                name: spec.name,
                color: spec.color.to_string(),
                description: spec.description.to_string(),
                action,
            })
            .collect(),
    })
}

impl Report for GithubInitReport {
    fn text(&self) -> String {
        let mut t = Table::new(&["label", "color", "action", "description"]);
        for l in &self.labels {
            t.row(vec![
                l.name.clone(),
                format!("#{}", l.color),
                match l.action {
                    LabelAction::Created => "created",
                    LabelAction::Exists => "exists",
                    LabelAction::WouldCreate => "would create",
                }
                .to_string(),
                l.description.clone(),
            ]);
        }
        format!("{}:\n{}", self.repo, t.render())
    }
}

/// `cwo github webhook-url`: what the repository's webhook settings want for `cwo serve`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct WebhookUrlReport {
    pub(crate) schema_version: u32,
    /// Where GitHub's form is (None: no repository configured).
    pub(crate) settings_url: Option<String>,
    pub(crate) payload_url: String,
    pub(crate) content_type: &'static str,
    /// The reference the secret is read from (`github.webhook_secret`), never the secret.
    pub(crate) secret: String,
    pub(crate) events: Vec<&'static str>,
    /// What stands between GitHub and this URL, if anything.
    pub(crate) warnings: Vec<String>,
}

pub(crate) fn webhook_url(project: &Project) -> WebhookUrlReport {
    let s = project.settings();
    let mut warnings = Vec::new();
    let base = if s.serve.public_url.is_empty() {
        if s.serve.listens_on_loopback() {
            warnings.push(format!(
                "serve.listen ({}) is loopback: GitHub cannot reach it; put a tunnel or reverse proxy in front and set serve.public_url to its address",
                s.serve.listen
            ));
        }
        format!("http://{}", s.serve.listen)
    } else {
        s.serve.public_url.trim_end_matches('/').to_string()
    };
    if base.starts_with("http://") {
        warnings.push(
            "the payload URL is plain http: the body travels unencrypted (the signature still proves it is GitHub's); prefer https".into(),
        );
    }
    if !s.serve.public_url.is_empty() && s.serve.token.is_empty() {
        warnings.push(
            "serve.public_url is set but serve.token is not: `cwo serve` refuses to start so (a tunnel or proxy arrives from loopback and would expose the dashboard and logs); set serve.token".into(),
        );
    }
    if s.github.webhook_secret.is_empty() {
        warnings.push(
            "github.webhook_secret is not set: `cwo serve` refuses every delivery; set it to a secret reference (env:NAME or sm://…) holding the same secret as GitHub's form".into(),
        );
    }
    let repo = project.github_repo().ok();
    WebhookUrlReport {
        schema_version: SCHEMA_VERSION,
        settings_url: repo.map(|r| format!("https://github.com/{r}/settings/hooks/new")),
        payload_url: format!("{base}/webhooks/github"),
        content_type: "application/json",
        secret: s.github.webhook_secret.clone(),
        events: crate::github::webhook::events(),
        warnings,
    }
}

impl Report for WebhookUrlReport {
    fn text(&self) -> String {
        let mut out = String::new();
        if let Some(u) = &self.settings_url {
            out.push_str(&format!("Add a webhook at {u}:\n"));
        }
        out.push_str(&format!("  Payload URL:   {}\n", self.payload_url));
        out.push_str(&format!("  Content type:  {}\n", self.content_type));
        out.push_str(&format!(
            "  Secret:        the value of {}\n",
            if self.secret.is_empty() {
                "github.webhook_secret (not set)".to_string()
            } else {
                format!("github.webhook_secret ({})", self.secret)
            }
        ));
        out.push_str(&format!(
            "  Events:        Let me select individual events: {}\n",
            self.events.join(", ")
        ));
        out
    }
}
