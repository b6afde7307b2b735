//! Typed ledger events. Each domain declares its entries with [`events!`]: one variant per
//! entry kind, each carrying a struct whose serialized form is the entry's `data` exactly as
//! stella has always written it (the golden ledger test holds it to that), so the kind string
//! is spelled once and data is read back as fields rather than `data["x"].as_str()`.

use crate::kernel::ledger::{Draft, Entry};

/// A domain's entries, typed.
pub trait Event: Sized {
    /// The entry kind, e.g. `token.created`.
    fn kind(&self) -> &'static str;
    /// The entry's `data`.
    fn data(&self) -> serde_json::Value;
    /// Whether `kind` is one of this type's kinds.
    fn is_kind(kind: &str) -> bool;
    /// Reads an entry of one of this type's kinds; `None` for another kind.
    fn parse(kind: &str, data: &serde_json::Value) -> Option<Result<Self, serde_json::Error>>;

    /// Reads `entry` if it is one of this type's kinds.
    fn of(entry: &Entry) -> Option<Result<Self, serde_json::Error>> {
        Self::parse(&entry.kind, &entry.data)
    }

    /// The draft that records this event for `tenant`, about `subjects`.
    fn draft(&self, tenant: &str, subjects: Vec<String>) -> Draft {
        Draft { tenant: tenant.to_owned(), kind: self.kind(), subjects, data: self.data() }
    }
}

/// Declares a domain's event enum: `Variant(DataType) = "kind.name",` per entry kind.
#[macro_export]
macro_rules! events {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $var:ident($ty:ty) = $kind:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $($(#[$vm])* $var($ty),)*
        }

        impl $crate::kernel::event::Event for $name {
            fn kind(&self) -> &'static str {
                match self {
                    $(Self::$var(_) => $kind,)*
                }
            }

            fn data(&self) -> serde_json::Value {
                match self {
                    $(Self::$var(d) => serde_json::to_value(d).expect("an event serializes"),)*
                }
            }

            fn is_kind(kind: &str) -> bool {
                matches!(kind, $($kind)|*)
            }

            fn parse(kind: &str, data: &serde_json::Value) -> Option<Result<Self, serde_json::Error>> {
                match kind {
                    $($kind => Some(<$ty as serde::Deserialize>::deserialize(data).map(Self::$var)),)*
                    _ => None,
                }
            }
        }
    };
}
