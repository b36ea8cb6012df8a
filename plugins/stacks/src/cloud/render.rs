//! Services, containers and stacks as Docker Cloud objects.

use berth_sdk::docker::Container;
use serde_json::{Value, json};

use crate::engine;
use crate::model::{self, CONTAINER_URI, SERVICE_URI, STACK_URI, Service, Stack, State};

/// A stored date (RFC 3339) as Docker Cloud wrote dates, RFC 2822:
/// `Sun, 6 Apr 2014 18:11:17 +0000` (what its CLI parses).
pub(super) fn date(stored: &str) -> String {
    berth_sdk::time::parse_rfc3339(stored)
        .map_or_else(|| stored.to_string(), berth_sdk::time::format_rfc2822)
}

/// [`date`] of a date that may not have happened.
pub(super) fn date_of(stored: &Option<String>) -> Option<String> {
    stored.as_deref().map(date)
}

/// A container's Docker Cloud state, from the engine's.
pub(super) fn container_state(engine_state: &str) -> State {
    match engine_state {
        "running" => State::Running,
        "created" | "restarting" => State::Starting,
        "removing" => State::Terminating,
        "dead" => State::Terminated,
        _ => State::Stopped,
    }
}

pub(super) fn container_name(s: &Service, c: &Container) -> String {
    let name = c
        .names
        .first()
        .map(|n| n.trim_start_matches('/'))
        .unwrap_or_default();
    let rest = name
        .strip_prefix(&s.placement().full_name())
        .unwrap_or(name);
    let slot = rest
        .trim_start_matches(['-', '.'])
        .split('.')
        .next()
        .unwrap_or_default();
    format!("{}-{slot}", s.name)
}

/// A container as Docker Cloud showed it; `node` is the resource uri of
/// the node it runs on.
pub(super) fn render_container(s: &Service, c: &Container, node: &str) -> Value {
    let uuid = model::container_uuid(&c.id);
    let ports: Vec<Value> = c
        .ports
        .iter()
        .map(|p| {
            json!({
                "protocol": p.protocol,
                "inner_port": p.private_port,
                "outer_port": p.public_port,
                "published": p.public_port.is_some(),
            })
        })
        .collect();
    let inherited = inherited(s);
    let created = berth_sdk::time::format_rfc2822(c.created.max(0) as u64);
    let exit_code = exit_code_of(&c.status);
    json!({
        "uuid": uuid,
        "resource_uri": format!("{CONTAINER_URI}{uuid}/"),
        "name": container_name(s, c),
        "state": container_state(&c.state),
        "service": s.uri(),
        "stack": s.stack.as_ref().map(|u| format!("{STACK_URI}{u}/")),
        "image_name": c.image,
        "docker_id": c.id,
        "status": c.status,
        "container_ports": ports,
        "created_datetime": created,
        "deployed_datetime": created,
        "started_datetime": (c.state == "running").then_some(created),
        "stopped_datetime": Value::Null,
        "destroyed_datetime": Value::Null,
        "exit_code": exit_code,
        "exit_code_message": exit_code.map(exit_message),
        "node": node,
        "image_tag": s.def.image,
        "run_command": c.command,
        "entrypoint": s.def.entrypoint,
        "working_dir": s.def.working_dir.clone().unwrap_or_else(|| "/".into()),
        "container_envvars": inherited["container_envvars"],
        "link_variables": {},
        "linked_to_container": [],
        "bindings": [],
        "roles": s.def.roles,
        "autodestroy": inherited["autodestroy"],
        "autorestart": inherited["autorestart"],
        "privileged": s.def.privileged,
        "cpu_shares": inherited["cpu_shares"],
        "memory": inherited["memory"],
        "net": inherited["net"],
        "pid": inherited["pid"],
        "private_ip": Value::Null,
        "public_dns": inherited["public_dns"],
        "last_metric": {},
        "synchronized": true,
    })
}

/// `c`'s exit code, from its status (`Exited (137) 2 seconds ago`).
fn exit_code_of(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.parse().ok()
}

/// What an exit code means, as Docker Cloud said it.
fn exit_message(code: i64) -> &'static str {
    match code {
        0 => "Exit code 0 (Success)",
        137 => "Exit code 137 (Killed)",
        143 => "Exit code 143 (Terminated)",
        _ => "Exit code (Failure)",
    }
}

/// What only inspecting a container tells, over its rendering: when it
/// started and stopped, its exit code and private address.
pub(super) fn add_inspected(v: &mut Value, inspect: &Value) {
    let state = &inspect["State"];
    let at = |key: &str| {
        state[key]
            .as_str()
            .and_then(berth_sdk::time::parse_rfc3339)
            .filter(|secs| *secs > 0)
            .map(berth_sdk::time::format_rfc2822)
    };
    let running = state["Running"].as_bool().unwrap_or(false);
    v["started_datetime"] = json!(at("StartedAt"));
    v["stopped_datetime"] = json!(at("FinishedAt").filter(|_| !running));
    if let Some(code) = state["ExitCode"].as_i64().filter(|_| !running) {
        v["exit_code"] = json!(code);
        v["exit_code_message"] = json!(exit_message(code));
    }
    let networks = inspect["NetworkSettings"]["Networks"].as_object();
    let ip = networks
        .into_iter()
        .flat_map(|n| n.values())
        .filter_map(|n| n["IPAddress"].as_str())
        .find(|ip| !ip.is_empty());
    v["private_ip"] = json!(ip);
}

