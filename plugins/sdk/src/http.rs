//! Requests and responses.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::berth::plugin::types;

/// What a handler returns: a response either way. The `Err` side lets `?`
/// turn failures into error responses (see the `From` impls on
/// [`Response`]), which the router renders in the route's error format.
pub type HttpResult = Result<Response, Response>;

/// One HTTP request routed to this plugin.
#[derive(Debug, Clone)]
pub struct Request {
    inner: types::Request,
}

impl From<types::Request> for Request {
    fn from(inner: types::Request) -> Self {
        Request { inner }
    }
}

impl Request {
    /// The host's id for this request (also in the `x-request-id` header
    /// of the response and in every log line).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Upper-case method, e.g. `GET`.
    pub fn method(&self) -> &str {
        &self.inner.method
    }

    /// The raw path, without the query string.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The id of the matched route.
    pub fn route(&self) -> &str {
        &self.inner.route
    }

    /// The client's `ip:port`.
    pub fn client(&self) -> &str {
        &self.inner.client
    }

    /// A path parameter captured by `{name}` in the route pattern.
    pub fn param(&self, name: &str) -> Option<&str> {
        find(&self.inner.params, name)
    }

    /// A path parameter parsed into `T`; a missing or unparsable value is a
    /// 400 response naming the parameter.
    pub fn param_as<T: std::str::FromStr>(&self, name: &str) -> Result<T, Response> {
        let raw = self
            .param(name)
            .ok_or_else(|| Response::failure(400, &format!("missing path parameter `{name}`")))?;
        raw.parse().map_err(|_| {
            Response::failure(
                400,
                &format!("path parameter `{name}` has a bad value: {raw:?}"),
            )
        })
    }

    /// The first query value for `name`.
    pub fn query(&self, name: &str) -> Option<&str> {
        find(&self.inner.query, name)
    }

    /// A query value parsed into `T`: `Ok(None)` when absent, a 400 response
    /// when present but unparsable.
    pub fn query_as<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, Response> {
        match self.query(name) {
            None => Ok(None),
            Some(raw) => raw.parse().map(Some).map_err(|_| {
                Response::failure(
                    400,
                    &format!("query parameter `{name}` has a bad value: {raw:?}"),
                )
            }),
        }
    }

    /// All query pairs in order.
    pub fn query_pairs(&self) -> &[(String, String)] {
        &self.inner.query
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers in order, names lower-case.
    pub fn headers(&self) -> &[(String, String)] {
        &self.inner.headers
    }

    /// The request body. Empty when [`Request::body_withheld`].
    pub fn body(&self) -> &[u8] {
        &self.inner.body
    }

    /// Whether the host withheld a body larger than this plugin reads
    /// (`max_body_kib`): only [`Response::proxy_docker`] can use it (it
    /// streams to the engine); any other answer becomes the host's 413
    /// and the call's KV writes are dropped. Only plugins granted
    /// `docker` get withheld bodies; others get the 413 before they run.
    pub fn body_withheld(&self) -> bool {
        self.header("x-berth-body") == Some("withheld")
    }

    /// The body parsed as JSON; a 400 response with the parse error if it
    /// is not valid JSON of the expected shape.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Response> {
        serde_json::from_slice(&self.inner.body)
            .map_err(|e| Response::failure(400, &format!("invalid JSON body: {e}")))
    }

    /// The body parsed as `application/x-www-form-urlencoded` pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_urlencoded(&self.inner.body)
    }

    /// Whether the `content-type` header names JSON.
    pub fn is_json(&self) -> bool {
        self.header("content-type")
            .is_some_and(|v| v.to_ascii_lowercase().contains("json"))
    }
}

fn find<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Parse `a=1&b=x+y` into pairs, percent-decoding names and values.
pub fn parse_urlencoded(input: &[u8]) -> Vec<(String, String)> {
    input
        .split(|b| *b == b'&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut halves = part.splitn(2, |b| *b == b'=');
            let name = percent_decode(halves.next().unwrap_or_default());
            let value = percent_decode(halves.next().unwrap_or_default());
            (name, value)
        })
        .collect()
}

fn percent_decode(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// How subscribed events are framed: WebSocket messages, Server-Sent
/// Events, or newline-delimited payloads.
pub use types::Framing;

/// What the host does instead of sending a response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Special {
    Proxy {
        endpoint: String,
        path: String,
        query: Option<String>,
    },
    Subscribe {
        topic: String,
        framing: Framing,
        replay: bool,
        after: Option<u64>,
    },
}

