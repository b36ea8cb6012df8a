//! Stacks (Compose files) on an endpoint.

use super::*;

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
        "Status": if st.state == "Running" { 1 } else { 2 },
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

pub fn stack_create(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
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
    if !can_use(&user, &endpoint)? {
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
    crate::cloud::follow(&endpoint.docker);
    if let Err(f) = model::run_stack(&mut stack, Op::Start) {
        // Nothing half-deployed stays: the stack is removed again.
        let _ = model::run_stack(&mut stack, Op::Terminate);
        remove_stack_record(&stack)?;
        return Err(stack_failure(f));
    }
    kv::set(&format!("p/stack/{:010}", stack.id), stack.uuid.as_bytes())?;
    if user.role != ADMIN {
        own(&user, STACK, &stack.name)?;
    }
    Ok(Response::json(200, &render_stack(&stack)))
}

pub(super) fn remove_stack_record(stack: &Stack) -> Result<(), berth_sdk::Error> {
    for uuid in &stack.services {
        kv::delete(&format!("svc/{uuid}"))?;
    }
    kv::delete(&format!("stack/{}", stack.uuid))?;
    kv::delete(&format!("p/stack/{:010}", stack.id))?;
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
    let uuid = kv::get_string(&format!("p/stack/{id:010}"))?.ok_or_else(missing)?;
    let st = model::load_stack(&uuid)?.ok_or_else(missing)?;
    if !may_see(user, &st)? {
        return Err(fail(403, "Access denied to resource", ""));
    }
    Ok(st)
}

pub fn stack_list(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let mut list = Vec::new();
    for entry in kv::scan("p/stack/") {
        let (_, uuid) = entry?;
        if let Some(st) = model::load_stack(&String::from_utf8_lossy(&uuid))?
            && may_see(&user, &st)?
        {
            list.push(render_stack(&st));
        }
    }
    Ok(Response::json(200, &list))
}

pub fn stack_get(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    Ok(Response::json(200, &render_stack(&find_stack(req, &user)?)))
}

pub fn stack_file(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let st = find_stack(req, &user)?;
    let file = st.portainer.map(|p| p.file).unwrap_or_default();
    Ok(Response::json(200, &json!({ "StackFileContent": file })))
}

pub fn stack_update(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let mut st = find_stack(req, &user)?;
    let body: StackUpdate = payload(req)?;
    let content = body.stack_file_content;
    let env = env_of(body.env)?;
    let defs = stackfile::parse_compose(&content, &env)
        .map_err(|e| fail(400, "Invalid stack file", &e))?;
    crate::cloud::update_stack_services(&mut st, defs, Vec::new(), body.prune)
        .map_err(stack_failure)?;
    if let Some(p) = st.portainer.as_mut() {
        p.file = content;
        p.env = env;
    }
    model::save_stack(&st)?;
    Ok(Response::json(200, &render_stack(&st)))
}

pub fn stack_delete(req: &Request) -> HttpResult {
    let user = req.identity::<User>()?;
    let mut st = find_stack(req, &user)?;
    if st.state != "Terminated" {
        model::run_stack(&mut st, Op::Terminate).map_err(stack_failure)?;
    }
    remove_stack_record(&st)?;
    disown(STACK, &st.name)?;
    Ok(Response::new(204))
}
