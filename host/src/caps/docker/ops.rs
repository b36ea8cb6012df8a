//! The `docker` interface's operations: each an Engine API request through
//! the engine's client (`transport::Engine`, on `wire`), its JSON passed
//! to the plugin as the engine wrote it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::Method;
use serde::{Deserialize, Serialize};
use wasmtime::component::{HasData, Linker};

use super::framing::{JsonLines, LogFrames};
use super::{Docker, Engine, EventSink, LogSpec, unreachable_text};
use crate::bindings::DockerFailure;
use crate::bindings::docker::{
    Container, DockerError, EngineAnswer, EngineError, Filters, Host, LogSource, Port, TlsFiles,
};
use crate::capability::Capability;
use crate::caps::events::Events;
use crate::caps::http_out::HttpOut;
use crate::caps::{CallCx, Caller, HasCall, OpenStream, Opened, Unit};
use crate::store::Store;

/// `name[:tag]` into name and tag (`latest` when absent); a `:` inside
/// the registry's `host:port` is not a tag.
pub(super) fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

/// Filters as the Engine API takes them: a JSON object of lists.
pub(super) fn filters_json(filters: Filters) -> Option<String> {
    let map: HashMap<String, Vec<String>> = filters.into_iter().collect();
    (!map.is_empty()).then(|| json(&map))
}

/// `path?name=value&...`, the values percent-encoded; a pair without a
/// value is left out.
pub(super) fn target(path: &str, pairs: &[(&str, Option<String>)]) -> String {
    let mut target = path.to_string();
    for (name, value) in pairs {
        let Some(value) = value else { continue };
        target.push(if target.contains('?') { '&' } else { '?' });
        target.push_str(name);
        target.push('=');
        target.push_str(&percent_encode(value));
    }
    target
}

/// A name or id in a path: percent-encoded but for `/`, `:` and `@`,
/// which image references hold.
pub(super) fn segment(id: &str) -> String {
    id.split('/')
        .map(|part| percent_encode(part).replace("%3A", ":").replace("%40", "@"))
        .collect::<Vec<_>>()
        .join("/")
}

/// The id a create answers with.
#[derive(Deserialize)]
struct Created {
    #[serde(rename = "Id")]
    id: String,
}

/// `text` with every byte but the URL-unreserved ones percent-encoded.
pub(super) fn percent_encode(text: &str) -> String {
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

pub(super) fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("engine models serialise")
}

/// A plugin's JSON document for the engine (`what`): it must be an
/// object; the engine checks the rest.
pub(super) fn object(what: &str, text: &str) -> Result<Vec<u8>, DockerError> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Ok(text.as_bytes().to_vec()),
        Ok(_) => Err(DockerError::Invalid(format!("{what}: not a JSON object"))),
        Err(e) => Err(DockerError::Invalid(format!("{what}: {e}"))),
    }
}

/// What `docker` sees of a call: the caller, the engines, and where
/// followed events go (the plugin's channel or its job queue).
pub struct DockerView<'a> {
    caller: Caller<'a>,
    docker: &'a Arc<Docker>,
    /// For URL endpoints, which must pass `http-out`'s allow-list.
    http: &'a HttpOut,
    events: &'a Arc<Events>,
    db: &'a Arc<Store>,
    /// The call's opened streams.
    opened: &'a mut Opened,
}

/// Links `docker` to [`DockerView`].
pub struct DockerCap;

impl HasData for DockerCap {
    type Data<'a> = DockerView<'a>;
}

impl Unit for DockerCap {
    fn view(call: &mut CallCx) -> DockerView<'_> {
            let (caller, env, _, opened) = call.split_streams();
            DockerView {
                caller,
                docker: &env.services.docker,
                http: &env.services.http,
                events: &env.services.events,
                db: &env.services.db,
                opened,
            }
    }

    fn link<T: HasCall>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        crate::bindings::docker::add_to_linker::<T, Self>(linker, |s| Self::view(s.call()))
    }
}

