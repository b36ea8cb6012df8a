//! The Docker Cloud REST and stream API: `/api/app/v1/` and
//! `/api/audit/v1/`, Basic auth with `username:apikey`.

use base64::Engine as _;
use berth_sdk::docker::{self, Container};
use berth_sdk::{Framing, HttpResult, Request, Response, crypto, docker::DockerError, kv};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine;
use crate::model::{
    self, ACTION_URI, CONTAINER_URI, Failure, Op, SERVICE_URI, STACK_URI, Service, Stack,
};
use crate::stackfile::{self, Def};

/// Host-held HMAC key API keys are stored under.
const KEY_NAME: &str = "stacks-apikey";

/// The surface's error body.
pub fn fail(status: u16, text: &str) -> Response {
    Response::json(status, &json!({ "error": text }))
}

fn engine_error(e: DockerError) -> Response {
    match &e {
        DockerError::Unreachable(m) => fail(503, &format!("Docker engine unreachable: {m}")),
        DockerError::Engine(err) if err.status == 404 => fail(404, &err.message),
        DockerError::Engine(err) if err.status == 409 => fail(409, &err.message),
        DockerError::Engine(err) if err.status == 400 => fail(400, &err.message),
        _ => fail(500, &docker::error_text(&e)),
    }
}

fn failure(f: Failure) -> Response {
    match f {
        Failure::State(m) => fail(409, &m),
        Failure::Invalid(m) => fail(400, &m),
        Failure::Engine(e) => engine_error(e),
        Failure::Host(e) => Response::from(e),
    }
}

// ---- API keys -------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct ApiKey {
    user: String,
    created: String,
    /// The service this key was made for (`roles`), if any.
    #[serde(default)]
    service: Option<String>,
}

fn digest(user: &str, key: &str) -> Result<String, berth_sdk::Error> {
    let tag = crypto::sign(KEY_NAME, format!("{user}:{key}").as_bytes())?;
    Ok(tag.iter().map(|b| format!("{b:02x}")).collect())
}

/// Make an API key for `user`; returns (key, digest).
pub fn make_key(user: &str, service: Option<&str>) -> Result<(String, String), berth_sdk::Error> {
    let key = crypto::random_token(20)?;
    let d = digest(user, &key)?;
    kv::set_json(
        &format!("apikey/{d}"),
        &ApiKey {
            user: user.to_string(),
            created: model::now(),
            service: service.map(str::to_string),
        },
    )?;
    Ok((key, d))
}

/// `berth run stacks apikey:create USER` and friends.
pub fn admin(args: &[String]) -> Result<String, String> {
    match args.first().map(String::as_str) {
        Some("apikey:create") => {
            let user = args.get(1).ok_or("usage: apikey:create USER")?;
            stackfile::check_name("user", user)?;
            let (key, _) = make_key(user, None)?;
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
            Ok(format!(
                "user:   {user}\napikey: {key}\nAuthorization: Basic {auth}\n"
            ))
        }
        Some("apikey:list") => {
            let mut out = String::new();
            for entry in kv::scan("apikey/") {
                let (k, v) = entry?;
                let key: ApiKey = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
                let id = &k["apikey/".len()..][..12];
                let role = key.service.map(|s| format!(" (roles of service {s})"));
                out.push_str(&format!(
                    "{id}  {}  {}{}\n",
                    key.user,
                    key.created,
                    role.unwrap_or_default()
                ));
            }
            Ok(out)
        }
        Some("apikey:revoke") => {
            let user = args.get(1).ok_or("usage: apikey:revoke USER")?;
            let mut n = 0;
            let mut doomed = Vec::new();
            for entry in kv::scan("apikey/") {
                let (k, v) = entry?;
                let key: ApiKey = serde_json::from_slice(&v).map_err(|e| e.to_string())?;
                if &key.user == user {
                    doomed.push(k);
                }
            }
            for k in doomed {
                kv::delete(&k)?;
                n += 1;
            }
            Ok(format!("revoked {n} key(s) of {user}\n"))
        }
        _ => Err(
            "commands: apikey:create USER | apikey:list | apikey:revoke USER (Docker Cloud); \
             admin:reset-password USER (Portainer)"
                .into(),
        ),
    }
}

