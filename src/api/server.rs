//! The listeners: a Unix socket and HTTPS over TCP, served by hyper's HTTP/1 connection with
//! the limits of DESIGN.md invariant 8 — header-read and TLS-handshake timeouts, header count
//! and size caps, a body cap checked against `Content-Length` before any byte is read, a
//! response-head timeout and a connection cap. Every response carries `x-request-id`.
//! Shutdown stops accepting, then lets in-flight requests finish within the grace period.

use crate::api::extract::{Caller, Peer, payload_too_large};
use crate::api::problem::Problem;
use crate::config::ServerConfig;
use crate::ids;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

pub struct Listeners {
    pub unix: UnixListener,
    pub tcp: Option<(TcpListener, TlsAcceptor)>,
}

/// Tracks open connections: each holds a clone of the sender; when all are dropped the
/// receiver sees the channel close. Stop is broadcast on the watch channel; `pressure` is
/// bumped by a listener whose slots run low, and each of its connections that is idle (or
/// still in its TLS handshake) then closes, so idle keep-alive connections cannot hold every
/// slot.
#[derive(Clone)]
struct Conns {
    stop: watch::Receiver<bool>,
    open: mpsc::Sender<()>,
    pressure: watch::Receiver<u64>,
}

/// Slots below which a listener asks its idle connections to close: an eighth, at least one.
fn low_water(max: usize) -> usize {
    (max / 8).max(1)
}

/// Under pressure, a connection younger than this stays (it may be a client that just came
/// in, still shaking hands); an older idle one closes.
const PRESSURE_GRACE: Duration = Duration::from_secs(1);

/// Waits for a slot, then for a connection, asking idle connections to make room while few
/// slots are left (again every [`PRESSURE_GRACE`] while none is free). `None` after a failed
/// accept.
async fn accept_with_room<T>(
    slots: &Arc<Semaphore>,
    max: usize,
    pressure: &watch::Sender<u64>,
    accept: impl Future<Output = std::io::Result<T>>,
) -> Option<(tokio::sync::OwnedSemaphorePermit, T)> {
    let permit = loop {
        if slots.available_permits() <= low_water(max) {
            pressure.send_modify(|n| *n += 1);
        }
        tokio::select! {
            p = slots.clone().acquire_owned() => break p.ok()?,
            _ = tokio::time::sleep(PRESSURE_GRACE) => continue,
        }
    };
    match accept.await {
        Ok(conn) => Some((permit, conn)),
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            None
        }
    }
}

/// Serves until `shutdown` resolves, then drains.
pub async fn serve(router: Router, listeners: Listeners, limits: ServerConfig, shutdown: impl Future<Output = ()>) {
    let limits = Arc::new(limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let mut tasks = tokio::task::JoinSet::new();
    // Each listener has slots (and pressure) of its own: a flood of TCP connections never
    // takes the local administrator's socket.
    let (unix_pressure, unix_rx) = watch::channel(0u64);
    let conns = Conns { stop: stop_rx.clone(), open: open_tx.clone(), pressure: unix_rx };
    tasks.spawn(accept_unix(listeners.unix, router.clone(), limits.clone(), conns, unix_pressure));
    if let Some((tcp, tls)) = listeners.tcp {
        let (tcp_pressure, tcp_rx) = watch::channel(0u64);
        let conns = Conns { stop: stop_rx, open: open_tx.clone(), pressure: tcp_rx };
        tasks.spawn(accept_tcp(tcp, tls, router, limits.clone(), conns, tcp_pressure));
    }
    drop(open_tx);
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    if tokio::time::timeout(grace, open_rx.recv()).await.is_err() {
        tracing::warn!(
            grace_ms = limits.shutdown_grace_ms,
            "connections still open after the shutdown grace period; closing them"
        );
    }
}

async fn accept_unix(
    listener: UnixListener,
    router: Router,
    limits: Arc<ServerConfig>,
    mut conns: Conns,
    pressure: watch::Sender<u64>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            r = accept_with_room(&slots, limits.max_connections, &pressure, listener.accept()) => r,
            _ = conns.stop.changed() => return,
        };
        let Some((permit, (stream, _))) = accepted else {
            continue;
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let mut conns = conns.clone();
        // Only pressure from now on concerns this connection.
        conns.pressure.mark_unchanged();
        let (router, limits) = (router.clone(), limits.clone());
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, router, Peer::Unix { uid }, &limits, conns).await;
        });
    }
}

