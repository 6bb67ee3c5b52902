//! `.cwo/workflow.toml`: how the target repository wants its tasks worked (setup commands, a
//! verify command, its own prompt template and context files, agent limits). It is read from the
//! commit being worked on, never from the working tree, so every attempt at that commit sees the
//! same file, and the files it names are read from that same commit. `docs/workflow.md` is the
//! user's reference for every key.

use std::path::{Component, Path};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::git::{self, GitError};
use crate::tracker::Task;

/// Where the file lives in the target repository.
pub(crate) const WORKFLOW_PATH: &str = ".cwo/workflow.toml";

/// Most bytes of context files prepended to every prompt, all files together.
pub(crate) const MAX_CONTEXT_BYTES: usize = 256 * 1024;

/// The parsed file; every section and key is optional.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Workflow {
    pub(crate) setup: Setup,
    pub(crate) verify: Option<Verify>,
    pub(crate) prompt: PromptSpec,
    pub(crate) agent: AgentOverrides,
}

/// `[setup]`: commands run in order in the checkout before the agent starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Setup {
    /// argv lists, never through a shell.
    pub(crate) commands: Vec<Vec<String>>,
    /// Files whose content decides whether setup can be skipped (see [`RepoWorkflow::cache_key`]).
    pub(crate) cache_key: Vec<String>,
}

/// `[verify]`: the command that checks the agent's work.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verify {
    pub(crate) command: Vec<String>,
    /// Push the branch even when the verify command fails.
    pub(crate) push_on_failure: bool,
}

/// `[prompt]`: the repository's own template and the files prepended to every prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct PromptSpec {
    pub(crate) template: Option<String>,
    pub(crate) context_files: Vec<String>,
}

/// `[agent]`: limits that take the place of the settings' for this repository's tasks.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AgentOverrides {
    pub(crate) timeout: Option<Duration>,
    pub(crate) stall_timeout: Option<Duration>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) model: Option<String>,
    pub(crate) max_cost_usd: Option<f64>,
}

/// The workflow as read from one commit, with the files it names already read from that same
/// commit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RepoWorkflow {
    pub(crate) file: Workflow,
    /// The commit it was read from (full id).
    pub(crate) commit: String,
    /// The prompt template's text.
    pub(crate) template: Option<String>,
    /// (path, text) of each context file, in the file's order.
    pub(crate) context: Vec<(String, String)>,
    /// Decides whether setup can be skipped: a hex digest over the setup commands (argv, in
    /// order) and, for each cache_key file, its path and its git blob id at the commit. None when
    /// there is no setup or no cache_key (then setup always runs).
    pub(crate) cache_key: Option<String>,
}

/// Why the workflow cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The file (or a file it names) is wrong; the user fixes and commits it.
    #[error("{location}: {message}")]
    Invalid {
        /// `path:line:col`, and the commit when read from one.
        location: String,
        message: String,
        hint: String,
    },
    /// git could not answer (an unknown commit, a broken repository).
    #[error("cannot read {WORKFLOW_PATH} at {rev} in {root}")]
    Git {
        root: String,
        rev: String,
        #[source]
        source: Box<GitError>,
    },
}

impl WorkflowError {
    /// What to do about it.
    pub(crate) fn hint(&self) -> &str {
        match self {
            WorkflowError::Invalid { hint, .. } => hint,
            WorkflowError::Git { .. } => {
                "check that the commit exists in the repository (`git cat-file -t <commit>`)"
            }
        }
    }
}

/// Where error locations point: the file as the user sees it, and the commit it was read from.
struct Origin<'a> {
    path: &'a str,
    commit: Option<&'a str>,
}