/// The user a request's `Authorization: Basic user:apikey` names, or 401.
/// The Docker Cloud user a request's API key names.
pub struct Caller(pub String);

pub fn authenticate(req: &Request) -> Result<Caller, Response> {
    let denied = || {
        fail(
            401,
            "Authentication credentials were not provided or are invalid",
        )
    };
    let header = req.header("authorization").ok_or_else(denied)?;
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
        .ok_or_else(denied)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| denied())?;
    let decoded = String::from_utf8(decoded).map_err(|_| denied())?;
    let (user, key) = decoded.split_once(':').ok_or_else(denied)?;
    let d = digest(user, key)?;
    match kv::get_json::<ApiKey>(&format!("apikey/{d}"))? {
        Some(k) if k.user == user => Ok(Caller(user.to_string())),
        _ => Err(denied()),
    }
}

/// `roles: ["global"]` gives the service an API key of its own, in
/// `DOCKERCLOUD_AUTH`, with the REST and stream hosts to use it on.
pub fn apply_roles(s: &mut Service) -> Result<(), berth_sdk::Error> {
    if !s.def.roles.iter().any(|r| r == "global") || s.role_key.is_some() {
        return Ok(());
    }
    let user = format!("service-{}", &s.uuid[..8]);
    let (key, d) = make_key(&user, Some(&s.uuid))?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"));
    s.role_key = Some(d);
    s.role_env = vec![("DOCKERCLOUD_AUTH".into(), format!("Basic {auth}"))];
    if let Some(url) = berth_sdk::config::get("public_url")?.filter(|u| !u.is_empty()) {
        let url = url.trim_end_matches('/');
        s.role_env
            .push(("DOCKERCLOUD_REST_HOST".into(), format!("{url}/")));
        let stream = url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1);
        s.role_env
            .push(("DOCKERCLOUD_STREAM_HOST".into(), format!("{stream}/")));
    }
    Ok(())
}

// ---- paging ---------------------------------------------------------------

fn page(req: &Request, base: &str, objects: Vec<Value>) -> HttpResult {
    let limit = req.query_as::<usize>("limit")?.unwrap_or(25).clamp(1, 1000);
    let offset = req.query_as::<usize>("offset")?.unwrap_or(0);
    let total = objects.len();
    let link = |offset: usize| {
        let mut q: Vec<String> = req
            .query_pairs()
            .iter()
            .filter(|(k, _)| k != "limit" && k != "offset")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        q.push(format!("limit={limit}"));
        q.push(format!("offset={offset}"));
        format!("{base}?{}", q.join("&"))
    };
    let next = (offset + limit < total).then(|| link(offset + limit));
    let previous = (offset > 0).then(|| link(offset.saturating_sub(limit)));
    let objects: Vec<Value> = objects.into_iter().skip(offset).take(limit).collect();
    Ok(Response::json(
        200,
        &json!({
            "meta": {
                "limit": limit,
                "next": next,
                "offset": offset,
                "previous": previous,
                "total_count": total,
            },
            "objects": objects,
        }),
    ))
}

/// Whether `obj` passes the request's filters (`field=value`,
/// `field__startswith=`, `a__b=` for the names this surface exposes).
fn passes(req: &Request, obj: &Value, allowed: &[&str]) -> Result<bool, Response> {
    for (k, v) in req.query_pairs() {
        if matches!(k.as_str(), "limit" | "offset" | "format") {
            continue;
        }
        let (field, op) = match k.split_once("__") {
            Some((f, "startswith")) => (f, "startswith"),
            Some(_) => (k.as_str(), "exact"),
            None => (k.as_str(), "exact"),
        };
        if !allowed.contains(&field) {
            return Err(fail(400, &format!("unknown filter `{k}`")));
        }
        let actual = match &obj[field] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        // A resource filter matches its uri or its uuid.
        let ok = match op {
            "startswith" => actual.starts_with(v.as_str()),
            _ => actual == *v || actual.trim_end_matches('/').ends_with(&format!("/{v}")),
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

// ---- rendering --------------------------------------------------------------

/// The Docker Cloud uuid of a container: its engine id's first 32 hex
/// digits, uuid-shaped (the engine resolves the prefix back).
pub fn container_uuid(id: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    )
}

fn container_state(engine_state: &str) -> &'static str {
    match engine_state {
        "running" => "Running",
        "created" | "restarting" => "Starting",
        "removing" => "Terminating",
        "dead" => "Terminated",
        _ => "Stopped",
    }
}

fn container_name(s: &Service, c: &Container) -> String {
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

fn render_container(s: &Service, c: &Container) -> Value {
    let uuid = container_uuid(&c.id);
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
        "created_datetime": berth_sdk::time::format_rfc3339(c.created.max(0) as u64),
        "node": Value::Null,
    })
}

