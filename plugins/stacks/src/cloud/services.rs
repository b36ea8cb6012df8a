//! Services.

use berth_sdk::docker::{self, Container};
use berth_sdk::{HttpResult, Request, Response};
use serde_json::{Value, json};

use crate::cloud::actions::act;
use crate::cloud::keys::Caller;
use crate::cloud::paging::{page, passes};
use crate::cloud::render::{container_name, render_service, service_json};
use crate::cloud::{engine_error, fail, logs};
use crate::engine;
use crate::model::{self, Op, SERVICE_URI, Service, Stack, State};
use crate::stackfile::{self, Def};

/// A service body (Docker Cloud's keys, or a stackfile's) as a [`Def`]
/// plus the fields kept as given.
pub(super) fn body_to_def(
    v: &Value,
    default_name: Option<&str>,
) -> Result<(Def, serde_json::Map<String, Value>), String> {
    let obj = v.as_object().ok_or("a service is a JSON object")?;
    let image = obj
        .get("image")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or("image: this field is required")?;
    let name = match obj.get("name").and_then(Value::as_str) {
        Some(n) => n.to_string(),
        None => match default_name {
            Some(n) => n.to_string(),
            None => image
                .rsplit('/')
                .next()
                .unwrap_or(image)
                .split(':')
                .next()
                .unwrap_or(image)
                .to_string(),
        },
    };
    stackfile::check_name("service", &name)?;
    let mut yaml_keys = serde_json::Map::new();
    yaml_keys.insert("image".into(), json!(image));
    if let Some(c) = obj.get("run_command").or(obj.get("command")) {
        yaml_keys.insert("command".into(), c.clone());
    }
    if let Some(e) = obj.get("entrypoint").filter(|e| !e.is_null() && *e != "") {
        yaml_keys.insert("entrypoint".into(), e.clone());
    }
    if let Some(env) = obj.get("container_envvars") {
        let list: Vec<String> = env
            .as_array()
            .ok_or("container_envvars: a list of {key, value}")?
            .iter()
            .map(|e| {
                let k = e["key"]
                    .as_str()
                    .ok_or("container_envvars: `key` is required")?;
                let v = match &e["value"] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                Ok::<_, String>(format!("{k}={v}"))
            })
            .collect::<Result<_, _>>()?;
        yaml_keys.insert("environment".into(), json!(list));
    } else if let Some(env) = obj.get("environment") {
        yaml_keys.insert("environment".into(), env.clone());
    }
    if let Some(ports) = obj.get("container_ports") {
        let list: Vec<String> = ports
            .as_array()
            .ok_or("container_ports: a list of {protocol, inner_port, outer_port}")?
            .iter()
            .map(|p| {
                let inner = p["inner_port"]
                    .as_u64()
                    .ok_or("container_ports: `inner_port` is required")?;
                let proto = p["protocol"].as_str().unwrap_or("tcp");
                Ok::<_, String>(match p["outer_port"].as_u64() {
                    Some(o) => format!("{o}:{inner}/{proto}"),
                    None if p["published"] == json!(true) => {
                        return Err("container_ports: a published port needs `outer_port`".into());
                    }
                    None => format!("{inner}/{proto}"),
                })
            })
            .collect::<Result<_, _>>()?;
        yaml_keys.insert("ports".into(), json!(list));
    } else if let Some(p) = obj.get("ports") {
        yaml_keys.insert("ports".into(), p.clone());
    }
    if let Some(links) = obj.get("linked_to_service") {
        let list: Vec<String> = links
            .as_array()
            .ok_or("linked_to_service: a list of {to_service, name}")?
            .iter()
            .map(|l| {
                let to = l["to_service"]
                    .as_str()
                    .ok_or("linked_to_service: `to_service` is required")?;
                // A sibling's name, or a service uri resolved to its name.
                let target = if let Some(rest) = to.strip_prefix(SERVICE_URI) {
                    let uuid = rest.trim_end_matches('/');
                    model::load_service(uuid)
                        .ok()
                        .flatten()
                        .map(|s| s.name)
                        .ok_or(format!("linked_to_service: no service {to}"))?
                } else {
                    to.to_string()
                };
                let alias = l["name"].as_str().unwrap_or(&target).to_string();
                Ok::<_, String>(format!("{target}:{alias}"))
            })
            .collect::<Result<_, _>>()?;
        yaml_keys.insert("links".into(), json!(list));
    } else if let Some(l) = obj.get("links") {
        yaml_keys.insert("links".into(), l.clone());
    }
    for k in [
        "target_num_containers",
        "roles",
        "autorestart",
        "privileged",
        "working_dir",
    ] {
        if let Some(v) = obj.get(k).filter(|v| !v.is_null()) {
            yaml_keys.insert(k.into(), v.clone());
        }
    }
    let cloud: stackfile::CloudService =
        serde_json::from_value(Value::Object(yaml_keys)).map_err(|e| format!("{name}: {e}"))?;
    let def = cloud.into_def(&name)?;
    let mut extra = serde_json::Map::new();
    for k in [
        "autodestroy",
        "sequential_deployment",
        "deployment_strategy",
        "tags",
        "autoredeploy",
        "net",
        "pid",
        "bindings",
    ] {
        if let Some(v) = obj.get(k) {
            extra.insert(k.into(), v.clone());
        }
    }
    Ok((def, extra))
}

