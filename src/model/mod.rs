//! The floor's vocabulary: workers, targets, labels, ids and LLM usage. Every layer above speaks it; it
//! imports nothing of cwo.

pub(crate) mod ids;
pub(crate) mod labels;
pub(crate) mod usage;
pub(crate) mod worker;

pub(crate) use labels::{
    EXPIRES_LABEL, IMAGE_LABEL, IMAGING_LABEL, expires_at, project_selector, worker_labels,
};
pub(crate) use usage::Usage;
pub(crate) use worker::workspace_of;
pub use worker::{DeleteOutcome, Instance, InstanceStatus, Target, WorkerSpec};