fn render_service(s: &Service, containers: &[&Container]) -> Value {
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
    let env: Vec<Value> = s
        .def
        .env
        .iter()
        .map(|(k, v)| json!({ "key": k, "value": v, "origin": "USER" }))
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
        "containers": containers.iter().map(|c| format!("{CONTAINER_URI}{}/", container_uuid(&c.id))).collect::<Vec<_>>(),
        "run_command": s.def.command,
        "entrypoint": s.def.entrypoint,
        "container_ports": ports,
        "container_envvars": env,
        "linked_to_service": links,
        "roles": s.def.roles,
        "autorestart": s.def.autorestart.clone().unwrap_or_else(|| "OFF".into()),
        "privileged": s.def.privileged,
        "working_dir": s.def.working_dir.clone().unwrap_or_else(|| "/".into()),
        "created_datetime": s.created,
        "started_datetime": s.started,
        "stopped_datetime": s.stopped,
        "destroyed_datetime": s.destroyed,
        "public_dns": format!("{}.{}", s.name, s.namespace.clone().unwrap_or_else(|| "berth".into())),
        "engine": { "endpoint": s.endpoint, "mode": if s.swarm { "swarm" } else { "containers" } },
    });
    for (k, v) in &s.extra {
        out[k] = v.clone();
    }
    out
}

fn render_stack(st: &Stack) -> Value {
    json!({
        "uuid": st.uuid,
        "resource_uri": st.uri(),
        "name": st.name,
        "nickname": st.nickname,
        "state": st.state,
        "synchronized": true,
        "services": st.services.iter().map(|u| format!("{SERVICE_URI}{u}/")).collect::<Vec<_>>(),
        "deployed_datetime": st.deployed,
        "destroyed_datetime": st.destroyed,
        "created_datetime": st.created,
    })
}

fn service_json(s: &Service) -> Value {
    let all = if s.state == "Terminated" {
        Vec::new()
    } else {
        engine::containers(&s.placement()).unwrap_or_default()
    };
    let mine: Vec<&Container> = all.iter().collect();
    render_service(s, &mine)
}

// ---- actions ---------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Action {
    uuid: String,
    seq: u64,
    kind: String,
    action: String,
    method: String,
    path: String,
    user: String,
    user_agent: String,
    ip: String,
    state: String,
    start_date: String,
    end_date: Option<String>,
    object: String,
    body: String,
    logs: String,
    /// What to run again on retry.
    op: Option<Op>,
}

impl Action {
    fn uri(&self) -> String {
        format!("{ACTION_URI}{}/", self.uuid)
    }

    fn render(&self) -> Value {
        json!({
            "uuid": self.uuid,
            "resource_uri": self.uri(),
            "type": self.kind,
            "action": self.action,
            "method": self.method,
            "path": self.path,
            "user": self.user,
            "user_agent": self.user_agent,
            "ip": self.ip,
            "location": "",
            "state": self.state,
            "start_date": self.start_date,
            "end_date": self.end_date,
            "object": self.object,
            "body": self.body,
            "logs": self.logs,
            "is_user_action": true,
            "can_be_canceled": matches!(self.state.as_str(), "Pending" | "In progress"),
            "can_be_retried": self.state == "Failed",
        })
    }
}

