//! The agent: its prompt, its argv (placeholders substituted inside elements, never through a
//! shell: DESIGN invariant 9), and how its run is judged.

pub(crate) mod detached;
pub(crate) mod limits;
pub(crate) mod phase;

use crate::tracker::Task;
use crate::transport::ExecStatus;

/// The built-in prompt template.
pub(crate) const DEFAULT_TEMPLATE: &str = "\
You are working on task {{id}} in this git repository, on branch {{branch}}.

# {{title}}

{{context}}

## Acceptance criteria
{{acceptance_criteria}}

## How to finish
- Make the smallest change that meets every acceptance criterion, and run the checks they name.
- Commit your work with git on the current branch (do not push, do not switch branches).
- If you cannot proceed (missing credentials, unclear requirement, broken environment), print a
  line `BLOCKED: <reason>` and stop.
";

/// Largest prompt passed as one argv element: Linux refuses single arguments over 128 KiB.
pub(crate) const MAX_ARG_PROMPT: usize = 120 * 1024;

pub(crate) fn render_prompt(template: &str, task: &Task, branch: &str) -> String {
    let criteria = crate::workflow::criteria(task);
    // One pass over the template, so text inside a task that looks like a placeholder stays as is.
    let mut out = String::with_capacity(template.len() + task.context.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let value = match after[..end].trim() {
            "id" => Some(task.id.as_str()),
            "title" => Some(task.title.as_str()),
            "context" => Some(task.context.as_str()),
            "acceptance_criteria" => Some(criteria.as_str()),
            "branch" => Some(branch),
            _ => None,
        };
        match value {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[start..start + 4 + end]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// Why the agent's command line cannot be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArgvError {
    #[error(
        "the prompt is {len} bytes, too long for one argument; use {{prompt_file}} in agent.command, or shorten the repository's context files"
    )]
    PromptTooLong { len: usize },
}

/// What the agent's command line is built from.
pub(crate) struct ArgvInputs<'a> {
    pub(crate) prompt: &'a str,
    pub(crate) prompt_file: &'a str,
    pub(crate) task_id: &'a str,
    pub(crate) workdir: &'a str,
    /// The model ("" = the agent's default).
    pub(crate) model: &'a str,
}

/// Substitutes `{prompt_file}`, `{prompt}`, `{task_id}`, `{workdir}` and `{model}` inside each
/// argv element; opencode also gets the model as `--model` ([`limits::with_model`]).
pub(crate) fn build_argv(
    command: &[String],
    inputs: &ArgvInputs<'_>,
) -> Result<Vec<String>, ArgvError> {
    let ArgvInputs {
        prompt,
        prompt_file,
        task_id,
        workdir,
        model,
    } = *inputs;
    let uses_inline = command.iter().any(|a| a.contains("{prompt}"));
    if uses_inline && prompt.len() > MAX_ARG_PROMPT {
        return Err(ArgvError::PromptTooLong { len: prompt.len() });
    }
    let argv = command
        .iter()
        .map(|a| {
            a.replace("{prompt_file}", prompt_file)
                .replace("{task_id}", task_id)
                .replace("{workdir}", workdir)
                .replace("{model}", model)
                .replace("{prompt}", prompt)
        })
        .collect();
    Ok(limits::with_model(
        argv,
        Some(model).filter(|m| !m.is_empty()),
    ))
}

/// Looks for `BLOCKED: <reason>` in one output line: plain text, juggle's
/// `<promise>BLOCKED: …</promise>`, or inside opencode's `--format json` text events.
pub(crate) fn blocked_marker(line: &str) -> Option<String> {
    let text: String = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) if v.get("type").and_then(|t| t.as_str()) == Some("text") => v
            .pointer("/part/text")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_string(),
        Ok(serde_json::Value::Object(_)) => return None,
        _ => line.to_string(),
    };
    text.lines().find_map(|l| {
        let l = l.trim().trim_start_matches("<promise>");
        let reason = l.strip_prefix("BLOCKED:")?;
        let reason = reason.trim().trim_end_matches("</promise>").trim();
        Some(if reason.is_empty() {
            "the agent reported BLOCKED without a reason".to_string()
        } else {
            reason.to_string()
        })
    })
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exit 0 and at least one commit.
    Done { commits: u64 },
    /// The agent printed a BLOCKED marker.
    Blocked(String),
    /// Anything else; retried.
    Failed(String),
    /// Stopped by the controller (shutdown); the ball goes back to pending.
    Aborted,
}

impl Outcome {
    /// Why a blocked or failed attempt ended that way.
    pub(crate) fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Blocked(r) | Outcome::Failed(r) => Some(r),
            _ => None,
        }
    }

    pub(crate) fn label(&self) -> &'static str {
        match self {
            Outcome::Done { .. } => "done",
            Outcome::Blocked(_) => "blocked",
            Outcome::Failed(_) => "failed",
            Outcome::Aborted => "aborted",
        }
    }
}

pub(crate) fn judge(
    status: ExecStatus,
    blocked: Option<String>,
    commits: u64,
    timeout: std::time::Duration,
) -> Outcome {
    if status == ExecStatus::Cancelled {
        return Outcome::Aborted;
    }
    if let Some(reason) = blocked {
        return Outcome::Blocked(reason);
    }
    match status {
        ExecStatus::Exited(0) if commits > 0 => Outcome::Done { commits },
        ExecStatus::Exited(0) => Outcome::Failed("the agent exited 0 but made no commit".into()),
        ExecStatus::TimedOut => Outcome::Failed(format!(
            "the agent timed out after {}",
            humantime::format_duration(timeout)
        )),
        ExecStatus::Exited(code) => Outcome::Failed(format!("the agent exited with status {code}")),
        ExecStatus::Signaled(sig) => {
            Outcome::Failed(format!("the agent was killed by signal {sig}"))
        }
        ExecStatus::Cancelled => Outcome::Aborted,
    }
}

