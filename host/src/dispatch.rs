//! From an HTTP request to a plugin call and back: routing, body limits,
//! concurrency limits, the call, committing its writes, the response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::app::App;
use crate::bindings::{Outcome, Request};
use crate::budget::Reserved;
use crate::capability::Capability;
use crate::caps::OpenStream;
use crate::caps::docker::Streamed;
use crate::invoke::{Finished, Handle, Invocation, Kept, Writes, invoke};
use crate::plugins::Mounted;
use crate::router::{Found, percent_decode};
use crate::runtime::CallError;
use crate::store::StoreError;
use crate::web::{Body, BoxError, Response, error, full, reserved};

/// Handle one request end to end. `peer` is the connection's address; the
/// client is behind it when it is a trusted proxy. Any body type will do:
/// the server passes hyper's, tests pass their own.
pub async fn handle<B>(app: Arc<App>, req: http::Request<B>, peer: SocketAddr) -> Response
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let req = req.map(|body| body.map_err(Into::into).boxed());
    let request_id = app.next_request_id();
    let forwarded = req.headers().get_all("x-forwarded-for");
    let client = app
        .trusted
        .client(peer, forwarded.iter().filter_map(|v| v.to_str().ok()));
    let mut response = if let Some(refused) = refuse(&req, &request_id) {
        refused
    } else if req.uri().path().starts_with("/_berth/") || req.uri().path() == "/_berth" {
        crate::admin::handle(&app, &req, &request_id).await
    } else {
        route(&app, req, client, &request_id).await
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Requests no route may take: HTTP/1.1 without `Host` (RFC 9112 says
/// 400), and `TRACE` and `CONNECT`, which would echo or tunnel through a
/// plugin.
fn refuse(req: &http::Request<Body>, request_id: &str) -> Option<Response> {
    if req.version() == http::Version::HTTP_11 && !req.headers().contains_key(header::HOST) {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request must have a Host header",
            request_id,
        ));
    }
    if req.method() == http::Method::TRACE || req.method() == http::Method::CONNECT {
        return Some(error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{} is not served", req.method()),
            request_id,
        ));
    }
    None
}

/// Where a routed request goes.
struct Routed {
    plugin: Arc<Mounted>,
    route: String,
    params: Vec<(String, String)>,
}

async fn route(
    app: &App,
    req: http::Request<Body>,
    client: SocketAddr,
    request_id: &str,
) -> Response {
    let started = Instant::now();
    let routed = match find(app, &req, request_id) {
        Ok(routed) => routed,
        Err(response) => {
            app.metrics.unrouted.fetch_add(1, Relaxed);
            return *response;
        }
    };
    let plugin = routed.plugin.clone();
    // Every line logged for this request, the plugin's own included,
    // carries these.
    let span = tracing::info_span!(
        "request",
        request_id,
        plugin = %plugin.manifest.name,
        route = %routed.route,
    );
    let response = call(app, routed, req, client, request_id)
        .instrument(span)
        .await;
    plugin
        .metrics
        .request(response.status().as_u16(), started.elapsed());
    response
}

/// The plugin route that takes `req`, or the host's 405, 400 or 404.
fn find(app: &App, req: &http::Request<Body>, request_id: &str) -> Result<Routed, Box<Response>> {
    let routing = app.plugins.routing();
    let method = req.method().as_str();
    let path = req.uri().path();
    match routing.table.find(method, path) {
        Found::Route { route, params } => Ok(Routed {
            plugin: route.target.clone(),
            route: route.id.clone(),
            params,
        }),
        Found::MethodNotAllowed { allow } => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not allowed on {path}"),
                request_id,
            );
            if let Ok(allow) = HeaderValue::from_str(&allow.join(", ")) {
                r.headers_mut().insert(header::ALLOW, allow);
            }
            Err(Box::new(r))
        }
        Found::BadParam(name) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            &format!("path parameter `{name}` is not valid UTF-8 once percent-decoded"),
            request_id,
        ))),
        Found::NotFound => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            &format!("no route for {method} {path}"),
            request_id,
        ))),
    }
}