fn save_action(a: &Action) -> Result<(), berth_sdk::Error> {
    kv::set_json(&format!("action/{}", a.uuid), a)?;
    kv::set(
        &format!("actions/{:020}", u64::MAX - a.seq),
        a.uuid.as_bytes(),
    )
}

/// Record the action a request performs, run it, and answer 202 with the
/// object and `X-DockerCloud-Action-URI` (the error, with the header, when
/// it failed).
fn act(
    req: &Request,
    user: &str,
    kind: &str,
    label: &str,
    object: &str,
    op: Option<Op>,
    run: impl FnOnce() -> Result<Value, Failure>,
) -> HttpResult {
    let mut action = Action {
        uuid: model::uuid4()?,
        seq: kv::next_in_sequence("action")?,
        kind: kind.to_string(),
        action: label.to_string(),
        method: req.method().to_string(),
        path: req.path().to_string(),
        user: user.to_string(),
        user_agent: req.header("user-agent").unwrap_or_default().to_string(),
        ip: req
            .client()
            .rsplit_once(':')
            .map(|(ip, _)| ip)
            .unwrap_or_default()
            .to_string(),
        state: "In progress".into(),
        start_date: model::now(),
        end_date: None,
        object: object.to_string(),
        body: String::from_utf8_lossy(req.body()).into_owned(),
        logs: String::new(),
        op,
    };
    model::emit(
        "action",
        "create",
        &action.uri(),
        &action.uuid,
        &action.state,
        &[],
    );
    let result = run();
    action.end_date = Some(model::now());
    let response = match result {
        Ok(body) => {
            action.state = "Success".into();
            Response::json(202, &body)
        }
        Err(f) => {
            action.state = "Failed".into();
            let r = failure(f);
            action.logs = String::from_utf8_lossy(&r.body).into_owned();
            r
        }
    };
    save_action(&action)?;
    model::emit(
        "action",
        "update",
        &action.uri(),
        &action.uuid,
        &action.state,
        &[],
    );
    Ok(response.header("X-DockerCloud-Action-URI", &action.uri()))
}

// ---- services --------------------------------------------------------------

/// A service body (Docker Cloud's keys, or a stackfile's) as a [`Def`]
/// plus the fields kept as given.
fn body_to_def(
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

fn body(req: &Request) -> Result<Value, Response> {
    if req.body().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(req.body()).map_err(|e| fail(400, &format!("invalid JSON body: {e}")))
}

fn find_service(req: &Request) -> Result<Service, Response> {
    let uuid = req.param("uuid").unwrap_or_default();
    model::load_service(uuid)?.ok_or_else(|| fail(404, "Not found"))
}

fn find_stack(req: &Request) -> Result<Stack, Response> {
    let uuid = req.param("uuid").unwrap_or_default();
    model::load_stack(uuid)?.ok_or_else(|| fail(404, "Not found"))
}

/// Start following the engine's container events (idempotent): each
/// becomes a job that publishes Docker Cloud events and updates states.
pub fn follow(endpoint: &str) {
    let filters = vec![
        ("type".to_string(), vec!["container".to_string()]),
        ("label".to_string(), vec![engine::SERVICE_LABEL.to_string()]),
    ];
    if let Err(e) = docker::follow_events_as_jobs(endpoint, "engine-event", &filters) {
        berth_sdk::log::warn(&format!(
            "cannot follow the engine's events: {}",
            docker::error_text(&e)
        ));
    }
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
        .any(|s| s.stack.is_none() && s.state != "Terminated" && s.name == def.name);
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
        state: "Not running".into(),
        created: model::now(),
        started: None,
        stopped: None,
        destroyed: None,
        aliases: Vec::new(),
        role_key: None,
        role_env: Vec::new(),
    };
    apply_roles(&mut s)?;
    model::save_service(&s)?;
    model::emit("service", "create", &s.uri(), &s.uuid, &s.state, &[]);
    Ok(Response::json(201, &service_json(&s)))
}

pub fn service_get(req: &Request) -> HttpResult {
    Ok(Response::json(200, &service_json(&find_service(req)?)))
}