impl DockerView<'_> {
    /// `Ok` if the plugin holds `cap`.
    fn granted(&self, cap: Capability) -> Result<(), DockerError> {
        let granted = self.caller.check(cap);
        granted.map_err(|e| DockerError::Denied(crate::caps::denied_text(&e)))
    }

    /// Note that this call changes the engine.
    fn changes(&mut self) {
        self.caller.acted("a Docker call that changes the engine");
    }

    /// The engine behind `endpoint`, if this plugin holds `docker`; the
    /// plugin's deadline bounds the call.
    pub(super) async fn docker_engine(&self, endpoint: &str) -> Result<Arc<Engine>, DockerError> {
        self.granted(Capability::Docker)?;
        self.docker.engine(self.caller.plugin(), endpoint).await
    }

    /// `method path` (with an optional JSON `body`) on `endpoint`'s
    /// engine within this call's deadline: the answer's body as text.
    fn fetch(
        &self,
        endpoint: &str,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> impl Future<Output = Result<String, DockerFailure>> + Send + 'static {
        self.on_wire(endpoint, |engine| async move {
            let body = engine.fetch(&method, &path, body.as_deref()).await?;
            Ok(String::from_utf8_lossy(&body).into_owned())
        })
    }

    /// [`DockerView::fetch`] of a change whose answer has nothing to tell.
    async fn act(&self, endpoint: &str, method: Method, path: String) -> Result<(), DockerFailure> {
        self.fetch(endpoint, method, path, None).await.map(drop)
    }

    /// [`DockerView::fetch`], the answer read as `T`.
    fn send_json<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        endpoint: &str,
        method: Method,
        path: String,
        body: Option<Vec<u8>>,
    ) -> impl Future<Output = Result<T, DockerFailure>> + Send + 'static {
        self.on_wire(endpoint, |engine| async move {
            let answer = engine.call(&method, &path, body.as_deref()).await?;
            engine.read_json(answer).await
        })
    }

    /// Run `op` with `endpoint`'s engine within this call's deadline.
    pub(super) fn on_wire<T, F, Fut>(
        &self,
        endpoint: &str,
        op: F,
    ) -> impl Future<Output = Result<T, DockerFailure>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(Arc<Engine>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, DockerError>> + Send,
    {
        let granted = self.granted(Capability::Docker);
        let docker = self.docker.clone();
        let deadline = tokio::time::Instant::from_std(self.caller.deadline());
        let plugin = self.caller.plugin().to_string();
        let request_id = self.caller.request_id().to_string();
        let endpoint = endpoint.to_string();
        async move {
            let engine = match granted {
                Ok(()) => docker.engine(&plugin, &endpoint).await,
                Err(e) => Err(e),
            };
            let engine = match engine {
                Ok(engine) => engine,
                Err(e) => return Err(e.into()),
            };
            let address = engine.spec.address.clone();
            let result = match tokio::time::timeout_at(deadline, op(engine)).await {
                Ok(result) => result,
                Err(_) => Err(DockerError::Unreachable(format!(
                    "{address} did not answer before the call's deadline"
                ))),
            };
            result.map_err(|e| match e {
                // Addresses and socket errors are the operator's to read,
                // not every client's a plugin passes the text on to.
                DockerError::Unreachable(detail) => {
                    tracing::warn!(
                        plugin,
                        request_id,
                        endpoint,
                        "Docker engine unreachable: {detail}"
                    );
                    DockerError::Unreachable(unreachable_text(&endpoint, &request_id)).into()
                }
                e => e.into(),
            })
        }
    }
}

/// The fields of the engine's container list that `container` carries:
/// decoding only these takes about half the time of bollard's whole
/// `ContainerSummary` (network settings, mounts, ...).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Summary {
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
pub(super) struct SummaryPort {
    #[serde(rename = "PrivatePort")]
    private_port: u16,
    #[serde(rename = "PublicPort")]
    public_port: Option<u16>,
    #[serde(rename = "IP")]
    ip: Option<String>,
    #[serde(rename = "Type")]
    protocol: Option<String>,
}

