//! What the benchmark binaries share: the figure they print, the scale knob, a temp dir on the
//! disk under test, and a threaded driver for the baselines.

#![allow(dead_code, reason = "each benchmark binary uses a different part")]

use std::time::{Duration, Instant};

/// Operations done, time taken, and each operation's latency.
pub struct Figure {
    pub ops: usize,
    pub elapsed: Duration,
    pub lat: Vec<Duration>,
}

impl Figure {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency quantile in milliseconds (NaN without latencies).
    pub fn q(&mut self, q: f64) -> f64 {
        if self.lat.is_empty() {
            return f64::NAN;
        }
        self.lat.sort();
        self.lat[((self.lat.len() as f64 * q) as usize).min(self.lat.len() - 1)].as_secs_f64() * 1e3
    }
}

/// `n` scaled by `STELLA_BENCH_SCALE` (default 1), at least `floor`.
pub fn scale(n: usize, floor: usize) -> usize {
    let s: f64 = std::env::var("STELLA_BENCH_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    ((n as f64 * s) as usize).max(floor)
}

/// A temp dir on the target's disk (not a tmpfs), so fsync costs what it costs.
pub fn dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Runs `total / producers` operations on each of `producers` threads; `op(thread, i)` is one
/// durable operation.
pub fn threaded(producers: usize, total: usize, op: impl Fn(usize, usize) + Sync) -> Figure {
    let per = (total / producers).max(1);
    let started = Instant::now();
    let lat: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let op = &op;
                s.spawn(move || {
                    (0..per)
                        .map(|i| {
                            let t = Instant::now();
                            op(p, i);
                            t.elapsed()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    Figure { ops: per * producers, elapsed: started.elapsed(), lat }
}