pub fn service_update(req: &Request) -> HttpResult {
    let mut s = find_service(req)?;
    if s.state == "Terminated" {
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
    apply_roles(&mut s)?;
    model::save_service(&s)?;
    model::emit("service", "update", &s.uri(), &s.uuid, &s.state, &[]);
    Ok(Response::json(200, &service_json(&s)))
}

fn service_op(req: &Request, op: Op) -> HttpResult {
    let user = req.identity::<Caller>()?.0.clone();
    let mut s = find_service(req)?;
    follow(&s.endpoint);
    let uri = s.uri();
    let label = format!("Service {}", capitalise(op.name()));
    act(req, &user, "Service", &label, &uri, Some(op), || {
        model::run_service(&mut s, op)?;
        Ok(service_json(&s))
    })
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

pub fn service_start(req: &Request) -> HttpResult {
    service_op(req, Op::Start)
}
pub fn service_stop(req: &Request) -> HttpResult {
    service_op(req, Op::Stop)
}
pub fn service_scale(req: &Request) -> HttpResult {
    service_op(req, Op::Scale)
}
pub fn service_redeploy(req: &Request) -> HttpResult {
    service_op(req, Op::Redeploy)
}
pub fn service_terminate(req: &Request) -> HttpResult {
    service_op(req, Op::Terminate)
}

pub fn service_logs(req: &Request) -> HttpResult {
    let s = find_service(req)?;
    let tail = req.query_as::<u32>("tail")?.unwrap_or(300);
    let mut out = String::new();
    for c in engine::containers(&s.placement()).map_err(engine_error)? {
        let logs = docker::container_logs(&s.endpoint, &c.id, tail).map_err(engine_error)?;
        let name = container_name(&s, &c);
        for line in logs.lines() {
            out.push_str(&json!({ "type": "log", "source": name, "log": line }).to_string());
            out.push('\n');
        }
    }
    Ok(Response::text(200, &out).header("content-type", "application/x-ndjson"))
}

// ---- stacks ----------------------------------------------------------------

pub fn stack_list(req: &Request) -> HttpResult {
    let mut stacks: Vec<Stack> = model::scan("stack/")?;
    stacks.sort_by(|a, b| b.created.cmp(&a.created).then(a.name.cmp(&b.name)));
    let mut objects = Vec::new();
    for st in &stacks {
        let v = render_stack(st);
        if passes(req, &v, &["uuid", "state", "name"])? {
            objects.push(v);
        }
    }
    page(req, STACK_URI, objects)
}

/// Fields of each service kept as given (see `Service::extra`).
type Extras = Vec<serde_json::Map<String, Value>>;

fn defs_from_stack_body(v: &Value) -> Result<(Vec<Def>, Extras), String> {
    let services = v["services"]
        .as_array()
        .ok_or("services: a list of service bodies is required")?;
    if services.is_empty() {
        return Err("services: at least one service is required".into());
    }
    let mut defs = Vec::new();
    let mut extras = Vec::new();
    for s in services {
        let (d, e) = body_to_def(s, None)?;
        if defs.iter().any(|x: &Def| x.name == d.name) {
            return Err(format!("services: `{}` appears twice", d.name));
        }
        defs.push(d);
        extras.push(e);
    }
    stackfile::check_links(&defs)?;
    Ok((defs, extras))
}

/// `POST stack/`: a JSON body `{name, services: [...]}`, or a stackfile
/// (YAML) with `?name=`.
pub fn stack_create(req: &Request) -> HttpResult {
    let (name, nickname, defs, extras) = if req.is_json() || req.body().first() == Some(&b'{') {
        let v = body(req)?;
        let name = v["name"]
            .as_str()
            .ok_or_else(|| fail(400, "name: this field is required"))?
            .to_string();
        let (defs, extras) = defs_from_stack_body(&v).map_err(|e| fail(400, &e))?;
        let nickname = v["nickname"].as_str().unwrap_or(&name).to_string();
        (name, nickname, defs, extras)
    } else {
        let name = req
            .query("name")
            .ok_or_else(|| fail(400, "name: give ?name= with a stackfile body"))?
            .to_string();
        let text =
            std::str::from_utf8(req.body()).map_err(|_| fail(400, "the stackfile is not UTF-8"))?;
        let defs = stackfile::parse_cloud(text).map_err(|e| fail(400, &e))?;
        (name.clone(), name, defs, Vec::new())
    };
    let endpoint = model::cloud_endpoint();
    let stack =
        model::create_stack(&name, &nickname, defs, &endpoint, None, extras).map_err(failure)?;
    Ok(Response::json(201, &render_stack(&stack)))
}

pub fn stack_get(req: &Request) -> HttpResult {
    Ok(Response::json(200, &render_stack(&find_stack(req)?)))
}

/// `PATCH stack/{uuid}/`: replace the services (by name: changed ones are
/// updated, new ones added, missing ones terminated) and the nickname.
pub fn stack_update(req: &Request) -> HttpResult {
    let mut stack = find_stack(req)?;
    if stack.state == "Terminated" {
        return Err(fail(409, "Cannot update a terminated stack"));
    }
    let v = body(req)?;
    if let Some(n) = v["nickname"].as_str() {
        stack.nickname = n.to_string();
    }
    if v.get("services").is_some() {
        let (defs, extras) = defs_from_stack_body(&v).map_err(|e| fail(400, &e))?;
        update_stack_services(&mut stack, defs, extras).map_err(failure)?;
    }
    model::save_stack(&stack)?;
    model::emit(
        "stack",
        "update",
        &stack.uri(),
        &stack.uuid,
        &stack.state,
        &[],
    );
    Ok(Response::json(200, &render_stack(&stack)))
}

/// Bring a stack's services to `defs`: update by name, add, terminate the
/// ones no longer declared. Running stacks apply the change at once.
pub fn update_stack_services(
    stack: &mut Stack,
    defs: Vec<Def>,
    extras: Vec<serde_json::Map<String, Value>>,
) -> Result<(), Failure> {
    let running = matches!(stack.state.as_str(), "Running" | "Partly running");
    let mut kept = Vec::new();
    for (i, def) in defs.iter().enumerate() {
        let existing = stack
            .services
            .iter()
            .filter_map(|u| model::load_service(u).ok().flatten())
            .find(|s| s.name == def.name && s.state != "Terminated");
        let extra = extras.get(i).cloned().unwrap_or_default();
        let mut s = match existing {
            Some(mut s) => {
                s.def = def.clone();
                s.aliases = model::aliases_of(&def.name, &defs);
                s.extra = extra;
                s
            }
            None => {
                let s = Service::in_stack(stack, def, &defs, extra)?;
                stack.services.push(s.uuid.clone());
                s
            }
        };
        apply_roles(&mut s)?;
        model::save_service(&s)?;
        if running {
            let op = if s.state == "Not running" {
                Op::Start
            } else {
                Op::Redeploy
            };
            model::run_service(&mut s, op)?;
        }
        kept.push(s.uuid.clone());
    }
    for uuid in stack.services.clone() {
        if kept.contains(&uuid) {
            continue;
        }
        if let Some(mut s) = model::load_service(&uuid)?
            && Op::Terminate.allowed(&s.state)
        {
            model::run_service(&mut s, Op::Terminate)?;
        }
    }
    Ok(())
}

fn stack_op(req: &Request, op: Op) -> HttpResult {
    let user = req.identity::<Caller>()?.0.clone();
    let mut stack = find_stack(req)?;
    follow(&stack.endpoint);
    let uri = stack.uri();
    let label = format!("Stack {}", capitalise(op.name()));
    act(req, &user, "Stack", &label, &uri, Some(op), || {
        model::run_stack(&mut stack, op)?;
        Ok(render_stack(&stack))
    })
}

pub fn stack_start(req: &Request) -> HttpResult {
    stack_op(req, Op::Start)
}
pub fn stack_stop(req: &Request) -> HttpResult {
    stack_op(req, Op::Stop)
}
pub fn stack_redeploy(req: &Request) -> HttpResult {
    stack_op(req, Op::Redeploy)
}
pub fn stack_terminate(req: &Request) -> HttpResult {
    stack_op(req, Op::Terminate)
}

pub fn stack_export(req: &Request) -> HttpResult {
    let stack = find_stack(req)?;
    let defs = model::stack_defs(&stack)?;
    let yaml = stackfile::export(&defs);
    let wants_yaml = req.query("format") == Some("yaml")
        || req.header("accept").is_some_and(|a| a.contains("yaml"));
    if wants_yaml {
        return Ok(Response::text(200, &yaml).header("content-type", "application/x-yaml"));
    }
    // JSON clients (the SDKs) get the same stackfile as a JSON object.
    let doc: Value = serde_yaml::from_str(&yaml).map_err(|e| fail(500, &e.to_string()))?;
    Ok(Response::json(200, &doc))
}

// ---- containers -------------------------------------------------------------

fn all_services() -> Result<Vec<Service>, Response> {
    model::scan("svc/").map_err(Response::from)
}

pub fn container_list(req: &Request) -> HttpResult {
    let services = all_services()?;
    let mut endpoints: Vec<&str> = services.iter().map(|s| s.endpoint.as_str()).collect();
    endpoints.sort_unstable();
    endpoints.dedup();
    let mut objects = Vec::new();
    for e in endpoints {
        for c in engine::all_containers(e).map_err(engine_error)? {
            let Some(s) =
                engine::service_of(&c).and_then(|u| services.iter().find(|s| s.uuid == u))
            else {
                continue;
            };
            let mut v = render_container(s, &c);
            v["service__stack__name"] = json!(s.namespace);
            if passes(
                req,
                &v,
                &[
                    "uuid",
                    "state",
                    "name",
                    "service",
                    "node",
                    "stack",
                    "service__stack__name",
                ],
            )? {
                v.as_object_mut().map(|o| o.remove("service__stack__name"));
                objects.push(v);
            }
        }
    }
    page(req, CONTAINER_URI, objects)
}

/// The container a `{uuid}` names, with its service.
fn find_container(req: &Request) -> Result<(Service, Container), Response> {
    let uuid = req.param("uuid").unwrap_or_default();
    let prefix: String = uuid.chars().filter(|c| *c != '-').collect();
    if prefix.len() != 32 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(404, "Not found"));
    }
    for s in all_services()? {
        if s.state == "Terminated" {
            continue;
        }
        let found = engine::containers(&s.placement())
            .map_err(engine_error)?
            .into_iter()
            .find(|c| c.id.starts_with(&prefix));
        if let Some(c) = found {
            return Ok((s, c));
        }
    }
    Err(fail(404, "Not found"))
}

