//! Tracker fixtures for the contract suite (`tests/test_tracker_contract.rs`): each one owns a
//! temporary task store, writes tasks into it the way its tool does, and opens trackers on it.
//! A new tracker kind joins the suite by implementing [`TrackerFixture`].

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cwo::github::{Credentials, Github, RepoRef, TokenSource};
use cwo::tracker::frontloop::Frontloop;
use cwo::tracker::github::GithubTracker;
use cwo::tracker::juggle::Juggle;
use cwo::tracker::{Priority, Tracker};

use super::fake_github::FakeGithub;

/// A task to put into a store.
pub struct TaskSpec {
    pub title: String,
    pub priority: Priority,
    pub criteria: Vec<String>,
    pub context: String,
}

impl TaskSpec {
    pub fn new(title: &str, priority: Priority) -> TaskSpec {
        TaskSpec {
            title: title.into(),
            priority,
            criteria: vec![format!("{title} works"), "the tests pass".into()],
            context: format!("Why {title} matters."),
        }
    }
}

pub trait TrackerFixture {
    fn name(&self) -> &str;
    /// A new tracker on the store, as another controller would open it.
    fn tracker(&self) -> Arc<dyn Tracker>;
    /// Adds a ready task after every task added before; returns its id.
    fn add(&self, spec: &TaskSpec) -> String;
    /// Adds an entry the tracker cannot read; returns the file name its problem names. `None`:
    /// the tracker's store has no entry it could fail to read (GitHub: an issue is JSON the API
    /// made, and every part of it the tracker reads has a fallback).
    fn add_unreadable(&self) -> Option<String>;
    /// Task `id`'s stored text (the ball's line, the task's file), where notes are recorded.
    fn record(&self, id: &str) -> String;
    /// Whether a claim of a task another worker holds fails with `Taken` (frontloop, GitHub)
    /// rather than being taken as a re-claim (juggle, where one controller per project is
    /// guaranteed by the journal's controller lock).
    fn exclusive_claims(&self) -> bool;
    /// An id of the tracker's own form that no task has.
    fn missing_id(&self) -> String {
        "no-such-task".into()
    }
}

pub fn juggle_priority(p: Priority) -> &'static str {
    match p {
        Priority::Low => "low",
        Priority::Medium => "medium",
        Priority::High => "high",
        Priority::Urgent => "urgent",
    }
}

/// juggle 0.4's `.juggle/balls.jsonl`, written line by line as juggle does.
pub struct JuggleFixture {
    pub tmp: tempfile::TempDir,
    added: Cell<usize>,
}

impl JuggleFixture {
    pub fn new() -> JuggleFixture {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join(".juggle")).unwrap();
        JuggleFixture {
            tmp,
            added: Cell::new(0),
        }
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join(".juggle")
    }

    fn append(&self, line: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("balls.jsonl"))
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }
}

impl TrackerFixture for JuggleFixture {
    fn name(&self) -> &str {
        "juggle"
    }

    fn tracker(&self) -> Arc<dyn Tracker> {
        Arc::new(Juggle::new(self.dir(), ""))
    }

    fn add(&self, spec: &TaskSpec) -> String {
        let n = self.added.get() + 1;
        self.added.set(n);
        let id = format!("proj-{n:08x}");
        let ball = serde_json::json!({
            "id": id,
            "context": spec.context,
            "title": spec.title,
            "acceptance_criteria": spec.criteria,
            "priority": juggle_priority(spec.priority),
            "state": "pending",
            "started_at": "2026-01-17T10:15:42.120934811+01:00",
            "last_activity": "2026-01-17T10:15:42.120934811+01:00",
            "update_count": 0,
        });
        self.append(&ball.to_string());
        id
    }

