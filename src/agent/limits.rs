//! What one task's agent runs with: the settings, the repository's workflow (`[agent]` in
//! `.cwo/workflow.toml`) and the task's own model fields, in one place and one order.
//!
//! The repository's values fill in what the person running cwo did not set: a setting that comes
//! from a file, the environment or a flag wins over the workflow. The model has one more rule,
//! from juggle (`--model` wins, then the ball's fields): `agent.model` from the environment or a
//! flag > the ball's `model_override` > its `model_size` mapped through `[agent.models]` >
//! `agent.model` from a settings file > the workflow's `model` > the agent's own default.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{AgentSettings, Source};
use crate::tracker::Task;
use crate::workflow::AgentOverrides as RepoAgent;

/// The limits and model of one task's attempts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Limits {
    pub(crate) timeout: Duration,
    pub(crate) stall_timeout: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) max_cost_usd: Option<f64>,
    /// None: the agent's own default.
    pub(crate) model: Option<String>,
    /// Where the model came from, for the log ("ball model_size = small", ...).
    pub(crate) model_from: String,
}

/// juggle's own ids for its canonical names (reference: juggle's provider `MapModel`).
const JUGGLE_MODELS: &[(&str, &str)] = &[
    ("opus", "anthropic/claude-opus-4-5"),
    ("sonnet", "anthropic/claude-sonnet-4-5"),
    ("haiku", "anthropic/claude-3-5-haiku-latest"),
];

fn set_by_person(origins: &BTreeMap<String, Source>, key: &str) -> bool {
    !matches!(origins.get(key), None | Some(Source::Default))
}

pub(crate) fn resolve(
    s: &AgentSettings,
    origins: &BTreeMap<String, Source>,
    repo: Option<&RepoAgent>,
    task: &Task,
) -> Limits {
    let none = RepoAgent::default();
    let repo = repo.unwrap_or(&none);
    let pick = |key: &str, setting: Duration, from_repo: Option<Duration>| match (
        set_by_person(origins, key),
        from_repo,
    ) {
        (false, Some(v)) => v,
        _ => setting,
    };
    let timeout = pick("agent.timeout", s.timeout, repo.timeout);
    let soft_timeout = match (
        set_by_person(origins, "agent.soft_timeout"),
        repo.soft_timeout,
    ) {
        (false, Some(v)) => Some(v),
        _ => s.soft_timeout,
    }
    // A soft limit at or past the hard one would never be reached.
    .filter(|soft| *soft < timeout);
    let max_cost_usd = match (
        set_by_person(origins, "agent.max_cost_usd"),
        repo.max_cost_usd,
    ) {
        (false, Some(v)) => Some(v),
        _ => s.max_cost_usd.0,
    };
    let (model, model_from) = model_for(s, origins, repo, task);
    Limits {
        timeout,
        stall_timeout: pick("agent.stall_timeout", s.stall_timeout, repo.stall_timeout),
        soft_timeout,
        max_cost_usd,
        model,
        model_from,
    }
}

fn model_for(
    s: &AgentSettings,
    origins: &BTreeMap<String, Source>,
    repo: &RepoAgent,
    task: &Task,
) -> (Option<String>, String) {
    let setting = (!s.model.trim().is_empty()).then(|| s.model.trim().to_string());
    let origin = origins.get("agent.model");
    if let (Some(m), Some(o @ (Source::Env { .. } | Source::Flag { .. }))) = (&setting, origin) {
        return (Some(m.clone()), format!("agent.model ({o})"));
    }
    let over = task.model_override.trim();
    if !over.is_empty() {
        let mapped = s.models.get(over).cloned().or_else(|| {
            JUGGLE_MODELS
                .iter()
                .find(|(k, _)| *k == over)
                .map(|(_, id)| id.to_string())
        });
        return (
            Some(mapped.unwrap_or_else(|| over.to_string())),
            format!("the task's model_override = {over}"),
        );
    }
    let size = task.model_size.trim();
    if let Some(id) = s.models.get(size).filter(|_| !size.is_empty()) {
        return (
            Some(id.clone()),
            format!("the task's model_size = {size}, through [agent.models]"),
        );
    }
    if let (Some(m), Some(o @ Source::File { .. })) = (&setting, origin) {
        return (Some(m.clone()), format!("agent.model ({o})"));
    }
    if let Some(m) = repo.model.as_ref().filter(|m| !m.trim().is_empty()) {
        return (
            Some(m.clone()),
            "the repository's .cwo/workflow.toml".into(),
        );
    }
    (setting, "agent.model".into())
}

