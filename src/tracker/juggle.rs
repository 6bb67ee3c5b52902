//! juggle's `.juggle/balls.jsonl`, read and written the way juggle does (reference/juggle.md §1-2).
//!
//! Writes take `flock(LOCK_EX)` on `balls.jsonl.lock`, re-read the file under the lock, change only
//! the lines of the balls being updated, write a temp file beside it and rename it over the
//! original. The file is handled as bytes: unknown keys, unreadable lines (not JSON, not UTF-8),
//! every untouched line and each line's own ending (`\n` or `\r\n`) survive byte for byte.
//!
//! What cwo skips or can never make ready (unreadable lines, duplicate or unusable ids, dependency
//! cycles, unknown dependencies) is a [`TrackerProblem`] with its line number: `problems()` returns
//! them, and `list()` hands each one once to the sink given with [`Juggle::on_problem`].

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{Local, SecondsFormat};
use serde_json::{Map, Value};

use super::{Priority, Task, Tracker, TrackerError, TrackerProblem, valid_task_id};

/// A ball to append with `Juggle::add`.
#[derive(Clone, Copy)]
pub(crate) struct NewBall<'a> {
    pub(crate) title: &'a str,
    pub(crate) context: &'a str,
    pub(crate) criteria: &'a [String],
    pub(crate) priority: Priority,
    pub(crate) depends_on: &'a [String],
    pub(crate) tags: &'a [String],
}

/// Receives each problem `list()` finds, once per `Juggle` value.
pub(crate) type ProblemSink = Arc<dyn Fn(&TrackerProblem) + Send + Sync>;

pub struct Juggle {
    dir: PathBuf,
    /// Only balls with this tag ("" = all).
    session: String,
    sink: Option<ProblemSink>,
    /// Problems already given to `sink`.
    reported: Mutex<HashSet<TrackerProblem>>,
    /// How long a write waits for a lock another process holds.
    lock_timeout: Duration,
}

/// How long a write waits for juggle's lock before it gives up with [`TrackerError::LockTimeout`]
/// (juggle holds it for one rewrite of the file: milliseconds).
pub(crate) const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// One line of the file without its `\n`; a `\r` before the `\n` stays in `raw`.
struct Line {
    raw: Vec<u8>,
    /// The line starts with a UTF-8 byte order mark (kept when cwo rewrites the line).
    bom: bool,
    /// The ball on this line; `None` for a blank line or a line cwo cannot read.
    ball: Option<Map<String, Value>>,
}

impl Line {
    /// Replaces the line with `ball`, keeping the line's `\r\n` ending if it had one.
    fn set_ball(&mut self, ball: Map<String, Value>) {
        let crlf = self.raw.ends_with(b"\r");
        self.raw = if self.bom { BOM.to_vec() } else { Vec::new() };
        self.raw
            .extend(serde_json::to_vec(&ball).expect("a JSON map serializes"));
        if crlf {
            self.raw.push(b'\r');
        }
        self.ball = Some(ball);
    }
}

struct Lines {
    lines: Vec<Line>,
    /// What is wrong with single lines (1-based line number, message): lines that are neither
    /// blank nor a ball, and balls read despite something juggle would trip over.
    unreadable: Vec<(usize, String)>,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The warning for a ball read from a line that starts with a byte order mark.
const BOM_NOTE: &str = "the line starts with a UTF-8 byte order mark (an editor's, usually): cwo \
    reads the ball, but juggle 0.4 cannot parse such a line and drops it the next time it \
    rewrites the file; delete the 3 bytes EF BB BF at its start";

/// Why a line of `balls.jsonl` holds no ball cwo can read (a [`TrackerProblem`]'s message).
#[derive(Debug, thiserror::Error)]
enum Unreadable {
    #[error(
        "skipped: not valid UTF-8 (byte 0x{byte:02x} at column {column}); fix or delete the line"
    )]
    NotUtf8 { byte: u8, column: usize },
    #[error("skipped: not JSON ({what} at column {column}); fix or delete the line")]
    NotJson { what: String, column: usize },
    #[error("skipped: a JSON object without a string \"id\"; give it one or delete the line")]
    NoId,
    #[error("skipped: JSON but not an object; fix or delete the line")]
    NotObject,
}

