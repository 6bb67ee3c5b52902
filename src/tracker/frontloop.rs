//! frontloop's task files (reference/juggle.md, "frontloop"): one Markdown file per task under
//! `.frontloop/<epic>/{clarify,ready,in_progress,done}/`, the directory being the task's state.
//!
//! - Epics are the directories of `.frontloop/` that hold at least one state directory; the
//!   built-in epic is `default`, archived epics (`_archive/`) and hidden directories are ignored,
//!   and the legacy flat layout (`.frontloop/ready/` …) is read as the epic `default`.
//! - A task's id is its file name without `.md` and without the numeric order prefix (`5000-`),
//!   prefixed with `<epic>.` outside the `default` epic: `auth/ready/5000-add-login.md` is
//!   `auth.add-login`. It does not change when the file moves between state directories.
//! - Run order is the file-name prefix (`NNNN-`, or the legacy `1-`…`4-`), which encodes the
//!   priority; a file without one sorts with its priority's default prefix.
//! - A state change is one atomic `rename` of the file into the next state directory (so two
//!   controllers cannot both claim a task: only one rename of `ready/x.md` succeeds), followed by
//!   an atomic rewrite (temp file, fsync, rename) that appends a `> cwo: …` note to the body.
//!   The file's bytes before the note are never changed: unknown front-matter keys and the body
//!   survive every move byte for byte. A crash between the two steps leaves the task moved without
//!   its note, never lost and never copied.
//! - When one id has files in two state directories (a merge, a copy by hand), the one further
//!   along (`clarify` < `ready` < `in_progress` < `done`) counts and the others are problems; two
//!   files with one id in the same directory are both skipped.
//!
//! Front matter: no YAML crate is in the tree, so this reads the small subset frontloop writes —
//! flat `key: value` lines, the value plain, `"double-quoted"` or `'single-quoted'` — by hand.
//! `title` and `priority` must be such one-line scalars; anything else there (block scalars, flow
//! collections, anchors, lines that are not `key: value`) is a [`TrackerProblem`] naming its line,
//! never guessed at. Other keys are not interpreted (nested or list values included): cwo never
//! rewrites the front matter, so they survive as they are.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};

use super::{Priority, Task, Tracker, TrackerError, TrackerProblem, valid_task_id};

/// Receives each problem `list()` and `ready()` find, once per `Frontloop` value.
pub type ProblemSink = Arc<dyn Fn(&TrackerProblem) + Send + Sync>;

/// A task's state directory, in the order a task moves through them ("further along" is greater).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Stage {
    Clarify,
    Ready,
    InProgress,
    Done,
}

impl Stage {
    const ALL: [Stage; 4] = [Stage::Clarify, Stage::Ready, Stage::InProgress, Stage::Done];

    fn dir(self) -> &'static str {
        match self {
            Stage::Clarify => "clarify",
            Stage::Ready => "ready",
            Stage::InProgress => "in_progress",
            Stage::Done => "done",
        }
    }

    /// The task state the loop sees.
    fn state(self) -> &'static str {
        match self {
            Stage::Clarify => "clarify",
            Stage::Ready => "pending",
            Stage::InProgress => "in_progress",
            Stage::Done => "complete",
        }
    }
}

/// The epic the legacy flat layout and `default/` belong to; its ids carry no epic prefix.
const DEFAULT_EPIC: &str = "default";
/// Where frontloop keeps archived epics (ignored).
const ARCHIVE_DIR: &str = "_archive";

/// One task file that could be read.
#[derive(Debug, Clone)]
struct Entry {
    path: PathBuf,
    /// The epic's directory (the legacy layout's is the frontloop directory itself).
    epic_dir: PathBuf,
    epic: String,
    stage: Stage,
    file_name: String,
    /// The run order from the file-name prefix (or the priority's default prefix).
    order: u32,
    /// The worker named by the last `claimed by` note.
    claimed_by: Option<String>,
    task: Task,
}

/// Everything read from the directory: the tasks that count and what was skipped.
struct Loaded {
    entries: Vec<Entry>,
    problems: Vec<TrackerProblem>,
}

