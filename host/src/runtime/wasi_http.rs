//! Components of the `wasi:http/proxy` world (what `wasmtime serve` and
//! Spin run): how Berth recognises one, and its outgoing requests, which
//! go through the `http-out` capability's client and allow-list or
//! nowhere.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use wasmtime::component::Component;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::bindings::http_out::{HttpError, Outgoing};
use crate::capability::Capability;
use crate::caps::PluginEnv;
use crate::caps::http_out::error_text;
use crate::web::{self, BoxError};

/// The export that makes a component a wasi:http handler.
const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@0.2";

/// The import a handler sends its own requests through.
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2";

/// Whether `component` exports `wasi:http/incoming-handler` (any 0.2.x).
pub fn is_handler(component: &Component) -> bool {
    let engine = component.engine();
    let ty = component.component_type();
    let mut exports = ty.exports(engine);
    exports.any(|(name, _)| name.starts_with(INCOMING_HANDLER))
}

/// Whether `component` imports `wasi:http/outgoing-handler`: it may send
/// requests of its own, which the `http-out` capability allows.
pub fn sends_requests(component: &Component) -> bool {
    let engine = component.engine();
    let ty = component.component_type();
    let mut imports = ty.imports(engine);
    imports.any(|(name, _)| name.starts_with(OUTGOING_HANDLER))
}

/// What the wasi:http implementation asks of the host for one call (of a
/// wasi:http component, or of a plugin whose language runtime sends
/// requests through wasi:http, as JavaScript's `fetch` does): its requests
/// go out through the plugin's `http-out` grant, the operator's allow-list
/// and the client every `http-out` call uses.
pub struct Outbound(pub Option<Arc<PluginEnv>>);

/// A future the wasi:http implementation awaits alongside a response.
type Io = Box<dyn Future<Output = Result<(), Error>> + Send>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _: Io,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, Io), Error>> + Send> {
        let plugin = self.0.clone();
        Box::new(async move {
            let Some(plugin) = plugin.filter(|p| p.granted.contains(Capability::HttpOut)) else {
                tracing::info!(
                    url = %request.uri(),
                    "outgoing request refused: the plugin does not hold `http-out`"
                );
                return Err(Error::HttpRequestDenied);
            };
            let response = send(&plugin, request, options).await?;
            Ok((response, Box::new(async { Ok(()) }) as Io))
        })
    }
}

/// Send `request` with the `http-out` client: the same allow-list,
/// address checks, timeout and response cap as the capability's calls.
async fn send(
    plugin: &PluginEnv,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<http::Response<WasiBody>, Error> {
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let timeout = options
        .and_then(|o| o.first_byte_timeout.or(o.connect_timeout))
        .map_or(0, |t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
    let outgoing = Outgoing {
        method: parts.method.as_str().to_string(),
        url: parts.uri.to_string(),
        // The client sets `host` from the URL.
        headers: parts
            .headers
            .iter()
            .filter(|(name, _)| *name != http::header::HOST)
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_string(), value)
            })
            .collect(),
        body: body.to_vec(),
        timeout_ms: timeout,
    };
    let incoming = plugin.services.http.send(outgoing).await.map_err(|e| {
        tracing::info!(url = %parts.uri, "outgoing request failed: {}", error_text(&e));
        match e {
            HttpError::Denied(_) | HttpError::Refused(_) => Error::HttpRequestDenied,
            HttpError::Invalid(_) => Error::HttpRequestUriInvalid,
            HttpError::Timeout => Error::ConnectionTimeout,
            HttpError::TooLarge(_) => Error::HttpResponseBodySize(None),
            HttpError::Unreachable(_) => Error::DestinationUnavailable,
        }
    })?;
    let mut response = http::Response::builder().status(incoming.status);
    for (name, value) in &incoming.headers {
        response = response.header(name, value);
    }
    let body = Full::new(Bytes::from(incoming.body))
        .map_err(|never| match never {})
        .boxed_unsync();
    response
        .body(body)
        .map_err(|e| Error::InternalError(Some(e.to_string())))
}

/// A component's response body as the server sends it: streamed as the
/// component writes it.
pub fn response_body(body: HyperOutgoingBody) -> web::Body {
    Shared(Mutex::new(body)).map_err(BoxError::from).boxed()
}

/// A body the server may share between threads: polled through `&mut`,
/// so without taking its lock (`Mutex::get_mut`); asked about its end and
/// size under the lock, which no one else ever holds.
struct Shared<B>(Mutex<B>);

impl<B: http_body::Body + Unpin> http_body::Body for Shared<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let body = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        Pin::new(body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        let body = self.0.lock().unwrap_or_else(|e| e.into_inner());
        body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let body = self.0.lock().unwrap_or_else(|e| e.into_inner());
        body.size_hint()
    }
}