async fn accept_tcp(
    listener: TcpListener,
    tls: TlsAcceptor,
    router: Router,
    limits: Arc<ServerConfig>,
    mut conns: Conns,
    pressure: watch::Sender<u64>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let handshake = Duration::from_millis(limits.tls_handshake_timeout_ms);
    loop {
        let accepted = tokio::select! {
            r = accept_with_room(&slots, limits.max_connections, &pressure, listener.accept()) => r,
            _ = conns.stop.changed() => return,
        };
        let Some((permit, (stream, addr))) = accepted else {
            continue;
        };
        let (tls, router, limits, mut conns) = (tls.clone(), router.clone(), limits.clone(), conns.clone());
        conns.pressure.mark_unchanged();
        tokio::spawn(async move {
            let _permit = permit;
            let accepted = Instant::now();
            let mut pressure = conns.pressure.clone();
            let shake = tokio::time::timeout(handshake, tls.accept(stream));
            tokio::pin!(shake);
            let stream = loop {
                tokio::select! {
                    r = &mut shake => match r {
                        Ok(Ok(s)) => break s,
                        Ok(Err(e)) => return tracing::debug!(%addr, error = %e, "tls handshake refused"),
                        Err(_) => return tracing::debug!(%addr, "tls handshake timed out"),
                    },
                    // Slots run low: a connection long in its handshake is the first to go.
                    changed = pressure.changed() => match changed {
                        Ok(()) if accepted.elapsed() >= PRESSURE_GRACE => {
                            return tracing::debug!(%addr, "closed in its tls handshake: slots ran low");
                        }
                        Ok(()) => {}
                        // The listener is gone (shutting down): the handshake's own timeout rules.
                        Err(_) => break match (&mut shake).await {
                            Ok(Ok(s)) => s,
                            _ => return,
                        },
                    },
                }
            };
            serve_connection(stream, router, Peer::Tcp { addr }, &limits, conns).await;
        });
    }
}

fn http1(limits: &ServerConfig) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms))
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes);
    b
}

/// Serves one connection; on stop, finishes the request in flight and closes.
async fn serve_connection<S>(stream: S, router: Router, peer: Peer, limits: &Arc<ServerConfig>, mut conns: Conns)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn =
        http1(limits).serve_connection(TokioIo::new(stream), service(router, peer, limits.clone())).with_upgrades();
    tokio::pin!(conn);
    if *conns.stop.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    // On stop, or when its listener's slots run low (and it is not new), the connection closes
    // once idle: at once if it is idle now, after the request in flight otherwise.
    let opened = Instant::now();
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = conns.stop.changed() => break,
            r = conns.pressure.changed() => if r.is_err() || opened.elapsed() >= PRESSURE_GRACE {
                break;
            },
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
    drop(conns.open);
}

/// The per-connection service: tags the request with its peer and id, enforces the body cap
/// and the response-head timeout, and logs one line per request (never its headers).
fn service(
    router: Router,
    peer: Peer,
    limits: Arc<ServerConfig>,
) -> hyper_util::service::TowerToHyperService<
    tower::util::BoxCloneSyncService<Request<hyper::body::Incoming>, Response, std::convert::Infallible>,
> {
    let svc = tower::service_fn(move |req: Request<hyper::body::Incoming>| {
        let router = router.clone();
        let peer = peer.clone();
        let limits = limits.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(router, peer, &limits, req).await) }
    });
    hyper_util::service::TowerToHyperService::new(tower::util::BoxCloneSyncService::new(svc))
}

/// The one route whose body is streamed to disk instead of held.
const UPLOAD_PATH: &str = "/api/v1/orchestrator/bundles/upload";
/// A bundle import from the inbox.
const IMPORT_PATH: &str = "/api/v1/orchestrator/bundles";
/// How long a bundle import may take at most.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(3600);

async fn handle(router: Router, peer: Peer, limits: &ServerConfig, req: Request<hyper::body::Incoming>) -> Response {
    let started = Instant::now();
    let request_id = format!("req_{}", ids::random_hex(8));
    let caller = Caller::default();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    // A bundle upload streams to a file (bounded by the envelope's cap there); every other
    // body is held in memory and bounded by server.body_limit_bytes.
    let limit = if path == UPLOAD_PATH {
        crate::domain::bundles::format::ENVELOPE_BYTES_MAX
    } else {
        limits.body_limit_bytes as u64
    };
    let mut resp = if declared.is_some_and(|n| n > limit) {
        // Refused on the declared length alone: the body is never read.
        let mut r = payload_too_large().into_response();
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    } else {
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(peer);
        parts.extensions.insert(caller.clone());
        let req = Request::from_parts(parts, Body::new(body));
        // A bundle import (upload or inbox path) verifies and unpacks up to 4 GiB: it is not
        // cut off at the ordinary request timeout, only at an hour.
        let importing = method == hyper::Method::POST && (path == UPLOAD_PATH || path == IMPORT_PATH);
        let timeout = Duration::from_millis(limits.request_timeout_ms);
        let timeout = if importing { timeout.max(IMPORT_TIMEOUT) } else { timeout };
        match tokio::time::timeout(timeout, router.oneshot(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(never)) => match never {},
            Err(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "request_timeout",
                "the request did not complete within server.request_timeout_ms",
            )
            .into_response(),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let (actor, tenant) = caller.0.get().map_or(("", None), |(a, t)| (a.as_str(), t.as_deref()));
    tracing::info!(
        requestId = %request_id,
        actor,
        tenant = tenant.unwrap_or(""),
        %method,
        path = %path,
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}
