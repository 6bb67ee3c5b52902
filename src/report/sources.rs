//! Where worker lives come from: the journal's ledger (or an exported ledger file), the workers
//! still running in the journal, and the provider's live labelled VMs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cost::compute::Life;
use crate::cost::{Catalog, PriceSnapshot};
use crate::error::{CommandError, ErrorKind};
use crate::journal::{Journal, JournalError, LedgerRow, WorkerRow};
use crate::provider::{PriceSpec, Provider, ProviderError};

/// An exported ledger: what `cwo cost export` writes and `--ledger FILE` reads.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LedgerFile {
    pub(crate) schema_version: u32,
    pub(crate) exported_at: DateTime<Utc>,
    pub(crate) project: String,
    pub(crate) ledger: Vec<LedgerRow>,
}

/// An exported ledger cannot be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LedgerFileError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a cwo ledger export", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: schema_version {found} (this cwo reads {expected})", path.display())]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
}

impl From<LedgerFileError> for CommandError {
    fn from(e: LedgerFileError) -> CommandError {
        let hint = match &e {
            LedgerFileError::Version { .. } => {
                "export the ledger again with this cwo (`cwo cost export FILE`)"
            }
            _ => "give a file written by `cwo cost export FILE`",
        };
        CommandError::new(ErrorKind::Usage, Arc::new(e)).hint(hint)
    }
}

pub(crate) fn read_ledger_file(path: &Path) -> Result<Vec<LedgerRow>, LedgerFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| LedgerFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: LedgerFile =
        serde_json::from_str(&text).map_err(|source| LedgerFileError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    if file.schema_version != crate::printer::SCHEMA_VERSION {
        return Err(LedgerFileError::Version {
            path: path.to_path_buf(),
            found: file.schema_version,
            expected: crate::printer::SCHEMA_VERSION,
        });
    }
    Ok(file.ledger)
}

pub(crate) fn ledger_lives(rows: &[LedgerRow]) -> Vec<Life> {
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
pub(crate) fn running_lives(journal: &Journal) -> Result<Vec<Life>, JournalError> {
    Ok(journal
        .live_workers()?
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
/// snapshot (`journaled`: the journal's live workers) or, for ones the journal never priced,
/// from their labels.
pub(crate) async fn provider_lives(
    provider: &dyn Provider,
    project_slug: &str,
    journaled: &[WorkerRow],
    catalog: &Catalog,
) -> Result<Vec<Life>, ProviderError> {
    let selector = crate::model::project_selector(project_slug);
    let known: BTreeMap<&str, Option<&PriceSnapshot>> = journaled
        .iter()
        .map(|w| (w.name.as_str(), w.price.as_ref()))
        .collect();
    Ok(provider
        .list(&selector)
        .await?
        .into_iter()
        .map(|inst| {
            let price = known
                .get(inst.name.as_str())
                .copied()
                .flatten()
                .cloned()
                .or_else(|| Some(PriceSpec::from_labels(&inst).snapshot(catalog)));
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
pub(crate) fn export_ledger(
    project: &crate::project::Project,
    file: &Path,
) -> Result<usize, CommandError> {
    let doc = LedgerFile {
        schema_version: crate::printer::SCHEMA_VERSION,
        exported_at: Utc::now(),
        project: project.name.clone(),
        ledger: project.journal()?.ledger()?,
    };
    std::fs::write(file, serde_json::to_vec_pretty(&doc).expect("serializes"))
        .map_err(|e| CommandError::with_source(format!("cannot write {}", file.display()), e))?;
    Ok(doc.ledger.len())
}
