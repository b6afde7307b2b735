//! Use cases that the API and the daemon share (DESIGN.md §8), so that no handler imports
//! another handler and `serve.rs` calls no handler: importing a bundle, re-verifying the
//! installed ones, writing an export pack.

pub mod doctor;
pub mod export;
pub mod import;
pub mod installed;
pub mod release;
pub mod sealed;
