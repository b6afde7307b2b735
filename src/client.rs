//! The CLI's HTTP client: one request per connection, over the daemon's Unix socket or over
//! HTTPS with a pinned CA. Responses are read fully but bounded.

use crate::exit::CliError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// A response body larger than this is refused.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Connecting (and the TLS handshake) must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub enum Transport {
    Unix(PathBuf),
    Https { url: String, authority: String, host: String, tls: Arc<rustls::ClientConfig> },
}

#[derive(Debug, Clone)]
pub struct Client {
    pub transport: Transport,
    pub token: Option<String>,
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Result<serde_json::Value, CliError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| CliError::Other(format!("daemon sent a body that is not JSON: {e}")))
    }

    /// The body parsed once: the JSON as received (what `--format json` prints, unchanged) and
    /// the same JSON read as `T`, the reply type the daemon serializes (what text output renders).
    pub fn typed<T: serde::de::DeserializeOwned>(&self) -> Result<(serde_json::Value, T), CliError> {
        let raw = self.json()?;
        let typed = T::deserialize(&raw).map_err(|e| {
            let name = std::any::type_name::<T>().rsplit("::").next().unwrap_or("reply");
            CliError::Other(format!(
                "the daemon's reply is not a {name}: {e} — is the daemon the same version as this CLI?"
            ))
        })?;
        Ok((raw, typed))
    }

    /// Turns a problem document (or any non-2xx) into the CLI's typed error.
    pub fn ok(self) -> Result<Reply, CliError> {
        if self.status.is_success() {
            return Ok(self);
        }
        let problem: serde_json::Value = serde_json::from_slice(&self.body).unwrap_or_default();
        Err(CliError::Api {
            status: self.status.as_u16(),
            code: problem["code"].as_str().unwrap_or("unknown").to_owned(),
            detail: problem["detail"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned()),
        })
    }
}

impl Client {
    pub fn unix(path: PathBuf) -> Self {
        Client { transport: Transport::Unix(path), token: None }
    }

    /// `url` like `https://127.0.0.1:8443`; `ca` is the PEM the server's certificate chains to.
    pub fn https(url: &str, ca: &std::path::Path) -> Result<Self, CliError> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| CliError::Invalid(format!("--server {url:?}: only https:// URLs are supported")))?;
        let authority = rest.trim_end_matches('/').to_owned();
        let host = match authority.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h.trim_matches(['[', ']']).to_owned(),
            _ => authority.clone(),
        };
        let authority =
            if authority.contains(':') && !authority.ends_with(']') { authority } else { format!("{authority}:443") };
        let tls = crate::tls::client_config(ca).map_err(CliError::Invalid)?;
        Ok(Client {
            transport: Transport::Https { url: url.to_owned(), authority, host, tls: Arc::new(tls) },
            token: None,
        })
    }

    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Unix(p) => format!("unix:{}", p.display()),
            Transport::Https { url, .. } => url.clone(),
        }
    }

    pub async fn get(&self, path: &str) -> Result<Reply, CliError> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<Reply, CliError> {
        self.send(Method::POST, path, Some(serde_json::to_vec(body).expect("json serializes"))).await
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Reply, CliError> {
        let mut req = Request::builder().method(method).uri(path).header("host", "stella");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Invalid(format!("request {path}: {e}")))?;
        self.request(req).await
    }

    /// POSTs the bytes of `file` as the body, streamed (never held whole in memory).
    pub async fn upload(&self, path: &str, file: &std::path::Path) -> Result<Reply, CliError> {
        use tokio::io::AsyncReadExt;
        let open = |e: std::io::Error| CliError::Invalid(format!("{}: {e}", file.display()));
        let f = tokio::fs::File::open(file).await.map_err(open)?;
        let len = f.metadata().await.map_err(open)?.len();
        let chunks = futures_util::stream::unfold(f, |mut f| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(hyper::body::Frame::data(Bytes::from(buf))), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", "stella")
            .header("content-type", "application/octet-stream")
            .header("content-length", len);
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(http_body_util::StreamBody::new(chunks))
            .map_err(|e| CliError::Invalid(format!("request {path}: {e}")))?;
        self.request(req).await
    }

    async fn request<B>(&self, req: Request<B>) -> Result<Reply, CliError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        exchange(self.connect().await?, req).await
    }

    /// A connection to the daemon: its Unix socket, or TLS to its HTTPS listener.
    async fn connect(&self) -> Result<Box<dyn Io>, CliError> {
        match &self.transport {
            Transport::Unix(socket) => {
                let stream = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::UnixStream::connect(crate::config::socket_arg(socket)),
                )
                .await
                .map_err(|_| CliError::Unreachable(format!("connect to {} timed out", socket.display())))?
                .map_err(|e| CliError::Unreachable(format!("{}: {e}", socket.display())))?;
                Ok(Box::new(stream))
            }
            Transport::Https { authority, host, tls, url } => {
                let connect = async {
                    let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                    tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await
                };
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
                    .await
                    .map_err(|_| CliError::Unreachable(format!("connect to {url} timed out")))?
                    .map_err(|e| CliError::Unreachable(format!("{url}: {e}")))?;
                Ok(Box::new(stream))
            }
        }
    }
}

/// A byte stream to the daemon, whichever transport carries it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Client {
    /// A GET whose body is consumed as it arrives (Server-Sent Events): `on_chunk` gets each
    /// piece and returns false to stop. A non-2xx answer is returned as an error.
    pub async fn stream(
        &self,
        path: &str,
        last_event_id: Option<u64>,
        mut on_chunk: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), CliError> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", "stella")
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| CliError::Invalid(format!("request {path}: {e}")))?;
        let stream = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| CliError::Unreachable(format!("http handshake: {e}")))?;
        let driver = tokio::spawn(conn);
        let resp = sender.send_request(req).await.map_err(|e| CliError::Unreachable(format!("request failed: {e}")))?;
        let (parts, mut body) = resp.into_parts();
        if !parts.status.is_success() {
            let bytes = Limited::new(body, RESPONSE_BYTES_MAX)
                .collect()
                .await
                .map_err(|e| CliError::Other(e.to_string()))?
                .to_bytes();
            return Reply { status: parts.status, headers: parts.headers, body: bytes }.ok().map(|_| ());
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| CliError::Unreachable(format!("stream ended: {e}")))?;
            if let Some(data) = frame.data_ref()
                && !on_chunk(data)
            {
                break;
            }
        }
        driver.abort();
        Ok(())
    }
}

async fn exchange<S, B>(stream: S, req: Request<B>) -> Result<Reply, CliError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| CliError::Unreachable(format!("http handshake: {e}")))?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| CliError::Unreachable(format!("request failed: {e}")))?;
    let (parts, body) = resp.into_parts();
    let body = Limited::new(body, RESPONSE_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| CliError::Other(format!("read response: {e}")))?
        .to_bytes();
    driver.abort();
    Ok(Reply { status: parts.status, headers: parts.headers, body })
}