impl Origin<'_> {
    fn invalid(&self, text: &str, offset: usize, message: String) -> WorkflowError {
        let hint = match self.commit {
            Some(c) => format!(
                "commit the fix: cwo reads the workflow from the commit it works on ({}), not from \
                 the working tree; every key is in docs/workflow.md",
                short(c)
            ),
            None => "every key is in docs/workflow.md".to_string(),
        };
        WorkflowError::Invalid {
            location: self.location(text, offset),
            message,
            hint,
        }
    }

    /// `path:line:col`, and the commit when the text was read from one.
    fn location(&self, text: &str, offset: usize) -> String {
        let (line, col) = line_col(text, offset);
        match self.commit {
            Some(c) => format!("{}:{line}:{col} (at commit {})", self.path, short(c)),
            None => format!("{}:{line}:{col}", self.path),
        }
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

// The file as written, every value with its place in the text so a semantic error names its line.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawFile {
    setup: RawSetup,
    verify: Option<Spanned<RawVerify>>,
    prompt: RawPrompt,
    agent: RawAgent,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSetup {
    commands: Vec<Spanned<Vec<String>>>,
    cache_key: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawVerify {
    command: Option<Spanned<Vec<String>>>,
    push_on_failure: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPrompt {
    template: Option<Spanned<String>>,
    context_files: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAgent {
    timeout: Option<Spanned<String>>,
    stall_timeout: Option<Spanned<String>>,
    soft_timeout: Option<Spanned<String>>,
    model: Option<Spanned<String>>,
    max_cost_usd: Option<Spanned<f64>>,
}

/// Where each path the file names is written, for the errors `load` finds at the commit.
struct Places {
    template: Option<usize>,
    context_files: Option<usize>,
    context: Vec<usize>,
    cache_key: Vec<usize>,
}

/// Parses and validates text; `origin` is what error locations name (e.g.
/// "/src/app/.cwo/workflow.toml").
#[cfg(test)]
pub(crate) fn parse(text: &str, origin: &str) -> Result<Workflow, WorkflowError> {
    parse_placed(
        text,
        &Origin {
            path: origin,
            commit: None,
        },
    )
    .map(|(w, _)| w)
}

fn parse_placed(text: &str, origin: &Origin<'_>) -> Result<(Workflow, Places), WorkflowError> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start).unwrap_or(0);
        origin.invalid(text, offset, e.message().trim().to_string())
    })?;
    let err = |offset: usize, message: String| origin.invalid(text, offset, message);

    let mut commands = Vec::with_capacity(raw.setup.commands.len());
    for (i, argv) in raw.setup.commands.into_iter().enumerate() {
        let at = argv.span().start;
        let argv = argv.into_inner();
        check_argv(&argv, &format!("setup.commands[{i}]"), "[\"npm\", \"ci\"]")
            .map_err(|m| err(at, m))?;
        commands.push(argv);
    }
    let (cache_key, cache_key_at) = paths(raw.setup.cache_key, "setup.cache_key", &err)?;

    let verify = match raw.verify {
        None => None,
        Some(v) => {
            let section_at = v.span().start;
            let v = v.into_inner();
            let (command, at) = match v.command {
                Some(c) => {
                    let at = c.span().start;
                    (c.into_inner(), at)
                }
                None => (Vec::new(), section_at),
            };
            check_argv(&command, "verify.command", "[\"npm\", \"test\"]")
                .map_err(|m| err(at, m))?;
            Some(Verify {
                command,
                push_on_failure: v.push_on_failure,
            })
        }
    };

    let (template, template_at) = match raw.prompt.template {
        None => (None, None),
        Some(t) => {
            let at = t.span().start;
            let clean = clean_path(t.get_ref(), "prompt.template").map_err(|m| err(at, m))?;
            (Some(clean), Some(at))
        }
    };
    let context_files_at = raw.prompt.context_files.as_ref().map(|c| c.span().start);
    let (context_files, context_at) =
        paths(raw.prompt.context_files, "prompt.context_files", &err)?;

    let duration = |d: Option<Spanned<String>>, key: &str| -> Result<_, WorkflowError> {
        let Some(d) = d else { return Ok(None) };
        let at = d.span().start;
        let text = d.get_ref().trim();
        let value = humantime::parse_duration(text).map_err(|e| {
            err(
                at,
                format!(
                    "agent.{key}: `{text}` is not a duration ({e}); write it like \"90s\", \"10m\" \
                     or \"1h 30m\""
                ),
            )
        })?;
        if value.is_zero() {
            return Err(err(
                at,
                format!(
                    "agent.{key} must be more than 0 (a zero limit would stop the agent at once); \
                     write it like \"45m\", or leave it out to use the settings' value"
                ),
            ));
        }
        Ok(Some((value, at)))
    };
    let timeout = duration(raw.agent.timeout, "timeout")?;
    let stall_timeout = duration(raw.agent.stall_timeout, "stall_timeout")?;
    let soft_timeout = duration(raw.agent.soft_timeout, "soft_timeout")?;
    if let (Some((soft, at)), Some((hard, _))) = (soft_timeout, timeout)
        && soft >= hard
    {
        return Err(err(
            at,
            format!(
                "agent.soft_timeout ({}) must be less than agent.timeout ({}): the soft limit \
                 warns the agent before the hard one stops it",
                humantime::format_duration(soft),
                humantime::format_duration(hard)
            ),
        ));
    }
    let model = match raw.agent.model {
        None => None,
        Some(m) if m.get_ref().trim().is_empty() => {
            return Err(err(
                m.span().start,
                "agent.model is empty; name a model like \"provider/model-id\", or leave the key \
                 out to use the settings' model"
                    .into(),
            ));
        }
        Some(m) => Some(m.into_inner()),
    };
    let max_cost_usd = match raw.agent.max_cost_usd {
        None => None,
        Some(c) if !c.get_ref().is_finite() || *c.get_ref() <= 0.0 => {
            return Err(err(
                c.span().start,
                format!(
                    "agent.max_cost_usd must be a positive number of dollars, not {}",
                    c.get_ref()
                ),
            ));
        }
        Some(c) => Some(c.into_inner()),
    };

    Ok((
        Workflow {
            setup: Setup {
                commands,
                cache_key,
            },
            verify,
            prompt: PromptSpec {
                template,
                context_files,
            },
            agent: AgentOverrides {
                timeout: timeout.map(|(d, _)| d),
                stall_timeout: stall_timeout.map(|(d, _)| d),
                soft_timeout: soft_timeout.map(|(d, _)| d),
                model,
                max_cost_usd,
            },
        },
        Places {
            template: template_at,
            context_files: context_files_at,
            context: context_at,
            cache_key: cache_key_at,
        },
    ))
}

/// An argv must name a program: no empty list, no empty first element.
fn check_argv(argv: &[String], key: &str, example: &str) -> Result<(), String> {
    match argv.first() {
        None => Err(format!(
            "{key} is empty; write the command as an argv list, e.g. {example}"
        )),
        Some(p) if p.trim().is_empty() => Err(format!(
            "{key} has an empty program name; its first element is the program, e.g. {example}"
        )),
        Some(_) => Ok(()),
    }
}

/// A list of repository paths, each cleaned, with where each is written.
fn paths(
    list: Option<Spanned<Vec<Spanned<String>>>>,
    key: &str,
    err: &dyn Fn(usize, String) -> WorkflowError,
) -> Result<(Vec<String>, Vec<usize>), WorkflowError> {
    let mut out = Vec::new();
    let mut places = Vec::new();
    for p in list.map(Spanned::into_inner).unwrap_or_default() {
        let at = p.span().start;
        out.push(clean_path(p.get_ref(), key).map_err(|m| err(at, m))?);
        places.push(at);
    }
    Ok((out, places))
}

/// A path inside the repository, relative to its root, as git names it (`./` dropped). Absolute
/// paths and `..` would read outside the commit, so they are refused.
fn clean_path(path: &str, key: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "{key}: `{path}` goes up with `..`; name a file inside the repository, \
                     relative to its root"
                ));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "{key}: `{path}` is absolute; name a file inside the repository, relative to \
                     its root (e.g. \"AGENTS.md\")"
                ));
            }
        }
    }
    if parts.is_empty() {
        return Err(format!(
            "{key}: `{path}` names no file; name a file relative to the repository's root"
        ));
    }
    Ok(parts.join("/"))
}

