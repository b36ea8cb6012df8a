//! Stacks (Compose files) on an endpoint.

use berth_sdk::{HttpResult, Request, Response, docker, gojson, kv, percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::{self, State};
use crate::portainer::endpoints::{
    can_use, field, field_text, form_fields, load_endpoint, may_use_endpoint, stack_endpoint,
};
use crate::portainer::resources::{STACK, disown, may_see_stack, own, rename_controls};
use crate::portainer::users::{User, id_param};
use crate::portainer::{
    ADMIN, Failure, Op, Payload, PortainerStack, Stack, fail, not_found, payload,
};
use crate::stackfile;

pub(super) fn stack_failure(f: Failure) -> Response {
    match f {
        Failure::State(m) => fail(409, "A stack with this name already exists", &m),
        Failure::Invalid(m) => fail(400, "Invalid stack", &m),
        Failure::Engine(e) => fail(500, "Unable to deploy the stack", &docker::error_text(&e)),
        Failure::Host(e) => Response::from(e),
    }
}

pub(super) fn render_stack(st: &Stack) -> Value {
    let p = st.portainer.as_ref();
    let env: Vec<Value> = p
        .map(|p| {
            p.env
                .iter()
                .map(|(n, v)| json!({ "name": n, "value": v }))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "Id": st.id,
        "Name": st.name,
        "Type": p.map(|p| p.kind).unwrap_or(if st.swarm { 1 } else { 2 }),
        "EndpointId": p.map(|p| p.endpoint_id).unwrap_or(0),
        "SwarmId": p.map(|p| p.swarm_id.clone()).unwrap_or_default(),
        "EntryPoint": "docker-compose.yml",
        "Env": if env.is_empty() { Value::Null } else { json!(env) },
        "ProjectPath": format!("/data/compose/{}", st.id),
        "Status": if st.state == State::Running { 1 } else { 2 },
    })
}

/// An environment variable of a stack, as Portainer's `Pair`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Pair {
    name: String,
    value: String,
}

fn env_of(pairs: Vec<Pair>) -> Result<Vec<(String, String)>, Response> {
    pairs
        .into_iter()
        .map(|p| {
            if p.name.is_empty() {
                return Err(fail(
                    400,
                    "Invalid request payload",
                    "Env: a variable without a name",
                ));
            }
            Ok((p.name, p.value))
        })
        .collect()
}

/// The `Env` form field: a JSON array of `{name, value}`, or nothing.
fn env_field(text: &str) -> Result<Vec<(String, String)>, Response> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let pairs: Vec<Pair> = gojson::from_slice(text.as_bytes())
        .map_err(|e| fail(400, "Invalid request payload", &format!("Env: {e}")))?;
    env_of(pairs)
}

/// `POST /api/stacks?method=string`: a stack from its file's text.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct StackFromText {
    name: String,
    #[serde(rename = "SwarmID")]
    swarm_id: String,
    stack_file_content: String,
    env: Vec<Pair>,
}

impl Payload for StackFromText {}

/// `PUT /api/stacks/{id}`.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct StackUpdate {
    stack_file_content: String,
    env: Vec<Pair>,
    prune: bool,
}

impl Payload for StackUpdate {
    fn validate(&self) -> Result<(), &'static str> {
        if self.stack_file_content.trim().is_empty() {
            return Err("Invalid stack file content");
        }
        Ok(())
    }
}