pub(super) fn container(c: Summary) -> Container {
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

/// A plugin's raw engine request, checked: a method, a target
/// (`path?query`) and headers that cannot smuggle a second request or
/// ask for an upgrade.
fn raw_request(
    method: &str,
    path: &str,
    query: &str,
    headers: &[(String, String)],
) -> Result<(http::Method, String, http::HeaderMap), DockerError> {
    let invalid = |what: String| DockerError::Invalid(what);
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| invalid(format!("`{method}` is not an HTTP method")))?;
    let clean = |s: &str| !s.chars().any(|c| c.is_control() || c == ' ' || c == '#');
    if !path.starts_with('/') || !clean(path) || !clean(query) || path.contains('?') {
        return Err(invalid(format!(
            "`{path}` with `{query}` is not a request target"
        )));
    }
    let target = match query {
        "" => path.to_string(),
        q => format!("{path}?{q}"),
    };
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let name = http::HeaderName::try_from(name.as_str())
            .map_err(|_| invalid(format!("`{name}` is not a header name")))?;
        if matches!(
            name.as_str(),
            "connection" | "upgrade" | "transfer-encoding" | "content-length" | "host" | "te"
        ) {
            return Err(invalid(format!("the host sets `{name}` itself")));
        }
        let value = http::HeaderValue::try_from(value.as_str())
            .map_err(|_| invalid(format!("the value of `{name}` is not a header value")))?;
        map.append(name, value);
    }
    Ok((method, target, map))
}

