//! The confirmed, journaled teardown every path shares: the lifecycle's, the reaper's, the
//! budget kill switch's, and the stopped-worker sweep every command runs (DESIGN invariants 1, 2
//! and 4). Below both the lifecycle and the reaper, so neither imports the other.

use std::time::Duration;

use super::ports::journaled;
use crate::journal::{Journal, JournalError};
use crate::provider::{DeleteOutcome, Instance, Provider, ProviderError};

/// A worker carrying this label set to "true" is never deleted by the reaper or the sweeps.
pub(crate) const KEEP_LABEL: &str = "cwo-keep";

/// A teardown or reaper step that failed in the provider or in the journal.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Deletes a worker and confirms it is gone under the one deletion retry policy (`deadline`
/// overall, each retry reported through `on_retry`). With a journal, the row goes to `deleting`
/// first (write-ahead) and to `deleted`, with its ledger row, once the provider confirms.
pub async fn delete_journaled(
    provider: &dyn Provider,
    journal: Option<&Journal>,
    name: &str,
    reason: &str,
    deadline: Duration,
    on_retry: &mut (dyn FnMut(String) + Send),
) -> Result<DeleteOutcome, TeardownError> {
    if let Some(j) = journal {
        let (n, r) = (name.to_string(), reason.to_string());
        journaled(j, move |j| j.worker_deleting(&n, &r)).await?;
    }
    tracing::debug!(%name, %reason, "delete");
    let outcome = crate::provider::delete_confirmed(provider, name, deadline, on_retry).await?;
    if let Some(j) = journal {
        let (n, r) = (name.to_string(), reason.to_string());
        journaled(j, move |j| j.worker_deleted(&n, &r)).await?;
    }
    Ok(outcome)
}

/// The teardown of workers found by their labels, for one project.
pub(crate) struct Teardown<'a> {
    pub(crate) provider: &'a dyn Provider,
    pub(crate) journal: &'a Journal,
    pub(crate) project_slug: &'a str,
    /// How long one deletion is retried (`teardown_timeout`), and where each retry is reported.
    pub(crate) teardown_timeout: Duration,
    pub(crate) on_retry: &'a (dyn Fn(String) + Send + Sync),
}

impl Teardown<'_> {
    /// Lists this project's workers and deletes the stopped ones (`delete_stopped`), for the
    /// commands that do not list them for anything else.
    pub(crate) async fn sweep_stopped(&self) -> Result<(Vec<String>, Vec<String>), TeardownError> {
        let selector = crate::model::project_selector(self.project_slug);
        let listed = self.provider.list(&selector).await?;
        Ok(self.delete_stopped(&listed).await)
    }

    /// Deletes this project's stopped workers among `listed` — stopping, stopped or suspended
    /// VMs, whose termination timer Compute Engine has cleared and whose disks are still billed —
    /// at once, as every command that lists the project's VMs does (DESIGN invariant 1). Returns
    /// the names it dealt with (deleted, or already gone) and a message for each it could not.
    pub(crate) async fn delete_stopped(&self, listed: &[Instance]) -> (Vec<String>, Vec<String>) {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        for inst in listed.iter().filter(|i| {
            i.status.is_stopped()
                && i.labels.get("cwo-project").map(String::as_str) == Some(self.project_slug)
                && i.labels.get(KEEP_LABEL).map(String::as_str) != Some("true")
                // An image builder, stopped so its disk can become an image (`cwo image build`
                // deletes it when the image is made; a killed build leaves it to `cwo reap`).
                && !i.being_imaged()
        }) {
            match self.delete(inst, "stopped").await {
                Ok(_) => done.push(inst.name.clone()),
                Err(e) => failed.push(format!(
                    "{}: {}",
                    inst.name,
                    crate::util::error::one_line(&e)
                )),
            }
        }
        (done, failed)
    }

    /// Deletes and confirms; this project's workers are journaled first (even ones a crashed
    /// controller never recorded), so the ledger keeps their whole life. A worker that is not
    /// found any more is `AlreadyGone`: done, not an error.
    pub(crate) async fn delete(
        &self,
        inst: &Instance,
        reason: &str,
    ) -> Result<DeleteOutcome, TeardownError> {
        let why = match reason {
            "expired" => "ttl",
            "stopped" => "idle",
            "budget" => "budget",
            _ => "reaped",
        };
        let ours = inst.labels.get("cwo-project").map(String::as_str) == Some(self.project_slug);
        if ours {
            let (inst, kind) = (inst.clone(), self.provider.kind());
            journaled(self.journal, move |j| record_found(j, &inst, kind)).await?;
        }
        delete_journaled(
            self.provider,
            ours.then_some(self.journal),
            &inst.name,
            why,
            self.teardown_timeout,
            &mut |line| (self.on_retry)(line),
        )
        .await
    }
}

/// Journals a worker found by its labels (even one a crashed controller never recorded) up to
/// `created`, priced from its labels, so its teardown is journaled and the ledger keeps its whole
/// life.
fn record_found(j: &Journal, inst: &Instance, kind: &str) -> Result<(), JournalError> {
    let name = inst.name.as_str();
    let known = j.worker(name).ok().flatten();
    if known.is_none() {
        j.worker_intent(name, kind, &inst.machine_type_label(), "reaper", "{}")?;
    }
    j.worker_created_if_unknown(name, inst.created_at)?;
    if known.as_ref().is_none_or(|w| w.price.is_none()) {
        let catalog =
            crate::cost::Catalog::load().unwrap_or_else(|_| crate::cost::Catalog::embedded());
        let price = crate::provider::PriceSpec::from_labels(inst).snapshot(&catalog);
        j.worker_price(name, &price)?;
    }
    Ok(())
}
