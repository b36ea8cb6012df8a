//! Containers of the services.

use berth_sdk::docker::{self, Container};
use berth_sdk::{Framing, HttpResult, Request, Response};
use serde_json::json;

use crate::cloud::actions::act;
use crate::cloud::infra::local_node_uri;
use crate::cloud::keys::Caller;
use crate::cloud::paging::{page, passes};
use crate::cloud::render::{add_inspected, container_state, render_container};
use crate::cloud::services::capitalise;
use crate::cloud::{engine_error, fail, framing, logs};
use crate::engine;
use crate::model::{self, CONTAINER_URI, Service, State};

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
        let node = local_node_uri(e)?;
        for c in engine::all_containers(e).map_err(engine_error)? {
            let Some(s) =
                engine::service_of(&c).and_then(|u| services.iter().find(|s| s.uuid == u))
            else {
                continue;
            };
            let mut v = render_container(s, &c, &node);
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
        if s.state == State::Terminated {
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
    let mut v = render_container(&s, &c, &local_node_uri(&s.endpoint)?);
    let inspect = docker::container_inspect(&s.endpoint, &c.id).map_err(engine_error)?;
    add_inspected(&mut v, &serde_json::from_str(&inspect).unwrap_or_default());
    Ok(Response::json(200, &v))
}

pub(super) fn container_op(req: &Request, caller: &Caller, verb: &str) -> HttpResult {
    let user = caller.0.clone();
    let (s, c) = find_container(req)?;
    model::follow(&s.endpoint);
    let uri = format!("{CONTAINER_URI}{}/", model::container_uuid(&c.id));
    let state = container_state(&c.state);
    let allowed = match verb {
        "start" => state == State::Stopped,
        "stop" => matches!(state, State::Running | State::Starting),
        _ => !matches!(state, State::Terminating | State::Terminated),
    };
    if !allowed {
        return Err(fail(
            409,
            &format!("Cannot {verb} a container in state {state}"),
        ));
    }
    // A Swarm task's container that stopped is done: the swarm replaces it
    // (or, with autorestart OFF, leaves the replica stopped) and removes a
    // container started behind its back.
    if verb == "start" && s.swarm {
        return Err(fail(
            409,
            "Cannot start a stopped container of a Swarm service: its service replaces it; \
             start or redeploy the service instead",
        ));
    }
    let label = format!("Container {}", capitalise(verb));
    let endpoint = s.endpoint.clone();
    let node = local_node_uri(&endpoint)?;
    act(req, &user, "Container", &label, &uri, None, || {
        let timeout = model::stop_timeout();
        match verb {
            "start" => docker::container_start(&endpoint, &c.id)?,
            "stop" => docker::container_stop(&endpoint, &c.id, Some(timeout))?,
            // In Swarm mode a redeployed container is a new task's: the
            // swarm replaces the one removed.
            "redeploy" if s.swarm => docker::container_remove(&endpoint, &c.id, true, false)?,
            "redeploy" => docker::container_restart(&endpoint, &c.id, Some(timeout))?,
            _ => docker::container_remove(&endpoint, &c.id, true, false)?,
        }
        let mut after = c.clone();
        after.state = match verb {
            "start" | "redeploy" => "running".into(),
            "stop" => "exited".into(),
            _ => "dead".into(),
        };
        Ok(render_container(&s, &after, &node))
    })
}

pub fn container_start(req: &Request, caller: &Caller) -> HttpResult {
    container_op(req, caller, "start")
}
pub fn container_stop(req: &Request, caller: &Caller) -> HttpResult {
    container_op(req, caller, "stop")
}
pub fn container_redeploy(req: &Request, caller: &Caller) -> HttpResult {
    container_op(req, caller, "redeploy")
}
pub fn container_terminate(req: &Request, caller: &Caller) -> HttpResult {
    container_op(req, caller, "terminate")
}

pub fn container_logs(req: &Request) -> HttpResult {
    let (s, c) = find_container(req)?;
    let source = docker::LogSource {
        id: c.id,
        fields: json!({ "type": "log" }).to_string(),
    };
    logs(req, &s.endpoint, &[source])
}

/// `GET container/{uuid}/exec/?command=`: a WebSocket console on a new
/// exec of `command` (default `sh`) in the container, with a TTY: each
/// message in goes to its stdin, its output comes back as text messages.
pub fn container_exec(req: &Request) -> HttpResult {
    let (s, c) = find_container(req)?;
    if framing(req) != Framing::Websocket {
        return Err(fail(
            400,
            "exec streams over WebSocket: send a WebSocket upgrade request",
        ));
    }
    let command = req.query("command").unwrap_or("sh");
    let words = split_command(command).map_err(|e| fail(400, &e))?;
    if words.is_empty() {
        return Err(fail(400, "command is empty"));
    }
    let exec = docker::exec_create(&s.endpoint, &c.id, &words, true).map_err(engine_error)?;
    Ok(Response::proxy_docker(
        &s.endpoint,
        &format!("/exec/{exec}/start"),
        Some(""),
    ))
}

/// A command line split into words as the CLI quotes them: words with
/// spaces in double quotes, a double quote inside escaped with `\`.
fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if matches!(chars.clone().next(), Some('"' | '\\')) => {
                word.get_or_insert_default().extend(chars.next());
            }
            '"' => {
                quoted = !quoted;
                word.get_or_insert_default();
            }
            c if c.is_whitespace() && !quoted => words.extend(word.take()),
            c => word.get_or_insert_default().push(c),
        }
    }
    if quoted {
        return Err(format!("command has an unclosed quote: {line}"));
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split_command;

    #[test]
    fn commands_split_as_the_cli_quotes_them() {
        let words = |line| split_command(line).unwrap();
        assert_eq!(words("sh"), ["sh"]);
        assert_eq!(words("sh -c \"echo a b\""), ["sh", "-c", "echo a b"]);
        assert_eq!(words("echo \"say \\\"hi\\\"\""), ["echo", "say \"hi\""]);
        assert_eq!(words("echo \"\"  x"), ["echo", "", "x"]);
        assert!(split_command("echo \"a").is_err());
    }
}