/// frontloop's `.frontloop/` directory as a [`Tracker`].
///
/// Blocking: frontloop has no blocked directory. A blocked task needs a human, which is what
/// `clarify/` is for, so [`Tracker::block`] moves the file to `clarify/` with the reason appended
/// as a `> cwo: blocked at <time>: <reason>` note; the task's state is then `clarify` and its
/// `blocked_reason` is that note's reason until a human moves it back to `ready/`.
pub struct Frontloop {
    root: PathBuf,
    /// Only this epic ("" = every epic).
    epic: String,
    sink: Option<ProblemSink>,
    /// Problems already given to `sink`.
    reported: Mutex<HashSet<TrackerProblem>>,
    /// Serializes this process's read-move-rewrite sequences (other processes are kept apart by
    /// the atomic renames).
    write: Mutex<()>,
}

impl Frontloop {
    /// `root` is the frontloop directory (`<project>/.frontloop`); `epic` limits the tracker to
    /// one epic ("" = every epic).
    pub fn new(root: PathBuf, epic: String) -> Frontloop {
        Frontloop {
            root,
            epic,
            sink: None,
            reported: Mutex::new(HashSet::new()),
            write: Mutex::new(()),
        }
    }

    /// Gives every problem `list()` and `ready()` find to `sink`, once per problem for the life
    /// of this value (a loop that polls with one `Frontloop` hears of each problem once).
    pub fn on_problem(mut self, sink: Arc<dyn Fn(&TrackerProblem) + Send + Sync>) -> Frontloop {
        self.sink = Some(sink);
        self
    }

    fn io_err(path: &Path, source: std::io::Error) -> TrackerError {
        TrackerError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// The names of `dir`'s entries, sorted; a missing directory has none.
    fn dir_names(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>, TrackerError> {
        let read = match std::fs::read_dir(dir) {
            Ok(read) => read,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Self::io_err(dir, e)),
        };
        let mut names = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| Self::io_err(dir, e))?;
            names.push((entry.file_name(), entry.path()));
        }
        names.sort();
        Ok(names)
    }

    /// The epics to read: (name, directory). The legacy flat layout is the epic `default`.
    fn epics(
        &self,
        problems: &mut Vec<TrackerProblem>,
    ) -> Result<Vec<(String, PathBuf)>, TrackerError> {
        let mut epics = Vec::new();
        let mut legacy = false;
        for (name, path) in Self::dir_names(&self.root)? {
            if !path.is_dir() {
                continue;
            }
            let Some(name) = name.to_str() else {
                problems.push(problem(
                    &path,
                    1,
                    "skipped: the epic directory's name is not valid UTF-8; rename it".into(),
                ));
                continue;
            };
            if Stage::ALL.iter().any(|s| s.dir() == name) {
                legacy = true;
                continue;
            }
            if name.starts_with('.') || name == ARCHIVE_DIR {
                continue;
            }
            if Stage::ALL.iter().any(|s| path.join(s.dir()).is_dir()) {
                epics.push((name.to_string(), path));
            }
        }
        if legacy {
            epics.insert(0, (DEFAULT_EPIC.to_string(), self.root.clone()));
        }
        if !self.epic.is_empty() {
            epics.retain(|(name, _)| *name == self.epic);
        }
        Ok(epics)
    }

    /// Reads every task file of the epics this tracker covers.
    fn load(&self) -> Result<Loaded, TrackerError> {
        let mut problems = Vec::new();
        let mut entries = Vec::new();
        for (epic, epic_dir) in self.epics(&mut problems)? {
            for stage in Stage::ALL {
                for (name, path) in Self::dir_names(&epic_dir.join(stage.dir()))? {
                    let Some(file_name) = name.to_str() else {
                        problems.push(problem(
                            &path,
                            1,
                            "skipped: the file name is not valid UTF-8; rename it".into(),
                        ));
                        continue;
                    };
                    if file_name.starts_with('.') || !file_name.ends_with(".md") || !path.is_file()
                    {
                        continue;
                    }
                    let bytes = std::fs::read(&path).map_err(|e| Self::io_err(&path, e))?;
                    match read_entry(&path, &epic_dir, &epic, stage, file_name, &bytes) {
                        Ok((entry, notes)) => {
                            problems.extend(notes.into_iter().map(|(n, m)| problem(&path, n, m)));
                            entries.push(entry);
                        }
                        Err((n, m)) => problems.push(problem(&path, n, m)),
                    }
                }
            }
        }
        let entries = dedupe(entries, &mut problems);
        problems.sort_by(|a, b| (&a.path, a.line, &a.message).cmp(&(&b.path, b.line, &b.message)));
        Ok(Loaded { entries, problems })
    }

    /// Gives the sink each problem it has not had yet.
    fn report(&self, problems: &[TrackerProblem]) {
        let Some(sink) = &self.sink else {
            return;
        };
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        for p in problems {
            if reported.insert(p.clone()) {
                sink(p);
            }
        }
    }

    /// The file of task `id` as it is now.
    fn find(&self, id: &str) -> Result<Entry, TrackerError> {
        valid_task_id(id).map_err(|why| {
            TrackerError::Invalid(format!("frontloop task id {id:?} cannot be used: {why}"))
        })?;
        self.load()?
            .entries
            .into_iter()
            .find(|e| e.task.id == id)
            .ok_or_else(|| TrackerError::NotFound(id.to_string()))
    }

    /// Moves `entry`'s file into `to`'s directory of its epic (one rename, keeping its name) and
    /// returns its new path. `Ok(None)`: the file was gone when renamed (another process moved
    /// or deleted it first).
    fn rename_to(&self, entry: &Entry, to: Stage) -> Result<Option<PathBuf>, TrackerError> {
        if entry.stage == to {
            return Ok(Some(entry.path.clone()));
        }
        let dir = entry.epic_dir.join(to.dir());
        std::fs::create_dir_all(&dir).map_err(|e| Self::io_err(&dir, e))?;
        let target = dir.join(&entry.file_name);
        if target.exists() {
            return Err(TrackerError::Invalid(format!(
                "cannot move {} to {}/: {} already exists there; keep one of the two files \
                 and delete the other",
                entry.path.display(),
                to.dir(),
                target.display()
            )));
        }
        match std::fs::rename(&entry.path, &target) {
            Ok(()) => {
                sync_dir(&dir)?;
                Ok(Some(target))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io_err(&entry.path, e)),
        }
    }

    /// Moves task `id` to `to` and appends `note` to its body.
    fn transition(&self, id: &str, to: Stage, note: &str) -> Result<(), TrackerError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let entry = self.find(id)?;
        let path = self
            .rename_to(&entry, to)?
            .ok_or_else(|| TrackerError::NotFound(id.to_string()))?;
        append_note(&path, note)
    }
}

