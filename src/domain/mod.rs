//! The domains (DESIGN.md §8), each the same shape: `mod.rs` (its commands and the kinds of
//! its entries), `plan.rs` (commands → ledger drafts, never writing), `apply.rs` (its entries →
//! its tables; the projection) and `tables.rs` (its tables, records and reads). A domain imports
//! the kernel and other domains' public items only.

pub mod appliance;
pub mod approvals;
pub mod bundles;
pub mod cache;
pub mod live;
pub mod locks;
pub mod queue;
pub mod release;
pub mod runs;
pub mod tokens;