/// A routed request: admitted, called, and its outcome answered.
async fn call(
    app: &App,
    routed: Routed,
    req: http::Request<Body>,
    client: SocketAddr,
    request_id: &str,
) -> Response {
    let Routed {
        plugin,
        route,
        params,
    } = routed;
    let deadline = tokio::time::Instant::now() + plugin.limits.deadline;
    let (mut parts, mut body) = req.into_parts();
    // Held until the answer is built, streams and proxying included.
    let admitted = match admit(
        app, &plugin, &parts, &mut body, client, deadline, request_id,
    )
    .await
    {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let request = Request {
        id: request_id.to_string(),
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        route,
        params,
        query: parts.uri.query().map(parse_query).unwrap_or_default(),
        headers: plugin_headers(&parts.headers, admitted.withheld.is_some()),
        body: admitted.body.to_vec(),
        client: client.to_string(),
    };
    let runtime = app.plugins.runtime();
    let _running = plugin.metrics.running();
    let Admitted {
        body, mut withheld, ..
    } = admitted;
    // A call whose writes met a concurrent call's only at commit (the
    // PostgreSQL store finds some conflicts only then) runs again, if it
    // did nothing outside KV, as the SDK runs a handler again on a conflict
    // met during the call.
    let mut reruns = 0;
    let (value, opened, writes) = loop {
        let invocation = Invocation {
            call: Handle(request.clone()),
            request_id: request_id.to_string(),
            deadline: deadline.into_std(),
            rerun: reruns > 0,
        };
        let Finished {
            value,
            opened,
            writes,
        } = match invoke(runtime, &plugin, invocation).await {
            Ok(finished) => finished,
            Err(e) => return failed(&plugin, e, request_id),
        };
        let Outcome::Respond(response) = value else {
            break (value, opened, writes);
        };
        if withheld.is_some() {
            break (Outcome::Respond(response), opened, writes);
        }
        let rerun =
            reruns < MAX_RERUNS && tokio::time::Instant::now() < deadline && writes.may_rerun();
        match respond(&plugin, response, writes, request_id, rerun).await {
            Responded::Sent(response) => return response,
            Responded::Conflict => {
                reruns += 1;
                tracing::debug!(
                    reruns,
                    "the call's writes conflicted at commit; running it again"
                );
            }
        }
    };
    let proxying = matches!(value, Outcome::ProxyDocker(_));
    if !proxying && let Some(withheld) = withheld.take() {
        // Only the engine takes a body the plugin did not read: the call's
        // writes are dropped and the client gets the 413 it would have.
        let mut rest = withheld.rest;
        drain(&mut rest).await;
        return too_large(&plugin, plugin.limits.max_body_bytes, request_id);
    }
    match value {
        Outcome::Respond(response) => {
            match respond(&plugin, response, writes, request_id, false).await {
                Responded::Sent(response) => response,
                Responded::Conflict => unreachable!("only a call that may run again is run again"),
            }
        }
        Outcome::ProxyDocker(target) => {
            let name = &plugin.manifest.name;
            if let Some(r) = refused(&plugin, Capability::Docker, "proxy to Docker", request_id) {
                return r;
            }
            if let Err(r) = commit(name, writes, request_id).await {
                return r;
            }
            let (first, rest, length) = match withheld {
                Some(w) => (w.first, Some(w.rest), w.length),
                None => (body, None, None),
            };
            let body = Streamed {
                first,
                rest,
                length,
                limit: plugin.limits.max_proxy_body_bytes,
                idle: app.config.server.body_timeout(),
            };
            let mut opened = opened;
            opened.apply_proxy_headers(&mut parts.headers);
            let docker = &plugin.env.docker;
            let metrics = &plugin.metrics;
            docker
                .forward(name, target, &mut parts, body, metrics, request_id)
                .await
        }
        Outcome::Subscribe(sub) => {
            let name = &plugin.manifest.name;
            let mut opened = opened;
            let opened = opened.take(&sub.topic);
            let (needs, what) = match opened {
                Some(OpenStream::Logs(_)) => (Capability::Docker, "stream logs"),
                _ => (Capability::Events, "stream events"),
            };
            if let Some(r) = refused(&plugin, needs, what, request_id) {
                return r;
            }
            if let Err(r) = commit(name, writes, request_id).await {
                return r;
            }
            let source = match opened {
                Some(OpenStream::Logs(spec)) => {
                    match plugin
                        .env
                        .docker
                        .log_lines(name, spec, &plugin.metrics)
                        .await
                    {
                        Ok(lines) => crate::streams::Source::Logs(lines),
                        Err(message) => {
                            return error(StatusCode::SERVICE_UNAVAILABLE, &message, request_id);
                        }
                    }
                }
                Some(OpenStream::Messages(messages)) => {
                    crate::streams::Source::Messages(messages.into())
                }
                None => crate::streams::Source::Topic {
                    sub: plugin
                        .env
                        .events
                        .subscribe(name, &sub.topic, sub.replay, sub.after.unwrap_or(0))
                        .await,
                    topic: sub.topic,
                },
            };
            crate::streams::respond(
                sub.framing,
                source,
                sub.headers,
                &mut parts,
                app.closing.subscribe(),
                request_id,
            )
        }
    }
}

/// What admission gives a request: the body the plugin reads (all of it,
/// or nothing when withheld), and one of the plugin's call slots for as
/// long as it is kept.
struct Admitted {
    body: Bytes,
    withheld: Option<Withheld>,
    _permit: OwnedSemaphorePermit,
    /// The body's bytes, held against the server's body budget.
    _memory: Reserved,
}

/// A body larger than the plugin reads, kept for the Docker engine: what
/// was read of it, the rest, and its declared length.
struct Withheld {
    first: Bytes,
    rest: Body,
    length: Option<u64>,
}

/// The header that tells a plugin its request's body was withheld.
const WITHHELD: &str = "x-berth-body";

/// The request's headers as the plugin sees them: the client's (less any
/// `x-berth-body` it sent), and `x-berth-body: withheld` if so.
fn plugin_headers(headers: &http::HeaderMap, withheld: bool) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.as_str() != WITHHELD)
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if withheld {
        pairs.push((WITHHELD.to_string(), "withheld".to_string()));
    }
    pairs
}

