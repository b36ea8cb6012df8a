//! The stack engine both surfaces share: runs a service's desired state on
//! a Docker endpoint, as a Swarm service when the endpoint is a swarm
//! manager and as labelled containers otherwise.
//!
//! Swarm mode follows `docker stack deploy`: one overlay network
//! `STACK_default`, services named `STACK_SERVICE` with the short name as
//! network alias (so links resolve by name), and the
//! `com.docker.stack.namespace` label. Services resolve by DNS round robin
//! and publish ports in host mode (no routing mesh), so engines run
//! without iptables too. Container mode follows compose: one
//! bridge network, containers `STACK_SERVICE-N` with the same aliases.

use berth_sdk::docker::{self, Container, DockerError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Label naming the service (its uuid) a container or Swarm service runs.
pub const SERVICE_LABEL: &str = "berth.stacks.service";
/// Label giving a container's replica number (container mode).
const INDEX_LABEL: &str = "berth.stacks.index";
/// The stack label `docker stack deploy` sets.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// A published or exposed port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortSpec {
    pub inner_port: u16,
    #[serde(default)]
    pub outer_port: Option<u16>,
    #[serde(default = "tcp")]
    pub protocol: String,
}

fn tcp() -> String {
    "tcp".into()
}

/// What one service should run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub image: String,
    /// CMD, already split into words.
    #[serde(default)]
    pub command: Vec<String>,
    /// ENTRYPOINT, already split.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub privileged: bool,
    /// Restart the service's containers when they exit.
    #[serde(default = "yes")]
    pub restart: bool,
}

fn yes() -> bool {
    true
}

/// Where a service runs and what it is called there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Placement {
    /// Docker endpoint name (see the `docker` capability).
    pub endpoint: String,
    /// Swarm service (true) or labelled containers.
    pub swarm: bool,
    /// Stack name, when the service belongs to one.
    pub namespace: Option<String>,
    /// Short service name (network alias).
    pub name: String,
    /// The service's uuid, its label value.
    pub uuid: String,
    /// Network aliases: the short name and the aliases siblings link by.
    pub aliases: Vec<String>,
}

impl Placement {
    /// The engine-side name: `STACK_SERVICE` or the short name.
    pub fn full_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}_{}", self.name),
            None => self.name.clone(),
        }
    }

    fn network(&self) -> Option<String> {
        self.namespace.as_ref().map(|ns| format!("{ns}_default"))
    }

    fn labels(&self) -> serde_json::Map<String, Value> {
        let mut labels = serde_json::Map::new();
        labels.insert(SERVICE_LABEL.into(), json!(self.uuid));
        if let Some(ns) = &self.namespace {
            labels.insert(NAMESPACE_LABEL.into(), json!(ns));
            if !self.swarm {
                labels.insert("com.docker.compose.project".into(), json!(ns));
                labels.insert("com.docker.compose.service".into(), json!(self.name));
            }
        }
        labels
    }

    fn filter(&self) -> docker::Filters {
        vec![(
            "label".to_string(),
            vec![format!("{SERVICE_LABEL}={}", self.uuid)],
        )]
    }
}

/// Whether `endpoint` is a swarm manager (services run as Swarm services).
pub fn is_swarm_manager(endpoint: &str) -> Result<bool, DockerError> {
    let info: Value = serde_json::from_str(&docker::info(endpoint)?).unwrap_or_default();
    Ok(info["Swarm"]["ControlAvailable"].as_bool() == Some(true))
}

/// Create the stack's network unless it exists.
fn ensure_network(p: &Placement) -> Result<Option<String>, DockerError> {
    let Some(name) = p.network() else {
        return Ok(None);
    };
    let existing: Value = serde_json::from_str(&docker::network_list(
        &p.endpoint,
        &[("name".to_string(), vec![name.clone()])],
    )?)
    .unwrap_or_default();
    let exists = existing
        .as_array()
        .is_some_and(|nets| nets.iter().any(|n| n["Name"] == json!(name)));
    if !exists {
        let ns = p.namespace.clone().unwrap_or_default();
        let body = json!({
            "Name": name,
            "Driver": if p.swarm { "overlay" } else { "bridge" },
            "Attachable": p.swarm,
            "Labels": { NAMESPACE_LABEL: ns },
        });
        docker::network_create(&p.endpoint, &body.to_string())?;
    }
    Ok(Some(name))
}

