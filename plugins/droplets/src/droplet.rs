//! Droplets: labelled containers on the configured Docker endpoint.
//!
//! Settings (`[plugins.droplets.settings]`): `endpoint`, `image`,
//! `command` (split on spaces), `ports` (comma-separated `PORT/PROTO`
//! published on `publish_ip` at a free host port), `stop_timeout_secs`.

use std::collections::BTreeMap;

use berth_sdk::docker::{self, Container, DockerError};
use berth_sdk::{HttpResult, Request, Response, config};
use serde::Serialize;

use crate::fail;

/// The label every droplet carries; its value is the droplet's name.
const LABEL: &str = "berth.droplet";

fn setting(key: &str, default: &str) -> String {
    config::get(key)
        .ok()
        .flatten()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn endpoint() -> String {
    setting("endpoint", "local")
}

/// A Docker failure in the surface's format: 400/900 with the engine's text.
fn backend(e: DockerError) -> Response {
    fail(400, 900, &docker::error_text(&e))
}

#[derive(Serialize)]
struct Droplet {
    id: String,
    name: String,
    created: String,
    status: String,
    ports: BTreeMap<String, Published>,
}

#[derive(Serialize)]
struct Published {
    #[serde(rename = "type")]
    kind: String,
    from: From,
}

#[derive(Serialize)]
struct From {
    ip: String,
    port: u16,
}

fn droplet(c: Container) -> Droplet {
    let name = c
        .labels
        .iter()
        .find(|(k, _)| k == LABEL)
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut ports = BTreeMap::new();
    for p in c.ports {
        if let (Some(public), Some(ip)) = (p.public_port, p.ip) {
            ports
                .entry(p.private_port.to_string())
                .or_insert(Published {
                    kind: p.protocol,
                    from: From { ip, port: public },
                });
        }
    }
    Droplet {
        id: c.id.chars().take(12).collect(),
        name,
        created: berth_sdk::time::format_rfc3339(c.created.max(0) as u64),
        status: c.state,
        ports,
    }
}

fn containers() -> Result<Vec<Container>, Response> {
    let mut list = docker::container_list(
        &endpoint(),
        true,
        &[("label".to_string(), vec![LABEL.to_string()])],
    )
    .map_err(backend)?;
    list.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    Ok(list)
}

/// Every droplet, oldest first: the answer of every droplet route.
fn listing() -> HttpResult {
    let list: Vec<Droplet> = containers()?.into_iter().map(droplet).collect();
    Ok(Response::json(200, &list))
}

/// The container of droplet `name`.
fn find(name: &str) -> Result<Container, Response> {
    containers()?
        .into_iter()
        .find(|c| c.labels.iter().any(|(k, v)| k == LABEL && v == name))
        .ok_or_else(|| fail(400, 900, &format!("Droplet `{name}` not found")))
}

pub fn list(_: &Request) -> HttpResult {
    listing()
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub fn add(req: &Request) -> HttpResult {
    let name = match crate::field(req, "name") {
        Some(name) => name,
        None => {
            let n = berth_sdk::kv::next_in_sequence("droplet")?;
            format!("droplet{n:02}")
        }
    };
    if !valid_name(&name) {
        return Err(fail(
            400,
            913,
            "name must start with a letter or digit and hold at most 63 letters, digits, `-`, `_` or `.`",
        ));
    }
    let ports: Vec<String> = setting("ports", "8080/tcp")
        .split(',')
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(|p| {
            if p.contains('/') {
                p.to_string()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect();
    let ip = setting("publish_ip", "127.0.0.1");
    let exposed: serde_json::Map<String, serde_json::Value> = ports
        .iter()
        .map(|p| (p.clone(), serde_json::json!({})))
        .collect();
    let bindings: serde_json::Map<String, serde_json::Value> = ports
        .iter()
        .map(|p| {
            (
                p.clone(),
                serde_json::json!([{ "HostIp": ip, "HostPort": "" }]),
            )
        })
        .collect();
    let command: Vec<String> = setting("command", "httpd -f -p 8080")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let body = serde_json::json!({
        "Image": setting("image", "busybox:latest"),
        "Cmd": command,
        "Labels": { LABEL: name },
        "ExposedPorts": exposed,
        "HostConfig": {
            "PortBindings": bindings,
            "RestartPolicy": { "Name": "unless-stopped" },
        },
    });
    let endpoint = endpoint();
    // The container is named after the droplet, so the engine's 409 is the
    // one check that a name is taken: no listing first.
    let id = docker::container_create(&endpoint, Some(&name), &body.to_string()).map_err(|e| {
        match docker::engine_status(&e) {
            Some(409) => fail(400, 914, "Name already taken"),
            _ => backend(e),
        }
    })?;
    if let Err(e) = docker::container_start(&endpoint, &id) {
        // Nothing half-created: a droplet that cannot start is removed.
        let _ = docker::container_remove(&endpoint, &id, true, true);
        return Err(backend(e));
    }
    listing()
}

fn stop_timeout() -> u32 {
    config::get_or("stop_timeout_secs", 5u32).unwrap_or(5)
}

pub fn stop(req: &Request) -> HttpResult {
    let c = find(req.param("droplet").unwrap_or_default())?;
    docker::container_stop(&endpoint(), &c.id, Some(stop_timeout())).map_err(backend)?;
    listing()
}

pub fn start(req: &Request) -> HttpResult {
    let c = find(req.param("droplet").unwrap_or_default())?;
    docker::container_start(&endpoint(), &c.id).map_err(backend)?;
    listing()
}

pub fn restart(req: &Request) -> HttpResult {
    let c = find(req.param("droplet").unwrap_or_default())?;
    docker::container_restart(&endpoint(), &c.id, Some(stop_timeout())).map_err(backend)?;
    listing()
}

pub fn delete(req: &Request) -> HttpResult {
    let c = find(req.param("droplet").unwrap_or_default())?;
    docker::container_remove(&endpoint(), &c.id, true, true).map_err(backend)?;
    listing()
}