/// The host's 413 for a body over `limit`.
fn too_large(plugin: &Mounted, limit: u64, request_id: &str) -> Response {
    plugin.metrics.refused.fetch_add(1, Relaxed);
    let mut r = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body is larger than this route's limit of {limit} bytes"),
        request_id,
    );
    // The rest of the body was not read: do not reuse the connection.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Read the body within the plugin's limit, the server's body budget and
/// its body timeout, then take a call slot, waiting for one until the
/// call's deadline: or the host's 413, 408, 400 or 503. A larger body to a
/// plugin granted `docker` is withheld (see [`Withheld`]) rather than
/// refused: the plugin may send it on to an engine.
async fn admit(
    app: &App,
    plugin: &Mounted,
    parts: &http::request::Parts,
    body: &mut Body,
    client: SocketAddr,
    deadline: tokio::time::Instant,
    request_id: &str,
) -> Result<Admitted, Response> {
    let limits = plugin.limits;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = limits.max_body_bytes as usize;
    let may_withhold = plugin.env.granted.contains(Capability::Docker)
        && declared.is_none_or(|n| n <= limits.max_proxy_body_bytes);
    let mut memory = app.bodies.start(client.ip());
    let read = if declared.is_some_and(|n| n > limits.max_body_bytes) {
        Err(BodyError::TooLarge(Bytes::new()))
    } else if body.is_end_stream() {
        Ok(Bytes::new())
    } else {
        // A client that sends its body slower than this holds a plugin
        // slot's worth of memory for nothing.
        let within = app.config.server.body_timeout();
        tokio::time::timeout(within, read_body(body, max, declared, &mut memory))
            .await
            .unwrap_or(Err(BodyError::TimedOut(within)))
    };
    let mut withheld = None;
    let body = match read {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge(first)) if may_withhold => {
            let rest = std::mem::replace(body, full(Bytes::new()));
            withheld = Some(Withheld {
                first,
                rest,
                length: declared,
            });
            Bytes::new()
        }
        Err(BodyError::TooLarge(_)) => {
            drain(body).await;
            let limit = match plugin.env.granted.contains(Capability::Docker) {
                true => limits.max_proxy_body_bytes,
                false => limits.max_body_bytes,
            };
            return Err(too_large(plugin, limit, request_id));
        }
        Err(BodyError::TimedOut(within)) => {
            let mut r = error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} ms",
                    within.as_millis()
                ),
                request_id,
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(r);
        }
        Err(BodyError::NoMemory) => {
            plugin.metrics.refused.fetch_add(1, Relaxed);
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server holds as many request bodies as it may keep in memory ([server] max_body_memory_mib); retry later",
                request_id,
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(r);
        }
        Err(BodyError::Read(e)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
                request_id,
            ));
        }
    };

    // A free slot is the common case: take it without arming a timer.
    let permit = match plugin.permits.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) => tokio::time::timeout_at(deadline, plugin.permits.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok),
    };
    let Some(permit) = permit else {
        plugin.metrics.refused.fetch_add(1, Relaxed);
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "plugin `{}` is at its limit of {} concurrent calls",
                plugin.manifest.name, limits.max_concurrent
            ),
            request_id,
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return Err(r);
    };
    Ok(Admitted {
        body,
        withheld,
        _permit: permit,
        _memory: memory,
    })
}