/// Remove the stack's network (after its services are gone); a network
/// still in use or already gone is left alone.
pub fn remove_network(endpoint: &str, namespace: &str) {
    let _ = docker::network_remove(endpoint, &format!("{namespace}_default"));
}

fn env_list(spec: &Spec) -> Vec<String> {
    spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The Swarm service spec for `p` running `spec` with `replicas`.
fn service_spec(p: &Placement, spec: &Spec, replicas: u32, network: Option<&str>) -> Value {
    let labels = p.labels();
    let mut container = json!({
        "Image": spec.image,
        "Env": env_list(spec),
        "Labels": labels,
    });
    if !spec.entrypoint.is_empty() {
        container["Command"] = json!(spec.entrypoint);
    }
    if !spec.command.is_empty() {
        container["Args"] = json!(spec.command);
    }
    if let Some(dir) = &spec.working_dir {
        container["Dir"] = json!(dir);
    }
    let mut task = json!({
        "ContainerSpec": container,
        "RestartPolicy": { "Condition": if spec.restart { "any" } else { "none" } },
    });
    if let Some(net) = network {
        task["Networks"] = json!([{ "Target": net, "Aliases": p.aliases }]);
    }
    let ports: Vec<Value> = spec
        .ports
        .iter()
        .filter(|port| port.outer_port.is_some())
        .map(|port| {
            json!({
                "Protocol": port.protocol,
                "TargetPort": port.inner_port,
                "PublishedPort": port.outer_port,
                "PublishMode": "host",
            })
        })
        .collect();
    json!({
        "Name": p.full_name(),
        "Labels": labels,
        "TaskTemplate": task,
        "Mode": { "Replicated": { "Replicas": replicas } },
        // DNS round robin and host-mode ports: no virtual IP, so no
        // load-balancer rules (engines without iptables run it too).
        "EndpointSpec": { "Mode": "dnsrr", "Ports": ports },
    })
}

/// The Swarm service running `p`, as (id, version, spec).
fn swarm_service(p: &Placement) -> Result<Option<(String, u64, Value)>, DockerError> {
    let list: Value =
        serde_json::from_str(&docker::service_list(&p.endpoint, &p.filter())?).unwrap_or_default();
    Ok(list.as_array().and_then(|a| a.first()).map(|s| {
        (
            s["ID"].as_str().unwrap_or_default().to_string(),
            s["Version"]["Index"].as_u64().unwrap_or_default(),
            s["Spec"].clone(),
        )
    }))
}

/// Run `spec` with `replicas` replicas, creating what is missing and
/// updating what runs; `force` restarts every replica (redeploy).
pub fn deploy(p: &Placement, spec: &Spec, replicas: u32, force: bool) -> Result<(), DockerError> {
    let network = ensure_network(p)?;
    if p.swarm {
        let mut wanted = service_spec(p, spec, replicas, network.as_deref());
        match swarm_service(p)? {
            None => {
                docker::service_create(&p.endpoint, &wanted.to_string())?;
            }
            Some((id, version, current)) => {
                let force_update = current["TaskTemplate"]["ForceUpdate"].as_u64().unwrap_or(0);
                wanted["TaskTemplate"]["ForceUpdate"] = json!(force_update + u64::from(force));
                docker::service_update(&p.endpoint, &id, version, &wanted.to_string())?;
            }
        }
        return Ok(());
    }
    let mut existing = containers(p)?;
    if force {
        for c in &existing {
            docker::container_remove(&p.endpoint, &c.id, true, false)?;
        }
        existing.clear();
    }
    // Remove replicas above the count, highest first.
    for c in existing.iter().filter(|c| index_of(c) > replicas) {
        docker::container_remove(&p.endpoint, &c.id, true, false)?;
    }
    for i in 1..=replicas {
        match existing.iter().find(|c| index_of(c) == i) {
            Some(c) if c.state != "running" => docker::container_start(&p.endpoint, &c.id)?,
            Some(_) => {}
            None => {
                let id = create_container(p, spec, i, network.as_deref())?;
                if let Err(e) = docker::container_start(&p.endpoint, &id) {
                    let _ = docker::container_remove(&p.endpoint, &id, true, false);
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

fn index_of(c: &Container) -> u32 {
    c.labels
        .iter()
        .find(|(k, _)| k == INDEX_LABEL)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

fn create_container(
    p: &Placement,
    spec: &Spec,
    index: u32,
    network: Option<&str>,
) -> Result<String, DockerError> {
    let mut labels = p.labels();
    labels.insert(INDEX_LABEL.into(), json!(index.to_string()));
    let exposed: serde_json::Map<String, Value> = spec
        .ports
        .iter()
        .map(|port| (format!("{}/{}", port.inner_port, port.protocol), json!({})))
        .collect();
    let bindings: serde_json::Map<String, Value> = spec
        .ports
        .iter()
        .filter_map(|port| {
            let outer = port.outer_port?;
            Some((
                format!("{}/{}", port.inner_port, port.protocol),
                json!([{ "HostPort": outer.to_string() }]),
            ))
        })
        .collect();
    let mut body = json!({
        "Image": spec.image,
        "Env": env_list(spec),
        "Labels": labels,
        "ExposedPorts": exposed,
        "HostConfig": {
            "PortBindings": bindings,
            "Privileged": spec.privileged,
            "RestartPolicy": { "Name": if spec.restart { "unless-stopped" } else { "no" } },
        },
    });
    if !spec.command.is_empty() {
        body["Cmd"] = json!(spec.command);
    }
    if !spec.entrypoint.is_empty() {
        body["Entrypoint"] = json!(spec.entrypoint);
    }
    if let Some(dir) = &spec.working_dir {
        body["WorkingDir"] = json!(dir);
    }
    if let Some(net) = network {
        body["HostConfig"]["NetworkMode"] = json!(net);
        body["NetworkingConfig"] = json!({ "EndpointsConfig": { net: { "Aliases": p.aliases } } });
    }
    let name = format!("{}-{index}", p.full_name());
    docker::container_create(&p.endpoint, Some(&name), &body.to_string())
}

/// Change the replica count of a running service.
pub fn scale(p: &Placement, spec: &Spec, replicas: u32) -> Result<(), DockerError> {
    deploy(p, spec, replicas, false)
}

/// Stop every replica. A Swarm service is removed (start creates it
/// again from the stored spec): scaling to 0 and back leaves tasks stuck
/// in `remove` on some engines. Containers are stopped and kept.
pub fn stop(p: &Placement, timeout_secs: u32) -> Result<(), DockerError> {
    if p.swarm {
        return terminate(p);
    }
    for c in containers(p)?.iter().filter(|c| c.state == "running") {
        docker::container_stop(&p.endpoint, &c.id, Some(timeout_secs))?;
    }
    Ok(())
}

/// Remove everything the service runs.
pub fn terminate(p: &Placement) -> Result<(), DockerError> {
    if p.swarm {
        if let Some((id, _, _)) = swarm_service(p)? {
            match docker::service_remove(&p.endpoint, &id) {
                Err(e) if docker::engine_status(&e) != Some(404) => return Err(e),
                _ => {}
            }
        }
        return Ok(());
    }
    for c in containers(p)? {
        match docker::container_remove(&p.endpoint, &c.id, true, false) {
            Err(e) if docker::engine_status(&e) != Some(404) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The containers running the service (Swarm task containers included).
pub fn containers(p: &Placement) -> Result<Vec<Container>, DockerError> {
    docker::container_list(&p.endpoint, true, &p.filter())
}

/// Every container of every service on `endpoint`.
pub fn all_containers(endpoint: &str) -> Result<Vec<Container>, DockerError> {
    docker::container_list(
        endpoint,
        true,
        &[("label".to_string(), vec![SERVICE_LABEL.to_string()])],
    )
}

/// The service uuid a container belongs to.
pub fn service_of(c: &Container) -> Option<&str> {
    c.labels
        .iter()
        .find(|(k, _)| k == SERVICE_LABEL)
        .map(|(_, v)| v.as_str())
}
