//! The connection to one engine: its address (Unix socket, TCP, TCP+TLS),
//! the dialer hyper and bollard use, and the `Engine` with both clients.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use bollard::errors::Error as BollardError;
use http_body_util::BodyExt;

use super::engine_error;
use super::wire::Wire;
use crate::bindings::docker::{DockerError, EngineError};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// The oldest Engine API version asked for before negotiating (Docker 20.10).
pub(super) const FLOOR_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Where an engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
    },
    /// The Engine API under a URL's path (a plugin's URL endpoint).
    Url {
        host: String,
        port: u16,
        /// The path the Docker paths go under, without a trailing `/`.
        prefix: String,
        https: bool,
    },
}

impl Address {
    /// `unix:///path` or `tcp://host:port`.
    pub fn parse(text: &str) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!("`{text}`: a unix address needs an absolute path"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let Some(rest) = text.strip_prefix("tcp://") else {
            return Err(format!(
                "`{text}`: an engine address is unix:///PATH or tcp://HOST:PORT"
            ));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}`: tcp addresses need a port"))?;
        let port = port
            .parse()
            .map_err(|_| format!("`{text}`: `{port}` is not a port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(format!("`{text}`: missing or malformed host"));
        }
        Ok(Address::Tcp {
            host: host.to_string(),
            port,
        })
    }

    /// `http://host[:port][/path]` or `https://...`, for URL endpoints.
    pub fn parse_url(text: &str) -> Result<Address, String> {
        let (https, rest) = match text.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            _ => return Err(format!("`{text}`: a URL endpoint is http:// or https://")),
        };
        if rest.contains(['?', '#', '@', ' ']) {
            return Err(format!(
                "`{text}`: no query, fragment, credentials or spaces in a URL endpoint"
            ));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                let port = port
                    .parse()
                    .map_err(|_| format!("`{text}`: `{port}` is not a port"))?;
                (host, port)
            }
            _ => (authority, if https { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || path.split('/').any(|s| s == "..") {
            return Err(format!("`{text}`: missing host, or `..` in the path"));
        }
        Ok(Address::Url {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
            https,
        })
    }

    /// This engine address, as `parse` or `parse_url` reads it.
    pub fn parse_any(text: &str) -> Result<Address, String> {
        match text.starts_with("http://") || text.starts_with("https://") {
            true => Address::parse_url(text),
            false => Address::parse(text),
        }
    }
}

/// An endpoint's address and TLS material (PEM text), however defined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Spec {
    pub(super) address: String,
    #[serde(default)]
    pub(super) tls: Option<Tls>,
    /// Headers set on every request to a URL endpoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Tls {
    pub(super) ca: String,
    pub(super) cert: String,
    pub(super) key: String,
}

/// One engine: bollard on a pooled hyper client, and the small client of
/// the calls on a request's hot path (see `wire`).
pub struct Engine {
    pub(super) spec: Spec,
    /// `spec.address`, parsed.
    address: Address,
    pub(super) api: bollard::Docker,
    pub(super) wire: Arc<Wire>,
    pub(super) negotiated: tokio::sync::OnceCell<()>,
}

impl Engine {
    pub(super) fn new(spec: Spec, timeout: Duration) -> Result<Engine, String> {
        let address = Address::parse_any(&spec.address)?;
        let tls = match (&spec.tls, &address) {
            (None, Address::Url { host, https, .. }) if *https => Some(public_tls(host)),
            (None, _) => None,
            (Some(tls), Address::Tcp { host, .. }) => Some(client_tls(tls, host)?),
            (Some(_), _) => {
                return Err(format!(
                    "{}: TLS material is for tcp addresses",
                    spec.address
                ));
            }
        };
        let dialer = Dialer(Arc::new((address.clone(), tls)));
        let wire = Arc::new(Wire::new(dialer.clone()));
        let http: Client<Dialer, ReqBody> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(dialer);
        let transport = {
            let http = http.clone();
            move |req: bollard::BollardRequest| {
                let http = http.clone();
                async move {
                    let req = req.map(|b| b.map_err(BoxError::from).boxed_unsync());
                    http.request(req).await.map_err(BollardError::from)
                }
            }
        };
        let api = bollard::Docker::connect_with_custom_transport(
            transport,
            Some("http://docker"),
            timeout.as_secs().max(1),
            &FLOOR_VERSION,
        )
        .map_err(|e| e.to_string())?;
        Ok(Engine {
            spec,
            address,
            api,
            wire,
            negotiated: tokio::sync::OnceCell::new(),
        })
    }

    /// The path a URL endpoint's Docker paths go under ("" for engines).
    pub(super) fn prefix(&self) -> &str {
        match &self.address {
            Address::Url { prefix, .. } => prefix,
            _ => "",
        }
    }

    /// bollard, speaking the newest API version both sides know.
    pub(super) async fn api(&self) -> Result<&bollard::Docker, DockerError> {
        if let Address::Url { .. } = self.address {
            return Err(DockerError::Invalid(format!(
                "`{}` is a URL endpoint: only proxy-docker reaches it",
                self.spec.address
            )));
        }
        self.negotiated
            .get_or_try_init(|| async {
                self.api
                    .clone()
                    .negotiate_version()
                    .await
                    .map(|_| ())
                    .map_err(|e| engine_error(&self.spec.address, e))
            })
            .await?;
        Ok(&self.api)
    }