/// The host's 403 for an outcome needing `cap` from a plugin without it.
fn refused(plugin: &Mounted, cap: Capability, doing: &str, request_id: &str) -> Option<Response> {
    if plugin.env.granted.contains(cap) {
        return None;
    }
    Some(error(
        StatusCode::FORBIDDEN,
        &format!(
            "plugin `{}` asked to {doing} without the `{cap}` capability",
            plugin.manifest.name
        ),
        request_id,
    ))
}

/// Most times a call runs again after its writes conflicted at commit.
const MAX_RERUNS: u32 = 8;

/// What became of a plugin's own response.
enum Responded {
    Sent(Response),
    /// Its writes conflicted with a concurrent call's at commit and were
    /// not kept; the call may run again.
    Conflict,
}

/// The plugin's own response: checked against its size limit, its writes
/// made durable before it leaves. With `rerun`, a conflict at commit is
/// [`Responded::Conflict`] rather than a 503.
async fn respond(
    plugin: &Mounted,
    response: crate::bindings::Response,
    writes: Writes,
    request_id: &str,
    rerun: bool,
) -> Responded {
    let name = &plugin.manifest.name;
    let limits = plugin.limits;
    if response.body.len() as u64 > limits.max_response_bytes {
        return Responded::Sent(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "plugin `{name}` returned a {} byte body, over its limit of {} bytes",
                response.body.len(),
                limits.max_response_bytes
            ),
            request_id,
        ));
    }
    // Durable before the response leaves. A plugin that answered a
    // rolled-back call with its own failure (503 in its format) is
    // believed; a success is not (see `Writes::commit`).
    match writes.commit().await {
        Kept::Committed | Kept::Dropped => {}
        Kept::Failed(StoreError::Conflict(_)) if rerun => return Responded::Conflict,
        Kept::Failed(e) => return Responded::Sent(commit_failed(name, e, request_id)),
    }
    Responded::Sent(to_http(name, response, request_id))
}

/// A call that trapped or ran out of time: the host's 504 or 500, the
/// details in the log.
fn failed(plugin: &Mounted, e: CallError, request_id: &str) -> Response {
    let name = &plugin.manifest.name;
    match e {
        CallError::Timeout(d) => {
            plugin.metrics.timeouts.fetch_add(1, Relaxed);
            tracing::warn!(plugin = %name, request_id, "plugin ran past its deadline of {d:?}");
            error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("plugin `{name}` did not answer within {} ms", d.as_millis()),
                request_id,
            )
        }
        e => {
            plugin.metrics.traps.fetch_add(1, Relaxed);
            // The trap's backtrace is for the log, not for the client.
            tracing::warn!(plugin = %name, request_id, error = ?e, "plugin call failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("plugin `{name}` failed on this request ({})", e.kind()),
                request_id,
            )
        }
    }
}