pub fn container_get(req: &Request) -> HttpResult {
    let (s, c) = find_container(req)?;
    Ok(Response::json(200, &render_container(&s, &c)))
}

fn container_op(req: &Request, verb: &str) -> HttpResult {
    let user = req.identity::<Caller>()?.0.clone();
    let (s, c) = find_container(req)?;
    follow(&s.endpoint);
    let uri = format!("{CONTAINER_URI}{}/", container_uuid(&c.id));
    let state = container_state(&c.state);
    let allowed = match verb {
        "start" => state == "Stopped",
        "stop" => matches!(state, "Running" | "Starting"),
        _ => !matches!(state, "Terminating" | "Terminated"),
    };
    if !allowed {
        return Err(fail(
            409,
            &format!("Cannot {verb} a container in state {state}"),
        ));
    }
    let label = format!("Container {}", capitalise(verb));
    let endpoint = s.endpoint.clone();
    act(req, &user, "Container", &label, &uri, None, || {
        let timeout = model::stop_timeout();
        match verb {
            "start" => docker::container_start(&endpoint, &c.id)?,
            "stop" => docker::container_stop(&endpoint, &c.id, Some(timeout))?,
            "redeploy" => docker::container_restart(&endpoint, &c.id, Some(timeout))?,
            _ => docker::container_remove(&endpoint, &c.id, true, false)?,
        }
        let mut after = c.clone();
        after.state = match verb {
            "start" | "redeploy" => "running".into(),
            "stop" => "exited".into(),
            _ => "dead".into(),
        };
        Ok(render_container(&s, &after))
    })
}