impl Tracker for Frontloop {
    fn list(&self) -> Result<Vec<Task>, TrackerError> {
        let loaded = self.load()?;
        self.report(&loaded.problems);
        Ok(loaded.entries.into_iter().map(|e| e.task).collect())
    }

    fn problems(&self) -> Result<Vec<TrackerProblem>, TrackerError> {
        Ok(self.load()?.problems)
    }

    /// in_progress first, then the file-name prefix (which encodes the priority), then the file
    /// name, then the epic.
    fn ready(&self) -> Result<Vec<Task>, TrackerError> {
        let loaded = self.load()?;
        self.report(&loaded.problems);
        let mut ready: Vec<Entry> = loaded
            .entries
            .into_iter()
            .filter(|e| e.task.is_ready())
            .collect();
        ready.sort_by(|a, b| {
            (a.stage != Stage::InProgress, a.order, &a.file_name, &a.epic).cmp(&(
                b.stage != Stage::InProgress,
                b.order,
                &b.file_name,
                &b.epic,
            ))
        });
        Ok(ready.into_iter().map(|e| e.task).collect())
    }

    /// Moves the file from `ready/` to `in_progress/`. A task already in `in_progress/` that the
    /// last claim note gives to `worker` is claimed again without a change (a controller that
    /// adopts its worker after a restart); any other task outside `ready/` was moved by another
    /// process: `Err(Taken)`.
    fn claim(&self, id: &str, worker: &str) -> Result<(), TrackerError> {
        let _guard = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let entry = self.find(id)?;
        let taken = |entry: &Entry| TrackerError::Taken {
            id: id.to_string(),
            by: entry
                .claimed_by
                .clone()
                .filter(|_| entry.stage == Stage::InProgress)
                .unwrap_or_else(|| "another process".to_string()),
        };
        match entry.stage {
            Stage::Ready => {}
            Stage::InProgress if entry.claimed_by.as_deref() == Some(worker) => return Ok(()),
            _ => return Err(taken(&entry)),
        }
        let Some(path) = self.rename_to(&entry, Stage::InProgress)? else {
            // Another process moved it between the read and the rename.
            return Err(match self.find(id) {
                Ok(now) => taken(&now),
                Err(e) => e,
            });
        };
        append_note(&path, &format!("claimed by {worker} at {}", now()))
    }

