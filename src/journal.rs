//! The embedded state store: SQLite in the state dir. Workers are written as an *intent* before
//! the provider is called (DESIGN invariant 2), tasks and attempts as they happen, and one ledger
//! row per worker life. One controller per project holds `controller.lock`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::model::Usage;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("another cwo controller (pid {pid}) is running for this project (lock {path})")]
    Locked { pid: String, path: String },
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    machine_type TEXT NOT NULL,
    request_id TEXT NOT NULL,
    labels TEXT NOT NULL,
    state TEXT NOT NULL,            -- intent | starting | ready | deleting | deleted
    intent_at TEXT NOT NULL,
    created_at TEXT,                -- the provider's own creation timestamp
    ready_at TEXT,
    deleted_at TEXT,
    termination_reason TEXT,
    instance TEXT,                  -- the provider's instance record (JSON)
    current_task TEXT,
    idle_since TEXT,
    price TEXT,                     -- the price snapshot taken at launch (JSON)
    heartbeat_at TEXT,              -- last time a controller holding the worker said so
    bootstrap_ms INTEGER,           -- how long its bootstrap took, connection to ready
    boot_image TEXT                 -- the baked image it booted from (NULL: the base image)
);
CREATE TABLE IF NOT EXISTS tasks (
    ball_id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    branch TEXT,
    commit_sha TEXT,
    reason TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    ball_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    outcome TEXT,                   -- done | blocked | failed | aborted (NULL while running)
    exit_status TEXT,
    log_path TEXT NOT NULL,
    workdir TEXT NOT NULL DEFAULT '',  -- the attempt's directory on the worker
    base TEXT NOT NULL DEFAULT '',     -- the commit the agent started from
    branch TEXT,
    commit_sha TEXT,
    reason TEXT,
    workflow_commit TEXT,           -- where the repository's workflow was read for it
    agent_launched INTEGER          -- 0: no agent ran (yet); 1: it did; NULL: a journal too old to say
);
CREATE TABLE IF NOT EXISTS attempt_usage (
    attempt_id INTEGER PRIMARY KEY, -- attempts.id
    ball_id TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    cost_known_usd REAL NOT NULL DEFAULT 0,  -- the steps' reported costs, summed
    steps INTEGER NOT NULL DEFAULT 0,        -- usage reports read (0: unknown, never $0)
    steps_without_cost INTEGER NOT NULL DEFAULT 0,
    warning TEXT,                   -- e.g. the soft timeout passed
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS host_keys (
    worker TEXT PRIMARY KEY,        -- what the key is pinned under: a worker name or a host address
    address TEXT NOT NULL,
    key TEXT NOT NULL,              -- OpenSSH public key line
    pinned_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY,
    worker TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    machine_type TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT NOT NULL,
    seconds REAL NOT NULL,
    termination_reason TEXT NOT NULL,
    price TEXT                      -- the worker's launch price snapshot (JSON)
);
CREATE TABLE IF NOT EXISTS pull_requests (
    ball_id TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    url TEXT NOT NULL,
    branch TEXT NOT NULL,
    state TEXT NOT NULL,            -- open | merged | closed | blocked (feedback rounds spent)
    rounds INTEGER NOT NULL DEFAULT 0,   -- follow-up attempts started for feedback
    seen_review INTEGER NOT NULL DEFAULT 0,      -- highest review id acted on
    seen_comment INTEGER NOT NULL DEFAULT 0,     -- highest review comment id acted on
    seen_issue_comment INTEGER NOT NULL DEFAULT 0,
    failed_sha TEXT NOT NULL DEFAULT '',  -- head commit whose failed checks were acted on
    review_state TEXT NOT NULL DEFAULT '',  -- last seen: approved | changes_requested | commented | ''
    check_state TEXT NOT NULL DEFAULT '',   -- last seen: success | failure | pending | ''
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id TEXT PRIMARY KEY,            -- X-GitHub-Delivery
    event TEXT NOT NULL,
    received_at TEXT NOT NULL       -- kept a day: a delivery seen again within it is a replay
);
";

/// A pull request cwo opened for a task, and how far its feedback was acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequestRow {
    pub ball_id: String,
    pub number: u64,
    pub url: String,
    pub branch: String,
    pub state: String,
    pub rounds: u32,
    pub seen_review: u64,
    pub seen_comment: u64,
    pub seen_issue_comment: u64,
    pub failed_sha: String,
    pub review_state: String,
    pub check_state: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Journal {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// Where a worker is in its journaled life: `intent` (a create is about to be sent), `starting`
/// (the provider made it; it is being made ready), `ready` (a controller may use and adopt it),
/// `deleting` (a teardown began), `deleted` (confirmed gone; its ledger row is written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Intent,
    Starting,
    Ready,
    Deleting,
    Deleted,
}

impl WorkerState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WorkerState::Intent => "intent",
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Deleting => "deleting",
            WorkerState::Deleted => "deleted",
        }
    }

    /// A create whose controller has not yet made the worker ready.
    pub(crate) fn is_coming_up(self) -> bool {
        matches!(self, WorkerState::Intent | WorkerState::Starting)
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for WorkerState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl rusqlite::types::FromSql for WorkerState {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        match v.as_str()? {
            "intent" => Ok(WorkerState::Intent),
            "starting" => Ok(WorkerState::Starting),
            "ready" => Ok(WorkerState::Ready),
            "deleting" => Ok(WorkerState::Deleting),
            "deleted" => Ok(WorkerState::Deleted),
            other => Err(rusqlite::types::FromSqlError::Other(
                format!("unknown worker state {other:?}").into(),
            )),
        }
    }
}