impl Host for DockerView<'_> {
    async fn container_list(
        &mut self,
        endpoint: String,
        all: bool,
        filters: Filters,
    ) -> Result<Vec<Container>, DockerFailure> {
        let options = [
            ("all", Some(all.to_string())),
            ("filters", filters_json(filters)),
        ];
        let path = target("/containers/json", &options);
        self.on_wire(&endpoint, |engine| async move {
            let list: Vec<Summary> = engine.get(&path).await?;
            Ok(list.into_iter().map(container).collect())
        })
        .await
    }

    async fn container_inspect(
        &mut self,
        endpoint: String,
        id: String,
    ) -> Result<String, DockerFailure> {
        self.fetch(
            &endpoint,
            Method::GET,
            format!("/containers/{}/json", segment(&id)),
            None,
        )
        .await
    }

    async fn container_create(
        &mut self,
        endpoint: String,
        name: Option<String>,
        body: String,
    ) -> Result<String, DockerFailure> {
        self.changes();
        let body = object("create body", &body)?;
        let path = target("/containers/create", &[("name", name)]);
        let created: Created = self
            .send_json(&endpoint, Method::POST, path, Some(body))
            .await?;
        Ok(created.id)
    }

    async fn container_start(&mut self, endpoint: String, id: String) -> Result<(), DockerFailure> {
        self.changes();
        let path = format!("/containers/{}/start", segment(&id));
        self.act(&endpoint, Method::POST, path).await
    }

    async fn container_stop(
        &mut self,
        endpoint: String,
        id: String,
        timeout_secs: Option<u32>,
    ) -> Result<(), DockerFailure> {
        self.changes();
        let t = timeout_secs.map(|t| t.min(i32::MAX as u32).to_string());
        let path = target(&format!("/containers/{}/stop", segment(&id)), &[("t", t)]);
        self.act(&endpoint, Method::POST, path).await
    }

    async fn container_restart(
        &mut self,
        endpoint: String,
        id: String,
        timeout_secs: Option<u32>,
    ) -> Result<(), DockerFailure> {
        self.changes();
        let t = timeout_secs.map(|t| t.min(i32::MAX as u32).to_string());
        let path = target(
            &format!("/containers/{}/restart", segment(&id)),
            &[("t", t)],
        );
        self.act(&endpoint, Method::POST, path).await
    }

    async fn container_kill(
        &mut self,
        endpoint: String,
        id: String,
        signal: Option<String>,
    ) -> Result<(), DockerFailure> {
        self.changes();
        let signal = Some(signal.unwrap_or_else(|| "SIGKILL".into()));
        let path = target(
            &format!("/containers/{}/kill", segment(&id)),
            &[("signal", signal)],
        );
        self.act(&endpoint, Method::POST, path).await
    }

    async fn container_remove(
        &mut self,
        endpoint: String,
        id: String,
        force: bool,
        volumes: bool,
    ) -> Result<(), DockerFailure> {
        self.changes();
        let flags = [
            ("force", Some(force.to_string())),
            ("v", Some(volumes.to_string())),
        ];
        let path = target(&format!("/containers/{}", segment(&id)), &flags);
        self.act(&endpoint, Method::DELETE, path).await
    }

    async fn container_rename(
        &mut self,
        endpoint: String,
        id: String,
        name: String,
    ) -> Result<(), DockerFailure> {
        self.changes();
        let path = target(
            &format!("/containers/{}/rename", segment(&id)),
            &[("name", Some(name))],
        );
        self.act(&endpoint, Method::POST, path).await
    }

    async fn container_logs(
        &mut self,
        endpoint: String,
        id: String,
        tail: u32,
    ) -> Result<String, DockerFailure> {
        let tail = match tail {
            0 => "all".to_string(),
            n => n.to_string(),
        };
        let options = [
            ("stdout", Some("true".into())),
            ("stderr", Some("true".into())),
            ("tail", Some(tail)),
        ];
        let path = target(&format!("/containers/{}/logs", segment(&id)), &options);
        self.on_wire(&endpoint, |engine| async move {
            let answer = engine.call(&Method::GET, &path, None).await?;
            let mut frames = LogFrames::new(answer.body);
            let mut text = Vec::new();
            while let Some(frame) = frames.next().await {
                let (_, bytes) = frame.map_err(|e| engine.broken(e))?;
                text.extend_from_slice(&bytes);
            }
            Ok(String::from_utf8_lossy(&text).into_owned())
        })
        .await
    }

    async fn open_log_stream(
        &mut self,
        endpoint: String,
        sources: Vec<LogSource>,
        tail: Option<u32>,
        follow: bool,
    ) -> Result<String, DockerFailure> {
        self.docker_engine(&endpoint).await?;
        let sources = sources.into_iter().map(|s| (s.id, s.fields)).collect();
        let spec = LogSpec::new(endpoint, sources, tail, follow)?;
        Ok(self.opened.add(OpenStream::Logs(spec)))
    }

    async fn exec_create(
        &mut self,
        endpoint: String,
        id: String,
        cmd: Vec<String>,
        tty: bool,
    ) -> Result<String, DockerFailure> {
        self.changes();
        let body = serde_json::json!({
            "AttachStdin": true,
            "AttachStdout": true,
            "AttachStderr": true,
            "Tty": tty,
            "Cmd": cmd,
        });
        let path = format!("/containers/{}/exec", segment(&id));
        let body = Some(body.to_string().into_bytes());
        let created: Created = self.send_json(&endpoint, Method::POST, path, body).await?;
        Ok(created.id)
    }

    async fn image_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> Result<String, DockerFailure> {
        let path = target("/images/json", &[("filters", filters_json(filters))]);
        self.fetch(&endpoint, Method::GET, path, None).await
    }

    async fn image_inspect(
        &mut self,
        endpoint: String,
        name: String,
    ) -> Result<String, DockerFailure> {
        let path = format!("/images/{}/json", segment(&name));
        self.fetch(&endpoint, Method::GET, path, None).await
    }

    async fn image_pull(&mut self, endpoint: String, image: String) -> Result<(), DockerFailure> {
        self.changes();
        let (name, tag) = split_image(&image);
        let options = [
            ("fromImage", Some(name.to_string())),
            ("tag", Some(tag.to_string())),
        ];
        let path = target("/images/create", &options);
        self.on_wire(&endpoint, |engine| async move {
            let answer = engine.call(&Method::POST, &path, None).await?;
            // The pull's progress, a JSON object a line; a failure part
            // way is one with `error` in it.
            let mut lines = JsonLines::new(answer.body);
            while let Some(line) = lines.next().await {
                let step = line.map_err(|e| engine.broken(e))?;
                if let Some(message) = step.get("error").and_then(|e| e.as_str()) {
                    return Err(DockerError::Engine(EngineError {
                        status: 500,
                        message: message.to_string(),
                    }));
                }
            }
            Ok(())
        })
        .await
    }

    async fn network_create(
        &mut self,
        endpoint: String,
        body: String,
    ) -> Result<String, DockerFailure> {
        self.changes();
        let body = object("network body", &body)?;
        let created: Created = self
            .send_json(
                &endpoint,
                Method::POST,
                "/networks/create".into(),
                Some(body),
            )
            .await?;
        Ok(created.id)
    }

    async fn network_remove(&mut self, endpoint: String, id: String) -> Result<(), DockerFailure> {
        self.changes();
        let path = format!("/networks/{}", segment(&id));
        self.act(&endpoint, Method::DELETE, path).await
    }

    async fn network_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> Result<String, DockerFailure> {
        let path = target("/networks", &[("filters", filters_json(filters))]);
        self.fetch(&endpoint, Method::GET, path, None).await
    }

    async fn service_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> Result<String, DockerFailure> {
        let path = target("/services", &[("filters", filters_json(filters))]);
        self.fetch(&endpoint, Method::GET, path, None).await
    }

    async fn service_inspect(
        &mut self,
        endpoint: String,
        id: String,
    ) -> Result<String, DockerFailure> {
        let path = format!("/services/{}", segment(&id));
        self.fetch(&endpoint, Method::GET, path, None).await
    }

    async fn service_create(
        &mut self,
        endpoint: String,
        spec: String,
    ) -> Result<String, DockerFailure> {
        self.changes();
        let spec = object("service spec", &spec)?;
        #[derive(Deserialize)]
        struct ServiceCreated {
            #[serde(rename = "ID", default)]
            id: String,
        }
        let created: ServiceCreated = self
            .send_json(
                &endpoint,
                Method::POST,
                "/services/create".into(),
                Some(spec),
            )
            .await?;
        Ok(created.id)
    }

    async fn service_update(
        &mut self,
        endpoint: String,
        id: String,
        version: u64,
        spec: String,
    ) -> Result<(), DockerFailure> {
        self.changes();
        let spec = object("service spec", &spec)?;
        let Ok(version) = i32::try_from(version) else {
            return Err(
                DockerError::Invalid(format!("service version {version} is out of range")).into(),
            );
        };
        let path = format!("/services/{}/update", segment(&id));
        let path = target(&path, &[("version", Some(version.to_string()))]);
        self.fetch(&endpoint, Method::POST, path, Some(spec))
            .await
            .map(drop)
    }

    async fn service_remove(&mut self, endpoint: String, id: String) -> Result<(), DockerFailure> {
        self.changes();
        let path = format!("/services/{}", segment(&id));
        self.act(&endpoint, Method::DELETE, path).await
    }

    async fn task_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> Result<String, DockerFailure> {
        let path = target("/tasks", &[("filters", filters_json(filters))]);
        self.fetch(&endpoint, Method::GET, path, None).await
    }

    async fn node_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> Result<String, DockerFailure> {
        let path = target("/nodes", &[("filters", filters_json(filters))]);
        self.fetch(&endpoint, Method::GET, path, None).await
    }

    async fn swarm_inspect(&mut self, endpoint: String) -> Result<String, DockerFailure> {
        self.fetch(&endpoint, Method::GET, "/swarm".into(), None)
            .await
    }

    async fn info(&mut self, endpoint: String) -> Result<String, DockerFailure> {
        self.fetch(&endpoint, Method::GET, "/info".into(), None)
            .await
    }

    async fn request(
        &mut self,
        endpoint: String,
        method: String,
        path: String,
        query: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<EngineAnswer, DockerFailure> {
        let request = match raw_request(&method, &path, &query, &headers) {
            Ok(request) => request,
            Err(e) => return Err(e.into()),
        };
        let (method, target, headers) = request;
        if !matches!(method, http::Method::GET | http::Method::HEAD) {
            self.changes();
        }
        self.on_wire(&endpoint, |engine| async move {
            let (status, headers, body) = engine.request(&method, &target, &headers, &body).await?;
            Ok(EngineAnswer {
                status: status.as_u16(),
                headers: headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: body.to_vec(),
            })
        })
        .await
    }

    async fn set_proxy_header(&mut self, name: String, value: String) -> Result<(), DockerFailure> {
        self.granted(Capability::Docker)?;
        let invalid = |what: String| DockerFailure::from(DockerError::Invalid(what));
        let name = http::HeaderName::try_from(name.as_str())
            .map_err(|_| invalid(format!("`{name}` is not a header name")))?;
        if matches!(
            name.as_str(),
            "connection"
                | "upgrade"
                | "transfer-encoding"
                | "content-length"
                | "host"
                | "te"
                | "trailer"
                | "keep-alive"
                | "proxy-connection"
                | "authorization"
                | "cookie"
                | "x-api-key"
        ) {
            return Err(invalid(format!(
                "`{name}` cannot be set on a proxied request"
            )));
        }
        if http::HeaderValue::try_from(value.as_str()).is_err() {
            return Err(invalid(format!(
                "the value of `{name}` is not a header value"
            )));
        }
        self.opened.proxy_headers.push((name, value));
        Ok(())
    }

    async fn ping(&mut self, endpoint: String) -> Result<String, DockerFailure> {
        self.fetch(&endpoint, Method::GET, "/_ping".into(), None)
            .await
    }

    async fn follow_events(
        &mut self,
        endpoint: String,
        topic: String,
        filters: Filters,
    ) -> Result<(), DockerFailure> {
        self.changes();
        self.granted(Capability::Docker)?;
        self.granted(Capability::Events)?;
        if topic.is_empty() || topic.len() > 256 {
            return Err(DockerError::Invalid("a topic is 1 to 256 bytes".into()).into());
        }
        let sink = EventSink::Publish {
            events: self.events.clone(),
            topic,
        };
        let plugin = self.caller.plugin();
        Ok(self.docker.follow(plugin, &endpoint, filters, sink).await?)
    }

    async fn follow_events_as_jobs(
        &mut self,
        endpoint: String,
        kind: String,
        filters: Filters,
    ) -> Result<(), DockerFailure> {
        self.changes();
        self.granted(Capability::Docker)?;
        self.granted(Capability::Jobs)?;
        if kind.is_empty() || kind.len() > 128 {
            return Err(DockerError::Invalid("a job kind is 1 to 128 bytes".into()).into());
        }
        let sink = EventSink::Jobs {
            db: self.db.clone(),
            kind,
        };
        let plugin = self.caller.plugin();
        Ok(self.docker.follow(plugin, &endpoint, filters, sink).await?)
    }

    async fn register_endpoint(
        &mut self,
        name: String,
        address: String,
        tls: Option<TlsFiles>,
    ) -> Result<(), DockerFailure> {
        self.changes();
        self.granted(Capability::DockerEndpoints)?;
        let plugin = self.caller.plugin();
        Ok(self.docker.register(plugin, &name, &address, tls).await?)
    }

    async fn register_url_endpoint(
        &mut self,
        name: String,
        url: String,
        headers: Vec<(String, String)>,
    ) -> Result<(), DockerFailure> {
        self.changes();
        self.granted(Capability::DockerEndpoints)?;
        self.granted(Capability::HttpOut)?;
        if let Err(e) = self.http.check_resolved(&url).await {
            let why = crate::caps::http_out::error_text(&e);
            return Err(DockerError::Denied(why).into());
        }
        let plugin = self.caller.plugin();
        Ok(self
            .docker
            .register_url(plugin, &name, &url, headers)
            .await?)
    }

    async fn remove_endpoint(&mut self, name: String) -> Result<bool, DockerFailure> {
        self.changes();
        self.granted(Capability::DockerEndpoints)?;
        let plugin = self.caller.plugin();
        Ok(self.docker.unregister(plugin, &name).await?)
    }

    /// An engine error reaches the plugin; a trap ends the call.
    fn convert_docker_error(&mut self, err: DockerFailure) -> wasmtime::Result<DockerError> {
        err.downcast()
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
}
