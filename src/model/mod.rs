//! The floor's vocabulary: workers, targets, labels and ids. Every layer above speaks it; it
//! imports nothing of cwo.

pub mod ids;
pub mod labels;
pub mod worker;

pub use labels::{EXPIRES_LABEL, expires_at, project_selector, worker_labels};
pub use worker::{DeleteOutcome, Instance, InstanceStatus, Target, WorkerSpec, workspace_of};
