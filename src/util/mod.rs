//! Small helpers on the floor, used by several layers above.

pub(crate) mod error;
pub(crate) mod gcp_api;
pub(crate) mod process;
pub(crate) mod shell;
pub(crate) mod terminal;
