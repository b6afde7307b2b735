//! The embedded store: one redb file, one writer, many MVCC readers.
//!
//! Wiring only; see the submodules. Storage knows nothing of HTTP: its inputs are [`Command`]s,
//! its outputs committed ledger [`Entry`](crate::ledger::Entry)s and store records.

pub mod command;
pub mod projection;
pub mod records;
pub mod schema;
pub mod verify;
pub mod writer;

pub use command::{Command, CommandError, Committed};
pub use schema::{Store, StoreError};
pub use writer::{Writer, WriterHandle, WriterStats};
