//! What the writer asks of the state machine it drives: the [`Machine`] trait, the context a
//! command is planned in, what a plan yields, and how a command fails.
//!
//! The kernel knows no domain: a machine (stella's is `machine::Stella`) names its commands, its
//! liveness writes, its projection tables and how each ledger entry changes them.

use crate::config::Config;
use crate::kernel::ledger::{Draft, Entry};
use crate::kernel::rng::SplitMix64;
pub use crate::kernel::tx::{ApplyError, redb};
use redb::{TableDefinition, WriteTransaction};
use std::any::{Any, TypeId};
use std::collections::HashMap;

/// A state machine over the store: commands are planned into ledger drafts (validated against
/// the state, never writing), and every committed or replayed entry is applied to the
/// projection tables by one pure function of the entry and the tables.
pub trait Machine: Send + 'static {
    type Command: Send + std::fmt::Debug + 'static;
    /// Writes that are liveness, not history: applied in the batch's transaction, never
    /// ledgered, not compared by `db verify`.
    type Live: Send;
    /// Every projection table keyed by name, in the order `db verify` compares them.
    const PROJECTIONS: &'static [TableDefinition<'static, &'static str, &'static [u8]>];
    /// Opens every table the machine uses (so that readers find them in a new store).
    fn create_tables(txn: &WriteTransaction) -> Result<(), redb::Error>;
    /// Empties the derived indexes that are not projection tables, before a rebuild.
    fn clear_indexes(txn: &WriteTransaction) -> Result<(), redb::Error>;
    /// Validates against the state in `txn` and returns what to append and write. Never writes.
    fn plan(
        command: &Self::Command,
        txn: &WriteTransaction,
        ctx: &mut PlanCtx,
    ) -> Result<Effects<Self::Live>, CommandError>;
    /// Applies one committed (or replayed) entry to the projection tables.
    fn apply(tx: &crate::kernel::tx::Tx, entry: &Entry) -> Result<(), ApplyError>;
    /// Applies a command's liveness writes in the batch's transaction.
    fn apply_live(txn: &WriteTransaction, live: &[Self::Live], now: i64) -> Result<(), redb::Error>;
    /// Whether a liveness write is something its caller is told holds (a lease extended until
    /// a time), so that its batch is synced before the answer even without ledger entries.
    fn live_is_durable(live: &Self::Live) -> bool;
}

/// Who a command acts for: recorded on every entry it produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `token:<id>`, `local:uid=<n>`, or `appliance`.
    pub name: String,
}

impl Actor {
    pub fn appliance() -> Self {
        Self { name: "appliance".to_owned() }
    }
}

/// State of any type, one value per type: what domains keep beside the store without the
/// kernel knowing its shape (compiled DAGs, rate buckets, sequence numbers a command took).
#[derive(Default)]
pub struct Derived(HashMap<TypeId, Box<dyn Any + Send>>);

impl Derived {
    /// The value of type `T`, created with its default on first use.
    pub fn get<T: Default + Send + 'static>(&mut self) -> &mut T {
        self.0
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::new(T::default()))
            .downcast_mut::<T>()
            .expect("keyed by its own type")
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// What planning may use besides the transaction: the batch's time, the seeded RNG, the file's
/// defaults, state kept between batches ([`PlanCtx::derived`], dropped when a batch fails) and
/// state of this one command ([`PlanCtx::scratch`]).
pub struct PlanCtx<'a> {
    pub now: i64,
    pub rng: &'a mut SplitMix64,
    pub defaults: &'a Config,
    pub derived: &'a mut Derived,
    pub scratch: Derived,
}

/// A plan: ledger drafts, liveness writes, and a note for the caller (e.g. "already exists").
#[derive(Debug)]
pub struct Effects<L> {
    pub drafts: Vec<Draft>,
    pub live: Vec<L>,
    pub note: Option<serde_json::Value>,
}

impl<L> Default for Effects<L> {
    fn default() -> Self {
        Effects { drafts: vec![], live: vec![], note: None }
    }
}

impl<L> From<Vec<Draft>> for Effects<L> {
    fn from(drafts: Vec<Draft>) -> Self {
        Effects { drafts, ..Effects::default() }
    }
}

/// A failed command. It changed nothing; its batch neighbours are unaffected. Each variant
/// carries a stable machine-readable `code` (the API's problem `code`) and, for bad input, the
/// offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error("{what} not found")]
    NotFound { what: String },
    /// The request is valid but the state forbids it now (HTTP 409).
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    /// The request itself is wrong (HTTP 422); `field` names what, when one field is at fault.
    #[error("{detail}")]
    Invalid { code: &'static str, field: Option<&'static str>, detail: String },
    /// The actor may not do this to this object (HTTP 403), under a stable code: an approval
    /// by the one who asked for it.
    #[error("{detail}")]
    Forbidden { code: &'static str, detail: String },
    /// Backpressure: try again after this many seconds.
    #[error("{detail}")]
    Busy { detail: String, retry_after_s: u64 },
    #[error("store: {0}")]
    Storage(String),
    #[error("the store writer has stopped")]
    WriterGone,
}

impl CommandError {
    /// A conflict with the state, under a stable code.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        CommandError::Conflict { code, detail: detail.into() }
    }

    /// Bad input in one field.
    pub fn invalid(field: &'static str, detail: impl Into<String>) -> Self {
        CommandError::Invalid { code: "invalid_field", field: Some(field), detail: detail.into() }
    }

    /// Bad input not tied to one field, under a stable code.
    pub fn invalid_request(code: &'static str, detail: impl Into<String>) -> Self {
        CommandError::Invalid { code, field: None, detail: detail.into() }
    }

    /// The stable code of this failure.
    pub fn code(&self) -> &'static str {
        match self {
            CommandError::NotFound { .. } => "not_found",
            CommandError::Conflict { code, .. }
            | CommandError::Invalid { code, .. }
            | CommandError::Forbidden { code, .. } => code,
            CommandError::Busy { .. } => "busy",
            CommandError::Storage(_) => "storage",
            CommandError::WriterGone => "writer_gone",
        }
    }
}

pub fn storage(e: impl std::fmt::Display) -> CommandError {
    CommandError::Storage(e.to_string())
}

/// What a successful command committed: its ledger entries, in order (possibly none, for an
/// idempotent repeat).
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    pub entries: Vec<Entry>,
    pub note: Option<serde_json::Value>,
}

/// A machine with no tables and no commands, for the kernel's own tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    pub(crate) struct Bare;

    impl Machine for Bare {
        type Command = ();
        type Live = ();
        const PROJECTIONS: &'static [TableDefinition<'static, &'static str, &'static [u8]>] = &[];
        fn create_tables(_: &WriteTransaction) -> Result<(), redb::Error> {
            Ok(())
        }
        fn clear_indexes(_: &WriteTransaction) -> Result<(), redb::Error> {
            Ok(())
        }
        fn plan(_: &(), _: &WriteTransaction, _: &mut PlanCtx) -> Result<Effects<()>, CommandError> {
            Ok(Effects::default())
        }
        fn apply(_: &crate::kernel::tx::Tx, _: &Entry) -> Result<(), ApplyError> {
            Ok(())
        }
        fn live_is_durable(_: &()) -> bool {
            false
        }

        fn apply_live(_: &WriteTransaction, _: &[()], _: i64) -> Result<(), redb::Error> {
            Ok(())
        }
    }
}
