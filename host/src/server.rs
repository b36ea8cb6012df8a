//! The listener: plain TCP or TLS (rustls), HTTP/1.1 and HTTP/2 on both,
//! connection caps and deadlines, graceful shutdown that waits for
//! in-flight requests.
//!
//! Hostile connections cost little and starve nobody: a connection that
//! has no request in progress is closed when its deadline passes (the
//! header timeout before its first request, the idle timeout after each),
//! so a silent, idle or slowly-sending client cannot hold a slot; and every
//! client address has a cap of its own below the global one, so one
//! address cannot take every slot. A refused connection is closed at once
//! and logged (at most once a second per kind).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::app::App;
use crate::config::ServerConfig;
use crate::metrics::Metrics;
use crate::net::TrustedProxies;
use crate::web::{Body, BoxError, ConnSlot, ConnSocket};

/// Open connections, in all and per client address.
struct Connections {
    metrics: Arc<Metrics>,
    max: u32,
    max_per_client: u32,
    trusted: TrustedProxies,
    open: Mutex<(u32, HashMap<IpAddr, u32>)>,
    /// When a refusal was last logged, and how many since.
    refusals: Mutex<(Option<Instant>, u64)>,
}

/// One admitted connection; gives its slot back when dropped.
struct Admitted {
    connections: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    fn new(config: &ServerConfig, metrics: Arc<Metrics>) -> Connections {
        Connections {
            metrics,
            max: config.max_connections,
            max_per_client: config.max_connections_per_client,
            trusted: TrustedProxies::new(&config.trusted_proxies),
            open: Mutex::new((0, HashMap::new())),
            refusals: Mutex::new((None, 0)),
        }
    }

