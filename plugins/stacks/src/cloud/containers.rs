//! Containers of the services.

use super::*;

pub(super) fn all_services() -> Result<Vec<Service>, Response> {
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
pub(super) fn find_container(req: &Request) -> Result<(Service, Container), Response> {
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

pub(super) fn container_op(req: &Request, verb: &str) -> HttpResult {
    let user = req.identity::<Caller>()?.0.clone();
    let (s, c) = find_container(req)?;
    follow(&s.endpoint);
    let uri = format!("{CONTAINER_URI}{}/", model::container_uuid(&c.id));
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