impl rusqlite::types::ToSql for WorkerState {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerRow {
    pub name: String,
    pub provider: String,
    pub machine_type: String,
    pub request_id: String,
    pub state: WorkerState,
    pub intent_at: DateTime<Utc>,
    pub created_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub termination_reason: Option<String>,
    #[serde(skip)]
    pub instance: Option<String>,
    pub current_task: Option<String>,
    pub idle_since: Option<DateTime<Utc>>,
    pub price: Option<crate::cost::PriceSnapshot>,
    /// When a controller last said it holds the worker (its heartbeat, else when it became ready).
    pub last_seen: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AttemptRow {
    pub(crate) id: i64,
    pub(crate) ball_id: String,
    pub(crate) attempt: i64,
    pub(crate) worker: String,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) ended_at: Option<DateTime<Utc>>,
    pub(crate) outcome: Option<String>,
    pub(crate) exit_status: Option<String>,
    pub(crate) log_path: String,
    pub(crate) workdir: String,
    pub(crate) base: String,
    pub(crate) branch: Option<String>,
    pub(crate) commit_sha: Option<String>,
    pub(crate) reason: Option<String>,
    /// Where the repository's workflow was read for it ("": a journal too old to say).
    pub(crate) workflow_commit: String,
    /// Whether its agent was launched (None: a journal too old to say).
    pub(crate) agent_launched: Option<bool>,
}

impl AttemptRow {
    /// Whether its LLM cost is known from `usage` (its reported usage, if any): an attempt
    /// whose agent never ran cost nothing; one that ran and reported nothing, or a step
    /// without a cost, is unknown.
    pub(crate) fn llm_cost(&self, usage: Option<&Usage>) -> Option<f64> {
        match (usage.filter(|u| u.steps > 0), self.agent_launched) {
            (Some(u), _) => u.cost_usd(),
            (None, Some(false)) => Some(0.0),
            (None, _) => None,
        }
    }
}

/// An attempt about to start.
pub(crate) struct NewAttempt<'a> {
    pub(crate) ball_id: &'a str,
    /// Numbered per ball across runs.
    pub(crate) seq: u32,
    pub(crate) worker: &'a str,
    pub(crate) log_path: &'a Path,
    pub(crate) workdir: &'a str,
    pub(crate) base: &'a str,
    pub(crate) branch: &'a str,
    /// Where the repository's workflow is read for it.
    pub(crate) workflow_commit: &'a str,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    pub ball_id: String,
    pub title: String,
    pub state: String,
    pub attempts: i64,
    pub worker: Option<String>,
    pub branch: Option<String>,
    pub commit_sha: Option<String>,
    pub reason: Option<String>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LedgerRow {
    pub worker: String,
    pub provider: String,
    pub machine_type: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub seconds: f64,
    pub termination_reason: String,
    /// The launch price snapshot; `None` = unknown.
    pub price: Option<crate::cost::PriceSnapshot>,
}

/// provider, machine type, created_at, termination reason, price: what a ledger row copies.
type LifeRow = (String, String, Option<String>, String, Option<String>);

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_ts(s: Option<String>) -> Option<DateTime<Utc>> {
    s.and_then(|s| {
        DateTime::parse_from_rfc3339(&s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

impl Journal {
    pub fn open(state_dir: &Path) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(state_dir).map_err(|source| JournalError::Io {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join("journal.sqlite");
        let db = |source| JournalError::Db {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(&path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        // Journals made before a column existed get it (SQLite has no ADD COLUMN IF NOT EXISTS).
        for (table, column, decl) in [
            ("workers", "heartbeat_at", "TEXT"),
            ("workers", "bootstrap_ms", "INTEGER"),
            ("workers", "boot_image", "TEXT"),
            ("attempts", "workflow_commit", "TEXT"),
            ("attempts", "agent_launched", "INTEGER"),
        ] {
            let has: bool = conn
                .query_row(
                    "SELECT COUNT(*) > 0 FROM pragma_table_info(?1) WHERE name = ?2",
                    params![table, column],
                    |r| r.get(0),
                )
                .map_err(db)?;
            if !has
                && let Err(e) =
                    conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                // Another cwo opening the same old journal at the same moment added it first.
                && !e.to_string().contains("duplicate column name")
            {
                return Err(db(e));
            }
        }
        Ok(Journal {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The journal's file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, JournalError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&conn).map_err(|source| JournalError::Db {
            path: self.path.display().to_string(),
            source,
        })
    }

    // ---- webhook deliveries ----

    /// Records a webhook delivery id; false when it was already recorded within `keep` (a
    /// replay, or GitHub's redelivery of one already acted on). Older records are dropped here.
    pub(crate) fn webhook_delivery_new(
        &self,
        id: &str,
        event: &str,
        keep: chrono::Duration,
    ) -> Result<bool, JournalError> {
        let now = Utc::now();
        self.with(|c| {
            c.execute(
                "DELETE FROM webhook_deliveries WHERE received_at < ?1",
                params![ts(now - keep)],
            )?;
            let added = c.execute(
                "INSERT OR IGNORE INTO webhook_deliveries (id, event, received_at) VALUES (?1, ?2, ?3)",
                params![id, event, ts(now)],
            )?;
            Ok(added == 1)
        })
    }

    /// Whether the journal file can be read now (`cwo serve`'s health check): a read-only
    /// connection of its own and one query, so a file damaged or replaced under an open
    /// connection is noticed.
    pub(crate) fn probe(&self) -> Result<(), JournalError> {
        let db = |source| JournalError::Db {
            path: self.path.display().to_string(),
            source,
        };
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db)?;
        conn.query_row("SELECT count(*) FROM workers", [], |r| r.get::<_, i64>(0))
            .map(|_| ())
            .map_err(db)
    }

    // ---- workers ----

    /// Written before the provider is asked to create anything.
    pub fn worker_intent(
        &self,
        name: &str,
        provider: &str,
        machine_type: &str,
        request_id: &str,
        labels: &str,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO workers (name, provider, machine_type, request_id, labels, state, intent_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'intent', ?6)",
                params![name, provider, machine_type, request_id, labels, ts(Utc::now())],
            )
            .map(|_| ())
        })
    }

    /// The provider created the worker (`starting`: it is being made ready — bootstrap,
    /// prerequisites — and nothing runs on it yet). A worker left `starting` by a stopped
    /// controller is deleted, never adopted: it may be half set up.
    pub(crate) fn worker_created(
        &self,
        name: &str,
        created_at: DateTime<Utc>,
        instance: &str,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE workers SET state = 'starting', created_at = ?2, instance = ?3
                 WHERE name = ?1 AND state = 'intent'",
                params![name, ts(created_at), instance],
            )
            .map(|_| ())
        })
    }

    /// The worker is ready for tasks (`ready`), as `instance` describes it.
    pub fn worker_ready(
        &self,
        name: &str,
        created_at: DateTime<Utc>,
        instance: &str,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE workers SET state = 'ready', created_at = ?2, ready_at = ?3, instance = ?4, idle_since = ?3
                 WHERE name = ?1 AND state IN ('intent', 'starting', 'ready')",
                params![name, ts(created_at), ts(Utc::now()), instance],
            )
            .map(|_| ())
        })
    }

    /// Sets the provider's creation time when the journal never learned it (a controller that
    /// died between the create call and its answer).
    pub(crate) fn worker_created_if_unknown(
        &self,
        name: &str,
        created_at: DateTime<Utc>,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE workers SET created_at = ?2 WHERE name = ?1 AND created_at IS NULL",
                params![name, ts(created_at)],
            )
            .map(|_| ())
        })
    }

    /// Stores the price snapshot taken at launch.
    pub(crate) fn worker_price(
        &self,
        name: &str,
        price: &crate::cost::PriceSnapshot,
    ) -> Result<(), JournalError> {
        let json = serde_json::to_string(price).expect("a price serializes");
        self.with(|c| {
            c.execute(
                "UPDATE workers SET price = ?2 WHERE name = ?1",
                params![name, json],
            )
            .map(|_| ())
        })
    }

    /// Records how long the worker's bootstrap took, and the baked image it booted from (`None`:
    /// the base image, fully bootstrapped).
    pub(crate) fn worker_bootstrapped(
        &self,
        name: &str,
        millis: u64,
        image: Option<&str>,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE workers SET bootstrap_ms = ?2, boot_image = ?3 WHERE name = ?1",
                params![name, millis as i64, image],
            )
            .map(|_| ())
        })
    }

    /// The measured bootstrap times (milliseconds) of the most recent workers (at most 20 of
    /// each kind): booted from the base image (`baked == false`) or from a baked one.
    pub(crate) fn bootstrap_times(&self, baked: bool) -> Result<Vec<u64>, JournalError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT bootstrap_ms FROM workers WHERE bootstrap_ms IS NOT NULL \
                 AND (boot_image IS NOT NULL) = ?1 ORDER BY intent_at DESC LIMIT 20",
            )?;
            let rows = st.query_map(params![baked], |r| r.get::<_, i64>(0))?;
            rows.map(|r| r.map(|v| v.max(0) as u64)).collect()
        })
    }

    /// Records what the worker is doing: a task, or idle since now.
    pub(crate) fn worker_activity(
        &self,
        name: &str,
        task: Option<&str>,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            if let Some(task) = task {
                c.execute(
                    "UPDATE workers SET current_task = ?2, idle_since = NULL WHERE name = ?1",
                    params![name, task],
                )
            } else {
                c.execute(
                    "UPDATE workers SET current_task = NULL, idle_since = ?2 WHERE name = ?1",
                    params![name, ts(Utc::now())],
                )
            }
            .map(|_| ())
        })
    }

    pub(crate) fn worker_deleting(&self, name: &str, reason: &str) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE workers SET state = 'deleting', termination_reason = ?2 WHERE name = ?1",
                params![name, reason],
            )
            .map(|_| ())
        })
    }

    /// The worker is confirmed gone: its life goes into the ledger.
    pub(crate) fn worker_deleted(&self, name: &str, reason: &str) -> Result<(), JournalError> {
        let now = Utc::now();
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.execute(
                "UPDATE workers SET state = 'deleted', deleted_at = ?2, current_task = NULL,
                        termination_reason = COALESCE(termination_reason, ?3)
                 WHERE name = ?1",
                params![name, ts(now), reason],
            )?;
            let row: Option<LifeRow> = tx
                .query_row(
                    "SELECT provider, machine_type, created_at, termination_reason, price FROM workers WHERE name = ?1",
                    params![name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()?;
            if let Some((provider, machine, created, why, price)) = row
                && let Some(start) = parse_ts(created)
            {
                let seconds = (now - start).num_milliseconds().max(0) as f64 / 1000.0;
                tx.execute(
                    "INSERT OR IGNORE INTO ledger (worker, provider, machine_type, started_at, ended_at, seconds, termination_reason, price)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![name, provider, machine, ts(start), ts(now), seconds, why, price],
                )?;
            }
            tx.commit()
        })
    }

    fn worker_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<WorkerRow> {
        Ok(WorkerRow {
            name: r.get(0)?,
            provider: r.get(1)?,
            machine_type: r.get(2)?,
            request_id: r.get(3)?,
            state: r.get(4)?,
            intent_at: parse_ts(r.get(5)?).unwrap_or_default(),
            created_at: parse_ts(r.get(6)?),
            deleted_at: parse_ts(r.get(7)?),
            termination_reason: r.get(8)?,
            instance: r.get(9)?,
            current_task: r.get(10)?,
            idle_since: parse_ts(r.get(11)?),
            price: r
                .get::<_, Option<String>>(12)?
                .and_then(|p| serde_json::from_str(&p).ok()),
            last_seen: parse_ts(r.get(13)?),
        })
    }

    const WORKER_COLS: &str =
        "name, provider, machine_type, request_id, state, intent_at, created_at, deleted_at,
         termination_reason, instance, current_task, idle_since, price,
         COALESCE(heartbeat_at, ready_at)";

    /// A controller holding the worker is alive (every minute while it holds it).
    pub(crate) fn worker_heartbeat(&self, name: &str) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE workers SET heartbeat_at = ?2 WHERE name = ?1",
                params![name, ts(Utc::now())],
            )
            .map(|_| ())
        })
    }

    /// Workers not yet confirmed deleted.
    pub fn live_workers(&self) -> Result<Vec<WorkerRow>, JournalError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {} FROM workers WHERE state != 'deleted' ORDER BY intent_at",
                Self::WORKER_COLS
            ))?;
            st.query_map([], Self::worker_from_row)?.collect()
        })
    }

    pub fn worker(&self, name: &str) -> Result<Option<WorkerRow>, JournalError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {} FROM workers WHERE name = ?1", Self::WORKER_COLS),
                params![name],
                Self::worker_from_row,
            )
            .optional()
        })
    }

    /// The host key pinned for a worker.
    pub(crate) fn host_key(&self, worker: &str) -> Result<Option<String>, JournalError> {
        self.with(|c| {
            c.query_row(
                "SELECT key FROM host_keys WHERE worker = ?1",
                params![worker],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Pins a worker's host key; an existing pin is never replaced.
    pub(crate) fn pin_host_key(
        &self,
        worker: &str,
        address: &str,
        key: &str,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO host_keys (worker, address, key, pinned_at) VALUES (?1, ?2, ?3, ?4)",
                params![worker, address, key, ts(Utc::now())],
            )
            .map(|_| ())
        })
    }

    // ---- tasks and attempts ----

    pub(crate) fn task_state(
        &self,
        ball_id: &str,
        title: &str,
        state: &str,
        worker: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tasks (ball_id, title, state, worker, reason, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(ball_id) DO UPDATE SET title = ?2, state = ?3, worker = COALESCE(?4, worker),
                     reason = ?5, updated_at = ?6",
                params![ball_id, title, state, worker, reason, ts(Utc::now())],
            )
            .map(|_| ())
        })
    }

    pub(crate) fn task_result(
        &self,
        ball_id: &str,
        branch: &str,
        commit: &str,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE tasks SET branch = ?2, commit_sha = ?3 WHERE ball_id = ?1",
                params![ball_id, branch, commit],
            )
            .map(|_| ())
        })
    }

    pub fn tasks(&self) -> Result<Vec<TaskRow>, JournalError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT ball_id, title, state, attempts, worker, branch, commit_sha, reason, updated_at
                 FROM tasks ORDER BY updated_at",
            )?;
            st.query_map([], |r| {
                Ok(TaskRow {
                    ball_id: r.get(0)?,
                    title: r.get(1)?,
                    state: r.get(2)?,
                    attempts: r.get(3)?,
                    worker: r.get(4)?,
                    branch: r.get(5)?,
                    commit_sha: r.get(6)?,
                    reason: r.get(7)?,
                    updated_at: parse_ts(r.get(8)?).unwrap_or_default(),
                })
            })?
            .collect()
        })
    }

    // ---- pull requests ----

    /// Records the pull request a task was delivered as (a new one starts with no feedback
    /// seen; an existing row keeps its rounds and watermarks and is open again).
    pub(crate) fn pull_request_opened(
        &self,
        ball_id: &str,
        number: u64,
        url: &str,
        branch: &str,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO pull_requests (ball_id, number, url, branch, state, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'open', ?5)
                 ON CONFLICT(ball_id) DO UPDATE SET number = ?2, url = ?3, branch = ?4,
                     state = CASE WHEN state = 'blocked' THEN 'blocked' ELSE 'open' END, updated_at = ?5",
                params![ball_id, number as i64, url, branch, ts(Utc::now())],
            )
            .map(|_| ())
        })
    }

    /// Writes a pull request's row back (state, rounds, watermarks, last seen review/check state).
    pub(crate) fn pull_request_update(&self, r: &PullRequestRow) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE pull_requests SET state = ?2, rounds = ?3, seen_review = ?4, seen_comment = ?5,
                     seen_issue_comment = ?6, failed_sha = ?7, review_state = ?8, check_state = ?9,
                     updated_at = ?10 WHERE ball_id = ?1",
                params![
                    r.ball_id,
                    r.state,
                    r.rounds,
                    r.seen_review as i64,
                    r.seen_comment as i64,
                    r.seen_issue_comment as i64,
                    r.failed_sha,
                    r.review_state,
                    r.check_state,
                    ts(Utc::now())
                ],
            )
            .map(|_| ())
        })
    }

    /// Counts a follow-up round and moves the pull request's feedback watermarks to what it
    /// acted on (written when the follow-up ends, so feedback whose follow-up never finished is
    /// read again, and costs no round).
    pub(crate) fn pull_request_seen(
        &self,
        ball_id: &str,
        review: u64,
        comment: u64,
        issue_comment: u64,
        failed_sha: &str,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE pull_requests SET rounds = rounds + 1, seen_review = MAX(seen_review, ?2),
                     seen_comment = MAX(seen_comment, ?3),
                     seen_issue_comment = MAX(seen_issue_comment, ?4),
                     failed_sha = CASE WHEN ?5 = '' THEN failed_sha ELSE ?5 END, updated_at = ?6
                 WHERE ball_id = ?1",
                params![
                    ball_id,
                    review as i64,
                    comment as i64,
                    issue_comment as i64,
                    failed_sha,
                    ts(Utc::now())
                ],
            )
            .map(|_| ())
        })
    }

    /// Every pull request cwo opened, newest first; `open_only`: the ones it still watches.
    pub fn pull_requests(&self, open_only: bool) -> Result<Vec<PullRequestRow>, JournalError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT ball_id, number, url, branch, state, rounds, seen_review, seen_comment,
                     seen_issue_comment, failed_sha, review_state, check_state, updated_at
                 FROM pull_requests WHERE (?1 = 0 OR state = 'open') ORDER BY number DESC",
            )?;
            st.query_map(params![open_only as i64], |r| {
                Ok(PullRequestRow {
                    ball_id: r.get(0)?,
                    number: r.get::<_, i64>(1)? as u64,
                    url: r.get(2)?,
                    branch: r.get(3)?,
                    state: r.get(4)?,
                    rounds: r.get(5)?,
                    seen_review: r.get::<_, i64>(6)? as u64,
                    seen_comment: r.get::<_, i64>(7)? as u64,
                    seen_issue_comment: r.get::<_, i64>(8)? as u64,
                    failed_sha: r.get(9)?,
                    review_state: r.get(10)?,
                    check_state: r.get(11)?,
                    updated_at: parse_ts(r.get(12)?).unwrap_or_default(),
                })
            })?
            .collect()
        })
    }

    pub(crate) fn attempt_start(&self, a: &NewAttempt<'_>) -> Result<i64, JournalError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO attempts (ball_id, attempt, worker, started_at, log_path, workdir, base, branch,
                     workflow_commit, agent_launched)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0)",
                params![
                    a.ball_id,
                    a.seq,
                    a.worker,
                    ts(Utc::now()),
                    a.log_path.display().to_string(),
                    a.workdir,
                    a.base,
                    a.branch,
                    a.workflow_commit
                ],
            )?;
            let ball_id = a.ball_id;
            c.execute(
                "UPDATE tasks SET attempts = attempts + 1 WHERE ball_id = ?1",
                params![ball_id],
            )?;
            Ok(c.last_insert_rowid())
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attempt_end(
        &self,
        id: i64,
        outcome: &str,
        exit_status: &str,
        branch: Option<&str>,
        commit: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE attempts SET ended_at = ?2, outcome = ?3, exit_status = ?4, branch = ?5, commit_sha = ?6, reason = ?7
                 WHERE id = ?1",
                params![id, ts(Utc::now()), outcome, exit_status, branch, commit, reason],
            )
            .map(|_| ())
        })
    }

    /// Attempts left open by a controller that stopped without closing them.
    pub(crate) fn dangling_attempts(&self) -> Result<Vec<AttemptRow>, JournalError> {
        Ok(self
            .attempts(None)?
            .into_iter()
            .filter(|a| a.ended_at.is_none())
            .collect())
    }

    pub(crate) fn attempts(&self, ball_id: Option<&str>) -> Result<Vec<AttemptRow>, JournalError> {
        self.attempts_where(ball_id, None)
    }

    /// The attempts of `ball_id` (every ball's: None), or the one with `id`.
    fn attempts_where(
        &self,
        ball_id: Option<&str>,
        id: Option<i64>,
    ) -> Result<Vec<AttemptRow>, JournalError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, ball_id, attempt, worker, started_at, ended_at, outcome, exit_status, log_path, branch, commit_sha, reason,
                        workdir, base, workflow_commit, agent_launched
                 FROM attempts WHERE (?1 IS NULL OR ball_id = ?1) AND (?2 IS NULL OR id = ?2) ORDER BY id",
            )?;
            st.query_map(params![ball_id, id], |r| {
                Ok(AttemptRow {
                    id: r.get(0)?,
                    ball_id: r.get(1)?,
                    attempt: r.get(2)?,
                    worker: r.get(3)?,
                    started_at: parse_ts(r.get(4)?).unwrap_or_default(),
                    ended_at: parse_ts(r.get(5)?),
                    outcome: r.get(6)?,
                    exit_status: r.get(7)?,
                    log_path: r.get(8)?,
                    branch: r.get(9)?,
                    commit_sha: r.get(10)?,
                    reason: r.get(11)?,
                    workdir: r.get(12)?,
                    base: r.get(13)?,
                    workflow_commit: r.get::<_, Option<String>>(14)?.unwrap_or_default(),
                    agent_launched: r.get::<_, Option<i64>>(15)?.map(|v| v != 0),
                })
            })?
            .collect()
        })
    }

    /// What an attempt's agent reported using so far. A write carrying fewer steps than the row
    /// has is dropped, so writes that overtake each other never move the count back.
    pub(crate) fn attempt_usage(
        &self,
        attempt_id: i64,
        ball_id: &str,
        u: &Usage,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO attempt_usage (attempt_id, ball_id, input_tokens, output_tokens, reasoning_tokens,
                     cache_read_tokens, cache_write_tokens, cost_known_usd, steps, steps_without_cost, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(attempt_id) DO UPDATE SET input_tokens = ?3, output_tokens = ?4,
                     reasoning_tokens = ?5, cache_read_tokens = ?6, cache_write_tokens = ?7,
                     cost_known_usd = ?8, steps = ?9, steps_without_cost = ?10, updated_at = ?11
                 WHERE excluded.steps >= attempt_usage.steps",
                params![
                    attempt_id,
                    ball_id,
                    u.input_tokens as i64,
                    u.output_tokens as i64,
                    u.reasoning_tokens as i64,
                    u.cache_read_tokens as i64,
                    u.cache_write_tokens as i64,
                    u.cost_known_usd,
                    u.steps,
                    u.steps_without_cost,
                    ts(Utc::now())
                ],
            )
            .map(|_| ())
        })
    }

    /// The attempt's agent was launched (its LLM cost is now what it reports, or unknown).
    pub(crate) fn attempt_launched(&self, attempt_id: i64) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE attempts SET agent_launched = 1 WHERE id = ?1",
                params![attempt_id],
            )
            .map(|_| ())
        })
    }

    /// A warning about a running attempt (`cwo status` shows it).
    pub(crate) fn attempt_warning(
        &self,
        attempt_id: i64,
        ball_id: &str,
        warning: &str,
    ) -> Result<(), JournalError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO attempt_usage (attempt_id, ball_id, warning, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(attempt_id) DO UPDATE SET warning = ?3, updated_at = ?4",
                params![attempt_id, ball_id, warning, ts(Utc::now())],
            )
            .map(|_| ())
        })
    }

    /// The reported usage and warning of every attempt (of one ball, or of all), by attempt id.
    /// An attempt with no row reported nothing.
    pub(crate) fn usages(
        &self,
        ball_id: Option<&str>,
    ) -> Result<BTreeMap<i64, (Usage, Option<String>)>, JournalError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT attempt_id, input_tokens, output_tokens, reasoning_tokens, cache_read_tokens,
                        cache_write_tokens, cost_known_usd, steps, steps_without_cost, warning
                 FROM attempt_usage WHERE (?1 IS NULL OR ball_id = ?1)",
            )?;
            st.query_map(params![ball_id], |r| {
                let u = Usage {
                    input_tokens: r.get::<_, i64>(1)? as u64,
                    output_tokens: r.get::<_, i64>(2)? as u64,
                    reasoning_tokens: r.get::<_, i64>(3)? as u64,
                    cache_read_tokens: r.get::<_, i64>(4)? as u64,
                    cache_write_tokens: r.get::<_, i64>(5)? as u64,
                    cost_known_usd: r.get(6)?,
                    steps: r.get(7)?,
                    steps_without_cost: r.get(8)?,
                };
                Ok((r.get(0)?, (u, r.get(9)?)))
            })?
            .collect()
        })
    }

    pub(crate) fn attempt(&self, id: i64) -> Result<Option<AttemptRow>, JournalError> {
        Ok(self.attempts_where(None, Some(id))?.pop())
    }

    pub fn ledger(&self) -> Result<Vec<LedgerRow>, JournalError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT worker, provider, machine_type, started_at, ended_at, seconds, termination_reason, price FROM ledger ORDER BY id",
            )?;
            st.query_map([], |r| {
                Ok(LedgerRow {
                    worker: r.get(0)?,
                    provider: r.get(1)?,
                    machine_type: r.get(2)?,
                    started_at: parse_ts(r.get(3)?).unwrap_or_default(),
                    ended_at: parse_ts(r.get(4)?).unwrap_or_default(),
                    seconds: r.get(5)?,
                    termination_reason: r.get(6)?,
                    price: r
                        .get::<_, Option<String>>(7)?
                        .and_then(|p| serde_json::from_str(&p).ok()),
                })
            })?
            .collect()
        })
    }
}

