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

/// The daemon's clock: the wall clock, except that it never goes back. When the wall clock
/// steps back (at a restart a day behind, or while running) this clock goes on from where it
/// was at the rate of the monotonic clock, so deadlines (lease, lock and budget TTLs) keep
/// coming due on time instead of stalling for the size of the jump; once the wall clock is
/// ahead again it follows it. A step forward is followed at once (each cron slot still fires
/// at most once).
#[derive(Debug)]
pub struct SteadyClock {
    last: std::sync::Mutex<(UnixMs, std::time::Instant)>,
}

impl SteadyClock {
    /// Starts at the later of the wall clock and `floor_ms` (the ledger's newest entry).
    pub fn new(floor_ms: UnixMs) -> Self {
        let start = SystemClock.now().max(floor_ms);
        SteadyClock { last: std::sync::Mutex::new((start, std::time::Instant::now())) }
    }
}

impl Clock for SteadyClock {
    fn now_ms(&self) -> UnixMs {
        let wall = SystemClock.now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let steady = last.0 + i64::try_from(now.duration_since(last.1).as_millis()).unwrap_or(i64::MAX / 2);
        let t = wall.max(steady);
        *last = (t, now);
        t
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
