//! The ground floor (DESIGN.md §8): the store file and its schema version, the single writer
//! (generic over a [`Machine`]), the hash-chained ledger, durable counters and the due index,
//! and `db verify`, which replays the ledger through [`Machine::apply`]. It imports nothing of
//! the machine, the domains, the API, the CLI or the executor.

pub mod canonical;
pub mod counters;
pub mod due;
pub mod event;
pub mod invariant;
pub mod ledger;
pub mod plan;
pub mod publish;
pub mod rng;
pub mod store;
pub mod tx;
pub mod verify;
pub mod wal;
pub mod writer;

pub use plan::{Actor, ApplyError, CommandError, Committed, Derived, Effects, Machine, PlanCtx, storage};
pub use store::{Store, StoreError};
pub use tx::Tx;