pub(super) fn body(req: &Request) -> Result<Value, Response> {
    if req.body().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(req.body()).map_err(|e| fail(400, &format!("invalid JSON body: {e}")))
}

pub(super) fn find_service(req: &Request) -> Result<Service, Response> {
    let uuid = req.param("uuid").unwrap_or_default();
    model::load_service(uuid)?.ok_or_else(|| fail(404, "Not found"))
}

pub fn service_list(req: &Request) -> HttpResult {
    let services: Vec<Service> = model::scan("svc/")?;
    let mut all: Vec<Container> = Vec::new();
    let mut endpoints: Vec<&str> = services.iter().map(|s| s.endpoint.as_str()).collect();
    endpoints.sort_unstable();
    endpoints.dedup();
    for e in endpoints {
        // An unreachable engine lists no containers rather than failing.
        all.extend(engine::all_containers(e).unwrap_or_default());
    }
    let stacks: Vec<Stack> = model::scan("stack/")?;
    let mut objects = Vec::new();
    let mut sorted = services;
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then(a.name.cmp(&b.name)));
    for s in &sorted {
        let mine: Vec<&Container> = all
            .iter()
            .filter(|c| engine::service_of(c) == Some(s.uuid.as_str()))
            .collect();
        let mut v = render_service(s, &mine);
        v["stack__name"] = json!(
            s.stack
                .as_ref()
                .and_then(|u| stacks.iter().find(|st| &st.uuid == u))
                .map(|st| st.name.clone())
        );
        if passes(req, &v, &["uuid", "state", "name", "stack", "stack__name"])? {
            v.as_object_mut().map(|o| o.remove("stack__name"));
            objects.push(v);
        }
    }
    page(req, SERVICE_URI, objects)
}

pub fn service_create(req: &Request) -> HttpResult {
    let v = body(req)?;
    let (def, extra) = body_to_def(&v, None).map_err(|e| fail(400, &e))?;
    let taken = model::scan::<Service>("svc/")?
        .into_iter()
        .any(|s| s.stack.is_none() && s.state != State::Terminated && s.name == def.name);
    if taken {
        return Err(fail(
            409,
            &format!("A service with the name {} already exists", def.name),
        ));
    }
    let endpoint = model::cloud_endpoint();
    let swarm = engine::is_swarm_manager(&endpoint).map_err(engine_error)?;
    let mut s = Service {
        uuid: model::uuid4()?,
        name: def.name.clone(),
        nickname: v["nickname"].as_str().unwrap_or(&def.name).to_string(),
        stack: None,
        namespace: None,
        endpoint,
        swarm,
        def,
        extra,
        state: State::NotRunning,
        created: model::now(),
        started: None,
        stopped: None,
        destroyed: None,
        aliases: Vec::new(),
        role_key: None,
        role_env: Vec::new(),
    };
    model::apply_roles(&mut s)?;
    model::save_service(&s)?;
    model::emit(
        "service",
        "create",
        &s.uri(),
        &s.uuid,
        s.state.as_str(),
        &[],
    );
    Ok(Response::json(201, &service_json(&s)))
}