    /// `GET target` (path and query, below the negotiated API version),
    /// its JSON answer read as `T`.
    pub(super) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        target: &str,
    ) -> Result<T, DockerError> {
        let version = self.api().await?.client_version();
        let address = &self.spec.address;
        let unreachable = |e: std::io::Error| DockerError::Unreachable(format!("{address}: {e}"));
        let answer = self
            .wire
            .send(
                &http::Method::GET,
                &format!("/v{version}{target}"),
                &http::HeaderMap::new(),
                &[],
            )
            .await
            .map_err(unreachable)?;
        let body = answer.body.collect().await.map_err(unreachable)?.to_bytes();
        if !answer.status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(DockerError::Engine(EngineError {
                status: answer.status.as_u16(),
                message,
            }));
        }
        serde_json::from_slice(&body).map_err(|e| {
            DockerError::Unreachable(format!("{address} sent an answer Berth cannot read: {e}"))
        })
    }
}

/// The most of an answer `Engine::request` reads.
pub(super) const REQUEST_ANSWER_MAX: usize = 16 << 20;

impl Engine {
    /// One request (`target`: path and query) and its whole answer, error
    /// statuses included; an answer over `REQUEST_ANSWER_MAX` is refused.
    pub(super) async fn request(
        &self,
        method: &http::Method,
        target: &str,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<(http::StatusCode, http::HeaderMap, Bytes), DockerError> {
        let address = &self.spec.address;
        let unreachable = |e: std::io::Error| DockerError::Unreachable(format!("{address}: {e}"));
        let target = format!("{}{target}", self.prefix());
        let answer = self
            .wire
            .send(method, &target, headers, body)
            .await
            .map_err(unreachable)?;
        if answer.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(DockerError::Invalid(
                "the engine upgraded the connection: use proxy-docker for attach and exec".into(),
            ));
        }
        let limited = http_body_util::Limited::new(answer.body, REQUEST_ANSWER_MAX);
        let body = match limited.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(DockerError::Invalid(format!(
                    "the engine's answer is over {} MiB",
                    REQUEST_ANSWER_MAX >> 20
                )));
            }
            Err(e) => return Err(DockerError::Unreachable(format!("{address}: {e}"))),
        };
        Ok((answer.status, answer.headers, body))
    }
}

pub(super) fn client_tls(tls: &Tls, host: &str) -> Result<ClientTls, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut tls.ca.as_bytes()) {
        let cert = cert.map_err(|e| format!("bad CA certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the TLS material has no CA certificate".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = if tls.cert.is_empty() && tls.key.is_empty() {
        builder.with_no_client_auth()
    } else {
        let certs = rustls_pemfile::certs(&mut tls.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad client certificate: {e}"))?;
        let key = rustls_pemfile::private_key(&mut tls.key.as_bytes())
            .map_err(|e| format!("bad client key: {e}"))?
            .ok_or("no private key in the client key")?;
        builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("client certificate and key do not match: {e}"))?
    };
    Ok((Arc::new(config), host.to_string()))
}

/// TLS to a server with a certificate from a public authority.
fn public_tls(host: &str) -> ClientTls {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(config), host.to_string())
}

/// A TLS client configuration and the server name to verify.
pub(super) type ClientTls = (Arc<rustls::ClientConfig>, String);

/// Opens connections to one engine address.
#[derive(Clone)]
pub(super) struct Dialer(pub(super) Arc<(Address, Option<ClientTls>)>);

impl tower_service::Service<http::Uri> for Dialer {
    type Response = Conn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let dialer = self.clone();
        Box::pin(async move { Ok(Conn(TokioIo::new(dialer.dial().await?))) })
    }
}

impl Dialer {
    /// A new connection to the engine.
    pub(super) async fn dial(&self) -> std::io::Result<Stream> {
        let (address, tls) = &*self.0;
        tracing::debug!(?address, "connecting to a Docker engine");
        Ok(match address {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            Address::Tcp { host, port } | Address::Url { host, port, .. } => {
                let tcp = TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                match tls {
                    None => Stream::Tcp(tcp),
                    Some((config, name)) => {
                        let name = rustls::pki_types::ServerName::try_from(name.clone())
                            .map_err(std::io::Error::other)?;
                        let connector = tokio_rustls::TlsConnector::from(config.clone());
                        Stream::Tls(Box::new(connector.connect(name, tcp).await?))
                    }
                }
            }
        })
    }
}

pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

macro_rules! each_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Stream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each_stream!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each_stream!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => s.poll_shutdown(cx))
    }
}

/// A connection to an engine, as hyper's client wants it.
pub(super) struct Conn(TokioIo<Stream>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Address::parse("unix:///var/run/docker.sock"),
            Ok(Address::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            Address::parse("tcp://127.0.0.1:2376"),
            Ok(Address::Tcp {
                host: "127.0.0.1".into(),
                port: 2376
            })
        );
        assert_eq!(
            Address::parse("tcp://[::1]:2375/"),
            Ok(Address::Tcp {
                host: "::1".into(),
                port: 2375
            })
        );
        for bad in [
            "unix://relative",
            "tcp://host",
            "tcp://:2375",
            "http://x:1",
            "tcp://h:99999",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn url_endpoints_parse() {
        let url = |host: &str, port, prefix: &str, https| Address::Url {
            host: host.into(),
            port,
            prefix: prefix.into(),
            https,
        };
        assert_eq!(
            Address::parse_url("http://10.0.0.2:8080/d/local"),
            Ok(url("10.0.0.2", 8080, "/d/local", false))
        );
        assert_eq!(
            Address::parse_url("https://beacon.example/d/x/"),
            Ok(url("beacon.example", 443, "/d/x", true))
        );
        assert_eq!(
            Address::parse_url("http://[::1]"),
            Ok(url("::1", 80, "", false))
        );
        for bad in [
            "tcp://h:1",
            "http://",
            "http://h:x/",
            "http://u:p@h/",
            "http://h/a?b",
            "http://h/../x",
        ] {
            assert!(Address::parse_url(bad).is_err(), "{bad} should be refused");
        }
    }
}
