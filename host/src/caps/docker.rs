//! `docker`: Docker engines through bollard, and the raw forwarding behind
//! the `proxy-docker` outcome.
//!
//! An endpoint is a name for an engine address: the operator's (`local`
//! and `[docker.endpoints.NAME]`) or one a plugin registered for itself
//! (kept in the host's meta table, checked against `[docker] allow`). Each
//! engine gets a dialer that speaks Unix sockets, TCP or TCP+TLS (rustls)
//! and two clients on it: bollard, over hyper's pooled client, for the
//! typed operations; and `wire`, a small HTTP/1.1 client of its own, for
//! the two calls on a request's hot path: the proxy and the container list.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::query_parameters as q;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::client::TlsStream;

use crate::caps::Capability;
use crate::config::DockerConfig;
use crate::runtime::HostState;
use crate::runtime::bindings::berth::plugin::docker::{
    Container, DockerError, EngineError, Filters, Host, Port, TlsFiles,
};
use crate::store::Store;

mod wire;

use wire::Wire;
pub use wire::WireBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = UnsyncBoxBody<Bytes, BoxError>;

/// The oldest Engine API version asked for before negotiating (Docker 20.10).
const FLOOR_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Meta-table namespace of plugin-registered endpoints.
const META_NS: &str = "docker-endpoints";
/// Host metadata namespace of a plugin's event followers, restored when
/// the plugin is mounted again (after a restart, say).
const FOLLOW_NS: &str = "docker-follow";

/// A follower as stored: enough to start it again.
#[derive(Serialize, Deserialize)]
struct FollowRecord {
    endpoint: String,
    filters: Filters,
    sink: SinkSpec,
}

/// Where a follower delivers, without the host handles to do it.
#[derive(Clone, Serialize, Deserialize)]
enum SinkSpec {
    /// Published on this topic of the plugin.
    Topic(String),
    /// Queued as jobs of this kind.
    Job(String),
}

impl SinkSpec {
    /// Tells followers of one plugin and endpoint apart.
    fn key(&self) -> String {
        match self {
            SinkSpec::Topic(topic) => format!("topic:{topic}"),
            SinkSpec::Job(kind) => format!("job:{kind}"),
        }
    }
}

/// Where an engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
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
}

/// An endpoint's address and TLS material (PEM text), however defined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Spec {
    address: String,
    #[serde(default)]
    tls: Option<Tls>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tls {
    ca: String,
    cert: String,
    key: String,
}

/// One engine: bollard on a pooled hyper client, and the small client of
/// the calls on a request's hot path (see `wire`).
pub struct Engine {
    spec: Spec,
    api: bollard::Docker,
    wire: Arc<Wire>,
    negotiated: tokio::sync::OnceCell<()>,
}

