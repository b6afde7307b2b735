//! Signed bundles (DESIGN.md §3): the envelope format (`format`), building and signing one from
//! a directory (`build`), and the offline check of an envelope (`verify`). Import into the
//! sealed store through the daemon is not built yet.

pub mod build;
pub mod format;
pub mod import;
pub mod installed;
pub mod plan;
pub mod verify;