/// The journal's `host_keys` table is where SSH host keys are pinned.
impl crate::transport::KnownHosts for Journal {
    fn pinned(&self, pin_as: &str) -> Result<Option<String>, crate::transport::KnownHostsError> {
        self.host_key(pin_as)
            .map_err(|e| crate::transport::KnownHostsError {
                what: "reading the pinned host key",
                source: Box::new(e),
            })
    }

    fn pin(
        &self,
        pin_as: &str,
        address: &str,
        key: &str,
    ) -> Result<(), crate::transport::KnownHostsError> {
        self.pin_host_key(pin_as, address, key)
            .map_err(|e| crate::transport::KnownHostsError {
                what: "pinning the host key",
                source: Box::new(e),
            })
    }
}

/// Exclusive ownership of a project's state dir by one controller (flock on `controller.lock`,
/// released by the kernel when the process dies, however it dies).
pub(crate) struct ControllerLock {
    _file: File,
}

impl ControllerLock {
    pub(crate) fn acquire(state_dir: &Path) -> Result<ControllerLock, JournalError> {
        std::fs::create_dir_all(state_dir).map_err(|source| JournalError::Io {
            path: state_dir.display().to_string(),
            source,
        })?;
        let path = state_dir.join("controller.lock");
        let io = |source| JournalError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                return Err(JournalError::Locked {
                    pid: pid.trim().to_string(),
                    path: path.display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(ControllerLock { _file: file })
    }

    /// The pid of a running controller, if any.
    pub(crate) fn holder(state_dir: &Path) -> Option<String> {
        let path = state_dir.join("controller.lock");
        let mut file = OpenOptions::new().read(true).write(true).open(path).ok()?;
        match file.try_lock() {
            Ok(()) => None,
            Err(_) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                Some(pid.trim().to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal from before the per-attempt workflow commit and agent launch: opened, it gains
    /// the columns; its attempts say neither, so their LLM cost is unknown, never $0.
    #[test]
    fn an_old_journal_gains_the_new_columns_and_its_attempts_stay_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let c = Connection::open(dir.path().join("journal.sqlite")).unwrap();
        c.execute_batch(
            "CREATE TABLE attempts (id INTEGER PRIMARY KEY, ball_id TEXT NOT NULL, attempt INTEGER NOT NULL,
                 worker TEXT NOT NULL, started_at TEXT NOT NULL, ended_at TEXT, outcome TEXT, exit_status TEXT,
                 log_path TEXT NOT NULL, workdir TEXT NOT NULL DEFAULT '', base TEXT NOT NULL DEFAULT '',
                 branch TEXT, commit_sha TEXT, reason TEXT);
             INSERT INTO attempts (ball_id, attempt, worker, started_at, log_path)
                 VALUES ('b', 1, 'w', '2026-01-01T00:00:00Z', '/l');",
        )
        .unwrap();
        drop(c);
        let j = Journal::open(dir.path()).unwrap();
        let old = &j.attempts(Some("b")).unwrap()[0];
        assert_eq!(
            (old.workflow_commit.as_str(), old.agent_launched),
            ("", None)
        );
        assert_eq!(old.llm_cost(None), None);
        let id = j
            .attempt_start(&NewAttempt {
                ball_id: "b",
                seq: 2,
                worker: "w",
                log_path: Path::new("/l2"),
                workdir: "/w",
                base: "abc",
                branch: "cwo/b",
                workflow_commit: "abc",
            })
            .unwrap();
        let new = j.attempt(id).unwrap().unwrap();
        assert_eq!(new.agent_launched, Some(false));
        assert_eq!(new.llm_cost(None), Some(0.0), "no agent ran: no LLM cost");
        j.attempt_launched(id).unwrap();
        let launched = j.attempt(id).unwrap().unwrap();
        assert_eq!(
            launched.llm_cost(None),
            None,
            "ran and said nothing: unknown"
        );
        assert_eq!(launched.workflow_commit, "abc");
    }

    /// Each state is stored as the word the schema documents, and read back as itself; a word
    /// the code does not know is an error, not a silent default.
    #[test]
    fn worker_states_round_trip_through_sqlite() {
        let c = Connection::open_in_memory().unwrap();
        c.execute("CREATE TABLE t (s TEXT)", []).unwrap();
        let all = [
            WorkerState::Intent,
            WorkerState::Starting,
            WorkerState::Ready,
            WorkerState::Deleting,
            WorkerState::Deleted,
        ];
        for s in all {
            c.execute("INSERT INTO t VALUES (?1)", [s]).unwrap();
        }
        let words: Vec<String> = c
            .prepare("SELECT s FROM t")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            words,
            ["intent", "starting", "ready", "deleting", "deleted"]
        );
        let back: Vec<WorkerState> = c
            .prepare("SELECT s FROM t")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(back, all);
        let unknown: rusqlite::Result<WorkerState> =
            c.query_row("SELECT 'zombie'", [], |r| r.get(0));
        assert!(unknown.is_err());
    }
}