impl Engine {
    fn new(spec: Spec, timeout: Duration) -> Result<Engine, String> {
        let address = Address::parse(&spec.address)?;
        let tls = match (&spec.tls, &address) {
            (None, _) => None,
            (Some(_), Address::Unix(_)) => {
                return Err(format!("{}: TLS is for tcp addresses", spec.address));
            }
            (Some(tls), Address::Tcp { host, .. }) => Some(client_tls(tls, host)?),
        };
        let dialer = Dialer(Arc::new((address, tls)));
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
            api,
            wire,
            negotiated: tokio::sync::OnceCell::new(),
        })
    }

    /// bollard, speaking the newest API version both sides know.
    async fn api(&self) -> Result<&bollard::Docker, DockerError> {
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
    async fn get<T: serde::de::DeserializeOwned>(&self, target: &str) -> Result<T, DockerError> {
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

fn client_tls(tls: &Tls, host: &str) -> Result<ClientTls, String> {
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

/// A TLS client configuration and the server name to verify.
type ClientTls = (Arc<rustls::ClientConfig>, String);

/// Opens connections to one engine address.
#[derive(Clone)]
struct Dialer(Arc<(Address, Option<ClientTls>)>);

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
    async fn dial(&self) -> std::io::Result<Stream> {
        let (address, tls) = &*self.0;
        tracing::debug!(?address, "connecting to a Docker engine");
        Ok(match address {
            Address::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
            Address::Tcp { host, port } => {
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

enum Stream {
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

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each_stream!(self, s => s.poll_shutdown(cx))
    }
}

/// A connection to an engine, as hyper's client wants it.
struct Conn(TokioIo<Stream>);

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

/// Where a follower delivers engine events.
pub enum EventSink {
    /// Publish each event on one of the plugin's topics.
    Publish {
        events: Arc<crate::caps::events::Events>,
        topic: String,
    },
    /// Queue each event as a job of `kind` for the plugin.
    Jobs {
        db: Arc<crate::store::Store>,
        kind: String,
    },
}

impl EventSink {
    fn spec(&self) -> SinkSpec {
        match self {
            EventSink::Publish { topic, .. } => SinkSpec::Topic(topic.clone()),
            EventSink::Jobs { kind, .. } => SinkSpec::Job(kind.clone()),
        }
    }

    async fn deliver(&self, plugin: &str, payload: Bytes) {
        match self {
            EventSink::Publish { events, topic } => {
                events.publish(plugin, topic, payload, false);
            }
            EventSink::Jobs { db, kind } => {
                let mut txn = db.begin(plugin);
                let queued = match txn.enqueue(kind, &payload, 0) {
                    Ok(_) => txn.commit().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                if let Err(e) = queued {
                    tracing::warn!(%plugin, error = %e, "cannot queue an engine event as a job");
                }
            }
        }
    }
}

/// Every endpoint, the engines built for them, and the proxy's stream cap.
pub struct Docker {
    config: DockerConfig,
    /// The operator's endpoints, by name (`local` always among them).
    named: BTreeMap<String, Spec>,
    db: Arc<Store>,
    engines: Mutex<HashMap<(String, String), Arc<Engine>>>,
    streams: Arc<Semaphore>,
    /// Engine event followers by (plugin, endpoint, sink key).
    followers: Mutex<HashMap<(String, String, String), tokio::task::AbortHandle>>,
}

/// Why a proxied request got no answer from the engine.
#[derive(Debug)]
pub enum ProxyError {
    /// The plugin may not use Docker or this endpoint.
    Refused(String),
    /// No endpoint of that name.
    Unknown(String),
    /// The engine did not answer.
    Unreachable(String),
    /// Too many proxied streams are open.
    Busy,
}

impl Docker {
    /// Endpoints from `config`; `local` defaults to `DOCKER_HOST` or the
    /// default socket.
    pub fn new(config: &DockerConfig, db: Arc<Store>) -> anyhow::Result<Docker> {
        let mut named = BTreeMap::new();
        let local = if !config.local.is_empty() {
            config.local.clone()
        } else {
            std::env::var("DOCKER_HOST")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
        };
        Address::parse(&local).map_err(|e| anyhow::anyhow!("[docker] local: {e}"))?;
        named.insert(
            "local".to_string(),
            Spec {
                address: local,
                tls: None,
            },
        );
        for (name, endpoint) in &config.endpoints {
            Address::parse(&endpoint.address)
                .map_err(|e| anyhow::anyhow!("[docker.endpoints.{name}] address: {e}"))?;
            let read = |p: &PathBuf| {
                if p.as_os_str().is_empty() {
                    return Ok(String::new());
                }
                std::fs::read_to_string(p).map_err(|e| {
                    anyhow::anyhow!("[docker.endpoints.{name}] cannot read {}: {e}", p.display())
                })
            };
            let tls = if endpoint.tls_ca.as_os_str().is_empty() {
                None
            } else {
                Some(Tls {
                    ca: read(&endpoint.tls_ca)?,
                    cert: read(&endpoint.tls_cert)?,
                    key: read(&endpoint.tls_key)?,
                })
            };
            named.insert(
                name.clone(),
                Spec {
                    address: endpoint.address.clone(),
                    tls,
                },
            );
        }
        Ok(Docker {
            config: config.clone(),
            named,
            db,
            engines: Mutex::default(),
            streams: Arc::new(Semaphore::new(config.max_proxy_streams as usize)),
            followers: Mutex::default(),
        })
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.timeout_ms)
    }

    /// The engine `plugin` reaches as `name`.
    pub fn engine(&self, plugin: &str, name: &str) -> Result<Arc<Engine>, DockerError> {
        let (owner, spec) = if let Some(spec) = self.named.get(name) {
            let open = self
                .config
                .endpoints
                .get(name)
                .is_none_or(|e| e.plugins.is_empty() || e.plugins.iter().any(|p| p == plugin));
            if !open {
                return Err(DockerError::Denied(format!(
                    "endpoint `{name}` is not open to plugin `{plugin}` ([docker.endpoints.{name}] plugins)"
                )));
            }
            (String::new(), spec.clone())
        } else {
            let key = (plugin.to_string(), name.to_string());
            if let Some(engine) = self.cached(&key) {
                return Ok(engine);
            }
            let stored = self
                .db
                .meta_get(&format!("{META_NS}:{plugin}"), name)
                .map_err(|e| DockerError::Unreachable(format!("storage: {e}")))?
                .ok_or_else(|| DockerError::UnknownEndpoint(format!("no endpoint `{name}`")))?;
            let spec: Spec = serde_json::from_slice(&stored)
                .map_err(|e| DockerError::Invalid(format!("stored endpoint `{name}`: {e}")))?;
            (plugin.to_string(), spec)
        };
        let key = (owner, name.to_string());
        if let Some(engine) = self.cached(&key) {
            return Ok(engine);
        }
        let engine = Arc::new(Engine::new(spec, self.timeout()).map_err(DockerError::Invalid)?);
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, engine.clone());
        Ok(engine)
    }

    /// Follow `endpoint`'s events into `sink`, once per (plugin, endpoint,
    /// sink), reconnecting until the host exits; remember that, so the
    /// follower comes back with the plugin after a restart.
    async fn follow(
        &self,
        plugin: &str,
        endpoint: &str,
        filters: Filters,
        sink: EventSink,
    ) -> Result<(), DockerError> {
        let record = FollowRecord {
            endpoint: endpoint.to_string(),
            filters: filters.clone(),
            sink: sink.spec(),
        };
        if !self.start_following(plugin, endpoint, filters, sink)? {
            return Ok(());
        }
        let value = serde_json::to_vec(&record).expect("a record serialises");
        self.db
            .meta_set(
                &format!("{FOLLOW_NS}:{plugin}"),
                &format!("{endpoint} {}", record.sink.key()),
                value,
            )
            .await
            .map_err(|e| DockerError::Unreachable(format!("storage: {e}")))
    }

    /// Start the followers `env`'s plugin had, as far as its grants still
    /// allow. Ones already running are left alone.
    pub fn restore_followers(&self, env: &crate::runtime::PluginEnv) {
        if !env.granted.contains(Capability::Docker) {
            return;
        }
        let records = match self.db.meta_list(&format!("{FOLLOW_NS}:{}", env.name)) {
            Ok(records) => records,
            Err(e) => {
                tracing::warn!(plugin = %env.name, error = %e, "cannot read the event followers");
                return;
            }
        };
        for (_, value) in records {
            let Ok(record) = serde_json::from_slice::<FollowRecord>(&value) else {
                continue;
            };
            let sink = match record.sink {
                SinkSpec::Topic(topic) if env.granted.contains(Capability::Events) => {
                    EventSink::Publish {
                        events: env.events.clone(),
                        topic,
                    }
                }
                SinkSpec::Job(kind) if env.granted.contains(Capability::Jobs) => EventSink::Jobs {
                    db: env.db.clone(),
                    kind,
                },
                _ => continue,
            };
            if let Err(e) = self.start_following(&env.name, &record.endpoint, record.filters, sink)
            {
                tracing::warn!(plugin = %env.name, endpoint = %record.endpoint, error = %error_text(&e), "cannot follow the engine's events again");
            }
        }
    }

    /// Start a follower unless the same one runs; whether it was started.
    fn start_following(
        &self,
        plugin: &str,
        endpoint: &str,
        filters: Filters,
        sink: EventSink,
    ) -> Result<bool, DockerError> {
        let engine = self.engine(plugin, endpoint)?;
        let key = (plugin.to_string(), endpoint.to_string(), sink.spec().key());
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        if followers.get(&key).is_some_and(|f| !f.is_finished()) {
            return Ok(false);
        }
        let plugin = key.0.clone();
        let task = tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut backoff = Duration::from_millis(500);
            loop {
                match engine.api().await {
                    Ok(api) => {
                        let options = q::EventsOptions {
                            filters: filter_map(filters.clone()),
                            ..Default::default()
                        };
                        let mut stream = api.events(Some(options));
                        while let Some(event) = stream.next().await {
                            match event {
                                Ok(event) => {
                                    backoff = Duration::from_millis(500);
                                    sink.deliver(&plugin, Bytes::from(json(&event))).await;
                                }
                                Err(e) => {
                                    tracing::debug!(%plugin, error = %e, "engine event stream ended");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%plugin, error = %error_text(&e), "engine events unavailable")
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        });
        followers.insert(key, task.abort_handle());
        Ok(true)
    }

    /// Stop `plugin`'s engine event followers: all of them, or those on
    /// one endpoint. Called when the plugin is unmounted or forgets an
    /// endpoint, so nothing keeps queueing its jobs.
    pub fn stop_following(&self, plugin: &str, endpoint: Option<&str>) {
        self.followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(p, e, _), task| {
                let stop = p == plugin && endpoint.is_none_or(|ep| ep == e);
                if stop {
                    task.abort();
                }
                !stop
            });
    }

    fn cached(&self, key: &(String, String)) -> Option<Arc<Engine>> {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Whether the operator lets plugins register `address`.
    fn allowed(&self, address: &str) -> bool {
        self.config.allow.iter().any(|p| glob(p, address))
    }

    async fn register(
        &self,
        plugin: &str,
        name: &str,
        address: &str,
        tls: Option<TlsFiles>,
    ) -> Result<(), DockerError> {
        let valid_name = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(DockerError::Invalid(format!(
                "endpoint name `{name}`: use 1 to 128 letters, digits, `-`, `_` or `.`"
            )));
        }
        if self.named.contains_key(name) {
            return Err(DockerError::Invalid(format!(
                "`{name}` is one of the operator's endpoints"
            )));
        }
        Address::parse(address).map_err(DockerError::Invalid)?;
        if !self.allowed(address) {
            return Err(DockerError::Denied(format!(
                "address `{address}` is not in the operator's allow-list ([docker] allow)"
            )));
        }
        let spec = Spec {
            address: address.to_string(),
            tls: tls.map(|t| Tls {
                ca: t.ca,
                cert: t.cert,
                key: t.key,
            }),
        };
        // Refuse bad TLS material now rather than on first use.
        Engine::new(spec.clone(), self.timeout()).map_err(DockerError::Invalid)?;
        let value = serde_json::to_vec(&spec).expect("a spec serialises");
        self.db
            .meta_set(&format!("{META_NS}:{plugin}"), name, value)
            .await
            .map_err(|e| DockerError::Unreachable(format!("storage: {e}")))?;
        self.forget(plugin, name);
        Ok(())
    }

    async fn unregister(&self, plugin: &str, name: &str) -> Result<bool, DockerError> {
        let ns = format!("{META_NS}:{plugin}");
        let storage =
            |e: crate::store::StoreError| DockerError::Unreachable(format!("storage: {e}"));
        let existed = self.db.meta_get(&ns, name).map_err(storage)?.is_some();
        if existed {
            self.db.meta_delete(&ns, name).await.map_err(storage)?;
        }
        self.stop_following(plugin, Some(name));
        let follows = format!("{FOLLOW_NS}:{plugin}");
        for (key, value) in self.db.meta_list(&follows).map_err(storage)? {
            let on_it =
                serde_json::from_slice::<FollowRecord>(&value).is_ok_and(|r| r.endpoint == name);
            if on_it {
                self.db.meta_delete(&follows, &key).await.map_err(storage)?;
            }
        }
        self.forget(plugin, name);
        Ok(existed)
    }

    fn forget(&self, plugin: &str, name: &str) {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(plugin.to_string(), name.to_string()));
    }

    /// Forward a request (`target`: path and query) to `endpoint` and
    /// return the engine's streaming answer. The returned permit counts the
    /// stream until it is dropped.
    pub async fn proxy(
        &self,
        plugin: &str,
        endpoint: &str,
        target: &str,
        request: http::Request<Bytes>,
    ) -> Result<(http::Response<WireBody>, OwnedSemaphorePermit), ProxyError> {
        let engine = self.engine(plugin, endpoint).map_err(|e| match e {
            DockerError::Unreachable(m) => ProxyError::Unreachable(m),
            DockerError::UnknownEndpoint(m) => ProxyError::Unknown(m),
            other => ProxyError::Refused(error_text(&other)),
        })?;
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProxyError::Busy)?;
        let (mut parts, body) = request.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(http::header::AUTHORIZATION);
        parts.headers.remove(http::header::COOKIE);
        let send = engine
            .wire
            .send(&parts.method, target, &parts.headers, &body);
        let answer = tokio::time::timeout(self.timeout(), send)
            .await
            .map_err(|_| {
                ProxyError::Unreachable(format!(
                    "{} did not answer within {} ms",
                    engine.spec.address, self.config.timeout_ms
                ))
            })?
            .map_err(|e| ProxyError::Unreachable(format!("{}: {e}", engine.spec.address)))?;
        let mut response = http::Response::new(answer.body);
        *response.status_mut() = answer.status;
        *response.headers_mut() = answer.headers;
        strip_hop_by_hop(response.headers_mut());
        Ok((response, permit))
    }
}

/// Remove the headers that belong to one connection, not the message.
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut text) = text.strip_prefix(head) else {
        return false;
    };
    let mut parts = rest.split('*').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            return text.ends_with(part);
        }
        match text.find(part) {
            Some(i) => text = &text[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}

fn engine_error(address: &str, e: BollardError) -> DockerError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => DockerError::Engine(EngineError {
            status: status_code,
            message,
        }),
        BollardError::RequestTimeoutError => {
            DockerError::Unreachable(format!("{address} did not answer in time"))
        }
        BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => {
            DockerError::Unreachable(format!("{address} sent an answer Berth cannot read: {e}"))
        }
        other => DockerError::Unreachable(format!("{address}: {}", chain(&other))),
    }
}

/// Text of any Docker error.
pub fn error_text(e: &DockerError) -> String {
    match e {
        DockerError::Denied(m)
        | DockerError::UnknownEndpoint(m)
        | DockerError::Invalid(m)
        | DockerError::Unreachable(m) => m.clone(),
        DockerError::Engine(e) => format!("engine error {}: {}", e.status, e.message),
    }
}

/// `name[:tag]` into name and tag (`latest` when absent); a `:` inside
/// the registry's `host:port` is not a tag.
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

fn filter_map(filters: Filters) -> Option<HashMap<String, Vec<String>>> {
    (!filters.is_empty()).then(|| filters.into_iter().collect())
}

/// `text` with every byte but the URL-unreserved ones percent-encoded.
fn percent_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
    out
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("engine models serialise")
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, DockerError> {
    serde_json::from_str(text).map_err(|e| DockerError::Invalid(format!("{what}: {e}")))
}

impl HostState {
    /// The engine behind `endpoint`, if this plugin holds `docker`; the
    /// plugin's deadline bounds the call.
    fn docker_engine(&self, endpoint: &str) -> Result<Arc<Engine>, DockerError> {
        if let Err(e) = self.check(Capability::Docker) {
            return Err(DockerError::Denied(crate::caps::denied_text(&e)));
        }
        self.call
            .plugin
            .docker
            .engine(&self.call.plugin.name, endpoint)
    }

    /// Run bollard's `op` on `endpoint`'s engine within this call's
    /// deadline. The future borrows nothing of the store's state.
    fn on_engine<T, F, Fut>(
        &self,
        endpoint: &str,
        op: F,
    ) -> impl Future<Output = wasmtime::Result<Result<T, DockerError>>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(bollard::Docker) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, BollardError>> + Send,
    {
        self.on_wire(endpoint, |engine| async move {
            let api = engine.api().await?.clone();
            op(api)
                .await
                .map_err(|e| engine_error(&engine.spec.address, e))
        })
    }

    /// Run `op` with `endpoint`'s engine within this call's deadline.
    fn on_wire<T, F, Fut>(
        &self,
        endpoint: &str,
        op: F,
    ) -> impl Future<Output = wasmtime::Result<Result<T, DockerError>>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(Arc<Engine>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DockerError>> + Send,
    {
        let engine = self.docker_engine(endpoint);
        let deadline = tokio::time::Instant::from_std(self.call.deadline);
        let (plugin, request_id) = (self.call.plugin.name.clone(), self.call.request_id.clone());
        let endpoint = endpoint.to_string();
        async move {
            let engine = match engine {
                Ok(engine) => engine,
                Err(e) => return Ok(Err(e)),
            };
            let address = engine.spec.address.clone();
            let result = match tokio::time::timeout_at(deadline, op(engine)).await {
                Ok(result) => result,
                Err(_) => Err(DockerError::Unreachable(format!(
                    "{address} did not answer before the call's deadline"
                ))),
            };
            Ok(result.map_err(|e| match e {
                // Addresses and socket errors are the operator's to read,
                // not every client's a plugin passes the text on to.
                DockerError::Unreachable(detail) => {
                    tracing::warn!(
                        plugin,
                        request_id,
                        endpoint,
                        "Docker engine unreachable: {detail}"
                    );
                    DockerError::Unreachable(unreachable_text(&endpoint, &request_id))
                }
                e => e,
            }))
        }
    }
}

/// What a plugin (and so its client) is told of an unreachable engine.
pub(crate) fn unreachable_text(endpoint: &str, request_id: &str) -> String {
    format!(
        "the Docker endpoint `{endpoint}` cannot be reached now (the host log has the \
         details under request {request_id})"
    )
}

/// The fields of the engine's container list that `container` carries:
/// decoding only these takes about half the time of bollard's whole
/// `ContainerSummary` (network settings, mounts, ...).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Summary {
    id: String,
    names: Option<Vec<String>>,
    #[serde(default)]
    image: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    created: i64,
    #[serde(default)]
    state: String,
    #[serde(default)]
    status: String,
    /// A `BTreeMap`, so the labels come sorted.
    labels: Option<BTreeMap<String, String>>,
    ports: Option<Vec<SummaryPort>>,
}

#[derive(Deserialize)]
struct SummaryPort {
    #[serde(rename = "PrivatePort")]
    private_port: u16,
    #[serde(rename = "PublicPort")]
    public_port: Option<u16>,
    #[serde(rename = "IP")]
    ip: Option<String>,
    #[serde(rename = "Type")]
    protocol: Option<String>,
}

fn container(c: Summary) -> Container {
    Container {
        id: c.id,
        names: c.names.unwrap_or_default(),
        image: c.image,
        command: c.command,
        created: c.created,
        state: c.state,
        status: c.status,
        labels: c.labels.unwrap_or_default().into_iter().collect(),
        ports: c
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| Port {
                private_port: p.private_port,
                public_port: p.public_port,
                ip: p.ip,
                protocol: p.protocol.unwrap_or_else(|| "tcp".into()),
            })
            .collect(),
    }
}

impl Host for HostState {
    async fn container_list(
        &mut self,
        endpoint: String,
        all: bool,
        filters: Filters,
    ) -> wasmtime::Result<Result<Vec<Container>, DockerError>> {
        let mut target = format!("/containers/json?all={all}");
        if let Some(filters) = filter_map(filters) {
            target.push_str("&filters=");
            target.push_str(&percent_encode(&json(&filters)));
        }
        self.on_wire(&endpoint, |engine| async move {
            let list: Vec<Summary> = engine.get(&target).await?;
            Ok(list.into_iter().map(container).collect())
        })
        .await
    }

    async fn container_inspect(
        &mut self,
        endpoint: String,
        id: String,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.inspect_container(&id, None).await?))
        })
        .await
    }

    async fn container_create(
        &mut self,
        endpoint: String,
        name: Option<String>,
        body: String,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        self.acted("a Docker call that changes the engine");
        let body: bollard::models::ContainerCreateBody = match parse("create body", &body) {
            Ok(body) => body,
            Err(e) => return Ok(Err(e)),
        };
        let options = q::CreateContainerOptions {
            name,
            ..Default::default()
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(api.create_container(Some(options), body).await?.id)
        })
        .await
    }

    async fn container_start(
        &mut self,
        endpoint: String,
        id: String,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        self.on_engine(&endpoint, |api| async move {
            api.start_container(&id, None).await
        })
        .await
    }

    async fn container_stop(
        &mut self,
        endpoint: String,
        id: String,
        timeout_secs: Option<u32>,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        let options = q::StopContainerOptions {
            t: timeout_secs.map(|t| t.min(i32::MAX as u32) as i32),
            signal: None,
        };
        self.on_engine(&endpoint, |api| async move {
            api.stop_container(&id, Some(options)).await
        })
        .await
    }

    async fn container_restart(
        &mut self,
        endpoint: String,
        id: String,
        timeout_secs: Option<u32>,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        let options = q::RestartContainerOptions {
            t: timeout_secs.map(|t| t.min(i32::MAX as u32) as i32),
            signal: None,
        };
        self.on_engine(&endpoint, |api| async move {
            api.restart_container(&id, Some(options)).await
        })
        .await
    }

    async fn container_kill(
        &mut self,
        endpoint: String,
        id: String,
        signal: Option<String>,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        let options = q::KillContainerOptions {
            signal: signal.unwrap_or_else(|| "SIGKILL".into()),
        };
        self.on_engine(&endpoint, |api| async move {
            api.kill_container(&id, Some(options)).await
        })
        .await
    }

    async fn container_remove(
        &mut self,
        endpoint: String,
        id: String,
        force: bool,
        volumes: bool,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        let options = q::RemoveContainerOptions {
            force,
            v: volumes,
            link: false,
        };
        self.on_engine(&endpoint, |api| async move {
            api.remove_container(&id, Some(options)).await
        })
        .await
    }

    async fn container_rename(
        &mut self,
        endpoint: String,
        id: String,
        name: String,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        self.on_engine(&endpoint, |api| async move {
            api.rename_container(&id, q::RenameContainerOptions { name })
                .await
        })
        .await
    }

    async fn container_logs(
        &mut self,
        endpoint: String,
        id: String,
        tail: u32,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        use futures_util::StreamExt;
        let options = q::LogsOptions {
            stdout: true,
            stderr: true,
            tail: if tail == 0 {
                "all".into()
            } else {
                tail.to_string()
            },
            ..Default::default()
        };
        self.on_engine(&endpoint, |api| async move {
            let mut stream = api.logs(&id, Some(options));
            let mut text = Vec::new();
            while let Some(chunk) = stream.next().await {
                text.extend_from_slice(&chunk?.into_bytes());
            }
            Ok(String::from_utf8_lossy(&text).into_owned())
        })
        .await
    }

    async fn image_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        let options = q::ListImagesOptions {
            filters: filter_map(filters),
            ..Default::default()
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.list_images(Some(options)).await?))
        })
        .await
    }

    async fn image_inspect(
        &mut self,
        endpoint: String,
        name: String,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.inspect_image(&name).await?))
        })
        .await
    }

    async fn image_pull(
        &mut self,
        endpoint: String,
        image: String,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        let (name, tag) = split_image(&image);
        let options = q::CreateImageOptions {
            from_image: Some(name.to_string()),
            tag: Some(tag.to_string()),
            ..Default::default()
        };
        self.on_engine(&endpoint, |api| async move {
            use futures_util::StreamExt;
            let mut progress = api.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step?;
            }
            Ok(())
        })
        .await
    }

    async fn network_create(
        &mut self,
        endpoint: String,
        body: String,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        self.acted("a Docker call that changes the engine");
        let body: bollard::models::NetworkCreateRequest = match parse("network body", &body) {
            Ok(body) => body,
            Err(e) => return Ok(Err(e)),
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(api.create_network(body).await?.id)
        })
        .await
    }

    async fn network_remove(
        &mut self,
        endpoint: String,
        id: String,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        self.on_engine(
            &endpoint,
            |api| async move { api.remove_network(&id).await },
        )
        .await
    }

    async fn network_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        let options = q::ListNetworksOptions {
            filters: filter_map(filters),
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.list_networks(Some(options)).await?))
        })
        .await
    }

    async fn service_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        let options = q::ListServicesOptions {
            filters: filter_map(filters),
            status: None,
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.list_services(Some(options)).await?))
        })
        .await
    }

    async fn service_inspect(
        &mut self,
        endpoint: String,
        id: String,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.inspect_service(&id, None).await?))
        })
        .await
    }

    async fn service_create(
        &mut self,
        endpoint: String,
        spec: String,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        self.acted("a Docker call that changes the engine");
        let spec: bollard::models::ServiceSpec = match parse("service spec", &spec) {
            Ok(spec) => spec,
            Err(e) => return Ok(Err(e)),
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(api.create_service(spec, None).await?.id.unwrap_or_default())
        })
        .await
    }

    async fn service_update(
        &mut self,
        endpoint: String,
        id: String,
        version: u64,
        spec: String,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        let spec: bollard::models::ServiceSpec = match parse("service spec", &spec) {
            Ok(spec) => spec,
            Err(e) => return Ok(Err(e)),
        };
        let Ok(version) = i32::try_from(version) else {
            return Ok(Err(DockerError::Invalid(format!(
                "service version {version} is out of range"
            ))));
        };
        let options = q::UpdateServiceOptions {
            version,
            ..Default::default()
        };
        self.on_engine(&endpoint, |api| async move {
            api.update_service(&id, spec, options, None)
                .await
                .map(|_| ())
        })
        .await
    }

    async fn service_remove(
        &mut self,
        endpoint: String,
        id: String,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        self.on_engine(
            &endpoint,
            |api| async move { api.delete_service(&id).await },
        )
        .await
    }

    async fn task_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        let options = q::ListTasksOptions {
            filters: filter_map(filters),
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.list_tasks(Some(options)).await?))
        })
        .await
    }

    async fn node_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        let options = q::ListNodesOptions {
            filters: filter_map(filters),
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.list_nodes(Some(options)).await?))
        })
        .await
    }

    async fn swarm_inspect(
        &mut self,
        endpoint: String,
    ) -> wasmtime::Result<Result<String, DockerError>> {
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.inspect_swarm().await?))
        })
        .await
    }

    async fn info(&mut self, endpoint: String) -> wasmtime::Result<Result<String, DockerError>> {
        self.on_engine(&endpoint, |api| async move { Ok(json(&api.info().await?)) })
            .await
    }

    async fn ping(&mut self, endpoint: String) -> wasmtime::Result<Result<String, DockerError>> {
        self.on_engine(&endpoint, |api| async move { api.ping().await })
            .await
    }

    async fn follow_events(
        &mut self,
        endpoint: String,
        topic: String,
        filters: Filters,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        for cap in [Capability::Docker, Capability::Events] {
            if let Err(e) = self.check(cap) {
                return Ok(Err(DockerError::Denied(crate::caps::denied_text(&e))));
            }
        }
        if topic.is_empty() || topic.len() > 256 {
            return Ok(Err(DockerError::Invalid(
                "a topic is 1 to 256 bytes".into(),
            )));
        }
        let plugin = self.call.plugin.clone();
        let sink = EventSink::Publish {
            events: plugin.events.clone(),
            topic,
        };
        Ok(plugin
            .docker
            .follow(&plugin.name, &endpoint, filters, sink)
            .await)
    }

    async fn follow_events_as_jobs(
        &mut self,
        endpoint: String,
        kind: String,
        filters: Filters,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        for cap in [Capability::Docker, Capability::Jobs] {
            if let Err(e) = self.check(cap) {
                return Ok(Err(DockerError::Denied(crate::caps::denied_text(&e))));
            }
        }
        if kind.is_empty() || kind.len() > 128 {
            return Ok(Err(DockerError::Invalid(
                "a job kind is 1 to 128 bytes".into(),
            )));
        }
        let plugin = self.call.plugin.clone();
        let sink = EventSink::Jobs {
            db: plugin.db.clone(),
            kind,
        };
        Ok(plugin
            .docker
            .follow(&plugin.name, &endpoint, filters, sink)
            .await)
    }

    async fn register_endpoint(
        &mut self,
        name: String,
        address: String,
        tls: Option<TlsFiles>,
    ) -> wasmtime::Result<Result<(), DockerError>> {
        self.acted("a Docker call that changes the engine");
        if let Err(e) = self.check(Capability::DockerEndpoints) {
            return Ok(Err(DockerError::Denied(crate::caps::denied_text(&e))));
        }
        let plugin = self.call.plugin.clone();
        Ok(plugin
            .docker
            .register(&plugin.name, &name, &address, tls)
            .await)
    }

    async fn remove_endpoint(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<bool, DockerError>> {
        self.acted("a Docker call that changes the engine");
        if let Err(e) = self.check(Capability::DockerEndpoints) {
            return Ok(Err(DockerError::Denied(crate::caps::denied_text(&e))));
        }
        let plugin = self.call.plugin.clone();
        Ok(plugin.docker.unregister(&plugin.name, &name).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_lists_decode_to_what_plugins_get() {
        let engine = r#"[{"Id":"4a0b","Names":["/pf0"],"Image":"busybox","ImageID":"sha256:e7",
            "Command":"sleep 1","Created":1763950000,"Ports":[{"PrivatePort":80,"Type":"tcp"},
            {"IP":"127.0.0.1","PrivatePort":80,"PublicPort":32768,"Type":"udp"}],
            "Labels":{"z":"1","berth.droplet":"pf0"},"State":"running","Status":"Up 2 minutes",
            "HostConfig":{"NetworkMode":"bridge"},"NetworkSettings":{"Networks":{}},"Mounts":[]},
            {"Id":"5c1d","Names":null,"Labels":null,"Ports":null,"State":"exited"}]"#;
        let list: Vec<Container> = serde_json::from_str::<Vec<Summary>>(engine)
            .unwrap()
            .into_iter()
            .map(container)
            .collect();
        let first = &list[0];
        assert_eq!(
            (first.id.as_str(), &first.names[..], first.image.as_str()),
            ("4a0b", &["/pf0".to_string()][..], "busybox")
        );
        assert_eq!(
            (first.created, first.state.as_str()),
            (1763950000, "running")
        );
        assert_eq!(
            (first.command.as_str(), first.status.as_str()),
            ("sleep 1", "Up 2 minutes")
        );
        let labels = [("berth.droplet", "pf0"), ("z", "1")].map(|(k, v)| (k.into(), v.into()));
        assert_eq!(first.labels, labels, "sorted by name");
        let ports: Vec<_> = first
            .ports
            .iter()
            .map(|p| {
                (
                    p.private_port,
                    p.public_port,
                    p.ip.as_deref(),
                    p.protocol.as_str(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            [
                (80, None, None, "tcp"),
                (80, Some(32768), Some("127.0.0.1"), "udp")
            ]
        );
        let second = &list[1];
        assert_eq!(
            (second.id.as_str(), second.state.as_str()),
            ("5c1d", "exited")
        );
        assert!(second.names.is_empty() && second.labels.is_empty() && second.ports.is_empty());
    }

    #[test]
    fn filters_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"{"label":["berth.droplet=a b"]}"#),
            "%7B%22label%22%3A%5B%22berth.droplet%3Da%20b%22%5D%7D"
        );
    }

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

    #[tokio::test]
    async fn followers_stop_with_their_plugin_or_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::Store::open(&dir.path().join("db.redb")).unwrap();
        let config = DockerConfig {
            local: format!("unix://{}", dir.path().join("none.sock").display()),
            timeout_ms: 1000,
            allow: Vec::new(),
            max_proxy_streams: 1,
            endpoints: BTreeMap::new(),
        };
        let docker = Docker::new(&config, db).unwrap();
        let sink = |topic: &str| EventSink::Publish {
            events: Arc::default(),
            topic: topic.into(),
        };
        // Followers keep retrying an engine that is not there.
        for (plugin, topic) in [("a", "x"), ("a", "y"), ("b", "x")] {
            docker
                .follow(plugin, "local", Vec::new(), sink(topic))
                .await
                .unwrap();
        }
        let handles: Vec<_> = docker.followers.lock().unwrap().values().cloned().collect();
        assert_eq!(handles.len(), 3);
        docker.stop_following("a", Some("elsewhere"));
        assert_eq!(docker.followers.lock().unwrap().len(), 3);
        docker.stop_following("a", None);
        let left: Vec<_> = docker.followers.lock().unwrap().keys().cloned().collect();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, "b");
        tokio::task::yield_now().await;
        let finished = handles.iter().filter(|h| h.is_finished()).count();
        assert_eq!(finished, 2, "the two followers of `a` were aborted");
        docker.stop_following("b", Some("local"));
        assert!(docker.followers.lock().unwrap().is_empty());
    }

    #[test]
    fn allow_list_globs() {
        assert!(glob("tcp://127.0.0.1:*", "tcp://127.0.0.1:2376"));
        assert!(!glob("tcp://127.0.0.1:*", "tcp://127.0.0.2:2376"));
        assert!(glob("tcp://10.*.*.*:2376", "tcp://10.1.2.3:2376"));
        assert!(!glob("tcp://10.*:2376", "tcp://10.1.2.3:2377"));
        assert!(glob(
            "unix:///var/run/docker.sock",
            "unix:///var/run/docker.sock"
        ));
        assert!(!glob(
            "unix:///var/run/docker.sock",
            "unix:///var/run/docker.sock2"
        ));
        assert!(glob("*", "tcp://anything:1"));
    }
}