pub fn stack_create(req: &Request, user: &User) -> HttpResult {
    let kind: u8 = req
        .query("type")
        .and_then(|t| t.parse().ok())
        .filter(|t| matches!(t, 1 | 2))
        .ok_or_else(|| {
            fail(
                400,
                "Invalid query parameter: type",
                "1 (swarm) or 2 (compose)",
            )
        })?;
    let method = req.query("method").unwrap_or_default();
    let endpoint_id: u64 = req
        .query("endpointId")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| fail(400, "Invalid query parameter: endpointId", ""))?;
    let (name, swarm_id, content, env) = match method {
        "string" => {
            let body: StackFromText = payload(req)?;
            let env = env_of(body.env)?;
            (body.name, body.swarm_id, body.stack_file_content, env)
        }
        "file" => {
            let fields = form_fields(req)?;
            let env = env_field(&field_text(&fields, "Env").unwrap_or_default())?;
            (
                field_text(&fields, "Name").unwrap_or_default(),
                field_text(&fields, "SwarmID").unwrap_or_default(),
                field(&fields, "file")
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
                env,
            )
        }
        "repository" => {
            return Err(fail(
                501,
                "Repository stacks are not supported",
                "this Berth reaches no Git host; create the stack with method=string or method=file",
            ));
        }
        _ => {
            return Err(fail(
                400,
                "Invalid query parameter: method",
                "string, file or repository",
            ));
        }
    };
    if name.is_empty() {
        return Err(fail(400, "Invalid request payload", "Invalid stack name"));
    }
    if content.trim().is_empty() {
        return Err(fail(
            400,
            "Invalid request payload",
            "Invalid stack file content",
        ));
    }
    if kind == 1 && swarm_id.is_empty() {
        return Err(fail(400, "Invalid request payload", "Invalid Swarm ID"));
    }
    let endpoint = load_endpoint(endpoint_id)?.ok_or_else(|| not_found("an endpoint"))?;
    if !can_use(user, &endpoint)? {
        return Err(fail(403, "Access denied to resource", "endpoint"));
    }
    let defs = stackfile::parse_compose(&content, &env)
        .map_err(|e| fail(400, "Invalid stack file", &e))?;
    let portainer = PortainerStack {
        kind,
        endpoint_id,
        swarm_id,
        env,
        file: content,
    };
    let mut stack = model::create_stack(
        &name,
        &name,
        defs,
        &endpoint.docker,
        Some(portainer),
        Vec::new(),
    )
    .map_err(stack_failure)?;
    model::follow(&endpoint.docker);
    if let Err(f) = model::run_stack(&mut stack, Op::Start) {
        // Nothing half-deployed stays: the stack is removed again.
        let _ = model::run_stack(&mut stack, Op::Terminate);
        remove_stack_record(&stack)?;
        return Err(stack_failure(f));
    }
    kv::set(&stack_key(stack.id), stack.uuid.as_bytes())?;
    if user.role != ADMIN {
        own(user, STACK, &stack.name)?;
    }
    Ok(Response::json(200, &render_stack(&stack)))
}

pub(super) fn remove_stack_record(stack: &Stack) -> Result<(), berth_sdk::Error> {
    forget_stack(stack)?;
    kv::delete(&stack_key(stack.id))?;
    Ok(())
}

/// Portainer's index of its stacks: id → the stack's uuid.
fn stack_key(id: u64) -> String {
    format!("p/stack/{id:010}")
}

/// Remove a stack's records and its services', leaving its id.
fn forget_stack(stack: &Stack) -> Result<(), berth_sdk::Error> {
    for uuid in &stack.services {
        kv::delete(&format!("svc/{uuid}"))?;
    }
    kv::delete(&format!("stack/{}", stack.uuid))?;
    Ok(())
}

/// Whether `user` may use the endpoint a stack runs on.
pub(super) fn may_see(user: &User, st: &Stack) -> Result<bool, Response> {
    let Some(p) = &st.portainer else {
        return Ok(user.role == ADMIN);
    };
    if user.role == ADMIN {
        return Ok(true);
    }
    Ok(may_use_endpoint(user, p.endpoint_id)? && may_see_stack(user, &st.name)?)
}

pub(super) fn find_stack(req: &Request, user: &User) -> Result<Stack, Response> {
    let id = id_param(req)?;
    let missing = || not_found("a stack");
    let uuid = kv::get_string(&stack_key(id))?.ok_or_else(missing)?;
    let st = model::load_stack(&uuid)?.ok_or_else(missing)?;
    if !may_see(user, &st)? {
        return Err(fail(403, "Access denied to resource", ""));
    }
    Ok(st)
}

pub fn stack_list(_: &Request, user: &User) -> HttpResult {
    let mut list = Vec::new();
    for entry in kv::scan("p/stack/") {
        let (_, uuid) = entry?;
        if let Some(st) = model::load_stack(&String::from_utf8_lossy(&uuid))?
            && may_see(user, &st)?
        {
            list.push(render_stack(&st));
        }
    }
    Ok(Response::json(200, &list))
}