/// Make a call's writes durable; the error response if that fails.
async fn commit(plugin: &str, writes: Writes, request_id: &str) -> Result<(), Response> {
    match writes.commit().await {
        Kept::Committed | Kept::Dropped => Ok(()),
        Kept::Failed(e) => Err(commit_failed(plugin, e, request_id)),
    }
}

/// 503 with `Retry-After: 1`.
fn retry_later(message: &str, request_id: &str) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message, request_id);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The answer to a call whose writes could not be committed.
fn commit_failed(plugin: &str, e: StoreError, request_id: &str) -> Response {
    match e {
        // The plugin claimed success for a call whose transaction was
        // rolled back: its writes are gone, so it must not look done.
        StoreError::Aborted(why) => {
            tracing::warn!(
                plugin,
                request_id,
                "answered a rolled-back call as a success: {why}"
            );
            retry_later(
                "the request met a concurrent one and was not done; retry it",
                request_id,
            )
        }
        StoreError::Conflict(why) => {
            tracing::info!(plugin, request_id, "writes conflicted at commit: {why}");
            retry_later(
                "the request met a concurrent one and was not done; retry it",
                request_id,
            )
        }
        StoreError::Unavailable(why) => {
            tracing::warn!(plugin, request_id, "commit failed: {why}");
            retry_later(
                "storage is unavailable; this request may not have been kept, retry it",
                request_id,
            )
        }
        e => {
            tracing::error!(plugin, request_id, error = %e, "commit failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage failed; nothing of this request was kept",
                request_id,
            )
        }
    }
}

enum BodyError {
    /// Over the limit: what was read of it.
    TooLarge(Bytes),
    TimedOut(std::time::Duration),
    /// The body budget has no room for it.
    NoMemory,
    Read(String),
}

/// Read the whole body if it is at most `max` bytes, holding what the
/// buffer takes against the body budget (`memory`) before it takes it.
/// A declared length sizes the buffer once; otherwise it doubles as it
/// fills, and the budget is charged for its capacity, not just its length.
async fn read_body(
    body: &mut Body,
    max: usize,
    declared: Option<u64>,
    memory: &mut Reserved,
) -> Result<Bytes, BodyError> {
    let mut buf = bytes::BytesMut::new();
    if let Some(n) = declared {
        let n = (n as usize).min(max);
        if !memory.grow(n as u64) {
            return Err(BodyError::NoMemory);
        }
        buf.reserve(n);
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            let want = buf.len() + data.len();
            if want <= max && want > buf.capacity() {
                let capacity = want.max(2 * buf.capacity()).min(max);
                if !memory.grow((capacity as u64).saturating_sub(memory.bytes())) {
                    return Err(BodyError::NoMemory);
                }
                buf.reserve(capacity - buf.len());
            }
            // Past `max` by at most this frame: what was read goes on to
            // an engine when the body is withheld.
            buf.extend_from_slice(data);
            if buf.len() > max {
                return Err(BodyError::TooLarge(buf.freeze()));
            }
        }
    }
    Ok(buf.freeze())
}

/// Most bytes, and longest time, spent reading a refused body so the client
/// can finish sending and read the 413 instead of a reset connection.
const DRAIN_BYTES: usize = 8 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

async fn drain(body: &mut Body) {
    let read = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

fn to_http(plugin: &str, r: crate::bindings::Response, request_id: &str) -> Response {
    let Ok(status) = StatusCode::from_u16(r.status) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("plugin `{plugin}` returned an invalid status {}", r.status),
            request_id,
        );
    };
    let mut response = http::Response::new(full(r.body));
    *response.status_mut() = status;
    for (name, value) in r.headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(value)) if !reserved(&name) => {
                response.headers_mut().append(name, value);
            }
            (Ok(name), Ok(_)) => {
                tracing::debug!(plugin, header = %name, "dropped a header the host controls")
            }
            _ => tracing::warn!(plugin, header = %name, "dropped an invalid response header"),
        }
    }
    response
}

/// Parse a query string into decoded pairs (`+` is a space).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}