/// The ball on one line, `None` for a blank line, `Err` for anything else. Like juggle, a line
/// is trimmed before it is parsed.
fn parse_line(raw: &[u8]) -> Result<Option<Map<String, Value>>, Unreadable> {
    let text = std::str::from_utf8(raw).map_err(|e| Unreadable::NotUtf8 {
        byte: raw[e.valid_up_to()],
        column: e.valid_up_to() + 1,
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    // A byte order mark (Windows editors write one) is accepted, as JSON readers commonly do
    // (RFC 8259 §8.1 lets a parser ignore it); juggle 0.4 itself (bufio.Scanner, TrimSpace,
    // json.Unmarshal) does not, which the caller warns about.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text).trim();
    match serde_json::from_str::<Value>(text) {
        Err(e) => {
            // serde's own position is "line 1 column N" of the trimmed text.
            let what = e.to_string();
            let what = what.split(" at line ").next().unwrap_or(&what).to_string();
            let indent = raw.len() - raw.trim_ascii_start().len();
            Err(Unreadable::NotJson {
                what,
                column: e.column() + indent,
            })
        }
        Ok(Value::Object(ball)) if ball.get("id").is_some_and(Value::is_string) => Ok(Some(ball)),
        Ok(Value::Object(_)) => Err(Unreadable::NoId),
        Ok(_) => Err(Unreadable::NotObject),
    }
}

impl Lines {
    fn parse(bytes: &[u8]) -> Lines {
        let mut unreadable = Vec::new();
        let lines = bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(i, raw)| {
                let bom = raw.trim_ascii_start().starts_with(BOM);
                let ball = parse_line(raw).unwrap_or_else(|why| {
                    unreadable.push((i + 1, why.to_string()));
                    None
                });
                if bom && ball.is_some() {
                    unreadable.push((i + 1, BOM_NOTE.to_string()));
                }
                Line {
                    raw: raw.to_vec(),
                    bom,
                    ball,
                }
            })
            .collect();
        Lines { lines, unreadable }
    }

    /// Every ball with its 1-based line number, in file order (duplicates included).
    fn balls(&self) -> impl Iterator<Item = (usize, &Map<String, Value>)> {
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.ball.as_ref().map(|b| (i + 1, b)))
    }

    fn render(&self) -> Vec<u8> {
        let parts: Vec<&[u8]> = self.lines.iter().map(|l| l.raw.as_slice()).collect();
        parts.join(&b'\n')
    }
}

fn str_field<'a>(ball: &'a Map<String, Value>, key: &str) -> &'a str {
    ball.get(key).and_then(Value::as_str).unwrap_or("")
}

fn str_list(ball: &Map<String, Value>, key: &str) -> Vec<String> {
    ball.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// juggle's short id: the part after the last `-` (`ShortID`, ball.go).
fn short_id(id: &str) -> &str {
    match id.rsplit_once('-') {
        Some((_, short)) if !short.is_empty() => short,
        _ => id,
    }
}

/// The strongly connected components of more than one node: the dependency cycles (Tarjan).
fn cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    // Iterative, with its own call stack of (node, next edge): a hostile file with a dependency
    // chain thousands of balls long must not overflow the thread's stack.
    let n = edges.len();
    let mut index: Vec<Option<usize>> = vec![None; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut next = 0;
    let mut found = Vec::new();
    for root in 0..n {
        if index[root].is_some() {
            continue;
        }
        let mut calls: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = Some(next);
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut e)) = calls.last_mut() {
            if let Some(&u) = edges[v].get(*e) {
                *e += 1;
                match index[u] {
                    None => {
                        index[u] = Some(next);
                        low[u] = next;
                        next += 1;
                        stack.push(u);
                        on_stack[u] = true;
                        calls.push((u, 0));
                    }
                    Some(i) if on_stack[u] => low[v] = low[v].min(i),
                    Some(_) => {}
                }
                continue;
            }
            // Every edge of v is done: close its component if it is a root, return to the caller.
            calls.pop();
            if index[v] == Some(low[v]) {
                let mut component = Vec::new();
                while let Some(u) = stack.pop() {
                    on_stack[u] = false;
                    component.push(u);
                    if u == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort_unstable();
                    found.push(component);
                }
            }
            if let Some(&(parent, _)) = calls.last() {
                low[parent] = low[parent].min(low[v]);
            }
        }
    }
    found
}