pub fn stack_get(req: &Request, user: &User) -> HttpResult {
    Ok(Response::json(200, &render_stack(&find_stack(req, user)?)))
}

pub fn stack_file(req: &Request, user: &User) -> HttpResult {
    let st = find_stack(req, user)?;
    let file = st.portainer.map(|p| p.file).unwrap_or_default();
    Ok(Response::json(200, &json!({ "StackFileContent": file })))
}

pub fn stack_update(req: &Request, user: &User) -> HttpResult {
    let mut st = find_stack(req, user)?;
    let body: StackUpdate = payload(req)?;
    let content = body.stack_file_content;
    let env = env_of(body.env)?;
    let defs = stackfile::parse_compose(&content, &env)
        .map_err(|e| fail(400, "Invalid stack file", &e))?;
    model::update_stack_services(&mut st, defs, Vec::new(), body.prune).map_err(stack_failure)?;
    if let Some(p) = st.portainer.as_mut() {
        p.file = content;
        p.env = env;
    }
    model::save_stack(&st)?;
    Ok(Response::json(200, &render_stack(&st)))
}

pub fn stack_delete(req: &Request, user: &User) -> HttpResult {
    if req.query("external") == Some("true") {
        return external_stack_delete(req, user);
    }
    let mut st = find_stack(req, user)?;
    if st.state != State::Terminated {
        model::run_stack(&mut st, Op::Terminate).map_err(stack_failure)?;
    }
    remove_stack_record(&st)?;
    disown(STACK, &st.name)?;
    Ok(Response::new(204))
}

/// `POST /api/stacks/{id}/migrate`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct StackMigrate {
    #[serde(rename = "EndpointID")]
    endpoint_id: u64,
    #[serde(rename = "SwarmID")]
    swarm_id: String,
    #[serde(rename = "Name")]
    name: String,
}

impl Payload for StackMigrate {
    fn validate(&self) -> Result<(), &'static str> {
        if self.endpoint_id == 0 {
            return Err("Invalid endpoint identifier. Must be a positive number");
        }
        Ok(())
    }
}

/// The engine's own id (`docker info`), to tell two endpoints on one
/// engine; `None` when it does not answer.
fn engine_id(endpoint: &str) -> Option<String> {
    let info: Value = serde_json::from_str(&docker::info(endpoint).ok()?).ok()?;
    info["ID"].as_str().map(str::to_string)
}

/// Move a stack to another endpoint, as 1.x did: deploy it there (under
/// `Name` if given) from its stored file, then remove it where it was.
/// It keeps its id, and its resource control follows a new name. A
/// deploy that fails leaves the stack where it was; moving under the
/// same name onto the engine it already runs on is refused (409).
pub fn stack_migrate(req: &Request, user: &User) -> HttpResult {
    let mut old = find_stack(req, user)?;
    let body: StackMigrate = payload(req)?;
    let p = old.portainer.clone().ok_or_else(|| not_found("a stack"))?;
    let target = load_endpoint(body.endpoint_id)?.ok_or_else(|| not_found("an endpoint"))?;
    if !can_use(user, &target)? {
        return Err(fail(403, "Access denied to resource", "endpoint"));
    }
    let name = if body.name.is_empty() {
        old.name.clone()
    } else {
        body.name
    };
    let renamed = !name.eq_ignore_ascii_case(&old.name);
    if renamed && model::stack_name_taken(&name)? {
        return Err(fail(
            409,
            "A stack with this name already exists",
            &format!("A stack with the name {name} already exists"),
        ));
    }
    if !renamed
        && let Some(here) = engine_id(&old.endpoint)
        && engine_id(&target.docker) == Some(here)
    {
        return Err(fail(
            409,
            "The stack already runs on this engine",
            "the target endpoint reaches the engine the stack runs on; give it a new Name",
        ));
    }
    let defs = stackfile::parse_compose(&p.file, &p.env)
        .map_err(|e| fail(400, "Invalid stack file", &e))?;
    let swarm_id = if body.swarm_id.is_empty() {
        p.swarm_id.clone()
    } else {
        body.swarm_id
    };
    let moved = PortainerStack {
        endpoint_id: target.id,
        swarm_id,
        ..p
    };
    crate::stackfile::check_name("stack", &name).map_err(|e| fail(400, "Invalid stack", &e))?;
    let mut next = model::build_stack(&name, &name, defs, &target.docker, Some(moved), Vec::new())
        .map_err(stack_failure)?;
    model::follow(&target.docker);
    if let Err(f) = model::run_stack(&mut next, Op::Start) {
        let _ = model::run_stack(&mut next, Op::Terminate);
        remove_stack_record(&next)?;
        return Err(stack_failure(f));
    }
    // The new deployment takes the stack's id; then the old one goes.
    kv::delete(&stack_key(next.id))?;
    next.id = old.id;
    model::save_stack(&next)?;
    kv::set(&stack_key(next.id), next.uuid.as_bytes())?;
    if renamed {
        rename_controls(STACK, &old.name, &name)?;
    }
    let removed = if old.state == State::Terminated {
        Ok(())
    } else {
        model::run_stack(&mut old, Op::Terminate)
    };
    forget_stack(&old)?;
    if let Err(f) = removed {
        let details = match f {
            Failure::Engine(e) => docker::error_text(&e),
            Failure::State(m) | Failure::Invalid(m) => m,
            Failure::Host(e) => e.to_string(),
        };
        return Err(fail(
            500,
            "Unable to remove the stack from its former endpoint",
            &format!("it now runs on endpoint {}; {details}", target.id),
        ));
    }
    Ok(Response::json(200, &render_stack(&next)))
}