/// opencode takes its model as `--model`: added after `opencode run` unless the command already
/// names one. Other agents read `{model}` in their command or `CWO_MODEL`.
pub(crate) fn with_model(argv: Vec<String>, model: Option<&str>) -> Vec<String> {
    let Some(model) = model else {
        return argv;
    };
    let is_opencode = argv.first().is_some_and(|p| {
        std::path::Path::new(p)
            .file_name()
            .is_some_and(|n| n == "opencode")
    }) && argv.get(1).is_some_and(|a| a == "run");
    let names_one = argv
        .iter()
        .any(|a| a == "-m" || a == "--model" || a.starts_with("--model="));
    if !is_opencode || names_one {
        return argv;
    }
    let mut out = argv;
    out.splice(2..2, ["--model".to_string(), model.to_string()]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn task(over: &str, size: &str) -> Task {
        Task {
            id: "t-1".into(),
            title: "t".into(),
            context: String::new(),
            acceptance_criteria: vec![],
            priority: crate::tracker::Priority::Medium,
            state: "pending".into(),
            blocked_reason: String::new(),
            depends_on: vec![],
            tags: vec![],
            waiting_on: vec![],
            issue: None,
            model_override: over.into(),
            model_size: size.into(),
        }
    }

    fn file() -> Source {
        Source::File {
            path: PathBuf::from("cwo.toml"),
            line: 3,
        }
    }

    #[test]
    fn the_repository_fills_in_what_the_person_did_not_set() {
        let s = AgentSettings::default();
        let repo = RepoAgent {
            timeout: Some(Duration::from_secs(2700)),
            stall_timeout: Some(Duration::from_secs(60)),
            soft_timeout: Some(Duration::from_secs(1800)),
            model: Some("repo/model".into()),
            max_cost_usd: Some(2.0),
        };
        let l = resolve(&s, &BTreeMap::new(), Some(&repo), &task("", ""));
        assert_eq!(
            (l.timeout, l.stall_timeout, l.soft_timeout, l.max_cost_usd),
            (
                Duration::from_secs(2700),
                Duration::from_secs(60),
                Some(Duration::from_secs(1800)),
                Some(2.0)
            )
        );
        assert_eq!(l.model.as_deref(), Some("repo/model"));
        let mut origins = BTreeMap::new();
        origins.insert("agent.timeout".to_string(), file());
        origins.insert(
            "agent.max_cost_usd".to_string(),
            Source::Flag {
                arg: "agent.max_cost_usd=\"\"".into(),
            },
        );
        let l = resolve(&s, &origins, Some(&repo), &task("", ""));
        // cwo.toml's 30m wins; the repo's soft 30m is then not below it and is dropped.
        assert_eq!(l.timeout, Duration::from_secs(1800));
        assert_eq!(l.soft_timeout, None);
        assert_eq!(l.max_cost_usd, None);
        assert_eq!(l.stall_timeout, Duration::from_secs(60));
    }

    #[test]
    fn model_precedence_follows_juggle() {
        let mut s = AgentSettings {
            model: "file/model".into(),
            ..AgentSettings::default()
        };
        s.models.insert("small".into(), "cheap/one".into());
        let repo = RepoAgent {
            model: Some("repo/model".into()),
            ..RepoAgent::default()
        };
        let mut origins = BTreeMap::new();
        origins.insert("agent.model".to_string(), file());
        let m = |o: &BTreeMap<String, Source>, t: &Task| {
            resolve(&s, o, Some(&repo), t).model.unwrap_or_default()
        };
        assert_eq!(m(&origins, &task("", "")), "file/model");
        assert_eq!(m(&origins, &task("", "small")), "cheap/one");
        assert_eq!(m(&origins, &task("", "large")), "file/model");
        assert_eq!(
            m(&origins, &task("opus", "small")),
            "anthropic/claude-opus-4-5"
        );
        assert_eq!(m(&origins, &task("x/y", "")), "x/y");
        let mut flag = origins.clone();
        flag.insert(
            "agent.model".to_string(),
            Source::Env {
                var: "CWO_AGENT__MODEL".into(),
            },
        );
        assert_eq!(m(&flag, &task("opus", "small")), "file/model");
        assert_eq!(m(&BTreeMap::new(), &task("", "")), "repo/model");
        let plain = AgentSettings::default();
        assert_eq!(
            resolve(&plain, &BTreeMap::new(), None, &task("", "")).model,
            None
        );
    }

    #[test]
    fn opencode_gets_its_model_as_a_flag() {
        let argv: Vec<String> = ["/opt/bin/opencode", "run", "--format", "json", "{prompt}"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            with_model(argv.clone(), Some("p/m"))[..4],
            ["/opt/bin/opencode", "run", "--model", "p/m"]
        );
        assert_eq!(with_model(argv.clone(), None), argv);
        let named: Vec<String> = ["opencode", "run", "-m", "a/b"].map(String::from).to_vec();
        assert_eq!(with_model(named.clone(), Some("p/m")), named);
        let other: Vec<String> = ["aider", "--yes"].map(String::from).to_vec();
        assert_eq!(with_model(other.clone(), Some("p/m")), other);
    }
}
