//! Stacks.

use berth_sdk::{HttpResult, Request, Response};
use serde_json::Value;

use crate::cloud::actions::act;
use crate::cloud::keys::Caller;
use crate::cloud::paging::{page, passes};
use crate::cloud::render::render_stack;
use crate::cloud::services::{body, body_to_def, capitalise};
use crate::cloud::{fail, failure};
use crate::model::{self, Op, STACK_URI, Stack, State};
use crate::stackfile::{self, Def};

pub(super) fn find_stack(req: &Request) -> Result<Stack, Response> {
    let uuid = req.param("uuid").unwrap_or_default();
    model::load_stack(uuid)?.ok_or_else(|| fail(404, "Not found"))
}

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
pub(super) type Extras = Vec<serde_json::Map<String, Value>>;

pub(super) fn defs_from_stack_body(v: &Value) -> Result<(Vec<Def>, Extras), String> {
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
    if stack.state == State::Terminated {
        return Err(fail(409, "Cannot update a terminated stack"));
    }
    let v = body(req)?;
    if let Some(n) = v["nickname"].as_str() {
        stack.nickname = n.to_string();
    }
    if v.get("services").is_some() {
        let (defs, extras) = defs_from_stack_body(&v).map_err(|e| fail(400, &e))?;
        model::update_stack_services(&mut stack, defs, extras, true).map_err(failure)?;
    }
    model::save_stack(&stack)?;
    model::emit(
        "stack",
        "update",
        &stack.uri(),
        &stack.uuid,
        stack.state.as_str(),
        &[],
    );
    Ok(Response::json(200, &render_stack(&stack)))
}

pub(super) fn stack_op(req: &Request, caller: &Caller, op: Op) -> HttpResult {
    let user = caller.0.clone();
    let mut stack = find_stack(req)?;
    model::follow(&stack.endpoint);
    let uri = stack.uri();
    let label = format!("Stack {}", capitalise(op.name()));
    act(req, &user, "Stack", &label, &uri, Some(op), || {
        model::run_stack(&mut stack, op)?;
        Ok(render_stack(&stack))
    })
}

pub fn stack_start(req: &Request, caller: &Caller) -> HttpResult {
    stack_op(req, caller, Op::Start)
}
pub fn stack_stop(req: &Request, caller: &Caller) -> HttpResult {
    stack_op(req, caller, Op::Stop)
}
pub fn stack_redeploy(req: &Request, caller: &Caller) -> HttpResult {
    stack_op(req, caller, Op::Redeploy)
}
pub fn stack_terminate(req: &Request, caller: &Caller) -> HttpResult {
    stack_op(req, caller, Op::Terminate)
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