/// `DELETE /api/stacks/{name}?external=true&endpointId=N`: a Swarm stack
/// deployed outside Portainer (`docker stack deploy`), removed as
/// `docker stack rm` would: its services, networks, secrets and configs
/// (administrators; 404 when the engine has nothing of it).
fn external_stack_delete(req: &Request, user: &User) -> HttpResult {
    let endpoint_id: u64 = req
        .query("endpointId")
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| fail(400, "Invalid query parameter: endpointId", ""))?;
    if user.role != ADMIN {
        return Err(fail(
            401,
            "Permission denied to delete the stack",
            "Unauthorized",
        ));
    }
    let name = req.param("id").unwrap_or_default();
    if model::stack_name_taken(name)? {
        return Err(fail(
            400,
            "A stack with this name exists inside the database. Cannot use external delete method",
            "Stack is not external",
        ));
    }
    let endpoint = stack_endpoint(endpoint_id)?;
    let label = serde_json::to_string(&json!({
        "label": [format!("com.docker.stack.namespace={name}")]
    }))
    .unwrap_or_default();
    let query = format!("filters={}", percent_encode(&label));
    let engine =
        |e: docker::DockerError| fail(500, "Unable to delete stack", &docker::error_text(&e));
    let mut found = 0;
    // Services first: networks, secrets and configs in use cannot go.
    for (kind, id_key) in [
        ("services", "ID"),
        ("networks", "Id"),
        ("secrets", "ID"),
        ("configs", "ID"),
    ] {
        let path = format!("/{kind}");
        let answer =
            docker::request(&endpoint.docker, "GET", &path, &query, &[], &[]).map_err(engine)?;
        if answer.status != 200 {
            // An engine that is no swarm manager has no secrets or configs.
            continue;
        }
        let items: Vec<Value> = serde_json::from_slice(&answer.body).unwrap_or_default();
        for item in items {
            let Some(id) = item[id_key].as_str() else {
                continue;
            };
            let gone = docker::request(
                &endpoint.docker,
                "DELETE",
                &format!("/{kind}/{id}"),
                "",
                &[],
                &[],
            )
            .map_err(engine)?;
            found += 1;
            // A network still in use by tasks that are going is left, as
            // the stacks' own networks are.
            if kind != "networks" && !matches!(gone.status, 200 | 204 | 404) {
                return Err(fail(
                    500,
                    "Unable to delete stack",
                    &format!(
                        "removing {kind} {id}: {}",
                        String::from_utf8_lossy(&gone.body).trim()
                    ),
                ));
            }
        }
    }
    if found == 0 {
        return Err(fail(
            404,
            "Unable to find a stack with the specified identifier",
            &format!("the engine has nothing of a stack named {name}"),
        ));
    }
    disown(STACK, name)?;
    Ok(Response::new(204))
}