/// `a`, `a` and `b`, `a`, `b` and `c`.
fn and_list(ids: &[&str]) -> String {
    let quoted: Vec<String> = ids.iter().map(|id| format!("`{id}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// A problem with line `line` of the file at `path`.
fn problem(path: &Path, line: usize, message: String) -> TrackerProblem {
    TrackerProblem {
        path: path.to_path_buf(),
        line,
        message,
    }
}

/// The first ball of each id, in file order, with its line number; later copies are problems
/// (juggle reads and updates only the first).
fn first_copies<'a>(
    lines: &'a Lines,
    path: &Path,
    problems: &mut Vec<TrackerProblem>,
) -> Vec<(usize, &'a Map<String, Value>)> {
    let mut first_line: HashMap<&str, usize> = HashMap::new();
    let mut balls = Vec::new();
    for (n, ball) in lines.balls() {
        let id = str_field(ball, "id");
        if let Some(first) = first_line.get(id) {
            problems.push(problem(
                path,
                n,
                format!(
                    "skipped: a second ball with id `{id}` (the first is on line {first}); \
                     juggle reads and updates only the first, and so does cwo: give this one \
                     a new id or delete it"
                ),
            ));
            continue;
        }
        first_line.insert(id, n);
        balls.push((n, ball));
    }
    balls
}

/// The balls' dependencies as juggle reads them: by full or short id, archived ones met, a
/// complete one met.
struct Dependencies<'a> {
    /// Index of each ball by its id, and by its short id where that is not taken.
    by_id: HashMap<&'a str, usize>,
    /// Ids (full and short) of archived balls: always met.
    archived: HashSet<&'a str>,
    /// Each ball's state.
    states: Vec<&'a str>,
    /// Edges from each ball that still needs its dependencies to each one it waits on.
    waits: Vec<Vec<usize>>,
}

fn is_done(state: &str) -> bool {
    state == "complete" || state == "researched"
}

impl<'a> Dependencies<'a> {
    fn of(balls: &[(usize, &'a Map<String, Value>)], archive: &'a Lines) -> Dependencies<'a> {
        let mut by_id: HashMap<&str, usize> = HashMap::new();
        for (i, (_, ball)) in balls.iter().enumerate() {
            by_id.insert(str_field(ball, "id"), i);
        }
        for (i, (_, ball)) in balls.iter().enumerate() {
            by_id.entry(short_id(str_field(ball, "id"))).or_insert(i);
        }
        let archived: HashSet<&str> = archive
            .balls()
            .flat_map(|(_, b)| {
                let id = str_field(b, "id");
                [id, short_id(id)]
            })
            .collect();
        let states: Vec<&str> = balls.iter().map(|(_, b)| str_field(b, "state")).collect();
        let waits = balls
            .iter()
            .map(|(_, ball)| {
                if is_done(str_field(ball, "state")) {
                    return vec![];
                }
                str_list(ball, "depends_on")
                    .iter()
                    .filter(|d| !archived.contains(d.as_str()))
                    .filter_map(|d| by_id.get(d.as_str()).copied())
                    .filter(|&j| states[j] != "complete")
                    .collect()
            })
            .collect();
        Dependencies {
            by_id,
            archived,
            states,
            waits,
        }
    }

    /// `task` (ball `i`, on line `n`) with what it still waits on; a dependency on itself or on
    /// an id nobody has is a problem.
    fn resolve(
        &self,
        mut task: Task,
        i: usize,
        n: usize,
        path: &Path,
        problems: &mut Vec<TrackerProblem>,
    ) -> Task {
        let open = !is_done(&task.state);
        for dep in &task.depends_on {
            if self.archived.contains(dep.as_str()) {
                continue;
            }
            match self.by_id.get(dep.as_str()) {
                Some(&j) if self.states[j] != "complete" => {
                    task.waiting_on.push(dep.clone());
                    if j == i && open {
                        problems.push(problem(
                            path,
                            n,
                            format!(
                                "ball `{}` depends on itself, so it will never be ready: \
                                 remove `{dep}` from its depends_on",
                                task.id
                            ),
                        ));
                    }
                }
                Some(_) => {}
                None if open => problems.push(problem(
                    path,
                    n,
                    format!(
                        "ball `{}` depends on `{dep}`, which is in neither {} nor the \
                         archive; like juggle, cwo counts a missing dependency as met: fix \
                         the id if it is a typo, or remove it",
                        task.id,
                        path.file_name().unwrap_or_default().to_string_lossy()
                    ),
                )),
                None => {}
            }
        }
        task
    }

    /// A problem for each dependency cycle among the balls that are `listed`: none of its balls
    /// will ever be ready.
    fn cycle_problems(
        &self,
        balls: &[(usize, &Map<String, Value>)],
        listed: &[bool],
        path: &Path,
        problems: &mut Vec<TrackerProblem>,
    ) {
        for cycle in cycles(&self.waits) {
            if !cycle.iter().any(|&i| listed[i]) {
                continue;
            }
            let ids: Vec<&str> = cycle.iter().map(|&i| str_field(balls[i].1, "id")).collect();
            problems.push(problem(
                path,
                balls[cycle[0]].0,
                format!(
                    "balls {} (lines {}) depend on each other in a cycle, so none of them will \
                     ever be ready: remove one of those dependencies",
                    and_list(&ids),
                    cycle
                        .iter()
                        .map(|&i| balls[i].0.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
}

/// `list()`'s tasks and everything it skipped or cannot make ready.
struct Loaded {
    tasks: Vec<Task>,
    problems: Vec<TrackerProblem>,
}

/// juggle's timestamp shape: RFC 3339 with fractional seconds and the local offset.
pub(crate) fn juggle_now() -> String {
    Local::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

impl Juggle {
    pub fn new(dir: impl Into<PathBuf>, session: impl Into<String>) -> Juggle {
        Juggle {
            dir: dir.into(),
            session: session.into(),
            sink: None,
            reported: Mutex::new(HashSet::new()),
            lock_timeout: LOCK_TIMEOUT,
        }
    }

    /// Waits at most `timeout` for a lock another process holds (default [`LOCK_TIMEOUT`]).
    #[cfg(test)]
    pub(crate) fn with_lock_timeout(mut self, timeout: Duration) -> Juggle {
        self.lock_timeout = timeout;
        self
    }

    /// Gives every problem `list()` finds to `sink`, once per problem for the life of this value
    /// (a loop that polls with one `Juggle` hears of each problem once).
    pub(crate) fn on_problem(mut self, sink: ProblemSink) -> Juggle {
        self.sink = Some(sink);
        self
    }

    pub(crate) fn balls_path(&self) -> PathBuf {
        self.dir.join("balls.jsonl")
    }

    fn archive_path(&self) -> PathBuf {
        self.dir.join("archive/balls.jsonl")
    }

    fn io_err(path: &Path, source: std::io::Error) -> TrackerError {
        TrackerError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn read(path: &Path) -> Result<Lines, TrackerError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Lines::parse(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lines {
                lines: vec![],
                unreadable: vec![],
            }),
            Err(e) => Err(Self::io_err(path, e)),
        }
    }

    /// Takes juggle's write lock (BSD flock, which is what std's `File::lock` uses on Linux).
    fn lock(&self) -> Result<File, TrackerError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Self::io_err(&self.dir, e))?;
        self.lock_file(&self.dir.join("balls.jsonl.lock"))
    }

    /// Takes the flock on `path`, polling for at most `lock_timeout` while another process
    /// holds it (a blocking wait would park the caller for as long as that process likes).
    fn lock_file(&self, path: &Path) -> Result<File, TrackerError> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Self::io_err(path, e))?;
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            match f.try_lock() {
                Ok(()) => return Ok(f),
                Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < self.lock_timeout => {
                    std::thread::sleep(
                        pause.min(self.lock_timeout.saturating_sub(started.elapsed())),
                    );
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(TrackerError::LockTimeout {
                        path: path.display().to_string(),
                        waited: started.elapsed(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Self::io_err(path, e)),
            }
        }
    }

    /// Re-reads under the lock, applies `change` to ball `id` (its first copy, as juggle does),
    /// replaces the file atomically.
    fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Map<String, Value>),
    ) -> Result<(), TrackerError> {
        valid_task_id(id).map_err(|why| {
            TrackerError::Invalid(format!("ball id {id:?} cannot be used: {why}"))
        })?;
        let _lock = self.lock()?;
        tracing::debug!(ball = %id, "juggle update");
        let path = self.balls_path();
        let mut lines = Self::read(&path)?;
        let line = lines
            .lines
            .iter_mut()
            .find(|l| l.ball.as_ref().is_some_and(|b| str_field(b, "id") == id))
            .ok_or_else(|| TrackerError::NotFound(id.to_string()))?;
        let mut ball = line.ball.take().expect("the line holds a ball");
        change(&mut ball);
        ball.insert("last_activity".into(), Value::String(juggle_now()));
        line.set_ball(ball);
        let tmp = self
            .dir
            .join(format!(".balls.jsonl.cwo-{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&lines.render())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Self::io_err(&path, e)
        })
    }

    /// Reads both files: the session's tasks with what they wait on, and the problems.
    ///
    /// Like juggle: the first ball with an id wins (`GetBallByID`, `UpdateBall`); a dependency
    /// names a ball by its id or its short id; a dependency on an id that is in neither file
    /// counts as met (`sortBallsForAgent`). Unlike juggle, a known dependency must be complete
    /// (here or archived), so balls in a cycle never become ready: that is reported.
    fn load(&self) -> Result<Loaded, TrackerError> {
        let path = self.balls_path();
        let archive_path = self.archive_path();
        let lines = Self::read(&path)?;
        let archive = Self::read(&archive_path)?;
        let mut problems: Vec<TrackerProblem> = lines
            .unreadable
            .iter()
            .map(|(n, why)| problem(&path, *n, why.clone()))
            .chain(
                archive
                    .unreadable
                    .iter()
                    .map(|(n, why)| problem(&archive_path, *n, why.clone())),
            )
            .collect();
        let balls = first_copies(&lines, &path, &mut problems);
        let deps = Dependencies::of(&balls, &archive);
        let mut listed = vec![false; balls.len()];
        let mut tasks = Vec::new();
        for (i, &(n, ball)) in balls.iter().enumerate() {
            let task = Self::to_task(ball);
            if let Err(why) = valid_task_id(&task.id) {
                problems.push(problem(
                    &path,
                    n,
                    format!(
                        "skipped, never run: ball id {:?} cannot be used as a file or branch \
                         name: {why}; give it an id like juggle's `<project>-<8 hex digits>`",
                        task.id
                    ),
                ));
                continue;
            }
            if !self.session.is_empty() && !task.tags.iter().any(|t| t == &self.session) {
                continue;
            }
            listed[i] = true;
            tasks.push(deps.resolve(task, i, n, &path, &mut problems));
        }
        deps.cycle_problems(&balls, &listed, &path, &mut problems);
        problems.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
        Ok(Loaded { tasks, problems })
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

    fn to_task(ball: &Map<String, Value>) -> Task {
        Task {
            id: str_field(ball, "id").to_string(),
            title: str_field(ball, "title").to_string(),
            context: str_field(ball, "context").to_string(),
            acceptance_criteria: str_list(ball, "acceptance_criteria"),
            priority: Priority::parse(str_field(ball, "priority")).unwrap_or(Priority::Medium),
            state: str_field(ball, "state").to_string(),
            blocked_reason: str_field(ball, "blocked_reason").to_string(),
            depends_on: str_list(ball, "depends_on"),
            tags: str_list(ball, "tags"),
            waiting_on: vec![],
            issue: None,
            model_override: str_field(ball, "model_override").to_string(),
            model_size: str_field(ball, "model_size").to_string(),
        }
    }

    /// Resolves an id the way juggle does: exact short id, exact id, then prefixes.
    pub(crate) fn resolve_id(&self, query: &str) -> Result<String, TrackerError> {
        let lines = Self::read(&self.balls_path())?;
        let archive = Self::read(&self.dir.join("archive/balls.jsonl"))?;
        let ids: Vec<String> = lines
            .balls()
            .chain(archive.balls())
            .map(|(_, b)| str_field(b, "id").to_string())
            .collect();
        let q = query.to_ascii_lowercase();
        let short = |id: &str| id.rsplit('-').next().unwrap_or(id).to_ascii_lowercase();
        let rules: [&dyn Fn(&str) -> bool; 4] = [
            &|id| short(id) == q,
            &|id| id.to_ascii_lowercase() == q,
            &|id| short(id).starts_with(&q),
            &|id| id.to_ascii_lowercase().starts_with(&q),
        ];
        for rule in rules {
            let mut hits: Vec<&String> = ids.iter().filter(|id| rule(id)).collect();
            hits.dedup();
            match hits.len() {
                0 => continue,
                1 => return Ok(hits[0].clone()),
                _ => {
                    let names: Vec<&str> = hits.iter().map(|s| s.as_str()).collect();
                    return Err(TrackerError::Ambiguous(query.into(), names.join(", ")));
                }
            }
        }
        Err(TrackerError::NotFound(query.to_string()))
    }

    /// Appends a new pending ball, as `juggle plan` does (O_APPEND under the lock).
    pub(crate) fn add(
        &self,
        project_name: &str,
        new: &NewBall<'_>,
    ) -> Result<String, TrackerError> {
        let NewBall {
            title,
            context,
            criteria,
            priority,
            depends_on,
            tags,
        } = *new;
        if title.trim().is_empty() {
            return Err(TrackerError::Invalid(
                "a ball needs a non-empty title".into(),
            ));
        }
        let deps = depends_on
            .iter()
            .map(|d| self.resolve_id(d))
            .collect::<Result<Vec<_>, _>>()?;
        let id = format!(
            "{}-{}",
            project_name,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let now = juggle_now();
        let mut ball = Map::new();
        ball.insert("id".into(), id.clone().into());
        if !context.is_empty() {
            ball.insert("context".into(), context.into());
        }
        ball.insert("title".into(), title.into());
        if !criteria.is_empty() {
            ball.insert("acceptance_criteria".into(), criteria.into());
        }
        ball.insert("priority".into(), priority.as_str().into());
        ball.insert("state".into(), "pending".into());
        if !deps.is_empty() {
            ball.insert("depends_on".into(), deps.into());
        }
        ball.insert("started_at".into(), now.clone().into());
        ball.insert("last_activity".into(), now.into());
        ball.insert("update_count".into(), 0.into());
        if !tags.is_empty() {
            ball.insert("tags".into(), tags.into());
        }
        let line = serde_json::to_string(&ball).expect("a JSON map serializes");
        if line.len() >= 64 * 1024 {
            return Err(TrackerError::Invalid(format!(
                "the ball would be {} bytes on one line; juggle cannot read lines of 64 KiB or more, shorten the context",
                line.len()
            )));
        }
        let _lock = self.lock()?;
        let path = self.balls_path();
        let existing = std::fs::read(&path).unwrap_or_default();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Self::io_err(&path, e))?;
        // The new line ends the way the file's last line does (juggle writes `\n`; a CRLF file
        // stays CRLF).
        let eol = if existing.ends_with(b"\r\n") {
            "\r\n"
        } else {
            "\n"
        };
        let sep = if existing.is_empty() || existing.ends_with(b"\n") {
            ""
        } else {
            eol
        };
        f.write_all(format!("{sep}{line}{eol}").as_bytes())
            .map_err(|e| Self::io_err(&path, e))?;
        Ok(id)
    }

    fn append_session_progress(&self, session: &str, text: &str) -> Result<(), TrackerError> {
        let dir = self.dir.join("sessions").join(session);
        if !dir.join("session.json").is_file() {
            return Ok(());
        }
        let _lock = self.lock_file(&dir.join("progress.txt.lock"))?;
        let path = dir.join("progress.txt");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Self::io_err(&path, e))?;
        let stamp = Local::now().format("%Y-%m-%d %H:%M:%S");
        f.write_all(format!("[{stamp}] {text}\n").as_bytes())
            .map_err(|e| Self::io_err(&path, e))
    }
}

impl Tracker for Juggle {
    fn list(&self) -> Result<Vec<Task>, TrackerError> {
        let loaded = self.load()?;
        self.report(&loaded.problems);
        Ok(loaded.tasks)
    }

    fn problems(&self) -> Result<Vec<TrackerProblem>, TrackerError> {
        Ok(self.load()?.problems)
    }

    fn claim(&self, id: &str, _worker: &str) -> Result<(), TrackerError> {
        self.update(id, |b| {
            b.insert("state".into(), "in_progress".into());
            b.remove("blocked_reason");
        })
    }

    fn complete(&self, id: &str, note: &str) -> Result<(), TrackerError> {
        self.update(id, |b| {
            b.insert("state".into(), "complete".into());
            b.remove("blocked_reason");
            b.insert("completed_at".into(), juggle_now().into());
            b.insert("completion_note".into(), note.into());
        })
    }

    fn block(&self, id: &str, reason: &str) -> Result<(), TrackerError> {
        self.update(id, |b| {
            b.insert("state".into(), "blocked".into());
            b.insert("blocked_reason".into(), reason.into());
        })
    }

    fn release(&self, id: &str) -> Result<(), TrackerError> {
        self.update(id, |b| {
            b.insert("state".into(), "pending".into());
        })
    }

    fn progress(&self, task: &Task, text: &str) -> Result<(), TrackerError> {
        for tag in &task.tags {
            self.append_session_progress(tag, text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(content: impl AsRef<[u8]>) -> (tempfile::TempDir, Juggle) {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join(".juggle");
        std::fs::create_dir_all(&j).unwrap();
        std::fs::write(j.join("balls.jsonl"), content).unwrap();
        (dir, Juggle::new(j, ""))
    }

    /// A lock another process holds for longer than the timeout is a clear error naming the
    /// lock file, not a wait without end.
    #[test]
    fn a_held_lock_times_out_with_an_error_naming_the_file() {
        let (dir, j) = setup(r#"{"id":"p-1","title":"a","state":"pending"}"#.to_string() + "\n");
        let j = j.with_lock_timeout(Duration::from_millis(300));
        let lock_path = dir.path().join(".juggle/balls.jsonl.lock");
        let held = File::create(&lock_path).unwrap();
        held.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let claimer = std::thread::spawn(move || tx.send(j.claim("p-1", "w")).unwrap());
        let result = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("claim waits without end for a held lock");
        held.unlock().unwrap();
        claimer.join().unwrap();
        let err = result.unwrap_err();
        assert!(matches!(err, TrackerError::LockTimeout { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&lock_path.display().to_string())
                && message.starts_with("another juggle process holds"),
            "{message}"
        );
    }

    #[test]
    fn round_trip_keeps_unknown_keys_bad_lines_and_untouched_bytes() {
        let big = "x".repeat(60 * 1024);
        let a = r#"{"id":"p-aaaa0001","title":"A","priority":"low","state":"pending","started_at":"2026-01-17T10:15:42.120934811+01:00","last_activity":"2026-01-17T10:15:42.121187002+01:00","update_count":0,"future_key":{"nested":[1,2]}}"#;
        let bad = r#"{"id": 5, "title": not json"#;
        let c = format!(
            r#"{{"id":"p-cccc0003","context":"{big}","title":"C \u003cb\u003e","priority":"high","state":"pending","update_count":0}}"#
        );
        let content = format!("{a}\n{bad}\n\n{c}\n");
        let (_d, j) = setup(&content);
        j.claim("p-aaaa0001", "w").unwrap();
        let after = std::fs::read_to_string(j.balls_path()).unwrap();
        let lines: Vec<&str> = after.split('\n').collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[1], bad);
        assert_eq!(lines[2], "");
        assert_eq!(lines[3], c, "an untouched line stays byte-identical");
        let changed: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(changed["state"], "in_progress");
        assert_eq!(changed["future_key"]["nested"][1], 2);
        let keys: Vec<&String> = changed.as_object().unwrap().keys().collect();
        assert_eq!(keys[0], "id", "key order is kept");
        assert_eq!(keys.last().unwrap().as_str(), "future_key");
        // The 60 KiB line is still read.
        assert_eq!(j.list().unwrap()[1].context.len(), 60 * 1024);
    }

    #[test]
    fn ready_order_and_dependencies() {
        let content = [
            r#"{"id":"p-1","title":"low","priority":"low","state":"pending"}"#,
            r#"{"id":"p-2","title":"urgent dep","priority":"urgent","state":"pending","depends_on":["p-1"]}"#,
            r#"{"id":"p-3","title":"high","priority":"high","state":"pending"}"#,
            r#"{"id":"p-4","title":"ip","priority":"low","state":"in_progress"}"#,
            r#"{"id":"p-5","title":"archived dep","priority":"medium","state":"pending","depends_on":["p-0"]}"#,
            r#"{"id":"p-6","title":"blocked","priority":"urgent","state":"blocked"}"#,
            r#"{"id":"p-7","title":"high too","priority":"high","state":"pending"}"#,
        ]
        .join("\n");
        let (d, j) = setup(&content);
        std::fs::create_dir_all(d.path().join(".juggle/archive")).unwrap();
        std::fs::write(
            d.path().join(".juggle/archive/balls.jsonl"),
            r#"{"id":"p-0","title":"old","priority":"low","state":"complete"}"#,
        )
        .unwrap();
        let ids: Vec<String> = j.ready().unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["p-4", "p-3", "p-7", "p-5", "p-1"]);
        j.complete("p-1", "done").unwrap();
        let ids: Vec<String> = j.ready().unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["p-4", "p-2", "p-3", "p-7", "p-5"]);
    }

    #[test]
    fn add_resolve_block_and_progress() {
        let (d, j) = setup("");
        let a = j
            .add(
                "proj",
                &NewBall {
                    title: "First",
                    context: "",
                    criteria: &["works".into()],
                    priority: Priority::High,
                    depends_on: &[],
                    tags: &["sess".into()],
                },
            )
            .unwrap();
        let short = a.rsplit('-').next().unwrap().to_string();
        let b = j
            .add(
                "proj",
                &NewBall {
                    title: "Second",
                    context: "ctx",
                    criteria: &[],
                    priority: Priority::Low,
                    depends_on: &[short[..4].to_string()],
                    tags: &[],
                },
            )
            .unwrap();
        assert_eq!(j.list().unwrap()[1].depends_on, vec![a.clone()]);
        assert!(matches!(
            j.resolve_id("zzzz"),
            Err(TrackerError::NotFound(_))
        ));
        let sdir = d.path().join(".juggle/sessions/sess");
        std::fs::create_dir_all(&sdir).unwrap();
        std::fs::write(sdir.join("session.json"), "{}").unwrap();
        j.block(&a, "needs creds").unwrap();
        let tasks = j.list().unwrap();
        assert_eq!(
            (tasks[0].id.as_str(), tasks[1].id.as_str()),
            (a.as_str(), b.as_str())
        );
        j.progress(&tasks[0], "cwo: blocked").unwrap();
        j.progress(&tasks[1], "no session: nothing written")
            .unwrap();
        let t = &j.list().unwrap()[0];
        assert_eq!(
            (t.state.as_str(), t.blocked_reason.as_str()),
            ("blocked", "needs creds")
        );
        let p = std::fs::read_to_string(sdir.join("progress.txt")).unwrap();
        assert!(p.ends_with("] cwo: blocked\n") && p.starts_with('['), "{p}");
        assert_eq!(p.lines().count(), 1);
    }

    /// A pending ball line with `extra` keys (`,"k":v…`).
    fn ball(id: &str, extra: &str) -> String {
        format!(r#"{{"id":"{id}","title":"t {id}","priority":"low","state":"pending"{extra}}}"#)
    }

    fn ids(tasks: Vec<Task>) -> Vec<String> {
        tasks.into_iter().map(|t| t.id).collect()
    }

    /// Each problem as `line: message`.
    fn problem_lines(j: &Juggle) -> Vec<String> {
        j.problems()
            .unwrap()
            .iter()
            .map(|p| format!("{}: {}", p.line, p.message))
            .collect()
    }

    #[test]
    fn ids_unsafe_as_a_path_or_branch_are_skipped_reported_and_never_claimed() {
        let long = format!("p-{}", "a".repeat(200));
        let bad = [
            "../escape",
            "a/b",
            ".hidden",
            "-rf",
            "x..y",
            "p-1.lock",
            "p-1.",
            "p 1",
            "p-\u{e9}",
            "",
            long.as_str(),
        ];
        let mut lines = vec![ball("proj-a1b2c3d4", "")];
        lines.extend(bad.iter().map(|id| ball(id, "")));
        lines.push(ball("juggler-74", r#","depends_on":["a/b"]"#));
        let content = lines.join("\n") + "\n";
        let (_d, j) = setup(&content);
        assert_eq!(ids(j.list().unwrap()), ["proj-a1b2c3d4", "juggler-74"]);
        assert_eq!(ids(j.ready().unwrap()), ["proj-a1b2c3d4"], "a/b is pending");
        let problems = j.problems().unwrap();
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, (2..=12).collect::<Vec<_>>());
        assert!(
            problems[0].message.contains(r#""../escape""#)
                && problems[0].message.contains("skipped, never run"),
            "{problems:?}"
        );
        for id in bad {
            assert!(
                matches!(j.claim(id, "w"), Err(TrackerError::Invalid(_))),
                "{id:?} was claimable"
            );
        }
        assert_eq!(std::fs::read_to_string(j.balls_path()).unwrap(), content);
    }

    #[test]
    fn non_utf8_lines_are_reported_with_their_line_and_kept_byte_for_byte() {
        let mut content = Vec::new();
        content.extend_from_slice(ball("p-1", "").as_bytes());
        content.extend_from_slice(b"\n\xff\n");
        content.extend_from_slice(br#"{"id":"p-2","title":"latin1 caf"#);
        content.extend_from_slice(b"\xe9\"}\n");
        content.extend_from_slice(ball("p-3", "").as_bytes());
        content.push(b'\n');
        let (_d, j) = setup(&content);
        assert_eq!(ids(j.list().unwrap()), ["p-1", "p-3"]);
        assert_eq!(
            problem_lines(&j),
            [
                "2: skipped: not valid UTF-8 (byte 0xff at column 1); fix or delete the line",
                "3: skipped: not valid UTF-8 (byte 0xe9 at column 32); fix or delete the line",
            ]
        );
        j.claim("p-3", "w").unwrap();
        let after = std::fs::read(j.balls_path()).unwrap();
        let before: Vec<&[u8]> = content.split(|&b| b == b'\n').collect();
        let after: Vec<&[u8]> = after.split(|&b| b == b'\n').collect();
        assert_eq!(after.len(), before.len());
        assert_eq!(after[..3], before[..3], "untouched lines keep their bytes");
        assert!(after[3].starts_with(br#"{"id":"p-3""#) && after[3] != before[3]);
    }

    #[test]
    fn bom_duplicates_junk_and_dependency_problems_are_reported_with_their_lines() {
        let content = [
            format!("\u{feff}{}", ball("p-1", "")),
            ball("p-1", r#","title":"second""#),
            ball("p-1", r#","title":"third""#),
            "not json".into(),
            "[1,2]".into(),
            r#"{"title":"no id"}"#.into(),
            "   ".into(),
            ball("p-self", r#","depends_on":["p-self"]"#),
            ball("p-typo", r#","depends_on":["p-nowhere"]"#),
            ball("p-a", r#","depends_on":["p-c"]"#),
            ball("p-b", r#","depends_on":["p-a"]"#),
            ball("p-c", r#","depends_on":["b"]"#),
            ball("p-after", r#","depends_on":["p-a"]"#),
            ball(
                "p-old",
                r#","state":"complete","depends_on":["p-old","p-gone"]"#,
            ),
        ]
        .join("\n");
        let (_d, j) = setup(&content);
        assert_eq!(
            problem_lines(&j),
            [
                "1: the line starts with a UTF-8 byte order mark (an editor's, usually): cwo \
                 reads the ball, but juggle 0.4 cannot parse such a line and drops it the next \
                 time it rewrites the file; delete the 3 bytes EF BB BF at its start",
                "2: skipped: a second ball with id `p-1` (the first is on line 1); juggle reads \
                 and updates only the first, and so does cwo: give this one a new id or delete it",
                "3: skipped: a second ball with id `p-1` (the first is on line 1); juggle reads \
                 and updates only the first, and so does cwo: give this one a new id or delete it",
                "4: skipped: not JSON (expected ident at column 2); fix or delete the line",
                "5: skipped: JSON but not an object; fix or delete the line",
                "6: skipped: a JSON object without a string \"id\"; give it one or delete the line",
                "8: ball `p-self` depends on itself, so it will never be ready: remove `p-self` \
                 from its depends_on",
                "9: ball `p-typo` depends on `p-nowhere`, which is in neither balls.jsonl nor the \
                 archive; like juggle, cwo counts a missing dependency as met: fix the id if it \
                 is a typo, or remove it",
                "10: balls `p-a`, `p-b` and `p-c` (lines 10, 11, 12) depend on each other in a \
                 cycle, so none of them will ever be ready: remove one of those dependencies",
            ]
        );
        let tasks = j.list().unwrap();
        assert_eq!(tasks[0].id, "p-1", "the ball after the BOM is read");
        assert_eq!(
            tasks.iter().filter(|t| t.id == "p-1").count(),
            1,
            "the first copy wins, as in juggle"
        );
        // The unknown dependency is met, as in juggle; the cycle and the self-dependency are not.
        assert_eq!(ids(j.ready().unwrap()), ["p-1", "p-typo"]);
        j.claim("p-1", "w").unwrap();
        let after = std::fs::read_to_string(j.balls_path()).unwrap();
        let after: Vec<&str> = after.split('\n').collect();
        let before: Vec<&str> = content.split('\n').collect();
        assert!(
            after[0].starts_with('\u{feff}') && after[0].contains(r#""state":"in_progress""#),
            "the claimed ball keeps its line's byte order mark: {}",
            after[0]
        );
        assert_eq!(after[1..], before[1..], "the other copies are not touched");
    }

    #[test]
    fn a_dependency_chain_far_deeper_than_the_stack_is_read() {
        // 200,000 balls, each depending on the next, and the last on the first: one cycle.
        let n = 200_000;
        let edges: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + 1) % n]).collect();
        let found = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || cycles(&edges))
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].len(), n);
        let mut two = vec![vec![1], vec![0], vec![3], vec![2], vec![]];
        two.push(vec![0]);
        assert_eq!(cycles(&two), vec![vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn each_problem_reaches_the_sink_once() {
        let content = format!("{}\n{}\n", ball("p-1", ""), "junk");
        let (_d, j) = setup(&content);
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = heard.clone();
        let j = j.on_problem(Arc::new(move |p| sink.lock().unwrap().push(p.to_string())));
        for _ in 0..3 {
            j.list().unwrap();
            j.ready().unwrap();
        }
        let first = heard.lock().unwrap().clone();
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(
            first[0].ends_with(
                "balls.jsonl:2: skipped: not JSON (expected value at column 1); fix or delete the line"
            ),
            "{first:?}"
        );
        std::fs::write(j.balls_path(), format!("{content}junk again\n")).unwrap();
        j.list().unwrap();
        let heard = heard.lock().unwrap().clone();
        assert_eq!(heard.len(), 2, "a new problem is reported: {heard:?}");
        assert!(heard[1].contains("balls.jsonl:3: "), "{heard:?}");
    }

    #[test]
    fn rewritten_lines_keep_their_own_line_ending() {
        let content = format!(
            "{}\r\n{}\n{}\r\n",
            ball("p-1", ""),
            ball("p-2", ""),
            ball("p-3", "")
        );
        let (_d, j) = setup(&content);
        j.claim("p-1", "w").unwrap();
        j.claim("p-2", "w").unwrap();
        let after = std::fs::read_to_string(j.balls_path()).unwrap();
        let lines: Vec<&str> = after.split('\n').collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].ends_with("}\r") && lines[0].contains("in_progress"),
            "{after:?}"
        );
        assert!(
            lines[1].ends_with('}') && lines[1].contains("in_progress"),
            "{after:?}"
        );
        assert_eq!(lines[2], format!("{}\r", ball("p-3", "")));
        assert_eq!(lines[3], "");
        // A new ball in a CRLF file ends with CRLF too.
        let id = j
            .add(
                "p",
                &NewBall {
                    title: "New",
                    context: "",
                    criteria: &[],
                    priority: Priority::Low,
                    depends_on: &[],
                    tags: &[],
                },
            )
            .unwrap();
        let after = std::fs::read_to_string(j.balls_path()).unwrap();
        assert!(after.ends_with("}\r\n") && after.contains(&id), "{after:?}");
    }
}