    /// Admit a connection from `peer`, or say which cap it meets. A trusted
    /// proxy carries many clients, so only the global cap applies to it.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Admitted, &'static str> {
        let ip = peer.ip().to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.max {
            return Err("max_connections");
        }
        let mine = open.1.entry(ip).or_insert(0);
        if *mine >= self.max_per_client && !self.trusted.trusts(ip) {
            return Err("max_connections_per_client");
        }
        *mine += 1;
        open.0 += 1;
        self.metrics
            .connections
            .store(open.0.into(), Ordering::Relaxed);
        Ok(Admitted {
            connections: self.clone(),
            ip,
        })
    }

    fn refused(&self, peer: SocketAddr, cap: &str) {
        let mut log = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        log.1 += 1;
        let due = log
            .0
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if due {
            tracing::warn!(
                client = %peer.ip(),
                refused = log.1,
                "refused connections at the [server] {cap} cap (count since the last such line)"
            );
            *log = (Some(Instant::now()), 0);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .connections
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        let count = open.0.into();
        self.connections
            .metrics
            .connections
            .store(count, Ordering::Relaxed);
        if let Some(mine) = open.1.get_mut(&self.ip) {
            *mine -= 1;
            if *mine == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// Whether a connection has a request in progress, and since when it has
/// had none: its watchdog closes it when idle past its deadline. A
/// request whose answer waits on the client (its next bytes not taken:
/// a client that does not read, or an HTTP/2 stream whose window it keeps
/// shut) counts as idle from when it began waiting, so a connection that
/// stalls its answers is closed on the same deadline as an idle one.
struct Activity {
    started: Instant,
    busy: AtomicU32,
    /// Milliseconds after `started` when the last request ended; `NEVER`
    /// before the first.
    last_done_ms: AtomicU64,
    /// The requests in progress that have an answer out, each with the
    /// time (ms after `started`) since it waits on the client, or `NEVER`.
    answers: Mutex<Vec<Arc<AtomicU64>>>,
}

const NEVER: u64 = u64::MAX;

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            busy: AtomicU32::new(0),
            last_done_ms: AtomicU64::new(NEVER),
            answers: Mutex::new(Vec::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn answers(&self) -> std::sync::MutexGuard<'_, Vec<Arc<AtomicU64>>> {
        self.answers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the connection is to be closed if nothing happens; None while
    /// a request is in progress and none of its answers waits on the client.
    fn deadline(&self, header: Duration, idle: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            let stalled = self
                .answers()
                .iter()
                .map(|since| since.load(Ordering::Acquire))
                .min()
                .filter(|since| *since != NEVER)?;
            return Some(self.started + Duration::from_millis(stalled) + idle);
        }
        Some(match self.last_done_ms.load(Ordering::Acquire) {
            NEVER => self.started + header,
            done => self.started + Duration::from_millis(done) + idle,
        })
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy {
            activity: self.clone(),
            waiting: None,
        }
    }
}

/// A request in progress, until its response body is done or dropped.
struct Busy {
    activity: Arc<Activity>,
    /// Since when its answer waits on the client (see [`Activity`]).
    waiting: Option<Arc<AtomicU64>>,
}

impl Busy {
    /// The answer is out: from now on it waits on the client whenever
    /// its body has handed over bytes and is not asked for more.
    fn answered(&mut self) {
        let since = Arc::new(AtomicU64::new(self.activity.now_ms()));
        self.activity.answers().push(since.clone());
        self.waiting = Some(since);
    }

    fn waits_on_client(&self, yes: bool) {
        if let Some(since) = &self.waiting {
            let at = if yes { self.activity.now_ms() } else { NEVER };
            since.store(at, Ordering::Release);
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(since) = self.waiting.take() {
            self.activity.answers().retain(|a| !Arc::ptr_eq(a, &since));
        }
        let done = self.activity.now_ms();
        self.activity.last_done_ms.store(done, Ordering::Release);
        self.activity.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in progress, and
/// tells its connection's watchdog when it waits on the client: after it
/// handed over a frame and until it is polled again (hyper polls for the
/// next frame only once the client has taken room for it; HTTP/2 does not
/// poll at all while the client's window is shut).
struct Tracked {
    body: Body,
    busy: Busy,
}

impl Tracked {
    fn new(body: Body, mut busy: Busy) -> Tracked {
        busy.answered();
        Tracked { body, busy }
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        self.busy
            .waits_on_client(matches!(polled, Poll::Ready(Some(Ok(_)))));
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Run a connection until it ends or idles past its deadline.
async fn watch<F: Future>(conn: F, activity: Arc<Activity>, config: Arc<ServerConfig>) {
    let (header, idle) = (config.header_timeout(), config.idle_timeout());
    tokio::pin!(conn);
    loop {
        let wake = activity
            .deadline(header, idle)
            .unwrap_or_else(|| Instant::now() + idle);
        tokio::select! {
            _ = &mut conn => return,
            _ = tokio::time::sleep_until(wake.into()) => {
                if activity.deadline(header, idle).is_some_and(|d| d <= Instant::now()) {
                    // Dropping the connection closes its socket.
                    return;
                }
            }
        }
    }
}

/// A TLS acceptor for the PEM certificate chain and key, offering h2 and
/// http/1.1 by ALPN.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .with_context(|| format!("cannot open TLS certificate {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("cannot parse TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{} holds no PEM certificate", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key)
            .with_context(|| format!("cannot open TLS key {}", key.display()))?,
    ))
    .with_context(|| format!("cannot parse TLS key {}", key.display()))?
    .ok_or_else(|| anyhow::anyhow!("{} holds no PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not go together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serve `listener` until `shutdown` resolves, then stop accepting and wait
/// up to `grace` for in-flight requests.
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let config = Arc::new(app.config.server.clone());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper refuses a larger head with 431; it needs at least 8 KiB.
    let max_head = (config.max_header_kib as usize * 1024).max(8192);
    builder.http1().max_buf_size(max_head);
    builder
        .http2()
        .max_header_list_size(max_head as u32)
        // Each stream may be reading a body: fewer streams, less memory
        // one connection can ask for (hyper's default is 200).
        .max_concurrent_streams(config.max_http2_streams);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Connections::new(&config, app.metrics.clone()));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let admitted = match connections.admit(peer) {
            Ok(admitted) => ConnSlot::new(admitted),
            Err(cap) => {
                connections.refused(peer, cap);
                // Closed at once: the client sees the end, not a hang.
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let socket = ConnSocket(stream.as_raw_fd());
        let activity = Activity::new();
        let service = service_fn({
            let app = app.clone();
            let activity = activity.clone();
            let slot = admitted.clone();
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                let app = app.clone();
                let busy = activity.begin();
                req.extensions_mut().insert(socket);
                req.extensions_mut().insert(slot.clone());
                async move {
                    let response = crate::dispatch::handle(app, req, peer).await;
                    Ok::<_, std::convert::Infallible>(response.map(|body| Tracked::new(body, busy)))
                }
            }
        });
        let config = config.clone();
        match &tls {
            None => {
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    watch(conn, activity, config).await;
                    drop(admitted);
                });
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(config.header_timeout(), acceptor.accept(stream))
                            .await;
                    let Ok(Ok(stream)) = handshake else {
                        tracing::debug!(client = %peer, "TLS handshake failed or timed out");
                        return;
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    watch(watcher.watch(conn), activity, config).await;
                    drop(admitted);
                });
            }
        }
    }
    drop(listener);
    app.closing.send_replace(true);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within {grace:?}; closing anyway");
    }
}

/// Resolves on SIGTERM or SIGINT (ctrl-c). The handlers are installed
/// when this is called, not when the future is first polled: call it
/// before saying the server listens, so a SIGTERM that follows at once
/// stops Berth gracefully rather than by the signal's default action.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let wait = async |handler: std::io::Result<Signal>| match handler {
            Ok(mut handler) => {
                handler.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        };
        tokio::select! {
            _ = wait(term) => {}
            _ = wait(int) => {}
        }
    }
}

/// Bind the listen address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}