    fn complete(&self, id: &str, note: &str) -> Result<(), TrackerError> {
        self.transition(
            id,
            Stage::Done,
            &with_text(&format!("done at {}", now()), note),
        )
    }

    fn block(&self, id: &str, reason: &str) -> Result<(), TrackerError> {
        self.transition(
            id,
            Stage::Clarify,
            &with_text(&format!("blocked at {}", now()), reason),
        )
    }

    fn release(&self, id: &str) -> Result<(), TrackerError> {
        self.transition(id, Stage::Ready, &format!("released at {}", now()))
    }

    /// frontloop has no progress log apart from the task: each move's note (done, blocked,
    /// released) already carries the text, so nothing more is written (the done note once).
    fn progress(&self, _task: &Task, _text: &str) -> Result<(), TrackerError> {
        Ok(())
    }

    /// A running task is wanted while its file is in `in_progress/`; a human who moves it
    /// elsewhere (or deletes it) takes it back.
    fn wanted(&self, id: &str) -> Result<bool, TrackerError> {
        match self.find(id) {
            Ok(entry) => Ok(entry.stage == Stage::InProgress),
            Err(TrackerError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn problem(path: &Path, line: usize, message: String) -> TrackerProblem {
    TrackerProblem {
        path: path.to_path_buf(),
        line,
        message,
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `head: text`, or `head` alone when `text` is blank.
fn with_text(head: &str, text: &str) -> String {
    if text.trim().is_empty() {
        head.to_string()
    } else {
        format!("{head}: {text}")
    }
}

fn sync_dir(dir: &Path) -> Result<(), TrackerError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Frontloop::io_err(dir, e))
}

/// Appends `note` (`> cwo: …`, one `> ` line per line of the note, after a blank line) to the
/// file at `path`, leaving every byte before it as it was: a temp file beside it, fsync, rename
/// over it. The file's line ending (`\r\n` when it uses one) is kept.
fn append_note(path: &Path, note: &str) -> Result<(), TrackerError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(TrackerError::NotFound(path.display().to_string()));
        }
        Err(e) => return Err(Frontloop::io_err(path, e)),
    };
    let eol: &[u8] = if bytes.windows(2).any(|w| w == b"\r\n") {
        b"\r\n"
    } else {
        b"\n"
    };
    let mut out = bytes.clone();
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(eol);
    }
    out.extend_from_slice(eol);
    for (i, line) in note.lines().enumerate() {
        out.extend_from_slice(if i == 0 { b"> cwo: " } else { b"> " });
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(eol);
    }
    if note.lines().next().is_none() {
        out.extend_from_slice(b"> cwo:");
        out.extend_from_slice(eol);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.cwo-{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Frontloop::io_err(path, e)
    })?;
    sync_dir(dir)
}

/// Keeps one entry per id: of copies in different state directories the one further along,
/// reporting the others; copies in the same directory are all skipped.
fn dedupe(entries: Vec<Entry>, problems: &mut Vec<TrackerProblem>) -> Vec<Entry> {
    let mut by_id: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        by_id.entry(e.task.id.clone()).or_default().push(i);
    }
    let mut keep = vec![true; entries.len()];
    for (id, copies) in by_id.iter().filter(|(_, c)| c.len() > 1) {
        let furthest = copies
            .iter()
            .map(|&i| entries[i].stage)
            .max()
            .expect("copies");
        let top: Vec<usize> = copies
            .iter()
            .copied()
            .filter(|&i| entries[i].stage == furthest)
            .collect();
        let paths = |of: &[usize]| {
            of.iter()
                .map(|&i| entries[i].path.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for &i in copies {
            keep[i] = false;
            let message = if top.len() > 1 {
                format!(
                    "skipped, never run: {} files have the task id `{id}` ({}); rename all \
                     but one (the id is the file name without its number prefix)",
                    copies.len(),
                    paths(copies)
                )
            } else if i != top[0] {
                format!(
                    "skipped: a second copy of task `{id}`; {} is further along and counts: \
                     delete this one",
                    entries[top[0]].path.display()
                )
            } else {
                keep[i] = true;
                continue;
            };
            problems.push(problem(&entries[i].path, 1, message));
        }
    }
    entries
        .into_iter()
        .zip(keep)
        .filter_map(|(e, k)| k.then_some(e))
        .collect()
}

/// The order prefix of a file stem and the name after it: `5000-add-login` → (5000, `add-login`),
/// legacy `2-x` → (2500, `x`), no prefix → (None, stem).
fn split_prefix(stem: &str) -> (Option<u32>, &str) {
    if let Some((digits, rest)) = stem.split_once('-')
        && !digits.is_empty()
        && !rest.is_empty()
        && digits.len() <= 9
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        let n: u32 = digits.parse().expect("at most 9 digits");
        let order = match (digits.len(), n) {
            (1, 1..=4) => [1, 2500, 5000, 7500][n as usize - 1],
            _ => n,
        };
        return (Some(order), rest);
    }
    (None, stem)
}

