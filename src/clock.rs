//! The injected clock (DESIGN.md invariant 6). Everything that reads the time asks a [`Clock`]
//! so that tests can run on virtual time; nothing in the crate calls `SystemTime::now` directly
//! except [`SystemClock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, the one time unit of stored records.
pub type UnixMs = i64;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> UnixMs;
}

pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    pub fn now(&self) -> UnixMs {
        Clock::now_ms(self)
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMs {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("system clock is before 1970");
        i64::try_from(since.as_millis()).expect("system clock is past year 292 million")
    }
}

/// A clock that moves only when told to: the virtual time of tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(start_ms: UnixMs) -> Self {
        Self { now_ms: AtomicI64::new(start_ms) }
    }

    pub fn advance_ms(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMs {
        self.now_ms.load(Ordering::SeqCst)
    }
}

pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// RFC 3339 rendering of a stored time, for humans and JSON output.
pub fn rfc3339(ms: UnixMs) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{ms}ms"))
}

/// Parses a point in time given by an operator: RFC 3339 (`2026-11-22T10:00:00Z`), a date
/// (`2026-11-22`, midnight UTC) or Unix milliseconds.
pub fn parse_time(s: &str) -> Result<UnixMs, String> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let text = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_owned() };
    time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| format!("{s:?}: expected RFC 3339 (2026-11-22T10:00:00Z), a date (2026-11-22) or Unix ms"))
}