pub fn container_start(req: &Request) -> HttpResult {
    container_op(req, "start")
}
pub fn container_stop(req: &Request) -> HttpResult {
    container_op(req, "stop")
}
pub fn container_redeploy(req: &Request) -> HttpResult {
    container_op(req, "redeploy")
}
pub fn container_terminate(req: &Request) -> HttpResult {
    container_op(req, "terminate")
}

pub fn container_logs(req: &Request) -> HttpResult {
    let (s, c) = find_container(req)?;
    let tail = req.query_as::<u32>("tail")?.unwrap_or(300);
    let logs = docker::container_logs(&s.endpoint, &c.id, tail).map_err(engine_error)?;
    let mut out = String::new();
    for line in logs.lines() {
        out.push_str(&json!({ "type": "log", "log": line }).to_string());
        out.push('\n');
    }
    Ok(Response::text(200, &out).header("content-type", "application/x-ndjson"))
}

// ---- actions and events -------------------------------------------------------

pub fn action_list(req: &Request) -> HttpResult {
    let mut objects = Vec::new();
    for entry in kv::scan("actions/") {
        let (_, uuid) = entry?;
        let uuid = String::from_utf8_lossy(&uuid).into_owned();
        if let Some(a) = kv::get_json::<Action>(&format!("action/{uuid}"))? {
            let v = a.render();
            if passes(req, &v, &["uuid", "state", "object", "type", "action"])? {
                objects.push(v);
            }
        }
    }
    page(req, ACTION_URI, objects)
}

