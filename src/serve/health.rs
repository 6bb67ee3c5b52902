//! `GET /healthz`: the journal read on each hit (a local file, cheap), and the tracker, the
//! provider and the forge as last observed by a background check every `OBSERVE_EVERY`, with the
//! observation's age — polling the endpoint every few seconds costs no cloud or GitHub call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::github::Github;
use crate::journal::Journal;
use crate::model::ids::slug;
use crate::project::Project;
use crate::provider::Provider;
use crate::tracker::Tracker;

/// How often the tracker, the provider and the forge are looked at.
pub(crate) const OBSERVE_EVERY: Duration = Duration::from_secs(30);

/// One service's health.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ServiceHealth {
    /// ok | error | off (not configured) | pending (not observed yet).
    pub(crate) status: &'static str,
    pub(crate) detail: String,
    pub(crate) checked_at: Option<DateTime<Utc>>,
    /// Seconds since `checked_at`, as of this answer.
    pub(crate) age_secs: Option<i64>,
}

impl ServiceHealth {
    fn pending() -> ServiceHealth {
        ServiceHealth {
            status: "pending",
            detail: "not observed yet".into(),
            checked_at: None,
            age_secs: None,
        }
    }

    fn now(status: &'static str, detail: String) -> ServiceHealth {
        ServiceHealth {
            status,
            detail,
            checked_at: Some(Utc::now()),
            age_secs: Some(0),
        }
    }
}

/// `/healthz`'s answer.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HealthReport {
    pub(crate) schema_version: u32,
    /// "error" when any service is in error (the answer is then a 503).
    pub(crate) status: &'static str,
    pub(crate) services: BTreeMap<&'static str, ServiceHealth>,
}

/// The last observations, shared by the observer and the handler.
#[derive(Clone, Default)]
pub(crate) struct Health {
    seen: Arc<Mutex<BTreeMap<&'static str, ServiceHealth>>>,
}

impl Health {
    fn set(&self, service: &'static str, h: ServiceHealth) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service, h);
    }

    /// The journal now, the rest as last observed.
    pub(crate) fn report(&self, journal: &Journal) -> HealthReport {
        let mut services = BTreeMap::new();
        services.insert(
            "journal",
            match journal.probe() {
                Ok(()) => ServiceHealth::now("ok", journal.path().display().to_string()),
                Err(e) => ServiceHealth::now("error", crate::util::error::one_line(&e)),
            },
        );
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for service in ["tracker", "provider", "forge"] {
            let mut h = seen
                .get(service)
                .cloned()
                .unwrap_or_else(ServiceHealth::pending);
            h.age_secs = h.checked_at.map(|t| (Utc::now() - t).num_seconds());
            services.insert(service, h);
        }
        let status = if services.values().any(|h| h.status == "error") {
            "error"
        } else {
            "ok"
        };
        HealthReport {
            schema_version: crate::report::SCHEMA_VERSION,
            status,
            services,
        }
    }
}

/// What the observer looks at.
pub(crate) struct Observed {
    pub(crate) tracker: Option<Arc<dyn Tracker>>,
    /// Why there is no tracker to look at (it could not be made).
    pub(crate) tracker_error: Option<String>,
    pub(crate) provider: Arc<dyn Provider>,
    /// None: cwo talks to no forge here; Err: it would, and cannot (credentials, repository).
    pub(crate) forge: Result<Option<Github>, String>,
    pub(crate) project_slug: String,
}

impl Observed {
    pub(crate) async fn of(project: &Project, journal: &Journal) -> Observed {
        let forge = forge_of(project).await;
        // The loop's own client says the same thing on stderr; this one stays quiet.
        let github = forge.as_ref().ok().cloned().flatten();
        let (tracker, tracker_error) = match project.task_source(github.as_ref()) {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(e.to_string())),
        };
        Observed {
            tracker,
            tracker_error,
            provider: project.provider(journal),
            forge,
            project_slug: slug(&project.name),
        }
    }
}

/// The GitHub client when cwo uses GitHub here (the tracker, or pull requests on a GitHub
/// remote), or why it cannot be made: broken credentials are an error, not "off".
async fn forge_of(project: &Project) -> Result<Option<Github>, String> {
    let s = project.settings();
    let used = s.tracker.kind == crate::config::TrackerKind::Github
        || (s.github.pull_requests && s.git.push);
    if !used {
        return Ok(None);
    }
    match project.github_client().await {
        Ok(gh) => Ok(Some(gh)),
        Err(crate::github::GithubError::NoRepo(_)) => Ok(None),
        Err(e) => Err(crate::util::error::one_line(&e)),
    }
}

/// Observes until `stop`.
pub(crate) async fn observe(health: Health, what: Observed, stop: CancellationToken) {
    loop {
        observe_once(&health, &what).await;
        tokio::select! {
            _ = tokio::time::sleep(OBSERVE_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

async fn observe_once(health: &Health, what: &Observed) {
    let tracker = match (&what.tracker, &what.tracker_error) {
        (Some(t), _) => {
            let t = t.clone();
            match tokio::task::spawn_blocking(move || t.ready()).await {
                Ok(Ok(ready)) => ServiceHealth::now("ok", format!("{} task(s) ready", ready.len())),
                Ok(Err(e)) => ServiceHealth::now("error", crate::util::error::one_line(&e)),
                Err(e) => ServiceHealth::now("error", e.to_string()),
            }
        }
        (None, e) => ServiceHealth::now("error", e.clone().unwrap_or_default()),
    };
    health.set("tracker", tracker);
    let selector = crate::model::project_selector(&what.project_slug);
    let provider = match what.provider.list(&selector).await {
        Ok(listed) => ServiceHealth::now(
            "ok",
            format!(
                "{}: {} worker(s) listed",
                what.provider.kind(),
                listed.len()
            ),
        ),
        Err(e) => ServiceHealth::now("error", e.one_line()),
    };
    health.set("provider", provider);
    let forge = match &what.forge {
        Ok(None) => ServiceHealth::now("off", "cwo uses no GitHub repository here".into()),
        Err(e) => ServiceHealth::now("error", e.clone()),
        Ok(Some(gh)) => {
            let path = format!("/repos/{}", gh.repo());
            // A conditional GET: unchanged, it is answered 304 and costs no rate limit.
            match gh.get::<serde_json::Value>(&path).await {
                Ok(_) => ServiceHealth::now("ok", format!("github {}", gh.repo())),
                Err(e) => ServiceHealth::now("error", crate::util::error::one_line(&e)),
            }
        }
    };
    health.set("forge", forge);
}
