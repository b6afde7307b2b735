//! Progress of long operations (a bundle import now, exports later): the daemon counts bytes
//! into a [`Progress`] registered under an id the client chose, `GET /progress/{id}` reads it,
//! and the CLI draws it as a bar on a terminal ([`bar`]). Counting is a relaxed atomic add per
//! buffer, so it costs nothing measurable.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Operations the registry remembers (finished ones are kept so a last poll sees the end).
const REMEMBERED: usize = 64;

#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    phase: Mutex<String>,
}

impl Progress {
    pub fn add(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn add_total(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn phase(&self, phase: &str) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase.to_owned();
    }
    pub fn snapshot(&self) -> serde_json::Value {
        let phase = self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone();
        serde_json::json!({ "done": self.done.load(Ordering::Relaxed), "total": self.total.load(Ordering::Relaxed), "phase": phase })
    }
}

/// Progress of operations by client-chosen id, bounded to the most recent `REMEMBERED`.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<VecDeque<(String, Arc<Progress>)>>,
}

impl Registry {
    /// A fresh progress under `id` (a valid id: 8–64 of `0-9a-z-`), replacing an older one.
    pub fn start(&self, id: &str) -> Option<Arc<Progress>> {
        let valid = (8..=64).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-');
        if !valid {
            return None;
        }
        let p = Arc::new(Progress::default());
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|(k, _)| k != id);
        if entries.len() >= REMEMBERED {
            entries.pop_front();
        }
        entries.push_back((id.to_owned(), p.clone()));
        Some(p)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Progress>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().find(|(k, _)| k == id).map(|(_, p)| p.clone())
    }
}

/// One line of a progress bar: `verifying [#########...........]  45%  230/512 MiB`.
pub fn bar(snapshot: &serde_json::Value) -> String {
    let (done, total) = (snapshot["done"].as_u64().unwrap_or(0), snapshot["total"].as_u64().unwrap_or(0));
    let phase = snapshot["phase"].as_str().unwrap_or("");
    let frac = if total == 0 { 0.0 } else { (done as f64 / total as f64).min(1.0) };
    let width = 30;
    let filled = (frac * width as f64).round() as usize;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "{phase:<10} [{}{}] {:>3.0}%  {:.0}/{:.0} MiB",
        "#".repeat(filled),
        ".".repeat(width - filled),
        frac * 100.0,
        mib(done),
        mib(total)
    )
}

/// Runs `op` while drawing the daemon's progress for `id` as a bar on stderr (a terminal).
pub async fn follow<T>(client: &crate::client::Client, id: &str, op: impl std::future::Future<Output = T>) -> T {
    use std::io::Write;
    let mut op = std::pin::pin!(op);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(150));
    let path = format!("/api/v1/orchestrator/progress/{id}");
    loop {
        tokio::select! {
            out = &mut op => {
                eprint!("\r\x1b[2K");
                return out;
            }
            _ = tick.tick() => {
                let snapshot = client.get(&path).await.ok().filter(|r| r.status.is_success()).and_then(|r| r.json().ok());
                if let Some(v) = snapshot {
                    eprint!("\r\x1b[2K{}", bar(&v));
                    let _ = std::io::stderr().flush();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_bounded_and_ids_are_checked() {
        let r = Registry::default();
        assert!(r.start("short").is_none());
        assert!(r.start("../../etc/passwd").is_none());
        let first = r.start("op-00000000").unwrap();
        first.add_total(10);
        first.add(4);
        assert_eq!(r.get("op-00000000").unwrap().snapshot()["done"], 4);
        for i in 0..REMEMBERED {
            r.start(&format!("op-{i:08}-x")).unwrap();
        }
        assert!(r.get("op-00000000").is_none(), "the oldest is forgotten");
        assert_eq!(bar(&first.snapshot()), format!("{:<10} [############..................]  40%  0/0 MiB", ""));
    }
}