/// The agent's closing summary: the last text it printed. opencode's `--format json` lines
/// carry text in `{"type":"text","part":{"text":…}}` events (the last one wins); any other agent's
/// log gives its last paragraph (the lines after the last blank line, at most 40). cwo's own
/// `[cwo] …` lines are not the agent's.
pub(crate) fn closing_summary(log: &str) -> String {
    let mut last_json_text = None;
    for line in log.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && v["type"] == "text"
            && let Some(t) = v["part"]["text"].as_str().or_else(|| v["text"].as_str())
            && !t.trim().is_empty()
        {
            last_json_text = Some(t.trim().to_string());
        }
    }
    if let Some(t) = last_json_text {
        return t;
    }
    let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with("[cwo]")).collect();
    let end = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(0, |i| i + 1);
    let start = lines[..end]
        .iter()
        .rposition(|l| l.trim().is_empty())
        .map_or(0, |i| i + 1)
        .max(end.saturating_sub(40));
    lines[start..end].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::Priority;

    fn task(title: &str, context: &str) -> Task {
        Task {
            id: "p-1".into(),
            title: title.into(),
            context: context.into(),
            acceptance_criteria: vec!["a".into(), "b {{id}}".into()],
            priority: Priority::High,
            state: "pending".into(),
            blocked_reason: String::new(),
            depends_on: vec![],
            tags: vec![],
            issue: None,
            model_override: String::new(),
            model_size: String::new(),
            waiting_on: vec![],
        }
    }

    #[test]
    fn prompt_substitutes_once() {
        let p = render_prompt(
            "{{ title }}|{{context}}|{{acceptance_criteria}}|{{nope}}|{{branch}}",
            &task("T {{context}}", "C"),
            "cwo/p-1",
        );
        assert_eq!(p, "T {{context}}|C|1. a\n2. b {{id}}|{{nope}}|cwo/p-1");
    }

    #[test]
    fn argv_placeholders_are_per_element() {
        let cmd: Vec<String> = ["agent", "--file={prompt_file}", "{prompt}"]
            .map(String::from)
            .to_vec();
        let inputs = |prompt| ArgvInputs {
            prompt,
            prompt_file: "/w/p.md",
            task_id: "p-1",
            workdir: "/w/repo",
            model: "",
        };
        let argv = build_argv(&cmd, &inputs("$(touch x) `y` \"q\"\nz {model}")).unwrap();
        assert_eq!(
            argv,
            ["agent", "--file=/w/p.md", "$(touch x) `y` \"q\"\nz {model}"]
        );
        let big = "x".repeat(MAX_ARG_PROMPT + 1);
        assert!(build_argv(&cmd, &inputs(&big)).is_err());
        let with_model: Vec<String> = ["a", "--model={model}"].map(String::from).to_vec();
        let argv = build_argv(
            &with_model,
            &ArgvInputs {
                model: "p/m",
                ..inputs("hi")
            },
        )
        .unwrap();
        assert_eq!(argv, ["a", "--model=p/m"]);
    }

    #[test]
    fn blocked_markers() {
        assert_eq!(
            blocked_marker("BLOCKED: no creds").as_deref(),
            Some("no creds")
        );
        assert_eq!(
            blocked_marker("<promise>BLOCKED: x y</promise>").as_deref(),
            Some("x y")
        );
        assert_eq!(
            blocked_marker(r#"{"type":"text","part":{"text":"I tried.\nBLOCKED: need a key"}}"#)
                .as_deref(),
            Some("need a key")
        );
        assert_eq!(
            blocked_marker(r#"{"type":"tool_use","part":{"state":{"input":"BLOCKED: fake"}}}"#),
            None
        );
        assert_eq!(blocked_marker("not BLOCKED: here"), None);
    }

    #[test]
    fn judging() {
        let t = std::time::Duration::from_secs(60);
        assert_eq!(
            judge(ExecStatus::Exited(0), None, 2, t),
            Outcome::Done { commits: 2 }
        );
        assert!(matches!(
            judge(ExecStatus::Exited(0), None, 0, t),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            judge(ExecStatus::Exited(0), Some("r".into()), 1, t),
            Outcome::Blocked(_)
        ));
        assert!(matches!(
            judge(ExecStatus::Signaled(9), None, 0, t),
            Outcome::Failed(_)
        ));
        assert_eq!(judge(ExecStatus::Cancelled, None, 0, t), Outcome::Aborted);
        assert!(
            matches!(judge(ExecStatus::TimedOut, None, 0, t), Outcome::Failed(m) if m.contains("timed out after 1m"))
        );
    }

    #[test]
    fn the_closing_summary_is_the_last_text_the_agent_printed() {
        let plain =
            "working\n\nstep 1\n\nDone: added the flag.\nTests pass.\n[cwo] agent ended: exit 0\n";
        assert_eq!(closing_summary(plain), "Done: added the flag.\nTests pass.");
        let json = concat!(
            "{\"type\":\"text\",\"part\":{\"text\":\"first\"}}\n",
            "{\"type\":\"tool_use\",\"part\":{}}\n",
            "{\"type\":\"text\",\"part\":{\"text\":\"I fixed the parser.\"}}\n",
        );
        assert_eq!(closing_summary(json), "I fixed the parser.");
        assert_eq!(closing_summary(""), "");
    }
}
