//! The label-based reaper: finds every `cwo-managed` worker the provider has and deletes the
//! ones that should not exist, in two phases (mark with a label, delete on a later pass once the
//! mark is older than the grace period), so a VM another controller is just creating is never
//! caught mid-flight. A list that fails deletes nothing.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use super::ports::journaled;
use super::teardown::{Teardown, TeardownError};
use crate::journal::{Journal, JournalError, WorkerRow, WorkerState};
use crate::provider::{DeleteOutcome, Instance, Provider, ProviderError, ProviderErrorKind};
use crate::tracker::{Tracker, TrackerError};

pub(crate) const MARK_LABEL: &str = "cwo-reap-marked";
pub(crate) use super::teardown::KEEP_LABEL;

/// What the reaper decided for one worker.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decision {
    pub worker: String,
    pub zone: Option<String>,
    pub project: String,
    /// Why it should go: expired, stopped, orphan, abandoned (a journaled worker no controller has
    /// held for the grace period), unfinished-create, unfinished-teardown (empty = it stays).
    pub reason: String,
    /// keep | mark | wait | delete | deleted | unmark | gone | failed. `gone`: the worker
    /// vanished (deleted outside cwo, or by its TTL) between the list and the mark, unmark or
    /// delete; that is done, not failed.
    pub action: String,
    pub detail: String,
}

pub struct Reaper<'a> {
    pub provider: &'a dyn Provider,
    pub journal: &'a Journal,
    pub project_slug: &'a str,
    pub grace: Duration,
    /// Whether a controller holds this project's lock (its in-flight creates are not orphans).
    pub controller_running: bool,
    /// How long one deletion is retried (`teardown_timeout`), and where each retry is reported.
    pub teardown_timeout: Duration,
    pub on_retry: &'a (dyn Fn(String) + Send + Sync),
}

impl<'a> Reaper<'a> {
    /// A reaper for this project with the settings' grace period and teardown deadline.
    pub(crate) fn new(
        provider: &'a dyn Provider,
        journal: &'a Journal,
        project_slug: &'a str,
        settings: &crate::config::Settings,
        controller_running: bool,
        on_retry: &'a (dyn Fn(String) + Send + Sync),
    ) -> Reaper<'a> {
        Reaper {
            provider,
            journal,
            project_slug,
            grace: settings.reap_grace,
            controller_running,
            teardown_timeout: settings.teardown_timeout,
            on_retry,
        }
    }
}

fn age_secs(inst: &Instance) -> i64 {
    (Utc::now() - inst.created_at).num_seconds()
}

/// What a decision says when its worker is no longer there to act on.
const GONE_DETAIL: &str = "already gone (deleted outside cwo or by its TTL)";

/// Records the outcome of a label change: a worker that is not found any more is gone (done),
/// anything else failed.
fn labelled(d: &mut Decision, result: Result<(), ProviderError>, doing: &str) {
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == ProviderErrorKind::NotFound => {
            d.action = "gone".into();
            d.detail = GONE_DETAIL.into();
        }
        Err(e) => {
            d.action = "failed".into();
            d.detail = format!("{doing}: {}", e.one_line());
        }
    }
}

