//! juggle's `.juggle/balls.jsonl`, read and written the way juggle does (reference/juggle.md §1-2).
//!
//! Writes take `flock(LOCK_EX)` on `balls.jsonl.lock`, re-read the file under the lock, change only
//! the lines of the balls being updated, write a temp file beside it and rename it over the
//! original. The file is handled as bytes: unknown keys, unreadable lines (not JSON, not UTF-8),
//! every untouched line and each line's own ending (`\n` or `\r\n`) survive byte for byte.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{Local, SecondsFormat};
use serde_json::{Map, Value};

use super::{Priority, Task, Tracker, TrackerError};

/// A ball to append with `Juggle::add`.
#[derive(Clone, Copy)]
pub struct NewBall<'a> {
    pub title: &'a str,
    pub context: &'a str,
    pub criteria: &'a [String],
    pub priority: Priority,
    pub depends_on: &'a [String],
    pub tags: &'a [String],
}

pub struct Juggle {
    dir: PathBuf,
    /// Only balls with this tag ("" = all).
    session: String,
}

/// One line of the file without its `\n` (a `\r` before it stays in `raw`): a parsed ball or
/// anything else, kept verbatim.
enum Line {
    Ball {
        raw: Vec<u8>,
        ball: Map<String, Value>,
    },
    Other(Vec<u8>),
}

impl Line {
    fn raw(&self) -> &[u8] {
        match self {
            Line::Ball { raw, .. } | Line::Other(raw) => raw,
        }
    }
}

struct Lines {
    lines: Vec<Line>,
}

impl Lines {
    fn parse(bytes: &[u8]) -> Lines {
        let lines = bytes
            .split(|&b| b == b'\n')
            .map(|raw| {
                let text = std::str::from_utf8(raw).unwrap_or("");
                match serde_json::from_str::<Value>(text.trim()) {
                    Ok(Value::Object(ball)) if ball.get("id").is_some_and(Value::is_string) => {
                        Line::Ball {
                            raw: raw.to_vec(),
                            ball,
                        }
                    }
                    _ => Line::Other(raw.to_vec()),
                }
            })
            .collect();
        Lines { lines }
    }

    fn balls(&self) -> impl Iterator<Item = &Map<String, Value>> {
        self.lines.iter().filter_map(|l| match l {
            Line::Ball { ball, .. } => Some(ball),
            Line::Other(_) => None,
        })
    }

    fn render(&self) -> Vec<u8> {
        let parts: Vec<&[u8]> = self.lines.iter().map(Line::raw).collect();
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

/// juggle's timestamp shape: RFC 3339 with fractional seconds and the local offset.
pub fn juggle_now() -> String {
    Local::now().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

impl Juggle {
    pub fn new(dir: impl Into<PathBuf>, session: impl Into<String>) -> Juggle {
        Juggle {
            dir: dir.into(),
            session: session.into(),
        }
    }

    pub fn balls_path(&self) -> PathBuf {
        self.dir.join("balls.jsonl")
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lines { lines: vec![] }),
            Err(e) => Err(Self::io_err(path, e)),
        }
    }

    /// Takes juggle's write lock (BSD flock, which is what std's `File::lock` uses on Linux).
    fn lock(&self) -> Result<File, TrackerError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Self::io_err(&self.dir, e))?;
        let path = self.dir.join("balls.jsonl.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Self::io_err(&path, e))?;
        f.lock().map_err(|e| Self::io_err(&path, e))?;
        Ok(f)
    }

    /// Re-reads under the lock, applies `change` to ball `id`, replaces the file atomically.
    fn update(
        &self,
        id: &str,
        change: impl FnOnce(&mut Map<String, Value>),
    ) -> Result<(), TrackerError> {
        let _lock = self.lock()?;
        tracing::debug!(ball = %id, "juggle update");
        let path = self.balls_path();
        let mut lines = Self::read(&path)?;
        let mut change = Some(change);
        let mut found = false;
        for line in &mut lines.lines {
            if let Line::Ball { raw, ball } = line
                && str_field(ball, "id") == id
                && let Some(change) = change.take()
            {
                change(ball);
                ball.insert("last_activity".into(), Value::String(juggle_now()));
                // The line keeps its own ending.
                let crlf = raw.ends_with(b"\r");
                *raw = serde_json::to_vec(ball).expect("a JSON map serializes");
                if crlf {
                    raw.push(b'\r');
                }
                found = true;
            }
        }
        if !found {
            return Err(TrackerError::NotFound(id.to_string()));
        }
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

    fn archived_ids(&self) -> Result<HashSet<String>, TrackerError> {
        let lines = Self::read(&self.dir.join("archive/balls.jsonl"))?;
        Ok(lines
            .balls()
            .map(|b| str_field(b, "id").to_string())
            .collect())
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
        }
    }

    /// Resolves an id the way juggle does: exact short id, exact id, then prefixes.
    pub fn resolve_id(&self, query: &str) -> Result<String, TrackerError> {
        let lines = Self::read(&self.balls_path())?;
        let archive = Self::read(&self.dir.join("archive/balls.jsonl"))?;
        let ids: Vec<String> = lines
            .balls()
            .chain(archive.balls())
            .map(|b| str_field(b, "id").to_string())
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
    pub fn add(&self, project_name: &str, new: &NewBall<'_>) -> Result<String, TrackerError> {
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
        let lock_path = dir.join("progress.txt.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Self::io_err(&lock_path, e))?;
        lock.lock().map_err(|e| Self::io_err(&lock_path, e))?;
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
        let lines = Self::read(&self.balls_path())?;
        let archived = self.archived_ids()?;
        let complete: HashSet<&str> = lines
            .balls()
            .filter(|b| str_field(b, "state") == "complete")
            .map(|b| str_field(b, "id"))
            .collect();
        let mut seen = HashSet::new();
        let mut tasks = Vec::new();
        for ball in lines.balls() {
            let mut task = Self::to_task(ball);
            if !seen.insert(task.id.clone()) {
                continue;
            }
            if !self.session.is_empty() && !task.tags.iter().any(|t| t == &self.session) {
                continue;
            }
            task.waiting_on = task
                .depends_on
                .iter()
                .filter(|d| !complete.contains(d.as_str()) && !archived.contains(d.as_str()))
                .cloned()
                .collect();
            tasks.push(task);
        }
        Ok(tasks)
    }

    fn claim(&self, id: &str) -> Result<(), TrackerError> {
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
        j.claim("p-aaaa0001").unwrap();
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

    #[test]
    fn rewritten_lines_keep_their_own_line_ending() {
        let content = format!(
            "{}\r\n{}\n{}\r\n",
            ball("p-1", ""),
            ball("p-2", ""),
            ball("p-3", "")
        );
        let (_d, j) = setup(&content);
        j.claim("p-1").unwrap();
        j.claim("p-2").unwrap();
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