/// The default order prefix of a priority (frontloop's `0001-`, `2500-`, `5000-`, `7500-`).
fn default_order(p: Priority) -> u32 {
    match p {
        Priority::Urgent => 1,
        Priority::High => 2500,
        Priority::Medium => 5000,
        Priority::Low => 7500,
    }
}

/// A (1-based line, message) problem inside one file.
type LineProblem = (usize, String);

/// One task file read into an entry, with the problems that do not stop it from running.
fn read_entry(
    path: &Path,
    epic_dir: &Path,
    epic: &str,
    stage: Stage,
    file_name: &str,
    bytes: &[u8],
) -> Result<(Entry, Vec<LineProblem>), LineProblem> {
    let stem = file_name.strip_suffix(".md").unwrap_or(file_name);
    let (prefix, name) = split_prefix(stem);
    let id = if epic == DEFAULT_EPIC {
        name.to_string()
    } else {
        format!("{epic}.{name}")
    };
    if let Err(why) = valid_task_id(&id) {
        return Err((
            1,
            format!(
                "skipped, never run: task id {id:?} (from the epic and file name) cannot be used \
                 as a file or branch name: {why}; rename the file"
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        (
            line,
            format!(
                "skipped: not valid UTF-8 (byte 0x{:02x}); save the file as UTF-8",
                bytes[e.valid_up_to()]
            ),
        )
    })?;
    let doc = parse_document(text)?;
    let mut notes = Vec::new();
    if doc.criteria.is_none() {
        notes.push((
            doc.body_line,
            "no `## Acceptance Criteria` section (frontloop requires one): cwo runs the task \
             with no acceptance criteria; add the section"
                .to_string(),
        ));
    }
    let task = Task {
        id,
        title: doc.title,
        context: doc.context,
        acceptance_criteria: doc.criteria.unwrap_or_default(),
        priority: doc.priority,
        state: stage.state().to_string(),
        blocked_reason: if stage == Stage::Clarify {
            doc.blocked_reason
        } else {
            String::new()
        },
        depends_on: vec![],
        tags: vec![],
        waiting_on: vec![],
        issue: None,
        model_override: String::new(),
        model_size: String::new(),
    };
    Ok((
        Entry {
            path: path.to_path_buf(),
            epic_dir: epic_dir.to_path_buf(),
            epic: epic.to_string(),
            stage,
            file_name: file_name.to_string(),
            order: prefix.unwrap_or_else(|| default_order(doc.priority)),
            claimed_by: doc.claimed_by,
            task,
        },
        notes,
    ))
}

/// What cwo reads from a task file.
#[derive(Debug)]
struct Document {
    title: String,
    priority: Priority,
    /// The Acceptance Criteria section's list items; `None` when there is no such section.
    criteria: Option<Vec<String>>,
    context: String,
    /// The reason of the last `blocked` note.
    blocked_reason: String,
    /// The worker of the last `claimed by` note.
    claimed_by: Option<String>,
    /// The 1-based line the body starts on.
    body_line: usize,
}

/// Reads the front matter (see the module's doc for the subset) and the body's sections.
fn parse_document(text: &str) -> Result<Document, LineProblem> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    if lines.next().map(str::trim_end) != Some("---") {
        return Err((
            1,
            "skipped: no front matter; a task file starts with a `---` line, then `title: …` \
             and `priority: critical|high|medium|low`, then `---`"
                .into(),
        ));
    }
    let mut title: Option<(usize, String)> = None;
    let mut priority: Option<(usize, String)> = None;
    // The key the previous line opened (its nested lines are not cwo's business unless it is one
    // of cwo's keys).
    let mut open_key: Option<String> = None;
    let mut body_line = None;
    for (i, line) in lines.by_ref().enumerate() {
        let n = i + 2;
        if line.trim_end() == "---" || line.trim_end() == "..." {
            body_line = Some(n + 1);
            break;
        }
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t', '-']) {
            match open_key.as_deref() {
                Some(key @ ("title" | "priority")) => {
                    return Err((
                        n,
                        format!(
                            "skipped: `{key}` continues on this line; cwo reads `{key}` only as \
                             a one-line value (`{key}: …`), so write it on one line"
                        ),
                    ));
                }
                Some(_) => continue,
                None => {
                    return Err((
                        n,
                        "skipped: an indented or list line that belongs to no key in the front \
                         matter; cwo reads only flat `key: value` lines"
                            .into(),
                    ));
                }
            }
        }
        let Some((key, value)) = line.split_once(':').filter(|(k, v)| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
                && (v.is_empty() || v.starts_with([' ', '\t']))
        }) else {
            return Err((
                n,
                "skipped: not a `key: value` line; cwo reads only flat `key: value` front \
                 matter, so fix this line"
                    .into(),
            ));
        };
        let slot = match key {
            "title" => &mut title,
            "priority" => &mut priority,
            _ => {
                open_key = Some(key.to_string());
                continue;
            }
        };
        if let Some((first, _)) = slot {
            return Err((
                n,
                format!("skipped: a second `{key}:` (the first is on line {first}); keep one"),
            ));
        }
        let value = scalar(value.trim()).map_err(|why| {
            (
                n,
                format!("skipped: `{key}` {why}; write it as `{key}: text` on one line"),
            )
        })?;
        *slot = Some((n, value));
        open_key = Some(key.to_string());
    }
    let Some(body_line) = body_line else {
        return Err((
            1,
            "skipped: the front matter that starts here has no closing `---` line".into(),
        ));
    };
    let (title, priority) = match (title, priority) {
        (None, _) => {
            return Err((
                1,
                "skipped: the front matter has no `title:`; add one".into(),
            ));
        }
        (_, None) => {
            return Err((
                1,
                "skipped: the front matter has no `priority:`; add `priority: \
                 critical|high|medium|low`"
                    .into(),
            ));
        }
        (Some((n, t)), _) if t.trim().is_empty() => {
            return Err((
                n,
                "skipped: the title is empty; give the task a title".into(),
            ));
        }
        (Some((_, t)), Some((n, p))) => {
            let priority = match p.as_str() {
                "critical" => Priority::Urgent,
                "high" => Priority::High,
                "medium" => Priority::Medium,
                "low" => Priority::Low,
                other => {
                    return Err((
                        n,
                        format!(
                            "skipped: priority `{other}` is not one of critical, high, medium, \
                             low"
                        ),
                    ));
                }
            };
            (t, priority)
        }
    };
    let body: Vec<&str> = lines.collect();
    let sections = sections(&body);
    let criteria = sections
        .iter()
        .find(|s| s.is("acceptance criteria"))
        .map(|s| list_items(&s.lines));
    let goal = sections.iter().find(|s| s.is("goal"));
    let context = match goal {
        None => body.join("\n").trim().to_string(),
        Some(goal) => {
            let mut parts = vec![goal.text()];
            for s in &sections {
                if s.is("goal") || s.is("acceptance criteria") {
                    continue;
                }
                let text = s.text();
                match &s.heading {
                    Some(h) if !text.is_empty() => parts.push(format!("## {h}\n\n{text}")),
                    Some(_) => {}
                    None => parts.insert(0, text),
                }
            }
            parts.retain(|p| !p.is_empty());
            parts.join("\n\n")
        }
    };
    let (blocked_reason, claimed_by) = notes(&body);
    Ok(Document {
        title: title.trim().to_string(),
        priority,
        criteria,
        context,
        blocked_reason,
        claimed_by,
        body_line,
    })
}

