//! The `docker` interface's operations, on bollard (and `wire` for the
//! container list).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bollard::query_parameters as q;
use serde::{Deserialize, Serialize};

use bollard::errors::Error as BollardError;
use wasmtime::component::HasData;

use super::{Docker, Engine, EventSink, LogSpec, engine_error, unreachable_text};
use crate::bindings::DockerFailure;
use crate::bindings::docker::{
    Container, DockerError, EngineAnswer, Filters, Host, LogSource, Port, TlsFiles,
};
use crate::capability::Capability;
use crate::caps::events::Events;
use crate::caps::http_out::HttpOut;
use crate::caps::{CallCx, Caller, OpenStream, Opened};
use crate::store::Store;

/// `name[:tag]` into name and tag (`latest` when absent); a `:` inside
/// the registry's `host:port` is not a tag.
pub(super) fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

pub(super) fn filter_map(filters: Filters) -> Option<HashMap<String, Vec<String>>> {
    (!filters.is_empty()).then(|| filters.into_iter().collect())
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

pub(super) fn parse<T: serde::de::DeserializeOwned>(
    what: &str,
    text: &str,
) -> Result<T, DockerError> {
    serde_json::from_str(text).map_err(|e| DockerError::Invalid(format!("{what}: {e}")))
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

impl CallCx {
    pub fn docker(&mut self) -> DockerView<'_> {
        let (caller, env, _, opened) = self.split_streams();
        DockerView {
            caller,
            docker: &env.docker,
            http: &env.http,
            events: &env.events,
            db: &env.db,
            opened,
        }
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

    /// Run bollard's `op` on `endpoint`'s engine within this call's
    /// deadline. The future borrows nothing of the store's state.
    pub(super) fn on_engine<T, F, Fut>(
        &self,
        endpoint: &str,
        op: F,
    ) -> impl Future<Output = Result<T, DockerFailure>> + Send + 'static
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
    ) -> Result<String, DockerFailure> {
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
    ) -> Result<String, DockerFailure> {
        self.changes();
        let body: bollard::models::ContainerCreateBody = match parse("create body", &body) {
            Ok(body) => body,
            Err(e) => return Err(e.into()),
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

    async fn container_start(&mut self, endpoint: String, id: String) -> Result<(), DockerFailure> {
        self.changes();
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
    ) -> Result<(), DockerFailure> {
        self.changes();
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
    ) -> Result<(), DockerFailure> {
        self.changes();
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
    ) -> Result<(), DockerFailure> {
        self.changes();
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
    ) -> Result<(), DockerFailure> {
        self.changes();
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
    ) -> Result<(), DockerFailure> {
        self.changes();
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
    ) -> Result<String, DockerFailure> {
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
        let options = bollard::models::ExecConfig {
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(tty),
            cmd: Some(cmd),
            ..Default::default()
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(api.create_exec(&id, options).await?.id)
        })
        .await
    }

    async fn image_list(
        &mut self,
        endpoint: String,
        filters: Filters,
    ) -> Result<String, DockerFailure> {
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
    ) -> Result<String, DockerFailure> {
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.inspect_image(&name).await?))
        })
        .await
    }

    async fn image_pull(&mut self, endpoint: String, image: String) -> Result<(), DockerFailure> {
        self.changes();
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
    ) -> Result<String, DockerFailure> {
        self.changes();
        let body: bollard::models::NetworkCreateRequest = match parse("network body", &body) {
            Ok(body) => body,
            Err(e) => return Err(e.into()),
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(api.create_network(body).await?.id)
        })
        .await
    }

    async fn network_remove(&mut self, endpoint: String, id: String) -> Result<(), DockerFailure> {
        self.changes();
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
    ) -> Result<String, DockerFailure> {
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
    ) -> Result<String, DockerFailure> {
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
    ) -> Result<String, DockerFailure> {
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.inspect_service(&id, None).await?))
        })
        .await
    }

    async fn service_create(
        &mut self,
        endpoint: String,
        spec: String,
    ) -> Result<String, DockerFailure> {
        self.changes();
        let spec: bollard::models::ServiceSpec = match parse("service spec", &spec) {
            Ok(spec) => spec,
            Err(e) => return Err(e.into()),
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
    ) -> Result<(), DockerFailure> {
        self.changes();
        let spec: bollard::models::ServiceSpec = match parse("service spec", &spec) {
            Ok(spec) => spec,
            Err(e) => return Err(e.into()),
        };
        let Ok(version) = i32::try_from(version) else {
            return Err(
                DockerError::Invalid(format!("service version {version} is out of range")).into(),
            );
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

    async fn service_remove(&mut self, endpoint: String, id: String) -> Result<(), DockerFailure> {
        self.changes();
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
    ) -> Result<String, DockerFailure> {
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
    ) -> Result<String, DockerFailure> {
        let options = q::ListNodesOptions {
            filters: filter_map(filters),
        };
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.list_nodes(Some(options)).await?))
        })
        .await
    }

    async fn swarm_inspect(&mut self, endpoint: String) -> Result<String, DockerFailure> {
        self.on_engine(&endpoint, |api| async move {
            Ok(json(&api.inspect_swarm().await?))
        })
        .await
    }

    async fn info(&mut self, endpoint: String) -> Result<String, DockerFailure> {
        self.on_engine(&endpoint, |api| async move { Ok(json(&api.info().await?)) })
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
        self.on_engine(&endpoint, |api| async move { api.ping().await })
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