pub(super) fn render_service(s: &Service, containers: &[&Container]) -> Value {
    let running = containers.iter().filter(|c| c.state == "running").count();
    let ports: Vec<Value> = s
        .def
        .ports
        .iter()
        .map(|p| {
            json!({
                "protocol": p.protocol,
                "inner_port": p.inner_port,
                "outer_port": p.outer_port,
                "published": p.outer_port.is_some(),
            })
        })
        .collect();
    let links: Vec<Value> = s
        .def
        .links
        .iter()
        .map(|(target, alias)| {
            json!({ "name": alias, "from_service": s.uri(), "to_service": target })
        })
        .collect();
    let (image_name, image_tag) = match s.def.image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
        _ => (s.def.image.clone(), "latest".into()),
    };
    let mut out = json!({
        "uuid": s.uuid,
        "resource_uri": s.uri(),
        "name": s.name,
        "nickname": s.nickname,
        "image_name": s.def.image,
        "image_tag": format!("{image_name}:{image_tag}"),
        "state": s.state,
        "synchronized": true,
        "stack": s.stack.as_ref().map(|u| format!("{STACK_URI}{u}/")),
        "target_num_containers": s.def.target_num_containers,
        "current_num_containers": containers.len(),
        "running_num_containers": running,
        "stopped_num_containers": containers.len() - running,
        "containers": containers.iter().map(|c| format!("{CONTAINER_URI}{}/", model::container_uuid(&c.id))).collect::<Vec<_>>(),
        "run_command": s.def.command,
        "entrypoint": s.def.entrypoint,
        "container_ports": ports,
        // What the containers get, by origin as the CLI reads it (`user`,
        // `image`, `tutum`): here the service's own variables.
        "calculated_envvars": s.def.env.iter().map(|(k, v)| json!({ "key": k, "value": v, "origin": "user" })).collect::<Vec<_>>(),
        "linked_to_service": links,
        "roles": s.def.roles,
        "privileged": s.def.privileged,
        "working_dir": s.def.working_dir.clone().unwrap_or_else(|| "/".into()),
        "created_datetime": date(&s.created),
        "started_datetime": date_of(&s.started),
        "stopped_datetime": date_of(&s.stopped),
        "destroyed_datetime": date_of(&s.destroyed),
        // Last started or redeployed (`service ps` shows it).
        "deployed_datetime": date_of(&s.started),
        "engine": { "endpoint": s.endpoint, "mode": if s.swarm { "swarm" } else { "containers" } },
    });
    // The original's fields this engine has no setting for, at the
    // original's defaults.
    let fixed = json!({
        "autoredeploy": false,
        "bindings": [],
        "deployment_strategy": "EMPTIEST_NODE",
        "sequential_deployment": false,
        "link_variables": {},
        "linked_from_service": [],
        "tags": [],
    });
    for (k, v) in fixed.as_object().into_iter().flatten() {
        out[k] = v.clone();
    }
    for (k, v) in inherited(s) {
        out[k] = v;
    }
    for (k, v) in &s.extra {
        out[k] = v.clone();
    }
    out
}

/// The settings a service's containers inherit from it, as the service
/// shows them (its stored extra fields win over the defaults).
fn inherited(s: &Service) -> serde_json::Map<String, Value> {
    let env: Vec<Value> = s
        .def
        .env
        .iter()
        .map(|(k, v)| json!({ "key": k, "value": v, "origin": "USER" }))
        .collect();
    let namespace = s.namespace.as_deref().unwrap_or("berth");
    let mut settings = serde_json::Map::new();
    for (k, v) in [
        ("container_envvars", json!(env)),
        (
            "autorestart",
            json!(s.def.autorestart.as_deref().unwrap_or("OFF")),
        ),
        ("autodestroy", json!("OFF")),
        ("cpu_shares", Value::Null),
        ("memory", Value::Null),
        ("net", json!("bridge")),
        ("pid", json!("none")),
        ("public_dns", json!(format!("{}.{namespace}", s.name))),
    ] {
        let v = s.extra.get(k).cloned().unwrap_or(v);
        settings.insert(k.to_string(), v);
    }
    settings
}

pub(super) fn render_stack(st: &Stack) -> Value {
    json!({
        "uuid": st.uuid,
        "resource_uri": st.uri(),
        "name": st.name,
        "nickname": st.nickname,
        "state": st.state,
        "synchronized": true,
        "services": st.services.iter().map(|u| format!("{SERVICE_URI}{u}/")).collect::<Vec<_>>(),
        "deployed_datetime": date_of(&st.deployed),
        "destroyed_datetime": date_of(&st.destroyed),
        "created_datetime": date(&st.created),
    })
}

pub(super) fn service_json(s: &Service) -> Value {
    let all = if s.state == State::Terminated {
        Vec::new()
    } else {
        engine::containers(&s.placement()).unwrap_or_default()
    };
    let mine: Vec<&Container> = all.iter().collect();
    render_service(s, &mine)
}