/// One-line YAML scalars: plain, `"double"` (escapes `\"`, `\\`, `\n`, `\t`) or `'single'`
/// (`''` is a quote). `Err` says what else the value is.
fn scalar(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("has no value on its line".into());
    }
    if let Some(inner) = value.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return Err("has an unclosed or trailing-text double-quoted value".into());
        };
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('"') => out.push('"'),
                    Some('\\') => out.push('\\'),
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    other => {
                        return Err(format!(
                            "has the escape `\\{}`, which cwo does not read",
                            other.map(String::from).unwrap_or_default()
                        ));
                    }
                },
                '"' => return Err("has an unescaped `\"` inside its double quotes".into()),
                c => out.push(c),
            }
        }
        return Ok(out);
    }
    if let Some(inner) = value.strip_prefix('\'') {
        let Some(inner) = inner.strip_suffix('\'') else {
            return Err("has an unclosed or trailing-text single-quoted value".into());
        };
        if inner.replace("''", "").contains('\'') {
            return Err("has a lone `'` inside its single quotes (write `''`)".into());
        }
        return Ok(inner.replace("''", "'"));
    }
    if value.starts_with(['[', '{', '|', '>', '&', '*', '!', '%', '@', '`']) {
        return Err(format!(
            "starts with `{}`: a YAML form (list, map, block, anchor, tag) cwo does not read",
            &value[..1]
        ));
    }
    let value = match value.find(" #") {
        Some(at) => value[..at].trim_end(),
        None => value,
    };
    if value.contains(": ") {
        return Err("contains `: `, which YAML does not allow unquoted (quote the value)".into());
    }
    Ok(value.to_string())
}

