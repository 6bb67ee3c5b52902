//! Small helpers on the floor, used by several layers above.

pub mod gcp_api;
pub mod shell;
pub mod terminal;
