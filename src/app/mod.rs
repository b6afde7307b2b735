//! Use cases that the API and the daemon share (DESIGN.md §8), so that no handler imports
//! another handler and `serve.rs` calls no handler: importing a bundle, and re-verifying the
//! installed ones.

pub mod import;
pub mod installed;