impl Reaper<'_> {
    /// The confirmed, journaled teardown this reaper applies, with its deadline and reporting.
    pub(crate) fn teardown(&self) -> Teardown<'_> {
        Teardown {
            provider: self.provider,
            journal: self.journal,
            project_slug: self.project_slug,
            teardown_timeout: self.teardown_timeout,
            on_retry: self.on_retry,
        }
    }

    /// Lists this project's workers and deletes the stopped ones (see [`Teardown::sweep_stopped`]).
    pub(crate) async fn sweep_stopped(&self) -> Result<(Vec<String>, Vec<String>), TeardownError> {
        self.teardown().sweep_stopped().await
    }

    /// Deletes this project's stopped workers among `listed` (see [`Teardown::delete_stopped`]).
    pub(crate) async fn delete_stopped(&self, listed: &[Instance]) -> (Vec<String>, Vec<String>) {
        self.teardown().delete_stopped(listed).await
    }

    /// Why a worker should not exist, if it should not.
    fn reason(&self, inst: &Instance, journal_rows: &HashMap<String, WorkerRow>) -> Option<String> {
        // A builder stopped for imaging while its `cwo image build` runs: that build deletes it.
        if self.controller_running && inst.being_imaged() {
            return None;
        }
        // Stopped first: deleted at once, whatever else is true of it.
        if inst.status.is_stopped() {
            return Some("stopped".into());
        }
        let now = Utc::now().timestamp();
        if let Some(exp) = inst.expires_at()
            && exp < now
        {
            return Some("expired".into());
        }
        // Only this project's journal can vouch for this project's workers.
        if inst.labels.get("cwo-project").map(String::as_str) == Some(self.project_slug) {
            let row = journal_rows.get(&inst.name);
            match row.map(|w| w.state) {
                // Held by a controller, unless none runs and none has said so for the grace
                // period: a crashed controller's worker, whose balls go back to pending.
                Some(WorkerState::Ready)
                    if !self.controller_running
                        && row.and_then(|w| w.last_seen).is_none_or(|seen| {
                            (Utc::now() - seen).num_seconds() >= self.grace.as_secs() as i64
                        }) =>
                {
                    return Some("abandoned".into());
                }
                Some(WorkerState::Ready) => {}
                // A create (or a bring-up: `starting`) whose controller is gone, or that never
                // finished.
                Some(WorkerState::Intent | WorkerState::Starting)
                    if !self.controller_running
                        || age_secs(inst) >= self.grace.as_secs() as i64 =>
                {
                    return Some("unfinished-create".into());
                }
                Some(WorkerState::Intent | WorkerState::Starting) => {}
                Some(WorkerState::Deleting) => return Some("unfinished-teardown".into()),
                _ if age_secs(inst) >= self.grace.as_secs() as i64 => return Some("orphan".into()),
                _ => {}
            }
        }
        None
    }

    /// One pass. `act` = false decides and reports but changes nothing.
    pub async fn pass(&self, act: bool) -> Result<Vec<Decision>, TeardownError> {
        let selector = BTreeMap::from([("cwo-managed".to_string(), "true".to_string())]);
        let listed = self.provider.list(&selector).await?;
        let journal_rows: HashMap<String, WorkerRow> =
            journaled(self.journal, |j| j.live_workers())
                .await?
                .into_iter()
                .map(|w| (w.name.clone(), w))
                .collect();
        let mut out = Vec::new();
        for inst in listed {
            out.push(self.decide(&inst, &journal_rows, act).await);
        }
        if act {
            self.close_vanished(&out, &journal_rows).await?;
        }
        Ok(out)
    }

    /// What one listed worker gets (and, with `act`, what was done to it).
    async fn decide(
        &self,
        inst: &Instance,
        journal_rows: &HashMap<String, WorkerRow>,
        act: bool,
    ) -> Decision {
        let now = Utc::now().timestamp();
        let mut d = Decision {
            worker: inst.name.clone(),
            zone: inst.zone.clone(),
            project: inst.labels.get("cwo-project").cloned().unwrap_or_default(),
            reason: String::new(),
            action: "keep".into(),
            detail: String::new(),
        };
        let marked_at = inst
            .labels
            .get(MARK_LABEL)
            .and_then(|m| m.parse::<i64>().ok());
        if inst.labels.get(KEEP_LABEL).map(String::as_str) == Some("true") {
            d.detail = format!("{KEEP_LABEL}=true");
            return d;
        }
        let Some(reason) = self.reason(inst, journal_rows) else {
            if marked_at.is_some() {
                d.action = "unmark".into();
                d.detail = "no longer a candidate".into();
                if act {
                    let mut labels = inst.labels.clone();
                    labels.remove(MARK_LABEL);
                    let result = self.provider.set_labels(&inst.name, &labels).await;
                    labelled(&mut d, result, "unmarking");
                }
            }
            return d;
        };
        d.reason = reason.clone();
        // A stopped worker (no longer billed as compute, but its disk is, and its TTL no longer
        // runs) is no one's: deleted at once. The others (an orphan may be a create another
        // controller is in the middle of) are marked first.
        let at_once = reason == "stopped";
        let marked_at = if at_once { Some(0) } else { marked_at };
        match marked_at {
            None => {
                d.action = "mark".into();
                d.detail = format!(
                    "deleted on a pass {} from now",
                    humantime::format_duration(self.grace)
                );
                if act {
                    let mut labels = inst.labels.clone();
                    labels.insert(MARK_LABEL.into(), now.to_string());
                    let result = self.provider.set_labels(&inst.name, &labels).await;
                    labelled(&mut d, result, "marking");
                }
            }
            Some(at) if now - at < self.grace.as_secs() as i64 => {
                d.action = "wait".into();
                d.detail = format!("marked {}s ago", now - at);
            }
            Some(_) => {
                d.action = "delete".into();
                if act {
                    match self.delete(inst, &reason).await {
                        Ok(DeleteOutcome::Deleted) => d.action = "deleted".into(),
                        Ok(DeleteOutcome::AlreadyGone) => {
                            d.action = "gone".into();
                            d.detail = GONE_DETAIL.into();
                        }
                        Err(e) => {
                            d.action = "failed".into();
                            d.detail = crate::util::error::one_line(&e);
                        }
                    }
                }
            }
        }
        d
    }

    /// Journal rows whose worker the provider no longer has (never listed, or gone since the
    /// list): closed (their ledger row records the whole life). A create still in flight (its
    /// controller alive, within the grace period) is left to the next pass; a VM that shows up
    /// later unjournaled is an orphan then.
    async fn close_vanished(
        &self,
        decided: &[Decision],
        journal_rows: &HashMap<String, WorkerRow>,
    ) -> Result<(), TeardownError> {
        let listed_names: Vec<&str> = decided
            .iter()
            .filter(|d| d.action != "gone")
            .map(|d| d.worker.as_str())
            .collect();
        for (name, row) in journal_rows {
            if listed_names.contains(&name.as_str()) {
                continue;
            }
            if row.state.is_coming_up() {
                let age = (Utc::now() - row.intent_at).num_seconds();
                if self.controller_running && age < self.grace.as_secs() as i64 {
                    continue;
                }
            }
            if self.provider.get(name).await?.is_none() {
                let n = name.clone();
                // The worker is gone whatever the journal says: a row that cannot be closed now
                // is said on stderr and closed by a later pass, and the pass's decisions stand.
                if let Err(e) = journaled(self.journal, move |j| {
                    j.worker_deleting(&n, "gone")?;
                    j.worker_deleted(&n, "gone")
                })
                .await
                {
                    (self.on_retry)(format!(
                        "{name} is gone, but the journal could not record it ({e}); the next pass tries again"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Deletes a worker the reaper found (see [`Teardown::delete`]).
    pub(crate) async fn delete(
        &self,
        inst: &Instance,
        reason: &str,
    ) -> Result<DeleteOutcome, TeardownError> {
        self.teardown().delete(inst, reason).await
    }
}

/// Why a reaped worker's attempts could not be settled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReleaseError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Tracker(#[from] TrackerError),
    #[error("{ball}: {source}")]
    Release {
        ball: String,
        #[source]
        source: TrackerError,
    },
}

/// The attempts a reaped worker still had open (its controller died): closed as aborted, and their
/// balls go back to pending for the next `cwo run`. Returns the balls released.
pub(crate) fn release_attempts(
    journal: &Journal,
    tracker: &dyn Tracker,
    worker: &str,
) -> Result<Vec<String>, ReleaseError> {
    let mut released = Vec::new();
    for a in journal
        .dangling_attempts()?
        .into_iter()
        .filter(|a| a.worker == worker)
    {
        journal.attempt_end(
            a.id,
            "aborted",
            "-",
            a.branch.as_deref(),
            None,
            Some("its controller stopped and the reaper deleted the worker"),
        )?;
        // Only a ball still in progress goes back: one its controller completed or blocked
        // before dying (the attempt closes after the tracker) keeps its state.
        let in_progress = tracker
            .list()?
            .iter()
            .any(|t| t.id == a.ball_id && t.state == "in_progress");
        if !in_progress {
            continue;
        }
        match tracker.release(&a.ball_id) {
            Ok(()) | Err(TrackerError::NotFound(_)) => {}
            Err(source) => {
                return Err(ReleaseError::Release {
                    ball: a.ball_id,
                    source,
                });
            }
        }
        released.push(a.ball_id);
    }
    Ok(released)
}