    fn add_unreadable(&self) -> Option<String> {
        self.append(r#"{"id": "proj-broken", "title": not json"#);
        Some("balls.jsonl".into())
    }

    fn record(&self, id: &str) -> String {
        let text = std::fs::read_to_string(self.dir().join("balls.jsonl")).unwrap();
        text.lines()
            .find(|l| l.contains(&format!(r#""id":"{id}""#)))
            .unwrap_or_else(|| panic!("no ball {id} in {text}"))
            .to_string()
    }

    fn exclusive_claims(&self) -> bool {
        false
    }
}

/// frontloop's `.frontloop/<epic>/…/*.md` files, named as `fl` names them.
pub struct FrontloopFixture {
    pub tmp: tempfile::TempDir,
    added: Cell<u32>,
}

pub fn fl_priority(p: Priority) -> (&'static str, u32) {
    match p {
        Priority::Urgent => ("critical", 1),
        Priority::High => ("high", 2500),
        Priority::Medium => ("medium", 5000),
        Priority::Low => ("low", 7500),
    }
}

/// A task file's text: front matter, Goal, Acceptance Criteria.
pub fn fl_task(spec: &TaskSpec) -> String {
    let criteria: String = spec
        .criteria
        .iter()
        .map(|c| format!("- [ ] {c}\n"))
        .collect();
    format!(
        "---\ntitle: \"{}\"\npriority: {}\n---\n\n## Goal\n\n{}\n\n## Acceptance Criteria\n\n{criteria}",
        spec.title,
        fl_priority(spec.priority).0,
        spec.context
    )
}

/// The file-name form of a title: `Add login` → `add-login`.
pub fn slug(title: &str) -> String {
    let s: String = title
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.trim_matches('-').to_string()
}

impl FrontloopFixture {
    pub fn new() -> FrontloopFixture {
        let tmp = tempfile::tempdir().unwrap();
        for stage in ["clarify", "ready", "in_progress", "done"] {
            std::fs::create_dir_all(tmp.path().join(".frontloop/default").join(stage)).unwrap();
        }
        FrontloopFixture {
            tmp,
            added: Cell::new(0),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.tmp.path().join(".frontloop")
    }

    /// The one file of task `name` (its file stem without prefix) under `dir`, in any state.
    pub fn find(dir: &Path, name: &str) -> Option<PathBuf> {
        for stage in ["clarify", "ready", "in_progress", "done"] {
            let Ok(read) = std::fs::read_dir(dir.join(stage)) else {
                continue;
            };
            for e in read {
                let path = e.unwrap().path();
                let file = path.file_name().unwrap().to_string_lossy().to_string();
                if file.ends_with(&format!("-{name}.md")) || file == format!("{name}.md") {
                    return Some(path);
                }
            }
        }
        None
    }
}

impl TrackerFixture for FrontloopFixture {
    fn name(&self) -> &str {
        "frontloop"
    }

    fn tracker(&self) -> Arc<dyn Tracker> {
        Arc::new(Frontloop::new(self.root(), String::new()))
    }

    fn add(&self, spec: &TaskSpec) -> String {
        let n = self.added.get() + 1;
        self.added.set(n);
        let id = slug(&spec.title);
        let prefix = fl_priority(spec.priority).1 + n;
        let path = self
            .root()
            .join(format!("default/ready/{prefix:04}-{id}.md"));
        std::fs::write(path, fl_task(spec)).unwrap();
        id
    }

    fn add_unreadable(&self) -> Option<String> {
        std::fs::write(
            self.root().join("default/ready/5999-broken.md"),
            "# No front matter\n\nJust notes.\n",
        )
        .unwrap();
        Some("5999-broken.md".into())
    }

    fn record(&self, id: &str) -> String {
        let path = Self::find(&self.root().join("default"), id)
            .unwrap_or_else(|| panic!("no file for task {id}"));
        std::fs::read_to_string(path).unwrap()
    }

    fn exclusive_claims(&self) -> bool {
        true
    }
}

/// GitHub issues with the queue label on a fake GitHub (`tests/common/fake_github.rs`), opened
/// by a person as the GitHub tracker's docs ask: a priority label, the context, and the
/// acceptance criteria as a task list under their heading. Each [`TrackerFixture::tracker`] is
/// another controller (its own client and controller id) on the same repository.
pub struct GithubFixture {
    /// The seed repository's directory (the fake's repository needs a first commit).
    pub tmp: tempfile::TempDir,
    pub fake: FakeGithub,
    controllers: Cell<u32>,
}

pub const GITHUB_TOKEN: &str = "ghp_cwoContractTokenDoNotLeak012345";
pub const GITHUB_QUEUE: &str = "cwo";

/// An issue's body with `spec`'s context and acceptance criteria.
pub fn gh_issue_body(spec: &TaskSpec) -> String {
    let criteria: String = spec
        .criteria
        .iter()
        .map(|c| format!("- [ ] {c}\n"))
        .collect();
    format!("{}\n\n## Acceptance criteria\n\n{criteria}", spec.context)
}

impl GithubFixture {
    pub fn new() -> GithubFixture {
        let tmp = tempfile::tempdir().unwrap();
        let seed = tmp.path().join("seed");
        std::fs::create_dir_all(&seed).unwrap();
        super::git(&seed, &["init", "-q", "-b", "main"]);
        std::fs::write(seed.join("README.md"), "hello\n").unwrap();
        super::git(&seed, &["add", "."]);
        super::git(&seed, &["commit", "-q", "-m", "init"]);
        let fake = FakeGithub::start(GITHUB_TOKEN, "cwo-bot");
        fake.create_repo("acme", "widgets", &seed);
        GithubFixture {
            tmp,
            fake,
            controllers: Cell::new(0),
        }
    }

    fn number(id: &str) -> u64 {
        id.parse()
            .unwrap_or_else(|_| panic!("GitHub task ids are issue numbers, not {id:?}"))
    }
}

impl TrackerFixture for GithubFixture {
    fn name(&self) -> &str {
        "github"
    }

    fn tracker(&self) -> Arc<dyn Tracker> {
        let n = self.controllers.get() + 1;
        self.controllers.set(n);
        let gh = Github::new(
            &self.fake.api_url(),
            RepoRef::parse("acme/widgets").unwrap(),
            Credentials::token(GITHUB_TOKEN.into(), TokenSource::Env("GH_TOKEN")),
        )
        .unwrap();
        Arc::new(GithubTracker::new(
            gh,
            GITHUB_QUEUE.into(),
            "cwo/".into(),
            format!("controller-{n}"),
        ))
    }

    fn add(&self, spec: &TaskSpec) -> String {
        let priority = format!("priority:{}", juggle_priority(spec.priority));
        self.fake
            .add_issue(
                &spec.title,
                &gh_issue_body(spec),
                &[GITHUB_QUEUE, priority.as_str()],
            )
            .to_string()
    }

    /// GitHub has no entry the tracker cannot read: an issue without a body has an empty
    /// context, one without a priority label is medium, one without criteria has none.
    fn add_unreadable(&self) -> Option<String> {
        None
    }

    /// The issue's state, labels and body, then every comment's body (cwo's status comment is
    /// where its notes go).
    fn record(&self, id: &str) -> String {
        let n = Self::number(id);
        let issue = self.fake.issue(n);
        let labels: Vec<&str> = issue["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["name"].as_str().unwrap())
            .collect();
        let mut out = format!(
            "#{n} {} ({})\nlabels: {}\n\n{}\n",
            issue["title"].as_str().unwrap_or_default(),
            issue["state"].as_str().unwrap_or_default(),
            labels.join(", "),
            issue["body"].as_str().unwrap_or_default()
        );
        for c in self.fake.comments(n).as_array().unwrap() {
            out.push_str(&format!(
                "\n--- comment {} by {}\n{}\n",
                c["id"],
                c["user"]["login"].as_str().unwrap_or_default(),
                c["body"].as_str().unwrap_or_default()
            ));
        }
        out
    }

    fn exclusive_claims(&self) -> bool {
        true
    }

    fn missing_id(&self) -> String {
        "9999".into()
    }
}
