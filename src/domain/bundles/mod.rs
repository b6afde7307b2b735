//! Signed bundles (DESIGN.md §3): the envelope format (`format`), building and signing one from
//! a directory (`build`), walking an untrusted tar stream with bounded extension records
//! (`entries`), the offline check of an envelope (`verify`), the import policy planned in the
//! writer (`plan`), unpacking into the sealed store (`import`).

pub mod apply;
pub mod build;
pub mod entries;
pub mod format;
pub mod import;
pub mod plan;
pub mod tables;
pub mod verify;
