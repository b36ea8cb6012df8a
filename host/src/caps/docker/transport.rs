//! The connection to one engine: its address (Unix socket, TCP, TCP+TLS),
//! its dialer, and the `Engine`: Berth's HTTP/1.1 client (`wire`) on it,
//! speaking the newest Engine API version both sides know.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::wire::{Answer, Wire};
use crate::bindings::docker::{DockerError, EngineError};

/// The newest Engine API version Berth speaks; an older engine is spoken
/// to in its own (Docker 20.10's 1.41 and newer are tested).
const NEWEST_VERSION: (u32, u32) = (1, 53);

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

/// One engine: Berth's HTTP/1.1 client (`wire`) on its dialer.
pub struct Engine {
    pub(super) spec: Spec,
    /// `spec.address`, parsed.
    address: Address,
    pub(super) wire: Arc<Wire>,
    /// The API version negotiated with the engine, once asked.
    version: tokio::sync::OnceCell<String>,
    /// The longest an answer's head may take.
    timeout: Duration,
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
        Ok(Engine {
            spec,
            address,
            wire: Arc::new(Wire::new(dialer)),
            version: tokio::sync::OnceCell::new(),
            timeout,
        })
    }

    /// The path a URL endpoint's Docker paths go under ("" for engines).
    pub(super) fn prefix(&self) -> &str {
        match &self.address {
            Address::Url { prefix, .. } => prefix,
            _ => "",
        }
    }

    /// The newest API version both sides know (`1.41`, ...), asked of the
    /// engine once.
    async fn version(&self) -> Result<&str, DockerError> {
        if let Address::Url { .. } = self.address {
            return Err(DockerError::Invalid(format!(
                "`{}` is a URL endpoint: only proxy-docker reaches it",
                self.spec.address
            )));
        }
        let version = self.version.get_or_try_init(|| async {
            #[derive(Deserialize)]
            struct Version {
                #[serde(rename = "ApiVersion")]
                api_version: String,
            }
            let answer = self.send(&Method::GET, "/version", None).await?;
            let Version { api_version } = self.read_json(answer).await?;
            let parsed = api_version
                .split_once('.')
                .and_then(|(major, minor)| Some((major.parse().ok()?, minor.parse().ok()?)));
            let Some(theirs) = parsed else {
                return Err(DockerError::Unreachable(format!(
                    "{} gave an API version Berth cannot read: `{api_version}`",
                    self.spec.address
                )));
            };
            let (major, minor) = std::cmp::min(theirs, NEWEST_VERSION);
            Ok(format!("{major}.{minor}"))
        });
        Ok(version.await?)
    }

    /// Send `method target` (path and query, without the API version) with
    /// an optional JSON `body`, at the negotiated API version: the answer
    /// if its status is a success (2xx, or 304), else the engine's error.
    /// Its body is still on the connection.
    pub(super) async fn call(
        &self,
        method: &Method,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, DockerError> {
        let version = self.version().await?;
        let answer = self
            .send(method, &format!("/v{version}{target}"), body)
            .await?;
        if answer.status.is_success() || answer.status == StatusCode::NOT_MODIFIED {
            return Ok(answer);
        }
        let status = answer.status.as_u16();
        let body = self.read(answer).await?;
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(DockerError::Engine(EngineError { status, message }))
    }

    /// [`Engine::call`], its whole answer's body.
    pub(super) async fn fetch(
        &self,
        method: &Method,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<Bytes, DockerError> {
        let answer = self.call(method, target, body).await?;
        self.read(answer).await
    }

    /// `GET target`, its JSON answer read as `T`.
    pub(super) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        target: &str,
    ) -> Result<T, DockerError> {
        let answer = self.call(&Method::GET, target, None).await?;
        self.read_json(answer).await
    }

    /// One request as it is, unversioned.
    async fn send(
        &self,
        method: &Method,
        target: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, DockerError> {
        let mut headers = HeaderMap::new();
        if body.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let send = self
            .wire
            .send(method, target, &headers, body.unwrap_or_default());
        match tokio::time::timeout(self.timeout, send).await {
            Ok(answer) => answer.map_err(|e| self.unreachable(e)),
            Err(_) => Err(DockerError::Unreachable(format!(
                "{} did not answer within {} ms",
                self.spec.address,
                self.timeout.as_millis()
            ))),
        }
    }

    /// An answer's whole body.
    async fn read(&self, answer: Answer) -> Result<Bytes, DockerError> {
        let body = answer.body.collect().await;
        Ok(body.map_err(|e| self.unreachable(e))?.to_bytes())
    }

    /// An answer's whole body as JSON.
    pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        answer: Answer,
    ) -> Result<T, DockerError> {
        let body = self.read(answer).await?;
        serde_json::from_slice(&body).map_err(|e| {
            DockerError::Unreachable(format!(
                "{} sent an answer Berth cannot read: {e}",
                self.spec.address
            ))
        })
    }

    /// An answer that broke off part way.
    pub(super) fn broken(&self, e: std::io::Error) -> DockerError {
        DockerError::Unreachable(format!("{}: the answer broke off: {e}", self.spec.address))
    }

    fn unreachable(&self, e: std::io::Error) -> DockerError {
        DockerError::Unreachable(format!("{}: {e}", self.spec.address))
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