/// One Markdown section of the body: its heading (`None` before the first) and its lines.
struct Section<'a> {
    heading: Option<String>,
    lines: Vec<&'a str>,
}

impl Section<'_> {
    fn is(&self, name: &str) -> bool {
        self.heading
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(name))
    }

    fn text(&self) -> String {
        self.lines.join("\n").trim().to_string()
    }
}

/// The body split at its ATX headings (`#` … `######`), outside fenced code blocks.
fn sections<'a>(body: &[&'a str]) -> Vec<Section<'a>> {
    let mut out = vec![Section {
        heading: None,
        lines: vec![],
    }];
    let mut fence: Option<&str> = None;
    for &line in body {
        let trimmed = line.trim_start();
        let marker = if trimmed.starts_with("```") {
            Some("```")
        } else if trimmed.starts_with("~~~") {
            Some("~~~")
        } else {
            None
        };
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            _ => {}
        }
        if fence.is_none() && marker.is_none() && line.starts_with('#') {
            let hashes = line.bytes().take_while(|&b| b == b'#').count();
            let rest = &line[hashes..];
            if hashes <= 6 && (rest.is_empty() || rest.starts_with([' ', '\t'])) {
                let heading = rest.trim().trim_end_matches('#').trim().to_string();
                out.push(Section {
                    heading: Some(heading),
                    lines: vec![],
                });
                continue;
            }
        }
        out.last_mut().expect("one section").lines.push(line);
    }
    out
}

/// The list items (`- `, `* `, `+ `, with or without a `[ ]`/`[x]` box) of a section; an indented
/// line after an item continues it.
fn list_items(lines: &[&str]) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    let mut in_item = false;
    for line in lines {
        let indent = line.len() - line.trim_start().len();
        let trimmed = line.trim();
        let item = (indent < 4)
            .then(|| {
                ["- ", "* ", "+ "]
                    .iter()
                    .find_map(|m| trimmed.strip_prefix(m))
            })
            .flatten();
        if let Some(item) = item {
            let item = ["[ ] ", "[x] ", "[X] "]
                .iter()
                .find_map(|b| item.strip_prefix(b))
                .unwrap_or(item);
            items.push(item.trim().to_string());
            in_item = true;
        } else if trimmed.is_empty() {
            in_item = false;
        } else if in_item && indent >= 2 {
            let last = items.last_mut().expect("in an item");
            last.push(' ');
            last.push_str(trimmed);
        } else {
            in_item = false;
        }
    }
    items.retain(|i| !i.is_empty());
    items
}

