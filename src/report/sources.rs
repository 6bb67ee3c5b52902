//! Where worker lives come from: the journal's ledger (or an exported ledger file), the workers
//! still running in the journal, and the provider's live labelled VMs.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cost::compute::Life;
use crate::cost::{Catalog, PriceSnapshot};
use crate::journal::{Journal, LedgerRow};
use crate::provider::{Provider, ProviderError};

/// An exported ledger: what `cwo cost export` writes and `--ledger FILE` reads.
#[derive(Debug, Serialize, Deserialize)]
pub struct LedgerFile {
    pub schema_version: u32,
    pub exported_at: DateTime<Utc>,
    pub project: String,
    pub ledger: Vec<LedgerRow>,
}

pub fn read_ledger_file(path: &Path) -> Result<Vec<LedgerRow>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: LedgerFile = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a cwo ledger export ({e})", path.display()))?;
    if file.schema_version != crate::printer::SCHEMA_VERSION {
        return Err(format!(
            "{}: schema_version {} (this cwo reads {})",
            path.display(),
            file.schema_version,
            crate::printer::SCHEMA_VERSION
        ));
    }
    Ok(file.ledger)
}

pub fn ledger_lives(rows: &[LedgerRow]) -> Vec<Life> {
    rows.iter()
        .map(|r| Life {
            worker: r.worker.clone(),
            provider: r.provider.clone(),
            started_at: r.started_at,
            ended_at: Some(r.ended_at),
            termination_reason: Some(r.termination_reason.clone()),
            price: r.price.clone(),
        })
        .collect()
}

/// Workers the journal says are running (their cost accrues to now).
pub fn running_lives(journal: &Journal) -> Result<Vec<Life>, String> {
    Ok(journal
        .live_workers()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter_map(|w| {
            Some(Life {
                started_at: w.created_at?,
                worker: w.name,
                provider: w.provider,
                ended_at: None,
                termination_reason: None,
                price: w.price,
            })
        })
        .collect())
}

/// The provider's live labelled workers of this project, priced from the journal's launch
/// snapshot or, for ones the journal never priced, from their labels.
pub async fn provider_lives(
    provider: &dyn Provider,
    project_slug: &str,
    journal: &Journal,
    catalog: &Catalog,
) -> Result<Vec<Life>, ProviderError> {
    let selector = BTreeMap::from([
        ("cwo-managed".to_string(), "true".to_string()),
        ("cwo-project".to_string(), project_slug.to_string()),
    ]);
    let known: BTreeMap<String, Option<PriceSnapshot>> = journal
        .live_workers()
        .map_err(|e| ProviderError::Transient(e.to_string()))?
        .into_iter()
        .map(|w| (w.name, w.price))
        .collect();
    Ok(provider
        .list(&selector)
        .await?
        .into_iter()
        .map(|inst| {
            let price = known.get(&inst.name).cloned().flatten().or_else(|| {
                Some(PriceSnapshot::take(
                    catalog,
                    &inst.machine_type_label(),
                    inst.zone.as_deref().unwrap_or(""),
                    false,
                    "pd-standard",
                    10,
                ))
            });
            Life {
                worker: inst.name,
                provider: provider.kind().to_string(),
                started_at: inst.created_at,
                ended_at: None,
                termination_reason: None,
                price,
            }
        })
        .collect())
}

/// Writes this project's ledger to `file` (what `cwo cost export` does); returns the rows written.
pub fn export_ledger(
    project: &crate::project::Project,
    file: &Path,
) -> Result<usize, crate::error::CommandError> {
    let doc = LedgerFile {
        schema_version: crate::printer::SCHEMA_VERSION,
        exported_at: Utc::now(),
        project: project.name.clone(),
        ledger: project.journal()?.ledger()?,
    };
    std::fs::write(file, serde_json::to_vec_pretty(&doc).expect("serializes")).map_err(|e| {
        crate::error::CommandError::user(format!("cannot write {}: {e}", file.display()))
    })?;
    Ok(doc.ledger.len())
}