/// Reads `.cwo/workflow.toml` at `rev` in the git repository `root` (via git, not the working
/// tree), with the template, context files and cache_key files it names read from that same
/// commit. Ok(None): the commit has no such file.
pub(crate) async fn load(root: &Path, rev: &str) -> Result<Option<RepoWorkflow>, WorkflowError> {
    let git_err = |source: GitError| WorkflowError::Git {
        root: root.display().to_string(),
        rev: rev.to_string(),
        source: Box::new(source),
    };
    let commit = git::rev_parse(root, rev).await.map_err(git_err)?;
    let Some(bytes) = git::show_file(root, &commit, WORKFLOW_PATH)
        .await
        .map_err(git_err)?
    else {
        return Ok(None);
    };
    let path = root.join(WORKFLOW_PATH).display().to_string();
    let origin = Origin {
        path: &path,
        commit: Some(&commit),
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return Err(origin.invalid(
                "",
                0,
                format!(
                    "the file is not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ),
            ));
        }
    };
    let (file, places) = parse_placed(&text, &origin)?;
    let err = |offset: usize, message: String| origin.invalid(&text, offset, message);
    let at = short(&commit);

    // A named file that is missing at the commit: the user added it to the working tree only, or
    // misspelt it.
    let missing = |key: &str, p: &str| {
        format!(
            "{key}: `{p}` does not exist at commit {at}; commit it (`git add {p}`), or fix the path"
        )
    };
    let read_text = async |key: &str, p: &str, offset: usize| -> Result<String, WorkflowError> {
        let bytes = git::show_file(root, &commit, p)
            .await
            .map_err(git_err)?
            .ok_or_else(|| err(offset, missing(key, p)))?;
        String::from_utf8(bytes).map_err(|_| {
            err(
                offset,
                format!("{key}: `{p}` is not UTF-8 text; the prompt can only include text"),
            )
        })
    };

    let template = match (&file.prompt.template, places.template) {
        (Some(p), Some(offset)) => Some(read_text("prompt.template", p, offset).await?),
        _ => None,
    };
    let mut context = Vec::with_capacity(file.prompt.context_files.len());
    for (p, &offset) in file.prompt.context_files.iter().zip(&places.context) {
        context.push((
            p.clone(),
            read_text("prompt.context_files", p, offset).await?,
        ));
    }
    let total: usize = context.iter().map(|(_, t)| t.len()).sum();
    if total > MAX_CONTEXT_BYTES {
        return Err(WorkflowError::Invalid {
            location: origin.location(&text, places.context_files.unwrap_or(0)),
            message: format!(
                "prompt.context_files add up to {} KiB at commit {at}, more than the {} KiB a \
                 prompt can carry",
                total.div_ceil(1024),
                MAX_CONTEXT_BYTES / 1024
            ),
            hint: "keep AGENTS.md and the other context files short: they are prepended to every \
                   prompt; link to longer documents from them instead"
                .into(),
        });
    }

    let mut blobs = Vec::with_capacity(file.setup.cache_key.len());
    for (p, &offset) in file.setup.cache_key.iter().zip(&places.cache_key) {
        let id = git::blob_id(root, &commit, p)
            .await
            .map_err(git_err)?
            .ok_or_else(|| err(offset, missing("setup.cache_key", p)))?;
        blobs.push((p.clone(), id));
    }
    let cache_key = setup_cache_key(&file.setup.commands, &blobs);

    Ok(Some(RepoWorkflow {
        file,
        commit,
        template,
        context,
        cache_key,
    }))
}