/// The last `blocked` note's reason (its `> ` continuation lines included) and the worker of the
/// last `claimed by` note.
fn notes(body: &[&str]) -> (String, Option<String>) {
    let mut reason = String::new();
    let mut claimed_by = None;
    let mut continuing = false;
    for line in body {
        if let Some(note) = line.strip_prefix("> cwo: ") {
            continuing = false;
            if let Some(rest) = note.strip_prefix("blocked at ") {
                reason = rest
                    .split_once(": ")
                    .map(|(_, r)| r.to_string())
                    .unwrap_or_default();
                continuing = true;
            } else if let Some(rest) = note.strip_prefix("claimed by ")
                && let Some((worker, _)) = rest.rsplit_once(" at ")
            {
                claimed_by = Some(worker.to_string());
            }
        } else if continuing && let Some(more) = line.strip_prefix("> ") {
            reason.push('\n');
            reason.push_str(more);
        } else {
            continuing = false;
        }
    }
    (reason, claimed_by)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Result<Document, LineProblem> {
        parse_document(text)
    }

    #[test]
    fn front_matter_subset_is_read_and_everything_else_is_a_problem_with_its_line() {
        let d = doc(
            "---\ntitle: \"Add \\\"login\\\"\"\nowner: 'me'\ntags:\n  - a\n  - b\n\
                     priority: high # soon\n---\n## Goal\nLet users in.\n",
        )
        .unwrap();
        assert_eq!(
            (d.title.as_str(), d.priority),
            ("Add \"login\"", Priority::High)
        );
        assert_eq!(d.body_line, 9);
        assert_eq!(
            doc("---\ntitle: 'it''s'\npriority: low\n---\n")
                .unwrap()
                .title,
            "it's"
        );
        let cases = [
            ("no front", 1, "no front matter"),
            ("---\ntitle: a\npriority: low\n", 1, "no closing `---`"),
            ("---\ntitle: a\n---\n", 1, "no `priority:`"),
            ("---\npriority: low\n---\n", 1, "no `title:`"),
            (
                "---\ntitle: a\npriority: soon\n---\n",
                3,
                "priority `soon` is not one of",
            ),
            (
                "---\ntitle: |\n  long\npriority: low\n---\n",
                2,
                "starts with `|`",
            ),
            (
                "---\ntitle: a\n  more\npriority: low\n---\n",
                3,
                "`title` continues",
            ),
            (
                "---\ntitle: [a, b]\npriority: low\n---\n",
                2,
                "starts with `[`",
            ),
            (
                "---\ntitle: a\nnot a pair\npriority: low\n---\n",
                3,
                "not a `key: value` line",
            ),
            (
                "---\n  - x\ntitle: a\npriority: low\n---\n",
                2,
                "belongs to no key",
            ),
            (
                "---\ntitle: a\ntitle: b\npriority: low\n---\n",
                3,
                "a second `title:`",
            ),
            ("---\ntitle: \"a\npriority: low\n---\n", 2, "unclosed"),
            ("---\ntitle: a: b\npriority: low\n---\n", 2, "contains `: `"),
            (
                "---\ntitle: ''\npriority: low\n---\n",
                2,
                "the title is empty",
            ),
        ];
        for (text, line, message) in cases {
            let (n, m) = doc(text).unwrap_err();
            assert_eq!(n, line, "{text:?}: {m}");
            assert!(m.contains(message), "{text:?}: {m}");
        }
    }

    #[test]
    fn sections_give_criteria_context_and_notes() {
        let d = doc(
            "---\ntitle: t\npriority: medium\n---\nintro\n\n## Goal\nDo it.\n\n\
                     ## Acceptance Criteria\n- [ ] one\n  continued\n* two\n- [x] three\n\n\
                     not an item\n```\n# not a heading\n```\n## Design Decisions\nUse X.\n\n\
                     > cwo: claimed by w-1 at 2026-01-01T00:00:00Z\n\n\
                     > cwo: blocked at 2026-01-01T00:00:00Z: needs: creds\n> and a key\n",
        )
        .unwrap();
        assert_eq!(
            d.criteria.unwrap(),
            ["one continued", "two", "three"],
            "a heading inside a code fence does not end the section"
        );
        assert!(
            d.context
                .starts_with("intro\n\nDo it.\n\n## Design Decisions\n\nUse X."),
            "{}",
            d.context
        );
        assert!(!d.context.contains("- [ ] one"));
        assert_eq!(d.blocked_reason, "needs: creds\nand a key");
        assert_eq!(d.claimed_by.as_deref(), Some("w-1"));
        let whole = doc("---\ntitle: t\npriority: low\n---\nJust text.\n").unwrap();
        assert_eq!(
            (whole.context.as_str(), whole.criteria),
            ("Just text.", None)
        );
    }

    #[test]
    fn prefixes_give_the_order_and_are_not_part_of_the_id() {
        assert_eq!(split_prefix("5000-add-login"), (Some(5000), "add-login"));
        assert_eq!(split_prefix("0001-x"), (Some(1), "x"));
        assert_eq!(split_prefix("2-x"), (Some(2500), "x"));
        assert_eq!(split_prefix("4-x"), (Some(7500), "x"));
        assert_eq!(split_prefix("7-x"), (Some(7), "x"));
        assert_eq!(split_prefix("plain"), (None, "plain"));
        assert_eq!(split_prefix("123-"), (None, "123-"));
        assert_eq!(split_prefix("v2-x"), (None, "v2-x"));
    }
}