/// An HTTP response under construction, or (from
/// [`Response::proxy_docker`]) a request the host forwards to Docker, or
/// (from [`Response::subscribe`]) a stream of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Set when the host should do something other than send this.
    special: Option<Special>,
    /// Set by [`Response::failure`]: the message the router renders in
    /// the route's error format.
    failure: Option<String>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            special: None,
            failure: None,
        }
    }

    /// Answer by forwarding the client's request (method, body, headers
    /// other than `authorization` and `cookie`) to Docker endpoint
    /// `endpoint` at `path` (e.g. `/containers/json`), streaming the
    /// engine's answer back as it comes. `query` replaces the client's
    /// query string; `None` sends the client's own. The plugin needs the
    /// `docker` capability; authenticate the client before answering this.
    pub fn proxy_docker(endpoint: &str, path: &str, query: Option<&str>) -> Self {
        let mut r = Response::new(200);
        r.special = Some(Special::Proxy {
            endpoint: endpoint.to_string(),
            path: path.to_string(),
            query: query.map(str::to_string),
        });
        r
    }

    /// Answer by streaming this plugin's events on `topic` (see
    /// [`crate::events`]) to the client, framed as `framing`, until the
    /// topic is closed or the client leaves. Headers added with
    /// [`Response::header`] are sent too (not for WebSocket). Needs the
    /// `events` capability; authenticate the client before answering this.
    pub fn subscribe(topic: &str, framing: Framing) -> Self {
        let mut r = Response::new(200);
        r.special = Some(Special::Subscribe {
            topic: topic.to_string(),
            framing,
            replay: false,
            after: None,
        });
        r
    }

    /// For [`Response::subscribe`]: first send the topic's retained events
    /// (those after sequence number `after`, or all), then live ones. Use
    /// it when the events may have started before the client subscribed.
    pub fn replay(mut self, after: Option<u64>) -> Self {
        if let Some(Special::Subscribe {
            replay, after: a, ..
        }) = &mut self.special
        {
            *replay = true;
            *a = after;
        }
        self
    }

    /// The outcome the host acts on.
    pub(crate) fn into_outcome(self) -> types::Outcome {
        match self.special {
            Some(Special::Proxy {
                endpoint,
                path,
                query,
            }) => types::Outcome::ProxyDocker(types::DockerTarget {
                endpoint,
                path,
                query,
            }),
            Some(Special::Subscribe {
                topic,
                framing,
                replay,
                after,
            }) => types::Outcome::Subscribe(types::Subscription {
                topic,
                framing,
                replay,
                after,
                headers: self.headers,
            }),
            None => types::Outcome::Respond(types::Response {
                status: self.status,
                headers: self.headers,
                body: self.body,
            }),
        }
    }

    /// A JSON response: `value` serialised, `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(status)
                .header("content-type", "application/json")
                .body(body),
            Err(e) => Response::error(500, &format!("could not serialise the response: {e}")),
        }
    }

    /// A plain-text response.
    pub fn text(status: u16, text: &str) -> Self {
        Response::new(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text.as_bytes().to_vec())
    }

    /// A JSON error response `{"error": message}`. Surfaces with their own
    /// error format build their body with [`Response::json`] instead.
    pub fn error(status: u16, message: &str) -> Self {
        Response::json(status, &serde_json::json!({ "error": message }))
    }

    /// An error in the format of the route being handled: the router
    /// renders `message` with its scope's [`crate::Scope::errors`] when the
    /// handler returns it (headers added here are kept). Until then, and
    /// outside any such scope, it is [`Response::error`]'s body.
    pub fn failure(status: u16, message: &str) -> Self {
        let mut r = Response::error(status, message);
        r.failure = Some(message.to_string());
        r
    }

    /// This response in the error format `render`, if it is a
    /// [`Response::failure`]: `render`'s status, headers and body, and the
    /// failure's other headers (`retry-after`, say).
    pub(crate) fn rendered(self, render: fn(u16, &str) -> Response) -> Response {
        let Some(message) = &self.failure else {
            return self;
        };
        let mut rendered = render(self.status, message);
        for (name, value) in self.headers {
            let set = |(n, _): &(String, String)| n.eq_ignore_ascii_case(&name);
            if !name.eq_ignore_ascii_case("content-type") && !rendered.headers.iter().any(set) {
                rendered.headers.push((name, value));
            }
        }
        rendered.failure = None;
        rendered
    }

    /// Set a header, replacing the values it had (names match in any
    /// case): `Response::text(..).header("content-type", "text/yaml")`
    /// answers one `Content-Type`.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.append_header(name, value)
    }

    /// Add a value to a header that may carry several (`set-cookie`,
    /// `link`, `vary`), keeping the ones it has.
    pub fn append_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Replace the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }
}

/// A host capability error becomes a response with the error text, so
/// handlers can use `?` on host calls: 403 when the capability was not
/// granted, 400 for a bad argument, 503 with `Retry-After` for a conflict
/// or an unavailable host.
impl From<crate::Error> for Response {
    fn from(e: crate::Error) -> Self {
        crate::host_failure(&e, Response::failure)
    }
}

/// Percent-encode `text` for a URL query component or path segment: every
/// byte but ASCII letters, digits and `-_.~` becomes `%XX`.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_set_twice_has_one_value_and_an_appended_one_keeps_both() {
        let r = Response::text(200, "a: 1")
            .header("Content-Type", "text/yaml")
            .header("set-cookie", "a=1")
            .append_header("Set-Cookie", "b=2");
        let values = |name: &str| -> Vec<&str> {
            r.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(values("content-type"), ["text/yaml"]);
        assert_eq!(values("set-cookie"), ["a=1", "b=2"]);
    }

    #[test]
    fn urlencoded_pairs_are_decoded() {
        let pairs = parse_urlencoded(b"cmd=apps%3Alist&sync=true&x=a+b&bad=%zz&trail=%4");
        assert_eq!(
            pairs,
            vec![
                ("cmd".into(), "apps:list".into()),
                ("sync".into(), "true".into()),
                ("x".into(), "a b".into()),
                ("bad".into(), "%zz".into()),
                ("trail".into(), "%4".into()),
            ]
        );
    }
}