/// Namespace of the setup cache key's digest (fixed, so a key stays the same across versions).
const CACHE_KEY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6377_6f2d_7365_7475_702d_6361_6368_6531);

/// The digest that decides whether setup can be skipped: the commands and each cache_key file's
/// path and blob id, as one unambiguous JSON document, hashed with SHA-1 (uuid v5, already a
/// dependency; this is a cache key, not a security boundary). None when either list is empty.
fn setup_cache_key(commands: &[Vec<String>], blobs: &[(String, String)]) -> Option<String> {
    if commands.is_empty() || blobs.is_empty() {
        return None;
    }
    let doc = serde_json::json!({ "commands": commands, "cache_key": blobs });
    let digest = uuid::Uuid::new_v5(&CACHE_KEY_NAMESPACE, doc.to_string().as_bytes());
    Some(digest.simple().to_string())
}

/// The acceptance criteria as the built-in template shows them.
/// The acceptance criteria as a numbered list (the built-in template's and a repository's).
pub(crate) fn criteria(task: &Task) -> String {
    if task.acceptance_criteria.is_empty() {
        return "- (none given: use the title and context)".to_string();
    }
    task.acceptance_criteria
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{}. {c}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Renders a repository's template: single-brace placeholders {title} {context} {criteria}
/// {feedback} {task_id} {branch}, substituted in one pass so task text that looks like a
/// placeholder stays as is. Unknown `{words}` and every other brace stay literally, so JSON in a
/// template survives.
pub(crate) fn render_template(template: &str, task: &Task, branch: &str, feedback: &str) -> String {
    let criteria = criteria(task);
    let mut out = String::with_capacity(template.len() + task.context.len() + feedback.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let name = after.find('}').map(|end| &after[..end]);
        let value = match name {
            Some("title") => Some(task.title.as_str()),
            Some("context") => Some(task.context.as_str()),
            Some("criteria") => Some(criteria.as_str()),
            Some("feedback") => Some(feedback),
            Some("task_id") => Some(task.id.as_str()),
            Some("branch") => Some(branch),
            _ => None,
        };
        match (value, name) {
            (Some(v), Some(name)) => {
                out.push_str(v);
                rest = &after[name.len() + 1..];
            }
            // Not a placeholder: keep this brace and look again just after it, so `{"a": {title}}`
            // still fills the inner placeholder.
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The context files as a preamble prepended to every prompt, each under a header naming its
/// path. Empty when there are none.
pub(crate) fn context_preamble(context: &[(String, String)]) -> String {
    if context.is_empty() {
        return String::new();
    }
    let mut out = String::from("# Repository context\n\n");
    for (path, text) in context {
        out.push_str(&format!("## {path}\n\n{}\n\n", text.trim_end()));
    }
    out.push_str("---\n\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::Priority;

    const FULL: &str = r#"# .cwo/workflow.toml
[setup]
commands = [["npm", "ci"]]
cache_key = ["package-lock.json"]
[verify]
command = ["npm", "test"]
push_on_failure = false
[prompt]
template = ".cwo/prompt.md"
context_files = ["AGENTS.md"]
[agent]
timeout = "45m"
stall_timeout = "10m"
soft_timeout = "30m"
model = "provider/model-id"
max_cost_usd = 2.0
"#;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn task() -> Task {
        Task {
            id: "p-1".into(),
            title: "Fix {context} parsing".into(),
            context: "The {title} is {feedback}".into(),
            acceptance_criteria: vec!["tests pass".into(), "no {branch}".into()],
            priority: Priority::High,
            state: "pending".into(),
            blocked_reason: String::new(),
            depends_on: vec![],
            tags: vec![],
            issue: None,
            waiting_on: vec![],
            model_override: String::new(),
            model_size: String::new(),
        }
    }

    /// The error's location and message, for asserting on both.
    fn invalid(r: Result<Workflow, WorkflowError>) -> (String, String) {
        match r {
            Err(WorkflowError::Invalid {
                location, message, ..
            }) => (location, message),
            other => panic!("expected an invalid file, got {other:?}"),
        }
    }

    fn parse_err(text: &str) -> (String, String) {
        invalid(parse(text, "w.toml"))
    }

    #[test]
    fn parses_the_full_example() {
        let w = parse(FULL, "w.toml").unwrap();
        assert_eq!(
            w,
            Workflow {
                setup: Setup {
                    commands: vec![vec!["npm".into(), "ci".into()]],
                    cache_key: vec!["package-lock.json".into()],
                },
                verify: Some(Verify {
                    command: vec!["npm".into(), "test".into()],
                    push_on_failure: false,
                }),
                prompt: PromptSpec {
                    template: Some(".cwo/prompt.md".into()),
                    context_files: vec!["AGENTS.md".into()],
                },
                agent: AgentOverrides {
                    timeout: Some(Duration::from_secs(45 * 60)),
                    stall_timeout: Some(Duration::from_secs(10 * 60)),
                    soft_timeout: Some(Duration::from_secs(30 * 60)),
                    model: Some("provider/model-id".into()),
                    max_cost_usd: Some(2.0),
                },
            }
        );
    }

    #[test]
    fn every_key_is_optional() {
        assert_eq!(parse("", "w.toml").unwrap(), Workflow::default());
        let w = parse(
            "[verify]\ncommand = [\"make\", \"check\"]\n[agent]\nmax_cost_usd = 3\n",
            "w",
        )
        .unwrap();
        assert_eq!(
            w.verify,
            Some(Verify {
                command: vec!["make".into(), "check".into()],
                push_on_failure: false
            })
        );
        assert_eq!(w.agent.max_cost_usd, Some(3.0));
        assert_eq!(w.setup, Setup::default());
    }

    #[test]
    fn syntax_unknown_keys_and_wrong_types_name_line_and_column() {
        let (loc, msg) = parse_err("[setup]\ncommands = [[\"a\"]]\ncache = [\"x\"]\n");
        assert_eq!(loc, "w.toml:3:1");
        assert!(msg.contains("cache"), "{msg}");
        let (loc, _) = parse_err("[prompt]\n[colour]\n");
        assert!(loc.starts_with("w.toml:2:"), "{loc}");
        let (loc, _) = parse_err("[verify]\npush_on_failure = \"yes\"\n");
        assert_eq!(loc, "w.toml:2:19");
        let (loc, _) = parse_err("[agent]\ntimeout = \n");
        assert!(loc.starts_with("w.toml:2:"), "{loc}");
    }

    #[test]
    fn empty_argv_and_program_are_refused_at_their_line() {
        let (loc, msg) = parse_err("[setup]\ncommands = [\n  [\"npm\", \"ci\"],\n  [],\n]\n");
        assert_eq!(loc, "w.toml:4:3");
        assert!(msg.contains("setup.commands[1] is empty"), "{msg}");
        let (loc, msg) = parse_err("[setup]\ncommands = [[\" \", \"x\"]]\n");
        assert_eq!(loc, "w.toml:2:13");
        assert!(msg.contains("empty program name"), "{msg}");
        let (loc, msg) = parse_err("\n[verify]\ncommand = []\n");
        assert_eq!(loc, "w.toml:3:11");
        assert!(msg.contains("verify.command is empty"), "{msg}");
        // A [verify] section without a command has nothing to run.
        let (loc, msg) = parse_err("[setup]\n\n[verify]\npush_on_failure = true\n");
        assert!(loc.starts_with("w.toml:3:"), "{loc}");
        assert!(msg.contains("verify.command is empty"), "{msg}");
    }

    #[test]
    fn bad_durations_are_refused_at_their_line() {
        let (loc, msg) = parse_err("[agent]\ntimeout = \"45 mins please\"\n");
        assert_eq!(loc, "w.toml:2:11");
        assert!(msg.contains("is not a duration"), "{msg}");
        let (loc, msg) = parse_err("[agent]\ntimeout = \"1h\"\nstall_timeout = \"0s\"\n");
        assert_eq!(loc, "w.toml:3:17");
        assert!(
            msg.contains("agent.stall_timeout must be more than 0"),
            "{msg}"
        );
        let (loc, msg) = parse_err("[agent]\nsoft_timeout = \"0m\"\n");
        assert_eq!(loc, "w.toml:2:16");
        assert!(
            msg.contains("agent.soft_timeout must be more than 0"),
            "{msg}"
        );
        let (loc, msg) = parse_err("[agent]\nsoft_timeout = \"45m\"\ntimeout = \"45m\"\n");
        assert_eq!(loc, "w.toml:2:16");
        assert!(msg.contains("must be less than agent.timeout"), "{msg}");
        // Either limit alone is fine.
        parse("[agent]\nsoft_timeout = \"2h\"\n", "w").unwrap();
    }

    #[test]
    fn bad_cost_and_model_are_refused_at_their_line() {
        for bad in ["0.0", "-1", "nan", "inf"] {
            let (loc, msg) = parse_err(&format!("[agent]\n\nmax_cost_usd = {bad}\n"));
            assert_eq!(loc, "w.toml:3:16", "{bad}");
            assert!(msg.contains("positive number of dollars"), "{msg}");
        }
        let (loc, msg) = parse_err("[agent]\nmodel = \"\"\n");
        assert_eq!(loc, "w.toml:2:9");
        assert!(msg.contains("agent.model is empty"), "{msg}");
    }

    #[test]
    fn paths_outside_the_repository_are_refused_at_their_line() {
        let (loc, msg) = parse_err("[prompt]\ntemplate = \"/etc/prompt.md\"\n");
        assert_eq!(loc, "w.toml:2:12");
        assert!(msg.contains("is absolute"), "{msg}");
        let (loc, msg) = parse_err("[prompt]\ncontext_files = [\"AGENTS.md\", \"docs/../../x\"]\n");
        assert_eq!(loc, "w.toml:2:31");
        assert!(
            msg.contains("prompt.context_files") && msg.contains(".."),
            "{msg}"
        );
        let (loc, msg) = parse_err("[setup]\ncommands = [[\"make\"]]\ncache_key = [\"../lock\"]\n");
        assert_eq!(loc, "w.toml:3:14");
        assert!(msg.contains("setup.cache_key"), "{msg}");
        let (_, msg) = parse_err("[prompt]\ntemplate = \".\"\n");
        assert!(msg.contains("names no file"), "{msg}");
        // `./` is dropped so git names the same file.
        let w = parse("[prompt]\ntemplate = \"./.cwo//prompt.md\"\n", "w").unwrap();
        assert_eq!(w.prompt.template.as_deref(), Some(".cwo/prompt.md"));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let (loc, _) = parse_err("# café\n[agent]\nmodel = \"\" # é\n");
        assert_eq!(loc, "w.toml:3:9");
        assert_eq!(line_col("é = 1", 2), (1, 2));
    }

    /// A throwaway repository with git's identity given on each commit.
    struct Repo(tempfile::TempDir);

    impl Repo {
        fn new() -> Repo {
            let r = Repo(tempfile::tempdir().unwrap());
            r.git(&["init", "-q"]);
            r
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        fn git(&self, args: &[&str]) -> String {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(self.path())
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        }

        fn write(&self, path: &str, content: impl AsRef<[u8]>) {
            let p = self.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }

        /// Writes the files and commits them; returns the commit.
        fn commit(&self, files: &[(&str, &str)]) -> String {
            for (p, c) in files {
                self.write(p, c);
            }
            self.git(&["add", "-A"]);
            self.git(&["commit", "-q", "--allow-empty", "-m", "c"]);
            self.git(&["rev-parse", "HEAD"])
        }

        fn load(&self, rev: &str) -> Result<Option<RepoWorkflow>, WorkflowError> {
            rt().block_on(load(self.path(), rev))
        }
    }

    const SETUP: &str =
        "[setup]\ncommands = [[\"npm\", \"ci\"]]\ncache_key = [\"package-lock.json\"]\n";

    #[test]
    fn load_reads_the_commit_and_the_files_it_names() {
        let repo = Repo::new();
        let c1 = repo.commit(&[
            (WORKFLOW_PATH, FULL),
            (".cwo/prompt.md", "Do {title}"),
            ("AGENTS.md", "Run npm test.\n"),
            ("package-lock.json", "{}"),
        ]);
        let w = repo.load("HEAD").unwrap().unwrap();
        assert_eq!(w.commit, c1);
        assert_eq!(w.file, parse(FULL, "w").unwrap());
        assert_eq!(w.template.as_deref(), Some("Do {title}"));
        assert_eq!(
            w.context,
            vec![("AGENTS.md".to_string(), "Run npm test.\n".to_string())]
        );
        assert!(w.cache_key.as_ref().is_some_and(|k| k.len() == 32));

        // Edits in the working tree, staged or not, are not the commit's.
        repo.write(WORKFLOW_PATH, "[agent]\nmodel = \"\"\n");
        repo.write(".cwo/prompt.md", "changed");
        repo.write("AGENTS.md", "changed");
        repo.git(&["add", "AGENTS.md"]);
        let again = repo.load("HEAD").unwrap().unwrap();
        assert_eq!(again, w);
        // Committing them is what takes effect (and the error names the commit).
        let c2 = repo.commit(&[]);
        let (loc, _) = invalid(repo.load("HEAD").map(|_| Workflow::default()));
        assert!(
            loc.ends_with(&format!(":2:9 (at commit {})", &c2[..12])),
            "{loc}"
        );
        assert!(loc.starts_with(&repo.path().join(WORKFLOW_PATH).display().to_string()));
        // An older commit still reads as it was.
        assert_eq!(repo.load(&c1).unwrap().unwrap(), w);
    }

    #[test]
    fn a_commit_without_the_file_has_no_workflow() {
        let repo = Repo::new();
        let c1 = repo.commit(&[("README.md", "hi")]);
        // Present only in the working tree: not the commit's.
        repo.write(WORKFLOW_PATH, FULL);
        assert_eq!(repo.load("HEAD").unwrap(), None);
        assert_eq!(repo.load(&c1).unwrap(), None);
        // A directory where the file would be is not the file either.
        std::fs::remove_file(repo.path().join(WORKFLOW_PATH)).unwrap();
        repo.commit(&[(".cwo/workflow.toml/x", "")]);
        assert_eq!(repo.load("HEAD").unwrap(), None);
    }

    #[test]
    fn an_unknown_commit_is_a_git_error() {
        let repo = Repo::new();
        repo.commit(&[("README.md", "hi")]);
        let e = repo.load("no-such-branch").unwrap_err();
        assert!(matches!(e, WorkflowError::Git { .. }), "{e:?}");
        assert!(e.hint().contains("commit exists"), "{}", e.hint());
    }

    #[test]
    fn files_missing_at_the_commit_are_named_with_the_key_line() {
        let repo = Repo::new();
        let text = "[prompt]\ntemplate = \".cwo/prompt.md\"\ncontext_files = [\"AGENTS.md\"]\n";
        // The template exists only in the working tree.
        let c = repo.commit(&[(WORKFLOW_PATH, text), ("AGENTS.md", "a")]);
        repo.write(".cwo/prompt.md", "x");
        let e = repo.load("HEAD").unwrap_err();
        let WorkflowError::Invalid {
            location,
            message,
            hint,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(location.contains(":2:12 (at commit "), "{location}");
        assert!(
            message.contains("`.cwo/prompt.md` does not exist at commit")
                && message.contains(&c[..12]),
            "{message}"
        );
        assert!(hint.contains("commit the fix"), "{hint}");
        assert_eq!(e.hint(), hint);

        let repo = Repo::new();
        repo.commit(&[
            (
                WORKFLOW_PATH,
                "[prompt]\ncontext_files = [\"AGENTS.md\", \"NOTES.md\"]\n",
            ),
            ("AGENTS.md", "a"),
        ]);
        let (loc, msg) = invalid(repo.load("HEAD").map(|_| Workflow::default()));
        assert!(loc.contains(":2:31 "), "{loc}");
        assert!(
            msg.contains("prompt.context_files: `NOTES.md` does not exist"),
            "{msg}"
        );

        let repo = Repo::new();
        repo.commit(&[(WORKFLOW_PATH, SETUP)]);
        let (loc, msg) = invalid(repo.load("HEAD").map(|_| Workflow::default()));
        assert!(loc.contains(":3:14 "), "{loc}");
        assert!(
            msg.contains("setup.cache_key: `package-lock.json` does not exist"),
            "{msg}"
        );
    }

    #[test]
    fn non_utf8_and_oversized_context_are_refused() {
        let repo = Repo::new();
        repo.commit(&[(WORKFLOW_PATH, "[prompt]\ntemplate = \"t.md\"\n")]);
        repo.write("t.md", [0xff_u8, 0xfe, b'x']);
        repo.commit(&[]);
        let (loc, msg) = invalid(repo.load("HEAD").map(|_| Workflow::default()));
        assert!(loc.contains(":2:12 "), "{loc}");
        assert!(msg.contains("`t.md` is not UTF-8"), "{msg}");

        let repo = Repo::new();
        let half = "a".repeat(MAX_CONTEXT_BYTES / 2);
        repo.commit(&[
            (
                WORKFLOW_PATH,
                "\n[prompt]\ncontext_files = [\"A.md\", \"B.md\"]\n",
            ),
            ("A.md", &half),
            ("B.md", &half),
        ]);
        assert!(
            repo.load("HEAD").unwrap().is_some(),
            "exactly the limit is fine"
        );
        repo.commit(&[("B.md", &format!("{half}b"))]);
        let e = repo.load("HEAD").unwrap_err();
        let WorkflowError::Invalid {
            location,
            message,
            hint,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(location.contains(":3:17 "), "{location}");
        assert!(message.contains("more than the 256 KiB"), "{message}");
        assert!(hint.contains("keep AGENTS.md"), "{hint}");
    }

    #[test]
    fn the_cache_key_follows_the_lockfile_and_the_commands_only() {
        let repo = Repo::new();
        repo.commit(&[(WORKFLOW_PATH, SETUP), ("package-lock.json", "{\"v\": 1}")]);
        let key = |repo: &Repo| repo.load("HEAD").unwrap().unwrap().cache_key.unwrap();
        let k1 = key(&repo);
        // An unrelated file changes: setup can still be skipped.
        repo.commit(&[("src/main.js", "console.log(1)")]);
        assert_eq!(key(&repo), k1);
        // A working tree edit to the lockfile is not the commit's.
        repo.write("package-lock.json", "{\"v\": 2}");
        assert_eq!(key(&repo), k1);
        // The committed lockfile changes.
        repo.commit(&[]);
        let k2 = key(&repo);
        assert_ne!(k2, k1);
        // The commands change.
        repo.commit(&[(WORKFLOW_PATH, &SETUP.replace("\"ci\"", "\"install\""))]);
        let k3 = key(&repo);
        assert_ne!(k3, k2);
        assert_ne!(k3, k1);
        // Back to the first content and commands: the first key again.
        repo.commit(&[(WORKFLOW_PATH, SETUP), ("package-lock.json", "{\"v\": 1}")]);
        assert_eq!(key(&repo), k1);
    }

    #[test]
    fn no_cache_key_without_commands_or_files() {
        let repo = Repo::new();
        repo.commit(&[(WORKFLOW_PATH, "[setup]\ncommands = [[\"make\"]]\n")]);
        assert_eq!(repo.load("HEAD").unwrap().unwrap().cache_key, None);
        repo.commit(&[
            (WORKFLOW_PATH, "[setup]\ncache_key = [\"l\"]\n"),
            ("l", "x"),
        ]);
        assert_eq!(repo.load("HEAD").unwrap().unwrap().cache_key, None);
    }

    #[test]
    fn the_cache_key_tells_argv_boundaries_apart() {
        let blobs = [("l".to_string(), "abc".to_string())];
        let a = setup_cache_key(&[vec!["a b".into()]], &blobs);
        let b = setup_cache_key(&[vec!["a".into(), "b".into()]], &blobs);
        let c = setup_cache_key(&[vec!["a".into()], vec!["b".into()]], &blobs);
        assert!(a.is_some());
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_ne!(a, c);
    }

    #[test]
    fn render_substitutes_in_one_pass() {
        let t = task();
        let out = render_template(
            "{task_id} on {branch}: {title}\n{context}\n{criteria}\nFeedback: {feedback}",
            &t,
            "cwo/p-1",
            "use {criteria} {task_id}",
        );
        assert_eq!(
            out,
            "p-1 on cwo/p-1: Fix {context} parsing\nThe {title} is {feedback}\n\
             1. tests pass\n2. no {branch}\nFeedback: use {criteria} {task_id}"
        );
    }

    #[test]
    fn render_keeps_other_braces() {
        let mut t = task();
        t.acceptance_criteria.clear();
        let template =
            "{\"id\": \"{task_id}\", \"n\": {1}} { title } {unknown} {{title}} {criteria} {\n}{";
        assert_eq!(
            render_template(template, &t, "b", ""),
            "{\"id\": \"p-1\", \"n\": {1}} { title } {unknown} {Fix {context} parsing} \
             - (none given: use the title and context) {\n}{"
        );
        assert_eq!(render_template("", &t, "b", ""), "");
        assert_eq!(render_template("no braces", &t, "b", ""), "no braces");
    }

    #[test]
    fn preamble_names_each_file() {
        assert_eq!(context_preamble(&[]), "");
        let p = context_preamble(&[
            ("AGENTS.md".into(), "Run make.\n\n".into()),
            ("docs/style.md".into(), "Tabs.".into()),
        ]);
        assert_eq!(
            p,
            "# Repository context\n\n## AGENTS.md\n\nRun make.\n\n## docs/style.md\n\nTabs.\n\n---\n\n"
        );
    }
}
