//! From an HTTP request to a plugin call and back: routing, body limits,
//! concurrency limits, the call, committing its writes, the response.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::answer::body::{self, Policy};
use crate::answer::{self, Responded};
use crate::app::App;
use crate::bindings::{Outcome, Request};
use crate::budget::Reserved;
use crate::invoke::{Finished, Handle, Invocation, invoke, serve_http};
use crate::plugins::Mounted;
use crate::router::{Found, percent_decode};
use crate::runtime::CallError;
use crate::runtime::wasi_http::response_body;
use crate::web::{Body, BoxError, Response, error};

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
    let policy = Policy::of(&plugin);
    // Held until the answer is built, streams and proxying included.
    let admitted = match admit(
        app, &plugin, policy, &parts, &mut body, client, deadline, request_id,
    )
    .await
    {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    if plugin.pre.is_http() {
        let body = admitted.body.bytes();
        let rest = params.into_iter().next().map(|(_, rest)| rest);
        let tls = app.config.tls().is_some();
        let request = for_component(parts, body, rest, client, tls);
        let runtime = app.plugins.runtime();
        let served = serve_http(
            runtime,
            &plugin,
            request,
            tls,
            request_id.to_string(),
            deadline.into_std(),
        );
        return match served.await {
            Ok(served) => served.response.map(response_body),
            Err(e) => failed(&plugin, e, request_id),
        };
    }
    let request = Request {
        id: request_id.to_string(),
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        route,
        params,
        query: parts.uri.query().map(parse_query).unwrap_or_default(),
        headers: plugin_headers(&parts.headers, admitted.body.withheld()),
        body: admitted.body.for_plugin().to_vec(),
        client: client.to_string(),
    };
    let runtime = app.plugins.runtime();
    let _running = plugin.metrics.running();
    let Admitted { mut body, .. } = admitted;
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
        if body.withheld() {
            break (Outcome::Respond(response), opened, writes);
        }
        let rerun =
            reruns < MAX_RERUNS && tokio::time::Instant::now() < deadline && writes.may_rerun();
        match answer::respond(&plugin, response, writes, request_id, rerun).await {
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
    if !matches!(value, Outcome::ProxyDocker(_))
        && let Some(refused) = body.refuse_unsent(&plugin, request_id).await
    {
        // Only the engine takes a body the plugin did not read: the call's
        // writes are dropped and the client gets the 413 it would have.
        return refused;
    }
    match value {
        Outcome::Respond(response) => {
            match answer::respond(&plugin, response, writes, request_id, false).await {
                Responded::Sent(response) => response,
                Responded::Conflict => unreachable!("only a call that may run again is run again"),
            }
        }
        Outcome::ProxyDocker(target) => {
            let body = body.for_engine(policy, app.config.server.body_timeout());
            answer::proxy_docker(
                &plugin, target, opened, writes, &mut parts, body, request_id,
            )
            .await
        }
        Outcome::Subscribe(sub) => {
            let closing = app.closing.subscribe();
            answer::subscribe(
                &plugin, sub, opened, writes, &mut parts, closing, request_id,
            )
            .await
        }
    }
}

/// A request as a wasi:http component gets it: the client's, with the
/// headers Spin adds (the part of the path after the component's route in
/// `spin-path-info`, and so on; any the client sent are dropped).
fn for_component(
    parts: http::request::Parts,
    body: Bytes,
    rest: Option<String>,
    client: SocketAddr,
    tls: bool,
) -> http::Request<Bytes> {
    let mut request = http::Request::from_parts(parts, body);
    let headers = request.headers_mut();
    let spin: Vec<_> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("spin-"))
        .cloned()
        .collect();
    for name in spin {
        headers.remove(name);
    }
    let rest = rest.unwrap_or_default();
    let full_path = request.uri().path();
    let route = full_path
        .strip_suffix(rest.as_str())
        .unwrap_or(full_path)
        .trim_end_matches('/')
        .to_string();
    let scheme = if tls { "https" } else { "http" };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(request.uri().authority().map(|a| a.as_str()))
        .unwrap_or("localhost")
        .to_string();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let spin = [
        ("spin-path-info", format!("/{rest}")),
        (
            "spin-full-url",
            format!("{scheme}://{host}{path_and_query}"),
        ),
        ("spin-matched-route", format!("{route}/...")),
        ("spin-raw-component-route", format!("{route}/...")),
        ("spin-component-route", route.clone()),
        ("spin-base-path", "/".to_string()),
        ("spin-client-addr", client.to_string()),
    ];
    for (name, value) in spin {
        if let Ok(value) = HeaderValue::try_from(value) {
            request.headers_mut().insert(name, value);
        }
    }
    request
}

/// What admission gives a request: its body, and one of the plugin's call
/// slots for as long as it is kept.
struct Admitted {
    body: body::Admitted,
    _permit: OwnedSemaphorePermit,
    /// The body's bytes, held against the server's body budget.
    _memory: Reserved,
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

/// Read the body by the route's `policy` within the server's body
/// budget and body timeout (see [`body::admit`]), then take a call slot,
/// waiting for one until the call's deadline: or the host's 413, 408, 400
/// or 503.
#[allow(clippy::too_many_arguments)]
async fn admit(
    app: &App,
    plugin: &Mounted,
    policy: Policy,
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
    let mut memory = app.bodies.start(client.ip());
    let idle = app.config.server.body_timeout();
    let body = body::admit(
        policy,
        body,
        declared,
        &mut memory,
        idle,
        plugin,
        request_id,
    )
    .await?;

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
        return Err(answer::retry_later(
            &format!(
                "plugin `{}` is at its limit of {} concurrent calls",
                plugin.manifest.name, limits.max_concurrent
            ),
            request_id,
        ));
    };
    Ok(Admitted {
        body,
        _permit: permit,
        _memory: memory,
    })
}

/// Most times a call runs again after its writes conflicted at commit.
const MAX_RERUNS: u32 = 8;

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
