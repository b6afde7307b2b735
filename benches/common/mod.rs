//! What the benchmark binaries share: the figure they print, the scale knob, a temp dir on the
//! disk under test, a threaded driver for the baselines, and the worker loop that leases and
//! completes `noop` jobs through stella's writer.

#![allow(dead_code, reason = "each benchmark binary uses a different part")]

use std::time::{Duration, Instant};
use stella::clock;
use stella::domain::queue::QueueCommand;
use stella::kernel::Actor;
use stella::kernel::store::Store;
use stella::kernel::writer::WriterOptions;
use stella::machine::Command;
use stella::machine::WriterHandle;

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

pub fn actor() -> Actor {
    Actor { name: "bench".into() }
}

/// stella's writer on a fresh store in [`dir`], seeded with `seed`.
pub fn writer(seed: u64) -> (tempfile::TempDir, WriterHandle, Store) {
    let d = dir();
    let store = stella::machine::open_store(&d.path().join("b.redb")).unwrap();
    let (h, w) = stella::machine::channel(store.clone(), clock::system(), WriterOptions::seeded(seed)).unwrap();
    w.spawn();
    (d, h, store)
}

pub fn lease_cmd(worker: usize, max: u32) -> Command {
    Command::Queue(QueueCommand::Lease {
        tenant: None,
        worker: format!("w{worker}"),
        worker_tenant: "default".into(),
        types: vec!["noop".into()],
        max,
        ttl_ms: Some(60_000),
        env: None,
        agent: None,
    })
}

/// One worker round: leases up to `max` `noop` jobs as `worker` and completes each granted one
/// concurrently with `result`; returns how many it completed (0 when nothing was ready).
pub async fn lease_and_complete(h: &WriterHandle, worker: usize, max: u32, result: Option<serde_json::Value>) -> usize {
    let c = h.submit(actor(), lease_cmd(worker, max)).await.unwrap();
    let completions: Vec<_> = c
        .entries
        .iter()
        .filter(|e| e.kind == "lease.granted")
        .flat_map(|e| e.data["leases"].as_array().cloned().unwrap_or_default())
        .map(|g| {
            let (h, result) = (h.clone(), result.clone());
            let (job, token) = (g["jobId"].as_str().unwrap().to_owned(), g["token"].as_u64().unwrap());
            tokio::spawn(async move {
                let done = Command::Queue(QueueCommand::Complete { tenant: None, job, token, result });
                h.submit(actor(), done).await.unwrap();
            })
        })
        .collect();
    let n = completions.len();
    for c in completions {
        c.await.unwrap();
    }
    n
}

/// One keep-alive HTTP/1.1 connection to a daemon's Unix socket: what a worker or producer
/// that sends many requests holds (the CLI's client opens one per request).
pub struct Conn {
    tx: hyper::client::conn::http1::SendRequest<http_body_util::Full<hyper::body::Bytes>>,
}

impl Conn {
    pub async fn unix(path: &std::path::Path) -> Conn {
        let stream = tokio::net::UnixStream::connect(path).await.unwrap();
        let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Conn { tx }
    }

    /// POSTs `body` as JSON; the status and the body's JSON.
    pub async fn post(&mut self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let req = hyper::Request::post(path)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(hyper::body::Bytes::from(serde_json::to_vec(body).unwrap())))
            .unwrap();
        self.send(req).await
    }

    /// GETs `path`; the status and the body's JSON.
    pub async fn get(&mut self, path: &str) -> (u16, serde_json::Value) {
        self.send(hyper::Request::get(path).body(http_body_util::Full::new(hyper::body::Bytes::new())).unwrap()).await
    }

    async fn send(
        &mut self,
        mut req: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
    ) -> (u16, serde_json::Value) {
        use http_body_util::BodyExt;
        req.headers_mut().insert("host", hyper::header::HeaderValue::from_static("stella"));
        self.tx.ready().await.unwrap();
        let resp = self.tx.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }
}

impl Conn {
    /// Opens the SSE stream at `path` and reads it until a chunk holds `marker` (or the
    /// stream ends); whether it was seen.
    pub async fn stream_until(&mut self, path: &str, marker: &str) -> bool {
        use http_body_util::BodyExt;
        let req = hyper::Request::get(path)
            .header("host", "stella")
            .header("accept", "text/event-stream")
            .body(http_body_util::Full::new(hyper::body::Bytes::new()))
            .unwrap();
        self.tx.ready().await.unwrap();
        let mut body = self.tx.send_request(req).await.unwrap().into_body();
        let mut seen = String::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                seen.push_str(&String::from_utf8_lossy(data));
                if seen.contains(marker) {
                    return true;
                }
            }
        }
        false
    }
}

/// A dev daemon on a fresh state dir (`STELLA_LOG=log`), ready: its socket, and the child to kill.
pub fn daemon(log: &str) -> (tempfile::TempDir, std::path::PathBuf, std::process::Child) {
    let d = dir();
    let notify = d.path().join("n.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_stella"))
        .arg("--state-dir")
        .arg(d.path())
        .args(["serve", "--dev", "--listen", ""])
        .env("NOTIFY_SOCKET", &notify)
        .env("STELLA_LOG", log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        let n = sock.recv(&mut buf).unwrap();
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break;
        }
    }
    let socket = d.path().join("run/stella/orchestrator.sock");
    (d, socket, child)
}