pub fn service_get(req: &Request) -> HttpResult {
    Ok(Response::json(200, &service_json(&find_service(req)?)))
}

pub fn service_update(req: &Request) -> HttpResult {
    let mut s = find_service(req)?;
    if s.state == State::Terminated {
        return Err(fail(409, "Cannot update a terminated service"));
    }
    let patch = body(req)?;
    let patch = patch
        .as_object()
        .ok_or_else(|| fail(400, "a JSON object"))?;
    if patch.contains_key("name") && patch["name"] != json!(s.name) {
        return Err(fail(400, "name: a service cannot be renamed"));
    }
    // Merge the patch over the service's current body and re-validate.
    let mut current = render_service(&s, &[]);
    current["image"] = json!(s.def.image);
    current["run_command"] = json!(s.def.command);
    for (k, v) in patch {
        current[k] = v.clone();
    }
    if !patch.contains_key("linked_to_service") {
        let links: Vec<String> = s
            .def
            .links
            .iter()
            .map(|(t, a)| format!("{t}:{a}"))
            .collect();
        current
            .as_object_mut()
            .map(|o| o.remove("linked_to_service"));
        current["links"] = json!(links);
    }
    let (def, extra) = body_to_def(&current, Some(&s.name)).map_err(|e| fail(400, &e))?;
    s.def = def;
    for (k, v) in extra {
        s.extra.insert(k, v);
    }
    model::apply_roles(&mut s)?;
    model::save_service(&s)?;
    model::emit(
        "service",
        "update",
        &s.uri(),
        &s.uuid,
        s.state.as_str(),
        &[],
    );
    Ok(Response::json(200, &service_json(&s)))
}

pub(super) fn service_op(req: &Request, caller: &Caller, op: Op) -> HttpResult {
    let user = caller.0.clone();
    let mut s = find_service(req)?;
    model::follow(&s.endpoint);
    let uri = s.uri();
    let label = format!("Service {}", capitalise(op.name()));
    act(req, &user, "Service", &label, &uri, Some(op), || {
        model::run_service(&mut s, op)?;
        Ok(service_json(&s))
    })
}

pub(super) fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

pub fn service_start(req: &Request, caller: &Caller) -> HttpResult {
    service_op(req, caller, Op::Start)
}
pub fn service_stop(req: &Request, caller: &Caller) -> HttpResult {
    service_op(req, caller, Op::Stop)
}
pub fn service_scale(req: &Request, caller: &Caller) -> HttpResult {
    service_op(req, caller, Op::Scale)
}
pub fn service_redeploy(req: &Request, caller: &Caller) -> HttpResult {
    service_op(req, caller, Op::Redeploy)
}
pub fn service_terminate(req: &Request, caller: &Caller) -> HttpResult {
    service_op(req, caller, Op::Terminate)
}

pub fn service_logs(req: &Request) -> HttpResult {
    let s = find_service(req)?;
    let sources: Vec<docker::LogSource> = engine::containers(&s.placement())
        .map_err(engine_error)?
        .iter()
        .map(|c| docker::LogSource {
            id: c.id.clone(),
            fields: json!({ "type": "log", "source": container_name(&s, c) }).to_string(),
        })
        .collect();
    logs(req, &s.endpoint, &sources)
}