fn find_action(req: &Request) -> Result<Action, Response> {
    let uuid = req.param("uuid").unwrap_or_default();
    kv::get_json::<Action>(&format!("action/{uuid}"))?.ok_or_else(|| fail(404, "Not found"))
}

pub fn action_get(req: &Request) -> HttpResult {
    Ok(Response::json(200, &find_action(req)?.render()))
}

pub fn action_cancel(req: &Request) -> HttpResult {
    let a = find_action(req)?;
    // Berth runs an action within its request: by the time a client can
    // name it, it has finished and there is nothing to cancel.
    Err(fail(
        409,
        &format!("Cannot cancel an action in state {}", a.state),
    ))
}

/// Retry a failed service or stack action: run the same operation again
/// as a new action.
pub fn action_retry(req: &Request) -> HttpResult {
    let user = req.identity::<Caller>()?.0.clone();
    let a = find_action(req)?;
    if a.state != "Failed" {
        return Err(fail(
            409,
            &format!("Cannot retry an action in state {}", a.state),
        ));
    }
    let Some(op) = a.op else {
        return Err(fail(409, "This action cannot be retried"));
    };
    let label = a.action.clone();
    if let Some(uuid) = a.object.strip_prefix(SERVICE_URI) {
        let mut s = model::load_service(uuid.trim_end_matches('/'))?
            .ok_or_else(|| fail(404, "The action's service is gone"))?;
        act(req, &user, "Service", &label, &a.object, Some(op), || {
            model::run_service(&mut s, op)?;
            Ok(service_json(&s))
        })
    } else if let Some(uuid) = a.object.strip_prefix(STACK_URI) {
        let mut st = model::load_stack(uuid.trim_end_matches('/'))?
            .ok_or_else(|| fail(404, "The action's stack is gone"))?;
        act(req, &user, "Stack", &label, &a.object, Some(op), || {
            model::run_stack(&mut st, op)?;
            Ok(render_stack(&st))
        })
    } else {
        Err(fail(409, "This action cannot be retried"))
    }
}

/// The events websocket. One filter at most (`type`, `object` or
/// `parent`), since each maps to one topic the plugin publishes on.
pub fn events(req: &Request) -> HttpResult {
    follow(&model::cloud_endpoint());
    let mut filters = req
        .query_pairs()
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "type" | "object" | "parent"));
    let topic = match (filters.next(), filters.next()) {
        (None, _) => "cloud".to_string(),
        (Some((k, v)), None) => format!("cloud:{k}:{v}"),
        (Some(_), Some(_)) => {
            return Err(fail(400, "give one filter at most: type, object or parent"));
        }
    };
    let framing = if req
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    {
        Framing::Websocket
    } else {
        Framing::Ndjson
    };
    Ok(Response::subscribe(&topic, framing))
}
