//! From an HTTP request to a plugin call and back: routing, body limits,
//! concurrency limits, the call, committing its writes, the response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body::Body as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::App;
use crate::caps::Capability;
use crate::caps::docker::ProxyError;
use crate::plugins::Mounted;
use crate::router::{Found, percent_decode};
use crate::runtime::bindings::berth::plugin::types::DockerTarget;
use crate::runtime::{CallCx, CallError, Outcome, Request};
use crate::store::{StoreError, Txn};

/// Error type of response bodies (streams may fail mid-way).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response.
pub type Body = BoxBody<Bytes, BoxError>;
pub type Response = http::Response<Body>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = http::Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The host's own JSON error: `{"error": ..., "request_id": ...}`.
pub fn error(status: StatusCode, message: &str, request_id: &str) -> Response {
    json(
        status,
        &serde_json::json!({ "error": message, "request_id": request_id }),
    )
}

/// Handle one request end to end. `peer` is the connection's address; the
/// client is behind it when it is a trusted proxy.
pub async fn handle(app: Arc<App>, req: http::Request<Incoming>, peer: SocketAddr) -> Response {
    let request_id = app.next_request_id();
    let forwarded = req.headers().get_all("x-forwarded-for");
    let client = app
        .trusted
        .client(peer, forwarded.iter().filter_map(|v| v.to_str().ok()));
    let mut response = if let Some(refused) = refuse(&req, &request_id) {
        refused
    } else if req.uri().path().starts_with("/_berth/") || req.uri().path() == "/_berth" {
        crate::admin::handle(&app, &req, &request_id)
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
fn refuse(req: &http::Request<Incoming>, request_id: &str) -> Option<Response> {
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

async fn route(
    app: &App,
    req: http::Request<Incoming>,
    client: SocketAddr,
    request_id: &str,
) -> Response {
    let started = Instant::now();
    let routing = app.plugins.routing();
    let method = req.method().as_str().to_string();
    let (target, route_id, params) = match routing.table.find(&method, req.uri().path()) {
        Found::Route { route, params } => (route.target.clone(), route.id.clone(), params),
        Found::MethodNotAllowed { allow } => {
            app.metrics.unrouted.fetch_add(1, Relaxed);
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not allowed on {}", req.uri().path()),
                request_id,
            );
            if let Ok(allow) = HeaderValue::from_str(&allow.join(", ")) {
                r.headers_mut().insert(header::ALLOW, allow);
            }
            return r;
        }
        Found::BadParam(name) => {
            app.metrics.unrouted.fetch_add(1, Relaxed);
            return error(
                StatusCode::BAD_REQUEST,
                &format!("path parameter `{name}` is not valid UTF-8 once percent-decoded"),
                request_id,
            );
        }
        Found::NotFound => {
            app.metrics.unrouted.fetch_add(1, Relaxed);
            return error(
                StatusCode::NOT_FOUND,
                &format!("no route for {method} {}", req.uri().path()),
                request_id,
            );
        }
    };
    drop(routing);
    let response = call(app, &target, req, client, request_id, route_id, params).await;
    target
        .metrics
        .request(response.status().as_u16(), started.elapsed());
    response
}

async fn call(
    app: &App,
    plugin: &Arc<Mounted>,
    req: http::Request<Incoming>,
    client: SocketAddr,
    request_id: &str,
    route: String,
    params: Vec<(String, String)>,
) -> Response {
    let limits = plugin.limits;
    let deadline = tokio::time::Instant::now() + limits.deadline;
    let (mut parts, mut body) = req.into_parts();

    let too_large = || {
        plugin.metrics.refused.fetch_add(1, Relaxed);
        let mut r = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body is larger than this route's limit of {} bytes",
                limits.max_body_bytes
            ),
            request_id,
        );
        // The rest of the body was not read: do not reuse the connection.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        r
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = limits.max_body_bytes as usize;
    let read = if declared.is_some_and(|n| n > limits.max_body_bytes) {
        Err(BodyError::TooLarge)
    } else if body.is_end_stream() {
        Ok(Bytes::new())
    } else {
        // A client that sends its body slower than this holds a plugin
        // slot's worth of memory for nothing.
        let within = app.config.server.body_timeout();
        tokio::time::timeout(within, read_body(&mut body, max))
            .await
            .unwrap_or(Err(BodyError::TimedOut(within)))
    };
    let body = match read {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            drain(&mut body).await;
            return too_large();
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
            return r;
        }
        Err(BodyError::Read(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the request body: {e}"),
                request_id,
            );
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
    let Some(_permit) = permit else {
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
        return r;
    };

    let request = Request {
        id: request_id.to_string(),
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        route,
        params,
        query: parts.uri.query().map(parse_query).unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        client: client.to_string(),
    };
    let cx = CallCx::new(
        plugin.env.clone(),
        request_id.to_string(),
        Some(plugin.env.db.begin(&plugin.env.name)),
        deadline.into_std(),
    );
    let name = &plugin.manifest.name;
    let runtime = app.plugins.runtime();
    let _running = plugin.metrics.running();
    match runtime.handle(&plugin.pre, cx, &limits, request).await {
        Ok(called) => {
            called.spent.retire();
            plugin.metrics.instantiated(called.instantiate);
            let response = match called.value {
                Outcome::Respond(response) => response,
                Outcome::ProxyDocker(target) => {
                    if !plugin.env.granted.contains(Capability::Docker) {
                        return error(
                            StatusCode::FORBIDDEN,
                            &format!(
                                "plugin `{name}` asked to proxy to Docker without the `docker` capability"
                            ),
                            request_id,
                        );
                    }
                    if let Err(r) = commit(name, called.txn, request_id).await {
                        return r;
                    }
                    return proxy_docker(plugin, target, &parts, body, request_id).await;
                }
                Outcome::Subscribe(sub) => {
                    if !plugin.env.granted.contains(Capability::Events) {
                        return error(
                            StatusCode::FORBIDDEN,
                            &format!(
                                "plugin `{name}` asked to stream events without the `events` capability"
                            ),
                            request_id,
                        );
                    }
                    if let Err(r) = commit(name, called.txn, request_id).await {
                        return r;
                    }
                    let feed = plugin.env.events.subscribe(
                        name,
                        &sub.topic,
                        sub.replay,
                        sub.after.unwrap_or(0),
                    );
                    return crate::streams::respond(
                        sub.framing,
                        sub.topic,
                        feed,
                        sub.headers,
                        &mut parts,
                        app.closing.subscribe(),
                        request_id,
                    );
                }
            };
            if response.body.len() as u64 > limits.max_response_bytes {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!(
                        "plugin `{name}` returned a {} byte body, over its limit of {} bytes",
                        response.body.len(),
                        limits.max_response_bytes
                    ),
                    request_id,
                );
            }
            // A plugin that answered a rolled-back call with its own
            // failure (503 in its format) is believed; a success is not.
            if response.status >= 500 && called.txn.as_ref().is_some_and(|t| t.aborted().is_some())
            {
                return to_http(name, response, request_id);
            }
            // Durable before the response leaves.
            if let Err(r) = commit(name, called.txn, request_id).await {
                return r;
            }
            to_http(name, response, request_id)
        }
        Err(CallError::Timeout(d)) => {
            plugin.metrics.timeouts.fetch_add(1, Relaxed);
            tracing::warn!(plugin = %name, request_id, "plugin ran past its deadline of {d:?}");
            error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("plugin `{name}` did not answer within {} ms", d.as_millis()),
                request_id,
            )
        }
        Err(e) => {
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
async fn commit(plugin: &str, txn: Option<Txn>, request_id: &str) -> Result<(), Response> {
    let Some(txn) = txn else { return Ok(()) };
    txn.commit().await.map_err(|e| match e {
        // The plugin claimed success for a call whose transaction was
        // rolled back: its writes are gone, so it must not look done.
        StoreError::Aborted(why) => {
            tracing::warn!(
                plugin,
                request_id,
                "answered a rolled-back call as a success: {why}"
            );
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request met a concurrent one and was not done; retry it",
                request_id,
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        e => {
            tracing::error!(plugin, request_id, error = %e, "commit failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage failed; nothing of this request was kept",
                request_id,
            )
        }
    })
}

/// An error on the Docker proxy path, in the Engine API's own shape
/// (`{"message": ...}`) since the client speaks that API.
fn engine_shaped(status: StatusCode, message: &str, request_id: &str) -> Response {
    json(
        status,
        &serde_json::json!({ "message": message, "request_id": request_id }),
    )
}

/// Forward the client's request to a Docker engine and stream the answer.
async fn proxy_docker(
    plugin: &Mounted,
    target: DockerTarget,
    parts: &http::request::Parts,
    body: Bytes,
    request_id: &str,
) -> Response {
    let name = &plugin.manifest.name;
    let DockerTarget {
        endpoint,
        path,
        query,
    } = target;
    let bad_path = path.is_empty()
        || !path.starts_with('/')
        || path.split('/').any(|s| s == "..")
        || path.contains(['?', '#', ' ']);
    let query = query
        .or_else(|| parts.uri.query().map(str::to_string))
        .filter(|q| !q.is_empty());
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    if bad_path || target.parse::<http::uri::PathAndQuery>().is_err() {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("plugin `{name}` gave an invalid Docker path `{target}`"),
            request_id,
        );
    }
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.headers_mut() = parts.headers.clone();
    match plugin
        .env
        .docker
        .proxy(name, &endpoint, &target, request)
        .await
    {
        Ok((answer, permit)) => {
            let (parts, mut body) = answer.into_parts();
            let body = match body.whole() {
                // The whole answer is here: send it in one write, with its
                // length, and free the stream's permit now.
                Ok(Some(bytes)) => full(bytes),
                // The permit counts this stream until hyper drops the body:
                // when the engine ends it or the client leaves.
                Ok(None) => body
                    .map_err(|e| Box::new(e) as BoxError)
                    .map_frame(move |frame| {
                        let _open = &permit;
                        frame
                    })
                    .boxed(),
                Err(e) => {
                    return engine_shaped(
                        StatusCode::BAD_GATEWAY,
                        &format!("the engine's answer broke off: {e}"),
                        request_id,
                    );
                }
            };
            http::Response::from_parts(parts, body)
        }
        Err(ProxyError::Refused(m)) => engine_shaped(StatusCode::FORBIDDEN, &m, request_id),
        Err(ProxyError::Unknown(m)) => engine_shaped(StatusCode::NOT_FOUND, &m, request_id),
        Err(ProxyError::Unreachable(m)) => {
            tracing::warn!(plugin = %name, request_id, endpoint, "Docker engine unreachable: {m}");
            engine_shaped(
                StatusCode::SERVICE_UNAVAILABLE,
                &crate::caps::docker::unreachable_text(&endpoint, request_id),
                request_id,
            )
        }
        Err(ProxyError::Busy) => {
            let mut r = engine_shaped(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many proxied Docker streams are open; retry later",
                request_id,
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

enum BodyError {
    TooLarge,
    TimedOut(std::time::Duration),
    Read(String),
}

/// Read the whole body if it is at most `max` bytes.
async fn read_body(body: &mut Incoming, max: usize) -> Result<Bytes, BodyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if buf.len() + data.len() > max {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(data);
        }
    }
    Ok(buf.freeze())
}

/// Most bytes, and longest time, spent reading a refused body so the client
/// can finish sending and read the 413 instead of a reset connection.
const DRAIN_BYTES: usize = 8 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

async fn drain(body: &mut Incoming) {
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

/// Headers the host controls: framing and connection management.
pub(crate) fn reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

fn to_http(
    plugin: &str,
    r: crate::runtime::bindings::berth::plugin::types::Response,
    request_id: &str,
) -> Response {
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
